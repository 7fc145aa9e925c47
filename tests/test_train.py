"""Trainer, History and callbacks; checkpoints and bit-for-bit resume."""
import os
import zipfile

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
    assert set(h.keys()) == {"loss", "accuracy", "val_loss", "val_accuracy"}
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
    with pytest.raises(FloatingPointError, match=r"epoch 1, step \d+"):
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


def test_early_stopping_unknown_monitor(rng):
    X, y = _blobs(rng)
    model = _model()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="val_loss"):
        tr.fit((X, y), epochs=2, callbacks=[EarlyStopping()], progress=False)


def test_model_checkpoint_saves_best(tmp_path, rng):
    X, y = _blobs(rng)
    model = _model()
    path = tmp_path / "best.npz"
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=1e-2))
    tr.fit((X, y), val=(X, y), epochs=4, callbacks=[ModelCheckpoint(path)], progress=False)
    meta = gpunet.load(path, _model(seed=5))
    assert 1 <= meta["epoch"] <= 4 and "val_loss" in meta


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
