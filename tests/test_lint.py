"""Static checks of the source: pyflakes' unused locals (a value computed and dropped is dead
code or a forgotten use). pyflakes is a test tool (CI's stage 2 installs it); the test skips
without it. Unused imports are not checked: ``gpunet/__init__.py`` re-exports by importing."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_unused_local_variables():
    checker = pytest.importorskip("pyflakes.checker")
    messages = pytest.importorskip("pyflakes.messages")
    found = []
    for d in ("gpunet", "tools", "tests", "examples", "benchmarks"):
        for path in sorted((ROOT / d).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for m in checker.Checker(tree, filename=str(path.relative_to(ROOT))).messages:
                if isinstance(m, messages.UnusedVariable):
                    found.append(str(m))
    assert not found, "\n".join(found)
