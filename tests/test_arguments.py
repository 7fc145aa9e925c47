"""Arguments of the public constructors and functions: a flag, a count, a rate or a name of
the wrong type or out of range raises ``TypeError``/``ValueError`` naming the class or
function, the argument, what was expected and what was given; NumPy scalars count as what
they hold. Flags used to be taken by truthiness (``DataLoader(drop_last="no")`` dropped
data), rates took ``True`` as 1.0 and ``inf`` as a rate."""
import math
import re

import numpy
import pytest

import gpunet
from gpunet import amp, optim


def _xy(n=10):
    return numpy.zeros((n, 3), numpy.float32), numpy.zeros(n, numpy.int64)


def _dense():
    return gpunet.Dense(3, 2)


def _opt():
    return optim.SGD(_dense(), lr=0.1)


# -- flags: a bool or numpy.bool_, never truthiness ---------------------------------------

FLAGS = [
    ("DataLoader", "shuffle", lambda v: gpunet.DataLoader(*_xy(), shuffle=v)),
    ("DataLoader", "drop_last", lambda v: gpunet.DataLoader(*_xy(), drop_last=v)),
    ("Dense", "bias", lambda v: gpunet.Dense(3, 2, bias=v)),
    ("Conv2D", "bias", lambda v: gpunet.Conv2D(1, 2, 3, bias=v)),
    ("BatchNorm", "affine", lambda v: gpunet.BatchNorm(3, affine=v)),
    ("SGD", "nesterov", lambda v: optim.SGD(_dense(), momentum=0.9, nesterov=v)),
    ("GradScaler", "enabled", lambda v: amp.GradScaler(enabled=v)),
    ("Dense.load_state_dict", "strict", lambda v: _dense().load_state_dict(_dense().state_dict(), strict=v)),
    # public attributes users assign: checked in the setter
    ("Dense", "input_grad", lambda v: setattr(_dense(), "input_grad", v)),
    ("Conv2D", "input_grad", lambda v: setattr(gpunet.Conv2D(1, 2, 3), "input_grad", v)),
    ("DataLoader", "shuffle", lambda v: setattr(gpunet.DataLoader(*_xy()), "shuffle", v)),
    ("DataLoader", "drop_last", lambda v: setattr(gpunet.DataLoader(*_xy()), "drop_last", v)),
    ("SGD", "nesterov", lambda v: setattr(optim.SGD(_dense(), momentum=0.9), "nesterov", v)),
    ("GradScaler", "enabled", lambda v: setattr(amp.GradScaler(), "enabled", v)),
    ("ModelCheckpoint", "save_best_only", lambda v: setattr(gpunet.ModelCheckpoint("c.npz"), "save_best_only", v)),
    ("EarlyStopping", "restore_best", lambda v: setattr(gpunet.EarlyStopping(), "restore_best", v)),
    ("Dense", "training", lambda v: setattr(_dense(), "training", v)),
    ("Sequential", "training", lambda v: setattr(gpunet.Sequential(_dense()), "training", v)),
]


@pytest.mark.parametrize("who,name,make", FLAGS, ids=[f"{w}-{n}" for w, n, _ in FLAGS])
@pytest.mark.parametrize("bad", ["no", "False", 0, 1, None, 1.0])
def test_flag_of_another_type_raises_naming_it(who, name, make, bad):
    shown = "None" if bad is None else f"{bad!r} ({type(bad).__name__})"
    with pytest.raises(TypeError, match="^" + re.escape(f"{who}: expected {name} to be a bool "
                                                        f"(True or False), got {shown}") + "$"):
        make(bad)


@pytest.mark.parametrize("who,name,make", FLAGS, ids=[f"{w}-{n}" for w, n, _ in FLAGS])
def test_flag_takes_bools_and_numpy_bools(who, name, make):
    for v in (True, False, numpy.True_, numpy.False_):
        make(v)


