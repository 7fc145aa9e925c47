"""Checkpoints: one ``.npz`` file holding a model, optionally its optimizer, and metadata.

Layout of the archive (format version ``FORMAT_VERSION``)::

    __format__       int64 0-d       the format version
    __metadata__     str 0-d         JSON of the keyword metadata (epoch, metrics, …)
    model/<key>      arrays          model.state_dict()  (parameters, buffers, counters)
    optim/<key>      arrays          optimizer.state_dict() (moments, step counts, lr)
    __scheduler__    str 0-d         the LR schedule's class name (when one was saved)
    sched/<key>      arrays          scheduler.state_dict() (last_epoch, base_lr, …)
    scaler/<key>     arrays          GradScaler.state_dict() (scale, growth tracker; when saved)

It is written to a temporary file in the same folder, flushed to disk, then renamed over
``path``: a crash mid-save leaves the old checkpoint intact. File modes are those of any
other write (a new file: ``0666 & ~umask``; a replaced file keeps its mode), and a
read-only target is refused (see ``save``). It is read with
``allow_pickle=False``: loading a checkpoint never runs code.
"""
from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import warnings
import zipfile

import numpy

from . import _args
from .backend import is_array

FORMAT_VERSION = 1


class CheckpointNotFoundError(FileNotFoundError, ValueError):
    """``gpunet.load`` of a path where there is no file: a ``FileNotFoundError``, as
    ``torch.load`` and ``numpy.load`` raise (``except FileNotFoundError:`` starts a run
    afresh), and also a ``ValueError``, as every other checkpoint that cannot be read.
    ``filename`` is the path; the message names it."""

    def __str__(self):
        return str(self.strerror)
_SCHED_TYPE = "__scheduler__"


def _jsonable(name, v):
    """``v`` as JSON can hold it: NumPy scalars and 0-d arrays of any device (a loss, as the
    losses return it: a 0-d array, whose ``float()`` is what PyTorch users save of a 0-d
    tensor; on a GPU, reading it is a host sync) become Python numbers, bools or strings."""
    if isinstance(v, numpy.generic) or (is_array(v) and v.ndim == 0 and v.dtype.kind in "biufU"):
        v = v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(name, x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(name, x) for k, x in v.items()}
    shape = getattr(v, "shape", None)
    hint = (f" of shape {tuple(shape)}: a small array goes as a list ({name}=a.tolist()), weights "
            f"go into the model's state" if is_array(v) and shape else "")
    raise TypeError(f"gpunet.save: metadata {name!r} must be a number, string, bool, None, or a "
                    f"list/dict of them, got {type(v).__name__}{hint}")


def _target(path):
    """The file ``save`` replaces: ``path`` with symlinks resolved (a link keeps pointing at
    the updated file, as ``open(path, "w")`` would leave it), and its current mode or None.

    A target we may not write raises ``PermissionError`` naming ``path``, as ``open(path,
    "w")`` would; so does a regular file with no write bit at all (chmod 444), even for
    root, who could otherwise write anything: read-only means read-only.
    """
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return real, None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"{os.strerror(errno.EISDIR)} (gpunet.save writes one "
                                f"file: pass a file path, e.g. {os.path.join(path, 'model.npz')!r})", path)
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file; gpunet.save replaces regular files only", path)
    if not os.access(real, os.W_OK) or not st.st_mode & 0o222:
        raise PermissionError(errno.EACCES, "read-only file; gpunet.save leaves it as it is", path)
    return real, stat.S_IMODE(st.st_mode)


