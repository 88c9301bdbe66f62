"""How a run computes: its seeds, the kernels CUDA picks (docs/runs.md, 'Resuming a run'),
the autocast dtype of ``--amp`` (docs/runs.md, 'Mixed precision')."""
import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    choose_kernels(deterministic)


def choose_kernels(deterministic: bool) -> None:
    """How CUDA picks its kernels (a CPU run is bit for bit either way; docs/runs.md,
    'Resuming a run'). By default cuDNN times its algorithms and keeps the fastest, and convs
    run in TF32, torch's default: fast, and a resumed run differs in the last bits.
    ``--deterministic``: deterministic kernels (torch warns once, naming it, for an op that
    has none), no benchmarking, TF32 off in convs and matrix products."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def amp_dtype(args, device) -> torch.dtype | None:
    """``--amp``'s autocast dtype: bfloat16 where the device computes it (``auto``, the
    default), else float16 (with a GradScaler); ``bf16``/``fp16`` as asked. bfloat16 keeps
    float32's exponent range, which FSDP needs: its attenuated filters shrink by ζ every epoch
    and leave float16's normal range (6e-5) long before float32's (docs/runs.md, 'Mixed
    precision')."""
    if not args.amp:
        return None
    if args.amp == "fp16" or (args.amp == "auto" and not computes_bf16(device)):
        return torch.float16
    return torch.bfloat16


def computes_bf16(device: torch.device) -> bool:
    """Whether ``device`` has bfloat16 arithmetic of its own (a CPU always through torch's
    kernels; a GPU from Ampere on — emulation on older ones is slower than float32)."""
    if device.type != "cuda":
        return True
    return torch.cuda.is_bf16_supported(including_emulation=False)


def amp_warning(args, device) -> str | None:
    """The line a run logs when ``--amp`` falls back to float16."""
    if args.amp == "auto" and amp_dtype(args, device) == torch.float16:
        return (f"warning: --amp: {device} has no bfloat16, so this run trains in float16 with "
                "a GradScaler; FSDP's attenuated filters leave float16's range sooner than "
                "float32's (docs/runs.md, 'Mixed precision')")
    return None
