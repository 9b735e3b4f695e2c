"""Every Numba kernel against its NumPy reference (Hypothesis: float32 and float64,
odd shapes, non-contiguous inputs, both the serial and the parallel version)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

pytest.importorskip("numba", reason="the Numba kernels need numba")

from minigrad import activations, kernels  # noqa: E402
from minigrad.kernels import _jit, dense, losses, optim  # noqa: E402

from helpers import arrays, float_dtypes as dtypes, matrix_shapes, tolerance as tol  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ACTIVATIONS = list(activations.ACTIVATIONS)
REF = kernels.Kernels("numpy")
NUMBA = kernels.Kernels("numba")
SETTINGS = settings(max_examples=15, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])

act = activations.activation


@pytest.fixture(params=["serial", "parallel"])
def variant(request, monkeypatch):
    """Run each test once with the serial and once with the parallel kernels."""
    monkeypatch.setattr(_jit, "PARALLEL_MIN_SIZE", 1 if request.param == "parallel" else 1 << 62)
    return request.param


def test_every_kernel_has_a_numba_twin():
    assert {"dense_forward", "dense_backward", "bce_with_logits", "mse", "sgd_update",
            "adam_update", "adam_updates"} <= set(kernels.names())
    for module in (dense, losses, optim):
        for name in module.KERNELS:
            # the attribute is the module's function behind its argument check
            assert getattr(REF, name).__wrapped__ is getattr(module, f"{name}_numpy")
            assert getattr(NUMBA, name).__wrapped__ is getattr(module, f"{name}_numba")
            assert callable(getattr(module, f"{name}_cupy"))


@pytest.mark.parametrize("activation", ACTIVATIONS)
@SETTINGS
@given(data=st.data())
def test_dense_forward_and_backward(activation, data, variant):
    dtype = data.draw(dtypes)
    n, m = data.draw(matrix_shapes)
    z = data.draw(arrays((n, m), dtype))
    bias = data.draw(arrays((m,), dtype, strided=False))
    y_ref = REF.dense_forward(z.copy(), bias, act(activation), 0.1)
    y = NUMBA.dense_forward(np.array(z), bias, act(activation), 0.1)
    np.testing.assert_allclose(y, y_ref, **tol(dtype))
    assert y.dtype == dtype
    g = data.draw(arrays((n, m), dtype))
    gz_ref, gb_ref = REF.dense_backward(g, y_ref, act(activation), 0.1)
    gz, gb = NUMBA.dense_backward(g, y_ref, act(activation), 0.1)
    np.testing.assert_allclose(gz, gz_ref, **tol(dtype))
    np.testing.assert_allclose(gb, gb_ref, rtol=tol(dtype)["rtol"], atol=tol(dtype)["atol"] * n)
    assert gz.dtype == dtype and gb.shape == (m,)


@SETTINGS
@given(data=st.data())
def test_value_range(data):
    """min and max against their definition (Python's min and max over the values), for
    any shape and layout; a NaN anywhere gives NaN for both, infinities count as
    values; Python floats out.  (The Numba entry is NumPy's reference itself.)"""
    dtype = data.draw(dtypes)
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=9))
    a = data.draw(hnp.arrays(dtype, shape, elements=st.floats(
        allow_nan=True, allow_infinity=True, width=np.finfo(dtype).bits)))
    if a.ndim >= 2 and data.draw(st.booleans()):
        a = a.T  # not contiguous
    values = [float(v) for v in a.ravel()]
    expected = ((math.nan, math.nan) if any(math.isnan(v) for v in values)
                else (min(values), max(values)))
    for table in (REF, NUMBA):
        got = table.value_range(a)
        np.testing.assert_array_equal(got, expected)
        assert all(type(v) is float for v in got)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_identity_backward_hands_back_the_gradient_unless_it_must_flush(dtype, variant):
    """The identity's grad_z is grad_y itself (no copy) when grad_y has no subnormal;
    with one (of either sign, anywhere) a flushed copy, grad_y left as it was."""
    rng = np.random.default_rng(3)
    g = rng.standard_normal((37, 29)).astype(dtype)
    g[0, :4] = [0.0, -0.0, np.inf, -np.finfo(dtype).tiny]  # none of them subnormal
    y = np.ones_like(g)
    gz, gb = NUMBA.dense_backward(g, y, act("identity"), 0.01)
    assert gz is g
    np.testing.assert_allclose(gb, REF.dense_backward(g, y, act("identity"), 0.01)[1],
                               rtol=tol(dtype)["rtol"], atol=tol(dtype)["atol"] * len(g))
    for row, col, sign in ((0, 5, 1), (36, 28, -1), (20, 0, 1)):
        bad = g.copy()
        bad[row, col] = sign * np.finfo(dtype).tiny / 8
        gz, gb = NUMBA.dense_backward(bad, y, act("identity"), 0.01)
        assert gz is not bad and bad[row, col] != 0 and gz[row, col] == 0
        np.testing.assert_array_equal(gz, REF.dense_backward(bad, y, act("identity"), 0.01)[0])


