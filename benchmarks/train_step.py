"""Training-step benchmark: minigrad (NumPy, Numba or CuPy backend) against every
peer a user would pick -- PyTorch eager (default Adam, fused Adam, flush-to-zero),
torch.compile with fused Adam, JAX jit -- and the matrix-product floor.

The model: a dense autoencoder 784-512-128-512-784, ReLU hidden layers, sigmoid
output with binary cross-entropy (on logits), Adam lr 1e-3, float32.  Every
framework starts from the same weights and sees the same batches, in two states:

* ``fresh``: He-normal weights, Fashion-MNIST batches (from ../shared/datasets
  when present, else synthetic block images);
* ``saturated``: the weights after a few epochs of training on block images, and
  block-image batches -- the state of the main job, whose output logits sit far
  below zero on the black background, where the BCE gradient would be a float32
  subnormal (random or fresh data never gets there).

Each framework runs in its own subprocess, so thread settings do not leak between
them and the peak memory (max RSS) is its own; the processes take turns, one
computing at a time, in rounds (see ``run_interleaved``), so that a neighbour's
load on a shared machine falls on every framework alike.  Reported per batch size: median [min-max] ms per step over many steps
after warm-up; the ratios minigrad / PyTorch and minigrad / floor, where the
floor is the time of the step's matrix products alone (NumPy on the CPU, CuPy on
the GPU); then one epoch of 60,000 samples at batch 128 in samples/s, run for
several epochs so that a slowdown from subnormal numbers would show as a last
epoch slower than the first (and the Adam moments left subnormal at the end are
counted); the first step's time (Numba kernels from the disk cache) and, in a
fresh process with an empty cache, the full compile.  A check in the same run:
20 steps from identical weights and batches give losses equal to PyTorch's
within 1e-4 relative.  Last, the targets (issue 10's) with the measured ratios.
minigrad's steps run inside ``minigrad.flush_denormals()`` and
``minigrad.reuse_memory()``, as ``fit`` does, and so does the floor (the same
NumPy products).  The report names the kernels NumPy's BLAS runs: a machine can
force older ones with ``OPENBLAS_CORETYPE``, which slows every NumPy product
(minigrad's and the floor's) but not PyTorch's or JAX's.

Other work on the machine (a second Python process) distorts every number here:
run it on an otherwise idle machine and compare medians of the same run.

    python benchmarks/train_step.py                    # CPU: numpy, numba, torch, jax
    python benchmarks/train_step.py --state saturated --frameworks minigrad-numba,jax,floor
    python benchmarks/train_step.py --backend cupy     # GPU: cupy vs torch CUDA
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [784, 512, 128, 512, 784]
LR = 1e-3


# ----------------------------------------------------------------------------
# shared set-up: weights, data
# ----------------------------------------------------------------------------

#: "fresh": He-normal weights and real images; "saturated": weights trained for a few
#: epochs on the block images, and block-image batches (set by --state).
STATE = "fresh"
SATURATED_EPOCHS = 3


def initial_weights(seed=0):
    """The weights every framework starts from: [(W (in, out), b), ...], float32."""
    if STATE == "saturated":
        return saturated_weights()
    return fresh_weights(seed)


def fresh_weights(seed=0):
    """He-normal weights (in, out) and zero biases for each layer, float32."""
    rng = np.random.default_rng(seed)
    layers = []
    for n_in, n_out in zip(SIZES[:-1], SIZES[1:]):
        w = (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        layers.append((w, np.zeros(n_out, np.float32)))
    return layers


def saturated_weights():
    """The model after SATURATED_EPOCHS epochs of minigrad training on 60,000 block
    images: its output logits have fallen far below zero on the black background,
    where sigmoid(z) - x is a float32 subnormal unless flushed (the state the main
    job reaches, which random data never does).  Cached in benchmarks/results."""
    path = os.path.join(ROOT, "benchmarks", "results",
                        f"saturated_{'-'.join(map(str, SIZES))}_{SATURATED_EPOCHS}.npz")
    if not os.path.exists(path):
        sys.path.insert(0, ROOT)
        import minigrad as mg
        from autoencoders import datasets
        from autoencoders.files import atomic_write
        step, _, _ = make_minigrad("numba", fresh_weights())
        images, _, _ = datasets.blocks(60_000, seed=0)
        X = images.reshape(len(images), -1)
        order_rng = np.random.default_rng(7)
        with mg.flush_denormals():
            for _ in range(SATURATED_EPOCHS):
                order = order_rng.permutation(len(X))
                for i in range(0, len(X), 128):
                    step(X[order[i:i + 128]])
        arrays = {f"{k}{i}": a for i, layer in enumerate(step.weights())
                  for k, a in zip(("weight", "bias"), layer)}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path) as f:
            np.savez(f, **arrays)
    with np.load(path) as f:
        return [(f[f"weight{i}"], f[f"bias{i}"]) for i in range(len(SIZES) - 1)]


def load_data(n=60_000):
    sys.path.insert(0, ROOT)
    from autoencoders import datasets
    if STATE == "saturated":
        images, _, _ = datasets.blocks(n, seed=1)
        return images.reshape(n, -1), "blocks (saturated state)"
    shared = os.path.join(os.path.dirname(ROOT), "shared", "datasets")
    try:
        images, _ = datasets.load_fashion_mnist(shared, flatten=True)
        return images[:n], "fashion-mnist"
    except (FileNotFoundError, OSError):
        images, _, _ = datasets.blocks(n, seed=0)
        return images.reshape(n, -1), "blocks"


def batches(X, batch, steps, seed=1):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        yield X[rng.integers(0, len(X), batch)]


def summarize(times_s):
    ms = sorted(t * 1e3 for t in times_s)
    return {"median_ms": statistics.median(ms), "min_ms": ms[0], "max_ms": ms[-1],
            "steps": len(ms)}


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------
# the frameworks: each returns step(x) -> loss (a float), plus a sync function
# ----------------------------------------------------------------------------

def make_minigrad(backend, weights=None):
    """minigrad's step from ``weights`` (default: :func:`initial_weights`): each batch
    shape's first step recorded, the ones after it replayed (:mod:`minigrad.replay`),
    as ``fit`` trains."""
    sys.path.insert(0, ROOT)
    import minigrad as mg
    from minigrad import losses, nn, optim
    mg.set_backend(backend)
    xp = mg.get_backend().xp
    layers = []
    for i, (w, b) in enumerate(initial_weights() if weights is None else weights):
        dense = nn.Dense(w.shape[0], w.shape[1],
                         activation="relu" if i < len(SIZES) - 2 else None)
        dense.weight.data[...] = xp.asarray(w)
        dense.bias.data[...] = xp.asarray(b)
        layers.append(dense)
    model = nn.Sequential(*layers)
    opt = optim.Adam(model.parameters(), lr=LR)

    def loss_of(x):
        return losses.binary_cross_entropy_with_logits(model(x), x)

    # each batch shape's first step recorded, the ones after replayed, as fit does; a
    # baseline checkout from before minigrad.replay.Steps steps eagerly
    Steps = getattr(getattr(mg, "replay", None), "Steps", None)
    steps = Steps(loss_of) if Steps is not None else None

    def step(x):
        x = mg.Tensor(xp.asarray(x))
        opt.zero_grad()
        if steps is not None:
            loss = steps(x)
            steps.backward()
        else:
            loss = loss_of(x)
            loss.backward()
        opt.step()
        return loss

    def sync():
        if backend == "cupy":
            xp.cuda.Device().synchronize()

    step.moments = lambda: [np.asarray(a.get() if hasattr(a, "get") else a)
                            for a in opt.m + opt.v]
    step.weights = lambda: [(d.weight.numpy(), d.bias.numpy()) for d in layers]
    return step, sync, lambda loss: float(loss.item())


def make_torch(device="cpu", flush_denormal=False, fused_adam=False, compile=False,
               dtype="float32"):
    import torch
    torch.set_flush_denormal(flush_denormal)
    mods = []
    for i, (w, b) in enumerate(initial_weights()):
        linear = torch.nn.Linear(w.shape[0], w.shape[1], dtype=getattr(torch, dtype))
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.astype(dtype)))
            linear.bias.copy_(torch.from_numpy(b.astype(dtype)))
        mods.append(linear)
        if i < len(SIZES) - 2:
            mods.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*mods).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=LR, fused=fused_adam or None)
    if compile:
        model = torch.compile(model)

    def step(x):
        x = torch.from_numpy(x.astype(dtype, copy=False)).to(device)
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), x)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if device != "cpu":
            torch.cuda.synchronize()

    step.moments = lambda: [opt.state[p][k].detach().cpu().numpy() for p in model.parameters()
                            for k in ("exp_avg", "exp_avg_sq") if p in opt.state]
    return step, sync, lambda loss: float(loss.item())


def jax_adam(loss_fn):
    """One jitted step of ``loss_fn(params, *batch)`` with bias-corrected Adam (lr LR,
    betas 0.9 / 0.999, eps 1e-8): ``update(params, m, v, t, *batch) -> (params, m, v,
    loss)``, the whole step compiled by XLA as JAX users write it."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def update(params, m, v, t, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, *batch)
        m = jax.tree_util.tree_map(lambda a, g: 0.9 * a + 0.1 * g, m, grads)
        v = jax.tree_util.tree_map(lambda a, g: 0.999 * a + 0.001 * g * g, v, grads)
        c1, c2 = 1 - 0.9 ** t, 1 - 0.999 ** t
        params = jax.tree_util.tree_map(
            lambda p, a, b: p - LR * (a / c1) / (jnp.sqrt(b / c2) + 1e-8), params, m, v)
        return params, m, v, loss
    return update


