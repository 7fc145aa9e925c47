"""CUDA graphs (issue 12): ``gpunet.cuda.graphs.CUDAGraph`` in a hand-written loop and
``Trainer(..., cuda_graph=True)``, on the sim device, where a replay re-runs the captured
step and checks every launch, kernel argument, operand address and allocation against the
capture (``gpunet.sim._counters``). Budgets: a replayed step is 1 graph launch and 0 syncs;
results equal the eager run's bit for bit."""
import math

import numpy
import pytest

import gpunet
from gpunet import BatchNorm, Dense, Dropout, Sequential, SoftmaxCrossEntropy, optim, sim, to_numpy
from gpunet.cuda import CUDAGraph
from gpunet.cuda.graphs import capturing
from gpunet.sim._counters import GraphReplayError
from gpunet.train import Callback, Trainer

import graph_cases  # noqa: E402  (tests/ is on sys.path under pytest)

pytestmark = pytest.mark.skipif(sim.compiler() is None, reason="no C++ compiler: no sim device")

B = 16


def _data(n=96, d=8, c=3, seed=0):
    rng = numpy.random.default_rng(seed)
    return rng.standard_normal((n, d)).astype(numpy.float32), rng.integers(0, c, n)


def _setup(hidden=None, lr=0.01):
    gpunet.manual_seed(0)
    m = Sequential(Dense(8, 16, activation="relu"), *(hidden or ()), Dense(16, 3)).to("sim")
    return m, SoftmaxCrossEntropy(), optim.Adam(m.parameters(), lr=lr)


def _loop(m, lf, opt):
    sp = gpunet.backend.require_sim()
    sx, sy = sp.empty((B, 8), numpy.float32), sp.empty((B,), numpy.int64)

    def step():
        loss = lf(m(sx), sy)
        m.zero_grad()
        m.backward(lf.backward())
        opt.step()
        return loss

    def load(X, y, i):
        sx[...] = sp.asarray(X[B * i:B * (i + 1)])
        sy[...] = sp.asarray(y[B * i:B * (i + 1)])
    return step, load


def _warmed(hidden=None):
    """The model, optimizer and hand-written step of ``_loop`` after one eager step on
    batch 0 (kernels compiled, the optimizer's state made): ``(X, y, m, opt, step, load,
    that step's loss)``."""
    X, y = _data()
    m, lf, opt = _setup(hidden=hidden)
    step, load = _loop(m, lf, opt)
    load(X, y, 0)
    return X, y, m, opt, step, load, float(step())


def _eager(X, y, steps, lrs=None, hidden=None):
    m, lf, opt = _setup(hidden=hidden)
    sp = gpunet.backend.require_sim()
    losses = []
    for i in range(steps):
        if lrs:
            opt.lr = lrs[i]
        loss = lf(m(sp.asarray(X[B * i:B * (i + 1)])), sp.asarray(y[B * i:B * (i + 1)]))
        m.zero_grad()
        m.backward(lf.backward())
        opt.step()
        losses.append(float(loss))
    return m, opt, losses


