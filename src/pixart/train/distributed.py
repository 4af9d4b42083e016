"""One process or many: torchrun's environment decides (nanoGPT's RANK detection).

The model is written for one device; data parallelism is applied from outside: DDP, or FSDP2
(`fully_shard` per block, then the root) with a bf16 mixed-precision policy over fp32 master weights.
"""

from __future__ import annotations

import datetime
import gc
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.distributed as dist
from torch import nn

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

    from pixart.model.dit import DiT
    from pixart.model.pixart import PixArt


@dataclass
class World:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    mesh: DeviceMesh | None = None  # FSDP's, once wrap_model made one (let_go_of_the_group clears it)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        backend = dist.get_backend() if dist.is_initialized() else "none"
        return f"{self.world_size} process(es), rank {self.rank}, device {self.device}, backend {backend}"


def init_distributed(device: str | None = None, timeout_minutes: float = 30.0) -> World:
    """Read torchrun's RANK/WORLD_SIZE/LOCAL_RANK; NCCL on CUDA, gloo on CPU; a single process otherwise.
    `timeout_minutes`: how long a collective waits for a process that does not come (stuck) before it fails."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if use_cuda:
        index = torch.device(device).index if device else None
        if index is not None and world_size > 1:  # torchrun gives each process its own GPU
            raise ValueError(
                f"device {device} under torchrun: each process trains on cuda:LOCAL_RANK; pass cuda, and choose "
                "the GPUs with CUDA_VISIBLE_DEVICES"
            )
        index = local_rank if index is None else index  # one process: the GPU asked for (it ran on cuda:0)
        torch.cuda.set_device(index)
        torch_device = torch.device("cuda", index)
    else:
        torch_device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        # Imported before the group exists: its functions default to `group=group.WORLD`, evaluated at import,
        # and imported after, they would hold the group past destroy_process_group (see let_go_of_the_group).
        import torch.distributed.nn as _group_world_defaults  # noqa: F401

        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(minutes=timeout_minutes),
            device_id=torch_device if use_cuda else None,
        )
    return World(rank, world_size, local_rank, torch_device)


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def all_reduce_max(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def all_reduce_mean(tensor: torch.Tensor, world: World) -> torch.Tensor:
    if world.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= world.world_size
    return tensor


def all_gather_flat(tensor: torch.Tensor, world: World) -> list[float]:
    """Every rank's `tensor` (1-D), rank 0's first, as one list of floats on every rank."""
    if not world.distributed:
        return tensor.tolist()
    parts = [torch.empty_like(tensor) for _ in range(world.world_size)]
    dist.all_gather(parts, tensor)
    return torch.cat(parts).tolist()


def wrap_model(model: PixArt | DiT, world: World, parallel: str, bf16: bool) -> nn.Module:
    """DDP (gradients all-reduced) or FSDP2 (parameters sharded per block); the same module single-process."""
    if not world.distributed:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        policy = MixedPrecisionPolicy()  # fully_shard's default: it casts nothing, so fp32 runs stay fp32
        if bf16:
            # bf16 copies of the weights for the products, as autocast makes them in one process; the inputs
            # left alone: cast, every block's input would be bf16 (the residual stream) and so would the
            # root's timesteps (t = 999 is 1000 in bf16) and micro-conditions.
            policy = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False
            )
        from torch.distributed.device_mesh import init_device_mesh

        # One mesh for every model wrapped, so one to release: a second would leave the first's hold on the
        # group (DTensor's caches keep a mesh for the process's life) and gloo's threads past its destroy.
        if world.mesh is None:
            world.mesh = init_device_mesh(world.device.type, (world.world_size,))
        for block in model.blocks:
            fully_shard(block, mesh=world.mesh, mp_policy=policy)
        fully_shard(model, mesh=world.mesh, mp_policy=policy)
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[world.local_rank] if world.device.type == "cuda" else None)


def gather_full(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Whole tensors from a state dict that FSDP2 may have sharded: a collective, so every rank calls it."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in state.items()}


def unwrap(model: nn.Module) -> PixArt | DiT:
    """The model inside a DDP wrapper (FSDP2 shards in place: its model is its own)."""
    return cast("PixArt | DiT", getattr(model, "module", model))


def gradient_sync(wrapped: nn.Module, sync: bool) -> AbstractContextManager:
    """DDP's no_sync() for the micro-batches before an accumulated step's last; a no-op where nothing is
    reduced during backward (one process) or where the reduction has no such switch (FSDP2)."""
    no_sync = getattr(wrapped, "no_sync", None)
    return nullcontext() if sync or no_sync is None else no_sync()


def let_go_of_the_group(world: World, *, destroy: bool) -> None:
    """Drop this process's hold on the process group (and destroy it if `destroy`), so that its threads end
    while the interpreter is still alive.

    gloo's threads left to the interpreter's exit aborted a rank there now and then (SIGABRT, "terminate
    called without an active exception": a thread freeing a tensor after Python had gone;
    pytorch/pytorch#190489). destroy_process_group() ends them only once nothing else holds the group, and
    under FSDP more did: its device mesh (`_pg_registry`, read when torch.compile traces through it), which
    DTensor's caches keep for the life of the process; the parameter groups inside the model's reference
    cycles, which wait for the collector; and torch.distributed.nn's default arguments where it was imported
    after the group was made (init_distributed imports it first). A group the caller made stays in
    torch.distributed's tables until the caller destroys it.
    """
    registry = getattr(world.mesh, "_pg_registry", None)  # private: torch 2.13 has no public way to let go
    if isinstance(registry, dict):
        registry.clear()
    world.mesh = None
    if destroy and dist.is_initialized():
        dist.destroy_process_group()
    for _ in range(10):  # freeing one cycle can leave another unreachable: the main rank's took two passes
        if not gc.collect():
            break
