"""Data-parallel training across processes started by ``torchrun``.

Every rank draws the same global batch (the data generator is seeded identically) and
keeps its contiguous share, so rank order reproduces the global batch. Gradients are
averaged with one all-reduce per step, and after each step every rank takes rank 0's
buffers (BatchNorm running statistics, which each rank updates from its own share), so
all ranks hold the same state after every step, as with ``DistributedDataParallel``. Graph losses see either each rank's local batch
(default, cheap) or the global batch (``run.global_batch_graph``): features are
all-gathered *with* gradients, every rank computes the same global loss, and the
averaged gradient equals the single-process gradient of that loss.

Backend: NCCL on CUDA, gloo on CPU. Without ``WORLD_SIZE > 1`` in the environment
everything here is a no-op, so the same loop runs in one process.

Examples
--------
>>> ctx = DistributedContext.from_env(device="cpu")  # not under torchrun
>>> ctx.enabled, ctx.rank, ctx.world_size
(False, 0, 1)
>>> import torch
>>> ctx.shard(torch.arange(4)).tolist()
[0, 1, 2, 3]
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from geokd.models.outputs import ModelOutputs

__all__ = ["DistributedContext"]


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in a (possibly single-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, *, device: str | torch.device = "cpu") -> "DistributedContext":
        """Join the process group described by torchrun's variables, if any."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        rank = int(os.environ["RANK"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        if not dist.is_initialized():
            backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        return cls(rank=rank, world_size=world, local_rank=local_rank)

    def device_for(self, device: str | torch.device) -> torch.device:
        """On CUDA each rank takes its local GPU; on CPU the device is unchanged."""
        device = torch.device(device)
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def check_batch(self, size: int, *, what: str) -> None:
        if size % self.world_size:
            raise ValueError(
                f"{what}: expected a batch size divisible by the {self.world_size} processes, got {size} "
                "(change data.batch_size or set data.drop_last=true)"
            )

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch."""
        if not self.enabled:
            return tensor
        self.check_batch(tensor.shape[0], what="global batch")
        return tensor.chunk(self.world_size)[self.rank]

    def broadcast_module(self, module: nn.Module) -> None:
        """Make every rank start from rank 0's parameters and buffers."""
        if not self.enabled:
            return
        with torch.no_grad():
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def broadcast_buffers(self, *modules: nn.Module | None) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics), one broadcast per dtype.

        Parameters stay equal on their own (same start, averaged gradients, same update);
        buffers are updated from each rank's own share of the batch and would drift apart.
        As ``torch.nn.parallel.DistributedDataParallel`` does by default, rank 0's win.
        """
        if not self.enabled:
            return
        buffers = [b for m in modules if m is not None for b in m.buffers()]
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for b in buffers:
            by_dtype.setdefault(b.dtype, []).append(b)
        with torch.no_grad():
            for group in by_dtype.values():
                flat = torch.cat([b.reshape(-1) for b in group])
                dist.broadcast(flat, src=0)
                offset = 0
                for b in group:
                    b.copy_(flat[offset:offset + b.numel()].view_as(b))
                    offset += b.numel()

    def average_gradients(self, params: list[nn.Parameter]) -> None:
        """All-reduce the gradients (one flat buffer) and divide by the world size."""
        if not self.enabled:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n

    def gather_with_grad(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's tensor along the batch; gradients flow back to each rank."""
        if not self.enabled:
            return tensor
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(tensor.contiguous()), dim=0)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's tensor along the batch, no gradient."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    def gather_outputs(self, outputs: ModelOutputs, *, with_grad: bool) -> ModelOutputs:
        fn = self.gather_with_grad if with_grad else self.gather
        return ModelOutputs(fn(outputs.logits), [fn(f) for f in outputs.features])

    def all_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum a metric tensor over ranks (for epoch statistics)."""
        if not self.enabled:
            return tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()
