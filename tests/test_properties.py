"""Property-based tests (hypothesis) of invariants that need no oracle library.

Each property holds for every input the strategy draws: softmax's shift invariance and
normalization at extreme logits, cross-entropy's sign, gradcheck's agreement with the
layers (and its catching a wrong gradient), the convolution and pooling against naive
loops over output positions (ties included), dropout's masks and scalings, batch norm's
output statistics and gradient identities, the bad-input rule of DESIGN §4 for layers
and losses (a wrong input raises ValueError/TypeError naming the layer, never a NumPy
error), the same numbers in any memory layout, float16 as float32 rounded once, the
DataLoader's epochs and shards, a refused optimizer step or a failed load changing
nothing, resuming bit for bit, Trainer.fit/evaluate against the plain loop, early
stopping, finite activations at any finite input, SyncBatchNorm on one process. The
ones that also run on the sim device share their bodies with tests/test_properties_sim.py
through tests/prop_helpers.py.
"""
import math

import numpy
import pytest
# hypothesis comes with the dev extra (CI installs it); a machine with only pytest (the lent
# GPU machine has no network to install it) skips these modules instead of failing to collect
pytest.importorskip("hypothesis")
from hypothesis import assume, example, given
from hypothesis import strategies as st

import gpunet
from gpunet import random as grandom
from gpunet.functional import activations as FA
from gpunet.functional import conv as FC
from gpunet.functional import dropout as FD
from gpunet.functional import losses as FL
from gpunet.layers.base import Layer
from pool_checks import assert_half_pooling_is_float32_rounded_once
from prop_helpers import (BAD_INPUT_LAYERS, ELEMENTWISE, PERMS, bad_step_cases, build_fit, build_stack,
                          check_a_refused_step_changes_nothing, check_activation_is_finite, check_bad_input,
                          check_bad_loss_input, check_early_stopping_restores_the_best, check_evaluate,
                          check_failed_load_changes_nothing, check_resume, conv_geometry, evaluate_cases,
                          finite_arrays, fit_cases, in_layout, load_cases, normal, pool_geometry, props,
                          resume_cases, seeds, stacks, trainer_of)

DTYPES = st.sampled_from([numpy.float32, numpy.float64])


# -- softmax and cross-entropy -------------------------------------------------------------

@props(40)
@given(seed=seeds, n=st.integers(1, 5), c=st.integers(1, 9), dtype=DTYPES,
       smoothing=st.sampled_from([0.0, 0.1, 1.0]), shift_bits=st.integers(0, 20))
def test_softmax_and_xent_are_shift_invariant_bit_for_bit(seed, n, c, dtype, smoothing, shift_bits):
    """Integer logits and an integer shift per row: ``x + s`` is exact, and so is
    ``(x + s) - max(x + s) = x - max(x)``, so a max-subtracting softmax, log-softmax and
    softmax-CE (loss and gradient) give the same bits with and without the shift."""
    rng = numpy.random.default_rng(seed)
    x = rng.integers(-2**10, 2**10, (n, c)).astype(dtype)
    s = rng.integers(-2**shift_bits, 2**shift_bits + 1, (n, 1)).astype(dtype)
    xs = x + s
    numpy.testing.assert_array_equal(xs - s, x)               # the shift is exact
    for f in (FA.softmax, FA.log_softmax):
        numpy.testing.assert_array_equal(f(xs), f(x))
    labels = rng.integers(0, c, n)
    for reduction in ("none", "sum"):
        a = FL.softmax_cross_entropy(x, labels, smoothing, None, reduction)
        b = FL.softmax_cross_entropy(xs, labels, smoothing, None, reduction)
        numpy.testing.assert_array_equal(a[0], b[0])
        numpy.testing.assert_array_equal(a[1], b[1])


@props(50)
@given(seed=seeds, n=st.integers(1, 5), c=st.integers(1, 9), dtype=DTYPES,
       scale=st.sampled_from([1.0, 1e4, 1e30]), axis=st.sampled_from([0, 1, -1]))
def test_softmax_is_a_distribution_at_extreme_logits(seed, n, c, dtype, scale, axis):
    """``softmax`` is finite, in ``[0, 1]``, sums to 1 along its axis, has its maximum
    where the logits do; ``log_softmax <= 0``, finite and ``log`` of the softmax where that
    is normal; the Softmax layer's input gradient sums to zero along the axis."""
    x = normal(seed, (n, c), scale, dtype)
    y = FA.softmax(x, axis=axis)
    ly = FA.log_softmax(x, axis=axis)
    eps = numpy.finfo(dtype).eps
    assert y.dtype == ly.dtype == dtype
    assert numpy.all(numpy.isfinite(y)) and numpy.all((y >= 0) & (y <= 1))
    numpy.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=0, atol=4 * x.shape[axis] * eps)
    top = numpy.take_along_axis(y, numpy.expand_dims(numpy.argmax(x, axis=axis), axis), axis=axis)
    numpy.testing.assert_array_equal(top, y.max(axis=axis, keepdims=True))
    assert numpy.all(numpy.isfinite(ly)) and numpy.all(ly <= 0)
    normal_ = y > numpy.finfo(dtype).tiny
    numpy.testing.assert_allclose(numpy.exp(ly.astype(numpy.float64))[normal_], y[normal_],
                                  rtol=16 * eps * (1 + float(numpy.abs(ly[normal_]).max(initial=0))))
    layer = gpunet.Softmax(axis=axis)
    layer(x)
    dx = layer.backward(normal(seed + 1, x.shape, 1.0, dtype))
    assert numpy.all(numpy.abs(dx.sum(axis=axis)) <= 16 * x.shape[axis] * eps)


@props(50)
@given(seed=seeds, n=st.integers(1, 6), c=st.integers(1, 9), dtype=DTYPES,
       scale=st.sampled_from([1.0, 1e4, 1e30]), smoothing=st.floats(0.0, 1.0),
       soft=st.booleans(), ignore=st.booleans())
def test_cross_entropy_is_nonnegative_and_finite(seed, n, c, dtype, scale, smoothing, soft, ignore):
    """Every row loss is finite and ``>= 0`` (``logsumexp(z) >= z_c``, computed from the
    max-shifted logits, so it holds after rounding too); the gradient is finite, every
    entry of the mean's gradient is at most ``1/N_valid`` in magnitude, and each row of an
    integer-label gradient sums to 0."""
    rng = numpy.random.default_rng(seed)
    z = (rng.standard_normal((n, c)) * scale).astype(dtype)
    if soft:
        t = rng.random((n, c))
        labels = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
        ignore_index = None
    else:
        labels = rng.integers(0, c, n)
        ignore_index = -1 if ignore else None
        if ignore:
            labels[rng.random(n) < 0.3] = -1
    rows, _ = FL.softmax_cross_entropy(z, labels, smoothing, ignore_index, "none")
    loss, g = FL.softmax_cross_entropy(z, labels, smoothing, ignore_index, "mean")
    assert rows.shape == (n,) and numpy.all(numpy.isfinite(rows)) and numpy.all(rows >= 0)
    assert numpy.isfinite(loss) and loss >= 0 and numpy.all(numpy.isfinite(g))
    n_valid = n if ignore_index is None else int(numpy.sum(labels != ignore_index))
    if n_valid:
        assert numpy.abs(g).max() <= (1 + 4 * numpy.finfo(dtype).eps) / n_valid
    if not soft:
        eps = numpy.finfo(dtype).eps
        assert numpy.all(numpy.abs(g.sum(axis=1)) <= 4 * c * eps / max(n_valid, 1))


