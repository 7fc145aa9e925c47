"""What tests/test_resume.py runs in fresh processes: ``python tests/resume_worker.py MODE
CHECKPOINT DEVICE PRECISION GRAPH``, printing one JSON line ``{"loss": [...],
"global_step": n, "state": {key: sha1 of the bytes}}`` of the run's History, the Trainer's
step count and the final model, optimizer and schedule.

MODE ``full`` trains epochs 0-3 in one go; ``first`` trains epochs 0-1 with a
ModelCheckpoint writing CHECKPOINT after every epoch; ``twice`` trains epochs 0-3 as two
``fit(epochs=2)`` calls on one Trainer, with one ModelCheckpoint writing CHECKPOINT (a
template) after every epoch of both; ``resume`` builds everything afresh
(other initial weights and dropout seeds), loads CHECKPOINT and trains epochs 2-3. A tiny
model with every kind of state a step reads: BatchNorm running statistics, a Dropout
counter, Adam moments and step counts, a per-step cosine schedule, a GradScaler (fp16)."""
from __future__ import annotations

import hashlib
import json
import os
import sys

import numpy

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gpunet  # noqa: E402
from gpunet import optim  # noqa: E402


def build(seed, device, precision, graph):
    gpunet.manual_seed(seed)
    model = gpunet.Sequential(gpunet.Dense(8, 16, activation="relu"), gpunet.BatchNorm(16),
                              gpunet.Dropout(0.3), gpunet.Dense(16, 3))
    opt = optim.Adam(model, lr=1e-2, weight_decay=1e-3)
    sched = optim.CosineAnnealingLR(opt, T_max=30)
    trainer = gpunet.Trainer(model, gpunet.SoftmaxCrossEntropy(), opt, device=device,
                             scheduler=sched, scheduler_interval="step", precision=precision,
                             cuda_graph=graph)
    return model, opt, sched, trainer


def main(mode, path, device, precision, graph):
    rng = numpy.random.default_rng(0)
    X = rng.standard_normal((100, 8)).astype(numpy.float32)
    y = rng.integers(0, 3, 100)
    fit = dict(batch_size=16, seed=5, progress=False)
    with numpy.errstate(over="ignore", invalid="ignore"):   # fp16's first steps overflow
        if mode == "full":
            model, opt, sched, tr = build(0, device, precision, graph)
            h = tr.fit((X, y), epochs=4, **fit)
        elif mode == "first":
            model, opt, sched, tr = build(0, device, precision, graph)
            h = tr.fit((X, y), epochs=2, callbacks=[gpunet.ModelCheckpoint(
                path, monitor="loss", save_best_only=False)], **fit)
        elif mode == "twice":
            model, opt, sched, tr = build(0, device, precision, graph)
            ck = gpunet.ModelCheckpoint(path, monitor="loss", save_best_only=False)
            h = tr.fit((X, y), epochs=2, callbacks=[ck], **fit)
            h = {"loss": h["loss"] + tr.fit((X, y), epochs=2, callbacks=[ck], **fit)["loss"]}
        else:
            model, opt, sched, tr = build(1, device, precision, graph)
            meta = gpunet.load(path, model, opt, scheduler=sched, scaler=tr.scaler)
            h = tr.fit((X, y), epochs=4, initial_epoch=meta["epoch"], **fit)
    state = {**{"model/" + k: v for k, v in model.state_dict().items()},
             **{"optim/" + k: v for k, v in opt.state_dict().items()},
             **{"sched/" + k: v for k, v in sched.state_dict().items()}}
    print(json.dumps({"loss": h["loss"], "global_step": tr.global_step, "state": {
        k: hashlib.sha1(numpy.ascontiguousarray(v).tobytes()).hexdigest() for k, v in state.items()}}))


if __name__ == "__main__":
    main(*sys.argv[1:5], sys.argv[5] == "graph")
