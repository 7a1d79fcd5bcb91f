"""One run, several processes (``torchrun``, ``accelerate launch``): every rank trains, one
writes. Both launchers set ``RANK``; a plain ``python -m training`` has none and is rank 0."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


def wait_for_everyone() -> None:
    """A barrier once the trainer has set up the process group; a no-op in one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
