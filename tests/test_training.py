"""Training as users expect it: resume, validation and early stopping, schedules,
clipping, logs, data larger than memory (autoencoders/training.py, inputs.py)."""
import json
import os
import tracemalloc

import numpy as np
import pytest

import minigrad as mg
from minigrad import optim
from autoencoders import (DenoisingAutoencoder, VanillaAutoencoder, VariationalAutoencoder,
                          training)
from autoencoders.files import read_checkpoint

from helpers import CPU_DEVICES, host

RNG = np.random.default_rng(0)
X = (RNG.random((96, 12)) < 0.3).astype(np.float32) * RNG.random((96, 12)).astype(np.float32)


def weights(model):
    return [host(p.data) for p in model.parameters()]


def assert_same_weights(a, b):
    for x, y in zip(weights(a), weights(b)):
        np.testing.assert_array_equal(x, y)


class Interrupt:
    """A callback that presses Ctrl-C once epoch ``after`` (1-based) is done."""

    def __init__(self, after):
        self.after = after

    def __call__(self, model, epoch, logs):
        if epoch + 1 == self.after:
            raise KeyboardInterrupt


# -- resuming --------------------------------------------------------------------------

RESUME_CASES = {
    # the VAE draws noise every step and warms its KL weight up over the epochs; the
    # schedule, early stopping and validation split all carry state across epochs
    "vae": (lambda: VariationalAutoencoder([12, 8, 2], seed=1, kl_warmup_epochs=3),
            dict(validation_split=0.25, early_stopping=3,
                 schedule=lambda opt: optim.ReduceLROnPlateau(opt, factor=0.5, patience=0))),
    "denoising+sgd": (lambda: DenoisingAutoencoder([12, 6, 4], seed=2, noise_level=0.2),
                      dict(optimizer="sgd", lr=0.05, clip_grad_norm=1.0,
                           schedule=lambda opt: optim.StepLR(opt, 2, 0.5))),
}


@pytest.mark.parametrize("device", CPU_DEVICES, indirect=True)
@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_a_run_stopped_and_resumed_ends_bit_identical_to_an_uninterrupted_one(
        device, case, tmp_path):
    make, options = RESUME_CASES[case]
    epochs = 6
    whole = make()
    history = whole.fit(X, epochs=epochs, batch_size=16, progress=False, **options)

    stopped = make()
    with pytest.raises(KeyboardInterrupt):
        stopped.fit(X, epochs=epochs, batch_size=16, progress=False, checkpoint_dir=tmp_path,
                    callbacks=[Interrupt(after=2)], **options)
    state, _ = read_checkpoint(tmp_path / training.CHECKPOINT_FILE)
    assert state["epoch"] == 2

    resumed = make()  # a new process would build the model afresh, too
    resumed_history = resumed.fit(X, epochs=epochs, batch_size=16, progress=False,
                                  checkpoint_dir=tmp_path, resume=True, **options)
    assert_same_weights(resumed, whole)
    assert resumed_history == history
    opt_a, opt_b = resumed.optimizer_.state_dict(), whole.optimizer_.state_dict()
    assert opt_a["step_count"] == opt_b["step_count"] and opt_a["hyper"] == opt_b["hyper"]
    for key, values in opt_a["buffers"].items():
        for a, b in zip(values, opt_b["buffers"][key]):
            np.testing.assert_array_equal(a, b)
    log = [json.loads(line) for line in open(tmp_path / training.LOG_FILE)]
    assert [r["epoch"] for r in log] == list(range(1, len(history["total"]) + 1))


