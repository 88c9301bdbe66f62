"""Device-agnostic training and evaluation loops; both return dicts of averages."""
import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..batches import autocast, prepare
from ..distributed import all_reduce_sum, is_main, world_size
from ..faults import crash_point


class NonFinite(RuntimeError):
    """Training produced NaN or inf: the run stops, and its last checkpoint (which holds
    none) stays as it was."""


class NonFiniteLoss(NonFinite):
    def __init__(self, epoch: int, batch: int):
        super().__init__(f"non-finite loss at epoch {epoch}, batch {batch}")
        self.epoch, self.batch = epoch, batch


class NonFiniteState(NonFinite):
    """The weights or the optimizer's state hold NaN or inf where a checkpoint was due, so it
    was not written: ``names`` are their key paths (``model.conv1.weight``)."""

    def __init__(self, where: str, names: list[str]):
        super().__init__(f"the state {where} holds NaN or inf in {len(names)} of its tensors "
                         f"(first: {names[0]}), so it was not written")
        self.names = names


def lr_at(epoch: int, base_lr: float, schedule: list[int], gammas: list[float]) -> float:
    """The reference's rule: multiply by each gamma whose step has been reached, in order."""
    lr = base_lr
    for step, gamma in zip(schedule, gammas):
        if epoch < step:
            break
        lr *= gamma
    return lr


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


def train_one_epoch(model, loader, optimizer, device, epoch: int, scaler=None,
                    amp_dtype=None, log=None, print_freq: int = 200, nan_policy: str = "stop",
                    should_stop=None, start_batch: int = 0, resume_state=None,
                    transform=None) -> dict:
    """One epoch of SGD. The pruner's gradient scaling (docs/method.md) is a step pre-hook of the
    optimizer (``utils.pruner``): it runs between backward (and a GradScaler's unscale) and the
    step, as it would in anyone's loop.

    ``should_stop()`` is polled after every batch: when it says so the epoch ends early with
    ``interrupted`` set, and ``state`` (batches done, running sums) lets a later call resume it
    with ``start_batch``/``resume_state`` exactly where it stopped.
    """
    model.train()
    meter = _Meter(device)
    skipped, done = 0, start_batch
    if resume_state is not None:
        meter.t.copy_(resume_state["sums"].to(meter.t))
        meter.n, skipped = int(resume_state["n"]), int(resume_state["skipped"])
    start = time.time()
    total = start_batch + len(loader)
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=None if is_main() else True,
               dynamic_ncols=True, initial=start_batch, total=total)
    interrupted = False
    # a skipped batch leaves no trace: its forward pass would still have folded its overflow
    # into the BatchNorm running statistics, which the next checkpoint then refuses
    statistics = _running_statistics(model) if nan_policy == "skip" else None
    for i, batch in enumerate(bar, start=start_batch):
        x, y = prepare(batch, device, transform, "train")
        before = [s.clone() for s in statistics] if statistics else None
        with autocast(device, amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        done = i + 1
        if not math.isfinite(loss.item()):
            if nan_policy != "skip":
                raise NonFiniteLoss(epoch, i)
            skipped += 1
            for statistic, saved in zip(statistics or (), before or ()):
                statistic.copy_(saved)
        else:
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            meter.update(loss, logits.float(), y)
        crash_point(f"train:{epoch}:{i}")
        if i % print_freq == 0 or done == total:
            loss_avg, top1_avg = meter.running()
            bar.set_postfix(loss=f"{loss_avg:.3f}", top1=f"{top1_avg:.1f}")
            if log is not None and i % print_freq == 0:
                log(f"  epoch {epoch} [{i:4d}/{total}] loss {loss_avg:.4f} top1 {top1_avg:.2f}",
                    echo=False)
        if should_stop is not None and done < total and should_stop():
            interrupted = True
            break
    bar.close()
    state = {"sums": meter.t.cpu().clone(), "n": meter.n, "skipped": skipped}
    out = meter.result() if not interrupted else {}
    out.update(skipped=skipped, seconds=time.time() - start, interrupted=interrupted,
               batches=done, state=state)
    return out


def _running_statistics(model: nn.Module) -> list[torch.Tensor]:
    """The buffers a forward pass in train mode updates: BatchNorm's running statistics."""
    return [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]


@torch.no_grad()
def evaluate(model, loader, device, amp_dtype=None, transform=None) -> dict:
    """Top-1/top-5/loss; a batch of N×V×C×H×W (V views per sample) is scored by the average of
    the views' softmax (multi-crop), its loss being that average's negative log."""
    model.eval()
    meter = _Meter(device)
    for batch in loader:
        x, y = prepare(batch, device, transform, "test")
        with autocast(device, amp_dtype):
            if x.dim() == 5:
                n, v = x.shape[:2]
                probs = model(x.flatten(0, 1)).float().softmax(1).view(n, v, -1).mean(1)
                logits = probs.clamp_min(1e-12).log()
                loss = F.nll_loss(logits, y)
            else:
                logits = model(x).float()
                loss = F.cross_entropy(logits, y)
        meter.update(loss, logits, y)
    return meter.result()


@torch.no_grad()
def refreshed_bn_copy(model: nn.Module, loader, device, batches: int, amp_dtype=None,
                      transform=None) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on the first
    ``batches`` batches of ``loader`` (an equal-weight average, averaged over DDP ranks);
    ``model`` itself is untouched. The mask scales selected filters after the statistics
    were gathered, so the stored ones describe another network
    (docs/runs.md, 'Reading the curves')."""
    net = copy.deepcopy(model)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches seen
    net.train()
    for i, batch in enumerate(loader):
        if i >= batches:
            break
        x, _ = prepare(batch, device, transform, "train")
        with autocast(device, amp_dtype):
            net(x)
    for bn in bns:
        for stat in (bn.running_mean, bn.running_var):
            stat.copy_(all_reduce_sum(stat.clone()) / world_size())
    return net.eval()
