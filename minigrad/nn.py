"""Layers: Module, Parameter, Dense, Conv2d, ConvTranspose2d, Flatten, Unflatten,
Sequential and activation modules.

A :class:`Module` finds its parameters and sub-modules by attribute: assigning a
:class:`Parameter` or a :class:`Module` to ``self.name`` registers it under
``name`` (sub-module parameters as ``"child.name"``), in assignment order.
"""
from __future__ import annotations

import math

import numpy

from . import activations, conv_layers, threads
from . import functions as F
from .device import device_type, get_backend, move
from .tensor import Function, Tensor

__all__ = ["Parameter", "Module", "Dense", "DenseFunction", "Sequential", "ReLU", "LeakyReLU", "Sigmoid",
           "Tanh", "Softplus", "Identity", "activation_module", "Conv2d", "ConvTranspose2d",
           "Flatten", "Unflatten"]


class Parameter(Tensor):
    """A tensor that a Module trains: a leaf that always requires a gradient."""

    def __init__(self, data, dtype=None):
        super().__init__(data, requires_grad=True, dtype=dtype)
        # optimizers update parameters in place through flat views
        if not self.data.flags.c_contiguous:
            self.data = self.xp.ascontiguousarray(self.data)

    def __repr__(self):
        return "Parameter" + super().__repr__()[len("Tensor"):]


