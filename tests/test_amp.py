"""gpunet.amp.GradScaler: skip / grow / back off against hand-computed sequences with
injected overflows, against torch.amp.GradScaler's scale sequence, the unscaled
gradients, state_dict and checkpoint resume (DESIGN §13)."""
import math

import numpy
import pytest

import gpunet
from gpunet import Dense, Sequential, SoftmaxCrossEntropy, optim, to_numpy
from gpunet.amp import GradScaler


def _model(xp, seed=0):
    gpunet.manual_seed(seed)
    m = Sequential(Dense(6, 8, activation="relu"), Dense(8, 3))
    return m.to(gpunet.backend.device_of(xp.empty(0)))


def _batch(xp, seed):
    r = numpy.random.default_rng(seed)
    return (xp.asarray(r.standard_normal((5, 6)).astype(numpy.float32)),
            xp.asarray(r.integers(0, 3, 5)))


def _iteration(model, loss_fn, opt, scaler, x, y, poison=None):
    """One scaled step; ``poison`` (a float) is written into the first weight gradient."""
    loss_fn(model(x), y)
    model.backward(scaler.scale(loss_fn.backward()))
    if poison is not None:
        model[0].weight.grad[0, 0] = poison
    stepped = scaler.step(opt)
    scaler.update()
    opt.zero_grad()
    return stepped


def test_hand_computed_sequence_skip_grow_backoff(xp):
    model, loss_fn = _model(xp), SoftmaxCrossEntropy()
    opt = optim.SGD(model, lr=0.1)
    scaler = GradScaler(init_scale=8.0, growth_interval=3)
    # overflow at iterations 1 (inf) and 5 (NaN); clean elsewhere
    poison = {1: math.inf, 5: math.nan}
    want_scales = [8.0, 4.0, 4.0, 4.0, 8.0, 4.0, 4.0, 4.0, 8.0, 8.0]
    want_stepped = [True, False, True, True, True, False, True, True, True, True]
    scales, stepped = [], []
    for i in range(10):
        x, y = _batch(xp, i)
        before = to_numpy(model[0].weight.data).copy()
        s = _iteration(model, loss_fn, opt, scaler, x, y, poison.get(i))
        stepped.append(s)
        scales.append(scaler.get_scale())
        after = to_numpy(model[0].weight.data)
        if s:
            assert not numpy.array_equal(before, after)
        else:   # skipped: nothing changed, the step count neither
            numpy.testing.assert_array_equal(before, after)
    assert stepped == want_stepped
    assert scales == want_scales
    assert opt.steps[0] == sum(want_stepped)


def test_lowering_growth_interval_below_the_clean_count_still_grows(xp):
    """growth_interval lowered below the count of clean steps already made: the next clean
    step grows the scale (the count is past the interval). It compared with ==, so the
    count went on past the interval and the scale never grew again; on a device too (the
    update kernel)."""
    model, loss_fn = _model(xp), SoftmaxCrossEntropy()
    opt = optim.SGD(model, lr=0.1)
    scaler = GradScaler(init_scale=8.0, growth_interval=5)
    scales = []
    for i in range(6):
        if i == 3:
            scaler.growth_interval = 2      # three clean steps counted so far
        _iteration(model, loss_fn, opt, scaler, *_batch(xp, i), None)
        scales.append(scaler.get_scale())
    assert scales == [8.0, 8.0, 8.0, 16.0, 16.0, 32.0]


def test_unscaled_gradients_and_step_equal_the_unscaled_run(xp):
    """With a power-of-two scale the unscaled gradients are the plain ones bit for bit,
    so a scaled run of Adam equals the run without scaling."""
    runs = []
    for use in (False, True):
        model, loss_fn = _model(xp), SoftmaxCrossEntropy()
        opt = optim.Adam(model, lr=1e-2)
        scaler = GradScaler(enabled=use)
        for i in range(4):
            x, y = _batch(xp, 10 + i)
            assert _iteration(model, loss_fn, opt, scaler, x, y)
        runs.append([to_numpy(p.data) for p in model.parameters()])
    for a, b in zip(*runs):
        numpy.testing.assert_array_equal(a, b)


