"""PyTorch and Keras habits that once did nothing, or failed deep inside NumPy: each now
works as such a user expects or raises an error that names the gpunet way."""
import numpy
import pytest

import gpunet
from gpunet import Dense, ReLU, Sequential, SoftmaxCrossEntropy, optim


def _mlp(seed=0):
    gpunet.manual_seed(seed)
    return Sequential(Dense(4, 8, activation="relu"), Dense(8, 3))


def _step(model, opt):
    x = numpy.random.default_rng(0).standard_normal((6, 4)).astype(numpy.float32)
    loss_fn = SoftmaxCrossEntropy()
    loss_fn(model(x), numpy.arange(6) % 3)
    opt.zero_grad()
    model.backward(loss_fn.backward())
    opt.step()


@pytest.mark.parametrize("freeze", [
    lambda m: setattr(m[0], "trainable", False),                 # Keras
    lambda m: setattr(m, "trainable", False),
    lambda m: setattr(m[0].weight, "requires_grad", False),     # PyTorch
    lambda m: m[0].weight.requires_grad_(False),
])
def test_freezing_the_keras_or_pytorch_way_raises_instead_of_training_on(freeze):
    model = _mlp()
    with pytest.raises(AttributeError, match=r"model\[1:\]\.parameters\(\)"):
        freeze(model)
    # nothing was stored: reading gives True, as every parameter is still trained
    assert model[0].trainable is True and model[0].weight.requires_grad is True


def test_trainable_and_requires_grad_true_are_accepted_and_change_nothing():
    model = _mlp()
    model[0].trainable = True
    model.trainable = numpy.True_
    assert model[0].weight.requires_grad_(True) is model[0].weight
    model[0].weight.requires_grad = True
    with pytest.raises(TypeError, match="trainable to be a bool"):
        model[0].trainable = 0
    with pytest.raises(TypeError, match="requires_grad to be a bool"):
        model[0].weight.requires_grad = "no"


def test_the_way_the_error_names_freezes():
    model = _mlp()
    before = model[0].weight.data.copy(), model[1].weight.data.copy()
    _step(model, optim.SGD(model[1:].parameters(), lr=0.1))
    assert numpy.array_equal(model[0].weight.data, before[0])
    assert not numpy.array_equal(model[1].weight.data, before[1])
