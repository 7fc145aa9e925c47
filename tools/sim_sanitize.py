#!/usr/bin/env python3
"""Run gpunet's CUDA kernels on the sim device under AddressSanitizer + UndefinedBehaviorSanitizer.

    python tools/sim_sanitize.py            # the edge-shape set; exit 0 when all is clean
    python tools/sim_sanitize.py --list     # print the cases
    python tools/sim_sanitize.py -k bn_     # only the cases whose name contains "bn_"
    python tools/sim_sanitize.py --plant oob|ubsan   # a deliberately broken kernel (self-check)

The parent process finds g++'s ``libasan.so`` / ``libubsan.so`` (``$CXX -print-file-name``),
and re-runs this script in a child with ``LD_PRELOAD`` of both, ``GPUNET_SIM_SANITIZE=1``
(the sim runtime and every kernel module are built with ``-fsanitize=address,undefined
-fno-sanitize-recover=all -fno-omit-frame-pointer``, cached apart from the normal build;
so are gpunet's compiled CPU kernels, which the NumPy references call: their own edge
cases are ``tools/host_sanitize.py``'s, which shares this parent/child machinery),
``ASAN_OPTIONS=detect_leaks=0`` (the Python interpreter's own allocations are not ours)
and ``halt_on_error``. The child runs every launcher of ``gpunet/cuda/`` through the
functional ops on sim arrays, over the edge shapes of issue 11, and compares each result
with the NumPy reference in ``gpunet/functional``. The parent exits non-zero when the
child fails, a result differs, or the output holds any sanitizer report.

Edge shapes: N = 1; C = 1, 2, 31, 32, 33, 255, 256, 257, 1023, 1024, 1025, 10000 (the
warp kernels' bounds 32·8 and 32·32, the block kernels, C not a multiple of the pack
width); offset (unaligned) views; all rows ignored, some ignored; soft targets; label
smoothing; batch norm on (N, C) and (N, C, H, W) with HW = 1, 3, 25 (odd), 4, 16 and rows
enough that a channel spans several chunks, N = 1; dropout with n = 1, n not a multiple
of 4, unaligned, and grid-stride sizes; float32 and float64, and float16 for the __half
kernels of softmax-CE, batch norm and dropout (against NumPy's float16 path: float32
inside, rounded once); convolution (im2col, col2im, the bias/ReLU epilogue and its
gradient) and max/average pooling, forward and backward, aligned and offset, in all three. And inputs at the extremes
(issue 15), checked against a long-double truth with the accuracy rule of
tests/test_kernels_gpu.py (``extreme_*``): batch norm with a large mean, a large mean
and a small spread, an outlier first value, a constant channel; softmax-CE with a first
logit of -1e4 and logits of +-1e4; dropout with p at the top of [0, 1).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_REPORT = re.compile(r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|runtime error:|"
                     r"SUMMARY: (Address|UndefinedBehavior)Sanitizer")


# ---------------------------------------------------------------------------------------
# Parent: set up the sanitizer runtime and run the child
# ---------------------------------------------------------------------------------------

def _cxx():
    env = os.environ.get("CXX")
    if env:
        return shlex.split(env)
    for name in ("g++", "c++"):
        if shutil.which(name):
            return [name]
    return None


def sanitizer_env() -> dict:
    cxx = _cxx()
    if cxx is None:
        raise SystemExit("sim_sanitize: the sim device needs a C++ compiler (g++); none found")
    libs = []
    for lib in ("libasan.so", "libubsan.so"):
        p = subprocess.run([*cxx, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(p) or not os.path.exists(p):
            raise SystemExit(f"sim_sanitize: {cxx[0]} has no {lib} (install the compiler's "
                             "sanitizer runtimes, e.g. libasan8 and libubsan1 for g++ 12)")
        libs.append(os.path.realpath(p))
    env = dict(os.environ)
    env["LD_PRELOAD"] = ":".join(libs + ([env["LD_PRELOAD"]] if env.get("LD_PRELOAD") else []))
    env["GPUNET_SIM_SANITIZE"] = "1"
    env["ASAN_OPTIONS"] = "detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=23"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_parent(argv, script=__file__, name="sim_sanitize") -> int:
    """Run ``script --child argv`` under :func:`sanitizer_env`; 1 when it fails or its
    output holds a sanitizer report (``tools/host_sanitize.py`` runs its child here too)."""
    env = sanitizer_env()
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, str(script), "--child", *argv], env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = p.stdout
    sys.stdout.write(out)
    reports = [line for line in out.splitlines() if _REPORT.search(line)]
    elapsed = time.perf_counter() - t0
    if p.returncode != 0 or reports:
        print(f"{name}: FAILED (exit status {p.returncode}, {len(reports)} sanitizer "
              f"report line(s)) in {elapsed:.1f} s", file=sys.stderr)
        return 1
    print(f"{name}: clean in {elapsed:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------
# Child: the edge shapes
# ---------------------------------------------------------------------------------------

def cases():
    """(name, function) pairs; each function raises AssertionError on a wrong result."""
    import numpy

    from gpunet import backend
    from gpunet import functional as F
    from gpunet import to_numpy

    sp = backend.require_sim()
    rng = numpy.random.default_rng(11)
    out = []

    def tol(dtype):
        if dtype == numpy.float16:   # half outputs: two float16 ulps (float32 inside, rounded once)
            return dict(rtol=2e-3, atol=2e-3)
        return dict(rtol=1e-10, atol=1e-12) if dtype == numpy.float64 else dict(rtol=3e-5, atol=3e-6)

    def on_sim(a, offset):
        """``a`` as a sim array; offset > 0: a view starting `offset` elements into a
        larger buffer (so its address is not 16-byte aligned)."""
        if not offset:
            return sp.asarray(a)
        flat = numpy.concatenate([numpy.zeros(offset, a.dtype), a.ravel()])
        return sp.asarray(flat)[offset:].reshape(a.shape)

    def check(want, got, dtype):
        for w, g in zip(want, got):
            numpy.testing.assert_allclose(to_numpy(g), w, **tol(dtype))

    dtypes = (numpy.float32, numpy.float64)
    SHORT = {numpy.float16: "f16", numpy.float32: "f32", numpy.float64: "f64"}

    # Softmax cross-entropy (float16 logits: the __half kernels, float32 loss and targets)
    for dtype in (*dtypes, numpy.float16):
        short = SHORT[dtype]
        for N, C in [(1, 1), (1, 2), (3, 31), (2, 32), (2, 33), (2, 255), (2, 256), (2, 257),
                     (2, 1023), (2, 1024), (2, 1025), (2, 10000), (1, 10000), (9, 7)]:
            for variant in ("hard", "smooth", "ignore_some", "ignore_all", "soft", "soft_smooth",
                            "offset"):
                if variant == "offset" and N * C < 2:
                    continue

                def run(N=N, C=C, variant=variant, dtype=dtype):
                    z = (rng.standard_normal((N, C)) * 3).astype(dtype)
                    eps = 0.1 if "smooth" in variant else 0.0
                    ignore = None
                    if variant.startswith("soft"):
                        q = rng.random((N, C)).astype(numpy.float32 if dtype == numpy.float16 else dtype)
                        labels = q / q.sum(1, keepdims=True)
                    else:
                        labels = rng.integers(0, C, N)
                        if variant == "ignore_some":
                            ignore = -100
                            labels[::2] = ignore
                        elif variant == "ignore_all":
                            ignore = -100
                            labels[:] = ignore
                    offset = 1 if variant == "offset" else 0
                    want = F.softmax_cross_entropy(z, labels, label_smoothing=eps, ignore_index=ignore)
                    got = F.softmax_cross_entropy(on_sim(z, offset), sp.asarray(labels),
                                                  label_smoothing=eps, ignore_index=ignore)
                    check(want, got, dtype)

                out.append((f"xent_{variant}_N{N}_C{C}_{short}", run))

    # Batch norm (forward and backward)
    bn_shapes = [(1, 1), (1, 5), (7, 1), (64, 3), (5, 33), (3, 2, 1, 1), (4, 3, 1, 3),
                 (2, 3, 5, 5), (3, 2, 2, 2), (2, 5, 4, 4), (4096, 1, 2, 2), (2048, 2, 3, 3),
                 (16384, 2), (1, 4, 3, 3)]
    for dtype in (*dtypes, numpy.float16):
        short = SHORT[dtype]
        pdtype = numpy.float32 if dtype == numpy.float16 else dtype   # gamma/beta, statistics
        for shape in bn_shapes:
            for offset in (0, 1):
                def run(shape=shape, offset=offset, dtype=dtype, pdtype=pdtype):
                    C = shape[1]
                    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
                    dy = rng.standard_normal(shape).astype(dtype)
                    g = rng.standard_normal(C).astype(pdtype)
                    b = rng.standard_normal(C).astype(pdtype)
                    y, mean, var, inv = F.batch_norm_forward(x, g, b)
                    want = (y, mean, var, inv, *F.batch_norm_backward(dy, x, g, mean, inv))
                    xs, dys = on_sim(x, offset), on_sim(dy, offset)
                    ys, ms, vs, ivs = F.batch_norm_forward(xs, sp.asarray(g), sp.asarray(b))
                    got = (ys, ms, vs, ivs,
                           *F.batch_norm_backward(dys, xs, sp.asarray(g), ms, ivs))
                    # dx of a one-value channel is 0 up to rounding: compare it absolutely
                    scale = max(1.0, float(numpy.abs(want[4]).max()))
                    for k, (w, gg) in enumerate(zip(want, got)):
                        t = tol(dtype)
                        if k == 4:
                            t = dict(rtol=t["rtol"], atol=t["rtol"] * scale * 10)
                        numpy.testing.assert_allclose(to_numpy(gg), w, **t)

                tag = "x".join(map(str, shape))
                out.append((f"bn_{tag}{'_offset' if offset else ''}_{short}", run))

    # Batch norm's running statistics, updated in place by its statistics kernel (a layer
    # on a device), against the update that layer makes on the host from the same statistics
    for dtype in (*dtypes, numpy.float16):
        short = SHORT[dtype]
        for shape in ((2, 1), (7, 5), (3, 4, 2, 3), (2048, 2, 3, 3)):
            def run(shape=shape, dtype=dtype):
                acc = numpy.float32 if dtype == numpy.float16 else dtype
                x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
                C, m = shape[1], x.size // shape[1]
                rm = rng.standard_normal(C).astype(acc)
                rv = rng.random(C).astype(acc) + 1
                rms, rvs = sp.asarray(rm), sp.asarray(rv)
                _, mean, var, _ = F.batch_norm_forward(on_sim(x, 0), None, None, 1e-5,
                                                       (rms, rvs, 0.3))
                mean, var = to_numpy(mean), to_numpy(var)
                numpy.testing.assert_array_equal(to_numpy(rms), rm * (1.0 - 0.3) + mean * 0.3)
                numpy.testing.assert_array_equal(to_numpy(rvs),
                                                 rv * (1.0 - 0.3) + (var * (m / (m - 1.0))) * 0.3)

            out.append((f"bn_running_{'x'.join(map(str, shape))}_{short}", run))

    # Dropout (forward and backward)
    for dtype in (*dtypes, numpy.float16):
        short = SHORT[dtype]
        for n in (1, 2, 3, 5, 7, 1001, 4096, 40001):
            for offset in (0, 1, 3):
                def run(n=n, offset=offset, dtype=dtype):
                    x = rng.standard_normal(n).astype(dtype)
                    want = (F.dropout_forward(x, 0.3, 5, 9), F.dropout_backward(x, 0.3, 5, 9))
                    xs = on_sim(x, offset)
                    got = (F.dropout_forward(xs, 0.3, 5, 9), F.dropout_backward(xs, 0.3, 5, 9))
                    check(want, got, dtype)

                out.append((f"dropout_n{n}_offset{offset}_{short}", run))
        # the draw counter on the device (a Dropout layer there): next_draw then the
        # state-reading kernel; a seed and counter past 2**32, an element offset (shard)
        for n in (1, 7, 4099):
            for offset in (0, 1):
                def run(n=n, offset=offset, dtype=dtype):
                    from gpunet import cuda as gcuda
                    seed, counter, start = 2**40 + 3, 2**32 + 7, 5 * n
                    x = rng.standard_normal(n).astype(dtype)
                    want = [F.dropout_forward(x, 0.3, seed, c, "inverted", start)
                            for c in (counter, counter + 1)]
                    st = gcuda.draw_state(sp, seed, counter)
                    xs, got = on_sim(x, offset), []
                    for _ in range(2):
                        gcuda.next_draw(st)
                        got.append(F.dropout_forward_state(xs, 0.3, st, "inverted", start))
                    check(want, got, dtype)
                    dx = F.dropout_backward_state(xs, 0.3, st, "inverted", start)
                    numpy.testing.assert_array_equal(to_numpy(dx), want[1])
                    assert int(to_numpy(st)[0]) == counter + 2

                out.append((f"dropout_state_n{n}_offset{offset}_{short}", run))

    # Convolution (im2col, col2im, bias/ReLU epilogue, its gradient) and pooling (max, avg),
    # forward and backward; float16 against NumPy's float16 path (float32 inside, rounded
    # once; the device rounds the GEMM's output before the epilogue: a few float16 ulps)
    conv_cases = [((1, 1, 5, 5), (2, 1, 3, 3), 1, 1), ((2, 3, 7, 6), (4, 3, 3, 2), (2, 1), (1, 0)),
                  ((1, 2, 8, 8), (3, 2, 1, 1), 1, 0), ((2, 2, 9, 9), (3, 2, 3, 3), 2, 1),
                  ((3, 1, 4, 5), (1, 1, 4, 5), 1, 0)]
    for dtype in (*dtypes, numpy.float16):
        short = SHORT[dtype]
        for xs, ws, st, pd in conv_cases:
            for offset in (0, 1):
                def run(xs=xs, ws=ws, st=st, pd=pd, offset=offset, dtype=dtype):
                    x = rng.standard_normal(xs).astype(dtype)
                    w = (rng.standard_normal(ws) * 0.5).astype(dtype)
                    b = rng.standard_normal(ws[0]).astype(dtype)
                    y = F.conv2d(x, w, b, st, pd, activation="relu")
                    dy = rng.standard_normal(y.shape).astype(dtype)
                    want = (y, *F.conv2d_backward(dy, x, w, st, pd, y=y, activation="relu"))
                    ys = F.conv2d(on_sim(x, offset), sp.asarray(w), sp.asarray(b), st, pd, activation="relu")
                    got = (ys, *F.conv2d_backward(on_sim(dy, offset), on_sim(x, offset), sp.asarray(w), st, pd,
                                                  y=ys, activation="relu"))
                    for wv, g in zip(want, got):
                        t = tol(dtype)
                        if dtype == numpy.float16:
                            scale = float(numpy.abs(wv.astype(numpy.float64)).max()) if wv.size else 1.0
                            t = dict(rtol=4e-3, atol=4e-3 * max(scale, 1.0))
                        numpy.testing.assert_allclose(to_numpy(g).astype(numpy.float64),
                                                      wv.astype(numpy.float64), **t)

                tag = "x".join(map(str, xs)) + "_k" + "x".join(map(str, ws[2:]))
                out.append((f"conv_{tag}{'_offset' if offset else ''}_{short}", run))
        for xs, k, st, pd in (((2, 3, 7, 7), 3, 2, 1), ((1, 1, 4, 4), 2, None, 0), ((2, 2, 9, 8), 2, 2, 0)):
            for offset in (0, 1):
                def run(xs=xs, k=k, st=st, pd=pd, offset=offset, dtype=dtype):
                    x = rng.standard_normal(xs).astype(dtype)
                    y, arg = F.max_pool2d(x, k, st, pd)
                    dy = rng.standard_normal(y.shape).astype(dtype)
                    want = (y, F.max_pool2d_backward(dy, arg, x.shape, k, st, pd), F.avg_pool2d(x, k, st, pd),
                            F.avg_pool2d_backward(dy, x.shape, k, st, pd))
                    gy, garg = F.max_pool2d(on_sim(x, offset), k, st, pd)
                    got = (gy, F.max_pool2d_backward(on_sim(dy, offset), garg, x.shape, k, st, pd),
                           F.avg_pool2d(on_sim(x, offset), k, st, pd),
                           F.avg_pool2d_backward(on_sim(dy, offset), x.shape, k, st, pd))
                    numpy.testing.assert_array_equal(to_numpy(garg), arg)
                    for wv, g in zip(want, got):
                        t = tol(dtype)
                        if dtype == numpy.float16:   # float32 sums on both sides, each rounded once
                            t = dict(rtol=1e-3, atol=1e-3)
                        numpy.testing.assert_allclose(to_numpy(g).astype(numpy.float64),
                                                      wv.astype(numpy.float64), **t)

                tag = "x".join(map(str, xs)) + f"_k{k}"
                out.append((f"pool_{tag}{'_offset' if offset else ''}_{short}", run))

    out += extreme_cases(sp, on_sim)
    out += optim_cases(sp, tol)
    return out


def optim_cases(sp, tol):
    """The multi-tensor optimizer, clipping and loss-scaler kernels (kernels/optim.cu):
    1, 3 and 70 tensors (past the 64 passed as arguments), one of them without a gradient
    at the second step, one of size 0; against the NumPy path."""
    import math

    import numpy

    from gpunet import optim, to_numpy
    from gpunet.amp import GradScaler
    from gpunet.layers.base import Parameter

    configs = {"sgd_nesterov_l1": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True,
                                                        weight_decay=0.01, l1=0.01),
               "adam_l2": lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.1),
               "adamw": lambda ps: optim.AdamW(ps, lr=0.01),
               "rmsprop_momentum": lambda ps: optim.RMSProp(ps, lr=0.01, momentum=0.5),
               "adagrad": lambda ps: optim.AdaGrad(ps, lr=0.1)}
    out = []
    for dtype in (numpy.float32, numpy.float64):
        short = "f32" if dtype == numpy.float32 else "f64"
        for n in (1, 3, 70):
            for name, make in configs.items():
                def run(n=n, make=make, dtype=dtype):
                    rng = numpy.random.default_rng(n)
                    sizes = [(0 if j == 1 else 1 + 997 * (j % 3)) for j in range(n)]
                    w0 = [rng.standard_normal(k).astype(dtype) for k in sizes]
                    hs = [Parameter(w.copy(), "p", j % 2 == 0) for j, w in enumerate(w0)]
                    ds = [Parameter(sp.asarray(w), "p", j % 2 == 0) for j, w in enumerate(w0)]
                    oh, od = make(hs), make(ds)
                    for step in range(3):
                        for j, (h, d) in enumerate(zip(hs, ds)):
                            if step == 1 and j == n - 1 and n > 1:
                                h.grad = d.grad = None
                                continue
                            g = rng.standard_normal(sizes[j]).astype(dtype)
                            h.grad, d.grad = g, sp.asarray(g)
                        if step == 2:
                            oh.lr = od.lr = oh.lr * 0.5
                        oh.step()
                        od.step()
                    for h, d in zip(hs, ds):
                        numpy.testing.assert_allclose(to_numpy(d.data), h.data, **tol(dtype))
                    assert od.steps == oh.steps

                out.append((f"optim_{name}_n{n}_{short}", run))

            def run_clip(n=n, dtype=dtype):
                rng = numpy.random.default_rng(n)
                gs = [(rng.standard_normal(1 + 700 * (j % 4)) * 3).astype(dtype) for j in range(n)]
                hs = [Parameter(numpy.zeros_like(g), "p", True) for g in gs]
                ds = [Parameter(sp.zeros(g.shape, dtype), "p", True) for g in gs]
                for h, d, g in zip(hs, ds, gs):
                    h.grad, d.grad = g.copy(), sp.asarray(g)
                want = optim.clip_grad_norm(hs, 1.0)
                got = float(optim.clip_grad_norm(ds, 1.0))
                assert abs(got - want) <= 1e-5 * want, (got, want)
                optim.clip_grad_value(hs, 0.01)
                optim.clip_grad_value(ds, 0.01)
                for h, d in zip(hs, ds):
                    numpy.testing.assert_allclose(to_numpy(d.grad), h.grad, **tol(dtype))

            out.append((f"optim_clip_n{n}_{short}", run_clip))

            def run_scaler(n=n, dtype=dtype):
                rng = numpy.random.default_rng(n)
                w0 = [rng.standard_normal(5).astype(dtype) for _ in range(n)]
                runs = []
                for xp in (numpy, sp):
                    ps = [Parameter(xp.asarray(w.copy()), "p", True) for w in w0]
                    opt, scaler = optim.Adam(ps, lr=0.01), GradScaler(init_scale=8.0, growth_interval=2)
                    scales = []
                    for step in range(6):
                        g0 = numpy.random.default_rng(step).standard_normal(5).astype(dtype)
                        for j, p in enumerate(ps):
                            g = g0 * 8.0
                            if step in (1, 4) and j == n - 1:
                                g[2] = math.inf if step == 1 else math.nan
                            p.grad = xp.asarray(g)
                        scaler.step(opt)
                        scaler.update()
                        scales.append(scaler.get_scale())
                    runs.append((scales, [to_numpy(p.data) for p in ps], opt.steps))
                assert runs[0][0] == runs[1][0] and runs[0][2] == runs[1][2], (runs[0][0], runs[1][0])
                for a, b in zip(runs[0][1], runs[1][1]):
                    numpy.testing.assert_allclose(b, a, **tol(dtype))

            out.append((f"optim_scaler_n{n}_{short}", run_scaler))
    return out


def extreme_cases(sp, on_sim):
    """Inputs at the extremes (issue 15), each kernel against a truth in long double with
    the rule of tests/test_kernels_gpu.py: error <= max(2 x the NumPy reference's error in
    the same dtype, a floor of a few eps). Batch norm: large mean, large mean with a small
    spread, an outlier first value, a constant channel; softmax-CE: first logit -1e4,
    logits of +-1e4; dropout: p at the top of [0, 1), bit for bit."""
    import numpy

    from gpunet import functional as F
    from gpunet import to_numpy

    L = numpy.longdouble
    out = []

    def within(what, got, ref, truth, scale, floor):
        k = float(numpy.max(numpy.abs(to_numpy(got).astype(L) - truth) / scale))
        n = float(numpy.max(numpy.abs(numpy.asarray(ref).astype(L) - truth) / scale))
        assert k <= max(2 * n, floor), f"{what}: kernel error {k:.3g}, NumPy {n:.3g}, floor {floor:.3g}"

    for dtype in (numpy.float32, numpy.float64):
        short = "f32" if dtype == numpy.float32 else "f64"
        ulp = float(numpy.finfo(dtype).eps)
        for kind in ("large_mean", "small_spread", "outlier_first", "constant_channel"):
            for shape in ((3, 5), (1, 2), (16384, 2), (4, 3, 8, 8), (2, 3, 5, 5)):
                for offset in (0, 1):
                    def run(kind=kind, shape=shape, offset=offset, dtype=dtype, ulp=ulp):
                        rng = numpy.random.default_rng([len(kind), *shape])
                        x = rng.standard_normal(shape)
                        if kind == "large_mean":
                            x += 1e4
                        elif kind == "small_spread":
                            x = 1e4 + 0.01 * x
                        elif kind == "outlier_first":
                            x[0] = 1e3
                        else:
                            x[:, shape[1] // 2] = 0.1
                        x = x.astype(dtype)
                        axes = (0,) if x.ndim == 2 else (0, 2, 3)
                        xl = x.astype(L)
                        mean = xl.mean(axis=axes)
                        s = (1, shape[1]) + (1,) * (x.ndim - 2)
                        var = ((xl - mean.reshape(s)) ** 2).mean(axis=axes)
                        y = (xl - mean.reshape(s)) / numpy.sqrt(var + L(1e-5)).reshape(s)
                        ref = F.batch_norm_forward(x, None, None)
                        got = F.batch_norm_forward(on_sim(x, offset), None, None)
                        std = numpy.sqrt(var)
                        within("mean", got[1], ref[1], mean, numpy.abs(mean) + std, 2 * ulp)
                        within("var", got[2], ref[2], var, var + (ulp * numpy.abs(mean)) ** 2, 4 * ulp)
                        within("y", got[0], ref[0], y, max(float(numpy.abs(y).max()), 1.0), 8 * ulp)

                    tag = "x".join(map(str, shape))
                    out.append((f"extreme_bn_{kind}_{tag}{'_offset' if offset else ''}_{short}", run))

        for kind in ("negative_first_logit", "logits_pm_1e4"):
            for C in (33, 1000, 2048, 2051, 10000):
                for variant in ("hard", "smooth", "soft", "soft_smooth"):
                    def run(kind=kind, C=C, variant=variant, dtype=dtype, ulp=ulp):
                        rng = numpy.random.default_rng(C)
                        N = 3
                        z = rng.standard_normal((N, C)) * 3
                        if kind == "negative_first_logit":
                            z[:, 0] = -1e4
                        else:
                            z = numpy.where(rng.random((N, C)) < 0.5, -1e4, 1e4) + z
                        z = z.astype(dtype)
                        eps = 0.1 if "smooth" in variant else 0.0
                        if variant.startswith("soft"):
                            q = rng.random((N, C))
                            labels = (q / q.sum(1, keepdims=True)).astype(dtype)
                            t = labels.astype(L)
                        else:
                            labels = rng.integers(0, C, N)
                            t = numpy.zeros((N, C), L)
                            t[numpy.arange(N), labels] = 1
                        t = (1 - L(eps)) * t + L(eps) / C
                        zl = z.astype(L)
                        m = zl.max(1, keepdims=True)
                        e = numpy.exp(zl - m)
                        lse = m + numpy.log(e.sum(1, keepdims=True))
                        row = (t * (lse - zl)).sum(1)
                        grad = e / e.sum(1, keepdims=True) * t.sum(1, keepdims=True) - t
                        ref = F.softmax_cross_entropy(z, labels, eps, None, "none")
                        got = F.softmax_cross_entropy(on_sim(z, 1 if C % 2 else 0), sp.asarray(labels),
                                                      eps, None, "none")
                        within("row loss", got[0], ref[0], row, float(numpy.abs(row).max()), 8 * ulp)
                        within("gradient", got[1], ref[1], grad, float(numpy.abs(grad).max()), 8 * ulp)

                    out.append((f"extreme_xent_{kind}_C{C}_{variant}_{short}", run))

        for p in (1 - 2.0**-24, 1 - 2.0**-25, float(numpy.nextafter(1.0, 0.0))):
            for n in (1, 7, 4099):
                for offset in (0, 1):
                    def run(p=p, n=n, offset=offset, dtype=dtype):
                        x = numpy.random.default_rng(n).standard_normal(n).astype(dtype)
                        for f in (F.dropout_forward, F.dropout_backward):
                            numpy.testing.assert_array_equal(to_numpy(f(on_sim(x, offset), p, 5, 9)),
                                                             f(x, p, 5, 9))

                    out.append((f"extreme_dropout_p{p!r}_n{n}_offset{offset}_{short}", run))
    return out


PLANTED = {
    # writes one element past the end of its output
    "oob": r'''extern "C" __global__ void planted(float* y, int n) {
        const int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i <= n) y[i] = 1.0f;
    }''',
    # signed overflow
    "ubsan": r'''extern "C" __global__ void planted(float* y, int n) {
        int v = n;
        for (int k = 0; k < 40; ++k) v *= 3;
        y[threadIdx.x] = static_cast<float>(v);
    }''',
}


def run_planted(kind) -> int:
    import numpy

    from gpunet import backend
    from gpunet.sim.runtime import RawKernel

    sp = backend.require_sim()
    y = sp.empty((32,), dtype=numpy.float32)
    RawKernel(PLANTED[kind], "planted")((1,), (64,), (y, numpy.int32(32)))
    print(f"planted {kind}: the kernel ran without a report", flush=True)
    return 0


def run_child(args) -> int:
    if args.plant:
        return run_planted(args.plant)
    from gpunet.sim import runtime

    assert runtime.sanitizing(), "the child must run with GPUNET_SIM_SANITIZE=1"
    return run_cases(cases(), args, "sim_sanitize")


def run_cases(all_cases, args, tool) -> int:
    """Run the ``(name, function)`` cases that ``args.k`` selects; 1 when one fails (an
    AssertionError) or none is selected. ``tool`` names the tool in the summary lines."""
    todo = [(n, f) for n, f in all_cases if not args.k or any(k in n for k in args.k)]
    if not todo:      # a -k that matches nothing checks nothing: that is not a clean run
        print(f"{tool}: no case matches -k {' -k '.join(args.k or [])} (--list prints them)",
              flush=True)
        return 1
    failed = []
    t0 = time.perf_counter()
    for name, fn in todo:
        try:
            fn()
        except AssertionError as e:
            failed.append(name)
            print(f"FAIL {name}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", flush=True)
            print(str(e), flush=True)
        else:
            if args.verbose:
                print(f"ok   {name}", flush=True)
    print(f"{tool}: {len(todo) - len(failed)}/{len(todo)} cases match NumPy "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return 1 if failed else 0


def tool_main(argv, *, doc, script, name, get_cases, plants, child) -> int:
    """The command line of a sanitizer tool: ``--list``, ``-k``, ``-v``, ``--plant`` (one
    of ``plants``); the parent runs ``script`` again as the child (:func:`run_parent`),
    which calls ``child(args)``. This tool and ``tools/host_sanitize.py`` share it."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--list", action="store_true", help="print the case names and exit")
    ap.add_argument("-k", action="append", help="run only cases whose name contains this")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every case")
    ap.add_argument("--plant", choices=sorted(plants), help="run a deliberately broken kernel")
    args = ap.parse_args(argv)
    if args.list:
        sys.path.insert(0, str(REPO))
        for case, _ in get_cases():
            print(case)
        return 0
    if args.child:
        sys.path.insert(0, str(REPO))
        return child(args)
    rest = [a for a in (argv if argv is not None else sys.argv[1:])]
    return run_parent(rest, script, name)


def main(argv=None) -> int:
    return tool_main(argv, doc=__doc__, script=__file__, name="sim_sanitize", get_cases=cases,
                     plants=PLANTED, child=run_child)


if __name__ == "__main__":
    sys.exit(main())
