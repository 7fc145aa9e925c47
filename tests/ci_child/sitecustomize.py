"""Loaded by every Python process that CI's stage 1 starts from a test (tests/ci_stages.py puts
this folder first on PYTHONPATH): it notes each top-level module the process asks for and does
not find, for the test named by GPUNET_CI_NODE, in GPUNET_CI_RECORD. Nothing else changes: the
finder finds nothing, and the interpreter's own sitecustomize, if any, still runs."""
import json
import os
import sys


def note(path, record):
    """Append one JSON line to ``path`` in a single write (O_APPEND: the lines of concurrent
    processes do not interleave)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


class MissingModules:
    """A meta-path finder placed last: it is asked only for what no other finder found (an
    ``import`` that fails, ``pytest.importorskip``, ``importlib.util.find_spec``), notes the
    top-level names under ``self.key`` (names inside a package that exists are not extras),
    and finds nothing. ``ours``: whether the project's code asked (a test, gpunet, an example,
    code they exec), not an installed package's own optional import (hypothesis trying
    typing_extensions): only those can change the path the project's code takes."""

    def __init__(self, path, key="", also=None):
        self.path, self.key, self.also, self.seen = path, key, also, set()

    def find_spec(self, name, path=None, target=None):
        if "." in name:
            return None
        ours = _ours(_asker())
        if (self.key, name, ours) not in self.seen:
            self.seen.add((self.key, name, ours))
            note(self.path, {"node": self.key, "missing": name, "ours": ours})
        if ours and self.also is not None:
            self.also(name)
        return None


_STDLIB = os.path.dirname(os.__file__)
_MACHINERY = (os.path.join(_STDLIB, "importlib") + os.sep, os.sep + "_pytest" + os.sep)


def _asker():
    """The file of the code that asked: the first frame outside the import machinery
    (importlib, pytest.importorskip) and this file."""
    f = sys._getframe(2)
    while f is not None and (f.f_code.co_filename.startswith("<frozen ") or f.f_code.co_filename == __file__
                             or any(m in f.f_code.co_filename for m in _MACHINERY)):
        f = f.f_back
    return f.f_code.co_filename if f is not None else ""


def _ours(filename):
    parts = filename.split(os.sep)
    return not ("site-packages" in parts or "dist-packages" in parts
                or filename.startswith(_STDLIB + os.sep))


def _chain():
    """Run the sitecustomize this one hides (Debian's, say), as the interpreter would have."""
    import importlib.machinery
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if os.environ.get("GPUNET_CI_RECORD") and os.environ.get("GPUNET_CI_NODE"):
    sys.meta_path.append(MissingModules(os.environ["GPUNET_CI_RECORD"], os.environ["GPUNET_CI_NODE"]))
_chain()
