"""Exact gradients and the maths of the autoencoders.

* every flavor's total loss against central finite differences w.r.t. every
  parameter (float64, Hypothesis chooses small sizes, activations and losses; the
  noise is fixed by passing a fresh generator with the same seed to each call);
* the contractive penalty against the Jacobian of ``encode`` by finite differences;
* the VAE's closed-form KL against a Monte Carlo estimate, and the
  reparameterized gradient of E[f(z)] against the analytic one for a quadratic f.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from minigrad import Tensor, nn, no_grad
from autoencoders import (ContractiveAutoencoder, DenoisingAutoencoder, SparseAutoencoder,
                          VanillaAutoencoder, VariationalAutoencoder)
from autoencoders.contractive import jacobian_norms
from autoencoders.variational import reparameterize

from helpers import CPU_DEVICES, check_loss_gradients

SETTINGS = settings(max_examples=20, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

#: the gradient checks run on both CPU backends (the ``device`` fixture, which skips
#: "numba" saying why when Numba is missing)
on_cpu = pytest.mark.parametrize("device", CPU_DEVICES, indirect=True)


@pytest.fixture(autouse=True)
def numpy_backend():
    with mg.set_backend("numpy"):
        yield


@st.composite
def common(draw, activations=("relu", "tanh", "sigmoid", "leaky_relu")):
    """Constructor options shared by every flavor, and a batch size."""
    hidden = draw(st.lists(st.integers(2, 4), max_size=1))
    sizes = [draw(st.integers(2, 5)), *hidden, draw(st.integers(1, 3))]
    loss = draw(st.sampled_from(["bce", "mse"]))
    output = "sigmoid" if loss == "bce" else draw(st.sampled_from(["sigmoid", "identity"]))
    options = dict(sizes=sizes, loss=loss, output=output,
                   activation=draw(st.sampled_from(activations)),
                   seed=draw(st.integers(0, 2 ** 16)), dtype="float64")
    return options, draw(st.integers(1, 4))


@on_cpu
@SETTINGS
@given(common(), st.sampled_from([None, "relu", "tanh", "sigmoid"]))
def test_vanilla_gradients(device, opts, latent_activation):
    options, batch = opts
    model = VanillaAutoencoder(latent_activation=latent_activation, **options)
    check_loss_gradients(model, batch, options["seed"])


@on_cpu
@SETTINGS
@given(common(), st.sampled_from(["l1", "kl"]), st.sampled_from([None, "relu", "tanh"]),
       st.floats(0.01, 1.0), st.floats(0.05, 0.5))
def test_sparse_gradients(device, opts, sparsity, latent_activation, weight, rho):
    options, batch = opts
    if sparsity == "kl":
        latent_activation = "sigmoid"
    model = SparseAutoencoder(sparsity=sparsity, l1=weight, kl_weight=weight, rho=rho,
                              latent_activation=latent_activation, **options)
    check_loss_gradients(model, batch, options["seed"])


@on_cpu
@SETTINGS
@given(common(), st.sampled_from(["gaussian", "masking", "salt_and_pepper"]),
       st.floats(0.05, 0.5))
def test_denoising_gradients(device, opts, noise, level):
    options, batch = opts
    model = DenoisingAutoencoder(noise=noise, noise_level=level, **options)
    check_loss_gradients(model, batch, options["seed"])


@on_cpu
@SETTINGS
@given(common(activations=("relu", "tanh", "sigmoid", "softplus")),
       st.sampled_from(["sigmoid", "tanh", "relu", None]), st.floats(0.1, 3.0))
def test_contractive_gradients(device, opts, latent_activation, weight):
    options, batch = opts
    model = ContractiveAutoencoder(weight=weight, latent_activation=latent_activation,
                                   **options)
    check_loss_gradients(model, batch, options["seed"])


@on_cpu
@SETTINGS
@given(common(), st.floats(0.0, 4.0))
def test_variational_gradients(device, opts, beta):
    options, batch = opts
    model = VariationalAutoencoder(beta=beta, **options)
    check_loss_gradients(model, batch, options["seed"])


# ----------------------------------------------------------------------------
# the contractive penalty is the Jacobian's squared Frobenius norm
# ----------------------------------------------------------------------------

def finite_difference_jacobian(encode, x, eps=1e-6):
    """J[n, j, i] = d h_j / d x_i per example, by central differences of ``encode``."""
    columns = []
    for i in range(x.shape[1]):
        step = np.zeros_like(x)
        step[:, i] = eps
        with no_grad():
            up, down = encode(x + step).numpy(), encode(x - step).numpy()
        columns.append((up - down) / (2 * eps))
    return np.stack(columns, axis=-1)


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "relu"])
@pytest.mark.parametrize("sizes", [[6, 4], [6, 5, 3], [7, 5, 4, 2]],
                         ids=["one-layer", "two-layer", "three-layer"])
def test_contractive_penalty_is_the_squared_frobenius_norm(activation, sizes):
    model = ContractiveAutoencoder(sizes, activation=activation, latent_activation=activation,
                                   dtype="float64", seed=3)
    x = np.random.default_rng(0).random((5, sizes[0]))
    expected = (finite_difference_jacobian(model.encode, x) ** 2).sum(axis=(1, 2))
    assert expected.mean() > 0  # (a ReLU code may be dead for some examples)
    _, norms = jacobian_norms(model.encoder, Tensor(x))
    np.testing.assert_allclose(norms.numpy(), expected, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(model.contractive_penalty(x).item(), expected.mean(), rtol=1e-6)
    # and the penalty alone has exact gradients w.r.t. every weight
    assert mg.gradcheck(lambda *p: model.contractive_penalty(x), model.parameters())


def test_contractive_penalty_with_activation_modules_and_custom_encoder():
    rng = np.random.default_rng(1)
    encoder = nn.Sequential(nn.Dense(6, 5, dtype="float64", rng=rng), nn.Tanh(),
                            nn.Sequential(nn.Dense(5, 3, dtype="float64", rng=rng),
                                          nn.Softplus()))
    decoder = nn.Dense(3, 6, dtype="float64", rng=rng)
    model = ContractiveAutoencoder(encoder=encoder, decoder=decoder, input_dim=6)
    x = rng.random((4, 6))
    expected = (finite_difference_jacobian(model.encode, x) ** 2).sum(axis=(1, 2)).mean()
    np.testing.assert_allclose(model.contractive_penalty(x).item(), expected, rtol=1e-6)


def test_contractive_rejects_an_encoder_it_cannot_differentiate():
    class Square(nn.Module):
        def forward(self, x):
            return x * x
    with pytest.raises(ValueError, match="Dense and Conv2d layers.*found Square"):
        ContractiveAutoencoder(encoder=nn.Sequential(nn.Dense(4, 2), Square()),
                               decoder=nn.Dense(2, 4), input_dim=4)
    transposed = nn.Sequential(nn.Unflatten((1, 2, 2)), nn.ConvTranspose2d(1, 1, 1), nn.Flatten())
    with pytest.raises(ValueError, match="found ConvTranspose2d"):
        ContractiveAutoencoder(encoder=transposed, decoder=nn.Dense(4, 4), input_dim=4)


# ----------------------------------------------------------------------------
# the VAE: closed-form KL, reparameterized gradients
# ----------------------------------------------------------------------------

def test_closed_form_kl_matches_monte_carlo():
    model = VariationalAutoencoder([6, 5, 3], dtype="float64", seed=2)
    x = np.random.default_rng(0).random((4, 6))
    with no_grad():
        mu, log_var = (t.numpy() for t in model.encoder(Tensor(x)))
    mu, log_var = mu + np.array([0.5, -1.0, 0.0]), log_var + np.array([0.3, -0.7, 1.0])
    closed = mg.losses.gaussian_kl(Tensor(mu), Tensor(log_var), reduction="none").numpy()

    eps = np.random.default_rng(1).standard_normal((200_000,) + mu.shape)
    z = mu + np.exp(log_var / 2) * eps
    log_q = -0.5 * (eps ** 2 + log_var + np.log(2 * np.pi)).sum(-1)
    log_p = -0.5 * (z ** 2 + np.log(2 * np.pi)).sum(-1)
    samples = log_q - log_p
    se = samples.std(axis=0) / np.sqrt(len(samples))
    assert np.all(np.abs(samples.mean(axis=0) - closed) < 5 * se + 1e-9), \
        (samples.mean(axis=0), closed, se)
    # the loss reports the same closed form, averaged over the batch
    model.encoder.mu.bias.data[...] += [0.5, -1.0, 0.0]
    model.encoder.log_var.bias.data[...] += [0.3, -0.7, 1.0]
    _, terms = model.loss(x, rng=np.random.default_rng(0))
    np.testing.assert_allclose(terms["kl"], closed.mean(), rtol=1e-12)


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_reparameterize_node_gradcheck_with_broadcasting(data):
    """The Reparameterize node against central differences, for mu, log_var and eps,
    with shapes that broadcast (a shared mu / log_var over a batch of eps)."""
    width = data.draw(st.integers(1, 4))
    batch = data.draw(st.integers(1, 4))
    shapes = data.draw(st.permutations([(batch, width), (width,), (1, width)]))
    values = [data.draw(hnp.arrays(np.float64, s, elements=st.floats(-2, 2))) for s in shapes]
    tensors = [Tensor(v, requires_grad=True) for v in values]
    assert mg.gradcheck(lambda m, lv, e: reparameterize(m, lv, e), tensors)


def test_reparameterized_gradient_matches_analytic_for_a_quadratic():
    # f(z) = sum_j a_j z_j^2 + b_j z_j, z ~ N(mu, e^lv):
    # E f = sum_j a_j (mu_j^2 + e^lv_j) + b_j mu_j, so dE/dmu = 2 a mu + b, dE/dlv = a e^lv.
    a, b = np.array([1.0, -0.5, 2.0]), np.array([0.3, 1.0, -2.0])
    mu = Tensor(np.array([0.2, -1.0, 0.7]), requires_grad=True)
    log_var = Tensor(np.array([-0.5, 0.4, 0.0]), requires_grad=True)
    n = 100_000
    eps = np.random.default_rng(0).standard_normal((n, 3))
    z = reparameterize(mu, log_var, Tensor(eps))
    (Tensor(a) * z * z + Tensor(b) * z).sum(axis=1).mean().backward()

    m, lv, sigma = mu.numpy(), log_var.numpy(), np.exp(log_var.numpy() / 2)
    zs = m + sigma * eps
    per_sample_mu = 2 * a * zs + b                      # d f(z_s) / d mu
    per_sample_lv = (2 * a * zs + b) * 0.5 * sigma * eps  # d f(z_s) / d log_var
    for grad, exact, samples in ((mu.grad, 2 * a * m + b, per_sample_mu),
                                 (log_var.grad, a * np.exp(lv), per_sample_lv)):
        np.testing.assert_allclose(grad, samples.mean(axis=0), rtol=1e-9)  # same estimator
        se = samples.std(axis=0) / np.sqrt(n)
        assert np.all(np.abs(grad - exact) < 5 * se), (grad, exact, se)
