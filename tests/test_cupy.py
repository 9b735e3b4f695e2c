"""The CuPy backend: kernel parity with NumPy, gradients across backends, devices.

Kernel tests run once per GPU *device* (the ``device`` fixture with
``helpers.GPU_DEVICES``, the 'cupy' backend active for the test):

* ``cupy`` -- the real thing on a GPU; skipped, with the reason, when CuPy or a
  CUDA device is missing;
* ``cupy-emulated`` -- the same CUDA code and the same Python wrappers on the host:
  every kernel compiled by a C++ compiler (each CUDA block's threads run as
  std::threads meeting at a barrier, see tests/support/cuda_sources.py) and a
  stand-in for the few CuPy calls the wrappers make.  It checks the kernels'
  arithmetic, indexing, reductions and launch arithmetic without a GPU -- not CuPy
  itself, nor the GPU's math library or memory model.  Skipped, with the reason,
  without a C++20 compiler.

Backend tests (Dense and loss gradients, every autoencoder flavor's loss and
gradients, ``fit(backend="cupy")``) need the GPU.  The last section runs
everywhere: the errors for a missing GPU and for mixing devices.
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import minigrad as mg
from helpers import GPU_DEVICES, GPU_MISSING, host, needs_gpu
from minigrad import activations, kernels, losses, nn
from minigrad.kernels import _cuda, dense
from minigrad.kernels import losses as loss_kernels
from support import cupy_emulation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIVATIONS = list(activations.ACTIVATIONS)
DTYPES = [np.float32, np.float64]

#: the test runs once on each GPU device: the real one, and CuPy emulated on the host
on_gpu = pytest.mark.parametrize("device", GPU_DEVICES, indirect=True)

act = activations.activation


def tol(dtype):
    """Two implementations of transcendental functions (the GPU's or the host's
    libm against NumPy): a few ulp apart."""
    if np.dtype(dtype) == np.float32:
        return dict(rtol=1e-5, atol=1e-6)
    return dict(rtol=1e-12, atol=1e-13)


REF = kernels.Kernels("numpy")
CUPY = kernels.Kernels("cupy")  # (building it imports no CuPy)


def special(dtype):
    return np.array([0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0, 40.0, -40.0, 100.0, -100.0, np.inf,
                     -np.inf, np.nan], dtype=dtype)


# ----------------------------------------------------------------------------
# kernel parity with the NumPy references
# ----------------------------------------------------------------------------

@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 1), (37, 45), (130, 70)])
def test_dense_forward(device, dtype, activation, shape):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    bias = rng.standard_normal(shape[1]).astype(dtype)
    expected = REF.dense_forward(z.copy(), bias, act(activation), 0.2)
    z_dev = device.to_device(z)
    out = device.kernels.dense_forward(z_dev, device.to_device(bias), act(activation), 0.2)
    np.testing.assert_allclose(device.to_host(out), expected, **tol(dtype))
    # in place: a contiguous z holds the result
    np.testing.assert_allclose(device.to_host(z_dev), expected, **tol(dtype))


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_non_contiguous_input(device, dtype):
    rng = np.random.default_rng(2)
    big = rng.standard_normal((20, 9)).astype(dtype)
    bias = rng.standard_normal(9).astype(dtype)
    expected = REF.dense_forward(big[::2].copy(), bias, act("tanh"), 0.0)
    out = device.kernels.dense_forward(device.to_device(big)[::2], device.to_device(bias),
                                       act("tanh"), 0.0)
    np.testing.assert_allclose(device.to_host(out), expected, **tol(dtype))


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 1), (5, 3), (130, 45), (300, 70), (0, 4)])
def test_dense_backward(device, dtype, activation, shape):
    rng = np.random.default_rng(3)
    y = act(activation).forward(rng.standard_normal(shape).astype(dtype), dtype(0.2))
    y = np.asarray(y, dtype=dtype)
    g = rng.standard_normal(shape).astype(dtype)
    gz_ref, gb_ref = REF.dense_backward(g, y, act(activation), 0.2)
    for _ in range(2):  # twice: the completion counters must be back at 0
        gz, gb = device.kernels.dense_backward(device.to_device(g), device.to_device(y),
                                               act(activation), 0.2)
        gz, gb = device.to_host(gz), device.to_host(gb)
        assert gz.dtype == dtype and gb.dtype == dtype and gb.shape == (shape[1],)
        np.testing.assert_allclose(gz, gz_ref, **tol(dtype))
        # the bias gradient: the column sums of grad_z, accumulated in float64
        exact = gz.astype(np.float64).sum(axis=0)
        np.testing.assert_allclose(gb, exact, rtol=1e-6 if dtype == np.float32 else 1e-13,
                                   atol=1e-6 if dtype == np.float32 else 1e-13)
        np.testing.assert_allclose(gb, gb_ref, rtol=1e-4 if dtype == np.float32 else 1e-11,
                                   atol=1e-4 if dtype == np.float32 else 1e-11)


def test_dense_backward_launch_grid():
    assert dense.dense_backward_grid(1024, 784, 132) == (25, 21)
    assert dense.dense_backward_grid(10, 784, 132) == (25, 1)
    assert dense.dense_backward_grid(100_000, 1, 132) == (1, 528)
    assert dense.dense_backward_grid(130, 45, 2) == (2, 4)  # several chunks when emulated
    assert loss_kernels.loss_sum_blocks(5000, 2) == 4
    assert loss_kernels.loss_sum_blocks(1, 132) == 1
    assert loss_kernels.loss_sum_blocks(1024 * 784, 132) == 264


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations_of_the_dense_kernels_at_special_values(device, dtype, activation):
    """Each activation and its derivative at 0, -0, tiny, large, inf and NaN inputs:
    the dense kernels with a zero bias (forward: act(z); backward: grad_z = g act'(y))."""
    rng = np.random.default_rng(4)
    x = np.concatenate([special(dtype), (rng.standard_normal(47) * 4).astype(dtype)])
    x = x.reshape(12, 5)
    zero_bias = np.zeros(5, dtype)
    y_ref = REF.dense_forward(x.copy(), zero_bias, act(activation), 0.2)
    y = device.to_host(device.kernels.dense_forward(device.to_device(x),
                                                    device.to_device(zero_bias),
                                                    act(activation), 0.2))
    np.testing.assert_allclose(y, y_ref, equal_nan=True, **tol(dtype))
    g = rng.standard_normal(x.shape).astype(dtype)
    y_ok = np.nan_to_num(y_ref, nan=0.5, posinf=1.0, neginf=-1.0).astype(dtype)
    gx_ref, _ = REF.dense_backward(g, y_ok, act(activation), 0.2)
    gx, _ = device.kernels.dense_backward(device.to_device(g), device.to_device(y_ok),
                                          act(activation), 0.2)
    np.testing.assert_allclose(device.to_host(gx), gx_ref, equal_nan=True, **tol(dtype))


@on_gpu
def test_unknown_activation_is_named(device):
    """An unknown name is refused where it is looked up in the activation table, with
    the valid names, before any kernel runs."""
    with pytest.raises(ValueError, match="unknown activation 'swish'.*'relu'"):
        act("swish")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        nn.Dense(3, 2, "swish")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        mg.activate(mg.Tensor(np.ones(3, np.float32)), "swish")


def _loss_inputs(dtype, n, rng):
    x = (rng.standard_normal(n) * 4).astype(dtype)
    x[:4] = [0.0, 60.0, -60.0, 1e-3]
    t = rng.random(n).astype(dtype)
    return x.reshape(-1, 3) if n % 3 == 0 else x, t.reshape(-1, 3) if n % 3 == 0 else t


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["bce_with_logits", "mse"])
@pytest.mark.parametrize("n", [5, 999, 9000])  # 9000: several blocks, also when emulated
def test_loss_kernels(device, dtype, name, n):
    rng = np.random.default_rng(5)
    x, t = _loss_inputs(dtype, n, rng)
    xd, td = device.to_device(x), device.to_device(t)
    kernel, reference = getattr(device.kernels, name), getattr(REF, name)
    scale = 1.0 / n
    expected, grad_ref = reference(x, t, scale)
    for _ in range(2):  # twice: the completion counter must be back at 0
        total, grad = kernel(xd, td, scale, want_grad=False)
        assert grad is None
        assert total.shape == () and total.dtype == np.float64  # stays on the device
        assert math.isclose(float(total), expected, rel_tol=1e-12)
    total, grad = kernel(xd, td, scale)  # the sum and the gradient in one pass
    assert total.shape == () and total.dtype == np.float64
    assert math.isclose(float(total), expected, rel_tol=1e-12)
    np.testing.assert_allclose(device.to_host(grad), grad_ref, **tol(dtype))
    assert grad.shape == x.shape and grad.dtype == dtype
    _, grad2 = kernel(xd, td, scale)
    np.testing.assert_array_equal(device.to_host(grad2), device.to_host(grad))
    # a seed still on the device (a 0-d array) is a valid scale
    seed = device.to_device(np.array(0.5 * scale, dtype=dtype))
    np.testing.assert_allclose(device.to_host(kernel(xd, td, seed)[1]),
                               reference(x, t, 0.5 * scale)[1], **tol(dtype))


