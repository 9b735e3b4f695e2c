"""Tensor and Function.

A :class:`Tensor` wraps an array: NumPy's on the host ("cpu"), CuPy's on the
GPU ("cuda"); new tensors go to the active backend's device unless told
otherwise.  Applying a :class:`Function` to tensors computes the result's array
and, when any input requires a gradient, remembers the function application
(the *node*) on the result.  :meth:`Tensor.backward` then walks those nodes from
the output back to the leaves (:mod:`minigrad.backward`), calling each node's
``backward`` -- its vector-Jacobian product.

Two rules keep the primitives short:

* a primitive's ``backward`` may return its input gradients in the broadcast
  (output) shape; :func:`unbroadcast` -- the only place that does so -- sums
  them back to each input's shape;
* a primitive returns ``None`` for inputs that are not differentiable.
"""
from __future__ import annotations

import contextlib
import numbers
import threading

import numpy

from .backward import backward_pass, unbroadcast
from .device import device_of, device_type, get_backend, move
from . import replay
from .replay import _tape

__all__ = ["Tensor", "Function", "no_grad", "enable_grad", "is_grad_enabled",
           "unbroadcast", "as_tensor"]


# ----------------------------------------------------------------------------
# Gradient mode
# ----------------------------------------------------------------------------

class _GradMode(threading.local):
    """Whether operations are recorded, per thread (a thread starts recording): one
    thread's ``no_grad()`` leaves the others' recording as it is."""
    enabled = True


_grad = _GradMode()


def is_grad_enabled():
    """Whether operations are being recorded for backward (in this thread)."""
    return _grad.enabled


@contextlib.contextmanager
def _grad_mode(enabled):
    previous = _grad.enabled
    _grad.enabled = enabled
    try:
        yield
    finally:
        _grad.enabled = previous


def no_grad():
    """``with no_grad():`` records nothing inside (in this thread); restores the mode
    on exit."""
    return _grad_mode(False)


def enable_grad():
    """``with enable_grad():`` records inside, even within ``no_grad()``."""
    return _grad_mode(True)


# ----------------------------------------------------------------------------
# Function: one primitive, forward and backward side by side
# ----------------------------------------------------------------------------

class Function:
    """Base class of every primitive.

    A subclass defines ``forward(self, *arrays, **params) -> array`` and
    ``backward(self, grad) -> gradient or tuple of gradients`` (one per tensor
    input, ``None`` for a non-differentiable one).  ``self`` is the node: it
    keeps what backward needs through :meth:`save_for_backward`, and knows the
    :class:`~minigrad.device.Device` of its inputs as ``self.device`` and that
    device's array namespace as ``self.xp``.
    """

    # what a node holds until apply records it (class attributes: one fewer
    # assignment each in the hot path of every operation)
    parents = ()
    saved = ()
    needs_input_grad = ()

    def __init__(self, device):
        self.device = device
        self.xp = device.xp

    def save_for_backward(self, *arrays):
        self.saved = arrays

    def forward(self, *arrays, **params):  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, grad):  # pragma: no cover - abstract
        raise NotImplementedError

    @classmethod
    def apply(cls, *inputs, **params):
        """Run ``forward`` on the inputs' data and record the node if needed."""
        tensors = _to_tensors(cls.__name__, inputs)
        data = [t.data for t in tensors]
        node = cls(device_of(*data))
        out = node.forward(*data, **params)
        # lets a backward skip work nobody needs (e.g. dL/dx of the input layer)
        needs = tuple([t._requires_grad for t in tensors])
        requires_grad = True in needs and _grad.enabled
        result = Tensor._wrap(out, requires_grad)
        if requires_grad:
            node.parents = tuple(tensors)
            node.needs_input_grad = needs
            result._node = node
        if _tape.nodes is not None:  # inside a replay.Step's recording
            _tape.nodes.append((node, tensors, params, result))
        return result

    @property
    def name(self):
        return type(self).__name__