def count_subnormal(arrays):
    """Entries of ``arrays`` in the float32 subnormal range (0 < |a| < 1.18e-38)."""
    tiny = np.finfo(np.float32).tiny
    return int(sum(np.count_nonzero((a != 0) & (np.abs(a) < tiny)) for a in arrays))


def make_jax():
    import jax
    import jax.numpy as jnp
    params = [(jnp.asarray(w), jnp.asarray(b)) for w, b in initial_weights()]
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    state = {"params": params, "m": m, "v": v, "t": 0}

    def loss_fn(params, x):
        h = x
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i < len(params) - 1:
                h = jax.nn.relu(h)
        return jnp.mean(jnp.maximum(h, 0) - h * x + jnp.log1p(jnp.exp(-jnp.abs(h))))

    update = jax_adam(loss_fn)

    def step(x):
        state["t"] += 1
        state["params"], state["m"], state["v"], loss = update(
            state["params"], state["m"], state["v"], state["t"], x)
        return loss

    def sync():
        jax.block_until_ready(state["params"])

    return step, sync, lambda loss: float(loss)


def make_gemm_floor(backend):
    """Only the step's matrix products: 4 forward, 4 weight-gradient and 3 input-gradient
    products (the input layer needs no input gradient)."""
    if backend == "cupy":
        import cupy as xp
    else:
        xp = np
    weights = [xp.asarray(w) for w, _ in initial_weights()]

    def step(x):
        h = [xp.asarray(x)]
        for w in weights:
            h.append(h[-1] @ w)
        g = h[-1]
        for i in reversed(range(len(weights))):
            h[i].T @ g
            if i:
                g = g @ weights[i].T
        return 0.0

    def sync():
        if backend == "cupy":
            xp.cuda.Device().synchronize()

    return step, sync, float


