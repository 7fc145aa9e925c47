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


def _load_gpu_check():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fp16_checks_and_timings_run_on_the_sim():
    """The GPU-only fp16 code of gpu_check (check_half, run_fp16_timing) runs end to end on
    the sim, with small shapes and a wall-clock timer (times mean nothing there): the half
    kernels pass their checks, and every row and step is filled in."""
    import time
    from types import SimpleNamespace

    import numpy
    from gpunet import sim
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    gc = _load_gpu_check()
    sp = backend.require_sim()
    results = []
    gc.check_half(sp, numpy.random.default_rng(0), results)
    bad = [r for r in results if not r[3]]
    assert results and not bad, bad
    t = {}
    timer = (lambda: t.__setitem__("a", time.perf_counter()), lambda: t.__setitem__("b", time.perf_counter()),
             lambda: (t["b"] - t["a"]) * 1e3, lambda: None)
    out = gc.run_fp16_timing(sp, None, SimpleNamespace(warmup=1, iters=2), timer, None, 100.0, 2**20,
                             shapes={"softmax_xent": ((64, 100),), "batchnorm": ((8, 4, 4, 4),),
                                     "dropout": (1000,)}, models=("mlp-784-128-10",))
    assert [r["op"] for r in out["kernels"]] == ["softmax_xent fwd+bwd", "batchnorm fwd+bwd",
                                                 "dropout fwd+bwd p=0.5"]
    assert all(r["gpunet_ms"] > 0 and r["dtype"] == "float16" for r in out["kernels"])
    (step,) = out["steps"]
    assert step["gpunet_fp32_ms"] > 0 and step["gpunet_fp16_ms"] > 0 and "torch_fp16_ms" not in step


def test_softmax_xent_checks_pass_on_the_sim(sim_xp):
    """check_softmax_xent on the sim, whose labels are checked on the device as on CUDA: every
    check passes, the bad label's ValueError comes from reading its loss (a check expecting
    it at the call failed on an H200, and the loss it left unread then made the next,
    unrelated loss read raise), and no flag is left pending afterwards."""
    import numpy
    from gpunet.cuda.softmax_xent import raise_label_error
    gc = _load_gpu_check()
    results = []
    gc.check_softmax_xent(sim_xp, numpy.random.default_rng(0), results)
    bad = [r for r in results if not r[3]]
    assert len(results) == 84 and not bad, bad
    assert any("label 3 of C=3 raises ValueError" in r[1] for r in results)
    raise_label_error("sim")     # nothing pending: no ValueError


def test_training_throughput_logic_runs_without_a_gpu():
    """Step 5's code paths on what this machine has: gpunet's Trainer eager and with a CUDA
    graph on the sim, PyTorch eager and fused Adam on the CPU (its CUDA-graph variant needs
    CUDA and is refused with a ValueError here). Numbers are not judged, only that every
    run finishes with a finite loss, the graph run reaching the eager run's loss."""
    from gpunet import sim
    if sim.compiler() is None:
        pytest.skip("needs the sim device")
    gc = _load_gpu_check()
    eager = gc.gpunet_train_throughput("sim", "mlp", False, epochs=3, warm_epochs=1)
    graph = gc.gpunet_train_throughput("sim", "mlp", True, epochs=3, warm_epochs=1)
    for r in (eager, graph):
        assert r["samples_s"] > 0 and 0 < r["final_loss"] < 3
    assert graph["final_loss"] == eager["final_loss"]
    torch = pytest.importorskip("torch")
    for variant in ("eager", "fused_adam"):
        r = gc.torch_train_throughput(torch, "cpu", "mlp", variant, epochs=3, warm_epochs=1)
        assert r["samples_s"] > 0 and 0 < r["final_loss"] < 3
    with pytest.raises(ValueError, match="CUDA"):
        gc.torch_train_throughput(torch, "cpu", "mlp", "cuda_graph", epochs=1)
    rows = gc.run_train_throughput(torch, "sim", 2, models=("mlp",))
    assert {(r["framework"], r["variant"]) for r in rows} == {
        ("gpunet", "eager"), ("gpunet", "cuda_graph"), ("torch", "eager"),
        ("torch", "fused_adam"), ("torch", "cuda_graph")}
    # only PyTorch's CUDA-graph variant is refused here; every other run finished, with its
    # ratio to PyTorch eager (a run failing inside run_train_throughput is recorded as an
    # error row, which must not pass for a finished run)
    failed = [(r["framework"], r["variant"]) for r in rows if "error" in r]
    assert failed == [("torch", "cuda_graph")], [r.get("error") for r in rows]
    for r in rows:
        if "error" not in r:
            assert r["samples_s"] > 0 and 0 < r["final_loss"] < 3 and "vs_torch_eager" in r, r
