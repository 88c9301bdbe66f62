"""The grammar of a compact network's manifest: everything ``CompactNet`` accepts as plain data.

A ``model_compact.pt`` is shared and downloaded, so its manifest is input from anyone. Its
strings would otherwise reach the generated forward (fx writes node names into Python source),
attribute and buffer names, and the ops' arguments. ``check_manifest`` holds every value to a
closed grammar before any of it is used: node names are ``n<digits>`` defined before use, ops,
functions and modes come from closed sets, numbers are plain numbers of bounded size, every
tensor a node declares is one its module owns, and a node gets exactly the inputs its module
reads. The first place that breaks it raises ``ManifestError`` naming it.
"""
import math
import re

NAME = re.compile(r"n[0-9]{1,9}\Z")              # Builder.data's names: n0, n1, …
CONV_NAME = re.compile(r"[A-Za-z0-9_.\-:]{1,300}\Z")  # a dense conv's module name (kept/pruned)
MAX_NODES = 1_000_000
BIG = 2 ** 31                                      # channel counts, sizes, indices
SMALL = 2 ** 16                                    # kernels, strides, paddings, image sides
ACTIVATIONS = {"relu", "relu6", "silu", "hardswish", "hardsigmoid", "sigmoid", "tanh", "gelu",
               "mish", "leaky_relu", "elu", "hardtanh"}
ACT_KW = {"gelu": {"approximate"}, "leaky_relu": {"negative_slope"}, "elu": {"alpha"},
          "hardtanh": {"min_val", "max_val"}}


class ManifestError(ValueError):
    """The manifest breaks the grammar; the message says where and how."""


def _fail(where: str, what: str):
    raise ManifestError(f"{where}: {what}")


# -- values ---------------------------------------------------------------------------------------
def _int(v, where: str, lo: int = 0, hi: int = BIG) -> int:
    if type(v) is not int or not lo <= v < hi:
        _fail(where, f"expected an integer in [{lo}, {hi}), got {_show(v)}")
    return v


def _bool(v, where: str) -> bool:
    if type(v) is not bool:
        _fail(where, f"expected true or false, got {_show(v)}")
    return v


def _num(v, where: str, bound: float = 1e30) -> float:
    if type(v) not in (int, float) or not math.isfinite(v) or abs(v) > bound:
        _fail(where, f"expected a finite number, got {_show(v)}")
    return v


def _choice(v, where: str, allowed) -> str:
    if type(v) is not str or v not in allowed:
        _fail(where, f"expected one of {', '.join(sorted(map(str, allowed)))}, got {_show(v)}")
    return v


def _list(v, where: str, lo: int = 0, hi: int = MAX_NODES) -> list:
    if type(v) not in (list, tuple) or not lo <= len(v) <= hi:
        _fail(where, f"expected a list of {lo} to {hi} items, got {_show(v)}")
    return list(v)


def _ints(v, where: str, n: int, lo: int = 0, hi: int = SMALL) -> list:
    return [_int(x, f"{where}[{i}]", lo, hi) for i, x in enumerate(_list(v, where, n, n))]


def _int_or_pair(v, where: str, lo: int = 0, hi: int = SMALL):
    return _int(v, where, lo, hi) if type(v) is int else _ints(v, where, 2, lo, hi)


def _mapping(v, where: str) -> dict:
    if not isinstance(v, dict):
        _fail(where, f"expected a mapping, got {_show(v)}")
    return v


def _dict(v, where: str, required, optional=()) -> dict:
    _mapping(v, where)
    missing = [k for k in required if k not in v]
    extra = [k for k in v if k not in required and k not in optional]
    if missing:
        _fail(where, f"lacks {missing[0]!r}")
    if extra:
        _fail(where, f"has an unknown key {_show(extra[0])}")
    return v


def _show(v) -> str:
    """A value for a message: short, and printable whatever the file holds."""
    text = repr(v) if type(v) in (int, float, bool, str) or v is None else type(v).__name__
    return ascii(text[:40])[1:-1]


# -- the parts of a node --------------------------------------------------------------------------
def check_act(a: dict, where: str, extra=()) -> None:
    """``{"fn", "kw"}``: an activation of the closed set (PReLU's slopes are a tensor)."""
    _dict(a, where, ("fn", "kw"), extra)
    fn = _choice(a["fn"], f"{where}.fn", ACTIVATIONS | {"prelu"})
    _kw(a["kw"], f"{where}.kw", fn)


