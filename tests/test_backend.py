"""Backend shim (DESIGN §2): module choice, device strings, the reasons CUDA is unavailable.

The CPU-only branches that depend on CuPy's state are exercised by setting the shim's lazy
import state (``_cupy``, ``_cupy_error``, ``_cupy_tried``) with ``monkeypatch``: that is
exactly the state ``_import_cupy`` leaves behind, so the code under test runs unchanged.
"""
import types

import numpy
import pytest

import gpunet
from gpunet import backend


# -- fakes standing in for CuPy where it is absent ---------------------------------------------
class _FakeDevice:
    def __init__(self, id):
        self.id = id


class _FakeCupyArray:
    """Looks like a CuPy array to the shim: its type lives in a ``cupy.*`` module and it has
    a ``.device.id``."""

    def __init__(self, device_id=0):
        self.device = _FakeDevice(device_id)
        self.shape = (2,)
        self.ndim = 1


_FakeCupyArray.__module__ = "cupy._core.core"


def _fake_cupy_module(device_count=1, count_error=None):
    def get_device_count():
        if count_error is not None:
            raise count_error
        return device_count

    runtime = types.SimpleNamespace(getDeviceCount=get_device_count)
    cuda = types.SimpleNamespace(runtime=runtime, is_available=lambda: device_count > 0)
    return types.SimpleNamespace(__name__="cupy", __version__="14.0.0-fake", cuda=cuda)


@pytest.fixture
def no_cupy(monkeypatch):
    """Simulate a machine where ``import cupy`` failed."""
    monkeypatch.setattr(backend, "_cupy", None)
    monkeypatch.setattr(backend, "_cupy_error", ModuleNotFoundError("No module named 'cupy'"))
    monkeypatch.setattr(backend, "_cupy_tried", True)


def _install_fake_cupy(monkeypatch, **kw):
    fake = _fake_cupy_module(**kw)
    monkeypatch.setattr(backend, "_cupy", fake)
    monkeypatch.setattr(backend, "_cupy_error", None)
    monkeypatch.setattr(backend, "_cupy_tried", True)
    return fake


# -- get_array_module ---------------------------------------------------------------------------
def test_get_array_module_numpy_scalars_none():
    a = numpy.zeros(3, numpy.float32)
    assert backend.get_array_module(a) is numpy
    assert backend.get_array_module(numpy.float32(1.0)) is numpy
    assert backend.get_array_module(1.5, 2, None) is numpy
    assert backend.get_array_module() is numpy
    assert backend.get_array_module(None, a, 3.0) is numpy
    assert gpunet.get_array_module is backend.get_array_module


def test_get_array_module_on_fixture_backend(xp):
    a = xp.ones((2, 2), dtype=xp.float32)
    assert backend.get_array_module(a) is xp
    assert backend.get_array_module(None, a, 1.0) is xp


def test_get_array_module_fake_cupy(monkeypatch):
    fake = _install_fake_cupy(monkeypatch)
    assert backend.get_array_module(_FakeCupyArray(0)) is fake
    assert backend.get_array_module(None, _FakeCupyArray(1), 2.0) is fake
    assert backend.device_of(_FakeCupyArray(3)) == "cuda:3"
    assert backend.device_of(numpy.zeros(1)) == "cpu"


@pytest.mark.parametrize("order", ["numpy_first", "cupy_first"])
def test_mixing_numpy_and_cupy_raises_naming_both_devices(monkeypatch, order):
    _install_fake_cupy(monkeypatch)
    a = numpy.zeros(2)
    g = _FakeCupyArray(1)
    args = (a, g) if order == "numpy_first" else (g, a)
    with pytest.raises(TypeError) as e:
        backend.get_array_module(*args)
    msg = str(e.value)
    assert "cpu" in msg and "cuda:1" in msg


def test_mixing_real_numpy_and_cupy_raises():
    if not backend.cuda_available():
        pytest.skip("needs CuPy with a CUDA device (the fake-CuPy test covers the branch on CPU)")
    cp = backend.cupy_module()
    with pytest.raises(TypeError, match="cpu.*cuda:0|cuda:0.*cpu"):
        backend.get_array_module(numpy.zeros(2), cp.zeros(2))


# -- asking for CUDA where there is none -------------------------------------------------------
def test_to_device_cuda_without_cupy_names_the_extras(no_cupy):
    x = numpy.arange(3.0)
    for dev in ("cuda", "cuda:0"):
        with pytest.raises(RuntimeError) as e:
            gpunet.to_device(x, dev)
        msg = str(e.value)
        assert "gpunet[cuda12]" in msg and "gpunet[cuda13]" in msg
        assert "not installed" in msg


