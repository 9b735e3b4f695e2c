"""The article's experiments: one function per command of ``python -m autoencoders``.

Each takes the parsed options (see :mod:`autoencoders.cli`) and a :class:`Run`,
which owns the output directory: the full config, the model, ``metrics.json``
and the figures land there, every file written atomically.

* :func:`manifold` -- a VAE with a 2-D latent space on synthetic block images;
  the latent plane decoded on a grid, held-out ELBO, IoU and how well block
  height and width can be read back from the code.
* :func:`retrieve` -- similar-image retrieval on Fashion-MNIST by cosine distance
  of 128-d codes, against raw pixels and PCA with as many components.
* :func:`features` -- codes as features for logistic regression with few and
  many labels, against raw pixels and PCA.
* :func:`denoise` -- a denoising autoencoder against a vanilla one on corrupted
  test images (PSNR).
"""
from __future__ import annotations

import os
import platform
import sys
import time
import warnings

import numpy as np

import minigrad
from minigrad import optim

from . import datasets, figures, metrics
from . import FLAVORS
from .base import Autoencoder
from .files import write_json

__all__ = ["Run", "manifold", "retrieve", "features", "denoise", "FASHION_CLASSES"]

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


class Run:
    """The output directory of one command: config, model, metrics, figures.

    ``comm``: with ``--distributed``, the processes of ``mpiexec``
    (:mod:`minigrad.distributed`).  All of them train; rank 0 alone writes and
    prints, and the others stop once training is done (:meth:`trained`).
    """

    def __init__(self, command, options, comm=None):
        self.command = command
        self.options = options
        self.comm = comm
        self.root = comm is None or comm.root
        self.alone = comm is None  # rank 0 once the other ranks have left (trained)
        self.out = os.path.abspath(options.out or os.path.join("runs", command))
        self.started = time.perf_counter()
        self.metrics = {"command": command}
        if not self.root:
            return
        os.makedirs(self.out, exist_ok=True)
        config = {"command": command, "options": vars(options),
                  "backend": minigrad.get_backend().name,
                  "ranks": 1 if comm is None else comm.size,
                  "versions": {"python": platform.python_version(), "numpy": np.__version__,
                               "minigrad": minigrad.__version__},
                  "argv": sys.argv}
        write_json(self.path("config.json"), config)

    def path(self, name):
        return os.path.join(self.out, name)

    def log(self, message):
        if self.root:
            print(f"[{self.command}] {message}", flush=True)

    def record(self, **values):
        self.metrics.update(values)
        self.save_metrics()

    def save_metrics(self):
        self.metrics["seconds"] = round(time.perf_counter() - self.started, 2)
        if self.root:
            write_json(self.path("metrics.json"), self.metrics)

    def trained(self):
        """Where the other ranks of a distributed run stop: they only helped train."""
        if not self.root:
            raise RankDone
        self.alone = True

    def train(self, model, X, name="model", **fit_options):
        """``model.fit`` with the run's options.  Each epoch ends by writing
        ``<out>/<name>/checkpoint.npz`` and a line of ``<out>/<name>/log.jsonl``;
        ``--resume`` continues from the checkpoint.  Ctrl-C saves what was trained
        and stops."""
        o = self.options
        folder = self.path(name)
        ranks = "" if self.comm is None else f" per rank x {self.comm.size} ranks"
        cosine = o.schedule == "cosine"  # every training command has --schedule
        conv, sizes = getattr(model, "conv", None), getattr(model, "sizes", "")
        layers = (sizes if conv is None else
                  f"{conv} -> {list(sizes[1:])}" if len(sizes) > 1 else str(conv))
        self.log(f"training {type(model).__name__} {layers} on "
                 f"{len(X)} examples: {o.epochs} epochs, batch {o.batch_size}{ranks}, lr {o.lr}"
                 + (" (cosine)" if cosine else "")
                 + (" (resuming)" if getattr(o, "resume", False) else ""))
        if cosine:
            fit_options["schedule"] = lambda opt: optim.CosineAnnealingLR(opt, o.epochs)
        started = time.perf_counter()
        try:
            history = model.fit(X, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr,
                                seed=o.seed, progress=o.progress, checkpoint_dir=folder,
                                resume=getattr(o, "resume", False),
                                tensorboard=getattr(o, "tensorboard", False),
                                comm=self.comm, **fit_options)
        except KeyboardInterrupt:
            if not self.root:
                raise SystemExit(130)
            model.save(self.path(f"{name}.npz"))
            done = len(next(iter(getattr(model, "history_", {}).values()), []))
            self.record(interrupted=True, epochs_completed=done)
            self.log(f"interrupted after {done} complete epochs; saved {name}.npz; run the "
                     f"same command with --resume to continue from epoch {done + 1}")
            raise SystemExit(130)
        seconds = time.perf_counter() - started
        if not self.root:
            return history
        model.save(self.path(f"{name}.npz"))
        self.metrics.setdefault("train_seconds", {})[name] = round(seconds, 2)
        self.metrics.setdefault("history", {})[name] = history
        self.save_metrics()
        return history


