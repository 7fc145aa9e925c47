"""The sim's array module behaves like CuPy where a difference would hide a bug of the
CUDA branch: no implicit conversion to NumPy, host syncs where CuPy syncs, new device
arrays as results, NumPy 2 promotion, a device address per array. The array module needs
no C++ compiler (only the sim's kernels do), so these run everywhere."""
import ctypes

import numpy
import pytest

import gpunet
from gpunet import backend
from gpunet.sim import array as sp


def _x(shape=(2, 3), dtype=numpy.float32):
    return sp.asarray(numpy.arange(numpy.prod(shape), dtype=dtype).reshape(shape))


def test_implicit_conversion_to_numpy_raises():
    x = _x()
    with pytest.raises(TypeError, match="Implicit conversion"):
        numpy.asarray(x)
    with pytest.raises(TypeError, match="Implicit conversion"):
        numpy.array([1.0]) * 0 + numpy.asarray(x)
    with pytest.raises(TypeError):
        numpy.testing.assert_allclose(x, numpy.zeros((2, 3)))


@pytest.mark.parametrize("op", [lambda a, b: a + b, lambda a, b: b * a, lambda a, b: a @ b.T,
                                lambda a, b: sp.maximum(a, b), lambda a, b: a < b])
def test_mixing_with_numpy_arrays_raises(op):
    x, h = _x(), numpy.ones((2, 3), numpy.float32)
    with pytest.raises(TypeError, match="Unsupported type"):
        op(x, h)
    with pytest.raises(TypeError):
        op(h, x)


def test_scalars_mix_with_numpy_2_promotion():
    x = _x()
    assert (x * 2.0).dtype == numpy.float32                   # Python float: weak
    assert (x * numpy.float32(2)).dtype == numpy.float32
    assert (x * numpy.float64(2)).dtype == numpy.float64      # NumPy scalar: strong (NumPy 2)
    assert (numpy.float64(2) * x).dtype == numpy.float64
    assert (x + 1).dtype == numpy.float32
    y = numpy.float32(3) * x
    assert isinstance(y, sp.ndarray)


def test_results_are_new_sim_arrays_and_reductions_are_0d():
    x = _x()
    for r in (x + x, sp.exp(x), numpy.exp(x), x.sum(), x.max(axis=0), x[0, 1], x.mean(),
              x.argmax(), sp.count_nonzero(x), numpy.sum(x)):
        assert isinstance(r, sp.ndarray), type(r)
    assert x.sum().shape == () and x[0, 1].shape == ()
    assert backend.device_of(x.sum()) == "sim"


def test_host_conversions_and_values():
    x = _x()
    numpy.testing.assert_array_equal(x.get(), numpy.arange(6, dtype=numpy.float32).reshape(2, 3))
    assert isinstance(x.get(), numpy.ndarray)
    assert float(x.sum()) == 15.0 and int(x[1, 2]) == 5 and bool(x[0, 1]) and not bool(x[0, 0])
    assert x[1, 1].item() == 4.0 and x.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert "array(" in repr(x) and "5." in str(x)
    with pytest.raises(ValueError):
        bool(x)
    with pytest.raises(ValueError):
        float(x)


def test_data_ptr_is_the_buffer_address_and_views_share_it():
    x = _x((4, 5), numpy.float64)
    p = x.data.ptr
    assert ctypes.c_double.from_address(p + 8 * 7).value == 7.0
    v = x[1:, 2:]
    assert v.data.ptr == p + 8 * (5 + 2)
    v[0, 0] = -1.0                        # a view writes through to the base
    assert float(x[1, 2]) == -1.0
    assert v.base is x and x.base is None
    assert x.device.id == 0
    with x.device:
        pass
    assert sp.cuda.Device(0).attributes["MultiProcessorCount"] == gpunet.sim.MULTIPROCESSOR_COUNT


def test_asarray_copies_host_data():
    h = numpy.ones(3)
    x = sp.asarray(h)
    h[0] = 5
    assert float(x[0]) == 1.0
    assert sp.asarray(x) is x
    assert sp.asarray(x, dtype=numpy.float32).dtype == numpy.float32


def test_layout_ops():
    x = _x((2, 3, 4))
    assert x.reshape(6, 4).shape == (6, 4) and x.reshape((4, 6)).shape == (4, 6)
    assert x.transpose(2, 0, 1).shape == (4, 2, 3) and x.T.shape == (4, 3, 2)
    t = x.transpose(1, 0, 2)
    assert not t.flags.c_contiguous and sp.ascontiguousarray(t).flags.c_contiguous
    assert sp.ascontiguousarray(x) is x
    numpy.testing.assert_array_equal(t.reshape(-1).get(), x.get().transpose(1, 0, 2).ravel())
    assert sp.broadcast_to(x[:, :1], (2, 3, 4)).shape == (2, 3, 4)
    assert sp.stack([x, x]).shape == (2, 2, 3, 4)
    assert sp.concatenate([x, x], axis=2).shape == (2, 3, 8)
    assert len(x) == 2 and [r.shape for r in x] == [(3, 4), (3, 4)]


