"""Every Numba kernel against its NumPy reference (Hypothesis: float32 and float64,
odd shapes, non-contiguous inputs, both the serial and the parallel version)."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

pytest.importorskip("numba", reason="the Numba kernels need numba")

from minigrad import kernels  # noqa: E402
from minigrad.kernels import _jit  # noqa: E402
from minigrad.kernels.dense import ACTIVATIONS  # noqa: E402

REF = kernels.table("numpy")
NUMBA = kernels.table("numba")
SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

dtypes = st.sampled_from([np.float32, np.float64])
matrix_shapes = hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=37)


def tol(dtype):
    return dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)


@st.composite
def arrays(draw, shape, dtype, low=-4.0, high=4.0, strided=None):
    """An array of ``shape``; sometimes a non-contiguous view of a larger one."""
    strided = draw(st.booleans()) if strided is None else strided
    full = (shape[0] * 2,) + tuple(shape[1:]) if strided and len(shape) else shape
    a = draw(hnp.arrays(dtype, full, elements=st.floats(low, high, width=32)))
    return a[::2] if strided and len(shape) else a


@pytest.fixture(params=["serial", "parallel"])
def variant(request, monkeypatch):
    """Run each test once with the serial and once with the parallel kernels."""
    monkeypatch.setattr(_jit, "PARALLEL_MIN_SIZE", 1 if request.param == "parallel" else 1 << 62)
    return request.param


def test_every_kernel_has_a_numba_twin():
    assert set(NUMBA) == set(REF) == set(kernels.names())
    assert {"dense_forward", "dense_backward", "activation_forward", "activation_backward",
            "bce_with_logits_forward", "bce_with_logits_backward", "mse_forward",
            "mse_backward", "sgd_update", "adam_update"} <= set(REF)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@SETTINGS
@given(data=st.data())
def test_dense_forward_and_backward(activation, data, variant):
    dtype = data.draw(dtypes)
    n, m = data.draw(matrix_shapes)
    z = data.draw(arrays((n, m), dtype))
    bias = data.draw(arrays((m,), dtype, strided=False))
    y_ref = REF["dense_forward"](z.copy(), bias, activation, 0.1)
    y = NUMBA["dense_forward"](np.array(z), bias, activation, 0.1)
    np.testing.assert_allclose(y, y_ref, **tol(dtype))
    assert y.dtype == dtype
    g = data.draw(arrays((n, m), dtype))
    gz_ref, gb_ref = REF["dense_backward"](g, y_ref, activation, 0.1)
    gz, gb = NUMBA["dense_backward"](g, y_ref, activation, 0.1)
    np.testing.assert_allclose(gz, gz_ref, **tol(dtype))
    np.testing.assert_allclose(gb, gb_ref, rtol=tol(dtype)["rtol"], atol=tol(dtype)["atol"] * n)
    assert gz.dtype == dtype and gb.shape == (m,)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@SETTINGS
@given(data=st.data())
def test_elementwise_activation(activation, data, variant):
    dtype = data.draw(dtypes)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7))
    x = data.draw(arrays(shape, dtype))
    y_ref = REF["activation_forward"](x, activation, 0.2)
    np.testing.assert_allclose(NUMBA["activation_forward"](x, activation, 0.2), y_ref, **tol(dtype))
    g = data.draw(arrays(shape, dtype))
    np.testing.assert_allclose(NUMBA["activation_backward"](g, y_ref, activation, 0.2),
                               REF["activation_backward"](g, y_ref, activation, 0.2), **tol(dtype))


@pytest.mark.parametrize("name", ["bce_with_logits", "mse"])
@SETTINGS
@given(data=st.data())
def test_loss_kernels(name, data, variant):
    dtype = data.draw(dtypes)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40))
    low, high = (-30.0, 30.0) if name == "bce_with_logits" else (-3.0, 3.0)
    pred = data.draw(arrays(shape, dtype, low, high))
    target = data.draw(arrays(shape, dtype, 0.0, 1.0))
    ref = REF[name + "_forward"](pred, target)
    got = NUMBA[name + "_forward"](pred, target)
    assert isinstance(got, float)
    np.testing.assert_allclose(got, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    scale = data.draw(st.floats(0.01, 2.0))
    np.testing.assert_allclose(NUMBA[name + "_backward"](pred, target, scale),
                               REF[name + "_backward"](pred, target, scale), **tol(dtype))


def test_bce_kernels_at_extreme_logits():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4], np.float32)
    t = np.array([1.0, 0.0, 0.5, 1.0, 0.0], np.float32)
    for table in (REF, NUMBA):
        loss = table["bce_with_logits_forward"](x, t)
        grad = table["bce_with_logits_backward"](x, t, 1.0)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        np.testing.assert_allclose(loss, 1e4 + 0 + np.log(2) + 0 + 1e4, rtol=1e-6)


@st.composite
def optimizer_state(draw):
    dtype = draw(dtypes)
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=50))
    p = draw(arrays(shape, dtype, strided=False))
    g = draw(arrays(shape, dtype))
    m = draw(arrays(shape, dtype, -0.125, 0.125, strided=False))
    v = np.abs(draw(arrays(shape, dtype, 0.0, 0.0078125, strided=False)))
    return p, g, m, v


@SETTINGS
@given(state=optimizer_state(), decoupled=st.booleans(), wd=st.sampled_from([0.0, 0.01]),
       step=st.integers(1, 1000))
def test_adam_update(state, decoupled, wd, step, variant):
    p, g, m, v = state
    copies = [[a.copy() for a in (p, m, v)] for _ in range(2)]
    for table, (pp, mm, vv) in zip((REF, NUMBA), copies):
        table["adam_update"](pp, g, mm, vv, 1e-3, 0.9, 0.999, 1e-8, wd, step, decoupled)
    for a, b in zip(*copies):
        np.testing.assert_allclose(b, a, **tol(p.dtype))


@SETTINGS
@given(state=optimizer_state(), momentum=st.sampled_from([0.0, 0.9]),
       nesterov=st.booleans(), wd=st.sampled_from([0.0, 0.01]))
def test_sgd_update(state, momentum, nesterov, wd, variant):
    p, g, m, _ = state
    nesterov = nesterov and momentum > 0
    copies = [[p.copy(), m.copy() if momentum else None] for _ in range(2)]
    for table, (pp, vel) in zip((REF, NUMBA), copies):
        table["sgd_update"](pp, g, vel, 0.1, momentum, wd, nesterov)
    np.testing.assert_allclose(copies[1][0], copies[0][0], **tol(p.dtype))
    if momentum:
        np.testing.assert_allclose(copies[1][1], copies[0][1], **tol(p.dtype))


def test_adam_flushes_subnormal_moments():
    """With a zero gradient the moments decay; they must reach exact 0, not subnormals."""
    tiny = np.finfo(np.float32).tiny
    for table in (REF, NUMBA):
        p = np.ones(4, np.float32)
        m = np.full(4, 1e-3, np.float32)
        v = np.full(4, 1e-37, np.float32)  # decays by 0.999 a step: < tiny after ~2100
        g = np.zeros(4, np.float32)
        for step in range(1, 3000):
            table["adam_update"](p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, step, False)
            assert not np.any((m != 0) & (np.abs(m) < tiny)), "subnormal first moment"
            assert not np.any((v != 0) & (v < tiny)), "subnormal second moment"
        assert np.all(m == 0) and np.all(v == 0)


def test_optimizer_kernels_refuse_non_contiguous_parameters():
    p = np.ones((4, 4), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        NUMBA["adam_update"](p, np.ones_like(p), np.zeros_like(p), np.zeros_like(p), 1e-3,
                             0.9, 0.999, 1e-8, 0.0, 1, False)


def test_unknown_activation_is_named():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        NUMBA["activation_forward"](np.ones(3), "swish", 0.0)
