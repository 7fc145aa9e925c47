"""Arrays a layer hands out stay the caller's: outputs, input gradients and parameter
gradients are never overwritten by a later call, even where the ops reuse scratch memory."""
import numpy
import pytest

import gpunet
from gpunet import Conv2D, Dense, Dropout, Flatten, MaxPool2D, AvgPool2D, Sequential, BatchNorm


def _models():
    gpunet.manual_seed(0)
    cnn = Sequential(Conv2D(1, 16, 3, padding=1, activation="relu"), MaxPool2D(2),
                     Conv2D(16, 32, 3, padding=1, activation="relu"), AvgPool2D(2), Flatten(),
                     Dense(1568, 10))
    mlp = Sequential(Dense(784, 64, activation="relu"), BatchNorm(64), Dropout(0.3), Dense(64, 10))
    return [("cnn", cnn, (16, 1, 28, 28)), ("mlp", mlp, (16, 784))]


@pytest.mark.parametrize("case", [0, 1])
def test_outputs_and_gradients_survive_the_next_call(xp, device, case):
    name, model, shape = _models()[case]
    model.to(device)
    rng = numpy.random.default_rng(5)
    x1, x2 = (xp.asarray(rng.standard_normal(shape).astype(numpy.float32)) for _ in range(2))
    for mode in ("train", "eval"):
        getattr(model, mode)()
        y1 = model(x1)
        keep = y1.copy()
        y2 = model(x2)
        assert bool((y1 == keep).all()) and not bool((y1 == y2).all()), (name, mode)
    model.train()
    y = model(x1)
    dx1 = model.backward(xp.ones_like(y))
    grads1 = [(p.grad, p.grad.copy()) for p in model.parameters()]
    dx1_keep = dx1.copy()
    model.zero_grad()
    y = model(x2)
    model.backward(xp.ones_like(y) * 2)
    assert bool((dx1 == dx1_keep).all())
    for g, keep in grads1:
        assert bool((g == keep).all()), name
