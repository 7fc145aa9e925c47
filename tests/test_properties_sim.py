"""Property-based tests (hypothesis): the CPU (NumPy) path against the sim device, which
runs the real ``kernels/*.cu`` on the CPU (DESIGN §12), on random shapes and settings.

Only the claims the project makes are checked, with the strength it makes them:

* bit for bit: dropout masks forward and backward (any shape, ``p``, seed, counter,
  element offset; ``test_kernels_gpu``, ``test_amp_precision``), max/avg pooling forward,
  argmax and backward in any input layout (``kernels/pooling.cu``: "the same operations
  in the same order"; ``test_conv_device``), im2col and, outside the "same"-plane
  shortcut, col2im (``test_conv_device``), the fused optimizers (README: "the NumPy path's
  arithmetic, bit for bit on the sim"; ``test_optim_fused``), batch norm's running
  statistics given the device's batch statistics, and a constant channel's mean, zero
  variance and ``y = beta`` (``test_batchnorm``, ``test_kernels_gpu``);
* within ``test_kernels_gpu``'s tolerances: softmax cross-entropy and batch norm forward
  and backward (the kernels reduce in another order);
* float16 kernels equal to the float32 kernels rounded once (``gpunet.cuda``); the
  optimizer state moved between CPU and sim, a resumed run, a CUDA-graph fit against the
  eager fit, GradScaler's device path against its host path: bit for bit; layers in any
  memory layout, a training stack and ``Trainer.fit`` against the CPU: within tolerance;
  the bad-input rules, a refused step, a failed load, ``evaluate`` and early stopping as
  on the CPU (shared bodies in tests/prop_helpers.py).

Every test skips where the sim has no C++ compiler (and CI's ``GPUNET_REQUIRE_SIM=1`` makes
that an error in conftest).
"""
import numpy
import pytest
# hypothesis comes with the dev extra (CI installs it); a machine with only pytest (the lent
# GPU machine has no network to install it) skips these modules instead of failing to collect
pytest.importorskip("hypothesis")
from hypothesis import example, given
from hypothesis import strategies as st

import gpunet
from gpunet import backend, optim, sim, to_numpy
from gpunet.functional import batchnorm as FB
from gpunet.functional import conv as FC
from gpunet.functional import dropout as FD
from gpunet.functional import losses as FL
from gpunet.layers.base import Parameter
from pool_checks import assert_device_pooling_equals_numpy
from prop_helpers import (BAD_INPUT_LAYERS, ELEMENTWISE, PERMS, bad_step_cases, build_stack,
                          check_a_refused_step_changes_nothing, check_activation_is_finite, check_bad_input,
                          check_bad_loss_input, check_early_stopping_restores_the_best, check_evaluate,
                          check_failed_load_changes_nothing, check_resume, conv_geometry, evaluate_cases,
                          finite_arrays, fit_cases, load_cases, normal, pool_geometry, props, resume_cases,
                          run_scaler, scaler_cases, seeds, stacks, trainer_of)

# test_kernels_gpu.TOL: softmax-CE and batch norm forward; batch norm backward 10x
TOL = {numpy.float32: dict(rtol=2e-5, atol=2e-6), numpy.float64: dict(rtol=1e-12, atol=1e-13)}
DTYPES = st.sampled_from([numpy.float32, numpy.float64])


def _sim():
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    return backend.require_sim()


# -- dropout -------------------------------------------------------------------------------

@props(30)
@given(seed=st.integers(0, 2**63 - 1), counter=st.integers(0, 2**40), start=st.integers(0, 2**31),
       shape=st.lists(st.integers(1, 37), min_size=1, max_size=3).map(tuple),
       p=st.one_of(st.floats(0.0, 1.0, exclude_max=True), st.sampled_from([0.0, 2.0**-24, 1 - 2.0**-24])),
       mode=st.sampled_from(["inverted", "classic"]),
       dtype=st.sampled_from([numpy.float16, numpy.float32, numpy.float64]))
@example(seed=0, counter=0, start=0, shape=(1,), p=0.99999, mode="inverted", dtype=numpy.float16)
def test_dropout_kernels_equal_numpy_bit_for_bit(seed, counter, start, shape, p, mode, dtype):
    sp = _sim()
    x = normal(seed % 2**32, shape, 1.0, dtype)
    for f in (FD.dropout_forward, FD.dropout_backward):
        ref = f(x, p, seed, counter, mode, start)
        got = f(sp.asarray(x), p, seed, counter, mode, start)
        assert got.dtype == ref.dtype
        numpy.testing.assert_array_equal(to_numpy(got), ref)


@props(15)
@given(seed=st.integers(0, 2**63 - 1), shape=st.lists(st.integers(1, 20), min_size=1, max_size=3).map(tuple),
       p=st.floats(0.0, 0.95), mode=st.sampled_from(["inverted", "classic"]), shard=st.integers(0, 3),
       counter=st.integers(0, 2**33), dtype=DTYPES)
