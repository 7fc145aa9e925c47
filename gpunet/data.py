"""Mini-batches: ``DataLoader`` cuts arrays ``(X, y)`` into batches along axis 0.

The arrays stay as they were given (NumPy or CuPy) and are indexed with their own array
module; nothing moves between host and GPU unless ``device=`` asks for it. The shuffled
order of every epoch is a pure function of ``(seed, epoch)``, computed on the host, so it
is the same on every device and a resumed run can reproduce it with ``set_epoch``.

Resident data: with ``device=`` a GPU (``"cuda"``, ``"sim"``), host data that fits in
``RESIDENT_FRACTION`` of the device's free memory is copied there once, on the first pass,
and batches come from the device: the epoch's order is copied once per epoch (``8 N``
bytes), and when twice the data fits too, the epoch's shuffled copy is gathered in one go
(two launches an epoch), so that batches are slices of it and a step launches nothing for
its data; else each batch is gathered (two launches a step). A training step moves no bytes
from the host either way.

Larger data is staged (``_Stager``): each batch is gathered on the host into page-locked
(pinned) memory and copied to a fresh device array on a second stream, one batch ahead, so
that the copy of batch ``k+1`` overlaps the compute of batch ``k``; events order it (the
copy waits until the allocation is safe on the compute stream, the compute stream waits
for the copy before it reads). No step waits for the device, except that reusing one of
the two pinned buffers waits for its previous copy (an event that has normally completed
long before). Host data of another array type, or a loader without a GPU ``device``,
moves batch by batch with ``gpunet.backend.to_device``.
"""
from __future__ import annotations

import operator
import warnings
import weakref

import numpy

from . import _args
from .backend import (array_hint, device_mismatch, device_of, host_array, is_array, get_array_module,
                      require_cuda, require_sim, resolve_device, to_device)

#: A host dataset is copied whole to a GPU device when its bytes are at most this fraction
#: of the device's free memory (``cupy.cuda.runtime.memGetInfo``, asked once per loader).
RESIDENT_FRACTION = 0.5
#: The sim has no memory of its own (host RAM backs it): its free memory is taken to be
#: this many bytes, so datasets up to ``RESIDENT_FRACTION * SIM_FREE_BYTES`` = 2 GiB are
#: resident there.
SIM_FREE_BYTES = 4 * 2**30


def fits_on_device(nbytes: int, device) -> bool:
    """True when ``nbytes`` of data may live on ``device`` (a GPU device string) for the
    whole run: ``nbytes <= RESIDENT_FRACTION * free memory`` (``SIM_FREE_BYTES`` on the
    sim). One device query on CUDA; none on the sim. ``nbytes`` that is not an int >= 0
    raises (``TypeError``/``ValueError`` naming the function), as a bad ``device`` does."""
    nbytes = _args.integer("fits_on_device", "nbytes", nbytes, low=0)
    device = resolve_device(device, who="fits_on_device")
    if device == "cpu":
        return False
    if device == "sim":
        free = SIM_FREE_BYTES
    else:
        index = int(device.split(":")[1]) if ":" in device else 0
        cp = require_cuda(index)
        with cp.cuda.Device(index):
            free, _total = cp.cuda.runtime.memGetInfo()
    return nbytes <= RESIDENT_FRACTION * int(free)


# Batches a DataLoader yields, by id (weakly: an entry goes when its batch dies). They are
# data, which needs no gradient: a first Dense/Conv2D skips its input gradient for them.
_batches: dict = {}


def mark_data(x):
    """Record ``x`` as a data batch (no gradient will be computed for it); returns ``x``.
    Arrays that cannot be weakly referenced are left unmarked."""
    k = id(x)
    try:
        _batches[k] = weakref.ref(x, lambda _r, k=k: _batches.pop(k, None))
    except TypeError:
        pass
    return x


def is_data(x) -> bool:
    """True when ``x`` is a batch that a DataLoader yielded (and that is still alive)."""
    r = _batches.get(id(x))
    return r is not None and r() is x


