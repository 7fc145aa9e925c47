"""Budgets of a training step on the sim device (issue 12, part A): host syncs and
host-to-device bytes, exact counts from ``gpunet.sim.counters()``.

A steady-state step of ``Trainer.fit`` makes no host sync and, with the data resident on the
device, copies no byte from the host; the host reads the device's record of losses and
correct counts once per progress refresh (time-based) and once at the end of the epoch.
A hand-written loop's step makes no sync until ``float(loss)``.
"""
import numpy
import pytest

import gpunet
from gpunet import Dense, Sequential, SoftmaxCrossEntropy, data as gdata, optim, sim, train
from gpunet.train import Callback, Trainer

pytestmark = pytest.mark.skipif(sim.compiler() is None, reason="no C++ compiler: no sim device")

N, D, C, B = 200, 8, 3, 16          # 13 steps per epoch, the last one of 8 samples
STEPS = -(-N // B)


def _blobs(n=N, d=D, c=C, seed=0):
    rng = numpy.random.default_rng(seed)
    centers = rng.normal(0, 3, size=(c, d))
    y = rng.integers(0, c, size=n)
    X = (centers[y] + rng.normal(0, 1, size=(n, d))).astype(numpy.float32)
    return X, y.astype(numpy.int64)


def _trainer(device="sim"):
    gpunet.manual_seed(0)
    model = Sequential(Dense(D, 16, activation="relu"), Dense(16, C)).to(device)
    return Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1, momentum=0.9))


class Costs(Callback):
    """The sim's counters of every step (from one ``on_batch_end`` to the next) and of
    every epoch (``on_epoch_begin`` to ``on_epoch_end``, the epoch-end read included)."""

    def __init__(self):
        self.steps, self.epochs = [], []

    def on_epoch_begin(self, trainer, epoch):
        sim.reset_counters()
        self._epoch = []

    def on_batch_end(self, trainer, step, logs):
        self._epoch.append(sim.counters())
        self.steps.append(self._epoch[-1] if step == 0 else _minus(self._epoch[-1], self._epoch[-2]))

    def on_epoch_end(self, trainer, epoch, logs):
        self.epochs.append(sim.counters())


def _minus(a, b):
    d = {k: a[k] - b[k] for k in ("launches", "syncs", "h2d_bytes", "d2h_bytes", "h2d_async_bytes")}
    d["kernels"] = {k: v - b["kernels"].get(k, 0) for k, v in a["kernels"].items()
                    if v != b["kernels"].get(k, 0)}
    return d


def _fit(progress=False, epochs=2, **kw):
    """Fit twice on fresh loaders; count the second fit (the first compiles the kernels
    and creates what the optimizer keeps on the device)."""
    X, y = _blobs()
    tr = _trainer()
    tr.fit((X[:B], y[:B]), epochs=1, batch_size=B, progress=False)
    costs = Costs()
    h = tr.fit((X, y), epochs=epochs, batch_size=B, callbacks=[costs], progress=progress, **kw)
    return tr, h, costs


def test_trainer_step_makes_no_sync_and_copies_no_byte_with_resident_data():
    tr, h, costs = _fit()
    assert len(costs.steps) == 2 * STEPS
    steady = costs.steps[2:STEPS] + costs.steps[STEPS + 1:]
    for c in steady:
        assert (c["syncs"], c["h2d_bytes"], c["d2h_bytes"]) == (0, 0, 0), c
    # every steady step launches the same kernels (the last, smaller batch included)
    assert len({c["launches"] for c in steady}) == 1
    # one read per epoch: the record of 13 losses and the correct count, in float64
    for e in costs.epochs:
        assert (e["syncs"], e["d2h_bytes"]) == (1, (STEPS + 1) * 8)
    # the data went to the device once (epoch 0), the shuffled order once per epoch
    assert costs.epochs[0]["h2d_bytes"] == N * D * 4 + N * 8 + N * 8
    assert costs.epochs[1]["h2d_bytes"] == N * 8
    assert h["loss"][1] < h["loss"][0]
    assert costs.steps[0]["h2d_bytes"] == costs.epochs[0]["h2d_bytes"]   # before step 1 ends


