"""Diagnostics: gradient norms, activation statistics, and the Trainer callback."""
import math

import numpy
import pytest

import gpunet
from gpunet import BatchNorm, Dense, Dropout, ReLU, Sequential, SoftmaxCrossEntropy, Tanh, optim, to_numpy
from gpunet.diagnostics import DiagnosticsCallback, activation_stats, grad_norms
from gpunet.train import Trainer


def _model(device, seed=0):
    gpunet.manual_seed(seed)
    return Sequential(Dense(6, 8), BatchNorm(8), ReLU(), Dropout(0.5, seed=3), Dense(8, 3)).to(device)


def test_grad_norms_match_numpy(xp, device, rng):
    model = _model(device)
    assert grad_norms(model) == {}                          # no backward yet: nothing to report
    x = xp.asarray(rng.standard_normal((10, 6)).astype(numpy.float32))
    model(x)
    model.backward(xp.asarray(rng.standard_normal((10, 3)).astype(numpy.float32)))
    norms = grad_norms(model)
    names = [k for k, _ in model.named_parameters()]
    assert list(norms) == names == ["0.weight", "0.bias", "1.gamma", "1.beta", "4.weight", "4.bias"]
    for k, p in model.named_parameters():
        assert isinstance(norms[k], float)
        want = numpy.sqrt(numpy.sum(to_numpy(p.grad).astype(numpy.float64) ** 2))
        assert norms[k] == pytest.approx(want, rel=1e-12)
    model[0].bias.grad = None                               # omitted, not reported as 0
    assert "0.bias" not in grad_norms(model)


def test_grad_norm_does_not_overflow_in_float32(xp):
    layer = Dense(2, 2)
    layer.weight.grad = xp.full((2, 2), 1e30, dtype=xp.float32)    # squares overflow float32
    assert grad_norms(layer)["weight"] == pytest.approx(2e30, rel=1e-6)


def test_vanishing_gradients_are_visible(xp, device, rng):
    # The course's picture: in a deep sigmoid-like net with small weights the gradient
    # shrinks layer by layer towards the input.
    gpunet.manual_seed(1)
    layers = []
    for _ in range(6):
        layers += [Dense(16, 16, activation="sigmoid", init="normal")]
    model = Sequential(*layers).to(device)
    model(xp.asarray(rng.standard_normal((32, 16)).astype(numpy.float32)))
    model.backward(xp.asarray(rng.standard_normal((32, 16)).astype(numpy.float32)))
    w = [grad_norms(model)[f"{i}.weight"] for i in range(6)]
    assert all(a < b for a, b in zip(w, w[1:])), w
    assert w[0] < 1e-3 * w[-1]


def test_activation_stats(xp, device, rng):
    model = _model(device)
    x_host = rng.standard_normal((50, 6)).astype(numpy.float32)
    x = xp.asarray(x_host)
    model(x)                                              # a training step sets caches/counters
    counter, rm = model[3].counter, to_numpy(model[1].running_mean).copy()
    cache = model[0]._x
    model[1].eval()                                       # a mixed-mode model: restored as is
    stats = activation_stats(model, x)
    assert list(stats) == ["0:Dense", "1:BatchNorm", "2:ReLU", "3:Dropout", "4:Dense"]
    # reference: the same layers in eval mode, by hand
    h = x_host.astype(numpy.float64)
    for i, layer in enumerate(model):
        was = layer.training
        layer.eval()
        h = to_numpy(layer(xp.asarray(h.astype(numpy.float32)))).astype(numpy.float64)
        layer.train(was)
        st = stats[f"{i}:{type(layer).__name__}"]
        assert st["mean"] == pytest.approx(h.mean(), rel=1e-5, abs=1e-6)
        assert st["std"] == pytest.approx(h.std(), rel=1e-5)
        assert st["zero_fraction"] == pytest.approx(float((h == 0).mean()), abs=1e-12)
    assert 0.2 < stats["2:ReLU"]["zero_fraction"] < 0.8     # ReLU zeroes about half
    assert stats["0:Dense"]["zero_fraction"] == 0.0
    # nothing a training step reads changed; modes restored layer by layer
    assert model[3].counter == counter and model[0]._x is cache
    numpy.testing.assert_array_equal(to_numpy(model[1].running_mean), rm)
    assert [l.training for l in model] == [True, False, True, True, True] and model.training


