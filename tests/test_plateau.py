"""``gpunet.optim.ReduceLROnPlateau``: PyTorch's decisions on random metric sequences, the
rules by hand, state that round-trips (alone and through a Trainer's checkpoint, resumed
mid-plateau), argument checks, and the Trainer stepping it with a monitored value (on the
CPU, and on the sim device with a CUDA graph)."""
from __future__ import annotations

import math
import random

import numpy
import pytest

import gpunet
from gpunet import Dense, Parameter, Sequential, SoftmaxCrossEntropy, optim, sim
from gpunet.optim import ReduceLROnPlateau
from npz_helpers import through_npz


def _opt(lr=0.1):
    return optim.SGD([Parameter(numpy.zeros(2))], lr=lr)


def _metrics(rng, n):
    """A sequence with improvements, plateaus (repeats, small wiggles), jumps and, rarely,
    NaN and +-inf."""
    out, v = [], rng.uniform(-1.0, 3.0)
    for _ in range(n):
        r = rng.random()
        if r < 0.05:
            out.append(rng.choice([math.nan, math.inf, -math.inf]))
            continue
        if r < 0.35:
            v -= rng.uniform(0.0, 0.5)        # improves (min mode)
        elif r < 0.55:
            pass                              # the same value again
        elif r < 0.8:
            v += rng.uniform(-1e-3, 1e-3) * abs(v)    # inside a relative threshold, or not
        else:
            v += rng.uniform(0.0, 1.0)        # worse
        out.append(v)
    return out


def _random_config(rng, mode, threshold_mode):
    return dict(mode=mode, threshold_mode=threshold_mode,
                factor=rng.choice([0.0, 0.1, 0.5, 0.9]), patience=rng.randint(0, 4),
                threshold=rng.choice([0.0, 1e-4, 1e-3, 0.05, 0.5]), cooldown=rng.randint(0, 3),
                min_lr=rng.choice([0.0, 1e-4, 0.02]), eps=rng.choice([0.0, 1e-8, 1e-3, 0.05]))


# -- against PyTorch ----------------------------------------------------------------------

@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_matches_torch_on_random_metric_sequences(mode, threshold_mode):
    """200 seeded random configurations (factor, patience, threshold, cooldown, min_lr,
    eps) per mode pair, each stepped 40 times with the same values as PyTorch's: the same
    rate after every step (exactly), and the same best, bad-epoch and cooldown counts."""
    torch = pytest.importorskip("torch")
    rng = random.Random(f"{mode}-{threshold_mode}")
    reductions = kept_by_eps = 0
    for case in range(200):
        kw = _random_config(rng, mode, threshold_mode)
        lr0 = rng.choice([0.1, 1.0, 3e-4])
        opt = _opt(lr0)
        s = ReduceLROnPlateau(opt, **kw)
        tp = torch.zeros(1, requires_grad=True)
        topt = torch.optim.SGD([tp], lr=lr0)
        ts = torch.optim.lr_scheduler.ReduceLROnPlateau(topt, **kw)
        values = _metrics(rng, 40)
        if mode == "max":
            values = [-v for v in values]
        for i, v in enumerate(values):
            before = opt.lr
            got = s.step(v)
            ts.step(v)
            want = topt.param_groups[0]["lr"]
            where = f"case {case} {kw} lr0={lr0}, step {i}, values {values[:i + 1]}"
            assert got == opt.lr == want, where
            assert (s.best, s.num_bad_epochs, s.cooldown_counter) == (ts.best, ts.num_bad_epochs,
                                                                      ts.cooldown_counter), where
            reductions += got < before
            kept_by_eps += got == before and s.num_bad_epochs == 0 and s.cooldown_counter == kw["cooldown"] \
                and kw["cooldown"] > 0 and before > kw["min_lr"] and before * (1 - kw["factor"]) <= kw["eps"]
        assert s.last_epoch == ts.last_epoch == 40
    assert reductions > 100          # the sequences do reach the rule that matters
    assert kept_by_eps > 0           # and the eps rule


def test_torch_keywords_and_defaults():
    """PyTorch's signature: the same keywords with the same defaults (plus gpunet's
    keyword-only ``monitor``)."""
    torch = pytest.importorskip("torch")
    import inspect
    ours = inspect.signature(ReduceLROnPlateau).parameters
    theirs = inspect.signature(torch.optim.lr_scheduler.ReduceLROnPlateau).parameters
    assert list(ours)[:len(theirs)] == list(theirs)
    for k in list(theirs)[1:]:
        assert ours[k].default == theirs[k].default, k
    assert list(ours)[len(theirs):] == ["monitor"]
    assert ours["monitor"].kind is inspect.Parameter.KEYWORD_ONLY