@on_gpu
def test_bce_gradient_of_confident_right_answers(device):
    """-sigmoid(-x) for t = 1 and a large logit, not sigmoid(x) - 1 rounded near 1
    (see tests/test_kernels.py)."""
    x = np.array([5.0, 10.0, 15.0, 20.0, 30.0, 80.0], np.float32)
    exact = -1 / (1 + np.exp(x.astype(np.float64)))
    for logits, target, want in ((x, np.ones_like(x), exact), (-x, np.zeros_like(x), -exact)):
        _, grad = device.kernels.bce_with_logits(device.to_device(logits),
                                                 device.to_device(target), 1.0)
        np.testing.assert_allclose(device.to_host(grad), want, rtol=1e-6, atol=0)


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_value_range(device, dtype):
    rng = np.random.default_rng(6)
    a = rng.standard_normal((301, 7)).astype(dtype)
    for special in (None, np.inf, -np.inf, np.nan):
        if special is not None:
            a[150, 3] = special
        got = device.kernels.value_range(device.to_device(a))
        np.testing.assert_array_equal(got, REF.value_range(a))
        assert all(type(v) is float for v in got)


@on_gpu
def test_loss_kernels_of_empty_arrays(device):
    empty = device.to_device(np.zeros((0, 3), np.float32))
    total, grad = device.kernels.mse(empty, empty, 1.0, want_grad=False)
    assert float(total) == 0.0 and grad is None
    total, grad = device.kernels.bce_with_logits(empty, empty, 1.0)
    assert float(total) == 0.0 and grad.shape == (0, 3)


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_sgd_update_equals_the_reference_bit_for_bit(device, dtype, momentum, nesterov,
                                                     weight_decay):
    """+ - * only, rounded like NumPy (--fmad=false): the same bits."""
    rng = np.random.default_rng(6)
    p = rng.standard_normal((13, 7)).astype(dtype)
    velocity = np.zeros_like(p) if momentum else None
    p_dev = device.to_device(p)
    v_dev = device.to_device(velocity) if momentum else None
    for step in range(4):
        g = rng.standard_normal(p.shape).astype(dtype)
        if step == 3:
            g[:2] = 0  # velocities decay towards subnormals: flushed to 0 in both
            if momentum:
                velocity[:2] = 1e-39 if dtype == np.float32 else 1e-309
                v_dev = device.to_device(velocity)
        REF.sgd_update(p, g, velocity, 0.1, momentum, weight_decay, nesterov)
        device.kernels.sgd_update(p_dev, device.to_device(g), v_dev, 0.1, momentum,
                                  weight_decay, nesterov)
        np.testing.assert_array_equal(device.to_host(p_dev), p)
        if momentum:
            np.testing.assert_array_equal(device.to_host(v_dev), velocity)


