"""The variational autoencoder (Kingma & Welling, 2014).

The encoder gives a Gaussian q(z | x) = N(μ(x), diag σ²(x)) through two heads,
μ and log σ²; a code is drawn with the reparameterization trick

    z = μ + exp(log σ² / 2) ⊙ ε,    ε ~ N(0, I)   (ε from the ``rng`` passed in)

so gradients reach μ and log σ² through z.  The loss is the negative ELBO, with a
weight β on the KL term, averaged over the batch:

    L = -E_q[ln p(x | z)] + β · KL(N(μ, σ²) ‖ N(0, I))
    KL = ½ Σ_j (σ_j² + μ_j² - 1 - ln σ_j²)

-E_q[ln p(x | z)] is estimated with one z per example: the Bernoulli
cross-entropy summed over the pixels (``loss="bce"``), or the squared error
summed over the pixels (``loss="mse"``), which is -ln N(x; x̂, ½ I) up to the
constant (D/2) ln π that :meth:`VariationalAutoencoder.elbo` adds back.

KL warm-up: with ``kl_warmup_epochs=k``, ``fit`` uses β · min(1, epoch / k) in
epoch ``epoch`` (0, 1, ...), so β ramps linearly from 0; outside ``fit`` it is β.
"""
from __future__ import annotations

import math

import numpy

import minigrad
from minigrad import losses, nn, no_grad

from .base import Autoencoder, _check_rng, _positive_int

__all__ = ["VariationalAutoencoder", "GaussianEncoder", "reparameterize", "Reparameterize"]

_LOG_2PI = math.log(2 * math.pi)


class Reparameterize(minigrad.Function):
    """z = μ + σ ⊙ ε with σ = exp(log σ² / 2), as one node.

    backward:  ∂L/∂μ = g;   ∂L/∂log σ² = g ⊙ σ ⊙ ε / 2;   ∂L/∂ε = g ⊙ σ
    """

    def forward(self, mu, log_var, eps):
        sigma = self.xp.exp(0.5 * log_var)
        self.save_for_backward(sigma, eps)
        return mu + sigma * eps

    def backward(self, g):
        sigma, eps = self.saved
        need_mu, need_lv, need_eps = self.needs_input_grad
        g_sigma = g * sigma
        return ((g if need_mu else None), (0.5 * g_sigma * eps if need_lv else None),
                (g_sigma if need_eps else None))


def reparameterize(mu, log_var, eps):
    """z = μ + exp(log σ² / 2) ⊙ ε: a sample of N(μ, σ²) differentiable in μ and log σ²
    (the three broadcast together; see :class:`Reparameterize`)."""
    return Reparameterize.apply(mu, log_var, eps)


class GaussianEncoder(nn.Module):
    """``body`` then two linear heads: ``x -> (mu, log_var)``."""

    def __init__(self, body, mu, log_var):
        super().__init__()
        self.body, self.mu, self.log_var = body, mu, log_var

    def forward(self, x):
        features = self.body(x)
        return self.mu(features), self.log_var(features)