def test_unscale_twice_and_update_without_step_raise():
    model, loss_fn = _model(numpy), SoftmaxCrossEntropy()
    opt = optim.SGD(model)
    scaler = GradScaler()
    with pytest.raises(RuntimeError, match="no step"):
        scaler.update()
    x, y = _batch(numpy, 0)
    loss_fn(model(x), y)
    model.backward(scaler.scale(loss_fn.backward()))
    scaler.unscale_(opt)
    with pytest.raises(RuntimeError, match="already called"):
        scaler.unscale_(opt)
    assert scaler.step(opt)          # uses the recorded flag, does not unscale again
    scaler.update()


def test_scale_keeps_dtype_and_disabled_is_identity(xp):
    g = xp.asarray(numpy.array([2.0**-10, -3 * 2.0**-11], dtype=numpy.float16))
    s = GradScaler().scale(g)
    assert s.dtype == numpy.float16
    numpy.testing.assert_array_equal(to_numpy(s), numpy.array([64.0, -96.0], numpy.float16))
    assert GradScaler(enabled=False).scale(g) is g


def test_growth_stops_at_float32_max(xp):
    """On every backend: on a device the growth and its cap are the update kernel's own
    (amp_update_scale in kernels/optim.cu), not the host's code."""
    scaler = GradScaler(init_scale=2.0**127, growth_interval=1)
    model, loss_fn = _model(xp), SoftmaxCrossEntropy()
    opt = optim.SGD(model, lr=0.0)
    x, y = _batch(xp, 0)
    _iteration(model, loss_fn, opt, scaler, x, y, poison=0.0)
    assert scaler.get_scale() == 2.0**127     # 2**128 is inf in float32: not applied
    scaler.update(2.0**126)
    _iteration(model, loss_fn, opt, scaler, x, y, poison=0.0)
    assert scaler.get_scale() == 2.0**127     # below the cap it still grows


def test_scale_sequence_matches_torch_grad_scaler(xp):
    """Inject the same overflow pattern into gpunet's and torch's scalers (torch on CPU;
    gpunet on each backend: on a device the scale is updated there)."""
    torch = pytest.importorskip("torch")
    rng = numpy.random.default_rng(3)
    pattern = rng.random(60) < 0.3
    w = torch.nn.Parameter(torch.zeros(4))
    topt = torch.optim.SGD([w], lr=0.1)
    tscaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=4)
    model, loss_fn = _model(xp), SoftmaxCrossEntropy()
    opt = optim.SGD(model, lr=0.01)
    scaler = GradScaler(init_scale=1024.0, growth_interval=4)
    ours, theirs = [], []
    for i, bad in enumerate(pattern):
        tscaler.scale(torch.tensor(1.0))
        w.grad = torch.full((4,), math.inf if bad else 1.0)
        tscaler.step(topt)
        tscaler.update()
        theirs.append(tscaler.get_scale())
        x, y = _batch(xp, i)
        _iteration(model, loss_fn, opt, scaler, x, y, math.inf if bad else None)
        ours.append(scaler.get_scale())
    assert ours == theirs
    assert len(set(ours)) > 3


def test_state_dict_roundtrip_and_checkpoint_resume_bit_identical(tmp_path, xp):
    def run(model, opt, scaler, start, stop):
        loss_fn = SoftmaxCrossEntropy()
        for i in range(start, stop):
            x, y = _batch(xp, 100 + i)
            _iteration(model, loss_fn, opt, scaler, x, y, math.inf if i in (2, 7) else None)

    model = _model(xp)
    opt = optim.Adam(model, lr=1e-2)
    scaler = GradScaler(init_scale=4.0, growth_interval=2)
    run(model, opt, scaler, 0, 5)
    path = gpunet.save(tmp_path / "ck.npz", model, opt, scaler=scaler)
    run(model, opt, scaler, 5, 10)
    want = [to_numpy(p.data) for p in model.parameters()], scaler.state_dict()

    model2 = _model(xp, seed=1)
    opt2 = optim.Adam(model2, lr=1e-2)
    scaler2 = GradScaler()
    gpunet.load(path, model2, opt2, scaler=scaler2)
    run(model2, opt2, scaler2, 5, 10)
    for a, b in zip(want[0], [to_numpy(p.data) for p in model2.parameters()]):
        numpy.testing.assert_array_equal(a, b)
    assert {k: float(v) for k, v in scaler2.state_dict().items()} == \
        {k: float(v) for k, v in want[1].items()}


