"""Memory of a 10-epoch digits run (``bench_memory.py``), each run in a fresh process so that
its resident-set figures are its own. Timed once (the 10-epoch fit) so that it runs under
``--benchmark-only``; the assertions are on memory, never on time.

* live Python/NumPy allocations (tracemalloc) at the end of epoch 10 vs epoch 1: within
  64 KiB, for the MLP and the CNN — no cache grows per step;
* peak RSS (VmHWM) of the MLP run (``gpunet train``'s model) within 1 MiB of its value at
  the end of epoch 1. The CNN's peak RSS is reported, not asserted: glibc's heap keeps
  growing for a few epochs while its mmap threshold adapts to im2col's large temporaries
  (its live allocations stay flat), then stops.
"""
import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def _run(args, tmp_path):
    out = tmp_path / "mem.json"
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE))
    proc = subprocess.run([sys.executable, os.path.join(HERE, "bench_memory.py"), *args, "--json", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    print(proc.stdout)
    return proc, json.loads(out.read_text()) if out.exists() else None


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_live_allocations_flat_after_first_epoch(benchmark, model, tmp_path):
    if model == "cnn":
        pytest.importorskip("gpunet.layers.conv")
    benchmark.group = "memory: 10-epoch digits fit under tracemalloc"
    proc, res = benchmark.pedantic(_run, args=(["--model", model, "--tracemalloc"], tmp_path), rounds=1, iterations=1)
    assert res is not None, proc.stderr
    growth = res["growth_after_epoch_1"]["traced_bytes"]
    assert growth <= 64 * 1024, (growth, res.get("top_growth"))
    assert proc.returncode == 0, proc.stderr


def test_peak_rss_flat_after_first_epoch_mlp(benchmark, tmp_path):
    benchmark.group = "memory: 10-epoch digits fit (MLP), peak RSS"
    proc, res = benchmark.pedantic(_run, args=(["--model", "mlp"], tmp_path), rounds=1, iterations=1)
    assert res is not None, proc.stderr
    assert res["growth_after_epoch_1"]["VmHWM"] <= 1024, res["rows"]
    assert proc.returncode == 0, proc.stderr
