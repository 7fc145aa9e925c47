"""Sequential and the Layer container contract (DESIGN §4): indexing, state dicts, summary,
train/eval, backward by the chain rule."""
import io

import numpy
import pytest

import gpunet


def _model(seed=0):
    gpunet.manual_seed(seed)
    return gpunet.Sequential(gpunet.Dense(4, 8, activation="relu"), gpunet.Tanh(),
                             gpunet.Dense(8, 3, bias=False), gpunet.Softmax())


def _x(shape=(5, 4), seed=0):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(numpy.float32)


def test_indexing_iteration_len():
    layers = [gpunet.Dense(4, 8), gpunet.ReLU(), gpunet.Dense(8, 2)]
    m = gpunet.Sequential(*layers)
    assert len(m) == 3
    assert m[0] is layers[0] and m[2] is layers[2] and m[-1] is layers[2]
    assert list(m) == layers
    sub = m[1:]
    assert isinstance(sub, gpunet.Sequential) and list(sub) == layers[1:]
    assert list(gpunet.Sequential(layers)) == layers          # a list is accepted too
    with pytest.raises(IndexError):
        m[3]


def test_non_layer_argument_raises():
    with pytest.raises(TypeError, match="Sequential"):
        gpunet.Sequential(gpunet.Dense(2, 2), "relu")


def test_forward_backward_chain(xp, device):
    m = _model().to(device)
    x = xp.asarray(_x())
    y = m(x)
    ref = x
    for layer in m:
        ref = layer(ref)
    numpy.testing.assert_allclose(gpunet.to_numpy(y), gpunet.to_numpy(ref), rtol=1e-6)
    assert gpunet.gradcheck(_model().to(device), xp.asarray(_x((3, 4), seed=1)))


def test_state_dict_keys_and_values():
    m = _model()
    sd = m.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "2.weight"]
    assert sd["0.weight"].shape == (8, 4) and sd["0.bias"].shape == (8,) and sd["2.weight"].shape == (3, 8)
    for v in sd.values():
        assert isinstance(v, numpy.ndarray)
    numpy.testing.assert_array_equal(sd["2.weight"], m[2].weight.data)
    sd["0.weight"][:] = 99.0                          # a copy, not a view of the parameter
    assert not (m[0].weight.data == 99.0).any()
    assert [k for k, _ in m.named_parameters()] == list(sd)


def test_nested_sequential_keys():
    m = gpunet.Sequential(gpunet.Dense(2, 3), gpunet.Sequential(gpunet.ReLU(), gpunet.Dense(3, 1)))
    assert list(m.state_dict()) == ["0.weight", "0.bias", "1.1.weight", "1.1.bias"]


def test_load_state_dict_round_trip(xp, device):
    a = _model(seed=1).to(device)
    b = _model(seed=2).to(device)
    x = xp.asarray(_x(seed=3))
    assert not numpy.allclose(gpunet.to_numpy(a(x)), gpunet.to_numpy(b(x)))
    assert b.load_state_dict(a.state_dict()) is b
    numpy.testing.assert_array_equal(gpunet.to_numpy(a(x)), gpunet.to_numpy(b(x)))
    for p in b.parameters():
        assert gpunet.get_array_module(p.data) is xp and p.data.dtype == numpy.float32
    # loaded arrays are copies: changing the dict later does not touch the model
    sd = a.state_dict()
    b.load_state_dict(sd)
    sd["0.bias"][:] = 5.0
    assert not (gpunet.to_numpy(b[0].bias.data) == 5.0).any()


def test_load_state_dict_keeps_parameter_dtype():
    m = _model()
    sd = {k: v.astype(numpy.float64) for k, v in m.state_dict().items()}
    m.load_state_dict(sd)
    assert all(p.data.dtype == numpy.float32 for p in m.parameters())


def test_load_state_dict_missing_and_wrong_shape_name_each_key():
    m = _model()
    sd = m.state_dict()
    del sd["0.bias"]
    del sd["2.weight"]
    with pytest.raises(ValueError) as e:
        m.load_state_dict(sd)
    assert "0.bias" in str(e.value) and "2.weight" in str(e.value)

    sd = m.state_dict()
    sd["0.weight"] = numpy.zeros((4, 8), numpy.float32)
    sd["2.weight"] = numpy.zeros((3, 9), numpy.float32)
    before = m[0].bias.data.copy()
    sd["0.bias"] = before + 1
    with pytest.raises(ValueError) as e:
        m.load_state_dict(sd)
    msg = str(e.value)
    assert "0.weight" in msg and "(8, 4)" in msg and "(4, 8)" in msg
    assert "2.weight" in msg and "(3, 9)" in msg
    # nothing was loaded: validation happens before any assignment
    numpy.testing.assert_array_equal(m[0].bias.data, before)


