"""CuPy on the host: the 'cupy' backend without a GPU, for the tests.

:func:`install` puts a stand-in for the ``cupy`` module into ``sys.modules`` for one
test (or, with :func:`install_for_session`, for a whole run), so that
``minigrad.set_backend("cupy")``, ``Tensor.to("cuda")``, ``Module.to("cuda")`` and
``fit(..., backend="cupy")`` take exactly the code paths they take on a GPU:

* **kernels** -- every CUDA kernel of the registry runs, compiled for the host by a
  C++ compiler (:class:`cuda_sources.HostLibrary`: a CUDA block's threads are
  std::threads meeting at a barrier), launched through the same Python wrappers
  and the same grid arithmetic as on the device;
* **arrays** -- :class:`DeviceArray`, NumPy memory behind CuPy's rules, strict where
  CuPy is strict: a NumPy array (or a list) next to a device array in an
  operation, a function or a kernel is a TypeError, as is writing one into a
  device array; reductions and indexing give 0-d device arrays rather than
  scalars; ``cupy.asarray`` of host data copies it (device memory is not host
  memory), and ``.get()`` / ``cupy.asnumpy`` copy back;
* **API surface** -- only the functions and ``ndarray`` methods that the installed
  CuPy has exist, with CuPy's parameter names (read off CuPy's signatures and
  docstrings; CuPy imports without a GPU).  Without CuPy installed, NumPy's
  surface stands in.

Not emulated: CuPy's own code generation and NVRTC (``test_cuda_compile.py``
compiles every kernel with NVRTC), the GPU's math library and memory model,
streams and asynchrony, and NumPy-only behaviour that CuPy shares by accident.
"""
from __future__ import annotations

import ctypes
import inspect
import re
import sys
import threading
import types

import numpy

from . import cuda_sources as cs

try:  # only for its API surface: importing CuPy needs no GPU
    import cupy as _REAL_CUPY
except ImportError:  # pragma: no cover - the nvrtc extra installs CuPy
    _REAL_CUPY = None

MODULE = "cupy_emulated"


# ----------------------------------------------------------------------------
# host <-> device
# ----------------------------------------------------------------------------

def _host_view(a):
    """The memory of a device array as a plain NumPy array (no copy)."""
    return numpy.ndarray.view(a, numpy.ndarray)


def _unwrap(value):
    if isinstance(value, DeviceArray):
        return _host_view(value)
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _device(result):
    """NumPy results as device arrays; numbers stay numbers, like CuPy's."""
    if isinstance(result, DeviceArray):
        return result
    if type(result) is numpy.ndarray:
        out = result.view(DeviceArray)
        # memory NumPy has just allocated belongs to this array alone (flags.owndata)
        out._owns = bool(result.flags.owndata)
        return out
    if isinstance(result, numpy.generic):
        return _device(numpy.asarray(result))
    if isinstance(result, tuple):
        return tuple(_device(r) for r in result)
    if isinstance(result, list):
        return [_device(r) for r in result]
    return result


def _refuse_host(op, values, lists=False):
    """CuPy never converts a NumPy array implicitly (nor, in its ufuncs, a list)."""
    for v in values:
        if type(v) is numpy.ndarray:
            raise TypeError(f"{op}: got a numpy.ndarray of shape {v.shape} next to device "
                            f"arrays; CuPy does not move host arrays implicitly "
                            f"(cupy.asarray(...) does)")
        if isinstance(v, (list, tuple)):
            if lists and isinstance(v, list):
                raise TypeError(f"{op}: got a list; CuPy's ufuncs take device arrays and "
                                f"scalars only")
            _refuse_host(op, v, lists)
        elif isinstance(v, dict):
            _refuse_host(op, v.values(), lists)


def device_array(a, dtype=None):
    """A device copy of host data (the tests' ``cupy.array(a, copy=True)``)."""
    return _device(numpy.array(_unwrap(a), dtype=dtype, copy=True, order="C"))


