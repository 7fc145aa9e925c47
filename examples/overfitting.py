"""Under- and overfitting, and the regularizers that close the gap.

The set-up is a small training set: the first 200 digits, of which 20 % carry a wrong
label (flipped to a random class with a fixed seed). The wrong labels stand in for the
noise of real data: a model with enough capacity memorizes them, which is what
overfitting looks like — training loss near 0, validation loss far above it. The
validation set is the 360 test digits, with their true labels.

1. Capacity sweep. One hidden layer of 2, 8, 32, 128 units, then two of 256: the tiny
   models underfit (high training *and* validation loss, a small gap); the large one
   fits the training set perfectly, wrong labels included, and has the largest gap
   ``val_loss - train_loss``.
2. The large model again, regularized:

   * dropout (input 0.2, hidden 0.5; inverted, and once in the course's classic form);
   * L2 weight decay, ``g += λ·w`` (``Adam(weight_decay=λ)``);
   * L1, ``g += λ·sign(w)`` (``Adam(l1=λ)``), which drives weights to about 0 (a
     subgradient step: they hover within about one update of 0, not at exactly 0);
   * early stopping on ``val_loss`` with the best weights restored.

   Each one trades a little training fit for a smaller gap.

"Train" numbers are measured in eval mode on the training set after training (dropout
off), so they compare with the validation numbers; both use the noisy/true labels above.

Run: ``python examples/overfitting.py [out_dir]`` (writes overfitting.png).
"""
from __future__ import annotations

import numpy

import gpunet
from gpunet import Callback, Dense, Dropout, EarlyStopping, Sequential, SoftmaxCrossEntropy, Trainer
from gpunet.optim import Adam

from _common import digits, main, pyplot, save

N_TRAIN = 200
LABEL_NOISE = 0.2
LR = 1e-3
CAPACITIES = [(2,), (8,), (32,), (128,), (256, 256)]
LARGE = (256, 256)
REGULARIZERS = {
    "none": {},
    "dropout": {"dropout": (0.2, 0.5)},
    "dropout (classic)": {"dropout": (0.2, 0.5), "mode": "classic"},
    "L2 (λ=0.03)": {"weight_decay": 0.03},
    "L1 (λ=0.003)": {"l1": 0.003},
    "early stopping": {"early_stopping": 10},
}


def noisy_subset():
    """The training subset with ``LABEL_NOISE`` of its labels replaced by random classes,
    and the (clean) validation set."""
    (X, y), (Xv, yv) = digits(n_train=N_TRAIN)
    rng = numpy.random.default_rng(0)
    flip = rng.random(len(y)) < LABEL_NOISE
    y = y.copy()
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    return (X, y), (Xv, yv)


def build(hidden, dropout=None, mode="inverted"):
    """ReLU MLP 64 → hidden… → 10; ``dropout=(p_input, p_hidden)`` adds Dropout layers."""
    gpunet.manual_seed(0)
    layers, fan_in = [], 64
    if dropout:
        layers.append(Dropout(dropout[0], mode=mode, seed=100))
    for i, width in enumerate(hidden):
        layers.append(Dense(fan_in, width, activation="relu"))
        if dropout:
            layers.append(Dropout(dropout[1], mode=mode, seed=101 + i))
        fan_in = width
    layers.append(Dense(fan_in, 10))
    return Sequential(*layers)


class TrainSetLoss(Callback):
    """Adds ``train_eval_loss``: the loss on the training set in eval mode (dropout off),
    after each epoch; the running ``loss`` of a dropout net is measured with dropout on."""

    def __init__(self, data):
        self.data = data

    def on_epoch_end(self, trainer, epoch, logs):
        logs["train_eval_loss"] = trainer.evaluate(self.data)["loss"]


def fit(hidden, train, val, epochs, dropout=None, mode="inverted", weight_decay=0.0, l1=0.0, early_stopping=None):
    model = build(hidden, dropout, mode)
    trainer = Trainer(model, SoftmaxCrossEntropy(), Adam(model, lr=LR, weight_decay=weight_decay, l1=l1))
    callbacks = [TrainSetLoss(train)]
    stopper = None
    if early_stopping:
        stopper = EarlyStopping(monitor="val_loss", patience=early_stopping, restore_best=True)
        callbacks.append(stopper)
    hist = trainer.fit(train, val=val, epochs=epochs, batch_size=32, seed=0, callbacks=callbacks, progress=False)
    tr, va = trainer.evaluate(train), trainer.evaluate(val)
    out = {
        "params": sum(int(numpy.prod(p.shape)) for p in model.parameters()),
        "train_loss": tr["loss"], "val_loss": va["loss"],
        "train_accuracy": tr["accuracy"], "val_accuracy": va["accuracy"],
        "gap_loss": va["loss"] - tr["loss"], "gap_accuracy": tr["accuracy"] - va["accuracy"],
        "epochs_run": len(hist.epoch),
    }
    if stopper is not None:
        out["best_epoch"] = int(stopper.best_epoch) + 1
    if l1:
        weights = [p.data for p in model.parameters() if p.decay]
        out["zero_weight_fraction"] = float(sum(int((abs(w) < 1e-3).sum()) for w in weights) /
                                            sum(w.size for w in weights))
    return out, hist


