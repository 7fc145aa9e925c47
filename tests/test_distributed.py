"""gpunet.distributed under ``mpiexec -n 2`` (launched here; skipped without mpi4py and
mpiexec, i.e. without the ``mpi`` extra), against one-process references computed in this
process; and the one-process world, which needs no MPI."""
from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import types

import numpy
import pytest

import gpunet
from gpunet import distributed as D

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import distributed_worker as W  # noqa: E402


def mpiexec():
    """The mpiexec of this interpreter's environment (the mpich wheel puts it beside
    python), else the one on PATH; None when mpi4py or mpiexec is missing.
    ``GPUNET_TEST_MPIEXEC`` names another launcher, or with ``none`` skips the tests that
    launch one (a machine where the launch hangs: the GPU machine's Open MPI, 2026-11-30)."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    chosen = os.environ.get("GPUNET_TEST_MPIEXEC")
    if chosen:
        return None if chosen.lower() == "none" else shutil.which(chosen)
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.path.exists(here) else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(mpiexec() is None, reason="needs mpi4py and mpiexec (the mpi extra)")


@functools.lru_cache(maxsize=None)
def is_open_mpi(exe) -> bool:
    """Whether ``exe`` is Open MPI's launcher: ``mpiexec --version`` says "(Open MPI) x.y"
    (older ones "(OpenRTE)"); MPICH's says "HYDRA build details"."""
    try:
        p = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(s in p.stdout + p.stderr for s in ("Open MPI", "OpenRTE"))


def mpiexec_argv(exe, n, env):
    """``[exe, -n, n, ...]`` for this machine, setting in ``env`` what the launch needs.
    Open MPI refuses to start as root (a container's user) unless OMPI_ALLOW_RUN_AS_ROOT and
    OMPI_ALLOW_RUN_AS_ROOT_CONFIRM are 1 (MPICH ignores them), refuses more processes
    than it counts slots (cores) unless told --oversubscribe (MPICH oversubscribes freely,
    and would reject the flag), and without ssh or rsh on the PATH needs an agent named."""
    argv = [exe, "-n", str(n)]
    if is_open_mpi(exe):
        argv.append("--oversubscribe")
        if not (shutil.which("ssh") or shutil.which("rsh")):
            # Open MPI 4 refuses to start even on one node when its remote-launch agent is
            # missing (a container without ssh, as on the GPU machine); any program that
            # exists does, since a local launch never runs it (open-mpi/ompi#12386)
            env["OMPI_MCA_plm_rsh_agent"] = "sh"
    if os.geteuid() == 0:
        env["OMPI_ALLOW_RUN_AS_ROOT"] = env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] = "1"
    return argv


def launch(args, n=2, timeout=120):
    """Run ``mpiexec -n n python args...`` from the repo root; returns (CompletedProcess, seconds)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[v] = "1"                  # two processes on a small machine: one BLAS thread each
    for v in [k for k in env if k.startswith(("PMI_", "PMIX_", "OMPI_")) or k == "MPI_LOCALRANKID"]:
        del env[v]                     # a test run under mpiexec itself must not leak its world
    argv = mpiexec_argv(mpiexec(), n, env)
    t0 = time.perf_counter()
    # a session of its own: past the timeout the launcher and every process it started
    # are killed, so that a run hung in a collective fails the test and leaves nothing behind
    with subprocess.Popen([*argv, sys.executable, *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True) as p:
        previous = _kill_on_sigterm(p)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(p)
            out, err = p.communicate()
            pytest.fail(f"mpiexec {' '.join(args)} ran past {timeout} s (killed): a process waiting "
                        f"in a collective?\n{out}\n{err}")
        except BaseException:
            # pytest-timeout's limit (its pytest.fail is raised here), ^C, SIGTERM made an
            # exception: kill the launch before Popen's exit waits for it, which would last as
            # long as the hang. Two launcher tests hung past pytest's --timeout in GPU run 4
            # (2026-11-30) and took the rest of the run's report with them.
            _killpg(p)
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
    r = subprocess.CompletedProcess(p.args, p.returncode, out, err)
    return r, time.perf_counter() - t0


def _killpg(p):
    """SIGKILL to the launch: its process group and every process descended from ``p``
    (found in /proc before any is killed, while the parent links hold). A launcher may
    start ranks outside its group: MPICH's hydra starts each rank in a session of its own
    (setsid), and a rank may start processes of its own."""
    tree = _descendants(p.pid)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in tree:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass                          # gone meanwhile


def _descendants(root):
    """The pids of ``root``'s descendants, from /proc (none where there is no /proc)."""
    children = {}
    try:
        pids = [int(d) for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.append(child)
            todo.append(child)
    return found


def _kill_on_sigterm(p):
    """While launch() waits for ``p``: a SIGTERM to this process kills the launch too
    (``_killpg``), then ends this process as SIGTERM does (or as the handler before this one
    does). A time limit's SIGTERM (timeout(1), sent to pytest's process group) does not
    reach a launch, whose session is its own: its ranks, hung in a collective, would outlive
    the run and spin through the GPU session's next steps. Returns the handler to restore
    (None off the main thread, where no handler can be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigterm(signum, frame):
        _killpg(p)
        signal.signal(signal.SIGTERM, previous)
        os.kill(os.getpid(), signal.SIGTERM)
    previous = signal.signal(signal.SIGTERM, on_sigterm) or signal.SIG_DFL
    return previous


def run_worker(scenario, tmp_path, n=2, timeout=120):
    r, _ = launch([os.path.join(HERE, "distributed_worker.py"), scenario, str(tmp_path)], n, timeout)
    assert r.returncode == 0, f"mpiexec failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
    return [dict(numpy.load(tmp_path / f"{scenario}.{rank}.npz")) for rank in range(n)]


def assert_same_model(got, ref, rtol=1e-10):
    """Every array within ``rtol`` of the reference, relative to the largest parameter
    magnitude of the model (a bias in front of a BatchNorm has an exact gradient of zero:
    its values are rounding noise of order 1e-17 and get no elementwise relative test)."""
    scale = max(float(numpy.max(numpy.abs(v))) for v in ref.values() if v.dtype.kind == "f")
    for k, v in ref.items():
        if v.dtype.kind == "f":
            numpy.testing.assert_allclose(got[k], v, rtol=rtol, atol=rtol * scale, err_msg=k)
        else:
            numpy.testing.assert_array_equal(got[k], v, err_msg=k)


# -- two processes ---------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("kind", ["mlp", "bn", "convbn", "dropout"])
def test_two_processes_match_one_process_on_the_global_batch(kind, tmp_path):
    """2 processes × batch 32, 20 SGD-momentum steps (float64), different initial weights
    until broadcast_parameters, vs 1 process × batch 64 with plain layers (BatchNorm for
    SyncBatchNorm, the same Dropout seed) and a plain SGD: the same parameters and buffers
    to 1e-10. With dropout this holds because each process draws its rank's stretch of the
    mask stream (Dropout.shard); with a shared mask it would not."""
    ref = W.reference(kind)
    ranks = run_worker(kind, tmp_path)
    for rank, got in enumerate(ranks):
        assert int(got["info.size"]) == 2
        assert int(got["info.launched"]) >= W.STEPS     # the buckets started during backward
        assert_same_model(got, ref)


@needs_mpi
@pytest.mark.parametrize("how", ["time limit", "SIGTERM", "time limit, a rank's process in a session of its own"])
def test_a_launch_interrupted_ends_its_processes(tmp_path, how):
    """A launch whose 2 ranks sleep 60 s, in a process of its own, interrupted once both run.

    time limit: pytest-timeout (its signal method) ends a test by raising in it, here while
    launch() waits for mpiexec. Before, Popen's exit then waited for the launch, whose
    processes their own session kept from anything else that ended: the test hung as long
    as the launch did (GPU run 4's two launcher tests that hung past --timeout 100 until the
    call's limit). A stand-in: SIGALRM raising, as pytest-timeout's does. The exception now
    comes within seconds of the signal.

    SIGTERM: timeout(1)'s signal to the process group of pytest (GPU sessions run pytest
    under it) did not reach the launch's session; the ranks outlived the run.

    A rank's process in a session of its own (as MPICH's launcher starts each rank; here
    each rank forks one that calls setsid and sleeps): the launch's process group, all that
    was killed, did not hold it, and it slept on, orphaned. Every process descended from
    the launcher is killed now.

    Either way no rank is left."""
    rank = ("import os, sys, time\n"
            + ("if os.fork() == 0:\n    os.setsid()\nelse:\n    time.sleep(60)\n    sys.exit()\n"
               if how.endswith("own") else "")
            + "open(os.path.join(sys.argv[1], str(os.getpid())), 'w').close()\ntime.sleep(60)\n")
    script = f"""if True:
        import os, signal, sys, threading, time
        sys.path.insert(0, {HERE!r})
        import test_distributed as TD

        class Limit(Exception):
            pass

        def on_alarm(*a):
            raise Limit()

        fired = []

        def limit_once_started():
            t_end = time.monotonic() + 60
            while len(os.listdir({str(tmp_path)!r})) < 2 and time.monotonic() < t_end:
                time.sleep(0.05)
            time.sleep(0.5)                  # launch() is waiting by now
            fired.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGALRM)
        if {how.startswith("time limit")!r}:
            signal.signal(signal.SIGALRM, on_alarm)
            threading.Thread(target=limit_once_started, daemon=True).start()
        try:
            TD.launch(["-c", {rank!r}, {str(tmp_path)!r}], n=2, timeout=100)
        except Limit:
            print(f"interrupted; launch() returned {{time.monotonic() - fired[0]:.1f}} s after the signal")
        """
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as p:
        try:
            if how == "SIGTERM":
                t_end = time.monotonic() + 60
                while len(list(tmp_path.iterdir())) < 2 and time.monotonic() < t_end:
                    time.sleep(0.1)
                time.sleep(0.5)                # launch() is waiting by now
                os.killpg(p.pid, signal.SIGTERM)   # as timeout(1) signals its child's group
            out, err = p.communicate(timeout=150)
        finally:
            _killpg(p)
    ranks = [int(f.name) for f in tmp_path.iterdir()]
    assert len(ranks) == 2, (ranks, out, err)      # both started before the interruption
    if how.startswith("time limit"):
        assert p.returncode == 0, out + err
        seconds = float(out.split("returned ")[1].split(" s")[0])
        assert seconds < 20, out       # 60 s (the ranks' sleep) before: Popen waited for them
    else:
        assert p.returncode == -signal.SIGTERM, (p.returncode, out, err)
    for _ in range(50):
        alive = [pid for pid in ranks if _alive(pid)]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, f"ranks {alive} still running after launch() was interrupted ({how})"


def _alive(pid):
    """Whether process ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _sim_available():
    try:
        import gpunet.sim
        return bool(gpunet.sim.compiler())
    except ImportError:
        return False


