"""Vanishing gradients: a 10-layer sigmoid MLP against the same MLP with ReLU and He init.

Backpropagation multiplies the gradient, layer by layer, by ``W^T`` and by the
activation's derivative. The sigmoid's derivative ``σ(1-σ)`` is at most 1/4, so through
nine hidden layers the gradient reaching the first layer shrinks by about ``4^-9``: the
first layer's weight gradient is orders of magnitude below the last layer's, and the
early layers barely learn. ReLU's derivative is 1 where the unit is active, and He's
``std = sqrt(2/fan_in)`` makes up for the half of the units that are off, so the
gradient norm stays of the same order from the last layer to the first.

Measured: the norm of each Dense layer's weight gradient on one batch at initialization
(``gpunet.diagnostics.grad_norms``), its first/last ratio, the same ratio at the last
step of training (``gpunet.diagnostics.DiagnosticsCallback``), and the test accuracy after
training both nets with the same optimizer.

Run: ``python examples/vanishing_gradients.py [out_dir]`` (writes vanishing_gradients.png).
"""
from __future__ import annotations

import numpy

import gpunet
from gpunet import Dense, Sequential, SoftmaxCrossEntropy, Trainer
from gpunet.diagnostics import DiagnosticsCallback, grad_norms
from gpunet.optim import SGD

from _common import digits, main, pyplot, save

DEPTH = 10          # Dense layers, the output layer included
WIDTH = 64
LR = 0.02
NETS = {"sigmoid": ("sigmoid", "xavier_uniform"), "relu_he": ("relu", "he_normal")}
LABELS = {"sigmoid": "sigmoid, Xavier init", "relu_he": "ReLU, He init"}


def build(activation, init, depth=DEPTH, width=WIDTH, seed=0):
    """``depth`` Dense layers 64 → width → … → 10; ``activation`` on all but the last."""
    gpunet.manual_seed(seed)
    sizes = [64] + [width] * (depth - 1) + [10]
    layers = [Dense(a, b, activation=activation, init=init) for a, b in zip(sizes[:-2], sizes[1:-1])]
    layers.append(Dense(sizes[-2], sizes[-1], init=init))
    return Sequential(*layers)


def weight_grad_norms(model, X, y):
    """One forward/backward of the mean cross-entropy on ``(X, y)``; returns the L2 norm
    of every Dense layer's weight gradient (``gpunet.diagnostics.grad_norms``), first
    layer first."""
    loss_fn = SoftmaxCrossEntropy()
    model.train()
    model.zero_grad()
    loss_fn(model(X), y)
    model.backward(loss_fn.backward())
    norms = grad_norms(model)       # {"0.weight": ..., "0.bias": ..., "1.weight": ...}
    model.zero_grad()
    return [v for k, v in norms.items() if k.endswith(".weight")]


def run(quick=False, out_dir=None):
    (X, y), (Xt, yt) = digits()
    epochs = 3 if quick else 30
    batch = X[:512], y[:512]
    results, histories = {}, {}
    for key, (activation, init) in NETS.items():
        model = build(activation, init)
        norms = weight_grad_norms(model, *batch)
        trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model, lr=LR, momentum=0.9))
        hist = trainer.fit((X, y), val=(Xt, yt), epochs=epochs, batch_size=64, seed=0, progress=False,
                           callbacks=[DiagnosticsCallback()])     # grad_norm/<name> per epoch
        histories[key] = hist
        last = f"grad_norm/{DEPTH - 1}.weight"
        results[key] = {
            "grad_norms": norms,
            "first_last_ratio": norms[0] / norms[-1],
            "test_accuracy": hist["val_accuracy"][-1],
            # the same ratio at the last step of training: training does not cure it
            "first_last_ratio_after_training": hist["grad_norm/0.weight"][-1] / hist[last][-1],
        }
    if out_dir is not None:
        results["figure"] = figure(results, histories, out_dir)
    return results


def figure(results, histories, out_dir):
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(10, 4))
    layers = numpy.arange(1, DEPTH + 1)
    for key, marker in (("sigmoid", "o"), ("relu_he", "s")):
        r = results[key]
        ax0.semilogy(layers, r["grad_norms"], marker=marker,
                     label=f"{LABELS[key]} (first/last = {r['first_last_ratio']:.1e})")
        ax1.plot(numpy.arange(1, len(histories[key]["loss"]) + 1), histories[key]["loss"], marker=marker,
                 markersize=3, label=f"{LABELS[key]} (test acc {r['test_accuracy']:.2f})")
    ax0.set(xlabel="Dense layer (1 = input side)", ylabel="‖∂L/∂W‖ at initialization (log)",
            title=f"Per-layer gradient norm, {DEPTH}-layer MLP", xticks=layers)
    ax0.legend(fontsize=8)
    ax0.grid(True, which="both", alpha=0.3)
    ax1.set(xlabel="epoch", ylabel="training loss (cross-entropy)",
            title=f"Training on digits, SGD lr {LR}, momentum 0.9")
    ax1.xaxis.get_major_locator().set_params(integer=True)
    ax1.legend(fontsize=8)
    ax1.grid(True, alpha=0.3)
    return save(fig, out_dir, "vanishing_gradients.png")


if __name__ == "__main__":
    main(run)
