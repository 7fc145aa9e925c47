"""Ready-made models used by ``gpunet train`` and the benchmarks."""
from __future__ import annotations

from .layers import Dense, Sequential
from .layers import Conv2D, Flatten, MaxPool2D


def mlp(sizes=(64, 256, 128, 10), activation="relu", init=None):
    """A multilayer perceptron: Dense layers of ``sizes[i] -> sizes[i+1]`` with
    ``activation`` between them and raw logits out (pair it with SoftmaxCrossEntropy).
    The default is the ``gpunet train`` model for the 8×8 digits."""
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2:
        raise ValueError(f"mlp: expected at least an input and an output size, got {sizes}")
    layers = [Dense(a, b, activation=activation, init=init) for a, b in zip(sizes[:-2], sizes[1:-1])]
    layers.append(Dense(sizes[-2], sizes[-1], init=init))
    return Sequential(*layers)


def cnn_digits(image_size=8, channels=(16, 32), in_channels=1, num_classes=10):
    """A small CNN for ``(N, in_channels, image_size, image_size)`` images (the 8×8 digits by
    default; ``image_size=28`` for MNIST), raw logits out::

        Conv2D(in, c1, 3, padding=1, relu) → Conv2D(c1, c2, 3, padding=1, relu)
        → MaxPool2D(2) → Flatten → Dense(c2 * (image_size//2)², num_classes)

    On the digits, Adam (lr 1e-3, batch 64, 20 epochs, SoftmaxCrossEntropy) reaches about
    0.99 test accuracy in seconds on a 2-core CPU.
    """
    c1, c2 = (int(c) for c in channels)
    side = int(image_size) // 2
    if side < 1:
        raise ValueError(f"cnn_digits: image_size must be at least 2, got {image_size!r}")
    return Sequential(
        Conv2D(in_channels, c1, 3, padding=1, activation="relu"),
        Conv2D(c1, c2, 3, padding=1, activation="relu"),
        MaxPool2D(2),
        Flatten(),
        Dense(c2 * side * side, num_classes),
    )
