"""Trainer, History and callbacks; checkpoints and bit-for-bit resume."""
import os
import re

import numpy
import pytest

import gpunet
from gpunet import Dense, Sequential, SoftmaxCrossEntropy, optim
from gpunet.train import Callback, EarlyStopping, ModelCheckpoint, Trainer


def _blobs(rng, n=200, d=8, c=3):
    centers = rng.normal(0, 3, size=(c, d))
    y = rng.integers(0, c, size=n)
    X = (centers[y] + rng.normal(0, 1, size=(n, d))).astype(numpy.float32)
    return X, y.astype(numpy.int64)


def _model(d=8, c=3, seed=0):
    gpunet.manual_seed(seed)
    return Sequential(Dense(d, 16, activation="relu"), Dense(16, c))


def test_fit_learns_and_records_history(xp, device, rng):
    X, y = _blobs(rng)
    model = _model().to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
    h = tr.fit((xp.asarray(X), xp.asarray(y)), val=(xp.asarray(X), xp.asarray(y)), epochs=5,
               batch_size=32, progress=False)
    assert set(h.keys()) == {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert h["learning_rate"] == [0.1] * 5
    assert len(h["loss"]) == 5 and h.epoch == [0, 1, 2, 3, 4]
    assert h["loss"][-1] < h["loss"][0]
    assert h["val_accuracy"][-1] > 0.9
    ev = tr.evaluate((xp.asarray(X), xp.asarray(y)))
    assert ev["accuracy"] == pytest.approx(h["val_accuracy"][-1])
    pred = tr.predict(xp.asarray(X))
    assert isinstance(pred, numpy.ndarray) and pred.shape == (200, 3)
    assert (pred.argmax(1) == y).mean() == pytest.approx(ev["accuracy"])
    assert model.training  # evaluate/predict restore the mode


def test_non_finite_loss_names_epoch_and_step(rng):
    X, y = _blobs(rng)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=1e30))
    # the overflow is the point: NumPy's warnings about it would only be noise in the summary
    with pytest.raises(FloatingPointError, match=r"epoch 1, step \d+"), numpy.errstate(over="ignore", invalid="ignore"):
        tr.fit((X * 1e20, y), epochs=3, batch_size=16, progress=False)


def test_early_stopping_stops_and_restores_best(rng):
    X, y = _blobs(rng)
    model = _model()
    scripted = [5.0, 3.0, 4.0, 3.5, 1.0, 0.5]   # best at epoch 1, then 2 epochs without gain
    seen = []

    class Script(Callback):  # runs before EarlyStopping and sets the monitored value
        def on_epoch_end(self, trainer, epoch, logs):
            logs["val_loss"] = scripted[epoch]
            seen.append(trainer.model.state_dict())

    es = EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    h = tr.fit((X, y), val=(X[:50], y[:50]), epochs=6, batch_size=8, callbacks=[Script(), es],
               progress=False)
    assert (es.best_epoch, es.best, es.stopped_epoch) == (1, 3.0, 3)
    assert h["val_loss"] == [5.0, 3.0, 4.0, 3.5] and len(h["loss"]) == 4
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, seen[1][k])
    assert not numpy.array_equal(seen[1]["0.weight"], seen[3]["0.weight"])


def test_early_stopping_restore_keeps_dropout_drawing_new_masks(xp, device, rng):
    """restore_best puts back the best epoch's weights, not its Dropout counter: a fit after
    the restore draws masks never drawn before (PyTorch's RNG is not in a state_dict)."""
    from gpunet import Dropout
    X, y = _blobs(rng, n=64)
    gpunet.manual_seed(0)
    drop = Dropout(0.5)
    model = Sequential(Dense(8, 16, activation="relu"), drop, Dense(16, 3)).to(device)
    scripted = [1.0, 2.0, 3.0]          # best at epoch 0, then 2 epochs without gain

    class Script(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["val_loss"] = scripted[epoch]
            if epoch == 0:
                weights.update({k: v.copy() for k, v in trainer.model.state_dict().items()})

    weights = {}
    es = EarlyStopping(monitor="val_loss", patience=2, restore_best=True)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    tr.fit((xp.asarray(X), xp.asarray(y)), val=(xp.asarray(X), xp.asarray(y)), epochs=3,
           batch_size=16, callbacks=[Script(), es], progress=False)
    assert es.best_epoch == 0 and es.stopped_epoch == 2
    state = model.state_dict()
    for k in ("0.weight", "0.bias", "2.weight"):       # the best epoch's weights are back
        numpy.testing.assert_array_equal(state[k], weights[k])
    assert int(weights["1.counter"]) == 4               # 4 training forwards by epoch 0's end
    assert drop.counter == 12                            # ... 12 by the end: not rewound


@pytest.mark.parametrize("monitor,scripted", [("val_loss", [5.0, 4.95, 4.0, 3.95, 3.92, 1.0]),
                                               ("val_accuracy", [0.5, 0.55, 0.7, 0.75, 0.78, 0.99])])
def test_early_stopping_min_delta(rng, monitor, scripted):
    """An improvement counts only when it beats the best by more than min_delta (0.1 here),
    lower for a loss, higher for an accuracy: epochs 1, 3 and 4 improve by less."""
    X, y = _blobs(rng)
    model = _model()

    class Script(Callback):  # runs before EarlyStopping and sets the monitored value
        def on_epoch_end(self, trainer, epoch, logs):
            logs[monitor] = scripted[epoch]

    es = EarlyStopping(monitor=monitor, patience=2, min_delta=0.1, restore_best=False)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    h = tr.fit((X, y), val=(X[:50], y[:50]), epochs=6, batch_size=8, callbacks=[Script(), es],
               progress=False)
    assert (es.best_epoch, es.best, es.stopped_epoch) == (2, scripted[2], 4)
    assert len(h["loss"]) == 5


def test_early_stopping_unknown_monitor(rng):
    X, y = _blobs(rng)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="val_loss"):
        tr.fit((X, y), epochs=2, callbacks=[EarlyStopping()], progress=False)


@pytest.mark.parametrize("monitor,scripted", [("val_loss", [5.0, 3.0, 4.0, 2.5, 2.9]),
                                               ("val_accuracy", [0.1, 0.5, 0.4, 0.8, 0.7])])
def test_model_checkpoint_saves_best(tmp_path, rng, monitor, scripted):
    """The file is rewritten only when the monitored value improves (lower loss, higher
    accuracy: mode "auto"), and holds the best epoch's weights and logs."""
    X, y = _blobs(rng)
    model = _model()
    path = tmp_path / "best.npz"
    seen, in_file = [], []

    class Script(Callback):  # runs before ModelCheckpoint and sets the monitored value
        def on_epoch_end(self, trainer, epoch, logs):
            logs[monitor] = scripted[epoch]
            seen.append(trainer.model.state_dict())

    class Read(Callback):    # runs after it: the epoch the file holds now
        def on_epoch_end(self, trainer, epoch, logs):
            in_file.append(gpunet.load(path, _model(seed=5))["epoch"])

    tr = Trainer(model, SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=1e-2))
    tr.fit((X, y), val=(X, y), epochs=5, callbacks=[Script(), ModelCheckpoint(path, monitor=monitor), Read()],
           progress=False)
    assert in_file == [1, 2, 2, 4, 4]          # epochs completed at the improvements 0, 1, 3
    best = _model(seed=5)
    meta = gpunet.load(path, best)
    assert meta["epoch"] == 4 and meta[monitor] == scripted[3]
    for k, v in best.state_dict().items():
        numpy.testing.assert_array_equal(v, seen[3][k])
    assert not numpy.array_equal(seen[3]["0.weight"], seen[4]["0.weight"])


def test_bad_train_argument():
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters()))
    with pytest.raises(TypeError, match="train"):
        tr.fit(numpy.zeros((4, 8), numpy.float32), epochs=1, progress=False)
    with pytest.raises(ValueError, match="metric"):
        Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters()), metrics=("f1",))


# -- checkpoints ---------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path, rng):
    model = _model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    X, y = _blobs(rng)
    Trainer(model, SoftmaxCrossEntropy(), opt).fit((X, y), epochs=1, progress=False)
    path = tmp_path / "ck.npz"
    gpunet.save(path, model, opt, epoch=1, note="hello", scores=[1, 2.5])
    other, other_opt = _model(seed=9), None
    other_opt = optim.Adam(other.parameters(), lr=1e-2)
    meta = gpunet.load(path, other, other_opt)
    assert meta == {"epoch": 1, "note": "hello", "scores": [1, 2.5]}
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, other.state_dict()[k])
    for k, v in opt.state_dict().items():
        numpy.testing.assert_array_equal(v, other_opt.state_dict()[k])
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # no temporary left


def test_load_names_missing_and_mismatched_keys(tmp_path):
    path = tmp_path / "ck.npz"
    gpunet.save(path, _model())
    wider = Sequential(Dense(8, 32, activation="relu"), Dense(32, 3))
    with pytest.raises(ValueError) as e:
        gpunet.load(path, wider)
    assert "'0.weight'" in str(e.value) and "'1.weight'" in str(e.value) and "ck.npz" in str(e.value)
    deeper = Sequential(Dense(8, 16, activation="relu"), Dense(16, 3), Dense(3, 3))
    with pytest.raises(ValueError, match=r"missing keys? .*'2.weight'"):
        gpunet.load(path, deeper)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", b"PK\x03\x04broken"])
def test_load_rejects_garbage(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="bad.npz"):
        gpunet.load(path, _model())


def test_load_rejects_truncated_and_foreign_and_versions(tmp_path):
    good = tmp_path / "good.npz"
    gpunet.save(good, _model())
    data = good.read_bytes()
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="trunc.npz"):
        gpunet.load(trunc, _model())
    foreign = tmp_path / "foreign.npz"
    numpy.savez(foreign, a=numpy.zeros(3))
    with pytest.raises(ValueError, match="foreign.npz.*not a gpunet checkpoint"):
        gpunet.load(foreign, _model())
    future = tmp_path / "future.npz"
    numpy.savez(future, __format__=numpy.asarray(99), __metadata__=numpy.asarray("{}"))
    with pytest.raises(ValueError, match="version 99"):
        gpunet.load(future, _model())
    objs = tmp_path / "objects.npz"
    numpy.savez(objs, __format__=numpy.asarray(1), __metadata__=numpy.asarray("{}"),
                **{"model/0.weight": numpy.array([{"x": 1}], dtype=object)})
    with pytest.raises(ValueError, match="objects.npz"):
        gpunet.load(objs, _model())


def test_crash_mid_save_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "ck.npz"
    model = _model()
    gpunet.save(path, model, tag="old")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(numpy, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        gpunet.save(path, model, tag="new")
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["ck.npz"]


def _regularized_model(seed):
    gpunet.manual_seed(seed)
    return Sequential(Dense(8, 16), gpunet.BatchNorm(16), gpunet.ReLU(), gpunet.Dropout(0.3),
                      Dense(16, 3))


def test_resume_continues_bit_for_bit(tmp_path, rng):
    """Train 4 epochs straight, or 2 + save + load into fresh objects + 2: same bits,
    with Adam moments, BatchNorm running statistics and dropout draw counters in play."""
    X, y = _blobs(rng)

    def make():
        m = _regularized_model(seed=3)
        return m, optim.Adam(m.parameters(), lr=5e-3, weight_decay=1e-3)

    m1, o1 = make()
    h1 = Trainer(m1, SoftmaxCrossEntropy(), o1).fit((X, y), epochs=4, batch_size=16, seed=7, progress=False)

    m2, o2 = make()
    Trainer(m2, SoftmaxCrossEntropy(), o2).fit((X, y), epochs=2, batch_size=16, seed=7, progress=False)
    gpunet.save(tmp_path / "half.npz", m2, o2, epoch=2)
    m3, o3 = _regularized_model(seed=11), None
    o3 = optim.Adam(m3.parameters(), lr=5e-3, weight_decay=1e-3)
    meta = gpunet.load(tmp_path / "half.npz", m3, o3)
    h3 = Trainer(m3, SoftmaxCrossEntropy(), o3).fit((X, y), epochs=4, batch_size=16, seed=7,
                                                      progress=False, initial_epoch=meta["epoch"])
    assert h3["loss"] == h1["loss"][2:]
    for k, v in m1.state_dict().items():
        numpy.testing.assert_array_equal(v, m3.state_dict()[k])


def test_first_layer_skips_data_gradient_only_while_fitting(rng):
    X, y = _blobs(rng)
    model = _model()
    during = []

    class Spy(Callback):
        def on_backward_end(self, trainer):
            during.append((trainer.model[0].input_grad, trainer.model[0].weight.grad is not None))

    Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1)).fit(
        (X, y), epochs=1, batch_size=50, callbacks=[Spy()], progress=False)
    assert during == [(False, True)] * 4
    assert model[0].input_grad is True
    model(X[:3])
    assert model.backward(numpy.ones((3, 3), numpy.float32)).shape == (3, 8)


# -- schedulers and gradient clipping passed to the Trainer ---------------------------------------
def _manual_fit(model, opt, X, y, epochs, batch_size, seed, sched=None, interval="epoch", clip=None):
    """The loop a PyTorch user writes: forward, loss, zero_grad, backward, clip, step, and
    scheduler.step() per step or per epoch."""
    loss_fn = SoftmaxCrossEntropy()
    loader = gpunet.data.DataLoader(X, y, batch_size=batch_size, shuffle=True, seed=seed)
    lrs = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        for xb, yb in loader:
            loss_fn(model(xb), yb)
            model.zero_grad()
            model.backward(loss_fn.backward())
            if clip is not None:
                clip(model.parameters())
            lr = opt.lr
            opt.step()
            if sched is not None and interval == "step":
                sched.step()
        lrs.append(lr)
        if sched is not None and interval == "epoch":
            sched.step()
    return lrs


@pytest.mark.parametrize("make_sched,interval", [
    (lambda o: optim.StepLR(o, step_size=1, gamma=0.5), "epoch"),
    (lambda o: optim.CosineAnnealingLR(o, T_max=30, eta_min=0.01), "step"),
    (lambda o: optim.LinearWarmup(o, warmup_steps=2), "epoch"),
    (lambda o: optim.ExponentialLR(o, gamma=0.97), "step"),
])
def test_scheduler_matches_a_hand_written_loop(rng, make_sched, interval):
    X, y = _blobs(rng, n=100)
    m1 = _model()
    o1 = optim.SGD(m1.parameters(), lr=0.1, momentum=0.9)
    s1 = make_sched(o1)
    h = Trainer(m1, SoftmaxCrossEntropy(), o1, scheduler=s1, scheduler_interval=interval).fit(
        (X, y), epochs=3, batch_size=16, seed=4, progress=False)
    m2 = _model()
    o2 = optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    s2 = make_sched(o2)
    lrs = _manual_fit(m2, o2, X, y, 3, 16, 4, s2, interval)
    assert h["learning_rate"] == lrs and len(set(lrs)) == 3   # the rate changed every epoch
    assert s1.last_epoch == s2.last_epoch == (3 if interval == "epoch" else 21)
    assert o1.lr == o2.lr
    for k, v in m2.state_dict().items():
        numpy.testing.assert_array_equal(m1.state_dict()[k], v)


