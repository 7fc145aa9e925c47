"""Shared pieces of the property-based tests (tests/test_properties*.py, hypothesis).

``props(n)`` is the one ``@settings`` every property uses: ``n`` examples, no deadline (the
first call of a sim kernel compiles it), ``derandomize=True`` so that CI draws the same
examples on every run and a failure reproduces (``GPUNET_PROPS_SCALE=k`` multiplies every
property's example count by ``k`` for a longer local search; CI leaves it unset). Data are
drawn from a NumPy generator seeded by hypothesis (``seeds``): the shapes and hyper-parameters are what hypothesis
explores and shrinks; the values only need to be generic (no ties, never all zeros).
"""
import math
import os
import warnings

import numpy
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st

import gpunet

seeds = st.integers(0, 2**32 - 1)


def props(n, slow_data=False):
    """``@settings`` of a property with ``n`` examples. ``slow_data``: the property draws
    from ``st.data()`` inside the test, which hypothesis reports as ``too_slow`` on a
    loaded 2-core machine although each draw is small; that check (only) is suppressed."""
    suppress = [HealthCheck.too_slow] if slow_data else []
    n *= int(os.environ.get("GPUNET_PROPS_SCALE", "1"))
    return settings(max_examples=n, deadline=None, derandomize=True, suppress_health_check=suppress,
                    print_blob=True)


