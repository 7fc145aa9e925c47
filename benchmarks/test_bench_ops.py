"""Per-op benchmarks: each op as gpunet runs it, as plain NumPy (references.py) and as
PyTorch on the CPU. Run: ``pytest benchmarks/test_bench_ops.py --benchmark-only``.

Forward+backward benchmarks time training mode (gpunet caches what backward needs; PyTorch
records the autograd graph); parameter gradients are reset before each backward, so every
call measures the assign path, not the accumulate path.
"""
import numpy
import pytest

import references as R
from conftest import IMPLS, torch_or_skip

import gpunet
from gpunet import optim
from gpunet.layers import Dense
from gpunet.layers.activations import get as get_activation

F32 = numpy.float32


def _close(got, want, rtol=1e-4, atol=1e-5):
    for g, w in zip(got, want):
        numpy.testing.assert_allclose(numpy.asarray(g, dtype=numpy.float64), numpy.asarray(w, numpy.float64),
                                      rtol=rtol, atol=atol)


def _t(torch, a, grad=False):
    t = torch.from_numpy(numpy.ascontiguousarray(a))
    return t.requires_grad_(True) if grad else t


def _run(benchmark, group, fn, check):
    """Check ``fn()``'s outputs once, then time ``fn``."""
    benchmark.group = group
    check(fn())
    benchmark(fn)


# -- Dense ----------------------------------------------------------------------------------
N, IN, OUT = 256, 784, 1024


@pytest.fixture
def dense_data(rng):
    x = rng.standard_normal((N, IN), dtype=F32)
    w = (rng.standard_normal((OUT, IN)) * (2.0 / IN) ** 0.5).astype(F32)
    b = rng.standard_normal(OUT, dtype=F32) * F32(0.1)
    dy = rng.standard_normal((N, OUT), dtype=F32)
    return x, w, b, dy


def _gpunet_dense(w, b):
    layer = Dense(IN, OUT, activation="relu")
    layer.weight.data, layer.bias.data = w.copy(), b.copy()
    return layer


@pytest.mark.parametrize("impl", IMPLS)
def test_dense_forward(benchmark, impl, dense_data):
    x, w, b, _ = dense_data
    want = R.dense_forward(x, w, b)
    if impl == "gpunet":
        layer = _gpunet_dense(w, b)
        fn = lambda: (layer.forward(x),)                                     # noqa: E731
    elif impl == "numpy":
        fn = lambda: (R.dense_forward(x, w, b),)                              # noqa: E731
    else:
        torch = torch_or_skip()
        tx, tw, tb = _t(torch, x), _t(torch, w, True), _t(torch, b, True)
        fn = lambda: (torch.relu(torch.nn.functional.linear(tx, tw, tb)).detach().numpy(),)  # noqa: E731
    _run(benchmark, f"dense forward {N}x{IN}->{OUT} relu", fn, lambda out: _close(out, (want,)))


@pytest.mark.parametrize("need_dx", [True, False], ids=["with-dx", "first-layer"])
@pytest.mark.parametrize("impl", IMPLS)
def test_dense_backward(benchmark, impl, need_dx, dense_data):
    x, w, b, dy = dense_data
    y = R.dense_forward(x, w, b)
    want = R.dense_backward(dy, x, w, y, need_dx=need_dx)
    if impl == "gpunet":
        layer = _gpunet_dense(w, b)
        layer.input_grad = need_dx
        layer.forward(x)

        def fn():
            layer.zero_grad()
            dx = layer.backward(dy)
            return dx, layer.weight.grad, layer.bias.grad
    elif impl == "numpy":
        fn = lambda: R.dense_backward(dy, x, w, y, need_dx=need_dx)            # noqa: E731
    else:
        torch = torch_or_skip()
        tx, tw, tb, tdy = _t(torch, x, need_dx), _t(torch, w, True), _t(torch, b, True), _t(torch, dy)
        ty = torch.relu(torch.nn.functional.linear(tx, tw, tb))
        inputs = (tx, tw, tb) if need_dx else (tw, tb)

        def fn():
            g = torch.autograd.grad(ty, inputs, tdy, retain_graph=True)
            return ((None,) if not need_dx else ()) + tuple(t.numpy() for t in g)

    def check(out):
        if need_dx:
            _close(out, want, atol=1e-3)
        else:
            assert out[0] is None
            _close(out[1:], want[1:], atol=1e-3)
    _run(benchmark, f"dense backward {N}x{IN}->{OUT} relu ({'with dx' if need_dx else 'first layer, no dx'})",
         fn, check)


