"""Autoencoders on minigrad: vanilla, sparse, denoising, contractive and variational.

>>> from autoencoders import VariationalAutoencoder
>>> vae = VariationalAutoencoder([784, 256, 16], seed=0)
>>> history = vae.fit(X, epochs=10)                  # doctest: +SKIP
>>> vae.save("vae.npz")                              # doctest: +SKIP

Every flavor subclasses :class:`Autoencoder` (``autoencoders.base``) and lives in
its own module, whose docstring gives its equation.  Data helpers are in
``autoencoders.datasets``.
"""
from types import MappingProxyType

from .base import FORMAT_VERSION, Autoencoder
from .vanilla import VanillaAutoencoder
from .sparse import SparseAutoencoder
from .denoising import DenoisingAutoencoder
from .contractive import ContractiveAutoencoder
from .variational import VariationalAutoencoder

__version__ = "0.1.0"

#: flavor name ("vanilla", "sparse", ...) -> class, read-only.
FLAVORS = MappingProxyType(Autoencoder._flavors)

__all__ = ["Autoencoder", "VanillaAutoencoder", "SparseAutoencoder", "DenoisingAutoencoder",
           "ContractiveAutoencoder", "VariationalAutoencoder", "FLAVORS", "FORMAT_VERSION"]
