#!/usr/bin/env python3
"""On a GPU: what gpunet's own cuBLAS calls (gpunet.cuda.blas) cost against cupy.matmul.

    PYTHONPATH=. python benchmarks/gpu_blas.py

Why: the second GPU run (H200) found gpunet's eager training steps slower after the GEMMs
moved from ``cupy.matmul`` to gpunet's ctypes calls (made so that steps can be captured in
a CUDA graph): MLP 40,224 -> 29,166 samples/s, CNN 30,313 -> 20,508. This measures, in one
process, for ``cupy.matmul`` and for gpunet's calls with the workspace set before every
call (``WORKSPACE="set"``) or left to cuBLAS's default pool (``"default"``):

1. host time per call of a small GEMM (64x64 @ 64x128 float32): the time to queue 3000
   calls, then the time until the device is done, per call;
2. device time of large GEMMs (CUDA events, median of 20 after 3 warm-ups, fresh random
   operands): 4096^3, (1024, 784) @ (784, 4096), a batched (64, 145, 3136) @ (64, 3136, 32);
3. ``Trainer.fit`` eager samples/s of gpu_check's two digits models (6 epochs, last 4 timed).

Each variant runs in turn, three rounds alternating; medians are printed. A variant whose
results differ from NumPy's float64 product by more than float32 rounding is reported.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import cupy as cp  # noqa: E402

from gpunet.cuda import blas  # noqa: E402

VARIANTS = ("cupy", "gpunet-set", "gpunet-default")


def use(variant):
    blas.ENABLED = variant != "cupy"
    blas.WORKSPACE = "default" if variant == "gpunet-default" else "set"


def mm(a, b):
    from gpunet.functional.linear import device_matmul
    return device_matmul(cp, a, b)


def host_us(a, b, n=3000):
    for _ in range(50):
        mm(a, b)
    cp.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        mm(a, b)
    t1 = time.perf_counter()
    cp.cuda.Device().synchronize()
    t2 = time.perf_counter()
    return (t1 - t0) / n * 1e6, (t2 - t0) / n * 1e6


def device_ms(a, b, iters=20):
    for _ in range(3):
        mm(a, b)
    s, e = cp.cuda.Event(), cp.cuda.Event()
    ts = []
    for _ in range(iters):
        s.record()
        mm(a, b)
        e.record()
        e.synchronize()
        ts.append(cp.cuda.get_elapsed_time(s, e))
    return statistics.median(ts)


def main():
    import gpu_check as gc
    rng = numpy.random.default_rng(0)
    small = [cp.asarray(rng.standard_normal(s).astype(numpy.float32)) for s in ((64, 64), (64, 128))]
    big = {
        "4096^3": ((4096, 4096), (4096, 4096)),
        "1024x784x4096": ((1024, 784), (784, 4096)),
        "batched 64x(145x3136x32)": ((64, 145, 3136), (64, 3136, 32)),
    }
    big = {k: [cp.asarray(rng.standard_normal(s).astype(numpy.float32)) for s in v]
           for k, v in big.items()}
    res = {v: {} for v in VARIANTS}
    for v in VARIANTS:            # correctness first
        use(v)
        for name, (a, b) in big.items():
            ref = numpy.matmul(cp.asnumpy(a).astype(numpy.float64), cp.asnumpy(b).astype(numpy.float64))
            err = float(numpy.abs(cp.asnumpy(mm(a, b)) - ref).max() / numpy.abs(ref).max())
            if not err < 1e-5:
                print(f"  {v} {name}: relative error {err:.2e}  <-- WRONG", flush=True)
    for rnd in range(3):
        for v in VARIANTS:
            use(v)
            q, t = host_us(*small)
            res[v].setdefault("queue_us", []).append(q)
            res[v].setdefault("total_us", []).append(t)
            for name, (a, b) in big.items():
                res[v].setdefault(name, []).append(device_ms(a, b))
            for kind in ("mlp", "cnn"):
                r = gc.gpunet_train_throughput("cuda", kind, False, epochs=6, warm_epochs=2)
                res[v].setdefault(f"{kind} samples/s", []).append(r["samples_s"])
        print(f"  round {rnd + 1} done", flush=True)
    keys = list(res[VARIANTS[0]])
    print("\nmedians of 3 alternating rounds (H2D-free; small GEMM 64x64 @ 64x128 float32)")
    print(f"{'':28s}" + "".join(f"{v:>16s}" for v in VARIANTS))
    for k in keys:
        print(f"{k:28s}" + "".join(f"{statistics.median(res[v][k]):16.4g}" for v in VARIANTS))
    use("gpunet-set")


if __name__ == "__main__":
    main()
