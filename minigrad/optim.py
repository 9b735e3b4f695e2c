"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW.

Each updates its parameters' data in place from their ``.grad``; parameters
without a gradient are skipped (and, for Adam, do not advance their own step
count, so their bias correction starts when they first receive a gradient, as
in PyTorch).  The update of one parameter is one kernel of the parameter's
device (``p.device.kernels.sgd_update``; Adam updates all of a device's
parameters in one call, ``adam_updates``; :mod:`minigrad.kernels.optim`, where
the equations are written out and the NumPy reference sits beside the fused
versions).  The update kernels flush moments that fall below the smallest
normal number to 0, so a long run never slows down on subnormal arithmetic.
"""
from __future__ import annotations

import math
import numbers

import numpy

from .tensor import Tensor

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    """Base class: holds the parameters, ``lr``, the step count and per-parameter
    buffers (listed in ``_buffer_names``, one entry per parameter)."""

    _buffer_names = ()
    _count_buffers = ()  # buffers of one integer per parameter rather than an array

    def __init__(self, params, lr):
        self.params = list(params)
        name = type(self).__name__
        if not self.params:
            raise ValueError(f"{name}: got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: parameter {i} is a {type(p).__name__}, not a Tensor")
            if not p.requires_grad:
                raise ValueError(f"{name}: parameter {i} (shape {p.shape}) does not require "
                                 f"a gradient")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError(f"{name}: a parameter appears more than once in the list")
        _check(name, "lr", lr, lambda v: v > 0, "must be positive")
        self.lr = float(lr)
        self.step_count = 0

    def zero_grad(self):
        """Drop every parameter's gradient (the next backward starts from nothing)."""
        for p in self.params:
            p.grad = None

    def step(self, previous=None):  # pragma: no cover - abstract
        """One update of every parameter that has a gradient.

        ``previous``: None, or a list with one array per parameter (of its shape and
        dtype, on its device, not sharing its memory).  After the step,
        ``previous[i]`` holds parameter i's values from before it -- what ``fit``
        keeps to restore the last good weights.  The arrays are traded, not copied:
        the update writes the new values into the array that was in ``previous[i]``,
        which becomes the parameter's ``.data``, and the list receives the old
        ``.data`` (so there is no memory traffic beyond the update's own).
        """
        raise NotImplementedError

    def _hyper(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def _updates(self, previous=None):
        """Count a step and yield ``(i, parameter, kernels, out)`` for each parameter
        with a gradient: ``kernels`` are those of the parameter's device, ``out`` the
        array for the new values (None: in place).  With ``previous``, each
        updated parameter then trades arrays with it (see :meth:`step`); parameters
        without a gradient copy their values into theirs."""
        for i, p, out in self._with_grads(previous):
            yield i, p, p.device.kernels, out
            self._trade(i, p, out, previous)

    def _with_grads(self, previous=None):
        """Count a step and list ``(i, parameter, out)`` for each parameter with a
        gradient (``out``: see :meth:`_updates`); with ``previous``, parameters without
        one copy their values into theirs now."""
        self.step_count += 1
        todo = []
        for i, p in enumerate(self.params):
            if p.grad is None:
                if previous is not None:
                    previous[i][...] = p.data
                continue
            if tuple(p.grad.shape) != p.shape:
                raise ValueError(f"{type(self).__name__}.step: parameter {i} has shape {p.shape} "
                                 f"but its gradient has shape {tuple(p.grad.shape)}")
            todo.append((i, p, None if previous is None else previous[i]))
        return todo

    @staticmethod
    def _trade(i, p, out, previous):
        """After parameter i's update into ``out``: it becomes the parameter's data and
        ``previous[i]`` receives the old data (no copy)."""
        if out is not None:
            previous[i], p.data = p.data, out

    # -- state -----------------------------------------------------------------
    def state_dict(self):
        """``{"hyper": {...}, "step_count": n, "buffers": {name: [array or None, ...]}}``
        with host NumPy copies of the buffers, one entry per parameter."""
        buffers = {name: [_host(b) if hasattr(b, "shape") else b for b in getattr(self, name)]
                   for name in self._buffer_names}
        return {"hyper": self._hyper(), "step_count": self.step_count, "buffers": buffers}

    def load_state_dict(self, state):
        """Restore a :meth:`state_dict` of the same optimizer type over parameters of
        the same shapes; checks everything before changing anything."""
        name = type(self).__name__
        buffers = state["buffers"]
        if set(buffers) != set(self._buffer_names):
            raise ValueError(f"{name}.load_state_dict: the state has buffers "
                             f"{sorted(buffers)}, expected {sorted(self._buffer_names)} "
                             f"(a state of another optimizer?)")
        unknown = sorted(set(state["hyper"]) - set(self._hyper()))
        if unknown:
            raise ValueError(f"{name}.load_state_dict: unknown hyper-parameters {unknown}")
        for key, values in buffers.items():
            if len(values) != len(self.params):
                raise ValueError(f"{name}.load_state_dict: {key} has {len(values)} entries, "
                                 f"expected {len(self.params)} (one per parameter)")
            for i, (p, v) in enumerate(zip(self.params, values)):
                if v is None or key in self._count_buffers:
                    continue
                if tuple(numpy.shape(v)) != p.shape:
                    raise ValueError(f"{name}.load_state_dict: {key}[{i}] has shape "
                                     f"{tuple(numpy.shape(v))}, expected {p.shape}")
        for key, values in buffers.items():
            setattr(self, key, [self._load_buffer(key, p, v) for p, v in zip(self.params, values)])
        self.step_count = int(state["step_count"])
        for key, value in state["hyper"].items():
            setattr(self, key, value)
        return self

    def to(self, device):
        """Move the per-parameter buffers (Adam's moments, SGD's velocity) to
        ``device`` ("cpu", "cuda" or a Device) -- after ``model.to(device)``, so that
        they sit where their parameters are.  Counts stay as they are; returns self."""
        from .device import move
        for name in self._buffer_names:
            if name not in self._count_buffers:
                setattr(self, name, [None if b is None else move(b, device)
                                     for b in getattr(self, name)])
        return self

    def _load_buffer(self, key, p, value):
        if key in self._count_buffers:
            return int(value)
        if value is None:
            return None
        return p.xp.array(value, dtype=p.dtype, order="C")


def _check(owner, what, value, ok, message):
    """``value`` (a number, or a tuple of numbers) is finite and passes ``ok``, or a
    TypeError / ValueError names it (a string such as "0.1" or a bool is not a number
    here, and an infinite lr would turn every weight into inf or NaN)."""
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"{owner}: {what} must be a number, got {value!r} "
                            f"({type(v).__name__})")
        if not math.isfinite(v):
            raise ValueError(f"{owner}: {what} {message}, got {value!r} (not finite)")
    if not ok(value):
        raise ValueError(f"{owner}: {what} {message}, got {value!r}")


