"""``coupling="residual"``: the Pruner's groups of convs that select together.

The groups themselves are the residual streams of the model's one traced graph
(``compaction.streams``); how a group selects is ``method.groups``. A network with no
residual sum of prunable convs' outputs is pruned uncoupled, with one warning rather than a
refusal: coupling changes how channels are chosen, not what a run means, so a grid or a script
that asks for it over several architectures (a VGG beside the ResNets) keeps working, and the
warning says that nothing was coupled.
"""
from ..compaction.inputs import declared_input_shape
from ..compaction.streams import residual_groups
from ..errors import UserError
from ..method.groups import COUPLINGS
from . import options


def coupling_of(value) -> str:
    """``coupling=``, checked: one of ``COUPLINGS`` (the closest named when misspelt)."""
    return options.choice("coupling", value, COUPLINGS)


def coupled_groups(graph, convs: list, shape, model_name: str, log) -> list:
    """The groups (``method.groups.Group``) of ``convs`` whose outputs meet in residual sums,
    found in ``graph`` traced at ``shape``; one warning line per stream left uncoupled, or one
    saying that nothing is coupled at all (``shape`` None: the size the model declares)."""
    shape = shape or graph.input_shape or declared_input_shape(graph.model)
    if shape is None:
        raise UserError("coupling='residual' needs input_shape=(C, H, W) (or cs_data): the "
                        "residual streams are found in the model traced at that size")
    streams = residual_groups(graph, convs, shape)
    for line in streams.notes:
        log(f"warning: {line}")
    if not streams.groups and not streams.notes:
        log(f"warning: nothing to couple: this {model_name} has no residual sum of prunable "
            "convs' outputs; the run proceeds uncoupled")
    if streams.groups:
        log("coupled selection: " + "; ".join(
            f"{g.name} ({len(g.members)} convs, {g.width} channels)" for g in streams.groups))
    return streams.groups