def test_activation_stats_see_inside_residual_and_nested_sequential(xp, device, rng):
    """The layers inside a Residual's block and a nested Sequential are layers the course
    wants to inspect too (a dead ReLU inside a residual block): each gets an entry, by its
    state_dict path, in the order it runs and before its container's."""
    gpunet.manual_seed(0)
    model = Sequential(Dense(6, 8), gpunet.Residual(Sequential(Dense(8, 8, activation="relu"), BatchNorm(8),
                                                               Dropout(0.5, mode="classic", seed=1))),
                       Sequential(Dense(8, 4), Tanh()), gpunet.Residual(ReLU()), Dense(4, 3)).to(device)
    model[1].block[0].bias.data = xp.full(8, -100.0, dtype=xp.float32)    # a dead ReLU inside
    x_host = rng.standard_normal((30, 6)).astype(numpy.float32)
    stats = activation_stats(model, xp.asarray(x_host))
    assert list(stats) == ["0:Dense", "1.block.0:Dense", "1.block.1:BatchNorm", "1.block.2:Dropout",
                           "1:Residual", "2.0:Dense", "2.1:Tanh", "2:Sequential", "3.block:ReLU",
                           "3:Residual", "4:Dense"]
    assert stats["1.block.0:Dense"]["zero_fraction"] == 1.0
    # reference: every layer in eval mode by hand, on the host
    model.eval()
    host = model.to("cpu")
    h0 = host[0](x_host)
    h1 = [host[1].block[0](h0)]
    h1 += [host[1].block[1](h1[-1])]
    h1 += [host[1].block[2](h1[-1])]
    h2 = host[2][0](h0 + h1[-1])
    want = {"0:Dense": h0, "1.block.0:Dense": h1[0], "1.block.1:BatchNorm": h1[1],
            "1.block.2:Dropout": h1[2], "1:Residual": h0 + h1[2], "2.0:Dense": h2,
            "2.1:Tanh": numpy.tanh(h2), "2:Sequential": numpy.tanh(h2),
            "3.block:ReLU": numpy.maximum(numpy.tanh(h2), 0)}
    for label, h in want.items():
        h = h.astype(numpy.float64)
        assert stats[label]["mean"] == pytest.approx(h.mean(), rel=1e-5, abs=1e-6), label
        assert stats[label]["std"] == pytest.approx(h.std(), rel=1e-5, abs=1e-6), label
    # no reporter is left behind on any layer
    assert not any("forward" in vars(layer) for layer in model.modules())


def test_dead_relu_zero_fraction(xp, device, rng):
    layer = Dense(4, 5, activation="relu").to(device)
    layer.bias.data = xp.full(5, -100.0, dtype=xp.float32)     # every unit dead
    model = Sequential(layer, Tanh())
    st = activation_stats(model, xp.asarray(rng.standard_normal((20, 4)).astype(numpy.float32)))
    assert st["0:Dense"]["zero_fraction"] == 1.0 and st["1:Tanh"]["std"] == 0.0


def test_callback_records_last_step_norms_and_stats(xp, device, rng):
    X = rng.standard_normal((40, 6)).astype(numpy.float32)
    y = rng.integers(0, 3, size=40)
    model = _model(device)

    class LastStep(gpunet.train.Callback):     # what the optimizer saw at the last step
        def on_backward_end(self, trainer):
            self.norms = grad_norms(trainer.model)

        def on_epoch_end(self, trainer, epoch, logs):
            self.per_epoch = getattr(self, "per_epoch", []) + [self.norms]

    spy = LastStep()
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    diag = DiagnosticsCallback(x_probe=X[:16])
    h = tr.fit((xp.asarray(X), xp.asarray(y)), epochs=3, batch_size=16, callbacks=[diag, spy],
               progress=False)
    for name in ("0.weight", "1.gamma", "4.bias"):
        got = h.history[f"grad_norm/{name}"]
        assert len(got) == 3
        assert got == pytest.approx([e[name] for e in spy.per_epoch], rel=1e-12)
    for stat in ("mean", "std", "zero_fraction"):
        assert len(h.history[f"act_{stat}/2:ReLU"]) == 3
    # the probe statistics equal activation_stats of the final model
    final = activation_stats(model, xp.asarray(X[:16]))
    assert h.history["act_std/4:Dense"][-1] == pytest.approx(final["4:Dense"]["std"], rel=1e-6)


