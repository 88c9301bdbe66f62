"""CS pass cost: ours vs a plain forward, and vs the reference's per-filter loop.

    python -m bench.cs_pass [--batches 4] [--repeats 3] [--device cpu]

Prints ``cs_pass_vs_forward`` (our CS pass ÷ an eval forward over the same batches; target
≤ 1.2) and ``cs_vs_per_filter_loop`` (ours ÷ the reference's algorithm: forward with autograd,
a cloned ReLU map per layer, one tiny matmul per filter per batch; target ≤ 0.05).
ResNet-56, 32×32, batch 256, 10 classes.
"""
import argparse

import torch
import torch.nn.functional as F

from bench.common import interleaved
from models import build_model
from utils.method.criteria.cs import cs_scores
from utils.compaction import find_prunable_convs


def reference_per_filter_loop(model, bns, loader, num_classes, device):
    """The reference's CS algorithm (the class-separability score of README.md), rewritten
    here for timing only."""
    feats, handles = [], []
    for bn in bns:
        def hook(m, i, out):
            xx, _ = torch.max(F.relu(out.clone().detach()), dim=3)
            feats.append(torch.max(xx, dim=2)[0])
        handles.append(bn.register_forward_hook(hook))
    sizes = [bn.num_features for bn in bns]
    rxx = torch.zeros(len(bns), max(sizes), num_classes, 1, dtype=torch.double, device=device)
    counts = torch.zeros(num_classes, device=device)
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        model(x)  # the reference kept autograd on
        r = F.one_hot(y, num_classes).float()
        counts += r.sum(0)
        for l, f_count in enumerate(sizes):
            for f in range(f_count):
                rxx[l, f] += torch.mm(r.t(), feats[l][:, f].unsqueeze(1))
        feats.clear()
    for h in handles:
        h.remove()
    nn_inv = torch.diag(1.0 / counts).double()
    p = num_classes * torch.eye(num_classes, dtype=torch.float64, device=device) - 1
    scores = torch.zeros(len(bns), max(sizes), dtype=torch.float64)
    for l, f_count in enumerate(sizes):
        for f in range(f_count):
            m = rxx[l, f].t() @ nn_inv
            scores[l, f] = torch.trace(m @ p @ m.t()).item()
    return scores


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return ap


def main():
    args = parser().parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model("resnet56", 10).to(device).eval()
    convs = find_prunable_convs(model)
    bns, names = [c.bn for c in convs], [c.name for c in convs]
    loader = [(torch.randn(256, 3, 32, 32, device=device), torch.arange(256, device=device) % 10)
              for _ in range(args.batches)]

    def forward():
        with torch.no_grad():
            for x, _ in loader:
                model(x)

    def ours():
        cs_scores(model, bns, names, loader, 10, device)

    def reference():
        reference_per_filter_loop(model, bns, loader, 10, device)

    # same ranking from both algorithms, or the comparison means nothing
    ref = reference_per_filter_loop(model, bns, loader, 10, device)
    mine = cs_scores(model, bns, names, loader, 10, device)[0]
    for l, name in enumerate(names):
        torch.testing.assert_close(mine[name], ref[l, :len(mine[name])], rtol=1e-4, atol=1e-6)

    t = interleaved({"forward": forward, "ours": ours, "reference": reference}, args.repeats,
                    device)
    print(f"device {device}, threads {torch.get_num_threads()}, {args.batches} batches of 256, "
          f"ResNet-56 ({sum(map(len, mine.values()))} filters)")
    print(f"forward {t['forward']:.3f}s  ours {t['ours']:.3f}s  reference {t['reference']:.3f}s")
    print(f"statistics beyond the forward: ours {t['ours'] - t['forward']:.3f}s, "
          f"reference {t['reference'] - t['forward']:.3f}s")
    print(f"cs_pass_vs_forward: {t['ours'] / t['forward']:.3f}")
    print(f"cs_vs_per_filter_loop: {t['ours'] / t['reference']:.3f}")
    # on a CPU the shared forward dominates both sides; this isolates what the algorithms add
    extra = max(t["ours"] - t["forward"], 0.0) / max(t["reference"] - t["forward"], 1e-9)
    print(f"cs_stats_vs_per_filter_loop: {extra:.3f}")


if __name__ == "__main__":
    main()