def test_progress_refreshes_are_time_based_one_sync_each(monkeypatch):
    """With a clock that advances one unit per step and a refresh every 3 units, the bar
    reads the device at steps 3, 6, 9, 12 and at the last step (13): 5 syncs an epoch, and
    none at the epoch's end, where nothing is left unread."""
    ticks = iter(range(10**6))
    monkeypatch.setattr(train, "_clock", lambda: next(ticks))
    monkeypatch.setattr(train, "PROGRESS_REFRESH_SECONDS", 3)
    _, _, costs = _fit(progress=True)
    syncs = [c["syncs"] for c in costs.steps[:STEPS]]
    # step k's counters run from the previous on_batch_end to this one: the refresh after
    # step k is counted in step k + 1, the one after the last step in the epoch's total
    assert [i for i, s in enumerate(syncs) if s] == [3, 6, 9, 12]
    assert all(s == 1 for s in syncs if s)
    assert [e["syncs"] for e in costs.epochs] == [5, 5]


def test_a_clock_that_stands_still_refreshes_once_per_epoch(monkeypatch):
    monkeypatch.setattr(train, "_clock", lambda: 0.0)
    _, _, costs = _fit(progress=True)
    assert sum(c["syncs"] for c in costs.steps) == 0
    assert [e["syncs"] for e in costs.epochs] == [1, 1]


def test_history_on_the_sim_matches_the_cpu():
    """The device record gives the same History as reading every loss (float32 sums in
    another order on the device, and the kernels' last bits carried through two epochs of
    training, are the only differences: close, not bit-equal). The second epoch's loss is
    small (3e-4), and a last-bit difference in the weights moves it by 2e-5 of itself on the
    AMD EPYC host (OpenBLAS's Haswell kernels); a History built wrongly (a step missed or
    counted twice, a sum of the wrong dtype) is off by a step's share, 1/13 or more."""
    X, y = _blobs()
    hs = []
    for device in ("cpu", "sim"):
        tr = _trainer(device)
        hs.append(tr.fit((X, y), epochs=2, batch_size=B, progress=False))
    for k in ("loss", "accuracy"):
        numpy.testing.assert_allclose(hs[1][k], hs[0][k], rtol=1e-4)


def test_data_too_large_for_the_device_moves_batch_by_batch(monkeypatch):
    """Data that does not fit goes through pinned memory on a second stream, one batch
    ahead: step k's counters hold the asynchronous copy of batch k+1 (the first step's, of
    batches 0 and 1; the last step's, nothing), never a sync, and the same launches as a
    resident step; the results are the resident run's."""
    monkeypatch.setattr(gdata, "RESIDENT_FRACTION", 0.0)
    tr, h, costs = _fit(epochs=1)
    full, last = B * (D * 4 + 8), (N % B) * (D * 4 + 8)
    want = [2 * full] + [full] * (STEPS - 3) + [last, 0]
    assert [c["h2d_bytes"] for c in costs.steps] == want
    assert [c["h2d_async_bytes"] for c in costs.steps[1:]] == want[1:]
    assert all(c["syncs"] == 0 for c in costs.steps)
    assert len({c["launches"] for c in costs.steps[1:]}) == 1
    monkeypatch.setattr(gdata, "RESIDENT_FRACTION", 0.5)
    tr2, h2, _ = _fit(epochs=1)
    assert h2["loss"] == pytest.approx(h["loss"], rel=1e-6)
    for a, b in zip(tr.model.parameters(), tr2.model.parameters()):
        numpy.testing.assert_allclose(gpunet.to_numpy(a.data), gpunet.to_numpy(b.data), rtol=1e-6)


def test_staged_batches_are_the_host_batches_and_ordered_by_events(monkeypatch):
    """The staged loader yields the batches of the host loader (shuffled, sharded-free,
    with and without labels); reading a staged copy without the event wait raises on the
    sim (what a GPU would do silently: read stale data)."""
    monkeypatch.setattr(gdata, "RESIDENT_FRACTION", 0.0)
    X, y = _blobs()
    for shuffle in (False, True):
        for labels in (y, None):
            staged = gdata.DataLoader(X, labels, batch_size=B, shuffle=shuffle, seed=3, device="sim")
            host = gdata.DataLoader(X, labels, batch_size=B, shuffle=shuffle, seed=3)
            n = 0
            for a, b in zip(staged, host):
                a, b = (a, b) if labels is not None else ((a,), (b,))
                for u, v in zip(a, b):
                    numpy.testing.assert_array_equal(gpunet.to_numpy(u), v)
                n += 1
            assert n == STEPS and not staged.resident
    assert_an_unwaited_copy_is_refused()


