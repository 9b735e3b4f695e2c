"""The common base of every autoencoder flavor.

An autoencoder is an encoder f and a decoder g trained so that the reconstruction
g(f(x)) is close to x.  The loss is L(x, g(f(x))) -- decode *after* encode -- plus
whatever penalty a flavor adds.  :class:`Autoencoder` holds what the flavors share:

* building the encoder and decoder from a size list ``[input_dim, hidden..., latent_dim]``
  (the decoder mirrors it), or taking the user's own ``minigrad.nn`` Modules;
* ``encode`` / ``decode`` / ``reconstruct`` on Tensors, ``transform`` /
  ``inverse_transform`` on NumPy arrays (in batches, no graph recorded);
* the reconstruction loss, **summed over the pixels of an example and averaged
  over the batch** -- the same reduction in every flavor, so terms compare;
* ``loss(x, rng) -> (total, terms)``, ``evaluate``, ``fit`` (the loop is in
  :mod:`autoencoders.training`) and ``save`` / ``load`` (the file format is in
  :mod:`autoencoders.files`; the input checks in :mod:`autoencoders.inputs`).

A flavor subclass sets ``flavor``, lists its hyper-parameters in its ``__init__``
and writes ``_loss(x, rng)``, which returns the total loss Tensor and a dict of
named terms -- the one method that reads like the flavor's equation.

The decoder Module maps a code to *pre-activations*; ``decode`` applies the
output function.  With ``output="sigmoid"`` and ``loss="bce"`` the loss is
computed from those logits by ``binary_cross_entropy_with_logits`` (finite for
any logit), while ``decode`` and ``reconstruct`` return the probabilities.
"""
from __future__ import annotations

import math
import numbers
import os

import numpy

import minigrad
from minigrad import Tensor, losses, nn, no_grad, optim, replay

from . import architecture, files, inputs
from .files import FORMAT_VERSION

__all__ = ["Autoencoder", "FORMAT_VERSION"]

_OUTPUTS = {"sigmoid": "sigmoid", "identity": "identity", "linear": "identity", None: "identity"}
_LOSSES = ("bce", "mse")
_DTYPES = ("float32", "float64")
_DEFAULT = object()  # "argument not given", where None is a meaningful value


