"""Training-step benchmark of the convolutional autoencoder: minigrad (Numba and
NumPy backends, or CuPy on a GPU) against PyTorch eager, the same architecture,
weights and batches.

The model is autoencoders' default convolutional one,
``VanillaAutoencoder([784, 128], channels=(32, 64), image_shape=(1, 28, 28))``:

    encoder  Unflatten (1, 28, 28) -> Conv2d(1->32, k3, s2, p1, ReLU)
             -> Conv2d(32->64, k3, s2, p1, ReLU) -> Flatten -> Dense(3136->128)
    decoder  Dense(128->3136, ReLU) -> Unflatten (64, 7, 7)
             -> ConvTranspose2d(64->32, k3, s2, p1, output_padding 1, ReLU)
             -> ConvTranspose2d(32->1, k3, s2, p1, output_padding 1) -> Flatten

loss: binary cross-entropy with logits, summed over the pixels and averaged over
the batch; Adam lr 1e-3; float32.  PyTorch's model is built from torch.nn with
minigrad's initial weights copied in.  One step is what ``fit`` does for a batch:
forward, loss, backward, Adam update (minigrad's inside ``flush_denormals``, the
first step of each batch size recorded and the ones after replayed, as ``fit``
runs it: :mod:`minigrad.replay`).  Batches are real Fashion-MNIST images
(../shared/datasets), or block images (``autoencoders.datasets.blocks``) when those
files are absent.

The frameworks run in one process and take turns in rounds: in each round every
framework runs a few warm-up steps then times a few single steps, for every batch
size; reported are the medians over all rounds, so that a neighbour's load on a
shared machine falls on every framework alike.  PyTorch keeps its default thread
count (the number of cores: both of a 2-core machine), as a user gets it.  A
check in the same run: 20 steps from identical weights and batches give losses
equal to PyTorch's within 1e-4 relative.  "minigrad-numba" trains as ``fit`` trains
a convolutional model: at batches of ``minigrad.threads.MIN_BATCH`` (96) or more
inside ``minigrad.threads.split_work()`` (the BLAS on one thread, the
convolutions' blocks of images and the dense layers' rows shared by minigrad's
own threads);
"minigrad-numba-blas" is the same model with the BLAS on every core and the blocks
on one thread (what ``fit`` did before), so that the same run shows what the split
is worth on this machine.

On a GPU (``--backend cupy``): "minigrad-cupy" (the CUDA kernels through CuPy)
against "torch-cuda" (PyTorch eager on the same GPU); each step ends by reading
the loss back to the host, which waits for the GPU, in both.  Issue 12's GPU target
is minigrad-cupy / torch-cuda <= 1.0 at batch 128.

    python benchmarks/conv_step.py                      # numba (both ways), numpy, torch
    python benchmarks/conv_step.py --batch 128 --rounds 40 --frameworks minigrad-numba,torch
    python benchmarks/conv_step.py --backend cupy       # minigrad-cupy, torch-cuda
"""
from __future__ import annotations

import argparse
import collections
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_step import batches, peak_rss_mb, save_results, summarize  # noqa: E402
from minigrad.memory import reuse_memory, supported as memory_supported  # noqa: E402

SIZES = [784, 128]
CHANNELS = (32, 64)
IMAGE_SHAPE = (1, 28, 28)
LR = 1e-3


def load_data(n=60_000):
    """``(images (n, 784) float32, name)``: Fashion-MNIST, else block images."""
    from autoencoders import datasets
    shared = os.path.join(os.path.dirname(ROOT), "shared", "datasets")
    try:
        images, _ = datasets.load_fashion_mnist(shared, split="train", flatten=True)
        return images[:n], "fashion-mnist"
    except (FileNotFoundError, OSError):
        images, _, _ = datasets.blocks(n, seed=0)
        return images.reshape(n, -1), "blocks"


def build_model(dtype="float32"):
    """The autoencoder on the active backend (seed 0: the same weights every time)."""
    from autoencoders import VanillaAutoencoder
    return VanillaAutoencoder(SIZES, channels=CHANNELS, image_shape=IMAGE_SHAPE, seed=0,
                              dtype=dtype)


def initial_weights():
    """``{name: array}`` of the model's initial weights (minigrad's layouts)."""
    import minigrad as mg
    with mg.use_backend("numpy"):
        return build_model().state_dict()


# ----------------------------------------------------------------------------
# the frameworks: each returns step(x) -> loss as a float
# ----------------------------------------------------------------------------