class Module:
    """Base class of layers and models."""

    def __init__(self):
        object.__setattr__(self, "_parameters", {})
        object.__setattr__(self, "_modules", {})
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before "
                               f"assigning attributes")
        self._parameters.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def forward(self, *args, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    # -- traversal -------------------------------------------------------------
    def named_modules(self, prefix=""):
        yield prefix, self
        for name, module in self._modules.items():
            yield from module.named_modules(f"{prefix}{name}.")

    def named_parameters(self, prefix="", _seen=None):
        """(name, Parameter) pairs, this module's first, then each child's.  A
        parameter shared by several layers (tied weights) is listed once, under the
        first name it is reached by, so an optimizer updates it once per step with
        the sum of its gradients."""
        seen = set() if _seen is None else _seen
        for name, p in self._parameters.items():
            if id(p) not in seen:
                seen.add(id(p))
                yield prefix + name, p
        for name, module in self._modules.items():
            yield from module.named_parameters(f"{prefix}{name}.", seen)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def to(self, device):
        """Move every parameter to ``device`` ("cpu" or "cuda") in place; returns self.

        The Parameter objects stay the same (only their ``.data`` is replaced), so
        references to them remain valid; a moved parameter's gradient is dropped
        (it lived on the old device).  Optimizer buffers are not moved: build the
        optimizer after the move.  The layers then compute on ``device`` whatever
        backend is active (the kernels follow the data: ``tensor.device``); an
        input must be on the same device.
        """
        device = device_type(device)
        for p in self.parameters():
            if p.device != device:
                p.data = move(p.data, device)
                p.grad = None
        return self

    def train(self, mode=True):
        for _, module in self.named_modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self):
        return self.train(False)

    # -- state -----------------------------------------------------------------
    def state_dict(self):
        """``{name: host NumPy copy}`` of every parameter."""
        return {name: p.numpy() for name, p in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy ``state`` into the parameters; names, shapes and dtypes must match."""
        own = dict(self.named_parameters())
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f"load_state_dict: parameter names differ: missing {missing}, "
                           f"unexpected {unexpected}")
        for name, p in own.items():
            value = state[name]
            shape = tuple(numpy.shape(value))
            dtype = numpy.asarray(value).dtype if not hasattr(value, "dtype") else value.dtype
            if shape != p.shape:
                raise ValueError(f"load_state_dict: {name!r} has shape {shape}, expected "
                                 f"{p.shape}")
            if numpy.dtype(dtype) != numpy.dtype(p.dtype):
                raise TypeError(f"load_state_dict: {name!r} has dtype {dtype}, expected "
                                f"{p.dtype}")
        for name, p in own.items():
            p.data[...] = p.xp.asarray(state[name])
            p.grad = None
        return self

    def __repr__(self):
        children = "".join(f"\n  ({n}): " + repr(m).replace("\n", "\n  ")
                           for n, m in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{children}{chr(10) if children else ''})"

    def extra_repr(self):
        return ""


# ----------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------

def _activation_name(activation):
    return activations.activation(activation).name  # a ValueError lists the names


class _Activation(Module):
    name = "identity"

    def __init__(self, negative_slope=0.01):
        super().__init__()
        self.negative_slope = float(negative_slope)

    def forward(self, x):
        return x if self.name == "identity" else F.activate(x, self.name, self.negative_slope)


class Identity(_Activation):
    """y = x"""
    name = "identity"


class ReLU(_Activation):
    """y = max(x, 0)"""
    name = "relu"


class LeakyReLU(_Activation):
    """y = x for x > 0, negative_slope * x otherwise"""
    name = "leaky_relu"

    def extra_repr(self):
        return f"negative_slope={self.negative_slope}"


class Sigmoid(_Activation):
    """y = 1 / (1 + e^-x)"""
    name = "sigmoid"


class Tanh(_Activation):
    """y = tanh x"""
    name = "tanh"


class Softplus(_Activation):
    """y = ln(1 + e^x)"""
    name = "softplus"


def activation_module(activation, negative_slope=0.01):
    """The activation Module for a name ("relu", ...) or None (identity)."""
    name = _activation_name(activation)
    cls = {c.name: c for c in (Identity, ReLU, LeakyReLU, Sigmoid, Tanh, Softplus)}[name]
    return cls(negative_slope)


# ----------------------------------------------------------------------------
# Dense and Sequential
# ----------------------------------------------------------------------------

class DenseFunction(Function):
    """y = act(x @ W + b) as one node: the product on the BLAS, then bias and
    activation in one fused kernel pass over the result (in place).

    backward: gz = g * act'(y) and gb = sum over rows of gz (one fused pass);
              gW = x^T gz;  gx = gz W^T (each skipped when nobody needs it).

    Inside :func:`minigrad.threads.split_work` (the BLAS on one thread) the rows of
    the batch are split over the threads, each computing its rows of y (or of gx)
    and its share of gW and gb; the shares are summed in row order.
    """

    def forward(self, x, weight, bias, activation, slope):
        self.activation, self.slope = activation, slope
        kernels = self.device.kernels
        self.parts = parts = _row_parts(self.xp, x)
        if parts is None:
            y = kernels.dense_forward(self.xp.matmul(x, weight), bias, activation, slope)
        else:
            y = self.xp.empty((x.shape[0], weight.shape[1]), dtype=x.dtype)

            def rows(k):
                part = y[parts[k]:parts[k + 1]]
                self.xp.matmul(x[parts[k]:parts[k + 1]], weight, out=part)
                kernels.dense_forward(part, bias, activation, slope)

            threads.each_block(rows, len(parts) - 1)
        self.save_for_backward(x, weight, y)
        return y

    def backward(self, g):
        x, weight, y = self.saved
        kernels, parts = self.device.kernels, self.parts
        need_x, need_w, need_b = self.needs_input_grad
        if parts is None:
            gz, gb = kernels.dense_backward(g, y, self.activation, self.slope)
            gx = gz @ weight.T if need_x else None
            gw = x.T @ gz if need_w else None  # a frozen weight costs no product
            return gx, gw, (gb if need_b else None)
        gx = self.xp.empty(x.shape, dtype=g.dtype) if need_x else None

        def rows(k):
            a, b = parts[k], parts[k + 1]
            gz, gb = kernels.dense_backward(g[a:b], y[a:b], self.activation, self.slope)
            if need_x:
                self.xp.matmul(gz, weight.T, out=gx[a:b])
            return gb, (x[a:b].T @ gz if need_w else None)

        shares = threads.each_block(rows, len(parts) - 1)
        gw = threads.sum_in_order([s[1] for s in shares]) if need_w else None
        return gx, gw, (threads.sum_in_order([s[0] for s in shares]) if need_b else None)


def _row_parts(xp, x):
    """Bounds of the rows each thread takes inside split_work (``[0, ..., n]``), or
    None: not splitting, not a 2-D batch on the CPU, or fewer rows than threads."""
    workers = threads.workers()
    if workers < 2 or xp is not numpy or x.ndim != 2 or x.shape[0] < workers:
        return None
    return threads.even_bounds(x.shape[0], workers)


class Dense(Module):
    """y = act(x @ W + b), with W of shape (in_features, out_features).

    ``init="glorot"``: W ~ U(-a, a), a = sqrt(6 / (in + out)) (for sigmoid/tanh);
    ``init="he"``: W ~ N(0, 2 / in) (for ReLU).  b starts at 0.
    """

    def __init__(self, in_features, out_features, activation=None, init="glorot",
                 negative_slope=0.01, dtype="float32", rng=None):
        super().__init__()
        for arg, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, (int, numpy.integer)) or value <= 0:
                raise ValueError(f"Dense: {arg} must be a positive integer, got {value!r}")
        if init not in ("glorot", "he"):
            raise ValueError(f"Dense: init={init!r}; expected 'glorot' or 'he'")
        self.in_features = int(in_features)
        self.out_features = int(out_features)
        self.activation = _activation_name(activation)
        self.negative_slope = float(negative_slope)
        self.init = init
        rng = rng if isinstance(rng, numpy.random.Generator) else numpy.random.default_rng(rng)
        if init == "glorot":
            limit = math.sqrt(6.0 / (in_features + out_features))
            w = rng.uniform(-limit, limit, size=(in_features, out_features))
        else:
            w = rng.standard_normal((in_features, out_features)) * math.sqrt(2.0 / in_features)
        xp = get_backend().xp
        self.weight = Parameter(xp.asarray(w, dtype=dtype))
        self.bias = Parameter(xp.zeros(out_features, dtype=dtype))

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        shape = x.data.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"Dense({self.in_features}, {self.out_features}): input has shape "
                             f"{x.shape}; expected (..., {self.in_features})")
        # The one place that decides: the fused kernels of the device the data is on,
        # or -- on the NumPy reference backend, and for other shapes -- the same layer
        # built from primitives.
        if len(shape) == 2 and x.data.dtype == self.weight.data.dtype and x.device.fused:
            return DenseFunction.apply(x, self.weight, self.bias,
                                       activation=activations.activation(self.activation),
                                       slope=self.negative_slope)
        z = F.matmul(x, self.weight) + self.bias
        if self.activation == "identity":
            return z
        return F.activate(z, self.activation, self.negative_slope)

    def extra_repr(self):
        return (f"{self.in_features}, {self.out_features}, activation={self.activation!r}, "
                f"init={self.init!r}")


# ----------------------------------------------------------------------------
# Convolutions (the primitives are in minigrad.conv), Flatten and Unflatten
# ----------------------------------------------------------------------------

class _Convolution(Module):
    """What Conv2d and ConvTranspose2d share: arguments, shape checks, PyTorch's
    initialisation and the activation after the convolution, fused into its kernels
    as Dense's is (see :func:`minigrad.conv_layers.layer_forward`)."""

    transposed = False

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding,
                 output_padding, bias, activation, negative_slope, dtype, rng):
        super().__init__()
        (self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
         self.output_padding) = conv_layers.layer_arguments(
            type(self).__name__, in_channels, out_channels, kernel_size, stride, padding,
            output_padding)
        self.activation, self.negative_slope = _activation_name(activation), float(negative_slope)
        rng = rng if isinstance(rng, numpy.random.Generator) else numpy.random.default_rng(rng)
        w, b = conv_layers.initial_parameters(self, rng, bias)
        xp = get_backend().xp
        self.weight = Parameter(xp.asarray(w, dtype=dtype))
        self.bias = None if b is None else Parameter(xp.asarray(b, dtype=dtype))

    def output_shape(self, input_shape):
        """The output's (C, H, W) for an input of ``input_shape`` (C, H, W), or
        (N, C, H, W) for (N, C, H, W); a ValueError for an input the layer refuses."""
        return conv_layers.layer_output_shape(self, input_shape)

    def forward(self, x):
        return conv_layers.layer_forward(self, x if isinstance(x, Tensor) else Tensor(x))

    def extra_repr(self):
        return conv_layers.layer_repr(self)