@on_gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_decay,decoupled", [(0.0, False), (0.1, False), (0.1, True)])
def test_adam_update_equals_the_reference_bit_for_bit(device, dtype, weight_decay, decoupled):
    """+ - * / and sqrt, in the reference's precisions and rounding: the same bits."""
    rng = np.random.default_rng(7)
    p = rng.standard_normal((13, 7)).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    m[0, :3] = 1e-39 if dtype == np.float32 else 1e-309  # subnormal: flushed
    p_dev, m_dev, v_dev = (device.to_device(a) for a in (p, m, v))
    for step in range(1, 5):
        g = rng.standard_normal(p.shape).astype(dtype)
        g[0] = 0
        REF.adam_update(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, weight_decay, step, decoupled)
        device.kernels.adam_update(p_dev, device.to_device(g), m_dev, v_dev, 1e-2, 0.9, 0.999,
                                   1e-8, weight_decay, step, decoupled)
        for dev, ref in ((p_dev, p), (m_dev, m), (v_dev, v)):
            np.testing.assert_array_equal(device.to_host(dev), ref)
    if not weight_decay or decoupled:  # (Adam's L2 term makes those gradients nonzero)
        assert (m[0, :3] == 0).all() and (v[0] == 0).all()


def test_cupy_kernels_refuse_host_arrays_naming_both_sides():
    a = np.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"run on the GPU \(cuda\).*on the host \(cpu\)"):
        CUPY.dense_forward(a, np.zeros(3, np.float32), act("relu"), 0.0)
    with pytest.raises(TypeError, match="model.to\\('cuda'\\)"):
        CUPY.adam_update(a, a, a, a, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1, False)