def test_step_lr_history_is_the_rate_of_each_epoch(rng):
    X, y = _blobs(rng, n=64)
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    h = Trainer(model, SoftmaxCrossEntropy(), opt, scheduler=optim.StepLR(opt, 2, gamma=0.1)).fit(
        (X, y), epochs=5, batch_size=32, progress=False)
    numpy.testing.assert_allclose(h["learning_rate"], [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-12)
    assert opt.lr == pytest.approx(0.001)   # the rate of epoch 5 (0-based), as in PyTorch


@pytest.mark.parametrize("kw,clip", [
    ({"clip_grad_norm": 0.05}, lambda ps: optim.clip_grad_norm(ps, 0.05)),
    ({"clip_grad_value": 0.01}, lambda ps: optim.clip_grad_value(ps, 0.01)),
])
def test_gradient_clipping_matches_a_hand_written_loop(rng, kw, clip):
    X, y = _blobs(rng, n=100)
    m1 = _model()
    o1 = optim.SGD(m1.parameters(), lr=0.1)
    raw, at_step = [], []

    class Spy(Callback):   # callbacks see the raw gradients; the optimizer the clipped ones
        def on_backward_end(self, trainer):
            raw.append(optim.clip_grad_norm(trainer.model.parameters(), float("inf")))

    class Recording(optim.SGD):
        def step(self):
            at_step.append([p.grad.copy() for p in self.params])
            super().step()
    o1 = Recording(m1.parameters(), lr=0.1)
    tr = Trainer(m1, SoftmaxCrossEntropy(), o1, **kw)
    tr.fit((X, y), epochs=2, batch_size=16, seed=1, callbacks=[Spy()], progress=False)
    m2 = _model()
    _manual_fit(m2, optim.SGD(m2.parameters(), lr=0.1), X, y, 2, 16, 1, clip=clip)
    for k, v in m2.state_dict().items():
        numpy.testing.assert_array_equal(m1.state_dict()[k], v)
    if "clip_grad_norm" in kw:
        assert max(raw) > 0.05    # clipping had work to do
        norms = [numpy.sqrt(sum(float((g.astype(numpy.float64) ** 2).sum()) for g in gs)) for gs in at_step]
        assert max(norms) <= 0.05 * (1 + 1e-5)
        assert tr.last_grad_norm == pytest.approx(raw[-1])
    else:
        assert max(float(abs(g).max()) for gs in at_step for g in gs) <= 0.01
        assert max(raw) > 0.01


def test_last_grad_norm_is_a_python_float_on_every_device(xp, device, rng):
    """On the sim (a GPU too) ``trainer.last_grad_norm`` was a 0-d device array where the CPU
    gave a float: a callback that logged it (json.dumps, the History) worked on the CPU and
    failed on the GPU. It is a float on every device now, read from the device only when
    asked (no host sync added to the step)."""
    import json
    X, y = _blobs(rng, n=64)
    model = _model().to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1), clip_grad_norm=0.05)
    assert tr.last_grad_norm is None
    seen = []

    class Norms(Callback):
        def on_batch_end(self, trainer, step, logs):
            seen.append(trainer._last_grad_norm)    # what the step left, unread

    tr.fit((xp.asarray(X), xp.asarray(y)), epochs=1, batch_size=16, progress=False, callbacks=[Norms()])
    # the step keeps a device's norm on the device (read back only when asked for)
    assert all((type(v) is float) == (device == "cpu") for v in seen) and len(seen) == 4
    norm = tr.last_grad_norm
    assert type(norm) is float and norm > 0.05
    assert norm == float(seen[-1])
    assert json.loads(json.dumps({"norm": norm})) == {"norm": norm}


def test_trainer_rejects_bad_scheduler_and_clipping_arguments():
    model = _model()
    opt = optim.SGD(model.parameters(), lr=0.1)
    other = optim.SGD(model.parameters(), lr=0.1)
    loss = SoftmaxCrossEntropy()
    with pytest.raises(ValueError, match="another optimizer"):
        Trainer(model, loss, opt, scheduler=optim.StepLR(other, 2))
    with pytest.raises(TypeError, match="scheduler.*str"):
        Trainer(model, loss, opt, scheduler="step")
    with pytest.raises(ValueError, match="scheduler_interval.*'batch'"):
        Trainer(model, loss, opt, scheduler=optim.StepLR(opt, 2), scheduler_interval="batch")
    with pytest.raises(ValueError, match="not both"):
        Trainer(model, loss, opt, clip_grad_norm=1.0, clip_grad_value=1.0)
    for bad, want in ((0, "> 0, got 0"), (-1.0, "> 0, got -1.0"), (float("nan"), "> 0, got nan"),
                      ("1", r"to be a real number, got '1' \(str\)"), (True, "to be a real number, got True"),
                      (float("inf"), "to be finite, got inf")):
        with pytest.raises(ValueError, match=f"Trainer: expected clip_grad_norm {want}"):
            Trainer(model, loss, opt, clip_grad_norm=bad)
        with pytest.raises(ValueError, match=f"Trainer: expected clip_grad_value {want}"):
            Trainer(model, loss, opt, clip_grad_value=bad)


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_resume_with_scheduler_and_clipping_continues_bit_for_bit(tmp_path, rng, interval):
    """4 epochs straight, or 2 epochs with ModelCheckpoint + load into fresh objects + 2."""
    X, y = _blobs(rng)

    def make(seed=3, lr=5e-3):
        m = _regularized_model(seed)
        o = optim.Adam(m.parameters(), lr=lr)
        s = optim.CosineAnnealingLR(o, T_max=4 if interval == "epoch" else 40, eta_min=1e-4)
        return m, o, s, dict(scheduler=s, scheduler_interval=interval, clip_grad_norm=0.5)

    m1, o1, s1, kw = make()
    h1 = Trainer(m1, SoftmaxCrossEntropy(), o1, **kw).fit((X, y), epochs=4, batch_size=16, seed=7,
                                                           progress=False)
    m2, o2, s2, kw = make()
    path = tmp_path / "last.npz"
    Trainer(m2, SoftmaxCrossEntropy(), o2, **kw).fit(
        (X, y), epochs=2, batch_size=16, seed=7, progress=False,
        callbacks=[ModelCheckpoint(path, save_best_only=False)])
    m3, o3, s3, kw = make(seed=11, lr=0.5)
    meta = gpunet.load(path, m3, o3, scheduler=s3)
    assert meta["epoch"] == 2 and s3.last_epoch == s2.last_epoch and o3.lr == o2.lr
    h3 = Trainer(m3, SoftmaxCrossEntropy(), o3, **kw).fit(
        (X, y), epochs=4, batch_size=16, seed=7, progress=False, initial_epoch=meta["epoch"])
    assert h3["loss"] == h1["loss"][2:] and h3["learning_rate"] == h1["learning_rate"][2:]
    assert o3.lr == o1.lr and s3.last_epoch == s1.last_epoch
    for k, v in m1.state_dict().items():
        numpy.testing.assert_array_equal(v, m3.state_dict()[k])


# -- predict with array-likes; empty data -------------------------------------------------------------
def test_predict_accepts_lists_cast_to_the_model_dtype(rng):
    X, y = _blobs(rng, n=20)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters()))
    # the same batches on both sides: a batch of other rows may change the last bits (the
    # AMD EPYC host's OpenBLAS, Haswell kernels: 23 of 60 outputs for batches of 7 and 20)
    want = tr.predict(X, batch_size=7)
    got = tr.predict(X.astype(numpy.float64).tolist(), batch_size=7)   # Python floats: float64
    assert got.dtype == numpy.float32
    numpy.testing.assert_array_equal(got, want)
    numpy.testing.assert_array_equal(tr.predict([list(r) for r in X[:3]]), tr.predict(X[:3]))
    numpy.testing.assert_array_equal(tr.predict(tuple(X[:2].tolist())), tr.predict(X[:2]))


def test_predict_holds_its_outputs_once(device, rng):
    """Found by the inference audit: predict kept every batch's output in a list and then
    concatenated them, so its memory peaked at twice the output (traced: 16.4 MB for the
    8 MB output of 200,000 rows x 10 classes). It now writes each batch into one array:
    traced peak within the output plus a little, the numbers those of the batches as the
    model gives them, on every backend. (A memory bound, measured by tracemalloc, not time.)"""
    import tracemalloc
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 16, activation="relu"), Dense(16, 64)).to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters()))
    X = rng.normal(size=(20000, 8)).astype(numpy.float32)
    tracemalloc.start()
    try:
        out = tr.predict(X, batch_size=256)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (20000, 64) and out.dtype == numpy.float32 and isinstance(out, numpy.ndarray)
    assert peak < 1.5 * out.nbytes, (peak, out.nbytes)
    model.eval()
    want = numpy.concatenate([gpunet.to_numpy(model(gpunet.to_device(X[i:i + 256], device)))
                              for i in range(0, 20000, 256)])
    numpy.testing.assert_array_equal(out, want)


def test_predict_rejects_what_is_not_array_like():
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters()))
    with pytest.raises(TypeError, match="Trainer.predict.*list"):
        tr.predict([[1.0, 2.0], [3.0]])   # ragged
    with pytest.raises(TypeError, match="Trainer.predict.*list"):
        tr.predict([["a"] * 8])
    with pytest.raises(TypeError, match="Trainer.predict.*dict"):
        tr.predict({"x": 1})
    with pytest.raises(ValueError, match=r"Trainer.predict: X is empty.*\(0, 8\)"):
        tr.predict(numpy.zeros((0, 8), numpy.float32))
    with pytest.raises(ValueError, match="Trainer.predict: X is empty"):
        tr.predict([])
    with pytest.raises(ValueError, match="batch_size"):
        tr.predict(numpy.zeros((2, 8), numpy.float32), batch_size=0)
    # found by the data audit: a DataLoader was 'got DataLoader converting to dtype object', and
    # Keras' predict given the (X, y) pair got NumPy's inhomogeneous-shape text alone
    X, y = numpy.zeros((5, 8), numpy.float32), numpy.zeros(5, numpy.int64)
    with pytest.raises(TypeError, match=r"^Trainer\.predict: expected X as an array, got a DataLoader; pass "
                                        r"its samples: predict\(loader\.X\)$"):
        tr.predict(gpunet.DataLoader(X, y, shuffle=True))
    with pytest.raises(TypeError, match=r"^Trainer\.predict: .*; X goes alone \(labels go with "
                                        r"evaluate\(\(X, y\)\)\)$"):
        tr.predict((X, y))


def test_fit_and_evaluate_reject_empty_data(rng):
    X, y = _blobs(rng, n=10)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters()))
    with pytest.raises(ValueError, match=r"Trainer.fit: train is empty.*\(0, 8\)"):
        tr.fit((X[:0], y[:0]), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"Trainer.fit: val is empty"):
        tr.fit((X, y), val=(X[:0], y[:0]), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"Trainer.evaluate: data is empty"):
        tr.evaluate((X[:0], y[:0]))
    with pytest.raises(ValueError, match=r"Trainer.fit: train yields no batch \(10 samples, batch_size 16"):
        tr.fit(gpunet.data.DataLoader(X, y, batch_size=16, drop_last=True), epochs=1, progress=False)
    with pytest.raises(ValueError, match=r"Trainer.evaluate: data yields no batch"):
        tr.evaluate(gpunet.data.DataLoader(X, y, batch_size=16, drop_last=True))


def test_fit_and_evaluate_with_sum_and_none_reductions(rng):
    """The logged loss is the per-sample mean whatever the reduction."""
    X, y = _blobs(rng, n=50)
    model = _model()
    mean = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters())).evaluate((X, y), batch_size=16)
    for reduction in ("sum", "none"):
        tr = Trainer(model, SoftmaxCrossEntropy(reduction=reduction), optim.SGD(model.parameters()))
        ev = tr.evaluate((X, y), batch_size=16)
        assert ev["loss"] == pytest.approx(mean["loss"], rel=1e-6) and ev["accuracy"] == mean["accuracy"]
    m1, m2 = _model(), _model()
    h1 = Trainer(m1, SoftmaxCrossEntropy(reduction="none"), optim.SGD(m1.parameters(), lr=0.01)).fit(
        (X, y), epochs=2, batch_size=10, progress=False)
    h2 = Trainer(m2, SoftmaxCrossEntropy(reduction="sum"), optim.SGD(m2.parameters(), lr=0.01)).fit(
        (X, y), epochs=2, batch_size=10, progress=False)
    assert h1["loss"] == pytest.approx(h2["loss"], rel=1e-6)
    for k, v in m1.state_dict().items():   # "none" trains on the gradient of the sum
        numpy.testing.assert_allclose(v, m2.state_dict()[k], rtol=1e-6, atol=1e-7)


def test_batch_end_loss_is_a_float_on_the_cpu_and_a_device_scalar_on_a_gpu(device, rng):
    """On a GPU the step hands callbacks the batch loss without reading it (no host sync);
    its value is the one the epoch's loss is made of."""
    X, y = _blobs(rng, n=64)
    model = _model().to(device)
    seen = []

    class Grab(Callback):
        def on_batch_end(self, trainer, step, logs):
            seen.append(logs["loss"])

    h = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1)).fit(
        (X, y), epochs=1, batch_size=16, shuffle=False, callbacks=[Grab()], progress=False)
    assert len(seen) == 4
    assert all(isinstance(v, float) for v in seen) == (device == "cpu")
    assert h["loss"][0] == pytest.approx(sum(float(v) for v in seen) / 4, rel=1e-12)


def test_evaluate_raises_a_bad_label_on_every_device(device, rng):
    """On the CPU at the call; on a GPU when evaluate reads its record, once, at the end."""
    X, y = _blobs(rng, n=40)
    y[33] = 5
    model = _model().to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters()))
    with pytest.raises(ValueError, match="5"):
        tr.evaluate((X, y), batch_size=16)
    y[33] = 1
    assert tr.evaluate((X, y), batch_size=16)["loss"] > 0     # nothing left pending


# -- argument checks (found by fuzzing) --------------------------------------------------------

def _fuzz_trainer():
    m = gpunet.Sequential(gpunet.Dense(4, 8, activation="relu"), gpunet.Dense(8, 3))
    return m, gpunet.Trainer(m, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(m, lr=0.1))


def _fuzz_data():
    rng = numpy.random.default_rng(0)
    return rng.standard_normal((20, 4)).astype(numpy.float32), numpy.arange(20) % 3


@pytest.mark.parametrize("which,value,err,msg", [
    ("model", None, TypeError, "expected model to be a gpunet Layer, got NoneType"),
    ("loss", "ce", TypeError, "expected loss_fn to be a loss object with backward"),
    ("loss", None, TypeError, "expected loss_fn to be a loss object with backward"),
    ("opt", None, TypeError, "expected optimizer to be a gpunet optimizer"),
    ("opt", "other", ValueError, "the optimizer updates none of the model's parameters"),
])
def test_trainer_checks_model_loss_and_optimizer(which, value, err, msg):
    """None used to fail later with AttributeError / 'NoneType' object is not callable (at
    fit), and an optimizer over another model trained nothing, silently."""
    m = gpunet.Dense(4, 3)
    loss, opt = gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(m)
    if which == "model":
        m = value
    elif which == "loss":
        loss = value
    elif value == "other":
        opt = gpunet.optim.SGD(gpunet.Dense(4, 3))
    else:
        opt = value
    with pytest.raises(err, match=f"Trainer: {msg}"):
        gpunet.Trainer(m, loss, opt)