FRAMEWORKS = {
    "minigrad-numpy": lambda: make_minigrad("numpy"),
    "minigrad-numba": lambda: make_minigrad("numba"),
    "minigrad-cupy": lambda: make_minigrad("cupy"),
    "torch": lambda: make_torch("cpu"),
    "torch-ftz": lambda: make_torch("cpu", flush_denormal=True),
    "torch-fused": lambda: make_torch("cpu", fused_adam=True),
    "torch-compile": lambda: make_torch("cpu", fused_adam=True, compile=True),
    "torch-cuda": lambda: make_torch("cuda"),
    "jax": make_jax,
    "floor": lambda: make_gemm_floor("numpy"),
    "floor-cupy": lambda: make_gemm_floor("cupy"),
}


# ----------------------------------------------------------------------------
# worker: one framework, in its own process
# ----------------------------------------------------------------------------

def worker(name, batch_sizes, min_seconds, epochs, check_steps, rounds):
    if name.startswith(("minigrad", "floor")):
        # a training loop of one's own runs as fit's does: inside flush_denormals
        # (FTZ/DAZ on this thread and the BLAS threads, minigrad.denormals) and
        # reuse_memory (freed arrays kept for the next step, minigrad.memory; a
        # --baseline checkout may predate it).  The floor -- the same NumPy products --
        # runs under the same policy: with glibc's defaults it paid page faults for
        # its outputs that minigrad does not (12.4 against 10.5 ms at batch 1024,
        # depending on what the process had freed before), a floor minigrad could
        # go below.  Each framework has its own process: the peers run with the C
        # allocator's defaults, as their users get them.
        sys.path.insert(0, ROOT)
        import minigrad
        reuse = getattr(minigrad, "reuse_memory", contextlib.nullcontext)
        with minigrad.flush_denormals(), reuse() as acting:
            return _worker(name, batch_sizes, min_seconds, epochs, check_steps, rounds,
                           reusing_memory=bool(acting))
    return _worker(name, batch_sizes, min_seconds, epochs, check_steps, rounds)


