"""``Join``: the one module that widens, completes and adds narrow tensors.

out = Σ operands, each added at its channels of the ``width``-channel result, + a term (the
constants: a cached map, or a per-channel vector), then ReLU if asked. A residual add is a
join of its two operands; completing a tensor (a narrow one to more channels, constants
filled in) is a join of one. In eager mode the result is built in place where the network
allows it (``inplace``: an operand nobody reads afterwards), and a narrow operand is added with
``index_add_`` — on the pixels × channels view in channels_last, where it is ~15× faster than
along dim 1 — or as a slice when its channels are one run. A recorded graph gets a gather
(``widen``: Pad + Gather in ONNX) and plain adds.
"""
import torch
from torch import nn

from .constmaps import ConstMap
from .modules import _ADD_RELU, _ADD_RELU_DTYPES, MODE, register, widen


class Join(nn.Module):
    def __init__(self, a: dict, specs: dict):
        super().__init__()
        self.width, self.relu, self.spatial = int(a["width"]), bool(a["relu"]), a["spatial"]
        self.starts = [int(o["start"]) for o in a["operands"]]
        self.n = len(self.starts)
        # operands that cover the whole result in its order: the sum can start from them
        self.full = [s == 0 and int(o["width"]) == self.width
                     for s, o in zip(self.starts, a["operands"])]
        self.register_buffer("vector", None)
        register(self, {k: v for k, v in specs.items() if not k.startswith("map.")})
        self.map = ConstMap(a["map"], specs) if a["term"] == "map" else None
        for i in range(self.n):
            self.register_buffer(f"gather{i}", torch.zeros(self.width, dtype=torch.long),
                                 persistent=False)
        self.inplace = [False] * self.n  # set by the network
        self._pos = [f"pos{i}" for i in range(self.n)]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        with torch.no_grad():
            for i in range(self.n):
                pos, gather = getattr(self, f"pos{i}"), getattr(self, f"gather{i}")
                gather.fill_(len(pos))
                gather[pos] = torch.arange(len(pos), device=pos.device)

    def forward(self, *inputs):
        operands = inputs[:self.n]
        term = self.vector if self.map is None else self.map.get(inputs[self.n:])
        if term is not None and operands and term.dtype != operands[0].dtype:
            term = term.to(operands[0].dtype)  # under autocast: the operands' dtype
        if not operands:  # only constants: the batch size comes from the network input
            return term.expand(inputs[-1].shape[0], *term.shape[1:]).clone()
        if not MODE.eager:
            return self._pure(operands, term)
        out, term = self._eager(operands, term)
        if term is None:
            return out.relu_() if self.relu else out
        if self.relu and _ADD_RELU is not None and out.is_cpu and \
                out.dtype in _ADD_RELU_DTYPES and term.shape[2:] == out.shape[2:]:
            return _ADD_RELU(out, term)  # one pass: the constants cost no extra one
        out = out.add_(term)
        return out.relu_() if self.relu else out

    def _pure(self, operands, term):
        out = None
        for i, x in enumerate(operands):
            if not self.full[i]:
                x = widen(x, getattr(self, f"gather{i}"))
            out = x if out is None else out + x
        if term is not None:
            out = out + term
        return torch.relu(out) if self.relu else out

    def _eager(self, operands, term):
        """The sum in place where allowed; returns it and the part of ``term`` not added."""
        base = -1
        for i in range(self.n):  # an operand the result can be built in
            if self.full[i] and operands[i].shape[2:] == operands[0].shape[2:]:
                if self.inplace[i]:
                    base = i
                    break
                if base < 0:
                    base = i
        if base >= 0 and self.inplace[base]:
            out = operands[base]
        elif base >= 0:
            out = operands[base] + term if term is not None else operands[base].clone()
            term = None
        else:
            out = self._empty(operands, term)
            term = None
        for i in range(self.n):
            if i != base:
                self._add_at(out, i, operands[i])
        return out, term

    def _empty(self, operands, term):
        """A fresh result holding the term (or zeros): the shape of the operand with the most
        pixels, channels_last when an operand is (the stream keeps the convs' layout)."""
        first = max(operands, key=lambda x: x.shape[2:].numel() if x.dim() == 4 else 0)
        shape = (first.shape[0], self.width) + tuple(first.shape[2:])
        if term is not None and term.dim() == 4 and term.shape[2:].numel() > 1:
            shape = shape[:2] + tuple(term.shape[2:])
        cl = any(x.dim() == 4 and x.shape[1] > 1 and
                 x.is_contiguous(memory_format=torch.channels_last) for x in operands)
        out = torch.empty(shape, dtype=first.dtype, device=first.device,
                          memory_format=torch.channels_last if cl else torch.contiguous_format)
        return out.copy_(term.expand(shape)) if term is not None else out.zero_()

    def _add_at(self, out: torch.Tensor, i: int, x: torch.Tensor) -> None:
        start = self.starts[i]
        if x.dim() == 4 and x.shape[2:] != out.shape[2:]:
            x = x.expand(x.shape[0], x.shape[1], *out.shape[2:])  # a per-sample factor
        if start >= 0:
            out[:, start:start + x.shape[1]].add_(x)
            return
        index = self._buffers[self._pos[i]]
        if out.dim() == 4 and out.shape[1] > 1 and \
                out.is_contiguous(memory_format=torch.channels_last) and \
                x.is_contiguous(memory_format=torch.channels_last):
            flat = out.permute(0, 2, 3, 1).reshape(-1, out.shape[1])  # a view, no copy
            flat.index_add_(1, index, x.permute(0, 2, 3, 1).reshape(-1, x.shape[1]))
            return
        out.index_add_(1, index, x)