@pytest.mark.parametrize("activation", ACTIVATIONS)
@SETTINGS
@given(data=st.data())
def test_elementwise_activation(activation, data, variant):
    """The activation alone, through the dense kernels with a zero bias: act(x), and
    grad_y act'(y), on any shape of up to 4 axes (as rows of its last axis)."""
    dtype = data.draw(dtypes)
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=7))
    rows = (int(np.prod(shape[:-1])), shape[-1])
    x = data.draw(arrays(rows, dtype))
    zero = np.zeros(rows[1], dtype)
    y_ref = REF.dense_forward(x.copy(), zero, act(activation), 0.2)
    np.testing.assert_allclose(NUMBA.dense_forward(x.copy(), zero, act(activation), 0.2),
                               y_ref, **tol(dtype))
    np.testing.assert_allclose(y_ref, np.asarray(act(activation).forward(x, dtype(0.2)), dtype),
                               **tol(dtype))
    g = data.draw(arrays(rows, dtype))
    np.testing.assert_allclose(NUMBA.dense_backward(g, y_ref, act(activation), 0.2)[0],
                               REF.dense_backward(g, y_ref, act(activation), 0.2)[0],
                               **tol(dtype))


@pytest.mark.parametrize("name", ["bce_with_logits", "mse"])
@SETTINGS
@given(data=st.data())
def test_loss_kernels(name, data, variant):
    dtype = data.draw(dtypes)
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=40))
    low, high = (-30.0, 30.0) if name == "bce_with_logits" else (-3.0, 3.0)
    pred = data.draw(arrays(shape, dtype, low, high))
    target = data.draw(arrays(shape, dtype, 0.0, 1.0))
    scale = data.draw(st.floats(0.01, 2.0))
    reference, numba_kernel = getattr(REF, name), getattr(NUMBA, name)
    ref, no_grad = reference(pred, target, scale, want_grad=False)
    assert no_grad is None
    got, no_grad = numba_kernel(pred, target, scale, want_grad=False)
    assert no_grad is None
    assert isinstance(got, float)
    loss_tol = dict(rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    np.testing.assert_allclose(got, ref, **loss_tol)
    ref_both, grad_ref = reference(pred, target, scale)
    assert ref_both == ref  # the sum does not depend on want_grad
    # the fused pass gives both at once
    both, grad = numba_kernel(pred, target, scale)
    assert isinstance(both, float)
    np.testing.assert_allclose(both, ref, **loss_tol)
    np.testing.assert_allclose(grad, grad_ref, **tol(dtype))
    assert grad.shape == np.shape(pred) and grad.dtype == dtype
    # the gradients themselves: (sigmoid(x) - t) scale and 2 (p - t) scale
    x, t = pred.astype(np.float64), target.astype(np.float64)
    exact = ((1 / (1 + np.exp(-x)) - t) if name == "bce_with_logits" else 2 * (x - t)) * scale
    np.testing.assert_allclose(grad_ref, exact, rtol=1e-5 if dtype == np.float32 else 1e-12,
                               atol=1e-6 if dtype == np.float32 else 1e-12)


def test_bce_kernels_at_extreme_logits():
    x = np.array([-1e4, -50.0, 0.0, 50.0, 1e4], np.float32)
    t = np.array([1.0, 0.0, 0.5, 1.0, 0.0], np.float32)
    for table in (REF, NUMBA):
        loss = table.bce_with_logits(x, t, 1.0, want_grad=False)[0]
        both, grad = table.bce_with_logits(x, t, 1.0)
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        np.testing.assert_allclose(loss, 1e4 + 0 + np.log(2) + 0 + 1e4, rtol=1e-6)
        np.testing.assert_allclose(both, loss, rtol=1e-12)


def test_bce_gradient_of_confident_right_answers(variant):
    """t = 1 and a large logit: the gradient is -sigmoid(-x), small but not rounded;
    written as sigmoid(x) - 1 it would be a multiple of 6e-8 (x = 15: -2.98e-7
    or -3.58e-7 for -3.06e-7) and 0 from x = 17 on.  Mirrored: t = 0 and a large negative
    logit."""
    x = np.array([5.0, 10.0, 15.0, 20.0, 30.0, 80.0], np.float32)
    exact = -1 / (1 + np.exp(x.astype(np.float64)))
    for table in (REF, NUMBA):
        _, grad = table.bce_with_logits(x, np.ones_like(x), 1.0)
        np.testing.assert_allclose(grad, exact, rtol=1e-6, atol=0)
        _, grad = table.bce_with_logits(-x, np.zeros_like(x), 1.0)
        np.testing.assert_allclose(grad, -exact, rtol=1e-6, atol=0)


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
        table.adam_update(pp, g, mm, vv, 1e-3, 0.9, 0.999, 1e-8, wd, step, decoupled)
    for a, b in zip(*copies):
        np.testing.assert_allclose(b, a, **tol(p.dtype))


@SETTINGS
@given(data=st.data(), count=st.integers(1, 2 * optim.GROUP + 1), decoupled=st.booleans(),
       wd=st.sampled_from([0.0, 0.01]), into_out=st.booleans())
def test_adam_updates_equals_adam_update_per_parameter(data, count, decoupled, wd, into_out):
    """The many-parameter Adam (one compiled call per GROUP parameters, each with its own
    step count) gives exactly the per-parameter kernel's bits on Numba, and the NumPy
    reference's values; with ``outs`` the parameters keep their old values."""
    dtype = data.draw(dtypes)
    states = []
    for _ in range(count):
        shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=20))
        p, g = data.draw(arrays(shape, dtype, strided=False)), data.draw(arrays(shape, dtype))
        m = data.draw(arrays(shape, dtype, -0.125, 0.125, strided=False))
        v = np.abs(data.draw(arrays(shape, dtype, 0.0, 0.0078125, strided=False)))
        states.append((p, g, m, v, data.draw(st.integers(1, 1000))))
    copies = {name: [[a.copy() for a in (p, m, v)] for p, _, m, v, _ in states]
              for name in ("single", "many", "reference")}
    outs = {name: [np.empty_like(p) for p, *_ in states] if into_out else None
            for name in copies}
    hyper = (1e-3, 0.9, 0.999, 1e-8, wd)
    for k, ((_, g, _, _, step), (p, m, v)) in enumerate(zip(states, copies["single"])):
        NUMBA.adam_update(p, g, m, v, *hyper, step, decoupled,
                          None if outs["single"] is None else outs["single"][k])
    for table, name in ((NUMBA, "many"), (REF, "reference")):
        ps, ms, vs = (list(a) for a in zip(*copies[name]))
        table.adam_updates(ps, [s[1] for s in states], ms, vs, *hyper,
                           [s[4] for s in states], decoupled, outs[name])

    def results(name):
        new = outs[name] if into_out else [p for p, _, _ in copies[name]]
        return [a for (_, m, v), p in zip(copies[name], new) for a in (p, m, v)]
    for single, many, reference in zip(results("single"), results("many"),
                                       results("reference")):
        np.testing.assert_array_equal(many, single)
        np.testing.assert_allclose(many, reference, **tol(dtype))
    if into_out:  # the parameters themselves are untouched
        for (p, *_), (kept, _, _) in zip(states, copies["many"]):
            np.testing.assert_array_equal(kept, p)


