"""The sanitizer build of gpunet's compiled CPU kernels (``GPUNET_SIM_SANITIZE=1`` in
gpunet.hostkernels) and their sanitizer run (tools/host_sanitize.py): the sanitized build is
keyed apart from the normal one, a process without the sanitizer runtime gets a clear error
rather than a crash or a quiet NumPy fallback, planted bugs fail the run, a clean run passes.

CI runs the whole case set (``python tools/host_sanitize.py``); here, a few cases.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpunet import hostkernels

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "host_sanitize.py"
CXX = hostkernels._compiler()


def _has_sanitizers():
    if CXX is None:
        return False
    for lib in ("libasan.so", "libubsan.so"):
        p = subprocess.run([*CXX, f"-print-file-name={lib}"], capture_output=True, text=True).stdout.strip()
        if not os.path.isabs(p):
            return False
    return True


needs_cxx = pytest.mark.skipif(CXX is None, reason="no C++ compiler: the kernels cannot be built here")
needs_sanitizers = pytest.mark.skipif(not _has_sanitizers(), reason="no C++ compiler with libasan/libubsan")


@needs_sanitizers
def test_sanitized_build_is_keyed_apart(tmp_path, monkeypatch):
    from gpunet.sim.runtime import SANITIZE_FLAGS

    monkeypatch.setenv("GPUNET_HOST_CACHE", str(tmp_path))
    flags = hostkernels._flags(True)
    assert flags[:2] == ("-O1", "-g") and "-O3" not in flags
    assert flags[-len(SANITIZE_FLAGS):] == SANITIZE_FLAGS
    assert "-ffp-contract=off" in flags             # the same numbers as the normal build
    plain = hostkernels._build(CXX)
    asan = hostkernels._build(CXX, sanitize=True)
    assert plain.parent == asan.parent == tmp_path and plain != asan
    assert asan.name.startswith("host-asan-") and not plain.name.startswith("host-asan-")
    a, p = asan.read_bytes(), plain.read_bytes()
    assert b"__asan_report" in a and b"__ubsan_handle" in a
    assert b"__asan_report" not in p and b"__ubsan_handle" not in p
    mtime = asan.stat().st_mtime_ns
    assert hostkernels._build(CXX, sanitize=True) == asan and asan.stat().st_mtime_ns == mtime   # cached
    assert sorted(f.name for f in tmp_path.glob("*.so")) == sorted([plain.name, asan.name])


@needs_cxx
def test_without_the_sanitizer_runtime_a_clear_error(tmp_path):
    """GPUNET_SIM_SANITIZE=1 in a process without libasan preloaded: loading the sanitized
    kernels would abort it, and falling back to NumPy would pass a sanitizer run that
    checked nothing; so each use raises a RuntimeError that says what to do, before any
    build, and status() (``gpunet info``) says it. With the kernels switched off the switch
    changes nothing."""
    code = ("import numpy\n"
            "from gpunet import hostkernels\n"
            "from gpunet.functional import pooling as FP\n"
            "x = numpy.arange(4, dtype=numpy.float32).reshape(1, 1, 2, 2)\n"
            "for _ in range(2):\n"
            "    try:\n"
            "        FP.max_pool2d(x, 2)\n"
            "        print('no error')\n"
            "    except RuntimeError as e:\n"
            "        print(e)\n"
            "print(hostkernels.sanitizing())\n"
            "print(hostkernels.status())\n"
            "hostkernels.set_enabled(False)\n"
            "print(FP.max_pool2d(x, 2)[0].item(), hostkernels.status())\n")
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    env.update(GPUNET_SIM_SANITIZE="1", GPUNET_HOST_KERNELS="1", GPUNET_HOST_CACHE=str(tmp_path / "cache"))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    want = ("gpunet.hostkernels: GPUNET_SIM_SANITIZE=1 builds the compiled CPU kernels with "
            "AddressSanitizer, and this process runs without its runtime: preload it "
            "(LD_PRELOAD=$(g++ -print-file-name=libasan.so)), as tools/host_sanitize.py does, "
            "or unset GPUNET_SIM_SANITIZE")
    assert out[:4] == [want, want, "True", f"refused: {want}"], out
    assert out[4].startswith("3.0 off ("), out
    assert not (tmp_path / "cache").exists()        # refused before building anything


@pytest.fixture(scope="module")
def tool(tmp_path_factory):
    cache = tmp_path_factory.mktemp("host-sanitize-cache")

    def run(*args):
        env = {**os.environ, "GPUNET_HOST_CACHE": str(cache)}
        return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                              timeout=600, env=env)
    return run


@needs_sanitizers
@pytest.mark.parametrize("plant,where", [
    ("oob", ["in planted", "host_sanitize: FAILED"]),     # a planted kernel, built by
    # hostkernels._build with the kernels' flags and clones
    ("kernel", ["in gpunet_relu_mask_times_f32", "elementwise.cpp"]),   # the library the
    # cases run on reports an overrun in a real kernel
])
def test_out_of_bounds_write_fails_the_run(tool, plant, where):
    r = tool("--plant", plant)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "AddressSanitizer: heap-buffer-overflow" in out, out
    assert all(w in out for w in where) and "without a report" not in out, out


@needs_sanitizers
def test_signed_overflow_fails_the_run(tool):
    r = tool("--plant", "ubsan")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "runtime error: signed integer overflow" in out, out



@needs_sanitizers
def test_clean_cases_pass_and_are_compared_with_numpy(tool):
    r = tool("-k", "pool_chwn_17x2x5x6_k3x3_1x1_1x1_f32", "-k", "optim_adamw_n7_f64",
             "-k", "dense_relu_1x1x2_f32", "-k", "relu_mask_times_F_5x3x7_f64", "-v")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    for case in ("pool_chwn_17x2x5x6_k3x3_1x1_1x1_f32", "optim_adamw_n7_f64", "dense_relu_1x1x2_f32",
                 "relu_mask_times_F_5x3x7_f64"):
        assert f"ok   {case}\n" in out, out
    assert "4/4 cases match NumPy" in out and "host_sanitize: clean" in out, out


@needs_sanitizers
def test_a_selection_that_matches_no_case_fails(tool):
    r = tool("-k", "no_such_case")
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "no case matches -k no_such_case" in out and "host_sanitize: clean" not in out, out
