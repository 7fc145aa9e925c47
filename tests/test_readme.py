"""The README's promises: two quick-start commands, and a layer-API example that runs."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang):
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_quick_start_has_exactly_two_commands():
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\w*\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    commands = [l for l in blocks[0].splitlines() if l.strip()]
    assert len(commands) == 2
    assert "pip install" in commands[0] and "gpunet train" in commands[0]
    assert "pytest" in commands[1]


def test_python_example_runs_and_learns(capsys):
    code = _blocks("python")[0]
    assert len(code.strip().splitlines()) <= 16
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy")[1].strip())
    assert acc > 0.9


def test_python_example_runs_on_the_simulated_gpu(capsys):
    """The example says "or cuda": run it with the device line pointed at the sim, which
    takes every CUDA branch. (On an H200 the old example, which fed the DataLoader's host
    batches to a CUDA model, raised TypeError: arrays on different devices.)"""
    from gpunet import sim
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    code = _blocks("python")[0]
    assert code.count('device = "cpu"') == 1
    code = code.replace('device = "cpu"', 'device = "sim"').replace("range(20)", "range(3)")
    exec(compile(code, str(README), "exec"), {})
    acc = float(capsys.readouterr().out.split("test accuracy")[1].strip())
    assert acc > 0.9


def _quick_start_commands():
    section = README.read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.findall(r"```\w*\n(.*?)```", section, flags=re.S)[0]
    return [l.strip() for l in block.splitlines() if l.strip()]


def test_ci_runs_the_quick_start_verbatim_in_a_stock_venv():
    """.ci/run runs the README's two commands exactly as written, first, in a fresh venv with
    the interpreter's own pip and setuptools: no upgrade and no other install before them."""
    script = (README.parent / ".ci" / "run").read_text()
    lines = [l.strip() for l in script.splitlines() if l.strip() and not l.strip().startswith("#")]
    commands = _quick_start_commands()
    at = [lines.index(c) if c in lines else None for c in commands]
    assert None not in at, f".ci/run lacks a README command verbatim: {commands}"
    assert at[0] < at[1], "the two commands must run in the README's order"
    before = lines[:at[1]]
    venvs = [i for i, l in enumerate(before) if re.search(r"\bpython3? -m venv\b", l)]
    assert venvs and venvs[0] < at[0], "no fresh venv before the quick start"
    assert not any("--upgrade-deps" in l or "--system-site-packages" in l for l in before)
    activates = [i for i, l in enumerate(before) if re.match(r"(\.|source) .*/bin/activate", l)]
    assert activates and venvs[0] < activates[0] < at[0], "the quick start must run inside the venv"
    # nothing is installed or upgraded between the venv and the README's test command
    for l in before[venvs[0] + 1:]:
        if l != commands[0]:
            assert not re.search(r"\b(install|ensurepip|--upgrade)\b", l), l
    # and the test command runs again after the extras are installed
    after = lines[at[1] + 1:]
    extras = [i for i, l in enumerate(after) if "pip install" in l]
    assert extras and commands[1] in after[extras[0] + 1:]
    # stage 1 records what it covered and stage 2 reads that record (tests/ci_stages.py): each
    # variable is exported for its own stage's test command only
    second = at[1] + 1 + extras[0] + 1 + after[extras[0] + 1:].index(commands[1])
    record = [l for l in lines[:at[1]] if l.startswith("export GPUNET_CI_RECORD=")]
    rerun = [l for l in lines[at[1]:second] if l.startswith("export GPUNET_CI_RERUN=")]
    assert len(record) == 1 and len(rerun) == 1, (record, rerun)
    assert record[0].split("=", 1)[1] == rerun[0].split("=", 1)[1], "stage 2 must read stage 1's record"
    assert lines[at[1] + 1] == "unset GPUNET_CI_RECORD" and lines[second + 1] == "unset GPUNET_CI_RERUN"


def test_devices_section_quotes_what_bench_on_the_sim_prints():
    """The Devices section's example of `gpunet bench --device sim` is the count the command
    prints today (it said 16 launches after the step had become 15)."""
    from gpunet import bench, sim
    if sim.compiler() is None:
        pytest.skip("needs a C++ compiler for the sim device")
    m = re.search(r"MLP 784-128-10 with SGD-momentum: (\d+) launches, (\d+) of them gpunet's fused "
                  r"kernels, (\d+) syncs,\s+(\d+) bytes host-to-device", README.read_text())
    assert m, "the README's example of gpunet bench --device sim"
    c = bench.sim_costs(["mlp-784-128-10"])["mlp-784-128-10"]
    assert tuple(int(v) for v in m.groups()) == (c["launches"], c["fused"], c["syncs"], c["h2d_bytes"])
