"""The activation table: each entry's four forms agree with each other.

An entry of ``minigrad.activations.ACTIVATIONS`` holds the activation and its
derivative (written from the output y) as Python -- run on NumPy arrays, on
Tensors, and compiled by Numba as scalar code -- and as CUDA C expressions.  Here
every form is compared with the NumPy form on ordinary values and at the
extremes (±0, tiny, huge, ±inf, NaN), and the derivative with finite differences
of the function.
"""
import numpy as np
import pytest

import minigrad as mg
from helpers import host
from minigrad import activations
from minigrad.activations import ACTIVATIONS
from minigrad.denormals import flush_subnormals

NAMES = list(ACTIVATIONS)
SLOPE = 0.2


def extremes(dtype):
    return np.array([[0.0, -0.0, 1e-30, -1e-30, 1e-6, -1e-6, 0.3, -0.3, 3.0, -3.0],
                     [20.0, -20.0, 40.0, -40.0, 87.0, -87.0, 100.0, -100.0, 1e4, -1e4],
                     [np.inf, -np.inf, np.nan, 0.5, -0.5, 5.0, -5.0, 0.0, 1.0, -1.0]],
                    dtype=dtype)


def reference(name, x):
    """act(x) in float64 from its textbook definition (not from the table)."""
    x = x.astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        return {"identity": x, "relu": np.where(x > 0, x, np.where(np.isnan(x), x, 0.0)),
                "leaky_relu": np.where(x > 0, x, SLOPE * x),
                "sigmoid": np.exp(-np.logaddexp(0.0, -x)), "tanh": np.tanh(x),
                "softplus": np.logaddexp(0.0, x)}[name]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_python_form_is_the_activation(name, dtype):
    x = extremes(dtype)
    y = ACTIVATIONS[name].forward(x, dtype(SLOPE))
    assert y.dtype == dtype and y.shape == x.shape
    rtol = 3e-7 if dtype == np.float32 else 1e-15
    np.testing.assert_allclose(y, reference(name, x).astype(dtype), rtol=rtol, atol=1e-37)


@pytest.mark.parametrize("name", NAMES)
def test_the_derivative_from_y_matches_finite_differences(name):
    # away from the kink of relu / leaky relu at 0
    x = np.array([-6.0, -2.5, -0.7, -0.1, 0.1, 0.4, 1.3, 3.0, 7.0])
    entry, h = ACTIVATIONS[name], 1e-6
    numeric = (entry.forward(x + h, SLOPE) - entry.forward(x - h, SLOPE)) / (2 * h)
    analytic = entry.derivative(entry.forward(x, SLOPE), SLOPE)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_the_derivative_at_the_extremes_is_finite_and_in_range(name):
    x = extremes(np.float64)
    x = x[np.isfinite(x)]
    d = ACTIVATIONS[name].derivative(ACTIVATIONS[name].forward(x, SLOPE), SLOPE)
    assert np.all(np.isfinite(d)) and np.all(d >= 0) and np.all(d <= 1)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_kernels_compute_the_table(device, name, dtype):
    """The fused dense kernels of every backend -- the NumPy reference, the Numba
    scalar form, the CUDA expressions -- against the table's NumPy form."""
    entry = ACTIVATIONS[name]
    x = extremes(dtype)
    expected = flush_subnormals(np.array(entry.forward(x, dtype(SLOPE)), dtype=dtype))
    y = host(device.kernels.dense_forward(device.to_device(x), device.to_device(
        np.zeros(x.shape[1], dtype)), entry, SLOPE))
    # float32 kernels compute e^-|x| without subnormals: a result that underflows
    # may come out as the smallest normal number instead of 0
    rtol, atol = (4e-7, 2 * np.finfo(dtype).tiny) if dtype == np.float32 else (1e-15, 0)
    np.testing.assert_allclose(y, expected, rtol=rtol, atol=atol)

    y_in = np.array(entry.forward(np.array([[-3.0, -0.5, 0.0, 0.25, 2.0, 50.0]], dtype),
                                  dtype(SLOPE)), dtype=dtype)
    grad_y = np.full_like(y_in, 0.75)
    grad_z, grad_bias = device.kernels.dense_backward(device.to_device(grad_y),
                                                       device.to_device(y_in), entry, SLOPE)
    # the exact derivative at the dtype's y, from float64: a form like 1 - y^2 cancels
    # near |y| = 1, so a kernel is held to an ulp of 1 (absolute) there -- within it
    # are both two roundings (NumPy) and one fused multiply-add (Numba, CUDA)
    exact = grad_y.astype(np.float64) * entry.derivative(y_in.astype(np.float64), SLOPE)
    expected_grad = flush_subnormals(np.array(exact, dtype=dtype))
    ulp_of_one = 0.75 * np.finfo(dtype).eps
    np.testing.assert_allclose(host(grad_z), expected_grad, rtol=rtol, atol=atol + ulp_of_one)
    np.testing.assert_allclose(host(grad_bias), exact.sum(axis=0), rtol=rtol,
                               atol=atol + ulp_of_one)


@pytest.mark.parametrize("name", NAMES)
def test_the_derivative_on_tensors_equals_the_array_form_and_differentiates(name):
    """The contractive penalty applies the derivative to a Tensor h and trains through
    it: the values match the array form, and its gradient matches finite differences."""
    entry = ACTIVATIONS[name]
    rng = np.random.default_rng(0)
    y = entry.forward(rng.uniform(-3, 3, (4, 5)), SLOPE)
    t = mg.Tensor(y, requires_grad=True)
    d = entry.derivative(t, SLOPE)
    np.testing.assert_allclose(host(d), np.broadcast_to(entry.derivative(y, SLOPE), y.shape),
                               rtol=1e-13, atol=1e-15)
    if d.requires_grad:
        assert mg.gradcheck(lambda h: (entry.derivative(h, SLOPE) ** 2).sum(), [t])


def test_the_cuda_source_numbers_the_table_in_order():
    source = activations.cuda_source()
    for i, (name, entry) in enumerate(ACTIVATIONS.items()):
        assert entry.code == i
        assert f"#define MG_{name.upper()} {i}\n" in source
        assert f"case {i}: return {entry.cuda_forward};  /* {name} */" in source
        assert f"case {i}: return {entry.cuda_derivative};  /* {name} */" in source


def test_unknown_names_list_the_table():
    with pytest.raises(ValueError, match="swish.*identity.*softplus"):
        activations.activation("swish")
    assert activations.activation(None) is ACTIVATIONS["identity"]
    assert activations.activation("ReLU") is ACTIVATIONS["relu"]