def plain_array(who, name, a):
    """``a`` as the plain array it holds: a ``numpy.matrix`` (what scipy.sparse's ``todense()``
    gives) becomes an ndarray (NumPy's reductions on a matrix refuse ``keepdims``, which the
    losses pass); a ``numpy.ma.MaskedArray`` raises ``TypeError`` (its mask would be lost:
    the arithmetic of the layers does not carry it). Anything else as it is."""
    if isinstance(a, numpy.ma.MaskedArray):
        raise TypeError(f"{who}: expected {name} to be a plain array, got a numpy.ma.MaskedArray, whose "
                        f"mask the layers would drop; fill the masked values ({name}.filled(value)) or "
                        f"leave out their rows first")
    if isinstance(a, numpy.matrix):
        return numpy.asarray(a)
    return a


def _check_array(name, a):
    """Return ``a`` as an array (NumPy/CuPy arrays as they are, anything else through
    ``gpunet.backend.host_array``; a ``numpy.matrix`` as an ndarray, a masked array refused:
    ``plain_array``) with at least one axis. Python floats become float32, as
    ``torch.tensor`` makes them (its default dtype, and the parameters' here): NumPy's
    float64 would be refused by a float32 model's first layer. An array-like with a dtype
    of its own (a CPU ``torch.Tensor``, whose ``__array__`` NumPy uses) keeps it."""
    a = plain_array("DataLoader", name, a)
    if not is_array(a):
        try:
            a = host_array(a)
        except Exception as e:
            raise TypeError(f"DataLoader: expected {name} to be a NumPy or CuPy array, "
                            f"got {type(a).__name__} ({e}){array_hint(a)}") from e
    if a.dtype == object:
        raise TypeError(f"DataLoader: expected {name} to be a numeric array, got dtype object")
    if a.ndim == 0:
        raise ValueError(f"DataLoader: expected {name} with at least one axis (samples along "
                         f"axis 0), got a 0-d array")
    return a


def check_same_device(X, y, who, name=None):
    """``X`` and ``y`` on one device, else ``TypeError`` naming ``who`` (and ``name``, the
    argument that held them), both devices and the move that mends it: gpunet never copies
    between host and device behind your back, so a NumPy ``y`` beside a device ``X`` is a
    mistake to name, not to paper over (a ``device=`` asks to move batches, not to pair
    arrays that live apart)."""
    bad = device_mismatch(y, X)
    if bad is not None:
        dy, dx = bad
        where = f"{name}'s " if name else ""
        raise TypeError(f"{who}: {where}X is on {dx} but {where}y on {dy}; X and y must be on one "
                        f"device: move one, e.g. gpunet.to_device(y, {dx!r})")


# PyTorch's DataLoader keywords, and what gpunet has instead (_args.unexpected_keyword)
_WORKERS = ("gpunet's DataLoader slices arrays you hold, in the calling thread (no worker processes)",
            "PyTorch's")
_TORCH_LOADER = {
    "num_workers": _WORKERS, "persistent_workers": _WORKERS, "prefetch_factor": _WORKERS,
    "worker_init_fn": _WORKERS, "multiprocessing_context": _WORKERS, "timeout": _WORKERS,
    "pin_memory": ("gpunet pins on its own: device='cuda' copies (X, y) to the GPU once when it fits, "
                   "else stages batches through pinned memory", "PyTorch's"),
    "generator": ("seed= (an int: epoch k's order is a function of (seed, k))", "PyTorch's"),
    "sampler": ("gpunet has no samplers: shuffle=True, or index the arrays yourself "
                "(DataLoader(X[idx], y[idx]))", "PyTorch's"),
    "batch_sampler": ("gpunet has no samplers: batch_size=, shuffle= and drop_last=", "PyTorch's"),
    "collate_fn": ("gpunet's batches are slices of X and y, with nothing to collate", "PyTorch's"),
}


