"""Learning-rate schedules and gradient-norm clipping (re-exported by
:mod:`minigrad.optim`: ``optim.StepLR``, ``optim.clip_grad_norm``, ...).

A schedule is bound to an optimizer and owns its ``lr``: it takes ``base_lr`` from
``optimizer.lr`` when it is made, and each ``step()`` -- called once at the end of
every epoch -- sets ``optimizer.lr`` for the next epoch::

    opt = optim.Adam(model.parameters(), lr=1e-3)
    schedule = optim.CosineAnnealingLR(opt, epochs=30)
    for epoch in range(30):
        for batch in batches:
            ...; loss.backward()
            optim.clip_grad_norm(model.parameters(), 1.0)
            opt.step()
        schedule.step(validation_loss)   # the metric: only ReduceLROnPlateau reads it

``state_dict()`` is a JSON-serialisable dict of Python numbers (an infinite
"best so far" is stored as None); ``load_state_dict`` restores it exactly, so a
schedule saved after k epochs and loaded into a fresh one continues with the
same learning rates, bit for bit.
"""
from __future__ import annotations

import math
import numbers

from .optim import Optimizer, _check
from .tensor import Tensor

__all__ = ["StepLR", "CosineAnnealingLR", "ReduceLROnPlateau", "clip_grad_norm"]


def _check_int(owner, what, value, minimum):
    """``value`` is an integer (not a bool) >= ``minimum``, or an error names it."""
    _check(owner, what, value, lambda v: isinstance(v, numbers.Integral) and v >= minimum,
           f"must be an integer >= {minimum}")
    return int(value)


