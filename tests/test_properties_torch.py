"""Property-based tests (hypothesis) with PyTorch as the oracle, in float64.

Hypothesis draws shapes, hyper-parameters and input scales; each property runs gpunet's
layer, loss or optimizer and PyTorch's on the same float64 values and compares the outputs
and every gradient (input and parameters). Where DESIGN.md (or a docstring it points to)
fixes a deliberate difference from PyTorch, the property states it and checks gpunet's
documented value instead:

* Softplus is ``max(x, 0) + log1p(e^-|x|)`` everywhere (PyTorch switches to ``x`` above
  ``threshold=20``): the oracle is ``torch.logaddexp(x, 0)``;
* SoftmaxCrossEntropy with every row ignored: loss and gradient 0 (PyTorch's mean is NaN);
* optimizers exempt ``decay=False`` parameters from L2/L1/decoupled decay (PyTorch gets
  a group with ``weight_decay=0``); ``l1`` has no PyTorch counterpart and is added to the
  oracle's gradient as ``l1 * sign(w)``.

Each test imports torch itself (``pytest.importorskip``), and every test is marked to skip
where torch is not installed (CI's stage 1), before hypothesis runs its explicit examples:
the module is collected and each test reports one clean skip.
"""
import importlib.util

import numpy
import pytest
# hypothesis comes with the dev extra (CI installs it); a machine with only pytest (the lent
# GPU machine has no network to install it) skips these modules instead of failing to collect
pytest.importorskip("hypothesis")
from hypothesis import assume, example, given
from hypothesis import strategies as st

import gpunet
from gpunet import optim
from gpunet.layers.base import Parameter
from prop_helpers import (conv_geometry, normal, pool_geometry, props, run_scaler, scaled_gradients,
                          scaler_cases, seeds)

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                reason="needs PyTorch, the oracle of these properties")


def _torch():
    return pytest.importorskip("torch")


def _leaf(torch, a):
    return torch.tensor(numpy.array(a, dtype=numpy.float64), requires_grad=True)


def _close(got, want, what, rtol=1e-10, atol=1e-12):
    want = want.detach().numpy() if hasattr(want, "detach") else numpy.asarray(want)
    got = gpunet.to_numpy(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, torch {want.shape}"
    numpy.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=what)


def _set64(layer, **arrays):
    """Set a layer's parameters to float64 values (``name=array``)."""
    for name, a in arrays.items():
        getattr(layer, name).data = numpy.array(a, dtype=numpy.float64)


# -- activations ---------------------------------------------------------------------------

def _torch_activation(torch, name, kw):
    F = torch.nn.functional
    return {
        "identity": lambda t: t,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "relu": F.relu,
        "leaky_relu": lambda t: F.leaky_relu(t, kw.get("negative_slope", 0.01)),
        "elu": lambda t: F.elu(t, kw.get("alpha", 1.0)),
        "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "silu": F.silu,
        "softplus": lambda t: torch.logaddexp(t, torch.zeros_like(t)),
        "softmax": lambda t: torch.softmax(t, kw.get("axis", -1)),
        "log_softmax": lambda t: torch.log_softmax(t, kw.get("axis", -1)),
    }[name]


ACTIVATIONS = {
    "identity": lambda kw: gpunet.Identity(),
    "sigmoid": lambda kw: gpunet.Sigmoid(),
    "tanh": lambda kw: gpunet.Tanh(),
    "relu": lambda kw: gpunet.ReLU(),
    "leaky_relu": lambda kw: gpunet.LeakyReLU(kw["negative_slope"]),
    "elu": lambda kw: gpunet.ELU(kw["alpha"]),
    "gelu": lambda kw: gpunet.GELU(),
    "gelu_tanh": lambda kw: gpunet.GELU(approximate="tanh"),
    "silu": lambda kw: gpunet.SiLU(),
    "softplus": lambda kw: gpunet.Softplus(),
    "softmax": lambda kw: gpunet.Softmax(kw["axis"]),
    "log_softmax": lambda kw: gpunet.LogSoftmax(kw["axis"]),
}