class Autoencoder(nn.Module):
    """Encoder f, decoder g; trained so that g(f(x)) reconstructs x.

    Parameters
    ----------
    sizes : list of int
        ``[input_dim, hidden..., latent_dim]``; the decoder mirrors it.
    activation : str
        Activation of the hidden layers (``"relu"``, ``"tanh"``, ``"sigmoid"``, ...).
    latent_activation : str or None
        Activation of the code layer; each flavor has its own default.
    output : ``"sigmoid"`` or ``"identity"``
        The function ``decode`` applies to the decoder's output.
    loss : ``"bce"`` (inputs in [0, 1], needs ``output="sigmoid"``) or ``"mse"``
        Reconstruction loss, summed over the features of an example and averaged
        over the batch.
    dtype : ``"float32"`` (default) or ``"float64"`` (for gradient checks).
    seed : int
        Seeds the weight initialisation (and the model's own noise generator).
    channels, image_shape, kernel_size : optional
        A convolutional model (:mod:`autoencoders.architecture`): ``channels=(32,
        64)`` stride-2 convolutions of ``kernel_size`` (3) read each row as an image
        of ``image_shape`` (C, H, W), C·H·W = ``sizes[0]``, before the Dense layers
        ``sizes[1:]``; the decoder mirrors them back to that shape.  With
        ``sizes=[input_dim]`` alone the model is fully convolutional: the code is
        the last convolution's output (with ``latent_activation``), flattened,
        and ``latent_dim`` is its size.
    encoder, decoder : minigrad.nn.Module, optional
        Your own Modules instead of ``sizes``; give ``input_dim`` too.  The
        decoder must return pre-activations (``output`` is applied on top).
    hyper : dict
        For subclasses: the flavor's hyper-parameters, set as attributes and saved.
    """

    flavor = None          # set by each subclass; names the flavor in saved files
    _flavors = {}          # flavor name -> class, filled by __init_subclass__
    default_latent_activation = None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.flavor is not None:
            Autoencoder._flavors[cls.flavor] = cls

    def __init__(self, sizes=None, *, activation="relu", latent_activation=_DEFAULT,
                 output="sigmoid", loss="bce", dtype=None, seed=0, encoder=None,
                 decoder=None, input_dim=None, latent_dim=None, hyper=None, channels=None,
                 image_shape=None, kernel_size=3):
        super().__init__()
        if type(self) is Autoencoder:
            raise TypeError("Autoencoder is the base class; build a flavor such as "
                            "VanillaAutoencoder or VariationalAutoencoder")
        if output not in _OUTPUTS:
            raise ValueError(f"{self._name}: output={output!r}; expected 'sigmoid' or 'identity'")
        if loss not in _LOSSES:
            raise ValueError(f"{self._name}: loss={loss!r}; expected one of {_LOSSES}")
        if loss == "bce" and _OUTPUTS[output] != "sigmoid":
            raise ValueError(f"{self._name}: loss='bce' compares probabilities, so it needs "
                             f"output='sigmoid' (got output={output!r}); use loss='mse' instead")
        if dtype is not None:
            try:
                dtype = numpy.dtype(dtype).name
            except TypeError:
                pass
            if dtype not in _DTYPES:
                raise ValueError(f"{self._name}: dtype={dtype!r}; expected one of {_DTYPES}")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
                                 or seed < 0):
            raise ValueError(f"{self._name}: seed must be a non-negative integer or None, got "
                             f"{seed!r}")
        self.activation = nn.activation_module(activation).name
        self.output = _OUTPUTS[output]
        self.loss_name = loss
        self.seed = None if seed is None else int(seed)
        self._hyper_names = tuple(hyper or ())
        for name, value in (hyper or {}).items():
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                # NumPy scalars become Python numbers, so the config stays JSON
                value = int(value) if isinstance(value, numbers.Integral) else float(value)
            setattr(self, name, value)
        self._check_hyper()
        if latent_activation is _DEFAULT:
            latent_activation = self._default_latent_activation()
        self.latent_activation = (None if latent_activation is None
                                  else nn.activation_module(latent_activation).name)
        self._rng = numpy.random.default_rng(None if seed is None else [seed, 1])

        if encoder is None and decoder is None:
            if input_dim is not None or latent_dim is not None:
                raise ValueError(f"{self._name}: input_dim and latent_dim go with your own "
                                 f"encoder and decoder; with sizes they come from the list")
            minimum, hint = self._min_sizes, ""
            if not self._fully_convolutional:
                hint = f" ({self._name} has no fully convolutional form)"
            elif channels is None:
                hint = " (or [input_dim] with channels: fully convolutional)"
            else:
                minimum = 1
            self.sizes = _check_sizes(self._name, sizes, minimum, hint)
            self.conv = architecture.conv_shape(self._name, image_shape, channels, kernel_size,
                                                self.sizes[0])
            self.dtype = str(dtype or "float32")
            self.custom = False
            rng = numpy.random.default_rng(seed)
            self.encoder = self._build_encoder(rng)
            self.decoder = self._build_decoder(rng)
            self.input_dim = self.sizes[0]
            self.latent_dim = self.sizes[-1] if len(self.sizes) > 1 else self.conv.flat_width
        else:
            if channels is not None or image_shape is not None:
                raise ValueError(f"{self._name}: channels and image_shape build the encoder "
                                 f"and decoder; with your own Modules leave them out")
            self.conv = None
            self._adopt_modules(sizes, encoder, decoder, input_dim, latent_dim, dtype)
            self._check_output_shape()

    # -- construction -------------------------------------------------------------
    _min_sizes = 2
    _fully_convolutional = True  # sizes=[input_dim] with channels: the code is a feature map

    @property
    def _name(self):
        return type(self).__name__

    def _check_hyper(self):
        """Validate the flavor's hyper-parameters (a subclass hook; raise ValueError)."""

    def _check_number(self, name, low=0.0, high=math.inf, *, open_low=False, open_high=False,
                      integer=False):
        """Hyper-parameter ``name`` is a finite real number (an integer if ``integer``) in
        the interval, or a TypeError / ValueError names the flavor, the parameter, its
        value and what is expected.  Strings and bools are not numbers here."""
        value = getattr(self, name)
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool) or not isinstance(
                value, numbers.Integral if integer else numbers.Real):
            raise TypeError(f"{self._name}: {name} must be {kind}, got {value!r} "
                            f"({type(value).__name__})")
        inside = ((low < value if open_low else low <= value)
                  and (value < high if open_high else value <= high))
        if not math.isfinite(value) or not inside:
            interval = (("(" if open_low else "[") + f"{low:g}, "
                        + ("inf)" if high == math.inf else f"{high:g}" + (")" if open_high
                                                                          else "]")))
            raise ValueError(f"{self._name}: {name}={value!r}; expected {kind} in {interval}"
                             + ("" if math.isfinite(value) else " (finite)"))

    def _default_latent_activation(self):
        return self.default_latent_activation

    def _dense(self, n_in, n_out, activation, rng):
        init = "he" if activation in ("relu", "leaky_relu") else "glorot"
        return nn.Dense(n_in, n_out, activation=activation, init=init, dtype=self.dtype, rng=rng)

    @property
    def image_shape(self):
        """(C, H, W) of a convolutional model's input rows, else None."""
        return None if self.conv is None else self.conv.image_shape

    def _front(self, rng):
        """``(layers before the Dense ones, their output width)``: a convolutional
        model's Unflatten-convolutions-Flatten (the last convolution giving the code
        when no Dense layer follows), or nothing."""
        if self.conv is None:
            return [], self.sizes[0]
        last = self.latent_activation if len(self.sizes) == 1 else self.activation
        return (architecture.encoder_front(self.conv, self.activation, last, self.dtype, rng),
                self.conv.flat_width)

    def _build_encoder(self, rng):
        front, width = self._front(rng)
        s = [width, *self.sizes[1:]]
        acts = [self.activation] * (len(s) - 2) + [self.latent_activation]
        return nn.Sequential(front + [self._dense(a, b, act, rng)
                                      for a, b, act in zip(s, s[1:], acts)])

    def _build_decoder(self, rng):
        s = [self.sizes[0] if self.conv is None else self.conv.flat_width, *self.sizes[1:]][::-1]
        # the last Dense layer gives pre-activations, or the transposed convolutions' input
        acts = [self.activation] * (len(s) - 2) + [None if self.conv is None else self.activation]
        back = ([] if self.conv is None else
                architecture.decoder_back(self.conv, self.activation, self.dtype, rng))
        return nn.Sequential([self._dense(a, b, act, rng)
                              for a, b, act in zip(s, s[1:], acts)] + back)

    def _check_output_shape(self):
        """The decoder gives back rows of the input's width (checked at construction)."""
        if self.conv is None:
            return
        with no_grad():
            out = self.decoder(Tensor(numpy.zeros((1, self.latent_dim), self.dtype)))
        if out.shape != (1, self.input_dim):  # pragma: no cover - the geometry guarantees it
            raise ValueError(f"{self._name}: the decoder gives shape {out.shape} for images "
                             f"{self.image_shape}; expected (1, {self.input_dim})")

    def _adopt_modules(self, sizes, encoder, decoder, input_dim, latent_dim, dtype):
        name = self._name
        if sizes is not None:
            raise ValueError(f"{name}: give either sizes or your own encoder and decoder, "
                             f"not both")
        for role, module in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(module, nn.Module):
                raise TypeError(f"{name}: {role} must be a minigrad.nn.Module, got "
                                f"{type(module).__name__}")
        if not isinstance(input_dim, (int, numpy.integer)) or isinstance(input_dim, bool) \
                or input_dim <= 0:
            raise ValueError(f"{name}: with your own encoder and decoder, give input_dim "
                             f"(a positive integer), got {input_dim!r}")
        dtypes = {str(p.dtype) for p in encoder.parameters() + decoder.parameters()}
        if len(dtypes) > 1:
            raise ValueError(f"{name}: the encoder and decoder parameters mix dtypes {dtypes}")
        found = dtypes.pop() if dtypes else str(dtype or "float32")
        if dtype is not None and str(dtype) != found:
            raise ValueError(f"{name}: dtype={dtype!r} but the modules' parameters are {found}")
        self.dtype, self.custom = found, True
        self.input_dim = int(input_dim)
        self.encoder, self.decoder = self._wrap_custom_encoder(encoder, latent_dim), decoder
        with no_grad():
            code = self._encode(Tensor(numpy.zeros((1, self.input_dim), self.dtype)))
            if code.ndim != 2:
                raise ValueError(f"{name}: the encoder maps (1, {self.input_dim}) to shape "
                                 f"{code.shape}; expected (1, latent_dim)")
            self.latent_dim = code.shape[1]
            if latent_dim is not None and latent_dim != self.latent_dim:
                raise ValueError(f"{name}: latent_dim={latent_dim} but the encoder gives codes "
                                 f"of width {self.latent_dim}")
            out = self.decoder(Tensor(numpy.zeros((1, self.latent_dim), self.dtype)))
            if out.shape != (1, self.input_dim):
                raise ValueError(f"{name}: the decoder maps (1, {self.latent_dim}) to shape "
                                 f"{out.shape}; expected (1, {self.input_dim})")
        self.sizes = [self.input_dim, self.latent_dim]

    def _wrap_custom_encoder(self, encoder, latent_dim):
        return encoder

    # -- the model -------------------------------------------------------------------
    def _encode(self, x):
        """The code Tensor of a checked input Tensor."""
        return self.encoder(x)

    def encode(self, x):
        """The code h = f(x) of a batch (Tensor or array of shape (n, input_dim))."""
        return self._encode(self._as_input(x, "encode"))

    def decode(self, h):
        """The reconstruction g(h) (probabilities with ``output="sigmoid"``)."""
        return self._output(self.decoder(self._as_input(h, "decode", codes=True)))

    def reconstruct(self, x):
        """g(f(x)): decode after encode."""
        return self.decode(self.encode(x))

    def _output(self, pre):
        return minigrad.sigmoid(pre) if self.output == "sigmoid" else pre

    def reconstruction_terms(self, pre, x):
        """Per-example reconstruction loss (shape (n,)), summed over the features.

        ``pre`` is the decoder's output (logits with ``output="sigmoid"``).
        bce: sum_i softplus(a_i) - x_i a_i, the cross-entropy of sigmoid(a) against x;
        mse: sum_i (x̂_i - x_i)^2.
        """
        if self.loss_name == "bce":
            per_pixel = losses.binary_cross_entropy_with_logits(pre, x, reduction="none",
                                                                check_target=False)
        else:
            per_pixel = losses.mse(self._output(pre), x, reduction="none")
        return per_pixel.sum(axis=-1)

    def reconstruction_loss(self, pre, x):
        """The reconstruction term: per-example sum over features, mean over the batch.

        ``reduction="batchmean"`` is that: (sum over everything) / batch size, one
        fused kernel node on the Numba and CuPy backends.
        """
        if self.loss_name == "bce":
            # the data were checked to lie in [0, 1] when they entered the model
            return losses.binary_cross_entropy_with_logits(pre, x, reduction="batchmean",
                                                           check_target=False)
        return losses.mse(self._output(pre), x, reduction="batchmean")

    # -- the loss --------------------------------------------------------------------
    #: Whether the loss is a mean over examples of per-example terms, so that the
    #: mean of the ranks' losses (weighted by their rows) is the whole batch's loss
    #: (data-parallel training relies on it; a batch statistic such as the sparse
    #: KL's mean activation is computed on each rank's part of the batch instead).
    def _per_example_loss(self):
        return True

    def _loss(self, x, rng):  # pragma: no cover - abstract
        """``(total Tensor, {name: Tensor or float})`` for a checked batch ``x``."""
        raise NotImplementedError

    def loss(self, x, rng=None):
        """``(total, terms)``: the training loss of batch ``x`` and its named terms.

        ``total`` is a scalar Tensor (call ``total.backward()``); ``terms`` holds
        floats: ``"total"``, ``"reconstruction"`` and the flavor's own terms
        (unweighted).  Noise is drawn from ``rng`` (a ``numpy.random.Generator``;
        the model's own when None), so the same generator state gives the same loss.
        """
        if not isinstance(x, Tensor):
            x = self._check_data(x, "x", bounded=True)
        x = self._as_input(x, "loss")
        total, terms = self._loss(x, self._rng if rng is None else _check_rng(rng))
        return total, _floats(total, terms)

    def evaluate(self, X, batch_size=1024, rng=None):
        """Mean of every loss term over the rows of ``X`` (no graph; ``rng`` defaults
        to a fixed seed so the numbers are reproducible).  ``X``: rows (a memmap is
        read a batch at a time) or a stream of batches."""
        rows = inputs.source(self, X, "X", bounded=True)
        rng = numpy.random.default_rng(0) if rng is None else _check_rng(rng)
        return self._evaluate(rows, _positive_int("batch_size", batch_size), rng)

    def _evaluate(self, rows, batch_size, rng):
        sums, n = {}, 0
        with no_grad():
            for xb in rows.batches(batch_size):
                total, terms = self._loss(self._tensor(xb), rng)
                for key, value in _floats(total, terms).items():
                    sums[key] = sums.get(key, 0.0) + value * len(xb)
                n += len(xb)
        return {key: value / n for key, value in sums.items()}

    # -- NumPy in, NumPy out -----------------------------------------------------------
    def transform(self, X, batch_size=1024):
        """Codes of the rows of ``X`` as a NumPy array (batched, no graph recorded;
        a memmap or a stream of batches is read a batch at a time)."""
        return self._batched(self.encode, inputs.source(self, X, "X"), batch_size)

    def inverse_transform(self, H, batch_size=1024):
        """Reconstructions decoded from the codes ``H`` as a NumPy array."""
        return self._batched(self.decode, inputs.source(self, H, "H", codes=True), batch_size)

    def _batched(self, fn, rows, batch_size):
        batch_size = _positive_int("batch_size", batch_size)
        with no_grad():
            parts = [fn(self._tensor(xb)).numpy() for xb in rows.batches(batch_size)]
        return numpy.concatenate(parts, axis=0)

    # -- training --------------------------------------------------------------------
    def _begin_epoch(self, epoch, epochs):
        """Called by :meth:`fit` before each epoch (a hook, e.g. for KL warm-up)."""

    def _end_fit(self):
        """Called by :meth:`fit` when it returns or raises."""

    def fit(self, X, epochs=10, batch_size=128, lr=1e-3, optimizer="adam",
            validation_data=None, seed=0, callbacks=(), progress=True, backend=None, *,
            validation_split=None, early_stopping=None, schedule=None, clip_grad_norm=None,
            checkpoint_dir=None, resume=False, log_dir=None, tensorboard=False, comm=None,
            replay=None):
        """Train on ``X`` with minibatch gradient descent; returns the history.

        ``X``: rows (a NumPy array, a ``numpy.memmap`` -- read a batch at a time, never
        whole -- or any array-like that slices), or a re-iterable stream of 2-D
        batches (then ``batch_size`` and shuffling are the stream's own); see
        :mod:`autoencoders.inputs`.

        ``optimizer``: ``"adam"``, ``"adamw"``, ``"sgd"`` or a ``minigrad.optim``
        Optimizer over (some of) ``model.parameters()`` (then ``lr`` is its own).
        Calling fit again continues with the previous optimizer's state (Adam's
        moments) when ``optimizer`` names the same kind; ``model.optimizer_ = None``
        starts afresh.  ``seed`` seeds the shuffling and the training noise: the same
        seeds (here and in the constructor) give the same weights bit for bit on the
        same backend.

        ``validation_data`` (rows) or ``validation_split`` (the fraction of ``X``'s
        last rows, as stored, held out): evaluated after each epoch as ``val_*``.
        ``early_stopping``: a patience (int) or an :class:`~autoencoders.training.EarlyStopping`;
        training stops after that many epochs without a better ``val_total`` (or
        ``total`` without validation data) and the model gets the best epoch's weights
        back.  ``schedule``: a ``minigrad.optim`` learning-rate schedule over the
        optimizer, or a function of the optimizer returning one
        (``lambda opt: optim.CosineAnnealingLR(opt, 20)``), stepped after each epoch
        (ReduceLROnPlateau with the monitored loss).  ``clip_grad_norm``: rescale the
        gradients whenever their global L2 norm exceeds it.

        ``checkpoint_dir``: write ``checkpoint.npz`` there after every epoch
        (atomically, no pickle); ``resume=True`` continues from it when it exists, to
        the same weights bit for bit as an uninterrupted run.  ``log_dir`` (default:
        ``checkpoint_dir``): a ``log.jsonl`` line per epoch (epoch, seconds, lr and
        every term) and, with ``tensorboard=True``, TensorBoard event files
        (the ``tensorboard`` extra).

        ``backend``: ``"numpy"``, ``"numba"`` or ``"cupy"`` to train under that
        minigrad backend (the active one when None).  The backend is switched for
        the duration of the call and for this thread only (``minigrad.use_backend``:
        two threads can fit on two backends at once), but the model's parameters and its optimizer's
        buffers are moved to its device and **stay there**: after
        ``fit(X, backend="cupy")`` the model lives on the GPU -- its ``transform``
        and friends still return NumPy arrays, and ``model.to("cpu")`` brings it
        back.  The batches are copied to the device one at a time.

        ``callbacks``: callables ``cb(model, epoch, logs)`` run after each epoch;
        one returning True stops training.

        ``replay``: record each epoch's first step and replay it for the steps after
        (``minigrad.replay``: the same kernels in the same order, equal bit for bit,
        without rebuilding the graph each step).  None (the default) replays when
        the model is made of this package's flavors and minigrad's layers only (in
        one process or on several ranks); False never; True also for your own
        layers (their forward must not depend on the data, and noise drawn inside the
        step must be declared with ``minigrad.replay.source``).

        ``comm``: data-parallel training over the processes of an MPI communicator
        (``minigrad.distributed.world()``, or ``mpi4py``'s ``MPI.COMM_WORLD``; see
        :mod:`autoencoders.parallel`).  Every rank calls fit with the same data and
        options; ``batch_size`` is **per rank**, so a step sees ``batch_size x
        ranks`` rows (the global batch), and R ranks end with the weights one process
        with ``batch_size x R`` would have (to float rounding).  Rank 0 alone writes
        the checkpoint and log and shows progress; an error on any rank stops all.

        Returns the history ``{term: [per-epoch mean], "val_" + term: [...]}`` (also
        kept as ``model.history_``).  If the loss becomes NaN or infinite, training
        stops with a FloatingPointError naming the epoch and batch; the model then
        holds the weights of the last batch whose loss was finite.
        """
        from . import training
        options = dict(validation_split=validation_split, early_stopping=early_stopping,
                       schedule=schedule, clip_grad_norm=clip_grad_norm,
                       checkpoint_dir=checkpoint_dir, resume=resume, log_dir=log_dir,
                       tensorboard=tensorboard, comm=comm, replay=replay)
        args = (X, epochs, batch_size, lr, optimizer, validation_data, seed, callbacks, progress)
        if backend is None:
            return training.fit(self, *args, **options)
        with minigrad.use_backend(backend) as active:  # this thread only
            self.to(active.type)
            for opt in {id(o): o for o in (optimizer, getattr(self, "optimizer_", None))
                        if isinstance(o, optim.Optimizer)}.values():
                opt.to(active.type)
            return training.fit(self, *args, **options)

    # -- checking inputs ---------------------------------------------------------------
    def _check_data(self, X, name, bounded=False, codes=False):
        """``X`` (inputs, or codes if ``codes``) as a 2-D array of the model's dtype, or a
        ValueError naming the problem (:mod:`autoencoders.inputs`)."""
        return inputs.check_array(self, X, name, bounded, codes)

    def _as_input(self, x, op, codes=False):
        """``x`` as a Tensor of the model's dtype; arrays get the full check, Tensors a
        shape check (they are usually batches of data checked already)."""
        if not isinstance(x, Tensor):
            return self._tensor(self._check_data(x, "the input", codes=codes))
        width = self.latent_dim if codes else self.input_dim
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"{self._name}.{op}: input has shape {x.shape}; expected "
                             f"(n, {width})")
        if str(x.dtype) != self.dtype and not x.requires_grad:
            x = Tensor(x.data.astype(self.dtype), device=x.device)
        return x

    def _tensor(self, array):
        """A Tensor on the parameters' device from a host array of the model's dtype."""
        first = next(self.named_parameters(), None)
        return Tensor(array, dtype=self.dtype, device=first[1].device if first else None)

    def _noise(self, rng, shape):
        """Standard normal noise of ``shape`` from ``rng``, as a Tensor of the model's
        dtype (drawn afresh when a recorded training step is replayed)."""
        noise = self._tensor(rng.standard_normal(shape))
        return replay.source(noise, lambda: self._tensor(rng.standard_normal(shape)).data)

    # -- saving ----------------------------------------------------------------------
    def config(self):
        """The JSON-able description that :meth:`load` rebuilds the model from."""
        from . import __version__
        return {
            "format": files.FORMAT_NAME, "format_version": FORMAT_VERSION,
            "package_version": __version__, "minigrad_version": minigrad.__version__,
            "flavor": self.flavor, "custom": self.custom, "sizes": list(self.sizes),
            "activation": self.activation, "latent_activation": self.latent_activation,
            "output": self.output, "loss": self.loss_name, "dtype": self.dtype,
            "seed": self.seed,
            "hyper": {name: getattr(self, name) for name in self._hyper_names},
            # format 2 adds "conv" (convolutional models); format 1 files still load
            **({} if self.conv is None else {"conv": self.conv.config()}),
        }

    def save(self, path):
        """Write the weights and the config to ``path`` (``.npz``, added if missing).

        The file is written to a temporary file in the same folder and renamed over
        ``path``, so a crash never leaves a half-written model.  Returns the path.
        """
        path = os.fspath(path)
        if not path.endswith(".npz"):
            path += ".npz"
        return files.write_model(path, self.config(), self.state_dict())

    @classmethod
    def load(cls, path, *, encoder=None, decoder=None):
        """The model saved at ``path``.  ``Autoencoder.load`` accepts any flavor; a
        flavor's own ``load`` only its flavor.  A model built from your own Modules
        needs freshly built ``encoder`` and ``decoder`` of the same shapes."""
        config, weights = files.read_model(path)
        flavor = config["flavor"]
        if flavor not in Autoencoder._flavors:
            raise ValueError(f"{path}: unknown autoencoder flavor {flavor!r}; expected one of "
                             f"{sorted(Autoencoder._flavors)}")
        target = Autoencoder._flavors[flavor]
        if cls is not Autoencoder and cls is not target:
            raise ValueError(f"{path} holds a {flavor!r} autoencoder ({target.__name__}), not "
                             f"a {cls.flavor!r} one; load it with {target.__name__}.load or "
                             f"Autoencoder.load")
        options = dict(activation=config["activation"], output=config["output"],
                       loss=config["loss"], dtype=config["dtype"], seed=config["seed"],
                       **config["hyper"])
        if target._has_latent_activation:
            options["latent_activation"] = config["latent_activation"]
        if config["custom"]:
            if encoder is None or decoder is None:
                raise ValueError(f"{path} holds a model built from your own encoder and "
                                 f"decoder Modules; pass freshly built ones: "
                                 f"{target.__name__}.load(path, encoder=..., decoder=...)")
            sizes = config["sizes"]
            model = target(encoder=encoder, decoder=decoder, input_dim=sizes[0],
                           latent_dim=sizes[-1], **options)
        else:
            if encoder is not None or decoder is not None:
                raise ValueError(f"{path} holds a model built from sizes; do not pass "
                                 f"encoder or decoder")
            conv = config.get("conv")
            if conv is not None:
                if not isinstance(conv, dict) or set(conv) != {"image_shape", "channels",
                                                               "kernel_size"}:
                    raise ValueError(f"{path}: the config's 'conv' entry is malformed: "
                                     f"{conv!r}")
                options.update(conv)
            _check_declared_sizes(path, config["sizes"], weights, conv, target.__name__)
            model = target(config["sizes"], **options)
            if conv is not None and config.get("format_version") == 2:
                weights = architecture.renamed_version2(weights, model)
        model._set_weights(weights, path)
        return model

    def load_weights(self, path):
        """Copy the weights saved at ``path`` into this model (same flavor and shapes)."""
        config, weights = files.read_model(path)
        if config["flavor"] != self.flavor:
            raise ValueError(f"{path} holds a {config['flavor']!r} autoencoder; this model is "
                             f"a {self.flavor!r} one")
        if list(config["sizes"]) != list(self.sizes):
            raise ValueError(f"{path} holds an autoencoder of sizes {config['sizes']}; this "
                             f"model has sizes {self.sizes}")
        self._set_weights(weights, path)
        return self

    _has_latent_activation = True

    def _set_weights(self, weights, path):
        own = dict(self.named_parameters())
        missing, unexpected = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        if missing or unexpected:
            raise ValueError(f"{path}: the weights do not fit this {self._name}: missing "
                             f"{missing}, unexpected {unexpected}")
        for name, p in own.items():
            w = weights[name]
            if w.shape != p.shape:
                raise ValueError(f"{path}: weight {name!r} has shape {w.shape}; this "
                                 f"{self._name} needs {p.shape}")
            if str(w.dtype) != str(p.dtype):
                raise ValueError(f"{path}: weight {name!r} has dtype {w.dtype}; expected "
                                 f"{p.dtype}")
            bad = int(numpy.size(w) - numpy.isfinite(w).sum())
            if bad:
                raise ValueError(f"{path}: weight {name!r} holds {bad} NaN or infinite values; "
                                 f"the file is damaged or was saved from a diverged model")
        self.load_state_dict(weights)

    def extra_repr(self):
        conv = ("" if self.conv is None else
                f", image_shape={self.conv.image_shape}, channels={self.conv.channels}")
        return f"flavor={self.flavor!r}, sizes={self.sizes}{conv}, loss={self.loss_name!r}"