def normal(seed, shape, scale=1.0, dtype=numpy.float64):
    """Standard-normal values times ``scale``, from a generator seeded by ``seed``."""
    return (numpy.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def conv_geometry(draw, max_hw=10):
    """``(H, W, kernel, stride, padding)`` pairs with at least one output position; the
    image sizes straddle ``gpunet.functional.conv``'s small-image (gather-matrix) and
    whole-batch-rows paths (``H*W`` at most / above 48 and 64)."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), max_hw))
    w = draw(st.integers(max(1, kw - 2 * pw), max_hw))
    return h, w, (kh, kw), (sh, sw), (ph, pw)


def pool_geometry(draw, max_hw=9):
    """``(H, W, kernel, stride or None, padding)`` that the pooling layers accept: padding
    at most half the kernel, at least one output position."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), max_hw))
    w = draw(st.integers(max(1, kw - 2 * pw), max_hw))
    return h, w, (kh, kw), stride, (ph, pw)


PERMS = [(0, 1, 2, 3), (1, 2, 3, 0), (1, 0, 2, 3), (3, 2, 1, 0), (0, 2, 3, 1), (2, 3, 0, 1)]


def in_layout(a, perm, step=1):
    """``a``'s values as an ``a.shape`` view of C-contiguous memory in axis order ``perm``
    (every 2nd element of a buffer twice as long when ``step`` is 2)."""
    buf = numpy.empty(tuple(a.shape[i] for i in perm) + (step,), a.dtype)[..., 0]
    view = buf.transpose(tuple(numpy.argsort(perm)))
    view[...] = a
    return view


@st.composite
def stacks(draw):
    """A small float64 CNN of random layers (channels c -> ...), and its input shape."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(4, 9)), draw(st.integers(4, 9))
    seed = draw(seeds)
    drawn = draw(st.lists(st.sampled_from(["conv3", "conv1", "conv_s2", "conv_relu", "bn", "relu", "tanh",
                                           "max", "avg", "dropout"]), min_size=1, max_size=4))
    kinds, oh, ow = [], h, w
    for k in drawn:             # the layers the image is still large enough for
        if k == "max":          # 2x2, stride 1
            if oh < 2 or ow < 2:
                continue
            oh, ow = oh - 1, ow - 1
        elif k == "conv_s2":    # (2, 3) kernel, stride 2, padding 1
            oh, ow = oh // 2 + 1, (ow - 1) // 2 + 1
        kinds.append(k)
    return dict(n=n, c=c, h=h, w=w, kinds=kinds or ["relu"], seed=seed)


def build_stack(case):
    gpunet.manual_seed(case["seed"] % 2**32)
    c, layers = case["c"], []
    for k in case["kinds"]:
        if k.startswith("conv"):
            out = c + 1
            layers.append({"conv3": lambda: gpunet.Conv2D(c, out, 3, padding=1),
                           "conv1": lambda: gpunet.Conv2D(c, out, 1),
                           "conv_s2": lambda: gpunet.Conv2D(c, out, (2, 3), stride=2, padding=(1, 1)),
                           "conv_relu": lambda: gpunet.Conv2D(c, out, 3, padding=1, activation="relu")}[k]())
            c = out
        else:
            layers.append({"bn": lambda: gpunet.BatchNorm(c), "relu": gpunet.ReLU, "tanh": gpunet.Tanh,
                           "max": lambda: gpunet.MaxPool2D(2, 1), "avg": lambda: gpunet.AvgPool2D(3, 1, 1),
                           "dropout": lambda: gpunet.Dropout(0.3, seed=case["seed"])}[k]())
    return gpunet.Sequential(*layers).to(dtype=numpy.float64)


@st.composite
def bad_step_cases(draw):
    """An optimizer, a few parameters with a gradient, one of which (``bad``) is of the
    wrong shape or dtype, and how many good steps come first."""
    name = draw(st.sampled_from(["SGD", "Adam", "AdamW", "RMSProp", "AdaGrad"]))
    kw = {"SGD": dict(lr=0.1, momentum=0.9, weight_decay=0.01), "Adam": dict(lr=0.01, l1=0.01),
          "AdamW": dict(lr=0.01), "RMSProp": dict(lr=0.01, momentum=0.5), "AdaGrad": dict(lr=0.1)}[name]
    k = draw(st.integers(2, 4))
    return dict(name=name, kw=kw, sizes=[draw(st.integers(1, 5)) for _ in range(k)], bad=draw(st.integers(0, k - 1)),
                how=draw(st.sampled_from(["shape", "dtype"])), warm=draw(st.integers(0, 2)),
                dtype=draw(st.sampled_from([numpy.float32, numpy.float64])), seed=draw(seeds))


def check_a_refused_step_changes_nothing(xp, case):
    """Run ``case`` (``bad_step_cases``) on array module ``xp``: the step with the bad
    gradient raises ValueError naming the optimizer and the parameter, and leaves every
    parameter, state buffer and step count as it was (nothing half-applied)."""
    import pytest
    from gpunet import optim, to_numpy
    from gpunet.layers.base import Parameter
    c = case
    rng = numpy.random.default_rng(c["seed"])
    params = [Parameter(xp.asarray(rng.standard_normal(n).astype(c["dtype"])), f"p{i}", True)
              for i, n in enumerate(c["sizes"])]
    opt = getattr(optim, c["name"])(params, **c["kw"])

    def set_grads(bad):
        for i, p in enumerate(params):
            g = rng.standard_normal(p.data.shape).astype(c["dtype"])
            if bad and i == c["bad"]:
                g = numpy.zeros(g.size + 1, g.dtype) if c["how"] == "shape" else \
                    g.astype(numpy.float64 if c["dtype"] == numpy.float32 else numpy.float32)
            p.grad = xp.asarray(g)
    for _ in range(c["warm"]):
        set_grads(False)
        opt.step()
    before = ([to_numpy(p.data).copy() for p in params], list(opt.steps),
              [{k: to_numpy(v).copy() for k, v in state.items()} for state in opt.state])
    set_grads(True)
    with pytest.raises(ValueError, match=rf"^{c['name']}: params\[{c['bad']}\] \(p{c['bad']}\)"):
        opt.step()
    for p, d in zip(params, before[0]):
        numpy.testing.assert_array_equal(to_numpy(p.data), d)
    assert list(opt.steps) == before[1]
    for state, old in zip(opt.state, before[2]):
        assert sorted(state) == sorted(old)
        for k in state:
            numpy.testing.assert_array_equal(to_numpy(state[k]), old[k])


def _accepts(layer, shape, dtype, param_dtype):
    """Whether DESIGN §4 and the layer's docstring accept an input of ``shape``/``dtype``."""
    if dtype.kind != "f" or len(shape) == 0:
        return False
    if isinstance(layer, gpunet.Dense):
        return len(shape) == 2 and shape[1] == layer.in_features and dtype == param_dtype
    if isinstance(layer, gpunet.Conv2D):
        return (len(shape) == 4 and shape[1] == layer.in_channels and dtype == param_dtype
                and shape[2] + 2 * layer.padding[0] >= layer.kernel_size[0]
                and shape[3] + 2 * layer.padding[1] >= layer.kernel_size[1])
    if isinstance(layer, (gpunet.MaxPool2D, gpunet.AvgPool2D)):
        return (len(shape) == 4 and shape[2] + 2 * layer.padding[0] >= layer.kernel_size[0]
                and shape[3] + 2 * layer.padding[1] >= layer.kernel_size[1])
    if isinstance(layer, gpunet.GlobalAvgPool2D):
        return len(shape) == 4
    if isinstance(layer, gpunet.BatchNorm):
        # float16 input with float32 parameters: the mixed-precision exception
        mixed = dtype == numpy.float16 and param_dtype == numpy.float32
        return (len(shape) in (2, 4) and shape[1] == layer.num_features and (dtype == param_dtype or mixed)
                and math.prod(shape) // layer.num_features >= 2)
    if isinstance(layer, gpunet.Maxout):
        return len(shape) >= 2 and shape[1] % layer.pieces == 0
    if isinstance(layer, gpunet.Softmax):
        return -len(shape) <= layer.axis < len(shape)
    return True                                       # elementwise layers, Flatten: any rank >= 1


BAD_INPUT_LAYERS = {
    "Dense": lambda: gpunet.Dense(3, 2),
    "Conv2D": lambda: gpunet.Conv2D(2, 3, (2, 3), stride=2, padding=(0, 1)),
    "MaxPool2D": lambda: gpunet.MaxPool2D(3, 1, 1),
    "AvgPool2D": lambda: gpunet.AvgPool2D((2, 3), None, (1, 0)),
    "GlobalAvgPool2D": gpunet.GlobalAvgPool2D,
    "BatchNorm": lambda: gpunet.BatchNorm(2),
    "Maxout": lambda: gpunet.Maxout(2),
    "Dropout": lambda: gpunet.Dropout(0.3, seed=1),
    "ReLU": gpunet.ReLU,
    "Softmax": lambda: gpunet.Softmax(axis=1),
    "Flatten": gpunet.Flatten,
}


def check_bad_input(xp, name, shape, dtype, param_dtype, as_list):
    """Layer ``name`` of ``BAD_INPUT_LAYERS`` (parameters of ``param_dtype``) on the device
    of ``xp``, given an input of ``shape``/``dtype`` (a nested list when ``as_list``): a
    result when the layer accepts it (then a backward with a ``dy`` of the wrong shape or
    dtype raises naming ``<Layer>.backward``), else ValueError/TypeError whose message
    starts with the layer's name (TypeError for a list)."""
    import pytest
    from gpunet.backend import device_of
    layer = BAD_INPUT_LAYERS[name]()
    layer.to(dtype=param_dtype)
    dtype, param_dtype = numpy.dtype(dtype), numpy.dtype(param_dtype)
    x = (numpy.arange(math.prod(shape)).reshape(shape) % 5).astype(dtype)
    valid = not as_list and _accepts(layer, shape, dtype, param_dtype)
    if xp is not numpy:
        layer.to(device_of(xp.empty(0)))
    arg = x.tolist() if as_list else xp.asarray(x)
    if valid:
        y = layer(arg)
        assert y.dtype == dtype
    else:
        with pytest.raises((ValueError, TypeError)) as info:
            layer(arg)
        assert str(info.value).startswith(f"{name}:"), str(info.value)
        if as_list:
            assert info.type is TypeError
        return
    for bad in (numpy.zeros(y.shape + (1,), y.dtype), numpy.zeros(y.shape, numpy.int64),
                numpy.zeros(y.shape, numpy.float32 if y.dtype == numpy.float64 else numpy.float64)):
        with pytest.raises((ValueError, TypeError)) as info:
            layer.backward(xp.asarray(bad))
        assert str(info.value).startswith(f"{name}.backward:"), str(info.value)


# an optimizer of each kind with all its state buffers in use
OPT_KW = {"SGD": dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), "Adam": dict(lr=1e-3, l1=1e-4),
          "AdamW": dict(lr=1e-3), "RMSProp": dict(lr=1e-3, momentum=0.5), "AdaGrad": dict(lr=0.05)}


@st.composite
def resume_cases(draw):
    case = draw(stacks())
    opt = draw(st.sampled_from(sorted(OPT_KW)))
    kw = OPT_KW[opt]
    case["kinds"] = ["conv3"] + case["kinds"]          # at least one parameter
    return dict(case, opt=opt, kw=kw, before=draw(st.integers(1, 3)), after=draw(st.integers(1, 3)),
                sched=draw(st.booleans()), dtype=draw(st.sampled_from([numpy.float32, numpy.float64])))


def _train_steps(device, model, opt, sched, case, first, count):
    """``count`` steps of the mean squared output on batches ``first, first+1, ...``."""
    losses = []
    for k in range(first, first + count):
        x = gpunet.to_device(normal(case["seed"] + 100 + k, (case["n"], case["c"], case["h"], case["w"]), 1.0,
                                    case["dtype"]), device)
        y = model(x)
        losses.append(float((y * y).mean()))
        model.zero_grad()
        model.backward(y * (2.0 / y.size))
        opt.step()
        if sched is not None:
            sched.step()
    return losses


def check_resume(device, case):
    """Train ``case`` (``resume_cases``) on ``device`` a few steps, save, load into a model
    and optimizer built from another seed, continue both: the same losses, parameters,
    buffers, dropout counters and optimizer state, bit for bit."""
    import os
    import tempfile

    def build(seed_shift):
        m, o = _resume_parts(dict(case, seed=case["seed"] + seed_shift), device)
        s = gpunet.optim.StepLR(o, step_size=2, gamma=0.5) if case["sched"] else None
        return m, o, s
    m1, o1, s1 = build(0)
    _train_steps(device, m1, o1, s1, case, 0, case["before"])
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ck.npz")
        gpunet.save(path, m1, o1, scheduler=s1, step=case["before"])
        m2, o2, s2 = build(1)
        assert gpunet.load(path, m2, o2, scheduler=s2)["step"] == case["before"]
    a = _train_steps(device, m1, o1, s1, case, case["before"], case["after"])
    b = _train_steps(device, m2, o2, s2, case, case["before"], case["after"])
    assert numpy.all(numpy.isfinite(a))
    numpy.testing.assert_array_equal(b, a)
    for (k, u), (_, v) in zip(sorted(m1.state_dict().items()), sorted(m2.state_dict().items())):
        numpy.testing.assert_array_equal(gpunet.to_numpy(v), gpunet.to_numpy(u), err_msg=k)
    sa, sb = o1.state_dict(), o2.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        numpy.testing.assert_array_equal(gpunet.to_numpy(sb[k]), gpunet.to_numpy(sa[k]), err_msg=k)


@st.composite
def evaluate_cases(draw):
    """Data, a loss and a batch size for ``Trainer.evaluate``."""
    kind = draw(st.sampled_from(["labels", "soft", "bce", "mse"]))
    # softmax-CE over one class is degenerate (and one output column means binary accuracy,
    # where ignore_index does not apply): two classes at least
    c = 1 if kind == "bce" else draw(st.integers(1 if kind == "mse" else 2, 5))
    return dict(kind=kind, n=draw(st.integers(1, 30)), c=c, batch=draw(st.integers(1, 12)),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                smoothing=draw(st.sampled_from([0.0, 0.2])) if kind in ("labels", "soft") else 0.0,
                ignore=draw(st.sampled_from([None, -1, 0])) if kind == "labels" else None,
                ignored=draw(st.floats(0.0, 1.0)), seed=draw(seeds))


def check_evaluate(device, case):
    """``Trainer.evaluate`` over ``case`` (``evaluate_cases``) on ``device``: the loss is
    the per-sample mean over the samples not ignored, whatever the batch size (one loss
    call over the whole data for ``reduction="mean"``, the sum over them divided by their
    count otherwise); the accuracy counts argmax hits (binary for one output column: a
    logit above 0 for BCE, an output above 0.5 otherwise) over the same samples."""
    import pytest
    c = case
    rng = numpy.random.default_rng(c["seed"])
    X = rng.standard_normal((c["n"], 4))
    gpunet.manual_seed(c["seed"] % 2**32)
    model = gpunet.Dense(4, c["c"]).to(dtype=numpy.float64)
    if c["kind"] == "labels":
        y = rng.integers(0, c["c"], c["n"])
        if c["ignore"] is not None:
            y[rng.random(c["n"]) < c["ignored"]] = c["ignore"]
        loss = gpunet.SoftmaxCrossEntropy(c["smoothing"], c["ignore"], c["reduction"])
    elif c["kind"] == "soft":
        t = rng.random((c["n"], c["c"]))
        y = t / t.sum(axis=1, keepdims=True)
        loss = gpunet.SoftmaxCrossEntropy(c["smoothing"], None, c["reduction"])
    elif c["kind"] == "bce":
        y = rng.integers(0, 2, (c["n"], 1)).astype(numpy.float64)
        loss = gpunet.BCEWithLogits(reduction=c["reduction"])
    else:
        y = rng.standard_normal((c["n"], c["c"]))
        loss = gpunet.MSELoss(reduction=c["reduction"])
    out = model(X)
    keep = numpy.ones(c["n"], bool) if c["ignore"] is None else y != c["ignore"]
    counted = int(keep.sum())
    ref = type(loss)(**{k: getattr(loss, k) for k in ("label_smoothing", "ignore_index") if hasattr(loss, k)},
                     reduction="sum")
    if c["kind"] == "mse" and c["reduction"] == "mean":
        want = float(((out - y) ** 2).mean(axis=1).sum()) / counted     # the mean of per-sample means
    else:
        want = float(ref(out, y)) / max(counted, 1)
    if c["c"] == 1:
        hits = (out[:, 0] > (0.0 if c["kind"] == "bce" else 0.5)) == (
            (y if y.ndim == 1 else y[:, 0]) > 0.5)
    else:
        hits = out.argmax(axis=1) == (y if y.ndim == 1 else y.argmax(axis=1))
    acc = float((hits & keep).sum()) / max(counted, 1)
    trainer = gpunet.Trainer(model, loss, gpunet.optim.SGD(model, lr=0.1), device=device)
    with warnings.catch_warnings():     # the accuracy of a regression is scored all the same
        warnings.filterwarnings("ignore", "Trainer.evaluate: the accuracy metric", RuntimeWarning)
        logs = trainer.evaluate((X, y), batch_size=c["batch"])
    assert logs["loss"] == pytest.approx(want, rel=1e-12, abs=1e-12), (logs, want)
    assert logs["accuracy"] == acc, (logs, acc)


@st.composite
def fit_cases(draw):
    """A small classifier, data and the Trainer's options (``build_fit``, ``trainer_of``)."""
    c = dict(n=draw(st.integers(2, 40)), batch=draw(st.integers(2, 16)), epochs=draw(st.integers(1, 3)),
             shuffle=draw(st.booleans()), opt=draw(st.sampled_from(["SGD", "Adam", "RMSProp"])),
             clip=draw(st.sampled_from([None, ("norm", 0.5), ("value", 0.05)])),
             sched=draw(st.sampled_from([None, "epoch", "step"])), dropout=draw(st.booleans()),
             bn=draw(st.booleans()), ignore=draw(st.booleans()), seed=draw(seeds))
    if c["bn"] and c["n"] % c["batch"] == 1:
        c["n"] += 1             # batch norm refuses a last batch of one sample (by design)
    return c


def build_fit(case, device="cpu"):
    """``(model, loss, optimizer, scheduler, X, y)`` of a ``fit_cases`` case."""
    c = case
    gpunet.manual_seed(c["seed"] % 2**32)
    layers = [gpunet.Dense(5, 8, activation="relu")]
    if c["bn"]:
        layers.append(gpunet.BatchNorm(8))
    if c["dropout"]:
        layers.append(gpunet.Dropout(0.3))
    model = gpunet.Sequential(*layers, gpunet.Dense(8, 3)).to(device)
    kw = {"SGD": dict(lr=0.1, momentum=0.9), "Adam": dict(lr=0.01), "RMSProp": dict(lr=0.01)}[c["opt"]]
    opt = getattr(gpunet.optim, c["opt"])(model, **kw)
    sched = None if c["sched"] is None else gpunet.optim.StepLR(opt, step_size=2, gamma=0.5)
    loss = gpunet.SoftmaxCrossEntropy(ignore_index=-1 if c["ignore"] else None)
    rng = numpy.random.default_rng(c["seed"])
    X = rng.standard_normal((c["n"], 5)).astype(numpy.float32)
    y = rng.integers(-1 if c["ignore"] else 0, 3, c["n"])
    return model, loss, opt, sched, X, y


def trainer_of(case, device="cpu", **kw):
    """A Trainer of ``build_fit(case)`` with the case's clipping and schedule."""
    c = case
    model, loss, opt, sched, X, y = build_fit(case, device)
    clip = {} if c["clip"] is None else {f"clip_grad_{c['clip'][0]}": c["clip"][1]}
    t = gpunet.Trainer(model, loss, opt, device=device, scheduler=sched,
                       scheduler_interval=c["sched"] or "epoch", **clip, **kw)
    return t, X, y


@st.composite
def scaler_cases(draw):
    """GradScaler settings and a sequence of iterations, some with an inf or NaN gradient."""
    k = draw(st.integers(1, 14))
    return dict(init=draw(st.sampled_from([1.0, 2.0**16, 3.0, 2.0**126])),
                growth=draw(st.sampled_from([2.0, 1.5, 3.0])), backoff=draw(st.sampled_from([0.5, 0.25, 0.9])),
                interval=draw(st.integers(1, 3)), bad=[draw(st.sampled_from([None, None, "inf", "nan"]))
                                                         for _ in range(k)],
                seed=draw(seeds))


def scaled_gradients(case, rng, get_scale):
    """The float32 gradient of each iteration of ``case``: a raw one times the loss scaler's
    scale at that iteration (``get_scale()``), with an inf or NaN where ``case["bad"]`` says."""
    for bad in case["bad"]:
        with numpy.errstate(over="ignore"):          # a scale near float32's top: inf, as in fp16
            g = (rng.standard_normal(4) * numpy.float32(get_scale())).astype(numpy.float32)
        if bad is not None:
            g[1] = numpy.inf if bad == "inf" else numpy.nan
        yield g


def run_scaler(case, xp=numpy):
    """A float32 parameter stepped by SGD through gpunet's GradScaler on ``xp`` for the
    iterations of ``case``; the gradient handed to it is the raw one times the current scale.
    Returns the scales after each update and the final parameter."""
    from gpunet.amp import GradScaler
    from gpunet.layers.base import Parameter
    c = case
    rng = numpy.random.default_rng(c["seed"])
    p = Parameter(xp.asarray(rng.standard_normal(4).astype(numpy.float32)), "w", True)
    opt = gpunet.optim.SGD([p], lr=0.1, momentum=0.5)
    scaler = GradScaler(c["init"], c["growth"], c["backoff"], c["interval"])
    scales = []
    for g in scaled_gradients(c, rng, scaler.get_scale):
        p.grad = xp.asarray(g)
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return scales, gpunet.to_numpy(p.data)


@st.composite
def load_cases(draw):
    """A checkpoint's model/optimizer and a target's, the same or different."""
    a = draw(resume_cases())
    b = dict(a) if draw(st.booleans()) else draw(resume_cases())
    if draw(st.booleans()):
        opt = draw(st.sampled_from(sorted(OPT_KW)))
        b = dict(b, opt=opt, kw=OPT_KW[opt])
    return dict(a=a, b=dict(b, dtype=a["dtype"], seed=a["seed"] + 1), sched=draw(st.booleans()))


def _resume_parts(case, device):
    m = build_stack(case).to(dtype=case["dtype"]).to(device)
    return m, getattr(gpunet.optim, case["opt"])(m.parameters(), **case["kw"])


def check_failed_load_changes_nothing(device, case):
    """Save ``case["a"]`` after a step; load it into ``case["b"]`` (trained a step):
    either it loads (the same architecture and optimizer: B then holds A's state) or it
    raises ValueError naming the path, and B — model, optimizer, schedule — is as it was:
    its state dicts, and the next training step, equal those of an untouched copy."""
    import os
    import tempfile
    a, b = case["a"], case["b"]
    ma, oa = _resume_parts(a, device)
    _train_steps(device, ma, oa, None, a, 0, 1)
    sa = gpunet.optim.StepLR(oa, 2) if case["sched"] else None
    runs = []
    for _ in range(2):                               # B, and an untouched copy of it
        mb, ob = _resume_parts(b, device)
        _train_steps(device, mb, ob, None, b, 0, 1)
        runs.append((mb, ob, gpunet.optim.ExponentialLR(ob, 0.5) if case["sched"] else None))
    (mb, ob, sb), (mc, oc, sc) = runs
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ck.npz")
        gpunet.save(path, ma, oa, scheduler=sa)
        try:
            gpunet.load(path, mb, ob, scheduler=sb)
        except ValueError as e:
            event("refused")
            assert str(e).startswith(f"gpunet.load: {path}"), str(e)
        else:
            event("loaded")
            for (k, u), (_, v) in zip(sorted(ma.state_dict().items()), sorted(mb.state_dict().items())):
                numpy.testing.assert_array_equal(gpunet.to_numpy(v), gpunet.to_numpy(u), err_msg=k)
            return
    for x, y in ((mb, mc), (ob, oc)) + (((sb, sc),) if sb is not None else ()):
        u, v = x.state_dict(), y.state_dict()
        assert sorted(u) == sorted(v)
        for k in u:
            numpy.testing.assert_array_equal(gpunet.to_numpy(u[k]), gpunet.to_numpy(v[k]), err_msg=k)
    la = _train_steps(device, mb, ob, sb, b, 1, 1)
    lc = _train_steps(device, mc, oc, sc, b, 1, 1)
    assert la == lc
    for p, q in zip(mb.parameters(), mc.parameters()):
        numpy.testing.assert_array_equal(gpunet.to_numpy(p.data), gpunet.to_numpy(q.data))


def check_early_stopping_restores_the_best(device, case, patience):
    """``fit`` with validation data and ``EarlyStopping(restore_best=True)``: afterwards
    the model evaluates to exactly the best epoch's ``val_loss``, and training stopped
    ``patience`` epochs after it (or at the last epoch)."""
    c = dict(case, epochs=case["epochs"] + 4, sched=None)
    t, X, y = trainer_of(c, device)
    t.optimizer.lr = t.optimizer.lr * 5               # a large rate: the val loss goes up and down
    Xv, yv = X[: max(2, c["n"] // 2)] + 0.1, y[: max(2, c["n"] // 2)]
    stop = gpunet.EarlyStopping(patience=patience, restore_best=True)
    h = t.fit((X, y), val=(Xv, yv), epochs=c["epochs"], batch_size=c["batch"], shuffle=c["shuffle"], seed=3,
              callbacks=[stop], progress=False)
    vals = h.history["val_loss"]
    best = min(range(len(vals)), key=lambda i: (vals[i], i))
    assert stop.best_epoch == best and stop.best == vals[best]
    assert len(vals) == min(c["epochs"], best + patience + 1)
    assert t.evaluate((Xv, yv))["loss"] == vals[best]


def _xent_valid(z, t, ignore):
    if z.ndim != 2 or z.dtype.kind != "f":
        return False
    if t.ndim == 1:
        return (t.dtype.kind in "iu" and t.shape[0] == z.shape[0]
                and bool(numpy.all(((t >= 0) & (t < z.shape[1])) | (t == ignore))))
    return t.ndim == 2 and t.shape == z.shape and t.dtype.kind == "f"


def check_bad_loss_input(xp, loss, zshape, zdtype, tshape, tdtype, as_list, reduction):
    """``loss`` (a class name) on a prediction and a target of the given shapes and dtypes
    on ``xp``'s device: a finite result when DESIGN §5 accepts them, else ValueError/
    TypeError whose message starts with the loss's name or its function's (TypeError for a
    list). On a device a label outside the classes is found there and raised when the loss
    is read (``softmax_cross_entropy``'s docstring): the read is part of the call here."""
    import pytest
    z = (numpy.arange(math.prod(zshape)).reshape(zshape) % 3).astype(zdtype)
    t = (numpy.arange(math.prod(tshape)).reshape(tshape) % 4).astype(tdtype)
    ignore = 3 if loss == "SoftmaxCrossEntropy" else None
    fn = getattr(gpunet, loss)(reduction=reduction, **({"ignore_index": ignore} if ignore is not None else {}))
    if loss == "SoftmaxCrossEntropy":
        valid = _xent_valid(z, t, ignore)
    else:
        valid = z.dtype.kind == "f" and t.shape == z.shape and t.dtype.kind in "biuf"
    if as_list:
        z, valid = z.tolist(), False
    else:
        z = xp.asarray(z)
    t = xp.asarray(t)
    names = {"SoftmaxCrossEntropy": "softmax_cross_entropy", "BCEWithLogits": "bce_with_logits",
             "MSELoss": "mse"}
    if valid:
        out = gpunet.to_numpy(fn(z, t))
        assert numpy.all(numpy.isfinite(out)) and fn.backward().shape == z.shape
        return
    with pytest.raises((ValueError, TypeError)) as info:
        gpunet.to_numpy(fn(z, t))
    msg = str(info.value)
    assert msg.startswith(f"{loss}:") or msg.startswith(f"{names[loss]}:"), msg
    if as_list:
        assert info.type is TypeError


ELEMENTWISE = {"sigmoid": gpunet.Sigmoid, "tanh": gpunet.Tanh, "relu": gpunet.ReLU,
               "leaky_relu": lambda: gpunet.LeakyReLU(-0.5), "elu": lambda: gpunet.ELU(2.0), "gelu": gpunet.GELU,
               "gelu_tanh": lambda: gpunet.GELU(approximate="tanh"), "silu": gpunet.SiLU, "softplus": gpunet.Softplus,
               "identity": gpunet.Identity}


@st.composite
def finite_arrays(draw):
    dtype = draw(st.sampled_from([numpy.float16, numpy.float32, numpy.float64]))
    width = numpy.finfo(dtype).bits
    values = draw(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=width), min_size=1, max_size=12))
    return numpy.array(values, dtype=dtype)


def check_activation_is_finite(xp, name, x):
    """``ELEMENTWISE[name]`` on ``x`` (finite, any float dtype) on ``xp``'s device: finite
    outputs, and finite input gradients (dy = 1) within the derivative's bound (2 here)."""
    layer = ELEMENTWISE[name]()
    with numpy.errstate(over="ignore", under="ignore", invalid="ignore"):
        y = gpunet.to_numpy(layer(xp.asarray(x)))
        dx = gpunet.to_numpy(layer.backward(xp.ones_like(xp.asarray(x))))
    assert y.dtype == dx.dtype == x.dtype
    assert numpy.all(numpy.isfinite(y)), (x, y)
    assert numpy.all(numpy.isfinite(dx)), (x, dx)
    assert numpy.all(numpy.abs(dx.astype(numpy.float64)) <= 2.0 + 1e-3), (x, dx)