def test_cupy_kernels_are_written_for_float32_and_float64():
    with pytest.raises(TypeError, match="float32 and float64, not float16"):
        _cuda.suffix(np.float16)


# ----------------------------------------------------------------------------
# the backend on the GPU
# ----------------------------------------------------------------------------

@on_gpu
def test_backend_selection_and_where_tensors_live(device):
    with mg.set_backend("cupy") as backend:
        assert (backend.name, backend.type, backend.xp, backend.fused) == \
            ("cupy", "cuda", device.xp, True)
        assert mg.get_backend() is backend and isinstance(backend, mg.Device)
        assert backend == "cuda" and str(backend) == "cuda" and backend != "cpu"
        for data in ([1.0, 2.0], np.arange(3.0), 2.5, np.float64(1.5)):
            t = mg.Tensor(data)
            assert t.device == "cuda" and isinstance(t.data, device.xp.ndarray)
            assert t.device is backend  # the Device of the data: the active 'cupy' one
            host = t.numpy()
            assert type(host) is np.ndarray
            np.testing.assert_array_equal(host, np.asarray(data, host.dtype))
        layer = nn.Dense(4, 3)
        assert {p.device for p in layer.parameters()} == {"cuda"}
        # a NumPy array is copied to the device: changing it later changes nothing
        source = np.zeros(3, np.float32)
        t = mg.Tensor(source)
        source[:] = 7
        np.testing.assert_array_equal(t.numpy(), np.zeros(3))


