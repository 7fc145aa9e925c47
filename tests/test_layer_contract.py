"""The Layer contract of issue 10: a backward uses exactly what the matching forward
cached (or raises), wrong-shaped gradients are named, strict state loading, casting a
model with ``to(dtype=...)``, ``summary``/``repr``/``count_params`` on every layer, and no
gradient computed for data a DataLoader yields."""
import io
import re
import sys

import numpy
import pytest

import gpunet
from gpunet import optim


def _mlp(seed=0, dropout=False):
    gpunet.manual_seed(seed)
    layers = [gpunet.Dense(4, 8, activation="relu"), gpunet.BatchNorm(8)]
    if dropout:
        layers.append(gpunet.Dropout(0.3, seed=5))
    layers.append(gpunet.Dense(8, 3))
    return gpunet.Sequential(*layers)


def _data(n=6, seed=0):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((n, 4)).astype(numpy.float32), rng.integers(0, 3, n)


def _grads(model):
    return {k: gpunet.to_numpy(p.grad).copy() for k, p in model.named_parameters()}


# -- stale caches ----------------------------------------------------------------------

def test_eval_forward_between_loss_and_backward_is_fine(xp, device):
    """The loss was computed on the training output: an eval forward in between (e.g. a
    validation batch) changes no cache, and the gradient equals the plain one."""
    x, y = _data()
    x, y = xp.asarray(x), xp.asarray(y)
    ref, m = _mlp().to(device), _mlp().to(device)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(ref(x), y)
    ref.backward(loss_fn.backward())
    loss_fn(m(x), y)
    g = loss_fn.backward()
    m.eval()
    m(xp.asarray(_data(seed=1)[0]))
    m.train()
    m.backward(g)
    for k, v in _grads(ref).items():
        numpy.testing.assert_array_equal(_grads(m)[k], v)


def test_loss_on_eval_output_then_backward_raises():
    x, y = _data()
    m = _mlp(dropout=True)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(m(x), y)                      # a training step's loss ...
    m.eval()
    loss_fn(m(x), y)                      # ... then the same loss object on an eval output
    m.train()
    with pytest.raises(RuntimeError, match=r"forward call 2 .*eval-mode forward.*training-mode forward call 1"):
        m.backward(loss_fn.backward())
    assert all(p.grad is None for p in m.parameters())   # nothing was accumulated


def test_gradient_of_an_earlier_forward_raises():
    x, y = _data()
    m = _mlp()
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(m(x), y)
    g = loss_fn.backward()
    m(xp_x := _data(seed=2)[0])            # another training forward replaces the caches
    assert xp_x.shape == x.shape
    with pytest.raises(RuntimeError, match=r"forward call 1 .*call 2 has since replaced"):
        m.backward(g)


def test_second_loss_call_on_the_same_output_is_fine():
    x, y = _data()
    m = _mlp()
    loss_fn = gpunet.SoftmaxCrossEntropy()
    out = m(x)
    a = float(loss_fn(out, y))
    b = float(loss_fn(out, y))
    assert a == b
    m.backward(loss_fn.backward())
    assert all(p.grad is not None for p in m.parameters())


def test_single_layer_model_is_checked_too():
    x, y = _data()
    m = gpunet.Dense(4, 3)
    loss_fn = gpunet.MSELoss()
    t = numpy.zeros((6, 3), numpy.float32)
    loss_fn(m(x), t)
    g = loss_fn.backward()
    m(x)
    with pytest.raises(RuntimeError, match="Dense.backward"):
        m.backward(g)


def test_failed_forward_invalidates_caches():
    x, y = _data()
    m = _mlp()
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(m(x), y)
    g = loss_fn.backward()
    with pytest.raises(ValueError):
        m(x[:1])                          # BatchNorm refuses one row: fails half-way
    with pytest.raises(RuntimeError, match="raised before it finished"):
        m.backward(g)
    loss_fn(m(x), y)                      # a fresh forward makes it usable again
    m.backward(loss_fn.backward())


@pytest.mark.parametrize("make", [lambda: gpunet.Dense(4, 4), gpunet.ReLU, lambda: gpunet.BatchNorm(4),
                                  lambda: gpunet.Dropout(0.3, seed=1),
                                  lambda: gpunet.Residual(gpunet.Dense(4, 4))],
                         ids=["Dense", "ReLU", "BatchNorm", "Dropout", "Residual"])
def test_layer_object_used_twice_in_one_forward_raises_at_backward(make):
    """Sequential(a, act, a) keeps a's caches of the second call only; the backward of the
    first call would pair them with its own gradient (a silently wrong weight gradient
    before). It raises, and a model forward that uses each layer once is fine again."""
    shared = make()
    m = gpunet.Sequential(shared, gpunet.Tanh(), shared)
    x = _data()[0]
    y = m(x)
    assert y.shape == (6, 4)                 # the forward itself is right
    with pytest.raises(RuntimeError, match=rf"{type(shared).__name__}.backward: .*ran forward more "
                                           r"than once within one forward of the model"):
        m.backward(numpy.ones_like(y))
    shared(x)                                # on its own: one call per forward, usable again
    assert shared.backward(numpy.ones((6, 4), numpy.float32)).shape == (6, 4)