class _Stager:
    """Host batches to ``device`` through pinned memory on a second stream, one batch ahead.

    ``run(batches)`` takes an iterator of host index selections (slices or int arrays) and
    yields ``(xb, yb)`` device arrays: for each selection, the rows of ``X`` (and ``y``)
    are gathered into one of two pinned host buffers (waiting, on the host, only if that
    buffer's previous copy has not completed), a device array is allocated on the compute
    stream, the copy stream waits for an event recorded there (the memory may have been
    freed by work still queued on it), copies asynchronously and records an event, which
    the compute stream waits for before the batch is handed out. The copy of the next batch
    is issued before this one is yielded, so it runs while this one is computed on."""

    def __init__(self, X, y, batch_size, device):
        self.X, self.y = X, y
        self.device = device
        index = int(device.split(":")[1]) if ":" in device else 0
        self.xp = require_sim() if device == "sim" else require_cuda(index)
        self.dev = self.xp.cuda.Device(index)
        with self.dev:
            self.copy_stream = self.xp.cuda.Stream(non_blocking=True)
        self.pinned = [[self._pinned(a, batch_size) for a in (X, y) if a is not None]
                       for _ in range(2)]
        self.copied = [None, None]      # the event of each pinned buffer's last copy

    def _pinned(self, a, rows):
        n = rows * int(numpy.prod(a.shape[1:], dtype=numpy.int64))
        mem = self.xp.cuda.alloc_pinned_memory(max(n * a.itemsize, 1))
        return numpy.frombuffer(mem, a.dtype, n).reshape((rows,) + a.shape[1:])

    def _stage(self, k, sel):
        slot = k % 2
        done = self.copied[slot]
        if done is not None and not done.done:
            done.synchronize()          # the pinned buffer's previous copy is still running
        xp, compute = self.xp, self.xp.cuda.get_current_stream()
        out = []
        for a, host in zip((self.X, self.y), self.pinned[slot]):
            if isinstance(sel, slice):
                rows = a[sel]
                h = host[:rows.shape[0]]
                h[...] = rows
            else:
                h = host[:len(sel)]
                numpy.take(a, sel, axis=0, out=h)
            d = xp.empty(h.shape, h.dtype)
            out.append((d, h))
        self.copy_stream.wait_event(compute.record())
        for d, h in out:
            d.set(h, stream=self.copy_stream)
        ev = self.copied[slot] = self.copy_stream.record()
        return [d for d, _ in out], ev

    def run(self, selections):
        with self.dev:
            compute = self.xp.cuda.get_current_stream()
            ahead = None
            for k, sel in enumerate(selections):
                staged = self._stage(k, sel)
                if ahead is not None:
                    yield ahead
                arrays, ev = staged
                compute.wait_event(ev)
                ahead = arrays
            if ahead is not None:
                yield ahead


