"""``python -m autoencoders <command>`` (also installed as the ``autoencoders`` script).

Commands: ``manifold`` (the main job, no download needed), ``retrieve``,
``features``, ``denoise``, and ``index build`` / ``index query`` (similar-image search
on your own pictures).  ``python -m autoencoders <command> --help`` lists each
command's options and defaults.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

__all__ = ["main", "build_parser"]

_FLAVORS = ("vanilla", "sparse", "denoising", "contractive", "variational")


# argparse types: a bad value is a usage error (exit status 2, the option and the
# value named, what is expected said) rather than a traceback or a silent default

def _positive_int(text):
    """A count or a size."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int_list(minimum, what):
    def parse(text):
        try:
            values = [int(v) for v in str(text).split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, comma-separated, got "
                                             f"{text!r}") from None
        bad = [v for v in values if v < minimum]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"expected {what}, comma-separated, got {text!r}")
        return values
    return parse


def _hidden_sizes(text):
    """Hidden layer widths: positive integers, or "" / "none" for no hidden layer."""
    if str(text).strip().lower() in ("", "none"):
        return []
    return _int_list(1, "positive integers (layer widths)")(text)


def _latent_size(text):
    """The code size: a positive integer, or "none" (--arch conv: the last
    convolution's output is the code, a fully convolutional model)."""
    if str(text).strip().lower() == "none":
        return "none"
    return _positive_int(text)


def _number(low, low_inclusive, what):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not low_inclusive):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value
    return parse


_positive_number = _number(0.0, False, "a positive finite number")
_non_negative_number = _number(0.0, True, "a finite number >= 0")


def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


#: features' default --arch: the dense model's denoising codes were the better
#: features, against channels 32,64 -> 128 and 32,64 -> 512 -> 128 (at 1,000 labels
#: 0.7975 vs 0.7969 and 0.7966; at all labels 0.8654 vs 0.8604 and 0.8603), and
#: against channels 64,128 with 5x5 kernels -> 512 -> 128 (0.7994 vs 0.7994 at 1,000
#: labels, 0.8641 vs 0.8635 at all).  With --schedule cosine for both, that conv model
#: led at every budget (0.8088 vs 0.8014 at 1,000, 0.8626 vs 0.8604 at all), but not
#: the dense model's constant-rate 0.8641, and its run took 1,302 s against 190 s.
#: 15 cosine epochs each: 0.8092 vs 0.7999 at 1,000 labels, 0.8639 vs 0.8614 at all
FEATURES_ARCH = "mlp"


def _odd_positive_int(text):
    value = _positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"expected an odd positive integer (padding k // 2 "
                                         f"keeps the image centred), got {value}")
    return value


