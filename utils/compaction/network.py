"""The compact network: an fx graph generated from the manifest, and ``compact_model``.

The manifest lists the compact graph's nodes as plain data (op, inputs, attributes, tensor
shapes); ``CompactNet`` turns it into modules and an ``fx.GraphModule`` whose forward is
generated Python — no interpreter between the ops, and nothing pickled in the file.
"""
import torch
from torch import fx, nn

from ..method.graph import unwrap
from .converter import convert
from .joins import Join
from .layers import FoldedConv, Linear
from .manifest import check_manifest
from .modules import (MODE, Act, Affine, Cached, Mul, Pool, SpatialSlice, Take, TensorOp,
                      graph_mode)
from .nodes import shape_of
from .tracing import ModelGraph

MODULES = {"conv": FoldedConv, "linear": Linear, "act": Act, "affine": Affine, "mul": Mul,
           "take": Take, "pool": Pool, "slice": SpatialSlice, "join": Join, "tensor": TensorOp}
# results that share their input's storage (an in-place activation does too, but only when
# nothing reads its input afterwards, so its result can be taken as its own)
_VIEWS = {"slice", "flatten"}


class CompactNet(nn.Module):
    """The compact network; ``manifest`` is the plain data it was built from, held to its
    grammar first (``manifest.check_manifest``: no stored string reaches the generated forward
    unchecked). Its tensors are uninitialised until ``load_state_dict`` (``compact_model`` and
    ``load_compact`` do it); ``device="meta"`` builds it without memory (shapes only)."""

    def __init__(self, manifest: dict, device="cpu"):
        super().__init__()
        check_manifest(manifest)
        self.manifest = manifest
        root, graph = nn.Module(), fx.Graph()
        values = {"input": graph.placeholder("x")}
        with torch.device("meta"):  # no initialisation: ``load_state_dict`` fills everything
            self._build(manifest, root, graph, values)
        graph.output(values[manifest["output"]])
        _mark_in_place(manifest, root)
        self.net = fx.GraphModule(root, graph)
        if str(device) != "meta":
            self.to_empty(device=device)

    @staticmethod
    def _build(manifest: dict, root: nn.Module, graph: fx.Graph, values: dict) -> None:
        for spec in manifest["nodes"]:
            args = [values[i] for i in spec["in"]]
            if spec["op"] == "cat":
                values[spec["name"]] = graph.call_function(torch.cat, (args, 1))
            elif spec["op"] == "flatten":
                values[spec["name"]] = graph.call_function(torch.flatten, (args[0], 1))
            else:
                root.add_module(spec["name"], MODULES[spec["op"]](spec["attrs"], spec["tensors"]))
                values[spec["name"]] = graph.call_module(spec["name"], tuple(args))

    def output_shape(self, batch: int = 1) -> tuple:
        """The output's shape for a batch of the manifest's input size, computed on meta
        tensors (no memory, no arithmetic) as a recorded graph computes it: what every node
        would do to the shapes, so a manifest whose parts do not fit together fails here."""
        before = MODE.recorded, MODE.eager
        MODE.recorded, MODE.eager = True, False
        try:
            x = torch.empty(batch, *self.manifest["input_shape"], device="meta")
            return tuple(self.net(x).shape)
        finally:
            MODE.recorded, MODE.eager = before

    def clear_cache(self) -> None:
        """Forget the cached constant maps (after editing buffers in place by hand)."""
        for m in self.modules():
            if isinstance(m, Cached):
                m._cache = ((), None)

    def forward(self, x):
        before = MODE.recorded, MODE.eager
        MODE.recorded = graph_mode()
        MODE.eager = not MODE.recorded and not torch.is_grad_enabled()
        try:
            return self.net(x)
        finally:
            MODE.recorded, MODE.eager = before


