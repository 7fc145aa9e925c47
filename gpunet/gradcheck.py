"""Gradient checking by central differences, in float64."""
from __future__ import annotations

import numpy

from . import _args
from .backend import get_array_module, to_numpy
from .layers.base import Layer


def _as64(layer):
    """Cast a layer's parameters to float64 in place; return the originals to restore."""
    saved = []
    for p in layer.parameters():
        saved.append((p, p.data, p.grad))
        p.data = p.data.astype(numpy.float64, order="C")   # C order: perturbed through a flat view
        p.grad = None
    return saved


def _in_eval_mode(layer, path=""):
    """``"<state_dict path> (<Class>)"`` of each layer in ``layer``'s tree that is in eval mode
    (``"itself"`` for ``layer``)."""
    out = [] if layer.training else [f"{path} ({type(layer).__name__})" if path else "itself"]
    for name, child in layer.named_children():
        out += _in_eval_mode(child, f"{path}.{name}" if path else name)
    return out


def gradcheck(layer_or_fn, x, eps=1e-6, rtol=1e-4, atol=1e-6, seed=0):
    """Check a layer's (or a function's) backward against central differences.

    ``layer_or_fn``: a Layer (checked: the input gradient and every parameter's gradient),
    or a callable ``f(x) -> (y, backward)`` where ``backward(dy) -> dx``. The scalar probed is
    ``L = Σ y·r`` for a fixed random ``r``, so ``dL/dy = r``. Everything runs in float64
    (a layer's parameters are cast for the check and restored after). A layer must be
    deterministic given its buffers: before every forward the check restores each buffer
    and counter (``Layer._buffers``, e.g. dropout's draw counter) to its value at the start,
    so a dropout layer sees the same mask in every probe; after the check they hold those
    values again (batch norm's running statistics and dropout's counter are as they were,
    not advanced by the probes' forwards).

    The layer must be in training mode (an eval-mode forward keeps nothing for backward):
    a backward that fails on a model with layers in eval mode raises ``RuntimeError``
    naming them.

    Raises ``AssertionError`` naming the worst element when analytic and numeric
    gradients disagree beyond ``atol + rtol·|numeric|``; returns True otherwise.
    """
    if not (isinstance(layer_or_fn, Layer) or callable(layer_or_fn)):
        raise TypeError(f"gradcheck: expected a Layer or a callable f(x) -> (y, backward), got "
                        f"{type(layer_or_fn).__name__}")
    if not (hasattr(x, "dtype") and hasattr(x, "astype")):
        raise TypeError(f"gradcheck: expected x to be a NumPy or CuPy array, got {type(x).__name__}")
    eps = _args.real("gradcheck", "eps", eps, low=0, low_open=True)   # the central-difference step
    rtol = _args.real("gradcheck", "rtol", rtol, low=0)
    atol = _args.real("gradcheck", "atol", atol, low=0)
    seed = _args.integer("gradcheck", "seed", seed, low=0)
    xp = get_array_module(x)
    x = x.astype(numpy.float64, order="C")   # a copy, C order: perturbed through a flat view
    rng = numpy.random.default_rng(seed)
    if isinstance(layer_or_fn, Layer):
        layer = layer_or_fn
        saved = _as64(layer)
        buffers = [(owner, attr, getattr(owner, attr)) for _, owner, attr in layer.named_buffers()]
        buffers = [(o, a, v.copy() if hasattr(v, "copy") else v) for o, a, v in buffers]

        def run(inp):
            for owner, attr, v in buffers:   # rewind counters and statistics
                setattr(owner, attr, v.copy() if hasattr(v, "copy") else v)
            return layer.forward(inp)
        try:
            y = run(x)
            r = xp.asarray(rng.standard_normal(y.shape))
            layer.zero_grad()
            try:
                dx = layer.backward(r.copy())
            except RuntimeError as e:
                evals = _in_eval_mode(layer)
                if not evals:
                    raise
                raise RuntimeError(f"gradcheck({type(layer).__name__}): backward failed with layers in eval "
                                   f"mode ({', '.join(evals)}), whose forward keeps nothing for backward: "
                                   f"call .train() on the layer before gradcheck. The error: {e}") from e
            checks = [("input", x, dx)]
            checks += [(name, p.data, p.grad) for name, p in layer.named_parameters()]

            def loss():
                return float((run(x) * r).sum())

            for name, arr, analytic in checks:
                _compare(name, arr, analytic, loss, eps, rtol, atol, type(layer).__name__)
        finally:
            for p, data, grad in saved:
                p.data, p.grad = data, grad
            for owner, attr, v in buffers:   # leave the statistics and counters as found
                setattr(owner, attr, v)
        return True

    f = layer_or_fn
    out = f(x)
    if not (isinstance(out, tuple) and len(out) == 2 and callable(out[1])):
        raise TypeError(f"gradcheck: expected the function to return (y, backward) with "
                        f"backward(dy) -> dx, got {type(out).__name__}"
                        + (f" of shape {tuple(out.shape)}" if hasattr(out, "shape") else "")
                        + "; for a layer, pass the Layer itself")
    y, back = out
    r = xp.asarray(rng.standard_normal(numpy.shape(y)))
    dx = back(r.copy())

    def loss():
        return float((f(x)[0] * r).sum())
    _compare("input", x, dx, loss, eps, rtol, atol, getattr(f, "__name__", "function"))
    return True


def _compare(name, arr, analytic, loss, eps, rtol, atol, owner):
    if analytic is None:
        raise AssertionError(f"gradcheck({owner}): no gradient was computed for {name}")
    numeric = numpy.zeros(arr.shape)
    flat = arr.reshape(-1)
    if not arr.flags.c_contiguous:   # reshape(-1) would copy, and perturbing it would do nothing
        raise AssertionError(f"gradcheck({owner}): {name} is not contiguous; cannot perturb it in place")
    for i in range(flat.size):
        old = float(flat[i])
        flat[i] = old + eps
        lp = loss()
        flat[i] = old - eps
        lm = loss()
        flat[i] = old
        numeric.reshape(-1)[i] = (lp - lm) / (2 * eps)
    analytic = to_numpy(analytic).astype(numpy.float64)
    if analytic.shape != numeric.shape:
        raise AssertionError(f"gradcheck({owner}): gradient of {name} has shape {analytic.shape}, "
                             f"expected {numeric.shape}")
    err = numpy.abs(analytic - numeric) - (atol + rtol * numpy.abs(numeric))
    if err.size and err.max() > 0:
        i = numpy.unravel_index(int(numpy.argmax(err)), err.shape)
        raise AssertionError(
            f"gradcheck({owner}): gradient of {name} disagrees at index {tuple(int(j) for j in i)}: "
            f"analytic {analytic[i]:.8g}, numeric {numeric[i]:.8g} "
            f"(|diff| {abs(analytic[i] - numeric[i]):.3g} > atol {atol} + rtol {rtol}·|numeric|)")
