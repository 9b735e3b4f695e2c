"""The benchmarks still run (tiny settings, no timing asserted): the main job's
turn-taking protocol end to end with minigrad alone, and the step benchmark's
targets table naming the fastest peer."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")


def test_main_job_benchmark_runs_in_turns_and_counts_subnormals(tmp_path):
    pytest.importorskip("numba", reason="the default backend's benchmark needs numba")
    out = tmp_path / "main_job.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "main_job.py"), "--frameworks",
         "minigrad-numba,by-hand", "--epochs", "2", "--n", "512", "--chunks", "2", "--pause",
         "0", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    for name in ("minigrad-numba", "by-hand"):  # the engine, and its kernels without it
        result = results[name]
        assert len(result["epochs_s"]) == 2 and all(s > 0 for s in result["epochs_s"])
        assert len(result["loss"]) == 2 and result["loss"][1] < result["loss"][0]
        assert result["subnormal_grads"] == 0 and result["subnormal_moments"] == 0
    assert "seconds per epoch" in proc.stdout and "numba last epoch / first" in proc.stdout
    assert "Numba's disk cache was filled first by a" in proc.stdout


def test_main_job_benchmark_fills_the_baselines_kernel_cache_too(tmp_path):
    """With --baseline, the other checkout's kernels are compiled before the first turn
    as well (this checkout stands in for it), and its rows are reported."""
    pytest.importorskip("numba", reason="the default backend's benchmark needs numba")
    out = tmp_path / "main_job.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "main_job.py"), "--frameworks", "minigrad-numba",
         "--epochs", "1", "--n", "256", "--chunks", "1", "--pause", "0", "--baseline", ROOT,
         "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"minigrad-numba", "minigrad-numba@baseline"}
    assert "and the baseline's by another" in proc.stdout
    assert "minigrad-numba / minigrad-numba@baseline, per epoch" in proc.stdout


def test_step_by_hand_computes_what_the_engine_computes(tmp_path):
    """The hand-written step (the bound on the engine's bookkeeping) must give the
    engine's losses, gradients and weights, eager and replayed, or its timing would
    compare unlike work."""
    pytest.importorskip("numba", reason="the benchmark runs the Numba backend's kernels")
    out = tmp_path / "step_by_hand.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "step_by_hand.py"), "--warm-epochs", "1",
         "--n", "512", "--rounds", "2", "--steps", "2", "--out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    loss, grads, weights = results["agreement"]
    assert loss < 1e-5 and grads < 1e-5 and weights < 1e-5
    assert {k: len(v) for k, v in results["times_ms"].items()} == {
        "engine": 2, "replayed": 2, "hand": 2}
    assert "replayed / hand per round" in proc.stdout and "eager / replayed" in proc.stdout


def test_step_benchmark_targets_compare_with_the_fastest_peer():
    sys.path.insert(0, BENCH)
    try:
        import train_step
    finally:
        sys.path.remove(BENCH)

    def timed(ms):
        return {"step": {str(b): {"median_ms": ms} for b in (64, 256, 1024)}}

    rows = train_step.targets({"minigrad-numba": timed(9.0), "torch": timed(12.0),
                               "torch-fused": timed(10.0), "jax": timed(8.0),
                               "floor": timed(8.5)})
    text = "\n".join(rows)
    assert "fastest peer (jax), batch 1024" in text and "1.12" in text and "MISSED" in text
    assert "matrix-product floor, batch 1024" in text and "1.06" in text and "met" in text
    # a batch size no peer ran: no peer named, nothing measured
    text = "\n".join(train_step.targets({"minigrad-numba": timed(9.0), "jax": {"step": {}}}))
    assert "numba step / fastest peer, batch 256" in text and "()" not in text
    assert text.count("not measured") == 5  # three peers, the floor, the numpy backend


def test_step_benchmark_loss_check_measures_against_float64():
    """Each float32 framework's losses against PyTorch float32 and against the same
    steps in float64: nearer the float64 run than PyTorch float32 is OK even where it
    differs from PyTorch float32 by more than 1e-4; a different computation is not."""
    sys.path.insert(0, BENCH)
    try:
        import train_step
    finally:
        sys.path.remove(BENCH)
    exact = [100.0, 90.0, 80.0]
    results = {"torch": {"check_losses": [100.0, 90.015, 80.0],  # 1.7e-4 off float64
                         "check_losses_float64": exact},
               "minigrad-numpy": {"check_losses": [100.0, 90.001, 80.0]},  # nearer it
               "broken": {"check_losses": [100.0, 91.0, 81.0]},
               "floor": {}}
    text = "\n".join(train_step.loss_check(results, list(results), 3))
    row = {line.split()[0]: line for line in text.splitlines()[1:] if line.startswith("  ")}
    assert "to torch" in text and "in float64" in text
    assert results["minigrad-numpy"]["check_max_rel_diff"] > 1e-4  # against torch float32
    assert abs(results["minigrad-numpy"]["check_max_rel_diff_float64"] - 0.001 / 90) < 1e-12
    assert abs(results["torch"]["check_max_rel_diff_float64"] - 0.015 / 90) < 1e-12
    lines = text.splitlines()
    float64_part = lines[lines.index(next(l for l in lines if "in float64" in l)):]
    verdict = {l.split()[0]: l.split()[2] for l in float64_part if l.startswith("  ")}
    assert verdict == {"torch": "OK", "minigrad-numpy": "OK", "broken": "MISMATCH"}
    assert "floor" not in row
    assert "MISMATCH" not in row["minigrad-numpy"]  # the float64 run decides
    # without the float64 run, PyTorch float32 is the reference
    del results["torch"]["check_losses_float64"]
    text = "\n".join(train_step.loss_check(results, list(results), 3))
    row = {line.split()[0]: line for line in text.splitlines()[1:] if line.startswith("  ")}
    assert "in float64" not in text and row["minigrad-numpy"].endswith("MISMATCH (<= 1e-4)")
    assert train_step.loss_check({"jax": {"check_losses": exact}}, ["jax"], 3) == []


def test_step_benchmark_runs_its_frameworks_in_turns(tmp_path):
    pytest.importorskip("numba", reason="the default backend's benchmark needs numba")
    out = tmp_path / "train_step.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(BENCH, "train_step.py"), "--frameworks",
         "minigrad-numba,floor", "--batch", "32", "--seconds", "0.2", "--epochs", "1",
         "--check-steps", "2", "--no-cold-compile", "--rounds", "2", "--pause", "0",
         "--state", "fresh", "--out", str(out)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]["fresh"]
    mine, floor = results["minigrad-numba"], results["floor"]
    assert mine["step"]["32"]["steps"] >= 30 and floor["step"]["32"]["steps"] >= 30
    assert len(mine["epochs_s"]) == 1 and "epochs_s" not in floor
    assert mine["subnormal_moments"] == 0 and len(mine["check_losses"]) == 2
    # the floor computes under minigrad's allocator policy, or it pays page faults
    # that minigrad does not (a "floor" minigrad could go below)
    sys.path.insert(0, ROOT)
    from minigrad import memory
    assert mine["reuse_memory"] is floor["reuse_memory"] is memory.supported()
    assert "NumPy's BLAS kernels:" in proc.stdout


@pytest.mark.parametrize("coretype", [None, "Haswell"])
def test_step_benchmark_names_the_blas_kernels_and_a_forced_choice(coretype):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    proc = subprocess.run(
        [sys.executable, "-c", "import numpy, train_step; print(train_step.blas_line())"],
        cwd=BENCH, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = proc.stdout.strip()
    assert line.startswith("NumPy's BLAS kernels: ")
    if coretype:
        assert line.endswith(f"(OPENBLAS_CORETYPE={coretype} in the environment)")
    else:
        assert line.endswith("(OpenBLAS's own choice for this CPU)")


def _gpu_check_commands():
    """The commands of benchmarks/gpu_checks.sh (continuation lines joined) that run a
    benchmark or the command line: ``[(program args, [--flags])]``."""
    import re
    import shlex
    with open(os.path.join(BENCH, "gpu_checks.sh")) as f:
        text = f.read().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        match = re.search(r'"\$python" ((?:benchmarks/\w+\.py)|(?:-m autoencoders \w+))(.*)', line)
        if match:
            program = match.group(1).split()
            flags = [w for w in shlex.split(match.group(2)) if w.startswith("--")]
            commands.append((program, flags))
    return commands


def test_gpu_checks_script_parses_and_uses_existing_options():
    """The prepared GPU script (run where a GPU is lent, never in CI) is valid bash,
    and every option it passes exists in the program it passes it to -- so a renamed
    option fails here, not in the few minutes a GPU is lent."""
    script = os.path.join(BENCH, "gpu_checks.sh")
    proc = subprocess.run(["bash", "-n", script], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    commands = _gpu_check_commands()
    programs = [" ".join(program) for program, _ in commands]
    assert programs == ["-m autoencoders manifold", "benchmarks/train_step.py",
                        "benchmarks/conv_step.py"]
    for program, flags in commands:
        assert "--backend" in flags  # each of them on the GPU
        argv = ([sys.executable, "-m", "autoencoders", program[-1]] if program[0] == "-m"
                else [sys.executable, os.path.join(ROOT, program[0])])
        usage = subprocess.run(argv + ["--help"], capture_output=True, text=True, cwd=ROOT,
                               timeout=120)
        assert usage.returncode == 0, usage.stderr[-2000:]
        for flag in flags:
            assert flag in usage.stdout, f"{' '.join(program)} has no option {flag}"
