"""torch.distributed under `torchrun`: process group set-up, rank-0-only writes, and the few collectives we need.

Every helper is a no-op in a single process, so the training loop reads the same with or without DDP.
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK (and MASTER_ADDR / MASTER_PORT); multi-node runs use its
rendezvous flags (`--nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:PORT`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from thawline.core.errors import ThawlineError


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if active() else 0


def is_main() -> bool:
    """Rank 0 writes files and prints; the other ranks only compute."""
    return rank() == 0


def init(device_pref: str = "auto") -> None:
    """Join the process group torchrun described in the environment (idempotent; nothing without torchrun).

    Backend: NCCL when the ranks train on CUDA GPUs, gloo on CPU."""
    if env_world_size() <= 1 or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():  # pragma: no cover - every official build has it
        raise ThawlineError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; run one process")
    use_cuda = device_pref != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    except (RuntimeError, ValueError) as e:
        raise ThawlineError(
            f"could not join the torchrun process group ({str(e).splitlines()[0]}); check --rdzv-endpoint / "
            "MASTER_ADDR and that every node runs the same command"
        ) from None


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


@contextmanager
def local_main_first() -> Iterator[None]:
    """Let local rank 0 build a disk cache first; the other ranks of the node then read it instead of rebuilding."""
    if not active():
        yield
        return
    if local_rank() != 0:
        dist.barrier()
    yield
    if local_rank() == 0:
        dist.barrier()


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over ranks (one collective)."""
    if not active():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(t)
    return t.cpu().tolist()


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's CPU tensor in rank order (shards may differ in length)."""
    if not active():
        return tensor
    parts: list[torch.Tensor | None] = [None] * world_size()
    dist.all_gather_object(parts, tensor.cpu())
    return torch.cat([p for p in parts if p is not None and p.numel() > 0] or [tensor.cpu()])


def broadcast_object(obj):
    """Rank 0's value of `obj` on every rank (e.g. an LR chosen by rank 0)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _Forward(torch.nn.Module):
    """A forward function (e.g. the trainable suffix over cached features) as a module owning the model."""

    def __init__(self, model: torch.nn.Module, forward) -> None:
        super().__init__()
        self.model = model
        self._forward = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)


def wrap(forward, model: torch.nn.Module, device: torch.device):
    """`forward` under DistributedDataParallel, covering the parameters of `model` that train in this phase.

    DDP registers only parameters with requires_grad=True when it is built, so the trainer wraps anew at every
    phase, after freezing: frozen stages never enter its gradient buckets, a thaw adds the new stages to the
    next wrapper, and no phase needs find_unused_parameters (every trainable stage is on the forward path)."""
    if not active() or not any(p.requires_grad for p in model.parameters()):
        return forward
    from torch.nn.parallel import DistributedDataParallel

    module = model if forward is model else _Forward(model, forward)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)
