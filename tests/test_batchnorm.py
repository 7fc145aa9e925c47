"""BatchNorm: forward against the formula and PyTorch, running statistics, gradients, eval."""
import numpy
import pytest

import gpunet
from gpunet import BatchNorm, gradcheck, to_numpy
from gpunet.functional import batchnorm as F


def reference(x, gamma, beta, eps):
    """Direct formula, in float64, channels on axis 1."""
    x = x.astype(numpy.float64)
    axes = (0,) + tuple(range(2, x.ndim))
    s = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    mean = x.mean(axis=axes)
    var = ((x - mean.reshape(s)) ** 2).mean(axis=axes)
    y = (x - mean.reshape(s)) / numpy.sqrt(var.reshape(s) + eps) * gamma.reshape(s) + beta.reshape(s)
    return y, mean, var


def make(xp, device, rng, c, affine=True, dtype=numpy.float32, momentum=0.1):
    bn = BatchNorm(c, momentum=momentum, affine=affine)
    if affine:   # not the trivial init: gamma 1 / beta 0 would hide a missing affine step
        bn.gamma.data = rng.uniform(0.5, 2.0, c).astype(dtype)
        bn.beta.data = rng.standard_normal(c).astype(dtype)
    return bn.to(device)


@pytest.mark.parametrize("shape", [(16, 5), (4, 3, 5, 6)])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_forward_matches_formula(xp, device, rng, shape, dtype):
    c = shape[1]
    bn = make(xp, device, rng, c, dtype=dtype)
    x_host = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    y = bn(xp.asarray(x_host))
    assert y.dtype == dtype and y.shape == shape
    want, mean, var = reference(x_host, to_numpy(bn.gamma.data), to_numpy(bn.beta.data), 1e-5)
    tol = 1e-5 if dtype == numpy.float32 else 1e-12
    numpy.testing.assert_allclose(to_numpy(y), want, rtol=tol, atol=tol)
    m = x_host.size // c
    numpy.testing.assert_allclose(to_numpy(bn.running_mean), 0.1 * mean, rtol=1e-5)
    numpy.testing.assert_allclose(to_numpy(bn.running_var), 0.9 + 0.1 * var * m / (m - 1), rtol=1e-5)


def test_running_stats_stay_float32_and_eval_uses_them(xp, device, rng):
    bn = make(xp, device, rng, 4, dtype=numpy.float64)        # float64 model, float32 buffers
    for _ in range(3):
        bn(xp.asarray(rng.standard_normal((10, 4)) * 2 + 1))
    assert bn.running_mean.dtype == numpy.float32 and bn.running_var.dtype == numpy.float32
    bn.eval()
    rm, rv = to_numpy(bn.running_mean).copy(), to_numpy(bn.running_var).copy()
    rm64, rv64 = rm.astype(numpy.float64), rv.astype(numpy.float64)    # computed in x's dtype
    x_host = rng.standard_normal((7, 4))
    y = to_numpy(bn(xp.asarray(x_host)))
    g, b = to_numpy(bn.gamma.data), to_numpy(bn.beta.data)
    numpy.testing.assert_allclose(y, (x_host - rm64) / numpy.sqrt(rv64 + 1e-5) * g + b, rtol=1e-12)
    numpy.testing.assert_array_equal(to_numpy(bn.running_mean), rm)     # eval updates nothing
    # the buffers are plain attributes read at every call
    bn.running_mean = xp.asarray(numpy.full(4, 3.0, numpy.float32))
    bn.running_var = xp.asarray(numpy.full(4, 4.0, numpy.float32))
    y2 = to_numpy(bn(xp.asarray(x_host)))
    numpy.testing.assert_allclose(y2, (x_host - 3.0) / numpy.sqrt(4.0 + 1e-5) * g + b, rtol=1e-6)


def test_float32_update_never_promotes(xp, device, rng):
    bn = make(xp, device, rng, 3)
    y = bn(xp.asarray(rng.standard_normal((8, 3)).astype(numpy.float32)))
    assert y.dtype == numpy.float32
    assert bn.running_mean.dtype == numpy.float32 and bn.running_var.dtype == numpy.float32
    dx = bn.backward(xp.asarray(rng.standard_normal((8, 3)).astype(numpy.float32)))
    assert dx.dtype == numpy.float32 and bn.gamma.grad.dtype == numpy.float32


