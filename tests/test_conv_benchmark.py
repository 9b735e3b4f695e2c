"""benchmarks/conv_step.py still runs (tiny settings, no timing asserted): its main
path -- the models built, the turns, the table, the JSON, the loss check against
PyTorch where PyTorch is installed."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

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
    import minigrad as mg
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        import conv_step
    finally:
        sys.path.remove(os.path.dirname(SCRIPT))
    probe = lambda: mg.device.device_of(np.zeros(1)).name  # noqa: E731
    for name, backend in (("minigrad-numpy", "numpy"), ("minigrad-numba", "numba"),
                          ("minigrad-numba-blas", "numba")):
        assert conv_step.in_context(name, probe) == backend
