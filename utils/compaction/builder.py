"""Collects the compact graph as plain data: data nodes, constant expressions, tensors, cost.

A *data node* computes from the input batch; a *const node* depends only on the image size
(the maps the constants make behind zero-padded convs and padded average pools). A data node
that needs a constant map evaluates it itself (``embed``: a ``constmaps.ConstMap`` inside the
node, computed once per image size). Tensors are kept in float64 here and
cast to the model's dtype when the network is built.
"""
import torch


class Builder:
    def __init__(self):
        self.nodes: list[dict] = []
        self.consts: dict[str, dict] = {}
        self.state: dict[str, torch.Tensor] = {}
        self.hw: dict[str, int] = {}  # conv node -> output pixels per image (for its cost)

    # -- data nodes --------------------------------------------------------------------------
    def data(self, op: str, inputs: list, attrs: dict | None = None,
             tensors: dict | None = None, hw: int | None = None) -> str:
        name = f"n{len(self.nodes)}"
        tensors = {k: v for k, v in (tensors or {}).items() if v is not None}
        self.nodes.append({"name": name, "op": op, "in": list(inputs), "attrs": attrs or {},
                           "tensors": {k: tensor_spec(v) for k, v in tensors.items()}})
        for key, value in tensors.items():
            self.state[f"{name}.{key}"] = value
        if hw is not None:
            self.hw[name] = int(hw)
        return name

    # -- constant expressions ----------------------------------------------------------------
    def const(self, op: str, inputs: list, attrs: dict | None = None,
              tensors: dict | None = None) -> str:
        name = f"c{len(self.consts)}"
        self.consts[name] = {"op": op, "in": list(inputs), "attrs": attrs or {},
                             "tensors": tensors or {}}
        return name

    def ones(self, ref) -> str:
        return self.const("ones", [], {"ref": ref.node, "replay": [list(r) for r in ref.replay]})

    def vector(self, values: torch.Tensor, spatial: bool) -> str:
        shape = (1, -1, 1, 1) if spatial else (1, -1)
        return self.const("vector", [], tensors={"value": values.double().reshape(shape)})

    def affine(self, x: str, scale, shift, spatial: bool) -> str:
        shape = (1, -1, 1, 1) if spatial else (1, -1)
        return self.const("affine", [x], tensors={"scale": scale.double().reshape(shape),
                                                   "shift": shift.double().reshape(shape)})

    def select(self, x: str, index: torch.Tensor) -> str:
        return self.const("select", [x], tensors={"index": index.long()})

    def widen(self, x: str, width: int, pos: torch.Tensor, spatial: bool) -> str:
        """(1, width, …) with ``x``'s channels at ``pos``, zero elsewhere."""
        return self.const("widen", [x], {"spatial": spatial},
                          tensors={"gather": gather_index(width, pos)})

    def add(self, terms: list) -> str | None:
        terms = [t for t in terms if t is not None]
        if len(terms) <= 1:
            return terms[0] if terms else None
        return self.const("add", terms)

    def live(self, output: str) -> list[dict]:
        """The data nodes the output depends on, in order."""
        needed, by_name = {output}, {n["name"]: n for n in self.nodes}
        for n in reversed(self.nodes):
            if n["name"] in needed:
                needed.update(i for i in n["in"] if i in by_name)
        return [n for n in self.nodes if n["name"] in needed]

    def node(self, name: str) -> dict:
        return self.nodes[int(name[1:])]

    def embed(self, expr: str, like: str) -> tuple[dict, dict, list]:
        """``expr`` as a constant map a data node evaluates itself (``ConstMap``): its steps,
        their tensors (under ``map.``) and the data nodes it reads the sizes of, ``like``
        first (the map takes its memory layout)."""
        steps, index, refs, tensors = [], {}, [like], {}

        def visit(name):
            if name in index:
                return index[name]
            c = self.consts[name]
            ins = [visit(i) for i in c["in"]]
            attrs = dict(c["attrs"])
            if c["op"] == "ones":
                if attrs["ref"] not in refs:
                    refs.append(attrs["ref"])
                attrs["ref"] = refs.index(attrs["ref"])
            steps.append({"op": c["op"], "in": ins, "attrs": attrs})
            index[name] = len(steps) - 1
            for key, value in c["tensors"].items():
                tensors[f"map.steps.{len(steps) - 1}.{key}"] = value
            return index[name]

        visit(expr)
        return {"steps": steps, "refs": len(refs)}, tensors, refs


def tensor_spec(t: torch.Tensor) -> dict:
    """What the manifest says of a tensor: its shape, and whether it holds indices."""
    return {"shape": list(t.shape), "index": not t.is_floating_point()}


def gather_index(width: int, pos: torch.Tensor) -> torch.Tensor:
    """For each of ``width`` output channels, its source channel among ``len(pos)`` inputs, or
    ``len(pos)``: the zero channel ``F.pad`` appends (a gather, not a scatter: Pad + Gather in
    ONNX, plain copies in every runtime)."""
    gather = torch.full((width,), len(pos), dtype=torch.long)
    gather[pos] = torch.arange(len(pos))
    return gather