def test_callback_without_probe_and_missing_grads(xp, device, rng):
    model = _model(device)
    model[4].bias.grad = None

    class Freeze(gpunet.train.Callback):   # drops one gradient after backward
        def on_backward_end(self, trainer):
            trainer.model[4].bias.grad = None

    X = rng.standard_normal((32, 6)).astype(numpy.float32)
    y = rng.integers(0, 3, size=32)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    h = tr.fit((xp.asarray(X), xp.asarray(y)), epochs=2, batch_size=16,
               callbacks=[Freeze(), DiagnosticsCallback()], progress=False)
    assert all(math.isnan(v) for v in h.history["grad_norm/4.bias"])
    assert all(v > 0 for v in h.history["grad_norm/4.weight"])
    assert not any(k.startswith("act_") for k in h.history)


def test_bad_arguments():
    with pytest.raises(TypeError, match="grad_norms"):
        grad_norms({"w": 1})
    with pytest.raises(TypeError, match="activation_stats"):
        activation_stats(lambda x: x, numpy.ones(3))


@pytest.mark.parametrize("probe, err, msg", [
    (lambda X: X[:, :5], ValueError, r"x_probe of shape \(16, 5\) does not fit the model: Dense: expected 6 features"),
    (lambda X: X[0], ValueError, r"x_probe of shape \(6,\) does not fit the model: Dense: expected a 2-D input"),
    (lambda X: "abc", TypeError, r"expected x_probe to be an array or a nested list of numbers, got str"),
    (lambda X: X[:0], ValueError, r"expected x_probe with at least one sample along axis 0, got shape \(0, 6\)"),
])
def test_a_probe_the_model_cannot_take_fails_before_the_first_step(rng, probe, err, msg):
    """Found by the Trainer audit: a bad x_probe raised the layer's error (not naming the
    callback) at the end of the first epoch, after it had trained; 'abc' became a 0-d
    array. Now the constructor or the start of fit raises, naming DiagnosticsCallback."""
    X = rng.standard_normal((16, 6)).astype(numpy.float32)
    y = rng.integers(0, 3, size=16)
    model = _model("cpu")
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(err, match=f"^DiagnosticsCallback: {msg}"):
        tr.fit((X, y), epochs=1, callbacks=[DiagnosticsCallback(x_probe=probe(X))], progress=False)
    assert tr.global_step == 0


def test_the_probe_checked_at_the_start_changes_nothing_and_integer_probes_are_cast(rng):
    """The probe's forward at the start of fit runs in eval mode: the run's losses and
    weights are those of a run without the callback (Dropout draws no mask, BatchNorm
    keeps its statistics). An integer probe is cast to the parameters' dtype, as the
    callback's docstring says (it used to raise the layer's dtype error)."""
    X = rng.standard_normal((32, 6)).astype(numpy.float32)
    y = rng.integers(0, 3, size=32)
    runs = []
    for cbs in ([], [DiagnosticsCallback(x_probe=(X[:8] * 10).astype(numpy.int64))]):
        model = _model("cpu")
        tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
        h = tr.fit((X, y), epochs=2, batch_size=8, callbacks=cbs, progress=False)
        runs.append((h["loss"], model.state_dict()))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        numpy.testing.assert_array_equal(v, runs[1][1][k])
    assert "act_std/4:Dense" in h


def test_activation_stats_of_an_empty_probe_is_an_error_not_nan():
    """Found by the Trainer audit: an empty probe gave NaN statistics and NumPy's warnings."""
    with pytest.raises(ValueError, match=r"^activation_stats: expected a probe batch x with at least "
                                         r"one sample along axis 0, got shape \(0, 6\)"):
        activation_stats(_model("cpu"), numpy.zeros((0, 6), numpy.float32))
