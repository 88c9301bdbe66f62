"""The registry: each op kind's rule by name, and which rules claim an fx node.

``@register_rule`` files a ``Rule`` subclass under its ``kind`` and indexes what it claims
(module types with their subclasses, functions, methods, fx node ops) so that finding a node's
rule is a dictionary look-up, not a chain of tests. Several rules may claim one target
(``operator.getitem``: an item of a split, or a slice); they are asked in registration order.
"""
from torch import fx

from ..nodes import Op, bind, refuse, shape_of

REGISTRY: dict = {}           # kind -> its rule
COSTS: dict = {}              # compact node op -> the rule that gives its cost
_BY_MODULE: dict = {}         # module type -> rules
_BY_FUNCTION: dict = {}       # function -> rules
_BY_FUNCTION_NAME: dict = {}  # function name -> rules
_BY_METHOD: dict = {}         # method name -> rules
_BY_NODE_OP: dict = {}        # "placeholder", "output", "get_attr" -> rules
_OWN_CALLS: dict = {}         # function -> (argument names, the module's tensors, module types)


def register_rule(cls: type) -> type:
    """Class decorator: the rule's single instance becomes the one for ``cls.kind``."""
    rule = cls()
    if not rule.kind or rule.kind in REGISTRY:
        raise ValueError(f"rule {cls.__name__}: kind {rule.kind!r} is empty or taken")
    REGISTRY[rule.kind] = rule
    for key, table in ((rule.modules, _BY_MODULE), (rule.functions, _BY_FUNCTION),
                       (rule.function_names, _BY_FUNCTION_NAME), (rule.methods, _BY_METHOD),
                       (rule.node_ops, _BY_NODE_OP)):
        for k in key:
            table.setdefault(k, []).append(rule)
    for f, spec in rule.own_calls.items():
        _OWN_CALLS[f] = (*spec, rule.modules)
    for op in rule.emits:
        COSTS[op] = rule
    return cls


def rule_of(kind: str):
    return REGISTRY[kind]


def claimants(node: fx.Node, modules: dict) -> list:
    """The rules that claim ``node``, in registration order (none: no rule knows it)."""
    if node.op == "call_module":
        for t in type(modules[node.target]).__mro__:
            if t in _BY_MODULE:
                return _BY_MODULE[t]
        return []
    if node.op == "call_function":
        try:
            found = _BY_FUNCTION.get(node.target)
        except TypeError:  # an unhashable callable
            found = None
        return found or _BY_FUNCTION_NAME.get(getattr(node.target, "__name__", None), [])
    if node.op == "call_method":
        return _BY_METHOD.get(node.target, [])
    return _BY_NODE_OP.get(node.op, [])


def classify(node: fx.Node, modules: dict) -> Op:
    """The node's Op, from the first rule that takes it; a UserError naming the operation and
    the node when none does."""
    rules = claimants(node, modules)
    if shape_of(node) is None and not any(r.shapeless for r in rules):
        rules = [REGISTRY["meta"]]  # sizes and integer arithmetic on them: read off the shapes
    for rule in rules:
        op = rule.classify(node, modules)
        if op is not None:
            return op
    raise refuse(node, modules)


def channelwise_node(node: fx.Node, modules: dict) -> bool:
    """Structurally (no shapes): does channel c of ``node`` come from channel c of its first
    argument alone?"""
    return any(r.passes_channels(node, modules) for r in claimants(node, modules))


def owner(node: fx.Node, modules: dict):
    """(name, module) whose own op ``node`` is — ``F.batch_norm`` (in eval mode), ``F.linear``
    or ``F.prelu`` over that module's own tensors, as a traced-into subclass records it — or
    None."""
    if node.op != "call_function" or node.target not in _OWN_CALLS:
        return None
    names, fields, types = _OWN_CALLS[node.target]
    a = bind(node, names, {"weight": None, "bias": None, "training": False})
    reads = {k: a[k] for k in fields if a[k] is not None}
    if a.get("training") is not False or not all(
            isinstance(v, fx.Node) and v.op == "get_attr" for v in reads.values()):
        return None
    owners = {v.target.rpartition(".")[0] for v in reads.values()}
    name = owners.pop() if len(owners) == 1 else None
    module = modules.get(name) if name is not None else None
    if module is None or not isinstance(module, types) or any(
            v.target.rpartition(".")[2] != k for k, v in reads.items()):
        return None
    return name, module


def owned(node: fx.Node, modules: dict, why: str):
    """The owner's module of an own op, or raise ``refuse`` with ``why``."""
    found = owner(node, modules)
    if found is None:
        raise refuse(node, modules, why)
    return found[1]

