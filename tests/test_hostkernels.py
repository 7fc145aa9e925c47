"""The compiled CPU kernels (gpunet.hostkernels): the same bits as the NumPy code they
replace, in every layout, dtype and window geometry, with ties, NaN, infinities and signed
zeros; used where a compiler exists; a clean NumPy fallback where it does not."""
import hashlib
import os
import shlex
import subprocess
import sys

import numpy
import pytest
from hypothesis import given, settings, strategies as st

# the awkward values (inf * 0, float16 Adam's eps of 0) make NumPy's passes warn, as they should
pytestmark = [pytest.mark.filterwarnings(f"ignore:{what} encountered:RuntimeWarning")
              for what in ("invalid value", "divide by zero", "overflow")]

from gpunet import hostkernels
from gpunet.functional import pooling as FP
from hostkernel_cases import awkward as _awkward, in_layout as _layout, nan_bits as _bits, x_at_arg_positive

HAS_CXX = hostkernels._compiler() is not None
needs_cxx = pytest.mark.skipif(not HAS_CXX, reason="no C++ compiler: the kernels cannot be built here")


@pytest.fixture
def kernels_switch():
    previous = hostkernels.enabled()
    yield hostkernels.set_enabled
    hostkernels.set_enabled(previous)



def _both(switch, fn):
    switch(False)
    ref = fn()
    switch(True)
    return ref, fn()



def _check_same(switch, x, k, s, p, dtype_dy):
    rng = numpy.random.default_rng(1)
    (y0, a0), (y1, a1) = _both(switch, lambda: FP.max_pool2d(x, k, s, p))
    numpy.testing.assert_array_equal(_bits(y1), _bits(y0))
    numpy.testing.assert_array_equal(a1, a0)
    assert y1.strides == y0.strides and a1.strides == a0.strides and a1.dtype == a0.dtype
    dy = _awkward(rng, y0.shape, dtype_dy)
    d0, d1 = _both(switch, lambda: FP.max_pool2d_backward(dy, a0, x.shape, k, s, p))
    numpy.testing.assert_array_equal(_bits(d1), _bits(d0))
    assert d1.strides == d0.strides
    # dy as a view with negative and non-unit strides (read in place by the kernel)
    dy = _awkward(rng, (y0.shape[0], y0.shape[1], y0.shape[2], 2 * y0.shape[3]), dtype_dy)[..., ::-2]
    d0, d1 = _both(switch, lambda: FP.max_pool2d_backward(dy, a0, x.shape, k, s, p))
    numpy.testing.assert_array_equal(_bits(d1), _bits(d0))
    _check_relu_fused(switch, x, a0, k, s, p, dy)


def _check_relu_fused(switch, x, arg, k, s, p, dy):
    """max_pool2d_relu_backward: the bits of relu_mask_times(max_pool2d_backward(...), x)
    in NumPy, where it applies (no padding, float32/float64); None with the kernels off."""
    from gpunet.functional.activations import relu_mask_times
    switch(False)
    assert FP.max_pool2d_relu_backward(dy, arg, x, k, s, p) is None
    ref = relu_mask_times(FP.max_pool2d_backward(dy, arg, x.shape, k, s, p), x)
    switch(True)
    got = FP.max_pool2d_relu_backward(dy, arg, x, k, s, p)
    if p not in (0, (0, 0)) or x.dtype == numpy.float16:
        assert got is None
        return
    assert got is not None
    numpy.testing.assert_array_equal(_bits(got), _bits(ref))
    # the same memory order (a length-1 axis's stride is anything)
    assert [s for s, n in zip(got.strides, got.shape) if n > 1] == \
        [s for s, n in zip(ref.strides, ref.shape) if n > 1]
    # with the forward's pos (x at arg > 0) in place of x: the same bits
    _, arg2, pos = FP.max_pool2d_positive(x, k, s, p)
    numpy.testing.assert_array_equal(arg2, arg)
    got = FP.max_pool2d_relu_backward(dy, arg, x, k, s, p, positive=pos)
    numpy.testing.assert_array_equal(_bits(got), _bits(ref))


GEOMETRIES = [((2, 2), None, 0), ((3, 3), 2, 1), ((3, 3), 1, 1), ((2, 3), (1, 2), (1, 0)),
              ((1, 1), None, 0), ((3, 2), (3, 1), (1, 1)), ((4, 4), 2, 2)]


@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize("layout", ["chwn", "cnhw", "nchw"])
@pytest.mark.parametrize("k,s,p", GEOMETRIES)
def test_same_bits_as_numpy(kernels_switch, dtype, layout, k, s, p):
    rng = numpy.random.default_rng(0)
    x = _layout(_awkward(rng, (5, 3, 9, 8), dtype), layout)
    _check_same(kernels_switch, x, k, s, p, dtype)


@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize("layout", ["chwn", "cnhw", "nchw"])
@pytest.mark.parametrize("k,s,p", GEOMETRIES)
def test_max_pool2d_positive(kernels_switch, dtype, layout, k, s, p):
    """max_pool2d_positive: max_pool2d's y and arg, bit for bit, and pos = x at arg > 0
    (NaN windows included: y is NaN there but arg, and pos, stay on the earlier maximum);
    pos None where the kernel does not run (float16, the kernels off)."""
    rng = numpy.random.default_rng(11)
    _check_positive(kernels_switch, _layout(_awkward(rng, (5, 3, 9, 8), dtype), layout), k, s, p, dtype)


@pytest.fixture(params=[2, 0], ids=["avx512", "scalar"])
def pool_isa(request, kernels_switch):
    """The float32 pooling forward's vector windows forced to a level (skipped where the
    CPU lacks it), the best level again afterwards."""
    kernels_switch(True)
    if hostkernels.pool_isa() is None:
        pytest.skip("no compiled kernels here")
    got = hostkernels.pool_isa(request.param)
    try:
        if got != request.param:
            pytest.skip(f"this CPU has no {hostkernels.POOL_ISA[request.param]} (the best it runs: "
                        f"{hostkernels.POOL_ISA[got]})")
        yield request.param
    finally:
        hostkernels.pool_isa(-1)


@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("k,s,p", GEOMETRIES)
def test_wide_batches(kernels_switch, pool_isa, dtype, k, s, p):
    """Batches of 16 images and more in CHWN planes: with AVX-512F the float32 forward runs
    16 images at a time in registers for each window wholly inside the input, and leaves the
    rest (here 37 = 2 * 16 + 5, and the windows that reach into the padding) to the scalar
    loops; then the scalar loops alone (what a CPU without AVX-512 runs), forced. Every
    result, pos and the ReLU-read forward included, the same bits as NumPy, with ties, signed
    zeros, infinities and NaN windows in the vector blocks."""
    rng = numpy.random.default_rng(5)
    x = _layout(_awkward(rng, (37, 2, 9, 8), dtype), "chwn")
    _check_same(kernels_switch, x, k, s, p, dtype)
    _check_positive(kernels_switch, x, k, s, p, dtype)
    assert hostkernels.pool_isa() == pool_isa


@needs_cxx
def test_pool_isa_is_the_best_the_cpu_runs(kernels_switch):
    """By default the pooling uses the widest vectors the CPU runs (the flags as Linux
    lists them), and pool_isa(-1) goes back to that after a forced level."""
    kernels_switch(True)
    level = hostkernels.pool_isa()
    if level is None or hostkernels._compiler() is None:
        pytest.skip("no compiled kernels here")
    try:
        flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        pytest.skip("no /proc/cpuinfo flags to compare with")
    import platform
    version = subprocess.run([*hostkernels._compiler(), "--version"], capture_output=True, text=True).stdout
    if platform.machine() not in ("x86_64", "AMD64") or "clang" in version.lower():
        assert level == 0       # the AVX-512 region is GCC's, on x86-64 only
        return
    assert level == (2 if "avx512f" in flags else 0)
    assert hostkernels.pool_isa(0) == 0
    assert hostkernels.pool_isa() == 0
    assert hostkernels.pool_isa(-1) == level


def _check_positive(kernels_switch, x, k, s, p, dtype):
    kernels_switch(False)
    y0, a0 = FP.max_pool2d(x, k, s, p)
    assert FP.max_pool2d_positive(x, k, s, p)[2] is None
    kernels_switch(True)
    y1, a1, pos = FP.max_pool2d_positive(x, k, s, p)
    numpy.testing.assert_array_equal(_bits(y1), _bits(y0))
    numpy.testing.assert_array_equal(a1, a0)
    if dtype == numpy.float16:
        assert pos is None
        return
    assert pos.dtype == numpy.uint8 and pos.strides == a1.strides
    assert numpy.isnan(y1).any()                  # the NaN windows are exercised
    numpy.testing.assert_array_equal(pos.astype(bool), x_at_arg_positive(x, a1, *FP.pool_args("test", k, s, p)))
    # through the ReLU (relu_input): the pooling of maximum(x, 0), x left as it is; with the
    # kernels off, x is made maximum(x, 0) in place first: the same results
    xr = numpy.maximum(x, 0)
    kernels_switch(False)
    yr0, ar0 = FP.max_pool2d(xr, k, s, p)
    x_off = x.copy(order="K")
    yr_off, ar_off, pos_off = FP.max_pool2d_positive(x_off, k, s, p, relu_input=True)
    assert pos_off is None
    numpy.testing.assert_array_equal(_bits(x_off), _bits(xr))
    numpy.testing.assert_array_equal(_bits(yr_off), _bits(yr0))
    kernels_switch(True)
    before = x.copy(order="K")
    yr1, ar1, posr = FP.max_pool2d_positive(x, k, s, p, relu_input=True)
    numpy.testing.assert_array_equal(_bits(x), _bits(before))
    numpy.testing.assert_array_equal(_bits(yr1), _bits(yr0))
    numpy.testing.assert_array_equal(ar1, ar0)
    numpy.testing.assert_array_equal(posr.astype(bool), x_at_arg_positive(xr, ar1, *FP.pool_args("test", k, s, p)))


