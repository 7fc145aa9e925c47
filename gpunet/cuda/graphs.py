"""CUDA-graph capture state: the optimizers ask whether a capture is in progress (where
they must not write a host value into the graph).

``capturing()`` returns the capture in progress, or None."""
from __future__ import annotations

_capture = None


def capturing():
    """The capture in progress on this thread, or None."""
    return _capture
