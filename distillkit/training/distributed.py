"""torchrun-aware data parallelism for a trainer: the process group, the rank and world size, and gradients summed
across ranks by hand."""

from __future__ import annotations

import os

import torch


class Distributed:
    """torchrun-aware helpers. Gradients are summed across ranks by hand (not DDP hooks) so that every rank takes
    every optimiser step, even a rank whose shards ran out this epoch (it contributes zero gradient and zero
    samples): every sample is used exactly once per epoch and all ranks keep identical weights and optimiser state.
    """

    def __init__(self, device: torch.device):
        dist = torch.distributed
        if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.on = dist.is_initialized()
        self.rank = dist.get_rank() if self.on else 0
        self.world = dist.get_world_size() if self.on else 1
        self.device = device

    def max(self, value: int) -> int:
        if not self.on:
            return value
        t = torch.tensor([value], dtype=torch.int64)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return int(t.item())

    def average_gradients(self, model: torch.nn.Module, local_samples: int) -> int:
        """grad <- sum over ranks of grad(sum of per-sample losses) / total samples. Returns the total."""
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.reshape(-1) for p in params] + [torch.tensor([float(local_samples)],
                                                                               device=params[0].device)])
        if self.on:
            torch.distributed.all_reduce(flat)
        total = max(int(round(flat[-1].item())), 1)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset:offset + n].view_as(p) / total)
            offset += n
        return total

    def barrier(self) -> None:
        if self.on:
            torch.distributed.barrier()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