def test_dropout_layer_on_the_sim_draws_the_cpu_masks(seed, shape, p, mode, shard, counter, dtype):
    """The layer's device path (the counter in a device buffer, advanced by a launch) draws
    the host's masks for the same seed, counter and shard, forward after forward."""
    sp = _sim()
    cpu, dev = gpunet.Dropout(p, mode, seed=seed), gpunet.Dropout(p, mode, seed=seed)
    for layer in (cpu, dev):
        layer.counter, layer.shard = counter, shard
    dev.to("sim")
    for step in range(3):
        x = normal(step, shape, 1.0, dtype)
        y, yd = cpu(x), dev(sp.asarray(x))
        numpy.testing.assert_array_equal(to_numpy(yd), y)
        dy = normal(step + 10, shape, 1.0, dtype)
        numpy.testing.assert_array_equal(to_numpy(dev.backward(sp.asarray(dy))), cpu.backward(dy))
    assert dev.counter == cpu.counter == counter + 3


# -- pooling -------------------------------------------------------------------------------

@st.composite
def pool_cases(draw):
    h, w, k, s, p = pool_geometry(draw, max_hw=11)
    return dict(shape=(draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w), kernel=k, stride=s,
                padding=p, layout=draw(st.sampled_from(["nchw", "cnhw", "chwn"])),
                ties=draw(st.booleans()), dtype=draw(DTYPES), seed=draw(seeds))


@props(30)
@given(case=pool_cases())
def test_pooling_kernels_equal_numpy_bit_for_bit(case):
    sp = _sim()
    c = case
    shape, k, s, p = c["shape"], c["kernel"], c["stride"], c["padding"]
    order = {"nchw": (0, 1, 2, 3), "cnhw": (1, 0, 2, 3), "chwn": (1, 2, 3, 0)}[c["layout"]]
    inverse = tuple(numpy.argsort(order))
    base = normal(c["seed"], tuple(shape[i] for i in order), 1.0, c["dtype"])
    if c["ties"]:
        base = numpy.round(base)
    x, xd = base.transpose(inverse), sp.asarray(base).transpose(inverse)
    assert_device_pooling_equals_numpy(x, xd, k, s, p, lambda sh: normal(c["seed"] + 1, sh, 1.0, c["dtype"]),
                                       sp.asarray)


# -- im2col / col2im -----------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    h, w, k, s, p = conv_geometry(draw, max_hw=12)
    return dict(shape=(draw(st.integers(1, 3)), draw(st.integers(1, 3)), h, w), kernel=k, stride=s,
                padding=p, dtype=draw(DTYPES), seed=draw(seeds))


@props(30)
@given(case=conv_cases())
def test_im2col_col2im_kernels_equal_numpy(case):
    """im2col bit for bit; col2im bit for bit outside the NumPy path's "same"-plane
    shortcut (which adds the centre offset first), within the GEMM tolerance there."""
    sp = _sim()
    from gpunet.cuda import conv as CC
    c = case
    x = normal(c["seed"], c["shape"], 1.0, c["dtype"])
    k, s, p = c["kernel"], c["stride"], c["padding"]
    out_hw = FC.output_size("t", x.shape, k, s, p)
    cols_ref = FC.im2col_rows(x, k, s, p)
    numpy.testing.assert_array_equal(to_numpy(CC.im2col_rows(sp.asarray(x), k, s, p, out_hw)), cols_ref)
    dcols = normal(c["seed"] + 1, cols_ref.shape, 1.0, c["dtype"])
    dx_ref = FC.col2im_rows(dcols, x.shape, k, s, p)
    dx = to_numpy(CC.col2im_rows(sp.asarray(dcols), x.shape, k, s, p, out_hw))
    if FC._same_plane(k, s, p):
        tol = dict(rtol=2e-5, atol=2e-5) if c["dtype"] == numpy.float32 else dict(rtol=1e-12, atol=1e-12)
        numpy.testing.assert_allclose(dx, dx_ref, **tol)
    else:
        numpy.testing.assert_array_equal(dx, dx_ref)


# -- fused optimizers ----------------------------------------------------------------------