def assert_an_unwaited_copy_is_refused():
    """A copy on a side stream is refused on the compute stream until that stream waits for
    it (what a GPU would do silently: read stale data); after the wait it reads right."""
    sp = gpunet.backend.require_sim()
    copy = sp.cuda.Stream(non_blocking=True)
    pinned = numpy.frombuffer(sp.cuda.alloc_pinned_memory(4 * 8), numpy.float32, 8)
    pinned[...] = 1.0
    d = sp.empty(8, numpy.float32)
    d.set(pinned, stream=copy)
    with pytest.raises(RuntimeError, match="wait_event"):
        d + 1
    sp.cuda.get_current_stream().wait_event(copy.record())
    assert float((d + 1).sum()) == 16.0


def test_a_new_stream_does_not_inherit_a_freed_streams_waits():
    """The sim's ordering check keys waits by the stream itself (weakly), not id(): a freed
    stream's id comes back for the next stream CPython allocates, and with id() keys that
    stream inherited the waits (the staged-loader test above then failed now and then)."""
    sp = gpunet.backend.require_sim()
    cur = sp.cuda.get_current_stream()
    pinned = numpy.frombuffer(sp.cuda.alloc_pinned_memory(4 * 8), numpy.float32, 8)
    pinned[...] = 1.0
    d = sp.empty(8, numpy.float32)
    for _ in range(20):
        copy = sp.cuda.Stream(non_blocking=True)
        for _ in range(3):
            d.set(pinned, stream=copy)
        cur.wait_event(copy.record())
        float((d + 1).sum())
        del copy
        fresh = sp.cuda.Stream(non_blocking=True)
        d.set(pinned, stream=fresh)
        with pytest.raises(RuntimeError, match="wait_event"):
            d + 1
        cur.wait_event(fresh.record())
        del fresh


