#!/usr/bin/env bash
# One device call on a lent GPU machine (no network): environment facts and gpu_blas, gpu_check
# (compile, kernel correctness, timings against PyTorch, training throughput, the README's
# loop), the pytest suite on NumPy + CuPy, then the tests that start mpiexec, `gpunet train`
# and `gpunet bench` on the GPU. Everything is written under $OUT, in 8 files (what one device
# call brings back): env.txt (facts, gpu_blas), gpu_check.txt, gpu_check.json, pytest.txt
# (both pytest calls), failures.txt, train.txt, bench.txt, bench.json.
#
#   OUT=/tmp/out bash benchmarks/gpu_session.sh
#
# The whole call stays within TOTAL_S (480 s): each step gets its own limit or what is left
# of the total, whichever is less, and is skipped with under 10 s left or a limit of 0.
# Limits (s): BLAS_S 90, CHECK_S 180, PYTEST_S 150, MPI_S 90, TRAIN_S 60, BENCH_S 120. Also
# PYTEST_N 14, MPI_N 4 (pytest-xdist workers), PYTEST_ARGS, MPI_ARGS, CHECK_ARGS. On the H200
# (run 4) the main pytest call took 80 s with -n 14 and the whole of run 4's call 310 s.
#
# failures.txt: conftest.py's GPUNET_FAILURE_LOG. Each failed or errored test's traceback is
# written there as the test ends, and on SIGTERM (a step's time limit) the tests still
# running, so a cut-off pytest still says what failed and what hung (run 4 lost them all).
#
# The tests that start mpiexec (tests/test_distributed.py's launcher tests and the NCCL
# one-GPU test) run in a pytest call of their own after the main one, with a limit of their
# own (MPI_S): a launch that hangs there costs neither the rest of the suite nor its report.
# The main call skips them (GPUNET_TEST_MPIEXEC=none).
#
# The sim device is left out there (CXX names no compiler): it is the CPU stand-in for a
# GPU and runs in CI; on the GPU machine the time goes to CuPy.
set -u
OUT=${OUT:-/tmp/gpu_session}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD CXX=${GPU_SESSION_CXX:-no-sim-on-the-gpu-machine}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
export GPUNET_FAILURE_LOG=$OUT/failures.txt
END=$(( $(date +%s) + ${TOTAL_S:-480} ))
# limit WANTED: the seconds a step may take, at most what is left of TOTAL_S; 0 when under 10
limit() {
    local left=$(( END - $(date +%s) ))
    if [ "$left" -lt 10 ]; then echo 0; elif [ "$1" -lt "$left" ]; then echo "$1"; else echo "$left"; fi
}
# step NAME WANTED: prints the header and sets S, or says why the step is skipped (returns 1)
step() {
    S=$(limit "$2")
    if [ "$2" = 0 ]; then echo "== $1: skipped (0 s asked for)"; return 1; fi  # timeout 0 = no limit
    if [ "$S" = 0 ]; then echo "== $1: skipped (TOTAL_S=${TOTAL_S:-480} spent)"; return 1; fi
    echo "== $1 (limit $S s, $(( END - $(date +%s) )) s left)"
}
{ date; timeout 30 nvidia-smi; nvcc --version | tail -2
  timeout 60 python3 -c "import sys, cupy, numpy, torch; print(sys.version); print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__, torch.cuda.is_available())"
} > "$OUT/env.txt" 2>&1
head -20 "$OUT/env.txt"
if step "gpu_blas (gpunet's cuBLAS calls against cupy.matmul)" "${BLAS_S:-90}"; then
    echo "== gpu_blas" >> "$OUT/env.txt"
    timeout -k 10 "$S" python3 benchmarks/gpu_blas.py >> "$OUT/env.txt" 2>&1
    echo "gpu_blas rc=$?"; tail -12 "$OUT/env.txt"
fi
if step gpu_check "${CHECK_S:-180}"; then
    timeout -k 10 "$S" python3 benchmarks/gpu_check.py --out "$OUT" --skip-tests ${CHECK_ARGS:-} \
        > "$OUT/gpu_check.txt" 2>&1
    echo "gpu_check rc=$?"
fi
# -v: one line per test as it ends; failures.txt has the tracebacks as they come
if step "pytest (launcher tests skipped)" "${PYTEST_S:-150}"; then
    GPUNET_TEST_MPIEXEC=none timeout -k 10 "$S" python3 -m pytest -v -p no:cacheprovider \
        -n "${PYTEST_N:-14}" --timeout 100 ${PYTEST_ARGS:-tests} > "$OUT/pytest.txt" 2>&1
    echo "pytest rc=$?"
    grep -E "^(FAILED|ERROR)|\] (FAILED|ERROR) " "$OUT/pytest.txt" | head -60
    grep -cE "\] PASSED " "$OUT/pytest.txt" | sed 's/^/passed so far: /'
    tail -3 "$OUT/pytest.txt"; echo
fi
if step "pytest, the tests that start mpiexec" "${MPI_S:-90}"; then
    printf '\n==== the tests that start mpiexec\n' >> "$OUT/pytest.txt"   # after a cut-off line too
    timeout -k 10 "$S" python3 -m pytest -v -p no:cacheprovider -n "${MPI_N:-4}" --timeout 60 \
        ${MPI_ARGS:-tests/test_distributed.py tests/test_cuda_gpu.py::test_nccl_calls_run_on_one_gpu} \
        >> "$OUT/pytest.txt" 2>&1
    echo "pytest (mpiexec) rc=$?"
    sed -n '/^==== the tests that start mpiexec/,$p' "$OUT/pytest.txt" \
        | grep -E "^(FAILED|ERROR)|\] (FAILED|ERROR) |^=+ .*(passed|failed|error)" | head -30
fi
if step "gpunet train --device cuda" "${TRAIN_S:-60}"; then
    timeout -k 10 "$S" python3 -m gpunet.cli train --device cuda > "$OUT/train.txt" 2>&1
    echo "train rc=$?"; tail -4 "$OUT/train.txt"
fi
if step "gpunet bench --device cuda --compare torch --quick" "${BENCH_S:-120}"; then
    timeout -k 10 "$S" python3 -m gpunet.cli bench --device cuda --compare torch --quick \
        --no-progress --json "$OUT/bench.json" > "$OUT/bench.txt" 2>&1
    echo "bench rc=$?"; tail -25 "$OUT/bench.txt"
fi
echo "== gpu_check output (end)"
tail -c 4000 "$OUT/gpu_check.txt" 2>/dev/null
# last, so that the call's output tail holds it: each failed/errored test with its error
# lines, and the tests running when a pytest call was cut off
echo "== failures.txt"
if [ -f "$OUT/failures.txt" ]; then
    grep -E "^==== |^  tests/|^E  " "$OUT/failures.txt" | cut -c1-300 | head -100
fi
echo "== $(( ${TOTAL_S:-480} - (END - $(date +%s)) )) s in all"
