"""Loss objects: ``loss = loss_fn(prediction, target)`` then ``dpred = loss_fn.backward()``.

Each call computes the loss and its gradient in one pass (see ``gpunet.functional.losses``)
and keeps the gradient for ``backward()``. The loss is on the prediction's device, in its
dtype (``SoftmaxCrossEntropy`` of float16 logits: a float32 loss, a float16 gradient).

``reduction`` (every loss; PyTorch's meanings): ``"mean"`` (default) gives a 0-d array,
``float(loss)`` works; ``"sum"`` a 0-d array of the sum of the per-row (per-element)
losses; ``"none"`` those losses unreduced (``(N,)`` for ``SoftmaxCrossEntropy``, the
prediction's shape for the elementwise losses). ``backward()`` returns the gradient of the
reduced loss, and for ``"none"`` the gradient of the *sum* of the unreduced losses — what
PyTorch's ``loss.backward(torch.ones_like(loss))`` gives. An empty batch raises
``ValueError`` naming the loss and the shape, whatever the reduction (a loss of nothing is a
bug upstream, not 0).

``reduction``, ``label_smoothing`` and ``ignore_index`` may be assigned afterwards: they are
checked as the arguments are (``loss.reduction = "avg"`` raises ``ValueError`` then, not at
the next call) and the next call uses them.
"""
from __future__ import annotations

import warnings

import numpy

from . import _args
from .backend import get_array_module
from .functional import losses as F
from .layers.base import output_activation, register_loss_gradient


def _probability_rows(prediction) -> bool:
    """Whether ``prediction`` (``(N, C)`` floats, ``C >= 2``) looks like a softmax's output:
    every value in ``[0, 1]``, not all of them exactly 0 or 1 (one-hot rows), and every row
    summing to 1 within ``4 * C`` units of rounding of its dtype, at most 0.01 (a softmax's
    rounding; the sum is taken in float64). Run once per loss object, at its first call (one host sync
    on a device), for probabilities that no model's last layer made (``gpunet.Softmax()``
    built on the spot, ``functional.softmax``): raw logits of real data meet all of it only
    by a coincidence of the order of that tolerance per row."""
    if not (getattr(prediction, "ndim", 0) == 2 and prediction.shape[1] >= 2
            and getattr(getattr(prediction, "dtype", None), "kind", "") == "f"):
        return False
    xp = get_array_module(prediction)
    p = prediction.astype(xp.float64)
    c = int(prediction.shape[1])
    tol = min(4 * c * float(numpy.finfo(prediction.dtype).eps), 0.01)
    inside = (p >= 0) & (p <= 1)
    strict = (p > 0) & (p < 1)
    return bool(inside.all() & strict.any() & (xp.abs(p.sum(axis=1) - 1) <= tol).all())


# other frameworks' keywords of their losses, and what gpunet has instead (_args.unexpected_keyword)
_REDUCE = ("reduction='mean', 'sum' or 'none', PyTorch's own replacement for reduce and size_average",
           "PyTorch's")
_OTHER_NAMES = {
    "from_logits": "gpunet's losses take raw logits (Keras' from_logits=True) and no other input: end "
                   "the model without its softmax or sigmoid",
    "weight": ("gpunet has no class weights (resample the rarer classes, or write a Loss of your own)",
               "PyTorch's"),
    "pos_weight": ("gpunet has no pos_weight (resample the positive samples, or write a Loss of your "
                   "own)", "PyTorch's"),
    "reduce": _REDUCE,
    "size_average": _REDUCE,
}