@st.composite
def optimizer_cases(draw):
    name = draw(st.sampled_from(["SGD", "Adam", "AdamW", "RMSProp", "AdaGrad"]))
    lr = draw(st.sampled_from([1e-3, 0.01, 0.1, 0.5]))
    unit = st.floats(0.0, 0.999)
    if name == "SGD":
        m = draw(st.sampled_from([0.0, 0.5, 0.9]))
        kw = dict(lr=lr, momentum=m, nesterov=m > 0 and draw(st.booleans()),
                  weight_decay=draw(st.sampled_from([0.0, 0.05])), l1=draw(st.sampled_from([0.0, 0.01])))
    elif name == "Adam":
        kw = dict(lr=lr, betas=(draw(unit), draw(unit)), eps=draw(st.sampled_from([1e-8, 1e-6])),
                  weight_decay=draw(st.sampled_from([0.0, 0.1])), l1=draw(st.sampled_from([0.0, 0.01])))
    elif name == "AdamW":
        kw = dict(lr=lr, betas=(draw(unit), draw(unit)), eps=draw(st.sampled_from([1e-8, 1e-6])),
                  weight_decay=draw(st.sampled_from([0.0, 0.1])))
    elif name == "RMSProp":
        kw = dict(lr=lr, alpha=draw(unit), eps=draw(st.sampled_from([1e-8, 1e-6])),
                  momentum=draw(st.sampled_from([0.0, 0.7])))
    else:
        kw = dict(lr=lr, eps=draw(st.sampled_from([1e-10, 1e-6])))
    sizes = draw(st.lists(st.one_of(st.integers(1, 40), st.integers(2040, 2100)), min_size=1, max_size=4))
    steps = draw(st.integers(1, 4))
    return dict(name=name, kw=kw, sizes=sizes, decay=[draw(st.booleans()) for _ in sizes],
                has_grad=[[draw(st.booleans()) for _ in sizes] for _ in range(steps)],
                new_lr=draw(st.one_of(st.none(), st.sampled_from([1e-4, 0.2]))), dtype=draw(DTYPES),
                seed=draw(seeds))


@props(30)
@given(case=optimizer_cases())
def test_fused_optimizers_equal_numpy_bit_for_bit(case):
    """Random hyper-parameters, parameter sizes around the kernel's 2048-element chunks,
    parameters skipped at some steps (their step counts fall behind), a learning rate
    changed between steps: parameters and every state buffer equal the NumPy path's."""
    sp = _sim()
    c = case
    rng = numpy.random.default_rng(c["seed"])
    w0 = [rng.standard_normal(n).astype(c["dtype"]) for n in c["sizes"]]
    host = [Parameter(w.copy(), f"p{i}", d) for i, (w, d) in enumerate(zip(w0, c["decay"]))]
    dev = [Parameter(sp.asarray(w), f"p{i}", d) for i, (w, d) in enumerate(zip(w0, c["decay"]))]
    oh, od = (getattr(optim, c["name"])(ps, **c["kw"]) for ps in (host, dev))
    for step, mask in enumerate(c["has_grad"]):
        if step == 1 and c["new_lr"] is not None:
            oh.lr = od.lr = c["new_lr"]
        for a, b, on in zip(host, dev, mask):
            g = (rng.standard_normal(a.data.shape) * 2).astype(c["dtype"]) if on else None
            a.grad, b.grad = g, None if g is None else sp.asarray(g)
        oh.step()
        od.step()
    for a, b in zip(host, dev):
        numpy.testing.assert_array_equal(to_numpy(b.data), a.data)
    assert od.steps == oh.steps
    for sh, sd in zip(oh.state, od.state):
        assert sorted(sh) == sorted(sd)
        for k in sh:
            numpy.testing.assert_array_equal(to_numpy(sd[k]), sh[k], err_msg=k)


# -- softmax cross-entropy -----------------------------------------------------------------

@props(30)
@given(seed=seeds, n=st.integers(1, 40), c=st.one_of(st.integers(1, 70), st.integers(1020, 1100)),
       variant=st.sampled_from(["labels", "ignore", "soft"]), smoothing=st.sampled_from([0.0, 0.1, 1.0]),
       reduction=st.sampled_from(["mean", "sum", "none"]), scale=st.sampled_from([1.0, 3.0, 10.0]),
       dtype=DTYPES)
def test_softmax_xent_kernel_matches_numpy(seed, n, c, variant, smoothing, reduction, scale, dtype):
    """Both kernel paths (warp per row, C <= 1024; block per row above), every variant and
    reduction, within ``test_kernels_gpu``'s tolerances."""
    sp = _sim()
    rng = numpy.random.default_rng(seed)
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    ignore = -100 if variant == "ignore" else None
    if variant == "soft":
        t = rng.random((n, c))
        labels = (t / t.sum(axis=1, keepdims=True)).astype(dtype)
    else:
        labels = rng.integers(0, c, n)
        if ignore is not None:
            labels[rng.random(n) < 0.4] = ignore
    ref = FL.softmax_cross_entropy(logits, labels, smoothing, ignore, reduction)
    got = FL.softmax_cross_entropy(sp.asarray(logits), sp.asarray(labels), smoothing, ignore, reduction)
    for r, g in zip(ref, got):
        assert g.dtype == r.dtype and g.shape == r.shape
        numpy.testing.assert_allclose(to_numpy(g), r, **TOL[dtype])


# -- batch norm ----------------------------------------------------------------------------

@props(30)
@given(seed=seeds, c=st.integers(1, 5), four=st.booleans(), n=st.integers(2, 9), h=st.integers(1, 5),
       w=st.integers(1, 5), dtype=DTYPES, eps=st.sampled_from([1e-5, 1e-3]), affine=st.booleans(),
       constant=st.integers(-1, 4), momentum=st.floats(0.0, 1.0))
