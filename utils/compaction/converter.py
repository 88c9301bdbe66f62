"""The graph walk: the dense network's fx graph → the compact graph (``Builder``).

``DenseGraph`` traces the model once and records its shapes; ``convert`` walks it for one
set of pruned filters. The same walk builds the compact network (``exact``: the constants
carried, ``check``: the pruned filters verified zero) and counts what it costs at any point
of training (``utils.compaction.cost``: the selected filters taken as pruned).
"""
import collections

import torch
from torch import fx, nn

from . import convs, fullwidth, ops, structure
from ..errors import UserError
from ..method.graph import unwrap
from .builder import Builder
from .liveness import channels_needed
from .materialise import realise
from .state import ChannelView, Full, Ref, T
from .tracing import Op, classify, propagate_shapes, shape_of, trace

# the rules of the walk (``Converter.note``): each way a constant is carried or work is saved
RULES = ("constant into a bias", "border map", "map through a conv", "constant map channel",
         "depthwise conv", "grouped conv", "grouped input gathered", "filler filters",
         "unneeded filters skipped", "residual add of narrow tensors",
         "constant times an excitation", "scaled into a per-sample bias", "product of tensors",
         "concatenation", "channel split", "channel shuffle", "padded average of a constant",
         "BatchNorm on its own", "constant features into a linear bias",
         "computed at full width")

HANDLERS = {"conv": convs.convert_conv, "linear": convs.convert_linear, "bn": convs.convert_bn,
            "act": ops.convert_act, "add": ops.convert_add, "mul": ops.convert_mul,
            "cat": structure.convert_cat, "split": structure.convert_split,
            "slice": structure.convert_slice, "pool": structure.convert_pool,
            "flatten": structure.convert_flatten, "reshape": structure.convert_reshape,
            "zeros": structure.convert_zeros, "conv1d": fullwidth.convert_conv1d}


def example_input(model: nn.Module, input_shape) -> torch.Tensor:
    """Zeros of ``input_shape`` ((C, H, W) or (N, C, H, W)), batch 1, on the model's device."""
    shape = tuple(int(s) for s in input_shape)[-3:]
    p = next(model.parameters())
    return torch.zeros((1,) + shape, dtype=p.dtype, device=p.device)


class DenseGraph:
    """The traced model with every node's shape and op; reused for every conversion."""

    def __init__(self, model: nn.Module, input_shape, lenient: bool = False):
        """``lenient``: ops the compactor does not understand become opaque full-width
        nodes (enough to count a cost) instead of a refusal."""
        self.model = unwrap(model)
        self.input_shape = tuple(int(s) for s in input_shape)[-3:]
        self.lenient = lenient
        self.gm = trace(self.model)
        was = self.model.training
        self.model.eval()  # BN in training mode would update its statistics
        try:
            propagate_shapes(self.gm, example_input(self.model, input_shape))
        finally:
            self.model.train(was)
        # the model's own modules: a traced-into BatchNorm subclass is not one of the graph's
        self.modules = dict(self.model.named_modules())
        self.ops = [self._classify(node) for node in self.gm.graph.nodes]
        self.op_of = {op.node: op for op in self.ops}
        self.position = {op.node: i for i, op in enumerate(self.ops)}
        self.pairs = self._bn_pairs()

    def _classify(self, node: fx.Node) -> Op:
        try:
            return classify(node, self.modules)
        except UserError:
            if not self.lenient:
                raise
            return Op("opaque", node, [a for a in node.all_input_nodes
                                       if shape_of(a) is not None])

    def _bn_pairs(self) -> dict:
        """{conv fx node: its BN fx node}: a conv whose only consumer is a BatchNorm, the
        prunable convs of ``utils.method.graph`` (their BN folds into them)."""
        pairs, seen = {}, {}
        for op in self.ops:
            if op.kind == "conv":
                seen[op.module] = seen.get(op.module, 0) + 1
                # shape checks (a traced-into BatchNorm subclass asserts the input's rank)
                # read no values
                users = [u for u in op.node.users if self.op_of[u].kind != "meta"]
                if len(users) == 1 and self.op_of[users[0]].kind == "bn":
                    pairs[op.node] = users[0]
        shared = [n.target for n in pairs if seen[self.modules[n.target]] > 1]
        if shared:
            raise UserError(f"cannot compact: conv '{shared[0]}' is called more than once")
        return pairs

    def prunable(self) -> set:
        return {node.target for node in self.pairs}