def _common(parser, *, flavor, latent, hidden, epochs, batch_size=128, lr=1e-3, data=True,
            out=None, arch="mlp", conv_hidden="none", schedule="constant"):
    g = parser.add_argument_group("model and training")
    g.add_argument("--arch", choices=("mlp", "conv"), default=arch,
                   help="mlp: Dense layers; conv: stride-2 convolutions (--channels) before "
                        "the Dense layers, mirrored in the decoder (default: %(default)s)")
    g.add_argument("--channels", type=_int_list(1, "positive channel counts"),
                   default=None,
                   help="--arch conv: channels of each stride-2 convolution, comma-separated "
                        "(default: 32,64)")
    g.add_argument("--kernel-size", type=_odd_positive_int, default=None,
                   help="--arch conv: side of every convolution's kernel, odd (default: 3)")
    parser.set_defaults(mlp_hidden=_hidden_sizes(hidden), conv_hidden=_hidden_sizes(conv_hidden))
    g.add_argument("--flavor", default=flavor, choices=_FLAVORS,
                   help="vanilla, sparse, denoising, contractive or variational "
                        "(default: %(default)s)")
    g.add_argument("--latent", type=_latent_size, default=latent,
                   help="code size, or none with --arch conv: the last convolution's output "
                        "is the code, no Dense layer (default: %(default)s)")
    g.add_argument("--hidden", type=_hidden_sizes, default=None,
                   help=f"Dense hidden layer sizes, comma-separated, or none (default: "
                        f"{hidden} with --arch mlp, {conv_hidden} with conv)")
    g.add_argument("--epochs", type=_positive_int, default=epochs, help="(default: %(default)s)")
    g.add_argument("--batch-size", type=_positive_int, default=batch_size,
                   help="(default: %(default)s)")
    g.add_argument("--lr", type=_positive_number, default=lr, help="Adam learning rate (default: %(default)s)")
    g.add_argument("--schedule", choices=("constant", "cosine"), default=schedule,
                   help="learning rate over the epochs: constant, or cosine annealing from "
                        "--lr down to 0 at the last epoch (default: %(default)s)")
    g.add_argument("--seed", type=_seed, default=0,
                   help="seeds data, weights, shuffling and noise (default: %(default)s)")
    g.add_argument("--backend", default=None,
                   help="minigrad backend: numpy, numba or cupy (default: MINIGRAD_BACKEND, "
                        "else numba when installed)")
    o = parser.add_argument_group("files")
    o.add_argument("--out", default=out,
                   help="output directory (default: %(default)s)" if out else
                        "output directory (default: runs/<command>)")
    if data:
        o.add_argument("--data-dir", default=None,
                       help="directory with the IDX files (default: $AUTOENCODERS_DATA)")
        o.add_argument("--download", action="store_true",
                       help="fetch missing data files from the official sources (checksummed)")
    o.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar")
    o.add_argument("--resume", action="store_true",
                   help="continue training from the checkpoint in --out (one is written "
                        "after every epoch; Ctrl-C loses at most the epoch in progress)")
    o.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files next to log.jsonl (needs "
                        "tensorboardX)")
    g.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the processes started by mpiexec "
                        "(mpiexec -n 4 python -m autoencoders ... --distributed); "
                        "--batch-size is per process; needs the distributed extra")


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m autoencoders",
                                     description="The autoencoder experiments on minigrad.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("manifold", help="2-D VAE on 80,000 block images: the decoded latent "
                                        "plane (the main job)")
    _common(p, flavor="variational", latent=2, hidden="512,256", epochs=15)
    p.add_argument("--n", type=_positive_int, default=80_000,
                   help="training images (default: %(default)s)")
    p.add_argument("--n-test", type=_positive_int, default=5_000,
                   help="held-out images (default: %(default)s)")
    p.add_argument("--image-size", type=_positive_int, default=28, help="(default: %(default)s)")
    p.add_argument("--beta", type=_non_negative_number, default=1.0, help="weight of the KL term (default: %(default)s)")
    p.add_argument("--grid", type=_positive_int, default=20,
                   help="grid side of manifold.png (default: %(default)s)")
    p.add_argument("--span", type=_positive_number, default=None,
                   help="decode the square [-span, span]^2 (default: the 1st-99th percentile "
                        "box of the held-out codes)")

    # defaults from full runs on Fashion-MNIST: the metrics level off after ~5 epochs;
    # masking-noise denoising codes (30% of pixels dropped) are the better classifier
    # features (0.80 vs 0.77 test accuracy at 1,000 labels), plain codes the better
    # retrieval keys (precision@4 0.851 vs 0.846).  --arch, from runs on all of
    # Fashion-MNIST (10 epochs): retrieval keys of the conv model (channels 32,64 ->
    # Dense 512 -> 128) had precision@4 0.8542 against the dense 784-512-128's 0.8512
    # (pixels 0.8321), without the Dense 512 layer 0.8501; features: see FEATURES_ARCH
    for name, help_text, flavor, arch in (
            ("retrieve", "Fashion-MNIST retrieval by cosine distance of 128-d codes", "vanilla",
             "conv"),
            ("features", "codes as features for logistic regression", "denoising",
             FEATURES_ARCH)):
        p = sub.add_parser(name, help=help_text)
        _common(p, flavor=flavor, latent=128, hidden="512", epochs=10, arch=arch,
                conv_hidden="512")
        p.add_argument("--model", default=None, help="load this saved model instead of training")
        p.add_argument("--limit", type=_positive_int, default=None,
                       help="use only the first N training images (test: N/5)")
        if name == "retrieve":
            p.add_argument("--query", type=_int_list(0, "test-set indices (integers >= 0)"),
                           default=None,
                           help="test-set indices of the query images, comma-separated")
        else:
            p.add_argument("--labels", type=_int_list(1, "positive label counts"),
                           default=[100, 1000, 60000],
                           help="label budgets, comma-separated (default: 100,1000,60000)")
            p.add_argument("--max-iter", type=_positive_int, default=1000,
                           help="LogisticRegression max_iter (default: %(default)s)")

    p = sub.add_parser("index", help="similar-image search on your own pictures: build an "
                                     "index of codes, query it")
    actions = p.add_subparsers(dest="action", required=True, metavar="action")
    b = actions.add_parser("build", help="encode every picture under --images into an index")
    _common(b, flavor="vanilla", latent=32, hidden="256", epochs=10, data=False,
            out=os.path.join("runs", "index"))
    b.add_argument("--images", required=True, help="folder of pictures (searched recursively)")
    b.add_argument("--model", default=None,
                   help="encode with this saved model (default: train one on the pictures)")
    b.add_argument("--size", type=_int_list(1, "HEIGHT,WIDTH (two positive integers)"),
                   default=None, help="picture size the model sees (default: the model's "
                                      "square input, or 28,28 when training)")
    b.add_argument("--mode", choices=("L", "RGB"), default="L",
                   help="grey (L) or colour (RGB) (default: %(default)s)")
    b.add_argument("--kind", choices=("exact", "hnsw", "ivf", "pq"), default="exact",
                   help="exact search, or an approximate FAISS index for large collections "
                        "(pq: compressed codes, the fastest on a million; default: %(default)s)")
    q = actions.add_parser("query", help="the nearest indexed pictures of each IMAGE")
    q.add_argument("images", nargs="+", metavar="IMAGE", help="query picture files")
    q.add_argument("--index", required=True, help="an index folder written by 'index build'")
    q.add_argument("-k", type=_positive_int, default=4,
                   help="neighbours per query (default: %(default)s)")
    q.add_argument("--model", default=None,
                   help="the model the index was built with (default: its copy in the index)")
    q.add_argument("--out", default=os.path.join("runs", "index-query"),
                   help="where neighbors.png goes (default: %(default)s)")
    q.add_argument("--backend", default=None, help="minigrad backend (numpy, numba or cupy)")
    q.add_argument("--no-progress", dest="progress", action="store_false", help="(no effect)")

    p = sub.add_parser("denoise", help="denoising vs vanilla autoencoder on corrupted images")
    # --arch conv by default: on all of Fashion-MNIST (sigma 0.5, 10 epochs) the conv
    # denoiser reached a PSNR of 19.32 dB against the dense one's 18.95
    _common(p, flavor="denoising", latent=128, hidden="512", epochs=10, arch="conv")
    p.add_argument("--noise-level", type=_non_negative_number, default=0.5,
                   help="std of the Gaussian noise (default: %(default)s)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="use only the first N training images (test: N/5)")
    return parser


def main(argv=None):
    """Run one command; a user error (bad option, data, model file or checkpoint, a
    missing extra) ends it with one line on stderr and exit status 2, as argparse's
    own errors do.  Bugs still show their traceback."""
    parser = build_parser()
    options = parser.parse_args(argv)
    import minigrad
    from . import experiments

    comm, run = None, None

    def together():  # --distributed, and the ranks still depend on each other
        return comm is not None and comm.size > 1 and not (run and run.alone)

    def usage_error(message):
        message = f"{parser.prog} {options.command}: error: {message}"
        if together():  # said once, and no rank left waiting for another
            from minigrad.distributed import exit_together
            exit_together(comm, 2, message)
        parser.exit(2, message + "\n")

    try:  # for this command only: main() called from Python leaves the backend as it was
        backend = minigrad.set_backend(options.backend or minigrad.get_backend())
    except (ValueError, ImportError, RuntimeError) as error:
        usage_error(f"--backend {options.backend}: {error}" if options.backend else str(error))
    if getattr(options, "distributed", False):
        from minigrad import distributed
        try:
            comm = distributed.world(backend.current.type)
        except ImportError as error:
            usage_error(f"--distributed: {error}")
    try:
        run = experiments.Run(options.command, options, comm)
    except OSError as error:
        usage_error(f"--out {options.out or 'runs/' + options.command}: cannot write the run "
                    f"there ({error.strerror or error})")
    command = getattr(experiments, options.command)
    with backend:
        try:
            command(options, run)
        except experiments.RankDone:
            return 0  # a helper rank of --distributed: training is done
        except (experiments.UsageError, FileNotFoundError, ValueError, ImportError) as error:
            # bad data, a model or checkpoint that does not fit, a missing extra
            usage_error(str(error))
        except BaseException as error:
            if not together():
                raise
            from minigrad.distributed import exit_together
            if isinstance(error, SystemExit):  # Ctrl-C after the checkpoint was kept
                exit_together(comm, error.code)
            import traceback  # a bug: its traceback, then every rank ends
            traceback.print_exc()
            exit_together(comm, 130 if isinstance(error, KeyboardInterrupt) else 1)
    run.log(f"done in {run.metrics.get('seconds', 0):.0f} s; results in {run.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