def _worker(name, batch_sizes, min_seconds, epochs, check_steps, rounds, reusing_memory=False):
    """One framework, in the parent's turns (see :func:`run_interleaved`): its set-up
    and first step, then ``rounds`` turns per batch size, then one per epoch; after
    the last turn, the untimed loss check."""
    wait_for_go()
    X, data_name = load_data()
    started = time.perf_counter()
    step, sync, to_float = FRAMEWORKS[name]()
    result = {"framework": name, "data": data_name, "setup_s": time.perf_counter() - started,
              "reuse_memory": reusing_memory}

    # the first step includes compilation (Numba kernels, JAX tracing)
    x0 = next(batches(X, batch_sizes[0], 1, seed=99))
    started = time.perf_counter()
    to_float(step(x0))
    sync()
    result["first_step_s"] = time.perf_counter() - started
    end_turn(time.perf_counter() - started)

    result["step"] = {}
    for batch in batch_sizes:
        stream = batches(X, batch, 10 ** 9, seed=batch)
        times = []
        for r in range(rounds):
            wait_for_go()
            started = time.perf_counter()
            for _ in range(10 if r == 0 else 3):  # warm-up (after the other frameworks)
                step(next(stream))
            sync()
            spent, timed = 0.0, 0
            while spent < min_seconds / rounds or timed < 30 / rounds:
                x = next(stream)
                t0 = time.perf_counter()
                step(x)
                sync()
                dt = time.perf_counter() - t0
                times.append(dt)
                spent += dt
                timed += 1
                if timed >= 2000 / rounds:
                    break
            end_turn(time.perf_counter() - started)
        result["step"][str(batch)] = summarize(times)

    if epochs and not name.startswith("floor"):
        result["epochs_s"] = []
        order_rng = np.random.default_rng(5)
        for _ in range(epochs):
            wait_for_go()
            order = order_rng.permutation(len(X))
            t0 = time.perf_counter()
            for i in range(0, len(X), 128):
                step(X[order[i:i + 128]])
            sync()
            result["epochs_s"].append(time.perf_counter() - t0)
            end_turn(result["epochs_s"][-1])
        result["samples_per_s"] = [len(X) / s for s in result["epochs_s"]]
        if hasattr(step, "moments"):
            # Adam moments that have decayed into the subnormal range (0 < |m| < tiny):
            # each costs a slow microcode path on every later step
            moments = step.moments()
            result["subnormal_moments"] = count_subnormal(moments)
            result["moments"] = int(sum(m.size for m in moments))

    if check_steps and not name.startswith("floor"):
        # fresh model, identical weights and batches for every framework
        step, sync, to_float = FRAMEWORKS[name]()
        result["check_losses"] = [to_float(step(x))
                                  for x in batches(X, 64, check_steps, seed=123)]
        if name == "torch":
            # the same steps in float64: the computation itself, to rounding, which
            # every float32 framework is measured against (Adam divides by the root
            # of tiny second moments, so float32 rounding grows over the steps)
            step, sync, to_float = make_torch("cpu", dtype="float64")
            result["check_losses_float64"] = [to_float(step(x))
                                              for x in batches(X, 64, check_steps, seed=123)]
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------
# turns: the frameworks' processes compute one at a time, in rounds
# ----------------------------------------------------------------------------
# These machines are shared; a neighbour's load comes and goes over seconds to
# minutes and can slow everything by half.  So the frameworks take turns: every
# worker process starts at once, then the parent lets one compute at a time, in
# rounds (round k of batch size b for every framework, then round k + 1), with a
# pause between turns so the last process's BLAS threads stop spinning.  Each
# framework's numbers are then spread over the same stretch of time as its peers'.

