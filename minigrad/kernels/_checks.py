"""What every kernel checks before it runs: the arrays' shapes and dtypes.

The kernels index raw memory (Numba loops, CUDA pointers): a gradient of the wrong
shape would be read past its end -- a crash, or garbage written into the weights --
and NumPy would broadcast it silently.  So each entry point of
:class:`minigrad.kernels.Kernels` runs its check here first; a wrong argument is a
ValueError (shape) or TypeError (dtype) that names the kernel, the argument, what
it is and what was expected.
"""
from __future__ import annotations

import numpy

from ..activations import Activation

__all__ = ["CHECKS"]

_FLOATS = (numpy.dtype(numpy.float32), numpy.dtype(numpy.float64))


def _float(op, name, a):
    if getattr(a, "dtype", None) not in _FLOATS:
        raise TypeError(f"{op}: {name} has dtype {getattr(a, 'dtype', type(a).__name__)}; "
                        f"the kernels compute in float32 or float64")


def _like(op, name, a, ref_name, ref, same_dtype=False):
    """``a`` is a float array of ``ref``'s shape (and dtype, if asked)."""
    _float(op, name, a)
    if tuple(a.shape) != tuple(ref.shape):
        raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}, expected {ref_name}'s "
                         f"shape {tuple(ref.shape)}")
    if same_dtype and a.dtype != ref.dtype:
        raise TypeError(f"{op}: {name} has dtype {a.dtype}, expected {ref_name}'s {ref.dtype}")


def _matrix(op, name, a):
    _float(op, name, a)
    if a.ndim != 2:
        raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}; expected a matrix "
                         f"(batch, features)")


def _activation(op, activation):
    if not isinstance(activation, Activation):
        raise TypeError(f"{op}: activation is {activation!r}; expected an entry of "
                        f"minigrad.activations.ACTIVATIONS (minigrad.activations.activation(name))")


def dense_forward(z, bias, activation, slope=0.01):
    _matrix("dense_forward", "z", z)
    _float("dense_forward", "bias", bias)
    if tuple(bias.shape) != (z.shape[1],):
        raise ValueError(f"dense_forward: bias has shape {tuple(bias.shape)}, expected "
                         f"({z.shape[1]},) for z of shape {tuple(z.shape)}")
    _activation("dense_forward", activation)


def dense_backward(grad_y, y, activation, slope=0.01):
    _matrix("dense_backward", "y", y)
    _like("dense_backward", "grad_y", grad_y, "y", y)
    _activation("dense_backward", activation)


def _loss(op):
    def check(pred, target, scale, want_grad=True):
        _float(op, "pred", pred)
        _like(op, "target", target, "pred", pred)
    return check


def value_range(a):
    _float("value_range", "a", a)
    if a.size == 0:
        raise ValueError("value_range: a is empty (shape "
                         f"{tuple(a.shape)}); it has no least or greatest value")


def sgd_update(param, grad, velocity, lr, momentum, weight_decay, nesterov, out=None):
    _float("sgd_update", "param", param)
    _like("sgd_update", "grad", grad, "param", param)
    for name, a in (("velocity", velocity), ("out", out)):
        if a is not None:
            _like("sgd_update", name, a, "param", param, same_dtype=True)


def adam_update(param, grad, m, v, lr, beta1, beta2, eps, weight_decay, step, decoupled,
                out=None):
    _float("adam_update", "param", param)
    _like("adam_update", "grad", grad, "param", param)
    for name, a in (("m", m), ("v", v), ("out", out)):
        if a is not None:
            _like("adam_update", name, a, "param", param, same_dtype=True)


def adam_updates(params, grads, ms, vs, lr, beta1, beta2, eps, weight_decay, steps, decoupled,
                 outs=None):
    lists = {"params": params, "grads": grads, "ms": ms, "vs": vs, "steps": steps}
    if outs is not None:
        lists["outs"] = outs
    for name, values in lists.items():
        if len(values) != len(params):
            raise ValueError(f"adam_updates: {name} has {len(values)} entries, expected one "
                             f"per parameter ({len(params)})")
    for i, (param, grad, m, v) in enumerate(zip(params, grads, ms, vs)):
        out = None if outs is None else outs[i]
        # the usual case in a few comparisons (this runs every step); else find the culprit
        try:
            dtype, shape = param.dtype, param.shape
            if (dtype in _FLOATS and grad.shape == shape and grad.dtype in _FLOATS
                    and m.shape == shape and m.dtype == dtype
                    and v.shape == shape and v.dtype == dtype
                    and (out is None or (out.shape == shape and out.dtype == dtype))):
                continue
        except AttributeError:  # not an array: named below
            pass
        _float("adam_updates", f"params[{i}]", param)
        _like("adam_updates", f"grads[{i}]", grad, f"params[{i}]", param)
        for name, a in ((f"ms[{i}]", m), (f"vs[{i}]", v), (f"outs[{i}]", out)):
            if a is not None:
                _like("adam_updates", name, a, f"params[{i}]", param, same_dtype=True)


