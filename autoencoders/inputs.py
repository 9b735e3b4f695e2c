"""What users pass in, checked: arrays in memory, arrays on disk, streams of batches.

``fit``, ``evaluate`` and ``transform`` read their data a batch at a time, so a
data set never has to fit in memory:

* **rows** -- a NumPy array, a ``numpy.memmap`` over a file, or any array-like with
  a ``shape`` that slices (``X[i:j]``; ``fit`` also takes rows in shuffled order,
  ``X[[i, j, ...]]``).  It is checked once, a block of rows at a time (the shape,
  the dtype, NaN and infinite values, the [0, 1] range of ``loss="bce"``), and
  then read batch by batch;
* **a stream of batches** -- any other iterable (a generator's list, an object whose
  ``__iter__`` reads a file, a data loader) yielding 2-D arrays; each batch is
  checked as it arrives.  ``fit`` iterates it once per epoch, so for more than one
  epoch it must be re-iterable (a class with ``__iter__``, not a generator).

Lists and tuples are taken as rows (``numpy.asarray``), as before.  Every batch
reaches the model as a C-contiguous array of the model's dtype.
"""
from __future__ import annotations

import numpy

from minigrad import Tensor

__all__ = ["Rows", "Stream", "source", "check_block", "check_array"]

#: Values scanned per block when a whole array is checked (bounded memory).
SCAN_VALUES = 1 << 18


def source(model, X, name, bounded=False, codes=False):
    """``X`` as :class:`Rows` or a :class:`Stream`, checked for ``model``."""
    if isinstance(X, Tensor):
        X = X.numpy()
    if isinstance(X, (list, tuple)) or hasattr(X, "shape") or not hasattr(X, "__iter__") \
            or isinstance(X, (str, bytes)):
        return Rows(model, X, name, bounded, codes)
    return Stream(model, X, name, bounded, codes)


def check_array(model, X, name, bounded=False, codes=False):
    """A small ``X`` as one checked 2-D array of the model's dtype (read whole)."""
    rows = Rows(model, X, name, bounded, codes)
    return rows.take(slice(0, rows.n))


def _shape_and_kind(model, X, name, codes):
    width = model.latent_dim if codes else model.input_dim
    if not hasattr(X, "shape") or not hasattr(X, "dtype") or not hasattr(X, "__getitem__"):
        try:
            X = numpy.asarray(X)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{model._name}: {name} is not an array of numbers ({e})") from None
    dtype = numpy.dtype(X.dtype)
    if dtype.kind not in "biuf":
        raise ValueError(f"{model._name}: {name} has dtype {dtype}; expected numbers")
    shape = tuple(X.shape)
    image = getattr(model, "image_shape", None) if not codes else None
    if image is not None and len(shape) in (3, 4) and isinstance(X, numpy.ndarray) and (
            shape[1:] == image or (len(shape) == 3 and image[0] == 1 and shape[1:] == image[1:])):
        X = X.reshape(shape[0], -1)  # images of a convolutional model's shape, as rows (a view)
        shape = tuple(X.shape)
    if len(shape) != 2:
        raise ValueError(f"{model._name}: {name} must be 2-D (examples, {width} features)"
                         + (f" or images (examples, {', '.join(map(str, image))})" if image
                            else "") + f"; got shape {shape}"
                         + ("; flatten images with X.reshape(len(X), -1)" if len(shape) > 2
                            and not image else ""))
    if shape[1] != width and not codes:
        raise ValueError(f"{model._name}: {name} has {shape[1]} features per example but "
                         f"this autoencoder expects {width}")
    if shape[1] != width:
        raise ValueError(f"{model._name}: {name} has {shape[1]} values per code but this "
                         f"autoencoder's codes have latent_dim = {width}")
    if shape[0] == 0:
        raise ValueError(f"{model._name}: {name} has no examples (shape {shape})")
    return X


def check_block(model, block, name, first_row=0, bounded=False):
    """``block`` (rows of data) as a C-contiguous array of the model's dtype, or a
    ValueError naming the first NaN/infinite value or the out-of-range values."""
    block = numpy.ascontiguousarray(block, dtype=model.dtype)
    problem = _problem(model, block, name, bounded)
    if problem:
        bad, (row, col), low, high = problem
        raise ValueError(_message(model, name, bad, first_row + row, col, low, high))
    return block


def _problem(model, block, name, bounded):
    """None, or (non-finite count, first position, min, max) of a converted block."""
    finite = numpy.isfinite(block)
    if not finite.all():
        return int((~finite).sum()), tuple(numpy.argwhere(~finite)[0]), None, None
    if bounded and model.loss_name == "bce" and block.size:
        low, high = float(block.min()), float(block.max())
        if low < 0 or high > 1:
            return 0, (0, 0), low, high
    return None