def _kw(kw, where: str, fn: str) -> None:
    _dict(kw, where, (), ACT_KW.get(fn, ()))
    for key, value in kw.items():
        if key == "approximate":
            _choice(value, f"{where}.{key}", {"none", "tanh"})
        else:
            _num(value, f"{where}.{key}")


def check_pool(a: dict, where: str, kinds=None) -> None:
    """A pool's attributes; ``kinds``: the pool types allowed (a data node's also resizes to
    another tensor's size: ``resize_like``)."""
    kinds = POOLS if kinds is None else kinds
    kind = _choice(_mapping(a, where).get("type"), f"{where}.type", kinds)
    _dict(a, where, ("type", *kinds[kind]))
    for key in kinds[kind]:
        POOL_FIELDS[key](a[key], f"{where}.{key}")


def check_pad(a: dict, where: str) -> None:
    """``F.pad`` of the height and width: 2 or 4 sizes, a mode, the constant mode's value."""
    _dict(a, where, ("pad", "mode", "value"))
    for i, p in enumerate(_list(a["pad"], f"{where}.pad", 2, 4)):
        _int(p, f"{where}.pad[{i}]", -SMALL, SMALL)
    if len(a["pad"]) == 3:
        _fail(f"{where}.pad", "expected 2 or 4 sizes")
    _choice(a["mode"], f"{where}.mode", PAD_MODES)
    _num(a["value"], f"{where}.value")


def _opt(check):
    return lambda v, where: None if v is None else check(v, where)


def _sizes(v, where):  # an adaptive pool's output size: an int or a pair, None keeps the side
    if type(v) is int:
        return _int(v, where, 1, SMALL)
    return [_opt(lambda x, w: _int(x, w, 1, SMALL))(x, f"{where}[{i}]")
            for i, x in enumerate(_list(v, where, 2, 2))]


def _scale(v, where):  # a resize factor (bounded: a check at load computes on its shape)
    if type(v) in (list, tuple):
        return [_scale(x, f"{where}[{i}]") for i, x in enumerate(_list(v, where, 2, 2))]
    if not 0 < _num(v, where) <= 64:
        _fail(where, f"expected a factor in (0, 64], got {_show(v)}")


POOLS = {"max": ("kernel", "stride", "padding", "dilation", "ceil_mode"),
         "avg": ("kernel", "stride", "padding", "ceil_mode", "count_include_pad",
                 "divisor_override"),
         "adaptive_avg": ("size",), "adaptive_max": ("size",),
         "resize": ("size", "scale_factor", "mode", "align_corners", "recompute_scale_factor"),
         "global_avg": (), "mean": ("keepdim",)}
DATA_POOLS = {**POOLS, "resize_like": ("mode", "align_corners")}
PAD_MODES = {"constant", "reflect", "replicate", "circular"}
POOL_FIELDS = {
    "kernel": lambda v, w: _int_or_pair(v, w, 1), "stride": lambda v, w: _int_or_pair(v, w, 1),
    "padding": _int_or_pair, "dilation": lambda v, w: _int_or_pair(v, w, 1),
    "ceil_mode": _bool, "count_include_pad": _bool, "keepdim": _bool,
    "divisor_override": _opt(lambda v, w: _int(v, w, 1, SMALL)), "size": _opt(_sizes),
    "scale_factor": _opt(_scale), "mode": lambda v, w: _choice(v, w, {"nearest", "bilinear"}),
    "align_corners": _opt(_bool), "recompute_scale_factor": _opt(_bool)}


def check_slices(v, where: str) -> None:
    """Two spatial slices (height, width), each [start, stop, step] with None allowed."""
    for i, s in enumerate(_list(v, where, 2, 2)):
        parts = _list(s, f"{where}[{i}]", 3, 3)
        for j, x in enumerate(parts):
            _opt(lambda x, w: _int(x, w, -BIG, BIG))(x, f"{where}[{i}][{j}]")
        if parts[2] is not None and parts[2] < 1:
            _fail(f"{where}[{i}]", "a slice's step must be ≥ 1")


# -- constant maps --------------------------------------------------------------------------------
STEP_INPUTS = {"ones": (0, 0), "vector": (0, 0), "conv": (1, 1), "affine": (1, 1),
               "act": (1, 1), "pool": (1, 1), "slice": (1, 1), "select": (1, 1),
               "widen": (1, 1), "add": (2, MAX_NODES), "cat": (1, MAX_NODES),
               "flatten": (1, 1), "linear": (1, 1), "pad": (1, 1), "resize_to": (2, 2)}
STEP_TENSORS = {"vector": {"value"}, "conv": {"weight"}, "affine": {"scale", "shift"},
                "act": {"weight"}, "select": {"index"}, "widen": {"gather"},
                "linear": {"weight"}}


