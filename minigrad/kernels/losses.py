"""Kernels of the reconstruction losses: one pass over the batch each way.

* ``bce_with_logits_forward(logits, target) -> float``: the sum over all elements
  of  max(x, 0) - x t + ln(1 + e^-|x|)  (binary cross-entropy of sigmoid(x)
  against t, finite for any logit), accumulated in float64;
* ``bce_with_logits_backward(logits, target, scale) -> grad``:
  (sigmoid(x) - t) * scale, scale being d(loss)/d(sum), e.g. 1 / batch;
* ``mse_forward(pred, target) -> float``: sum of (pred - target)^2;
* ``mse_backward(pred, target, scale) -> grad``: 2 (pred - target) * scale.
"""
from __future__ import annotations

import math

import numpy as np

from . import register
from ._jit import kernel, prange


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def bce_with_logits_forward_numpy(logits, target):
    x, t = logits.astype(np.float64), target.astype(np.float64)
    return float(np.sum(np.maximum(x, 0) - x * t + np.log1p(np.exp(-np.abs(x)))))


def bce_with_logits_backward_numpy(logits, target, scale):
    e = np.exp(-np.abs(logits))
    sig = np.where(logits >= 0, 1 / (1 + e), e / (1 + e))
    return ((sig - target) * logits.dtype.type(scale)).astype(logits.dtype, copy=False)


def mse_forward_numpy(pred, target):
    diff = pred.astype(np.float64) - target
    return float(np.sum(diff * diff))


def mse_backward_numpy(pred, target, scale):
    return ((pred - target) * pred.dtype.type(2 * scale)).astype(pred.dtype, copy=False)


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

@kernel
def _bce_forward(x, t):
    total = 0.0
    for i in prange(x.size):
        v = float(x[i])
        total += max(v, 0.0) - v * t[i] + math.log1p(math.exp(-abs(v)))
    return total


@kernel
def _bce_backward(x, t, scale, out):
    for i in prange(x.size):
        e = math.exp(-abs(x[i]))
        s = 1 / (1 + e) if x[i] >= 0 else e / (1 + e)
        out[i] = (s - t[i]) * scale


@kernel
def _mse_forward(p, t):
    total = 0.0
    for i in prange(p.size):
        d = float(p[i]) - t[i]
        total += d * d
    return total


@kernel
def _mse_backward(p, t, scale, out):
    for i in prange(p.size):
        out[i] = (p[i] - t[i]) * scale


def _flat(a):
    return np.ascontiguousarray(a).reshape(-1)


def bce_with_logits_forward_numba(logits, target):
    return float(_bce_forward(_flat(logits), _flat(target), size=logits.size))


def bce_with_logits_backward_numba(logits, target, scale):
    out = np.empty(logits.shape, dtype=logits.dtype)
    _bce_backward(_flat(logits), _flat(target), logits.dtype.type(scale), out.reshape(-1),
                  size=logits.size)
    return out


def mse_forward_numba(pred, target):
    return float(_mse_forward(_flat(pred), _flat(target), size=pred.size))


def mse_backward_numba(pred, target, scale):
    out = np.empty(pred.shape, dtype=pred.dtype)
    _mse_backward(_flat(pred), _flat(target), pred.dtype.type(2 * scale), out.reshape(-1),
                  size=pred.size)
    return out


register("bce_with_logits_forward", numpy=bce_with_logits_forward_numpy,
         numba=bce_with_logits_forward_numba)
register("bce_with_logits_backward", numpy=bce_with_logits_backward_numpy,
         numba=bce_with_logits_backward_numba)
register("mse_forward", numpy=mse_forward_numpy, numba=mse_forward_numba)
register("mse_backward", numpy=mse_backward_numpy, numba=mse_backward_numba)
