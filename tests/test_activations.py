"""Activation layers (DESIGN §4): forward against a direct NumPy formula and against
torch.nn.functional, backward against torch autograd and against gradcheck in float64."""
import math
import re

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


_erfc = numpy.frompyfunc(math.erfc, 1, 1)


def _np_gelu(x):
    """``x·Φ(x) = x·erfc(-x/√2)/2`` in float64 through ``math.erfc`` (no cancellation at
    large negative x, unlike ``(1 + erf)/2``)."""
    x = numpy.asarray(x, numpy.float64)
    return x * _erfc(-x / math.sqrt(2)).astype(numpy.float64) / 2


def _np_gelu_grad(x):
    x = numpy.asarray(x, numpy.float64)
    return _erfc(-x / math.sqrt(2)).astype(numpy.float64) / 2 + x * numpy.exp(-x * x / 2) / math.sqrt(2 * math.pi)


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
            "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu,
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
        "gelu": (gpunet.GELU, _np_gelu, tf("gelu")),
        "gelu_tanh": (lambda: gpunet.GELU(approximate="tanh"), _np_gelu_tanh, tf("gelu_tanh")),
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
    # float32: values are O(1); an absolute 1e-5 allows the cancellation in the tanh GELU's
    # slope 0.5(1+t) + 0.5·x·(1-t²)·u' where tanh t -> -1 (x ~ -4), which both sides suffer.
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


def test_sigmoid_keeps_small_outputs_in_float32(xp):
    """docs/concepts.md and ``functional.activations.sigmoid`` say how it is computed: from
    ``e = e^-|x|``, not as ``(1 + tanh(x/2))/2`` (the concepts table said so; that form rounds
    to 0 in float32 below about -17), so ``σ(-20) = 2.06e-9`` keeps its relative precision."""
    x = numpy.array([-20.0, -50.0, -80.0, 20.0], numpy.float32)
    y = gpunet.to_numpy(gpunet.Sigmoid()(xp.asarray(x)))
    x64 = x.astype(numpy.float64)
    ref = numpy.exp(-numpy.logaddexp(0.0, -x64))          # 1/(1 + e^-x) without overflow
    numpy.testing.assert_allclose(y, ref, rtol=4 * numpy.finfo(numpy.float32).eps)
    assert numpy.all((1 + numpy.tanh(x[:3] / 2)) / 2 == 0)   # what the tanh form would give


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


@pytest.mark.parametrize("name", ALL_NAMES)
def test_backward_keeps_a_channel_major_layout(name):
    """A CPU convolution (and batch norm after it) leaves its (N, C, H, W) output in CHWN
    memory; the activation after it gets x, y and dy in that order. Its dx keeps the order
    (elementwise results are the same in any order), so the layer before it reads dx without
    crossing layouts: ReLU's backward wrote a C-order dx, which made both of its passes cross
    the layout (0.5 -> 10.6 ms on (64, 16, 28, 28), one thread) and batch norm's backward copy
    dx back into CHWN."""
    from gpunet.functional.layout import memory_order
    def chwn(a):
        return numpy.ascontiguousarray(a.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)
    layer = CASES[name][0]()
    if name in ("softmax", "log_softmax"):
        layer = type(layer)(axis=1)             # over the channels, as in a conv net
    x = chwn(_input((3, 4, 5, 6), seed=8).astype(numpy.float32))
    y = layer(x)
    dy = chwn(numpy.random.default_rng(9).standard_normal(y.shape).astype(numpy.float32))
    dx = layer.backward(dy)
    assert memory_order(y) == "chwn"
    assert memory_order(dx) == "chwn", f"{name}: dx is {memory_order(dx)}"
    ref = type(layer)(**({"axis": 1} if name in ("softmax", "log_softmax") else {}))
    ref(numpy.ascontiguousarray(x))
    numpy.testing.assert_array_equal(dx, ref.backward(numpy.ascontiguousarray(dy)))


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


# -- GELU: the exact form (PyTorch's default) and the tanh form ---------------------------------

def _wide(dtype):
    """Inputs over GELU's whole range in ``dtype``: a dense grid, random normals, and the
    ends where the tail underflows (float64 from |x| ~ 38.5, float32 from ~14, float16 ~5)."""
    rng = numpy.random.default_rng(11)
    end = {numpy.float64: 42.0, numpy.float32: 17.0, numpy.float16: 8.0}[dtype]
    x = numpy.concatenate([numpy.linspace(-end, end, 4001), rng.standard_normal(2000) * 3,
                           [0.0, -0.0, 1e-30, -1e-30, 1e-8, -1e-8]])
    return x.astype(dtype)