# -- the rules by hand (no torch needed) ----------------------------------------------------

def test_reduces_after_more_than_patience_bad_epochs():
    opt = _opt(1.0)
    s = ReduceLROnPlateau(opt, factor=0.5, patience=2)
    assert opt.lr == 1.0 and s.lr == 1.0            # creating it changes nothing
    lrs = [s.step(v) for v in [5.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]]
    # bad epochs: 4.0 x3 -> the third one reduces; 3.0 improves, then 3 bad -> reduces; 3 more -> reduces
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    assert s.best == 3.0 and s.last_epoch == 12


def test_patience_zero_cooldown_min_lr_and_eps():
    opt = _opt(1.0)
    s = ReduceLROnPlateau(opt, factor=0.1, patience=0, cooldown=2, min_lr=0.005)
    # each bad epoch outside the cooldown reduces; the 2 epochs after a cut are not counted
    lrs = [s.step(v) for v in [1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]]
    assert lrs == pytest.approx([1.0, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01, 0.005])
    assert s.cooldown_counter == 2
    # eps: a cut smaller than eps is skipped (lr 0.005 is at min_lr already; here 0.01 -> 0.009)
    opt = _opt(0.01)
    s = ReduceLROnPlateau(opt, factor=0.9, patience=0, eps=1e-3)
    assert [s.step(v) for v in [1.0, 1.0]] == [0.01, 0.01]       # 0.001 is not > eps
    s.eps = 1e-4
    assert s.step(1.0) == pytest.approx(0.009)


def test_thresholds_and_max_mode():
    s = ReduceLROnPlateau(_opt(), threshold=0.1, threshold_mode="rel")
    s.step(10.0)
    s.step(9.5)                          # not below 10 * 0.9
    assert (s.best, s.num_bad_epochs) == (10.0, 1)
    s.step(8.9)
    assert (s.best, s.num_bad_epochs) == (8.9, 0)
    s = ReduceLROnPlateau(_opt(), mode="max", threshold=0.5, threshold_mode="abs")
    s.step(1.0)
    s.step(1.4)                          # not above 1.0 + 0.5
    assert (s.best, s.num_bad_epochs) == (1.0, 1)
    s.step(1.6)
    assert (s.best, s.num_bad_epochs) == (1.6, 0)
    assert ReduceLROnPlateau(_opt(), mode="max").best == -math.inf


def test_nan_and_inf_count_as_bad_epochs():
    """NaN never improves (PyTorch's and Keras' comparisons are false for it): a bad epoch
    that does not replace best; nor does +inf in min mode; -inf improves in min mode."""
    opt = _opt(1.0)
    s = ReduceLROnPlateau(opt, patience=1, factor=0.5)
    s.step(math.nan)
    assert (s.best, s.num_bad_epochs) == (math.inf, 1)
    s.step(math.inf)                      # second bad epoch: > patience
    assert opt.lr == 0.5 and s.best == math.inf
    s.step(2.0)
    s.step(math.nan)
    assert (s.best, s.num_bad_epochs) == (2.0, 1)
    s.step(-math.inf)
    assert (s.best, s.num_bad_epochs) == (-math.inf, 0)


def test_metric_types():
    s = ReduceLROnPlateau(_opt())
    for v in (3, numpy.float32(2.5), numpy.array(2.0), numpy.array(1, dtype=numpy.int64), numpy.float64(0.5)):
        s.step(v)
    assert s.best == 0.5 and type(s.best) is float and s.num_bad_epochs == 0
    for bad, shown in ((None, "None"), (True, "True"), ("0.3", r"'0.3' \(str\)"),
                       (numpy.array([1.0, 2.0]), "array"), (numpy.array(True), "array"),
                       ([0.3], r"\[0.3\] \(list\)")):
        with pytest.raises(TypeError, match=r"ReduceLROnPlateau.step: expected metrics to be the monitored "
                                            r"value.*got " + shown):
            s.step(bad)
    with pytest.raises(TypeError, match="expected metrics"):
        s.step()
    assert s.last_epoch == 5              # refused steps counted nothing