class UsageError(Exception):
    """The options do not fit the task; the command line prints it in one line."""


class RankDone(Exception):
    """Raised on ranks other than 0 once a distributed command's training is done."""


def _hidden(options):
    """The Dense hidden widths: ``--hidden``, else the command's default for its
    ``--arch`` (a convolutional model goes from its convolutions to the code)."""
    hidden = options.hidden
    if hidden is None:
        hidden = getattr(options, "conv_hidden" if _arch(options) == "conv" else "mlp_hidden",
                         [])
    if isinstance(hidden, str):  # options built by hand rather than by the parser
        return [int(h) for h in hidden.split(",") if h.strip()]
    return list(hidden)


def _arch(options):
    return getattr(options, "arch", None) or "mlp"


def build_model(options, input_dim, flavor=None, image_shape=None, **hyper):
    """The command's model; ``image_shape`` (C, H, W) of the rows, for ``--arch conv``."""
    flavor = flavor or options.flavor
    cls = FLAVORS.get(flavor)
    if cls is None:
        raise UsageError(f"--flavor {flavor!r} is not a flavor; expected one of "
                         f"{sorted(FLAVORS)}")
    latent, hidden = options.latent, _hidden(options)
    if latent == "none":  # fully convolutional: the last convolution's output is the code
        if _arch(options) != "conv" or hidden:
            given = ",".join(map(str, hidden)) or "none"
            raise UsageError("--latent none makes the last convolution's output the code: "
                             f"it needs --arch conv and --hidden none, got --arch "
                             f"{_arch(options)} and --hidden {given}")
    sizes = [input_dim, *hidden] + ([] if latent == "none" else [latent])
    channels, kernel_size = getattr(options, "channels", None), getattr(options, "kernel_size",
                                                                        None)
    if _arch(options) == "conv":
        if image_shape is None:  # pragma: no cover - every command passes its images' shape
            raise UsageError("--arch conv needs images")
        hyper.update(channels=tuple(channels or (32, 64)), image_shape=tuple(image_shape),
                     kernel_size=kernel_size or 3)
    elif channels is not None or kernel_size is not None:
        given = " and ".join(f"{flag} {value}" for flag, value in (
            ("--channels", ",".join(map(str, channels or ()))), ("--kernel-size", kernel_size))
            if value)
        raise UsageError(f"{given} shape the convolutions of --arch conv; this model is "
                         f"--arch mlp (Dense layers only), which has none")
    return cls(sizes, seed=options.seed, **hyper)


def _load_or_train(run, options, X, image_shape=(1, 28, 28), **hyper):
    if getattr(options, "model", None):
        run.log(f"loading {options.model}")
        try:
            model = Autoencoder.load(options.model)
        except (ValueError, FileNotFoundError) as error:
            raise UsageError(f"--model {options.model}: {error}") from None
        if model.input_dim != X.shape[1]:
            raise UsageError(f"--model {options.model}: it takes {model.input_dim} inputs, the "
                             f"data has {X.shape[1]}")
        run.trained()
        return model
    model = build_model(options, X.shape[1], image_shape=image_shape, **hyper)
    run.train(model, X)
    run.trained()
    return model


