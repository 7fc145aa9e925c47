"""``SyncBatchNorm``: batch normalization over the global batch of every process.

The statistics of a channel are those of the ``M = Σ_r M_r`` values of all processes'
batches, computed with the same two passes as ``gpunet.functional.batchnorm`` (mean,
then the mean of squared deviations), each pass one all-reduce of per-channel sums::

    mean = allreduce(Σ x) / M,   var = allreduce(Σ (x - mean)²) / M        (biased)
    inv_std = 1/sqrt(var + eps),  y = gamma·(x - mean)·inv_std + beta

Backward, with ``x̂ = (x - mean)·inv_std`` and the sums of ``dy`` and ``dy·x̂`` all-reduced
(one all-reduce of both)::

    dx = gamma·inv_std/M · (M·dy - Σ_all dy - x̂·Σ_all dy·x̂)

Each process's ``dy`` is the gradient of its own loss, so ``dx`` is the gradient of the
sum of the processes' losses; ``dgamma``/``dbeta`` are the local sums. Averaged by
``DistributedOptimizer`` over ``S`` processes, every parameter then gets the gradient of
the mean loss over the global batch: what ``BatchNorm`` gives on one process for the
processes' batches stacked together. The running statistics take the global ``mean``
and the unbiased ``var·M/(M-1)``, identical on every process.

The arithmetic is written with ``xp`` (NumPy or CuPy), not the fused single-device kernels.
"""
from __future__ import annotations

import numpy

from .. import _args
from ..backend import get_array_module
from ..functional import batchnorm as F
from ..layers import BatchNorm
from ..layers.base import _SEQUENCES, Layer, Sequential, _holds_members


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _bcast(x):
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


class SyncBatchNorm(BatchNorm):
    """SyncBatchNorm(num_features, eps=1e-5, momentum=0.1, affine=True, comm=None)

    ``BatchNorm`` whose training-mode statistics (forward and backward) span the batches
    of every process of ``comm`` (``None``: ``gpunet.distributed.init()``). Eval mode and
    the parameters, buffers and ``state_dict`` keys are ``BatchNorm``'s, so a checkpoint
    loads into either. Every process must call forward and backward together. A float16
    input is normalized in float32, as by ``BatchNorm``. ``convert(model, comm)`` replaces
    every ``BatchNorm`` inside a model. ``comm`` may be assigned afterwards (a communicator,
    checked as the argument is; the next training forward reduces over it).
    """

    comm = _args.checked_property("SyncBatchNorm", "comm", "The communicator the statistics are reduced "
                                  "over (checked on assignment).", _args.communicator,
                                  needs=("rank", "size", "allreduce"))

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, comm=None):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine)
        if _args.communicator("SyncBatchNorm", "comm", comm, ("rank", "size", "allreduce"), none=True) is None:
            from .comm import init
            comm = init()
        self.comm = comm

    def forward(self, x):
        if self._half(x):
            return self.forward(x.astype(numpy.float32)).astype(numpy.float16)
        self._check(x)
        g = self.gamma.data if self.affine else None
        b = self.beta.data if self.affine else None
        if not self.training:
            return F.batch_norm_eval(x, self.running_mean, self.running_var, g, b, self.eps)
        xp = get_array_module(x)
        axes, s = _axes(x), _bcast(x)
        c = self.num_features
        half = x.dtype == numpy.float16
        if half:
            # a model cast to float16: statistics in float32, as BatchNorm's (in float16 the
            # count and the sums pass 65504: inf running means, NaN outputs)
            x = x.astype(numpy.float32)
        # one all-reduce for the sums and the count M (exact in floating point below 2**24)
        local = xp.concatenate([x.sum(axis=axes), xp.asarray([x.size // c], dtype=x.dtype)])
        total = self.comm.allreduce(local)
        m = int(round(float(total[c])))
        if m < 2:
            raise ValueError(f"SyncBatchNorm: training needs more than one value per channel over "
                             f"all processes, got {m}")
        mean = total[:c] / m
        xc = x - mean.reshape(s)
        var = self.comm.allreduce((xc * xc).sum(axis=axes)) / m
        inv_std = 1.0 / xp.sqrt(var + self.eps)
        y = xc * inv_std.reshape(s)
        if self.affine:
            y *= g.reshape(s)
            y += b.reshape(s)
        self._update_running(mean, var, m)
        self._cache = (x, mean, inv_std, m)        # x in float32 for a float16 model: the
        # float16 dy of its backward takes the float32 branch there
        return y.astype(numpy.float16) if half else y

    def backward(self, dy):
        if self._cache is None:
            raise RuntimeError("SyncBatchNorm.backward called before a training-mode forward")
        x, mean, inv_std, m = self._cache
        if getattr(dy, "dtype", None) == numpy.float16 and x.dtype == numpy.float32:
            return self.backward(dy.astype(numpy.float32)).astype(numpy.float16)
        if tuple(dy.shape) != tuple(x.shape):
            raise ValueError(f"SyncBatchNorm.backward: expected dy of shape {tuple(x.shape)} (the "
                             f"forward's), got {tuple(dy.shape)}")
        xp = get_array_module(dy, x)
        axes, s = _axes(x), _bcast(x)
        xhat = (x - mean.reshape(s)) * inv_std.reshape(s)
        dbeta = dy.sum(axis=axes)
        dgamma = (dy * xhat).sum(axis=axes)
        c = self.num_features
        sums = self.comm.allreduce(xp.concatenate([dbeta, dgamma]))
        k = inv_std * (1.0 / m)
        if self.affine:
            k = k * self.gamma.data
        dx = dy * float(m)
        dx -= sums[:c].reshape(s)
        dx -= xhat * sums[c:].reshape(s)
        dx *= k.reshape(s)
        if self.affine:     # float32 sums of a float16 model go back to float16, as in BatchNorm
            self.gamma.accumulate(dgamma.astype(self.gamma.data.dtype, copy=False))
            self.beta.accumulate(dbeta.astype(self.beta.data.dtype, copy=False))
        return dx

    def extra_repr(self):
        return super().extra_repr() + f", comm=(rank {self.comm.rank} of {self.comm.size})"

    @classmethod
    def convert(cls, model, comm=None):
        """Replace every ``BatchNorm`` in ``model`` (in place, keeping its parameters and
        buffers) by a ``SyncBatchNorm``; returns the model (or the new layer when ``model``
        itself is a BatchNorm)."""
        def swap(layer):
            if isinstance(layer, BatchNorm) and not isinstance(layer, SyncBatchNorm):
                new = cls(layer.num_features, layer.eps, layer.momentum, layer.affine, comm=comm)
                # the same Parameter objects (an optimizer may hold them) and buffers
                new.gamma, new.beta = layer.gamma, layer.beta
                new.running_mean, new.running_var = layer.running_mean, layer.running_var
                new.training = layer.training
                return new
            if isinstance(layer, Sequential):
                layer.layers = [swap(l) for l in layer.layers]
            else:
                for k, v in list(vars(layer).items()):
                    if isinstance(v, Layer):
                        setattr(layer, k, swap(v))
                    elif type(v) in _SEQUENCES and _holds_members(k, v):   # a ModuleList-like list
                        setattr(layer, k, type(v)(swap(e) if isinstance(e, Layer) else e for e in v))
            return layer
        return swap(model)