def test_hand_written_loop_replays_in_one_launch_with_the_eager_results():
    # a schedule: lr changes between replays, and between the warm-up and the capture (whose
    # run used the warm-up's lr, before the hooks ran ahead of the graph's first run)
    lrs = [0.01, 0.008, 0.008, 0.005, 0.005, 0.0025]
    X, y, m, opt, step, load, first = _warmed()
    losses = [first]                           # eager warm-up: kernels, table, state
    g = CUDAGraph("sim")
    load(X, y, 1)
    opt.lr = lrs[1]
    loss = g.capture(step)
    assert capturing() is None
    losses.append(float(loss))
    costs = []
    for i in range(2, 6):
        opt.lr = lrs[i]
        load(X, y, i)
        sim.reset_counters()
        g.replay()
        costs.append(sim.counters())
        losses.append(float(loss))             # the static output holds this step's loss
    for c, lr_changed in zip(costs, (False, True, False, True)):
        want = {"cudaGraphLaunch": 1, **({"fill": 1} if lr_changed else {})}
        assert c["kernels"] == want, c
        assert (c["graph_launches"], c["syncs"], c["h2d_bytes"], c["allocs"]) == (1, 0, 0, 0)
    me, oe, want_losses = _eager(X, y, 6, lrs)
    assert losses == want_losses
    for a, b in zip(m.parameters(), me.parameters()):
        numpy.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data))
    assert opt.steps == oe.steps == [6] * 4
    load(X, y, 0)
    g.replay()                                 # counts read before, then a replay: read again
    assert opt.steps == [7] * 4
    opt.load_state_dict(opt.state_dict())      # new device state: the graph holds the old one
    with pytest.raises(RuntimeError, match="capture the step again"):
        g.replay()


def test_capture_refuses_a_host_sync_and_a_copy_from_the_host():
    X, y, m, opt, step, load, _ = _warmed()
    for bad, what in ((lambda: float(step()), "host synchronization"),
                      (lambda: gpunet.to_device(X[:2], "sim"), "host-to-device copy")):
        with pytest.raises(RuntimeError, match=f"stream is capturing.*{what}"):
            CUDAGraph("sim").capture(bad)
        assert capturing() is None and not sim._counters.capturing()


def test_a_step_that_reallocates_fails_loudly_on_replay():
    X, y, m, opt, step, load, _ = _warmed()
    g = CUDAGraph("sim")
    g.capture(step)
    g.replay()
    w = m[0].weight
    w.data = w.data.copy()                     # a new array: the graph holds the old address
    with pytest.raises(GraphReplayError, match="captured .* replayed"):
        g.replay()


def _bn_dropout():
    return [BatchNorm(16), Dropout(0.3, seed=1)]


def test_dropout_counter_read_between_replays_is_the_devices():
    """On CUDA a replay runs no Python: the host runs the graph's before_replay hooks and
    the device advances the draw counter. Reading ``counter`` (a checkpoint, EarlyStopping's
    best state) between replays then returned the value of the previous read, so a
    checkpoint written after an epoch of replays held a stale counter and a resumed run
    drew the same masks again. Emulated here: the hooks, then the graph's draw launch (the
    sim's own replay re-runs the forward, which hid it)."""
    from gpunet.cuda import next_draw
    X, y, m, opt, step, load, _ = _warmed(hidden=_bn_dropout())
    drop = m[2]
    g = CUDAGraph("sim")
    load(X, y, 1)
    g.capture(step, model=m)
    assert drop.counter == 2                   # read: the device's value is now the host's
    for _ in range(3):                         # three replays as CUDA runs them
        for hook in g._hooks:
            hook()
        next_draw(drop._state)
    assert drop.counter == 5
    assert drop.state_dict()["counter"] == 5


