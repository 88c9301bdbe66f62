"""The driver shared by the dataset scripts: build, restore, train epochs, finish.

A script supplies its argument parser (the paper's defaults) and ``make_data(args) -> Data``
(utils/data.py); everything else — method, schedule, mask, DDP, AMP, resume, logging,
checkpoints, compaction — lives here once. ``Trainer`` holds one run's objects; ``run`` is the
command-line sequence over it.
"""
import os
import random
import sys
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from models import build_model

from . import distributed as dist
from .attenuation import AttenuationProbe, probe_batch
from .checkpoint import safe_load
from .cli import check_args
from .compact import compact_model, compaction_figures, save_compact
from .cs_ranker import CSRanker
from .data import Data
from .engine import (NonFiniteLoss, evaluate, lr_at, refreshed_bn_copy, train_one_epoch)
from .errors import UserError
from .flops import effective_cost, layer_geometry
from .graph import find_prunable_convs
from .logger import RunLog
from .mask import Mask
from .methods import resolve_method_args
from .plots import plot_curves, plot_schedule
from .schedule import count
from .sampling import EpochSampler, SeededDataset, check_seeded
from .snapshot import (check_save_path, prepare_save_path, read_checkpoint, restore_checkpoint,
                       write_checkpoint)
from .stop import StopRequest

# loader streams: each draws its own order and per-sample seeds from (seed, stream, epoch)
TRAIN, CS, TEST, BN_REFRESH, PROBE = range(5)


def main(parser, make_data, argv=None, check=None, resume_keys: tuple = ()) -> int:
    """Parse, run, and turn user errors into one line on stderr with exit status 2.

    ``check(args)``: the script's own argument checks (raise ``UserError``); ``resume_keys``:
    its flags that a resumed run must share with the checkpoint, beside RESUME_MUST_MATCH.
    """
    args = parser.parse_args(argv)
    try:
        check_run_args(args, check)
        return run(args, make_data, resume_keys)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C: leave at once, the last checkpoint stays
        print("interrupted; the last checkpoint is kept — continue with --resume auto",
              file=sys.stderr)
        return 130
    except NonFiniteLoss as e:
        if args.debug:
            raise
        print(f"error: {e}; the last good checkpoint is kept — lower --learning_rate, or pass "
              "--nan_policy skip", file=sys.stderr)
        return 3
    finally:
        dist.cleanup()


def check_run_args(args, check=None) -> None:
    """Every check of the parsed flags that ``main`` makes before any work; fills in the
    method's defaults. Raises UserError."""
    check_args(args)
    resolve_method_args(args)
    if check is not None:
        check(args)


def _one_line(e: UserError) -> str:
    """A UserError raised in a DataLoader worker comes back with the worker's traceback in
    its message; its own message is the last line, after the class name."""
    text = str(e)
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return text


def run(args, make_data, resume_keys: tuple = ()) -> int:
    device = dist.init_from_env(args.device)
    seed_given = args.manualSeed is not None
    args.manualSeed = dist.broadcast_object(args.manualSeed if seed_given
                                            else random.randint(1, 10000))
    _seed_everything(args.manualSeed + dist.rank(), args.deterministic)
    if args.evaluate:
        return _evaluate_only(args, make_data(args), device)
    resume = check_save_path(args)
    ckpt = read_checkpoint(resume, args, seed_given, resume_keys) if resume else None
    if ckpt is not None:
        args.manualSeed = ckpt["args"]["manualSeed"]  # the data order depends on it

    trainer = Trainer(args, make_data(args), device, ckpt is not None)  # the seed is final here
    if ckpt is not None:
        trainer.restore(ckpt, resume)
    else:
        trainer.start()
    with StopRequest() as stop:
        code = trainer.train_epochs(stop)
    if code is not None:
        return code
    trainer.finish()
    return 0


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = not deterministic


def _amp_dtype(args, device) -> torch.dtype | None:
    if not args.amp:
        return None
    if args.amp == "bf16" or device.type != "cuda":
        return torch.bfloat16
    return torch.float16


