"""vardecouple: decouple a dominant standard variety's subspace while fine-tuning
language models on low-resource language varieties.

The names a library user needs, importable from here (each is loaded on first use, so
that ``import vardecouple`` and ``vardecouple --help`` stay fast)::

    from vardecouple import (
        DecouplerConfig, OnlineDecoupler, Subspace, add_decoupling, erasing, load_corpus,
        load_model, load_subspace, make_estimator, projection_penalty,
    )

The pipeline, one package per stage: ``data`` → ``model`` → ``subspace``/``probes`` →
``decouple`` → ``train`` → ``evaluate`` → ``analysis`` → ``experiment``/``report`` → ``cli``
(``docs/architecture.md``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "DecouplerConfig": "vardecouple.decouple",
    "OnlineDecoupler": "vardecouple.decouple",
    "Subspace": "vardecouple.subspace",
    "add_decoupling": "vardecouple.train.hf",
    "erasing": "vardecouple.erase",
    "load_subspace": "vardecouple.probes.artifact",
    "load_corpus": "vardecouple.data",
    "load_model": "vardecouple.model",
    "make_estimator": "vardecouple.probes",
    "projection_penalty": "vardecouple.decouple",
}
__all__ = [
    "DecouplerConfig",
    "OnlineDecoupler",
    "Subspace",
    "__version__",
    "add_decoupling",
    "erasing",
    "load_corpus",
    "load_model",
    "load_subspace",
    "make_estimator",
    "projection_penalty",
]

if TYPE_CHECKING:
    from vardecouple.data import load_corpus
    from vardecouple.decouple import DecouplerConfig, OnlineDecoupler, projection_penalty
    from vardecouple.erase import erasing
    from vardecouple.model import load_model
    from vardecouple.probes import make_estimator
    from vardecouple.probes.artifact import load_subspace
    from vardecouple.subspace import Subspace
    from vardecouple.train.hf import add_decoupling


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'vardecouple' has no attribute {name!r}")