def test_drop_last_and_shuffle_mean_what_they_say():
    """The bug that started this: drop_last="no" was truthy and dropped the last batch."""
    X, y = _xy(10)
    assert len(gpunet.DataLoader(X, y, batch_size=4, drop_last=numpy.False_)) == 3
    assert len(gpunet.DataLoader(X, y, batch_size=4, drop_last=numpy.True_)) == 2
    loader = gpunet.DataLoader(X, y, batch_size=4, shuffle=numpy.bool_(True), seed=0)
    assert loader.shuffle is True and loader.drop_last is False
    assert gpunet.Dense(3, 2, bias=numpy.False_).bias is None
    assert optim.SGD(_dense(), momentum=0.9, nesterov=numpy.True_).nesterov is True
    assert amp.GradScaler(enabled=numpy.False_).enabled is False


def test_input_grad_assigned_means_what_it_says():
    """``input_grad = "no"`` was stored and read by truthiness (the input gradient was
    computed); now it raises, and a NumPy bool is stored as a bool that backward obeys."""
    x = numpy.ones((4, 3), numpy.float32)
    for layer, x in ((_dense(), x), (gpunet.Conv2D(1, 2, 3), numpy.ones((2, 1, 5, 5), numpy.float32))):
        assert layer.input_grad is True
        with pytest.raises(TypeError):
            layer.input_grad = "no"
        assert layer.input_grad is True
        dy = numpy.ones_like(layer(x))
        assert layer.backward(dy).shape == x.shape
        layer.input_grad = numpy.False_
        assert layer.input_grad is False and "input_grad=False" in repr(layer)
        layer(x)
        assert layer.backward(dy) is None


def test_loader_flags_assigned_mean_what_they_say():
    """``loader.drop_last = "no"`` was stored and read by truthiness (the last batch was
    dropped); a NumPy bool assigned is stored as a bool."""
    loader = gpunet.DataLoader(*_xy(10), batch_size=4)
    with pytest.raises(TypeError):
        loader.drop_last = "no"
    assert loader.drop_last is False and len(loader) == 3
    loader.drop_last, loader.shuffle = numpy.True_, numpy.False_
    assert loader.drop_last is True and loader.shuffle is False and len(loader) == 2