def _batch(op, name, a):
    _float(op, name, a)
    if a.ndim != 4:
        raise ValueError(f"{op}: {name} has shape {tuple(a.shape)}; expected an image batch "
                         f"(batch, channels, height, width)")


def _pairs(op, kernel_size, stride, padding):
    """kernel_size and stride pairs of positive ints, padding of non-negative ones."""
    for name, pair, least in (("kernel_size", kernel_size, 1), ("stride", stride, 1),
                              ("padding", padding, 0)):
        if (not isinstance(pair, tuple) or len(pair) != 2
                or not all(isinstance(v, (int, numpy.integer)) and v >= least for v in pair)):
            raise ValueError(f"{op}: {name} is {pair!r}; expected a pair of integers "
                             f">= {least}")


def _conv_output(op, image_shape, kernel_size, stride, padding):
    """(oh, ow), or a ValueError where the kernel is larger than the padded image."""
    h, w = image_shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"{op}: the image of shape {tuple(image_shape)} padded by "
                         f"{padding} is smaller than the kernel {kernel_size}")
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def im2row(x, kernel_size, stride, padding):
    _batch("im2row", "x", x)
    _pairs("im2row", kernel_size, stride, padding)
    _conv_output("im2row", x.shape, kernel_size, stride, padding)


def row2im(rows, image_shape, kernel_size, stride, padding, out=None):
    _float("row2im", "rows", rows)
    image_shape = tuple(image_shape)
    least = (0, 1, 1, 1)  # an empty batch is an empty batch; an empty image is a mistake
    if len(image_shape) != 4 or not all(isinstance(v, (int, numpy.integer)) and v >= m
                                        for v, m in zip(image_shape, least)):
        raise ValueError(f"row2im: image_shape is {image_shape!r}; expected four integers "
                         f"(batch, channels, height, width), the last three positive")
    _pairs("row2im", kernel_size, stride, padding)
    oh, ow = _conv_output("row2im", image_shape, kernel_size, stride, padding)
    n, c = image_shape[:2]
    expected = (n * oh * ow, kernel_size[0] * kernel_size[1] * c)
    if tuple(rows.shape) != expected:
        raise ValueError(f"row2im: rows has shape {tuple(rows.shape)}, expected {expected} "
                         f"(batch * oh * ow, kh * kw * channels) for image_shape "
                         f"{image_shape} and kernel_size {kernel_size}")
    if out is not None:
        _float("row2im", "out", out)
        if tuple(out.shape) != image_shape:
            raise ValueError(f"row2im: out has shape {tuple(out.shape)}, expected image_shape "
                             f"{image_shape}")
        if out.dtype != rows.dtype:
            raise TypeError(f"row2im: out has dtype {out.dtype}, expected rows' {rows.dtype}")


def conv_forward(y, bias, activation, slope=0.01, product=None):
    _batch("conv_forward", "y", y)
    n, c = y.shape[:2]
    if bias is not None:
        _float("conv_forward", "bias", bias)
        if tuple(bias.shape) != (c,):
            raise ValueError(f"conv_forward: bias has shape {tuple(bias.shape)}, expected "
                             f"({c},) for y of shape {tuple(y.shape)}")
    if product is not None:
        _float("conv_forward", "product", product)
        expected = (c, y.size // c if c else 0)
        if tuple(product.shape) != expected:
            raise ValueError(f"conv_forward: product has shape {tuple(product.shape)}, "
                             f"expected {expected} (channels, batch * height * width) for y "
                             f"of shape {tuple(y.shape)}")
        if product.dtype != y.dtype:
            raise TypeError(f"conv_forward: product has dtype {product.dtype}, expected y's "
                            f"{y.dtype}")
    _activation("conv_forward", activation)


def conv_backward(grad_y, y, activation, slope=0.01, channel_major=False):
    _batch("conv_backward", "y", y)
    _like("conv_backward", "grad_y", grad_y, "y", y)
    _activation("conv_backward", activation)


#: kernel name -> its check (called with the kernel's own arguments)
CHECKS = {"dense_forward": dense_forward, "dense_backward": dense_backward,
          "bce_with_logits": _loss("bce_with_logits"), "mse": _loss("mse"),
          "value_range": value_range,
          "sgd_update": sgd_update, "adam_update": adam_update, "adam_updates": adam_updates,
          "im2row": im2row, "row2im": row2im, "conv_forward": conv_forward,
          "conv_backward": conv_backward}
