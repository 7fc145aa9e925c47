"""tests/ci_stages.py, CI's split of the suite between its two runs (.ci/run): a small suite is
run as stage 1 (no extras) and recorded, then collected as stage 2 with the "extras" (empty
packages) importable; stage 2 must keep every test whose stage-1 run does not cover it."""
import os
import subprocess
import sys
import textwrap

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CONFTEST = f"""
import sys
sys.path.insert(0, {HERE!r})
import ci_stages
ci_stages.start()


def pytest_configure(config):
    ci_stages.register(config)
"""

SUITE = {
    "test_a.py": """
        import importlib.util, subprocess, sys
        import pytest

        def test_clean():
            assert sum([1, 2]) == 3

        def test_does_more_with_an_extra():
            try:
                import ci_extra_a
            except ImportError:
                return
            assert ci_extra_a.VALUE == 1

        def test_asks_with_find_spec():
            assert importlib.util.find_spec("ci_extra_b") is None or True

        def test_needs_an_extra():
            pytest.importorskip("ci_extra_c")

        def test_child_asks():
            subprocess.run([sys.executable, "-c", "import importlib.util as u; u.find_spec('ci_extra_d')"],
                           check=True)

        def test_untraced_child():
            subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)

        def test_child_without_the_record():
            import os
            env = {k: v for k, v in os.environ.items() if k != "GPUNET_CI_RECORD"}
            subprocess.run([sys.executable, "-c", "pass"], check=True, env=env)

        def test_missing_in_both_stages():
            try:
                import ci_never_installed
            except ImportError:
                pass

        @pytest.fixture(scope="module")
        def shared():
            try:
                import ci_extra_e
            except ImportError:
                pass

        def test_fixture_first(shared):
            pass

        def test_fixture_second(shared):       # the fixture is cached: it asks only once
            pass

        def test_uses_a_package_that_asks_itself():   # ci_pkg's own optional import: not ours
            import ci_pkg
            assert ci_pkg.OK
        """,
    "test_skipped_module.py": """
        import pytest
        pytest.importorskip("ci_extra_c")

        def test_there():
            pass
        """,
    "test_collected.py": """
        import importlib.util
        import pytest
        HAVE = importlib.util.find_spec("ci_extra_f") is not None

        @pytest.mark.parametrize("x", [1] + ([2] if HAVE else []))
        def test_p(x):
            pass
        """,
    "test_untouched.py": """
        def test_plain():
            pass
        """,
}


def _pytest(suite, env_extra, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUNET_CI_")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=suite, env=env, capture_output=True, text=True, timeout=300)


def test_stage_2_keeps_what_stage_1_could_not_cover(tmp_path):
    suite, extras = tmp_path / "suite", tmp_path / "extras"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "conftest.py").write_text(CONFTEST)
    for name, text in SUITE.items():
        (suite / name).write_text(textwrap.dedent(text))
    for name in "abcdefg":
        (extras / f"ci_extra_{name}").mkdir(parents=True)
        (extras / f"ci_extra_{name}" / "__init__.py").write_text("VALUE = 1\n")
    site = tmp_path / "lib" / "site-packages"     # an installed package with an optional import
    (site / "ci_pkg").mkdir(parents=True)
    (site / "ci_pkg" / "__init__.py").write_text("try:\n    import ci_extra_g\nexcept ImportError:\n    pass\nOK = 1\n")
    record = tmp_path / "record.jsonl"

    s1 = _pytest(suite, {"GPUNET_CI_RECORD": str(record), "PYTHONPATH": os.pathsep.join((str(site), ROOT))})
    assert s1.returncode == 0, s1.stdout + s1.stderr
    assert "12 passed, 2 skipped" in s1.stdout, s1.stdout

    s2 = _pytest(suite, {"GPUNET_CI_RERUN": str(record),
                         "PYTHONPATH": os.pathsep.join((str(extras), str(site), ROOT))}, "--collect-only")
    assert s2.returncode == 0, s2.stdout + s2.stderr
    selected = {line.strip() for line in s2.stdout.splitlines() if "::" in line}
    assert selected == {
        "test_a.py::test_does_more_with_an_extra",
        "test_a.py::test_asks_with_find_spec",
        "test_a.py::test_needs_an_extra",
        "test_a.py::test_child_asks",
        "test_a.py::test_untraced_child",
        "test_a.py::test_child_without_the_record",
        "test_a.py::test_fixture_first",
        "test_a.py::test_fixture_second",
        "test_skipped_module.py::test_there",
        "test_collected.py::test_p[1]",
        "test_collected.py::test_p[2]",
    }, s2.stdout
    # test_clean, test_missing_in_both_stages, test_uses_a_package_that_asks_itself, test_plain
    assert "4 deselected" in s2.stdout, s2.stdout
    assert "(not counted): ci_extra_g" in s2.stdout, s2.stdout

    # without the extras, stage 2 keeps only what stage 1 skipped or never ran
    s2_bare = _pytest(suite, {"GPUNET_CI_RERUN": str(record), "PYTHONPATH": os.pathsep.join((str(site), ROOT))},
                      "--collect-only")
    selected = {line.strip() for line in s2_bare.stdout.splitlines() if "::" in line}
    assert selected == {"test_a.py::test_needs_an_extra", "test_a.py::test_untraced_child",
                        "test_a.py::test_child_without_the_record"}, s2_bare.stdout


def test_stage_2_refuses_a_missing_record(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_x.py").write_text("def test_x():\n    pass\n")
    p = _pytest(tmp_path, {"GPUNET_CI_RERUN": str(tmp_path / "nowhere.jsonl"), "PYTHONPATH": ROOT})
    assert p.returncode != 0
    assert "cannot read stage 1's record" in p.stdout + p.stderr


def test_an_ask_outside_the_tests_makes_stage_2_run_everything(tmp_path):
    """conftest.py (the project's code, outside any test) tries a module and could keep the
    answer for every test: stage 2 cannot tell which tests depend on it, so it runs them all."""
    suite, extras = tmp_path / "suite", tmp_path / "extras"
    suite.mkdir()
    (suite / "pytest.ini").write_text("[pytest]\n")
    (suite / "conftest.py").write_text(CONFTEST + "\ntry:\n    import ci_extra_h\nexcept ImportError:\n    pass\n")
    (suite / "test_u.py").write_text("def test_one():\n    pass\n\n\ndef test_two():\n    pass\n")
    (extras / "ci_extra_h").mkdir(parents=True)
    (extras / "ci_extra_h" / "__init__.py").write_text("")
    record = tmp_path / "record.jsonl"
    s1 = _pytest(suite, {"GPUNET_CI_RECORD": str(record), "PYTHONPATH": ROOT})
    assert "2 passed" in s1.stdout, s1.stdout + s1.stderr
    s2 = _pytest(suite, {"GPUNET_CI_RERUN": str(record), "PYTHONPATH": os.pathsep.join((str(extras), ROOT))},
                 "--collect-only")
    assert "2 tests collected" in s2.stdout and "deselected" not in s2.stdout, s2.stdout
    assert "all: asked outside any test for ci_extra_h" in s2.stdout, s2.stdout
    s2_bare = _pytest(suite, {"GPUNET_CI_RERUN": str(record), "PYTHONPATH": ROOT}, "--collect-only")
    assert "2 deselected" in s2_bare.stdout, s2_bare.stdout
