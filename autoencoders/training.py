"""Training: the loop behind ``Autoencoder.fit``.

One epoch is: shuffle the rows, and for each batch ``x``

    loss, terms = model._loss(x, noise)     # the flavor's equation
    loss.backward()                         # minigrad's reverse pass
    clip_grad_norm(...)                     # if asked for
    optimizer.step()                        # fused updates (Adam: one call for all)

then, once per epoch: check the weights are finite, evaluate the validation data,
step the learning-rate schedule, let early stopping decide, write the checkpoint
and the log line, run the callbacks.

**Resuming.**  With ``checkpoint_dir`` every epoch ends by writing
``checkpoint.npz`` there (atomically, no pickle; :mod:`autoencoders.files`): the
weights, the optimizer's state, both random generators' states, the epoch, the
history, the schedule's and early stopping's state.  ``fit(..., resume=True)``
with the same ``checkpoint_dir`` starts from it, and ends with the weights an
uninterrupted run would have had, bit for bit (same data, options and backend).
Ctrl-C therefore loses at most the epoch in progress.

**Several processes.**  ``fit(..., comm=minigrad.distributed.world())`` under
``mpiexec -n R`` trains one model data-parallel (:mod:`autoencoders.parallel`):
``batch_size`` rows per rank and step, one Allreduce of all gradients per step,
the same weights on every rank; rank 0 writes the files.  A checkpoint records the
global batch (``batch_size x R``), so a run can resume on another number of ranks
with the per-rank batch that keeps it.

**Calling fit again** continues from the model's weights and, when ``optimizer``
names the same kind as last time (the default "adam" does), with that optimizer's
state -- Adam's moments and step counts -- at the new ``lr``.  To start the
optimizer afresh, set ``model.optimizer_ = None`` or pass a new Optimizer.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import sys
import time

import numpy

import minigrad
from minigrad import distributed, optim
from minigrad.optim import _host

from . import files
from .base import _floats, _positive_int
from .inputs import Rows, source

try:  # the progress bar is optional
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - depends on the environment
    _tqdm = None

__all__ = ["fit", "EarlyStopping", "CHECKPOINT_FILE", "LOG_FILE"]

CHECKPOINT_FILE = "checkpoint.npz"
LOG_FILE = "log.jsonl"
OPTIMIZERS = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD}


class EarlyStopping:
    """Stop when the monitored loss has not improved for ``patience`` epochs, and give
    the model back the weights of its best epoch.

    ``monitor``: a key of the history; None means ``"val_total"`` when there is
    validation data, else ``"total"``.  An epoch improves on the best when its value
    is below ``best - min_delta``.  ``fit(..., early_stopping=5)`` is
    ``EarlyStopping(patience=5)``.
    """

    def __init__(self, patience=5, min_delta=0.0, monitor=None):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be a non-negative integer, got "
                             f"{patience!r}")
        if not (isinstance(min_delta, (int, float)) and math.isfinite(min_delta)
                and min_delta >= 0):
            raise ValueError(f"EarlyStopping: min_delta must be a finite number >= 0, got "
                             f"{min_delta!r}")
        self.patience, self.min_delta, self.monitor = patience, float(min_delta), monitor
        self.best, self.best_epoch, self.wait, self.stopped = None, None, 0, False

    def update(self, epoch, value):
        """Record epoch ``epoch``'s ``value``; returns True if it is the new best."""
        if self.best is None or value < self.best - self.min_delta:
            self.best, self.best_epoch, self.wait = float(value), epoch, 0
            return True
        self.wait += 1
        self.stopped = self.wait > self.patience
        return False

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait,
                "stopped": self.stopped}

    def load_state_dict(self, state):
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.wait, self.stopped = int(state["wait"]), bool(state["stopped"])


