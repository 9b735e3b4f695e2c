"""Recorded and replayed steps (minigrad.replay): the same numbers as eager steps,
bit for bit, for every flavor that ``fit`` replays; and the Step API itself."""
import numpy as np
import pytest

import minigrad
from minigrad import Tensor, nn, replay
from autoencoders import (ContractiveAutoencoder, DenoisingAutoencoder, SparseAutoencoder,
                          VanillaAutoencoder, VariationalAutoencoder)
from autoencoders.training import _replayable

CONV = dict(image_shape=(1, 6, 6), channels=(2, 3))
MODELS = {
    "vanilla": lambda: VanillaAutoencoder([36, 8, 3], seed=0),
    "vanilla conv": lambda: VanillaAutoencoder([36, 4], seed=0, **CONV),
    "sparse l1": lambda: SparseAutoencoder([36, 8, 3], seed=0, sparsity="l1"),
    "sparse kl": lambda: SparseAutoencoder([36, 8, 3], seed=0, sparsity="kl"),
    "sparse kl conv": lambda: SparseAutoencoder([36, 4], seed=0, sparsity="kl", **CONV),
    "denoising masking": lambda: DenoisingAutoencoder([36, 8, 3], seed=0),
    "denoising gaussian conv": lambda: DenoisingAutoencoder(
        [36, 4], seed=0, noise="gaussian", noise_level=0.5, **CONV),
    "denoising salt and pepper": lambda: DenoisingAutoencoder(
        [36, 8, 3], seed=0, noise="salt_and_pepper"),
    "contractive relu": lambda: ContractiveAutoencoder([36, 8, 3], seed=0),
    "contractive sigmoid": lambda: ContractiveAutoencoder([36, 8, 3], seed=0,
                                                          activation="sigmoid"),
    "contractive conv": lambda: ContractiveAutoencoder([36, 4], seed=0, **CONV),
    "variational warm-up": lambda: VariationalAutoencoder([36, 8, 2], seed=0,
                                                          kl_warmup_epochs=2),
    "variational conv mse": lambda: VariationalAutoencoder([36, 2], seed=0, loss="mse", **CONV),
}


def _data(n=150, width=36, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, width)) * (rng.random((n, width)) < 0.5)).astype(np.float32)


def _count_replays(monkeypatch):
    counts = {"recorded": 0, "replayed": 0}
    init, run = replay.Step.__init__, replay.Step._replay

    def counting_init(self, *args, **kwargs):
        counts["recorded"] += 1
        init(self, *args, **kwargs)

    def counting_run(self, arrays):
        counts["replayed"] += 1
        return run(self, arrays)
    monkeypatch.setattr(replay.Step, "__init__", counting_init)
    monkeypatch.setattr(replay.Step, "_replay", counting_run)
    return counts


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_fit_replays_each_flavor_bit_for_bit(name, backend, monkeypatch):
    """150 rows at batch 64: two full batches replayed, the last one (22 rows) and each
    epoch's first recorded afresh; weights, Adam's moments and history as eager."""
    if backend == "numba":
        pytest.importorskip("numba", reason="the numba backend needs numba")
    X = _data()
    runs = []
    for use_replay in (False, True):
        model = MODELS[name]()
        counts = _count_replays(monkeypatch)
        history = model.fit(X, epochs=3, batch_size=64, progress=False, backend=backend,
                            replay=use_replay)
        monkeypatch.undo()
        runs.append((model, history, counts))
    (eager, eager_history, eager_counts), (replayed, history, counts) = runs
    assert eager_counts == {"recorded": 0, "replayed": 0}
    assert counts == {"recorded": 6, "replayed": 3}  # per epoch: record, replay, record
    assert history == eager_history
    for a, b in zip(eager.parameters(), replayed.parameters()):
        assert np.array_equal(a.data, b.data)
    for a, b in zip(eager.optimizer_.m + eager.optimizer_.v,
                    replayed.optimizer_.m + replayed.optimizer_.v):
        assert np.array_equal(a, b)


