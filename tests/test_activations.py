"""Activation layers (DESIGN §4): forward against a direct NumPy formula and against
torch.nn.functional, backward against torch autograd and against gradcheck in float64."""
import math

import numpy
import pytest

import gpunet
from gpunet.functional import activations as FA


def _np_softmax(x, axis):
    e = numpy.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_log_softmax(x, axis):
    z = x - x.max(axis=axis, keepdims=True)
    return z - numpy.log(numpy.exp(z).sum(axis=axis, keepdims=True))


def _np_gelu_tanh(x):
    return 0.5 * x * (1 + numpy.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


# id -> (layer factory, NumPy formula in float64, torch function or None)
def _cases():
    import importlib.util
    have_torch = importlib.util.find_spec("torch") is not None

    def tf(name, **kw):
        if not have_torch:
            return None
        import torch
        import torch.nn.functional as F
        return {
            "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": F.relu,
            "leaky_relu": lambda t: F.leaky_relu(t, **kw), "elu": lambda t: F.elu(t, **kw),
            "gelu": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu,
            "softplus": F.softplus, "softmax": lambda t: F.softmax(t, **kw),
            "log_softmax": lambda t: F.log_softmax(t, **kw), "identity": lambda t: t,
        }[name]

    return {
        "sigmoid": (gpunet.Sigmoid, lambda x: 1 / (1 + numpy.exp(-x)), tf("sigmoid")),
        "tanh": (gpunet.Tanh, numpy.tanh, tf("tanh")),
        "relu": (gpunet.ReLU, lambda x: numpy.where(x > 0, x, 0.0), tf("relu")),
        "leaky_relu": (gpunet.LeakyReLU, lambda x: numpy.where(x > 0, x, 0.01 * x),
                       tf("leaky_relu", negative_slope=0.01)),
        "leaky_relu_0.2": (lambda: gpunet.LeakyReLU(negative_slope=0.2),
                           lambda x: numpy.where(x > 0, x, 0.2 * x), tf("leaky_relu", negative_slope=0.2)),
        "leaky_relu_2.0": (lambda: gpunet.LeakyReLU(negative_slope=2.0),     # slope > 1: its own branch
                           lambda x: numpy.where(x > 0, x, 2.0 * x), tf("leaky_relu", negative_slope=2.0)),
        "elu": (gpunet.ELU, lambda x: numpy.where(x > 0, x, numpy.exp(x) - 1), tf("elu", alpha=1.0)),
        "elu_-0.5": (lambda: gpunet.ELU(alpha=-0.5),                              # alpha < 0: its own branch
                     lambda x: numpy.where(x > 0, x, -0.5 * (numpy.exp(x) - 1)), tf("elu", alpha=-0.5)),
        "elu_0.5": (lambda: gpunet.ELU(alpha=0.5), lambda x: numpy.where(x > 0, x, 0.5 * (numpy.exp(x) - 1)),
                    tf("elu", alpha=0.5)),
        "gelu": (gpunet.GELU, _np_gelu_tanh, tf("gelu")),
        "silu": (gpunet.SiLU, lambda x: x / (1 + numpy.exp(-x)), tf("silu")),
        "softplus": (gpunet.Softplus, lambda x: numpy.log(1 + numpy.exp(x)), tf("softplus")),
        "softmax": (gpunet.Softmax, lambda x: _np_softmax(x, -1), tf("softmax", dim=-1)),
        "softmax_axis0": (lambda: gpunet.Softmax(axis=0), lambda x: _np_softmax(x, 0), tf("softmax", dim=0)),
        "log_softmax": (gpunet.LogSoftmax, lambda x: _np_log_softmax(x, -1), tf("log_softmax", dim=-1)),
        "log_softmax_axis0": (lambda: gpunet.LogSoftmax(axis=0), lambda x: _np_log_softmax(x, 0),
                              tf("log_softmax", dim=0)),
        "identity": (gpunet.Identity, lambda x: x, tf("identity")),
    }


CASES = _cases()
ALL_NAMES = ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus", "softmax",
             "log_softmax", "identity"]


def _input(shape=(4, 6), scale=3.0, seed=0):
    # keep every element at least 1e-3 away from 0, where ReLU-like kinks sit
    x = numpy.random.default_rng(seed).standard_normal(shape) * scale
    x = numpy.where(numpy.abs(x) < 1e-3, 0.5, x)
    return x


