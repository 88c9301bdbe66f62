"""The fx tracer of the model's one graph (``utils.compaction.ModelGraph``): a BatchNorm
subclass is a BatchNorm.

torch.fx records a call to a module of ``torch.nn`` as one node and traces into every other
module. A BatchNorm subclass from outside ``torch.nn`` — timm's ``BatchNormAct2d``, which
applies its drop and activation after normalising, used by every ``ConvNormAct`` — is traced
into with its normalisation recorded as ``F.batch_norm`` over the module's own statistics and
affine parameters (eval mode: torch's own forward checks the input's rank in Python, which fx
cannot record), then whatever the subclass applies afterwards, each op as it is: discovery
pairs that ``F.batch_norm`` with its conv, the compactor folds it into the conv and compacts
the rest.

A module whose forward fx cannot record (shape-dependent control flow: TF "same" padding
computed from the input size, an attention that branches on its input's shape) is recorded
as one ``call_module`` node instead — traced *around*, its own nodes rolled back (``leaves``
names each with fx's reason): the compactor keeps such a module whole. Only a model whose
own forward fails is refused.
"""
import functools
import operator

import torch
import torch.nn.functional as F
from torch import fx, nn

BATCHNORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)
_TORCH_FORWARDS = (nn.BatchNorm2d.forward, nn.SyncBatchNorm.forward)


def is_batchnorm(m) -> bool:
    return isinstance(m, BATCHNORMS)


def adds_ops(bn: nn.Module) -> bool:
    """Does this BatchNorm compute more than the normalisation (a subclass's own forward)?"""
    return type(bn).forward not in _TORCH_FORWARDS


class _Proxy(fx.Proxy):
    """fx's proxy, which also records an assignment into a tensor: ``x[:, :c] += shortcut``
    (a partial in-place residual) becomes a slice, an add and an ``operator.setitem`` node."""

    def __setitem__(self, key, value):
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class BatchNormTracer(fx.Tracer):
    """torch's BatchNorms are one ``call_module`` node; a subclass that adds ops is traced
    into, its normalisation recorded as ``F.batch_norm``; assignments into tensors recorded."""

    def __init__(self):
        super().__init__()
        self._names: dict[int, str] | None = None
        self.leaves: dict[str, str] = {}  # module fx could not trace into -> fx's reason
        self._param_cache: dict | None = None

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def _name_of(self, t: torch.Tensor) -> str | None:
        """The qualified name of one of the root's parameters or buffers. fx searches them
        all at every access: quadratic, seconds for a network of a few hundred layers."""
        if self._names is None:
            self._names = {}
            for name, t_ in (*self.root.named_parameters(), *self.root.named_buffers()):
                self._names.setdefault(id(t_), name)
        return self._names.get(id(t))

    def create_arg(self, a):
        if isinstance(a, torch.Tensor) and self._name_of(a) is not None:
            return self.create_node("get_attr", self._name_of(a), (), {})
        return super().create_arg(a)

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        name = self._name_of(attr_val) if isinstance(attr_val, nn.Parameter) else None
        if name is None:
            return super().getattr(attr, attr_val, parameter_proxy_cache)
        self._param_cache = parameter_proxy_cache  # rolled back with a failed module
        if name not in parameter_proxy_cache:
            parameter_proxy_cache[name] = self.create_proxy("get_attr", name, (), {})
        return parameter_proxy_cache[name]

    @staticmethod
    def _traced_into(m: nn.Module) -> bool:
        return is_batchnorm(m) and adds_ops(m)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if is_batchnorm(m):
            return not self._traced_into(m)
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        name = self.path_of_module(m)
        if name == "" or self.is_leaf_module(m, name):
            return self._call(m, forward, args, kwargs)
        mark, stack = self.graph._root.prev, dict(self.module_stack)
        try:
            return self._call(m, forward, args, kwargs)
        except Exception as e:  # fx raises many types: control flow, unsupported calls
            self._roll_back(mark, stack)
            for inner in [k for k in self.leaves if k.startswith(name + ".")]:
                del self.leaves[inner]  # rolled back with it
            self.leaves[name] = _first_line(e)
            return self.create_proxy("call_module", name, args, kwargs)

    def _call(self, m, forward, args, kwargs):
        if not self._traced_into(m):
            return super().call_module(m, forward, args, kwargs)
        cls = m.__class__
        m.__class__ = _with_traceable_normalisation(cls)
        try:
            return super().call_module(m, forward, args, kwargs)
        finally:
            m.__class__ = cls

    def _roll_back(self, mark: fx.Node, stack: dict) -> None:
        """Erase the nodes a failed module's forward recorded after ``mark``, the parameter
        proxies among them, and the module scopes it left open."""
        created = []
        node = mark.next
        while node is not self.graph._root:
            created.append(node)
            node = node.next
        for node in reversed(created):
            self.graph.erase_node(node)
        gone = set(created)
        if self._param_cache is not None:
            for key in [k for k, p in self._param_cache.items() if p.node in gone]:
                del self._param_cache[key]
        self.module_stack.clear()
        self.module_stack.update(stack)


@functools.cache
def _with_traceable_normalisation(cls: type) -> type:
    """``cls`` with torch's BatchNorm forward, which its own forward may reach through
    ``super()`` (timm's ``SyncBatchNormAct``), replaced by the eval-mode ``F.batch_norm``:
    torch's forward checks the input's rank in Python, which fx cannot record."""
    base = nn.SyncBatchNorm if issubclass(cls, nn.SyncBatchNorm) else nn.BatchNorm2d

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                            False, 0.0, self.eps)

    plain = type(f"Traceable{base.__name__}", (base,), {"forward": forward})
    return type(cls.__name__, (cls, plain), {})


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:160] if text else type(e).__name__


def trace_model(model: nn.Module) -> tuple[fx.GraphModule, dict]:
    """The fx graph of ``model``'s eval-mode forward (stochastic depth, dropout and BN act as
    at inference), and the modules recorded whole because fx could not trace into them
    ({name: fx's reason}); every module is left in its mode. fx's own errors on the model's
    own forward propagate."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        tracer = BatchNormTracer()
        graph = tracer.trace(model)
    finally:
        for m, training in modes.items():
            m.training = training
    return fx.GraphModule(tracer.root, graph, type(model).__name__), dict(tracer.leaves)
