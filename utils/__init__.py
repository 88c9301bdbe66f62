"""FSDP (Fractional Step Discriminant Pruning) and SFP, ASFP, FPGM, L1 for your own training loop.

Installed (``pip install .``), this folder is the package ``fsdp_pruning``; in the checkout the
scripts and tests import it as ``utils``. The names below are imported when first used, not
here: ``import fsdp_pruning`` reads no torch and builds nothing, so it costs milliseconds.

    from fsdp_pruning import Pruner, compact_model, save_compact, load_compact

Everything else lives in the subpackages: ``method`` (methods, schedule, mask, criteria),
``compaction`` (the exact smaller network, its cost and exports), ``report`` (what runs leave
and how they are read).
"""
import importlib
import importlib.util
import re

from .errors import UserError

__version__ = "0.1.0"  # pyproject.toml reads it from here

# The newest torch features the code relies on: torch.compiler.is_compiling (2.3) telling the
# compact network it is being recorded, and the torch.export-based exports (the .pt2 program
# with a dynamic batch, torch.onnx.export(dynamo=True): 2.6). Tested with torch 2.14.1.
TORCH_MIN = (2, 6)
TORCH_TESTED = "2.14.1"

_API = {  # name -> module that defines it
    "Pruner": "pruner", "PruningWarning": "pruner",
    "CompactNet": "compaction", "compact_model": "compaction", "save_compact": "compaction",
    "load_compact": "compaction", "network_cost": "compaction", "compact_cost": "compaction",
    "export_pt2": "compaction", "export_onnx": "compaction", "export_torchscript": "compaction",
    "Criterion": "method.criteria", "criterion": "method.criteria", "registry": "method.criteria",
    "register_criterion": "method.criteria", "METHODS": "method.methods",
    "Method": "method.methods", "register_method": "method.methods",
}
_SUBPACKAGES = ("compaction", "method", "report")
__all__ = sorted([*_API, "UserError", "__version__"])


class UnsupportedTorch(UserError, ImportError):
    """The installed torch is older than the code needs (raised by ``import fsdp_pruning``)."""


def torch_version() -> str | None:
    """The installed torch's version, read from ``torch/version.py`` without importing torch
    (which takes seconds); None when there is no torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        try:
            with open(f"{folder}/version.py", encoding="utf-8") as f:
                found = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)", f.read(), re.M)
        except OSError:
            continue
        if found:
            return found.group(1)
    return "unknown"


def check_torch(version: str | None) -> None:
    """Raise UnsupportedTorch (one line) unless ``version`` is at least ``TORCH_MIN``."""
    need = ".".join(map(str, TORCH_MIN))
    if version is None:
        raise UnsupportedTorch(f"fsdp_pruning needs torch >= {need} (tested with "
                               f"{TORCH_TESTED}) and finds none: pip install 'torch>={need}'")
    numbers = re.match(r"(\d+)\.(\d+)", version)
    if numbers and tuple(map(int, numbers.groups())) < TORCH_MIN:
        raise UnsupportedTorch(f"fsdp_pruning needs torch >= {need} (tested with "
                               f"{TORCH_TESTED}), this is torch {version}: "
                               f"pip install 'torch>={need}'")


check_torch(torch_version())


def __getattr__(name):  # PEP 562: the API is imported on first use
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *__all__, *_SUBPACKAGES})
