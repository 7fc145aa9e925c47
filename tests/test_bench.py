"""``gpunet bench``: the command runs end to end, its table and JSON carry what they claim,
and a missing PyTorch is said plainly. Timings are recorded, never judged."""
import json
import os

import numpy
import pytest

import gpunet.cli
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
    assert rep["floor"] is False and "floor" not in rep["models"]["mlp-784-128-10"]   # needs --compare torch
    assert rep["cpu_vendor"] == bench.cpu_vendor() and "numpy" in rep["blas"]
    # whether gpunet's compiled CPU kernels ran, in the JSON and the header
    from gpunet import hostkernels
    assert rep["facts"]["gpunet"]["host_kernels"] == hostkernels.status()
    assert f"gpunet's compiled CPU kernels: {hostkernels.status()}" in out


def test_bench_records_host_kernels_off(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GPUNET_HOST_KERNELS", "0")
    path = tmp_path / "b.json"
    assert bench.main(TINY + ["--json", str(path), "--markdown"]) == 0
    out = capsys.readouterr().out
    rep = json.loads(path.read_text())
    assert rep["facts"]["gpunet"]["host_kernels"].startswith("off")
    assert rep["env"]["GPUNET_HOST_KERNELS"] == "0"
    footer = next(line for line in out.splitlines() if "median of" in line and "`gpunet bench" in line)
    assert "gpunet's compiled CPU kernels off" in footer


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
    # the floor: the step's GEMMs alone, NumPy against PyTorch, in the same alternating rounds
    fl = m["floor"]
    assert rep["floor"] is True
    assert fl["ratio"] == pytest.approx(fl["torch"]["median_s"] / fl["numpy"]["median_s"])
    assert len(fl["numpy"]["run_medians_s"]) == 2 and len(fl["torch"]["run_medians_s"]) == 2
    assert len(fl["ratio_per_round"]) == 2
    assert m["of_floor"] == pytest.approx(m["ratio"] / fl["ratio"])
    per = [r / f for r, f in zip(m["ratio_per_round"], fl["ratio_per_round"])]
    assert m["of_floor_per_round"] == pytest.approx(per)
    assert m["of_floor_round_median"] == pytest.approx(sum(per) / 2)      # two rounds
    assert "median over rounds of each round's ratio / floor" in out and \
        f"mlp-784-128-10 {m['of_floor_round_median']:.2f}x" in out
    assert m["floor_share"] == pytest.approx(fl["numpy"]["median_s"] / m["gpunet"]["median_s"])
    assert [op["what"] for op in fl["ops"]] == [op["what"] for op in bench.floor_ops(bench.MODELS["mlp-784-128-10"])]
    # the machine and the BLAS kernels, in the JSON, the table and the markdown
    assert rep["cpu_vendor"] == bench.cpu_vendor() and rep["facts"]["gpunet"]["cpu_vendor"] == rep["cpu_vendor"]
    blas = rep["facts"]["gpunet"]["numpy_blas"]
    here = bench.numpy_blas()
    assert [{k: v for k, v in d.items() if k != "threads"} for d in blas] == \
        [{k: v for k, v in d.items() if k != "threads"} for d in here]
    assert all(d["threads"] == rep["threads"] for d in blas)      # the worker's, set by --threads
    assert set(rep["blas"]) == {"numpy", "torch"} and rep["facts"]["torch"]["torch_blas"].lower() in rep["blas"]["torch"].lower()
    assert "floor" in out and "of floor" in out and f"BLAS: numpy {rep['blas']['numpy']}" in out
    assert f"| {fl['ratio']:.2f}× | {m['of_floor']:.2f} |" in out
    assert "| floor | of floor |" in out and rep["cpu_vendor"] in out.split("| MLP")[-1]


def test_no_floor_leaves_it_out(tmp_path, capsys):
    pytest.importorskip("torch")
    path = tmp_path / "b.json"
    assert bench.main(["--models", "mlp-784-128-10", "--rounds", "1", "--min-time", "0.01", "--no-progress",
                       "--compare", "torch", "--no-floor", "--markdown", "--json", str(path)]) == 0
    rep = json.loads(path.read_text())
    assert rep["floor"] is False and "floor" not in rep["models"]["mlp-784-128-10"]
    assert "of_floor" not in rep["models"]["mlp-784-128-10"] and "of floor" not in capsys.readouterr().out
    assert rep["command"].endswith("--no-floor")


def _recorded(module, fn):
    """The operands (shape, strides in elements) of every ``module.matmul`` call ``fn`` makes."""
    real, seen = module.matmul, []

    def spy(a, b, *args, **kwargs):
        for t in (a, b):
            st = t.stride() if callable(getattr(t, "stride", None)) else tuple(v // t.itemsize for v in t.strides)
            seen.append((tuple(t.shape), tuple(st)))
        return real(a, b, *args, **kwargs)
    module.matmul = spy
    try:
        fn()
    finally:
        module.matmul = real
    return sorted(zip(seen[::2], seen[1::2]))


@pytest.mark.parametrize("name", list(bench.MODELS))
def test_floor_runs_the_steps_gemms_with_their_layouts(name):
    """The floor times the very products a gpunet CPU step issues: same shapes, same strides
    (so the same transposes and C/F orders reach BLAS), in NumPy and in PyTorch alike."""
    spec = bench.MODELS[name]
    step, _ = bench.gpunet_step(spec, "cpu")
    step()
    in_step = _recorded(numpy, step)
    floor, _ = bench.floor_step(spec, "numpy")
    assert _recorded(numpy, floor) == in_step
    torch = pytest.importorskip("torch")
    floor_t, _ = bench.floor_step(spec, "torch")
    assert _recorded(torch, floor_t) == in_step


def test_table_shows_the_floor_without_torch_figures_missing():
    """format_table/format_markdown on a hand-made report: the floor columns appear only with a
    floor ratio, and a model without one gets dashes."""
    def fw(s):
        return {"median_s": s, "samples_per_s": 64 / s, "runs": 1, "quiet_runs": 1, "median_over": 1}
    rep = {"device": "cpu", "rounds": 1, "threads": 2, "cpu": "X", "cpu_vendor": "V", "command": "gpunet bench",
           "blas": {"numpy": "OpenBLAS 1 (K kernels)", "torch": "MKL 2 (AVX512 kernels)"},
           "facts": {"gpunet": {"numpy": "2"}, "torch": {"torch": "2"}},
           "models": {"a": {"batch": 64, "gpunet": fw(0.002), "torch": fw(0.001), "ratio": 0.5,
                            "floor": {"numpy": fw(0.001), "torch": fw(0.0008), "ratio": 0.8}, "of_floor": 0.625},
                      "b": {"batch": 64, "gpunet": fw(0.002), "torch": fw(0.002), "ratio": 1.0}}}
    table = bench.format_table(rep)
    assert "0.80x" in table and "0.62x" in table and "1.000/0.800" in table
    assert "CPU: V X; BLAS: numpy OpenBLAS 1 (K kernels); torch MKL 2 (AVX512 kernels)" in table
    md = bench.format_markdown(rep)
    assert "| 0.50× | 0.80× | 0.62 |" in md and "| 1.00× | – | – |" in md


def test_compare_torch_without_torch_says_so_and_reports_gpunet(monkeypatch, capsys):
    monkeypatch.setattr(bench, "_torch_missing_reason", lambda: "PyTorch is not installed in this Python")
    assert bench.main(TINY + ["--compare", "torch"]) == 0
    cap = capsys.readouterr()
    assert "PyTorch is not installed" in cap.err and "PyTorch is not installed" in cap.out
    assert "mlp-784-128-10" in cap.out and "torch ms" not in cap.out
    # no legend for a ratio column that is not there (found by the first-hour audit)
    assert "ratio =" not in cap.out and "alternating" not in cap.out and "median of 2 runs." in cap.out
    rep = {"device": "cpu", "rounds": 2, "threads": 1, "cpu": "X", "command": "gpunet bench --markdown",
           "facts": {"gpunet": {"numpy": "2"}},
           "models": {"a": {"batch": 64, "gpunet": {"median_s": 0.001, "samples_per_s": 64000.0}}}}
    md = bench.format_markdown(rep)
    assert "| a | 64 | CPU, 1 thread | 64,000 |" in md and "ratio" not in md and "alternating" not in md
    assert md.endswith("median of 2 runs; `gpunet bench --markdown`"), md


@pytest.mark.parametrize("args", [["--rounds", "x"], ["--models", "nope"], ["--threads", "0"],
                                  ["--profile", "--compare", "torch"]])
def test_python_m_gpunet_bench_errors_as_gpunet_bench_does(args, tmp_path):
    """``python -m gpunet.bench`` printed argparse's usage block and error (two lines or more);
    it is ``gpunet bench`` now: the same one line and status 2."""
    import os
    import subprocess
    import sys

    def run(*module):
        return subprocess.run([sys.executable, "-m", *module, *args], capture_output=True, text=True,
                              cwd=tmp_path, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, timeout=120)
    direct, command = run("gpunet.bench"), run("gpunet.cli", "bench")
    assert command.returncode == 2 and len(command.stderr.splitlines()) == 1, command.stderr
    assert command.stderr.startswith("gpunet bench: error: ") and command.stdout == ""
    assert (direct.returncode, direct.stdout, direct.stderr) == (2, "", command.stderr)


def test_threads_above_the_cpus_reach_numpys_blas_too(tmp_path, capsys):
    """``--threads N`` above the CPU count: PyTorch's worker got N threads but NumPy's
    OpenBLAS capped OPENBLAS_NUM_THREADS at the CPU count, silently; now the gpunet worker
    sets N itself and a note on stderr says the threads outnumber the CPUs."""
    from gpunet import threads
    n = bench.available_cpus() + 1
    path = tmp_path / "b.json"
    assert bench.main(TINY + ["--rounds", "1", "--threads", str(n), "--json", str(path)]) == 0
    err = capsys.readouterr().err
    assert f"gpunet bench: note: --threads {n} is more threads than the {n - 1} CPU" in err
    rep = json.loads(path.read_text())
    assert rep["threads"] == n
    if not threads.blas_libraries():
        pytest.skip("no BLAS library gpunet.threads can drive: the worker's count is the environment's")
    assert [lib["threads"] for lib in rep["facts"]["gpunet"]["numpy_blas"]] == [n] * len(threads.blas_libraries())


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


def test_floor_copies_are_gpunets_im2col_and_col2im():
    """The floor's im2col/col2im (written once for NumPy and PyTorch) compute what
    ``gpunet.functional.conv`` computes for the CNN's stride-1 "same" 3x3 convolutions."""
    from gpunet.functional import conv as FC
    rng = numpy.random.default_rng(0)
    made = []

    def new(shape):
        made.append(rng.standard_normal(shape, dtype=numpy.float32))
        return made[-1]
    empty = lambda shape: numpy.empty(shape, numpy.float32)  # noqa: E731
    c, n, h, w = 3, 2, 7, 9
    im2col = bench._floor_copies({"op": "im2col", "x": (c, h, w, n), "k": 3}, new, empty)
    im2col()
    x, cols = made                                  # x: CHWN memory
    want = FC.im2col_rows(x.transpose(3, 0, 1, 2), (3, 3), (1, 1), (1, 1), ones_row=True,
                          batch_last=True)
    numpy.testing.assert_array_equal(cols, want)
    made.clear()
    col2im = bench._floor_copies({"op": "col2im", "x": (c, h, w, n), "k": 3}, new, empty)
    dcols = made[0].copy()
    dx = col2im().reshape(c, h, w, n)
    want = FC.col2im_rows(dcols, (n, c, h, w), (3, 3), (1, 1), (1, 1), batch_last=True)
    numpy.testing.assert_array_equal(dx, want.transpose(1, 2, 3, 0))


def test_profile_breaks_a_step_into_phases(tmp_path, capsys):
    """--profile: one row per layer forward and backward, the loss, zero_grad and the
    optimizer, each split into GEMM and the rest (no timing judged)."""
    path = tmp_path / "p.json"
    assert bench.main(["--profile", "--models", "cnn-28x28", "--min-time", "0.01", "--threads", "1",
                       "--json", str(path)]) == 0
    out = capsys.readouterr().out
    prof = json.loads(path.read_text())["profile"]["cnn-28x28"]
    names = [p["phase"] for p in prof["phases"]]
    assert names[0] == "data" and names[-1] == "optimizer step"
    for i, layer in enumerate(("Conv2D", "MaxPool2D", "Conv2D", "MaxPool2D", "Flatten", "Dense")):
        assert f"{i} {layer} forward" in names and f"{i} {layer} backward" in names
    assert {"loss forward", "zero_grad", "loss backward"} <= set(names)
    assert all(0 <= p["gemm_s"] <= p["s"] for p in prof["phases"])
    assert sum(p["gemm_s"] for p in prof["phases"]) > 0          # the convolutions' GEMMs were seen
    assert prof["steps"] >= 5 and "2 Conv2D backward" in out and "GEMM ms" in out


def test_precision_fp16_times_each_framework_beside_its_fp32_step(tmp_path, capsys):
    """--precision fp16: the first table compares the fp16 steps (gpunet MixedPrecision +
    GradScaler, PyTorch autocast(float16) + GradScaler), the second each framework's fp32
    and fp16 steps, timed alternately in the same worker; no floor (a float32 GEMM measure);
    the JSON carries both and the speed-ups; on the CPU a note says what the times mean."""
    path = tmp_path / "b.json"
    torch = pytest.importorskip("torch")
    assert bench.main(TINY + ["--precision", "fp16", "--compare", "torch", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    rep = json.loads(path.read_text())
    m = rep["models"]["mlp-784-128-10"]
    assert rep["precision"] == "fp16" and "autocast(float16)" in rep["step"] and rep["floor"] is False
    assert rep["command"].endswith("--precision fp16") and "floor" not in m
    for fw in ("gpunet", "torch"):
        assert len(m["fp32"][fw]["run_medians_s"]) == 2 and len(m[fw]["run_medians_s"]) == 2
        assert m["fp16_speedup"][fw] == pytest.approx(m["fp32"][fw]["median_s"] / m[fw]["median_s"])
    assert m["ratio"] == pytest.approx(m["torch"]["median_s"] / m["gpunet"]["median_s"])
    assert "fp16 speed-up" in out and "gpunet fp32 ms" in out and "torch fp16 ms" in out
    assert "fp16 on the CPU" in out and torch.__version__ in out
    assert bench.main(["--precision", "fp16", "--profile"]) == 2


def test_sim_costs_of_the_fp16_step():
    """--device sim --precision fp16: the MixedPrecision + GradScaler step's GPU costs:
    no host sync (the scaler's check and skip run in the fused optimizer), nothing copied,
    the same every step; more launches than fp32 (the casts)."""
    from gpunet import sim
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    c16 = bench.sim_costs(["mlp-784-128-10"], precision="fp16")["mlp-784-128-10"]
    c32 = bench.sim_costs(["mlp-784-128-10"])["mlp-784-128-10"]
    assert (c16["syncs"], c16["h2d_bytes"], c16["d2h_bytes"]) == (0, 0, 0)
    assert c32["launches"] < c16["launches"] and c16["kernels"].get("astype", 0) > 0


@pytest.mark.parametrize("argv, needles", [
    (["--device", "sim", "--compare", "torch"], ["--compare does not apply to --device sim"]),
    (["--device", "sim", "--rounds", "3", "--markdown"], ["--rounds, --markdown do not apply to --device sim"]),
    (["--profile", "--compare", "torch"], ["--compare does not apply to --profile"]),
    (["--profile", "--rounds", "2", "--no-floor"], ["--rounds, --no-floor do not apply to --profile"]),
    (["--distributed", "--profile"], ["--profile does not apply to --distributed"]),
    (["--distributed", "--compare", "torch", "--markdown"], ["--compare, --markdown do not apply to --distributed"]),
    (["--device", "tpu"], ["gpunet bench: error: --device tpu: unknown device 'tpu'"]),
])
def test_options_a_mode_would_ignore_are_refused(argv, needles, capsys):
    """Found by the CLI audit: --compare torch with --profile, --distributed or --device sim
    printed no comparison, --markdown no table, --rounds changed nothing, all silently.
    Refused before anything runs (one line, status 2), naming what the mode reads."""
    from gpunet import cli
    assert cli.main(["bench", *argv, "--models", "mlp-784-128-10", "--no-progress"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_distributed_takes_every_model_that_models_offers(monkeypatch, capsys):
    """Found by the CLI audit: --distributed looked models up in MODELS, so the extra model
    that --models offers (mlp-784-4096x2-10) ended in a KeyError traceback. A tiny extra
    model stands in for it here (the real one takes seconds a step)."""
    monkeypatch.setitem(bench.ALL_MODELS, "mlp-784-8-10", {"kind": "mlp", "sizes": (784, 8, 10), "batch": 64})
    assert "mlp-784-8-10" not in bench.MODELS
    assert bench.main(["--distributed", "--quick", "--rounds", "1", "--min-time", "0.01",
                       "--models", "mlp-784-8-10", "--no-progress"]) == 0
    assert "mlp-784-8-10" in capsys.readouterr().out


@pytest.mark.parametrize("args, last", [
    (TINY, "format_table"),
    (["--models", "mlp-784-128-10", "--min-time", "0.02", "--no-progress", "--profile"], "format_profile")])
def test_a_json_path_that_fails_after_the_run_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, capsys,
                                                                                   args, last):
    """Found by the failure-path audit: --json is checked before the benchmarks, but when
    its folder went away (or the disk filled) during the run, the write at the end raised
    FileNotFoundError with a traceback and status 1. It is now one line on stderr, status
    2, and the file is written to a temporary file and renamed, so an older one is never
    left truncated."""
    folder = tmp_path / "out"
    folder.mkdir()
    path = folder / "b.json"
    real = getattr(bench, last)

    def then_remove(*a, **k):          # the folder goes away while the benchmarks run
        (folder / "b.json").unlink(missing_ok=True)
        folder.rmdir()
        return real(*a, **k)
    monkeypatch.setattr(bench, last, then_remove)
    assert gpunet.cli.main(["bench"] + args + ["--json", str(path)]) == 2
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"gpunet bench: error: --json {path}: ") and "Traceback" not in cap.err
    assert "No such file or directory" in err[0]
    assert "mlp-784-128-10" in cap.out      # the results were printed

    # an older file stays whole when the new one cannot be written in full
    folder.mkdir()
    path.write_text('{"old": 1}')
    monkeypatch.setattr(bench, last, real)

    def full_disk(fd, *a, **k):
        os.close(fd)
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(bench.os, "fdopen", full_disk)
    assert gpunet.cli.main(["bench"] + args + ["--json", str(path)]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert json.loads(path.read_text()) == {"old": 1} and os.listdir(folder) == ["b.json"]

    # Ctrl-C while writing: the temporary file goes too
    def interrupted(fd, *a, **k):
        os.close(fd)
        raise KeyboardInterrupt
    monkeypatch.setattr(bench.os, "fdopen", interrupted)
    assert gpunet.cli.main(["bench"] + args + ["--json", str(path)]) == 130
    assert json.loads(path.read_text()) == {"old": 1} and os.listdir(folder) == ["b.json"]
