"""On a real CUDA GPU only (skipped elsewhere): gpunet's own cuBLAS calls and CUDA graphs.

The first run on a GPU (an H200) found what the sim device could not show: CuPy refuses
cuBLAS calls while a stream captures, so ``Trainer(cuda_graph=True)`` failed on any model
with a GEMM. gpunet now makes those calls itself (:mod:`gpunet.cuda.blas`). These tests check
those calls against NumPy in float64 and against CuPy's ``matmul`` for every operand layout
gpunet uses, inside a captured graph too, and that a graphed ``Trainer`` gives the eager
run's results bit for bit on the GPU (the sim's test of the same, tests/test_cuda_graphs.py,
cannot see cuBLAS).
"""
import numpy
import pytest

from gpunet import SoftmaxCrossEntropy, backend
from gpunet.backend import to_numpy
from gpunet.train import Trainer

import graph_cases  # noqa: E402  (tests/ is on sys.path under pytest)

pytestmark = pytest.mark.skipif(not backend.cuda_available(), reason="needs a CUDA GPU and CuPy")

TOL = {numpy.float16: 2e-3, numpy.float32: 1e-5, numpy.float64: 1e-12}


def _operand(cp, rng, shape, kind, dtype):
    if kind == "c":
        return cp.asarray(rng.standard_normal(shape).astype(dtype))
    if kind == "t":
        t = shape[:-2] + (shape[-1], shape[-2])
        return cp.swapaxes(cp.asarray(rng.standard_normal(t).astype(dtype)), -1, -2)
    if kind == "rows":
        wide = shape[:-1] + (shape[-1] + 3,)
        return cp.asarray(rng.standard_normal(wide).astype(dtype))[..., :shape[-1]]
    wide = shape[:-1] + (2 * shape[-1],)       # "gap": copied first
    return cp.asarray(rng.standard_normal(wide).astype(dtype))[..., ::2]


SHAPES = [((33, 70), (70, 17)), ((1, 64), (64, 10)), ((64, 1), (1, 9)), ((8, 33, 70), (8, 70, 5)),
          ((33, 70), (8, 70, 5)), ((8, 33, 70), (70, 5)), ((256, 784), (784, 128))]


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64])
@pytest.mark.parametrize("shapes", SHAPES)
def test_blas_matmul_equals_numpy_and_cupy_for_every_layout(shapes, dtype):
    import cupy as cp
    from gpunet.cuda import blas
    rng = numpy.random.default_rng(0)
    for ka in ("c", "t", "rows", "gap"):
        for kb in ("c", "t", "rows", "gap"):
            a = _operand(cp, rng, shapes[0], ka, dtype)
            b = _operand(cp, rng, shapes[1], kb, dtype)
            got = blas.matmul(a, b)
            ref = numpy.matmul(to_numpy(a).astype(numpy.float64), to_numpy(b).astype(numpy.float64))
            assert got.dtype == dtype and got.shape == ref.shape and got.flags.c_contiguous
            scale = max(1.0, float(numpy.abs(ref).max()))
            err = float(numpy.abs(to_numpy(got).astype(numpy.float64) - ref).max()) / scale
            assert err <= TOL[dtype] * max(1, shapes[0][-1] ** 0.5), (ka, kb, err)
            if dtype != numpy.float16 or (a.ndim == 2 and b.ndim == 2):
                numpy.testing.assert_allclose(to_numpy(got), to_numpy(cp.matmul(a, b)),
                                              rtol=TOL[dtype], atol=TOL[dtype] * scale)


def test_blas_matmul_into_a_strided_out_writes_only_its_elements():
    import cupy as cp
    from gpunet.cuda import blas
    rng = numpy.random.default_rng(1)
    w2 = cp.asarray(rng.standard_normal((16, 10)).astype(numpy.float32))
    cols = cp.asarray(rng.standard_normal((10, 4 * 49)).astype(numpy.float32))
    y = cp.full((16, 4 * 49), cp.nan, dtype=cp.float32)
    blas.matmul(w2, cols.reshape(10, 4, 49).transpose(1, 0, 2),
                out=y.reshape(16, 4, 49).transpose(1, 0, 2))
    numpy.testing.assert_allclose(to_numpy(y), to_numpy(w2) @ to_numpy(cols), rtol=1e-5, atol=1e-5)


def test_blas_matmul_is_captured_and_replayed_in_a_graph():
    import cupy as cp
    from gpunet.cuda import blas
    rng = numpy.random.default_rng(2)
    a = cp.asarray(rng.standard_normal((64, 300)).astype(numpy.float32))
    b = cp.asarray(rng.standard_normal((300, 40)).astype(numpy.float32))
    out = cp.empty((64, 40), dtype=cp.float32)
    eager = blas.matmul(a, b.T.copy().T)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        blas.matmul(a, b.T.copy().T, out=out)
        g = stream.end_capture()
    out.fill(cp.nan)
    g.launch(stream=cp.cuda.get_current_stream())
    cp.cuda.get_current_stream().synchronize()
    numpy.testing.assert_array_equal(to_numpy(out), to_numpy(eager))
    a[...] = 2 * a                                   # a replay reads the operands anew
    g.launch(stream=cp.cuda.get_current_stream())
    numpy.testing.assert_array_equal(to_numpy(out), 2 * to_numpy(eager))


def _fit(kind, cuda_graph):
    m, X, y, opt, kw = graph_cases.build(kind, "cuda")
    tr = Trainer(m, SoftmaxCrossEntropy(), opt, cuda_graph=cuda_graph, **kw)
    h = tr.fit((X, y), epochs=2, batch_size=32, progress=False)
    return tr, h


@pytest.mark.parametrize("kind", graph_cases.KINDS)
def test_trainer_cuda_graph_gives_the_eager_results_on_the_gpu(kind):
    tr, h = _fit(kind, True)
    tr0, h0 = _fit(kind, False)
    assert h["loss"] == h0["loss"] and h["accuracy"] == h0["accuracy"]
    for (na, a), (nb, b) in zip(tr.model.state_dict().items(), tr0.model.state_dict().items()):
        assert na == nb
        numpy.testing.assert_array_equal(a, b, err_msg=na)
    assert tr.optimizer.steps == tr0.optimizer.steps


def test_nccl_calls_run_on_one_gpu(tmp_path):
    """``mpiexec -n 1``: gpunet.distributed.init(device="cuda") builds an NCCL communicator
    and its all-reduce and broadcast calls run for every dtype it maps (one GPU here, so one
    rank: the values must come back unchanged; two GPUs or more are needed for a reduction)."""
    import test_distributed as TD
    if TD.mpiexec() is None:
        pytest.skip("needs mpi4py and mpiexec (the mpi extra)")
    from cupy.cuda import nccl
    if not nccl.available:
        pytest.skip("CuPy cannot load NCCL (pip install nvidia-nccl-cu13)")
    (got,) = TD.run_worker("nccl", tmp_path, n=1)
    for dt in ("float16", "float32", "float64", "int32", "int64", "uint8"):
        numpy.testing.assert_array_equal(got["allreduce." + dt], (numpy.arange(1000) % 97 + 1).astype(dt))
        numpy.testing.assert_array_equal(got["bcast." + dt], (numpy.arange(300) % 13).astype(dt))
