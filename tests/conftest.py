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

``GPUNET_FAILURE_LOG=FILE`` appends each failed or errored test (setup, call or teardown)
and each collection error to FILE as it happens, traceback and captured output included, so
that a run stopped by ``timeout`` still leaves every failure so far (pytest prints them only at
the end); a run stopped by SIGTERM also writes the tests still running. Under pytest-xdist the
controller writes (it receives every worker's reports), the workers do not.
"""
import os
import signal
import time

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


class FailureLog:
    """The ``GPUNET_FAILURE_LOG`` writer (module docstring). The file is opened, appended to
    and closed for each record, so what is written is in the file when the process is killed
    (GPU run 4, 2026-11-30: the run was cut off by its time limit while two tests hung, and
    every failure's traceback went with pytest's summary)."""

    SECTION_CHARS = 20000      # the tail of a long captured output is where the error is

    def __init__(self, path):
        self.path = path
        self.running = {}      # nodeid -> time.time() at its start, for the SIGTERM note
        self.previous = None   # the SIGTERM handler before ours, while ours is set

    def write(self, text):
        with open(self.path, "a", encoding="utf-8", errors="replace") as f:
            f.write(text)
            f.flush()

    def pytest_sessionstart(self, session):
        self.write(f"==== pytest started {time.strftime('%Y-%m-%d %H:%M:%S')}, pid {os.getpid()}: "
                   f"{' '.join(session.config.invocation_params.args)}\n")
        self.previous = signal.signal(signal.SIGTERM, self.on_sigterm) or signal.SIG_DFL

    def pytest_sessionfinish(self, session, exitstatus):
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        self.write(f"==== pytest finished {time.strftime('%Y-%m-%d %H:%M:%S')}, exit status {int(exitstatus)}\n")

    def pytest_runtest_logstart(self, nodeid, location):
        self.running[nodeid] = time.time()

    def pytest_runtest_logfinish(self, nodeid, location):
        self.running.pop(nodeid, None)

    def record(self, what, report):
        text = [f"==== {what} {report.nodeid} at {time.strftime('%H:%M:%S')}"
                + (f" ({report.duration:.1f} s)" if hasattr(report, "duration") else "") + "\n",
                report.longreprtext.rstrip() + "\n"]
        for title, body in getattr(report, "sections", ()):
            if len(body) > self.SECTION_CHARS:
                body = f"[... {len(body) - self.SECTION_CHARS} characters left out ...]\n" + body[-self.SECTION_CHARS:]
            text.append(f"---- {title}\n{body.rstrip()}\n")
        self.write("".join(text))

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.record("FAILED" if report.when == "call" else f"ERROR at {report.when} of", report)

    def pytest_collectreport(self, report):
        if report.failed:
            self.record("ERROR collecting", report)

    def on_sigterm(self, signum, frame):
        now = time.time()
        running = "".join(f"  {nodeid} ({now - t0:.0f} s)\n" for nodeid, t0 in self.running.items())
        self.write(f"==== SIGTERM at {time.strftime('%H:%M:%S')}; still running:\n" + (running or "  (none)\n"))
        signal.signal(signal.SIGTERM, self.previous)
        if callable(self.previous):
            self.previous(signum, frame)
        else:
            os.kill(os.getpid(), signal.SIGTERM)


def pytest_configure(config):
    if os.environ.get("GPUNET_CI_RECORD") or os.environ.get("GPUNET_CI_RERUN"):
        ci_stages.register(config)
    if os.environ.get("GPUNET_FAILURE_LOG") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(FailureLog(os.environ["GPUNET_FAILURE_LOG"]), "gpunet-failure-log")


def pytest_report_header(config):
    return f"gpunet backends under test: {', '.join(BACKENDS)}"
