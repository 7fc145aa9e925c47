#!/usr/bin/env python3
"""One command for a GPU machine: tests, kernel correctness, kernel timings vs PyTorch.

    PYTHONPATH=. python benchmarks/gpu_check.py --out DIR

Needs CuPy (14, CUDA 13), PyTorch with CUDA and pytest; no network. Steps:

1. **compile**: builds every module of ``gpunet.cuda.KERNELS`` through CuPy/NVRTC (timed).
2. **tests**: ``python -m pytest -q tests`` in a subprocess (the ``xp`` fixture runs each
   test on NumPy and CuPy), with a time limit; output saved to ``DIR/pytest.txt``.
3. **correctness**: each launcher of ``gpunet.cuda`` against the NumPy reference ops of
   ``gpunet.functional`` (computed in float64 from the same inputs) on fresh random
   inputs (never zeros; the seed is printed and recorded), several shapes including
   non-multiples of 32 and of the 16-byte pack width, float32 and float64, every kernel
   variant (warp/block softmax, hard/soft/smoothed/ignored labels, packed/scalar paths,
   a misaligned view). Dropout must match bit for bit. One call per op also goes through
   the ``gpunet.functional`` op with CuPy inputs, checking its GPU branch.
4. **timing**: each fused op (forward + backward) at the shapes below, CUDA events around
   every call, warm-up first, the median of ``--iters`` calls, inputs rotated among
   enough copies to exceed 3x the L2 cache, against PyTorch eager on the same shapes:
   softmax-CE (8192, 32768), (65536, 10), (16384, 1000); BatchNorm NCHW (256, 64, 56, 56)
   and (256, 512, 7, 7); Dropout p=0.5 over 64M elements, all float32; and one training
   step of an MLP 784-4096-4096-10 at batch 1024 (SGD momentum), exact float32 on both. The device-to-device
   copy bandwidth of a 1 GiB buffer is measured too, and each op's achieved bandwidth —
   its compulsory traffic (every input read once, every output written once) over its
   time — is reported as a fraction of it. Then mixed precision (issue 14,
   :func:`run_fp16_timing`): the same fused ops on float16 tensors against the copy
   roofline and PyTorch, and the MLP 784-4096-4096-10 (batch 1024) and CNN (batch 256)
   training steps in fp16 (``MixedPrecision`` + ``GradScaler``) against PyTorch
   autocast(float16) + ``GradScaler``, each beside its fp32 step. Step 3 checks the
   float16 kernels too (:func:`check_half`).
5. **training throughput** (issue 12): samples/s of ``gpunet train``'s models on the
   embedded digits (the MLP 64-256-128-10 and ``--model cnn``, batch 64, Adam lr 1e-3,
   data resident on the device): gpunet ``Trainer.fit`` eager and with
   ``cuda_graph=True``, against PyTorch eager (default Adam), PyTorch ``Adam(fused=True)``
   and PyTorch with the whole step captured in a CUDA graph (``torch.cuda.graph``,
   ``Adam(capturable=True)``), each timed over its last epochs after warm-up epochs (wall
   clock, the device synchronized at both ends; no per-step host reads on either side).

Prints tables and writes ``DIR/gpu_check.json``. Exit status: 0 when the tests and every
correctness check pass, 1 otherwise, 2 when there is no usable GPU. Timings never decide
the exit status. Budget: well under 5 minutes on an H100 (``--pytest-timeout`` caps the
suite).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gpunet import backend  # noqa: E402
from gpunet import cuda as gcuda  # noqa: E402
from gpunet import random as grandom  # noqa: E402

F32, F64 = numpy.dtype(numpy.float32), numpy.dtype(numpy.float64)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description="gpunet GPU check: pytest suite, kernel-vs-NumPy correctness, and kernel "
                    "timings against PyTorch eager (needs a CUDA GPU, CuPy and PyTorch).",
        epilog="Run from the source tree: PYTHONPATH=. python benchmarks/gpu_check.py --out DIR")
    ap.add_argument("--out", type=Path, required=True,
                    help="directory for gpu_check.json and pytest.txt (created)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the pytest suite")
    ap.add_argument("--skip-timing", action="store_true", help="do not run the timings")
    ap.add_argument("--pytest-timeout", type=float, default=150.0,
                    help="seconds the pytest suite may take (default 150)")
    ap.add_argument("--iters", type=int, default=30, help="timed calls per op (default 30)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    ap.add_argument("--seed", type=int, default=None,
                    help="seed of the correctness inputs (default: fresh, printed)")
    ap.add_argument("--no-torch", action="store_true", help="time gpunet only")
    ap.add_argument("--skip-train", action="store_true", help="do not run the training throughput")
    ap.add_argument("--train-epochs", type=int, default=6,
                    help="epochs per training-throughput run, the first 2 untimed (default 6; "
                         "at least 2)")
    return ap.parse_args(argv)


# ---------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------

def table(rows, header):
    rows = [[str(c) for c in r] for r in rows]
    w = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h))
         for i, h in enumerate(header)]
    out = ["  ".join(str(h).ljust(x) for h, x in zip(header, w)), "  ".join("-" * x for x in w)]
    out += ["  ".join(c.ljust(x) for c, x in zip(r, w)) for r in rows]
    return "\n".join(out)


def close(got, ref, rtol, atol_scale):
    """(ok, max abs error, error in units of the tolerance) for host arrays."""
    got = numpy.asarray(got, dtype=numpy.float64)
    ref = numpy.asarray(ref, dtype=numpy.float64)
    if got.shape != ref.shape:
        return False, float("inf"), float("inf")
    if not numpy.all(numpy.isfinite(got)):
        return False, float("inf"), float("inf")
    scale = float(numpy.max(numpy.abs(ref))) if ref.size else 0.0
    tol = rtol * numpy.abs(ref) + atol_scale * max(scale, 1e-30)
    err = numpy.abs(got - ref)
    worst = float(numpy.max(err / tol)) if err.size else 0.0
    return worst <= 1.0, float(err.max()) if err.size else 0.0, worst


def _finite(v):
    """A float for the JSON report (strict JSON has no inf/nan)."""
    v = float(v)
    return v if numpy.isfinite(v) else str(v)


TOL = {F32: (1e-4, 1e-5), F64: (1e-10, 1e-12)}   # (rtol, atol relative to max |ref|)


# ---------------------------------------------------------------------------------------
# 1. compile
# ---------------------------------------------------------------------------------------

def compile_all(cp):
    rows = {}
    for f in gcuda.KERNELS:
        t0 = time.perf_counter()
        gcuda.module(f, cp.cuda.Device().id)
        rows[f] = time.perf_counter() - t0
    return rows


# ---------------------------------------------------------------------------------------
# 2. tests
# ---------------------------------------------------------------------------------------

def run_pytest(out_dir: Path, timeout: float):
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        text += f"\n[gpu_check] pytest stopped after {timeout:.0f} s\n"
        rc = "timeout"
    seconds = time.perf_counter() - t0
    (out_dir / "pytest.txt").write_text(text)
    summary = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    return {"returncode": rc, "seconds": round(seconds, 1), "summary": summary,
            "passed": rc == 0}


# ---------------------------------------------------------------------------------------
# 3. correctness: kernels vs the NumPy reference ops
# ---------------------------------------------------------------------------------------

def check_softmax_xent(cp, rng, results):
    from gpunet.functional.losses import softmax_cross_entropy as ref_op
    shapes = [(7, 5), (33, 10), (64, 256), (40, 257), (16, 1000), (9, 1024),  # warp kernels
              (5, 1025), (6, 4096), (3, 4099), (4, 32768)]                   # block kernels
    for dtype in (F32, F64):
        rtol, atol = TOL[dtype]
        for (N, C) in shapes:
            z = rng.normal(0.0, 3.0, size=(N, C)).astype(dtype)
            y = rng.integers(0, C, size=N).astype(numpy.int64)
            q = rng.random((N, C)) + 0.05
            q = (q / q.sum(axis=1, keepdims=True)).astype(dtype)
            ign = y.copy()
            ign[rng.random(N) < 0.3] = -100
            cases = [("hard", y, 0.0, None), ("hard eps=0.1", y, 0.1, None),
                     ("hard ignore=-100", ign, 0.0, -100), ("soft eps=0.1", q, 0.1, None)]
            for label, lab, eps, ii in cases:
                loss, dz = gcuda.softmax_xent(cp.asarray(z), cp.asarray(lab), eps, ii)
                rl, rdz = ref_op(z.astype(F64), lab.astype(F64) if lab.dtype.kind == "f" else lab,
                                 eps, ii)
                ok1, e1, w1 = close(float(loss.get()), rl, rtol, atol)
                ok2, e2, w2 = close(dz.get(), rdz, rtol, atol)
                ok = ok1 and ok2 and loss.dtype == dtype and dz.dtype == dtype and loss.ndim == 0
                results.append(("softmax_xent", f"{(N, C)} {label}", dtype.name, ok,
                                max(e1, e2), max(w1, w2)))
    # logits of +-1e4 stay finite, and the ±1e4 rows agree with the float64 reference
    for dtype in (F32, F64):
        z = rng.uniform(-1e4, 1e4, size=(37, 300)).astype(dtype)
        y = rng.integers(0, 300, size=37)
        loss, dz = gcuda.softmax_xent(cp.asarray(z), cp.asarray(y), 0.1)
        rl, rdz = ref_op(z.astype(F64), y, 0.1)
        ok1, e1, w1 = close(float(loss.get()), rl, *TOL[dtype])
        ok2, e2, w2 = close(dz.get(), rdz, *TOL[dtype])
        results.append(("softmax_xent", "(37, 300) logits ±1e4 eps=0.1", dtype.name,
                        ok1 and ok2, max(e1, e2), max(w1, w2)))
    # a bad label: flagged on the device without a sync, so the ValueError comes from the
    # read of the loss, not from the call. Reading it also clears the flag; a flag left
    # pending would make the next read, of an unrelated loss, raise it (and fail the check).
    from gpunet.cuda.softmax_xent import raise_label_error
    what = "label 3 of C=3 raises ValueError at the loss read"
    bad, _ = gcuda.softmax_xent(cp.asarray(rng.normal(size=(4, 3)).astype(F32)), cp.asarray([0, 1, 3, 2]))
    try:
        float(bad)
        ok = False
    except ValueError as e:
        ok = "e.g. 3 at row 2" in str(e)
    try:
        raise_label_error(bad)      # a no-op unless the read left the flag pending
    except ValueError:
        ok = False
    results.append(("softmax_xent", what, "float32", ok, 0.0, 0.0))
    # the functional op's GPU branch
    from gpunet.functional import losses
    z = rng.normal(size=(19, 77)).astype(F32)
    y = rng.integers(0, 77, size=19)
    l1, d1 = losses.softmax_cross_entropy(cp.asarray(z), cp.asarray(y), 0.05)
    l0, d0 = losses.softmax_cross_entropy(z, y, 0.05)
    ok1, e1, w1 = close(float(l1.get()), l0, *TOL[F32])
    ok2, e2, w2 = close(d1.get(), d0, *TOL[F32])
    results.append(("functional.softmax_cross_entropy", "(19, 77) cupy vs numpy", "float32",
                    ok1 and ok2 and isinstance(d1, cp.ndarray), max(e1, e2), max(w1, w2)))


def check_batchnorm(cp, rng, results):
    from gpunet.functional.batchnorm import batch_norm_backward, batch_norm_forward
    shapes = [(33, 17), (256, 10), (2, 3, 5, 7), (4, 16, 8, 8), (3, 5, 1, 1), (16, 8, 64, 64),
              (64, 32, 7, 7)]
    for dtype in (F32, F64):
        for shape in shapes:
            for center, affine in ((3.0, True), (1000.0, True), (0.5, False)):
                # float32 holds values near 1000 only to ~6e-5, a relative 6e-5 of a unit std:
                # (x - mean), and through it y and dgamma, carry that error in any float32
                # implementation (NumPy's own float32 path is off by ~2e-4 of max |dgamma|),
                # so the large-mean case is judged at the data's own precision.
                rtol, atol = (1e-3, 1e-3) if (dtype == F32 and center > 100) else TOL[dtype]
                C = shape[1]
                bshape = (1, C) + (1,) * (len(shape) - 2)
                x = (rng.normal(size=shape) * rng.uniform(0.5, 2.0, size=bshape)
                     + center + rng.normal(size=bshape)).astype(dtype)
                dy = rng.normal(size=shape).astype(dtype)
                g = rng.normal(1.0, 0.3, size=C).astype(dtype) if affine else None
                b = rng.normal(0.0, 0.3, size=C).astype(dtype) if affine else None
                eps = 1e-5
                gx = cp.asarray(x)
                y, mean, var, inv_std = gcuda.batchnorm_forward(
                    gx, None if g is None else cp.asarray(g), None if b is None else cp.asarray(b), eps)
                dx, dg, db = gcuda.batchnorm_backward(cp.asarray(dy), gx,
                                                      None if g is None else cp.asarray(g), mean, inv_std)
                x64 = x.astype(F64)
                g64 = None if g is None else g.astype(F64)
                b64 = None if b is None else b.astype(F64)
                ry, rm, rv, ris = batch_norm_forward(x64, g64, b64, eps)
                rdx, rdg, rdb = batch_norm_backward(dy.astype(F64), x64, g64, rm, ris)
                worst_ok, worst_e, worst_w = True, 0.0, 0.0
                for got, ref in ((y, ry), (mean, rm), (var, rv), (inv_std, ris), (dx, rdx),
                                 (dg, rdg), (db, rdb)):
                    ok, e, w = close(got.get(), ref, rtol, atol)
                    worst_ok &= ok and got.dtype == dtype
                    worst_e, worst_w = max(worst_e, e), max(worst_w, w)
                results.append(("batchnorm", f"{shape} mean~{center:g}{'' if affine else ' no-affine'}",
                                dtype.name, worst_ok, worst_e, worst_w))
    from gpunet.functional import batchnorm as fbn
    x = rng.normal(2.0, 1.5, size=(8, 6, 5, 5)).astype(F32)
    g = rng.normal(1.0, 0.2, size=6).astype(F32)
    b = rng.normal(size=6).astype(F32)
    y1 = fbn.batch_norm_forward(cp.asarray(x), cp.asarray(g), cp.asarray(b), 1e-5)[0]
    y0 = fbn.batch_norm_forward(x, g, b, 1e-5)[0]
    ok, e, w = close(y1.get(), y0, *TOL[F32])
    results.append(("functional.batch_norm_forward", "(8, 6, 5, 5) cupy vs numpy", "float32",
                    ok and isinstance(y1, cp.ndarray), e, w))


def check_dropout(cp, rng, results):
    from gpunet.functional.dropout import dropout_backward, dropout_forward
    shapes = [(1,), (3,), (1000,), (37, 129), (64, 1024), (2, 3, 5, 7)]
    for dtype in (F32, F64):
        for shape in shapes:
            for p in (0.0, 0.1, 0.5, 0.9):
                seed, counter = int(rng.integers(0, 2**63)), int(rng.integers(0, 2**20))
                x = rng.normal(size=shape).astype(dtype)
                dy = rng.normal(size=shape).astype(dtype)
                k1, k2 = grandom.keys(seed, counter)
                t = grandom.keep_threshold(p)
                scale = 1.0 / (1.0 - p)
                y = gcuda.dropout_forward(cp.asarray(x), k1, k2, t, scale).get()
                dx = gcuda.dropout_backward(cp.asarray(dy), k1, k2, t, scale).get()
                ry = dropout_forward(x, p, seed, counter, "inverted")
                rdx = dropout_backward(dy, p, seed, counter, "inverted")
                ok = bool(numpy.array_equal(y, ry) and numpy.array_equal(dx, rdx)
                          and y.dtype == dtype)
                err = float(max(numpy.max(numpy.abs(y - ry)), numpy.max(numpy.abs(dx - rdx))))
                results.append(("dropout", f"{shape} p={p}", dtype.name, ok, err, 0.0 if ok else float("inf")))
    # a view that starts 1 element into its buffer (not 16-byte aligned): scalar path
    for dtype in (F32, F64):
        base = cp.asarray(rng.normal(size=4097).astype(dtype))
        view = base[1:]
        k1, k2 = grandom.keys(7, 11)
        t = grandom.keep_threshold(0.5)
        y = gcuda.dropout_forward(view, k1, k2, t, 2.0).get()
        ry = dropout_forward(view.get(), 0.5, 7, 11, "inverted")
        ok = bool(numpy.array_equal(y, ry))
        results.append(("dropout", "(4096,) misaligned view p=0.5", dtype.name, ok,
                        float(numpy.max(numpy.abs(y - ry))), 0.0 if ok else float("inf")))
    from gpunet.functional import dropout as fd
    x = rng.normal(size=(33, 65)).astype(F32)
    y1 = fd.dropout_forward(cp.asarray(x), 0.3, 5, 9, "classic").get()
    y0 = fd.dropout_forward(x, 0.3, 5, 9, "classic")
    ok = bool(numpy.array_equal(y1, y0))
    results.append(("functional.dropout_forward", "(33, 65) classic cupy vs numpy", "float32", ok,
                    float(numpy.max(numpy.abs(y1 - y0))), 0.0 if ok else float("inf")))


F16 = numpy.dtype(numpy.float16)


def half_close(got, ref32, floor=0.0):
    """(ok, max abs error, error in units of the tolerance) of a float16 result against a
    float32 reference: within one float16 ulp at the reference's magnitude (a correctly
    rounded value is within half of one) plus ``floor`` (float32's own rounding)."""
    got = numpy.asarray(got, dtype=F64)
    ref = numpy.asarray(ref32, dtype=F64)
    if got.shape != ref.shape or not numpy.all(numpy.isfinite(got)):
        return False, float("inf"), float("inf")
    tol = numpy.spacing(numpy.abs(ref).astype(F16)).astype(F64) + floor
    err = numpy.abs(got - ref)
    worst = float(numpy.max(err / tol)) if err.size else 0.0
    return worst <= 1.0, float(err.max()) if err.size else 0.0, worst


def check_half(cp, rng, results):
    """The float16 (__half) kernels against NumPy's float32 computation on the same
    (float16) inputs, as tests/test_amp_precision.py judges them on the sim: softmax-CE
    (loss float32 within rtol 1e-6; dlogits within one float16 ulp + 1e-6 of the gradient's
    scale), batch norm (statistics and dgamma/dbeta float32 within 3e-5; y, dx within one
    float16 ulp + 1e-5 of their largest), dropout (bit for bit NumPy's float16 path)."""
    from gpunet.functional import batchnorm as fbn
    from gpunet.functional import dropout as fd
    from gpunet.functional.losses import softmax_cross_entropy as sce
    gs = 1024.0
    for (N, C) in [(33, 10), (64, 256), (9, 1024), (5, 1025), (6, 4096), (3, 4099), (4, 32768)]:
        z = rng.normal(0.0, 3.0, size=(N, C)).astype(F16)
        y = rng.integers(0, C, size=N).astype(numpy.int64)
        q = rng.random((N, C)).astype(F32) + 0.05
        q /= q.sum(axis=1, keepdims=True)
        for label, lab, eps, red in (("hard", y, 0.0, "mean"), ("hard eps=0.1 sum", y, 0.1, "sum"),
                                     ("soft eps=0.1", q, 0.1, "mean")):
            loss, dz = sce(cp.asarray(z), cp.asarray(lab), eps, None, red, grad_scale=gs)
            rl, rdz = sce(z.astype(F32), lab, eps, None, red, grad_scale=gs)
            ok1, e1, w1 = close(float(loss.get()), rl, 1e-6, 1e-6)
            ok2, e2, w2 = half_close(dz.get(), rdz, 1e-6 * gs / (N if red == "mean" else 1))
            ok = ok1 and ok2 and loss.dtype == F32 and dz.dtype == F16
            results.append(("softmax_xent half", f"{(N, C)} {label} grad_scale={gs:g}", "float16", ok,
                            max(e1, e2), max(w1, w2)))
    for shape in [(33, 17), (256, 10), (2, 3, 5, 7), (4, 16, 8, 8), (16, 8, 64, 64), (64, 32, 7, 7)]:
        C = shape[1]
        x = (rng.normal(size=shape) * 2 + 0.5).astype(F16)
        dy = rng.normal(size=shape).astype(F16)
        g, b = rng.normal(1.0, 0.3, size=C).astype(F32), rng.normal(size=C).astype(F32)
        x32, dy32 = x.astype(F32), dy.astype(F32)
        ry, rm, rv, ri = fbn.batch_norm_forward(x32, g, b, 1e-5)
        rdx, rdg, rdb = fbn.batch_norm_backward(dy32, x32, g, rm, ri)
        gx, gg = cp.asarray(x), cp.asarray(g)
        yy, m, v, inv = fbn.batch_norm_forward(gx, gg, cp.asarray(b), 1e-5)
        dx, dg, db = fbn.batch_norm_backward(cp.asarray(dy), gx, gg, m, inv)
        checks = [close(a.get(), r, 3e-5, 3e-5) for a, r in ((m, rm), (v, rv), (inv, ri), (dg, rdg), (db, rdb))]
        checks += [half_close(yy.get(), ry, 1e-5 * float(numpy.abs(ry).max())),
                   half_close(dx.get(), rdx, 1e-5 * float(numpy.abs(rdx).max()))]
        ok = all(c[0] for c in checks) and yy.dtype == F16 and dx.dtype == F16 and m.dtype == F32
        results.append(("batchnorm half", f"{shape}", "float16", ok, max(c[1] for c in checks),
                        max(c[2] for c in checks)))
    for shape in [(3,), (1000,), (64, 1024), (2, 3, 5, 7)]:
        x = rng.normal(size=shape).astype(F16)
        y = fd.dropout_forward(cp.asarray(x), 0.3, 5, 9).get()
        ry = fd.dropout_forward(x, 0.3, 5, 9)
        ok = bool(numpy.array_equal(y, ry)) and y.dtype == F16
        results.append(("dropout half", f"{shape} p=0.3", "float16", ok,
                        float(numpy.max(numpy.abs(y.astype(F64) - ry))), 0.0 if ok else float("inf")))


def run_correctness(cp, seed):
    rng = numpy.random.default_rng(seed)
    results, errors = [], []
    for fn in (check_softmax_xent, check_batchnorm, check_dropout, check_half):
        try:
            fn(cp, rng, results)
        except Exception:
            errors.append(f"{fn.__name__}:\n{traceback.format_exc()}")
    return results, errors


# ---------------------------------------------------------------------------------------
# 4. timing
# ---------------------------------------------------------------------------------------

def median_ms(record_start, record_end, elapsed, sync, fn, arg_sets, warmup, iters):
    for i in range(warmup):
        fn(*arg_sets[i % len(arg_sets)])
    sync()
    times = []
    for i in range(iters):
        args = arg_sets[i % len(arg_sets)]
        record_start()
        fn(*args)
        record_end()
        times.append(elapsed())
    return statistics.median(times)


def cupy_timer(cp):
    a, b = cp.cuda.Event(), cp.cuda.Event()

    def end():
        b.record()
        b.synchronize()
    return a.record, end, lambda: cp.cuda.get_elapsed_time(a, b), cp.cuda.Device().synchronize


def torch_timer(torch):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def end():
        b.record()
        b.synchronize()
    return a.record, end, lambda: a.elapsed_time(b), torch.cuda.synchronize


def copies_for(nbytes, l2_bytes, cap=64):
    """How many input sets to rotate so that their total exceeds 3x the L2 cache."""
    return int(min(cap, max(1, -(-3 * l2_bytes // max(nbytes, 1)))))


def bandwidth_row(rows, dtype, copy_gbs, op, shape, nbytes, g_ms, t_ms):
    """Append a fused op's timing row (gpunet, and PyTorch when ``t_ms`` is not None: ms,
    GB/s, share of the device-to-device copy bandwidth ``copy_gbs``) to ``rows`` and print it."""
    g_bw = nbytes / (g_ms * 1e-3) / 1e9
    row = {"op": op, "shape": list(shape), "dtype": dtype, "bytes": int(nbytes),
           "gpunet_ms": round(g_ms, 4), "gpunet_GBs": round(g_bw, 1),
           "gpunet_frac_copy": round(g_bw / copy_gbs, 3)}
    if t_ms is not None:
        t_bw = nbytes / (t_ms * 1e-3) / 1e9
        row.update({"torch_ms": round(t_ms, 4), "torch_GBs": round(t_bw, 1),
                    "torch_frac_copy": round(t_bw / copy_gbs, 3),
                    "speedup_vs_torch": round(t_ms / g_ms, 3)})
    rows.append(row)
    print(f"  {op} {shape} {dtype}: gpunet {g_ms:.3f} ms ({g_bw / copy_gbs:.0%} of copy)"
          + ("" if t_ms is None else f", torch {t_ms:.3f} ms"), flush=True)


def torch_batchnorm_ms(torch, tt, gamma, beta, sets, args):
    """Median ms of PyTorch's training-mode batch norm forward + backward (input, weight and
    bias gradients) on the same ``(x, dy)`` sets as gpunet's, shared through DLPack."""
    F = torch.nn.functional
    c = gamma.shape[0]
    w = torch.from_dlpack(gamma).clone().requires_grad_(True)
    b = torch.from_dlpack(beta).clone().requires_grad_(True)
    rm, rv = torch.zeros(c, device="cuda"), torch.ones(c, device="cuda")
    tsets = [(torch.from_dlpack(x).requires_grad_(True), torch.from_dlpack(dy)) for x, dy in sets]

    def t_bn(x, dy):
        y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
        return torch.autograd.grad(y, (x, w, b), dy)
    return median_ms(*tt, t_bn, tsets, args.warmup, args.iters)


def run_timing(cp, torch, args):
    dev = cp.cuda.Device()
    l2 = int(dev.attributes.get("L2CacheSize", 50 * 2**20))
    rng = cp.random.default_rng(0) if hasattr(cp.random, "default_rng") else None

    def randn(shape, dtype=cp.float32):
        if rng is not None:
            return rng.standard_normal(shape, dtype=cp.float32).astype(dtype, copy=False)
        return cp.random.standard_normal(shape).astype(dtype)

    ct = cupy_timer(cp)
    tt = torch_timer(torch) if torch is not None else None
    rows = []

    # device-to-device copy bandwidth: read + write of a 1 GiB buffer
    n = 2**28
    src, dst = cp.empty(n, cp.float32), cp.empty(n, cp.float32)
    src.fill(1.0)
    copy_ms = median_ms(*ct, lambda: dst.data.copy_from_device_async(src.data, src.nbytes),
                        [()], args.warmup, max(10, args.iters // 2))
    copy_gbs = 2 * src.nbytes / (copy_ms * 1e-3) / 1e9
    src = dst = None          # free the 2 GiB (the timed lambda is done with them)
    cp.get_default_memory_pool().free_all_blocks()

    def record(op, shape, nbytes, g_ms, t_ms):
        bandwidth_row(rows, "float32", copy_gbs, op, shape, nbytes, g_ms, t_ms)

    F = torch.nn.functional if torch is not None else None

    # softmax cross-entropy, forward + backward
    for (N, C) in ((8192, 32768), (65536, 10), (16384, 1000)):
        per = N * C * 4 + N * 8
        k = copies_for(per, l2)
        sets = [(randn((N, C)), cp.asarray(numpy.random.default_rng(i).integers(0, C, N)))
                for i in range(k)]
        g_ms = median_ms(*ct, lambda z, y: gcuda.softmax_xent(z, y), sets, args.warmup, args.iters)
        t_ms = None
        if torch is not None:
            tsets = [(torch.from_dlpack(z).requires_grad_(True), torch.from_dlpack(y)) for z, y in sets]

            def t_step(z, y):
                loss = F.cross_entropy(z, y)
                return torch.autograd.grad(loss, z)
            t_ms = median_ms(*tt, t_step, tsets, args.warmup, args.iters)
            del tsets
        record("softmax_xent fwd+bwd", (N, C), 2 * N * C * 4 + N * 8, g_ms, t_ms)
        del sets
        cp.get_default_memory_pool().free_all_blocks()
        if torch is not None:
            torch.cuda.empty_cache()

    # batch norm, forward + backward (training mode)
    for shape in ((256, 64, 56, 56), (256, 512, 7, 7)):
        C = shape[1]
        size = int(numpy.prod(shape)) * 4
        k = copies_for(2 * size, l2)
        gamma, beta = randn((C,)) * 0.1 + 1.0, randn((C,)) * 0.1
        sets = [(randn(shape), randn(shape)) for _ in range(k)]

        def g_step(x, dy):
            y, mean, var, inv_std = gcuda.batchnorm_forward(x, gamma, beta, 1e-5)
            return gcuda.batchnorm_backward(dy, x, gamma, mean, inv_std)
        g_ms = median_ms(*ct, g_step, sets, args.warmup, args.iters)
        t_ms = None if torch is None else torch_batchnorm_ms(torch, tt, gamma, beta, sets, args)
        # compulsory: forward reads x, writes y; backward reads dy and x, writes dx
        record("batchnorm fwd+bwd", shape, 5 * size, g_ms, t_ms)
        del sets
        cp.get_default_memory_pool().free_all_blocks()

    # dropout p = 0.5, forward + backward, 64M elements
    n = 64 * 2**20
    size = n * 4
    sets = [(randn((n,)), randn((n,))) for _ in range(copies_for(2 * size, l2))]
    k1, k2 = grandom.keys(1, 2)
    thr = grandom.keep_threshold(0.5)

    def g_drop(x, dy):
        gcuda.dropout_forward(x, k1, k2, thr, 2.0)
        return gcuda.dropout_backward(dy, k1, k2, thr, 2.0)
    g_ms = median_ms(*ct, g_drop, sets, args.warmup, args.iters)
    t_ms = None
    if torch is not None:
        tsets = [(torch.from_dlpack(x).requires_grad_(True), torch.from_dlpack(dy)) for x, dy in sets]

        def t_drop(x, dy):
            y = F.dropout(x, 0.5, training=True)
            return torch.autograd.grad(y, x, dy)
        t_ms = median_ms(*tt, t_drop, tsets, args.warmup, args.iters)
        del tsets
    # compulsory: forward reads x, writes y; backward reads dy, writes dx
    record("dropout fwd+bwd p=0.5", (n,), 4 * size, g_ms, t_ms)
    del sets
    cp.get_default_memory_pool().free_all_blocks()
    mlp = time_mlp_step(cp, torch, args, ct, tt, randn)
    try:
        fp16 = run_fp16_timing(cp, torch, args, ct, tt, copy_gbs, l2)
    except Exception:
        fp16 = {"error": traceback.format_exc()}
        print(fp16["error"], flush=True)
    return {"copy_GBs": round(copy_gbs, 1), "copy_ms_1GiB": round(copy_ms, 4), "rows": rows,
            "mlp_step": mlp, "fp16": fp16}


FP16_KERNEL_SHAPES = {"softmax_xent": ((8192, 32768), (65536, 10), (16384, 1000)),
                      "batchnorm": ((256, 64, 56, 56), (256, 512, 7, 7)),
                      "dropout": (64 * 2**20,)}
FP16_MODELS = ("mlp-784-4096x2-10", "cnn-28x28")


def run_fp16_timing(cp, torch, args, ct, tt, copy_gbs, l2, shapes=FP16_KERNEL_SHAPES,
                    models=FP16_MODELS, cnn_batch=256):
    """Issue 14's GPU measurements. (a) Each float16 (__half) fused kernel, forward +
    backward, against the copy roofline: its compulsory bytes (float16 activations and
    gradients read or written once; softmax-CE's float32 row losses and int64 labels; batch
    norm's per-channel vectors neglected) over its time, as a fraction of the measured
    device-to-device copy bandwidth; beside PyTorch eager on the same float16 tensors
    (cross_entropy on half logits; batch_norm with half input and float32 affine and
    running statistics; dropout on half). (b) The training steps of ``gpunet bench``'s
    models in fp16 (MixedPrecision + GradScaler) against PyTorch autocast(float16) +
    GradScaler (``gpunet.bench.gpunet_step`` / ``torch_step``), and each in fp32 too; the
    CNN at batch ``cnn_batch``. Goal (the issue): >= 80% of copy bandwidth on the fused
    ops, >= 1.0x PyTorch autocast on the steps. ``ct``/``tt``: the timers of
    :func:`median_ms`."""
    from gpunet import bench
    from gpunet.functional import batchnorm as fbn
    from gpunet.functional import dropout as fd
    from gpunet.functional.losses import softmax_cross_entropy as sce
    nrng = numpy.random.default_rng(0)

    def randh(shape):
        return cp.asarray(nrng.standard_normal(shape, dtype=numpy.float32).astype(F16))

    rows = []

    def record(op, shape, nbytes, g_ms, t_ms):
        bandwidth_row(rows, "float16", copy_gbs, op, shape, nbytes, g_ms, t_ms)

    F = torch.nn.functional if torch is not None else None
    for (N, C) in shapes["softmax_xent"]:
        k = copies_for(N * C * 2, l2)
        sets = [(randh((N, C)), cp.asarray(nrng.integers(0, C, N))) for _ in range(k)]
        g_ms = median_ms(*ct, lambda z, y: sce(z, y, grad_scale=1024.0), sets, args.warmup, args.iters)
        t_ms = None
        if torch is not None:
            tsets = [(torch.from_dlpack(z).requires_grad_(True), torch.from_dlpack(y)) for z, y in sets]
            t_ms = median_ms(*tt, lambda z, y: torch.autograd.grad(F.cross_entropy(z, y) * 1024.0, z),
                             tsets, args.warmup, args.iters)
            del tsets
        # logits read, gradient written (float16), labels read, row losses written (float32)
        record("softmax_xent fwd+bwd", (N, C), 2 * N * C * 2 + N * 8 + N * 4, g_ms, t_ms)
        del sets
    for shape in shapes["batchnorm"]:
        C = shape[1]
        size = int(numpy.prod(shape)) * 2
        gamma = cp.asarray(nrng.normal(1.0, 0.1, C).astype(F32))
        beta = cp.asarray(nrng.normal(0.0, 0.1, C).astype(F32))
        sets = [(randh(shape), randh(shape)) for _ in range(copies_for(2 * size, l2))]

        def g_bn(x, dy):
            y, mean, var, inv_std = fbn.batch_norm_forward(x, gamma, beta, 1e-5)
            return fbn.batch_norm_backward(dy, x, gamma, mean, inv_std)
        g_ms = median_ms(*ct, g_bn, sets, args.warmup, args.iters)
        t_ms = None if torch is None else torch_batchnorm_ms(torch, tt, gamma, beta, sets, args)
        record("batchnorm fwd+bwd", shape, 5 * size, g_ms, t_ms)   # x twice, y, dy, dx
        del sets
    for n in shapes["dropout"]:
        size = n * 2
        sets = [(randh((n,)), randh((n,))) for _ in range(copies_for(2 * size, l2))]

        def g_drop(x, dy):
            fd.dropout_forward(x, 0.5, 1, 2)
            return fd.dropout_backward(dy, 0.5, 1, 2)
        g_ms = median_ms(*ct, g_drop, sets, args.warmup, args.iters)
        t_ms = None
        if torch is not None:
            tsets = [(torch.from_dlpack(x).requires_grad_(True), torch.from_dlpack(dy)) for x, dy in sets]
            t_ms = median_ms(*tt, lambda x, dy: torch.autograd.grad(F.dropout(x, 0.5, training=True), x, dy),
                             tsets, args.warmup, args.iters)
            del tsets
        record("dropout fwd+bwd p=0.5", (n,), 4 * size, g_ms, t_ms)
        del sets
    if hasattr(cp, "get_default_memory_pool"):
        cp.get_default_memory_pool().free_all_blocks()

    steps = []
    device = "sim" if "sim" in cp.__name__ else "cuda"
    for name in models:
        spec = dict(bench.ALL_MODELS[name])
        if spec["kind"] == "cnn":
            spec["batch"] = cnn_batch
        res = {"model": name, "batch": spec["batch"]}
        for precision in ("fp32", "fp16"):
            step, _ = bench.gpunet_step(spec, device, precision)
            res[f"gpunet_{precision}_ms"] = round(median_ms(*ct, step, [()], args.warmup, args.iters), 4)
            if torch is not None:
                tstep, _ = bench.torch_step(spec, "cuda", precision)
                res[f"torch_{precision}_ms"] = round(median_ms(*tt, tstep, [()], args.warmup, args.iters), 4)
        res["gpunet_fp16_speedup"] = round(res["gpunet_fp32_ms"] / res["gpunet_fp16_ms"], 3)
        if torch is not None:
            res["torch_fp16_speedup"] = round(res["torch_fp32_ms"] / res["torch_fp16_ms"], 3)
            res["fp16_vs_torch_autocast"] = round(res["torch_fp16_ms"] / res["gpunet_fp16_ms"], 3)
        steps.append(res)
        print(f"  {name} batch {spec['batch']}: gpunet fp32 {res['gpunet_fp32_ms']} ms, fp16 "
              f"{res['gpunet_fp16_ms']} ms" + (f"; torch fp32 {res['torch_fp32_ms']} ms, autocast fp16 "
                                               f"{res['torch_fp16_ms']} ms" if torch is not None else ""),
              flush=True)
    return {"kernels": rows, "steps": steps}


def time_mlp_step(cp, torch, args, ct, tt, randn, sizes=(784, 4096, 4096, 10), batch=1024):
    """One training step of an MLP (forward, softmax-CE, backward, SGD momentum 0.9), exact
    float32 on both sides (CuPy's default; PyTorch's matmul TF32 switch is left off)."""
    import gpunet
    from gpunet import SoftmaxCrossEntropy, optim
    gpunet.manual_seed(0)
    model = gpunet.models.mlp(sizes).to("cuda")
    model[0].input_grad = False      # as PyTorch: no gradient for the data
    opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = SoftmaxCrossEntropy()
    x = randn((batch, sizes[0]))
    y = cp.asarray(numpy.random.default_rng(0).integers(0, sizes[-1], batch))

    def g_step(x, y):
        out = model(x)
        loss_fn(out, y)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
    g_ms = median_ms(*ct, g_step, [(x, y)], args.warmup, args.iters)
    result = {"model": "mlp-" + "-".join(map(str, sizes)), "batch": batch,
              "gpunet_ms": round(g_ms, 4), "gpunet_samples_s": round(batch / (g_ms * 1e-3))}
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False
        layers = []
        for a, b in zip(sizes[:-1], sizes[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.ReLU()]
        tm = torch.nn.Sequential(*layers[:-1]).cuda()
        topt = torch.optim.SGD(tm.parameters(), lr=0.01, momentum=0.9)
        tx, ty = torch.from_dlpack(x), torch.from_dlpack(y)

        def t_step(x, y):
            topt.zero_grad()
            torch.nn.functional.cross_entropy(tm(x), y).backward()
            topt.step()
        t_ms = median_ms(*tt, t_step, [(tx, ty)], args.warmup, args.iters)
        result.update({"torch_ms": round(t_ms, 4), "torch_samples_s": round(batch / (t_ms * 1e-3)),
                       "speedup_vs_torch": round(t_ms / g_ms, 3)})
    print(f"  {result['model']} batch {batch} step: gpunet {g_ms:.3f} ms"
          + (f", torch {result['torch_ms']:.3f} ms" if "torch_ms" in result else ""), flush=True)
    return result


# ---------------------------------------------------------------------------------------
# 5. training throughput: gpunet train's models, gpunet vs PyTorch, eager and graphs
# ---------------------------------------------------------------------------------------

TRAIN_MODELS = ("mlp", "cnn")
TORCH_VARIANTS = ("eager", "fused_adam", "cuda_graph")


def _timed(epochs, warm_epochs):
    if not 0 <= warm_epochs < epochs:
        raise ValueError(f"training throughput: expected 0 <= warm_epochs < epochs, got "
                         f"{warm_epochs} and {epochs}")


def _digits(kind):
    from gpunet import datasets
    (X, y), _ = datasets.load_digits()
    return (X.reshape(-1, 1, 8, 8) if kind == "cnn" else X), y


def gpunet_train_throughput(device, kind, cuda_graph, epochs=6, batch=64, warm_epochs=2):
    """samples/s of ``Trainer.fit`` on the digits (what ``gpunet train [--model cnn]``
    runs), over the epochs after ``warm_epochs``; also the final training loss."""
    import gpunet
    from gpunet import SoftmaxCrossEntropy, models, optim
    from gpunet.train import Callback, Trainer
    _timed(epochs, warm_epochs)
    X, y = _digits(kind)
    gpunet.manual_seed(0)
    model = (models.cnn_digits() if kind == "cnn" else models.mlp((64, 256, 128, 10))).to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=1e-3),
                 cuda_graph=cuda_graph)

    class Timer(Callback):
        seconds, samples = 0.0, 0

        def on_epoch_end(self, trainer, epoch, logs):
            if epoch >= warm_epochs:
                Timer.seconds += trainer.last_epoch_seconds
                Timer.samples += trainer.last_epoch_samples
    h = tr.fit((X, y), epochs=epochs, batch_size=batch, callbacks=[Timer()], progress=False)
    return {"framework": "gpunet", "model": kind, "variant": "cuda_graph" if cuda_graph else "eager",
            "samples_s": round(Timer.samples / max(Timer.seconds, 1e-12)),
            "final_loss": round(float(h["loss"][-1]), 4)}


def _torch_model(torch, kind):
    nn = torch.nn
    if kind == "cnn":
        return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                             nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(32 * 16, 10))
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, 10))


def torch_train_throughput(torch, device, kind, variant, epochs=6, batch=64, warm_epochs=2):
    """samples/s of the same model, data (resident on ``device``), batch and Adam in
    PyTorch: ``eager`` (torch.optim.Adam's default), ``fused_adam`` (``fused=True``) or
    ``cuda_graph`` (the full batches' whole step captured once with ``torch.cuda.graph``
    and replayed, ``capturable=True`` Adam; the last partial batch eager). The loss is
    summed on the device, read once per epoch."""
    if variant not in TORCH_VARIANTS:
        raise ValueError(f"torch_train_throughput: variant {variant!r} not in {TORCH_VARIANTS}")
    if variant == "cuda_graph" and not str(device).startswith("cuda"):
        raise ValueError("torch_train_throughput: cuda_graph needs a CUDA device")
    _timed(epochs, warm_epochs)
    torch.manual_seed(0)
    Xh, yh = _digits(kind)
    X, y = torch.as_tensor(Xh, device=device), torch.as_tensor(yh, device=device)
    model = _torch_model(torch, kind).to(device)
    kw = {"fused": True} if variant == "fused_adam" else {"capturable": True} if variant == "cuda_graph" else {}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **kw)
    loss_fn = torch.nn.functional.cross_entropy
    n = X.shape[0]
    gen = torch.Generator(device="cpu").manual_seed(0)

    def step(xb, yb):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
        return loss.detach()

    graph = static = None
    if variant == "cuda_graph":
        sx, sy = X[:batch].clone(), y[:batch].clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):                 # warm-up on a side stream, as PyTorch advises
                step(sx, sy)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            static = step(sx, sy)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    seconds, samples, last = 0.0, 0, float("nan")
    for epoch in range(epochs):
        order = torch.randperm(n, generator=gen).to(device)
        Xe, ye = X[order], y[order]
        total = torch.zeros((), device=device)
        sync()
        t0 = time.perf_counter()
        for s in range(0, n, batch):
            xb, yb = Xe[s:s + batch], ye[s:s + batch]
            if graph is not None and xb.shape[0] == batch:
                sx.copy_(xb)
                sy.copy_(yb)
                graph.replay()
                total += static * batch
            else:
                total += step(xb, yb) * xb.shape[0]
        sync()
        if epoch >= warm_epochs:
            seconds += time.perf_counter() - t0
            samples += n
        last = float(total) / n
    return {"framework": "torch", "model": kind, "variant": variant,
            "samples_s": round(samples / max(seconds, 1e-12)), "final_loss": round(last, 4)}


def run_train_throughput(torch, device, epochs, models=TRAIN_MODELS):
    """Every (model, framework, variant) run on ``device``; a failing run is recorded with
    its error instead of a number. gpunet/torch ratios are per model, against torch eager."""
    rows = []
    warm = min(2, epochs - 1)
    for kind in models:
        for cg in (False, True):
            try:
                rows.append(gpunet_train_throughput(device, kind, cg, epochs, warm_epochs=warm))
            except Exception as e:
                rows.append({"framework": "gpunet", "model": kind,
                             "variant": "cuda_graph" if cg else "eager", "error": repr(e)})
        if torch is None:
            continue
        tdev = "cuda" if device.startswith("cuda") else "cpu"
        for variant in TORCH_VARIANTS:
            try:
                rows.append(torch_train_throughput(torch, tdev, kind, variant, epochs,
                                                   warm_epochs=warm))
            except Exception as e:
                rows.append({"framework": "torch", "model": kind, "variant": variant, "error": repr(e)})
        base = next((r.get("samples_s") for r in rows if r["model"] == kind
                     and r["framework"] == "torch" and r["variant"] == "eager"), None)
        for r in rows:
            if r["model"] == kind and base and r.get("samples_s"):
                r["vs_torch_eager"] = round(r["samples_s"] / base, 3)
    for r in rows:
        print(f"  {r['model']:4s} {r['framework']:6s} {r['variant']:10s} "
              + (f"{r['samples_s']:>10,} samples/s" if "samples_s" in r else f"ERROR {r['error']}"),
              flush=True)
    return rows


def _readme_code(device):
    """The README's layer-API example (its one python block) on ``device``."""
    import re
    text = (REPO / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    if 'device = "cpu"' not in code:
        raise RuntimeError('README example: no device = "cpu" line to point at the GPU')
    return code.replace('device = "cpu"', f'device = "{device}"', 1)


TORCH_README_LOOP = """
import numpy as np, torch
import gpunet
(X, y), (X_test, y_test) = gpunet.datasets.load_digits()
Xt, yt = torch.as_tensor(X, device=DEV), torch.as_tensor(y, device=DEV)
model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).to(DEV)
loss_fn = torch.nn.CrossEntropyLoss()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for epoch in range(20):
    g = torch.Generator().manual_seed(epoch)
    order = torch.randperm(len(Xt), generator=g).to(DEV)
    for s in range(0, len(Xt), 64):
        idx = order[s:s + 64]
        xb, yb = Xt[idx], yt[idx]
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
with torch.no_grad():
    pred = model(torch.as_tensor(X_test, device=DEV)).argmax(1).cpu().numpy()
print("test accuracy", (pred == y_test).mean())
"""


def readme_loop_throughput(torch, device="cuda", rounds=3):
    """samples/s of the README's own training loop (20 epochs of the digits, batch 64,
    ``gpunet.DataLoader(..., device=device)``, which copies the data to the device once) run
    as written with ``device = "cuda"``, against the same loop written in PyTorch (the data
    moved to the device once, a shuffled index per epoch), alternating, one warm-up run
    each, medians of ``rounds``; the test accuracy each run printed."""
    import contextlib
    import io
    from gpunet import datasets
    n = len(datasets.load_digits()[0][0])
    codes = {"gpunet": _readme_code(device)}
    if torch is not None:
        codes["torch"] = TORCH_README_LOOP.replace("DEV", repr(device))
    sync = ((lambda: torch.cuda.synchronize()) if torch is not None and device.startswith("cuda")
            else (lambda: None))
    from gpunet import backend
    times = {k: [] for k in codes}
    acc = {}
    for r in range(rounds + 1):
        for name, code in codes.items():
            buf = io.StringIO()
            backend.synchronize()
            sync()
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(buf):
                exec(compile(code, f"<README loop, {name}>", "exec"), {"__name__": "__readme__"})
            backend.synchronize()
            sync()
            if r:
                times[name].append(time.perf_counter() - t0)
            acc[name] = buf.getvalue().strip().split()[-1]
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"framework": name, "samples_s": round(20 * n / med), "seconds": round(med, 3),
                     "runs_s": [round(t, 3) for t in ts], "test_accuracy": acc[name]})
    if len(rows) == 2:
        rows[0]["vs_torch"] = round(rows[0]["samples_s"] / rows[1]["samples_s"], 3)
    for r in rows:
        print(f"  README loop {r['framework']:6s} {r['samples_s']:>9,} samples/s "
              f"(median of {r['runs_s']} s; test accuracy {r['test_accuracy']})", flush=True)
    return rows


