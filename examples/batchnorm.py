"""Batch normalization: a deep sigmoid net that stalls, trained at the same learning rate
with BN before and with BN after the activation.

An 8-hidden-layer sigmoid MLP (width 64) with plain SGD at ``lr = 1.0`` does not learn:
the gradient vanishes through the sigmoids (see ``vanishing_gradients.py``) and the loss
stays at ``log 10 ≈ 2.30``, chance level. ``BatchNorm`` normalizes each unit over the
batch, ``x̂ = (x - mean_B) / sqrt(var_B + eps)``, then ``y = gamma·x̂ + beta``, so every
layer's input keeps a controlled scale whatever the weights before it do, and the same
learning rate trains the net.

Where BN goes is the user's choice (the original paper puts it before the
nonlinearity; many practitioners put it after), and gpunet takes no position: it is a
layer like any other. Both are shown:

* before: ``Dense(bias=False) → BatchNorm → Sigmoid`` (BN's ``beta`` replaces the bias);
* after: ``Dense(activation="sigmoid") → BatchNorm``.

Validation runs in eval mode, with the running statistics (PyTorch's convention,
``running = 0.9·running + 0.1·batch``).

Measured: training loss and validation accuracy per epoch, and the first/last ratio of
the per-layer weight-gradient norms at initialization.

Run: ``python examples/batchnorm.py [out_dir]`` (writes batchnorm.png).
"""
from __future__ import annotations

import numpy

import gpunet
from gpunet import BatchNorm, Dense, Sequential, Sigmoid, SoftmaxCrossEntropy, Trainer
from gpunet.diagnostics import grad_norms
from gpunet.optim import SGD

from _common import digits, main, pyplot, save

HIDDEN = 8
WIDTH = 64
LR = 1.0
PLACEMENTS = {"no BN": "none", "BN before sigmoid": "before", "BN after sigmoid": "after"}


def build(placement, hidden=HIDDEN, width=WIDTH):
    gpunet.manual_seed(0)
    layers, fan_in = [], 64
    for _ in range(hidden):
        if placement == "none":
            layers.append(Dense(fan_in, width, activation="sigmoid"))
        elif placement == "before":
            layers += [Dense(fan_in, width, bias=False), BatchNorm(width), Sigmoid()]
        elif placement == "after":
            layers += [Dense(fan_in, width, activation="sigmoid"), BatchNorm(width)]
        else:
            raise ValueError(f"placement must be 'none', 'before' or 'after', got {placement!r}")
        fan_in = width
    layers.append(Dense(fan_in, 10))
    return Sequential(*layers)


def grad_norms_at_init(model, X, y):
    loss_fn = SoftmaxCrossEntropy()
    loss_fn(model(X), y)
    model.backward(loss_fn.backward())
    norms = [v for k, v in grad_norms(model).items() if k.endswith(".weight")]   # the Dense layers
    model.zero_grad()
    return norms


def run(quick=False, out_dir=None):
    (X, y), (Xt, yt) = digits()
    epochs = 5 if quick else 20
    results, histories = {}, {}
    for label, placement in PLACEMENTS.items():
        model = build(placement)
        norms = grad_norms_at_init(model, X[:512], y[:512])
        trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model, lr=LR))
        hist = trainer.fit((X, y), val=(Xt, yt), epochs=epochs, batch_size=64, seed=0, progress=False)
        histories[label] = hist
        results[label] = {
            "final_train_loss": hist["loss"][-1],
            "val_accuracy": hist["val_accuracy"][-1],
            "grad_norms_at_init": norms,
            "first_last_grad_ratio": norms[0] / norms[-1],
        }
    if out_dir is not None:
        results["figure"] = figure(results, histories, out_dir)
    return results


def figure(results, histories, out_dir):
    plt = pyplot()
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(14, 4))
    for (label, h), marker in zip(histories.items(), "o^s"):
        ep = numpy.arange(1, len(h["loss"]) + 1)
        ax0.plot(ep, h["loss"], marker=marker, markersize=3, label=label)
        ax1.plot(ep, h["val_accuracy"], marker=marker, markersize=3,
                 label=f"{label}: {results[label]['val_accuracy']:.2f}")
        norms = results[label]["grad_norms_at_init"]
        ax2.semilogy(numpy.arange(1, len(norms) + 1), norms, marker=marker, markersize=4,
                     label=f"{label} (first/last {results[label]['first_last_grad_ratio']:.1e})")
    ax0.axhline(numpy.log(10.0), color="gray", ls=":", label="chance level, log 10")
    ax0.set(xlabel="epoch", ylabel="training loss (cross-entropy)",
            title=f"{HIDDEN} sigmoid layers, SGD lr {LR}")
    ax1.set(xlabel="epoch", ylabel="validation accuracy (eval mode)", title="Validation accuracy", ylim=(0, 1))
    ax2.set(xlabel="Dense layer (1 = input side)", ylabel="‖∂L/∂W‖ at initialization (log)",
            title="Per-layer gradient norm at init")
    for ax in (ax0, ax1, ax2):
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in (ax0, ax1):
        ax.xaxis.get_major_locator().set_params(integer=True)
    return save(fig, out_dir, "batchnorm.png")


if __name__ == "__main__":
    main(run)