@props(60)
@given(name=st.sampled_from(sorted(ACTIVATIONS)), seed=seeds,
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
       log_scale=st.integers(-6, 8), slope=st.floats(-2.0, 3.0), alpha=st.floats(-1.0, 3.0),
       axis_pick=st.integers(0, 2))
def test_activation_matches_torch(name, seed, shape, log_scale, slope, alpha, axis_pick):
    """Forward and input gradient at magnitudes 1e-3 .. 1e3 (softmax/log-softmax rows of
    logits 1e3 apart: the max subtraction)."""
    torch = _torch()
    kw = dict(negative_slope=slope, alpha=alpha, axis=axis_pick % len(shape) - len(shape))
    x = normal(seed, shape, 10.0 ** log_scale)
    dy = normal(seed + 1, shape)
    layer = ACTIVATIONS[name](kw)
    y = layer(x)
    dx = layer.backward(dy)
    t = _leaf(torch, x)
    ty = _torch_activation(torch, name, kw)(t)
    ty.backward(torch.tensor(dy))
    # an absolute floor relative to the inputs' scale: GELU's 1 + erf and 1 + tanh(u)
    # cancel in PyTorch's forms for large negative x (gpunet's keep the tiny value)
    atol = 1e-13 * max(1.0, 10.0 ** log_scale) if name.startswith("gelu") else 1e-13
    _close(y, ty, f"{name} forward", atol=atol)
    _close(dx, t.grad, f"{name} dx", atol=atol)


# -- Dense ---------------------------------------------------------------------------------

@props(40)
@given(seed=seeds, n=st.integers(1, 5), fin=st.integers(1, 6), fout=st.integers(1, 6),
       bias=st.booleans(), act=st.sampled_from([None, "relu", "tanh", "sigmoid", "gelu", "elu",
                                                "leaky_relu", "silu", "softmax"]))
def test_dense_matches_torch(seed, n, fin, fout, bias, act):
    torch = _torch()
    x, w, b, dy = (normal(seed + i, s) for i, s in enumerate([(n, fin), (fout, fin), (fout,), (n, fout)]))
    layer = gpunet.Dense(fin, fout, bias=bias, activation=act)
    _set64(layer, weight=w, **({"bias": b} if bias else {}))
    y = layer(x)
    dx = layer.backward(dy)
    tx, tw, tb = _leaf(torch, x), _leaf(torch, w), _leaf(torch, b)
    tz = torch.nn.functional.linear(tx, tw, tb if bias else None)
    ty = tz if act is None else _torch_activation(torch, act, {})(tz)
    ty.backward(torch.tensor(dy))
    _close(y, ty, "Dense y")
    _close(dx, tx.grad, "Dense dx")
    _close(layer.weight.grad, tw.grad, "Dense dweight")
    if bias:
        _close(layer.bias.grad, tb.grad, "Dense dbias")


# -- Conv2D --------------------------------------------------------------------------------

@st.composite
def conv_cases(draw):
    h, w, k, s, p = conv_geometry(draw)
    return dict(n=draw(st.integers(1, 3)), cin=draw(st.integers(1, 3)), cout=draw(st.integers(1, 3)),
                h=h, w=w, kernel=k, stride=s, padding=p, bias=draw(st.booleans()),
                act=draw(st.sampled_from([None, "relu", "tanh"])), seed=draw(seeds))


