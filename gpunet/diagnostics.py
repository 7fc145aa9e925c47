"""Diagnostics: the tools to see vanishing/exploding gradients and dead ReLUs.

* ``grad_norms(model)``: the L2 norm of each parameter's gradient. Norms that shrink
  layer by layer towards the input are vanishing gradients (deep sigmoid/tanh nets,
  all-small initial weights); norms that grow are exploding ones.
* ``activation_stats(model, x)``: mean, standard deviation and fraction of exact zeros
  of every layer's output for a probe batch (the layers inside a ``Residual`` or a nested
  ``Sequential`` too). A ReLU layer whose zero fraction nears 1 is
  dead; a std collapsing towards 0 layer by layer is a signal that vanishes forward.
* ``DiagnosticsCallback(x_probe=None)``: records both into the ``History`` each epoch.

Norms and statistics are computed in float64 (a float32 gradient of 1e20 would overflow
when squared in float32) and brought to the host in one transfer.
"""
from __future__ import annotations

import math

import numpy

from .backend import get_array_module, is_array, to_device, to_numpy
from .layers.base import Layer, Sequential
from .train import Callback


def _l2_norm(g):
    """sqrt(Σ g²) as a 0-d float64 array on g's device (no host synchronization)."""
    xp = get_array_module(g)
    return xp.sqrt(xp.square(g, dtype=xp.float64).sum())


def _to_floats(values):
    """0-d device arrays → Python floats, in one device-to-host transfer."""
    if not values:
        return []
    xp = get_array_module(*values)
    return [float(v) for v in to_numpy(xp.stack(values))]


def grad_norms(model) -> dict:
    """``{state_dict_name: ||grad||_2}`` for every parameter of ``model`` (a Layer), in the
    model's order, e.g. ``{"0.weight": 0.83, "0.bias": 0.12, ...}``.

    Parameters whose ``grad`` is None (no backward since the last ``zero_grad``, or a
    frozen parameter) are omitted, so an empty dict means "no gradients yet".
    """
    if not isinstance(model, Layer):
        raise TypeError(f"grad_norms: expected a gpunet Layer, got {type(model).__name__}")
    named = [(k, p.grad) for k, p in model.named_parameters() if p.grad is not None]
    return dict(zip([k for k, _ in named], _to_floats([_l2_norm(g) for _, g in named])))


def _layer_label(i, layer) -> str:
    return f"{i}:{type(layer).__name__}"


def _modes(layer):
    """Every layer of the tree with its own ``training`` flag (children may differ)."""
    out = [(layer, layer.training)]
    for c in layer.children():
        out += _modes(c)
    return out


def _recorders(layer, prefix, record):
    """Make every layer inside ``layer`` (children, grandchildren, ...) report its output
    to ``record(label, y)`` while it runs, labelled by its ``state_dict`` path and class
    (``"3.block.0:Conv2D"``). A Sequential inside gets no label of its own: its output
    is its last layer's. The reporter is an instance attribute ``forward`` that shadows the
    class's; returns the layers that got one (``_unrecord`` removes them)."""
    done = []
    for name, child in layer.named_children():
        path = f"{prefix}{name}"
        if not isinstance(child, Sequential) and "forward" not in vars(child):
            def forward(x, _f=child.forward, _label=f"{path}:{type(child).__name__}"):
                y = _f(x)
                record(_label, y)
                return y
            vars(child)["forward"] = forward
            done.append(child)
        done += _recorders(child, path + ".", record)
    return done


def _unrecord(layers):
    for layer in layers:
        vars(layer).pop("forward", None)


def activation_stats(model, x) -> dict:
    """Statistics of each layer's output for the probe batch ``x``.

    Returns ``{label: {"mean": m, "std": s, "zero_fraction": z}}`` with one entry per
    layer of a ``Sequential`` (labels ``"<index>:<LayerClass>"``, e.g. ``"1:ReLU"``; a
    model that is not a Sequential gives one entry for its output, labelled with its class
    name). ``std`` is the population standard deviation over all elements;
    ``zero_fraction`` the fraction of elements exactly 0.

    The layers inside a layer that holds others (a ``Residual``'s block, a nested
    ``Sequential``) get entries too, in the order they run and before their container's
    own, labelled with their ``state_dict`` path: in
    ``Sequential(Conv2D(...), Residual(Sequential(Conv2D(...), BatchNorm(...))))`` the
    labels are ``"0:Conv2D"``, ``"1.block.0:Conv2D"``, ``"1.block.1:BatchNorm"`` and
    ``"1:Residual"`` (the sum ``x + block(x)``). A Sequential inside has no entry of its
    own (its output is its last layer's).

    The layers run in eval mode, so nothing a training step reads changes:
    dropout draws no mask (it is the identity, or the ``1-p`` scaling of classic
    dropout), batch norm uses and keeps its running statistics, and no layer caches
    activations. Every layer's own training flag is restored afterwards. The statistics
    therefore describe the network as it predicts; a BatchNorm that has not trained yet
    normalizes with its initial running statistics (mean 0, variance 1), so its entry is
    close to its input's.

    An ``x`` without samples (0-d, or 0 along axis 0) raises ``ValueError``: its
    statistics would be NaN.
    """
    if not isinstance(model, Layer):
        raise TypeError(f"activation_stats: expected a gpunet Layer, got {type(model).__name__}")
    shape = getattr(x, "shape", None)
    if shape is not None and (len(shape) == 0 or shape[0] == 0):
        raise ValueError(f"activation_stats: expected a probe batch x with at least one sample "
                         f"along axis 0, got shape {tuple(shape)}")
    seq = isinstance(model, Sequential)
    layers = list(model) if seq else [model]
    modes = _modes(model)
    labels, values = [], []

    def record(label, y):
        xp = get_array_module(y)
        y64 = y.astype(xp.float64)
        labels.append(label)
        values.extend((y64.mean(), y64.std(), (y == 0).mean(dtype=xp.float64)))

    model.eval()
    inside = []
    try:
        for i, layer in enumerate(layers):
            inside = _recorders(layer, f"{i}." if seq else "", record)
            x = layer.forward(x)
            _unrecord(inside)
            record(_layer_label(i, layer) if seq else type(model).__name__, x)
    finally:
        _unrecord(inside)
        for layer, mode in modes:
            layer.training = mode
    floats = _to_floats(values)
    return {lab: dict(zip(("mean", "std", "zero_fraction"), floats[3 * j:3 * j + 3]))
            for j, lab in enumerate(labels)}


