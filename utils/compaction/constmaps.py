"""``ConstMap``: a data-independent map, evaluated once per image size (eager mode).

It belongs to the node that adds it (a ``Join``'s term, a conv's border map). Its value is a
small graph of steps (``ones`` at the size of a data tensor, convs of it with
taps, pools, activations, affine maps, channel selections …) written in the manifest. Eager
mode caches the result per input size and memory layout; a recorded graph recomputes it
(``torch.jit.trace``: from the input's size, so any size works; an ONNX graph has a static
size and ONNX Runtime folds it at load).
"""
import torch
import torch.nn.functional as F
from torch import nn

from .modules import MODE, Cached, activation, pad, pool, register, resize_to, widen


def _ones(ref: torch.Tensor, dtype, device) -> torch.Tensor:
    """1×1×H×W ones of ``ref``'s size: from ``ref`` itself under tracing (so the traced graph
    follows the input size), from plain ints otherwise."""
    if torch.jit.is_tracing():
        return torch.ones_like(ref[:1, :1], dtype=dtype)
    return torch.ones(1, 1, ref.shape[2], ref.shape[3], dtype=dtype, device=device)


def _replay(x: torch.Tensor, steps: list) -> torch.Tensor:
    """Ones at the size the spatial ops ``steps`` give ``x``'s size."""
    for step in steps:
        kind = step[0]
        if kind == "conv":
            _, kernel, stride, padding, dilation = step
            w = x.new_ones(1, 1, *kernel)
            x = torch.ones_like(F.conv2d(x, w, None, stride, padding, dilation))
        elif kind == "pool":
            x = torch.ones_like(pool(x, step[1]))
        elif kind == "pad":
            x = torch.ones_like(F.pad(x, step[1]["pad"]))
        else:  # "slice"
            s = [slice(*v) for v in step[1]]
            x = x[:, :, s[0], s[1]]
    return x


class Step(nn.Module):
    """One step of a constant expression; its tensors are buffers (cast with the model)."""

    def __init__(self, spec: dict, specs: dict, prefix: str):
        super().__init__()
        self.op, self.inputs, self.a = spec["op"], list(spec["in"]), dict(spec["attrs"])
        register(self, specs, prefix)

    def forward(self, values: list, refs: list, dtype, device) -> torch.Tensor:
        x = [values[i] for i in self.inputs]
        op, a = self.op, self.a
        if op == "ones":
            return _replay(_ones(refs[a["ref"]], dtype, device), a["replay"])
        if op == "vector":
            return self.value
        if op == "conv":
            return F.conv2d(x[0], self.weight, None, a["stride"], a["padding"], a["dilation"])
        if op == "affine":
            return x[0] * self.scale + self.shift
        if op == "act" and a["fn"] == "prelu":
            return F.prelu(x[0], self.weight)
        if op == "act":
            return activation(a["fn"], a["kw"])(x[0])
        if op == "pool":
            return pool(x[0], a)
        if op == "pad":
            return pad(x[0], a)
        if op == "resize_to":
            return resize_to(x[0], x[1], a)
        if op == "slice":
            s = [slice(*v) for v in a["slices"]]
            return x[0][:, :, s[0], s[1]]
        if op == "select":
            return x[0].index_select(1, self.index)
        if op == "widen":
            return widen(x[0], self.gather)
        if op == "add":
            out = x[0]
            for y in x[1:]:
                out = out + y
            return out
        if op == "cat":
            return torch.cat(x, 1)
        if op == "flatten":
            return torch.flatten(x[0], 1)
        if op == "linear":
            return x[0] @ self.weight.t()
        raise ValueError(f"unknown constant step {op!r}")


class ConstMap(Cached):
    """Called with the data tensors whose sizes the map depends on (the first gives its
    memory layout); ``a``: the ``map`` attributes of the node it belongs to."""

    def __init__(self, a: dict, specs: dict, prefix: str = "map."):
        super().__init__()
        self.refs = int(a["refs"])
        self.steps = nn.ModuleList(Step(s, specs, f"{prefix}steps.{i}.")
                                   for i, s in enumerate(a["steps"]))

    def _compute(self, refs: list) -> torch.Tensor:
        dtype, device = self._dtype_device(refs[0])
        values: list = []
        for step in self.steps:
            values.append(step(values, refs, dtype, device))
        return values[-1]

    def _dtype_device(self, like: torch.Tensor):
        for b in self.buffers():
            if b.is_floating_point():
                return b.dtype, b.device
        return (like.dtype if like.is_floating_point() else torch.float32), like.device

    def forward(self, *refs):
        return self.get(refs)

    def get(self, refs) -> torch.Tensor:
        """The map for these size references (its owner calls this directly: one module
        call fewer per forward)."""
        if MODE.recorded:
            return self._compute(list(refs))
        like = refs[0]
        cl = like.dim() == 4 and like.shape[1] > 1 and \
            like.is_contiguous(memory_format=torch.channels_last)
        # the sizes and the layout: ``_apply`` (dtype, device) and loading clear the cache
        key = (cl, like.shape[2:]) if len(refs) == 1 else \
            (cl,) + tuple(r.shape[2:] for r in refs)
        if self._cache[0] != key:
            # in the buffers' precision whatever autocast the first caller ran under: the map
            # is kept for every later call (docs/compaction.md)
            with torch.autocast(like.device.type, enabled=False):
                m = self._compute(list(refs))
            if cl and m.dim() == 4 and m.shape[1] > 1 and m.shape[-1] > 1:
                m = m.contiguous(memory_format=torch.channels_last)
            self._cache = (key, m)
        return self._cache[1]
