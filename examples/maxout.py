"""Maxout against ReLU.

A maxout unit outputs the largest of ``k`` affine functions of its input,
``h_j = max_{i<k} (w_{j,i}·x + b_{j,i})``. In gpunet that is a Dense layer with ``k``
times the units followed by ``Maxout(k)``, which takes the max over consecutive groups
of ``k`` channels. The activation is learned: a max of affine pieces is convex and
piecewise linear, so ReLU (``max(0, z)``), leaky ReLU and ``|z|`` are 2-piece special
cases, and more pieces approximate any convex function.

Measured: test accuracy and final training loss of a 2-hidden-layer ReLU MLP (width 64)
and of the same MLP with maxout units (``k = 2`` and ``k = 3``, hence 2× and 3× the
weights in the hidden Dense layers), trained identically; and the left panel of the
figure runs ``Maxout`` on three 1-D examples to show the functions it forms.

Run: ``python examples/maxout.py [out_dir]`` (writes maxout.png).
"""
from __future__ import annotations

import numpy

import gpunet
from gpunet import Dense, Maxout, Sequential, SoftmaxCrossEntropy, Trainer
from gpunet.optim import SGD

from _common import digits, main, pyplot, save

WIDTH = 64
MODELS = {"ReLU": None, "maxout, k=2": 2, "maxout, k=3": 3}


def build(pieces, width=WIDTH):
    """64 → width → width → 10 with ReLU units (``pieces=None``) or maxout units of ``pieces``."""
    gpunet.manual_seed(0)
    if pieces is None:
        return Sequential(Dense(64, width, activation="relu"), Dense(width, width, activation="relu"),
                          Dense(width, 10))
    return Sequential(Dense(64, width * pieces), Maxout(pieces),
                      Dense(width, width * pieces), Maxout(pieces),
                      Dense(width, 10))


def maxout_of_pieces(z, slopes, intercepts):
    """``max_i (slopes[i]·z + intercepts[i])`` computed by ``gpunet.Maxout``: the pieces are
    the channels of one group, shape ``(N, k) → (N, 1)``."""
    pieces = numpy.stack([a * z + b for a, b in zip(slopes, intercepts)], axis=1).astype(numpy.float32)
    return Maxout(len(slopes)).eval()(pieces)[:, 0]


def run(quick=False, out_dir=None):
    (X, y), (Xt, yt) = digits(n_train=600 if quick else None)
    epochs = 4 if quick else 20
    results, histories = {}, {}
    for label, pieces in MODELS.items():
        model = build(pieces)
        trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model, lr=0.05, momentum=0.9))
        hist = trainer.fit((X, y), val=(Xt, yt), epochs=epochs, batch_size=64, seed=0, progress=False)
        histories[label] = hist
        results[label] = {
            "params": sum(int(numpy.prod(p.shape)) for p in model.parameters()),
            "test_accuracy": hist["val_accuracy"][-1],
            "best_test_accuracy": max(hist["val_accuracy"]),
            "final_train_loss": hist["loss"][-1],
        }
    z = numpy.linspace(-2.0, 2.0, 9)
    results["maxout_1d"] = {
        "relu_equals_max(0,z)": bool(numpy.array_equal(maxout_of_pieces(z, (0.0, 1.0), (0.0, 0.0)),
                                                       numpy.maximum(z, 0.0).astype(numpy.float32))),
        "abs_equals_max(z,-z)": bool(numpy.array_equal(maxout_of_pieces(z, (1.0, -1.0), (0.0, 0.0)),
                                                       numpy.abs(z).astype(numpy.float32))),
    }
    if out_dir is not None:
        results["figure"] = figure(results, histories, out_dir)
    return results


def figure(results, histories, out_dir):
    plt = pyplot()
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(14, 4))
    z = numpy.linspace(-2.0, 2.0, 401)
    for label, slopes, intercepts, style in (("k=2: max(0, z) = ReLU", (0.0, 1.0), (0.0, 0.0), dict(lw=4, alpha=0.6)),
                                             ("k=2: max(z, −z) = |z|", (1.0, -1.0), (0.0, 0.0), dict(lw=1.5, ls="--")),
                                             ("k=3: max(−z−1, 0.2z, 1.5z−0.8)", (-1.0, 0.2, 1.5), (-1.0, 0.0, -0.8),
                                              dict(lw=2))):
        ax0.plot(z, maxout_of_pieces(z, slopes, intercepts), label=label, **style)
    ax0.set(xlabel="z", ylabel="Maxout output", title="Maxout: the max of k affine pieces")
    for label, h in histories.items():
        ep = numpy.arange(1, len(h["loss"]) + 1)
        r = results[label]
        ax1.semilogy(ep, h["loss"], marker="o", markersize=3, label=f"{label} ({r['params']:,} params)")
        ax2.plot(ep, h["val_accuracy"], marker="o", markersize=3, label=f"{label}: {r['test_accuracy']:.3f}")
    ax1.set(xlabel="epoch", ylabel="training loss (log)", title=f"Digits, 2 hidden layers of {WIDTH} units")
    ax2.set(xlabel="epoch", ylabel="test accuracy", title="Test accuracy (final in legend)")
    for ax in (ax0, ax1, ax2):
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save(fig, out_dir, "maxout.png")


if __name__ == "__main__":
    main(run)