def make_minigrad(backend, weights):
    import minigrad as mg
    from minigrad import optim
    with mg.use_backend(backend):  # (the steps run in use_backend too: in_context)
        model = build_model(str(next(iter(weights.values())).dtype))
        model.load_state_dict(weights)
        opt = optim.Adam(list(model.parameters()), lr=LR)
    # as autoencoders' fit does: the first step recorded, the ones after replayed (a
    # checkout from before minigrad.replay.Steps steps eagerly)
    Steps = getattr(getattr(mg, "replay", None), "Steps", None)
    steps = Steps(lambda x: model._loss(x, None)) if Steps is not None else None

    def step(x):
        opt.zero_grad()
        x = model._tensor(x)
        total, _ = steps(x) if steps is not None else model._loss(x, None)
        loss = float(total.item())
        if steps is not None:
            steps.backward()
        else:
            total.backward()
        opt.step()
        return loss

    step.model = model
    return step


def torch_model(weights):
    """PyTorch's twin of :func:`build_model`, holding ``weights``; its parameter names
    are minigrad's (the ReLUs "1a", "2a", "0a" are those that minigrad's Conv2d,
    ConvTranspose2d and Dense layers hold)."""
    import torch
    from torch import nn
    encoder = nn.Sequential(collections.OrderedDict([
        ("0", nn.Unflatten(1, IMAGE_SHAPE)), ("1", nn.Conv2d(1, 32, 3, 2, 1)), ("1a", nn.ReLU()),
        ("2", nn.Conv2d(32, 64, 3, 2, 1)), ("2a", nn.ReLU()), ("3", nn.Flatten()),
        ("4", nn.Linear(3136, 128))]))
    decoder = nn.Sequential(collections.OrderedDict([
        ("0", nn.Linear(128, 3136)), ("0a", nn.ReLU()), ("1", nn.Unflatten(1, (64, 7, 7))),
        ("2", nn.ConvTranspose2d(64, 32, 3, 2, 1, output_padding=1)), ("2a", nn.ReLU()),
        ("3", nn.ConvTranspose2d(32, 1, 3, 2, 1, output_padding=1)), ("4", nn.Flatten())]))
    model = nn.Sequential(collections.OrderedDict([("encoder", encoder), ("decoder", decoder)]))
    state = {}
    for name, p in model.named_parameters():
        w = weights[name]
        if isinstance(dict(model.named_modules())[name.rsplit(".", 1)[0]], nn.Linear) \
                and name.endswith("weight"):
            w = w.T  # minigrad's Dense weight is (in, out), torch's Linear (out, in)
        state[name] = torch.from_numpy(np.ascontiguousarray(w))
    model = model.to(state[name].dtype)
    model.load_state_dict(state)
    return model


def make_torch(weights, device="cpu"):
    import torch
    model = torch_model(weights).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR)

    def step(x):
        x = torch.from_numpy(x).to(device)
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, x, reduction="sum") / x.shape[0]
        value = float(loss.item())
        loss.backward()
        opt.step()
        return value

    return step


#: the backend each minigrad framework computes on
BACKENDS = {"minigrad-numba": "numba", "minigrad-numba-blas": "numba",
            "minigrad-numpy": "numpy", "minigrad-cupy": "cupy"}
#: the PyTorch framework that each --backend's minigrad frameworks are compared with
REFERENCE = {"cpu": "torch", "cupy": "torch-cuda"}


def frameworks(names, weights):
    makers = {name: (lambda backend=backend: make_minigrad(backend, weights))
              for name, backend in BACKENDS.items()}
    makers.update({"torch": lambda: make_torch(weights),
                   "torch-cuda": lambda: make_torch(weights, "cuda")})
    unknown = [n for n in names if n not in makers]
    if unknown:
        raise SystemExit(f"--frameworks: unknown {unknown}; expected some of {sorted(makers)}")
    return {n: makers[n]() for n in names}


def in_context(name, fn, *args, batch=None):
    """``fn(*args)`` as the framework runs its steps at ``batch``: minigrad's inside
    ``flush_denormals`` and, for "minigrad-numba" at batches of
    ``minigrad.threads.MIN_BATCH`` or more, ``split_work`` (as ``fit`` trains a
    convolutional model); "minigrad-numba-blas" never splits."""
    if not name.startswith("minigrad"):
        return fn(*args)
    import contextlib
    import minigrad
    threads = getattr(minigrad, "threads", None)  # (a checkout from before has none)
    split = threads is not None and name == "minigrad-numba" and \
        (batch is None or batch >= threads.MIN_BATCH)
    # host arrays compute on the active backend: each framework's own, for its turn
    backend = BACKENDS[name]
    own_threads = threads.split_work() if split else contextlib.nullcontext()
    with minigrad.use_backend(backend), minigrad.flush_denormals(), own_threads:
        return fn(*args)


