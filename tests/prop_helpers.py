"""Shared pieces of the property-based tests (tests/test_properties*.py, hypothesis).

``props(n)`` is the one ``@settings`` every property uses: ``n`` examples, no deadline (the
first call of a sim kernel compiles it), ``derandomize=True`` so that CI draws the same
examples on every run and a failure reproduces (``GPUNET_PROPS_SCALE=k`` multiplies every
property's example count by ``k`` for a longer local search; CI leaves it unset). Data are
drawn from a NumPy generator seeded by hypothesis (``seeds``): the shapes and hyper-parameters are what hypothesis
explores and shrinks; the values only need to be generic (no ties, never all zeros).
"""
import os

import numpy
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import gpunet

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


PERMS = [(0, 1, 2, 3), (1, 2, 3, 0), (1, 0, 2, 3), (3, 2, 1, 0), (0, 2, 3, 1), (2, 3, 0, 1)]


def in_layout(a, perm, step=1):
    """``a``'s values as an ``a.shape`` view of C-contiguous memory in axis order ``perm``
    (every 2nd element of a buffer twice as long when ``step`` is 2)."""
    buf = numpy.empty(tuple(a.shape[i] for i in perm) + (step,), a.dtype)[..., 0]
    view = buf.transpose(tuple(numpy.argsort(perm)))
    view[...] = a
    return view


@st.composite
def stacks(draw):
    """A small float64 CNN of random layers (channels c -> ...), and its input shape."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(4, 9)), draw(st.integers(4, 9))
    seed = draw(seeds)
    kinds = draw(st.lists(st.sampled_from(["conv3", "conv1", "conv_s2", "conv_relu", "bn", "relu", "tanh",
                                           "max", "avg", "dropout"]), min_size=1, max_size=4))
    return dict(n=n, c=c, h=h, w=w, kinds=kinds, seed=seed)


def build_stack(case):
    gpunet.manual_seed(case["seed"] % 2**32)
    c, layers = case["c"], []
    for k in case["kinds"]:
        if k.startswith("conv"):
            out = c + 1
            layers.append({"conv3": lambda: gpunet.Conv2D(c, out, 3, padding=1),
                           "conv1": lambda: gpunet.Conv2D(c, out, 1),
                           "conv_s2": lambda: gpunet.Conv2D(c, out, (2, 3), stride=2, padding=(1, 1)),
                           "conv_relu": lambda: gpunet.Conv2D(c, out, 3, padding=1, activation="relu")}[k]())
            c = out
        else:
            layers.append({"bn": lambda: gpunet.BatchNorm(c), "relu": gpunet.ReLU, "tanh": gpunet.Tanh,
                           "max": lambda: gpunet.MaxPool2D(2, 1), "avg": lambda: gpunet.AvgPool2D(3, 1, 1),
                           "dropout": lambda: gpunet.Dropout(0.3, seed=case["seed"])}[k]())
    return gpunet.Sequential(*layers).to(dtype=numpy.float64)
