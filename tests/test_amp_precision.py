"""Mixed precision (DESIGN §13): the float16 policy (gpunet.amp.MixedPrecision,
Trainer(precision="fp16")) and the float16 dropout kernel."""
import numpy
import pytest

import gpunet
from gpunet import (BatchNorm, Dense, Dropout, Sequential, SoftmaxCrossEntropy, Trainer,
                    datasets, optim, to_numpy)
from gpunet.amp import GradScaler, MixedPrecision
from gpunet.functional import dropout as FD

pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                                        "ignore:invalid value encountered:RuntimeWarning")


def _mlp(device="cpu", seed=0):
    gpunet.manual_seed(seed)
    m = Sequential(Dense(64, 64, activation="relu"), BatchNorm(64), Dropout(0.1, seed=1),
                   Dense(64, 10))
    return m.to(device)


# -- the float16 dropout kernel ------------------------------------------------------------

@pytest.mark.parametrize("p", [0.1, 0.5, 0.3])
def test_half_dropout_kernel_matches_float32_reference_rounded(gpu_xp, p):
    """dropout_apply<__half>: x * keep * scale in float32 (scale rounded to float16, as
    NumPy's float16 path rounds it), rounded once to float16: exactly equal (tolerance 0).
    A view at an odd offset takes the scalar loop; inf and NaN stay non-finite."""
    r = numpy.random.default_rng(1)
    base = (r.standard_normal(4001) * 100).astype(numpy.float16)
    base[[3, 700]] = [numpy.inf, numpy.nan]
    for x in (base[:4000].reshape(40, 100), base[1:]):
        scale = numpy.float32(numpy.float16(1.0 / (1.0 - p)))
        ref = ((x.astype(numpy.float32) * FD.keep_mask(x.shape, p, 7, 3, numpy)) * scale
               ).astype(numpy.float16)
        got = to_numpy(FD.dropout_forward(gpu_xp.asarray(x), p, 7, 3))
        assert got.dtype == numpy.float16
        numpy.testing.assert_array_equal(got, ref)
        numpy.testing.assert_array_equal(FD.dropout_forward(x, p, 7, 3), ref)   # NumPy path
        dx = to_numpy(FD.dropout_backward(gpu_xp.asarray(x), p, 7, 3))
        numpy.testing.assert_array_equal(dx, ref)


# -- the policy ------------------------------------------------------------------------------

def test_policy_keeps_float32_masters_state_and_statistics(xp, device):
    m = _mlp(device)
    opt = optim.Adam(m, lr=1e-3)
    mp, scaler, loss_fn = MixedPrecision(m), GradScaler(init_scale=1024.0), SoftmaxCrossEntropy()
    r = numpy.random.default_rng(0)
    x = xp.asarray(r.random((32, 64), dtype=numpy.float32))
    y = xp.asarray(r.integers(0, 10, 32))
    out = mp.forward(x)
    assert out.dtype == numpy.float32
    assert m[0].weight.data.dtype == numpy.float16          # the copies, until backward
    assert m[1].gamma.data.dtype == numpy.float32           # batch norm stays float32
    loss = loss_fn(out, y)
    assert loss.dtype == numpy.float32
    mp.backward(scaler.scale(loss_fn.backward()))
    for p in m.parameters():
        assert p.data.dtype == numpy.float32 and p.grad.dtype == numpy.float32
    assert scaler.step(opt)
    scaler.update()
    assert all(v.dtype == numpy.float32 for st in opt.state for v in st.values())
    assert m[1].running_mean.dtype == numpy.float32 and m[1].running_var.dtype == numpy.float32
    m.eval()
    assert mp.forward(x).dtype == numpy.float32
    assert m[0].weight.data.dtype == numpy.float32          # eval: masters back at once


def test_policy_gradients_close_to_float32(xp, device):
    """The unscaled fp16 gradients of the masters against the float32 ones, relative L2
    error per parameter: below 3e-3 after the batch norm, below 3e-2 before it (float16
    activations carry 11 bits, and the batch-norm backward's mean subtractions amplify
    their rounding: measured 1.4e-2 and 1.6e-2 on layer 0, <= 1.1e-3 elsewhere, NumPy)."""
    r = numpy.random.default_rng(2)
    x = xp.asarray(r.random((32, 64), dtype=numpy.float32))
    y = xp.asarray(r.integers(0, 10, 32))
    grads = []
    for half in (False, True):
        m, loss_fn = _mlp(device), SoftmaxCrossEntropy()
        if half:
            mp, scaler = MixedPrecision(m), GradScaler(init_scale=1024.0)
            loss_fn(mp.forward(x), y)
            mp.backward(scaler.scale(loss_fn.backward()))
            scaler.unscale_(optim.SGD(m))
        else:
            loss_fn(m(x), y)
            m.backward(loss_fn.backward())
        grads.append([to_numpy(p.grad) for p in m.parameters()])
    for i, (g32, g16) in enumerate(zip(*grads)):
        err = numpy.linalg.norm(g16 - g32) / numpy.linalg.norm(g32)
        assert err < (3e-2 if i < 2 else 3e-3), (i, err)


