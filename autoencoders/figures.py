"""The experiments' figures (matplotlib, the ``viz`` extra).

Every figure is written atomically: drawn to a temporary file beside the target,
then renamed over it.
"""
from __future__ import annotations

import os

import numpy as np

from .files import atomic_write

__all__ = ["manifold_figure", "latent_figure", "neighbors_figure", "denoise_figure",
           "tile_grid"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("figures need matplotlib: pip install 'minigrad-autoencoders[viz]' "
                          "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path, dpi=110):
    plt = _pyplot()
    try:
        with atomic_write(path) as f:
            fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return os.fspath(path)


def tile_grid(images, rows, cols, pad=0, pad_value=1.0):
    """Images (rows*cols, h, w) laid out as one (rows*(h+pad)-pad, ...) array, row-major."""
    images = np.asarray(images)
    n, h, w = images.shape
    if n != rows * cols:
        raise ValueError(f"tile_grid: {n} images do not fill a {rows}x{cols} grid")
    canvas = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad), pad_value, dtype=float)
    for i in range(n):
        r, c = divmod(i, cols)
        canvas[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = images[i]
    return canvas


def manifold_figure(images, z1, z2, path, title=None):
    """The decoded latent plane: ``images[i, j]`` was decoded from (z1[j], z2[i]).

    ``images`` has shape (len(z2), len(z1), h, w); z2 grows upwards, as on a plot.
    """
    plt = _pyplot()
    n2, n1, h, w = images.shape
    # row 0 of the canvas is the top of the figure: the largest z2
    # grey gaps keep neighbouring tiles apart where both are all white
    canvas = tile_grid(images[::-1].reshape(-1, h, w), n2, n1, pad=max(1, h // 14),
                       pad_value=0.45)
    fig, ax = plt.subplots(figsize=(9, 9))
    dz1, dz2 = (z1[1] - z1[0]) / 2 if n1 > 1 else 0.5, (z2[1] - z2[0]) / 2 if n2 > 1 else 0.5
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
              extent=(z1[0] - dz1, z1[-1] + dz1, z2[0] - dz2, z2[-1] + dz2))
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(title or "Images decoded from a grid over the 2-D latent plane")
    return _save(fig, path)


def latent_figure(codes, heights, widths, path):
    """Latent means of held-out blocks, coloured by block height and by block width."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2))
    for ax, values, name in zip(axes, (heights, widths), ("height", "width")):
        points = ax.scatter(codes[:, 0], codes[:, 1], c=values, s=4, cmap="viridis")
        ax.set_title(f"Latent means coloured by block {name}")
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
        ax.set_aspect("equal", adjustable="datalim")
        fig.colorbar(points, ax=ax, label=f"{name} (pixels)")
    return _save(fig, path)


def neighbors_figure(query_images, neighbor_images, path, query_titles=None,
                     neighbor_titles=None, neighbor_matches=None, cmap="gray_r", title=None):
    """One row per query: the query, then its nearest training images.

    ``neighbor_matches`` (n, k) booleans, optional: titles of neighbours that share the
    query's label are drawn in green, the others in red.  Grey images are drawn with
    ``cmap`` ("gray_r": ink on paper, as Fashion-MNIST; "gray" for photographs), RGB
    images (..., 3) as they are.
    """
    plt = _pyplot()
    n, k = neighbor_images.shape[:2]
    fig, axes = plt.subplots(n, k + 1, figsize=(1.6 * (k + 1), 1.75 * n), squeeze=False)
    for i in range(n):
        row = [query_images[i]] + list(neighbor_images[i])
        for j, image in enumerate(row):
            ax = axes[i, j]
            ax.imshow(image, cmap=cmap, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_title(query_titles[i] if query_titles else "query", fontsize=8,
                             color="tab:blue")
                for spine in ax.spines.values():
                    spine.set_edgecolor("tab:blue")
                    spine.set_linewidth(2)
            elif neighbor_titles is not None:
                color = ("black" if neighbor_matches is None
                         else "tab:green" if neighbor_matches[i][j - 1] else "tab:red")
                ax.set_title(neighbor_titles[i][j - 1], fontsize=7, color=color)
    fig.suptitle((title or "Test queries (left) and their nearest training images by cosine "
                           "distance of the codes")
                 + ("\n(green: same class as the query, red: another class)"
                    if neighbor_matches is not None else ""),
                 fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path)


def denoise_figure(rows, row_titles, path):
    """Rows of images (clean / corrupted / reconstructions), one column per example."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), len(rows[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.2 * n_cols, 1.35 * n_rows),
                             squeeze=False)
    for r, (images, title) in enumerate(zip(rows, row_titles)):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(images[c], cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=8)
    return _save(fig, path)