def host_array(a):
    """A host copy of a device array (``cupy.asnumpy``)."""
    return numpy.array(_unwrap(a), copy=True)


# ----------------------------------------------------------------------------
# the API surface of the real CuPy
# ----------------------------------------------------------------------------

def _real(name, owner=None):
    if _REAL_CUPY is None:
        return None
    return getattr(owner if owner is not None else _REAL_CUPY, name, None)


def _signature(fn):
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


_DOC_SIGNATURE = re.compile(r"^\s*[\w.]+\.(\w+)\(self(?:,\s*(.*?))?\)")


def _method_parameters(name):
    """``(positional names, has *args, all names)`` of ``cupy.ndarray.<name>``, read
    off its docstring's first line (Cython gives no signature); None if unknown."""
    method = _real(name, _REAL_CUPY.ndarray) if _REAL_CUPY is not None else None
    doc = (getattr(method, "__doc__", None) or "").strip().splitlines()
    match = _DOC_SIGNATURE.match(doc[0]) if doc else None
    if match is None or match.group(1) != name:
        return None
    names, star = [], False
    for part in (match.group(2) or "").split(","):
        part = part.split("=")[0].strip()
        if not part:
            continue
        if part.startswith("*"):
            star = True
            continue
        names.append(part.split()[-1])
    return names, star


def _check_method_call(name, spec, args, kwargs):
    if spec is None:
        return
    names, star = spec
    if not star and len(args) > len(names):
        raise TypeError(f"cupy.ndarray.{name}() takes at most {len(names)} arguments "
                        f"({len(args)} given)")
    unknown = sorted(set(kwargs) - set(names))
    if unknown:
        raise TypeError(f"cupy.ndarray.{name}() has no parameter(s) {unknown}; "
                        f"CuPy's are {names}")


# ----------------------------------------------------------------------------
# the array
# ----------------------------------------------------------------------------

class _Flags:
    """``cupy.ndarray.flags``: three layout flags, no ``writeable``."""

    def __init__(self, a):
        flags = _host_view(a).flags
        self.c_contiguous, self.f_contiguous, self.owndata = (
            flags.c_contiguous, flags.f_contiguous, getattr(a, "_owns", False))

    def __getitem__(self, key):
        return getattr(self, key.lower())


class DeviceArray(numpy.ndarray):
    """A host array standing in for a ``cupy.ndarray``; its type's module is
    ``cupy_emulated``, so minigrad files it under the 'cuda' device."""

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        op = f"cupy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
        out = kwargs.get("out")
        out = (out,) if isinstance(out, numpy.ndarray) else tuple(out or ())
        _refuse_host(op, inputs + out, lists=True)
        if method == "__call__":
            extra = sorted(set(kwargs) - {"out", "dtype", "casting"})
            if extra:
                raise TypeError(f"{op}: CuPy's ufuncs take no {extra}")
        if out:
            kwargs["out"] = tuple(_host_view(o) for o in out)
        result = getattr(ufunc, method)(*_unwrap(inputs), **kwargs)
        if out:
            return out[0] if len(out) == 1 else out
        return _device(result)

    def __array_function__(self, func, types_, args, kwargs):
        # CuPy answers numpy.<name>(device array) with cupy.<name>, when it has one
        if _REAL_CUPY is not None and not hasattr(_REAL_CUPY, func.__name__):
            return NotImplemented
        _refuse_host(f"numpy.{func.__name__} on device arrays", (args, kwargs))
        return _device(func(*_unwrap(args), **_unwrap(kwargs)))

    def __getitem__(self, index):
        return _device(_host_view(self)[_unwrap(index)])

    def __setitem__(self, index, value):
        _refuse_host("cupy.ndarray.__setitem__", (value,))
        _host_view(self)[_unwrap(index)] = _unwrap(value)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        return _device(array)

    @property
    def flags(self):
        return _Flags(self)

    def get(self, stream=None, order="C", out=None, blocking=True):
        return host_array(self)

    def __repr__(self):
        return f"{MODULE}.array({numpy.array2string(_host_view(self), separator=', ')})"

    __str__ = __repr__