def test_every_activation_of_the_design_is_covered():
    assert sorted(ALL_NAMES) == sorted(FA.FORWARD)
    assert len(ALL_NAMES) == 11


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_forward_matches_numpy_formula(xp, case, dtype):
    make, ref, _ = CASES[case]
    x = _input()
    layer = make()
    xin = xp.asarray(x.astype(dtype))
    keep = xin.copy()
    y = layer(xin)
    assert y.dtype == dtype and y.shape == x.shape
    tol = dict(rtol=2e-6, atol=2e-6) if dtype == numpy.float32 else dict(rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(y), ref(x.astype(dtype).astype(numpy.float64)), **tol)
    # the layer never overwrites its input
    numpy.testing.assert_array_equal(gpunet.to_numpy(xin), gpunet.to_numpy(keep))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_forward_backward_match_torch(xp, case, dtype):
    torch = pytest.importorskip("torch")
    make, _, tfn = CASES[case]
    x = _input(seed=1).astype(dtype)
    dy = numpy.random.default_rng(2).standard_normal(x.shape).astype(dtype)
    layer = make()
    y = layer(xp.asarray(x))
    dx = layer.backward(xp.asarray(dy))
    assert dx.dtype == dtype and dx.shape == x.shape

    t = torch.tensor(x, requires_grad=True)
    ty = tfn(t)
    ty.backward(torch.tensor(dy))
    # float32: values are O(1); an absolute 1e-5 allows the cancellation in GELU's slope
    # 0.5(1+t) + 0.5·x·(1-t²)·u' where tanh t -> -1 (x ~ -4), which both sides suffer.
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == numpy.float32 else dict(rtol=1e-10, atol=1e-12)
    numpy.testing.assert_allclose(gpunet.to_numpy(y), ty.detach().numpy(), **tol)
    numpy.testing.assert_allclose(gpunet.to_numpy(dx), t.grad.numpy(), **tol)


@pytest.mark.parametrize("case", sorted(CASES))
def test_gradcheck_float64(xp, case):
    make, _, _ = CASES[case]
    x = xp.asarray(_input((3, 5), seed=3))
    assert gpunet.gradcheck(make(), x)


def test_gradcheck_softmax_3d_middle_axis(xp):
    x = xp.asarray(_input((2, 3, 4), seed=4))
    assert gpunet.gradcheck(gpunet.Softmax(axis=1), x)
    assert gpunet.gradcheck(gpunet.LogSoftmax(axis=1), x)
    y = gpunet.to_numpy(gpunet.Softmax(axis=1)(x))
    numpy.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_softmax_huge_logits_finite(xp, dtype):
    x = numpy.array([[1e4, -1e4, 0.0, 1e4 - 1], [-1e4, -1e4, -1e4, -1e4], [1e4, 1e4, -1e4, 3.0]], dtype)
    y = gpunet.Softmax()(xp.asarray(x))
    yn = gpunet.to_numpy(y)
    assert yn.dtype == dtype
    assert numpy.isfinite(yn).all()
    numpy.testing.assert_allclose(yn.sum(axis=1), 1.0, rtol=1e-6)
    numpy.testing.assert_allclose(yn[1], 0.25, rtol=1e-6)
    numpy.testing.assert_allclose(yn[2, :2], 0.5, rtol=1e-6)
    ls = gpunet.to_numpy(gpunet.LogSoftmax()(xp.asarray(x)))
    assert numpy.isfinite(ls).all()
    numpy.testing.assert_allclose(ls[2, :2], math.log(0.5), rtol=1e-6)
    numpy.testing.assert_allclose(ls[0, 1], -2e4 - math.log1p(math.exp(-1.0)), rtol=1e-6)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_forward_backward_finite_at_large_inputs(xp, name):
    x = xp.asarray(numpy.array([[1e4, -1e4, 50.0, -50.0, 0.5]], numpy.float32))
    layer = CASES[name][0]()
    y = layer(x)
    dx = layer.backward(xp.ones_like(y))
    assert numpy.isfinite(gpunet.to_numpy(y)).all(), gpunet.to_numpy(y)
    assert numpy.isfinite(gpunet.to_numpy(dx)).all(), gpunet.to_numpy(dx)
    assert y.dtype == numpy.float32 and dx.dtype == numpy.float32


@pytest.mark.parametrize("name", ALL_NAMES)
def test_float32_stays_float32(xp, name):
    x = xp.asarray(_input(seed=5).astype(numpy.float32))
    layer = CASES[name][0]()
    y = layer(x)
    dx = layer.backward(xp.asarray(numpy.ones(x.shape, numpy.float32)))
    assert y.dtype == numpy.float32
    assert dx.dtype == numpy.float32