def test_policy_accumulates_into_float32_grads():
    m = Sequential(Dense(4, 3))
    mp, loss_fn = MixedPrecision(m), SoftmaxCrossEntropy()
    x = numpy.random.default_rng(0).random((5, 4), dtype=numpy.float32)
    y = numpy.arange(5) % 3
    loss_fn(mp.forward(x), y)
    mp.backward(loss_fn.backward())
    first = m[0].weight.grad.copy()
    loss_fn(mp.forward(x), y)
    mp.backward(loss_fn.backward())
    assert m[0].weight.grad.dtype == numpy.float32
    numpy.testing.assert_allclose(m[0].weight.grad, 2 * first, rtol=1e-3)


def test_policy_rejects_non_float32_masters_and_backward_without_forward():
    m = Sequential(Dense(4, 3)).to(dtype=numpy.float64)
    with pytest.raises(ValueError, match="float32"):
        MixedPrecision(m)
    with pytest.raises(RuntimeError, match="without a training-mode forward"):
        MixedPrecision(Sequential(Dense(4, 3))).backward(numpy.zeros((2, 3), numpy.float32))
    with pytest.raises(ValueError, match="precision"):
        Trainer(Sequential(Dense(4, 3)), SoftmaxCrossEntropy(), None, precision="fp8")


def test_a_model_not_in_float32_is_refused_by_fp16_with_the_parameter_and_the_cast():
    """Found by the dtype audit: Trainer(..., precision='fp16') on a float64 model (the one
    a gradient check used) said only 'MixedPrecision: expected float32 (master) parameters,
    weight is float64', naming neither which weight nor the way out; and a float64
    BatchNorm in a float32 model passed (only Dense and Conv2D parameters were checked),
    to fail at the first forward with 'BatchNorm: expected dtype float64 (the parameters'
    dtype), got float16; cast the input (x.astype(numpy.float64)) or the model
    (model.to(dtype=numpy.float16))', about an input the user never made. Every parameter
    is checked now, by its state_dict name, and the message gives the cast."""
    cast = r"; mixed precision keeps float32 weights and computes in float16 itself: cast the model " \
           r"with model\.to\(dtype=numpy\.float32\) first$"
    for dtype in (numpy.float64, numpy.float16):
        m = Sequential(Dense(4, 3), gpunet.BatchNorm(3)).to(dtype=dtype)
        with pytest.raises(ValueError, match=rf"^MixedPrecision: expected float32 \(master\) parameters, "
                                             rf"0\.weight is {numpy.dtype(dtype).name}{cast}"):
            Trainer(m, SoftmaxCrossEntropy(), optim.SGD(m.parameters()), precision="fp16")
    m = Sequential(Dense(4, 3), gpunet.BatchNorm(3))
    m[1].to(dtype=numpy.float64)
    with pytest.raises(ValueError, match=r"1\.gamma is float64" + cast):
        Trainer(m, SoftmaxCrossEntropy(), optim.SGD(m.parameters()), precision="fp16")
    m.to(dtype=numpy.float32)
    Trainer(m, SoftmaxCrossEntropy(), optim.SGD(m.parameters()), precision="fp16")


def test_fp16_refuses_the_inputs_a_float32_model_refuses(device):
    """Found by the dtype audit: with precision='fp16' the Trainer took uint8 images (0..255)
    without a word, rounding them to float16 unscaled (fit, predict, evaluate all ran, loss
    ~150 on the data below), and int64, bool and float64 data alike, where precision='fp32'
    refuses each with the cast that fixes it, and PyTorch's autocast, which casts float32
    only, refuses them too ('mat1 and mat2 must have the same dtype, but got Byte and
    Half'). MixedPrecision.forward now takes float32 or float16 only."""
    rng = numpy.random.default_rng(0)
    X, y = (rng.random((40, 4)) * 255).astype(numpy.float32), rng.integers(0, 3, 40)
    m = Sequential(Dense(4, 8), Dense(8, 3))
    t = Trainer(m, SoftmaxCrossEntropy(), optim.SGD(m.parameters()), device=device, precision="fp16")
    for dtype, message in (
            (numpy.uint8, r"expected dtype float32 \(the parameters' dtype\), got uint8; pixels of 0\.\.255 "
                          r"become floats in \[0, 1\] with x\.astype\(numpy\.float32\) / 255$"),
            (numpy.int64, r"got int64; cast the input: x\.astype\(numpy\.float32\)$"),
            (numpy.bool_, r"got bool; cast the input: x\.astype\(numpy\.float32\)$"),
            (numpy.float64, r"expected a float32 input \(or float16\), got float64; cast the input: "
                            r"x\.astype\(numpy\.float32\)")):
        Xd = X.astype(dtype)
        for call in (lambda: t.fit((Xd, y), epochs=1, batch_size=16, progress=False),
                     lambda: t.predict(Xd), lambda: t.evaluate((Xd, y))):
            with pytest.raises(ValueError, match="^MixedPrecision: .*" + message):
                call()
    for dtype in (numpy.float32, numpy.float16):
        t.fit((X.astype(dtype) / 255, y), epochs=1, batch_size=16, progress=False)
        assert t.predict(X.astype(dtype) / 255).dtype == numpy.float32
    assert all(p.data.dtype == numpy.float32 for p in m.parameters())


