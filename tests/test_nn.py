"""minigrad.nn: registration, Dense and the activation modules on both backends
(gradcheck in float64, fused vs plain paths agree), Sequential, state_dict."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import minigrad as mg
from minigrad import losses, nn, optim

from helpers import arrays, float_dtypes, host, put, tolerance

ACTIVATIONS = list(mg.activations.ACTIVATIONS)  # identity, relu, ... (the activation table)
SETTINGS = settings(max_examples=8, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def leaf(a, dtype=np.float64):
    return mg.Tensor(np.array(a, dtype=dtype), requires_grad=True)


def dense(n_in, n_out, activation=None, dtype="float64", seed=0, **kw):
    layer = nn.Dense(n_in, n_out, activation=activation, dtype=dtype, rng=seed, **kw)
    # a non-zero bias, so that its gradient and the bias add are really tested
    put(layer.bias, np.random.default_rng(seed + 1).uniform(-0.5, 0.5, n_out))
    return layer


# ----------------------------------------------------------------------------
# Module: registration and traversal
# ----------------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(np.ones(3))
        self.inner = nn.Sequential(nn.Dense(3, 4, rng=0), nn.ReLU(), nn.Dense(4, 2, rng=1))
        self.note = "not a parameter"
        self.buffer = mg.Tensor(np.zeros(2))  # a plain tensor is not registered

    def forward(self, x):
        return self.inner(x * self.scale)


def test_parameters_and_submodules_are_registered_in_assignment_order():
    block = Block()
    names = [n for n, _ in block.named_parameters()]
    assert names == ["scale", "inner.0.weight", "inner.0.bias", "inner.2.weight",
                     "inner.2.bias"]
    assert [p.shape for p in block.parameters()] == [(3,), (3, 4), (4,), (4, 2), (2,)]
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in block.parameters())
    assert [n for n, _ in block.named_modules()] == ["", "inner.", "inner.0.", "inner.1.",
                                                      "inner.2."]


def test_reassigning_an_attribute_replaces_the_registration():
    block = Block()
    block.scale = "gone"
    assert "scale" not in dict(block.named_parameters())
    block.inner = nn.Identity()
    assert [n for n, _ in block.named_parameters()] == []


def test_setattr_before_init_is_explained():
    class Broken(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(np.ones(1))

    with pytest.raises(RuntimeError, match="super\\(\\).__init__\\(\\)"):
        Broken()


def test_zero_grad_train_eval_and_repr():
    block = Block()
    block(mg.Tensor(np.ones((2, 3)))).sum().backward()
    assert all(p.grad is not None for p in block.parameters())
    block.zero_grad()
    assert all(p.grad is None for p in block.parameters())
    assert block.eval() is block
    assert not any(m.training for _, m in block.named_modules())
    block.train()
    assert all(m.training for _, m in block.named_modules())
    text = repr(block)
    assert "Dense(3, 4, activation='identity'" in text and "ReLU()" in text


def test_parameter_is_a_contiguous_leaf():
    p = nn.Parameter(np.arange(8.0).reshape(2, 4)[:, ::2])
    assert p.is_leaf and p.requires_grad and p.data.flags.c_contiguous
    assert repr(p).startswith("Parameter(")


# ----------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
@SETTINGS
@given(n=st.integers(1, 6), d_in=st.integers(1, 7), d_out=st.integers(1, 7),
       seed=st.integers(0, 1000))
def test_dense_gradcheck(device, activation, n, d_in, d_out, seed):
    rng = np.random.default_rng(seed)
    layer = nn.Dense(d_in, d_out, activation=activation, negative_slope=0.2, dtype="float64",
                     rng=rng)
    bias = rng.uniform(-0.5, 0.5, d_out)
    x = rng.standard_normal((n, d_in))
    if activation in ("relu", "leaky_relu"):
        # keep pre-activations off the kink, where a central difference is meaningless
        z = x @ host(layer.weight) + bias
        bias += np.where(np.abs(z) < 0.05, 0.1, 0).max(axis=0)
        z = x @ host(layer.weight) + bias
        assume(not np.any(np.abs(z) < 0.01))
    put(layer.bias, bias)
    mg.gradcheck(lambda x, w, b: layer(x), [leaf(x), layer.weight, layer.bias],
                 names=["x", "weight", "bias"])


def test_dense_gradcheck_without_input_gradient(device):
    """The first layer of a network: x needs no gradient, W and b do."""
    layer = dense(6, 3, "tanh")
    x = mg.Tensor(np.random.default_rng(3).standard_normal((4, 6)))
    mg.gradcheck(lambda w, b: layer(x), [layer.weight, layer.bias])


def test_dense_with_a_frozen_weight(device):
    layer = dense(4, 3, "sigmoid")
    layer.weight.requires_grad = False
    x = leaf(np.random.default_rng(8).standard_normal((5, 4)))
    layer(x).sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is not None
    mg.gradcheck(lambda x, b: layer(x), [x, layer.bias])


def test_dense_gradcheck_on_a_batch_of_matrices(device):
    """A 3-D input takes the plain path on every backend."""
    layer = dense(3, 2, "sigmoid")
    x = leaf(np.random.default_rng(4).standard_normal((2, 3, 3)))
    mg.gradcheck(lambda x, w, b: layer(x), [x, layer.weight, layer.bias])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@SETTINGS
@given(data=st.data())
def test_dense_fused_and_plain_paths_agree(activation, data):
    """Same layer, same input: the Numba backend's fused node and the NumPy
    backend's primitives give the same output and gradients up to rounding."""
    pytest.importorskip("numba")
    dtype = data.draw(float_dtypes)
    n, n_in, n_out = (data.draw(st.integers(1, 17)) for _ in range(3))
    x = data.draw(arrays((n, n_in), dtype, -2.0, 2.0))  # sometimes non-contiguous
    g = data.draw(arrays((n, n_out), dtype, -1.0, 1.0, strided=False))
    results = []
    for name in ("numpy", "numba"):
        with mg.set_backend(name):
            layer = dense(n_in, n_out, activation, dtype=dtype.__name__, negative_slope=0.1)
            xt = mg.Tensor(x, requires_grad=True)
            y = layer(xt)
            y.backward(g)
            results.append([y.data, xt.grad, layer.weight.grad, layer.bias.grad])
    for ref, got in zip(*results):
        assert got.dtype == dtype
        tol = tolerance(dtype)
        np.testing.assert_allclose(got, ref, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * n)