def test_batchnorm_kernels_match_numpy(seed, c, four, n, h, w, dtype, eps, affine, constant, momentum):
    """Forward and backward within ``test_kernels_gpu``'s tolerances; a constant channel
    gets its value as the mean, variance 0 and ``y = beta`` exactly on the device (the
    NumPy path's plain ``x.mean`` is not exact there, docs/concepts.md: that channel is
    checked for exactness, not against NumPy); the running statistics the statistics
    kernel updates in place are the host formula, rounded as on the host, applied to the
    device's batch statistics."""
    sp = _sim()
    shape = (n, c, h, w) if four else (n, c)
    x = (normal(seed, shape) * 2 + normal(seed + 1, (1, c) + (1,) * (len(shape) - 2))).astype(dtype)
    if 0 <= constant < c:
        x[:, constant] = 0.1                       # inexact in binary: rounding would show
    gamma = numpy.random.default_rng(seed + 2).uniform(0.5, 1.5, c).astype(dtype) if affine else None
    beta = normal(seed + 3, (c,), 1.0, dtype) if affine else None
    dy = normal(seed + 4, shape, 1.0, dtype)
    dev = (lambda a: None if a is None else sp.asarray(a))
    ref = FB.batch_norm_forward(x, gamma, beta, eps)
    got = FB.batch_norm_forward(dev(x), dev(gamma), dev(beta), eps)
    const = 0 <= constant < c

    def others(a):          # the channels compared with NumPy: all but a constant one
        a = to_numpy(a)
        return numpy.delete(a, constant, axis=0 if a.ndim == 1 else 1) if const else a
    for r, g in zip(ref, got):
        numpy.testing.assert_allclose(others(g), others(r), **TOL[dtype])
    if const:
        assert to_numpy(got[1])[constant] == x.reshape(n, c, -1)[0, constant, 0]
        assert to_numpy(got[2])[constant] == 0
        numpy.testing.assert_array_equal(to_numpy(got[0])[:, constant],
                                         beta[constant] if affine else numpy.zeros_like(x[:, constant]))
    ref_b = FB.batch_norm_backward(dy, x, gamma, ref[1], ref[3])
    got_b = FB.batch_norm_backward(dev(dy), dev(x), dev(gamma), got[1], got[3])
    for r, g in zip(ref_b, got_b):
        if r is None:
            assert g is None
            continue
        numpy.testing.assert_allclose(others(g), others(r), rtol=TOL[dtype]["rtol"] * 10,
                                      atol=TOL[dtype]["atol"] * 10)
    # the running statistics: in place, the host's roundings of the device's statistics
    rm0 = normal(seed + 5, (c,), 1.0, dtype)
    rv0 = numpy.abs(normal(seed + 6, (c,), 1.0, dtype)) + 0.5
    rm, rv = sp.asarray(rm0), sp.asarray(rv0)
    FB.batch_norm_forward(dev(x), dev(gamma), dev(beta), eps, running=(rm, rv, momentum))
    mean, var = to_numpy(got[1]), to_numpy(got[2])
    m = x.size // c
    numpy.testing.assert_array_equal(to_numpy(rm), rm0 * (1.0 - momentum) + mean * momentum)
    numpy.testing.assert_array_equal(to_numpy(rv), rv0 * (1.0 - momentum) + (var * (m / (m - 1.0))) * momentum)


@props(15)
@given(seed=seeds, c=st.integers(1, 4), n=st.integers(2, 6), hw=st.integers(1, 4),
       p=st.floats(0.0, 0.9), relu=st.booleans())
def test_conv_bn_dropout_pool_stack_on_the_sim_matches_cpu(seed, c, n, hw, p, relu):
    """A float64 Conv2D-BatchNorm-ReLU-Dropout-MaxPool-AvgPool stack, one training step,
    forward and every gradient, sim against CPU (the GEMMs sum in another order: within
    test_conv_device's float64 tolerance)."""
    sp = _sim()

    def build():
        gpunet.manual_seed(seed)
        return gpunet.Sequential(gpunet.Conv2D(2, c, 3, padding=1, activation="relu" if relu else None),
                                 gpunet.BatchNorm(c), gpunet.ReLU(), gpunet.Dropout(p, seed=seed),
                                 gpunet.MaxPool2D(2, 1), gpunet.AvgPool2D(2, 1, 1))
    cpu, dev = build().to(dtype=numpy.float64), build().to(dtype=numpy.float64)
    dev.to("sim")
    x = normal(seed, (n, 2, hw + 2, hw + 3))
    y = cpu(x)
    yd = dev(sp.asarray(x))
    numpy.testing.assert_allclose(to_numpy(yd), y, rtol=1e-12, atol=1e-12)
    dy = normal(seed + 1, y.shape)
    dx = cpu.backward(dy)
    dxd = dev.backward(sp.asarray(dy))
    numpy.testing.assert_allclose(to_numpy(dxd), dx, rtol=1e-11, atol=1e-11)
    for (name, a), (_, b) in zip(cpu.named_parameters(), dev.named_parameters()):
        numpy.testing.assert_allclose(to_numpy(b.grad), a.grad, rtol=1e-11, atol=1e-11, err_msg=name)