def test_batchnorm_and_dropout_replay_like_eager_steps():
    """BatchNorm updates its running statistics in place and Dropout draws its mask from a
    counter on the device: replays give the eager run's losses, weights, statistics and
    masks bit for bit, one launch each."""
    X, y, m, opt, step, load, first = _warmed(hidden=_bn_dropout())
    bn, drop = m[1], m[2]
    losses = [first]
    g = CUDAGraph("sim")
    load(X, y, 1)
    loss = g.capture(step, model=m)
    losses.append(float(loss))
    kept = len(g._keep)
    for i in range(2, 6):
        load(X, y, i)
        sim.reset_counters()
        g.replay()
        c = sim.counters()
        assert c["kernels"] == {"cudaGraphLaunch": 1}, c
        assert (c["graph_launches"], c["syncs"], c["h2d_bytes"], c["allocs"]) == (1, 0, 0, 0)
        losses.append(float(loss))
    assert len(g._keep) == kept                # the sim's re-runs keep nothing more
    me, _, want_losses = _eager(X, y, 6, hidden=_bn_dropout())
    assert losses == want_losses
    for a, b in zip(m.parameters(), me.parameters()):
        numpy.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data))
    for k in ("running_mean", "running_var"):
        numpy.testing.assert_array_equal(to_numpy(getattr(bn, k)), to_numpy(getattr(me[1], k)))
    assert not numpy.array_equal(to_numpy(bn.running_mean), numpy.zeros(16))
    # the last replay drew (seed 1, counter 5), as gpunet.random computes it on the host
    assert drop.counter == me[2].counter == 6
    assert [int(v) for v in to_numpy(drop._state)] == [6, *gpunet.random.keys(1, 0)[:1],
                                                       gpunet.random.keys(1, 5)[1]]
    g.replay()
    assert drop.counter == 7                   # read again after a replay: the device's
    drop.counter = 2                           # written in place: the graph draws from 2
    g.replay()
    assert drop.counter == 3 and int(to_numpy(drop._state)[2]) == gpunet.random.keys(1, 2)[1]
    ones = gpunet.to_device(numpy.ones((B, 16), numpy.float32), "sim")
    kept = to_numpy(drop.backward(ones)) != 0  # the mask of the replay's draw, NumPy's
    numpy.testing.assert_array_equal(kept, gpunet.functional.dropout.keep_mask((B, 16), 0.3, 1, 2))
    bn.load_state_dict(bn.state_dict())        # new arrays: the graph updates the old ones
    with pytest.raises(RuntimeError, match="running_mean was replaced.*capture the step again"):
        g.replay()


def test_sim_graph_api_is_cupys():
    sp = gpunet.backend.require_sim()
    with pytest.raises(RuntimeError, match="null stream cannot be captured"):
        sp.cuda.get_current_stream().begin_capture()
    s = sp.cuda.Stream(non_blocking=True)
    s.begin_capture()
    assert s.is_capturing()
    g = s.end_capture()
    with pytest.raises(RuntimeError, match="through gpunet.cuda.graphs.CUDAGraph"):
        g.launch()
    with pytest.raises(ValueError, match="'cuda' or 'sim'"):
        CUDAGraph("cpu")
    with pytest.raises(RuntimeError, match="nothing captured"):
        CUDAGraph("sim").replay()


class _Costs(Callback):
    def __init__(self):
        self.steps = []

    def on_epoch_begin(self, trainer, epoch):
        sim.reset_counters()

    def on_batch_end(self, trainer, step, logs):
        self.steps.append(sim.counters())
        sim.reset_counters()


def _fit(kind, cuda_graph):
    m, X, y, opt, kw = graph_cases.build(kind, "sim")
    tr = Trainer(m, SoftmaxCrossEntropy(), opt, cuda_graph=cuda_graph, **kw)
    costs = _Costs()
    h = tr.fit((X, y), epochs=2, batch_size=32, callbacks=[costs], progress=False)
    return tr, h, costs.steps


