"""What the compactor reads off one fx node: its shape, its arguments by name, how a refusal
names it, and the ``Op`` a rule makes of it (``rules``)."""
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from ..errors import UserError

# what a node does to a tensor when it only reads its size: such a user of a conv's output
# leaves the conv → BatchNorm pair intact (timm's BatchNormAct2d asserts its input's rank)
SHAPE_ATTRIBUTES = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}
SHAPE_METHODS = {"size", "dim", "ndimension", "numel", "get_device", "nelement"}


@dataclass
class Op:
    """One node of the dense graph in the compactor's terms: ``kind`` names its rule."""
    kind: str
    node: fx.Node
    inputs: list = field(default_factory=list)  # the tensor nodes it reads
    attrs: dict = field(default_factory=dict)
    module: nn.Module | None = None


def shape_of(node: fx.Node):
    """The output shape (torch.Size) of a tensor node, a list of them for a tuple of tensors,
    None for a node that produces no tensor (sizes, ints)."""
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return None
    if isinstance(meta, (tuple, list)) and not hasattr(meta, "shape"):
        shapes = [getattr(m, "shape", None) for m in meta]
        return shapes if all(s is not None for s in shapes) else None
    return meta.shape


def reads_shape_only(node: fx.Node) -> bool:
    """Does ``node`` read only the size (or dtype, device) of its input? Decided from the node
    alone, without shapes, so the graph's structure does not wait for an example input."""
    if node.op == "call_function" and node.target is getattr:
        return len(node.args) > 1 and node.args[1] in SHAPE_ATTRIBUTES
    return node.op == "call_method" and node.target in SHAPE_METHODS


def bind(node: fx.Node, names: tuple, defaults: dict) -> dict:
    """A call's arguments by name (positional ones first), defaults filled in."""
    values = dict(defaults)
    values.update(zip(names, node.args))
    values.update(node.kwargs)
    return values


def target_name(node: fx.Node) -> str:
    """A method's name, or a function's."""
    return node.target if isinstance(node.target, str) else node.target.__name__


def tensors(values) -> list:
    """The tensor nodes among ``values`` (a node's arguments)."""
    return [v for v in values if isinstance(v, fx.Node) and shape_of(v) is not None]


def describe(node: fx.Node, modules: dict) -> str:
    """How a refusal names a node: the operation and the fx node."""
    if node.op == "call_module":
        kind = type(modules[node.target]).__name__
        return f"{kind} (module '{node.target}', fx node {node.name})"
    target = getattr(node.target, "__name__", str(node.target))
    kind = {"call_method": "method", "call_function": "function"}.get(node.op, node.op)
    return f"{kind} {target} (fx node {node.name})"


class Unsupported(UserError):
    """An op the compactor has no exact conversion for: the graph keeps it whole (its inputs
    at full width, computed as the dense network does) rather than refusing the model."""


def refuse(node: fx.Node, modules: dict, why: str = "") -> Unsupported:
    return Unsupported(f"cannot compact: {describe(node, modules)} is not an operation the "
                       f"compactor understands{why}; see docs/compaction.md, 'Your own "
                       "architecture'")


def op_name(node: fx.Node, modules: dict) -> str:
    """The op a node calls, in a word: a module's type, a function's or a method's name."""
    if node.op == "call_module":
        return type(modules[node.target]).__name__
    if node.op == "get_attr":
        return "parameter"
    return getattr(node.target, "__name__", str(node.target))


def is_constant(node) -> bool:
    """Is ``node`` a tensor computed from the model's parameters alone (not from the input)?
    Marked by the graph (``tracing.ModelGraph``) before its nodes are classified."""
    return isinstance(node, fx.Node) and node.meta.get("constant", False)


def permutation(node: fx.Node, rank: int) -> list:
    """The dims of a ``transpose`` or ``permute`` node's result, as positions in its input."""
    args = list(node.args[1:])
    if target_name(node) == "transpose":
        d0, d1 = (a % rank for a in args[:2])
        dims = list(range(rank))
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return dims
    dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    return [d % rank for d in dims]


def plain(value):
    """A tuple as a list (what the manifest's JSON holds), anything else as it is."""
    return list(value) if isinstance(value, tuple) else value


def number(value) -> bool:
    """A plain int or float operand (not a bool, not a tensor)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def example_input(model: nn.Module, input_shape) -> torch.Tensor:
    """Zeros of ``input_shape`` ((C, H, W) or (N, C, H, W)), batch 1, on the model's device."""
    shape = tuple(int(s) for s in input_shape)[-3:]
    p = next(model.parameters())
    return torch.zeros((1,) + shape, dtype=p.dtype, device=p.device)