@props(25)
@given(case=stacks(), xperm=st.sampled_from(PERMS), dperm=st.sampled_from(PERMS), step=st.integers(1, 2))
def test_layers_on_the_sim_match_the_cpu_in_any_memory_layout(case, xperm, dperm, step):
    """The device kernels read their inputs in any layout (im2col, pooling, batch norm,
    dropout, the epilogues): a random stack on the sim, fed ``x`` and ``dy`` in any memory
    order, strided or not, matches the CPU's on C-contiguous arrays (float64; the GEMMs
    and reductions sum in another order)."""
    sp = _sim()
    x = normal(case["seed"], (case["n"], case["c"], case["h"], case["w"]))
    cpu, dev = build_stack(case), build_stack(case).to("sim")
    y = cpu(x)
    yd = dev(_dev_layout(sp, x, xperm, step))
    numpy.testing.assert_allclose(to_numpy(yd), y, rtol=1e-11, atol=1e-11)
    dy = normal(case["seed"] + 1, y.shape)
    dx = cpu.backward(dy)
    dxd = dev.backward(_dev_layout(sp, dy, dperm, step))
    numpy.testing.assert_allclose(to_numpy(dxd), dx, rtol=1e-10, atol=1e-10)
    for (name, p), (_, q) in zip(cpu.named_parameters(), dev.named_parameters()):
        numpy.testing.assert_allclose(to_numpy(q.grad), p.grad, rtol=1e-10, atol=1e-10, err_msg=name)
    for (name, u), (_, v) in zip(sorted(cpu.state_dict().items()), sorted(dev.state_dict().items())):
        numpy.testing.assert_allclose(v, u, rtol=1e-11, atol=1e-11, err_msg=name)


def _dev_layout(sp, a, perm, step):
    """``a`` on the sim as an ``a.shape`` view of memory in axis order ``perm`` (strided by
    ``step``)."""
    buf = sp.asarray(numpy.ascontiguousarray(numpy.repeat(a.transpose(perm)[..., None], step, axis=-1)))
    return buf[..., 0].transpose(tuple(numpy.argsort(perm)))


# -- float16 kernels: the float32 kernels' arithmetic, each output rounded once -------------------

def _h(a):
    return a.astype(numpy.float16)


@props(25)
@given(case=conv_cases(), cout=st.integers(1, 3), pool=pool_cases(), scale=st.sampled_from([1.0, 4.0, 100.0]))
def test_half_kernels_equal_the_float32_kernels_rounded(case, cout, pool, scale):
    """im2col, col2im, the conv epilogues (bias, fused ReLU, its gradient) and max/avg
    pooling forward and backward on float16: equal (tolerance 0) to the float32 kernels'
    results rounded to float16 (``gpunet.cuda``: ``__half`` kernels compute in float and
    round each output once), any geometry."""
    sp = _sim()
    from gpunet.cuda import conv as CC
    from gpunet.cuda import pooling as CP
    c = case
    k, s, p = c["kernel"], c["stride"], c["padding"]
    x = _h(normal(c["seed"], c["shape"], scale))
    oh, ow = FC.output_size("t", x.shape, k, s, p)
    x16, x32 = sp.asarray(x), sp.asarray(x.astype(numpy.float32))
    cols = CC.im2col_rows(x16, k, s, p, (oh, ow))
    numpy.testing.assert_array_equal(to_numpy(cols), _h(to_numpy(CC.im2col_rows(x32, k, s, p, (oh, ow)))))
    dcols = _h(normal(c["seed"] + 1, cols.shape, scale))
    numpy.testing.assert_array_equal(
        to_numpy(CC.col2im_rows(sp.asarray(dcols), x.shape, k, s, p, (oh, ow))),
        _h(to_numpy(CC.col2im_rows(sp.asarray(dcols.astype(numpy.float32)), x.shape, k, s, p, (oh, ow)))))
    n = x.shape[0]
    z, b = _h(normal(c["seed"] + 2, (cout, n * oh * ow), scale)), _h(normal(c["seed"] + 3, (cout,)))
    for relu in (False, True):
        with numpy.errstate(over="ignore"):
            want = _h(to_numpy(CC.conv_bias_act(sp.asarray(z.astype(numpy.float32)),
                                                sp.asarray(b.astype(numpy.float32)), n, (oh, ow), relu=relu)))
        numpy.testing.assert_array_equal(
            to_numpy(CC.conv_bias_act(sp.asarray(z), sp.asarray(b), n, (oh, ow), relu=relu)), want)
    y = numpy.maximum(_h(normal(c["seed"] + 4, (n, cout, oh, ow))), 0)
    dy = _h(normal(c["seed"] + 5, y.shape))
    numpy.testing.assert_array_equal(
        to_numpy(CC.conv_act_grad(sp.asarray(dy), sp.asarray(y))),
        _h(to_numpy(CC.conv_act_grad(sp.asarray(dy.astype(numpy.float32)), sp.asarray(y.astype(numpy.float32))))))
    # pooling
    q = pool
    pk, ps, pp = q["kernel"], q["kernel"] if q["stride"] is None else q["stride"], q["padding"]
    px = _h(normal(q["seed"], q["shape"], scale))
    pout = FC.output_size("t", px.shape, pk, ps, pp)
    p16, p32 = sp.asarray(px), sp.asarray(px.astype(numpy.float32))
    y16, arg16 = CP.max_pool2d(p16, pk, ps, pp, pout)
    y32, arg32 = CP.max_pool2d(p32, pk, ps, pp, pout)
    numpy.testing.assert_array_equal(to_numpy(y16), _h(to_numpy(y32)))
    numpy.testing.assert_array_equal(to_numpy(arg16), to_numpy(arg32))
    pdy = _h(normal(q["seed"] + 1, to_numpy(y16).shape, scale))
    pdy16, pdy32 = sp.asarray(pdy), sp.asarray(pdy.astype(numpy.float32))
    numpy.testing.assert_array_equal(to_numpy(CP.max_pool2d_backward(pdy16, arg16, px.shape, pk, ps, pp)),
                                     _h(to_numpy(CP.max_pool2d_backward(pdy32, arg32, px.shape, pk, ps, pp))))
    numpy.testing.assert_array_equal(to_numpy(CP.avg_pool2d(p16, pk, ps, pp, pout)),
                                     _h(to_numpy(CP.avg_pool2d(p32, pk, ps, pp, pout))))
    numpy.testing.assert_array_equal(to_numpy(CP.avg_pool2d_backward(pdy16, px.shape, pk, ps, pp)),
                                     _h(to_numpy(CP.avg_pool2d_backward(pdy32, px.shape, pk, ps, pp))))