@needs_gpu
def test_minigrad_backend_variable_selects_the_gpu(request):
    if request.config.getoption("--cupy-emulated"):
        pytest.skip("runs a fresh Python process, which has no emulated CuPy")
    out = subprocess.run([sys.executable, "-c", "import minigrad; b = minigrad.get_backend();"
                          "print(b.name, b.type)"], capture_output=True, text=True,
                         cwd=ROOT, env=dict(os.environ, MINIGRAD_BACKEND="cupy"), timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "cupy cuda"


@on_gpu
def test_module_to_moves_parameters_in_place(device):
    with mg.set_backend("numpy"):
        layer = nn.Dense(4, 3, rng=0)
    weight = layer.weight
    before = layer.weight.numpy()
    layer.weight.grad = np.ones((4, 3), np.float32)
    assert layer.to("cuda") is layer
    assert layer.weight is weight and weight.device == "cuda" and weight.grad is None
    np.testing.assert_array_equal(weight.numpy(), before)
    layer.to("cpu")
    assert isinstance(weight.data, np.ndarray)
    np.testing.assert_array_equal(weight.data, before)


@on_gpu
def test_mixing_host_and_device_tensors_names_both_devices(device):
    a = mg.Tensor(np.ones(3, np.float32), device="cpu")
    b = a.to("cuda")
    with pytest.raises(RuntimeError, match="cpu.*cuda|cuda.*cpu"):
        a + b
    with pytest.raises(RuntimeError, match="cpu.*cuda|cuda.*cpu"):
        a + device.xp.ones(3, np.float32)
    np.testing.assert_array_equal((b + np.ones(3, np.float32)).numpy(), 2 * np.ones(3))


def _train_steps(model, x, steps=3):
    opt = mg.optim.Adam(model.parameters(), lr=1e-2)
    values = []
    for _ in range(steps):
        opt.zero_grad()
        loss = losses.binary_cross_entropy_with_logits(model(x), x)
        loss.backward()
        opt.step()
        values.append(loss.item())
    return values


@on_gpu
@pytest.mark.parametrize("active", ["numpy", "numba", "cupy"])
def test_operations_run_where_their_data_is_whatever_the_active_backend(device, active):
    """A model on either device trains under any active backend: layers, losses and
    optimizer updates take the kernels of the device their data is on, and new
    operands join that device."""
    X = np.random.default_rng(12).random((8, 5))
    trained = {}
    for where in ("cpu", "cuda"):
        with mg.set_backend("numpy"):
            model = nn.Sequential(nn.Dense(5, 4, "tanh", dtype="float64", rng=1),
                                  nn.Dense(4, 5, dtype="float64", rng=2)).to(where)
        try:
            switch = mg.set_backend(active)
        except ImportError as error:
            pytest.skip(f"backend {active!r}: {error}")
        with switch:
            x = mg.Tensor(X, device=where)
            trained[where] = _train_steps(model, x)
            assert {p.device for p in model.parameters()} == {where}
            y = x + np.ones(5) + [1.0] * 5          # host operands join x's device
            assert y.device == where
            np.testing.assert_allclose(y.numpy(), X + 2)
    np.testing.assert_allclose(trained["cuda"], trained["cpu"], rtol=1e-9)


@on_gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_dense_and_loss_gradients_match_across_backends(device, dtype, activation, loss):
    rng = np.random.default_rng(8)
    x = rng.random((33, 20)).astype(dtype)
    results = {}
    for backend in ("numpy", "numba", "cupy"):
        try:
            switch = mg.set_backend(backend)
        except ImportError as error:
            pytest.skip(f"backend {backend!r}: {error}")
        with switch:
            model = nn.Sequential(nn.Dense(20, 9, activation, dtype=dtype, rng=1),
                                  nn.Dense(9, 20, None, dtype=dtype, rng=2))
            xt = mg.Tensor(x)
            out = model(xt)
            value = (losses.binary_cross_entropy_with_logits(out, xt, reduction="sum")
                     if loss == "bce" else losses.mse(out, xt))
            value.backward()
            results[backend] = (value.item(), [host(p.grad) for p in model.parameters()])
    t = dict(rtol=2e-4, atol=2e-5) if dtype == "float32" else dict(rtol=1e-9, atol=1e-11)
    for backend in ("numba", "cupy"):
        assert math.isclose(results[backend][0], results["numpy"][0], rel_tol=t["rtol"])
        for got, want in zip(results[backend][1], results["numpy"][1]):
            np.testing.assert_allclose(got, want, **t)


def _flavors():
    from autoencoders import (ContractiveAutoencoder, DenoisingAutoencoder,
                              SparseAutoencoder, VanillaAutoencoder, VariationalAutoencoder)
    return [VanillaAutoencoder, DenoisingAutoencoder, SparseAutoencoder,
            ContractiveAutoencoder, VariationalAutoencoder]


@on_gpu
@pytest.mark.parametrize("flavor", _flavors(), ids=lambda c: c.flavor)
@pytest.mark.parametrize("loss", ["bce", "mse"])
def test_autoencoder_loss_and_gradients_numpy_vs_cupy(device, flavor, loss):
    rng = np.random.default_rng(9)
    X = rng.random((16, 12))
    results = {}
    for backend, device_name in (("numpy", "cpu"), ("cupy", "cuda")):
        with mg.set_backend(backend):
            model = flavor([12, 8, 3], loss=loss, dtype="float64", seed=3)
            assert {p.device for p in model.parameters()} == {device_name}
            total, terms = model.loss(X, rng=np.random.default_rng(4))
            total.backward()
            results[backend] = (terms, {n: host(p.grad) for n, p in model.named_parameters()})
    (terms_np, grads_np), (terms_cu, grads_cu) = results["numpy"], results["cupy"]
    assert terms_np.keys() == terms_cu.keys()
    for key in terms_np:
        assert math.isclose(terms_cu[key], terms_np[key], rel_tol=1e-9, abs_tol=1e-12), key
    for name in grads_np:
        np.testing.assert_allclose(grads_cu[name], grads_np[name], rtol=1e-8, atol=1e-10,
                                   err_msg=name)


@on_gpu
def test_fit_with_backend_cupy_trains_like_numpy_and_leaves_the_model_on_the_gpu(device):
    from autoencoders import VanillaAutoencoder
    X = np.random.default_rng(10).random((64, 12))
    before = mg.get_backend()
    models = {}
    for backend in ("numpy", "cupy"):
        with mg.set_backend("numpy"):  # made on the host: fit moves it
            model = VanillaAutoencoder([12, 6, 3], dtype="float64", seed=1)
        history = model.fit(X, epochs=3, batch_size=16, progress=False, backend=backend)
        assert mg.get_backend() is before  # fit restores the active backend
        models[backend] = (model, history)
    (m_np, h_np), (m_cu, h_cu) = models["numpy"], models["cupy"]
    np.testing.assert_allclose(h_cu["total"], h_np["total"], rtol=1e-9)
    assert {p.device for p in m_cu.parameters()} == {"cuda"}
    assert {p.device for p in m_np.parameters()} == {"cpu"}
    codes = m_cu.transform(X)
    assert isinstance(codes, np.ndarray)
    with mg.set_backend("cupy"):
        np.testing.assert_allclose(codes, m_np.transform(X), rtol=1e-8, atol=1e-10)
    for (name, a), (_, b) in zip(m_cu.state_dict().items(), m_np.state_dict().items()):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10, err_msg=name)


