"""``model_compact.pt``: the manifest (plain data) and the state dict; no pickled code.

Format 3 holds the compact graph (nodes, their attributes and tensor shapes). Files of the
ResNet-only formats 1 and 2 are refused with the command that rewrites them from the
snapshot (``python compact.py SNAPSHOT``): the snapshot's checkpoint holds everything needed.
"""
from pathlib import Path

from ..errors import UserError
from ..files import atomic_save, safe_load
from .network import CompactNet

FORMAT = "fsdp-compact"
FORMAT_VERSION = 3  # 1, 2: the ResNet-only compact networks (refused: re-run compact.py)


def save_compact(model: CompactNet, path) -> None:
    """Write the manifest (plain data) and the state dict; ``load_compact`` rebuilds the model."""
    if not isinstance(model, CompactNet):
        raise UserError(f"save_compact needs the output of compact_model, got "
                        f"{type(model).__name__}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "version": FORMAT_VERSION, "manifest": model.manifest,
                 "state_dict": state}, str(path))


def load_compact(path, map_location="cpu") -> CompactNet:
    """Rebuild a compact network saved by ``save_compact`` (eval mode); no pickled code runs."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; create it with `python compact.py SNAPSHOT`")
    blob = safe_load(str(path), map_location)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a compact model file; create one with "
                        "`python compact.py SNAPSHOT`")
    version = blob.get("version")
    if version != FORMAT_VERSION:
        raise UserError(f"{path} has compact format version {version}, this code reads "
                        f"{FORMAT_VERSION}; re-run `python compact.py SNAPSHOT` on its snapshot")
    try:
        state = blob["state_dict"]
        model = CompactNet(blob["manifest"])
        floats = {v.dtype for v in state.values() if v.is_floating_point()}
        if len(floats) == 1:
            model = model.to(floats.pop())
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError, AttributeError) as e:
        raise UserError(f"{path} is damaged ({str(e).splitlines()[0][:200]}); re-run "
                        "`python compact.py SNAPSHOT` on its snapshot") from e
    return model.eval()