def test_gelu_exact_float64_matches_erfc():
    """float64 against ``x·erfc(-x/√2)/2`` (math.erfc) over [-42, 42]: relative error at
    most (6 + x²)·eps. The x² term is the rounding of x² in e^(-x²/2) (gpunet) and of x/√2
    in math.erfc's argument (the reference): both grow as the function's condition number;
    below |x| = 1 the bound is 7 eps. Subnormal results (x < -37.6, where e^(-x²/2) is
    subnormal) hold to 64 of the smallest subnormal. The derivative Φ + xφ likewise, with
    an absolute floor of 2 eps where it crosses 0 (x ~ -0.75)."""
    x = _wide(numpy.float64)
    eps = numpy.finfo(numpy.float64).eps
    y = FA.gelu(x)
    ref = _np_gelu(x)
    bound = (6 + x * x) * eps * numpy.abs(ref) + 64 * 2.0 ** -1074
    assert numpy.all(numpy.abs(y - ref) <= bound), numpy.max(numpy.abs(y - ref) / numpy.maximum(bound, 1e-300))
    d = FA.gelu_backward(numpy.ones_like(x), x, y)
    dref = _np_gelu_grad(x)
    dbound = (6 + x * x) * eps * numpy.abs(dref) + 2 * eps
    assert numpy.all(numpy.abs(d - dref) <= dbound)
    # not merely the tanh form within those bounds: the two differ by up to 4.73e-4 (at |x| = 2.70)
    assert numpy.abs(FA.gelu(x, approximate="tanh") - ref).max() > 1e-4


def test_gelu_exact_matches_mpmath_within_stated_ulps():
    """Against 40-digit mpmath, the precision the docstring states: ``x·Φ(x)`` within 4 eps
    (float64) or 5 eps (float32, evaluated in float32) relative for |x| <= 3, and within
    x²·eps up to |x| = 12 (the rounding of x² in e^(-x²/2))."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    rng = numpy.random.default_rng(16)
    for dtype, near in ((numpy.float64, 4.0), (numpy.float32, 5.0)):
        a = numpy.concatenate([numpy.linspace(1e-3, 3, 1000), rng.uniform(3, 12, 1000)])
        x = numpy.concatenate([a, -a]).astype(dtype)
        ref = numpy.array([float(mpmath.mpf(float(v)) * mpmath.erfc(-mpmath.mpf(float(v)) / mpmath.sqrt(2)) / 2)
                           for v in x])
        rel = numpy.abs(FA.gelu(x).astype(numpy.float64) / ref - 1) / numpy.finfo(dtype).eps
        x64 = x.astype(numpy.float64)
        bound = numpy.where(numpy.abs(x64) <= 3, near, x64 * x64)
        assert numpy.all(rel <= bound), (dtype, x[numpy.argmax(rel / bound)], numpy.max(rel / bound))


def test_gelu_coefficients_are_the_fit_tools_output():
    """The tables in the code are what tools/fit_gelu_erfc.py computes (needs mpmath)."""
    pytest.importorskip("mpmath")
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "tools" / "fit_gelu_erfc.py"
    spec = importlib.util.spec_from_file_location("fit_gelu_erfc", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    t = tool.tables()
    assert t["float64"] == FA._ERFC_F64
    assert t["float32"] == FA._ERFC_F32


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_torch_over_the_whole_range(dtype, approximate):
    """Both forms against torch's F.gelu of the same form, in float32 and float64, from
    -42 to 42 (float64) or -17 to 17 (float32): forward and dx within 4 ulp of the larger
    value plus an absolute term for PyTorch's cancellation at large negative x (its
    ``1 + erf`` or ``1 + tanh`` keeps a few eps absolute: |x|·eps on y; gpunet keeps the
    tiny true value there, where PyTorch gives 0); dx likewise, with x² in that term."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    x = _wide(dtype)
    dy = numpy.random.default_rng(12).standard_normal(x.shape).astype(dtype)
    layer = gpunet.GELU(approximate=approximate)
    y = layer(x)
    dx = layer.backward(dy)
    t = torch.tensor(x, requires_grad=True)
    ty = F.gelu(t, approximate=approximate)
    ty.backward(torch.tensor(dy))
    eps = float(numpy.finfo(dtype).eps)
    ty, tdx = ty.detach().numpy(), t.grad.numpy()
    scale = numpy.maximum(1.0, numpy.abs(x.astype(numpy.float64)))
    numpy.testing.assert_array_less(numpy.abs(y - ty), 4 * eps * numpy.abs(ty) + 4 * eps * scale)
    # dx: the tanh form's slope cancels in 1 - tanh² (both sides) with a factor x·u' ~ x³
    numpy.testing.assert_array_less(numpy.abs(dx - tdx), 4 * eps * numpy.abs(tdx) + 4 * eps * scale**2 * numpy.abs(dy)
                                    + 1e-300)


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64])
def test_gelu_exact_at_extremes(xp, dtype):
    """±inf, NaN, ±1e4 (±300 and ±65504 in float16): y is x or 0 beyond the tail and
    inf/0 at ±inf (PyTorch: NaN), dx 1 or 0; NaN in gives NaN out; nothing else is NaN."""
    big = 300.0 if dtype == numpy.float16 else 1e4
    vals = [numpy.inf, -numpy.inf, numpy.nan, big, -big, 0.5]
    if dtype == numpy.float16:
        vals += [65504.0, -65504.0]
    x = numpy.array(vals, dtype)
    with numpy.errstate(invalid="raise", over="raise"):       # no inf·0 on the host path
        y = FA.gelu(xp.asarray(x))
        d = FA.gelu_backward(xp.ones_like(xp.asarray(x)), xp.asarray(x), y)
    y, d = gpunet.to_numpy(y), gpunet.to_numpy(d)
    assert y.dtype == d.dtype == dtype
    assert y[0] == numpy.inf and y[1] == 0 and numpy.isnan(y[2]) and y[3] == big and y[4] == 0
    assert d[0] == 1 and d[1] == 0 and numpy.isnan(d[2]) and d[3] == 1 and d[4] == 0
    assert not numpy.isnan(numpy.delete(y, 2)).any() and not numpy.isnan(numpy.delete(d, 2)).any()
    if dtype == numpy.float16:
        assert list(y[6:]) == [65504.0, 0.0] and list(d[6:]) == [1.0, 0.0]


