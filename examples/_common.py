"""Helpers shared by the course examples (not part of gpunet's API).

Every example exposes ``run(quick=False, out_dir=None) -> dict`` of measured figures and a
``__main__`` that runs the full mode and writes its PNG to ``docs/figures`` (or to the
directory given as an argument; ``--quick`` runs the few-second variant the test suite
runs). ``out_dir=None`` draws no figure, so the examples run without matplotlib (it is
the ``plot`` extra, imported only when a figure is written): without it, ``__main__``
prints the numbers, then says the figure was skipped and how to get it.
"""
from __future__ import annotations

import os
import sys

import numpy

import gpunet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIGURES = os.path.join(REPO, "docs", "figures")
DPI = 90


def digits(n_train=None, standardize=True):
    """The embedded digits as ``(X_train, y_train), (X_test, y_test)``.

    ``n_train`` keeps the first ``n_train`` training images (the split is already a
    seeded permutation, so this is a random subset). ``standardize`` centres and scales
    every pixel with the training set's statistics (``(x - mean) / (std + 0.1)``, the
    0.1 keeping the always-blank border pixels at 0), which deep nets train on more
    readily than raw [0, 1] pixels.
    """
    (X, y), (Xt, yt) = gpunet.datasets.load_digits()
    if n_train is not None:
        X, y = X[:n_train], y[:n_train]
    if standardize:
        mean = X.mean(axis=0)
        scale = X.std(axis=0) + numpy.float32(0.1)
        X, Xt = (X - mean) / scale, (Xt - mean) / scale
    return (X.astype(numpy.float32), y), (Xt.astype(numpy.float32), yt)


PLOT_HINT = 'pip install "gpunet[plot]"'


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (a file, never a window)."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"writing the figure needs matplotlib: {PLOT_HINT}") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save(fig, out_dir, name):
    """Write ``fig`` to ``out_dir/name`` at a modest resolution; return the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    pyplot().close(fig)
    return path


def main(run, argv=None):
    """The ``__main__`` of an example: ``[--quick] [out_dir]``. Runs the full (or quick)
    mode and prints the measured figures; the figure goes to ``out_dir`` (default
    ``docs/figures``) when matplotlib is installed, else a last line says it was skipped
    and how to get it. The numbers never depend on matplotlib."""
    args = list(sys.argv[1:] if argv is None else argv)
    quick = "--quick" in args
    args = [a for a in args if a != "--quick"]
    if len(args) > 1 or any(a.startswith("-") for a in args):
        sys.exit(f"usage: python {os.path.basename(sys.argv[0])} [--quick] [out_dir]")
    out_dir = args[0] if args else FIGURES
    draw = have_matplotlib()
    results = run(quick=quick, out_dir=out_dir if draw else None)
    print(format_results(results))
    if not draw:
        print(f"figure skipped: matplotlib is not installed ({PLOT_HINT} to write it to {out_dir})")
    return results


def format_results(results, indent=""):
    lines = []
    for k, v in results.items():
        if isinstance(v, dict):
            lines.append(f"{indent}{k}:")
            lines.append(format_results(v, indent + "  "))
        elif isinstance(v, float):
            lines.append(f"{indent}{k}: {v:.4g}")
        elif isinstance(v, (list, tuple)) and v and isinstance(v[0], float):
            lines.append(f"{indent}{k}: [" + ", ".join(f"{x:.3g}" for x in v) + "]")
        else:
            lines.append(f"{indent}{k}: {v}")
    return "\n".join(lines)