class VariationalAutoencoder(Autoencoder):
    """A VAE; ``sizes = [input_dim, hidden..., latent_dim]`` (the heads map the last
    hidden layer -- or the input, for two sizes -- to μ and log σ²).

    ``beta`` weighs the KL term (β-VAE); ``kl_warmup_epochs`` ramps it in.  With
    your own Modules, ``encoder`` is the body and ``latent_dim`` is required.
    Terms: ``"reconstruction"`` and ``"kl"`` (the unweighted KL, batch mean).
    """

    flavor = "variational"
    _has_latent_activation = False
    _fully_convolutional = False  # the mu and log_var heads are Dense layers to latent_dim

    def __init__(self, sizes=None, *, beta=1.0, kl_warmup_epochs=0, **options):
        if options.get("latent_activation") is not None:
            raise ValueError("VariationalAutoencoder: the mu and log_var heads are linear; "
                             "latent_activation does not apply")
        options["latent_activation"] = None
        super().__init__(sizes, hyper=dict(beta=beta, kl_warmup_epochs=kl_warmup_epochs),
                         **options)
        self._kl_scale = 1.0

    def _check_hyper(self):
        self._check_number("beta")
        self._check_number("kl_warmup_epochs", integer=True)

    # -- building -------------------------------------------------------------------
    def _build_encoder(self, rng):
        front, width = self._front(rng)
        s = [width, *self.sizes[1:]]
        body = nn.Sequential(front + [self._dense(a, b, self.activation, rng)
                                      for a, b in zip(s[:-2], s[1:-1])])
        return GaussianEncoder(body, self._dense(s[-2], s[-1], None, rng),
                               self._dense(s[-2], s[-1], None, rng))

    def _wrap_custom_encoder(self, body, latent_dim):
        if latent_dim is None:
            raise ValueError("VariationalAutoencoder: with your own encoder (the body), give "
                             "latent_dim for the mu and log_var heads")
        with no_grad():
            width = body(minigrad.Tensor(numpy.zeros((1, self.input_dim), self.dtype))).shape[-1]
        rng = numpy.random.default_rng(self.seed)
        return GaussianEncoder(body, self._dense(width, latent_dim, None, rng),
                               self._dense(width, latent_dim, None, rng))

    def _encode(self, x):
        return self.encoder(x)[0]  # the code of x is the mean μ(x)

    # -- the loss ---------------------------------------------------------------------
    @property
    def current_beta(self):
        """The KL weight in use: β, or β · min(1, epoch / kl_warmup_epochs) inside fit."""
        return self.beta * self._kl_scale

    def _begin_epoch(self, epoch, epochs):
        warmup = self.kl_warmup_epochs
        self._kl_scale = min(1.0, epoch / warmup) if warmup else 1.0

    def _end_fit(self):
        self._kl_scale = 1.0

    def _loss(self, x, rng):
        mu, log_var = self.encoder(x)
        z = reparameterize(mu, log_var, self._noise(rng, mu.shape))
        reconstruction = self.reconstruction_loss(self.decoder(z), x)
        kl = losses.gaussian_kl(mu, log_var, reduction="mean")
        total = reconstruction + self.current_beta * kl
        return total, {"reconstruction": reconstruction, "kl": kl}

    # -- generating ---------------------------------------------------------------------
    def sample(self, n, rng=None):
        """``n`` new examples x̂ = g(z), z ~ N(0, I), as a NumPy array (probabilities
        with ``output="sigmoid"``)."""
        rng = numpy.random.default_rng() if rng is None else _check_rng(rng)
        z = rng.standard_normal((_positive_int("n", n), self.latent_dim))
        return self.inverse_transform(z)

    def decode_grid(self, grid):
        """Decode every latent point of ``grid`` (shape (..., latent_dim)); returns an
        array of shape (..., input_dim).  See :meth:`latent_grid`."""
        grid = numpy.asarray(grid)
        if grid.ndim < 1 or grid.shape[-1] != self.latent_dim:
            raise ValueError(f"decode_grid: grid has shape {grid.shape}; expected "
                             f"(..., {self.latent_dim})")
        flat = self.inverse_transform(grid.reshape(-1, self.latent_dim))
        return flat.reshape(grid.shape[:-1] + (self.input_dim,))

    def latent_grid(self, n=10, span=2.0, dims=(0, 1)):
        """An (n, n, latent_dim) grid over latent dimensions ``dims``, each from -span to
        span, the others 0; row i varies ``dims[0]`` (top = +span), column j ``dims[1]``."""
        if self.latent_dim < 2:
            raise ValueError("latent_grid: needs a latent space of at least 2 dimensions")
        values = numpy.linspace(-span, span, _positive_int("n", n))
        grid = numpy.zeros((n, n, self.latent_dim))
        grid[:, :, dims[0]] = values[::-1, None]
        grid[:, :, dims[1]] = values[None, :]
        return grid

    # -- likelihoods ----------------------------------------------------------------------
    def _log_px(self, pre, x):
        """ln p(x | z) per example from the decoder output ``pre`` (see the module doc)."""
        log_px = -self.reconstruction_terms(pre, x).numpy().astype(numpy.float64)
        if self.loss_name == "mse":
            log_px -= 0.5 * self.input_dim * math.log(math.pi)
        return log_px

    def elbo(self, X, rng=None, batch_size=512):
        """The evidence lower bound E_q[ln p(x|z)] - KL, in nats, per row of ``X``.

        One reparameterized sample per example; ``rng`` defaults to a fixed seed,
        so the result is deterministic.
        """
        X = self._check_data(X, "X", bounded=True)
        rng = numpy.random.default_rng(0) if rng is None else _check_rng(rng)
        out = []
        with no_grad():
            for start in range(0, len(X), _positive_int("batch_size", batch_size)):
                x = self._tensor(X[start:start + batch_size])
                mu, log_var = self.encoder(x)
                z = reparameterize(mu, log_var, self._noise(rng, mu.shape))
                kl = losses.gaussian_kl(mu, log_var, reduction="none").numpy()
                out.append(self._log_px(self.decoder(z), x) - kl)
        return numpy.concatenate(out)

    def log_likelihood(self, X, k=100, rng=None, batch_size=None):
        """Importance-sampled ln p(x) per row of ``X`` with ``k`` samples of q(z|x):

            ln p(x) ≈ logsumexp_i [ln p(x|z_i) + ln p(z_i) - ln q(z_i|x)] - ln k

        A lower bound that is never below the ELBO on average and tightens as k
        grows (Burda et al., 2016).  ``rng`` defaults to a fixed seed.
        """
        X = self._check_data(X, "X", bounded=True)
        k = _positive_int("k", k)
        rng = numpy.random.default_rng(0) if rng is None else _check_rng(rng)
        batch_size = max(1, 4096 // k) if batch_size is None else \
            _positive_int("batch_size", batch_size)
        out = []
        with no_grad():
            for start in range(0, len(X), batch_size):
                xb = X[start:start + batch_size]
                b = len(xb)
                mu, log_var = (t.numpy().astype(numpy.float64)
                               for t in self.encoder(self._tensor(xb)))
                eps = rng.standard_normal((b, k, self.latent_dim))
                z = mu[:, None] + numpy.exp(0.5 * log_var)[:, None] * eps
                pre = self.decoder(self._tensor(z.reshape(b * k, self.latent_dim)))
                log_px = self._log_px(pre, self._tensor(numpy.repeat(xb, k, axis=0)))
                log_pz = -0.5 * (z * z + _LOG_2PI).sum(axis=-1)
                log_qz = -0.5 * (eps * eps + log_var[:, None] + _LOG_2PI).sum(axis=-1)
                log_w = log_px.reshape(b, k) + log_pz - log_qz
                top = log_w.max(axis=1, keepdims=True)
                out.append(top[:, 0] + numpy.log(numpy.exp(log_w - top).mean(axis=1)))
        return numpy.concatenate(out)
