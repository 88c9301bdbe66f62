"""The compact network as a file that runs without this code: a torch.export program (.pt2),
an ONNX file, or TorchScript (deprecated by torch; kept for existing users)."""
import importlib.util
import warnings

import torch
from torch import nn

from ..errors import UserError
from ..files import atomic_write


def _example(model: nn.Module, input_shape) -> torch.Tensor:
    p = next(model.parameters())
    return torch.randn(tuple(input_shape), dtype=p.dtype, device=p.device)


def export_pt2(model: nn.Module, path, input_shape) -> None:
    """Save ``model`` (eval mode) as a torch.export program: ``torch.export.load(path).module()``
    runs it with none of our code. The batch size is dynamic, the image size ``input_shape``'s.
    The file appears whole or not at all. A compact network that keeps parts of the dense one
    whole (``kept``) is saved so: the program holds those parts as aten ops, no pickled code."""
    # an example batch of 2: torch.export would specialise a batch of 1 to a constant
    x = _example(model, (2, *tuple(input_shape)[-3:]))
    batch = torch.export.Dim("batch")
    try:
        program = torch.export.export(model.eval(), (x,), dynamic_shapes=({0: batch},))
    except Exception as e:  # torch.export refuses some Python of a part kept whole
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise UserError(f"torch.export cannot record this network ({text})") from e
    atomic_write(str(path), lambda f: torch.export.save(program, f))


def export_torchscript(model: nn.Module, path, input_shape) -> None:
    """Trace ``model`` (eval mode) and save it; ``torch.jit.load`` needs none of our code.
    TorchScript is deprecated by torch (``export_pt2`` is its successor); kept for existing
    users."""
    x = _example(model, input_shape)
    with torch.no_grad(), warnings.catch_warnings():
        # torch ≥ 2.9 flags TorchScript as deprecated on every call; it was asked for explicitly
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(model.eval(), x)
        torch.jit.save(traced, str(path))


def check_onnx_exporter() -> None:
    """Raise UserError unless torch's ONNX exporter can run (it needs onnx and onnxscript)."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"ONNX export needs {' and '.join(missing)}: pip install "
                        "'fsdp-pruning[onnx]' (the package's onnx extra; in the checkout, "
                        "pip install -r requirements.txt)")


def export_onnx(model: nn.Module, path, input_shape) -> None:
    """Export to one ONNX file (batch size dynamic) with torch's exporter."""
    check_onnx_exporter()
    x = _example(model, input_shape)
    batch = torch.export.Dim("batch")
    torch.onnx.export(model.eval(), (x,), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_shapes=({0: batch},), dynamo=True,
                      external_data=False, verbose=False)