def test_checkpoint_without_scaler_state_raises_and_old_files_load(tmp_path):
    model = _model(numpy)
    path = gpunet.save(tmp_path / "ck.npz", model)
    gpunet.load(path, model)                       # no scaler asked: as before
    with pytest.raises(ValueError, match="no GradScaler state"):
        gpunet.load(path, model, scaler=GradScaler())
    with pytest.raises(ValueError, match="missing key"):
        GradScaler().load_state_dict({"scale": numpy.asarray(2.0)})


def test_device_step_makes_no_sync(sim_xp):
    """On the sim (the counters are the sim's): unscale_ + step + update run on the device
    without waiting for it (the found-inf check goes into the optimizer's kernel, the
    scale's update is a kernel): 4 launches (sum of squares, 1/S, the optimizer, the
    update), 0 syncs, 0 bytes copied."""
    from gpunet import sim
    model, loss_fn = _model(sim_xp), SoftmaxCrossEntropy()
    opt = optim.SGD(model, lr=0.1)
    scaler = GradScaler()
    x, y = _batch(sim_xp, 0)
    _iteration(model, loss_fn, opt, scaler, x, y)      # warm-up: tables, kernels
    for poison in (None, math.inf):
        loss_fn(model(x), y)
        model.backward(scaler.scale(loss_fn.backward()))
        if poison is not None:
            model[0].weight.grad[0, 0] = poison
        sim.reset_counters()
        stepped = scaler.step(opt)
        scaler.update()
        c = sim.counters()
        assert c["syncs"] == 0 and c["h2d_bytes"] == 0 and c["d2h_bytes"] == 0
        assert c["kernels"] == {"mt_grad_sumsq<float>": 1, "mt_grad_scale<float>": 1,
                                "mt_sgd<float>": 1, "amp_update_scale": 1}
        opt.zero_grad()
        sim.reset_counters()
        assert bool(stepped) is (poison is None)       # reading the outcome is the sync
        assert sim.counters()["syncs"] == 1
    assert scaler.get_scale() == 2.0**15 and opt.steps == [2, 2, 2, 2]


def test_unscale_float16_gradients(xp):
    """Gradients of a model cast to float16: divided by S in float32 and rounded once, an
    inf among them found (on a device without a sync until step reads it)."""
    class _Opt:
        def __init__(self, params):
            self.params, self.stepped = params, 0

        def step(self):
            self.stepped += 1

    p1 = gpunet.layers.base.Parameter(numpy.zeros(3, numpy.float16))
    p2 = gpunet.layers.base.Parameter(numpy.zeros(2, numpy.float16))
    for bad in (False, True):
        p1.grad = xp.asarray(numpy.array([64.0, -96.0, 2.0**-10], numpy.float16))
        p2.grad = xp.asarray(numpy.array([1.0, numpy.inf if bad else 3.0], numpy.float16))
        opt, scaler = _Opt([p1, p2]), GradScaler(init_scale=2.0**10)
        assert scaler.step(opt) is (not bad) and opt.stepped == (0 if bad else 1)
        numpy.testing.assert_array_equal(to_numpy(p1.grad),
                                         numpy.array([2.0**-4, -96 * 2.0**-10, 2.0**-20], numpy.float16))
        assert to_numpy(p1.grad).dtype == numpy.float16