class _Schedule:
    """What every schedule shares: the optimizer, ``base_lr``, the number of epochs
    stepped (``epoch``), the current ``lr`` and the state.  A subclass lists its
    constructor arguments in ``_hyper_names`` and checks them in ``_checked_hyper``,
    returns its running state from ``_state`` (checked on loading by
    ``_checked_state``) and computes the next ``lr`` in ``step``."""

    _hyper_names = ()

    def __init__(self, optimizer, **hyper):
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: optimizer must be a minigrad.optim.Optimizer, got "
                            f"{optimizer!r} ({type(optimizer).__name__})")
        self.optimizer = optimizer
        self.base_lr = float(optimizer.lr)
        self.epoch = 0
        self._lr = self.base_lr
        self.__dict__.update(self._checked_hyper(name, hyper, self.base_lr))

    @property
    def lr(self):
        """The learning rate of the coming epoch (what ``optimizer.lr`` was set to)."""
        return self._lr

    def _set_lr(self, lr):
        self._lr = float(lr)
        self.optimizer.lr = self._lr

    def step(self, metric=None):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def _checked_hyper(cls, owner, hyper, base_lr):  # pragma: no cover - abstract
        raise NotImplementedError

    def _checked_state(self, owner, state):
        return {}

    def _state(self):
        return {}

    # -- state -----------------------------------------------------------------
    def state_dict(self):
        """``{"base_lr", "epoch", "lr", <constructor arguments>, <running state>}``:
        Python ints and floats (and None), ready for ``json.dumps``."""
        state = {"base_lr": self.base_lr, "epoch": self.epoch, "lr": self._lr}
        state.update({key: getattr(self, key) for key in self._hyper_names})
        state.update(self._state())
        return state

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict` of the same schedule type (its arguments
        included) and set ``optimizer.lr`` to its ``lr``; checks everything before
        changing anything."""
        owner = f"{type(self).__name__}.load_state_dict"
        if not isinstance(state, dict):
            raise TypeError(f"{owner}: the state must be a dict, got {type(state).__name__}")
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"{owner}: the state has keys {sorted(state)}, expected "
                             f"{sorted(expected)} (a state of another schedule?)")
        _check(owner, "base_lr", state["base_lr"], lambda v: v > 0, "must be positive")
        base_lr = float(state["base_lr"])
        values = {"base_lr": base_lr, "epoch": _check_int(owner, "epoch", state["epoch"], 0)}
        _check(owner, "lr", state["lr"], lambda v: v >= 0, "must be >= 0")
        values.update(self._checked_hyper(
            owner, {key: state[key] for key in self._hyper_names}, base_lr))
        values.update(self._checked_state(owner, state))
        self.__dict__.update(values)
        self._set_lr(state["lr"])
        return self

    def __repr__(self):
        args = ", ".join(f"{key}={getattr(self, key)!r}" for key in self._hyper_names)
        return (f"{type(self).__name__}({args}, base_lr={self.base_lr!r}, "
                f"epoch={self.epoch}, lr={self._lr!r})")


class StepLR(_Schedule):
    """Decay by ``gamma`` every ``step_size`` epochs; after n calls of ``step()``:

        lr = base_lr * gamma ** (n // step_size)

    ``step_size``: a positive integer; ``gamma`` in (0, 1].
    """

    _hyper_names = ("step_size", "gamma")

    def __init__(self, optimizer, step_size, gamma=0.1):
        super().__init__(optimizer, step_size=step_size, gamma=gamma)

    @classmethod
    def _checked_hyper(cls, owner, hyper, base_lr):
        _check(owner, "gamma", hyper["gamma"], lambda v: 0 < v <= 1, "must lie in (0, 1]")
        return {"step_size": _check_int(owner, "step_size", hyper["step_size"], 1),
                "gamma": float(hyper["gamma"])}

    def step(self, metric=None):
        """End of an epoch (``metric`` is ignored): set the next epoch's lr."""
        self.epoch += 1
        self._set_lr(self.base_lr * self.gamma ** (self.epoch // self.step_size))


class CosineAnnealingLR(_Schedule):
    """Half a cosine from ``base_lr`` down to ``min_lr`` over ``epochs`` epochs, then
    ``min_lr``; after n calls of ``step()``:

        lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * min(n, epochs) / epochs)) / 2

    ``epochs``: a positive integer; ``min_lr`` in [0, base_lr].
    """

    _hyper_names = ("epochs", "min_lr")

    def __init__(self, optimizer, epochs, min_lr=0.0):
        super().__init__(optimizer, epochs=epochs, min_lr=min_lr)

    @classmethod
    def _checked_hyper(cls, owner, hyper, base_lr):
        _check(owner, "min_lr", hyper["min_lr"], lambda v: 0 <= v <= base_lr,
               f"must lie in [0, base_lr={base_lr!r}]")
        return {"epochs": _check_int(owner, "epochs", hyper["epochs"], 1),
                "min_lr": float(hyper["min_lr"])}

    def step(self, metric=None):
        """End of an epoch (``metric`` is ignored): set the next epoch's lr."""
        self.epoch += 1
        n = min(self.epoch, self.epochs)
        self._set_lr(self.min_lr + (self.base_lr - self.min_lr)
                     * (1 + math.cos(math.pi * n / self.epochs)) / 2)


class ReduceLROnPlateau(_Schedule):
    """Cut the lr when a metric to minimise stops improving.  Each ``step(metric)``:

        improved  <=>  metric < best * (1 - threshold)   (PyTorch's mode "min", "rel")
        improved: best = metric, bad_epochs = 0;  otherwise bad_epochs += 1
        bad_epochs > patience:  lr = max(lr * factor, min_lr), bad_epochs = 0

    ``best`` starts at +inf (so the first metric is an improvement).  ``factor`` in
    (0, 1); ``patience`` an integer >= 0; ``threshold`` in [0, 1); ``min_lr`` in
    [0, base_lr].  (As in PyTorch, for a negative ``best`` the relative threshold
    is on the other side of it: a slightly worse metric counts as an improvement.)
    """

    _hyper_names = ("factor", "patience", "threshold", "min_lr")

    def __init__(self, optimizer, factor=0.1, patience=10, threshold=1e-4, min_lr=0.0):
        super().__init__(optimizer, factor=factor, patience=patience, threshold=threshold,
                         min_lr=min_lr)
        self.best = math.inf
        self.bad_epochs = 0

    @classmethod
    def _checked_hyper(cls, owner, hyper, base_lr):
        _check(owner, "factor", hyper["factor"], lambda v: 0 < v < 1, "must lie in (0, 1)")
        _check(owner, "threshold", hyper["threshold"], lambda v: 0 <= v < 1,
               "must lie in [0, 1)")
        _check(owner, "min_lr", hyper["min_lr"], lambda v: 0 <= v <= base_lr,
               f"must lie in [0, base_lr={base_lr!r}]")
        return {"factor": float(hyper["factor"]),
                "patience": _check_int(owner, "patience", hyper["patience"], 0),
                "threshold": float(hyper["threshold"]), "min_lr": float(hyper["min_lr"])}

    def _state(self):
        return {"best": None if self.best == math.inf else self.best,
                "bad_epochs": self.bad_epochs}

    def _checked_state(self, owner, state):
        best = state["best"]
        if best is not None:
            _check(owner, "best", best, lambda v: True, "must be None (+inf) or a finite number")
        return {"best": math.inf if best is None else float(best),
                "bad_epochs": _check_int(owner, "bad_epochs", state["bad_epochs"], 0)}

    def step(self, metric=None):
        """End of an epoch: ``metric`` (a finite number, e.g. the validation loss)
        decides the next epoch's lr."""
        _check(f"{type(self).__name__}.step", "metric", metric, lambda v: True,
               "must be a finite number (e.g. the epoch's validation loss)")
        metric = float(metric)
        self.epoch += 1
        if metric < self.best * (1 - self.threshold):
            self.best = metric
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        lr = self._lr
        if self.bad_epochs > self.patience:
            lr = max(lr * self.factor, self.min_lr)
            self.bad_epochs = 0
        self._set_lr(lr)


def clip_grad_norm(params, max_norm):
    """Scale the gradients so that their global L2 norm is at most ``max_norm``.

    The norm is over the ``.grad`` of every parameter that has one (those without
    are skipped): ``norm = sqrt(sum over grads of sum(g ** 2))``, the squares summed
    in float64 on each parameter's device (``p.xp``) and read to the host once per
    device.  If ``norm > max_norm``, every gradient is multiplied in place by
    ``max_norm / (norm + 1e-6)`` (PyTorch's formula).  A norm that is not finite
    (an inf or NaN gradient) leaves the gradients unchanged.

    ``params``: Tensors (a list, a generator, ``model.parameters()``) or one Tensor;
    ``max_norm``: a positive finite number.  Returns the norm before clipping, a
    Python float (0.0 when no parameter has a gradient).
    """
    owner = "clip_grad_norm"
    _check(owner, "max_norm", max_norm, lambda v: v > 0, "must be positive")
    params = [params] if isinstance(params, Tensor) else list(params)
    grads, squares = [], {}  # squares: one float64 device scalar per array namespace
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{owner}: parameter {i} is a {type(p).__name__}, not a Tensor")
        if p.grad is None:
            continue
        xp, g = p.xp, p.grad
        grads.append(g)
        squares[xp] = squares.get(xp, 0.0) + _sum_of_squares(xp, g)
    norm = math.sqrt(sum(float(s) for s in squares.values()))  # the host reads
    if math.isfinite(norm) and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        seen = set()
        for g in grads:
            if id(g) not in seen:  # an array given as two parameters' grad: scaled once
                seen.add(id(g))
                g *= scale
    return norm


def _sum_of_squares(xp, g):
    """``sum(g ** 2)`` accumulated in float64, a 0-d array (or scalar) on g's device:
    a float64 contiguous gradient through a dot product (no temporary), any other
    one through one float64 array of its squares (float32 squares could overflow)."""
    if g.dtype == xp.float64 and g.flags.c_contiguous:
        return xp.vdot(g, g)
    return xp.square(g, dtype=xp.float64).sum()
