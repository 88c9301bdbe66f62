"""The model's one traced graph: which convs are prunable, and what each node is.

``ModelGraph`` traces the model once (``method.tracer``, a BatchNorm subclass's ops spelled
out; a module fx cannot trace into recorded whole) and answers both questions the library asks
of a model. Without an input its structure alone gives the conv → BatchNorm pairs and which
pair feeds which depthwise conv channel-wise. Given an input shape it records every node's
shape and MACs on a forward of zeros (once) and classifies each node by its rule (``rules``):
what the compactor and the per-epoch cost walk. A node no rule takes, or whose conversion has
no exact form, is *opaque*: kept whole (``kept``), with the convs that feed it — the prunable
convs are the pairs that feed no opaque node, so selection and compaction agree.
"""
import torch
from torch import fx, nn
from torch.fx.node import map_aggregate
from torch.fx.passes.shape_prop import _extract_tensor_metadata
from torch.utils.flop_counter import FlopCounterMode

from ..errors import UserError
from ..method.graph import PrunableConv, select_convs, unwrap
from ..method.tracer import is_batchnorm, trace_model
from . import kept as keeping
from .converter import unconverted
from .inputs import declared_input_shape
from .nodes import Op, example_input, is_constant, reads_shape_only, shape_of
from .rules import channelwise_node, claimants, classify, owner
from .rules.batchnorm import has_statistics
from .rules.convolution import understood_padding


def trace(model: nn.Module) -> tuple[fx.GraphModule, dict]:
    """fx graph of ``model``'s eval-mode forward, a BatchNorm subclass's ops spelled out
    (``method.tracer``), and the modules recorded whole ({name: why}); the model is left in
    its mode."""
    try:
        return trace_model(model)
    except Exception as e:  # fx raises many types: data-dependent control flow, unsupported calls
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot trace a {type(model).__name__} with torch.fx ({first}); FSDP "
                        "needs a model whose forward has no data-dependent control flow") from e


class _Shapes(fx.Interpreter):
    """Every node's output shape (``tensor_meta``, as ShapeProp records it) and the MACs it
    computes (``macs``, torch's FLOP counter ÷ 2) — quietly: ShapeProp prints a traceback
    before it raises, and the caller says what failed in one line."""

    def __init__(self, gm: fx.GraphModule, counter: FlopCounterMode):
        super().__init__(gm)
        self.counter = counter

    def run_node(self, n: fx.Node):
        before = self.counter.get_total_flops()
        result = super().run_node(n)
        n.meta["macs"] = (self.counter.get_total_flops() - before) // 2
        found = []

        def meta(v):
            if isinstance(v, torch.Tensor):
                found.append(v)
                return _extract_tensor_metadata(v)
            return v

        value = map_aggregate(result, meta)
        if found:
            n.meta["tensor_meta"] = value
        else:
            n.meta.pop("tensor_meta", None)
        return result