def test_dense_fused_path_is_taken_on_the_numba_backend():
    pytest.importorskip("numba")
    with mg.set_backend("numpy"):
        layer = dense(3, 2, "relu", dtype="float32")
        x = mg.Tensor(np.ones((4, 3), np.float32), requires_grad=True)
    with mg.set_backend("numba"):
        assert type(layer(x)._node).__name__ == "DenseFunction"
    with mg.set_backend("numpy"):
        assert type(layer(x)._node).__name__ != "DenseFunction"


@pytest.mark.parametrize("rows", [4, 1 << 16])  # one block of rows; one per thread (2M values)
def test_dense_gradients_are_adopted_not_copied(rows):
    """The fused backward hands each parameter a gradient array of its own, which the
    leaf keeps as its .grad (a view of a larger array would be copied every step)."""
    pytest.importorskip("numba")
    with mg.set_backend("numba"):
        layer = dense(64, 32, "relu", dtype="float32")
        x = mg.Tensor(np.random.default_rng(0).random((rows, 64), np.float32))
        y = layer(x)
        node = y._node
        returned = {}
        backward = node.backward
        node.backward = lambda g: returned.setdefault("grads", backward(g))
        y.backward(np.ones(y.shape, np.float32))
    _, grad_w, grad_b = returned["grads"]
    assert layer.weight.grad is grad_w and layer.bias.grad is grad_b
    active = x.data @ layer.weight.data + layer.bias.data > 0  # the seed is 1: ReLU's mask
    np.testing.assert_allclose(grad_b, active.sum(axis=0), rtol=1e-6)


def test_dense_input_of_another_dtype_takes_the_plain_path(device):
    layer = dense(3, 2, "relu", dtype="float32")
    y = layer(mg.Tensor(np.ones((4, 3)), requires_grad=True))  # float64 input
    assert y.shape == (4, 2) and y.dtype == np.float64


def test_dense_initialisation():
    glorot = nn.Dense(300, 200, init="glorot", rng=0)
    limit = np.sqrt(6.0 / 500)
    w = glorot.weight.data
    assert w.shape == (300, 200) and w.dtype == np.float32
    assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit
    assert abs(w.std() - limit / np.sqrt(3)) < 0.02 * limit
    he = nn.Dense(400, 300, init="he", activation="relu", rng=0).weight.data
    assert abs(he.std() - np.sqrt(2.0 / 400)) < 0.02 * np.sqrt(2.0 / 400)
    assert np.all(glorot.bias.data == 0)
    np.testing.assert_array_equal(host(nn.Dense(4, 3, rng=7).weight),
                                  host(nn.Dense(4, 3, rng=7).weight))


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(in_features=0, out_features=3), ValueError, "in_features must be a positive"),
    (dict(in_features=2, out_features=2.5), ValueError, "out_features must be a positive"),
    (dict(in_features=2, out_features=3, init="xavier"), ValueError, "init='xavier'"),
    (dict(in_features=2, out_features=3, activation="swish"), ValueError,
     "unknown activation 'swish'"),
])
def test_dense_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        nn.Dense(**kwargs)


def test_dense_rejects_an_input_of_the_wrong_width(device):
    with pytest.raises(ValueError, match=r"Dense\(3, 2\): input has shape \(4, 5\)"):
        nn.Dense(3, 2)(mg.Tensor(np.ones((4, 5), np.float32)))


# ----------------------------------------------------------------------------
# activation modules
# ----------------------------------------------------------------------------

MODULES = {
    "identity": (nn.Identity, lambda x: x),
    "relu": (nn.ReLU, lambda x: np.maximum(x, 0)),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), lambda x: np.where(x > 0, x, 0.2 * x)),
    "sigmoid": (nn.Sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    "tanh": (nn.Tanh, np.tanh),
    "softplus": (nn.Softplus, lambda x: np.log1p(np.exp(x))),
}