def _loader(ds, batch_size, args, device, sampler, every_epoch: bool = False):
    """``every_epoch``: keep the worker processes between epochs (train and test loaders;
    the CS and BN-refresh ones run now and then and would only hold processes)."""
    return DataLoader(SeededDataset(ds), batch_size=batch_size, sampler=sampler,
                      num_workers=args.workers, pin_memory=device.type == "cuda",
                      persistent_workers=every_epoch and args.workers > 0)


def _test_loader(args, data: Data, device):
    sampler = EpochSampler(len(data.test), args.manualSeed, TEST, dist.rank(), dist.world_size(),
                           shuffle=False)
    return _loader(data.test, args.batch_size, args, device, sampler, every_epoch=True)


def _check_data(args, data: Data, device) -> None:
    if len(data.train) == 0 or len(data.test) == 0:
        raise UserError(f"the dataset under {args.data_path} is empty; check --data_path")
    check_seeded(data.train, data.batch_transform, device)


def _evaluate_only(args, data: Data, device) -> int:
    model = build_model(args.arch, data.num_classes, data.in_channels).to(device)
    source = (os.path.join(args.save_path, "checkpoint.pt") if args.resume == "auto"
              else args.resume or args.pretrain_path)
    _load_pretrained(model, source, args.arch)
    stats = evaluate(model, _test_loader(args, data, device), device, _amp_dtype(args, device),
                     data.batch_transform)
    if dist.is_main():
        print(f"test: top1 {stats['top1']:.2f}  top5 {stats['top5']:.2f}  "
              f"loss {stats['loss']:.4f}  ({stats['n']} images)")
    return 0


