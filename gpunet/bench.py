"""``gpunet bench``: training throughput of a fixed set of models, optionally against PyTorch.

One *training step* is forward → softmax cross-entropy → backward → SGD-momentum update
(lr 0.01, momentum 0.9), on a batch that already lives on the device (data loading is not
timed). The models (``MODELS``):

* ``mlp-784-128-10``      Dense(784,128,relu) → Dense(128,10),                  batch 64
* ``mlp-784-1024x2-10``   Dense(784,1024,relu) → Dense(1024,1024,relu) → Dense(1024,10), batch 256
* ``cnn-28x28``           Conv2D(1,16,3,p=1,relu) → MaxPool2D(2) → Conv2D(16,32,3,p=1,relu)
                          → MaxPool2D(2) → Flatten → Dense(1568,10),            batch 64

Method. Each framework runs in its own Python process (``python -m gpunet.bench --worker
FRAMEWORK``), so neither sees the other's allocator, thread pool or import state; both stay
alive for the whole benchmark, and an idle one blocks on its stdin. A *run* is one model
timed by one worker: warm-up steps the first time, then steps timed one by one with
``time.perf_counter`` (on CUDA in blocks of 10 steps between two device synchronizations)
until ``--min-time`` seconds have passed; the run's figure is its median step time. Runs
alternate between the frameworks (gpunet first for one model, PyTorch first for the next,
swapped every round), with a 0.2 s pause after each so that the BLAS/OpenMP threads of the
last run have stopped spinning, and the table quotes the median over ``--rounds`` rounds.
Two-thread BLAS slows tenfold when another process takes a core, so each run also records
how much CPU the rest of the machine used meanwhile (``/proc/stat``); runs where that
exceeds a quarter of a CPU are "busy", and when at least half the runs are quiet the
median is taken over the quiet ones (the table says so).
``ratio`` is PyTorch's step time over gpunet's: above 1, gpunet is faster. The JSON keeps
every step time of every run.

The floor (with ``--compare torch`` on the CPU; ``--no-floor`` skips it). NumPy's BLAS and
PyTorch's are different libraries (OpenBLAS and MKL in the PyPI wheels), and on some CPUs
one runs the same GEMM much faster than the other. So each round also times, in the same
two worker processes and alternating like the steps, the matrix products that one gpunet
step issues, alone: same shapes, same operand strides (so the same transposes and C/F
orders reach BLAS; a test checks them against a real step), and for the CNN its im2col
and col2im copies (:func:`floor_ops`), once in NumPy and once in PyTorch
(:func:`floor_step`). ``floor`` is the PyTorch/NumPy time ratio of that work: the step
ratio gpunet would reach if it added nothing around its GEMMs that PyTorch does not.
``of floor`` = ratio / floor; also, under the table and in the JSON
(``of_floor_round_median``), the median over rounds of each round's own ratio / floor,
steadier where the host's speed swings between runs. The table, the markdown and the JSON name the CPU (vendor,
model) and the BLAS kernels each library picked (OpenBLAS's core name through
``gpunet.threads``, PyTorch's build configuration).

Both frameworks get the same number of threads (``--threads``, default: the CPUs this
process may run on) through ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``/``MKL_NUM_THREADS``
and ``torch.set_num_threads``. ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` are passed on as
they are and recorded; ``--unset-openblas-env`` removes both from the workers'
environment (the BLAS kernel each worker then uses is recorded when threadpoolctl is
installed).

On CUDA, ``bench`` also times the fused kernels (softmax-CE, batch-norm forward/backward,
dropout forward/backward) with CUDA events and reports each one's achieved bandwidth —
the bytes it must move at least, over its time — as a fraction of the measured
device-to-device copy bandwidth (the roofline of a memory-bound kernel).

``--precision fp16``: every step runs under gpunet's float16 policy
(``gpunet.amp.MixedPrecision`` + ``GradScaler``) and PyTorch's (``torch.autocast`` with
float16 + ``torch.amp.GradScaler``); each worker also times its framework's fp32 step in
the same rounds, and a second table gives each framework's fp16 speed-up. No floor then.
On a CPU these figures test the policies, not tensor cores (NumPy has no float16 GEMM:
gpunet computes float16 layers in float32 on upcast copies). ``--models
mlp-784-4096x2-10`` (batch 1024, not in the default set) is the MLP of the GPU comparison
in issue 14.

On the simulated CUDA device (``--device sim``, ``gpunet.sim``) times mean nothing; ``bench``
instead runs one training step per model in this process and prints what it costs a GPU
by the sim's counters (``gpunet.sim.counters()``): kernel launches (array ops as CuPy
launches them, plus gpunet's fused kernels), host syncs, bytes copied host-to-device and
device-to-host, and allocations, per step (after one warm-up step that compiles).

Usage::

    gpunet bench [--quick] [--device cpu|cuda|sim] [--compare torch] [--models NAME ...]
                 [--precision fp32|fp16] [--json PATH] [--threads N] [--no-floor] [--markdown]
    python -m gpunet.bench ...        (the same, without the console script)
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

from .backend import cpu_model

RESULT_TAG = "GPUNET_BENCH "   # prefix of the JSON lines a worker prints on stdout

MODELS = {
    "mlp-784-128-10": {"kind": "mlp", "sizes": (784, 128, 10), "batch": 64},
    "mlp-784-1024x2-10": {"kind": "mlp", "sizes": (784, 1024, 1024, 10), "batch": 256},
    "cnn-28x28": {"kind": "cnn", "shape": (1, 28, 28), "classes": 10, "batch": 64},
}
# not run by default (seconds a step on a CPU): the issue-14 GPU comparison's MLP
EXTRA_MODELS = {
    "mlp-784-4096x2-10": {"kind": "mlp", "sizes": (784, 4096, 4096, 10), "batch": 1024},
}
ALL_MODELS = {**MODELS, **EXTRA_MODELS}
PRECISIONS = ("fp32", "fp16")
LR, MOMENTUM = 0.01, 0.9
FRAMEWORKS = ("gpunet", "torch")

# (rounds, seconds timed per model per run, warm-up steps) for the two modes
FULL = (10, 1.0, 20)
QUICK = (3, 0.4, 5)
GAP_S = 0.2     # pause between two runs: BLAS/OpenMP threads spin a while after their last call
BUSY_CPUS = 0.25  # a run during which other processes used more CPU than this is "busy"


# -- the models, built the same way in both frameworks ------------------------------------
def _inputs(spec, seed=0):
    """Host inputs of one batch: float32 ``x`` (standard normal) and int64 labels."""
    import numpy
    rng = numpy.random.default_rng(seed)
    shape = (spec["batch"],) + (tuple(spec["shape"]) if spec["kind"] == "cnn" else (spec["sizes"][0],))
    classes = spec["classes"] if spec["kind"] == "cnn" else spec["sizes"][-1]
    x = rng.standard_normal(shape, dtype=numpy.float32)
    y = rng.integers(0, classes, spec["batch"]).astype(numpy.int64)
    return x, y


def gpunet_step(spec, device, precision="fp32"):
    """``(step, sync)``: one gpunet training step on one fixed batch, and a device sync.
    ``precision="fp16"``: the same step under ``gpunet.amp.MixedPrecision`` with a
    ``GradScaler`` (float32 masters, float16 forward/backward, dynamic loss scaling)."""
    from gpunet.backend import synchronize
    model, loss_fn, opt, loader, x = _gpunet_parts(spec, device)
    if precision == "fp16":
        from gpunet.amp import GradScaler, MixedPrecision
        mp, scaler = MixedPrecision(model), GradScaler()

        def step():
            for xb, yb in loader:
                loss_fn(mp.forward(xb), yb)
                model.zero_grad()
                mp.backward(scaler.scale(loss_fn.backward()))
                scaler.step(opt)
                scaler.update()

        return step, (lambda: synchronize(x))

    def step():
        for xb, yb in loader:
            loss_fn(model(xb), yb)
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()

    return step, (lambda: synchronize(x))


def _gpunet_parts(spec, device):
    """``(model, loss_fn, optimizer, loader, x)`` of :func:`gpunet_step`."""
    import gpunet
    from gpunet import optim
    from gpunet.backend import to_device
    from gpunet.layers import Conv2D, Dense, Flatten, MaxPool2D, Sequential

    gpunet.manual_seed(0)
    if spec["kind"] == "mlp":
        s = spec["sizes"]
        layers = [Dense(a, b, activation="relu") for a, b in zip(s[:-2], s[1:-1])]
        model = Sequential(*layers, Dense(s[-2], s[-1]))
    else:
        c, h, w = spec["shape"]
        model = Sequential(Conv2D(c, 16, 3, padding=1, activation="relu"), MaxPool2D(2),
                           Conv2D(16, 32, 3, padding=1, activation="relu"), MaxPool2D(2),
                           Flatten(), Dense(32 * (h // 4) * (w // 4), spec["classes"]))
    model.to(device)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    opt = optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = (to_device(a, device) for a in _inputs(spec))
    # The README's own loop, as a user writes it: batches from a DataLoader (here one batch
    # per pass), model(xb), the loss, zero_grad, backward, step. Nothing tuned: the first
    # layer skips the data's gradient because DataLoader batches need none.
    loader = gpunet.DataLoader(x, y, batch_size=spec["batch"])
    return model, loss_fn, opt, loader, x


# -- where a CPU step's time goes -------------------------------------------------------------
def profile(spec, min_time=2.0, warmup=20) -> dict:
    """Per-phase times of :func:`gpunet_step`'s step on the CPU, in this process.

    The step is the same loop; each layer's ``forward``/``backward`` (wrapped on the
    instance), the loss, ``zero_grad``, the loss's backward and the optimizer step are timed
    with ``perf_counter``, and so is every ``numpy.matmul`` (wrapped), which splits each
    phase into GEMM and the rest. Steps run until ``min_time`` seconds have passed; each
    figure is a median over the steps (so the phases need not add up to the median step
    exactly). The wrappers cost a few microseconds per call: noticeable for a step well
    under a millisecond. Returns ``{"step_s", "phases": [{"phase", "s", "gemm_s"}]}``."""
    import numpy
    model, loss_fn, opt, loader, _ = _gpunet_parts(spec, "cpu")
    clock = time.perf_counter
    gemm = [0.0]
    real_mm = numpy.matmul

    def mm(*args, **kwargs):
        t0 = clock()
        try:
            return real_mm(*args, **kwargs)
        finally:
            gemm[0] += clock() - t0

    rec = {}

    def timed(name, fn):
        def run(*args):
            g0, t0 = gemm[0], clock()
            out = fn(*args)
            rec[name] = (clock() - t0, gemm[0] - g0)
            return out
        run._gpunet_passes_output = True    # Sequential may still fuse the layer (layers.pooling)
        return run

    layers = list(model.layers)
    for i, layer in enumerate(layers):
        layer.forward = timed(f"{i} {type(layer).__name__} forward", layer.forward)
        layer.backward = timed(f"{i} {type(layer).__name__} backward", layer.backward)
    loss_f = timed("loss forward", loss_fn.__call__)
    loss_b = timed("loss backward", loss_fn.backward)
    zero = timed("zero_grad", model.zero_grad)
    step_opt = timed("optimizer step", opt.step)

    def step():
        t0 = clock()
        it = iter(loader)
        xb, yb = next(it)
        rec["data"] = (clock() - t0, 0.0)
        logits = model(xb)
        loss_f(logits, yb)
        zero()
        model.backward(loss_b())
        step_opt()
        for _ in it:        # the loader yields one batch: this ends it, as the loop does
            pass

    numpy.matmul = mm
    try:
        for _ in range(warmup):
            step()
        rows, steps, spent = [], [], 0.0
        while spent < min_time or len(steps) < 5:
            rec.clear()
            t0 = clock()
            step()
            dt = clock() - t0
            spent += dt
            steps.append(dt)
            rows.append(dict(rec))
    finally:
        numpy.matmul = real_mm
        for layer in layers:
            del layer.forward, layer.backward
    order = ["data"] + [f"{i} {type(l).__name__} forward" for i, l in enumerate(layers)] + \
        ["loss forward", "zero_grad", "loss backward"] + \
        [f"{i} {type(l).__name__} backward" for i, l in reversed(list(enumerate(layers)))] + ["optimizer step"]
    phases = []
    for name in order:
        got = [r[name] for r in rows if name in r]
        if got:
            phases.append({"phase": name, "s": statistics.median(t for t, _ in got),
                           "gemm_s": statistics.median(g for _, g in got)})
    return {"step_s": statistics.median(steps), "steps": len(steps), "phases": phases}


def format_profile(name, prof) -> str:
    step = prof["step_s"]
    lines = [f"{name}: step {step * 1e3:.3f} ms (median of {prof['steps']} steps, timers on)",
             f"  {'phase':<28} {'ms':>8} {'of step':>8} {'GEMM ms':>8} {'other ms':>9}"]
    for p in prof["phases"]:
        lines.append(f"  {p['phase']:<28} {p['s'] * 1e3:>8.3f} {p['s'] / step:>7.0%} {p['gemm_s'] * 1e3:>8.3f} "
                     f"{(p['s'] - p['gemm_s']) * 1e3:>9.3f}")
    g = sum(p["gemm_s"] for p in prof["phases"])
    t = sum(p["s"] for p in prof["phases"])
    lines.append(f"  {'sum of phases':<28} {t * 1e3:>8.3f} {t / step:>7.0%} {g * 1e3:>8.3f} {(t - g) * 1e3:>9.3f}")
    return "\n".join(lines)


def torch_step(spec, device, precision="fp32"):
    """``(step, sync)`` for the same model, loss and optimizer in PyTorch; ``precision="fp16"``:
    ``torch.autocast(dtype=float16)`` around forward and loss, and ``torch.amp.GradScaler``
    (PyTorch's float16 recipe; on the CPU autocast float16 exists since PyTorch 2.x)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if spec["kind"] == "mlp":
        s = spec["sizes"]
        layers = []
        for a, b in zip(s[:-2], s[1:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(s[-2], s[-1]))
    else:
        c, h, w = spec["shape"]
        model = nn.Sequential(nn.Conv2d(c, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(32 * (h // 4) * (w // 4), spec["classes"]))
    dev = torch.device(device if device.startswith("cuda") else "cpu")
    model.to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    x, y = (torch.from_numpy(a).to(dev) for a in _inputs(spec))
    loss_fn = nn.functional.cross_entropy
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    if precision == "fp16":
        scaler = torch.amp.GradScaler(dev.type)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.type, dtype=torch.float16):
                loss = loss_fn(model(x), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        step()      # an autocast this PyTorch lacks (float16 on its CPU) fails here, not timed
        return step, sync

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step, sync


# -- the BLAS floor: the step's GEMMs (and the CNN's im2col copies) alone --------------------
def floor_ops(spec) -> list[dict]:
    """The matrix products (and, for a CNN, the im2col/col2im copies) that one gpunet CPU
    training step of ``spec`` issues, with their shapes and operand layouts, as a list of
    ``{"op", "what", ...}``. ``op`` is one of

    * ``"gemm"``: ``A @ B`` with ``A`` stored C-contiguous as ``a`` (used transposed when
      ``ta``), likewise ``B`` as ``b``/``tb`` (``"NT"`` = ``x @ W.T`` on a weight ``(out, in)``);
    * ``"chunked_gemm"``: a convolution's weight gradient as ``gpunet.functional.conv``
      computes it: ``cols (K, L)`` and ``d2 (O, L)`` cut into ``chunks`` column blocks, one
      batched GEMM ``cols_b @ d2_b.T`` over strided views (no copies), then the sum over
      blocks;
    * ``"im2col"``: ``x (C, H, W, N)`` (CHWN, as the previous layer leaves it) into
      ``cols (C*k*k + 1, H*W*N)`` (the last row ones) of a stride-1 "same" ``k``×``k``
      convolution, by ``k*k`` shifted copies of the flattened planes, as gpunet does it;
    * ``"col2im"``: its adjoint, one copy and ``k*k - 1`` shifted adds (:func:`_floor_copies`).

    These are what NumPy's BLAS and memory passes cannot do faster whatever gpunet does
    around them; :func:`floor_step` runs them in NumPy or PyTorch alike.
    """
    n = spec["batch"]
    ops = []

    def dense(a, b, first, x_batch_last=False):
        # x_batch_last: x is (n, a) F-ordered, i.e. (a, n) memory used transposed (a
        # flattened batch-last convolution output)
        xa = {"a": (a, n), "ta": True} if x_batch_last else {"a": (n, a), "ta": False}
        ops.append({"op": "gemm", "what": f"dense {a}->{b} forward x @ W.T", **xa,
                    "b": (b, a), "tb": True})
        ops.append({"op": "gemm", "what": f"dense {a}->{b} dW = dy.T @ x", "a": (n, b), "ta": True,
                    "b": xa["a"], "tb": xa["ta"]})
        if not first:
            ops.append({"op": "gemm", "what": f"dense {a}->{b} dx = dy @ W", "a": (n, b), "ta": False,
                        "b": (b, a), "tb": False})

    if spec["kind"] == "mlp":
        s = spec["sizes"]
        for i, (a, b) in enumerate(zip(s[:-1], s[1:])):
            dense(a, b, i == 0)
        return ops
    from .functional.conv import FWD_CHUNK_MAX_K, _chunks
    c, h, w = spec["shape"]
    for i, (ci, co) in enumerate(((c, 16), (16, 32))):
        hh, ww = h >> i, w >> i
        k = ci * 9 + 1                                   # + the ones row that carries the bias
        length = n * hh * ww
        chunks = _chunks(n, length)
        ops.append({"op": "im2col", "what": f"conv{i + 1} im2col", "x": (ci, hh, ww, n), "k": 3})
        fwd = {"op": "gemm", "what": f"conv{i + 1} forward [W|b] @ cols", "a": (co, k), "ta": False,
               "b": (k, length), "tb": False}
        if k <= FWD_CHUNK_MAX_K and chunks > 1:        # a thin K: column chunks, one batched call
            fwd.update(what=fwd["what"] + f" in {chunks} column chunks", chunks=chunks)
        ops.append(fwd)
        ops.append({"op": "chunked_gemm", "what": f"conv{i + 1} dW = d2 @ cols.T", "cols": (k, length),
                    "d2": (co, length), "chunks": chunks})
        if i > 0:
            ops.append({"op": "gemm", "what": f"conv{i + 1} dcols = W.T @ d2", "a": (co, k - 1), "ta": True,
                        "b": (co, length), "tb": False})
            ops.append({"op": "col2im", "what": f"conv{i + 1} col2im", "x": (ci, hh, ww, n), "k": 3})
    # Flatten of the last pooling's CHWN output is a view: (N, C*H*W) F-ordered
    dense(32 * (h // 4) * (w // 4), spec["classes"], False, x_batch_last=True)
    return ops


def floor_step(spec, framework):
    """``(step, sync)`` running :func:`floor_ops` once per call in ``framework`` ("numpy"
    or "torch") on fixed random float32 operands (outputs allocated per call, as in a step)."""
    import numpy
    rng = numpy.random.default_rng(0)
    ops = floor_ops(spec)
    if framework == "torch":
        import torch
        new = lambda shape: torch.from_numpy(rng.standard_normal(shape, dtype=numpy.float32))  # noqa: E731
        empty = lambda shape: torch.empty(shape, dtype=torch.float32)                          # noqa: E731
        mm = lambda a, b, **kw: torch.matmul(a, b, **kw)                                        # noqa: E731
        t = lambda a: a.transpose(-1, -2)                                                       # noqa: E731
        perm = lambda a, order: a.permute(*order)                                               # noqa: E731
        bsum = lambda a: a.sum(dim=0)                                                           # noqa: E731
    else:
        new = lambda shape: rng.standard_normal(shape, dtype=numpy.float32)                     # noqa: E731
        empty = lambda shape: numpy.empty(shape, numpy.float32)                                 # noqa: E731
        mm = lambda a, b, **kw: numpy.matmul(a, b, **kw)   # looked up per call (tests wrap it)   # noqa: E731
        t = lambda a: a.swapaxes(-1, -2)                                                        # noqa: E731
        perm = lambda a, order: a.transpose(*order)                                             # noqa: E731
        bsum = lambda a: a.sum(axis=0)                                                          # noqa: E731
    calls = []
    for op in ops:
        if op["op"] == "gemm":
            a, b = new(op["a"]), new(op["b"])
            a, b = (t(a) if op["ta"] else a), (t(b) if op["tb"] else b)
            if op.get("chunks"):        # b's column chunks, batched, into a C-contiguous result
                nb, (k, length), o = op["chunks"], op["b"], op["a"][0]
                b3 = perm(b.reshape(k, nb, length // nb), (1, 0, 2))
                calls.append(lambda a=a, b3=b3, nb=nb, o=o, length=length:
                             mm(a, b3, out=perm(empty((o, length)).reshape(o, nb, length // nb), (1, 0, 2))))
            else:
                calls.append(lambda a=a, b=b: mm(a, b))
        elif op["op"] == "chunked_gemm":
            (k, length), o, nb = op["cols"], op["d2"][0], op["chunks"]
            c3 = perm(new(op["cols"]).reshape(k, nb, length // nb), (1, 0, 2))
            d3t = perm(new(op["d2"]).reshape(o, nb, length // nb), (1, 2, 0))
            calls.append(lambda c3=c3, d3t=d3t: bsum(mm(c3, d3t)))
        else:
            calls.append(_floor_copies(op, new, empty))

    if framework == "torch":
        def step():
            with torch.no_grad():       # plain tensors (no autograd), and no graph either way
                for f in calls:
                    f()
    else:
        def step():
            for f in calls:
                f()
    return step, (lambda: None)


def _floor_copies(op, new, empty):
    """The im2col or col2im of a stride-1 "same" convolution as ``gpunet.functional.conv``
    does it on the CPU (batch-last planes ``(H, W, N)``; each kernel offset one shift of the
    flattened plane: long contiguous runs; the entries a shift wraps into the neighbouring
    row are zeroed), in indexing that NumPy arrays and PyTorch tensors share, so both
    libraries run the same passes over the same memory."""
    from .functional.conv import _col2im_planes, _im2col_planes, _shifts
    c, h, w, n = op["x"]
    kk = op["k"]
    hw, rows = h * w, c * kk * kk
    shifts = list(_shifts((kk, kk), (kk // 2, kk // 2), w, hw, n))
    if op["op"] == "im2col":
        x3 = new(op["x"]).reshape(c, 1, hw * n)
        cols = new((rows + 1, hw * n))           # + the ones row that carries the bias

        def im2col():
            cols[rows] = 1
            _im2col_planes(x3, cols[:rows].reshape(c, kk, kk, 1, hw * n), shifts, h, w, n)
        return im2col
    dcols = new((rows, hw * n))

    def col2im():
        dx3 = empty((c, h, w, n)).reshape(c, 1, hw * n)
        _col2im_planes(dcols.reshape(c, kk, kk, 1, hw * n), dx3, shifts, h, w, n)
        return dx3
    return col2im


def time_steps(step, sync, min_time, warmup, block=1, max_steps=20000):
    """Per-step seconds: ``warmup`` untimed steps, then blocks of ``block`` steps, each
    bracketed by ``sync()``, until ``min_time`` seconds (and at least 5 blocks) have been
    timed. A block's time is divided evenly among its steps."""
    for _ in range(warmup):
        step()
    sync()
    times, spent = [], 0.0
    clock = time.perf_counter
    while (spent < min_time or len(times) < 5 * block) and len(times) < max_steps:
        t0 = clock()
        for _ in range(block):
            step()
        sync()
        dt = clock() - t0
        spent += dt
        times.extend([dt / block] * block)
    return times


def machine_busy_seconds():
    """CPU seconds the whole machine has spent busy since boot (Linux ``/proc/stat``), or
    None elsewhere."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def timed_run(step, sync, min_time, warmup, block):
    """``time_steps`` plus how busy the rest of the machine was meanwhile: ``other_cpus``,
    the CPUs' worth of time other processes used during the run (None off Linux)."""
    for _ in range(warmup):
        step()
    sync()
    busy0, own0, wall0 = machine_busy_seconds(), os.times(), time.perf_counter()
    times = time_steps(step, sync, min_time, 0, block=block)
    busy1, own1, wall1 = machine_busy_seconds(), os.times(), time.perf_counter()
    other = None
    if busy0 is not None:
        own = (own1.user - own0.user) + (own1.system - own0.system)
        other = max(0.0, (busy1 - busy0) - own) / (wall1 - wall0)
    return times, other


# -- facts about the machine and the libraries -----------------------------------------------
def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_vendor() -> str:
    """The CPU vendor (``/proc/cpuinfo``'s ``vendor_id``: ``GenuineIntel``, ``AuthenticAMD``,
    …; on Arm its ``CPU implementer``), or ``platform.processor()``/``machine()`` elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("vendor_id", "CPU implementer")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_blas() -> list[dict]:
    """NumPy's BLAS as ``gpunet.threads`` finds it in this process: per library its API,
    version, threading, threads and, for OpenBLAS, the kernels it picked for this CPU
    (``openblas_get_corename``, e.g. ``SkylakeX``, ``Zen``, ``Haswell``)."""
    from . import threads
    out = []
    for lib in threads.blas_libraries():
        out.append({"api": lib.api, "version": lib.version, "threading": lib.threading,
                    "threads": lib.get_num_threads(), "path": lib.path, "kernels": lib.kernels or None})
    return out


def blas_summary(facts) -> dict:
    """``{"numpy": ..., "torch": ...}``: one line each on the BLAS a worker's matrix products
    ran on (library, version, kernels), from the workers' facts."""
    out = {}
    g = facts.get("gpunet", {})
    libs = g.get("numpy_blas") or []
    if libs:
        d = libs[0]
        name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(d["api"], d["api"])
        out["numpy"] = " ".join(v for v in (name, d.get("version")) if v) + \
            (f" ({d['kernels']} kernels)" if d.get("kernels") else "")
    elif isinstance(g.get("threadpools"), list) and g["threadpools"]:
        d = g["threadpools"][0]
        out["numpy"] = f"{d.get('internal_api')} {d.get('version')} ({d.get('architecture')} kernels)"
    elif g:
        out["numpy"] = "unknown (no BLAS library found by gpunet.threads)"
    t = facts.get("torch", {})
    if "torch_blas" in t:
        name = {"mkl": "MKL"}.get(t["torch_blas"], t["torch_blas"])
        out["torch"] = " ".join(v for v in (name, t.get("torch_blas_version")) if v) + \
            f" ({t.get('torch_cpu_capability')} kernels)"
    return out


ENV_KEYS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "CUPY_TF32", "GPUNET_DEVICE", "GPUNET_HOST_KERNELS")


def worker_facts(framework, device) -> dict:
    """Versions, BLAS and device of this (worker) process."""
    import numpy
    facts = {"framework": framework, "python": platform.python_version(), "numpy": numpy.__version__,
             "cpu": cpu_model(), "cpu_vendor": cpu_vendor(), "cpus": available_cpus(),
             "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ}}
    try:
        import threadpoolctl
        facts["threadpools"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture",
                                                          "num_threads", "filepath")}
                                for d in threadpoolctl.threadpool_info()]
    except ImportError:
        facts["threadpools"] = "threadpoolctl not installed"
    if framework == "gpunet":
        import gpunet
        facts["gpunet"] = gpunet.__version__
        facts["numpy_blas"] = numpy_blas()
        from gpunet import hostkernels
        facts["host_kernels"] = hostkernels.status()      # built here, before any timing
        if device.startswith("cuda"):
            from gpunet.backend import cupy_module
            cp = cupy_module()
            idx = int(device.split(":")[1]) if ":" in device else 0
            props = cp.cuda.runtime.getDeviceProperties(idx)
            name = props["name"]
            facts["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
            facts["cupy"] = cp.__version__
            facts["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
    else:
        import torch
        facts["torch"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
        try:
            import re
            cfg = torch.__config__.show()
            blas = re.search(r"BLAS_INFO=(\w+)", cfg)
            cap = re.search(r"CPU capability usage: (\w+)", cfg)
            facts["torch_blas"] = blas.group(1) if blas else "unknown"
            facts["torch_cpu_capability"] = cap.group(1) if cap else "unknown"
            mkl = re.search(r"Math Kernel Library Version ([\d.]+)", cfg)
            if mkl:
                facts["torch_blas_version"] = mkl.group(1)
        except Exception as e:  # a build without __config__: say so, do not guess
            facts["torch_blas"] = f"unknown ({type(e).__name__})"
        if device.startswith("cuda"):
            facts["gpu"] = torch.cuda.get_device_name(torch.device(device))
            facts["torch_cuda"] = torch.version.cuda
    return facts


# -- the worker: one framework, one process ----------------------------------------------------
def _emit(obj):
    sys.stdout.write(RESULT_TAG + json.dumps(obj) + "\n")
    sys.stdout.flush()


def worker_main(argv) -> int:
    """A framework's worker: announce its facts, then serve requests read from stdin, one
    JSON object a line: ``{"model": NAME, "min_time": s, "warmup": n}`` times that model
    (built, and warmed up, on its first request) and answers with its step times;
    ``{"quit": true}`` or end of input stops it. ``--worker roofline`` measures the CUDA
    kernels once and exits."""
    p = argparse.ArgumentParser(prog="python -m gpunet.bench --worker")
    p.add_argument("--worker", choices=FRAMEWORKS + ("roofline",), required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    a = p.parse_args(argv)
    fw = a.worker
    if fw == "roofline":
        _emit({"roofline": roofline(a.device, quick=a.quick)})
        return 0
    if fw == "torch":
        import torch
        if a.threads:
            torch.set_num_threads(a.threads)
        if a.device.startswith("cuda") and not torch.cuda.is_available():
            _emit({"error": f"this PyTorch ({torch.__version__}) sees no CUDA device"})
            return 0
    else:
        from gpunet.backend import resolve_device
        a.device = resolve_device(a.device)
        if a.threads:   # OpenBLAS caps OPENBLAS_NUM_THREADS at the CPU count; torch's count is not capped
            from gpunet import threads
            try:
                threads.set_num_threads(a.threads)
            except RuntimeError:    # no BLAS gpunet can drive: the environment's count stands
                pass
    _emit({"facts": worker_facts(fw, a.device)})
    build = gpunet_step if fw == "gpunet" else torch_step
    floor_fw = "numpy" if fw == "gpunet" else "torch"
    block = 10 if a.device.startswith("cuda") else 1
    built = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req.get("quit"):
            break
        name, part = req["model"], req.get("part", "step")
        key = (name, part)
        warmup = 0
        if key not in built:
            try:
                if part == "floor":
                    built[key] = floor_step(ALL_MODELS[name], floor_fw)
                else:   # "step" at --precision; "fp32": the float32 step beside an fp16 one
                    built[key] = build(ALL_MODELS[name], a.device,
                                       a.precision if part == "step" else "fp32")
            except (ImportError, AttributeError) as e:      # a layer this checkout lacks
                built[key] = f"{type(e).__name__}: {e}"
            except RuntimeError as e:   # e.g. an autocast dtype this PyTorch has not on the CPU
                built[key] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            warmup = req["warmup"]
        if isinstance(built[key], str):
            _emit({"model": name, "part": part, "error": built[key]})
            continue
        step, sync = built[key]
        times, other = timed_run(step, sync, req["min_time"], warmup, block)
        _emit({"model": name, "part": part, "step_times_s": times, "median_s": statistics.median(times),
               "other_cpus": other})
    return 0


def _worker_env(threads, unset_openblas):
    import gpunet
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(gpunet.__file__)))
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[k] = str(threads)
    if unset_openblas:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


class Worker:
    """One framework's process (``python -m gpunet.bench --worker FRAMEWORK``), kept alive
    across rounds so that alternating costs no start-up; idle, it blocks on its stdin."""

    def __init__(self, framework, device, threads, env, quick=False, precision="fp32"):
        self.framework = framework
        cmd = [sys.executable, "-m", "gpunet.bench", "--worker", framework, "--device", device,
               "--threads", str(threads), "--precision", precision] + (["--quick"] if quick else [])
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.hello = self._read()          # {"facts": ...} or {"error": ...}

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith(RESULT_TAG):
                return json.loads(line[len(RESULT_TAG):])
        err = self.proc.stderr.read()
        code = self.proc.wait()
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise RuntimeError(f"gpunet bench: the {self.framework} worker stopped (exit {code}):\n{tail}")

    def time(self, model, min_time, warmup, part="step"):
        self.proc.stdin.write(json.dumps({"model": model, "part": part, "min_time": min_time,
                                          "warmup": warmup}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def run_roofline(device, threads, env, quick):
    cmd = [sys.executable, "-m", "gpunet.bench", "--worker", "roofline", "--device", device,
           "--threads", str(threads)] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])["roofline"]
    tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
    raise RuntimeError(f"gpunet bench: the CUDA kernel timing failed (exit {proc.returncode}):\n{tail}")


def _find_gpu_check_timer(cp):
    """``timer(fn) -> seconds`` built on ``benchmarks/gpu_check.py``'s CUDA-event timing
    (``median_ms`` with ``cupy_timer``) when this is a source checkout that has it, else None."""
    import gpunet
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(gpunet.__file__))),
                        "benchmarks", "gpu_check.py")
    if not os.path.exists(path):
        return None
    spec = importlib.util.spec_from_file_location("_gpunet_gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not (callable(getattr(mod, "median_ms", None)) and callable(getattr(mod, "cupy_timer", None))):
        return None

    def timer(fn, repeat=20, warmup=3):
        return mod.median_ms(*mod.cupy_timer(cp), fn, [()], warmup, repeat) * 1e-3
    return timer


def cuda_event_time(fn, repeat=20, warmup=3):
    """Median seconds of ``fn()`` on the current CUDA stream, timed with CUDA events."""
    from gpunet.backend import require_cuda
    cp = require_cuda()
    for _ in range(warmup):
        fn()
    start, stop = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(repeat):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) * 1e-3)
    return statistics.median(times)


def roofline(device="cuda", quick=False) -> dict:
    """Achieved bandwidth of each fused kernel over the device copy bandwidth.

    Bytes counted are the least each kernel must move (every input read once, every output
    written once), so the fraction is a lower bound of how close it gets to the roofline.
    """
    import numpy
    from gpunet.backend import require_cuda, resolve_device
    from gpunet import cuda as gcuda, random as grandom
    device = resolve_device(device)
    cp = require_cuda(int(device.split(":")[1]) if ":" in device else 0)
    timer = _find_gpu_check_timer(cp)
    timer_name = "benchmarks/gpu_check.py median_ms" if timer is not None else "gpunet.bench.cuda_event_time"
    if timer is None:
        timer = cuda_event_time
    f4 = 4
    n = (1 << 25) if quick else (1 << 26)          # elements: 128 / 256 MiB of float32, > L2
    rng = cp.random.default_rng(0)
    src = rng.standard_normal(n, dtype=cp.float32)
    dst = cp.empty_like(src)
    copy_s = timer(lambda: cp.copyto(dst, src))
    copy_bw = 2 * n * f4 / copy_s
    rows = []

    def add(name, fn, nbytes, shape):
        s = timer(fn)
        rows.append({"kernel": name, "shape": list(shape), "seconds": s, "bytes": nbytes,
                     "bandwidth_Bps": nbytes / s, "fraction_of_copy": nbytes / s / copy_bw})

    rows_c = 1000
    logits = rng.standard_normal((n // rows_c, rows_c), dtype=cp.float32)
    labels = cp.asarray(numpy.random.default_rng(0).integers(0, rows_c, n // rows_c))
    add("softmax_xent", lambda: gcuda.softmax_xent(logits, labels), 2 * logits.size * f4 + labels.size * 8,
        logits.shape)
    x = src.reshape(n // (64 * 32 * 32), 64, 32, 32)
    gamma, beta = cp.ones(64, cp.float32), cp.zeros(64, cp.float32)
    y, mean, var, inv_std = gcuda.batchnorm_forward(x, gamma, beta, 1e-5)
    add("batchnorm_forward", lambda: gcuda.batchnorm_forward(x, gamma, beta, 1e-5), 2 * x.size * f4, x.shape)
    add("batchnorm_backward", lambda: gcuda.batchnorm_backward(y, x, gamma, mean, inv_std),
        3 * x.size * f4, x.shape)
    k1, k2 = grandom.keys(1, 0)
    thr = grandom.keep_threshold(0.5)
    add("dropout_forward", lambda: gcuda.dropout_forward(src, k1, k2, thr, 2.0), 2 * n * f4, src.shape)
    add("dropout_backward", lambda: gcuda.dropout_backward(src, k1, k2, thr, 2.0), 2 * n * f4, src.shape)
    return {"timer": timer_name, "copy_bandwidth_Bps": copy_bw, "copy_bytes": 2 * n * f4, "kernels": rows}


# -- the parent: rounds, table, JSON ---------------------------------------------------------
def _torch_missing_reason():
    if importlib.util.find_spec("torch") is None:
        return (f"PyTorch is not installed in this Python ({sys.executable}); "
                "pip install torch to compare. Reporting gpunet alone.")
    return None


def _summarize(per_run_times, busy, batch, error=None) -> dict:
    """One framework's runs of one model (or of its floor): the median over the quiet runs
    when at least half are quiet, else over all."""
    per_run = [statistics.median(t) for t in per_run_times]
    if not per_run:
        return {"error": error or "no result"}
    quiet = [t for t, o in zip(per_run, busy) if o is None or o <= BUSY_CPUS]
    used = quiet if len(quiet) * 2 >= len(per_run) and quiet else per_run
    med = statistics.median(used)
    return {"median_s": med, "samples_per_s": batch / med, "runs": len(per_run), "quiet_runs": len(quiet),
            "median_over": len(used), "best_run_median_s": min(per_run), "run_medians_s": per_run,
            "other_cpus": busy, "step_times_s": per_run_times}


def format_table(report) -> str:
    has_torch = any("torch" in m and m["torch"].get("median_s") for m in report["models"].values())
    head = f"{'model':<20} {'batch':>5}  {'device':<8} {'gpunet ms':>10} {'gpunet samples/s':>17}"
    if has_torch:
        head += f" {'torch ms':>9} {'torch samples/s':>16} {'ratio':>6}"
    has_floor = any(m.get("floor", {}).get("ratio") for m in report["models"].values())
    if has_floor:
        head += f" {'floor ms np/torch':>18} {'floor':>6} {'of floor':>8}"
    lines = [head, "-" * len(head)]
    for name, m in report["models"].items():
        g = m.get("gpunet", {})
        if not g.get("median_s"):
            lines.append(f"{name:<20} {m['batch']:>5}  {report['device']:<8} skipped: {g.get('error', 'no result')}")
            continue
        row = (f"{name:<20} {m['batch']:>5}  {report['device']:<8} {g['median_s'] * 1e3:>10.3f} "
               f"{g['samples_per_s']:>17,.0f}")
        t = m.get("torch", {})
        if has_torch and t.get("median_s"):
            row += f" {t['median_s'] * 1e3:>9.3f} {t['samples_per_s']:>16,.0f} {m['ratio']:>5.2f}x"
        elif has_torch:
            row += f" {'-':>9} {'-':>16} {'-':>6}"
        fl = m.get("floor", {})
        if has_floor and fl.get("ratio"):
            ms = f"{fl['numpy']['median_s'] * 1e3:.3f}/{fl['torch']['median_s'] * 1e3:.3f}"
            of = f"{m['of_floor']:>7.2f}x" if "of_floor" in m else f"{'-':>8}"
            row += f" {ms:>18} {fl['ratio']:>5.2f}x {of}"
        elif has_floor:
            row += f" {'-':>18} {'-':>6} {'-':>8}"
        lines.append(row)
    if has_torch:
        lines.append("ratio = PyTorch step time / gpunet step time (above 1: gpunet is faster); "
                     f"median of {report['rounds']} alternating runs per framework.")
    else:                       # gpunet alone: no ratio column, nothing alternates
        lines.append(f"median of {report['rounds']} runs.")
    if has_floor:
        lines.append("floor = the same ratio for the step's GEMMs (and the CNN's im2col/col2im copies) alone, "
                     "NumPy against PyTorch: what this BLAS allows; of floor = ratio / floor "
                     "(1.00x: gpunet adds no more around its GEMMs than PyTorch does).")
        per_round = [f"{name} {m['of_floor_round_median']:.2f}x" for name, m in report["models"].items()
                     if "of_floor_round_median" in m]
        if per_round:
            lines.append("of floor, median over rounds of each round's ratio / floor (steadier where the "
                         "host's speed swings between runs): " + ", ".join(per_round))
    if report.get("blas"):
        lines.append(f"CPU: {report.get('cpu_vendor', '?')} {report['cpu']}; BLAS: "
                     + "; ".join(f"{k} {v}" for k, v in report["blas"].items()))
    busy = [(name, fw, m[fw]["runs"] - m[fw]["quiet_runs"], m[fw]["runs"], m[fw]["median_over"])
            for name, m in report["models"].items() for fw in FRAMEWORKS
            if m.get(fw, {}).get("runs") and m[fw]["quiet_runs"] < m[fw]["runs"]]
    busy += [(f"{name} floor", lib, fl[lib]["runs"] - fl[lib]["quiet_runs"], fl[lib]["runs"],
              fl[lib]["median_over"])
             for name, m in report["models"].items() for fl in [m.get("floor", {})]
             for lib in ("numpy", "torch") if fl.get(lib, {}).get("runs") and fl[lib]["quiet_runs"] < fl[lib]["runs"]]
    if busy:
        lines.append(f"machine busy: other processes used more than {BUSY_CPUS} CPU during "
                     + "; ".join(f"{b} of {n} {fw} runs of {name}" for name, fw, b, n, _ in busy)
                     + ". Medians use the quiet runs where at least half are quiet, else all runs"
                     " (the JSON has each run); rerun on an idle machine for clean figures.")
    return "\n".join(lines)


def format_precision(report) -> str:
    """The fp16 run's second table: each framework's fp32 and fp16 step and the speed-up."""
    fws = [fw for fw in FRAMEWORKS if any(fw in m.get("fp32", {}) for m in report["models"].values())]
    head = f"{'model':<20}" + "".join(f" {fw + ' fp32 ms':>15} {fw + ' fp16 ms':>15} {'fp16 speed-up':>13}"
                                      for fw in fws)
    lines = [head, "-" * len(head)]

    def ms(d):
        return f"{d['median_s'] * 1e3:.3f}" if d.get("median_s") else "-"
    for name, m in report["models"].items():
        row = f"{name:<20}"
        for fw in fws:
            sp = m.get("fp16_speedup", {}).get(fw)
            row += (f" {ms(m.get('fp32', {}).get(fw, {})):>15} {ms(m.get(fw, {})):>15} "
                    + (f"{sp:>12.2f}x" if sp else f"{'-':>13}"))
        lines.append(row)
    lines.append("fp16 speed-up = the framework's fp32 step time / its fp16 step time (same worker, "
                 "alternating); the first table's ratio compares the fp16 steps.")
    errs = {f"{fw} {name}{' fp32' if part else ''}": d["error"] for name, m in report["models"].items()
            for part, src in (("", m), ("fp32", m.get("fp32", {}))) for fw in fws
            for d in [src.get(fw, {})] if d.get("error")}
    lines += [f"{k}: not measured ({v})" for k, v in errs.items()]
    return "\n".join(lines)


MODEL_TITLES = {
    "mlp-784-128-10": "MLP 784-128-10 (ReLU)",
    "mlp-784-1024x2-10": "MLP 784-1024-1024-10 (ReLU)",
    "cnn-28x28": "CNN 28×28 (conv3×3-16, pool, conv3×3-32, pool, dense)",
}


def format_markdown(report) -> str:
    """The results as a README table: model, batch, device, samples/s both ways, ratio."""
    facts = report["facts"]
    if report["device"].startswith("cuda"):
        dev = facts.get("gpunet", {}).get("gpu", report["device"])
    else:
        dev = f"CPU, {report['threads']} thread{'s' if report['threads'] > 1 else ''}"
    has_torch = any(m.get("torch", {}).get("median_s") for m in report["models"].values())
    has_floor = any(m.get("floor", {}).get("ratio") for m in report["models"].values())
    lines = ["| model | batch | device | gpunet samples/s |" + (" PyTorch samples/s | ratio |" if has_torch else "")
             + (" floor | of floor |" if has_floor else ""),
             "|---|---:|---|---:|" + ("---:|---:|" if has_torch else "") + ("---:|---:|" if has_floor else "")]
    for name, m in report["models"].items():
        g, t = m.get("gpunet", {}), m.get("torch", {})
        if not g.get("median_s"):
            continue
        row = f"| {MODEL_TITLES.get(name, name)} | {m['batch']} | {dev} | {g['samples_per_s']:,.0f} |"
        if has_torch:
            row += (f" {t['samples_per_s']:,.0f} | {m['ratio']:.2f}× |" if t.get("median_s") else " – | – |")
        if has_floor:
            fl = m.get("floor", {})
            row += f" {fl['ratio']:.2f}× |" if fl.get("ratio") else " – |"
            row += f" {m['of_floor']:.2f} |" if "of_floor" in m else " – |"
        lines.append(row)
    versions = ", ".join(f"{k} {facts[fw][k]}" for fw, k in (("gpunet", "numpy"), ("gpunet", "cupy"), ("torch", "torch"))
                         if k in facts.get(fw, {}))
    lines.append("")
    blas = "; ".join(f"{k}'s BLAS {v}" for k, v in report.get("blas", {}).items())
    hk = facts.get("gpunet", {}).get("host_kernels")
    if hk and not report["device"].startswith("cuda"):
        blas += ("; " if blas else "") + ("gpunet's compiled CPU kernels " +
                                          ("on" if hk.startswith("on") else "off"))
    lines.append(f"{report.get('cpu_vendor', '')} {report['cpu']}; {versions}" + (f"; {blas}" if blas else "")
                 + ("; ratio = PyTorch step time / gpunet step time; " if has_torch else "; ")
                 + ("floor = the same ratio for the step's GEMMs (and im2col/col2im copies) alone; "
                    "of floor = ratio / floor; " if has_floor else "")
                 + f"median of {report['rounds']}{' alternating' if has_torch else ''} runs; "
                 + f"`{report['command']}`")
    return "\n".join(lines)


def format_roofline(rf) -> str:
    lines = [f"fused kernels vs device copy bandwidth {rf['copy_bandwidth_Bps'] / 1e9:,.0f} GB/s "
             f"(timer: {rf['timer']})",
             f"{'kernel':<20} {'shape':<22} {'us':>9} {'GB/s':>8} {'of copy':>8}"]
    for r in rf["kernels"]:
        lines.append(f"{r['kernel']:<20} {str(tuple(r['shape'])):<22} {r['seconds'] * 1e6:>9.1f} "
                     f"{r['bandwidth_Bps'] / 1e9:>8,.0f} {r['fraction_of_copy']:>7.0%}")
    return "\n".join(lines)


def _command_line(args) -> str:
    """``gpunet bench`` with the options that reproduce this run (defaults left out)."""
    parts = ["gpunet", "bench"]
    if args.device != "cpu":
        parts += ["--device", args.device]
    if args.compare:
        parts += ["--compare", args.compare]
    if args.quick:
        parts.append("--quick")
    if list(args.models) != list(MODELS):
        parts += ["--models", *args.models]
    for flag, v in (("--rounds", args.rounds), ("--min-time", args.min_time), ("--threads", args.threads)):
        if v is not None:
            parts += [flag, str(v)]
    if getattr(args, "precision", "fp32") != "fp32":
        parts += ["--precision", args.precision]
    if args.unset_openblas_env:
        parts.append("--unset-openblas-env")
    if getattr(args, "no_floor", False):
        parts.append("--no-floor")
    return " ".join(parts)


def add_arguments(p):
    """Add ``gpunet bench``'s options to an argparse parser."""
    p.add_argument("--device", default="cpu",
                   help="cpu (default), cuda, cuda:N, auto, or sim (counts GPU costs instead of timing)")
    p.add_argument("--compare", choices=("torch",), default=None,
                   help="also run PyTorch on the same models, in its own processes")
    p.add_argument("--quick", action="store_true", help="3 short rounds (under a minute)")
    p.add_argument("--models", nargs="+", choices=list(ALL_MODELS), default=list(MODELS),
                   help="default: " + " ".join(MODELS))
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="default: fp32; fp16: every step under gpunet.amp.MixedPrecision + GradScaler (PyTorch: "
                        "autocast(float16) + GradScaler), each beside the same framework's fp32 "
                        "step, alternating; with --device sim: the fp16 step's GPU costs")
    # checked as they are parsed (a NaN or infinite --min-time, or --threads 0 under
    # --profile, used to be taken: the first timed nothing, the second ended in a traceback)
    from .cli import _int_at_least, _positive_float, user_path
    p.add_argument("--rounds", type=_int_at_least(1), default=None, help=f"runs per framework (default {FULL[0]}, quick {QUICK[0]})")
    p.add_argument("--min-time", type=_positive_float, default=None,
                   help=f"seconds timed per model per run (default {FULL[1]}, quick {QUICK[1]})")
    p.add_argument("--threads", type=_int_at_least(1), default=None, metavar="N",
                   help="CPU threads for both frameworks (default: all available; more than the CPUs "
                        "is allowed, with a note on stderr)")
    p.add_argument("--unset-openblas-env", action="store_true",
                   help="remove OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE from the workers' environment")
    p.add_argument("--no-roofline", action="store_true", help="skip the CUDA kernel bandwidth table")
    p.add_argument("--profile", action="store_true",
                   help="instead of comparing: where a CPU step's time goes (per layer forward/backward, "
                        "loss, zero_grad, optimizer; GEMM vs the rest), in this process")
    p.add_argument("--no-floor", action="store_true",
                   help="with --compare torch on the CPU: skip timing the steps' GEMMs alone (the floor)")
    p.add_argument("--json", metavar="PATH", type=user_path, default=None, help="write the raw numbers here")
    p.add_argument("--markdown", action="store_true", help="also print the results as a README table")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--distributed", action="store_true",
                   help="under mpiexec -n N: data-parallel samples/s per process, scaling efficiency "
                        "against one process with all the threads, and the share of the all-reduce "
                        "hidden behind backward (gpunet.distributed.bench)")
    return p


def add_parser(subparsers):
    """Register ``bench`` on an argparse subparsers object (for ``gpunet.cli``)."""
    p = subparsers.add_parser("bench", help="training throughput (and CUDA kernel bandwidth)",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run)
    return p


# What each mode of ``gpunet bench`` reads besides --models, --json, --quick (a hint
# that never changes what is measured) and --no-progress, which every mode takes; any
# other option given with it is refused (--precision fp16 is refused by --distributed
# and --profile on its own).
_MODE_OPTIONS = {
    "--device sim": ("--precision",),
    "--distributed": ("--rounds", "--min-time", "--threads"),
    "--profile": ("--min-time", "--threads"),
}
# destination, default of the options a mode may not read
_OPTION_DEFAULTS = {"--compare": ("compare", None), "--rounds": ("rounds", None), "--min-time": ("min_time", None),
                    "--threads": ("threads", None), "--unset-openblas-env": ("unset_openblas_env", False),
                    "--no-roofline": ("no_roofline", False), "--profile": ("profile", False),
                    "--no-floor": ("no_floor", False), "--markdown": ("markdown", False),
                    "--distributed": ("distributed", False)}


def _check_mode_options(args, device):
    """``SystemExit`` (one line) naming the options the chosen mode would silently ignore
    (``--compare torch --profile`` used to profile gpunet alone, and print no comparison)."""
    mode = ("--device sim" if device == "sim" else "--distributed" if getattr(args, "distributed", False)
            else "--profile" if getattr(args, "profile", False) else None)
    if mode is None:
        return
    ignored = [flag for flag, (dest, default) in _OPTION_DEFAULTS.items()
               if flag != mode and flag not in _MODE_OPTIONS[mode]
               and getattr(args, dest, default) not in (default,)]
    if ignored:
        raise SystemExit(f"gpunet bench: error: {', '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} "
                         f"not apply to {mode} (it reads --models, --json"
                         f"{''.join(', ' + o for o in _MODE_OPTIONS[mode])}); leave "
                         f"{'it' if len(ignored) == 1 else 'them'} out")


def _write_json(path, obj):
    """``--json PATH``: ``obj`` written to a temporary file beside ``path`` and renamed over
    it, as ``gpunet.save`` writes. The path is checked before the benchmarks run, but it can
    still fail after them (its folder removed meanwhile, a full disk, a read-only mount):
    then one line on stderr and status 2 (``SystemExit``), not a traceback, and an older
    file at ``path`` is left whole; the results are on screen already."""
    from .checkpoint import _temporary
    text = json.dumps(obj, indent=1)
    tmp = None
    try:
        fd, tmp = _temporary(os.path.abspath(path))
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        reason = " ".join(str(e).split())
        raise SystemExit(f"gpunet bench: error: --json {path}: {reason} (the results above were "
                         f"not written)") from None
    finally:                # also on Ctrl-C: no temporary file is left beside the path
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
    print(f"raw numbers written to {path}")


def run(args) -> int:
    from tqdm.auto import tqdm
    from gpunet.backend import _parse, resolve_device
    if getattr(args, "json", None):         # before the benchmarks, not after them
        from .cli import UserError, _check_writable
        try:
            _check_writable("--json", args.json, prog="gpunet bench")
        except UserError as e:      # SystemExit(str): one line under `python -m gpunet.cli` too
            raise SystemExit(str(e)) from None
    device = args.device
    # the options a mode would ignore are refused before the device is asked for (--device
    # sim --compare torch where there is no C++ compiler named the compiler, not the options)
    try:
        named = _parse(device)[0] if device.strip().lower() != "auto" else None
    except ValueError:          # an unknown name: resolve_device's message below
        named = None
    if named is not None:
        _check_mode_options(args, named)
    try:
        device = resolve_device(device)
    except (RuntimeError, ValueError) as e:    # an unknown device, or why there is no CUDA
        from .cli import _device_message
        where = "" if device == "auto" else f"--device {device}: "   # auto: GPUNET_DEVICE's fault
        print(f"gpunet bench: error: {where}{_device_message(e)}", file=sys.stderr)
        return 2
    _check_mode_options(args, device)
    if device == "sim":
        return run_sim(args)
    precision = getattr(args, "precision", "fp32")
    if precision != "fp32" and (getattr(args, "distributed", False) or args.profile):
        print("gpunet bench: error: --precision fp16 times the single-process steps; it does not "
              "combine with --distributed or --profile", file=sys.stderr)
        return 2
    if not getattr(args, "distributed", False):      # run_distributed notes it once, with its processes
        from .cli import threads_note
        threads_note("gpunet bench", args.threads)
    if getattr(args, "distributed", False):
        from .distributed.bench import run_distributed
        return run_distributed(args, device)
    if args.profile:
        return run_profile(args, device)
    rounds, min_time, warmup = QUICK if args.quick else FULL
    rounds = args.rounds if args.rounds is not None else rounds
    min_time = args.min_time if args.min_time is not None else min_time
    threads = args.threads if args.threads is not None else available_cpus()
    for k, v in (("rounds", rounds), ("threads", threads), ("min-time", min_time)):
        if v <= 0:
            raise SystemExit(f"gpunet bench: error: --{k} must be positive, got {v}")
    frameworks = ["gpunet"]
    notes = []
    if precision == "fp16" and not device.startswith("cuda"):
        notes.append("fp16 on the CPU: NumPy has no float16 GEMM (gpunet computes float16 layers "
                     "in float32 on upcast copies) and CPUs without float16 arithmetic convert "
                     "too; these times test the policy, they say nothing about a GPU's tensor cores")
    if args.compare == "torch":
        why = _torch_missing_reason()
        if why:
            notes.append(why)
            print(f"gpunet bench: --compare torch: {why}", file=sys.stderr)
        else:
            frameworks.append("torch")
    env = _worker_env(threads, args.unset_openblas_env)
    models = list(dict.fromkeys(args.models))
    report = {"device": device, "rounds": rounds, "min_time_s": min_time, "warmup_steps": warmup,
              "threads": threads, "quick": bool(args.quick), "command": _command_line(args),
              "cpu": cpu_model(), "cpu_vendor": cpu_vendor(), "cpus": available_cpus(),
              "platform": platform.platform(),
              "openblas_env_unset": bool(args.unset_openblas_env),
              "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
              "step": f"forward + softmax-CE + backward + SGD(lr={LR}, momentum={MOMENTUM})"
                      + (" in fp16: gpunet MixedPrecision + GradScaler, PyTorch autocast(float16) + "
                         "GradScaler" if precision == "fp16" else ""),
              "precision": precision,
              "notes": notes, "facts": {}, "models": {}}
    parts = ("step", "floor", "fp32")
    runs = {fw: {(m, part): [] for m in models for part in parts} for fw in frameworks}
    others = {fw: {(m, part): [] for m in models for part in parts} for fw in frameworks}
    errors = {fw: {} for fw in frameworks}
    workers = {}
    rf = None
    bar = tqdm(total=rounds * len(frameworks) * len(models), desc="gpunet bench", unit="run",
               disable=args.no_progress, file=sys.stderr)
    try:
        for fw in frameworks:
            bar.set_postfix_str(f"starting {fw}")
            w = Worker(fw, device, threads, env, args.quick, precision)
            if "error" in w.hello:
                errors[fw]["*"] = w.hello["error"]
                w.close()
                bar.update(rounds * len(models))
                continue
            report["facts"][fw] = w.hello["facts"]
            workers[fw] = w
        # the floor needs both frameworks, and is a CPU (BLAS) measure of float32 GEMMs
        floor = (not args.no_floor and "torch" in workers and not device.startswith("cuda")
                 and precision == "fp32")
        report["floor"] = floor
        todo = [p for p in parts if p == "step" or (p == "floor" and floor)
                or (p == "fp32" and precision == "fp16")]
        if len(todo) > 1:
            bar.total += (len(todo) - 1) * rounds * len(workers) * len(models)
            bar.refresh()
        for r in range(rounds):
            for i, m in enumerate(models):
                live = [fw for fw in frameworks if fw in workers]
                order = live if (r + i) % 2 == 0 else live[::-1]
                for part in todo:
                    for fw in order:
                        bar.set_postfix_str(f"round {r + 1}/{rounds} {m} {fw}" + ("" if part == "step" else f" {part}"))
                        key = (m, part)
                        if key in errors[fw]:
                            res = {"error": errors[fw][key]}
                        else:
                            res = workers[fw].time(m, min_time, warmup, part)
                        if "error" in res:
                            errors[fw][key] = res["error"]
                        else:
                            runs[fw][key].append(res["step_times_s"])
                            others[fw][key].append(res["other_cpus"])
                        bar.update(1)
                        time.sleep(GAP_S)       # let the last run's spinning threads go idle
        for w in workers.values():
            w.close()
        if device.startswith("cuda") and not args.no_roofline:
            bar.set_postfix_str("CUDA kernels")
            rf = run_roofline(device, threads, env, args.quick)
    finally:
        for w in workers.values():
            w.close()
        bar.close()

    for m in models:
        spec = ALL_MODELS[m]
        entry = {"batch": spec["batch"], "spec": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()}}
        for fw in frameworks:
            entry[fw] = _summarize(runs[fw][(m, "step")], others[fw][(m, "step")], spec["batch"],
                                   errors[fw].get((m, "step")) or errors[fw].get("*"))
        if precision == "fp16":      # each framework's fp32 step, and fp16's speed-up over it
            entry["fp32"] = {fw: _summarize(runs[fw][(m, "fp32")], others[fw][(m, "fp32")], spec["batch"],
                                            errors[fw].get((m, "fp32")) or errors[fw].get("*"))
                             for fw in frameworks}
            entry["fp16_speedup"] = {fw: entry["fp32"][fw]["median_s"] / entry[fw]["median_s"]
                                     for fw in frameworks
                                     if entry["fp32"][fw].get("median_s") and entry[fw].get("median_s")}
        if entry.get("torch", {}).get("median_s") and entry["gpunet"].get("median_s"):
            entry["ratio"] = entry["torch"]["median_s"] / entry["gpunet"]["median_s"]
            entry["ratio_per_round"] = [t / g for g, t in zip(entry["gpunet"]["run_medians_s"],
                                                              entry["torch"]["run_medians_s"])]
        if report.get("floor"):
            fl = {"ops": [{k: list(v) if isinstance(v, tuple) else v for k, v in op.items()}
                          for op in floor_ops(spec)]}
            for fw, lib in (("gpunet", "numpy"), ("torch", "torch")):
                fl[lib] = _summarize(runs[fw][(m, "floor")], others[fw][(m, "floor")], spec["batch"],
                                     errors[fw].get((m, "floor")))
            if fl["numpy"].get("median_s") and fl["torch"].get("median_s"):
                fl["ratio"] = fl["torch"]["median_s"] / fl["numpy"]["median_s"]
                fl["ratio_per_round"] = [t / g for g, t in zip(fl["numpy"]["run_medians_s"],
                                                               fl["torch"]["run_medians_s"])]
                if "ratio" in entry:
                    entry["of_floor"] = entry["ratio"] / fl["ratio"]
                    # each round's own ratio / floor (its four timings are seconds apart): on a
                    # host that swings between a fast and a slow state, the medians above may
                    # come from different states; the median of these moves less
                    per = [r / f for r, f in zip(entry["ratio_per_round"], fl["ratio_per_round"])]
                    entry["of_floor_per_round"] = per
                    entry["of_floor_round_median"] = statistics.median(per)
                    # the share of gpunet's step that the floor's work takes
                    entry["floor_share"] = fl["numpy"]["median_s"] / entry["gpunet"]["median_s"]
            entry["floor"] = fl
        report["models"][m] = entry
    if rf is not None:
        report["roofline"] = rf
    report.setdefault("floor", False)
    report["blas"] = blas_summary(report["facts"])

    facts = report["facts"]
    hw = report["cpu"] if not device.startswith("cuda") else facts.get("gpunet", {}).get("gpu", device)
    libs = ", ".join(f"{k} {facts[fw][k]}" for fw, k in (("gpunet", "gpunet"), ("gpunet", "numpy"),
                                                         ("gpunet", "cupy"), ("torch", "torch"))
                     if k in facts.get(fw, {}))
    blas = facts.get("gpunet", {}).get("threadpools")
    if isinstance(blas, list):
        libs += "".join(f", numpy's {d['internal_api']} {d['version']} ({d['architecture']} kernels)" for d in blas
                        if d.get("internal_api") == "openblas")
    if "torch_blas" in facts.get("torch", {}):
        libs += f", torch's BLAS {facts['torch']['torch_blas']} ({facts['torch'].get('torch_cpu_capability')})"
    ob = {k: v for k, v in report["env"].items() if k.startswith("OPENBLAS_C") or k == "OPENBLAS_L2_SIZE"}
    print(f"gpunet bench on {device}: {hw}, {threads} thread(s); {libs}")
    print(f"OpenBLAS env: {ob or 'OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE not set'}"
          + (" (unset in the workers)" if args.unset_openblas_env else ""))
    if "host_kernels" in facts.get("gpunet", {}) and not device.startswith("cuda"):
        print(f"gpunet's compiled CPU kernels: {facts['gpunet']['host_kernels']}")
    for fw in frameworks:
        if "*" in errors[fw]:
            print(f"{fw}: {errors[fw]['*']}")
    for note in notes:
        print(note)
    print(format_table(report))
    if precision == "fp16":
        print(format_precision(report))
    if rf is not None:
        print(format_roofline(rf))
    if args.markdown:
        print()
        print(format_markdown(report))
    if args.json:
        _write_json(args.json, report)
    return 0


def run_profile(args, device) -> int:
    """``gpunet bench --profile``: :func:`profile` per model, on the CPU."""
    if device != "cpu":
        print(f"gpunet bench: error: --profile times NumPy steps on the CPU, not on {device}", file=sys.stderr)
        return 2
    threads = args.threads if args.threads is not None else available_cpus()
    from . import threads as blas_threads
    out = {}
    with blas_threads.limit(threads):
        print(f"gpunet bench --profile: {cpu_vendor()} {cpu_model()}, {threads} BLAS thread(s); "
              f"step = forward + softmax-CE + backward + SGD(lr={LR}, momentum={MOMENTUM})")
        for m in dict.fromkeys(args.models):
            prof = profile(ALL_MODELS[m], min_time=args.min_time if args.min_time is not None else
                           (0.5 if args.quick else 2.0))
            out[m] = prof
            print(format_profile(m, prof))
    if args.json:
        _write_json(args.json, {"device": "cpu", "profile": out, "cpu": cpu_model(), "cpu_vendor": cpu_vendor(),
                                "threads": threads})
    return 0


# -- the simulated device: GPU costs per step instead of times ----------------------------
SIM_KEYS = ("launches", "fused", "syncs", "h2d_bytes", "d2h_bytes", "allocs")


def sim_costs(models=tuple(MODELS), steps=2, precision="fp32") -> dict:
    """Per model, what one training step costs on a GPU, by the sim's counters.

    One warm-up step (kernel compilation, memoized buffers) is not counted; then ``steps``
    steps are, and each must cost the same (a step whose cost drifts is a leak: reported
    as ``ValueError``). ``precision="fp16"``: the MixedPrecision + GradScaler step. Returns ``{model: {"launches", "fused" (gpunet's own kernels),
    "syncs", "h2d_bytes", "d2h_bytes", "allocs", "kernels": {name: launches}}}``.
    """
    from gpunet import sim
    out = {}
    for m in models:
        step, _ = gpunet_step(ALL_MODELS[m], "sim", precision)
        step()
        per = []
        for _ in range(steps):
            sim.reset_counters()
            step()
            c = sim.counters()
            c["fused"] = sum(v for k, v in c["kernels"].items() if "<" in k)
            per.append({k: c[k] for k in SIM_KEYS} | {"kernels": c["kernels"]})
        if any(p != per[0] for p in per[1:]):
            raise ValueError(f"gpunet bench: {m}: the sim's per-step costs differ between "
                             f"steps: {per}")
        out[m] = per[0]
    return out


def format_sim_costs(costs) -> str:
    lines = [f"{'model':<20} {'launches':>9} {'fused':>6} {'syncs':>6} {'h2d bytes':>10} "
             f"{'d2h bytes':>10} {'allocs':>7}"]
    for m, c in costs.items():
        lines.append(f"{m:<20} {c['launches']:>9} {c['fused']:>6} {c['syncs']:>6} "
                     f"{c['h2d_bytes']:>10} {c['d2h_bytes']:>10} {c['allocs']:>7}")
    for m, c in costs.items():
        top = sorted(c["kernels"].items(), key=lambda kv: (-kv[1], kv[0]))[:4]
        lines.append(f"  {m}: most launched " + ", ".join(f"{k} x{v}" for k, v in top))
    return "\n".join(lines)


def run_sim(args) -> int:
    """``gpunet bench --device sim``: the GPU cost table of one training step per model."""
    models = list(dict.fromkeys(args.models))
    precision = getattr(args, "precision", "fp32")
    costs = sim_costs(models, precision=precision)
    print("gpunet bench on sim (the simulated CUDA device: GPU costs, not times), "
          f"per training step: forward + softmax-CE + backward + SGD(lr={LR}, momentum={MOMENTUM})"
          + (", fp16 (MixedPrecision + GradScaler)" if precision == "fp16" else ""))
    print(format_sim_costs(costs))
    print("launches: array ops as CuPy launches them (one per elementwise op, reduction, "
          "cuBLAS matmul) plus fused = gpunet's own kernels; syncs: host waits; "
          "bytes: host<->device copies")
    if args.json:
        _write_json(args.json, {"device": "sim", "command": _command_line(args), "precision": precision,
                                "models": costs})
    return 0


def main(argv=None) -> int:
    """``python -m gpunet.bench ARGS``: ``gpunet bench ARGS`` through ``gpunet.cli.main``, so
    that its errors are the command's (one line, status 2); ``--worker``: a timing worker."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--worker" in argv:
        return worker_main(argv)
    from .cli import main as cli_main
    return cli_main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(main())
