"""Assertions on snapshot folders, shared by the end-to-end tests of every script."""
import csv
import json
import os
import struct
import zipfile

import torch

from utils.files import TEMPORARY_PREFIX


def files_of(folder) -> dict:
    """Every file's bytes and mtime, by path relative to ``folder``."""
    out = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


def temporaries(folder) -> list[str]:
    """Leftover temporaries of atomic writes in ``folder`` (and of versions that named them
    ``.tmp-*``)."""
    return [f for f in os.listdir(folder) if f.startswith((".tmp", TEMPORARY_PREFIX))]


def assert_same_run(a_dir, b_dir) -> None:
    """Two runs ended alike: weights, masks, history, metrics.csv and summary.json (wall time
    and epoch seconds aside)."""
    a, b = (torch.load(os.path.join(d, "checkpoint.pt"), weights_only=True) for d in (a_dir, b_dir))
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["mask"]["selected"]:
        assert torch.equal(a["mask"]["selected"][k], b["mask"]["selected"][k]), k

    def strip(rows):
        return [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in rows]

    assert strip(a["history"]) == strip(b["history"])
    ra, rb = (list(csv.DictReader(open(os.path.join(d, "metrics.csv")))) for d in (a_dir, b_dir))
    assert strip(ra) == strip(rb)
    sa, sb = (json.load(open(os.path.join(d, "summary.json"))) for d in (a_dir, b_dir))
    sa.pop("wall_seconds"), sb.pop("wall_seconds")
    assert sa == sb


def write_finished_run(folder, *, method="fsdp", arch="resnet56", dataset="cifar10", epochs=3,
                       rates=(0.0, 0.0, 0.0), top1=90.0, seed=1, flops=0.5, args=None,
                       summary=None):
    """A finished run's files as the report reads them (no training): summary.json with a
    compact block (and the keys of ``summary``), args.json and a metrics.csv ending at
    ``top1``."""
    os.makedirs(folder, exist_ok=True)
    rate_keys = ("prune_rate_cs", "prune_rate_norm", "prune_rate_gm")
    summary = {"method": method, "arch": arch, "dataset": dataset, "epochs": epochs,
               **dict(zip(rate_keys, rates)), "round_to": 1, "final_top1": top1,
               "final_top5": min(100.0, top1 + 5), "wall_seconds": 60.0 * seed, "seed": seed,
               "compact": {"flops_reduction": flops, "params_reduction": flops / 2,
                           "fpgm_analytic_flops_reduction": flops}, **(summary or {})}
    flags = {"method": method, "arch": arch, "dataset": dataset, "epochs": epochs,
             **dict(zip(rate_keys, rates)), "manualSeed": seed, "save_path": str(folder),
             "learning_rate": 0.01, "device": "cpu", **(args or {})}
    with open(os.path.join(folder, "summary.json"), "w") as f:
        json.dump(summary, f)
    with open(os.path.join(folder, "args.json"), "w") as f:
        json.dump(flags, f)
    with open(os.path.join(folder, "metrics.csv"), "w") as f:
        f.write("epoch,test_top1\n" + "".join(f"{e},{top1 - (epochs - 1 - e)}\n"
                                              for e in range(epochs)))


def flip_exponent_bit(path) -> None:
    """Flip, in place, the top exponent bit of the first float of the checkpoint's largest
    tensor (a conv weight or its momentum), as bit rot on disk or in a copy would: 0.05 turns
    into ~1.7e37. torch's zip reader checks no CRC, so the file still loads."""
    with zipfile.ZipFile(path) as z:
        entry = max((i for i in z.infolist() if "/data/" in i.filename),
                    key=lambda i: i.file_size)
    with open(path, "r+b") as f:
        f.seek(entry.header_offset + 26)  # the local header's name and extra-field lengths
        name_length, extra_length = struct.unpack("<HH", f.read(4))
        top_byte = entry.header_offset + 30 + name_length + extra_length + 3  # little endian
        f.seek(top_byte)
        byte = f.read(1)[0]
        f.seek(top_byte)
        f.write(bytes([byte ^ 0x40]))
