"""A wheel built from the repository carries the CUDA kernels, and the loader finds them.

The wheel is built the way pip builds it for a user (``pip wheel --no-deps``, PEP 517 build
isolation): pip makes a fresh build environment with the ``[build-system] requires`` of
pyproject.toml and calls the setuptools backend there. The test does not use
``--no-build-isolation``: that builds with whatever setuptools the test environment
happens to hold, and in a fresh ``python3 -m venv`` of Python 3.11 that is the stock
setuptools 65.5 without the ``wheel`` package, which has no ``bdist_wheel`` command
(setuptools ships its own only from 70.1) -- the test then failed for a reason no user
meets, since ``pip install`` always builds in isolation. Isolation needs the package
index (or pip's cache) once, exactly as the README's ``pip install -e ".[dev]"`` does.
The wheel is built from a copy of the tree, so the checkout gets no build/ or egg-info
litter.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KDIR = REPO / "kernels"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    if importlib.util.find_spec("pip") is None:
        pytest.skip("pip is not installed: cannot build a wheel")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md", "LICENSE", "setup.py", "setup.cfg", "MANIFEST.in"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    # symlinks=True keeps gpunet/kernels -> ../kernels as the link the build follows
    shutil.copytree(REPO / "gpunet", src / "gpunet", symlinks=True, ignore=ignore)
    shutil.copytree(KDIR, src / "kernels", ignore=ignore)
    out = tmp / "dist"
    p = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", str(src), "-w", str(out)],
                       capture_output=True, text=True, cwd=tmp)
    assert p.returncode == 0, f"wheel build failed:\n{p.stdout}\n{p.stderr}"
    wheels = list(out.glob("gpunet-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_carries_every_kernel_source(wheel):
    sources = sorted([*KDIR.glob("*.cu"), *KDIR.glob("*.cuh")])
    assert sources, "no kernel sources in kernels/"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        for p in sources:
            arc = f"gpunet/kernels/{p.name}"
            assert arc in names, f"{arc} missing from {wheel.name}"
            assert z.read(arc) == p.read_bytes(), f"{arc} differs from kernels/{p.name}"
        assert "gpunet/cuda/__init__.py" in names and "gpunet/cuda/loader.py" in names
        # the compiled CPU kernels' source, built on first use (gpunet.hostkernels)
        hk = REPO / "gpunet" / "hostkernels"
        for p in [*hk.glob("*.cpp"), *hk.glob("*.h")]:
            arc = f"gpunet/hostkernels/{p.name}"
            assert arc in names, f"{arc} missing from {wheel.name}"
            assert z.read(arc) == p.read_bytes()


def test_installed_wheel_loader_finds_its_kernels(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = ("import gpunet.cuda as c, pathlib; d = c.kernels_dir(); "
            "print(d); print(c.kernels_hash()); print(pathlib.Path(c.__file__).resolve())")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    # -P: do not put the working directory first on sys.path (python >= 3.11)
    args = [sys.executable, "-P", "-c", code] if sys.version_info >= (3, 11) else [sys.executable, "-c", code]
    p = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    kdir, digest, module = p.stdout.split("\n")[:3]
    assert Path(module).is_relative_to(site.resolve()), f"imported {module}, not the wheel's"
    assert Path(kdir) == (site / "gpunet" / "kernels").resolve()
    from gpunet import cuda
    assert digest == cuda.kernels_hash(KDIR)
