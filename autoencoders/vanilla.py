"""The vanilla (undercomplete) autoencoder.

    h = f(x),    x̂ = g(h),    L = Σ_i ℓ(x_i, x̂_i)

with ℓ the binary cross-entropy (``loss="bce"``) or the squared error
(``loss="mse"``), summed over the features of an example and averaged over the
batch.  Nothing but the narrow code (latent_dim < input_dim) stops it from
learning the identity.
"""
from __future__ import annotations

from .base import Autoencoder

__all__ = ["VanillaAutoencoder"]


class VanillaAutoencoder(Autoencoder):
    """Reconstruction loss only; the code layer is linear by default (like PCA).

    >>> ae = VanillaAutoencoder([64, 32, 8], seed=0)
    >>> history = ae.fit(X, epochs=20, progress=False)          # doctest: +SKIP
    >>> codes = ae.transform(X)                                  # doctest: +SKIP
    """

    flavor = "vanilla"
    default_latent_activation = None

    def _loss(self, x, rng):
        h = self._encode(x)
        reconstruction = self.reconstruction_loss(self.decoder(h), x)
        return reconstruction, {"reconstruction": reconstruction}
