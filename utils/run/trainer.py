"""One run's objects and its epochs: build, restore, train, finish (``driver`` is the command
line around it). The run is built from named parts — loaders (``utils.run.loaders``), the
pruner (``utils.pruner``, the public API the scripts are clients of), the log and the summary.
"""
import os
import time

import torch

from . import loaders
from .. import distributed as dist
from ..compaction import ModelGraph, NetworkCost, compact_model, export_pt2, save_compact
from ..errors import UserError
from ..method.attenuation import AttenuationProbe
from ..method.budget import TOLERANCE
from ..method.methods import Pruning
from ..method.schedule import count
from ..pruner import Pruner
from ..report.figures import asked_keep_ratio, compaction_figures
from ..report.logger import RunLog
from ..report.plots import plot_curves, plot_schedule
from ..report.summary import run_summary
from .checkpoint import refuse_non_finite, restore_checked, rng_states, write_checkpoint
from .cli import pruning_from_args
from .data import Data
from .engine import evaluate, lr_at, refreshed_bn_copy, train_one_epoch
from .precision import amp_dtype, amp_warning
from .pretrained import initial_model, load_pretrained
from .sampling import check_seeded
from .save_path import prepare_save_path

PLOT_EVERY_S = 20.0  # while a run trains, its plots lag metrics.csv by at most this (seconds)


def _check_data(args, data: Data, device) -> None:
    if len(data.train) == 0 or len(data.test) == 0:
        raise UserError(f"the dataset under {args.data_path} is empty; check --data_path")
    check_seeded(data.train, data.batch_transform, device)


