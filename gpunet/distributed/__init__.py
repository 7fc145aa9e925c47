"""Data-parallel training across processes: MPI (mpi4py) on CPUs, NCCL between GPUs.

One process per device (CPU process or GPU), each with a full copy of the model and its
share of every global batch; the gradients are averaged before each step, so all copies
stay identical. A script::

    comm = gpunet.distributed.init()            # rank, size, local_rank (world of 1 without mpiexec)
    model = gpunet.models.mlp().to(comm.device)
    gpunet.distributed.broadcast_parameters(model, comm)       # the root's weights everywhere
    opt = gpunet.distributed.DistributedOptimizer(gpunet.optim.SGD(model.parameters(), lr=0.1), comm)
    loader = gpunet.distributed.shard(X, y, comm, batch_size=32, seed=0)   # 32 per process
    gpunet.Trainer(model, loss_fn, opt, comm=comm).fit(loader, epochs=5)

launched with ``mpiexec -n 2 python script.py`` (or ``srun``). Names (DESIGN.md §13):
``init``, ``Communicator``, ``broadcast_parameters``, ``DistributedOptimizer``, ``shard``,
``SyncBatchNorm``. See docs/guide.md, "Training on several processes".
"""
from __future__ import annotations

from .. import _args
from .comm import Communicator, Handle, check_root, init, launched_by_mpi
from .optimizer import DistributedOptimizer
from .batchnorm import SyncBatchNorm


def broadcast_parameters(model, comm, root=0):
    """Give every process the ``root``'s parameters and buffers (running statistics,
    dropout seeds and counters), in place; returns ``model``.

    It also sets each ``Dropout`` layer's ``shard`` to ``comm.rank``: with the same seed
    and counter everywhere, process ``r`` then draws its own stretch of each mask stream
    (see ``gpunet.layers.Dropout``), never another process's mask.
    """
    from ..layers import Dropout
    if not hasattr(model, "named_parameters"):
        raise TypeError(f"broadcast_parameters: expected a gpunet Layer, got {type(model).__name__}")
    _args.communicator("broadcast_parameters", "comm", comm, ("rank", "size", "broadcast", "bcast_object"))
    root = check_root("broadcast_parameters", root, comm.size)
    for _, p in model.named_parameters():
        comm.broadcast(p.data, root=root)
    scalars = {}
    for name, owner, attr in model.named_buffers():
        v = getattr(owner, attr)
        if hasattr(v, "shape"):
            comm.broadcast(v, root=root)
        else:
            scalars[name] = v
    scalars = comm.bcast_object(scalars, root=root)
    for name, owner, attr in model.named_buffers():
        if name in scalars:
            setattr(owner, attr, scalars[name])
    for m in model.modules():
        if isinstance(m, Dropout):
            m.shard = comm.rank
    return model


def shard(X, y, comm, seed=0, batch_size=64, shuffle=True, drop_last=False, device=None):
    """A ``DataLoader`` over this process's share of ``(X, y)``: ``batch_size`` samples per
    process and step, disjoint equal shares of each global batch, reshuffled each epoch
    from ``seed`` (the same on every process). Padding, order and what a run on one
    process with ``batch_size · comm.size`` sees: ``gpunet.data.DataLoader``, "Sharding"."""
    from ..data import DataLoader
    _args.communicator("shard", "comm", comm)     # None would give every process all of the data
    return DataLoader(X, y, batch_size=batch_size, shuffle=shuffle, seed=seed,
                      drop_last=drop_last, device=device, comm=comm)


__all__ = ["init", "Communicator", "Handle", "launched_by_mpi", "broadcast_parameters",
           "DistributedOptimizer", "shard", "SyncBatchNorm"]
