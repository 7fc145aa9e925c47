"""Dense (DESIGN §4): forward against x @ W.T + b, backward against gradcheck and torch."""
import numpy
import pytest

import gpunet

ACTIVATIONS = [None, "identity", "sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu",
               "softplus", "softmax", "log_softmax"]


def _x(n=5, f=4, seed=0, dtype=numpy.float32):
    return numpy.random.default_rng(seed).standard_normal((n, f)).astype(dtype)


def _randomize_bias(layer, seed=1):
    b = numpy.random.default_rng(seed).standard_normal(layer.bias.shape).astype(numpy.float32)
    layer.bias.data = gpunet.to_device(b, layer.device)
    return b


def test_shapes_and_bias_zeros():
    d = gpunet.Dense(4, 3)
    assert d.weight.shape == (3, 4) and d.bias.shape == (3,)
    assert d.weight.data.dtype == numpy.float32 and d.bias.data.dtype == numpy.float32
    numpy.testing.assert_array_equal(d.bias.data, numpy.zeros(3))
    assert d.weight.decay is True and d.bias.decay is False
    assert d.weight.name == "weight" and d.bias.name == "bias"
    assert [p for p in d.parameters()] == [d.weight, d.bias]
    assert d.training is True
    nb = gpunet.Dense(4, 3, bias=False)
    assert nb.bias is None and nb.parameters() == [nb.weight]


