"""The engine itself: dtypes, the backward pass, graph release, errors, stability."""
import gc
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest

import minigrad as mg
from helpers import host
from minigrad.tensor import Function


# ----------------------------------------------------------------------------
# construction and dtypes
# ----------------------------------------------------------------------------

def test_python_numbers_and_lists_become_float32():
    assert mg.Tensor(1.5).dtype == np.float32
    assert mg.Tensor([1, 2, 3]).dtype == np.float32
    assert mg.Tensor([[1.0, 2.0]]).shape == (1, 2)


def test_arrays_keep_their_dtype():
    assert mg.Tensor(np.zeros(3)).dtype == np.float64
    assert mg.Tensor(np.zeros(3, dtype=np.int64)).dtype == np.int64
    assert mg.Tensor([1.0], dtype="float64").dtype == np.float64


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="int64 cannot require a gradient"):
        mg.Tensor(np.arange(3), requires_grad=True)
    t = mg.Tensor(np.arange(3))
    with pytest.raises(TypeError):
        t.requires_grad = True


def test_scalars_take_the_tensor_dtype():
    x = mg.Tensor(np.ones(2, dtype=np.float32), requires_grad=True)
    y = 2.5 * x - 1 + x / 3.0
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_attributes_numpy_item_detach():
    x = mg.Tensor(np.arange(6.0).reshape(2, 3), requires_grad=True)
    assert (x.shape, x.ndim, x.size, x.dtype, x.device) == \
        ((2, 3), 2, 6, np.float64, mg.get_backend().type)
    host = x.numpy()
    host[0, 0] = 99
    assert x.data[0, 0] == 0  # numpy() is a copy
    assert mg.Tensor(np.float64(3.0)).item() == 3.0
    with pytest.raises(ValueError, match="one element"):
        x.item()
    d = x.detach()
    assert not d.requires_grad and d.data is x.data


def test_comparisons_are_not_differentiable():
    x = mg.Tensor([1.0, -2.0, 3.0], requires_grad=True)
    mask = x > 0
    assert mask.dtype == bool and not mask.requires_grad
    np.testing.assert_array_equal(host(mask), [True, False, True])
    np.testing.assert_array_equal(host(x <= 1.0), [True, True, False])
    np.testing.assert_array_equal(host(x == x), [True, True, True])


def test_methods_and_functions_agree():
    rng = np.random.default_rng(0)
    a = mg.Tensor(rng.random((3, 4)))
    for name in ["exp", "log", "sqrt", "abs", "tanh", "sigmoid", "relu", "softplus",
                 "log_sigmoid"]:
        np.testing.assert_array_equal(host(getattr(a, name)()), host(getattr(mg, name)(a)))
    np.testing.assert_array_equal(host(a.sum(axis=1, keepdims=True)),
                                  host(mg.sum(a, axis=1, keepdims=True)))
    np.testing.assert_array_equal(host(a.T), host(a).T)
    np.testing.assert_array_equal(host(a.where(a > 0.5, 0.0)), np.where(host(a) > 0.5, host(a), 0))
    np.testing.assert_array_equal(host(a.concatenate([a], axis=0)),
                                  np.concatenate([host(a), host(a)]))
    np.testing.assert_array_equal(host(a.clip(0.2, 0.6)), np.clip(host(a), 0.2, 0.6))
    np.testing.assert_array_equal(host(a.maximum(0.5)), np.maximum(host(a), 0.5))
    np.testing.assert_array_equal(host(abs(-a)), host(a))


def test_reflected_operators_with_numpy_operands():
    x = mg.Tensor(np.ones(3), requires_grad=True)
    y = np.full(3, 2.0) * x + np.float64(1.0)
    assert isinstance(y, mg.Tensor)
    y.sum().backward()
    np.testing.assert_array_equal(host(x.grad), [2.0, 2.0, 2.0])


# ----------------------------------------------------------------------------
# backward semantics
# ----------------------------------------------------------------------------

def test_leaf_gradients_accumulate_until_zeroed():
    x = mg.Tensor(np.array([1.0, 2.0]), requires_grad=True)
    (x * 3).sum().backward()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(host(x.grad), [6.0, 6.0])
    x.zero_grad()
    (x * 3).sum().backward()
    np.testing.assert_array_equal(host(x.grad), [3.0, 3.0])


def test_fan_out_adds_gradients():
    x = mg.Tensor(np.array([2.0]), requires_grad=True)
    y = x * x + x  # x used three times
    y.sum().backward()
    np.testing.assert_array_equal(host(x.grad), [5.0])


