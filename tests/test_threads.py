"""gpunet.threads: the BLAS library NumPy runs on, its thread count, and the count that
``gpunet train`` picks or is told (``--threads``). threadpoolctl, where installed, is an
independent second reading of the same count (it is a test tool, not a gpunet dependency).
No timing here: the measurement that motivates the default is in benchmarks/RESULTS.md."""
import os
import re
import subprocess
import sys

import numpy
import pytest

import gpunet
from gpunet import cli, threads

linux_or_mac = pytest.mark.skipif(not (sys.platform.startswith("linux") or sys.platform == "darwin"),
                                  reason="gpunet finds BLAS libraries on Linux and macOS only")


@pytest.fixture
def restore_threads():
    before = threads.get_num_threads()
    yield
    if before is not None:
        threads.set_num_threads(before)


def _threadpoolctl_counts():
    """threadpoolctl's reading {library path: threads}, or None where it is not installed
    (CI installs it with the test tools; the checks of our own reading run without it)."""
    try:
        import threadpoolctl
    except ImportError:
        return None
    return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info()
            if i["user_api"] == "blas"}


def _assert_threadpoolctl_reads(n):
    counts = _threadpoolctl_counts()
    if counts is not None:
        assert counts and set(counts.values()) == {n}, counts


@linux_or_mac
def test_finds_numpys_blas():
    libs = threads.blas_libraries()
    assert libs, "no BLAS library found"
    assert libs[0].api in ("openblas", "mkl", "blis")
    assert libs[0].get_num_threads() >= 1
    # NumPy's own record of its BLAS names the same library
    if numpy.lib.NumpyVersion(numpy.__version__) >= "1.26.0":
        config = numpy.show_config(mode="dicts")["Build Dependencies"]["blas"]
        assert libs[0].api in config["name"].lower(), (libs[0], config["name"])
    # the same library (and the same count) threadpoolctl sees
    counts = _threadpoolctl_counts()
    if counts is not None:
        ours = {os.path.realpath(lib.path): lib.get_num_threads() for lib in libs}
        theirs = {os.path.realpath(p): n for p, n in counts.items()}
        assert ours == theirs


@linux_or_mac
@pytest.mark.parametrize("n", [1, 2, 3])
def test_set_and_get(n, restore_threads):
    before = threads.get_num_threads()
    assert threads.set_num_threads(n) == before
    assert threads.get_num_threads() == n
    _assert_threadpoolctl_reads(n)
    a = numpy.arange(64 * 64, dtype=numpy.float64).reshape(64, 64)
    numpy.testing.assert_array_equal(a @ a, numpy.einsum("ij,jk->ik", a, a))   # still computes
    assert f"{n} thread" in threads.describe()


@linux_or_mac
def test_limit_restores(restore_threads):
    threads.set_num_threads(2)
    with threads.limit(1):
        assert threads.get_num_threads() == 1
    assert threads.get_num_threads() == 2
    with pytest.raises(KeyError):
        with threads.limit(1):
            raise KeyError("inside")
    assert threads.get_num_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_bad_counts(bad):
    with pytest.raises(ValueError, match="positive integer"):
        threads.set_num_threads(bad)


@pytest.mark.parametrize("bad,exc", [(0, ValueError), (numpy.int64(-1), ValueError), (1.5, TypeError),
                                     ("2", TypeError), (numpy.True_, TypeError)])
def test_bad_counts_name_the_function(bad, exc):
    """The errors name set_num_threads (they said only 'the number of BLAS threads must be
    ...'), and a wrong type is a TypeError (also a ValueError), as every count of gpunet."""
    with pytest.raises(exc, match=r"^gpunet\.threads\.set_num_threads: .*positive integer"):
        threads.set_num_threads(bad)


@linux_or_mac
def test_numpy_integer_counts_count_as_what_they_hold(restore_threads):
    """A NumPy integer is a count, as for every constructor of gpunet (numpy.int64(4)); it
    raised 'must be a positive integer, got np.int64(1)' (os.cpu_count() // 2 is an int, but
    a count computed with NumPy, or read from an array, is not)."""
    threads.set_num_threads(2)
    with threads.limit(numpy.int64(1)):
        assert threads.get_num_threads() == 1
    assert threads.get_num_threads() == 2
    assert threads.set_num_threads(numpy.int32(2)) == 2


def test_no_blas_found_raises(monkeypatch):
    monkeypatch.setattr(threads, "blas_libraries", lambda: [])
    with pytest.raises(RuntimeError, match="no BLAS library"):
        threads.set_num_threads(1)
    assert threads.get_num_threads() is None
    assert "no OpenBLAS/MKL/BLIS" in threads.describe()


def test_default_threads():
    assert threads.default_threads(0) == 1
    assert threads.default_threads(threads.SMALL_GEMM_MACS - 1) == 1
    assert threads.default_threads(threads.SMALL_GEMM_MACS) == threads.available_cpus()
    assert threads.available_cpus() >= 1


