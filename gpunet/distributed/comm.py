"""Communicators: who the processes are, and the collectives between them.

``init()`` returns a ``Communicator``:

* **a world of one** when the process was not started by an MPI launcher (no ``PMI_RANK``,
  ``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``, ``PMIX_RANK`` or ``MPI_LOCALRANKID`` in the
  environment): every collective returns its input, MPI is never imported;
* **MPI** (through mpi4py, the ``mpi`` extra) under ``mpiexec``/``srun``: ``rank`` and
  ``size`` of ``MPI.COMM_WORLD``, ``local_rank``/``local_size`` from the shared-memory split
  (``MPI.COMM_TYPE_SHARED``: the processes on this node). NumPy arrays are reduced by MPI
  (``Allreduce``; ``Iallreduce`` for the non-blocking one);
* **NCCL** on CUDA (``device="cuda"``, or ``"auto"`` where CuPy sees a GPU): the process
  takes ``cuda:<local_rank>``; CuPy arrays are reduced by NCCL (``cupy.cuda.nccl``, whose
  unique id rank 0 creates and broadcasts over MPI) on a communication stream of its own;
  MPI stays for host arrays, objects and ``abort``. **This path has not run on a GPU yet**
  (written against CuPy 14's ``cupy.cuda.nccl`` names, checked against the installed
  package only).

Arrays on the simulated device (``"sim"``) go through the host and MPI.

On the CPU a non-blocking all-reduce moves forward only inside MPI calls (gpunet tests the
requests in flight at every gradient hook). ``GPUNET_MPI_PROGRESS_THREAD=1`` (or
``comm.progress_thread = True`` before the first all-reduce) adds a daemon thread that pokes
MPI's progress engine while one is in flight; it needs ``MPI_THREAD_MULTIPLE``, which mpi4py
asks for by default. Off by default: on a 2-core machine with two processes it made the
step slower (exposed communication 5.2–5.4 ms against 3.7 ms without it, quiet runs,
784-1024-1024-10 MLP), since the cores that would poll are the ones computing.

Failure: under a launcher, ``init()`` installs a ``sys.excepthook`` that prints the
traceback and then calls ``MPI_Abort`` on the world, so an exception in one process ends
every process (non-zero exit, the first error on stderr) instead of leaving the others
blocked in a collective.
"""
from __future__ import annotations

import os
import sys
import threading
import time

import numpy

from .. import _args
from ..backend import device_of, to_device, to_numpy

_LAUNCHER_VARS = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALRANKID")
_OPS = ("sum", "mean", "max", "min")


def launched_by_mpi() -> bool:
    """True when an MPI launcher (``mpiexec``, ``mpirun``, ``srun --mpi=pmi2|pmix``) started
    this process (one of its environment variables is set)."""
    return any(v in os.environ for v in _LAUNCHER_VARS)


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError(
            "gpunet.distributed: this process was started by an MPI launcher but mpi4py is not "
            f"installed ({e}); install the extra: pip install 'gpunet[mpi]'") from e
    return MPI


def _check_op(op, who):
    if op not in _OPS:
        raise ValueError(f"{who}: expected op to be one of {', '.join(map(repr, _OPS))}, got {op!r}")
    return op


def check_root(who, root, size):
    """``root`` as an int rank of a world of ``size`` processes, or the error naming ``who``
    (MPI's own, from deep inside mpi4py, names neither; a world of one never reached it)."""
    root = _args.integer(who, "root", root, low=0)
    if root >= size:
        raise ValueError(f"{who}: expected root to be a rank in [0, {size}), got {root}")
    return root


def _is_cupy(x) -> bool:
    """A real CuPy array (not the sim's, which goes through the host)."""
    return type(x).__module__.startswith("cupy")