@torch.no_grad()
def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Record every node's output shape (``nodes.shape_of``) and MACs for one forward of
    ``example``."""
    try:
        with FlopCounterMode(display=False) as counter:
            _Shapes(gm, counter).run(example)
    except Exception as e:
        raise UserError(f"the model does not run on a {tuple(example.shape)} input "
                        f"({(str(e).strip() or type(e).__name__).splitlines()[0][:160]}); "
                        "pass the input size it was trained with") from e


class ModelGraph:
    """One trace of a model: its conv → BatchNorm pairs at once, every node's shape and op
    once an input shape is known (``with_shapes``). The graph holds the model's modules, not
    copies: conversions and costs read the weights as they are when they run."""

    def __init__(self, model: nn.Module, input_shape=None):
        self.model = unwrap(model)
        self.gm, self.leaves = trace(self.model)
        # the model's own modules: a traced-into BatchNorm subclass is not one of the graph's
        self.modules = dict(self.model.named_modules())
        self.pairs = self._bn_pairs()  # {conv fx node: its BN fx node}, in the BNs' order
        self.folded = set(self.pairs.values())
        self.input_shape = self.ops = self.position = None
        self.op_of: dict = {}
        self._held: dict = {}
        # opaque nodes ({fx node: why}) and the convs feeding them ({conv name: node}): from
        # the structure alone until the shapes classify every node
        self.opaque = {n: keeping.why(n, self.modules, self.leaves) for n in self.gm.graph.nodes
                       if n.op == "call_module" and (n.target in self.leaves or
                                                     not claimants(n, self.modules))}
        self.kept = keeping.kept_convs(self, self.opaque)
        self._fresh = True
        if input_shape is not None:
            self.with_shapes(input_shape)
        self._fresh = False

    # -- structure: no shapes needed ---------------------------------------------------------
    def _is_bn(self, node: fx.Node) -> bool:
        """A BatchNorm that folds into a conv: one fx traced (or recorded, torch's own), with
        running statistics."""
        if node.op == "call_module":
            m = self.modules.get(node.target)
            return node.target not in self.leaves and is_batchnorm(m) and has_statistics(m)
        return node.op == "call_function" and owner(node, self.modules) is not None and \
            is_batchnorm(owner(node, self.modules)[1])

    def _is_conv(self, node: fx.Node) -> bool:
        """A conv the compactor understands (not one fx could not trace into: TF's "same"
        padding computed from the input size)."""
        m = self.modules.get(node.target) if node.op == "call_module" else None
        return isinstance(m, nn.Conv2d) and node.target not in self.leaves and \
            understood_padding(m)

    def _bn_pairs(self) -> dict:
        """A conv whose output only a BatchNorm reads (shape reads aside): its BN folds into
        it, and its filters are what FSDP prunes."""
        pairs, calls = {}, {}
        for node in self.gm.graph.nodes:
            if node.op == "call_module" and isinstance(self.modules[node.target], nn.Conv2d):
                calls[node.target] = calls.get(node.target, 0) + 1
            if not self._is_bn(node) or not isinstance(node.args[0], fx.Node):
                continue
            conv = node.args[0]
            readers = [u for u in conv.users if not reads_shape_only(u)]
            if self._is_conv(conv) and readers == [node]:
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
            if not node.args or node in self.opaque or \
                    not channelwise_node(node, self.modules):
                return None
            node = node.args[0]
        return None

    def prunable(self) -> set:
        """The names of the convs a mask may prune (the compact network drops any pair's
        filters exactly; selection leaves those that feed a part kept whole)."""
        return {conv.target for conv in self.pairs}

    def prunable_convs(self, include: str | None = None, exclude: str | None = None,
                       layer_begin: int = 0, layer_end: int | None = None,
                       layer_inter: int | None = None) -> list[PrunableConv]:
        """The prunable convs in forward order — the pairs that feed no part kept whole —
        selected as ``method.graph.select_convs`` says (module-name regexes, the reference's
        parameter-index window). Without shapes, at the input the model declares, if any."""
        self._shape_as_declared()
        conv_of_bn = {bn: conv.target for conv, bn in self.pairs.items()}
        pairs = {conv.target: self._bn_name(bn) for conv, bn in self.pairs.items()
                 if conv.target not in self.kept}
        sources = {conv.target: self._source(conv, conv_of_bn) for conv in self.pairs}
        return select_convs(self.model, pairs, sources, include, exclude, layer_begin,
                            layer_end, layer_inter)

    def _shape_as_declared(self) -> None:
        """Shapes at the model's declared input, when the structure holds a node no rule claims
        (what else is kept whole depends on the shapes) and the model declares an input, has
        real tensors and runs at it (a torchvision ResNet given a 1-channel stem declares 3
        channels); else the structure alone says. A network every node of which some rule
        claims is not run: whatever its shapes, the compact network drops every pruned filter
        exactly, so selection only follows what is kept whole where something may be."""
        if self.input_shape is not None or not self._unclaimed():
            return
        p = next(self.model.parameters(), None)
        declared = declared_input_shape(self.model)
        if declared is not None and p is not None and p.device.type != "meta":
            try:
                self.with_shapes(declared)
            except UserError:
                pass

    def _unclaimed(self) -> bool:
        """Does the structure hold a node no rule claims (sizes and their arithmetic aside)?"""
        for node in self.gm.graph.nodes:
            if node.op == "call_module" and (node.target in self.leaves or
                                             not claimants(node, self.modules)):
                return True
            if node.op in ("call_function", "call_method") and \
                    not claimants(node, self.modules) and not reads_shape_only(node) and \
                    getattr(node.target, "__module__", None) not in ("_operator", "math"):
                return True
        return False

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
        self._mark_constants()
        self.opaque = {}
        self.ops = [self._classify(node) for node in self.gm.graph.nodes]
        self._index()
        self.kept = keeping.kept_convs(self, self.opaque)
        while found := unconverted(self):  # conversions with no exact form: kept whole too
            self.keep_whole(found)
        return self

    def _mark_constants(self) -> None:
        """Mark the tensors computed from the parameters alone (``nodes.is_constant``)."""
        reads_input = {}
        for node in self.gm.graph.nodes:
            reads_input[node] = node.op == "placeholder" or any(
                reads_input[a] for a in node.all_input_nodes)
            node.meta["constant"] = not reads_input[node] and node.op != "output" and \
                shape_of(node) is not None

    def _classify(self, node: fx.Node) -> Op:
        """The node's Op; a node no rule takes, or that reads a tensor of the parameters its
        rule cannot take, is opaque (``kept``)."""
        if node.op == "call_module" and node.target in self.leaves:
            return self._opaque(node)
        if is_constant(node):
            return Op("constant", node)
        try:
            op = classify(node, self.modules)
        except UserError:
            return self._opaque(node)
        if any(is_constant(x) for x in op.inputs):
            return self._opaque(node)
        return op

    def _opaque(self, node: fx.Node) -> Op:
        self.opaque[node] = keeping.why(node, self.modules, self.leaves)
        return Op("opaque", node)

    def _index(self) -> None:
        self.op_of = {op.node: op for op in self.ops}
        self.position = {op.node: i for i, op in enumerate(self.ops)}
        self._held = {}
        for op in self.ops:  # what an opaque node reads: its piece's inputs, at full width
            if op.kind == "opaque":
                op.inputs = self.held(op.node).inputs

    def keep_whole(self, found: dict) -> None:
        """Make the nodes ``found`` ({fx node: why}) opaque — their conversion has no exact
        form — and what is kept whole follow; a pair one of them belongs to is no pair."""
        for node, why in found.items():
            self.opaque[node] = why
            self.ops[self.position[node]] = Op("opaque", node)
            bn = self.pairs.pop(node, None)
            conv = next((c for c, b in self.pairs.items() if b is node), None)
            if conv is not None:
                bn = self.pairs.pop(conv)
            self.folded.discard(bn)
        self._index()
        self.kept = keeping.kept_convs(self, self.opaque)

    def held(self, node: fx.Node) -> keeping.Held:
        """The piece of the dense graph that computes an opaque node (built once)."""
        if node not in self._held:
            self._held[node] = keeping.held_piece(self, node)
        return self._held[node]

    @torch.no_grad()
    def constant_value(self, node: fx.Node) -> torch.Tensor:
        """A tensor of the parameters alone (``nodes.is_constant``), computed from the model's
        tensors as they are now."""
        values = {}

        def run(n):
            if n not in values:
                args = fx.node.map_arg(n.args, run)
                kwargs = fx.node.map_arg(n.kwargs, run)
                if n.op == "get_attr":
                    values[n] = keeping.fetch(self.model, n.target)
                elif n.op == "call_function":
                    values[n] = n.target(*args, **kwargs)
                elif n.op == "call_method":
                    values[n] = getattr(args[0], n.target)(*args[1:], **kwargs)
                else:
                    values[n] = self.modules[n.target](*args, **kwargs)
            return values[n]

        return run(node)

    def constant_params(self, node: fx.Node, counted: set | None = None) -> int:
        """The learnable parameters a tensor of the parameters reads, each once: those not in
        ``counted`` (ids, which it then holds too: a parameter read twice counts once)."""
        counted = set() if counted is None else counted
        found, stack, seen = {}, [node], set()
        while stack:
            n = stack.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.op == "get_attr":
                value = keeping.fetch(self.model, n.target)
                if isinstance(value, nn.Parameter) and id(value) not in counted:
                    found[id(value)] = value.numel()
            stack.extend(n.all_input_nodes)
        counted.update(found)
        return sum(found.values())

    # -- what is kept whole ------------------------------------------------------------------
    def parts(self) -> list[dict]:
        """The parts kept whole: each module, the ops in it no rule takes, the convs feeding it."""
        return keeping.parts(self, self.opaque, self.kept)

    def kept_line(self) -> str | None:
        """One line naming what is kept whole and why (None: nothing)."""
        return keeping.kept_line(self.parts())

    def nothing_prunable(self) -> str:
        """Why no conv is prunable, in a line: no conv → BatchNorm pair, or every pair feeds a
        part kept whole."""
        name = type(self.model).__name__
        if not self.pairs:
            return f"this {name} has no Conv2d whose output goes only to a BatchNorm2d"
        return (f"every conv → BatchNorm pair of this {name} feeds a part the compactor keeps "
                f"whole ({keeping.describe(self.parts())})")

    def check_compactable(self, convs=None) -> None:
        """What compacting at this graph's shape would refuse, raised now (shapes needed):
        nothing left to prune, or one of ``convs`` (those selected for pruning) feeding a part
        kept whole at this size — selection read a graph of another input size."""
        if not self.prunable_convs():
            raise UserError(f"cannot compact: nothing is left to prune: {self.nothing_prunable()}")
        clash = [c.name for c in convs or () if c.name in self.kept]
        if clash:
            more = f" and {len(clash) - 1} more" if len(clash) > 1 else ""
            raise UserError(f"cannot compact: conv '{clash[0]}'{more} would be pruned but feeds a "
                            f"part kept whole at a {self.input_shape} input; give the input "
                            "size you train at (input_shape=) so that selection reads that graph")


def as_graph(model, input_shape) -> ModelGraph:
    """``model``'s graph with shapes at ``input_shape`` (None: as traced, or as the graph given
    has them): a ``ModelGraph`` given is reused."""
    if isinstance(model, ModelGraph):
        return model if input_shape is None else model.with_shapes(input_shape)
    return ModelGraph(model, input_shape)


def find_prunable_convs(model: nn.Module, include: str | None = None, exclude: str | None = None,
                        layer_begin: int = 0, layer_end: int | None = None,
                        layer_inter: int | None = None, input_shape=None) -> list[PrunableConv]:
    """The convs FSDP prunes (each conv whose output only a BatchNorm reads, and that feeds no
    part the compactor keeps whole), in forward order, filtered by module-name regexes and by
    the reference's parameter-index window (``layer_begin ≤ index ≤ layer_end``, every
    ``layer_inter``-th). ``input_shape`` (C, H, W): the size the model runs at (default: the
    one it declares; without either, only what the structure shows is kept whole). ``model``
    may be its ``ModelGraph``, reused (traced once for several selections). A model fx cannot
    trace is refused in one line."""
    return as_graph(model, input_shape).prunable_convs(include, exclude, layer_begin,
                                                       layer_end, layer_inter)