def test_largest_gemm_of_the_train_models():
    # MLP 64-256-128-10: the 256 -> 128 layer, batch·256·128
    mlp = gpunet.models.mlp((64, 256, 128, 10))
    assert cli.largest_gemm_macs(mlp, (64,), 64) == 64 * 256 * 128
    # CNN on 8x8: conv 16 -> 32 (3x3, same padding) over 8·8 positions
    cnn = gpunet.models.cnn_digits(image_size=8)
    assert cli.largest_gemm_macs(cnn, (1, 8, 8), 64) == 64 * 8 * 8 * 32 * 16 * 9
    assert cnn.training and mlp.training                  # the probe leaves the mode as it was
    # both digits models are small: one BLAS thread
    for m, shape in ((mlp, (64,)), (cnn, (1, 8, 8))):
        assert threads.default_threads(cli.largest_gemm_macs(m, shape, 64)) == 1
    # a large MLP (784-1024-1024-10 at batch 256, gpunet bench's) gets every CPU
    big = gpunet.models.mlp((784, 1024, 1024, 10))
    assert threads.default_threads(cli.largest_gemm_macs(big, (784,), 256)) == threads.available_cpus()


def _train(*args):
    # a fresh process: the count gpunet train sets is process-wide
    p = subprocess.run([sys.executable, "-m", "gpunet.cli", "train", "--device", "cpu", "--epochs", "1",
                        "--quiet", *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [l for l in p.stdout.splitlines() if l.startswith("test accuracy")][-1]
    m = re.search(r"\| (\d+) BLAS threads? \((auto|--threads), ", line)
    assert m, line
    return int(m.group(1)), m.group(2)


@linux_or_mac
def test_train_reports_the_threads_it_used():
    assert _train() == (1, "auto")                        # small model: one thread
    assert _train("--threads", "2") == (2, "--threads")
    assert _train("--threads", "1", "--model", "cnn") == (1, "--threads")


@linux_or_mac
def test_train_in_process_restores_the_count(restore_threads, capsys):
    threads.set_num_threads(2)
    assert cli.main(["train", "--device", "cpu", "--epochs", "1", "--quiet", "--threads", "3"]) == 0
    assert "3 BLAS threads (--threads" in capsys.readouterr().out   # read back from the library
    assert threads.get_num_threads() == 2            # and put back afterwards
    _assert_threadpoolctl_reads(2)


@linux_or_mac
def test_info_shows_blas_and_count():
    code = ("import sys; from gpunet import threads, cli; threads.set_num_threads(int(sys.argv[1])); "
            "sys.exit(cli.main(['info']))")
    for n in (1, 2):
        p = subprocess.run([sys.executable, "-c", code, str(n)], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        line = [l for l in p.stdout.splitlines() if l.startswith("blas")]
        assert len(line) == 1, p.stdout
        assert re.search(rf"(OpenBLAS|MKL|BLIS).*: {n} threads?$", line[0]), line[0]



@linux_or_mac
def test_info_names_openblas_kernels():
    """OpenBLAS's kernels (picked for the CPU at load, OPENBLAS_CORETYPE overrides) decide a
    product's last bits as much as the thread count does (guide §9), so ``gpunet info`` names
    them: those OpenBLAS itself reports at load (OPENBLAS_VERBOSE=2 prints 'Core: Haswell' in
    a DYNAMIC_ARCH build, as NumPy's wheels are) and threadpoolctl reads."""
    libs = threads.blas_libraries()
    if not libs or libs[0].api != "openblas":
        pytest.skip(f"NumPy's BLAS here is not OpenBLAS ({libs[0].label if libs else 'none found'})")
    p = subprocess.run([sys.executable, "-c", "from gpunet import cli; cli.main(['info'])"],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "OPENBLAS_VERBOSE": "2"})
    assert p.returncode == 0, p.stderr
    core = re.search(r"^Core: (\S+)", p.stderr + p.stdout, re.M)
    if core is None:
        pytest.skip("this OpenBLAS does not report its kernels at load (not a DYNAMIC_ARCH build)")
    line = [l for l in p.stdout.splitlines() if l.startswith("blas")]
    assert len(line) == 1 and f", {core.group(1)} kernels)" in line[0], (core.group(0), line)
    assert libs[0].kernels == core.group(1)         # this process: the same environment
    try:
        import threadpoolctl
    except ImportError:
        return
    arch = {os.path.realpath(i["filepath"]): i.get("architecture") for i in threadpoolctl.threadpool_info()
            if i["internal_api"] == "openblas"}
    assert arch[os.path.realpath(libs[0].path)] == libs[0].kernels, (arch, libs[0])

def test_train_where_no_blas_is_found(monkeypatch, capsys):
    monkeypatch.setattr(threads, "blas_libraries", lambda: [])
    assert cli.main(["train", "--device", "cpu", "--epochs", "1", "--quiet"]) == 0
    assert "| BLAS threads unknown" in capsys.readouterr().out     # trains, and says it cannot tell
    assert cli.main(["train", "--device", "cpu", "--epochs", "1", "--quiet", "--threads", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--threads 2" in err[0] and "no BLAS library" in err[0]