@pytest.mark.parametrize("kind", graph_cases.KINDS)
def test_trainer_cuda_graph_one_launch_per_step_same_results(kind):
    tr, h, steps = _fit(kind, True)
    tr0, h0, _ = _fit(kind, False)
    assert h["loss"] == h0["loss"] and h["accuracy"] == h0["accuracy"]
    for a, b in zip(tr.model.parameters(), tr0.model.parameters()):
        numpy.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data))
    assert tr.optimizer.steps == tr0.optimizer.steps
    for a, b in zip(tr.model.state_dict().items(), tr0.model.state_dict().items()):
        assert a[0] == b[0]                    # running statistics, dropout counters too
        numpy.testing.assert_array_equal(a[1], b[1], err_msg=a[0])
    if "dropout" in kind:
        assert tr.model[2].counter == 20
    if tr.scaler is not None:
        assert tr.scaler.state_dict().keys() == tr0.scaler.state_dict().keys()
        assert tr.scaler.get_scale() == tr0.scaler.get_scale()
    per_epoch = math.ceil(300 / 32)            # 10 steps, the last one of 12 samples
    # eager: epoch 1's warm-up (0) and capture (1), the partial batches; the first step
    # of epoch 2 replays too but also shuffles the epoch's data on the device
    others = (0, 1, per_epoch - 1, per_epoch, 2 * per_epoch - 1)
    replayed = [c for i, c in enumerate(steps) if i not in others]
    assert len(steps) == 2 * per_epoch and len(replayed) == 15
    assert steps[per_epoch]["graph_launches"] == 1
    assert all(steps[i]["graph_launches"] == 0 for i in (0, 1, per_epoch - 1, 2 * per_epoch - 1))
    for c in replayed:
        # the graph, the batch copied into its static inputs (2), the record's loss copy,
        # argmax and compare; a fill when a per-step schedule changed lr
        extra = {k: v for k, v in c["kernels"].items() if k != "fill"}
        assert extra == {"cudaGraphLaunch": 1, "setitem": 2, "copy": 1, "argmax": 1, "equal": 1}, c
        assert (c["graph_launches"], c["syncs"], c["h2d_bytes"]) == (1, 0, 0)


def test_a_dropped_graph_trainer_and_hand_written_graph_go_without_the_cyclic_gc():
    """A sweep on the sim (build, fit with cuda_graph=True, evaluate, repeat): the Trainer
    held its graph, whose replays re-run the Trainer's bound step, and the sim's Graph held
    its CUDAGraph's bound replay: two reference cycles, so a dropped Trainer, its model and
    the graph's buffers lived on until the cyclic gc ran (11 trainers at once in a sweep of
    40, RSS up 12 MB). Both are held weakly now; a replay still runs while they are held."""
    import gc
    import weakref
    X, y = _data()
    gc.collect()
    gc.disable()                               # freed by reference counting alone
    try:
        gpunet.manual_seed(0)
        m = Sequential(Dense(8, 16, activation="relu"), Dropout(0.3, seed=1), Dense(16, 3)).to("sim")
        tr = Trainer(m, SoftmaxCrossEntropy(), optim.Adam(m.parameters()), cuda_graph=True)
        tr.fit((X, y), epochs=2, batch_size=B, progress=False)
        assert tr._graph is not None and sim.counters()["graph_launches"] > 0
        refs = [weakref.ref(o) for o in (tr, m, tr._graph[1], tr._graph[1]._graph)]
        del tr, m
        assert [r() for r in refs] == [None] * 4

        X, y, m, opt, step, load, _ = _warmed()
        g = CUDAGraph("sim")
        load(X, y, 1)
        loss = g.capture(step)
        load(X, y, 2)
        g.replay()
        assert math.isfinite(float(loss))
        refs = [weakref.ref(g), weakref.ref(g._graph)]
        del g
        assert [r() for r in refs] == [None] * 2
    finally:
        gc.enable()


def test_trainer_refuses_what_a_graph_cannot_replay():
    gpunet.manual_seed(0)
    m = Sequential(Dense(8, 3))
    with pytest.raises(ValueError, match="'cuda' or 'sim'"):
        Trainer(m, SoftmaxCrossEntropy(), optim.SGD(m), cuda_graph=True)
    with pytest.raises(TypeError, match="bool"):
        Trainer(m, SoftmaxCrossEntropy(), optim.SGD(m), cuda_graph="yes")


