"""What the convolution layers of :mod:`minigrad.nn` (Conv2d, ConvTranspose2d) do
around the primitives of :mod:`minigrad.conv`: their arguments checked, their
output shape, PyTorch's initialisation, and :func:`layer_forward`, the one place
that decides between the fused activation and the activation primitive."""
from __future__ import annotations

import math

from .conv import (check_input, check_output_padding, conv2d, conv_transpose2d, is_int,
                   pair)
from .functions import activate

__all__ = ["layer_arguments", "layer_output_shape", "layer_repr", "layer_forward",
           "initial_parameters"]


def layer_arguments(op, in_channels, out_channels, kernel_size, stride, padding,
                    output_padding):
    """A convolution layer's arguments, checked (a ValueError naming the argument and
    its value) and normalized: ``(in_channels, out_channels, kernel_size, stride,
    padding, output_padding)``, the last four as pairs."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{op}: {name}={value!r}; expected a positive integer")
    stride = pair(op, "stride", stride, 1)
    output_padding = pair(op, "output_padding", output_padding, 0)
    check_output_padding(op, output_padding, stride)
    return (int(in_channels), int(out_channels), pair(op, "kernel_size", kernel_size, 1),
            stride, pair(op, "padding", padding, 0), output_padding)


def layer_output_shape(layer, input_shape, batched=False):
    """:meth:`minigrad.nn.Conv2d.output_shape` (and ConvTranspose2d's): (C, H, W) out
    for (C, H, W) in, or (N, C, H, W) for (N, C, H, W) (only that when ``batched``)."""
    shape = tuple(input_shape)
    size = check_input(repr(layer), shape, layer.in_channels, layer.kernel_size,
                       layer.stride, layer.padding,
                       layer.output_padding if layer.transposed else None,
                       unbatched=not batched)
    return shape[:-3] + (layer.out_channels,) + tuple(size)


def layer_repr(layer):
    extra = f", output_padding={layer.output_padding}" if layer.transposed else ""
    return (f"{layer.in_channels}, {layer.out_channels}, kernel_size={layer.kernel_size}, "
            f"stride={layer.stride}, padding={layer.padding}{extra}"
            + ("" if layer.bias is not None else ", bias=False")
            + ("" if layer.activation == "identity" else f", activation={layer.activation!r}"))


def layer_forward(layer, x):
    """The output of a Conv2d or ConvTranspose2d ``layer`` for the batch ``x``.

    The one place that decides, as ``nn.Dense`` does: on a device with fused kernels
    (Numba, CUDA) the activation runs inside the convolution's own pass over its
    output (and its derivative inside backward's); on the NumPy reference backend it
    is the activation primitive applied to the convolution's output."""
    layer_output_shape(layer, x.shape, batched=True)  # errors name the layer
    fused = x.device.fused or layer.activation == "identity"
    options = dict(activation=layer.activation if fused else None,
                   negative_slope=layer.negative_slope)
    if layer.transposed:
        y = conv_transpose2d(x, layer.weight, layer.bias, layer.stride, layer.padding,
                             layer.output_padding, **options)
    else:
        y = conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding, **options)
    return y if fused else activate(y, layer.activation, layer.negative_slope)


def initial_parameters(layer, rng, bias):
    """A layer's (weight, bias or None) as PyTorch initialises them (kaiming-uniform
    with a = sqrt 5): U(-a, a), a = 1 / sqrt(fan_in), fan_in = weight.shape[1] kh kw --
    in_channels kh kw for Conv2d, out_channels kh kw for ConvTranspose2d, whose weight
    is (in_channels, out_channels, kh, kw)."""
    channels = (layer.in_channels, layer.out_channels)
    shape = (channels if layer.transposed else channels[::-1]) + layer.kernel_size
    limit = 1.0 / math.sqrt(math.prod(shape[1:]))
    weight = rng.uniform(-limit, limit, shape)
    return weight, (rng.uniform(-limit, limit, layer.out_channels) if bias else None)
