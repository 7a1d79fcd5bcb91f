"""One run, several processes (``torchrun``, ``accelerate launch``): every rank trains, one
writes. Both launchers set ``RANK`` and ``WORLD_SIZE``; a plain ``python -m training`` has
neither and is rank 0 of 1."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    return rank() == 0


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_device(use_cpu: bool = False) -> str:
    """This process's accelerator: one GPU per rank on a node, as the launchers intend."""
    import torch

    if use_cpu or not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def join_process_group() -> None:
    """The generation stages have no Trainer to set up the process group; they only need
    barriers and a sum, which gloo does on any machine."""
    import torch.distributed as dist

    if world_size() > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo")


def wait_for_everyone() -> None:
    """A barrier once the trainer has set up the process group; a no-op in one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def sum_over_ranks(counts: dict[str, int]) -> dict[str, int]:
    """Counts each rank kept of its own share, added up across ranks (unchanged in one)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return counts
    keys = sorted(counts)
    totals = torch.tensor([counts[k] for k in keys], dtype=torch.long)
    dist.all_reduce(totals)
    return dict(zip(keys, totals.tolist(), strict=True))
