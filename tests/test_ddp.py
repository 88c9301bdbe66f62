"""Two CPU processes (gloo): the CS statistics are summed over ranks, so every rank selects the
same filters as one process over the same CS data; every rank keeps rank 0's plan of a
budget's global allocation; a CS pass in train mode leaves the same BN statistics on every
rank; each rank's RNG states reach the checkpoint and come back to that rank; a non-finite
loss on one rank stops, or skips the batch on, every rank together."""
import contextlib
import io
import random
import json
import os
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models import build_model
from utils.method.criteria import criterion
from utils.method.criteria.cs import CSRanker, cs_scores
from utils.compaction import find_prunable_convs
from utils.method.mask import Mask
from utils.run.sampling import EpochSampler, SeededDataset
from utils.method.methods import METHODS
from utils.method.schedule import asymptotic_schedule
from utils.pruner import Pruner, PruningWarning
from utils.run.checkpoint import restore_rng, rng_states
import notebook_cifar
from tests.cli import entry, fork_server
from tests.fakedata import write_cifar
from tests.soft_pruning import small_cnn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cs_data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(90, 3, 16, 16, generator=gen)  # 90 = not a multiple of the batch
    y = torch.randint(0, 10, (90,), generator=gen)
    return torch.utils.data.TensorDataset(x, y)


def _selection(rank: int, world: int, arch: str = "resnet20") -> dict:
    torch.manual_seed(0)
    model = build_model(arch, 10).eval()  # the first CS pass runs in eval mode
    convs = find_prunable_convs(model)
    data = _cs_data()
    loader = torch.utils.data.DataLoader(SeededDataset(data), batch_size=32 // world,
                                         sampler=EpochSampler(len(data), 0, 1, rank, world,
                                                              shuffle=False))
    ranker = lambda m, e, i: cs_scores(m, [c.bn for c in convs], [c.name for c in convs], loader, 10,  # noqa
                                 torch.device("cpu"))[0]
    mask = Mask(convs, METHODS["fsdp"], asymptotic_schedule(0.2, 0.3, 10), ranker)
    mask.update(model, 9)
    return {c.name: mask.selected(c.name).tolist() for c in convs}


def _coupled_selection(rank: int, world: int) -> dict:
    """FSDP through the ``Pruner`` with ``coupling="residual"`` (ResNet-20's one stream across
    its option-A shortcuts), its CS passes over this rank's shard: two steps' selections."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10).eval()
    data = _cs_data()
    loader = torch.utils.data.DataLoader(SeededDataset(data), batch_size=32 // world,
                                         sampler=EpochSampler(len(data), 0, 1, rank, world,
                                                              shuffle=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruningWarning)  # no optimizer: not what is tested
        pruner = Pruner(model, "fsdp", {"cs": 0.2, "gm": 0.3}, 2, cs_data=loader,
                        coupling="residual")
    pruner.start()
    pruner.step(0)
    pruner.step(1)
    assert pruner.groups  # coupled
    return {name: filters.tolist() for name, filters in pruner.selected().items()}


def _global_plan(rank: int) -> dict:
    """The plan of a global allocation made from each rank's own weights (a rank-dependent
    seed: alone, the ranks' plans would differ), and the plan this rank alone would make."""
    torch.manual_seed(rank)
    pruner = Pruner(small_cnn(), "fpgm", epochs=1, target={"flops": 0.5}, allocation="global",
                    input_shape=(3, 8, 8))
    gm = criterion("gm")  # fpgm's criterion in use (its norm share is 0)
    local = pruner.allocator.global_({c.name: gm.scores(c.conv.weight, torch.arange(c.filters))
                                      for c in pruner.convs})
    pruner.start()  # the plan is made here, from the same weights
    return {"plan": pruner.mask.plan, "local": local}


def _bn_statistics_after_a_train_mode_pass(rank: int, world: int) -> dict:
    """Each rank's BN statistics after the reference's CS pass after an epoch (train mode, each
    rank on its shard), gathered: with the ranker, and with a bare pass for contrast."""
    torch.manual_seed(0)
    model = build_model("resnet20", 10).train()
    convs = find_prunable_convs(model)
    data = _cs_data()
    loader = torch.utils.data.DataLoader(SeededDataset(data), batch_size=16,
                                         sampler=EpochSampler(len(data), 0, 1, rank, world,
                                                              shuffle=False))
    bare = build_model("resnet20", 10).train()
    bare.load_state_dict(model.state_dict())
    cs_scores(bare, [c.bn for c in find_prunable_convs(bare)], [c.name for c in convs], loader,
              10, torch.device("cpu"))
    CSRanker(convs, loader, 10, torch.device("cpu"))(model, 1, False)

    def buffers(m):
        return [b.tolist() for name, b in m.named_buffers() if "running" in name]
    gathered = [[None] * world for _ in range(2)]
    dist.all_gather_object(gathered[0], buffers(model))
    dist.all_gather_object(gathered[1], buffers(bare))
    return {"ranker": gathered[0][0] == gathered[0][1], "bare": gathered[1][0] == gathered[1][1]}


