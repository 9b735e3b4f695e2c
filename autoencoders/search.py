"""Similar-image search on your own pictures: ``python -m autoencoders index build|query``.

``build`` reads every picture under ``--images`` (:func:`datasets.load_images`),
encodes it with ``--model`` (or trains a model on the pictures first) and saves a
:class:`~autoencoders.index.CodeIndex` of the codes in ``--out``, beside a copy of
the model (``model-<sha256 prefix>.npz``): the index folder is all that ``query``
needs.  The manifest records the model file's SHA-256, the image size and mode
and the code size, so an index is never searched with codes of another model.

``query`` encodes each query picture the same way (resized to the index's image
size, and said so), prints its k nearest pictures with their cosine distances and
writes ``neighbors.png``: each query beside its k nearest.
"""
from __future__ import annotations

import math
import os
import shutil

import numpy as np

from . import datasets, figures
from .base import Autoencoder
from .files import atomic_write, file_digest
from .index import CodeIndex

__all__ = ["build", "query"]


class SearchError(ValueError):
    """A user error of the index commands (printed in one line)."""


def _image_size(options, model):
    """``(height, width)``: ``--size``, or the square the model's input implies."""
    channels = 3 if options.mode == "RGB" else 1
    if options.size:
        return tuple(options.size)
    if model is None:
        return (28, 28)
    if model.image_shape is not None:  # a convolutional model knows its pictures' shape
        if model.image_shape[0] != channels:
            raise SearchError(f"--model reads {model.image_shape[0]}-channel pictures; "
                              f"--mode {options.mode} gives {channels}")
        return model.image_shape[1:]
    side = math.isqrt(model.input_dim // channels)
    if side * side * channels != model.input_dim:
        raise SearchError(f"--model takes {model.input_dim} inputs, which is not a square "
                          f"{options.mode} image; give --size HEIGHT,WIDTH")
    return side, side


def _encode(model, X, progress, batch=4096):
    """``model.transform(X)`` a block at a time, with a progress bar when asked for."""
    bar = None
    if progress:
        try:
            from tqdm import tqdm
            bar = tqdm(total=len(X), unit="picture", desc="encoding", dynamic_ncols=True)
        except ImportError:  # the bar is optional
            pass
    parts = []
    for start in range(0, len(X), batch):
        parts.append(model.transform(X[start:start + batch]))
        if bar is not None:
            bar.update(len(parts[-1]))
    if bar is not None:
        bar.close()
    return np.concatenate(parts)


def build(options, run):
    """Encode every picture under ``--images`` and save the index in ``--out``."""
    model = None
    if options.model:
        try:
            model = Autoencoder.load(options.model)
        except (ValueError, FileNotFoundError) as error:
            raise SearchError(f"--model {options.model}: {error}") from None
    size = _image_size(options, model)
    channels = 3 if options.mode == "RGB" else 1
    run.log(f"reading the pictures under {options.images} as {options.mode} "
            f"{size[0]}x{size[1]}")
    images, paths = datasets.load_images(options.images, size, options.mode,
                                         progress=options.progress)
    X = images.reshape(len(images), -1)
    if model is None:
        from .experiments import build_model
        model = build_model(options, X.shape[1], image_shape=(channels, *size))
        run.train(model, X, name="training")
        run.trained()
        source = run.path("training.npz")
    else:
        if model.input_dim != X.shape[1]:
            raise SearchError(f"--model {options.model} takes {model.input_dim} inputs, but "
                              f"{options.mode} pictures of {size[0]}x{size[1]} give "
                              f"{size[0] * size[1] * channels}; give a matching --size / "
                              f"--mode")
        run.trained()  # nothing to train: the other ranks of --distributed stop here
        source = options.model
    sha = file_digest(source)
    model_file = f"model-{sha[:16]}.npz"
    run.log(f"encoding {len(X)} pictures")
    codes = _encode(model, X, options.progress)
    index = CodeIndex(model.latent_dim, kind=options.kind)
    run.log(f"building the {options.kind} index")
    index.add(codes, paths)
    # the model beside the index, under a name its content decides, before the manifest
    # that names it: a build that fails anywhere leaves the previous index whole
    with open(source, "rb") as src, atomic_write(run.path(model_file)) as dst:
        shutil.copyfileobj(src, dst)
    metadata = {"model_file": model_file, "model_sha256": sha, "image_size": list(size),
                "mode": options.mode, "input_dim": model.input_dim,
                "latent_dim": model.latent_dim, "images": os.path.abspath(options.images)}
    index.save(run.out, metadata=metadata)
    for name in os.listdir(run.out):  # models of earlier builds, no longer named
        if name.startswith("model-") and name.endswith(".npz") and name != model_file:
            os.remove(run.path(name))
    run.record(pictures=len(paths), kind=index.kind, engine=index.engine, **metadata)
    run.log(f"indexed {len(paths)} pictures ({index.kind}, {index.engine}) in {run.out}")
    return run.metrics


def query(options, run):
    """The k nearest indexed pictures of each query picture; ``neighbors.png``."""
    folder = options.index
    expect = None
    model_path = options.model
    if model_path:
        expect = {"model_sha256": file_digest(model_path)}
    try:
        index = CodeIndex.load(folder, expect=expect)
    except FileNotFoundError as error:
        raise SearchError(f"--index {folder}: {error}") from None
    except ValueError as error:
        raise SearchError(f"--index {folder}: {error}"
                          + (" (was it built with another --model?)" if expect else "")) \
            from None
    meta = index.metadata
    if model_path is None:
        model_path = os.path.join(folder, meta["model_file"])
        if not os.path.exists(model_path) or file_digest(model_path) != meta["model_sha256"]:
            raise SearchError(f"--index {folder}: its model {meta['model_file']} is missing or "
                              f"changed (SHA-256 differs from the manifest's); rebuild the "
                              f"index")
    model = Autoencoder.load(model_path)
    if model.input_dim != meta["input_dim"] or model.latent_dim != index.dim:
        raise SearchError(f"--model {model_path} maps {model.input_dim} inputs to "
                          f"{model.latent_dim}-d codes; the index holds {index.dim}-d codes of "
                          f"{meta['input_dim']}-input pictures")
    size, mode = tuple(meta["image_size"]), meta["mode"]
    pictures = []
    for path in options.images:
        try:
            image, resized = datasets.load_image(path, size, mode)
        except (FileNotFoundError, IsADirectoryError, ValueError) as error:
            raise SearchError(str(error)) from None
        if resized:
            run.log(f"{path}: resized to {size[0]}x{size[1]}, the index's image size")
        pictures.append(image)
    pictures = np.stack(pictures)
    codes = model.transform(pictures.reshape(len(pictures), -1))
    result = index.search(codes, k=options.k)
    found = []
    for path, row_paths, row_distances in zip(options.images, result.paths, result.distances):
        print(f"{path}:")
        for rank, (hit, distance) in enumerate(zip(row_paths, row_distances), 1):
            print(f"  {rank}. {hit}  (cosine distance {distance:.4f})")
        found.append({"query": path, "neighbors": row_paths,
                      "distances": [float(d) for d in row_distances]})
    root = meta.get("images")
    neighbors = np.stack([np.stack([_indexed_picture(root, hit, size, mode) for hit in row])
                          for row in result.paths])
    figures.neighbors_figure(
        pictures, neighbors, run.path("neighbors.png"),
        query_titles=[os.path.basename(p) for p in options.images],
        neighbor_titles=[[f"{os.path.basename(h)}\n{d:.3f}" for h, d in zip(row, dist)]
                         for row, dist in zip(result.paths, result.distances)],
        cmap="gray", title="Query pictures (left) and their nearest indexed pictures "
                           "(cosine distance of the codes)")
    run.record(index=os.path.abspath(folder), k=options.k, results=found)
    run.log(f"wrote {run.path('neighbors.png')}")
    return run.metrics


def _indexed_picture(root, path, size, mode):
    """An indexed picture for the figure, or a blank one if it has moved since."""
    try:
        return datasets.load_image(os.path.join(root, path), size, mode)[0]
    except (OSError, ValueError, TypeError):
        return np.ones(size + ((3,) if mode == "RGB" else ()), np.float32)