def test_resume_without_a_checkpoint_starts_afresh_and_a_finished_run_stays_finished(
        tmp_path):
    a = VanillaAutoencoder([12, 4], seed=0)
    a.fit(X, epochs=2, batch_size=32, progress=False, checkpoint_dir=tmp_path, resume=True)
    b = VanillaAutoencoder([12, 4], seed=0)
    b.fit(X, epochs=2, batch_size=32, progress=False)
    assert_same_weights(a, b)
    c = VanillaAutoencoder([12, 4], seed=0)
    history = c.fit(X, epochs=2, batch_size=32, progress=False, checkpoint_dir=tmp_path,
                    resume=True)
    assert_same_weights(c, a) and len(history["total"]) == 2
    # more epochs than the checkpoint holds: training continues from it
    c.fit(X, epochs=3, batch_size=32, progress=False, checkpoint_dir=tmp_path, resume=True)
    assert read_checkpoint(tmp_path / training.CHECKPOINT_FILE)[0]["epoch"] == 3


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    VanillaAutoencoder([12, 4], seed=0).fit(X, epochs=1, batch_size=32, progress=False,
                                           checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"batch_size=32; this call has batch_size=16"):
        VanillaAutoencoder([12, 4]).fit(X, epochs=2, batch_size=16, progress=False,
                                        checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match=r"sizes \[12, 4\]; this model .* sizes \[12, 5\]"):
        VanillaAutoencoder([12, 5]).fit(X, epochs=2, batch_size=32, progress=False,
                                        checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_dir"):
        VanillaAutoencoder([12, 4]).fit(X, epochs=2, progress=False, resume=True)
    path = tmp_path / training.CHECKPOINT_FILE
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="not a complete checkpoint file"):
        VanillaAutoencoder([12, 4]).fit(X, epochs=2, batch_size=32, progress=False,
                                        checkpoint_dir=tmp_path, resume=True)


def test_checkpoints_hold_no_pickle_and_are_replaced_atomically(tmp_path):
    model = VanillaAutoencoder([12, 4], seed=0)
    model.fit(X, epochs=2, batch_size=32, progress=False, checkpoint_dir=tmp_path)
    with np.load(tmp_path / training.CHECKPOINT_FILE, allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)
    assert sorted(os.listdir(tmp_path)) == [training.CHECKPOINT_FILE, training.LOG_FILE]


def test_fit_again_continues_with_the_optimizer_state():
    model = VanillaAutoencoder([12, 4], seed=0)
    model.fit(X, epochs=1, batch_size=32, progress=False)
    opt = model.optimizer_
    moments = [host(m) for m in opt.m]
    model.fit(X, epochs=1, batch_size=32, lr=5e-4, progress=False)
    assert model.optimizer_ is opt and opt.lr == 5e-4
    assert opt.step_count == 6 and opt.steps == [6] * len(opt.params)
    assert any(not np.array_equal(a, host(b)) for a, b in zip(moments, opt.m))
    model.optimizer_ = None  # documented: start the optimizer afresh
    model.fit(X, epochs=1, batch_size=32, progress=False)
    assert model.optimizer_ is not opt and model.optimizer_.step_count == 3
    model.fit(X, epochs=1, batch_size=32, optimizer="sgd", progress=False)
    assert isinstance(model.optimizer_, optim.SGD)  # another kind: a new optimizer


# -- validation, early stopping, schedules, clipping --------------------------------------

def test_validation_split_holds_out_the_last_rows():
    a = VanillaAutoencoder([12, 4], seed=0)
    ha = a.fit(X, epochs=2, batch_size=16, progress=False, validation_split=0.25)
    b = VanillaAutoencoder([12, 4], seed=0)
    hb = b.fit(X[:72], epochs=2, batch_size=16, progress=False, validation_data=X[72:])
    assert_same_weights(a, b)
    assert ha == hb and len(ha["val_total"]) == 2
    with pytest.raises(ValueError, match="validation_split or validation_data, not both"):
        a.fit(X, validation_split=0.2, validation_data=X, progress=False)
    with pytest.raises(ValueError, match=r"validation_split must be a float in \(0, 1\)"):
        a.fit(X, validation_split=1.5, progress=False)


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    snapshots = []
    model = VanillaAutoencoder([12, 6, 3], seed=0)
    # nothing beats epoch 1 by 1e9: training stops after 1 + patience + 1 epochs
    stopper = training.EarlyStopping(patience=2, min_delta=1e9)
    history = model.fit(X, epochs=20, batch_size=16, progress=False, validation_split=0.25,
                        early_stopping=stopper,
                        callbacks=[lambda m, e, logs: snapshots.append(weights(m))])
    assert len(history["total"]) == 4 and stopper.best_epoch == 0 and stopper.stopped
    for now, best in zip(weights(model), snapshots[0]):
        np.testing.assert_array_equal(now, best)


