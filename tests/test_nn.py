"""minigrad.nn, minigrad.losses and minigrad.optim on the NumPy and Numba backends."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import minigrad as mg
from minigrad import losses, nn, optim

SETTINGS = settings(max_examples=12, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])


def _backends():
    names = ["numpy"]
    try:
        import numba  # noqa: F401
        names.append("numba")
    except ImportError:
        pass
    return names


@pytest.fixture(params=_backends())
def backend(request):
    with mg.set_backend(request.param):
        yield request.param


def leaf(a):
    return mg.Tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


# ----------------------------------------------------------------------------
# layers
# ----------------------------------------------------------------------------

ACTS = ["identity", "relu", "leaky_relu", "sigmoid", "tanh", "softplus"]


@pytest.mark.parametrize("activation", ACTS)
@SETTINGS
@given(n=st.integers(1, 6), d_in=st.integers(1, 7), d_out=st.integers(1, 7),
       seed=st.integers(0, 1000))
def test_dense_gradients(backend, activation, n, d_in, d_out, seed):
    rng = np.random.default_rng(seed)
    layer = nn.Dense(d_in, d_out, activation=activation, negative_slope=0.2, dtype="float64",
                     rng=rng)
    layer.bias.data[...] = rng.uniform(-0.5, 0.5, d_out)
    x = rng.standard_normal((n, d_in))
    if activation in ("relu", "leaky_relu"):
        # keep pre-activations off the kink, where a central difference is meaningless
        z = x @ layer.weight.data + layer.bias.data
        layer.bias.data[...] += np.where(np.abs(z) < 0.05, 0.1, 0).max(axis=0)
        z = x @ layer.weight.data + layer.bias.data
        if np.any(np.abs(z) < 0.01):
            return
    mg.gradcheck(lambda x, w, b: layer(x), [leaf(x), layer.weight, layer.bias],
                 names=["x", "weight", "bias"])


def test_fused_and_reference_dense_agree():
    pytest.importorskip("numba", reason="compares the Numba backend with the reference")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((33, 17)).astype(np.float32)
    results = {}
    for name in ("numpy", "numba"):
        with mg.set_backend(name):
            model = nn.Sequential(nn.Dense(17, 9, "relu", init="he", rng=1),
                                  nn.Dense(9, 17, "sigmoid", rng=2))
            t = mg.Tensor(x, requires_grad=True)
            loss = losses.mse(model(t), mg.Tensor(x))
            loss.backward()
            results[name] = [loss.item(), t.grad] + [p.grad for p in model.parameters()]
    for a, b in zip(results["numpy"], results["numba"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_dense_rejects_bad_input_and_arguments():
    layer = nn.Dense(4, 3)
    with pytest.raises(ValueError, match=r"Dense\(4, 3\): input has shape \(2, 5\); expected \(\.\.\., 4\)"):
        layer(mg.Tensor(np.ones((2, 5), np.float32)))
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        nn.Dense(0, 3)
    with pytest.raises(ValueError, match="init='xavier'"):
        nn.Dense(2, 3, init="xavier")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        nn.Dense(2, 3, activation="swish")


def test_init_scales():
    glorot = nn.Dense(300, 200, rng=0).weight.data
    he = nn.Dense(300, 200, init="he", rng=0).weight.data
    assert np.abs(glorot).max() <= np.sqrt(6 / 500)
    assert abs(glorot.std() - np.sqrt(2 / 500)) < 0.005
    assert abs(he.std() - np.sqrt(2 / 300)) < 0.005
    assert glorot.dtype == np.float32


@pytest.mark.parametrize("module, fn", [
    (nn.ReLU(), mg.relu), (nn.Sigmoid(), mg.sigmoid), (nn.Tanh(), mg.tanh),
    (nn.Softplus(), mg.softplus), (nn.Identity(), lambda t: t),
    (nn.LeakyReLU(0.3), lambda t: mg.leaky_relu(t, 0.3))])
def test_activation_modules(module, fn):
    x = mg.Tensor(np.linspace(-3, 3, 13))
    np.testing.assert_array_equal(module(x).data, fn(x).data)


# ----------------------------------------------------------------------------
# Module API and state_dict
# ----------------------------------------------------------------------------

class TwoLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Dense(4, 3, "relu", rng=0)
        self.decoder = nn.Sequential(nn.Dense(3, 4, rng=1))
        self.scale = nn.Parameter(np.ones(1, np.float32))

    def forward(self, x):
        return self.decoder(self.encoder(x)) * self.scale


def test_module_registers_parameters_in_order():
    model = TwoLayer()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["scale", "encoder.weight", "encoder.bias", "decoder.0.weight",
                     "decoder.0.bias"]
    assert len(model.parameters()) == 5
    model.eval()
    assert not model.training and not model.decoder[0].training
    model.train()
    assert model.encoder.training


def test_zero_grad_and_training_step_change_the_loss(backend):
    model = TwoLayer()
    x = mg.Tensor(np.random.default_rng(0).random((8, 4)).astype(np.float32))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(50):
        opt.zero_grad()
        loss = losses.mse(model(x), x)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < first / 2
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_state_dict_round_trip():
    a, b = TwoLayer(), TwoLayer()
    b.encoder.weight.data[...] = 7
    b.load_state_dict(a.state_dict())
    x = mg.Tensor(np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(a(x).data, b(x).data)
    state = a.state_dict()
    state["scale"][...] = 5  # a copy: changing it does not touch the model
    assert a.scale.data[0] == 1


def test_state_dict_mismatches_are_named():
    model = TwoLayer()
    state = model.state_dict()
    with pytest.raises(KeyError, match=r"missing \['scale'\]"):
        model.load_state_dict({k: v for k, v in state.items() if k != "scale"})
    with pytest.raises(KeyError, match=r"unexpected \['extra'\]"):
        model.load_state_dict({**state, "extra": np.ones(1)})
    with pytest.raises(ValueError, match=r"'encoder.weight' has shape \(3, 4\), expected \(4, 3\)"):
        model.load_state_dict({**state, "encoder.weight": np.ones((3, 4), np.float32)})
    with pytest.raises(TypeError, match="'encoder.bias' has dtype float64, expected float32"):
        model.load_state_dict({**state, "encoder.bias": np.ones(3)})


# ----------------------------------------------------------------------------
# losses
# ----------------------------------------------------------------------------

REDUCTIONS = ["mean", "sum", "none"]


@st.composite
def pair(draw, low=-3.0, high=3.0, t_low=0.0, t_high=1.0):
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5))
    a = draw(hnp.arrays(np.float64, shape, elements=st.floats(low, high)))
    b = draw(hnp.arrays(np.float64, shape, elements=st.floats(t_low, t_high)))
    return a, b


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(-3, 3, -3, 3))
def test_mse_gradients(backend, reduction, data):
    a, b = data
    mg.gradcheck(lambda a, b: losses.mse(a, b, reduction=reduction), [leaf(a), leaf(b)])
    np.testing.assert_allclose(losses.mse(a, b, reduction="sum").item(), np.sum((a - b) ** 2))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(-8, 8))
def test_bce_with_logits_gradients(backend, reduction, data):
    x, t = data
    mg.gradcheck(lambda x, t: losses.binary_cross_entropy_with_logits(x, t, reduction=reduction),
                 [leaf(x), leaf(t)])
    p = 1 / (1 + np.exp(-x))
    ref = -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean()
    np.testing.assert_allclose(losses.binary_cross_entropy_with_logits(x, t).item(), ref,
                               rtol=1e-9)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(0.05, 0.95))
def test_bce_on_probabilities_gradients(backend, reduction, data):
    p, t = data
    mg.gradcheck(lambda p, t: losses.binary_cross_entropy(p, t, reduction=reduction),
                 [leaf(p), leaf(t)])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(0.05, 1.0, 0.05, 1.0))
def test_kl_divergence_gradients(backend, reduction, data):
    p, q = data
    p = p / p.sum(axis=-1, keepdims=True)
    q = q / q.sum(axis=-1, keepdims=True)
    mg.gradcheck(lambda p, q: losses.kl_divergence(p, q, reduction=reduction), [leaf(p), leaf(q)])
    np.testing.assert_allclose(losses.kl_divergence(p, q, reduction="none").numpy(),
                               np.sum(p * np.log(p / q), axis=-1), rtol=1e-10, atol=1e-14)


def test_kl_divergence_terms_with_zero_p_contribute_zero():
    p = leaf([[0.0, 0.5, 0.5]])
    q = leaf([[0.0, 0.25, 0.75]])
    kl = losses.kl_divergence(p, q)
    kl.backward()
    np.testing.assert_allclose(kl.item(), 0.5 * np.log(2) + 0.5 * np.log(2 / 3))
    assert np.all(np.isfinite(p.grad)) and np.all(np.isfinite(q.grad))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(data=pair(-2, 2, -2, 2))
def test_gaussian_kl_and_l1_gradients(backend, reduction, data):
    mu, log_var = data
    mg.gradcheck(lambda m, v: losses.gaussian_kl(m, v, reduction=reduction),
                 [leaf(mu), leaf(log_var)])
    ref = 0.5 * np.sum(np.exp(log_var) + mu ** 2 - 1 - log_var, axis=-1)
    np.testing.assert_allclose(losses.gaussian_kl(mu, log_var, reduction="none").numpy(), ref)
    h = np.where(np.abs(mu) < 0.05, 0.1, mu)  # |h| has a kink at 0
    mg.gradcheck(lambda h: losses.l1(h, reduction=reduction), [leaf(h)])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@SETTINGS
@given(rho_hat=hnp.arrays(np.float64, st.integers(1, 6), elements=st.floats(0.05, 0.95)),
       rho=st.floats(0.01, 0.5))
def test_bernoulli_kl_gradients(backend, reduction, rho_hat, rho):
    mg.gradcheck(lambda r: losses.bernoulli_kl(rho, r, reduction=reduction), [leaf(rho_hat)])
    ref = rho * np.log(rho / rho_hat) + (1 - rho) * np.log((1 - rho) / (1 - rho_hat))
    np.testing.assert_allclose(losses.bernoulli_kl(rho, rho_hat, reduction="none").numpy(), ref)


def test_losses_stay_finite_at_extremes(backend):
    p = mg.Tensor(np.array([0.0, 1.0, 0.0, 1.0], np.float32), requires_grad=True)
    t = mg.Tensor(np.array([0.0, 1.0, 1.0, 0.0], np.float32))
    bce = losses.binary_cross_entropy(p, t)
    bce.backward()
    assert np.isfinite(bce.item()) and np.all(np.isfinite(p.grad))
    np.testing.assert_allclose(bce.item(), 50.0)  # two logs clamped at -100, over 4
    x = mg.Tensor(np.array([1e4, -1e4, 1e4, -1e4], np.float32), requires_grad=True)
    loss = losses.binary_cross_entropy_with_logits(x, t)
    loss.backward()
    assert np.isfinite(loss.item()) and np.all(np.isfinite(x.grad))
    np.testing.assert_allclose(loss.item(), (1e4 + 1e4) / 4, rtol=1e-6)


def test_losses_refuse_to_broadcast():
    with pytest.raises(ValueError, match=r"mse: input has shape \(3,\) but target has shape \(1,\)"):
        losses.mse(mg.Tensor([1.0, 2.0, 3.0]), mg.Tensor([1.0]))
    with pytest.raises(ValueError, match="reduction='avg'"):
        losses.mse(mg.Tensor([1.0]), mg.Tensor([1.0]), reduction="avg")
    with pytest.raises(ValueError, match="rho=1.5"):
        losses.bernoulli_kl(1.5, mg.Tensor([0.5]))


# ----------------------------------------------------------------------------
# optimizers against their textbook updates
# ----------------------------------------------------------------------------

def quadratic_grads(p):
    return 2 * (p - 3.0)  # gradient of sum (p - 3)^2


def run_optimizer(make, steps, dtype=np.float64):
    p = nn.Parameter(np.array([1.0, -2.0, 0.5], dtype=dtype))
    opt = make([p])
    for _ in range(steps):
        opt.zero_grad()
        ((p - 3.0) * (p - 3.0)).sum().backward()
        opt.step()
    return p.data


@pytest.mark.parametrize("momentum, nesterov, wd", [(0.0, False, 0.0), (0.9, False, 0.0),
                                                    (0.9, True, 0.01), (0.5, False, 0.1)])
def test_sgd_textbook(backend, momentum, nesterov, wd):
    got = run_optimizer(lambda ps: optim.SGD(ps, lr=0.05, momentum=momentum, nesterov=nesterov,
                                             weight_decay=wd), 7)
    p = np.array([1.0, -2.0, 0.5])
    v = np.zeros(3)
    for _ in range(7):
        g = quadratic_grads(p) + wd * p
        v = momentum * v + g
        p = p - 0.05 * (g + momentum * v if nesterov else (v if momentum else g))
    np.testing.assert_allclose(got, p, rtol=1e-12)


@pytest.mark.parametrize("cls, wd", [(optim.Adam, 0.0), (optim.Adam, 0.05), (optim.AdamW, 0.05)])
def test_adam_textbook(backend, cls, wd):
    got = run_optimizer(lambda ps: cls(ps, lr=0.1, betas=(0.8, 0.99), eps=1e-8, weight_decay=wd), 9)
    p = np.array([1.0, -2.0, 0.5])
    m = v = np.zeros(3)
    for t in range(1, 10):
        g = quadratic_grads(p)
        if cls is optim.Adam:
            g = g + wd * p
        else:
            p = p - 0.1 * wd * p
        m = 0.8 * m + 0.2 * g
        v = 0.99 * v + 0.01 * g * g
        p = p - 0.1 * (m / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
    np.testing.assert_allclose(got, p, rtol=1e-10)


def test_optimizer_state_dict_round_trip(backend):
    p = nn.Parameter(np.array([1.0, 2.0], np.float32))
    opt = optim.Adam([p], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        (p * p).sum().backward()
        opt.step()
    state = opt.state_dict()
    q = nn.Parameter(p.data.copy())
    other = optim.Adam([q], lr=0.5)
    other.load_state_dict(state)
    assert other.lr == 0.1 and other.step_count == 3
    for o in (opt, other):
        o.params[0].grad = np.array([0.3, -0.2], np.float32)
        o.step()
    np.testing.assert_array_equal(p.data, q.data)


def test_optimizer_argument_errors():
    p = nn.Parameter(np.ones(2, np.float32))
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.Adam([])
    with pytest.raises(ValueError, match="lr must be positive"):
        optim.SGD([p], lr=0)
    with pytest.raises(ValueError, match="nesterov=True needs momentum"):
        optim.SGD([p], nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam([p], betas=(1.0, 0.9))


def test_backend_default_is_numba_when_installed():
    pytest.importorskip("numba", reason="the default falls back to numpy without numba")
    import subprocess
    import sys
    env = {k: v for k, v in __import__("os").environ.items() if k != "MINIGRAD_BACKEND"}
    out = subprocess.run([sys.executable, "-c",
                          "import minigrad; print(minigrad.get_backend().name)"],
                         env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "numba", out.stderr
