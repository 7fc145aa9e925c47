#!/usr/bin/env python3
"""Compile every gpunet CUDA kernel without a GPU; fail on any error, warning or spill.

For each ``kernels/*.cu`` and each architecture (default sm_80 and sm_90) two compilers run:

* **nvcc** ``-cubin``: ``nvcc -cubin <compile_options(arch)> -Xptxas -v -Werror
  all-warnings``. The explicit template instantiations in each file make nvcc build every
  variant.
* **NVRTC**, the compiler CuPy runs at load time, called through NVIDIA's Python bindings
  (``from cuda.bindings import nvrtc``, packages ``cuda-bindings`` and
  ``nvidia-cuda-nvrtc``) with exactly the options and name expressions the loader uses
  (``gpunet.cuda.compile_options(arch)`` and ``gpunet.cuda.KERNELS``), plus
  ``-Xptxas=-v``, which only makes ptxas report registers and spills, and ``--no-cache``
  (NVRTC 12.9+), so that a cached program cannot skip that report (``nvrtc_options``).
  Why these bindings and not CuPy's own ``cupy.cuda.compiler.compile_using_nvrtc``: they
  need no GPU, no driver and no CuPy, only the NVRTC shared library from the
  ``nvidia-cuda-nvrtc`` wheel (pinned to 13.0.* to match nvcc 13.0); CuPy asks the
  device for its architecture and is a far larger install for a CPU-only CI.

A check fails on: a compile error; any warning (nvcc's ``-Werror all-warnings``, and any
"warning" in either compiler's output); any non-zero "bytes spill stores/loads" reported
by ptxas; a name expression that NVRTC cannot resolve; or a kernel NVRTC builds whose
mangled name nvcc did not compile (an explicit instantiation missing from the file).

Usage: ``python tools/check_kernels.py [--arch 80 90] [--kernels-dir DIR] [--file F.cu]
[--json PATH]``.
Exit status 0 when every check passes, 1 otherwise (a missing compiler is a failure unless
``--allow-missing``). CI installs: ``pip install 'nvidia-cuda-nvrtc==13.0.*'
'cuda-bindings==13.0.*'`` and has nvcc 13.0 on PATH (or at /usr/local/cuda/bin/nvcc).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from gpunet import cuda as gcuda  # noqa: E402  (the loader: KERNELS, compile_options)

DEFAULT_ARCHS = (80, 90)

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
_WARNING = re.compile(r"\bwarning\b", re.IGNORECASE)


@dataclass
class Result:
    file: str
    arch: int
    compiler: str                  # "nvcc" or "nvrtc"
    ok: bool = False
    seconds: float = 0.0
    kernels: int = 0               # entry functions compiled
    max_registers: int = 0
    spill_bytes: int = 0           # stores + loads, summed over kernels
    problems: list = field(default_factory=list)
    entries: list = field(default_factory=list)   # mangled names


def find_nvcc():
    """Path of nvcc, or None."""
    found = shutil.which("nvcc")
    if found:
        return found
    for p in ("/usr/local/cuda/bin/nvcc", "/usr/local/cuda-13.0/bin/nvcc"):
        if os.access(p, os.X_OK):
            return p
    return None


def cuda_include_dir():
    """The CUDA toolkit's ``include`` folder (``$CUDA_PATH``/``$CUDA_HOME``, beside nvcc, or
    ``/usr/local/cuda``), or None.

    CuPy compiles every RawModule with ``-I<its CUDA include dir>`` added (that is how its
    own float16 kernels find ``<cuda_fp16.h>``); the NVRTC check adds the same folder, so
    that kernels including ``<cuda_fp16.h>`` compile here as they do under CuPy.
    """
    cands = [os.path.join(os.environ[k], "include") for k in ("CUDA_PATH", "CUDA_HOME")
             if os.environ.get(k)]
    nvcc = find_nvcc()
    if nvcc:
        cands.append(os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))), "include"))
    cands.append("/usr/local/cuda/include")
    for c in cands:
        if os.path.isfile(os.path.join(c, "cuda_fp16.h")):
            return c
    return None


def nvrtc_module():
    """``cuda.bindings.nvrtc`` with a loadable libnvrtc, or raise ImportError saying why."""
    try:
        from cuda.bindings import nvrtc
    except Exception as e:
        raise ImportError(
            "NVRTC Python bindings unavailable ({}: {}); install them with: pip install "
            "'nvidia-cuda-nvrtc==13.0.*' 'cuda-bindings==13.0.*'".format(type(e).__name__, e)) from e
    try:
        err, major, minor = nvrtc.nvrtcVersion()
    except Exception as e:
        raise ImportError(f"libnvrtc cannot be loaded ({type(e).__name__}: {e}); install "
                          "pip install 'nvidia-cuda-nvrtc==13.0.*'") from e
    if int(err) != 0:
        raise ImportError(f"nvrtcVersion failed: {err}")
    return nvrtc


def _ptxas_report(text: str, res: Result) -> None:
    """Fill entries, registers and spills from ptxas -v output."""
    res.entries = sorted(set(m.group(1) for m in _ENTRY.finditer(text)))
    res.kernels = len(res.entries)
    regs = [int(m.group(1)) for m in _REGS.finditer(text)]
    res.max_registers = max(regs, default=0)
    spills = [int(a) + int(b) for a, b in _SPILL.findall(text)]
    res.spill_bytes = sum(spills)
    if res.spill_bytes:
        res.problems.append(f"register spills: {res.spill_bytes} bytes "
                            f"({sum(1 for s in spills if s)} kernel(s))")


def _warnings(text: str) -> list:
    return [ln.strip() for ln in text.splitlines() if _WARNING.search(ln)]


def check_nvcc(file: str, arch: int, directory=None, nvcc=None) -> Result:
    """Compile ``file`` with ``nvcc -cubin`` for ``sm_<arch>``."""
    d = Path(directory) if directory is not None else gcuda.kernels_dir()
    res = Result(file, int(arch), "nvcc")
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        res.problems.append("nvcc not found on PATH or in /usr/local/cuda/bin")
        return res
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / (Path(file).stem + ".cubin")
        cmd = [nvcc, "-cubin", *gcuda.compile_options(arch, d), "-Xptxas", "-v",
               "-Werror", "all-warnings", "-o", str(out), str(d / file)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        res.seconds = time.perf_counter() - t0
    text = p.stdout + p.stderr
    if p.returncode != 0:
        res.problems.append(f"nvcc exited {p.returncode}")
        res.problems.extend(ln for ln in text.splitlines()
                            if ln.strip() and "ptxas info" not in ln and "bytes stack frame" not in ln)
    res.problems.extend(f"warning: {w}" for w in _warnings(text) if p.returncode == 0)
    _ptxas_report(text, res)
    res.ok = not res.problems
    return res


def nvrtc_options(arch: int, directory=None, version=(13, 0)) -> tuple:
    """The NVRTC options of the check: the loader's (``compile_options(arch)``), the CUDA
    include folder, ``-Xptxas=-v`` for the register and spill report, and from NVRTC 12.9
    on ``--no-cache``. NVRTC 12.9+ keeps compiled programs in the CUDA driver's cache where
    a driver is installed; a hit skips the compilation and with it the ptxas report, so on
    the H200 the second clean compile of dropout.cu in one pytest run (0.0 s) listed no
    kernel and failed as "name expressions with no compiled kernel". Without a driver (CPU
    CI) nothing is cached either way."""
    inc = cuda_include_dir()
    no_cache = ("--no-cache",) if tuple(int(v) for v in version) >= (12, 9) else ()
    return (*gcuda.compile_options(arch, directory), "-Xptxas=-v", *no_cache,
            *((f"-I{inc}",) if inc else ()))


def check_nvrtc(file: str, arch: int, directory=None, names=None) -> Result:
    """Compile ``file`` with NVRTC as CuPy would on an ``sm_<arch>`` device."""
    d = Path(directory) if directory is not None else gcuda.kernels_dir()
    res = Result(file, int(arch), "nvrtc")
    try:
        nvrtc = nvrtc_module()
    except ImportError as e:
        res.problems.append(str(e))
        return res
    names = list(gcuda.KERNELS[file] if names is None else names)
    src = (d / file).read_bytes()
    err, prog = nvrtc.nvrtcCreateProgram(src, file.encode(), 0, [], [])
    if int(err) != 0:
        res.problems.append(f"nvrtcCreateProgram: {err}")
        return res
    try:
        for n in names:
            (err,) = nvrtc.nvrtcAddNameExpression(prog, n.encode())
            if int(err) != 0:
                res.problems.append(f"nvrtcAddNameExpression({n}): {err}")
        opts = [o.encode() for o in nvrtc_options(arch, d, nvrtc.nvrtcVersion()[1:])]
        t0 = time.perf_counter()
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        res.seconds = time.perf_counter() - t0
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        text = log.rstrip(b"\0").decode(errors="replace")
        if int(err) != 0:
            res.problems.append(f"nvrtcCompileProgram: {err}")
            res.problems.extend(ln for ln in text.splitlines() if ln.strip())
        else:
            res.problems.extend(f"warning: {w}" for w in _warnings(text))
            lowered = []
            for n in names:
                e2, low = nvrtc.nvrtcGetLoweredName(prog, n.encode())
                if int(e2) != 0:
                    res.problems.append(f"name expression {n!r} not found: {e2}")
                else:
                    lowered.append(low.decode())
        _ptxas_report(text, res)
        if int(err) == 0:
            missing = sorted(set(lowered) - set(res.entries))
            if missing:
                res.problems.append(f"name expressions with no compiled kernel: {missing}")
            res.entries = sorted(lowered)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    res.ok = not res.problems
    return res


def run_checks(directory=None, archs=DEFAULT_ARCHS, compilers=("nvcc", "nvrtc"), files=None,
               jobs=2) -> list:
    """Every (file, arch, compiler) check; the nvcc results also get the cross-check that
    they compiled each kernel NVRTC resolves from a name expression."""
    d = Path(directory) if directory is not None else gcuda.kernels_dir()
    files = sorted(files if files is not None else gcuda.KERNELS)
    unknown = [f for f in sorted(p.name for p in d.glob("*.cu")) if f not in gcuda.KERNELS]
    results = []
    for f in unknown:
        r = Result(f, 0, "loader")
        r.problems.append("not listed in gpunet.cuda.KERNELS: the loader would never compile it")
        results.append(r)
    tasks = [(f, a) for f in files for a in archs]
    by_key = {}
    if "nvcc" in compilers:
        nvcc = find_nvcc()
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
            for (f, a), r in zip(tasks, ex.map(lambda t: check_nvcc(t[0], t[1], d, nvcc), tasks)):
                by_key[(f, a, "nvcc")] = r
    if "nvrtc" in compilers:
        for f, a in tasks:
            by_key[(f, a, "nvrtc")] = check_nvrtc(f, a, d)
    for f, a in tasks:
        rc, rr = by_key.get((f, a, "nvcc")), by_key.get((f, a, "nvrtc"))
        if rc is not None and rr is not None and rc.kernels and rr.ok:
            absent = sorted(set(rr.entries) - set(rc.entries))
            if absent:
                rc.problems.append(f"no explicit instantiation for {len(absent)} kernel(s) "
                                   f"the loader asks for: {absent}")
                rc.ok = False
        results.extend(r for r in (rc, rr) if r is not None)
    return results


def format_table(results) -> str:
    rows = [("file", "arch", "compiler", "result", "kernels", "max regs", "spill B", "seconds")]
    for r in results:
        rows.append((r.file, f"sm_{r.arch}" if r.arch else "-", r.compiler,
                     "ok" if r.ok else "FAIL", str(r.kernels), str(r.max_registers),
                     str(r.spill_bytes), f"{r.seconds:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    for r in results:
        if r.problems:
            lines.append(f"\n{r.file} sm_{r.arch} {r.compiler}:")
            lines.extend(f"    {p}" for p in r.problems[:40])
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, nargs="+", default=list(DEFAULT_ARCHS),
                    help="SM architectures to compile for (default: 80 90)")
    ap.add_argument("--kernels-dir", type=Path, default=None,
                    help="folder of *.cu/*.cuh (default: the one gpunet.cuda loads)")
    ap.add_argument("--file", action="append", default=None,
                    help="check only this kernels/*.cu file (repeatable; default all)")
    ap.add_argument("--compiler", choices=("nvcc", "nvrtc"), action="append",
                    help="run only this compiler (repeatable; default both)")
    ap.add_argument("--allow-missing", action="store_true",
                    help="a compiler that is not installed is skipped instead of failing")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    compilers = tuple(args.compiler or ("nvcc", "nvrtc"))
    if args.allow_missing:
        kept = []
        for c in compilers:
            if c == "nvcc" and find_nvcc() is None:
                print("check_kernels: nvcc not found, skipping the nvcc checks")
                continue
            if c == "nvrtc":
                try:
                    nvrtc_module()
                except ImportError as e:
                    print(f"check_kernels: skipping the NVRTC checks: {e}")
                    continue
            kept.append(c)
        compilers = tuple(kept)
    results = run_checks(args.kernels_dir, tuple(args.arch), compilers, files=args.file,
                         jobs=args.jobs)
    print(format_table(results))
    failed = [r for r in results if not r.ok]
    print(f"\ncheck_kernels: {len(results) - len(failed)} passed, {len(failed)} failed")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main())