def test_bfloat16_is_refused_with_the_reason():
    """No bfloat16 (NumPy has none; CuPy 14 only through the optional ml_dtypes): a clear
    ValueError naming why, from the Trainer and from MixedPrecision."""
    for bad in ("bf16", "bfloat16", "BF16"):
        with pytest.raises(ValueError, match="bfloat16 is not supported: NumPy has no bfloat16.*ml_dtypes"):
            Trainer(Sequential(Dense(4, 3)), SoftmaxCrossEntropy(), None, precision=bad)
    with pytest.raises(ValueError, match="MixedPrecision: dtype 'bfloat16': bfloat16 is not supported"):
        MixedPrecision(Sequential(Dense(4, 3)), dtype="bfloat16")


# seeds per device for the digits comparison below (the sim takes ~40 s a seed, and ran
# 87 s of CI's ~5 min suite with 2 seeds: it runs one, see the docstring)
DIGITS_SEEDS = {"cpu": 8, "cuda": 8, "sim": 1}


def test_trainer_fp16_digits_within_half_a_point_of_fp32(xp, device):
    """Digits MLP (Dense, BatchNorm, Dropout), Adam, 10 epochs, on the same device: the mean
    over seeds (initial weights and shuffling) of fp16 minus float32 test accuracy is within
    0.5 percentage points (issue 14's criterion), and every run is above 95%.

    Why a mean over seeds: the test set has 360 images, one image is 0.28 points, and two
    runs that differ only in rounding follow different trajectories and end a few images
    apart either way. On NumPy, seeds 0-15 gave fp16 - fp32 of -2 to +4 images (standard
    deviation 1.6 images, 0.45 points; mean +0.3 images); on an H200 the single seed this
    test used to run gave -2 images (0.56 points) and failed. So one pair of runs measures
    noise, not precision. The mean of 8 seeds has a standard error of about 0.16 points, so
    the 0.5-point bound is about 3 standard errors: an fp16 loss of half a point would fail
    it, trajectory noise should not (NumPy, seeds 0-7: +0.24 points). The sim runs seed 0
    only (each pair of fits costs it ~40 s): there the check is that the device's half
    kernels train, deterministically (seed 0: 354 of 360 right in both precisions; seed 1,
    when it ran too, 352 and 353); the statistical weight is NumPy's and CUDA's."""
    (Xtr, ytr), (Xte, yte) = datasets.load_digits()
    diffs = []
    for seed in range(DIGITS_SEEDS[device]):
        acc = {}
        for precision in ("fp32", "fp16"):
            m = _mlp(seed=seed)
            t = Trainer(m, SoftmaxCrossEntropy(), optim.Adam(m, lr=3e-3), device=device,
                        precision=precision)
            t.fit((Xtr, ytr), epochs=10, seed=seed, progress=False)
            acc[precision] = t.evaluate((Xte, yte))["accuracy"]
            assert m[0].weight.data.dtype == numpy.float32
            if precision == "fp16":
                assert 1.0 < t.scaler.get_scale() <= 2.0**16
        assert min(acc.values()) > 0.95, (seed, acc)
        diffs.append(acc["fp16"] - acc["fp32"])
    assert abs(numpy.mean(diffs)) <= 0.005, [round(d * len(yte)) for d in diffs]


def test_trainer_fp16_checkpoint_resume_bit_identical(tmp_path):
    (Xtr, ytr), _ = datasets.load_digits()
    Xtr, ytr = Xtr[:256], ytr[:256]

    def trainer(seed):
        m = _mlp(seed=seed)
        return Trainer(m, SoftmaxCrossEntropy(), optim.Adam(m, lr=3e-3), precision="fp16",
                       scaler=GradScaler(growth_interval=3))

    t = trainer(0)
    t.fit((Xtr, ytr), epochs=2, progress=False)
    path = gpunet.save(tmp_path / "ck.npz", t.model, t.optimizer, scaler=t.scaler, epoch=2)
    t.fit((Xtr, ytr), epochs=4, progress=False, initial_epoch=2)
    t2 = trainer(5)
    meta = gpunet.load(path, t2.model, t2.optimizer, scaler=t2.scaler)
    t2.fit((Xtr, ytr), epochs=4, progress=False, initial_epoch=meta["epoch"])
    assert t2.scaler.get_scale() == t.scaler.get_scale()
    for a, b in zip(t.model.parameters(), t2.model.parameters()):
        numpy.testing.assert_array_equal(a.data, b.data)


def test_trainer_fp16_bad_label_leaves_float32_masters():
    m = _mlp()
    t = Trainer(m, SoftmaxCrossEntropy(), optim.Adam(m), precision="fp16")
    X = numpy.random.default_rng(0).random((8, 64), dtype=numpy.float32)
    with pytest.raises(ValueError):
        t.fit((X, numpy.full(8, 12)), epochs=1, progress=False)
    assert all(p.data.dtype == numpy.float32 for p in m.parameters())


