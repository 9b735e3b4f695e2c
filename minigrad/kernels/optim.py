"""Kernels of the optimizer updates, in place over one parameter each call.

* ``sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov)``:
      g <- g + wd p;   v <- mu v + g;   p <- p - lr (g + mu v if nesterov else v)
  (``velocity`` is None when momentum is 0: then p <- p - lr g);
* ``adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
  decoupled)``, bias-corrected Adam; ``decoupled=True`` is AdamW:
      g <- g + wd p  (Adam)      or      p <- p - lr wd p  (AdamW)
      m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
      p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

Denormals: a unit whose gradient is exactly 0 (a dead ReLU) has moments that
decay geometrically and, after a few hundred steps, fall below the smallest
normal float32; arithmetic on such subnormals is many times slower and every
later step pays for it.  The updates flush moments below the smallest normal
number of their dtype to exactly 0, which changes no result that matters (the
step they contribute is below 1e-30).
"""
from __future__ import annotations

import numpy as np

from . import register
from ._jit import kernel, prange


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def _flush_subnormals(a):
    a[np.abs(a) < np.finfo(a.dtype).tiny] = 0


def sgd_update_numpy(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    g = grad + weight_decay * param if weight_decay else grad
    if velocity is not None:
        velocity *= momentum
        velocity += g
        _flush_subnormals(velocity)
        g = g + momentum * velocity if nesterov else velocity
    param -= param.dtype.type(lr) * g


def adam_update_numpy(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                      decoupled):
    g = grad
    if weight_decay and not decoupled:
        g = g + weight_decay * param
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    _flush_subnormals(m)
    _flush_subnormals(v)
    if weight_decay and decoupled:
        param -= param.dtype.type(lr * weight_decay) * param
    step_size = lr / (1 - beta1 ** step)
    root_correction = np.sqrt(1 - beta2 ** step)
    param -= (step_size * m / (np.sqrt(v) / root_correction + eps)).astype(param.dtype)


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

@kernel
def _sgd(p, g, vel, lr, momentum, wd, nesterov, has_velocity, tiny):
    for i in prange(p.size):
        gi = g[i] + wd * p[i]
        if has_velocity:
            vi = momentum * vel[i] + gi
            if abs(vi) < tiny:
                vi = 0.0
            vel[i] = vi
            gi = gi + momentum * vi if nesterov else vi
        p[i] -= lr * gi


@kernel
def _adam(p, g, m, v, lr, beta1, beta2, eps, wd, decoupled, step_size, root_correction,
          tiny):
    for i in prange(p.size):
        gi = g[i]
        if not decoupled:
            gi += wd * p[i]
        mi = beta1 * m[i] + (1 - beta1) * gi
        vi = beta2 * v[i] + (1 - beta2) * gi * gi
        if abs(mi) < tiny:
            mi = 0.0
        if vi < tiny:
            vi = 0.0
        m[i] = mi
        v[i] = vi
        pi = p[i]
        if decoupled:
            pi -= lr * wd * pi
        p[i] = pi - step_size * mi / (np.sqrt(vi) / root_correction + eps)


def _flat(a):
    if not a.flags.c_contiguous:
        raise ValueError(f"optimizer kernels update in place and need C-contiguous arrays, "
                         f"got strides {a.strides} for shape {a.shape}")
    return a.reshape(-1)


def sgd_update_numba(param, grad, velocity, lr, momentum, weight_decay, nesterov):
    vel = velocity if velocity is not None else param
    _sgd(_flat(param), np.ascontiguousarray(grad).reshape(-1), _flat(vel), float(lr),
         float(momentum), float(weight_decay), bool(nesterov), velocity is not None,
         float(np.finfo(param.dtype).tiny), size=param.size)


def adam_update_numba(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                      decoupled):
    _adam(_flat(param), np.ascontiguousarray(grad).reshape(-1), _flat(m), _flat(v),
          float(lr), float(beta1), float(beta2), float(eps), float(weight_decay),
          bool(decoupled), float(lr / (1 - beta1 ** step)),
          float(np.sqrt(1 - beta2 ** step)), float(np.finfo(param.dtype).tiny),
          size=param.size)


register("sgd_update", numpy=sgd_update_numpy, numba=sgd_update_numba)
register("adam_update", numpy=adam_update_numpy, numba=adam_update_numba)