@needs_cxx
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), c=st.integers(1, 4), h=st.integers(1, 11), w=st.integers(1, 11),
       kh=st.integers(1, 4), kw=st.integers(1, 4), sh=st.integers(1, 4), sw=st.integers(1, 4),
       layout=st.sampled_from(["chwn", "cnhw", "nchw"]), seed=st.integers(0, 2**32 - 1),
       normal=st.booleans())
def test_same_bits_as_numpy_any_geometry(n, c, h, w, kh, kw, sh, sw, layout, seed, normal):
    ph, pw = min(kh // 2, seed % 2), min(kw // 2, (seed >> 1) % 2)
    if h + 2 * ph < kh or w + 2 * pw < kw:
        return
    rng = numpy.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w), dtype=numpy.float32) if normal else \
        _awkward(rng, (n, c, h, w), numpy.float32)
    previous = hostkernels.enabled()
    try:
        _check_same(hostkernels.set_enabled, _layout(x, layout), (kh, kw), (sh, sw), (ph, pw),
                    numpy.float32)
    finally:
        hostkernels.set_enabled(previous)


@needs_cxx
def test_kernels_built_and_used_where_a_compiler_exists(kernels_switch):
    kernels_switch(True)
    assert hostkernels.library() is not None, hostkernels.status()
    assert hostkernels.status().startswith("on, built with ")
    t = numpy.arange(2 * 4 * 4 * 3, dtype=numpy.float32).reshape(2, 4, 4, 3)
    y, arg = hostkernels.max_pool(t, (2, 2), (2, 2), (0, 0), (2, 2))
    numpy.testing.assert_array_equal(y, t.reshape(2, 2, 2, 2, 2, 3).max(axis=(2, 4)))
    assert (arg == 3).all()        # increasing values: the last member of each window wins
    dx = hostkernels.max_pool_backward(numpy.ones_like(y), arg, t.shape, (2, 2), (2, 2), True, True)
    numpy.testing.assert_array_equal(dx, (t.reshape(2, 2, 2, 2, 2, 3) == y[:, :, None, :, None])
                                     .reshape(t.shape).astype(numpy.float32))


def test_switched_off_means_numpy(kernels_switch):
    kernels_switch(False)
    assert hostkernels.library() is None
    assert hostkernels.status().startswith("off")
    t = numpy.zeros((1, 2, 2, 1), numpy.float32)
    assert hostkernels.max_pool(t, (2, 2), (2, 2), (0, 0), (1, 1)) is None
    y, arg = FP.max_pool2d(numpy.arange(4, dtype=numpy.float32).reshape(1, 1, 2, 2), 2)
    assert y.item() == 3 and arg.item() == 3


def test_set_enabled_rejects_non_bool():
    with pytest.raises(TypeError, match="set_enabled: expected True or False, got 'no'"):
        hostkernels.set_enabled("no")


def _child(env_extra, tmp_path):
    code = ("import warnings, numpy; warnings.simplefilter('always')\n"
            "from gpunet import hostkernels; from gpunet.functional import pooling as FP\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    y, arg = FP.max_pool2d(numpy.arange(16, dtype=numpy.float32).reshape(1, 1, 4, 4), 2)\n"
            "print(y.ravel().tolist(), arg.ravel().tolist())\n"
            "print(hostkernels.status())\n"
            "print([str(x.message) for x in w])\n")
    env = {**os.environ, "GPUNET_HOST_CACHE": str(tmp_path / "cache"), **env_extra}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_environment_switch_off(tmp_path):
    out = _child({"GPUNET_HOST_KERNELS": "0"}, tmp_path)
    assert out[0] == "[5.0, 7.0, 13.0, 15.0] [3, 3, 3, 3]"
    assert out[1].startswith("off (GPUNET_HOST_KERNELS=0")
    assert out[2] == "[]"
    assert not (tmp_path / "cache").exists()


def test_failed_build_warns_once_and_falls_back(tmp_path):
    out = _child({"CXX": "false", "GPUNET_HOST_KERNELS": "1"}, tmp_path)
    assert out[0] == "[5.0, 7.0, 13.0, 15.0] [3, 3, 3, 3]"
    assert out[1].startswith("the build failed (") and out[1].endswith("NumPy only")
    assert out[2].count("gpunet.hostkernels: the build failed") == 1


def test_no_compiler_is_quiet(tmp_path):
    out = _child({"CXX": "no-such-compiler-gpunet", "GPUNET_HOST_KERNELS": "1"}, tmp_path)
    assert out[0] == "[5.0, 7.0, 13.0, 15.0] [3, 3, 3, 3]"
    assert out[1] == "no C++ compiler ($CXX, g++, c++, clang++): NumPy only"
    assert out[2] == "[]"


def test_a_cxx_that_is_no_command_line_warns_and_falls_back(tmp_path):
    """$CXX with an unbalanced quote: shlex.split raised ValueError ('No closing quotation')
    out of the first max_pool2d (on main the child fails). Now one warning, NumPy."""
    out = _child({"CXX": 'g++ "-O2', "GPUNET_HOST_KERNELS": "1"}, tmp_path)
    assert out[0] == "[5.0, 7.0, 13.0, 15.0] [3, 3, 3, 3]"
    assert out[1] == "$CXX is not a command line (No closing quotation: 'g++ \"-O2'): NumPy only"
    assert out[2] == f"[{('gpunet.hostkernels: ' + out[1])!r}]"


@needs_cxx
def test_cache_reused_across_processes(tmp_path):
    first = _child({"GPUNET_HOST_KERNELS": "1"}, tmp_path)
    libs = sorted(p.name for p in (tmp_path / "cache").iterdir())
    second = _child({"GPUNET_HOST_KERNELS": "1"}, tmp_path)
    assert first[1] == second[1] and first[1].startswith("on, built with ")
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == libs
    assert [n.endswith(".so") for n in libs] == [False, True]      # the library and its digest