def test_attributes_assigned_after_construction_mean_what_they_say():
    """Checked in the constructor, then assigned unchecked and read by truthiness or used as
    given: ``nesterov="no"`` ran Nesterov momentum, ``momentum="0.9"`` went through
    ``float()``, ``enabled="no"`` scaled, ``save_best_only="no"`` saved the best only,
    ``training="no"`` left dropout on, ``mode="maximize"`` maximized, ``batch_size=2.5``
    and ``seed=1.5`` failed inside ``len``/NumPy, ``AdamW.l1`` was stored and never used.
    Now each raises and leaves the attribute as it was; right values are stored as Python
    values."""
    opt = optim.SGD(_dense(), lr=0.1, momentum=0.9)
    for name, bad in (("nesterov", "no"), ("momentum", "0.9"), ("momentum", True), ("weight_decay", math.nan)):
        with pytest.raises((TypeError, ValueError), match=f"^SGD: expected {name}"):
            setattr(opt, name, bad)
    assert opt.nesterov is False and opt.momentum == 0.9 and opt.weight_decay == 0.0
    opt.nesterov = numpy.True_
    assert opt.nesterov is True
    with pytest.raises(ValueError, match=r"^SGD: expected momentum > 0 with nesterov=True, got momentum=0\.0$"):
        opt.momentum = 0                 # the constructor's cross-check: nesterov first
    opt.nesterov, opt.momentum = False, numpy.float32(0.0)
    assert type(opt.momentum) is float and opt.momentum == 0.0
    with pytest.raises(AttributeError, match=r"^AdamW has no hyper-parameter 'l1'; its hyper-parameters "
                                             r"are lr, betas, eps, weight_decay$"):
        optim.AdamW(_dense()).l1 = 0.1
    adam = optim.Adam(_dense())
    with pytest.raises(TypeError, match=r"^Adam: expected betas to be a pair"):
        adam.betas = 0.9
    adam.betas = (numpy.float32(0.5), 0.75)
    assert adam.betas == (0.5, 0.75) and optim.Adam(_dense()).load_state_dict(adam.state_dict()).betas == (0.5, 0.75)

    scaler = amp.GradScaler()
    with pytest.raises(TypeError):
        scaler.enabled = "no"
    assert scaler.enabled is True
    cb = gpunet.ModelCheckpoint("c.npz")
    with pytest.raises(TypeError):
        cb.save_best_only = "no"
    with pytest.raises(ValueError, match=r"^ModelCheckpoint: expected mode to be 'auto', 'min' or 'max', got 'maximize'$"):
        cb.mode = "maximize"
    with pytest.raises(TypeError, match=r"^ModelCheckpoint: expected monitor to be the name of a logged value"):
        cb.monitor = 3
    assert cb.save_best_only is True and cb.monitor == "val_loss" and cb.mode == "min"
    cb.monitor = "val_accuracy"            # mode "auto" follows the monitor, as in the constructor
    assert cb.mode == "max"
    stop = gpunet.EarlyStopping(monitor="val_loss", mode="min")
    stop.monitor = "val_accuracy"          # a mode given stays
    assert stop.mode == "min"

    net = gpunet.Sequential(_dense(), gpunet.Dropout(0.5))
    with pytest.raises(TypeError, match=r"^Dropout: expected training to be a bool \(True or False\), got 'no' \(str\)$"):
        net[1].training = "no"
    net.eval()
    assert net.training is False and net[1].training is False
    x = numpy.ones((4, 3), numpy.float32)
    numpy.testing.assert_array_equal(net(x), net[0](x))       # eval: dropout is the identity

    loader = gpunet.DataLoader(*_xy(10), batch_size=4, shuffle=True, seed=0)
    for name, bad in (("batch_size", 2.5), ("batch_size", 0), ("seed", 1.5), ("seed", -1), ("epoch", "1")):
        with pytest.raises((TypeError, ValueError), match=f"^DataLoader: expected {name} to be "):
            setattr(loader, name, bad)
    assert (loader.batch_size, loader.seed, loader.epoch, len(loader)) == (4, 0, 0, 3)
    loader.batch_size, loader.seed = numpy.int64(5), numpy.uint16(1)
    assert type(loader.batch_size) is int and type(loader.seed) is int and len(loader) == 2
    assert [len(xb) for xb, _ in loader] == [5, 5]
    with pytest.raises(ValueError, match=r"^DataLoader: unknown device 'gpu'"):
        loader.device = "gpu"
    loader.device = "cpu"
    assert loader.device == "cpu" and loader.to(None).device is None


def test_a_wrong_type_is_a_type_error_and_a_value_error():
    """Earlier checks raised ValueError for a wrong type (DataLoader's batch_size="8", as
    PyTorch's DataLoader does); the shared checks raise a TypeError that is a ValueError too."""
    from gpunet._args import ArgumentTypeError
    with pytest.raises(ArgumentTypeError) as e:
        gpunet.DataLoader(*_xy(), drop_last="no")
    assert isinstance(e.value, TypeError) and isinstance(e.value, ValueError)


# -- rates: real numbers, never a bool, a string, NaN or inf ------------------------------