class Handle:
    """A non-blocking all-reduce in flight: ``test()`` (True once done; each call also
    drives MPI's progress), ``wait()`` (blocks, returns the reduced array). ``started`` and
    ``finished`` are ``time.perf_counter()`` readings (``finished``: when ``test``/``wait``
    first saw it done)."""

    def __init__(self, array, request=None, event=None, finish=None):
        self.array, self._request, self._event, self._finish = array, request, event, finish
        self.started = time.perf_counter()
        self.finished = None
        self._done = False
        if request is None and event is None:
            self._complete()

    def _complete(self):
        if not self._done:
            self._done = True
            self.finished = time.perf_counter()
            if self._finish is not None:
                self._finish()

    def test(self) -> bool:
        if self._done:
            return True
        if self._request is not None and not self._request.Test():
            return False
        if self._event is not None and not self._event.done:
            return False
        self._complete()
        return True

    def wait(self):
        if not self._done:
            if self._request is not None:
                self._request.Wait()
            elif self._event is not None:
                import cupy
                cupy.cuda.get_current_stream().wait_event(self._event)
            self._complete()
        return self.array


class Communicator:
    """The processes of a data-parallel run (see the module docstring for the backends).

    Attributes: ``rank``, ``size``, ``local_rank``, ``local_size``, ``backend`` (``"self"``,
    ``"mpi"`` or ``"nccl"``), ``device`` (``"cuda:<local_rank>"`` with NCCL, else ``"cpu"`` or,
    with ``GPUNET_DEVICE=sim``, ``"sim"``),
    ``mpi`` (the mpi4py communicator, or None in a world of one).

    Collectives (every process calls them in the same order):
    ``allreduce(x, op="sum")`` returns a new array; ``iallreduce(buf, op="sum")`` reduces
    ``buf`` in place and returns a ``Handle``; ``broadcast(x, root=0)`` overwrites ``x`` on
    the other processes and returns it; ``allgather(x)`` returns ``(size,) + x.shape``;
    ``bcast_object``/``allgather_object`` for picklable Python objects; ``barrier()``;
    ``abort(code)`` ends every process. ``op`` is ``"sum"``, ``"mean"``, ``"max"`` or
    ``"min"``.

    The attributes describe the processes the launcher started and are read-only: assigning
    ``comm.size = 2`` in a world of one would make the loaders shard and the collectives
    divide as if there were two (``AttributeError`` instead).
    """

    _FIXED = "they describe the processes mpirun started; gpunet.distributed.init() makes the communicator"
    mpi = _args.read_only("Communicator", "mpi", "The mpi4py communicator, or None.", _FIXED)
    rank = _args.read_only("Communicator", "rank", "This process's rank.", _FIXED)
    size = _args.read_only("Communicator", "size", "The number of processes.", _FIXED)
    local_rank = _args.read_only("Communicator", "local_rank", "The rank on this node.", _FIXED)
    local_size = _args.read_only("Communicator", "local_size", "Processes on this node.", _FIXED)
    device = _args.read_only("Communicator", "device", "This process's device.", _FIXED)
    backend = _args.read_only("Communicator", "backend", "'self', 'mpi' or 'nccl'.", _FIXED)

    def __init__(self, mpi_comm=None, device="cpu", nccl=None, local_rank=0, local_size=1):
        self._mpi = mpi_comm
        self._rank = 0 if mpi_comm is None else int(mpi_comm.Get_rank())
        self._size = 1 if mpi_comm is None else int(mpi_comm.Get_size())
        self._local_rank = _args.integer("Communicator", "local_rank", local_rank, low=0)
        self._local_size = _args.integer("Communicator", "local_size", local_size, low=1)
        self._device = device
        self._nccl = nccl
        self._stream = None
        self._progress = None          # the _Progress thread, started at the first Iallreduce
        self.progress_thread = (mpi_comm is not None and nccl is None
                                and os.environ.get("GPUNET_MPI_PROGRESS_THREAD", "0") == "1")
        self._backend = "self" if mpi_comm is None else ("nccl" if nccl is not None else "mpi")

    def __repr__(self):
        return (f"Communicator(backend={self.backend!r}, rank={self.rank}, size={self.size}, "
                f"local_rank={self.local_rank}, device={self.device!r})")

    # -- arrays --------------------------------------------------------------------------------
    def _mpi_op(self, op):
        MPI = _import_mpi()
        return {"sum": MPI.SUM, "mean": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]

    def iallreduce(self, buf, op="sum"):
        """Start reducing ``buf`` in place across the processes; returns a ``Handle``
        (``wait()`` gives ``buf``). NumPy: MPI ``Iallreduce``; CuPy with NCCL: ``allReduce``
        on the communication stream after the current stream's work; other device arrays
        (the sim): through the host, blocking."""
        op = _check_op(op, "Communicator.iallreduce")
        if self.size == 1:
            return Handle(buf)
        scale = 1.0 / self.size if op == "mean" else None

        def finish(b=buf):
            if scale is not None:
                b *= scale
        if isinstance(buf, numpy.ndarray):
            req = self.mpi.Iallreduce(_import_mpi().IN_PLACE, buf, op=self._mpi_op(op))
            progress = self._progress_thread()
            if progress is None:
                return Handle(buf, request=req, finish=finish)
            progress.started()

            def done(b=buf):
                progress.finished()
                finish(b)
            return Handle(buf, request=req, finish=done)
        if self._nccl is not None and _is_cupy(buf):
            return Handle(buf, event=self._nccl_allreduce(buf, op), finish=finish)
        host = numpy.ascontiguousarray(to_numpy(buf))
        self.mpi.Allreduce(_import_mpi().IN_PLACE, host, op=self._mpi_op(op))
        buf[...] = to_device(host, device_of(buf))
        return Handle(buf, finish=finish)

    def allreduce(self, x, op="sum"):
        """A new array: ``x`` reduced over the processes (``"mean"`` divides the sum by
        ``size``)."""
        _check_op(op, "Communicator.allreduce")
        buf = x.copy()
        return self.iallreduce(buf, op).wait() if self.size > 1 else buf

    def broadcast(self, x, root=0):
        """Overwrite ``x`` (an array, in place) with the root's; returns ``x``."""
        root = check_root("Communicator.broadcast", root, self.size)
        if self.size == 1:
            return x
        if isinstance(x, numpy.ndarray):
            if not x.flags.c_contiguous:
                raise ValueError("Communicator.broadcast: expected a C-contiguous array")
            self.mpi.Bcast(x, root=root)
        elif self._nccl is not None and _is_cupy(x):
            import cupy
            stream = self._comm_stream()
            self._after_current(stream)
            self._nccl.bcast(x.data.ptr, x.size, _nccl_dtype(x), root, stream.ptr)
            cupy.cuda.get_current_stream().wait_event(stream.record())
        else:
            host = numpy.ascontiguousarray(to_numpy(x))
            self.mpi.Bcast(host, root=root)
            x[...] = to_device(host, device_of(x))
        return x

    def allgather(self, x):
        """``(size,) + x.shape``: every process's ``x``, in rank order (through the host for
        device arrays)."""
        host = numpy.ascontiguousarray(to_numpy(x))
        if self.size == 1:
            out = host[None].copy()
        else:
            out = numpy.empty((self.size,) + host.shape, host.dtype)
            self.mpi.Allgather(host, out)
        return out if isinstance(x, numpy.ndarray) else to_device(out, device_of(x))

    # -- Python objects, control ------------------------------------------------------------------
    def bcast_object(self, obj, root=0):
        root = check_root("Communicator.bcast_object", root, self.size)
        return obj if self.size == 1 else self.mpi.bcast(obj, root=root)

    def allgather_object(self, obj):
        return [obj] if self.size == 1 else self.mpi.allgather(obj)

    def barrier(self):
        if self.size > 1:
            self.mpi.Barrier()

    def abort(self, code=1):
        """End every process of the world with exit status ``code`` (``MPI_Abort``), after
        flushing stdout/stderr and half a second for the launcher to forward them (MPICH's
        proxies die with the abort and would drop what they still hold)."""
        code = _args.integer("Communicator.abort", "code", code)
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except (OSError, ValueError):
                pass
        if self.mpi is not None:
            time.sleep(0.5)
            self.mpi.Abort(code)
        os._exit(code)

    def _progress_thread(self):
        """The thread that makes MPI progress while the caller computes (see ``_Progress``);
        None when ``progress_thread`` is off or MPI lacks ``MPI_THREAD_MULTIPLE``."""
        if not self.progress_thread:
            return None
        if self._progress is None:
            MPI = _import_mpi()
            if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
                self.progress_thread = False
                return None
            self._progress = _Progress(self.mpi.Dup())
        return self._progress

    # -- NCCL (not yet run on a GPU) -----------------------------------------------------------------
    def _comm_stream(self):
        if self._stream is None:
            import cupy
            self._stream = cupy.cuda.Stream(non_blocking=True)
        return self._stream

    @staticmethod
    def _after_current(stream):
        """Make ``stream`` wait for the work queued so far on the current stream."""
        import cupy
        stream.wait_event(cupy.cuda.get_current_stream().record())

    def _nccl_allreduce(self, buf, op):
        from cupy.cuda import nccl
        stream = self._comm_stream()
        self._after_current(stream)          # the gradients are written by then
        code = {"sum": nccl.NCCL_SUM, "mean": nccl.NCCL_SUM, "max": nccl.NCCL_MAX,
                "min": nccl.NCCL_MIN}[op]
        self._nccl.allReduce(buf.data.ptr, buf.data.ptr, buf.size, _nccl_dtype(buf), code, stream.ptr)
        return stream.record()


