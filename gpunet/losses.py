"""Loss objects: ``loss = loss_fn(prediction, target)`` then ``dpred = loss_fn.backward()``.

Each call computes the loss and its gradient in one pass (see ``gpunet.functional.losses``)
and keeps the gradient for ``backward()``. The loss is a 0-d array on the prediction's
device; ``float(loss)`` works.
"""
from __future__ import annotations

from .functional import losses as F


class Loss:
    def __init__(self):
        self._grad = None

    def __call__(self, prediction, target):
        return self.forward(prediction, target)

    def forward(self, prediction, target):
        raise NotImplementedError

    def backward(self):
        """Gradient of the last computed (mean) loss with respect to the prediction."""
        if self._grad is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before the loss was computed")
        g, self._grad = self._grad, None
        return g

    def __repr__(self):
        return f"{type(self).__name__}()"


class SoftmaxCrossEntropy(Loss):
    """Softmax followed by cross-entropy, fused: mean over the rows not ignored.

    ``labels``: integer class indices ``(N,)`` or probabilities ``(N, C)``.
    ``label_smoothing=ε`` uses the target ``(1-ε)·onehot + ε/C`` (applied to probability
    targets too, as PyTorch does). ``ignore_index``: rows with that label contribute no
    loss and no gradient, and the mean counts only the other rows (all rows ignored gives
    a zero loss and gradient). Gradient: ``(softmax - target) / N``.
    """

    def __init__(self, label_smoothing=0.0, ignore_index=None):
        super().__init__()
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"SoftmaxCrossEntropy: label_smoothing must lie in [0, 1], got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = None if ignore_index is None else int(ignore_index)

    def forward(self, logits, labels):
        loss, self._grad = F.softmax_cross_entropy(logits, labels, self.label_smoothing, self.ignore_index)
        return loss

    def __repr__(self):
        return f"SoftmaxCrossEntropy(label_smoothing={self.label_smoothing}, ignore_index={self.ignore_index})"


CrossEntropyLoss = SoftmaxCrossEntropy


class BCEWithLogits(Loss):
    """Binary cross-entropy on logits: ``mean(max(z,0) - z·y + log1p(e^-|z|))``."""

    def forward(self, z, y):
        loss, self._grad = F.bce_with_logits(z, y)
        return loss


class MSELoss(Loss):
    """Mean squared error over all elements."""

    def forward(self, x, y):
        loss, self._grad = F.mse(x, y)
        return loss
