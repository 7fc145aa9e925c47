"""The sim's cost counters (DESIGN §12): exact counts for simple ops, as CuPy would run them.

One elementwise op or reduction is one launch and (without ``out=``) one allocation; a
matmul is one launch (cuBLAS); views are free; ``asarray(host)`` moves its bytes
host-to-device; ``.get()``/``float()`` are a sync and their bytes device-to-host.
"""
import numpy
import pytest

import gpunet
from gpunet import sim
from gpunet.sim import array as sp

pytestmark = pytest.mark.skipif(sim.compiler() is None, reason="no C++ compiler: no sim device")


@pytest.fixture(autouse=True)
def fresh():
    sim.reset_counters()
    yield


def _delta(fn):
    sim.reset_counters()
    out = fn()
    return sim.counters(), out


def test_public_keys_and_reset():
    c = sim.counters()
    assert {"launches", "kernels", "syncs", "h2d_bytes", "d2h_bytes", "allocs"} <= set(c)
    sp.asarray(numpy.ones(4)).sum()
    assert sim.counters()["launches"] == 1
    sim.reset_counters()
    c = sim.counters()
    assert c["launches"] == c["syncs"] == c["h2d_bytes"] == c["allocs"] == 0 and c["kernels"] == {}


def test_h2d_then_elementwise_then_reduction_then_d2h():
    h = numpy.ones((8, 4), numpy.float32)
    c, x = _delta(lambda: sp.asarray(h))
    assert (c["launches"], c["allocs"], c["h2d_bytes"], c["syncs"]) == (0, 1, 128, 0)
    c, y = _delta(lambda: x * 2.0 + 1.0)
    assert (c["launches"], c["allocs"], c["kernels"]) == (2, 2, {"multiply": 1, "add": 1})
    c, s = _delta(lambda: y.sum())
    assert (c["launches"], c["allocs"], c["kernels"]) == (1, 1, {"sum": 1})
    c, v = _delta(lambda: float(s))
    assert v == 96.0 and (c["launches"], c["syncs"], c["d2h_bytes"]) == (0, 1, 4)
    c, g = _delta(lambda: y.get())
    assert (c["syncs"], c["d2h_bytes"], c["allocs"]) == (1, 128, 0)


def test_matmul_is_one_launch():
    a = sp.asarray(numpy.ones((3, 5)))
    b = sp.asarray(numpy.ones((5, 2)))
    c, _ = _delta(lambda: a @ b)
    assert (c["launches"], c["kernels"], c["allocs"]) == (1, {"matmul": 1}, 1)
    c, _ = _delta(lambda: a.T.dot(a))
    assert c["kernels"] == {"matmul": 1}


def test_views_are_free_and_copies_are_not():
    x = sp.asarray(numpy.ones((4, 6)))
    c, _ = _delta(lambda: (x.reshape(6, 4), x.T, x[1:3], x[0, 0], sp.broadcast_to(x[:1], (4, 6))))
    assert (c["launches"], c["allocs"], c["syncs"]) == (0, 0, 0)
    c, _ = _delta(lambda: x.T.reshape(-1))          # not viewable: a copy kernel
    assert (c["launches"], c["allocs"]) == (1, 1)
    c, _ = _delta(lambda: x.astype(numpy.float32))
    assert (c["kernels"], c["allocs"]) == ({"astype": 1}, 1)
    c, _ = _delta(lambda: x.astype(numpy.float64, copy=False))
    assert c["launches"] == 0


def test_inplace_and_out_allocate_nothing():
    x = sp.asarray(numpy.ones(10))
    y = sp.empty_like(x)

    def f():
        nonlocal x
        x += 1.0
        sp.multiply(x, 2.0, out=y)
        y[2:] = 0.0
    c, _ = _delta(f)
    assert (c["launches"], c["allocs"]) == (3, 0)


def test_boolean_mask_indexing_syncs():
    x = sp.asarray(numpy.arange(10.0))
    c, _ = _delta(lambda: x[x > 4])
    assert c["syncs"] == 1 and c["launches"] == 3     # compare, scan, gather


def test_creation_counts():
    c, _ = _delta(lambda: (sp.empty(5), sp.zeros(5), sp.full((2, 2), 3.0)))
    assert (c["allocs"], c["launches"], c["h2d_bytes"]) == (3, 2, 0)


