"""Residual(block): y = x + block(x), dx = dy + block.backward(dy)."""
import numpy
import pytest

import gpunet
from gpunet import to_numpy
from gpunet.layers import Conv2D, Dense, Residual, Sequential, Tanh


def _to(layer, xp):
    return layer.to(gpunet.backend.device_of(xp.empty(0)))


def _conv_block(xp, seed=0):
    gpunet.manual_seed(seed)
    block = Sequential(Conv2D(3, 4, 3, padding=1, activation="tanh"), Conv2D(4, 3, (1, 3), padding=(0, 1)))
    for p in block.parameters():
        p.data = p.data.astype(numpy.float64)
    block[0].bias.data = numpy.linspace(-0.5, 0.5, 4)
    return _to(block, xp)


def test_forward_is_x_plus_block(xp, rng):
    block = _conv_block(xp)
    layer = Residual(block)
    x = xp.asarray(rng.standard_normal((2, 3, 5, 6)))
    y = layer(x)
    numpy.testing.assert_allclose(to_numpy(y), to_numpy(x) + to_numpy(block(x)), rtol=1e-14)


def test_backward_is_dy_plus_block_backward(xp, rng):
    gpunet.manual_seed(0)
    block = _to(Sequential(Dense(4, 4, activation="tanh")), xp)
    block[0].weight.data = block[0].weight.data.astype(numpy.float64)
    block[0].bias.data = block[0].bias.data.astype(numpy.float64)
    layer = Residual(block)
    x = xp.asarray(rng.standard_normal((3, 4)))
    dy = xp.asarray(rng.standard_normal((3, 4)))
    layer(x)
    dx = to_numpy(layer.backward(dy))
    g = to_numpy(block[0].weight.grad).copy()
    block.zero_grad()
    block(x)
    numpy.testing.assert_allclose(dx, to_numpy(dy) + to_numpy(block.backward(dy)), rtol=1e-14)
    numpy.testing.assert_allclose(g, to_numpy(block[0].weight.grad), rtol=1e-14)


def test_gradcheck_conv_block(xp, rng):
    gpunet.gradcheck(Residual(_conv_block(xp)), xp.asarray(rng.standard_normal((2, 3, 5, 6))))


def test_gradcheck_nested(xp, rng):
    gpunet.manual_seed(1)
    inner = Residual(Sequential(Dense(5, 5, activation="tanh"), Dense(5, 5)))
    model = _to(Sequential(Residual(inner), Tanh(), Residual(Dense(5, 5))), xp)
    gpunet.gradcheck(model, xp.asarray(rng.standard_normal((3, 5))))


def test_state_dict_names_and_round_trip(xp, rng):
    a = Sequential(Conv2D(3, 3, 1), Residual(_conv_block(xp, seed=0)))
    names = [n for n, _ in a.named_parameters()]
    assert names == ["0.weight", "0.bias", "1.block.0.weight", "1.block.0.bias",
                     "1.block.1.weight", "1.block.1.bias"]
    assert set(a.state_dict()) == set(names)
    b = Sequential(Conv2D(3, 3, 1), Residual(_conv_block(xp, seed=5)))
    for model in (a, b):
        for p in model.parameters():
            p.data = p.data.astype(numpy.float64)
        _to(model, xp)
    x = xp.asarray(rng.standard_normal((2, 3, 4, 4)))
    assert not numpy.allclose(to_numpy(a(x)), to_numpy(b(x)))
    b.load_state_dict(a.state_dict())
    numpy.testing.assert_array_equal(to_numpy(a(x)), to_numpy(b(x)))


def test_train_eval_propagate_to_block():
    layer = Residual(Sequential(Dense(2, 2)))
    layer.eval()
    assert not layer.block.training and not layer.block[0].training
    layer.train()
    assert layer.block[0].training


def test_rejects_shape_changing_block(xp):
    layer = _to(Residual(Dense(4, 3)), xp)
    with pytest.raises(ValueError, match=r"Residual: the block must keep the input shape; expected output "
                                         r"shape \(2, 4\), got \(2, 3\)"):
        layer(xp.zeros((2, 4), numpy.float32))


def test_rejects_non_layer_block():
    with pytest.raises(TypeError, match="Residual: block must be a Layer, got function"):
        Residual(lambda x: x)