@pytest.mark.parametrize("kw,reason", [
    ({"device_count": 0}, "no CUDA device"),
    ({"count_error": RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")},
     "cannot reach a GPU"),
])
def test_to_device_cuda_installed_but_no_device(monkeypatch, kw, reason):
    _install_fake_cupy(monkeypatch, **kw)
    with pytest.raises(RuntimeError) as e:
        gpunet.to_device(numpy.arange(3.0), "cuda")
    msg = str(e.value)
    assert reason in msg
    assert "installed" in msg and "14.0.0-fake" in msg
    assert "gpunet[cuda12]" not in msg   # the extra is not the problem here


def test_cuda_index_beyond_visible_devices(monkeypatch):
    _install_fake_cupy(monkeypatch, device_count=1)
    with pytest.raises(RuntimeError, match="cuda:3"):
        backend.require_cuda(3)


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cuda:-1", "tpu:0"])
def test_unknown_device_string(bad):
    with pytest.raises(ValueError, match="unknown device"):
        gpunet.to_device(numpy.zeros(1), bad)


def test_device_must_be_a_string():
    with pytest.raises(TypeError):
        gpunet.to_device(numpy.zeros(1), 0)


# -- GPUNET_DEVICE / default_device ---------------------------------------------------------------
def test_default_device_cpu(monkeypatch):
    monkeypatch.setenv("GPUNET_DEVICE", "cpu")
    assert gpunet.default_device() == "cpu"
    monkeypatch.setenv("GPUNET_DEVICE", "  CPU ")
    assert gpunet.default_device() == "cpu"


def test_default_device_auto_without_cuda(monkeypatch, no_cupy):
    monkeypatch.setenv("GPUNET_DEVICE", "auto")
    assert gpunet.default_device() == "cpu"
    monkeypatch.delenv("GPUNET_DEVICE")
    assert gpunet.default_device() == "cpu"
    assert backend.resolve_device(None) == "cpu"
    assert backend.resolve_device("auto") == "cpu"


def test_default_device_auto_with_cuda(monkeypatch):
    _install_fake_cupy(monkeypatch, device_count=2)
    monkeypatch.delenv("GPUNET_DEVICE", raising=False)
    assert gpunet.default_device() == "cuda"


def test_default_device_auto_installed_without_device(monkeypatch):
    _install_fake_cupy(monkeypatch, device_count=0)
    monkeypatch.setenv("GPUNET_DEVICE", "auto")
    assert gpunet.default_device() == "cpu"


def test_default_device_cuda_without_cupy_raises(monkeypatch, no_cupy):
    monkeypatch.setenv("GPUNET_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match=r"gpunet\[cuda12\]"):
        gpunet.default_device()


def test_default_device_cuda_with_cuda(monkeypatch):
    _install_fake_cupy(monkeypatch, device_count=1)
    monkeypatch.setenv("GPUNET_DEVICE", "cuda")
    assert gpunet.default_device() == "cuda"


def test_default_device_garbage(monkeypatch):
    monkeypatch.setenv("GPUNET_DEVICE", "quantum")
    with pytest.raises(ValueError, match="quantum"):
        gpunet.default_device()


def test_default_device_cuda_index(monkeypatch):
    """``cuda:N`` is accepted (``cuda:1`` with two devices), and the error for an unknown
    value lists it among the accepted forms: message and accepted set agree."""
    _install_fake_cupy(monkeypatch, device_count=2)
    monkeypatch.setenv("GPUNET_DEVICE", " CUDA:1 ")
    assert gpunet.default_device() == "cuda:1"
    for bad in ("quantum", "cuda:x", "cudax", "cuda:-1", "cuda:"):
        monkeypatch.setenv("GPUNET_DEVICE", bad)
        with pytest.raises(ValueError) as e:
            gpunet.default_device()
        assert str(e.value) == (f"GPUNET_DEVICE={bad!r}: expected 'auto', 'cpu', 'cuda', "
                                "'cuda:N' (N a device index) or 'sim'")


# -- to_device / to_numpy ---------------------------------------------------------------------------
def test_to_numpy_roundtrip(xp, device):
    rng = numpy.random.default_rng(0)
    a = rng.standard_normal((3, 4)).astype(numpy.float32)
    x = gpunet.to_device(a, device)
    assert backend.get_array_module(x) is xp
    assert backend.device_of(x).split(":")[0] == device
    back = gpunet.to_numpy(x)
    assert isinstance(back, numpy.ndarray)
    assert back.dtype == numpy.float32
    numpy.testing.assert_array_equal(back, a)


def test_to_numpy_scalars_and_lists():
    assert gpunet.to_numpy(2.5).shape == ()
    assert float(gpunet.to_numpy(2.5)) == 2.5
    numpy.testing.assert_array_equal(gpunet.to_numpy([1, 2, 3]), numpy.array([1, 2, 3]))


def test_to_device_cpu_keeps_numpy_arrays():
    a = numpy.arange(4.0)
    assert gpunet.to_device(a, "cpu") is a


def test_to_device_gives_python_floats_torchs_float32_and_keeps_array_dtypes(xp, device):
    """As torch.tensor vs torch.from_numpy: Python floats (a float, a list of them, a list
    mixing ints and floats) become float32, the parameters' dtype and the DataLoader's; an
    array or a NumPy scalar keeps its dtype; Python ints are int64 and bools bool."""
    cases = [(1.5, numpy.float32, ()), ([0.5, 1.0], numpy.float32, (2,)),
             ([[1, 2.5], [3, 4]], numpy.float32, (2, 2)), ((0.25,), numpy.float32, (1,)),
             ([1, 2, 3], numpy.int64, (3,)), ([True, False], numpy.bool_, (2,)),
             (numpy.array([0.5, 1.0]), numpy.float64, (2,)), (numpy.float64(0.5), numpy.float64, ()),
             (numpy.arange(3, dtype=numpy.float16), numpy.float16, (3,))]
    for x, dtype, shape in cases:
        a = gpunet.to_device(x, device)
        assert backend.get_array_module(a) is xp
        assert a.dtype == dtype and a.shape == shape, (x, a.dtype, a.shape)
        numpy.testing.assert_array_equal(gpunet.to_numpy(a), numpy.asarray(x).astype(dtype))
    # the same dtype as a DataLoader's batches of the same lists
    xb = next(iter(gpunet.DataLoader([[0.5, 1.0], [2.0, 3.0]], batch_size=2)))
    assert xb.dtype == gpunet.to_device([[0.5, 1.0]], "cpu").dtype == numpy.float32


def test_to_device_list_of_floats_feeds_a_float32_model():
    model = gpunet.Dense(2, 1)
    assert model(gpunet.to_device([[0.5, 1.0]], "cpu")).dtype == numpy.float32


# -- the simulated CUDA device ("sim", DESIGN §12) ------------------------------------------------
needs_sim = pytest.mark.skipif(gpunet.sim.compiler() is None, reason="no C++ compiler: no sim device")


@needs_sim
def test_sim_device_strings_and_round_trip():
    from gpunet.sim import array as sp
    a = numpy.arange(6, dtype=numpy.float32).reshape(2, 3)
    x = gpunet.to_device(a, "sim")
    assert isinstance(x, sp.ndarray) and backend.device_of(x) == "sim"
    assert backend.get_array_module(x) is sp
    assert gpunet.to_device(x, " SIM ") is x
    assert backend.resolve_device("sim") == "sim"
    back = gpunet.to_numpy(x)
    assert isinstance(back, numpy.ndarray) and back.dtype == numpy.float32
    numpy.testing.assert_array_equal(back, a)
    numpy.testing.assert_array_equal(gpunet.to_device(x, "cpu"), a)


@needs_sim
def test_sim_default_device_from_environment(monkeypatch):
    monkeypatch.setenv("GPUNET_DEVICE", "sim")
    assert gpunet.default_device() == "sim"
    assert backend.resolve_device(None) == "sim"


def test_auto_never_picks_sim(monkeypatch, no_cupy):
    monkeypatch.setenv("GPUNET_DEVICE", "auto")
    assert gpunet.default_device() == "cpu"


@needs_sim
@pytest.mark.parametrize("order", ["numpy_first", "sim_first"])
def test_mixing_numpy_and_sim_raises_naming_both_devices(order):
    a, s = numpy.zeros(2), gpunet.to_device(numpy.zeros(2), "sim")
    with pytest.raises(TypeError, match="cpu.*sim|sim.*cpu"):
        backend.get_array_module(*((a, s) if order == "numpy_first" else (s, a)))


@needs_sim
def test_mixing_fake_cupy_and_sim_raises(monkeypatch):
    _install_fake_cupy(monkeypatch)
    with pytest.raises(TypeError, match="cuda:0.*sim"):
        backend.get_array_module(_FakeCupyArray(0), gpunet.to_device(numpy.zeros(2), "sim"))


def test_sim_without_a_compiler_says_so_in_one_line(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    assert gpunet.sim.compiler() is None
    for ask in (lambda: gpunet.to_device(numpy.zeros(1), "sim"),
                lambda: backend.resolve_device("sim"),
                lambda: gpunet.Dense(2, 2).to("sim")):
        with pytest.raises(RuntimeError) as e:
            ask()
        msg = str(e.value)
        assert "sim" in msg and "C++ compiler" in msg and "\n" not in msg
    monkeypatch.setenv("GPUNET_DEVICE", "sim")
    with pytest.raises(RuntimeError, match="C\\+\\+ compiler"):
        gpunet.default_device()


def test_cxx_names_the_compiler(monkeypatch, tmp_path):
    fake = tmp_path / "my-c++"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    assert gpunet.sim.compiler() == str(fake)


@needs_sim
def test_model_to_sim_and_back():
    gpunet.manual_seed(0)
    m = gpunet.Sequential(gpunet.Dense(4, 3, activation="relu"), gpunet.Dense(3, 2))
    ref = m(numpy.ones((5, 4), numpy.float32))
    m.to("sim")
    assert m.device == "sim"
    y = m(gpunet.to_device(numpy.ones((5, 4), numpy.float32), "sim"))
    assert backend.device_of(y) == "sim"
    numpy.testing.assert_allclose(gpunet.to_numpy(y), ref, rtol=1e-6)
    with pytest.raises(TypeError, match="sim"):
        m(numpy.ones((5, 4), numpy.float32))
    m.to("cpu")
    assert m.device == "cpu"
