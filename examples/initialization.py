"""Initialization: why not zeros, and why Xavier/He rather than "small random".

1. All-zero weights. Every hidden unit of a layer computes the same function of the
   same input, so backpropagation gives every unit the same gradient, and after any
   number of steps the units are still identical: the rows of the first weight matrix
   stay equal (exactly) and the layer is worth a single unit. (With sigmoid the weights
   do move, symmetrically; with tanh or ReLU, ``act(0) = 0`` and nothing moves at all.)
   Random initialization breaks the symmetry.
2. Scale, through 30 ReLU layers of width 256. A layer multiplies the activations'
   second moment by ``fan_in · Var(W) / 2`` (the 1/2 because ReLU zeroes half the units):

   * small normal, ``std = 0.01``: factor ``256 · 1e-4 / 2 ≈ 0.013`` per layer — the signal
     collapses towards 0 (and its gradient with it);
   * Xavier, ``Var = 2/(fan_in+fan_out) = 1/256``: factor 1/2 — a slow decay, ``2^-15`` in
     std after 30 layers;
   * He, ``Var = 2/fan_in``: factor 1 — the std stays of order 1 at every depth.

Measured: the row spread ``max |W1[i] - W1[0]|`` after training with zero and with Xavier
init (and their test accuracies); the std of each layer's activations at initialization
(``gpunet.diagnostics.activation_stats``) for the three scales.

Run: ``python examples/initialization.py [out_dir]`` (writes initialization.png).
"""
from __future__ import annotations

import numpy

import gpunet
from gpunet import Dense, Sequential, SoftmaxCrossEntropy, Trainer
from gpunet.diagnostics import activation_stats
from gpunet.optim import SGD

from _common import digits, main, pyplot, save

DEEP = 30
DEEP_WIDTH = 256
SCALES = {"small normal (std 0.01)": "normal", "Xavier normal": "xavier_normal", "He normal": "he_normal"}


def train_shallow(init, X, y, Xt, yt, epochs):
    """64 → 32 (sigmoid) → 10, every weight drawn with ``init``; returns (model, history)."""
    gpunet.manual_seed(0)
    model = Sequential(Dense(64, 32, activation="sigmoid", init=init), Dense(32, 10, init=init))
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model, lr=0.1, momentum=0.9))
    hist = trainer.fit((X, y), val=(Xt, yt), epochs=epochs, batch_size=64, seed=0, progress=False)
    return model, hist


def activation_stds(init, X, depth=DEEP, width=DEEP_WIDTH):
    """The std of the output of each of ``depth`` ReLU Dense layers at initialization
    (``gpunet.diagnostics.activation_stats``: the layers run in float32, the statistics
    are taken in float64)."""
    gpunet.manual_seed(0)
    sizes = [X.shape[1]] + [width] * depth
    model = Sequential(*[Dense(a, b, activation="relu", init=init) for a, b in zip(sizes[:-1], sizes[1:])])
    return [s["std"] for s in activation_stats(model, X).values()]


def run(quick=False, out_dir=None):
    (X, y), (Xt, yt) = digits(n_train=400 if quick else None)
    epochs = 4 if quick else 20
    results = {"symmetry": {}, "depth_std": {}}
    weights = {}
    for init in ("zeros", "xavier_uniform"):
        model, hist = train_shallow(init, X, y, Xt, yt, epochs)
        W = model[0].weight.data
        weights[init] = W
        results["symmetry"][init] = {
            "row_spread": float(numpy.abs(W - W[0]).max()),
            "weight_norm": float(numpy.linalg.norm(W)),
            "test_accuracy": hist["val_accuracy"][-1],
        }
    batch = X[:256]
    for label, init in SCALES.items():
        stds = activation_stds(init, batch)
        results["depth_std"][init] = {"std_per_layer": stds, "std_layer_1": stds[0], f"std_layer_{DEEP}": stds[-1]}
    if out_dir is not None:
        results["figure"] = figure(results, weights, out_dir)
    return results


def figure(results, weights, out_dir):
    plt = pyplot()
    fig = plt.figure(figsize=(11, 4))
    grid = fig.add_gridspec(2, 2, width_ratios=(1, 1.3))
    for row, (init, title) in enumerate((("zeros", "all-zero init"), ("xavier_uniform", "Xavier init"))):
        ax = fig.add_subplot(grid[row, 0])
        w = weights[init][:12]
        vmax = max(float(numpy.abs(w).max()), 1e-12)   # each panel on its own scale
        im = ax.imshow(w, cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
        s = results["symmetry"][init]
        ax.set(title=f"{title}, after training: first 12 rows of W1\n"
                     f"row spread {s['row_spread']:.2g}, test acc {s['test_accuracy']:.2f}",
               ylabel="hidden unit")
        ax.title.set_fontsize(9)
        if row == 1:
            ax.set_xlabel("input pixel")
        fig.colorbar(im, ax=ax, fraction=0.04)
    ax = fig.add_subplot(grid[:, 1])
    layers = numpy.arange(1, DEEP + 1)
    for (label, init), marker in zip(SCALES.items(), "o^s"):
        stds = numpy.array(results["depth_std"][init]["std_per_layer"])
        line, = ax.semilogy(layers, numpy.where(stds > 0, stds, numpy.nan), marker=marker, markersize=3,
                            label=f"{label}: layer {DEEP} std {stds[-1]:.1e}")
        if (stds == 0).any():   # the log axis cannot show 0: say where the float32 values underflowed
            k = int(numpy.argmax(stds == 0))
            ax.annotate(f"std = 0 from layer {k + 1} on\n(float32 underflow)", xy=(k, stds[k - 1]),
                        xytext=(0.15, 0.2), textcoords="axes fraction", color=line.get_color(), fontsize=8,
                        arrowprops=dict(arrowstyle="->", color=line.get_color()))
    ax.set(xlabel="ReLU layer", ylabel="std of the layer's activations (log)",
           title=f"Activation std through {DEEP} ReLU layers of width {DEEP_WIDTH}, at init")
    low = min(min(v for v in r["std_per_layer"] if v > 0) for r in results["depth_std"].values())
    ax.set_ylim(bottom=low * 1e-9)   # room for the legend below the curves
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(True, which="major", alpha=0.3)
    return save(fig, out_dir, "initialization.png")


if __name__ == "__main__":
    main(run)
