"""torch.distributed set-up shared by ``longgen batch`` and pipelined runs: torchrun's environment,
the process group (gloo for CPU tensors, and NCCL for CUDA tensors when the rank has a GPU) and
each rank's device."""

from __future__ import annotations

import os


def world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run alone."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def restart_count() -> int:
    """How many times torchrun's elastic agent has restarted this group of workers (0 at first)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", 0) or 0)


def init_distributed(size: int, local_rank: int, name: str):
    """The process group under torchrun (gloo, plus NCCL for CUDA tensors with GPUs); None when alone.

    Under torchrun's agent the store is the agent's; this attempt's keys are prefixed with
    ``name`` and the restart count, so a restarted group never reads the addresses its killed
    predecessor left there (gloo's full-mesh connect would otherwise dial dead peers)."""
    if size <= 1:
        return None
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    if dist.is_initialized():
        return dist
    # CUDA tensors through NCCL, CPU tensors (the builtin priors, small control messages) through gloo
    backend = "cpu:gloo,cuda:nccl" if cuda else "gloo"
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), size, is_master=False)
        prefix = f"{name}/{restart_count()}"
        dist.init_process_group(backend, store=dist.PrefixStore(prefix, store), rank=int(env["RANK"]),
                                world_size=size)
    else:
        dist.init_process_group(backend)
    return dist


def rank_device(local_rank: int) -> str:
    """This rank's GPU (``cuda:LOCAL_RANK``) when there is one, else the CPU."""
    import torch

    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
