#!/usr/bin/env bash
# One device call on a lent GPU machine (no network): environment facts, gpu_check
# (compile, kernel correctness, timings against PyTorch, training throughput), then the
# pytest suite on NumPy + CuPy. Everything is written under $OUT.
#
#   OUT=/tmp/out bash benchmarks/gpu_session.sh
#
# The sim device is left out there (CXX names no compiler): it is the CPU stand-in for a
# GPU and runs in CI; on the GPU machine the time goes to CuPy.
set -u
OUT=${OUT:-/tmp/gpu_session}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CXX=${GPU_SESSION_CXX:-no-sim-on-the-gpu-machine}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
{ date; nvidia-smi; nvcc --version | tail -2
  python3 -c "import sys, cupy, numpy, torch; print(sys.version); print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1
head -20 "$OUT/env.txt"
echo "== gpu_check"
timeout "${CHECK_S:-210}" python3 benchmarks/gpu_check.py --out "$OUT" --skip-tests ${CHECK_ARGS:-} \
    > "$OUT/gpu_check.txt" 2>&1
echo "gpu_check rc=$?"
echo "== pytest"
timeout "${PYTEST_S:-170}" python3 -m pytest -q -p no:cacheprovider -n "${PYTEST_N:-8}" \
    --timeout 100 ${PYTEST_ARGS:-tests} > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"
grep -E "^(FAILED|ERROR)" "$OUT/pytest.txt" | head -60
tail -3 "$OUT/pytest.txt"
echo "== gpu_check output (end)"
tail -c 6000 "$OUT/gpu_check.txt"