def _draws() -> list:
    return [torch.rand(2).tolist(), random.random(), float(np.random.rand())]


def _seed(seed: int) -> None:
    torch.manual_seed(seed), random.seed(seed), np.random.seed(seed)


def _rng_round_trip(rank: int) -> dict:
    """Seeded like a run's ranks (seed + rank), the states gathered as a checkpoint holds them,
    the generators moved on, then each rank's own states put back; and the states of one
    process only (the checkpoint of a run with fewer): rank 1 keeps its generators."""
    cpu = torch.device("cpu")
    _seed(100 + rank)
    states = rng_states(cpu)
    expected = _draws()
    _seed(7)
    ranks = restore_rng(states, cpu)
    restored = _draws()
    _seed(7)
    seed_7 = _draws()
    _seed(7)
    fewer = restore_rng(states[:1], cpu)
    return {"expected": expected, "restored": restored, "ranks": ranks, "fewer": fewer,
            "seed_7": seed_7, "after_fewer": _draws()}


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"selection": {arch: _selection(rank, world, arch) for arch in ARCHS},
                       "coupled": _coupled_selection(rank, world),
                       "budget": _global_plan(rank),
                       "bn": _bn_statistics_after_a_train_mode_pass(rank, world),
                       "rng": _rng_round_trip(rank)}, f)
    finally:
        dist.destroy_process_group()


# a CIFAR ResNet, and timm's MobileNetV3 whose BatchNormAct2d are scored on their normalisation
ARCHS = ("resnet20", "timm:mobilenetv3_small_050")


@pytest.fixture(scope="module")
def spawned(tmp_path_factory, timeout=300) -> dict:
    """One pair of gloo processes (a start costs seconds) computes what the tests below read:
    ``two_ranks``, each rank's selections, plans, BN statistics and RNG states (``_worker``),
    then ``nan_runs``, the CIFAR script as two ranks with a NaN on rank 1's third batch, with
    each ``--nan_policy``: {policy: each rank's outcome} (``_cli_worker``). A rank left waiting
    for the other in a collective fails the tests at ``timeout``."""
    root = tmp_path_factory.mktemp("ddp")
    data = str(root / "data")
    write_cifar(data, "cifar10", n_train=128, n_test=32, seed=0)
    runs = []
    for policy, flags in (("stop", []), ("skip", ["--nan_policy", "skip"])):  # stop: the default
        argv = ["--data_path", data, "--save_path", str(root / policy), "--epochs", "2",
                "--batch_size", "32", "--workers", "0", "--device", "cpu", "--manualSeed",
                "3", "--schedule", "1", "--gammas", "1", *flags]
        runs.append((_free_port(), str(root / f"{policy}.rank"), argv))
    out = str(root / "rank")
    fork_server()  # the ranks start from its imports (a new interpreter's cost seconds)
    ctx = mp.start_processes(_both, args=(2, _free_port(), out, runs, 1), nprocs=2,
                             start_method="forkserver", join=False)
    deadline = time.time() + timeout
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"the ranks did not finish in {timeout} s: one waits for the other")
    return {"two_ranks": [json.load(open(f"{out}.{rank}")) for rank in range(2)],
            "root": root,
            **{policy: [json.load(open(f"{prefix}.{rank}")) for rank in range(2)]
               for policy, (_, prefix, _) in zip(("stop", "skip"), runs)}}


def _both(rank, world, port, out, runs, nan_rank):
    _worker(rank, world, port, out)
    _cli_worker(rank, world, runs, nan_rank)


@pytest.fixture(scope="module")
def two_ranks(spawned):
    return spawned["two_ranks"]


@pytest.fixture(scope="module")
def nan_runs(spawned):
    """{policy: each rank's outcome, "root": the runs' folder}."""
    return spawned


def test_two_process_masks_equal_the_single_process_masks(two_ranks):
    single = {arch: _selection(0, 1, arch) for arch in ARCHS}
    for rank in range(2):
        assert two_ranks[rank]["selection"] == single
    assert all(sum(map(len, masks.values())) > 0 for masks in single.values())


def test_coupled_ranks_select_alike(two_ranks):
    """The groups come from the graph, the same on every rank, and the CS scores they combine
    are summed over the ranks (each saw half the data): every rank selects the same channels.
    (Not one process's: the later CS passes run in train mode, on each rank's half-batches.)"""
    first, second = (r["coupled"] for r in two_ranks)
    assert first == second and sum(map(len, first.values())) > 0


