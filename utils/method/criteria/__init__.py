"""Filter-ranking criteria, one class per file, registered by name.

A criterion scores the filters of a prunable conv, lowest pruned first: from the weights
(``Criterion.scores``) or, for ``from_data`` ones, from a pass over labelled data that the
criterion itself supplies (``Criterion.data_pass``; the CS pass). A criterion is a
``Criterion`` subclass with a ``name``, made known by ``@register_criterion`` — in this folder
(one file each) or in a user's own file; the methods, the scripts' rate flags
(``--prune_rate_<name>``) and the report pick it up from ``registry()``.
"""
import importlib
import re

from ...errors import UserError
from .base import Criterion, ScorePass

_BUILT_IN = ("cs", "norm", "l1", "gm")  # the modules of this folder that register one
_REGISTERED: dict[str, type[Criterion]] = {}


def register_criterion(cls: type[Criterion]) -> type[Criterion]:
    """Class decorator: ``cls`` (a ``Criterion`` subclass with ``name`` and ``title``) is the
    criterion called ``cls.name`` from now on."""
    if not (isinstance(cls, type) and issubclass(cls, Criterion)):
        raise UserError(f"register_criterion takes a Criterion subclass, got {cls!r}")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise UserError(f"{cls.__name__}.name must be a lower-case identifier (it names the "
                        f"criterion's rate option), got {name!r}")
    known = _REGISTERED.get(name)
    if known is not None and _where(known) != _where(cls):
        raise UserError(f"a criterion called {name!r} is registered already ({_where(known)}); "
                        f"give {cls.__name__} another name")
    _REGISTERED[name] = cls
    return cls


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def registry() -> dict[str, type[Criterion]]:
    """Every registered criterion by name, in their ``order`` (the built-in ones imported on
    first use, not when this package is imported)."""
    for name in _BUILT_IN:
        importlib.import_module(f"{__name__}.{name}")
    return dict(sorted(_REGISTERED.items(), key=lambda kv: (kv[1].order, kv[0])))


def criterion(name: str) -> Criterion:
    """The criterion called ``name``, e.g. ``criterion("gm")``."""
    known = registry()
    if name not in known:
        raise KeyError(f"unknown criterion {name!r}; known: {', '.join(known)}")
    return known[name]()


__all__ = ["Criterion", "ScorePass", "criterion", "register_criterion", "registry"]
