"""Resuming from a checkpoint: in a fresh process the run continues bit for bit (DESIGN §8:
"a resumed run continues bit for bit"), and a checkpoint moves between devices."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import backend, optim, sim

HERE = os.path.dirname(os.path.abspath(__file__))


def _worker(*args):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    r = subprocess.run([sys.executable, os.path.join(HERE, "resume_worker.py"), *map(str, args)],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, f"resume_worker {args} failed:\n{r.stdout}\n{r.stderr}"
    return json.loads(r.stdout.strip().splitlines()[-1])


CASES = [("cpu", "fp32", ""), ("cpu", "fp16", "")]
if sim.compiler() is not None:
    CASES += [("sim", "fp32", ""), ("sim", "fp16", "graph")]


@pytest.mark.parametrize("device, precision, graph", CASES)
def test_a_run_resumed_in_a_fresh_process_continues_bit_for_bit(tmp_path, device, precision, graph):
    """4 epochs in one process against 2 epochs (a ModelCheckpoint after each) in a second
    and the last 2, loaded into objects built afresh with other weights and dropout seeds,
    in a third: the same per-epoch losses and the same bytes of every parameter, buffer,
    dropout counter, Adam moment and step count and schedule position. On the sim with a
    CUDA graph, the resumed run warms up and captures again (its per-step schedule used to
    give the capture the previous step's rate)."""
    path = tmp_path / "last.npz"
    full = _worker("full", path, device, precision, graph)
    first = _worker("first", path, device, precision, graph)
    resumed = _worker("resume", path, device, precision, graph)
    assert first["loss"] == full["loss"][:2]
    assert resumed["loss"] == full["loss"][2:]
    assert resumed["global_step"] == full["global_step"] == 2 * first["global_step"]
    assert resumed["state"].keys() == full["state"].keys()
    assert [k for k in full["state"] if resumed["state"][k] != full["state"][k]] == []


@pytest.mark.parametrize("device", ["cpu"] + (["sim"] if sim.compiler() is not None else []))
def test_a_checkpoint_of_a_second_fit_resumes_bit_for_bit(tmp_path, device):
    """Found by the leftover audit: a ModelCheckpoint saved the epoch count of the current
    fit, so after fit(epochs=2) twice the second fit's first checkpoint said epoch 1 (and a
    'ck-{epoch}' template overwrote the first fit's files): resumed with initial_epoch=1, the
    run took epoch 1's shuffle where the second fit had taken epoch 3's (fit(epochs=2) twice
    trains as fit(epochs=4)) and counted 14 steps for 28. The count is now the Trainer's over
    all its fits: fit(epochs=4, initial_epoch=meta['epoch']) continues bit for bit."""
    full = _worker("full", tmp_path / "unused.npz", device, "fp32", "")
    twice = _worker("twice", tmp_path / "ck-{epoch}.npz", device, "fp32", "")
    assert twice["loss"] == full["loss"] and twice["state"] == full["state"]
    assert sorted(os.listdir(tmp_path)) == ["ck-1.npz", "ck-2.npz", "ck-3.npz", "ck-4.npz"]
    resumed = _worker("resume", tmp_path / "ck-3.npz", device, "fp32", "")
    assert resumed["loss"] == full["loss"][3:]
    assert resumed["global_step"] == full["global_step"]
    assert [k for k in full["state"] if resumed["state"][k] != full["state"][k]] == []


def _trained(device):
    """A small CNN with BatchNorm and Dropout after 3 SGD-momentum steps on ``device``."""
    gpunet.manual_seed(0)
    m = gpunet.Sequential(gpunet.Conv2D(1, 4, 3, padding=1, activation="relu"), gpunet.BatchNorm(4),
                          gpunet.MaxPool2D(2), gpunet.Flatten(), gpunet.Dropout(0.3),
                          gpunet.Dense(16, 3)).to(device)
    opt = optim.SGD(m, lr=0.05, momentum=0.9, nesterov=True)
    rng = numpy.random.default_rng(0)
    loss = gpunet.SoftmaxCrossEntropy()
    for _ in range(3):
        x = gpunet.to_device(rng.standard_normal((8, 1, 4, 4)).astype(numpy.float32), device)
        loss(m(x), gpunet.to_device(rng.integers(0, 3, 8), device))
        m.zero_grad()
        m.backward(loss.backward())
        opt.step()
    return m, opt


def _fresh(device):
    gpunet.manual_seed(9)
    m = gpunet.Sequential(gpunet.Conv2D(1, 4, 3, padding=1, activation="relu"), gpunet.BatchNorm(4),
                          gpunet.MaxPool2D(2), gpunet.Flatten(), gpunet.Dropout(0.3),
                          gpunet.Dense(16, 3)).to(device)
    return m, optim.SGD(m, lr=0.5)


@pytest.mark.parametrize("direction", ["gpu->cpu", "cpu->gpu"])
def test_a_checkpoint_moves_between_devices_unchanged(tmp_path, gpu_device, direction):
    """Written from a model on one device, loaded into one built on the other: every value
    identical, each array on the loading model's device (the file holds host arrays)."""
    src, dst = (gpu_device, "cpu") if direction == "gpu->cpu" else ("cpu", gpu_device)
    m, opt = _trained(src)
    path = gpunet.save(tmp_path / "ck.npz", m, opt)
    with numpy.load(path) as z:
        assert all(type(z[k]) is numpy.ndarray for k in z.files)
    m2, opt2 = _fresh(dst)
    gpunet.load(path, m2, opt2)
    for want, got in ((m.state_dict(), m2.state_dict()), (opt.state_dict(), opt2.state_dict())):
        assert want.keys() == got.keys()
        for k in want:
            numpy.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert m2.device.split(":")[0] == dst
    assert all(backend.device_of(p.data).split(":")[0] == dst for p in m2.parameters())
    assert all(backend.device_of(v).split(":")[0] == dst for st in opt2.state for v in st.values())
    assert backend.device_of(m2[1].running_var).split(":")[0] == dst
    assert m2[4].counter == m[4].counter == 3


def test_resuming_on_a_loader_with_a_randomly_drawn_seed_warns():
    """Found by the resume audit: a DataLoader(shuffle=True) built without seed= draws its seed
    from OS entropy, so the same script run again to resume (fit(loader, initial_epoch=k))
    shuffled epochs k.. with another seed than the saved run's: the resumed losses and weights
    differed from the run that never stopped, without a word (the checkpoint holds no
    loader seed). fit(initial_epoch=k) on such a loader now warns, naming the drawn seed and
    seed=; a loader with a seed (given, or assigned afterwards), shuffle=False, fit's (X, y)
    data with its default seed=0 and a fit from epoch 0 do not."""
    import warnings
    rng = numpy.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)).astype(numpy.float32), rng.integers(0, 3, 40)

    def trainer():
        gpunet.manual_seed(0)
        m = gpunet.Sequential(gpunet.Dense(4, 3))
        return gpunet.Trainer(m, gpunet.SoftmaxCrossEntropy(), optim.SGD(m, lr=0.1))

    # the same script twice: the second run's epoch 1 is not the first run's
    a, b = gpunet.DataLoader(X, y, batch_size=8, shuffle=True), gpunet.DataLoader(X, y, batch_size=8, shuffle=True)
    assert not numpy.array_equal(a.order(1), b.order(1))
    with pytest.warns(UserWarning, match=rf"initial_epoch=1 resumes a run, but train is shuffled with a "
                                         rf"seed drawn at random \(seed=None gave {b.seed}\).*Pass seed="):
        trainer().fit(b, epochs=2, initial_epoch=1, progress=False)
    with pytest.warns(UserWarning, match="seed drawn at random"):
        trainer().fit((X, y), epochs=2, initial_epoch=1, seed=None, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer().fit(gpunet.DataLoader(X, y, batch_size=8, shuffle=True, seed=4), epochs=2,
                      initial_epoch=1, progress=False)
        c = gpunet.DataLoader(X, y, batch_size=8, shuffle=True)
        c.seed = 11
        trainer().fit(c, epochs=2, initial_epoch=1, progress=False)
        trainer().fit(gpunet.DataLoader(X, y, batch_size=8), epochs=2, initial_epoch=1, progress=False)
        trainer().fit((X, y), epochs=2, initial_epoch=1, progress=False)
        trainer().fit(gpunet.DataLoader(X, y, batch_size=8, shuffle=True), epochs=1, progress=False)


def test_a_resume_that_forgets_initial_epoch_warns(tmp_path):
    """Found by the resume audit: after gpunet.load of a checkpoint of 2 epochs, fit(epochs=4)
    without initial_epoch trained epochs 0-3 again: epoch 0's shuffle, global_step from 0,
    ModelCheckpoint epochs 1.. (a later resume from its file starts at the wrong epoch) and
    4 epochs instead of the 2 left, without a word. The first fit after a load of stepped
    optimizer state warns, once; with initial_epoch, on a Trainer that trained before, or
    after loading a fresh optimizer's state, it does not."""
    import warnings
    rng = numpy.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)).astype(numpy.float32), rng.integers(0, 3, 40)
    path = tmp_path / "last.npz"

    def trainer():
        gpunet.manual_seed(0)
        m = gpunet.Sequential(gpunet.Dense(4, 3))
        return gpunet.Trainer(m, gpunet.SoftmaxCrossEntropy(), optim.SGD(m, lr=0.1, momentum=0.9))

    t = trainer()
    t.fit((X, y), epochs=2, batch_size=8, progress=False,
          callbacks=[gpunet.ModelCheckpoint(path, monitor="loss", save_best_only=False)])
    t2 = trainer()
    meta = gpunet.load(path, t2.model, t2.optimizer)
    with pytest.warns(UserWarning, match=r"optimizer's state was loaded with 10 steps taken, but fit starts "
                                         r"at epoch 0: to continue the saved run, pass fit\(\.\.\., "
                                         r"initial_epoch=meta\['epoch'\]\)"):
        t2.fit((X, y), epochs=1, batch_size=8, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t2.fit((X, y), epochs=1, batch_size=8, progress=False)           # said once per load
        t3 = trainer()
        gpunet.load(path, t3.model, t3.optimizer)
        t3.fit((X, y), epochs=4, initial_epoch=meta["epoch"], batch_size=8, progress=False)
        assert t3.global_step == t.global_step + 10
        gpunet.load(path, t.model, t.optimizer)                          # a Trainer that trained
        t.fit((X, y), epochs=1, batch_size=8, progress=False)
        t4 = trainer()
        t4.optimizer.load_state_dict(trainer().optimizer.state_dict())   # no step taken
        t4.fit((X, y), epochs=1, batch_size=8, progress=False)


def test_the_resume_warning_sees_through_a_distributed_optimizer(tmp_path):
    """The mark of a load is the wrapped optimizer's: a DistributedOptimizer (a world of one)
    warns at the first fit after a load and clears the mark there, so a second Trainer (with
    the optimizer wrapped anew) does not warn again; the first version of the check cleared a
    mark it had set on the wrapper, and warned again there."""
    import warnings
    from gpunet import distributed
    rng = numpy.random.default_rng(0)
    X, y = rng.standard_normal((40, 4)).astype(numpy.float32), rng.integers(0, 3, 40)
    comm = distributed.Communicator()          # a world of one
    gpunet.manual_seed(0)
    m = gpunet.Sequential(gpunet.Dense(4, 3))
    opt = distributed.DistributedOptimizer(optim.SGD(m, lr=0.1), comm)
    gpunet.Trainer(m, gpunet.SoftmaxCrossEntropy(), opt, comm=comm).fit((X, y), epochs=1, progress=False)
    path = gpunet.save(tmp_path / "ck.npz", m, opt)
    gpunet.load(path, m, opt)
    with pytest.warns(UserWarning, match="optimizer's state was loaded"):
        gpunet.Trainer(m, gpunet.SoftmaxCrossEntropy(), opt, comm=comm).fit((X, y), epochs=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = distributed.DistributedOptimizer(opt.optimizer, comm)    # the same optimizer, rewrapped
        gpunet.Trainer(m, gpunet.SoftmaxCrossEntropy(), again, comm=comm).fit((X, y), epochs=1, progress=False)


def test_a_resume_after_an_interrupted_fit_on_the_same_trainer_counts_its_steps_as_the_run(tmp_path):
    """Found by the resume audit: a fit interrupted in epoch 2 (Ctrl-C in a callback), then
    gpunet.load of the epoch-2 checkpoint and fit(initial_epoch=2) on the same Trainer gave
    the straight run's losses and weights bit for bit but global_step 32 where the run that
    never stopped has 28: the interrupted epoch's 4 steps were counted too. A fit with
    initial_epoch now sets it to the steps of the epochs before, as on a fresh Trainer."""
    rng = numpy.random.default_rng(0)
    X, y = rng.standard_normal((100, 8)).astype(numpy.float32), rng.integers(0, 3, 100)
    path = tmp_path / "last.npz"

    def build():
        gpunet.manual_seed(0)
        m = gpunet.Sequential(gpunet.Dense(8, 16, activation="relu"), gpunet.Dropout(0.3), gpunet.Dense(16, 3))
        o = optim.Adam(m, lr=1e-2)
        return m, o, gpunet.Trainer(m, gpunet.SoftmaxCrossEntropy(), o)

    class Interrupt(gpunet.Callback):
        def on_batch_end(self, trainer, step, logs):
            if trainer.epoch == 2 and step == 3:
                raise KeyboardInterrupt

    fit = dict(batch_size=16, seed=5, progress=False)
    m, _, full = build()
    h = full.fit((X, y), epochs=4, **fit)
    m2, o2, t = build()
    with pytest.raises(KeyboardInterrupt):
        t.fit((X, y), epochs=4, callbacks=[Interrupt(), gpunet.ModelCheckpoint(
            path, monitor="loss", save_best_only=False)], **fit)
    assert t.global_step == 2 * 7 + 4
    meta = gpunet.load(path, m2, o2)
    h2 = t.fit((X, y), epochs=4, initial_epoch=meta["epoch"], **fit)
    assert h2["loss"] == h["loss"][2:]
    assert all(numpy.array_equal(v, m2.state_dict()[k]) for k, v in m.state_dict().items())
    assert t.global_step == full.global_step == 28