def test_early_stopping_keeps_the_epoch_with_the_lowest_validation_loss():
    snapshots = []
    model = VanillaAutoencoder([12, 6, 3], seed=0)
    history = model.fit(X, epochs=12, batch_size=8, lr=0.2, optimizer="sgd",
                        progress=False, validation_split=0.25, early_stopping=2,
                        callbacks=[lambda m, e, logs: snapshots.append(weights(m))])
    best = int(np.argmin(history["val_total"]))
    for now, kept in zip(weights(model), snapshots[best]):
        np.testing.assert_array_equal(now, kept)
    assert len(history["total"]) in (12, best + 4)


def test_the_schedule_sets_each_epochs_learning_rate(tmp_path):
    model = VanillaAutoencoder([12, 4], seed=0)
    model.fit(X, epochs=7, batch_size=32, lr=0.1, optimizer="sgd", progress=False,
              schedule=lambda opt: optim.StepLR(opt, step_size=3, gamma=0.5), log_dir=tmp_path)
    rates = [json.loads(line)["lr"] for line in open(tmp_path / training.LOG_FILE)]
    # each line holds the rate its epoch trained with: halved after every 3 epochs
    assert rates == pytest.approx([0.1 * 0.5 ** (n // 3) for n in range(7)])
    other = optim.SGD(VanillaAutoencoder([12, 4]).parameters(), lr=0.1)
    with pytest.raises(ValueError, match="bound to another optimizer"):
        model.fit(X, epochs=1, schedule=optim.StepLR(other, 2), progress=False)
    with pytest.raises(TypeError, match="schedule must be a minigrad.optim schedule"):
        model.fit(X, epochs=1, schedule=0.5, progress=False)


def test_clipping_bounds_every_step():
    def first_step_change(clip):
        model = VanillaAutoencoder([12, 6, 3], seed=0)
        before = np.concatenate([w.ravel() for w in weights(model)])
        model.fit(X[:16], epochs=1, batch_size=16, lr=1.0, optimizer="sgd", progress=False,
                  clip_grad_norm=clip)
        return np.linalg.norm(np.concatenate([w.ravel() for w in weights(model)]) - before)

    assert first_step_change(None) > 0.01
    assert first_step_change(1e-3) == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(ValueError, match="clip_grad_norm must be a positive number"):
        first_step_change(-1.0)


def test_log_file_and_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboardX", reason="tensorboard=True needs the tensorboard extra")
    model = VanillaAutoencoder([12, 4], seed=0)
    history = model.fit(X, epochs=3, batch_size=32, progress=False, validation_split=0.25,
                        log_dir=tmp_path, tensorboard=True)
    records = [json.loads(line) for line in open(tmp_path / training.LOG_FILE)]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert [r["val_total"] for r in records] == history["val_total"]
    assert all(r["seconds"] > 0 and r["lr"] == 1e-3 for r in records)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))


# -- data larger than memory ------------------------------------------------------------

# memory is the backend's own business once a batch is read: one CPU backend suffices
# (tracemalloc makes the emulated GPU backend crawl, and would count Numba's compiler)
@pytest.mark.parametrize("device", ["numpy"], indirect=True)
def test_training_from_a_memmap_reads_it_a_batch_at_a_time(device, tmp_path):
    rows, width = 160_000, 64
    path = tmp_path / "data.f32"
    data = np.memmap(path, dtype=np.float32, mode="w+", shape=(rows, width))
    for at in range(0, rows, 10_000):  # written in blocks, as a large file would be
        data[at:at + 10_000] = np.random.default_rng(at).random((10_000, width))
    data.flush()
    del data
    X_disk = np.memmap(path, dtype=np.float32, mode="r", shape=(rows, width))
    size = rows * width * 4                       # 41 MB on disk; batches of 128 KB

    def peak_bytes(call):
        tracemalloc.start()
        try:
            result = call()
            return result, tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    model = VanillaAutoencoder([width, 16], seed=0)
    model.fit(X_disk[:256], epochs=1, progress=False)  # first-call work, not traced
    model.optimizer_ = None
    model.load_state_dict(VanillaAutoencoder([width, 16], seed=0).state_dict())
    _, peak = peak_bytes(lambda: model.fit(X_disk, epochs=1, batch_size=512, progress=False,
                                           validation_split=0.1))
    # what remains is a few batches' worth, and the shuffled order (8 bytes a row)
    assert peak < size / 10, f"fit: peak {peak} bytes while training on {size} bytes"
    losses, peak = peak_bytes(lambda: model.evaluate(X_disk))
    assert peak < size / 10, f"evaluate: peak {peak} bytes over {size} bytes"
    codes, peak = peak_bytes(lambda: model.transform(X_disk))
    assert peak < 2 * codes.nbytes + size / 10, f"transform: peak {peak} bytes"

    in_memory = VanillaAutoencoder([width, 16], seed=0)
    in_memory.fit(np.array(X_disk), epochs=1, batch_size=512, progress=False,
                  validation_split=0.1)
    assert_same_weights(model, in_memory)
    np.testing.assert_array_equal(codes, in_memory.transform(np.array(X_disk)))
    assert losses == in_memory.evaluate(np.array(X_disk))


def test_a_nan_deep_in_a_memmap_is_found_before_training(tmp_path):
    data = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=(5000, 12))
    data[:] = 0.5
    data[4321, 7] = np.nan
    model = VanillaAutoencoder([12, 4])
    with pytest.raises(ValueError, match=r"1 NaN or infinite values .* row 4321, column 7"):
        model.fit(data, epochs=1, progress=False)
    assert getattr(model, "history_", None) is None


