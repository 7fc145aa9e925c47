"""Checkpoints: one ``.npz`` file holding a model, optionally its optimizer, and metadata.

Layout of the archive (format version ``FORMAT_VERSION``)::

    __format__       int64 0-d       the format version
    __metadata__     str 0-d         JSON of the keyword metadata (epoch, metrics, …)
    model/<key>      arrays          model.state_dict()  (parameters, buffers, counters)
    optim/<key>      arrays          optimizer.state_dict() (moments, step counts, lr)

It is written to a temporary file in the same folder, flushed to disk, then renamed over
``path``: a crash mid-save leaves the old checkpoint intact. It is read with
``allow_pickle=False``: loading a checkpoint never runs code.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy

FORMAT_VERSION = 1


def _jsonable(name, v):
    if isinstance(v, (numpy.generic,)):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(name, x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(name, x) for k, x in v.items()}
    raise TypeError(f"gpunet.save: metadata {name!r} must be a number, string, bool, None, or a "
                    f"list/dict of them, got {type(v).__name__}")


def save(path, model, optimizer=None, /, **metadata):
    """Write ``model`` (and ``optimizer``) and ``metadata`` to ``path`` atomically."""
    arrays = {"__format__": numpy.asarray(FORMAT_VERSION, dtype=numpy.int64),
              "__metadata__": numpy.asarray(json.dumps({k: _jsonable(k, v) for k, v in metadata.items()}))}
    for k, v in model.state_dict().items():
        arrays["model/" + k] = numpy.asarray(v)
    if optimizer is not None:
        for k, v in optimizer.state_dict().items():
            arrays["optim/" + k] = numpy.asarray(v)
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"gpunet.save: {k!r} is an object array; checkpoints hold plain arrays only")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".gpunet-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            numpy.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _read(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"gpunet.load: {path}: no such file")
    try:
        with numpy.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError("not an npz archive")
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise ValueError(f"gpunet.load: {path} is not a readable gpunet checkpoint "
                         f"({type(e).__name__}: {e})") from e
    if "__format__" not in data:
        raise ValueError(f"gpunet.load: {path} is not a gpunet checkpoint (no __format__ entry)")
    version = int(data["__format__"])
    if version != FORMAT_VERSION:
        raise ValueError(f"gpunet.load: {path} has checkpoint format version {version}; this gpunet "
                         f"reads version {FORMAT_VERSION}")
    try:
        meta = json.loads(str(data["__metadata__"]))
    except (KeyError, ValueError) as e:
        raise ValueError(f"gpunet.load: {path}: unreadable metadata ({e})") from e
    return data, meta


def load(path, model, optimizer=None) -> dict:
    """Restore ``model`` (and ``optimizer``) from ``path``; return the metadata dict.

    Everything a training step reads comes back — parameters, buffers, dropout draw
    counters, optimizer moments and step counts — so a resumed run continues bit for bit.
    A missing key or a shape mismatch raises ``ValueError`` naming each such key; a file
    that is not a gpunet checkpoint raises ``ValueError`` naming the path.
    """
    data, meta = _read(path)
    model_sd = {k[6:]: v for k, v in data.items() if k.startswith("model/")}
    try:
        model.load_state_dict(model_sd)
    except ValueError as e:
        raise ValueError(f"gpunet.load: {os.fspath(path)}: {e}") from e
    if optimizer is not None:
        opt_sd = {k[6:]: v for k, v in data.items() if k.startswith("optim/")}
        if not opt_sd:
            raise ValueError(f"gpunet.load: {os.fspath(path)} holds no optimizer state")
        try:
            optimizer.load_state_dict(opt_sd)
        except ValueError as e:
            raise ValueError(f"gpunet.load: {os.fspath(path)}: {e}") from e
    return meta
