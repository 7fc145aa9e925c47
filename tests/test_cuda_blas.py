"""gpunet.cuda.blas: the cuBLAS arguments worked out from shapes and strides.

The calls themselves need a GPU (benchmarks/gpu_check.py compares them with CuPy's matmul,
eager and inside a captured graph). Here :func:`gemm_plan` is checked against a NumPy model
of what cuBLAS does with those arguments: a column-major, strided-batched GEMM reading and
writing a flat buffer through ``op``, leading dimensions and batch strides. Every operand
layout gpunet hands it (contiguous, transposed views, row slices, batched transposes, 2-D
operands broadcast over a batch, a strided ``out``) must give ``A @ B`` exactly where the
model writes, and leave the rest of the output buffer untouched.
"""
import numpy
import pytest

from gpunet.cuda import blas


def _view(buf, x):
    """(offset in elements of ``x`` inside ``buf``, element strides of ``x``)."""
    item = x.itemsize
    off = (x.__array_interface__["data"][0] - buf.__array_interface__["data"][0]) // item
    return off, tuple(s // item for s in x.strides)


def _load(buf, off, trans, rows, cols, ld):
    """op(X) (rows x cols) of the column-major matrix X stored at ``buf[off:]`` with ``ld``."""
    stored_rows = rows if trans == blas.OP_N else cols
    assert ld >= max(1, stored_rows), "cuBLAS rejects ld < the stored matrix's rows"
    r, c = numpy.meshgrid(numpy.arange(rows), numpy.arange(cols), indexing="ij")
    idx = off + (r + c * ld if trans == blas.OP_N else c + r * ld)
    return buf[idx]


def _cublas_model(p, buf_a, off_a, buf_b, off_b, buf_c, off_c):
    """What ``cublasGemmStridedBatchedEx`` (or ``cublasGemmEx`` for one matrix) computes:
    C[i] = op(first)[i] @ op(second)[i], column-major; the first operand is B, the second A."""
    assert p.ldc >= max(1, p.m)
    for i in range(p.batch):
        first = _load(buf_b, off_b + i * p.stride_b, p.transb, p.m, p.k, p.ldb)
        second = _load(buf_a, off_a + i * p.stride_a, p.transa, p.k, p.n, p.lda)
        r, c = numpy.meshgrid(numpy.arange(p.m), numpy.arange(p.n), indexing="ij")
        buf_c[off_c + i * p.stride_c + r + c * p.ldc] = first @ second


def _layouts(rng, shape, kind):
    """A float64 array of ``shape`` in the memory layout ``kind``, and its backing buffer."""
    if kind == "c":
        buf = rng.standard_normal(int(numpy.prod(shape)) + 3)
        return buf, buf[3:].reshape(shape)
    if kind == "t":          # a transposed view of the last two axes (W.T, d3.transpose(0, 2, 1))
        tshape = shape[:-2] + (shape[-1], shape[-2])
        buf = rng.standard_normal(int(numpy.prod(tshape)))
        x = buf.reshape(tshape)
        return buf, numpy.swapaxes(x, -1, -2)
    if kind == "rows":       # every row a slice of a wider row (ld > columns: cols[:k], x[:, :n])
        wide = shape[:-1] + (shape[-1] + 5,)
        buf = rng.standard_normal(int(numpy.prod(wide)))
        return buf, buf.reshape(wide)[..., :shape[-1]]
    if kind == "gap":        # neither rows nor columns contiguous: needs a copy
        wide = shape[:-1] + (2 * shape[-1],)
        buf = rng.standard_normal(int(numpy.prod(wide)))
        return buf, buf.reshape(wide)[..., ::2]
    raise AssertionError(kind)


CASES = [((5, 7), (7, 3)), ((1, 7), (7, 3)), ((5, 1), (1, 3)), ((5, 7), (7, 1)),
         ((1, 1), (1, 1)), ((4, 6, 7), (4, 7, 3)), ((6, 7), (4, 7, 3)), ((4, 6, 7), (7, 3)),
         ((1, 6, 7), (4, 7, 3)), ((3, 1, 7), (3, 7, 2))]


@pytest.mark.parametrize("a_kind", ["c", "t", "rows"])
@pytest.mark.parametrize("b_kind", ["c", "t", "rows"])
@pytest.mark.parametrize("shapes", CASES)
def test_plan_computes_a_at_b_on_the_model(shapes, a_kind, b_kind):
    rng = numpy.random.default_rng(7)
    (buf_a, a), (buf_b, b) = _layouts(rng, shapes[0], a_kind), _layouts(rng, shapes[1], b_kind)
    want = numpy.matmul(a, b)
    c3 = numpy.full((1,) * (3 - want.ndim) + want.shape, numpy.nan)
    (off_a, sa), (off_b, sb) = _view(buf_a, a), _view(buf_b, b)
    plan, why = blas.gemm_plan(a.shape, sa, b.shape, sb, _view(c3, c3)[1])
    assert why is None and plan is not None
    flat = c3.reshape(-1)
    _cublas_model(plan, buf_a, off_a, buf_b, off_b, flat, 0)
    numpy.testing.assert_allclose(c3.reshape(want.shape), want, rtol=1e-12, atol=1e-12)


def test_strided_out_is_written_in_place_and_nothing_else():
    """The chunked forward GEMM of gpunet.functional.conv: ``w2 (O, K) @ cols`` seen as
    ``(B, K, L/B)`` chunks, written into ``y (O, L)`` through its ``(B, O, L/B)`` view."""
    rng = numpy.random.default_rng(3)
    o, k, b, lb = 4, 5, 3, 6
    w2 = rng.standard_normal((o, k))
    cols = rng.standard_normal((k, b * lb))
    a, bb = w2, cols.reshape(k, b, lb).transpose(1, 0, 2)
    y = numpy.full((o, b * lb), numpy.nan)
    out = y.reshape(o, b, lb).transpose(1, 0, 2)
    plan, why = blas.gemm_plan(a.shape, _view(a, a)[1], bb.shape, _view(cols, bb)[1],
                               _view(y, out)[1])
    assert why is None and plan.batch == b and plan.stride_a == 0
    _cublas_model(plan, a.reshape(-1), 0, cols.reshape(-1), _view(cols, bb)[0], y.reshape(-1), 0)
    numpy.testing.assert_allclose(y, w2 @ cols, rtol=1e-12, atol=1e-12)


def test_out_with_gaps_between_rows_keeps_the_gaps():
    rng = numpy.random.default_rng(4)
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 5))
    wide = numpy.full((3, 8), -7.0)
    out = wide[:, 1:6]
    off_c, sc = _view(wide, out)
    plan, why = blas.gemm_plan(a.shape, _view(a, a)[1], b.shape, _view(b, b)[1], (15, *sc))
    assert why is None and plan.ldc == 8
    _cublas_model(plan, a.reshape(-1), 0, b.reshape(-1), 0, wide.reshape(-1), off_c)
    numpy.testing.assert_allclose(out, a @ b, rtol=1e-12)
    assert (wide[:, [0, 6, 7]] == -7.0).all()


