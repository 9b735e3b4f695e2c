"""The tour's figures for the flavors that no experiment command draws.

Trains small autoencoders on Fashion-MNIST with the project's own classes and
``fit`` (the same data loader as ``python -m autoencoders retrieve``), and draws:

* ``undercomplete.png``: test images and their reconstructions by vanilla
  autoencoders with codes of 4, 16 and 64 numbers (784 pixels each);
* ``sparse.png``: the share of code units at exactly zero, per test image, for a
  ReLU-coded vanilla autoencoder and a sparse one with the L1 penalty on h
  (``l1=0.5``);
* ``contractive.png``: per test image, ||dh/dx||_F^2 of a vanilla autoencoder
  with sigmoid codes and of a contractive one of the same sizes (``weight=20``;
  ``autoencoders.contractive.jacobian_norms`` on both encoders).

Each model trains for ``--epochs`` epochs on the first ``--limit`` training images
and is measured on the first 2,000 test images; about 25 s on two cores.

    python docs/scripts/flavor_figures.py --data-dir ../shared/datasets/fashion-mnist
"""
from __future__ import annotations

import argparse
import os

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "docs", "figures")


def train(model, X, epochs):
    model.fit(X, epochs=epochs, batch_size=128, progress=False)
    return model


def undercomplete(X, X_test, epochs, out, plt):
    from autoencoders import VanillaAutoencoder
    from autoencoders.figures import tile_grid
    sizes = (4, 16, 64)
    shown = X_test[:8]
    rows = [shown]
    for latent in sizes:
        model = train(VanillaAutoencoder([784, 256, latent], seed=0), X, epochs)
        rows.append(model.reconstruct(shown).numpy())
    fig, axes = plt.subplots(len(rows), 1, figsize=(7.5, 1.25 * len(rows)))
    titles = ["test images"] + [f"code of {latent}" for latent in sizes]
    for ax, row, title in zip(axes, rows, titles):
        ax.imshow(tile_grid(row.reshape(-1, 28, 28), 1, len(row), pad=1), cmap="gray_r",
                  vmin=0, vmax=1)
        ax.set_ylabel(title, rotation=0, ha="right", va="center", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Reconstructions of vanilla autoencoders [784, 256, code]", fontsize=10)
    return _save(fig, out, "undercomplete.png", plt)


def sparse(X, X_test, epochs, out, plt):
    from autoencoders import SparseAutoencoder, VanillaAutoencoder
    plain = train(VanillaAutoencoder([784, 256, 64], latent_activation="relu", seed=0), X, epochs)
    penalised = train(SparseAutoencoder([784, 256, 64], sparsity="l1", l1=0.5, seed=0), X,
                      epochs)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    bins = np.linspace(0, 1, 33)
    for model, label in ((plain, "vanilla, ReLU code"),
                         (penalised, "sparse, L1 penalty on h (l1=0.5)")):
        zeros = (model.transform(X_test) == 0).mean(axis=1)
        ax.hist(zeros, bins=bins, alpha=0.7, label=f"{label}: mean {zeros.mean():.0%}")
    ax.set_xlabel("share of the 64 code units exactly 0, per test image")
    ax.set_ylabel("test images")
    ax.legend(fontsize=8)
    ax.set_title("Sparse codes: most units off for any one image", fontsize=10)
    return _save(fig, out, "sparse.png", plt)


def contractive(X, X_test, epochs, out, plt):
    import minigrad
    from autoencoders import ContractiveAutoencoder, VanillaAutoencoder
    from autoencoders.contractive import jacobian_norms
    plain = train(VanillaAutoencoder([784, 64], latent_activation="sigmoid", seed=0), X, epochs)
    penalised = train(ContractiveAutoencoder([784, 64], weight=20.0, seed=0), X, epochs)
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for model, label in ((plain, "vanilla, sigmoid code"),
                         (penalised, "contractive (weight 20)")):
        with minigrad.no_grad():
            _, norms = jacobian_norms(model.encoder, minigrad.Tensor(X_test))
        norms = norms.numpy()
        ax.hist(np.log10(norms), bins=40, alpha=0.7,
                label=f"{label}: median {np.median(norms):.2f}")
    ax.set_xlabel(r"$\log_{10} \|\partial h / \partial x\|_F^2$ per test image")
    ax.set_ylabel("test images")
    ax.legend(fontsize=8)
    ax.set_title("The contractive penalty flattens the code around the data", fontsize=10)
    return _save(fig, out, "contractive.png", plt)


def _save(fig, out, name, plt):
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None,
                        help="the folder of the Fashion-MNIST IDX files "
                             "(default: $AUTOENCODERS_DATA)")
    parser.add_argument("--download", action="store_true", help="fetch missing files")
    parser.add_argument("--limit", type=int, default=10000, help="training images")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=OUT, help="the folder to write the PNGs to")
    args = parser.parse_args(argv)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from autoencoders import datasets

    X, _ = datasets.load_fashion_mnist(args.data_dir, "train", flatten=True,
                                       download=args.download)
    X_test, _ = datasets.load_fashion_mnist(args.data_dir, "test", flatten=True,
                                            download=args.download)
    X, X_test = X[:args.limit], X_test[:2000]
    os.makedirs(args.out, exist_ok=True)
    for draw in (undercomplete, sparse, contractive):
        draw(X, X_test, args.epochs, args.out, plt)


if __name__ == "__main__":
    main()