DeviceArray.__module__ = MODULE
DeviceArray.__name__ = DeviceArray.__qualname__ = "ndarray"


def _wrap_method(name):
    base = getattr(numpy.ndarray, name)
    spec = _method_parameters(name)

    def method(self, *args, **kwargs):
        _check_method_call(name, spec, args, kwargs)
        _refuse_host(f"cupy.ndarray.{name}", (args, kwargs))
        return _device(base(_host_view(self), *_unwrap(args), **_unwrap(kwargs)))

    method.__name__ = name
    return method


def _refused(name):
    def missing(self, *args, **kwargs):
        raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
    return property(missing) if name in ("ctypes",) else missing


# Methods CuPy's ndarray shares with NumPy's: CuPy's parameters, device results.
_KEEP = {"view", "get", "item", "tolist", "tobytes", "__array_ufunc__",
         "__array_function__", "__getitem__", "__setitem__", "__array_wrap__"}
for _name in dir(numpy.ndarray):
    _attr = getattr(numpy.ndarray, _name)
    if _name.startswith("_") or _name in _KEEP or not callable(_attr):
        continue
    if _REAL_CUPY is not None and not hasattr(_REAL_CUPY.ndarray, _name):
        setattr(DeviceArray, _name, _refused(_name))
    else:
        setattr(DeviceArray, _name, _wrap_method(_name))
if _REAL_CUPY is not None:
    for _name in ("ctypes", "__contains__", "__index__"):  # (not callable / dunders)
        if not hasattr(_REAL_CUPY.ndarray, _name):
            setattr(DeviceArray, _name, _refused(_name))


# ----------------------------------------------------------------------------
# the kernels: cupy.RawModule on the host library
# ----------------------------------------------------------------------------

_C_SCALARS = {"float": ctypes.c_float, "double": ctypes.c_double, "int": ctypes.c_int,
              "long long": ctypes.c_longlong, "unsigned int": ctypes.c_uint,
              "bool": ctypes.c_bool}


#: The NumPy scalar type CuPy must be given for each C parameter type.
_C_NUMPY = {"float": "float32", "double": "float64", "int": "int32", "long long": "int64",
            "unsigned int": "uint32", "bool": "bool"}


def _pointer(a):
    host = _host_view(a)
    if not host.flags.c_contiguous:
        raise AssertionError("a non-contiguous array reached a kernel pointer argument")
    return ctypes.c_void_p(host.ctypes.data)


def _require_device(kernel, name, a):
    if not isinstance(a, DeviceArray):
        raise TypeError(f"{kernel}: argument {name} is a {type(a).__module__}."
                        f"{type(a).__name__}; CuPy kernels take device arrays")


_LAUNCHES = threading.Lock()


class _RawKernel:
    def __init__(self, library, name, signature):
        self.fn = getattr(library.lib, f"mg_launch_{name}")
        self.name, self.signature = name, signature

    def __call__(self, grid, block, args):
        grid, block = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments for {len(self.signature)}")
        c_args = [ctypes.c_uint(int(g)) for g in grid + block]
        for (ctype, pname), a in zip(self.signature, args):
            if "*" in ctype:
                _require_device(self.name, pname, a)
                expected = ctype.replace("const", "").replace("*", "").strip()
                if {"float": "float32", "double": "float64",
                        "unsigned int": "uint32"}[expected] != a.dtype.name:
                    raise TypeError(f"{self.name}: {pname} is {a.dtype}, the kernel takes "
                                    f"{ctype}")
                c_args.append(_pointer(a))
            else:
                if not isinstance(a, numpy.generic):
                    raise TypeError(f"{self.name}: pass {pname} as a NumPy scalar (the C "
                                    f"type is {ctype}), got {type(a).__name__}")
                if a.dtype.name != _C_NUMPY[ctype]:
                    # CuPy passes a scalar's bytes as they are: an int64 for an int
                    # parameter would be read wrongly on the GPU
                    raise TypeError(f"{self.name}: {pname} is a {a.dtype.name} scalar, the "
                                    f"kernel takes {ctype} ({_C_NUMPY[ctype]})")
                c_args.append(_C_SCALARS[ctype](a.item()))
        with _LAUNCHES:  # one launch at a time, as on one CUDA stream: the host
            self.fn(*c_args)  # library's grid and thread pool are process-wide


