"""The main job's training step three ways: through minigrad's engine eagerly (the
graph built anew each step), through the engine as ``fit`` runs it by default (the
first step recorded, the ones after replayed: :mod:`minigrad.replay`), and as the
same kernels called by hand -- the VAE's forward pass, its backward pass and Adam
written out on arrays, with no Tensor, no graph and no per-node Python.  The hand
step is what a perfect tracing compiler of the step would run, so the ratio of
the eager step to it is what the engine's bookkeeping costs on the real job, and
the replayed step's ratio what is left of that.

The model and data are the main job's (``main_job.py``: the VAE 784-512-256-2,
batch 128, Adam lr 1e-3, block images), trained ``--warm-epochs`` by ``fit`` first
so that the step runs on the job's state.  Before timing, three steps of each
engine step from the same weights, batches and noise must give the hand step's
losses, gradients and updated weights (to float32 rounding): the hand step computes
what the engine computes, or the timing would mean nothing.  Then the three take
turns in one process (``--rounds`` rounds of ``--steps`` steps each, the order
reversed every other round, inside ``flush_denormals`` and ``reuse_memory`` as in
``fit``); the report gives the medians and the per-round ratios.

    python benchmarks/step_by_hand.py
    python benchmarks/step_by_hand.py --warm-epochs 0 --rounds 10
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from main_job import BATCH, LR, ROOT, SIZES, initial_model, load_data  # (this folder)
from train_step import blas_line, save_results  # (this folder)

sys.path.insert(0, ROOT)
import minigrad  # noqa: E402
from minigrad import activations  # noqa: E402
from autoencoders.base import _floats  # noqa: E402
from autoencoders.training import _update_keeping  # noqa: E402

BETA1, BETA2, EPS = 0.9, 0.999, 1e-8


class EngineStep:
    """``fit``'s step: zero the gradients, the loss and its terms as floats, the
    backward pass, Adam trading each weight's array with the one kept from before.
    With ``replay``, as ``fit`` runs it by default: the first step is recorded and
    the ones after it replay it (:mod:`minigrad.replay`)."""

    def __init__(self, model, noise_rng, replay=False):
        self.model, self.noise_rng = model, noise_rng
        self.params = list(model.parameters())
        self.opt = minigrad.optim.Adam(self.params, lr=LR, betas=(BETA1, BETA2), eps=EPS)
        self.last_good = [p.data.copy() for p in self.params]
        self.update = _update_keeping(self.opt, self.params, self.last_good)
        self.steps = minigrad.replay.Steps(lambda x: model._loss(x, noise_rng), replay)

    def __call__(self, xb):
        self.opt.zero_grad()
        total, terms = self.steps(self.model._tensor(xb))
        terms = _floats(total, terms)
        if not math.isfinite(terms["total"]):
            raise FloatingPointError(f"engine step: loss {terms['total']}")
        self.steps.backward()
        self.update()
        return terms["total"]

    def weights(self):
        return [p.data for p in self.params]

    def grads(self):
        return [p.grad for p in self.params]


class HandStep:
    """The same step on arrays: each Dense layer is ``dense_forward(x @ W, b)`` on
    the way in and ``dense_backward`` plus two products on the way back; the VAE's
    own terms are written out; Adam is one ``adam_updates`` call, trading arrays."""

    def __init__(self, model, noise_rng):
        self.kernels = model.encoder.mu.weight.device.kernels
        self.noise_rng = noise_rng
        # the engine's parameter order: body (2 Dense), mu head, log_var head, decoder (3)
        self.params = [p.data.copy() for p in model.parameters()]
        self.previous = [p.copy() for p in self.params]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.steps = [0] * len(self.params)
        self.relu, self.identity = activations.activation("relu"), activations.activation(
            "identity")
        self.beta = model.current_beta

    def __call__(self, x):
        k, relu, ident = self.kernels, self.relu, self.identity
        W1, b1, W2, b2, Wm, bm, Wl, bl, Wd1, bd1, Wd2, bd2, Wd3, bd3 = self.params
        n = x.shape[0]
        # forward: encoder, reparameterization, decoder, -ELBO
        h1 = k.dense_forward(x @ W1, b1, relu, 0.01)
        h2 = k.dense_forward(h1 @ W2, b2, relu, 0.01)
        mu = k.dense_forward(h2 @ Wm, bm, ident, 0.01)
        log_var = k.dense_forward(h2 @ Wl, bl, ident, 0.01)
        eps = self.noise_rng.standard_normal(mu.shape).astype(mu.dtype)
        sigma = np.exp(0.5 * log_var)
        z = mu + sigma * eps
        d1 = k.dense_forward(z @ Wd1, bd1, relu, 0.01)
        d2 = k.dense_forward(d1 @ Wd2, bd2, relu, 0.01)
        logits = k.dense_forward(d2 @ Wd3, bd3, ident, 0.01)
        reconstruction, g = k.bce_with_logits(logits, x, 1.0 / n, True)
        var = np.exp(log_var)
        kl = 0.5 * float((var + mu * mu - 1 - log_var).sum()) / n
        total = reconstruction / n + self.beta * kl
        if not math.isfinite(total):
            raise FloatingPointError(f"hand step: loss {total}")
        # backward: the decoder, the reparameterization and KL, the encoder
        gz, gbd3 = k.dense_backward(g, logits, ident, 0.01)
        gWd3, g = d2.T @ gz, gz @ Wd3.T
        gz, gbd2 = k.dense_backward(g, d2, relu, 0.01)
        gWd2, g = d1.T @ gz, gz @ Wd2.T
        gz, gbd1 = k.dense_backward(g, d1, relu, 0.01)
        gWd1, g_z = z.T @ gz, gz @ Wd1.T
        kl_seed = self.beta / n  # d(beta * mean KL) / d(each example's KL)
        g_mu = g_z + kl_seed * mu
        g_lv = 0.5 * (g_z * sigma) * eps + (0.5 * kl_seed) * (var - 1)
        gz, gbm = k.dense_backward(g_mu, mu, ident, 0.01)
        gWm, g = h2.T @ gz, gz @ Wm.T
        gz, gbl = k.dense_backward(g_lv, log_var, ident, 0.01)
        gWl, g = h2.T @ gz, g + gz @ Wl.T
        gz, gb2 = k.dense_backward(g, h2, relu, 0.01)
        gW2, g = h1.T @ gz, gz @ W2.T
        gz, gb1 = k.dense_backward(g, h1, relu, 0.01)
        gW1 = x.T @ gz  # the input's own gradient is never needed
        grads = [gW1, gb1, gW2, gb2, gWm, gbm, gWl, gbl, gWd1, gbd1, gWd2, gbd2, gWd3, gbd3]
        self.last_grads = grads
        self.steps = [s + 1 for s in self.steps]
        k.adam_updates(self.params, grads, self.m, self.v, LR, BETA1, BETA2, EPS, 0.0,
                       self.steps, False, self.previous)
        self.params, self.previous = self.previous, self.params
        return total

    def weights(self):
        return self.params

    def grads(self):
        return self.last_grads


def job_model(warm_epochs, n):
    """The main job's VAE on the Numba backend after ``warm_epochs`` of ``fit``."""
    model = initial_model("numba")
    if warm_epochs:
        model.fit(load_data(n), epochs=warm_epochs, batch_size=BATCH, lr=LR, seed=0,
                  progress=False)
    return model