@pytest.mark.parametrize("kw,msg", [
    ({"epochs": -1}, "expected epochs to be an int >= 0, got -1"),
    ({"epochs": 1.5}, "expected epochs to be an int >= 0, got 1.5"),
    ({"epochs": "2"}, "expected epochs to be an int >= 0, got '2'"),
    ({"initial_epoch": -1}, "expected initial_epoch to be an int >= 0"),
    ({"callbacks": "x"}, "expected callbacks to be a list of callbacks, got str"),
    ({"callbacks": [3]}, r"callbacks\[0\] must be a gpunet.train.Callback"),
    ({"callbacks": gpunet.EarlyStopping()}, "expected callbacks to be a list of callbacks, got EarlyStopping"),
    # found by the Trainer audit: the class itself passed the hook check and then raised
    # "on_train_begin() missing 1 required positional argument: 'trainer'"
    # found by the Trainer audit: these named DataLoader, not the call the user made
    ({"batch_size": 0}, "expected batch_size to be a positive int, got 0"),
    ({"batch_size": "8"}, "expected batch_size to be a positive int, got '8'"),
    ({"seed": -1}, "expected seed to be None or an int >= 0, got -1"),
    ({"callbacks": [gpunet.EarlyStopping]},
     r"expected callbacks\[0\] to be a callback object, got the class EarlyStopping; create one"),
])
def test_fit_checks_epochs_and_callbacks(kw, msg):
    """epochs=-1 used to train nothing and 1.5 one epoch, silently; callbacks='x' or [3]
    raised AttributeError, a bare callback 'object is not iterable'."""
    _, t = _fuzz_trainer()
    X, y = _fuzz_data()
    with pytest.raises((TypeError, ValueError), match=f"Trainer.fit: {msg}"):
        t.fit((X, y), progress=False, **kw)


@pytest.mark.parametrize("kw", [{"progress": "no"}, {"progress": 0}, {"shuffle": "no"}, {"shuffle": None}])
def test_fit_flags_are_bools(kw):
    """Found by the Trainer audit: progress='no' drew the bar (taken by truthiness) and
    shuffle='no' shuffled; now TypeError, as gpunet._args.flag raises for every flag."""
    _, t = _fuzz_trainer()
    X, y = _fuzz_data()
    (name, value), = kw.items()
    with pytest.raises(TypeError, match=f"^Trainer.fit: expected {name} to be a bool .*, got {value!r}"):
        t.fit((X, y), epochs=1, **kw)
    assert t.global_step == 0


@pytest.mark.parametrize("cls,args,name", [(EarlyStopping, (), "restore_best"),
                                           (ModelCheckpoint, ("m.npz",), "save_best_only")])
def test_callback_flags_are_bools(cls, args, name):
    """Found by the Trainer audit: restore_best='no' and save_best_only='no' meant True."""
    with pytest.raises(TypeError, match=f"^{cls.__name__}: expected {name} to be a bool .*, got 'no'"):
        cls(*args, **{name: "no"})
    assert getattr(cls(*args, **{name: numpy.bool_(False)}), name) is False


def test_fit_takes_callbacks_none_as_keras_does():
    """Found by the Trainer audit: callbacks=None (Keras' default, which its users write)
    raised 'expected callbacks to be a list of callbacks, got NoneType'."""
    _, t = _fuzz_trainer()
    X, y = _fuzz_data()
    assert t.fit((X, y), epochs=1, callbacks=None, progress=False).epoch == [0]


def test_evaluate_and_predict_name_themselves_for_a_bad_batch_size():
    """Found by the Trainer audit: evaluate(batch_size=0) named DataLoader."""
    _, t = _fuzz_trainer()
    X, y = _fuzz_data()
    with pytest.raises(ValueError, match=r"^Trainer.evaluate: expected batch_size to be a positive int, got 0"):
        t.evaluate((X, y), batch_size=0)
    with pytest.raises(TypeError, match=r"^Trainer.predict: expected batch_size to be a positive int, got 2.0"):
        t.predict(X, batch_size=2.0)


def test_fit_names_missing_labels():
    """(X, None) used to fail with 'too many values to unpack (expected 2)'."""
    _, t = _fuzz_trainer()
    X, _ = _fuzz_data()
    with pytest.raises(TypeError, match=r"Trainer.fit: train must be an \(X, y\) tuple with labels y, got y=None"):
        t.fit((X, None), epochs=1, progress=False)


@pytest.mark.parametrize("kw,msg", [
    ({"patience": "a"}, "expected patience to be an int >= 0, got 'a'"),
    ({"patience": 1.5}, "expected patience to be an int >= 0, got 1.5"),
    ({"min_delta": "a"}, r"expected min_delta to be a real number, got 'a' \(str\)"),
    ({"min_delta": -1}, "expected min_delta >= 0, got -1"),
    ({"min_delta": float("inf")}, "expected min_delta to be finite, got inf"),
])
def test_early_stopping_checks_its_arguments(kw, msg):
    """Found by fuzzing: 'a' raised int()/float()'s message, patience=1.5 became 1 silently."""
    with pytest.raises(ValueError, match=f"EarlyStopping: {msg}"):
        EarlyStopping(**kw)


@pytest.mark.parametrize("cls,args", [(EarlyStopping, ()), (ModelCheckpoint, ("m.npz",))])
@pytest.mark.parametrize("kw,err,msg", [
    ({"mode": "maximize"}, ValueError, "expected mode to be 'auto', 'min' or 'max', got 'maximize'"),
    ({"mode": None}, ValueError, "expected mode to be 'auto', 'min' or 'max', got None"),
    ({"monitor": 5}, TypeError, "expected monitor to be the name of a logged value .*, got 5"),
    ({"monitor": None}, TypeError, "expected monitor to be the name of a logged value .*, got None"),
])
def test_callbacks_name_themselves_in_monitor_and_mode_errors(cls, args, kw, err, msg):
    """Found by the Trainer audit: mode='maximize' raised 'mode must be ...' without naming
    the callback, and a monitor that is not a str raised "argument of type 'int' is not
    iterable" from inside the mode check."""
    with pytest.raises(err, match=f"^{cls.__name__}: {msg}"):
        cls(*args, **kw)


@pytest.mark.parametrize("kw,err,msg", [
    ({"metrics": 5}, TypeError, r"expected metrics to be a tuple of metric names such as \('accuracy',\), got int"),
    ({"metrics": ("accuracy", 5)}, ValueError, "unknown metric 5"),
    ({"device": "gpu"}, ValueError, "device='gpu': unknown device 'gpu'"),
    ({"scheduler": optim.StepLR}, TypeError, r"expected scheduler to be an object, got the class StepLR; create one"),
    ({"precision": "fp16", "scaler": gpunet.amp.GradScaler}, TypeError,
     r"expected scaler to be an object, got the class GradScaler; create one: GradScaler\(\)"),
])
def test_trainer_names_itself_for_bad_metrics_and_device(kw, err, msg):
    """Found by the Trainer audit: metrics=5 raised "'int' object is not iterable" and
    device='gpu' the backend's message without naming the Trainer or its argument; the
    class StepLR (not an instance) was said to 'schedule another optimizer', the class
    GradScaler was reported as 'got type'."""
    m = gpunet.Sequential(gpunet.Dense(4, 3))
    with pytest.raises(err, match=f"^Trainer: {msg}"):
        gpunet.Trainer(m, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(m, lr=0.1), **kw)


def test_model_checkpoint_checks_its_path_before_training(tmp_path):
    """Found by fuzzing: path None raised os.fspath's TypeError, and a folder or a missing
    folder raised IsADirectoryError/FileNotFoundError after the first epoch had trained."""
    with pytest.raises(TypeError, match="ModelCheckpoint: expected path to be a str or os.PathLike, got NoneType"):
        ModelCheckpoint(None)
    X, y = _fuzz_data()
    for path, msg in ((str(tmp_path), "is a directory"), (str(tmp_path / "no" / "m.npz"), "no such directory")):
        _, t = _fuzz_trainer()
        with pytest.raises(ValueError, match=f"ModelCheckpoint: path .*{msg}"):
            t.fit((X, y), val=(X, y), epochs=1, progress=False, callbacks=[ModelCheckpoint(path)])
        assert t.global_step == 0            # before the first step, not after an epoch



@pytest.mark.parametrize("loader", [False, True], ids=["tuple", "DataLoader"])
def test_a_second_fit_goes_on_with_new_shuffles(loader):
    """fit(epochs=2) twice on one Trainer trains as fit(epochs=4) once: the second fit takes
    the shuffles of epochs 2 and 3 (found by the data audit: each fit started again at epoch
    0's order, so fit(epochs=1) in a loop visited the samples in one order every time, where
    Keras' fit and a PyTorch DataLoader reshuffle). initial_epoch still picks the order."""
    X, y = _blobs(numpy.random.default_rng(0), n=50)

    def run(*fits):
        gpunet.manual_seed(0)
        model = _model()
        trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1, momentum=0.9))
        data = gpunet.data.DataLoader(X, y, batch_size=8, shuffle=True, seed=3) if loader else (X, y)
        for kw in fits:
            trainer.fit(data, batch_size=8, seed=3, progress=False, **kw)
        return [p.data.copy() for p in model.parameters()]

    once = run(dict(epochs=4))
    for a, b in zip(once, run(dict(epochs=2), dict(epochs=2))):
        numpy.testing.assert_array_equal(a, b)
    for a, b in zip(once, run(dict(epochs=2), dict(epochs=4, initial_epoch=2))):
        numpy.testing.assert_array_equal(a, b)
    again = run(dict(epochs=2), dict(epochs=3, initial_epoch=1))    # 4 epochs, orders 0, 1, 1, 2
    assert any(not numpy.array_equal(a, b) for a, b in zip(once, again))

@pytest.mark.parametrize("loss, targets", [("bce", "float"), ("mse", "float"), ("bce", "int")])
def test_accuracy_of_one_output_column_is_binary_accuracy(loss, targets):
    """One output column has no argmax to take (it is always 0, which made every such model
    score 1.0): accuracy is then binary, the output thresholded at 0 for BCEWithLogits
    (logits) and at 0.5 otherwise, against targets > 0.5, as Keras's binary accuracy."""
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((40, 3)).astype(numpy.float32)
    y = (x[:, 0] > 0.2).astype(numpy.float32 if targets == "float" else numpy.int64)
    gpunet.manual_seed(0)
    model = Sequential(Dense(3, 1))
    loss_fn = gpunet.losses.BCEWithLogits() if loss == "bce" else gpunet.losses.MSELoss()
    trainer = Trainer(model, loss_fn, optim.SGD(model, lr=0.0))
    logs = trainer.evaluate((x, y.reshape(-1, 1)), batch_size=16)
    model.eval()
    out = model(x)[:, 0]
    expect = numpy.mean((out > (0.0 if loss == "bce" else 0.5)) == (y > 0.5))
    assert 0.0 < expect < 1.0                      # a model that gets some right, some wrong
    assert logs["accuracy"] == pytest.approx(expect)



def _accuracy_reference(out, y, threshold):
    """Keras' binary accuracy over every element of each sample, averaged per sample."""
    n = out.shape[0]
    return float(numpy.mean(numpy.mean((out.reshape(n, -1) > threshold) == (y.reshape(n, -1) > 0.5), axis=1)))


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_accuracy_of_image_outputs_is_per_element(loss, device):
    """Outputs with more than one element per sample and one channel (a convolutional
    autoencoder's or a segmentation mask's (N, 1, H, W)) under the default metrics: the
    accuracy is the binary accuracy of every element, as for one output column (found by the
    data audit: fit and evaluate crashed inside NumPy, 'operands could not be broadcast
    together with shapes (4,6,6) (4,1,6,6) (4,)'), in fit's History and evaluate, and the
    same on every backend."""
    rng = numpy.random.default_rng(0)
    x = rng.random((10, 1, 6, 6), dtype=numpy.float32)
    y = (x > 0.5).astype(numpy.float32)
    gpunet.manual_seed(0)
    model = Sequential(gpunet.Conv2D(1, 1, 3, padding=1)).to(device)
    loss_fn = gpunet.losses.BCEWithLogits() if loss == "bce" else gpunet.losses.MSELoss()
    trainer = Trainer(model, loss_fn, optim.SGD(model, lr=0.0))
    h = trainer.fit((x, y), epochs=1, batch_size=4, progress=False)
    ev = trainer.evaluate((x, y), batch_size=3)
    expect = _accuracy_reference(trainer.predict(x), y, 0.0 if loss == "bce" else 0.5)
    assert 0.0 < expect < 1.0
    assert ev["accuracy"] == pytest.approx(expect)
    assert h["accuracy"][0] == pytest.approx(expect)


def test_accuracy_with_bce_and_several_columns_is_binary_accuracy(device):
    """BCEWithLogits over several columns (multi-label targets) is scored as Keras scores
    binary cross-entropy: each (sample, column) a binary hit of the logit above 0 against the
    target above 0.5, not the argmax of the logits against the argmax of the 0/1 targets (0.5
    where the elements scored 0.44)."""
    rng = numpy.random.default_rng(5)
    x = rng.standard_normal((12, 6)).astype(numpy.float32)
    y = (rng.random((12, 3)) < 0.5).astype(numpy.float32)
    gpunet.manual_seed(0)
    model = Sequential(Dense(6, 5, activation="relu"), Dense(5, 3)).to(device)
    trainer = Trainer(model, gpunet.losses.BCEWithLogits(), optim.SGD(model, lr=0.0))
    out = trainer.predict(x)
    expect = _accuracy_reference(out, y, 0.0)
    assert expect != pytest.approx(float(numpy.mean(out.argmax(1) == y.argmax(1))))
    assert trainer.evaluate((x, y), batch_size=5)["accuracy"] == pytest.approx(expect)


def test_accuracy_of_several_channels_is_the_argmax_per_position(device):
    """(N, C, H, W) outputs with C > 1 against targets of that shape: each position is a hit
    when the argmax along axis 1 (the channels) agrees, and a sample scores the fraction of its
    positions that do; targets the outputs cannot be compared with raise ValueError naming
    both shapes, instead of NumPy's broadcasting error."""
    rng = numpy.random.default_rng(2)
    x = rng.random((7, 1, 5, 5), dtype=numpy.float32)
    y = rng.random((7, 3, 5, 5), dtype=numpy.float32)
    gpunet.manual_seed(0)
    model = Sequential(gpunet.Conv2D(1, 3, 3, padding=1)).to(device)
    trainer = Trainer(model, gpunet.losses.MSELoss(), optim.SGD(model, lr=0.0))
    out = trainer.predict(x)
    expect = float(numpy.mean(out.argmax(1) == y.argmax(1)))
    assert 0.0 < expect < 1.0
    assert trainer.evaluate((x, y), batch_size=4)["accuracy"] == pytest.approx(expect)

    class Mean(gpunet.losses.Loss):     # a loss of the user's that takes any targets
        def forward(self, z, t):
            self._grad = z * 0.0
            return z.mean()
    trainer = Trainer(model, Mean(), optim.SGD(model, lr=0.0))
    with pytest.raises(ValueError, match=r"accuracy metric cannot compare outputs of shape \(4, 3, 5, 5\) "
                                         r"with targets of shape \(4, 2\)"):
        trainer.evaluate((x, numpy.zeros((7, 2), numpy.float32)), batch_size=4)

