"""Plots: each writes a real PNG; without matplotlib, a clear error naming the extra."""
import sys

import numpy
import pytest

import gpunet
from gpunet import Dense, Sequential, SoftmaxCrossEntropy, optim, plot
from gpunet.diagnostics import DiagnosticsCallback, grad_norms as diag_grad_norms
from gpunet.train import History, Trainer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_size=(400, 300)):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000
    # width and height from the IHDR chunk
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert w >= min_size[0] and h >= min_size[1]


@pytest.fixture
def trained(xp, device, rng):
    """A short run on device with diagnostics: a real History and a model with gradients."""
    gpunet.manual_seed(0)
    model = Sequential(Dense(5, 8, activation="relu"), Dense(8, 3)).to(device)
    X = rng.standard_normal((48, 5)).astype(numpy.float32)
    y = rng.integers(0, 3, size=48)
    tr = Trainer(model, SoftmaxCrossEntropy(), optim.SGD(model.parameters(), lr=0.1))
    data = (xp.asarray(X), xp.asarray(y))
    h = tr.fit(data, val=data, epochs=3, batch_size=16, callbacks=[DiagnosticsCallback()],
               progress=False)
    return model, h


def test_plot_history(trained, tmp_path):
    pytest.importorskip("matplotlib")
    _, h = trained
    out = plot.plot_history(h, tmp_path / "h.png")
    assert out == str(tmp_path / "h.png")
    assert_png(tmp_path / "h.png")
    # History.plot goes through the same function
    h.plot(tmp_path / "h2.png")
    assert_png(tmp_path / "h2.png")
    # a plain dict, with a metric that has no validation curve
    plot.plot_history({"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8]},
                      tmp_path / "d.png")
    assert_png(tmp_path / "d.png")


def test_epoch_ticks_are_whole_epochs(trained, tmp_path, monkeypatch):
    """A 3-epoch run had ticks at epochs 1.25, 1.5, ...: the epoch axes tick whole epochs."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure
    drawn = []
    save = Figure.savefig

    def keep(fig, *a, **kw):
        drawn.append(fig)
        return save(fig, *a, **kw)
    monkeypatch.setattr(Figure, "savefig", keep)
    _, h = trained
    plot.plot_history(h, tmp_path / "h.png")
    plot.grad_norms(h, tmp_path / "g.png")
    axes = [ax for fig in drawn for ax in fig.axes if ax.get_xlabel() == "epoch"]
    assert len(axes) == 4          # loss, accuracy, learning rate; grad norms
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_plot_history_rejects_empty(tmp_path):
    pytest.importorskip("matplotlib")
    with pytest.raises(ValueError, match="no loss or metric curves"):
        plot.plot_history({"grad_norm/0.weight": [1.0]}, tmp_path / "x.png")
    with pytest.raises(TypeError, match="plot_history"):
        plot.plot_history([1, 2], tmp_path / "x.png")


def test_activations(tmp_path):
    pytest.importorskip("matplotlib")
    assert plot.activations(tmp_path / "a.png") == str(tmp_path / "a.png")
    assert_png(tmp_path / "a.png", min_size=(1200, 600))


def test_grad_norms_from_history_and_dicts(trained, tmp_path):
    pytest.importorskip("matplotlib")
    model, h = trained
    plot.grad_norms(h, tmp_path / "g1.png")                        # curves per epoch
    assert_png(tmp_path / "g1.png")
    norms = diag_grad_norms(model)                                 # {name: float}: bars
    assert norms
    plot.grad_norms(norms, tmp_path / "g2.png")
    assert_png(tmp_path / "g2.png")
    plot.grad_norms({"0.weight": [1.0, 0.1, float("nan")], "0.bias": [0.0, 1e-3, 1e-4]},
                    tmp_path / "g3.png")
    assert_png(tmp_path / "g3.png")
    bare = History()
    bare.append(0, {"loss": 1.0})
    with pytest.raises(ValueError, match="DiagnosticsCallback"):
        plot.grad_norms(bare, tmp_path / "g4.png")
    with pytest.raises(ValueError, match="nothing to plot"):
        plot.grad_norms({}, tmp_path / "g5.png")


def test_plot_main(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cli.png"
    assert plot.plot_main(["activations", "--out", str(out)]) == 0
    assert_png(out)
    assert str(out) in capsys.readouterr().out
    with pytest.raises(SystemExit):
        plot.plot_main(["activations", "--xmin", "2", "--xmax", "1"])


def test_image_path(tmp_path):
    pytest.importorskip("matplotlib")
    assert plot.image_path(tmp_path / "a.svg") == str(tmp_path / "a.svg")
    assert plot.image_path("curves") == "curves.png"       # what savefig writes
    with pytest.raises(ValueError, match=r"gpunet.plot: cannot write a\.xyz: .*\.png.*got \.xyz"):
        plot.image_path("a.xyz")
    with pytest.raises(ValueError, match="got .xyz"):       # before anything is drawn
        plot.activations(tmp_path / "a.xyz")
    assert not (tmp_path / "a.xyz").exists()
    assert plot.plot_history({"loss": [1.0, 0.5]}, tmp_path / "h") == str(tmp_path / "h.png")
    assert_png(tmp_path / "h.png")


@pytest.fixture
def no_matplotlib(monkeypatch):
    """Make every matplotlib import fail, as on a machine without the extra."""
    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.setitem(sys.modules, name, None)
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends",
                 "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)


def test_missing_matplotlib_says_how_to_install(no_matplotlib, tmp_path, capsys):
    hint = r"pip install 'gpunet\[plot\]'"
    with pytest.raises(ImportError, match=hint):
        plot.activations(tmp_path / "a.png")
    with pytest.raises(ImportError, match=hint):
        plot.plot_history({"loss": [1.0]}, tmp_path / "h.png")
    with pytest.raises(ImportError, match=hint):
        plot.grad_norms({"w": 1.0}, tmp_path / "g.png")
    h = History()
    h.append(0, {"loss": 1.0})
    with pytest.raises(ImportError, match=hint):
        h.plot(tmp_path / "h.png")
    assert plot.plot_main(["activations", "--out", str(tmp_path / "c.png")]) == 1
    assert "pip install 'gpunet[plot]'" in capsys.readouterr().err
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("call, err, msg", [
    (lambda p: plot.plot_history({"loss": 1.0}, p / "x.png"), TypeError,
     r"^plot_history: expected 'loss' to hold a list of numbers \(one per epoch\), got float"),
    (lambda p: plot.plot_history({"loss": ["a", "b"]}, p / "x.png"), TypeError,
     r"^plot_history: expected 'loss' to hold a list of numbers \(one per epoch\), got \['a', 'b'\]"),
    (lambda p: plot.plot_history({"loss": [1.0]}, None), TypeError,
     r"^gpunet.plot: expected path to be a str or os.PathLike, got NoneType"),
    (lambda p: plot.plot_history({"loss": [1.0]}, p / "no" / "x.png"), ValueError,
     r"^gpunet.plot: cannot write .*x\.png: no such directory"),
    (lambda p: plot.activations(p / "x.png", x_range=(3, 1)), ValueError,
     r"^activations: expected x_range to be \(low, high\), two finite numbers with low < high, got \(3, 1\)"),
    (lambda p: plot.activations(p / "x.png", x_range=(float("nan"), 1)), ValueError, r"^activations: .*got \(nan, 1\)"),
    (lambda p: plot.activations(p / "x.png", x_range="ab"), ValueError, r"^activations: .*got 'ab'"),
    (lambda p: plot.grad_norms({"0.weight": 0.0, "0.bias": float("nan")}, p / "x.png"), ValueError,
     r"^grad_norms: no norm above 0 and finite to draw on a log axis"),
    (lambda p: plot.grad_norms({"0.weight": "x"}, p / "x.png"), TypeError,
     r"^grad_norms: expected '0.weight' to hold a number or a list of numbers .*, got str"),
])
def test_bad_arguments_name_the_function_and_draw_nothing(tmp_path, call, err, msg):
    """Found by the plot audit: a dict of scalars raised "object of type 'float' has no
    len()", strings float()'s message, path None os.fspath's, a missing folder PIL's
    FileNotFoundError after drawing, x_range (3, 1) or NaN drew a reversed or empty grid,
    all-zero gradient norms matplotlib's "Data cannot be log-scaled"."""
    pytest.importorskip("matplotlib")
    with pytest.raises(err, match=msg):
        call(tmp_path)
    assert not list(tmp_path.rglob("*.png"))
