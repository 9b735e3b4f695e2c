"""Data-parallel training over MPI (CPU processes and nodes) or NCCL (GPUs).

Every rank holds the whole model.  Each step, the global batch of B rows is cut
into one contiguous part per rank (:func:`shard`); rank r computes the gradient of
its part's mean loss, g_r, and one Allreduce sums

    g = Σ_r (n_r / B) · g_r  =  (1/B) Σ_i ∇ℓ_i          (n_r rows on rank r)

-- exactly the gradient one process would compute on the whole batch, up to the
order of the float additions.  Every rank then applies the same optimizer step to
the same weights, so the weights stay identical without ever being sent again.

The pieces, each small:

* :class:`Communicator` -- rank, size and the four collectives training needs
  (``allreduce`` of one array in place, ``bcast`` of one array, ``bcast_object``,
  ``allgather_object``), over an ``mpi4py`` communicator; :class:`NcclCommunicator`
  does the array collectives on the GPU through NCCL (``cupy.cuda.nccl``) and the
  rest over MPI.  :func:`world` gives the one ``mpiexec`` started (a single
  process without it).
* :class:`FlatBuffer` -- the gradients of all parameters, plus a few extra numbers
  (loss terms, a failure flag), in one contiguous array: one Allreduce per step,
  not one per parameter.
* :class:`ShardedGenerator` -- training noise (the VAE's ε, the denoiser's
  corruption) drawn for the whole global batch and sliced, so R ranks draw exactly
  the numbers one process would.
* :class:`Together` -- a block that every rank enters; if it raises on any rank,
  it raises on every rank (with the failing rank's message) instead of leaving the
  others waiting in the next collective forever.

Cost model (a ring Allreduce; README "Several machines"): each rank sends and
receives about 2 (R-1)/R · P · s bytes per step for P parameters of s bytes, so a
step costs t_compute(B/R) + 2 (R-1)/R · P s / bandwidth + 2 (R-1) · latency.
"""
from __future__ import annotations

import builtins
import os
import zlib

import numpy

from .device import move

__all__ = ["Communicator", "NcclCommunicator", "world", "as_communicator", "shard",
           "FlatBuffer", "ShardedGenerator", "Together", "DistributedError",
           "weights_digest", "set_threads", "exit_together"]


class DistributedError(RuntimeError):
    """Another rank failed; the message says which, where and why."""


class Communicator:
    """A group of ``size`` processes, this one being ``rank``, over ``mpi4py``.

    ``comm``: an ``mpi4py.MPI.Comm`` (None: a group of one, which needs no MPI).
    ``bytes_sent`` counts the payload of the array collectives (what one rank puts
    in), for the benchmark's bytes-per-step.
    """

    def __init__(self, comm=None):
        self.mpi = comm
        self.rank = 0 if comm is None else comm.Get_rank()
        self.size = 1 if comm is None else comm.Get_size()
        self.bytes_sent = 0
        # a communicator of its own for ranks that fail outside every agreement
        # (see exit_together): its messages never meet the training's collectives
        self._errors = comm.Dup() if self.size > 1 else None

    def __repr__(self):
        return f"{type(self).__name__}(rank {self.rank} of {self.size})"

    @property
    def root(self):
        """True on rank 0, the one that writes files and shows progress."""
        return self.rank == 0

    def allreduce(self, array):
        """Sum ``array`` over the ranks, in place (every rank gets the sum)."""
        self.bytes_sent += array.nbytes
        if self.size == 1:
            return array
        from mpi4py import MPI
        host = move(array, "cpu")  # MPI reads host memory; a NumPy array is itself
        self.mpi.Allreduce(MPI.IN_PLACE, host, op=MPI.SUM)
        if host is not array:
            array[...] = move(host, "cuda")
        return array

    def bcast(self, array, root=0):
        """Rank ``root``'s ``array`` into every rank's ``array``, in place."""
        self.bytes_sent += array.nbytes if self.rank == root else 0
        if self.size == 1:
            return array
        host = move(array, "cpu")
        self.mpi.Bcast(host, root=root)
        if host is not array:
            array[...] = move(host, "cuda")
        return array

    def bcast_object(self, obj, root=0):
        """Rank ``root``'s Python object on every rank (small things: states, flags)."""
        return obj if self.size == 1 else self.mpi.bcast(obj, root=root)

    def allgather_object(self, obj):
        """``[rank 0's obj, rank 1's obj, ...]`` on every rank."""
        return [obj] if self.size == 1 else self.mpi.allgather(obj)