def test_accuracy_and_loss_leave_out_the_loss_ignore_index(xp, device):
    """Rows labelled with the loss's ignore_index are neither hits nor counted: the accuracy
    is over the other rows (it counted them as misses: 0.18 where the other rows scored
    0.27), in evaluate, in fit's History, and on every backend. The loss is the mean over
    the other rows whatever the batch size (each batch's mean was weighted by its size,
    ignored rows included: the epoch's loss changed with the shuffle at lr 0)."""
    rng = numpy.random.default_rng(1)
    x = rng.standard_normal((50, 8)).astype(numpy.float32)
    y = rng.integers(0, 3, 50)
    y[::3] = -100
    gpunet.manual_seed(0)
    model = _model().to(device)
    trainer = Trainer(model, SoftmaxCrossEntropy(ignore_index=-100), optim.SGD(model, lr=0.0))
    out = trainer.predict(x)
    keep = y != -100
    expect = float(numpy.mean(out.argmax(axis=1)[keep] == y[keep]))
    assert 0.0 < expect < 1.0
    xd, yd = xp.asarray(x), xp.asarray(y)
    assert trainer.evaluate((xd, yd), batch_size=16)["accuracy"] == pytest.approx(expect)
    history = trainer.fit((xd, yd), epochs=1, batch_size=16, progress=False)
    assert history["accuracy"] == [pytest.approx(expect)]
    whole = float(SoftmaxCrossEntropy(ignore_index=-100)(out, y))   # one call over all rows
    for batch_size in (7, 16, 50):
        assert trainer.evaluate((xd, yd), batch_size=batch_size)["loss"] == pytest.approx(whole, rel=1e-6)
    history = trainer.fit((xd, yd), epochs=3, batch_size=16, progress=False)
    assert history["loss"] == [pytest.approx(whole, rel=1e-6)] * 3
    # without ignore_index every row counts (a label of -100 would be an error there)
    plain = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.0))
    y2 = numpy.where(keep, y, 0)
    assert plain.evaluate((xp.asarray(x), xp.asarray(y2)))["accuracy"] == pytest.approx(
        float(numpy.mean(out.argmax(axis=1) == y2)))


def test_a_monitor_missing_from_the_logs_is_named_with_what_is_there(rng, tmp_path):
    """EarlyStopping and ModelCheckpoint list the epoch's keys, and suggest val= only when
    fit had none (found by the first-hour audit: a typo'd 'val_acc' beside a val_accuracy
    got 'pass val= to fit', and ModelCheckpoint gave no hint without val)."""
    X, y = _blobs(rng)
    for cb, who in ((lambda m: EarlyStopping(monitor=m), "EarlyStopping"),
                    (lambda m: ModelCheckpoint(str(tmp_path / "m.npz"), monitor=m), "ModelCheckpoint")):
        model = _model()
        tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
        # (a typo; Keras' old 'val_acc' is named before training: test_keras_old_accuracy_names...)
        with pytest.raises(ValueError, match=rf"{who}: monitor 'val_acuracy' is not among the epoch's logs "
                                             r"\[.*'val_accuracy', 'val_loss'\]$"):
            tr.fit((X, y), val=(X, y), epochs=1, callbacks=[cb("val_acuracy")], progress=False)
        with pytest.raises(ValueError, match=rf"{who}: monitor 'val_f1' .*\['accuracy', 'learning_rate', "
                                             r"'loss'\]; pass val= to fit to get val_\* keys"):
            tr.fit((X, y), epochs=1, callbacks=[cb("val_f1")], progress=False)


@pytest.mark.parametrize("monitor", ["val_loss", "val_accuracy"])
def test_monitoring_validation_keys_without_val_fails_before_training(rng, tmp_path, monitor):
    """Found by the Trainer audit: EarlyStopping() (monitor='val_loss', its default) without
    val= trained a whole epoch before failing. Now fit refuses before the first step; a
    ModelCheckpoint saving every epoch monitors nothing and is let through."""
    X, y = _blobs(rng)
    for cb in (EarlyStopping(monitor=monitor), ModelCheckpoint(str(tmp_path / "m.npz"), monitor=monitor)):
        model = _model()
        tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
        with pytest.raises(ValueError, match=rf"^Trainer.fit: {type(cb).__name__} monitors '{monitor}', "
                                             rf"which needs validation data: pass val=\(X_val, y_val\) "
                                             rf"to fit, or monitor '{monitor[4:]}'"):
            tr.fit((X, y), epochs=1, callbacks=[cb], progress=False)
        assert tr.global_step == 0
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    every = ModelCheckpoint(str(tmp_path / "e.npz"), monitor=monitor, save_best_only=False)
    tr.fit((X, y), epochs=1, callbacks=[every], progress=False)
    assert (tmp_path / "e.npz").exists()

    class Writes(Callback):         # a callback of the user's own may log the key itself
        def on_epoch_end(self, trainer, epoch, logs):
            logs[monitor] = 1.0
    stop = EarlyStopping(monitor=monitor, patience=0)
    tr.fit((X, y), epochs=2, callbacks=[Writes(), stop], progress=False)
    assert stop.best == 1.0 and stop.stopped_epoch == 1


@pytest.mark.parametrize("monitor, val", [("accuracy", False), ("val_accuracy", True)])
def test_monitoring_accuracy_without_the_metric_fails_before_training(rng, monitor, val):
    """Found by the Trainer audit: Trainer(metrics=()) with EarlyStopping(monitor='accuracy')
    trained an epoch, then said 'accuracy' was not among the logs."""
    X, y = _blobs(rng)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1), metrics=())
    with pytest.raises(ValueError, match=rf"^Trainer.fit: EarlyStopping monitors '{monitor}', which this "
                                         r"Trainer does not compute \(it was built with metrics=\(\)\); "
                                         r"build it with metrics=\('accuracy',\)"):
        tr.fit((X, y), val=(X, y) if val else None, epochs=1, progress=False,
               callbacks=[EarlyStopping(monitor=monitor)])
    assert tr.global_step == 0


def test_initial_epoch_past_epochs_is_refused():
    """Found by the Trainer audit: fit(epochs=2, initial_epoch=3), which a user writes who
    reads epochs as a count, trained nothing and returned an empty History."""
    _, t = _fuzz_trainer()
    X, y = _fuzz_data()
    with pytest.raises(ValueError, match=r"^Trainer.fit: initial_epoch=3 is past epochs=2; epochs is the "
                                         r"epoch to stop at, .*: for 2 more epochs pass epochs=5$"):
        t.fit((X, y), epochs=2, initial_epoch=3, progress=False)
    assert t.fit((X, y), epochs=3, initial_epoch=3, progress=False).epoch == []   # nothing left: fine


@pytest.mark.parametrize("steps_per_epoch", [4, 5])
def test_global_step_of_a_resumed_run_counts_the_epochs_before_it(tmp_path, steps_per_epoch):
    """Found by the Trainer audit: a run resumed on a fresh Trainer (gpunet.load, then
    fit(initial_epoch=k)) counted global_step from 0, so it ended k epochs' steps short of
    the run that never stopped. A Trainer that has stepped keeps counting."""
    rng = numpy.random.default_rng(0)
    X, y = rng.standard_normal((16 * steps_per_epoch - 3, 4)).astype(numpy.float32), rng.integers(0, 3, 16 * steps_per_epoch - 3)
    path = str(tmp_path / "last.npz")
    _, full = _fuzz_trainer()
    full.fit((X, y), epochs=3, batch_size=16, progress=False)
    assert full.global_step == 3 * steps_per_epoch
    _, first = _fuzz_trainer()
    first.fit((X, y), epochs=2, batch_size=16, progress=False,
              callbacks=[ModelCheckpoint(path, monitor="loss", save_best_only=False)])
    model, resumed = _fuzz_trainer()
    meta = gpunet.load(path, model, resumed.optimizer)

    class Seen(Callback):
        def on_train_begin(self, trainer):
            self.at_begin = trainer.global_step
    seen = Seen()
    resumed.fit((X, y), epochs=3, initial_epoch=meta["epoch"], batch_size=16, progress=False,
                callbacks=[seen])
    assert seen.at_begin == 2 * steps_per_epoch         # callbacks see it from the start
    assert resumed.global_step == full.global_step
    first.fit((X, y), epochs=3, initial_epoch=2, batch_size=16, progress=False)   # the same Trainer
    assert first.global_step == full.global_step


def test_model_checkpoint_keeps_its_best_value_across_fits_and_takes_an_initial_one(tmp_path, rng):
    """Continuing a run with a second fit and the same ModelCheckpoint used to overwrite the
    best epoch's file with the next epoch, however bad (its best was reset at each fit);
    Keras keeps it, and takes initial_value_threshold for a run resumed in a new process."""
    X, y = _blobs(rng)
    path = tmp_path / "best.npz"
    scripted = {0: 1.0, 1: 0.5, 2: 0.9, 3: 0.4, 4: 0.7}

    class Script(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["val_loss"] = scripted[epoch]

    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.Adam(model, lr=1e-2))
    ck = ModelCheckpoint(path)
    tr.fit((X, y), epochs=2, callbacks=[Script(), ck], progress=False)
    assert gpunet.load(path, _model())["epoch"] == 2 and ck.best == 0.5
    tr.fit((X, y), epochs=3, initial_epoch=2, callbacks=[Script(), ck], progress=False)
    assert gpunet.load(path, _model())["epoch"] == 2          # not 3 (0.9 > 0.5)
    tr.fit((X, y), epochs=4, initial_epoch=3, callbacks=[Script(), ck], progress=False)
    assert gpunet.load(path, _model())["epoch"] == 4          # 0.4 < 0.5

    meta = gpunet.load(path, _model())
    fresh = ModelCheckpoint(path, initial_value_threshold=meta["val_loss"])
    tr.fit((X, y), epochs=5, initial_epoch=4, callbacks=[Script(), fresh], progress=False)
    assert gpunet.load(path, _model())["epoch"] == 4          # 0.7 > 0.4: kept
    for bad in ("0.5", float("nan"), True):
        with pytest.raises(ValueError, match="ModelCheckpoint: expected initial_value_threshold"):
            ModelCheckpoint(path, initial_value_threshold=bad)


def test_a_nan_epoch_is_never_the_best_one(tmp_path, rng):
    """A NaN monitored value in the first epoch used to become the best value for good (no
    later value compares better than NaN): EarlyStopping stopped a run that kept improving
    and ModelCheckpoint kept the NaN epoch. As in Keras, NaN never improves."""
    X, y = _blobs(rng)
    scripted = [float("nan"), 0.5, 0.3, float("nan"), 0.2]

    class Script(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["val_loss"] = scripted[epoch]

    model = _model()
    path = tmp_path / "best.npz"
    stop, ck = EarlyStopping(patience=2), ModelCheckpoint(path)
    h = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model)).fit(
        (X, y), epochs=5, callbacks=[Script(), ck, stop], progress=False)
    assert len(h.epoch) == 5 and stop.stopped_epoch is None
    assert (stop.best, stop.best_epoch, ck.best) == (0.2, 4, 0.2)
    assert gpunet.load(path, _model())["epoch"] == 5


def test_keras_fit_habits_say_what_gpunet_takes():
    """Found by the second first-hour audit: Keras' trainer.fit(X, y) and evaluate(X, y)
    said only 'train must be an (X, y) tuple or a DataLoader, got ndarray', and
    validation_data= / verbose= were Python's bare 'unexpected keyword argument'."""
    (X, y), _ = gpunet.datasets.load_digits()
    gpunet.manual_seed(0)
    model = gpunet.Sequential(gpunet.Dense(64, 10))
    t = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(model.parameters()))
    before = model.state_dict()
    with pytest.raises(TypeError, match=r"^Trainer\.fit: train must be an \(X, y\) tuple or a DataLoader, got "
                                        r"ndarray; X and y go together as one tuple: fit\(\(X, y\)\), and "
                                        r"validation data as val=\(X_val, y_val\)$"):
        t.fit(X, y, epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"^Trainer\.evaluate: data must be .* got ndarray; X and y go together "
                                        r"as one tuple: evaluate\(\(X, y\)\), and outputs without labels come "
                                        r"from predict\(X\)$"):
        t.evaluate(X)
    with pytest.raises(TypeError, match=r"^Trainer\.fit\(\) got an unexpected keyword argument 'validation_data'; "
                                        r"gpunet takes val=\(X_val, y_val\) \(Keras' validation_data= is not "
                                        r"one of its names\)$"):
        t.fit((X, y), validation_data=(X, y), epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"'verbose'; gpunet takes progress=True or False"):
        t.fit((X, y), verbose=0, epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"^Trainer\.fit\(\) got an unexpected keyword argument 'epoch'$"):
        t.fit((X, y), epoch=1)
    after = model.state_dict()
    assert all(numpy.array_equal(before[k], after[k]) for k in before)     # nothing trained


def test_a_dataloader_without_labels_is_named_by_fit_and_evaluate():
    """Found by the second first-hour audit: Trainer.fit(gpunet.DataLoader(X)) failed inside
    the epoch with 'too many values to unpack (expected 2)'."""
    (X, y), _ = gpunet.datasets.load_digits()
    model = gpunet.Sequential(gpunet.Dense(64, 10))
    t = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(model.parameters()))
    with pytest.raises(TypeError, match=r"^Trainer\.fit: train is a DataLoader without labels \(it yields X "
                                        r"batches alone\); build it as DataLoader\(X, y, \.\.\.\)$"):
        t.fit(gpunet.DataLoader(X), epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"^Trainer\.fit: val is a DataLoader without labels"):
        t.fit((X, y), val=gpunet.DataLoader(X), epochs=1, progress=False)
    with pytest.raises(TypeError, match=r"^Trainer\.evaluate: data is a DataLoader without labels"):
        t.evaluate(gpunet.DataLoader(X))


def test_a_class_where_an_object_belongs_says_create_one():
    """Found by the second first-hour audit: Trainer(model, SoftmaxCrossEntropy, optim.Adam)
    was accepted (a class has backward, step and zero_grad too) and fit then failed inside
    with "type object 'Adam' has no attribute 'lr'"."""
    model = gpunet.Sequential(gpunet.Dense(4, 3))
    loss_fn, opt = gpunet.SoftmaxCrossEntropy(), gpunet.optim.Adam(model.parameters())
    with pytest.raises(TypeError, match=r"^Trainer: expected optimizer to be an object, got the class Adam; create "
                                        r"one: Adam\(model\.parameters\(\), lr=\.\.\.\)$"):
        gpunet.Trainer(model, loss_fn, gpunet.optim.Adam)
    with pytest.raises(TypeError, match=r"^Trainer: expected loss_fn to be an object, got the class "
                                        r"SoftmaxCrossEntropy; create one: SoftmaxCrossEntropy\(\)$"):
        gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy, opt)
    with pytest.raises(TypeError, match=r"got the class Sequential; create one: Sequential\(its layers\)$"):
        gpunet.Trainer(gpunet.Sequential, loss_fn, opt)
    gpunet.Trainer(model, loss_fn, opt)


