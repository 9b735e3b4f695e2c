"""Every command of ``python -m autoencoders`` end to end, on a small scale."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the figures need matplotlib (the 'viz' extra)")

import minigrad as mg  # noqa: E402
from autoencoders import cli  # noqa: E402
from helpers import GPU_DEVICES, usage_error, write_fashion_like  # noqa: E402

SMALL = ["--epochs", "1", "--hidden", "32", "--batch-size", "64", "--no-progress",
         "--backend", "numpy"]


def finite_numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from finite_numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from finite_numbers(value)
    elif isinstance(tree, float):
        yield tree


def read_metrics(out):
    with open(out / "metrics.json") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    """Four small IDX files in the Fashion-MNIST layout: 300 train, 60 test images."""
    return write_fashion_like(tmp_path_factory.mktemp("fashion"), 300, 60)


def test_manifold_small_run_writes_figures_and_finite_metrics(tmp_path):
    out = tmp_path / "manifold"
    args = ["manifold", "--n", "400", "--n-test", "100", "--grid", "6", "--out", str(out)] + SMALL
    before = mg.get_backend()
    assert cli.main(args) == 0
    assert mg.get_backend() is before  # --backend holds for the command, not after it
    for name in ("manifold.png", "latent.png", "metrics.json", "config.json", "model.npz"):
        assert (out / name).stat().st_size > 0, name
    m = read_metrics(out)
    for key in ("elbo_nats_per_image", "iou_heldout", "r2_height", "r2_width"):
        assert math.isfinite(m[key]), key
    assert 0 <= m["iou_heldout"] <= 1
    assert all(math.isfinite(v) for v in finite_numbers(m))
    config = json.load(open(out / "config.json"))
    assert config["options"]["n"] == 400 and config["backend"] == "numpy"

    # the same seed gives the same numbers
    again = tmp_path / "again"
    cli.main(args[:-len(SMALL) - 2] + ["--out", str(again)] + SMALL)
    m2 = read_metrics(again)
    for key in ("elbo_nats_per_image", "iou_heldout", "r2_height", "r2_width"):
        assert m2[key] == m[key], key


def test_manifold_resume_continues_the_run_to_the_same_model(tmp_path, monkeypatch):
    base = ["manifold", "--n", "300", "--n-test", "60", "--grid", "4", "--hidden", "16",
            "--batch-size", "64", "--no-progress", "--backend", "numpy"]
    whole = tmp_path / "whole"
    cli.main(base + ["--epochs", "3", "--out", str(whole)])
    log = [json.loads(line) for line in open(whole / "model" / "log.jsonl")]
    assert [r["epoch"] for r in log] == [1, 2, 3] and all("kl" in r for r in log)

    # Ctrl-C during the third epoch: the checkpoint of epoch 2 stays, the run says so
    from autoencoders import training
    step = training._Training._step

    def interrupted(self, xb, update, last_good, where):
        if where.startswith("epoch 3"):
            raise KeyboardInterrupt
        return step(self, xb, update, last_good, where)

    parts = tmp_path / "parts"
    monkeypatch.setattr(training._Training, "_step", interrupted)
    with pytest.raises(SystemExit) as stop:
        cli.main(base + ["--epochs", "3", "--out", str(parts)])
    assert stop.value.code == 130 and read_metrics(parts)["epochs_completed"] == 2
    monkeypatch.setattr(training._Training, "_step", step)
    cli.main(base + ["--epochs", "3", "--out", str(parts), "--resume"])
    with np.load(whole / "model.npz") as a, np.load(parts / "model.npz") as b:
        for name in a.files:
            if name != "__config__":
                np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert read_metrics(parts)["elbo_nats_per_image"] == read_metrics(whole)["elbo_nats_per_image"]

    # a checkpoint written with other options: one line, no traceback
    err = usage_error(base + ["--batch-size", "32", "--epochs", "4", "--out", str(parts),
                              "--resume"])
    assert "manifold: error: " in err and "batch_size=64; this call has batch_size=32" in err


def test_manifold_rejects_another_flavor(tmp_path):
    err = usage_error(["manifold", "--flavor", "vanilla", "--out", str(tmp_path)] + SMALL)
    assert "variational" in err


def test_retrieve_small_run(tmp_path, fashion_dir):
    out = tmp_path / "retrieve"
    assert cli.main(["retrieve", "--data-dir", str(fashion_dir), "--latent", "8",
                     "--out", str(out)] + SMALL) == 0
    m = read_metrics(out)
    assert set(m["precision"]) == {"codes", "pixels", "pca8"}
    for scores in m["precision"].values():
        assert set(scores) == {"precision@1", "precision@4", "precision@10"}
        assert all(0 <= v <= 1 for v in scores.values())
    assert m["n_queries"] == 60
    assert (out / "neighbors.png").stat().st_size > 0

    # --model reuses the trained model and gives the same codes' precision
    again = tmp_path / "again"
    cli.main(["retrieve", "--data-dir", str(fashion_dir), "--model", str(out / "model.npz"),
              "--query", "0,5", "--out", str(again)] + SMALL)
    m2 = read_metrics(again)
    assert m2["precision"]["codes"] == m["precision"]["codes"]
    assert m2["queries"] == [0, 5]


def test_features_small_run(tmp_path, fashion_dir):
    pytest.importorskip("sklearn", reason="features needs scikit-learn (the 'features' extra)")
    out = tmp_path / "features"
    assert cli.main(["features", "--data-dir", str(fashion_dir), "--latent", "8",
                     "--labels", "20,300", "--out", str(out)] + SMALL) == 0
    m = read_metrics(out)
    for name in ("codes", "pixels", "pca8"):
        assert set(m["accuracy"][name]) == {"20", "300"}
        assert all(0 <= v <= 1 for v in m["accuracy"][name].values())


def test_denoise_small_run(tmp_path, fashion_dir):
    out = tmp_path / "denoise"
    assert cli.main(["denoise", "--data-dir", str(fashion_dir), "--latent", "16",
                     "--out", str(out)] + SMALL) == 0
    m = read_metrics(out)
    for key in ("psnr_corrupted", "psnr_denoising", "psnr_vanilla"):
        assert math.isfinite(m[key]) and m[key] > 0
    assert (out / "denoise.png").stat().st_size > 0
    assert (out / "denoising.npz").exists() and (out / "vanilla.npz").exists()


def test_missing_data_gives_a_clear_message(tmp_path):
    err = usage_error(["retrieve", "--data-dir", str(tmp_path / "nowhere"), "--out",
                       str(tmp_path / "o")] + SMALL)
    assert re.search("retrieve: error: .*(not found|missing|No such)", err), err


@pytest.mark.parametrize("argv, words", [
    (["manifold", "--hidden", "512,x"], "argument --hidden: expected positive integers"),
    (["manifold", "--hidden", "512,-3"], "argument --hidden: expected positive integers"),
    (["manifold", "--lr", "fast"], "argument --lr: expected a positive finite number, got 'fast'"),
    (["manifold", "--lr", "-0.1"], "argument --lr: expected a positive finite number"),
    (["manifold", "--lr", "inf"], "argument --lr: expected a positive finite number"),
    (["manifold", "--beta", "nan"], "argument --beta: expected a finite number >= 0"),
    (["manifold", "--span", "-2"], "argument --span: expected a positive finite number"),
    (["manifold", "--seed", "-1"], "argument --seed: expected a non-negative integer"),
    (["manifold", "--flavor", "fancy"], "argument --flavor: invalid choice: 'fancy'"),
    (["denoise", "--noise-level", "-0.5"], "argument --noise-level: expected a finite number >= 0"),
    (["retrieve", "--query", "1,two"], "argument --query: expected test-set indices"),
    (["retrieve", "--query", "-4"], "argument --query: expected test-set indices"),
    (["features", "--labels", "100,0"], "argument --labels: expected positive label counts"),
    (["features", "--labels", "ten"], "argument --labels: expected positive label counts"),
])
def test_every_bad_option_value_is_a_one_line_usage_error(argv, words):
    assert words in usage_error(argv + ["--no-progress"])


def test_an_out_that_is_a_file_and_a_corrupt_model_are_usage_errors(tmp_path, fashion_dir):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    err = usage_error(["manifold", "--out", str(blocker)] + SMALL)
    assert f"--out {blocker}: cannot write the run there" in err
    broken = tmp_path / "model.npz"
    broken.write_bytes(b"PK\x03\x04 truncated")
    err = usage_error(["retrieve", "--model", str(broken), "--data-dir", str(fashion_dir),
                       "--out", str(tmp_path / "o")] + SMALL)
    assert f"--model {broken}: " in err and "not a complete autoencoder file" in err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "autoencoders", "--help"], capture_output=True,
                         text=True, env=dict(os.environ, MINIGRAD_BACKEND="numpy"))
    assert out.returncode == 0
    for command in ("manifold", "retrieve", "features", "denoise"):
        assert command in out.stdout


@pytest.mark.parametrize("device", GPU_DEVICES, indirect=True)
@pytest.mark.parametrize("command, extra", [
    ("retrieve", ["--latent", "8", "--channels", "4,8"]),  # conv by default: kept small
    ("features", ["--latent", "8", "--labels", "300"]),
    ("denoise", ["--latent", "16", "--channels", "4,8"])])
def test_experiments_with_backend_cupy_match_the_cpu(device, tmp_path, fashion_dir, command,
                                                     extra):
    """Each experiment with --backend cupy: the same metrics as on the CPU."""
    if command == "features":
        pytest.importorskip("sklearn", reason="features needs scikit-learn (the 'features' extra)")
    metrics = {}
    for backend in ("numpy", "cupy"):
        out = tmp_path / backend
        args = [command, "--data-dir", str(fashion_dir), "--out", str(out)] + extra + SMALL
        assert cli.main(args[:-1] + [backend]) == 0  # SMALL ends with the backend's name
        metrics[backend] = read_metrics(out)
    # float32 rounding differs between the fused kernels and the reference graph, so
    # a neighbour or a label may flip: fractions get 0.05, decibels 0.1%
    for key, tol in (("precision", dict(atol=0.05)), ("accuracy", dict(atol=0.05)),
                     ("psnr_corrupted", dict(rtol=1e-3)), ("psnr_denoising", dict(rtol=1e-3)),
                     ("psnr_vanilla", dict(rtol=1e-3))):
        if key in metrics["numpy"]:
            np.testing.assert_allclose(list(finite_numbers(metrics["cupy"][key])),
                                       list(finite_numbers(metrics["numpy"][key])),
                                       err_msg=key, **tol)


def test_schedule_cosine_anneals_the_learning_rate_over_the_epochs(tmp_path, fashion_dir):
    lrs = {}
    for schedule in ("constant", "cosine"):
        out = tmp_path / schedule
        assert cli.main(["features", "--data-dir", str(fashion_dir), "--latent", "8",
                         "--labels", "300", "--out", str(out), "--schedule", schedule,
                         "--epochs", "3", "--hidden", "32", "--batch-size", "64",
                         "--no-progress", "--backend", "numpy"]) == 0
        with open(out / "model" / "log.jsonl") as f:
            lrs[schedule] = [json.loads(line)["lr"] for line in f]
    assert lrs["constant"] == [1e-3] * 3
    # CosineAnnealingLR(opt, 3): epoch e (from 0) trains at lr (1 + cos(pi e / 3)) / 2,
    # the rate its line of the log holds
    assert lrs["cosine"] == pytest.approx([1e-3 * (1 + math.cos(math.pi * e / 3)) / 2
                                           for e in range(3)], abs=1e-12)
    assert "argument --schedule: invalid choice: 'step'" in usage_error(
        ["features", "--schedule", "step", "--no-progress"])


def test_training_log_names_the_convolutions(tmp_path, fashion_dir, capsys):
    """A conv model's training line says what it is made of, not only its Dense sizes."""
    conv = ["--channels", "4,8", "--kernel-size", "5"]
    for arch, says in (("conv", "DenoisingAutoencoder 1x28x28 -> conv 4,8 (5x5) -> [16] on"),
                       ("mlp", "DenoisingAutoencoder [784, 16] on")):
        assert cli.main(["denoise", "--arch", arch, "--data-dir", str(fashion_dir),
                         "--latent", "16", "--hidden", "none", "--epochs", "1",
                         "--limit", "200", "--out", str(tmp_path / arch), "--no-progress",
                         "--backend", "numpy"] + (conv if arch == "conv" else [])) == 0
        assert says in capsys.readouterr().out
    # fully convolutional: the last convolution's output is the code, no Dense sizes
    assert cli.main(["denoise", "--data-dir", str(fashion_dir), "--latent", "none",
                     "--hidden", "none", "--epochs", "1", "--limit", "200", "--out",
                     str(tmp_path / "full"), "--no-progress", "--backend", "numpy"] + conv) == 0
    assert "DenoisingAutoencoder 1x28x28 -> conv 4,8 (5x5) on" in capsys.readouterr().out
