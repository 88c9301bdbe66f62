"""Device-agnostic training and evaluation loops; both return dicts of averages."""
import contextlib
import math
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .distributed import all_reduce_sum, is_main


class NonFiniteLoss(RuntimeError):
    def __init__(self, epoch: int, batch: int):
        super().__init__(f"non-finite loss at epoch {epoch}, batch {batch}")
        self.epoch, self.batch = epoch, batch


def lr_at(epoch: int, base_lr: float, schedule: list[int], gammas: list[float]) -> float:
    """The reference's rule: multiply by each gamma whose step has been reached, in order."""
    lr = base_lr
    for step, gamma in zip(schedule, gammas):
        if epoch < step:
            break
        lr *= gamma
    return lr


def autocast(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp_dtype)


class _Meter:
    """Sums of loss and top-k hits on the device (no per-step sync), reduced across ranks."""

    def __init__(self, device):
        self.t = torch.zeros(3, dtype=torch.float64, device=device)  # loss·n, top1, top5
        self.n = 0

    def update(self, loss, logits, y):
        with torch.no_grad():
            hit = logits.topk(min(5, logits.shape[1]), 1).indices.eq(y[:, None])
            self.t += torch.stack([loss.detach().double() * y.shape[0],
                                   hit[:, 0].sum().double(), hit.any(1).sum().double()])
        self.n += y.shape[0]

    def running(self) -> tuple[float, float]:
        loss, top1, _ = self.t.tolist()
        return loss / max(self.n, 1), 100 * top1 / max(self.n, 1)

    def result(self) -> dict:
        t = all_reduce_sum(torch.cat([self.t, self.t.new_tensor([self.n])])).tolist()
        n = max(t[3], 1.0)
        return {"loss": t[0] / n, "top1": 100 * t[1] / n, "top5": 100 * t[2] / n, "n": int(t[3])}


def train_one_epoch(model, loader, optimizer, device, epoch: int, mask=None, scaler=None,
                    amp_dtype=None, log=None, print_freq: int = 200, nan_policy: str = "stop",
                    stop_flag=None) -> dict:
    """One epoch of SGD. ``mask.scale_gradients()`` runs between backward and step (SPEC §4)."""
    model.train()
    meter = _Meter(device)
    skipped = 0
    start = time.time()
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if is_main() else True,
               dynamic_ncols=True)
    for i, (x, y) in enumerate(bar):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        if not math.isfinite(loss.item()):
            if nan_policy == "skip":
                skipped += 1
                optimizer.zero_grad(set_to_none=True)
                continue
            raise NonFiniteLoss(epoch, i)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if mask is not None:
            mask.scale_gradients()
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        meter.update(loss, logits.float(), y)
        if i % print_freq == 0 or i == len(loader) - 1:
            loss_avg, top1_avg = meter.running()
            bar.set_postfix(loss=f"{loss_avg:.3f}", top1=f"{top1_avg:.1f}")
            if log is not None and i % print_freq == 0:
                log(f"  epoch {epoch} [{i:4d}/{len(loader)}] loss {loss_avg:.4f} "
                    f"top1 {top1_avg:.2f}", echo=False)
        if stop_flag is not None and stop_flag():
            break
    out = meter.result()
    out.update(skipped=skipped, seconds=time.time() - start)
    return out


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None) -> dict:
    model.eval()
    meter = _Meter(device)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast(device, amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
        meter.update(loss, logits.float(), y)
    return meter.result()