RATES = [
    ("SGD", "lr", lambda v: optim.SGD(_dense(), lr=v)),
    ("SGD", "momentum", lambda v: optim.SGD(_dense(), momentum=v)),
    ("SGD", "weight_decay", lambda v: optim.SGD(_dense(), weight_decay=v)),
    ("SGD", "l1", lambda v: optim.SGD(_dense(), l1=v)),
    ("Adam", "lr", lambda v: optim.Adam(_dense(), lr=v)),
    ("Adam", "eps", lambda v: optim.Adam(_dense(), eps=v)),
    ("Adam", "l1", lambda v: optim.Adam(_dense(), l1=v)),
    ("AdamW", "weight_decay", lambda v: optim.AdamW(_dense(), weight_decay=v)),
    ("RMSProp", "momentum", lambda v: optim.RMSProp(_dense(), momentum=v)),
    ("AdaGrad", "lr", lambda v: optim.AdaGrad(_dense(), lr=v)),
    ("AdaGrad", "eps", lambda v: optim.AdaGrad(_dense(), eps=v)),
    ("StepLR", "gamma", lambda v: optim.StepLR(_opt(), 2, gamma=v)),
    ("ExponentialLR", "gamma", lambda v: optim.ExponentialLR(_opt(), v)),
    ("CosineAnnealingLR", "eta_min", lambda v: optim.CosineAnnealingLR(_opt(), 5, eta_min=v)),
    ("BatchNorm", "eps", lambda v: gpunet.BatchNorm(3, eps=v)),
    ("GradScaler", "init_scale", lambda v: amp.GradScaler(init_scale=v)),
    ("GradScaler", "growth_factor", lambda v: amp.GradScaler(growth_factor=v)),
    ("GradScaler.update", "new_scale", lambda v: amp.GradScaler().update(v)),
    # assigned after construction: checked as the argument is (float() took "0.9" and True)
    ("SGD", "momentum", lambda v: _assigned(optim.SGD(_dense()), "momentum", v)),
    ("SGD", "weight_decay", lambda v: _assigned(optim.SGD(_dense()), "weight_decay", v)),
    ("SGD", "l1", lambda v: _assigned(optim.SGD(_dense()), "l1", v)),
    ("Adam", "eps", lambda v: _assigned(optim.Adam(_dense()), "eps", v)),
    ("Adam", "l1", lambda v: _assigned(optim.Adam(_dense()), "l1", v)),
    ("AdamW", "weight_decay", lambda v: _assigned(optim.AdamW(_dense()), "weight_decay", v)),
    ("RMSProp", "momentum", lambda v: _assigned(optim.RMSProp(_dense()), "momentum", v)),
    ("RMSProp", "eps", lambda v: _assigned(optim.RMSProp(_dense()), "eps", v)),
    ("AdaGrad", "eps", lambda v: _assigned(optim.AdaGrad(_dense()), "eps", v)),
    ("GradScaler", "growth_factor", lambda v: _assigned(amp.GradScaler(), "growth_factor", v)),
    ("EarlyStopping", "min_delta", lambda v: _assigned(gpunet.EarlyStopping(), "min_delta", v)),
]


def _assigned(obj, name, value):
    setattr(obj, name, value)
    return obj


@pytest.mark.parametrize("who,name,make", RATES, ids=[f"{w}-{n}" for w, n, _ in RATES])
def test_rate_of_another_type_raises_naming_it(who, name, make):
    for bad, shown in ((True, r"True \(bool\)"), ("0.1", r"'0.1' \(str\)"), (None, "None")):
        if bad is None and name == "new_scale":
            continue          # update(None) is the ordinary update
        with pytest.raises(TypeError, match=rf"^{who}: expected {name} to be a real number, got {shown}$"):
            make(bad)


@pytest.mark.parametrize("who,name,make", RATES, ids=[f"{w}-{n}" for w, n, _ in RATES])
def test_rate_nan_inf_and_negative_raise_naming_it(who, name, make):
    with pytest.raises(ValueError, match=rf"^{who}: expected {name} to be finite, got inf$"):
        make(math.inf)
    for bad in (math.nan, -1.0, -math.inf):
        with pytest.raises(ValueError, match=rf"^{who}: expected {name} (>=?|in) .*, got {bad!r}$"):
            make(bad)


@pytest.mark.parametrize("who,name,make", RATES, ids=[f"{w}-{n}" for w, n, _ in RATES])
def test_rate_takes_numpy_scalars_as_python_floats(who, name, make):
    obj = make(numpy.float32(1.5) if name in ("growth_factor", "init_scale", "new_scale") else numpy.float32(0.25))
    if obj is not None and name not in ("init_scale",):
        value = getattr(obj, name)
        assert type(value) is float


def test_lr_reassigned_to_inf_or_a_bool_is_refused_at_the_step():
    opt = _opt()
    p = opt.params[0]
    p.grad = numpy.ones_like(p.data)
    before = p.data.copy()
    for bad, exc in ((math.inf, ValueError), (True, TypeError)):
        opt.lr = bad
        with pytest.raises(exc, match="SGD: expected lr"):
            opt.step()
    numpy.testing.assert_array_equal(p.data, before)