class DataLoader:
    """Iterate over mini-batches of ``X`` (and ``y``) along axis 0.

    ``for xb, yb in DataLoader(X, y, batch_size=64, shuffle=True, seed=0): ...``
    (with ``y=None`` each item is just ``xb``).

    Arguments:
        X: array ``(N, ...)``, NumPy or CuPy. Other sequences (nested lists) go through
            ``numpy.asarray``, except that Python floats become float32, as ``torch.tensor``
            makes them: the parameters' default dtype (a float64 model takes a float64 array).
        y: None, or an array ``(N, ...)`` (class indices ``(N,)`` or targets ``(N, C)``)
            on the same device as ``X``; a NumPy/CuPy mix raises ``TypeError``.
        batch_size: positive int. The last batch holds the remaining ``N % batch_size``
            samples unless ``drop_last=True`` drops it.
        shuffle: a bool (``numpy.bool_`` too; anything else, e.g. ``"yes"`` or ``1``, raises
            ``TypeError`` rather than being read by its truthiness). False: batches follow
            the order of ``X``. True: each epoch visits the samples in a fresh order
            (without replacement).
        seed: the shuffle seed (a non-negative int). Epoch ``k`` visits the samples in
            the order ``numpy.random.default_rng([seed, k]).permutation(N)``, computed
            on the host with NumPy and therefore identical on every device.
            ``None`` draws a seed from OS entropy once, at construction, and keeps it in
            ``self.seed`` (so even an unseeded run can be replayed); with a ``comm`` of
            several processes, rank 0's draw is broadcast to all of them (so their shares
            stay disjoint). ``gpunet.manual_seed``
            does not seed it (it seeds the initial weights and Dropout's default seeds), where
            ``torch.manual_seed`` makes a PyTorch DataLoader's shuffle reproducible: for the
            same order in every run pass ``seed=`` (an int, or the ``loader.seed`` of a run
            to replay). ``Trainer.fit`` on an ``(X, y)`` pair shuffles with ``seed=0``
            unless told otherwise. A checkpoint holds no loader seed, so a run resumed with
            ``fit(..., initial_epoch=k)`` on a loader whose seed was drawn shuffles otherwise
            than the saved run: ``fit`` warns (``UserWarning``).
        drop_last: a bool, checked as ``shuffle`` is: drop the last, incomplete batch (as in
            PyTorch). With fewer samples than one batch that is every sample: a pass then
            yields nothing and warns (``UserWarning``; ``Trainer`` raises ``ValueError``).
        device: None (default): batches stay where ``X`` and ``y`` live. A device string
            (``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"sim"``): batches are delivered there.
            On a GPU device, host data that fits (``fits_on_device``) is copied there once,
            on the first pass, and batches are gathered on the device (``self.resident``
            tells); otherwise each batch is moved with ``gpunet.backend.to_device`` as it
            is produced. ``self.X``/``self.y`` stay the arrays given. ``to(device)`` sets it
            afterwards.
        comm: None, or a ``gpunet.distributed`` communicator: each process gets its share
            of every *global* batch of ``size · batch_size`` samples (``batch_size`` is the
            per-process batch), see "Sharding" below.

    ``batch_size``, ``seed``, ``shuffle``, ``drop_last``, ``epoch``, ``device`` and ``comm``
    may be assigned afterwards; they are checked as the arguments are (``loader.batch_size =
    2.5`` raises ``TypeError``, ``loader.comm = object()`` too), take effect at the next
    pass, and assigning ``device`` is ``to(device)``. ``X`` and ``y`` are fixed: assigning
    either raises ``AttributeError`` (create a new loader for other data). Replacing one of
    them alone would leave ``X`` and ``y`` of different lengths for a while, and the device
    copy of a resident loader would go on serving the old data; PyTorch's ``DataLoader``
    refuses a new ``dataset`` too (``ValueError``), and Keras takes the data at each ``fit``.

    Epochs. ``self.epoch`` counts the iterations started: each ``iter(loader)`` uses the
    current value and then advances it by one, so the first pass is epoch 0, the second
    epoch 1, and so on (an abandoned pass still counts). ``set_epoch(k)`` makes the next
    pass epoch ``k``: a run resumed after ``k`` completed epochs calls ``set_epoch(k)``
    and sees the same order it would have seen without the interruption. Unlike
    PyTorch's ``DataLoader``, whose shuffle draws from a generator that advances with
    each pass, the order here depends only on ``(seed, epoch)``.

    Batches are data: like PyTorch tensors that do not require grad, a first Dense or
    Conv2D layer computes no input gradient for them, and its ``backward`` returns None
    (``gpunet.data.is_data(xb)`` tells; pass ``xb.copy()`` to get ``dx`` for a batch).
    Without shuffling a batch is a slice of ``X`` (a view, no copy; of the device copy when
    the data is resident); NumPy views are read-only, so that an in-place edit of a batch
    (``xb /= 255``) raises NumPy's ``ValueError`` instead of changing ``X`` for every later
    epoch (PyTorch's batches are copies; ``xb = xb / 255`` or ``xb.copy()`` gives one of
    your own). With shuffling a batch is a copy gathered by fancy indexing with an index
    array of the data's array module (for resident data that fits twice: a slice of the
    epoch's shuffled copy). ``len(loader)`` is the number of batches per
    epoch: ``ceil(N / batch_size)``, or ``N // batch_size`` with ``drop_last``.

    Sharding (``comm`` of ``S`` processes, rank ``r``; PyTorch ``DistributedSampler``'s
    guarantees: disjoint, equal shares, reshuffled each epoch from the shared seed). Every
    process computes the same epoch order (above). Without ``drop_last`` it is padded to a
    multiple of ``S`` with its own first ``(-N) mod S`` entries (those samples are seen
    twice that epoch, as in ``DistributedSampler``; cycled when ``N`` is smaller than
    that, e.g. one sample on three processes: each gets it once), then cut into global
    batches of ``B = S·batch_size`` (the last one shorter, still a multiple of ``S``); process ``r``
    gets the ``r``-th of the ``S`` equal consecutive slices of each global batch. So the
    processes' batches stacked in rank order are exactly the batches one process with
    ``batch_size=B`` sees (the same examples in the same order, up to the padding), which is
    what lets a checkpoint of ``S`` processes resume on ``M``. With ``drop_last`` the last
    incomplete global batch is dropped (no padding). ``len(loader)`` counts global batches;
    ``num_samples`` stays ``N``. Shard with ``gpunet.distributed.shard(X, y, comm, ...)``.
    """

    shuffle = _args.flag_property("DataLoader", "shuffle", "Shuffle each epoch (a bool; assigning "
                                  "anything else raises, as the argument does).")
    drop_last = _args.flag_property("DataLoader", "drop_last", "Drop the last, incomplete batch (a bool, "
                                    "checked as shuffle is).")
    batch_size = _args.integer_property("DataLoader", "batch_size", "Samples per batch (a positive int; "
                                        "assigning anything else raises, as the argument does).", low=1)
    seed = _args.integer_property("DataLoader", "seed", "The shuffle seed (an int >= 0, checked on "
                                  "assignment).", low=0)
    epoch = _args.integer_property("DataLoader", "epoch", "The epoch of the next pass (an int >= 0, "
                                   "checked on assignment as by set_epoch).", low=0)
    comm = _args.checked_property("DataLoader", "comm", "None or the communicator the epochs are sharded "
                                  "over (checked on assignment as the argument is).",
                                  _args.communicator, none=True, then=lambda self: self._share_drawn_seed())
    _new_data = ("create a new DataLoader(X, y, ...) for other data (the number of samples, a device "
                 "copy of the data and the shards are made from X and y together)")
    X = _args.read_only("DataLoader", "X", "The samples given (fixed at construction).", _new_data)
    y = _args.read_only("DataLoader", "y", "The targets given, or None (fixed at construction).", _new_data)

    def __init__(self, X, y=None, batch_size=64, shuffle=False, seed=None, drop_last=False,
                 device=None, comm=None, **unknown):
        if unknown:
            raise _args.unexpected_keyword("DataLoader", unknown, _TORCH_LOADER)
        if (y is None and isinstance(X, tuple) and len(X) == 2
                and all(getattr(a, "ndim", 0) >= 1 for a in X)):
            # PyTorch's DataLoader(TensorDataset(X, y)) habit: NumPy would stack the pair into
            # two samples when their shapes agree
            raise TypeError("DataLoader: got an (X, y) tuple as X; X and y go as two arguments: "
                            "DataLoader(X, y, ...) (an (X, y) tuple is what Trainer.fit takes)")
        X = _check_array("X", X)
        if y is not None:
            y = _check_array("y", y)
            check_same_device(X, y, "DataLoader")
            if y.shape[0] != X.shape[0]:
                raise ValueError(f"DataLoader: expected X and y with the same number of "
                                 f"samples (axis 0), got X {tuple(X.shape)} and "
                                 f"y {tuple(y.shape)}")
        if X.shape[0] == 0:
            raise ValueError(f"DataLoader: expected at least one sample, got X of shape "
                             f"{tuple(X.shape)}")
        self.batch_size = _args.integer("DataLoader", "batch_size", batch_size, low=1)
        self.shuffle = shuffle
        seed = _args.integer("DataLoader", "seed", seed, low=0, none=True)
        self.seed = int(numpy.random.SeedSequence().entropy) if seed is None else seed
        # the seed drawn for seed=None (None when given): a run resumed in a new process with
        # such a loader draws another one, so its shuffles are not the saved run's
        self._drawn_seed = self.seed if seed is None else None
        self.drop_last = drop_last
        self._X, self._y = X, y
        self.epoch = 0
        self.comm = comm
        self.device = device        # resolve_device, and no resident copy (_resident, _permute)

    def _share_drawn_seed(self):
        """With a ``comm`` of several processes, a seed drawn for ``seed=None`` becomes rank
        0's on every process (one ``bcast_object``, when the loader is made or given ``comm``):
        each process drew its own, and shares cut from different orders overlap and miss
        samples, where they must be disjoint (the shards of "Sharding"). A stand-in
        communicator without ``bcast_object`` (a test's, with ``rank`` and ``size`` only) is
        used as it is."""
        comm = self.comm
        bcast = getattr(comm, "bcast_object", None)
        if bcast is not None and comm.size > 1 and self._drawn_seed is not None \
                and self._drawn_seed == self.seed:
            self.seed = self._drawn_seed = int(bcast(self.seed, root=0))

    @property
    def num_samples(self) -> int:
        """``N``, the number of samples (rows of ``X``)."""
        return int(self.X.shape[0])

    def __len__(self) -> int:
        n, b = self.num_samples, self.batch_size
        if self.comm is not None:
            b *= self.comm.size
        return n // b if self.drop_last else -(-n // b)

    def shard_order(self, epoch: int | None = None):
        """This process's samples of ``epoch``, in the order it visits them (see
        "Sharding"; without ``comm``: ``order(epoch)``, truncated with ``drop_last``)."""
        if epoch is not None:
            epoch = _args.integer("DataLoader.shard_order", "epoch", epoch, low=0)
        order = self.order(epoch)
        n, b = self.num_samples, self.batch_size
        size, rank = (1, 0) if self.comm is None else (self.comm.size, self.comm.rank)
        big = size * b
        if self.drop_last:
            order = order[:(n // big) * big]
        elif n % size:
            # pad with the order's own first entries, cycled when N < (-N) mod S (fewer
            # samples than the padding needs, as DistributedSampler repeats them)
            order = numpy.resize(order, n + size - n % size)
        parts = []
        for start in range(0, order.size, big):
            g = order[start:start + big]
            k = g.size // size
            parts.append(g[rank * k:(rank + 1) * k])
        return numpy.concatenate(parts) if parts else order[:0]

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass over the loader epoch ``epoch`` (its shuffled order)."""
        self.epoch = _args.integer("DataLoader.set_epoch", "epoch", epoch, low=0)

    def to(self, device):
        """Move every batch to ``device`` as it is produced (``None``: leave them where
        the data is). Checked now: an unusable ``"cuda"`` raises ``RuntimeError``.
        Returns ``self``. Assigning ``loader.device`` does the same."""
        self.device = device
        return self

    def _set_device(self, device):
        self._device = None if device is None else resolve_device(device, "DataLoader")
        self._resident = None
        self._permute = False

    device = property(operator.attrgetter("_device"), _set_device, doc=(
        "Where batches are delivered (None: where the data is); assigning it is ``to(device)``: "
        "checked, and resident data is copied again to the new device at the next pass."))

    @property
    def resident(self) -> bool:
        """True once the dataset has been copied whole to ``self.device`` (or already lived
        there): batches are gathered on the device, without host-to-device copies."""
        return self._resident is not None

    def order(self, epoch: int | None = None):
        """The sample order of ``epoch`` (default: the next pass) as a NumPy int64 array:
        ``arange(N)`` without shuffling, else ``default_rng([seed, epoch]).permutation(N)``."""
        epoch = self.epoch if epoch is None else _args.integer("DataLoader.order", "epoch", epoch, low=0)
        if not self.shuffle:
            return numpy.arange(self.num_samples, dtype=numpy.int64)
        return numpy.random.default_rng([self.seed, int(epoch)]).permutation(self.num_samples)

    def __iter__(self):
        if self.drop_last and not len(self):
            size = 1 if self.comm is None else self.comm.size
            n, most = self.num_samples, self.num_samples // size    # the largest batch_size that yields
            warnings.warn(f"DataLoader: drop_last=True with {n} sample{'s' * (n != 1)}, fewer than one "
                          f"batch of {self.batch_size * size}: this pass yields no batch (pass drop_last=False"
                          + (f", or a batch_size of at most {most})" if most else ")"), UserWarning, stacklevel=2)
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _source(self):
        """``(X, y, move)``: the arrays to gather batches from, and whether each batch still
        has to be moved to ``self.device``."""
        if self.device is None:
            return self.X, self.y, False
        if self._resident is None and self.device != "cpu":
            on = device_of(self.X) == self.device and (self.y is None or device_of(self.y) == self.device)
            nbytes = self.X.nbytes + (0 if self.y is None else self.y.nbytes)
            if on or fits_on_device(nbytes, self.device):
                self._resident = (to_device(self.X, self.device),
                                  None if self.y is None else to_device(self.y, self.device))
                self._permute = self.shuffle and fits_on_device(2 * nbytes, self.device)
        if self._resident is not None:
            return (*self._resident, False)
        return self.X, self.y, True

    def _staged(self):
        """Whether batches go through pinned memory on a second stream (``_Stager``):
        NumPy data, a GPU device, not resident."""
        return (self.device not in (None, "cpu") and isinstance(self.X, numpy.ndarray)
                and (self.y is None or isinstance(self.y, numpy.ndarray)))

    def _batches(self, epoch):
        X, y, move = self._source()
        device = self.device        # the attributes a batch needs, read once a pass
        xp = get_array_module(X)
        n, b = self.num_samples, self.batch_size
        stop = (n // b) * b if self.drop_last else n
        index = xp.asarray(self.order(epoch)) if self.shuffle else None
        if self.comm is not None:
            local = self.shard_order(epoch)
            stop, index = local.size, xp.asarray(local)
        if index is not None and self._permute and X is self._resident[0]:
            X, y, index = X[index], None if y is None else y[index], None   # the epoch's copy
        if move and self._staged():
            host = None if index is None else self.shard_order(epoch) if self.comm is not None \
                else self.order(epoch)
            sels = (slice(s, min(s + b, n)) if host is None else host[s:s + b]
                    for s in range(0, stop, b))
            for arrays in _Stager(X, y, b, device).run(sels):
                xb = mark_data(arrays[0])
                yield xb if self.y is None else (xb, arrays[1])
            return
        for start in range(0, stop, b):
            if index is None:
                sel = slice(start, min(start + b, n))
            else:
                sel = index[start:start + b]
            xb = X[sel]
            yb = None if y is None else y[sel]
            if move:
                xb = to_device(xb, device)
                yb = None if yb is None else to_device(yb, device)
            elif index is None and xp is numpy:
                # views of the data: an in-place edit of a batch (xb /= 255) would change X
                # for every later epoch; read-only, it raises at the edit instead (the flag
                # costs about 0.6 us per array, timeit, where a copy of a 64x784 float32 batch,
                # PyTorch's way, took 4.6 us)
                xb.flags.writeable = False
                if yb is not None:
                    yb.flags.writeable = False
            mark_data(xb)
            yield xb if self.y is None else (xb, yb)

    def __repr__(self):
        return (f"DataLoader(num_samples={self.num_samples}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, seed={self.seed}, drop_last={self.drop_last}, "
                f"device={self.device!r}, epoch={self.epoch}"
                + ("" if self.comm is None else f", rank={self.comm.rank} of {self.comm.size}") + ")")