@props(40)
@given(case=conv_cases())
def test_conv2d_matches_torch(case):
    torch = _torch()
    c = case
    layer = gpunet.Conv2D(c["cin"], c["cout"], c["kernel"], stride=c["stride"], padding=c["padding"],
                          bias=c["bias"], activation=c["act"])
    x = normal(c["seed"], (c["n"], c["cin"], c["h"], c["w"]))
    w = normal(c["seed"] + 1, (c["cout"], c["cin"]) + c["kernel"])
    b = normal(c["seed"] + 2, (c["cout"],))
    _set64(layer, weight=w, **({"bias": b} if c["bias"] else {}))
    y = layer(x)
    tx, tw, tb = _leaf(torch, x), _leaf(torch, w), _leaf(torch, b)
    tz = torch.nn.functional.conv2d(tx, tw, tb if c["bias"] else None, stride=c["stride"],
                                    padding=c["padding"])
    ty = tz if c["act"] is None else _torch_activation(torch, c["act"], {})(tz)
    dy = normal(c["seed"] + 3, tuple(ty.shape))
    dx = layer.backward(dy)
    ty.backward(torch.tensor(dy))
    _close(y, ty, "Conv2D y")
    _close(dx, tx.grad, "Conv2D dx")
    _close(layer.weight.grad, tw.grad, "Conv2D dweight")
    if c["bias"]:
        _close(layer.bias.grad, tb.grad, "Conv2D dbias")


# -- pooling -------------------------------------------------------------------------------

@st.composite
def pool_cases(draw):
    h, w, k, s, p = pool_geometry(draw)
    return dict(n=draw(st.integers(1, 3)), c=draw(st.integers(1, 3)), h=h, w=w, kernel=k, stride=s,
                padding=p, seed=draw(seeds))


@props(40)
@given(case=pool_cases(), kind=st.sampled_from(["max", "avg"]))
def test_pooling_matches_torch(case, kind):
    """Max pooling pads with -inf, average pooling counts the zero padding (PyTorch's
    defaults); continuous random inputs, so no ties."""
    torch = _torch()
    c = case
    layer = (gpunet.MaxPool2D if kind == "max" else gpunet.AvgPool2D)(c["kernel"], c["stride"], c["padding"])
    x = normal(c["seed"], (c["n"], c["c"], c["h"], c["w"]))
    y = layer(x)
    tx = _leaf(torch, x)
    stride = c["kernel"] if c["stride"] is None else c["stride"]
    pool = torch.nn.functional.max_pool2d if kind == "max" else torch.nn.functional.avg_pool2d
    ty = pool(tx, c["kernel"], stride, c["padding"])
    dy = normal(c["seed"] + 1, tuple(ty.shape))
    dx = layer.backward(dy)
    ty.backward(torch.tensor(dy))
    _close(y, ty, f"{kind} pool y")
    _close(dx, tx.grad, f"{kind} pool dx")


@props(20)
@given(seed=seeds, n=st.integers(1, 3), c=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6))
def test_global_avg_pool_matches_torch(seed, n, c, h, w):
    torch = _torch()
    x, dy = normal(seed, (n, c, h, w)), normal(seed + 1, (n, c))
    layer = gpunet.GlobalAvgPool2D()
    y = layer(x)
    dx = layer.backward(dy)
    tx = _leaf(torch, x)
    ty = tx.mean(dim=(2, 3))
    ty.backward(torch.tensor(dy))
    _close(y, ty, "GlobalAvgPool2D y")
    _close(dx, tx.grad, "GlobalAvgPool2D dx")


# -- BatchNorm -----------------------------------------------------------------------------

