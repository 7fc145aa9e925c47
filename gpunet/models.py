"""Ready-made models used by ``gpunet train`` and the benchmarks."""
from __future__ import annotations

from .layers import Dense, Sequential


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
