"""Initializers (DESIGN §6) and how Dense picks one (§4)."""
import math

import numpy
import pytest

import gpunet
from gpunet import init


@pytest.mark.parametrize("shape,expected", [
    ((10, 20), (20, 10)),                 # dense (out, in)
    ((8, 3, 5, 5), (75, 200)),            # conv (out, in, kh, kw)
    ((4, 2, 1, 7), (14, 28)),             # 1-D conv as a (1, k) kernel
    ([6, 9], (9, 6)),
])
def test_fans(shape, expected):
    assert init.fans(shape) == expected


def test_fans_rejects_scalar_shape():
    with pytest.raises(ValueError):
        init.fans(())


# initializer -> (expected std, bound or None) as a function of (fan_in, fan_out)
FORMULAS = {
    "xavier_normal": lambda fi, fo: (math.sqrt(2 / (fi + fo)), None),
    "xavier_uniform": lambda fi, fo: (math.sqrt(6 / (fi + fo)) / math.sqrt(3), math.sqrt(6 / (fi + fo))),
    "he_normal": lambda fi, fo: (math.sqrt(2 / fi), None),
    "he_uniform": lambda fi, fo: (math.sqrt(6 / fi) / math.sqrt(3), math.sqrt(6 / fi)),
    "lecun_normal": lambda fi, fo: (math.sqrt(1 / fi), None),
}


@pytest.mark.parametrize("name", sorted(FORMULAS))
@pytest.mark.parametrize("shape", [(300, 200), (64, 16, 3, 3)])
def test_initializer_statistics(name, shape):
    fi, fo = init.fans(shape)
    std, bound = FORMULAS[name](fi, fo)
    w = getattr(init, name)(shape, numpy.random.default_rng(0))
    assert w.shape == shape and w.dtype == numpy.float32
    n = w.size
    # sample std of n draws has relative sd ~ 1/sqrt(2n) (<1%); allow 3%
    assert abs(float(w.std()) / std - 1) < 0.03, (float(w.std()), std)
    assert abs(float(w.mean())) < 5 * std / math.sqrt(n)
    if bound is not None:
        assert float(numpy.abs(w).max()) <= bound
        assert float(numpy.abs(w).max()) > 0.99 * bound      # fills the interval
    else:
        # a normal sample of this size reaches past 3 std but not 6
        assert 3 * std < float(numpy.abs(w).max()) < 6 * std


def test_normal_and_uniform_defaults():
    rng = numpy.random.default_rng(1)
    w = init.normal((200, 300), rng)
    assert abs(float(w.std()) / 0.01 - 1) < 0.03
    w = init.normal((200, 300), rng, std=0.5, mean=2.0)
    assert abs(float(w.mean()) - 2.0) < 0.01 and abs(float(w.std()) / 0.5 - 1) < 0.03
    u = init.uniform((200, 300), rng, low=-2.0, high=3.0)
    assert -2.0 <= float(u.min()) < -1.99 and 2.99 < float(u.max()) < 3.0
    assert abs(float(u.mean()) - 0.5) < 0.02


@pytest.mark.parametrize("name", ["zeros", "ones", "constant", "normal", "uniform", "xavier_normal",
                                  "xavier_uniform", "he_normal", "he_uniform", "lecun_normal"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_contract_signature_and_dtype(name, dtype):
    """Every initializer is ``f(shape, rng=None, dtype=numpy.float32)``."""
    f = getattr(init, name)
    a = f((4, 5), numpy.random.default_rng(3), dtype=dtype)
    b = f((4, 5), numpy.random.default_rng(3), dtype)          # positional dtype as well
    assert isinstance(a, numpy.ndarray) and a.shape == (4, 5) and a.dtype == dtype
    numpy.testing.assert_array_equal(a, b)
    assert f((4, 5)).dtype == numpy.float32                   # defaults: host rng, float32
    assert f(7, numpy.random.default_rng(0)).shape == (7,)


@pytest.mark.parametrize("name", ["zeros", "ones", "constant", "normal", "uniform", "xavier_normal",
                                  "xavier_uniform", "he_normal", "he_uniform", "lecun_normal"])
def test_dtype_none_is_the_default_float32(name):
    """Found by the dtype audit: dtype=None (a wrapper passing its own dtype=None on, as
    torch.zeros(..., dtype=None) means the default dtype) gave float64 weights, since
    numpy.dtype(None) is float64; a float32 model given them by p.data = ... was then of
    two dtypes. None now means the default, float32, with the same values."""
    f = getattr(init, name)
    a = f((4, 5), numpy.random.default_rng(3), dtype=None)
    assert a.dtype == numpy.float32
    numpy.testing.assert_array_equal(a, f((4, 5), numpy.random.default_rng(3)))


def test_zeros_ones_constant_values():
    numpy.testing.assert_array_equal(init.zeros((2, 3)), numpy.zeros((2, 3)))
    numpy.testing.assert_array_equal(init.ones((2, 3)), numpy.ones((2, 3)))
    numpy.testing.assert_array_equal(init.constant((2, 3), value=0.25), numpy.full((2, 3), 0.25))


def test_default_rng_is_the_host_generator():
    gpunet.manual_seed(11)
    a = init.he_normal((5, 6))
    gpunet.manual_seed(11)
    b = init.he_normal((5, 6))
    numpy.testing.assert_array_equal(a, b)
    numpy.testing.assert_array_equal(a, init.he_normal((5, 6), numpy.random.default_rng(11)))


# -- Dense's init= -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["zeros", "ones", "constant", "normal", "uniform", "xavier_normal",
                                  "xavier_uniform", "he_normal", "he_uniform", "lecun_normal"])
