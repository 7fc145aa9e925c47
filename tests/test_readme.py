"""The README's promises: two quick-start commands, and a layer-API example that runs."""
import pathlib
import re

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
    assert len(code.strip().splitlines()) <= 17
    exec(compile(code, str(README), "exec"), {})
    out = capsys.readouterr().out
    acc = float(out.split("test accuracy")[1].strip())
    assert acc > 0.9