_said_ready = False


def wait_for_go():
    """(In a worker) block until the parent says "go"; False on "stop" or a closed pipe.
    The first call first tells the parent the worker is set up (``READY``)."""
    global _said_ready
    if not _said_ready:
        print("READY", flush=True)
        _said_ready = True
    return sys.stdin.readline().strip() == "go"


def end_turn(seconds):
    """(In a worker) tell the parent this turn is over, and how long its work took."""
    print(f"CHUNK {seconds!r}", flush=True)


class Worker:
    """(In the parent) one framework's subprocess, driven a turn at a time."""

    def __init__(self, name, cmd, says_ready=True):
        self.name = name
        self.err = tempfile.TemporaryFile(mode="w+")  # a pipe could fill up and block
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.err, text=True, bufsize=1)
        self.failed = None
        self.says_ready = says_ready

    def wait_until_set_up(self):
        """Block until the worker has started (imports, data, model) and waits for its
        first turn: a turn must not share the machine with the others' start (the
        first framework's first epoch measured 3.5 s slow for it).  A worker says
        READY; one of an older checkout (``--baseline``) may not, and is taken as set
        up once it has used no CPU for a second."""
        if self.says_ready:
            while not self.failed:
                line = self.proc.stdout.readline()
                if not line:
                    return self._fail()
                if line.strip() == "READY":
                    return True
            return None
        stat, last = f"/proc/{self.proc.pid}/stat", None
        if not os.path.exists(stat):  # not Linux: give it time
            time.sleep(30)
            return True
        for _ in range(600):
            try:
                with open(stat) as f:  # utime and stime: fields 14 and 15
                    used = sum(int(v) for v in f.read().rsplit(")", 1)[1].split()[11:13])
            except OSError:
                return None  # it exited: its first turn reports why
            if used == last:
                return True
            last = used
            time.sleep(1.0)
        return True
    def turn(self):
        """Let the worker run its next turn; the seconds it reports, or None if it failed."""
        if self.failed:
            return None
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return self._fail()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                return self._fail()
            if line.startswith("CHUNK "):
                return float(line.split()[1])

    def _stderr(self):
        self.err.seek(0)
        return self.err.read().strip()

    def _fail(self):
        err = self._stderr().splitlines()[-3:]
        self.failed = " | ".join(err) or "no output"
        print(f"  {self.name}: skipped ({self.failed})", file=sys.stderr)
        return None

    def result(self):
        """Close the worker's input (it finishes) and return its RESULT, or None."""
        if self.failed:
            return None
        self.proc.stdin.close()
        out = self.proc.stdout.read()  # the same buffered reader as the turns' lines
        self.proc.wait(timeout=1800)
        for line in out.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        print(f"  {self.name}: no result ({self._stderr()[-300:]})", file=sys.stderr)
        return None