class NcclCommunicator(Communicator):
    """The array collectives through NCCL on each rank's GPU; objects over MPI.

    Each process takes the GPU ``local rank % GPUs on the node`` (call this before
    the model is moved to the GPU); rank 0 makes NCCL's unique id and MPI hands it
    to the others.  Arrays must be CuPy arrays on that GPU.
    """

    _TYPES = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}

    def __init__(self, comm):
        super().__init__(comm)
        import cupy
        from cupy.cuda import nccl
        from mpi4py import MPI
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        cupy.cuda.Device(local % cupy.cuda.runtime.getDeviceCount()).use()
        uid = comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
        self._nccl, self._cupy = nccl, cupy
        self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _args(self, array):
        name = self._TYPES.get(str(array.dtype))
        if name is None or not isinstance(array, self._cupy.ndarray):
            raise TypeError(f"NcclCommunicator: expected a float32 or float64 CuPy array, got "
                            f"{type(array).__name__} of dtype {array.dtype}")
        return array.data.ptr, array.size, getattr(self._nccl, name), \
            self._cupy.cuda.get_current_stream().ptr

    def allreduce(self, array):
        self.bytes_sent += array.nbytes
        ptr, count, dtype, stream = self._args(array)
        self.nccl.allReduce(ptr, ptr, count, dtype, self._nccl.NCCL_SUM, stream)
        return array

    def bcast(self, array, root=0):
        self.bytes_sent += array.nbytes if self.rank == root else 0
        ptr, count, dtype, stream = self._args(array)
        self.nccl.bcast(ptr, count, dtype, root, stream)
        return array


def exit_together(comm, code, message="", wait=None):
    """End a failed run on every rank without leaving any waiting: this rank waits
    up to ``wait`` seconds (default: ``MINIGRAD_EXIT_WAIT``, else 30) for the others
    to fail as well (the usual case: the same bad option or data on every rank);
    then rank 0 prints each distinct message once
    and every rank exits with ``code``.  If some rank does not arrive (it failed
    alone, or is waiting in a collective), MPI_Abort ends the whole job instead,
    after this rank printed its message naming itself."""
    import sys
    import time
    if comm.size == 1:
        if message:
            print(message, file=sys.stderr, flush=True)
        sys.exit(code)
    if wait is None:
        wait = float(os.environ.get("MINIGRAD_EXIT_WAIT", 30))
    request, deadline = comm._errors.Ibarrier(), time.monotonic() + wait
    while not request.Test():
        if time.monotonic() > deadline:
            print(f"rank {comm.rank} of {comm.size}: {message}", file=sys.stderr, flush=True)
            comm.mpi.Abort(code)
        time.sleep(0.01)
    messages = comm._errors.gather(message, root=0)
    if comm.root:
        for rank, text in enumerate(messages):
            if text and text not in messages[:rank]:
                print(text if rank == 0 else f"rank {rank} of {comm.size}: {text}",
                      file=sys.stderr, flush=True)
    sys.exit(code)


