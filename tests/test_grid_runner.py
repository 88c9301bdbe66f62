"""The job runner on stand-in scripts (no torch): one job per GPU in parallel, the GPU it is
given, and a grid that stops starting jobs when its first ones all fail."""
import json
import os
import sys

import pytest

from utils.run import grid_runner
from utils.errors import UserError
from utils.run.grid import Job
from utils.run.grid_runner import GridRunner, job_env, parse_gpus

STAND_IN = """
import json, os, sys, time
folder = sys.argv[1]
t0 = time.time()
time.sleep(float(sys.argv[2]))
if sys.argv[3] == "fail":
    print("error: no data here")
    sys.exit(2)
with open(os.path.join(folder, "summary.json"), "w") as f:
    json.dump({"final_top1": 50.0, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"),
               "t0": t0, "t1": time.time()}, f)
"""


def jobs(tmp_path, n, *flags):
    (tmp_path / "stand_in.py").write_text(STAND_IN)
    return [Job(f"j{i}", str(tmp_path / f"j{i}"), "stand_in.py",
                (str(tmp_path / f"j{i}"), *flags)) for i in range(n)]


def test_one_job_per_gpu_at_a_time_in_parallel(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")  # --gpus counts the GPUs we see
    lines = []
    todo = jobs(tmp_path, 4, "0.6", "ok")
    outcome = GridRunner(todo, [0, 1], sys.executable, str(tmp_path), set(), lines.append).run()
    assert outcome.done == ["j0", "j1", "j2", "j3"] and not outcome.unfinished
    runs = [json.load(open(os.path.join(j.folder, "summary.json"))) for j in todo]
    assert [r["gpu"] for r in runs] == ["5", "7", "5", "7"]
    # j0 and j1 ran side by side; j2 waited for a free GPU
    assert runs[1]["t0"] < runs[0]["t1"] and runs[2]["t0"] >= min(runs[0]["t1"], runs[1]["t1"])
    assert lines[0] == "[1/4] j0: started on GPU 0"
    assert any(line.startswith("[4/4] j3: done in ") and line.endswith(", final top-1 50.00")
               for line in lines)


def test_the_first_two_failures_stop_the_grid(tmp_path):
    lines = []
    outcome = GridRunner(jobs(tmp_path, 5, "0", "fail"), None, sys.executable, str(tmp_path),
                         set(), lines.append).run()
    assert outcome.failed == ["j0", "j1"] and outcome.not_started == ["j2", "j3", "j4"]
    assert "failed (exit 2)" in lines[1] and "error: no data here" in lines[1]
    assert lines[-1] == "the first 2 runs failed: not starting the other 3, which would most " \
                        "likely fail alike"


def test_a_job_without_gpus_keeps_the_environment(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert "CUDA_VISIBLE_DEVICES" not in job_env(None) and job_env(3)["CUDA_VISIBLE_DEVICES"] == "3"


@pytest.mark.parametrize("text,message", [
    ("0,2", "--gpus names GPU 2, but this machine has 2 (0, 1); give GPUs from 0 to 1"),
    ("0,0", "--gpus 0,0: give each GPU once, numbered from 0"),
    ("0;1", "--gpus 0;1: give GPU numbers separated by commas, e.g. 0,1,2,3")])
def test_gpus_must_exist_and_be_listed_once(monkeypatch, text, message):
    monkeypatch.setattr(grid_runner, "gpu_count", lambda: 2)
    assert parse_gpus("1,0") == [1, 0]
    with pytest.raises(UserError) as e:
        parse_gpus(text)
    assert str(e.value) == message
