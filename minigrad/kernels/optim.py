"""Kernels of the optimizer updates, in place over one parameter each call.

* ``sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov,
  out=None)``:
      g <- g + wd p;   v <- mu v + g;   p <- p - lr (g + mu v if nesterov else v)
  (``velocity`` is None when momentum is 0: then p <- p - lr g);
* ``adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
  decoupled, out=None)``, bias-corrected Adam; ``decoupled=True`` is AdamW:
      g <- g + wd p  (Adam)      or      p <- p - lr wd p  (AdamW)
      m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
      p <- p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
* ``adam_updates(params, grads, ms, vs, lr, beta1, beta2, eps, weight_decay, steps,
  decoupled, outs=None)``: the same update for a list of parameters (each with its
  own step count t in ``steps``) -- what ``Adam.step`` calls, once per step.  The
  Numba version runs them all in one compiled call: a model's ~10 parameters
  cost one dispatch instead of ten (about 10 us each); the others loop.

``out``, when given (an array of the parameter's shape and dtype), receives the
updated values and ``param`` is left as it was: an optimizer that must keep the
weights from before the step (``fit`` does, to restore the last good ones) then
trades the two arrays instead of copying -- no memory traffic beyond the update's.

Denormals: a unit whose gradient is exactly 0 (a dead ReLU) has moments that
decay geometrically and, after a few hundred steps, fall below the smallest
normal float32; arithmetic on such subnormals is many times slower and every
later step pays for it.  The updates flush moments -- and parameters -- below the
smallest normal number of their dtype to exactly 0, which changes no result that
matters (the step they contribute is below 1e-30); see :mod:`minigrad.denormals`.
"""
from __future__ import annotations

import math

import numpy as np

from ..denormals import flush_subnormals, smallest_normal
from . import _cuda, _jit
from ._jit import kernel, prange, scalar
from ._math import flush, ftz_enter, ftz_exit

KERNELS = ("sgd_update", "adam_update", "adam_updates")


# ----------------------------------------------------------------------------
# NumPy reference
# ----------------------------------------------------------------------------

def sgd_update_numpy(param, grad, velocity, lr, momentum, weight_decay, nesterov,
                     out=None):
    if out is not None:
        out[...] = param
        param = out
    g = grad + weight_decay * param if weight_decay else grad
    if velocity is not None:
        velocity *= momentum
        velocity += g
        flush_subnormals(velocity)
        g = g + momentum * velocity if nesterov else velocity
    param -= param.dtype.type(lr) * g
    flush_subnormals(param)


def adam_update_numpy(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                      decoupled, out=None):
    if out is not None:
        out[...] = param
        param = out
    g = grad
    if weight_decay and not decoupled:
        g = g + weight_decay * param
    m *= beta1
    m += (1 - beta1) * g
    v *= beta2
    v += (1 - beta2) * (g * g)
    flush_subnormals(m)
    flush_subnormals(v)
    if weight_decay and decoupled:
        param -= param.dtype.type(lr * weight_decay) * param
    step_size = lr / (1 - beta1 ** step)
    root_correction = np.sqrt(1 - beta2 ** step)
    param -= (step_size * m / (np.sqrt(v) / root_correction + eps)).astype(param.dtype)
    flush_subnormals(param)


def _each_parameter(adam_update, name):
    """``adam_updates`` as a loop over ``adam_update``, one parameter at a time: the
    NumPy reference, and the CuPy version (a launch is queued, not waited for, so one
    per parameter costs the GPU nothing)."""
    def adam_updates(params, grads, ms, vs, lr, beta1, beta2, eps, weight_decay, steps,
                     decoupled, outs=None):
        for i, (param, grad, m, v, step) in enumerate(zip(params, grads, ms, vs, steps)):
            adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                        decoupled, None if outs is None else outs[i])
    adam_updates.__name__ = adam_updates.__qualname__ = name
    return adam_updates


