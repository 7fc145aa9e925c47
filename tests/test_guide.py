"""docs/guide.md runs as written.

Every ```python block of the guide is executed, in order, in one namespace, in a fresh
temporary working directory (the snippets may write files there). A block with a
``# needs: cuda`` or ``# needs: sim`` comment line is skipped, alone, when that device is
unavailable here; nothing else is ever skipped, and a block that raises fails its test
with a traceback pointing at the guide's line. Each block is its own test
(``test_python_block[guide.md:LINE]``); selecting one with ``-k`` first runs every block
above it, since the snippets build on each other.

Every command of a ```bash block that starts with ``gpunet`` must name a real subcommand
(its ``--help`` works) and only options that its ``--help`` lists.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import textwrap
import traceback
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parent.parent / "docs" / "guide.md"
FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
NEEDS = re.compile(r"^\s*#\s*needs:\s*(\w+)", re.M)


def _blocks(lang):
    """``(line, needs, source)`` of every fenced block of ``lang`` in the guide; ``line`` is
    the 1-based line of the block's first source line."""
    text = GUIDE.read_text(encoding="utf-8")
    out = []
    for m in FENCE.finditer(text):
        if m.group(2) == lang:     # (a block inside a list item is indented: dedent it)
            line = text.count("\n", 0, m.start(3)) + 1
            src = textwrap.dedent(m.group(3))
            out.append((line, tuple(NEEDS.findall(src)), src))
    return out


PYTHON = _blocks("python")
BASH = _blocks("bash")


def _cuda_available():
    from gpunet.backend import cuda_available
    return cuda_available(), "no CUDA device visible to CuPy"


def _sim_available():
    """The sim device is available when its package has the kernel runtime and a host
    C++ compiler is present. Only the absence of those is a reason to skip: a runtime that
    exists but fails is a failure of the snippet."""
    if importlib.util.find_spec("gpunet.sim") is None:
        return False, "gpunet.sim is not there yet"
    import gpunet.sim
    if not hasattr(gpunet.sim, "counters") or importlib.util.find_spec("gpunet.sim.runtime") is None:
        return False, "gpunet.sim has no kernel runtime yet (gpunet.sim.runtime)"
    if gpunet.sim.compiler() is None:
        return False, "the sim device needs a host C++ compiler (none found)"
    return True, ""


AVAILABLE = {"cuda": _cuda_available, "sim": _sim_available}


def _skip_reason(needs):
    for need in needs:
        if need not in AVAILABLE:
            pytest.fail(f"docs/guide.md: unknown '# needs: {need}' (known: {sorted(AVAILABLE)})")
        ok, why = AVAILABLE[need]()
        if not ok:
            return why
    return None


class _Guide:
    """The shared namespace and the outcome of every block run so far."""

    def __init__(self):
        self.ns = {"__name__": "__guide__"}
        self.outcomes = []      # per block, in order: None (ran), ("skip", why) or ("fail", message)

    def _run(self, line, needs, src):
        why = _skip_reason(needs)
        if why is not None:
            return "skip", f"docs/guide.md:{line}: {why}"
        # padded so that tracebacks give the block's line numbers in the guide
        code = compile("\n" * (line - 1) + src, str(GUIDE), "exec")
        try:
            exec(code, self.ns)
        except (Exception, SystemExit) as e:  # a snippet calling sys.exit fails too
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next))
            return "fail", f"the python block at docs/guide.md:{line} raised:\n{tb}"
        return None

    def check(self, index):
        """Run every block not yet run up to ``index`` (in order: the snippets build on each
        other), then report block ``index``'s own outcome."""
        while len(self.outcomes) <= index:
            self.outcomes.append(self._run(*PYTHON[len(self.outcomes)]))
        outcome = self.outcomes[index]
        if outcome is not None:
            kind, message = outcome
            if kind == "skip":
                pytest.skip(message)
            pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def guide(tmp_path_factory):
    """Run the blocks in a temporary working directory, restoring afterwards what a snippet
    may change process-wide (working directory, environment, BLAS threads, and the host
    generator that ``gpunet.manual_seed`` replaces)."""
    workdir = tmp_path_factory.mktemp("guide")
    cwd, env = os.getcwd(), dict(os.environ)
    from gpunet import random as grandom, threads
    n_threads = threads.get_num_threads()
    rng, rng_state = grandom._host_rng, grandom._host_rng.bit_generator.state
    os.chdir(workdir)
    try:
        yield _Guide()
    finally:
        os.chdir(cwd)
        os.environ.clear()
        os.environ.update(env)
        rng.bit_generator.state = rng_state
        grandom._host_rng = rng
        if n_threads is not None and threads.get_num_threads() != n_threads:
            threads.set_num_threads(n_threads)