def test_dense_accepts_every_initializer_name(name):
    gpunet.manual_seed(5)
    d = gpunet.Dense(6, 4, init=name)
    gpunet.manual_seed(5)
    expected = getattr(init, name)((4, 6), numpy.random.default_rng(5))
    assert d.weight.data.dtype == numpy.float32
    numpy.testing.assert_array_equal(d.weight.data, expected)


def test_dense_unknown_init_lists_known_ones():
    with pytest.raises(ValueError) as e:
        gpunet.Dense(3, 2, init="glorious")
    msg = str(e.value)
    assert "Dense" in msg and "glorious" in msg
    for known in ("he_normal", "xavier_uniform", "zeros", "lecun_normal"):
        assert known in msg


def test_dense_callable_init():
    seen = {}

    def my_init(shape, rng):
        seen["shape"], seen["rng"] = shape, rng
        return numpy.arange(numpy.prod(shape), dtype=numpy.float64).reshape(shape)

    d = gpunet.Dense(3, 2, init=my_init)
    assert seen["shape"] == (2, 3)
    assert isinstance(seen["rng"], numpy.random.Generator)
    assert d.weight.data.dtype == numpy.float32
    numpy.testing.assert_array_equal(d.weight.data, numpy.arange(6.0).reshape(2, 3))


def test_dense_callable_init_wrong_shape():
    with pytest.raises(ValueError, match="Dense"):
        gpunet.Dense(3, 2, init=lambda shape, rng: numpy.zeros((3, 2)))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "elu", "gelu", "silu"])
def test_default_init_he_for_relu_family(activation):
    fan_in, fan_out = 400, 300
    d = gpunet.Dense(fan_in, fan_out, activation=activation)
    he, xavier = math.sqrt(2 / fan_in), math.sqrt(2 / (fan_in + fan_out))
    s = float(d.weight.data.std())
    assert abs(s / he - 1) < 0.03, (s, he, xavier)
    # normal, not uniform: values beyond the He-uniform bound sqrt(6/fan_in) occur
    assert float(numpy.abs(d.weight.data).max()) > math.sqrt(6 / fan_in)


@pytest.mark.parametrize("activation", [None, "sigmoid", "tanh", "softmax", "softplus", "identity"])
def test_default_init_xavier_uniform_otherwise(activation):
    fan_in, fan_out = 400, 300
    d = gpunet.Dense(fan_in, fan_out, activation=activation)
    a = math.sqrt(6 / (fan_in + fan_out))
    s = float(d.weight.data.std())
    assert abs(s / (a / math.sqrt(3)) - 1) < 0.03, (s, a)
    assert float(numpy.abs(d.weight.data).max()) <= a


def test_default_init_follows_activation_layer_instances():
    d = gpunet.Dense(400, 300, activation=gpunet.LeakyReLU(0.2))
    assert abs(float(d.weight.data.std()) / math.sqrt(2 / 400) - 1) < 0.03
    d = gpunet.Dense(400, 300, activation=gpunet.Tanh)
    assert float(numpy.abs(d.weight.data).max()) <= math.sqrt(6 / 700)


def test_separate_activation_layer_leaves_dense_at_xavier_as_the_guide_says():
    """Guide §3: the default init looks at the fused activation only; Dense(64, 128), ReLU()
    starts from Xavier-uniform weights, and Dense(64, 128, init="he_normal"), ReLU() is the
    fused Dense(64, 128, activation="relu") exactly (same draws, same outputs)."""
    x = numpy.random.default_rng(0).random((4, 64)).astype(numpy.float32)
    gpunet.manual_seed(0)
    fused = gpunet.Sequential(gpunet.Dense(64, 128, activation="relu"))
    gpunet.manual_seed(0)
    separate = gpunet.Sequential(gpunet.Dense(64, 128), gpunet.ReLU())
    gpunet.manual_seed(0)
    he = gpunet.Sequential(gpunet.Dense(64, 128, init="he_normal"), gpunet.ReLU())
    assert float(numpy.abs(separate[0].weight.data).max()) <= math.sqrt(6 / (64 + 128))
    numpy.testing.assert_array_equal(he[0].weight.data, fused[0].weight.data)
    numpy.testing.assert_array_equal(he(x), fused(x))