def _mark_in_place(manifest: dict, modules: nn.Module) -> None:
    """Let a join or an activation write into an input when nothing reads that storage later."""
    nodes = manifest["nodes"]
    op = {"input": "input", **{s["name"]: s["op"] for s in nodes}}
    root = {"input": "input"}
    for s in nodes:
        view = s["op"] in _VIEWS or (s["op"] == "take" and s["attrs"]["start"] >= 0)
        root[s["name"]] = root[s["in"][0]] if view else s["name"]
    last = {}
    for i, s in enumerate(nodes):
        for src in s["in"]:
            last[root[src]] = i
    last[root[manifest["output"]]] = len(nodes)
    for i, s in enumerate(nodes):
        if s["op"] not in ("join", "act"):
            continue
        count = len(s["attrs"]["operands"]) if s["op"] == "join" else 1
        operands = s["in"][:count]
        flags = [op[root[src]] != "input" and last[root[src]] == i and operands.count(src) == 1
                 for src in operands]
        m = modules.get_submodule(s["name"])
        if s["op"] == "join":
            m.inplace = flags
        else:
            m.inplace = flags[0]


def default_input_shape(model: nn.Module) -> tuple:
    """(C, H, W) for the conversion's example input: the first conv's input channels, at the
    first of 32 and 224 pixels the model accepts."""
    first = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    channels = first.in_channels if first is not None else 3
    for size in (32, 224):
        try:
            p = next(model.parameters())
            was = model.training
            model.eval()
            with torch.no_grad():
                model(torch.zeros(1, channels, size, size, dtype=p.dtype, device=p.device))
            model.train(was)
            return channels, size, size
        except Exception:  # too small for its pools or its classifier: try the next size
            model.train(was)
    return channels, 224, 224


@torch.no_grad()
def compact_model(model, pruned: dict, exact: bool = True, input_shape=None,
                  arch: str | None = None) -> CompactNet:
    """The compact network (eval mode, the model's device and dtype) of a soft-pruned one.

    ``pruned``: {conv module name: filter indices}, e.g. the Mask's final
    ``{c.name: mask.selected(c.name) for c in mask.convs}`` or a checkpoint's
    ``ckpt['mask']['selected']``. The selected filters must be zero (ζ = 0). ``model`` is not
    modified. ``exact=False``: drop the removed channels' constants (same widths, different
    outputs: what a pruner that ignores them builds; the bench's latency floor).
    ``input_shape`` (C, H, W): the example the graph is traced with (any size works later);
    ``arch``: the name recorded in the manifest. ``model`` may be its ``ModelGraph`` (traced
    once for discovery and costs): the graph's input shape is then the default.
    """
    graph = model if isinstance(model, ModelGraph) else None
    model = graph.model if graph is not None else unwrap(model)
    if input_shape is None:
        input_shape = graph.input_shape if graph is not None and graph.input_shape else \
            default_input_shape(model)
    shape = tuple(input_shape)[-3:]
    graph = graph.with_shapes(shape) if graph is not None else ModelGraph(model, shape)
    cv = convert(graph, pruned, exact=exact, check=True)
    manifest = manifest_of(graph, cv, exact, arch)
    p = next(model.parameters())
    compact = CompactNet(manifest).to(p.dtype)  # casts floating tensors only, not indices
    compact.load_state_dict({f"net.{k}": v for k, v in cv.b.state.items()}, strict=True)
    compact.rules_used = dict(cv.used)  # which rules of the walk fired (not saved)
    return compact.to(p.device).eval()


def manifest_of(graph: ModelGraph, cv, exact: bool, arch) -> dict:
    kept, removed = {}, {}
    for name, mask in cv.masks.items():
        removed[name] = mask.nonzero()[:, 0].tolist()
        kept[name] = (~mask).nonzero()[:, 0].tolist()
    out_shape = [s for s in graph.ops if s.kind == "output"][0].inputs[0]
    return {"arch": arch, "num_classes": int(shape_of(out_shape)[-1]),
            "in_channels": int(graph.input_shape[0]), "input_shape": list(graph.input_shape),
            "exact": bool(exact), "kept": kept, "pruned": removed,
            "nodes": cv.b.live(cv.output), "output": cv.output}