@needs_cxx
@pytest.mark.parametrize("damage", ["truncated", "no digest", "other bytes"])
def test_a_damaged_library_in_the_cache_is_rebuilt(tmp_path, damage):
    """A cached library cut short (a full disk, a crash before its data reached the disk, a
    partial copy of the cache) killed every later process with SIGBUS when loaded (on main:
    returncode -7 at the first max_pool2d). The build records the library's SHA-256 next to
    it; a library that does not match it, or has none, is built again."""
    first = _child({"GPUNET_HOST_KERNELS": "1"}, tmp_path)
    lib = next((tmp_path / "cache").glob("host-*.so"))
    data = lib.read_bytes()
    if damage == "truncated":
        lib.write_bytes(data[:len(data) // 2])
    elif damage == "no digest":
        lib.with_suffix(".sha256").unlink()
    else:
        lib.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    second = _child({"GPUNET_HOST_KERNELS": "1"}, tmp_path)
    assert second == first and first[1].startswith("on, built with ") and first[2] == "[]"
    assert hashlib.sha256(lib.read_bytes()).hexdigest() == lib.with_suffix(".sha256").read_text()


# -- the optimizer updates ----------------------------------------------------------------
def _run_optimizer(make, dtype, steps=4, seed=0, shapes=((70000,), (33, 7), (6,))):
    """Parameters (one with decay=False, one large enough for NumPy's blocked passes) after
    ``steps`` updates with fixed awkward gradients; returns (parameters, state arrays)."""
    from gpunet import Parameter
    rng = numpy.random.default_rng(seed)
    params = []
    for k, shape in enumerate(shapes):
        data = rng.standard_normal(shape).astype(dtype)
        data.ravel()[:6] = [0.0, -0.0, 1e-30, -1e-30, 3.0, -3.0]
        params.append(Parameter(data, decay=k != 1))
    opt = make(params)
    for s in range(steps):
        for p in params:
            g = (rng.standard_normal(p.data.shape) * 10.0 ** rng.integers(-8, 3)).astype(dtype)
            g.ravel()[:4] = [0.0, -0.0, 1e-38, -5.0]
            p.grad = g
        opt.step()
    state = [numpy.array(v) for st in opt.state for v in st.values()]
    return [p.data.copy() for p in params], state


OPTIMIZERS = {
    "sgd": lambda ps: __import__("gpunet").optim.SGD(ps, lr=0.1),
    "sgd-momentum": lambda ps: __import__("gpunet").optim.SGD(ps, lr=0.1, momentum=0.9),
    "sgd-nesterov-l2-l1": lambda ps: __import__("gpunet").optim.SGD(ps, lr=0.03, momentum=0.8, nesterov=True,
                                                                  weight_decay=1e-3, l1=1e-4),
    "sgd-l1": lambda ps: __import__("gpunet").optim.SGD(ps, lr=0.05, l1=1e-3),
    "sgd-momentum-l2": lambda ps: __import__("gpunet").optim.SGD(ps, lr=0.05, momentum=0.5, weight_decay=0.01),
    "adam": lambda ps: __import__("gpunet").optim.Adam(ps, lr=1e-3),
    "adam-l2-l1": lambda ps: __import__("gpunet").optim.Adam(ps, lr=3e-3, betas=(0.8, 0.99), eps=1e-6,
                                                             weight_decay=1e-2, l1=1e-3),
    "adamw": lambda ps: __import__("gpunet").optim.AdamW(ps, lr=2e-3, weight_decay=0.05),
}


@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_updates_same_bits_as_numpy(kernels_switch, name, dtype):
    (w0, s0), (w1, s1) = _both(kernels_switch, lambda: _run_optimizer(OPTIMIZERS[name], dtype))
    for a, b in zip(w1 + s1, w0 + s0):
        numpy.testing.assert_array_equal(_bits(a), _bits(b))
    if not (dtype == numpy.float16 and name.startswith("adam")):   # float16 Adam: NaN, as PyTorch's
        assert all(numpy.isfinite(a).all() for a in w0)


@needs_cxx
def test_optimizer_kernels_used(kernels_switch, monkeypatch):
    calls = []
    for name in ("sgd", "sgd_many", "adam", "adam_many"):
        real = getattr(hostkernels, name)
        monkeypatch.setattr(hostkernels, name, lambda *a, _real=real, _n=name, **k: calls.append(_n) or _real(*a, **k))
    kernels_switch(True)
    _run_optimizer(OPTIMIZERS["sgd-momentum"], numpy.float32, steps=2)
    _run_optimizer(OPTIMIZERS["adam"], numpy.float32, steps=2)
    # SGD: the first momentum step copies g in NumPy, the second is one call for the three
    # parameters; Adam: the first step (which creates the moments) one call per parameter,
    # the second one call for all three
    assert calls == ["sgd_many"] + ["adam"] * 3 + ["adam_many"]
    lib = hostkernels.library()
    w = numpy.ones(3, numpy.float32)
    assert hostkernels.sgd(w, numpy.full(3, 2.0, numpy.float32), None, 0.5, 0.0, 0.0, 0.0, 0) is True
    numpy.testing.assert_array_equal(w, [0.0, 0.0, 0.0])
    assert lib is not None
    # arrays that do not qualify go to NumPy: overlapping, strided, mixed dtypes, read-only
    assert not hostkernels.sgd(w, w, None, 0.5, 0.0, 0.0, 0.0, 0)
    assert not hostkernels.sgd(numpy.ones(6, numpy.float32)[::2], numpy.ones(3, numpy.float32), None,
                               0.5, 0.0, 0.0, 0.0, 0)
    assert not hostkernels.sgd(w, numpy.ones(3), None, 0.5, 0.0, 0.0, 0.0, 0)
    ro = numpy.ones(3, numpy.float32)
    ro.flags.writeable = False
    assert not hostkernels.sgd(ro, numpy.ones(3, numpy.float32), None, 0.5, 0.0, 0.0, 0.0, 0)


@needs_cxx
def test_sgd_many_refuses_before_updating_anything(kernels_switch):
    """sgd_many: every item checked before the call; one that does not qualify returns False
    with nothing updated (the items before it included), so the optimizer's own passes run
    for all."""
    kernels_switch(True)
    f32 = numpy.float32

    def fresh():
        return [numpy.full(4, 1.0, f32), numpy.full(4, 2.0, f32), numpy.zeros(4, f32)]

    w, g, b = fresh()
    assert hostkernels.sgd_many([(w, g, b, hostkernels.MOMENTUM)], 0.5, 0.5, 0.0, 0.0) is True
    numpy.testing.assert_array_equal(b, [2.0] * 4)          # b = 0.5 * 0 + 2
    numpy.testing.assert_array_equal(w, [0.0] * 4)          # w = 1 - 2 * 0.5
    ro = numpy.ones(4, f32)
    ro.flags.writeable = False
    wide = numpy.ones(8, f32)
    bad = {
        "overlapping w and g": lambda w, g, b: (wide[:4], wide[2:6], b, hostkernels.MOMENTUM),
        "overlapping g and buf": lambda w, g, b: (w, wide[:4], wide[3:7], hostkernels.MOMENTUM),
        "a strided gradient": lambda w, g, b: (w, wide[::2], b, hostkernels.MOMENTUM),
        "a read-only parameter": lambda w, g, b: (ro, g, b, hostkernels.MOMENTUM),
        "a float64 gradient": lambda w, g, b: (w, g.astype(numpy.float64), b, hostkernels.MOMENTUM),
        "another shape": lambda w, g, b: (w, g[:3], b, hostkernels.MOMENTUM),
        "MOMENTUM without a buffer": lambda w, g, b: (w, g, None, hostkernels.MOMENTUM),
        "a buffer without MOMENTUM": lambda w, g, b: (w, g, b, 0),
        "a float64 item after float32 ones": lambda w, g, b: (w.astype(numpy.float64), g.astype(numpy.float64),
                                                              b.astype(numpy.float64), hostkernels.MOMENTUM),
        "a list": lambda w, g, b: (w, [2.0] * 4, b, hostkernels.MOMENTUM),
    }
    for what, make in bad.items():
        good = fresh()
        before = [a.copy() for a in good]
        item = make(*fresh())
        assert hostkernels.sgd_many([(*good, hostkernels.MOMENTUM), item], 0.5, 0.5, 0.0, 0.0) is False, what
        for a, a0 in zip(good, before):
            numpy.testing.assert_array_equal(a, a0, err_msg=what)


@needs_cxx
def test_adam_many_refuses_before_updating_anything(kernels_switch):
    """adam_many: as sgd_many, every item checked before the call (parameter, gradient and
    both moments: dtype, shape, layout, writeable, no overlap)."""
    kernels_switch(True)
    f32 = numpy.float32

    def fresh():
        return [numpy.full(4, 1.0, f32), numpy.full(4, 2.0, f32), numpy.zeros(4, f32), numpy.zeros(4, f32)]

    w, g, m, v = fresh()
    assert hostkernels.adam_many([(w, g, m, v, 1.0, 0.5, 0.0, 0)], 0.5, 0.5, 0.0, 0.0) is True
    numpy.testing.assert_array_equal(m, [1.0] * 4)          # 0.5 * 0 + 2 * 0.5
    numpy.testing.assert_array_equal(v, [2.0] * 4)          # 0.5 * 0 + 4 * 0.5
    assert (w < 1.0).all()
    ro = numpy.zeros(4, f32)
    ro.flags.writeable = False
    wide = numpy.zeros(8, f32)
    bad = {
        "overlapping m and v": lambda w, g, m, v: (w, g, wide[:4], wide[2:6]),
        "overlapping w and g": lambda w, g, m, v: (wide[:4], wide[1:5], m, v),
        "a strided gradient": lambda w, g, m, v: (w, wide[::2], m, v),
        "a read-only moment": lambda w, g, m, v: (w, g, ro, v),
        "a float64 moment": lambda w, g, m, v: (w, g, m, v.astype(numpy.float64)),
        "another shape": lambda w, g, m, v: (w, g[:3], m, v),
        "a float64 item after float32 ones": lambda w, g, m, v: tuple(a.astype(numpy.float64) for a in (w, g, m, v)),
        "a list": lambda w, g, m, v: (w, [2.0] * 4, m, v),
    }
    for what, make in bad.items():
        good = fresh()
        before = [a.copy() for a in good]
        item = (*make(*fresh()), 1.0, 0.5, 0.0, 0)
        assert hostkernels.adam_many([(*good, 1.0, 0.5, 0.0, 0), item], 0.5, 0.5, 0.0, 0.0) is False, what
        for a, a0 in zip(good, before):
            numpy.testing.assert_array_equal(a, a0, err_msg=what)


@needs_cxx
@pytest.mark.parametrize("case", ["f-order grad", "bad shape", "one param without grad"])
def test_sgd_step_in_one_call_or_parameter_by_parameter(kernels_switch, case):
    """SGD.step on the CPU: one compiled call for all parameters when they qualify; a
    gradient it cannot take (F order) sends the whole step to the per-parameter path (the
    same bits as the kernels off), one that _check_step refuses raises as before with no
    parameter changed, and parameters without a gradient are left out of the call."""
    import gpunet
    from gpunet.layers.base import Parameter

    def run():
        rng = numpy.random.default_rng(7)
        ps = [Parameter(rng.standard_normal((5, 3)).astype(numpy.float32)),
              Parameter(rng.standard_normal(4).astype(numpy.float32), decay=False)]
        opt = gpunet.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01)
        for step in range(3):
            for p in ps:
                p.grad = rng.standard_normal(p.data.shape).astype(numpy.float32)
            if step == 2 and case == "f-order grad":
                ps[0].grad = numpy.asfortranarray(ps[0].grad)
            if step == 2 and case == "one param without grad":
                ps[1].grad = None
            if step == 2 and case == "bad shape":
                ps[1].grad = ps[1].grad[:3]
                before = [p.data.copy() for p in ps]
                with pytest.raises(ValueError, match=r"SGD: params\[1\] \(unnamed\) has data \(4,\) float32 "
                                                     r"but grad \(3,\) float32"):
                    opt.step()
                for p, b in zip(ps, before):
                    numpy.testing.assert_array_equal(p.data, b)
                assert opt.steps == [2, 2]
                continue
            opt.step()
        return [p.data.copy() for p in ps] + [numpy.array(st["momentum_buffer"]) for st in opt.state], opt.steps

    (r0, steps0), (r1, steps1) = _both(kernels_switch, run)
    for a, b in zip(r1, r0):
        numpy.testing.assert_array_equal(_bits(a), _bits(b))
    assert steps1 == steps0 == {"f-order grad": [3, 3], "bad shape": [2, 2], "one param without grad": [3, 2]}[case]


# -- ReLU's backward ----------------------------------------------------------------------
@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize("order", ["C", "F", "chwn", "strided", "mixed"])
def test_relu_backward_same_bits_as_numpy(kernels_switch, dtype, order):
    from gpunet.functional import activations as FA
    rng = numpy.random.default_rng(3)
    y = _awkward(rng, (6, 5, 4, 7), dtype)
    dy = _awkward(rng, (6, 5, 4, 7), dtype)
    if order == "F":
        y, dy = numpy.asfortranarray(y), numpy.asfortranarray(dy)
    elif order == "chwn":
        y, dy = _layout(y, "chwn"), _layout(dy, "chwn")
    elif order == "strided":
        y, dy = y[:, :, ::2], dy[:, :, ::2]
    elif order == "mixed":
        y = _layout(y, "chwn")
    r0, r1 = _both(kernels_switch, lambda: FA.relu_backward(dy, None, y))
    numpy.testing.assert_array_equal(_bits(r1), _bits(r0))
    assert r1.strides == r0.strides and r1.dtype == r0.dtype


@needs_cxx
def test_relu_kernel_used_only_where_it_applies(kernels_switch):
    kernels_switch(True)
    y = numpy.array([[-1.0, 0.0, 2.0], [numpy.nan, -0.0, 3.0]], numpy.float32)
    dy = numpy.array([[5.0, 6.0, 7.0], [8.0, 9.0, -numpy.inf]], numpy.float32)
    out = hostkernels.relu_mask_times(dy, y)
    numpy.testing.assert_array_equal(out, [[0.0, 0.0, 7.0], [0.0, 0.0, -numpy.inf]])
    assert hostkernels.relu_mask_times(dy, y.T.copy().T) is None           # different strides
    assert hostkernels.relu_mask_times(dy[:, ::2], y[:, ::2]) is None        # gaps
    assert hostkernels.relu_mask_times(dy.astype(numpy.float64), y) is None  # mixed dtypes
    both_f = hostkernels.relu_mask_times(dy.T.copy().T, y.T.copy().T)       # F order both
    numpy.testing.assert_array_equal(both_f, out)
    assert both_f.flags.f_contiguous


# -- Dense with a bias and a fused ReLU ---------------------------------------------------
def _dense_step(dtype, activation, bias, seed=5):
    from gpunet.layers import Dense
    rng = numpy.random.default_rng(seed)
    layer = Dense(7, 9, activation=activation, bias=bias).to(dtype=dtype)
    layer.weight.data[...] = _awkward(rng, (9, 7), dtype) * 0.5
    if bias:
        layer.bias.data[...] = _awkward(rng, (9,), dtype)
        layer.bias.data[:3] = [-0.0, 0.0, -0.0]
    x = _awkward(rng, (11, 7), dtype)
    x[:2] = 0.0                       # rows whose z is exactly the bias (signed zeros)
    x[2] = -0.0
    y = layer(x)
    dy = _awkward(rng, y.shape, dtype)
    dy[:, 0] = -0.0                   # a column of -0.0: its bias gradient is +0.0 in NumPy
    dx = layer.backward(dy)
    out = [y.copy(), dx, layer.weight.grad]
    return out + ([layer.bias.grad] if bias else [])


@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize("activation,bias", [("relu", True), ("relu", False), (None, True), ("tanh", True)])
def test_dense_same_bits_as_numpy(kernels_switch, dtype, activation, bias):
    r0, r1 = _both(kernels_switch, lambda: _dense_step(dtype, activation, bias))
    for a, b in zip(r1, r0):
        numpy.testing.assert_array_equal(_bits(a), _bits(b))


@needs_cxx
def test_dense_relu_kernels_used(kernels_switch, monkeypatch):
    calls = []
    for name in ("bias_relu", "relu_mask_colsum"):
        real = getattr(hostkernels, name)
        monkeypatch.setattr(hostkernels, name, lambda *a, _real=real, _n=name: calls.append(_n) or _real(*a))
    kernels_switch(True)
    _dense_step(numpy.float32, "relu", True)
    assert calls == ["bias_relu", "relu_mask_colsum"]
    z = numpy.array([[-1.0, -0.0, 2.0]], numpy.float32)
    assert hostkernels.bias_relu(z, numpy.array([0.5, 0.0, numpy.nan], numpy.float32))
    assert z.tolist()[0][:2] == [0.0, 0.0] and not numpy.signbit(z[0, 1]) and numpy.isnan(z[0, 2])
    assert not hostkernels.bias_relu(z, z[0])                                  # overlapping
    assert not hostkernels.bias_relu(numpy.asfortranarray(numpy.ones((2, 3), numpy.float32)),
                                     numpy.ones(3, numpy.float32))             # not C order
    g, db = hostkernels.relu_mask_colsum(numpy.full((2, 2), -0.0, numpy.float32),
                                         numpy.ones((2, 2), numpy.float32))
    assert not numpy.signbit(db).any() and numpy.signbit(g).all()


@needs_cxx
def test_non_native_byte_order_goes_to_numpy(kernels_switch):
    """'>f4' on a little-endian host (or '<f4' on a big-endian one) has the name float32
    but not the native layout: the kernels must not read it as native floats."""
    from gpunet.functional import activations as FA
    swapped = numpy.dtype(numpy.float32).newbyteorder()
    rng = numpy.random.default_rng(7)
    x = rng.standard_normal((2, 3, 4, 4)).astype(swapped)
    (y0, a0), (y1, a1) = _both(kernels_switch, lambda: FP.max_pool2d(x, 2))
    numpy.testing.assert_array_equal(y1, y0)
    numpy.testing.assert_array_equal(y1, x.astype(numpy.float32).reshape(2, 3, 2, 2, 2, 2).max(axis=(3, 5)))
    dy = rng.standard_normal((5, 6)).astype(swapped)
    yy = rng.standard_normal((5, 6)).astype(swapped)
    r0, r1 = _both(kernels_switch, lambda: FA.relu_backward(dy, None, yy))
    numpy.testing.assert_array_equal(r1, r0)
    assert hostkernels.relu_mask_times(dy, yy) is None
    w = numpy.ones(4, swapped)
    assert not hostkernels.sgd(w, numpy.ones(4, swapped), None, 0.5, 0.0, 0.0, 0.0, 0)


@pytest.mark.parametrize("kernels", ["0", "1"])
def test_max_pool_backward_refuses_shapes_that_do_not_match(tmp_path, kernels):
    """A dy larger than arg, or an x_shape too small for the windows, made the compiled
    backward write past dx ('free(): corrupted unsorted chunks', the process aborted, where
    NumPy raised a broadcasting error); a smaller dy gave numbers. Now a ValueError naming
    the function, with or without the kernels, and hostkernels.max_pool_backward itself
    declines planes its windows do not fit. In a child process: a heap overrun must not
    take the test run with it."""
    code = ("import numpy\n"
            "from gpunet import hostkernels\n"
            "from gpunet.functional import pooling as FP\n"
            "x = numpy.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(numpy.float32)\n"
            "y, arg = FP.max_pool2d(x, 2)\n"
            "for dy, shape in [(numpy.ones((2, 3, 40, 40), numpy.float32), x.shape),\n"
            "                  (numpy.ones((2, 3, 1, 1), numpy.float32), x.shape),\n"
            "                  (numpy.ones((1, 1, 4, 4), numpy.float32), x.shape),\n"
            "                  (numpy.ones_like(y), (2, 3, 2, 2)), (numpy.ones_like(y), (2, 3, 8, 7))]:\n"
            "    try:\n"
            "        FP.max_pool2d_backward(dy, arg, shape, 2)\n"
            "        print('no error')\n"
            "    except ValueError as e:\n"
            "        print(e)\n"
            "print(FP.max_pool2d_backward(numpy.ones_like(y), arg, x.shape, 2).sum())\n"
            "dy, arg = numpy.ones((6, 4, 4, 1), numpy.float32), numpy.zeros((6, 4, 4, 1), numpy.uint8)\n"
            "print([hostkernels.max_pool_backward(d, arg, p, (2, 2), (2, 2), True, False) is None\n"
            "       for d, p in [(dy, (6, 8, 8, 1)), (dy, (6, 7, 8, 1)), (dy, (6, 8, 7, 1)),\n"
            "                    (dy, (5, 8, 8, 1)), (dy, (6, 8, 8, 2)), (dy[:3], (6, 8, 8, 1))]])\n")
    env = {**os.environ, "GPUNET_HOST_CACHE": str(tmp_path / "cache"), "GPUNET_HOST_KERNELS": kernels}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert len(out) == 7, out
    for line in out[:3]:
        assert line.startswith("max_pool2d_backward: expected dy of arg's shape (2, 3, 4, 4)"), line
    assert out[3] == ("max_pool2d_backward: x_shape (2, 3, 2, 2) (padding (0, 0)) is too small for the "
                      "4x4 windows of kernel (2, 2), stride (2, 2); expected the forward's input shape")
    assert out[4].startswith("max_pool2d_backward: x_shape (2, 3, 8, 7) (padding (0, 0)) is too small")
    assert out[5] == "96.0"
    used = kernels == "1" and HAS_CXX
    assert out[6] == f"[{not used}, True, True, True, True, True]"


@needs_cxx
def test_odd_compilers_neither_crash_nor_hang(tmp_path):
    """A compiler (or $CXX wrapper) whose --version prints bytes that are not UTF-8, whose
    error messages are in another charset (gcc translates them into the locale's), or that
    hangs: the kernels are built (garbage is only hashed) or NumPy runs with one warning.
    On main the first two raised UnicodeDecodeError out of the first max_pool2d, and the
    last ones hung it (no time limit)."""
    real = hostkernels._compiler()
    scripts = {
        "garbage": f"if [ \"$1\" = --version ]; then printf '\\377\\376 gcc \\351\\n'; exit 0; fi\n"
                   f"exec {shlex.join(real)} \"$@\"\n",
        "latin1": "if [ \"$1\" = --version ]; then echo 'g++ 1.0'; exit 0; fi\n"
                  "printf 'erreur: \\351chec de la compilation\\n' >&2; exit 1\n",
        "hangs": "exec sleep 60\n",
        "hangs_building": "if [ \"$1\" = --version ]; then echo 'g++ 1.0'; exit 0; fi\nexec sleep 60\n",
    }
    for name, body in scripts.items():
        (tmp_path / name).write_text("#!/bin/sh\n" + body)
        (tmp_path / name).chmod(0o755)
    code = ("import warnings, numpy, time; warnings.simplefilter('always')\n"
            "from gpunet import hostkernels; from gpunet.functional import pooling as FP\n"
            "import os; hostkernels.VERSION_TIMEOUT = 2.0\n"
            "hostkernels.BUILD_TIMEOUT = float(os.environ['BUILD_TIMEOUT'])\n"
            "t = time.perf_counter()\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    y, arg = FP.max_pool2d(numpy.arange(16, dtype=numpy.float32).reshape(1, 1, 4, 4), 2)\n"
            "print(y.ravel().tolist(), arg.ravel().tolist())\n"
            "print(hostkernels.status())\n"
            "print(len(w), time.perf_counter() - t < 20)\n")
    out = {}
    for name in scripts:
        env = {**os.environ, "GPUNET_HOST_CACHE": str(tmp_path / "cache"), "GPUNET_HOST_KERNELS": "1",
               "CXX": str(tmp_path / name), "PYTHONUTF8": "1",
               # a real build (about 2.5 s here) gets time; the hanging ones are cut at 2 s
               "BUILD_TIMEOUT": "2.0" if name.startswith("hangs") else "120"}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, (name, r.stderr[-2000:])
        out[name] = r.stdout.splitlines()
        assert out[name][0] == "[5.0, 7.0, 13.0, 15.0] [3, 3, 3, 3]", (name, out[name])
    assert out["garbage"][1].startswith("on, built with ") and out["garbage"][2] == "0 True"
    assert out["latin1"][1] == "the build failed (erreur: \ufffdchec de la compilation): NumPy only"
    for name in ("hangs", "hangs_building"):
        assert out[name][1].startswith("the build failed (Command ") and "timed out after 2.0 seconds" in out[name][1]
        assert out[name][2] == "1 True"


@needs_cxx
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no os.fork here")
def test_a_fork_during_the_build_does_not_hang_the_child(tmp_path):
    """A process forked (multiprocessing's default on Linux) while another thread held the
    build lock got the lock held by a thread it does not have: its first kernel call waited
    for good (on main the child is killed by its alarm, -14). The child now starts with a
    new lock and builds, or finds, the library itself."""
    code = ("import os, signal, threading, numpy\n"
            "from gpunet import hostkernels; from gpunet.functional import pooling as FP\n"
            "held, release = threading.Event(), threading.Event()\n"
            "def builder():\n"
            "    with hostkernels._lock:          # as while a build is under way\n"
            "        held.set(); release.wait()\n"
            "t = threading.Thread(target=builder); t.start(); held.wait()\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            "    signal.alarm(15)\n"
            "    y, arg = FP.max_pool2d(numpy.arange(16, dtype=numpy.float32).reshape(1, 1, 4, 4), 2)\n"
            "    os._exit(0 if y.ravel().tolist() == [5.0, 7.0, 13.0, 15.0] and hostkernels.library() else 3)\n"
            "release.set(); t.join()\n"
            "print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n")
    env = {**os.environ, "GPUNET_HOST_CACHE": str(tmp_path / "cache"), "GPUNET_HOST_KERNELS": "1"}
    r = subprocess.run([sys.executable, "-W", "ignore::DeprecationWarning", "-c", code], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "0"


# -- memory that is not aligned for its dtype ---------------------------------------------
def _misaligned(a):
    """``a``'s values, C order, one byte past its dtype's alignment (NumPy allows such
    arrays: a view into a byte buffer, or a field of a packed record array)."""
    out = numpy.ndarray(a.shape, a.dtype, numpy.zeros(a.nbytes + 1, numpy.uint8), offset=1)
    out[...] = a
    assert not out.flags.aligned
    return out


# the float-pointer arguments of each kernel (arg, the uint8 one, has no alignment to keep)
_FLOAT_ARGS = {"max_pool": (0, 1), "max_pool_backward": (0, 6), "sgd": (0, 1, 2), "adam": (0, 1, 2, 3),
               "relu_mask_times": (0, 1, 2), "bias_relu": (0, 1), "relu_mask_colsum": (0, 1, 2, 3)}


@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_misaligned_arrays_never_reach_the_kernels(kernels_switch, monkeypatch, dtype):
    """A float read through an address that is not a multiple of its alignment is undefined
    behaviour in C++ (x86 forgives it in scalar code, not in every vector instruction);
    UBSan reported it in the compiled max pooling backward ('load of misaligned address')
    for a (1, 1, 1, 1) dy viewed from a packed record array: C-contiguous, so
    ascontiguousarray handed its address over as it was. The wrappers now copy such arrays
    (pooling) or leave them to NumPy (the rest); the results stay NumPy's bits."""
    kernels_switch(True)
    lib = hostkernels.library()
    item = numpy.dtype(dtype).itemsize
    seen = []
    for kind, positions in _FLOAT_ARGS.items():
        name = f"gpunet_{kind}_{'f32' if item == 4 else 'f64'}"

        def record(*args, _real=getattr(lib, name), _name=name, _pos=positions):
            seen.append((_name, [args[i] % item for i in _pos if args[i] is not None]))
            return _real(*args)

        monkeypatch.setattr(lib, name, record)
    from gpunet.functional import activations as FA
    rng = numpy.random.default_rng(9)
    x = _awkward(rng, (2, 3, 6, 5), dtype)
    (y0, a0), (y1, a1) = _both(kernels_switch, lambda: FP.max_pool2d(_misaligned(x), 3, 2, 1))
    numpy.testing.assert_array_equal(_bits(y1), _bits(y0))
    numpy.testing.assert_array_equal(a1, a0)
    for dy in (_misaligned(_awkward(rng, y0.shape, dtype)),
               numpy.zeros((1, 1, 1, 1), [("pad", numpy.uint8), ("v", dtype)])["v"]):
        shape = (1, 1, 2, 2) if dy.size == 1 else x.shape
        arg = a0 if dy.size > 1 else numpy.zeros((1, 1, 1, 1), numpy.uint8)
        d0, d1 = _both(kernels_switch, lambda: FP.max_pool2d_backward(dy, arg, shape, 3, 2, 1))
        numpy.testing.assert_array_equal(_bits(d1), _bits(d0))
    yy, dy = _misaligned(_awkward(rng, (7, 5), dtype)), _misaligned(_awkward(rng, (7, 5), dtype))
    r0, r1 = _both(kernels_switch, lambda: FA.relu_backward(dy, None, yy))
    numpy.testing.assert_array_equal(_bits(r1), _bits(r0))
    ok = numpy.ones((7, 5), dtype)
    hostkernels.relu_mask_colsum(dy, ok)
    hostkernels.relu_mask_colsum(ok, yy)
    hostkernels.bias_relu(ok.copy(), _misaligned(numpy.ones(5, dtype)))
    hostkernels.bias_relu(_misaligned(ok), numpy.ones(5, dtype))
    w, g = _misaligned(numpy.ones(9, dtype)), numpy.ones(9, dtype)
    hostkernels.sgd(w, g, None, 0.5, 0.0, 0.0, 0.0, 0)
    hostkernels.sgd(numpy.ones(9, dtype), _misaligned(g), None, 0.5, 0.0, 0.0, 0.0, 0)
    hostkernels.adam(numpy.ones(9, dtype), g, numpy.ones(9, dtype), _misaligned(g), 0.9, 0.99, 1.0, 1e-8,
                     0.1, 0.0, 0.0, 0)
    assert [k for k, _ in seen if "max_pool" in k], seen          # the pooling kernels ran (on copies)
    assert all(off == 0 for _, offs in seen for off in offs), seen


@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("out_features", [1, 2, 5])
def test_dense_relu_bias_grad_same_bits_for_any_width(kernels_switch, dtype, out_features):
    """Dense(..., out_features=1, activation='relu'): NumPy's dy.sum(axis=0) over a
    (batch, 1) column is a contiguous sum, done pairwise (8 partial sums), where the
    compiled relu_mask_colsum adds row after row: the bias gradient differed (float32,
    batch 1000: -6198.2295 against -6198.2456; float64 from batch 8 on). One column now
    takes the NumPy passes; wider layers keep the kernel (NumPy sums row by row there)."""
    from gpunet.layers import Dense

    def step(batch):
        rng = numpy.random.default_rng(batch)
        layer = Dense(7, out_features, activation="relu").to(dtype=dtype)
        layer.weight.data[...] = rng.standard_normal(layer.weight.data.shape)
        layer.bias.data[...] = rng.standard_normal(layer.bias.data.shape)
        y = layer(rng.standard_normal((batch, 7)).astype(dtype))
        layer.backward((rng.standard_normal(y.shape) * 1e3 + 1).astype(dtype))
        return [y, layer.weight.grad, layer.bias.grad]
    for batch in (1, 8, 9, 100, 1000, 4097):
        r0, r1 = _both(kernels_switch, lambda: step(batch))
        for a, b in zip(r1, r0):
            numpy.testing.assert_array_equal(_bits(a), _bits(b))
    kernels_switch(True)
    y = numpy.ones((100, out_features), dtype)
    assert (hostkernels.relu_mask_colsum(y, y) is None) == (out_features == 1)


@needs_cxx
def test_a_cache_shared_with_another_machine_holds_a_library_for_each(tmp_path):
    """A cache shared by hosts of two machine types (an NFS home seen from x86-64 and
    aarch64 nodes) whose compilers print the same version: the second host found the
    first one's library under the same name and could not load it ('the build failed
    (...: ELF file ... )': NumPy in every process there). Simulated: a first process that
    takes itself for another machine builds, the library is marked as that machine's
    (ELF e_machine) with its digest to match, then this host's process runs."""
    import platform
    other = "aarch64" if platform.machine() != "aarch64" else "x86_64"
    code = (f"import platform; platform.machine = lambda: {other!r}\n"
            "from gpunet import hostkernels; print(hostkernels.status())\n")
    env = {**os.environ, "GPUNET_HOST_CACHE": str(tmp_path / "cache"), "GPUNET_HOST_KERNELS": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("on, built with "), r.stderr
    (lib,) = (tmp_path / "cache").glob("host-*.so")
    data = bytearray(lib.read_bytes())
    if data[:4] == b"\x7fELF" and data[5] == 1:             # little-endian ELF: e_machine at 18
        data[18:20] = (183 if other == "aarch64" else 62).to_bytes(2, "little")
        lib.write_bytes(bytes(data))
        lib.with_suffix(".sha256").write_text(hashlib.sha256(bytes(data)).hexdigest())
    out = _child({"GPUNET_HOST_KERNELS": "1"}, tmp_path)
    assert out[0] == "[5.0, 7.0, 13.0, 15.0] [3, 3, 3, 3]"
    assert out[1].startswith("on, built with ") and out[2] == "[]", out
    assert len(list((tmp_path / "cache").glob("host-*.so"))) == 2


# -- ReLU's forward -----------------------------------------------------------------------
@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize("order", ["C", "F", "chwn", "strided"])
@pytest.mark.parametrize("inplace", [False, True])
def test_relu_same_bits_as_numpy(kernels_switch, dtype, order, inplace):
    from gpunet.functional import activations as FA
    x0 = _awkward(numpy.random.default_rng(11), (6, 5, 4, 7), dtype)
    x0[0, 0, 0, :3] = [-0.0, 0.0, -0.0]

    def run():
        x = {"C": x0.copy(), "F": numpy.asfortranarray(x0), "chwn": _layout(x0, "chwn"),
             "strided": x0.copy()[:, :, ::2]}[order]
        y = FA.relu(x, inplace=inplace)
        assert (y is x) == inplace
        return y
    r0, r1 = _both(kernels_switch, run)
    numpy.testing.assert_array_equal(_bits(r1), _bits(r0))
    assert r1.strides == r0.strides and r1.dtype == r0.dtype


@needs_cxx
def test_relu_kernel_used_by_relu_and_conv(kernels_switch, monkeypatch):
    from gpunet.functional import activations as FA, conv as FC
    calls = []
    real = hostkernels.relu
    monkeypatch.setattr(hostkernels, "relu", lambda *a, **k: calls.append(a[0].shape) or real(*a, **k))
    kernels_switch(True)
    x = numpy.array([[-1.0, -0.0, numpy.nan, 2.0]], numpy.float32)
    y = FA.relu(x)
    assert calls == [(1, 4)] and y is not x
    assert y[0, :2].tolist() == [0.0, 0.0] and not numpy.signbit(y[0, 1]) and numpy.isnan(y[0, 2])
    rng = numpy.random.default_rng(0)
    xs = rng.standard_normal((2, 3, 9, 9)).astype(numpy.float32)     # whole-batch rows (81 > 48)
    w = rng.standard_normal((4, 3, 3, 3)).astype(numpy.float32)
    y1 = FC.conv2d(xs, w, None, 1, 1, activation="relu")
    assert calls[-1] == (2, 4, 9, 9)
    kernels_switch(False)
    numpy.testing.assert_array_equal(_bits(FC.conv2d(xs, w, None, 1, 1, activation="relu")), _bits(y1))
    ro = numpy.ones((2, 2), numpy.float32)
    ro.flags.writeable = False
    kernels_switch(True)
    assert real(ro, inplace=True) is None and real(ro) is not None


@needs_cxx
@pytest.mark.parametrize("base", ["SGD", "Adam"])
def test_subclass_regularization_is_not_bypassed(kernels_switch, base):
    """A subclass's own ``_regularize`` keeps the NumPy passes that call it: the kernels
    would compute the library's L2/L1 instead."""
    from gpunet import optim

    class Shifted(getattr(optim, base)):
        @staticmethod
        def _regularize(xp, w, g, s, t, weight_decay, l1):
            xp.add(g, 0.5, out=s)           # a gradient shifted by 0.5, whatever the decay
            return s

    make = lambda ps: Shifted(ps, lr=0.1, weight_decay=1e-3)   # noqa: E731
    (w0, s0), (w1, s1) = _both(kernels_switch, lambda: _run_optimizer(make, numpy.float32, steps=2))
    for a, b in zip(w1 + s1, w0 + s0):
        numpy.testing.assert_array_equal(_bits(a), _bits(b))


# -- Conv2D(relu) then MaxPool2D in a Sequential: the ReLU's mask in the pooling's pass ----
def _conv_pool_model(dtype, size, pool, seed=7):
    """A CNN whose two Conv2D(relu) -> MaxPool2D pairs a Sequential fuses; ``size``: the
    images' side (28: whole-batch rows, CHWN; 6: the per-image path, NCHW)."""
    from gpunet.layers import Conv2D, Dense, Flatten, MaxPool2D, Sequential
    rng = numpy.random.default_rng(seed)
    k, st_, pd = pool
    m = Sequential(Conv2D(2, 4, 3, padding=1, activation="relu"), MaxPool2D(k, st_, pd),
                   Conv2D(4, 5, 3, padding=1, activation="relu"), MaxPool2D(k, st_, pd), Flatten())
    m.to(dtype=dtype)
    x = _awkward(rng, (3, 2, size, size), dtype)
    x[numpy.isnan(x)] = 1.0                  # NaN only where the test puts it
    for prm in m.parameters():
        prm.data[...] = rng.integers(-2, 3, prm.data.shape).astype(dtype) * 0.5
    out = m(x)
    m.append(Dense(out.shape[1], 3).to(dtype=dtype))
    m[-1].weight.data[...] = rng.standard_normal((3, out.shape[1])).astype(dtype)
    return m, x, rng


def _conv_pool_grads(dtype, size, pool, seed=7, dy_values=None):
    m, x, rng = _conv_pool_model(dtype, size, pool, seed)
    m[0].input_grad = True
    out = m(x)
    dy = _awkward(rng, out.shape, dtype) if dy_values is None else dy_values(rng, out.shape, dtype)
    dx = m.backward(dy)
    return [dx] + [prm.grad for prm in m.parameters()]


POOLS = [(2, None, 0), (3, 2, 0), (2, None, 1), (3, 3, 0)]


@needs_cxx
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64, numpy.float16])
@pytest.mark.parametrize("size", [28, 6, 9])
@pytest.mark.parametrize("pool", POOLS)
def test_conv_relu_pool_backward_same_bits(kernels_switch, monkeypatch, dtype, size, pool):
    """Sequential's fused Conv2D(relu) -> MaxPool2D backward: the bits of the two layers'
    backwards one after the other (the pair table emptied), and of NumPy (kernels off);
    the fused kernel runs for every pair it covers (no padding, float32/float64)."""
    from gpunet.layers import base
    if size == 6 and pool[0] == 3:
        size = 9                             # 6 -> 2 after a 3x3 stride-2 pool: too small
    masked, from_pos, relu_read = [], [], []
    real = hostkernels.max_pool_backward
    real_fwd = hostkernels.max_pool

    def spy_fwd(*a, **k):
        out = real_fwd(*a, **k)
        relu_read.append(bool(k.get("relu")) and out is not None)
        return out
    monkeypatch.setattr(hostkernels, "max_pool", spy_fwd)

    def spy(*a, **k):
        out = real(*a, **k)
        masked.append((k.get("mask") is not None or k.get("positive") is not None) and out is not None)
        if out is not None and k.get("positive") is not None:
            from_pos.append(True)
        return out
    monkeypatch.setattr(hostkernels, "max_pool_backward", spy)
    kernels_switch(True)
    fused = _conv_pool_grads(dtype, size, pool)
    covered = pool[2] == 0 and dtype != numpy.float16
    assert sum(masked) == (2 if covered else 0), masked
    # the forward pooled through the ReLU (the convolution left it) wherever the kernel runs
    assert sum(relu_read) == (0 if dtype == numpy.float16 else 2 * 2), relu_read   # two forwards
    # disjoint windows read the forward's one byte per window (pos), overlapping ones x
    assert len(from_pos) == (2 if covered and pool[1] in (None, pool[0]) else 0), from_pos
    numpy_ref = _both(kernels_switch, lambda: _conv_pool_grads(dtype, size, pool))[0]
    monkeypatch.setattr(base, "PAIRED_BACKWARD", {})
    monkeypatch.setattr(base, "PAIRED_FORWARD", {})
    masked.clear()
    relu_read.clear()
    kernels_switch(True)
    unfused = _conv_pool_grads(dtype, size, pool)
    assert not any(masked) and not any(relu_read)
    for a, b, c in zip(fused, unfused, numpy_ref):
        numpy.testing.assert_array_equal(_bits(a), _bits(b))
        numpy.testing.assert_array_equal(_bits(a), _bits(c))


@needs_cxx
def test_conv_relu_pool_fusion_only_where_the_mask_is_the_relus(kernels_switch, monkeypatch):
    """No fusion (and the same gradients) for a Conv2D without ReLU, a subclass of either
    layer, or a pooling whose input is not the convolution's output; MaxPool2D.backward
    called on its own returns the unmasked dx."""
    from gpunet.layers import Conv2D, MaxPool2D, Sequential, pooling as LP
    kernels_switch(True)
    calls = []
    real = LP._conv_relu_backward
    monkeypatch.setattr(hostkernels, "max_pool_backward",
                        lambda *a, _r=hostkernels.max_pool_backward, **k:
                        calls.append(k.get("mask") is not None) or _r(*a, **k))
    rng = numpy.random.default_rng(2)
    x = rng.standard_normal((4, 1, 8, 8)).astype(numpy.float32)

    class MyPool(MaxPool2D):
        pass

    class MyConv(Conv2D):
        pass

    for conv_cls, act, pool_cls in [(Conv2D, None, MaxPool2D), (Conv2D, "tanh", MaxPool2D),
                                    (MyConv, "relu", MaxPool2D), (Conv2D, "relu", MyPool)]:
        m = Sequential(conv_cls(1, 2, 3, padding=1, activation=act), pool_cls(2))
        out = m(x)
        calls.clear()
        m.backward(numpy.ones_like(out))
        assert calls == [False], (conv_cls, act, pool_cls, calls)
    # the pooling ran on something else than the convolution's output since
    conv, pool = Conv2D(1, 2, 3, padding=1, activation="relu"), MaxPool2D(2)
    h = conv(x)
    pool(h.copy())
    assert real(conv, pool, numpy.ones((4, 2, 4, 4), numpy.float32)) is NotImplemented
    # on its own, the pooling's backward is dy routed to the window maxima, unmasked
    z = numpy.zeros((1, 1, 2, 2), numpy.float32)
    pool = MaxPool2D(2)
    pool(z)
    numpy.testing.assert_array_equal(pool.backward(numpy.full((1, 1, 1, 1), 3.0, numpy.float32)),
                                     [[[[3.0, 0.0], [0.0, 0.0]]]])


@needs_cxx
def test_conv_relu_pool_fused_errors_name_the_layer(kernels_switch):
    """A wrong dy through the fused pair raises as the pooling's own backward does, and
    leaves nothing set: the next backward runs (fused) and gives the unfused bits."""
    from gpunet.layers import Conv2D, MaxPool2D, Sequential
    kernels_switch(True)
    rng = numpy.random.default_rng(4)
    x = rng.standard_normal((4, 1, 8, 8)).astype(numpy.float32)
    m = Sequential(Conv2D(1, 2, 3, padding=1, activation="relu"), MaxPool2D(2))
    out = m(x)
    with pytest.raises(ValueError, match=r"MaxPool2D\.backward: expected dy of shape \(4, 2, 4, 4\)"):
        m.backward(numpy.ones((4, 2, 4, 3), numpy.float32))
    with pytest.raises(ValueError, match="MaxPool2D.backward: expected dy of dtype float32"):
        m.backward(numpy.ones(out.shape, numpy.float64))
    assert not m[1]._mask_relu and m[1]._masked is None and m[0]._dy_masked is None
    dy = rng.standard_normal(out.shape).astype(numpy.float32)
    m.backward(dy)
    g = m[0].weight.grad.copy()
    m.zero_grad()
    m[0].backward(m[1].backward(dy))             # the two backwards one after the other
    numpy.testing.assert_array_equal(m[0].weight.grad, g)


@needs_cxx
def test_sgd_kernel_takes_every_parameter_of_a_cnn(kernels_switch, monkeypatch):
    """A Conv2D's weight gradient comes out C-contiguous (not a view beside the bias column
    of the GEMM that gives both), so the optimizer's compiled update takes it too: each
    step after the first (which copies g into the momentum buffer) runs every parameter
    through the kernel, in one call."""
    from gpunet import optim
    from gpunet.layers import Conv2D, Flatten, MaxPool2D, Sequential
    from gpunet.losses import SoftmaxCrossEntropy
    kernels_switch(True)
    rng = numpy.random.default_rng(6)
    m = Sequential(Conv2D(1, 4, 3, padding=1, activation="relu"), MaxPool2D(2),
                   Conv2D(4, 6, 3, padding=1, activation="relu"), MaxPool2D(2), Flatten())
    x = rng.standard_normal((8, 1, 28, 28)).astype(numpy.float32)
    opt = optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    taken = []
    real = hostkernels.sgd_many
    monkeypatch.setattr(hostkernels, "sgd_many", lambda items, *a: taken.append((len(items), real(items, *a)))
                        or taken[-1][1])
    loss = SoftmaxCrossEntropy()
    for _ in range(3):
        m.zero_grad()
        out = m(x)
        loss(out, rng.integers(0, out.shape[1], 8))
        m.backward(loss.backward())
        assert all(p.grad.flags.c_contiguous for p in m.parameters())
        opt.step()
    assert taken == [(len(m.parameters()), True)] * 2, taken


@needs_cxx
@pytest.mark.skipif(__import__("shutil").which("nm") is None, reason="no nm (binutils) to list the library's symbols")
def test_kernel_bodies_are_inlined_into_their_clones(kernels_switch):
    """With GCC on x86-64 each entry point has AVX-512/AVX2/baseline clones; a kernel body
    left as a function of its own is called from every clone in its one baseline (SSE2)
    build. Max pooling's backward was: 0.16 ms on a (16, 28, 28, 64) float32 plane set, 0.10
    once inlined. No function of the kernels' namespaces may remain in the library (the
    float32 pooling's ``gpunet_avx512`` window functions are functions of their own, compiled
    for AVX-512 by their ``#pragma GCC target`` region, not the baseline; the thread team's,
    namespace ``gpunet_threads``, hold no kernel body: they call the entry points' clones)."""
    kernels_switch(True)
    lib = hostkernels.library()
    assert lib is not None
    syms = subprocess.run(["nm", "-C", lib._name], capture_output=True, text=True, check=True).stdout
    if ".avx512f" not in syms:
        pytest.skip("no target_clones in this build (not GCC on x86-64): nothing to check")
    bodies = [line for line in syms.splitlines()
              if " t " in line.lower() and ("(anonymous namespace)" in line or "gpunet_host::" in line)]
    assert not bodies, bodies


@needs_cxx
def test_update_addresses_follow_the_arrays(kernels_switch):
    """The optimizer kernels remember the data address of the arrays they write (parameter,
    state) while those live: a reassigned ``p.data`` is written at its own address, a dead
    array's entry goes away, and a gradient that overlaps the parameter still sends the
    update to NumPy (which the kernel's unaliased loop would get wrong)."""
    import gc
    kernels_switch(True)
    w = numpy.ones(1000, numpy.float32)
    g = numpy.full(1000, 2.0, numpy.float32)
    assert hostkernels.sgd(w, g, None, 0.5, 0.0, 0.0, 0.0, 0)
    assert (w == 0.0).all() and id(w) in hostkernels._ADDRESSES
    w2 = numpy.ones(1000, numpy.float32)          # a new parameter array (p.data = ...)
    assert hostkernels.sgd(w2, g, None, 0.25, 0.0, 0.0, 0.0, 0)
    assert (w2 == 0.5).all() and (w == 0.0).all()
    key = id(w2)
    del w2
    gc.collect()
    assert key not in hostkernels._ADDRESSES
    with pytest.raises(ValueError, match="resize"):     # the buffer of a remembered array stays put
        w.resize(2000, refcheck=False)
    both = numpy.ones(2000, numpy.float32)
    assert not hostkernels.sgd(both[:1000], both[500:1500], None, 0.5, 0.0, 0.0, 0.0, 0)
    assert not hostkernels.sgd(w, g, w, 0.5, 0.9, 0.0, 0.0, hostkernels.MOMENTUM)   # buf is w



@needs_cxx
def test_conv_relu_pool_forward_fusion_is_not_seen(kernels_switch, monkeypatch):
    """Sequential's fused Conv2D(relu) -> MaxPool2D forward: a wrapper recording the
    convolution's output (an instance-level forward) disarms it, so the recorded output is
    the ReLU's; a pooling that refuses its input leaves the convolution's output through the
    ReLU (as it would have been) and a later forward of the convolution alone is not left
    armed; eval mode and float16 are not fused (the ReLU is in the output there)."""
    from gpunet.layers import Conv2D, MaxPool2D, Sequential
    kernels_switch(True)
    rng = numpy.random.default_rng(8)
    x = rng.standard_normal((4, 1, 9, 9)).astype(numpy.float32)
    m = Sequential(Conv2D(1, 3, 3, padding=1, activation="relu"), MaxPool2D(2))
    seen = []
    conv_forward = m[0].forward
    m[0].forward = lambda h: seen.append(conv_forward(h)) or seen[-1]
    y_wrapped = m(x)
    assert (seen[0] >= 0).all() and (seen[0] == 0).any()
    del m[0].forward
    y = m(x)
    numpy.testing.assert_array_equal(_bits(y), _bits(y_wrapped))
    assert (m[0]._y < 0).any()                      # fused: the conv's array kept z
    # a pooling that refuses its input (a 5x5 window on a 4x4 output)
    m2 = Sequential(Conv2D(1, 3, 3, activation="relu"), MaxPool2D(8))
    with pytest.raises(ValueError, match="MaxPool2D"):
        m2(rng.standard_normal((2, 1, 6, 6)).astype(numpy.float32))
    assert (m2[0]._y >= 0).all() and m2[0]._relu_pending is None
    assert (m2[0](rng.standard_normal((2, 1, 6, 6)).astype(numpy.float32)) >= 0).all()
    # refused by the convolution itself: nothing stays armed for its next forward
    with pytest.raises(ValueError, match="Conv2D"):
        m(rng.standard_normal((4, 2, 9, 9)).astype(numpy.float32))
    assert (m[0](x) >= 0).all()
    # eval mode and float16: the ReLU in the convolution's output, no pooling through it
    relu_read = []
    real = hostkernels.max_pool
    monkeypatch.setattr(hostkernels, "max_pool",
                        lambda *a, **k: relu_read.append(bool(k.get("relu"))) or real(*a, **k))
    m.eval()
    m(x)
    m.train()
    m16 = Sequential(Conv2D(1, 3, 3, padding=1, activation="relu"), MaxPool2D(2)).to(dtype=numpy.float16)
    m16(x.astype(numpy.float16))
    assert (m16[0]._y >= 0).all()
    assert not any(relu_read)
    m(x)
    assert relu_read[-1]                            # and armed again in training


@needs_cxx
def test_positive_mask_only_for_disjoint_windows(kernels_switch):
    """The one-byte-per-window mask stands for x > 0 only where each input element is in at
    most one window: for overlapping windows the kernel refuses it (None, then the caller
    masks from x), whatever the caller says about the windows."""
    kernels_switch(True)
    rng = numpy.random.default_rng(9)
    t = rng.standard_normal((2, 6, 6, 3)).astype(numpy.float32)
    y, arg, pos = hostkernels.max_pool(t, (3, 3), (2, 2), (0, 0), (2, 2), positive=True)
    dy = numpy.ones_like(y)
    for claimed in (True, False):
        assert hostkernels.max_pool_backward(dy, arg, t.shape, (3, 3), (2, 2), claimed, False,
                                             positive=pos) is None
    y, arg, pos = hostkernels.max_pool(t, (2, 2), (2, 2), (0, 0), (3, 3), positive=True)
    assert hostkernels.max_pool_backward(numpy.ones_like(y), arg, t.shape, (2, 2), (2, 2), True, True,
                                         positive=pos) is not None


# ---- the thread team (threads.cpp): passes split over threads, OpenBLAS's jobs on them ----

@pytest.fixture
def pass_threads(request, kernels_switch):
    """The pooling passes split over ``request.param`` threads (the kernels on), OpenBLAS's
    count again afterwards."""
    kernels_switch(True)
    if hostkernels.pass_threads() is None:
        pytest.skip("no compiled kernels here")
    assert hostkernels.pass_threads(request.param) == request.param
    try:
        yield request.param
    finally:
        hostkernels.pass_threads(0)


@needs_cxx
@pytest.mark.parametrize("pass_threads", [2, 3, 5], indirect=True)
@pytest.mark.parametrize("dtype,k,s,p", [(numpy.float32, *g) for g in GEOMETRIES]
                         + [(numpy.float64, *GEOMETRIES[0]), (numpy.float64, *GEOMETRIES[2])])
def test_split_passes_same_bits(kernels_switch, pass_threads, dtype, k, s, p):
    """Planes large enough to be split (9 channels of 20 x 20 x 64: over 256 KB), over 2, 3
    and 5 threads (channel chunks of uneven sizes): forward, pos, the ReLU-read forward,
    backward with and without the fused mask, the same bits as NumPy."""
    rng = numpy.random.default_rng(7)
    x = _layout(_awkward(rng, (64, 9, 20, 20), dtype), "chwn")
    assert x.nbytes >= 1 << 18
    splits = hostkernels.helpers()[2]
    _check_same(kernels_switch, x, k, s, p, dtype)
    _check_positive(kernels_switch, x, k, s, p, dtype)
    assert hostkernels.pass_threads() == pass_threads
    assert hostkernels.helpers()[0] >= pass_threads - 1 and hostkernels.helpers()[2] > splits


@needs_cxx
@pytest.mark.parametrize("pass_threads", [2, 3], indirect=True)
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_split_optimizer_updates_same_bits(kernels_switch, pass_threads, name, dtype):
    """SGD and Adam over parameters of more than 2^18 elements in all: one call, split over 2
    and 3 threads in blocks of 2^14 elements that straddle the parameters' ends (200003,
    231, 70001, 6 elements): the same bits as NumPy."""
    shapes = ((200003,), (33, 7), (70001,), (6,))
    run = lambda: _run_optimizer(OPTIMIZERS[name], dtype, steps=3, shapes=shapes)   # noqa: E731
    kernels_switch(False)
    w0, s0 = run()
    kernels_switch(True)
    splits = hostkernels.helpers()[2]
    w1, s1 = run()
    assert hostkernels.helpers()[2] > splits
    for a, b in zip(w1 + s1, w0 + s0):
        numpy.testing.assert_array_equal(_bits(a), _bits(b))


def _team_or_skip(kernels_switch):
    kernels_switch(True)
    if hostkernels.library() is None:
        pytest.skip("no compiled kernels here")
    if hostkernels.team() is None:
        pytest.skip("NumPy's BLAS here is not an OpenBLAS with pthreads and the threads callback")


@needs_cxx
@pytest.mark.parametrize("threads", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_team_runs_openblas_jobs_same_bits(kernels_switch, threads, dtype):
    """With the team, NumPy's matmuls (large enough for OpenBLAS to split: 2, 3, 4 jobs that
    wait on each other inside the GEMM) give the bits of OpenBLAS's own threads, and do run
    through the team; switched off, OpenBLAS's own threads run them again."""
    from gpunet import threads as T
    _team_or_skip(kernels_switch)
    rng = numpy.random.default_rng(3)
    a = rng.standard_normal((300, 700)).astype(dtype)
    b = rng.standard_normal((700, 500)).astype(dtype)
    with T.limit(threads):
        kernels_switch(False)
        assert hostkernels.team() is None
        ref = [a @ b, a.T.copy() @ a, b @ b.T]
        kernels_switch(True)
        assert hostkernels.team() is not None and hostkernels.pass_threads() == threads
        calls = hostkernels.helpers()[1]
        got = [a @ b, a.T.copy() @ a, b @ b.T]
        if threads > 1:
            assert hostkernels.helpers()[1] > calls
            assert hostkernels.helpers()[0] >= threads - 1
        kernels_switch(False)
        calls = hostkernels.helpers()[1]
        again = a @ b
        assert hostkernels.helpers()[1] == calls        # OpenBLAS's own threads
    for r, g in zip(ref, got):
        numpy.testing.assert_array_equal(g, r)
    numpy.testing.assert_array_equal(again, ref[0])


@needs_cxx
def test_team_shared_by_python_threads(kernels_switch):
    """Four Python threads at once (ctypes and NumPy release the GIL), each alternating
    matmuls and split pooling passes: one of them has the team at a time, the others run
    their passes alone and OpenBLAS's jobs on threads started for the call. Every result
    right, and none waits for good."""
    import threading
    _team_or_skip(kernels_switch)
    rng = numpy.random.default_rng(4)
    a = rng.standard_normal((256, 512)).astype(numpy.float32)
    x = _layout(rng.standard_normal((64, 16, 16, 16)).astype(numpy.float32), "chwn")
    ref_mm = a @ a.T
    kernels_switch(False)
    ref_pool = FP.max_pool2d(x, 2)
    kernels_switch(True)
    errors = []

    def work():
        try:
            for _ in range(30):
                numpy.testing.assert_array_equal(a @ a.T, ref_mm)
                y, arg = FP.max_pool2d(x, 2)
                numpy.testing.assert_array_equal(_bits(y), _bits(ref_pool[0]))
                numpy.testing.assert_array_equal(arg, ref_pool[1])
        except BaseException as e:      # noqa: BLE001 (reported by the main thread)
            errors.append(e)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a thread still waits after 120 s"
    assert not errors, errors[0]


_FORK_CHILD = """
import os, sys, numpy
from gpunet import hostkernels
from gpunet.functional import pooling as FP
a = numpy.random.default_rng(0).standard_normal((400, 600)).astype(numpy.float32)
x = numpy.random.default_rng(1).standard_normal((16, 8, 28, 28)).astype(numpy.float32)
ref, ref_pool = a @ a.T, FP.max_pool2d(x, 2)[0]          # the parent's team has helpers now
team = hostkernels.team()
pid = os.fork()
if pid == 0:                    # the child: a team of its own on first use
    ok = numpy.array_equal(a @ a.T, ref) and numpy.array_equal(FP.max_pool2d(x, 2)[0], ref_pool)
    os._exit(0 if ok else 3)
_, status = os.waitpid(pid, 0)
print(team, os.waitstatus_to_exitcode(status), numpy.array_equal(a @ a.T, ref))
"""


@needs_cxx
@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_team_after_fork(tmp_path):
    """A child forked after the team ran (its helpers are not copied) runs matmuls and split
    passes on a team of its own; the parent goes on with its own."""
    env = {**os.environ, "GPUNET_HOST_CACHE": str(hostkernels.cache_dir())}
    r = subprocess.run([sys.executable, "-c", _FORK_CHILD], capture_output=True, text=True, timeout=300,
                       env=env)
    assert r.returncode == 0, r.stderr
    team, child, parent = r.stdout.split()[-3:]
    assert (child, parent) == ("0", "True")


@needs_cxx
def test_team_environment_switch_off(tmp_path):
    """GPUNET_HOST_THREADS=0: NumPy's OpenBLAS keeps its own threads, the passes run on one,
    and the kernels are on all the same."""
    code = ("from gpunet import hostkernels as h; import numpy; a = numpy.ones((500, 500), numpy.float32);"
            " a @ a; print(h.library() is not None, h.team(), h.pass_threads(), h.helpers())")
    env = {**os.environ, "GPUNET_HOST_CACHE": str(hostkernels.cache_dir()), "GPUNET_HOST_THREADS": "0"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "None", "1", "(0,", "0,", "0)"]
