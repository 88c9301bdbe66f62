"""FSDP training-step overhead: forward, backward, gradient scaling of the selected filters
(SPEC §4) and the SGD step, ÷ the same step without the mask.

    python -m bench.train_step [--steps 10] [--device cpu]

Prints ``step_overhead: R`` (target ≤ 1.03). ResNet-56, 32×32, batch 128, mask mid-schedule
(epoch 20 of 200: θ ≈ 0.38, 0 < ζ < 1, so every layer has gradients to scale).
"""
import argparse

import torch
import torch.nn.functional as F

from bench.common import interleaved
from models import build_model
from utils.method.graph import find_prunable_convs
from utils.method.mask import Mask
from utils.method.methods import METHODS
from utils.method.schedule import asymptotic_schedule


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def main():
    args = parser().parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet56", 10).to(device).train()
    convs = find_prunable_convs(model)
    gen = torch.Generator().manual_seed(0)
    mask = Mask(convs, METHODS["fsdp"], asymptotic_schedule(0.1, 0.4, 200),
                lambda m, e, i: {c.name: torch.rand(c.filters, generator=gen) for c in convs})
    mask.update(model, 20)
    assert 0 < mask.zeta < 1 and mask.total_selected() > 0
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    x = torch.randn(128, 3, 32, 32, device=device)
    y = torch.arange(128, device=device) % 10

    def step(scale):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if scale:
            mask.scale_gradients()
        opt.step()

    t = interleaved({"plain": lambda: step(False), "fsdp": lambda: step(True)}, args.steps, device)
    print(f"device {device}, threads {torch.get_num_threads()}, ResNet-56 batch 128, "
          f"{mask.total_selected()}/{mask.total_filters()} filters selected, ζ = {mask.zeta:.4f}")
    print(f"plain step {1000 * t['plain']:.1f} ms  fsdp step {1000 * t['fsdp']:.1f} ms")
    print(f"step_overhead: {t['fsdp'] / t['plain']:.3f}")


if __name__ == "__main__":
    main()