class Converter:
    """One walk of a DenseGraph; ``states`` maps each fx node to how the compact graph
    holds it (``state.T``, a ``ChannelView``, or a tuple of them for a split)."""

    def __init__(self, graph: DenseGraph, pruned: dict, exact: bool, check: bool,
                 emit: bool = True):
        self.graph, self.modules, self.pairs = graph, graph.modules, graph.pairs
        self.exact, self.check, self.emit = exact, check, emit  # emit: the tensors are used
        self.masks = _pruned_masks(graph, pruned)
        self.need = channels_needed(graph.ops, self.masks)
        self.b = Builder()
        self.states: dict = {}
        self.fused: dict = {}  # relu nodes a residual add already applied
        self.realised: dict = {}
        self.input_node = "input"
        self.output = None
        self.used: collections.Counter = collections.Counter()  # which rules fired (tests)
        self.conv_output: dict = {}  # fx node (a conv, or the BN folded into it) -> its node

    def note(self, rule: str) -> None:
        assert rule in RULES, rule
        self.used[rule] += 1

    def state(self, node: fx.Node):
        s = self.states[node]
        # a full-width tensor back in (N, C, H, W) or (N, F): a tensor of computed channels
        return s.as_t() if isinstance(s, Full) and len(s.shape) in (2, 4) else s

    def pruned_mask(self, name: str, filters: int) -> torch.Tensor:
        return self.masks.get(name, torch.zeros(filters, dtype=torch.bool))

    def needed(self, node: fx.Node, width: int) -> torch.Tensor:
        return self.need.get(node, torch.zeros(width, dtype=torch.bool))

    def feeds_add(self, node: fx.Node) -> bool:
        """Does ``node``'s value reach a residual add (through identities) — which can take a
        pending map into its own term?"""
        for user in node.users:
            op = self._ops[user]
            if op.kind == "add" or (op.kind == "identity" and self.feeds_add(user)):
                return True
        return False

    def conv_to_extend(self, node: fx.Node, state) -> dict | None:
        """The conv node that computes ``state`` when ``node`` (a conv, or its folded BN) has
        no other reader: an activation on it can run inside that node."""
        name = self.conv_output.get(node)
        if name is None or name != state.node or len(node.users) != 1 or \
                state.pending is not None or state.scaled is not None:
            return None
        spec = self.b.node(name)
        return spec if spec["attrs"]["act"] is None else None

    def fusable_relu(self, node: fx.Node):
        """The ReLU that is the only consumer of ``node``, if any (fused into the join)."""
        users = list(node.users)
        if len(users) == 1:
            op = self._ops[users[0]]
            if op.kind == "act" and op.attrs["fn"] == "relu":
                return op
        return None

    def _convert(self, op):
        if op.kind == "opaque":
            return opaque(self, op)
        try:
            if fullwidth.takes(self, op):
                return fullwidth.convert(self, op)
            return HANDLERS[op.kind](self, op)
        except UserError:
            if not self.graph.lenient:
                raise
            return opaque(self, op)

    def run(self) -> "Converter":
        self._ops = self.graph.op_of
        for op in self.graph.ops:
            node = op.node
            if node in self.fused:
                self.states[node] = self.fused[node]
            elif op.kind == "input":
                width = shape_of(node)[1]
                self.states[node] = T(width, torch.arange(width), self.input_node,
                                      torch.zeros(width, dtype=torch.float64),
                                      Ref(self.input_node))
            elif op.kind == "output":
                self.output = structure.convert_output(self, self.state(op.inputs[0]))
            elif op.kind == "meta":
                continue
            elif op.kind == "identity":
                self.states[node] = self.state(op.inputs[0])
            elif op.kind == "item":
                self.states[node] = self.state(op.inputs[0])[op.attrs["index"]]
            elif op.kind == "setitem":  # changes its target in place: later readers see it
                self.states[op.inputs[0]] = structure.convert_setitem(self, op)
            elif op.kind == "bn" and any(node is bn for bn in self.pairs.values()):
                self.states[node] = self.state(op.inputs[0])  # folded into its conv
            else:
                self.states[node] = self._convert(op)
            if isinstance(self.states.get(node), ChannelView) and op.kind not in (
                    "reshape", "flatten", "identity"):
                raise UserError(f"cannot compact: fx node {node.name} uses a regrouped channel "
                                "view other than to reshape it back")
        return self


def opaque(cv, op):
    """An op only counted, not compacted: its inputs at full width, its output computed."""
    inputs = []
    for node in op.inputs:
        x = cv.state(node)
        x = x.base if isinstance(x, ChannelView) else x
        if isinstance(x, T):
            inputs.append(realise(cv, x, torch.arange(x.width)))
    module = cv.modules.get(op.node.target) if op.node.op == "call_module" else None
    params = sum(p.numel() for p in module.parameters()) if module is not None else 0
    node = cv.b.data("opaque", inputs, {"params": params})
    shape = shape_of(op.node)

    def full(s):
        width = s[1] if len(s) > 1 else 1
        return T(width, torch.arange(width), node, torch.zeros(width, dtype=torch.float64),
                 Ref(node), spatial=len(s) == 4)

    return tuple(full(s) for s in shape) if isinstance(shape, list) else full(shape)


def _pruned_masks(graph: DenseGraph, pruned: dict) -> dict:
    masks, prunable = {}, graph.prunable()
    unknown = sorted(str(k) for k in pruned if str(k) not in prunable)
    if unknown:
        raise UserError(f"pruned layers {unknown} are not prunable convs of this model; pass the "
                        "mask saved with this very architecture")
    for name, idx in pruned.items():
        m = graph.modules[str(name)]
        idx = torch.as_tensor(idx, dtype=torch.long).cpu().flatten().unique()
        if len(idx) and (idx.min() < 0 or idx.max() >= m.out_channels):
            raise UserError(f"pruned filters of {name} must lie in 0..{m.out_channels - 1}, got "
                            f"{idx.tolist()}; pass the mask of this very model")
        if len(idx) == m.out_channels:
            raise UserError(f"all {m.out_channels} filters of {name} are pruned; keep at least "
                            "one per layer (lower the pruning rate)")
        mask = torch.zeros(m.out_channels, dtype=torch.bool)
        mask[idx] = True
        masks[str(name)] = mask
    return masks


def convert(graph: DenseGraph, pruned: dict, exact: bool = True, check: bool = True,
            emit: bool = True) -> Converter:
    """``check``: the pruned filters must be zero; ``emit``: build the tensors too (not only
    the structure and what it costs)."""
    return Converter(graph, {str(k): v for k, v in pruned.items()}, exact, check, emit).run()
