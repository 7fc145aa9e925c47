"""One framework's CNN training-step timing, run by ``bench_cnn_cpu.py`` in its own process.

    python benchmarks/cnn_step.py --framework {gpunet,torch} --case {1d,2d} --steps N --warmup W [--threads T]

Prints one JSON line: ``{"framework", "case", "threads", "median_s", "cpu_median_s", "times_s"}``
(wall-clock step times, and the median process CPU time per step). A step is forward,
softmax cross-entropy, backward and a plain SGD update (lr 0.01, no momentum), after zeroing
the gradients; both frameworks run float32 on 2 threads. Neither computes a gradient for the
input batch (PyTorch: the input does not require grad; gpunet: ``input_grad = False`` on the
first layer).

Cases (inputs drawn once from a seeded generator, labels in 0..9):

* ``1d``: ``(100, 1, 1, 40)``; three Conv2D layers with kernel ``(1, 5)``, stride ``(1, 2)``,
  padding ``(0, 2)``, 25 channels, ReLU (lengths 40 → 20 → 10 → 5); Flatten; Dense(125, 10).
* ``2d``: ``(64, 1, 28, 28)``; Conv2D(1, 16, 3, padding=1)+ReLU, MaxPool2D(2),
  Conv2D(16, 32, 3, padding=1)+ReLU, MaxPool2D(2), Flatten, Dense(1568, 10).
* ``2d-bn``, ``2d-avg``, ``2d-gelu``: ``2d`` with batch norm between each convolution and
  its activation, as separate layers (Conv2D, BatchNorm, ReLU, MaxPool2D); ``2d-avg`` pools
  by averaging; ``2d-gelu`` uses the exact GELU. The layers after a CPU convolution run in
  its channel-major memory: these cases time that chain.
"""
import argparse
import json
import os
import sys
import time

# BLAS reads its thread count when NumPy loads: the driver sets these in the environment;
# the defaults below are for running this file by hand.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

import numpy  # noqa: E402

SHAPES = {"1d": (100, 1, 1, 40), "2d": (64, 1, 28, 28), "2d-bn": (64, 1, 28, 28),
          "2d-avg": (64, 1, 28, 28), "2d-gelu": (64, 1, 28, 28)}


def _bn_cnn(case, seq, conv, bn, relu, gelu, maxpool, avgpool, flatten, dense):
    """The ``2d-bn``/``2d-avg``/``2d-gelu`` model from either framework's classes."""
    act = gelu if case == "2d-gelu" else relu
    pool = avgpool if case == "2d-avg" else maxpool
    return seq(conv(1, 16, 3, padding=1), bn(16), act(), pool(2),
               conv(16, 32, 3, padding=1), bn(32), act(), pool(2), flatten(), dense(1568, 10))


def gpunet_step(case, x, y, threads=2):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    import gpunet
    from gpunet import layers as L, optim
    gpunet.manual_seed(0)
    if case == "1d":
        k = dict(kernel_size=(1, 5), stride=(1, 2), padding=(0, 2), activation="relu")
        model = L.Sequential(L.Conv2D(1, 25, **k), L.Conv2D(25, 25, **k), L.Conv2D(25, 25, **k),
                             L.Flatten(), L.Dense(125, 10))
    elif case == "2d":
        model = L.Sequential(L.Conv2D(1, 16, 3, padding=1, activation="relu"), L.MaxPool2D(2),
                             L.Conv2D(16, 32, 3, padding=1, activation="relu"), L.MaxPool2D(2),
                             L.Flatten(), L.Dense(1568, 10))
    else:
        model = _bn_cnn(case, L.Sequential, L.Conv2D, L.BatchNorm, L.ReLU, L.GELU, L.MaxPool2D,
                        L.AvgPool2D, L.Flatten, L.Dense)
    # The input is data: like PyTorch for an input that does not require grad, compute no
    # gradient for it (Conv2D.input_grad, as gpunet bench does for Dense).
    model[0].input_grad = False
    loss_fn = gpunet.SoftmaxCrossEntropy()
    opt = optim.SGD(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        loss_fn(model(x), y)
        model.backward(loss_fn.backward())
        opt.step()
    return step


def torch_step(case, x, y, threads=2):
    import torch
    from torch import nn
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if case == "1d":
        k = dict(kernel_size=(1, 5), stride=(1, 2), padding=(0, 2))
        model = nn.Sequential(nn.Conv2d(1, 25, **k), nn.ReLU(), nn.Conv2d(25, 25, **k), nn.ReLU(),
                              nn.Conv2d(25, 25, **k), nn.ReLU(), nn.Flatten(), nn.Linear(125, 10))
    elif case == "2d":
        model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Flatten(), nn.Linear(1568, 10))
    else:
        model = _bn_cnn(case, nn.Sequential, nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.GELU,
                        nn.MaxPool2d, nn.AvgPool2d, nn.Flatten, nn.Linear)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def step():
        opt.zero_grad()
        loss_fn(model(xt), yt).backward()
        opt.step()
    return step


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--framework", choices=("gpunet", "torch"), required=True)
    ap.add_argument("--case", choices=tuple(SHAPES), required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=int(os.environ["OPENBLAS_NUM_THREADS"]))
    a = ap.parse_args(argv)
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal(SHAPES[a.case]).astype(numpy.float32)
    y = rng.integers(0, 10, SHAPES[a.case][0]).astype(numpy.int64)
    step = (gpunet_step if a.framework == "gpunet" else torch_step)(a.case, x, y, a.threads)
    for _ in range(a.warmup):
        step()
    times, cpu = [], []
    for _ in range(a.steps):
        c = time.process_time()
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    print(json.dumps({"framework": a.framework, "case": a.case, "threads": a.threads,
                      "median_s": float(numpy.median(times)), "cpu_median_s": float(numpy.median(cpu)),
                      "times_s": times}))


if __name__ == "__main__":
    main()