def test_training_forward_of_an_inner_layer_before_backward_raises():
    """model[1:](h) (or the layer inside another model) in training mode between the
    model's forward and its backward replaces that layer's caches; the backward raises
    instead of pairing them with the model's gradient (a weight gradient off by 0.24 before,
    when the shapes agreed). An eval-mode forward of an inner layer changes no cache."""
    x, y = _data()
    ref, m = _mlp(), _mlp()
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(ref(x), y)
    ref.backward(loss_fn.backward())
    for between in (lambda: m[1:](m[0](x)), lambda: gpunet.Sequential(m[2])(m[1](m[0](x)))):
        m.zero_grad()
        loss_fn(m(x), y)
        g = loss_fn.backward()
        between()                            # the same batch shape: no shape check can notice
        with pytest.raises(RuntimeError, match=r"Dense.backward: the caches of this Dense come "
                                               r"from another training-mode forward than the Sequential's"):
            m.backward(g)
    m.zero_grad()
    loss_fn(m(x), y)
    g = loss_fn.backward()
    m.eval()
    m[2](m[1](m[0](x)))                      # eval mode: the caches stay those of m(x)
    m.train()
    m.backward(g)
    for k, v in _grads(ref).items():
        numpy.testing.assert_array_equal(_grads(m)[k], v)


def test_gradient_of_another_models_output_raises():
    """One loss object, two models: m1.backward given the gradient of m2's output ran on
    m1's caches without a word. A layer inside the model that produced the output, or the
    model around the layer, is still accepted (a wrapper's backward may hand it on)."""
    x, y = _data()
    m1, m2 = _mlp(seed=0), _mlp(seed=1)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    m1(x)
    loss_fn(m2(x), y)
    with pytest.raises(RuntimeError, match=r"Sequential.backward: dy is the gradient of the "
                                           r"SoftmaxCrossEntropy loss computed on the output of another model"):
        m1.backward(loss_fn.backward())
    assert all(p.grad is None for p in m1.parameters())

    class Wrapper(gpunet.Layer):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(x)

        def backward(self, dy):
            return self.net.backward(dy)

    w = Wrapper(_mlp(seed=2))
    loss_fn(w(x), y)
    assert w.backward(loss_fn.backward()).shape == x.shape
    loss_fn(w(x), y)
    assert w.net.backward(loss_fn.backward()).shape == x.shape


def test_forward_reentering_itself_is_one_call():
    """A subclass whose forward calls the base forward is not 'used twice'."""
    class Doubled(gpunet.Dense):
        def forward(self, x):
            return super().forward(x) * 2

        def backward(self, dy):
            return super().backward(dy * 2)

    gpunet.manual_seed(0)
    layer = Doubled(4, 3).to(dtype=numpy.float64)
    assert gpunet.gradcheck(layer, _data()[0].astype(numpy.float64))