# -- gradcheck -----------------------------------------------------------------------------

def _layer_cases():
    """``(name, build(draw) -> (layer, input shape))`` for small float64 gradchecks."""
    acts = st.sampled_from(["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus",
                            "softmax", "log_softmax", "identity"])

    @st.composite
    def dense(draw):
        fin, fout = draw(st.integers(1, 4)), draw(st.integers(1, 4))
        return gpunet.Dense(fin, fout, bias=draw(st.booleans()), activation=draw(st.one_of(st.none(), acts))), \
            (draw(st.integers(1, 3)), fin)

    @st.composite
    def conv(draw):
        h, w, k, s, p = conv_geometry(draw, max_hw=5)
        cin, cout = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        return gpunet.Conv2D(cin, cout, k, s, p, bias=draw(st.booleans()),
                             activation=draw(st.sampled_from([None, "relu", "tanh"]))), \
            (draw(st.integers(1, 2)), cin, h, w)

    @st.composite
    def pool(draw):
        h, w, k, s, p = pool_geometry(draw, max_hw=5)
        cls = draw(st.sampled_from([gpunet.MaxPool2D, gpunet.AvgPool2D]))
        return cls(k, s, p), (draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w)

    @st.composite
    def batchnorm(draw):
        c = draw(st.integers(1, 3))
        shape = draw(st.sampled_from([(4, c), (2, c, 2, 2), (3, c, 1, 2)]))
        return gpunet.BatchNorm(c, affine=draw(st.booleans()), momentum=draw(st.floats(0, 1))), shape

    @st.composite
    def activation(draw):
        name = draw(acts)
        layer = gpunet.layers.activations.get(name)
        return layer, (draw(st.integers(1, 3)), draw(st.integers(1, 4)))

    @st.composite
    def maxout(draw):
        k = draw(st.integers(1, 3))
        return gpunet.Maxout(k), (draw(st.integers(1, 2)), k * draw(st.integers(1, 3)), draw(st.integers(1, 2)))

    @st.composite
    def dropout(draw):
        return gpunet.Dropout(draw(st.floats(0.0, 0.9)), mode=draw(st.sampled_from(["inverted", "classic"])),
                              seed=draw(st.integers(0, 2**63 - 1))), \
            (draw(st.integers(1, 3)), draw(st.integers(1, 5)))

    @st.composite
    def stack(draw):
        c = draw(st.integers(1, 2))
        layer = gpunet.Sequential(gpunet.Conv2D(1, c, 2, padding=1), gpunet.BatchNorm(c), gpunet.ReLU(),
                                  gpunet.MaxPool2D(2), gpunet.Flatten(), gpunet.Dense(c * 4, 2))
        return layer, (2, 1, 3, 3)

    @st.composite
    def residual(draw):
        c = draw(st.integers(1, 2))
        if draw(st.booleans()):
            d = draw(st.integers(1, 4))
            return gpunet.Residual(gpunet.Sequential(gpunet.Dense(d, d, activation="tanh"), gpunet.Dense(d, d))), \
                (draw(st.integers(1, 3)), d)
        block = gpunet.Sequential(gpunet.Conv2D(c, c, 3, padding=1), gpunet.BatchNorm(c), gpunet.ELU())
        return gpunet.Residual(block), (2, c, draw(st.integers(1, 3)), draw(st.integers(1, 3)))

    @st.composite
    def global_pool(draw):
        c = draw(st.integers(1, 3))
        return gpunet.Sequential(gpunet.GlobalAvgPool2D(), gpunet.Dense(c, 2)), \
            (draw(st.integers(1, 2)), c, draw(st.integers(1, 3)), draw(st.integers(1, 3)))

    return dict(dense=dense(), conv=conv(), pool=pool(), batchnorm=batchnorm(), activation=activation(),
                maxout=maxout(), dropout=dropout(), stack=stack(), residual=residual(), global_pool=global_pool())


LAYER_CASES = _layer_cases()


@props(60)
@given(case=st.sampled_from(sorted(LAYER_CASES)).flatmap(lambda k: LAYER_CASES[k]), seed=seeds)
def test_gradcheck_agrees_with_every_layer(case, seed):
    """Every layer's backward (input and parameter gradients) agrees with central
    differences in float64 (``gpunet.gradcheck``: dropout's counter and batch norm's
    running statistics are rewound for every probe)."""
    layer, shape = case
    for i, p in enumerate(layer.parameters()):       # biases start at 0: a ReLU over padding would
        p.data = p.data + normal(seed + 1 + i, p.data.shape, 0.5, p.data.dtype)   # sit on its kink
    x = normal(seed, shape)
    if isinstance(layer, (gpunet.MaxPool2D, gpunet.Maxout)):
        # max: well-separated values, so no probe of +-1e-6 changes which one wins
        x = numpy.random.default_rng(seed).permutation(x.size).reshape(shape) * 0.1
    assert gpunet.gradcheck(layer, x)


class _OffByOne(Layer):
    """A layer whose backward is the wrapped layer's with one input-gradient element or
    one parameter-gradient element wrong by ``delta``."""

    def __init__(self, inner, where, index, delta):
        super().__init__()
        self.inner, self.where, self.index, self.delta = inner, where, index, delta
        self._buffers = ()

    def parameters(self):
        return self.inner.parameters()

    def named_parameters(self):
        return self.inner.named_parameters()

    def named_buffers(self):
        return self.inner.named_buffers()

    def forward(self, x):
        return self.inner.forward(x)

    def backward(self, dy):
        dx = self.inner.backward(dy)
        p = None if self.where == "input" else self.inner.parameters()[self.where]
        g = (dx if p is None else p.grad).copy()      # a copy: a gradient may be a transposed view
        g.reshape(-1)[self.index % g.size] += self.delta
        if p is None:
            return g
        p.grad = g
        return dx


@props(25)
@given(case=st.sampled_from(["dense", "conv", "batchnorm"]).flatmap(lambda k: LAYER_CASES[k]), seed=seeds,
       pick=st.integers(0, 10), index=st.integers(0, 1000), delta=st.sampled_from([1e-3, -0.5]))