def test_trainer_fp16_clips_unscaled_gradients(xp, device):
    """With clipping, the Trainer unscales before clip_grad_norm: the norm it records is the
    float32 run's to float16 rounding (1e-2), not S times it."""
    r = numpy.random.default_rng(4)
    X, y = r.random((64, 64), dtype=numpy.float32), r.integers(0, 10, 64)
    norms = {}
    for precision in ("fp32", "fp16"):
        m = _mlp()
        t = Trainer(m, SoftmaxCrossEntropy(), optim.SGD(m, lr=0.0), device=device,
                    precision=precision, clip_grad_norm=1e9,
                    scaler=GradScaler(init_scale=1024.0) if precision == "fp16" else None)
        t.fit((X, y), epochs=1, batch_size=64, shuffle=False, progress=False)
        norms[precision] = float(t.last_grad_norm)
    assert norms["fp16"] == pytest.approx(norms["fp32"], rel=1e-2)


def test_numpy_float16_matmul_is_float32_rounded_once():
    from gpunet.functional.linear import matmul
    r = numpy.random.default_rng(5)
    a = r.standard_normal((7, 300)).astype(numpy.float16)
    b = r.standard_normal((300, 9)).astype(numpy.float16)
    got = matmul(a, b)
    assert got.dtype == numpy.float16
    numpy.testing.assert_array_equal(got, (a.astype(numpy.float32) @ b.astype(numpy.float32))
                                     .astype(numpy.float16))
    exact = a.astype(numpy.float64) @ b.astype(numpy.float64)   # within a half ulp + sum error
    assert numpy.max(numpy.abs(got - exact) / numpy.maximum(numpy.abs(exact), 1.0)) < 2e-3


# -- float16 conv and max-pool kernels (the fp16 CNN on a device) ---------------------------

def _h(a):
    return a.astype(numpy.float16)


def test_half_conv_kernels_match_float32_rounded(gpu_xp):
    """im2col/col2im/conv_bias_act/conv_act_grad on float16: float arithmetic inside, each
    output rounded once, so equal (tolerance 0) to the float32 computation rounded:
    im2col/col2im against NumPy's float32 reference, the epilogues against the float32
    kernels (equal to NumPy's bit for bit, test_conv_device)."""
    from gpunet.cuda import conv as CC
    from gpunet.functional import conv as FC
    r = numpy.random.default_rng(6)
    n, c, h, w, o, k, s, p = 3, 2, 7, 6, 4, (3, 2), (2, 1), (1, 1)
    oh, ow = (h + 2 * p[0] - k[0]) // s[0] + 1, (w + 2 * p[1] - k[1]) // s[1] + 1
    x = _h(r.standard_normal((n, c, h, w)) * 4)
    cols = to_numpy(CC.im2col_rows(gpu_xp.asarray(x), k, s, p, (oh, ow)))
    numpy.testing.assert_array_equal(cols, _h(FC.im2col_rows(x.astype(numpy.float32), k, s, p)))
    dcols = _h(r.standard_normal(cols.shape) * 4)
    dx = to_numpy(CC.col2im_rows(gpu_xp.asarray(dcols), x.shape, k, s, p, (oh, ow)))
    assert dx.dtype == numpy.float16
    numpy.testing.assert_array_equal(
        dx, _h(FC.col2im_rows(dcols.astype(numpy.float32), x.shape, k, s, p)))
    z, b = _h(r.standard_normal((o, n * oh * ow)) * 4), _h(r.standard_normal(o))
    for relu in (False, True):
        got = to_numpy(CC.conv_bias_act(gpu_xp.asarray(z), gpu_xp.asarray(b), n, (oh, ow), relu=relu))
        ref = to_numpy(CC.conv_bias_act(gpu_xp.asarray(z.astype(numpy.float32)),
                                        gpu_xp.asarray(b.astype(numpy.float32)), n, (oh, ow), relu=relu))
        numpy.testing.assert_array_equal(got, _h(ref))
    y = numpy.maximum(_h(r.standard_normal((n, o, oh, ow))), 0)
    dy = _h(r.standard_normal((n, o, oh, ow)))
    got = to_numpy(CC.conv_act_grad(gpu_xp.asarray(dy), gpu_xp.asarray(y)))
    ref = to_numpy(CC.conv_act_grad(gpu_xp.asarray(dy.astype(numpy.float32)),
                                    gpu_xp.asarray(y.astype(numpy.float32))))
    numpy.testing.assert_array_equal(got, _h(ref))