def _reconstruct(model, X):
    return model.inverse_transform(model.transform(X))


def _limit(X, y, n):
    return (X, y) if not n else (X[:n], y[:n])


def _fashion(options, split):
    X, y = datasets.load_fashion_mnist(options.data_dir, split=split, flatten=True,
                                       download=options.download)
    limit = options.limit if split == "train" else (options.limit and max(options.limit // 5, 20))
    return _limit(X, y, limit)


# ----------------------------------------------------------------------------
# manifold: the main job
# ----------------------------------------------------------------------------

def manifold(options, run):
    """2-D VAE on block images; decoded latent grid, latent scatter, ELBO, IoU, R^2."""
    if options.flavor != "variational":
        raise UsageError("manifold trains a variational autoencoder: use --flavor variational")
    size = options.image_size
    images, train_heights, train_widths = datasets.blocks(options.n, size=size,
                                                          seed=options.seed)
    # held-out blocks from a generator seeded apart from the training set
    test_images, heights, widths = datasets.blocks(options.n_test, size=size,
                                                   seed=options.seed + 1_000_003)
    X = images.reshape(len(images), -1)
    X_test = test_images.reshape(len(test_images), -1)
    run.log(f"{len(X)} training and {len(X_test)} held-out block images of {size}x{size}")

    model = build_model(options, X.shape[1], image_shape=(1, size, size), beta=options.beta)
    run.train(model, X)
    run.trained()

    codes = model.transform(X_test)
    recon = model.inverse_transform(codes)
    # the k-NN regression reads height and width off the codes of (up to) 10,000
    # training images, whose sizes the generator already returned
    n_reference = min(len(X), 10_000)
    train_codes = model.transform(X[:n_reference])
    train_heights, train_widths = train_heights[:n_reference], train_widths[:n_reference]
    k = min(10, len(train_codes))
    elbo = float(np.mean(model.elbo(X_test, rng=np.random.default_rng(options.seed))))
    results = {
        "elbo_nats_per_image": elbo,
        "iou_heldout": metrics.iou(recon, X_test),
        "r2_height": metrics.knn_r2(train_codes, train_heights, codes, heights, k=k),
        "r2_width": metrics.knn_r2(train_codes, train_widths, codes, widths, k=k),
        "knn_k": k,
        "n_train": len(X), "n_heldout": len(X_test), "latent_dim": model.latent_dim,
    }
    run.record(**results)
    run.log(", ".join(f"{key} {value:.4f}" for key, value in results.items()
                      if isinstance(value, float)))

    if model.latent_dim == 2:
        low, high = _grid_span(codes, options.span)
        z1 = np.linspace(low[0], high[0], options.grid)
        z2 = np.linspace(low[1], high[1], options.grid)
        grid = np.stack(np.meshgrid(z1, z2), axis=-1).reshape(-1, 2)  # row i: z2[i]
        decoded = model.inverse_transform(grid).reshape(options.grid, options.grid, size, size)
        figures.manifold_figure(decoded, z1, z2, run.path("manifold.png"))
        figures.latent_figure(codes, heights, widths, run.path("latent.png"))
        run.record(grid=options.grid, grid_low=low.tolist(), grid_high=high.tolist())
        run.log(f"wrote {run.path('manifold.png')} and {run.path('latent.png')}")
    return run.metrics


def _grid_span(codes, span):
    """The square [-span, span]^2, or (span None) the 1st-99th percentile box of the codes."""
    if span:
        return np.array([-span, -span], float), np.array([span, span], float)
    return np.percentile(codes, 1, axis=0), np.percentile(codes, 99, axis=0)


# ----------------------------------------------------------------------------
# retrieval
# ----------------------------------------------------------------------------

def index(options, run):
    """``index build`` / ``index query``: similar-image search on your own pictures
    (:mod:`autoencoders.search`)."""
    from . import search
    return getattr(search, options.action)(options, run)


DEFAULT_QUERIES = (1, 6, 0, 7, 8)  # classes: trouser (jeans), shirt, T-shirt, sneaker, bag


def retrieve(options, run):
    """precision@k of codes vs raw pixels vs PCA under cosine distance; neighbors.png."""
    X, y = _fashion(options, "train")
    X_test, y_test = _fashion(options, "test")
    model = _load_or_train(run, options, X)
    codes, test_codes = model.transform(X), model.transform(X_test)
    pca = metrics.PCA(min(model.latent_dim, X.shape[1])).fit(X)
    ks = tuple(k for k in (1, 4, 10) if k <= len(X))
    results = {}
    for name, (items, queries) in {
        "codes": (codes, test_codes),
        "pixels": (X, X_test),
        f"pca{pca.n_components}": (pca.transform(X), pca.transform(X_test)),
    }.items():
        started = time.perf_counter()
        neighbors = _cosine_index(items).search(queries, k=max(ks)).ids
        hits = y[neighbors] == y_test[:, None]
        precision = {k: float(hits[:, :k].mean()) for k in ks}
        results[name] = {f"precision@{k}": v for k, v in precision.items()}
        run.log(f"{name:>8}: " + ", ".join(f"p@{k} {v:.4f}" for k, v in precision.items())
                + f"  ({time.perf_counter() - started:.1f} s)")
    run.record(precision=results, n_queries=len(X_test), n_items=len(X),
               latent_dim=model.latent_dim, metric="cosine")

    queries = _query_indices(options.query, y_test)
    neighbors = _cosine_index(codes).search(test_codes[queries], k=4).ids
    side = int(round(np.sqrt(X.shape[1])))
    figures.neighbors_figure(
        X_test[queries].reshape(-1, side, side), X[neighbors].reshape(len(queries), 4, side, side),
        run.path("neighbors.png"),
        query_titles=[f"query: {FASHION_CLASSES[y_test[q]]}" for q in queries],
        neighbor_titles=[[FASHION_CLASSES[y[j]] for j in row] for row in neighbors],
        neighbor_matches=y[neighbors] == y_test[queries][:, None])
    run.record(queries=[int(q) for q in queries])
    run.log(f"wrote {run.path('neighbors.png')}")
    return run.metrics


def _cosine_index(items):
    """An exact cosine index over ``items`` (the one ``index build`` saves), ids 0..n-1."""
    from .index import CodeIndex
    index = CodeIndex(items.shape[1], kind="exact")
    index.add(items, [str(i) for i in range(len(items))])
    return index


def _query_indices(query, labels):
    if query:
        indices = ([int(q) for q in query.split(",")] if isinstance(query, str)
                   else [int(q) for q in query])
        bad = [q for q in indices if not 0 <= q < len(labels)]
        if bad:
            raise UsageError(f"--query: indices {bad} are outside the {len(labels)} test images")
        return np.array(indices)
    chosen = [int(np.flatnonzero(labels == c)[0]) for c in DEFAULT_QUERIES if np.any(labels == c)]
    return np.array(chosen)


# ----------------------------------------------------------------------------
# codes as classifier features
# ----------------------------------------------------------------------------

def features(options, run):
    """Logistic regression on codes vs raw pixels vs PCA at 100, 1,000 and all labels."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise UsageError("features needs scikit-learn: pip install "
                         "'minigrad-autoencoders[features]'") from None
    X, y = _fashion(options, "train")
    X_test, y_test = _fashion(options, "test")
    model = _load_or_train(run, options, X)
    pca = metrics.PCA(min(model.latent_dim, X.shape[1])).fit(X)
    inputs = {
        "codes": (model.transform(X), model.transform(X_test)),
        "pixels": (X, X_test),
        f"pca{pca.n_components}": (pca.transform(X), pca.transform(X_test)),
    }
    budgets = sorted({min(b, len(X)) for b in options.labels})
    rng = np.random.default_rng(options.seed)
    subsets = {b: _balanced_subset(y, b, rng) for b in budgets}
    results, iterations = {}, {}
    for name, (train_features, test_features) in inputs.items():
        results[name], iterations[name] = {}, {}
        for budget, subset in subsets.items():
            started = time.perf_counter()
            classifier = make_pipeline(StandardScaler(),
                                       LogisticRegression(max_iter=options.max_iter))
            with warnings.catch_warnings():
                # reported below, in one line, instead of sklearn's multi-line warning
                warnings.simplefilter("ignore", ConvergenceWarning)
                classifier.fit(train_features[subset], y[subset])
            n_iter = int(np.max(classifier[-1].n_iter_))
            accuracy = float(classifier.score(test_features, y_test))
            results[name][str(budget)] = accuracy
            iterations[name][str(budget)] = n_iter
            note = (f"; stopped at max_iter={options.max_iter} before converging"
                    if n_iter >= options.max_iter else "")
            run.log(f"{name:>8} with {budget:>6} labels: test accuracy {accuracy:.4f} "
                    f"({time.perf_counter() - started:.1f} s, {n_iter} iterations{note})")
            run.record(accuracy=results, iterations=iterations)
    run.record(accuracy=results, iterations=iterations, max_iter=options.max_iter,
               classifier="StandardScaler + LogisticRegression",
               n_test=len(X_test), latent_dim=model.latent_dim)
    return run.metrics


def _balanced_subset(labels, n, rng):
    """``n`` indices with the classes as equally represented as possible."""
    if n >= len(labels):
        return np.arange(len(labels))
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    take = []
    i = 0
    while len(take) < n:
        for idx in per_class:
            if i < len(idx) and len(take) < n:
                take.append(idx[i])
        i += 1
    return np.sort(np.array(take))


# ----------------------------------------------------------------------------
# denoising
# ----------------------------------------------------------------------------

def denoise(options, run):
    """PSNR of corrupted and denoised test images; denoising vs vanilla autoencoder."""
    X, _ = _fashion(options, "train")
    X_test, _ = _fashion(options, "test")
    rng = np.random.default_rng(options.seed + 7)
    corrupted = np.clip(X_test + options.noise_level * rng.standard_normal(X_test.shape),
                        0, 1).astype(X_test.dtype)
    dae = build_model(options, X.shape[1], flavor="denoising", image_shape=(1, 28, 28),
                      noise="gaussian", noise_level=options.noise_level)
    run.train(dae, X, name="denoising")
    vanilla = build_model(options, X.shape[1], flavor="vanilla", image_shape=(1, 28, 28))
    run.train(vanilla, X, name="vanilla")
    run.trained()
    denoised, plain = _reconstruct(dae, corrupted), _reconstruct(vanilla, corrupted)
    results = {
        "noise": "gaussian", "noise_level": options.noise_level,
        "psnr_corrupted": metrics.psnr(corrupted, X_test),
        "psnr_denoising": metrics.psnr(denoised, X_test),
        "psnr_vanilla": metrics.psnr(plain, X_test),
        "psnr_denoising_clean_input": metrics.psnr(_reconstruct(dae, X_test), X_test),
    }
    results["gain_db"] = results["psnr_denoising"] - results["psnr_corrupted"]
    run.record(**results)
    run.log(", ".join(f"{k} {v:.2f}" for k, v in results.items() if isinstance(v, float)))
    side = int(round(np.sqrt(X.shape[1])))
    n = min(10, len(X_test))
    rows = [a[:n].reshape(n, side, side) for a in (X_test, corrupted, denoised, plain)]
    figures.denoise_figure(rows, ["clean", f"corrupted\n(σ={options.noise_level})",
                                  "denoising AE", "vanilla AE"], run.path("denoise.png"))
    run.log(f"wrote {run.path('denoise.png')}")
    return run.metrics
