"""Each flavor learns, and each does what it is for, on small synthetic images.

The data: 8x8 "bars" images -- each of the 8 rows and 8 columns is lit with
probability 0.15 -- a classic toy set with a sparse, combinatorial structure.
The comparisons train a flavor and a vanilla autoencoder with the same sizes,
seeds and optimiser settings; their margins were measured over several seeds
(see the comments) and the thresholds sit well inside them.
"""
import time

import numpy as np
import pytest

import minigrad as mg
from minigrad import Tensor, no_grad
from autoencoders import (ContractiveAutoencoder, DenoisingAutoencoder, SparseAutoencoder,
                          VanillaAutoencoder, VariationalAutoencoder)
from autoencoders.contractive import jacobian_norms


@pytest.fixture(autouse=True)
def numpy_backend():
    with mg.set_backend("numpy"):
        yield


from test_autoencoders import bars  # noqa: E402  (the shared synthetic "bars" images)


X_TRAIN, X_TEST = bars(400, seed=0), bars(200, seed=1)
FIT = dict(epochs=30, batch_size=32, lr=3e-3, progress=False)


@pytest.mark.parametrize("cls, options, lr", [
    (VanillaAutoencoder, {}, 3e-3),
    (SparseAutoencoder, {"l1": 0.01}, 3e-3),
    (SparseAutoencoder, {"sparsity": "kl", "rho": 0.1}, 3e-3),
    (DenoisingAutoencoder, {"noise": "masking", "noise_level": 0.3}, 3e-3),
    (ContractiveAutoencoder, {"weight": 0.1}, 3e-3),
    (VariationalAutoencoder, {}, 1e-2),
], ids=["vanilla", "sparse-l1", "sparse-kl", "denoising", "contractive", "variational"])
def test_each_flavor_halves_its_loss_within_seconds(cls, options, lr):
    model = cls([64, 32, 16], seed=0, **options)
    before = model.evaluate(X_TRAIN)["total"]
    started = time.perf_counter()
    history = model.fit(X_TRAIN, **{**FIT, "epochs": 40, "lr": lr})
    seconds = time.perf_counter() - started
    after = model.evaluate(X_TRAIN)["total"]
    print(f"{cls.__name__} {options}: loss {before:.2f} -> {after:.2f} in {seconds:.2f} s")
    assert after <= 0.5 * before, (before, after)
    assert history["total"][-1] < history["total"][0]
    assert seconds < 30


def mean_abs_code(model, X):
    return float(np.abs(model.transform(X)).sum(axis=1).mean())


def test_sparse_codes_are_sparser_than_vanilla():
    # measured, seeds 0-2: vanilla 69-84, sparse (l1 = 0.05) 34-38
    common = dict(latent_activation="relu", seed=0)
    vanilla = VanillaAutoencoder([64, 32, 16], **common)
    sparse = SparseAutoencoder([64, 32, 16], l1=0.05, **common)
    for model in (vanilla, sparse):
        model.fit(X_TRAIN, **FIT)
    v, s = mean_abs_code(vanilla, X_TEST), mean_abs_code(sparse, X_TEST)
    assert s < 0.7 * v, (v, s)
    # ... and still reconstruct: within a few nats of vanilla
    assert sparse.evaluate(X_TEST)["reconstruction"] < vanilla.evaluate(X_TEST)[
        "reconstruction"] + 5


@pytest.mark.parametrize("noise, level", [("masking", 0.3), ("gaussian", 0.3)])
def test_denoising_reconstructs_corrupted_inputs_better_than_vanilla(noise, level):
    # measured, seeds 0-1, squared error to the clean image: masking vanilla 2.8-2.9 vs
    # denoising 1.1-1.2; gaussian 0.62-0.65 vs 0.17-0.18
    vanilla = VanillaAutoencoder([64, 64, 32], seed=0)
    denoising = DenoisingAutoencoder([64, 64, 32], noise=noise, noise_level=level, seed=0)
    for model in (vanilla, denoising):
        model.fit(X_TRAIN, **FIT)
    noisy = denoising.corrupt(X_TEST, rng=np.random.default_rng(5)).numpy()

    def error(model):
        return float(((model.inverse_transform(model.transform(noisy)) - X_TEST) ** 2)
                     .sum(axis=1).mean())
    v, d = error(vanilla), error(denoising)
    assert d < 0.6 * v, (v, d)


def mean_jacobian_norm(model, X):
    with no_grad():
        return float(jacobian_norms(model.encoder, Tensor(X))[1].numpy().mean())


@pytest.mark.parametrize("sizes", [[64, 16], [64, 32, 16]], ids=["one-layer", "two-layer"])
def test_contractive_codes_have_a_smaller_jacobian_than_vanilla(sizes):
    # measured, seeds 0-1 (weight 1): one layer 3.97-4.15 vs 2.09-2.13; two 4.21-4.29 vs 1.56-1.75
    common = dict(latent_activation="sigmoid", seed=0)
    vanilla = VanillaAutoencoder(sizes, **common)
    contractive = ContractiveAutoencoder(sizes, weight=1.0, **common)
    for model in (vanilla, contractive):
        model.fit(X_TRAIN, **FIT)
    v, c = mean_jacobian_norm(vanilla, X_TEST), mean_jacobian_norm(contractive, X_TEST)
    assert c < 0.7 * v, (v, c)


def test_vae_log_likelihood_bounds_and_samples():
    vae = VariationalAutoencoder([64, 32, 8], seed=0)
    vae.fit(X_TRAIN, **{**FIT, "lr": 1e-2})
    elbo = vae.elbo(X_TEST)
    np.testing.assert_array_equal(elbo, vae.elbo(X_TEST))          # deterministic
    assert np.all(np.isfinite(elbo)) and np.all(elbo < 0)
    # -ELBO is the loss (beta = 1, BCE); both draw their noise from default_rng(0)
    assert -elbo.mean() == pytest.approx(vae.evaluate(X_TEST)["total"], rel=1e-5)
    ll = vae.log_likelihood(X_TEST, k=64)
    assert ll.shape == (len(X_TEST),)
    assert ll.mean() >= elbo.mean()
    assert ll.mean() >= vae.log_likelihood(X_TEST, k=1).mean()
    samples = vae.sample(10, rng=np.random.default_rng(0))
    assert samples.shape == (10, 64) and samples.min() >= 0 and samples.max() <= 1