class Trainer:
    """One run, built from named parts: the model and its prunable convs, the loaders
    (``utils.run.loaders``), the pruner (``utils.pruner``: method, schedule, mask, CS pass and the
    optimizer's gradient hook), the optimizer, the attenuation probe and the run's log; it
    holds where training stands."""

    def __init__(self, args, data: Data, device: torch.device, resuming: bool = False,
                 pruning: Pruning | None = None, checked: dict | None = None):
        _check_data(args, data, device)
        self.args, self.data, self.device = args, data, device
        self.pruning = pruning or pruning_from_args(args)
        self.model = initial_model(args, data.num_classes, data.in_channels, resuming).to(device)
        # the model's one fx graph: its prunable convs, every epoch's cost, the compact network
        self.graph = ModelGraph(self.model, data.input_shape)
        self.convs = _prunable(self.graph, args)
        self.amp_dtype = amp_dtype(args, device)
        self.batch = loaders.per_rank(args.batch_size)
        self.train_loader = loaders.train_loader(args, data, device)
        self.test_loader = loaders.test_loader(args, data, device)
        if args.pretrain_path and not resuming:  # before the folder: bad weights leave none
            load_pretrained(self.model, args.pretrain_path, args.arch)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.learning_rate,
                                         momentum=args.momentum, weight_decay=args.decay,
                                         nesterov=bool(args.nesterov))
        self.pruner = self._pruner()  # before the folder too: an unreachable target leaves none
        self.convs = self.pruner.convs  # a target counts coupled layers once

        # locked from here to the end of the process (of ``main``: ``lock.release``)
        prepare_save_path(args.save_path, args.overwrite, checked)
        self.log = RunLog(args.save_path, args.tensorboard)
        self.pruner.set_log(self.log)
        self.method = self.pruning.method
        # the effective attenuation (utils/method/attenuation.py), if anything is pruned
        self.probe = (AttenuationProbe(self.convs, loaders.probe_batch(args, data, device))
                      if self.pruner.active else None)
        self.scaler = (torch.amp.GradScaler(device.type)
                       if self.amp_dtype == torch.float16 else None)
        self.cost = NetworkCost(self.graph, data.input_shape)  # the compactor's graph walk
        self.dense_cost = self.cost({})
        self.net = self.model
        if dist.world_size() > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.history, self.wall = [], 0.0
        self.start_epoch, self.start_batch, self.epoch_state = 0, 0, None
        self._refresh_loader = None  # --eval_bn_refresh, built on first use
        self._args_changed = False  # flags changed on resume, for args.json at the next save
        # when curves.png and schedule.png were last drawn: the schedule is drawn at the start,
        # so a run shorter than PLOT_EVERY_S draws its curves once, when it stops or ends
        self._drawn = time.monotonic()

    def _pruner(self) -> Pruner:
        """The run's Pruner: the authors' draws from the global RNGs kept (``hands_off``
        False); its messages kept until the run's log exists (``_early``); a model the
        compactor refuses trains and says so at the end (``check_compact`` False)."""
        args, data = self.args, self.data
        cs = (loaders.cs_loader(args, data, self.device) if self.pruning.method.uses_data
              else None)
        self._early = []
        return Pruner(self.model, self.pruning, optimizer=self.optimizer, cs_data=cs,
                      convs=self.convs, num_classes=data.num_classes,
                      cs_every=args.epoch_apply_cs, round_to=args.round_to,
                      cs_mode=args.cs_mode, cs_batches=args.max_iter_cs,
                      amp_dtype=self.amp_dtype, cs_transform=data.batch_transform,
                      class_names=data.classes, auto_start=False,
                      input_shape=data.input_shape, graph=self.graph, hands_off=False,
                      check_compact=False, coupling=args.coupling,
                      log=lambda message, echo=True: self._early.append((message, echo)))

    @property
    def mask(self):
        """The pruner's mask and schedule, for tests and benches that look inside them (the
        driver itself uses the pruner's methods)."""
        return self.pruner.mask

    @property
    def schedule(self):
        return self.pruner.schedule

    # -- the steps of a run ------------------------------------------------------------------
    def start(self) -> None:
        """A fresh run: header, plots of the schedule, and the mask before training."""
        args = self.args
        name = self.method.name.upper() if self.pruner.active else "dense (all rates 0)"
        variant = (" with --attenuate bn (BN γ, β attenuated with the filters)"
                   if self.method.attenuate == "bn" else "")
        self.log(f"{name} run{variant}: {args.arch} on {args.dataset}, "
                 f"{len(self.data.train)} train / {len(self.data.test)} test samples, "
                 f"{len(self.convs)} prunable convs ({self.pruner.total_filters()} filters), device "
                 f"{self.device}, {dist.world_size()} process(es), effective batch "
                 f"{self.batch * dist.world_size()}, base lr {args.learning_rate:g}")
        self.log.args(dict(vars(args)))
        for message, echo in self._early:  # the pruner's warnings, from before the log existed
            if message.startswith("warning: "):
                self.log(message, echo)
        self._log_device_notes()
        kept = self.graph.kept_line()
        if kept:  # what the compactor has no rule for: run as it is, the convs feeding it too
            self.log(kept)
        self._log_rounding()
        for line in self.pruner.plan_lines():
            self.log(line)
        if dist.is_main():
            plot_schedule(self.pruner.display_schedule(),
                          os.path.join(args.save_path, "schedule.png"), self.method,
                          widths=self._widths())
        if self.pruner.active:
            # the reference validates first, so the first CS pass runs in eval mode
            before = self._evaluate(self.model)
            self.log(f"before training: test top1 {before['top1']:.2f} loss {before['loss']:.4f}")
            if self.probe is not None:  # the channels' std before any selection
                self.probe.observe(self.model, {})
            self.pruner.start()
            if self.probe is not None:
                self.probe.selected(self.pruner.selected())

    def restore(self, ckpt: dict, path: str, changes: dict | None = None) -> None:
        """Continue from ``ckpt``; ``changes``: the flags given other values than the
        checkpoint's (only those that may change), logged now and recorded in args.json with
        the next checkpoint."""
        where = restore_checked(ckpt, path, model=self.model, optimizer=self.optimizer,
                                scaler=self.scaler, pruner=self.pruner, probe=self.probe,
                                device=self.device)
        self.history, self.wall = where["history"], where["wall"]
        self.start_epoch, self.start_batch = where["epoch"], where["batch"]
        self.pruner.continue_after(self.start_epoch - 1)
        self.epoch_state = where["epoch_state"] if dist.rank() == 0 else None
        at = f"epoch {self.start_epoch}" + (f", batch {self.start_batch}" if self.start_batch
                                            else "")
        self.log(f"resumed from {path} at {at}")
        if not where["digest"]:
            self.log(f"note: {path} carries no digest (written before checkpoints had one), so "
                     "its contents could not be checked")
        if where["rng_ranks"] != dist.world_size():
            self.log(f"note: {path} holds the random states of {where['rng_ranks']} process(es), "
                     f"this run has {dist.world_size()}: each rank restores its own where there "
                     "is one and keeps its fresh seed otherwise, so the run goes on, but not bit "
                     "for bit (docs/runs.md, 'Resuming a run')")
        for key, (old, new) in (changes or {}).items():
            self.log(f"--{key} changed on resume at {at}: {old} → {new}")
        self._args_changed = bool(changes)
        self._log_device_notes()

    def train_epochs(self, stop) -> int | None:
        """Train until the last epoch; an exit code when stopped early (resumable)."""
        args = self.args
        if self.start_epoch >= args.epochs:  # killed after its last checkpoint
            self.log(f"all {args.epochs} epochs were already trained; writing the final outputs")
            return None
        for ran, epoch in enumerate(range(self.start_epoch, args.epochs), start=1):
            if not self.run_epoch(epoch, stop):
                return stop.exit_code
            if epoch == args.epochs - 1:
                return None
            if stop.agreed():
                self._write_tables(draw=True)
                self.log(f"{stop.name}: stopped after epoch {epoch}; continue with --resume auto")
                return stop.exit_code
            if args.stop_after is not None and ran >= args.stop_after:
                self._write_tables(draw=True)
                self.log(f"stopped after epoch {epoch} (--stop_after {args.stop_after}); continue "
                         "with --resume auto")
                return 0
        return None

    def train_and_prune(self, epoch: int, stop=None) -> dict:
        """One training epoch, the attenuation probe and the pruner's step: what an epoch of
        the method costs (``bench.epoch_cost`` times this). ``interrupted`` when stopped."""
        args = self.args
        lr = lr_at(epoch, args.learning_rate, args.schedule, args.gammas)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.train_loader.sampler.set_epoch(epoch, self.start_batch * self.batch)
        train = train_one_epoch(self.net, self.train_loader, self.optimizer, self.device, epoch,
                                self.scaler, self.amp_dtype, self.log, args.print_freq,
                                args.nan_policy, stop.requested if stop else None, self.start_batch,
                                self.epoch_state, self.data.batch_transform)
        self.start_batch, self.epoch_state = 0, None
        train["lr"] = lr
        if train["interrupted"]:
            return train
        dist.broadcast_buffers(self.model)  # every rank goes on with the same BN statistics
        # what the selection this epoch trained with left of its channels, before the update
        train["attenuation"] = (self.probe.observe(self.model, self.pruner.selected())
                                if self.probe else None)
        if self.pruner.step(epoch) and self.probe is not None:
            self.probe.selected(self.pruner.selected())
        return train

    def run_epoch(self, epoch: int, stop=None) -> bool:
        """Train and prune one epoch, evaluate, record, checkpoint; False if interrupted."""
        t0 = time.time()
        train = self.train_and_prune(epoch, stop)
        if train["interrupted"]:
            stop.agreed()  # every rank stopped here; one not signalled itself takes SIGTERM
            self.wall += time.time() - t0
            state = train["state"]  # partial sums of all ranks; rank 0 resumes with them
            state["sums"] = dist.all_reduce_sum(state["sums"].to(self.device)).cpu()
            state["n"] = int(dist.all_reduce_sum(torch.tensor([state["n"]], device=self.device)))
            self.save(epoch, train["batches"], state)
            self.log(f"{stop.name}: stopped in epoch {epoch} after batch {train['batches']} with "
                     "a checkpoint; continue with --resume auto")
            return False
        if train["skipped"]:
            self.log(f"  skipped {train['skipped']} batches with a non-finite loss "
                     "(--nan_policy skip)")
        test = self._evaluate(self.model)
        refreshed = self._evaluate_refreshed(epoch)
        seconds = time.time() - t0
        self.wall += seconds
        self._record(epoch, train, test, refreshed, seconds)
        self.save(epoch + 1)
        self._write_tables()
        return True

    def _record(self, epoch: int, train: dict, test: dict, refreshed: dict,
                seconds: float) -> None:
        """The epoch's row of metrics.csv and its log line."""
        flops, params = self.cost(self.pruner.selected())
        row = {"epoch": epoch, "method": self.method.name, "lr": train["lr"],
               **self.pruner.shares(epoch), "zeta": self.pruner.zeta(epoch),
               "effective_attenuation": train["attenuation"], "train_loss": train["loss"],
               "train_top1": train["top1"], "test_loss": test["loss"], "test_top1": test["top1"],
               "test_top5": test["top5"], **refreshed,
               "filters_selected": self.pruner.total_selected(),
               "filters_total": self.pruner.total_filters(), "flops_eff": flops,
               "params_eff": params, "epoch_seconds": round(seconds, 3)}
        self.history.append(row)
        extra = (f" (BN refreshed {refreshed['test_top1_refreshed']:.2f})" if refreshed else "")
        reached = (f" | eff. att. {row['effective_attenuation']:.3f}"
                   if row["effective_attenuation"] is not None else "")
        self.log(f"epoch {epoch:3d}/{self.args.epochs} lr {row['lr']:.4g} θ {row['theta']:.4f} "
                 f"ζ {row['zeta']:.4f}{reached} | train loss {train['loss']:.4f} top1 "
                 f"{train['top1']:.2f} | test loss {test['loss']:.4f} top1 {test['top1']:.2f}"
                 f"{extra} top5 {test['top5']:.2f} | selected {row['filters_selected']}/"
                 f"{row['filters_total']} | {seconds:.1f}s")

    def finish(self) -> dict:
        """summary.json, the compact network and the final log line."""
        self._write_tables(draw=True)
        summary = run_summary(self.args, self.pruning, self.pruner, self.history,
                              self.dense_cost, self.wall)
        summary["compact"] = self._compact()
        parts = self.graph.parts()
        if parts:  # the convs kept whole, at their full width
            summary["kept_whole"] = parts
            summary["kept_per_layer"].update(
                {c: self.graph.modules[c].out_channels for p in parts for c in p["convs"]})
        budget = summary.get("target")
        if budget and abs(budget["reached"] - budget["fraction"]) > TOLERANCE:
            self.log(f"warning: the compact network keeps {budget['reached']:.4f} of the dense "
                     f"{budget['kind']}, the target was {budget['fraction']:g}: the selections "
                     "of coupled layers overlapped otherwise than counted "
                     "(docs/methods.md, 'Targets under coupling')")
        self.log.summary(summary)
        c = summary["compact"]
        self.log(f"done: final pruned top1 {summary['final_top1']:.2f}"
                 + (f", compact network top1 {c['top1']:.2f}, FLOPs "
                    f"−{100 * c['flops_reduction']:.1f}%, params −{100 * c['params_reduction']:.1f}%"
                    f" ({c['path'] or 'not saved'})" if c else "")
                 + f" → {self.args.save_path}")
        return summary

    # -- helpers -----------------------------------------------------------------------------
    def save(self, epoch: int, batch: int = 0, state=None) -> None:
        """checkpoint.pt; a state with NaN or inf is not written (NonFiniteState). After the
        first one of a resume that changed flags, args.json holds them too: the folder changes
        only once the run with them has a checkpoint (a full disk before leaves it as it was)."""
        rng = rng_states(self.device)  # every rank's: each was seeded with seed + rank
        if dist.is_main():
            write_checkpoint(os.path.join(self.args.save_path, "checkpoint.pt"), epoch=epoch,
                             batch=batch, epoch_state=state, args=self.args, data=self.data,
                             model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                             pruner=self.pruner, probe=self.probe, history=self.history,
                             wall=self.wall, rng=rng)
            if self._args_changed:
                self.log.args(dict(vars(self.args)))
        else:  # the same refusal on every rank (the replicas are equal): none waits for rank 0
            refuse_non_finite({"model": self.model.state_dict(),
                               "optimizer": self.optimizer.state_dict()}, epoch, batch)
        self._args_changed = False
        dist.barrier()

    def _evaluate(self, model) -> dict:
        return evaluate(model, self.test_loader, self.device, self.amp_dtype,
                        self.data.batch_transform)

    def _evaluate_refreshed(self, epoch: int) -> dict:
        """``--eval_bn_refresh N``: the test figures of a copy whose BN statistics are
        re-estimated on N training batches (the run itself is untouched)."""
        n = self.args.eval_bn_refresh
        if not n:
            return {}
        if self._refresh_loader is None:
            self._refresh_loader = loaders.refresh_loader(self.args, self.data, self.device)
        self._refresh_loader.sampler.set_epoch(epoch)
        copy = refreshed_bn_copy(self.model, self._refresh_loader, self.device, n,
                                 self.amp_dtype, self.data.batch_transform)
        stats = self._evaluate(copy)
        return {f"test_{k}_refreshed": stats[k] for k in ("loss", "top1", "top5")}

    def _widths(self) -> list | None:
        """Every prunable layer's width for schedule.png (a pruned run only)."""
        return self.pruner.widths() if self.pruner.active else None

    def _log_device_notes(self) -> None:
        """What this device makes of --amp and of the resume promise (docs/runs.md)."""
        warning = amp_warning(self.args, self.device)
        if warning:
            self.log(warning)
        if self.device.type == "cuda" and not self.args.deterministic:
            self.log("note: cuDNN picks the fastest kernels it finds and convs run in TF32, so a "
                     "resumed run differs from an uninterrupted one in the last bits; "
                     "--deterministic makes a resume bit for bit (docs/runs.md, 'Resuming a run')")

    def _log_rounding(self) -> None:
        """--round_to: how many filters every layer keeps, and what it gives up for that."""
        if self.args.round_to <= 1 or not self.pruner.active or self.pruning.target:
            return  # a target's plan is logged with the rounding in it
        rates, final = self.pruning.rates.values(), self.pruner.final_counts()
        parts = []
        for c in self.pruner.layers:  # a coupled group rounds as one layer
            n, plain = sum(final[c.name]), sum(count(c.filters, r) for r in rates)
            parts.append(f"{c.name} keeps {c.filters - n}/{c.filters} (prunes {n}, not {plain})")
        self.log(f"--round_to {self.args.round_to}: " + "; ".join(parts))

    def _write_tables(self, draw: bool = False) -> None:
        """metrics.csv every epoch; the plots when ``draw`` or PLOT_EVERY_S after the last
        drawing (a figure costs ~0.3 s: at every epoch of a 1-second epoch it would double
        the run; a run that stops or ends draws them once more)."""
        self.log.metrics(self.history)
        if not dist.is_main() or not (draw or time.monotonic() - self._drawn >= PLOT_EVERY_S):
            return
        plot_curves(self.history, os.path.join(self.args.save_path, "curves.png"))
        plot_schedule(self.pruner.display_schedule(),
                      os.path.join(self.args.save_path, "schedule.png"), self.method,
                      self.history, self._widths())
        self._drawn = time.monotonic()

    def _compact(self) -> dict | None:
        """The physically smaller network: built, saved and measured (model_compact.pt, or
        model_compact.pt2 when it keeps parts of the dense one whole); the figures are
        compact.py's, from one function (``report.figures.compaction_figures``)."""
        args, pruner = self.args, self.pruner
        try:
            compact = compact_model(self.graph, self.pruner.selected(),
                                    input_shape=self.data.input_shape, arch=args.arch)
        except UserError as e:  # a conversion the user must fix: the run still counts
            self.log(f"warning: no compact network ({e})")
            return None
        path = self._save_compact(compact) if dist.is_main() else None
        test = self._evaluate(compact)
        keep = 1 - pruner.total_selected() / max(pruner.total_filters(), 1)
        nominal = asked_keep_ratio(self.pruning.rates, keep, self.pruning.target is not None)
        figures = compaction_figures(self.graph, compact, self.data.input_shape, args.arch,
                                     keep, nominal)
        return {"path": path, "top1": test["top1"], "top5": test["top5"],
                "loss": test["loss"], **figures}

    def _save_compact(self, compact) -> str | None:
        """model_compact.pt; a network that keeps parts of the dense one whole (code, which the
        plain-data file cannot hold) as a torch.export program, model_compact.pt2, said in the
        log. Its name in the run folder, or None when torch.export cannot record it."""
        if not compact.holds():
            save_compact(compact, os.path.join(self.args.save_path, "model_compact.pt"))
            return "model_compact.pt"
        try:
            export_pt2(compact, os.path.join(self.args.save_path, "model_compact.pt2"),
                       (1, *self.data.input_shape))
        except UserError as e:
            self.log(f"warning: the compact network keeps parts whole and {e}: no file of it "
                     "was written")
            return None
        self.log("compact network: model_compact.pt2, a torch.export program "
                 "(torch.export.load(path).module()), as it keeps parts whole that a "
                 "model_compact.pt cannot hold")
        return "model_compact.pt2"


def _prunable(graph: ModelGraph, args) -> list:
    if not graph.prunable_convs():
        raise UserError(f"--arch {args.arch}: nothing is left to prune: "
                        f"{graph.nothing_prunable()}; see docs/compaction.md, 'What is kept "
                        "whole'")
    convs = graph.prunable_convs(args.prune_include, args.prune_exclude, args.layer_begin,
                                 args.layer_end, args.layer_inter)
    if not convs:
        raise UserError("no conv matches the layer selection (--layer_*/--prune_include/"
                        "--prune_exclude); widen it")
    return convs
