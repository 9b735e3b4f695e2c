"""benchmarks/conv_step.py still runs (tiny settings, no timing asserted): its main
path -- the models built, the turns, the table, the JSON, the loss check against
PyTorch where PyTorch is installed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import helpers
import minigrad as mg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "conv_step.py")
TINY = ["--batch", "8,4", "--rounds", "2", "--warmup", "0", "--timed", "2", "--pause", "0",
        "--check-steps", "2", "--check-batch", "8", "--n", "64"]


def run(frameworks, out):
    proc = subprocess.run([sys.executable, SCRIPT, "--frameworks", frameworks, "--out", str(out)]
                          + TINY, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())["results"]


def test_minigrad_backends_take_turns_and_learn_alike(tmp_path):
    pytest.importorskip("numba", reason="the default backend's benchmark needs numba")
    stdout, results = run("minigrad-numba,minigrad-numpy", tmp_path / "conv_step.json")
    for name in ("minigrad-numba", "minigrad-numpy"):
        for batch in ("8", "4"):
            timed = results["step"][name][batch]
            assert timed["steps"] == 4 and 0 < timed["min_ms"] <= timed["median_ms"]
    check = results["check_losses"]["float32"]
    numba, numpy = check["minigrad-numba"], check["minigrad-numpy"]
    assert len(numba) == 2 and numba[1] < numba[0]  # a step of Adam lowers the loss
    assert numba == pytest.approx(numpy, rel=1e-4)  # the same model and batches
    assert "batch 8" in stdout and "minigrad-numpy" in stdout and "ratio" not in stdout


def test_torch_twin_matches_minigrad(tmp_path):
    pytest.importorskip("torch", reason="the comparison needs PyTorch (pip install torch==2.13.0)")
    pytest.importorskip("numba", reason="the default backend's benchmark needs numba")
    stdout, results = run("minigrad-numba,torch", tmp_path / "conv_step.json")
    assert set(results["step"]) == {"minigrad-numba", "torch"}
    diff = results["check_rel_diff"]
    assert diff["float32"]["minigrad-numba"]["max"] <= 1e-4  # same weights and batches
    assert diff["float64"]["minigrad-numba"]["max"] <= 1e-12  # the same model
    assert set(results["ratio_to_torch"]["minigrad-numba"]) == {"8", "4"}
    assert "minigrad-numba / torch" in stdout and "default" in stdout


def test_each_framework_computes_on_its_own_backend():
    """Host arrays compute on the active backend, so each minigrad framework's turn
    runs under its own (the NumPy model on the references, the Numba ones on Numba)."""
    pytest.importorskip("numba", reason="the default backend's benchmark needs numba")
    conv_step = _import_conv_step()
    probe = lambda: mg.device.device_of(np.zeros(1)).name  # noqa: E731
    for name, backend in (("minigrad-numpy", "numpy"), ("minigrad-numba", "numba"),
                          ("minigrad-numba-blas", "numba")):
        assert conv_step.in_context(name, probe) == backend


@pytest.mark.parametrize("device", helpers.GPU_DEVICES, indirect=True)
def test_gpu_mode_runs_the_cupy_framework(device, tmp_path):
    """``--backend cupy`` (issue 12's GPU check): the minigrad-cupy framework trains on
    the GPU backend -- here on a real GPU or the host stand-in for CuPy -- learns as
    the CPU model does, and is reported; torch-cuda joins where PyTorch sees a GPU."""
    pytest.importorskip("numba", reason="the CPU side of the comparison needs numba")
    conv_step = _import_conv_step()
    weights = conv_step.initial_weights()
    X, _ = conv_step.load_data(64)
    losses = conv_step.loss_check(["minigrad-cupy", "minigrad-numba"], weights, X, 2, 8)
    assert losses["minigrad-cupy"][1] < losses["minigrad-cupy"][0]  # Adam lowers the loss
    assert losses["minigrad-cupy"] == pytest.approx(losses["minigrad-numba"], rel=1e-4)
    active = lambda: mg.get_backend().name  # noqa: E731
    assert conv_step.in_context("minigrad-cupy", active) == "cupy"
    out = tmp_path / "conv_step_gpu.json"
    frameworks = "minigrad-cupy" + (",torch-cuda" if conv_step.torch_available("cuda") else "")
    results = conv_step.main(["--backend", "cupy", "--frameworks", frameworks, "--out", str(out)]
                             + TINY)
    timed = results["step"]["minigrad-cupy"]["8"]
    assert timed["steps"] == 4 and 0 < timed["min_ms"] <= timed["median_ms"]
    assert json.loads(out.read_text())["results"]["backend"] == "cupy"
    if "torch-cuda" in frameworks:
        assert results["check_rel_diff"]["float32"]["minigrad-cupy"]["max"] <= 1e-4


def test_gpu_mode_without_pytorch_cuda_reports_no_ratio(monkeypatch):
    """On a GPU machine without PyTorch's CUDA build the default frameworks are
    minigrad-cupy alone, and the report has no ratio (nothing to divide by)."""
    conv_step = _import_conv_step()
    monkeypatch.setattr(conv_step, "torch_available", lambda device="cpu": device == "cpu")
    assert conv_step.default_frameworks("cupy") == ["minigrad-cupy"]
    assert conv_step.default_frameworks("cpu")[-1] == "torch"
    monkeypatch.setattr(conv_step, "torch_available", lambda device="cpu": True)
    assert conv_step.default_frameworks("cupy") == ["minigrad-cupy", "torch-cuda"]
    args = conv_step.argparse.Namespace(backend="cupy", batch=[8], rounds=1, timed=1,
                                        check_steps=0)
    step = {"median_ms": 2.0, "min_ms": 1.0, "max_ms": 3.0, "steps": 1}
    text = conv_step.report({"step": {"minigrad-cupy": {"8": step}}, "gpu": "a GPU"}, args,
                            "blocks")
    assert "GPU: a GPU" in text and "minigrad-cupy" in text and "ratio" not in text


def _import_conv_step():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import conv_step
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    return conv_step