def test_ranks_keep_rank_0s_plan_of_a_global_allocation(two_ranks):
    first, second = (r["budget"] for r in two_ranks)
    assert first["local"] != second["local"]  # alone, the ranks would disagree
    assert first["plan"] == second["plan"] == first["local"]


def test_a_train_mode_cs_pass_leaves_the_same_bn_statistics_on_every_rank(two_ranks):
    assert all(r["bn"]["ranker"] for r in two_ranks)
    assert not any(r["bn"]["bare"] for r in two_ranks)  # each rank's shard moved its own


def test_each_rank_gets_its_own_rng_states_back(two_ranks):
    first, second = (r["rng"] for r in two_ranks)
    assert first["expected"] != second["expected"]  # seed + rank
    for r in (first, second):
        assert r["restored"] == r["expected"] and r["ranks"] == 2 and r["fewer"] == 1
    assert first["after_fewer"] == first["expected"]
    assert second["after_fewer"] == second["seed_7"]  # none saved for it: its own stay


def test_torchrun_two_processes_train_and_only_rank0_writes(tmp_path):
    """With ``--attenuate bn``: the BN parameters' gradient scaling runs after DDP's all-reduce
    like the filters' (the default variant's path is the filters' alone)."""
    data = str(tmp_path / "data")
    write_cifar(data, "cifar10", n_train=128, n_test=64, seed=0)
    save = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), os.path.join(ROOT, "notebook_cifar.py"),
           "--data_path", data, "--save_path", save, "--epochs", "2", "--batch_size", "32",
           "--workers", "0", "--device", "cpu", "--manualSeed", "3", "--schedule", "1",
           "--gammas", "1", "--attenuate", "bn"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(os.path.join(save, "summary.json")))
    assert summary["zero_filters_per_layer"] == summary["selected_per_layer"]
    assert summary["attenuate"] == "bn"
    ckpt = torch.load(os.path.join(save, "checkpoint.pt"), weights_only=True)
    for name, sel in ckpt["mask"]["selected"].items():
        bn = name.replace("conv_1_3x3", "bn_1").replace("conv_", "bn_")
        assert torch.all(ckpt["model"][f"{bn}.weight"][sel] == 0), bn
        assert torch.all(ckpt["model"][f"{bn}.bias"][sel] == 0), bn
    assert proc.stdout.count("FSDP run with --attenuate bn") == 1  # one rank logs
    log = open(os.path.join(save, "log.txt")).read()
    assert "2 process(es)" in log and log.count("epoch   1/2") == 1


def _cli_worker(rank, world, runs, nan_rank):
    """``notebook_cifar.py argv`` as rank ``rank`` of a torchrun launch, in this process, for
    each (port, out, argv) of ``runs`` in turn (each joins and leaves its own process group,
    as a script does); the third training batch of rank ``nan_rank`` holds a NaN pixel, as a
    corrupt sample would. Writes each run's exit status, console and skipped batches."""
    import utils.run.engine as engine
    import utils.run.trainer as trainer
    prepare, train = engine.prepare, trainer.train_one_epoch
    for port, out, argv in runs:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          LOCAL_RANK=str(rank), WORLD_SIZE=str(world))
        seen, skipped = [], []

        def corrupting(batch, device, transform=None, split="train", seen=seen):
            x, y = prepare(batch, device, transform, split)
            seen.append(split)
            if rank == nan_rank and split == "train" and seen.count("train") == 3:
                x = x.clone()
                x[0, 0, 0, 0] = float("nan")
            return x, y

        def counting(*args, skipped=skipped, **kw):
            result = train(*args, **kw)
            skipped.append(result["skipped"])
            return result
        engine.prepare, trainer.train_one_epoch = corrupting, counting
        console, errors = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(console), contextlib.redirect_stderr(errors):
            code = entry(notebook_cifar, argv)
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"code": code, "stdout": console.getvalue(), "stderr": errors.getvalue(),
                       "skipped": skipped}, f)


def test_a_nan_on_one_rank_stops_every_rank_with_one_line(nan_runs):
    ranks = nan_runs["stop"]
    assert [r["code"] for r in ranks] == [3, 3]
    assert ranks[0]["stderr"].startswith("error: non-finite loss at epoch 0, batch 2;")
    assert ranks[0]["stderr"].count("\n") == 1 and ranks[1]["stderr"] == ""


def test_a_nan_on_one_rank_is_skipped_on_every_rank(nan_runs):
    ranks = nan_runs["skip"]
    assert [r["code"] for r in ranks] == [0, 0], ranks[0]["stderr"][-2000:]
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == [1, 0]
    assert "skipped 1 batches with a non-finite loss" in ranks[0]["stdout"]
    ckpt = torch.load(str(nan_runs["root"] / "skip" / "checkpoint.pt"), weights_only=True)
    assert len(ckpt["rng"]) == 2  # each rank's RNG states
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