class Trainer:
    """One run: the model, its mask and optimizer, the loaders, and where training stands."""

    def __init__(self, args, data: Data, device: torch.device, resuming: bool = False):
        _check_data(args, data, device)
        self.args, self.data, self.device = args, data, device
        world, rank = dist.world_size(), dist.rank()
        self.model = build_model(args.arch, data.num_classes, data.in_channels).to(device)
        self.convs = find_prunable_convs(self.model, args.prune_include, args.prune_exclude,
                                         args.layer_begin, args.layer_end, args.layer_inter)
        self.method = resolve_method_args(args)  # idempotent; main() ran it before any work
        self.schedule = self.method.schedule(args)
        if not self.convs and self.schedule.theta.max() > 0:
            raise UserError("no conv matches the layer selection (--layer_*/--prune_include/"
                            "--prune_exclude); widen it")
        self.amp_dtype = _amp_dtype(args, device)
        self.test_loader = _test_loader(args, data, device)
        self.batch = max(1, args.batch_size // world)  # per rank
        self.train_sampler = EpochSampler(len(data.train), args.manualSeed, TRAIN, rank, world,
                                          order=data.train_order)
        self.train_loader = _loader(data.train, self.batch, args, device, self.train_sampler,
                                    every_epoch=True)
        if args.pretrain_path and not resuming:  # before the folder: bad weights leave none
            _load_pretrained(self.model, args.pretrain_path, args.arch)

        prepare_save_path(args.save_path, args.overwrite)
        self.log = RunLog(args.save_path, args.tensorboard)
        ranker = None
        if self.method.uses_cs:
            # each sample's augmentation is seeded by its position: exact resume, any --workers
            cs_sampler = EpochSampler(len(data.cs), args.manualSeed, CS, rank, world,
                                      shuffle=False)
            ranker = CSRanker(self.convs, _loader(data.cs, max(1, args.batch_prune_size // world),
                                                  args, device, cs_sampler),
                              data.num_classes, device, mode=args.cs_mode,
                              max_batches=args.max_iter_cs, amp_dtype=self.amp_dtype,
                              transform=data.batch_transform, class_names=data.classes,
                              log=self.log)
        self.mask = Mask(self.convs, self.method, self.schedule, ranker, args.epoch_apply_cs,
                         args.round_to, args.attenuate)
        self.probe = None  # the effective attenuation (utils/attenuation.py), if anything is pruned
        if self.mask.active:
            self.probe = AttenuationProbe(self.convs, probe_batch(
                data.train, args.manualSeed, PROBE, device, data.batch_transform,
                min(64, self.batch)))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=args.learning_rate,
                                         momentum=args.momentum, weight_decay=args.decay,
                                         nesterov=bool(args.nesterov))
        self.scaler = (torch.amp.GradScaler(device.type)
                       if self.amp_dtype == torch.float16 else None)
        self.geometry = layer_geometry(self.model, data.input_shape)
        self.dense_cost = effective_cost(self.model, self.geometry, self.convs, {})
        self.net = self.model
        if world > 1:
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        self.history, self.wall = [], 0.0
        self.start_epoch, self.start_batch, self.epoch_state = 0, 0, None
        self._refresh_loader = None  # --eval_bn_refresh, built on first use

    # -- the steps of a run ------------------------------------------------------------------
    def start(self) -> None:
        """A fresh run: header, plots of the schedule, and the mask before training."""
        args = self.args
        name = self.method.name.upper() if self.mask.active else "dense (all rates 0)"
        variant = (" with --attenuate bn (BN γ, β attenuated with the filters)"
                   if args.attenuate == "bn" else "")
        self.log(f"{name} run{variant}: {args.arch} on {args.dataset}, "
                 f"{len(self.data.train)} train / {len(self.data.test)} test samples, "
                 f"{len(self.convs)} prunable convs ({self.mask.total_filters()} filters), device "
                 f"{self.device}, {dist.world_size()} process(es), effective batch "
                 f"{self.batch * dist.world_size()}, base lr {args.learning_rate:g}")
        self.log.args(dict(vars(args)))
        self._log_rounding()
        if dist.is_main():
            plot_schedule(self.schedule, os.path.join(args.save_path, "schedule.png"),
                          self.method)
        if self.mask.active:
            # the reference validates first, so the first CS pass runs in eval mode
            before = self._evaluate(self.model)
            self.log(f"before training: test top1 {before['top1']:.2f} loss {before['loss']:.4f}")
            if self.probe is not None:  # the channels' std before any selection
                self.probe.observe(self.model, {})
            self._update_mask(0)

    def restore(self, ckpt: dict, path: str) -> None:
        where = restore_checkpoint(ckpt, model=self.model, optimizer=self.optimizer,
                                   scaler=self.scaler, mask=self.mask, probe=self.probe)
        self.history, self.wall = where["history"], where["wall"]
        self.start_epoch, self.start_batch = where["epoch"], where["batch"]
        self.epoch_state = where["epoch_state"] if dist.rank() == 0 else None
        at = f"epoch {self.start_epoch}" + (f", batch {self.start_batch}" if self.start_batch
                                            else "")
        self.log(f"resumed from {path} at {at}")

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
                self.log(f"{stop.name}: stopped after epoch {epoch}; continue with --resume auto")
                return stop.exit_code
            if args.stop_after is not None and ran >= args.stop_after:
                self.log(f"stopped after epoch {epoch} (--stop_after {args.stop_after}); continue "
                         "with --resume auto")
                return 0
        return None

    def run_epoch(self, epoch: int, stop=None) -> bool:
        """Train one epoch, update the mask, evaluate, checkpoint; False if interrupted."""
        args, t0 = self.args, time.time()
        lr = lr_at(epoch, args.learning_rate, args.schedule, args.gammas)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.train_sampler.set_epoch(epoch, self.start_batch * self.batch)
        train = train_one_epoch(self.net, self.train_loader, self.optimizer, self.device, epoch,
                                self.mask if self.mask.active else None, self.scaler,
                                self.amp_dtype, self.log, args.print_freq, args.nan_policy,
                                stop.agreed if stop else None, self.start_batch,
                                self.epoch_state, self.data.batch_transform)
        self.start_batch, self.epoch_state = 0, None
        if train["interrupted"]:
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
        # what the selection this epoch trained with left of its channels, before the update
        attenuation = (self.probe.observe(self.model, self._selection()) if self.probe
                       else None)
        if epoch % args.epoch_prune == 0 or epoch == args.epochs - 1:
            self._update_mask(epoch)
        test = self._evaluate(self.model)
        refreshed = self._evaluate_refreshed(epoch)
        flops, params = effective_cost(self.model, self.geometry, self.convs,
                                       self.mask.selected_counts())
        seconds = time.time() - t0
        self.wall += seconds
        at = self.schedule.at(epoch)
        row = {"epoch": epoch, "method": self.method.name, "lr": lr, "theta": at["theta"],
               **self.method.shares(at), "zeta": at["zeta"],
               "effective_attenuation": attenuation, "train_loss": train["loss"],
               "train_top1": train["top1"], "test_loss": test["loss"], "test_top1": test["top1"],
               "test_top5": test["top5"], **refreshed,
               "filters_selected": self.mask.total_selected(),
               "filters_total": self.mask.total_filters(), "flops_eff": flops,
               "params_eff": params, "epoch_seconds": round(seconds, 3)}
        self.history.append(row)
        extra = (f" (BN refreshed {refreshed['test_top1_refreshed']:.2f})" if refreshed else "")
        reached = f" | eff. att. {attenuation:.3f}" if attenuation is not None else ""
        self.log(f"epoch {epoch:3d}/{args.epochs} lr {lr:.4g} θ {row['theta']:.4f} "
                 f"ζ {row['zeta']:.4f}{reached} | train loss {train['loss']:.4f} top1 {train['top1']:.2f} "
                 f"| test loss {test['loss']:.4f} top1 {test['top1']:.2f}{extra} top5 "
                 f"{test['top5']:.2f} | selected {row['filters_selected']}/"
                 f"{row['filters_total']} | {seconds:.1f}s")
        self.save(epoch + 1)
        self._write_tables()
        return True

    def finish(self) -> dict:
        """summary.json, the compact network and the final log line."""
        self._write_tables()
        summary = self._summary()
        summary["compact"] = self._compact()
        self.log.summary(summary)
        c = summary["compact"]
        self.log(f"done: final pruned top1 {summary['final_top1']:.2f}"
                 + (f", compact network top1 {c['top1']:.2f}, FLOPs "
                    f"−{100 * c['flops_reduction']:.1f}%, params −{100 * c['params_reduction']:.1f}%"
                    " (model_compact.pt)" if c else "")
                 + f" → {self.args.save_path}")
        return summary

    # -- helpers -----------------------------------------------------------------------------
    def _selection(self) -> dict:
        return {c.name: self.mask.selected(c.name) for c in self.convs}

    def _update_mask(self, epoch: int) -> None:
        """The mask update; the probe then notes the std of the newly selected channels."""
        self.mask.update(self.model, epoch)
        if self.probe is not None:
            self.probe.selected(self._selection())

    def save(self, epoch: int, batch: int = 0, state=None) -> None:
        if dist.is_main():
            write_checkpoint(os.path.join(self.args.save_path, "checkpoint.pt"), epoch=epoch,
                             batch=batch, epoch_state=state, args=self.args, data=self.data,
                             model=self.model, optimizer=self.optimizer, scaler=self.scaler,
                             mask=self.mask, probe=self.probe, history=self.history,
                             wall=self.wall)
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
            sampler = EpochSampler(len(self.data.train), self.args.manualSeed, BN_REFRESH,
                                   dist.rank(), dist.world_size(), order=self.data.train_order)
            self._refresh_loader = _loader(self.data.train, self.batch, self.args, self.device,
                                           sampler)
        self._refresh_loader.sampler.set_epoch(epoch)
        copy = refreshed_bn_copy(self.model, self._refresh_loader, self.device, n,
                                 self.amp_dtype, self.data.batch_transform)
        stats = self._evaluate(copy)
        return {f"test_{k}_refreshed": stats[k] for k in ("loss", "top1", "top5")}

    def _log_rounding(self) -> None:
        """--round_to: how many filters every layer keeps, and what it gives up for that."""
        if self.args.round_to <= 1 or not self.mask.active:
            return
        rates, final = self.method.rates(self.args), self.mask.final_counts()
        parts = []
        for c in self.convs:
            n, plain = sum(final[c.name]), sum(count(c.filters, r) for r in rates)
            parts.append(f"{c.name} keeps {c.filters - n}/{c.filters} (prunes {n}, not {plain})")
        self.log(f"--round_to {self.args.round_to}: " + "; ".join(parts))

    def _write_tables(self) -> None:
        self.log.metrics(self.history)
        if dist.is_main():
            plot_curves(self.history, os.path.join(self.args.save_path, "curves.png"))
            plot_schedule(self.schedule, os.path.join(self.args.save_path, "schedule.png"),
                          self.method, self.history)

    def _summary(self) -> dict:
        args, last = self.args, self.history[-1]
        best = max(self.history, key=lambda r: r["test_top1"])
        zero = {c.name: int((c.conv.weight.detach().flatten(1).abs().sum(1) == 0).sum())
                for c in self.convs}
        flops_d, params_d = self.dense_cost
        return {
            "method": self.method.name, "attenuate": args.attenuate, "arch": args.arch,
            "dataset": args.dataset,
            "epochs": args.epochs, "prune_rate_cs": args.prune_rate_cs,
            "prune_rate_norm": args.prune_rate_norm, "prune_rate_gm": args.prune_rate_gm,
            "round_to": args.round_to,
            "final_top1": last["test_top1"], "final_top5": last["test_top5"],
            "final_loss": last["test_loss"],
            "best_top1_unpruned_note": "best epoch of a network not yet fully pruned; "
                                       "report final_top1",
            "best_top1": best["test_top1"], "best_epoch": best["epoch"],
            "flops_dense": flops_d, "flops_pruned": last["flops_eff"],
            "flops_reduction": 1 - last["flops_eff"] / flops_d,
            "params_dense": params_d, "params_pruned": last["params_eff"],
            "params_reduction": 1 - last["params_eff"] / params_d,
            "filters_selected": self.mask.total_selected(),
            "filters_total": self.mask.total_filters(),
            "selected_per_layer": self.mask.selected_counts(), "zero_filters_per_layer": zero,
            "wall_seconds": round(self.wall, 1), "seed": args.manualSeed,
        }

    def _compact(self) -> dict | None:
        """The physically smaller network: built, saved and measured (model_compact.pt); the
        figures are compact.py's, from one function (``utils.compact.compaction_figures``)."""
        args, mask = self.args, self.mask
        try:
            compact = compact_model(self.model, {c.name: mask.selected(c.name)
                                                 for c in self.convs})
        except UserError as e:  # an architecture compaction does not know: the run still counts
            self.log(f"warning: no compact network ({e})")
            return None
        if dist.is_main():
            save_compact(compact, os.path.join(args.save_path, "model_compact.pt"))
        test = self._evaluate(compact)
        keep = 1 - mask.total_selected() / max(mask.total_filters(), 1)
        nominal = 1 - args.prune_rate_cs - args.prune_rate_norm - args.prune_rate_gm
        figures = compaction_figures(self.model, compact, (1, *self.data.input_shape),
                                     args.arch, keep, nominal)
        return {"path": "model_compact.pt", "top1": test["top1"], "top5": test["top5"],
                "loss": test["loss"], **figures}


def _load_pretrained(model, path: str, arch: str) -> None:
    """Plain state dicts, DataParallel/DDP ``module.``-prefixed ones, and our checkpoints."""
    obj = safe_load(path)
    made_with = ""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        made_with = f" (it was made with --arch {obj['arch']})" if obj.get("arch") else ""
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise UserError(f"--pretrain_path {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    # count the misfits ourselves: load_state_dict's error lists every key, hundreds of them
    ours = model.state_dict()
    misfits = {"missing": [k for k in ours if k not in state],
               "unexpected": [k for k in state if k not in ours],
               "of another shape": [k for k in ours if k in state
                                    and getattr(state[k], "shape", None) != ours[k].shape]}
    if any(misfits.values()):
        found = "; ".join(f"{len(keys)} {what} (first: {keys[0]})"
                          for what, keys in misfits.items() if keys)
        raise UserError(f"--pretrain_path {path} does not fit --arch {arch}{made_with}: "
                        f"{found}; give the --arch the weights were trained with")
    model.load_state_dict(state)
