"""The dense network as an fx graph with shapes, and what each of its nodes does.

``trace`` records the forward of the model in eval mode (stochastic depth and dropout are
identities there, and the training-only branches of GoogLeNet and Inception are not taken);
``propagate_shapes`` runs it once on an example input so every node knows its output shape;
``classify`` names each node's operation in the compactor's terms, or refuses it in one line.
"""
import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from ..errors import UserError
from ..method.tracer import is_batchnorm, trace_model


def trace(model: nn.Module) -> fx.GraphModule:
    """fx graph of ``model``'s eval-mode forward, a BatchNorm subclass's ops spelled out
    (``method.tracer``); the model is left in its mode."""
    try:
        return trace_model(model, expand=True)
    except Exception as e:  # fx raises many types: data-dependent control flow, unsupported calls
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot trace a {type(model).__name__} with torch.fx ({first}); FSDP "
                        "needs a model whose forward has no data-dependent control flow") from e


def shape_of(node: fx.Node):
    """The output shape (torch.Size) of a tensor node, a list of them for a tuple of tensors,
    None for a node that produces no tensor (sizes, ints)."""
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return None
    if isinstance(meta, (tuple, list)) and not hasattr(meta, "shape"):
        shapes = [getattr(m, "shape", None) for m in meta]
        return shapes if all(s is not None for s in shapes) else None
    return meta.shape


@torch.no_grad()
def propagate_shapes(gm: fx.GraphModule, example: torch.Tensor) -> None:
    """Record every node's output shape (``shape_of``) for one forward of ``example``."""
    try:
        ShapeProp(gm).propagate(example)
    except Exception as e:
        raise UserError(f"the model does not run on a {tuple(example.shape)} input "
                        f"({str(e).strip().splitlines()[0][:160]}); pass the input size it "
                        "was trained with") from e


# -- activations: name -> (function, its keyword arguments read from the module) -------------
ACTIVATIONS = {
    nn.ReLU: ("relu", ()), nn.ReLU6: ("relu6", ()), nn.SiLU: ("silu", ()),
    nn.Hardswish: ("hardswish", ()), nn.Hardsigmoid: ("hardsigmoid", ()),
    nn.Sigmoid: ("sigmoid", ()), nn.Tanh: ("tanh", ()), nn.Mish: ("mish", ()),
    nn.GELU: ("gelu", ("approximate",)), nn.LeakyReLU: ("leaky_relu", ("negative_slope",)),
    nn.ELU: ("elu", ("alpha",)), nn.Hardtanh: ("hardtanh", ("min_val", "max_val")),
}
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6",
                  F.silu: "silu", F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid",
                  torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", torch.tanh: "tanh",
                  F.tanh: "tanh", F.gelu: "gelu", F.mish: "mish", F.leaky_relu: "leaky_relu",
                  F.elu: "elu", F.hardtanh: "hardtanh"}
_ACT_KWARGS = {"gelu": {"approximate": "none"}, "leaky_relu": {"negative_slope": 0.01},
               "elu": {"alpha": 1.0}, "hardtanh": {"min_val": -1.0, "max_val": 1.0}}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
                "tanh": "tanh", "tanh_": "tanh"}
_IDENTITY_MODULES = (nn.Identity, nn.Dropout, nn.Dropout2d, nn.AlphaDropout)
_IDENTITY_METHODS = {"contiguous", "clone", "detach"}


@dataclass
class Op:
    """One node of the dense graph in the compactor's terms."""
    kind: str
    node: fx.Node
    inputs: list = field(default_factory=list)  # the tensor nodes it reads
    attrs: dict = field(default_factory=dict)
    module: nn.Module | None = None


def _bind(node: fx.Node, names: tuple, defaults: dict) -> dict:
    """A call's arguments by name (positional ones first), defaults filled in."""
    values = dict(defaults)
    values.update(zip(names, node.args))
    values.update(node.kwargs)
    return values


def describe(node: fx.Node, modules: dict) -> str:
    """How a refusal names a node: the operation and the fx node."""
    if node.op == "call_module":
        kind = type(modules[node.target]).__name__
        return f"{kind} (module '{node.target}', fx node {node.name})"
    target = getattr(node.target, "__name__", str(node.target))
    kind = {"call_method": "method", "call_function": "function"}.get(node.op, node.op)
    return f"{kind} {target} (fx node {node.name})"