@st.composite
def bn_cases(draw):
    c = draw(st.integers(1, 4))
    four = draw(st.booleans())
    if four:
        shape = (draw(st.integers(1, 3)), c, draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    else:
        shape = (draw(st.integers(1, 6)), c)
    assume(numpy.prod(shape) // c >= 2)         # a variance needs two values per channel
    return dict(shape=shape, c=c, affine=draw(st.booleans()), momentum=draw(st.floats(0.0, 1.0)),
                eps=draw(st.sampled_from([1e-5, 1e-3, 0.1])), log_scale=draw(st.integers(-3, 3)),
                shift=draw(st.sampled_from([0.0, 1.0, 1e3])),
                constant=draw(st.lists(st.booleans(), min_size=c, max_size=c)), seed=draw(seeds))


def _bn_input(case):
    x = normal(case["seed"], case["shape"], 10.0 ** case["log_scale"]) + case["shift"]
    for ch, const in enumerate(case["constant"]):
        if const:                                   # a channel of one value: variance 0
            x[:, ch] = 0.1 + case["shift"]
    return x


def _bn_setup(c, var_floor):
    """The case's input, affine parameters and running buffers (variances at least
    ``var_floor``), and a float64 BatchNorm holding copies of them."""
    C = c["c"]
    x = _bn_input(c)
    gamma, beta = normal(c["seed"] + 1, (C,)) + 1.0, normal(c["seed"] + 2, (C,))
    rm, rv = normal(c["seed"] + 3, (C,)), numpy.abs(normal(c["seed"] + 4, (C,))) + var_floor
    bn = gpunet.BatchNorm(C, eps=c["eps"], momentum=c["momentum"], affine=c["affine"])
    if c["affine"]:
        _set64(bn, gamma=gamma, beta=beta)
    bn.running_mean, bn.running_var = rm.copy(), rv.copy()
    return x, gamma, beta, rm, rv, bn


@props(40)
@given(case=bn_cases())
@example(case=dict(shape=(2, 1), c=1, affine=True, momentum=0.1, eps=1e-5, log_scale=0, shift=0.0,
                   constant=[True], seed=0))
def test_batchnorm_train_matches_torch(case):
    """Training mode: batch statistics (biased variance), running buffers updated with the
    unbiased variance, at the smallest batches (two values per channel) and with channels
    of zero variance."""
    torch = _torch()
    c = case
    x, gamma, beta, rm0, rv0, bn = _bn_setup(c, var_floor=0.5)
    dy = normal(c["seed"] + 5, x.shape)
    y = bn(x)
    dx = bn.backward(dy)
    tx, tg, tb = _leaf(torch, x), _leaf(torch, gamma), _leaf(torch, beta)
    trm, trv = torch.tensor(rm0.copy()), torch.tensor(rv0.copy())
    ty = torch.nn.functional.batch_norm(tx, trm, trv, tg if c["affine"] else None,
                                        tb if c["affine"] else None, training=True,
                                        momentum=c["momentum"], eps=c["eps"])
    ty.backward(torch.tensor(dy))
    # scale-aware tolerances: y and dx are O(1) after normalization, but a channel of huge
    # mean and small spread has cancellation in x - mean (relative to |x|)
    _close(y, ty, "BatchNorm y", rtol=1e-8, atol=1e-9)
    _close(dx, tx.grad, "BatchNorm dx", rtol=1e-7, atol=1e-9 / 10.0 ** c["log_scale"])
    if c["affine"]:
        _close(bn.gamma.grad, tg.grad, "BatchNorm dgamma", rtol=1e-8, atol=1e-9)
        _close(bn.beta.grad, tb.grad, "BatchNorm dbeta")
    _close(bn.running_mean, trm, "BatchNorm running_mean")
    _close(bn.running_var, trv, "BatchNorm running_var", atol=1e-12 * 10.0 ** (2 * c["log_scale"]))


@props(25)
@given(case=bn_cases())
def test_batchnorm_eval_matches_torch(case):
    torch = _torch()
    c = case
    x, gamma, beta, rm, rv, bn = _bn_setup(c, var_floor=0.01)
    bn.eval()
    y = bn(x)
    ty = torch.nn.functional.batch_norm(torch.tensor(x), torch.tensor(rm), torch.tensor(rv),
                                        torch.tensor(gamma) if c["affine"] else None,
                                        torch.tensor(beta) if c["affine"] else None,
                                        training=False, momentum=c["momentum"], eps=c["eps"])
    _close(y, ty, "BatchNorm eval y")
    numpy.testing.assert_array_equal(bn.running_mean, rm)     # eval updates nothing


# -- Dropout (eval) and Maxout -------------------------------------------------------------

@props(20)
@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
       p=st.floats(0.0, 0.99), mode=st.sampled_from(["inverted", "classic"]))
def test_dropout_eval_matches_torch(seed, shape, p, mode):
    """Eval: inverted dropout is the identity (PyTorch's ``F.dropout(training=False)``);
    classic dropout scales by ``1-p`` (DESIGN §4; no PyTorch counterpart)."""
    torch = _torch()
    x = normal(seed, shape)
    layer = gpunet.Dropout(p, mode=mode, seed=seed)
    layer.eval()
    ty = torch.nn.functional.dropout(torch.tensor(x), p, training=False)
    want = ty if mode == "inverted" else ty * (1.0 - p)
    _close(layer(x), want, f"Dropout({mode}) eval", rtol=1e-15, atol=0)
    assert layer.counter == 0


@props(25)
@given(seed=seeds, n=st.integers(1, 4), c=st.integers(1, 4), pieces=st.integers(1, 4),
       spatial=st.lists(st.integers(1, 3), max_size=2).map(tuple))
def test_maxout_matches_torch(seed, n, c, pieces, spatial):
    torch = _torch()
    x = normal(seed, (n, c * pieces) + spatial)
    layer = gpunet.Maxout(pieces)
    y = layer(x)
    dy = normal(seed + 1, y.shape)
    dx = layer.backward(dy)
    tx = _leaf(torch, x)
    ty = tx.reshape((n, c, pieces) + spatial).amax(dim=2)
    ty.backward(torch.tensor(dy))
    _close(y, ty, "Maxout y", rtol=0, atol=0)
    _close(dx, tx.grad, "Maxout dx", rtol=0, atol=0)


# -- losses --------------------------------------------------------------------------------

@st.composite
def xent_cases(draw):
    n, c = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    soft = draw(st.booleans())
    ignore = None if soft else draw(st.sampled_from([None, -100, 0, c - 1]))
    return dict(n=n, c=c, soft=soft, ignore=ignore, smoothing=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
                reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                scale=draw(st.sampled_from([1.0, 30.0, 1e4])), seed=draw(seeds))


@pytest.mark.filterwarnings("ignore:SoftmaxCrossEntropy. the logits have 1 column")
@props(50)
@given(case=xent_cases())
def test_softmax_cross_entropy_matches_torch(case):
    """Integer and probability targets, label smoothing, ``ignore_index`` (including one
    that is a valid class), the three reductions, logits up to 1e4 (DESIGN §5)."""
    torch = _torch()
    c = case
    rng = numpy.random.default_rng(c["seed"])
    logits = rng.standard_normal((c["n"], c["c"])) * c["scale"]
    if c["soft"]:
        t = rng.random((c["n"], c["c"]))
        labels = t / t.sum(axis=1, keepdims=True)
    else:
        labels = rng.integers(0, c["c"], c["n"])
        if c["ignore"] is not None:
            labels[rng.random(c["n"]) < 0.3] = c["ignore"]
    loss_fn = gpunet.SoftmaxCrossEntropy(label_smoothing=c["smoothing"], ignore_index=c["ignore"],
                                         reduction=c["reduction"])
    loss = loss_fn(logits, labels)
    grad = loss_fn.backward()
    assert numpy.all(numpy.isfinite(gpunet.to_numpy(loss))) and numpy.all(numpy.isfinite(grad))
    tz = _leaf(torch, logits)
    kw = dict(label_smoothing=c["smoothing"], reduction=c["reduction"])
    if c["ignore"] is not None:
        kw["ignore_index"] = c["ignore"]
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(labels), **kw)
    all_ignored = c["ignore"] is not None and numpy.all(labels == c["ignore"])
    if all_ignored and c["reduction"] == "mean":
        # documented: zero loss and gradient where PyTorch's mean is 0/0
        assert float(loss) == 0.0 and not numpy.any(grad)
        return
    tl.backward(torch.ones_like(tl))
    atol = 1e-12 * c["scale"]
    _close(loss, tl, "softmax-CE loss", atol=atol)
    _close(grad, tz.grad, "softmax-CE dlogits", atol=1e-13)