def test_reads_the_rate_it_reduces_from_the_optimizer():
    """As PyTorch reads the group's lr: a rate set by hand between steps is the one cut."""
    opt = _opt(1.0)
    s = ReduceLROnPlateau(opt, patience=0, factor=0.5)
    s.step(1.0)
    opt.lr = 0.3
    assert s.step(1.0) == 0.15 == s.lr


def test_has_no_closed_form():
    with pytest.raises(TypeError, match="ReduceLROnPlateau has no closed form"):
        ReduceLROnPlateau(_opt()).lr_at(3)


def _keras_rates(values, lr, mode, factor, patience, min_delta, cooldown, min_lr):
    """Keras' ``ReduceLROnPlateau`` callback's rule as its documentation and source state it
    (``keras/src/callbacks/reduce_lr_on_plateau.py``), written out here: the cooldown is
    counted down first, an improvement is ``a < best - min_delta`` (``>`` and ``+`` for max),
    a bad epoch outside the cooldown adds to ``wait``, and ``wait >= patience`` cuts the
    rate if it is above ``min_lr``."""
    best, wait, cool, out = (math.inf if mode == "min" else -math.inf), 0, 0, []
    for v in values:
        if cool > 0:
            cool -= 1
            wait = 0
        if (v < best - min_delta) if mode == "min" else (v > best + min_delta):
            best, wait = v, 0
        elif cool == 0:
            wait += 1
            if wait >= patience and lr > min_lr:
                lr, cool, wait = max(lr * factor, min_lr), cooldown, 0
        out.append(lr)
    return out


def test_the_keras_mapping_in_the_guide():
    """docs/guide.md: Keras' (patience=p, min_delta=d, cooldown=c) is (patience=max(p-1, 0),
    threshold=d, threshold_mode="abs", cooldown=max(c-1, 0), eps=0): the same rates on 600
    random configurations and sequences."""
    rng = random.Random(7)
    cuts = 0
    for _ in range(600):
        mode = rng.choice(["min", "max"])
        p, c = rng.randint(0, 5), rng.randint(0, 3)
        f, d, low = rng.choice([0.1, 0.5]), rng.choice([0.0, 1e-3, 0.1]), rng.choice([0.0, 1e-3])
        values = [round(rng.gauss(0.0, 1.0), 1) for _ in range(40)]
        want = _keras_rates(values, 0.1, mode, f, p, d, c, low)
        s = ReduceLROnPlateau(_opt(0.1), mode=mode, factor=f, patience=max(p - 1, 0), threshold=d,
                              threshold_mode="abs", cooldown=max(c - 1, 0), min_lr=low, eps=0.0)
        assert [s.step(v) for v in values] == want, (mode, p, c, f, d, low, values)
        cuts += want[-1] < 0.1
    assert cuts > 300


# -- arguments ------------------------------------------------------------------------------

BAD = [
    (dict(mode="minimum"), ValueError, "expected mode to be 'min' or 'max', got 'minimum'"),
    (dict(mode=None), TypeError, "expected mode to be 'min' or 'max', got None"),
    (dict(factor=1.0), ValueError, r"expected factor in \[0, 1\), got 1.0"),
    (dict(factor=-0.1), ValueError, r"expected factor in \[0, 1\), got -0.1"),
    (dict(factor="0.1"), TypeError, r"expected factor to be a real number, got '0.1' \(str\)"),
    (dict(factor=math.nan), ValueError, "expected factor in"),
    (dict(patience=-1), ValueError, "expected patience to be an int >= 0, got -1"),
    (dict(patience=2.0), TypeError, "expected patience to be an int >= 0, got 2.0"),
    (dict(patience=True), TypeError, "expected patience to be an int >= 0, got True"),
    (dict(threshold=-1e-4), ValueError, "expected threshold >= 0, got -0.0001"),
    (dict(threshold=math.inf), ValueError, "expected threshold to be finite"),
    (dict(threshold_mode="relative"), ValueError, "expected threshold_mode to be 'rel' or 'abs', got 'relative'"),
    (dict(cooldown=-2), ValueError, "expected cooldown to be an int >= 0, got -2"),
    (dict(min_lr=-1.0), ValueError, "expected min_lr >= 0, got -1.0"),
    (dict(min_lr=[0.1]), TypeError, r"expected min_lr to be a real number, got \[0.1\] \(list\)"),
    (dict(eps=math.nan), ValueError, "expected eps >= 0, got nan"),
    (dict(monitor=3), TypeError, "expected monitor to be None or the name of a logged value"),
]