def test_guide_has_blocks():
    assert len(PYTHON) >= 10, "docs/guide.md should hold its runnable python snippets"
    assert BASH, "docs/guide.md should show the gpunet commands"


def test_contents_lists_every_section():
    """The contents at the top lists each numbered section, in order, with a link to its
    heading (GitHub's anchor: lower case, punctuation dropped, spaces as hyphens); it once
    skipped from 10 to 12."""
    text = GUIDE.read_text(encoding="utf-8")
    headings = re.findall(r"^## (\d+\. .+)$", text, flags=re.M)
    listed = re.findall(r"^\d+\. \[(.+?)\]\(#(.+?)\)$", text, flags=re.M)
    assert headings and [f"{h.split('. ', 1)[0]}. {t}" for h, (t, _) in zip(headings, listed)] == headings
    assert len(listed) == len(headings), (listed, headings)
    for h, (_, anchor) in zip(headings, listed):
        assert re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") == anchor, (h, anchor)


@pytest.mark.parametrize("index", range(len(PYTHON)),
                         ids=[f"guide.md:{line}" for line, _, _ in PYTHON])
def test_python_block(guide, index):
    guide.check(index)


# --- the commands -----------------------------------------------------------------------

def _gpunet_commands():
    """``(line, argv)`` of every ``gpunet ...`` command in the bash blocks (after leading
    ``VAR=value`` assignments, and in each part of a ``&&``/``;``/``|`` chain)."""
    out = []
    for line, _, src in BASH:
        for k, text in enumerate(src.splitlines()):
            text = text.split(" #", 1)[0].strip()
            for part in re.split(r"&&|\|\||;|\|", text):
                words = shlex.split(part)
                while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):
                    words = words[1:]
                if words and words[0] == "gpunet":
                    out.append((line + k, words[1:]))
    return out


COMMANDS = _gpunet_commands()


def _help(argv, capsys):
    """Run ``gpunet ARGV --help`` in-process; return its output (fails unless exit 0)."""
    from gpunet.cli import main
    with pytest.raises(SystemExit) as e:
        main(list(argv) + ["--help"])
    out = capsys.readouterr().out
    assert e.value.code in (0, None), f"gpunet {' '.join(argv)} --help exited with {e.value.code}"
    return out


def test_guide_has_commands():
    assert {argv[0] for _, argv in COMMANDS if argv} >= {"train", "info", "bench"}


@pytest.mark.parametrize("line,argv", COMMANDS,
                         ids=[f"guide.md:{line}:{' '.join(argv[:2])}" for line, argv in COMMANDS])
def test_gpunet_command(line, argv, capsys):
    """``gpunet [SUB [SUBSUB]] [--flag ...]``: each subcommand is one that the level above
    lists (and its ``--help`` works); each ``--flag`` is listed by the deepest one's help."""
    path, text = [], _help([], capsys)
    for word in argv:
        if word.startswith("-"):
            continue
        choices = re.search(r"^\s*\{([\w,-]+)\}", text, re.M)
        if choices is None:
            break                       # a positional value, not a subcommand
        commands = choices.group(1).split(",")
        assert word in commands, \
            f"docs/guide.md:{line}: 'gpunet {' '.join(path + [word])}' is not a command ({commands})"
        path.append(word)
        text = _help(path, capsys)
    assert path or argv[0].startswith("-"), f"docs/guide.md:{line}: no gpunet subcommand"
    for word in argv:
        if word.startswith("--"):
            flag = word.split("=", 1)[0]
            assert re.search(re.escape(flag) + r"(?![\w-])", text), \
                f"docs/guide.md:{line}: 'gpunet {' '.join(path)}' has no option {flag}"