def test_tied_parameter_is_listed_once_and_gets_both_gradients():
    """b.weight = a.weight ties the weights: parameters() lists the Parameter once (as
    PyTorch's does), an optimizer accepts the model, the gradient is the sum over both
    uses (gradcheck), and state_dict keeps a key for each place."""
    gpunet.manual_seed(0)
    a, b = gpunet.Dense(4, 4), gpunet.Dense(4, 4)
    b.weight = a.weight
    m = gpunet.Sequential(a, gpunet.Tanh(), b)
    assert [p.name for p in m.parameters()] == ["weight", "bias", "bias"]
    assert m.count_params() == 16 + 4 + 4
    assert list(m.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert gpunet.gradcheck(m, _data()[0].astype(numpy.float64))
    assert m[0].weight.data.dtype == numpy.float32       # gradcheck restored the tied weight
    w0 = a.weight.data.copy()
    opt = optim.SGD(m, lr=0.1)
    m.zero_grad()
    y = m(_data()[0])
    m.backward(numpy.ones_like(y))
    g = a.weight.grad.copy()
    opt.step()
    numpy.testing.assert_allclose(a.weight.data, w0 - numpy.float32(0.1) * g, rtol=1e-6)


def test_to_invalidates_caches():
    x, y = _data()
    m = _mlp()
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(m(x), y)
    m.to(dtype=numpy.float64)
    with pytest.raises(RuntimeError, match=r"to\(\)"):
        m.backward(loss_fn.backward())


def test_load_state_dict_invalidates_caches():
    """A backward after load_state_dict used to run: dx through the loaded weights with the
    activations of the old ones (PyTorch refuses: the parameters were modified in place)."""
    x, y = _data()
    m = _mlp()
    other = _mlp().state_dict()
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(m(x), y)
    m.load_state_dict(other)
    with pytest.raises(RuntimeError, match=r"Sequential.backward: load_state_dict replaced"):
        m.backward(loss_fn.backward())
    loss_fn(m(x), y)                       # a new forward: fine again
    m.backward(loss_fn.backward())


# -- wrong-shaped dy -------------------------------------------------------------------

@pytest.mark.parametrize("layer,shape", [
    (lambda: gpunet.Dense(4, 3), (5, 4)),
    (lambda: gpunet.Dense(4, 3, activation="tanh"), (5, 4)),
    (lambda: gpunet.ReLU(), (5, 4)),
    (lambda: gpunet.Softmax(), (5, 4)),
    (lambda: gpunet.Flatten(), (5, 2, 2)),
    (lambda: gpunet.Conv2D(2, 3, 3), (2, 2, 5, 5)),
    (lambda: gpunet.MaxPool2D(2), (2, 2, 4, 4)),
    (lambda: gpunet.AvgPool2D(2), (2, 2, 4, 4)),
    (lambda: gpunet.GlobalAvgPool2D(), (2, 2, 4, 4)),
    (lambda: gpunet.Residual(gpunet.Dense(4, 4)), (5, 4)),
    (lambda: gpunet.Sequential(gpunet.Dense(4, 3), gpunet.ReLU()), (5, 4)),
    (lambda: gpunet.BatchNorm(4), (5, 4)),
    (lambda: gpunet.Dropout(0.5, seed=1), (5, 4)),
    (lambda: gpunet.Maxout(2), (5, 4)),
])
def test_backward_with_wrong_shaped_dy_names_the_layer(layer, shape):
    l = layer()
    x = numpy.random.default_rng(0).standard_normal(shape).astype(numpy.float32)
    y = l(x)
    bad = numpy.ones((y.shape[0] + 1,) + tuple(y.shape[1:]), numpy.float32)
    name = type(l[-1] if isinstance(l, gpunet.Sequential) else l).__name__
    with pytest.raises(ValueError, match=re.escape(f"{name}.backward: expected dy of shape {tuple(y.shape)}")):
        l.backward(bad)
    # the newcomer's model.backward(loss) (found by the first-hour audit): the message says
    # what goes there instead of only 'got ()'
    with pytest.raises(ValueError, match=re.escape(f"{name}.backward: expected dy of shape "
                                                   f"{tuple(y.shape)}") + r".*got \(\); a 0-d dy is a loss "
                                                   r"value: pass its gradient, loss_fn\.backward\(\)"):
        l.backward(numpy.array(0.5, numpy.float32))


# -- strict loading --------------------------------------------------------------------

def test_load_state_dict_strict_names_unexpected_and_missing_keys():
    two = gpunet.Sequential(gpunet.Dense(4, 4), gpunet.Dense(4, 4))
    one = gpunet.Sequential(gpunet.Dense(4, 4))
    before = one[0].weight.data.copy()
    with pytest.raises(ValueError, match=r"unexpected keys '1\.weight', '1\.bias'"):
        one.load_state_dict(two.state_dict())
    numpy.testing.assert_array_equal(one[0].weight.data, before)   # nothing loaded
    with pytest.raises(ValueError, match=r"missing keys '1\.weight', '1\.bias'"):
        two.load_state_dict(one.state_dict())


def test_load_state_dict_non_strict_loads_matching_and_returns_lists():
    two = gpunet.Sequential(gpunet.Dense(4, 4), gpunet.BatchNorm(4))
    one = gpunet.Sequential(gpunet.Dense(4, 4), gpunet.ReLU(), gpunet.Dense(4, 2))
    missing, unexpected = one.load_state_dict(two.state_dict(), strict=False)
    assert missing == ["2.weight", "2.bias"]
    assert unexpected == ["1.gamma", "1.beta", "1.running_mean", "1.running_var"]
    numpy.testing.assert_array_equal(one[0].weight.data, two[0].weight.data)
    bad = two.state_dict()
    bad["0.weight"] = numpy.zeros((3, 3), numpy.float32)
    with pytest.raises(ValueError, match=r"'0\.weight': expected shape \(4, 4\), got \(3, 3\)"):
        one.load_state_dict(bad, strict=False)


def test_checkpoint_of_a_bigger_model_does_not_load_silently(tmp_path):
    path = tmp_path / "two.npz"
    gpunet.save(path, gpunet.Sequential(gpunet.Dense(4, 4), gpunet.Dense(4, 4)))
    with pytest.raises(ValueError, match="unexpected keys"):
        gpunet.load(path, gpunet.Sequential(gpunet.Dense(4, 4)))


# -- casting a model -------------------------------------------------------------------

def test_to_dtype_casts_parameters_gradients_buffers_and_optimizer_state(xp, device):
    x, y = _data()
    x, y = xp.asarray(x), xp.asarray(y)
    m = _mlp(dropout=True).to(device)
    opt = optim.Adam(m.parameters(), lr=1e-2)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    loss_fn(m(x), y)
    m.backward(loss_fn.backward())
    opt.step()
    assert m.to(dtype="float64") is m
    assert m.dtype == numpy.float64
    for p in m.parameters():
        assert p.data.dtype == numpy.float64 and p.grad.dtype == numpy.float64
        assert gpunet.get_array_module(p.data) is xp
    assert m[1].running_mean.dtype == numpy.float64 and m[1].running_var.dtype == numpy.float64
    assert isinstance(m[2].counter, int)          # integer buffers stay as they are
    for st in opt.state:
        for v in st.values():
            assert v.dtype == numpy.float64
    with pytest.raises(ValueError, match="float32"):
        m(x)                                      # float32 data into a float64 model: named
    x64 = x.astype(numpy.float64)
    m.zero_grad()
    loss_fn(m(x64), y)
    m.backward(loss_fn.backward())
    opt.step()                                    # the optimizer goes on without complaint
    assert all(p.data.dtype == numpy.float64 for p in m.parameters())


def test_to_dtype_matches_a_model_built_in_float64():
    x, y = _data()
    a = _mlp().to(dtype=numpy.float64)
    b = _mlp()
    for p in b.parameters():
        p.data = p.data.astype(numpy.float64)
    for name in ("running_mean", "running_var"):
        setattr(b[1], name, getattr(b[1], name).astype(numpy.float64))
    numpy.testing.assert_array_equal(a(x.astype(numpy.float64)), b(x.astype(numpy.float64)))


def test_to_rejects_a_non_float_dtype():
    with pytest.raises(ValueError, match="Dense.to: expected a floating-point dtype"):
        gpunet.Dense(2, 2).to(dtype=numpy.int32)


def test_dtype_error_message_points_to_model_to():
    with pytest.raises(ValueError, match=r"model\.to\(dtype=numpy\.float64\)"):
        gpunet.Dense(4, 2)(numpy.zeros((1, 4)))


# -- summary, repr, parameter count ----------------------------------------------------

@pytest.mark.parametrize("layer,in_shape,count", [
    (lambda: gpunet.Dense(4, 3), (4,), 15),
    (lambda: gpunet.Conv2D(1, 2, 3), (1, 5, 5), 20),
    (lambda: gpunet.BatchNorm(4), (4,), 8),
    (lambda: gpunet.ReLU(), (4,), 0),
    (lambda: gpunet.Residual(gpunet.Dense(4, 4)), (4,), 20),
])
def test_every_layer_has_summary_and_count(layer, in_shape, count):
    l = layer()
    assert l.count_params() == count
    buf = io.StringIO()
    text = l.summary(input_shape=in_shape, file=buf)
    assert buf.getvalue().strip() == text.strip()
    assert type(l).__name__ in text and f"total parameters: {count:,}" in text
    assert "(N, " in text


def test_repr_is_multiline_for_containers():
    m = gpunet.Sequential(gpunet.Dense(4, 8, activation="relu"),
                          gpunet.Residual(gpunet.Sequential(gpunet.Dense(8, 8), gpunet.ReLU())),
                          gpunet.Dense(8, 2))
    assert repr(m) == (
        "Sequential(\n"
        "  (0): Dense(4, 8, activation='relu')\n"
        "  (1): Residual(\n"
        "    (block): Sequential(\n"
        "      (0): Dense(8, 8)\n"
        "      (1): ReLU()\n"
        "    )\n"
        "  )\n"
        "  (2): Dense(8, 2)\n"
        ")")
    assert m.count_params() == 40 + 72 + 18
    assert "\n" not in repr(gpunet.Dense(4, 8))


# -- no gradient for the data ----------------------------------------------------------

@pytest.mark.parametrize("first", ["dense", "conv", "nested", "residual"])
def test_dataloader_batches_get_no_input_gradient(first):
    gpunet.manual_seed(0)
    rng = numpy.random.default_rng(0)
    if first == "conv":
        X = rng.standard_normal((8, 1, 4, 4)).astype(numpy.float32)
        m = gpunet.Sequential(gpunet.Conv2D(1, 2, 3, padding=1, activation="relu"), gpunet.Flatten(),
                              gpunet.Dense(32, 3))
    else:
        X = rng.standard_normal((8, 4)).astype(numpy.float32)
        head = {"dense": gpunet.Dense(4, 4, activation="tanh"),
                "nested": gpunet.Sequential(gpunet.Dense(4, 4), gpunet.Tanh()),
                "residual": gpunet.Residual(gpunet.Dense(4, 4))}[first]
        m = gpunet.Sequential(head, gpunet.Dense(4, 3))
    y = rng.integers(0, 3, 8)
    loss_fn = gpunet.SoftmaxCrossEntropy()
    (xb, yb), = list(gpunet.DataLoader(X, y, batch_size=8))
    assert gpunet.data.is_data(xb)
    loss_fn(m(xb), yb)
    assert m.backward(loss_fn.backward()) is None          # skipped: nobody asked for it
    from_batch = _grads(m)
    m.zero_grad()
    xc = xb.copy()                                          # an ordinary array: dx computed
    assert not gpunet.data.is_data(xc)
    loss_fn(m(xc), yb)
    dx = m.backward(loss_fn.backward())
    assert dx is not None and dx.shape == X.shape and numpy.abs(dx).sum() > 0
    for k, v in _grads(m).items():                          # the parameter gradients agree
        numpy.testing.assert_array_equal(from_batch[k], v)


def test_dense_input_gradient_is_not_computed_for_data(monkeypatch):
    """Count the GEMMs: the data's gradient costs nothing."""
    import gpunet.functional.linear  # noqa: F401  (the module; the package re-exports a function of that name)
    FL = sys.modules["gpunet.functional.linear"]
    calls = []
    orig = FL.linear_backward

    def spy(*a, **k):
        calls.append(k.get("need_dx", True))
        return orig(*a, **k)

    import gpunet.layers.dense as D
    monkeypatch.setattr(D, "linear_backward", spy)
    X = numpy.ones((4, 3), numpy.float32)
    m = gpunet.Sequential(gpunet.Dense(3, 3), gpunet.Dense(3, 2))
    for xb in gpunet.DataLoader(X, batch_size=4):
        m(xb)
        m.backward(numpy.ones((4, 2), numpy.float32))
    assert calls == [True, False]
    assert gpunet.gradcheck(m, numpy.random.default_rng(0).standard_normal((3, 3)))


def test_parameter_dtype_and_second_loss_backward_message():
    d = gpunet.Dense(2, 2)
    assert d.weight.dtype == numpy.float32
    loss_fn = gpunet.MSELoss()
    with pytest.raises(RuntimeError, match="before the loss was computed"):
        loss_fn.backward()
    loss_fn(d(numpy.ones((1, 2), numpy.float32)), numpy.zeros((1, 2), numpy.float32))
    loss_fn.backward()
    with pytest.raises(RuntimeError, match="already returned"):
        loss_fn.backward()


# -- the dtype of a backward's dy ---------------------------------------------------------

def _bwd_cases():
    return [
        (lambda: gpunet.Dense(4, 3), (5, 4)), (lambda: gpunet.Conv2D(2, 3, 3), (2, 2, 5, 5)),
        (lambda: gpunet.MaxPool2D(2), (2, 3, 4, 4)), (lambda: gpunet.AvgPool2D(2), (2, 3, 4, 4)),
        (lambda: gpunet.GlobalAvgPool2D(), (2, 3, 4, 4)), (lambda: gpunet.BatchNorm(3), (5, 3)),
        (lambda: gpunet.Dropout(0.5, seed=1), (5, 4)), (lambda: gpunet.Maxout(2), (5, 4)),
        (lambda: gpunet.Flatten(), (2, 3, 4)), (lambda: gpunet.ReLU(), (5, 4)),
        (lambda: gpunet.LeakyReLU(), (5, 4)), (lambda: gpunet.Softmax(), (5, 4)),
        (lambda: gpunet.Residual(gpunet.Dense(4, 4)), (5, 4)),
    ]


@pytest.mark.parametrize("bad", ["int64", "bool", "complex64", "float64"])
@pytest.mark.parametrize("case", range(13))
def test_backward_rejects_dy_of_another_dtype(case, bad):
    """A dy that is not floating point, or not the forward output's dtype, raises a
    ValueError naming the layer, before any computation (it used to promote dx to float64,
    return an int or bool dx, propagate complex numbers, or fail inside NumPy)."""
    make, shape = _bwd_cases()[case]
    layer = make()
    x = numpy.random.default_rng(0).standard_normal(shape).astype(numpy.float32)
    y = layer(x)
    name = type(layer).__name__
    with pytest.raises(ValueError, match=rf"{name}\.backward: expected .*dy.*got {bad}"):
        layer.backward(numpy.ones(y.shape, bad))


@pytest.mark.parametrize("case", range(13))
def test_backward_rejects_dy_that_is_not_an_array(case):
    make, shape = _bwd_cases()[case]
    layer = make()
    y = layer(numpy.ones(shape, numpy.float32))
    name = type(layer).__name__
    with pytest.raises(TypeError, match=rf"{name}\.backward: expected dy to be a NumPy or CuPy array, got list"):
        layer.backward(numpy.ones(y.shape, numpy.float32).tolist())


@pytest.mark.parametrize("value,got", [
    (numpy.full((3, 4), None, object), "object"),
    (numpy.ones((3, 4), numpy.complex64), "complex64"),
    (numpy.full((3, 4), "a"), "str32"),
])
def test_load_state_dict_rejects_values_that_are_not_real_numbers(value, got):
    """An object array of None used to load as NaN weights and complex values lost their
    imaginary part, silently; strings failed in float()'s conversion, naming no key."""
    d = gpunet.Dense(4, 3)
    before = d.weight.data.copy()
    with pytest.raises(ValueError, match=rf"Dense.load_state_dict: 'weight': expected real numbers, got dtype {got}"):
        d.load_state_dict({"weight": value, "bias": numpy.zeros(3)})
    numpy.testing.assert_array_equal(d.weight.data, before)


def test_load_state_dict_rejects_a_float_for_an_integer_counter():
    """Dropout's seed 1.5 used to be truncated to 1, silently."""
    with pytest.raises(ValueError, match=r"Dropout.load_state_dict: 'seed': expected integers, got dtype float64"):
        gpunet.Dropout(0.5).load_state_dict({"seed": numpy.array(1.5), "counter": numpy.array(0)})


def test_load_state_dict_rejects_negative_variances_and_dropout_counters():
    """A negative running variance loaded silently and gave NaN outputs in eval mode; a
    negative Dropout seed or counter loaded silently too. Nothing changes on the error."""
    bn = gpunet.BatchNorm(3)
    state = bn.state_dict()
    state["running_var"] = numpy.array([1.0, -0.5, 1.0], numpy.float32)
    with pytest.raises(ValueError, match=r"BatchNorm.load_state_dict: 'running_var': expected values >= 0"):
        bn.load_state_dict(state)
    numpy.testing.assert_array_equal(bn.running_var, numpy.ones(3, numpy.float32))
    state["running_var"] = numpy.array([1.0, 0.0, 2.0], numpy.float32)      # zero is fine
    bn.load_state_dict(state)
    numpy.testing.assert_array_equal(bn.running_var, [1.0, 0.0, 2.0])
    for key in ("seed", "counter"):
        d = gpunet.Dropout(0.5)
        state = d.state_dict()
        state[key] = numpy.array(-1)
        with pytest.raises(ValueError, match=rf"Dropout.load_state_dict: '{key}': expected values >= 0"):
            d.load_state_dict(state)


def test_train_mode_must_be_a_bool_and_to_names_an_unknown_dtype():
    """Found by fuzzing: train('no') switched training ON (bool('no') is True), silently,
    where PyTorch raises; to(dtype='foo') raised NumPy's 'data type not understood'."""
    d = gpunet.Dense(2, 2).eval()
    with pytest.raises(TypeError, match="Dense.train: expected mode to be a bool, got 'no'"):
        d.train("no")
    assert d.training is False
    with pytest.raises(TypeError, match="Dense.to: expected a floating-point dtype .*got 'foo'"):
        d.to(dtype="foo")


@pytest.mark.parametrize("make,attr,value,x_shape", [
    (lambda: gpunet.Dense(4, 3), "weight", numpy.zeros((3, 5), numpy.float32), (2, 4)),
    (lambda: gpunet.Dense(4, 3), "bias", numpy.zeros(5, numpy.float32), (2, 4)),
    (lambda: gpunet.Conv2D(2, 3, 3), "weight", numpy.zeros((3, 2, 2, 2), numpy.float32), (1, 2, 5, 5)),
    (lambda: gpunet.BatchNorm(3), "gamma", numpy.ones(4, numpy.float32), (5, 3)),
    (lambda: gpunet.BatchNorm(3), "running_mean", numpy.zeros(4, numpy.float32), (5, 3)),
])
def test_reassigned_parameter_or_buffer_of_another_shape_is_named(make, attr, value, x_shape):
    """Parameter.data and BatchNorm's buffers may be reassigned (DESIGN §4); found by fuzzing:
    one of another shape failed inside NumPy (broadcasting, reshape, matmul), and Conv2D
    silently convolved with a 2x2 kernel while its kernel_size said 3x3."""
    layer = make()
    target = getattr(layer, attr)
    if isinstance(target, gpunet.layers.base.Parameter):
        target.data = value
    else:
        setattr(layer, attr, value)
    name = type(layer).__name__
    x = numpy.ones(x_shape, numpy.float32)
    for training in (True, False):
        layer.train(training)
        with pytest.raises(ValueError, match=rf"{name}: expected {attr} of shape .*, got {tuple(value.shape)}".replace("(", r"\(").replace(")", r"\)")):
            layer(x)


@pytest.mark.parametrize("layer, shape", [
    (lambda: gpunet.Dense(4, 3), (5, 4)),
    (lambda: gpunet.Conv2D(2, 3, 3, padding=1), (2, 2, 4, 4)),
    (lambda: gpunet.BatchNorm(4), (5, 4)),
    (lambda: gpunet.BatchNorm(2, affine=False), (2, 2, 4, 4)),
    (lambda: gpunet.Sequential(gpunet.Dense(4, 3), gpunet.ReLU()), (5, 4)),
])
def test_an_input_on_another_device_names_the_layer_and_both_devices(layer, shape):
    """Found by the first-hour audit: the README loop with device = "sim" but a host batch
    raised 'arrays on different devices in one call: cpu and sim', naming no layer."""
    if gpunet.sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    x = numpy.random.default_rng(0).standard_normal(shape).astype(numpy.float32)
    l = layer()
    name = type(l[0] if isinstance(l, gpunet.Sequential) else l).__name__
    l.to("sim")
    for mode in (l.train, l.eval):
        with pytest.raises(TypeError, match=rf"^{name}: expected an input on sim \(the parameters' device\), "
                                            r"got one on cpu; move it with gpunet\.to_device\(x, 'sim'\), "
                                            r"or the model with model\.to\('cpu'\)(\n|$)"):
            mode()(x)
    l.to("cpu")
    with pytest.raises(TypeError, match=rf"^{name}: expected an input on cpu .* got one on sim"):
        l(gpunet.to_device(x, "sim"))


def test_a_1d_input_says_how_to_make_it_2d():
    """Found by the first-hour audit: a 1-D X (one feature, or one sample) got 'expected a
    2-D input, got shape (64,) (1-D)' with no way out named; Dense and BatchNorm name both."""
    for layer in (gpunet.Dense(64, 3), gpunet.BatchNorm(64)):
        with pytest.raises(ValueError, match=r"expected a 2-D (or 4-D )?input, got shape \(64,\) \(1-D\); "
                                             r"one sample: x\[None\], one feature per sample: x\.reshape\(-1, 1\)$"):
            layer(numpy.ones(64, numpy.float32))
    with pytest.raises(ValueError, match=r"got shape \(2, 3, 4\) \(3-D\); a Flatten"):     # not the 1-D hint
        gpunet.Dense(4, 3)(numpy.ones((2, 3, 4), numpy.float32))


@pytest.mark.parametrize("make", [gpunet.Flatten, lambda: gpunet.Maxout(2), gpunet.ReLU, gpunet.Softmax,
                                  lambda: gpunet.Dropout(0.5)])
def test_a_0d_input_is_named_by_every_rank_free_layer(make):
    # layers without a fixed rank share check_input's rule: every layer takes a batch, so a
    # 0-d array (a NumPy scalar) is refused there, with one message, before any computation
    layer = make()
    name = type(layer).__name__
    with pytest.raises(ValueError, match=f"^{name}: expected an input with at least one axis, got a 0-d array$"):
        layer(numpy.ones((), numpy.float32))


@pytest.mark.parametrize("layer, x, hint", [
    (lambda: gpunet.Dense(4, 3), numpy.zeros((2, 4), numpy.uint8),
     r"^Dense: expected dtype float32 \(the parameters' dtype\), got uint8; pixels of 0\.\.255 become floats "
     r"in \[0, 1\] with x\.astype\(numpy\.float32\) / 255$"),
    (lambda: gpunet.Conv2D(1, 2, 3), numpy.zeros((2, 1, 5, 5), numpy.uint8),
     r"^Conv2D: expected dtype float32 .* got uint8; pixels of 0\.\.255 .* x\.astype\(numpy\.float32\) / 255$"),
    (lambda: gpunet.Conv2D(1, 2, 3), numpy.zeros((2, 1, 5, 5)),
     r"^Conv2D: expected dtype float32 \(the parameters' dtype\), got float64; cast the input "
     r"\(x\.astype\(numpy\.float32\)\) or the model \(model\.to\(dtype=numpy\.float64\)\)$"),
    (lambda: gpunet.Dense(4, 3), numpy.zeros((2, 4), numpy.int64),
     r"^Dense: expected dtype float32 .* got int64; cast the input: x\.astype\(numpy\.float32\)$"),
    (lambda: gpunet.MaxPool2D(2), numpy.zeros((2, 1, 4, 4), numpy.uint8),
     r"^MaxPool2D: expected a floating-point input \(float32 or float64\), got uint8; pixels of 0\.\.255 "),
    (lambda: gpunet.ReLU(), numpy.zeros((2, 4), numpy.int32),
     r"^ReLU: expected a floating-point input .* got int32; cast the input: x\.astype\(numpy\.float32\)$"),
    (lambda: gpunet.Conv2D(3, 2, 3), numpy.zeros((2, 8, 8, 3), numpy.float32),
     r"^Conv2D: expected 3 input channels \(axis 1 of NCHW\), got shape \(2, 8, 8, 3\); the input looks "
     r"channels-last \(NHWC, Keras' layout\): x\.transpose\(0, 3, 1, 2\) makes it NCHW$"),
    (lambda: gpunet.BatchNorm(3), numpy.zeros((2, 8, 8, 3), numpy.float32),
     r"^BatchNorm: expected 3 features along axis 1, got shape \(2, 8, 8, 3\); the input looks channels-last "
     r"\(NHWC, Keras' layout\): x\.transpose\(0, 3, 1, 2\) makes it NCHW$"),
    (lambda: gpunet.Conv2D(1, 2, 3), numpy.zeros((2, 784), numpy.float32),
     r"^Conv2D: expected a 4-D input \(N, 1, H, W\), got shape \(2, 784\) \(2-D\); flat square images "
     r"become NCHW with x\.reshape\(-1, 1, 28, 28\)$"),
    (lambda: gpunet.Conv2D(3, 2, 3), numpy.zeros((2, 3 * 64), numpy.float32),
     r"x\.reshape\(-1, 3, 8, 8\)$"),
    (lambda: gpunet.Conv2D(1, 2, 3), numpy.zeros((2, 28, 28), numpy.float32),
     r"got shape \(2, 28, 28\) \(3-D\); single-channel images \(N, H, W\) become NCHW with x\[:, None\]$"),
    (lambda: gpunet.Conv2D(1, 2, 3), numpy.zeros((2, 10), numpy.float32), r"got shape \(2, 10\) \(2-D\)$"),
    (lambda: gpunet.Conv2D(2, 2, 3), numpy.zeros((2, 3, 8, 8), numpy.float32), r"got shape \(2, 3, 8, 8\)$"),
    # found by the data audit: big-endian data (binary files, FITS) was 'expected dtype float32 ...,
    # got float32'
    (lambda: gpunet.Dense(4, 3), numpy.zeros((2, 4), ">f4"),
     r"^Dense: expected dtype float32 \(the parameters' dtype\), got float32 in big-endian byte order "
     r"\(>f4\), not this machine's; x\.astype\(numpy\.float32\) makes it native$"),
    (lambda: gpunet.Conv2D(1, 2, 3), numpy.zeros((2, 1, 5, 5), ">f8"),
     r"got float64 in big-endian byte order \(>f8\), not this machine's; cast the input: "
     r"x\.astype\(numpy\.float32\)$"),
])
def test_image_input_mistakes_say_how_to_fix_them(layer, x, hint):
    """Found by the second first-hour audit: uint8 images got 'cast the input (x.astype(...))'
    from Dense and 'cast the input or the model' from Conv2D (never the scaling to [0, 1]),
    and channels-last (Keras' NHWC), flat (N, 784) and (N, H, W) batches fed to a CNN got
    only the shape they were not."""
    with pytest.raises(ValueError, match=hint):
        layer()(x)


@pytest.mark.parametrize("name, hint", [
    ("fit", r"gpunet\.Trainer\(model, loss_fn, optimizer\)\.fit\(\(X, y\), epochs=\.\.\.\)"),
    ("compile", r"holds no loss or optimizer: pass them to gpunet\.Trainer\(model, loss_fn, optimizer\)$"),
    ("predict", r"model\.eval\(\)\(X\) predicts .* or gpunet\.Trainer\(model, loss_fn, optimizer\)\.predict\(X\)"),
    ("evaluate", r"\.evaluate\(\(X, y\)\)"),
    ("add", r"Sequential\(layer1, layer2, \.\.\.\), or model\.append\(layer\)$"),
    ("cuda", r"model\.to\('cuda'\)$"),
    ("save_weights", r"gpunet\.save\(path, model\)"),
    ("named_modules", r"model\.modules\(\) yields every layer"),
    ("apply", r"for layer in model\.modules\(\): fn\(layer\)$"),
    ("register_forward_hook", r"activation_stats\(model, x\)"),
    ("trainable_weights", r"model\.parameters\(\) lists the Parameters"),
])
def test_keras_and_pytorch_model_methods_say_where_gpunet_has_them(name, hint):
    """Found by the second first-hour audit: model.fit/compile/predict/add (Keras) and
    model.cuda() (PyTorch) were bare AttributeErrors; they still are AttributeErrors (hasattr
    is False), now saying what gpunet does instead. Other missing names are unchanged."""
    m = gpunet.Sequential(gpunet.Dense(4, 3))
    with pytest.raises(AttributeError, match=rf"^'Sequential' object has no attribute '{name}'; .*{hint}"):
        getattr(m, name)
    assert not hasattr(m, name) and not hasattr(gpunet.Dense(4, 3), name)
    with pytest.raises(AttributeError, match=r"^'Dense' object has no attribute 'parameterz'$"):
        gpunet.Dense(4, 3).parameterz


def test_images_into_a_dense_layer_name_flatten():
    """Found by the second first-hour audit: a CNN without Flatten before its Dense head, or
    (N, H, W) images into an MLP, said only 'Dense: expected a 2-D input, got shape
    (4, 4, 6, 6) (4-D)'; the message now names the layer that goes between and whether the
    flattened size fits the Dense."""
    x = numpy.zeros((4, 1, 8, 8), numpy.float32)
    model = gpunet.Sequential(gpunet.Conv2D(1, 4, 3), gpunet.Dense(144, 10))
    with pytest.raises(ValueError, match=r"^Dense: expected a 2-D input, got shape \(4, 4, 6, 6\) \(4-D\); a Flatten\(\) "
                                         r"layer before it makes each sample 1-D \(shape \(4, 144\), 144 features "
                                         r"as expected\)\n\(raised by model layer 1: Dense\(144, 10\)\)$"):
        model(x)
    with pytest.raises(ValueError, match=r"got shape \(4, 8, 8\) \(3-D\); a Flatten\(\) layer before it makes each "
                                         r"sample 1-D \(shape \(4, 64\), but this layer expects 10 features\)$"):
        gpunet.Dense(10, 3)(x[:, 0])
    gpunet.Sequential(gpunet.Conv2D(1, 4, 3), gpunet.Flatten(), gpunet.Dense(144, 10))(x)


def test_a_float16_input_points_to_mixed_precision_not_a_float16_model():
    """Found by the second first-hour audit: float16 data into a float32 model was told to
    cast the model with model.to(dtype=numpy.float16), a pure-float16 model, where gpunet's
    half precision is Trainer(..., precision='fp16')."""
    for layer in (gpunet.Dense(4, 3), gpunet.Conv2D(4, 3, 1)):
        x = numpy.zeros((2, 4) if isinstance(layer, gpunet.Dense) else (2, 4, 3, 3), numpy.float16)
        with pytest.raises(ValueError, match=r"got float16; cast the input \(x\.astype\(numpy\.float32\)\); half "
                                             r"precision trains through Trainer\(\.\.\., precision='fp16'\) "
                                             r"\(float32 weights, float16 compute\)$"):
            layer(x)
    with pytest.raises(ValueError, match=r"got float16; cast the input \(x\.astype\(numpy\.float64\)\) or the model"):
        gpunet.Dense(4, 3).to(dtype=numpy.float64)(numpy.zeros((2, 4), numpy.float16))


@pytest.mark.parametrize("layer, shape, attr, message", [
    (lambda: gpunet.Dense(4, 3), (5, 4), "bias", "bias is on cpu but weight on sim"),
    (lambda: gpunet.Dense(4, 3), (5, 4), "weight", "bias is on sim but weight on cpu"),
    (lambda: gpunet.Conv2D(2, 3, 3, padding=1), (2, 2, 4, 4), "bias", "bias is on cpu but weight on sim"),
    (lambda: gpunet.BatchNorm(4), (5, 4), "running_var", "running_var is on cpu but running_mean on sim"),
    (lambda: gpunet.BatchNorm(4), (5, 4), "gamma", "gamma is on cpu but running_mean on sim"),
    (lambda: gpunet.BatchNorm(2), (2, 2, 4, 4), "beta", "beta is on cpu but running_mean on sim"),
])
def test_a_layer_whose_arrays_are_on_two_devices_names_them(layer, shape, attr, message):
    """A sim model with one parameter reassigned a NumPy array (``p.data = array``, how a
    user pastes in weights trained elsewhere), given a batch on either device, failed inside
    the sim's array module ('Unsupported type <class numpy.ndarray>') or named the input as
    the problem; PyTorch refuses a module whose tensors are on two devices. Now a TypeError
    names the layer, the two arrays and their devices, and model.to(device) mends it."""
    if gpunet.sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    x = numpy.random.default_rng(0).standard_normal(shape).astype(numpy.float32)
    l = layer().to("sim")
    target = getattr(l, attr)
    if isinstance(target, gpunet.layers.base.Parameter):
        target.data = gpunet.to_numpy(target.data)
    else:
        setattr(l, attr, gpunet.to_numpy(target))
    name = type(l).__name__
    for mode in (l.train, l.eval):
        for xb in (x, gpunet.to_device(x, "sim")):
            with pytest.raises(TypeError, match=rf"^{name}: {message}; a layer's parameters and buffers "
                                                r"must be on one device \(was one reassigned\?\): move the "
                                                r"model with model\.to\(device\)$"):
                mode()(xb)
    l.to("sim")
    assert gpunet.backend.device_of(l.train()(gpunet.to_device(x, "sim"))) == "sim"


def test_device_of_a_layer_without_parameters_is_where_its_buffers_are(xp, rng):
    """``BatchNorm(affine=False).to("sim").device`` said "cpu" (only parameters were looked
    at) while its running statistics were on the sim, so ``Trainer`` and
    ``diagnostics.activation_stats``, which send batches to ``model.device``, sent them to
    the host and the layer refused them (``DiagnosticsCallback._probe`` below)."""
    device = gpunet.backend.device_of(xp.empty(0))      # "cuda:0" on CuPy, as a parameter's
    bn = gpunet.BatchNorm(4, affine=False).to(device)
    assert bn.device == device
    assert gpunet.Sequential(gpunet.ReLU(), gpunet.BatchNorm(4, affine=False)).to(device).device == device
    assert gpunet.Sequential(gpunet.ReLU(), gpunet.Dropout(0.5)).to(device).device == "cpu"
    probe = gpunet.diagnostics.DiagnosticsCallback(rng.standard_normal((8, 4)).astype(numpy.float32))
    x = probe._probe(bn)
    assert gpunet.backend.device_of(x) == device and bn(x).shape == (8, 4)


@pytest.mark.parametrize("layer, shape", [
    (lambda: gpunet.Dense(4, 3), (5, 4)),
    (lambda: gpunet.Sequential(gpunet.Dense(4, 3), gpunet.ReLU()), (5, 4)),
    (lambda: gpunet.Flatten(), (2, 2, 3)),
    (lambda: gpunet.Dropout(0.5, seed=1), (5, 4)),
    (lambda: gpunet.MaxPool2D(2), (2, 2, 4, 4)),
    (lambda: gpunet.GlobalAvgPool2D(), (2, 2, 4, 4)),
    (lambda: gpunet.Residual(gpunet.Dense(4, 4)), (5, 4)),
])
def test_a_backward_dy_on_another_device_names_the_layer_and_both_devices(layer, shape):
    """A hand-written loop that computed dy on the host for a model on the sim (or the
    reverse): Dense failed with 'arrays on different devices in one call' naming no layer,
    and Flatten returned a host dx without a word. The outermost backward now names the
    layer and both devices; the model's own gradient flow (each layer's dy from the next
    one) is not checked again."""
    if gpunet.sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    x = numpy.random.default_rng(0).standard_normal(shape).astype(numpy.float32)
    for dev, other in (("sim", "cpu"), ("cpu", "sim")):
        l = layer().to(dev)
        name = type(l).__name__
        y = l.train()(gpunet.to_device(x, dev))
        dy = gpunet.to_device(numpy.ones(y.shape, numpy.float32), other)
        with pytest.raises(TypeError, match=rf"^{name}\.backward: expected dy on {dev} \(the device of "
                                            rf"the forward's output\), got one on {other}; move it with "
                                            rf"gpunet\.to_device\(dy, '{dev}'\)$"):
            l.backward(dy)
        dx = l.backward(gpunet.to_device(dy, dev))
        assert gpunet.backend.device_of(dx) == dev