def unwritable(path):
    """Why a file cannot be written at ``path`` (``"is a directory"``, ``"no such directory
    <parent>"``, ``"permission denied"``, ``"cannot create a file in <parent> (<reason>)"``),
    or None: checked before a run that ends by writing it, so that it fails before the work,
    not after (``gpunet train --save``, ``ModelCheckpoint``, ``gpunet bench --json``). Besides
    the permission bits, it creates and removes an empty temporary file beside ``path``, as
    ``gpunet.save`` would, which is what finds a read-only file system (root passes the
    bits). A disk that fills up during the run is still found only by the write."""
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        return "is a directory"
    if not os.path.isdir(parent):
        return f"no such directory {parent}"
    if not os.access(parent, os.W_OK | os.X_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return "permission denied"
    # os.access answers from the mode bits, which root passes; a read-only mount, or a folder
    # that takes no new files (/proc), says no only when asked: create (and remove) the
    # temporary file that gpunet.save would create there
    try:
        fd, tmp = _temporary(os.path.abspath(path))
    except OSError as e:
        return f"cannot create a file in {parent} ({e.strerror or e})"
    os.close(fd)
    os.unlink(tmp)
    return None


def _temporary(real):
    """Create an empty temporary file beside ``real``; return ``(fd, name)``. Created with
    mode 0666 so that the umask (and a default ACL) applies as to any other new file. Its
    name holds at most the first 50 characters of ``real``'s (at most 200 bytes; 18 more are
    added), so that a name as long as a file system takes (255 bytes) still gets one."""
    folder, base = os.path.split(real)
    for _ in range(100):
        tmp = os.path.join(folder, f".{base[:50]}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not create a temporary file beside it", real)


def _check_args(who, path, model, optimizer):
    """Check the arguments' types before anything is read or written; returns the path."""
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f"{who}: expected path to be a str or os.PathLike, got "
                        f"{type(path).__name__}") from None
    for name, obj in (("model", model), ("optimizer", optimizer)):
        if obj is None and name == "optimizer":
            continue
        if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
            kind = "a gpunet Layer" if name == "model" else "None or a gpunet optimizer"
            raise TypeError(f"{who}: expected {name} to be {kind} (with state_dict and "
                            f"load_state_dict), got {type(obj).__name__}")
    return path


def _state_of(name, obj, kind):
    """``obj.state_dict()`` of a keyword argument of ``save``, or the TypeError naming it."""
    if not hasattr(obj, "state_dict"):
        raise TypeError(f"gpunet.save: {name} must be {kind}, got {type(obj).__name__}")
    return obj.state_dict()


def _put(arrays, prefix, state):
    """Add a state dict's entries to the archive's arrays under ``prefix``."""
    for k, v in state.items():
        arrays[prefix + k] = numpy.asarray(v)


def save(path, model, optimizer=None, /, *, scheduler=None, scaler=None, **metadata):
    """Write ``model`` (and ``optimizer``, and a learning-rate ``scheduler``) and
    ``metadata`` to ``path`` atomically; return ``path``.

    The archive is written to a temporary file beside ``path``, flushed to disk, then
    renamed over it: a crash mid-save leaves the old file intact. File modes follow any
    other file write: a new file gets ``0666 & ~umask``; a replaced file keeps its mode
    (not its owner, when another user owned it). A read-only target (no write permission,
    or no write bit at all, as after ``chmod 444``) raises ``PermissionError`` and stays as
    it is. A symlink keeps pointing at the updated file. Every ``OSError`` names ``path``,
    never the temporary file. ``scheduler`` and ``scaler`` (a ``gpunet.amp.GradScaler``)
    are keywords (not metadata); metadata values
    are JSON-able numbers, strings, bools, None, or lists/dicts of them (a NumPy scalar or a
    0-d array, such as the loss a loss function returns, counts as its value). Metadata may take
    any name (``model="mlp"``, as ``gpunet train --save`` writes); ``optimizer=`` given by
    keyword, as the signature reads, is the optimizer when its value is one (an object with
    ``state_dict``) and none was passed third, and metadata otherwise.
    """
    if optimizer is None and hasattr(metadata.get("optimizer"), "state_dict"):
        optimizer = metadata.pop("optimizer")     # save(path, model, optimizer=opt)
    return _write(path, model, optimizer, scheduler, scaler, metadata)


