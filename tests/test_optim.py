"""minigrad.optim on both backends: every optimizer against its textbook update
over several steps, the Numba and NumPy kernels against each other on whole
models, state_dict round trips and errors, and immunity to subnormal moments."""
import numpy as np
import pytest

import minigrad as mg
from helpers import CPU_DEVICES, host, put
from minigrad import losses, nn, optim

P0 = np.array([1.0, -2.0, 0.5, 0.0])


def run(make, steps, grads, dtype=np.float64):
    """Apply ``steps`` updates with gradients ``grads(t, p)``; returns the data."""
    p = nn.Parameter(P0.astype(dtype))
    opt = make([p])
    for t in range(1, steps + 1):
        opt.zero_grad()
        p.grad = on_device(p, grads(t, host(p).astype(np.float64)))
        opt.step()
    return host(p)


def on_device(p, values):
    """A gradient for ``p``: ``values`` on p's device, in p's dtype."""
    return p.xp.asarray(np.asarray(values, dtype=p.dtype))


def quadratic(t, p):
    return 2 * (p - 3.0) + 0.1 * np.sin(t)  # changes from step to step


@pytest.mark.parametrize("momentum, nesterov, wd", [(0.0, False, 0.0), (0.0, False, 0.1),
                                                    (0.9, False, 0.0), (0.9, True, 0.01),
                                                    (0.5, False, 0.1)])
def test_sgd_textbook(device, momentum, nesterov, wd):
    got = run(lambda ps: optim.SGD(ps, lr=0.05, momentum=momentum, nesterov=nesterov,
                                   weight_decay=wd), 7, quadratic)
    p, v = P0.copy(), np.zeros(4)
    for t in range(1, 8):
        g = quadratic(t, p) + wd * p
        v = momentum * v + g
        p = p - 0.05 * (g + momentum * v if nesterov else (v if momentum else g))
    np.testing.assert_allclose(got, p, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("cls, wd", [(optim.Adam, 0.0), (optim.Adam, 0.05),
                                     (optim.AdamW, 0.05), (optim.AdamW, 0.0)])
def test_adam_textbook(device, cls, wd):
    got = run(lambda ps: cls(ps, lr=0.1, betas=(0.8, 0.99), eps=1e-8, weight_decay=wd), 9,
              quadratic)
    p, m, v = P0.copy(), np.zeros(4), np.zeros(4)
    for t in range(1, 10):
        g = quadratic(t, p)
        if cls is optim.Adam:
            g = g + wd * p
        else:
            p = p - 0.1 * wd * p
        m = 0.8 * m + 0.2 * g
        v = 0.99 * v + 0.01 * g * g
        p = p - 0.1 * (m / (1 - 0.8 ** t)) / (np.sqrt(v / (1 - 0.99 ** t)) + 1e-8)
    np.testing.assert_allclose(got, p, rtol=1e-10, atol=1e-14)


def test_defaults_match_the_usual_ones():
    p = nn.Parameter(np.ones(2))
    adam, adamw, sgd = optim.Adam([p]), optim.AdamW([p]), optim.SGD([p])
    assert (adam.lr, adam.beta1, adam.beta2, adam.eps, adam.weight_decay) == \
        (1e-3, 0.9, 0.999, 1e-8, 0.0)
    assert adamw.weight_decay == 1e-2 and adamw.decoupled and not adam.decoupled
    assert (sgd.lr, sgd.momentum, sgd.nesterov, sgd.weight_decay) == (1e-2, 0.0, False, 0.0)


def test_parameters_without_gradient_are_skipped(device):
    a, b = nn.Parameter(np.ones(2)), nn.Parameter(np.ones(2))
    opt = optim.Adam([a, b], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        a.grad = on_device(a, np.ones(2))
        opt.step()
    np.testing.assert_array_equal(host(b), 1.0)
    assert opt.steps == [3, 0] and opt.step_count == 3
    # b's bias correction starts at its first gradient: its first step is lr * sign(g)
    b.grad = on_device(b, np.full(2, 0.5))
    opt.step()
    np.testing.assert_allclose(host(b), 1.0 - 0.1, rtol=1e-7)


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
    lambda ps: optim.AdamW(ps, lr=1e-2)], ids=["sgd", "adam", "adamw"])
