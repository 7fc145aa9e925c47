"""Activations, feedforward, backpropagation by the chain rule, the loss, and gradient descent.

1. Activations. ``gpunet.plot.activations`` draws every elementwise activation beside its
   derivative (computed by the same forward/backward functions the layers use): the
   sigmoid's slope never exceeds 1/4, tanh's 1, and ReLU's is exactly 1 for ``z > 0``.
2. Feedforward and backpropagation. A 64 → 16 (tanh) → 10 MLP with softmax
   cross-entropy, computed twice:

   * by gpunet (``model.forward``, ``loss_fn.backward``, ``model.backward``);
   * by hand, one chain-rule factor per line, in float64 NumPy::

         z1 = x W1ᵀ + b1      h = tanh(z1)       z2 = h W2ᵀ + b2      p = softmax(z2)
         L  = -mean log p[y]
         dz2 = (p - onehot(y)) / N               (softmax and cross-entropy together)
         dW2 = dz2ᵀ h         db2 = Σ dz2        dh  = dz2 W2
         dz1 = dh ⊙ (1 - h²)                     (tanh' = 1 - tanh²)
         dW1 = dz1ᵀ x         db1 = Σ dz1

   and checked a third way, by central finite differences (``gpunet.gradcheck``).
3. Gradient descent. ``w ← w - lr·∂L/∂w`` (``optim.SGD``, no momentum) on the digits, at a
   learning rate too small to get anywhere, a good one, and one so large that the loss
   blows up (the Trainer raises ``FloatingPointError`` at the first non-finite loss).

Run: ``python examples/backprop_and_descent.py [out_dir]`` (writes activations.png and
gradient_descent.png).
"""
from __future__ import annotations

import os

import numpy

import gpunet
from gpunet import Dense, Sequential, SoftmaxCrossEntropy, Trainer
from gpunet.functional import activations as FA
from gpunet.optim import SGD

from _common import digits, main, pyplot, save

LEARNING_RATES = (0.003, 0.3, 10.0)


def max_slopes():
    """The largest derivative of sigmoid, tanh and ReLU on [-6, 6], from gpunet's backward."""
    z = numpy.linspace(-6.0, 6.0, 12001)
    out = {}
    for name in ("sigmoid", "tanh", "relu"):
        y = FA.FORWARD[name](z.copy())
        out[name] = float(FA.BACKWARD[name](numpy.ones_like(z), z, y).max())
    return out


def chain_rule_by_hand(model, x, y):
    """The gradients of the mean softmax cross-entropy of a Dense(tanh) → Dense model,
    written out factor by factor (float64 NumPy)."""
    W1, b1 = model[0].weight.data, model[0].bias.data
    W2, b2 = model[1].weight.data, model[1].bias.data
    n = x.shape[0]
    z1 = x @ W1.T + b1
    h = numpy.tanh(z1)
    z2 = h @ W2.T + b2
    e = numpy.exp(z2 - z2.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    loss = float(-numpy.log(p[numpy.arange(n), y]).mean())
    onehot = numpy.eye(z2.shape[1])[y]
    dz2 = (p - onehot) / n
    dW2, db2, dh = dz2.T @ h, dz2.sum(axis=0), dz2 @ W2
    dz1 = dh * (1.0 - h * h)
    dW1, db1 = dz1.T @ x, dz1.sum(axis=0)
    return loss, {"0.weight": dW1, "0.bias": db1, "1.weight": dW2, "1.bias": db2}


def check_backprop(X, y):
    gpunet.manual_seed(0)
    model = Sequential(Dense(64, 16, activation="tanh"), Dense(16, 10))
    for p in model.parameters():                # float64, so the comparison is exact to ~1e-15
        p.data = p.data.astype(numpy.float64)
    x = X[:32].astype(numpy.float64)
    loss_fn = SoftmaxCrossEntropy()
    loss = float(loss_fn(model(x), y[:32]))
    model.zero_grad()
    model.backward(loss_fn.backward())
    hand_loss, hand = chain_rule_by_hand(model, x, y[:32])
    worst = max(float(numpy.abs(p.grad - hand[k]).max() / (numpy.abs(hand[k]).max() + 1e-30))
                for k, p in model.named_parameters())
    return {
        "loss_gpunet": loss,
        "loss_by_hand": hand_loss,
        "max_rel_diff_gpunet_vs_hand": worst,
        "gradcheck_passed": bool(gpunet.gradcheck(model, x[:8])),
    }


def descend(X, y, Xt, yt, lr, epochs):
    gpunet.manual_seed(0)
    model = Sequential(Dense(64, 64, activation="relu"), Dense(64, 10))
    trainer = Trainer(model, SoftmaxCrossEntropy(), SGD(model, lr=lr))
    losses, diverged = [], None
    for epoch in range(epochs):        # epoch by epoch, to keep the curve up to a blow-up
        try:
            with numpy.errstate(over="ignore", invalid="ignore"):   # the blow-up is the point at lr=10
                h = trainer.fit((X, y), epochs=epoch + 1, initial_epoch=epoch, batch_size=64, seed=0,
                                progress=False)
        except FloatingPointError as e:
            diverged = str(e)
            break
        losses.append(h["loss"][-1])
    acc = trainer.evaluate((Xt, yt))["accuracy"] if diverged is None else float("nan")
    return {"train_loss_per_epoch": losses, "final_train_loss": losses[-1] if losses else float("nan"),
            "test_accuracy": acc, "diverged": diverged}


def run(quick=False, out_dir=None):
    (X, y), (Xt, yt) = digits(n_train=500 if quick else None)
    epochs = 5 if quick else 20
    results = {"max_slope": max_slopes(), "backprop": check_backprop(X, y), "gradient_descent": {}}
    for lr in LEARNING_RATES:
        results["gradient_descent"][f"lr={lr:g}"] = descend(X, y, Xt, yt, lr, epochs)
    if out_dir is not None:
        from gpunet.plot import activations
        os.makedirs(out_dir, exist_ok=True)
        results["figure_activations"] = activations(os.path.join(out_dir, "activations.png"))
        results["figure"] = figure(results, out_dir)
    return results


def figure(results, out_dir):
    plt = pyplot()
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    for (label, r), marker in zip(results["gradient_descent"].items(), "o^s"):
        ys = r["train_loss_per_epoch"]
        ep = numpy.arange(1, len(ys) + 1)
        if r["diverged"]:
            label += f": diverged (nan/inf in epoch {len(ys) + 1})"
        else:
            label += f": test acc {r['test_accuracy']:.2f}"
        line, = ax1.semilogy(ep, ys, marker=marker, markersize=4, label=label)
        if not r["diverged"]:
            ax0.plot(ep, ys, marker=marker, markersize=4, color=line.get_color(), label=label)
        else:
            ax1.plot([len(ys) + 1], [ys[-1] if ys else 1.0], "x", color="red", markersize=12, mew=3,
                     label="loss became nan/inf: training stopped")
    ax0.set(xlabel="epoch", ylabel="mean training loss", title="Too small a step crawls; a good one converges",
            ylim=(0, None))
    ax1.set(xlabel="epoch", ylabel="mean training loss (log)", title="Too large a step diverges")
    for ax in (ax0, ax1):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle("Gradient descent w ← w − lr·∂L/∂w (SGD, no momentum), MLP 64-64-10 on digits", fontsize=10)
    return save(fig, out_dir, "gradient_descent.png")


if __name__ == "__main__":
    main(run)