def test_gelu_float16_is_the_float32_result_rounded_once(xp):
    """float16 is evaluated in float32 and rounded once: the same values as the float32
    path's, cast (so within half a float16 ulp of x·Φ(x))."""
    x = numpy.random.default_rng(13).standard_normal(4000).astype(numpy.float16) * numpy.float16(4)
    dy = numpy.ones_like(x)
    y16 = FA.gelu(xp.asarray(x))
    x32 = x.astype(numpy.float32)
    y32 = FA.gelu(xp.asarray(x32))
    assert gpunet.to_numpy(y16).tobytes() == gpunet.to_numpy(y32).astype(numpy.float16).tobytes()
    d16 = FA.gelu_backward(xp.asarray(dy), xp.asarray(x), y16)
    d32 = FA.gelu_backward(xp.asarray(dy.astype(numpy.float32)), xp.asarray(x32), y32)
    assert gpunet.to_numpy(d16).tobytes() == gpunet.to_numpy(d32).astype(numpy.float16).tobytes()


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64])
@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_on_the_gpu_backends_is_the_cpus_bit_for_bit(gpu_xp, dtype, approximate):
    """The same ufunc sequence on every backend: the sim device gives the CPU's bits (its
    ufuncs are NumPy's); on CuPy the same formula runs as CuPy ufuncs."""
    x = numpy.concatenate([_wide(dtype), numpy.array([numpy.inf, -numpy.inf], dtype)])
    dy = numpy.random.default_rng(14).standard_normal(x.shape).astype(dtype)
    with numpy.errstate(all="ignore"):
        y = FA.gelu(x, approximate=approximate)
        d = FA.gelu_backward(dy, x, y, approximate=approximate)
        gy = FA.gelu(gpu_xp.asarray(x), approximate=approximate)
        gd = FA.gelu_backward(gpu_xp.asarray(dy), gpu_xp.asarray(x), gy, approximate=approximate)
    if gpu_xp.__name__.startswith("cupy"):
        # CUDA's exp/divide may round differently: a few ulps of the evaluation dtype (one
        # float16 ulp after the final rounding), subnormal results to the smallest normal.
        # CuPy compiles float32 with -ftz: a subnormal intermediate (Phi(x) below 1.2e-38,
        # from x < -13) is flushed to 0, so x*Phi(x), a normal number up to |x| times the
        # smallest normal, is 0 there (23 exact, 12 tanh elements on the H200, 2026-11-30)
        rtol = float(numpy.finfo(dtype).eps) if dtype == numpy.float16 else 64 * float(numpy.finfo(dtype).eps)
        tiny = float(numpy.finfo(dtype).tiny) * (float(numpy.abs(x[numpy.isfinite(x)]).max())
                                                 if dtype == numpy.float32 else 1.0)
        numpy.testing.assert_allclose(gpunet.to_numpy(gy), y, rtol=rtol, atol=tiny)
        numpy.testing.assert_allclose(gpunet.to_numpy(gd), d, rtol=rtol, atol=tiny + rtol * numpy.abs(dy).max())
    else:
        assert gpunet.to_numpy(gy).tobytes() == y.tobytes()
        assert gpunet.to_numpy(gd).tobytes() == d.tobytes()