# ----------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------

def loss_check(names, weights, X, steps, batch, dtype="float32"):
    """Each framework's losses over ``steps`` steps from ``weights``, same batches, all
    in ``dtype``."""
    weights = {k: v.astype(dtype) for k, v in weights.items()}
    losses = {}
    for name in names:
        step = frameworks([name], weights)[name]
        xs = [x.astype(dtype) for x in batches(X, batch, steps, seed=3)]
        losses[name] = in_context(name, lambda: [step(x) for x in xs], batch=batch)
    return losses


def _turn(step, stream, warmup, timed):
    for _ in range(warmup):
        step(next(stream))
    times = []
    for _ in range(timed):
        x = next(stream)
        t0 = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - t0)
    return times


def time_steps(steps, X, batch_sizes, rounds, warmup, timed, pause):
    """``{name: {batch: summary}}``: the frameworks' steps in turns, ``rounds`` rounds
    per batch size (``warmup`` untimed then ``timed`` timed steps a turn)."""
    times = {n: {b: [] for b in batch_sizes} for n in steps}
    streams = {n: {b: batches(X, b, 10 ** 9, seed=b) for b in batch_sizes} for n in steps}
    for r in range(rounds):
        for b in batch_sizes:
            for name, step in steps.items():
                times[name][b] += in_context(name, _turn, step, streams[name][b],
                                             warmup + (3 if r == 0 else 0), timed, batch=b)
                time.sleep(pause)  # idle threads (OpenMP, OpenBLAS) stop spinning
    return {n: {str(b): summarize(t) for b, t in per.items()} for n, per in times.items()}


def report(results, args, data_name):
    names = list(results["step"])
    reference = REFERENCE[args.backend]
    where = (f"{platform.machine()}, {os.cpu_count()} cores" if args.backend == "cpu" else
             f"GPU: {results.get('gpu') or 'unknown'}")
    torch_threads = ("" if args.backend != "cpu" else
                     f"; PyTorch eager with its default {results['torch_threads']} threads")
    lines = [f"Training step, conv AE {' -> '.join(map(str, CHANNELS))} channels, latent "
             f"{SIZES[-1]}, BCE (sum over pixels, mean over batch), Adam, float32 "
             f"({where}, data: {data_name}{torch_threads})", "",
             f"median [min-max] ms per step, {args.rounds} rounds x {args.timed} steps:"]
    header = f"{'framework':<24}" + "".join(f"{'batch ' + str(b):>24}" for b in args.batch)
    lines += [header, "-" * len(header)]
    for n in names:
        lines.append(f"{n:<24}" + "".join(
            f"{fmt_step(results['step'][n][str(b)]):>24}" for b in args.batch))
    if reference in names:
        lines += ["", "ratio of medians to PyTorch eager (lower is faster for minigrad):"]
        for n in names:
            if n == reference:
                continue
            ratios = [results["step"][n][str(b)]["median_ms"]
                      / results["step"][reference][str(b)]["median_ms"] for b in args.batch]
            results.setdefault("ratio_to_torch", {})[n] = dict(zip(map(str, args.batch), ratios))
            lines.append(f"  {n + ' / ' + reference:<32}" + "".join(f"{x:>10.2f}" for x in ratios))
        target = {"cpu": ("minigrad-numba", 1.5), "cupy": ("minigrad-cupy", 1.0)}[args.backend]
        if target[0] in names and "128" in results["step"][reference]:
            ratio = results["ratio_to_torch"][target[0]]["128"]
            lines.append(f"  target (issue 12): {target[0]} / {reference} at batch 128 <= "
                         f"{target[1]}: {ratio:.2f} {'met' if ratio <= target[1] else 'MISSED'}")
    for dtype, check in results.get("check_losses", {}).items():
        lines += ["", f"loss check, {args.check_steps} steps from identical weights and "
                      f"batches of {args.check_batch}, {dtype}:"]
        for n, values in check.items():
            lines.append(f"  {n:<24} first {values[0]:.6f}  last {values[-1]:.6f}")
        if reference not in check:
            continue
        ref = np.array(check[reference])
        for n, values in check.items():
            if n == reference:
                continue
            rel = np.abs(np.array(values) - ref) / np.abs(ref)
            diff = {"last": float(rel[-1]), "max": float(rel.max())}
            results.setdefault("check_rel_diff", {}).setdefault(dtype, {})[n] = diff
            lines.append(f"  {n:<24} relative difference to {reference}: last step "
                         f"{diff['last']:.2e} "
                         f"{'OK' if diff['last'] <= 1e-4 else 'MISMATCH'} (<= 1e-4), largest "
                         f"over the steps {diff['max']:.2e}")
    both = results.get("check_losses", {})
    if "float64" in both and reference in both["float64"]:
        exact = both["float64"][reference][-1]
        lines += ["", "float32 rounding: the last float32 loss against float64's "
                      f"({exact:.6f}, all frameworks agree there):"]
        for n, values in both["float32"].items():
            lines.append(f"  {n:<24} {abs(values[-1] - exact) / abs(exact):.2e}")
    lines += ["", f"peak RSS of the process {peak_rss_mb():.0f} MB"]
    return "\n".join(lines)