def test_a_history_key_not_recorded_names_the_recorded_ones():
    """Found by the second first-hour audit: history["val_acc"] (Keras 1's name, in many
    tutorials) was a bare KeyError: 'val_acc'. Still a KeyError, now listing the keys."""
    (X, y), _ = gpunet.datasets.load_digits()
    model = gpunet.Sequential(gpunet.Dense(64, 10))
    t = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(model.parameters()))
    h = t.fit((X[:64], y[:64]), val=(X[:32], y[:32]), epochs=1, progress=False)
    with pytest.raises(KeyError, match=r"History: no 'val_acc'; recorded: 'loss', 'accuracy', 'learning_rate', "
                                       r"'val_loss', 'val_accuracy'\"$"):
        h["val_acc"]
    h = t.fit((X[:64], y[:64]), epochs=1, progress=False)
    with pytest.raises(KeyError, match=r"recorded: 'loss', 'accuracy', 'learning_rate'; val_\* keys need "
                                       r"fit\(\.\.\., val=\(X_val, y_val\)\)"):
        h["val_loss"]
    assert h["loss"] == h.history["loss"] and "val_loss" not in h



def test_labels_outside_the_classes_are_named_by_their_row_before_training(device, rng):
    """Found by the data audit: a label outside [0, C) in the training data was named by its
    row in a shuffled batch ('got 5 at row 2'; y[2] was fine), on a GPU only at the end of
    the epoch; one in val past its first sample failed after an epoch of training. Now fit
    checks every label of train and val against the model's outputs first, naming the row
    of the data (ignore_index excepted), on every backend, and nothing trains; evaluate names
    the row of the data as well."""
    X, y = _blobs(rng, n=40)
    model = _model().to(device)
    opt = optim.SGD(model, lr=0.1)
    tr = Trainer(model, SoftmaxCrossEntropy(), opt)
    before = [numpy.array(gpunet.to_numpy(p.data)) for p in model.parameters()]
    bad = y.copy()
    bad[27] = 5
    for train, val, name in (((X, bad), None, "train"), ((X, y), (X, bad), "val"),
                             (gpunet.DataLoader(X, bad, batch_size=8, shuffle=True), None, "train")):
        with pytest.raises(ValueError, match=rf"^Trainer\.fit: {name}'s labels do not fit the model's 3 outputs "
                                             rf"\(all 40 checked before training; the row is {name}'s\): "
                                             rf"softmax_cross_entropy: labels must lie in \[0, 3\); got 5 at row 27 "):
            tr.fit(train, val=val, epochs=1, batch_size=8, progress=False)
    assert tr.global_step == 0
    for b, p in zip(before, model.parameters()):
        numpy.testing.assert_array_equal(b, gpunet.to_numpy(p.data))
    # evaluate: the row of the data too (found when its pass fails: a good pass checks nothing more)
    with pytest.raises(ValueError, match=r"^Trainer\.evaluate: data's labels do not fit the model's 3 outputs "
                                         r"\(all 40 checked; the row is data's\): softmax_cross_entropy: labels "
                                         r"must lie in \[0, 3\); got 5 at row 27 "):
        tr.evaluate((X, bad), batch_size=8)
    with pytest.raises(ValueError, match=r"^Dense: expected 8 features along axis 1, got shape \(8, 5\)"):
        tr.evaluate((X[:, :5], bad), batch_size=8)      # not a label error: the pass's own
    bad[27] = -100
    h = Trainer(model, SoftmaxCrossEntropy(ignore_index=-100), opt).fit((X, bad), epochs=1, progress=False)
    assert numpy.isfinite(h["loss"][0])



def test_float_and_bool_labels_are_named_with_the_data_they_came_in(device, rng):
    """Found by the inference audit: float class labels (y read from a CSV) or bool ones
    gave the loss's bare message with the shape of a batch, not of the user's y:
    'softmax_cross_entropy: expected integer class labels of shape (64,), got dtype float32'
    from fit, '(256,)' from evaluate, and from fit's val the '(1,)' of its one-sample check.
    Now fit (train and val, before training) and evaluate name themselves, the data and its
    shape, on every backend."""
    X, y = _blobs(rng, n=40)
    model = _model().to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    for bad in (y.astype(numpy.float32), y == 1):
        hint = (rf"softmax_cross_entropy: expected integer class labels of shape \(40,\), got dtype "
                rf"{bad.dtype.name}; class labels are integer indices: y\.astype\(numpy\.int64\)$")
        for train, val, name in (((X, bad), None, "train"), ((X, y), (X, bad), "val")):
            with pytest.raises(ValueError, match=rf"^Trainer\.fit: {name}'s labels \(y of shape \(40,\)\): "
                                                 + hint):
                tr.fit(train, val=val, epochs=1, batch_size=8, progress=False)
        with pytest.raises(ValueError, match=r"^Trainer\.evaluate: data's labels \(y of shape \(40,\)\): " + hint):
            tr.evaluate((X, bad), batch_size=8)
    assert tr.global_step == 0


def test_labels_of_no_valid_form_are_named_with_the_data_they_came_in(device, rng):
    """Found by the inference audit: Keras' (N, 1) sparse labels, integer one-hot rows or
    3-D labels with SoftmaxCrossEntropy gave the loss's message with a batch's shape and no
    caller ('expected probability targets of shape (64, 3) or integer class labels of shape
    (64,), got (64, 1)'; evaluate (256, ...), fit's val the (1, ...) of its one-sample
    check). Now fit (train and val, before training) and evaluate name themselves, the
    data, its shape and dtype, and the way out, on every backend."""
    X, y = _blobs(rng, n=40)
    model = _model().to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    for bad, hint in ((y[:, None], r"; class indices go as a 1-D array: y\.ravel\(\)$"),
                      (numpy.eye(3, dtype=numpy.int64)[y], r"; one-hot rows go as floats \(y\.astype\(numpy\."
                                                           r"float32\)\) or as class indices \(y\.argmax\(1\)\)$"),
                      (numpy.zeros((40, 3, 1), numpy.float32), r"$")):
        what = (rf"labels \(y of shape {re.escape(str(bad.shape))}, dtype {bad.dtype.name}\): SoftmaxCrossEntropy "
                rf"takes integer class labels of shape \(40,\) or float probability targets of shape \(40, C\)"
                + hint)
        for train, val, name in (((X, bad), None, "train"), ((X, y), (X, bad), "val")):
            with pytest.raises(ValueError, match=rf"^Trainer\.fit: {name}'s " + what):
                tr.fit(train, val=val, epochs=1, batch_size=8, progress=False)
        with pytest.raises(ValueError, match=r"^Trainer\.evaluate: data's " + what):
            tr.evaluate((X, bad), batch_size=8)
    assert tr.global_step == 0
    onehot = numpy.eye(3, dtype=numpy.float32)[y]      # float probability targets stay valid
    assert numpy.isfinite(tr.evaluate((X, onehot))["loss"])


def test_probability_targets_of_the_wrong_width_are_named_with_the_data(device, rng):
    """Found by the inference audit: float one-hot targets with fewer columns than the model
    has outputs (5 for 10 classes) gave the loss's message with a batch's shape and no
    caller ('expected probability targets of shape (64, 10) or integer class labels of shape
    (64,), got (64, 5)'; evaluate (256, ...)). fit (train, before training) and evaluate
    now name themselves, the data's shape, the model's output count and both ways out."""
    X, y = _blobs(rng, n=40)
    model = _model().to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    bad = numpy.eye(5, dtype=numpy.float32)[y]
    what = (r"probability targets \(y of shape \(40, 5\)\) have 5 columns, but the model gives 3 outputs "
            r"\(one per class\); build the targets with 3 columns, or give the last layer 5 outputs$")
    with pytest.raises(ValueError, match=r"^Trainer\.fit: train's " + what):
        tr.fit((X, bad), epochs=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"^Trainer\.evaluate: data's " + what):
        tr.evaluate((X, bad), batch_size=8)
    assert tr.global_step == 0
    good = numpy.eye(3, dtype=numpy.float32)[y]
    assert numpy.isfinite(tr.fit((X, good), epochs=1, batch_size=8, progress=False)["loss"][0])


def test_bce_targets_outside_0_1_are_refused_before_training(device, rng):
    """Found by the data audit: BCEWithLogits with -1/+1 labels (or class indices 0..2) has
    no minimum, and fit logged losses of -0.06, -6.3, -36.9, -307 over 4 epochs without a
    word (PyTorch computes them too). fit now refuses such train or val targets before
    training, naming a row and the fix; 0/1, probability and bool targets train. Negative
    probability targets of SoftmaxCrossEntropy likewise."""
    X, _ = _blobs(rng, n=40)
    signs = numpy.where(X[:, :1] > 0, 1.0, -1.0).astype(numpy.float32)
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 1)).to(device)
    tr = Trainer(model, gpunet.losses.BCEWithLogits(), optim.SGD(model, lr=0.5))
    first = int(numpy.argmax(signs[:, 0] < 0))
    for train, val, name in (((X, signs), None, "train"), ((X, (signs > 0).astype(numpy.float32)), (X, signs), "val")):
        with pytest.raises(ValueError, match=rf"^Trainer\.fit: BCEWithLogits takes targets in \[0, 1\] \(0/1 "
                                             rf"labels or probabilities\), but {name}'s run from -1 to 1 \(row "
                                             rf"{first}: \[-1\.0\]\), where the loss has no minimum; -1/\+1 labels "
                                             rf"become 0/1 with \(y \+ 1\) / 2"):
            tr.fit(train, val=val, epochs=1, progress=False)
    assert tr.global_step == 0
    for y in ((signs + 1) / 2, numpy.full_like(signs, 0.3), signs > 0):
        assert numpy.isfinite(tr.fit((X, y), epochs=1, progress=False)["loss"][0])
    # SoftmaxCrossEntropy's probability targets: -1/+1 one-hot rows likewise
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 2)).to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.5))
    rows = numpy.concatenate([signs, -signs], axis=1)
    with pytest.raises(ValueError, match=rf"^Trainer\.fit: SoftmaxCrossEntropy takes probability targets of at "
                                         rf"least 0 .* but train's run from -1 to 1 \(row 0\), where the loss has "
                                         rf"no minimum; -1/\+1 one-hot rows become 0/1 with \(y \+ 1\) / 2"):
        tr.fit((X, rows), epochs=1, progress=False)
    assert numpy.isfinite(tr.fit((X, (rows + 1) / 2), epochs=1, progress=False)["loss"][0])

def test_accuracy_of_a_regression_is_warned_about(rng):
    """Found by the data audit: MSELoss on house prices (targets 1.5e4 to 4e5) under the
    default metrics logged 'accuracy 1.0' at a loss of 4.7e10 (every output and target above
    0.5). fit now warns, before training, that the accuracy means nothing for targets outside
    [0, 1], pointing at metrics=(); 0/1 or probability targets, and metrics=(), do not warn."""
    import warnings
    X, _ = _blobs(rng, n=40)
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 1))
    prices = (X[:, :1] * 3e4 + 2e5).astype(numpy.float32)
    tr = Trainer(model, gpunet.losses.MSELoss(), optim.SGD(model, lr=0.0))
    with pytest.warns(RuntimeWarning, match=r"^Trainer\.fit: the accuracy metric scores outputs and targets as "
                                            r"classes .* but train's targets run from \S+ to \S+, as a "
                                            r"regression's do, .* build the Trainer with metrics=\(\)") as w:
        h = tr.fit((X, prices), epochs=1, progress=False)
    assert w[0].filename == __file__                    # points at the fit call
    assert "accuracy" in h
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr.fit((X, (prices > 2e5).astype(numpy.float32)), epochs=1, progress=False)
        Trainer(model, gpunet.losses.MSELoss(), optim.SGD(model, lr=0.0), metrics=()).fit(
            (X, prices), epochs=1, progress=False)
def test_accuracy_of_a_regression_is_warned_about_by_evaluate_too(device, rng):
    """Found by the inference audit: a regression model loaded for inference only (no fit
    in this process) and scored with evaluate((X, prices)) under the default metrics got
    {'loss': ..., 'accuracy': 1.0} with no warning: only fit warned. evaluate now warns the
    same way for NumPy targets (a tuple's or a DataLoader's) outside [0, 1], pointing at its
    caller; 0/1 targets and metrics=() do not warn."""
    import warnings
    X, _ = _blobs(rng, n=40)
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 1)).to(device)
    prices = (X[:, :1] * 3e4 + 2e5).astype(numpy.float32)
    tr = Trainer(model, gpunet.losses.MSELoss(), optim.SGD(model, lr=0.0))
    for data in ((X, prices), gpunet.DataLoader(X, prices, batch_size=16)):
        with pytest.warns(RuntimeWarning, match=r"^Trainer\.evaluate: the accuracy metric scores outputs and "
                                                r"targets as classes .* but data's targets run from \S+ to \S+, "
                                                r"as a regression's do, .* build the Trainer with metrics=\(\)") as w:
            logs = tr.evaluate(data)
        assert w[0].filename == __file__ and "accuracy" in logs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr.evaluate((X, (prices > 2e5).astype(numpy.float32)))
        Trainer(model, gpunet.losses.MSELoss(), optim.SGD(model, lr=0.0), metrics=()).evaluate((X, prices))


def test_a_nan_validation_loss_is_warned_about_once_and_recorded(rng):
    """Found by the Trainer audit: NaN validation data gave val_loss nan in the History and
    nothing else. Now a RuntimeWarning names it (once per fit, with the epoch); training
    goes on, since validation cannot corrupt the weights (Keras' TerminateOnNaN looks at
    the training loss only)."""
    import warnings
    X, y = _blobs(rng)
    Xv = X.copy()
    Xv[3, 0] = numpy.nan
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = tr.fit((X, y), val=(Xv, y), epochs=3, progress=False)
    ours = [w for w in caught if "val_loss" in str(w.message)]
    assert len(ours) == 1 and ours[0].category is RuntimeWarning
    assert str(ours[0].message).startswith("Trainer.fit: val_loss is nan at epoch 1 while the training loss is finite")
    assert "EarlyStopping, ModelCheckpoint and ReduceLROnPlateau never count" in str(ours[0].message)
    assert len(h["val_loss"]) == 3 and numpy.isnan(h["val_loss"]).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # finite validation: no warning
        tr.fit((X, y), val=(X, y), epochs=1, progress=False)



