"""Check analytic gradients against central finite differences (float64).

``gradcheck(fn, inputs)`` reduces a tensor output to a scalar with a fixed
random weighting ``L = sum(w * fn(*inputs))`` (so every output element takes
part; a single-element output is used as it is), then compares ``dL/dx`` from ``backward()`` with

    (L(x + eps e_i) - L(x - eps e_i)) / (2 eps)

for every element ``i`` of every input.  ``mode="random"`` instead compares one
directional derivative per call -- the JVP ``(L(x + eps d) - L(x - eps d)) / 2eps``
along a random direction ``d`` against the VJP ``<dL/dx, d>`` -- which costs two
evaluations instead of two per element, for large inputs.
"""
from __future__ import annotations

import numpy

from .tensor import Tensor, no_grad

__all__ = ["gradcheck"]


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-3, mode="full", seed=0,
              names=None):
    """Raise AssertionError unless ``fn``'s gradients match finite differences.

    ``inputs``: the tensors (float64, ``requires_grad=True``) to differentiate
    with respect to; ``fn(*inputs)`` returns a Tensor.  ``names`` optionally
    labels the inputs in messages.  An element passes when
    ``|analytic - numeric| <= atol + rtol * |numeric|``.  Returns True.
    """
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = tuple(inputs)
    names = list(names) if names is not None else [f"input {i}" for i in range(len(inputs))]
    for name, x in zip(names, inputs):
        if not isinstance(x, Tensor):
            raise TypeError(f"gradcheck: {name} is a {type(x).__name__}; expected a Tensor")
        if x.dtype != numpy.float64:
            raise TypeError(f"gradcheck: {name} has dtype {x.dtype}; finite differences "
                            f"need float64")
        if not x.requires_grad:
            raise ValueError(f"gradcheck: {name} does not have requires_grad=True")
    if mode not in ("full", "random"):
        raise ValueError(f"gradcheck: mode={mode!r}; expected 'full' or 'random'")

    rng = numpy.random.default_rng(seed)
    probe = fn(*inputs)
    if not isinstance(probe, Tensor):
        raise TypeError(f"gradcheck: fn returned {type(probe).__name__}; expected a Tensor")
    # a scalar output is checked as it is; a tensor output through sum(w * out)
    weights = probe.xp.asarray(rng.standard_normal(probe.shape) if probe.size != 1
                               else numpy.ones(probe.shape))

    def scalar_loss():
        out = fn(*inputs)
        if out.shape != probe.shape:
            raise AssertionError(f"gradcheck: fn's output shape changed from {probe.shape} "
                                 f"to {out.shape} between calls")
        return (out * Tensor._wrap(weights, False)).sum()

    for x in inputs:
        x.grad = None
    scalar_loss().backward()
    analytic = [x.grad if x.grad is not None else x.xp.zeros_like(x.data) for x in inputs]

    def value():
        with no_grad():
            return float(scalar_loss().item())

    if mode == "random":
        return _check_direction(inputs, names, analytic, value, eps, atol, rtol, rng)
    for name, x, grad in zip(names, inputs, analytic):
        _check_elements(name, x, grad, value, eps, atol, rtol)
    return True


def _check_elements(name, x, grad, value, eps, atol, rtol):
    if not x.data.flags.c_contiguous:
        x.data = x.xp.ascontiguousarray(x.data)
    flat = x.data.reshape(-1)  # a view: perturbing it perturbs x
    numeric = numpy.empty(flat.shape[0])
    for i in range(flat.shape[0]):
        orig = flat[i].item()
        flat[i] = orig + eps
        up = value()
        flat[i] = orig - eps
        down = value()
        flat[i] = orig
        numeric[i] = (up - down) / (2 * eps)
    analytic = numpy.asarray(_host(grad), dtype=numpy.float64).reshape(-1)
    error = numpy.abs(analytic - numeric)
    allowed = atol + rtol * numpy.abs(numeric)
    bad = error - allowed
    if numpy.any(~numpy.isfinite(analytic)) or numpy.any(bad > 0):
        worst = int(numpy.nanargmax(numpy.where(numpy.isfinite(analytic), bad, numpy.inf)))
        index = tuple(int(i) for i in numpy.unravel_index(worst, x.shape)) if x.shape else ()
        raise AssertionError(
            f"gradcheck: gradient of {name} (shape {x.shape}) is wrong at index {index}: "
            f"analytic {float(analytic[worst])!r}, numeric {float(numeric[worst])!r}, "
            f"difference {error[worst]:.3g} > tolerance {allowed[worst]:.3g} "
            f"(atol={atol}, rtol={rtol}, eps={eps}); "
            f"{int(numpy.sum(bad > 0))} of {bad.size} elements fail")


def _check_direction(inputs, names, analytic, value, eps, atol, rtol, rng):
    directions = [x.xp.asarray(rng.standard_normal(x.shape)) for x in inputs]
    originals = [x.data.copy() for x in inputs]
    for x, d, o in zip(inputs, directions, originals):
        x.data[...] = o + eps * d
    up = value()
    for x, d, o in zip(inputs, directions, originals):
        x.data[...] = o - eps * d
    down = value()
    for x, o in zip(inputs, originals):
        x.data[...] = o
    jvp = (up - down) / (2 * eps)
    vjp = float(sum(float((g * d).sum()) for g, d in zip(analytic, directions)))
    allowed = atol + rtol * abs(jvp)
    if not numpy.isfinite(vjp) or abs(vjp - jvp) > allowed:
        raise AssertionError(
            f"gradcheck (random direction) over {', '.join(names)}: VJP <grad, d> = {vjp!r} "
            f"but finite-difference JVP = {jvp!r}; difference {abs(vjp - jvp):.3g} > "
            f"tolerance {allowed:.3g} (atol={atol}, rtol={rtol}, eps={eps})")
    return True


def _host(array):
    return array.get() if hasattr(array, "get") else array
