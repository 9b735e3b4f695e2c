"""minigrad.schedules (re-exported by minigrad.optim): every learning-rate schedule
against its formula over many epochs, ReduceLROnPlateau on crafted metric
sequences, state_dict round trips through JSON that continue bit for bit, argument
errors, and clip_grad_norm on every backend against NumPy's norm."""
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import arrays, host, small_shapes, tolerance
from minigrad import nn, optim

SETTINGS = settings(max_examples=25, deadline=None)
DEVICE_SETTINGS = settings(max_examples=10, deadline=None,
                           suppress_health_check=[HealthCheck.too_slow,
                                                  HealthCheck.function_scoped_fixture])
EPOCHS = 30

learning_rates = st.floats(1e-5, 1.0)
fractions = st.floats(0.0, 1.0)


def sgd(lr=0.1):
    return optim.SGD([nn.Parameter(np.ones(3))], lr=lr)


def lrs(schedule, metrics):
    """The lr after each ``step(metric)``, checking the optimizer gets it too."""
    out = []
    for metric in metrics:
        schedule.step(metric)
        assert schedule.optimizer.lr == schedule.lr
        out.append(schedule.lr)
    return out


def test_the_schedules_are_reexported_by_optim():
    from minigrad import schedules
    for name in ("StepLR", "CosineAnnealingLR", "ReduceLROnPlateau", "clip_grad_norm"):
        assert getattr(optim, name) is getattr(schedules, name)
        assert name in optim.__all__


# ----------------------------------------------------------------------------
# the formulas
# ----------------------------------------------------------------------------

