"""The course examples, in their quick modes: each run must show its phenomenon, with a margin.

Every example's ``run(quick=True, out_dir=...)`` returns the figures it measured; the
tests assert the course's claims on them. The figure files are checked only where
matplotlib (the ``plot`` extra) is installed; the phenomena are checked everywhere.

Without matplotlib each example's ``__main__`` prints the same numbers, then a last line
saying the figure was skipped and how to get it (a package named ``matplotlib`` whose
import fails stands in for a missing one).

Each example runs once per session, in a subprocess of its own: the examples reseed
gpunet's host generator (``gpunet.manual_seed``), which must not leak into other tests,
and the subprocess runs with one BLAS thread. The examples' matrices are tiny, and on a
busy 2-core runner OpenBLAS threads spinning against each other made one example 20x
slower; the numbers do not depend on the thread count.
"""
import json
import math
import os
import subprocess
import sys

import numpy
import pytest

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")

try:
    import matplotlib  # noqa: F401
    HAVE_MPL = True
except ImportError:
    HAVE_MPL = False

_DRIVER = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
out_dir = sys.argv[3] or None
results = importlib.import_module(sys.argv[2]).run(quick=True, out_dir=out_dir)
with open(sys.argv[4], "w") as f:
    json.dump(results, f)
"""
_THREADS = {k: "1" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
_RUNS = {}


def _run(name, tmp_path_factory):
    """Run example ``name`` once per session in quick mode (figure included where matplotlib
    is); returns its dict of measured figures."""
    if name not in _RUNS:
        work = tmp_path_factory.mktemp(name)
        out_dir = str(work / "figures") if HAVE_MPL else ""
        result_file = str(work / "results.json")
        repo = os.path.dirname(EXAMPLES)     # gpunet importable even when not installed
        path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH", "")) if p)
        proc = subprocess.run([sys.executable, "-c", _DRIVER, EXAMPLES, name, out_dir, result_file],
                              env={**os.environ, **_THREADS, "PYTHONPATH": path},
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"examples/{name}.py failed:\n{proc.stderr[-4000:]}"
        with open(result_file) as f:
            _RUNS[name] = json.load(f)
    return _RUNS[name]


@pytest.mark.parametrize("name, png", [
    ("vanishing_gradients", "vanishing_gradients.png"),
    ("initialization", "initialization.png"),
    ("softmax_stability", "softmax_stability.png"),
    ("overfitting", "overfitting.png"),
    ("batchnorm", "batchnorm.png"),
    ("maxout", "maxout.png"),
    ("backprop_and_descent", "gradient_descent.png"),
])
def test_example_writes_a_legible_png(name, png, tmp_path_factory):
    pytest.importorskip("matplotlib")
    path = _run(name, tmp_path_factory)["figure"]
    assert os.path.basename(path) == png
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < os.path.getsize(path) < 150_000


# -- (a) vanishing gradients -------------------------------------------------------------

def test_vanishing_gradients_sigmoid_first_layer_orders_below_last(tmp_path_factory):
    r = _run("vanishing_gradients", tmp_path_factory)
    sig, relu = r["sigmoid"], r["relu_he"]
    assert len(sig["grad_norms"]) == 10
    assert sig["first_last_ratio"] < 1e-3
    # the decay is layer by layer, not one odd layer: every layer below the one above it
    assert all(a < b for a, b in zip(sig["grad_norms"], sig["grad_norms"][1:]))
    assert relu["first_last_ratio"] > 0.1
    # still so at the end of training (DiagnosticsCallback's record of the last step)
    assert sig["first_last_ratio_after_training"] < 1e-3
    assert relu["first_last_ratio_after_training"] > 0.1
    # ...and it shows in training: ReLU+He learns, the sigmoid net is still near chance
    assert relu["test_accuracy"] > 0.8
    assert sig["test_accuracy"] < 0.4


# -- (b) initialization ------------------------------------------------------------------

def test_zero_init_keeps_hidden_units_identical(tmp_path_factory):
    sym = _run("initialization", tmp_path_factory)["symmetry"]
    zero, xavier = sym["zeros"], sym["xavier_uniform"]
    assert zero["weight_norm"] > 1e-3             # the weights did train...
    assert zero["row_spread"] <= 1e-6 * zero["weight_norm"]   # ...and every row is the same
    assert xavier["row_spread"] > 0.1
    assert xavier["test_accuracy"] > zero["test_accuracy"] + 0.3


def test_activation_std_through_30_relu_layers(tmp_path_factory):
    d = _run("initialization", tmp_path_factory)["depth_std"]
    small, xavier, he = d["normal"], d["xavier_normal"], d["he_normal"]
    assert len(he["std_per_layer"]) == 30
    assert small["std_layer_30"] < 1e-12 * small["std_layer_1"]      # collapses
    assert 1e-7 < xavier["std_layer_30"] / xavier["std_layer_1"] < 1e-2   # halves in variance per layer
    assert 0.2 < he["std_layer_30"] / he["std_layer_1"] < 5            # O(1) at every depth
    assert min(he["std_per_layer"]) > 0.1 and max(he["std_per_layer"]) < 10


# -- (f) the numerically safe softmax -----------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_naive_softmax_overflows_where_gpunet_does_not(dtype, tmp_path_factory):
    r = _run("softmax_stability", tmp_path_factory)[dtype]
    assert all(math.isnan(v) for v in r["naive"])          # inf / inf
    ours = numpy.array(r["gpunet"])
    assert numpy.isfinite(ours).all()
    assert r["gpunet_dtype"] == dtype                      # computed in the input's dtype
    assert abs(r["gpunet_sum"] - 1.0) < 1e-6
    e = math.exp(1.0)                                      # softmax([0, 1]) = [1, e] / (1 + e)
    numpy.testing.assert_allclose(ours, [1 / (1 + e), e / (1 + e)], rtol=1e-6)


def test_softmax_cross_entropy_at_huge_logits(tmp_path_factory):
    r = _run("softmax_stability", tmp_path_factory)
    ce = r["cross_entropy"]
    assert not math.isfinite(ce["naive"])
    assert ce["gpunet"] == pytest.approx(1e4, rel=1e-6)
    # the naive form breaks at log(max float) - 1 (e^(c+1) overflows first): ~87.7 and ~708.8
    wrong = r["naive_wrong_from_shift"]
    assert 86 <= wrong["float32"] <= 89
    assert 707 <= wrong["float64"] <= 710


# -- (c) under- and overfitting ------------------------------------------------------------

def test_capacity_sweep_small_underfits_large_overfits(tmp_path_factory):
    cap = _run("overfitting", tmp_path_factory)["capacity"]
    small, large = cap["2"], cap["256x256"]
    assert small["train_loss"] > 1.0 and small["train_accuracy"] < 0.6       # underfits: even train is poor
    assert large["train_loss"] < 0.05 and large["train_accuracy"] == 1.0     # memorizes, wrong labels included
    assert large["gap_loss"] > small["gap_loss"] + 0.3
    assert large["gap_accuracy"] > small["gap_accuracy"] + 0.08


def test_regularizers_close_the_gap(tmp_path_factory):
    reg = _run("overfitting", tmp_path_factory)["regularized"]
    none = reg["none"]["gap_loss"]
    for name in ("dropout", "L2 (λ=0.03)", "L1 (λ=0.003)", "early stopping"):
        assert reg[name]["gap_loss"] < none, name
    assert reg["dropout"]["gap_loss"] < 0.5 * none
    assert reg["L1 (λ=0.003)"]["gap_loss"] < 0.5 * none
    assert reg["L2 (λ=0.03)"]["gap_loss"] < 0.7 * none
    assert reg["L1 (λ=0.003)"]["zero_weight_fraction"] > 0.5               # L1 makes weights sparse
    es = reg["early stopping"]
    assert es["epochs_run"] < reg["none"]["epochs_run"] and es["best_epoch"] < es["epochs_run"]
    # closing the gap is not bought with validation accuracy
    assert max(reg[n]["val_accuracy"] for n in reg) > reg["none"]["val_accuracy"] + 0.02


# -- (e) batch normalization ----------------------------------------------------------------

def test_batchnorm_trains_where_the_plain_sigmoid_net_stalls(tmp_path_factory):
    r = _run("batchnorm", tmp_path_factory)
    plain = r["no BN"]
    assert plain["final_train_loss"] > 2.2            # stuck near log(10) = 2.30, chance level
    assert plain["val_accuracy"] < 0.25
    for placement in ("BN before sigmoid", "BN after sigmoid"):
        bn = r[placement]
        assert bn["final_train_loss"] < 1.0, placement
        assert bn["val_accuracy"] > plain["val_accuracy"] + 0.4, placement   # a wide margin
        # and the gradient reaches the first layer
        assert bn["first_last_grad_ratio"] > 0.1, placement
    assert plain["first_last_grad_ratio"] < 1e-3


# -- (d) maxout ---------------------------------------------------------------------------------

def test_maxout_is_comparable_to_relu(tmp_path_factory):
    r = _run("maxout", tmp_path_factory)
    relu = r["ReLU"]["test_accuracy"]
    assert relu > 0.85
    for k in ("maxout, k=2", "maxout, k=3"):
        assert r[k]["test_accuracy"] > 0.85, k
        assert abs(r[k]["test_accuracy"] - relu) < 0.05, k
    assert r["maxout, k=2"]["params"] > r["ReLU"]["params"]     # k pieces cost k times the hidden weights
    assert r["maxout_1d"] == {"relu_equals_max(0,z)": True, "abs_equals_max(z,-z)": True}


# -- activations, backpropagation by the chain rule, gradient descent --------------------------

def test_backprop_matches_the_chain_rule_by_hand(tmp_path_factory):
    r = _run("backprop_and_descent", tmp_path_factory)
    slope = r["max_slope"]
    assert slope["sigmoid"] == pytest.approx(0.25, abs=1e-6)      # why deep sigmoid nets vanish
    assert slope["tanh"] == pytest.approx(1.0, abs=1e-6) and slope["relu"] == 1.0
    bp = r["backprop"]
    assert bp["loss_gpunet"] == pytest.approx(bp["loss_by_hand"], rel=1e-12)
    assert bp["max_rel_diff_gpunet_vs_hand"] < 1e-10
    assert bp["gradcheck_passed"] is True


def test_gradient_descent_learning_rates(tmp_path_factory):
    gd = _run("backprop_and_descent", tmp_path_factory)["gradient_descent"]
    small, good, big = gd["lr=0.003"], gd["lr=0.3"], gd["lr=10"]
    assert small["diverged"] is None and good["diverged"] is None
    assert good["final_train_loss"] < 0.5 * small["final_train_loss"]
    assert good["test_accuracy"] > 0.85 and small["test_accuracy"] < 0.5
    assert all(b < a for a, b in zip(good["train_loss_per_epoch"], good["train_loss_per_epoch"][1:]))
    assert big["diverged"] is not None and "non-finite loss" in big["diverged"]


def test_activations_figure_from_gpunet_plot(tmp_path_factory):
    pytest.importorskip("matplotlib")
    path = _run("backprop_and_descent", tmp_path_factory)["figure_activations"]
    assert os.path.basename(path) == "activations.png" and os.path.getsize(path) > 5_000


# -- without matplotlib: the numbers first, then how to get the figure -------------------------

_BLOCK_MATPLOTLIB = "raise ModuleNotFoundError(\"No module named 'matplotlib'\", name='matplotlib')\n"
_EXAMPLES = ["vanishing_gradients", "initialization", "softmax_stability", "overfitting", "batchnorm",
             "maxout", "backprop_and_descent"]


def test_every_example_is_covered():
    assert sorted(_EXAMPLES) == sorted(n[:-3] for n in os.listdir(EXAMPLES)
                                      if n.endswith(".py") and not n.startswith("_"))


@pytest.mark.parametrize("name", _EXAMPLES)
def test_example_without_matplotlib_prints_its_numbers_then_skips_the_figure(name, tmp_path,
                                                                            tmp_path_factory):
    # a package named matplotlib, first on the path, whose import fails as a missing one does
    blocker = tmp_path / "block"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text(_BLOCK_MATPLOTLIB)
    repo = os.path.dirname(EXAMPLES)
    path = os.pathsep.join(p for p in (str(blocker), repo, os.environ.get("PYTHONPATH", "")) if p)
    out_dir = tmp_path / "figures"
    proc = subprocess.run([sys.executable, os.path.join(EXAMPLES, f"{name}.py"), "--quick", str(out_dir)],
                          env={**os.environ, **_THREADS, "PYTHONPATH": path}, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stdout.rstrip("\n").split("\n")
    assert lines[-1].startswith("figure skipped: matplotlib is not installed")
    assert 'pip install "gpunet[plot]"' in lines[-1]
    assert not out_dir.exists()                          # nothing half-written
    # the numbers are all there, and the same as with matplotlib (seeded runs)
    sys.path.insert(0, EXAMPLES)
    try:
        from _common import format_results
    finally:
        sys.path.remove(EXAMPLES)
    expected = {k: v for k, v in _run(name, tmp_path_factory).items() if not k.startswith("figure")}
    assert "\n".join(lines[:-1]) == format_results(expected)


# -- docs/concepts.md ----------------------------------------------------------------------------

def test_concepts_doc_embeds_every_committed_figure():
    import re
    docs = os.path.join(os.path.dirname(EXAMPLES), "docs")
    with open(os.path.join(docs, "concepts.md"), encoding="utf-8") as f:
        text = f.read()
    linked = set(re.findall(r"!\[[^\]]*\]\(figures/([\w.-]+\.png)\)", text))
    committed = {n for n in os.listdir(os.path.join(docs, "figures")) if n.endswith(".png")}
    assert linked == committed
    for name in committed:
        assert os.path.getsize(os.path.join(docs, "figures", name)) < 150_000, name
    # every example the doc names exists, and every example is named
    named = set(re.findall(r"`(\w+)\.py`", text))
    examples = {n[:-3] for n in os.listdir(EXAMPLES) if n.endswith(".py") and not n.startswith("_")}
    assert named == examples
