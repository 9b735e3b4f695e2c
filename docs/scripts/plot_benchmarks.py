"""Draw the training-step benchmark: median ms per step against batch size.

Reads the committed report of ``benchmarks/train_step.py``
(``benchmarks/results/train_step.json``) and draws one panel per state (fresh
weights on Fashion-MNIST, saturated weights on block images), one line per
framework (the median step time), and below it each framework's step time over
the fastest peer's (PyTorch or JAX, whichever was quickest at that batch size).
Nothing is timed here: the numbers are the JSON's.

    python docs/scripts/plot_benchmarks.py                       # docs/figures/train_step.png
    python docs/scripts/plot_benchmarks.py --results other.json --out /tmp/step.png
"""
from __future__ import annotations

import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "train_step.json")
OUT = os.path.join(ROOT, "docs", "figures", "train_step.png")

# framework key in the JSON -> (label, line style); the order is the legend's
STYLES = {
    "minigrad-numba": ("minigrad (numba)", dict(color="C3", marker="o", linewidth=2.5)),
    "minigrad-numpy": ("minigrad (numpy)", dict(color="C3", marker="o", linestyle=":")),
    "torch": ("PyTorch eager, default Adam", dict(color="C0", marker="s")),
    "torch-fused": ("PyTorch eager, fused Adam", dict(color="C0", marker="s", linestyle="--")),
    "torch-ftz": ("PyTorch eager, flush-to-zero", dict(color="C9", marker="s", linestyle=":")),
    "torch-compile": ("torch.compile, fused Adam", dict(color="C1", marker="^")),
    "jax": ("JAX jit", dict(color="C2", marker="D")),
    "floor": ("GEMM floor (NumPy)", dict(color="0.4", marker="", linestyle="-.")),
}


def machine_line(report):
    """The report's line naming the model and the machine (its second line)."""
    lines = [line for line in report.splitlines() if line.strip()]
    return lines[1] if len(lines) > 1 else ""


def plot(results_path, out_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    with open(results_path) as f:
        data = json.load(f)
    states = data["results"]
    fig, axes = plt.subplots(2, len(states), figsize=(5.2 * len(states), 6.4), sharex=True,
                             sharey="row", squeeze=False, height_ratios=(3, 2))
    for column, (state, frameworks) in enumerate(states.items()):
        top, bottom = axes[0][column], axes[1][column]
        medians = {key: {int(b): s["median_ms"] for b, s in frameworks[key]["step"].items()}
                   for key in STYLES if key in frameworks}
        batches = sorted(next(iter(medians.values())))
        peers = [key for key in medians if key.startswith(("torch", "jax"))]
        fastest = {b: min(medians[key][b] for key in peers) for b in batches} if peers else None
        for key, (label, style) in STYLES.items():
            if key not in medians:
                continue
            top.plot(batches, [medians[key][b] for b in batches], label=label, markersize=5,
                     **style)
            if fastest:
                bottom.plot(batches, [medians[key][b] / fastest[b] for b in batches],
                            markersize=5, **style)
        top.set_yscale("log")
        top.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        top.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        top.set_yticks([2, 5, 10, 20, 50])
        top.set_title(f"{state} state")
        bottom.axhline(1.0, color="black", linewidth=0.8)
        bottom.set_xscale("log", base=2)
        bottom.set_xticks(batches)
        bottom.set_xticklabels([str(b) for b in batches])
        bottom.set_xlabel("batch size")
        for ax in (top, bottom):
            ax.grid(True, which="major", alpha=0.3)
    axes[0][0].set_ylabel("ms per training step (median)")
    axes[1][0].set_ylabel("time / fastest peer's")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    fig.suptitle(machine_line(data.get("report", "")), fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=RESULTS, help="train_step.py's JSON report")
    parser.add_argument("--out", default=OUT, help="the PNG to write")
    args = parser.parse_args(argv)
    print(f"wrote {plot(args.results, args.out)}")


if __name__ == "__main__":
    main()
