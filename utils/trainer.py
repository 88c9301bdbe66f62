"""The driver shared by the dataset scripts: set-up, the FSDP epoch loop and the snapshot.

A script supplies its argument parser (the paper's defaults) and a ``make_data(args) -> Data``;
everything else — schedule, mask, DDP, AMP, resume, logging, checkpoints — lives here once.
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
from .checkpoint import atomic_save, rng_state, safe_load, set_rng_state
from .compact import compact_model, count_flops_params, fpgm_flops_reduction, save_compact
from .cli import check_args
from .data import Data  # noqa: F401 - the scripts' entry point imports it from here
from .criteria import cs_scores
from .engine import NonFiniteLoss, evaluate, lr_at, train_one_epoch
from .errors import UserError
from .faults import crash_point
from .flops import effective_cost, layer_geometry
from .graph import find_prunable_convs
from .logger import RunLog
from .mask import Mask
from .plots import plot_curves, plot_schedule
from .sampling import EpochSampler, SeededDataset
from .schedule import asymptotic_schedule
from .stop import StopRequest

SNAPSHOT_FILES = ("checkpoint.pt", "metrics.csv", "summary.json", "args.json", "log.txt",
                  "curves.png", "schedule.png", "model_compact.pt")
# a resumed run must rebuild the same schedule, mask layout and data pipeline
RESUME_MUST_MATCH = ("arch", "dataset", "epochs", "prune_rate_cs", "prune_rate_gm", "tau",
                     "attenuation", "use_zero_scaling", "layer_begin", "layer_end", "layer_inter",
                     "prune_include", "prune_exclude")


def main(parser, make_data, argv=None, check=None, resume_keys: tuple = ()) -> int:
    """Parse, run, and turn user errors into one line on stderr with exit status 2.

    ``check(args)``: the script's own argument checks (raise ``UserError``); ``resume_keys``:
    its flags that a resumed run must share with the checkpoint, beside RESUME_MUST_MATCH.
    """
    args = parser.parse_args(argv)
    try:
        check_args(args)
        if check is not None:
            check(args)
        return run(args, make_data, resume_keys)
    except UserError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
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


def _check_save_path(args) -> str | None:
    """The checkpoint to resume from, if any; refuses to mix two runs in one folder."""
    path = args.save_path
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"--save_path {path} is a file; give a folder")
    resume = args.resume
    if resume == "auto":
        auto = os.path.join(path, "checkpoint.pt")
        resume = auto if os.path.isfile(auto) else None
    present = [f for f in SNAPSHOT_FILES if os.path.exists(os.path.join(path, f))]
    if present and not (args.resume or args.overwrite):
        raise UserError(f"--save_path {path} already holds a run ({present[0]}); add --resume auto "
                        "to continue it, --overwrite to replace it, or choose another --save_path")
    return resume


def _prepare_save_path(path: str) -> None:
    """Create and probe the snapshot folder once every input has been checked, so bad input
    leaves nothing behind; clear temporaries of a run killed while writing."""
    if not dist.is_main():  # only rank 0 writes
        return
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, ".write-test")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to --save_path {path} ({e.strerror}); choose a writable "
                        "folder") from None
    for name in os.listdir(path):  # temporaries of a run killed while writing (atomic_write)
        if name.startswith(".tmp-"):
            os.unlink(os.path.join(path, name))


def _evaluate_source(args) -> str:
    if args.resume == "auto":
        return os.path.join(args.save_path, "checkpoint.pt")
    return args.resume or args.pretrain_path


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


def _check_resumable(ckpt, args, path, seed_given: bool, resume_keys: tuple = ()) -> None:
    if not isinstance(ckpt, dict) or "model" not in ckpt or "args" not in ckpt:
        raise UserError(f"{path} is not a checkpoint of this project; give a checkpoint.pt "
                        "written by these scripts")
    for key in RESUME_MUST_MATCH + tuple(resume_keys) + (("manualSeed",) if seed_given else ()):
        old, new = ckpt["args"].get(key), getattr(args, key)
        if old != new:
            raise UserError(f"checkpoint {path} was made with --{key} {old}, this run asks for "
                            f"{new}; resume with the same flags or choose another --save_path")


def _loader(ds, batch_size, args, device, sampler):
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, num_workers=args.workers,
                      pin_memory=device.type == "cuda", persistent_workers=False)


def run(args, make_data, resume_keys: tuple = ()) -> int:
    device = dist.init_from_env(args.device)
    world, rank = dist.world_size(), dist.rank()
    seed_given = args.manualSeed is not None
    seed = args.manualSeed if seed_given else random.randint(1, 10000)
    args.manualSeed = dist.broadcast_object(seed)
    _seed_everything(args.manualSeed + rank, args.deterministic)
    resume = _evaluate_source(args) if args.evaluate else _check_save_path(args)
    ckpt = None
    if resume and not args.evaluate:
        ckpt = safe_load(resume)
        _check_resumable(ckpt, args, resume, seed_given, resume_keys)
        args.manualSeed = ckpt["args"]["manualSeed"]  # the data order depends on it

    data = make_data(args)  # args.manualSeed is final here
    if len(data.train) == 0 or len(data.test) == 0:
        raise UserError(f"the dataset under {args.data_path} is empty; check --data_path")
    model = build_model(args.arch, data.num_classes, data.in_channels).to(device)
    convs = find_prunable_convs(model, args.prune_include, args.prune_exclude, args.layer_begin,
                                args.layer_end, args.layer_inter)
    if not convs and args.prune_rate_cs + args.prune_rate_gm > 0:
        raise UserError("no conv matches the layer selection (--layer_*/--prune_include/"
                        "--prune_exclude); widen it")
    schedule = asymptotic_schedule(args.prune_rate_cs, args.prune_rate_gm, args.epochs,
                                   args.tau, args.attenuation, args.use_zero_scaling)
    amp_dtype = _amp_dtype(args, device)

    if args.evaluate:
        _load_pretrained(model, resume, args.arch)
    elif ckpt is not None:
        model.load_state_dict(ckpt["model"])
    elif args.pretrain_path:
        _load_pretrained(model, args.pretrain_path, args.arch)

    test_loader = _loader(SeededDataset(data.test), args.batch_size, args, device,
                          EpochSampler(len(data.test), args.manualSeed, 2, rank, world,
                                       shuffle=False))
    if args.evaluate:
        stats = evaluate(model, test_loader, device, amp_dtype, data.batch_transform)
        if dist.is_main():
            print(f"test: top1 {stats['top1']:.2f}  top5 {stats['top5']:.2f}  "
                  f"loss {stats['loss']:.4f}  ({stats['n']} images)")
        return 0

    # each sample's augmentation is seeded by its position: exact resume, any --workers
    cs_sampler = EpochSampler(len(data.cs), args.manualSeed, 1, rank, world, shuffle=False)
    cs_loader = _loader(SeededDataset(data.cs), max(1, args.batch_prune_size // world), args,
                        device, cs_sampler)
    train_sampler = EpochSampler(len(data.train), args.manualSeed, 0, rank, world,
                                 order=data.train_order)
    per_rank_batch = max(1, args.batch_size // world)
    train_loader = _loader(SeededDataset(data.train), per_rank_batch, args, device,
                           train_sampler)

    _prepare_save_path(args.save_path)
    log = RunLog(args.save_path, args.tensorboard)
    bns, names = [c.bn for c in convs], [c.name for c in convs]
    warned = set()

    def ranker(net, epoch):
        was_training = net.training
        if args.cs_mode == "eval":
            net.eval()
        # the pass before training and the one after epoch 0 both have epoch 0: tell them apart
        cs_sampler.set_epoch(2 * epoch + (mask.epoch >= 0))
        t0 = time.time()
        scores, counts = cs_scores(net, bns, names, cs_loader, data.num_classes, device,
                                   args.max_iter_cs, amp_dtype, data.batch_transform)
        net.train(was_training)
        crash_point(f"cs:{epoch}")
        missing = tuple(torch.nonzero(counts == 0).flatten().tolist())
        if missing and missing not in warned:
            warned.add(missing)
            names_ = [data.classes[c] for c in missing] if data.classes else list(missing)
            log(f"warning: the CS data has no samples of classes {names_}; they are left "
                "out of the class-separability scores")
        log(f"  CS pass: {int(counts.sum())} samples, {time.time() - t0:.1f}s "
            f"({'train' if net.training and args.cs_mode == 'reference' else 'eval'} mode)",
            echo=False)
        return scores

    mask = Mask(convs, schedule, ranker, args.epoch_apply_cs)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.learning_rate, momentum=args.momentum,
                                weight_decay=args.decay, nesterov=True)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    geometry = layer_geometry(model, data.input_shape)
    dense_cost = effective_cost(model, geometry, convs, {})
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)

    history, wall, start_epoch, start_batch, epoch_state = [], 0.0, 0, 0, None
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        mask.load_state_dict(ckpt["mask"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        history, wall = list(ckpt["history"]), float(ckpt["wall_seconds"])
        start_epoch, start_batch = int(ckpt["epoch"]), int(ckpt.get("batch", 0))
        epoch_state = ckpt.get("epoch_state") if rank == 0 else None
        set_rng_state(ckpt["rng"])
        where = f"epoch {start_epoch}" + (f", batch {start_batch}" if start_batch else "")
        log(f"resumed from {resume} at {where}")
    else:
        if args.overwrite and dist.is_main():
            for f in SNAPSHOT_FILES:
                if os.path.exists(os.path.join(args.save_path, f)):
                    os.unlink(os.path.join(args.save_path, f))
        log(f"FSDP run: {args.arch} on {args.dataset}, {len(data.train)} train / "
            f"{len(data.test)} test images, {len(convs)} prunable convs "
            f"({mask.total_filters()} filters), device {device}, {world} process(es)")
        log.args(dict(vars(args)))
        if dist.is_main():
            plot_schedule(schedule, os.path.join(args.save_path, "schedule.png"))

    def save(epoch, batch=0, state=None):
        """Checkpoint at an epoch boundary (``epoch`` = next epoch) or inside one."""
        if dist.is_main():
            atomic_save({"format": "fsdp-checkpoint/1", "epoch": epoch, "batch": batch,
                         "epoch_state": state, "arch": args.arch,
                         "num_classes": data.num_classes, "in_channels": data.in_channels,
                         "input_shape": list(data.input_shape), "args": vars(args),
                         "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict() if scaler else None,
                         "mask": mask.state_dict(), "history": history, "wall_seconds": wall,
                         "rng": rng_state()}, os.path.join(args.save_path, "checkpoint.pt"))
        dist.barrier()

    if start_epoch >= args.epochs:  # killed after its last checkpoint: finish the outputs
        log(f"all {args.epochs} epochs were already trained; writing the final outputs")
    elif start_epoch == 0 and start_batch == 0:
        # the reference validates first, so the first CS pass runs in eval mode
        before = evaluate(model, test_loader, device, amp_dtype, data.batch_transform)
        log(f"before training: test top1 {before['top1']:.2f} loss {before['loss']:.4f}")
        mask.update(model, 0)

    ran = 0
    with StopRequest() as stop:
        for epoch in range(start_epoch, args.epochs):
            t0 = time.time()
            lr = lr_at(epoch, args.learning_rate, args.schedule, args.gammas)
            for group in optimizer.param_groups:
                group["lr"] = lr
            train_sampler.set_epoch(epoch, start_batch * per_rank_batch)
            train = train_one_epoch(net, train_loader, optimizer, device, epoch, mask, scaler,
                                    amp_dtype, log, args.print_freq, args.nan_policy,
                                    stop.agreed, start_batch, epoch_state,
                                    data.batch_transform)
            start_batch, epoch_state = 0, None
            if train["interrupted"]:
                wall += time.time() - t0
                state = train["state"]  # partial sums of all ranks; rank 0 resumes with them
                state["sums"] = dist.all_reduce_sum(state["sums"].to(device)).cpu()
                state["n"] = int(dist.all_reduce_sum(torch.tensor([state["n"]], device=device)))
                save(epoch, train["batches"], state)
                log(f"{stop.name}: stopped in epoch {epoch} after batch {train['batches']} with "
                    "a checkpoint; continue with --resume auto")
                return stop.exit_code
            if train["skipped"]:
                log(f"  skipped {train['skipped']} batches with a non-finite loss "
                    "(--nan_policy skip)")
            if epoch % args.epoch_prune == 0 or epoch == args.epochs - 1:
                mask.update(model, epoch)
            test = evaluate(model, test_loader, device, amp_dtype, data.batch_transform)
            flops, params = effective_cost(model, geometry, convs, mask.selected_counts())
            seconds = time.time() - t0
            wall += seconds
            row = {"epoch": epoch, "lr": lr, **schedule.at(epoch),
                   "train_loss": train["loss"], "train_top1": train["top1"],
                   "test_loss": test["loss"], "test_top1": test["top1"],
                   "test_top5": test["top5"], "filters_selected": mask.total_selected(),
                   "filters_total": mask.total_filters(), "flops_eff": flops,
                   "params_eff": params, "epoch_seconds": round(seconds, 3)}
            history.append(row)
            log(f"epoch {epoch:3d}/{args.epochs} lr {lr:.4g} θ {row['theta']:.4f} "
                f"ζ {row['zeta']:.4f} | train loss {train['loss']:.4f} top1 {train['top1']:.2f} "
                f"| test loss {test['loss']:.4f} top1 {test['top1']:.2f} top5 "
                f"{test['top5']:.2f} | selected {row['filters_selected']}/"
                f"{row['filters_total']} | {seconds:.1f}s")
            save(epoch + 1)
            _write_tables(log, args, history)
            ran += 1
            if epoch == args.epochs - 1:
                break
            if stop.agreed():
                log(f"{stop.name}: stopped after epoch {epoch}; continue with --resume auto")
                return stop.exit_code
            if args.stop_after is not None and ran >= args.stop_after:
                log(f"stopped after epoch {epoch} (--stop_after {args.stop_after}); continue "
                    "with --resume auto")
                return 0

    _write_tables(log, args, history)
    summary = _summary(args, model, convs, mask, history, dense_cost, wall)
    summary["compact"] = _compact(args, model, convs, mask, data, test_loader, device,
                                  amp_dtype, log)
    log.summary(summary)
    c = summary["compact"]
    log(f"done: final pruned top1 {summary['final_top1']:.2f}"
        + (f", compact network top1 {c['top1']:.2f}, FLOPs −{100 * c['flops_reduction']:.1f}%, "
           f"params −{100 * c['params_reduction']:.1f}% (model_compact.pt)" if c else "")
        + f" → {args.save_path}")
    return 0


def _compact(args, model, convs, mask, data, test_loader, device, amp_dtype, log) -> dict | None:
    """Build the physically smaller network, save it, and measure it (issue: the pruned
    network must really be smaller and faster)."""
    try:
        compact = compact_model(model, {c.name: mask.selected(c.name) for c in convs})
    except UserError as e:  # an architecture compaction does not know: the run still counts
        log(f"warning: no compact network ({e})")
        return None
    path = os.path.join(args.save_path, "model_compact.pt")
    if dist.is_main():
        save_compact(compact, path)
    test = evaluate(compact, test_loader, device, amp_dtype, data.batch_transform)
    shape = (1, *data.input_shape)
    flops_d, params_d = count_flops_params(model, shape)
    flops_c, params_c = count_flops_params(compact, shape)
    keep = 1 - mask.total_selected() / max(mask.total_filters(), 1)
    nominal = 1 - args.prune_rate_cs - args.prune_rate_gm

    def analytic(p):
        try:
            return fpgm_flops_reduction(args.arch, p)
        except UserError:
            return None

    return {"path": "model_compact.pt", "top1": test["top1"], "top5": test["top5"],
            "loss": test["loss"], "flops_unit": "multiply-accumulates",
            "flops_dense": flops_d, "flops": flops_c, "flops_reduction": 1 - flops_c / flops_d,
            "params_dense": params_d, "params": params_c,
            "params_reduction": 1 - params_c / params_d,
            "keep_ratio": keep, "fpgm_analytic_flops_reduction": analytic(keep),
            "keep_ratio_nominal": nominal,
            "fpgm_analytic_flops_reduction_nominal": analytic(nominal)}


def _write_tables(log, args, history) -> None:
    log.metrics(history)
    if dist.is_main():
        plot_curves(history, os.path.join(args.save_path, "curves.png"))


def _summary(args, model, convs, mask, history, dense_cost, wall) -> dict:
    last = history[-1]
    best = max(history, key=lambda r: r["test_top1"])
    zero = {c.name: int((c.conv.weight.detach().flatten(1).abs().sum(1) == 0).sum()) for c in convs}
    return {
        "arch": args.arch, "dataset": args.dataset, "epochs": args.epochs,
        "prune_rate_cs": args.prune_rate_cs, "prune_rate_gm": args.prune_rate_gm,
        "final_top1": last["test_top1"], "final_top5": last["test_top5"],
        "final_loss": last["test_loss"],
        "best_top1_unpruned_note": "best epoch of a network not yet fully pruned; report final_top1",
        "best_top1": best["test_top1"], "best_epoch": best["epoch"],
        "flops_dense": dense_cost[0], "flops_pruned": last["flops_eff"],
        "flops_reduction": 1 - last["flops_eff"] / dense_cost[0],
        "params_dense": dense_cost[1], "params_pruned": last["params_eff"],
        "params_reduction": 1 - last["params_eff"] / dense_cost[1],
        "filters_selected": mask.total_selected(), "filters_total": mask.total_filters(),
        "selected_per_layer": mask.selected_counts(), "zero_filters_per_layer": zero,
        "wall_seconds": round(wall, 1), "seed": args.manualSeed,
    }
