"""What the processes of tests/test_distributed.py run (``mpiexec -n 2 python
tests/distributed_worker.py SCENARIO OUTDIR``); also imported by the test for the
one-process references. Each process writes ``OUTDIR/<scenario>.<rank>.npz``."""
from __future__ import annotations

import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gpunet  # noqa: E402
from gpunet import distributed as D  # noqa: E402

N, FEATURES, CLASSES = 320, 12, 5          # 5 global batches of 64 an epoch
GLOBAL_BATCH, STEPS = 64, 20


def data(kind=None):
    rng = numpy.random.default_rng(123)
    X = rng.standard_normal((N, FEATURES))
    y = rng.integers(0, CLASSES, N)
    return (X.reshape(N, 1, 3, 4) if kind == "convbn" else X), y


def model(kind, comm=None, seed=0):
    """float64 models; ``comm`` given: SyncBatchNorm in place of BatchNorm."""
    gpunet.manual_seed(seed)
    L = gpunet.layers
    if kind == "mlp":
        layers = [L.Dense(FEATURES, 32, activation="relu"), L.Dense(32, 16, activation="tanh"),
                  L.Dense(16, CLASSES)]
    elif kind == "bn":
        bn = L.BatchNorm(32) if comm is None else D.SyncBatchNorm(32, comm=comm)
        layers = [L.Dense(FEATURES, 32), bn, L.ReLU(), L.Dense(32, CLASSES)]
    elif kind == "convbn":               # (N, 1, 3, 4) images: statistics over N·H·W
        bn = L.BatchNorm(4) if comm is None else D.SyncBatchNorm(4, comm=comm)
        layers = [L.Conv2D(1, 4, 3, padding=1), bn, L.ReLU(), L.Flatten(), L.Dense(48, CLASSES)]
    elif kind == "dropout":
        layers = [L.Dense(FEATURES, 32, activation="relu"), L.Dropout(0.3), L.Dense(32, CLASSES)]
    elif kind == "big":
        layers = [L.Dense(FEATURES, 256, activation="relu"), L.Dense(256, 256, activation="relu"),
                  L.Dense(256, CLASSES)]
    else:
        raise ValueError(kind)
    return L.Sequential(*layers).to(dtype=numpy.float64)


def train(net, opt, loader, steps, loss_fn=None):
    loss_fn = loss_fn or gpunet.SoftmaxCrossEntropy()
    done = 0
    while done < steps:
        for xb, yb in loader:
            out = net(xb)
            loss_fn(out, yb)
            net.zero_grad()
            net.backward(loss_fn.backward())
            opt.step()
            done += 1
            if done == steps:
                break
    return net


def params(net):
    return dict(net.state_dict())