def _to_tensors(op, inputs):
    """Inputs as Tensors; Python numbers take the dtype of the tensor operands.

    Tensors must share a device.  Other operands join the tensors' device: numbers,
    lists and NumPy arrays are copied there, but a CuPy array next to host tensors
    is an error (no silent copy back from the GPU).  Errors name both devices.
    """
    for x in inputs:  # the common case: tensors, all on the host
        if not (isinstance(x, Tensor) and type(x.data) in _HOST_KINDS):
            break
    else:
        return inputs
    tensors = [x for x in inputs if isinstance(x, Tensor)]
    ref = tensors[0] if tensors else None
    if len(tensors) > 1 and len({t.device for t in tensors}) > 1:
        _device_mismatch(op, inputs)
    out = []
    for x in inputs:
        if isinstance(x, Tensor):
            out.append(x)
        elif isinstance(x, numbers.Number) and ref is not None and _is_float(ref.data.dtype):
            # a NumPy scalar of the tensor's dtype: CuPy takes it as a kernel argument,
            # with no array to allocate or copy to the GPU
            out.append(Tensor._wrap(ref.data.dtype.type(x), False))
        elif ref is not None:
            if ref.device == "cpu" and device_of(x) == "cuda":
                _device_mismatch(op, inputs)
            out.append(Tensor(ref.xp.asarray(x), device=ref.device))
        else:
            out.append(Tensor(x))
    return out


# exact types (a device array type may subclass numpy.ndarray, as the tests' stand-in
# for CuPy does): NumPy arrays and the scalars that Python numbers become
_HOST_KINDS = {numpy.ndarray, numpy.float32, numpy.float64, numpy.float16}


def _device_mismatch(op, inputs):
    """Raise the error for operands on different devices, naming each operand's."""
    parts = []
    for x in inputs:
        if isinstance(x, Tensor):
            parts.append(f"{x.device} tensor {x.shape}")
        elif device_of(x) == "cuda":
            parts.append(f"cuda array {tuple(x.shape)}")
    devices = sorted({p.split()[0] for p in parts})
    raise RuntimeError(f"{op.lower()}: operands on different devices ({', '.join(parts)}): "
                       f"{' and '.join(devices)}; move them to one device with .to('cpu') "
                       f"or .to('cuda')")


def _is_float(dtype):
    return numpy.dtype(dtype).kind == "f"  # float16/32/64 (issubdtype's answer, 5x faster)


# ----------------------------------------------------------------------------
# Tensor
# ----------------------------------------------------------------------------

def _as_array(data, dtype, device=None):
    """The backend array for ``data``, with the dtype rules of :class:`Tensor`.

    Where it lives: on ``device`` when one is given (copied there if need be);
    else a CuPy array stays on its device and everything else -- Python numbers
    and lists, NumPy arrays and scalars -- goes where the active backend computes,
    so under the "cupy" backend ``Tensor(numpy_array)`` is a GPU copy (as with
    PyTorch's default device).  A NumPy array that stays on the host is used as
    it is, without a copy.  ``.numpy()`` always gives a host array back.
    """
    if device is None:
        xp = device_of(data).xp
        if xp is numpy:
            xp = get_backend().xp
    elif device_type(device) == "cpu":
        if device_of(data) == "cuda":
            data = data.get()
        xp = numpy
    else:
        from .device import require_cupy
        xp = require_cupy()
    if dtype is not None:
        return xp.asarray(data, dtype=dtype)
    if isinstance(data, (numbers.Number, list, tuple)):
        array = numpy.asarray(data)
        if array.dtype == object:
            raise TypeError(f"Tensor: cannot make a numeric array from {type(data).__name__} "
                            f"{data!r:.80}")
        if array.dtype.kind in "biuf":
            return xp.asarray(array, dtype=numpy.float32)
        return xp.asarray(array)
    if isinstance(data, numpy.generic):
        return xp.asarray(data)
    return xp.asarray(data)