def _worst(ours, theirs):
    """The largest difference of two lists of arrays, each relative to the largest
    magnitude in its array of ``theirs``."""
    return max(float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
               for a, b in zip(ours, theirs))


def agreement(model, batches, seed=1):
    """Steps of each from the model's weights, on ``batches`` with the same noise:
    the largest relative differences of (the losses, the last step's gradients,
    the weights after the last step).  Several steps, because Adam's first step
    moves each weight by about lr whatever its gradient's size."""
    saved = [p.data.copy() for p in model.parameters()]
    diff = [0.0, 0.0, 0.0]
    try:
        with minigrad.flush_denormals():
            hand = HandStep(model, np.random.default_rng(seed))
            hand_losses = [hand(xb) for xb in batches]
            for replay in (False, True):
                engine = EngineStep(model, np.random.default_rng(seed), replay)
                for xb, hand_loss in zip(batches, hand_losses):
                    engine_loss = engine(xb)
                    diff[0] = max(diff[0], abs(hand_loss - engine_loss) / abs(engine_loss))
                diff[1] = max(diff[1], _worst(hand.grads(), engine.grads()))
                diff[2] = max(diff[2], _worst(hand.weights(), engine.weights()))
                for p, w in zip(model.parameters(), saved):
                    p.data, p.grad = w.copy(), None
    finally:
        for p, w in zip(model.parameters(), saved):
            p.data, p.grad = w, None
    return tuple(diff)