def test_adam_updates_names_what_does_not_fit():
    p = np.ones((3, 2), np.float32)
    args = lambda ps, gs, ms, vs, steps: (ps, gs, ms, vs, 1e-3, 0.9, 0.999, 1e-8, 0.0,  # noqa
                                          steps, False)
    for table in (REF, NUMBA):
        with pytest.raises(ValueError, match=r"adam_updates: steps has 1 entries, expected "
                                             r"one per parameter \(2\)"):
            table.adam_updates(*args([p, p.copy()], [p, p], [p.copy()] * 2, [p.copy()] * 2, [1]))
        with pytest.raises(ValueError, match=r"adam_updates: grads\[1\] has shape \(2, 3\), "
                                             r"expected params\[1\]'s shape \(3, 2\)"):
            table.adam_updates(*args([p, p.copy()], [p, p.T], [p.copy()] * 2, [p.copy()] * 2,
                                     [1, 1]))
        with pytest.raises(TypeError, match=r"adam_updates: vs\[0\] has dtype float64"):
            table.adam_updates(*args([p], [p], [p.copy()], [p.astype(np.float64)], [1]))
    q = np.ones(2, np.float64)
    with pytest.raises(TypeError, match=r"params\[1\] has dtype float64, expected params\[0\]'s"):
        NUMBA.adam_updates(*args([p, q], [p, q], [p.copy(), q.copy()], [p.copy(), q.copy()],
                                 [1, 1]))