def run_interleaved(names, args):
    """Every framework's worker at once, computing in turns: the set-up turn, then
    ``args.rounds`` turns per batch size, then one per epoch (the floor has none)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--batch", ",".join(map(str, args.batch)),
           "--seconds", str(args.seconds), "--epochs", str(args.epochs),
           "--check-steps", str(args.check_steps), "--state", args.state_now,
           "--rounds", str(args.rounds)]
    print(f"  {args.state_now} state: {', '.join(names)}, taking turns ...", file=sys.stderr,
          flush=True)
    workers = [Worker(n, cmd + ["--worker", n]) for n in names]
    workers += baseline_workers(names, cmd, args)
    for w in workers:  # every process started before the first turn
        w.wait_until_set_up()
    step_turns = 1 + len(args.batch) * args.rounds
    for turn in range(step_turns + args.epochs):
        for w in workers:
            if turn >= step_turns and w.name.startswith("floor"):
                continue
            w.turn()
            time.sleep(args.pause)
    return {w.name: w.result() for w in workers}


def baseline_script(args, script):
    """The benchmark ``script`` (this one's path) in the checkout of ``--baseline DIR``."""
    other = os.path.join(os.path.abspath(args.baseline), "benchmarks", os.path.basename(script))
    if not os.path.isfile(other):
        raise SystemExit(f"--baseline {args.baseline}: no {other}")
    return other


def baseline_workers(names, cmd, args):
    """With ``--baseline DIR``: each minigrad framework once more, run by the same
    benchmark script of the checkout in DIR (e.g. a ``git worktree`` of an earlier
    commit), as "<name>@baseline", taking its turns with the others."""
    if not args.baseline:
        return []
    script = baseline_script(args, cmd[1])
    return [Worker(f"{n}@baseline", [cmd[0], script] + cmd[2:] + ["--worker", n],
                   says_ready=False)
            for n in names if n.startswith("minigrad")]


def cold_first_step():
    """Seconds of the first minigrad-numba step in a fresh process whose Numba disk
    cache is empty: the whole compile of the kernels a training step uses."""
    import tempfile
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); sys.path.insert(0, sys.argv[2])\n"
            "import numpy as np, train_step as ts\n"
            "step, sync, to_float = ts.make_minigrad('numba')\n"
            "x = np.random.default_rng(0).random((64, 784), dtype=np.float32)\n"
            "t0 = time.perf_counter(); to_float(step(x)); print(time.perf_counter() - t0)")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        print("  running minigrad-numba with an empty kernel cache ...", file=sys.stderr)
        proc = subprocess.run([sys.executable, "-c", code, ROOT, os.path.dirname(__file__)],
                              capture_output=True, text=True, env=env)
    try:
        return float(proc.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        print(f"  cold compile: failed ({proc.stderr.strip()[-300:]})", file=sys.stderr)
        return None


def blas_line():
    """Which kernels NumPy's BLAS runs: OpenBLAS picks a set for the CPU when it
    loads, unless ``OPENBLAS_CORETYPE`` names one (a machine may set it: an AVX2
    set on an AVX-512 CPU halves the speed of every NumPy matrix product, while
    PyTorch's and JAX's own products are unaffected)."""
    import ctypes
    sys.path.insert(0, ROOT)
    from minigrad.denormals import blas_libraries  # the OpenBLAS libraries loaded here
    forced = os.environ.get("OPENBLAS_CORETYPE")
    sets = []
    for path in blas_libraries():
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                     "openblas_get_corename"):
            if hasattr(lib, name):
                corename = getattr(lib, name)
                corename.restype = ctypes.c_char_p
                sets.append(corename().decode())
                break
    kernels = ", ".join(dict.fromkeys(sets)) or "unknown (not OpenBLAS?)"
    return (f"NumPy's BLAS kernels: {kernels} "
            + (f"(OPENBLAS_CORETYPE={forced} in the environment)" if forced is not None
               else "(OpenBLAS's own choice for this CPU)"))


def fmt_step(s):
    return f"{s['median_ms']:.2f} [{s['min_ms']:.2f}-{s['max_ms']:.2f}]"


