"""Two CPU processes (gloo): the CS statistics are summed over ranks, so every rank selects the
same filters as one process over the same CS data; every rank keeps rank 0's plan of a
budget's global allocation."""
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from models import build_model
from utils.method.criteria import criterion
from utils.method.criteria.cs import cs_scores
from utils.compaction import find_prunable_convs
from utils.method.mask import Mask
from utils.run.sampling import EpochSampler, SeededDataset
from utils.method.methods import METHODS
from utils.method.schedule import asymptotic_schedule
from utils.pruner import Pruner
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


def _worker(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        with open(f"{out}.{rank}", "w") as f:
            json.dump({"selection": {arch: _selection(rank, world, arch) for arch in ARCHS},
                       "budget": _global_plan(rank)}, f)
    finally:
        dist.destroy_process_group()


# a CIFAR ResNet, and timm's MobileNetV3 whose BatchNormAct2d are scored on their normalisation
ARCHS = ("resnet20", "timm:mobilenetv3_small_050")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """What each of two gloo processes computed (started once: a start costs seconds)."""
    out = str(tmp_path_factory.mktemp("ddp") / "rank")
    mp.start_processes(_worker, args=(2, _free_port(), out), nprocs=2, start_method="spawn")
    return [json.load(open(f"{out}.{rank}")) for rank in range(2)]


def test_two_process_masks_equal_the_single_process_masks(two_ranks):
    single = {arch: _selection(0, 1, arch) for arch in ARCHS}
    for rank in range(2):
        assert two_ranks[rank]["selection"] == single
    assert all(sum(map(len, masks.values())) > 0 for masks in single.values())


def test_ranks_keep_rank_0s_plan_of_a_global_allocation(two_ranks):
    first, second = (r["budget"] for r in two_ranks)
    assert first["local"] != second["local"]  # alone, the ranks would disagree
    assert first["plan"] == second["plan"] == first["local"]


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