class Conv2d(_Convolution):
    """y = act(conv2d(x, W) + b), W: (out_channels, in_channels, kh, kw) (see minigrad.conv)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True,
                 activation=None, negative_slope=0.01, dtype="float32", rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, 0, bias,
                         activation, negative_slope, dtype, rng)


class ConvTranspose2d(_Convolution):
    """y = act(conv_transpose2d(x, W) + b), W: (in_channels, out_channels, kh, kw), H_out =
    (H - 1) sh - 2 ph + kh + output_padding (see minigrad.conv)."""

    transposed = True

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 output_padding=0, bias=True, activation=None, negative_slope=0.01,
                 dtype="float32", rng=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding,
                         output_padding, bias, activation, negative_slope, dtype, rng)


class Flatten(Module):
    """(N, d1, d2, ...) -> (N, d1 d2 ...): every axis after the batch axis as one."""

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        return F.reshape(x, x.shape[:1] + (math.prod(x.shape[1:]),))


class Unflatten(Module):
    """(N, d1 d2 ...) -> (N, d1, d2, ...) for ``shape`` = (d1, d2, ...)."""

    def __init__(self, shape):
        super().__init__()
        self.shape = tuple(int(d) for d in shape)
        if not self.shape or min(self.shape) < 1:
            raise ValueError(f"Unflatten: shape={shape!r}; expected positive sizes")

    def forward(self, x):
        x = x if isinstance(x, Tensor) else Tensor(x)
        if x.ndim != 2 or x.shape[1] != math.prod(self.shape):
            raise ValueError(f"Unflatten{self.shape}: input has shape {x.shape}; expected "
                             f"(batch, {math.prod(self.shape)})")
        return F.reshape(x, (x.shape[0],) + self.shape)


class Sequential(Module):
    """Layers applied in order; layer i is registered as attribute ``"i"``."""

    def __init__(self, *layers):
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise TypeError(f"Sequential: layer {i} is a {type(layer).__name__}, not a Module")
            setattr(self, str(i), layer)
        object.__setattr__(self, "layers", list(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    def __iter__(self):
        return iter(self.layers)