def test_clipping_thresholds_take_inf_as_no_limit():
    """max_norm/clip are thresholds, not rates: inf means no clipping (as in PyTorch)."""
    d = _dense()
    d.weight.grad = numpy.full(d.weight.shape, 3.0, numpy.float32)
    assert optim.clip_grad_norm(d, math.inf) == pytest.approx(math.sqrt(6 * 9.0))
    optim.clip_grad_value(d, math.inf)
    numpy.testing.assert_array_equal(d.weight.grad, 3.0)
    for fn, name in ((optim.clip_grad_norm, "max_norm"), (optim.clip_grad_value, "clip")):
        with pytest.raises(TypeError, match=rf"^{fn.__name__}: expected {name} to be a real number, got True"):
            fn(d, True)
        with pytest.raises(ValueError, match=rf"^{fn.__name__}: expected {name} >= 0, got nan"):
            fn(d, math.nan)


def test_label_smoothing_takes_a_numpy_scalar():
    """numpy.float32(0.1) was refused as "an array of shape ()" (data given to a setting)."""
    loss = gpunet.SoftmaxCrossEntropy(label_smoothing=numpy.float32(0.25))
    assert type(loss.label_smoothing) is float and loss.label_smoothing == 0.25
    with pytest.raises(TypeError, match="an array of shape"):
        gpunet.SoftmaxCrossEntropy(numpy.zeros((2, 3)))


# -- counts: ints (NumPy integers too), never a float or a bool ---------------------------

@pytest.mark.parametrize("make,message", [
    (lambda: gpunet.Conv2D(1, 2, 3.0), r"^Conv2D: kernel_size must be an int or an \(h, w\) pair of ints, got 3\.0$"),
    (lambda: gpunet.Conv2D(1, 2, (3.0, 3)), r"^Conv2D: kernel_size must be an int .*got \(3\.0, 3\)$"),
    (lambda: gpunet.Conv2D(1, 2, 3, stride=(1, True)), r"^Conv2D: stride must be an int .*got \(1, True\)$"),
    (lambda: gpunet.MaxPool2D(2.0), r"^MaxPool2D: kernel_size must be an int .*got 2\.0$"),
    (lambda: gpunet.AvgPool2D(2, padding=numpy.float64(1.0)), r"^AvgPool2D: padding must be an int"),
    (lambda: gpunet.DataLoader(*_xy(), batch_size=2.0), r"^DataLoader: expected batch_size to be a positive int, got 2\.0 \(float\)$"),
    (lambda: amp.GradScaler(growth_interval=numpy.float64(10)), r"^GradScaler: expected growth_interval to be a positive int"),
    (lambda: gpunet.DataLoader(*_xy()).set_epoch(True), r"^DataLoader.set_epoch: expected epoch to be an int >= 0, got True \(bool\)$"),
    (lambda: setattr(gpunet.DataLoader(*_xy()), "batch_size", 2.0), r"^DataLoader: expected batch_size to be a positive int, got 2\.0 \(float\)$"),
    (lambda: setattr(gpunet.DataLoader(*_xy()), "batch_size", "8"), r"^DataLoader: expected batch_size to be a positive int, got '8' \(str\)$"),
    (lambda: setattr(amp.GradScaler(), "growth_interval", 10.0), r"^GradScaler: expected growth_interval to be a positive int, got 10\.0"),
])
def test_count_of_another_type_raises_type_error(make, message):
    with pytest.raises(TypeError, match=message):
        make()


def test_counts_take_numpy_integers():
    conv = gpunet.Conv2D(numpy.int32(1), numpy.int64(2), (numpy.int64(3), 3), stride=numpy.int8(1))
    assert conv.kernel_size == (3, 3) and all(type(k) is int for k in conv.kernel_size + conv.stride)
    loader = gpunet.DataLoader(*_xy(), batch_size=numpy.int64(4), seed=numpy.uint8(3))
    assert type(loader.batch_size) is int and type(loader.seed) is int
    assert amp.GradScaler(growth_interval=numpy.int64(5)).growth_interval == 5


# -- names and devices --------------------------------------------------------------------

