"""What the compactor keeps whole: the parts of a network it has no rule for.

An op no rule takes — a matmul of an attention, a ``GroupNorm``, a module fx could not trace
into — is not a reason to refuse the network. The graph keeps it *opaque*: the compact network
runs it as the dense network does (``held``: the node's piece of the dense graph, over the
model's own modules), every channel that flows into it is computed (the convs feeding it are
kept whole: ``kept_convs``, so selection never prunes a filter that only an opaque part
reads), and every channel it produces is read at full width. ``parts`` and ``kept_line`` say
what was kept and why, in one line.
"""
import copy
import operator
from dataclasses import dataclass, field

import torch.nn.functional as F
from torch import fx, nn

from .nodes import op_name, shape_of

_IN_PLACE = {operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.setitem}
LISTED = 4  # parts named in the one line; the rest counted


@dataclass
class Held:
    """A node kept whole: the piece of the dense graph that computes it (``graph``: its inputs
    as placeholders, the sizes and parameters it reads recomputed inside), its MACs at the
    traced size and its parameters. ``module()`` builds it over a copy of the modules."""
    root: nn.Module
    graph: fx.Graph
    inputs: list          # the dense fx nodes its placeholders stand for
    macs: int
    params: int
    mutates: bool         # an in-place op: it gets copies of its inputs
    _module: nn.Module | None = field(default=None, repr=False)

    def module(self) -> nn.Module:
        if self._module is None:
            self._module = detached_copy(fx.GraphModule(self.root, self.graph))
        return self._module


def held_piece(graph, node: fx.Node) -> Held:
    """``node`` as a small graph of its own. Its tensor inputs the compact graph holds become
    placeholders; what it reads of them otherwise — sizes, and tensors of the parameters alone
    (``constant``), the expansions and tuples the compact graph holds no value of — is
    recomputed inside."""
    piece, env, inputs, copied = fx.Graph(), {}, [], []

    def copy_of(a: fx.Node) -> fx.Node:
        if a in env:
            return env[a]
        if _held_value(graph, a):
            env[a] = piece.placeholder(f"x{len(inputs)}")
            inputs.append(a)
        else:
            env[a] = piece.node_copy(a, copy_of)
            copied.append(a)
        return env[a]

    out = piece.node_copy(node, copy_of)
    piece.output(out)
    copied.append(node)
    macs = sum(int(n.meta.get("macs", 0)) for n in copied)
    return Held(graph.model, piece, inputs, macs, _params(graph, copied),
                _mutates(node, graph.modules))


def _held_value(graph, node: fx.Node) -> bool:
    """Does the compact graph hold a value of ``node`` (a tensor of the input, of a kind whose
    conversion gives one)?"""
    shape = shape_of(node)
    if shape is None or isinstance(shape, list) or node.op == "get_attr":
        return False
    op = graph.op_of.get(node)
    return op is not None and op.kind not in ("meta", "constant")


def _params(graph, nodes: list) -> int:
    """The parameters the piece runs (each once)."""
    found = {}
    for n in nodes:
        if n.op == "call_module":
            found.update((id(p), p) for p in graph.modules[n.target].parameters())
        elif n.op == "get_attr":
            value = fetch(graph.model, n.target)
            if isinstance(value, nn.Parameter):
                found[id(value)] = value
    return sum(p.numel() for p in found.values())


def _mutates(node: fx.Node, modules: dict) -> bool:
    if node.op == "call_module":
        return bool(getattr(modules[node.target], "inplace", False))
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.target in _IN_PLACE or (name.endswith("_") and not name.startswith("_")) or \
        bool(node.kwargs.get("inplace", False))


def fetch(model: nn.Module, target: str):
    value = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def detached_copy(module: nn.Module) -> nn.Module:
    """A deep copy without the hooks on its modules: a hook of the caller's (a pruner's
    start hook, say) would drag the caller's objects along."""
    memo = {}
    for m in module.modules():
        for key, value in vars(m).items():
            if "hooks" in key and isinstance(value, dict):
                memo[id(value)] = type(value)()
    return copy.deepcopy(module, memo)


# -- what is kept, and the one line that says so --------------------------------------------------

def kept_convs(graph, opaque: dict) -> dict:
    """{conv name: the opaque node it feeds}: the pairs whose BatchNorm output reaches an
    opaque node's input through ops that keep channels apart (activations, adds, pools,
    concatenations, …: not through another conv or linear layer, which mixes them)."""
    conv_of_bn = {bn: conv.target for conv, bn in graph.pairs.items()}
    kept = {}
    for node in opaque:
        stack, seen = list(node.all_input_nodes), set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n in conv_of_bn:
                kept.setdefault(conv_of_bn[n], node)
            elif n not in opaque and n.op not in ("placeholder", "get_attr") and \
                    not _mixes_channels(graph, n):
                stack.extend(n.all_input_nodes)
    return kept


def _mixes_channels(graph, node: fx.Node) -> bool:
    """A conv or a linear layer: each output channel reads many input channels."""
    if node.op == "call_module":
        return isinstance(graph.modules[node.target], (nn.Conv2d, nn.Conv1d, nn.Linear))
    return node.op == "call_function" and node.target in (F.linear, F.conv1d, F.conv2d)


def scope(node: fx.Node) -> str:
    """The module a node belongs to: a module call's own name, else the innermost module
    whose forward recorded it ('' for the model's own forward)."""
    if node.op == "call_module":
        return node.target
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def parts(graph, opaque: dict, kept: dict) -> list[dict]:
    """The parts kept whole, each a module (``part``), the ops of it that no rule takes
    (``ops``, why) and the convs feeding it (``convs``), in the graph's order."""
    found: dict = {}
    order = graph.position or {}
    for node, why in sorted(opaque.items(), key=lambda item: order.get(item[0], 0)):
        part = found.setdefault(scope(node), {"part": scope(node), "ops": [], "convs": []})
        if why not in part["ops"]:
            part["ops"].append(why)
    for conv, node in kept.items():
        found[scope(node)]["convs"].append(conv)
    return list(found.values())


def kept_line(found: list[dict]) -> str | None:
    """``kept whole: 3 convs feeding 'stages.3.attn' (matmul), 'head.bn' (BatchNorm1d)``."""
    return "kept whole: " + describe(found) if found else None


def describe(found: list[dict]) -> str:
    """The parts kept whole, in a line: ``3 convs feeding 'stages.3.attn' (matmul), …``."""
    words = []
    for p in found[:LISTED]:
        n = len(p["convs"])
        feeding = f"{n} conv{'s' if n != 1 else ''} feeding " if n else ""
        where = f"'{p['part']}'" if p["part"] else "the model's own forward"
        words.append(f"{feeding}{where} ({', '.join(p['ops'])})")
    if len(found) > LISTED:
        rest = found[LISTED:]
        convs = sum(len(p["convs"]) for p in rest)
        words.append(f"and {len(rest)} more part{'s' if len(rest) != 1 else ''} "
                     f"({convs} conv{'s' if convs != 1 else ''} feeding them)")
    return ", ".join(words)


def why(node: fx.Node, modules: dict, leaves: dict) -> str:
    """What a kept part is, in a word or two: the op's name; a module fx could not trace into
    says so."""
    if node.op == "call_module" and node.target in leaves:
        return f"{op_name(node, modules)}: fx cannot trace it"
    return op_name(node, modules)
