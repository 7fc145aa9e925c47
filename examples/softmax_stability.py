"""The numerically safe softmax: subtract the row max before exponentiating.

``softmax(z)_i = e^{z_i} / Σ_j e^{z_j}``. Written literally, ``e^z`` overflows to ``inf``
once ``z`` passes ``log(max float)``: about 88.7 in float32 and 709.8 in float64. Then
the quotient is ``inf / inf = nan``. Since ``softmax(z - c) = softmax(z)`` for any
constant ``c`` (the factor ``e^{-c}`` cancels), taking ``c = max_j z_j`` makes every
exponent ``≤ 0``: no overflow, and the largest term is exactly ``e^0 = 1``, so the sum is
at least 1 and never underflows to 0 either.

The same holds for the loss: the naive ``-log(softmax(z)_y)`` is ``nan`` or ``inf`` at
large logits, while ``gpunet.SoftmaxCrossEntropy`` computes
``logsumexp(z) - z_y = m + log Σ e^{z_j - m} - z_y``, finite for any finite logits.

Measured: naive and gpunet softmax of ``[1000, 1001]`` (float32 and float64), the
cross-entropy of logits ``[-1e4, 1e4]``, and the smallest shift ``c`` at which the naive
softmax of ``[c, c+1]`` goes wrong in each dtype.

Run: ``python examples/softmax_stability.py [out_dir]`` (writes softmax_stability.png).
"""
from __future__ import annotations

import numpy

import gpunet
from gpunet.functional import softmax

from _common import main, pyplot, save


def naive_softmax(z):
    """The textbook formula, with no max subtraction (what not to do)."""
    with numpy.errstate(over="ignore", invalid="ignore"):
        e = numpy.exp(z)
        return e / e.sum(axis=-1, keepdims=True)


def naive_cross_entropy(z, y):
    with numpy.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return float(-numpy.log(naive_softmax(z)[numpy.arange(len(y)), y]).mean())


def first_failure(shifts, dtype):
    """The smallest shift ``c`` for which the naive softmax of ``[c, c + 1]`` is wrong: not
    finite, or not summing to 1 (just below the nan region the *sum* overflows while each
    term is finite, giving ``[0, 0]``)."""
    for c in shifts:
        p = naive_softmax(numpy.array([[c, c + 1.0]], dtype=dtype))
        if not numpy.isfinite(p).all() or abs(float(p.sum()) - 1.0) > 1e-3:
            return float(c)
    return float("nan")


def run(quick=False, out_dir=None):
    results = {}
    for dtype in (numpy.float32, numpy.float64):
        z = numpy.array([[1000.0, 1001.0]], dtype=dtype)
        ours = softmax(z)
        results[numpy.dtype(dtype).name] = {
            "naive": naive_softmax(z)[0].tolist(),
            "gpunet": ours[0].tolist(),
            "gpunet_sum": float(ours.sum()),
            "gpunet_dtype": ours.dtype.name,
        }
    z = numpy.array([[-1e4, 1e4], [1e4, -1e4]], dtype=numpy.float32)
    y = numpy.array([1, 1])
    results["cross_entropy"] = {
        "logits": "[[-1e4, 1e4], [1e4, -1e4]], labels [1, 1]",
        "naive": naive_cross_entropy(z, y),
        "gpunet": float(gpunet.SoftmaxCrossEntropy()(z, y)),
        "exact": 1e4,     # row 1 is right (loss 0), row 2 is wrong by 2e4 (loss 2e4): mean 1e4
    }
    step = 1.0 if quick else 0.05
    shifts = numpy.arange(0.0, 1000.0, step)
    results["naive_wrong_from_shift"] = {numpy.dtype(d).name: first_failure(shifts, d)
                                         for d in (numpy.float32, numpy.float64)}
    results["overflow_threshold_log_max"] = {numpy.dtype(d).name: float(numpy.log(numpy.finfo(d).max))
                                             for d in (numpy.float32, numpy.float64)}
    if out_dir is not None:
        results["figure"] = figure(results, out_dir)
    return results


def figure(results, out_dir):
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, dtype, xmax in zip(axes, (numpy.float32, numpy.float64), (150.0, 1000.0)):
        name = numpy.dtype(dtype).name
        shifts = numpy.linspace(0.0, xmax, 1001)
        z = numpy.stack([shifts, shifts + 1.0], axis=1).astype(dtype)
        naive = naive_softmax(z)[:, 1]
        fail = results["naive_wrong_from_shift"][name]
        ax.plot(shifts, naive, lw=4, alpha=0.6, color="tab:orange", label="naive e^z / Σ e^z")
        ax.plot(shifts, softmax(z)[:, 1], "--", lw=1.5, color="black", label="gpunet softmax (row max subtracted)")
        ax.axvspan(fail, xmax, color="tab:red", alpha=0.12, label=f"naive gives [0, 0] or nan (c ≥ {fail:g})")
        ax.axvline(results["overflow_threshold_log_max"][name] - 1.0, color="tab:red", ls=":", lw=1)
        ax.set(xlabel="shift c of the logits [c, c + 1]", ylabel="probability of the second class",
               title=f"{name}: e^z overflows past log(max) = {results['overflow_threshold_log_max'][name]:.1f}",
               ylim=(0, 1), xlim=(0, xmax))
        ax.legend(fontsize=8, loc="lower left")
        ax.grid(True, alpha=0.3)
    fig.suptitle("softmax([c, c + 1]) = [0.269, 0.731] for every c: only the max-subtracted form computes it",
                 fontsize=10)
    return save(fig, out_dir, "softmax_stability.png")


if __name__ == "__main__":
    main(run)
