"""The sparse autoencoder: a penalty on the code *activations* h, not on the weights.

    h = f(x),    x̂ = g(h)

``sparsity="l1"`` (the article's Ω(h)):

    L = ℓ(x, x̂) + l1 · Σ_j |h_j|

``sparsity="kl"`` (sigmoid codes): with ρ̂_j the mean activation of code unit j
over the batch and ρ the target activation,

    L = ℓ(x, x̂) + kl_weight · Σ_j [ρ ln(ρ/ρ̂_j) + (1-ρ) ln((1-ρ)/(1-ρ̂_j))]

ℓ and Σ_j |h_j| are summed over an example and averaged over the batch; the KL
term is one number per batch (ρ̂ is a batch statistic).
"""
from __future__ import annotations

import minigrad
from minigrad import losses

from .base import Autoencoder

__all__ = ["SparseAutoencoder"]

# ρ̂ is kept inside [_EPS, 1 - _EPS] so a saturated unit gives a finite penalty.
_EPS = 1e-6


class SparseAutoencoder(Autoencoder):
    """Reconstruction plus an activity penalty on the code.

    ``sparsity``: ``"l1"`` (weight ``l1``; ReLU codes by default, which the
    penalty drives to exact zeros) or ``"kl"`` (target ``rho``, weight
    ``kl_weight``; needs sigmoid codes, the default then).  Terms: ``"l1"`` is the
    batch mean of Σ_j |h_j|; ``"kl"`` the summed KL divergence.
    """

    flavor = "sparse"

    def __init__(self, sizes=None, *, sparsity="l1", l1=1e-3, rho=0.05, kl_weight=0.1,
                 **options):
        super().__init__(sizes, hyper=dict(sparsity=sparsity, l1=l1, rho=rho,
                                           kl_weight=kl_weight), **options)
        if self.sparsity == "kl" and not self.custom and self.latent_activation != "sigmoid":
            raise ValueError(f"SparseAutoencoder: sparsity='kl' compares mean activations "
                             f"with rho, so it needs latent_activation='sigmoid' (got "
                             f"{self.latent_activation!r})")

    def _check_hyper(self):
        if self.sparsity not in ("l1", "kl"):
            raise ValueError(f"SparseAutoencoder: sparsity={self.sparsity!r}; expected "
                             f"'l1' or 'kl'")
        self._check_number("l1")
        self._check_number("kl_weight")
        self._check_number("rho", 0, 1, open_low=True, open_high=True)

    def _default_latent_activation(self):
        return "sigmoid" if self.sparsity == "kl" else "relu"

    def _per_example_loss(self):
        return self.sparsity == "l1"  # the KL's ρ̂ is a mean over the batch

    def _loss(self, x, rng):
        h = self._encode(x)
        reconstruction = self.reconstruction_loss(self.decoder(h), x)
        if self.sparsity == "l1":
            omega = losses.l1(h, reduction="mean")           # mean over batch of Σ_j |h_j|
            total = reconstruction + self.l1 * omega
            return total, {"reconstruction": reconstruction, "l1": omega}
        rho_hat = minigrad.clip(h.mean(axis=0), _EPS, 1 - _EPS)
        kl = losses.bernoulli_kl(self.rho, rho_hat, reduction="sum")
        total = reconstruction + self.kl_weight * kl
        return total, {"reconstruction": reconstruction, "kl": kl}