def test_mixed_precision_dtype_error_names_the_class():
    with pytest.raises(TypeError, match=r"^MixedPrecision: expected dtype to be float16 .*got 3$"):
        amp.MixedPrecision(_dense(), dtype=3)


@pytest.mark.parametrize("who,call", [
    ("DataLoader", lambda d: gpunet.DataLoader(*_xy(), device=d)),
    ("DataLoader", lambda d: gpunet.DataLoader(*_xy()).to(d)),
    ("Dense.to", lambda d: _dense().to(d)),
    ("to_device", lambda d: gpunet.to_device(numpy.zeros(2), d)),
])
def test_device_errors_name_the_caller(who, call):
    with pytest.raises(ValueError, match=rf"^{who}: unknown device 'gpu': expected 'cpu', 'cuda', 'cuda:N' or 'sim'$"):
        call("gpu")
    with pytest.raises(TypeError, match=rf"^{who}: device must be a string like 'cpu'.*got 3$"):
        call(3)


# -- setters and epoch arguments: int() used to truncate or parse what it was given ---------

@pytest.mark.parametrize("who,name,call", [
    ("Dropout.seed", "seed", lambda v: setattr(gpunet.Dropout(0.5), "seed", v)),
    ("Dropout.counter", "counter", lambda v: setattr(gpunet.Dropout(0.5), "counter", v)),
    ("DataLoader.order", "epoch", lambda v: gpunet.DataLoader(*_xy(), shuffle=True, seed=0).order(v)),
    ("DataLoader.shard_order", "epoch", lambda v: gpunet.DataLoader(*_xy(), shuffle=True, seed=0).shard_order(v)),
    ("make_mnist1d", "seed", lambda v: gpunet.datasets.make_mnist1d(n_train=10, n_test=10, seed=v)),
    ("SGD.steps", "steps[0]", lambda v: setattr(_opt(), "steps", [v, 0])),
    ("DataLoader", "seed", lambda v: setattr(gpunet.DataLoader(*_xy()), "seed", v)),
    ("DataLoader", "epoch", lambda v: setattr(gpunet.DataLoader(*_xy()), "epoch", v)),
    ("EarlyStopping", "patience", lambda v: setattr(gpunet.EarlyStopping(), "patience", v)),
])
def test_integer_setters_and_epochs_refuse_floats_bools_strings_negatives(who, name, call):
    for bad in (2.5, True, "1"):
        with pytest.raises(TypeError, match=rf"^{re.escape(who)}: expected {re.escape(name)} to be an int >= 0, "
                                            rf"got {re.escape(repr(bad))} \({type(bad).__name__}\)$"):
            call(bad)
    with pytest.raises(ValueError, match=rf"^{re.escape(who)}: expected {re.escape(name)} to be an int >= 0, got -1$"):
        call(-1)
    call(numpy.int64(1))


def test_dropout_seed_and_counter_setters_keep_working():
    d = gpunet.Dropout(0.5, seed=3)
    d.seed, d.counter = numpy.int64(7), 4
    assert (d.seed, d.counter) == (7, 4) and type(d.seed) is int
    with pytest.raises(ValueError, match=r"^Dropout: expected seed to be an int in \[0, 2\*\*63\), got 9223372036854775808$"):
        gpunet.Dropout(0.5, seed=2**63)
    loaded = gpunet.Dropout(0.5)
    loaded.load_state_dict(d.state_dict())
    assert (loaded.seed, loaded.counter) == (7, 4)


def test_optimizer_steps_setter_checks_the_length():
    with pytest.raises(ValueError, match=r"^SGD\.steps: expected 2 step counts \(one per parameter\), got 1$"):
        _opt().steps = [0]