def report(results, args):
    names = [n for n in results if results[n]]
    W = max([16] + [len(n) + 1 for n in names])  # the name column
    lines = [f"Training step, dense AE {'-'.join(map(str, SIZES))}, ReLU, BCE, Adam, float32 "
             f"({platform.machine()}, {os.cpu_count()} cores, data: "
             f"{next(iter(results.values()))['data'] if names else '?'})", blas_line(), "",
             "median [min-max] ms per step:"]
    header = f"{'framework':<{W}}" + "".join(f"{'batch ' + str(b):>26}" for b in args.batch)
    lines += [header, "-" * len(header)]
    for n in names:
        lines.append(f"{n:<{W}}" + "".join(f"{fmt_step(results[n]['step'][str(b)]):>26}"
                                          for b in args.batch))
    mine = [n for n in names if n.startswith("minigrad")]
    refs = [n for n in names if n.startswith("torch") or n == "jax" or n.startswith("floor")]
    refs += [n for n in mine if n == "minigrad-numpy" or n.endswith("@baseline")]
    if mine and refs:
        lines += ["", "ratios of medians (lower is faster for minigrad):"]
        for m in mine:
            for r in refs:
                if r == m or (r.endswith("@baseline") and r != m + "@baseline") or (
                        r == "minigrad-numpy" and m.endswith("@baseline")):
                    continue  # a baseline is compared with its own framework only
                ratios = [results[m]["step"][str(b)]["median_ms"] /
                          results[r]["step"][str(b)]["median_ms"] for b in args.batch]
                lines.append(f"  {m + ' / ' + r:<{2 * W}}"
                             + "".join(f"{x:>10.2f}" for x in ratios))
    epoch_names = [n for n in names if "samples_per_s" in results[n]]
    if epoch_names:
        lines += ["", f"epoch of 60,000 samples at batch 128 ({args.epochs} epochs), "
                      "samples/s per epoch (first ... last):"]
        for n in epoch_names:
            sps = results[n]["samples_per_s"]
            sub = (f"   subnormal Adam moments at the end: {results[n]['subnormal_moments']:,}"
                   f" of {results[n]['moments']:,}" if "subnormal_moments" in results[n] else "")
            lines.append(f"  {n:<{W}}" + "  ".join(f"{v:>8.0f}" for v in sps)
                         + f"   last/first time {results[n]['epochs_s'][-1] / results[n]['epochs_s'][0]:.2f}"
                         + sub)
    lines += ["", "first step (compile / trace included; minigrad: kernels from Numba's disk "
                  "cache) and peak memory:"]
    for n in names:
        lines.append(f"  {n:<{W}} first step {results[n]['first_step_s'] * 1e3:9.1f} ms   "
                     f"peak RSS {results[n]['peak_rss_mb']:7.0f} MB")
        if results[n].get("cold_first_step_s") is not None:
            lines.append(f"  {'':<{W}} first step with an empty kernel cache (full compile) "
                         f"{results[n]['cold_first_step_s']:.1f} s")
    if args.check_steps:
        lines += loss_check(results, names, args.check_steps)
    lines += targets(results)
    return "\n".join(lines)


def loss_check(results, names, check_steps):
    """The report's loss check: each framework's losses over the same steps from the
    same weights, against PyTorch's (float32) and, when the torch worker ran them, the
    same steps in float64; records the differences in ``results``."""
    ref = next((n for n in ("torch", "torch-cuda") if results.get(n)), None)
    if ref is None:
        return []
    W = max([16] + [len(n) + 1 for n in names])

    def rel(losses, to):
        a, b = np.array(losses), np.array(to)
        return float(np.max(np.abs(a - b) / np.abs(b)))

    checked = [n for n in names if "check_losses" in results[n]]
    exact = results[ref].get("check_losses_float64")
    lines = ["", f"loss check, {check_steps} steps from identical weights and batches "
                 f"(max relative difference to {ref}):"]
    for n in checked:
        if n != ref:
            d = results[n]["check_max_rel_diff"] = rel(results[n]["check_losses"],
                                                        results[ref]["check_losses"])
            # with the float64 run below, that one decides (PyTorch float32 may be
            # the one further from it)
            verdict = "" if exact is not None else \
                f"  {'OK' if d <= 1e-4 else 'MISMATCH'} (<= 1e-4)"
            lines.append(f"  {n:<{W}} {d:.2e}{verdict}")
    if exact is not None:
        # Who is nearer the computation itself: a float32 framework within twice
        # PyTorch float32's own distance from it (or 1e-4) computes the same thing.
        limit = max(1e-4, 2 * rel(results[ref]["check_losses"], exact))
        lines += ["", "max relative difference to the same steps in float64 (PyTorch: "
                      "the computation, to rounding):"]
        for n in checked:
            d = results[n]["check_max_rel_diff_float64"] = rel(results[n]["check_losses"], exact)
            lines.append(f"  {n:<{W}} {d:.2e}  {'OK' if d <= limit else 'MISMATCH'} "
                         f"(<= {limit:.2e})")
    return lines