def check_map(m, where: str) -> tuple[int, dict]:
    """A constant map: (the data tensors it reads the sizes of, the tensor keys it owns)."""
    _dict(m, where, ("steps", "refs"))
    refs = _int(m["refs"], f"{where}.refs", 1, MAX_NODES)
    owned = {}
    for i, step in enumerate(_list(m["steps"], f"{where}.steps", 1)):
        at = f"{where}.steps[{i}]"
        _dict(step, at, ("op", "in", "attrs"))
        op = _choice(step["op"], f"{at}.op", STEP_INPUTS)
        lo, hi = STEP_INPUTS[op]
        for j, src in enumerate(_list(step["in"], f"{at}.in", lo, hi)):
            _int(src, f"{at}.in[{j}]", 0, i)  # an earlier step
        _check_step_attrs(op, step["attrs"], f"{at}.attrs", refs)
        for key in STEP_TENSORS.get(op, ()):
            owned[f"map.steps.{i}.{key}"] = op
    return refs, owned


def _check_step_attrs(op: str, a, where: str, refs: int) -> None:
    if op == "ones":
        _dict(a, where, ("ref", "replay"))
        _int(a["ref"], f"{where}.ref", 0, refs)
        for i, r in enumerate(_list(a["replay"], f"{where}.replay")):
            _replay_step(r, f"{where}.replay[{i}]")
    elif op == "conv":
        _dict(a, where, ("stride", "padding", "dilation"))
        _conv_geometry(a, where)
    elif op == "act":
        check_act(a, where)
    elif op == "pool":
        check_pool(a, where)
    elif op == "pad":
        check_pad(a, where)
    elif op == "resize_to":  # a map resized to the size of its second input
        _dict(a, where, ("mode", "align_corners"))
        POOL_FIELDS["mode"](a["mode"], f"{where}.mode")
        POOL_FIELDS["align_corners"](a["align_corners"], f"{where}.align_corners")
    elif op == "slice":
        _dict(a, where, ("slices",))
        check_slices(a["slices"], f"{where}.slices")
    elif op == "widen":
        _dict(a, where, ("spatial",))
        _bool(a["spatial"], f"{where}.spatial")
    else:
        _dict(a, where, ())


def _replay_step(r, where: str) -> None:
    """How a spatial op changed the size: ("conv", kernel, stride, padding, dilation),
    ("pool", its attributes), ("slice", its slices) or ("pad", its attributes)."""
    r = _list(r, where, 2, 5)
    kind = _choice(r[0], f"{where}[0]", {"conv", "pool", "slice", "pad"})
    if kind == "conv":
        _list(r, where, 5, 5)
        _ints(r[1], f"{where}[1]", 2, 1)
        _ints(r[2], f"{where}[2]", 2, 1)
        _ints(r[3], f"{where}[3]", 2)
        _ints(r[4], f"{where}[4]", 2, 1)
        return
    _list(r, where, 2, 2)
    {"pool": check_pool, "slice": check_slices, "pad": check_pad}[kind](r[1], f"{where}[1]")


def _conv_geometry(a: dict, where: str) -> None:
    _ints(a["stride"], f"{where}.stride", 2, 1)
    _ints(a["padding"], f"{where}.padding", 2)
    _ints(a["dilation"], f"{where}.dilation", 2, 1)


# -- data nodes -----------------------------------------------------------------------------------
def _conv(a, where):
    _dict(a, where, ("in", "out", "kernel", "stride", "padding", "dilation", "groups", "gather",
                     "sbias", "source_bias", "bn", "map", "act"), ("fixed",))
    _bool(a.get("fixed", False), f"{where}.fixed")  # weights of a buffer: no parameters
    ins, outs = _int(a["in"], f"{where}.in"), _int(a["out"], f"{where}.out")
    groups = _int(a["groups"], f"{where}.groups", 1)
    if ins % groups or outs % groups:
        _fail(where, f"{ins} inputs and {outs} outputs do not split into {groups} groups")
    _ints(a["kernel"], f"{where}.kernel", 2, 1)
    _conv_geometry(a, where)
    _opt(lambda v, w: _choice(v, w, {"take"}))(a["gather"], f"{where}.gather")
    scaled = _int(a["sbias"], f"{where}.sbias") > 0
    _bool(a["source_bias"], f"{where}.source_bias")
    _bool(a["bn"], f"{where}.bn")
    _opt(check_act)(a["act"], f"{where}.act")
    refs, owned = check_map(a["map"], f"{where}.map") if a["map"] is not None else (0, {})
    n = 1 + scaled + refs
    return (n, n), {"index", "smat", "spos", "conv.weight", "conv.bias", *owned}