@pytest.mark.parametrize("kwargs,message", [
    (dict(init_scale=0.0), "init_scale > 0, got 0.0"),
    (dict(init_scale=math.inf), "init_scale to be finite, got inf"),
    (dict(growth_factor=1.0), "growth_factor > 1, got 1.0"),
    (dict(backoff_factor=1.0), r"backoff_factor in \(0, 1\), got 1.0"),
    (dict(backoff_factor=0.0), r"backoff_factor in \(0, 1\), got 0.0"),
    (dict(growth_interval=0), "growth_interval to be a positive int, got 0"),
    (dict(growth_interval=2.0), r"growth_interval to be a positive int, got 2.0 \(float\)"),
    (dict(growth_interval=True), r"growth_interval to be a positive int, got True \(bool\)"),
])
def test_bad_arguments_name_the_scaler(kwargs, message):
    with pytest.raises(ValueError, match="GradScaler: expected .*" + message):
        GradScaler(**kwargs)


def test_bad_new_scale_and_tracker_raise():
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="GradScaler.update: expected new_scale (> 0|to be finite)"):
            GradScaler().update(bad)
    d = GradScaler(growth_interval=3).state_dict()
    d["growth_tracker"] = numpy.asarray(3)
    with pytest.raises(ValueError, match=r"growth_tracker 3 outside \[0, 3\)"):
        GradScaler().load_state_dict(d)


def test_grad_scaler_defaults_are_pytorchs():
    """GradScaler says "as torch.amp.GradScaler": the same defaults."""
    import inspect
    torch = pytest.importorskip("torch")
    mine = inspect.signature(GradScaler).parameters
    ref = inspect.signature(torch.amp.GradScaler).parameters
    for name in ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "enabled"):
        assert mine[name].default == ref[name].default, name


def test_disabled_scaler_has_no_state_as_in_pytorch(tmp_path):
    """A disabled GradScaler returned its full state (scale 65536, ...), which an enabled one
    would then have loaded as if it had been scaling; PyTorch's disabled scaler returns {}
    and ignores what it is given, and its enabled scaler refuses {}."""
    off = GradScaler(enabled=False)
    assert off.state_dict() == {}
    on = GradScaler(init_scale=2.0**10).state_dict()
    assert off.load_state_dict(on) is off and off.state_dict() == {}
    assert off.load_state_dict({}) is off
    with pytest.raises(ValueError, match=r"^GradScaler\.load_state_dict: the state is empty, as a "
                                         r"disabled GradScaler \(enabled=False\) saves it"):
        GradScaler().load_state_dict({})
    # checkpoints: a disabled scaler saves nothing and asks for nothing; an enabled one
    # loading a file saved with a disabled scaler says what the file holds
    model = Dense(3, 2)
    gpunet.save(tmp_path / "off.npz", model, scaler=off)
    gpunet.save(tmp_path / "on.npz", model, scaler=GradScaler(init_scale=2.0**10))
    with numpy.load(tmp_path / "off.npz") as z:
        assert not [k for k in z.files if k.startswith("scaler/")]
    gpunet.load(tmp_path / "off.npz", model, scaler=GradScaler(enabled=False))
    gpunet.load(tmp_path / "on.npz", model, scaler=GradScaler(enabled=False))
    with pytest.raises(ValueError, match=r"holds no GradScaler state \(it was saved without a scaler, "
                                         r"or with a disabled one\)"):
        gpunet.load(tmp_path / "off.npz", model, scaler=GradScaler())


def test_disabled_scaler_state_matches_pytorchs():
    torch = pytest.importorskip("torch")
    theirs = torch.amp.GradScaler("cpu", enabled=False)
    assert GradScaler(enabled=False).state_dict() == theirs.state_dict() == {}
    theirs.load_state_dict({})          # accepted there too
    with pytest.raises(RuntimeError, match="empty"):
        torch.amp.GradScaler("cpu").load_state_dict({})