@props(30)
@given(seed=seeds, shape=st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
       reduction=st.sampled_from(["mean", "sum", "none"]), scale=st.sampled_from([1.0, 50.0, 1e3, 1e30]),
       kind=st.sampled_from(["bce", "mse"]))
@example(seed=0, shape=(), reduction="mean", scale=1.0, kind="bce")
def test_bce_and_mse_match_torch(seed, shape, reduction, scale, kind):
    """BCE with logits is finite at any finite logit (DESIGN §5): logits up to 1e30; any
    rank, a single 0-d logit included."""
    torch = _torch()
    rng = numpy.random.default_rng(seed)
    z = rng.standard_normal(shape) * scale
    y = rng.random(shape) if kind == "bce" else rng.standard_normal(shape)
    if kind == "mse":
        z = z / max(1.0, scale / 1e3)               # squares of 1e30 overflow in any library
    loss_fn = (gpunet.BCEWithLogits if kind == "bce" else gpunet.MSELoss)(reduction=reduction)
    loss = loss_fn(z, y)
    grad = loss_fn.backward()
    tz = _leaf(torch, z)
    F = torch.nn.functional
    tl = (F.binary_cross_entropy_with_logits if kind == "bce" else F.mse_loss)(tz, torch.tensor(y),
                                                                               reduction=reduction)
    tl.backward(torch.ones_like(tl))
    assert numpy.all(numpy.isfinite(gpunet.to_numpy(loss)))
    _close(loss, tl, f"{kind} loss", atol=1e-12)
    _close(grad, tz.grad, f"{kind} grad", atol=1e-14)