def _write(path, model, optimizer, scheduler, scaler, metadata):
    """``save`` with the metadata as a dict, whose keys may be any name (``scheduler`` and
    ``scaler`` too, which ``save`` takes as keywords: ``ModelCheckpoint`` writes an epoch's
    logs, whatever a callback named them)."""
    path = _check_args("gpunet.save", path, model, optimizer)
    arrays = {"__format__": numpy.asarray(FORMAT_VERSION, dtype=numpy.int64),
              "__metadata__": numpy.asarray(json.dumps({k: _jsonable(k, v) for k, v in metadata.items()}))}
    _put(arrays, "model/", model.state_dict())
    if optimizer is not None:
        _put(arrays, "optim/", optimizer.state_dict())
    if scheduler is not None:
        state = _state_of("scheduler", scheduler, "a learning-rate schedule (with state_dict)")
        arrays[_SCHED_TYPE] = numpy.asarray(type(scheduler).__name__)
        _put(arrays, "sched/", state)
    if scaler is not None:
        _put(arrays, "scaler/", _state_of("scaler", scaler, "a gpunet.amp.GradScaler"))
    for k, v in arrays.items():
        if v.dtype == object:
            raise TypeError(f"gpunet.save: {k!r} is an object array; checkpoints hold plain arrays only")
    path = os.fspath(path)
    real, mode = _target(path)
    tmp = None
    try:
        fd, tmp = _temporary(real)
        with os.fdopen(fd, "wb") as f:
            numpy.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, real)
        tmp = None
    except OSError as e:   # name the target, not the temporary file
        why = e.strerror
        folder = os.path.dirname(real)
        if isinstance(e, FileNotFoundError) and not os.path.isdir(folder):
            # PyTorch's torch.save says so too; open() would not: the folder is what is missing
            why = f"{why} (no folder {folder!r}; gpunet.save creates none: os.makedirs({folder!r}) first)"
        raise (type(e)(e.errno, why, path) if e.errno is not None
               else type(e)(f"{path}: {e}")) from e
    finally:
        if tmp is not None and os.path.lexists(tmp):
            os.unlink(tmp)
    return path