@pytest.mark.parametrize("shape", [(12, 3), (4, 3, 5, 6)])
@pytest.mark.parametrize("affine", [True, False])
def test_against_torch(xp, device, rng, shape, affine):
    torch = pytest.importorskip("torch")
    c = shape[1]
    tbn = (torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d)(
        c, eps=1e-5, momentum=0.2, affine=affine).double()
    bn = BatchNorm(c, eps=1e-5, momentum=0.2, affine=affine)
    if affine:
        g = rng.uniform(0.5, 2.0, c)
        b = rng.standard_normal(c)
        with torch.no_grad():
            tbn.weight.copy_(torch.from_numpy(g))
            tbn.bias.copy_(torch.from_numpy(b))
        bn.gamma.data, bn.beta.data = g, b                 # float64 model
    bn.to(device)
    for step in range(4):                                   # running stats over several steps
        x_host = rng.standard_normal(shape) * (step + 1) + step
        dy_host = rng.standard_normal(shape)
        tx = torch.from_numpy(x_host).requires_grad_(True)
        ty = tbn(tx)
        ty.backward(torch.from_numpy(dy_host))
        bn.zero_grad()
        y = bn(xp.asarray(x_host))
        dx = bn.backward(xp.asarray(dy_host))
        numpy.testing.assert_allclose(to_numpy(y), ty.detach().numpy(), rtol=1e-10, atol=1e-10)
        numpy.testing.assert_allclose(to_numpy(dx), tx.grad.numpy(), rtol=1e-8, atol=1e-10)
        if affine:
            numpy.testing.assert_allclose(to_numpy(bn.gamma.grad), tbn.weight.grad.numpy(), rtol=1e-8, atol=1e-10)
            numpy.testing.assert_allclose(to_numpy(bn.beta.grad), tbn.bias.grad.numpy(), rtol=1e-8, atol=1e-10)
            tbn.weight.grad = tbn.bias.grad = None
        # our buffers are float32; torch's (of a .double() module) float64
        numpy.testing.assert_allclose(to_numpy(bn.running_mean), tbn.running_mean.numpy(), rtol=1e-6, atol=1e-6)
        numpy.testing.assert_allclose(to_numpy(bn.running_var), tbn.running_var.numpy(), rtol=1e-6, atol=1e-6)
    bn.eval()
    tbn.eval()
    x_host = rng.standard_normal(shape)
    with torch.no_grad():
        want = tbn(torch.from_numpy(x_host)).numpy()
    numpy.testing.assert_allclose(to_numpy(bn(xp.asarray(x_host))), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(6, 4), (3, 2, 3, 4)])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck(xp, device, rng, shape, affine):
    bn = make(xp, device, rng, shape[1], affine=affine)
    x = xp.asarray(rng.standard_normal(shape) * 2 + 0.5)
    assert gradcheck(bn, x)
    # float64 batch statistics were folded into the float32 buffers without promoting them
    assert bn.running_mean.dtype == numpy.float32


def test_constant_channel_is_finite(xp, device, rng):
    bn = make(xp, device, rng, 3, dtype=numpy.float32)
    x_host = rng.standard_normal((8, 3, 2, 2)).astype(numpy.float32)
    x_host[:, 1] = 4.0                                      # var = 0 in channel 1
    y = to_numpy(bn(xp.asarray(x_host)))
    assert numpy.all(numpy.isfinite(y))
    numpy.testing.assert_allclose(y[:, 1], to_numpy(bn.beta.data)[1], rtol=1e-6)   # x̂ = 0
    dx = to_numpy(bn.backward(xp.asarray(rng.standard_normal(x_host.shape).astype(numpy.float32))))
    assert numpy.all(numpy.isfinite(dx)) and numpy.all(numpy.isfinite(to_numpy(bn.gamma.grad)))
    _, _, var, inv_std = F.batch_norm_forward(x_host, None, None, 1e-5)
    assert var[1] == 0
    numpy.testing.assert_allclose(inv_std[1], 1 / numpy.sqrt(1e-5), rtol=1e-6)


def test_parameters_buffers_state_dict():
    bn = BatchNorm(5)
    names = [n for n, _ in bn.named_parameters()]
    assert names == ["gamma", "beta"]
    assert all(not p.decay for p in bn.parameters())
    numpy.testing.assert_array_equal(bn.gamma.data, numpy.ones(5, numpy.float32))
    numpy.testing.assert_array_equal(bn.beta.data, numpy.zeros(5, numpy.float32))
    sd = bn.state_dict()
    assert set(sd) == {"gamma", "beta", "running_mean", "running_var"}
    assert BatchNorm(5, affine=False).parameters() == []
    assert set(BatchNorm(5, affine=False).state_dict()) == {"running_mean", "running_var"}