def test_softmax_xent_launcher_makes_no_sync():
    """The CuPy branch of softmax-CE checks the labels on the device (issue 12): no sync,
    the fused kernel and the mean (one reduction); reading the loss is the one sync.
    With ignore_index the valid rows are counted on the device by one more small kernel."""
    pytest.importorskip("gpunet.sim.runtime")
    rng = numpy.random.default_rng(0)
    z = gpunet.to_device(rng.standard_normal((16, 10)).astype(numpy.float32), "sim")
    y = gpunet.to_device(rng.integers(0, 10, 16), "sim")
    # compile both variants and make their one-time device buffers (the mean's divisor of
    # ones, the status flags) first, so the counts below do not depend on which tests ran before
    for ignore in (None, 3):
        float(gpunet.functional.softmax_cross_entropy(z, y, ignore_index=ignore)[0])
    c, (loss, dz) = _delta(lambda: gpunet.functional.softmax_cross_entropy(z, y))
    assert (c["syncs"], c["h2d_bytes"], c["launches"]) == (0, 0, 2)
    assert c["kernels"] == {"softmax_xent_hard_warp<float, 8>": 1, "mean": 1}
    float(loss)
    assert sim.counters()["syncs"] == 1
    c, _ = _delta(lambda: gpunet.functional.softmax_cross_entropy(z, y, ignore_index=3))
    assert (c["syncs"], c["h2d_bytes"], c["launches"]) == (0, 0, 4)
    assert c["kernels"]["softmax_xent_count_valid<float>"] == 1


def test_bench_sim_costs_per_training_step():
    """``gpunet bench --device sim``'s numbers: a training step of the MLP and of the CNN
    costs no host sync (the labels are checked on the device), no host-to-device bytes (the
    batch is already on the device), one fused softmax-CE kernel, one optimizer kernel for
    all parameters, and at most the launches measured on 2026-11-29 (MLP 16, CNN 27: conv
    and pooling as one kernel per layer and direction)."""
    pytest.importorskip("gpunet.sim.runtime")
    from gpunet import bench
    costs = bench.sim_costs(["mlp-784-128-10", "cnn-28x28"])
    for m, c in costs.items():
        assert c["syncs"] == 0 and c["h2d_bytes"] == 0 and c["d2h_bytes"] == 0, (m, c)
        assert c["kernels"]["softmax_xent_hard_warp<float, 8>"] == 1 and c["kernels"]["mt_sgd<float>"] == 1
        assert c["launches"] == sum(c["kernels"].values())
    assert costs["mlp-784-128-10"]["launches"] <= 16, costs["mlp-784-128-10"]
    assert costs["cnn-28x28"]["launches"] <= 27, costs["cnn-28x28"]
    assert costs["cnn-28x28"]["kernels"]["im2col<float>"] == 2      # one per conv layer
    # per Dense: forward x @ W.T and dW; dx only for the second (the first layer's input is
    # a DataLoader batch, which needs no gradient)
    assert costs["mlp-784-128-10"]["kernels"]["matmul"] == 5
    assert costs["cnn-28x28"]["launches"] > costs["mlp-784-128-10"]["launches"]


def test_bench_cli_prints_the_sim_table(capsys):
    pytest.importorskip("gpunet.sim.runtime")
    from gpunet import bench
    assert bench.main(["--device", "sim", "--models", "mlp-784-128-10"]) == 0
    out = capsys.readouterr().out
    assert "launches" in out and "syncs" in out and "h2d bytes" in out
    assert "mlp-784-128-10" in out


def test_kernel_modules_are_memoized_per_device_with_the_sim_apart():
    pytest.importorskip("gpunet.sim.runtime")
    from gpunet import cuda as gcuda
    from gpunet.sim import runtime
    mod = gcuda.module("dropout.cu", "sim")
    assert isinstance(mod, runtime.RawModule)
    assert gcuda.module("dropout.cu", "sim") is mod
    assert ("dropout.cu", "sim") in gcuda._modules and ("dropout.cu", 0) not in gcuda._modules \
        or not isinstance(gcuda._modules.get(("dropout.cu", 0)), runtime.RawModule)
    k = gcuda.kernel("dropout.cu", "dropout_apply<float>", "sim")
    assert gcuda.kernel("dropout.cu", "dropout_apply<float>", "sim") is k
    assert gcuda._sm_count("sim") == sim.MULTIPROCESSOR_COUNT
    with pytest.raises(TypeError, match="sim"):
        gcuda.module("dropout.cu", "gpu")