class Tensor:
    """An n-d array that records the operations applied to it.

    ``Tensor(data, requires_grad=False, dtype=None, device=None)``: Python numbers
    and lists become float32; arrays keep their dtype (float64 for gradient
    checks); integer and boolean tensors cannot require a gradient.  ``device``
    ("cpu" or "cuda") says where the data lives; by default a CuPy array stays on
    the GPU and anything else goes to the active backend's device.
    """

    # NumPy defers to our reflected operators (``2.0 * t``, ``array + t``).
    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        self.data = _as_array(data, dtype, device)
        self._node = None
        self._released = False
        self.grad = None
        self.requires_grad = requires_grad

    @classmethod
    def _wrap(cls, data, requires_grad):
        t = cls.__new__(cls)
        t.data = data
        t._node = None
        t._released = False
        t.grad = None
        t._requires_grad = bool(requires_grad)
        return t

    # -- attributes -------------------------------------------------------------
    @property
    def requires_grad(self):
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value):
        if value and not _is_float(self.data.dtype):
            raise TypeError(f"Tensor: a tensor of dtype {self.data.dtype} cannot require "
                            f"a gradient; only floating-point tensors can")
        self._requires_grad = bool(value)

    @property
    def shape(self):
        return tuple(self.data.shape)

    @property
    def ndim(self):
        return self.data.ndim

    @property
    def size(self):
        return int(self.data.size)

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def xp(self):
        return device_of(self.data).xp

    @property
    def device(self):
        """The :class:`~minigrad.device.Device` of the data (equal to "cpu" or "cuda")."""
        return device_of(self.data)

    @property
    def is_leaf(self):
        return self._node is None

    def numpy(self):
        """A host NumPy copy of the data."""
        if self.device == "cuda":
            return self.data.get()
        return numpy.array(self.data, copy=True)

    def item(self):
        if self.size != 1:
            raise ValueError(f"item: only a tensor with one element has an item; "
                             f"this one has shape {self.shape}")
        return self.data.reshape(()).item()

    def detach(self):
        """The same data, cut from the graph (no copy)."""
        return replay.note(_Detach, (self,), Tensor._wrap(self.data, False))

    def zero_grad(self):
        self.grad = None

    def to(self, device):
        """This tensor on ``device`` ("cpu" or "cuda"); itself if already there.

        Differentiable: the gradient travels back to the original device.
        """
        device = device_type(device)
        if device == self.device:
            return self
        return ToDevice.apply(self, device=device)

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __repr__(self):
        extra = ", requires_grad=True" if self.requires_grad else ""
        body = numpy.array2string(self.numpy(), separator=", ", prefix="Tensor(")
        return f"Tensor({body}, dtype={self.dtype}{extra})"

    def __bool__(self):
        if self.size != 1:
            raise ValueError(f"the truth value of a tensor of shape {self.shape} is ambiguous")
        return bool(self.item())

    __hash__ = object.__hash__

    # -- backward ---------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False):
        """Accumulate d(self)/d(leaf) into every leaf's ``.grad``.

        ``grad`` is the seed (the vector in the vector-Jacobian product); it may
        be omitted only for a single-element tensor.  Intermediate gradients are
        dropped as soon as they are used and the graph is released afterwards
        unless ``retain_graph=True``.
        """
        if not self.requires_grad:
            raise RuntimeError("backward: this tensor does not require a gradient "
                               "(no input of the computation had requires_grad=True)")
        if self._released:
            raise RuntimeError("backward: the graph of this tensor was already released "
                               "by an earlier backward(); pass retain_graph=True to the "
                               "first call to run backward twice")
        xp = self.xp
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward: grad must be given for a non-scalar output "
                                   f"(shape {self.shape})")
            grad = xp.ones(self.shape, dtype=self.dtype)
        else:
            grad = grad.data if isinstance(grad, Tensor) else xp.asarray(grad, dtype=self.dtype)
            if tuple(grad.shape) != self.shape:
                raise ValueError(f"backward: grad has shape {tuple(grad.shape)}, expected the "
                                 f"output's shape {self.shape}")

        backward_pass(self, grad, retain_graph)


class _Detach:
    """What :meth:`Tensor.detach` does to the data, for a replayed step (nothing)."""

    @staticmethod
    def forward(x):
        return x


class ToDevice(Function):
    """y = x on another device.   backward: g moved back to x's device"""

    def forward(self, x, device):
        self.source = device_of(x).type
        return move(x, device)

    def backward(self, g):
        return move(g, self.source)


def as_tensor(x):
    """``x`` if it is a Tensor, else ``Tensor(x)``."""
    return x if isinstance(x, Tensor) else Tensor(x)


# Operators and methods are attached in functions.py, next to the primitives.