def refuse(node: fx.Node, modules: dict, why: str = "") -> UserError:
    return UserError(f"cannot compact: {describe(node, modules)} is not an operation the "
                     f"compactor understands{why}; see docs/compaction.md, 'Your own architecture'")


def classify(node: fx.Node, modules: dict) -> Op:
    """The node's Op, or a UserError naming the operation and the node."""
    if node.op == "placeholder":
        return Op("input", node)
    if node.op == "output":
        return Op("output", node, [node.args[0]])
    if node.op == "call_function" and node.target is operator.setitem:
        return _setitem(node, modules)
    if shape_of(node) is None:
        return Op("meta", node)  # sizes and integer arithmetic on them: read off the shapes
    if node.op == "call_module":
        return _classify_module(node, modules)
    if node.op == "call_function":
        return _classify_function(node, modules)
    if node.op == "call_method":
        return _classify_method(node, modules)
    if node.op == "get_attr" and all(_owner(u, modules) is not None for u in node.users):
        return Op("meta", node)  # a parameter of the module whose op reads it (``_owner``)
    raise refuse(node, modules, " (a parameter used outside its module)")


# functions a module subclass's traced forward calls on the module's own tensors (timm's
# ``BatchNormAct2d``, ``Linear``, ``PReLU``): (argument names, the module's tensors among them,
# its type)
_OWN_OPS = {
    F.batch_norm: (("input", "running_mean", "running_var", "weight", "bias", "training",
                    "momentum", "eps"), ("running_mean", "running_var", "weight", "bias"),
                   is_batchnorm),
    F.linear: (("input", "weight", "bias"), ("weight", "bias"),
               lambda m: isinstance(m, nn.Linear)),
    F.prelu: (("input", "weight"), ("weight",), lambda m: isinstance(m, nn.PReLU)),
}


def _owner(node: fx.Node, modules: dict):
    """The module whose own op ``node`` is — ``F.batch_norm`` (in eval mode), ``F.linear`` or
    ``F.prelu`` over that module's own tensors, as a traced-into subclass records it — or
    None."""
    if node.op != "call_function" or node.target not in _OWN_OPS:
        return None
    names, fields, kind = _OWN_OPS[node.target]
    a = _bind(node, names, {"weight": None, "bias": None, "training": False})
    reads = {k: a[k] for k in fields if a[k] is not None}
    if a.get("training") is not False or not all(
            isinstance(v, fx.Node) and v.op == "get_attr" for v in reads.values()):
        return None
    owners = {v.target.rpartition(".")[0] for v in reads.values()}
    owner = modules.get(owners.pop()) if len(owners) == 1 else None
    if owner is None or not kind(owner) or any(v.target.rpartition(".")[2] != k
                                               for k, v in reads.items()):
        return None
    return owner


def permutation(node: fx.Node, rank: int) -> list:
    """The dims of a ``transpose`` or ``permute`` node's result, as positions in its input."""
    name = node.target if isinstance(node.target, str) else node.target.__name__
    args = list(node.args[1:])
    if name == "transpose":
        d0, d1 = (a % rank for a in args[:2])
        dims = list(range(rank))
        dims[d0], dims[d1] = dims[d1], dims[d0]
        return dims
    dims = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    return [d % rank for d in dims]


def _tensors(values) -> list:
    return [v for v in values if isinstance(v, fx.Node) and shape_of(v) is not None]


def _classify_module(node, modules) -> Op:
    m = modules[node.target]
    x = node.args[0]
    if isinstance(m, nn.Conv2d):
        return Op("conv", node, [x], module=m)
    if isinstance(m, nn.Conv1d):  # across the channels (ECA): at full width
        if m.padding_mode != "zeros" or isinstance(m.padding, str):
            raise refuse(node, modules, " (padding other than numeric zeros)")
        return Op("conv1d", node, [x], module=m)
    if is_batchnorm(m):
        return Op("bn", node, [x], module=m)
    if isinstance(m, nn.Linear):
        return Op("linear", node, [x], module=m)
    if isinstance(m, nn.PReLU):
        return Op("act", node, [x], {"fn": "prelu", "kw": {}}, module=m)
    if type(m) in ACTIVATIONS:
        fn, keys = ACTIVATIONS[type(m)]
        return Op("act", node, [x], {"fn": fn, "kw": {k: getattr(m, k) for k in keys}})
    if isinstance(m, _IDENTITY_MODULES):
        return Op("identity", node, [x])
    if isinstance(m, nn.Flatten):
        return Op("flatten", node, [x], {"start": m.start_dim, "end": m.end_dim})
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return Op("pool", node, [x], _pool_attrs(m, node, modules), module=m)
    if isinstance(m, nn.Upsample):
        return _resize(node, modules, {**_RESIZE_DEFAULTS, "size": m.size,
                                       "scale_factor": m.scale_factor, "mode": m.mode,
                                       "align_corners": m.align_corners,
                                       "recompute_scale_factor": m.recompute_scale_factor})
    raise refuse(node, modules)


