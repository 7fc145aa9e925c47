"""``gpunet bench --distributed``, run under ``mpiexec -n N``: data-parallel throughput.

Strong scaling at the model table's batch (``gpunet.bench.MODELS``): the global batch
``B`` stays the table's, each of the ``N`` processes steps on ``B/N`` samples with a
``DistributedOptimizer`` (default buckets). In each round, for each model:

1. **distributed**: every process runs the same number of steps (fixed by rank 0 from a
   warm-up, so that the collectives match), timed one by one; ``samples/s per process`` =
   ``B/N`` over the median step time, ``samples/s`` = ``B`` over it (the processes wait
   for each other every step);
   Then the same local step with a plain optimizer (no communication), on every process
   at once: ``local``;
2. **communication alone**: the same buckets all-reduced, blocking, one after the other,
   timed the same way; ``allreduce ms``. ``hidden`` = 1 − (distributed step − local
   step) / ``allreduce ms``: the fraction of the all-reduce time that did not lengthen
   the step, i.e. that the backward pass covered (clipped to [0, 1]; load imbalance
   between the processes counts as exposed);
3. **one process**: rank 0 alone (the others sleep in a barrier that does not spin) runs
   the plain step on the global batch with ``N × threads`` BLAS threads: the same CPUs
   in one process. ``efficiency`` = distributed ``samples/s`` over this one's.

Figures are medians over the rounds; runs alternate (1, 2, 3 per round), and the table
names the threads. As in ``gpunet bench``, each run records the CPU time that other
processes took meanwhile; a round where that exceeds ``BUSY_CPUS`` in any of its runs is
busy, and when at least half the rounds are quiet the medians are over the quiet ones (the
table says so). BLAS threads per process: ``--threads`` (default: the available CPUs
divided by the processes on this node). On CUDA (one GPU per process), step 3 runs on
rank 0's GPU with the same batch and the thread count plays no role.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import numpy


def _quiet_barrier(comm):
    """A barrier that sleeps between tests (MPI's spins, taking a CPU from the one
    process still computing)."""
    if comm.size == 1:
        return
    req = comm.mpi.Ibarrier()
    while not req.Test():
        time.sleep(0.0005)


def _timed(step, sync, n):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return times


class _Others:
    """CPUs' worth of time that processes other than the benchmark's used during a run
    (Linux ``/proc/stat`` minus the CPU time of the processes taking part; None
    elsewhere): the machine was shared when this is well above 0."""

    def __init__(self, comm, everyone):
        from ..bench import machine_busy_seconds
        self.comm, self.everyone, self.busy = comm, everyone, machine_busy_seconds
        t = os.times()
        self.b0, self.own0, self.w0 = self.busy(), t.user + t.system, time.perf_counter()

    def read(self):
        if self.b0 is None:
            return None
        t = os.times()
        own = (t.user + t.system) - self.own0
        if self.everyone:                    # every process computed: add their CPU time
            own = float(self.comm.allreduce(numpy.array([own]))[0])
        return max(0.0, (self.busy() - self.b0) - own) / (time.perf_counter() - self.w0)


def _parts(spec, device, batch, comm=None):
    """``(model, optimizer, step)``: the bench's model on ``batch`` samples; with ``comm``
    the weights are rank 0's and the optimizer a ``DistributedOptimizer``."""
    from .. import bench
    from . import DistributedOptimizer, broadcast_parameters
    model, loss_fn, opt, loader, _ = bench._gpunet_parts(dict(spec, batch=batch), device)
    if comm is not None:
        broadcast_parameters(model, comm)
        opt = DistributedOptimizer(opt, comm)
    xb, yb = next(iter(loader))

    def step():
        loss_fn(model(xb), yb)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    return model, opt, step


def _steps_for(comm, step, sync, min_time, warmup):
    """Warm up, then the number of steps to time (rank 0's choice, for every process)."""
    t = _timed(step, sync, warmup)
    n = max(5, int(min_time / max(statistics.median(t), 1e-6)))
    return int(comm.bcast_object(n))