def test_fit_replays_by_default_the_packages_own_models_only():
    model = VanillaAutoencoder([36, 8, 3], seed=0)
    assert _replayable(model)

    class Scaled(nn.Module):  # a layer of the user's: its forward is not known
        def forward(self, x):
            return x * 2.0

    custom = VanillaAutoencoder(encoder=nn.Sequential(nn.Dense(36, 3), Scaled()),
                                decoder=nn.Sequential(nn.Dense(3, 36)), input_dim=36,
                                latent_dim=3)
    assert not _replayable(custom)
    with pytest.raises(TypeError, match="replay must be None"):
        model.fit(_data(), epochs=1, progress=False, replay="yes")


def _eager(fn, *arrays):
    inputs = [Tensor(a) for a in arrays]
    return fn(*inputs)


def test_step_replays_nodes_comparisons_detach_and_sources():
    """relu's derivative from a comparison, a detached factor and a drawn noise
    source: a replay on new data gives the eager values and gradients."""
    rng = np.random.default_rng(1)
    w = Tensor(rng.standard_normal((4, 3)), requires_grad=True)
    noise_rng = np.random.default_rng(5)

    def loss(x):
        z = x @ w
        mask = minigrad.activations.activation("relu").derivative(z, z.dtype.type(0.01))
        eps = replay.source(Tensor(noise_rng.standard_normal(z.shape)),
                            lambda: noise_rng.standard_normal(z.shape))
        scale = (z * z).sum().detach()
        return ((z * mask + eps) * (z > 0.5)).sum() / scale + (z * z).mean()

    step = replay.Step(loss, Tensor(rng.standard_normal((5, 4))))
    step.backward()
    for _ in range(2):
        x = rng.standard_normal((5, 4))
        state = noise_rng.bit_generator.state
        total = float(step.run(x).item())
        w.grad = None
        step.backward()
        replayed_grad = w.grad.copy()
        noise_rng.bit_generator.state = state  # the eager step draws the same noise
        w.grad = None
        eager_total = _eager(loss, x)
        eager_total.backward()
        assert total == float(eager_total.item())
        assert np.array_equal(replayed_grad, w.grad)
        w.grad = None


def test_step_refuses_other_shapes_and_nested_recording():
    w = Tensor(np.ones((4, 2)), requires_grad=True)
    step = replay.Step(lambda x: (x @ w).sum(), Tensor(np.ones((3, 4))))
    assert step.accepts(np.zeros((3, 4))) and not step.accepts(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4\).*recorded with \[\(\(3, 4\)"):
        step.run(np.zeros((2, 4)))
    with pytest.raises(RuntimeError, match="already being recorded"):
        replay.Step(lambda x: replay.Step(lambda y: y.sum(), x).outputs, Tensor(np.ones(2)))
    assert not replay.is_recording()  # the failed inner recording cleaned up
    t = Tensor(np.ones(2))
    assert replay.source(t, lambda: np.zeros(2)) is t  # outside a recording: nothing
    constant = replay.Step(lambda x: x * 2.0, Tensor(np.ones(2)))
    with pytest.raises(RuntimeError, match="does not require a gradient"):
        constant.backward()


@pytest.mark.parametrize("use_replay", [True, False])
def test_steps_records_once_per_signature_and_backward_follows_the_last_call(
        use_replay, monkeypatch):
    """Steps: one recording per input shape, replays after it, clear() records anew;
    each call's backward gives the eager gradient of that call, replayed or not."""
    rng = np.random.default_rng(2)
    w = Tensor(rng.standard_normal((4, 3)), requires_grad=True)

    def loss(x):
        h = (x @ w).tanh()
        return (h * h).sum(), {"mean": h.mean()}

    counts = _count_replays(monkeypatch)
    steps = replay.Steps(loss, replay=use_replay)
    with pytest.raises(RuntimeError, match="no step has run"):
        steps.backward()
    for rows in (5, 5, 2, 5, 2):
        x = rng.standard_normal((rows, 4))
        total, terms = steps(Tensor(x))
        w.grad = None
        steps.backward()
        got = w.grad.copy()
        w.grad = None
        want_total, want_terms = _eager(loss, x)
        want_total.backward()
        assert float(total.item()) == float(want_total.item())
        assert float(terms["mean"].item()) == float(want_terms["mean"].item())
        assert np.array_equal(got, w.grad)
        w.grad = None
    expected = {"recorded": 2, "replayed": 3} if use_replay else {"recorded": 0, "replayed": 0}
    assert counts == expected
    steps.clear()
    steps(Tensor(rng.standard_normal((5, 4))))
    assert counts["recorded"] == (3 if use_replay else 0)