@pytest.mark.parametrize("who,name,make", [
    ("Dense", "in_features", lambda v: gpunet.Dense(v, 2)),
    ("Conv2D", "out_channels", lambda v: gpunet.Conv2D(1, v, 3)),
    ("BatchNorm", "num_features", lambda v: gpunet.BatchNorm(v)),
    ("Maxout", "pieces", lambda v: gpunet.Maxout(v)),
])
def test_layer_sizes_say_positive_int_and_a_float_is_a_type_error(who, name, make):
    """These refused floats before, with a ValueError only; the shared check says the same
    in one format and raises a TypeError (that is still a ValueError)."""
    with pytest.raises(TypeError, match=rf"^{who}: expected {name} to be a positive int, got 2\.0 \(float\)$"):
        make(2.0)
    with pytest.raises(ValueError, match=rf"^{who}: expected {name} to be a positive int, got 0$"):
        make(0)
    assert getattr(make(numpy.int64(2)), name) == 2


# -- gpunet.functional: the hyper-parameters of the per-step functions ---------------------

def _fx():
    return numpy.random.default_rng(0).standard_normal((4, 6)).astype(numpy.float32)


def _fimg():
    return numpy.random.default_rng(0).standard_normal((2, 3, 6, 6)).astype(numpy.float32)


_F = gpunet.functional
_G, _B = numpy.ones(6, numpy.float32), numpy.zeros(6, numpy.float32)
FUNCTIONAL = [
    # silently wrong before: inplace="no" overwrote the input, NaN hyper-parameters gave NaN
    # outputs, a negative eps NaN statistics, a str ignore_index matched no label, a float
    # start shifted the mask, a str flag was read as True
    (lambda: _F.relu(_fx(), inplace="no"), TypeError,
     "relu: expected inplace to be a bool (True or False), got 'no' (str)"),
    (lambda: _F.softmax(_fx(), inplace=1), TypeError,
     "softmax: expected inplace to be a bool (True or False), got 1 (int)"),
    (lambda: _F.leaky_relu(_fx(), float("nan")), ValueError, "leaky_relu: expected negative_slope to be a number, got nan"),
    (lambda: _F.leaky_relu_backward(_fx(), _fx(), _fx(), float("inf")), ValueError,
     "leaky_relu_backward: expected negative_slope to be finite, got inf"),
    (lambda: _F.elu(_fx(), float("nan")), ValueError, "elu: expected alpha to be a number, got nan"),
    (lambda: _F.batch_norm_forward(_fx(), _G, _B, eps=-1.0), ValueError, "batch_norm_forward: expected eps > 0, got -1.0"),
    (lambda: _F.batch_norm_eval(_fx(), _B, _B, _G, _B, eps=0), ValueError, "batch_norm_eval: expected eps > 0, got 0"),
    (lambda: _F.softmax_cross_entropy(_fx(), numpy.array([0, 1, 2, 3]), ignore_index="1"), TypeError,
     "softmax_cross_entropy: expected ignore_index to be None or an int, got '1' (str)"),
    (lambda: _F.dropout_forward(_fx(), 0.5, 0, 0, start=1.5), TypeError,
     "dropout_forward: expected start to be an int >= 0, got 1.5 (float)"),
    # the device-state variants took any start int() took: 1.5 drew start 1's mask, True
    # start 1, "1" start 1, -1 wrapped to start 2**32 - 1 (seen on the sim); checked before
    # any device work, so a host array and no state reach the check
    (lambda: _F.dropout_forward_state(_fx(), 0.5, None, start=1.5), TypeError,
     "dropout_forward_state: expected start to be an int >= 0, got 1.5 (float)"),
    (lambda: _F.dropout_forward_state(_fx(), 0.5, None, start=True), TypeError,
     "dropout_forward_state: expected start to be an int >= 0, got True (bool)"),
    (lambda: _F.dropout_backward_state(_fx(), 0.5, None, start=-1), ValueError,
     "dropout_backward_state: expected start to be an int >= 0, got -1"),
    (lambda: _F.dropout_backward_state(_fx(), 0.5, None, start="1"), TypeError,
     "dropout_backward_state: expected start to be an int >= 0, got '1' (str)"),
    (lambda: _F.linear_backward(_fx(), _fx(), numpy.ones((6, 6), numpy.float32), need_dx="no"), TypeError,
     "linear_backward: expected need_dx to be a bool (True or False), got 'no' (str)"),
    (lambda: _F.conv2d(_fimg(), numpy.ones((2, 3, 3, 3), numpy.float32), return_cols="no"), TypeError,
     "conv2d: expected return_cols to be a bool (True or False), got 'no' (str)"),
    # errors from deep inside NumPy or Python before
    (lambda: _F.leaky_relu(_fx(), "a"), TypeError, "leaky_relu: expected negative_slope to be a real number, got 'a' (str)"),
    (lambda: _F.elu_backward(_fx(), _fx(), _fx(), None), TypeError, "elu_backward: expected alpha to be a real number, got None"),
    (lambda: _F.softmax(_fx(), axis=2), ValueError, "softmax: expected axis in [-2, 2) for an input of 2 dimensions, got 2"),
    (lambda: _F.log_softmax(_fx(), axis=1.0), TypeError, "log_softmax: expected axis to be an int, got 1.0 (float)"),
    (lambda: _F.softmax_backward(_fx(), _fx(), _fx(), axis=-3), ValueError,
     "softmax_backward: expected axis in [-2, 2) for an input of 2 dimensions, got -3"),
    (lambda: _F.batch_norm_forward(_fx(), _G, _B, eps="a"), TypeError,
     "batch_norm_forward: expected eps to be a real number, got 'a' (str)"),
    (lambda: _F.maxout_forward(_fx(), 0), ValueError, "maxout_forward: expected pieces to be a positive int, got 0"),
    (lambda: _F.maxout_forward(_fx(), 4), ValueError,
     "maxout_forward: expected pieces to divide the input's 6 channels (axis 1), got 4"),
    (lambda: _F.maxout_backward(_fx(), numpy.zeros((4, 6), numpy.uint8), 2.0), TypeError,
     "maxout_backward: expected pieces to be a positive int, got 2.0 (float)"),
    (lambda: _F.dropout_forward(_fx(), 0.5, "a", 0), TypeError, "dropout_forward: expected seed to be an int >= 0, got 'a' (str)"),
    (lambda: _F.dropout_backward(_fx(), 0.5, 0, -1), ValueError, "dropout_backward: expected counter to be an int >= 0, got -1"),
    (lambda: _F.softmax_cross_entropy(_fx(), numpy.array([0, 1, 2, 3]), grad_scale="2"), TypeError,
     "softmax_cross_entropy: expected grad_scale to be a real number, got '2' (str)"),
    (lambda: _F.im2col(_fimg(), 0), ValueError, "im2col: kernel must be >= 1, got 0"),
    (lambda: _F.col2im(numpy.zeros((2, 27, 16), numpy.float32), (2, 3, 6, 6), 3, stride=0), ValueError,
     "col2im: stride must be >= 1, got 0"),
]


