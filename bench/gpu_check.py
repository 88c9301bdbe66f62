"""Does a run on a GPU keep the promises of docs/runs.md? One line per check, in under 10
minutes on one GPU.

    python -m bench.gpu_check [--save_path DIR] [--epochs 8] [--device cuda]

The demo's recipe (``make demo``: ResNet-20 on the bundled Fashion-MNIST subset, FSDP at CS 10 %
+ GM 40 %), run as a user runs it, one process per run (the kernel flags are per process):

* ``amp bf16``, ``amp fp16``: ``--amp bf16`` and ``--amp fp16`` against float32 — the final and
  compact top-1, the zero filters, and the effective attenuation epoch by epoch (float16's
  leaves float32's once the attenuated filters leave its range: docs/runs.md, 'Mixed
  precision');
* ``resume --deterministic``: stopped after half the epochs and resumed, against the
  uninterrupted run, tensor by tensor over the whole checkpoint (weights, momenta, BN
  statistics, mask, probe, RNG states): equal, bit for bit;
* ``resume, default kernels``: the same without ``--deterministic``: which tensors differ and
  by how much (cuDNN's choice of kernels and TF32 change the last bits; said, not failed);
* ``compact``: the float32 run's ``model_compact.pt`` on the GPU against its soft-pruned
  network with TF32 off (``max_rel_error`` ≤ 1e-5), and with TF32 on for contrast;
* ``throughput``: training images per second of each run's epochs (the median epoch, the
  first left out: cuDNN times its kernels then).

A verdict is ``ok``, ``FAIL`` or ``note`` (a figure to read, not a promise). Without a CUDA
GPU the check refuses in one line. The comparisons are plain functions of the runs' files
(tests/test_gpu_check.py runs them on the CPU).
"""
import argparse
import csv
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXACT = 1e-5          # the compaction's promise (docs/compaction.md)
AMP_TOP1_POINTS = 3.0  # how far an AMP run's final top-1 may fall from float32's on the demo
RECIPE = ["--dataset", "fashion_demo", "--data_path", os.path.join(ROOT, "datasets",
                                                                   "fashion_demo"),
          "--arch", "resnet20", "--schedule", "1", "4", "6", "--gammas", "10", "0.2", "0.2",
          "--prune_rate_cs", "0.1", "--prune_rate_gm", "0.4", "--manualSeed", "1"]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--save_path", default=None,
                    help="where the runs' folders go (default: a new temporary folder)")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of each run (the demo's 8)")
    ap.add_argument("--device", default="cuda", help="the GPU to check: cuda or cuda:N")
    return ap


# --- what the runs left, compared (plain functions: tests/test_gpu_check.py) -----------------

@dataclass
class Check:
    name: str
    verdict: str  # ok, FAIL or note
    detail: str

    def line(self) -> str:
        return f"{self.name}: {self.verdict} — {self.detail}"


@dataclass
class Run:
    """What a finished run left: summary.json, metrics.csv's rows, its training set size."""
    summary: dict
    rows: list[dict]
    images: int
    failed: str | None = None  # the run's last line of stderr, if it failed

    @classmethod
    def read(cls, folder: str) -> "Run":
        summary = json.load(open(os.path.join(folder, "summary.json")))
        rows = list(csv.DictReader(open(os.path.join(folder, "metrics.csv"))))
        header = open(os.path.join(folder, "log.txt")).readline()
        images = int(re.search(r"(\d+) train /", header).group(1))
        return cls(summary, rows, images)


@dataclass
class Comparison:
    """Two checkpoints, tensor by tensor."""
    tensors: int = 0
    values: int = 0
    differing: list[str] = field(default_factory=list)
    values_differing: int = 0
    max_abs: float = 0.0


def tensors_of(value, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in nested dicts and lists, by its key path (``model.conv_1_3x3.weight``)."""
    if isinstance(value, torch.Tensor):
        return {path: value}
    items = (value.items() if isinstance(value, dict) else
             enumerate(value) if isinstance(value, (list, tuple)) else ())
    out = {}
    for key, item in items:
        out.update(tensors_of(item, f"{path}.{key}" if path else str(key)))
    return out


def compare_checkpoints(a: dict, b: dict) -> Comparison:
    """Every tensor of checkpoint ``a`` against ``b``'s at the same key path, bit for bit (NaN
    equals NaN); a tensor only one of them has counts as differing."""
    ta, tb = tensors_of(a), tensors_of(b)
    out = Comparison()
    for name in sorted(set(ta) | set(tb)):
        x, y = ta.get(name), tb.get(name)
        out.tensors += 1
        if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype:
            out.differing.append(name)
            continue
        out.values += x.numel()
        same = _bitwise_equal(x, y)
        if not bool(same.all()):
            out.differing.append(name)
            out.values_differing += int((~same).sum())
            if x.is_floating_point():
                gap = (x.double() - y.double()).abs().nan_to_num(nan=math.inf)
                out.max_abs = max(out.max_abs, float(gap.max()))
    return out


def _bitwise_equal(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if x.is_floating_point():
        return (x == y) | (x.isnan() & y.isnan())
    return x == y


def resume_check(cmp: Comparison, deterministic: bool) -> Check:
    if deterministic:
        name = "resume --deterministic"
        if not cmp.differing:
            return Check(name, "ok", f"all {cmp.values:,} values of the checkpoint's "
                                     f"{cmp.tensors} tensors equal the uninterrupted run's")
        return Check(name, "FAIL", f"{len(cmp.differing)} of {cmp.tensors} tensors differ "
                                   f"(first: {cmp.differing[0]}; max |Δ| {cmp.max_abs:.3g})")
    name = "resume, default kernels"
    if not cmp.differing:
        return Check(name, "note", f"all {cmp.tensors} tensors equal (the GPU happened to "
                                   "choose the same kernels)")
    return Check(name, "note", f"{len(cmp.differing)} of {cmp.tensors} tensors differ in "
                               f"{cmp.values_differing:,} of {cmp.values:,} values (max |Δ| "
                               f"{cmp.max_abs:.3g}): the last bits, as docs/runs.md says")


def attenuation_gap(ref: list[dict], rows: list[dict]) -> float | None:
    """The largest |Δ| of the effective attenuation over the epochs both runs measured."""
    gaps = [abs(float(a["effective_attenuation"]) - float(b["effective_attenuation"]))
            for a, b in zip(ref, rows) if a["effective_attenuation"] and b["effective_attenuation"]]
    return max(gaps) if gaps else None


def amp_check(name: str, ref: Run, run: Run) -> Check:
    """An AMP run against float32's: it finished, its compact network is exact, its selected
    filters are zero, and its final top-1 is near float32's."""
    if run.failed:
        return Check(name, "FAIL", f"the run failed: {run.failed}")
    s, r = run.summary, ref.summary
    gap = attenuation_gap(ref.rows, run.rows)
    attenuation = "not measured" if gap is None else f"within {gap:.3f} of fp32's"
    detail = (f"final top1 {s['final_top1']:.2f} vs fp32 {r['final_top1']:.2f}, compact "
              f"max_rel_error {s['compact']['max_rel_error']:.1e}, effective attenuation "
              f"{attenuation}")
    problems = []
    if abs(s["final_top1"] - r["final_top1"]) > AMP_TOP1_POINTS:
        problems.append(f"top1 more than {AMP_TOP1_POINTS:g} points from fp32's")
    if s["compact"]["max_rel_error"] > EXACT:
        problems.append(f"compact max_rel_error above {EXACT:g}")
    if s["zero_filters_per_layer"] != s["selected_per_layer"]:
        problems.append("selected filters not zero")
    return Check(name, "FAIL" if problems else "ok",
                 detail + (f" ({'; '.join(problems)})" if problems else ""))


def compact_check(tf32_off: float, tf32_on: float) -> Check:
    verdict = "ok" if tf32_off <= EXACT else "FAIL"
    return Check("compact", verdict, f"max_rel_error {tf32_off:.1e} with TF32 off (≤ {EXACT:g}); "
                                     f"{tf32_on:.1e} with TF32 on")


def images_per_second(run: Run) -> float:
    """The training set over the median epoch's seconds, the first epoch left out."""
    seconds = [float(r["epoch_seconds"]) for r in run.rows[1:]] or \
        [float(r["epoch_seconds"]) for r in run.rows]
    return run.images / statistics.median(seconds)


def throughput_check(runs: dict[str, Run]) -> Check:
    done = {k: images_per_second(r) for k, r in runs.items() if not r.failed}
    base = done.get("fp32")
    parts = [f"{k} {v:,.0f} img/s" + (f" (×{v / base:.2f})" if base and k != "fp32" else "")
             for k, v in done.items()]
    return Check("throughput", "note", "; ".join(parts) + " (whole epochs: training, the CS "
                                                           "pass, evaluation, checkpoint)")


def no_cuda_line() -> str:
    return ("error: bench.gpu_check checks a GPU and this machine has none that torch can use "
            "(torch.cuda.is_available() is False); run it where nvidia-smi lists one, with a "
            "CUDA build of torch")


# --- running the runs -----------------------------------------------------------------------

def _train(folder: str, epochs: int, device: str, *flags) -> str | None:
    """``notebook_cifar.py`` with the demo's recipe in its own process; the last line of its
    stderr when it fails, else None."""
    cmd = [sys.executable, os.path.join(ROOT, "notebook_cifar.py"), *RECIPE, "--save_path",
           folder, "--epochs", str(epochs), "--device", device, *flags]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"]
        return lines[-1]
    return None


def _run(root: str, name: str, epochs: int, device: str, *flags, stop_at: int = 0) -> Run:
    """A fresh run in ``root/name``; with ``stop_at``, stopped after that many epochs and
    resumed to the end."""
    folder = os.path.join(root, name)
    if stop_at:
        failed = (_train(folder, epochs, device, *flags, "--overwrite", "--stop_after",
                         str(stop_at))
                  or _train(folder, epochs, device, *flags, "--resume", "auto"))
    else:
        failed = _train(folder, epochs, device, *flags, "--overwrite")
    if failed:
        return Run({}, [], 0, failed)
    return Run.read(folder)


def _checkpoint(root: str, name: str) -> dict:
    return torch.load(os.path.join(root, name, "checkpoint.pt"), weights_only=True,
                      map_location="cpu")


def _compact_errors(folder: str, device: torch.device) -> tuple[float, float]:
    """max_rel_error of the run's compact network on ``device``: TF32 off, then on."""
    from models import build_model
    from utils.compaction import load_compact, max_rel_error
    ckpt = torch.load(os.path.join(folder, "checkpoint.pt"), weights_only=True,
                      map_location="cpu")
    dense = build_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"])
    dense.load_state_dict(ckpt["model"])
    dense = dense.to(device).eval()
    compact = load_compact(os.path.join(folder, "model_compact.pt"), map_location=device)
    shape = tuple(ckpt["input_shape"])
    off = max_rel_error(dense, compact, shape)
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    try:
        x = torch.randn((4,) + shape, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            ref = dense(x)
            on = float((compact(x) - ref).abs().max() / ref.abs().max().clamp(min=1e-12))
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    return off, on


def checks(root: str, epochs: int, device: str):
    """The runs, and each check's line as soon as the runs it reads have finished."""
    runs = {"fp32": _run(root, "fp32", epochs, device)}
    for dtype in ("bf16", "fp16"):
        runs[dtype] = _run(root, dtype, epochs, device, "--amp", dtype)
        yield _unless_failed(f"amp {dtype}", (runs["fp32"], runs[dtype]),
                             lambda: amp_check(f"amp {dtype}", runs["fp32"], runs[dtype]))
    runs["fp32 --deterministic"] = _run(root, "deterministic", epochs, device,
                                        "--deterministic")
    pairs = (("resume --deterministic", "fp32 --deterministic", ("--deterministic",)),
             ("resume, default kernels", "fp32", ()))
    for name, uninterrupted, flags in pairs:
        folder = "resumed" + "-deterministic" * bool(flags)
        resumed = _run(root, folder, epochs, device, *flags, stop_at=max(1, epochs // 2))
        yield _unless_failed(name, (runs[uninterrupted], resumed), lambda: resume_check(
            compare_checkpoints(_checkpoint(root, _folder(uninterrupted)),
                                _checkpoint(root, folder)), bool(flags)))
    yield _unless_failed("compact", (runs["fp32"],), lambda: compact_check(
        *_compact_errors(os.path.join(root, "fp32"), torch.device(device))))
    yield throughput_check(runs)


def _folder(run_name: str) -> str:
    return {"fp32 --deterministic": "deterministic"}.get(run_name, run_name)


def _unless_failed(name: str, runs: tuple, check) -> Check:
    """``check()``, or FAIL with the first failed run's last line."""
    failed = next((r.failed for r in runs if r.failed), None)
    return Check(name, "FAIL", f"a run failed: {failed}") if failed else check()


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    if not torch.cuda.is_available():
        print(no_cuda_line(), file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type != "cuda" or (device.index or 0) >= torch.cuda.device_count():
        print(f"error: --device {args.device}: give cuda or cuda:N of the "
              f"{torch.cuda.device_count()} GPU(s) here", file=sys.stderr)
        return 2
    if args.epochs < 2:
        print("error: --epochs must be ≥ 2 (a run is stopped half-way and resumed)",
              file=sys.stderr)
        return 2
    root = args.save_path or tempfile.mkdtemp(prefix="gpu-check-")
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, the runs in {root}",
          flush=True)
    failed = 0
    for check in checks(root, args.epochs, args.device):
        print(check.line(), flush=True)
        failed += check.verdict == "FAIL"
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