@props(25)
@given(seed=seeds, c=st.integers(1, 4), four=st.booleans(), n=st.integers(2, 7), hw=st.integers(1, 4),
       affine=st.booleans(), shift=st.sampled_from([0.0, 0.5, 100.0]))
def test_half_batchnorm_kernels_equal_the_float32_kernels_rounded(seed, c, four, n, hw, affine, shift):
    """Batch norm's ``__half`` kernels: float32 statistics and dgamma/dbeta equal to the
    float32 kernels' on the upcast input, ``y`` and ``dx`` equal to theirs rounded once."""
    sp = _sim()
    shape = (n, c, hw, hw + 1) if four else (n, c)
    x = _h(normal(seed, shape, 2.0) + shift)
    dy = _h(normal(seed + 1, shape))
    g = sp.asarray(normal(seed + 2, (c,), 1.0, numpy.float32)) if affine else None
    b = sp.asarray(normal(seed + 3, (c,), 1.0, numpy.float32)) if affine else None
    x16, x32 = sp.asarray(x), sp.asarray(x.astype(numpy.float32))
    y, m, v, inv = FB.batch_norm_forward(x16, g, b)
    dx, dg, db = FB.batch_norm_backward(sp.asarray(dy), x16, g, m, inv)
    y32, m32, v32, inv32 = FB.batch_norm_forward(x32, g, b)
    dx32, dg32, db32 = FB.batch_norm_backward(sp.asarray(dy.astype(numpy.float32)), x32, g, m32, inv32)
    for got, ref in ((m, m32), (v, v32), (inv, inv32), (dg, dg32), (db, db32)):
        assert got.dtype == numpy.float32
        numpy.testing.assert_array_equal(to_numpy(got), to_numpy(ref))
    assert y.dtype == dx.dtype == numpy.float16
    numpy.testing.assert_array_equal(to_numpy(y), _h(to_numpy(y32)))
    numpy.testing.assert_array_equal(to_numpy(dx), _h(to_numpy(dx32)))


@pytest.mark.filterwarnings("ignore:DataLoader. drop_last=True with")
@props(20)
@given(n=st.integers(1, 40), batch=st.integers(1, 12), shuffle=st.booleans(), drop_last=st.booleans(),
       seed=st.integers(0, 2**32), size=st.integers(1, 3), resident=st.booleans())
