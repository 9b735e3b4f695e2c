"""minigrad.losses on both backends: values against NumPy formulas, gradcheck in
float64 for every loss and reduction, the fused (Numba) and plain (NumPy) paths
against each other, and stability at extreme inputs."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from minigrad import losses

from helpers import arrays, float_dtypes, host, small_shapes, tolerance

SETTINGS = settings(max_examples=10, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])
REDUCTIONS = ["mean", "sum", "batchmean", "none"]


def leaf(a):
    return mg.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


@st.composite
def pair(draw, low=-3.0, high=3.0, t_low=0.0, t_high=1.0):
    shape = draw(small_shapes)
    a = draw(hnp.arrays(np.float64, shape, elements=st.floats(low, high)))
    b = draw(hnp.arrays(np.float64, shape, elements=st.floats(t_low, t_high)))
    return a, b


def reduce(terms, reduction):
    return {"mean": np.mean, "sum": np.sum, "none": lambda a: a,
            "batchmean": lambda a: np.sum(a) / (max(a.shape[0], 1) if a.ndim else 1),
            }[reduction](terms)


# ----------------------------------------------------------------------------
# gradients (float64, central differences) and values
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(-3, 3, -3, 3))
def test_mse(device, reduction, data):
    a, b = data
    mg.gradcheck(lambda a, b: losses.mse(a, b, reduction=reduction), [leaf(a), leaf(b)])
    np.testing.assert_allclose(losses.mse(a, b, reduction=reduction).numpy(),
                               reduce((a - b) ** 2, reduction), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(-8, 8))
def test_bce_with_logits(device, reduction, data):
    x, t = data
    # finite differences step the target just outside [0, 1], where the range check
    # (for users' data) would stop them; the formula itself is defined there
    mg.gradcheck(lambda x, t: losses.binary_cross_entropy_with_logits(
        x, t, reduction=reduction, check_target=False), [leaf(x), leaf(t)])
    p = 1 / (1 + np.exp(-x))
    ref = reduce(-(t * np.log(p) + (1 - t) * np.log(1 - p)), reduction)
    np.testing.assert_allclose(
        losses.binary_cross_entropy_with_logits(x, t, reduction=reduction).numpy(), ref,
        rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(0.05, 0.95))
def test_bce_on_probabilities(device, reduction, data):
    p, t = data
    mg.gradcheck(lambda p, t: losses.binary_cross_entropy(p, t, reduction=reduction,
                                                          check_target=False),
                 [leaf(p), leaf(t)])
    ref = reduce(-(t * np.log(p) + (1 - t) * np.log(1 - p)), reduction)
    np.testing.assert_allclose(losses.binary_cross_entropy(p, t, reduction=reduction).numpy(),
                               ref, rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(0.05, 1.0, 0.05, 1.0))
def test_kl_divergence(device, reduction, data):
    p, q = data
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    mg.gradcheck(lambda p, q: losses.kl_divergence(p, q, reduction=reduction), [leaf(p), leaf(q)])
    np.testing.assert_allclose(losses.kl_divergence(p, q, reduction=reduction).numpy(),
                               reduce(np.sum(p * np.log(p / q), axis=-1), reduction),
                               rtol=1e-10, atol=1e-14)


def test_kl_divergence_terms_with_zero_p_contribute_zero(device):
    p = leaf([[0.0, 0.5, 0.5]])
    q = leaf([[0.0, 0.25, 0.75]])
    kl = losses.kl_divergence(p, q)
    kl.backward()
    np.testing.assert_allclose(kl.item(), 0.5 * np.log(2) + 0.5 * np.log(2 / 3))
    assert np.all(np.isfinite(p.grad)) and np.all(np.isfinite(q.grad))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(-2, 2, -2, 2))
def test_gaussian_kl_and_l1(device, reduction, data):
    mu, log_var = data
    mg.gradcheck(lambda m, v: losses.gaussian_kl(m, v, reduction=reduction),
                 [leaf(mu), leaf(log_var)])
    ref = 0.5 * np.sum(np.exp(log_var) + mu ** 2 - 1 - log_var, axis=-1)
    np.testing.assert_allclose(losses.gaussian_kl(mu, log_var, reduction=reduction).numpy(),
                               reduce(ref, reduction), rtol=1e-12)
    h = np.where(np.abs(mu) < 0.05, 0.1, mu)  # |h| has a kink at 0
    mg.gradcheck(lambda h: losses.l1(h, reduction=reduction), [leaf(h)])
    np.testing.assert_allclose(losses.l1(h, reduction=reduction).numpy(),
                               reduce(np.abs(h).sum(axis=-1), reduction), rtol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(rho_hat=hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(0.05, 0.95)),
       rho=st.floats(0.01, 0.5))
def test_bernoulli_kl(device, reduction, rho_hat, rho):
    mg.gradcheck(lambda r: losses.bernoulli_kl(rho, r, reduction=reduction), [leaf(rho_hat)])
    ref = rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
    np.testing.assert_allclose(losses.bernoulli_kl(rho, rho_hat, reduction=reduction).numpy(),
                               reduce(ref, reduction), rtol=1e-10, atol=1e-14)  # rho ~ rho_hat


def test_per_example_losses_average_over_the_batch_axes():
    """kl_divergence, gaussian_kl and l1 sum over the last axis, then "mean"
    averages over every leading axis."""
    h = np.arange(24.0).reshape(2, 3, 4)
    assert losses.l1(h, reduction="none").shape == (2, 3)
    np.testing.assert_allclose(losses.l1(h).item(), np.abs(h).sum() / 6)
    np.testing.assert_allclose(losses.gaussian_kl(h * 0, h * 0).item(), 0.0)
    # the elementwise losses average over every element instead
    np.testing.assert_allclose(losses.mse(h, h * 0).item(), (h ** 2).mean())


# ----------------------------------------------------------------------------
# the fused kernels (Numba backend) against the plain graph (NumPy backend)
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_bce_with_logits_gradient_of_confident_right_answers(backend):
    """Both paths, the NumPy backend's graph of primitives and the fused kernel, give a
    confident right answer's float32 gradient -sigmoid(-|x|) unrounded: summed as
    sigmoid(x) - 1 it would be a multiple of 6e-8 (x = 15: -3.58e-7 for -3.06e-7) and 0
    from x = 17 on.  Mirrored: t = 0 and a large negative logit."""
    if backend == "numba":
        pytest.importorskip("numba")
    x = np.array([5.0, 10.0, 15.0, 20.0, 30.0, 80.0], np.float32)
    exact = -1 / (1 + np.exp(x.astype(np.float64)))
    with mg.set_backend(backend):
        for logits, target, want in ((x, np.ones_like(x), exact),
                                     (-x, np.zeros_like(x), -exact)):
            xt = mg.Tensor(logits, requires_grad=True)
            losses.binary_cross_entropy_with_logits(xt, mg.Tensor(target),
                                                    reduction="sum").backward()
            np.testing.assert_allclose(xt.grad, want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", ["mse", "binary_cross_entropy_with_logits"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@SETTINGS
@given(data=st.data())
def test_fused_and_plain_losses_agree(name, reduction, data):
    pytest.importorskip("numba")
    dtype = data.draw(float_dtypes)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9))
    x = data.draw(arrays(shape, dtype, -20.0, 20.0))  # sometimes non-contiguous
    t = data.draw(arrays(shape, dtype, 0.0, 1.0))
    seed = data.draw(st.floats(0.25, 4.0))
    out = []
    for backend in ("numpy", "numba"):
        with mg.set_backend(backend):
            xt, tt = mg.Tensor(x, requires_grad=True), mg.Tensor(t, requires_grad=True)
            loss = getattr(losses, name)(xt, tt, reduction=reduction)
            assert isinstance(loss._node, losses.FusedSumLoss) == (backend == "numba")
            loss.backward(np.asarray(seed, dtype=dtype))
            out.append((loss.numpy(), xt.grad, tt.grad))
    tol = tolerance(dtype)
    for ref, got in zip(*out):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, ref, rtol=tol["rtol"] * 5, atol=tol["atol"] * 5)


def test_fused_loss_without_target_gradient():
    pytest.importorskip("numba")
    with mg.set_backend("numba"):
        x = mg.Tensor(np.linspace(-3, 3, 12).reshape(3, 4), requires_grad=True)
        loss = losses.binary_cross_entropy_with_logits(x, mg.Tensor(np.full((3, 4), 0.25)))
        loss.backward()
    np.testing.assert_allclose(x.grad, (1 / (1 + np.exp(-x.data)) - 0.25) / 12, rtol=1e-12)


@pytest.mark.parametrize("name", ["mse", "binary_cross_entropy_with_logits"])
def test_fused_loss_backward_twice_and_without_grad(name):
    """The forward computes the gradient along with the loss; a second backward
    (retain_graph) recomputes it rather than reuse an array already handed out,
    and under no_grad no gradient is computed at all."""
    pytest.importorskip("numba")
    x = np.linspace(-2, 2, 12).reshape(3, 4)
    t = np.full((3, 4), 0.25)
    with mg.set_backend("numba"):
        xt = mg.Tensor(x, requires_grad=True)
        loss = getattr(losses, name)(xt, mg.Tensor(t))
        loss.backward(retain_graph=True)
        first = xt.grad.copy()
        loss.backward()
        np.testing.assert_allclose(xt.grad, 2 * first, rtol=1e-12)
        with mg.no_grad():
            quiet = getattr(losses, name)(xt, mg.Tensor(t))
        assert not quiet.requires_grad
        np.testing.assert_allclose(quiet.item(), loss.item(), rtol=1e-12)


# ----------------------------------------------------------------------------
# extremes and errors
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_losses_stay_finite_at_extremes(device, dtype):
    p = mg.Tensor(np.array([0.0, 1.0, 0.0, 1.0], dtype), requires_grad=True)
    t = mg.Tensor(np.array([0.0, 1.0, 1.0, 0.0], dtype))
    with np.errstate(all="raise"):  # no warning either
        bce = losses.binary_cross_entropy(p, t)
        bce.backward()
    assert np.isfinite(bce.item()) and np.all(np.isfinite(p.grad))
    np.testing.assert_allclose(bce.item(), 50.0)  # two logs clamped at -100, over 4
    for reduction in ("mean", "sum", "none"):
        x = mg.Tensor(np.array([1e4, -1e4, 1e4, -1e4, 0.0], dtype), requires_grad=True)
        t5 = mg.Tensor(np.array([0.0, 1.0, 1.0, 0.0, 0.5], dtype))
        loss = losses.binary_cross_entropy_with_logits(x, t5, reduction=reduction)
        loss.sum().backward()
        terms = np.array([1e4, 1e4, 0.0, 0.0, np.log(2)])
        np.testing.assert_allclose(loss.numpy(), reduce(terms, reduction), rtol=1e-6)
        assert np.all(np.isfinite(x.grad))
        scale = 1 / 5 if reduction == "mean" else 1.0
        np.testing.assert_allclose(host(x.grad), np.array([1, -1, 0, 0, 0]) * scale, atol=1e-7)
    big = mg.Tensor(np.array([1e18, -1e18], dtype), requires_grad=True)
    loss = losses.mse(big, mg.Tensor(np.zeros(2, dtype)), reduction="sum")
    loss.backward()
    assert np.all(np.isfinite(big.grad))  # the loss itself may overflow float32; its gradient not


def test_losses_refuse_to_broadcast_and_name_bad_arguments():
    with pytest.raises(ValueError, match=r"mse: input has shape \(3,\) but target has shape \(1,\)"):
        losses.mse(mg.Tensor([1.0, 2.0, 3.0]), mg.Tensor([1.0]))
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: logits has shape"):
        losses.binary_cross_entropy_with_logits(mg.Tensor([1.0]), mg.Tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="reduction='avg'"):
        losses.mse(mg.Tensor([1.0]), mg.Tensor([1.0]), reduction="avg")
    with pytest.raises(ValueError, match="reduction='avg'"):
        losses.l1(mg.Tensor([1.0]), reduction="avg")
    with pytest.raises(ValueError, match="rho=1.5"):
        losses.bernoulli_kl(1.5, mg.Tensor([0.5]))


def test_losses_of_empty_batches(device):
    empty = mg.Tensor(np.zeros((0, 3)))
    assert losses.mse(empty, empty, reduction="sum").item() == 0.0
    with pytest.raises(ValueError, match="no elements to average"):
        losses.binary_cross_entropy_with_logits(empty, empty)
