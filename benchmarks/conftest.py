"""pytest-benchmark suites: ``pytest benchmarks/ --benchmark-only`` (not part of the default
test run: pyproject's ``testpaths`` is ``tests``).

Every benchmark belongs to a group (``--benchmark-group-by=group``, the default) holding the
same computation three ways: ``gpunet``, ``numpy`` (a plain-NumPy reference of the same math,
``benchmarks/references.py``) and ``torch`` (PyTorch on the CPU, when installed; skipped
otherwise). Results are checked against each other once before timing.

Threads: NumPy's BLAS and PyTorch get the same count, ``GPUNET_BENCH_THREADS`` or every CPU
this process may use; OpenBLAS reads it at import, so it is set here before NumPy loads
when the environment does not fix it already.
"""
import os
import sys

THREADS = int(os.environ.get("GPUNET_BENCH_THREADS", 0)) or len(os.sched_getaffinity(0))
for _k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_k, str(THREADS))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))              # references
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # gpunet

import numpy  # noqa: E402
import pytest  # noqa: E402

IMPLS = ("gpunet", "numpy", "torch")


def torch_or_skip():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(THREADS)
    return torch


@pytest.fixture
def rng():
    return numpy.random.default_rng(0)


def pytest_report_header(config):
    from gpunet.bench import cpu_model
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    return (f"gpunet benchmarks: {cpu_model()}, {THREADS} thread(s), numpy {numpy.__version__}; "
            f"OpenBLAS overrides: {env or 'none'}")
