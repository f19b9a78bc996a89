"""Estimators by name: each estimator class registers itself with :func:`register`.

The registry imports no estimator; :mod:`vardecouple.probes` imports them all, so the
names are complete once the package is imported.
"""

from __future__ import annotations

import difflib
import inspect
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from vardecouple.probes.base import SubspaceEstimator

__all__ = ["check_estimator", "estimator_names", "make_estimator", "register"]

_REGISTRY: dict[str, type[SubspaceEstimator]] = {}
Estimator = TypeVar("Estimator", bound=type)


def register(cls: Estimator) -> Estimator:
    """Class decorator: make ``cls`` (a :class:`SubspaceEstimator` with a ``name``)
    buildable by :func:`make_estimator`."""
    name = cls.name
    if not name or name in _REGISTRY:
        raise ValueError(f"estimator {cls.__name__}: name {name!r} is empty or taken")
    _REGISTRY[name] = cls
    return cls


def estimator_names() -> tuple[str, ...]:
    """Every registered name, in registration order."""
    return tuple(_REGISTRY)


def _keyword_options(cls: type) -> list[str]:
    """Keyword-only constructor options of ``cls``, following ``**kwargs`` up the MRO."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [
            p.name
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names
        ]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names


def check_estimator(name: str, where: str = "estimator") -> str:
    """``name`` if it is a registered estimator, else a ValueError saying ``where`` and
    the closest name."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"{where}: unknown estimator {name!r}{hint}; expected one of {', '.join(_REGISTRY)}"
        )
    return name


def make_estimator(name: str, rank: int, **options: Any) -> SubspaceEstimator:
    """Build the estimator called ``name`` (one of :data:`vardecouple.probes.ESTIMATORS`)
    with ``rank``.

    ``options`` go to the estimator's constructor; unknown options are a ValueError
    naming the ones it accepts.
    """
    cls = _REGISTRY[check_estimator(name)]
    accepted = _keyword_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"estimator {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(rank, **options)
