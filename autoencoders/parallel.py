"""Data-parallel training: what ``fit(..., comm=...)`` does differently on R ranks.

Each rank runs the same ``fit`` on the same data.  Per step (the maths is in
:mod:`minigrad.distributed`):

1. the epoch's shuffled order is the same on every rank (the same seed), and its
   next ``batch_size x R`` indices are the global batch; rank r reads only its own
   contiguous part of them (:func:`~minigrad.distributed.shard`);
2. it computes its part's loss and gradient, with the training noise drawn for the
   whole global batch and sliced (:class:`~minigrad.distributed.ShardedGenerator`),
   so every row gets the noise it would get in one process;
3. **one Allreduce** sums, in a single contiguous buffer, every gradient scaled by
   n_r / B, every loss term times n_r, and a failure flag;
4. every rank applies the same optimizer step to the same weights.

So R ranks with per-rank batch b follow one process with batch R b, up to the
order of float additions.  Rank 0 alone writes the checkpoint and the log and shows
progress; an exception on any rank (bad data, a NaN loss, a full disk) stops every
rank with that error rather than leaving them waiting.  After each epoch the ranks
compare a checksum of their weights.

A loss that is not a mean of per-example terms (the sparse autoencoder's KL, whose
ρ̂ is a mean over the batch) is computed on each rank's part of the batch, as
PyTorch's DistributedDataParallel does for batch statistics; fit warns about it.
"""
from __future__ import annotations

import math
import warnings

import numpy

from minigrad import no_grad, optim
from minigrad.device import move
from minigrad.distributed import (DistributedError, FlatBuffer, ShardedGenerator, Together,
                                  shard, weights_digest)

from .base import _floats
from .inputs import Rows
from .training import _restore, nonfinite_loss

__all__ = ["Parallel"]

#: Numbers reduced beside the gradients: the failure flag, then the loss terms.
EXTRA = 16