@on_gpu
@pytest.mark.parametrize("flavor", _flavors(), ids=lambda c: c.flavor)
def test_the_autoencoder_api_on_the_gpu_gives_the_cpu_results(device, flavor, tmp_path):
    """Every public method of a flavor, on a model trained with fit(backend="cupy"),
    against the same model trained on the CPU: same numbers, host arrays out, and
    a saved GPU model loads on the CPU."""
    rng = np.random.default_rng(11)
    X = (rng.random((48, 10)) < 0.3).astype(np.float64)
    models = {}
    for backend in ("numpy", "cupy"):
        with mg.set_backend("numpy"):  # made on the host: fit moves it
            model = flavor([10, 6, 2], dtype="float64", seed=5)
        model.fit(X, epochs=2, batch_size=16, progress=False, backend=backend, seed=1)
        models[backend] = model
    cpu, dev = models["numpy"], models["cupy"]
    assert {p.device for p in dev.parameters()} == {"cuda"}
    t = dict(rtol=1e-8, atol=1e-10)
    for method in ("transform", "reconstruct"):
        got, want = getattr(dev, method)(X), getattr(cpu, method)(X)
        got = got.numpy() if isinstance(got, mg.Tensor) else got
        want = want.numpy() if isinstance(want, mg.Tensor) else want
        assert type(got) is np.ndarray, method
        np.testing.assert_allclose(got, want, err_msg=method, **t)
    codes = cpu.transform(X)
    np.testing.assert_allclose(dev.inverse_transform(codes), cpu.inverse_transform(codes), **t)
    for key, value in cpu.evaluate(X, rng=np.random.default_rng(2)).items():
        assert math.isclose(dev.evaluate(X, rng=np.random.default_rng(2))[key], value,
                            rel_tol=1e-9, abs_tol=1e-12), key
    if flavor.flavor == "variational":
        for method, args in (("sample", (5,)), ("elbo", (X,)), ("log_likelihood", (X, 4))):
            got = getattr(dev, method)(*args, rng=np.random.default_rng(3))
            want = getattr(cpu, method)(*args, rng=np.random.default_rng(3))
            np.testing.assert_allclose(got, want, err_msg=method, **t)
        grid = cpu.latent_grid(n=3)
        np.testing.assert_allclose(dev.decode_grid(grid), cpu.decode_grid(grid), **t)
    with mg.set_backend("cupy"):  # a CPU model keeps computing on the CPU
        np.testing.assert_allclose(cpu.transform(X), codes, **t)
        assert math.isclose(cpu.evaluate(X, rng=np.random.default_rng(2))["total"],
                            dev.evaluate(X, rng=np.random.default_rng(2))["total"],
                            rel_tol=1e-9)
    if flavor.flavor == "denoising":
        np.testing.assert_array_equal(dev.corrupt(X, rng=np.random.default_rng(4)).numpy(),
                                      cpu.corrupt(X, rng=np.random.default_rng(4)).numpy())
    dev.save(tmp_path / "model.npz")
    with mg.set_backend("numpy"):
        loaded = type(dev).load(tmp_path / "model.npz")
    assert {p.device for p in loaded.parameters()} == {"cpu"}
    np.testing.assert_allclose(loaded.transform(X), dev.transform(X), **t)