def test_numba_and_numpy_backends_train_alike(make):
    """A small model trained for 15 steps (float32) on each backend: fused layers,
    loss and update kernels on one, the plain graph and reference kernels on the other."""
    pytest.importorskip("numba")
    x = np.random.default_rng(0).random((16, 10)).astype(np.float32)
    trained = []
    for backend in ("numpy", "numba"):
        with mg.set_backend(backend):
            model = nn.Sequential(nn.Dense(10, 6, "relu", init="he", rng=1),
                                  nn.Dense(6, 10, rng=2))
            model[0].bias.data[...] = 0.1
            opt = make(model.parameters())
            history = []
            for _ in range(15):
                opt.zero_grad()
                loss = losses.binary_cross_entropy_with_logits(model(mg.Tensor(x)),
                                                               mg.Tensor(x))
                loss.backward()
                opt.step()
                history.append(loss.item())
            trained.append((history, [p.numpy() for p in model.parameters()]))
    (h_ref, p_ref), (h, p) = trained
    assert h[-1] < h[0]
    np.testing.assert_allclose(h, h_ref, rtol=1e-5)
    for a, b in zip(p, p_ref):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_long_run_with_dead_units_leaves_no_subnormal_moments(device):
    """Moments of units whose gradient becomes exactly 0 decay geometrically; the
    update kernels flush them to 0 before they turn subnormal."""
    p = nn.Parameter(np.ones(6, np.float32))
    opt = optim.Adam([p], lr=1e-3)
    sgd_p = nn.Parameter(np.ones(6, np.float32))
    sgd = optim.SGD([sgd_p], lr=1e-3, momentum=0.5)
    tiny = np.finfo(np.float32).tiny
    for step in range(1, 1200):
        g = np.zeros(6, np.float32)
        if step == 1:
            g[:] = 1e-3
        p.grad, sgd_p.grad = on_device(p, g), on_device(sgd_p, g)
        opt.step()
        sgd.step()
        for buf in map(host, (opt.m[0], opt.v[0], sgd.velocity[0])):
            assert not np.any((buf != 0) & (np.abs(buf) < tiny)), f"subnormal at step {step}"
    assert np.all(host(opt.m[0]) == 0) and np.all(host(sgd.velocity[0]) == 0)


# ----------------------------------------------------------------------------
# state_dict
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    lambda ps: optim.Adam(ps, lr=0.1),
    lambda ps: optim.AdamW(ps, lr=0.1, weight_decay=0.1)], ids=["sgd", "adam", "adamw"])
def test_optimizer_state_dict_round_trip(device, make):
    """Saving, loading into a fresh optimizer and continuing gives exactly the run
    that was never interrupted."""
    def fresh():
        return [nn.Parameter(np.array([1.0, 2.0], np.float32)), nn.Parameter(np.ones(3, np.float32))]

    params = fresh()
    opt = make(params)
    for t in range(3):
        params[0].grad = on_device(params[0], np.array([0.3, -0.2]) * (t + 1))
        params[1].grad = on_device(params[1], np.full(3, 0.1)) if t else None
        opt.step()
    state = opt.state_dict()
    copies = fresh()
    for p, q in zip(params, copies):
        put(q, host(p))
    other = make(copies)
    other.lr = 0.5
    assert other.load_state_dict(state) is other
    assert other.lr == 0.1 and other.step_count == 3
    for o in (opt, other):
        for p in o.params:
            p.grad = on_device(p, np.linspace(-1, 1, p.size))
        o.step()
        o.step()
    for p, q in zip(params, copies):
        np.testing.assert_array_equal(host(p), host(q))
    # the state holds copies
    for values in state["buffers"].values():
        for v in values:
            if isinstance(v, np.ndarray):
                v[...] = 123.0
    assert not any(np.any(host(m) == 123.0) for m in getattr(opt, "m", []))


def test_optimizer_state_dict_mismatches_are_named():
    p, q = nn.Parameter(np.ones(2, np.float32)), nn.Parameter(np.ones(3, np.float32))
    adam = optim.Adam([p])
    state = adam.state_dict()
    with pytest.raises(ValueError, match=r"m\[0\] has shape \(2,\), expected \(3,\)"):
        optim.Adam([q]).load_state_dict(state)
    with pytest.raises(ValueError, match="m has 1 entries, expected 2"):
        optim.Adam([p, q]).load_state_dict(state)
    with pytest.raises(ValueError, match="another optimizer"):
        optim.SGD([p]).load_state_dict(state)
    fresh = optim.Adam([q])
    with pytest.raises(ValueError):
        fresh.load_state_dict(state)
    assert fresh.lr == 1e-3 and fresh.m[0].shape == (3,)  # unchanged by the failed load


