"""The compactor's op kinds: one ``Rule`` object each, registered by kind.

Each file is one family of ops (Torch-Pruning's per-op pruners, timm's registries): a rule
class per kind says how a node of its kind is recognised (``classify``), which input channels
it needs (``needs``), what the compact graph makes of it (``convert``), and what the compact
nodes it emits cost (``cost``). A new op is one rule in one of these files (or a new file
imported here); the graph (``tracing.ModelGraph``), the liveness pass, the converter and the
cost count find it through ``REGISTRY``.
"""
from . import (activations, arithmetic, batchnorm, boundaries, conv1d, convolution,  # noqa: F401
               identities, linear, opaque, pools, reductions, routing, views, zeros)
from .registry import (COSTS, REGISTRY, channelwise_node, claimants, classify, owner,
                       register_rule, rule_of)
from .rule import Rule

__all__ = ["COSTS", "REGISTRY", "Rule", "channelwise_node", "claimants", "classify", "owner",
           "register_rule", "rule_of"]
