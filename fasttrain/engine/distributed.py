"""Process-group setup from the torchrun environment, the device of this rank, and exact reductions."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from fasttrain.errors import UserError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, local_rank: int = 0, *, asked: str = "[train] device = \"cuda\"",
                fix: str = "use --set train.device=cpu (or \"auto\") or run on a GPU machine") -> torch.device:
    """"auto" takes CUDA when present; asking for CUDA on a machine without it is a user error quoting `asked`."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise UserError(f"{asked} but no CUDA device is available here; {fix}")
    if requested == "cpu" or not has_cuda:
        return torch.device("cpu")
    return torch.device("cuda", local_rank)


def pick_cli_device(choice: str) -> torch.device:
    """The device of a command's --device choice (eval, predict, eval --report)."""
    return pick_device(choice, asked=f"--device {choice}", fix="use --device cpu or auto")


def init_distributed(requested_device: str, backend: str, timeout_s: int) -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun); start the process group when world > 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(requested_device, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        chosen = backend if backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        if chosen == "nccl" and device.type != "cuda":
            raise UserError("[dist] backend = \"nccl\" needs CUDA devices; use \"gloo\" (or \"auto\") on CPU")
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _this_attempts_store(world_size, timeout)
        dist.init_process_group(
            backend=chosen,
            timeout=timeout,
            device_id=device if chosen == "nccl" else None,
            **({"store": store, "rank": rank, "world_size": world_size} if store is not None else {}),
        )
    return DistInfo(rank, world_size, local_rank, device)


def _this_attempts_store(world_size: int, timeout: datetime.timedelta) -> dist.Store | None:
    """Under torchrun, the agent's store with keys of its own for this restart attempt; None elsewhere.

    torchrun keeps one store across worker restarts and (torch 2.14) the previous attempt's process-group
    keys stay in it: a restarted gloo group reads the dead workers' addresses and hangs until the timeout
    (pytorch/pytorch#135712). A prefix per TORCHELASTIC_RESTART_COUNT keeps the attempts apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    agent_store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                                is_master=False, timeout=timeout)
    return dist.PrefixStore(f"fasttrain/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", agent_store)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a tensor across ranks in place (exact counts, never an average of averages)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(obj: object, info: DistInfo) -> list:
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's object on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
