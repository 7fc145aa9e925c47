"""The fused (multi-tensor, kernels/optim.cu) optimizer and clipping path against the
NumPy reference, and its costs.

Every test runs on ``gpu_xp`` (the sim device here, CuPy where a GPU is present); the
reference is the same optimizer on NumPy arrays, fed the same gradients. Costs (launches,
host syncs, bytes copied) are read from ``gpunet.sim.counters()`` and asserted on the sim.
"""
import numpy
import pytest

from gpunet import backend, optim, sim
from gpunet.backend import to_numpy
from gpunet.cuda import optim as mt
from gpunet.layers.base import Parameter

CONFIGS = {
    "sgd": lambda ps: optim.SGD(ps, lr=0.1),
    "sgd_momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
    "sgd_nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.8, nesterov=True),
    "sgd_l2": lambda ps: optim.SGD(ps, lr=0.1, weight_decay=0.05),
    "sgd_l1": lambda ps: optim.SGD(ps, lr=0.1, l1=0.01),
    "sgd_all": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05, l1=0.01),
    "adam": lambda ps: optim.Adam(ps, lr=0.01),
    "adam_l2_l1": lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1, l1=0.01),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
    "adamw_no_decay": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.0),
    "rmsprop": lambda ps: optim.RMSProp(ps, lr=0.01),
    "rmsprop_momentum": lambda ps: optim.RMSProp(ps, lr=0.01, alpha=0.9, eps=1e-6, momentum=0.7),
    "adagrad": lambda ps: optim.AdaGrad(ps, lr=0.1),
}

# (shape, decay): several chunks (mt.CHUNK = 2048), a scalar-sized one, decay on and off
SHAPES = [((64, 100), True), ((100,), False), ((3000,), True), ((1,), False), ((7, 3), True),
          ((5,), True)]
NO_GRAD_EVER = 5      # this parameter never gets a gradient
SKIPPED = {1: (2,)}   # step 1: parameter 2 has no gradient (its step count falls behind)
RTOL = {numpy.float32: 1e-6, numpy.float64: 1e-12}


def _pair(xp, dtype, shapes=SHAPES, seed=0):
    rng = numpy.random.default_rng(seed)
    w0 = [rng.standard_normal(s).astype(dtype) for s, _ in shapes]
    host = [Parameter(w.copy(), f"p{j}", d) for j, (w, (_, d)) in enumerate(zip(w0, shapes))]
    dev = [Parameter(xp.asarray(w), f"p{j}", d) for j, (w, (_, d)) in enumerate(zip(w0, shapes))]
    return host, dev


def _set_grads(host, dev, xp, rng, skip=()):
    for j, (a, b) in enumerate(zip(host, dev)):
        if j == NO_GRAD_EVER or j in skip:
            a.grad = b.grad = None
            continue
        g = (rng.standard_normal(a.data.shape) * 2.0).astype(a.data.dtype)
        a.grad, b.grad = g, xp.asarray(g)


def _assert_same(host, dev, oh, od, rtol, exact=False):
    check = numpy.testing.assert_array_equal if exact else \
        (lambda x, y: numpy.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * 1e-3))
    for a, b in zip(host, dev):
        assert b.data.dtype == a.data.dtype
        check(to_numpy(b.data), a.data)
    assert od.steps == oh.steps
    for sh, sd in zip(oh.state, od.state):
        assert sh.keys() == sd.keys()
        for k in sh:
            assert sd[k].dtype == sh[k].dtype
            check(to_numpy(sd[k]), sh[k])


@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_matches_numpy(gpu_xp, name, dtype):
    host, dev = _pair(gpu_xp, dtype)
    oh, od = CONFIGS[name](host), CONFIGS[name](dev)
    rng = numpy.random.default_rng(1)
    for step in range(5):
        _set_grads(host, dev, gpu_xp, rng, SKIPPED.get(step, ()))
        if step == 3:
            oh.lr = od.lr = oh.lr * 0.5   # a schedule changes lr between steps
        oh.step()
        od.step()
        _assert_same(host, dev, oh, od, RTOL[dtype])
    assert od.steps[NO_GRAD_EVER] == 0 and od.state[NO_GRAD_EVER] == {}
    numpy.testing.assert_array_equal(to_numpy(dev[NO_GRAD_EVER].data), host[NO_GRAD_EVER].data)
    assert od.steps[2] == 4 and od.steps[0] == 5   # per-parameter step counts (Adam's bias correction)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fused_is_bit_identical_on_the_sim(name):
    # The kernels repeat the NumPy path's operations one by one, each rounded to the dtype
    # (no FMA contraction). On the sim (a host compiler without FMA) that makes them equal
    # bit for bit, skipped steps included; a GPU may differ by -ftz and its pow().
    if sim.compiler() is None:
        pytest.skip("the sim device needs a C++ compiler")
    xp = backend.require_sim()
    host, dev = _pair(xp, numpy.float32)
    oh, od = CONFIGS[name](host), CONFIGS[name](dev)
    rng = numpy.random.default_rng(2)
    for step in range(4):
        _set_grads(host, dev, xp, rng, SKIPPED.get(step, ()))
        oh.step()
        od.step()
    _assert_same(host, dev, oh, od, 0.0, exact=True)


