"""Shared pieces of the property-based tests (tests/test_properties*.py, hypothesis).

``props(n)`` is the one ``@settings`` every property uses: ``n`` examples, no deadline (the
first call of a sim kernel compiles it), ``derandomize=True`` so that CI draws the same
examples on every run and a failure reproduces (``GPUNET_PROPS_SCALE=k`` multiplies every
property's example count by ``k`` for a longer local search; CI leaves it unset). Data are drawn from a NumPy generator
seeded by hypothesis (``seeds``): the shapes and hyper-parameters are what hypothesis
explores and shrinks; the values only need to be generic (no ties, never all zeros).
"""
import os

import numpy
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

seeds = st.integers(0, 2**32 - 1)


def props(n, slow_data=False):
    """``@settings`` of a property with ``n`` examples. ``slow_data``: the property draws
    from ``st.data()`` inside the test, which hypothesis reports as ``too_slow`` on a
    loaded 2-core machine although each draw is small; that check (only) is suppressed."""
    suppress = [HealthCheck.too_slow] if slow_data else []
    n *= int(os.environ.get("GPUNET_PROPS_SCALE", "1"))
    return settings(max_examples=n, deadline=None, derandomize=True, suppress_health_check=suppress,
                    print_blob=True)


def normal(seed, shape, scale=1.0, dtype=numpy.float64):
    """Standard-normal values times ``scale``, from a generator seeded by ``seed``."""
    return (numpy.random.default_rng(seed).standard_normal(shape) * scale).astype(dtype)


def conv_geometry(draw, max_hw=10):
    """``(H, W, kernel, stride, padding)`` pairs with at least one output position; the
    image sizes straddle ``gpunet.functional.conv``'s small-image (gather-matrix) and
    whole-batch-rows paths (``H*W`` at most / above 48 and 64)."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), max_hw))
    w = draw(st.integers(max(1, kw - 2 * pw), max_hw))
    return h, w, (kh, kw), (sh, sw), (ph, pw)


def pool_geometry(draw, max_hw=9):
    """``(H, W, kernel, stride or None, padding)`` that the pooling layers accept: padding
    at most half the kernel, at least one output position."""
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), max_hw))
    w = draw(st.integers(max(1, kw - 2 * pw), max_hw))
    return h, w, (kh, kw), stride, (ph, pw)
