"""The sim's array module offers only what the real CuPy offers (DESIGN §12).

Every public name of ``gpunet.sim.array`` (and of its ``cuda``, ``linalg``,
``lib.stride_tricks`` namespaces and ``ndarray``) must exist in the installed ``cupy``
package, which imports without a GPU; every keyword argument the sim accepts must be one
that CuPy accepts, read from ``inspect.signature`` where it works and from the first line
of the docstring for CuPy's Cython functions and methods. Every ``xp.<name>`` that gpunet's
source calls must exist in both.
"""
import inspect
import re
from pathlib import Path

import pytest

from gpunet.sim import array as sp

cupy = pytest.importorskip("cupy")

ROOT = Path(__file__).resolve().parent.parent


def _public(obj):
    return sorted(n for n in dir(obj) if not n.startswith("_"))


def _cupy_params(obj):
    """``(names, has_var_keyword, has_var_positional)`` of a CuPy callable."""
    try:
        sig = inspect.signature(obj)
        kinds = {p.name: p.kind for p in sig.parameters.values()}
        return (set(kinds), inspect.Parameter.VAR_KEYWORD in kinds.values(),
                inspect.Parameter.VAR_POSITIONAL in kinds.values())
    except (TypeError, ValueError):
        pass
    doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
    head = doc[0] if doc else ""
    m = re.search(r"\((.*)\)", head)
    if m is None:
        pytest.fail(f"cannot read CuPy's signature of {obj!r} from {head!r}")
    names, var_kw, var_pos = set(), False, False
    for tok in m.group(1).split(","):
        tok = tok.strip().replace("\\*", "*").split("=")[0].strip()
        if tok in ("", "/", "*"):
            continue
        if tok.startswith("**"):
            var_kw = True
        elif tok.startswith("*"):
            var_pos = True
        else:
            names.add(tok.split()[-1])
    return names, var_kw, var_pos


def _check_signature(ours, theirs, what):
    sig = inspect.signature(ours)
    names, var_kw, var_pos = _cupy_params(theirs)
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.VAR_POSITIONAL:
            assert var_pos, f"{what}: the sim takes *{p.name}, CuPy does not"
        elif p.kind is p.VAR_KEYWORD:
            assert var_kw, f"{what}: the sim takes **{p.name}, CuPy does not"
        elif p.kind is p.POSITIONAL_ONLY:
            continue
        else:
            assert p.name in names or var_kw, \
                f"{what}: keyword {p.name!r} is not one of CuPy's {sorted(names)}"


def _cupy_attr(path):
    obj = cupy
    for part in path.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


SIM_NAMESPACES = {"": sp, "cuda": sp.cuda, "cuda.runtime": sp.cuda.runtime, "linalg": sp.linalg,
                  "lib.stride_tricks": sp.lib.stride_tricks}


@pytest.mark.parametrize("ns", sorted(SIM_NAMESPACES))
def test_every_public_name_exists_in_cupy(ns):
    ours = SIM_NAMESPACES[ns]
    theirs = _cupy_attr(ns) if ns else cupy
    missing = [n for n in _public(ours) if not hasattr(theirs, n)]
    assert not missing, f"cupy{'.' + ns if ns else ''} has no {missing}"


def test_kernel_classes_are_cupys_names():
    # RawModule/RawKernel come from the sim runtime, lazily; the names are CuPy's
    assert hasattr(cupy, "RawModule") and hasattr(cupy, "RawKernel")
    with pytest.raises(AttributeError):
        sp.NoSuchThing


def _callables():
    for ns, obj in SIM_NAMESPACES.items():
        for n in _public(obj):
            f = getattr(obj, n)
            if inspect.isfunction(f) or inspect.ismethod(f):
                yield f"{ns}.{n}" if ns else n