def test_summary_shapes_and_parameter_counts():
    m = _model()
    buf = io.StringIO()
    text = m.summary(input_shape=(4,), file=buf)
    assert buf.getvalue().strip() == text.strip()
    lines = text.splitlines()
    assert "(N, 8)" in text and "(N, 3)" in text
    assert any("Dense" in l and "(N, 8)" in l and l.rstrip().endswith("40") for l in lines)
    assert any("Dense" in l and "(N, 3)" in l and l.rstrip().endswith("24") for l in lines)
    assert any("Tanh" in l and l.rstrip().endswith(" 0") for l in lines)
    assert "64" in lines[-1]          # 4*8 + 8 + 8*3
    assert m.training is True         # restored after the dry run


def test_summary_input_shape_takes_an_int_and_names_anything_else():
    """Found by the first-hour audit: summary(input_shape=4) raised "'int' object is not
    iterable"; an int n means (n,), as numpy.zeros(n) does, and anything else is named."""
    m = _model()
    assert m.summary(input_shape=4, file=io.StringIO()) == m.summary(input_shape=(4,), file=io.StringIO())
    assert m.summary(input_shape=(numpy.int64(4),), file=io.StringIO()) == m.summary(input_shape=4, file=io.StringIO())
    for bad in ("4", (4.0,), (0,), (True,), 4.0):
        with pytest.raises(TypeError, match=r"Sequential\.summary: expected input_shape as a tuple of positive "
                                            r"ints without the batch axis, e\.g\. \(64,\) or \(1, 8, 8\), got "):
            m.summary(input_shape=bad, file=io.StringIO())


def test_summary_keeps_eval_mode():
    m = _model().eval()
    m.summary(input_shape=(4,), file=io.StringIO())
    assert all(not l.training for l in m)


def test_train_eval_propagate():
    m = gpunet.Sequential(gpunet.Dense(2, 3, activation="relu"),
                          gpunet.Sequential(gpunet.Tanh(), gpunet.Dense(3, 1)))
    assert m.training and all(l.training for l in m)
    assert m.eval() is m
    assert not m.training
    assert not m[0].training and not m[0].activation.training
    assert not m[1].training and not m[1][0].training and not m[1][1].training
    m.train()
    assert m.training and m[1][1].training and m[0].activation.training
    m.train(False)
    assert not m[1][0].training


def test_zero_grad_clears_every_parameter():
    m = _model()
    x = _x()
    y = m(x)
    m.backward(numpy.ones_like(y))
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_flatten_in_sequential(xp, device):
    m = gpunet.Sequential(gpunet.Flatten(), gpunet.Dense(12, 2)).to(device)
    x = xp.asarray(_x((2, 3, 4)))
    y = m(x)
    assert y.shape == (2, 2)
    dx = m.backward(xp.ones_like(y))
    assert dx.shape == (2, 3, 4)
    assert gpunet.gradcheck(m, xp.asarray(_x((2, 3, 2, 2), seed=4)))


class _Stateful(gpunet.Layer):
    """A layer with every kind of buffer the base class handles: an array, an int counter,
    a float and a bool (like BatchNorm's running statistics and Dropout's draw counter)."""
    _buffers = ("running", "count", "momentum", "flag")

    def __init__(self, n):
        super().__init__()
        self.scale = gpunet.Parameter(numpy.ones(n, numpy.float32), "scale", decay=False)
        self.running = numpy.zeros(n, numpy.float32)
        self.count = 0
        self.momentum = 0.1
        self.flag = False

    def forward(self, x):
        self.count += 1
        return x * self.scale.data


def test_buffers_in_state_dict_and_load(xp, device):
    a = gpunet.Sequential(gpunet.Dense(3, 3), _Stateful(3)).to(device)
    a[1].running = xp.asarray(numpy.array([1.0, 2.0, 3.0], numpy.float32))
    a[1].count, a[1].momentum, a[1].flag = 7, 0.25, True
    sd = a.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "1.scale", "1.running", "1.count", "1.momentum", "1.flag"]
    assert all(isinstance(v, numpy.ndarray) for v in sd.values())
    b = gpunet.Sequential(gpunet.Dense(3, 3), _Stateful(3)).to(device)
    b.load_state_dict(sd)
    s = b[1]
    assert gpunet.get_array_module(s.running) is xp and s.running.dtype == numpy.float32
    numpy.testing.assert_array_equal(gpunet.to_numpy(s.running), [1.0, 2.0, 3.0])
    assert type(s.count) is int and s.count == 7
    assert type(s.momentum) is float and s.momentum == 0.25
    assert type(s.flag) is bool and s.flag is True
    del sd["1.count"]
    sd["1.running"] = numpy.zeros(4, numpy.float32)
    with pytest.raises(ValueError) as e:
        b.load_state_dict(sd)
    assert "1.count" in str(e.value) and "1.running" in str(e.value)