# ----------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------

def _check_declared_sizes(path, sizes, weights, conv=None, name=None):
    """A file's config may not declare a model bigger than the weights it holds: the
    model is built before its weights are compared, so a hostile config could
    otherwise make ``load`` allocate any amount of memory.  Every flavor has at least
    the encoder's weights (:func:`autoencoders.architecture.least_weights`)."""
    sizes = _check_sizes(f"{path}: config", sizes, 2 if conv is None else 1)
    shape = None if conv is None else architecture.conv_shape(
        f"{path}: config ({name})", conv["image_shape"], conv["channels"], conv["kernel_size"],
        sizes[0])
    declared = architecture.least_weights(sizes, shape)
    held = sum(int(numpy.size(w)) for w in weights.values())
    if declared > held:
        raise ValueError(f"{path}: the config declares sizes {sizes}, which need at least "
                         f"{declared} weights, but the file holds {held}; the file is damaged")


def _check_sizes(name, sizes, minimum, hint=""):
    if sizes is None:
        raise ValueError(f"{name}: give sizes [input_dim, hidden..., latent_dim], or your own "
                         f"encoder and decoder")
    try:
        sizes = list(sizes)
    except TypeError:
        raise ValueError(f"{name}: sizes must be a list of integers, got {sizes!r}") from None
    if len(sizes) < minimum:
        raise ValueError(f"{name}: sizes needs at least {minimum} entries "
                         f"[input_dim, ..., latent_dim], got {sizes}{hint}")
    for i, n in enumerate(sizes):
        if isinstance(n, bool) or not isinstance(n, (int, numpy.integer)) or n <= 0:
            raise ValueError(f"{name}: sizes[{i}] = {n!r}; every size must be a positive "
                             f"integer (sizes = {sizes})")
    return [int(n) for n in sizes]


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, numpy.integer)) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _check_rng(rng):
    from minigrad.distributed import ShardedGenerator  # one rank's part of a batch's noise
    if not isinstance(rng, (numpy.random.Generator, ShardedGenerator)):
        raise TypeError(f"rng must be a numpy.random.Generator (numpy.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


def _floats(total, terms):
    out = {"total": float(total.item())}
    for key, value in terms.items():
        out[key] = float(value.item()) if isinstance(value, Tensor) else float(value)
    return out