def fit(model, X, epochs=10, batch_size=128, lr=1e-3, optimizer="adam",
        validation_data=None, seed=0, callbacks=(), progress=True, *,
        validation_split=None, early_stopping=None, schedule=None, clip_grad_norm=None,
        checkpoint_dir=None, resume=False, log_dir=None, tensorboard=False, comm=None,
        replay=None):
    """See :meth:`Autoencoder.fit`."""
    return _Training(model, X, epochs, batch_size, lr, optimizer, validation_data, seed,
                     callbacks, progress, validation_split, early_stopping, schedule,
                     clip_grad_norm, checkpoint_dir, resume, log_dir, tensorboard, comm,
                     replay).run()


class _Training:
    """One call of ``fit``: its data, optimizer and state, and the loop."""

    def __init__(self, model, X, epochs, batch_size, lr, optimizer, validation_data, seed,
                 callbacks, progress, validation_split, early_stopping, schedule,
                 clip_grad_norm, checkpoint_dir, resume, log_dir, tensorboard, comm, replay):
        name = f"{model._name}.fit"
        self.model = model
        self.comm = distributed.as_communicator(comm) or distributed.Communicator()
        self.epochs = _positive_int("epochs", epochs)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.seed = seed
        self.train_rows, self.val_rows = _data(model, X, validation_data, validation_split)
        if not isinstance(self.train_rows, Rows):
            self.train_rows.check_reiterable(self.epochs)
        self.opt = _optimizer(model, optimizer, lr)
        model.optimizer_ = self.opt
        self.schedule = _schedule(name, schedule, self.opt)
        self.stopper = _early_stopping(early_stopping)
        self.monitor = ((self.stopper and self.stopper.monitor)
                        or ("val_total" if self.val_rows is not None else "total"))
        if clip_grad_norm is not None and not (
                isinstance(clip_grad_norm, (int, float)) and not isinstance(clip_grad_norm, bool)
                and math.isfinite(clip_grad_norm) and clip_grad_norm > 0):
            raise ValueError(f"{name}: clip_grad_norm must be a positive number, got "
                             f"{clip_grad_norm!r}")
        self.clip = clip_grad_norm
        self.callbacks, self.progress = callbacks, progress
        self.checkpoint = (None if checkpoint_dir is None
                           else os.path.join(os.fspath(checkpoint_dir), CHECKPOINT_FILE))
        self.log_dir = os.fspath(log_dir) if log_dir is not None else (
            os.fspath(checkpoint_dir) if checkpoint_dir is not None else None)
        if resume and self.checkpoint is None:
            raise ValueError(f"{name}: resume=True needs checkpoint_dir (the folder of "
                             f"{CHECKPOINT_FILE})")
        if tensorboard and self.log_dir is None:
            raise ValueError(f"{name}: tensorboard=True needs log_dir (or checkpoint_dir)")
        for folder in {self.log_dir, checkpoint_dir and os.fspath(checkpoint_dir)} - {None}:
            if self.comm.root:  # rank 0 writes every file
                os.makedirs(folder, exist_ok=True)
        self.shuffle_rng, self.noise_rng = (
            numpy.random.default_rng(s) for s in numpy.random.SeedSequence(seed).spawn(2))
        self.params = model.parameters()
        self.best_weights = None
        self.epoch, self.history = 0, {}
        if resume:
            self._resume()
        self.writer = _tensorboard(self.log_dir) if tensorboard and self.comm.root else None
        # several processes: the steps, validation and agreement of autoencoders.parallel
        self.parallel = None
        if self.comm.size > 1:
            from .parallel import Parallel
            self.parallel = Parallel(self)
        if replay not in (None, True, False):
            raise TypeError(f"{name}: replay must be None (replay this package's models), "
                            f"True or False, got {replay!r}")
        # each step recorded once and replayed after (minigrad.replay), or run eagerly;
        # on several ranks the noise is drawn for the whole batch (Parallel.noise)
        noise = self.noise_rng if self.parallel is None else self.parallel.noise
        self.steps = minigrad.replay.Steps(lambda x: model._loss(x, noise),
                                           replay=_replayable(model) if replay is None else replay)

    # -- the loop ----------------------------------------------------------------------
    def run(self):
        # every step allocates the arrays the step before freed: kept in the heap for
        # the whole fit instead of faulted in afresh each step (minigrad.memory); a
        # convolutional model's work shared by minigrad's threads, the BLAS on one,
        # from batch MIN_BATCH on (minigrad.threads)
        with minigrad.reuse_memory(), _own_threads(self.model, self.batch_size):
            return self._run()

    def _run(self):
        model, params = self.model, self.params
        model.history_ = self.history
        self._start_log()
        last_good = [p.data.copy() for p in params]
        own_arrays = [p.data for p in params]  # given back to the parameters at the end
        update = _update_keeping(self.opt, params, last_good)
        n_batches = self.train_rows.n_batches(self.batch_size)
        bar = _Progress(self.progress and self.comm.root, self.epochs, n_batches, self.epoch)
        was_training = model.training
        model.train()
        try:
            while self.epoch < self.epochs and not (self.stopper and self.stopper.stopped):
                started = time.perf_counter()
                rate = self.opt.lr  # this epoch's; the schedule sets the next one's at its end
                epoch, where = self.epoch, f"epoch {self.epoch + 1} of {self.epochs}"
                model._begin_epoch(epoch, self.epochs)
                order = (self.shuffle_rng.permutation(self.train_rows.n)
                         if isinstance(self.train_rows, Rows) else None)
                sums, seen = {}, 0
                # the steps run with subnormals flushed to zero on every thread that
                # computes (minigrad.denormals); callbacks and the rest run without
                with minigrad.flush_denormals():
                    for b, (terms, rows) in enumerate(self._steps(order, update, last_good,
                                                                  where, n_batches)):
                        for key, value in terms.items():
                            sums[key] = sums.get(key, 0.0) + value * rows
                        seen += rows
                        bar.batch(epoch, sums["total"] / seen)
                # the recorded steps go with their last arrays, before validation; the
                # next epoch records afresh (what it makes constant, a KL weight, may change)
                self.steps.clear()
                self._check_finite_weights(last_good, where)
                if self.parallel is not None:
                    self.parallel.check_same_weights(where)
                logs = {key: value / seen for key, value in sums.items()}
                if self.val_rows is not None:
                    val = (model._evaluate(self.val_rows, 1024, numpy.random.default_rng(self.seed))
                           if self.parallel is None else self.parallel.evaluate(self.val_rows))
                    logs.update({"val_" + key: value for key, value in val.items()})
                for key, value in logs.items():
                    self.history.setdefault(key, []).append(value)
                self.epoch += 1
                # on several ranks: files by rank 0, callbacks everywhere, and whatever
                # raises on one rank raises on all (autoencoders.parallel)
                with distributed.Together(self.comm, f"the end of {where}") as together:
                    self._end_epoch(logs)
                    bar.epoch(epoch, logs, time.perf_counter() - started)
                    self._log(logs, time.perf_counter() - started, rate)
                    stops = [cb(model, epoch, logs) for cb in self.callbacks]
                    together.vote(any(stop is True for stop in stops))
                if together.any:
                    break
            if self.best_weights is not None:
                for p, best in zip(params, self.best_weights):
                    p.data[...] = best
        finally:
            self.steps.clear()  # and the arrays of the last step it recorded
            bar.close()
            if self.writer is not None:
                self.writer.close()
            model._end_fit()
            model.train(was_training)
            _give_back_arrays(params, own_arrays)
        return self.history

    def _steps(self, order, update, last_good, where, n_batches):
        """Each step's ``(loss terms, rows in the batch)``, in one process or several."""
        if self.parallel is not None:
            for b, (fetch, lo, hi, count, n) in enumerate(self.parallel.batches(order)):
                yield self.parallel.step(fetch, lo, hi, count, n, update, last_good,
                                         f"{where}, batch {b + 1} of {n_batches or '?'}"), n
            return
        for b, xb in enumerate(self.train_rows.batches(self.batch_size, order)):
            yield self._step(self.model._tensor(xb), update, last_good,
                             f"{where}, batch {b + 1}" + (f" of {n_batches}" if n_batches else "")
                             ), len(xb)

    def _step(self, xb, update, last_good, where):
        """One training step on batch ``xb``; returns its loss terms as floats.  A
        non-finite loss restores the weights of the last batch with a finite one
        (kept in ``last_good`` by ``update``) and raises."""
        self.opt.zero_grad()
        total, terms = self.steps(xb)
        terms = _floats(total, terms)
        if not math.isfinite(terms["total"]):
            _restore(self.params, last_good)
            raise nonfinite_loss(self.model, terms["total"], where)
        self.steps.backward()
        if self.clip is not None:
            optim.clip_grad_norm(self.params, self.clip)
        update()
        return terms

    def _check_finite_weights(self, last_good, where):
        """After an epoch: every weight finite, or the weights from before the last
        update back and a FloatingPointError (the epoch's losses were all finite, but
        the last update can still overflow)."""
        params = self.params
        xp = params[0].xp
        if bool(xp.stack([xp.isfinite(p.data).all() for p in params]).all()):
            return  # one read from the device per epoch
        names = [name for name, _ in self.model.named_parameters()]
        bad = next(names[i] for i, p in enumerate(params) if not bool(xp.isfinite(p.data).all()))
        _restore(params, last_good)
        raise FloatingPointError(
            f"{self.model._name}.fit: the last update of {where} made {bad!r} non-finite; "
            f"training stopped and the model keeps the weights from before that update "
            f"(try a smaller lr)")

    def _end_epoch(self, logs):
        """The schedule, early stopping and the checkpoint, once an epoch is done."""
        if self.monitor not in logs:
            raise ValueError(f"{self.model._name}.fit: early stopping monitors "
                             f"{self.monitor!r}, which is not among the logged terms "
                             f"{sorted(logs)}")
        value = logs[self.monitor]
        if self.schedule is not None:
            self.schedule.step(value)
        if self.stopper is not None and self.stopper.update(self.epoch - 1, value):
            if self.best_weights is None:
                self.best_weights = [p.data.copy() for p in self.params]
            else:
                for best, p in zip(self.best_weights, self.params):
                    best[...] = p.data
        if self.checkpoint is not None and self.comm.root:
            self._save_checkpoint()

    # -- checkpoints -------------------------------------------------------------------
    def _options(self):
        """What must be the same for a resumed run to continue this one exactly."""
        return {"batch_size": self.batch_size * self.comm.size,  # the global batch
                "seed": self.seed,
                "rows": self.train_rows.n if isinstance(self.train_rows, Rows) else None,
                "optimizer": type(self.opt).__name__,
                "schedule": None if self.schedule is None else type(self.schedule).__name__}

    def _save_checkpoint(self):
        model, opt = self.model, self.opt
        arrays = {f"model/{name}": _host(p.data) for name, p in model.named_parameters()}
        opt_state = opt.state_dict()
        counts = {}
        for key, values in opt_state["buffers"].items():
            if key in opt._count_buffers:
                counts[key] = [int(v) for v in values]
                continue
            for i, value in enumerate(values):
                if value is not None:
                    arrays[f"optimizer/{key}/{i}"] = value
        if self.best_weights is not None:
            names = [name for name, _ in model.named_parameters()]
            arrays.update({f"best/{name}": _host(b) for name, b in zip(names, self.best_weights)})
        state = {
            "model": {"flavor": model.flavor, "sizes": list(model.sizes)},
            "options": self._options(), "epoch": self.epoch, "epochs": self.epochs,
            "history": self.history,
            "rng": {"shuffle": self.shuffle_rng.bit_generator.state,
                    "noise": self.noise_rng.bit_generator.state},
            "optimizer": {"hyper": opt_state["hyper"], "step_count": opt_state["step_count"],
                          "counts": counts},
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "early_stopping": None if self.stopper is None else self.stopper.state_dict(),
        }
        files.write_checkpoint(self.checkpoint, state, arrays)

    def _resume(self):
        """Continue from the checkpoint if there is one: rank 0 reads it and hands it
        to the others (no shared file system needed)."""
        loaded = None
        with distributed.Together(self.comm, f"reading {self.checkpoint}"):
            if self.comm.root and os.path.exists(self.checkpoint):
                loaded = files.read_checkpoint(self.checkpoint)
        loaded = self.comm.bcast_object(loaded)
        if loaded is not None:
            self._load_checkpoint(*loaded)

    def _load_checkpoint(self, state, arrays):
        path, model, opt = self.checkpoint, self.model, self.opt
        saved = state["model"]
        if saved["flavor"] != model.flavor or list(saved["sizes"]) != list(model.sizes):
            raise ValueError(f"{path} is a checkpoint of a {saved['flavor']!r} autoencoder of "
                             f"sizes {saved['sizes']}; this model is a {model.flavor!r} one of "
                             f"sizes {model.sizes}")
        for key, now in self._options().items():
            then = state["options"].get(key)
            if then != now:
                ranks = (f" (batch_size x {self.comm.size} ranks: the global batch)"
                         if key == "batch_size" and self.comm.size > 1 else "")
                raise ValueError(f"{path} was written by a run with {key}={then!r}; this "
                                 f"call has {key}={now!r}{ranks}; resume with the same "
                                 f"options (or start afresh with resume=False)")
        weights = {name[len("model/"):]: a for name, a in arrays.items()
                   if name.startswith("model/")}
        model._set_weights(weights, path)
        buffers = {}
        for key in opt._buffer_names:
            if key in opt._count_buffers:
                buffers[key] = state["optimizer"]["counts"][key]
            else:
                buffers[key] = [arrays.get(f"optimizer/{key}/{i}") for i in range(len(opt.params))]
        opt.load_state_dict({"hyper": state["optimizer"]["hyper"],
                             "step_count": state["optimizer"]["step_count"], "buffers": buffers})
        self.shuffle_rng.bit_generator.state = state["rng"]["shuffle"]
        self.noise_rng.bit_generator.state = state["rng"]["noise"]
        self.epoch, self.history = int(state["epoch"]), state["history"]
        if self.schedule is not None:
            self.schedule.load_state_dict(state["schedule"])
        if self.stopper is not None and state["early_stopping"] is not None:
            self.stopper.load_state_dict(state["early_stopping"])
            xp = self.params[0].xp
            names = [name for name, _ in model.named_parameters()]
            if f"best/{names[0]}" in arrays:
                self.best_weights = [xp.asarray(arrays[f"best/{n}"]) for n in names]

    # -- logs --------------------------------------------------------------------------
    def _start_log(self):
        """A fresh log file, or on resume the lines of the epochs the checkpoint holds."""
        if self.log_dir is None or not self.comm.root:
            return
        path = os.path.join(self.log_dir, LOG_FILE)
        kept = []
        if self.epoch and os.path.exists(path):
            with open(path) as f:
                for line in f:
                    try:
                        if json.loads(line)["epoch"] <= self.epoch:
                            kept.append(line if line.endswith("\n") else line + "\n")
                    except (ValueError, KeyError, TypeError):
                        break  # a line cut by a crash ends what can be trusted
        with files.atomic_write(path, "w") as f:
            f.writelines(kept)

    def _log(self, logs, seconds, lr):
        """One line per epoch: its number (from 1), seconds, the learning rate it trained
        with, and its logged terms."""
        if self.log_dir is None or not self.comm.root:
            return
        record = {"epoch": self.epoch, "seconds": round(seconds, 4), "lr": lr, **logs}
        with open(os.path.join(self.log_dir, LOG_FILE), "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in logs.items():
                self.writer.add_scalar(f"loss/{key}", value, self.epoch)
            self.writer.add_scalar("lr", lr, self.epoch)
            self.writer.flush()


# ----------------------------------------------------------------------------------
# the pieces fit is made of
# ----------------------------------------------------------------------------------

def _data(model, X, validation_data, validation_split):
    """``(training source, validation Rows or None)``."""
    name = f"{model._name}.fit"
    train = source(model, X, "X", bounded=True)
    if validation_split is not None and validation_data is not None:
        raise ValueError(f"{name}: give validation_split or validation_data, not both")
    if validation_split is not None:
        if not (isinstance(validation_split, float) and 0 < validation_split < 1):
            raise ValueError(f"{name}: validation_split must be a float in (0, 1), got "
                             f"{validation_split!r}")
        if not isinstance(train, Rows):
            raise ValueError(f"{name}: validation_split needs X as rows (an array or memmap); "
                             f"with a stream of batches pass validation_data")
        n_val = math.ceil(train.n * validation_split)
        if n_val >= train.n:
            raise ValueError(f"{name}: validation_split={validation_split} of {train.n} rows "
                             f"leaves none to train on")
        # the last rows, as stored (before any shuffling): a memmap stays one slice
        return train.split(train.n - n_val)
    if validation_data is None:
        return train, None
    val = source(model, validation_data, "validation_data", bounded=True)
    if not isinstance(val, Rows):
        raise ValueError(f"{name}: validation_data must be rows (an array or memmap)")
    return train, val


def _optimizer(model, optimizer, lr):
    name = f"{model._name}.fit"
    if isinstance(optimizer, optim.Optimizer):
        # a subset is fine (frozen layers); another model's parameters would train nothing
        own = {id(p) for p in model.parameters()}
        foreign = [i for i, p in enumerate(optimizer.params) if id(p) not in own]
        if foreign:
            raise ValueError(f"{name}: {len(foreign)} of the optimizer's "
                             f"{len(optimizer.params)} parameters (the first: parameter "
                             f"{foreign[0]}) are not this model's; build the optimizer over "
                             f"model.parameters()")
        return optimizer
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"{name}: optimizer={optimizer!r}; expected one of "
                         f"{sorted(OPTIMIZERS)} or a minigrad.optim.Optimizer")
    if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr)
            and lr > 0):
        raise ValueError(f"{name}: lr must be a positive number, got {lr!r}")
    previous = getattr(model, "optimizer_", None)
    params = model.parameters()
    if type(previous) is OPTIMIZERS[optimizer] and len(previous.params) == len(params) and all(
            a is b for a, b in zip(previous.params, params)):
        previous.lr = float(lr)  # the same kind again: keep its moments and step counts
        return previous
    return OPTIMIZERS[optimizer](params, lr=lr)