def test_unscale_names_gradients_on_two_devices(gpu_xp, gpu_device):
    """GradScaler.step/unscale_ over gradients on two devices raised 'arrays on different
    devices in one call' from gpunet.backend (either order: the host path and the fused
    device path), naming no function or parameter; now GradScaler.unscale_ and two of the
    parameters with their devices, before any gradient is scaled."""
    from gpunet.layers.base import Parameter
    for first in (numpy, gpu_xp):
        second = gpu_xp if first is numpy else numpy
        a = Parameter(first.asarray(numpy.ones(3, numpy.float32)), "a")
        b = Parameter(second.asarray(numpy.ones(3, numpy.float32)), "b")
        a.grad, b.grad = first.asarray(numpy.full(3, 4.0, numpy.float32)), second.asarray(numpy.full(3, 4.0, numpy.float32))
        da, db = ("cpu", gpu_device) if first is numpy else (gpu_device, "cpu")
        with pytest.raises(TypeError, match=rf"^GradScaler\.unscale_: the gradients are on more than one "
                                            rf"device: params\[0\] \(a\) has its grad on {da}\S*, "
                                            rf"params\[1\] \(b\) on {db}\S*;"):
            GradScaler().step(optim.SGD([a, b], lr=0.1))
        assert float(gpunet.to_numpy(a.grad)[0]) == 4.0 and float(gpunet.to_numpy(b.grad)[0]) == 4.0


class _InfBackward(gpunet.layers.Layer):
    """Identity whose backward makes every gradient before it inf (a float16 overflow that
    no loss scale cures)."""

    def forward(self, x):
        return x

    def backward(self, dy):
        return dy * dy.dtype.type(numpy.inf)


def test_a_loss_scale_that_falls_to_zero_stops_the_run(device, rng):
    """Found by the failure-path audit: with gradients that are inf at every scale, each
    fp16 step was skipped and the scale halved until it reached 0 in float32; on the CPU
    the next unscale_ then raised 'ZeroDivisionError: float division by zero' from inside
    gpunet.amp (observed after 166 steps of the digits MLP), and on the sim the run went on
    for every epoch asked, each step skipped, the loss constant, without a word (observed:
    8 epochs, scale 0, the optimizer's step count 0). GradScaler.update now raises
    FloatingPointError when the scale would become 0 (the host path), and the Trainer reads
    the scale once per epoch on a device (no read in the step)."""
    X = rng.normal(size=(200, 8)).astype(numpy.float32)      # 13 steps an epoch
    y = rng.integers(0, 3, size=200)
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 16, activation="relu"), _InfBackward(), Dense(16, 3)).to(device)
    before = model.state_dict()
    scaler = GradScaler(init_scale=2.0 ** -140)     # ten halvings from 0 in float32
    tr = gpunet.Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1), precision="fp16", scaler=scaler)
    where = r"$" if device == "cpu" else r" \(found at the end of epoch 1\)$"
    with numpy.errstate(over="ignore", invalid="ignore"), pytest.raises(
            FloatingPointError, match=r"^GradScaler: the loss scale fell to 0.*every step backed it off.*no step "
                                      r"would be taken again.*overflows in float32 too" + where):
        tr.fit((X, y), epochs=3, batch_size=16, progress=False)
    for k, v in model.state_dict().items():      # every step was skipped
        numpy.testing.assert_array_equal(gpunet.to_numpy(v), gpunet.to_numpy(before[k]), err_msg=k)
    assert tr.scaler.get_scale() == (2.0 ** -149 if device == "cpu" else 0.0)


def test_the_host_loss_scaler_says_when_its_scale_reaches_zero():
    """GradScaler alone, as a hand-written loop uses it: update() raises FloatingPointError
    instead of leaving a scale of 0, which made the next unscale_ divide by zero."""
    s = GradScaler(init_scale=2.0 ** -148)
    model = Sequential(Dense(2, 2))
    opt = optim.SGD(model, lr=0.1)
    for p in model.parameters():
        p.grad = numpy.full(p.data.shape, numpy.inf, numpy.float32)
    with numpy.errstate(over="ignore"):
        assert s.step(opt) is False
        s.update()
        assert s.get_scale() == 2.0 ** -149
        assert s.step(opt) is False
    with pytest.raises(FloatingPointError, match=r"^GradScaler: the loss scale fell to 0 \(from 1\.4e-45, times 0\.5\)"):
        s.update()
    assert s.get_scale() == 2.0 ** -149