class _RawModule:
    def __init__(self, library, code):
        self.library, self.kernels = library, cs.raw_kernels(code)

    def get_function(self, name):
        return _RawKernel(self.library, name, self.kernels[name])


# ----------------------------------------------------------------------------
# the module
# ----------------------------------------------------------------------------

#: Functions that take host data and copy it to the device.
_FROM_HOST = {"array", "asarray", "asanyarray"}


def _wrap_function(name, fn, real):
    signature = _signature(real) if real is not None else None

    def function(*args, **kwargs):
        if signature is not None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as error:
                raise TypeError(f"cupy.{name}: {error}") from None
        if name in _FROM_HOST:
            if any(isinstance(a, DeviceArray) for a in _flatten(args[:1])) and \
                    isinstance(args[0], (list, tuple)):
                raise TypeError(f"cupy.{name}: a list holding device arrays (CuPy would "
                                f"convert them to NumPy implicitly, which it refuses)")
            if args and not isinstance(args[0], DeviceArray):  # host data: a copy
                args = (_device(numpy.array(args[0], copy=True)),) + args[1:]
        else:
            _refuse_host(f"cupy.{name}", (args, kwargs), lists=isinstance(fn, numpy.ufunc))
        host_args = _unwrap(args)
        result = fn(*host_args, **_unwrap(kwargs))
        if host_args and result is host_args[0]:  # nothing to convert: the same array
            return args[0]
        return _device(result)

    function.__name__ = name
    return function


class _Ufunc:
    """A CuPy ufunc: callable, with the methods CuPy's ufuncs have."""

    def __init__(self, name, fn):
        self.__name__, self._call = name, _wrap_function(name, fn, None)
        self._ufunc = fn

    def __call__(self, *args, **kwargs):
        return self._call(*args, **kwargs)

    def _method(self, method, *args, **kwargs):
        _refuse_host(f"cupy.{self.__name__}.{method}", (args, kwargs))
        result = getattr(self._ufunc, method)(*_unwrap(args), **_unwrap(kwargs))
        return None if result is None else _device(result)

    def reduce(self, *args, **kwargs):
        return self._method("reduce", *args, **kwargs)

    def accumulate(self, *args, **kwargs):
        return self._method("accumulate", *args, **kwargs)

    def outer(self, *args, **kwargs):
        return self._method("outer", *args, **kwargs)

    def at(self, *args, **kwargs):  # in place: ``a`` is a device array's memory
        return self._method("at", *args, **kwargs)


def _flatten(values):
    for v in values:
        if isinstance(v, (list, tuple)):
            yield from _flatten(v)
        else:
            yield v


def _api_names():
    if _REAL_CUPY is not None:
        return [n for n in dir(_REAL_CUPY) if not n.startswith("_") and hasattr(numpy, n)]
    return [n for n in dir(numpy) if not n.startswith("_")]