def default_frameworks(backend):
    """What ``--backend`` runs without ``--frameworks``: minigrad's frameworks there, and
    PyTorch eager on the same device where it can run."""
    if backend == "cpu":
        return ["minigrad-numba", "minigrad-numba-blas", "minigrad-numpy"] + (
            ["torch"] if torch_available() else [])
    return ["minigrad-cupy"] + (["torch-cuda"] if torch_available("cuda") else [])


def torch_available(device="cpu"):
    try:
        import torch
    except ImportError:
        return False
    return device == "cpu" or torch.cuda.is_available()


def gpu_name():
    """The GPU CuPy computes on, in words (None without one)."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"].decode()
    except Exception:  # no CuPy, no device, or a stand-in without the property
        return None


def torch_threads():
    """PyTorch's intra-op thread count as the benchmark runs it (its default), or None."""
    if not torch_available():
        return None
    import torch
    return torch.get_num_threads()


def fmt_step(s):
    return f"{s['median_ms']:.2f} [{s['min_ms']:.2f}-{s['max_ms']:.2f}]"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["cpu", "cupy"], default="cpu",
                        help="cpu: minigrad's CPU backends and PyTorch on this CPU; cupy: "
                             "minigrad-cupy and torch-cuda on the GPU (default: %(default)s)")
    parser.add_argument("--frameworks", default=None,
                        help="comma-separated subset of minigrad-numba,minigrad-numba-blas,"
                             "minigrad-numpy,torch (default: all, torch where installed); "
                             "with --backend cupy: of minigrad-cupy,torch-cuda")
    parser.add_argument("--batch", type=lambda s: [int(v) for v in s.split(",")],
                        default=[128, 32, 512])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per turn")
    parser.add_argument("--timed", type=int, default=5, help="timed steps per turn")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between turns")
    parser.add_argument("--check-steps", type=int, default=20,
                        help="steps of the loss check (0: none)")
    parser.add_argument("--check-batch", type=int, default=128)
    parser.add_argument("--n", type=int, default=60_000, help="images to draw batches from")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "conv_step.json"))
    args = parser.parse_args(argv)
    names = args.frameworks.split(",") if args.frameworks else default_frameworks(args.backend)
    X, data_name = load_data(args.n)
    weights = initial_weights()
    results = {"data": data_name, "backend": args.backend,
               "torch_threads": torch_threads() if "torch" in names else None,
               "gpu": gpu_name() if args.backend == "cupy" else None}
    if args.check_steps:  # float64 too: equal to rounding there, the models are the same
        results["check_losses"] = {dtype: loss_check(names, weights, X, args.check_steps,
                                                     args.check_batch, dtype)
                                   for dtype in ("float32", "float64")}
    steps = frameworks(names, weights)
    # fit trains inside reuse_memory (minigrad.memory: freed arrays are kept for the
    # next step instead of faulted in afresh).  The frameworks share this process,
    # and so the policy: PyTorch gets it too (it spared PyTorch eager 5,600 page
    # faults a step here), which makes the ratio to it conservative.
    with reuse_memory():
        results["step"] = time_steps(steps, X, args.batch, args.rounds, args.warmup,
                                     args.timed, args.pause)
    results["memory_policy"] = "reuse_memory, all frameworks" if memory_supported() else None
    text = report(results, args, data_name)
    print(text)
    save_results(args.out, results, text)
    return results


if __name__ == "__main__":
    main()
