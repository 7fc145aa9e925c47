"""The sanitizer run of the sim device (tools/sim_sanitize.py) fails on real memory errors and
undefined behaviour in a kernel, and passes on clean ones.

CI runs the whole edge-shape set (``python tools/sim_sanitize.py``); here, planted bugs
show that a report fails the run, and one small case shows that a clean run passes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpunet import sim

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "sim_sanitize.py"


def _has_sanitizers():
    cxx = sim.compiler()
    if cxx is None:
        return False
    for lib in ("libasan.so", "libubsan.so"):
        p = subprocess.run([cxx, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(p):
            return False
    return True


pytestmark = pytest.mark.skipif(not _has_sanitizers(), reason="no C++ compiler with libasan/libubsan")


def _tool(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=600)


def test_out_of_bounds_write_fails_the_run():
    r = _tool("--plant", "oob")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "AddressSanitizer: heap-buffer-overflow" in out and "in planted" in out, out
    assert "without a report" not in out


def test_signed_overflow_fails_the_run():
    r = _tool("--plant", "ubsan")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "runtime error: signed integer overflow" in out, out


def test_clean_cases_pass_and_are_compared_with_numpy():
    r = _tool("-k", "dropout_n7_offset1", "-k", "xent_ignore_all_N2_C33", "-v")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "ok   dropout_n7_offset1_f32" in out and "ok   xent_ignore_all_N2_C33_f64" in out, out
    assert "ok   dropout_n7_offset1_f16" in out and "ok   xent_ignore_all_N2_C33_f16" in out, out
    assert "6/6 cases match NumPy" in out and "sim_sanitize: clean" in out, out


def test_a_selection_that_matches_no_case_fails():
    """``-k`` with a typo would run nothing and report '0/0 cases match NumPy' as clean."""
    r = _tool("-k", "no_such_case")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "no case matches -k no_such_case" in out and "sim_sanitize: clean" not in out, out
