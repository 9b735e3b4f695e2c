"""The common base of every autoencoder flavor.

An autoencoder is an encoder f and a decoder g trained so that the reconstruction
g(f(x)) is close to x.  The loss is L(x, g(f(x))) -- decode *after* encode -- plus
whatever penalty a flavor adds.  :class:`Autoencoder` holds what the flavors share:

* building the encoder and decoder from a size list ``[input_dim, hidden..., latent_dim]``
  (the decoder mirrors it), or taking the user's own ``minigrad.nn`` Modules;
* ``encode`` / ``decode`` / ``reconstruct`` on Tensors, ``transform`` /
  ``inverse_transform`` on NumPy arrays (in batches, no graph recorded);
* the reconstruction loss, **summed over the pixels of an example and averaged
  over the batch** -- the same reduction in every flavor, so terms compare;
* ``loss(x, rng) -> (total, terms)``, ``evaluate``, ``fit`` and ``save`` / ``load``.

A flavor subclass sets ``flavor``, lists its hyper-parameters in its ``__init__``
and writes ``_loss(x, rng)``, which returns the total loss Tensor and a dict of
named terms -- the one method that reads like the flavor's equation.

The decoder Module maps a code to *pre-activations*; ``decode`` applies the
output function.  With ``output="sigmoid"`` and ``loss="bce"`` the loss is
computed from those logits by ``binary_cross_entropy_with_logits`` (finite for
any logit), while ``decode`` and ``reconstruct`` return the probabilities.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import numbers
import os
import sys
import tempfile
import time
import zipfile

import numpy

import minigrad
from minigrad import Tensor, losses, nn, no_grad, optim

try:  # the progress bar is optional
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - depends on the environment
    _tqdm = None

__all__ = ["Autoencoder", "FORMAT_VERSION"]

#: Version of the file layout written by :meth:`Autoencoder.save`.
FORMAT_VERSION = 1
_FORMAT_NAME = "minigrad-autoencoder"
_CONFIG_KEY = "__config__"

_OUTPUTS = {"sigmoid": "sigmoid", "identity": "identity", "linear": "identity", None: "identity"}
_LOSSES = ("bce", "mse")
_DTYPES = ("float32", "float64")
_DEFAULT = object()  # "argument not given", where None is a meaningful value


class Autoencoder(nn.Module):
    """Encoder f, decoder g; trained so that g(f(x)) reconstructs x.

    Parameters
    ----------
    sizes : list of int
        ``[input_dim, hidden..., latent_dim]``; the decoder mirrors it.
    activation : str
        Activation of the hidden layers (``"relu"``, ``"tanh"``, ``"sigmoid"``, ...).
    latent_activation : str or None
        Activation of the code layer; each flavor has its own default.
    output : ``"sigmoid"`` or ``"identity"``
        The function ``decode`` applies to the decoder's output.
    loss : ``"bce"`` (inputs in [0, 1], needs ``output="sigmoid"``) or ``"mse"``
        Reconstruction loss, summed over the features of an example and averaged
        over the batch.
    dtype : ``"float32"`` (default) or ``"float64"`` (for gradient checks).
    seed : int
        Seeds the weight initialisation (and the model's own noise generator).
    encoder, decoder : minigrad.nn.Module, optional
        Your own Modules instead of ``sizes``; give ``input_dim`` too.  The
        decoder must return pre-activations (``output`` is applied on top).
    hyper : dict
        For subclasses: the flavor's hyper-parameters, set as attributes and saved.
    """

    flavor = None          # set by each subclass; names the flavor in saved files
    _flavors = {}          # flavor name -> class, filled by __init_subclass__
    default_latent_activation = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.flavor is not None:
            Autoencoder._flavors[cls.flavor] = cls

    def __init__(self, sizes=None, *, activation="relu", latent_activation=_DEFAULT,
                 output="sigmoid", loss="bce", dtype=None, seed=0, encoder=None,
                 decoder=None, input_dim=None, latent_dim=None, hyper=None):
        super().__init__()
        if type(self) is Autoencoder:
            raise TypeError("Autoencoder is the base class; build a flavor such as "
                            "VanillaAutoencoder or VariationalAutoencoder")
        if output not in _OUTPUTS:
            raise ValueError(f"{self._name}: output={output!r}; expected 'sigmoid' or 'identity'")
        if loss not in _LOSSES:
            raise ValueError(f"{self._name}: loss={loss!r}; expected one of {_LOSSES}")
        if loss == "bce" and _OUTPUTS[output] != "sigmoid":
            raise ValueError(f"{self._name}: loss='bce' compares probabilities, so it needs "
                             f"output='sigmoid' (got output={output!r}); use loss='mse' instead")
        if dtype is not None:
            try:
                dtype = numpy.dtype(dtype).name
            except TypeError:
                pass
            if dtype not in _DTYPES:
                raise ValueError(f"{self._name}: dtype={dtype!r}; expected one of {_DTYPES}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"{self._name}: seed must be a non-negative integer or None, got "
                             f"{seed!r}")
        self.activation = nn.activation_module(activation).name
        self.output = _OUTPUTS[output]
        self.loss_name = loss
        self.seed = None if seed is None else int(seed)
        self._hyper_names = tuple(hyper or ())
        for name, value in (hyper or {}).items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                # NumPy scalars become Python numbers, so the config stays JSON
                value = int(value) if isinstance(value, numbers.Integral) else float(value)
            setattr(self, name, value)
        self._check_hyper()
        if latent_activation is _DEFAULT:
            latent_activation = self._default_latent_activation()
        self.latent_activation = (None if latent_activation is None
                                  else nn.activation_module(latent_activation).name)
        self._rng = numpy.random.default_rng(None if seed is None else [seed, 1])

        if encoder is None and decoder is None:
            if input_dim is not None or latent_dim is not None:
                raise ValueError(f"{self._name}: input_dim and latent_dim go with your own "
                                 f"encoder and decoder; with sizes they come from the list")
            self.sizes = _check_sizes(self._name, sizes, self._min_sizes)
            self.dtype = str(dtype or "float32")
            self.custom = False
            rng = numpy.random.default_rng(seed)
            self.encoder = self._build_encoder(rng)
            self.decoder = self._build_decoder(rng)
            self.input_dim, self.latent_dim = self.sizes[0], self.sizes[-1]
        else:
            self._adopt_modules(sizes, encoder, decoder, input_dim, latent_dim, dtype)

    # -- construction -------------------------------------------------------------
    _min_sizes = 2

    @property
    def _name(self):
        return type(self).__name__

    def _check_hyper(self):
        """Validate the flavor's hyper-parameters (a subclass hook; raise ValueError)."""

    def _default_latent_activation(self):
        return self.default_latent_activation

    def _dense(self, n_in, n_out, activation, rng):
        init = "he" if activation in ("relu", "leaky_relu") else "glorot"
        return nn.Dense(n_in, n_out, activation=activation, init=init, dtype=self.dtype, rng=rng)

    def _build_encoder(self, rng):
        s = self.sizes
        acts = [self.activation] * (len(s) - 2) + [self.latent_activation]
        return nn.Sequential([self._dense(a, b, act, rng) for a, b, act in zip(s, s[1:], acts)])

    def _build_decoder(self, rng):
        s = self.sizes[::-1]
        acts = [self.activation] * (len(s) - 2) + [None]  # the last layer gives pre-activations
        return nn.Sequential([self._dense(a, b, act, rng) for a, b, act in zip(s, s[1:], acts)])

    def _adopt_modules(self, sizes, encoder, decoder, input_dim, latent_dim, dtype):
        name = self._name
        if sizes is not None:
            raise ValueError(f"{name}: give either sizes or your own encoder and decoder, "
                             f"not both")
        for role, module in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name}: {role} must be a minigrad.nn.Module, got "
                                f"{type(module).__name__}")
        if not isinstance(input_dim, (int, numpy.integer)) or isinstance(input_dim, bool) \
                or input_dim <= 0:
            raise ValueError(f"{name}: with your own encoder and decoder, give input_dim "
                             f"(a positive integer), got {input_dim!r}")
        dtypes = {str(p.dtype) for p in encoder.parameters() + decoder.parameters()}
        if len(dtypes) > 1:
            raise ValueError(f"{name}: the encoder and decoder parameters mix dtypes {dtypes}")
        found = dtypes.pop() if dtypes else str(dtype or "float32")
        if dtype is not None and str(dtype) != found:
            raise ValueError(f"{name}: dtype={dtype!r} but the modules' parameters are {found}")
        self.dtype, self.custom = found, True
        self.input_dim = int(input_dim)
        self.encoder, self.decoder = self._wrap_custom_encoder(encoder, latent_dim), decoder
        with no_grad():
            code = self._encode(Tensor(numpy.zeros((1, self.input_dim), self.dtype)))
            if code.ndim != 2:
                raise ValueError(f"{name}: the encoder maps (1, {self.input_dim}) to shape "
                                 f"{code.shape}; expected (1, latent_dim)")
            self.latent_dim = code.shape[1]
            if latent_dim is not None and latent_dim != self.latent_dim:
                raise ValueError(f"{name}: latent_dim={latent_dim} but the encoder gives codes "
                                 f"of width {self.latent_dim}")
            out = self.decoder(Tensor(numpy.zeros((1, self.latent_dim), self.dtype)))
            if out.shape != (1, self.input_dim):
                raise ValueError(f"{name}: the decoder maps (1, {self.latent_dim}) to shape "
                                 f"{out.shape}; expected (1, {self.input_dim})")
        self.sizes = [self.input_dim, self.latent_dim]

    def _wrap_custom_encoder(self, encoder, latent_dim):
        return encoder

    # -- the model -------------------------------------------------------------------
    def _encode(self, x):
        """The code Tensor of a checked input Tensor."""
        return self.encoder(x)

    def encode(self, x):
        """The code h = f(x) of a batch (Tensor or array of shape (n, input_dim))."""
        return self._encode(self._as_input(x, "encode"))

    def decode(self, h):
        """The reconstruction g(h) (probabilities with ``output="sigmoid"``)."""
        return self._output(self.decoder(self._as_input(h, "decode", codes=True)))

    def reconstruct(self, x):
        """g(f(x)): decode after encode."""
        return self.decode(self.encode(x))

    def _output(self, pre):
        return minigrad.sigmoid(pre) if self.output == "sigmoid" else pre

    def reconstruction_terms(self, pre, x):
        """Per-example reconstruction loss (shape (n,)), summed over the features.

        ``pre`` is the decoder's output (logits with ``output="sigmoid"``).
        bce: sum_i softplus(a_i) - x_i a_i, the cross-entropy of sigmoid(a) against x;
        mse: sum_i (x̂_i - x_i)^2.
        """
        if self.loss_name == "bce":
            per_pixel = losses.binary_cross_entropy_with_logits(pre, x, reduction="none")
        else:
            per_pixel = losses.mse(self._output(pre), x, reduction="none")
        return per_pixel.sum(axis=-1)

    def reconstruction_loss(self, pre, x):
        """The reconstruction term: per-example sum over features, mean over the batch.

        ``reduction="batchmean"`` is that: (sum over everything) / batch size, one
        fused kernel node on the Numba and CuPy backends.
        """
        if self.loss_name == "bce":
            return losses.binary_cross_entropy_with_logits(pre, x, reduction="batchmean")
        return losses.mse(self._output(pre), x, reduction="batchmean")

    # -- the loss --------------------------------------------------------------------
    def _loss(self, x, rng):  # pragma: no cover - abstract
        """``(total Tensor, {name: Tensor or float})`` for a checked batch ``x``."""
        raise NotImplementedError

    def loss(self, x, rng=None):
        """``(total, terms)``: the training loss of batch ``x`` and its named terms.

        ``total`` is a scalar Tensor (call ``total.backward()``); ``terms`` holds
        floats: ``"total"``, ``"reconstruction"`` and the flavor's own terms
        (unweighted).  Noise is drawn from ``rng`` (a ``numpy.random.Generator``;
        the model's own when None), so the same generator state gives the same loss.
        """
        if not isinstance(x, Tensor):
            x = self._check_data(x, "x", bounded=True)
        x = self._as_input(x, "loss")
        total, terms = self._loss(x, self._rng if rng is None else _check_rng(rng))
        return total, _floats(total, terms)

    def evaluate(self, X, batch_size=1024, rng=None):
        """Mean of every loss term over the rows of ``X`` (no graph; ``rng`` defaults
        to a fixed seed so the numbers are reproducible)."""
        X = self._check_data(X, "X", bounded=True)
        rng = numpy.random.default_rng(0) if rng is None else _check_rng(rng)
        sums = {}
        with no_grad():
            for start in range(0, len(X), _positive_int("batch_size", batch_size)):
                xb = X[start:start + batch_size]
                total, terms = self._loss(self._tensor(xb), rng)
                for key, value in _floats(total, terms).items():
                    sums[key] = sums.get(key, 0.0) + value * len(xb)
        return {key: value / len(X) for key, value in sums.items()}

    # -- NumPy in, NumPy out -----------------------------------------------------------
    def transform(self, X, batch_size=1024):
        """Codes of the rows of ``X`` as a NumPy array (batched, no graph recorded)."""
        X = self._check_data(X, "X")
        return self._batched(self.encode, X, batch_size)

    def inverse_transform(self, H, batch_size=1024):
        """Reconstructions decoded from the codes ``H`` as a NumPy array."""
        H = self._check_data(H, "H", codes=True)
        return self._batched(self.decode, H, batch_size)

    def _batched(self, fn, X, batch_size):
        batch_size = _positive_int("batch_size", batch_size)
        with no_grad():
            parts = [fn(self._tensor(X[i:i + batch_size])).numpy()
                     for i in range(0, len(X), batch_size)]
        return numpy.concatenate(parts, axis=0)

    # -- training --------------------------------------------------------------------
    def _begin_epoch(self, epoch, epochs):
        """Called by :meth:`fit` before each epoch (a hook, e.g. for KL warm-up)."""

    def _end_fit(self):
        """Called by :meth:`fit` when it returns or raises."""

    def fit(self, X, epochs=10, batch_size=128, lr=1e-3, optimizer="adam",
            validation_data=None, seed=0, callbacks=(), progress=True, backend=None):
        """Train on the rows of ``X`` with minibatch gradient descent.

        ``backend``: ``"numpy"``, ``"numba"`` or ``"cupy"`` to train under that
        minigrad backend (the active one when None).  The backend is switched for
        the duration of the call only, but the model's parameters (and the buffers
        of an Optimizer passed in) are moved to its device and **stay there**: after
        ``fit(X, backend="cupy")`` the model lives on the GPU -- its ``transform``
        and friends still return NumPy arrays, and ``model.to("cpu")`` brings it
        back.  The batches are copied to the device one at a time.

        ``optimizer``: ``"adam"``, ``"adamw"``, ``"sgd"`` or a ``minigrad.optim``
        Optimizer over ``model.parameters()`` (then ``lr`` is its own).  ``seed``
        seeds the shuffling and the training noise: the same seeds (here and in the
        constructor) give the same weights bit for bit on the same backend.
        ``callbacks``: callables ``cb(model, epoch, logs)`` run after each epoch;
        one returning True stops training.

        Returns the history ``{term: [per-epoch mean], "val_" + term: [...]}`` (also
        kept as ``model.history_``).  If the loss becomes NaN or infinite, training
        stops with a FloatingPointError naming the epoch and batch; the model then
        holds the weights of the last batch whose loss was finite.
        """
        if backend is None:
            return self._fit(X, epochs, batch_size, lr, optimizer, validation_data, seed,
                             callbacks, progress)
        with minigrad.set_backend(backend) as active:
            self.to(active.type)
            if isinstance(optimizer, optim.Optimizer):
                _move_optimizer(optimizer, active.type)
            return self._fit(X, epochs, batch_size, lr, optimizer, validation_data, seed,
                             callbacks, progress)

    def _fit(self, X, epochs, batch_size, lr, optimizer, validation_data, seed, callbacks,
             progress):
        X = self._check_data(X, "X", bounded=True)
        X_val = (None if validation_data is None
                 else self._check_data(validation_data, "validation_data", bounded=True))
        epochs = _positive_int("epochs", epochs)
        batch_size = _positive_int("batch_size", batch_size)
        opt = self._optimizer(optimizer, lr)
        self.optimizer_ = opt
        shuffle_rng, noise_rng = (numpy.random.default_rng(s)
                                  for s in numpy.random.SeedSequence(seed).spawn(2))
        params = self.parameters()
        last_good = [p.data.copy() for p in params]
        own_arrays = [p.data for p in params]  # given back to the parameters at the end
        update = _update_keeping(opt, params, last_good)
        n, n_batches = len(X), math.ceil(len(X) / batch_size)
        history = {}
        self.history_ = history
        bar = _Progress(progress, epochs, n_batches)
        was_training = self.training
        self.train()
        try:
            for epoch in range(epochs):
                started = time.perf_counter()
                self._begin_epoch(epoch, epochs)
                order = shuffle_rng.permutation(n)
                sums = {}
                # the steps run with subnormals flushed to zero on every thread that
                # computes (minigrad.denormals); callbacks and the rest run without
                with minigrad.flush_denormals():
                    for b in range(n_batches):
                        xb = self._tensor(X[order[b * batch_size:(b + 1) * batch_size]])
                        terms = self._step(xb, opt, update, noise_rng, params, last_good,
                                           f"epoch {epoch + 1} of {epochs}, batch {b + 1} of "
                                           f"{n_batches}")
                        for key, value in terms.items():
                            sums[key] = sums.get(key, 0.0) + value * len(xb)
                        bar.batch(epoch, sums["total"] / min(n, (b + 1) * batch_size))
                self._check_finite_weights(params, last_good, epoch, epochs)
                logs = {key: value / n for key, value in sums.items()}
                if X_val is not None:
                    val = self.evaluate(X_val, rng=numpy.random.default_rng(seed))
                    logs.update({"val_" + key: value for key, value in val.items()})
                for key, value in logs.items():
                    history.setdefault(key, []).append(value)
                bar.epoch(epoch, logs, time.perf_counter() - started)
                stops = [cb(self, epoch, logs) for cb in callbacks]
                if any(stop is True for stop in stops):
                    break
        finally:
            bar.close()
            self._end_fit()
            self.train(was_training)
            _give_back_arrays(params, own_arrays)
        return history

    def _check_finite_weights(self, params, last_good, epoch, epochs):
        """After an epoch: every weight finite, or the weights from before the last
        update back and a FloatingPointError (the epoch's losses were all finite, but
        the last update can still overflow)."""
        xp = params[0].xp
        if bool(xp.stack([xp.isfinite(p.data).all() for p in params]).all()):
            return  # one read from the device per epoch
        names = [name for name, _ in self.named_parameters()]
        bad = next(names[i] for i, p in enumerate(params) if not bool(xp.isfinite(p.data).all()))
        _restore(params, last_good)
        raise FloatingPointError(
            f"{self._name}.fit: the last update of epoch {epoch + 1} of {epochs} made "
            f"{bad!r} non-finite; training stopped and the model keeps the weights from "
            f"before that update (try a smaller lr)")

    def _step(self, xb, opt, update, noise_rng, params, last_good, where):
        """One training step on batch ``xb``; returns its loss terms as floats.  A
        non-finite loss restores the weights of the last batch with a finite one
        (kept in ``last_good`` by ``update``) and raises."""
        opt.zero_grad()
        total, terms = self._loss(xb, noise_rng)
        terms = _floats(total, terms)
        if not math.isfinite(terms["total"]):
            _restore(params, last_good)
            raise FloatingPointError(
                f"{self._name}.fit: the loss became {terms['total']} at {where}; training "
                f"stopped and the model keeps the weights of the last batch with a finite "
                f"loss (try a smaller lr)")
        total.backward()
        update()
        return terms

    def _optimizer(self, optimizer, lr):
        if isinstance(optimizer, optim.Optimizer):
            # a subset is fine (frozen layers); another model's parameters would train nothing
            own = {id(p) for p in self.parameters()}
            foreign = [i for i, p in enumerate(optimizer.params) if id(p) not in own]
            if foreign:
                raise ValueError(f"{self._name}.fit: {len(foreign)} of the optimizer's "
                                 f"{len(optimizer.params)} parameters (the first: parameter "
                                 f"{foreign[0]}) are not this model's; build the optimizer over "
                                 f"model.parameters()")
            return optimizer
        makers = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD}
        if optimizer not in makers:
            raise ValueError(f"{self._name}.fit: optimizer={optimizer!r}; expected one of "
                             f"{sorted(makers)} or a minigrad.optim.Optimizer")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"{self._name}.fit: lr must be a positive number, got {lr!r}")
        return makers[optimizer](self.parameters(), lr=lr)

    # -- checking inputs ---------------------------------------------------------------
    def _check_data(self, X, name, bounded=False, codes=False):
        """``X`` (inputs, or codes if ``codes``) as a 2-D array of the model's dtype, or a
        ValueError naming the problem."""
        width = self.latent_dim if codes else self.input_dim
        if isinstance(X, Tensor):
            X = X.numpy()
        try:
            X = numpy.asarray(X)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self._name}: {name} is not an array of numbers ({e})") from None
        if X.dtype.kind not in "biuf":
            raise ValueError(f"{self._name}: {name} has dtype {X.dtype}; expected numbers")
        if X.ndim != 2:
            raise ValueError(f"{self._name}: {name} must be 2-D (examples, {width} features); "
                             f"got shape {X.shape}"
                             + ("; flatten images with X.reshape(len(X), -1)" if X.ndim > 2
                                else ""))
        if X.shape[1] != width and not codes:
            raise ValueError(f"{self._name}: {name} has {X.shape[1]} features per example but "
                             f"this autoencoder expects {width}")
        if X.shape[1] != width:
            raise ValueError(f"{self._name}: {name} has {X.shape[1]} values per code but this "
                             f"autoencoder's codes have latent_dim = {width}")
        if X.shape[0] == 0:
            raise ValueError(f"{self._name}: {name} has no examples (shape {X.shape})")
        X = X.astype(self.dtype, copy=False)
        finite = numpy.isfinite(X)
        if not finite.all():
            row, col = numpy.argwhere(~finite)[0]
            raise ValueError(f"{self._name}: {name} contains {int((~finite).sum())} NaN or "
                             f"infinite values (as {self.dtype}); the first is at row {row}, "
                             f"column {col}")
        if bounded and self.loss_name == "bce":
            low, high = float(X.min()), float(X.max())
            if low < 0 or high > 1:
                raise ValueError(f"{self._name}: {name} has values in [{low:g}, {high:g}], but "
                                 f"loss='bce' needs inputs in [0, 1]; scale the data "
                                 f"(e.g. X / 255) or use loss='mse'")
        return X

    def _as_input(self, x, op, codes=False):
        """``x`` as a Tensor of the model's dtype; arrays get the full check, Tensors a
        shape check (they are usually batches of data checked already)."""
        if not isinstance(x, Tensor):
            return self._tensor(self._check_data(x, "the input", codes=codes))
        width = self.latent_dim if codes else self.input_dim
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"{self._name}.{op}: input has shape {x.shape}; expected "
                             f"(n, {width})")
        if str(x.dtype) != self.dtype and not x.requires_grad:
            x = Tensor(x.data.astype(self.dtype), device=x.device)
        return x

    def _tensor(self, array):
        """A Tensor on the parameters' device from a host array of the model's dtype."""
        first = next(self.named_parameters(), None)
        return Tensor(array, dtype=self.dtype, device=first[1].device if first else None)

    def _noise(self, rng, shape):
        """Standard normal noise of ``shape`` from ``rng``, as a Tensor of the model's dtype."""
        return self._tensor(rng.standard_normal(shape))

    # -- saving ----------------------------------------------------------------------
    def config(self):
        """The JSON-able description that :meth:`load` rebuilds the model from."""
        from . import __version__
        return {
            "format": _FORMAT_NAME, "format_version": FORMAT_VERSION,
            "package_version": __version__, "minigrad_version": minigrad.__version__,
            "flavor": self.flavor, "custom": self.custom, "sizes": list(self.sizes),
            "activation": self.activation, "latent_activation": self.latent_activation,
            "output": self.output, "loss": self.loss_name, "dtype": self.dtype,
            "seed": self.seed,
            "hyper": {name: getattr(self, name) for name in self._hyper_names},
        }

    def save(self, path):
        """Write the weights and the config to ``path`` (``.npz``, added if missing).

        The file is written to a temporary file in the same folder and renamed over
        ``path``, so a crash never leaves a half-written model.  Returns the path.
        """
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        arrays = self.state_dict()
        arrays[_CONFIG_KEY] = numpy.array(json.dumps(self.config()))
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                                   dir=folder)
        try:
            with os.fdopen(fd, "wb") as f:
                numpy.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return path

    @classmethod
    def load(cls, path, *, encoder=None, decoder=None):
        """The model saved at ``path``.  ``Autoencoder.load`` accepts any flavor; a
        flavor's own ``load`` only its flavor.  A model built from your own Modules
        needs freshly built ``encoder`` and ``decoder`` of the same shapes."""
        config, weights = _read(path)
        flavor = config["flavor"]
        if flavor not in Autoencoder._flavors:
            raise ValueError(f"{path}: unknown autoencoder flavor {flavor!r}; expected one of "
                             f"{sorted(Autoencoder._flavors)}")
        target = Autoencoder._flavors[flavor]
        if cls is not Autoencoder and cls is not target:
            raise ValueError(f"{path} holds a {flavor!r} autoencoder ({target.__name__}), not "
                             f"a {cls.flavor!r} one; load it with {target.__name__}.load or "
                             f"Autoencoder.load")
        options = dict(activation=config["activation"], output=config["output"],
                       loss=config["loss"], dtype=config["dtype"], seed=config["seed"],
                       **config["hyper"])
        if target._has_latent_activation:
            options["latent_activation"] = config["latent_activation"]
        if config["custom"]:
            if encoder is None or decoder is None:
                raise ValueError(f"{path} holds a model built from your own encoder and "
                                 f"decoder Modules; pass freshly built ones: "
                                 f"{target.__name__}.load(path, encoder=..., decoder=...)")
            sizes = config["sizes"]
            model = target(encoder=encoder, decoder=decoder, input_dim=sizes[0],
                           latent_dim=sizes[-1], **options)
        else:
            if encoder is not None or decoder is not None:
                raise ValueError(f"{path} holds a model built from sizes; do not pass "
                                 f"encoder or decoder")
            model = target(config["sizes"], **options)
        model._set_weights(weights, path)
        return model

    def load_weights(self, path):
        """Copy the weights saved at ``path`` into this model (same flavor and shapes)."""
        config, weights = _read(path)
        if config["flavor"] != self.flavor:
            raise ValueError(f"{path} holds a {config['flavor']!r} autoencoder; this model is "
                             f"a {self.flavor!r} one")
        if list(config["sizes"]) != list(self.sizes):
            raise ValueError(f"{path} holds an autoencoder of sizes {config['sizes']}; this "
                             f"model has sizes {self.sizes}")
        self._set_weights(weights, path)
        return self

    _has_latent_activation = True

    def _set_weights(self, weights, path):
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        if missing or unexpected:
            raise ValueError(f"{path}: the weights do not fit this {self._name}: missing "
                             f"{missing}, unexpected {unexpected}")
        for name, p in own.items():
            w = weights[name]
            if w.shape != p.shape:
                raise ValueError(f"{path}: weight {name!r} has shape {w.shape}; this "
                                 f"{self._name} needs {p.shape}")
            if str(w.dtype) != str(p.dtype):
                raise ValueError(f"{path}: weight {name!r} has dtype {w.dtype}; expected "
                                 f"{p.dtype}")
            bad = int(numpy.size(w) - numpy.isfinite(w).sum())
            if bad:
                raise ValueError(f"{path}: weight {name!r} holds {bad} NaN or infinite values; "
                                 f"the file is damaged or was saved from a diverged model")
        self.load_state_dict(weights)

    def extra_repr(self):
        return f"flavor={self.flavor!r}, sizes={self.sizes}, loss={self.loss_name!r}"


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------

