"""One step of a ``torchrun`` job done once: rank 0 computes an array, every rank receives it.

``shrink`` uses it for the teacher's vectors: one process encodes the corpus (or sends it to Ray)
and writes the cache, the others wait and get the same array over the process group, so nodes
need not share a disk. A single process (no ``WORLD_SIZE``) just calls the function.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta

import numpy as np

# Rank 0 may encode a large corpus while the others wait: far longer than the default 30 minutes
# of a collective. A rank that dies still ends the job: torchrun stops the others.
WAIT = timedelta(hours=24)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the number of processes, from torchrun's environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def on_rank0(compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``compute()`` on rank 0, its result on every rank (a copy, received over gloo)."""
    rank, world = rank_and_world()
    if world == 1:
        return compute()
    import torch
    import torch.distributed as dist

    from distill.trainer import _setup_distributed

    _setup_distributed()  # the trainer's process group, created now rather than at its first step
    group = dist.new_group(backend="gloo", timeout=WAIT)  # CPU tensors, whatever the default backend
    header: list[object] = [None]
    if rank == 0:
        try:
            array = np.ascontiguousarray(compute())
        except BaseException as e:
            dist.broadcast_object_list([f"{type(e).__name__}: {e}"], src=0, group=group)
            raise
        header = [(array.shape, array.dtype.str)]
    dist.broadcast_object_list(header, src=0, group=group)
    if isinstance(header[0], str):
        raise RuntimeError(f"rank 0 failed, so rank {rank} stops too: {header[0]}")
    shape, dtype = header[0]
    tensor = torch.from_numpy(array) if rank == 0 else torch.empty(shape, dtype=_torch_dtype(dtype))
    dist.broadcast(tensor, src=0, group=group)
    dist.destroy_process_group(group)
    return tensor.numpy()


def _torch_dtype(numpy_dtype: str):
    import torch

    return torch.from_numpy(np.empty(0, dtype=np.dtype(numpy_dtype))).dtype
