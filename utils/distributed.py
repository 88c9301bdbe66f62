"""torchrun / DistributedDataParallel helpers; every function is a no-op in a single process."""
import os

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device_arg: str | None = None) -> torch.device:
    """Join the process group when launched by torchrun; pick this rank's device and make it
    the current one (cuDNN handles, pinned-memory threads, NCCL and the CUDA RNG calls that
    take no device all use the current device, which is cuda:0 unless set)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not is_dist():
        use_cuda = torch.cuda.is_available() and device_arg != "cpu"
        dist.init_process_group("nccl" if use_cuda else "gloo")
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return torch.device("cuda", local)
        return torch.device("cpu")
    device = torch.device(device_arg or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)
    return device


def cleanup():
    if is_dist():
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast(t: torch.Tensor, src: int = 0) -> torch.Tensor:
    """``t`` replaced by rank ``src``'s, in place."""
    if is_dist():
        dist.broadcast(t, src)
    return t


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm's running statistics) on every rank, as DDP itself copies
    them before each training forward: after an epoch each rank's last forward has moved its
    own, and evaluation, an eval-mode CS pass and a resume must not see which rank ran."""
    if not is_dist():
        return
    buffers = [b for b in module.buffers() if b is not None]
    for dtype in sorted({b.dtype for b in buffers}, key=str):  # one collective per dtype
        group = [b for b in buffers if b.dtype == dtype]
        flat = broadcast(torch.cat([b.reshape(-1) for b in group]))
        for b, part in zip(group, flat.split([b.numel() for b in group])):
            b.copy_(part.view_as(b))


def barrier():
    if is_dist():
        dist.barrier()


def broadcast_object(obj):
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_object(obj) -> list:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not is_dist():
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def agree_max(flags: torch.Tensor) -> list[float]:
    """The element-wise maximum of ``flags`` (a small tensor on this rank's device) over the
    ranks, read back to the host: one all-reduce and one wait for the device."""
    if is_dist():
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags.tolist()
