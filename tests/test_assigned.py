"""Attributes assigned after construction: checked as the constructor's argument is (the
error names the class, the attribute, what was expected and what was given), recomputing what
was derived from them, or refused with an ``AttributeError`` that says what to do instead when
something derived from them cannot follow (a layer's weight shape, a loader's data). Before,
each was stored as given and ignored, used silently, or failed later inside NumPy."""
import math
import re

import numpy
import pytest

import gpunet
from gpunet import optim


def _xy(n=10):
    return numpy.arange(n * 3, dtype=numpy.float32).reshape(n, 3), numpy.arange(n, dtype=numpy.int64)


class _World:
    """A communicator of ``size`` processes, this one ``rank`` (what DataLoader reads)."""

    def __init__(self, rank, size):
        self.rank, self.size = rank, size


# -- DataLoader ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["X", "y"])
def test_loader_data_cannot_be_replaced(name):
    """``loader.y = y[:5]`` was stored: batches paired 10 samples of X with 5 labels (the
    last ones cut short by slicing, or an IndexError when shuffled), a resident copy went on
    serving the old data. Now refused, as PyTorch refuses a new ``dataset``."""
    X, y = _xy(10)
    loader = gpunet.DataLoader(X, y, batch_size=4)
    with pytest.raises(AttributeError, match=rf"^DataLoader: {name} cannot be assigned after construction; "
                                             r"create a new DataLoader\(X, y, \.\.\.\) for other data"):
        setattr(loader, name, (X if name == "X" else y)[:5])
    assert loader.X is X and loader.y is y and len(loader) == 3
    assert [len(b[1]) for b in loader] == [4, 4, 2]


def test_loader_comm_is_checked_on_assignment_and_used_at_the_next_pass():
    """``loader.comm = object()`` was stored, and the next ``len``/pass failed reading
    ``.size``; ``comm = 2`` too. Now a TypeError at the assignment; a world assigned shards
    the next pass, None undoes it."""
    loader = gpunet.DataLoader(*_xy(10), batch_size=2)
    for bad, shown in ((object(), r"<object object at 0x[0-9a-f]+> \(object\)"), (2, r"2 \(int\)")):
        with pytest.raises(TypeError, match=r"^DataLoader: expected comm to be None or a gpunet\.distributed "
                                            rf"communicator \(gpunet\.distributed\.init\(\)\), got {shown}$"):
            loader.comm = bad
    assert loader.comm is None and len(loader) == 5
    loader.comm = _World(1, 2)
    assert len(loader) == 3                       # global batches of 2 x 2
    assert [yb.tolist() for _, yb in loader] == [[2, 3], [6, 7], [9]]    # rank 1's halves
    loader.comm = None
    assert [yb.tolist() for _, yb in loader][0] == [0, 1] and len(loader) == 5
