"""The class-separability (CS) criterion of FSDP (docs/method.md): the trace of the
between-class scatter of each filter's max response over labelled data. Low = less
discriminant = pruned first. Its scores come from a pass over data (``CSRanker``, which the
criterion supplies as its ``data_pass``), not from the weights."""
import contextlib
import time

import torch
import torch.nn.functional as F
from torch import nn

from ...batches import prepare
from ...distributed import all_reduce_sum, broadcast, world_size
from ...errors import UserError
from ...faults import crash_point
from ...hands_off import bn_statistics_untouched
from ..graph import PrunableConv, bn_normalised
from . import register_criterion
from .base import Criterion


@register_criterion
class ClassSeparability(Criterion):
    name, title, order, from_data = "cs", "class separability", 0, True

    def data_pass(self, convs, data, **options):
        return CSRanker(convs, data, **options)


@contextlib.contextmanager
def _max_response_hooks(bns: list[nn.Module], out: list):
    """Store, per BN, the per-sample spatial max of its output: (N, F).

    max is taken before the ReLU: ReLU is monotone, so clamping the (N, F) max afterwards
    equals the max of the rectified map, without a full-size copy of every activation. A BN
    that applies its own activation is scored on its normalisation (``graph.bn_normalised``).
    """
    def hook(k):
        def fn(module, inputs, output):
            out[k] = bn_normalised(module, inputs, output).amax(dim=(2, 3))
        return fn

    handles = [bn.register_forward_hook(hook(k)) for k, bn in enumerate(bns)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def class_sums(model: nn.Module, bns: list[nn.Module], loader, num_classes: int,
               device: torch.device, max_batches: int | None = None,
               transform=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass over ``loader``: Σ_n onehot(y_n) a_f(n) for every filter of every BN, and the
    class counts. Returns float64 tensors (C, ΣF) and (C,), summed over DDP ranks.

    The forward runs in float32 even inside a caller's autocast: a per-sample maximum in
    float16 or bfloat16 keeps 11 or 8 significant bits, so close filters tie or swap places
    in the ranking (docs/runs.md, 'Mixed precision')."""
    acts = [None] * len(bns)
    widths = [bn.num_features for bn in bns]
    sums = torch.zeros(num_classes, sum(widths), dtype=torch.float64, device=device)
    counts = torch.zeros(num_classes, dtype=torch.float64, device=device)
    with _max_response_hooks(bns, acts):
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x, y = prepare(batch, device, transform, "cs")
            with torch.autocast(device.type, enabled=False):
                model(x)
            a = torch.cat(acts, 1).double().clamp_min_(0)
            onehot = F.one_hot(y, num_classes).double()
            sums.addmm_(onehot.T, a)
            counts += onehot.sum(0)
    all_reduce_sum(sums)
    all_reduce_sum(counts)
    return sums, counts


def separability_scores(sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Trace of the between-class scatter per filter: C·Σ_c m_c² − (Σ_c m_c)², over the C
    classes present (the reference divided by zero for absent ones)."""
    present = counts > 0
    means = sums[present] / counts[present, None]
    c = means.shape[0]
    return c * means.square().sum(0) - means.sum(0).square()


def cs_scores(model, bns, names, loader, num_classes, device, max_batches=None,
              transform=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """CS score of every filter of every layer keyed by ``names`` (CPU float64), and the
    number of samples seen per class."""
    sums, counts = class_sums(model, bns, loader, num_classes, device, max_batches, transform)
    scores = separability_scores(sums, counts).cpu()
    return dict(zip(names, scores.split([bn.num_features for bn in bns]))), counts.cpu()


@torch.no_grad()
def average_bn_statistics(model: nn.Module) -> None:
    """Every BatchNorm's running mean and variance averaged over the DDP ranks, and rank 0's
    batch count on all (a no-op in one process). The running statistics are exponential
    averages of the batches' statistics, linear in them: the ranks' average is the average the
    pass would have kept over the ranks' mean batch statistics."""
    if world_size() == 1:
        return
    bns = [m for m in model.modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    stats = [s for bn in bns for s in (bn.running_mean, bn.running_var)]
    counts = [bn.num_batches_tracked for bn in bns if bn.num_batches_tracked is not None]
    for group, combine in ((stats, _mean_over_ranks), (counts, broadcast)):
        if group:  # one collective for all the layers
            flat = combine(torch.cat([t.reshape(-1).double() for t in group]))
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(part.view_as(t))


def _mean_over_ranks(t: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(t) / world_size()


class CSRanker:
    """Scores every filter of ``convs`` on the CS data.

    mode "reference": the pass runs in the mode the network is in, as the authors' did (eval
    before training, right after a validation; train after an epoch, so BN normalises with
    batch statistics and updates its running ones — under DDP each rank on its own shard, so
    the ranks then average them: every rank evaluates and scores with the same statistics);
    "train": always train mode, every BN's running statistics put back after the pass (the
    API's default: the scores of batch statistics without touching the user's network);
    "eval": always eval mode. ``amp_dtype`` is accepted as every data pass is given it, and
    not used: the pass runs in float32 (``class_sums``).
    The loader's sampler is an ``EpochSampler`` without shuffling: each pass gets its own
    epoch number, so any per-sample augmentation is a function of the pass.
    """

    def __init__(self, convs: list[PrunableConv], loader, num_classes: int, device, *,
                 mode: str = "reference", max_batches: int | None = None, amp_dtype=None,
                 transform=None, class_names: list[str] | None = None, log=None):
        self.bns, self.names = [c.bn for c in convs], [c.name for c in convs]
        self.loader, self.num_classes, self.device = loader, num_classes, device
        self.mode, self.max_batches = mode, max_batches
        self.transform, self.class_names = transform, class_names
        self.log = log or (lambda msg, echo=True: None)
        self.warned: set[tuple] = set()  # absent-class sets already reported
        self.seconds = 0.0  # spent in passes so far (what the CS criterion costs a run)

    def __call__(self, model: nn.Module, epoch: int, initial: bool) -> dict[str, torch.Tensor]:
        was_training = model.training
        if self.mode != "reference":
            model.train(self.mode == "train")
        # the pass before training and the one after epoch 0 both have epoch 0: tell them apart
        sampler = getattr(self.loader, "sampler", None)  # a list of batches has none
        if hasattr(sampler, "set_epoch"):  # our EpochSampler; a user's may not
            sampler.set_epoch(2 * epoch + (not initial))
        t0 = time.time()
        mode = "train" if model.training else "eval"
        kept = bn_statistics_untouched(model) if self.mode == "train" else contextlib.nullcontext()
        try:
            with kept:
                scores, counts = cs_scores(model, self.bns, self.names, self.loader,
                                           self.num_classes, self.device, self.max_batches,
                                           self.transform)
            if model.training and self.mode == "reference":  # "train" put them back
                average_bn_statistics(model)
        finally:
            model.train(was_training)
        self.seconds += time.time() - t0
        crash_point(f"cs:{epoch}")
        self._refuse_unusable(scores, counts)
        missing = tuple(torch.nonzero(counts == 0).flatten().tolist())
        if missing and missing not in self.warned:
            self.warned.add(missing)
            names = [self.class_names[c] for c in missing] if self.class_names else list(missing)
            self.log(f"warning: the CS data has no samples of classes {names}; they are left out "
                     "of the class-separability scores")
        self.log(f"  CS pass: {int(counts.sum())} samples, {time.time() - t0:.1f}s ({mode} mode)",
                 echo=False)
        return scores

    def _refuse_unusable(self, scores: dict, counts: torch.Tensor) -> None:
        """Scores of one class only are all zero (no between-class scatter): the ranking would
        be the filters' order, not their separability. NaN or inf in the data poisons them."""
        present = int((counts > 0).sum())
        if present < 2:
            raise UserError(f"the CS data holds samples of {present} class(es) "
                            f"({int(counts.sum())} samples): class separability needs two or "
                            "more; give CS data of several classes")
        if not all(bool(torch.isfinite(v).all()) for v in scores.values()):
            raise UserError("the CS pass met NaN or inf (in the data, or in the network's "
                            "outputs on it); clean the CS data, or check the weights")