class Loss:
    """Base of the losses: ``loss = loss_fn(prediction, target)`` runs ``forward`` and keeps
    the gradient it computed, which ``backward()`` hands out once.

    A loss of your own (what the errors for PyTorch's ``weight=`` or Keras' ``class_weight=``
    suggest): subclass ``Loss``, call ``super().__init__()`` (it takes ``reduction``), and
    define ``forward(prediction, target)`` that returns the loss (a 0-d array, the mean over
    the batch for the default ``reduction="mean"``, which is how ``Trainer`` weighs it) and
    sets ``self._grad`` to its gradient with respect to ``prediction`` (same shape, dtype
    and device): gpunet has no autograd, so the gradient is written by hand, as a layer's
    backward is. For instance a weighted squared error::

        class WeightedMSE(gpunet.losses.Loss):
            def __init__(self, w):
                super().__init__()
                self.w = w                                  # per output column, (C,)
            def forward(self, x, y):
                d = x - y
                self._grad = 2 * self.w * d / d.size         # d(mean)/dx
                return (self.w * d * d).sum() / d.size

    A ``forward`` that sets no gradient raises ``NotImplementedError`` at the call.
    """

    #: the output activation this loss applies itself (a model that applies it too, as Keras'
    #: Dense(10, activation="softmax") does, is warned about at the loss's first call)
    _applies = None
    _hint = ""
    _checked_input = True
    _other_names = _OTHER_NAMES
    reduction = _args.checked_property(None, "reduction", "'mean', 'sum' or 'none' (checked on assignment).",
                                       lambda who, name, value: F.check_reduction(who, value))

    def __init__(self, reduction="mean", **unknown):
        if unknown:
            raise _args.unexpected_keyword(type(self).__name__, unknown, self._other_names)
        self.reduction = reduction
        self._grad = None
        if self._applies is not None:
            self._checked_input = False

    def __call__(self, prediction, target):
        if hasattr(prediction, "shape") and hasattr(prediction, "size") and prediction.size == 0:
            raise ValueError(f"{type(self).__name__}: expected a non-empty batch, got a prediction "
                             f"of shape {tuple(prediction.shape)}")
        if not self._checked_input:
            self._check_input(prediction, stacklevel=3)
        self._grad = None
        loss = self.forward(prediction, target)
        if self._grad is None:      # a Loss of your own whose forward set no gradient
            raise NotImplementedError(
                f"{type(self).__name__}.forward returned the loss without its gradient: a gpunet loss "
                f"computes the gradient with respect to the prediction in forward and keeps it in "
                f"self._grad, which backward() hands out (gpunet has no autograd; see "
                f"help(gpunet.losses.Loss))")
        self._handed_out = False
        # remember which output this gradient belongs to: the backward of the layer that
        # produced ``prediction`` checks that its caches come from that same forward
        register_loss_gradient(self._grad, prediction, f"the {type(self).__name__} loss")
        return loss

    def _check_input(self, prediction, stacklevel=2):
        """The checks of the loss's first call (once per loss object: nothing per step),
        that the prediction is logits: a warning when it is the output of the activation
        this loss applies itself (or, for the softmax, looks like one), or of one column.
        ``Trainer.fit`` runs them before training on the output of one sample, so that on
        a device the first step syncs no more than the others."""
        self._checked_input = True
        if output_activation(prediction) == self._applies:
            warnings.warn(f"{type(self).__name__}: the prediction is the output of a {self._applies} "
                          f"(the model's last layer), but this loss applies the {self._applies} "
                          f"itself and expects raw logits; applied twice it trains slowly and badly. "
                          f"Remove the model's output {self._applies}{self._hint}",
                          UserWarning, stacklevel=stacklevel)
        elif self._applies == "softmax" and _probability_rows(prediction):
            warnings.warn(f"{type(self).__name__}: every row of the prediction is in [0, 1] and sums "
                          f"to 1, as a softmax's output does, but this loss applies the softmax itself "
                          f"and expects raw logits (Keras' from_logits=True); applied twice it trains "
                          f"slowly and badly. Pass the logits, the input of the softmax{self._hint}",
                          UserWarning, stacklevel=stacklevel)
        if self._applies == "softmax" and getattr(prediction, "ndim", 0) == 2 and prediction.shape[1] == 1:
            warnings.warn(f"{type(self).__name__}: the logits have 1 column: the softmax of one column "
                          f"is 1 whatever the logit, so the loss and its gradient are 0 and nothing "
                          f"trains. Two classes with one output go with BCEWithLogits() and float 0/1 "
                          f"targets of shape (N, 1); else give the last layer one output per class",
                          UserWarning, stacklevel=stacklevel)

    def forward(self, prediction, target):
        raise NotImplementedError

    def backward(self):
        """Gradient with respect to the prediction of the last computed loss: of the mean
        (``reduction="mean"``), of the sum (``"sum"``), or of the sum of the unreduced
        losses (``"none"``)."""
        if self._grad is None:
            if getattr(self, "_handed_out", False):
                raise RuntimeError(f"{type(self).__name__}.backward: the gradient of the last loss "
                                   "was already returned by an earlier backward(); compute the loss "
                                   "again before the next backward")
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        g, self._grad = self._grad, None
        self._handed_out = True
        return g

    def __repr__(self):
        return f"{type(self).__name__}(reduction={self.reduction!r})"


