"""All distributed code in one place. The same calls work under `python -m` (world size 1) and
under `torchrun` (PyTorch DDP; gloo on CPU, NCCL on GPU). Only rank 0 writes files.
"""

from __future__ import annotations

import datetime
import inspect
import logging
import os
import re
from typing import Any

import torch
import torch.distributed as dist

from repro.errors import ReproError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def _export_slurm_env() -> None:
    """Under SLURM (Hydra's submitit launcher, one task per GPU), set the variables torchrun would."""
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SUBMITIT_FOLDER" in os.environ:
        from submitit.helpers import TorchDistributedEnvironment

        TorchDistributedEnvironment().export()


def setup(device_name: str = "auto") -> torch.device:
    """Join the process group when torchrun or SLURM launched us; return this rank's device."""
    use_cuda = torch.cuda.is_available() and not device_name.startswith("cpu")
    _export_slurm_env()
    if launched_by_torchrun() and not is_distributed():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
        if rank() != 0:  # rank 0 says what every rank does (the data line): once, not once per rank
            logging.getLogger("repro").setLevel(logging.WARNING)
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def ddp(net: torch.nn.Module) -> torch.nn.Module:
    """`net` under DistributedDataParallel with BN statistics per replica (§4.2): buffers are not synchronized
    at each forward. Where torch has `forward_sync_buffers`, that (its init-time broadcast copies rank 0's
    buffers, which every rank already holds: the same seed or the same checkpoint); else broadcast_buffers,
    which newer torch deprecates with a warning on every rank."""
    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel).parameters:
        return torch.nn.parallel.DistributedDataParallel(net, forward_sync_buffers=False)
    return torch.nn.parallel.DistributedDataParallel(net, broadcast_buffers=False)


def teardown(clean: bool = True) -> None:
    """Leave the process group: after a barrier when the run ended well; at once after a failure, when the
    other ranks may be gone (a barrier would raise, or wait for the group's timeout)."""
    if not is_distributed():
        return
    try:
        if clean:
            dist.barrier()
    finally:
        try:
            dist.destroy_process_group()
        except RuntimeError:
            pass


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s object on every rank (e.g. the run directory rank 0 chose)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place; returns `t` for chaining."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over ranks, in place."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def shard(n: int) -> range:
    """This rank's share of n items, each item on exactly one rank (no padding, unlike
    DistributedSampler, so distributed evaluation counts every image once)."""
    return range(rank(), n, world_size())


def all_gather_objects(obj: Any) -> list[Any]:
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_batchnorm(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """train.sync_bn (a step beyond the paper, whose BN statistics are per replica): every BN layer
    normalizes with the statistics of the global batch. Per-activation BN survives the conversion
    (the model flattens around it). Nothing to synchronize at world size 1."""
    if not is_distributed():
        return model
    if device.type == "cpu":  # torch's SyncBatchNorm raises on CPU tensors at the first training step
        raise ReproError("train.sync_bn=true needs GPUs: PyTorch's SyncBatchNorm cannot synchronize CPU tensors; "
                         "drop train.sync_bn for a CPU (gloo) run")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def average_buffers(model: torch.nn.Module) -> None:
    """Make BN running statistics identical on every rank before evaluation: BN statistics are per
    replica during training, as in the paper, so each rank's moving averages drift apart (timm's
    `distribute_bn` does the same)."""
    if not is_distributed():
        return
    for name, buf in model.named_buffers():
        if buf.dtype.is_floating_point and ("running_mean" in name or "running_var" in name):
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            buf /= world_size()


def lost_ranks(e: RuntimeError, step: int) -> str:
    """What a rank says when a collective failed because another rank died or was stopped: gloo's first line,
    without its source position and advice."""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    why = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0][:120]
    return f"rank {rank()} lost the other ranks at step {step} ({why})"