def test_integer_array_and_list_indexing():
    x = sp.asarray(numpy.arange(10.0))
    i = sp.asarray(numpy.array([3, 1]))
    c, y = _delta(lambda: x[i])
    assert (c["launches"], c["allocs"], c["syncs"], c["h2d_bytes"]) == (1, 1, 0, 0)
    c, y = _delta(lambda: x[[3, 1]])
    assert (c["launches"], c["syncs"], c["h2d_bytes"]) == (1, 0, 16)
    assert y.get().tolist() == [3.0, 1.0]


def test_fused_ops_launch_budgets():
    """Batch norm is three kernels each way, dropout one, none of them syncs or copies to
    the device; a non-contiguous dropout input costs one copy kernel first."""
    pytest.importorskip("gpunet.sim.runtime")
    from gpunet.functional import batchnorm as FB
    from gpunet.functional import dropout as FD
    rng = numpy.random.default_rng(0)
    x = gpunet.to_device(rng.standard_normal((8, 4, 3, 3)).astype(numpy.float32), "sim")
    g = gpunet.to_device(rng.uniform(0.5, 1.5, 4).astype(numpy.float32), "sim")
    b = gpunet.to_device(rng.standard_normal(4).astype(numpy.float32), "sim")
    y, mean, var, inv_std = FB.batch_norm_forward(x, g, b)        # compiles
    FB.batch_norm_backward(x, x, g, mean, inv_std)
    FD.dropout_forward(x, 0.5, 1, 0, "inverted")
    c, _ = _delta(lambda: FB.batch_norm_forward(x, g, b))
    assert c["kernels"] == {"bn_stats_partial<float>": 1, "bn_stats_finalize<float>": 1,
                            "bn_forward_apply<float>": 1}
    assert c["syncs"] == c["h2d_bytes"] == c["d2h_bytes"] == 0
    c, _ = _delta(lambda: FB.batch_norm_backward(x, x, g, mean, inv_std))
    assert c["launches"] == 3 and c["syncs"] == c["h2d_bytes"] == 0
    c, _ = _delta(lambda: FD.dropout_forward(x, 0.5, 1, 0, "inverted"))
    assert c["kernels"] == {"dropout_apply<float>": 1} and c["allocs"] == 1 and c["syncs"] == 0
    c, _ = _delta(lambda: FD.dropout_backward(x.transpose(1, 0, 2, 3), 0.5, 1, 0, "inverted"))
    assert c["kernels"] == {"copy": 1, "dropout_apply<float>": 1}


def test_a_staged_loader_leaves_nothing_behind_on_the_compute_stream_per_pass(monkeypatch):
    """A DataLoader whose data is not resident stages each pass through a copy stream of its
    own, which the compute stream waits for. The compute stream (the null stream, alive for
    the whole process) kept one record per stream it had waited for, keyed by a serial that
    outlived the stream: one more per pass, for good (103 after 103 passes of a long run).
    The records go with their streams now; the ordering check still holds."""
    from gpunet import data as gdata
    monkeypatch.setattr(gdata, "RESIDENT_FRACTION", 0.0)
    X = numpy.arange(64 * 4, dtype=numpy.float32).reshape(64, 4)
    y = numpy.arange(64) % 3
    loader = gdata.DataLoader(X, y, batch_size=16, shuffle=True, seed=0, device="sim")
    compute = sp.cuda.get_current_stream()

    def passes(n):
        total = 0.0
        for _ in range(n):
            for xb, yb in loader:
                total += float(xb.sum()) + float(yb.sum())
        return total

    assert passes(3) == 3 * (float(X.sum()) + float(y.sum()))
    assert not loader.resident
    passes(5)
    records = len(compute._waits)
    passes(200)
    # counted, not traced: NumPy's ctypes keeps a few small blocks of its own for a while
    # (at the pinned buffers' .ctypes.data), which tracemalloc would mix in
    assert len(compute._waits) <= records, f"{len(compute._waits)} records after 205 passes"
    # the check the records serve: a copy on a stream not waited for is still refused
    from test_sim_budgets import assert_an_unwaited_copy_is_refused
    assert sp.cuda.get_current_stream() is compute
    assert_an_unwaited_copy_is_refused()