def _sim_only(gpu_xp):
    if not hasattr(gpu_xp, "__name__") or not gpu_xp.__name__.startswith("gpunet.sim"):
        pytest.skip("cost counters exist on the sim device only")


def _counted(fn):
    sim.reset_counters()
    out = fn()
    return sim.counters(), out


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_steady_state_step_is_one_launch_no_sync_no_copy(gpu_xp, name):
    _sim_only(gpu_xp)
    _, dev = _pair(gpu_xp, numpy.float32)
    od = CONFIGS[name](dev)
    rng = numpy.random.default_rng(3)
    costs = []
    for step in range(4):
        _set_grads(dev, dev, gpu_xp, rng, SKIPPED.get(step, ()))   # copies counted before the reset
        c, _ = _counted(od.step)
        costs.append(c)
    first, after_skip, steady = costs[0], costs[2], costs[3]
    kname = next(k for prefix, k in (("sgd", "mt_sgd"), ("adagrad", "mt_adagrad"),
                                     ("adam", "mt_adam"), ("rmsprop", "mt_rmsprop"))
                 if name.startswith(prefix))
    for c in costs:
        assert c["kernels"].get(f"{kname}<float>") == 1
        assert c["syncs"] == 0 and c["d2h_bytes"] == 0
    assert steady["launches"] == 1 and steady["h2d_bytes"] == 0 and steady["allocs"] == 0
    # the table (64 bytes per parameter with a gradient) is copied when it changes: at the
    # first step (with the 6 step counters, 8 bytes each, the lr is a fill) and when
    # parameter 2 loses and regains its gradient
    assert first["h2d_bytes"] == 64 * 5 + 8 * 6
    assert first["kernels"].get("fill") == 1
    assert costs[1]["h2d_bytes"] == 64 * 4
    assert after_skip["h2d_bytes"] == 64 * 5


def test_mixed_dtypes_one_launch_per_dtype(gpu_xp):
    _sim_only(gpu_xp)
    ps = [Parameter(gpu_xp.asarray(numpy.ones(10, dtype=dt)), "p", True)
          for dt in (numpy.float32, numpy.float64, numpy.float32)]
    hs = [Parameter(numpy.ones(10, dtype=p.data.dtype), "p", True) for p in ps]
    od, oh = optim.Adam(ps, lr=0.1, weight_decay=0.1), optim.Adam(hs, lr=0.1, weight_decay=0.1)
    for step in range(3):
        for j, (p, h) in enumerate(zip(ps, hs)):
            g = numpy.arange(10, dtype=p.data.dtype) * (j + 1) - step
            p.grad, h.grad = gpu_xp.asarray(g), g
        c, _ = _counted(od.step)
        oh.step()
    assert c["launches"] == 2 and c["kernels"] == {"mt_adam<float>": 1, "mt_adam<double>": 1}
    assert c["h2d_bytes"] == 0 and c["syncs"] == 0
    for p, h in zip(ps, hs):
        numpy.testing.assert_allclose(to_numpy(p.data), h.data, rtol=1e-6)


def test_a_changed_lr_is_one_fill_launch(gpu_xp):
    _sim_only(gpu_xp)
    _, dev = _pair(gpu_xp, numpy.float32)
    od = optim.Adam(dev, lr=0.01)
    rng = numpy.random.default_rng(3)
    costs = []
    for lr in (0.01, 0.01, 0.005, 0.005):
        od.lr = lr
        _set_grads(dev, dev, gpu_xp, rng)
        costs.append(_counted(od.step)[0])
    assert [c["launches"] for c in costs[1:]] == [1, 2, 1]
    assert costs[2]["kernels"] == {"fill": 1, "mt_adam<float>": 1}
    assert all(c["h2d_bytes"] == c["syncs"] == 0 for c in costs[1:])


