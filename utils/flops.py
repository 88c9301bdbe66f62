"""Analytic cost of a soft-pruned network, counting the selected filters as removed.

FLOPs are multiply–accumulates of convolutions and linear layers, the convention of the
FPGM/SFP tables (CIFAR ResNet-56: 125.5 M). A removed filter drops its conv's output channel
and BN channel, and the matching input channels of the conv it feeds channel-wise (``source``
in utils.graph); inputs that come from a residual sum keep their full width.
"""
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class _Layer:
    name: str
    module: nn.Module
    out_hw: int  # output positions per sample (1 for Linear)


def layer_geometry(model: nn.Module, input_shape: tuple[int, ...]) -> list[_Layer]:
    """One dummy forward (batch 1) to learn every conv's output size."""
    layers, handles = [], []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            def hook(mod, inp, out, name=name):
                hw = out.shape[2] * out.shape[3] if out.dim() == 4 else 1
                layers.append(_Layer(name, mod, hw))
            handles.append(m.register_forward_hook(hook))
    was_training = model.training
    p = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return layers


def effective_cost(model: nn.Module, geometry: list[_Layer], convs, removed: dict[str, int]
                   ) -> tuple[int, int]:
    """(FLOPs, parameters) with ``removed[name]`` filters of each prunable conv removed."""
    source = {c.name: c.source for c in convs}
    bn_of = {c.bn_name: c.name for c in convs}
    flops = 0
    for layer in geometry:
        m = layer.module
        if isinstance(m, nn.Conv2d):
            cout = m.out_channels - removed.get(layer.name, 0)
            cin = m.in_channels - removed.get(source.get(layer.name) or "", 0)
            flops += layer.out_hw * cout * (cin // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            flops += m.in_features * m.out_features
    params = 0
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if not own:
            continue
        if isinstance(m, nn.Conv2d):
            cout = m.out_channels - removed.get(name, 0)
            cin = m.in_channels - removed.get(source.get(name) or "", 0)
            params += cout * (cin // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            params += cout if m.bias is not None else 0
        elif isinstance(m, nn.BatchNorm2d) and name in bn_of:
            params += 2 * (m.num_features - removed.get(bn_of[name], 0))
        else:
            params += sum(p.numel() for p in own)
    return flops, params
