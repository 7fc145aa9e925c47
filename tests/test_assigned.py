"""Attributes assigned after construction: checked as the constructor's argument is (the
error names the class, the attribute, what was expected and what was given), recomputing what
was derived from them, or refused with an ``AttributeError`` that says what to do instead when
something derived from them cannot follow (a layer's weight shape, a loader's data). Before,
each was stored as given and ignored, used silently, or failed later inside NumPy."""
import math
import re

import numpy
import pytest

import gpunet
from gpunet import optim


def _assert_refused(obj, name, bad, exc, pattern):
    """``obj.name = bad`` raises ``exc`` matching ``pattern`` and leaves the old value."""
    before = getattr(obj, name)
    with pytest.raises(exc, match=pattern):
        setattr(obj, name, bad)
    after = getattr(obj, name)
    assert after is before or after == before


def _xy(n=10):
    return numpy.arange(n * 3, dtype=numpy.float32).reshape(n, 3), numpy.arange(n, dtype=numpy.int64)


class _World:
    """A communicator of ``size`` processes, this one ``rank`` (what DataLoader reads)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


# -- DataLoader ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["X", "y"])
def test_loader_data_cannot_be_replaced(name):
    """``loader.y = y[:5]`` was stored: batches paired 10 samples of X with 5 labels (the
    last ones cut short by slicing, or an IndexError when shuffled), a resident copy went on
    serving the old data. Now refused, as PyTorch refuses a new ``dataset``."""
    X, y = _xy(10)
    loader = gpunet.DataLoader(X, y, batch_size=4)
    with pytest.raises(AttributeError, match=rf"^DataLoader: {name} cannot be assigned after construction; "
                                             r"create a new DataLoader\(X, y, \.\.\.\) for other data"):
        setattr(loader, name, (X if name == "X" else y)[:5])
    assert loader.X is X and loader.y is y and len(loader) == 3
    assert [len(b[1]) for b in loader] == [4, 4, 2]


def test_loader_comm_is_checked_on_assignment_and_used_at_the_next_pass():
    """``loader.comm = object()`` was stored, and the next ``len``/pass failed reading
    ``.size``; ``comm = 2`` too. Now a TypeError at the assignment; a world assigned shards
    the next pass, None undoes it."""
    loader = gpunet.DataLoader(*_xy(10), batch_size=2)
    for bad, shown in ((object(), r"<object object at 0x[0-9a-f]+> \(object\)"), (2, r"2 \(int\)")):
        with pytest.raises(TypeError, match=r"^DataLoader: expected comm to be None or a gpunet\.distributed "
                                            rf"communicator \(gpunet\.distributed\.init\(\)\), got {shown}$"):
            loader.comm = bad
    assert loader.comm is None and len(loader) == 5
    loader.comm = _World(1, 2)
    assert len(loader) == 3                       # global batches of 2 x 2
    assert [yb.tolist() for _, yb in loader] == [[2, 3], [6, 7], [9]]    # rank 1's halves
    loader.comm = None
    assert [yb.tolist() for _, yb in loader][0] == [0, 1] and len(loader) == 5


# -- layers -------------------------------------------------------------------------------

def _sync_bn():
    from gpunet.distributed import SyncBatchNorm
    return SyncBatchNorm(3)


LAYER_SETTINGS = [
    # who, layer, attribute, bad value, error, message (after "who: ")
    ("Dropout", lambda: gpunet.Dropout(0.5), "p", 1.5, ValueError, r"p \(the drop probability\) must lie in \[0, 1\), got 1\.5"),
    ("Dropout", lambda: gpunet.Dropout(0.5), "p", "0.5", TypeError, r"p must be a number in \[0, 1\), got str '0\.5'"),
    ("Dropout", lambda: gpunet.Dropout(0.5), "mode", "dropout", ValueError, r"mode must be 'inverted' or 'classic', got 'dropout'"),
    ("Dropout", lambda: gpunet.Dropout(0.5), "shard", 1.5, TypeError, r"expected shard to be an int >= 0, got 1\.5 \(float\)"),
    ("Dropout", lambda: gpunet.Dropout(0.5), "shard", -1, ValueError, r"expected shard to be an int >= 0, got -1"),
    ("BatchNorm", lambda: gpunet.BatchNorm(3), "momentum", 1.5, ValueError, r"expected momentum in \[0, 1\], got 1\.5"),
    ("BatchNorm", lambda: gpunet.BatchNorm(3), "momentum", math.nan, ValueError, r"expected momentum in \[0, 1\], got nan"),
    ("BatchNorm", lambda: gpunet.BatchNorm(3), "momentum", "0.1", TypeError, r"expected momentum to be a real number, got '0\.1' \(str\)"),
    ("BatchNorm", lambda: gpunet.BatchNorm(3), "eps", 0.0, ValueError, r"expected eps > 0, got 0\.0"),
    ("SyncBatchNorm", _sync_bn, "eps", -1.0, ValueError, r"expected eps > 0, got -1\.0"),
    ("SyncBatchNorm", _sync_bn, "comm", None, TypeError, r"expected comm to be a gpunet\.distributed communicator "
                                                           r"\(gpunet\.distributed\.init\(\)\), got None"),
    ("LeakyReLU", lambda: gpunet.LeakyReLU(), "negative_slope", math.nan, ValueError, r"expected negative_slope to be a number, got nan"),
    ("LeakyReLU", lambda: gpunet.LeakyReLU(), "negative_slope", "0.2", TypeError, r"expected negative_slope to be a real number, got '0\.2' \(str\)"),
    ("ELU", lambda: gpunet.ELU(), "alpha", math.inf, ValueError, r"expected alpha to be finite, got inf"),
    ("GELU", lambda: gpunet.GELU(), "approximate", "erf", ValueError, r"expected approximate to be 'none' or 'tanh', got 'erf'"),
    ("GELU", lambda: gpunet.GELU(), "approximate", None, TypeError, r"expected approximate to be 'none' or 'tanh', got None"),
    ("Softmax", lambda: gpunet.Softmax(), "axis", 1.0, TypeError, r"expected axis to be an int, got 1\.0 \(float\)"),
    ("LogSoftmax", lambda: gpunet.LogSoftmax(), "axis", "1", TypeError, r"expected axis to be an int, got '1' \(str\)"),
    ("Maxout", lambda: gpunet.Maxout(2), "pieces", 0, ValueError, r"expected pieces to be a positive int, got 0"),
    ("Maxout", lambda: gpunet.Maxout(2), "pieces", 2.0, TypeError, r"expected pieces to be a positive int, got 2\.0 \(float\)"),
    ("Conv2D", lambda: gpunet.Conv2D(3, 2, 3), "stride", 0, ValueError, r"stride must be >= 1, got 0"),
    ("Conv2D", lambda: gpunet.Conv2D(3, 2, 3), "stride", 1.5, TypeError, r"stride must be an int or an \(h, w\) pair of ints, got 1\.5"),
    ("Conv2D", lambda: gpunet.Conv2D(3, 2, 3), "padding", (1, -1), ValueError, r"padding must be >= 0, got \(1, -1\)"),
    ("Conv2D", lambda: gpunet.Conv2D(3, 2, 3), "activation", "rleu", ValueError, r"unknown activation 'rleu'; known: "),
    ("Dense", lambda: gpunet.Dense(3, 2), "activation", 3, ValueError, r"unknown activation 3; known: "),
    ("MaxPool2D", lambda: gpunet.MaxPool2D(2), "stride", 0, ValueError, r"stride must be >= 1, got 0"),
    ("MaxPool2D", lambda: gpunet.MaxPool2D(2), "padding", 2, ValueError,
     r"padding must be at most half the kernel size \(kernel \(2, 2\)\), got padding \(2, 2\)"),
    ("AvgPool2D", lambda: gpunet.AvgPool2D(3, padding=1), "kernel_size", 1, ValueError,
     r"padding must be at most half the kernel size \(kernel \(1, 1\)\), got padding \(1, 1\)"),
    ("AvgPool2D", lambda: gpunet.AvgPool2D(2), "kernel_size", 2.0, TypeError, r"kernel_size must be an int or an \(h, w\) pair"),
]


@pytest.mark.parametrize("who,make,name,bad,exc,message", LAYER_SETTINGS,
                         ids=[f"{w}-{n}-{b!r}" for w, _, n, b, _, _ in LAYER_SETTINGS])
def test_layer_setting_assigned_a_bad_value_raises_and_keeps_the_old_one(who, make, name, bad, exc, message):
    """Before, each was stored: NaN running statistics (momentum), a ZeroDivisionError or a
    TypeError from inside the forward (pieces, stride, padding), a NaN output
    (negative_slope), an AttributeError on the string (activation), or nothing at all."""
    _assert_refused(make(), name, bad, exc, rf"^{who}: {message}")


FIXED = [
    ("Dense", lambda: gpunet.Dense(3, 2), "in_features", "the weight has shape"),
    ("Dense", lambda: gpunet.Dense(3, 2), "out_features", "the weight has shape"),
    ("Conv2D", lambda: gpunet.Conv2D(3, 2, 3), "in_channels", "the weight has shape"),
    ("Conv2D", lambda: gpunet.Conv2D(3, 2, 3), "out_channels", "the weight has shape"),
    ("Conv2D", lambda: gpunet.Conv2D(3, 2, 3), "kernel_size", "the weight has shape"),
    ("BatchNorm", lambda: gpunet.BatchNorm(3), "num_features", "gamma, beta and the running statistics"),
    ("BatchNorm", lambda: gpunet.BatchNorm(3), "affine", "gamma and beta exist only with affine=True"),
]


@pytest.mark.parametrize("who,make,name,hint", FIXED, ids=[f"{w}-{n}" for w, _, n, _ in FIXED])
def test_sizes_a_weight_was_made_from_are_read_only(who, make, name, hint):
    """``dense.in_features = 4`` was stored: the next forward then refused the 3-feature
    input it was built for, and ``out_features = 4`` was stored and ignored (the weight keeps
    2 rows); ``BatchNorm.affine = False`` left gamma and beta applied."""
    layer = make()
    before = getattr(layer, name)
    with pytest.raises(AttributeError, match=rf"^{who}: {name} cannot be assigned after construction; "
                                             rf"{re.escape(hint)}"):
        setattr(layer, name, 4 if name != "affine" else False)
    assert getattr(layer, name) == before


def _x(shape, seed=0):
    return numpy.random.default_rng(seed).standard_normal(shape).astype(numpy.float32)


def test_activation_settings_assigned_take_effect_at_the_next_forward():
    """``LeakyReLU.negative_slope``, ``ELU.alpha``, ``GELU.approximate`` and
    ``Softmax.axis`` were stored while the forward kept using the constructor's value (the
    keyword arguments were made once): the layer computed one thing and printed another."""
    x = _x((4, 5))
    for layer, name, value, same in (
            (gpunet.LeakyReLU(), "negative_slope", 0.25, gpunet.LeakyReLU(0.25)),
            (gpunet.ELU(), "alpha", 2.0, gpunet.ELU(2.0)),
            (gpunet.GELU(), "approximate", "tanh", gpunet.GELU(approximate="tanh")),
            (gpunet.Softmax(), "axis", 0, gpunet.Softmax(axis=0)),
            (gpunet.LogSoftmax(), "axis", numpy.int64(0), gpunet.LogSoftmax(axis=0))):
        setattr(layer, name, value)
        assert repr(layer) == repr(same)
        y = layer(x)
        numpy.testing.assert_array_equal(y, same(x))
        dy = _x((4, 5), 1)
        numpy.testing.assert_array_equal(layer.backward(dy), same.backward(dy))
    assert type(gpunet.LogSoftmax(axis=numpy.int64(0)).axis) is int


def test_fused_activation_assigned_takes_effect_at_the_next_forward():
    """``dense.activation = "relu"`` was stored as the string and the next forward failed
    with an AttributeError on it; now it is resolved as the argument is."""
    x = _x((4, 3))
    dense = gpunet.Dense(3, 5)
    ref = gpunet.Dense(3, 5, activation="relu")
    ref.weight.data[...] = dense.weight.data
    dense.activation = "relu"
    assert repr(dense) == repr(ref)
    numpy.testing.assert_array_equal(dense(x), ref(x))
    dense.activation = None
    assert dense(x).min() < 0
    conv = gpunet.Conv2D(2, 3, 3)
    conv.activation = gpunet.Sigmoid
    y = conv(_x((1, 2, 5, 5)))
    assert isinstance(conv.activation, gpunet.Sigmoid) and 0 < y.min() and y.max() < 1


def test_stride_and_padding_assigned_take_effect_at_the_next_forward():
    """``conv.stride = 2`` was stored as an int and the next forward failed indexing it
    (TypeError: 'int' object is not subscriptable); now it is stored as the pair the
    constructor makes, as for the pooling layers (whose three settings are checked
    together)."""
    x = _x((2, 3, 8, 8))
    conv, ref = gpunet.Conv2D(3, 4, 3), gpunet.Conv2D(3, 4, 3, stride=2, padding=(1, 0))
    ref.weight.data[...] = conv.weight.data
    conv.stride, conv.padding = 2, (numpy.int64(1), 0)
    assert conv.stride == (2, 2) and conv.padding == (1, 0) and repr(conv) == repr(ref)
    numpy.testing.assert_array_equal(conv(x), ref(x))
    pool = gpunet.MaxPool2D(2)
    pool.stride, pool.padding = 1, 1
    assert (pool.kernel_size, pool.stride, pool.padding) == ((2, 2), (1, 1), (1, 1))
    numpy.testing.assert_array_equal(pool(x), gpunet.MaxPool2D(2, stride=1, padding=1)(x))
    pool.stride = None                    # the kernel size, as in the constructor
    assert pool.stride == (2, 2)
    pool.kernel_size = 3                  # the stride stays (PyTorch keeps it too)
    assert pool(x).shape == gpunet.MaxPool2D(3, stride=2, padding=1)(x).shape


def test_dropout_and_batchnorm_settings_assigned_take_effect():
    x = _x((64, 3))
    drop = gpunet.Dropout(0.5, seed=1)
    drop.p, drop.mode = numpy.float32(0.25), "classic"
    assert type(drop.p) is float and drop.p == 0.25
    numpy.testing.assert_array_equal(drop(x), gpunet.Dropout(0.25, mode="classic", seed=1)(x))
    bn = gpunet.BatchNorm(3)
    bn.momentum = 1.0                     # the running mean becomes the batch's
    bn(x)
    numpy.testing.assert_allclose(bn.running_mean, x.mean(axis=0), rtol=1e-5, atol=1e-6)
    maxout = gpunet.Maxout(2)
    maxout.pieces = numpy.int64(3)
    assert maxout(_x((2, 6))).shape == (2, 2) and type(maxout.pieces) is int


# -- losses and schedules -----------------------------------------------------------------

LOSS_SETTINGS = [
    ("SoftmaxCrossEntropy", gpunet.SoftmaxCrossEntropy, "reduction", "avg", ValueError,
     r"expected reduction 'mean', 'sum' or 'none', got 'avg'"),
    ("MSELoss", gpunet.MSELoss, "reduction", None, ValueError, r"expected reduction 'mean', 'sum' or 'none', got None"),
    ("BCEWithLogits", gpunet.BCEWithLogits, "reduction", 3, ValueError, r"expected reduction 'mean', 'sum' or 'none', got 3"),
    ("SoftmaxCrossEntropy", gpunet.SoftmaxCrossEntropy, "label_smoothing", 1.5, ValueError,
     r"label_smoothing must lie in \[0, 1\], got 1\.5"),
    ("SoftmaxCrossEntropy", gpunet.SoftmaxCrossEntropy, "label_smoothing", math.nan, ValueError,
     r"label_smoothing must lie in \[0, 1\], got nan"),
    ("SoftmaxCrossEntropy", gpunet.SoftmaxCrossEntropy, "ignore_index", "1", TypeError,
     r"expected ignore_index to be None or an int, got '1' \(str\)"),
    ("SoftmaxCrossEntropy", gpunet.SoftmaxCrossEntropy, "ignore_index", 1.0, TypeError,
     r"expected ignore_index to be None or an int, got 1\.0 \(float\)"),
]


@pytest.mark.parametrize("who,make,name,bad,exc,message", LOSS_SETTINGS,
                         ids=[f"{w}-{n}-{b!r}" for w, _, n, b, _, _ in LOSS_SETTINGS])
def test_loss_setting_assigned_a_bad_value_raises_naming_the_loss(who, make, name, bad, exc, message):
    """Stored before, and the next call failed in gpunet.functional's check, naming the
    function (``softmax_cross_entropy: ...``) rather than the loss and the assignment."""
    _assert_refused(make(), name, bad, exc, rf"^{who}: {message}$")


def test_loss_settings_assigned_take_effect_at_the_next_call():
    logits, labels = _x((4, 3)), numpy.array([0, 1, 2, 1])
    loss = gpunet.SoftmaxCrossEntropy()
    loss.reduction, loss.label_smoothing, loss.ignore_index = "sum", numpy.float32(0.25), numpy.int64(1)
    assert type(loss.label_smoothing) is float and type(loss.ignore_index) is int
    ref = gpunet.SoftmaxCrossEntropy(label_smoothing=0.25, ignore_index=1, reduction="sum")
    numpy.testing.assert_array_equal(loss(logits, labels), ref(logits, labels))
    numpy.testing.assert_array_equal(loss.backward(), ref.backward())


def _sgd():
    return optim.SGD(gpunet.Dense(3, 2), lr=0.1)


SCHEDULE_SETTINGS = [
    ("StepLR", lambda: optim.StepLR(_sgd(), 2), "gamma", -1, ValueError, r"expected gamma > 0, got -1"),
    ("StepLR", lambda: optim.StepLR(_sgd(), 2), "gamma", "0.1", TypeError, r"expected gamma to be a real number, got '0\.1' \(str\)"),
    ("StepLR", lambda: optim.StepLR(_sgd(), 2), "step_size", 0, ValueError, r"expected step_size to be a positive int, got 0"),
    ("StepLR", lambda: optim.StepLR(_sgd(), 2), "step_size", 1.5, TypeError, r"expected step_size to be a positive int, got 1\.5 \(float\)"),
    ("StepLR", lambda: optim.StepLR(_sgd(), 2), "base_lr", -0.1, ValueError, r"expected base_lr >= 0, got -0\.1"),
    ("StepLR", lambda: optim.StepLR(_sgd(), 2), "last_epoch", -1, ValueError, r"expected last_epoch to be an int >= 0, got -1"),
    ("ExponentialLR", lambda: optim.ExponentialLR(_sgd(), 0.9), "gamma", math.nan, ValueError, r"expected gamma > 0, got nan"),
    ("CosineAnnealingLR", lambda: optim.CosineAnnealingLR(_sgd(), 5), "T_max", 0, ValueError, r"expected T_max to be a positive int, got 0"),
    ("CosineAnnealingLR", lambda: optim.CosineAnnealingLR(_sgd(), 5), "eta_min", -1, ValueError, r"expected eta_min >= 0, got -1"),
    ("LinearWarmup", lambda: optim.LinearWarmup(_sgd(), 5), "warmup_steps", 2.5, TypeError,
     r"expected warmup_steps to be an int >= 0, got 2\.5 \(float\)"),
    ("LinearWarmup", lambda: optim.LinearWarmup(_sgd(), 5), "start_factor", 2, ValueError, r"expected start_factor in \(0, 1\], got 2"),
    ("ReduceLROnPlateau", lambda: optim.ReduceLROnPlateau(_sgd()), "mode", "maximize", ValueError,
     r"expected mode to be 'min' or 'max', got 'maximize'"),
    ("ReduceLROnPlateau", lambda: optim.ReduceLROnPlateau(_sgd()), "factor", 2.0, ValueError, r"expected factor in \[0, 1\), got 2\.0"),
    ("ReduceLROnPlateau", lambda: optim.ReduceLROnPlateau(_sgd()), "patience", 1.5, TypeError,
     r"expected patience to be an int >= 0, got 1\.5 \(float\)"),
    ("ReduceLROnPlateau", lambda: optim.ReduceLROnPlateau(_sgd()), "threshold_mode", "relative", ValueError,
     r"expected threshold_mode to be 'rel' or 'abs', got 'relative'"),
    ("ReduceLROnPlateau", lambda: optim.ReduceLROnPlateau(_sgd()), "cooldown", -1, ValueError,
     r"expected cooldown to be an int >= 0, got -1"),
    ("ReduceLROnPlateau", lambda: optim.ReduceLROnPlateau(_sgd()), "min_lr", "0", TypeError,
     r"expected min_lr to be a real number, got '0' \(str\)"),
    ("ReduceLROnPlateau", lambda: optim.ReduceLROnPlateau(_sgd()), "num_bad_epochs", -1, ValueError,
     r"expected num_bad_epochs to be an int >= 0, got -1"),
    ("ReduceLROnPlateau", lambda: optim.ReduceLROnPlateau(_sgd()), "best", math.nan, ValueError,
     r"expected best to be a number, got nan"),
    ("ReduceLROnPlateau", lambda: optim.ReduceLROnPlateau(_sgd()), "monitor", 3, TypeError,
     r"expected monitor to be None or the name of a logged value \('loss', 'accuracy', 'val_loss', "
     r"'val_accuracy'\), got 3 \(int\)"),
]


@pytest.mark.parametrize("who,make,name,bad,exc,message", SCHEDULE_SETTINGS,
                         ids=[f"{w}-{n}-{b!r}" for w, _, n, b, _, _ in SCHEDULE_SETTINGS])
def test_schedule_setting_assigned_a_bad_value_raises_and_keeps_the_old_one(who, make, name, bad, exc, message):
    """Before, each was stored: ``gamma = -1`` gave negative rates, NaN NaN rates,
    ``factor = 2.0`` raised the rate on a plateau, ``mode = "maximize"`` was read as "max",
    ``step_size = 0``/``T_max = 0`` a ZeroDivisionError at the next step, a string a
    TypeError there, ``num_bad_epochs = -1`` delayed the next reduction."""
    _assert_refused(make(), name, bad, exc, rf"^{who}: {message}$")


def test_schedule_settings_assigned_take_effect_at_the_next_step():
    sched = optim.StepLR(_sgd(), 2, gamma=0.5)
    sched.gamma, sched.step_size = numpy.float32(0.25), numpy.int64(1)
    assert type(sched.gamma) is float and type(sched.step_size) is int
    assert sched.step() == pytest.approx(0.1 * 0.25) and sched.optimizer.lr == pytest.approx(0.025)
    restored = optim.StepLR(_sgd(), 3).load_state_dict(sched.state_dict())
    assert (restored.gamma, restored.step_size, restored.last_epoch) == (0.25, 1, 1)
    plateau = optim.ReduceLROnPlateau(_sgd(), patience=5)
    plateau.patience, plateau.factor = 0, 0.5
    plateau.step(1.0)
    assert plateau.step(1.0) == pytest.approx(0.05)


# -- Trainer, callbacks, gpunet.amp, gpunet.distributed ------------------------------------

def _trainer(**kw):
    net = gpunet.Sequential(gpunet.Dense(4, 8, activation="relu"), gpunet.Dense(8, 3))
    return gpunet.Trainer(net, gpunet.SoftmaxCrossEntropy(), optim.SGD(net.parameters(), lr=0.1), **kw)


def _data(n=32):
    return _x((n, 4)), numpy.arange(n) % 3


def _other_schedule():
    return optim.StepLR(optim.SGD(gpunet.Dense(4, 3).parameters(), lr=0.1), 1)


TRAINER_SETTINGS = [
    # stored before, and then: a TypeError inside fit, a metric silently dropped, a schedule
    # never stepped, a scaler or a comm failing inside a step
    ("metrics", ("f1",), ValueError, r"unknown metric 'f1'; known metrics: 'accuracy'"),
    ("metrics", 3, TypeError, r"expected metrics to be a tuple of metric names such as \('accuracy',\), got int"),
    ("clip_grad_norm", 0.0, ValueError, r"expected clip_grad_norm > 0, got 0\.0"),
    ("clip_grad_norm", "1", TypeError, r"expected clip_grad_norm to be a real number, got '1' \(str\)"),
    ("clip_grad_value", math.nan, ValueError, r"expected clip_grad_value > 0, got nan"),
    ("scheduler_interval", "batch", ValueError, r"expected scheduler_interval 'epoch' or 'step', got 'batch'"),
    ("scheduler", "step", TypeError, r"expected scheduler to be a learning-rate schedule from gpunet\.optim "
                                     r"\(StepLR, …\), got str"),
    ("scaler", gpunet.amp.GradScaler(), ValueError, r"a loss scaler is for precision='fp16'"),
    ("cuda_graph", "yes", TypeError, r"expected cuda_graph to be a bool, got 'yes'"),
    ("cuda_graph", True, ValueError, r"cuda_graph=True needs a 'cuda' or 'sim' model, got one on 'cpu'"),
    ("comm", 3, TypeError, r"expected comm to be None or a gpunet\.distributed communicator "
                           r"\(gpunet\.distributed\.init\(\)\), got 3 \(int\)"),
    ("loss_fn", gpunet.MSELoss, TypeError, r"expected loss_fn to be an object, got the class MSELoss; "
                                           r"create one: MSELoss\(\)"),
    ("loss_fn", "mse", TypeError, r"expected loss_fn to be a loss object with backward\(\)"),
]


@pytest.mark.parametrize("name,bad,exc,message", TRAINER_SETTINGS,
                         ids=[f"{n}-{b!r}" for n, b, _, _ in TRAINER_SETTINGS])
def test_trainer_setting_assigned_a_bad_value_raises_and_keeps_the_old_one(name, bad, exc, message):
    _assert_refused(_trainer(), name, bad, exc, rf"^Trainer: {message}")


def test_trainer_cross_checks_hold_on_assignment():
    t = _trainer(clip_grad_norm=1.0)
    with pytest.raises(ValueError, match=r"^Trainer: pass clip_grad_norm or clip_grad_value, not both; "
                                         r"set clip_grad_norm to None first$"):
        t.clip_grad_value = 0.5
    t.clip_grad_norm, t.clip_grad_value = None, numpy.float32(0.5)
    assert t.clip_grad_value == 0.5 and type(t.clip_grad_value) is float
    with pytest.raises(ValueError, match=r"^Trainer: the scheduler StepLR schedules another optimizer"):
        t.scheduler = _other_schedule()
    t.scheduler = optim.ReduceLROnPlateau(t.optimizer)
    with pytest.raises(ValueError, match=r"^Trainer: ReduceLROnPlateau is stepped once per epoch"):
        t.scheduler_interval = "step"
    assert t.scheduler_interval == "epoch"


@pytest.mark.parametrize("name,hint", [("model", "create a new Trainer"), ("optimizer", "create a new Trainer"),
                                       ("precision", "the float16 copies"), ("device", "the model")])
def test_trainer_parts_things_were_built_from_are_read_only(name, hint):
    """``trainer.precision = "fp16"`` was stored and training went on in float32;
    ``device = "sim"`` moved the data and not the model; ``model``/``optimizer`` left the
    scheduler, the float16 copies and the comm check on the old ones."""
    t = _trainer()
    before = getattr(t, name)
    with pytest.raises(AttributeError, match=rf"^Trainer: {name} cannot be assigned after construction; "
                                             rf"{re.escape(hint)}"):
        setattr(t, name, {"precision": "fp16", "device": "sim"}.get(name, None))
    assert getattr(t, name) is before


def test_trainer_settings_assigned_take_effect_in_the_next_fit():
    """``metrics = "acc"`` was stored as the string; it is normalized as the argument is. A
    metric removed leaves the history, a schedule assigned is stepped, a new loss used."""
    t = _trainer()
    t.metrics = None
    h = t.fit(_data(), epochs=1, batch_size=8, progress=False)
    assert "accuracy" not in h.history and t.metrics == ()
    t.metrics = "acc"
    assert t.metrics == ("accuracy",)
    t.scheduler = optim.StepLR(t.optimizer, 1, gamma=0.5)
    t.loss_fn = gpunet.SoftmaxCrossEntropy(label_smoothing=0.5)
    h = t.fit(_data(), epochs=2, batch_size=8, progress=False)
    assert "accuracy" in h.history and t.optimizer.lr == pytest.approx(0.025)
    t.comm = None                        # None is fine: no data parallelism


def test_checkpoint_path_amp_and_distributed_optimizer_on_assignment():
    """``ModelCheckpoint.path = 3`` failed only at the first save, after an epoch;
    ``MixedPrecision.dtype = float32`` ran "mixed" precision in float32; a
    DistributedOptimizer's ``bucket_mb``/``comm`` were stored and ignored (the buckets were
    cut already) and ``compression = "fp32"`` was taken."""
    cb = gpunet.ModelCheckpoint("c.npz")
    with pytest.raises(TypeError, match=r"^ModelCheckpoint: expected path to be a str or os\.PathLike, got int$"):
        cb.path = 3
    assert cb.path == "c.npz"
    mp = gpunet.amp.MixedPrecision(gpunet.Dense(2, 2))
    for name in ("model", "dtype"):
        with pytest.raises(AttributeError, match=rf"^MixedPrecision: {name} cannot be assigned after construction"):
            setattr(mp, name, numpy.dtype("float32"))
    assert mp.dtype == numpy.float16
    from gpunet.distributed import DistributedOptimizer
    opt = DistributedOptimizer(_sgd(), _Comm(0, 1))
    with pytest.raises(ValueError, match=r"^DistributedOptimizer: expected compression None or 'fp16', got 'fp32'$"):
        opt.compression = "fp32"
    for name in ("comm", "bucket_mb"):
        with pytest.raises(AttributeError, match=rf"^DistributedOptimizer: {name} cannot be assigned after "
                                                 rf"construction; .*DistributedOptimizer\(optimizer, comm"):
            setattr(opt, name, 1.0)
    opt.compression = "fp16"
    assert opt.compression == "fp16" and opt.bucket_mb == 4.0


class _Comm(_World):
    """A world of one with the collective DistributedOptimizer asks for."""

    def iallreduce(self, array, op):
        raise AssertionError("a world of one reduces nothing")


@pytest.mark.parametrize("name", ["rank", "size", "local_rank", "local_size", "device", "backend", "mpi"])
def test_communicator_attributes_are_read_only(name):
    """``comm.size = 2`` in a world of one was stored: a DataLoader over it then served half
    the data (rank 0's share of two) and nothing complained."""
    from gpunet.distributed import Communicator
    comm = Communicator()
    before = getattr(comm, name)
    with pytest.raises(AttributeError, match=rf"^Communicator: {name} cannot be assigned after construction; "
                                             r"they describe the processes mpirun started"):
        setattr(comm, name, 2)
    assert getattr(comm, name) == before
    assert len(gpunet.DataLoader(*_xy(10), batch_size=5, comm=comm)) == 2


@pytest.mark.parametrize("who,make", [("EarlyStopping", lambda: gpunet.EarlyStopping(monitor="loss")),
                                      ("ModelCheckpoint", lambda: gpunet.ModelCheckpoint("c.npz", monitor="loss"))])
def test_callback_best_is_checked_on_assignment(who, make):
    """``best = "0.5"`` was stored and the epoch's comparison failed with a TypeError
    between str and float; ``best = nan`` made every later epoch a non-improvement."""
    cb = make()
    for bad, exc, message in (("0.5", TypeError, r"to be None or a real number, got '0\.5' \(str\)"),
                              (math.nan, ValueError, r"to be a number, got nan")):
        with pytest.raises(exc, match=rf"^{who}: expected best {message}$"):
            cb.best = bad
    cb.best = numpy.float32(0.5)
    assert type(cb.best) is float and cb.best == 0.5
    cb.best = None
    assert cb.best is None


def test_optimizer_params_are_read_only():
    """``opt.params = other.parameters()`` was stored: the next step applied the old
    parameters' momentum to the new ones, and failed broadcasting (2, 3) against (4, 3)."""
    from gpunet.distributed import DistributedOptimizer
    first, other = gpunet.Dense(3, 2), gpunet.Dense(3, 4)
    for opt, who in ((optim.SGD(first.parameters(), lr=0.1, momentum=0.9), "SGD"),
                     (DistributedOptimizer(optim.Adam(first.parameters()), _Comm(0, 1)), "Adam")):
        before = opt.params
        with pytest.raises(AttributeError, match=rf"^{who}: params cannot be assigned after construction; "
                                                 r"the state and the step counts were made for them; create "
                                                 r"a new optimizer over the parameters you want$"):
            opt.params = other.parameters()
        assert opt.params is before or opt.params == before


def test_residual_block_is_checked_on_assignment_and_keeps_its_state_dict_names():
    """``res.block = 3`` was stored and the next forward failed on ``3.forward``. A layer
    held through a checked property keeps its name in ``named_children``/``state_dict``."""
    res = gpunet.Residual(gpunet.Sequential(gpunet.Dense(3, 3)))
    with pytest.raises(TypeError, match=r"^Residual: block must be a Layer, got int$"):
        res.block = 3
    assert list(res.state_dict()) == ["block.0.weight", "block.0.bias"]
    res.block = gpunet.Dense(3, 3, activation="tanh")
    assert list(res.state_dict()) == ["block.weight", "block.bias"]
    assert [k for k, _ in res.block.named_children()] == ["activation"]
    x = _x((2, 3))
    numpy.testing.assert_allclose(res(x), x + res.block(x))
