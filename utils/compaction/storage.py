"""``model_compact.pt``: the manifest (plain data), the state dict and their digest; no
pickled code, and nothing in the file reaches code unchecked.

A compact file is shared and downloaded, so ``load_compact`` treats it as hostile: it reads
it with ``torch.load(weights_only=True)``, holds the manifest to its grammar
(``manifest.check_manifest``), checks the SHA-256 digest written with it (a flipped bit or a
torn copy is found here, not in the outputs), builds the network on meta tensors and checks
that every tensor of the file has the shape its module expects and that the graph's shapes
fit together, and only then allocates memory and loads the weights. Any failure is one line.

Format 4 adds the digest; files of format 3 (no digest) still load, with every other check.
Files of the ResNet-only formats 1 and 2 are refused: their run's checkpoint rebuilds them.
"""
from pathlib import Path

import torch

from ..errors import UserError
from ..files import DIGEST_KEY, atomic_save, safe_load, seal_matches, sealed
from .manifest import ManifestError
from .network import CompactNet

FORMAT = "fsdp-compact"
FORMAT_VERSION = 4  # 4: + digest; 3: the compact graph; 1, 2: ResNet-only (refused)
READABLE = (3, 4)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_AGAIN = "get an intact copy, or write it again with save_compact from the pruned model"


def save_compact(model: CompactNet, path) -> None:
    """Write the manifest (plain data), the state dict and their digest; ``load_compact``
    rebuilds the model."""
    if not isinstance(model, CompactNet):
        raise UserError(f"save_compact needs the output of compact_model, got "
                        f"{type(model).__name__}")
    if model.holds():
        raise UserError(f"save_compact: this compact network keeps {kept_parts(model)} of the "
                        "dense one whole, which runs code a model_compact.pt does not hold; "
                        "save it with export_pt2(model, path, input_shape) instead (a "
                        "torch.export program: it loads with no pickled code)")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save(sealed({"format": FORMAT, "version": FORMAT_VERSION,
                        "manifest": model.manifest, "state_dict": state}), str(path))


def kept_parts(model: CompactNet) -> str:
    """The parts a compact network keeps whole, for a message: 'stages.3.attn' and 2 more."""
    names = [f"'{p['part']}'" if p["part"] else "the model's own forward"
             for p in model.kept_whole] or ["parts"]
    return names[0] + (f" and {len(names) - 1} more" if len(names) > 1 else "")


def load_compact(path, map_location="cpu") -> CompactNet:
    """Rebuild a compact network saved by ``save_compact`` (eval mode), after checking every
    part of the file; no pickled code runs and no stored string becomes code."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist; give the path of a model_compact.pt")
    try:
        blob = safe_load(str(path), "cpu")
    except UserError as e:  # why, without the checkpoint reader's advice
        why = getattr(e, "reason", None) or str(e)
        raise UserError(f"{path} is not a readable compact model file ({_reason(why)}); "
                        f"{_AGAIN}") from None
    return compact_from_blob(blob, path).to(map_location)


def compact_from_blob(blob, path) -> CompactNet:
    """The network of what ``torch.load(weights_only=True)`` read from ``path``, checked."""
    manifest, state = _parts(blob, path)
    try:
        model = CompactNet(manifest, device="meta")
        _check_tensors(model, state)
        out = model.output_shape()
        if out != (1, manifest["num_classes"]):
            raise ManifestError(f"the graph's output is {list(out)}, not [1, "
                                f"{manifest['num_classes']}]")
    except ManifestError as e:
        raise UserError(f"{path} is damaged or was not written by save_compact ({_reason(e)}); "
                        f"{_AGAIN}") from None
    except Exception as e:  # a torch op refusing the shapes the manifest gives it
        raise UserError(f"{path} is damaged: its layers do not fit together "
                        f"({_reason(e)}); {_AGAIN}") from None
    model.to_empty(device="cpu")
    floats = {v.dtype for v in state.values() if v.is_floating_point()}
    if len(floats) == 1:
        model = model.to(floats.pop())
    model.load_state_dict(state, strict=True)
    return model.eval()


def _parts(blob, path: Path) -> tuple[dict, dict]:
    """The manifest and the state dict of a file of a readable format whose digest holds."""
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise UserError(f"{path} is not a compact model file; {_AGAIN}")
    version = blob.get("version")
    if version not in READABLE:
        raise UserError(f"{path} has compact format version {_short(version)}, this code reads "
                        f"{', '.join(map(str, READABLE))}; re-run the compaction of its run's "
                        "checkpoint")
    keys = {"format", "version", "manifest", "state_dict"} | ({DIGEST_KEY} if version >= 4 else set())
    if set(blob) != keys:
        raise UserError(f"{path} is damaged (its parts are {sorted(map(_short, blob))}, "
                        f"expected {sorted(keys)}); {_AGAIN}")
    state = blob["state_dict"]
    if not isinstance(state, dict) or not all(
            type(k) is str and type(v) is torch.Tensor and v.layout == torch.strided
            and (v.dtype in _FLOATS or v.dtype == torch.int64) for k, v in state.items()):
        raise UserError(f"{path} is damaged (its state dict holds other things than dense "
                        f"float and index tensors); {_AGAIN}")
    if version >= 4:
        try:
            same = seal_matches(blob)
        except RecursionError:  # nested deeper than any manifest
            same = False
        if not same:
            raise UserError(f"{path} is damaged: its contents do not match the digest written "
                            f"with them (a changed or torn copy); {_AGAIN}")
    return blob["manifest"], state


def _check_tensors(model: CompactNet, state: dict) -> None:
    """Every tensor the file holds is one the built network has, of its shape and kind, and
    the one its node declares."""
    wanted = model.state_dict()
    for key in sorted(set(wanted) ^ set(state)):
        raise ManifestError(f"{'no' if key in wanted else 'an unexpected'} tensor "
                            f"{_short(key)}")
    for node in model.manifest["nodes"]:
        for key, spec in node["tensors"].items():
            t = state.get(f"net.{node['name']}.{key}")
            if t is None or list(t.shape) != list(spec["shape"]) or \
                    t.is_floating_point() == spec["index"]:
                raise ManifestError(f"tensor {node['name']}.{key} is not the one its node "
                                    "declares")
    for key, t in state.items():
        w = wanted[key]
        if tuple(t.shape) != tuple(w.shape) or t.is_floating_point() != w.is_floating_point():
            raise ManifestError(f"tensor {_short(key)} is {t.dtype} {list(t.shape)}, the "
                                f"network expects {'float' if w.is_floating_point() else 'index'}"
                                f" {list(w.shape)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ManifestError(f"tensor {_short(key)} holds NaN or infinite values")


def _reason(e: Exception) -> str:
    """An error's first 200 characters on one line, nothing a terminal would interpret."""
    text = " ".join(str(e).split()) or type(e).__name__
    return "".join(c if c.isprintable() else "?" for c in text[:200])


def _short(v) -> str:
    return ascii(str(v)[:60])[1:-1]
