"""The model's one traced graph: which convs are prunable, and what each node is.

``ModelGraph`` traces the model once (``method.tracer``, a BatchNorm subclass's ops spelled
out) and answers both questions the library asks of a model. Without an input its structure
alone gives the conv → BatchNorm pairs (the convs FSDP prunes, ``prunable_convs``) and which
pair feeds which depthwise conv channel-wise. Given an input shape it records every node's
shape on a forward of zeros (once) and classifies each node by its rule (``rules``): what
the compactor and the per-epoch cost walk, and the first op no rule takes (``refusal``: an
opaque node to the cost, the one-line refusal of the compact network).
"""
import collections

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UserError
from ..method.graph import PrunableConv, select_convs, unwrap
from ..method.tracer import is_batchnorm, trace_model
from .nodes import Op, example_input, reads_shape_only, shape_of
from .rules import channelwise_node, classify, owner


def trace(model: nn.Module) -> fx.GraphModule:
    """fx graph of ``model``'s eval-mode forward, a BatchNorm subclass's ops spelled out
    (``method.tracer``); the model is left in its mode."""
    try:
        return trace_model(model)
    except Exception as e:  # fx raises many types: data-dependent control flow, unsupported calls
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot trace a {type(model).__name__} with torch.fx ({first}); FSDP "
                        "needs a model whose forward has no data-dependent control flow") from e


@torch.no_grad()
def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Record every node's output shape (``nodes.shape_of``) for one forward of ``example``."""
    try:
        ShapeProp(gm).propagate(example)
    except Exception as e:
        raise UserError(f"the model does not run on a {tuple(example.shape)} input "
                        f"({str(e).strip().splitlines()[0][:160]}); pass the input size it "
                        "was trained with") from e