# -- bad arguments name the initializer (found by fuzzing) -------------------------------------

_ALL = ["zeros", "ones", "constant", "normal", "uniform", "xavier_normal", "xavier_uniform",
        "he_normal", "he_uniform", "lecun_normal"]


@pytest.mark.parametrize("name", _ALL)
@pytest.mark.parametrize("shape,err", [((3, -1), ValueError), ((2.5, 3), TypeError), (None, TypeError),
                                       ("ab", TypeError)])
def test_bad_shape_names_the_initializer(name, shape, err):
    """(2.5, 3) used to be truncated to (2, 3) silently; the others failed in NumPy or int()."""
    with pytest.raises(err, match=rf"init\.{name}: expected .*shape"):
        getattr(init, name)(shape)


@pytest.mark.parametrize("name", _ALL)
def test_non_float_dtype_and_bad_rng_name_the_initializer(name):
    """dtype=int32 used to truncate the weights to integers silently (mostly zeros); an rng
    that is not a Generator failed with AttributeError."""
    f = getattr(init, name)
    with pytest.raises(ValueError, match=rf"init\.{name}: expected a floating-point dtype .*got int32"):
        f((3, 3), None, numpy.int32)
    with pytest.raises(TypeError, match=rf"init\.{name}: expected rng to be None or a numpy.random.Generator, got int"):
        f((3, 3), 5)


@pytest.mark.parametrize("name,shape", [("he_normal", (3, 0)), ("he_uniform", (3, 0)),
                                        ("lecun_normal", (3, 0)), ("xavier_normal", (0, 0)),
                                        ("xavier_uniform", (0, 0))])
def test_zero_fan_names_the_initializer(name, shape):
    """Used to raise ZeroDivisionError."""
    with pytest.raises(ValueError, match=rf"init\.{name}: fan_in.* is 0"):
        getattr(init, name)(shape)


@pytest.mark.parametrize("call", [lambda: init.normal((2, 2), std=-1), lambda: init.normal((2, 2), std=float("nan")),
                                  lambda: init.uniform((2, 2), low=1, high=-1),
                                  lambda: init.uniform((2, 2), low=float("nan")),
                                  lambda: init.constant((2, 2), value="a")])
def test_bad_distribution_parameters_name_the_initializer(call):
    """std=nan used to give NaN weights silently; the others failed inside NumPy."""
    with pytest.raises(ValueError, match=r"init\.(normal|uniform|constant): expected"):
        call()


@pytest.mark.parametrize("bad,msg", [(numpy.nan, "non-finite values"), (numpy.inf, "non-finite values"),
                                     ("a", "dtype <U1, expected real numbers")])
def test_dense_names_a_callable_init_that_returns_non_finite_or_non_numeric_weights(bad, msg):
    """Found by fuzzing: an init returning NaN built a Dense whose every output is NaN,
    silently; one returning strings failed in NumPy's conversion, naming no layer."""
    with pytest.raises(ValueError, match=f"Dense: init returned .*{msg}"):
        gpunet.Dense(4, 3, init=lambda shape, rng: numpy.full(shape, bad))


def test_an_init_returning_a_device_array_names_the_layer_and_the_device(gpu_xp, gpu_device):
    """A callable init that made its weight on the GPU (or the sim) failed inside
    numpy.asarray with CuPy's 'Implicit conversion to a NumPy array is not allowed', naming
    no layer; weights are drawn on the host (the same on every device) and then moved, so
    the TypeError now names the layer, the device and model.to."""
    dev = gpunet.backend.device_of(gpu_xp.empty(0))
    on_device = lambda shape, rng: gpu_xp.asarray(rng.standard_normal(shape).astype(numpy.float32))
    for make, name in ((lambda: gpunet.Dense(4, 3, init=on_device), "Dense"),
                       (lambda: gpunet.Conv2D(2, 3, 3, init=on_device), "Conv2D")):
        with pytest.raises(TypeError, match=rf"^{name}: init returned an array on {dev}; an init returns "
                                            rf"a host \(NumPy\) array, drawn with the rng it is given, and "
                                            rf"the model moves it: model\.to\('{dev}'\)$"):
            make()
    host = lambda shape, rng: rng.standard_normal(shape)        # a host array still works
    assert gpunet.Dense(4, 3, init=host).to(gpu_device).device == dev