def test_forward_is_affine_map(xp, device):
    d = gpunet.Dense(4, 3).to(device)
    b = _randomize_bias(d)
    x = _x()
    y = d(xp.asarray(x))
    assert gpunet.get_array_module(y) is xp
    assert y.shape == (5, 3) and y.dtype == numpy.float32
    w = gpunet.to_numpy(d.weight.data).astype(numpy.float64)
    numpy.testing.assert_allclose(gpunet.to_numpy(y), x.astype(numpy.float64) @ w.T + b, rtol=1e-5, atol=1e-6)
    nb = gpunet.Dense(4, 3, bias=False).to(device)
    w = gpunet.to_numpy(nb.weight.data).astype(numpy.float64)
    numpy.testing.assert_allclose(gpunet.to_numpy(nb(xp.asarray(x))), x @ w.T, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
def test_fused_activation_equals_separate_layer(xp, device, activation):
    """Dense(activation=a) == Dense followed by the activation layer, forward and backward."""
    from gpunet.layers.activations import get
    d = gpunet.Dense(4, 6, activation=activation).to(device)
    _randomize_bias(d)
    plain = gpunet.Dense(4, 6, init=lambda shape, rng: gpunet.to_numpy(d.weight.data)).to(device)
    plain.bias.data = d.bias.data.copy()
    act = get(activation)
    x = xp.asarray(_x(seed=2))
    dy = xp.asarray(_x(5, 6, seed=3))
    y = d(x)
    y_ref = act(plain(x))
    numpy.testing.assert_allclose(gpunet.to_numpy(y), gpunet.to_numpy(y_ref), rtol=1e-6, atol=1e-7)
    dx = d.backward(dy)
    dx_ref = plain.backward(act.backward(dy))
    numpy.testing.assert_allclose(gpunet.to_numpy(dx), gpunet.to_numpy(dx_ref), rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(gpunet.to_numpy(d.weight.grad), gpunet.to_numpy(plain.weight.grad),
                                  rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(gpunet.to_numpy(d.bias.grad), gpunet.to_numpy(plain.bias.grad),
                                  rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [True, False])
def test_gradcheck(xp, device, activation, bias):
    gpunet.manual_seed(0)
    d = gpunet.Dense(3, 4, bias=bias, activation=activation).to(device)
    if bias:
        _randomize_bias(d)
    assert gpunet.gradcheck(d, xp.asarray(_x(2, 3, seed=4)))
    # the check restores the layer's float32 parameters afterwards
    assert d.weight.data.dtype == numpy.float32


def test_gradient_accumulates_and_zero_grad(xp, device):
    d = gpunet.Dense(4, 3, activation="tanh").to(device)
    _randomize_bias(d)
    x = xp.asarray(_x())
    dy = xp.asarray(_x(5, 3, seed=5))
    d(x)
    dx1 = gpunet.to_numpy(d.backward(dy))
    g_w = gpunet.to_numpy(d.weight.grad).copy()
    g_b = gpunet.to_numpy(d.bias.grad).copy()
    d(x)
    dx2 = gpunet.to_numpy(d.backward(dy))
    numpy.testing.assert_allclose(dx2, dx1, rtol=1e-6)                   # dx is not accumulated
    numpy.testing.assert_allclose(gpunet.to_numpy(d.weight.grad), 2 * g_w, rtol=1e-6)
    numpy.testing.assert_allclose(gpunet.to_numpy(d.bias.grad), 2 * g_b, rtol=1e-6)
    d.zero_grad()
    assert d.weight.grad is None and d.bias.grad is None
    d(x)
    d.backward(dy)
    numpy.testing.assert_allclose(gpunet.to_numpy(d.weight.grad), g_w, rtol=1e-6)


def test_backward_analytic_values():
    """dW = dy.T @ x, db = Σ dy, dx = dy @ W, written out with NumPy."""
    d = gpunet.Dense(4, 3)
    x, dy = _x(), _x(5, 3, seed=6)
    d(x)
    dx = d.backward(dy)
    w = d.weight.data
    numpy.testing.assert_allclose(dx, dy @ w, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(d.weight.grad, dy.T @ x, rtol=1e-5, atol=1e-6)
    numpy.testing.assert_allclose(d.bias.grad, dy.sum(axis=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad,expect", [
    (numpy.zeros((2, 3, 4), numpy.float32), ["2-D", "(2, 3, 4)"]),
    (numpy.zeros(4, numpy.float32), ["2-D", "(4,)"]),
    (numpy.zeros((2, 5), numpy.float32), ["4", "(2, 5)"]),
    (numpy.zeros((2, 4), numpy.float64), ["float32", "float64"]),
    (numpy.zeros((2, 4), numpy.int64), ["float32", "int64"]),
])
def test_bad_input_raises_naming_dense(xp, device, bad, expect):
    d = gpunet.Dense(4, 3).to(device)
    with pytest.raises(ValueError) as e:
        d(xp.asarray(bad))
    msg = str(e.value)
    assert "Dense" in msg
    for part in expect:
        assert part in msg, (part, msg)


def test_not_an_array_raises_type_error():
    with pytest.raises(TypeError, match="Dense"):
        gpunet.Dense(2, 2)([[1.0, 2.0]])


@pytest.mark.parametrize("args", [(0, 3), (3, -1), (2.5, 3), (True, 3), ("4", 3)])
def test_bad_constructor_arguments(args):
    with pytest.raises(ValueError, match="Dense"):
        gpunet.Dense(*args)


def test_unknown_activation():
    with pytest.raises(ValueError, match="Dense.*swishy"):
        gpunet.Dense(3, 2, activation="swishy")


def test_backward_before_forward_raises():
    with pytest.raises(RuntimeError, match="Dense"):
        gpunet.Dense(3, 2).backward(numpy.ones((1, 2), numpy.float32))


def test_eval_forward_does_not_cache_for_backward():
    d = gpunet.Dense(3, 2).eval()
    d(_x(2, 3))
    with pytest.raises(RuntimeError, match="Dense"):
        d.backward(numpy.ones((2, 2), numpy.float32))


def test_float64_model_end_to_end(xp, device):
    gpunet.manual_seed(1)
    model = gpunet.Sequential(gpunet.Dense(4, 8, activation="relu"), gpunet.Dense(8, 3))
    for p in model.parameters():
        p.data = p.data.astype(numpy.float64)
    model.to(device)
    x = xp.asarray(_x(6, 4, seed=7, dtype=numpy.float64))
    labels = xp.asarray(numpy.array([0, 1, 2, 0, 1, 2]))
    loss_fn = gpunet.SoftmaxCrossEntropy()
    logits = model(x)
    assert logits.dtype == numpy.float64
    loss = loss_fn(logits, labels)
    assert loss.dtype == numpy.float64
    dx = model.backward(loss_fn.backward())
    assert dx.dtype == numpy.float64
    for p in model.parameters():
        assert p.grad.dtype == numpy.float64 and p.grad.shape == p.data.shape
    with pytest.raises(ValueError, match="float64"):
        model(xp.asarray(_x(6, 4)))                # float32 input into a float64 model


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_against_torch_linear(xp, device, bias, dtype):
    torch = pytest.importorskip("torch")
    d = gpunet.Dense(5, 3, bias=bias)
    if bias:
        _randomize_bias(d)
    for p in d.parameters():
        p.data = p.data.astype(dtype)
    d.to(device)
    x, dy = _x(7, 5, seed=8, dtype=dtype), _x(7, 3, seed=9, dtype=dtype)
    y = d(xp.asarray(x))
    dx = d.backward(xp.asarray(dy))

    lin = torch.nn.Linear(5, 3, bias=bias, dtype=getattr(torch, numpy.dtype(dtype).name))
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(gpunet.to_numpy(d.weight.data)))
        if bias:
            lin.bias.copy_(torch.from_numpy(gpunet.to_numpy(d.bias.data)))
    tx = torch.tensor(x, requires_grad=True)
    ty = lin(tx)
    ty.backward(torch.from_numpy(dy))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == numpy.float32 else dict(rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(y), ty.detach().numpy(), **tol)
    numpy.testing.assert_allclose(gpunet.to_numpy(dx), tx.grad.numpy(), **tol)
    numpy.testing.assert_allclose(gpunet.to_numpy(d.weight.grad), lin.weight.grad.numpy(), **tol)
    if bias:
        numpy.testing.assert_allclose(gpunet.to_numpy(d.bias.grad), lin.bias.grad.numpy(), **tol)


def test_repr_names_configuration():
    r = repr(gpunet.Dense(4, 3, bias=False, activation="relu"))
    assert "Dense" in r and "4" in r and "3" in r and "relu" in r and "bias=False" in r


@pytest.mark.parametrize("make, activation, shown", [
    (lambda a: gpunet.Dense(4, 3, activation=a), "gelu", "Dense(4, 3, activation='gelu')"),
    (lambda a: gpunet.Dense(4, 3, activation=a), gpunet.GELU(), "Dense(4, 3, activation='gelu')"),
    (lambda a: gpunet.Dense(4, 3, activation=a), gpunet.GELU(approximate="tanh"),
     "Dense(4, 3, activation=GELU(approximate='tanh'))"),
    (lambda a: gpunet.Dense(4, 3, activation=a), gpunet.LeakyReLU(0.2),
     "Dense(4, 3, activation=LeakyReLU(negative_slope=0.2))"),
    (lambda a: gpunet.Conv2D(1, 2, 3, activation=a), "relu", "Conv2D(1, 2, kernel_size=3, activation='relu')"),
    (lambda a: gpunet.Conv2D(1, 2, 3, activation=a), gpunet.ELU(2.0),
     "Conv2D(1, 2, kernel_size=3, activation=ELU(alpha=2.0))"),
])
def test_repr_shows_activation_settings(make, activation, shown):
    """A fused activation prints as its name when its settings are the defaults, and as the
    layer when they are not: Dense with GELU(approximate="tanh") used to print
    activation='gelu', the same as the exact form."""
    assert repr(make(activation)) == shown


def test_functional_linear(xp):
    from gpunet.functional import linear, linear_backward
    rng = numpy.random.default_rng(10)
    x, w, b = (rng.standard_normal(s) for s in [(5, 4), (3, 4), (3,)])
    dy = rng.standard_normal((5, 3))
    y = linear(xp.asarray(x), xp.asarray(w), xp.asarray(b))
    numpy.testing.assert_allclose(gpunet.to_numpy(y), x @ w.T + b, rtol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(linear(xp.asarray(x), xp.asarray(w))), x @ w.T, rtol=1e-12)
    dx, dw, db = linear_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w))
    numpy.testing.assert_allclose(gpunet.to_numpy(dx), dy @ w, rtol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(dw), dy.T @ x, rtol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(db), dy.sum(axis=0), rtol=1e-12)
    dx, dw2, db = linear_backward(xp.asarray(dy), xp.asarray(x), xp.asarray(w), need_dx=False, need_bias=False)
    assert dx is None and db is None
    numpy.testing.assert_allclose(gpunet.to_numpy(dw2), dy.T @ x, rtol=1e-12)


def test_functional_linear_refuses_a_mix_of_dtypes(xp):
    """Found by the dtype audit: gpunet.functional.linear of a float32 x and a float64 weight
    returned float64 (NumPy's promotion), and with a float64 bias alone rounded the bias
    back into a float32 output without a word, where conv2d (and PyTorch's F.linear)
    refuse a mix. linear and linear_backward now raise ValueError naming both dtypes."""
    from gpunet.functional import linear, linear_backward
    rng = numpy.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((4, 3)).astype(numpy.float32))
    w = xp.asarray(rng.standard_normal((2, 3)).astype(numpy.float32))
    b = xp.zeros(2, numpy.float32)
    with pytest.raises(ValueError, match=r"^linear: input dtype float32 differs from the weight dtype float64; "
                                         r"cast the weight: weight\.astype\(numpy\.float32\)$"):
        linear(x, w.astype(numpy.float64), b)
    with pytest.raises(ValueError, match=r"^linear: input dtype float32 differs from the bias dtype float64"):
        linear(x, w, b.astype(numpy.float64))
    with pytest.raises(ValueError, match=r"^linear_backward: input dtype float32 differs from the dy dtype float64"):
        linear_backward(xp.ones((4, 2)), x, w)
    y = linear(x, w, b)
    assert y.dtype == numpy.float32
    assert all(a.dtype == numpy.float32 for a in linear_backward(xp.ones_like(y), x, w))