def _schedule(name, schedule, opt):
    """A learning-rate schedule bound to ``opt``: given as one, or as a function of the
    optimizer (``lambda opt: optim.CosineAnnealingLR(opt, 20)``)."""
    if schedule is None:
        return None
    if not hasattr(schedule, "step") and callable(schedule):
        schedule = schedule(opt)
    if not all(hasattr(schedule, m) for m in ("step", "state_dict", "load_state_dict")):
        raise TypeError(f"{name}: schedule must be a minigrad.optim schedule (StepLR, "
                        f"CosineAnnealingLR, ReduceLROnPlateau) or a function of the optimizer "
                        f"returning one; got {type(schedule).__name__}")
    if getattr(schedule, "optimizer", opt) is not opt:
        raise ValueError(f"{name}: the schedule is bound to another optimizer than the one "
                         f"fit uses; pass a function of the optimizer instead "
                         f"(lambda opt: optim.StepLR(opt, 10))")
    return schedule


def _early_stopping(early_stopping):
    if early_stopping is None or isinstance(early_stopping, EarlyStopping):
        return early_stopping
    return EarlyStopping(patience=early_stopping)


def _tensorboard(log_dir):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ImportError("tensorboard=True needs tensorboardX: pip install "
                          "'minigrad-autoencoders[tensorboard]' (or pip install tensorboardX)"
                          ) from None
    return SummaryWriter(logdir=log_dir)