def test_gradcheck_catches_a_wrong_gradient(case, seed, pick, index, delta):
    """A gradient wrong in one element by more than gradcheck's tolerance is caught, in the
    input gradient or in any parameter's."""
    layer, shape = case
    params = layer.parameters()
    where = "input" if pick >= len(params) else pick
    bad = _OffByOne(layer, where, index, delta)
    with pytest.raises(AssertionError, match="gradcheck"):
        gpunet.gradcheck(bad, normal(seed, shape))


# -- convolution against a loop over output positions ----------------------------------------

def _conv_loops(x, w, b, stride, padding):
    n, cin, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    xp = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    y = numpy.zeros((n, o, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            y[:, :, i, j] = numpy.einsum("nchw,ochw->no", patch, w)
    return y if b is None else y + b[None, :, None, None]


def _conv_loops_backward(dy, x, w, stride, padding):
    n, cin, h, wd = x.shape
    o, _, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, padding
    dxp = numpy.zeros((n, cin, h + 2 * ph, wd + 2 * pw))
    dw = numpy.zeros_like(w)
    xp = numpy.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    for i in range(dy.shape[2]):
        for j in range(dy.shape[3]):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]
            dw += numpy.einsum("no,nchw->ochw", dy[:, :, i, j], patch)
            dxp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw] += numpy.einsum("no,ochw->nchw", dy[:, :, i, j], w)
    return dxp[:, :, ph:ph + h, pw:pw + wd], dw, dy.sum(axis=(0, 2, 3))


@st.composite
def conv_args(draw):
    h, w, k, s, p = conv_geometry(draw)
    return dict(n=draw(st.integers(1, 3)), cin=draw(st.integers(1, 3)), cout=draw(st.integers(1, 3)),
                h=h, w=w, kernel=k, stride=s, padding=p, bias=draw(st.booleans()), seed=draw(seeds))


@props(40)
@given(case=conv_args())
def test_conv2d_matches_loops_over_output_positions(case):
    """The im2col/GEMM convolution (both the small-image gather-matrix path and the
    whole-batch rows path, the "same"-plane shortcut) against a loop over output positions:
    forward, input, weight and bias gradients, float64."""
    c = case
    x = normal(c["seed"], (c["n"], c["cin"], c["h"], c["w"]))
    w = normal(c["seed"] + 1, (c["cout"], c["cin"]) + c["kernel"])
    b = normal(c["seed"] + 2, (c["cout"],)) if c["bias"] else None
    y = FC.conv2d(x, w, b, c["stride"], c["padding"])
    want = _conv_loops(x, w, b, c["stride"], c["padding"])
    numpy.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    dy = normal(c["seed"] + 3, want.shape)
    dx, dw, db = FC.conv2d_backward(dy, x, w, c["stride"], c["padding"], need_bias=c["bias"])
    wdx, wdw, wdb = _conv_loops_backward(dy, x, w, c["stride"], c["padding"])
    numpy.testing.assert_allclose(dx, wdx, rtol=1e-12, atol=1e-12)
    numpy.testing.assert_allclose(dw, wdw, rtol=1e-12, atol=1e-12)
    if c["bias"]:
        numpy.testing.assert_allclose(db, wdb, rtol=1e-12, atol=1e-12)


# -- pooling against loops, ties included ------------------------------------------------------

