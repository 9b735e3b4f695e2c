"""What an autoencoder's encoder and decoder are made of.

**Dense** (the default): ``sizes = [input_dim, hidden..., latent_dim]``, a stack of
Dense layers, mirrored by the decoder.

**Convolutional** (``channels=(32, 64)`` and ``image_shape=(C, H, W)``): the
encoder reads each row of ``C·H·W`` pixels as an image and puts a convolutional
front before the Dense layers; the decoder mirrors it with transposed
convolutions::

    encoder  x (n, C·H·W) -> Unflatten (C, H, W)
             -> Conv2d(k, stride 2, padding k // 2, activation) per channel count
             -> Flatten -> Dense layers sizes[1:]  (the first one from c_last·h·w)
    decoder  code -> Dense layers back to c_last·h·w (with activation) -> Unflatten
             -> ConvTranspose2d(stride 2, activation) ... -> ConvTranspose2d to C
             -> Flatten  (pre-activations, as the dense decoder gives)

Each stride-2 convolution takes a side of s pixels to ceil(s / 2) (for an odd
kernel with padding k // 2); its transposed twin gives back s exactly with
``output_padding = s - (2 ceil(s/2) - 1)`` -- 1 for an even side, 0 for an odd one
-- so the decoder's output has the input's shape for **any** H x W (checked when the
model is built).  Data stay rows of pixels (or (n, C, H, W) arrays, flattened on
entry), so training, losses, files and search are the same for both kinds.

**Fully convolutional** (``sizes = [input_dim]`` with ``channels``): no Dense layer;
the code is the last convolution's output, flattened (c_last·h·w values, with the
flavor's latent activation), and the decoder starts at its Unflatten.
"""
from __future__ import annotations

import math
import numbers

from minigrad import nn

__all__ = ["ConvShape", "conv_shape", "encoder_front", "decoder_back", "least_weights",
           "renamed_version2"]


class ConvShape:
    """The convolutional part's geometry: ``image_shape`` (C, H, W), ``channels``,
    ``kernel_size`` and, per convolution, the sides it maps."""

    def __init__(self, image_shape, channels, kernel_size):
        self.image_shape = tuple(image_shape)
        self.channels = tuple(channels)
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2
        sides = [self.image_shape[1:]]
        for _ in self.channels:
            h, w = sides[-1]
            sides.append((self._out(h), self._out(w)))
        self.sides = sides  # (H, W) before each convolution, then after the last

    def _out(self, side):
        return (side + 2 * self.padding - self.kernel_size) // 2 + 1

    @property
    def flat_width(self):
        """Values per example after the last convolution (the first Dense layer's input)."""
        h, w = self.sides[-1]
        return self.channels[-1] * h * w

    def output_padding(self, i):
        """For the transposed twin of convolution i: what gives back its input's sides."""
        (h, w), (oh, ow) = self.sides[i], self.sides[i + 1]
        full = lambda out: (out - 1) * 2 - 2 * self.padding + self.kernel_size  # noqa: E731
        return (h - full(oh), w - full(ow))

    def __str__(self):
        k = self.kernel_size
        return (f"{'x'.join(map(str, self.image_shape))} -> conv "
                f"{','.join(map(str, self.channels))} ({k}x{k})")

    def config(self):
        return {"image_shape": list(self.image_shape), "channels": list(self.channels),
                "kernel_size": self.kernel_size}


def conv_shape(name, image_shape, channels, kernel_size, input_dim):
    """The checked :class:`ConvShape` of a flavor's options, or None for a dense model;
    a ValueError naming the option, its value and what is expected."""
    if channels is None and image_shape is None:
        return None
    if channels is None:
        raise ValueError(f"{name}: image_shape={image_shape!r} without channels; give "
                         f"channels=(32, 64) for a convolutional model (or neither)")
    if image_shape is None:
        raise ValueError(f"{name}: channels={channels!r} needs image_shape=(C, H, W), the "
                         f"shape each row of pixels is read as")
    try:
        image_shape, channels = tuple(image_shape), tuple(channels)
    except TypeError:
        raise ValueError(f"{name}: image_shape and channels must be tuples of integers, got "
                         f"{image_shape!r} and {channels!r}") from None
    for option, values, length in (("image_shape", image_shape, 3), ("channels", channels, None)):
        if (length and len(values) != length) or not values or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0
                for v in values):
            raise ValueError(f"{name}: {option}={values!r}; expected "
                             + ("(C, H, W), three positive integers" if length else
                                "one or more positive integers (channels per convolution)"))
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, numbers.Integral) \
            or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"{name}: kernel_size={kernel_size!r}; expected an odd positive "
                         f"integer (so that padding k // 2 keeps the image centred)")
    image_shape = tuple(int(v) for v in image_shape)
    if math.prod(image_shape) != input_dim:
        raise ValueError(f"{name}: image_shape={image_shape} holds {math.prod(image_shape)} "
                         f"values per example but sizes[0] = {input_dim}")
    return ConvShape(image_shape, [int(c) for c in channels], int(kernel_size))