@pytest.mark.parametrize("path", sorted(_callables()))
def test_keyword_arguments_are_cupys(path):
    ns, _, name = path.rpartition(".")
    ours = getattr(SIM_NAMESPACES[ns], name)
    _check_signature(ours, _cupy_attr(path), path)


def test_ufunc_keywords_are_cupys():
    names, _, _ = _cupy_params(cupy.add)
    assert {"out", "casting", "dtype"} <= names
    ours = inspect.signature(sp.add.__call__).parameters.values()
    assert {p.name for p in ours if p.kind is p.KEYWORD_ONLY} <= names
    ufuncs = [n for n in _public(sp) if isinstance(getattr(sp, n), type(sp.add))]
    assert len(ufuncs) > 50
    for n in ufuncs:
        assert isinstance(getattr(cupy, n), cupy.ufunc), n


METHODS = sorted(n for n in dir(sp.ndarray) if not n.startswith("_")
                 and callable(getattr(sp.ndarray, n)))


def test_ndarray_public_names_exist_in_cupy():
    missing = [n for n in dir(sp.ndarray) if not n.startswith("_") and not hasattr(cupy.ndarray, n)]
    assert not missing


@pytest.mark.parametrize("name", METHODS)
def test_ndarray_method_keywords_are_cupys(name):
    _check_signature(getattr(sp.ndarray, name), getattr(cupy.ndarray, name), f"ndarray.{name}")


def test_ndarray_constructor_keywords_are_cupys():
    m = re.search(r"__init__\((.*)\)", cupy.ndarray.__doc__)
    names = set(re.findall(r"(\w+)=", m.group(1)))
    assert "memptr" in names
    sig = inspect.signature(sp.ndarray.__init__)
    assert [p for p in sig.parameters if p not in ("self", "shape") and p not in names] == []


def test_every_xp_name_gpunet_uses_exists_in_both():
    used = set()
    for f in (ROOT / "gpunet").rglob("*.py"):
        used |= set(re.findall(r"\bxp\.([A-Za-z_][\w.]*)", f.read_text()))
    assert len(used) > 20
    for name in sorted(used):
        path = name.rstrip(".")
        assert _cupy_attr(path) is not None, f"gpunet uses xp.{path}, which CuPy lacks"
        obj = sp
        for part in path.split("."):
            assert hasattr(obj, part), f"gpunet uses xp.{path}, which the sim lacks"
            obj = getattr(obj, part)


# gpunet/cuda/blas.py runs only on CuPy (the sim's matmul is its own cuBLAS stand-in), so its
# names must exist in CuPy alone.
CUPY_ONLY = ("blas.py",)


def _cp_names(files):
    """Every ``cp.X.Y`` the sources in ``files`` name."""
    return set(re.findall(r"\bcp\.([A-Za-z_][\w.]*)", "".join(p.read_text() for p in files)))


def test_launcher_names_exist_in_both():
    files = sorted((ROOT / "gpunet" / "cuda").glob("*.py"))
    used = _cp_names(f for f in files if f.name not in CUPY_ONLY)
    cupy_only = _cp_names(f for f in files if f.name in CUPY_ONLY)
    assert {"ndarray", "empty", "ascontiguousarray", "cuda.Device", "RawModule"} <= used
    assert {"cuda.device.get_cublas_handle", "cuda.get_current_stream"} <= cupy_only
    for path in sorted(used | cupy_only):
        assert _cupy_attr(path) is not None, path
    for path in sorted(used):
        obj = sp
        for part in path.split("."):
            obj = getattr(obj, part)    # RawModule imports the sim runtime


@pytest.mark.parametrize("cls", ["Device", "Stream", "MemoryPointer", "Event", "Graph"])
def test_cuda_classes_offer_only_cupys_attributes(cls):
    ours, theirs = getattr(sp.cuda, cls), getattr(cupy.cuda, cls)
    missing = [n for n in _public(ours) if not hasattr(theirs, n)]
    assert not missing, f"cupy.cuda.{cls} has no {missing}"
