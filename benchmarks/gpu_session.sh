#!/usr/bin/env bash
# One device call on a lent GPU machine (no network): environment facts, gpu_check
# (compile, kernel correctness, timings against PyTorch, training throughput, the README's
# loop), the pytest suite on NumPy + CuPy, `gpunet train` and `gpunet bench` on the GPU. Everything is written under $OUT.
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
if [ "${BLAS_S:-90}" != 0 ]; then
    echo "== gpu_blas (gpunet's cuBLAS calls against cupy.matmul)"
    timeout "${BLAS_S:-90}" python3 benchmarks/gpu_blas.py > "$OUT/blas.txt" 2>&1
    echo "gpu_blas rc=$?"; tail -12 "$OUT/blas.txt"
fi
echo "== gpu_check"
timeout "${CHECK_S:-210}" python3 benchmarks/gpu_check.py --out "$OUT" --skip-tests ${CHECK_ARGS:-} \
    > "$OUT/gpu_check.txt" 2>&1
echo "gpu_check rc=$?"
echo "== pytest"
# -v: one line per test as it ends, so a run stopped by its time limit still names what
# failed (run 3 of 2026-11-29 was stopped at 93% with one anonymous F); 170 s was too short
# once the distributed tests could start there (mpiexec per test)
timeout "${PYTEST_S:-300}" python3 -m pytest -v -p no:cacheprovider -n "${PYTEST_N:-8}" \
    --timeout 100 ${PYTEST_ARGS:-tests} > "$OUT/pytest.txt" 2>&1
echo "pytest rc=$?"
grep -E "^(FAILED|ERROR)|\] (FAILED|ERROR) " "$OUT/pytest.txt" | head -60
grep -cE "\] PASSED " "$OUT/pytest.txt" | sed 's/^/passed so far: /'
tail -3 "$OUT/pytest.txt"
echo "== gpunet train --device cuda"
timeout "${TRAIN_S:-90}" python3 -m gpunet.cli train --device cuda > "$OUT/train.txt" 2>&1
echo "train rc=$?"; tail -4 "$OUT/train.txt"
if [ "${BENCH_S:-150}" != 0 ]; then      # timeout 0 would mean no limit: 0 skips instead
    echo "== gpunet bench --device cuda --compare torch --quick"
    timeout "${BENCH_S:-150}" python3 -m gpunet.cli bench --device cuda --compare torch --quick \
        --no-progress --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
    echo "bench rc=$?"; tail -25 "$OUT/bench.txt"
fi
echo "== gpu_check output (end)"
tail -c 6000 "$OUT/gpu_check.txt"