class SoftmaxCrossEntropy(Loss):
    """Softmax followed by cross-entropy, fused.

    ``labels``: integer class indices ``(N,)`` or probabilities ``(N, C)``.
    ``label_smoothing=ε`` uses the target ``(1-ε)·onehot + ε/C`` (applied to probability
    targets too, as PyTorch does). ``ignore_index``: rows with that label have loss 0 and
    no gradient. ``reduction="mean"`` averages over the rows not ignored, with gradient
    ``(softmax - target) / N_valid``; ``"sum"`` adds the row losses (gradient
    ``softmax - target``); ``"none"`` returns the ``(N,)`` row losses, 0 on ignored rows,
    as PyTorch. All rows ignored gives a zero loss and gradient (PyTorch's mean gives NaN).

    dtypes: class indices of any integer dtype (PyTorch takes int64 and uint8 only; int32
    and int16 come from files); float or bool ones raise ``ValueError`` with the cast. The
    loss and gradient are in the logits' dtype (probability targets are read in it: float64
    ones keep a float32 model's loss float32, where PyTorch promotes it to float64), except
    for float16 logits, whose loss is float32 (gradient float16).

    The logits are the raw outputs of the last layer: a model ending in a softmax (Keras'
    ``Dense(10, activation="softmax")``, whose loss takes ``from_logits=False``) gets a
    ``UserWarning`` at the loss's first call, as Keras warns when ``from_logits=True`` meets
    a softmax output; so do logits of one column (the loss of one class is 0 whatever the
    model does: PyTorch computes it without a word), and, when no model's last layer made
    them, predictions whose every row is in ``[0, 1]`` and sums to 1 (a softmax applied on
    the spot, ``gpunet.Softmax()(logits)``): checked at the first call only, at the cost of
    one pass (and on a device one sync) then; loss values are the same either way.
    """

    _applies = "softmax"
    _hint = " (the argmax of the logits is the predicted class; gpunet.Softmax() of them the probabilities)."

    label_smoothing = _args.checked_property("SoftmaxCrossEntropy", "label_smoothing", "A number in [0, 1] "
                                             "(checked on assignment).",
                                             lambda who, name, value: F.check_label_smoothing(who, value))
    ignore_index = _args.checked_property("SoftmaxCrossEntropy", "ignore_index", "None or the label whose "
                                          "rows are left out (an int; checked on assignment).",
                                          _args.integer, none=True)

    _other_names = {**_OTHER_NAMES, "ignore_class": "ignore_index="}

    def __init__(self, label_smoothing=0.0, ignore_index=None, reduction="mean", **unknown):
        super().__init__(reduction, **unknown)
        self.label_smoothing = label_smoothing
        self.ignore_index = ignore_index

    def forward(self, logits, labels):
        loss, self._grad = F.softmax_cross_entropy(logits, labels, self.label_smoothing,
                                                   self.ignore_index, self.reduction)
        return loss

    def __repr__(self):
        return (f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing}, "
                f"ignore_index={self.ignore_index}, reduction={self.reduction!r})")


CrossEntropyLoss = SoftmaxCrossEntropy


class BCEWithLogits(Loss):
    """Binary cross-entropy on logits, elementwise ``max(z,0) - z·y + log1p(e^-|z|)``,
    reduced by ``reduction`` (``"mean"`` over all elements, ``"sum"``, ``"none"``).

    ``z`` are raw logits: a model ending in a sigmoid gets a ``UserWarning`` at the loss's
    first call (see ``SoftmaxCrossEntropy``).

    The loss and its gradient are in ``z``'s dtype: ``y`` is read in it (``y.astype(z.dtype)``),
    so float64 targets from pandas or sklearn keep a float32 model's loss float32, where
    PyTorch promotes the loss to float64; bool and integer 0/1 targets (masks, labels) are
    taken as numbers, where PyTorch's ``binary_cross_entropy_with_logits`` refuses them."""

    _applies = "sigmoid"
    _hint = " (a logit above 0 is a probability above 0.5)."

    def forward(self, z, y):
        loss, self._grad = F.bce_with_logits(z, y, self.reduction)
        return loss


class MSELoss(Loss):
    """Squared error ``(x - y)²``, reduced by ``reduction`` (``"mean"`` over all elements,
    ``"sum"``, ``"none"``).

    The loss and its gradient are in ``x``'s dtype: ``y`` is read in it (``y.astype(x.dtype)``),
    so float64 or integer regression targets keep a float32 model's loss float32, where
    PyTorch promotes ``mse_loss`` of a float32 input and a float64 target to float64."""

    def forward(self, x, y):
        loss, self._grad = F.mse(x, y, self.reduction)
        return loss