def test_half_pool_kernels_match_float32_rounded(gpu_xp):
    """max and average pooling on float16 (compares, sums and the 1/(kh*kw) products in
    float, each output rounded once) against the float32 kernels rounded (tolerance 0)."""
    from gpunet.cuda import pooling as CP
    r = numpy.random.default_rng(7)
    x = _h(r.standard_normal((2, 3, 7, 7)))
    k, s, p, out = (3, 3), (2, 2), (1, 1), (4, 4)
    y, arg = CP.max_pool2d(gpu_xp.asarray(x), k, s, p, out)
    y32, arg32 = CP.max_pool2d(gpu_xp.asarray(x.astype(numpy.float32)), k, s, p, out)
    numpy.testing.assert_array_equal(to_numpy(y), _h(to_numpy(y32)))
    numpy.testing.assert_array_equal(to_numpy(arg), to_numpy(arg32))
    dy = _h(r.standard_normal(to_numpy(y).shape))
    dx = CP.max_pool2d_backward(gpu_xp.asarray(dy), arg, x.shape, k, s, p)
    dx32 = CP.max_pool2d_backward(gpu_xp.asarray(dy.astype(numpy.float32)), arg32, x.shape, k, s, p)
    numpy.testing.assert_array_equal(to_numpy(dx), _h(to_numpy(dx32)))
    ya = CP.avg_pool2d(gpu_xp.asarray(x), k, s, p, out)
    ya32 = CP.avg_pool2d(gpu_xp.asarray(x.astype(numpy.float32)), k, s, p, out)
    numpy.testing.assert_array_equal(to_numpy(ya), _h(to_numpy(ya32)))
    da = CP.avg_pool2d_backward(gpu_xp.asarray(dy), x.shape, k, s, p)
    da32 = CP.avg_pool2d_backward(gpu_xp.asarray(dy.astype(numpy.float32)), x.shape, k, s, p)
    numpy.testing.assert_array_equal(to_numpy(da), _h(to_numpy(da32)))


def test_fp16_cnn_on_device_matches_numpy_fp16(gpu_xp, gpu_device):
    """A conv/max-pool/avg-pool/dense network under MixedPrecision on the device against the same on
    NumPy: outputs within 1e-3 and master gradients within 1e-2 (relative to the largest;
    the device sums col2im and the pooling backward in float32, NumPy in float16)."""
    from gpunet import AvgPool2D, Conv2D, Flatten, MaxPool2D
    r = numpy.random.default_rng(8)
    x, y = r.random((8, 1, 8, 8), dtype=numpy.float32), numpy.arange(8) % 10
    res = {}
    for dev in ("cpu", gpu_device):
        gpunet.manual_seed(0)
        m = Sequential(Conv2D(1, 4, 3, padding=1, activation="relu"),
                       Conv2D(4, 6, 3, padding=1, activation="relu"), MaxPool2D(2),
                       AvgPool2D(2), Flatten(), Dense(24, 10)).to(dev)
        mp, loss_fn = MixedPrecision(m), SoftmaxCrossEntropy()
        out = mp.forward(gpunet.to_device(x, dev))
        loss_fn(out, gpunet.to_device(y, dev))
        mp.backward(loss_fn.backward() * 1024.0)
        res[dev] = [to_numpy(out)] + [to_numpy(q.grad) for q in m.parameters()]
    for i, (a, b) in enumerate(zip(res["cpu"], res[gpu_device])):
        assert b.dtype == numpy.float32
        err = numpy.abs(a - b).max() / numpy.abs(a).max()
        assert err < (1e-3 if i == 0 else 1e-2), (i, err)


def test_fp16_trainer_step_costs_on_the_sim():
    """A steady fp16 Trainer step of gpunet train's MLP with Adam on the sim: no host sync
    (the loss scaler's skip decision is made by the optimizer's kernel), nothing copied to
    the device, at most 50 launches (the fp32 step's 24, plus a cast per Dense parameter
    each way, the input/output/gradient casts, the scaling, the inf/NaN reduction, the
    unscaling and the scale's update)."""
    from gpunet import sim
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    (Xtr, ytr), _ = datasets.load_digits()
    gpunet.manual_seed(0)
    m = gpunet.models.mlp((64, 256, 128, 10))
    t = Trainer(m, SoftmaxCrossEntropy(), optim.Adam(m, lr=1e-3), device="sim", precision="fp16",
                scaler=GradScaler(init_scale=1024.0))
    X, Y = gpunet.to_device(Xtr[:128], "sim"), gpunet.to_device(ytr[:128], "sim")
    for _ in range(3):
        t.train_step(X[:64], Y[:64])
    sim.reset_counters()
    t.train_step(X[64:], Y[64:])
    c = sim.counters()
    assert (c["syncs"], c["h2d_bytes"]) == (0, 0)
    assert c["launches"] <= 50, c["launches"]
    assert c["kernels"]["amp_update_scale"] == 1 and c["kernels"]["mt_adam<float>"] == 1


def test_model_checkpoint_saves_the_trainers_scaler(tmp_path):
    from gpunet.train import ModelCheckpoint
    (Xtr, ytr), _ = datasets.load_digits()
    m = _mlp()
    t = Trainer(m, SoftmaxCrossEntropy(), optim.Adam(m), precision="fp16",
                scaler=GradScaler(init_scale=2.0**20, growth_interval=5))
    path = tmp_path / "best.npz"
    t.fit((Xtr[:256], ytr[:256]), epochs=2, progress=False,
          callbacks=[ModelCheckpoint(path, monitor="loss", save_best_only=False)])
    scaler = GradScaler()
    meta = gpunet.load(path, _mlp(seed=3), scaler=scaler)
    assert meta["epoch"] == 2
    assert scaler.state_dict()["scale"] == t.scaler.get_scale() < 2.0**20   # backed off
    assert int(scaler.state_dict()["growth_interval"]) == 5


