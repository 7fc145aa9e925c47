"""One suite, run on every available backend.

The ``xp`` fixture yields ``numpy``; where CuPy sees a CUDA device, ``cupy``; and where a
host C++ compiler is found, the sim device's array module ``gpunet.sim.array`` (the
simulated CUDA device, DESIGN §12): a test body written against ``xp`` runs on each (as
CuPy's own ``numpy_cupy_allclose`` tests do). ``device`` is the matching gpunet device
string (``"cpu"``, ``"cuda"``, ``"sim"``). Build inputs on the host with a seeded NumPy
generator and move them with ``xp.asarray``; compare with ``gpunet.to_numpy``.

GPU-only tests (kernels against their NumPy reference, CPU/GPU parity) take ``gpu_xp`` /
``gpu_device`` instead: every GPU-like backend present, ``"cuda"`` and ``"sim"``; they skip
where there is neither. Sim-only tests (cost counters, launch budgets) take ``sim_xp``,
which skips where the sim has no C++ compiler (CuPy or not). ``GPUNET_REQUIRE_SIM=1`` (CI)
turns a missing C++ compiler into an error instead of silently dropping the sim from the
suite.
"""
import os

import numpy
import pytest

if os.environ.get("GPUNET_CI_RECORD") or os.environ.get("GPUNET_CI_RERUN"):
    import ci_stages     # CI's stage 1 records what it covered, stage 2 runs the rest (.ci/run)
    ci_stages.start()    # before gpunet is imported, to see what it asks for

from gpunet import backend, sim  # noqa: E402

if os.environ.get("GPUNET_REQUIRE_SIM", "") not in ("", "0") and sim.compiler() is None:
    raise pytest.UsageError("GPUNET_REQUIRE_SIM is set but no C++ compiler was found for the "
                            "sim device ($CXX, g++, c++, clang++)")

GPU_BACKENDS = (["cupy"] if backend.cuda_available() else []) + (["sim"] if sim.compiler() else [])
BACKENDS = ["numpy"] + GPU_BACKENDS


def _module(name):
    if name == "numpy":
        return numpy
    if name == "cupy":
        return backend.cupy_module()
    return backend.require_sim()


@pytest.fixture(params=BACKENDS)
def xp(request):
    return _module(request.param)


@pytest.fixture
def device(xp):
    return backend.device_of(xp.empty(0)).split(":")[0]


@pytest.fixture(params=GPU_BACKENDS or [pytest.param(None, marks=pytest.mark.skip(
    reason="needs a CUDA device (CuPy) or a C++ compiler for the sim device"))])
def gpu_xp(request):
    return _module(request.param)


@pytest.fixture
def gpu_device(gpu_xp):
    return backend.device_of(gpu_xp.empty(0)).split(":")[0]


@pytest.fixture
def sim_xp():
    """The sim device's array module, for sim-only tests (cost counters, launch budgets):
    skips where there is no C++ compiler, without asking the sim for it."""
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    return sim.require()


@pytest.fixture
def rng():
    return numpy.random.default_rng(1234)


def pytest_configure(config):
    if os.environ.get("GPUNET_CI_RECORD") or os.environ.get("GPUNET_CI_RERUN"):
        ci_stages.register(config)


def pytest_report_header(config):
    return f"gpunet backends under test: {', '.join(BACKENDS)}"