def test_bad_input(xp):
    bn = BatchNorm(3)
    with pytest.raises(ValueError, match=r"BatchNorm: expected a 2-D or 4-D input, got shape \(2, 3, 4\)"):
        bn(xp.ones((2, 3, 4), dtype=xp.float32))
    with pytest.raises(ValueError, match=r"BatchNorm: expected 3 features along axis 1, got shape \(2, 4\)"):
        bn(xp.ones((2, 4), dtype=xp.float32))
    with pytest.raises(ValueError, match="BatchNorm: expected dtype float32.*got float64"):
        bn(xp.ones((2, 3), dtype=xp.float64))
    with pytest.raises(ValueError, match="BatchNorm: training needs more than one value"):
        bn(xp.ones((1, 3), dtype=xp.float32))
    for kw in ({"num_features": 0}, {"num_features": 3, "eps": 0}, {"num_features": 3, "momentum": 1.5}):
        with pytest.raises(ValueError, match="BatchNorm"):
            BatchNorm(**kw)


def test_a_last_batch_of_one_sample_is_named_with_the_fix():
    """Found by the first-hour audit: a Trainer.fit whose epoch ended in a batch of one sample
    trained the whole epoch, then failed with no hint of the cause; the message says it.
    (Since the failure-path audit, fit finds that batch before training and names it.)"""
    (X, y), _ = gpunet.datasets.load_digits()
    X, y = X[:5], y[:5]                              # batch_size=2: the last batch holds one
    model = gpunet.Sequential(gpunet.Dense(64, 3), BatchNorm(3), gpunet.Dense(3, 10))
    trainer = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(model, lr=0.1))
    with pytest.raises(ValueError, match=r"its last batch holds one sample \(5 samples, batch_size=2\), and "
                                         r"BatchNorm '1' gets inputs of shape \(1, 3\).*drop_last=True"):
        trainer.fit((X, y), epochs=1, batch_size=2, progress=False)
    with pytest.raises(ValueError, match=r"got input shape \(1, 3\); a batch of one sample .*"
                                         r"N % batch_size == 1.*drop_last=True"):
        model[1](numpy.ones((1, 3), numpy.float32))      # the layer's own message, in a loop of one's own
    loader = gpunet.DataLoader(X, y, batch_size=2, drop_last=True)
    trainer.fit(loader, epochs=1, progress=False)       # what the message proposes works
    with pytest.raises(ValueError, match=r"variance, got input shape \(0, 3\)$"):   # no sample: no hint
        BatchNorm(3)(numpy.ones((0, 3), numpy.float32))


@pytest.mark.parametrize("dtype,shape", [(numpy.float32, (7, 5, 3, 3)), (numpy.float64, (9, 4)),
                                         (numpy.float16, (6, 3, 4, 4))])
def test_device_running_statistics_update_in_place_in_the_statistics_kernel(dtype, shape):
    """On a device the statistics kernel updates running_mean/var in place (no launch of
    its own; the arrays keep their addresses, for CUDA graphs), with NumPy's roundings:
    ``rm*(1-momentum) + mean*momentum``, the variance unbiased first."""
    import gpunet
    from gpunet import sim
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    sp = gpunet.backend.require_sim()
    bn = BatchNorm(shape[1], momentum=0.37)
    if dtype == numpy.float64:
        bn.to(dtype=numpy.float64)
    bn.to("sim")
    rm, rv = bn.running_mean, bn.running_var
    want_m, want_v = to_numpy(rm), to_numpy(rv)
    g, b = (p.data.astype(rm.dtype) for p in (bn.gamma, bn.beta))
    rng = numpy.random.default_rng(1)
    for _ in range(3):
        x = sp.asarray((rng.standard_normal(shape) * 3 + 2).astype(dtype))
        sim.reset_counters()
        bn(x)
        assert sim.counters()["launches"] == 3, sim.counters()["kernels"]
        _, mean, var, _ = F.batch_norm_forward(x, g, b, bn.eps)
        m = x.size // shape[1]
        want_m = want_m * (1.0 - 0.37) + to_numpy(mean) * 0.37
        want_v = want_v * (1.0 - 0.37) + (to_numpy(var) * (m / (m - 1.0))) * 0.37
        assert bn.running_mean is rm and bn.running_var is rv
        numpy.testing.assert_array_equal(to_numpy(rm), want_m)
        numpy.testing.assert_array_equal(to_numpy(rv), want_v)
    with pytest.raises(ValueError, match="running= is for device arrays"):
        F.batch_norm_forward(numpy.ones((4, 2)), None, None, running=(want_m, want_v, 0.1))