def _read(path):
    """``(config, {name: array})`` from a file written by :meth:`Autoencoder.save`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"no autoencoder file at {path}")
    try:
        with numpy.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path} is not a complete autoencoder file (truncated or "
                         f"corrupt?): {type(e).__name__}: {e}") from None
    if _CONFIG_KEY not in arrays:
        raise ValueError(f"{path} is an .npz file without an autoencoder config; was it "
                         f"written by Autoencoder.save?")
    try:
        config = json.loads(str(arrays.pop(_CONFIG_KEY)[()]))
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: the autoencoder config is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != _FORMAT_NAME:
        raise ValueError(f"{path}: not an autoencoder file (format {config.get('format')!r})"
                         if isinstance(config, dict) else f"{path}: malformed config")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} was written in file format version "
                         f"{config['format_version']}; this version reads up to "
                         f"{FORMAT_VERSION}; upgrade the package")
    return config, arrays


def _check_sizes(name, sizes, minimum):
    if sizes is None:
        raise ValueError(f"{name}: give sizes [input_dim, hidden..., latent_dim], or your own "
                         f"encoder and decoder")
    try:
        sizes = list(sizes)
    except TypeError:
        raise ValueError(f"{name}: sizes must be a list of integers, got {sizes!r}") from None
    if len(sizes) < minimum:
        raise ValueError(f"{name}: sizes needs at least {minimum} entries "
                         f"[input_dim, ..., latent_dim], got {sizes}")
    for i, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, (int, numpy.integer)) or n <= 0:
            raise ValueError(f"{name}: sizes[{i}] = {n!r}; every size must be a positive "
                             f"integer (sizes = {sizes})")
    return [int(n) for n in sizes]


def _move_optimizer(opt, device):
    """Move an optimizer's per-parameter arrays to ``device`` (counts stay as they are)."""
    from minigrad.device import move
    for name in opt._buffer_names:
        setattr(opt, name, [move(b, device) if hasattr(b, "shape") else b
                            for b in getattr(opt, name)])


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


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_rng(rng):
    if not isinstance(rng, numpy.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


def _floats(total, terms):
    out = {"total": float(total.item())}
    for key, value in terms.items():
        out[key] = float(value.item()) if isinstance(value, Tensor) else float(value)
    return out


class _Progress:
    """A tqdm bar over all batches when tqdm is installed, else one printed line per epoch."""

    def __init__(self, enabled, epochs, n_batches):
        self.enabled, self.epochs = bool(enabled), epochs
        self.bar = None
        if self.enabled and _tqdm is not None:
            self.bar = _tqdm(total=epochs * n_batches, unit="batch", dynamic_ncols=True)

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