adam_updates_numpy = _each_parameter(adam_update_numpy, "adam_updates_numpy")


# ----------------------------------------------------------------------------
# Numba
# ----------------------------------------------------------------------------

# The scalars arrive already typed as the parameter's dtype (see the wrappers):
# mixing in Python floats would promote float32 arithmetic to float64 and halve
# the SIMD width of these memory-bound loops.  The new values go to ``out`` when
# ``to_out``, else back into ``p`` (``out`` is then ``p`` as a placeholder): a flag
# rather than out=p, because LLVM's run-time overlap check sends a loop whose
# output aliases an input to its scalar version (9x slower).


@scalar
def _sgd_chunk(p, g, vel, out, to_out, lr, momentum, wd, nesterov, has_velocity, tiny):
    zero = p.dtype.type(0)
    for i in range(p.size):
        gi = g[i] + wd * p[i]
        if has_velocity:
            vi = flush(momentum * vel[i] + gi, tiny, zero)
            vel[i] = vi
            gi = gi + momentum * vi if nesterov else vi
        pi = flush(p[i] - lr * gi, tiny, zero)
        if to_out:
            out[i] = pi
        else:
            p[i] = pi


@kernel
def _sgd(p, g, vel, out, to_out, lr, momentum, wd, nesterov, has_velocity, tiny, blocks):
    n = p.size
    chunk = (n + blocks - 1) // blocks
    for b in prange(blocks):
        saved = ftz_enter()
        lo, hi = b * chunk, min(n, (b + 1) * chunk)
        # a chunk as slices, looped from 0 by a helper: LLVM vectorizes that loop,
        # not one over lo..hi of the whole arrays (measured: 9x slower)
        _sgd_chunk(p[lo:hi], g[lo:hi], vel[lo:hi], out[lo:hi], to_out, lr, momentum, wd,
                   nesterov, has_velocity, tiny)
        ftz_exit(saved)


@scalar
def _adam_chunk(p, g, m, v, out, to_out, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                l2, decay, step_size, inv_root_correction, tiny):
    zero = p.dtype.type(0)
    for i in range(p.size):
        gi = g[i] + l2 * p[i]
        mi = flush(beta1 * m[i] + one_minus_beta1 * gi, tiny, zero)
        vi = flush(beta2 * v[i] + one_minus_beta2 * (gi * gi), tiny, zero)
        m[i] = mi
        v[i] = vi
        pi = flush(p[i] * decay - step_size * mi / (np.sqrt(vi) * inv_root_correction + eps),
                   tiny, zero)
        if to_out:
            out[i] = pi
        else:
            p[i] = pi


@kernel
def _adam(p, g, m, v, out, to_out, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2,
          decay, step_size, inv_root_correction, tiny, blocks):
    n = p.size
    chunk = (n + blocks - 1) // blocks
    for b in prange(blocks):
        saved = ftz_enter()
        lo, hi = b * chunk, min(n, (b + 1) * chunk)
        _adam_chunk(p[lo:hi], g[lo:hi], m[lo:hi], v[lo:hi], out[lo:hi], to_out, beta1,
                    one_minus_beta1, beta2, one_minus_beta2, eps, l2, decay, step_size,
                    inv_root_correction, tiny)
        ftz_exit(saved)


#: Parameters per call of ``_adam_group``: the tuples it takes have this fixed length
#: (a shorter group is padded with empty arrays), so one compiled version serves
#: models of any size.
GROUP = 8


@kernel
def _adam_group(ps, gs, ms, vs, outs, to_out, beta1, one_minus_beta1, beta2, one_minus_beta2,
                eps, l2, decay, step_sizes, inv_root_corrections, tiny):
    """``_adam`` over a tuple of parameters, each with its own bias correction
    (``step_sizes[k]``, ``inv_root_corrections[k]``), serial: the update is bound by
    memory traffic, and waking a second thread costs more than it saves here."""
    saved = ftz_enter()
    for k in range(len(ps)):
        _adam_chunk(ps[k], gs[k], ms[k], vs[k], outs[k], to_out, beta1, one_minus_beta1, beta2,
                    one_minus_beta2, eps, l2, decay, step_sizes[k], inv_root_corrections[k],
                    tiny)
    ftz_exit(saved)