def _message(model, name, bad, row, col, low, high):
    if bad:
        return (f"{model._name}: {name} contains {bad} NaN or infinite values (as "
                f"{model.dtype}); the first is at row {row}, column {col}")
    return (f"{model._name}: {name} has values in [{low:g}, {high:g}], but loss='bce' needs "
            f"inputs in [0, 1]; scale the data (e.g. X / 255) or use loss='mse'")


class Rows:
    """Rows ``start:stop`` of an array-like, checked once a block at a time, then read
    on demand (``take``).  Nothing is copied whole: a memmap stays on disk."""

    def __init__(self, model, X, name, bounded=False, codes=False, *, _span=None):
        self.model, self.name, self.bounded = model, name, bounded
        if _span is None:
            self.X = _shape_and_kind(model, X, name, codes)
            self.start, self.stop = 0, int(self.X.shape[0])
            self._scan()
        else:  # a part of rows already checked (see split)
            self.X = X
            self.start, self.stop = _span
        self.n = self.stop - self.start
        # NumPy arrays (memmaps included) gather rows in any order; other array-likes
        # (h5py, zarr) may need increasing indices
        self._any_order = isinstance(self.X, numpy.ndarray)

    def _scan(self):
        """Check every value, a block of rows at a time: the whole error (count, first
        position, range) as if the array had been checked at once."""
        width = max(1, int(self.X.shape[1]))
        step = max(1, SCAN_VALUES // width)
        bad, first, low, high = 0, None, numpy.inf, -numpy.inf
        for at in range(self.start, self.stop, step):
            block = numpy.asarray(self.X[at:min(at + step, self.stop)], dtype=self.model.dtype)
            finite = numpy.isfinite(block)
            if not finite.all():
                if first is None:
                    row, col = numpy.argwhere(~finite)[0]
                    first = (at + int(row) - self.start, int(col))
                bad += int((~finite).sum())
            elif self.bounded and self.model.loss_name == "bce":
                low, high = min(low, float(block.min())), max(high, float(block.max()))
        if bad:
            raise ValueError(_message(self.model, self.name, bad, *first, None, None))
        if self.bounded and self.model.loss_name == "bce" and (low < 0 or high > 1):
            raise ValueError(_message(self.model, self.name, 0, 0, 0, low, high))

    def split(self, n_first):
        """``(rows[:n_first], rows[n_first:])``, without checking again."""
        at = self.start + n_first
        return (Rows(self.model, self.X, self.name, self.bounded, _span=(self.start, at)),
                Rows(self.model, self.X, self.name, self.bounded, _span=(at, self.stop)))

    def take(self, rows):
        """Rows ``rows`` (a slice, or indices counted from this part's start) as a
        C-contiguous array of the model's dtype."""
        if isinstance(rows, slice):
            block = self.X[self.start + rows.start:self.start + min(rows.stop, self.n)]
        elif self._any_order:
            block = self.X[rows + self.start if self.start else rows]
        else:
            order = numpy.argsort(rows, kind="stable")
            block = numpy.asarray(self.X[rows[order] + self.start])[numpy.argsort(order)]
        return numpy.ascontiguousarray(block, dtype=self.model.dtype)

    def batches(self, batch_size, order=None):
        """The rows in batches of ``batch_size``, in ``order`` (indices) or as stored."""
        for at in range(0, self.n, batch_size):
            yield self.take(slice(at, at + batch_size) if order is None
                            else order[at:at + batch_size])

    def n_batches(self, batch_size):
        return -(-self.n // batch_size)


class Stream:
    """An iterable of batches, each checked as it arrives."""

    def __init__(self, model, batches, name, bounded=False, codes=False):
        self.model, self.name, self.bounded, self.codes = model, name, bounded, codes
        self.source = batches
        self.n = None  # unknown until a pass has been made

    def check_reiterable(self, epochs):
        if epochs > 1 and iter(self.source) is self.source:
            raise ValueError(f"{self.model._name}: {self.name} is a one-shot iterator (e.g. a "
                             f"generator), so it cannot be read for {epochs} epochs; pass an "
                             f"object whose __iter__ starts a new pass, or arrays")

    def batches(self, batch_size=None, order=None):
        """The stream's own batches (``batch_size`` and ``order`` do not apply)."""
        seen = 0
        for k, batch in enumerate(self.source):
            where = f"{self.name} (batch {k + 1} of the stream)"
            batch = _shape_and_kind(self.model, batch, where, self.codes)
            yield check_block(self.model, batch, where, seen, self.bounded)
            seen += len(batch)
        if seen == 0:
            raise ValueError(f"{self.model._name}: {self.name} yielded no batches")
        self.n = seen

    def n_batches(self, batch_size):
        return None