class ModelGraph:
    """One trace of a model: its conv → BatchNorm pairs at once, every node's shape and op
    once an input shape is known (``with_shapes``). The graph holds the model's modules, not
    copies: conversions and costs read the weights as they are when they run."""

    def __init__(self, model: nn.Module, input_shape=None):
        self.model = unwrap(model)
        self.gm = trace(self.model)
        # the model's own modules: a traced-into BatchNorm subclass is not one of the graph's
        self.modules = dict(self.model.named_modules())
        self.pairs = self._bn_pairs()  # {conv fx node: its BN fx node}, in the BNs' order
        self.folded = set(self.pairs.values())
        self.input_shape = self.ops = self.op_of = self.position = self.refusal = None
        self._fresh = True
        if input_shape is not None:
            self.with_shapes(input_shape)
        self._fresh = False

    # -- structure: no shapes needed ---------------------------------------------------------
    def _is_bn(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return is_batchnorm(self.modules.get(node.target))
        return node.op == "call_function" and owner(node, self.modules) is not None and \
            is_batchnorm(owner(node, self.modules)[1])

    def _bn_pairs(self) -> dict:
        """A conv whose output only a BatchNorm reads (shape reads aside): its BN folds into
        it, and its filters are what FSDP prunes."""
        pairs, calls = {}, collections.Counter()
        for node in self.gm.graph.nodes:
            if node.op == "call_module" and isinstance(self.modules[node.target], nn.Conv2d):
                calls[node.target] += 1
            if not self._is_bn(node) or not isinstance(node.args[0], fx.Node):
                continue
            conv = node.args[0]
            readers = [u for u in conv.users if not reads_shape_only(u)]
            if conv.op == "call_module" and isinstance(self.modules.get(conv.target), nn.Conv2d) \
                    and readers == [node]:
                pairs[conv] = node
        shared = [conv.target for conv in pairs if calls[conv.target] > 1]
        if shared:
            raise UserError(f"cannot compact: conv '{shared[0]}' is called more than once")
        return pairs

    def _bn_name(self, bn: fx.Node) -> str:
        return bn.target if bn.op == "call_module" else owner(bn, self.modules)[0]

    def _source(self, conv: fx.Node, conv_of_bn: dict) -> str | None:
        """The prunable conv whose BatchNorm output reaches ``conv`` through channel-wise ops
        only (its channel c is that conv's filter c), or None."""
        node = conv.args[0]
        while isinstance(node, fx.Node):
            if node in conv_of_bn:
                return conv_of_bn[node]
            if not node.args or not channelwise_node(node, self.modules):
                return None
            node = node.args[0]
        return None

    def prunable(self) -> set:
        """The names of the convs a mask may prune."""
        return {conv.target for conv in self.pairs}

    def prunable_convs(self, include: str | None = None, exclude: str | None = None,
                       layer_begin: int = 0, layer_end: int | None = None,
                       layer_inter: int | None = None) -> list[PrunableConv]:
        """The prunable convs in forward order, selected as ``method.graph.select_convs``
        says (module-name regexes, the reference's parameter-index window)."""
        conv_of_bn = {bn: conv.target for conv, bn in self.pairs.items()}
        pairs = {conv.target: self._bn_name(bn) for conv, bn in self.pairs.items()}
        sources = {conv.target: self._source(conv, conv_of_bn) for conv in self.pairs}
        return select_convs(self.model, pairs, sources, include, exclude, layer_begin,
                            layer_end, layer_inter)

    # -- shapes and ops: at one input size -----------------------------------------------------
    def with_shapes(self, input_shape) -> "ModelGraph":
        """This graph with every node's shape and op at ``input_shape`` ((C, H, W)); a graph
        already shaped at another size is left as it is, and a new one (a new trace) returned."""
        shape = tuple(int(s) for s in input_shape)[-3:]
        if self.input_shape is not None:
            return self if shape == self.input_shape else ModelGraph(self.model, shape)
        # the model's tensors as they are now (moved or cast since the trace: ``.to`` gives a
        # module new buffers), in the traced graph
        gm = self.gm if self._fresh else fx.GraphModule(self.model, self.gm.graph)
        was = self.model.training
        self.model.eval()  # BN in training mode would update its statistics
        try:
            propagate_shapes(gm, example_input(self.model, shape))
        finally:
            self.model.train(was)
        self.input_shape = shape
        self.ops = [self._classify(node) for node in self.gm.graph.nodes]
        self.op_of = {op.node: op for op in self.ops}
        self.position = {op.node: i for i, op in enumerate(self.ops)}
        return self

    def _classify(self, node: fx.Node) -> Op:
        """The node's Op; a node no rule takes is opaque (its inputs read at full width), and
        the first such refusal is kept for the compact network."""
        try:
            return classify(node, self.modules)
        except UserError as e:
            if self.refusal is None:
                self.refusal = e
            return Op("opaque", node, [a for a in node.all_input_nodes
                                       if shape_of(a) is not None])

    def check_compactable(self) -> None:
        """Raise the refusal of the first node no rule takes, if any (shapes needed)."""
        if self.refusal is not None:
            raise self.refusal


def as_graph(model, input_shape) -> ModelGraph:
    """``model``'s graph with shapes at ``input_shape``: a ``ModelGraph`` given is reused."""
    if isinstance(model, ModelGraph):
        return model.with_shapes(input_shape)
    return ModelGraph(model, input_shape)


def find_prunable_convs(model: nn.Module, include: str | None = None, exclude: str | None = None,
                        layer_begin: int = 0, layer_end: int | None = None,
                        layer_inter: int | None = None) -> list[PrunableConv]:
    """The convs FSDP prunes (each conv whose output only a BatchNorm reads), in forward
    order, filtered by module-name regexes and by the reference's parameter-index window
    (``layer_begin ≤ index ≤ layer_end``, every ``layer_inter``-th). A model fx cannot trace
    is refused in one line."""
    return ModelGraph(model).prunable_convs(include, exclude, layer_begin, layer_end,
                                            layer_inter)