def run(quick=False, out_dir=None):
    train, val = noisy_subset()
    epochs = 60 if quick else 150
    capacities = [CAPACITIES[0], LARGE] if quick else CAPACITIES
    results = {"capacity": {}, "regularized": {}}
    histories = {}
    for hidden in capacities:
        key = "x".join(map(str, hidden))
        results["capacity"][key], hist = fit(hidden, train, val, epochs)
        if hidden == LARGE:     # the unregularized large model is the first row of part 2
            results["regularized"]["none"], histories["none"] = results["capacity"][key], hist
    for name, kw in REGULARIZERS.items():
        if name == "none" or (quick and name == "dropout (classic)"):
            continue
        results["regularized"][name], histories[name] = fit(LARGE, train, val, epochs, **kw)
    if out_dir is not None:
        results["figure"] = figure(results, histories, out_dir)
    return results


def figure(results, histories, out_dir):
    plt = pyplot()
    fig, (ax0, ax1, ax2) = plt.subplots(1, 3, figsize=(14, 4.2))
    cap = results["capacity"]
    names = list(cap)
    x = numpy.arange(len(names))
    ax0.plot(x, [cap[n]["train_loss"] for n in names], "o-", label="train loss (noisy labels)")
    ax0.plot(x, [cap[n]["val_loss"] for n in names], "s-", label="validation loss")
    for i, n in enumerate(names):
        ax0.annotate(f"gap {cap[n]['gap_loss']:.2f}", (i, cap[n]["val_loss"]), textcoords="offset points",
                     xytext=(0, 6), ha="center", fontsize=8)
    ax0.set_xticks(x, [f"{n}\n({cap[n]['params']:,} p)" for n in names], fontsize=8)
    ax0.set(xlabel="hidden layer sizes (parameters)", ylabel="cross-entropy after training",
            title=f"Capacity sweep, {N_TRAIN} digits, {int(LABEL_NOISE * 100)}% wrong labels")
    ax0.text(0.02, 0.5, "← underfit", transform=ax0.transAxes, fontsize=9, color="gray")
    ax0.text(0.98, 0.5, "overfit →", transform=ax0.transAxes, fontsize=9, color="gray", ha="right")
    ax0.margins(x=0.08, y=0.12)
    ax0.legend(fontsize=8, loc="upper center")
    ax0.grid(True, alpha=0.3)

    for name, color in (("none", "tab:red"), ("L2 (λ=0.03)", "tab:green"), ("dropout", "tab:blue")):
        h = histories[name]
        ep = numpy.arange(1, len(h["val_loss"]) + 1)
        ax1.plot(ep, h["train_eval_loss"], "--", color=color, label=f"{name}: train")
        ax1.plot(ep, h["val_loss"], "-", color=color, label=f"{name}: validation")
    es = results["regularized"]["early stopping"]
    ax1.axvline(es["best_epoch"], color="gray", ls=":", label=f"early stopping keeps epoch {es['best_epoch']}")
    ax1.set(xlabel="epoch", ylabel="cross-entropy (eval mode)", title=f"Large model {'x'.join(map(str, LARGE))}",
            yscale="log")
    low = min(min(histories[n]["train_eval_loss"]) for n in ("none", "L2 (λ=0.03)", "dropout"))
    ax1.set_ylim(bottom=low * 0.02)     # room for the legend under the curves
    ax1.legend(fontsize=7, ncol=2, loc="lower left")
    ax1.grid(True, which="both", alpha=0.3)

    reg = results["regularized"]
    names = list(reg)
    x = numpy.arange(len(names))
    ax2.bar(x - 0.2, [reg[n]["gap_loss"] for n in names], 0.4, label="gap: val loss − train loss")
    ax2.bar(x + 0.2, [reg[n]["gap_accuracy"] for n in names], 0.4, label="gap: train acc − val acc")
    for i, n in enumerate(names):
        ax2.annotate(f"val acc\n{reg[n]['val_accuracy']:.2f}", (i, max(reg[n]["gap_loss"], 0)),
                     textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    ax2.axhline(0, color="black", lw=0.8)
    ax2.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    ax2.set(ylabel="train–validation gap", title="Regularizers on the large model")
    ax2.set_ylim(top=max(reg[n]["gap_loss"] for n in names) * 1.3)
    ax2.legend(fontsize=8, loc="upper right")
    ax2.grid(True, axis="y", alpha=0.3)
    return save(fig, out_dir, "overfitting.png")


if __name__ == "__main__":
    main(run)
