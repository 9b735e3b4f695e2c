"""Data-parallel training over MPI: seconds per epoch on 1 and R ranks, the bytes
each rank sends per step, and a cost model to predict N nodes.

The job is the main job's model (README's ``manifold``: a VAE 784-512-256-2 with
Adam, lr 1e-3) on synthetic block images, trained through the product's
``fit(..., comm=minigrad.distributed.world())`` with the same **global** batch on
every rank count (``--batch 128``: 128 rows in one process, 64 per rank on 2).
Each configuration runs in its own process group (``mpiexec -n R`` for R > 1),
taking turns ``--rounds`` times; the report gives the median seconds of each epoch
over the rounds, the bytes per step, and the measured cost of one Allreduce of the
gradient buffer.

**Cost model.**  A step on R ranks costs

    t(R) = t_c(B / R) + t_ar(R),    t_ar(R) = 2 (R-1)/R * P s / bw + 2 (R-1) * a

where t_c(b) is the compute of a step on b rows, P the parameter count, s the bytes
per value (4 for float32), bw the network bandwidth and a the per-message latency:
a ring Allreduce sends and receives 2 (R-1)/R times the buffer per rank, in
2 (R-1) messages.  The speed-up on N nodes is t(1) / t(N).  The benchmark measures
t_c(B) and t_c(B/2) (so one sees how far from linear the compute scales: small
batches use the cores less well), t_ar(2) on this machine, and prints the
predicted speed-up for N = 2 .. 16 nodes at 10 and 100 Gb/s with a = 20 us,
assuming t_c(B/N) = t_c(B/2) * 2/N.

    python benchmarks/distributed.py                       # 4 epochs of 40,000 images
    python benchmarks/distributed.py --ranks 1,2 --epochs 3 --n 20000
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [784, 512, 256, 2]


def worker(args):
    """One configuration, on every rank of this process group; rank 0 writes JSON."""
    sys.path.insert(0, ROOT)
    import minigrad
    from minigrad import distributed
    from autoencoders import VariationalAutoencoder, datasets
    comm = distributed.world()
    images, _, _ = datasets.blocks(args.n, size=28, seed=0)
    X = images.reshape(args.n, -1)
    model = VariationalAutoencoder(SIZES, seed=0)
    per_rank = args.batch // comm.size
    marks = [time.perf_counter()]

    def clock(model, epoch, logs):
        marks.append(time.perf_counter())
    before = comm.bytes_sent
    history = model.fit(X, epochs=args.epochs, batch_size=per_rank, progress=False, seed=0,
                        comm=comm, callbacks=[clock])
    steps = args.epochs * -(-args.n // args.batch)
    sent = comm.bytes_sent - before
    # the Allreduce alone, on a buffer the size of the step's
    n_values = sum(p.data.size for p in model.parameters()) + 16
    buffer = np.zeros(n_values, dtype=np.float32)
    times = []
    for _ in range(args.allreduce_repeats if comm.size > 1 else 0):
        started = time.perf_counter()
        comm.allreduce(buffer)
        times.append(time.perf_counter() - started)
    if comm.root:
        result = {"ranks": comm.size, "per_rank_batch": per_rank, "global_batch": args.batch,
                  "epoch_seconds": list(np.diff(marks)), "steps_per_epoch": steps // args.epochs,
                  "bytes_sent_per_step": sent / steps, "parameters": n_values - 16,
                  "allreduce_seconds": statistics.median(times) if times else 0.0,
                  "final_total": history["total"][-1],
                  "backend": minigrad.get_backend().name}
        with open(args.worker, "w") as f:
            json.dump(result, f)


def run_one(ranks, args, path):
    command = [sys.executable, os.path.abspath(__file__), "--worker", path,
               "--n", str(args.n), "--epochs", str(args.epochs), "--batch", str(args.batch)]
    if ranks > 1:
        mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep
                               + os.environ.get("PATH", ""))
        command = [mpiexec, "--allow-run-as-root", "--oversubscribe", "-n", str(ranks), *command]
    subprocess.run(command, check=True)
    with open(path) as f:
        return json.load(f)


def predict(one, two, bandwidths=(10e9 / 8, 100e9 / 8), latency=20e-6, nodes=(2, 4, 8, 16)):
    """The cost model of the docstring, with the measured numbers plugged in."""
    steps = one["steps_per_epoch"]
    t1 = statistics.median(one["epoch_seconds"][1:] or one["epoch_seconds"]) / steps
    t2 = statistics.median(two["epoch_seconds"][1:] or two["epoch_seconds"]) / steps
    compute_half = t2 - two["allreduce_seconds"]
    size = (one["parameters"] + 16) * 4
    table = []
    for bw in bandwidths:
        for n in nodes:
            t_ar = 2 * (n - 1) / n * size / bw + 2 * (n - 1) * latency
            t_n = compute_half * 2 / n + t_ar
            table.append({"gbit_per_s": bw * 8 / 1e9, "nodes": n, "step_ms": 1e3 * t_n,
                          "allreduce_ms": 1e3 * t_ar, "speedup": t1 / t_n})
    return {"step_ms_1": 1e3 * t1, "step_ms_2": 1e3 * t2, "compute_ms_half_batch": 1e3 * compute_half,
            "compute_scaling_half_batch": compute_half / t1, "buffer_bytes": size,
            "latency_s": latency, "table": table}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--n", type=int, default=40_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch", type=int, default=128, help="the global batch")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--allreduce-repeats", type=int, default=50)
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "distributed.json"))
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    ranks = [int(r) for r in args.ranks.split(",")]
    runs = {r: [] for r in ranks}
    scratch = os.path.join(ROOT, "runs", "bench-distributed.json")
    os.makedirs(os.path.dirname(scratch), exist_ok=True)
    for _ in range(args.rounds):  # taking turns, so a neighbour's burst hits both
        for r in ranks:
            runs[r].append(run_one(r, args, scratch))
    summary = {}
    for r, results in runs.items():
        per_epoch = [statistics.median(e) for e in zip(*(x["epoch_seconds"] for x in results))]
        summary[r] = dict(results[-1], epoch_seconds=per_epoch,
                          allreduce_seconds=statistics.median(x["allreduce_seconds"]
                                                              for x in results))
    print(f"\nVAE {SIZES} on {args.n} block images, global batch {args.batch}, "
          f"{args.epochs} epochs, medians of {args.rounds} rounds")
    print(f"{'ranks':>5} {'per-rank batch':>14} {'s/epoch (each epoch)':>36} {'bytes/step':>11}"
          f" {'allreduce ms':>12} {'final loss':>10}")
    for r, s in summary.items():
        epochs = " ".join(f"{e:6.2f}" for e in s["epoch_seconds"])
        print(f"{r:>5} {s['per_rank_batch']:>14} {epochs:>36} {s['bytes_sent_per_step']:>11.0f}"
              f" {1e3 * s['allreduce_seconds']:>12.3f} {s['final_total']:>10.4f}")
    report = {"argv": sys.argv, "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "runs": {str(r): v for r, v in runs.items()},
              "summary": {str(r): v for r, v in summary.items()}}
    if 1 in summary and 2 in summary:
        model = predict(summary[1], summary[2])
        report["model"] = model
        print(f"\nstep: {model['step_ms_1']:.2f} ms on 1 process, {model['step_ms_2']:.2f} ms on "
              f"2 ranks ({model['compute_ms_half_batch']:.2f} ms of it compute on half the batch,"
              f" {model['compute_scaling_half_batch']:.2f}x the whole batch's step)")
        print(f"predicted on N nodes (ring Allreduce of {model['buffer_bytes'] / 1e6:.2f} MB, "
              f"latency {model['latency_s'] * 1e6:.0f} us):")
        print(f"{'Gb/s':>6} {'nodes':>5} {'step ms':>8} {'allreduce ms':>12} {'speed-up':>8}")
        for row in model["table"]:
            print(f"{row['gbit_per_s']:>6.0f} {row['nodes']:>5} {row['step_ms']:>8.2f} "
                  f"{row['allreduce_ms']:>12.2f} {row['speedup']:>8.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