class DiagnosticsCallback(Callback):
    """Trainer callback: each epoch, per-parameter gradient norms (and, given a probe
    batch, per-layer activation statistics) go into the ``History``.

    Keys added to the epoch's logs (one float per epoch in ``history.history[key]``):

    * ``"grad_norm/<name>"`` (e.g. ``"grad_norm/0.weight"``): the L2 norm of that
      parameter's gradient at the LAST training step of the epoch, taken after backward
      and before the optimizer step (``on_backward_end``); NaN for a parameter that had
      no gradient at that step, so every list stays one entry per epoch.
    * with ``x_probe``: ``"act_mean/<label>"``, ``"act_std/<label>"`` and
      ``"act_zero_fraction/<label>"`` from ``activation_stats(model, x_probe)`` at the end
      of the epoch (labels ``"<index>:<LayerClass>"``, and ``"<path>:<LayerClass>"`` such
      as ``"3.block.0:Conv2D"`` for the layers inside a container). The probe is moved to
      the model's device and cast to its parameters' dtype.

    Cost: every step computes the norms on the device (a few small reductions per
    parameter, no host synchronization); only the last step's are read back.

    ``x_probe`` is checked when it is given (an array or nested list of numbers with at
    least one sample, else ``TypeError``/``ValueError``) and, at the start of each ``fit``,
    run through the model once, so that a probe the model cannot take (wrong shape or
    dtype) raises ``ValueError`` naming ``DiagnosticsCallback`` before the first step,
    not after the first epoch.
    """

    def __init__(self, x_probe=None):
        if x_probe is not None and not is_array(x_probe):
            given = type(x_probe).__name__
            try:
                x_probe = numpy.asarray(x_probe)
            except (ValueError, TypeError) as e:
                raise TypeError(f"DiagnosticsCallback: expected x_probe to be an array or a nested "
                                f"list of numbers, got {given} ({e})") from None
            if x_probe.dtype.kind not in "biuf":
                raise TypeError(f"DiagnosticsCallback: expected x_probe to be an array or a nested "
                                f"list of numbers, got {given} (dtype {x_probe.dtype})")
        if x_probe is not None and (x_probe.ndim == 0 or x_probe.shape[0] == 0):
            raise ValueError(f"DiagnosticsCallback: expected x_probe with at least one sample along "
                             f"axis 0, got shape {tuple(x_probe.shape)}")
        self.x_probe = x_probe
        self._pending = None     # [(name, 0-d norm array or None)] of the latest step

    def on_train_begin(self, trainer):
        self._pending = None
        if self.x_probe is not None:     # a probe the model cannot take: now, not after an epoch
            try:
                activation_stats(trainer.model, self._probe(trainer.model))
            except (ValueError, TypeError) as e:
                raise ValueError(f"DiagnosticsCallback: x_probe of shape {tuple(self.x_probe.shape)} "
                                 f"does not fit the model: {e}") from e

    def _probe(self, model):
        """The probe on the model's device, in its parameters' dtype (as the docstring says:
        an integer probe, raw pixel values say, is cast too)."""
        params = model.parameters()
        x = to_device(self.x_probe, model.device)
        if params and x.dtype.kind in "biuf" and x.dtype != params[0].data.dtype:
            x = x.astype(params[0].data.dtype)
        return x

    def on_backward_end(self, trainer):
        self._pending = [(k, None if p.grad is None else _l2_norm(p.grad))
                         for k, p in trainer.model.named_parameters()]

    def on_epoch_end(self, trainer, epoch, logs):
        if self._pending is not None:
            present = [v for _, v in self._pending if v is not None]
            floats = iter(_to_floats(present))
            for k, v in self._pending:
                logs[f"grad_norm/{k}"] = math.nan if v is None else next(floats)
        if self.x_probe is not None:
            for label, st in activation_stats(trainer.model, self._probe(trainer.model)).items():
                for stat, value in st.items():
                    logs[f"act_{stat}/{label}"] = value


__all__ = ["grad_norms", "activation_stats", "DiagnosticsCallback"]
