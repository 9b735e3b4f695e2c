"""The denoising autoencoder: reconstruct the clean x from a corrupted copy x̃.

    x̃ ~ C(x̃ | x),    x̂ = g(f(x̃)),    L = ℓ(x, x̂)

The loss compares the reconstruction of the *corrupted* input with the *clean*
input (summed over features, averaged over the batch).  Corruption C is applied
in training only (in :meth:`loss` and :meth:`fit`); ``encode``/``reconstruct``
see the input as given.

* ``noise="gaussian"``: x̃ = x + noise_level · ε, ε ~ N(0, I), clipped to [0, 1]
  (``clip=None`` clips when ``loss="bce"``, whose inputs live in [0, 1]);
* ``noise="masking"``: each feature is set to 0 with probability noise_level;
* ``noise="salt_and_pepper"``: each feature, with probability noise_level, is
  set to 0 or 1 (even odds).
"""
from __future__ import annotations

import numpy

from minigrad import Tensor, replay

from .base import Autoencoder, _check_rng

__all__ = ["DenoisingAutoencoder"]

_NOISES = ("gaussian", "masking", "salt_and_pepper")


class DenoisingAutoencoder(Autoencoder):
    """Reconstruction of the clean input from a corrupted one."""

    flavor = "denoising"
    default_latent_activation = None

    def __init__(self, sizes=None, *, noise="masking", noise_level=0.3, clip=None,
                 **options):
        super().__init__(sizes, hyper=dict(noise=noise, noise_level=noise_level, clip=clip),
                         **options)

    def _check_hyper(self):
        if self.noise not in _NOISES:
            raise ValueError(f"DenoisingAutoencoder: noise={self.noise!r}; expected one of "
                             f"{_NOISES}")
        # a fraction of the pixels for masking and salt-and-pepper, a std for gaussian
        self._check_number("noise_level", 0, numpy.inf if self.noise == "gaussian" else 1)
        if self.clip is not None and not isinstance(self.clip, bool):
            raise TypeError(f"DenoisingAutoencoder: clip must be None (clip to [0, 1] when "
                            f"loss='bce'), True or False, got {self.clip!r}")

    def corrupt(self, x, rng=None):
        """x̃ ~ C(x̃ | x) for a batch (Tensor or array); returns a Tensor, noise from ``rng``."""
        rng = self._rng if rng is None else _check_rng(rng)
        x = self._as_input(x, "corrupt")
        # the noise is drawn on the host (the same numbers on every device) and
        # applied where x is, in float64 like the formula, without reading x back
        xp, data, shape = x.xp, x.data.astype(numpy.float64), x.shape
        if self.noise == "gaussian":
            noisy = data + xp.asarray(self.noise_level * rng.standard_normal(shape))
            if self.clip or (self.clip is None and self.loss_name == "bce"):
                noisy = xp.clip(noisy, 0.0, 1.0)
        elif self.noise == "masking":
            noisy = data * xp.asarray(rng.random(shape) >= self.noise_level)
        else:
            hit = xp.asarray(rng.random(shape) < self.noise_level)
            noisy = xp.where(hit, xp.asarray(rng.random(shape) < 0.5), data)
        return Tensor(noisy.astype(self.dtype), device=x.device)

    def _loss(self, x, rng):
        # corrupted afresh when a recorded training step is replayed
        x_tilde = replay.source(self.corrupt(x, rng), lambda: self.corrupt(x, rng).data)
        reconstruction = self.reconstruction_loss(self.decoder(self._encode(x_tilde)), x)
        return reconstruction, {"reconstruction": reconstruction}