@on_gpu
@pytest.mark.parametrize("flavor", _flavors(), ids=lambda c: c.flavor)
def test_a_training_step_reads_from_the_gpu_only_the_logged_loss_terms(device, flavor,
                                                                      monkeypatch):
    """Each read of a device value by the host waits for the GPU; a step of fit may
    read only the loss terms it logs (one value each), nothing in the layers, losses
    or optimizer; an epoch adds one read (all weights finite?).  Counted on the
    stand-in, whose arrays see every read."""
    if device.xp.ndarray.__module__ != cupy_emulation.MODULE:
        pytest.skip("counts the reads on emulated CuPy")
    reads = []
    for name in ("get", "item", "__float__", "__bool__", "__int__", "tolist"):
        original = getattr(cupy_emulation.DeviceArray, name)
        monkeypatch.setattr(cupy_emulation.DeviceArray, name,
                            lambda self, *a, _f=original, _n=name, **k:
                            reads.append(_n) or _f(self, *a, **k))
    X = np.random.default_rng(14).random((64, 10))
    model = flavor([10, 6, 3], dtype="float64", seed=1)
    model.fit(X[:16], epochs=1, batch_size=16, progress=False, backend="cupy")  # warm-up
    reads.clear()
    history = model.fit(X, epochs=1, batch_size=16, progress=False, backend="cupy")
    assert len(reads) == 4 * len(history) + 1, (len(reads), sorted(set(reads)))


@on_gpu
def test_manifold_command_on_the_gpu_matches_the_cpu(device, tmp_path):
    """The main job end to end with --backend cupy: same metrics as on the CPU."""
    pytest.importorskip("matplotlib", reason="the figures need matplotlib (the 'viz' extra)")
    import json

    from autoencoders import cli
    metrics = {}
    for backend in ("numpy", "cupy"):
        out = tmp_path / backend
        assert cli.main(["manifold", "--n", "300", "--n-test", "60", "--grid", "4", "--epochs",
                         "1", "--hidden", "16", "--batch-size", "64", "--no-progress",
                         "--backend", backend, "--out", str(out)]) == 0
        metrics[backend] = json.load(open(out / "metrics.json"))
        assert json.load(open(out / "config.json"))["backend"] == backend
        assert (out / "manifold.png").stat().st_size > 0
    for key in ("elbo_nats_per_image", "iou_heldout", "r2_height", "r2_width"):
        assert math.isclose(metrics["cupy"][key], metrics["numpy"][key], rel_tol=1e-4,
                            abs_tol=1e-6), key


