"""benchmarks/gpu_check.py imports, parses its arguments, and refuses cleanly without a GPU.

Its real work (kernels on a GPU, timings against PyTorch) only runs on a GPU machine.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpunet import backend

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=120)


def test_help_lists_the_options():
    p = _run("--help")
    assert p.returncode == 0, p.stderr
    for opt in ("--out", "--skip-tests", "--pytest-timeout", "--iters", "--seed", "--no-torch"):
        assert opt in p.stdout


def test_out_is_required():
    p = _run()
    assert p.returncode == 2 and "--out" in p.stderr


def test_without_a_gpu_it_says_why_and_exits_2(tmp_path):
    if backend.cuda_available():
        pytest.skip("a CUDA device is present: gpu_check would run for real")
    p = _run("--out", str(tmp_path / "o"))
    assert p.returncode == 2
    assert "no usable GPU" in p.stderr and "CUDA" in p.stderr
    assert not (tmp_path / "o" / "gpu_check.json").exists()
