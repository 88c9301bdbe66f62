"""Device-agnostic training and evaluation loops; both return dicts of averages."""
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..batches import autocast, prepare
from ..distributed import agree_max, all_reduce_sum, is_dist, is_main, world_size
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
    """One epoch of SGD. The pruner's gradient scaling (docs/method.md) is a step pre-hook of
    the optimizer (``utils.pruner``): it runs between backward (and a GradScaler's unscale) and
    the step, as it would in anyone's loop.

    No batch waits for the device: whether a loss was not finite, and whether any rank was
    asked to stop, are read every ``print_freq`` batches and at the end (``_Watch``). A
    non-finite loss then raises ``NonFiniteLoss`` naming the first such batch, on every rank
    alike; ``nan_policy="skip"`` decides before each step instead (``_Skipper``).

    ``should_stop()``: whether this process was asked to stop. When the ranks agree that one
    was, the epoch ends early with ``interrupted`` set, and ``state`` (batches done, running
    sums) lets a later call resume it with ``start_batch``/``resume_state`` exactly there.
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
    watch = _Watch(device, should_stop)
    skipper = _Skipper(model) if nan_policy == "skip" else None
    for i, batch in enumerate(bar, start=start_batch):
        x, y = prepare(batch, device, transform, "train")
        if skipper is not None:
            skipper.remember_statistics()
        with autocast(device, amp_dtype):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        done = i + 1
        if _step(loss, optimizer, scaler, skipper):
            meter.update(loss, logits.float(), y)
            watch.note(loss, i)
        else:
            skipped += 1
        crash_point(f"train:{epoch}:{i}")
        if i % print_freq == 0 or done == total:
            loss_avg, top1_avg = meter.running()
            bar.set_postfix(loss=f"{loss_avg:.3f}", top1=f"{top1_avg:.1f}")
            if log is not None and i % print_freq == 0:
                log(f"  epoch {epoch} [{i:4d}/{total}] loss {loss_avg:.4f} top1 {top1_avg:.2f}",
                    echo=False)
        if watch.due(i, done, total, print_freq) and watch.stop_agreed(epoch) and done < total:
            interrupted = True
            break
    bar.close()
    state = {"sums": meter.t.cpu().clone(), "n": meter.n, "skipped": skipped}
    out = meter.result() if not interrupted else {}
    out.update(skipped=skipped, seconds=time.time() - start, interrupted=interrupted,
               batches=done, state=state)
    return out


def _step(loss, optimizer, scaler, skipper) -> bool:
    """Backward and the optimizer's step; False when ``skipper`` skips the batch."""
    optimizer.zero_grad(set_to_none=True)
    if skipper is not None:
        loss = skipper.flagged(loss)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if skipper is not None and skipper.skips(scaler):
        return False
    if scaler is not None:
        scaler.unscale_(optimizer)
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return True


_NO_BATCH = float(2 ** 53)  # "no non-finite loss yet": above any batch index, exact in float64


class _Watch:
    """What an epoch learns only now and then, so that no batch waits for the device: the
    first batch whose loss was not finite (kept on the device) and whether a stop was asked,
    agreed over the DDP ranks in one small all-reduce every ``print_freq`` batches and at the
    end of the epoch — at the same batches on every rank, so all stop together. Alone, a
    stop request (a flag on the host) is acted on after the batch it arrives in."""

    def __init__(self, device, should_stop):
        self.first_bad = torch.full((), _NO_BATCH, dtype=torch.float64, device=device)
        self.requested = should_stop or (lambda: False)

    def note(self, loss: torch.Tensor, i: int) -> None:
        """Batch ``i`` is the first non-finite one if its loss is not finite and none was."""
        self.first_bad = torch.where(loss.detach().isfinite(), self.first_bad,
                                     self.first_bad.clamp(max=i))

    def due(self, i: int, done: int, total: int, print_freq: int) -> bool:
        return i % print_freq == 0 or done == total or (not is_dist() and self.requested())

    def stop_agreed(self, epoch: int) -> bool:
        """Whether any rank was asked to stop; raises NonFiniteLoss on every rank when any
        rank's loss was not finite (the gradient all-reduce has spread it to all weights)."""
        flags = torch.stack([self.first_bad.new_tensor(float(self.requested())),
                             -self.first_bad])
        stop, first_bad = agree_max(flags)
        if -first_bad < _NO_BATCH:
            raise NonFiniteLoss(epoch, int(-first_bad))
        return bool(stop)


class _Skipper:
    """``--nan_policy skip``: a batch whose loss is not finite on any rank is skipped on every
    rank, leaving no trace — its forward pass would still have folded its overflow into the
    BatchNorm running statistics (which the next checkpoint then refuses), so they are put
    back. The ranks learn of it through the gradient all-reduce they make anyway: a rank whose
    loss is not finite adds NaN × one weight (the sentinel) to its loss, so that weight's
    gradient is NaN on every rank after the all-reduce, and every rank reads the same number.
    The decision precedes the step: one read of the device per batch, the price of this
    policy (the default, stop, reads none)."""

    def __init__(self, model: nn.Module):
        self.statistics = _running_statistics(model)
        self.saved: list[torch.Tensor] = []
        weight = next(p for p in model.parameters() if p.requires_grad)
        self.sentinel, self.first = weight, (0,) * weight.dim()  # its first element, any layout

    def remember_statistics(self) -> None:
        self.saved = [s.clone() for s in self.statistics]

    def flagged(self, loss: torch.Tensor) -> torch.Tensor:
        """``loss``, plus NaN × the sentinel where it is not finite (+0 × it otherwise: the
        same loss, the same gradients)."""
        nan_if_bad = torch.where(loss.detach().isfinite(), 0.0, float("nan"))
        return loss + nan_if_bad * self.sentinel[self.first]

    def skips(self, scaler) -> bool:
        """After backward: whether the batch is skipped; if so, its traces are undone. A
        GradScaler lowers its scale as after a step of its own with non-finite gradients."""
        if not torch.isnan(self.sentinel.grad[self.first]).item():
            return False
        for statistic, saved in zip(self.statistics, self.saved):
            statistic.copy_(saved)
        if scaler is not None:
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        return True


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
