"""The CPU paths that run a pass block by block (for the cache) give the same numbers,
element for element, as the whole-array passes they replace."""
import numpy
import pytest

from gpunet import optim
from gpunet.layers.base import Parameter


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9),
    lambda ps: optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True),
    lambda ps: optim.SGD(ps, lr=0.01),
    lambda ps: optim.SGD(ps, lr=0.01, momentum=0.5, weight_decay=1e-3, l1=1e-4),
    lambda ps: optim.Adam(ps, lr=0.01),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=1e-3, l1=1e-4),
    lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=1e-2),
    lambda ps: optim.RMSProp(ps, lr=0.01),
    lambda ps: optim.RMSProp(ps, lr=0.01, momentum=0.9),
    lambda ps: optim.AdaGrad(ps, lr=0.01),
], ids=["sgd-momentum", "sgd-nesterov", "sgd", "sgd-decay", "adam", "adam-decay", "adamw",
        "rmsprop", "rmsprop-momentum", "adagrad"])
@pytest.mark.parametrize("dtype", [numpy.float32, numpy.float64])
def test_blocked_update_is_bit_identical(monkeypatch, make, dtype):
    rng = numpy.random.default_rng(0)
    shapes = [(37, 50), (1001,), (7, 3)]      # above, above and below a block of 256
    w0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(4)]

    def run(chunk):
        monkeypatch.setattr(optim, "UPDATE_CHUNK", chunk)
        ps = [Parameter(w.copy(), "w", decay=True) for w in w0]
        opt = make(ps)
        for gs in grads:
            for p, g in zip(ps, gs):
                p.grad = g.copy()
            opt.step()
        state = [opt.state[i].get(k) for i in range(len(ps)) for k in sorted(opt.state[i])]
        return [p.data for p in ps], state

    (wa, sa), (wb, sb) = run(256), run(1 << 40)
    assert len(sa) == len(sb)
    assert not numpy.array_equal(wa[0], w0[0])         # the steps moved the weights
    for a, b in zip(wa + sa, wb + sb):
        assert a.dtype == dtype and numpy.array_equal(a, b)


def test_blocked_update_reuses_one_block_of_scratch(monkeypatch):
    """Every block of an update works in the same first elements of the scratch array, so
    the scratch stays in cache; the rest of it is never written."""
    monkeypatch.setattr(optim, "UPDATE_CHUNK", 256)
    p = Parameter(numpy.ones((40, 50), numpy.float32), "w")
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    scratch = opt._scratch(p, 1).reshape(-1)
    scratch[:] = numpy.nan
    for _ in range(2):
        p.grad = numpy.full((40, 50), 0.5, numpy.float32)
        opt.step()
    assert numpy.isnan(scratch[256:]).all()
    assert not numpy.isnan(scratch[:256]).any()
    assert numpy.allclose(p.data, 1 - 0.1 * 0.5 - 0.1 * (0.9 * 0.5 + 0.5))
