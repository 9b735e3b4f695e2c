"""Large arrays without page faults: the C allocator's policy while training.

Why: glibc's ``malloc`` (NumPy's allocator on Linux) serves every request above
``M_MMAP_THRESHOLD`` with pages fresh from the kernel and returns them on
``free``; it also gives the top of its heap back once more than
``M_TRIM_THRESHOLD`` is free there.  Both start at 128 KiB (the first adapts as
blocks are freed, up to 32 MiB).  A training step allocates and frees the same
large arrays every step -- activations, gradients, im2row's rows -- so each
step has the kernel map and zero those pages again: 4,800 page faults (20 MB) per
step of the convolutional autoencoder at batch 128, about 5,600 for the same
network in PyTorch eager, and the NumPy backend's dense step at batch 1024 swung
between 42 and 76 ms with where glibc happened to trim.

What :func:`reuse_memory` does: inside ``with reuse_memory():`` both thresholds
are raised (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`), so freed arrays stay
in the heap and the next step's arrays reuse them, without a fault.  On leaving
the outermost block ``malloc_trim(0)`` returns the free memory to the system, and
the thresholds are set where glibc's own adaptation ends up for array-heavy code
(:data:`AFTER`: 32 MiB and twice that, its ceiling; glibc has no call that
resumes the adaptation itself, and its starting values, 128 KiB, would map every
larger array afresh for the rest of the process).  ``Autoencoder.fit`` trains
inside it; wrap your own training loop in it too.

Its cost: while inside, memory freed by the process is kept for reuse rather
than given back (the process holds its peak).  The thresholds are process-wide:
other threads' allocations keep memory the same way meanwhile.

It does nothing where there is no glibc (macOS, Windows, musl), when
``MALLOC_MMAP_THRESHOLD_`` or ``MALLOC_TRIM_THRESHOLD_`` is set in the
environment (the user's own policy wins) or ``MINIGRAD_REUSE_MEMORY=0``;
:func:`supported` says whether it acts.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import threading

__all__ = ["reuse_memory", "supported", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "AFTER"]

#: Requests up to this size come from the heap inside the block (glibc's default
#: is 128 KiB): larger than any array of the benchmarks' steps.
MMAP_THRESHOLD = 256 << 20
#: Free memory at the top of the heap kept inside the block (default 128 KiB).
TRIM_THRESHOLD = 1 << 30

#: (mmap, trim) thresholds after the block: glibc's adaptive ceiling for the mmap
#: threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit) and the trim threshold it pairs
#: with it (twice the mmap threshold).
AFTER = (32 << 20, 64 << 20)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3     # mallopt's parameter numbers (malloc.h)

_lock = threading.Lock()
_depth = 0           # blocks entered and not yet left, over all threads
_libc = None


def _glibc():
    """The C library if it is glibc with ``mallopt`` and ``malloc_trim``, else None."""
    global _libc
    if _libc is None:
        _libc = False
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            libc.gnu_get_libc_version.restype = ctypes.c_char_p
            libc.gnu_get_libc_version()  # only glibc has it
            libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
            libc.malloc_trim.argtypes = (ctypes.c_size_t,)
            _libc = libc
        except (OSError, AttributeError):
            pass
    return _libc or None


def supported():
    """Whether :func:`reuse_memory` changes anything here (see the module docstring)."""
    if os.environ.get("MINIGRAD_REUSE_MEMORY", "1") == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    return _glibc() is not None


def _set(mmap_threshold, trim_threshold):
    libc = _glibc()
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
                and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold))


@contextlib.contextmanager
def reuse_memory():
    """Inside the block, large arrays are reused from the heap instead of mapped and
    unmapped every step; blocks nest (and may be entered by several threads): the
    policy ends when the last one is left."""
    global _depth
    acting = supported()
    if acting:
        with _lock:
            if _depth == 0 and not _set(MMAP_THRESHOLD, TRIM_THRESHOLD):
                acting = False  # this glibc refused the values: leave it as it was
            else:
                _depth += 1
    try:
        yield acting
    finally:
        if acting:
            with _lock:
                _depth -= 1
                if _depth == 0:
                    _glibc().malloc_trim(0)
                    _set(*AFTER)
