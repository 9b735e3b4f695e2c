"""A scikit-learn transformer around the autoencoders: :class:`AutoencoderTransformer`.

>>> from sklearn.linear_model import LogisticRegression
>>> from sklearn.model_selection import GridSearchCV
>>> from sklearn.pipeline import make_pipeline
>>> from autoencoders.estimator import AutoencoderTransformer
>>> pipe = make_pipeline(AutoencoderTransformer(latent=16, epochs=20),
...                      LogisticRegression(max_iter=1000))
>>> search = GridSearchCV(pipe, {"autoencodertransformer__latent": [8, 16, 32]})
>>> search.fit(X, y).best_params_                        # doctest: +SKIP

:class:`~autoencoders.base.Autoencoder` keeps its own API -- ``fit`` returns the
history and a second call continues training -- so this module adapts it rather
than changing it: the adapter's ``fit`` builds a fresh model from
``autoencoders.FLAVORS`` every time and returns the estimator.

scikit-learn is an optional dependency (>= 1.6, for ``validate_data`` and the
estimator tags): it is imported here only, and ``import autoencoders`` does not
import this module.
"""
from __future__ import annotations

import contextlib
import inspect
import numbers
from collections.abc import Mapping

import numpy

try:
    from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.validation import check_array, check_is_fitted, validate_data
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "autoencoders.estimator needs scikit-learn >= 1.6 (it uses "
        "sklearn.utils.validation.validate_data and the estimator tags): "
        "pip install 'scikit-learn>=1.6'") from error

import minigrad

from . import FLAVORS
from .base import Autoencoder

__all__ = ["AutoencoderTransformer"]

_AUTO = "auto"
_FLOAT_DTYPES = ("float32", "float64")


class AutoencoderTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """An autoencoder as a scikit-learn transformer: ``transform`` gives the codes.

    ``fit(X)`` builds a new autoencoder of flavor ``flavor`` with sizes
    ``[n_features, *hidden, latent]`` (the decoder mirrors them), trains it for
    ``epochs`` epochs and returns the estimator.  Every call to ``fit`` starts
    from fresh weights, so fitting twice with the same ``random_state`` gives the
    same model (unlike :meth:`Autoencoder.fit`, which continues training).  It can
    stand in a :class:`~sklearn.pipeline.Pipeline`, be cloned, and be tuned by
    :class:`~sklearn.model_selection.GridSearchCV` (parameters ``latent``,
    ``hidden``, ``flavor_params``, ...).

    Parameters
    ----------
    flavor : str, default="vanilla"
        A key of ``autoencoders.FLAVORS``: ``"vanilla"``, ``"sparse"``,
        ``"denoising"``, ``"contractive"`` or ``"variational"``.
    hidden : int or tuple of int, default=(256,)
        Widths of the encoder's hidden layers, input side first; ``()`` for none.
    latent : int, default=32
        Width of the code: the number of output features of ``transform``.
    activation : str, default="relu"
        Activation of the hidden layers.
    latent_activation : str or None, default="auto"
        Activation of the code layer; ``"auto"`` takes the flavor's default
        (linear for vanilla and denoising, ReLU for sparse L1, sigmoid for sparse
        KL and contractive); ``None`` is linear.  Must stay ``"auto"`` (or
        ``None``) for the variational flavor, whose code is the mean mu(x).
    output : {"auto", "sigmoid", "identity"}, default="auto"
        What the decoder's output passes through: ``"auto"`` is ``"sigmoid"``
        with ``loss="bce"`` and ``"identity"`` with ``loss="mse"``.
    loss : {"mse", "bce"}, default="mse"
        Reconstruction loss.  ``"mse"`` works on any real data; ``"bce"`` needs
        every value in [0, 1] (e.g. pixels / 255) and raises a ValueError otherwise.
    flavor_params : dict or None, default=None
        The flavor's own hyper-parameters, e.g. ``{"sparsity": "l1", "l1": 1e-3}``
        for ``"sparse"``, ``{"noise": "masking", "noise_level": 0.3}`` for
        ``"denoising"``, ``{"weight": 0.1}`` for ``"contractive"``, ``{"beta": 1.0,
        "kl_warmup_epochs": 0}`` for ``"variational"``; None for the defaults.
    epochs : int, default=10
        Passes over the training data.
    batch_size : int, default=128
        Minibatch size; larger than the number of rows is fine (one batch).
    lr : float, default=1e-3
        Learning rate of the optimizer.
    optimizer : {"adam", "adamw", "sgd"}, default="adam"
    dtype : {"float32", "float64"}, default="float32"
        Precision of the weights, and the dtype of what ``transform`` returns
        (whatever the dtype of ``X``).
    backend : {"numpy", "numba", "cupy"} or None, default=None
        minigrad backend for building, training and transforming; None uses the
        active one.  With ``"cupy"`` the model lives on the GPU; ``transform``
        still returns NumPy arrays.
    random_state : int, RandomState instance or None, default=0
        Seeds the weight initialisation, the shuffling and the training noise.  An
        int gives the same model bit for bit on the same backend; None (or a
        RandomState) draws the seed, so fits differ.

    Attributes
    ----------
    model_ : Autoencoder
        The trained autoencoder (use it for anything the adapter does not expose:
        ``save``, ``reconstruct``, ``sample`` for a VAE, ...).
    history_ : dict
        What :meth:`Autoencoder.fit` returned: ``{term: [mean per epoch]}``.
    seed_ : int
        The seed the model was built and trained with.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of str
        Names of the features seen during fit, when ``X`` had string column names.

    Notes
    -----
    ``score(X)`` is **minus** the mean training loss per example (the
    reconstruction loss, summed over the features, plus the flavor's weighted
    penalty), so that higher is better as scikit-learn expects.  It compares
    models of the same flavor and penalty weights, e.g. code sizes; across
    flavors or penalty weights the penalty differs, so judge those by a
    downstream estimator's score (in a Pipeline, the final step scores).

    The estimator passes ``sklearn.utils.estimator_checks.check_estimator`` with
    no expected failures under its defaults (``loss="mse"``).  With
    ``loss="bce"`` it only accepts data in [0, 1], which the generic checks do
    not generate.
    """

    def __init__(self, flavor="vanilla", *, hidden=(256,), latent=32, activation="relu",
                 latent_activation=_AUTO, output=_AUTO, loss="mse", flavor_params=None,
                 epochs=10, batch_size=128, lr=1e-3, optimizer="adam", dtype="float32",
                 backend=None, random_state=0):
        self.flavor = flavor
        self.hidden = hidden
        self.latent = latent
        self.activation = activation
        self.latent_activation = latent_activation
        self.output = output
        self.loss = loss
        self.flavor_params = flavor_params
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.optimizer = optimizer
        self.dtype = dtype
        self.backend = backend
        self.random_state = random_state

    # -- scikit-learn API -------------------------------------------------------------
    def fit(self, X, y=None):
        """Build a fresh autoencoder and train it on the rows of ``X``; returns self.

        ``y`` is ignored (present for Pipeline compatibility).
        """
        for name in ("model_", "history_", "seed_"):  # a failed refit leaves no stale model
            self.__dict__.pop(name, None)
        cls, options = self._model_class_and_options()
        seed = self._seed()
        X = validate_data(self, X, dtype=(numpy.float64, numpy.float32))
        with self._backend():
            model = cls([X.shape[1], *self._hidden(), self.latent], seed=seed, **options)
            history = model.fit(X, epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                                optimizer=self.optimizer, seed=seed, progress=False,
                                backend=self.backend)
        self.model_ = model
        self.history_ = history
        self.seed_ = seed
        return self

    def transform(self, X):
        """The codes of the rows of ``X``: an array (n_samples, latent) of ``dtype``."""
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=(numpy.float64, numpy.float32), reset=False)
        with self._backend():
            return self.model_.transform(X)

    def inverse_transform(self, X):
        """The reconstructions decoded from the codes ``X`` (n_samples, latent): an
        array (n_samples, n_features_in_); probabilities when ``output`` is sigmoid."""
        check_is_fitted(self, "model_")
        H = check_array(X, dtype=(numpy.float64, numpy.float32))
        if H.shape[1] != self.model_.latent_dim:
            raise ValueError(f"X has {H.shape[1]} features, but {type(self).__name__}."
                             f"inverse_transform is expecting {self.model_.latent_dim} "
                             f"features (the code size) as input.")
        with self._backend():
            return self.model_.inverse_transform(H)

    def score(self, X, y=None):
        """Minus the mean loss per example of the rows of ``X`` (higher is better).

        The loss is the training objective (``Autoencoder.evaluate(X)["total"]``):
        the reconstruction loss summed over the features, plus the flavor's
        weighted penalty; the training noise of the denoising and variational
        flavors is drawn from a fixed seed, so the score is deterministic.
        ``y`` is ignored.
        """
        check_is_fitted(self, "model_")
        X = validate_data(self, X, dtype=(numpy.float64, numpy.float32), reset=False)
        with self._backend():
            return -float(self.model_.evaluate(X)["total"])

    @property
    def _n_features_out(self):
        """The code size, for ``get_feature_names_out`` (``autoencodertransformer0``, ...)."""
        return self.model_.latent_dim

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # transform returns the model's dtype whatever X's, so that is the only dtype
        # preserved (and the default output dtype)
        tags.transformer_tags.preserves_dtype = [self._dtype_name()]
        return tags

    # -- helpers ----------------------------------------------------------------------
    def _dtype_name(self):
        try:
            name = numpy.dtype(self.dtype).name
        except TypeError:
            return "float32"  # the model rejects it in fit; tags must not raise
        return name if name in _FLOAT_DTYPES else "float32"

    def _hidden(self):
        hidden = self.hidden
        if hidden is None:
            return ()
        if isinstance(hidden, numbers.Integral) and not isinstance(hidden, bool):
            return (int(hidden),)
        try:
            return tuple(hidden)
        except TypeError:
            raise ValueError(f"{type(self).__name__}: hidden must be an int or a sequence of "
                             f"ints (hidden layer widths), got {hidden!r}") from None

    def _model_class_and_options(self):
        """The flavor's class and its constructor's keyword arguments (``sizes`` and
        ``seed`` aside), checked here where the model would raise less clearly."""
        name = type(self).__name__
        if not isinstance(self.flavor, str) or self.flavor not in FLAVORS:
            raise ValueError(f"{name}: flavor={self.flavor!r}; expected one of "
                             f"{sorted(FLAVORS)}")
        cls = FLAVORS[self.flavor]
        params = {} if self.flavor_params is None else self.flavor_params
        if not isinstance(params, Mapping):
            raise ValueError(f"{name}: flavor_params must be a dict of the {self.flavor!r} "
                             f"flavor's hyper-parameters or None, got {params!r}")
        allowed = _hyper_parameters(cls)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"{name}: flavor_params {unknown} are not hyper-parameters of "
                             f"the {self.flavor!r} flavor; it has "
                             f"{sorted(allowed) if allowed else 'none'}")
        options = dict(params)
        options.update(activation=self.activation, loss=self.loss, dtype=self.dtype)
        if isinstance(self.output, str) and self.output == _AUTO:
            options["output"] = "sigmoid" if self.loss == "bce" else "identity"
        else:
            options["output"] = self.output
        if not (isinstance(self.latent_activation, str) and self.latent_activation == _AUTO):
            options["latent_activation"] = self.latent_activation
        return cls, options

    def _seed(self):
        """The model's seed: ``random_state`` itself when an int, else drawn from it."""
        state = self.random_state
        if isinstance(state, numbers.Integral) and not isinstance(state, bool):
            if state < 0:
                raise ValueError(f"{type(self).__name__}: random_state must be a "
                                 f"non-negative int, a RandomState or None, got {state!r}")
            return int(state)
        return int(check_random_state(state).randint(0, 2**31 - 1))

    def _backend(self):
        if self.backend is None:
            return contextlib.nullcontext()
        return minigrad.use_backend(self.backend)  # this thread only: fits run side by side


def _hyper_parameters(cls):
    """The keyword-only arguments a flavor's constructor adds to Autoencoder's."""
    def keywords(init):
        return {p.name for p in inspect.signature(init).parameters.values()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return keywords(cls.__init__) - keywords(Autoencoder.__init__)
