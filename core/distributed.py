"""torch.distributed for ``icm evaluate`` and ``icm train`` under torchrun (and ``--workers``): joining
the process group, gathering python objects to every rank, leaving together, and the device a rank
runs on when none is asked for."""

from __future__ import annotations

import atexit
import os
import pickle

import torch


def default_device(requested: str | None = None) -> torch.device:
    """The requested device; else this rank's GPU (torchrun's LOCAL_RANK) when there is one; else the CPU."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def dist_setup() -> tuple[int, int]:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA); (rank, world)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        gpu = default_device()
        if gpu.type == "cuda":  # one GPU per rank, as torchrun expects
            torch.cuda.set_device(gpu)
        dist.init_process_group("nccl" if gpu.type == "cuda" else "gloo")
        # a rank that leaves with the group alive can abort in gloo's thread teardown ("terminate called
        # without an active exception", SIGABRT), and torchrun then kills the other ranks
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def leave_together() -> None:
    """The end of a run on every rank, after rank 0's last write. A rank that returned early (the
    others had nothing left to do once the scores were gathered) tore its gloo pairs down while rank
    0 was still writing the report, and a rank then died of SIGABRT in gloo's threads ("terminate
    called without an active exception"), as `icm train` once did: a few label-free runs in a hundred."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def gather(obj, world: int) -> list:
    """``obj`` of every rank, in rank order, on every rank; a peer that stopped is ``PeerStopped``."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * world
    try:
        dist.all_gather_object(out, obj)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        # gloo raises when a peer's socket closes; a buffer cut short unpickles as EOFError
        from icm.errors import PeerStopped

        raise PeerStopped(f"another worker stopped while results were exchanged ({type(exc).__name__})") from exc
    return out