def test_evaluate_reads_the_device_once():
    X, y = _blobs()
    tr = _trainer()
    tr.evaluate((X, y), batch_size=32)          # compile, buffers
    sim.reset_counters()
    ev = tr.evaluate((X, y), batch_size=32)
    c = sim.counters()
    assert c["syncs"] == 1 and c["d2h_bytes"] == (-(-N // 32) + 1) * 8
    cpu = _trainer("cpu").evaluate((X, y), batch_size=32)
    assert ev["accuracy"] == cpu["accuracy"]
    assert ev["loss"] == pytest.approx(cpu["loss"], rel=1e-5)


def test_hand_written_loop_makes_no_sync_until_the_loss_is_read():
    X, y = _blobs()
    tr = _trainer()
    model, loss_fn, opt = tr.model, tr.loss_fn, tr.optimizer
    loader = gdata.DataLoader(X, y, batch_size=B, shuffle=True, seed=0, device="sim")
    it = iter(loader)

    def step():
        xb, yb = next(it)
        loss = loss_fn(model(xb), yb)
        model.zero_grad()
        model.backward(loss_fn.backward())
        opt.step()
        return loss

    float(step())                               # warm-up: compile, the data's one copy
    assert loader.resident
    sim.reset_counters()
    losses = [step() for _ in range(3)]
    c = sim.counters()
    assert (c["syncs"], c["h2d_bytes"], c["d2h_bytes"]) == (0, 0, 0)
    value = float(losses[-1])
    c = sim.counters()
    assert (c["syncs"], c["d2h_bytes"]) == (1, 4) and numpy.isfinite(value)


def test_a_bad_label_is_raised_with_its_step_at_the_end_of_the_epoch():
    X, y = _blobs()

    class Spoil(Callback):      # after fit's checks of the labels, which would name it first
        def on_epoch_begin(self, trainer, epoch):
            y[2 * B + 5] = 7                     # step 3 (no shuffle), row 5 of its batch
    tr = _trainer()
    costs = Costs()
    with pytest.raises(ValueError, match=r"e\.g\. 7 at row 5.*epoch 1, step 3$"):
        tr.fit((X, y), epochs=2, batch_size=B, shuffle=False, callbacks=[Spoil(), costs], progress=False)
    # no step synced to find it: the epoch-end read did, then the flag's read
    assert len(costs.steps) == STEPS and sum(c["syncs"] for c in costs.steps) == 0
    float(tr.loss_fn(tr.model(gpunet.to_device(X[:4], "sim")), gpunet.to_device(y[:4], "sim")))


def test_a_non_finite_loss_names_its_step_on_the_sim_as_on_the_cpu():
    X, y = _blobs()
    X[4 * B + 1] = numpy.inf                     # step 5, without shuffling
    for device in ("cpu", "sim"):
        with pytest.raises(FloatingPointError, match=rf"at epoch 1, step 5: the training data X holds "
                                                     rf"{X.shape[1]} NaN/inf values, in row {4 * B + 1};"):
            with numpy.errstate(invalid="ignore", over="ignore"):
                _trainer(device).fit((X, y), epochs=1, batch_size=B, shuffle=False, progress=False)


def test_gpunet_train_mlp_step_with_adam_fits_the_issue_budget():
    """``gpunet train``'s MLP 64-256-128-10 with Adam on the digits, a steady-state step of
    ``Trainer.fit``: at most 25 launches (issue 12), of which the Trainer's own are the
    argmax and the compare of the accuracy; the data, resident and shuffled a whole epoch
    at a time, costs no launch (two an epoch, in its first step)."""
    from gpunet import datasets, models
    (X, y), _ = datasets.load_digits()
    gpunet.manual_seed(0)
    model = models.mlp((64, 256, 128, 10)).to("sim")
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.Adam(model.parameters(), lr=1e-3))
    costs = Costs()
    tr.fit((X, y), epochs=2, batch_size=64, callbacks=[costs], progress=False)
    steps = len(costs.steps) // 2
    steady = costs.steps[2:steps] + costs.steps[steps + 1:]
    for c in steady:
        assert c["launches"] <= 25 and (c["syncs"], c["h2d_bytes"]) == (0, 0), c
        assert "take" not in c["kernels"] and "setitem" not in c["kernels"], c
        assert (c["kernels"]["argmax"], c["kernels"]["equal"]) == (1, 1), c
    assert costs.steps[steps]["kernels"]["take"] == 2          # the epoch's shuffled copy


def test_optimizer_launches_do_not_grow_with_the_number_of_parameters():
    """A deep, narrow MLP with 160 parameter tensors (80 Dense layers): the optimizer's
    update is one launch per steady step (issue 12: at most 2 whatever the number of
    parameters), with Adam and with SGD-momentum, and no sync."""
    X, y = _blobs()
    for make in (lambda ps: optim.Adam(ps, lr=1e-3), lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9)):
        gpunet.manual_seed(0)
        model = Sequential(Dense(D, 4, activation="relu"),
                           *(Dense(4, 4, activation="relu") for _ in range(78)), Dense(4, C)).to("sim")
        assert len(model.parameters()) == 160
        tr = Trainer(model, SoftmaxCrossEntropy(), make(model.parameters()))
        costs = Costs()
        tr.fit((X[:4 * B], y[:4 * B]), epochs=2, batch_size=B, callbacks=[costs], progress=False)
        steady = costs.steps[1:4] + costs.steps[5:]
        for c in steady:
            mt = {k: v for k, v in c["kernels"].items() if k.startswith("mt_") or k == "fill"}
            assert sum(mt.values()) <= 2 and len(mt) == 1, mt
            assert c["syncs"] == 0, c


def test_an_abandoned_staged_copy_is_forgotten_with_its_array(monkeypatch):
    """A loop that stops early leaves the next batch's copy un-waited; once that array is
    gone its memory may hold another array, which must read without complaint."""
    import gc
    monkeypatch.setattr(gdata, "RESIDENT_FRACTION", 0.0)
    X, y = _blobs()
    it = iter(gdata.DataLoader(X, y, batch_size=B, device="sim"))
    next(it)
    del it
    gc.collect()
    from gpunet.sim import _counters
    sp = gpunet.backend.require_sim()
    for _ in range(50):                    # fresh arrays over the freed memory
        a = sp.asarray(X[:B])
        float(a.sum())
    assert all(e[4]() is not None for e in _counters._pending)