class _Progress:
    """A daemon thread that, while non-blocking all-reduces are in flight, calls
    ``Iprobe`` on a private duplicate of the communicator every ``poll`` seconds.

    MPICH (and Open MPI) move a non-blocking collective forward only inside MPI calls; the
    backward pass makes none while a layer's GEMM runs, so without this an all-reduce
    started during backward would mostly run inside ``step()``'s wait. ``Iprobe`` enters
    the progress engine without touching the requests (which the main thread alone
    tests and waits on, as MPI requires). The thread sleeps between polls and blocks on
    an event when nothing is in flight, so it costs no CPU between steps."""

    def __init__(self, probe_comm, poll=50e-6):
        self.comm, self.poll = probe_comm, poll
        self.count = 0
        self.lock = threading.Lock()
        self.wake = threading.Event()
        threading.Thread(target=self._run, name="gpunet-mpi-progress", daemon=True).start()

    def started(self):
        with self.lock:
            self.count += 1
            self.wake.set()

    def finished(self):
        with self.lock:
            self.count -= 1
            if self.count == 0:
                self.wake.clear()

    def _run(self):
        while True:
            self.wake.wait()
            while self.count > 0:
                self.comm.Iprobe()
                time.sleep(self.poll)


def _nccl_dtype(x):
    from cupy.cuda import nccl
    table = {numpy.dtype(numpy.float16): nccl.NCCL_FLOAT16, numpy.dtype(numpy.float32): nccl.NCCL_FLOAT32,
             numpy.dtype(numpy.float64): nccl.NCCL_FLOAT64, numpy.dtype(numpy.int32): nccl.NCCL_INT32,
             numpy.dtype(numpy.int64): nccl.NCCL_INT64, numpy.dtype(numpy.uint8): nccl.NCCL_UINT8}
    try:
        return table[numpy.dtype(x.dtype)]
    except KeyError:
        raise TypeError(f"Communicator: NCCL reduces float16/32/64, int32/64 and uint8 arrays, "
                        f"got {x.dtype}") from None