@pytest.mark.parametrize("which", ["a", "b"])
def test_an_operand_with_no_contiguous_axis_asks_for_a_copy(which):
    rng = numpy.random.default_rng(5)
    _, gap = _layouts(rng, (4, 6) if which == "a" else (6, 3), "gap")
    other = rng.standard_normal((6, 3) if which == "a" else (4, 6))
    a, b = (gap, other) if which == "a" else (other, gap)
    plan, why = blas.gemm_plan(a.shape, tuple(s // 8 for s in a.strides), b.shape,
                               tuple(s // 8 for s in b.strides))
    assert plan is None and why == which


def test_an_out_with_strided_columns_asks_for_a_copy():
    plan, why = blas.gemm_plan((3, 4), (4, 1), (4, 5), (5, 1), (15, 1, 3))   # a transposed out
    assert plan is None and why == "c"


def test_shapes_that_do_not_multiply_are_named():
    assert blas.gemm_plan((3, 4), (4, 1), (5, 2), (2, 1)) == (None, "shape")
    assert blas.gemm_plan((2, 3, 4), (12, 4, 1), (3, 4, 2), (8, 2, 1)) == (None, "shape")


def test_compute_type_follows_cupy_tf32_setting(monkeypatch):
    monkeypatch.delenv("CUPY_TF32", raising=False)
    assert blas.compute_type(numpy.dtype(numpy.float32)) == blas.COMPUTE_32F
    assert blas.compute_type(numpy.dtype(numpy.float16)) == blas.COMPUTE_32F
    assert blas.compute_type(numpy.dtype(numpy.float64)) == blas.COMPUTE_64F
    monkeypatch.setenv("CUPY_TF32", "1")
    assert blas.compute_type(numpy.dtype(numpy.float32)) == blas.COMPUTE_32F_FAST_TF32
    assert blas.compute_type(numpy.dtype(numpy.float64)) == blas.COMPUTE_64F


class _FakeArray:
    """What blas.matmul reads of a CuPy array, backed by a NumPy array (no GPU here)."""

    def __init__(self, x):
        self.x = x
        self.shape, self.strides, self.dtype = x.shape, x.strides, x.dtype
        self.ndim, self.size, self.itemsize = x.ndim, x.size, x.itemsize
        self.data = type("Ptr", (), {"ptr": x.__array_interface__["data"][0]})()

    def reshape(self, shape):
        return _FakeArray(self.x.reshape(shape))


def test_a_repeated_layout_reuses_its_plan_and_gives_the_same_call(monkeypatch):
    """The plan of a layout that needs no copy is kept: the second product of the same
    layout makes the same cuBLAS call without working it out again; another layout (a
    transposed operand) gets its own plan."""
    import sys
    import types
    fake = types.ModuleType("cupy")
    fake.empty = lambda shape, dtype: _FakeArray(numpy.empty(shape, dtype))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(blas, "_plans", {})
    calls = []
    monkeypatch.setattr(blas, "_gemm", lambda cp, plan, b, a, c, dtype: calls.append(plan))
    planned = []
    real_plan = blas.gemm_plan
    monkeypatch.setattr(blas, "gemm_plan", lambda *a: planned.append(a) or real_plan(*a))
    rng = numpy.random.default_rng(0)
    a = _FakeArray(rng.standard_normal((5, 7)).astype(numpy.float32))
    b = _FakeArray(rng.standard_normal((7, 3)).astype(numpy.float32))
    bt = _FakeArray(numpy.ascontiguousarray(b.x.T).T)
    c1 = blas.matmul(a, b)
    c2 = blas.matmul(a, b)
    assert c1.shape == c2.shape == (5, 3) and len(planned) == 1 and calls[0] == calls[1]
    blas.matmul(a, bt)
    assert len(planned) == 2 and calls[2] != calls[0] and calls[2].transb == blas.OP_T
    blas.matmul(a, bt)
    assert len(planned) == 2 and calls[3] == calls[2]