# -- activations, forward + backward -------------------------------------------------------
ACT_SHAPE = (256, 1024)
TORCH_ACT = {
    "sigmoid": lambda F, x: F.sigmoid(x), "tanh": lambda F, x: F.tanh(x), "relu": lambda F, x: F.relu(x),
    "leaky_relu": lambda F, x: F.leaky_relu(x, 0.01), "elu": lambda F, x: F.elu(x),
    "gelu": lambda F, x: F.gelu(x), "gelu_tanh": lambda F, x: F.gelu(x, approximate="tanh"),
    "silu": lambda F, x: F.silu(x),
    "softplus": lambda F, x: F.softplus(x), "softmax": lambda F, x: F.softmax(x, dim=1),
    "log_softmax": lambda F, x: F.log_softmax(x, dim=1),
}


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name", list(R.ACTIVATIONS))
def test_activation(benchmark, name, impl, rng):
    x = rng.standard_normal(ACT_SHAPE, dtype=F32)
    dy = rng.standard_normal(ACT_SHAPE, dtype=F32)
    f, fb = R.ACTIVATIONS[name]
    y = f(x)
    want = (y, fb(dy, x, y))
    if impl == "gpunet":
        layer = gpunet.GELU(approximate="tanh") if name == "gelu_tanh" else get_activation(name)

        def fn():
            return layer.forward(x), layer.backward(dy)
    elif impl == "numpy":
        def fn():
            y = f(x)
            return y, fb(dy, x, y)
    else:
        torch = torch_or_skip()
        tx, tdy, op = _t(torch, x, True), _t(torch, dy), TORCH_ACT[name]

        def fn():
            ty = op(torch.nn.functional, tx)
            (dx,) = torch.autograd.grad(ty, tx, tdy)
            return ty.detach().numpy(), dx.numpy()
    _run(benchmark, f"activation {name} fwd+bwd {ACT_SHAPE}", fn, lambda out: _close(out, want, atol=1e-4))


# -- softmax cross-entropy, forward + backward ---------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(64, 10), (256, 10), (256, 1000)], ids=str)
def test_softmax_xent(benchmark, shape, impl, rng):
    z = rng.standard_normal(shape, dtype=F32)
    y = rng.integers(0, shape[1], shape[0])
    want = R.softmax_xent(z, y)
    if impl == "gpunet":
        loss_fn = gpunet.SoftmaxCrossEntropy()

        def fn():
            loss = loss_fn(z, y)
            return loss, loss_fn.backward()
    elif impl == "numpy":
        fn = lambda: R.softmax_xent(z, y)                                      # noqa: E731
    else:
        torch = torch_or_skip()
        tz, ty = _t(torch, z, True), _t(torch, y)

        def fn():
            loss = torch.nn.functional.cross_entropy(tz, ty)
            (dz,) = torch.autograd.grad(loss, tz)
            return loss.detach().numpy(), dz.numpy()
    _run(benchmark, f"softmax-CE fwd+bwd {shape}", fn, lambda out: _close(out, want, atol=1e-6))


# -- BatchNorm, Dropout, Conv2D: colleagues' layers, benchmarked when present ---------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(256, 1024), (64, 32, 14, 14)], ids=str)
def test_batchnorm(benchmark, shape, impl, rng):
    layers = pytest.importorskip("gpunet.layers.batchnorm")
    x = rng.standard_normal(shape, dtype=F32) * F32(2) + F32(1)
    dy = rng.standard_normal(shape, dtype=F32)
    c = shape[1]
    gamma = (1 + 0.1 * rng.standard_normal(c)).astype(F32)
    beta = (0.1 * rng.standard_normal(c)).astype(F32)
    yr, mean, inv = R.batchnorm_forward(x, gamma, beta)
    want = (yr,) + R.batchnorm_backward(dy, x, gamma, mean, inv)
    if impl == "gpunet":
        bn = layers.BatchNorm(c)
        bn.gamma.data, bn.beta.data = gamma.copy(), beta.copy()

        def fn():
            y = bn.forward(x)
            bn.zero_grad()
            return y, bn.backward(dy), bn.gamma.grad, bn.beta.grad
    elif impl == "numpy":
        def fn():
            y, m, i = R.batchnorm_forward(x, gamma, beta)
            return (y,) + R.batchnorm_backward(dy, x, gamma, m, i)
    else:
        torch = torch_or_skip()
        tx, tdy, tg, tb = _t(torch, x, True), _t(torch, dy), _t(torch, gamma, True), _t(torch, beta, True)
        rm, rv = torch.zeros(c), torch.ones(c)

        def fn():
            y = torch.nn.functional.batch_norm(tx, rm, rv, tg, tb, training=True, momentum=0.1, eps=1e-5)
            g = torch.autograd.grad(y, (tx, tg, tb), tdy)
            return (y.detach().numpy(),) + tuple(t.numpy() for t in g)
    _run(benchmark, f"batchnorm fwd+bwd {shape}", fn, lambda out: _close(out, want, rtol=1e-3, atol=1e-3))


