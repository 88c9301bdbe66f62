"""FSDP (and SFP, ASFP, FPGM, L1) in your own training loop: the public API.

    pruner = Pruner(model, method="fsdp", rates={"cs": 0.1, "gm": 0.4}, epochs=200,
                    cs_data=cs_loader, optimizer=opt)
    for epoch in range(200):
        train_one_epoch(model, opt, ...)   # your code, unchanged
        pruner.step(epoch)                 # the CS pass when due, then the mask update
    small = pruner.compact()               # the exact smaller nn.Module

What each call does:
* ``Pruner(...)`` finds the prunable convs (every conv whose output goes through a
  BatchNorm2d, from the model's one fx graph: ``compaction.ModelGraph``, which a target's
  costs and ``compact()`` walk too; a model fx cannot trace is refused here), builds the method's schedule and mask, and hooks the gradient
  scaling onto ``optimizer.step`` (``register_step_pre_hook``), so gradients of the selected
  filters are scaled after your ``backward()`` (and after a GradScaler's unscale, and after
  DDP's all-reduce, and once per step under gradient accumulation). It changes nothing yet.
* the first mask (SFP/FPGM prune before epoch 0) is applied by ``start()``, or on its own at
  the model's first forward in training mode — so loading your checkpoints first is safe.
* ``step(epoch)`` after each training epoch, in order: the CS pass when due (summed over DDP
  ranks), the selection and the attenuation of the selected filters (every ``prune_every``
  epochs, and always after the last).
* ``compact()`` after the last step: the physically smaller network, equal in outputs, traced
  at ``input_shape`` — given, else the size of the first batch the model saw, else the one it
  declares (timm's ``pretrained_cfg``, torchvision's weights).
* ``state_dict()`` / ``load_state_dict()`` for your own checkpoints: resuming is bit-exact.

A budget instead of rates: ``Pruner(model, "fpgm", target={"flops": 0.5}, epochs=…,
input_shape=(3, 32, 32))`` prunes until the compact network has half the dense FLOPs (within
1 % of the dense count), one rate for every layer (``allocation="uniform"``) or counts per
layer from the criterion's scores (``allocation="global"``); see ``method/allocation.py``.

On a CPU, make ``torch.set_flush_denormal(True)`` the first line of your program: the selected
filters are attenuated towards zero, and late in a run their values (and what they produce)
can underflow into subnormal floats, which many CPUs compute with 7× more slowly. The mode is
per thread and the intra-op threads inherit it when the first parallel op starts them, so set
it before any tensor work (the scripts do it for you; ``--keep_subnormals`` opts out there).
"""
import contextlib
from dataclasses import replace

import numpy as np
import torch
from torch import nn

from .. import distributed as dist
from ..compaction import ModelGraph, NetworkCost, compact_model
from ..errors import OptionError, UserError
from ..hands_off import rng_untouched
from ..method.allocation import Allocator
from ..method.budget import PlanMaker, counted_once
from ..method.criteria import criterion
from ..method.graph import PrunableConv
from ..method.groups import expand_all, layers_of
from ..method.mask import Mask
from ..method.methods import Pruning, resolve
from ..method.schedule import Curves
from . import options
from .coupling import coupled_groups, coupling_of
from .cs_data import first_batch
from .messages import PruningWarning, plan_lines, to_logging

__all__ = ["Pruner", "PruningWarning"]