def _linear(a, where):
    _dict(a, where, ("in", "out", "sbias", "source_bias"))
    _int(a["in"], f"{where}.in")
    _int(a["out"], f"{where}.out")
    _bool(a["source_bias"], f"{where}.source_bias")
    n = 1 + (_int(a["sbias"], f"{where}.sbias") > 0)
    return (n, n), {"smat", "spos", "linear.weight", "linear.bias"}


def _act(a, where):
    check_act(a, where, ("spatial",))
    _bool(a.get("spatial"), f"{where}.spatial")
    return (1, 1), {"weight"}


def _affine(a, where):
    _dict(a, where, ("spatial", "bn"), ("params",))
    _int(a.get("params", 0), f"{where}.params", 0, 2 ** 62)  # a learnable scale's own
    _bool(a["spatial"], f"{where}.spatial")
    _bool(a["bn"], f"{where}.bn")
    return (1, 1), {"scale", "shift"}


def _take(a, where):
    _dict(a, where, ("start", "width", "spatial"))
    _int(a["start"], f"{where}.start", -1)
    _int(a["width"], f"{where}.width")
    _bool(a["spatial"], f"{where}.spatial")
    return (1, 1), {"index"}


def _pool(a, where):
    check_pool(a, where, DATA_POOLS)
    return ((2, 2) if a["type"] == "resize_like" else (1, 1)), set()


def _pad(a, where):
    check_pad(a, where)
    return (1, 1), set()


def _slice(a, where):
    _dict(a, where, ("slices",))
    check_slices(a["slices"], f"{where}.slices")
    return (1, 1), set()


def _join(a, where):
    _dict(a, where, ("width", "operands", "relu", "spatial", "term"), ("map",))
    _int(a["width"], f"{where}.width")
    _bool(a["relu"], f"{where}.relu")
    _bool(a["spatial"], f"{where}.spatial")
    operands = _list(a["operands"], f"{where}.operands")
    for i, o in enumerate(operands):
        _dict(o, f"{where}.operands[{i}]", ("width", "start"))
        _int(o["width"], f"{where}.operands[{i}].width")
        _int(o["start"], f"{where}.operands[{i}].start", -1)
    term = _opt(lambda v, w: _choice(v, w, {"map", "vector"}))(a["term"], f"{where}.term")
    if (term == "map") != ("map" in a):
        _fail(where, "a map is given exactly when the term is one")
    refs, owned = check_map(a["map"], f"{where}.map") if term == "map" else (0, {})
    n = len(operands) + refs + (not operands)  # no operand: the input, for the batch size
    return (n, n), {"vector", *(f"pos{i}" for i in range(len(operands))), *owned}


def _dims(v, where: str, fewest: int, lo: int, hi: int) -> None:
    for i, d in enumerate(_list(v, where, fewest, 8)):
        _int(d, f"{where}[{i}]", lo, hi)


TENSOR_FNS = {"stack", "conv1d", "reshape", "permute", "sum", "mean", "softmax", "act", "add",
              "sub", "mul"}


def _tensor(a, where):
    fn = _choice(_mapping(a, where).get("fn"), f"{where}.fn", TENSOR_FNS)
    if fn in ("stack", "sum", "mean", "softmax"):
        _dict(a, where, ("fn", "dims", "keepdim"))
        _dims(a["dims"], f"{where}.dims", 1, 1, 8)  # never the batch dim
        _bool(a["keepdim"], f"{where}.keepdim")
        return (1, MAX_NODES) if fn == "stack" else (1, 1), set()
    if fn == "conv1d":
        _dict(a, where, ("fn", "stride", "padding", "dilation", "groups", "macs", "params"))
        _ints(a["stride"], f"{where}.stride", 1, 1)
        _ints(a["padding"], f"{where}.padding", 1)
        _ints(a["dilation"], f"{where}.dilation", 1, 1)
        _int(a["groups"], f"{where}.groups", 1)
        _int(a["macs"], f"{where}.macs", 0, 2 ** 62)
        _int(a["params"], f"{where}.params", 0, 2 ** 62)
        return (1, 1), {"weight", "bias"}
    if fn == "reshape":
        _dict(a, where, ("fn", "dims", "spatial"))
        _dims(a["dims"], f"{where}.dims", 0, 0, BIG)
        _bool(a["spatial"], f"{where}.spatial")
    elif fn == "permute":
        _dict(a, where, ("fn", "dims"))
        _dims(a["dims"], f"{where}.dims", 1, 0, 8)
    elif fn == "act":
        _dict(a, where, ("fn", "act", "kw"))
        check_act({"fn": a["act"], "kw": a["kw"]}, where)
    else:  # add, sub, mul: of two tensors, or of one and a number
        _dict(a, where, ("fn", "number"))
        number = _opt(_num)(a["number"], f"{where}.number")
        return ((2, 2) if number is None else (1, 1)), set()
    return (1, 1), set()


