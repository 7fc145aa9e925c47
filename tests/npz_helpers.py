"""Shared by the state-dict tests: a dict of arrays through an in-memory ``.npz``, as
``gpunet.save``/``gpunet.load`` pass it (0-d arrays stay arrays, strings become ``<U``)."""
import io

import numpy


def through_npz(d):
    """``d`` written with ``numpy.savez`` and read back with ``allow_pickle=False``."""
    buf = io.BytesIO()
    numpy.savez(buf, **d)
    buf.seek(0)
    with numpy.load(buf, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
