"""Fixtures shared by several test modules, and the parallel workers' threads."""
import gc
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker process per core: one intra-op thread each (and in the
    # scripts they start) keeps the cores from being oversubscribed
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

# the suite builds and drops thousands of fx graphs and modules: at Python's default threshold
# (a young collection every 700 allocations) collecting took ~8 % of a test process's time;
# every 50 000 it is ~2 % and the peak memory is no higher (tests/test_compact.py: 3.8 → 1.1 s
# of collections, 1.97 → 1.87 GB)
gc.set_threshold(50_000, 20, 10)

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Installed:
    wheel: Path  # the built wheel
    site: Path   # where `pip install --target` put it: the only path a user process gets


def pip(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Installed:
    """The package as a user gets it: the wheel built from the checkout's sources, installed
    with ``pip install --no-deps --target`` into a folder outside the checkout (built once).

    The sources are copied first because a setuptools build writes build/ and an .egg-info
    beside them, and a test must not write into the checkout."""
    base = tmp_path_factory.mktemp("package")
    src = base / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copytree(ROOT / "utils", src / "utils",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # no build isolation: the venv's pinned setuptools builds it, offline
    pip("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(base / "dist"), ".",
        cwd=src)
    wheel, = (base / "dist").glob("*.whl")
    pip("install", "--no-deps", "-q", "--target", str(base / "site"), str(wheel), cwd=base)
    return Installed(wheel, base / "site")


# the longest files first: `make test` hands whole files to its workers in collection order,
# and a long file handed out last keeps one core busy after the other has finished (30 s of
# one idle core when test_reference_equivalence came last); in this order the short files
# fill the end. Test time per file on 2 cores, 2026-12-07; a file not named keeps its place
# after these.
LONGEST_FIRST = ["test_compact_zoo.py", "test_reproduce.py", "test_bad_inputs.py",
                 "test_cifar_e2e.py", "test_compact.py", "test_ddp.py", "test_imagenet.py",
                 "test_run_folder.py", "test_compact_streams.py", "test_compare.py",
                 "test_reference_equivalence.py", "test_package.py", "test_attenuation.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
