"""``gpunet bench``: the command runs end to end, its table and JSON carry what they claim,
and a missing PyTorch is said plainly. Timings are recorded, never judged."""
import json

import numpy
import pytest

from gpunet import bench

TINY = ["--models", "mlp-784-128-10", "--rounds", "2", "--min-time", "0.02", "--no-progress"]


def test_bench_gpunet_alone_writes_json(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert bench.main(TINY + ["--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "mlp-784-128-10" in out and "samples/s" in out and bench.cpu_model() in out
    rep = json.loads(path.read_text())
    g = rep["models"]["mlp-784-128-10"]["gpunet"]
    assert rep["device"] == "cpu" and rep["cpu"] == bench.cpu_model()
    assert rep["facts"]["gpunet"]["numpy"] == numpy.__version__
    assert len(g["run_medians_s"]) == 2 and len(g["other_cpus"]) == 2
    assert all(len(run) >= 5 for run in g["step_times_s"])
    assert g["median_s"] > 0 and g["samples_per_s"] == pytest.approx(64 / g["median_s"])
    assert "torch" not in rep["models"]["mlp-784-128-10"]


def test_compare_torch_reports_both_and_the_ratio(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "b.json"
    assert bench.main(TINY + ["--compare", "torch", "--json", str(path), "--markdown"]) == 0
    rep = json.loads(path.read_text())
    m = rep["models"]["mlp-784-128-10"]
    assert m["ratio"] == pytest.approx(m["torch"]["median_s"] / m["gpunet"]["median_s"])
    assert "torch" in rep["facts"]["torch"] and rep["facts"]["torch"]["torch_threads"] == rep["threads"]
    out = capsys.readouterr().out
    assert "ratio" in out
    row = f"| MLP 784-128-10 (ReLU) | 64 | CPU, {rep['threads']} thread"
    assert row in out and f"{m['ratio']:.2f}×" in out
    assert rep["command"] == "gpunet bench --compare torch --models mlp-784-128-10 --rounds 2 --min-time 0.02"


def test_compare_torch_without_torch_says_so_and_reports_gpunet(monkeypatch, capsys):
    monkeypatch.setattr(bench, "_torch_missing_reason", lambda: "PyTorch is not installed in this Python")
    assert bench.main(TINY + ["--compare", "torch"]) == 0
    cap = capsys.readouterr()
    assert "PyTorch is not installed" in cap.err and "PyTorch is not installed" in cap.out
    assert "mlp-784-128-10" in cap.out and "torch ms" not in cap.out


def test_bad_device_is_a_clear_error(capsys):
    assert bench.main(["--device", "tpu", "--no-progress"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def test_dense_input_grad_false_skips_dx_and_keeps_parameter_grads():
    """The first-layer switch the benchmark uses: same parameter gradients, no dx."""
    from gpunet.layers import Dense
    rng = numpy.random.default_rng(0)
    x = rng.standard_normal((5, 4)).astype(numpy.float32)
    dy = rng.standard_normal((5, 3)).astype(numpy.float32)
    a, b = Dense(4, 3, activation="relu"), Dense(4, 3, activation="relu")
    b.weight.data = a.weight.data.copy()
    b.input_grad = False
    a.forward(x), b.forward(x)
    assert a.backward(dy) is not None and b.backward(dy) is None
    numpy.testing.assert_array_equal(a.weight.grad, b.weight.grad)
    numpy.testing.assert_array_equal(a.bias.grad, b.bias.grad)