# -- float16 softmax cross-entropy and batch norm ---------------------------------------------

def _within_half_ulp(got, ref32, floor=0.0):
    """|got - ref32| <= one float16 ulp at ref32's magnitude (half of it is the rounding of
    a correctly rounded result, the rest covers float32 arithmetic in another order and a
    value near a rounding boundary) + floor (float32's rounding of the terms)."""
    got = numpy.asarray(got, dtype=numpy.float64)
    ref = numpy.asarray(ref32, dtype=numpy.float64)
    ulp = numpy.spacing(numpy.abs(ref).astype(numpy.float16)).astype(numpy.float64)
    bad = numpy.abs(got - ref) > ulp + floor
    assert not bad.any(), (numpy.argwhere(bad)[:5], got[bad][:5], ref[bad][:5])


@pytest.mark.parametrize("n,c", [(5, 10), (9, 7), (3, 300), (2, 1030), (2, 2048), (1, 1)])
def test_half_softmax_xent_matches_float32_reference(gpu_xp, n, c):
    """softmax_xent<__half> (float16 logits; row statistics, loss and targets in float32;
    dlogits rounded once to float16 after the loss scale): the loss is float32 and within
    rtol 1e-6 of NumPy's float32 computation on the same (upcast) logits; each gradient
    element within one float16 ulp of NumPy's float32 gradient, + 1e-6 of the gradient's
    scale (grad_scale / N for the mean): float32's rounding in softmax - target, which
    cancels (C = 1: exactly 0, float32 gives ~2e-8 of the scale). The warp kernels (C <= 1024)
    do the float32 kernel's arithmetic in the same order: equal to its result rounded.
    NumPy's float16 path (float32 inside) gives the float32 result rounded: equal."""
    from gpunet.functional import softmax_cross_entropy as sce
    r = numpy.random.default_rng(n * 1000 + c)
    z = _h(r.standard_normal((n, c)) * 3)
    q = r.random((n, c)).astype(numpy.float32)
    targets = [r.integers(0, c, n), q / q.sum(1, keepdims=True)]
    for labels in targets:
        for eps, red, ignore in ((0.0, "mean", None), (0.1, "sum", None), (0.0, "none", None),
                                 (0.1, "mean", -100)):
            if ignore is not None:
                if labels.ndim == 2:
                    continue
                labels = labels.copy()
                labels[::2] = ignore
            kw = dict(label_smoothing=eps, ignore_index=ignore, reduction=red, grad_scale=1024.0)
            l32, g32 = sce(z.astype(numpy.float32), labels, **kw)
            lh, gh = sce(gpu_xp.asarray(z), gpu_xp.asarray(labels), **kw)
            lh, gh = to_numpy(lh), to_numpy(gh)
            assert lh.dtype == numpy.float32 and gh.dtype == numpy.float16
            numpy.testing.assert_allclose(lh, l32, rtol=1e-6, atol=1e-6)
            _within_half_ulp(gh, g32, floor=1e-6 * 1024.0 / (n if red == "mean" else 1))
            ln, gn = sce(z, labels, **kw)                                   # NumPy float16
            assert ln.dtype == numpy.float32 and gn.dtype == numpy.float16
            numpy.testing.assert_array_equal(ln, l32)
            numpy.testing.assert_array_equal(gn, _h(g32))
            if c <= 1024:
                _, gk = sce(gpu_xp.asarray(z.astype(numpy.float32)), gpu_xp.asarray(labels), **kw)
                numpy.testing.assert_array_equal(gh, _h(to_numpy(gk)))


def test_half_softmax_xent_grad_scale_keeps_small_gradients(gpu_xp):
    """Why the loss scale goes into the kernel: a confident row's gradient entries (~1e-9)
    are flushed to zero in float16 unscaled, and survive with grad_scale=2**16 (the
    default GradScaler scale), equal to the float32 gradient times the scale, rounded.
    grad_scale <= 0 or not finite raises ValueError on NumPy and the device alike."""
    from gpunet.functional import softmax_cross_entropy as sce
    z = _h(numpy.array([[20.0, 0.0, 0.0, 0.0]] * 64))
    y = numpy.zeros(64, numpy.int64)
    for xp_ in (numpy, gpu_xp):
        _, g1 = sce(xp_.asarray(z), xp_.asarray(y))
        _, gs = sce(xp_.asarray(z), xp_.asarray(y), grad_scale=2.0**16)
        g1, gs = to_numpy(g1), to_numpy(gs)
        assert (g1[:, 1:] == 0).all()                      # 2e-9 / 64: below float16's 6e-8
        _, g32 = sce(z.astype(numpy.float32), y)
        assert (gs[:, 1:] != 0).all()
        _within_half_ulp(gs, g32 * 2.0**16, floor=1e-6 * 2.0**16 / 64)
        for bad in (0.0, -1.0, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="grad_scale"):
                sce(xp_.asarray(z), xp_.asarray(y), grad_scale=bad)


