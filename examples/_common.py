"""Helpers shared by the course examples (not part of gpunet's API).

Every example exposes ``run(quick=False, out_dir=None) -> dict`` of measured figures and a
``__main__`` that runs the full mode and writes its PNG to ``docs/figures`` (or to the
directory given as the first argument). ``quick=True`` is the few-second variant the
test suite runs; ``out_dir=None`` draws no figure, so the examples run without
matplotlib (it is the ``plot`` extra, imported only when a figure is written).
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


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (a file, never a window)."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover
        raise ImportError("writing the figure needs matplotlib: pip install 'gpunet[plot]'") from e
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


def main(run):
    """The ``__main__`` of an example: the full mode, the figure in ``docs/figures`` or
    ``sys.argv[1]``, and the measured figures printed."""
    out_dir = sys.argv[1] if len(sys.argv) > 1 else FIGURES
    results = run(quick=False, out_dir=out_dir)
    print(format_results(results))
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