def run_distributed(args, device) -> int:
    """``gpunet bench --distributed`` (see the module docstring)."""
    from .. import bench, threads
    from ..backend import synchronize
    from . import init
    comm = init(device="cuda" if device.startswith("cuda") else "cpu")
    if device.startswith("cuda"):
        device = comm.device
    rounds, min_time, warmup = bench.QUICK if args.quick else bench.FULL
    rounds = args.rounds if args.rounds is not None else rounds
    min_time = args.min_time if args.min_time is not None else min_time
    per = args.threads or max(1, bench.available_cpus() // max(comm.local_size, 1))
    ref_threads = per * comm.local_size
    root = comm.rank == 0
    if root:
        from ..cli import threads_note
        threads_note("gpunet bench", args.threads, comm.local_size)
    report = {"processes": comm.size, "backend": comm.backend, "device": device,
              "threads_per_process": per, "reference_threads": ref_threads,
              "cpu": bench.cpu_model(), "rounds": rounds, "models": {}}
    for name in args.models:
        spec = bench.ALL_MODELS[name]         # --models offers the extra ones too
        if spec["batch"] % comm.size:
            raise SystemExit(f"gpunet bench: error: --distributed: {name}'s batch {spec['batch']} "
                             f"does not split into {comm.size} equal shares")
        b = spec["batch"] // comm.size
        threads.set_num_threads(per)
        model, opt, dstep = _parts(spec, device, b, comm)
        sync = lambda: synchronize(model.parameters()[0].data)   # noqa: E731
        buffers = None
        ref = _parts(spec, device, spec["batch"]) if root else None
        alone = _parts(spec, device, b)[2]              # the same step, no communication
        runs = {"step": [], "local": [], "allreduce": [], "waited": [], "reference": [],
                "others_step": [], "others_local": [], "others_reference": []}
        for _ in range(rounds):
            # 1. distributed steps
            threads.set_num_threads(per)
            n = _steps_for(comm, dstep, sync, 0.3 * min_time, warmup)
            _quiet_barrier(comm)
            w0, s0 = opt.stats["wait_seconds"], opt.stats["steps"]
            others = _Others(comm, True)
            runs["step"].append(statistics.median(_timed(dstep, sync, n)))
            runs["others_step"].append(others.read())
            # 1b. the same local step, no communication (all processes at once)
            _timed(alone, sync, 2)
            _quiet_barrier(comm)
            others = _Others(comm, True)
            runs["local"].append(statistics.median(_timed(alone, sync, n)))
            runs["others_local"].append(others.read())
            runs["waited"].append((opt.stats["wait_seconds"] - w0) / (opt.stats["steps"] - s0))
            # 2. the same buckets, all-reduced alone
            if buffers is None:
                buffers = [bk.buffer.copy() for bk in opt._buckets]
            _quiet_barrier(comm)

            def reduce_all():
                for buf in buffers:
                    comm.iallreduce(buf, "sum").wait()
            runs["allreduce"].append(statistics.median(_timed(reduce_all, sync, n)))
            # 3. one process, the global batch, all the threads
            _quiet_barrier(comm)
            if root:
                threads.set_num_threads(ref_threads)
                _timed(ref[2], sync, warmup if len(runs["reference"]) == 0 else 2)
                others = _Others(comm, False)
                t = _timed(ref[2], sync, max(5, int(min_time / max(runs["step"][-1], 1e-6))))
                runs["reference"].append(statistics.median(t))
                runs["others_reference"].append(others.read())
            _quiet_barrier(comm)
        threads.set_num_threads(per)
        # rounds in which no other process took more than BUSY_CPUS of the machine
        keep = list(range(rounds))
        if root:
            quiet = [i for i in keep if all(
                (runs[k][i] or 0.0) <= bench.BUSY_CPUS
                for k in ("others_step", "others_local", "others_reference"))]
            if 2 * len(quiet) >= rounds:
                keep = quiet

        def med(k):
            return statistics.median(runs[k][i] for i in keep)
        step, red, waited, local = med("step"), med("allreduce"), med("waited"), med("local")
        exposed = step - local                     # what communication added to a step
        row = {"global_batch": spec["batch"], "batch_per_process": b,
               "step_seconds": step, "samples_per_s": spec["batch"] / step,
               "samples_per_s_per_process": b / step, "local_step_seconds": local,
               "allreduce_seconds": red, "exposed_seconds": exposed, "waited_seconds": waited,
               "buckets": len(opt.buckets),
               "hidden_fraction": min(1.0, max(0.0, 1.0 - exposed / red)) if red > 0 else None,
               "runs": runs}
        if root:
            one = med("reference")
            row.update(reference_step_seconds=one, reference_samples_per_s=spec["batch"] / one,
                       efficiency=(spec["batch"] / step) / (spec["batch"] / one))
            busy = [v for k in ("others_step", "others_local", "others_reference")
                    for v in runs[k] if v is not None]
            row["others_cpus_max"] = max(busy) if busy else None
            row["rounds_used"] = len(keep)
        report["models"][name] = row
        opt.close()
    if root:
        print(format_distributed(report))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1)
            print(f"wrote {args.json}")
    sys.stdout.flush()
    return 0


def format_distributed(report) -> str:
    n, per = report["processes"], report["threads_per_process"]
    lines = [f"gpunet bench --distributed: {n} process{'es' * (n != 1)} ({report['backend']}) x "
             f"{per} BLAS thread{'s' * (per != 1)} vs 1 process x {report['reference_threads']} "
             f"on {report['device']} ({report['cpu']}); medians of {report['rounds']} rounds",
             f"{'model':<20} {'batch':>9} {'samples/s':>10} {'per proc':>10} {'1 proc':>10} "
             f"{'efficiency':>10} {'allreduce':>10} {'hidden':>7}"]
    for name, r in report["models"].items():
        hid = "-" if r["hidden_fraction"] is None else f"{r['hidden_fraction']:.2f}"
        lines.append(f"{name:<20} {r['batch_per_process']:>4}x{n:<4} {r['samples_per_s']:>10,.0f} "
                     f"{r['samples_per_s_per_process']:>10,.0f} {r['reference_samples_per_s']:>10,.0f} "
                     f"{r['efficiency']:>9.2f}x {1e3 * r['allreduce_seconds']:>8.2f}ms {hid:>7}")
    lines.append("efficiency: the processes' samples/s over one process's on the global batch with "
                 "all their threads; hidden: the share of the all-reduce time covered by backward")
    for name, r in report["models"].items():
        busy = r.get("others_cpus_max")
        if busy is not None and busy > 0.25:
            used = r["rounds_used"]
            how = (f"the medians are over the {used} quiet rounds" if used < report["rounds"]
                   else "too few quiet rounds: the figures are unreliable")
            lines.append(f"note ({name}): other processes used up to {busy:.2f} CPUs during some "
                         f"runs (a shared machine); {how}")
    return "\n".join(lines)