def test_to_moves_parameters_gradients_and_buffers(xp, device):
    m = gpunet.Sequential(gpunet.Dense(3, 2), _Stateful(2))
    y = m(numpy.ones((1, 3), numpy.float32))
    m[0].backward(numpy.ones_like(y))
    assert m.to(device) is m
    assert m.device.split(":")[0] == device
    for p in m.parameters():
        assert gpunet.get_array_module(p.data) is xp
    assert gpunet.get_array_module(m[0].weight.grad) is xp
    assert gpunet.get_array_module(m[1].running) is xp
    assert m.to("cpu").device == "cpu" and isinstance(m[1].running, numpy.ndarray)


def test_flatten_passes_an_empty_batch_through():
    """Found by fuzzing: (0, 3, 4) used to fail in NumPy's reshape ('cannot reshape array of
    size 0 into shape (0,newaxis)'); Dense and the pools pass empty batches."""
    f = gpunet.Flatten()
    y = f(numpy.zeros((0, 3, 4), numpy.float32))
    assert y.shape == (0, 12)
    assert f.backward(numpy.zeros((0, 12), numpy.float32)).shape == (0, 3, 4)


def test_an_error_inside_a_sequential_notes_which_layer_raised():
    """Found by the second first-hour audit: in Sequential(Dense(64, 32), Dense(64, 10)) the
    error 'Dense: expected 64 features along axis 1, got shape (4, 32)' did not say which of
    the two Dense layers refused. A note (shown under the message in a traceback; the
    message itself is unchanged) gives the layer's index path, the prefix of its
    state_dict keys."""
    import sys
    if sys.version_info < (3, 11):
        pytest.skip("exception notes need Python 3.11")
    x = numpy.zeros((4, 64), numpy.float32)
    model = gpunet.Sequential(gpunet.Dense(64, 32), gpunet.Sequential(gpunet.ReLU(), gpunet.Dense(64, 10)))
    with pytest.raises(ValueError) as e:
        model(x)
    assert str(e.value) == "Dense: expected 64 features along axis 1, got shape (4, 32)"
    assert e.value.__notes__ == ["(raised by model layer 1.1: Dense(64, 10))"]
    assert "1.1.weight" in model.state_dict()
    with pytest.raises(TypeError) as e:
        gpunet.Sequential(gpunet.Dense(64, 10))([[0.0] * 64])
    assert e.value.__notes__ == ["(raised by model layer 0: Dense(64, 10))"]


def test_an_activation_name_or_a_layer_class_in_a_sequential_says_what_goes_there():
    """Found by the second first-hour audit: Sequential(Dense(4, 3), gpunet.ReLU) (the class,
    not an instance) said 'argument 1 must be a Layer, got type', and Keras' habit of
    naming the activation, Sequential(Dense(4, 3), "relu"), 'got str'."""
    with pytest.raises(TypeError, match=r"^Sequential: argument 1 must be a Layer, got the class ReLU; create one: "
                                        r"ReLU\(\)$"):
        gpunet.Sequential(gpunet.Dense(4, 3), gpunet.ReLU)
    with pytest.raises(TypeError, match=r"^Sequential: argument 1 must be a Layer, got str; an activation goes as a "
                                        r"layer, gpunet\.LeakyReLU\(\), or fused, Dense\(\.\.\., "
                                        r"activation='leaky_relu'\)$"):
        gpunet.Sequential(gpunet.Dense(4, 3), "leaky_relu")
    with pytest.raises(TypeError, match=r"^Sequential: argument 0 must be a Layer, got str$"):
        gpunet.Sequential("dense")


def test_a_dtype_error_in_a_model_of_two_dtypes_names_them_and_the_cast():
    """Found by the dtype audit: a layer appended to a model cast to float64 is float32 (as
    in PyTorch, where the forward then fails with 'mat1 and mat2 must have the same
    dtype'); the forward failed at that layer with 'Dense: expected dtype float32 (the
    parameters' dtype), got float64; cast the input (x.astype(numpy.float32)) ...', the
    input being the previous layer's output, not the user's. The note under it now says
    the model holds two dtypes, which parameters, and the one cast that mends it."""
    m = gpunet.Sequential(gpunet.Dense(4, 8), gpunet.BatchNorm(8), gpunet.ReLU(), gpunet.Dense(8, 3))
    m.to(dtype=numpy.float64).append(gpunet.Dense(3, 2))
    with pytest.raises(ValueError, match=r"^Dense: expected dtype float32") as info:
        m(numpy.ones((2, 4)))
    assert info.value.__notes__[-1] == (
        "(raised by model layer 4: Dense(3, 2))\n(the model's parameters are of 2 dtypes (float64: "
        "0.weight, 0.bias, 1.gamma and 3 more; float32: 4.weight, 4.bias), as when a layer, made in "
        "float32, is added to a cast model: model.to(dtype=numpy.float64) makes them one)")
    m.to(dtype=numpy.float64)
    assert m(numpy.ones((2, 4))).dtype == numpy.float64
    one = gpunet.Sequential(gpunet.Dense(4, 3))          # one dtype: the note names the layer only
    with pytest.raises(ValueError) as info:
        one(numpy.ones((2, 4)))
    assert info.value.__notes__[-1] == "(raised by model layer 0: Dense(4, 3))"
