"""The probes stage: estimators that find the standard variety's subspace in labelled
hidden states, by name.

- :mod:`.base`: the estimator protocol (fit / update / state_dict) and shared statistics;
- :mod:`.statistics`: closed-form estimators (``pca``, ``mean-diff``, ``leace``, ``lda``,
  ``random``);
- :mod:`.variational`: the paper's gated variational probe (``variational``);
- :mod:`.generative`: its generative reading (``variational-generative``);
- :mod:`.online`: the held-out probe set read through a model, refreshed during training;
- :mod:`.synthetic`: planted varieties with a known answer, to test estimators.

Each estimator registers itself (:func:`~vardecouple.probes.registry.register`);
:data:`ESTIMATORS` lists the names in registration order.
"""

# registration order is the order of ESTIMATORS: the paper's probe first
# isort: off
from vardecouple.probes import variational  # noqa: F401
from vardecouple.probes import generative, statistics  # noqa: F401

# isort: on
from vardecouple.probes.base import SubspaceEstimator
from vardecouple.probes.registry import check_estimator, estimator_names, make_estimator

ESTIMATORS: tuple[str, ...] = estimator_names()
"""Names accepted by :func:`make_estimator`."""

__all__ = ["ESTIMATORS", "SubspaceEstimator", "check_estimator", "make_estimator"]