# ---------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    try:
        cp = backend.require_cuda()
    except RuntimeError as e:
        print(f"gpu_check: no usable GPU, nothing was checked: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    report = {"device": name, "cupy": cp.__version__, "numpy": numpy.__version__,
              "python": platform.python_version(),
              "cuda_runtime": cp.cuda.runtime.runtimeGetVersion(),
              "kernels_hash": gcuda.kernels_hash()}
    torch = None
    if not args.no_torch:
        try:
            import torch as _torch
            if _torch.cuda.is_available():
                torch = _torch
                report["torch"] = _torch.__version__
            else:
                report["torch"] = f"{_torch.__version__} (no CUDA: timings without PyTorch)"
        except ImportError as e:
            report["torch"] = f"not installed ({e})"
    print(f"gpu_check on {name}, CuPy {cp.__version__}, torch: {report.get('torch', 'skipped')}",
          flush=True)

    print("\n[1] compiling kernels", flush=True)
    report["compile_s"] = {f: round(s, 2) for f, s in compile_all(cp).items()}
    print(table([[f, f"{s:.2f}"] for f, s in report["compile_s"].items()], ["file", "seconds"]))

    ok = True
    if not args.skip_tests:
        print(f"\n[2] pytest (limit {args.pytest_timeout:.0f} s)", flush=True)
        report["pytest"] = run_pytest(args.out, args.pytest_timeout)
        print(f"  {report['pytest']['summary']}  ({report['pytest']['seconds']} s, "
              f"rc={report['pytest']['returncode']}; output in {args.out / 'pytest.txt'})")
        ok &= report["pytest"]["passed"]

    seed = args.seed if args.seed is not None else int(numpy.random.SeedSequence().entropy % 2**63)
    print(f"\n[3] correctness vs the NumPy reference (seed {seed})", flush=True)
    results, errors = run_correctness(cp, seed)
    report["correctness"] = {
        "seed": seed, "errors": errors,
        "checks": [{"op": o, "case": c, "dtype": d, "ok": bool(k), "max_abs_err": _finite(e),
                    "err_over_tol": _finite(w)} for o, c, d, k, e, w in results]}
    failed = [r for r in results if not r[3]]
    if failed:
        print(table([[o, c, d, "FAIL", f"{e:.2e}", f"{w:.2f}"] for o, c, d, k, e, w in failed],
                    ["op", "case", "dtype", "result", "max abs err", "err/tol"]))
    print(f"  {len(results) - len(failed)} of {len(results)} checks passed"
          + (f"; {len(errors)} section(s) crashed" if errors else ""))
    for e in errors:
        print(e)
    ok &= not failed and not errors

    if not args.skip_timing:
        print("\n[4] timing (CUDA events, median of %d, float32)" % args.iters, flush=True)
        try:
            report["timing"] = run_timing(cp, torch, args)
            t = report["timing"]
            print(f"  device-to-device copy: {t['copy_GBs']} GB/s")
            hdr = ["op", "shape", "gpunet ms", "GB/s", "of copy", "torch ms", "GB/s", "of copy",
                   "torch/gpunet"]
            print(table([[r["op"], "x".join(map(str, r["shape"])), r["gpunet_ms"], r["gpunet_GBs"],
                          f"{r['gpunet_frac_copy']:.0%}", r.get("torch_ms", "-"), r.get("torch_GBs", "-"),
                          f"{r['torch_frac_copy']:.0%}" if "torch_frac_copy" in r else "-",
                          r.get("speedup_vs_torch", "-")] for r in t["rows"]], hdr))
            if "kernels" in t.get("fp16", {}):
                print(table([[r["op"], "x".join(map(str, r["shape"])), r["gpunet_ms"], r["gpunet_GBs"],
                              f"{r['gpunet_frac_copy']:.0%}", r.get("torch_ms", "-"), r.get("torch_GBs", "-"),
                              f"{r['torch_frac_copy']:.0%}" if "torch_frac_copy" in r else "-",
                              r.get("speedup_vs_torch", "-")] for r in t["fp16"]["kernels"]],
                            ["op (float16)", "shape", "gpunet ms", "GB/s", "of copy", "torch ms", "GB/s",
                             "of copy", "torch/gpunet"]))
                print(table([[s_["model"], s_["batch"], s_["gpunet_fp32_ms"], s_["gpunet_fp16_ms"],
                              s_.get("torch_fp32_ms", "-"), s_.get("torch_fp16_ms", "-"),
                              s_.get("fp16_vs_torch_autocast", "-")] for s_ in t["fp16"]["steps"]],
                            ["model", "batch", "gpunet fp32 ms", "gpunet fp16 ms", "torch fp32 ms",
                             "torch autocast ms", "torch/gpunet fp16"]))
            m = t["mlp_step"]
            print(f"  {m['model']}, batch {m['batch']}: gpunet {m['gpunet_samples_s']:,} samples/s"
                  + (f", torch {m['torch_samples_s']:,} samples/s, torch/gpunet time "
                     f"{m['speedup_vs_torch']}" if "torch_ms" in m else ""))
        except Exception:
            report["timing_error"] = traceback.format_exc()
            print(report["timing_error"])

    if not args.skip_train:
        print(f"\n[5] training throughput (digits, batch 64, Adam; {args.train_epochs} epochs, "
              "the first 2 untimed)", flush=True)
        report["train_throughput"] = run_train_throughput(torch, "cuda", args.train_epochs)
        print(table([[r["model"], r["framework"], r["variant"], r.get("samples_s", "error"),
                      r.get("vs_torch_eager", "-")] for r in report["train_throughput"]],
                    ["model", "framework", "variant", "samples/s", "vs torch eager"]))

    if not args.skip_train:
        print("\n[6] the README's training loop on the GPU (20 epochs, batch 64; alternating, "
              "medians of 3)", flush=True)
        try:
            report["readme_loop"] = readme_loop_throughput(torch, "cuda")
        except Exception:
            report["readme_loop_error"] = traceback.format_exc()
            print(report["readme_loop_error"])

    report["passed"] = bool(ok)
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    path = args.out / "gpu_check.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"\ngpu_check: {'PASS' if ok else 'FAIL'} in {report['seconds']} s; report in {path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