def _no_attributes(inputs: tuple):
    def check(a, where):
        _dict(a, where, ())
        return inputs, set()
    return check


# op → its attributes' check, which returns (the inputs it reads: (fewest, most), its tensors)
NODES = {"conv": _conv, "linear": _linear, "act": _act, "affine": _affine,
         "mul": _no_attributes((2, 2)), "take": _take, "pool": _pool, "slice": _slice,
         "join": _join, "tensor": _tensor, "pad": _pad, "cat": _no_attributes((1, MAX_NODES)),
         "flatten": _no_attributes((1, 1))}


def _held(a, where):
    """A part kept whole (``kept``): only in memory, never in a file (``held`` names it)."""
    _dict(a, where, ("macs", "params"))
    _int(a["macs"], f"{where}.macs", 0, 2 ** 62)
    _int(a["params"], f"{where}.params", 0, 2 ** 62)
    return (0, MAX_NODES), set()


def _check_tensors(specs, where: str, owned: set) -> None:
    _mapping(specs, where)
    for key, spec in specs.items():
        if type(key) is not str or key not in owned:
            _fail(where, f"declares a tensor {_show(key)} its module does not have")
        at = f"{where}.{key}"
        _dict(spec, at, ("shape", "index"))
        for i, d in enumerate(_list(spec["shape"], f"{at}.shape", 0, 8)):
            _int(d, f"{at}.shape[{i}]")
        _bool(spec["index"], f"{at}.index")


def check_manifest(manifest, held=frozenset()) -> None:
    """Raise ``ManifestError`` unless ``manifest`` is a compact graph this code can build.
    ``held``: the names of the nodes that run a part kept whole, which only a network built
    in memory has (``compact_model``); a file's manifest has none, so none is accepted."""
    _dict(manifest, "manifest", ("arch", "num_classes", "in_channels", "input_shape", "exact",
                                 "kept", "pruned", "nodes", "output"))
    arch = manifest["arch"]
    if arch is not None and (type(arch) is not str or len(arch) > 300 or not arch.isprintable()):
        _fail("manifest.arch", f"expected a printable name, got {_show(arch)}")
    _int(manifest["num_classes"], "manifest.num_classes", 1)
    _int(manifest["in_channels"], "manifest.in_channels", 1, SMALL)
    _ints(manifest["input_shape"], "manifest.input_shape", 3, 1, SMALL)
    _bool(manifest["exact"], "manifest.exact")
    for part in ("kept", "pruned"):
        for name, ids in _mapping(manifest[part], f"manifest.{part}").items():
            if type(name) is not str or not CONV_NAME.match(name):
                _fail(f"manifest.{part}", f"a layer name {_show(name)} is not a module path")
            for i, x in enumerate(_list(ids, f"manifest.{part}[{name}]", 0, BIG)):
                _int(x, f"manifest.{part}[{name}][{i}]")
    defined = {"input"}
    for i, node in enumerate(_list(manifest["nodes"], "manifest.nodes", 1)):
        _check_node(node, f"manifest.nodes[{i}]", defined, held)
    out = manifest["output"]
    if type(out) is not str or out not in defined or out == "input":
        _fail("manifest.output", f"expected a node's name, got {_show(out)}")


def _check_node(node, where: str, defined: set, held) -> None:
    _dict(node, where, ("name", "op", "in", "attrs", "tensors"))
    name = node["name"]
    if type(name) is not str or not NAME.match(name) or name in defined:
        _fail(f"{where}.name", f"expected a new name n<digits>, got {_show(name)}")
    where = f"{where} ({name})"
    ops = {**NODES, "held": _held} if name in held else NODES
    op = _choice(node["op"], f"{where}.op", ops)
    (lo, hi), owned = ops[op](node["attrs"], f"{where}.attrs")
    for j, src in enumerate(_list(node["in"], f"{where}.in", lo, hi)):
        if type(src) is not str or src not in defined:
            _fail(f"{where}.in[{j}]", f"expected an earlier node's name, got {_show(src)}")
    _check_tensors(node["tensors"], f"{where}.tensors", owned)
    defined.add(name)