def world(device="cpu", share_cores=True):
    """The processes ``mpiexec`` started, as a :class:`Communicator` (NCCL's for
    ``device="cuda"``); one process, size 1, when not started by ``mpiexec``.
    Needs ``mpi4py`` (the ``distributed`` extra).

    ``share_cores``: with several ranks on one machine, each gets an equal share of
    its cores for Numba's and OpenBLAS's threads (2 ranks on 2 cores: one thread
    each), as ranks that each start a thread per core would fight over them.
    """
    try:
        from mpi4py import MPI
    except ImportError:
        raise ImportError("distributed training needs mpi4py and an MPI: pip install "
                          "'minigrad-autoencoders[distributed]'") from None
    comm = MPI.COMM_WORLD
    if share_cores and comm.Get_size() > 1:
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
        set_threads(max(1, (os.cpu_count() or 1) // local))
    if str(device) == "cuda" and comm.Get_size() > 1:
        return NcclCommunicator(comm)
    return Communicator(comm)


def set_threads(n):
    """Use ``n`` threads for Numba's parallel kernels and OpenBLAS's products."""
    import ctypes
    from .denormals import blas_libraries
    for path in blas_libraries():
        library = ctypes.CDLL(path)
        for name in ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                     "scipy_openblas_set_num_threads"):
            if hasattr(library, name):
                getattr(library, name)(ctypes.c_int(n))
                break
    try:
        import numba
        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except ImportError:  # pragma: no cover - numba is a core dependency
        pass


def as_communicator(comm):
    """None, a :class:`Communicator`, or an ``mpi4py`` communicator (wrapped)."""
    if comm is None or isinstance(comm, Communicator):
        return comm
    if hasattr(comm, "Allreduce") and hasattr(comm, "Get_rank"):
        return Communicator(comm)
    raise TypeError(f"comm must be None, a minigrad.distributed.Communicator or an mpi4py "
                    f"communicator (MPI.COMM_WORLD), got {type(comm).__name__}")


def shard(n, rank, size):
    """``(start, stop)`` of rank ``rank``'s part of ``n`` rows: contiguous parts whose
    sizes differ by at most one, the larger ones first (so rank 0 has a row whenever
    there is one)."""
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


class FlatBuffer:
    """The gradients of ``params`` and ``extra`` more numbers in one contiguous array
    of the parameters' dtype, on their device: ``pack`` them (scaled), reduce the
    whole buffer at once, then ``unpack`` each gradient as a view of it."""

    def __init__(self, params, extra=0):
        self.params = list(params)
        first = self.params[0].data
        self.xp, self.dtype = self.params[0].xp, first.dtype
        if any(p.data.dtype != self.dtype for p in self.params):
            raise TypeError("FlatBuffer: the parameters must share one dtype, got "
                            f"{sorted({str(p.data.dtype) for p in self.params})}")
        sizes = [int(numpy.prod(p.shape)) for p in self.params]
        self.offsets = numpy.concatenate([[0], numpy.cumsum(sizes)]).astype(int)
        self.n_grads = int(self.offsets[-1])
        self.data = self.xp.zeros(self.n_grads + extra, dtype=self.dtype)
        self.extra = self.data[self.n_grads:]

    def pack(self, scale):
        """``scale`` times every parameter's gradient into the buffer (zeros for a
        parameter without one)."""
        for p, lo, hi in zip(self.params, self.offsets, self.offsets[1:]):
            part = self.data[lo:hi]
            if p.grad is None:
                part[...] = 0
            else:
                self.xp.multiply(p.grad.reshape(-1), scale, out=part, casting="unsafe")

    def unpack(self, had_grad):
        """Each parameter's ``.grad`` becomes its view of the buffer (None where
        ``had_grad`` says it had none)."""
        for p, lo, hi, has in zip(self.params, self.offsets, self.offsets[1:], had_grad):
            p.grad = self.data[lo:hi].reshape(p.shape) if has else None

    def weights(self):
        """The parameters' values in one array (to broadcast them)."""
        out = self.xp.empty(self.n_grads, dtype=self.dtype)
        for p, lo, hi in zip(self.params, self.offsets, self.offsets[1:]):
            out[lo:hi] = p.data.reshape(-1)
        return out

    def set_weights(self, flat):
        for p, lo, hi in zip(self.params, self.offsets, self.offsets[1:]):
            p.data[...] = flat[lo:hi].reshape(p.shape)


class ShardedGenerator:
    """A ``numpy.random.Generator`` for one rank's rows ``start:stop`` of a global
    batch of ``n`` rows: each draw whose first dimension is the rank's row count is
    made for all ``n`` rows and sliced, so the generator's state, and the numbers
    each row gets, are those of one process drawing for the whole batch.

    Costs: every rank draws the whole batch's noise (cheap beside a step; the
    denoiser's input noise is the largest).  Set :meth:`rows` before each batch.
    """

    _SIZED = {"standard_normal": 0, "random": 0, "normal": 2, "uniform": 2}

    def __init__(self, generator):
        self.generator = generator
        self.start, self.stop, self.n = 0, 0, 0

    def rows(self, start, stop, n):
        self.start, self.stop, self.n = start, stop, n
        return self

    def __getattr__(self, name):
        if name not in self._SIZED:
            raise AttributeError(f"ShardedGenerator: {name!r} is not supported in distributed "
                                 f"training (supported: {sorted(self._SIZED)})")
        position = self._SIZED[name]
        method = getattr(self.generator, name)

        def draw(*args, **kwargs):
            args = list(args)
            size = kwargs.pop("size", args.pop(position) if len(args) > position else None)
            size = (size,) if isinstance(size, int) else tuple(size)
            if not size or size[0] != self.stop - self.start:
                raise ValueError(f"ShardedGenerator.{name}: size {size} does not start with "
                                 f"this rank's {self.stop - self.start} rows")
            return method(*args, size=(self.n,) + size[1:], **kwargs)[self.start:self.stop]
        return draw


class Together:
    """``with Together(comm, where) as t:`` -- a block every rank runs.  If it raises
    on some rank, every rank raises once all have reached the end of it: the failing
    rank its own exception, the others the same built-in exception type (or a
    :class:`DistributedError`) whose message names the rank, ``where`` and the
    original message.  ``t.vote(True)`` inside the block; afterwards ``t.any``
    tells whether any rank voted (e.g. a callback asking to stop).

    The agreement costs one small Allreduce; :meth:`agree` lets a caller fold the
    flag into an Allreduce it makes anyway (the training step does).
    """

    def __init__(self, comm, where):
        self.comm, self.where = comm, where
        self.voted, self.any, self.error = False, False, None

    def __enter__(self):
        return self

    def vote(self, value=True):
        self.voted = self.voted or bool(value)

    def __exit__(self, kind, error, traceback):
        if error is not None and not isinstance(error, Exception):
            return False  # KeyboardInterrupt, SystemExit: not ours to hold back
        if self.comm.size == 1:
            self.any = self.voted
            return False
        flags = numpy.array([error is not None, self.voted], dtype=numpy.float64)
        self.comm.allreduce(flags)
        self.any = bool(flags[1])
        self.agree(failed=bool(flags[0]), error=error)
        return False

    def agree(self, failed, error=None):
        """After a reduction that found ``failed`` on some rank: raise on every rank."""
        if not failed:
            return
        mine = None if error is None else (type(error).__name__, str(error))
        reports = self.comm.allgather_object(mine)
        if error is not None:
            raise error
        rank, (kind, message) = next((r, m) for r, m in enumerate(reports) if m is not None)
        cls = getattr(builtins, kind, None)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            cls = DistributedError
        raise cls(f"rank {rank} of {self.comm.size} failed at {self.where}: {kind}: {message}")


def weights_digest(params):
    """A checksum of the parameters' bytes: equal on every rank while the weights
    are identical (training checks it after each epoch)."""
    digest = 0
    for p in params:
        digest = zlib.crc32(numpy.ascontiguousarray(move(p.data, "cpu")).view(numpy.uint8),
                            digest)
    return digest

