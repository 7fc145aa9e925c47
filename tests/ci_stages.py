"""CI's two runs of the suite (.ci/run), so that the second runs only what the first could not
cover.

Stage 1 runs the README's ``python -m pytest -q`` in a stock venv (no extras); with
``GPUNET_CI_RECORD=FILE`` it appends to FILE, as JSON lines, each test's outcome and each
top-level module that the test asked for and did not find (a failed ``import``,
``pytest.importorskip``, ``importlib.util.find_spec``), whether the test, a fixture it uses,
the collection of its module, or a Python process it started asked. Stage 2 runs the same
command with the extras installed and ``GPUNET_CI_RERUN=FILE``: it deselects the tests that
passed in stage 1 without asking for any module that is importable now, and runs the rest:
what stage 1 skipped, failed or never collected (ids that exist only with an extra), and every
test that asked for a module the extras installed (it ran another path in stage 1). A test
that starts a Python process whose imports are not traced (a PYTHONPATH of its own, ``-I``,
``-S``, ``-E``) counts as one that asked. Asks made outside any test that could hide a test's
own (gpunet's code or the tests' filling a cache at import) make stage 2 run everything,
except CuPy's, which gpunet.backend caches: stage 1 clears that cache (only while CuPy is
missing) before every test, so each test that asks for CuPy is seen asking. conftest.py
starts the recorder before it imports gpunet, so it sees those asks. Only the project's
asks count (code outside site-packages and the standard library: tests, gpunet, examples,
what they exec); an installed package's own optional import (hypothesis trying
typing_extensions) is only reported.
"""
import importlib.util
import json
import os
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD_SITE = os.path.join(HERE, "ci_child")
# the finder and the writer that the Python processes tests start use too
_spec = importlib.util.spec_from_file_location("_gpunet_ci_child", os.path.join(CHILD_SITE, "sitecustomize.py"))
_child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_child)

GLOBAL = ""                       # key of asks made outside any test and any module's collection
NOTHING = {"outcome": None, "missing": frozenset(), "untraced": False, "others": frozenset(),
           "retraced": frozenset()}


def _collect_key(nodeid):
    return "collect:" + nodeid.split("::")[0]


