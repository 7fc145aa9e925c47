"""The CUDA kernels compile, and their host-checkable parts are right, without a GPU.

* every ``kernels/*.cu`` compiles with ``nvcc -cubin`` and with NVRTC (the compiler CuPy
  uses, with the loader's own options and name expressions) for sm_80 and sm_90, with no
  warning and no register spill (tools/check_kernels.py does the work);
* the checker itself fails on planted errors, warnings, spills and missing explicit
  instantiations;
* the helpers of ``kernels/common.cuh`` that the tests can run on the host (the counter
  hash, FastDivmod, the Welford combine) are compiled by nvcc into a host program and
  compared with gpunet.random and NumPy;
* gpunet.cuda's host-side pieces (kernel list, options, hash, divmod constants).

Each compiler check is skipped, saying why, where nvcc or the NVRTC bindings are absent.
"""
from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy
import pytest

from gpunet import cuda as gcuda
from gpunet import random as grandom

REPO = Path(__file__).resolve().parents[1]
KDIR = REPO / "kernels"


def _load_checker():
    spec = importlib.util.spec_from_file_location("check_kernels", REPO / "tools" / "check_kernels.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("check_kernels", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


ck = _load_checker()
NVCC = ck.find_nvcc()
try:
    ck.nvrtc_module()
    NVRTC_WHY = None
except ImportError as e:
    NVRTC_WHY = str(e)

needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
needs_nvrtc = pytest.mark.skipif(NVRTC_WHY is not None, reason=f"NVRTC unavailable: {NVRTC_WHY}")

FILES = sorted(gcuda.KERNELS)
ARCHS = ck.DEFAULT_ARCHS


def _problems(r):
    return f"{r.file} sm_{r.arch} {r.compiler}:\n" + "\n".join(r.problems)


# ---------------------------------------------------------------------------------------
# Layout and the loader's tables
# ---------------------------------------------------------------------------------------

def test_every_kernel_file_is_loaded_and_has_a_defines_header():
    on_disk = sorted(p.name for p in KDIR.glob("*.cu"))
    assert on_disk == FILES, "kernels/*.cu and gpunet.cuda.KERNELS disagree"
    assert (KDIR / "common.cuh").is_file()
    for f in [*FILES, "common.cuh"]:
        first = (KDIR / f).read_text().splitlines()[0]
        assert first.startswith("// defines: "), f"{f}: first line must be '// defines: ...'"
    for f, names in gcuda.KERNELS.items():
        header = (KDIR / f).read_text().splitlines()[0]
        for n in names:
            base = n.split("<")[0]
            assert base in header, f"{f}: kernel {base} missing from its '// defines:' line"


def test_no_host_only_constructs_in_kernel_sources():
    # NVRTC rejects these where nvcc forgives them; the NVRTC check below would fail too,
    # this says why at a glance.
    for p in [*KDIR.glob("*.cu"), *KDIR.glob("*.cuh")]:
        text = re.sub(r"//[^\n]*|/\*.*?\*/", "", p.read_text(), flags=re.S)  # code only
        for bad in ("INFINITY", "<cmath>", "<cfloat>", "<math.h>", "FLT_MAX", "DBL_MAX", "extern \"C\""):
            assert bad not in text, f"{p.name} uses {bad}"


def test_compile_options_carry_include_dir_and_kernels_hash(tmp_path):
    opts = gcuda.compile_options()
    assert f"-I{KDIR}" in opts
    assert f"-DGPUNET_KERNELS_HASH={gcuda.kernels_hash()[:16]}" in opts
    full = gcuda.compile_options(90)
    assert full[: len(opts)] == opts
    assert "-arch=sm_90" in full and "-ftz=true" in full
    assert gcuda.compile_options("sm_80")[-1] == "-arch=sm_80"
    # editing only the included header changes the hash, hence CuPy's cache key
    copy = tmp_path / "k"
    shutil.copytree(KDIR, copy)
    h0 = gcuda.kernels_hash(copy)
    assert h0 == gcuda.kernels_hash()
    with open(copy / "common.cuh", "a") as f:
        f.write("\n// edited\n")
    assert gcuda.kernels_hash(copy) != h0


def test_kernels_dir_is_the_checkout_kernels():
    assert gcuda.kernels_dir() == KDIR.resolve()


def test_fast_divmod_constants_divide_exactly():
    rng = numpy.random.default_rng(1)
    divisors = [1, 2, 3, 5, 7, 10, 49, 64, 196, 1000, 3136, 12544, 2**20 + 1, 2**30 - 1, 2**31 - 1]
    divisors += [int(d) for d in rng.integers(1, 2**31, size=200)]
    ns = [0, 1, 2**31 - 1, 2**31 - 2, 2**30] + [int(n) for n in rng.integers(0, 2**31, size=300)]
    for d in divisors:
        dd, mul, shr = gcuda.fast_divmod_constants(d)
        assert dd == d and 0 <= mul < 2**32 and 0 <= shr < 32
        for n in ns + [d - 1, d, d + 1, 3 * d - 1]:
            if not 0 <= n < 2**31:
                continue
            # the device formula: __umulhi(n, mul) >> shr, or n itself when d == 1
            q = n if d == 1 else ((n * mul) >> 32) >> shr
            assert q == n // d, (n, d)
    with pytest.raises(ValueError):
        gcuda.fast_divmod_constants(0)


def test_launchers_without_a_gpu_raise_runtime_error():
    from gpunet import backend
    if backend.cuda_available():
        pytest.skip("a CUDA device is present: the launchers run (benchmarks/gpu_check.py)")
    x = numpy.ones((4, 3), dtype=numpy.float32)
    with pytest.raises(RuntimeError, match="CUDA"):
        gcuda.dropout_forward(x, 1, 2, 3, 1.0)
    with pytest.raises(RuntimeError, match="CUDA"):
        gcuda.softmax_xent(x, numpy.zeros(4, dtype=numpy.int64))
    with pytest.raises(RuntimeError, match="CUDA"):
        gcuda.module("dropout.cu")


# ---------------------------------------------------------------------------------------
# The compile checks proper
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def all_checks():
    """Every (file, arch, compiler) result, compiled once (nvcc jobs in parallel)."""
    compilers = tuple(c for c, ok in (("nvcc", NVCC is not None), ("nvrtc", NVRTC_WHY is None)) if ok)
    return {(r.file, r.arch, r.compiler): r for r in ck.run_checks(compilers=compilers, jobs=2)}


@needs_nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", FILES)
def test_nvcc_cubin_compiles_without_warning_or_spill(all_checks, file, arch):
    # all_checks also cross-checks nvcc's kernels against NVRTC's name expressions
    r = all_checks[(file, arch, "nvcc")]
    assert r.ok, _problems(r)
    assert r.kernels == len(gcuda.KERNELS[file]), (r.kernels, r.entries)
    assert r.spill_bytes == 0


@needs_nvrtc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("file", FILES)
def test_nvrtc_compiles_every_name_expression(all_checks, file, arch):
    r = all_checks[(file, arch, "nvrtc")]
    assert r.ok, _problems(r)
    assert len(r.entries) == len(gcuda.KERNELS[file])
    assert r.spill_bytes == 0


@needs_nvcc
@needs_nvrtc
def test_nvcc_instantiates_what_the_loader_asks_nvrtc_for(all_checks):
    for f in FILES:
        for a in ARCHS:
            nvcc, nvrtc = all_checks[(f, a, "nvcc")], all_checks[(f, a, "nvrtc")]
            assert set(nvrtc.entries) <= set(nvcc.entries), (f, a)


# Kernels whose device results the tests compare with the NumPy reference bit for bit
# (tests/test_conv_device.py, test_kernels_gpu.py, test_optim_fused.py): file -> kernels
# left out (results compared within a tolerance). nvcc and NVRTC contract a * b + c into
# an FMA by default, which rounds once where NumPy rounds the product and then the sum
# (avg_pool_backward's `s += dy * scale` differed from NumPy by the last bits on an H200);
# those kernels must write such arithmetic with gpunet::mul_rn/add_rn (common.cuh). The sim
# compiles for the host without FMA, so only the PTX shows a contraction.
EXACT_KERNELS = {"pooling.cu": (), "dropout.cu": (), "conv.cu": (), "optim.cu": ("mt_grad_sumsq",)}
_PTX_ENTRY = re.compile(r"\.entry\s+(\w+)\((.*?)^\}", re.S | re.M)
_PTX_FMA = re.compile(r"\bfma\.rn[.\w]*\.f(?:16|32|64)\b")


def _ptx_fma_counts(file, directory=KDIR, arch=80):
    """{mangled kernel name: number of fma instructions} in nvcc's PTX of ``file``, compiled
    with the loader's options (contraction on, as CuPy's NVRTC has it)."""
    with subprocess.Popen([NVCC, "-ptx", *gcuda.compile_options(arch, directory), "-o", "-",
                           str(Path(directory) / file)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as p:
        out, err = p.communicate()
    assert p.returncode == 0, err
    return {m.group(1): len(_PTX_FMA.findall(m.group(2))) for m in _PTX_ENTRY.finditer(out)}


@needs_nvcc
@pytest.mark.parametrize("file", sorted(EXACT_KERNELS))
def test_kernels_equal_to_numpy_have_no_contracted_fma(file):
    counts = _ptx_fma_counts(file)
    assert len(counts) == len(gcuda.KERNELS[file])
    fused = {k: n for k, n in counts.items() if n and not any(x in k for x in EXACT_KERNELS[file])}
    assert not fused, f"{file}: products contracted into FMAs (use gpunet::mul_rn/add_rn): {fused}"


@needs_nvcc
def test_contracted_fma_is_detected(tmp_path):
    # the avg_pool_backward line as it was before mul_rn/add_rn: the check above sees its FMA
    d = _planted(tmp_path, "s = add_rn(s, mul_rn(gpunet::to_acc(g[p * sdh + q * sdw]), scale));",
                 "s += gpunet::to_acc(g[p * sdh + q * sdw]) * scale;", file="pooling.cu")
    counts = _ptx_fma_counts("pooling.cu", d)
    fused = sorted(k for k, n in counts.items() if n)
    assert len(fused) == 3 and all("avg_pool_backward" in k for k in fused), fused


# ---------------------------------------------------------------------------------------
# The checker fails when it should (plants go into a copy of kernels/)
# ---------------------------------------------------------------------------------------

def _planted(tmp_path, old, new, file="dropout.cu"):
    d = tmp_path / "kernels"
    shutil.copytree(KDIR, d)
    text = (d / file).read_text()
    assert old in text
    (d / file).write_text(text.replace(old, new, 1))
    return d


KEEP_LINE = "v.v[k] = dropout_one(v.v[k], keep, scale);"


def test_nvrtc_check_bypasses_nvrtcs_cache():
    """NVRTC 12.9+ caches programs in the CUDA driver's cache (where a driver exists, so not
    here): a cache hit compiles nothing and prints no ptxas report, which made the clean
    compile after the planted one below list no kernel on an H200. The check asks for
    --no-cache where NVRTC knows it, keeping the loader's options and -Xptxas=-v."""
    opts = ck.nvrtc_options(80, KDIR, (13, 0))
    assert opts[: len(gcuda.compile_options(80))] == gcuda.compile_options(80)
    assert "-Xptxas=-v" in opts and "--no-cache" in opts
    assert "--no-cache" not in ck.nvrtc_options(80, KDIR, (12, 8))


@needs_nvcc
@needs_nvrtc
def test_planted_undefined_identifier_fails_both_compilers(tmp_path):
    d = _planted(tmp_path, KEEP_LINE, "v.v[k] = dropout_one(v.v[k], keep, scale) + planted_undefined;")
    rc, rr = ck.check_nvcc("dropout.cu", 80, d), ck.check_nvrtc("dropout.cu", 80, d)
    assert not rc.ok and any("planted_undefined" in p for p in rc.problems)
    assert not rr.ok and any("planted_undefined" in p for p in rr.problems)
    assert ck.main(["--kernels-dir", str(d), "--arch", "80", "--file", "dropout.cu"]) == 1
    assert ck.main(["--arch", "80", "--file", "dropout.cu"]) == 0


@needs_nvrtc
def test_planted_INFINITY_fails_nvrtc(tmp_path):
    # nvcc's implicit host headers define INFINITY; NVRTC (what CuPy runs) does not.
    d = _planted(tmp_path, KEEP_LINE, "v.v[k] = dropout_one(v.v[k], keep, scale) + T(0) * T(INFINITY);")
    rr = ck.check_nvrtc("dropout.cu", 80, d)
    assert not rr.ok and any("INFINITY" in p for p in rr.problems)


@needs_nvcc
@needs_nvrtc
def test_planted_warning_fails_both_compilers(tmp_path):
    d = _planted(tmp_path, KEEP_LINE, "int planted_unused = 3; " + KEEP_LINE)
    rc, rr = ck.check_nvcc("dropout.cu", 80, d), ck.check_nvrtc("dropout.cu", 80, d)
    assert not rc.ok and any("planted_unused" in p for p in rc.problems)
    assert not rr.ok and any("warning" in p and "planted_unused" in p for p in rr.problems)


SPILLER = """
template <typename T>
__global__ void __launch_bounds__(1024, 2) planted_spill(const T* __restrict__ x, T* __restrict__ y, int n) {
    T acc[48];
#pragma unroll
    for (int k = 0; k < 48; ++k) acc[k] = x[threadIdx.x + k * n];
#pragma unroll
    for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int k = 0; k < 48; ++k) acc[k] = acc[k] * acc[(k + 7) % 48] + acc[(k + 13) % 48];
    T s = T(0);
#pragma unroll
    for (int k = 0; k < 48; ++k) s += acc[k];
    y[threadIdx.x] = s;
}
template __global__ void planted_spill<double>(const double*, double*, int);
"""


@needs_nvcc
@needs_nvrtc
def test_planted_register_spill_fails_both_compilers(tmp_path):
    d = tmp_path / "kernels"
    shutil.copytree(KDIR, d)
    with open(d / "dropout.cu", "a") as f:
        f.write(SPILLER)
    rc = ck.check_nvcc("dropout.cu", 80, d)
    rr = ck.check_nvrtc("dropout.cu", 80, d, names=[*gcuda.KERNELS["dropout.cu"], "planted_spill<double>"])
    for r in (rc, rr):
        assert not r.ok and r.spill_bytes > 0, _problems(r)
        assert any("spill" in p for p in r.problems)


@needs_nvcc
@needs_nvrtc
def test_missing_explicit_instantiation_is_reported(tmp_path):
    line = ("template __global__ void dropout_apply<double>(const double*, double*, long long, unsigned int,\n"
            "                                               unsigned int, unsigned int, double);")
    d = _planted(tmp_path, line, "")
    results = ck.run_checks(d, archs=(80,), files=["dropout.cu"], jobs=1)
    nvcc = next(r for r in results if r.compiler == "nvcc")
    nvrtc = next(r for r in results if r.compiler == "nvrtc")
    assert nvrtc.ok  # NVRTC instantiates from the name expression...
    assert not nvcc.ok and any("explicit instantiation" in p for p in nvcc.problems)  # ...nvcc cannot


def test_unlisted_kernel_file_is_reported(tmp_path):
    d = tmp_path / "kernels"
    shutil.copytree(KDIR, d)
    (d / "stray.cu").write_text("// defines: nothing\n")
    results = ck.run_checks(d, archs=(80,), compilers=(), files=[])
    assert [r.file for r in results if not r.ok] == ["stray.cu"]


# ---------------------------------------------------------------------------------------
# common.cuh's host-runnable helpers, compiled by nvcc into a host program
# ---------------------------------------------------------------------------------------

HOST_PROGRAM = r"""
#include <cstdio>
#include "common.cuh"
// Commands on stdin, one per line:
//   b k1 k2 start count        -> counter_bits(i, k1, k2) for i in [start, start + count)
//   d divisor mul shr n        -> q r of FastDivmod
//   w n1 hi1 lo1 m2_1 n2 hi2 lo2 m2_2  -> welford_hilo_combine (double): n hi lo m2
int main() {
    char op;
    while (std::scanf(" %c", &op) == 1) {
        if (op == 'b') {
            unsigned int k1, k2, start, count;
            std::scanf("%u %u %u %u", &k1, &k2, &start, &count);
            for (unsigned int j = 0; j < count; ++j)
                std::printf("%u\n", gpunet::counter_bits(start + j, k1, k2));
        } else if (op == 'd') {
            gpunet::FastDivmod f;
            unsigned int n, q, r;
            std::scanf("%u %u %u %u", &f.d, &f.mul, &f.shr, &n);
            f.divmod(n, q, r);
            std::printf("%u %u\n", q, r);
        } else if (op == 'w') {
            gpunet::WelfordHiLo<double> a, b;
            std::scanf("%lf %lf %lf %lf %lf %lf %lf %lf", &a.n, &a.hi, &a.lo, &a.m2, &b.n, &b.hi,
                       &b.lo, &b.m2);
            gpunet::WelfordHiLo<double> c = gpunet::welford_hilo_combine(a, b);
            std::printf("%.17g %.17g %.17g %.17g\n", c.n, c.hi, c.lo, c.m2);
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def host_program(tmp_path_factory):
    if NVCC is None:
        pytest.skip("nvcc not installed")
    d = tmp_path_factory.mktemp("hostprog")
    src, exe = d / "host.cu", d / "host"
    src.write_text(HOST_PROGRAM)
    p = subprocess.run([NVCC, "-std=c++17", f"-I{KDIR}", "-o", str(exe), str(src)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr

    def run(commands: str) -> list[str]:
        out = subprocess.run([str(exe)], input=commands, capture_output=True, text=True, check=True)
        return out.stdout.split("\n")[:-1]
    return run


@pytest.mark.parametrize("seed, offset", [(0, 0), (1234, 7), (2**63 + 5, 2**40 + 3), (42, 2**64 - 1)])
def test_counter_hash_matches_gpunet_random_bit_for_bit(host_program, seed, offset):
    k1, k2 = grandom.keys(seed, offset)
    n = 5000
    ref = grandom.random_bits(seed, offset, (n,), numpy)
    got = numpy.array(host_program(f"b {k1} {k2} 0 {n}\n"), dtype=numpy.uint64).astype(numpy.uint32)
    numpy.testing.assert_array_equal(got, ref)
    # the last indices of a 2**32 - 1 element draw (index arithmetic wraps modulo 2**32)
    start = 2**32 - 7
    tail = numpy.array(host_program(f"b {k1} {k2} {start} 6\n"), dtype=numpy.uint64)
    i = numpy.arange(start, start + 6, dtype=numpy.uint64).astype(numpy.uint32)
    x = (i + numpy.uint32(k1)).astype(numpy.uint32)
    x = grandom._mix32(x, numpy) ^ numpy.uint32(k2)
    numpy.testing.assert_array_equal(tail.astype(numpy.uint32), grandom._mix32(x, numpy))


def test_dropout_keep_rule_matches_the_numpy_mask(host_program):
    # what dropout.cu computes per element, here on the host: (bits >> 8) >= threshold
    seed, counter, p, n = 99, 3, 0.3, 4096
    k1, k2 = grandom.keys(seed, counter)
    bits = numpy.array(host_program(f"b {k1} {k2} 0 {n}\n"), dtype=numpy.uint64)
    keep = (bits >> 8) >= grandom.keep_threshold(p)
    ref = grandom.uniform(seed, counter, (n,), numpy) >= numpy.float32(p)
    numpy.testing.assert_array_equal(keep, ref)
    assert 0.25 < 1 - keep.mean() < 0.35


def test_fast_divmod_device_code_on_host(host_program):
    rng = numpy.random.default_rng(2)
    cmds, want = [], []
    for d in [1, 2, 3, 49, 64, 3136, 12544, 2**31 - 1, *rng.integers(1, 2**20, size=20)]:
        dd, mul, shr = gcuda.fast_divmod_constants(int(d))
        for n in [0, 1, int(d) - 1, int(d), 2**31 - 1, *rng.integers(0, 2**31, size=20)]:
            if n < 0:
                continue
            cmds.append(f"d {dd} {mul} {shr} {n}")
            want.append(f"{n // dd} {n % dd}")
    assert host_program("\n".join(cmds) + "\n") == want


def test_welford_combine_matches_numpy(host_program):
    # the batch-norm kernels' combine (welford_hilo_combine), partials entered with lo = 0
    rng = numpy.random.default_rng(3)
    x = rng.normal(1000.0, 3.0, size=10_000)   # large mean: the naive formula would cancel
    chunks = numpy.array_split(x, 7)
    acc = (0.0, 0.0, 0.0, 0.0)
    for c in chunks:
        part = (float(c.size), float(c.mean()), 0.0, float(((c - c.mean()) ** 2).sum()))
        out = host_program("w {} {} {} {} {} {} {} {}\n".format(*acc, *part))
        acc = tuple(float(v) for v in out[0].split())
    assert acc[0] == x.size
    numpy.testing.assert_allclose(acc[1] + acc[2], x.mean(), rtol=1e-14)
    numpy.testing.assert_allclose(acc[3] / acc[0], x.var(), rtol=1e-12)


WALK_PROGRAM = r"""
#include <cstdio>
#include "batchnorm.cu"
// stdin: N C HW chunks threads c  ->  every offset bn_stats_partial / bn_backward_reduce_partial
// read for channel c, walking exactly as their loops do (all chunks, all threads).
int main() {
    long long N, C, HW, chunks, threads, c;
    while (std::scanf("%lld %lld %lld %lld %lld %lld", &N, &C, &HW, &chunks, &threads, &c) == 6) {
        const long long M = N * HW;
        for (int b = 0; b < chunks; ++b) {
            long long begin, end;
            chunk_range(M, static_cast<int>(chunks), b, begin, end);
            for (long long t = 0; t < threads; ++t) {
                ChannelWalker w;
                w.init(begin + t, threads, HW, C);
                for (long long m = begin + t; m < end; m += threads, w.advance())
                    std::printf("%lld ", w.offset(c));
            }
        }
        std::printf("\n");
    }
    return 0;
}
"""


@pytest.mark.skipif(NVCC is None, reason="nvcc not installed")
def test_batchnorm_channel_walk_visits_each_value_of_the_channel_once(tmp_path):
    src, exe = tmp_path / "walk.cu", tmp_path / "walk"
    src.write_text(WALK_PROGRAM)
    p = subprocess.run([NVCC, "-std=c++17", "-arch=sm_80", f"-I{KDIR}", "-o", str(exe), str(src)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    configs = [(3, 5, 7, 2, 4), (4, 3, 1, 3, 8), (2, 2, 64, 5, 32), (5, 4, 3, 1, 256),
               (7, 2, 49, 3, 256), (16, 3, 10, 7, 32), (1, 1, 1, 1, 256)]
    lines, want = [], []
    for N, C, HW, chunks, threads in configs:
        for c in sorted({0, C // 2, C - 1}):
            lines.append(f"{N} {C} {HW} {chunks} {threads} {c}")
            want.append(sorted((n * C + c) * HW + hw for n in range(N) for hw in range(HW)))
    out = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True,
                         text=True, check=True).stdout.split("\n")
    for line, got, ref in zip(lines, out, want):
        assert sorted(int(v) for v in got.split()) == ref, line