def test_step_counts_live_on_the_device(gpu_xp):
    _sim_only(gpu_xp)
    _, dev = _pair(gpu_xp, numpy.float32)
    od = optim.Adam(dev, lr=0.01)
    rng = numpy.random.default_rng(3)
    for step in range(3):
        _set_grads(dev, dev, gpu_xp, rng, SKIPPED.get(step, ()))
        od.step()
    c, steps = _counted(lambda: list(od.steps))
    assert steps == [3, 3, 2, 3, 3, 0]
    assert c["syncs"] == 1 and c["d2h_bytes"] == 8 * 6
    c, _ = _counted(lambda: od.steps)
    assert c["syncs"] == 0                 # read once until the next step


@pytest.mark.parametrize("n", [70, 150])
def test_more_than_64_parameters(gpu_xp, n):
    shapes = [((3 + j % 5,), j % 2 == 0) for j in range(n)]
    host, dev = _pair(gpu_xp, numpy.float64, shapes)
    oh = optim.SGD(host, lr=0.1, momentum=0.9, weight_decay=0.01)
    od = optim.SGD(dev, lr=0.1, momentum=0.9, weight_decay=0.01)
    rng = numpy.random.default_rng(4)
    for step in range(3):
        for a, b in zip(host, dev):
            g = rng.standard_normal(a.data.shape)
            a.grad, b.grad = g, gpu_xp.asarray(g)
        if step == 2 and gpu_xp.__name__.startswith("gpunet.sim"):
            c, _ = _counted(od.step)
            assert c["launches"] == 1 and c["syncs"] == 0     # one launch, any number of tensors
            # gradients past the 64th are read from the table, rewritten when one moved
            assert c["h2d_bytes"] in (0, 64 * n)
        else:
            od.step()
        oh.step()
    for a, b in zip(host, dev):
        numpy.testing.assert_allclose(to_numpy(b.data), a.data, rtol=1e-12)


def test_replaced_arrays_are_followed(gpu_xp):
    # the table holds addresses: a parameter whose data or state is replaced (model.to,
    # load_state_dict, a user assignment) must be updated in its new array
    host, dev = _pair(gpu_xp, numpy.float64)
    oh, od = optim.Adam(host, lr=0.1), optim.Adam(dev, lr=0.1)
    rng = numpy.random.default_rng(5)
    for step in range(4):
        _set_grads(host, dev, gpu_xp, rng)
        if step == 2:
            old = dev[0].data
            dev[0].data = dev[0].data.copy()
            od.state[2]["exp_avg"] = od.state[2]["exp_avg"].copy()
        oh.step()
        od.step()
    _assert_same(host, dev, oh, od, 1e-12)
    assert not numpy.array_equal(to_numpy(old), to_numpy(dev[0].data))   # the old copy is left behind


def test_state_dict_round_trip_on_the_device(gpu_xp):
    host, dev = _pair(gpu_xp, numpy.float32)
    oh, od = optim.Adam(host, lr=0.01), optim.Adam(dev, lr=0.01)
    rng = numpy.random.default_rng(6)
    for step in range(3):
        _set_grads(host, dev, gpu_xp, rng, SKIPPED.get(step, ()))
        oh.step()
        od.step()
    dev2 = [Parameter(p.data.copy(), p.name, p.decay) for p in dev]
    od2 = optim.Adam(dev2, lr=0.5).load_state_dict(od.state_dict())
    for step in range(2):
        _set_grads(host, dev2, gpu_xp, rng)
        oh.step()
        od2.step()
    _assert_same(host, dev2, oh, od2, 1e-6)


def test_momentum_switched_on_mid_training(gpu_xp):
    # the momentum buffer appears at a step count > 1: b = g there, as in the NumPy path
    host, dev = _pair(gpu_xp, numpy.float64)
    oh, od = optim.SGD(host, lr=0.1), optim.SGD(dev, lr=0.1)
    rng = numpy.random.default_rng(9)
    for step in range(4):
        _set_grads(host, dev, gpu_xp, rng)
        if step == 2:
            oh.momentum = od.momentum = 0.9
        oh.step()
        od.step()
    _assert_same(host, dev, oh, od, 1e-12)


