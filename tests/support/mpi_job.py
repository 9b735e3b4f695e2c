"""The ranks' side of tests/test_distributed.py: run under ``mpiexec -n 2``.

``python mpi_job.py OUT CHECKPOINT_FROM_ONE_PROCESS`` trains the cases of
:data:`CASES` data-parallel, resumes a one-process checkpoint on two ranks, writes a
two-rank checkpoint, then provokes failures on rank 1 only; every rank writes what
it saw to ``OUT/rank<r>.npz`` and ``OUT/rank<r>.json`` for the test to compare with
one process.  A hang here is what the test's timeout catches.
"""
import json
import os
import sys

import numpy as np

import minigrad
from minigrad import distributed, replay
from autoencoders import DenoisingAutoencoder, VanillaAutoencoder, VariationalAutoencoder

FLAVORS = {"vanilla": VanillaAutoencoder, "variational": VariationalAutoencoder,
           "denoising": DenoisingAutoencoder}
#: (backend, flavor, dtype, rows): trained with per-rank batch 8 here, batch 16 in one
#: process, validation_split=0.1.  162 rows leave 145 to train on, so the last global
#: batch has one row and rank 1 none (it computes on a stand-in row of weight 0); 164
#: leave 147, a last batch of 3 split 2 + 1.
CASES = [("numpy", "vanilla", "float64", 162), ("numba", "vanilla", "float64", 164),
         ("numba", "vanilla", "float32", 162), ("numpy", "variational", "float64", 164),
         ("numba", "variational", "float64", 162), ("numba", "denoising", "float64", 164)]
EPOCHS, PER_RANK_BATCH = 3, 8


def data(rows=162):
    return np.random.default_rng(0).random((rows, 12))


def build(flavor, dtype):
    return FLAVORS[flavor]([12, 8, 3], seed=1, dtype=dtype)


def flat(model):
    return np.concatenate([np.asarray(p.numpy(), dtype=np.float64).ravel()
                           for p in model.parameters()])


def main(out, one_process_checkpoint):
    comm = distributed.world()
    rank = comm.rank
    arrays, report = {}, {"size": comm.size, "bytes_per_step": None}
    replays = [0]  # the steps replayed (minigrad.replay), as fit does in one process
    replay_once = replay.Step._replay

    def counting_replay(step, arrays):
        replays[0] += 1
        return replay_once(step, arrays)
    replay.Step._replay = counting_replay
    X = data()
    for backend, flavor, dtype, rows in CASES:
        with minigrad.set_backend(backend):
            model = build(flavor, dtype)
            before, replays[0] = comm.bytes_sent, 0
            history = model.fit(data(rows), epochs=EPOCHS, batch_size=PER_RANK_BATCH,
                                progress=False, validation_split=0.1, comm=comm)
            report.setdefault("bytes", {})[f"{backend}-{flavor}-{dtype}"] = \
                comm.bytes_sent - before
            report.setdefault("replayed", {})[f"{backend}-{flavor}-{dtype}"] = replays[0]
        arrays[f"{backend}-{flavor}-{dtype}"] = flat(model)
        report.setdefault("history", {})[f"{backend}-{flavor}-{dtype}"] = history

    # resume, on 2 ranks, a checkpoint that one process wrote after 2 of 4 epochs
    model = build("variational", "float64")
    model.fit(X, epochs=4, batch_size=PER_RANK_BATCH, progress=False, seed=3,
              checkpoint_dir=one_process_checkpoint, resume=True, comm=comm)
    arrays["resumed-from-one"] = flat(model)
    # and write one on 2 ranks for one process to resume
    model = build("variational", "float64")
    model.fit(X, epochs=2, batch_size=PER_RANK_BATCH, progress=False, seed=3,
              checkpoint_dir=os.path.join(out, "two-rank-checkpoint"), comm=comm)

    # failures on rank 1 only: every rank must raise, none may hang
    failures = {}

    class NanOnRankOne(VanillaAutoencoder):
        calls = 0

        def _loss(self, x, rng):
            total, terms = super()._loss(x, rng)
            NanOnRankOne.calls += 1
            if rank == 1 and NanOnRankOne.calls == 3:
                total = total * float("nan")
            return total, terms

    class BadBatchOnRankOne(VanillaAutoencoder):
        def _loss(self, x, rng):
            if rank == 1:
                raise ValueError("a bad batch (rows 5-12 unreadable)")
            return super()._loss(x, rng)

    def callback_fails_on_rank_one(model, epoch, logs):
        if rank == 1:
            raise KeyError("callback state")

    for name, model, options in (
            ("nan", NanOnRankOne([12, 8, 3], seed=1, dtype="float64"), {}),
            ("bad-batch", BadBatchOnRankOne([12, 8, 3], seed=1, dtype="float64"), {}),
            ("callback", build("vanilla", "float64"),
             {"callbacks": [callback_fails_on_rank_one]})):
        try:
            model.fit(X, epochs=2, batch_size=PER_RANK_BATCH, progress=False, comm=comm,
                      **options)
            failures[name] = None
        except Exception as error:
            failures[name] = {"type": type(error).__name__, "message": str(error),
                              "finite": bool(np.isfinite(flat(model)).all())}
            arrays[f"failed-{name}"] = flat(model)
    report["failures"] = failures
    np.savez(os.path.join(out, f"rank{rank}.npz"), **arrays)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def nccl(out):
    """Two GPUs through NCCL: the VAE trained on the cupy backend, weights saved."""
    comm = distributed.world("cuda")
    with minigrad.set_backend("cupy"):
        model = build("variational", "float32")
        model.fit(data(164), epochs=EPOCHS, batch_size=PER_RANK_BATCH, progress=False,
                  validation_split=0.1, comm=comm)
    np.save(os.path.join(out, f"nccl-rank{comm.rank}.npy"), flat(model))


if __name__ == "__main__":
    if sys.argv[1] == "--nccl":
        nccl(sys.argv[2])
    else:
        main(sys.argv[1], sys.argv[2])