@SETTINGS
@given(state=optimizer_state(), momentum=st.sampled_from([0.0, 0.9]),
       nesterov=st.booleans(), wd=st.sampled_from([0.0, 0.01]))
def test_sgd_update(state, momentum, nesterov, wd, variant):
    p, g, m, _ = state
    nesterov = nesterov and momentum > 0
    copies = [[p.copy(), m.copy() if momentum else None] for _ in range(2)]
    for table, (pp, vel) in zip((REF, NUMBA), copies):
        table.sgd_update(pp, g, vel, 0.1, momentum, wd, nesterov)
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
            table.adam_update(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.0, step, False)
            assert not np.any((m != 0) & (np.abs(m) < tiny)), "subnormal first moment"
            assert not np.any((v != 0) & (v < tiny)), "subnormal second moment"
        assert np.all(m == 0) and np.all(v == 0)


def test_optimizer_kernels_refuse_non_contiguous_parameters():
    p = np.ones((4, 4), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        NUMBA.adam_update(p, np.ones_like(p), np.zeros_like(p), np.zeros_like(p), 1e-3,
                          0.9, 0.999, 1e-8, 0.0, 1, False)


def test_unknown_activation_is_named():
    """An unknown name is refused where the kernel's activation is looked up, with the
    valid names."""
    with pytest.raises(ValueError, match="unknown activation 'swish'.*'sigmoid'"):
        NUMBA.dense_forward(np.ones((1, 3)), np.zeros(3), act("swish"), 0.0)


def test_dense_backward_sums_the_bias_gradient_over_row_blocks(monkeypatch):
    """The parallel reduction: one partial sum per block of rows, then added."""
    monkeypatch.setattr(_jit, "PARALLEL_MIN_SIZE", 1)
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 101):
        g = rng.standard_normal((n, 7))
        y = rng.random((n, 7))
        gz, gb = NUMBA.dense_backward(g, y, act("sigmoid"), 0.0)
        np.testing.assert_allclose(gb, (g * y * (1 - y)).sum(axis=0), rtol=1e-12, atol=1e-12)