def test_empty_parameters(gpu_xp):
    shapes = [((0,), True), ((3,), True), ((0, 4), False)]
    host, dev = _pair(gpu_xp, numpy.float32, shapes)
    for only_empty in (False, True):
        ps_h, ps_d = (host[::2], dev[::2]) if only_empty else (host, dev)
        oh, od = optim.Adam(ps_h, lr=0.1), optim.Adam(ps_d, lr=0.1)
        for a, b in zip(ps_h, ps_d):
            g = numpy.ones(a.data.shape, numpy.float32)
            a.grad, b.grad = g, gpu_xp.asarray(g)
        oh.step()
        od.step()
        _assert_same(ps_h, ps_d, oh, od, 1e-6)
        total = optim.clip_grad_norm(ps_d, 1.0)
        assert float(total) == pytest.approx(optim.clip_grad_norm(ps_h, 1.0), rel=1e-6)


def test_non_contiguous_gradient(gpu_xp):
    w = numpy.arange(12.0).reshape(3, 4)
    g = numpy.linspace(-1, 1, 12).reshape(4, 3)
    h, d = Parameter(w.copy(), "w", True), Parameter(gpu_xp.asarray(w), "w", True)
    h.grad, d.grad = g.T, gpu_xp.asarray(g).T
    assert not d.grad.flags.c_contiguous
    optim.SGD([h], lr=0.1, momentum=0.5).step()
    optim.SGD([d], lr=0.1, momentum=0.5).step()
    numpy.testing.assert_allclose(to_numpy(d.data), h.data, rtol=1e-14)


def test_fused_path_checks_like_the_numpy_path(gpu_xp):
    p = Parameter(gpu_xp.asarray(numpy.zeros(3)), "w", True)
    p.grad = gpu_xp.asarray(numpy.zeros(3, dtype=numpy.float32))
    with pytest.raises(ValueError, match="params\\[0\\] \\(w\\) has data"):
        optim.SGD([p]).step()
    q = Parameter(numpy.zeros(3), "q", True)
    q.grad = numpy.zeros(3)
    p.grad = gpu_xp.asarray(numpy.zeros(3))
    with pytest.raises(TypeError, match="one device"):
        optim.SGD([p, q]).step()


# -- clipping ---------------------------------------------------------------------------

def _grad_pairs(xp, dtypes, scale, seed=7):
    rng = numpy.random.default_rng(seed)
    shapes = [(40, 60), (60,), (3000,), (2,)]
    hs, ds = [], []
    for j, s in enumerate(shapes):
        dt = dtypes[j % len(dtypes)]
        g = (rng.standard_normal(s) * scale).astype(dt)
        h, d = Parameter(numpy.zeros(s, dt), "p", True), Parameter(xp.zeros(s, dt), "p", True)
        h.grad, d.grad = g, xp.asarray(g)
        hs.append(h)
        ds.append(d)
    hs.append(Parameter(numpy.zeros(2), "nograd", True))
    ds.append(Parameter(xp.zeros(2), "nograd", True))
    return hs, ds


@pytest.mark.parametrize("dtypes,scale", [((numpy.float32,), 1.0), ((numpy.float64,), 1.0),
                                          ((numpy.float32, numpy.float64), 1.0),
                                          ((numpy.float32,), 1e-4)])   # last: under the limit
def test_clip_grad_norm_on_the_device(gpu_xp, dtypes, scale):
    hs, ds = _grad_pairs(gpu_xp, dtypes, scale)
    want = optim.clip_grad_norm(hs, 2.0)
    got = optim.clip_grad_norm(ds, 2.0)
    assert got.shape == () and got.dtype == numpy.float64 and type(got) is type(ds[0].grad)
    rtol = 1e-6 if numpy.float32 in dtypes else 1e-12
    assert float(got) == pytest.approx(want, rel=rtol)
    for h, d in zip(hs, ds):
        if h.grad is None:
            assert d.grad is None
            continue
        assert d.grad.dtype == h.grad.dtype
        numpy.testing.assert_allclose(to_numpy(d.grad), h.grad, rtol=rtol)
    if scale < 1:
        assert want < 2.0   # nothing to clip: the gradients are left as they were
        _, ds2 = _grad_pairs(gpu_xp, dtypes, scale)
        for d, d2 in zip(ds, ds2):
            if d.grad is not None:
                numpy.testing.assert_array_equal(to_numpy(d.grad), to_numpy(d2.grad))