def targets(results):
    """The targets, each with the measured ratio (medians, this run): issue 10's on the
    CPU (at most the fastest peer's time at every batch size, at most 1.15x the
    matrix-product floor at 1024), issue 6's on the GPU."""
    def median(name, batch):
        r = results.get(name)
        return r["step"].get(str(batch), {}).get("median_ms") if r else None

    def epoch(name):
        r = results.get(name)
        return statistics.median(r["samples_per_s"]) if r and "samples_per_s" in r else None

    rows = []

    def check(text, a, b, limit, higher_is_better=False):
        if a is None or b is None:
            rows.append(f"  {text:<52} not measured")
            return
        ratio = a / b
        ok = ratio >= limit if higher_is_better else ratio <= limit
        sign = ">=" if higher_is_better else "<="
        rows.append(f"  {text:<52} {ratio:6.2f}  {sign} {limit:<5} {'met' if ok else 'MISSED'}")

    if results.get("minigrad-cupy") or results.get("torch-cuda"):
        check("cupy step / torch CUDA eager, batch 1024", median("minigrad-cupy", 1024),
              median("torch-cuda", 1024), 1.0)
        if not any(results.get(n) for n in ("minigrad-numba", "minigrad-numpy", "torch")):
            return ["", "targets (ratios of medians in this run):"] + rows
    peers = ("torch", "torch-fused", "torch-compile", "jax")
    for batch in (64, 256, 1024):
        measured = [(median(p, batch), p) for p in peers if median(p, batch) is not None]
        best, name = min(measured) if measured else (None, None)
        check(f"numba step / fastest peer{f' ({name})' if name else ''}, batch {batch}",
              median("minigrad-numba", batch), best, 1.0)
    check("numba step / matrix-product floor, batch 1024", median("minigrad-numba", 1024),
          median("floor", 1024), 1.15)
    check("numpy step / numba step, batch 64", median("minigrad-numpy", 64),
          median("minigrad-numba", 64), 1.5, higher_is_better=True)
    return ["", "targets (ratios of medians in this run):"] + rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["cpu", "cupy"], default="cpu",
                        help="cpu: numpy, numba, torch, jax on this CPU; cupy: the GPU")
    parser.add_argument("--frameworks", default=None,
                        help="comma-separated subset of " + ",".join(FRAMEWORKS))
    parser.add_argument("--batch", type=lambda s: [int(v) for v in s.split(",")], default=None)
    parser.add_argument("--seconds", type=float, default=2.0,
                        help="measure each batch size for at least this long")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--check-steps", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "train_step.json"))
    parser.add_argument("--no-cold-compile", action="store_true",
                        help="skip timing a full kernel compile (an empty Numba cache)")
    parser.add_argument("--state", default="fresh,saturated",
                        help="fresh (He-normal weights, real images), saturated (weights "
                             "trained %d epochs on block images, block batches), or both "
                             "(default: %%(default)s)" % SATURATED_EPOCHS)
    parser.add_argument("--rounds", type=int, default=4,
                        help="turns per batch size (see run_interleaved; default: %(default)s)")
    parser.add_argument("--pause", type=float, default=0.25,
                        help="seconds between turns (default: %(default)s)")
    parser.add_argument("--baseline", default=None, metavar="DIR",
                        help="also run the minigrad frameworks of the checkout in DIR (a git "
                             "worktree of an earlier commit, say), as <name>@baseline, in the "
                             "same turns: before against after in one run")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch is None:
        args.batch = [64, 256, 1024] if args.backend == "cpu" else [256, 1024, 4096]
    if args.worker:
        global STATE
        STATE = args.state
        return worker(args.worker, args.batch, args.seconds, args.epochs, args.check_steps,
                      args.rounds)
    if args.frameworks:
        names = args.frameworks.split(",")
    elif args.backend == "cpu":
        names = ["minigrad-numpy", "minigrad-numba", "torch", "torch-fused", "torch-compile",
                 "torch-ftz", "jax", "floor"]
    else:
        names = ["minigrad-cupy", "torch-cuda", "floor-cupy"]
    everything, texts = {}, []
    for state in args.state.split(","):
        args.state_now = state
        if state == "saturated":
            saturated_weights()  # trained once here (cached), not in every worker
        results = run_interleaved(names, args)
        if results.get("minigrad-numba") and not args.no_cold_compile and state == "fresh":
            results["minigrad-numba"]["cold_first_step_s"] = cold_first_step()
        texts.append(f"=== {state} state ===\n" + report(results, args))
        everything[state] = results
    text = "\n\n".join(texts)
    print(text)
    save_results(args.out, everything, text)


def save_results(path, results, text):
    """``{"argv", "results", "report"}`` as JSON at ``path``, written atomically."""
    sys.path.insert(0, ROOT)
    from autoencoders.files import atomic_write
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump({"argv": sys.argv, "results": results, "report": text}, f, indent=1)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