def test_nan_or_inf_in_the_data_is_named_by_its_rows(device, rng):
    """Found by the data audit: NaN in the training data ended fit with 'non-finite loss nan
    at epoch 1, step 1 (lower the learning rate, clip gradients, or check the inputs)', and
    evaluate returned a loss of nan without a word. Now fit's FloatingPointError and
    evaluate's RuntimeWarning (and fit's warning about val) name the rows of X or y that hold
    NaN or inf, on every backend; finite data that diverges keeps the advice on the rate."""
    import warnings
    X, y = _blobs(rng, n=40)
    bad = X.copy()
    bad[[5, 31], 2] = numpy.nan
    bad[31, 0] = numpy.inf
    model = _model().to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at epoch 1, step \d+: the training "
                                                 r"data X holds 3 NaN/inf values, in rows 5, 31; drop or fill"):
        tr.fit((bad, y), epochs=1, batch_size=8, progress=False)
    model = _model().to(device)                 # the step with NaN made the weights NaN
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    with pytest.warns(RuntimeWarning, match=r"Trainer.evaluate: the loss is nan: the data X holds 3 NaN/inf "
                                            r"values, in rows 5, 31"):
        assert numpy.isnan(tr.evaluate((bad, y))["loss"])
    with pytest.warns(RuntimeWarning, match=r"the validation data X holds 3 NaN/inf values, in rows 5, 31"):
        tr.fit((X, y), val=(bad, y), epochs=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # finite data: no warning
        tr.evaluate((X, y))

    gpunet.manual_seed(0)
    reg = Sequential(Dense(8, 1)).to(device)
    target = rng.standard_normal((40, 1)).astype(numpy.float32)
    target[17] = numpy.nan
    tr = Trainer(reg, gpunet.losses.MSELoss(), optim.SGD(reg, lr=0.1), metrics=())
    with pytest.raises(FloatingPointError, match=r"the training data y holds 1 NaN/inf value, in row 17;"):
        tr.fit((X, target), epochs=1, batch_size=8, progress=False)

def test_a_nan_training_loss_ends_the_run_keeping_what_came_before(rng, tmp_path):
    """As Keras' TerminateOnNaN stops a run: FloatingPointError names the epoch and step,
    the callbacks' on_train_end runs (EarlyStopping restores the best weights), the earlier
    epochs stay in trainer.history and the checkpoint holds the last good epoch."""
    X, y = _blobs(rng)

    class PoisonAt(Callback):        # a NaN weight from the third epoch on
        def on_epoch_begin(self, trainer, epoch):
            if epoch == 2:
                trainer.model[0].weight.data[0, 0] = numpy.nan

        def on_train_end(self, trainer):
            self.ended = True
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    poison, stop = PoisonAt(), EarlyStopping(monitor="loss", patience=5)
    path = tmp_path / "last.npz"
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at epoch 3, step 1"):
        tr.fit((X, y), epochs=5, progress=False,
               callbacks=[poison, stop, ModelCheckpoint(path, monitor="loss", save_best_only=False)])
    assert poison.ended and tr.history.epoch == [0, 1]
    assert gpunet.load(path, _model())["epoch"] == 2
    assert numpy.isfinite(model[0].weight.data).all()         # the best epoch's weights are back


@pytest.mark.parametrize("bad, msg", [
    (lambda X, y: (X[:, :5], y), "Dense: expected 8 features along axis 1"),
    (lambda X, y: (X.astype(numpy.float64), y), "Dense: expected dtype float32"),
    (lambda X, y: (X, y + 3), r"softmax_cross_entropy: labels must lie in \[0, 3\)"),
    (lambda X, y: (X, numpy.ones((len(y), 5), numpy.float32)), "softmax_cross_entropy: expected probability targets"),
    (lambda X, y: gpunet.DataLoader(X[:, :5], y, batch_size=7), "Dense: expected 8 features along axis 1"),
])
def test_validation_data_that_does_not_fit_fails_before_training(rng, bad, msg):
    """Found by the Trainer audit: validation data of the wrong shape, dtype or labels
    raised the layer's or the loss's error at the end of the first epoch, after it had
    trained, without saying that the validation data was at fault. Its first sample now
    goes through evaluate before the first step."""
    X, y = _blobs(rng)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    before = model.state_dict()
    with pytest.raises(ValueError, match=r"^Trainer.fit: val does not fit the model and loss \(checked on "
                                         rf"its first sample, before training\): {msg}"):
        tr.fit((X, y), val=bad(X, y), epochs=2, progress=False)
    assert tr.global_step == 0
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, before[k])


def test_the_validation_check_changes_nothing_a_run_reads(rng):
    """The first-sample check runs in eval mode: a model with BatchNorm and Dropout trains
    to the same bits with val= as without (val only adds the val_* keys)."""
    X, y = _blobs(rng)
    runs = []
    for val in (None, (X[:50], y[:50])):
        gpunet.manual_seed(0)
        model = Sequential(Dense(8, 16), gpunet.BatchNorm(16), gpunet.ReLU(), gpunet.Dropout(0.3), Dense(16, 3))
        h = Trainer(model, SoftmaxCrossEntropy(), optim.Adam(model, lr=1e-2)).fit(
            (X, y), val=val, epochs=2, progress=False)
        runs.append((h["loss"], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        numpy.testing.assert_array_equal(v, runs[1][1][k])


def test_model_checkpoint_formats_a_keras_style_template(rng, tmp_path):
    """Found by the Trainer audit: ModelCheckpoint("ckpt-{epoch:02d}.npz"), Keras' way of
    keeping one file per epoch, wrote a file literally named ckpt-{epoch:02d}.npz and
    replaced it every epoch, losing all but the last. The path is now formatted with the
    1-based epoch and the epoch's logs; a field the logs lack is a ValueError naming it."""
    X, y = _blobs(rng)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    template = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.3f}.npz")
    h = tr.fit((X, y), val=(X, y), epochs=3, progress=False,
               callbacks=[ModelCheckpoint(template, save_best_only=False)])
    want = sorted(f"ckpt-{e + 1:02d}-{v:.3f}.npz" for e, v in enumerate(h["val_loss"]))
    assert sorted(p.name for p in tmp_path.iterdir()) == want
    assert gpunet.load(tmp_path / want[1], _model())["epoch"] == 2
    for bad, msg in (("{val_acc}", r"asks for 'val_acc', which the epoch's logs do not hold; it may use "
                                    r"'epoch' and \['accuracy', 'learning_rate', 'loss', 'val_accuracy', 'val_loss'\]"),
                     ("{epoch:d", "is not a template str.format can fill"),
                     ("{0}", "asks for a positional field")):
        with pytest.raises(ValueError, match=r"^ModelCheckpoint: path .*" + msg):
            tr.fit((X, y), val=(X, y), epochs=1, progress=False,
                   callbacks=[ModelCheckpoint(str(tmp_path / f"m-{bad}.npz"), save_best_only=False)])
    plain = tmp_path / "plain.npz"          # no braces: one file, replaced
    tr.fit((X, y), epochs=2, progress=False, callbacks=[ModelCheckpoint(plain, monitor="loss", save_best_only=False)])
    # the Trainer's epochs over all its fits: 3, then 3 that trained and failed at the save, then 2
    assert gpunet.load(plain, _model())["epoch"] == 8


@pytest.mark.parametrize("key", ["epoch", "scheduler", "scaler"])
def test_model_checkpoint_saves_logs_named_like_its_own_keywords(rng, tmp_path, key):
    """Found by the resume audit: a callback that logged 'epoch' (as Lightning logs it),
    'scheduler' or 'scaler' made every ModelCheckpoint fail at the end of the first epoch
    with Python's "TypeError: save() got multiple values for keyword argument 'epoch'" (a
    template path: str.format()'s), losing the epoch's checkpoint. The logs are metadata
    under their own names; 'epoch' stays the Trainer's count of epochs completed, which a
    resume needs (the callback's value stays in the History)."""
    X, y = _blobs(rng)

    class Log(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs[key] = 100.0 + epoch

    for name in ("plain.npz", "ck-{epoch}.npz"):
        model = _model()
        tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
        h = tr.fit((X, y), epochs=2, progress=False, callbacks=[
            Log(), ModelCheckpoint(tmp_path / name, monitor="loss", save_best_only=False)])
        assert h[key] == [100.0, 101.0]
        meta = gpunet.load(tmp_path / name.format(epoch=2), _model())
        assert meta["epoch"] == 2 and meta["loss"] == h["loss"][1]
        assert key == "epoch" or meta[key] == 101.0
    assert (tmp_path / "ck-1.npz").exists()


@pytest.mark.parametrize("make, msg", [
    (lambda: EarlyStopping(restore_best_weights=True),
     r"^EarlyStopping\(\) got an unexpected keyword argument 'restore_best_weights'; gpunet takes restore_best=True or False"),
    (lambda: EarlyStopping(monitor="loss", verbose=1), r"'verbose'; gpunet's callbacks print nothing"),
    (lambda: EarlyStopping(baseline=0.5), r"'baseline'; gpunet has no baseline"),
    (lambda: ModelCheckpoint(filepath="m.npz"), r"^ModelCheckpoint\(\) got an unexpected keyword argument 'filepath'; gpunet takes path"),
    (lambda: ModelCheckpoint("m.npz", save_weights_only=True), r"'save_weights_only'; gpunet always saves the model and the optimizer"),
    (lambda: EarlyStopping(foo=1), r"^EarlyStopping\(\) got an unexpected keyword argument 'foo'$"),
])
def test_keras_keywords_of_the_callbacks_get_gpunets_names(make, msg):
    """Found by the Trainer audit: EarlyStopping(restore_best_weights=True), as a Keras user
    writes it, raised Python's bare 'unexpected keyword argument', and
    ModelCheckpoint(filepath=...) 'missing 1 required positional argument: path'. As fit
    does for validation_data=, the TypeError now says gpunet's name or that there is none."""
    with pytest.raises(TypeError, match=msg):
        make()


def test_stop_training_set_in_on_batch_end_stops_at_the_end_of_that_epoch(rng):
    """The Callback docstring and guide §6 say so (Keras' fit stops after the batch): the
    epoch runs to its last batch, is recorded in the History, and no other epoch starts."""
    X, y = _blobs(rng, n=64)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))

    class StopAtStep2(Callback):
        def on_batch_end(self, trainer, step, logs):
            if step == 2 and trainer.global_step > 8:     # in the second epoch (8 batches each)
                trainer.stop_training = True

    h = tr.fit((X, y), epochs=5, batch_size=8, progress=False, callbacks=[StopAtStep2()])
    assert h.epoch == [0, 1] and tr.global_step == 16


def test_callback_hooks_of_another_framework_are_refused_before_training(rng):
    """A Keras user's callback: on_train_batch_end was never called (silently), and
    on_epoch_end(self, epoch, logs) raised Python's 'takes from 2 to 3 positional arguments
    but 4 were given' at the end of the first epoch, after it trained. Both are refused
    before training, naming gpunet's hook; a class that also overrides gpunet's hook is
    left alone."""
    X, y = _blobs(rng, n=32)

    class KerasBatchEnd(Callback):
        def on_train_batch_end(self, batch, logs=None):
            pass

    class KerasEpochEnd(Callback):
        def on_epoch_end(self, epoch, logs=None):
            pass

    class LightningValidation(Callback):
        def on_validation_epoch_end(self, trainer, module):
            pass

    class Both(Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.keras = True

        def on_batch_end(self, trainer, step, logs):
            self.on_train_batch_end(step, logs)

    cases = [(KerasBatchEnd(), r"defines on_train_batch_end, another framework's hook, which gpunet's Trainer "
                               r"never calls; gpunet's is on_batch_end\(trainer, step, logs\)"),
             (KerasEpochEnd(), r"\(KerasEpochEnd\)\.on_epoch_end cannot take the arguments gpunet passes, "
                               r"on_epoch_end\(trainer, epoch, logs\)"),
             (LightningValidation(), r"on_validation_epoch_end, .* the val_\* values are in the logs")]
    for cb, msg in cases:
        model = _model()
        tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
        before = model.state_dict()
        with pytest.raises(TypeError, match=r"^Trainer.fit: callbacks\[1\] .*" + msg):
            tr.fit((X, y), epochs=2, progress=False, callbacks=[Callback(), cb])
        assert tr.global_step == 0 and all(numpy.array_equal(before[k], v) for k, v in model.state_dict().items())
    both = Both()
    model = _model()
    Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1)).fit(
        (X, y), epochs=1, progress=False, callbacks=[both])
    assert both.keras


def test_fit_refuses_batch_size_shuffle_or_seed_that_a_dataloader_would_ignore(rng):
    """fit(loader, batch_size=128) trained with the loader's own batch size (32), silently;
    so did shuffle=False and seed=5. Values that contradict the loader now raise ValueError
    before training (as Keras' fit refuses a batch_size for a dataset); fit's defaults and
    values equal to the loader's still train."""
    X, y = _blobs(rng, n=64)
    loader = gpunet.DataLoader(X, y, batch_size=32, shuffle=True, seed=0)
    for kw in (dict(batch_size=128), dict(shuffle=False), dict(seed=5)):
        model = _model()
        tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
        name, value = next(iter(kw.items()))
        with pytest.raises(ValueError, match=rf"^Trainer.fit: train is a DataLoader, which uses its own "
                                             rf"{name}=.*; fit's {name}={value!r} applies to \(X, y\) data only"):
            tr.fit(loader, epochs=1, progress=False, **kw)
        assert tr.global_step == 0
    tr.fit(loader, epochs=1, batch_size=32, progress=False)
    tr.fit(loader, epochs=2, progress=False)
    assert tr.global_step == 3 * 2


def test_verbose_hint_names_only_attributes_the_callback_has():
    """ModelCheckpoint(verbose=1) said to 'read stopped_epoch, best, best_epoch', EarlyStopping's
    attributes; a ModelCheckpoint has only best (the epoch is in the file's metadata)."""
    for make in (lambda **kw: EarlyStopping(monitor="loss", **kw), lambda **kw: ModelCheckpoint("m.npz", **kw)):
        with pytest.raises(TypeError) as e:
            make(verbose=1)
        named = re.search(r"\(read ([^;)]*)", str(e.value)).group(1).split(", ")
        callback = make()
        assert named and all(hasattr(callback, a) for a in named), (str(e.value), named)


def test_fit_evaluate_predict_name_a_model_moved_after_the_trainer(gpu_device, rng):
    """Found by the attribute audit: ``model.to(device)`` after ``Trainer(...)`` left the
    Trainer on the old device, and fit failed in the first Dense, whose message said to
    move the input with ``to_device``. fit, evaluate and predict now name both devices and
    the ways out; with the model moved back, training goes on."""
    X, y = _blobs(rng, n=32)
    model = _model()
    trainer = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1), device="cpu")
    model.to(gpu_device)
    where = model.device        # "cuda:0" on CuPy (gpu_device is "cuda"), "sim"
    assert where.split(":")[0] == gpu_device
    calls = {"fit": lambda: trainer.fit((X, y), epochs=1, progress=False),
             "evaluate": lambda: trainer.evaluate((X, y)), "predict": lambda: trainer.predict(X)}
    for name, call in calls.items():
        with pytest.raises(ValueError, match=rf"^Trainer.{name}: the model is on '{where}', but this "
                                             rf"Trainer was made for it on 'cpu' \(the model was moved after "
                                             rf"Trainer\(...\)\); make a new Trainer .* model.to\('cpu'\)$"):
            call()
    assert trainer.history is None
    model.to("cpu")
    trainer.fit((X, y), epochs=1, progress=False)
    assert len(trainer.history["loss"]) == 1 and trainer.predict(X).shape == (32, 3)


@pytest.mark.parametrize("new", [dict(reduction="sum"), dict(ignore_index=1),
                                 dict(reduction="none", ignore_index=2)])
def test_loss_assigned_mid_epoch_is_logged_with_its_own_reduction(xp, device, rng, new):
    # Trainer.loss_fn may be assigned from a callback and counts from the next step; the
    # epoch's logged loss must then add each step as its own loss reduced it. With lr 0 the
    # weights stay put, so the expected value is the per-sample mean by hand: every sample
    # of the first batch, then only the samples the new loss does not ignore.
    X, y = _blobs(rng, n=96)
    model = _model().to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.0))

    class Swap(Callback):
        def on_batch_end(self, trainer, step, logs):
            if step == 0:
                trainer.loss_fn = SoftmaxCrossEntropy(**new)

    h = tr.fit((xp.asarray(X), xp.asarray(y)), epochs=1, batch_size=32, shuffle=False,
               progress=False, callbacks=[Swap()])
    rows = gpunet.to_numpy(SoftmaxCrossEntropy(reduction="none")(model(xp.asarray(X)), xp.asarray(y)))
    keep = numpy.ones(96, bool)
    if "ignore_index" in new:
        keep[32:] = y[32:] != new["ignore_index"]
    assert h["loss"][0] == pytest.approx(rows[keep].sum() / keep.sum(), rel=1e-5)
    hits = gpunet.to_numpy(model(xp.asarray(X))).argmax(1) == y
    assert h["accuracy"][0] == pytest.approx(hits[keep].sum() / keep.sum())


