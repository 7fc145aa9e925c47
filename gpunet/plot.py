"""Plots of what training does: learning curves, activations, gradient norms.

Needs the optional ``plot`` extra (``pip install 'gpunet[plot]'``, i.e. matplotlib),
imported only when a plot is drawn. Figures are drawn with matplotlib's Agg backend on a
``Figure`` of their own (no ``pyplot``), so they never open a window nor change the
backend of a session that uses matplotlib itself; each function writes one image file
(the format follows the extension: ``.png``, ``.pdf``, ``.svg``) and returns its path.

* ``plot_history(history, path)``: train/validation loss and accuracy per epoch
  (``History.plot(path)`` calls it);
* ``activations(path)``: every elementwise activation of ``gpunet.functional.activations``
  beside its derivative;
* ``grad_norms(history_or_dict, path)``: per-parameter gradient norms on a log axis.

Command line: ``plot_main(argv)`` implements ``gpunet plot activations --out a.png``.
"""
from __future__ import annotations

import math
import os
import sys

import numpy

INSTALL_HINT = "pip install 'gpunet[plot]'"

# Elementwise activations, in the course's order. Softmax and log-softmax are omitted:
# they map a vector to a vector and have no curve of one variable.
ELEMENTWISE = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu", "softplus")


def _figure(**kw):
    """A matplotlib Figure bound to an Agg canvas; ImportError with the fix when missing."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.backends.backend_agg import FigureCanvasAgg
    except ImportError as e:
        raise ImportError(f"gpunet.plot needs matplotlib, which is not installed: {INSTALL_HINT}") from e
    fig = Figure(**kw)
    FigureCanvasAgg(fig)
    return fig


def image_path(path):
    """The file an image for ``path`` goes to, checked before anything is drawn. The format
    follows the extension; a path without one gets matplotlib's default format
    (``savefig.format``, PNG) and its extension appended, as ``savefig`` does. An extension
    matplotlib cannot write raises ``ValueError`` naming the path and the formats it can,
    and so does a file that cannot be written (in a missing directory, over a directory,
    without permission); a path that is not a str or os.PathLike raises ``TypeError``;
    ImportError with the fix when matplotlib is missing."""
    from .checkpoint import unwritable
    try:
        os.fspath(path)
    except TypeError:
        raise TypeError(f"gpunet.plot: expected path to be a str or os.PathLike, got "
                        f"{type(path).__name__}") from None
    path, problem = _image_path(path)
    if problem is None:
        problem = unwritable(path)
    if problem:
        raise ValueError(f"gpunet.plot: cannot write {path}: {problem}")
    return path


def _image_path(path):
    """``(path written, None)``, or ``(path, why it cannot be written)``."""
    path = os.fspath(path)
    try:
        import matplotlib
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError as e:
        raise ImportError(f"gpunet.plot needs matplotlib, which is not installed: {INSTALL_HINT}") from e
    ext = os.path.splitext(path)[1][1:]
    if not ext:
        return f"{path}.{matplotlib.rcParams['savefig.format']}", None
    known = FigureCanvasBase.get_supported_filetypes()
    if ext.lower() not in known:
        return path, (f"expected an image extension ({', '.join('.' + k for k in sorted(known))}), "
                      f"got .{ext}")
    return path, None


def _save(fig, path, written):
    """Write ``fig`` to ``path`` (``written``: what ``image_path`` made of it, checked
    before the figure was drawn); returns ``written``."""
    fig.savefig(os.fspath(path), dpi=120)
    return written


def _per_epoch(who, key, values, scalar=False):
    """``values`` of ``history[key]`` as a list of floats (``scalar=True``: a number as a
    float, too); ``TypeError`` naming the key when it is not a sequence of numbers (one per
    epoch), or a number where ``scalar``."""
    expected = f"{'a number or ' if scalar else ''}a list of numbers (one per epoch)"
    try:
        ndim = numpy.ndim(values)
    except ValueError:              # ragged nested lists
        ndim = None
    if isinstance(values, (str, bytes)) or ndim not in ((0, 1) if scalar else (1,)):
        raise TypeError(f"{who}: expected {key!r} to hold {expected}, got {type(values).__name__}")
    try:
        return float(values) if ndim == 0 else [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{who}: expected {key!r} to hold {expected}, got {values!r}"[:300]) from None


def _records(history, who):
    """``{key: [floats]}`` and the x values (1-based epochs) of a History or a dict."""
    d = getattr(history, "history", history)
    if not isinstance(d, dict):
        raise TypeError(f"{who}: expected a gpunet History or a dict of per-epoch lists, "
                        f"got {type(history).__name__}")
    return d


def _epoch_axis(ax):
    """Label ``ax``'s x axis "epoch", with ticks at whole epochs only (matplotlib's default
    locator puts ticks at 1.2, 1.4, ... for a run of a few epochs)."""
    from matplotlib.ticker import MaxNLocator
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _epochs(history, n):
    ep = getattr(history, "epoch", None)
    if ep is not None and len(ep) == n:
        return [e + 1 for e in ep]
    return list(range(1, n + 1))


def plot_history(history, path):
    """Learning curves: one panel per quantity (loss first, then accuracy, then any other
    metric), the training curve and, where recorded, the validation curve (``val_<key>``)
    against the epoch (1-based). Keys with a ``/`` (diagnostics such as
    ``grad_norm/0.weight``) are left to ``grad_norms``.

    ``history``: a ``gpunet.train.History`` or a dict ``{key: [one float per epoch]}``
    (a value that is not a list of numbers raises ``TypeError`` naming its key).
    A widening gap between the two loss curves is overfitting; two high curves that stay
    together are underfitting.
    """
    d = _records(history, "plot_history")
    written = image_path(path)
    d = {k: _per_epoch("plot_history", k, v) for k, v in d.items() if "/" not in str(k)}
    bases = []
    for k in d:
        if "/" in k:
            continue
        b = k[4:] if k.startswith("val_") else k
        if b not in bases:
            bases.append(b)
    if not bases:
        raise ValueError(f"plot_history: no loss or metric curves to plot; keys: {sorted(d)}")
    order = {"loss": 0, "accuracy": 1}
    bases.sort(key=lambda b: order.get(b, 2))
    fig = _figure(figsize=(5.5 * len(bases), 4.2), layout="constrained")
    axes = fig.subplots(1, len(bases), squeeze=False)[0]
    for ax, b in zip(axes, bases):
        for key, label, style in ((b, "train", "-o"), (f"val_{b}", "validation", "--s")):
            if key in d and len(d[key]):
                ys = d[key]
                ax.plot(_epochs(history, len(ys)), ys, style, markersize=3, label=label)
        pretty = b.replace("_", " ")
        ax.set_title(pretty.capitalize() if b != "loss" else "Loss")
        _epoch_axis(ax)
        ax.set_ylabel(pretty)
        ax.grid(True, alpha=0.3)
        ax.legend()
    fig.suptitle("Training history")
    return _save(fig, path, written)


def activations(path, x_range=(-4.0, 4.0)):
    """A grid with every elementwise activation (``ELEMENTWISE``) and its derivative,
    computed by ``gpunet.functional.activations`` (forward, then backward with ``dy = 1``)
    on ``x_range``: the slopes show why sigmoid/tanh saturate (derivative → 0, at most 1/4
    for sigmoid) and why ReLU does not for ``x > 0``. ``x_range`` is ``(low, high)``, two
    finite numbers with ``low < high`` (else ``ValueError``)."""
    from .functional import activations as FA
    try:
        low, high = (float(v) for v in x_range)
        ok = math.isfinite(low) and math.isfinite(high) and low < high
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"activations: expected x_range to be (low, high), two finite numbers with "
                         f"low < high, got {x_range!r}")
    written = image_path(path)
    x = numpy.linspace(low, high, 801)
    cols = 4
    rows = math.ceil(len(ELEMENTWISE) / cols)
    fig = _figure(figsize=(4.0 * cols, 3.3 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, ELEMENTWISE):
        y = FA.FORWARD[name](x.copy())
        dydx = FA.BACKWARD[name](numpy.ones_like(x), x, y)
        ax.plot(x, y, label="f(x)")
        ax.plot(x, dydx, "--", label="f'(x)")
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        ax.axvline(0.0, color="0.6", linewidth=0.6)
        ax.set_title(name)
        ax.set_xlabel("x")
        ax.set_ylabel("value")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left")
    for ax in axes[len(ELEMENTWISE):]:
        ax.set_visible(False)
    fig.suptitle("Activation functions and their derivatives")
    return _save(fig, path, written)


def _grad_series(history_or_dict):
    d = _records(history_or_dict, "grad_norms")
    prefixed = {k[len("grad_norm/"):]: v for k, v in d.items() if str(k).startswith("grad_norm/")}
    if prefixed:
        return prefixed
    if hasattr(history_or_dict, "history"):
        raise ValueError("grad_norms: the History has no 'grad_norm/<name>' keys; train with "
                         "callbacks=[gpunet.diagnostics.DiagnosticsCallback()] to record them")
    return dict(d)


def grad_norms(history_or_dict, path):
    """Per-parameter gradient L2 norms on a logarithmic axis.

    ``history_or_dict``: a History recorded with ``DiagnosticsCallback`` (its
    ``grad_norm/<name>`` keys), or a dict ``{name: float}`` (one bar per parameter, e.g.
    ``gpunet.diagnostics.grad_norms(model)``) or ``{name: [float per epoch]}`` (one curve
    per parameter). Norms falling by orders of magnitude towards the first layers are
    vanishing gradients; norms growing without bound are exploding ones. Zero and NaN
    norms are not drawn (they have no place on a log axis); when no norm is left to draw,
    ``ValueError`` says so.
    """
    series = _grad_series(history_or_dict)
    if not series:
        raise ValueError("grad_norms: nothing to plot (an empty dict)")
    written = image_path(path)
    series = {k: _per_epoch("grad_norms", k, v, scalar=True) for k, v in series.items()}
    if not any(v > 0 for vs in series.values() for v in numpy.atleast_1d(vs) if math.isfinite(v)):
        raise ValueError(f"grad_norms: no norm above 0 and finite to draw on a log axis (zero and "
                         f"NaN norms are not drawn): {series!r}"[:300])
    scalar = all(numpy.ndim(v) == 0 for v in series.values())
    names = list(series)
    if scalar:
        fig = _figure(figsize=(max(6.0, 0.45 * len(names) + 2.0), 4.5), layout="constrained")
        ax = fig.subplots()
        vals = numpy.array([float(series[k]) for k in names])
        shown = numpy.where(numpy.isfinite(vals) & (vals > 0), vals, numpy.nan)
        ax.bar(range(len(names)), shown, color="tab:blue")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=60, ha="right", fontsize=8)
        ax.set_xlabel("parameter")
        ax.set_title("Gradient norm per parameter")
    else:
        fig = _figure(figsize=(8.5, 4.8), layout="constrained")
        ax = fig.subplots()
        epochs = getattr(history_or_dict, "epoch", None)
        for k in names:
            ys = numpy.atleast_1d(numpy.asarray(series[k], dtype=float))
            ys = numpy.where(ys > 0, ys, numpy.nan)
            xs = _epochs(history_or_dict, len(ys)) if epochs is not None else range(1, len(ys) + 1)
            style = "-" if k.endswith("weight") else ":"
            ax.plot(list(xs), ys, style, marker="o", markersize=3, label=k)
        _epoch_axis(ax)
        ax.set_title("Gradient norm per parameter, last step of each epoch")
        ax.legend(fontsize=7, ncol=max(1, math.ceil(len(names) / 12)), loc="center left",
                  bbox_to_anchor=(1.01, 0.5))
    ax.set_yscale("log")
    ax.set_ylabel("L2 norm of the gradient (log scale)")
    ax.grid(True, which="both", alpha=0.3)
    ax.set_axisbelow(True)
    return _save(fig, path, written)


def plot_main(argv=None) -> int:
    """``gpunet plot activations [--out PATH] [--xmin X] [--xmax X]``: write the activation
    grid. Returns the exit status (0 on success, 1 with a message when matplotlib is
    missing). A bad option (an unknown plot, a value that is not a number, ``--xmin`` not
    below ``--xmax``) or an ``--out`` that cannot be written (no such directory, a
    directory, an extension matplotlib has no format for) raises ``SystemExit`` with a
    one-line message before anything is drawn; the ``gpunet`` command prints it as one line
    with exit status 2."""
    from .cli import UserError, _Parser, _check_writable, user_path
    # gpunet's parser: an argparse error is one line, not the usage block and then the line
    parser = _Parser(prog="gpunet plot", description="Draw gpunet's teaching plots.")
    sub = parser.add_subparsers(dest="what", required=True, metavar="{activations}")
    p = sub.add_parser("activations", help="every activation function and its derivative")
    p.add_argument("--out", type=user_path, default="activations.png", help="image file to write (default: %(default)s)")
    p.add_argument("--xmin", type=float, default=-4.0, help="left end of the x axis (default: %(default)s)")
    p.add_argument("--xmax", type=float, default=4.0, help="right end of the x axis (default: %(default)s)")
    try:
        args = parser.parse_args(argv)
        if not (math.isfinite(args.xmin) and math.isfinite(args.xmax) and args.xmin < args.xmax):
            p.error(f"--xmin ({args.xmin}) must be below --xmax ({args.xmax}), both finite")
        try:
            _, problem = _image_path(args.out)
        except ImportError as e:
            print(f"gpunet plot: {e}", file=sys.stderr)
            return 1
        if problem:
            raise UserError(f"gpunet plot: error: --out {args.out}: {problem}")
        _check_writable("--out", args.out, prog="gpunet plot")
    except UserError as e:      # SystemExit(str): one line under `python -m gpunet.cli` too
        raise SystemExit(str(e)) from None
    path = activations(args.out, (args.xmin, args.xmax))
    print(f"wrote {path}")
    return 0


__all__ = ["plot_history", "activations", "grad_norms", "plot_main", "image_path", "INSTALL_HINT", "ELEMENTWISE"]