class Batches:
    """A re-iterable stream of batches, as a data loader would give."""

    def __init__(self, X, size):
        self.X, self.size = X, size

    def __iter__(self):
        return (self.X[i:i + self.size] for i in range(0, len(self.X), self.size))


def test_fit_evaluate_and_transform_take_a_stream_of_batches():
    model = VanillaAutoencoder([12, 4], seed=0)
    history = model.fit(Batches(X, 16), epochs=2, progress=False)
    assert len(history["total"]) == 2
    np.testing.assert_array_equal(model.transform(Batches(X, 10)), model.transform(X))
    assert model.evaluate(Batches(X, 96)) == pytest.approx(model.evaluate(X))
    with pytest.raises(ValueError, match="one-shot iterator"):
        model.fit((X[i:i + 16] for i in range(0, 96, 16)), epochs=2, progress=False)
    bad = [X[:16], np.full((16, 12), 2.0, np.float32)]
    with pytest.raises(ValueError, match=r"batch 2 of the stream.*loss='bce' needs"):
        model.fit(Batches(np.concatenate(bad), 16), epochs=1, progress=False)
    with pytest.raises(ValueError, match="validation_split needs X as rows"):
        model.fit(Batches(X, 16), validation_split=0.2, progress=False)


def test_fit_moves_the_optimizer_state_with_the_model_between_backends():
    before = mg.get_backend()
    model = VanillaAutoencoder([12, 4], seed=0)
    model.fit(X, epochs=1, batch_size=32, progress=False, backend="numpy")
    opt = model.optimizer_
    model.fit(X, epochs=1, batch_size=32, progress=False, backend="numba")
    assert model.optimizer_ is opt and opt.step_count == 6
    assert all(type(m) is type(p.data) for m, p in zip(opt.m, opt.params))
    assert mg.get_backend() is before  # fit's backend holds for the call only


def test_readmes_training_example_runs(tmp_path, monkeypatch):
    """README's "Training an autoencoder" block, on fewer images and epochs."""
    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme[readme.index("## Training an autoencoder"):]
    code = section[section.index("```python") + len("```python"):section.index("```\n")]
    small = code.replace("20_000", "300").replace("epochs=30", "epochs=2")
    assert small.count("epochs=2") == 2 and "300" in small
    monkeypatch.chdir(tmp_path)
    os.makedirs("runs")
    scope = {}
    exec(compile(small, "README.md", "exec"), scope)
    assert scope["codes"].shape == (300, 2)
    assert sorted(os.listdir("runs/vae")) == ["checkpoint.npz", "log.jsonl"]
