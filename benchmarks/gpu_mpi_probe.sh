#!/usr/bin/env bash
# Where does an mpiexec launch stop on this machine? Plain mpi4py (no gpunet) under the
# launcher the tests pick, with each Open MPI setting that commonly unblocks a container,
# 10 s each; then one gpunet worker of tests/distributed_worker.py on 2 ranks (CPU) and the
# NCCL one on 1 rank. Written for the GPU machine, where the distributed tests hung
# (2026-11-30); runs anywhere mpi4py is.
#
#   bash benchmarks/gpu_mpi_probe.sh > mpi.txt 2>&1
set -u
py=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} OMP_NUM_THREADS=1
echo "== launchers"; which -a mpiexec mpirun prterun 2>&1
$py -c "import mpi4py; print('mpi4py', mpi4py.__version__, mpi4py.__file__); print(mpi4py.get_config())" 2>&1
$py -c "from mpi4py import MPI; print(MPI.Get_library_version().strip()); print(MPI.get_vendor())" 2>&1 | head -4
MPIEXEC=$($py -c "import sys; sys.path.insert(0, 'tests'); import test_distributed as T; print(T.mpiexec())")
echo "tests' launcher: $MPIEXEC"; "$MPIEXEC" --version 2>&1 | head -3
echo "== host"; hostname; head -5 /etc/hosts; ls /sys/class/net 2>&1
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
command -v ssh >/dev/null || command -v rsh >/dev/null || export OMPI_MCA_plm_rsh_agent=sh
prog='from mpi4py import MPI; c = MPI.COMM_WORLD; print("rank", c.rank, "of", c.size, "sum", c.allreduce(c.rank), flush=True)'
attempt() {
    echo "== $*"; local t0=$(date +%s%N)
    timeout -k 2 "${PROBE_S:-10}" "$@" 2>&1 | tail -8
    echo "rc=${PIPESTATUS[0]} in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
}
attempt $py -c "$prog"
attempt "$MPIEXEC" -n 1 --oversubscribe $py -c "$prog"
attempt "$MPIEXEC" -n 2 --oversubscribe $py -c "$prog"
attempt "$MPIEXEC" -n 2 --oversubscribe --mca btl self,vader $py -c "$prog"
attempt "$MPIEXEC" -n 2 --oversubscribe --mca btl self,sm $py -c "$prog"
attempt "$MPIEXEC" -n 2 --oversubscribe --mca btl self,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo $py -c "$prog"
attempt env PMIX_MCA_gds=hash PMIX_MCA_psec=native "$MPIEXEC" -n 2 --oversubscribe $py -c "$prog"
d=$(mktemp -d)
PROBE_S=25 attempt "$MPIEXEC" -n 2 --oversubscribe $py tests/distributed_worker.py mlp "$d"
PROBE_S=25 attempt "$MPIEXEC" -n 1 --oversubscribe $py tests/distributed_worker.py nccl "$d"
ls "$d"
