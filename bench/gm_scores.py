"""The geometric-median criterion's scores: each pair once (``criteria.gm``, ``torch.pdist``)
against every pair twice (``torch.cdist``'s explicit form, the earlier code), interleaved.

    python -m bench.gm_scores [--repeats 5] [--device cpu]

Layer shapes of the networks the scripts prune: ResNet-56's widest (64 filters, 3×3×64),
VGG-16's last (512, 3×3×512), ResNet-50's widest 1×1 (2048, 512) and 3×3 (512, 3×3×512).
Prints ``gm_pairs_once_vs_cdist`` (time ÷ the earlier form's; below 1 is faster) per shape and
whether the two orderings of the filters agree (both compute explicit differences in float64;
they may differ in the last bits, which would only reorder exact near-ties).
"""
import argparse

import torch

from bench.common import interleaved
from utils.method.criteria import criterion

SHAPES = {"resnet56 stage 3": (64, 64, 3), "vgg16 last": (512, 512, 3),
          "resnet50 1x1 (2048)": (2048, 512, 1), "resnet50 3x3 (512)": (512, 512, 3)}


def cdist_scores(weight, candidates):
    w = weight.detach()[candidates.to(weight.device)].flatten(1).double()
    return torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist").sum(0).cpu()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    return ap


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    gm = criterion("gm")
    print(f"torch {torch.__version__}, {device}, float64 differences; median of "
          f"{args.repeats}, interleaved")
    for name, (filters, inputs, k) in SHAPES.items():
        weight = torch.randn(filters, inputs, k, k, generator=torch.Generator().manual_seed(0),
                             ).to(device) * 0.05
        everyone = torch.arange(filters)
        t = interleaved({"once": lambda: gm.scores(weight, everyone),
                         "cdist": lambda: cdist_scores(weight, everyone)}, args.repeats,
                        device)
        same = torch.equal(torch.argsort(gm.scores(weight, everyone), stable=True),
                           torch.argsort(cdist_scores(weight, everyone), stable=True))
        print(f"{name:22s} {filters:5d}×{inputs * k * k:5d}  once {1e3 * t['once']:8.1f} ms  "
              f"cdist {1e3 * t['cdist']:8.1f} ms  gm_pairs_once_vs_cdist: "
              f"{t['once'] / t['cdist']:.2f}  same order: {same}")


if __name__ == "__main__":
    main()