def _pool_attrs(m, node, modules) -> dict:
    if isinstance(m, nn.MaxPool2d):
        if m.return_indices:
            raise refuse(node, modules, " (max-pool returning indices)")
        return {"type": "max", "kernel": m.kernel_size, "stride": m.stride,
                "padding": m.padding, "dilation": m.dilation, "ceil_mode": m.ceil_mode}
    if isinstance(m, nn.AvgPool2d):
        return {"type": "avg", "kernel": m.kernel_size, "stride": m.stride, "padding": m.padding,
                "ceil_mode": m.ceil_mode, "count_include_pad": m.count_include_pad,
                "divisor_override": m.divisor_override}
    kind = "adaptive_avg" if isinstance(m, nn.AdaptiveAvgPool2d) else "adaptive_max"
    if getattr(m, "return_indices", False):
        raise refuse(node, modules, " (adaptive max-pool returning indices)")
    return {"type": kind, "size": m.output_size}


def _classify_function(node, modules) -> Op:
    f, args = node.target, node.args
    if f in _OWN_OPS:
        owner = _owner(node, modules)
        if owner is None:
            raise refuse(node, modules, " (over other tensors than one module's own parameters"
                                        " and, in eval mode, statistics)")
        if f is F.prelu:
            return Op("act", node, [args[0]], {"fn": "prelu", "kw": {}}, module=owner)
        return Op("bn" if f is F.batch_norm else "linear", node, [args[0]], module=owner)
    if f in _ACT_FUNCTIONS:
        fn = _ACT_FUNCTIONS[f]
        kw = _bind(node, ("input",) + tuple(_ACT_KWARGS.get(fn, {})), _ACT_KWARGS.get(fn, {}))
        return Op("act", node, [args[0]], {"fn": fn, "kw": {k: kw[k] for k in _ACT_KWARGS.get(
            fn, {})}})
    if f is operator.truediv and isinstance(args[1], (int, float)) and \
            not isinstance(args[1], bool) and args[1] != 0:  # timm's hard_sigmoid: relu6(x+3)/6
        return Op("mul", node, [args[0]], {"number": 1.0 / args[1]})
    if f in (operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul):
        return _binary("add" if f in (operator.add, operator.iadd, torch.add) else "mul",
                       node, modules, args[:2])
    if f is torch.stack:  # selective kernels stack their branches: at full width
        a = _bind(node, ("tensors", "dim"), {"dim": 0})
        return Op("stack", node, list(a["tensors"]), {"dims": [a["dim"]]})
    if f in (torch.cat, torch.concat):
        a = _bind(node, ("tensors", "dim"), {"dim": 0})
        return _cat(node, modules, list(a["tensors"]), a["dim"])
    if f is torch.flatten:
        a = _bind(node, ("input", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
        return Op("flatten", node, [args[0]], {"start": a["start_dim"], "end": a["end_dim"]})
    if f is operator.getitem:
        return _getitem(node, modules)
    if f in (torch.transpose, torch.permute, torch.reshape):
        return Op("reshape", node, [args[0]])
    if f in (torch.chunk, torch.split):
        return _split(node, modules, _bind(node, ("input", "n", "dim"), {"dim": 0})["dim"])
    if f is F.dropout or getattr(f, "__name__", "") == "stochastic_depth":
        training = _bind(node, ("input", "p", "mode", "training") if f is not F.dropout
                         else ("input", "p", "training"), {"training": True})["training"]
        if training is False:  # traced in eval mode: the identity
            return Op("identity", node, [args[0]])
    if f in (torch.mean, torch.sum):
        return _reduce(node, modules, f.__name__, ("input", "dim", "keepdim"))
    if f in (F.softmax, torch.softmax):
        return _softmax(node, modules, ("input", "dim"))
    if f is F.interpolate:
        a = _bind(node, ("input", "size", "scale_factor", "mode", "align_corners",
                         "recompute_scale_factor", "antialias"), _RESIZE_DEFAULTS)
        return _resize(node, modules, a)
    pool = _function_pool(node, modules)
    if pool is not None:
        return pool
    raise refuse(node, modules)


def _reduce(node, modules, fn: str, names: tuple) -> Op:
    """A mean over the spatial dims is a pool; any other sum or mean runs at full width
    (``fullwidth``: a split attention's sum across the radix dim)."""
    a = _bind(node, names + ("dtype",), {"dim": None, "keepdim": False, "dtype": None})
    x = node.args[0]
    if a["dim"] is None or a["dtype"] is not None:
        raise refuse(node, modules, f" (a {fn} over every dim, or into another dtype)")
    dims = list(a["dim"]) if isinstance(a["dim"], (list, tuple)) else [a["dim"]]
    if fn == "mean" and len(shape_of(x)) == 4 and sorted(d % 4 for d in dims) == [2, 3]:
        return Op("pool", node, [x], {"type": "mean", "keepdim": bool(a["keepdim"])})
    return Op("reduce", node, [x], {"fn": fn, "dims": dims, "keepdim": bool(a["keepdim"])})


def _softmax(node, modules, names: tuple) -> Op:
    a = _bind(node, names + ("_stacklevel", "dtype"), {"dim": None, "dtype": None})
    if a["dim"] is None or a["dtype"] is not None:
        raise refuse(node, modules, " (a softmax without an explicit dim, or into a dtype)")
    return Op("softmax", node, [node.args[0]], {"dims": [a["dim"]]})


_RESIZE_DEFAULTS = {"size": None, "scale_factor": None, "mode": "nearest",
                    "align_corners": None, "recompute_scale_factor": None, "antialias": False}


def _resize(node, modules, a: dict) -> Op:
    """Nearest and bilinear upsampling act per channel, and a constant channel stays the same
    constant (bilinear weights sum to 1): a pool, for the compactor."""
    if a["mode"] not in ("nearest", "bilinear") or a["antialias"] or \
            len(shape_of(node.args[0])) != 4:
        raise refuse(node, modules, f" (resizing in mode {a['mode']!r}; nearest and bilinear "
                                    "without antialias are understood)")
    plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
    return Op("pool", node, [node.args[0]], {
        "type": "resize", "size": plain(a["size"]), "scale_factor": plain(a["scale_factor"]),
        "mode": a["mode"], "align_corners": a["align_corners"],
        "recompute_scale_factor": a["recompute_scale_factor"]})


def _function_pool(node, modules) -> Op | None:
    f, x = node.target, node.args[0]
    if f is F.max_pool2d:
        a = _bind(node, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode",
                         "return_indices"), {"stride": None, "padding": 0, "dilation": 1,
                                             "ceil_mode": False, "return_indices": False})
        if a["return_indices"]:
            raise refuse(node, modules, " (max-pool returning indices)")
        return Op("pool", node, [x], {"type": "max", "kernel": a["kernel_size"],
                                      "stride": a["stride"] or a["kernel_size"],
                                      "padding": a["padding"], "dilation": a["dilation"],
                                      "ceil_mode": a["ceil_mode"]})
    if f is F.avg_pool2d:
        a = _bind(node, ("input", "kernel_size", "stride", "padding", "ceil_mode",
                         "count_include_pad", "divisor_override"),
                  {"stride": None, "padding": 0, "ceil_mode": False, "count_include_pad": True,
                   "divisor_override": None})
        if isinstance(a["kernel_size"], fx.Node):  # the window is the input's size: global
            if a["stride"] is None and a["padding"] == 0 and tuple(shape_of(node)[2:]) == (1, 1):
                return Op("pool", node, [x], {"type": "global_avg"})
            raise refuse(node, modules, " (an average pool whose window is computed)")
        return Op("pool", node, [x], {"type": "avg", "kernel": a["kernel_size"],
                                      "stride": a["stride"] or a["kernel_size"],
                                      "padding": a["padding"], "ceil_mode": a["ceil_mode"],
                                      "count_include_pad": a["count_include_pad"],
                                      "divisor_override": a["divisor_override"]})
    if f in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        a = _bind(node, ("input", "output_size", "return_indices"), {"return_indices": False})
        if a["return_indices"]:
            raise refuse(node, modules, " (adaptive max-pool returning indices)")
        kind = "adaptive_avg" if f is F.adaptive_avg_pool2d else "adaptive_max"
        return Op("pool", node, [x], {"type": kind, "size": a["output_size"]})
    return None


def _classify_method(node, modules) -> Op:
    name, args = node.target, node.args
    if name in _ACT_METHODS:
        return Op("act", node, [args[0]], {"fn": _ACT_METHODS[name], "kw": {}})
    if name in _IDENTITY_METHODS:
        return Op("identity", node, [args[0]])
    if name in ("view", "reshape", "transpose", "permute"):
        return Op("reshape", node, [args[0]])
    if name == "flatten":
        a = _bind(node, ("self", "start_dim", "end_dim"), {"start_dim": 0, "end_dim": -1})
        return Op("flatten", node, [args[0]], {"start": a["start_dim"], "end": a["end_dim"]})
    if name in ("chunk", "split"):
        return _split(node, modules, _bind(node, ("self", "n", "dim"), {"dim": 0})["dim"])
    if name in ("mean", "sum"):
        return _reduce(node, modules, name, ("self", "dim", "keepdim"))
    if name == "softmax":
        return _softmax(node, modules, ("self", "dim"))
    if name in ("add", "add_", "mul", "mul_"):
        return _binary(name.rstrip("_"), node, modules, args[:2])
    if name in ("expand", "expand_as") and node.users and all(
            u.op in ("call_function", "call_method") and u.target in _BROADCASTING
            for u in node.users):
        return Op("meta", node)  # the product or sum reads its input (``_binary``) and broadcasts
    if name in ("new_zeros", "zero_"):
        return Op("zeros", node)
    raise refuse(node, modules)


_BROADCASTING = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul,
                 "add", "add_", "mul", "mul_"}


