"""The FLOPs reduction FPGM and SFP report for a uniform keep ratio, to compare with their tables.

Their counting (``utils/cifar_resnet_flop.py`` of he-y/soft-filter-pruning, and its ImageNet
counterpart) is analytic, not measured: conv multiply-accumulates only, each at its stage's
output resolution. Reproduced here, quirks included, because the published numbers use it.
"""
from ..errors import UserError


def fpgm_flops_reduction(arch: str, keep_ratio: float) -> float:
    """FLOPs reduction (0..1) for keep ratio ``p`` (0.6 = "40% pruned").

    The stem ×p; the first conv of a block ×p (its input is the unpruned residual stream),
    except in the network's first block, whose input is the pruned stem: ×p²; the other convs
    of a block ×p². Reproduces their tables, e.g. ResNet-56 at 40% → 52.6%, ResNet-50 at 30% →
    42.2%. ResNet-101 at 30% gives 44.1% where the papers print 42.2% (ResNet-50's value).
    """
    if not 0 < keep_ratio <= 1:
        raise UserError(f"keep ratio must be in (0, 1], got {keep_ratio}")
    name = arch.removeprefix("imagenet_")
    depth = int(name[len("resnet"):]) if name.startswith("resnet") and name[6:].isdigit() else 0
    if arch == name and depth in (20, 32, 44, 56, 110):
        count = _fpgm_cifar
    elif arch != name and depth in (18, 34):
        count = _fpgm_imagenet_basic
    elif arch != name and depth in (50, 101, 152):
        count = _fpgm_imagenet_bottleneck
    else:
        raise UserError(f"no FPGM FLOPs formula for {arch!r}; use resnet20/32/44/56/110 or "
                        "imagenet_resnet18/34/50/101/152")
    return 1 - count(depth, keep_ratio) / count(depth, 1.0)


def _fpgm_cifar(depth: int, p: float) -> float:
    n = (depth - 2) // 6
    widths, sizes = (16, 32, 64), (32, 16, 8)
    macs = 16 * 3 * 9 * 32 * 32 * p
    for s, (c, hw) in enumerate(zip(widths, sizes)):
        for b in range(n):
            c_in = widths[s - 1] if s and not b else c
            first = p * p if not s and not b else p
            macs += 9 * hw * hw * c * (c_in * first + c * p * p)
    return macs


_IMAGENET_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                    152: (3, 8, 36, 3)}
_IMAGENET_WIDTHS, _IMAGENET_SIZES = (64, 128, 256, 512), (56, 28, 14, 7)


def _fpgm_imagenet_basic(depth: int, p: float) -> float:
    macs = 64 * 3 * 49 * 112 * 112 * p  # downsample convs are not counted
    for s, (c, hw, n) in enumerate(zip(_IMAGENET_WIDTHS, _IMAGENET_SIZES, _IMAGENET_BLOCKS[depth])):
        for b in range(n):
            # FPGM's script corrects the input width of the first conv of stages 2 and 4 but
            # not of stage 3 (a variable is overwritten), and its published numbers include it
            c_in = _IMAGENET_WIDTHS[s - 1] if s in (1, 3) and not b else c
            first = p * p if not s and not b else p
            macs += 9 * hw * hw * c * (c_in * first + c * p * p)
    return macs


def _fpgm_imagenet_bottleneck(depth: int, p: float) -> float:
    macs = 64 * 3 * 49 * 112 * 112 * p  # downsample convs counted, unpruned
    for s, (c, hw, n) in enumerate(zip(_IMAGENET_WIDTHS, _IMAGENET_SIZES, _IMAGENET_BLOCKS[depth])):
        for b in range(n):
            c_in = (64 * p if not s else 4 * _IMAGENET_WIDTHS[s - 1]) if not b else 4 * c
            macs += hw * hw * c * (c_in * p + 9 * c * p * p + 4 * c * p * p)
            if not b:
                macs += hw * hw * 4 * c * c_in
    return macs
