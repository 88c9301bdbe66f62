"""Every BatchNorm CNN of timm, on a list nobody chose: does each compact exactly or get refused
in one line?

    python -m bench.timm_walk [--every 5] [--offset 0] [--side 64] [--max_params 40e6]

Walks every ``--every``-th name of ``timm.list_models()`` (from ``--offset``). A model that
builds on a CPU (``pretrained=False``) and holds a BatchNorm is built (BN statistics of random
images, as ``bench.compact_zoo`` does), every prunable conv loses a random share of up to half
its filters, and the network is compacted in float64 at ``--side``×``--side`` (at its own input
size where timm fixes it) and compared with the soft-pruned one. Each model runs in its own
process (a model that hangs or runs out of memory costs only itself). Outcomes:

* ``exact``: compacted, max relative output difference ≤ 1e-9, nothing kept whole;
* ``exact, kept whole``: the same, with parts the compactor does not understand kept whole;
* ``refused``: a one-line ``UserError`` (the reason printed);
* ``skipped``: the dense network's own output is not finite with random BN statistics;
* ``failed``: anything else — an exception of another kind, a multi-line error, an inexact
  network, a timeout (the reason printed).

Models without BatchNorm, models that do not build, and models over ``--max_params``
parameters (to keep the walk within an hour on two cores) are counted and skipped.
"""
import argparse
import collections
import inspect
import json
import subprocess
import sys

TOLERANCE = 1e-9


def screen(name: str, max_params: float) -> dict | None:
    """A model's outcome without running it (built on meta tensors: no memory, in the walk's
    own process), or None when it is one to walk."""
    import torch
    import timm

    from utils.method.tracer import is_batchnorm

    try:
        with torch.device("meta"):
            meta = timm.create_model(name, pretrained=False, num_classes=10)
    except Exception as e:
        return {"outcome": "skipped: does not build", "why": _first(e)}
    if not any(is_batchnorm(m) for m in meta.modules()):
        return {"outcome": "skipped: no BatchNorm"}
    params = sum(p.numel() for p in meta.parameters())
    if params > max_params:
        return {"outcome": "skipped: too large", "why": f"{params / 1e6:.0f}M parameters"}
    return None


def walk_one(name: str, side: int) -> dict:
    """The outcome of one model, in this process."""
    import torch
    import timm

    from bench.common import calibrate_bn
    from utils.compaction import compact_model, find_prunable_convs
    from utils.errors import UserError

    torch.set_num_threads(1)
    with torch.device("meta"):
        meta = timm.create_model(name, pretrained=False, num_classes=10)
    cfg = dict(getattr(meta, "pretrained_cfg", None) or {})
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    shape = (channels, height, width) if cfg.get("fixed_input_size") else (channels, side, side)
    torch.manual_seed(0)
    try:
        model = timm.create_model(name, pretrained=False, num_classes=10)
        model = calibrate_bn(model, shape, torch.Generator().manual_seed(1)).double()
    except Exception as e:
        return {"outcome": "skipped: does not run at this size", "why": _first(e)}
    try:
        pruned = _prune_some(model, shape, find_prunable_convs)
        compact = compact_model(model, pruned, input_shape=shape)
        x = torch.randn(2, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            ref, out = model(x), compact(x)
        if not bool(torch.isfinite(ref).all()):  # random BN statistics overflow some models
            return {"outcome": "skipped: dense output not finite"}
        error = ((ref - out).abs().max() / ref.abs().max()).item()
    except UserError as e:
        text = str(e)
        outcome = "refused" if "\n" not in text and len(text) < 600 else "failed"
        return {"outcome": outcome, "why": text[:300]}
    except Exception as e:
        return {"outcome": "failed", "why": f"{type(e).__name__}: {_first(e)}"}
    kept = getattr(compact, "kept_whole", None)
    if not error <= TOLERANCE:
        return {"outcome": "failed", "why": f"inexact: max relative difference {error:.1e}"}
    return {"outcome": "exact, kept whole" if kept else "exact", "error": error,
            "pruned_convs": len(pruned), "why": kept or ""}


def _prune_some(model, shape, find_prunable_convs) -> dict:
    """A random share (up to half) of every prunable conv's filters zeroed."""
    import torch

    gen = torch.Generator().manual_seed(0)
    takes_shape = "input_shape" in inspect.signature(find_prunable_convs).parameters
    convs = find_prunable_convs(model, input_shape=shape) if takes_shape else \
        find_prunable_convs(model)
    pruned = {}
    with torch.no_grad():
        for c in convs:
            k = int(torch.randint(c.filters // 2 + 1, (), generator=gen))
            idx = torch.randperm(c.filters, generator=gen)[:k]
            c.conv.weight[idx] = 0
            pruned[c.name] = idx
    return pruned


def _first(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--every", type=int, default=5, help="every N-th name of timm's list")
    p.add_argument("--offset", type=int, default=0, help="the first name's position")
    p.add_argument("--side", type=int, default=64, help="image side (unless timm fixes it)")
    p.add_argument("--max_params", type=float, default=40e6, help="larger models are skipped")
    p.add_argument("--timeout", type=int, default=600, help="seconds per model")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    if args.one:
        print(json.dumps(walk_one(args.one, args.side)))
        return
    import timm

    names = timm.list_models()[args.offset::args.every]
    counts = collections.Counter()
    for name in names:
        result = screen(name, args.max_params) or _child(name, args)
        counts[result["outcome"]] += 1
        if not result["outcome"].startswith("skipped: no") and \
                result["outcome"] != "skipped: does not build":
            printed = f"  [stderr: {result['stderr']}]" if result.get("stderr") else ""
            print(f"{name:<40} {result['outcome']:<22} {result.get('why', '')}{printed}",
                  flush=True)
    print(f"\n{len(names)} names (every {args.every}th of timm.list_models() from "
          f"{args.offset}):")
    for outcome, n in sorted(counts.items()):
        print(f"  {outcome:<36} {n}")


def _child(name: str, args) -> dict:
    cmd = [sys.executable, "-m", "bench.timm_walk", "--one", name, "--side", str(args.side)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"outcome": "failed", "why": f"timeout after {args.timeout} s"}
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"outcome": "failed", "why": f"exit {done.returncode}: {tail[:200]}"}
    result = json.loads(lines[-1])
    if done.stderr.strip():  # a traceback or warning printed on the way
        result["stderr"] = done.stderr.strip().splitlines()[-1][:200]
    return result


if __name__ == "__main__":
    main()