def _read(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(errno.ENOENT, f"gpunet.load: {path}: no such file", path)
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError as e:   # a folder, a file we may not read
        raise ValueError(f"gpunet.load: {path} is not a readable gpunet checkpoint "
                         f"({type(e).__name__}: {e.strerror})") from e
    if not head.startswith(b"PK"):
        what = ("a .npy array file" if head == b"\x93NUMPY" else "an empty file" if not head
                else "not an .npz archive")
        raise ValueError(f"gpunet.load: {path} is not a gpunet checkpoint: it is {what}, and a "
                         f"checkpoint is an .npz archive written by gpunet.save")
    try:
        with numpy.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise ValueError(f"gpunet.load: {path} is not a readable gpunet checkpoint "
                         f"({type(e).__name__}: {e})") from e
    if "__format__" not in data:
        raise ValueError(f"gpunet.load: {path} is not a gpunet checkpoint (no __format__ entry)")
    fmt = data["__format__"]
    if fmt.shape != () or fmt.dtype.kind not in "iu":
        raise ValueError(f"gpunet.load: {path} is not a gpunet checkpoint: its __format__ entry "
                         f"is {_described(fmt)}, expected a 0-d integer (the format version)")
    version = int(fmt)
    if version != FORMAT_VERSION:
        raise ValueError(f"gpunet.load: {path} has checkpoint format version {version}; this gpunet "
                         f"reads version {FORMAT_VERSION}")
    text = data.get("__metadata__")
    if text is None or text.shape != () or text.dtype.kind != "U":
        raise ValueError(f"gpunet.load: {path}: unreadable metadata: expected a 0-d string "
                         f"__metadata__ entry, got {'none' if text is None else _described(text)}")
    try:
        meta = json.loads(str(text))
    except ValueError as e:
        raise ValueError(f"gpunet.load: {path}: unreadable metadata ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"gpunet.load: {path}: unreadable metadata: expected a JSON object of "
                         f"keyword metadata, got a JSON {type(meta).__name__}")
    return data, meta


def _described(a):
    """``a``'s shape and dtype, as an error message shows them."""
    return f"an array of shape {a.shape} and dtype {a.dtype.name}"


def _section(data, prefix):
    """The entries of ``data`` under ``prefix`` (``"model/"``, ...), with the prefix cut."""
    return {k[len(prefix):]: v for k, v in data.items() if k.startswith(prefix)}


def _restore_all(where, parts, strict=True):
    """``obj.load_state_dict(state)`` for each ``(obj, state)`` of ``parts``, in order; when
    one raises, the objects loaded before it get their previous state back (each part
    checks its own state before changing anything, so the failing one is unchanged), and
    the error names ``where``: a failed load changes nothing. The first part (the model)
    is loaded with ``strict=False`` when ``strict`` is False; returns what its
    ``load_state_dict`` returned."""
    done = []
    first = None
    try:
        for i, (obj, state) in enumerate(parts):
            before = obj.state_dict() if i < len(parts) - 1 else None
            out = obj.load_state_dict(state) if strict or i else obj.load_state_dict(state, strict=False)
            done.append((obj, before))
            first = out if i == 0 else first
    except BaseException as e:
        for obj, before in reversed(done):
            obj.load_state_dict(before)
        if isinstance(e, (ValueError, TypeError)):
            raise ValueError(f"{where}: {e}") from e
        raise
    return first


def _warn_left_behind(path, data, scheduler, scaler):
    """Warn when a load that restores an optimizer (a run being resumed) leaves out the
    schedule or loss-scaler state the file holds: the optimizer then goes on at the saved
    rate while a fresh schedule starts again from its epoch 0 at its next step (and a fresh
    scaler from its initial scale), so the run silently departs from the one saved."""
    left = []
    if scheduler is None and _SCHED_TYPE in data:
        left.append(f"{data[_SCHED_TYPE]} schedule state (pass scheduler=, a "
                    f"{data[_SCHED_TYPE]} of this optimizer)")
    if scaler is None and any(k.startswith("scaler/") for k in data):
        left.append("GradScaler state (pass scaler=, e.g. trainer.scaler of a precision='fp16' "
                    "Trainer)")
    if left:
        warnings.warn(f"gpunet.load: {path} also holds {' and '.join(left)}, which this load "
                      f"did not restore: a run resumed from it would start the schedule or the loss "
                      f"scale over instead of continuing them", UserWarning, stacklevel=3)


class Metadata(dict):
    """What ``load`` returns: the checkpoint's keyword metadata (a plain ``dict`` in every
    other respect), with ``missing_keys`` and ``unexpected_keys``, the model's keys that the
    file did not hold and the file's model keys that the model does not have (the fields of
    what PyTorch's ``load_state_dict`` returns; both empty after a ``strict=True`` load,
    which raises on either)."""

    def __init__(self, meta, missing_keys=(), unexpected_keys=()):
        super().__init__(meta)
        self.missing_keys = list(missing_keys)
        self.unexpected_keys = list(unexpected_keys)


# torch.load's keywords, which gpunet.load has no need of
_TORCH_LOAD = {
    "map_location": ("gpunet.load needs none: each value is copied onto the device (and into the "
                     "dtype) of the array it replaces; move the model first, model.to(device)", "torch.load's"),
    "weights_only": ("gpunet.load needs none: a checkpoint holds arrays only and is read with "
                     "allow_pickle=False, so loading never runs code", "torch.load's"),
    "mmap": ("gpunet.load needs none: it reads the arrays into memory once", "torch.load's"),
}


def load(path, model, optimizer=None, *, scheduler=None, scaler=None, strict=True, **unknown) -> dict:
    """Restore ``model`` (and ``optimizer``, ``scheduler``, a loss ``scaler``) from
    ``path``; return the metadata dict (a :class:`Metadata`).

    Everything a training step reads comes back — parameters, buffers, dropout draw
    counters, optimizer moments and step counts, the schedule's epoch — so a resumed run
    continues bit for bit where the products run as before (the same BLAS kernels and
    thread count on the CPU: guide §9). A missing key or a shape mismatch raises ``ValueError`` naming
    each such key; a file that is not a gpunet checkpoint (a ``.npy`` array, a text file,
    a truncated or foreign archive) raises ``ValueError`` naming the path, and a path with
    no file ``FileNotFoundError`` (also a ``ValueError``: :class:`CheckpointNotFoundError`),
    as ``torch.load`` and ``numpy.load`` raise. Asking for
    optimizer, scheduler or scaler state that the file does not hold (or a scheduler of
    another class than the one saved) raises ``ValueError``; a load that restores an
    ``optimizer`` but leaves out schedule or scaler state the file holds (as
    ``ModelCheckpoint`` saves them) warns (``UserWarning``), since the run would not continue
    as saved (a load of the model alone, for inference or fine-tuning, does not); a disabled ``scaler``
    (``enabled=False``) has no state and asks for none. A load that raises changes
    nothing: the model, optimizer, scheduler and scaler keep the state they had (as
    ``load_state_dict`` checks everything before it changes anything).

    ``strict`` (PyTorch's ``load_state_dict(strict=)``; a bool): True, the default, loads
    a checkpoint of this model only: a model key that the file does not hold, or a model
    key in the file that the model does not have, raises ``ValueError`` naming the file
    and every such key. False loads the model's keys that the file holds and ignores the
    rest (a pretrained feature extractor into a model with a new head, say), and the
    returned metadata's ``missing_keys`` and ``unexpected_keys`` list what was skipped.
    A shape mismatch raises either way, and ``strict`` applies to the model's keys only:
    optimizer, scheduler and scaler state must match (an optimizer's state is per
    parameter), and when it does not, the load raises and the model keeps its state too.

    Devices: the file holds NumPy arrays whatever device saved it, and each value is
    copied onto the device (and into the dtype) of the array it replaces: the model's
    parameters and buffers where the model is now, the optimizer's state beside its
    parameters. A run saved from a GPU (or the sim) loads into a model on a CPU-only
    machine, and back, with nothing to map. PyTorch's ``torch.load`` restores each tensor
    onto the device it was saved from, hence its ``map_location="cpu"`` on a machine
    without CUDA; gpunet has no such argument because nothing in the file names a device.
    """
    if unknown:
        raise _args.unexpected_keyword("load", unknown, _TORCH_LOAD)
    path = _check_args("gpunet.load", path, model, optimizer)
    strict = _args.flag("gpunet.load", "strict", strict)
    data, meta = _read(path)
    where = f"gpunet.load: {path}"
    parts = [(model, _section(data, "model/"))]
    if optimizer is not None:
        opt_sd = _section(data, "optim/")
        if not opt_sd:
            raise ValueError(f"{where} holds no optimizer state")
        parts.append((optimizer, opt_sd))
    if scheduler is not None:
        if _SCHED_TYPE not in data:
            raise ValueError(f"{where} holds no scheduler state")
        saved = str(data[_SCHED_TYPE])
        if saved != type(scheduler).__name__:
            raise ValueError(f"{where} holds {saved} state, not {type(scheduler).__name__}")
        parts.append((scheduler, _section(data, "sched/")))
    if scaler is not None and getattr(scaler, "enabled", True):
        # a disabled scaler has no state (its state_dict is {}, as PyTorch's): nothing to load
        sc_sd = _section(data, "scaler/")
        if not sc_sd:
            raise ValueError(f"{where} holds no GradScaler state (it was saved without a scaler, "
                             f"or with a disabled one)")
        parts.append((scaler, sc_sd))
    result = _restore_all(where, parts, strict)
    if optimizer is not None:
        _warn_left_behind(path, data, scheduler, scaler)
    if strict:
        return Metadata(meta)
    missing, unexpected = result
    return Metadata(meta, missing, unexpected)