def test_clip_grad_norm_costs_no_sync(gpu_xp):
    _sim_only(gpu_xp)
    _, ds = _grad_pairs(gpu_xp, (numpy.float32,), 1.0)
    optim.clip_grad_norm(ds, 1.0)          # builds the size table once
    c, total = _counted(lambda: optim.clip_grad_norm(ds, 1.0))
    assert c["kernels"] == {"mt_grad_sumsq<float>": 1, "mt_grad_scale<float>": 1}
    assert c["syncs"] == 0 and c["d2h_bytes"] == 0 and c["h2d_bytes"] == 0
    assert float(total) == pytest.approx(1.0, rel=1e-5)   # already clipped to 1 once
    c, _ = _counted(lambda: float(total))
    assert c["syncs"] == 1 and c["d2h_bytes"] == 8           # reading the norm is the sync


def test_clip_grad_norm_non_finite_leaves_gradients(gpu_xp):
    hs, ds = _grad_pairs(gpu_xp, (numpy.float64,), 1.0)
    g = to_numpy(ds[1].grad).copy()
    g[3] = numpy.inf
    ds[1].grad = gpu_xp.asarray(g)
    before = [to_numpy(d.grad).copy() for d in ds if d.grad is not None]
    total = optim.clip_grad_norm(ds, 1.0)
    assert float(total) == numpy.inf
    for b, d in zip(before, [d for d in ds if d.grad is not None]):
        numpy.testing.assert_array_equal(to_numpy(d.grad), b)


def test_clip_grad_norm_then_step_matches_numpy(gpu_xp):
    # clipping and the optimizer on the device, three launches a step, against NumPy
    host, dev = _pair(gpu_xp, numpy.float32)
    oh, od = optim.SGD(host, lr=0.1, momentum=0.9), optim.SGD(dev, lr=0.1, momentum=0.9)
    rng = numpy.random.default_rng(8)
    for step in range(3):
        _set_grads(host, dev, gpu_xp, rng)
        optim.clip_grad_norm(host, 1.5)
        optim.clip_grad_norm(dev, 1.5)
        oh.step()
        od.step()
    _assert_same(host, dev, oh, od, 1e-5)


def test_clip_grad_value_on_the_device(gpu_xp):
    hs, ds = _grad_pairs(gpu_xp, (numpy.float32, numpy.float64), 1.0)
    g = to_numpy(ds[0].grad).copy()
    g[0, 0] = numpy.nan
    ds[0].grad, hs[0].grad = gpu_xp.asarray(g), g.copy()
    optim.clip_grad_value(hs, 0.5)
    if gpu_xp.__name__.startswith("gpunet.sim"):
        c, _ = _counted(lambda: optim.clip_grad_value(ds, 0.5))
        assert c["launches"] == 2 and c["syncs"] == 0    # one per dtype
    else:
        optim.clip_grad_value(ds, 0.5)
    for h, d in zip(hs, ds):
        if h.grad is not None:
            numpy.testing.assert_array_equal(to_numpy(d.grad), h.grad)


def test_table_layout():
    rows = [(None, None, None, 1, 0, True, None),
            (None, None, None, mt.CHUNK + 1, 4096, False, None),
            (None, None, None, 0, 0, True, None),
            (None, None, None, mt.CHUNK, 0, True, None)]
    host, nchunks = mt.table_rows(rows)
    assert host.shape == (4, 8) and host.dtype == numpy.int64
    assert host[:, 4].tolist() == [0, 1, 3, 3]     # first chunk of each tensor
    assert host[:, 5].tolist() == [0, 4096, 0, 0] and host[:, 6].tolist() == [1, 0, 1, 1]
    assert nchunks == 4
    assert host[:, 7].tolist() == [0, 0, 0, 0]     # gradients below MAX_ARGS are arguments
    # past MAX_ARGS the gradient's address is in the row (and in the cache key)

    class _A:   # an array-like with a device address
        def __init__(self, ptr):
            self.data = type("P", (), {"ptr": ptr})()
    far = [(None, None, None, 1, 0, True, _A(1000 + j)) for j in range(mt.MAX_ARGS + 2)]
    host, _ = mt.table_rows(far)
    assert host[mt.MAX_ARGS:, 7].tolist() == [1000 + mt.MAX_ARGS, 1001 + mt.MAX_ARGS]
    assert host[:mt.MAX_ARGS, 7].tolist() == [0] * mt.MAX_ARGS
    assert mt.table_key(far) != mt.table_key(far[:-1] + [far[-1][:6] + (_A(5),)])
