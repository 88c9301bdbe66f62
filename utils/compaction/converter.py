"""The graph walk: the model's graph (``tracing.ModelGraph``) → the compact graph (``Builder``).

``convert`` walks the graph for one set of pruned filters, each op by its rule (``rules``).
The same walk builds the compact network (``exact``: the constants carried, ``check``: the
pruned filters verified zero, ``strict``: a conversion's error refused) and counts what it
costs at any point of training (``utils.compaction.cost``: the selected filters taken as
pruned, whatever cannot convert counted as an opaque op). An op whose conversion has no exact
form (``nodes.Unsupported``, or a rule that fails on what it was given) is kept whole instead:
the graph learns it (``ModelGraph.keep_whole``) and the walk runs again.
"""
import collections

import torch
from torch import fx

from . import fullwidth
from ..errors import UserError
from .builder import Builder
from .liveness import channels_needed
from .nodes import Op, Unsupported, op_name
from .rules import REGISTRY
from .state import ChannelView, Full

# the ways the walk carries a constant or saves work (``Converter.note``; the tests check that
# every one fires on some network)
RULES = ("constant into a bias", "border map", "map through a conv", "constant map channel",
         "depthwise conv", "grouped conv", "grouped input gathered", "filler filters",
         "unneeded filters skipped", "residual add of narrow tensors",
         "constant times an excitation", "scaled into a per-sample bias", "product of tensors",
         "concatenation", "channel split", "channel shuffle", "padded average of a constant",
         "BatchNorm on its own", "constant features into a linear bias",
         "computed at full width")
OPAQUE = REGISTRY["opaque"]


class Converter:
    """One walk of a ModelGraph; ``states`` maps each fx node to how the compact graph
    holds it (``state.T``, a ``ChannelView``, or a tuple of them for a split)."""

    def __init__(self, graph, pruned: dict, exact: bool, check: bool, emit: bool = True,
                 strict: bool = True):
        """``graph``: a ``tracing.ModelGraph`` with its shapes."""
        self.graph, self.modules, self.pairs = graph, graph.modules, graph.pairs
        self.exact, self.check, self.emit = exact, check, emit  # emit: the tensors are used
        self.strict = strict  # refuse a conversion's error (else: count the op as opaque)
        self.held: dict = {}  # held data node -> the ``kept.Held`` piece it runs
        self.fell_back: dict = {}  # fx node -> why: conversions with no exact form
        self.params_counted: set = set()  # ids of the parameters a node counts already
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
        """``op``'s state from its rule: at full width when it must, else its conversion; kept
        whole when it has no exact form."""
        rule = REGISTRY[op.kind]
        try:
            self._check_readable(op, rule)
            if fullwidth.takes(self, op, rule):
                return fullwidth.compute(self, op, rule.full_width_attrs(self, op))
            state = rule.convert(self, op)
            if isinstance(state, ChannelView) and not rule.keeps_views:
                raise Unsupported(f"fx node {op.node.name} uses a regrouped channel view other "
                                  "than to reshape it back")
            return state
        except Exception as e:
            if not rule.opaque_when_refused:
                raise
            if isinstance(e, UserError) and not isinstance(e, Unsupported):
                if self.strict:  # the user's to fix (filters not zero, BN without statistics)
                    raise
            else:  # no exact form: kept whole from now on (``convert``)
                self.fell_back[op.node] = op_name(op.node, self.modules)
            return OPAQUE.convert(self, Op("opaque", op.node))

    def _check_readable(self, op, rule) -> None:
        """Every input has a value this rule can read: a regrouped view only for rules that
        take one, a tensor of another rank than 2 or 4 only for those that compute at full
        width; a rule that takes any value (``any_rank``: it reads them as the dense network
        holds them) any."""
        for node in op.inputs:
            if node not in self.states:
                raise Unsupported(f"fx node {node.name} has no value in the compact graph")
            s = self.states[node]
            if rule.any_rank:
                continue
            if isinstance(s, ChannelView) and not (rule.keeps_views or rule.full_width):
                raise Unsupported(f"fx node {node.name} is a regrouped channel view")
            if isinstance(s, Full) and len(s.shape) not in (2, 4) and not rule.full_width:
                raise Unsupported(f"fx node {node.name} has rank {len(s.shape)}")

    def run(self) -> "Converter":
        self._ops = self.graph.op_of
        for op in self.graph.ops:
            node = op.node
            state = self.fused[node] if node in self.fused else self._convert(op)
            if state is not None:
                self.states[node] = state
        return self


def _pruned_masks(graph, pruned: dict) -> dict:
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


def convert(graph, pruned: dict, exact: bool = True, check: bool = True, emit: bool = True,
            strict: bool = True) -> Converter:
    """``check``: the pruned filters must be zero; ``emit``: build the tensors too (not only
    the structure and what it costs); ``strict``: refuse a conversion's error (else count the
    op as opaque). ``graph``: a ``tracing.ModelGraph`` with its shapes. An op found to have no
    exact form is kept whole by the graph, and the walk runs again."""
    pruned = {str(k): v for k, v in pruned.items()}
    while True:
        cv = Converter(graph, pruned, exact, check, emit, strict).run()
        if not cv.fell_back:
            return cv
        graph.keep_whole(cv.fell_back)


def unconverted(graph) -> dict:
    """{fx node: why} of the ops whose conversion has no exact form: one walk with nothing
    pruned, counting only (the graph keeps them whole before anything is selected)."""
    return Converter(graph, {}, exact=True, check=False, emit=False, strict=False).run().fell_back