def test_metrics_assigned_mid_epoch_count_from_the_next_epoch(xp, device, rng):
    # accuracy is counted over a whole pass: switched on in the middle of epoch 0, the
    # epoch logs none (not 0.0 from the steps it never counted); epoch 1 logs it
    X, y = _blobs(rng, n=96)
    model = _model().to(device)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.0), metrics=None)

    class On(Callback):
        def __init__(self):
            self.seen = []

        def on_batch_end(self, trainer, step, logs):
            trainer.metrics = "accuracy"

        def on_epoch_end(self, trainer, epoch, logs):
            self.seen.append(dict(logs))

    cb = On()
    tr.fit((xp.asarray(X), xp.asarray(y)), epochs=2, batch_size=32, progress=False, callbacks=[cb])
    assert "accuracy" not in cb.seen[0]
    hits = gpunet.to_numpy(model(xp.asarray(X))).argmax(1) == y
    assert cb.seen[1]["accuracy"] == pytest.approx(hits.mean())


def test_keras_fit_evaluate_predict_keywords_name_gpunets_way():
    """Found by the leftover audit: Keras' x=/y=, class_weight=, sample_weight=,
    steps_per_epoch=, validation_batch_size=, validation_freq= got Python's bare 'unexpected
    keyword argument' (fit(x=X, y=y): "missing 1 required positional argument: 'train'"),
    shuffle='batch' only 'expected a bool', and evaluate(X, y) complained of batch_size=<the
    labels>; evaluate's and predict's verbose= and x= were bare too."""
    (X, y), _ = gpunet.datasets.load_digits()
    X, y = X[:40], y[:40]
    gpunet.manual_seed(0)
    model = gpunet.Sequential(gpunet.Dense(64, 10))
    t = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), gpunet.optim.SGD(model.parameters()))
    before = model.state_dict()
    head = r"^Trainer\.{}\(\) got an unexpected keyword argument '{}'; "
    for call, method, key, says in [
            (lambda: t.fit(x=X, y=y, epochs=1), "fit", "x", r"gpunet takes the data as one tuple: fit\(\(X, y\)\)"),
            (lambda: t.fit(X, y=y, epochs=1), "fit", "y", r"gpunet takes the data as one tuple: fit\(\(X, y\)\)"),
            (lambda: t.fit((X, y), class_weight={0: 2.0}), "fit", "class_weight", "gpunet has no class weights"),
            (lambda: t.fit((X, y), sample_weight=numpy.ones(40)), "fit", "sample_weight", "gpunet has no sample weights"),
            (lambda: t.fit((X, y), steps_per_epoch=2), "fit", "steps_per_epoch", "gpunet runs each epoch over all"),
            (lambda: t.fit((X, y), validation_batch_size=8), "fit", "validation_batch_size",
             r"gpunet takes val as a DataLoader, val=DataLoader\(X_val, y_val, batch_size=n\)"),
            (lambda: t.fit((X, y), validation_freq=2), "fit", "validation_freq",
             r"gpunet validates after every epoch when given val .*trainer\.evaluate\(\(X_val, y_val\)\)"),
            (lambda: t.fit((X, y), workers=4), "fit", "workers", "gpunet's DataLoader batches in the calling thread"),
            (lambda: t.evaluate(x=X, y=y), "evaluate", "x", r"gpunet takes the data as one tuple: evaluate\(\(X, y\)\)"),
            (lambda: t.evaluate((X, y), verbose=0), "evaluate", "verbose", "gpunet's evaluate prints nothing"),
            (lambda: t.evaluate((X, y), return_dict=True), "evaluate", "return_dict", "gpunet's evaluate always"),
            (lambda: t.predict(x=X), "predict", "x", r"gpunet takes X as the first argument: predict\(X\)"),
            (lambda: t.predict(X, verbose=0), "predict", "verbose", "gpunet's predict prints nothing")]:
        with pytest.raises(TypeError, match=head.format(method, key) + says + rf".* \(Keras' {key}= is not one of its names\)$"):
            call()
    with pytest.raises(TypeError, match=r"^Trainer\.fit: expected shuffle to be a bool \(True or False\), got 'batch' "
                                        r"\(str\); Keras' shuffle='batch' .* shuffle=True shuffles the samples$"):
        t.fit((X, y), shuffle="batch", epochs=1)
    with pytest.raises(TypeError, match=r"^Trainer\.evaluate: data must be an \(X, y\) tuple or a DataLoader, got "
                                        r"ndarray; X and y go together as one tuple: evaluate\(\(X, y\)\)"):
        t.evaluate(X, y)
    # Keras' (x, y, sample_weight) tuples and validation_split's fraction passed as val
    with pytest.raises(TypeError, match=r"^Trainer\.fit: val must be an \(X, y\) tuple or a DataLoader, got a "
                                        r"tuple of 3 items; Keras' \(X, y, sample_weight\) has no gpunet form: "
                                        r"gpunet has no sample weights$"):
        t.fit((X, y), val=(X, y, numpy.ones(40)), epochs=1)
    with pytest.raises(TypeError, match=r"^Trainer\.evaluate: data must be .* got a list of 1 item$"):
        t.evaluate([X])
    with pytest.raises(TypeError, match=r"^Trainer\.fit: val must be .* got float; a fraction is Keras' "
                                        r"validation_split, which gpunet does not take: split X yourself$"):
        t.fit((X, y), val=0.2, epochs=1)
    # Keras' compile(loss=..., optimizer=...) names, given to the Trainer
    with pytest.raises(TypeError, match=r"^Trainer\(\) got an unexpected keyword argument 'loss'; gpunet takes "
                                        r"loss_fn= \(a loss object, e\.g\. SoftmaxCrossEntropy\(\)\) \(Keras' loss= "
                                        r"is not one of its names\)$"):
        gpunet.Trainer(model, loss=gpunet.SoftmaxCrossEntropy(), optimizer=t.optimizer)
    with pytest.raises(TypeError, match=r"^Trainer\(\) missing 1 required positional argument: 'optimizer'$"):
        gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy())
    assert gpunet.Trainer(model, loss_fn=gpunet.SoftmaxCrossEntropy(), optimizer=t.optimizer).optimizer is t.optimizer
    for f, name in ((t.fit, "train"), (t.evaluate, "data"), (t.predict, "X")):    # Python's own message
        with pytest.raises(TypeError, match=rf"^Trainer\.{f.__name__}\(\) missing 1 required positional argument: '{name}'$"):
            f()
    after = model.state_dict()
    assert all(numpy.array_equal(before[k], after[k]) for k in before)     # nothing trained
    # the arguments that are gpunet's still work by keyword
    assert t.fit(train=(X, y), epochs=1, progress=False).epoch == [0]
    assert set(t.evaluate(data=(X, y))) == {"loss", "accuracy"}
    assert t.predict(X=X).shape == (40, 10)


def test_keras_old_accuracy_names_are_named_before_training():
    """Found by the leftover audit: EarlyStopping(monitor="val_acc") (Keras 2's key, in many
    tutorials) trained a whole epoch, then failed listing the logs' keys. It now fails before
    the first step, naming 'val_accuracy'; past fit's check (a callback of the user's own
    first) the epoch-end error says it too."""
    X, y = _blobs(numpy.random.default_rng(0), n=40)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    for cb, m in ((EarlyStopping(monitor="val_acc"), "val_acc"), (ModelCheckpoint("x.npz", monitor="acc"), "acc")):
        with pytest.raises(ValueError, match=rf"^Trainer\.fit: {type(cb).__name__} monitors '{m}', Keras' old name "
                                             rf"of '{m}uracy', which is the key gpunet logs; monitor='{m}uracy'$"):
            tr.fit((X, y), val=(X, y), epochs=1, progress=False, callbacks=[cb])
        assert tr.global_step == 0

    class Mine(gpunet.Callback):
        pass
    with pytest.raises(ValueError, match=r"monitor 'val_acc' is not among the epoch's logs .*; 'val_acc' is Keras' "
                                         r"old name of 'val_accuracy'$"):
        tr.fit((X, y), val=(X, y), epochs=1, progress=False, callbacks=[Mine(), EarlyStopping(monitor="val_acc")])


@pytest.mark.parametrize("value, got", [("abc", "'abc'"), (None, "None"), ([1, 2], r"\[1, 2\]"),
                                        (numpy.array([1.0, 2.0]), r"ndarray of shape \(2,\)")])
def test_a_callback_logging_a_value_that_is_not_a_number_is_named_and_the_history_stays_whole(rng, value, got):
    """Found by the failure-path audit: a callback that wrote a str, None, a list or an array
    into the epoch's logs stopped fit with float()'s own message ("could not convert string to
    float: 'abc'", raised inside History.append), after the History had recorded the epoch
    and some keys but not the others (history.epoch == [0], history["custom"] == []). The
    value is now checked after each callback's on_epoch_end: TypeError naming the key and
    the callback, and the History keeps only whole epochs."""
    X, y = _blobs(rng)

    class Writes(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["custom"] = value if epoch == 1 else float(epoch)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    with pytest.raises(TypeError, match=rf"^Trainer.fit: logs\['custom'\] \(written by Writes.on_epoch_end\) "
                                        rf"is {got}; the epoch's logs hold numbers only"):
        tr.fit((X, y), epochs=3, progress=False, callbacks=[Writes()])
    h = tr.history
    assert h.epoch == [0] and all(len(v) == 1 for v in h.history.values()), h.history
    assert h["custom"] == [0.0]
    # History.append alone records all of an epoch or nothing
    with pytest.raises(TypeError, match=r"^History.append: logs\['b'\] is 'x'"):
        h.append(1, {"loss": 1.0, "b": "x"})
    assert h.epoch == [0] and h["loss"] == [h["loss"][0]] and "b" not in h


def test_numbers_of_every_kind_in_the_logs_go_into_the_history(rng):
    """What a callback may write: Python and NumPy ints, floats and bools, 0-d arrays, NaN."""
    X, y = _blobs(rng)
    values = {"i": 3, "f32": numpy.float32(0.5), "i64": numpy.int64(7), "b": True,
              "a0": numpy.array(2.5), "nan": float("nan")}

    class Writes(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs.update(values)
    model = _model()
    h = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1)).fit(
        (X, y), epochs=2, progress=False, callbacks=[Writes()])
    assert [h[k] for k in ("i", "f32", "i64", "b", "a0")] == [[3.0] * 2, [0.5] * 2, [7.0] * 2, [1.0] * 2,
                                                             [2.5] * 2]
    assert all(v != v for v in h["nan"])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_diverging_step_on_the_cpu_is_not_applied(rng, precision):
    """Found by the failure-path audit: on the CPU, where the loss is read at every step,
    the step whose loss was inf still ran its backward and optimizer update before fit
    raised FloatingPointError, so a diverged model was left with the weights of a NaN/inf
    update (observed: MSE, SGD(lr=50) on the digits, every parameter NaN after 'non-finite
    loss inf at epoch 1, step 4'), the optimizer's state and step count one step further
    than any finite loss. The step now stops after its loss: the weights, the optimizer's
    state and trainer.global_step are those of the last step applied (as
    torch.autograd.detect_anomaly stops before optimizer.step()), and the message says so
    and names what grew (the output, the largest parameter)."""
    X, y = _blobs(rng)
    Y = (y.astype(numpy.float32) / 2).reshape(-1, 1)
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 16, activation="relu"), Dense(16, 1))
    opt = optim.SGD(model, lr=10.0, momentum=0.9)
    snaps = []

    class Snap(Callback):           # the state after each applied step
        def on_batch_end(self, trainer, step, logs):
            snaps.append((trainer.global_step, model.state_dict(), opt.state_dict()))
    tr = Trainer(model, gpunet.MSELoss(), opt, metrics=(), precision=precision)
    with numpy.errstate(over="ignore", invalid="ignore"), pytest.raises(
            FloatingPointError, match=r"^non-finite loss (inf|nan) at epoch 1, step (\d+) \(lower the learning rate, "
                                      r"clip gradients, or check the inputs\); that step's update was not applied: "
                                      r"the model holds the weights that gave this loss; its output (was finite, "
                                      r"up to \|[^|]+\|, and the loss overflowed|held \d+ NaN/inf values? of 16)"
                                      r"(; with precision='fp16' the forward runs in float16, [^;]+)?; "
                                      r"the largest parameter is '\d\.(weight|bias)', up to \|[^|]+\|$") as e:
        tr.fit((X, Y), epochs=3, batch_size=16, progress=False, callbacks=[Snap()])
    step = int(re.search(r"step (\d+)", str(e.value)).group(1))
    assert step >= 2 and len(snaps) == step - 1
    last, weights, state = snaps[-1]
    assert tr.global_step == last == step - 1
    for k, v in model.state_dict().items():
        assert numpy.isfinite(v).all(), k
        numpy.testing.assert_array_equal(v, weights[k])
    now = opt.state_dict()
    assert now.keys() == state.keys()
    assert any(".momentum_buffer" in k or "buf" in k for k in state), sorted(state)
    for k in state:
        numpy.testing.assert_array_equal(now[k], state[k], err_msg=k)


def test_every_on_train_end_runs_when_one_of_them_raises(rng):
    """Found by the failure-path audit: fit called the callbacks' on_train_end in a plain
    loop, so a callback whose on_train_end raised kept the ones after it from running:
    EarlyStopping(restore_best=True) listed after it left the last epoch's weights in the
    model instead of the best one's. Every on_train_end now runs; the first error is raised
    after them."""
    X, y = _blobs(rng)
    scripted = [1.0, 5.0, 6.0]          # epoch 0 is the best
    kept = {}

    class Script(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            logs["loss"] = scripted[epoch]
            if epoch == 0:
                kept.update(trainer.model.state_dict())

    class Fails(Callback):
        def on_train_end(self, trainer):
            raise RuntimeError("a report that could not be written")

    class Ends(Callback):
        def on_train_end(self, trainer):
            self.ran = True
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    ends = Ends()
    with pytest.raises(RuntimeError, match="^a report that could not be written$"):
        tr.fit((X, y), epochs=3, progress=False,
               callbacks=[Script(), Fails(), EarlyStopping(monitor="loss", patience=5), ends])
    assert ends.ran and tr.history.epoch == [0, 1, 2]
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, kept[k], err_msg=k)     # the best epoch's weights are back