def nonfinite_loss(model, value, where):
    """The error of a step whose loss is NaN or infinite (fit then holds the weights
    of the last batch with a finite loss)."""
    return FloatingPointError(
        f"{model._name}.fit: the loss became {value} at {where}; training stopped and the "
        f"model keeps the weights of the last batch with a finite loss (try a smaller lr)")


def _own_threads(model, batch_size):
    """:func:`minigrad.threads.split_work` for a model with convolution layers on the
    CPU at batches of :data:`minigrad.threads.MIN_BATCH` or more (measured faster
    there; not for dense models or smaller batches), else nothing."""
    layers = [module for _, module in model.named_modules()]
    split = batch_size >= minigrad.threads.MIN_BATCH \
        and any(isinstance(m, (minigrad.nn.Conv2d, minigrad.nn.ConvTranspose2d)) for m in layers) \
        and all(p.device.name != "cupy" for p in model.parameters())
    return minigrad.threads.split_work() if split else contextlib.nullcontext()


def _replayable(model):
    """Whether ``fit`` replays the model's steps by default: the model is one of this
    package's flavors and every layer one of minigrad's (whose steps are checked
    against eager ones), so no step depends on its data in Python."""
    ours = ("autoencoders", "minigrad")
    return all(type(m).__module__.split(".")[0] in ours
               for m in (model, *(module for _, module in model.named_modules())))