def test_more_than_64_parameter_tensors_under_a_graph():
    """160 parameter tensors (Dense layers 4 wide), Adam and clip_grad_norm in the step: the
    gradients past the 64 kernel arguments are new arrays in the capture; their table rows
    are patched by fills the graph records (no host-to-device copy in the capture), and
    the replays equal the eager run bit for bit in one launch each."""
    X, y = _data()
    sp = gpunet.backend.require_sim()

    def build():
        gpunet.manual_seed(0)
        m = Sequential(Dense(8, 4, activation="relu"),
                       *(Dense(4, 4, activation="relu") for _ in range(78)), Dense(4, 3)).to("sim")
        return m, SoftmaxCrossEntropy(), optim.Adam(m.parameters(), lr=0.01)

    def make_step(m, lf, opt, x, t):
        def step():
            loss = lf(m(x), t)
            m.zero_grad()
            m.backward(lf.backward())
            optim.clip_grad_norm(m.parameters(), 0.5)
            opt.step()
            return loss
        return step

    m, lf, opt = build()
    assert len(m.parameters()) == 160
    sx, sy = sp.empty((B, 8), numpy.float32), sp.empty((B,), numpy.int64)
    step = make_step(m, lf, opt, sx, sy)
    losses = []
    for i in range(5):
        sx[...] = sp.asarray(X[B * i:B * (i + 1)])
        sy[...] = sp.asarray(y[B * i:B * (i + 1)])
        if i == 0:
            losses.append(float(step()))
        elif i == 1:
            g = CUDAGraph("sim")
            loss = g.capture(step)
            losses.append(float(loss))
            kept = len(g._keep)
        else:
            sim.reset_counters()
            g.replay()
            c = sim.counters()
            assert c["kernels"] == {"cudaGraphLaunch": 1} and c["h2d_bytes"] == 0
            losses.append(float(loss))
    # the patched tables are made anew at each of the sim's replays (re-runs of the step):
    # the graph kept every one of them, two more per step for good (optimizer and clipping)
    assert len(g._keep) == kept
    me, lfe, oe = build()
    want = []
    for i in range(5):
        xb, yb = sp.asarray(X[B * i:B * (i + 1)]), sp.asarray(y[B * i:B * (i + 1)])
        want.append(float(make_step(me, lfe, oe, xb, yb)()))
    assert losses == want
    for a, b in zip(m.parameters(), me.parameters()):
        numpy.testing.assert_array_equal(to_numpy(a.data), to_numpy(b.data))


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1), lambda ps: optim.Adam(ps, eps=1e-3)],
                         ids=["SGD", "Adam"])
def test_a_float16_model_is_refused_by_capture_not_replayed_with_stale_scalars(make):
    """A float16 model (model.to(dtype=numpy.float16)) steps one parameter at a time with
    host scalars (lr, Adam's bias corrections), the multi-tensor kernels having no float16
    variant. Trainer(cuda_graph=True) failed with KeyError: dtype('float16') on main; a
    capture of that step would replay the first step's scalars forever (the sim catches it
    as a GraphReplayError, a real GPU would not), so the capture is refused, naming why."""
    X, y = _data()
    gpunet.manual_seed(0)
    m = Sequential(Dense(8, 16, activation="relu"), Dense(16, 3)).to(dtype=numpy.float16)
    t = Trainer(m, SoftmaxCrossEntropy(), make(m.parameters()), device="sim", cuda_graph=True)
    with pytest.raises(RuntimeError, match=r"float16 parameters are updated one at a time with host "
                                           r"scalars, which a CUDA graph cannot capture .*; train "
                                           r"without cuda_graph"):
        t.fit((X.astype(numpy.float16), y), epochs=1, batch_size=B, progress=False)
    gpunet.manual_seed(0)
    m = Sequential(Dense(8, 16, activation="relu"), Dense(16, 3)).to(dtype=numpy.float16)
    t = Trainer(m, SoftmaxCrossEntropy(), make(m.parameters()), device="sim")
    h = t.fit((X.astype(numpy.float16), y), epochs=1, batch_size=B, progress=False)
    assert math.isfinite(h.history["loss"][0]) and m[0].weight.data.dtype == numpy.float16