def test_half_softmax_xent_bad_label_is_still_reported(gpu_xp):
    from gpunet.cuda.softmax_xent import raise_label_error
    from gpunet.functional import softmax_cross_entropy as sce
    z = gpu_xp.asarray(_h(numpy.ones((4, 5))))
    loss, g = sce(z, gpu_xp.asarray(numpy.array([0, 1, 7, 2])))
    assert (to_numpy(g)[2] == 0).all()
    with pytest.raises(ValueError, match="7 at row 2"):
        float(loss)
    raise_label_error(z)


@pytest.mark.parametrize("shape", [(64, 3), (5, 33), (2, 3, 5, 5), (4, 3, 4, 4), (2, 2, 8, 8),
                                   (2048, 2, 3, 3), (1, 4, 3, 3)])
def test_half_batchnorm_kernels_match_float32_reference(gpu_xp, shape):
    """bn_*<__half>: float16 x, dy -> float16 y, dx with float32 statistics, gamma/beta and
    dgamma/dbeta. The float32 outputs (mean, var, inv_std, dgamma, dbeta) within rtol 3e-5
    of NumPy's float32 computation on the upcast inputs (summation order differs); y and
    dx within one float16 ulp of NumPy's float32 values + 1e-5 of their largest (x - mean
    and dx's sum of O(1) terms cancel: float32's rounding, and a mean that differs in its
    last bits, show near 0); and y, dx equal (tolerance 0) to the
    float32 kernels' results rounded: the same arithmetic per element. NumPy's float16
    path equals its float32 path rounded."""
    from gpunet.functional import batchnorm as FB
    r = numpy.random.default_rng(sum(shape))
    c = shape[1]
    x = _h(r.standard_normal(shape) * 2 + 0.5)
    dy = _h(r.standard_normal(shape))
    g, b = r.standard_normal(c).astype(numpy.float32), r.standard_normal(c).astype(numpy.float32)
    x32, dy32 = x.astype(numpy.float32), dy.astype(numpy.float32)
    y32, m32, v32, i32 = FB.batch_norm_forward(x32, g, b)
    dx32, dg32, db32 = FB.batch_norm_backward(dy32, x32, g, m32, i32)
    gx, gdy, gg, gb = (gpu_xp.asarray(a) for a in (x, dy, g, b))
    y, m, v, inv = FB.batch_norm_forward(gx, gg, gb)
    dx, dg, db = FB.batch_norm_backward(gdy, gx, gg, m, inv)
    assert to_numpy(y).dtype == to_numpy(dx).dtype == numpy.float16
    for got, ref in ((m, m32), (v, v32), (inv, i32), (dg, dg32), (db, db32)):
        got = to_numpy(got)
        assert got.dtype == numpy.float32
        numpy.testing.assert_allclose(got, ref, rtol=3e-5, atol=3e-5 * numpy.abs(ref).max())
    _within_half_ulp(to_numpy(y), y32, floor=1e-5 * numpy.abs(y32).max())
    _within_half_ulp(to_numpy(dx), dx32, floor=1e-5 * numpy.abs(dx32).max())
    yk = FB.batch_norm_forward(gpu_xp.asarray(x32), gg, gb)[0]
    dxk = FB.batch_norm_backward(gpu_xp.asarray(dy32), gpu_xp.asarray(x32), gg, m, inv)[0]
    numpy.testing.assert_array_equal(to_numpy(y), _h(to_numpy(yk)))
    numpy.testing.assert_array_equal(to_numpy(dx), _h(to_numpy(dxk)))
    yn, mn, _, invn = FB.batch_norm_forward(x, g, b)                      # NumPy float16
    dxn, dgn, _ = FB.batch_norm_backward(dy, x, g, mn, invn)
    numpy.testing.assert_array_equal(yn, _h(y32))
    numpy.testing.assert_array_equal(dxn, _h(dx32))
    assert mn.dtype == dgn.dtype == numpy.float32


def test_batchnorm_layer_keeps_half_activations_on_the_device(gpu_xp, gpu_device):
    """Under MixedPrecision the BatchNorm layer hands its float16 input to the half kernels:
    no float32 copy of the activations (on the sim: the __half kernels run, no float32 BN
    kernel); running statistics and gradients float32; eval mode float16 out."""
    from gpunet import sim
    gpunet.manual_seed(0)
    m = Sequential(Dense(16, 32), BatchNorm(32), Dense(32, 4)).to(gpu_device)
    mp, loss_fn = MixedPrecision(m), SoftmaxCrossEntropy()
    r = numpy.random.default_rng(3)
    x, y = gpu_xp.asarray(r.random((8, 16), dtype=numpy.float32)), gpu_xp.asarray(r.integers(0, 4, 8))
    if gpu_device == "sim":
        sim.reset_counters()
    loss_fn(mp.forward(x), y)
    mp.backward(loss_fn.backward())
    if gpu_device == "sim":
        k = sim.counters()["kernels"]
        assert k.get("bn_stats_partial<__half>") == 1 and k.get("bn_backward_apply<__half>") == 1, k
        assert not any(name.startswith("bn_") and name.endswith("<float>") and "finalize" not in name
                       for name in k), k
    bn = m[1]
    assert bn.running_mean.dtype == bn.running_var.dtype == numpy.float32
    assert bn.gamma.grad.dtype == numpy.float32
    assert bn.forward(gpu_xp.asarray(_h(r.random((8, 32))))).dtype == numpy.float16
    m.eval()
    assert bn.forward(gpu_xp.asarray(_h(r.random((8, 32))))).dtype == numpy.float16


