"""End-to-end training-step benchmarks: forward + softmax-CE + backward + SGD-momentum
(lr 0.01, momentum 0.9) on one fixed batch, for the models of ``gpunet bench``
(``gpunet.bench.MODELS``), as gpunet, as a hand-written NumPy loop
(``references.NumpyMLP``: the floor of a framework's own overhead) and as PyTorch.

In-process and calibrated by pytest-benchmark; ``gpunet bench --compare torch`` is the
process-isolated, alternating comparison quoted in the README.
"""
import numpy
import pytest

import references as R
from conftest import IMPLS, torch_or_skip

from gpunet.bench import MODELS, _inputs, gpunet_step, torch_step


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model", list(MODELS))
def test_train_step(benchmark, model, impl):
    spec = MODELS[model]
    if impl == "gpunet":
        if spec["kind"] == "cnn":
            pytest.importorskip("gpunet.layers.conv")
        step, _ = gpunet_step(spec, "cpu")
    elif impl == "numpy":
        if spec["kind"] != "mlp":
            pytest.skip("no hand-written NumPy CNN step; the per-op conv2d benchmark has the reference")
        net = R.NumpyMLP(spec["sizes"])
        x, y = _inputs(spec)
        step = lambda: net.step(x, y)                                           # noqa: E731
    else:
        torch_or_skip()
        step, _ = torch_step(spec, "cpu")
    for _ in range(3):
        step()
    benchmark.group = f"train step {model} batch {spec['batch']}"
    benchmark(step)


@pytest.mark.parametrize("impl", ["gpunet", "numpy"])
def test_mlp_steps_learn(impl, monkeypatch):
    """Not a timing: the benchmarked steps train (the loss on the fixed batch falls), so the
    numbers above belong to working code. The gpunet step is the very ``gpunet_step`` that
    ``test_train_step`` times; its model and loss are taken from the parts it builds, only
    to read the loss between steps."""
    spec = MODELS["mlp-784-128-10"]
    x, y = _inputs(spec)
    if impl == "numpy":
        net = R.NumpyMLP(spec["sizes"])
        losses = [float(net.step(x, y)) for _ in range(30)]
    else:
        from gpunet import bench
        built = []
        real_parts = bench._gpunet_parts

        def parts(*args, **kwargs):
            built.append(real_parts(*args, **kwargs))
            return built[-1]
        monkeypatch.setattr(bench, "_gpunet_parts", parts)
        step, _ = gpunet_step(spec, "cpu")
        (model, loss_fn, _, _, xd), = built
        assert numpy.array_equal(xd, x)

        def loss():
            model.eval()                     # a forward that leaves the step's caches alone
            value = float(loss_fn(model(x), y))
            model.train()
            return value
        losses = []
        for _ in range(30):
            losses.append(loss())
            step()
    assert numpy.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