@pytest.mark.parametrize("name", sorted(MODULES))
def test_activation_modules(name, device):
    make, expected = MODULES[name]
    module = make()
    x = np.random.default_rng(5).standard_normal((3, 4)) * 2
    np.testing.assert_allclose(host(module(mg.Tensor(x))), expected(x), rtol=1e-12, atol=1e-15)
    mg.gradcheck(module, [leaf(x)])
    assert isinstance(nn.activation_module(name, 0.2), type(module))
    assert module.parameters() == []


def test_activation_module_by_name():
    assert isinstance(nn.activation_module(None), nn.Identity)
    assert nn.activation_module("leaky_relu", 0.3).negative_slope == 0.3
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        nn.activation_module("gelu")


# ----------------------------------------------------------------------------
# Sequential
# ----------------------------------------------------------------------------

def test_sequential_gradcheck(device):
    model = nn.Sequential(dense(4, 5, "relu"), dense(5, 3, "softplus"), nn.Tanh(),
                          dense(3, 2, None, seed=3))
    x = leaf(np.random.default_rng(6).standard_normal((3, 4)))
    mg.gradcheck(lambda x, *params: model(x), [x, *model.parameters()])


def test_sequential_container():
    layers = [nn.Dense(2, 3, rng=0), nn.ReLU(), nn.Dense(3, 1, rng=1)]
    model = nn.Sequential(layers)
    assert len(model) == 3 and model[2] is layers[2] and list(model) == layers
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight",
                                                        "2.bias"]
    with pytest.raises(TypeError, match="layer 1 is a function, not a Module"):
        nn.Sequential(nn.ReLU(), mg.relu)


def test_fused_and_plain_networks_agree():
    """A whole network with a loss: Numba backend (fused nodes) vs NumPy backend."""
    pytest.importorskip("numba")
    x = np.random.default_rng(0).standard_normal((33, 17)).astype(np.float32)
    results = {}
    for name in ("numpy", "numba"):
        with mg.set_backend(name):
            model = nn.Sequential(nn.Dense(17, 9, "relu", init="he", rng=1),
                                  nn.Dense(9, 5, "tanh", rng=3),
                                  nn.Dense(5, 17, "sigmoid", rng=2))
            t = mg.Tensor(x, requires_grad=True)
            loss = losses.mse(model(t), mg.Tensor(x))
            loss.backward()
            results[name] = [loss.item(), t.grad] + [p.grad for p in model.parameters()]
    for a, b in zip(results["numpy"], results["numba"]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_few_training_steps_lower_the_loss(device):
    model = nn.Sequential(nn.Dense(4, 3, "relu", rng=0), nn.Dense(3, 4, rng=1))
    x = mg.Tensor(np.random.default_rng(0).random((8, 4)).astype(np.float32))
    opt = optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(50):
        opt.zero_grad()
        loss = losses.mse(model(x), x)
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[-1] < history[0] / 2


# ----------------------------------------------------------------------------
# state_dict
# ----------------------------------------------------------------------------

def test_state_dict_round_trip():
    a, b = Block(), Block()
    for p in b.parameters():
        p.data[...] = 7.0
    state = a.state_dict()
    assert list(state) == [n for n, _ in a.named_parameters()]
    assert all(type(v) is np.ndarray for v in state.values())
    state["scale"][...] = 3.0  # a copy: the model is not changed through it
    assert np.all(a.scale.data == 1.0)
    b.scale.grad = np.ones(3)
    assert b.load_state_dict(state) is b
    for (name, p), q in zip(b.named_parameters(), a.parameters()):
        expected = 3.0 if name == "scale" else host(q)
        np.testing.assert_array_equal(host(p), expected)
    assert b.scale.grad is None
    x = mg.Tensor(np.ones((2, 3)))
    a.scale.data[...] = 3.0
    np.testing.assert_array_equal(host(a(x)), host(b(x)))


def test_load_state_dict_names_what_differs():
    block = Block()
    state = block.state_dict()
    missing = dict(state)
    del missing["inner.2.bias"]
    with pytest.raises(KeyError, match=r"missing \['inner.2.bias'\], unexpected \[\]"):
        block.load_state_dict(missing)
    extra = dict(state, **{"inner.9.weight": np.ones(1)})
    with pytest.raises(KeyError, match=r"unexpected \['inner.9.weight'\]"):
        block.load_state_dict(extra)
    with pytest.raises(ValueError, match=r"'inner.0.weight' has shape \(4, 3\), expected "
                                         r"\(3, 4\)"):
        block.load_state_dict(dict(state, **{"inner.0.weight": np.ones((4, 3), np.float32)}))
    with pytest.raises(TypeError, match="'inner.0.bias' has dtype float64, expected float32"):
        block.load_state_dict(dict(state, **{"inner.0.bias": np.ones(4)}))
    # nothing was half-loaded by the failed calls
    for (name, p), value in zip(block.named_parameters(), state.values()):
        np.testing.assert_array_equal(host(p), value)
