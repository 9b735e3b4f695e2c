"""The CUDA code of the CuPy kernels, as the GPU-free tests compile and run it.

Used by ``test_cuda_compile.py`` (NVRTC) and ``cupy_emulation.py`` (the same code
compiled for the host by a C++ compiler, :class:`HostLibrary`).  Needs neither CuPy
nor a GPU.

* :func:`registered_specs` -- ``{kernel name: (spec, ...)}`` for every kernel with a
  CuPy version; a kernel whose CuPy version records no spec maps to ``()``.
* :func:`raw_kernels` -- the ``extern "C" __global__`` kernels of a source and their
  parameters.
* :class:`HostLibrary` -- every spec compiled for the host into one shared library
  (CUDA blocks' threads as std::threads, see :data:`HOST_SHIM`).
"""
from __future__ import annotations

import re
from minigrad import kernels

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


_GLOBAL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')


def raw_kernels(source):
    """``{name: [(C type, parameter name), ...]}`` of the ``extern "C" __global__``
    kernels defined in a source."""
    out = {}
    for name, text in _GLOBAL.findall(source):
        out[name] = [(" ".join(p.split()[:-1]), p.split()[-1]) for p in text.split(",")]
    return out


# -- the same code on the host --------------------------------------------------------

#: Prepended to a CUDA source to compile it as C++ for the host: blocks run one after
#: another; a kernel that meets at __syncthreads runs each block's threads on a pool of
#: std::threads, meeting at a std::barrier, and one that never does runs them one after
#: another on the calling thread (:func:`synchronizing_kernels` tells them apart: waking
#: 256 threads per block made each launch cost tens of milliseconds on 2 cores);
#: __shared__ variables are statics (one block at a time uses them), atomics and fences
#: are the C++ ones, the math functions libm's.
HOST_SHIM = r"""
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
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
static inline void __syncthreads() {
    if (mg_block_barrier == nullptr) {  /* a kernel launched as one that never syncs */
        fprintf(stderr, "cuda host shim: __syncthreads in a kernel run without barriers "
                        "(synchronizing_kernels missed it)\n");
        abort();
    }
    mg_block_barrier->arrive_and_wait();
}
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
static void mg_launch(void (*kernel)(A...), bool syncs, dim3 grid, dim3 block, B... args) {
    gridDim = grid;
    blockDim = block;
    const unsigned int threads = block.x * block.y * block.z;
    for (unsigned int bz = 0; bz < grid.z; ++bz)
    for (unsigned int by = 0; by < grid.y; ++by)
    for (unsigned int bx = 0; bx < grid.x; ++bx) {
        blockIdx = mg_uint3{bx, by, bz};
        if (!syncs) {
            for (unsigned int t = 0; t < threads; ++t) {
                threadIdx = mg_uint3{t % block.x, (t / block.x) % block.y,
                                     t / (block.x * block.y)};
                kernel(args...);
            }
            continue;
        }
        std::barrier<> barrier(threads);
        mg_block_barrier = &barrier;
        mg_threads->run(threads, [=](unsigned int t) {
            threadIdx = mg_uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            kernel(args...);
        });
        mg_block_barrier = nullptr;
    }
    /* back to one thread */
    gridDim = dim3{};
    blockDim = dim3{};
    blockIdx = mg_uint3{};
    mg_block_barrier = nullptr;
}
"""


_FUNCTION = re.compile(r'(?:__global__|__device__)[^;{]*?\b(\w+)\s*\([^)]*\)\s*\{')


def synchronizing_kernels(source, common=""):
    """The names of the ``extern "C" __global__`` kernels of ``source`` that reach
    ``__syncthreads``, in their own body or through the ``__device__`` functions
    they call (of ``source`` or of the ``common`` code put before it)."""
    bodies = {}
    for text in (common, source):
        for match in _FUNCTION.finditer(text):
            depth, i = 1, match.end()
            while depth:
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                i += 1
            bodies[match.group(1)] = bodies.get(match.group(1), "") + text[match.end():i]
    syncing = {name for name, body in bodies.items() if "__syncthreads" in body}
    while True:  # callers of a syncing function sync too
        more = {name for name, body in bodies.items() if name not in syncing and any(
            re.search(rf"\b{callee}\s*[(<]", body) for callee in syncing)}
        if not more:
            return {name for name in raw_kernels(source) if name in syncing}
        syncing |= more


def host_launchers(source, common=""):
    """C wrappers ``mg_launch_<kernel>(gx, gy, gz, bx, by, bz, args...)`` for every
    ``extern "C" __global__`` kernel of ``source`` (compiled with :data:`HOST_SHIM`)."""
    out, syncs = [], synchronizing_kernels(source, common)
    for name, plist in raw_kernels(source).items():
        decl = ", ".join(f"{t} {p}" for t, p in plist)
        names = ", ".join(p for _, p in plist)
        out.append(f'extern "C" void mg_launch_{name}(unsigned int gx, unsigned int gy, '
                   f'unsigned int gz, unsigned int bx, unsigned int by, unsigned int bz, '
                   f'{decl}) {{\n    mg_launch({name}, {"true" if name in syncs else "false"}, '
                   f'dim3{{gx, gy, gz}}, '
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
    """Every spec's source compiled for the host into one shared library, with
    :func:`host_launchers`; each source once (several specs launch kernels of one
    file), in a namespace of its own."""

    def __init__(self, specs, folder, compiler):
        from minigrad.kernels import _cuda
        parts, sources = [HOST_SHIM, _cuda.common_source()], set()
        for k, spec in enumerate(specs):
            if spec.source in sources:
                continue
            sources.add(spec.source)
            parts.append(f"namespace mg_host_{k} {{\n{spec.source}\n"
                         f"{host_launchers(spec.source, _cuda.common_source())}}}\n")
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