@SETTINGS
@given(base_lr=learning_rates, step_size=st.integers(1, 12), gamma=st.floats(0.01, 1.0))
def test_step_lr_follows_its_formula(base_lr, step_size, gamma):
    opt = sgd(base_lr)
    schedule = optim.StepLR(opt, step_size, gamma=gamma)
    assert schedule.lr == opt.lr == base_lr and schedule.base_lr == base_lr
    got = lrs(schedule, [None] * EPOCHS)
    assert got == [base_lr * gamma ** (n // step_size) for n in range(1, EPOCHS + 1)]
    assert schedule.epoch == EPOCHS


def test_step_lr_decays_every_step_size_epochs():
    schedule = optim.StepLR(sgd(1.0), step_size=3, gamma=0.5)
    assert lrs(schedule, [None] * 7) == [1.0, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25]


@SETTINGS
@given(base_lr=learning_rates, epochs=st.integers(1, EPOCHS), low=fractions)
def test_cosine_annealing_follows_its_formula(base_lr, epochs, low):
    min_lr = base_lr * low
    opt = sgd(base_lr)
    schedule = optim.CosineAnnealingLR(opt, epochs, min_lr=min_lr)
    got = lrs(schedule, [None] * (EPOCHS + 5))
    for n, lr in enumerate(got, 1):
        expected = min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * min(n, epochs)
                                                               / epochs)) / 2
        assert lr == expected
        assert min_lr <= lr <= base_lr * (1 + 1e-15)
        if n >= epochs:
            assert lr == min_lr  # and stays there
    if epochs % 2 == 0:  # half way: half way between the two
        assert got[epochs // 2 - 1] == pytest.approx((base_lr + min_lr) / 2, rel=1e-14)


def test_cosine_annealing_default_min_lr_is_zero():
    schedule = optim.CosineAnnealingLR(sgd(0.2), epochs=4)
    assert lrs(schedule, [None] * 6) == pytest.approx(
        [0.2 * (1 + math.cos(math.pi * n / 4)) / 2 for n in (1, 2, 3)] + [0.0] * 3,
        rel=1e-15, abs=0.0)


def plateau_reference(base_lr, factor, patience, threshold, min_lr, metrics):
    """ReduceLROnPlateau written out once more, PyTorch's way (mode "min", "rel")."""
    lr, best, bad, out = base_lr, math.inf, 0, []
    for metric in metrics:
        if metric < best * (1 - threshold):
            best, bad = metric, 0
        else:
            bad += 1
        if bad > patience:
            lr, bad = max(lr * factor, min_lr), 0
        out.append(lr)
    return out


@SETTINGS
@given(base_lr=learning_rates, factor=st.floats(0.01, 0.99), patience=st.integers(0, 5),
       threshold=st.sampled_from([0.0, 1e-4, 0.05, 0.3]), low=fractions,
       metrics=st.lists(st.floats(0.0, 10.0), min_size=EPOCHS, max_size=EPOCHS))
def test_reduce_on_plateau_follows_its_rule(base_lr, factor, patience, threshold, low,
                                            metrics):
    min_lr = base_lr * low
    schedule = optim.ReduceLROnPlateau(sgd(base_lr), factor=factor, patience=patience,
                                       threshold=threshold, min_lr=min_lr)
    assert lrs(schedule, metrics) == plateau_reference(base_lr, factor, patience, threshold,
                                                       min_lr, metrics)


def test_reduce_on_plateau_patience_threshold_and_min_lr():
    schedule = optim.ReduceLROnPlateau(sgd(1.0), factor=0.5, patience=2, threshold=0.1,
                                       min_lr=0.2)
    metrics = [10.0,            # the first metric is an improvement (best starts at +inf)
               9.5, 9.2, 9.1,   # not below 10 * 0.9: three bad epochs > patience 2: halve
               8.0,             # below 9: improvement
               7.3,             # not below 8 * 0.9 = 7.2: a bad epoch
               7.19,            # below 7.2: improvement, the count restarts
               8.0, 8.0, 8.0,   # 3 bad epochs: 0.25
               8.0, 8.0, 8.0,   # 3 more: max(0.125, min_lr) = 0.2
               8.0, 8.0, 8.0]   # stays at min_lr
    expected = [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2,
                0.2, 0.2]
    assert lrs(schedule, metrics) == expected
    assert schedule.best == 7.19 and schedule.bad_epochs == 0 and schedule.epoch == 16


def test_reduce_on_plateau_patience_zero_and_threshold_zero():
    schedule = optim.ReduceLROnPlateau(sgd(1.0), factor=0.5, patience=0, threshold=0.0)
    # an equal metric is no improvement; with patience 0 each bad epoch cuts the lr
    assert lrs(schedule, [3.0, 3.0, 2.999, 3.0, 4.0]) == [1.0, 0.5, 0.5, 0.25, 0.125]
    assert schedule.best == 2.999


def test_reduce_on_plateau_defaults_wait_more_than_ten_epochs():
    schedule = optim.ReduceLROnPlateau(sgd(1.0))
    got = lrs(schedule, [1.0] * 12)
    assert got[:11] == [1.0] * 11 and got[11] == pytest.approx(0.1, rel=1e-15)


@pytest.mark.parametrize("metric, error, match", [
    (None, TypeError, "metric must be a number, got None"),
    ("0.5", TypeError, r"metric must be a number, got '0.5' \(str\)"),
    (True, TypeError, "metric must be a number"),
    (np.ones(1), TypeError, "metric must be a number"),
    (float("nan"), ValueError, "metric must be a finite number.*nan"),
    (float("inf"), ValueError, "metric must be a finite number.*inf"),
])
def test_reduce_on_plateau_wants_a_finite_metric(metric, error, match):
    schedule = optim.ReduceLROnPlateau(sgd(1.0), patience=0)
    schedule.step(1.0)
    before = schedule.state_dict()
    with pytest.raises(error, match="ReduceLROnPlateau.step: " + match):
        schedule.step(metric)
    assert schedule.state_dict() == before  # nothing counted


def test_reduce_on_plateau_takes_numpy_numbers():
    schedule = optim.ReduceLROnPlateau(sgd(1.0), patience=0)
    schedule.step(np.float32(0.5))
    schedule.step(np.float64(0.7))
    assert schedule.best == 0.5 and type(schedule.best) is float and schedule.lr == 0.1
    json.dumps(schedule.state_dict(), allow_nan=False)


# ----------------------------------------------------------------------------
# state_dict
# ----------------------------------------------------------------------------

SCHEDULES = {
    "step": (lambda opt: optim.StepLR(opt, step_size=4, gamma=0.7),
             lambda opt: optim.StepLR(opt, step_size=1, gamma=0.5)),
    "cosine": (lambda opt: optim.CosineAnnealingLR(opt, epochs=23, min_lr=1e-3),
               lambda opt: optim.CosineAnnealingLR(opt, epochs=5)),
    "plateau": (lambda opt: optim.ReduceLROnPlateau(opt, factor=0.3, patience=2,
                                                    threshold=0.01, min_lr=1e-4),
                lambda opt: optim.ReduceLROnPlateau(opt)),
}

metric_sequences = st.lists(st.floats(0.0, 5.0), min_size=EPOCHS, max_size=EPOCHS)


@pytest.mark.parametrize("kind", sorted(SCHEDULES))
@SETTINGS
@given(metrics=metric_sequences, stop=st.integers(0, EPOCHS))
def test_state_dict_round_trip_through_json_continues_bit_for_bit(kind, metrics, stop):
    make, make_other = SCHEDULES[kind]
    whole = make(sgd(0.3))
    expected = lrs(whole, metrics)

    first = make(sgd(0.3))
    lrs(first, metrics[:stop])
    state = first.state_dict()
    assert all(type(v) in (int, float, type(None)) for v in state.values()), state
    state = json.loads(json.dumps(state, allow_nan=False))

    opt = sgd(0.05)               # a fresh optimizer with another lr,
    fresh = make_other(opt)       # and a schedule made with other arguments
    assert fresh.load_state_dict(state) is fresh
    assert fresh.state_dict() == state
    assert opt.lr == fresh.lr == (expected[stop - 1] if stop else 0.3)
    assert lrs(fresh, metrics[stop:]) == expected[stop:]


def test_plateau_state_stores_an_infinite_best_as_none():
    schedule = optim.ReduceLROnPlateau(sgd(1.0))
    assert schedule.state_dict()["best"] is None and schedule.best == math.inf
    other = optim.ReduceLROnPlateau(sgd(1.0))
    other.step(2.0)
    other.load_state_dict(json.loads(json.dumps(schedule.state_dict())))
    assert other.best == math.inf and other.epoch == 0


def test_state_dict_mismatches_are_named_and_change_nothing():
    step = optim.StepLR(sgd(), step_size=2)
    cosine = optim.CosineAnnealingLR(sgd(), epochs=10)
    cosine.step()
    before = cosine.state_dict()
    with pytest.raises(ValueError, match="CosineAnnealingLR.load_state_dict: .*another schedule"):
        cosine.load_state_dict(step.state_dict())
    with pytest.raises(TypeError, match="must be a dict"):
        cosine.load_state_dict([1, 2])
    bad = dict(before, epochs=0, lr=0.001)
    with pytest.raises(ValueError, match=r"load_state_dict: epochs must be an integer >= 1, got 0"):
        cosine.load_state_dict(bad)
    with pytest.raises(ValueError, match=r"epoch must be an integer >= 0, got -1"):
        cosine.load_state_dict(dict(before, epoch=-1))
    with pytest.raises(ValueError, match=r"min_lr must lie in \[0, base_lr=0.1\], got 0.5"):
        cosine.load_state_dict(dict(before, min_lr=0.5))
    plateau = optim.ReduceLROnPlateau(sgd())
    with pytest.raises(ValueError, match="best must be None"):
        plateau.load_state_dict(dict(plateau.state_dict(), best=float("nan")))
    assert cosine.state_dict() == before and cosine.optimizer.lr == before["lr"]


# ----------------------------------------------------------------------------
# argument errors
# ----------------------------------------------------------------------------

@pytest.mark.parametrize("make, error, match", [
    (lambda o: optim.StepLR(o.params, 2), TypeError,
     r"StepLR: optimizer must be a minigrad.optim.Optimizer, got \[.*\] \(list\)"),
    (lambda o: optim.StepLR(o, 0), ValueError, "StepLR: step_size must be an integer >= 1, got 0"),
    (lambda o: optim.StepLR(o, 2.5), ValueError, "step_size must be an integer >= 1, got 2.5"),
    (lambda o: optim.StepLR(o, "2"), TypeError, "step_size must be a number, got '2'"),
    (lambda o: optim.StepLR(o, 2, gamma=0), ValueError,
     r"StepLR: gamma must lie in \(0, 1\], got 0"),
    (lambda o: optim.StepLR(o, 2, gamma=1.5), ValueError, r"gamma must lie in \(0, 1\], got 1.5"),
    (lambda o: optim.StepLR(o, 2, gamma=float("nan")), ValueError, r"gamma .*\(not finite\)"),
    (lambda o: optim.CosineAnnealingLR(None, 3), TypeError, "CosineAnnealingLR: optimizer must be"),
    (lambda o: optim.CosineAnnealingLR(o, 0), ValueError,
     "CosineAnnealingLR: epochs must be an integer >= 1, got 0"),
    (lambda o: optim.CosineAnnealingLR(o, True), TypeError, "epochs must be a number, got True"),
    (lambda o: optim.CosineAnnealingLR(o, 3, min_lr=-1e-3), ValueError,
     r"CosineAnnealingLR: min_lr must lie in \[0, base_lr=0.1\], got -0.001"),
    (lambda o: optim.CosineAnnealingLR(o, 3, min_lr=0.2), ValueError,
     r"min_lr must lie in \[0, base_lr=0.1\], got 0.2"),
    (lambda o: optim.ReduceLROnPlateau(o, factor=1.0), ValueError,
     r"ReduceLROnPlateau: factor must lie in \(0, 1\), got 1.0"),
    (lambda o: optim.ReduceLROnPlateau(o, factor=0), ValueError, r"factor must lie in \(0, 1\)"),
    (lambda o: optim.ReduceLROnPlateau(o, patience=-1), ValueError,
     "ReduceLROnPlateau: patience must be an integer >= 0, got -1"),
    (lambda o: optim.ReduceLROnPlateau(o, patience=1.5), ValueError,
     "patience must be an integer >= 0, got 1.5"),
    (lambda o: optim.ReduceLROnPlateau(o, threshold=1.0), ValueError,
     r"threshold must lie in \[0, 1\), got 1.0"),
    (lambda o: optim.ReduceLROnPlateau(o, threshold=-0.1), ValueError, "threshold must lie in"),
    (lambda o: optim.ReduceLROnPlateau(o, min_lr=float("inf")), ValueError,
     r"min_lr .*\(not finite\)"),
    (lambda o: optim.ReduceLROnPlateau(o, min_lr=1.0), ValueError,
     r"min_lr must lie in \[0, base_lr=0.1\], got 1.0"),
])
def test_schedule_argument_errors(make, error, match):
    with pytest.raises(error, match=match):
        make(sgd(0.1))


def test_integer_arguments_may_be_numpy_integers():
    schedule = optim.StepLR(sgd(), step_size=np.int64(2))
    assert schedule.step_size == 2 and type(schedule.step_size) is int
    json.dumps(schedule.state_dict())


# ----------------------------------------------------------------------------
# clip_grad_norm
# ----------------------------------------------------------------------------

@st.composite
def gradients(draw, count=st.integers(1, 4)):
    """Host gradients (some a non-contiguous view) of several parameters, one dtype."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    return dtype, [draw(arrays(draw(small_shapes), dtype)) for _ in range(draw(count))]


def with_grads(host_grads, device):
    """Parameters whose ``.grad`` are ``host_grads`` on ``device``: a strided host
    gradient stays a non-contiguous view there too."""
    params = []
    for g in host_grads:
        p = nn.Parameter(np.zeros(g.shape, g.dtype))
        if g.flags.c_contiguous:
            p.grad = device.to_device(g)
        else:  # every other row of a device array of twice the rows
            full = np.repeat(g, 2, axis=0)
            p.grad = device.to_device(full)[::2]
            assert not p.grad.flags.c_contiguous
        params.append(p)
    return params


def global_norm(host_grads):
    return float(np.sqrt(sum(np.sum(np.asarray(g, np.float64) ** 2) for g in host_grads)))


@DEVICE_SETTINGS
@given(drawn=gradients(), ratio=st.floats(0.01, 0.99))
def test_clip_grad_norm_scales_to_max_norm_keeping_the_direction(device, drawn, ratio):
    dtype, grads = drawn
    params = with_grads(grads, device)
    arrays_before = [p.grad for p in params]
    norm = global_norm(grads)
    max_norm = max(norm * ratio, 1e-3)
    got = optim.clip_grad_norm(params, max_norm)
    assert type(got) is float
    assert got == pytest.approx(norm, rel=1e-12, abs=1e-300)
    clipped = [host(p.grad) for p in params]
    assert all(p.grad is a for p, a in zip(params, arrays_before))  # in place
    if norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for before, after in zip(grads, clipped):
            assert after.dtype == dtype
            np.testing.assert_allclose(after, before * scale, **tolerance(dtype))
        assert global_norm(clipped) == pytest.approx(max_norm * norm / (norm + 1e-6),
                                                     rel=10 * tolerance(dtype)["rtol"])
        assert global_norm(clipped) <= max_norm * (1 + 10 * tolerance(dtype)["rtol"])
    else:  # (nearly) all-zero gradients, below max_norm's floor of 1e-3
        for before, after in zip(grads, clipped):
            np.testing.assert_array_equal(after, before)


@DEVICE_SETTINGS
@given(drawn=gradients(), slack=st.floats(1.0, 100.0))
def test_clip_grad_norm_leaves_gradients_below_max_norm(device, drawn, slack):
    dtype, grads = drawn
    params = with_grads(grads, device)
    norm = global_norm(grads)
    got = optim.clip_grad_norm(params, max(norm * slack, 1e-3))
    assert got == pytest.approx(norm, rel=1e-12, abs=1e-300)
    for p, g in zip(params, grads):
        np.testing.assert_array_equal(host(p.grad), g)  # bit for bit


def test_clip_grad_norm_skips_parameters_without_gradient(device):
    a = nn.Parameter(np.zeros(2, np.float32))
    b = nn.Parameter(np.zeros(3, np.float32))
    c = nn.Parameter(np.zeros((2, 2), np.float32))
    a.grad = device.to_device(np.array([3.0, 0.0], np.float32))
    c.grad = device.to_device(np.array([[0.0, 4.0], [0.0, 0.0]], np.float32))
    assert optim.clip_grad_norm([a, b, c], 1.0) == 5.0
    assert b.grad is None
    scale = 1.0 / (5.0 + 1e-6)
    np.testing.assert_allclose(host(a.grad), [3.0 * scale, 0.0], rtol=1e-7)
    np.testing.assert_allclose(host(c.grad), [[0.0, 4.0 * scale], [0.0, 0.0]], rtol=1e-7)
    assert optim.clip_grad_norm([b], 1.0) == 0.0  # nothing has a gradient
    assert optim.clip_grad_norm(a, 10.0) == pytest.approx(3.0 * scale, rel=1e-7)  # one tensor


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_clip_grad_norm_leaves_non_finite_gradients_unchanged(device, bad):
    a = nn.Parameter(np.zeros(3, np.float32))
    b = nn.Parameter(np.zeros(2, np.float64))
    ga = np.array([1.0, bad, 2.0], np.float32)
    gb = np.array([5.0, -7.0])
    a.grad, b.grad = device.to_device(ga), device.to_device(gb)
    got = optim.clip_grad_norm([a, b], 1.0)
    assert math.isnan(got) if np.isnan(bad) else got == math.inf
    np.testing.assert_array_equal(host(a.grad), ga)
    np.testing.assert_array_equal(host(b.grad), gb)


def test_clip_grad_norm_sums_float32_squares_in_float64(device):
    """Squares of 1e20 overflow float32 (max 3.4e38); their sum in float64 does not."""
    p = nn.Parameter(np.zeros(4, np.float32))
    g = np.array([1e20, -1e20, 3e19, 0.0], np.float32)
    p.grad = device.to_device(g)
    got = optim.clip_grad_norm([p], 1.0)
    assert got == pytest.approx(global_norm([g]), rel=1e-14)
    np.testing.assert_allclose(host(p.grad), g.astype(np.float64) / got, rtol=1e-6)
    assert np.isclose(np.linalg.norm(host(p.grad).astype(np.float64)), 1.0, rtol=1e-6)


def test_clip_grad_norm_scales_a_shared_gradient_array_once(device):
    a, b = nn.Parameter(np.zeros(2)), nn.Parameter(np.zeros(2))
    a.grad = b.grad = device.to_device(np.array([3.0, 4.0]))
    got = optim.clip_grad_norm([a, b], 1.0)
    assert got == pytest.approx(math.sqrt(50.0), rel=1e-15)
    np.testing.assert_allclose(host(a.grad), np.array([3.0, 4.0]) / (got + 1e-6), rtol=1e-15)


@pytest.mark.parametrize("args, error, match", [
    ((0.0,), ValueError, "clip_grad_norm: max_norm must be positive, got 0.0"),
    ((-1,), ValueError, "max_norm must be positive, got -1"),
    ((float("inf"),), ValueError, r"max_norm must be positive, got inf \(not finite\)"),
    ((float("nan"),), ValueError, r"max_norm .*\(not finite\)"),
    (("1.0",), TypeError, "max_norm must be a number, got '1.0'"),
    ((True,), TypeError, "max_norm must be a number, got True"),
])
def test_clip_grad_norm_argument_errors(args, error, match):
    p = nn.Parameter(np.ones(2))
    p.grad = np.ones(2)
    with pytest.raises(error, match=match):
        optim.clip_grad_norm([p], *args)
    np.testing.assert_array_equal(p.grad, 1.0)


def test_clip_grad_norm_wants_tensors():
    p = nn.Parameter(np.ones(2))
    p.grad = np.ones(2)
    with pytest.raises(TypeError, match="clip_grad_norm: parameter 1 is a ndarray, not a Tensor"):
        optim.clip_grad_norm([p, np.ones(2)], 1.0)
    np.testing.assert_array_equal(p.grad, 1.0)