class Recorder:
    """Stage 1: notes outcomes and missing modules in ``path``."""

    def __init__(self, path):
        self.path = path
        self.finder = _child.MissingModules(path, GLOBAL, also=self._note_missing)
        self.fixtures = {}         # id(FixtureDef) -> missing names asked while it was set up
        self.in_fixture = []       # the FixtureDefs being set up, innermost last
        self.outcome = {}
        self.retraced = False
        sys.meta_path.append(self.finder)
        sys.addaudithook(self._audit)
        path_var = os.environ.get("PYTHONPATH", "")
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (CHILD_SITE, path_var) if p)
        self._python = os.path.realpath(sys.executable)
        self._bin = os.path.dirname(os.path.abspath(sys.executable))

    def _set_key(self, key):
        self.finder.key = key
        os.environ["GPUNET_CI_NODE"] = key

    def _note_missing(self, name):
        for fd in self.in_fixture:
            self.fixtures.setdefault(id(fd), set()).add(name)

    # -- Python processes a test starts ------------------------------------------------------
    def _audit(self, event, args):
        if event != "subprocess.Popen":
            return
        try:
            traced = self._traced(*args)
        except Exception:             # never break the test's Popen: count the process as untraced
            traced = False
        if not traced:
            _child.note(self.path, {"node": self.finder.key, "untraced": repr(args[1])[:200]})

    def _traced(self, executable, argv, _cwd, env):
        """False for a Python process that would not load ci_child/sitecustomize.py."""
        argv = [argv] if isinstance(argv, (str, bytes)) else list(argv or ())
        argv = [os.fsdecode(a) for a in argv]
        if executable is not None:
            argv = [os.fsdecode(executable)] + argv
        python = [a for a in argv if os.path.basename(a).startswith("python")
                  or os.path.realpath(a) == self._python]
        if not python and not (argv and os.path.dirname(os.path.abspath(argv[0])) == self._bin):
            return True        # not Python: nvcc, g++, mpiexec --version, a compiled test binary
        env = os.environ if env is None else env
        isolated = any(a.startswith("-") and not a.startswith("--") and set(a[1:]) & set("ISE")
                       for a in argv[1:] if a not in ("-c", "-m"))
        return (CHILD_SITE in os.fsdecode(env.get("PYTHONPATH", "")).split(os.pathsep) and not isolated
                and env.get("GPUNET_CI_RECORD") == self.path and env.get("GPUNET_CI_NODE") == self.finder.key)

    # -- hooks -------------------------------------------------------------------------------
    @pytest.hookimpl(hookwrapper=True)
    def pytest_make_collect_report(self, collector):
        module = isinstance(collector, (pytest.Module, pytest.Class))
        if module:
            self._set_key(_collect_key(collector.nodeid))
        report = (yield).get_result()
        if module:
            if report.skipped and isinstance(collector, pytest.Module):
                _child.note(self.path, {"node": collector.nodeid, "outcome": "skipped"})
            self._set_key(GLOBAL)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        self.in_fixture.append(fixturedef)
        try:
            yield
        finally:
            self.in_fixture.pop()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        from gpunet import backend
        # gpunet.backend caches a failed CuPy import: ask again, and be seen asking. The record
        # says so (stage 2 exempts CuPy's asks outside tests only then).
        if getattr(backend, "_cupy", False) is None and getattr(backend, "_cupy_tried", None) is True:
            backend._cupy_tried = False
            if not self.retraced:
                self.retraced = True
                _child.note(self.path, {"node": GLOBAL, "retraced": "cupy"})
        self._set_key(item.nodeid)
        self.outcome[item.nodeid] = "passed"
        yield
        self._set_key(GLOBAL)
        missing = set()
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", None)
        for name in item.fixturenames:
            if defs is None:           # pytest changed: count every fixture's asks (more tests rerun)
                missing = set().union(missing, *self.fixtures.values())
                break
            for fd in defs.get(name, ()):
                missing |= self.fixtures.get(id(fd), set())
        _child.note(self.path, {"node": item.nodeid, "outcome": self.outcome.pop(item.nodeid),
                                "fixtures_missing": sorted(missing)})

    def pytest_runtest_logreport(self, report):
        if report.nodeid not in self.outcome:
            return
        if report.failed:
            self.outcome[report.nodeid] = "failed"
        elif report.skipped and self.outcome[report.nodeid] == "passed":
            self.outcome[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
        elif report.when == "call" and hasattr(report, "wasxfail"):
            self.outcome[report.nodeid] = "xpassed"


def read(path):
    """``path``'s records as {key: {"outcome": str or None, "missing": set (asked by the
    project's code), "others": set (asked by installed packages), "untraced": bool,
    "retraced": set (asked outside tests, and seen again in each test that asks)}}."""
    runs = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            run = runs.setdefault(r["node"], {"outcome": None, "missing": set(), "untraced": False,
                                              "others": set(), "retraced": set()})
            if "outcome" in r:
                run["outcome"] = r["outcome"]
            run["missing"].update(r.get("fixtures_missing", ()))
            if "missing" in r:
                run["missing" if r["ours"] else "others"].add(r["missing"])
            run["untraced"] |= "untraced" in r
            if "retraced" in r:
                run["retraced"].add(r["retraced"])
    return runs


def importable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def covered(runs, nodeid, now):
    """Whether stage 1's run of ``nodeid`` covers it here: it passed, and neither it nor its
    module's collection asked for a module in ``now`` (those importable here), nor started a
    Python process that was not traced. Returns (covered, why not)."""
    run, collect = runs.get(nodeid), runs.get(_collect_key(nodeid), NOTHING)
    if run is None or run["outcome"] is None:
        return False, "not run in stage 1"
    if run["outcome"] != "passed":
        return False, run["outcome"] + " in stage 1"
    asked = (run["missing"] | collect["missing"]) & now
    if asked:
        return False, "asked for " + ", ".join(sorted(asked))
    if run["untraced"] or collect["untraced"]:
        return False, "started an untraced Python process"
    return True, ""


class Selector:
    """Stage 2: deselects what stage 1's record covers."""

    def __init__(self, path):
        self.path = path
        try:
            self.runs = read(path)
        except (OSError, ValueError, KeyError) as e:
            raise pytest.UsageError(f"GPUNET_CI_RERUN={path}: cannot read stage 1's record ({e})")
        if not any(r["outcome"] for r in self.runs.values()):
            raise pytest.UsageError(f"GPUNET_CI_RERUN={path}: stage 1's record holds no test")
        names = set().union(*(r["missing"] | r["others"] for r in self.runs.values()))
        importable_now = {n for n in names if importable(n)}
        self.now = set().union(*(r["missing"] for r in self.runs.values())) & importable_now
        self.others = sorted(set().union(*(r["others"] for r in self.runs.values())) & importable_now)
        outside = self.runs.get(GLOBAL, NOTHING)
        self.everything = sorted((outside["missing"] - outside["retraced"]) & self.now)
        self.why = {}

    def pytest_collection_modifyitems(self, config, items):
        if self.everything:     # asked outside any test: cannot tell which tests depend on it
            self.why["all: asked outside any test for " + ", ".join(self.everything)] = len(items)
            return
        keep, drop = [], []
        for item in items:
            ok, why = covered(self.runs, item.nodeid, self.now)
            (drop if ok else keep).append(item)
            if not ok:
                why = why if not why.startswith("asked") else "asked for a module installed now"
                self.why[why] = self.why.get(why, 0) + 1
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_terminal_summary(self, terminalreporter):
        reasons = "; ".join(f"{why}: {n}" for why, n in sorted(self.why.items()))
        terminalreporter.write_line(
            f"CI stage 2 (record {self.path}): ran what stage 1 did not cover ({reasons}); "
            f"modules installed now that stage 1 lacked and the project's code asked for: "
            f"{', '.join(sorted(self.now)) or 'none'}; that only installed packages asked for "
            f"(not counted): {', '.join(self.others) or 'none'}")


_recorder = None


def start():
    """Called by conftest.py before it imports gpunet: stage 1 records from here on."""
    global _recorder
    record, rerun = os.environ.get("GPUNET_CI_RECORD"), os.environ.get("GPUNET_CI_RERUN")
    if record and rerun:
        raise pytest.UsageError("GPUNET_CI_RECORD and GPUNET_CI_RERUN are both set: CI sets one per stage")
    if record and _recorder is None:
        _recorder = Recorder(record)


def register(config):
    """Called from conftest.py's pytest_configure."""
    if _recorder is not None:
        config.pluginmanager.register(_recorder, "gpunet_ci_record")
    elif os.environ.get("GPUNET_CI_RERUN"):
        config.pluginmanager.register(Selector(os.environ["GPUNET_CI_RERUN"]), "gpunet_ci_rerun")
