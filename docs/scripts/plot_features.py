"""Draw the 'codes as features' experiment: test accuracy against label budget.

Reads the ``metrics.json`` that ``python -m autoencoders features`` writes (its
``accuracy`` entry: representation -> label budget -> test accuracy) and draws one
line per representation (the autoencoder's codes, raw pixels, PCA).  Nothing is
trained here: the numbers are the run's.

    python docs/scripts/plot_features.py runs/docs/features/metrics.json    # docs/figures/features.png
"""
from __future__ import annotations

import argparse
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "docs", "figures", "features.png")
LABELS = {"codes": "autoencoder codes", "pixels": "raw pixels"}


def plot(metrics_path, out_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_path) as f:
        metrics = json.load(f)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, by_budget in metrics["accuracy"].items():
        budgets = sorted(by_budget, key=int)
        label = LABELS.get(name, name.replace("pca", "PCA, ") + " components"
                           if name.startswith("pca") else name)
        ax.plot([int(b) for b in budgets], [by_budget[b] for b in budgets], marker="o",
                label=label, linewidth=2.5 if name == "codes" else 1.5)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{metrics.get('classifier', 'classifier')} on "
                 f"{metrics.get('latent_dim', '?')}-d codes vs pixels vs PCA", fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=90)
    plt.close(fig)
    return out_path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", help="the metrics.json of a 'features' run")
    parser.add_argument("--out", default=OUT, help="the PNG to write")
    args = parser.parse_args(argv)
    print(f"wrote {plot(args.metrics, args.out)}")


if __name__ == "__main__":
    main()