@pytest.mark.parametrize("kw,kind,message", BAD, ids=[repr(b[0]) for b in BAD])
def test_bad_arguments(kw, kind, message):
    opt = _opt(0.2)
    with pytest.raises(kind, match="ReduceLROnPlateau: " + message):
        ReduceLROnPlateau(opt, **kw)
    assert opt.lr == 0.2
    with pytest.raises(TypeError, match="ReduceLROnPlateau: expected an optimizer"):
        ReduceLROnPlateau(object())


# -- state ----------------------------------------------------------------------------------

def test_state_round_trip_mid_plateau():
    """Stepped 8 times (two bad epochs counted after a cut and its cooldown), saved through
    an npz, loaded into one built with other arguments: the next steps give the rates and
    counters of the uninterrupted schedule, which cuts the rate twice more."""
    values = [5.0, 4.0, 4.0, 4.001, 4.0, 3.0, 3.0, 3.0, 3.0, 3.5, 3.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.0, 1.0]
    kw = dict(factor=0.5, patience=2, cooldown=1, threshold=1e-3, min_lr=1e-3)
    a = ReduceLROnPlateau(_opt(0.5), **kw)
    full = [a.step(v) for v in values]
    b = ReduceLROnPlateau(_opt(0.5), **kw)
    first = [b.step(v) for v in values[:8]]
    assert (b.num_bad_epochs, b.cooldown_counter, b.best) == (2, 0, 3.0)
    saved = through_npz(b.state_dict())
    assert saved["mode"].dtype.kind == "U"
    opt_c = _opt(9.0)
    c = ReduceLROnPlateau(opt_c, mode="max", factor=0.9, patience=7, threshold_mode="abs", eps=0.0)
    c.load_state_dict(saved)
    assert opt_c.lr == b.lr == 0.25 and type(opt_c.lr) is float
    assert (c.mode, c.factor, c.patience, c.threshold_mode, c.best) == ("min", 0.5, 2, "rel", 3.0)
    rest = [c.step(v) for v in values[8:]]
    assert first + rest == full
    assert full[7:] == [0.25, 0.125, 0.125, 0.125, 0.125, 0.125, 0.125, 0.0625, 0.0625, 0.0625, 0.0625]
    for k, v in a.state_dict().items():
        assert c.state_dict()[k] == v, k
    assert c.state_dict().keys() == a.state_dict().keys()


BAD_STATE = [
    ("mode", numpy.asarray("median"), "expected mode to be 'min' or 'max', got 'median'"),
    ("mode", numpy.asarray(1.0), "'mode': expected a string, got dtype float64"),
    ("best", numpy.asarray(math.nan), "'best': expected a number or \\+-inf, got nan"),
    ("num_bad_epochs", numpy.asarray(-1), "expected num_bad_epochs to be an int >= 0, got -1"),
    ("cooldown_counter", numpy.asarray(1.5), "'cooldown_counter': expected an integer, got dtype float64"),
    ("last_lr", numpy.asarray(-0.1), "expected last_lr >= 0, got -0.1"),
    ("factor", numpy.asarray(2.0), r"expected factor in \[0, 1\), got 2.0"),
]


@pytest.mark.parametrize("key,value,message", BAD_STATE, ids=[f"{k}={v}" for k, v, _ in BAD_STATE])
def test_bad_state_is_refused_and_changes_nothing(key, value, message):
    src = ReduceLROnPlateau(_opt(), patience=0)
    src.step(1.0)
    src.step(2.0)
    d = src.state_dict()
    d[key] = value
    opt = _opt(0.7)
    s = ReduceLROnPlateau(opt, patience=4)
    s.step(3.0)
    before = s.state_dict()
    with pytest.raises(ValueError, match="ReduceLROnPlateau.load_state_dict: .*" + message):
        s.load_state_dict(d)
    assert opt.lr == 0.7
    assert {k: v.item() for k, v in s.state_dict().items()} == {k: v.item() for k, v in before.items()}
    del d[key]
    with pytest.raises(ValueError, match=f"missing key '{key}'"):
        s.load_state_dict(d)