def _pool_loops(x, kernel, stride, padding, kind):
    """Max pooling (first maximum in row-major window order wins, padding never does) or
    average pooling (zero padding counted), with the backward of ``dy``: loops over output
    positions."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    y = numpy.zeros((n, c, oh, ow), x.dtype)
    src = numpy.zeros((n, c, oh, ow, 2), int)         # the input position each max came from
    for a in range(n):
        for b in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, where, total = -numpy.inf, None, 0.0
                    for u in range(kh):
                        for v in range(kw):
                            r, q = i * sh + u - ph, j * sw + v - pw
                            if 0 <= r < h and 0 <= q < w:
                                total += float(x[a, b, r, q])
                                if where is None or x[a, b, r, q] > best:
                                    best, where = x[a, b, r, q], (r, q)
                    y[a, b, i, j] = best if kind == "max" else total / (kh * kw)
                    src[a, b, i, j] = where
    return y, src


@st.composite
def pool_args(draw):
    h, w, k, s, p = pool_geometry(draw)
    return dict(n=draw(st.integers(1, 2)), c=draw(st.integers(1, 3)), h=h, w=w, kernel=k,
                stride=k if s is None else s, padding=p, ties=draw(st.booleans()), seed=draw(seeds),
                dtype=draw(DTYPES))


@props(40)
@given(case=pool_args())
def test_max_pool_matches_loops_with_ties(case):
    """MaxPool2D's output equals the loop's exactly, and its gradient goes to the first
    maximal element of each window (row-major) — with many ties (inputs rounded to a few
    integers); every ``dy`` lands on exactly one input, so ``sum(dx) = sum(dy)``."""
    c = case
    shape = (c["n"], c["c"], c["h"], c["w"])
    x = normal(c["seed"], shape, 1.0, c["dtype"])
    if c["ties"]:
        x = numpy.round(x)
    layer = gpunet.MaxPool2D(c["kernel"], c["stride"], c["padding"])
    y = layer(x)
    want, src = _pool_loops(x, c["kernel"], c["stride"], c["padding"], "max")
    numpy.testing.assert_array_equal(y, want)
    dy = numpy.random.default_rng(c["seed"] + 1).integers(-8, 9, y.shape).astype(c["dtype"])
    dx = layer.backward(dy)
    wdx = numpy.zeros(shape, c["dtype"])
    for idx in numpy.ndindex(*y.shape):
        r, q = src[idx]
        wdx[idx[0], idx[1], r, q] += dy[idx]
    numpy.testing.assert_array_equal(dx, wdx)         # small integers: sums are exact
    assert dx.sum() == dy.sum()


@props(30)
@given(case=pool_args())
def test_avg_pool_matches_loops_and_spreads_the_gradient(case):
    """AvgPool2D against the loop (padding counted in the divisor); its backward is the
    adjoint: ``<dx, x> = <dy, y>``, and without padding ``sum(dx)`` is the sum of ``dy``
    times the fraction of each window inside the input (1 when there is no padding)."""
    c = case
    shape = (c["n"], c["c"], c["h"], c["w"])
    x = normal(c["seed"], shape, 1.0, c["dtype"])
    layer = gpunet.AvgPool2D(c["kernel"], c["stride"], c["padding"])
    y = layer(x)
    want, _ = _pool_loops(x.astype(numpy.float64), c["kernel"], c["stride"], c["padding"], "avg")
    tol = 1e-5 if c["dtype"] == numpy.float32 else 1e-12
    numpy.testing.assert_allclose(y, want, rtol=tol, atol=tol)
    dy = normal(c["seed"] + 1, y.shape, 1.0, c["dtype"])
    dx = layer.backward(dy)
    numpy.testing.assert_allclose(numpy.vdot(dx, x), numpy.vdot(dy, y), rtol=tol * 10, atol=tol * 10)
    inside, _ = _pool_loops(numpy.ones(shape), c["kernel"], c["stride"], c["padding"], "avg")
    numpy.testing.assert_allclose(dx.sum(dtype=numpy.float64), (dy * inside).sum(dtype=numpy.float64),
                                  rtol=tol * 10, atol=tol * 10)


@props(25)
@given(seed=seeds, n=st.integers(1, 3), c=st.integers(1, 3), pieces=st.integers(1, 4),
       spatial=st.lists(st.integers(1, 3), max_size=2).map(tuple), dtype=DTYPES)
def test_maxout_gradient_goes_to_the_first_maximum(seed, n, c, pieces, spatial, dtype):
    """With ties (inputs rounded to a few integers), each output's gradient lands on the
    first maximal input of its group (DESIGN §4)."""
    x = numpy.round(normal(seed, (n, c * pieces) + spatial, 1.0, dtype))
    layer = gpunet.Maxout(pieces)
    y = layer(x)
    groups = x.reshape((n, c, pieces) + spatial)
    numpy.testing.assert_array_equal(y, groups.max(axis=2))
    dy = normal(seed + 1, y.shape, 1.0, dtype)
    dx = layer.backward(dy)
    first = numpy.argmax(groups, axis=2)                       # argmax: the first maximum
    want = numpy.zeros_like(groups)
    numpy.put_along_axis(want, first[:, :, None], dy[:, :, None], axis=2)
    numpy.testing.assert_array_equal(dx, want.reshape(x.shape))


# -- dropout -------------------------------------------------------------------------------

@props(40)
@given(seed=st.integers(0, 2**63 - 1), counter=st.integers(0, 2**40), n=st.integers(1, 3000),
       p=st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.sampled_from([2.0**-24, 1 - 2.0**-24, 0.5])),
       start=st.integers(0, 2**20))
def test_dropout_mask_is_uniform_at_least_p(seed, counter, n, p, start):
    """Element ``i`` of draw ``(seed, counter)`` is kept iff ``uniform[i] >= p`` exactly
    (``gpunet.random``'s stream, elements ``start, start+1, ...``), and a stretch of the
    stream from ``start`` is the slice of the stream from 0 (data-parallel shards)."""
    m = FD.keep_mask((n,), p, seed, counter, numpy, start)
    u = grandom.uniform(seed, counter, (n,), numpy, start)
    assert u.dtype == numpy.float32 and numpy.all((u >= 0) & (u < 1))
    numpy.testing.assert_array_equal(m, u.astype(numpy.float64) >= p)
    whole = grandom.uniform(seed, counter, (start + n,), numpy) if start + n <= 2**21 else None
    if whole is not None:
        numpy.testing.assert_array_equal(u, whole[start:])


@props(30)
@given(seed=st.integers(0, 2**63 - 1), n=st.integers(1, 200),
       p=st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.floats(0.9999, 1.0, exclude_max=True)),
       mode=st.sampled_from(["inverted", "classic"]),
       dtype=st.sampled_from([numpy.float16, numpy.float32, numpy.float64]))
@example(seed=0, n=8, p=0.99999, mode="inverted", dtype=numpy.float16)
def test_dropout_drops_to_zero_at_any_p(seed, n, p, mode, dtype):
    """For every ``p`` in ``[0, 1)`` and dtype, forward and backward: a dropped element is
    ``x·0`` (0 for finite ``x``), a kept one ``x·scale`` with the scale rounded to the
    dtype first (DESIGN §4; kernels/dropout.cu). float16 with ``p > 1 - 1/65520``: the
    scale rounds to inf, the kept elements are inf, the dropped ones still 0 (they were
    NaN, ``0·inf``, on the NumPy path, while the kernel gave 0)."""
    x = normal(seed % 2**32, (n,), 1.0, dtype)
    keep = FD.keep_mask(x.shape, p, seed, 5, numpy)
    with numpy.errstate(over="ignore"):
        scale = dtype(FD.train_scale(p, mode))
    for f in (FD.dropout_forward, FD.dropout_backward):
        with numpy.errstate(over="ignore", invalid="ignore"):
            y = f(x, p, seed, 5, mode)
        assert y.dtype == dtype
        numpy.testing.assert_array_equal(y[~keep], numpy.zeros(int((~keep).sum()), dtype))
        with numpy.errstate(over="ignore"):
            numpy.testing.assert_array_equal(y[keep], x[keep] * scale)


@props(30)
@given(seed=st.integers(0, 2**63 - 1), shape=st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple),
       p=st.floats(0.0, 0.95), mode=st.sampled_from(["inverted", "classic"]), dtype=DTYPES)
def test_dropout_layer_scales_and_masks(seed, shape, p, mode, dtype):
    """Training: ``y`` is 0 or ``x·scale`` (``1/(1-p)`` inverted, 1 classic), the backward
    applies the same mask and scale, the mask is the same for both dtypes and a fresh one
    at the next forward; the kept fraction is within 6 sigma of ``1-p``; eval: ``x``
    (inverted) or ``x·(1-p)`` (classic)."""
    x = normal(seed % 2**32, shape, 1.0, dtype)
    assume(numpy.all(x != 0))
    layer = gpunet.Dropout(p, mode=mode, seed=seed)
    y = layer(x)
    dx = layer.backward(numpy.ones_like(x))
    scale = 1.0 / (1.0 - p) if mode == "inverted" else 1.0
    kept = y != 0
    numpy.testing.assert_array_equal(y[kept], x[kept] * dtype(scale) if scale != 1.0 else x[kept])
    numpy.testing.assert_array_equal(dx, numpy.where(kept, numpy.ones_like(x) * dtype(scale), 0))
    size = x.size
    sigma = math.sqrt(size * p * (1 - p))
    assert abs(kept.sum() - size * (1 - p)) <= 6 * sigma + 1
    other = gpunet.Dropout(p, mode=mode, seed=seed)
    y_other = other(x.astype(numpy.float64 if dtype == numpy.float32 else numpy.float32))
    numpy.testing.assert_array_equal(y_other != 0, kept)        # the mask ignores the dtype
    y2 = layer(x)
    if size >= 64 and 0.1 <= p <= 0.9:
        assert numpy.any((y2 != 0) != kept)                     # a fresh mask each forward
    assert layer.counter == 2
    layer.eval()
    want = x if mode == "inverted" else x * dtype(1.0 - p)
    numpy.testing.assert_array_equal(layer(x), want)
    assert layer.counter == 2


# -- batch norm ----------------------------------------------------------------------------

@props(40)
@given(seed=seeds, c=st.integers(1, 4), four=st.booleans(), n=st.integers(2, 6), hw=st.integers(1, 3),
       log_scale=st.integers(-2, 3), shift=st.sampled_from([0.0, 5.0, 1e3]), dtype=DTYPES,
       eps=st.sampled_from([1e-5, 1e-2]))
def test_batchnorm_output_statistics_and_gradient_identities(seed, c, four, n, hw, log_scale, shift,
                                                             dtype, eps):
    """Training mode: each channel of ``y`` has mean ``beta`` and biased variance
    ``gamma² var/(var + eps)``; the input gradient of each channel sums to 0 and its
    product with the normalized input ``x̂`` is ``gamma/sqrt(var+eps) Σ dy·x̂ ·
    eps/(var+eps)`` (0 as eps -> 0: the two directions batch norm removes);
    ``dbeta = Σ dy`` and ``dgamma = Σ dy·x̂``."""
    shape = (n, c, hw, hw + 1) if four else (n, c)
    x64 = normal(seed, shape, 10.0 ** log_scale) + shift
    x = x64.astype(dtype)
    gamma, beta = normal(seed + 1, (c,), 1.0, dtype) + 1, normal(seed + 2, (c,), 1.0, dtype)
    bn = gpunet.BatchNorm(c, eps=eps)
    bn.gamma.data, bn.beta.data = gamma, beta
    y = bn(x)
    axes = (0, 2, 3) if four else (0,)
    s = (1, c) + (1,) * (len(shape) - 2)
    xd = x.astype(numpy.float64)
    var = xd.var(axis=axes)
    f32 = dtype == numpy.float32
    rel = 1e-3 if f32 else 1e-9
    # what float32 can resolve of a channel of mean |shift| and spread 10^log_scale
    ulp_spread = numpy.finfo(dtype).eps * (abs(shift) + 10.0 ** log_scale) / numpy.sqrt(var + eps)
    yd = y.astype(numpy.float64)
    numpy.testing.assert_allclose(yd.mean(axis=axes), beta, rtol=0,
                                  atol=rel + 8 * float(ulp_spread.max()) * float(numpy.abs(gamma).max()))
    numpy.testing.assert_allclose(yd.var(axis=axes), gamma.astype(numpy.float64) ** 2 * var / (var + eps),
                                  rtol=rel + 16 * float(ulp_spread.max()), atol=rel * 1e-3)
    dy = normal(seed + 3, shape, 1.0, dtype)
    dx = bn.backward(dy).astype(numpy.float64)
    xhat = (xd - xd.mean(axis=axes).reshape(s)) / numpy.sqrt(var + eps).reshape(s)
    m = x.size // c
    dscale = numpy.abs(gamma).reshape(-1) / numpy.sqrt(var + eps) * numpy.sqrt(m)
    bound = (rel + 64 * float(ulp_spread.max())) * dscale * numpy.abs(dy).max() * numpy.sqrt(m)
    assert numpy.all(numpy.abs(dx.sum(axis=axes)) <= bound)
    # Σ dx·x̂ = gamma/sqrt(var+eps) · Σ dy·x̂ · (1 - mean x̂²), and mean x̂² = var/(var+eps)
    inv = 1 / numpy.sqrt(var + eps)
    want = gamma * inv * (dy * xhat).sum(axis=axes) * (eps / (var + eps))
    assert numpy.all(numpy.abs((dx * xhat).sum(axis=axes) - want) <= bound * 4)
    numpy.testing.assert_allclose(bn.beta.grad, dy.astype(numpy.float64).sum(axis=axes), rtol=rel, atol=rel)
    numpy.testing.assert_allclose(bn.gamma.grad, (dy * xhat).sum(axis=axes), rtol=rel * 10,
                                  atol=rel * 10 + 64 * float(ulp_spread.max()) * m)


# -- bad input: ValueError/TypeError naming the layer -----------------------------------------

@props(150)
@given(name=st.sampled_from(sorted(BAD_INPUT_LAYERS)),
       shape=st.lists(st.integers(1, 4), min_size=0, max_size=5).map(tuple),
       dtype=st.sampled_from(["float64", "float32", "float16", "int64", "bool", "complex128"]),
       param_dtype=st.sampled_from(["float32", "float64"]), as_list=st.booleans())
@example(name="Softmax", shape=(3,), dtype="float64", param_dtype="float64", as_list=False)
def test_bad_input_raises_naming_the_layer(name, shape, dtype, param_dtype, as_list):
    """A forward on any shape/dtype either works (when the layer accepts it) or raises
    ValueError/TypeError whose message starts with the layer's name — never a NumPy error
    from deep inside; a Python list is refused with TypeError. Then a backward with a ``dy``
    of the wrong shape or dtype raises ValueError naming ``<Layer>.backward``."""
    check_bad_input(numpy, name, shape, dtype, param_dtype, as_list)


# -- memory layout -------------------------------------------------------------------------

@props(40)
@given(case=stacks(), xperm=st.sampled_from(PERMS), dperm=st.sampled_from(PERMS), step=st.integers(1, 2))
def test_layers_give_the_same_numbers_in_any_memory_layout(case, xperm, dperm, step):
    """A stack of conv, batch norm, activation, pooling and dropout layers fed an input
    (and a ``dy``) in any memory order, strided or not, gives the output and gradients it
    gives on C-contiguous arrays (float64; batch norm sums in another order over
    channel-major memory, so within rounding)."""
    x = normal(case["seed"], (case["n"], case["c"], case["h"], case["w"]))
    a, b = build_stack(case), build_stack(case)
    ya = a(x)
    yb = b(in_layout(x, xperm, step))
    numpy.testing.assert_allclose(yb, ya, rtol=1e-12, atol=1e-12)
    dy = normal(case["seed"] + 1, ya.shape)
    dxa = a.backward(dy)
    dxb = b.backward(in_layout(dy, dperm, step))
    numpy.testing.assert_allclose(dxb, dxa, rtol=1e-11, atol=1e-11)
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        numpy.testing.assert_allclose(q.grad, p.grad, rtol=1e-11, atol=1e-11, err_msg=name)
    for (name, u), (_, v) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
        numpy.testing.assert_allclose(v, u, rtol=1e-12, atol=1e-12, err_msg=name)


# -- float16 on the NumPy path: the float32 computation, each output rounded once ---------------

def _h(a):
    return a.astype(numpy.float16)


@st.composite
def half_conv_cases(draw):
    h, w, k, s, p = conv_geometry(draw)
    return dict(shape=(draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w), cout=draw(st.integers(1, 3)),
                kernel=k, stride=s, padding=p, relu=draw(st.booleans()), bias=draw(st.booleans()),
                scale=draw(st.sampled_from([0.5, 4.0, 100.0])), seed=draw(seeds))


@props(30)
@given(case=half_conv_cases())
def test_float16_conv_is_float32_rounded_once(case):
    """Conv2D's NumPy path on float16 (both image-size paths, any geometry, the fused ReLU):
    output, input, weight and bias gradients equal the float32 computation rounded once
    (tolerance 0; ``gpunet.functional.conv``)."""
    c = case
    k, s, p = c["kernel"], c["stride"], c["padding"]
    x = _h(normal(c["seed"], c["shape"], c["scale"]))
    w = _h(normal(c["seed"] + 1, (c["cout"], c["shape"][1]) + k, 0.5))
    b = _h(normal(c["seed"] + 2, (c["cout"],))) if c["bias"] else None
    f = [None if a is None else a.astype(numpy.float32) for a in (x, w, b)]
    act = "relu" if c["relu"] else None
    with numpy.errstate(over="ignore"):
        y16, cols = FC.conv2d(x, w, b, s, p, return_cols=True, activation=act)
        y32, cols32 = FC.conv2d(*f, s, p, return_cols=True, activation=act)
        numpy.testing.assert_array_equal(y16, _h(y32))
        dy = _h(normal(c["seed"] + 3, y16.shape))
        got = FC.conv2d_backward(dy, x, w, s, p, cols=cols, need_bias=c["bias"], y=y16, activation=act)
        want = FC.conv2d_backward(dy.astype(numpy.float32), *f[:2], s, p, cols=cols32, need_bias=c["bias"],
                                  y=_h(y32).astype(numpy.float32), activation=act)
    for g, ref in zip(got, want):
        if ref is None:
            assert g is None
            continue
        assert g.dtype == numpy.float16
        numpy.testing.assert_array_equal(g, _h(ref))


@props(30)
@given(case=pool_args(), perm=st.sampled_from(PERMS))
def test_float16_pooling_is_float32_rounded_once(case, perm):
    """Max and average pooling of float16 in any memory order: output, argmax and both
    backwards equal the float32 results rounded once."""
    c = case
    shape, k, s, p = (c["n"], c["c"], c["h"], c["w"]), c["kernel"], c["stride"], c["padding"]
    x = in_layout(_h(normal(c["seed"], shape)), perm)
    assert_half_pooling_is_float32_rounded_once(x, k, s, p, lambda sh: _h(normal(c["seed"] + 1, sh)))


@props(30)
@given(seed=seeds, c=st.integers(1, 4), four=st.booleans(), n=st.integers(2, 6), hw=st.integers(1, 4),
       perm=st.sampled_from(PERMS), affine=st.booleans(), shift=st.sampled_from([0.0, 0.5, 100.0]))
def test_float16_batchnorm_is_float32_rounded_once(seed, c, four, n, hw, perm, affine, shift):
    """Batch norm of float16 (float32 gamma/beta) in any memory order: statistics and
    dgamma/dbeta float32, ``y`` and ``dx`` the float32 computation on the upcast input
    rounded once (``gpunet.functional.batchnorm``)."""
    from gpunet.functional import batchnorm as FB
    shape = (n, c, hw, hw + 1) if four else (n, c)
    x = _h(normal(seed, shape, 2.0) + shift)
    if four:
        x = in_layout(x, perm)
    dy = _h(normal(seed + 1, shape))
    g = normal(seed + 2, (c,), 1.0, numpy.float32) if affine else None
    b = normal(seed + 3, (c,), 1.0, numpy.float32) if affine else None
    x32 = x.astype(numpy.float32)
    y32, m32, v32, i32 = FB.batch_norm_forward(x32, g, b)
    dx32, dg32, db32 = FB.batch_norm_backward(dy.astype(numpy.float32), x32, g, m32, i32)
    y, m, v, inv = FB.batch_norm_forward(x, g, b)
    dx, dg, db = FB.batch_norm_backward(dy, x, g, m, inv)
    assert y.dtype == dx.dtype == numpy.float16
    for got, ref in ((m, m32), (v, v32), (inv, i32), (dg, dg32), (db, db32)):
        assert got.dtype == numpy.float32
        numpy.testing.assert_array_equal(got, ref)
    numpy.testing.assert_array_equal(y, _h(y32))
    numpy.testing.assert_array_equal(dx, _h(dx32))


# -- DataLoader ------------------------------------------------------------------------------

class _Rank:
    """A rank of a world of ``size`` (what DataLoader reads of a communicator)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


@pytest.mark.filterwarnings("ignore:DataLoader. drop_last=True with")
@props(60)
@given(n=st.integers(1, 40), batch=st.integers(1, 12), shuffle=st.booleans(), drop_last=st.booleans(),
       seed=st.integers(0, 2**32), epochs=st.integers(1, 3))
def test_dataloader_visits_every_sample_once_per_epoch(n, batch, shuffle, drop_last, seed, epochs):
    """Each epoch: ``len(loader)`` batches of ``batch_size`` (the last shorter unless
    dropped), rows of ``X`` and ``y`` kept together, every sample exactly once (or all but
    the ``N % batch_size`` of the last batch with ``drop_last``), in the order
    ``default_rng([seed, epoch]).permutation(N)`` when shuffled."""
    X = numpy.arange(n, dtype=numpy.float64)[:, None] * numpy.ones((1, 3))
    y = numpy.arange(n) * 10
    loader = gpunet.DataLoader(X, y, batch_size=batch, shuffle=shuffle, seed=seed, drop_last=drop_last)
    for epoch in range(epochs):
        batches = list(loader)
        assert len(batches) == len(loader)
        sizes = [yb.size for _, yb in batches]
        assert all(s == batch for s in sizes[:-1]) and (not sizes or 1 <= sizes[-1] <= batch)
        for xb, yb in batches:
            numpy.testing.assert_array_equal(xb[:, 0] * 10, yb)
            numpy.testing.assert_array_equal(xb[:, 1], xb[:, 0])
        seen = numpy.concatenate([yb // 10 for _, yb in batches]) if batches else numpy.zeros(0, int)
        order = numpy.random.default_rng([seed, epoch]).permutation(n) if shuffle else numpy.arange(n)
        want = order[:(n // batch) * batch] if drop_last else order
        numpy.testing.assert_array_equal(seen, want)


@pytest.mark.filterwarnings("ignore:DataLoader. drop_last=True with")
@props(60)
@given(n=st.integers(1, 30), size=st.integers(1, 5), batch=st.integers(1, 6), drop_last=st.booleans(),
       seed=st.integers(0, 2**32), epoch=st.integers(0, 2))
@example(n=1, size=3, batch=2, drop_last=False, seed=0, epoch=0)
def test_dataloader_shards_stack_into_the_global_batches(n, size, batch, drop_last, seed, epoch):
    """Sharded over ``S`` processes (DataLoader's "Sharding", PyTorch DistributedSampler's
    guarantees): every rank yields ``len(loader)`` batches; at each step the ranks' batches
    have one size and, stacked in rank order, are the global batch of ``S·batch_size``
    samples of the epoch's order (padded with its own first entries to a multiple of
    ``S`` without ``drop_last``), so every sample is seen."""
    X = numpy.arange(n, dtype=numpy.float64)[:, None]
    loaders = [gpunet.DataLoader(X, batch_size=batch, shuffle=True, seed=seed, drop_last=drop_last,
                                 comm=_Rank(r, size)) for r in range(size)]
    for ld in loaders:
        ld.set_epoch(epoch)
    per_rank = [list(ld) for ld in loaders]
    order = loaders[0].order(epoch)
    big = size * batch
    if drop_last:
        padded = order[:(n // big) * big]
    else:
        padded = numpy.resize(order, -(-n // size) * size)     # cycled, as DistributedSampler
    for r, batches in enumerate(per_rank):
        assert len(batches) == len(loaders[r]), (r, [b.ravel().tolist() for b in batches], len(loaders[r]))
    for step in range(len(per_rank[0])):
        parts = [per_rank[r][step][:, 0] for r in range(size)]
        assert len({p.size for p in parts}) == 1
        numpy.testing.assert_array_equal(numpy.concatenate(parts), padded[step * big:(step + 1) * big])
    if not drop_last:
        seen = set(numpy.concatenate([b[:, 0] for bs in per_rank for b in bs]).astype(int).tolist())
        assert seen == set(range(n))


# -- optimizers ------------------------------------------------------------------------------

@props(30)
@given(case=bad_step_cases())
@example(case=dict(name="SGD", kw=dict(lr=0.1, momentum=0.9, weight_decay=0.01), sizes=[2, 3], bad=1,
                   how="shape", warm=0, dtype=numpy.float64, seed=0))
def test_a_refused_optimizer_step_changes_nothing(case):
    """A gradient of the wrong shape or dtype raises ValueError naming the optimizer and
    the parameter before any parameter is updated (as the fused device path does)."""
    check_a_refused_step_changes_nothing(numpy, case)


# -- losses: bad input -------------------------------------------------------------------------

ARRAY_SHAPES = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
ARRAY_DTYPES = st.sampled_from(["float64", "float32", "int64", "bool", "complex128"])


@pytest.mark.filterwarnings("ignore:SoftmaxCrossEntropy. the logits have 1 column")
@props(150)
@given(loss=st.sampled_from(["SoftmaxCrossEntropy", "BCEWithLogits", "MSELoss"]), zshape=ARRAY_SHAPES,
       zdtype=ARRAY_DTYPES, tshape=ARRAY_SHAPES, tdtype=ARRAY_DTYPES, as_list=st.booleans(),
       reduction=st.sampled_from(["mean", "sum", "none"]))
@example(loss="SoftmaxCrossEntropy", zshape=(2, 3), zdtype="float64", tshape=(2,), tdtype="int64",
         as_list=False, reduction="mean")
@example(loss="BCEWithLogits", zshape=(), zdtype="float64", tshape=(), tdtype="float64", as_list=False,
         reduction="mean")                                  # one logit: raised NumPy's TypeError
def test_bad_loss_input_raises_naming_the_loss(loss, zshape, zdtype, tshape, tdtype, as_list, reduction):
    """Any prediction/target shapes and dtypes: the loss either computes (when DESIGN §5
    accepts them) or raises ValueError/TypeError naming the loss (the class or its
    function in gpunet.functional), never a NumPy error; lists raise TypeError."""
    check_bad_loss_input(numpy, loss, zshape, zdtype, tshape, tdtype, as_list, reduction)


# -- checkpoints ---------------------------------------------------------------------------

@props(25)
@given(case=resume_cases())
def test_a_resumed_run_continues_bit_for_bit(case):
    """Train a random stack a few steps, save (model, optimizer, schedule), load into a
    model and optimizer built from another seed, and continue: the losses and every
    parameter, buffer, dropout counter and optimizer state equal those of the run that
    was never interrupted (DESIGN §8)."""
    check_resume("cpu", case)


# -- Trainer ---------------------------------------------------------------------------------

@props(40)
@given(case=evaluate_cases())
def test_trainer_evaluate_is_the_per_sample_mean_whatever_the_batch_size(case):
    check_evaluate("cpu", case)


@props(25)
@given(case=fit_cases())
def test_trainer_fit_is_the_plain_training_loop(case):
    """``Trainer.fit`` (any batch size, a partial last batch, shuffling, clipping, a
    schedule stepped per epoch or per step, dropout, batch norm, ignored labels) gives
    the parameters, buffers and per-epoch mean losses of the loop a user writes with a
    DataLoader, bit for bit."""
    c = case
    trainer, X, y = trainer_of(c)
    hist = trainer.fit((X, y), epochs=c["epochs"], batch_size=c["batch"], shuffle=c["shuffle"], seed=7,
                       progress=False)
    model, loss_fn, opt, sched, X, y = build_fit(c)
    loader = gpunet.DataLoader(X, y, batch_size=c["batch"], shuffle=c["shuffle"], seed=7)
    for epoch in range(c["epochs"]):
        total, counted = 0.0, 0
        model.train()
        for xb, yb in loader:
            out = model(xb)
            loss = loss_fn(out, yb)
            model.zero_grad()
            model.backward(loss_fn.backward())
            if c["clip"] is not None:
                getattr(gpunet.optim, f"clip_grad_{c['clip'][0]}")(model, c["clip"][1])
            opt.step()
            if c["sched"] == "step":
                sched.step()
            k = int((yb != -1).sum())
            total += float(loss) * k
            counted += k
        if c["sched"] == "epoch":
            sched.step()
        assert hist.history["loss"][epoch] == pytest.approx(total / max(counted, 1), rel=1e-6)
    for (k, u), (_, v) in zip(sorted(model.state_dict().items()), sorted(trainer.model.state_dict().items())):
        numpy.testing.assert_array_equal(v, u, err_msg=k)


@props(30)
@given(case=stacks(), residual=st.booleans())
def test_summary_counts_and_shapes_and_changes_nothing(case, residual):
    """``summary(input_shape)`` of a random stack (optionally wrapped in a Residual, which
    needs a shape-preserving block): the total parameter count is the sum of the
    parameters' sizes, the last output shape is the forward's, and nothing (buffers,
    dropout counters, training mode) changes."""
    import io
    model = build_stack(case)
    shape = (case["c"], case["h"], case["w"])
    y = model.eval()(numpy.zeros((1,) + shape))
    model.train()
    if residual:
        if y.shape[1:] != shape:
            return
        model = gpunet.Sequential(gpunet.Residual(model), gpunet.Flatten())
    before = {k: v.copy() for k, v in model.state_dict().items()}
    out = io.StringIO()
    text = model.summary(shape, file=out)
    assert out.getvalue() == text + "\n"
    total = sum(p.data.size for p in model.parameters())
    assert f"total parameters: {total:,} " in text
    last = "(N, " + ", ".join(str(s) for s in (y.shape[1:] if not residual else (math.prod(shape),))) + ")"
    assert last in text, text
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert sorted(after) == sorted(before)
    for k in before:
        numpy.testing.assert_array_equal(after[k], before[k], err_msg=k)


@props(12)
@given(seed=seeds, extra=st.integers(0, 6), cin=st.integers(1, 3), cout=st.integers(1, 4), h=st.integers(12, 22),
       w=st.integers(12, 22), k=st.integers(1, 3), stride=st.integers(1, 2), bias=st.booleans(),
       relu=st.booleans())
def test_conv2d_chunked_gemms_match_loops(seed, extra, cin, cout, h, w, k, stride, bias, relu):
    """Batches whose ``N*OH*OW`` exceeds ``DW_CHUNK_COLUMNS`` (the weight gradient's GEMM
    and, for a thin ``C*kh*kw + 1 <= 16``, the forward's GEMM run in column chunks, a
    divisor of ``N`` of them) against the loop over output positions, through the layer
    (fused ReLU included)."""
    p = k // 2
    oh, ow = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
    n = FC.DW_CHUNK_COLUMNS // (oh * ow) + 1 + extra     # the smallest such batches, and a few more
    layer = gpunet.Conv2D(cin, cout, k, stride, p, bias=bias, activation="relu" if relu else None)
    x = normal(seed, (n, cin, h, w))
    wt, b = normal(seed + 1, layer.weight.data.shape), normal(seed + 2, (cout,))
    layer.weight.data = wt
    if bias:
        layer.bias.data = b
    y = layer(x)
    z = _conv_loops(x, wt, b if bias else None, (stride, stride), (p, p))
    numpy.testing.assert_allclose(y, numpy.maximum(z, 0) if relu else z, rtol=1e-12, atol=1e-12)
    dy = normal(seed + 3, y.shape)
    dx = layer.backward(dy)
    dz = dy * (z > 0) if relu else dy
    wdx, wdw, wdb = _conv_loops_backward(dz, x, wt, (stride, stride), (p, p))
    numpy.testing.assert_allclose(dx, wdx, rtol=1e-11, atol=1e-11)
    numpy.testing.assert_allclose(layer.weight.grad, wdw, rtol=1e-11, atol=1e-10)
    if bias:
        numpy.testing.assert_allclose(layer.bias.grad, wdb, rtol=1e-11, atol=1e-10)


@props(30)
@given(case=load_cases())
def test_a_failed_load_changes_nothing(case):
    """Loading a checkpoint of another architecture or optimizer raises ValueError naming
    the file, and leaves the model, optimizer and schedule as they were, down to the next
    training step (DESIGN §8: "a load that raises changes nothing")."""
    check_failed_load_changes_nothing("cpu", case)


@props(20)
@given(case=fit_cases(), patience=st.integers(1, 3))
def test_early_stopping_restores_the_best_epoch(case, patience):
    check_early_stopping_restores_the_best("cpu", case, patience)


# -- activations at any finite input ------------------------------------------------------

@props(60)
@given(name=st.sampled_from(sorted(ELEMENTWISE)), x=finite_arrays())
@example(name="gelu", x=numpy.array([300.0, -300.0, 1.0], numpy.float16))
@example(name="gelu_tanh", x=numpy.array([300.0, -300.0, 1.0], numpy.float16))
def test_elementwise_activations_are_finite_at_any_finite_input(name, x):
    """Every elementwise activation maps finite inputs of any float dtype, up to the
    dtype's largest values, to finite outputs, and its input gradient (of a bounded
    derivative, for dy = 1) is finite there too: nothing overflows into inf and inf·0
    into NaN on the way (GELU's backward did, in float16 from |x| = 256 on: x² = inf)."""
    check_activation_is_finite(numpy, name, x)


@props(40)
@given(x=finite_arrays(), cols=st.integers(1, 4))
def test_softmax_layers_are_finite_at_any_finite_logits(x, cols):
    """Softmax of any finite row, up to the dtype's largest values, is finite, in [0, 1]
    and sums to 1; LogSoftmax is finite wherever its true value is representable (the
    row's spread below half the dtype's maximum); both input gradients are finite."""
    n = x.size // cols
    assume(n >= 1)
    x = x[:n * cols].reshape(n, cols)
    eps = float(numpy.finfo(x.dtype).eps)
    with numpy.errstate(over="ignore", under="ignore", invalid="ignore"):
        for layer in (gpunet.Softmax(), gpunet.LogSoftmax()):
            y = layer(x)
            dx = layer.backward(numpy.ones_like(x) / cols)
            assert numpy.all(numpy.isfinite(dx)), (x, dx)
            if isinstance(layer, gpunet.LogSoftmax):
                spread = x.astype(numpy.float64).max(axis=1) - x.astype(numpy.float64).min(axis=1)
                ok = spread <= float(numpy.finfo(x.dtype).max) / 2
                assert numpy.all(numpy.isfinite(y[ok])), (x, y)
            else:
                assert numpy.all((y >= 0) & (y <= 1)), (x, y)
                numpy.testing.assert_allclose(y.astype(numpy.float64).sum(axis=1), 1.0, atol=4 * cols * eps)


# -- SyncBatchNorm ---------------------------------------------------------------------------

@props(30)
@given(case=stacks(), momentum=st.floats(0.0, 1.0), affine=st.booleans(), dtype=DTYPES)
def test_sync_batchnorm_in_a_world_of_one_is_batchnorm(case, momentum, affine, dtype):
    """SyncBatchNorm on one process (``gpunet.distributed.Communicator()``) gives
    BatchNorm's output, gradients and running statistics (its own two passes, within
    rounding), train and eval, any shape; and its state loads into a BatchNorm."""
    from gpunet import distributed as D
    c = case["c"]
    shape = (case["n"] + 1, c, case["h"], case["w"]) if case["kinds"][0] != "bn" else (case["n"] + 1, c)
    x = normal(case["seed"], shape, 3.0, dtype) + 1
    dy = normal(case["seed"] + 1, shape, 1.0, dtype)
    a = gpunet.BatchNorm(c, momentum=momentum, affine=affine).to(dtype=dtype)
    b = D.SyncBatchNorm(c, momentum=momentum, affine=affine, comm=D.Communicator()).to(dtype=dtype)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == numpy.float32 else dict(rtol=1e-10, atol=1e-10)
    numpy.testing.assert_allclose(b(x), a(x), **tol)
    numpy.testing.assert_allclose(b.backward(dy), a.backward(dy), **tol)
    for (k, u), (_, v) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items())):
        numpy.testing.assert_allclose(v, u, err_msg=k, **tol)
    if affine:
        numpy.testing.assert_allclose(b.gamma.grad, a.gamma.grad, **tol)
        numpy.testing.assert_allclose(b.beta.grad, a.beta.grad, **tol)
    a.eval(), b.eval()
    numpy.testing.assert_allclose(b(x), a(x), **tol)
    a.load_state_dict(b.state_dict())
