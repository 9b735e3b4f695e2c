#!/usr/bin/env bash
# Every GPU-side check of README's "On the GPU", as one script with a time budget, for
# a GPU machine that is lent for minutes (no network: the packages already there --
# CuPy, PyTorch, Numba, pytest -- are used as they are; the checkout is put on
# PYTHONPATH rather than installed).  Most telling first:
#
#   1. the GPU cases of the test suite (the cupy runs of the device fixture,
#      tests/test_cupy.py, every CUDA kernel compiled);
#   2. the main job on the GPU (target: under 30 s);
#   3. benchmarks/train_step.py --backend cupy (target: at most 1.0x PyTorch CUDA
#      eager at batch 1024);
#   4. benchmarks/conv_step.py --backend cupy (target: at most 1.0x PyTorch CUDA
#      eager at batch 128);
#   5. the whole suite with the cupy backend as the default, in the time left.
#
# usage: bash benchmarks/gpu_checks.sh [OUTDIR] [SECONDS]
#   OUTDIR   where the logs go (default: $OUT when set, else runs/gpu-checks): at most
#            7 files -- summary.txt (what ran, how long, its exit status and the end
#            of its output), tests_gpu.log, manifold.log, manifold_metrics.json,
#            train_step.json, conv_step.json, suite.log
#   SECONDS  the budget for all of it (default 480); each check has its own
#            limit inside it, and the last gets what is left
set -u
cd "$(dirname "$0")/.."
out=${1:-${OUT:-runs/gpu-checks}}
budget=${2:-480}
mkdir -p "$out"
summary="$out/summary.txt"
start=$SECONDS
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}

left() { echo $((budget - (SECONDS - start))); }

# check NAME LIMIT LOG COMMAND...: COMMAND under `timeout LIMIT` (or the time left,
# whichever is less), its output in LOG, a line and its last lines in the summary
check() {
    local name=$1 limit=$2 log=$3; shift 3
    local remaining; remaining=$(left)
    if [ "$remaining" -lt 20 ]; then
        echo "== $name: not run, ${remaining} s of the budget left" >>"$summary"
        return
    fi
    [ "$limit" -gt "$remaining" ] && limit=$remaining
    local t0=$SECONDS
    timeout "$limit" "$@" >"$log" 2>&1
    local rc=$?
    local why=""
    [ "$rc" -eq 124 ] && why=" (stopped at its ${limit} s limit)"
    { echo "== $name: exit $rc$why after $((SECONDS - t0)) s: $*"
      tail -n 25 "$log" | sed 's/^/   /'; echo; } >>"$summary"
}

{ echo "gpu_checks.sh $(date -u +%FT%TZ), budget ${budget} s"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  "$python" -c 'import sys, numpy; print("python", sys.version.split()[0],
                                         "numpy", numpy.__version__)'
  for m in cupy numba torch; do
      "$python" -c "import $m; print('$m', $m.__version__)" 2>&1 | tail -n 1
  done
  "$python" -c 'import cupy; print("cupy sees", cupy.cuda.runtime.getDeviceCount(), "GPUs")' \
      2>&1 | tail -n 1
  echo; } >"$summary"

check "GPU cases of the suite" 150 "$out/tests_gpu.log" \
    "$python" -m pytest -q -ra -p no:cacheprovider -k "cupy and not emulated" tests
check "main job on the GPU" 90 "$out/manifold.log" \
    "$python" -m autoencoders manifold --backend cupy --no-progress --out "$out/manifold"
if [ -f "$out/manifold/metrics.json" ]; then
    cp "$out/manifold/metrics.json" "$out/manifold_metrics.json"
fi
rm -rf "$out/manifold"  # the figures and the model: not needed back
check "training step on the GPU" 120 "$out/train_step.log" \
    "$python" benchmarks/train_step.py --backend cupy --state fresh --epochs 1 --rounds 3 \
    --seconds 1 --out "$out/train_step.json"
rm -f "$out/train_step.log"  # its report is in train_step.json and the summary
check "conv step on the GPU" 90 "$out/conv_step.log" \
    "$python" benchmarks/conv_step.py --backend cupy --rounds 10 --out "$out/conv_step.json"
rm -f "$out/conv_step.log"
workers=$("$python" -c 'import xdist' 2>/dev/null && echo "-n 8")
check "the whole suite, cupy the default backend" 600 "$out/suite.log" \
    env MINIGRAD_BACKEND=cupy "$python" -m pytest -q -ra -p no:cacheprovider $workers tests
echo "done after $((SECONDS - start)) s" >>"$summary"
cat "$summary"