def test_checkpoint_round_trip_and_class_check(tmp_path):
    gpunet.manual_seed(0)
    model = Sequential(Dense(3, 2))
    opt = optim.SGD(model, lr=0.4)
    s = ReduceLROnPlateau(opt, patience=1, factor=0.25, monitor="loss")
    for v in (1.0, 1.0, 1.0, 1.0, 1.0):       # cuts after the third and the fifth
        s.step(v)
    path = gpunet.save(tmp_path / "ck.npz", model, opt, scheduler=s)
    m2 = Sequential(Dense(3, 2))
    o2 = optim.SGD(m2, lr=1.0)
    s2 = ReduceLROnPlateau(o2)
    gpunet.load(path, m2, o2, scheduler=s2)
    assert o2.lr == opt.lr == 0.025 and s2.best == 1.0 and s2.last_epoch == 5
    assert s2.monitor is None            # not saved: the resumed Trainer's choice
    with pytest.raises(ValueError, match="holds ReduceLROnPlateau state, not StepLR"):
        gpunet.load(path, m2, o2, scheduler=optim.StepLR(o2, 2))


# -- with a Trainer -------------------------------------------------------------------------

def _digits(n_train=600, n_val=200):
    (X, y), (Xt, yt) = gpunet.datasets.load_digits()
    return (X[:n_train], y[:n_train]), (Xt[:n_val], yt[:n_val])


def _setup(seed=0, device=None, sched_kw=None, **trainer_kw):
    gpunet.manual_seed(seed)
    model = Sequential(Dense(64, 32, activation="relu"), Dense(32, 10))
    opt = optim.SGD(model, lr=0.5, momentum=0.9)
    sched = ReduceLROnPlateau(opt, **(sched_kw or dict(factor=0.5, patience=1, threshold=0.05)))
    return model, opt, sched, gpunet.Trainer(model, SoftmaxCrossEntropy(), opt, device=device,
                                             scheduler=sched, **trainer_kw)


def _replayed(values, lr0, **kw):
    """The rates a fresh schedule gives when stepped with ``values``: the rate of epoch k+1
    is the rate after step k."""
    s = ReduceLROnPlateau(_opt(lr0), **kw)
    return [lr0] + [s.step(v) for v in values[:-1]]


def test_trainer_steps_it_with_val_loss_after_validation():
    train, val = _digits()
    model, opt, sched, tr = _setup()
    h = tr.fit(train, val=val, epochs=10, batch_size=64, progress=False)
    lrs = h["learning_rate"]
    assert lrs == _replayed(h["val_loss"], 0.5, factor=0.5, patience=1, threshold=0.05)
    assert lrs[0] == 0.5 and min(lrs) < 0.5               # the rate did drop after a plateau
    assert sched.last_epoch == 10 and opt.lr == sched.lr


def test_trainer_monitors_loss_without_val_and_accuracy_in_max_mode():
    train, val = _digits()
    kw = dict(factor=0.5, patience=0, threshold=0.01)
    _, _, _, tr = _setup(sched_kw=kw)
    h = tr.fit(train, epochs=6, batch_size=64, progress=False)
    assert h["learning_rate"] == _replayed(h["loss"], 0.5, **kw) and min(h["learning_rate"]) < 0.5
    kw = dict(mode="max", factor=0.5, patience=0, threshold=0.01)
    _, _, _, tr = _setup(sched_kw=dict(kw, monitor="val_accuracy"))
    h = tr.fit(train, val=val, epochs=6, batch_size=64, progress=False)
    assert h["learning_rate"] == _replayed(h["val_accuracy"], 0.5, **kw) and min(h["learning_rate"]) < 0.5


TRAINER_ERRORS = [      # (schedule arguments, Trainer arguments, fit with val, message)
    (dict(monitor="val_loss"), {}, False, "monitors 'val_loss', which this run does not log .*pass val="),
    (dict(monitor="accuracy"), dict(metrics=()), True, "monitors 'accuracy', which .* metrics=\\('accuracy',\\)"),
    (dict(monitor="val_acc"), {}, True, "monitors 'val_acc', which this run does not log"),
    (dict(monitor="val_accuracy"), {}, True, "monitors 'val_accuracy' with mode='min'.*pass mode='max'"),
    (dict(monitor="loss", mode="max"), {}, False, "monitors 'loss' with mode='max'.*pass mode='min'"),
    (dict(mode="max"), {}, True, r"\(mode='max'\) needs monitor="),
]


@pytest.mark.parametrize("sched_kw,trainer_kw,with_val,message", TRAINER_ERRORS,
                         ids=[str(e[0]) + str(e[1]) for e in TRAINER_ERRORS])