@pytest.mark.parametrize("make, error, match", [
    (lambda p: optim.Adam([]), ValueError, "empty parameter list"),
    (lambda p: optim.SGD([p], lr=0), ValueError, "lr must be positive"),
    (lambda p: optim.SGD([p], nesterov=True), ValueError, "nesterov=True needs momentum"),
    (lambda p: optim.SGD([p], momentum=-0.1), ValueError, "momentum must lie in"),
    (lambda p: optim.SGD([p], weight_decay=-1), ValueError, "weight_decay must be >= 0"),
    (lambda p: optim.Adam([p], betas=(1.0, 0.9)), ValueError, "betas"),
    (lambda p: optim.AdamW([p], eps=-1.0), ValueError, "eps must be >= 0"),
    (lambda p: optim.Adam([p, p]), ValueError, "more than once"),
    (lambda p: optim.Adam([p.data]), TypeError, "parameter 0 is a ndarray"),
    (lambda p: optim.Adam([mg.Tensor(np.ones(2))]), ValueError, "does not require a gradient"),
])
def test_optimizer_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make(nn.Parameter(np.ones(2, np.float32)))


# ----------------------------------------------------------------------------
# step(previous=...): the old weights are kept by trading arrays, not by copying
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda ps: optim.Adam(ps, lr=0.1, weight_decay=0.01),
                                  lambda ps: optim.AdamW(ps, lr=0.1),
                                  lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
                                  lambda ps: optim.SGD(ps, lr=0.1)])
def test_step_with_previous_equals_the_in_place_step_and_keeps_the_old_weights(device, make):
    rng = np.random.default_rng(0)
    start = [rng.standard_normal((3, 4)).astype(np.float32),
             rng.standard_normal(4).astype(np.float32), np.ones(2, np.float32)]
    a = [nn.Parameter(v.copy()) for v in start]
    b = [nn.Parameter(v.copy()) for v in start]
    opt_a, opt_b = make(a), make(b)
    previous = [p.xp.zeros_like(p.data) for p in b]
    for t in range(4):
        before = [host(p) for p in b]
        arrays = [p.data for p in b]
        for pa, pb in zip(a, b):
            g = rng.standard_normal(pa.shape).astype(np.float32)
            pa.grad, pb.grad = on_device(pa, g), on_device(pb, g)
        b[2].grad = None                   # a parameter without a gradient this step
        a[2].grad = None
        opt_a.step()
        opt_b.step(previous=previous)
        for pa, pb, old, kept, array in zip(a, b, before, previous, arrays):
            np.testing.assert_array_equal(host(pb), host(pa))  # the same update, bit for bit
            np.testing.assert_array_equal(host(kept), old)     # the weights before it
        assert previous[0] is arrays[0] and b[0].data is not arrays[0]  # traded, not copied
        assert previous[2] is not arrays[2] and b[2].data is arrays[2]  # no gradient: copied


@pytest.mark.parametrize("device", CPU_DEVICES, indirect=True)
def test_update_kernels_write_out_and_leave_the_parameter(device):
    """On the CPU backends (the GPU versions copy, then update in place: tested bit for
    bit in test_cupy.py)."""
    table = device.kernels
    rng = np.random.default_rng(1)
    p = rng.standard_normal(37).astype(np.float32)
    g = rng.standard_normal(37).astype(np.float32)
    m, v, out = np.zeros_like(p), np.zeros_like(p), np.empty_like(p)
    reference = p.copy()
    table.adam_update(reference, g, m.copy(), v.copy(), 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, False)
    kept = p.copy()
    table.adam_update(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, False, out)
    np.testing.assert_array_equal(p, kept)
    np.testing.assert_array_equal(out, reference)
    with pytest.raises(ValueError, match="shape"):
        table.adam_update(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 0.0, 1, False, out[:5])
    if device.name == "numba":
        with pytest.raises(ValueError, match="overlap"):
            table.sgd_update(p, g, None, 0.1, 0.0, 0.0, False, p)
        # views of one buffer, distinct objects: found by the memory test, not by identity
        buffer = np.zeros(2 * p.size, np.float32)
        for param, out in ((buffer[:37], buffer[10:47]), (buffer[:37], buffer[:37]),
                           (buffer[:37], buffer[:37].copy()[None].reshape(37)),
                           (p, buffer[:37]), (buffer[:37], p)):
            arguments = ([param], [g], [m], [v], 1e-2, 0.9, 0.999, 1e-8, 0.0, [1], False, [out])
            if np.may_share_memory(param, out):
                with pytest.raises(ValueError, match="overlap"):
                    table.adam_updates(*arguments)
            else:
                table.adam_updates(*arguments)