@pytest.mark.parametrize("impl", IMPLS)
def test_dropout(benchmark, impl, rng):
    layers = pytest.importorskip("gpunet.layers.dropout")
    p = 0.5
    x = rng.standard_normal(ACT_SHAPE, dtype=F32)
    dy = rng.standard_normal(ACT_SHAPE, dtype=F32)
    mask = rng.random(ACT_SHAPE) >= p
    if impl == "gpunet":
        d = layers.Dropout(p, seed=0)

        def fn():
            return d.forward(x), d.backward(dy)
    elif impl == "numpy":
        fn = lambda: (R.dropout(x, mask, p), R.dropout(dy, mask, p))           # noqa: E731
    else:
        torch = torch_or_skip()
        tx, tdy = _t(torch, x, True), _t(torch, dy)

        def fn():
            y = torch.nn.functional.dropout(tx, p, training=True)
            (dx,) = torch.autograd.grad(y, tx, tdy)
            return y.detach().numpy(), dx.numpy()

    def check(out):   # masks differ by design; the map must be x·m/(1-p), same m both ways
        y, dx = out
        kept = y != 0
        numpy.testing.assert_allclose(y[kept], 2 * x[kept], rtol=1e-6)
        numpy.testing.assert_allclose(dx, numpy.where(kept, 2 * dy, 0), rtol=1e-6)
        assert 0.45 < kept.mean() < 0.55
    _run(benchmark, f"dropout p=0.5 fwd+bwd {ACT_SHAPE}", fn, check)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", [(64, 1, 28, 16), (64, 16, 14, 32)], ids=["64x1x28x28->16", "64x16x14x14->32"])
def test_conv2d(benchmark, case, impl, rng):
    conv = pytest.importorskip("gpunet.layers.conv")
    n, c, hw, o = case
    x = rng.standard_normal((n, c, hw, hw), dtype=F32)
    w = (rng.standard_normal((o, c, 3, 3)) * (2.0 / (9 * c)) ** 0.5).astype(F32)
    b = (0.1 * rng.standard_normal(o)).astype(F32)
    dy = rng.standard_normal((n, o, hw, hw), dtype=F32)
    yr, cols = R.conv2d_forward(x, w, b, 1)
    want = (yr,) + R.conv2d_backward(dy, x, w, cols, 1)
    if impl == "gpunet":
        layer = conv.Conv2D(c, o, 3, padding=1)
        layer.weight.data, layer.bias.data = w.copy(), b.copy()

        def fn():
            y = layer.forward(x)
            layer.zero_grad()
            return y, layer.backward(dy), layer.weight.grad, layer.bias.grad
    elif impl == "numpy":
        def fn():
            y, cl = R.conv2d_forward(x, w, b, 1)
            return (y,) + R.conv2d_backward(dy, x, w, cl, 1)
    else:
        torch = torch_or_skip()
        tx, tw, tb, tdy = _t(torch, x, True), _t(torch, w, True), _t(torch, b, True), _t(torch, dy)

        def fn():
            y = torch.nn.functional.conv2d(tx, tw, tb, padding=1)
            g = torch.autograd.grad(y, (tx, tw, tb), tdy)
            return (y.detach().numpy(),) + tuple(t.numpy() for t in g)
    _run(benchmark, f"conv2d 3x3 pad 1 fwd+bwd {case}", fn, lambda out: _close(out, want, rtol=1e-3, atol=1e-3))


# -- optimizer steps over the parameters of MLP 784-1024-1024-10 --------------------------------
SHAPES = [(1024, 784), (1024,), (1024, 1024), (1024,), (10, 1024), (10,)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["sgd-momentum", "adam"])
def test_optimizer_step(benchmark, kind, impl, rng):
    params = [rng.standard_normal(s, dtype=F32) for s in SHAPES]
    grads = [rng.standard_normal(s, dtype=F32) for s in SHAPES]
    ref = [p.copy() for p in params]
    ropt = R.SGDMomentum(ref, 0.01, 0.9) if kind == "sgd-momentum" else R.Adam(ref, 1e-3)
    for _ in range(3):
        ropt.step(grads)
    if impl == "gpunet":
        ps = [gpunet.Parameter(p.copy()) for p in params]
        for p, g in zip(ps, grads):
            p.grad = g
        opt = optim.SGD(ps, lr=0.01, momentum=0.9) if kind == "sgd-momentum" else optim.Adam(ps, lr=1e-3)
        fn, current = opt.step, lambda: [p.data for p in ps]
    elif impl == "numpy":
        mine = [p.copy() for p in params]
        o = R.SGDMomentum(mine, 0.01, 0.9) if kind == "sgd-momentum" else R.Adam(mine, 1e-3)
        fn, current = (lambda: o.step(grads)), (lambda: mine)
    else:
        torch = torch_or_skip()
        tp = [_t(torch, p.copy(), True) for p in params]
        for p, g in zip(tp, grads):
            p.grad = torch.from_numpy(g)
        o = torch.optim.SGD(tp, lr=0.01, momentum=0.9) if kind == "sgd-momentum" else torch.optim.Adam(tp, lr=1e-3)
        fn, current = o.step, (lambda: [p.detach().numpy() for p in tp])
    for _ in range(3):
        fn()
    _close(current(), ref, rtol=1e-5, atol=1e-6)
    benchmark.group = f"optimizer step {kind} (MLP 784-1024-1024-10 parameters)"
    benchmark(fn)
