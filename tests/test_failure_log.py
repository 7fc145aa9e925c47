"""conftest.py's GPUNET_FAILURE_LOG: each failure is in the file as soon as its test ends, so a
run killed by its time limit still leaves every traceback so far (GPU run 4, 2026-11-30: the
run was cut off while two tests hung, and pytest's summary, with every traceback, went with
it). A pytest run of a small suite with this conftest, killed while its last test sleeps."""
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SUITE = """
    import os
    import time

    import pytest


    def test_a_fails():
        answer = 6 * 7
        assert answer == 41, "the answer was not 41"


    @pytest.fixture
    def broken():
        raise RuntimeError("a fixture that cannot be set up")


    def test_b_errors(broken):
        pass


    def test_c_hangs():
        print("test_c's captured output")
        open(os.environ["HANG_MARKER"], "w").close()
        time.sleep(300)
"""


def _wait_for(what, ready, p, seconds=120):
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        if ready():
            return
        if p.poll() is not None:
            pytest.fail(f"pytest ended ({p.returncode}) before {what}")
        time.sleep(0.2)
    pytest.fail(f"no {what} within {seconds} s")


@pytest.mark.parametrize("runner, sig", [("plain", signal.SIGKILL), ("plain", signal.SIGTERM),
                                         ("xdist", signal.SIGTERM)],
                         ids=["SIGKILL", "SIGTERM", "xdist-SIGTERM"])
def test_a_run_killed_while_a_test_hangs_leaves_every_failure_so_far(tmp_path, runner, sig):
    if runner == "xdist" and importlib.util.find_spec("xdist") is None:
        pytest.skip("needs pytest-xdist (the GPU session runs the suite with -n)")
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")   # the hook under test
    (tmp_path / "test_sample.py").write_text(textwrap.dedent(SUITE))
    log, marker = tmp_path / "failures.txt", tmp_path / "hanging"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GPUNET_CI_", "PYTEST_", "GPUNET_FAILURE_LOG"))}
    env.update(PYTHONPATH=ROOT, GPUNET_FAILURE_LOG=str(log), HANG_MARKER=str(marker))
    argv = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "test_sample.py"]
    if runner == "xdist":
        argv += ["-n", "2"]       # a, c on one worker, b on the other (xdist's first round)
    # a session of its own: the signal goes to pytest and its workers, as timeout(1) sends it
    with subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, start_new_session=True) as p:
        try:
            def failures_written():
                text = log.read_text() if log.exists() else ""
                return "test_a_fails" in text and "test_b_errors" in text
            _wait_for("start of test_c", marker.exists, p)
            _wait_for("record of test_a's failure and test_b's error in the log", failures_written, p, 30)
            time.sleep(0.5)
            os.killpg(p.pid, sig)
            out, _ = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    text = log.read_text()
    assert "short test summary" not in out and " failed" not in out, out    # the summary never came
    assert text.startswith("==== pytest started "), text
    assert text.count("==== FAILED test_sample.py::test_a_fails at ") == 1, text
    assert "AssertionError: the answer was not 41" in text and "assert 42 == 41" in text, text
    assert text.count("==== ERROR at setup of test_sample.py::test_b_errors at ") == 1, text
    assert "RuntimeError: a fixture that cannot be set up" in text, text
    assert text.count("====") == 3 + (sig == signal.SIGTERM), text
    if sig == signal.SIGTERM:                      # the handler names the test that hung
        assert "==== SIGTERM at " in text and "; still running:\n  test_sample.py::test_c_hangs (" in text, text