def _unexpanded(value):
    """``y.expand_as(x)`` read by a product or a sum: ``y`` itself, which broadcasts alike."""
    if isinstance(value, fx.Node) and value.op == "call_method" and \
            value.target in ("expand", "expand_as"):
        return value.args[0]
    return value


def _binary(kind, node, modules, operands) -> Op:
    operands = [_unexpanded(v) for v in operands]
    tensors = _tensors(operands)
    numbers = [v for v in operands if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if len(tensors) == 2 or (len(tensors) == 1 and len(numbers) == 1):
        return Op(kind, node, tensors, {"number": numbers[0] if numbers else None})
    raise refuse(node, modules)


def _cat(node, modules, tensors, dim) -> Op:
    rank = len(shape_of(node))
    if dim % rank != 1:
        raise refuse(node, modules, " (concatenation along another dim than the channels)")
    return Op("cat", node, list(tensors))


def _split(node, modules, dim) -> Op:
    rank = len(shape_of(node.args[0]))
    if dim % rank != 1:
        raise refuse(node, modules, " (a split along another dim than the channels)")
    return Op("split", node, [node.args[0]], {"sizes": [s[1] for s in shape_of(node)]})


def _channel_run(index, rank: int):
    """The channel slice of an index that takes channels only (``x[:, a:b]``), else None."""
    if not isinstance(index, tuple):
        index = (index,)
    if not index or len(index) > rank or index[0] != slice(None) or \
            not all(isinstance(s, slice) for s in index) or \
            any(s != slice(None) for s in index[2:]):
        return None
    return index[1] if len(index) > 1 else slice(None)


def _setitem(node, modules) -> Op:
    """``x[:, a:b] = v`` (and ``+=``: a partial in-place residual): channels a…b−1 of x become
    v's, for every later reader of x."""
    x, index, value = node.args
    run = _channel_run(index, len(shape_of(x))) if shape_of(x) is not None else None
    if run is None or not isinstance(value, fx.Node) or shape_of(value) is None:
        raise refuse(node, modules, " (an assignment other than to a run of channels)")
    start, stop, step = run.indices(shape_of(x)[1])
    if step != 1 or list(shape_of(value)) != [shape_of(x)[0], stop - start, *shape_of(x)[2:]]:
        raise refuse(node, modules, " (an assignment of another shape, or to strided channels)")
    return Op("setitem", node, [x, value], {"start": start, "stop": stop})


def _getitem(node, modules) -> Op:
    source, index = node.args
    if isinstance(shape_of(source), list):  # an element of a split's tuple
        return Op("item", node, [source], {"index": index})
    if not isinstance(index, tuple):
        index = (index,)
    rank = len(shape_of(source))
    if all(isinstance(s, slice) for s in index) and len(index) <= rank and index and \
            index[0] == slice(None):
        slices = list(index) + [slice(None)] * (rank - len(index))
        return Op("slice", node, [source], {"slices": [(s.start, s.stop, s.step) for s in slices]})
    raise refuse(node, modules, " (indexing other than slices)")