def equivalence(kind, comm, device=None):
    X, y = data(kind)
    net = model(kind, comm, seed=comm.rank + 1)        # different weights until broadcast
    if device is not None:                             # the sim: reduced through the host
        net.to(device)
        X, y = gpunet.to_device(X, device), gpunet.to_device(y, device)
    D.broadcast_parameters(net, comm)
    opt = D.DistributedOptimizer(gpunet.optim.SGD(net.parameters(), lr=0.05, momentum=0.9), comm,
                                 bucket_mb=0.01)
    loader = D.shard(X, y, comm, batch_size=GLOBAL_BATCH // comm.size, seed=0)
    train(net, opt, loader, STEPS)
    return params(net), {"launched": opt.stats["launched"], "synchronous": opt.stats["synchronous"]}


def reference(kind):
    """One process, global batch, plain layers and optimizer."""
    X, y = data(kind)
    net = model(kind, None, seed=1)
    opt = gpunet.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    train(net, opt, gpunet.DataLoader(X, y, batch_size=GLOBAL_BATCH, shuffle=True, seed=0), STEPS)
    return params(net)


def overlap(comm):
    X, y = data()
    net = model("big", comm)
    D.broadcast_parameters(net, comm)
    opt = D.DistributedOptimizer(gpunet.optim.SGD(net.parameters(), lr=0.01), comm, bucket_mb=0.1)
    opt.trace = []
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(net(X[:64]), y[:64])
    net.zero_grad()
    net.backward(loss_fn.backward())
    opt.trace.append(("backward_end", -1))
    opt.step()
    kinds = {"grad": 0, "launch": 1, "backward_end": 2}
    trace = numpy.array([(kinds[k], v) for k, v in opt.trace], dtype=numpy.int64)
    return {"trace": trace, "buckets": numpy.int64(len(opt.buckets))}, {}


def accumulate(comm, use_no_sync, reference=False, compression=None):
    """Two micro-batches per step, gradients accumulated (no zero_grad between): with
    ``no_sync`` on the first, or without it (the first backward's all-reduces are then
    stale and redone at step). ``reference``: one process, micro-batches of both ranks."""
    X, y = data()
    net = model("mlp", None if reference else comm, seed=1 if reference else comm.rank + 1)
    opt = gpunet.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    if not reference:
        D.broadcast_parameters(net, comm)
        opt = D.DistributedOptimizer(opt, comm, bucket_mb=0.01, compression=compression)
    if compression:
        net.to(dtype=numpy.float32)
        X = X.astype(numpy.float32)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    size = 1 if reference else comm.size
    micro = 32 // size
    loader = gpunet.DataLoader(X, y, batch_size=micro, shuffle=True, seed=0,
                               comm=None if reference else comm)
    batches = list(loader)
    for step in range(len(batches) // 2):
        net.zero_grad()
        for k in range(2):
            xb, yb = batches[2 * step + k]
            ctx = opt.no_sync() if (use_no_sync and k == 0 and not reference) else _nothing()
            with ctx:
                loss_fn(net(xb), yb)
                net.backward(loss_fn.backward())
        opt.step()
    info = {} if reference else {"synchronous": opt.stats["synchronous"], "launched": opt.stats["launched"]}
    return params(net), info


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def val_data():
    rng = numpy.random.default_rng(7)
    return rng.standard_normal((50, FEATURES)), rng.integers(0, CLASSES, 50)


def trainer(comm, path, epochs, initial_epoch=0, batch_size=None, callbacks=(), net=None, opt=None):
    """Trainer(comm=...) on the dropout model; ``path``: the checkpoint to resume from."""
    if net is None:
        net = model("dropout", comm, seed=comm.rank + 1)
        D.broadcast_parameters(net, comm)
        opt = gpunet.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
        if comm.size > 1:
            opt = D.DistributedOptimizer(opt, comm)
        if initial_epoch:
            gpunet.load(path, net, opt)
    t = gpunet.Trainer(net, gpunet.SoftmaxCrossEntropy(), opt, comm=comm)
    h = t.fit(data(), val=val_data(), epochs=epochs, initial_epoch=initial_epoch,
              batch_size=batch_size or GLOBAL_BATCH // comm.size, callbacks=callbacks, progress=False)
    return net, opt, h


def resume(comm, out):
    """2 epochs with a ModelCheckpoint (rank 0 writes), then a third epoch in the same
    processes: the uninterrupted run."""
    import gpunet.checkpoint as C
    saves = []
    real = C._write                 # what gpunet.save and ModelCheckpoint write the file with

    def counting(*a, **k):
        saves.append(a[0])
        return real(*a, **k)
    C._write = counting
    path = os.path.join(out, "ckpt.npz")
    stop = gpunet.EarlyStopping(monitor="val_loss", patience=100)
    net, opt, h = trainer(comm, path, 2, callbacks=[gpunet.ModelCheckpoint(path, save_best_only=False), stop])
    C._write = real
    net, opt, h3 = trainer(comm, path, 3, initial_epoch=2, net=net, opt=opt)
    arrays = params(net)
    for k in ("loss", "val_loss", "accuracy", "val_accuracy"):
        arrays["history." + k] = numpy.array(h[k] + h3[k])
    return arrays, {"saves": len(saves)}


class Spike(gpunet.layers.Layer):
    """Identity, except that rank 1's first backward makes its gradient non-finite."""

    def __init__(self, rank):
        super().__init__()
        self.rank, self.calls = rank, 0

    def forward(self, x):
        return x

    def backward(self, dy):
        self.calls += 1
        return dy * numpy.inf if (self.rank == 1 and self.calls == 1) else dy


def fp16(comm):
    """Trainer(precision="fp16", clip_grad_norm=...) on 2 processes where only rank 1's
    first gradients are non-finite: the loss scaler's check and the clipping see the
    averaged gradients, so every process skips that step and backs off alike."""
    net = model("mlp", comm, seed=comm.rank + 1).to(dtype=numpy.float32)
    net.layers.insert(1, Spike(comm.rank))
    D.broadcast_parameters(net, comm)
    opt = D.DistributedOptimizer(gpunet.optim.SGD(net.parameters(), lr=0.05, momentum=0.9), comm)
    t = gpunet.Trainer(net, gpunet.SoftmaxCrossEntropy(), opt, comm=comm, precision="fp16",
                       clip_grad_norm=1.0)
    X, y = data()
    t.fit((X.astype(numpy.float32), y), epochs=2, batch_size=16, progress=False)
    out = params(net)
    out["scale"] = numpy.asarray(t.scaler.get_scale())
    return out, {"steps": opt.stats["steps"]}


def fail(comm):
    X, y = data()
    net = model("mlp", comm)
    opt = D.DistributedOptimizer(gpunet.optim.SGD(net.parameters(), lr=0.05), comm)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    for step, (xb, yb) in enumerate(D.shard(X, y, comm, batch_size=8), start=1):
        if step == 3 and comm.rank == 1:
            raise RuntimeError("injected failure at step 3 on rank 1")
        loss_fn(net(xb), yb)
        net.zero_grad()
        net.backward(loss_fn.backward())
        opt.step()
    return {}, {}


def valfail(comm):
    """fit with a val that does not fit the model on rank 1 only (a column too many), the
    error caught as a script may catch it: each rank records what it raised."""
    Xv, yv = val_data()
    if comm.rank == 1:
        Xv = numpy.concatenate([Xv, Xv[:, :1]], axis=1)
    net = model("mlp", comm)
    opt = D.DistributedOptimizer(gpunet.optim.SGD(net.parameters(), lr=0.05), comm)
    t = gpunet.Trainer(net, gpunet.SoftmaxCrossEntropy(), opt, comm=comm)
    try:
        t.fit(data(), val=gpunet.DataLoader(Xv, yv, batch_size=64), epochs=1, batch_size=16, progress=False)
        raised = ""
    except Exception as e:
        raised = f"{type(e).__name__}: {e}"
    return {"raised": numpy.asarray(raised)}, {"steps": opt.stats["steps"]}


def nccl_calls(comm):
    """On one GPU (a world of one process: NCCL refuses two ranks on one device): NCCL's
    all-reduce and broadcast through the Communicator's own NCCL calls, on its stream and
    ordered by its events, for every dtype it maps. A sum over one rank is the identity,
    so this checks the calls, the dtype table and the stream order, not a reduction.

    The arrays are made on the host in int64 and then cast, as the test's expected values
    are: ``cupy.arange(1000, dtype="uint8")`` wraps at 256 (CuPy computes ``start + i *
    step`` in the dtype, as NumPy does), so ``% 97`` of it differed from the test's
    ``(numpy.arange(1000) % 97 + 1).astype("uint8")`` from index 256 on."""
    import cupy
    from gpunet.distributed.comm import Handle, _nccl_dtype
    assert comm.backend == "nccl" and comm.device.startswith("cuda"), (comm.backend, comm.device)
    out = {}
    for dt in ("float16", "float32", "float64", "int32", "int64", "uint8"):
        x = cupy.asarray((numpy.arange(1000) % 97).astype(dt))
        x += 1                                       # queued on the current stream first
        Handle(x, event=comm._nccl_allreduce(x, "sum")).wait()
        out["allreduce." + dt] = cupy.asnumpy(x)
        y = cupy.asarray((numpy.arange(300) % 13).astype(dt))
        stream = comm._comm_stream()
        comm._after_current(stream)
        comm._nccl.bcast(y.data.ptr, y.size, _nccl_dtype(y), 0, stream.ptr)
        cupy.cuda.get_current_stream().wait_event(stream.record())
        out["bcast." + dt] = cupy.asnumpy(y)
    return out, {}


def too_many_processes(out):
    """``init(device="cuda")`` in more processes than the node has GPUs, with a stand-in CuPy
    that sees one GPU (the H200 machine's count): each rank writes the error it got."""
    import types
    from mpi4py import MPI
    nccl = types.SimpleNamespace(available=True, get_unique_id=lambda: b"id", NcclCommunicator=lambda *a: None)
    cuda = types.SimpleNamespace(nccl=nccl, runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
                                 Device=lambda i: types.SimpleNamespace(use=lambda: None))
    cupy = types.ModuleType("cupy")
    cupy.cuda = cuda
    sys.modules.update({"cupy": cupy, "cupy.cuda": cuda, "cupy.cuda.nccl": nccl})
    try:
        D.init(device="cuda")
        got = "no error"
    except RuntimeError as e:
        got = str(e)
    with open(os.path.join(out, f"gpus.{MPI.COMM_WORLD.Get_rank()}.txt"), "w") as f:
        f.write(got)


def main():
    scenario, out = sys.argv[1], sys.argv[2]
    if scenario == "gpus":
        return too_many_processes(out)
    # the CPU scenarios ask for the CPU: "auto" takes CUDA where CuPy sees a GPU, and on a
    # one-GPU machine two processes are refused (the H200 machine, 2026-11-30)
    comm = D.init(device="cuda" if scenario == "nccl" else "cpu")
    if scenario in ("mlp", "bn", "convbn", "dropout"):
        arrays, info = equivalence(scenario, comm)
    elif scenario == "sim":
        arrays, info = equivalence("bn", comm, device="sim")
    elif scenario == "overlap":
        arrays, info = overlap(comm)
    elif scenario == "fail":
        arrays, info = fail(comm)
    elif scenario == "valfail":
        arrays, info = valfail(comm)
    elif scenario == "resume":
        arrays, info = resume(comm, out)
    elif scenario in ("accumulate", "accumulate_no_sync"):
        arrays, info = accumulate(comm, scenario.endswith("no_sync"))
    elif scenario == "fp16":
        arrays, info = accumulate(comm, True, compression="fp16")
    elif scenario == "amp":
        arrays, info = fp16(comm)
    elif scenario == "nccl":
        arrays, info = nccl_calls(comm)
    else:
        raise ValueError(scenario)
    arrays = dict(arrays)
    for k, v in info.items():
        arrays["info." + k] = numpy.asarray(v)
    arrays["info.size"] = numpy.asarray(comm.size)
    numpy.savez(os.path.join(out, f"{scenario}.{comm.rank}.npz"), **arrays)


if __name__ == "__main__":
    main()