def _restore(params, last_good):
    """Put the weights kept in ``last_good`` back into the parameters."""
    for p, good in zip(params, last_good):
        p.data[...] = good


def _give_back_arrays(params, arrays):
    """During fit a parameter's ``.data`` alternates between two arrays (see
    ``Optimizer.step(previous=...)``); afterwards each has its own array again, with
    the final values, so references to ``p.data`` taken before fit stay current."""
    for p, own in zip(params, arrays):
        if p.data is not own:
            if own.shape == p.data.shape and own.dtype == p.data.dtype and \
                    type(own) is type(p.data):
                own[...] = p.data
                p.data = own


def _update_keeping(opt, params, last_good):
    """The optimizer step of ``fit``, which leaves the weights from before it in
    ``last_good``: traded rather than copied where ``opt.step`` takes ``previous``
    (every minigrad.optim optimizer does) over exactly the model's parameters, else
    copied first (a subclass with a ``step()`` of its own, or an optimizer over some
    of the parameters: the others stay frozen)."""
    try:
        trades = "previous" in inspect.signature(opt.step).parameters
    except (TypeError, ValueError):
        trades = False
    if trades and len(opt.params) == len(params) and all(
            a is b for a, b in zip(opt.params, params)):
        return lambda: opt.step(previous=last_good)

    def copy_then_step():
        for p, good in zip(params, last_good):
            good[...] = p.data
        opt.step()
    return copy_then_step


class _Progress:
    """A tqdm bar over all batches when tqdm is installed, else one printed line per epoch."""

    def __init__(self, enabled, epochs, n_batches, first_epoch=0):
        self.enabled, self.epochs = bool(enabled), epochs
        self.bar = None
        if self.enabled and _tqdm is not None:
            total = None if n_batches is None else (epochs - first_epoch) * n_batches
            self.bar = _tqdm(total=total, unit="batch", dynamic_ncols=True)

    def batch(self, epoch, running_loss):
        if self.bar is not None:
            self.bar.set_description(f"epoch {epoch + 1}/{self.epochs}", refresh=False)
            self.bar.set_postfix(loss=f"{running_loss:.4g}", refresh=False)
            self.bar.update()

    def epoch(self, epoch, logs, seconds):
        if self.enabled and self.bar is None:
            val = f", val {logs['val_total']:.4f}" if "val_total" in logs else ""
            print(f"epoch {epoch + 1}/{self.epochs}: loss {logs['total']:.4f}{val} "
                  f"({seconds:.1f} s)", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
