#!/usr/bin/env python3
"""Fit the coefficients of the exact GELU's normal tail (``gpunet.functional.activations``).

GELU's exact form is ``x·Φ(x)``. gpunet evaluates the upper tail of the normal
distribution, ``q(a) = Φ(-a) = erfc(a/√2)/2`` for ``a = |x| >= 0``, from elementary ops
that NumPy, CuPy and the sim device all have::

    q(a) = e^(-a²/2) · w · P(w - w0),    w = K/(a + K) in (0, 1]

``e^(-a²/2)·w`` carries the tail's shape (``q ~ e^(-a²/2)/(a√(2π))``), so the polynomial
``P`` only fits the slowly varying ``S(a) = q(a)·e^(a²/2)/w``: between 1/2 at ``a = 0``
and ``1/(K√(2π))`` as ``a -> ∞``. Then GELU is ``max(x, 0) - a·q(a)`` and its derivative
``Φ(x) + x·φ(x)``, with ``Φ(x) = q`` below 0 and ``1 - q`` above: both keep their relative
precision at large negative x, where PyTorch's ``x/2·(1 + erf(x/√2))`` cancels.

How the coefficients are made: ``S`` is sampled with mpmath (40 digits) at the 64
Chebyshev points of ``w`` in ``[K/(a_max + K), 1]``, its Chebyshev series computed there
exactly (a discrete cosine transform in mpmath), truncated at degree ``n`` and converted,
still in mpmath, to the powers of ``v = w - w0`` (``w0`` the interval's midpoint, where the
power basis is as well conditioned as the Chebyshev one); each coefficient is rounded to a
float once. ``a_max`` is where ``e^(-a²/2)`` underflows to 0 in the dtype, so ``q`` is 0
beyond it whatever ``P`` gives (the code clamps ``a`` there). ``K`` and ``n`` were chosen
by scanning: the lowest degree whose truncation error is below the float rounding of the
rest of the evaluation (``--scan``).

Usage: ``python tools/fit_gelu_erfc.py`` prints the two tables pasted into
``gpunet/functional/activations.py`` (``_ERFC_F64``, ``_ERFC_F32``) and, with
``--check``, measures the relative error of gpunet's ``q`` against mpmath in bins of
``a`` (needs mpmath, which is not a gpunet dependency: ``pip install mpmath``; it comes
with PyTorch). ``tests/test_activations.py`` reruns the fit and compares it with the
tables, where mpmath is installed.
"""
from __future__ import annotations

import argparse
import sys

# (K, degree n, a_max) per evaluation dtype. float64: e^(-a²/2) is 0 from a = 38.6;
# float32 from 14.4. a_max is the clamp of a in the code.
SETTINGS = {"float64": (4.0, 22, 40.0), "float32": (3.0, 8, 16.0)}
NODES = 64


def fit(K: float, n: int, a_max: float, nodes: int = NODES):
    """``(K, w0, coefficients)`` as floats: ``q(a) ≈ e^(-a²/2)·w·Σ c_k (w - w0)^k``."""
    import mpmath
    mpmath.mp.dps = 40
    K_, a_max_ = mpmath.mpf(K), mpmath.mpf(a_max)
    w_min = K_ / (a_max_ + K_)
    w0, h = (1 + w_min) / 2, (1 - w_min) / 2

    def S(z):                                   # z in [-1, 1] -> w in [w_min, 1] -> a
        w = w0 + h * z
        a = K_ * (1 - w) / w
        return mpmath.erfc(a / mpmath.sqrt(2)) / 2 * mpmath.exp(a * a / 2) / w

    theta = [mpmath.pi * (j + mpmath.mpf(1) / 2) / nodes for j in range(nodes)]
    f = [S(mpmath.cos(t)) for t in theta]
    cheb = [2 * mpmath.fsum(f[j] * mpmath.cos(k * theta[j]) for j in range(nodes)) / nodes
            for k in range(n + 1)]
    cheb[0] /= 2
    # Chebyshev -> powers of z, exactly: T_k+1 = 2z·T_k - T_k-1
    T = [[mpmath.mpf(1)], [mpmath.mpf(0), mpmath.mpf(1)]]
    while len(T) <= n:
        up = [mpmath.mpf(0)] + [2 * t for t in T[-1]]
        down = T[-2] + [mpmath.mpf(0)] * (len(up) - len(T[-2]))
        T.append([u - d for u, d in zip(up, down)])
    power = [mpmath.mpf(0)] * (n + 1)
    for k in range(n + 1):
        for i, t in enumerate(T[k]):
            power[i] += cheb[k] * t
    # powers of z = v/h -> powers of v = w - w0
    coefficients = tuple(float(c / h ** i) for i, c in enumerate(power))
    return K, float(w0), coefficients, float(abs(cheb[n]))


def tables():
    return {dt: fit(*SETTINGS[dt])[:3] for dt in SETTINGS}


def check(bins=(0, 1, 2, 3, 5, 8, 12, 20, 30, 40), per_bin=400):
    """Relative error of gpunet's ``q`` (through ``_normal_tail``) against mpmath, in units
    of the dtype's epsilon, per bin of ``a``; only where the true ``q`` is a normal number."""
    import mpmath
    import numpy
    from gpunet.functional.activations import _normal_tail
    mpmath.mp.dps = 40
    rng = numpy.random.default_rng(0)
    for dt in (numpy.float64, numpy.float32):
        eps, tiny = float(numpy.finfo(dt).eps), float(numpy.finfo(dt).tiny)
        print(f"{numpy.dtype(dt).name}: relative error of q = Φ(-a) in units of eps ({eps:.3g})")
        for lo, hi in zip(bins[:-1], bins[1:]):
            a = rng.uniform(lo, hi, per_bin).astype(dt)
            q = _normal_tail(numpy, a)[0].astype(numpy.float64)
            ref = numpy.array([float(mpmath.erfc(mpmath.mpf(float(v)) / mpmath.sqrt(2)) / 2) for v in a])
            ok = ref > tiny
            if ok.any():
                r = numpy.abs(q[ok] / ref[ok] - 1) / eps
                print(f"  a in [{lo:g}, {hi:g}): max {r.max():.1f}, 99th percentile {numpy.quantile(r, 0.99):.1f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="measure gpunet's q against mpmath")
    ap.add_argument("--scan", action="store_true", help="print the last Chebyshev coefficient for other K, n")
    args = ap.parse_args(argv)
    if args.scan:
        for dt, (_, _, a_max) in SETTINGS.items():
            for K in (2.0, 3.0, 4.0, 5.0):
                for n in range(6, 26, 2):
                    print(f"{dt} K={K:g} n={n}: |last Chebyshev coefficient| {fit(K, n, a_max)[3]:.1e}")
        return 0
    for dt, (K, w0, c) in tables().items():
        print(f"_ERFC_{'F64' if dt == 'float64' else 'F32'} = ({K!r}, {w0!r}, (")
        for i in range(0, len(c), 3):
            print("    " + " ".join(f"{v!r}," for v in c[i:i + 3]))
        print("))")
    if args.check:
        check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