def test_binary_accuracy_costs_no_sync_and_matches_the_cpu():
    """One output column: the binary-accuracy record (two thresholds and a compare on the
    device) keeps a steady fit step free of syncs and copies, evaluate reads the device
    once, and the accuracy is the CPU's."""
    X, y = _blobs(c=2)
    y[::5] = 1 - y[::5]                 # label noise: no model gets them all
    yb = y.reshape(-1, 1).astype(numpy.float32)

    def trainer(device):
        gpunet.manual_seed(0)
        model = Sequential(Dense(D, 16, activation="relu"), Dense(16, 1)).to(device)
        return Trainer(model, gpunet.losses.BCEWithLogits(), optim.SGD(model.parameters(), lr=0.1))

    tr = trainer("sim")
    tr.fit((X[:B], yb[:B]), epochs=1, batch_size=B, progress=False)
    costs = Costs()
    h = tr.fit((X, yb), epochs=1, batch_size=B, callbacks=[costs], progress=False)
    for c in costs.steps[2:]:
        assert (c["syncs"], c["h2d_bytes"], c["d2h_bytes"]) == (0, 0, 0), c
    assert costs.epochs[0]["syncs"] == 1
    cpu = trainer("cpu")
    cpu.fit((X[:B], yb[:B]), epochs=1, batch_size=B, progress=False)
    hc = cpu.fit((X, yb), epochs=1, batch_size=B, progress=False)
    assert 0.5 < h["accuracy"][0] < 1.0
    assert h["accuracy"] == hc["accuracy"]
    sim.reset_counters()
    ev = tr.evaluate((X, yb), batch_size=32)
    assert sim.counters()["syncs"] == 1
    assert ev["accuracy"] == cpu.evaluate((X, yb), batch_size=32)["accuracy"]


def test_ignore_index_record_costs_three_launches_and_no_sync():
    """With the loss's ignore_index, the record counts each step's rows not ignored on the
    device: a not_equal, a sum into the record and an ``&=`` on the hits, 3 launches a step
    beyond the loss's own. A steady step still makes no sync and copies no byte; the epoch's
    one read brings the counts with the losses ((2 * 13 + 1) float64), and loss and accuracy
    equal the CPU's."""
    X, y = _blobs()
    y[::4] = -100

    def fit(device, ignore):
        gpunet.manual_seed(0)
        model = Sequential(Dense(D, 16, activation="relu"), Dense(16, C)).to(device)
        tr = Trainer(model, SoftmaxCrossEntropy(ignore_index=ignore),
                     optim.SGD(model.parameters(), lr=0.1, momentum=0.9))
        labels = y if ignore is not None else numpy.where(y < 0, 0, y)
        tr.fit((X[:B], labels[:B]), epochs=1, batch_size=B, progress=False)
        costs = Costs()
        h = tr.fit((X, labels), epochs=1, batch_size=B, callbacks=[costs], progress=False)
        return h, costs

    h, costs = fit("sim", -100)
    steady = costs.steps[2:]
    for c in steady:
        assert (c["syncs"], c["h2d_bytes"], c["d2h_bytes"]) == (0, 0, 0), c
        assert c["kernels"]["not_equal"] == c["kernels"]["bitwise_and"] == 1, c
    assert costs.epochs[0]["syncs"] == 1
    assert costs.epochs[0]["d2h_bytes"] == (2 * STEPS + 1) * 8
    # the loss with ignore_index launches count_valid and a divide and sums instead of a
    # mean (+2 over a plain step); the record adds the other 3
    _, plain = fit("sim", None)
    assert {c["launches"] for c in steady} == {plain.steps[3]["launches"] + 5}
    hc, _ = fit("cpu", -100)
    assert 0.0 < h["accuracy"][0] < 1.0
    assert h["accuracy"] == pytest.approx(hc["accuracy"], abs=1e-12)
    assert h["loss"] == pytest.approx(hc["loss"], rel=1e-5)