@pytest.mark.parametrize("call,exc,message", FUNCTIONAL, ids=[m.split(" ")[0] + str(i) for i, (_, _, m) in enumerate(FUNCTIONAL)])
def test_functional_hyper_parameters_are_checked(call, exc, message):
    with pytest.raises(exc) as e:
        call()
    assert str(e.value) == message


def test_functional_hyper_parameters_take_numpy_scalars_and_ints():
    """What the checks let through on their slow path: NumPy scalars, ints where a real is
    expected, numpy.bool_ flags; results as with the Python values."""
    x = _fx()
    numpy.testing.assert_array_equal(_F.leaky_relu(x, numpy.float32(0.5)), _F.leaky_relu(x, 0.5))
    numpy.testing.assert_array_equal(_F.elu(x, 1), _F.elu(x, 1.0))
    numpy.testing.assert_array_equal(_F.softmax(x, axis=numpy.int64(0)), _F.softmax(x, axis=0))
    y = x.copy()
    assert _F.relu(y, inplace=numpy.True_) is y
    numpy.testing.assert_array_equal(_F.maxout_forward(x, numpy.int64(2))[0], _F.maxout_forward(x, 2)[0])
    numpy.testing.assert_array_equal(_F.dropout_forward(x, 0.5, numpy.int64(3), numpy.uint32(1)),
                                     _F.dropout_forward(x, 0.5, 3, 1))
    numpy.testing.assert_array_equal(_F.im2col(_fimg(), 3), _F.im2col(_fimg(), (3, 3), (1, 1), (0, 0)))