@pytest.mark.parametrize("order", [(1, 2, 3, 0), (1, 0, 2, 3)], ids=["chwn", "cnhw"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dy_same_layout", [True, False])
def test_channel_major_memory_runs_per_channel_and_keeps_layout(rng, order, affine, dy_same_layout):
    """A CPU convolution's output (CHWN memory; CNHW too) is normalized channel by channel
    over its own memory: the same results as on a C-contiguous copy (up to the order of
    the sums), the output and dx in the input's memory order, a constant channel finite."""
    inverse = tuple(numpy.argsort(order))
    shape = (5, 3, 4, 6)
    x = (rng.standard_normal(tuple(shape[i] for i in order)) * 3 + 2).transpose(inverse)
    x[:, 2] = 1.5                                           # a constant channel
    xc = numpy.ascontiguousarray(x)
    gamma, beta = (rng.uniform(0.5, 2.0, 3), rng.standard_normal(3)) if affine else (None, None)
    y, mean, var, inv_std = F.batch_norm_forward(x, gamma, beta)
    yc, meanc, varc, inv_stdc = F.batch_norm_forward(xc, gamma, beta)
    assert y.transpose(order).flags.c_contiguous
    for a, b in ((y, yc), (mean, meanc), (var, varc), (inv_std, inv_stdc)):
        numpy.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    assert var[2] == 0 and numpy.all(numpy.isfinite(y))
    dy = rng.standard_normal(shape)
    if dy_same_layout:
        dy = numpy.ascontiguousarray(dy.transpose(order)).transpose(inverse)
    dx, dgamma, dbeta = F.batch_norm_backward(dy, x, gamma, mean, inv_std)
    dxc, dgammac, dbetac = F.batch_norm_backward(numpy.ascontiguousarray(dy), xc, gamma, meanc, inv_stdc)
    assert dx.transpose(order).flags.c_contiguous
    for a, b in ((dx, dxc), (dgamma, dgammac), (dbeta, dbetac)):
        numpy.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_momentum_none_says_the_cumulative_average_is_not_offered():
    """PyTorch's BatchNorm(momentum=None) got 'expected momentum to be a real number, got None',
    which does not say that the cumulative average is what is missing, nor what to pass."""
    msg = (r"^BatchNorm: expected momentum to be a number in \[0, 1\], got None; PyTorch's momentum=None "
           r"\(a cumulative average of every batch\) is not offered: pass a number \(the weight of each "
           r"new batch, 0.1 by default\)$")
    with pytest.raises(TypeError, match=msg):
        gpunet.BatchNorm(3, momentum=None)
    bn = gpunet.BatchNorm(3, momentum=0.3)
    with pytest.raises(TypeError, match=msg):
        bn.momentum = None
    assert bn.momentum == 0.3
    with pytest.raises(ValueError, match=r"^BatchNorm: expected momentum in \[0, 1\], got 1.5$"):
        bn.momentum = 1.5


def test_functional_batch_norm_refuses_an_affine_part_of_another_dtype(xp):
    """Found by the dtype audit: gpunet.functional's batch norm given a float32 x and a
    float64 gamma/beta computed on the CPU, in float32 in training mode and in float64 in
    eval mode, while on the sim batch_norm_forward raised 'gpunet.cuda.batchnorm_forward:
    gamma/beta must have dtype float32, got float64'. All three ops now refuse a mix on
    every device, naming the op and both dtypes; a float16 x with float32 gamma/beta
    (mixed precision) is still taken."""
    rng = numpy.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((6, 3)).astype(numpy.float32))
    g64, b64 = xp.asarray(numpy.ones(3)), xp.asarray(numpy.zeros(3))
    g32, b32 = g64.astype(numpy.float32), b64.astype(numpy.float32)
    stats = xp.zeros(3, numpy.float32), xp.ones(3, numpy.float32)
    msg = r"input dtype float32 differs from the {} dtype float64; cast the {}: {}\.astype\(numpy\.float32\)$"
    with pytest.raises(ValueError, match="^batch_norm_forward: " + msg.format(*["gamma"] * 3)):
        F.batch_norm_forward(x, g64, b64)
    with pytest.raises(ValueError, match="^batch_norm_forward: " + msg.format(*["beta"] * 3)):
        F.batch_norm_forward(x, g32, b64)
    with pytest.raises(ValueError, match="^batch_norm_eval: " + msg.format(*["gamma"] * 3)):
        F.batch_norm_eval(x, *stats, g64, b64)
    y, mean, var, inv_std = F.batch_norm_forward(x, g32, b32)
    with pytest.raises(ValueError, match="^batch_norm_backward: " + msg.format(*["gamma"] * 3)):
        F.batch_norm_backward(y, x, g64, mean, inv_std)
    assert F.batch_norm_eval(x, *stats, g32, b32).dtype == numpy.float32
    h = x.astype(numpy.float16)
    assert F.batch_norm_forward(h, g32, b32)[0].dtype == numpy.float16
    assert F.batch_norm_eval(h, *stats, g32, b32).dtype == numpy.float16