def _host(a):
    return a.get() if hasattr(a, "get") else numpy.array(a, copy=True)


class SGD(Optimizer):
    """Stochastic gradient descent, per parameter p with gradient g:

        g <- g + wd p                                  (weight decay, if wd > 0)
        v <- mu v + g                                  (momentum buffer, if mu > 0)
        p <- p - lr (g + mu v  if nesterov  else  v)   (p <- p - lr g  without momentum)

    The same convention as PyTorch (no dampening; v starts at 0, so v = g after
    the first step).
    """

    _buffer_names = ("velocity",)

    def __init__(self, params, lr=1e-2, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        _check("SGD", "momentum", momentum, lambda v: 0 <= v < 1, "must lie in [0, 1)")
        _check("SGD", "weight_decay", weight_decay, lambda v: v >= 0, "must be >= 0")
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.velocity = [None] * len(self.params)

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def step(self, previous=None):
        """One update of every parameter that has a gradient (``previous``: see
        :meth:`Optimizer.step`)."""
        for i, p, kernels, out in self._updates(previous):
            if self.momentum and self.velocity[i] is None:
                self.velocity[i] = p.xp.zeros_like(p.data)
            kernels.sgd_update(p.data, p.grad, self.velocity[i], self.lr, self.momentum,
                   self.weight_decay, self.nesterov, out)


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba), per parameter p with gradient g at
    its t-th update:

        g <- g + wd p                                 (L2 penalty, if wd > 0)
        m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
        p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    _buffer_names = ("m", "v", "steps")
    _count_buffers = ("steps",)
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        name = type(self).__name__
        _check(name, "betas", tuple(betas), lambda b: len(b) == 2 and all(0 <= x < 1 for x in b),
               "must be two numbers in [0, 1)")
        _check(name, "eps", eps, lambda v: v >= 0, "must be >= 0")
        _check(name, "weight_decay", weight_decay, lambda v: v >= 0, "must be >= 0")
        self.beta1, self.beta2 = (float(b) for b in betas)
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.m = [p.xp.zeros_like(p.data) for p in self.params]
        self.v = [p.xp.zeros_like(p.data) for p in self.params]
        self.steps = [0] * len(self.params)  # t of each parameter's bias correction

    def _hyper(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay}

    def step(self, previous=None):
        """One update of every parameter that has a gradient (``previous``: see
        :meth:`Optimizer.step`)."""
        todo = self._with_grads(previous)
        groups = {}  # one kernel call per device and dtype (usually a single one)
        for i, p, out in todo:
            self.steps[i] += 1
            # (the device follows from the array's type: looked up once per group)
            group = groups.get((type(p.data), p.dtype))
            if group is None:
                group = groups[(type(p.data), p.dtype)] = (p.device, [])
            group[1].append((i, p, out))
        for device, group in groups.values():
            device.kernels.adam_updates(
                [p.data for _, p, _ in group], [p.grad for _, p, _ in group],
                [self.m[i] for i, _, _ in group], [self.v[i] for i, _, _ in group],
                self.lr, self.beta1, self.beta2, self.eps, self.weight_decay,
                [self.steps[i] for i, _, _ in group], self.decoupled,
                None if previous is None else [out for _, _, out in group])
        for i, p, out in todo:
            self._trade(i, p, out, previous)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): first
    p <- p - lr wd p, then the Adam update above without the L2 term."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


# Learning-rate schedules and gradient clipping live in minigrad/schedules.py (which
# imports Optimizer and _check from here, hence at the end): optim.StepLR, ...
from .schedules import (StepLR, CosineAnnealingLR, ReduceLROnPlateau,  # noqa: E402
                        clip_grad_norm)

__all__ += ["StepLR", "CosineAnnealingLR", "ReduceLROnPlateau", "clip_grad_norm"]
