"""The same training run gives the same numbers on the CPU and the GPU.

A 100-step run of an MLP with BatchNorm and Dropout on the digits, from the same seed:
the dropout masks come from the counter-based generator (identical bits on both
devices), the initial weights from the seeded host generator, the batch order from the
DataLoader's (seed, epoch) permutation. The CPU/GPU comparison runs on every GPU-like
backend present (``gpu_device`` in conftest: ``"cuda"`` where CuPy sees a device, ``"sim"``
where a C++ compiler is found); the CPU-only checks below pin down the determinism it
relies on.
"""
import numpy
import pytest

import gpunet
from gpunet import BatchNorm, Dense, Dropout, ReLU, Sequential, SoftmaxCrossEntropy, optim


def _run(device, dtype, steps=100):
    gpunet.manual_seed(42)
    model = Sequential(Dense(64, 96), BatchNorm(96), ReLU(), Dropout(0.2, seed=7),
                       Dense(96, 48, activation="tanh"), Dropout(0.1, mode="classic", seed=8),
                       Dense(48, 10))
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    model.to(device)
    opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    loss_fn = SoftmaxCrossEntropy(label_smoothing=0.05)
    (X, y), _ = gpunet.datasets.load_digits()
    loader = gpunet.DataLoader(X.astype(dtype), y, batch_size=64, shuffle=True, seed=3, device=device)
    losses = []
    while len(losses) < steps:
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            model.zero_grad()
            model.backward(loss_fn.backward())
            opt.step()
            losses.append(float(loss))
            if len(losses) == steps:
                break
    return numpy.array(losses), model.state_dict()


@pytest.mark.parametrize("dtype,rtol", [(numpy.float32, 1e-4), (numpy.float64, 1e-10)])
def test_cpu_gpu_parity_100_steps(gpu_device, dtype, rtol):
    cpu, cpu_state = _run("cpu", dtype)
    gpu, gpu_state = _run(gpu_device, dtype)
    assert numpy.all(numpy.isfinite(gpu))
    numpy.testing.assert_allclose(gpu, cpu, rtol=rtol, atol=0)
    # the same dropout draws, so the same number of them; weights agree after 100 steps
    assert sorted(gpu_state) == sorted(cpu_state)
    for k in cpu_state:
        numpy.testing.assert_allclose(gpu_state[k], cpu_state[k], rtol=100 * rtol,
                                      atol=100 * rtol, err_msg=k)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_run_is_deterministic_and_learns(dtype):
    a, sa = _run("cpu", dtype)
    b, sb = _run("cpu", dtype)
    numpy.testing.assert_array_equal(a, b)
    for k in sa:
        numpy.testing.assert_array_equal(sa[k], sb[k])
    assert a[-10:].mean() < 0.5 * a[:10].mean()
    # the dropout draw counters advanced once per training step and were saved
    assert int(sa["3.counter"]) == 100 and int(sa["5.counter"]) == 100