def test_indexing_and_inplace():
    x = _x((3, 4))
    assert x[x > 5].get().tolist() == [6, 7, 8, 9, 10, 11]
    idx = sp.asarray(numpy.array([2, 0]))
    numpy.testing.assert_array_equal(x[idx].get(), x.get()[[2, 0]])
    x[0] = 7
    x[:, 1] = sp.zeros(3, numpy.float32)
    x += 1
    x *= sp.asarray(numpy.float32(2))
    h = numpy.arange(12, dtype=numpy.float32).reshape(3, 4)
    h[0] = 7
    h[:, 1] = 0
    numpy.testing.assert_array_equal(x.get(), (h + 1) * 2)
    with pytest.raises(TypeError):
        x[numpy.array([0, 1])]
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):   # as CuPy
        x[0] = numpy.ones(4, numpy.float32)
    with pytest.raises(TypeError):
        x[0] = [1.0, 2.0, 3.0, 4.0]
    x[0, 0] = numpy.array(5.0)                                          # 0-d: a scalar
    assert float(x[0, 0]) == 5.0


def test_ufunc_out_and_dtype():
    x, y = _x(), sp.empty((2, 3), numpy.float32)
    assert sp.multiply(x, 2.0, out=y) is y
    numpy.testing.assert_array_equal(y.get(), 2 * x.get())
    assert sp.add(x, x, dtype=numpy.float64).dtype == numpy.float64
    with pytest.raises(TypeError):
        sp.add(x, x, foo=1)
    with pytest.raises(TypeError):
        sp.add(x, x, out=numpy.empty((2, 3), numpy.float32))


def test_numpy_functions_dispatch_to_the_sim():
    x = _x()
    assert isinstance(numpy.maximum(x, 1.0), sp.ndarray)
    assert numpy.shape(x) == (2, 3)
    assert float(numpy.sum(x)) == 15.0


def test_get_array_module_and_asnumpy():
    x = _x()
    assert sp.get_array_module(x) is sp and sp.get_array_module(numpy.ones(1)) is numpy
    assert backend.get_array_module(x) is sp and backend.get_array_module(1.0, x) is sp
    assert isinstance(sp.asnumpy(x), numpy.ndarray)


def test_only_device_0():
    with pytest.raises(RuntimeError, match="one device"):
        sp.cuda.Device(1)
    assert sp.cuda.runtime.getDeviceCount() == 1 and sp.cuda.is_available()


def test_linalg_norm_and_as_strided():
    x = _x()
    n = sp.linalg.norm(x)
    assert isinstance(n, sp.ndarray) and n.dtype == numpy.float32
    assert abs(float(n) - numpy.linalg.norm(x.get())) < 1e-5
    w = sp.lib.stride_tricks.as_strided(x, shape=(2, 2), strides=(x.strides[0], x.strides[1]))
    numpy.testing.assert_array_equal(w.get(), x.get()[:, :2])


def test_arrays_can_be_weakly_referenced_like_cupys():
    import weakref
    x = _x()
    r = weakref.ref(x)
    assert r() is x
    assert gpunet.data.is_data(gpunet.data.mark_data(x))


def test_ops_never_warn_like_a_gpu(recwarn):
    x = sp.asarray(numpy.array([1e38, 0.0], numpy.float32))
    y = (x * x, x / x[1], sp.log(x), x.sum() * 10, x @ x)
    assert [w.message for w in recwarn] == []
    assert numpy.isinf(y[0].get()[0]) and numpy.isnan(y[1].get()[1])


def test_copyto_takes_device_arrays_and_scalars_only():
    x = _x()
    sp.copyto(x, sp.ones((2, 3), numpy.float32))
    sp.copyto(x, 2.0, where=x > 0)
    sp.copyto(x, numpy.array([3.0], numpy.float32))      # size 1: a scalar, as in CuPy
    assert x.get().tolist() == [[3.0] * 3] * 2
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray"):
        sp.copyto(x, numpy.ones((2, 3), numpy.float32))


def test_copy_deepcopy_and_pickle_stay_on_the_device():
    import copy
    import pickle
    x = _x()
    for y in (copy.copy(x), copy.deepcopy(x), pickle.loads(pickle.dumps(x))):
        assert isinstance(y, sp.ndarray) and y.data.ptr != x.data.ptr
        numpy.testing.assert_array_equal(y.get(), x.get())


def test_host_data_of_a_dtype_cuda_arrays_cannot_hold_is_refused_as_cupy_does():
    """Found by the dtype audit: the sim took big-endian data (FITS files, binary records)
    and long double (float128) models to the device, where CuPy refuses them when host data
    becomes a device array (cupy/_core/_dtype.pyx, check_supported_dtype): a run that
    worked on the sim failed on the GPU. The sim now raises CuPy's ValueError."""
    for dt, message in ((">f4", "Unsupported dtype >f4 with big-endian byte-order"),
                        (">i8", "Unsupported dtype >i8 with big-endian byte-order"),
                        (numpy.longdouble, f"Unsupported dtype {numpy.dtype(numpy.longdouble)}"),
                        ("U3", "Unsupported dtype <U3")):
        with pytest.raises(ValueError, match=f"^{message}$"):
            sp.asarray(numpy.zeros(3, dt))
    with pytest.raises(ValueError, match="^Unsupported dtype"):
        gpunet.Dense(3, 2).to(dtype=numpy.longdouble).to("sim")
    for dt in "?bhilqBHILQefdFD":                  # what a CuPy array holds
        assert sp.asarray(numpy.zeros(3, dt)).dtype == numpy.dtype(dt)