def encoder_front(shape, activation, last_activation, dtype, rng):
    """Unflatten and the convolutions, each with ``activation`` (fused into the layer,
    as Dense's) but the last, which has ``last_activation`` (the code's, in a fully
    convolutional model), then Flatten."""
    layers, c_in = [nn.Unflatten(shape.image_shape)], shape.image_shape[0]
    for i, c_out in enumerate(shape.channels):
        act = last_activation if i == len(shape.channels) - 1 else activation
        layers.append(nn.Conv2d(c_in, c_out, shape.kernel_size, stride=2,
                                padding=shape.padding, activation=act, dtype=dtype, rng=rng))
        c_in = c_out
    return layers + [nn.Flatten()]


def decoder_back(shape, activation, dtype, rng):
    """Unflatten, the transposed convolutions back to the image's channels (each but
    the last with ``activation``), Flatten."""
    (h, w), channels = shape.sides[-1], shape.channels
    layers = [nn.Unflatten((channels[-1], h, w))]
    targets = list(channels[-2::-1]) + [shape.image_shape[0]]
    for i, (c_in, c_out) in enumerate(zip(channels[::-1], targets)):
        conv = len(channels) - 1 - i
        layers.append(nn.ConvTranspose2d(c_in, c_out, shape.kernel_size, stride=2,
                                         padding=shape.padding,
                                         output_padding=shape.output_padding(conv),
                                         activation=activation if conv > 0 else None,
                                         dtype=dtype, rng=rng))
    return layers + [nn.Flatten()]


def renamed_version2(weights, model):
    """The weights of a convolutional model file of format version 2 under today's
    names.  Version 2 put an activation module after each convolution (encoder.1
    Conv2d, encoder.2 ReLU, encoder.3 Conv2d, ...), and the layers after it were
    numbered on; the convolutions now hold their activation, as Dense layers do.  In
    each Sequential the layers with weights come in the same order, so they are
    matched in order; shapes are checked by the caller."""
    def split(name):  # "encoder.body.3.weight" -> ("encoder.body", 3, "weight")
        parts = name.split(".")
        at = max((i for i, p in enumerate(parts) if p.isdigit()), default=None)
        if at is None:
            return None
        return ".".join(parts[:at]), int(parts[at]), ".".join(parts[at + 1:])

    def layers(names):
        found = {}
        for where in filter(None, map(split, names)):
            found.setdefault(where[0], set()).add(where[1])
        return {sequence: sorted(indices) for sequence, indices in found.items()}

    old, new = layers(weights), layers(name for name, _ in model.named_parameters())
    number = {(seq, i): j for seq in old for i, j in zip(old[seq], new.get(seq, []))}
    renamed = {}
    for name, value in weights.items():
        where = split(name)
        j = None if where is None else number.get(where[:2])
        renamed[name if j is None else f"{where[0]}.{j}.{where[2]}"] = value
    return renamed


def least_weights(sizes, shape):
    """A lower bound on the weights a model of ``sizes`` (and ``shape``) holds: what a
    file must contain before its config is trusted to build the model."""
    if shape is None:
        return sum(a * b for a, b in zip(sizes, sizes[1:]))
    k2, c_in, total = shape.kernel_size ** 2, shape.image_shape[0], 0
    for c_out in shape.channels:
        total += c_in * c_out * k2
        c_in = c_out
    dense = [shape.flat_width, *sizes[1:]]
    return total + sum(a * b for a, b in zip(dense, dense[1:]))
