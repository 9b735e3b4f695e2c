"""Every kernel entry point checks what it is given (issue: a (1, 1) gradient for a
3000 x 3000 weight crashed the Numba Adam; a transposed one was applied silently).

Table-driven: for each kernel, valid arguments, then each array argument replaced
by one of the wrong shape or dtype, on every device; the error must name the
kernel and the argument.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import minigrad as mg
from minigrad import nn, optim
from minigrad.activations import ACTIVATIONS

RELU = ACTIVATIONS["relu"]


def valid_arguments(name, n=4, m=3):
    """(positional arguments, names of the array arguments) of a valid call."""
    a = lambda *shape: np.full(shape, 0.5, np.float32)  # noqa: E731
    return {
        "dense_forward": ([a(n, m), a(m), RELU, 0.01], {0: "z", 1: "bias"}),
        "dense_backward": ([a(n, m), a(n, m), RELU, 0.01], {0: "grad_y", 1: "y"}),
        "bce_with_logits": ([a(n, m), a(n, m), 1.0, True], {0: "pred", 1: "target"}),
        "mse": ([a(n, m), a(n, m), 1.0, True], {0: "pred", 1: "target"}),
        "value_range": ([a(n, m)], {0: "a"}),
        "sgd_update": ([a(n, m), a(n, m), a(n, m), 0.1, 0.9, 0.0, False],
                       {0: "param", 1: "grad", 2: "velocity"}),
        "adam_update": ([a(n, m), a(n, m), a(n, m), a(n, m), 1e-3, 0.9, 0.999, 1e-8, 0.0, 1,
                         False], {0: "param", 1: "grad", 2: "m", 3: "v"}),
    }[name]


KERNELS = ["dense_forward", "dense_backward", "bce_with_logits", "mse", "value_range",
           "sgd_update", "adam_update"]


@pytest.mark.parametrize("name", KERNELS)
def test_valid_arguments_run(device, name):
    args, arrays = valid_arguments(name)
    args = [device.to_device(a) if i in arrays else a for i, a in enumerate(args)]
    getattr(device.kernels, name)(*args)


@pytest.mark.parametrize("name", [k for k in KERNELS if k != "value_range"])  # any shape
@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_a_wrong_shape_is_named(name, data):
    """Any array argument given another shape: a ValueError naming kernel and argument
    (the reference above all: NumPy would broadcast (1, m) silently)."""
    for backend in ("numpy", "numba"):
        kernels = mg.kernels.Kernels(backend)
        args, arrays = valid_arguments(name)
        position = data.draw(st.sampled_from(sorted(arrays)))
        good = args[position].shape
        shape = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
                          .filter(lambda s: s != good))
        if name == "dense_forward" and position == 0 and len(shape) == 2 and shape[1] == 3:
            shape = (shape[0], 4)  # any batch is valid: only the columns must fit the bias
        args[position] = np.full(shape, 0.5, np.float32)
        with pytest.raises(ValueError, match=f"{name}: .*(has shape|expected)"):
            getattr(kernels, name)(*args)


@pytest.mark.parametrize("name", KERNELS)
@pytest.mark.parametrize("dtype", [np.float16, np.int32, np.bool_])
def test_a_dtype_the_kernels_do_not_compute_in_is_named(name, dtype):
    for backend in ("numpy", "numba"):
        kernels = mg.kernels.Kernels(backend)
        args, arrays = valid_arguments(name)
        args[0] = args[0].astype(dtype)
        with pytest.raises(TypeError, match=f"{name}: {arrays[0]} has dtype {np.dtype(dtype)}"):
            getattr(kernels, name)(*args)


def test_the_range_of_nothing_is_an_error(device):
    for shape in [(0,), (0, 3), (4, 0, 2)]:
        with pytest.raises(ValueError, match=r"value_range: a is empty \(shape"):
            device.kernels.value_range(device.to_device(np.zeros(shape, np.float32)))


def test_optimizer_buffers_must_match_the_parameter_dtype():
    kernels = mg.kernels.Kernels("numba")
    args, _ = valid_arguments("adam_update")
    args[2] = args[2].astype(np.float64)
    with pytest.raises(TypeError, match="adam_update: m has dtype float64, expected param's "
                                        "float32"):
        kernels.adam_update(*args)


def test_dense_kernels_want_an_activation_of_the_table():
    kernels = mg.kernels.Kernels("numba")
    args, _ = valid_arguments("dense_forward")
    args[2] = "relu"
    with pytest.raises(TypeError, match="dense_forward: activation is 'relu'"):
        kernels.dense_forward(*args)


@pytest.mark.parametrize("make", [lambda p: optim.Adam(p), lambda p: optim.SGD(p, momentum=0.9)])
@pytest.mark.parametrize("grad_shape", [(1, 1), (300, 200), (1, 300)])
def test_a_wrong_gradient_never_reaches_the_weights(device, make, grad_shape):
    """The crash of the report: a big layer, a gradient of another shape, a step."""
    layer = nn.Dense(200, 300)
    before = layer.weight.numpy()
    opt = make(layer.parameters())
    layer.weight.grad = layer.weight.xp.zeros(grad_shape, dtype=np.float32)
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(200, 300\) but its "
                                         r"gradient has shape"):
        opt.step()
    np.testing.assert_array_equal(layer.weight.numpy(), before)
