"""Fixtures shared by several test modules."""
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

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
