"""gpunet.gradcheck (DESIGN §8) itself: it must pass correct gradients and catch wrong ones."""
import re

import numpy
import pytest

import gpunet
from gpunet.layers.base import Layer, Parameter


class Scale(Layer):
    """``y = x * w`` (w broadcast over the batch), with optional deliberate mistakes."""

    def __init__(self, features, wrong_dx_at=None, wrong_dw_at=None, drop_dw=False, rel_error=0.0):
        super().__init__()
        w = numpy.random.default_rng(0).standard_normal(features).astype(numpy.float32) + 2.0
        self.weight = Parameter(w, "weight")
        self.wrong_dx_at, self.wrong_dw_at = wrong_dx_at, wrong_dw_at
        self.drop_dw, self.rel_error = drop_dw, rel_error
        self._x = None

    def forward(self, x):
        if self.training:
            self._x = x
        return x * self.weight.data

    def backward(self, dy):
        dx = dy * self.weight.data * (1.0 + self.rel_error)
        if self.wrong_dx_at is not None:
            dx[self.wrong_dx_at] += 0.5
        if not self.drop_dw:
            dw = (dy * self._x).sum(axis=0)
            if self.wrong_dw_at is not None:
                dw[self.wrong_dw_at] -= 0.25
            self.weight.accumulate(dw)
        return dx


class Counter(Layer):
    """Output depends on a counter advanced by every forward, like dropout's draw count."""
    _buffers = ("count",)

    def __init__(self):
        super().__init__()
        self.count = 0
        self._k = None

    def forward(self, x):
        self.count += 1
        self._k = float(self.count)
        return x * x * self._k

    def backward(self, dy):
        raise AssertionError("replaced below")


class CounterOK(Counter):
    def forward(self, x):
        y = super().forward(x)
        self._x = x
        return y

    def backward(self, dy):
        return 2.0 * self._x * self._k * dy


def _x(shape=(3, 4), seed=0, dtype=numpy.float32):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(dtype)


def test_passes_on_correct_layers(xp, device):
    assert gpunet.gradcheck(Scale(4).to(device), xp.asarray(_x())) is True
    assert gpunet.gradcheck(gpunet.Dense(4, 3, activation="tanh").to(device), xp.asarray(_x())) is True


def test_wrong_input_gradient_names_the_worst_element(xp, device):
    with pytest.raises(AssertionError) as e:
        gpunet.gradcheck(Scale(4, wrong_dx_at=(2, 1)).to(device), xp.asarray(_x()))
    msg = str(e.value)
    assert "Scale" in msg and "input" in msg
    assert "(2, 1)" in msg
    assert re.search(r"analytic\s+-?[\d.]", msg) and re.search(r"numeric\s+-?[\d.]", msg)


def test_wrong_parameter_gradient_names_the_parameter(xp, device):
    with pytest.raises(AssertionError) as e:
        gpunet.gradcheck(Scale(4, wrong_dw_at=3).to(device), xp.asarray(_x()))
    msg = str(e.value)
    assert "weight" in msg and "(3,)" in msg


def test_small_relative_error_is_caught(xp, device):
    # 1e-3 relative error is far beyond rtol=1e-4 of a float64 central difference
    with pytest.raises(AssertionError):
        gpunet.gradcheck(Scale(4, rel_error=1e-3).to(device), xp.asarray(_x()))
    # and is accepted when the tolerance allows it
    assert gpunet.gradcheck(Scale(4, rel_error=1e-3).to(device), xp.asarray(_x()), rtol=1e-2)


def test_missing_parameter_gradient(xp, device):
    with pytest.raises(AssertionError, match="weight"):
        gpunet.gradcheck(Scale(4, drop_dw=True).to(device), xp.asarray(_x()))


def test_runs_in_float64_and_restores_the_layer(xp, device):
    layer = gpunet.Dense(4, 3).to(device)
    w = gpunet.to_numpy(layer.weight.data).copy()
    layer.weight.grad = xp.asarray(numpy.full((3, 4), 7.0, numpy.float32))
    x = _x()
    xin = xp.asarray(x)
    gpunet.gradcheck(layer, xin)
    assert layer.weight.data.dtype == numpy.float32 and layer.bias.data.dtype == numpy.float32
    numpy.testing.assert_array_equal(gpunet.to_numpy(layer.weight.data), w)
    numpy.testing.assert_array_equal(gpunet.to_numpy(layer.weight.grad), numpy.full((3, 4), 7.0))
    assert layer.bias.grad is None
    numpy.testing.assert_array_equal(gpunet.to_numpy(xin), x)      # the input is not perturbed


def test_float64_catches_errors_below_float32_resolution():
    """A float32 check could not see a 1e-5 relative error; float64 must."""
    with pytest.raises(AssertionError):
        gpunet.gradcheck(Scale(4, rel_error=3e-5), _x(), rtol=1e-5, atol=1e-8)


def test_buffers_are_rewound_before_every_forward(xp):
    assert gpunet.gradcheck(CounterOK(), xp.asarray(_x()))


