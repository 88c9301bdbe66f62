"""The CS pass as the mask sees it: model and epoch in, a score per filter out (SPEC §3)."""
import time
from typing import Protocol

import torch
from torch import nn

from ...faults import crash_point
from ..graph import PrunableConv
from .cs import cs_scores


class ScorePass(Protocol):
    """What the mask calls for a ``from_data`` criterion: ``initial`` marks the pass before
    training (the pass after epoch 0 has epoch 0 too). Returns {conv name: score per filter}."""

    def __call__(self, model: nn.Module, epoch: int, initial: bool) -> dict[str, torch.Tensor]: ...


class CSRanker:
    """Scores every filter of ``convs`` on the CS data.

    mode "reference": the pass runs in the mode the network is in, as the authors' did (eval
    before training, right after a validation; train after an epoch, so BN normalises with
    batch statistics and updates its running ones); "eval": always eval mode.
    The loader's sampler is an ``EpochSampler`` without shuffling: each pass gets its own
    epoch number, so any per-sample augmentation is a function of the pass.
    """

    def __init__(self, convs: list[PrunableConv], loader, num_classes: int, device, *,
                 mode: str = "reference", max_batches: int | None = None, amp_dtype=None,
                 transform=None, class_names: list[str] | None = None, log=None):
        self.bns, self.names = [c.bn for c in convs], [c.name for c in convs]
        self.loader, self.num_classes, self.device = loader, num_classes, device
        self.mode, self.max_batches, self.amp_dtype = mode, max_batches, amp_dtype
        self.transform, self.class_names = transform, class_names
        self.log = log or (lambda msg, echo=True: None)
        self.warned: set[tuple] = set()  # absent-class sets already reported
        self.seconds = 0.0  # spent in passes so far (what the CS criterion costs a run)

    def __call__(self, model: nn.Module, epoch: int, initial: bool) -> dict[str, torch.Tensor]:
        was_training = model.training
        if self.mode == "eval":
            model.eval()
        # the pass before training and the one after epoch 0 both have epoch 0: tell them apart
        sampler = getattr(self.loader, "sampler", None)  # a list of batches has none
        if hasattr(sampler, "set_epoch"):  # our EpochSampler; a user's may not
            sampler.set_epoch(2 * epoch + (not initial))
        t0 = time.time()
        mode = "train" if model.training else "eval"
        try:
            scores, counts = cs_scores(model, self.bns, self.names, self.loader, self.num_classes,
                                       self.device, self.max_batches, self.amp_dtype,
                                       self.transform)
        finally:
            model.train(was_training)
        self.seconds += time.time() - t0
        crash_point(f"cs:{epoch}")
        missing = tuple(torch.nonzero(counts == 0).flatten().tolist())
        if missing and missing not in self.warned:
            self.warned.add(missing)
            names = [self.class_names[c] for c in missing] if self.class_names else list(missing)
            self.log(f"warning: the CS data has no samples of classes {names}; they are left out "
                     "of the class-separability scores")
        self.log(f"  CS pass: {int(counts.sum())} samples, {time.time() - t0:.1f}s ({mode} mode)",
                 echo=False)
        return scores
