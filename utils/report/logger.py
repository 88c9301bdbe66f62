"""The snapshot's text outputs: log.txt, args.json, metrics.csv, summary.json, TensorBoard."""
import csv
import io
import json
import os
import time

from ..distributed import is_main
from ..files import append_text, atomic_write
from ..method.criteria import registry

_AFTER_SHARES = ["effective_attenuation", "train_loss", "train_top1", "test_loss", "test_top1",
                 "test_top5", "test_loss_refreshed", "test_top1_refreshed", "test_top5_refreshed",
                 "filters_selected", "filters_total", "flops_eff", "params_eff", "epoch_seconds"]


def metric_columns() -> list[str]:
    """metrics.csv's columns: a share per criterion (``theta_<name>``), then the rest."""
    return ["epoch", "method", "lr", "theta", *(f"theta_{c}" for c in registry()), "zeta",
            *_AFTER_SHARES]


def __getattr__(name):  # METRIC_COLUMNS, computed when asked for (the registry imports files)
    if name == "METRIC_COLUMNS":
        return metric_columns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_json(folder: str, name: str) -> dict | None:
    """``args.json`` or ``summary.json`` of a run folder; None when absent or not a JSON object
    (a run killed before writing it, a foreign file)."""
    try:
        with open(os.path.join(folder, name)) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def read_metrics(folder: str) -> list[dict]:
    """metrics.csv's rows as strings (an empty cell: a column that epoch did not measure)."""
    with open(os.path.join(folder, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def write_text_atomic(path: str, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


class RunLog:
    """Only rank 0 writes; every rank may call it."""

    def __init__(self, save_path: str, tensorboard: bool = False):
        self.save_path = save_path
        self.enabled = is_main()
        self.tb = None
        if self.enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(save_path, "tensorboard"))
            except ImportError:
                self("tensorboard is not installed (pip install tensorboard); no scalars written")

    def __call__(self, msg: str, echo: bool = True) -> None:
        if not self.enabled:
            return
        if echo:
            print(msg, flush=True)
        append_text(os.path.join(self.save_path, "log.txt"),
                    f"{time.strftime('%Y-%m-%d %H:%M:%S')} {msg}\n")

    def args(self, args: dict) -> None:
        if not self.enabled:
            return
        write_text_atomic(os.path.join(self.save_path, "args.json"),
                          json.dumps(args, indent=2, sort_keys=True) + "\n")
        self("arguments: " + " ".join(f"--{k}={v}" for k, v in sorted(args.items())), echo=False)

    def metrics(self, history: list[dict]) -> None:
        """Rewrite metrics.csv from the full history, so a resumed run never duplicates rows."""
        if not self.enabled:
            return
        buf = io.StringIO()
        columns = metric_columns()
        w = csv.DictWriter(buf, columns, extrasaction="ignore")
        w.writeheader()
        w.writerows(history)
        write_text_atomic(os.path.join(self.save_path, "metrics.csv"), buf.getvalue())
        if self.tb is not None and history:
            row = history[-1]
            for k in columns[2:]:
                if row.get(k) is not None:  # refreshed columns: only with --eval_bn_refresh
                    self.tb.add_scalar(k, row[k], row["epoch"])
            self.tb.flush()

    def summary(self, summary: dict) -> None:
        if self.enabled:
            write_text_atomic(os.path.join(self.save_path, "summary.json"),
                              json.dumps(summary, indent=2) + "\n")