def test_trainer_refuses_a_monitor_it_cannot_step_it_with(sched_kw, trainer_kw, with_val, message):
    """Before the first epoch, not after it."""
    train, val = _digits(64, 32)
    model, opt, _, tr = _setup(sched_kw=sched_kw, **trainer_kw)
    w = model[0].weight.data.copy()
    with pytest.raises(ValueError, match="Trainer.fit: ReduceLROnPlateau.*" + message):
        tr.fit(train, val=val if with_val else None, epochs=2, progress=False)
    numpy.testing.assert_array_equal(model[0].weight.data, w)


def test_trainer_refuses_it_per_step():
    model = Sequential(Dense(4, 2))
    opt = optim.SGD(model)
    with pytest.raises(ValueError, match="Trainer: ReduceLROnPlateau is stepped once per epoch.*got "
                                         "scheduler_interval='step'"):
        gpunet.Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=ReduceLROnPlateau(opt),
                       scheduler_interval="step")


def test_a_run_resumed_mid_plateau_continues_exactly(tmp_path):
    """8 epochs in one go against 5 epochs (a ModelCheckpoint after each) and the last 3,
    loaded into objects built afresh (other weights, other schedule arguments): the same
    val losses and rates, the same final weights and schedule state; the checkpoint was
    taken with bad epochs counted and the rate drops after the resume."""
    train, val = _digits()
    kw = dict(factor=0.5, patience=2, threshold=0.1)
    fit = dict(val=val, batch_size=64, progress=False)
    model_a, opt_a, sched_a, tr_a = _setup(sched_kw=kw)
    full = tr_a.fit(train, epochs=8, **fit)
    path = tmp_path / "last.npz"
    _, _, sched_b, tr_b = _setup(sched_kw=kw)
    tr_b.fit(train, epochs=5, callbacks=[gpunet.ModelCheckpoint(path, save_best_only=False)], **fit)
    assert sched_b.num_bad_epochs > 0            # mid-plateau
    model_c, opt_c, sched_c, tr_c = _setup(seed=1, sched_kw=dict(factor=0.9, patience=9))
    meta = gpunet.load(path, model_c, opt_c, scheduler=sched_c)
    rest = tr_c.fit(train, epochs=8, initial_epoch=meta["epoch"], **fit)
    assert meta["epoch"] == 5
    assert rest["val_loss"] == full["val_loss"][5:]
    assert rest["learning_rate"] == full["learning_rate"][5:]
    assert min(full["learning_rate"][5:]) < full["learning_rate"][5]      # a cut after the resume
    for a, c in zip(model_a.parameters(), model_c.parameters()):
        numpy.testing.assert_array_equal(a.data, c.data)
    assert {k: v.item() for k, v in sched_c.state_dict().items()} == \
        {k: v.item() for k, v in sched_a.state_dict().items()}


@pytest.mark.skipif(sim.compiler() is None, reason="no C++ compiler: no sim device")
def test_on_the_sim_with_a_cuda_graph_the_cut_rate_reaches_the_replays():
    """On the sim device, a Trainer replaying a captured CUDA graph and an eager one give the
    same losses, rates and weights bit for bit while ReduceLROnPlateau cuts the rate
    (written to the device before each replay)."""
    train, val = _digits(192, 64)
    kw = dict(factor=0.5, patience=0, threshold=0.02)
    runs = []
    for device, graph in (("sim", True), ("sim", False)):
        model, opt, sched, tr = _setup(device=device, sched_kw=kw, cuda_graph=graph)
        sim.reset_counters()
        h = tr.fit(train, val=val, epochs=5, batch_size=32, progress=False)
        # 6 batches an epoch: epoch 1 runs 1 eagerly, captures 1 and replays 4; then 6 replays
        assert sim.counters()["graph_launches"] == (4 + 4 * 6 if graph else 0)
        runs.append((h, [gpunet.to_numpy(p.data) for p in model.parameters()]))
    (hg, wg), (he, we) = runs
    assert hg["loss"] == he["loss"] and hg["val_loss"] == he["val_loss"]
    assert hg["learning_rate"] == he["learning_rate"] == _replayed(hg["val_loss"], 0.5, **kw)
    assert min(hg["learning_rate"]) < 0.5
    for a, b in zip(wg, we):
        numpy.testing.assert_array_equal(a, b)