# -- optimizers ----------------------------------------------------------------------------

TORCH_OPTIM = {"SGD": "SGD", "Adam": "Adam", "AdamW": "AdamW", "RMSProp": "RMSprop", "AdaGrad": "Adagrad"}


@st.composite
def optim_cases(draw):
    name = draw(st.sampled_from(sorted(TORCH_OPTIM)))
    lr = draw(st.sampled_from([1e-4, 1e-3, 0.01, 0.1, 1.0]))
    unit = st.floats(0.0, 0.999)
    if name == "SGD":
        m = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
        kw = dict(lr=lr, momentum=m, nesterov=m > 0 and draw(st.booleans()),
                  weight_decay=draw(st.sampled_from([0.0, 1e-4, 0.1])), l1=draw(st.sampled_from([0.0, 0.01])))
    elif name in ("Adam", "AdamW"):
        kw = dict(lr=lr, betas=(draw(unit), draw(unit)), eps=draw(st.sampled_from([1e-8, 1e-6, 0.1])),
                  weight_decay=draw(st.sampled_from([0.0, 1e-2, 0.3])))
        if name == "Adam":
            kw["l1"] = draw(st.sampled_from([0.0, 0.01]))
    elif name == "RMSProp":
        kw = dict(lr=lr, alpha=draw(unit), eps=draw(st.sampled_from([1e-8, 1e-6, 0.1])),
                  momentum=draw(st.sampled_from([0.0, 0.5, 0.9])))
    else:
        kw = dict(lr=lr, eps=draw(st.sampled_from([1e-10, 1e-6, 0.1])))
    shapes = draw(st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
                           min_size=1, max_size=3))
    decay = draw(st.lists(st.booleans(), min_size=len(shapes), max_size=len(shapes)))
    steps = draw(st.integers(1, 4))
    # which parameters have a gradient at each step (None: skipped, step count stays)
    has_grad = draw(st.lists(st.lists(st.booleans(), min_size=len(shapes), max_size=len(shapes)),
                             min_size=steps, max_size=steps))
    return dict(name=name, kw=kw, shapes=shapes, decay=decay, has_grad=has_grad,
                grad_scale=draw(st.sampled_from([1e-6, 1.0, 1e3])), seed=draw(seeds))