class Pruner:
    def __init__(self, model: nn.Module, method: str | Pruning = "fsdp", rates: dict | None = None,
                 epochs: int | None = None, *, optimizer=None, cs_data=None,
                 num_classes: int | None = None, tau: float | None = None,
                 attenuation: float = 1.0, zero_scaling: bool = False,
                 attenuate: str | None = None, prune_every: int = 1, cs_every: int = 2,
                 round_to: int = 1, cs_mode: str = "train", cs_batches: int | None = None,
                 include: str | None = None, exclude: str | None = None,
                 convs: list[PrunableConv] | None = None, amp_dtype=None, cs_transform=None,
                 class_names=None, log=None, auto_start: bool = True,
                 target: dict | None = None, allocation: str | None = None, input_shape=None,
                 check_compact: bool = True, graph: ModelGraph | None = None,
                 hands_off: bool = True, coupling: str = "none"):
        """Every option is checked here, before the first epoch (``OptionError``, a
        ``UserError``, naming the keyword and the fix); docs/api.md, 'Every option' says what
        each does. ``method``: a name (``fsdp``, ``fpgm``, ``sfp``, ``asfp``, ``l1``, or one
        registered) with ``rates`` ({criterion: final share}, the method's defaults where
        missing) and ``epochs``, or a resolved ``Pruning``. ``cs_data``: batches of (inputs,
        labels) for the CS pass (fsdp), its first batch checked now. ``attenuate``: "bn" by
        default (the selected channels' BatchNorm too: docs/api.md says why), "weights" as the
        paper. ``cs_mode``: "train" (batch statistics, the running ones put back: the
        default), "reference" (the authors': the network's own mode, running statistics
        updated), "eval". ``check_compact``: trace the model at the input size (``input_shape``
        or ``cs_data``'s) now and refuse what ``compact()`` would refuse. ``hands_off``: leave
        the global RNGs as found (the training driver keeps the authors' draws: False).
        ``graph``: the model's ``ModelGraph`` when the caller has traced it already.
        ``input_shape``: the input's (C, H, W), for what is kept whole and the compact network
        (without it: the first batch the model sees, or the size the model declares).
        ``coupling``: "residual" makes the convs whose outputs meet in one residual sum
        select the same channels, as one layer (``method/groups.py``), so that the compact
        network's residual streams are narrow too; "none" (the default) lets every conv
        select its own."""
        self.model = options.model_of(model)
        self._graph = graph
        self.input_shape = options.input_shape_of(input_shape)
        self.hands_off = options.switch("hands_off", hands_off)
        self.log = options.callable_or_none("log", log) or to_logging
        self.pruning = self._pruning(method, rates, epochs, tau, attenuation, zero_scaling,
                                     attenuate, prune_every, target, allocation)
        cs_every = options.whole("cs_every", cs_every)
        round_to = options.whole("round_to", round_to)
        self.coupling = coupling_of(coupling)
        options.switch("auto_start", auto_start)
        self.convs = convs if convs is not None else self.graph.prunable_convs(
            options.regex("include", include), options.regex("exclude", exclude))
        if not self.convs:
            if convs is None and self.graph.pairs and not self.graph.prunable_convs():
                raise UserError(f"nothing is left to prune: {self.graph.nothing_prunable()}")
            raise UserError(f"no prunable conv in this {type(self.model).__name__}: FSDP prunes "
                            "the Conv2d layers whose output goes through a BatchNorm2d; check "
                            "include=/exclude=, or prune a model that has conv→BN pairs")
        shape = self.input_shape
        data_pass = None
        if self.pruning.method.uses_data:
            data_pass, first = self._data_pass(
                cs_data, num_classes, options.choice("cs_mode", cs_mode, options.CS_MODES),
                options.whole("cs_batches", cs_batches, optional=True),
                options.amp_dtype_of(amp_dtype),
                options.callable_or_none("cs_transform", cs_transform), class_names)
            shape = shape or tuple(first.shape[1:])
        # without an input size, the check waits for the first training batch (auto_start)
        self._unchecked_shape = options.switch("check_compact", check_compact) and shape is None
        if check_compact and shape is not None:
            self._check_compactable(shape)
        self.groups = [] if self.coupling == "none" else coupled_groups(
            self.graph, self.convs, shape, type(self.model).__name__, self.log)
        plan, maker = self._budget(shape, round_to)
        self.schedule = self.pruning.schedule()
        self.mask = Mask(self.convs, self.pruning.method, self.schedule, data_pass, cs_every,
                         round_to, plan, maker, self.groups)
        self.epoch, self.started = -1, False  # the last epoch stepped; the first mask applied
        self._hooks = []
        optimizer = options.optimizer_of(optimizer)
        if optimizer is not None:
            self._hooks.append(optimizer.register_step_pre_hook(
                lambda opt, args, kwargs: self.mask.scale_gradients()))
        self._warn_what_will_differ(optimizer, cs_every)
        self._start_hook = (self.model.register_forward_pre_hook(self._start_on_training)
                            if auto_start else None)
        # hooks last: a refused Pruner leaves none on the user's model
        self._input_hook = None if self.input_shape else \
            self.model.register_forward_pre_hook(self._see_input)

    def _pruning(self, method, rates, epochs, tau, attenuation, zero_scaling, attenuate,
                 prune_every, target, allocation) -> Pruning:
        """The method with its options resolved; ``attenuate`` None: "bn" where something is
        selected and every BatchNorm has γ and β to scale, else "weights"."""
        if isinstance(method, Pruning):
            return method
        if epochs is None:
            raise OptionError("Pruner needs ⟨epochs⟩=: the schedule runs over the whole training")
        given = "weights" if attenuate is None else attenuate
        pruning = resolve(method, rates, epochs, tau, attenuation, zero_scaling, given,
                          prune_every, target, allocation)
        if attenuate is None and pruning.total > 0 and all(
                m.affine for m in self.model.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)):
            pruning = replace(pruning, method=pruning.method.with_attenuate("bn"))
        return pruning

    def _check_compactable(self, shape) -> None:
        """What ``compact()`` would refuse, refused now (the model traced at ``shape``)."""
        try:
            self.graph.with_shapes(shape).check_compactable(self.convs)
        except UserError as e:
            raise UserError(f"{e} (compact() would refuse it after training; pass "
                            "check_compact=False to train and soft-prune it anyway)") from None

    def _warn_what_will_differ(self, optimizer, cs_every: int) -> None:
        """A method that scales gradients without an optimizer to hook, and a CS share the
        authors' rule drops (its list is the last pass's, cut at that epoch's count)."""
        m = self.pruning.method
        if optimizer is None and m.scale_grads and self.mask.active:
            self.log(f"warning: method {m.name!r} scales the selected filters' gradients at "
                     "every optimizer step, and no optimizer= was given: pass optimizer=, or "
                     "call pruner.scale_gradients() after each backward()")
        if not (self.mask.active and m.uses_data) or self.pruning.target is not None:
            return
        last = self.pruning.epochs - 1
        at_pass = (last // cs_every) * cs_every
        planned = sum(self.mask.layer_counts(c, last)[0] for c in self.layers)
        kept = sum(self.mask.layer_counts(c, at_pass)[0] for c in self.layers)
        if kept < planned:
            self.log(f"warning: with cs_every={cs_every} and epochs={self.pruning.epochs} the "
                     f"CS share selects {kept} of the {planned} filters it plans: the authors' "
                     f"rule keeps the list of the last CS pass (after epoch {at_pass}) to the "
                     "end; set cs_every to a divisor of epochs − 1 (cs_every=1 always is)")

    @property
    def layers(self) -> list:
        """What the schedule counts as layers: every conv on its own, a coupled group as one
        (``method.groups.Layer``: name, filters, members)."""
        return self.mask.layers

    @property
    def graph(self) -> ModelGraph:
        """The model's one traced graph: the prunable convs, a target's costs, the compact
        network (traced when first needed)."""
        if self._graph is None:
            self._graph = ModelGraph(self.model, self.input_shape)
        return self._graph

    def _see_input(self, module, inputs):
        """The model's real input: the size of the first batch it sees."""
        x = inputs[0] if inputs else None
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            self.input_shape = tuple(x.shape[1:])
            self._input_hook.remove()
            self._input_hook = None

    def _budget(self, input_shape, round_to: int):
        """A target's plan (uniform: now) or its maker (global: from the scores during the
        run); the convs become those the target counts (``budget.counted_once``)."""
        self.allocator = None
        target = self.pruning.target
        if target is None:
            return None, None
        if input_shape is None:
            raise UserError("a target needs input_shape=(C, H, W): the FLOPs and parameters are "
                            "counted for one image of that size")
        members = {n for g in self.groups for n, _ in g.members}
        self.convs = counted_once(self.convs, keep=members)
        layers = layers_of(self.convs, self.groups)
        cost = NetworkCost(self.graph, input_shape)
        self.allocator = Allocator(
            layers, lambda pruned: cost(expand_all(layers, pruned))[target.index], target,
            self.pruning.first_share, round_to)
        if target.allocation == "uniform":
            plan = self.allocator.uniform()
            for line in self.plan_lines(plan, layers):
                self.log(line)
            return plan, None
        self.allocator.check_reachable()
        return None, PlanMaker(self.pruning.plan_criterion, self._global_plan)

    def _global_plan(self, scores: dict) -> dict:
        """Every rank makes the plan from the same scores; rank 0's is the one kept, so no
        difference in the last bit between devices can split the ranks."""
        plan = dist.broadcast_object(self.allocator.global_(scores))
        for line in self.plan_lines(plan):
            self.log(line)
        return plan

    def plan_lines(self, plan: dict | None = None, layers: list | None = None) -> list[str]:
        """The log lines of a target's plan (the mask's, by default): what it keeps."""
        plan = plan if plan is not None else self.mask.plan
        return plan_lines(self.allocator, plan, layers or self.layers)

    def set_log(self, log) -> None:
        """Where the pruner's messages (a target's plan, the CS pass) go from now on."""
        self.log = log
        if self.mask.data_pass is not None:
            self.mask.data_pass.log = log

    def scale_gradients(self) -> None:
        """The selected filters' gradients × the method's factor: what the optimizer hook
        does before every step (call it after ``backward()`` when no ``optimizer=`` was
        given)."""
        self.mask.scale_gradients()

    def _data_pass(self, data, num_classes, mode, batches, amp_dtype, transform, names):
        """The pass over ``cs_data`` of the method's criterion that scores from data, and
        ``cs_data``'s first batch, checked (its inputs as the model gets them)."""
        first = criterion(self.pruning.method.first)
        if data is None:
            raise OptionError(f"method {self.pruning.method.name!r} scores filters by "
                              f"{first.title}: give ⟨cs_data⟩=, a loader of (inputs, labels)")
        num_classes = options.num_classes_of(num_classes, self.model)
        names = options.class_names_of(names, num_classes)
        device = next(self.model.parameters()).device
        inputs, labels = first_batch(data, num_classes, device, transform)
        if len(labels.unique()) < 2:
            self.log(f"warning: the first batch of cs_data holds samples of one class only "
                     f"({int(labels[0])}): class separability needs two or more across the "
                     "pass (a pass that sees one class is refused)")
        data_pass = first.data_pass(self.convs, data, num_classes=num_classes, device=device,
                                    mode=mode, max_batches=batches, amp_dtype=amp_dtype,
                                    transform=transform, class_names=names, log=self.log)
        return data_pass, inputs

    # -- the calls of a training loop ---------------------------------------------------------
    def _start_on_training(self, module, inputs):
        if not module.training:
            return
        if self._unchecked_shape and inputs and isinstance(inputs[0], torch.Tensor):
            self._unchecked_shape = False  # the input size is known now, before any training
            self._check_compactable(tuple(inputs[0].shape[1:]))
        self.start()

    def start(self) -> None:
        """The mask before training (epoch 0); the CS pass before training, when one is due,
        runs in eval mode as the reference's did (it followed a validation)."""
        self._drop_start_hook()
        if self.started:
            return
        self.started = True
        was_training = self.model.training
        self.model.eval()
        try:
            with self._hands_off():
                self.mask.update(self.model, 0)
        finally:
            self.model.train(was_training)

    def step(self, epoch: int) -> bool:
        """After training epoch ``epoch`` (0, 1, 2, … in order); True if the mask was updated."""
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            raise OptionError(f"Pruner.step(epoch) takes the epoch just trained, a whole number "
                              f"(got {epoch!r})")
        if epoch != self.epoch + 1:
            raise UserError(f"Pruner.step({epoch}) after step({self.epoch}): call step(epoch) "
                            f"once after each training epoch, in order (next: {self.epoch + 1})")
        if epoch >= self.pruning.epochs:
            raise UserError(f"Pruner.step({epoch}): the schedule has {self.pruning.epochs} "
                            f"epochs (0..{self.pruning.epochs - 1}); pass epochs= of the whole run")
        self.start()
        self.epoch = epoch
        if epoch % self.pruning.prune_every == 0 or epoch == self.pruning.epochs - 1:
            with self._hands_off():
                self.mask.update(self.model, epoch)
            return True
        return False

    def _hands_off(self):
        """The global RNGs as the pass over data found them (a DataLoader draws to seed its
        workers), unless the caller keeps the authors' draws (the training driver)."""
        return rng_untouched() if self.hands_off else contextlib.nullcontext()

    def compact(self, exact: bool = True) -> nn.Module:
        """The physically smaller network (eval mode), equal in outputs to the soft-pruned one;
        after ``step(epochs - 1)``, when the selected filters are exactly zero."""
        if self.epoch != self.pruning.epochs - 1:
            raise UserError(f"Pruner.compact() needs the final mask: call it after "
                            f"step({self.pruning.epochs - 1}) (the last step was {self.epoch})")
        return compact_model(self.graph, self.selected(), exact, input_shape=self.input_shape)

    def remove(self) -> None:
        """Detach the optimizer and model hooks (the mask stays as it is)."""
        self._drop_start_hook()
        if self._input_hook is not None:
            self._input_hook.remove()
            self._input_hook = None
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _drop_start_hook(self) -> None:
        if self._start_hook is not None:
            self._start_hook.remove()
            self._start_hook = None

    # -- what it selected, and checkpoints ----------------------------------------------------
    @property
    def active(self) -> bool:
        """False when nothing is ever selected (every rate 0): a plain training loop."""
        return self.mask.active

    def zeta(self, epoch: int) -> float:
        """ζ at ``epoch``: the factor of the selected filters' weights (and gradients)."""
        return self.schedule.at(epoch)["zeta"]

    def total_filters(self) -> int:
        """The prunable filters (a coupled group, and under a target a depthwise conv with
        its producer, counted once)."""
        return self.mask.total_filters()

    def total_selected(self) -> int:
        return self.mask.total_selected()

    def selected_counts(self) -> dict:
        """{conv name: filters selected at the last update}."""
        return self.mask.selected_counts()

    def final_counts(self) -> dict:
        """{layer name: (first, second) counts the last update will select} (a layer: a conv,
        or a coupled group)."""
        return self.mask.final_counts()

    def selected_shares(self) -> dict:
        """{criterion: the share of the prunable filters it selected at the last update}."""
        total = max(self.mask.total_filters(), 1)
        m = self.mask
        return {crit: sum(len(selected[c.name]) for c in m.layers) / total
                for crit, selected in ((m.method.first, m.selected_first),
                                       (m.method.second, m.selected_second)) if crit}

    def selected(self) -> dict:
        """{conv name: selected filter indices} of the last update."""
        return {c.name: self.mask.selected(c.name) for c in self.convs}

    def shares(self, epoch: int) -> dict:
        """``theta`` and each criterion's ``theta_<name>`` at ``epoch`` (metrics.csv): the
        schedule's rates; under a target, the share of the counted filters that the epoch's
        counts select (a layer's own count follows the schedule's progress)."""
        if self.pruning.target is None:
            at = self.schedule.at(epoch)
        else:
            counts = [self.mask.layer_counts(c, epoch) for c in self.layers]
            total = self.mask.total_filters()
            first, second = (sum(n[i] for n in counts) / total for i in (0, 1))
            at = {"theta": first + second, "first": first, "second": second}
        return {"theta": at["theta"], **self.pruning.shares(at)}

    def display_schedule(self, points: int = 2001) -> Curves:
        """The schedule as the figures draw it, at most ``points`` epochs of it: under a
        target, θ and the shares as ``shares`` gives them (ζ is the schedule's)."""
        curves = self.schedule.curves(points)
        if self.pruning.target is None:
            return curves
        rows = [self.shares(int(e)) for e in curves.epochs]
        m = self.pruning.method
        arrays = {key: np.array([r[f"theta_{c}"] if c else 0.0 for r in rows])
                  for key, c in (("theta_first", m.first), ("theta_second", m.second))}
        return replace(curves, theta=np.array([r["theta"] for r in rows]), **arrays)

    def widths(self) -> list[tuple[str, int, int, int]]:
        """Per counted layer (a coupled group once): (name, filters, filters kept at the end,
        kept now)."""
        final = self.mask.final_counts()
        return [(c.name, c.filters, c.filters - sum(final[c.name]),
                 c.filters - len(self.mask.layer_selected(c.name))) for c in self.layers]

    def state_dict(self) -> dict:
        """Tensors, numbers and strings only (``torch.load(weights_only=True)`` reads it)."""
        p = self.pruning
        # the coupling only when on: an uncoupled state is the one saved before it existed
        coupled = {"coupling": self.coupling} if self.coupling != "none" else {}
        return {**self.mask.state_dict(), "step_epoch": self.epoch, "started": self.started,
                "rates": dict(p.rates), "epochs": p.epochs, "target": self._target_text(),
                **coupled}

    def _target_text(self) -> str:
        return str(self.pruning.target) if self.pruning.target else ""

    def continue_after(self, epoch: int) -> None:
        """Continue a run whose last stepped epoch is ``epoch`` (a resumed run; a state saved
        inside an epoch, or before ``step_epoch`` was saved, may say otherwise)."""
        self.epoch = int(epoch)
        if epoch >= 0:
            self.started = True
            self._drop_start_hook()

    def load_state_dict(self, state: dict) -> None:
        p = self.pruning
        made = (state.get("method"), state.get("rates", p.rates), state.get("epochs", p.epochs),
                state.get("target", ""), state.get("coupling", "none"))
        now = (p.method.name, p.rates, p.epochs, self._target_text(), self.coupling)
        if made != now:
            said = [f"method {m!r}, rates {r}, {e} epochs, target {t or 'none'!r} and "
                    f"coupling {c!r}" for m, r, e, t, c in (made, now)]
            raise UserError(f"this pruner state was made with {said[0]}, not {said[1]}; build "
                            "the Pruner as it was built then")
        try:
            self.mask.load_state_dict(state)
        except ValueError as e:
            raise UserError(f"{e}: load the state of a pruner of this very model") from None
        self.epoch = int(state.get("step_epoch", self.mask.epoch))
        self.started = bool(state.get("started", self.mask.epoch >= 0))
        if self.started:
            self._drop_start_hook()
