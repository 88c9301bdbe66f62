"""Compaction: a soft-pruned CNN → a smaller network with the same eval-mode outputs.

In the soft-pruned network a pruned filter's weights are zero, but its channel is not silent:
its BN maps the zero output to the constant ``beta - gamma * mean / sqrt(var + eps)`` (then
the activation), and that constant flows on. The compactor walks the network's fx graph,
tracking every channel as computed or constant (``state``), and builds a compact graph that
computes only what the output depends on and carries every constant exactly. The compact
network is generated from a plain-data manifest (``network``, ``storage``; its grammar in
``manifest``), exports to a torch.export program, ONNX and TorchScript (``export``), and its
cost comes from the same walk (``cost``).

What it has no rule for — an attention's matmul, a ``GroupNorm``, a module fx cannot trace
into — it keeps whole (``kept``): run as in the dense network, the convs feeding it unpruned,
named in one line; such a network is saved as a torch.export program, not as plain data.

Modules: ``tracing`` (the model's one fx graph: the prunable convs, and every node's shape
and op; ``find_prunable_convs``), ``inputs`` (the input size a model declares), ``nodes``
(what is read off an fx node), ``rules`` (one rule per op kind, in one registry), ``kept``
(what is kept whole), ``state``, ``liveness``, ``builder``, ``converter`` (the
walk), ``fullwidth`` and ``materialise`` (what the rules share), ``modules``/``layers``/
``joins``/``constmaps`` (what the compact network is made of), ``network``, ``manifest``,
``storage``, ``export``, ``cost``, ``exactness`` (the compact network against the
soft-pruned one). What a run reports of a compaction is ``utils.report.figures``;
compacting a run's checkpoint, ``utils.run.compact_run``.
"""
from .cost import NetworkCost, compact_cost, network_cost
from .export import check_onnx_exporter, export_onnx, export_pt2, export_torchscript
from .exactness import max_rel_error
from .kept import kept_line
from .network import CompactNet, compact_model
from .storage import FORMAT, FORMAT_VERSION, load_compact, save_compact
from .tracing import ModelGraph, find_prunable_convs

__all__ = ["CompactNet", "FORMAT", "FORMAT_VERSION", "ModelGraph", "NetworkCost",
           "check_onnx_exporter", "compact_cost", "compact_model", "export_onnx", "export_pt2",
           "export_torchscript", "find_prunable_convs", "kept_line", "load_compact",
           "max_rel_error", "network_cost", "save_compact"]
