#!/usr/bin/env python3
"""Run gpunet's compiled CPU kernels (gpunet/hostkernels/) under AddressSanitizer + UBSan.

    python tools/host_sanitize.py            # the edge cases; exit 0 when all is clean
    python tools/host_sanitize.py --list     # print the cases
    python tools/host_sanitize.py -k pool_   # only the cases whose name contains "pool_"
    python tools/host_sanitize.py --plant oob|ubsan|kernel   # a deliberate bug (self-check)

The parent/child machinery is ``tools/sim_sanitize.py``'s (``run_parent``, ``run_cases``,
``tool_main``): the parent re-runs this script in a child with g++'s ``libasan.so`` and
``libubsan.so`` in ``LD_PRELOAD`` and ``GPUNET_SIM_SANITIZE=1``, under which
``gpunet.hostkernels`` builds ``pooling.cpp``, ``optim.cpp``, ``elementwise.cpp`` and ``threads.cpp`` with
``-O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer``
(cached apart from the normal build; the ``target_clones`` stay: the clone this CPU picks
is the one checked). The parent fails when the child fails, a result differs, or the
output holds any sanitizer report.

Each case runs through the public path (``gpunet.functional``, ``gpunet.optim``, a Dense
layer) twice: with ``hostkernels.set_enabled(False)`` (NumPy) and with the kernels, and
compares every result bit for bit (each NaN as one pattern). It also fails when the
kernel it is about was not called, so a wrapper that declines its arrays (NumPy then
does the work) cannot pass as checked.

Cases: max pooling forward and backward in the CHWN, CNHW and NCHW layouts, float32 and
float64, over 1x1 windows, disjoint windows that tile the input and that leave gaps,
overlapping windows, windows reaching into the padding, rectangular windows and strides,
a window as large as the input and windows of 255 and 256 elements (the uint8 ``arg``'s
limit); N = 1, C = 1, odd sizes, N = 17 and 33 (CHWN: past a vector's width of images),
with ties, signed zeros, infinities and NaN; planes large enough to be split over threads,
forced to three (and NumPy's GEMMs on the thread team, 2 and 3 OpenBLAS jobs at once); the backward with ``dy`` in ``arg``'s
layout, in another layout, as a negative-stride view, as a view whose strides are not a
multiple of the item size and one byte off its alignment (an input too). SGD (plain,
momentum, Nesterov, L2, L1) and Adam / Adam with L2 and L1 / AdamW on 1, 7, 64 and 65537
elements, and 300001 split over three threads. ReLU's backward (``relu_mask_times``) on
odd shapes in C, F and CHWN memory;
the Dense layer's fused bias + ReLU forward (``bias_relu``) and its mask + bias gradient
(``relu_mask_colsum``, from two columns: it leaves one to NumPy) on odd shapes down to 1x1.

What it cannot see: at ``-O1`` GCC does not vectorize, so the checks are of the source's
memory accesses and arithmetic, not of the ``-O3`` build's vector loops (their bits are
tests/test_hostkernels.py's business).

``--plant oob`` / ``ubsan`` build a tiny kernel with an out-of-bounds write / a signed
overflow through ``hostkernels._build`` (the kernels' own build function and flags,
``target_clones`` included), ``--plant kernel`` calls the loaded ``relu_mask_times``
kernel with a length one past its arrays: each must be reported, so the stage cannot
pass by running uninstrumented code.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sim_sanitize  # noqa: E402  (the shared parent/child machinery)

KERNELS = tuple(f"gpunet_{k}_{t}" for k in ("max_pool", "max_pool_backward", "sgd", "sgd_many", "adam",
                                             "adam_many", "relu", "relu_mask_times", "bias_relu",
                                             "relu_mask_colsum")
                for t in ("f32", "f64"))

_calls = {}       # kernel name -> calls so far (the child counts them, see _count_calls)


def _count_calls(lib):
    """Wrap each kernel of ``lib`` (the loaded ``ctypes.CDLL``) to count its calls; the
    wrappers in gpunet.hostkernels look the kernels up on ``lib`` at each call."""
    for name in KERNELS:
        fn = getattr(lib, name)

        def counted(*args, _fn=fn, _name=name):
            _calls[_name] = _calls.get(_name, 0) + 1
            return _fn(*args)

        _calls[name] = 0
        setattr(lib, name, counted)


def cases():
    """(name, function) pairs; each function raises AssertionError on a wrong result or
    when its kernel was not called."""
    import numpy

    from gpunet import hostkernels, optim
    from gpunet.functional import activations as FA
    from gpunet.functional import pooling as FP
    from gpunet.layers import Dense
    from gpunet.layers.base import Parameter
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from hostkernel_cases import awkward, in_layout, nan_bits, x_at_arg_positive   # shared with the tests

    SHORT = {numpy.float32: "f32", numpy.float64: "f64"}
    out = []

    def same(what, ref, got):
        assert len(ref) == len(got), (what, len(ref), len(got))
        for k, (r, g) in enumerate(zip(ref, got)):
            r, g = numpy.asarray(r), numpy.asarray(g)
            assert r.dtype == g.dtype and r.shape == g.shape, (what, k, r.dtype, g.dtype, r.shape, g.shape)
            if r.dtype.kind == "f":
                r, g = nan_bits(r), nan_bits(g)
            numpy.testing.assert_array_equal(g, r, err_msg=f"{what}: result {k} differs from NumPy's")

    def both(what, fn, kernels):
        """``fn()`` on NumPy and with the kernels: the same bits, and each of ``kernels``
        called (with the kernels) at least once."""
        hostkernels.set_enabled(False)
        ref = fn()
        hostkernels.set_enabled(True)
        before = dict(_calls)
        got = fn()
        for k in kernels:
            assert _calls[k] > before[k], f"{what}: {k} was not called (NumPy did the work)"
        same(what, ref, got)

    def misaligned(a):
        """``a``'s values, C order, one byte off its dtype's alignment."""
        out = numpy.ndarray(a.shape, a.dtype, numpy.zeros(a.nbytes + 1, numpy.uint8), offset=1)
        out[...] = a
        return out

    def dy_variants(rng, shape, dtype, layout):
        """dy in arg's layout, in NCHW (another layout for CHWN/CNHW), a negative- and
        double-stride view, a view whose strides are not a multiple of the item size, and
        C-order memory one byte off its alignment."""
        d = awkward(rng, shape, dtype)
        wide = awkward(rng, shape[:3] + (2 * shape[3],), dtype)[..., ::-2]
        packed = numpy.zeros(shape, dtype=[("pad", numpy.uint8), ("v", dtype)])["v"]
        packed[...] = d
        return {"dy_same": in_layout(d, layout), "dy_nchw": in_layout(d, "nchw"),
                "dy_reversed": wide, "dy_packed": packed, "dy_misaligned": misaligned(d)}

    # -- max pooling: (kernel, stride, padding) and the input shapes (N, C, H, W) for each
    geometries = [
        ((1, 1), (1, 1), (0, 0), [(1, 1, 1, 1), (2, 3, 5, 7)]),                 # 1x1
        ((2, 2), (2, 2), (0, 0), [(1, 1, 2, 2), (3, 2, 6, 8), (2, 1, 7, 5),   # tiled / odd: rest unread
                                  (33, 1, 4, 4), (16, 1, 4, 6)]),             # CHWN: 33, 16 images a row
        ((2, 2), (3, 3), (0, 0), [(2, 3, 8, 7), (1, 1, 5, 5)]),                 # gaps between windows
        ((3, 3), (1, 1), (1, 1), [(1, 1, 1, 1), (2, 3, 5, 7), (1, 2, 4, 3),   # overlapping, padded
                                  (17, 2, 5, 6)]),
        ((3, 3), (2, 2), (1, 1), [(3, 1, 7, 7), (2, 2, 6, 9), (32, 1, 5, 5)]),  # overlapping, padded
        ((2, 3), (1, 2), (1, 0), [(2, 3, 5, 7), (1, 1, 2, 3)]),                 # rectangular
        ((3, 2), (3, 1), (1, 1), [(2, 2, 7, 5)]),                               # disjoint rows, padded
        ((4, 4), (2, 2), (2, 2), [(1, 3, 5, 5), (2, 1, 4, 6)]),                 # padding = k/2
        ((5, 7), (1, 1), (0, 0), [(2, 3, 5, 7)]),                               # the whole input
        ((16, 16), (16, 16), (0, 0), [(1, 2, 16, 16)]),                         # 256 members (uint8 max)
        ((17, 15), (2, 3), (8, 7), [(2, 1, 5, 4)]),                             # 255 members, mostly padding
    ]
    for dtype in (numpy.float32, numpy.float64):
        sfx = SHORT[dtype]
        for kernel, stride, padding, shapes in geometries:
            for shape in shapes:
                for layout in ("chwn", "cnhw", "nchw"):
                    def run(kernel=kernel, stride=stride, padding=padding, shape=shape, layout=layout,
                            dtype=dtype, sfx=sfx):
                        rng = numpy.random.default_rng([*shape, *kernel, *stride, *padding])
                        x_values = awkward(rng, shape, dtype)
                        x = in_layout(x_values, layout)
                        both("max_pool2d", lambda: FP.max_pool2d(x, kernel, stride, padding),
                             [f"gpunet_max_pool_{sfx}"])
                        if layout == "nchw":        # misaligned C-order input (copied)
                            xm = misaligned(x)
                            both("max_pool2d (misaligned x)",
                                 lambda: FP.max_pool2d(xm, kernel, stride, padding), [f"gpunet_max_pool_{sfx}"])
                        before = _calls[f"gpunet_max_pool_{sfx}"]
                        y1, arg1, pos = FP.max_pool2d_positive(x, kernel, stride, padding)   # kernels on
                        assert _calls[f"gpunet_max_pool_{sfx}"] > before and pos is not None
                        numpy.testing.assert_array_equal(
                            pos.astype(bool), x_at_arg_positive(x, arg1, kernel, stride, padding),
                            err_msg="max_pool2d_positive: pos differs from x[arg] > 0")
                        xr = numpy.maximum(x, 0)            # through the ReLU, x left as it is
                        before = _calls[f"gpunet_max_pool_{sfx}"]
                        yr1, argr1, posr = FP.max_pool2d_positive(x, kernel, stride, padding, relu_input=True)
                        assert _calls[f"gpunet_max_pool_{sfx}"] > before and posr is not None
                        numpy.testing.assert_array_equal(
                            posr.astype(bool), x_at_arg_positive(xr, argr1, kernel, stride, padding),
                            err_msg="max_pool2d_positive(relu_input): pos differs from relu(x)[arg] > 0")
                        hostkernels.set_enabled(False)
                        y, arg = FP.max_pool2d(x, kernel, stride, padding)
                        same("max_pool2d_positive", [y, arg], [y1, arg1])
                        same("max_pool2d_positive (relu_input)", list(FP.max_pool2d(xr, kernel, stride, padding)),
                             [yr1, argr1])
                        same("max_pool2d_positive leaves x", [in_layout(x_values, layout)], [x])
                        for tag, dy in dy_variants(rng, y.shape, dtype, layout).items():
                            both(f"max_pool2d_backward ({tag})",
                                 lambda: [FP.max_pool2d_backward(dy, arg, x.shape, kernel, stride, padding)],
                                 [f"gpunet_max_pool_backward_{sfx}"])
                            if padding == (0, 0):   # with the ReLU's mask (x as the ReLU's output)
                                for given in (None, pos):   # read from x, or from the forward's pos
                                    both(f"max_pool2d_relu_backward ({tag}{', pos' if given is not None else ''})",
                                         lambda: [FP.max_pool2d_relu_backward(dy, arg, x, kernel, stride, padding,
                                                                              positive=given)
                                                  if hostkernels.enabled() else FA.relu_mask_times(
                                                      FP.max_pool2d_backward(dy, arg, x.shape, kernel, stride,
                                                                             padding), x)],
                                         [f"gpunet_max_pool_backward_{sfx}"])

                    geo = "_".join("x".join(map(str, v)) for v in (kernel, stride, padding))
                    out.append((f"pool_{layout}_{'x'.join(map(str, shape))}_k{geo}_{sfx}", run))

    # -- the thread team (threads.cpp): pooling passes large enough to split (over 256 KB),
    # forced to 3 threads (uneven channel chunks), and NumPy's GEMMs on the team (OpenBLAS's
    # jobs, which wait on each other, 2 and 3 at once) against OpenBLAS's own threads
    for dtype in (numpy.float32, numpy.float64):
        sfx = SHORT[dtype]
        for kernel, stride, padding in (((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1))):
            def run(kernel=kernel, stride=stride, padding=padding, dtype=dtype, sfx=sfx):
                hostkernels.pass_threads(3)
                try:
                    rng = numpy.random.default_rng(11)
                    x = in_layout(awkward(rng, (64, 9, 20, 20), dtype), "chwn")
                    both("max_pool2d (3 threads)", lambda: list(FP.max_pool2d(x, kernel, stride, padding)),
                         [f"gpunet_max_pool_{sfx}"])
                    hostkernels.set_enabled(False)
                    y, arg = FP.max_pool2d(x, kernel, stride, padding)
                    dy = awkward(rng, y.shape, dtype)
                    both("max_pool2d_backward (3 threads)",
                         lambda: [FP.max_pool2d_backward(dy, arg, x.shape, kernel, stride, padding)],
                         [f"gpunet_max_pool_backward_{sfx}"])
                finally:
                    hostkernels.pass_threads(0)

            geo = "_".join("x".join(map(str, v)) for v in (kernel, stride, padding))
            out.append((f"pool_split3_chwn_64x9x20x20_k{geo}_{sfx}", run))

        def run_gemm(dtype=dtype):
            from gpunet import threads
            rng = numpy.random.default_rng(12)
            a = rng.standard_normal((300, 700)).astype(dtype)
            b = rng.standard_normal((700, 500)).astype(dtype)
            for n in (2, 3):
                with threads.limit(n):
                    hostkernels.set_enabled(False)
                    ref = [a @ b, b @ b.T]
                    hostkernels.set_enabled(True)
                    calls = hostkernels.helpers()[1]
                    got = [a @ b, b @ b.T]
                    assert hostkernels.team() is None or hostkernels.helpers()[1] > calls, \
                        "the team took no OpenBLAS job"
                    same(f"matmul on the team ({n} threads)", ref, got)

        out.append((f"team_matmul_{sfx}", run_gemm))

    # -- the optimizer updates, a few steps each. SGD's steps run as one call for all
    # parameters (sgd_many; the first momentum step copies g in NumPy), Adam's first step
    # (which creates the moments) parameter by parameter (adam), the next ones as one call
    # (adam_many); the per-parameter SGD entry (sgd) runs where the one call is not taken,
    # here forced with the per-parameter step
    class SGDPerParameter(optim.SGD):
        _host_step = optim.Optimizer._host_step

    configs = {
        "sgd": (lambda ps: optim.SGD(ps, lr=0.1), ("sgd_many",)),
        "sgd_momentum": (lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), ("sgd_many",)),
        "sgd_nesterov": (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True), ("sgd_many",)),
        "sgd_l2": (lambda ps: optim.SGD(ps, lr=0.05, weight_decay=0.01), ("sgd_many",)),
        "sgd_l1": (lambda ps: optim.SGD(ps, lr=0.05, l1=1e-3), ("sgd_many",)),
        "sgd_nesterov_l2_l1": (lambda ps: optim.SGD(ps, lr=0.03, momentum=0.8, nesterov=True,
                                                    weight_decay=1e-3, l1=1e-4), ("sgd_many",)),
        "sgd_momentum_l2": (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.5, weight_decay=0.01), ("sgd_many",)),
        "sgd_per_parameter": (lambda ps: SGDPerParameter(ps, lr=0.03, momentum=0.8, nesterov=True,
                                                         weight_decay=1e-3, l1=1e-4), ("sgd",)),
        "adam": (lambda ps: optim.Adam(ps, lr=1e-3), ("adam", "adam_many")),
        "adam_l2_l1": (lambda ps: optim.Adam(ps, lr=3e-3, betas=(0.8, 0.99), eps=1e-6,
                                             weight_decay=1e-2, l1=1e-3), ("adam", "adam_many")),
        "adamw": (lambda ps: optim.AdamW(ps, lr=2e-3, weight_decay=0.05), ("adam", "adam_many")),
    }
    for dtype in (numpy.float32, numpy.float64):
        sfx = SHORT[dtype]
        for n in (1, 7, 64, 65537, 300001):     # 300001: over 2^18 elements, split over 3 threads
            for cname, (make, kind) in configs.items():
                if n == 300001 and cname == "sgd_per_parameter":
                    continue
                def run(n=n, make=make, kind=kind, dtype=dtype, sfx=sfx):
                    def steps():
                        rng = numpy.random.default_rng(n)
                        w = rng.standard_normal(n).astype(dtype)
                        w[:6] = [0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0][:n]
                        p = Parameter(w, "p")
                        opt = make([p])
                        for _ in range(3):
                            g = (rng.standard_normal(n) * 10.0 ** rng.integers(-8, 3)).astype(dtype)
                            g[:4] = [0.0, -0.0, 1e-38, -5.0][:n]
                            p.grad = g
                            opt.step()
                        return [p.data] + [numpy.array(v) for st in opt.state for v in st.values()]

                    hostkernels.pass_threads(3 if n > 1 << 18 else 0)
                    try:
                        splits = hostkernels.helpers()[2]
                        both(f"{kind[0]} update", steps, [f"gpunet_{k}_{sfx}" for k in kind])
                        assert n <= 1 << 18 or hostkernels.helpers()[2] > splits, "not split over threads"
                    finally:
                        hostkernels.pass_threads(0)

                out.append((f"optim_{cname}_n{n}_{sfx}", run))

    # -- ReLU's backward: dy * (y > 0) in y's memory order
    for dtype in (numpy.float32, numpy.float64):
        sfx = SHORT[dtype]
        for shape in ((1,), (7,), (3, 5), (5, 3, 7), (2, 3, 5, 7), (1, 1, 1, 1)):
            for order in ("C", "F", "chwn"):
                if order == "chwn" and len(shape) != 4:
                    continue

                def run(shape=shape, order=order, dtype=dtype, sfx=sfx):
                    rng = numpy.random.default_rng(len(shape))
                    y, dy = awkward(rng, shape, dtype), awkward(rng, shape, dtype)
                    if order == "F":
                        y, dy = numpy.asfortranarray(y), numpy.asfortranarray(dy)
                    elif order == "chwn":
                        y, dy = in_layout(y, "chwn"), in_layout(dy, "chwn")
                    both("relu_backward", lambda: [FA.relu_backward(dy, None, y)],
                         [f"gpunet_relu_mask_times_{sfx}"])

                out.append((f"relu_mask_times_{order}_{'x'.join(map(str, shape))}_{sfx}", run))

                def run_fwd(shape=shape, order=order, dtype=dtype, sfx=sfx):
                    # ReLU's forward, into a new array and in place
                    x = awkward(numpy.random.default_rng(len(shape) + 1), shape, dtype)
                    if order == "F":
                        x = numpy.asfortranarray(x)
                    elif order == "chwn":
                        x = in_layout(x, "chwn")
                    both("relu", lambda: [FA.relu(x), FA.relu(x.copy(order="K"), inplace=True)],
                         [f"gpunet_relu_{sfx}"])

                out.append((f"relu_{order}_{'x'.join(map(str, shape))}_{sfx}", run_fwd))

    # -- Dense with a bias and a fused ReLU: bias_relu forward, relu_mask_colsum backward
    for dtype in (numpy.float32, numpy.float64):
        sfx = SHORT[dtype]
        for rows, n_in, n_out in ((1, 1, 1), (1, 3, 7), (7, 2, 1), (1, 1, 2), (3, 5, 5), (11, 7, 9),
                                  (33, 4, 65)):
            def run(rows=rows, n_in=n_in, n_out=n_out, dtype=dtype, sfx=sfx):
                def step():
                    rng = numpy.random.default_rng([rows, n_in, n_out])
                    layer = Dense(n_in, n_out, activation="relu", bias=True).to(dtype=dtype)
                    layer.weight.data[...] = awkward(rng, (n_out, n_in), dtype) * 0.5
                    layer.bias.data[...] = awkward(rng, (n_out,), dtype)
                    x = awkward(rng, (rows, n_in), dtype)
                    y = layer(x).copy()
                    dx = layer.backward(awkward(rng, y.shape, dtype))
                    return [y, dx, layer.weight.grad, layer.bias.grad]

                # one column: relu_mask_colsum declines it (NumPy sums a contiguous column
                # pairwise, other bits than row after row)
                kernels = [f"gpunet_bias_relu_{sfx}"]
                if n_out > 1:
                    kernels.append(f"gpunet_relu_mask_colsum_{sfx}")
                both("Dense(relu, bias)", step, kernels)

            out.append((f"dense_relu_{rows}x{n_in}x{n_out}_{sfx}", run))
    return out


# the kernels' own macro: a planted kernel is built as they are, target_clones included
_CLONES = r'''#include <cstdint>
#if defined(__GNUC__) && !defined(__clang__) && (defined(__x86_64__) || defined(__i386__))
#define GPUNET_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define GPUNET_CLONES
#endif
'''

PLANTED = {
    # writes one element past the end of its output
    "oob": _CLONES + r'''extern "C" GPUNET_CLONES void planted(float* y, long n) {
        for (long i = 0; i <= n; ++i) y[i] = 1.0f;
    }''',
    # signed overflow
    "ubsan": _CLONES + r'''extern "C" GPUNET_CLONES void planted(float* y, long n) {
        int v = (int)n;
        for (int k = 0; k < 40; ++k) v *= 3;
        y[0] = (float)v;
    }''',
    # the loaded kernels themselves, given a length one past their arrays
    "kernel": None,
}


def run_planted(kind) -> int:
    import ctypes

    import numpy

    from gpunet import hostkernels

    y = numpy.zeros(32, numpy.float32)
    if kind == "kernel":
        lib = _check_child()
        out = numpy.empty_like(y)
        lib.gpunet_relu_mask_times_f32(y.ctypes.data, y.ctypes.data, out.ctypes.data, y.size + 1)
    else:
        with tempfile.TemporaryDirectory(prefix="gpunet-planted-") as tmp:
            src = Path(tmp) / "planted.cpp"
            src.write_text(PLANTED[kind])
            path = hostkernels._build(hostkernels._compiler(), sources=(src,), sanitize=True)
        lib = ctypes.CDLL(str(path))
        lib.planted.argtypes, lib.planted.restype = [ctypes.c_void_p, ctypes.c_long], None
        lib.planted(y.ctypes.data, y.size)
    print(f"planted {kind}: the kernel ran without a report", flush=True)
    return 0


def _check_child():
    """The loaded sanitized kernels (their calls counted), or an AssertionError."""
    from gpunet import hostkernels

    assert hostkernels.sanitizing(), "the child must run with GPUNET_SIM_SANITIZE=1"
    hostkernels.set_enabled(True)          # whatever GPUNET_HOST_KERNELS says
    lib = hostkernels.library()
    assert lib is not None and "ASan + UBSan" in hostkernels.status(), hostkernels.status()
    if not _calls:
        _count_calls(lib)
    return lib


def run_child(args) -> int:
    import warnings

    # inf - inf, 0 * inf and the like in the NumPy references: expected, and noise here
    warnings.filterwarnings("ignore", r"(invalid value|divide by zero|overflow) encountered",
                            RuntimeWarning)
    if args.plant:
        return run_planted(args.plant)
    _check_child()
    return sim_sanitize.run_cases(cases(), args, "host_sanitize")


def main(argv=None) -> int:
    return sim_sanitize.tool_main(argv, doc=__doc__, script=__file__, name="host_sanitize",
                                  get_cases=cases, plants=PLANTED, child=run_child)


if __name__ == "__main__":
    sys.exit(main())