def _laid_out(rng, layout, dtype):
    """``(x, dy)``: a (5, 4, 6, 7) input with 0, -0, ±inf, NaN and ±40 among wide normal
    values, in the ``layout`` asked for (``c``, ``f``, ``chwn``: batch-last memory shown as
    NCHW, ``strided``: a view of every other column), and a ``dy`` in the same layout."""
    base = (rng.standard_normal((5, 4, 6, 7)) * 6).astype(dtype)
    base.flat[:7] = [0.0, -0.0, numpy.inf, -numpy.inf, numpy.nan, 40.0, -40.0]
    x = {"c": base, "f": numpy.asfortranarray(base), "strided": base[:, :, ::2],
         "chwn": numpy.ascontiguousarray(base.transpose(1, 2, 3, 0)).transpose(3, 0, 1, 2)}[layout]
    dy = numpy.empty_like(x)
    dy[...] = rng.standard_normal(x.shape)
    return x, dy


BLOCKED = [("sigmoid", {}), ("elu", {}), ("elu", {"alpha": -0.5}), ("gelu", {}),
           ("gelu", {"approximate": "tanh"}), ("silu", {}), ("softplus", {})]


@pytest.mark.parametrize("name, kw", BLOCKED, ids=[f"{n}{'-' + str(k) if k else ''}" for n, k in BLOCKED])
@pytest.mark.parametrize("layout", ["c", "f", "chwn", "strided"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
def test_activations_in_blocks_equal_the_whole_array_call(monkeypatch, name, kw, layout, dtype):
    """Activations of several passes run large NumPy arrays a cache-sized block at a time
    (ELEMENTWISE_BLOCK, in memory order); each element gets the same operations, so y and dx
    equal the whole-array results bit for bit in any memory layout, inplace=True writes into
    x exactly where the whole-array call does, and y keeps x's memory order. A strided view,
    or a dy in another layout than x, takes the whole-array call."""
    x, dy = _laid_out(numpy.random.default_rng(11), layout, dtype)
    f, g = FA.FORWARD[name], FA.BACKWARD[name]

    def run():
        with numpy.errstate(all="ignore"):
            xi = x.copy(order="K")
            y, yi = f(x, **kw), f(xi, inplace=True, **kw)
            return (y, yi, xi, g(dy, x, y, **kw), g(numpy.ascontiguousarray(dy), x, y, **kw),
                    g(dy, x if FA.NEEDS_INPUT[name] else None, y, **kw))

    monkeypatch.setattr(FA, "ELEMENTWISE_BLOCK", 10 ** 9)
    whole = run()
    monkeypatch.setattr(FA, "ELEMENTWISE_BLOCK", 37)        # blocks that split rows
    flat_calls = []
    real = FA._memory_flat
    monkeypatch.setattr(FA, "_memory_flat", lambda a: flat_calls.append(1) or real(a))
    blocked = run()
    if layout != "strided":
        assert flat_calls, "the blocked path did not run"
        assert blocked[0].strides == x.strides
    for got, want in zip(blocked, whole):
        assert got.dtype == want.dtype
        numpy.testing.assert_array_equal(got, want)


def test_gelu_tanh_form_is_pytorchs_formula():
    """``approximate="tanh"`` is ``x/2·(1 + tanh(√(2/π)(x + 0.044715x³)))`` and differs from
    the default exact form."""
    x = numpy.linspace(-6, 6, 1201)
    numpy.testing.assert_allclose(gpunet.GELU(approximate="tanh")(x), _np_gelu_tanh(x), rtol=1e-13, atol=1e-15)
    diff = numpy.abs(gpunet.GELU()(x) - _np_gelu_tanh(x)).max()
    assert 4e-4 < diff < 5e-4


@pytest.mark.parametrize("value,exc", [("exact", ValueError), ("NONE", ValueError), ("", ValueError),
                                       (None, TypeError), (True, TypeError), (0, TypeError)])
def test_gelu_bad_approximate_names_the_choices(value, exc):
    msg = rf"expected approximate to be 'none' or 'tanh', got {re.escape(repr(value))}"
    with pytest.raises(exc, match=r"^GELU: " + msg):
        gpunet.GELU(approximate=value)
    x = numpy.ones(3)
    with pytest.raises(exc, match=r"^gelu: " + msg):
        FA.gelu(x, approximate=value)
    with pytest.raises(exc, match=r"^gelu_backward: " + msg):
        FA.gelu_backward(x, x, x, approximate=value)


def test_gelu_layer_repr_and_activation_names():
    """``activation="gelu"`` is the exact form (F.gelu's default); the tanh form goes in
    as a layer, fused exactly as the separate layer."""
    from gpunet.layers.activations import get
    assert get("gelu").approximate == "none"
    assert repr(gpunet.GELU(approximate="tanh")) == "GELU(approximate='tanh')"
    x = numpy.random.default_rng(15).standard_normal((5, 4))
    for approximate in ("none", "tanh"):
        fused = gpunet.Dense(4, 3, activation=gpunet.GELU(approximate=approximate)).to(dtype=numpy.float64)
        plain = gpunet.Dense(4, 3).to(dtype=numpy.float64)
        plain.load_state_dict(fused.state_dict())
        sep = gpunet.GELU(approximate=approximate)
        numpy.testing.assert_array_equal(fused(x), sep(plain(x)))
        dy = numpy.ones((5, 3))
        numpy.testing.assert_array_equal(fused.backward(dy), plain.backward(sep.backward(dy)))
        assert gpunet.gradcheck(fused, x)


@pytest.mark.parametrize("name", ["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus",
                                  "softmax", "log_softmax"])
def test_functional_forward_names_a_bad_input(name):
    """The course's functional.softmax on [1000, 1001] written as ints failed inside NumPy
    ("Cannot cast ufunc 'exp' output ... to int64"), relu gave integers back, and a list
    failed on a missing ndim: each forward names itself and the cast."""
    f = getattr(FA, name)
    with pytest.raises(ValueError, match=rf"^{name}: expected a floating-point input \(float32 or float64\), "
                                         rf"got int64; cast the input: x.astype\(numpy.float32\)$"):
        f(numpy.array([1000, 1001], dtype=numpy.int64))
    with pytest.raises(TypeError, match=rf"^{name}: expected a NumPy or CuPy array, got list; a list becomes "
                                        rf"one with numpy.asarray\(x, dtype=numpy.float32\)$"):
        f([1000.0, 1001.0])
    assert f(numpy.array([1000.0, 1001.0], dtype=numpy.float32)).dtype == numpy.float32


PAIRED = [("gelu", {}), ("gelu", {"approximate": "tanh"}), ("silu", {})]


@pytest.mark.parametrize("name, kw", PAIRED, ids=["gelu", "gelu-tanh", "silu"])
@pytest.mark.parametrize("layout", ["c", "f", "chwn", "strided"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize("block", [37, 10 ** 9], ids=["blocks", "whole"])
def test_forward_and_derivative_is_forward_and_backward_bit_for_bit(monkeypatch, name, kw, layout,
                                                                    dtype, block):
    """FORWARD_AND_DERIVATIVE[name](x) gives FORWARD's y and a factor d with which
    times_derivative(dy, d) is BACKWARD's dx, bit for bit (NaN, ±inf, ±0 included), both in
    x's memory order, whole or a block at a time."""
    monkeypatch.setattr(FA, "ELEMENTWISE_BLOCK", block)
    x, dy = _laid_out(numpy.random.default_rng(21), layout, dtype)
    dy.flat[7:10] = [numpy.inf, -0.0, numpy.nan]
    with numpy.errstate(all="ignore"):
        want_y = FA.FORWARD[name](x, **kw)
        want_dx = FA.BACKWARD[name](dy, x, want_y, **kw)
        y, d = FA.FORWARD_AND_DERIVATIVE[name](x, **kw)
        dx = FA.times_derivative(dy, d)
    assert y.dtype == want_y.dtype and dx.dtype == want_dx.dtype == dtype
    assert y.tobytes(order="A") == want_y.tobytes(order="A") and y.strides == want_y.strides
    assert dx.tobytes(order="A") == want_dx.tobytes(order="A") and dx.strides == want_dx.strides


def _paired_layers():
    return [gpunet.GELU(), gpunet.GELU(approximate="tanh"), gpunet.SiLU()]


@pytest.mark.parametrize("index", range(3), ids=["gelu", "gelu-tanh", "silu"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float16])
def test_paired_activation_layers_keep_the_derivative_and_give_the_functional_gradient(index, dtype):
    """A GELU/SiLU layer in training mode on NumPy keeps the derivative its forward computes,
    not the input: its backward is the functional backward's dx bit for bit, twice in a row
    (the kept derivative is not overwritten), and an eval forward keeps nothing."""
    layer = _paired_layers()[index]
    rng = numpy.random.default_rng(22)
    x = (rng.standard_normal((64, 700)) * 4).astype(dtype)       # over ELEMENTWISE_BLOCK
    dy = rng.standard_normal(x.shape).astype(dtype)
    y = layer(x)
    assert type(layer._x).__name__ == "_Derivative"
    want_y = FA.FORWARD[layer.name](x, **layer._kwargs)
    want_dx = FA.BACKWARD[layer.name](dy, x, want_y, **layer._kwargs)
    assert y.tobytes() == want_y.tobytes()
    assert layer.backward(dy).tobytes() == want_dx.tobytes()
    assert layer.backward(dy).tobytes() == want_dx.tobytes()
    layer.eval()
    layer._x = None
    assert layer(x).tobytes() == want_y.tobytes() and layer._x is None


@pytest.mark.parametrize("index", range(3), ids=["gelu", "gelu-tanh", "silu"])
def test_fused_paired_activations_give_the_unfused_gradients(index):
    """Dense and Conv2D with a fused GELU/SiLU keep the derivative in place of the
    pre-activation in training; their gradients are those of the layer followed by the
    separate activation, bit for bit."""
    rng = numpy.random.default_rng(23)
    cases = [(lambda a: gpunet.Dense(30, 40, activation=a), lambda: gpunet.Dense(30, 40),
              rng.standard_normal((50, 30)).astype(numpy.float32)),
             (lambda a: gpunet.Conv2D(3, 8, 3, padding=1, activation=a), lambda: gpunet.Conv2D(3, 8, 3, padding=1),
              rng.standard_normal((6, 3, 10, 10)).astype(numpy.float32))]
    for fused_of, plain_of, x in cases:
        fused = fused_of(_paired_layers()[index])
        plain, act = plain_of(), _paired_layers()[index]
        plain.load_state_dict(fused.state_dict())
        y = fused(x)
        want_y = act(plain(x))
        dy = rng.standard_normal(y.shape).astype(numpy.float32)
        assert type(fused._z).__name__ == "_Derivative"
        assert y.tobytes(order="A") == want_y.tobytes(order="A")
        dx = fused.backward(dy)
        want_dx = plain.backward(act.backward(dy))
        assert dx.tobytes(order="A") == want_dx.tobytes(order="A")
        assert fused.weight.grad.tobytes() == plain.weight.grad.tobytes()
        assert fused.bias.grad.tobytes() == plain.bias.grad.tobytes()


def test_an_activation_subclass_with_its_own_backward_keeps_it():
    """A subclass of GELU that overrides grad_fn (or fn) is called as written: the kept
    derivative is only for the built-in computation."""
    class Doubled(gpunet.GELU):
        def grad_fn(self, dy, x, y):
            return 2.0 * super().grad_fn(dy, x, y)
    x = numpy.random.default_rng(24).standard_normal((4, 5))
    dy = numpy.ones_like(x)
    for layer in (Doubled(), gpunet.Dense(5, 5, activation=Doubled()).to(dtype=numpy.float64)):
        z = x if isinstance(layer, gpunet.GELU) else x @ layer.weight.data.T + layer.bias.data
        layer(x)
        dx = layer.backward(dy)
        got = dx if isinstance(layer, gpunet.GELU) else layer.weight.grad
        want = 2.0 * FA.gelu_backward(dy, z, None)
        if not isinstance(layer, gpunet.GELU):
            want = want.T @ x
        numpy.testing.assert_array_equal(got, want)
