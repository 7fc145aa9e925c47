"""Maxout: forward against a loop, first-max gradient on ties, gradcheck."""
import numpy
import pytest

from gpunet import Dense, Maxout, Sequential, gradcheck, to_numpy


def loop_reference(x, pieces):
    """Output j = max of inputs j*pieces ... j*pieces+pieces-1; winner = first maximal input."""
    n, cp = x.shape[:2]
    c = cp // pieces
    y = numpy.empty((n, c) + x.shape[2:], x.dtype)
    win = numpy.empty(y.shape, numpy.int64)
    for i in numpy.ndindex(*y.shape):
        b, j, rest = i[0], i[1], i[2:]
        vals = [x[(b, j * pieces + k) + rest] for k in range(pieces)]
        best = 0
        for k in range(1, pieces):
            if vals[k] > vals[best]:
                best = k
        y[i], win[i] = vals[best], best
    return y, win


@pytest.mark.parametrize("shape,pieces", [((5, 12), 3), ((2, 8, 3, 4), 2), ((3, 4), 1)])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_forward_and_backward_against_loop(xp, rng, shape, pieces, dtype):
    x_host = rng.standard_normal(shape).astype(dtype)
    layer = Maxout(pieces)
    y = layer(xp.asarray(x_host))
    want, win = loop_reference(x_host, pieces)
    assert y.dtype == dtype and y.shape == want.shape
    numpy.testing.assert_array_equal(to_numpy(y), want)
    dy_host = rng.standard_normal(want.shape).astype(dtype)
    dx = to_numpy(layer.backward(xp.asarray(dy_host)))
    assert dx.dtype == dtype and dx.shape == shape
    expect = numpy.zeros(shape, dtype)
    for i in numpy.ndindex(*want.shape):
        expect[(i[0], i[1] * pieces + win[i]) + i[2:]] = dy_host[i]
    numpy.testing.assert_array_equal(dx, expect)


def test_ties_send_gradient_to_first_max(xp):
    x = xp.asarray(numpy.array([[1.0, 3.0, 3.0, 3.0,    # tie of three: index 1 wins
                                 2.0, 2.0, 2.0, 2.0,    # all equal: index 0 wins
                                 0.0, -1.0, 5.0, 5.0]], numpy.float32))
    layer = Maxout(4)
    y = layer(x)
    numpy.testing.assert_array_equal(to_numpy(y), [[3.0, 2.0, 5.0]])
    dx = to_numpy(layer.backward(xp.asarray(numpy.array([[10.0, 20.0, 30.0]], numpy.float32))))
    numpy.testing.assert_array_equal(dx, [[0, 10, 0, 0, 20, 0, 0, 0, 0, 0, 30, 0]])


@pytest.mark.parametrize("shape,pieces", [((4, 6), 3), ((2, 4, 2, 3), 2)])
def test_gradcheck(xp, rng, shape, pieces):
    # well-separated values: a ±eps probe must not flip a max
    x_host = rng.permutation(numpy.prod(shape)).reshape(shape) * 0.1
    assert gradcheck(Maxout(pieces), xp.asarray(x_host))


def test_gradcheck_with_dense_before_it(xp, device, rng):
    model = Sequential(Dense(5, 4 * 3), Maxout(3)).to(device)
    assert gradcheck(model, xp.asarray(rng.standard_normal((3, 5))))


def test_bad_input(xp):
    with pytest.raises(ValueError, match=r"Maxout: expected an input \(N, C\*3, \.\.\.\).*got shape \(2, 7\)"):
        Maxout(3)(xp.ones((2, 7), dtype=xp.float32))
    with pytest.raises(ValueError, match="Maxout"):
        Maxout(2)(xp.ones(4, dtype=xp.float32))
    for bad in (0, -2, 2.5, True):
        with pytest.raises(ValueError, match="Maxout: expected pieces to be a positive int"):
            Maxout(bad)
