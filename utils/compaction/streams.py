"""Residual streams: which prunable convs write into one residual sum (``coupling="residual"``).

A residual sum adds tensors of one shape; what each operand holds comes, through ops that keep
a constant channel constant (activations, identities, pools, unpaired BatchNorms, +, − or × a
number or a per-channel parameter: a layer scale), concatenations, channel slices and splits,
from the BatchNorm outputs of prunable convs, from zeros (an option-A shortcut's new
channels), or from another residual sum (the stream of the previous block). The convs reached
so, and the sums linked so, form one stream:
each conv's filter f lands on the stream channel ``offset + f`` (a ghost module's cheap half
at its offset, the narrower stream before an option-A shortcut at 0 of the wider one). When
every conv of a stream selects the same channels, those channels are constant in every operand
of every sum, and the compactor keeps the stream narrow (``rules.arithmetic``).

A stream is not coupled when something else writes into it — the network's input, a conv
outside the layer selection or without its own BatchNorm, a product (an excitation scales a
constant per sample), any other op — or when one conv lands on it at two offsets: one line says
so (``Streams.notes``) and its convs select on their own, the stream full width.
"""
from dataclasses import dataclass, field

from torch import fx

from ..method.groups import Group
from .nodes import shape_of
from .tracing import ModelGraph

PASSING = {"act", "identity", "pool", "bn"}  # a constant channel stays a constant channel


class _Unnarrowable(Exception):
    """Why a stream cannot be narrowed (in the words of the one line that says so)."""


@dataclass
class Streams:
    groups: list = field(default_factory=list)  # of ``groups.Group``
    notes: list = field(default_factory=list)   # one line per stream kept full width


def residual_groups(graph: ModelGraph, convs: list, input_shape) -> Streams:
    """The groups of ``convs`` (``PrunableConv``, forward order) whose outputs meet in residual
    sums, found in ``graph`` at ``input_shape``, and one line per stream left uncoupled."""
    graph = graph.with_shapes(input_shape)
    conv_of_bn = {bn: conv.target for conv, bn in graph.pairs.items()}
    sums = [op.node for op in graph.ops if _is_residual_sum(op)]
    links, reasons = {}, {}
    for node in sums:
        found = []
        try:
            for x in graph.op_of[node].inputs:
                _origins(graph, x, 0, conv_of_bn, found)
        except _Unnarrowable as e:
            reasons[node] = str(e)
        links[node] = found
    filters = {c.name: c.filters for c in convs}
    out = Streams()
    for component, agree in _components(sums, links):
        _add_group(component, agree, links, reasons, filters, out)
    return out


def _is_residual_sum(op) -> bool:
    """A sum of two tensors of the sum's own (N, C, H, W) shape."""
    if op.kind != "add" or op.attrs.get("number") is not None or len(op.inputs) != 2:
        return False
    shape = shape_of(op.node)
    return shape is not None and len(shape) == 4 and all(
        tuple(shape_of(x) or ()) == tuple(shape) for x in op.inputs)


def _origins(graph: ModelGraph, node: fx.Node, offset: int, conv_of_bn: dict,
             found: list) -> None:
    """Append to ``found`` what writes ``node``'s channels: ("conv", name, offset of its
    filter 0) and ("sum", node, offset of its channel 0), in the coordinates where ``node``'s
    channel 0 is at ``offset``."""
    while True:
        if node in conv_of_bn:
            found.append(("conv", conv_of_bn[node], offset))
            return
        op = graph.op_of[node]
        if _is_residual_sum(op):
            found.append(("sum", node, offset))
            return
        if op.kind == "zeros":
            return
        if op.kind == "cat":
            for x in op.inputs:
                _origins(graph, x, offset, conv_of_bn, found)
                offset += shape_of(x)[1]
            return
        node, offset = _through(graph, op, offset)


def _through(graph: ModelGraph, op, offset: int) -> tuple[fx.Node, int]:
    """The one input a channel-routing or constant-keeping op reads, and its offset."""
    if op.kind in PASSING or _by_a_constant(op):
        return op.inputs[0], offset
    if op.kind == "slice":
        start, stop, step = op.attrs["slices"][1]
        if step in (None, 1):
            return op.inputs[0], offset - (start or 0)
    if op.kind == "item":
        split = graph.op_of[op.inputs[0]]
        sizes = split.attrs["sizes"]
        return split.inputs[0], offset - sum(sizes[:op.attrs["index"]])
    what = {"mul": "a product", "sub": "a difference of two tensors"}.get(op.kind, op.kind) + \
        f" (fx node {op.node.name})"
    if op.kind == "input":
        what = "the network's input"
    elif op.kind == "conv":
        what = f"conv '{op.node.target}' (no BatchNorm of its own)"
    raise _Unnarrowable(f"{what} writes into it")


def _by_a_constant(op) -> bool:
    """+, − or × a number or a per-channel tensor of the parameters (a layer scale x·γ):
    a constant channel stays constant, a zero one zero under ×."""
    return op.kind in ("add", "sub", "mul") and len(op.inputs) == 1 and (
        op.attrs.get("number") is not None or op.attrs.get("constant") is not None)


def _components(sums: list, links: dict) -> list[tuple[list, bool]]:
    """The sums linked through their operands, each with its channel 0's position, and
    whether the positions agree along every link (in graph order: the first sum at 0)."""
    edges = {s: [] for s in sums}
    for s in sums:
        for kind, other, off in links[s]:
            if kind == "sum" and other in edges:
                edges[s].append((other, off))
                edges[other].append((s, -off))
    seen, out = {}, []
    for root in sums:
        if root in seen:
            continue
        seen[root], stack, component, agree = 0, [root], [], True
        while stack:
            s = stack.pop()
            component.append((s, seen[s]))
            for other, off in edges[s]:
                if other not in seen:
                    seen[other] = seen[s] + off
                    stack.append(other)
                agree &= seen[other] == seen[s] + off
        out.append((component, agree))
    return out


def _add_group(component: list, agree: bool, links: dict, reasons: dict, filters: dict,
               out: Streams) -> None:
    """The group of one stream, or the line that says why it stays full width."""
    first = component[0][0]
    where = {}
    try:
        if not agree:
            raise _Unnarrowable("its channels meet at two positions")
        for s, _ in component:
            if s in reasons:
                raise _Unnarrowable(reasons[s])
        for s, pos in component:
            for kind, name, off in links[s]:
                if kind != "conv":
                    continue
                if name not in filters:
                    raise _Unnarrowable(f"conv '{name}' writes into it and is not pruned "
                                        "(outside the layer selection)")
                if where.setdefault(name, pos + off) != pos + off:
                    raise _Unnarrowable(f"conv '{name}' lands on it at two offsets")
    except _Unnarrowable as e:
        out.notes.append(f"the residual stream of fx node {first.name} cannot be narrowed "
                         f"({e}): its convs select on their own, the stream stays full width")
        return
    if len(where) < 2:
        return  # one conv alone: nothing to couple
    _append(where, filters, out)


def _append(where: dict, filters: dict, out: Streams) -> None:
    """The group of the convs at their positions, shifted so that the first channel is 0
    (``filters``: {conv: its filters}, in forward order)."""
    members = [n for n in filters if n in where]
    low = min(where.values())
    width = max(where[n] + filters[n] for n in members) - low
    out.groups.append(Group(f"group:{members[0]}", width,
                            tuple((n, where[n] - low) for n in members)))
