"""Optimizers: SGD (momentum, Nesterov, weight decay), Adam and AdamW.

Each updates its parameters' data in place from their ``.grad``; parameters
without a gradient are skipped.  The update of one parameter is one kernel of
the active backend (``sgd_update`` / ``adam_update`` in
:mod:`minigrad.kernels.optim`, where the equations are written out and the
NumPy reference sits beside the fused versions).
"""
from __future__ import annotations

import numpy

from .backend import get_backend

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]


class Optimizer:
    def __init__(self, params, lr):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {lr!r}")
        self.lr = float(lr)
        self.step_count = 0

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def state_dict(self):
        """Hyper-parameters, the step count and per-parameter buffers (host copies)."""
        buffers = {}
        for name in self._buffer_names:
            buffers[name] = [None if b is None else _host(b) for b in getattr(self, name)]
        return {"hyper": self._hyper(), "step_count": self.step_count, "buffers": buffers}

    def load_state_dict(self, state):
        for name, values in state["buffers"].items():
            own = getattr(self, name)
            if len(values) != len(own):
                raise ValueError(f"{type(self).__name__}.load_state_dict: {name} has "
                                 f"{len(values)} entries, expected {len(own)}")
            for i, (p, v) in enumerate(zip(self.params, values)):
                if v is not None and tuple(v.shape) != p.shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: {name}[{i}] "
                                     f"has shape {tuple(v.shape)}, expected {p.shape}")
            setattr(self, name, [None if v is None else p.xp.array(v, dtype=p.dtype)
                                 for p, v in zip(self.params, values)])
        self.step_count = int(state["step_count"])
        for key, value in state["hyper"].items():
            setattr(self, key, value)


def _host(a):
    return a.get() if hasattr(a, "get") else numpy.array(a, copy=True)


class SGD(Optimizer):
    """g <- g + wd p;  v <- mu v + g;  p <- p - lr (g + mu v if nesterov else v)."""

    _buffer_names = ("velocity",)

    def __init__(self, params, lr=1e-2, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(params, lr)
        if nesterov and momentum <= 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.weight_decay = float(weight_decay)
        self.velocity = [None] * len(self.params)

    def _hyper(self):
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def step(self):
        self.step_count += 1
        update = get_backend().kernel("sgd_update")
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            if self.momentum and self.velocity[i] is None:
                self.velocity[i] = p.xp.zeros_like(p.data)
            update(p.data, p.grad, self.velocity[i], self.lr, self.momentum,
                   self.weight_decay, self.nesterov)


class Adam(Optimizer):
    """Adam with bias correction (Kingma & Ba):

        g <- g + wd p                       (Adam: L2 penalty in the gradient)
        m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2
        p <- p - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    """

    _buffer_names = ("m", "v")
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        self.beta1, self.beta2 = (float(b) for b in betas)
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"{type(self).__name__}: betas must lie in [0, 1), got {betas}")
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.m = [p.xp.zeros_like(p.data) for p in self.params]
        self.v = [p.xp.zeros_like(p.data) for p in self.params]

    def _hyper(self):
        return {"lr": self.lr, "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps,
                "weight_decay": self.weight_decay}

    def step(self):
        self.step_count += 1
        update = get_backend().kernel("adam_update")
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            update(p.data, p.grad, m, v, self.lr, self.beta1, self.beta2, self.eps,
                   self.weight_decay, self.step_count, self.decoupled)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p <- p - lr wd p, then Adam."""

    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)
