"""Filter-ranking criteria, one class per file, found by name.

A criterion scores the filters of a prunable conv, lowest pruned first: from the weights
(``Criterion.scores``) or, for ``from_data`` ones, from a pass over labelled data (the CS pass,
``cs_ranker.CSRanker``). A new criterion is one file in this folder defining a ``Criterion``
subclass with a ``name``; ``registry()`` finds it, and the methods, the scripts' rate flags
(``--prune_rate_<name>``) and the report pick it up from there.
"""
import importlib
import pkgutil

from .base import Criterion


def registry() -> dict[str, type[Criterion]]:
    """Every criterion of this package by name, in their ``order`` (modules imported on first
    use, not when this package is imported)."""
    for info in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{info.name}")
    found, todo = [], list(Criterion.__subclasses__())
    while todo:
        cls = todo.pop()
        todo += cls.__subclasses__()
        if getattr(cls, "name", None):
            found.append(cls)
    return {c.name: c for c in sorted(found, key=lambda c: (c.order, c.name))}


def criterion(name: str) -> Criterion:
    """The criterion called ``name``, e.g. ``criterion("gm")``."""
    known = registry()
    if name not in known:
        raise KeyError(f"unknown criterion {name!r}; known: {', '.join(known)}")
    return known[name]()


__all__ = ["Criterion", "criterion", "registry"]