def test_dataloader_on_the_sim_yields_the_cpu_batches(n, batch, shuffle, drop_last, seed, size, resident):
    """Resident on the sim (the epoch's order, or its shuffled copy, gathered on the
    device) or staged batch by batch through pinned memory: the batches equal the CPU
    loader's, two epochs, every rank of a sharded loader."""
    _sim()
    import gpunet.data as D
    X = numpy.random.default_rng(seed).standard_normal((n, 3))
    y = numpy.arange(n)
    saved = D.SIM_FREE_BYTES
    D.SIM_FREE_BYTES = saved if resident else 0               # 0: nothing fits, batches are staged
    try:
        for r in range(size):
            comm = None if size == 1 else type("Rank", (), {"rank": r, "size": size})()
            kw = dict(batch_size=batch, shuffle=shuffle or size > 1, seed=seed, drop_last=drop_last, comm=comm)
            cpu, dev = gpunet.DataLoader(X, y, **kw), gpunet.DataLoader(X, y, device="sim", **kw)
            for _ in range(2):
                a, b = list(cpu), list(dev)
                assert len(a) == len(b) == len(cpu)
                for (xa, ya), (xb, yb) in zip(a, b):
                    numpy.testing.assert_array_equal(to_numpy(xb), xa)
                    numpy.testing.assert_array_equal(to_numpy(yb), ya)
            assert dev.resident == resident
    finally:
        D.SIM_FREE_BYTES = saved


@props(20)
@given(case=bad_step_cases())
def test_a_refused_optimizer_step_on_the_sim_changes_nothing(case):
    """The fused path: a bad gradient raises before the launch (nothing updated)."""
    check_a_refused_step_changes_nothing(_sim(), case)


@props(60)
@given(name=st.sampled_from(sorted(BAD_INPUT_LAYERS)),
       shape=st.lists(st.integers(1, 4), min_size=0, max_size=5).map(tuple),
       dtype=st.sampled_from(["float64", "float32", "float16", "int64", "bool", "complex128"]),
       param_dtype=st.sampled_from(["float32", "float64"]))
def test_bad_input_on_the_sim_raises_naming_the_layer(name, shape, dtype, param_dtype):
    """The device paths check like the NumPy path: a named ValueError/TypeError or a
    result, never an error from the array module or a kernel launcher."""
    check_bad_input(_sim(), name, shape, dtype, param_dtype, False)


@props(15)
@given(case=resume_cases())
def test_a_resumed_run_on_the_sim_continues_bit_for_bit(case):
    """Save and resume on the sim (device counters, fused optimizer state and step counts,
    running statistics updated in place): the run continues bit for bit."""
    _sim()
    check_resume("sim", case)


@props(20)
@given(case=evaluate_cases())
def test_trainer_evaluate_on_the_sim_is_the_per_sample_mean(case):
    """The device records (losses and hits summed on the device, read once) give the
    CPU's numbers."""
    _sim()
    check_evaluate("sim", case)


@props(20)
@given(case=fit_cases())
def test_fit_with_a_cuda_graph_equals_eager_fit_on_the_sim(case):
    """``Trainer(..., cuda_graph=True)`` on the sim (the first full batch eager, the second
    captured, then replays; the partial last batch eager; a schedule's lr written before
    each replay; dropout's device counter; batch norm's in-place running statistics):
    the History and every parameter, buffer and optimizer state equal the eager run's,
    bit for bit ("the same results as the eager step", gpunet.train.Trainer)."""
    _sim()
    c = case
    runs = []
    for graph in (False, True):
        t, X, y = trainer_of(c, "sim", cuda_graph=graph)
        h = t.fit((X, y), epochs=c["epochs"], batch_size=c["batch"], shuffle=c["shuffle"], seed=7, progress=False)
        runs.append((h.history, t.model.state_dict(), t.optimizer.state_dict()))
    (ha, ma, oa), (hb, mb, ob) = runs
    assert ha == hb
    for a, b in ((ma, mb), (oa, ob)):
        assert sorted(a) == sorted(b)
        for k in a:
            numpy.testing.assert_array_equal(to_numpy(b[k]), to_numpy(a[k]), err_msg=k)


@props(20)
@given(case=scaler_cases())
def test_grad_scaler_on_the_sim_matches_the_cpu(case):
    """The device path of GradScaler (scale, tracker and found-inf flag in device buffers,
    the skip decided by the optimizer kernel, ``amp_update_scale``) gives the host path's
    scales and parameters, bit for bit."""
    sp = _sim()
    (dev_scales, dev_w), (scales, w) = run_scaler(case, sp), run_scaler(case)
    assert dev_scales == scales
    numpy.testing.assert_array_equal(dev_w, w)


@props(15)
@given(case=load_cases())
def test_a_failed_load_on_the_sim_changes_nothing(case):
    """The same on the sim, where the optimizer's step counts and tables live on the
    device and the rollback replaces arrays the fused kernel reads."""
    _sim()
    check_failed_load_changes_nothing("sim", case)


