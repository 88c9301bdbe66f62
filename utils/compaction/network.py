"""The compact network: an fx graph generated from the manifest, and ``compact_model``.

The manifest lists the compact graph's nodes as plain data (op, inputs, attributes, tensor
shapes); ``CompactNet`` turns it into modules and an ``fx.GraphModule`` whose forward is
generated Python — no interpreter between the ops, and nothing pickled in the file. A part
kept whole (``kept``) is the one thing plain data cannot say: a ``held`` node runs it, the
piece of the dense network itself, which only a network built in memory holds (``hold``);
``storage.save_compact`` refuses such a network and points to ``export.export_pt2``.
"""
import torch
from torch import fx, nn

from ..errors import UserError
from ..method.graph import unwrap
from .converter import convert
from .inputs import declared_input_shape, missing_input
from .joins import Join
from .layers import FoldedConv, Linear
from .manifest import check_manifest
from .modules import (MODE, Act, Affine, Cached, Held, Mul, Pad, Pool, SpatialSlice, Take,
                      TensorOp, graph_mode)
from .nodes import shape_of
from .tracing import ModelGraph

MODULES = {"conv": FoldedConv, "linear": Linear, "act": Act, "affine": Affine, "mul": Mul,
           "take": Take, "pool": Pool, "slice": SpatialSlice, "join": Join, "tensor": TensorOp,
           "pad": Pad, "held": Held}
# results that share their input's storage (an in-place activation does too, but only when
# nothing reads its input afterwards, so its result can be taken as its own)
_VIEWS = {"slice", "flatten"}


class CompactNet(nn.Module):
    """The compact network; ``manifest`` is the plain data it was built from, held to its
    grammar first (``manifest.check_manifest``: no stored string reaches the generated forward
    unchecked). Its tensors are uninitialised until ``load_state_dict`` (``compact_model`` and
    ``load_compact`` do it); ``device="meta"`` builds it without memory (shapes only).
    ``held``: the names of the nodes that run a part kept whole (``compact_model``'s; the
    pieces are given by ``hold``); a manifest read from a file has none.
    ``kept_whole``: what of the dense network it keeps whole (``ModelGraph.parts``)."""

    def __init__(self, manifest: dict, device="cpu", held=frozenset()):
        super().__init__()
        check_manifest(manifest, held)
        self.manifest = manifest
        self.kept_whole: list = []
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

    def hold(self, pieces: dict) -> None:
        """Give the ``held`` nodes their pieces of the dense network ({node name: (module,
        whether it gets copies of its inputs)})."""
        for name, (module, copies) in pieces.items():
            self.net.get_submodule(name).set_piece(module, copies)

    def holds(self) -> list[str]:
        """The names of the nodes that run a part kept whole."""
        return [s["name"] for s in self.manifest["nodes"] if s["op"] == "held"]

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
    # a held piece's result may be a view of its input, or a parameter of the dense network:
    # read as a view of its first input, and never written into (as the input is not)
    op = {"input": "input", **{s["name"]: "input" if s["op"] == "held" else s["op"]
                               for s in nodes}}
    root = {"input": "input"}
    for s in nodes:
        view = s["op"] in _VIEWS or (s["op"] == "take" and s["attrs"]["start"] >= 0) or \
            (s["op"] == "held" and s["in"])
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
        flags = [op[root[src]] != "input" and op[src] != "input" and last[root[src]] == i
                 and operands.count(src) == 1 for src in operands]
        m = modules.get_submodule(s["name"])
        if s["op"] == "join":
            m.inplace = flags
        else:
            m.inplace = flags[0]


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
    by default the size the model declares (``inputs``), else it is asked for. ``arch``: the
    name recorded in the manifest. ``model`` may be its ``ModelGraph`` (traced once for
    discovery and costs): the graph's input shape is then the default.

    What the compactor has no rule for is kept whole (``kept``): run as in the dense network,
    the convs feeding it unpruned; ``kept_whole`` lists it (``ModelGraph.parts``). A network
    with no prunable conv at all is refused.
    """
    graph = model if isinstance(model, ModelGraph) else None
    model = graph.model if graph is not None else unwrap(model)
    if input_shape is None:
        input_shape = graph.input_shape if graph is not None and graph.input_shape else \
            declared_input_shape(model)
    if input_shape is None:
        raise UserError(f"compact_model: {missing_input(model)}")
    shape = tuple(input_shape)[-3:]
    graph = graph.with_shapes(shape) if graph is not None else ModelGraph(model, shape)
    graph.check_compactable()
    cv = convert(graph, pruned, exact=exact, check=True)
    manifest = manifest_of(graph, cv, exact, arch)
    p = next(model.parameters())
    held = {name: cv.held[name] for name in (n["name"] for n in manifest["nodes"])
            if name in cv.held}
    compact = CompactNet(manifest, held=set(held)).to(p.dtype)  # floats only, not indices
    compact.load_state_dict({f"net.{k}": v for k, v in cv.b.state.items()}, strict=True)
    compact.hold({name: (piece.module(), piece.mutates) for name, piece in held.items()})
    compact.kept_whole = graph.parts()
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