@needs_mpi
@pytest.mark.skipif(not _sim_available(), reason="the sim device needs a C++ compiler")
def test_two_processes_on_the_sim_device(tmp_path):
    """Device arrays that are not CuPy's (the sim) are reduced through the host: the
    SyncBatchNorm model on the sim, 2 × 32, against BatchNorm on NumPy with batch 64."""
    ref = W.reference("bn")
    for got in run_worker("sim", tmp_path):
        assert_same_model(got, ref, rtol=1e-9)


@needs_mpi
def test_more_processes_than_gpus_are_refused_on_every_rank(tmp_path):
    """Found on the one-GPU H200 machine (2026-11-30), where the distributed tests hung: two
    processes asking for CUDA, rank 1 raised (no GPU of its own) while rank 0 went on into
    the NCCL id's broadcast and waited there for good. Every rank now raises the same error
    (a stand-in CuPy that sees one GPU here; the run would pass the test's timeout before)."""
    r, _ = launch([os.path.join(HERE, "distributed_worker.py"), "gpus", str(tmp_path)], timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    for rank in (0, 1):
        got = (tmp_path / f"gpus.{rank}.txt").read_text()
        assert got.startswith("gpunet.distributed.init: this node has 1 GPU(s) for its 2 processes: with "
                              "CUDA each process needs a GPU of its own; start at most"), got
        assert "init(device='cpu') (gpunet train --distributed --device cpu)" in got


class _HostArray(numpy.ndarray):
    """A NumPy array with CuPy's ``.data.ptr`` (a stand-in device pointer)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=id(self))


def test_the_nccl_scenario_gives_the_values_its_gpu_test_expects(monkeypatch):
    """tests/test_cuda_gpu.py::test_nccl_calls_run_on_one_gpu failed in GPU run 4's pytest
    (traceback lost) while the same worker under ``mpiexec -n 1`` ran (its values were not
    compared there). The worker made its arrays with ``cupy.arange(n, dtype=dt)``, which for
    uint8 wraps at 256 as NumPy's does (CuPy's kernel computes ``start + i * step`` in the
    dtype), while the test expects ``(numpy.arange(n) % 97 + 1).astype(dt)``: 1 against 63
    at index 256. Here the worker's ``nccl_calls`` runs in this process on a stand-in CuPy
    made of NumPy (same arange) and a Communicator whose NCCL is one rank (the identity,
    as on the one-GPU machine), and its outputs must be the GPU test's expected values; the
    stand-in NCCL also sees each call with the dtype code of its array."""
    calls = []
    event = types.SimpleNamespace(done=True)
    stream = types.SimpleNamespace(ptr=7, record=lambda: event, wait_event=lambda e: None)
    codes = {dt: k for k, dt in enumerate(("float16", "float32", "float64", "int32", "int64", "uint8"))}
    nccl = types.SimpleNamespace(NCCL_SUM=0, NCCL_MAX=1, NCCL_MIN=2,
                                 **{f"NCCL_{dt.upper()}": k for dt, k in codes.items()})
    cuda = types.SimpleNamespace(nccl=nccl, get_current_stream=lambda: stream,
                                 Stream=lambda non_blocking=False: stream)
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    cupy.arange = lambda *a, **k: numpy.arange(*a, **k).view(_HostArray)
    cupy.asarray = lambda a: numpy.array(a).view(_HostArray)
    cupy.asnumpy = lambda a: numpy.array(a)
    for name, module in (("cupy", cupy), ("cupy.cuda", cuda), ("cupy.cuda.nccl", nccl)):
        monkeypatch.setitem(sys.modules, name, module)
    one_rank = types.SimpleNamespace(
        allReduce=lambda src, dst, n, dtype, op, s: calls.append(("allReduce", n, dtype, op, s)),
        bcast=lambda buf, n, dtype, root, s: calls.append(("bcast", n, dtype, root, s)))
    world = types.SimpleNamespace(Get_rank=lambda: 0, Get_size=lambda: 1)
    comm = D.comm.Communicator(world, device="cuda:0", nccl=one_rank)
    got, _ = W.nccl_calls(comm)
    for dt in codes:        # the expected values of test_cuda_gpu.py::test_nccl_calls_run_on_one_gpu
        numpy.testing.assert_array_equal(got["allreduce." + dt], (numpy.arange(1000) % 97 + 1).astype(dt),
                                         err_msg=dt)
        numpy.testing.assert_array_equal(got["bcast." + dt], (numpy.arange(300) % 13).astype(dt), err_msg=dt)
    assert calls == [c for k in codes.values() for c in (("allReduce", 1000, k, 0, 7), ("bcast", 300, k, 0, 7))]


@needs_mpi
def test_first_bucket_allreduce_starts_before_backward_ends(tmp_path):
    """Call order recorded by DistributedOptimizer.trace: the all-reduce of bucket 0 (the
    last layer's gradients) starts before the backward has produced the first layer's
    weight gradient (params[0]) and before the backward returns."""
    for got in run_worker("overlap", tmp_path):
        trace = [tuple(t) for t in got["trace"].tolist()]
        assert int(got["buckets"]) >= 2
        launch0 = trace.index((1, 0))
        assert launch0 < trace.index((0, 0)) < trace.index((2, -1))
        launches = [i for i, t in enumerate(trace) if t[0] == 1]
        assert len(launches) == int(got["buckets"])            # every bucket during backward
        assert max(launches) < trace.index((2, -1))


@needs_mpi
def test_an_exception_in_one_process_ends_all_of_them(tmp_path):
    """Rank 1 raises at step 3 while rank 0 goes on into the next all-reduce: both exit
    non-zero within 30 s, the error on stderr."""
    r, seconds = launch([os.path.join(HERE, "distributed_worker.py"), "fail", str(tmp_path)], timeout=90)
    assert r.returncode != 0
    assert seconds < 30
    assert "injected failure at step 3 on rank 1" in r.stderr
    assert not list(tmp_path.glob("fail.*.npz"))


# -- one process, no MPI ------------------------------------------------------------------------------
@pytest.mark.parametrize("flavour, version", [
    ("openmpi", "mpiexec (Open MPI) 4.1.6\n\nReport bugs to https://www.open-mpi.org/community/help/"),
    ("openmpi", "mpirun (Open MPI) 5.0.3"),
    ("mpich", "HYDRA build details:\n    Version:                                 4.2.0")])
@pytest.mark.parametrize("uid", [0, 1000])
@pytest.mark.parametrize("ssh", [True, False])
def test_mpiexec_command_suits_the_flavour_and_the_user(tmp_path, monkeypatch, flavour, version, uid,
                                                        ssh):
    """Open MPI (as found on the GPU machine, run as root there, without ssh) needs the
    run-as-root variables, --oversubscribe and, without ssh/rsh, a launch agent named; MPICH
    gets none of these. A fake launcher that only prints its version stands for each."""
    exe = tmp_path / "mpiexec"
    exe.write_text(f"#!/bin/sh\ncat <<'EOF'\n{version}\nEOF\n")
    exe.chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: uid)
    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: (
        f"/usr/bin/{name}" if ssh else None) if name in ("ssh", "rsh") else which(name, *a, **k))
    env = {}
    argv = mpiexec_argv(str(exe), 2, env)
    assert argv[:3] == [str(exe), "-n", "2"]
    assert ("--oversubscribe" in argv) == (flavour == "openmpi") and len(argv) <= 4
    want = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"} if uid == 0 else {}
    if flavour == "openmpi" and not ssh:
        want["OMPI_MCA_plm_rsh_agent"] = "sh"
    assert env == want


def test_init_without_a_launcher_is_a_world_of_one(monkeypatch):
    for v in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALRANKID"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(D.comm, "_WORLD", None)
    comm = D.init(device="cpu")
    assert (comm.rank, comm.size, comm.local_rank, comm.backend, comm.device) == (0, 1, 0, "self", "cpu")
    assert D.init() is comm
    x = numpy.arange(6.0).reshape(2, 3)
    numpy.testing.assert_array_equal(comm.allreduce(x), x)
    numpy.testing.assert_array_equal(comm.allreduce(x, "mean"), x)
    assert comm.broadcast(x) is x
    numpy.testing.assert_array_equal(comm.allgather(x), x[None])
    h = comm.iallreduce(x.copy())
    assert h.test() and h.wait() is h.array
    assert comm.bcast_object({"a": 1}) == {"a": 1} and comm.allgather_object(3) == [3]
    with pytest.raises(ValueError, match="op"):
        comm.allreduce(x, "prod")
    with pytest.raises(ValueError, match="device"):
        monkeypatch.setattr(D.comm, "_WORLD", None)
        D.init(device="tpu")


def one_process_comm():
    return D.Communicator()


def test_size_one_distributed_optimizer_is_the_optimizer():
    X, y = W.data()
    a, b = W.model("mlp", seed=3), W.model("mlp", seed=3)
    comm = one_process_comm()
    opt = D.DistributedOptimizer(gpunet.optim.SGD(a.parameters(), lr=0.05, momentum=0.9), comm)
    W.train(a, opt, D.shard(X, y, comm, batch_size=64, seed=0), 7)
    W.train(b, gpunet.optim.SGD(b.parameters(), lr=0.05, momentum=0.9),
            gpunet.DataLoader(X, y, batch_size=64, shuffle=True, seed=0), 7)
    for k, v in b.state_dict().items():
        numpy.testing.assert_array_equal(a.state_dict()[k], v)
    assert opt.state_dict().keys() == opt.optimizer.state_dict().keys()
    opt.lr = 0.5                                    # schedules set the wrapped optimizer's rate
    assert opt.optimizer.lr == 0.5


def test_distributed_optimizer_rejects_bad_arguments():
    net = W.model("mlp")
    sgd = gpunet.optim.SGD(net.parameters())
    with pytest.raises(TypeError, match="DistributedOptimizer.*optimizer"):
        D.DistributedOptimizer(object(), one_process_comm())
    with pytest.raises(TypeError, match="DistributedOptimizer.*communicator"):
        D.DistributedOptimizer(sgd, object())
    with pytest.raises(ValueError, match="bucket_mb"):
        D.DistributedOptimizer(sgd, one_process_comm(), bucket_mb=0)
    with pytest.raises(ValueError, match="compression"):
        D.DistributedOptimizer(sgd, one_process_comm(), compression="int8")


def test_distributed_arguments_name_the_function_the_argument_and_the_value(monkeypatch):
    """The public API's arguments through gpunet._args: a wrong type is a TypeError, a value
    out of range a ValueError, each naming the function, the argument and the value. Before,
    bucket_mb="4" was a ValueError and numpy.float32(4) was refused, a root was never checked
    (a world of one ignored it; MPI failed deep inside mpi4py), shard(X, y, None) gave every
    process all of the data, and SyncBatchNorm(comm="x") failed at its first forward."""
    net = W.model("mlp")
    sgd = gpunet.optim.SGD(net.parameters())
    comm = one_process_comm()
    X, y = W.data()
    cases = [
        (TypeError, "DistributedOptimizer: expected bucket_mb to be a real number, got '4' (str)",
         lambda: D.DistributedOptimizer(sgd, comm, bucket_mb="4")),
        (TypeError, "DistributedOptimizer: expected bucket_mb to be a real number, got True (bool)",
         lambda: D.DistributedOptimizer(sgd, comm, bucket_mb=True)),
        (ValueError, "DistributedOptimizer: expected bucket_mb > 0, got nan",
         lambda: D.DistributedOptimizer(sgd, comm, bucket_mb=float("nan"))),
        (ValueError, "DistributedOptimizer: expected bucket_mb to be finite, got inf",
         lambda: D.DistributedOptimizer(sgd, comm, bucket_mb=float("inf"))),
        (TypeError, "broadcast_parameters: expected root to be an int >= 0, got '0' (str)",
         lambda: D.broadcast_parameters(net, comm, root="0")),
        (ValueError, "broadcast_parameters: expected root to be a rank in [0, 1), got 1",
         lambda: D.broadcast_parameters(net, comm, root=1)),
        (TypeError, "broadcast_parameters: expected comm to be a gpunet.distributed communicator "
                    "(gpunet.distributed.init()), got None",
         lambda: D.broadcast_parameters(net, None)),
        (ValueError, "Communicator.broadcast: expected root to be an int >= 0, got -1",
         lambda: comm.broadcast(numpy.zeros(3), root=-1)),
        (TypeError, "Communicator.bcast_object: expected root to be an int >= 0, got 0.0 (float)",
         lambda: comm.bcast_object({}, root=0.0)),
        (TypeError, "Communicator.abort: expected code to be an int, got '1' (str)",
         lambda: comm.abort("1")),
        (ValueError, "Communicator: expected local_size to be a positive int, got 0",
         lambda: D.Communicator(local_size=0)),
        (TypeError, "shard: expected comm to be a gpunet.distributed communicator "
                    "(gpunet.distributed.init()), got None",
         lambda: D.shard(X, y, None)),
        (TypeError, "SyncBatchNorm: expected comm to be None or a gpunet.distributed communicator "
                    "(gpunet.distributed.init()), got 'x' (str)",
         lambda: D.SyncBatchNorm(4, comm="x")),
        (TypeError, "gpunet.distributed.init: expected device 'auto', 'cpu' or 'cuda', got None",
         lambda: D.init(device=None)),
    ]
    monkeypatch.setattr(D.comm, "_WORLD", None)
    for exc, message, call in cases:
        with pytest.raises(exc) as e:
            call()
        assert str(e.value) == message
    opt = D.DistributedOptimizer(sgd, comm, bucket_mb=numpy.float32(0.5))
    assert opt.bucket_mb == 0.5 and type(opt.bucket_mb) is float
    assert D.broadcast_parameters(net, comm, root=numpy.int64(0)) is net
    assert comm.bcast_object(3, root=numpy.int32(0)) == 3


class FakeComm:
    """A rank of a world of ``size`` for index arithmetic (no collectives)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.parametrize("n,size,batch,drop_last", [(320, 2, 32, False), (103, 3, 8, False),
                                                    (103, 3, 8, True), (7, 4, 5, False)])
def test_shards_are_disjoint_equal_and_stack_into_the_global_batches(n, size, batch, drop_last):
    X = numpy.arange(n, dtype=numpy.float64)[:, None]
    y = numpy.arange(n)
    loaders = [D.shard(X, y, FakeComm(r, size), seed=5, batch_size=batch, drop_last=drop_last)
               for r in range(size)]
    single = gpunet.DataLoader(X, y, batch_size=size * batch, shuffle=True, seed=5, drop_last=drop_last)
    for epoch in range(3):
        per_rank = [[yb for _, yb in ld] for ld in loaders]
        assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(single)
        order = single.order(epoch)
        padded = order if drop_last or n % size == 0 else numpy.concatenate([order, order[:size - n % size]])
        seen = []
        for step, ref in enumerate(single):
            parts = [per_rank[r][step] for r in range(size)]
            assert len({p.size for p in parts}) == 1                       # equal shares
            stacked = numpy.concatenate(parts)
            seen.append(stacked)
            want = padded[step * size * batch:(step + 1) * size * batch]
            numpy.testing.assert_array_equal(stacked, want)                # the global batch
            numpy.testing.assert_array_equal(stacked[:ref[1].size], ref[1])
        seen = numpy.concatenate(seen)
        if not drop_last:
            assert sorted(set(seen.tolist())) == list(range(n))            # every sample
            assert seen.size == n + (-n) % size                            # padding only
        shares = [numpy.concatenate(b) for b in per_rank]
        if n % size == 0 or drop_last:
            assert len(set(numpy.concatenate(shares).tolist())) == sum(s.size for s in shares)
    assert loaders[0].order(0).tolist() != loaders[0].order(1).tolist()    # reshuffled per epoch


def test_sync_batchnorm_in_a_world_of_one_is_batchnorm():
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((16, 3, 4, 4))
    dy = rng.standard_normal(x.shape)
    bn = gpunet.layers.BatchNorm(3).to(dtype=numpy.float64)
    sbn = D.SyncBatchNorm(3, comm=one_process_comm()).to(dtype=numpy.float64)
    sbn.gamma.data[...] = bn.gamma.data[...] = rng.uniform(0.5, 1.5, 3)
    numpy.testing.assert_allclose(sbn(x), bn(x), rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(sbn.backward(dy), bn.backward(dy), rtol=1e-10, atol=1e-12)
    for a, b in ((sbn.gamma.grad, bn.gamma.grad), (sbn.beta.grad, bn.beta.grad),
                 (sbn.running_mean, bn.running_mean), (sbn.running_var, bn.running_var)):
        numpy.testing.assert_allclose(a, b, rtol=1e-12)
    sbn.eval(), bn.eval()
    numpy.testing.assert_allclose(sbn(x), bn(x), rtol=1e-12)
    gpunet.gradcheck(D.SyncBatchNorm(3, comm=one_process_comm()).to(dtype=numpy.float64), x[:4])


def test_sync_batchnorm_of_a_float16_model_keeps_float32_statistics():
    """Found by the dtype audit: SyncBatchNorm in a model cast to float16 (model.to(dtype=
    numpy.float16)) summed the batch and counted its values in float16, where BatchNorm
    computes the statistics in float32: a batch of (64, 4, 16, 16) around 5 (a sum of
    ~82,000, past float16's 65504) gave NaN outputs and inf running means, (128, 4, 32, 32)
    (a count of 131,072) an OverflowError. In a world of one it is BatchNorm again, bit for
    bit on the CPU, with float16 outputs, gradients and buffers."""
    rng = numpy.random.default_rng(0)
    for shape in ((64, 4, 16, 16), (128, 4, 32, 32)):
        x = (rng.standard_normal(shape) * 3 + 5).astype(numpy.float16)
        dy = rng.standard_normal(shape).astype(numpy.float16)
        bn = gpunet.layers.BatchNorm(4).to(dtype=numpy.float16)
        sbn = D.SyncBatchNorm(4, comm=one_process_comm()).to(dtype=numpy.float16)
        y = sbn(x)
        assert y.dtype == numpy.float16 and numpy.isfinite(y).all()
        numpy.testing.assert_array_equal(y, bn(x))
        numpy.testing.assert_array_equal(sbn.backward(dy), bn.backward(dy))
        for a, b in ((sbn.gamma.grad, bn.gamma.grad), (sbn.beta.grad, bn.beta.grad),
                     (sbn.running_mean, bn.running_mean), (sbn.running_var, bn.running_var)):
            assert a.dtype == numpy.float16
            numpy.testing.assert_array_equal(a, b)


def test_sync_batchnorm_convert_keeps_parameters_and_buffers():
    net = gpunet.layers.Sequential(gpunet.layers.Dense(4, 3), gpunet.layers.BatchNorm(3))
    gamma, rm = net[1].gamma, net[1].running_mean
    D.SyncBatchNorm.convert(net, one_process_comm())
    assert isinstance(net[1], D.SyncBatchNorm)
    assert net[1].gamma is gamma and net[1].running_mean is rm
    assert list(net.state_dict()) == ["0.weight", "0.bias", "1.gamma", "1.beta", "1.running_mean",
                                      "1.running_var"]


def test_dropout_shard_draws_the_next_stretch_of_the_stream(xp, device):
    """shard r on n elements = elements [r n, (r+1) n) of the mask one process draws for
    the stacked batch: forward and backward, on every backend (the kernel takes the
    offset folded into k1) against NumPy."""
    x = xp.ones((8, 5), dtype=xp.float32)
    whole = gpunet.layers.Dropout(0.4, seed=11)
    parts = [gpunet.layers.Dropout(0.4, seed=11) for _ in range(2)]
    for r, d in enumerate(parts):
        d.shard = r
    y = gpunet.to_numpy(whole(xp.ones((16, 5), dtype=xp.float32)))
    ys = [gpunet.to_numpy(d(x)) for d in parts]
    numpy.testing.assert_array_equal(numpy.concatenate(ys), y)
    numpy.testing.assert_array_equal(
        numpy.concatenate([gpunet.to_numpy(d.backward(x)) for d in parts]),
        gpunet.to_numpy(whole.backward(xp.ones((16, 5), dtype=xp.float32))))
    assert not numpy.array_equal(ys[0], ys[1])
    host = gpunet.layers.Dropout(0.4, seed=11)
    host.shard = 1
    numpy.testing.assert_array_equal(host(numpy.ones((8, 5), numpy.float32)), ys[1])


def test_broadcast_parameters_in_a_world_of_one_sets_dropout_shards():
    net = gpunet.layers.Sequential(gpunet.layers.Dense(3, 3), gpunet.layers.Dropout(0.5))
    before = net.state_dict()
    assert D.broadcast_parameters(net, one_process_comm()) is net
    for k, v in before.items():
        numpy.testing.assert_array_equal(net.state_dict()[k], v)
    assert net[1].shard == 0
    with pytest.raises(TypeError, match="broadcast_parameters"):
        D.broadcast_parameters(object(), one_process_comm())


def test_post_accumulate_grad_hook():
    p = gpunet.layers.Parameter(numpy.zeros(3))
    seen = []
    h = p.register_post_accumulate_grad_hook(lambda q: seen.append(q.grad.copy()))
    p.accumulate(numpy.ones(3))
    p.accumulate(numpy.ones(3))
    h.remove()
    p.accumulate(numpy.ones(3))
    assert [s.tolist() for s in seen] == [[1, 1, 1], [2, 2, 2]]
    with pytest.raises(TypeError, match="callable"):
        p.register_post_accumulate_grad_hook(3)


# -- Trainer(comm=...) ------------------------------------------------------------------------------
@needs_mpi
def test_checkpoint_of_two_processes_resumes_on_one(tmp_path):
    """Trainer(comm=) on 2 processes × 32 (dropout, SGD momentum), ModelCheckpoint after
    epochs 1 and 2 (written by rank 0 only), then epoch 3 in the same processes: the
    uninterrupted run. One process loads the epoch-2 checkpoint and trains epoch 3 with
    batch 64: the same parameters to 1e-10; the 2-process logs (means over both processes'
    samples, identical on both) equal a 1-process run's with batch 64."""
    ranks = run_worker("resume", tmp_path)
    assert [int(g["info.saves"]) for g in ranks] == [2, 0]
    for k in ("history.loss", "history.val_loss", "history.accuracy", "history.val_accuracy"):
        numpy.testing.assert_array_equal(ranks[0][k], ranks[1][k])
    comm = one_process_comm()
    net, _, h = W.trainer(comm, str(tmp_path / "ckpt.npz"), 3, initial_epoch=2)
    ref = {k: v for k, v in net.state_dict().items()}
    for got in ranks:
        assert_same_model({k: got[k] for k in ref}, ref)
    _, _, full = W.trainer(comm, None, 3)                     # one process from the start
    for k in ("loss", "val_loss", "accuracy", "val_accuracy"):
        numpy.testing.assert_allclose(ranks[0]["history." + k], full[k], rtol=1e-10)


class LoopbackComm:
    """Rank ``rank`` of a world of 2 whose other process always contributes the same as
    this one (sums double): enough to run a Trainer in-process as a non-root rank."""

    backend, device, local_rank = "fake", "cpu", 0

    def __init__(self, rank=1):
        self.rank, self.size = rank, 2

    def iallreduce(self, buf, op="sum"):
        buf *= 2.0
        return D.Handle(buf)

    def allreduce(self, x, op="sum"):
        return self.iallreduce(x.copy(), op).wait()

    def broadcast(self, x, root=0):
        return x

    def bcast_object(self, obj, root=0):
        return obj


def test_a_dropped_distributed_optimizer_leaves_no_hooks_that_keep_it():
    """A DistributedOptimizer made again over the same parameters (a notebook cell run again,
    a sweep over learning rates on one model): the one dropped used to stay registered on
    every parameter (its bound method in the hooks), so each new wrapper kept all the old
    ones alive, with their buffers, and ran their hooks at every backward. The hooks now
    hold the wrapper weakly and go with it, as a dropped torch DistributedDataParallel's do;
    the wrapper in use still averages (the loopback world doubles: the mean is the grad)."""
    import gc
    import weakref
    comm = LoopbackComm(rank=1)
    net = W.model("mlp")
    X, y = W.data()
    xb, yb = X[:16], y[:16]
    loss_fn = gpunet.SoftmaxCrossEntropy()
    dropped = []
    for _ in range(5):
        opt = D.DistributedOptimizer(gpunet.optim.SGD(net.parameters(), lr=0.0), comm, bucket_mb=0.001)
        dropped.append(weakref.ref(opt))
        loss_fn(net(xb), yb)
        net.zero_grad()
        net.backward(loss_fn.backward())
        opt.step()
        del opt
    gc.collect()
    assert [r() for r in dropped] == [None] * 5
    assert all(not p._hooks for p in net.parameters())
    opt = D.DistributedOptimizer(gpunet.optim.SGD(net.parameters(), lr=0.0), comm, bucket_mb=0.001)
    assert all(len(p._hooks) == 1 for p in net.parameters())
    loss_fn(net(xb), yb)
    net.zero_grad()
    net.backward(loss_fn.backward())
    local = [p.grad.copy() for p in net.parameters()]
    opt.step()
    assert opt.stats["launched"] == len(opt.buckets) > 1
    for p, g in zip(net.parameters(), local):
        numpy.testing.assert_array_equal(p.grad, g)      # (g/2) * 2 is g in binary floating point
    opt.close()
    assert all(not p._hooks for p in net.parameters())


def test_trainer_on_a_non_root_rank_shows_no_bar_and_writes_no_checkpoint(tmp_path, capsys):
    comm = LoopbackComm(rank=1)
    net = W.model("mlp")
    opt = D.DistributedOptimizer(gpunet.optim.SGD(net.parameters(), lr=0.05), comm)
    t = gpunet.Trainer(net, gpunet.SoftmaxCrossEntropy(), opt, comm=comm)
    path = tmp_path / "c.npz"
    h = t.fit(W.data(), val=W.val_data(), epochs=2, batch_size=16,
              callbacks=[gpunet.ModelCheckpoint(str(path), save_best_only=False)])
    assert not path.exists()
    assert "epoch" not in capsys.readouterr().err
    assert len(h["loss"]) == 2 and all(numpy.isfinite(h["loss"]))
    assert opt.stats["steps"] == 2 * len(D.shard(*W.data(), comm, batch_size=16))
    t.comm = None
    assert len(t.evaluate(W.val_data())) == 2


class ThreadWorld:
    """``size`` ranks in threads of this process, with the collectives a Trainer uses.

    The ranks take turns: a rank runs while it holds the world's lock and lets it go only
    while it waits in a collective, so gpunet's module-level state (a backward's depth, the
    layers' output records) sees one rank at a time, as it sees one process. A non-blocking
    all-reduce (a gradient bucket's, started in a backward hook) meets the others only at
    ``wait()``, outside the backward. Sums are in rank order: the same on every rank. A rank
    left waiting ``timeout`` seconds for the others raises ``TimeoutError``, so a rank that
    never comes fails the test instead of hanging it."""

    def __init__(self, size, timeout=30.0):
        self.size, self.timeout = size, timeout
        self.cond = threading.Condition()
        self.slots = [None] * size
        self.arrived = 0
        self.generation = 0
        self.result = None

    def exchange(self, rank, value):
        """Every rank's ``value`` (in rank order), once every rank has given one."""
        gen = self.generation
        self.slots[rank] = value
        self.arrived += 1
        if self.arrived == self.size:
            self.result, self.slots = self.slots, [None] * self.size
            self.arrived = 0
            self.generation += 1
            self.cond.notify_all()
            return self.result
        if not self.cond.wait_for(lambda: self.generation != gen, self.timeout):
            raise TimeoutError(f"rank {rank} waited {self.timeout} s in a collective for the other ranks")
        return self.result

    def run(self, work, timeout=120.0):
        """``work(comm)`` on every rank; per rank, what it returned or raised."""
        out = [None] * self.size

        def one(comm):
            with self.cond:
                try:
                    out[comm.rank] = work(comm)
                except BaseException as e:
                    out[comm.rank] = e
        threads = [threading.Thread(target=one, args=(ThreadComm(self, r),), daemon=True)
                   for r in range(self.size)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in threads), "a rank is still running"
        return out


class _Deferred:
    """A ``ThreadComm`` all-reduce in flight: it runs at ``wait()``."""

    def __init__(self, comm, buf, op):
        self.comm, self.buf, self.op, self.done = comm, buf, op, False

    def test(self):
        return self.done

    def wait(self):
        if not self.done:
            self.done = True
            parts = self.comm.world.exchange(self.comm.rank, numpy.array(self.buf, copy=True))
            total = functools.reduce({"sum": numpy.add, "mean": numpy.add, "max": numpy.maximum,
                                      "min": numpy.minimum}[self.op], parts)
            self.buf[...] = total / self.comm.size if self.op == "mean" else total
        return self.buf


class ThreadComm:
    backend, device, local_rank = "threads", "cpu", 0

    def __init__(self, world, rank):
        self.world, self.rank, self.size = world, rank, world.size

    def iallreduce(self, buf, op="sum"):
        return _Deferred(self, buf, op)

    def allreduce(self, x, op="sum"):
        return self.iallreduce(x.copy(), op).wait()

    def broadcast(self, x, root=0):
        x[...] = self.world.exchange(self.rank, numpy.array(x, copy=True))[root]
        return x

    def bcast_object(self, obj, root=0):
        return self.world.exchange(self.rank, obj)[root]


def _fit_on_ranks(world, train_of, val_of, epochs=1, callbacks_of=lambda r: ()):
    """``fit`` on every rank of ``world`` (the MLP, SGD, rank-specific data and callbacks);
    per rank, the History or the exception, and the optimizer."""
    nets = [W.model("mlp") for _ in range(world.size)]     # built here: manual_seed is global
    opts = {}

    def work(comm):
        opts[comm.rank] = opt = D.DistributedOptimizer(gpunet.optim.SGD(nets[comm.rank].parameters(),
                                                                        lr=0.05), comm)
        t = gpunet.Trainer(nets[comm.rank], gpunet.SoftmaxCrossEntropy(), opt, comm=comm)
        return t.fit(train_of(comm.rank), val=val_of(comm.rank), epochs=epochs, batch_size=16,
                     progress=False, callbacks=callbacks_of(comm.rank))
    return world.run(work), opts


def test_thread_world_reduces_as_one_process():
    """The in-process world the tests below use: 2 ranks × batch 16 for 2 epochs log what
    one process with batch 32 logs (its collectives meet as MPI's do)."""
    got, _ = _fit_on_ranks(ThreadWorld(2), lambda r: W.data(), lambda r: W.val_data(), epochs=2)
    net = W.model("mlp")
    t = gpunet.Trainer(net, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(net.parameters(), lr=0.05))
    ref = t.fit(W.data(), val=W.val_data(), epochs=2, batch_size=32, progress=False)
    for h in got:
        assert isinstance(h, gpunet.History), got
        for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
            numpy.testing.assert_allclose(h[k], ref[k], rtol=1e-10, err_msg=k)


def test_an_unseeded_sharded_loader_gives_disjoint_shares():
    """Found by the resume audit: DataLoader(X, y, shuffle=True, comm=comm) without seed=
    (and Trainer.fit((X, y), seed=None, comm=comm)) drew a seed from OS entropy on each
    process, so the processes cut their shares from different orders: observed on 2 ranks,
    16 samples, 3 samples in both shares and 3 in neither. Rank 0's drawn seed is now
    broadcast when the loader is made or given comm: the shares of every epoch are disjoint
    and cover the data. A given seed is never replaced."""
    X = numpy.arange(32, dtype=numpy.float32).reshape(32, 1)
    y = numpy.zeros(32, dtype=numpy.int64)

    def seen(loader):
        return [sorted(int(v) for xb, _ in loader for v in xb.ravel()) for _ in range(3)]

    def work(comm):
        made = gpunet.DataLoader(X, y, batch_size=4, shuffle=True, comm=comm)
        later = gpunet.DataLoader(X, y, batch_size=4, shuffle=True)
        later.comm = comm
        given = gpunet.DataLoader(X, y, batch_size=4, shuffle=True, seed=100 + comm.rank, comm=comm)
        return seen(made), seen(later), given.seed
    out = ThreadWorld(2).run(work)
    assert not any(isinstance(o, BaseException) for o in out), out
    for which in (0, 1):
        for epoch in range(3):
            a, b = out[0][which][epoch], out[1][which][epoch]
            assert not set(a) & set(b) and sorted(a + b) == list(range(32)), (which, epoch, a, b)
    assert [o[2] for o in out] == [100, 101]


def test_val_that_fails_on_one_rank_fails_on_every_rank():
    """Rank 1's val has a column too many: its check before training raises the
    ValueError that names val, and rank 0 (whose val fits) raises a RuntimeError naming
    rank 1, instead of waiting for it in a collective (before: rank 0 waited in the
    check's all-reduce, here until the barrier timed out). No step was taken."""
    world = ThreadWorld(2)
    Xv, yv = W.val_data()
    bad = numpy.concatenate([Xv, Xv[:, :1]], axis=1)
    got, opts = _fit_on_ranks(world, lambda r: W.data(),
                              lambda r: gpunet.DataLoader(bad if r == 1 else Xv, yv, batch_size=64))
    assert isinstance(got[1], ValueError), got
    assert str(got[1]).startswith("Trainer.fit: val does not fit the model and loss")
    assert isinstance(got[0], RuntimeError), got
    assert str(got[0]).startswith("Trainer.fit: the checks of the data before training")
    assert "failed on rank 1 of 2" in str(got[0]) and "rank 0 stops too" in str(got[0])
    assert all(o.stats["steps"] == 0 for o in opts.values())


def test_train_data_refused_on_one_rank_fails_on_every_rank():
    """Rank 0's training data is empty (its DataLoader refuses it): rank 0 raises that,
    rank 1 a RuntimeError naming rank 0."""
    world = ThreadWorld(2)
    X, y = W.data()
    got, _ = _fit_on_ranks(world, lambda r: (X[:0], y[:0]) if r == 0 else (X, y), lambda r: None)
    assert isinstance(got[0], ValueError) and "train" in str(got[0]), got
    assert isinstance(got[1], RuntimeError) and "failed on rank 0 of 2" in str(got[1]), got


def test_unseeded_train_data_refused_on_one_rank_fails_on_every_rank():
    """fit((X, y), seed=None) under comm: the seed every process shuffles with is rank 0's
    draw, agreed on before the checks of the data (a collective among them would leave the
    other ranks waiting when one rank's data fails first): rank 0's empty data raises there,
    rank 1 a RuntimeError naming rank 0 (it waited in the loader's broadcast of the seed,
    paired with rank 0's all-reduce of the checks' outcome, until it timed out); with good
    data both train."""
    X, y = W.data()
    nets = [W.model("mlp") for _ in range(2)]

    def work(comm, bad):
        opt = D.DistributedOptimizer(gpunet.optim.SGD(nets[comm.rank].parameters(), lr=0.05), comm)
        t = gpunet.Trainer(nets[comm.rank], gpunet.SoftmaxCrossEntropy(), opt, comm=comm)
        seen = []

        class Seen(gpunet.Callback):
            def on_epoch_begin(self, trainer, epoch):
                seen.append(None)
        data = (X[:0], y[:0]) if bad and comm.rank == 0 else (X, y)
        t.fit(data, epochs=1, batch_size=16, seed=None, progress=False, callbacks=[Seen()])
        return seen
    got = ThreadWorld(2, timeout=10.0).run(lambda comm: work(comm, True))
    assert isinstance(got[0], ValueError) and "train" in str(got[0]), got
    assert isinstance(got[1], RuntimeError) and "failed on rank 0 of 2" in str(got[1]), got
    got = ThreadWorld(2, timeout=10.0).run(lambda comm: work(comm, False))
    assert got == [[None], [None]], got


def test_validation_that_fails_on_one_rank_at_an_epoch_end_fails_on_every_rank():
    """Rank 1's val gets a label outside the classes when its first epoch begins (after the
    checks before training, which would name it): the epoch's evaluate raises the loss's
    ValueError on rank 1 and a RuntimeError naming rank 1 on rank 0 (before: rank 0 waited
    in the all-reduce of the logs)."""
    world = ThreadWorld(2)
    Xv, yv = W.val_data()
    yb = yv.copy()

    class Spoil(gpunet.train.Callback):
        def on_epoch_begin(self, trainer, epoch):
            yb[10] = W.CLASSES + 3
    got, opts = _fit_on_ranks(world, lambda r: W.data(),
                              lambda r: gpunet.DataLoader(Xv, yb if r == 1 else yv, batch_size=64),
                              callbacks_of=lambda r: [Spoil()] if r == 1 else [])
    assert isinstance(got[1], ValueError) and "Trainer.fit" not in str(got[1]), got
    assert isinstance(got[0], RuntimeError), got
    assert str(got[0]).startswith("Trainer.evaluate: the evaluation failed on rank 1 of 2"), got
    assert opts[0].stats["steps"] == opts[1].stats["steps"] > 0       # it failed after the epoch


def test_a_callback_that_fails_to_begin_on_one_rank_fails_on_every_rank(tmp_path):
    """Rank 1's ModelCheckpoint path lies in a directory that does not exist (on a cluster:
    a path that only rank 0's node has): its on_train_begin raises the ValueError naming
    the path, and rank 0 a RuntimeError naming rank 1 (before: rank 0 went on into the
    first step's all-reduce and waited there, here until the timeout). No step was taken."""
    world = ThreadWorld(2)
    paths = {0: tmp_path / "best.npz", 1: tmp_path / "missing" / "best.npz"}
    got, opts = _fit_on_ranks(world, lambda r: W.data(), lambda r: W.val_data(),
                              callbacks_of=lambda r: [gpunet.ModelCheckpoint(paths[r])])
    assert isinstance(got[1], ValueError) and "ModelCheckpoint: path" in str(got[1]), got
    assert isinstance(got[0], RuntimeError), got
    assert str(got[0]).startswith("Trainer.fit: the callbacks' on_train_begin failed on rank 1 of 2"), got
    assert all(o.stats["steps"] == 0 for o in opts.values())


def test_distributed_optimizer_assigns_the_wrapped_optimizers_hyper_parameters():
    """``dopt.momentum = 0.5`` was stored on the wrapper (reads gave 0.5, the steps used
    the wrapped optimizer's 0.9; "x" was taken too); now it is the wrapped optimizer's,
    checked there."""
    net = W.model("mlp")
    inner = gpunet.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    opt = D.DistributedOptimizer(inner, LoopbackComm())
    opt.momentum, opt.lr = 0.5, 0.2
    assert inner.momentum == 0.5 and inner.lr == 0.2 and opt.momentum == 0.5
    with pytest.raises(TypeError, match="^SGD: expected momentum to be a real number, got 'x'"):
        opt.momentum = "x"
    assert inner.momentum == 0.5 and "momentum" not in vars(opt)
    adamw = D.DistributedOptimizer(gpunet.optim.AdamW(net.parameters()), LoopbackComm())
    assert not hasattr(adamw, "l1") and not hasattr(opt, "betas")
    with pytest.raises(AttributeError, match="^AdamW has no hyper-parameter 'l1'"):
        adamw.l1 = 0.1


def test_trainer_rejects_a_plain_optimizer_with_several_processes():
    net = W.model("mlp")
    with pytest.raises(ValueError, match="DistributedOptimizer"):
        gpunet.Trainer(net, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(net.parameters()),
                       comm=LoopbackComm())
    with pytest.raises(TypeError, match="comm"):
        gpunet.Trainer(net, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(net.parameters()),
                       comm=object())


# -- the command line ---------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_cli_train_distributed_under_mpiexec(model, tmp_path):
    path = tmp_path / "m.npz"
    r, _ = launch(["-m", "gpunet.cli", "train", "--distributed", "--model", model, "--epochs", "2",
                   "--batch-size", "32", "--quiet", "--save", str(path), "--device", "cpu"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("test accuracy")]
    assert len(lines) == 1 and "2 processes (mpi)" in lines[0]       # rank 0 reports
    acc = float(lines[0].split()[2])
    assert acc > 0.5
    net = gpunet.models.mlp((64, 256, 128, 10)) if model == "mlp" else gpunet.models.cnn_digits()
    meta = gpunet.load(str(path), net)
    assert meta["test_accuracy"] == pytest.approx(acc, abs=1e-4)


def test_cli_train_distributed_without_a_launcher_is_one_process(capsys, monkeypatch):
    from gpunet.cli import main
    for v in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALRANKID"):
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(D.comm, "_WORLD", None)
    assert main(["train", "--distributed", "--epochs", "1", "--quiet", "--device", "cpu"]) == 0
    assert "1 process (self)" in capsys.readouterr().out


@needs_mpi
def test_bench_distributed_reports_every_figure(tmp_path):
    """The report's structure and ranges, not its speed (timing is benchmarks' business)."""
    out = tmp_path / "b.json"
    r, _ = launch(["-m", "gpunet.cli", "bench", "--distributed", "--quick", "--rounds", "1",
                   "--min-time", "0.05", "--models", "mlp-784-128-10", "--json", str(out), "--device", "cpu"], timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("gpunet bench --distributed: 2 processes (mpi)") == 1
    import json
    rep = json.loads(out.read_text())
    row = rep["models"]["mlp-784-128-10"]
    assert rep["processes"] == 2 and row["batch_per_process"] == 32 and row["global_batch"] == 64
    assert row["samples_per_s"] == pytest.approx(2 * row["samples_per_s_per_process"])
    assert row["efficiency"] > 0 and 0.0 <= row["hidden_fraction"] <= 1.0
    assert row["allreduce_seconds"] > 0 and row["buckets"] >= 1
    assert all(len(v) == 1 for k, v in row["runs"].items() if k != "reference" and not k.startswith("others"))


@needs_mpi
@pytest.mark.parametrize("scenario", ["accumulate", "accumulate_no_sync"])
def test_gradient_accumulation_over_micro_batches(scenario, tmp_path):
    """Two backwards per step without zero_grad between them (2 processes × 16 per
    micro-batch): with no_sync() around the first, or without (the all-reduces the first
    backward started are stale and step() reduces again) — the same parameters as one
    process accumulating over micro-batches of 32."""
    ref, _ = W.accumulate(None, False, reference=True)
    for got in run_worker(scenario, tmp_path):
        assert_same_model(got, ref)
        if scenario == "accumulate":         # the stale buckets were reduced again in step()
            assert int(got["info.synchronous"]) > 0
        else:                                # no_sync: the second backward's launches only
            assert int(got["info.synchronous"]) == 0 and int(got["info.launched"]) > 0


@needs_mpi
def test_fp16_compression_stays_close(tmp_path):
    """float16 on the wire: within float16 rounding of the float32 reference."""
    ref, _ = W.accumulate(None, False, reference=True)
    for got in run_worker("fp16", tmp_path):
        for k, v in ref.items():
            numpy.testing.assert_allclose(got[k], v, rtol=2e-2, atol=2e-3, err_msg=k)
        assert any(not numpy.array_equal(got[k], v.astype(got[k].dtype)) for k, v in ref.items())


def test_nccl_path_uses_only_names_the_installed_cupy_has():
    """The NCCL path cannot run without GPUs; this checks every ``nccl.X`` and
    ``self._nccl.X`` it names against the installed CuPy (the cuda extras bring NCCL)."""
    import re
    cupy = pytest.importorskip("cupy")
    from cupy.cuda import nccl
    if not nccl.available:
        pytest.skip("CuPy cannot load the NCCL library (pip install nvidia-nccl-cu13)")
    src = open(D.comm.__file__).read()
    module_names = set(re.findall(r"\bnccl\.(\w+)", src))
    method_names = set(re.findall(r"self\._nccl\.(\w+)", src))
    assert {"NcclCommunicator", "get_unique_id", "NCCL_SUM", "NCCL_FLOAT32"} <= module_names
    assert {"allReduce", "bcast"} <= method_names
    assert [n for n in module_names if not hasattr(nccl, n)] == []
    assert [n for n in method_names if not hasattr(nccl.NcclCommunicator, n)] == []
    assert isinstance(nccl.get_unique_id(), bytes)         # CuPy 14: bytes, sent over MPI as is
    for n in ("record", "wait_event"):
        assert hasattr(cupy.cuda.Stream, n)
    assert "non_blocking" in cupy.cuda.Stream.__init__.__doc__
    assert hasattr(cupy.cuda.Event, "done") and hasattr(cupy.cuda, "get_current_stream")


@needs_mpi
def test_trainer_fp16_with_clipping_steps_alike_on_every_process(tmp_path):
    """Only rank 1's first gradients are non-finite. The inf/NaN check and the clipping
    read the averaged gradients (Trainer synchronizes right after backward), so both
    processes skip that step, back the scale off once (2**16 → 2**15) and end with the
    same weights."""
    a, b = run_worker("amp", tmp_path)
    assert float(a["scale"]) == float(b["scale"]) == 2.0**15
    for k in a:
        if not k.startswith("info."):
            numpy.testing.assert_array_equal(a[k], b[k], err_msg=k)



@needs_mpi
def test_val_that_fails_on_one_process_fails_on_every_process(tmp_path):
    """Under mpiexec, rank 1's val does not fit the model; each process catches what fit
    raises: rank 1 its ValueError naming val, rank 0 a RuntimeError naming rank 1, and
    both exit (before: rank 0 waited in an all-reduce until the launch timed out)."""
    ranks = run_worker("valfail", tmp_path, timeout=60)
    assert str(ranks[1]["raised"]).startswith("ValueError: Trainer.fit: val does not fit the model and loss")
    assert str(ranks[0]["raised"]).startswith("RuntimeError: Trainer.fit: the checks of the data before training")
    assert "failed on rank 1 of 2" in str(ranks[0]["raised"])
    assert all(int(r["info.steps"]) == 0 for r in ranks)


@needs_mpi
def test_cli_error_in_a_distributed_run_ends_every_process(tmp_path):
    """A diverging run (--lr 1e6): the one-line error, and every process ends (MPI_Abort)
    instead of waiting in a collective for the one that stopped."""
    r, seconds = launch(["-m", "gpunet.cli", "train", "--distributed", "--optimizer", "sgd", "--lr", "1e6",
                         "--epochs", "3", "--quiet", "--device", "cpu"], timeout=120)
    assert r.returncode != 0 and seconds < 30
    assert "gpunet train: error: non-finite loss" in r.stderr
    assert "Traceback" not in r.stderr
