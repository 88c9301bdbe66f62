"""``Rule``: everything the compactor knows of one kind of op, in one object.

A rule says which fx nodes are of its kind (the modules, functions and methods it claims, then
``classify`` with the node's shapes), which channels of its inputs it needs given the
channels its output must provide (``needs``: the liveness pass), what the compact graph makes
of it (``convert``, or ``full_width_attrs`` when it runs at full width) and what the compact
nodes it emits cost (``cost``). ``channelwise`` is the one table of ops whose output channel c
depends on input channel c alone: discovery follows it to a depthwise conv's producer
(``tracing``), the liveness pass passes a channel's need through it.
"""
import torch

from ..nodes import Op, refuse, shape_of


class Rule:
    """One kind of op; subclasses set the class attributes and override what differs, and are
    registered with ``@register_rule`` (``rules.registry``)."""
    kind: str = ""
    modules: tuple = ()          # module types (and their subclasses) it claims
    functions: tuple = ()        # call_function targets it claims
    function_names: tuple = ()   # … and those known by name only (fx-wrapped functions)
    methods: tuple = ()          # tensor methods it claims
    node_ops: tuple = ()         # fx node ops it claims ("placeholder", "output", "get_attr")
    own_calls: dict = {}         # function -> (argument names, the module's tensors among
    #                              them): the module's own op, as a traced-into subclass calls it
    shapeless = False            # its nodes produce no tensor (and are still its own)
    channelwise = False          # output channel c depends on input channel c alone
    keeps_views = False          # may pass a regrouped channel view on (reshapes, identities)
    full_width = False           # can compute as the dense network does (``fullwidth``)
    always_full_width = False    # … and always does (reductions across channel groups)
    any_rank = False             # reads a value of any rank (``state.Full``) itself
    live_without_readers = False  # needs channels even when nothing reads its own output
    opaque_when_refused = True   # counted as an opaque op when its conversion refuses (costs)
    emits: tuple = ()            # the compact node ops whose cost ``cost`` gives

    def classify(self, node, modules: dict) -> Op | None:
        """The node's Op, None when another claimant should have it, or raise ``refuse``."""
        return Op(self.kind, node, [node.args[0]])

    def passes_channels(self, node, modules: dict) -> bool:
        """From the node alone (no shapes): is it channel-wise, its first argument its input?
        Discovery walks back through such nodes to the BatchNorm a conv reads."""
        return self.channelwise

    def reads_through_expand(self, node) -> bool:
        """Does ``node`` (claimed by this rule) read ``y.expand_as(x)`` as ``y`` itself?"""
        return False

    def needs(self, op: Op, out: torch.Tensor, live) -> None:
        """Mark (``live.add``) the channels of ``op.inputs`` it reads to provide the channels
        ``out`` of its output. Channel-wise: the same ones; otherwise every channel."""
        if self.channelwise:
            x = op.inputs[0]
            live.add(x, out if same_width(x, out) else live.full(x))
        elif bool(out.any()):
            for x in op.inputs:
                live.add(x, live.full(x))

    def convert(self, cv, op: Op):
        """The state (``state``) of ``op``'s output in the compact graph, built with the
        converter ``cv``; None when the op leaves no value of its own."""
        raise refuse(op.node, cv.modules)

    def full_width_attrs(self, cv, op: Op) -> dict:
        """The ``TensorOp`` attributes that compute ``op`` as the dense network does."""
        raise refuse(op.node, cv.modules, " (on a regrouped view of the channels)")

    def cost(self, node: dict, hw: int | None) -> tuple[int, int]:
        """(MACs, parameters) of a compact node this rule emits (``emits``)."""
        return 0, 0

    def __repr__(self) -> str:
        return f"<rule {self.kind}>"


def same_width(x, out: torch.Tensor) -> bool:
    shape = shape_of(x)
    return len(shape) > 1 and shape[1] == len(out)


def bias64(layer, n: int) -> torch.Tensor:
    """A conv's or linear layer's bias in float64 (zeros when it has none)."""
    if layer.bias is None:
        return torch.zeros(n, dtype=torch.float64)
    return layer.bias.detach().double().cpu()
