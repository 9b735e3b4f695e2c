"""The CUDA code of the CuPy kernels, as the GPU-free tests compile and run it.

Used by ``test_cuda_compile.py`` (NVRTC) and ``test_cuda_emulated.py`` (the same
code compiled for the host by a C++ compiler).  Needs neither CuPy nor a GPU,
except :func:`cupy_generated_source`, which asks CuPy's own code generator.

* :func:`registered_specs` -- ``{kernel name: (spec, ...)}`` for every kernel with a
  CuPy version; a kernel whose CuPy version records no spec maps to ``()``.
* :func:`elementwise_harness` -- for an ``Elementwise`` spec, a hand-written
  ``extern "C" __global__`` kernel equivalent to the one CuPy generates: the same
  preamble, and the same operation inside the same grid-stride loop, with each
  array argument bound by reference exactly as CuPy binds it (``const T &x`` for
  an input, ``T &z`` for an output, the raw pointer for a ``raw`` parameter) and the
  scalars passed by value.  The arrays are flat and contiguous here (the layout the
  wrappers hand to CuPy, which reduces them to one dimension).
* :func:`cupy_generated_source` -- the full source CuPy itself generates for the
  spec, from CuPy's private generator, or a RuntimeError saying why not.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from minigrad import kernels

CTYPES = {"float32": "float", "float64": "double"}
FIXED_TYPES = {"int32": "int", "int64": "long long", "uint32": "unsigned int",
               "float32": "float", "float64": "double", "bool": "bool"}


def registered_specs():
    """``{kernel name: tuple of CUDA specs}`` for every kernel of the CuPy table."""
    table = kernels.table("cupy")  # raises if a kernel has no CuPy version
    return {name: tuple(getattr(fn, "cuda_specs", ())) for name, fn in table.items()}


def all_specs():
    """Every distinct spec launched by a registered CuPy kernel, in a stable order."""
    seen, out = set(), []
    for name in sorted(registered_specs()):
        for spec in registered_specs()[name]:
            if id(spec) not in seen:
                seen.add(id(spec))
                out.append(spec)
    return out


@dataclass
class Param:
    name: str
    type: str       # "T" or a fixed NumPy type name
    raw: bool
    output: bool
    scalar: bool

    def ctype(self, dtype):
        return CTYPES[dtype] if self.type == "T" else FIXED_TYPES[self.type]


def params(spec):
    """The parameters of an Elementwise spec, inputs then outputs."""
    out = []
    for text, output in ((spec.in_params, False), (spec.out_params, True)):
        for item in text.split(","):
            words = item.split()
            if not words:
                continue
            out.append(Param(name=words[-1], type=words[-2], raw="raw" in words[:-2],
                             output=output, scalar=words[-1] in spec.scalars))
    return out


def elementwise_harness(spec, dtype, kernel_name=None):
    """``(source, kernel name, params)``: the hand-written equivalent of the kernel
    CuPy generates for ``spec`` on flat arrays of ``dtype``; its last argument is the
    element count ``long long _n``."""
    ctype = CTYPES[dtype]
    name = kernel_name or f"{spec.name}_harness_{dtype}"
    plist = params(spec)
    decls, binds = [], []
    for p in plist:
        t = p.ctype(dtype)
        if p.scalar:
            decls.append(f"const {t} {p.name}")
        elif p.raw:
            decls.append(f"{'' if p.output else 'const '}{t}* {p.name}")
        else:
            decls.append(f"{'' if p.output else 'const '}{t}* _raw_{p.name}")
            binds.append(f"{'' if p.output else 'const '}T &{p.name} = _raw_{p.name}[i];"
                         if p.type == "T" else
                         f"{'' if p.output else 'const '}{t} &{p.name} = _raw_{p.name}[i];")
    decls.append("long long _n")
    body = "\n        ".join(binds + [spec.operation + ";"])
    source = (f"typedef {ctype} T;\n{spec.preamble}\n"
              f"extern \"C\" __global__ void {name}({', '.join(decls)}) {{\n"
              f"    for (ptrdiff_t i = (ptrdiff_t)blockIdx.x * blockDim.x + threadIdx.x; "
              f"i < _n; i += (ptrdiff_t)blockDim.x * gridDim.x) {{\n"
              f"        {body}\n"
              f"    }}\n}}\n")
    return source, name, plist


_GLOBAL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


def raw_kernels(source):
    """``{name: [(C type, parameter name), ...]}`` of the ``extern "C" __global__``
    kernels defined in a source."""
    out = {}
    for name, text in _GLOBAL.findall(source):
        out[name] = [(" ".join(p.split()[:-1]), p.split()[-1]) for p in text.split(",")]
    return out


# -- CuPy's own generator ---------------------------------------------------------------

# CuPy's private _ArgKind values (cupy/_core/_kernel.pxd): checked against the code
# they produce before any of it is trusted.
_ARG_NDARRAY, _ARG_INDEXER, _ARG_SCALAR = 1, 2, 3


def cupy_generated_source(spec, dtype):
    """``(source, options)`` CuPy generates and compiles for ``spec`` when the wrapper
    calls it with contiguous arrays of ``dtype`` (which CuPy reduces to 1-d) and its
    scalars: the exact text handed to NVRTC, CuPy's headers included.

    Uses CuPy's private code generator (``cupy._core._kernel``); a RuntimeError says
    why when this CuPy version does not offer it in the expected form.
    """
    import numpy
    try:
        import cupy
        from cupy._core import _carray, _kernel, _scalar
        from cupy._core import core
        kernel = spec.build()  # a cupy.ElementwiseKernel: building it needs no device
        dt = numpy.dtype(dtype)
        by_name = {p.name: p for p in params(spec)}
        arginfos = []
        for p in kernel.params:
            if p.name == "_ind":
                arginfos.append(_kernel._ArgInfo(_ARG_INDEXER, _carray.Indexer, None, 1,
                                                 True, True))
                continue
            own = by_name[p.name]
            t = dt if own.type == "T" else numpy.dtype(own.type)
            if own.scalar:
                arginfos.append(_kernel._ArgInfo(_ARG_SCALAR, _scalar.CScalar, t, 0, True,
                                                 True))
            else:
                arginfos.append(_kernel._ArgInfo(_ARG_NDARRAY, cupy.ndarray, t, 1, True,
                                                 True))
        type_map = _kernel._TypeMap((("T", dt),))
        code = _kernel._get_elementwise_kernel_code(
            tuple(arginfos), type_map, kernel.params, kernel.operation, kernel.name,
            kernel.preamble)
        headers = "".join(f"#include <{h}>\n" for h in core._cupy_header_list)
        options = tuple(core.assemble_cupy_compiler_options(tuple(spec.options)))
    except Exception as error:  # private API moved: say so, do not guess
        raise RuntimeError(f"CuPy {getattr(cupy, '__version__', '?')} does not offer its "
                           f"elementwise code generator in the expected form: "
                           f"{type(error).__name__}: {error}") from None
    expected = [f"extern \"C\" __global__ void {spec.name}(", "CIndexer<1"]
    expected += [f"CArray<{CTYPES[dt.name] if p.type == 'T' else FIXED_TYPES[p.type]}, 1"
                 for p in params(spec) if not p.scalar]
    missing = [e for e in expected if e not in code]
    if missing:
        raise RuntimeError(f"CuPy {cupy.__version__}'s generated code lacks {missing}; its "
                           f"private argument kinds changed")
    return headers + code, options


# -- the same code on the host --------------------------------------------------------

#: Prepended to a CUDA source to compile it as C++ for the host: each block runs its
#: threads as std::threads meeting at a std::barrier for __syncthreads, blocks run
#: one after another, __shared__ variables are statics (one block at a time uses
#: them), atomics and fences are the C++ ones, the math functions libm's.
HOST_SHIM = r"""
#include <math.h>
#include <stddef.h>
#include <atomic>
#include <barrier>
#include <thread>
#include <vector>
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static
struct dim3 { unsigned int x = 1, y = 1, z = 1; };
struct mg_uint3 { unsigned int x = 0, y = 0, z = 0; };
static dim3 gridDim, blockDim;
static mg_uint3 blockIdx;
static thread_local mg_uint3 threadIdx;
static std::barrier<>* mg_block_barrier = nullptr;
static inline void __syncthreads() { mg_block_barrier->arrive_and_wait(); }
static inline void __threadfence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
static inline unsigned int atomicAdd(unsigned int* p, unsigned int v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
template <typename... A, typename... B>
static void mg_launch(void (*kernel)(A...), dim3 grid, dim3 block, B... args) {
    gridDim = grid;
    blockDim = block;
    const unsigned int threads = block.x * block.y * block.z;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
    for (unsigned int by = 0; by < grid.y; ++by)
    for (unsigned int bx = 0; bx < grid.x; ++bx) {
        blockIdx = mg_uint3{bx, by, bz};
        std::barrier<> barrier(threads);
        mg_block_barrier = &barrier;
        std::vector<std::thread> pool;
        for (unsigned int t = 0; t < threads; ++t) {
            pool.emplace_back([=]() {
                threadIdx = mg_uint3{t % block.x, (t / block.x) % block.y,
                                     t / (block.x * block.y)};
                kernel(args...);
            });
        }
        for (auto& th : pool) th.join();
    }
    /* back to one thread, for the elementwise harnesses called directly */
    gridDim = dim3{};
    blockDim = dim3{};
    blockIdx = mg_uint3{};
    mg_block_barrier = nullptr;
}
"""


def host_launchers(source):
    """C wrappers ``mg_launch_<kernel>(gx, gy, gz, bx, by, bz, args...)`` for every
    ``extern "C" __global__`` kernel of ``source`` (compiled with :data:`HOST_SHIM`)."""
    out = []
    for name, plist in raw_kernels(source).items():
        decl = ", ".join(f"{t} {p}" for t, p in plist)
        names = ", ".join(p for _, p in plist)
        out.append(f'extern "C" void mg_launch_{name}(unsigned int gx, unsigned int gy, '
                   f'unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, '
                   f'{decl}) {{\n    mg_launch({name}, dim3{{gx, gy, gz}}, '
                   f'dim3{{bx, by, bz}}, {names});\n}}\n')
    return "".join(out)


# -- a stand-in for CuPy that runs the kernels on the host ------------------------------

import ctypes  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import types  # noqa: E402

import numpy  # noqa: E402

_C_SCALARS = {"float": ctypes.c_float, "double": ctypes.c_double, "int": ctypes.c_int,
              "long long": ctypes.c_longlong, "unsigned int": ctypes.c_uint,
              "bool": ctypes.c_bool}


def host_compiler():
    """A C++ compiler on PATH (``$CXX``, g++ or clang++), or None."""
    for name in (os.environ.get("CXX"), "g++", "clang++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


class HostLibrary:
    """Every spec compiled for the host into one shared library: an Elementwise spec
    as :func:`elementwise_harness` for float32 and float64, a Raw spec as its source
    with :func:`host_launchers`; each in a namespace of its own."""

    def __init__(self, specs, folder, compiler):
        from minigrad.kernels import _cuda
        parts = [HOST_SHIM, _cuda.MATH]
        for k, spec in enumerate(specs):
            if spec.kind == "raw":
                parts.append(f"namespace mg_host_{k} {{\n{spec.source}\n"
                             f"{host_launchers(spec.source)}}}\n")
            else:
                for dtype in CTYPES:
                    source, _, _ = elementwise_harness(spec, dtype)
                    parts.append(f"namespace mg_host_{k}_{dtype} {{\n{source}}}\n")
        source = "".join(parts)
        digest = hashlib.sha1(source.encode()).hexdigest()[:16]
        cpp = os.path.join(folder, f"mg_host_{digest}.cpp")
        lib = os.path.join(folder, f"mg_host_{digest}.so")
        with open(cpp, "w") as f:
            f.write(source)
        cmd = [compiler, "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread",
               "-ffp-contract=off", "-fno-fast-math", "-w", cpp, "-o", lib]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-4000:]}")
        self.lib = ctypes.CDLL(lib)
        self.specs = {spec.name: spec for spec in specs if spec.kind == "elementwise"}


class DeviceArray(numpy.ndarray):
    """A host array standing in for a ``cupy.ndarray`` (its type's module is
    ``cupy_emulated``, which is what the kernels check)."""


DeviceArray.__module__ = "cupy_emulated"


def device_array(a, dtype=None):
    return numpy.array(a, dtype=dtype, copy=True, order="C").view(DeviceArray)


def host_array(a):
    return numpy.array(numpy.asarray(a).view(numpy.ndarray), copy=True)


def _pointer(a):
    if not a.flags.c_contiguous:
        raise AssertionError("a non-contiguous array reached a kernel pointer argument")
    return ctypes.c_void_p(a.ctypes.data)


class _FakeElementwise:
    def __init__(self, library, name):
        self.library, self.spec = library, library.specs[name]

    def __call__(self, *args):
        plist = params(self.spec)
        nin = sum(not p.output for p in plist)
        if len(args) not in (nin, len(plist)):
            raise TypeError(f"{self.spec.name}: {len(args)} arguments for {len(plist)} "
                            f"parameters")
        arrays = [a for p, a in zip(plist, args) if not p.scalar and not p.raw]
        dtype = next(numpy.dtype(a.dtype) for p, a in zip(plist, args)
                     if p.type == "T" and not p.scalar)
        shape = numpy.broadcast_shapes(*(numpy.shape(a) for a in arrays))
        outs = list(args[nin:]) or [numpy.empty(shape, dtype).view(DeviceArray)
                                    for p in plist if p.output]
        work, c_args = [], []
        for p, a in zip(plist, list(args[:nin]) + outs):
            if p.scalar:
                value = a.item() if hasattr(a, "item") else a
                c_args.append(_C_SCALARS[p.ctype(dtype.name)](value))
            elif p.raw:
                c_args.append(_pointer(a))
            elif p.output:
                if a.shape != shape or a.dtype != (dtype if p.type == "T" else p.type):
                    raise TypeError(f"{self.spec.name}: output {p.name} of shape {a.shape}, "
                                    f"dtype {a.dtype}; expected {shape}, {dtype}")
                buf = a if a.flags.c_contiguous else numpy.ascontiguousarray(a)
                work.append((a, buf))
                c_args.append(_pointer(buf))
            else:
                if p.type == "T" and a.dtype != dtype:
                    raise TypeError(f"{self.spec.name}: {p.name} has dtype {a.dtype}, "
                                    f"expected {dtype}")
                buf = numpy.ascontiguousarray(numpy.broadcast_to(a, shape))
                work.append((None, buf))
                c_args.append(_pointer(buf))
        c_args.append(ctypes.c_longlong(int(numpy.prod(shape))))
        getattr(self.library.lib, f"{self.spec.name}_harness_{dtype.name}")(*c_args)
        for a, buf in work:
            if a is not None and buf is not a:
                a[...] = buf
        return outs[0] if len(outs) == 1 else tuple(outs)


class _FakeRawKernel:
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
                c_args.append(_C_SCALARS[ctype](a.item()))
        self.fn(*c_args)


class _FakeRawModule:
    def __init__(self, library, code):
        self.library, self.kernels = library, raw_kernels(code)

    def get_function(self, name):
        return _FakeRawKernel(self.library, name, self.kernels[name])


def fake_cupy(library, sm_count):
    """A module with the parts of CuPy the kernel wrappers use, on the host."""
    def wrap(fn):
        return lambda *a, **k: fn(*a, **k).view(DeviceArray)

    runtime = types.SimpleNamespace(
        getDevice=lambda: 0,
        getDeviceProperties=lambda device: {"multiProcessorCount": sm_count})
    return types.SimpleNamespace(
        __name__="cupy_emulated",
        ascontiguousarray=wrap(numpy.ascontiguousarray), empty=wrap(numpy.empty),
        zeros=wrap(numpy.zeros), empty_like=wrap(numpy.empty_like),
        ElementwiseKernel=lambda in_params, out_params, operation, name, **kw:
            _FakeElementwise(library, name),
        RawModule=lambda code, options=(): _FakeRawModule(library, code),
        cuda=types.SimpleNamespace(runtime=runtime))


def emulate(monkeypatch, library, sm_count=2):
    """Route the CuPy kernels of the registry to ``library`` on the host for the rest
    of the test (pytest's ``monkeypatch`` undoes it): CuPy itself is not used."""
    from minigrad.kernels import _cuda, dense, losses
    fake = fake_cupy(library, sm_count)
    monkeypatch.setattr(_cuda, "cupy_module", lambda: fake)
    monkeypatch.setattr(_cuda, "_sm_counts", {})
    monkeypatch.setattr(dense, "_BUFFERS", _cuda.DeviceBuffers())
    monkeypatch.setattr(losses, "_BUFFERS", _cuda.DeviceBuffers())
    for spec in all_specs():
        for attr, fresh in (("_kernel", None), ("_module", None), ("_functions", {})):
            if hasattr(spec, attr):
                monkeypatch.setattr(spec, attr, fresh)
    return fake