def test_non_scalar_backward_needs_grad():
    x = mg.Tensor(np.ones(3), requires_grad=True)
    with pytest.raises(RuntimeError, match=r"non-scalar output \(shape \(3,\)\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="grad has shape"):
        (x * 2).backward(np.ones(4))
    (x * 2).backward(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(host(x.grad), [2.0, 4.0, 6.0])


def test_second_backward_on_released_graph_raises():
    x = mg.Tensor(np.ones(3), requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="already released"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = mg.Tensor(np.ones(3), requires_grad=True)
    y = (x.exp() * 2).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(host(x.grad), 4 * np.e * np.ones(3))


def test_backward_without_requires_grad_raises():
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        (mg.Tensor([1.0]) * 2).sum().backward()


def test_no_grad_records_nothing_and_restores_on_exception():
    x = mg.Tensor(np.ones(2), requires_grad=True)
    with mg.no_grad():
        y = x * 2
        assert not mg.is_grad_enabled()
        with mg.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.is_leaf
    assert z.requires_grad
    assert mg.is_grad_enabled()
    with pytest.raises(ZeroDivisionError):
        with mg.no_grad():
            1 / 0
    assert mg.is_grad_enabled()


def test_chain_of_100000_operations():
    x = mg.Tensor(np.array([0.5]), requires_grad=True)
    y = x
    for _ in range(100_000):
        y = y * 1.0 + 0.0
    y.sum().backward()  # iterative: no RecursionError
    np.testing.assert_array_equal(host(x.grad), [1.0])


def test_graph_is_freed_after_backward():
    """No tensor of a finished graph stays alive after backward() and del."""
    x = mg.Tensor(np.random.default_rng(0).random((4, 3)), requires_grad=True)
    w = mg.Tensor(np.random.default_rng(1).random((3, 2)), requires_grad=True)
    h = mg.tanh(x @ w)
    z = mg.sigmoid(h) * h
    loss = z.mean()
    refs = [weakref.ref(t) for t in (h, z, loss)]
    loss.backward()
    # the released nodes no longer hold their inputs
    assert loss._node is None and z._node is None
    del h, z, loss
    gc.disable()
    try:
        assert all(r() is None for r in refs), "an intermediate tensor outlived its graph"
    finally:
        gc.enable()
    assert x.grad is not None and w.grad is not None


def test_graph_without_backward_is_collected_by_refcount():
    x = mg.Tensor(np.ones(3), requires_grad=True)
    y = mg.exp(x) * 2
    r = weakref.ref(y)
    del y
    assert r() is None  # no reference cycle keeps an unused graph alive


def test_backward_order_is_deterministic():
    class Recorder(Function):
        log = []

        def forward(self, x, tag):
            self.tag = tag
            return x

        def backward(self, g):
            Recorder.log.append(self.tag)
            return g

    def run():
        Recorder.log.clear()
        x = mg.Tensor(np.ones(2), requires_grad=True)
        a, b, c = (Recorder.apply(x, tag=t) for t in "abc")
        (Recorder.apply(a * b, tag="ab") + c).sum().backward()
        return list(Recorder.log)

    first = run()
    assert all(run() == first for _ in range(5))
    assert first.index("ab") < first.index("a")  # consumers before producers


# ----------------------------------------------------------------------------
# numerical stability
# ----------------------------------------------------------------------------

EXTREMES = np.array([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4], dtype=np.float32)


@pytest.mark.parametrize("fn", [mg.sigmoid, mg.softplus, mg.log_sigmoid])
def test_stable_at_extreme_inputs(fn):
    x = mg.Tensor(EXTREMES, requires_grad=True)
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # no overflow on the way
        y = fn(x)
        y.sum().backward()
    assert np.all(np.isfinite(host(y))) and np.all(np.isfinite(host(x.grad)))
    x64 = EXTREMES.astype(np.float64)
    expected = {mg.sigmoid: lambda v: 1 / (1 + np.exp(-v)),
                mg.softplus: lambda v: np.logaddexp(0, v),
                mg.log_sigmoid: lambda v: -np.logaddexp(0, -v)}[fn]
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(host(y), expected(x64), rtol=1e-6, atol=1e-30)


def test_logsumexp_stable_at_extreme_inputs():
    x = mg.Tensor(np.stack([EXTREMES, -EXTREMES, np.full(7, 1e4, np.float32)]),
                  requires_grad=True)
    y = mg.logsumexp(x, axis=1)
    y.sum().backward()
    assert np.all(np.isfinite(host(y))) and np.all(np.isfinite(host(x.grad)))
    np.testing.assert_allclose(host(y)[2], 1e4 + np.log(7), rtol=1e-6)
    np.testing.assert_allclose(host(x.grad).sum(axis=1), np.ones(3), rtol=1e-6)


def test_logsumexp_of_all_minus_infinity():
    x = mg.Tensor(np.full(3, -np.inf))
    assert mg.logsumexp(x).item() == -np.inf


def test_where_keeps_nan_of_the_branch_not_taken_out_of_the_gradient():
    x = mg.Tensor(np.array([0.0, 1.0, 4.0]), requires_grad=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        y = mg.where(x > 0, mg.log(x), 0.0) + mg.where(x > 0, mg.sqrt(x), 0.0)
    y.sum().backward()
    np.testing.assert_allclose(host(x.grad), [0.0, 1.0 + 0.5, 0.25 + 0.25])


def test_maximum_and_clip_block_inf_from_the_other_branch():
    x = mg.Tensor(np.array([0.0, 2.0]), requires_grad=True)
    with np.errstate(divide="ignore"):
        y = mg.maximum(mg.log(x), -5.0) + mg.clip(1.0 / x, high=3.0)
    y.sum().backward()
    assert np.all(np.isfinite(host(x.grad)))
    np.testing.assert_allclose(host(x.grad), [0.0, 0.5 - 0.25])


# ----------------------------------------------------------------------------
# errors name the operation, the shapes and what was expected
# ----------------------------------------------------------------------------

def test_error_messages():
    a, b = mg.Tensor(np.ones((3, 4))), mg.Tensor(np.ones((5, 2)))
    with pytest.raises(ValueError, match=r"matmul: shapes \(3, 4\) and \(5, 2\) do not align: 4 != 5"):
        a @ b
    with pytest.raises(ValueError, match=r"add: shapes \(3, 4\) and \(3,\) cannot be broadcast"):
        a + mg.Tensor(np.ones(3))
    with pytest.raises(ValueError, match=r"reshape: cannot reshape a tensor of shape \(3, 4\)"):
        a.reshape(5, 2)
    with pytest.raises(ValueError, match="sum: axis 2 is out of range"):
        a.sum(axis=2)
    with pytest.raises(ValueError, match=r"concatenate: tensor 1 has shape \(5, 2\)"):
        mg.concatenate([a, b], axis=0)
    with pytest.raises(TypeError, match="pow: the exponent must be a Python number"):
        a ** a
    with pytest.raises(TypeError, match="where: condition has dtype float64"):
        mg.where(a, a, a)
    with pytest.raises(IndexError, match="first axis only"):
        a[:, np.array([0, 1])]
    with pytest.raises(IndexError, match="out of bounds for axis 0 with size 3"):
        a[np.array([0, 3])]
    with pytest.raises(ValueError, match=r"matmul: operands must have at least 1 dimension"):
        mg.matmul(mg.Tensor(2.0), a)
    with pytest.raises(ValueError, match=r"broadcast_to: cannot broadcast .* \(3, 4\) to shape \(2, 4\)"):
        mg.broadcast_to(a, (2, 4))


def test_getitem_with_repeated_rows_and_boolean_mask():
    x = mg.Tensor(np.arange(6.0).reshape(3, 2), requires_grad=True)
    x[np.array([0, 0, 2])].sum().backward()
    np.testing.assert_array_equal(host(x.grad), [[2, 2], [0, 0], [1, 1]])
    x.zero_grad()
    mask = np.array([True, False, True])
    x[mask].sum().backward()
    np.testing.assert_array_equal(host(x.grad), [[1, 1], [0, 0], [1, 1]])


# ----------------------------------------------------------------------------
# gradcheck itself must catch a wrong gradient
# ----------------------------------------------------------------------------

class WrongSquare(Function):
    """y = x^2 with a deliberately wrong backward (3x instead of 2x)."""

    def forward(self, x):
        self.save_for_backward(x)
        return x * x

    def backward(self, g):
        x, = self.saved
        return g * 3 * x


def test_gradcheck_reports_the_worst_element():
    x = mg.Tensor(np.array([1.0, -20.0, 0.5]), requires_grad=True)
    with pytest.raises(AssertionError) as info:
        mg.gradcheck(lambda t: WrongSquare.apply(t).sum(), [x], names=["x"])
    message = str(info.value)
    assert "gradient of x (shape (3,)) is wrong at index (1,)" in message
    assert "analytic -60.0" in message and "numeric -40.0" in message  # 3x vs 2x at x = -20


def test_gradcheck_random_direction_mode_catches_it_too():
    x = mg.Tensor(np.random.default_rng(0).random((20, 30)) + 0.5, requires_grad=True)
    assert mg.gradcheck(lambda t: t * t, [x], mode="random")
    with pytest.raises(AssertionError, match="random direction"):
        mg.gradcheck(lambda t: WrongSquare.apply(t), [x], mode="random")


def test_gradcheck_demands_float64():
    with pytest.raises(TypeError, match="float64"):
        mg.gradcheck(lambda t: t * 2, [mg.Tensor([1.0], requires_grad=True)])


# ----------------------------------------------------------------------------
# backend selection
# ----------------------------------------------------------------------------

def test_set_backend_as_call_and_context_manager():
    before = mg.get_backend()
    with mg.set_backend("numpy") as backend:
        assert backend.name == "numpy" and mg.get_backend() is backend
        assert backend.xp is np
    assert mg.get_backend() is before
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        mg.set_backend("nope")


def test_import_compiles_nothing_and_env_variable_selects_backend():
    code = ("import sys, minigrad; assert 'numba' not in sys.modules, 'numba imported'; "
            "assert 'cupy' not in sys.modules; print(minigrad.get_backend().name)")
    env = dict(os.environ, MINIGRAD_BACKEND="numpy")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "numpy"
    env["MINIGRAD_BACKEND"] = "bogus"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert "MINIGRAD_BACKEND='bogus' is not a backend" in out.stderr


def test_leaves_never_share_a_gradient_array():
    """Add hands one array to both inputs; each leaf must still own its gradient."""
    a = mg.Tensor(np.ones(3), requires_grad=True)
    b = mg.Tensor(np.ones(3), requires_grad=True)
    seed = np.ones(3)
    (a + b).backward(seed)
    assert a.grad is not b.grad and a.grad is not seed
    (a + b).backward(seed)
    seed[:] = 100  # the caller's seed is not the leaf's gradient either
    np.testing.assert_array_equal(host(a.grad), [2, 2, 2])
    np.testing.assert_array_equal(host(b.grad), [2, 2, 2])


@pytest.mark.parametrize("name, f, x, grad", [
    ("pow -1 at 0", lambda x: mg.where(x.data > 0, x ** -1, 0.0), [0.0, 2.0], [0.0, -0.25]),
    ("pow 0.5 at 0", lambda x: mg.where(x.data > 0, x ** 0.5, 0.0), [0.0, 4.0], [0.0, 0.25]),
    ("exp overflow", lambda x: mg.where(x.data < 500, mg.exp(x), 0.0), [1000.0, 0.0], [0.0, 1.0]),
    ("x * x at inf", lambda x: mg.where(np.isfinite(x.data), x * x, 0.0), [np.inf, 2.0],
     [0.0, 4.0]),
    ("1 / x at 0", lambda x: mg.where(x.data != 0, 1.0 / x, 0.0), [0.0, 2.0], [0.0, -0.25]),
    ("inf / x", lambda x: mg.where(x.data > 1, np.inf / x, 0.0), [1.0, 2.0], [0.0, -np.inf]),
    ("log at 0", lambda x: mg.where(x.data > 0, mg.log(x), 0.0), [0.0, 2.0], [0.0, 0.5]),
])
def test_masked_branches_give_zero_gradients_through_every_elementwise_primitive(
        device, name, f, x, grad):
    """The promise of minigrad/functions.py's docstring, op by op."""
    x = mg.Tensor(np.array(x), requires_grad=True)
    with np.errstate(all="ignore"):
        f(x).sum().backward()
    np.testing.assert_array_equal(host(x.grad), grad)


def test_where_the_promise_stops_a_matrix_product_and_the_masked_input_that_fixes_it():
    """Through matmul an infinite operand meets zeros in a sum: NaN, as documented;
    masking the input as well keeps the gradient finite."""
    w = mg.Tensor(np.array([[np.inf], [1.0]]))
    x = mg.Tensor(np.array([[0.0, 2.0]]), requires_grad=True)
    with np.errstate(all="ignore"):
        mg.where(np.array([[False]]), x @ w, 0.0).sum().backward()
    assert np.isnan(host(x.grad)).any()
    x.grad = None
    safe_w = mg.where(np.isfinite(w.data), w, 0.0)
    mg.where(np.array([[False]]), x @ safe_w, 0.0).sum().backward()
    np.testing.assert_array_equal(host(x.grad), [[0.0, 0.0]])


@pytest.mark.parametrize("x, grad", [
    ([np.inf, 0.0], [1.0, 0.0]), ([np.inf, np.inf, 1.0], [0.5, 0.5, 0.0]),
    ([-np.inf, -np.inf], [0.5, 0.5]), ([-np.inf, 0.0], [0.0, 1.0])])
def test_logsumexp_gradient_at_infinite_entries_is_softmaxs_limit(device, x, grad):
    t = mg.Tensor(np.array(x), requires_grad=True)
    mg.logsumexp(t).backward()
    np.testing.assert_allclose(host(t.grad), grad)
