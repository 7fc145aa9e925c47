"""One suite, run on every available backend.

The ``xp`` fixture yields ``numpy`` and, where CuPy sees a CUDA device, ``cupy``: a test
body written against ``xp`` runs on both (as CuPy's own ``numpy_cupy_allclose`` tests do).
``device`` is the matching gpunet device string. Build inputs on the host with a seeded
NumPy generator and move them with ``xp.asarray``; compare with ``gpunet.to_numpy``.
"""
import numpy
import pytest

from gpunet import backend

BACKENDS = ["numpy"] + (["cupy"] if backend.cuda_available() else [])


@pytest.fixture(params=BACKENDS)
def xp(request):
    if request.param == "numpy":
        return numpy
    return backend.cupy_module()


@pytest.fixture
def device(xp):
    return "cpu" if xp is numpy else "cuda"


@pytest.fixture
def rng():
    return numpy.random.default_rng(1234)


def pytest_report_header(config):
    return f"gpunet backends under test: {', '.join(BACKENDS)}"