@props(60)
@given(case=optim_cases())
def test_optimizer_steps_match_torch(case):
    """A few steps on random parameters and gradients (some parameters skipped at some
    steps), after every step the parameters equal ``torch.optim``'s."""
    torch = _torch()
    c = case
    kw = dict(c["kw"])
    l1 = kw.get("l1", 0.0)
    rng = numpy.random.default_rng(c["seed"])
    w0 = [rng.standard_normal(s) for s in c["shapes"]]
    params = [Parameter(w.copy(), f"p{i}", d) for i, (w, d) in enumerate(zip(w0, c["decay"]))]
    opt = getattr(optim, c["name"])(params, **kw)
    tparams = [_leaf(torch, w) for w in w0]
    tkw = {k: v for k, v in kw.items() if k != "l1"}
    if c["name"] in ("SGD", "Adam", "AdamW"):
        groups = [{"params": [t], "weight_decay": tkw["weight_decay"] if d else 0.0}
                  for t, d in zip(tparams, c["decay"])]
    else:
        groups = [{"params": [t]} for t in tparams]
    topt = getattr(torch.optim, TORCH_OPTIM[c["name"]])(groups, **tkw, foreach=False)
    for mask in c["has_grad"]:
        for p, t, d, on in zip(params, tparams, c["decay"], mask):
            if not on:
                p.grad, t.grad = None, None
                continue
            g = rng.standard_normal(p.data.shape) * c["grad_scale"]
            p.grad = g.copy()
            tg = g + (l1 * numpy.sign(p.data) if d else 0.0)
            t.grad = torch.tensor(tg)
        opt.step()
        topt.step()
        for i, (p, t) in enumerate(zip(params, tparams)):
            _close(p.data, t, f"{c['name']} parameter {i}", rtol=1e-12, atol=1e-15)
    assert opt.steps == [sum(m[i] for m in c["has_grad"]) for i in range(len(params))]


@props(30)
@given(seed=seeds, shapes=st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple), min_size=1,
                                   max_size=4),
       has_grad=st.lists(st.booleans(), min_size=4, max_size=4), max_norm=st.sampled_from([0.0, 0.1, 1.0, 1e3]),
       clip=st.sampled_from([0.0, 0.05, 1.0]), scale=st.sampled_from([1e-3, 1.0, 1e3]))
def test_gradient_clipping_matches_torch(seed, shapes, has_grad, max_norm, clip, scale):
    """``clip_grad_norm`` (the returned norm and the scaled gradients; parameters without a
    gradient ignored, none at all: 0.0) and ``clip_grad_value`` against ``torch.nn.utils``."""
    torch = _torch()
    rng = numpy.random.default_rng(seed)
    grads = [rng.standard_normal(s) * scale if on else None for s, on in zip(shapes, has_grad)]
    for fn in ("norm", "value"):
        params = [Parameter(numpy.zeros(s), f"p{i}", True) for i, s in enumerate(shapes)]
        tparams = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes]
        for p, t, g in zip(params, tparams, grads):
            p.grad = None if g is None else g.copy()
            t.grad = None if g is None else torch.tensor(g.copy())
        if all(g is None for g in grads):      # PyTorch 2.13 raises on no gradient at all
            assert optim.clip_grad_norm(params, max_norm) == 0.0
            optim.clip_grad_value(params, clip)
            assert all(p.grad is None for p in params)
            return
        if fn == "norm":
            total = optim.clip_grad_norm(params, max_norm)
            ttotal = torch.nn.utils.clip_grad_norm_(tparams, max_norm)
            assert total == pytest.approx(float(ttotal), rel=1e-12, abs=1e-300)
        else:
            optim.clip_grad_value(params, clip)
            torch.nn.utils.clip_grad_value_(tparams, clip)
        for p, t in zip(params, tparams):
            if t.grad is None:
                assert p.grad is None
            else:
                _close(p.grad, t.grad, f"clip_grad_{fn}", rtol=1e-12, atol=0)


