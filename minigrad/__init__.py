"""minigrad: a small reverse-mode automatic differentiation engine.

>>> import minigrad as mg
>>> x = mg.Tensor([1.0, 2.0, 3.0], requires_grad=True)
>>> y = (x * x).sum()
>>> y.backward()
>>> x.grad
array([2., 4., 6.], dtype=float32)

The pieces, in reading order: :mod:`minigrad.tensor` (Tensor, Function, the
backward pass), :mod:`minigrad.functions` (the primitives, forward and backward
side by side; the convolutions in :mod:`minigrad.conv`),
:mod:`minigrad.activations` (each activation written once, for every place that
computes one), :mod:`minigrad.device` (where data lives: the
array namespace and the fused kernels, :mod:`minigrad.kernels`),
:mod:`minigrad.gradcheck` (finite-difference checks), :mod:`minigrad.denormals`
(why and how training keeps subnormal numbers out of the arithmetic),
:mod:`minigrad.memory` (why training keeps freed arrays for the next step).
"""
from .device import Device, available_backends, get_backend, set_backend, use_backend
from .tensor import Function, Tensor, as_tensor, enable_grad, is_grad_enabled, no_grad
from .functions import (abs, activate, add, broadcast_to, clip, concatenate, div, exp, getitem,
                        leaky_relu, log, log_sigmoid, logsumexp, matmul, max, maximum,
                        mean, minimum, mul, neg, pow, relu, reshape, sigmoid, softplus,
                        sqrt, sub, sum, tanh, transpose, where)
from .conv import conv2d, conv_transpose2d, upsample2d
from .gradcheck import gradcheck
from .denormals import flush_denormals
from .memory import reuse_memory
from . import activations, denormals, losses, memory, nn, optim, replay, threads

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Function", "as_tensor", "no_grad", "enable_grad", "is_grad_enabled",
    "gradcheck", "nn", "losses", "optim", "get_backend", "set_backend", "use_backend", "Device",
    "available_backends", "activate", "activations", "flush_denormals", "denormals",
    "reuse_memory", "memory", "threads",
    "abs", "add", "broadcast_to", "clip", "concatenate", "div", "exp", "getitem",
    "leaky_relu", "log", "log_sigmoid", "logsumexp", "matmul", "max", "maximum", "mean",
    "minimum", "mul", "neg", "pow", "relu", "reshape", "sigmoid", "softplus", "sqrt",
    "sub", "sum", "tanh", "transpose", "where", "conv2d", "conv_transpose2d", "upsample2d",
]