_WORLD = None


def _install_excepthook(comm):
    """Print the traceback, then ``MPI_Abort``: one failing process ends the run."""
    import traceback

    def hook(kind, value, tb):
        try:
            text = (f"gpunet.distributed: rank {comm.rank} of {comm.size} failed; aborting every "
                    "process\n" + "".join(traceback.format_exception(kind, value, tb)))
            sys.stderr.flush()
            os.write(2, text.encode("utf-8", "replace"))   # one write, past Python's buffers
        finally:
            comm.abort(1)
    sys.excepthook = hook


def init(device="auto"):
    """The communicator of this process (created once; later calls return the same one).

    ``device``: ``"auto"`` (CUDA with NCCL when CuPy sees a GPU — ``GPUNET_DEVICE`` is
    honoured through ``gpunet.default_device()`` — else the CPU with MPI; with
    ``GPUNET_DEVICE=sim``, ``comm.device`` is ``"sim"`` and its arrays are reduced through the
    host), ``"cpu"`` or ``"cuda"``. Not started by an MPI launcher: a world of one (``backend="self"``), MPI is
    not imported. Started by one: mpi4py is required (``pip install 'gpunet[mpi]'``).
    With CUDA each process uses ``cuda:<local_rank>`` (made the current CuPy device): run at
    most as many processes per node as it has GPUs. More processes than GPUs raise
    ``RuntimeError`` on every rank (``"auto"`` included: it does not fall back to the CPU
    silently; ask for ``device="cpu"``).
    """
    global _WORLD
    if _WORLD is not None:
        return _WORLD
    if not isinstance(device, str):
        raise _args.ArgumentTypeError(f"gpunet.distributed.init: expected device 'auto', 'cpu' or 'cuda', "
                                      f"got {_args._got(device)}")
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"gpunet.distributed.init: expected device 'auto', 'cpu' or 'cuda', got {device!r}")
    host = "cpu"
    if device == "auto":
        from ..backend import default_device
        host = default_device()                 # "cpu", "sim" or "cuda..."
        device = "cuda" if host.startswith("cuda") else "cpu"
        host = "cpu" if device == "cuda" else host
    if not launched_by_mpi():
        _WORLD = Communicator(device="cuda:0" if device == "cuda" else host)
        return _WORLD
    MPI = _import_mpi()
    world = MPI.COMM_WORLD
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    local_rank, local_size = node.Get_rank(), node.Get_size()
    nccl_comm = None
    dev = host
    if device == "cuda":
        import cupy
        from cupy.cuda import nccl
        if not nccl.available:
            raise RuntimeError("gpunet.distributed.init: NCCL could not be loaded by CuPy; install "
                               "the NCCL runtime (pip install nvidia-nccl-cu13, or -cu12)")
        n_dev = cupy.cuda.runtime.getDeviceCount()
        # every rank raises, or none: a rank raising alone left the others waiting for it in
        # the bcast below, for good (2 processes on the one-GPU H200 machine, 2026-11-30)
        if world.allreduce(local_rank >= n_dev, op=MPI.LOR):
            where = (f"this node has {n_dev} GPU(s) for its {local_size} processes" if local_size > n_dev
                     else "another node has more processes than GPUs")
            raise RuntimeError(f"gpunet.distributed.init: {where}: with CUDA each process needs a GPU of "
                               f"its own; start at most as many processes per node as it has GPUs, or "
                               f"init(device='cpu') (gpunet train --distributed --device cpu) to reduce "
                               f"through MPI on the CPU")
        cupy.cuda.Device(local_rank).use()
        uid = nccl.get_unique_id() if world.Get_rank() == 0 else None
        uid = world.bcast(uid, root=0)
        nccl_comm = nccl.NcclCommunicator(world.Get_size(), uid, world.Get_rank())
        dev = f"cuda:{local_rank}"
    _WORLD = Communicator(world, device=dev, nccl=nccl_comm, local_rank=local_rank, local_size=local_size)
    if _WORLD.size > 1:
        _install_excepthook(_WORLD)
    return _WORLD