def module(library, sm_count=2):
    """A ``cupy`` module on the host whose kernels run from ``library``."""
    fake = types.ModuleType(MODULE, "CuPy on the host (tests/cupy_emulation.py)")
    for name in _api_names():
        value = getattr(numpy, name)
        if isinstance(value, numpy.ufunc):
            setattr(fake, name, _Ufunc(name, value))
        elif callable(value) and not isinstance(value, type) and name not in ("errstate",):
            setattr(fake, name, _wrap_function(name, value, _real(name)))
        elif not isinstance(value, types.ModuleType):
            setattr(fake, name, value)  # dtypes, constants
    fake.ndarray = DeviceArray

    def private(name):
        # CuPy's own modules (``cupy._core``, which cupyx and the NVRTC tests import)
        # stay the real ones: only the public API is emulated
        if name.startswith("_") and _REAL_CUPY is not None:
            return getattr(_REAL_CUPY, name)
        raise AttributeError(f"module 'cupy' (emulated) has no attribute {name!r}")
    fake.__getattr__ = private
    fake.__version__ = "emulated"
    fake.asnumpy = lambda a, stream=None, order="C", out=None, blocking=True: (
        host_array(a) if isinstance(a, DeviceArray) else numpy.asarray(a))
    fake.get_array_module = lambda *arrays: (
        fake if any(isinstance(a, DeviceArray) for a in arrays) else numpy)
    fake.RawModule = lambda code, options=(), **kw: _RawModule(library, code)

    class Device:
        def __init__(self, device=None):
            self.id = 0
            self.attributes = {"MultiProcessorCount": sm_count}

        def synchronize(self):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    runtime = types.SimpleNamespace(
        getDevice=lambda: 0, getDeviceCount=lambda: 1,
        getDeviceProperties=lambda device: {"multiProcessorCount": sm_count},
        deviceSynchronize=lambda: None)
    fake.cuda = types.SimpleNamespace(runtime=runtime, Device=Device)
    return fake


def _no_implicit_conversion(name, convert):
    """``numpy.<name>`` refusing device arrays, as CuPy's ``__array__`` does (NumPy
    would otherwise view a :class:`DeviceArray` as its host memory, silently)."""
    def strict(a, *args, **kwargs):
        if isinstance(a, DeviceArray) or (isinstance(a, (list, tuple)) and any(
                isinstance(v, DeviceArray) for v in _flatten(a))):
            raise TypeError(f"numpy.{name} of a device array: implicit conversion to a NumPy "
                            f"array is not allowed. Please use `.get()` to construct a NumPy "
                            f"array explicitly.")
        return convert(a, *args, **kwargs)
    strict.__name__ = name
    return strict


#: The NumPy functions that convert anything to a NumPy array.
_CONVERTERS = ("array", "asarray", "asanyarray", "ascontiguousarray")


def _reset_kernel_caches(setattr_):
    """Drop what the kernel modules cached from another CuPy (or an earlier library)."""
    from minigrad.kernels import _cuda, dense, losses
    setattr_(_cuda, "_sm_counts", {})
    setattr_(_cuda, "_modules", {})
    setattr_(dense, "_BUFFERS", _cuda.DeviceBuffers())
    setattr_(losses, "_BUFFERS", _cuda.DeviceBuffers())
    for spec in cs.all_specs():
        setattr_(spec, "_functions", {})


def install(monkeypatch, library, sm_count=2):
    """``cupy`` is the stand-in for the rest of the test (``monkeypatch`` undoes it):
    ``set_backend("cupy")`` builds the 'cupy' backend on it, ``.to("cuda")`` moves
    arrays to it, and the CuPy kernels run from ``library``."""
    from minigrad import device
    fake = module(library, sm_count)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    for name in _CONVERTERS:
        monkeypatch.setattr(numpy, name, _no_implicit_conversion(name, getattr(numpy, name)))
    # a 'cupy' backend built on another cupy is set aside, and the one built on this
    # stand-in is dropped at the end (undoing setitem deletes a key it added)
    monkeypatch.setitem(device._BUILT, "cupy", None)
    del device._BUILT["cupy"]
    _reset_kernel_caches(monkeypatch.setattr)
    return fake


def install_for_session(library, sm_count=2):
    """As :func:`install`, for the whole process (``pytest --cupy-emulated``)."""
    from minigrad import device
    fake = module(library, sm_count)
    sys.modules["cupy"] = fake
    for name in _CONVERTERS:
        setattr(numpy, name, _no_implicit_conversion(name, getattr(numpy, name)))
    device._BUILT.pop("cupy", None)
    _reset_kernel_caches(setattr)
    return fake