SCHEDULES = {
    "StepLR": (lambda d: dict(step_size=d(st.integers(1, 5)), gamma=d(st.sampled_from([0.1, 0.5, 0.9, 1.5])))),
    "ExponentialLR": (lambda d: dict(gamma=d(st.sampled_from([0.5, 0.9, 0.99, 1.1])))),
    "CosineAnnealingLR": (lambda d: dict(T_max=d(st.integers(1, 7)), eta_min=d(st.sampled_from([0.0, 1e-3, 0.05])))),
    "LinearWarmup": (lambda d: dict(warmup_steps=d(st.integers(0, 6)),
                                    start_factor=d(st.sampled_from([1.0 / 3.0, 0.01, 0.5, 1.0])))),
}


@props(30)
@given(name=st.sampled_from(sorted(SCHEDULES)), data=st.data(), base_lr=st.sampled_from([1e-3, 0.1, 1.0]),
       steps=st.integers(1, 25))
def test_schedules_match_torch(name, data, base_lr, steps):
    """Every schedule, random hyper-parameters, ``steps`` steps (the cosine past ``T_max``):
    gpunet's closed forms equal PyTorch's chained products to rounding."""
    torch = _torch()
    kw = SCHEDULES[name](data.draw)
    opt = optim.SGD([Parameter(numpy.zeros(1), "w", True)], lr=base_lr)
    sched = getattr(optim, name)(opt, **kw)
    tp = torch.zeros(1, requires_grad=True)
    topt = torch.optim.SGD([tp], lr=base_lr)
    if name == "LinearWarmup":
        assume(kw["warmup_steps"] > 0)          # total_iters=0: PyTorch divides by zero
        tsched = torch.optim.lr_scheduler.LinearLR(topt, start_factor=kw["start_factor"], end_factor=1.0,
                                                   total_iters=kw["warmup_steps"])
    else:
        tsched = getattr(torch.optim.lr_scheduler, name)(topt, **kw)
    for _ in range(steps):
        assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-10, abs=1e-12 * base_lr)
        topt.step()
        tsched.step()
        sched.step()
    assert opt.lr == pytest.approx(topt.param_groups[0]["lr"], rel=1e-10, abs=1e-12 * base_lr)


@props(40)
@given(case=scaler_cases())
def test_grad_scaler_matches_torch(case):
    """gpunet.amp.GradScaler against ``torch.amp.GradScaler("cpu")`` on the same scaled
    gradients (an inf or NaN at some iterations, growth past float32's range refused):
    the same scale after every update, the same steps skipped, the same parameters (to
    float32 rounding)."""
    torch = _torch()
    c = case
    scales, w = run_scaler(c)
    rng = numpy.random.default_rng(c["seed"])
    tp = torch.tensor(rng.standard_normal(4).astype(numpy.float32), requires_grad=True)
    topt = torch.optim.SGD([tp], lr=0.1, momentum=0.5)
    ts = torch.amp.GradScaler("cpu", init_scale=c["init"], growth_factor=c["growth"],
                              backoff_factor=c["backoff"], growth_interval=c["interval"])
    def scale():
        ts.scale(torch.ones(1))                 # PyTorch makes its scale tensor here
        return ts.get_scale()

    tscales = []
    for g in scaled_gradients(c, rng, scale):
        tp.grad = torch.tensor(g)
        ts.step(topt)
        ts.update()
        tscales.append(ts.get_scale())
    assert scales == tscales
    # float32 SGD: PyTorch's add_(alpha=-lr) may round once where gpunet rounds lr*g first
    _close(w, tp, "parameter", rtol=1e-6, atol=1e-7)