@pytest.mark.parametrize("name", ALL_NAMES)
def test_integer_input_raises_naming_the_layer(xp, name):
    layer = CASES[name][0]()
    with pytest.raises(ValueError) as e:
        layer(xp.arange(6).reshape(2, 3))
    msg = str(e.value)
    assert type(layer).__name__ in msg and "int" in msg


@pytest.mark.parametrize("name", ALL_NAMES)
def test_backward_before_forward_raises(name):
    with pytest.raises(RuntimeError):
        CASES[name][0]().backward(numpy.ones((2, 3), numpy.float32))


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if not FA.NEEDS_INPUT[n]])
def test_inplace_forward_matches_and_backward_needs_only_y(xp, name):
    """The contract Dense's fused path relies on: when NEEDS_INPUT is False, the forward may
    overwrite its input and the backward works from y alone."""
    x = _input(seed=6)
    ref_y = FA.FORWARD[name](xp.asarray(x))
    buf = xp.asarray(x.copy())
    y = FA.FORWARD[name](buf, inplace=True)
    numpy.testing.assert_allclose(gpunet.to_numpy(y), gpunet.to_numpy(ref_y), rtol=1e-14, atol=1e-15)
    dy = xp.asarray(numpy.random.default_rng(7).standard_normal(x.shape))
    dx_y_only = FA.BACKWARD[name](dy, None, y)
    dx_full = FA.BACKWARD[name](dy, xp.asarray(x), ref_y)
    numpy.testing.assert_allclose(gpunet.to_numpy(dx_y_only), gpunet.to_numpy(dx_full), rtol=1e-14)


def test_snake_case_names_resolve_to_layers():
    from gpunet.layers.activations import get
    for name in ALL_NAMES:
        layer = get(name)
        assert isinstance(layer, gpunet.Activation) and layer.name == name
    with pytest.raises(ValueError, match="unknown activation"):
        get("swishy")


def test_eval_forward_does_not_cache():
    layer = gpunet.ReLU().eval()
    layer(numpy.ones((2, 2), numpy.float32))
    with pytest.raises(RuntimeError):
        layer.backward(numpy.ones((2, 2), numpy.float32))


# -- bad hyper-parameters and axes (found by fuzzing) ------------------------------------------

@pytest.mark.parametrize("cls", [gpunet.Softmax, gpunet.LogSoftmax])
@pytest.mark.parametrize("axis", [2, -3])
def test_softmax_axis_out_of_range_names_the_layer(cls, axis):
    """Used to fail inside NumPy (AxisError: axis 2 is out of bounds ...), not naming the layer."""
    with pytest.raises(ValueError, match=rf"{cls.__name__}: expected an input with axis {axis}, got shape \(2, 3\)"):
        cls(axis=axis)(numpy.ones((2, 3), numpy.float32))


@pytest.mark.parametrize("axis", ["a", 1.5, None])
def test_softmax_axis_must_be_an_int(axis):
    """'a' used to raise int()'s message; 1.5 was silently truncated to axis 1."""
    with pytest.raises(TypeError, match="Softmax: expected axis to be an int"):
        gpunet.Softmax(axis=axis)


@pytest.mark.parametrize("make,name", [(lambda v: gpunet.LeakyReLU(v), "LeakyReLU: expected negative_slope"),
                                       (lambda v: gpunet.ELU(v), "ELU: expected alpha")])
@pytest.mark.parametrize("value", ["a", None, float("nan"), float("inf")])
def test_activation_hyper_parameters_must_be_finite_numbers(make, name, value):
    """'a'/None used to raise float()'s message; NaN was accepted and gave NaN outputs."""
    with pytest.raises(ValueError, match=name):
        make(value)


@pytest.mark.parametrize("cls", [gpunet.Sigmoid, gpunet.Tanh, gpunet.ReLU, gpunet.LeakyReLU, gpunet.GELU,
                                 gpunet.SiLU, gpunet.Softplus, gpunet.Softmax, gpunet.LogSoftmax])
def test_activation_layers_name_a_0d_input(cls):
    """Found by fuzzing: Sigmoid/GELU/LeakyReLU/Softmax/LogSoftmax of a 0-d array raised
    NumPy's 'return arrays must be of ArrayType'; ReLU returned a NumPy scalar."""
    with pytest.raises(ValueError, match=f"{cls.__name__}: expected an input with at least one axis, got a 0-d array"):
        cls()(numpy.array(1.0, numpy.float32))
