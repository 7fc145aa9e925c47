"""The CPU paths that run a pass block by block (for the cache) give the same numbers,
element for element, as the whole-array passes they replace."""
import numpy
import pytest

from gpunet import optim
from gpunet.layers.base import Parameter


@pytest.mark.parametrize("kwargs", [dict(momentum=0.9), dict(momentum=0.9, nesterov=True), dict(),
                                    dict(momentum=0.5, weight_decay=1e-3, l1=1e-4)])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_sgd_blocked_update_is_bit_identical(monkeypatch, kwargs, dtype):
    rng = numpy.random.default_rng(0)
    shapes = [(37, 50), (1001,), (7, 3)]      # above, above and below a block of 256
    w0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]

    def run(chunk):
        monkeypatch.setattr(optim, "UPDATE_CHUNK", chunk)
        ps = [Parameter(w.copy(), "w", decay=True) for w in w0]
        opt = optim.SGD(ps, lr=0.01, **kwargs)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.copy()
            opt.step()
        return [p.data for p in ps], [opt.state[i].get("momentum_buffer") for i in range(len(ps))]

    (wa, ba), (wb, bb) = run(256), run(1 << 40)
    for a, b in zip(wa + ba, wb + bb):
        if a is None:
            assert b is None
        else:
            assert a.dtype == dtype and numpy.array_equal(a, b)