def _flat(a):
    if not a.flags.c_contiguous:
        raise ValueError(f"optimizer kernels update in place and need C-contiguous arrays, "
                         f"got strides {a.strides} for shape {a.shape}")
    return a.ravel()  # a view: the array is C-contiguous


def _out(param, out):
    """The kernel's ``out``: the array given, or ``param`` (in place).  Its shape and
    dtype are checked at the entry point (``_checks``); an overlap is not."""
    if out is None:
        return _flat(param)
    # two distinct arrays that each own their memory cannot overlap (the usual case,
    # checked without NumPy's bounds test)
    if out is param or ((out.base is not None or param.base is not None)
                        and np.may_share_memory(out, param)):
        raise ValueError("out must not overlap the parameter (it receives the new values "
                         "while the parameter keeps the old ones)")
    return _flat(out)


def sgd_update_numba(param, grad, velocity, lr, momentum, weight_decay, nesterov,
                     out=None):
    t = param.dtype.type
    vel = velocity if velocity is not None else param
    _sgd(_flat(param), np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1), _flat(vel),
         _out(param, out), out is not None, t(lr), t(momentum), t(weight_decay), bool(nesterov),
         velocity is not None, smallest_normal(param.dtype), _jit.blocks(param.size),
         size=param.size)


def _typed(dtype, values, _cache={}):
    """``values`` as scalars of ``dtype`` (cached: the same hyper-parameters come
    with every parameter of every step)."""
    key = (dtype, values)
    typed = _cache.get(key)
    if typed is None:
        if len(_cache) > 256:  # a schedule that changes lr every step
            _cache.clear()
        typed = _cache[key] = tuple(dtype.type(v) for v in values)
    return typed


def _adam_scalars(lr, beta1, beta2, eps, weight_decay, decoupled):
    """The hyper-parameters as the kernels take them (Python floats): beta1, 1 - beta1,
    beta2, 1 - beta2, eps, the L2 factor (Adam) and the decay factor (AdamW)."""
    l2 = 0.0 if decoupled else weight_decay          # Adam: wd p joins the gradient
    decay = 1.0 - lr * weight_decay if decoupled else 1.0  # AdamW: p shrinks first
    return beta1, 1 - beta1, beta2, 1 - beta2, eps, l2, decay


def adam_update_numba(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                      decoupled, out=None):
    dtype = param.dtype
    _adam(_flat(param), np.ascontiguousarray(grad, dtype=dtype).reshape(-1), _flat(m),
          _flat(v), _out(param, out), out is not None,
          *_typed(dtype, _adam_scalars(lr, beta1, beta2, eps, weight_decay, decoupled)
                  + (lr / (1 - beta1 ** step), 1 / np.sqrt(1 - beta2 ** step))),
          smallest_normal(dtype), _jit.blocks(param.size), size=param.size)