def test_a_batch_of_one_sample_that_batchnorm_cannot_train_on_fails_before_training(device, rng):
    """Found by the failure-path audit: with N % batch_size == 1 the epoch's last batch holds
    one sample, and a BatchNorm on (N, C) inputs refuses to train on it (as PyTorch's does):
    fit raised the layer's ValueError there, after the epoch's other steps had trained
    (observed: 9 samples, batch_size 4: global_step 2, the epoch lost). fit now finds it
    before the first step, naming the layer, the batch and the ways out; an (N, C, H, W)
    BatchNorm, which sees H*W values per channel, and a loader with drop_last=True train."""
    X, y = _blobs(rng, n=9)
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 16), Sequential(gpunet.BatchNorm(16)), gpunet.ReLU(), Dense(16, 3)).to(device)
    before = model.state_dict()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    with pytest.raises(ValueError, match=r"^Trainer.fit: train would stop at a batch of one sample, after the "
                                         r"epoch's other steps trained: its last batch holds one sample \(9 "
                                         r"samples, batch_size=4\), and BatchNorm '1.0' gets inputs of shape "
                                         r"\(1, 16\) there, one value per channel.*DataLoader\(X, y, batch_size=4, "
                                         r"drop_last=True\)"):
        tr.fit((X, y), epochs=2, batch_size=4, progress=False)
    assert tr.global_step == 0
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(gpunet.to_numpy(v), gpunet.to_numpy(before[k]), err_msg=k)
    with pytest.raises(ValueError, match=r"batch_size=1: every batch holds one sample"):
        tr.fit((X, y), epochs=1, batch_size=1, progress=False)
    # what trains: the last batch dropped, or a batch size that leaves none of one
    h = tr.fit(gpunet.DataLoader(X, y, batch_size=4, shuffle=True, seed=0, drop_last=True), epochs=1,
               progress=False)
    assert tr.global_step == 2 and len(h.epoch) == 1
    tr.fit((X, y), epochs=1, batch_size=3, progress=False)
    # a BatchNorm over (1, C, H, W) with H*W > 1 values per channel trains on one sample
    gpunet.manual_seed(0)
    cnn = Sequential(gpunet.Conv2D(1, 4, 3, padding=1), gpunet.BatchNorm(4), gpunet.ReLU(), gpunet.Flatten(),
                     Dense(4 * 9, 3)).to(device)
    Xi = X[:, :1].repeat(9, axis=1).reshape(9, 1, 3, 3)
    tr = Trainer(cnn, SoftmaxCrossEntropy(), optim.SGD(cnn, lr=0.1))
    tr.fit((Xi, y), epochs=1, batch_size=4, progress=False)
    assert tr.global_step == 3


@pytest.mark.parametrize("returned, got", [(lambda l: float(l), "float; expected the loss as an array.*a float"),
                                           (lambda l: None, "NoneType; expected the loss as an array"),
                                           (lambda l: (l, 1), "tuple; expected the loss as an array")])
def test_a_loss_of_ones_own_that_returns_no_array_is_named(device, rng, returned, got):
    """Found by the failure-path audit: Trainer takes any loss object with backward(); one
    that returned a Python float (or None, or a tuple) from its call raised
    "AttributeError: 'float' object has no attribute 'ndim'" from inside the Trainer's
    bookkeeping at the first step. It raises TypeError naming the loss and what it returned,
    before any backward or update, in fit and in evaluate; a NumPy scalar is an array and
    trains."""
    X, y = _blobs(rng)

    class MyLoss:
        def __init__(self, returned):
            self.inner, self.returned = SoftmaxCrossEntropy(), returned

        def __call__(self, out, yb):
            return self.returned(self.inner(out, yb))

        def backward(self):
            return self.inner.backward()
    model = _model().to(device)
    before = model.state_dict()
    tr = Trainer(model, MyLoss(returned), optim.SGD(model, lr=0.1))
    with pytest.raises(TypeError, match=rf"^Trainer: loss_fn MyLoss returned {got}"):
        tr.fit((X, y), epochs=1, progress=False)
    assert tr.global_step == 0
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(gpunet.to_numpy(v), gpunet.to_numpy(before[k]), err_msg=k)
    with pytest.raises(TypeError, match=rf"^Trainer: loss_fn MyLoss returned {got}"):
        tr.evaluate((X, y))
    if device == "cpu":
        h = Trainer(model, MyLoss(lambda l: numpy.float32(l)), optim.SGD(model, lr=0.1)).fit(
            (X, y), epochs=1, progress=False)
        assert numpy.isfinite(h["loss"][0])


def test_an_interrupted_fit_leaves_what_the_guide_says(rng):
    """Guide §4, 'An interrupted fit': Ctrl-C from a callback in the middle of epoch 2 leaves
    the model in training mode, the first layer's input_grad restored, every on_train_end run
    (EarlyStopping puts the best epoch's weights back), the completed epoch in the History,
    and a later fit starts with the interrupted epoch's shuffle (pins documented behaviour)."""
    X, y = _blobs(rng)
    orders = []

    class Interrupt(Callback):
        def on_train_begin(self, trainer):
            self.base = trainer._next_order     # the shuffle epoch k takes: base + k

        def on_epoch_begin(self, trainer, epoch):
            orders.append(self.base + epoch)

        def on_batch_end(self, trainer, step, logs):
            if trainer.epoch == 1 and step == 3:
                raise KeyboardInterrupt

    class Best(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            self.state = trainer.model.state_dict()
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    best = Best()
    with pytest.raises(KeyboardInterrupt):
        tr.fit((X, y), epochs=3, batch_size=32, progress=False,
               callbacks=[best, Interrupt(), EarlyStopping(monitor="loss")])
    assert tr.history.epoch == [0] and tr.global_step == 7 + 4
    assert model.training and model[0].input_grad is True
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, best.state[k], err_msg=k)
    tr.fit((X, y), epochs=1, batch_size=32, progress=False, callbacks=[Interrupt()])
    assert orders == [0, 1, 1]


def test_the_diverged_step_message_says_when_early_stopping_puts_the_best_weights_back(rng):
    """66e422d's message said 'the model holds the weights that gave this loss' also when an
    EarlyStopping(restore_best=True) then put its best epoch's weights back in on_train_end;
    it says that instead. Weights that an earlier update made NaN are named as such."""
    X, y = _blobs(rng)
    Y = (y.astype(numpy.float32) / 2).reshape(-1, 1)

    class Diverge(Callback):            # a rate that blows up from the second epoch on
        def on_epoch_begin(self, trainer, epoch):
            trainer.optimizer.lr = 0.01 if epoch == 0 else 10.0
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 16, activation="relu"), Dense(16, 1))
    tr = Trainer(model, gpunet.MSELoss(), optim.SGD(model, lr=0.01, momentum=0.9), metrics=())
    best = {}

    class Keep(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 0:
                best.update(trainer.model.state_dict())
    with numpy.errstate(over="ignore", invalid="ignore"), pytest.raises(
            FloatingPointError, match=r"at epoch 2, step \d+ .*; that step's update was not applied: "
                                      r"EarlyStopping\(restore_best=True\) puts back its best epoch's weights; "):
        tr.fit((X, Y), epochs=3, batch_size=16, progress=False,
               callbacks=[Diverge(), Keep(), EarlyStopping(monitor="loss")])
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, best[k], err_msg=k)

    class Poison(Callback):
        def on_epoch_begin(self, trainer, epoch):
            trainer.model[0].weight.data[0, 0] = numpy.nan
    with pytest.raises(FloatingPointError, match=r"the model holds the weights that gave this loss; .*"
                                                 r"parameter holding NaN/inf: 0\.weight \(from an earlier update "
                                                 r"whose gradients overflowed though its loss was finite, or an "
                                                 r"assignment\)$"):
        tr.fit((X, Y), epochs=1, batch_size=16, progress=False, callbacks=[Poison()])


def test_a_float16_overflow_is_named_in_the_diverged_step_message(rng):
    """With precision='fp16' a non-finite loss from finite weights is most often a float16
    activation past 65504 (inputs of 1e4 here): the CPU message says so, and the parameters
    stay those before the step (the first one: the initial weights)."""
    X, y = _blobs(rng)
    model = _model()
    before = model.state_dict()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1), precision="fp16")
    with numpy.errstate(over="ignore", invalid="ignore"), pytest.raises(
            FloatingPointError, match=r"^non-finite loss nan at epoch 1, step 1 .*its output held \d+ NaN/inf "
                                      r"values of 48; with precision='fp16' the forward runs in float16, whose "
                                      r"largest value is 65504: an activation past it is inf .*; the largest "
                                      r"parameter is '0\.weight'"):
        tr.fit((X * 1e4, y), epochs=1, batch_size=16, progress=False)
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, before[k], err_msg=k)


def test_the_diverged_run_message_names_the_parameters_on_a_gpu_too(gpu_device, rng):
    """On a GPU (the sim here) the losses are read in bulk, so the run has gone on past the
    step whose loss was not finite; the message says at which step it was read and, read
    once the run has failed, which parameters hold NaN/inf (or the largest one)."""
    X, y = _blobs(rng)
    Y = (y.astype(numpy.float32) / 2).reshape(-1, 1)
    gpunet.manual_seed(0)
    model = Sequential(Dense(8, 16, activation="relu"), Dense(16, 1)).to(gpu_device)
    tr = Trainer(model, gpunet.MSELoss(), optim.SGD(model, lr=10.0, momentum=0.9), metrics=())
    with numpy.errstate(over="ignore", invalid="ignore"), pytest.raises(
            FloatingPointError, match=r"^non-finite loss (inf|nan) at epoch 1, step \d+ .*; read at step 13 \(on a "
                                      r"GPU the losses are read in bulk\): the updates of the steps up to it were "
                                      r"applied; (parameters? holding NaN/inf: |the largest parameter is )"):
        tr.fit((X, Y), epochs=1, batch_size=16, progress=False)


def _fit_until_interrupted(tr, model, X, y):
    """``(states, interrupted)``: one epoch of ``tr.fit`` in batches of 50, the model's
    state_dict after each batch, and whether a KeyboardInterrupt ended it."""
    states = []

    class Record(Callback):
        def on_batch_end(self, trainer, step, logs):
            states.append(model.state_dict())
    try:
        tr.fit((X, y), epochs=1, batch_size=50, progress=False, callbacks=[Record()])
    except KeyboardInterrupt:
        return states, True
    return states, False


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_ctrl_c_during_an_update_waits_for_the_whole_update(rng, monkeypatch, request, precision):
    """Found by the failure-path audit: a Ctrl-C (SIGINT) that arrived while the optimizer
    looped over the parameters raised KeyboardInterrupt there, leaving the first parameter
    updated and the others not, and the step uncounted (observed here: after the
    interrupt, 0.weight held step 3's update, 0.bias, 1.weight and 1.bias step 2's). fit now
    holds a Ctrl-C that arrives during a step's update until the update and the step count
    are done, then raises it: the model holds the whole update of that step. A second
    Ctrl-C does not wait; a Ctrl-C elsewhere is raised at once, as before.

    The loop over parameters is SGD's per-parameter path (Adam's, float16's, the kernels
    off): the CPU's SGD otherwise updates every parameter in one compiled call, which this
    test turns off (see the next test for that call)."""
    import signal
    X, y = _blobs(rng)
    monkeypatch.setattr(optim.SGD, "_host_step", optim.Optimizer._host_step)
    # Python's own Ctrl-C handler, whatever the run inherited: a pytest started in the
    # background (nohup, 'cmd &' in a script) ignores SIGINT, and then fit rightly leaves it
    # alone and the os.kill below does nothing (observed: (False, 4, 4))
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    if inherited is not None:
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, inherited))

    def run(interrupt_at=None, twice=False):
        gpunet.manual_seed(0)
        model = _model()
        opt = optim.SGD(model, lr=0.1, momentum=0.9)
        real = type(opt)._update
        calls = []

        def update(self, i, p, g, lr):
            real(self, i, p, g, lr)
            calls.append(i)
            if interrupt_at is not None and len(calls) in (interrupt_at, interrupt_at + twice):
                os.kill(os.getpid(), signal.SIGINT)         # Ctrl-C, in the middle of the loop
        monkeypatch.setattr(type(opt), "_update", update)
        scaler = gpunet.amp.GradScaler(init_scale=2.0 ** 8) if precision == "fp16" else None   # no skipped step
        tr = Trainer(model, SoftmaxCrossEntropy(), opt, precision=precision, scaler=scaler)
        return (tr, model, *_fit_until_interrupted(tr, model, X, y))
    _, _, reference, interrupted = run()
    assert not interrupted and len(reference) == 4
    n = len(_model().parameters())
    tr, model, states, interrupted = run(interrupt_at=2 * n + 1)      # the 1st parameter of step 3
    assert (interrupted, tr.global_step, len(states)) == (True, 3, 2)
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, reference[2][k], err_msg=k)   # all of step 3's update
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # a second Ctrl-C in the same update is not held
    tr, model, states, interrupted = run(interrupt_at=2 * n + 1, twice=True)
    assert interrupted and tr.global_step == 2
    assert any(not numpy.array_equal(v, reference[2][k]) for k, v in model.state_dict().items())


def test_a_ctrl_c_right_after_the_one_call_update_waits_for_the_step_count(rng, monkeypatch, request):
    """The CPU's SGD updates every parameter in one compiled call (hostkernels.sgd_many),
    then counts the step: a Ctrl-C that arrives as that call returns is held until the
    count is done too, and the model holds the whole update of that step."""
    import signal
    from gpunet import hostkernels
    if hostkernels.library() is None:
        pytest.skip("no compiled kernels here: SGD runs parameter by parameter")
    X, y = _blobs(rng)
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    if inherited is not None:
        request.addfinalizer(lambda: signal.signal(signal.SIGINT, inherited))
    real = hostkernels.sgd_many

    def run(interrupt_at=None):
        gpunet.manual_seed(0)
        model = _model()
        opt = optim.SGD(model, lr=0.1, momentum=0.9)
        calls = []

        def sgd_many(*args):
            done = real(*args)
            calls.append(done)
            if len(calls) == interrupt_at:
                os.kill(os.getpid(), signal.SIGINT)         # Ctrl-C, as the call returns
            return done
        monkeypatch.setattr(hostkernels, "sgd_many", sgd_many)
        tr = Trainer(model, SoftmaxCrossEntropy(), opt)
        return (tr, model, *_fit_until_interrupted(tr, model, X, y), calls)
    _, _, reference, interrupted, calls = run()
    # the first step copies g into the momentum buffers (NumPy), the other three: one call each
    assert not interrupted and len(reference) == 4 and calls == [True] * 3
    tr, model, states, interrupted, _ = run(interrupt_at=2)      # step 3's call
    assert (interrupted, tr.global_step, len(states)) == (True, 3, 2)
    assert tr.optimizer.steps == [3] * len(model.parameters())
    for k, v in model.state_dict().items():
        numpy.testing.assert_array_equal(v, reference[2][k], err_msg=k)


def test_a_checkpoint_that_cannot_be_written_mid_run_says_the_model_is_still_there(tmp_path, rng):
    """Found by the failure-path audit: when ModelCheckpoint's folder was removed during the
    run, fit stopped with gpunet.save's FileNotFoundError, which named neither the callback
    nor the epoch, nor that the trained model was still in memory. The error (still the
    same OSError subclass, with errno and filename) now says all three."""
    import shutil
    X, y = _blobs(rng)
    folder = tmp_path / "ckpt"
    folder.mkdir()

    class Remove(Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            if epoch == 1:
                shutil.rmtree(folder)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model, lr=0.1))
    with pytest.raises(FileNotFoundError, match=r"ModelCheckpoint could not save epoch 2 \(No such file or "
                                                r"directory \(no folder .*\)\); fit stops here, and the trained "
                                                r"model is still in memory: save it elsewhere with gpunet.save") as e:
        tr.fit((X, y), epochs=4, progress=False,
               callbacks=[Remove(), ModelCheckpoint(folder / "c.npz", monitor="loss", save_best_only=False)])
    assert e.value.filename == str(folder / "c.npz") and tr.history.epoch == [0]
    gpunet.save(tmp_path / "rescued.npz", tr.model, tr.optimizer)       # what the message proposes
    assert gpunet.load(tmp_path / "rescued.npz", _model()) == {}
