"""Where the Pruner's messages go: warnings through Python's ``warnings`` (``PruningWarning``,
pointing at the user's own line), the rest to the ``fsdp_pruning`` logger; and a target's plan
in words."""
import logging
import os
import sys
import warnings

from ..method.budget import TOLERANCE


class PruningWarning(UserWarning):
    """Something the Pruner was asked to do that will not give what the method promises (it
    goes on): FSDP without an optimizer, a CS share the authors' rule drops, classes missing
    from ``cs_data``. Each is warned once (Python's ``warnings``)."""


def to_logging(message: str, echo: bool = True) -> None:
    """Where the Pruner's messages go by default: warnings as ``PruningWarning`` (pointing at
    the user's line that called the package), the rest to the ``fsdp_pruning`` logger (shown
    with ``logging.basicConfig(level=logging.INFO)``)."""
    if message.startswith("warning: "):
        warnings.warn(message.removeprefix("warning: "), PruningWarning,
                      stacklevel=_caller_level())
    else:
        logging.getLogger("fsdp_pruning").info(message)


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside this package (the user's call)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def plan_lines(allocator, plan: dict | None, layers: list) -> list[str]:
    """The log lines of a target's ``plan`` over ``layers``: what it keeps, and a warning where
    it misses the target by more than the tolerance."""
    if allocator is None or plan is None:
        return []
    target, reached = allocator.target, allocator.fraction(plan)
    widths = ", ".join(f"{c.filters - sum(plan[c.name])}/{c.filters}" for c in layers)
    lines = [f"target: {target.fraction:g} of the dense {target.unit}, {target.allocation} "
             f"allocation; the plan keeps {reached:.4f}; filters kept per layer: {widths}"]
    if abs(reached - target.fraction) > TOLERANCE:
        lines.append(f"warning: the plan misses the target by {reached - target.fraction:+.4f} "
                     "of the dense count (docs/methods.md, 'Prune to a budget')")
    return lines