def adam_updates_numba(params, grads, ms, vs, lr, beta1, beta2, eps, weight_decay, steps,
                       decoupled, outs=None):
    if not params:
        return
    dtype = params[0].dtype
    scalars = _typed(dtype, _adam_scalars(lr, beta1, beta2, eps, weight_decay, decoupled))
    tiny = smallest_normal(dtype)
    empty = np.empty(0, dtype=dtype)
    for lo in range(0, len(params), GROUP):
        group = []  # (p, g, m, v, out) of each parameter, flat
        for i in range(lo, min(lo + GROUP, len(params))):
            p, g = params[i], grads[i]
            if p.dtype != dtype:  # one compiled version per dtype: no mixed tuples
                raise TypeError(f"adam_updates: params[{i}] has dtype {p.dtype}, expected "
                                f"params[0]'s {dtype} (call once per dtype)")
            if g.dtype != dtype or not g.flags.c_contiguous or not g.flags.writeable:
                g = np.array(g, dtype=dtype)  # the tuple's arrays must all be of one type
            flat = _flat(p)
            group.append((flat, g.ravel(), _flat(ms[i]), _flat(vs[i]),
                          flat if outs is None else _out(p, outs[i])))
        pad = [(empty,) * 5] * (GROUP - len(group))
        flat_p, flat_g, flat_m, flat_v, flat_out = zip(*(group + pad))
        # the bias corrections as adam_update_numba computes them (bit for bit: math.sqrt
        # and np.sqrt round a float64 alike), 0 for the padding
        group_steps = steps[lo:lo + GROUP]
        padding = [0.0] * (GROUP - len(group_steps))
        corrections = np.array([[lr / (1 - beta1 ** t) for t in group_steps] + padding,
                                [1 / math.sqrt(1 - beta2 ** t) for t in group_steps] + padding],
                               dtype=dtype)
        _adam_group(flat_p, flat_g, flat_m, flat_v, flat_out, outs is not None, *scalars,
                    corrections[0], corrections[1], tiny)


# ----------------------------------------------------------------------------
# CuPy (the CUDA code is in optim.cu)
# ----------------------------------------------------------------------------
# In place: the parameter and its buffers are read and written by the kernels
# (the arithmetic, in optim.cu, equals the NumPy reference bit for bit).

SGD_CUDA = _cuda.Raw("mg_sgd_update", "optim.cu")
ADAM_CUDA = _cuda.Raw("mg_adam_update", "optim.cu")


def _device_arrays(op, param, grad, *buffers):
    """The gradient as a C-contiguous array of the parameter's dtype, after checking
    that everything is on the GPU and that the updated arrays are C-contiguous (shapes
    and dtypes are checked at the entry point, ``_checks``)."""
    _cuda.check_device_arrays(op, param, grad, *buffers)
    _cuda.suffix(param.dtype)
    for b in (param, *buffers):
        if not b.flags.c_contiguous:
            raise ValueError(f"{op}: the kernels update C-contiguous arrays in place, got "
                             f"strides {b.strides} for shape {b.shape}")
    return _cuda.cupy_module().ascontiguousarray(grad, dtype=param.dtype)


@_cuda.uses(SGD_CUDA)
def sgd_update_cupy(param, grad, velocity, lr, momentum, weight_decay, nesterov,
                    out=None):
    if out is not None:  # the GPU has bandwidth to spare: copy, then update in place
        out[...] = param
        param = out
    buffers = () if velocity is None else (velocity,)
    grad = _device_arrays("sgd_update", param, grad, *buffers)
    t = param.dtype.type
    _cuda.launch(SGD_CUDA, param, (
        grad, param, velocity if velocity is not None else param, np.int64(param.size),
        t(weight_decay), t(lr), t(momentum), smallest_normal(param.dtype),
        np.int32(bool(weight_decay)), np.int32(velocity is not None), np.int32(bool(nesterov))))


@_cuda.uses(ADAM_CUDA)
def adam_update_cupy(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step,
                     decoupled, out=None):
    if out is not None:
        out[...] = param
        param = out
    grad = _device_arrays("adam_update", param, grad, m, v)
    t = param.dtype.type
    mode = 0 if not weight_decay else (2 if decoupled else 1)
    _cuda.launch(ADAM_CUDA, param, (
        grad, param, m, v, np.int64(param.size), t(weight_decay), t(beta1), t(1 - beta1),
        t(beta2), t(1 - beta2), t(lr * weight_decay), t(lr / (1 - beta1 ** step)),
        np.float64(np.sqrt(1 - beta2 ** step)), np.float64(eps), smallest_normal(param.dtype),
        np.int32(mode)))


adam_updates_cupy = _cuda.uses(ADAM_CUDA)(_each_parameter(adam_update_cupy,
                                                            "adam_updates_cupy"))