@pytest.mark.parametrize("hw", [(6, 5), (30, 30)])     # per-image gather GEMMs / whole-batch rows
def test_numpy_float16_conv2d_is_float32_rounded_once(hw):
    """NumPy Conv2D on float16 (the fp16 policy on the CPU): x, weight, bias upcast, the
    float32 convolution (GEMMs in float32), each output rounded once: equal (tolerance 0)
    to the float32 computation rounded, forward (with the fused ReLU) and backward."""
    from gpunet.functional import conv as FC
    r = numpy.random.default_rng(9)
    x = _h(r.standard_normal((3, 2) + hw))
    w, b = _h(r.standard_normal((4, 2, 3, 3)) * 0.5), _h(r.standard_normal(4))
    f = [a.astype(numpy.float32) for a in (x, w, b)]
    y16, cols = FC.conv2d(x, w, b, 1, 1, return_cols=True, activation="relu")
    y32, cols32 = FC.conv2d(*f, 1, 1, return_cols=True, activation="relu")
    assert y16.dtype == numpy.float16 and cols.dtype == numpy.float32
    numpy.testing.assert_array_equal(y16, _h(y32))
    dy = _h(r.standard_normal(y16.shape))
    for c16, c32 in ((cols, cols32), (None, None)):
        got = FC.conv2d_backward(dy, x, w, 1, 1, cols=c16, y=y16, activation="relu")
        want = FC.conv2d_backward(dy.astype(numpy.float32), *f[:2], 1, 1, cols=c32,
                                  y=_h(y32).astype(numpy.float32), activation="relu")
        for g, ref in zip(got, want):
            assert g.dtype == numpy.float16
            numpy.testing.assert_array_equal(g, _h(ref))


def test_trainer_fp16_mnist1d_within_half_a_point_of_fp32(xp, device):
    """MNIST-1D-style signals (gpunet.datasets.make_mnist1d: 2,000 training and 8,000 test
    examples), an MLP 40-64-64-10 with Adam, 15 epochs: fp16 test accuracy within 0.5
    percentage points of float32 on the same device (NumPy: 0.01-0.16 points apart over
    seeds 0-5 of the model, measured), and well above chance."""
    (Xtr, ytr), (Xte, yte) = datasets.make_mnist1d(2000, 8000, seed=0)
    acc = {}
    for precision in ("fp32", "fp16"):
        gpunet.manual_seed(0)
        m = Sequential(Dense(40, 64, activation="relu"), Dense(64, 64, activation="relu"),
                       Dense(64, 10))
        t = Trainer(m, SoftmaxCrossEntropy(), optim.Adam(m, lr=3e-3), device=device,
                    precision=precision)
        t.fit((Xtr, ytr), epochs=15, batch_size=200, progress=False)
        acc[precision] = t.evaluate((Xte, yte))["accuracy"]
    assert acc["fp32"] > 0.6
    assert abs(acc["fp16"] - acc["fp32"]) <= 0.005, acc


def test_numpy_float16_pooling_is_float32_rounded_once():
    """NumPy max/average pooling on float16 compute in float32 and round once (NumPy's
    float16 loops are slow, and the device kernels sum in float too): equal (tolerance 0)
    to the float32 results rounded, the argmax equal, for plain, CNHW and CHWN memory,
    disjoint and overlapping windows (tests/test_properties.py draws the same over random
    geometries and memory orders)."""
    from pool_checks import assert_half_pooling_is_float32_rounded_once
    r = numpy.random.default_rng(10)
    base = _h(r.standard_normal((3, 4, 9, 9)))
    for x in (base, base.transpose(1, 0, 2, 3).copy().transpose(1, 0, 2, 3),    # NCHW, CNHW,
              base.transpose(1, 2, 3, 0).copy().transpose(3, 0, 1, 2)):         # CHWN memory
        for k, s, p in ((2, 2, 0), (3, 2, 1)):
            assert_half_pooling_is_float32_rounded_once(x, k, s, p, lambda sh: _h(r.standard_normal(sh)))


def test_trainer_fp16_overflowing_steps_are_skipped_without_numpy_warnings():
    # a loss scale of 2**30 overflows the float16 backward: the scaler skips those steps and
    # backs off; NumPy's overflow/invalid warnings for it are noise (PyTorch prints none)
    import warnings
    (X, y), _ = gpunet.datasets.load_digits()
    gpunet.manual_seed(0)
    model = Sequential(Dense(64, 128, activation="relu"), Dense(128, 10))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tr = Trainer(model, SoftmaxCrossEntropy(), opt, precision="fp16",
                 scaler=GradScaler(init_scale=2.0**30))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tr.fit((X[:512], y[:512]), epochs=1, batch_size=64, progress=False)
    assert tr.scaler.get_scale() < 2.0**30          # steps were skipped: it backed off
    assert all(numpy.isfinite(p.data).all() for p in model.parameters())
