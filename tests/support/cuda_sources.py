"""The CUDA code of the CuPy kernels, as the GPU-free tests compile and run it.

Used by ``test_cuda_compile.py`` (NVRTC) and ``cupy_emulation.py`` (the same code
compiled for the host by a C++ compiler, :class:`HostLibrary`).  Needs neither CuPy nor a GPU,
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
* :class:`HostLibrary` -- every spec compiled for the host into one shared library
  (CUDA blocks' threads as std::threads, see :data:`HOST_SHIM`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from minigrad import kernels

CTYPES = {"float32": "float", "float64": "double"}
FIXED_TYPES = {"int32": "int", "int64": "long long", "uint32": "unsigned int",
               "float32": "float", "float64": "double", "bool": "bool"}


def registered_specs():
    """``{kernel name: tuple of CUDA specs}`` for every kernel's CuPy version."""
    cupy_kernels = kernels.Kernels("cupy")  # raises if a kernel has no CuPy version
    return {name: tuple(getattr(getattr(cupy_kernels, name), "cuda_specs", ()))
            for name in kernels.names()}


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
        # a cupy.ElementwiseKernel (building it needs no device), from CuPy's own
        # module even while tests stand a host emulation in for ``cupy``
        kernel = _kernel.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation,
                                           name=spec.name, preamble=spec.preamble,
                                           options=spec.options)
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
                arginfos.append(_kernel._ArgInfo(_ARG_NDARRAY, core.ndarray, t, 1, True,
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
#: threads on a pool of std::threads, meeting at a std::barrier for __syncthreads; blocks run
#: one after another, __shared__ variables are statics (one block at a time uses
#: them), atomics and fences are the C++ ones, the math functions libm's.
HOST_SHIM = r"""
#include <math.h>
#include <stddef.h>
#include <atomic>
#include <barrier>
#include <condition_variable>
#include <functional>
#include <mutex>
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
/* The threads of a block: a pool of workers started once and reused by every launch
   (starting hundreds of threads per block made the emulated runs slow).  Never
   freed: its threads wait for work until the process ends. */
struct mg_pool {
    std::mutex m;
    std::condition_variable start, done;
    std::vector<std::thread> workers;
    std::function<void(unsigned int)> task;
    unsigned int generation = 0, active = 0, remaining = 0;

    void work(unsigned int id) {
        unsigned int seen = 0;
        for (;;) {
            std::unique_lock<std::mutex> lock(m);
            start.wait(lock, [&] { return generation != seen; });
            seen = generation;
            if (id >= active) continue;
            auto run = task;
            lock.unlock();
            run(id);
            lock.lock();
            if (--remaining == 0) done.notify_one();
        }
    }
    /* run task(0) ... task(n - 1) on n threads at once (a block's threads meet at
       barriers, so they must all be running) and wait for them */
    void run(unsigned int n, std::function<void(unsigned int)> f) {
        std::unique_lock<std::mutex> lock(m);
        while (workers.size() < n) {
            unsigned int id = (unsigned int)workers.size();
            workers.emplace_back([this, id] { work(id); });
        }
        task = std::move(f);
        active = remaining = n;
        ++generation;
        start.notify_all();
        done.wait(lock, [&] { return remaining == 0; });
    }
};
static mg_pool* mg_threads = new mg_pool;

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
        mg_threads->run(threads, [=](unsigned int t) {
            threadIdx = mg_uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            kernel(args...);
        });
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


# -- the kernels compiled for the host ---------------------------------------------------

import ctypes  # noqa: E402
import hashlib  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402


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
        parts, sources = [HOST_SHIM, _cuda.common_source()], set()
        for k, spec in enumerate(specs):
            if spec.kind == "raw":
                if spec.source in sources:  # several specs launch kernels of one file
                    continue
                sources.add(spec.source)
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