def run(model, X, rounds, steps, seed=3):
    order = np.random.default_rng(seed).permutation(len(X))
    batches = [np.ascontiguousarray(X[order[i * BATCH:(i + 1) * BATCH]])
               for i in range(min(steps, len(X) // BATCH))]
    turns = (("engine", EngineStep(model, np.random.default_rng(1))),
             ("replayed", EngineStep(model, np.random.default_rng(1), replay=True)),
             ("hand", HandStep(model, np.random.default_rng(1))))
    times = {name: [] for name, _ in turns}
    with minigrad.reuse_memory(), minigrad.flush_denormals():
        for _, step in turns:  # warm: the kernels' first calls, the heap, the recording
            step(batches[0])
        for r in range(rounds):
            for name, step in turns if r % 2 == 0 else turns[::-1]:
                started = time.perf_counter()
                for xb in batches:
                    step(xb)
                times[name].append((time.perf_counter() - started) / len(batches) * 1e3)
    return times


def report(times, diff, args):
    e, r, h = (np.array(times[name]) for name in ("engine", "replayed", "hand"))
    lines = [
        f"The main job's step (VAE {'-'.join(map(str, SIZES))}, batch {BATCH}, after "
        f"{args.warm_epochs} epoch(s) of fit on {args.n:,} block images), {args.rounds} rounds "
        f"of {args.steps} steps in turns, ms per step:",
        f"  {blas_line()}",
        f"  agreement over 3 steps from the same state, eager and replayed engine against "
        f"the hand step (largest relative differences): loss {diff[0]:.1e}, gradients "
        f"{diff[1]:.1e}, weights {diff[2]:.1e}",
        f"  {'':<34}{'median':>8}{'p25':>8}{'min':>8}",
    ]
    for label, t in (("engine, eager", e), ("engine, replayed (fit's default)", r),
                     ("the same kernels by hand", h)):
        lines.append(f"  {label:<34}{np.median(t):8.3f}{np.percentile(t, 25):8.3f}"
                     f"{t.min():8.3f}")
    for label, t in (("eager", e), ("replayed", r)):
        ratio = t / h
        lines.append(f"  {label} / hand per round: median {np.median(ratio):.3f} "
                     f"({ratio.min():.3f}-{ratio.max():.3f}); the engine's own work "
                     f"{np.median(t - h):.3f} ms a step")
    ratio = e / r
    lines.append(f"  eager / replayed per round: median {np.median(ratio):.3f} "
                 f"({ratio.min():.3f}-{ratio.max():.3f})")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warm-epochs", type=int, default=2,
                        help="epochs of fit before timing (default: %(default)s)")
    parser.add_argument("--n", type=int, default=20_000,
                        help="block images to warm on (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=40, help="(default: %(default)s)")
    parser.add_argument("--steps", type=int, default=20,
                        help="steps per round and framework (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest relative difference of one step's loss and weights "
                             "allowed (default: %(default)s)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                      "step_by_hand.json"))
    args = parser.parse_args(argv)
    with minigrad.set_backend("numba"):
        model = job_model(args.warm_epochs, args.n)
        X = load_data(max(args.n, BATCH * args.steps))
        diff = agreement(model, [np.ascontiguousarray(X[i * BATCH:(i + 1) * BATCH])
                                 for i in range(3)])
        if max(diff) > args.tolerance:
            sys.exit(f"step_by_hand: the hand step does not compute what the engine does "
                     f"(loss {diff[0]:.2e}, gradients {diff[1]:.2e}, weights {diff[2]:.2e}; "
                     f"tolerance {args.tolerance:g})")
        times = run(model, X, args.rounds, args.steps)
    text = report(times, diff, args)
    print(text)
    save_results(args.out, {"times_ms": times, "agreement": list(diff)}, text)


if __name__ == "__main__":
    main()