class Parallel:
    """The data-parallel parts of one ``fit`` call (``training``: its ``_Training``)."""

    def __init__(self, training):
        self.training, self.comm = training, training.comm
        self.model, self.params = training.model, training.params
        self.buffer = FlatBuffer(self.params, extra=EXTRA)
        self.noise = ShardedGenerator(training.noise_rng)
        self.global_batch = training.batch_size * self.comm.size
        warn_if_batch_statistic(self.model, self.comm.size)
        # every rank starts from rank 0's weights (a model built with seed=None differs)
        self.buffer.set_weights(self.comm.bcast(self.buffer.weights()))

    # -- the rows of each step --------------------------------------------------------
    def part(self, n):
        """``(lo, hi, count)``: the rows ``lo:hi`` of a batch of ``n`` this rank computes
        on, and how many of them count.  A rank left without rows (a last batch smaller
        than R) computes on the batch's first row with weight 0, so that it still
        draws the batch's noise and takes part in the Allreduce."""
        start, stop = shard(n, self.comm.rank, self.comm.size)
        return (start, stop, stop - start) if stop > start else (0, 1, 0)

    def batches(self, order):
        """Per step: ``(fetch, lo, hi, count, n)``: ``fetch()`` reads this rank's rows
        ``lo:hi`` of the ``n`` in the global batch (see :meth:`part`)."""
        rows = self.training.train_rows
        if isinstance(rows, Rows):
            for at in range(0, rows.n, self.global_batch):
                batch = order[at:at + self.global_batch]
                lo, hi, count = self.part(len(batch))
                yield (lambda p=batch[lo:hi]: rows.take(p)), lo, hi, count, len(batch)
        else:  # a stream: each of its batches is split among the ranks
            for batch in rows.batches():
                lo, hi, count = self.part(len(batch))
                yield (lambda b=batch[lo:hi]: numpy.ascontiguousarray(b)), lo, hi, count, \
                    len(batch)

    # -- one step -----------------------------------------------------------------------
    def step(self, fetch, lo, hi, count, n, update, last_good, where):
        """This rank's part of one step, the one Allreduce, the update; returns the
        whole batch's loss terms (as one process would log them)."""
        model, opt, buffer = self.model, self.training.opt, self.buffer
        error, terms = None, {}
        try:
            x = fetch()
            opt.zero_grad()
            self.noise.rows(lo, hi, n)  # what the step's noise draws from this time
            steps = self.training.steps  # recorded and replayed as in one process
            total, parts = steps(model._tensor(x))
            terms = _floats(total, parts)
            if not math.isfinite(terms["total"]):
                raise nonfinite_loss(model, terms["total"], f"{where} on rank {self.comm.rank}")
            steps.backward()
            if len(terms) >= EXTRA:
                raise ValueError(f"{model._name}: {len(terms)} loss terms; data-parallel "
                                 f"training reduces at most {EXTRA - 1}")
        except Exception as e:  # reported to every rank through the flag below
            error = e
        had_grad = [p.grad is not None for p in self.params]
        buffer.pack(count / n)
        keys = sorted(terms)
        extra = numpy.zeros(EXTRA)
        extra[0] = error is not None
        extra[1:1 + len(keys)] = [terms[key] * count for key in keys]
        buffer.extra[...] = buffer.xp.asarray(extra, dtype=buffer.dtype)
        self.comm.allreduce(buffer.data)
        reduced = numpy.asarray(move(buffer.extra, "cpu"), dtype=numpy.float64)
        if reduced[0] > 0:
            try:
                Together(self.comm, where).agree(True, error)
            except FloatingPointError:
                _restore(self.params, last_good)  # every rank: before the update that led here
                raise
        buffer.unpack(had_grad)
        if self.training.clip is not None:
            optim.clip_grad_norm(self.params, self.training.clip)
        update()
        return {key: float(reduced[1 + k]) / n for k, key in enumerate(keys)}

    # -- after each epoch -------------------------------------------------------------
    def evaluate(self, rows, batch_size=1024):
        """The mean loss terms over ``rows`` (validation data), each rank evaluating its
        part of each batch of ``batch_size`` with the noise one process would draw."""
        model = self.model
        noise = ShardedGenerator(numpy.random.default_rng(self.training.seed))
        sums, keys = numpy.zeros(EXTRA), []
        with no_grad():
            for at in range(0, rows.n, batch_size):
                n = min(batch_size, rows.n - at)
                lo, hi, count = self.part(n)
                error, batch = None, numpy.zeros(EXTRA)
                try:
                    total, parts = model._loss(model._tensor(rows.take(slice(at + lo, at + hi))),
                                               noise.rows(lo, hi, n))
                    terms = _floats(total, parts)
                    keys = sorted(terms)
                    batch[1:1 + len(keys)] = [terms[key] * count for key in keys]
                except Exception as e:
                    error = e
                batch[0] = error is not None
                self.comm.allreduce(batch)
                Together(self.comm, "validation").agree(batch[0] > 0, error)
                sums += batch
        return {key: float(sums[1 + k]) / rows.n for k, key in enumerate(keys)}

    def check_same_weights(self, where):
        """Every rank holds the same weights (a checksum each), or every rank raises."""
        digests = self.comm.allgather_object(weights_digest(self.params))
        if len(set(digests)) > 1:
            raise DistributedError(
                f"{self.model._name}.fit: after {where} the ranks' weights differ (checksums "
                f"{digests}); the ranks must run the same backend, dtype and code")


def warn_if_batch_statistic(model, ranks):
    """A loss that is not a mean of per-example terms cannot be split exactly."""
    if not model._per_example_loss():
        warnings.warn(f"{model._name}: this loss has a batch statistic (the sparse KL's mean "
                      f"activation), which each of the {ranks} ranks computes on its own part "
                      f"of the batch; the result differs from one process's", stacklevel=5)