@on_gpu
def test_benchmark_gpu_path_trains_like_the_cpu_reference(device):
    """benchmarks/train_step.py --backend cupy: its minigrad-cupy step and its GEMM
    floor run, and the step's losses follow the NumPy backend's."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import train_step
    finally:
        sys.path.pop(0)
    x = np.random.default_rng(13).random((8, 784)).astype(np.float32)
    before = mg.get_backend()
    try:
        runs = {}
        for backend in ("numpy", "cupy"):
            step, sync, to_float = train_step.make_minigrad(backend)
            runs[backend] = [to_float(step(x)) for _ in range(3)]
            sync()
            moments = step.moments()
            assert all(type(m) is np.ndarray for m in moments) and len(moments) == 16
        floor, sync, _ = train_step.make_gemm_floor("cupy")
        floor(x)
        sync()
    finally:
        mg.set_backend(before)
    assert runs["cupy"][-1] < runs["cupy"][0]
    np.testing.assert_allclose(runs["cupy"], runs["numpy"], rtol=1e-5)

    # the GPU run's report states issue 6's step-time target with the measured ratio
    def timed(ms):
        return {"step": {str(b): {"median_ms": ms * b / 1024} for b in (256, 1024, 4096)}}
    for cupy_ms, verdict in ((0.9, "met"), (1.3, "MISSED")):
        rows = train_step.targets({"minigrad-cupy": timed(cupy_ms), "torch-cuda": timed(1.0),
                                   "floor-cupy": timed(0.5)})
        row = next(r for r in rows if "cupy step / torch CUDA eager, batch 1024" in r)
        assert f"{cupy_ms:6.2f}  <= 1.0   {verdict}" in row, row
        assert not any("numba" in r for r in rows)


# ----------------------------------------------------------------------------
# without a GPU: clear errors
# ----------------------------------------------------------------------------

@pytest.mark.skipif(GPU_MISSING is None, reason="a GPU is present: the error path is not reachable")
def test_cupy_backend_without_a_gpu_says_what_is_missing():
    with pytest.raises((ImportError, RuntimeError), match="CuPy|CUDA device"):
        mg.set_backend("cupy")
    out = subprocess.run([sys.executable, "-c", "import minigrad; minigrad.get_backend()"],
                         capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env=dict(os.environ, MINIGRAD_BACKEND="cupy"))
    assert out.returncode != 0
    assert "CuPy" in out.stderr or "CUDA device" in out.stderr, out.stderr[-2000:]


@pytest.mark.skipif(GPU_MISSING is None, reason="a GPU is present: the error path is not reachable")
def test_fit_and_module_to_without_a_gpu_fail_clearly_and_change_nothing():
    from autoencoders import VanillaAutoencoder
    before = mg.get_backend()
    model = VanillaAutoencoder([6, 3], seed=0)
    weights = model.state_dict()
    with pytest.raises((ImportError, RuntimeError), match="CuPy|CUDA device"):
        model.fit(np.random.default_rng(0).random((8, 6)), epochs=1, backend="cupy",
                  progress=False)
    assert mg.get_backend() is before
    with pytest.raises((ImportError, RuntimeError), match="CuPy|CUDA device"):
        model.to("cuda")
    assert {p.device for p in model.parameters()} == {"cpu"}
    for name, w in model.state_dict().items():
        np.testing.assert_array_equal(w, weights[name])


def test_importing_the_cupy_kernels_imports_no_cupy():
    code = ("import sys, minigrad\n"
            "from minigrad import kernels\n"
            "k = kernels.Kernels('cupy')\n"
            "found = [getattr(k, name) for name in kernels.names()]\n"
            "assert 'cupy' not in sys.modules, 'cupy imported'\n"
            "print(len(found))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300,
                         env={k: v for k, v in os.environ.items() if k != "MINIGRAD_BACKEND"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert int(out.stdout) == len(kernels.names())


class _FakeDeviceArray:
    """Looks like a CuPy array to minigrad's device checks (its type's module starts
    with "cupy"); enough of an array for the error paths, no GPU needed."""

    def __init__(self, shape):
        self.shape, self.dtype, self.ndim = tuple(shape), np.dtype(np.float32), len(shape)
        self.size = int(np.prod(shape))


_FakeDeviceArray.__module__ = "cupy_fake"


def test_mixing_devices_names_both_without_a_gpu():
    host = mg.Tensor(np.ones((2, 3), np.float32), device="cpu")
    device = mg.Tensor._wrap(_FakeDeviceArray((2, 3)), False)
    assert device.device == "cuda"
    for a, b in ((host, device), (device, host)):
        with pytest.raises(RuntimeError) as info:
            mg.add(a, b)
        message = str(info.value)
        assert "cpu" in message and "cuda" in message and "add" in message, message
        assert ".to(" in message
    with pytest.raises(RuntimeError, match="cpu.*cuda"):
        mg.mul(host, _FakeDeviceArray((2, 3)))  # a raw device array next to host tensors


@pytest.mark.skipif(GPU_MISSING is None, reason="a GPU is present: the error path is not reachable")
def test_a_layer_given_device_data_wants_the_gpu_backend_and_says_what_is_missing():
    """Operations run where their data is: device data under a CPU backend asks for
    the 'cupy' backend's kernels, which without a GPU is a clear error; a host layer
    given device data names both devices."""
    try:
        switch = mg.set_backend("numba")
    except ImportError as error:
        pytest.skip(f"the numba backend: {error}")
    with switch:
        layer = nn.Dense(3, 2)
        x = mg.Tensor._wrap(_FakeDeviceArray((4, 3)), False)
        assert x.device == "cuda" and x.device.fused
        with pytest.raises((ImportError, RuntimeError), match="CuPy|CUDA device"):
            x.device.kernels
        with pytest.raises(RuntimeError, match="cuda tensor.*cpu tensor.*cpu and cuda"):
            layer(x)
