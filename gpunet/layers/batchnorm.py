"""Batch normalization over the channel axis of ``(N, C)`` or ``(N, C, H, W)`` input."""
from __future__ import annotations

import numpy

from .. import _args
from ..backend import get_array_module
from ..functional import batchnorm as F
from .base import (Layer, Parameter, ParameterSlot, check_device, check_grad, check_input, check_same_device,
                   check_shapes)


class BatchNorm(Layer):
    """BatchNorm(num_features, eps=1e-5, momentum=0.1, affine=True), PyTorch's conventions.

    Input ``(N, C)`` (like ``BatchNorm1d``) or ``(N, C, H, W)`` (like ``BatchNorm2d``),
    ``C = num_features``; statistics per channel over the other axes.

    * Training: normalize with the batch mean and the **biased** batch variance,
      ``y = gamma·(x - mean)/sqrt(var + eps) + beta`` (see ``gpunet.functional.batchnorm``),
      then update the buffers ``running = (1 - momentum)·running + momentum·batch``, where
      the running variance takes the **unbiased** batch variance ``var·M/(M-1)``
      (``M = N·H·W``). Needs ``M > 1``.
    * Eval: normalize with ``running_mean`` and ``running_var`` (nothing is updated).

    ``gamma`` (init 1) and ``beta`` (init 0) are Parameters with ``decay=False`` (exempt
    from L1/L2); ``affine=False`` gives a layer without parameters. ``running_mean`` (init
    0) and ``running_var`` (init 1) are float32 arrays and plain attributes, read at every
    call, so they may be reassigned; the updates keep their dtype (never promoted by a
    float64 scalar). On a device (``"cuda"``, ``"sim"``) a training forward updates them
    in place, inside the statistics kernel when they have the statistics' dtype (float32
    for float16 input, else the input's) and are contiguous, by array operations
    otherwise; each operation is rounded as on the host (``rm·(1-momentum) +
    mean·momentum``), so the values are the host formula's for the same batch statistics.
    The arrays keep their addresses, so a CUDA graph replays the update; a graph refuses
    to replay once they were replaced (``load_state_dict``, ``to``). On the host each
    update makes new arrays. ``momentum`` is the weight of the new batch (PyTorch's
    meaning, the complement of Keras'); the cumulative average of PyTorch's
    ``momentum=None`` is not offered.

    The input dtype must equal the parameters' dtype (any floating dtype with
    ``affine=False``), with one exception for mixed precision (``gpunet.amp``): a float16
    input with float32 parameters (or none). A float16 input is always normalized in
    float32 (statistics, running buffers, ``dgamma``/``dbeta`` in float32; see
    ``gpunet.functional.batchnorm``) and the output and ``dx`` are float16, rounded once;
    on a device the half kernels read and write the float16 activations directly (no
    float32 copy). ``dy`` is then float16, or float32 (``dx`` is then float32).

    ``gamma`` and ``beta`` take a ``Parameter`` (None with ``affine=False``); any other
    value raises ``TypeError`` (``layer.gamma.data = array`` changes the values).
    ``eps`` and ``momentum`` may be assigned afterwards (checked as the arguments are; the
    next forward uses them). ``num_features`` and ``affine`` are fixed: ``gamma``, ``beta``
    and the running statistics were made from them, and assigning either raises
    ``AttributeError``.
    """

    _buffers = ("running_mean", "running_var")
    _no_affine = " (this layer has affine=True; BatchNorm(..., affine=False) has no gamma and beta)"
    gamma = ParameterSlot(optional=lambda layer: not layer.affine, none_hint=_no_affine)
    beta = ParameterSlot(optional=lambda layer: not layer.affine, none_hint=_no_affine)
    _nonnegative_buffers = ("running_var",)      # checked by load_state_dict
    eps = _args.real_property(None, "eps", "Added to the variance (a finite number > 0).",
                              low=0.0, low_open=True)
    momentum = _args.checked_property(None, "momentum", "The weight of a batch in the running statistics "
                                      "(a number in [0, 1]).", lambda who, name, value: _momentum(who, value))
    num_features = _args.read_only(None, "num_features", "Channels (fixed at construction).",
                                   "gamma, beta and the running statistics have num_features entries; "
                                   "create a new layer for another channel count")
    affine = _args.read_only(None, "affine", "Whether the layer has gamma and beta (fixed at construction).",
                             "gamma and beta exist only with affine=True; create a new layer with "
                             "affine=..., or leave gamma and beta out of the optimizer to freeze them")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        super().__init__()
        c = _args.integer(type(self).__name__, "num_features", num_features, low=1)
        self._num_features = c
        self.eps = eps
        self.momentum = momentum
        self._affine = affine = _args.flag(type(self).__name__, "affine", affine)
        self.gamma = Parameter(numpy.ones(c, numpy.float32), "gamma", decay=False) if affine else None
        self.beta = Parameter(numpy.zeros(c, numpy.float32), "beta", decay=False) if affine else None
        self.running_mean = numpy.zeros(c, numpy.float32)
        self.running_var = numpy.ones(c, numpy.float32)
        self._cache = None

    def _check(self, x):
        dtype = self.gamma.data.dtype if self.affine else None
        check_input(self, x, ndim=(2, 4), dtype=dtype, features=self.num_features, axis=1)

    def _half(self, x) -> bool:
        """A float16 input to normalize in float32 (see the class doc)."""
        return (getattr(x, "dtype", None) == numpy.float16
                and (not self.affine or self.gamma.data.dtype == numpy.float32))

    def forward(self, x):
        if self._half(x):
            check_input(self, x, ndim=(2, 4), features=self.num_features, axis=1)
        else:
            self._check(x)
        g = self.gamma.data if self.affine else None
        b = self.beta.data if self.affine else None
        c = (self.num_features,)
        if (self.running_mean.shape != c or self.running_var.shape != c
                or (g is not None and (g.shape != c or b.shape != c))):
            check_shapes(self, ("gamma", g, c), ("beta", b, c), ("running_mean", self.running_mean, c),
                         ("running_var", self.running_var, c))
        if not (type(self.running_mean) is type(self.running_var) is numpy.ndarray
                and (g is None or type(g) is type(b) is numpy.ndarray)):
            check_same_device(self, ("running_mean", self.running_mean), ("running_var", self.running_var),
                              ("gamma", g), ("beta", b))
        if not self.training:
            check_device(self, x, self.running_mean)
            return F.batch_norm_eval(x, self.running_mean, self.running_var, g, b, self.eps)
        m = x.size // self.num_features
        if m < 2:   # PyTorch refuses it too; the usual cause is an epoch's last batch
            hint = ("; a batch of one sample is most often an epoch's last (N % batch_size == 1): "
                    "pass DataLoader(..., drop_last=True) or another batch_size") if x.shape[0] == 1 else ""
            raise ValueError(f"BatchNorm: training needs more than one value per channel to estimate a "
                             f"variance, got input shape {tuple(x.shape)}{hint}")
        check_device(self, x, self.running_mean)
        rm, rv = self.running_mean, self.running_var
        acc = numpy.float32 if x.dtype == numpy.float16 else x.dtype
        if (get_array_module(x) is not numpy and rm.dtype == rv.dtype == acc
                and get_array_module(x, rm, rv) is not numpy
                and rm.flags.c_contiguous and rv.flags.c_contiguous):
            # the statistics kernel updates the running statistics in place (no launch of
            # its own); the arrays keep their addresses, so a CUDA graph replays the update
            y, mean, var, inv_std = F.batch_norm_forward(x, g, b, self.eps,
                                                         running=(rm, rv, self.momentum))
            from ..cuda.graphs import updated_in_place
            updated_in_place(self, "running_mean", "running_var")
        else:
            y, mean, var, inv_std = F.batch_norm_forward(x, g, b, self.eps)
            self._update_running(mean, var, m)
        self._cache = (x, mean, inv_std)
        return y

    def _update_running(self, mean, var, m):
        mom = self.momentum
        rm, rv = self.running_mean, self.running_var
        xp = get_array_module(rm, rv, mean)     # a buffer on another device: TypeError, not a copy
        unbiased = var * (m / (m - 1.0))
        if xp is numpy:
            self.running_mean = rm * (1.0 - mom) + mean.astype(rm.dtype, copy=False) * mom
            self.running_var = rv * (1.0 - mom) + unbiased.astype(rv.dtype, copy=False) * mom
            return
        # a device: the same roundings, in place, so the buffers keep their addresses and a
        # CUDA graph replays the update (gpunet.cuda.graphs)
        rm *= 1.0 - mom
        rm += mean.astype(rm.dtype, copy=False) * mom
        rv *= 1.0 - mom
        rv += unbiased.astype(rv.dtype, copy=False) * mom
        from ..cuda.graphs import updated_in_place
        updated_in_place(self, "running_mean", "running_var")

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward called before a training-mode forward")
        x, mean, inv_std = self._cache
        half32 = x.dtype == numpy.float16 and getattr(dy, "dtype", None) == numpy.float32
        check_grad(self, dy, x.shape, None if half32 else x.dtype)
        if half32:
            x = x.astype(dy.dtype)          # a float32 dy: backward in float32
        dx, dgamma, dbeta = F.batch_norm_backward(dy, x, self.gamma.data if self.affine else None,
                                                  mean, inv_std)
        if self.affine:     # float32 sums of a float16 model (cast with .to) go back to float16
            self.gamma.accumulate(dgamma.astype(self.gamma.data.dtype, copy=False))
            self.beta.accumulate(dbeta.astype(self.beta.data.dtype, copy=False))
        return dx

    def extra_repr(self):
        a = "" if self.affine else ", affine=False"
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}{a}"


def _momentum(who, value):
    """``momentum`` in [0, 1]; None (PyTorch's cumulative average) names what to pass instead."""
    if value is None:
        raise _args.ArgumentTypeError(f"{who}: expected momentum to be a number in [0, 1], got None; PyTorch's "
                                      f"momentum=None (a cumulative average of every batch) is not offered: "
                                      f"pass a number (the weight of each new batch, 0.1 by default)")
    return _args.real(who, "momentum", value, low=0.0, high=1.0)