def test_leaves_buffers_as_found(xp, device):
    """The probes' forwards must not advance batch norm's running statistics nor dropout's
    draw counter: after the check the model's state_dict is the one it had before."""
    gpunet.manual_seed(0)
    model = gpunet.Sequential(gpunet.Dense(4, 3), gpunet.BatchNorm(3),
                              gpunet.Dropout(0.5, seed=3), gpunet.Dense(3, 2)).to(device)
    before = {k: gpunet.to_numpy(v).copy() if hasattr(v, "shape") else v
              for k, v in model.state_dict().items()}
    assert gpunet.gradcheck(model, xp.asarray(_x((5, 4))))
    after = model.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        got = gpunet.to_numpy(after[k]) if hasattr(after[k], "shape") else after[k]
        numpy.testing.assert_array_equal(got, v, err_msg=k)
        assert numpy.asarray(got).dtype == numpy.asarray(v).dtype, k


def test_eval_mode_layer_is_named_with_the_fix(xp, device):
    """A model left in eval mode (after evaluating it) failed with 'Dropout.backward called
    before a training-mode forward', which does not say what to do about gradcheck."""
    model = gpunet.Sequential(gpunet.Dense(4, 3), gpunet.Sequential(gpunet.ReLU(), gpunet.Dropout(0.5, seed=1)))
    model.to(device)
    model.eval()
    model[0].train()
    with pytest.raises(RuntimeError, match=re.escape("gradcheck(Sequential): backward failed with layers in "
                                                     "eval mode (itself, 1 (Sequential), 1.0 (ReLU), 1.1 "
                                                     "(Dropout)), whose forward keeps nothing for backward: "
                                                     "call .train() on the layer before gradcheck. The "
                                                     "error: Dropout.backward called before a training-mode")):
        gpunet.gradcheck(model, xp.asarray(_x((2, 4))))
    assert gpunet.gradcheck(model.train(), xp.asarray(_x((2, 4))))


def test_non_contiguous_input_and_parameters(xp, device):
    x = xp.asarray(_x((4, 3))).T                       # (3, 4), Fortran order
    assert gpunet.gradcheck(gpunet.Dense(4, 2).to(device), x)
    layer = gpunet.Dense(4, 2, init=lambda shape, rng: numpy.asfortranarray(rng.standard_normal(shape)))
    assert not layer.weight.data.flags.c_contiguous
    layer.weight.data = xp.asarray(layer.weight.data)  # keeps its Fortran order on either backend
    assert gpunet.gradcheck(layer.to(device), xp.asarray(_x()))


def test_function_form(xp):
    def square(x):
        return x * x, lambda dy: 2 * x * dy

    def wrong_square(x):
        def back(dy):
            dx = 2 * x * dy
            dx[1, 0] = 0.0
            return dx
        return x * x, back

    x = xp.asarray(_x() + 3.0)      # dx[1, 0] = 2·x·dy is far from 0
    assert gpunet.gradcheck(square, x)
    with pytest.raises(AssertionError) as e:
        gpunet.gradcheck(wrong_square, x)
    assert "wrong_square" in str(e.value) and "(1, 0)" in str(e.value)


def test_function_form_with_scalar_output(xp):
    def total(x):
        return (x ** 3).sum(), lambda dy: 3 * x * x * dy

    assert gpunet.gradcheck(total, xp.asarray(_x((2, 3))))


def test_gradient_of_wrong_shape(xp):
    def f(x):
        return x * 2.0, lambda dy: (2.0 * dy).reshape(-1)

    with pytest.raises(AssertionError, match="shape"):
        gpunet.gradcheck(f, xp.asarray(_x()))


@pytest.mark.parametrize("kw,err,msg", [
    ({"eps": 0}, ValueError, "expected eps > 0"),
    ({"eps": float("nan")}, ValueError, "expected eps > 0, got nan"),
    ({"rtol": -1}, ValueError, "expected rtol >= 0, got -1"),
    # the second audit: a wrong type was a ValueError only, and seed went unchecked into
    # numpy.random.default_rng (a float or a negative seed failed inside NumPy)
    ({"atol": "1e-6"}, TypeError, r"expected atol to be a real number, got '1e-6' \(str\)"),
    ({"eps": True}, TypeError, r"expected eps to be a real number, got True \(bool\)"),
    ({"atol": float("inf")}, ValueError, "expected atol to be finite, got inf"),
    ({"seed": 1.5}, TypeError, r"expected seed to be an int >= 0, got 1.5 \(float\)"),
    ({"seed": -1}, ValueError, "expected seed to be an int >= 0, got -1"),
    ({"x": "list"}, TypeError, "expected x to be a NumPy or CuPy array, got list"),
    ({"layer": None}, TypeError, "expected a Layer or a callable"),
    # found by the first-hour audit: a function returning y alone read "'numpy.ndarray'
    # object is not callable", from inside gradcheck
    ({"layer": lambda x: x * 2.0}, TypeError, r"expected the function to return \(y, backward\) with "
                                             r"backward\(dy\) -> dx, got ndarray of shape \(2, 3\)"),
])
def test_gradcheck_names_bad_arguments(kw, err, msg):
    """Found by fuzzing: eps=0 raised ZeroDivisionError, a list x AttributeError ('list'
    object has no attribute 'astype'), layer None "'NoneType' object is not callable"."""
    layer = kw.pop("layer", gpunet.Dense(3, 2))
    x = numpy.ones((2, 3))
    if kw.pop("x", None) == "list":
        x = x.tolist()
    with pytest.raises(err, match=f"gradcheck: {msg}"):
        gpunet.gradcheck(layer, x, **kw)