def _run(code, **env):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, **env), timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_numba_is_the_default_backend_and_compiles_nothing_until_used():
    env = {k: v for k, v in os.environ.items() if k != "MINIGRAD_BACKEND"}
    code = ("import sys, minigrad\n"
            "from minigrad.kernels import dense\n"
            "b = minigrad.get_backend()\n"
            "assert not dense._dense_forward._variants, 'compiled too early'\n"
            "print(b.name, b.fused)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "numba True"
    assert _run("import minigrad; print(minigrad.get_backend().name)",
                MINIGRAD_BACKEND="numba") == "numba"


def test_parallel_kernels_from_several_threads_do_not_abort():
    """Numba's workqueue pool aborts the process on concurrent parallel launches;
    the kernels take a lock (or run serially) instead."""
    code = (
        "import threading, numpy as np\n"
        "from minigrad import activations, kernels\n"
        "K = kernels.Kernels('numba')\n"
        "relu = activations.activation('relu')\n"
        "x = np.random.default_rng(0).random((512, 256), dtype=np.float32)\n"
        "b = np.zeros(256, np.float32)\n"
        "def work():\n"
        "    for _ in range(100):\n"
        "        K.dense_forward(x.copy(), b, relu, 0.0)\n"
        "        K.dense_backward(x, x, relu, 0.0)\n"
        "        K.adam_update(x.copy(), x, x.copy(), x.copy(), 1e-3, .9, .999, 1e-8, 0., 1,\n"
        "                      False)\n"
        "threads = [threading.Thread(target=work) for _ in range(4)]\n"
        "[t.start() for t in threads]\n"
        "[t.join() for t in threads]\n"
        "import numba\n"
        "print(numba.threading_layer())")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    env["MINIGRAD_PARALLEL_MIN_SIZE"] = "0"  # every launch parallel
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "workqueue"


MATH_CASES = {
    # name: (reference in float64, float32 test points)
    "exp_neg": (lambda x: np.exp(-x), np.concatenate([np.linspace(0, 87, 20001),
                                                      np.geomspace(1e-30, 1, 2001)])),
    "log1p_unit": (np.log1p, np.concatenate([np.linspace(0, 1, 20001),    # normal inputs:
                                             np.geomspace(1e-37, 1, 2001)])),  # from exp_neg
    "tanh": (np.tanh, np.concatenate([np.linspace(-12, 12, 20001),
                                      np.geomspace(1e-30, 1, 2001) * [[1], [-1]]], axis=None)),
    "one_minus_exp_neg": (lambda y: -np.expm1(-y), np.concatenate([
        np.linspace(0, 30, 20001), np.geomspace(1e-30, 1, 2001)])),
}


@pytest.mark.parametrize("name", sorted(MATH_CASES))
def test_vectorizing_float32_math_is_accurate(name):
    """The float32 exp / log1p / tanh of the kernels (see kernels._math) within a
    few units in the last place; float64 goes to the C library, exactly."""
    import numba
    from minigrad.kernels import _math
    _jit._numba()  # installs the Numba implementations
    fn = getattr(_math, name)

    @numba.njit(error_model="numpy")
    def apply(x, out):
        for i in range(x.size):
            out[i] = fn(x[i])

    reference, points = MATH_CASES[name]
    x = points.astype(np.float32)
    out = np.empty_like(x)
    apply(x, out)
    exact = reference(x.astype(np.float64))
    ulps = np.abs(out - exact) / np.spacing(np.abs(exact).astype(np.float32))
    assert np.max(ulps) <= 5, f"{name}: {np.max(ulps):.1f} ulp at x={x[np.argmax(ulps)]!r}"
    x64 = points.astype(np.float64)
    out64 = np.empty_like(x64)
    apply(x64, out64)
    np.testing.assert_allclose(out64, reference(x64), rtol=1e-15, atol=0)
    assert not np.any((out != 0) & (np.abs(out) < np.finfo(np.float32).tiny)), "subnormal"