@props(25)
@given(case=optimizer_cases(), split=st.integers(0, 4), first=st.sampled_from(["cpu", "sim"]))
def test_optimizer_state_moves_between_cpu_and_sim_bit_for_bit(case, split, first):
    """Steps on one device, ``state_dict`` → ``load_state_dict`` of a new optimizer over the
    parameters moved to the other device, then more steps there: the parameters, state
    and per-parameter step counts equal those of a run that never moved (the fused kernels
    repeat the NumPy arithmetic bit for bit on the sim)."""
    sp = _sim()
    c = case
    steps = c["has_grad"] + c["has_grad"][:2]
    split = min(split, len(steps))
    rng = numpy.random.default_rng(c["seed"])
    w0 = [rng.standard_normal(n).astype(c["dtype"]) for n in c["sizes"]]
    grads = [[(rng.standard_normal(n) * 2).astype(c["dtype"]) if on else None for n, on in zip(c["sizes"], mask)]
             for mask in steps]
    on = {"cpu": numpy.asarray, "sim": sp.asarray}

    def run(devices):
        params = [Parameter(on[devices[0]](w.copy()), f"p{i}", d) for i, (w, d) in enumerate(zip(w0, c["decay"]))]
        opt = getattr(optim, c["name"])(params, **c["kw"])
        for k, gs in enumerate(grads):
            if k == split and devices[1] != devices[0]:
                state = opt.state_dict()
                params = [Parameter(on[devices[1]](to_numpy(p.data)), p.name, p.decay) for p in params]
                opt = getattr(optim, c["name"])(params, **c["kw"])
                opt.load_state_dict(state)
            for p, g in zip(params, gs):
                p.grad = None if g is None else on[devices[1] if k >= split else devices[0]](g)
            opt.step()
        return [to_numpy(p.data) for p in params], opt.steps, {k: to_numpy(v) for k, v in opt.state_dict().items()}

    other = "sim" if first == "cpu" else "cpu"
    (wa, na, sa), (wb, nb, sb) = run(("cpu", "cpu")), run((first, other))
    assert na == nb
    for a, b in zip(wa, wb):
        numpy.testing.assert_array_equal(b, a)
    assert sorted(sa) == sorted(sb)
    for k in sa:
        numpy.testing.assert_array_equal(sb[k], sa[k], err_msg=k)


@props(12)
@given(case=fit_cases(), patience=st.integers(1, 3))
def test_early_stopping_on_the_sim_restores_the_best_epoch(case, patience):
    _sim()
    check_early_stopping_restores_the_best("sim", case, patience)


@pytest.mark.filterwarnings("ignore:SoftmaxCrossEntropy. the logits have 1 column")
@props(60)
@given(loss=st.sampled_from(["SoftmaxCrossEntropy", "BCEWithLogits", "MSELoss"]),
       zshape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
       zdtype=st.sampled_from(["float64", "float32", "int64", "bool", "complex128"]),
       tshape=st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple),
       tdtype=st.sampled_from(["float64", "float32", "int64", "bool", "complex128"]),
       reduction=st.sampled_from(["mean", "sum", "none"]))
def test_bad_loss_input_on_the_sim_raises_naming_the_loss(loss, zshape, zdtype, tshape, tdtype, reduction):
    """The losses on device arrays check like on NumPy; the softmax-CE kernel's label
    check raises, naming the loss, when the loss is read."""
    check_bad_loss_input(_sim(), loss, zshape, zdtype, tshape, tdtype, False, reduction)


@props(30)
@given(name=st.sampled_from(sorted(ELEMENTWISE)), x=finite_arrays())
@example(name="gelu", x=numpy.array([300.0, -300.0, 1.0], numpy.float16))
@example(name="gelu_tanh", x=numpy.array([300.0, -300.0, 1.0], numpy.float16))
def test_elementwise_activations_on_the_sim_are_finite_at_any_finite_input(name, x):
    check_activation_is_finite(_sim(), name, x)


@props(15)
@given(case=fit_cases())
def test_fit_on_the_sim_matches_the_cpu(case):
    """The same ``Trainer.fit`` on the CPU and on the sim (float32; any batch size, partial
    last batch, shuffling, clipping, schedules, dropout, batch norm, ignored labels): the
    History and the final weights agree within test_parity's float32 tolerance (the
    kernels sum in another order), the dropout counters exactly; then ``predict`` agrees.
    SGD only, as in test_parity: Adam and RMSProp divide by the gradient's own size, so a
    gradient at rounding level (batch norm over two samples) makes a full-size step of its
    rounding noise, which no tolerance bounds."""
    _sim()
    c = dict(case, opt="SGD")
    runs = []
    for device in ("cpu", "sim"):
        t, X, y = trainer_of(c, device)
        h = t.fit((X, y), epochs=c["epochs"], batch_size=c["batch"], shuffle=c["shuffle"], seed=7, progress=False)
        runs.append((h.history, t.model.state_dict(), t.predict(X, batch_size=c["batch"] + 1)))
    (ha, ma, pa), (hb, mb, pb) = runs
    assert sorted(ha) == sorted(hb)
    for k in ha:
        numpy.testing.assert_allclose(hb[k], ha[k], rtol=1e-4, atol=1e-6, err_msg=k)
    for k in ma:
        if k.endswith("counter") or k.endswith("seed"):
            assert int(mb[k]) == int(ma[k]), k
        else:
            numpy.testing.assert_allclose(mb[k], ma[k], rtol=1e-3, atol=1e-4, err_msg=k)
    numpy.testing.assert_allclose(pb, pa, rtol=1e-3, atol=1e-4)
