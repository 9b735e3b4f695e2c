"""The CPU's cores in training: minigrad splits the convolutions' work itself, with
the BLAS on one thread.

Why: by default NumPy's BLAS (OpenBLAS) runs each matrix product on every core,
and between products its worker threads spin, waiting for the next one -- they
hold the other cores.  minigrad's own kernels (the convolutions' im2row / row2im,
the epilogues, Adam) therefore run on one core: their threaded versions measured
slower, fighting the spinning workers.  For a dense network that is the right
trade (its products are most of a step); a convolution's layout kernels take as
long as its products.

``with split_work():`` changes the trade: inside, every OpenBLAS of the process
runs on one thread (so nothing spins), the convolution layers (:mod:`minigrad.conv`)
hand their blocks of images to ``workers`` threads at once -- each block's im2row,
product and epilogue on one core, in that core's cache -- and the dense layers
(:class:`minigrad.nn.DenseFunction`) their rows.  On the 2-vCPU Intel Xeon VM
(2026-12-08) the convolutional autoencoder's step at batch 128
(``benchmarks/conv_step.py``, 20 rounds) took 23.6-25.4 ms that way against
27.5-30.0 ms with the BLAS on both cores (PyTorch: 18.2-20.1 ms in the same runs);
turning the BLAS threads down only around the blocks was the worst of all (34.5
ms: the BLAS workers, woken by the dense layers, spun through the blocks).  For
a dense network alone it loses (a prototype, the autoencoder 784-512-128-512-784:
at batch 64 4.9 ms a step against 2.7-3.0; at 1024 23.0-24.1 against 21.0-21.7),
and so it does for small batches of the convolutional one, where handing out work
(about 80 us a call) and the one-thread products weigh more than the blocks gain:
``Autoencoder.fit`` trains a model with convolution layers inside it at batches of
:data:`MIN_BATCH` or more.

The results agree with the unsplit ones to rounding, and do not vary from run to
run: the blocks write disjoint parts of the output; a convolution's blocks are
the same with or without threads (:func:`cores`) and their weight and bias
gradients are summed in block order, as one thread sums them; a dense layer's are
the sum of the threads' shares, in row order.  Each task runs with the
flush-to-zero flags of the thread that handed it out (:mod:`minigrad.denormals`).
A BLAS other than OpenBLAS is left as it is (its products may then run on several
cores inside each block).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import os
import threading

from . import denormals

__all__ = ["split_work", "splitting", "each_block", "sum_in_order", "even_bounds", "workers",
           "cores", "MIN_BATCH"]

#: The smallest batch that ``fit`` trains a convolutional model at inside
#: :func:`split_work`.  The conv step (``benchmarks/conv_step.py``, 2-vCPU Intel Xeon
#: VM, 2026-12-08), split against the BLAS on both cores: batch 32 11.08 against 7.30
#: ms, 48 14.82 against 9.97, 64 13.73 against 12.84, 96 18.11 against 19.31, 128
#: 22.97 against 25.23, 512 79.4 against 104.6.
MIN_BATCH = 96

_lock = threading.Lock()
_depth = 0          # nested split_work blocks, all threads together
_workers = 1        # threads that share the blocks while _depth > 0
_pool = None        # the helper threads (workers - 1 of them), kept once started
_pool_size = 0
_saved = []         # [(set_num_threads, threads before)] of every OpenBLAS
_setters = None     # [(get, set)] of every OpenBLAS, found once


def _openblas_thread_setters():
    """``[(get, set)]``: the num-threads functions of every OpenBLAS loaded here
    (their names carry the build's prefix and suffix: ``scipy_openblas_..64_`` in
    NumPy's wheels), looked up once, as :mod:`minigrad.denormals` finds the libraries."""
    global _setters
    if _setters is not None:
        return _setters
    found = []
    for path in denormals.blas_libraries():
        library = ctypes.CDLL(path)
        for prefix, suffix in (("", ""), ("scipy_", "64_"), ("scipy_", ""), ("", "64_")):
            try:
                get = getattr(library, f"{prefix}openblas_get_num_threads{suffix}")
                set_ = getattr(library, f"{prefix}openblas_set_num_threads{suffix}")
            except AttributeError:
                continue
            get.restype, get.argtypes = ctypes.c_int, []
            set_.restype, set_.argtypes = None, [ctypes.c_int]
            found.append((get, set_))
            break
    _setters = found
    return found


def cores():
    """The cores this process may run on: :func:`split_work`'s default ``workers``, and
    what the convolutions round their number of blocks up to a multiple of (so that
    the blocks, and the sums over them, are the same with or without the split)."""
    global _cores
    if _cores is None:
        _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else (os.cpu_count() or 1)
    return _cores


_cores = None


def even_bounds(n, parts):
    """``[0, ..., n]``: n items cut into ``parts`` contiguous runs whose sizes differ by
    at most one (how the blocks, the threads' runs and a dense layer's rows are cut)."""
    return [n * k // parts for k in range(parts + 1)]


def workers():
    """Threads that share the convolutions' blocks and the dense layers' rows now: 1
    outside :func:`split_work`."""
    return _workers if _depth else 1


def splitting():
    """Whether a :func:`split_work` block is active."""
    return _depth > 0


@contextlib.contextmanager
def split_work(workers=None):
    """Inside: every OpenBLAS runs on one thread, and the convolution layers split their
    blocks of images, the dense layers their rows, over ``workers`` threads (default:
    the cores this process may use).  Nests (the outermost block's ``workers``
    holds); on exit the BLAS thread counts are restored.  Like the BLAS's thread
    count it sets, the setting is the whole process's: while one thread is inside,
    layers that other threads run split their work too."""
    global _depth, _workers, _pool, _pool_size, _saved
    if workers is None:
        workers = cores()
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"split_work: workers={workers!r}; expected an integer >= 1")
    with _lock:
        if _depth == 0:
            _saved = [(set_, get()) for get, set_ in _openblas_thread_setters()]
            for set_, _ in _saved:
                set_(1)
            _workers = workers
            if workers > 1 and _pool_size != workers - 1:
                if _pool is not None:
                    _pool.shutdown()
                _pool = concurrent.futures.ThreadPoolExecutor(
                    workers - 1, thread_name_prefix="minigrad-blocks")
                _pool_size = workers - 1
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                for set_, threads in _saved:
                    set_(threads)
                _saved = []


def _with_flags(flags, fn, indices):
    """``fn(k)`` for each k, on this helper thread with the caller's MXCSR ``flags``."""
    if flags is None:
        return [fn(k) for k in indices]
    get, set_ = denormals._mxcsr_functions()
    before = int(get())
    set_(flags)
    try:
        return [fn(k) for k in indices]
    finally:
        set_(before)


def each_block(fn, count):
    """``[fn(0), ..., fn(count - 1)]``: inside :func:`split_work`, the blocks in
    ``workers`` contiguous runs, one per thread (the caller takes the first);
    otherwise one after the other.  ``fn`` must only write what block k owns."""
    threads = min(workers(), count)
    if threads < 2 or _pool is None:
        return [fn(k) for k in range(count)]
    flags = int(denormals._mxcsr_functions()[0]()) if denormals.supported() else None
    bounds = even_bounds(count, threads)
    futures = [_pool.submit(_with_flags, flags, fn, range(bounds[t], bounds[t + 1]))
               for t in range(1, threads)]
    results = []
    try:
        results.append([fn(k) for k in range(bounds[0], bounds[1])])
    except BaseException as error:  # re-raised below, once the helpers are done
        results.append(error)
    for future in futures:  # every one waited for, even when one fails
        try:
            results.append(future.result())
        except BaseException as error:
            results.append(error)
    for part in results:
        if isinstance(part, BaseException):
            raise part
    return [value for part in results for value in part]


def sum_in_order(shares):
    """Gradient shares of the blocks (fresh arrays) summed in block order, whichever
    thread computed each: the same sum on every run (the first share is added into)."""
    total = shares[0]
    for share in shares[1:]:
        total += share
    return total
