"""bench.gpu_check on a machine without a GPU: it refuses in one line, and its comparisons of
what the runs left — plain functions of their files — say what they should."""
import json
import os

import pytest
import torch

from bench import gpu_check as gc


def test_without_cuda_it_refuses_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gc.main(["--epochs", "4", "--save_path", "/nonexistent"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: bench.gpu_check ")
    assert not os.path.exists("/nonexistent")


def test_its_flags_parse():
    args = gc.parser().parse_args(["--epochs", "4", "--device", "cuda:1", "--save_path", "d"])
    assert (args.epochs, args.device, args.save_path) == (4, "cuda:1", "d")
    with pytest.raises(SystemExit):
        gc.parser().parse_args(["--epochs", "x"])


def _checkpoint(**changes):
    ckpt = {"model": {"w": torch.arange(6.0).view(2, 3), "n": torch.tensor(3)},
            "rng": [{"torch": torch.arange(4, dtype=torch.uint8)}], "epoch": 8,
            "optimizer": {"state": {0: {"momentum_buffer": torch.tensor([float("nan"), 1.0])}}}}
    for path, value in changes.items():
        *parents, last = path.split(".")
        node = ckpt
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        node[last] = value
    return ckpt


def test_equal_checkpoints_compare_equal_nan_included():
    cmp = gc.compare_checkpoints(_checkpoint(), _checkpoint())
    assert cmp.differing == [] and cmp.tensors == 4 and cmp.values == 6 + 1 + 4 + 2
    check = gc.resume_check(cmp, deterministic=True)
    assert check.verdict == "ok"
    assert check.line().startswith("resume --deterministic: ok — all 13 values")


def test_a_last_bit_differs_and_is_named():
    w = torch.arange(6.0).view(2, 3)
    w[1, 2] = torch.nextafter(w[1, 2], torch.tensor(10.0))
    cmp = gc.compare_checkpoints(_checkpoint(), _checkpoint(**{"model.w": w}))
    assert cmp.differing == ["model.w"] and cmp.values_differing == 1
    assert 0 < cmp.max_abs < 1e-6
    assert gc.resume_check(cmp, True).verdict == "FAIL"
    assert "model.w" in gc.resume_check(cmp, True).detail
    lenient = gc.resume_check(cmp, False)  # without --deterministic: said, not failed
    assert lenient.verdict == "note" and "1 of 4 tensors differ in 1 of 13 values" in lenient.detail


def test_a_tensor_missing_or_reshaped_differs():
    cmp = gc.compare_checkpoints(_checkpoint(), _checkpoint(**{"model.n": torch.tensor([3])}))
    assert cmp.differing == ["model.n"]
    fewer = _checkpoint()
    fewer["rng"] = []
    assert gc.compare_checkpoints(_checkpoint(), fewer).differing == ["rng.0.torch"]


def _run(top1=80.0, error=1e-7, zero=None, attenuation=("", "0.9", "0.5"), seconds=(9, 2, 4)):
    selected = {"conv": 7}
    summary = {"final_top1": top1, "compact": {"max_rel_error": error},
               "selected_per_layer": selected, "zero_filters_per_layer": zero or selected}
    rows = [{"effective_attenuation": a, "epoch_seconds": str(s)}
            for a, s in zip(attenuation, seconds)]
    return gc.Run(summary, rows, images=3000)


def test_an_amp_run_near_fp32_passes_and_says_how_near():
    check = gc.amp_check("amp bf16", _run(), _run(top1=79.0, attenuation=("", "0.88", "0.5")))
    assert check.verdict == "ok"
    assert check.line() == ("amp bf16: ok — final top1 79.00 vs fp32 80.00, compact "
                            "max_rel_error 1.0e-07, effective attenuation within 0.020 of "
                            "fp32's")


@pytest.mark.parametrize("run,problem", [
    (_run(top1=70.0), "top1 more than 3 points"),
    (_run(error=6e-4), "compact max_rel_error above 1e-05"),
    (_run(zero={"conv": 6}), "selected filters not zero"),
    (gc.Run({}, [], 0, failed="error: CUDA out of memory"), "the run failed: error: CUDA")])
def test_an_amp_run_fails_on_what_a_run_promises(run, problem):
    check = gc.amp_check("amp fp16", _run(), run)
    assert check.verdict == "FAIL" and problem in check.detail


def test_compact_passes_with_tf32_off_only():
    assert gc.compact_check(2e-7, 3e-4).verdict == "ok"
    assert gc.compact_check(2e-5, 3e-4).verdict == "FAIL"


def test_throughput_leaves_the_first_epoch_out():
    assert gc.images_per_second(_run()) == 3000 / 3  # the median of 2 s and 4 s
    line = gc.throughput_check({"fp32": _run(), "bf16": _run(seconds=(9, 1, 2)),
                                "fp16": gc.Run({}, [], 0, failed="x")}).line()
    assert line.startswith("throughput: note — fp32 1,000 img/s; bf16 2,000 img/s (×2.00) (")


def test_a_run_folder_reads_back(tmp_path):
    json.dump({"final_top1": 1.0}, open(tmp_path / "summary.json", "w"))
    (tmp_path / "metrics.csv").write_text("epoch,epoch_seconds\n0,1.5\n")
    (tmp_path / "log.txt").write_text("FSDP run: resnet20 on fashion_demo, 3000 train / 1000 "
                                      "test samples, …\n")
    run = gc.Run.read(str(tmp_path))
    assert run.images == 3000 and run.rows == [{"epoch": "0", "epoch_seconds": "1.5"}]
