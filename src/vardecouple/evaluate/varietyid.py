"""Which variety is a hypothesis written in? A character n-gram variety identifier.

Used for the ``target_variety_rate`` of a direction: the share of hypotheses a
classifier trained on held-out labelled sentences assigns to the target
variety. Features are TF-IDF weights of ``char_wb`` n-grams (n = 1..4, within
word boundaries) with sublinear term frequency, ``tf = 1 + log(count)``, and
``idf(t) = 1 + log((1 + N) / (1 + df(t)))``, each row L2-normalised. The
classifier is linear: one-vs-rest ``LinearSVC`` (default) or multinomial
``LogisticRegression``; ``predict(x) = argmax_c (w_c · φ(x) + b_c)``.

A closed-set classifier labels *anything* as one of its classes (English text
copied into an Arabic direction would count as some dialect), so a script gate
comes first: a text with no letters, or whose share of letters in the scripts
seen in training is below ``script_gate`` (default 0.3), is predicted
:data:`OTHER`. (At 0.5, one gold FLORES apc sentence of 4,048, half of it Latin
TV-show names, was gated; at 0.3 none is, while copied English has share 0.)
Scripts are the first word of each letter's Unicode name (``ARABIC``, ``LATIN``).

Nothing is pickled: the model retrains in seconds; :meth:`VarietyIdentifier.describe`
records what it was trained on and how.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.svm import LinearSVC

__all__ = ["OTHER", "VarietyIdentifier"]

#: prediction for texts outside the training scripts (or without letters)
OTHER = "<other>"
Classifier = Literal["linear-svc", "logreg"]


def _scripts(text: str) -> Counter[str]:
    """Letters per script (first word of the Unicode character name)."""
    return Counter(unicodedata.name(ch, "UNKNOWN").split(" ", 1)[0] for ch in text if ch.isalpha())


def _texts(texts: Sequence[str], what: str = "texts") -> list[str]:
    if isinstance(texts, str):
        raise ValueError(f"{what} must be a list of strings, not one string")
    out = list(texts)
    if not out:
        raise ValueError(f"no {what}: need at least one")
    if not all(isinstance(t, str) for t in out):
        raise ValueError(f"{what} must be strings")
    return out


class VarietyIdentifier:
    """Character n-gram TF-IDF + linear classifier over variety labels.

    Args:
        ngram_range: character n-gram orders (``char_wb`` analyser).
        min_df: drop n-grams seen in fewer training texts.
        max_features: keep only the most frequent n-grams (``None``: all).
        classifier: ``linear-svc`` (fast, default) or ``logreg`` (multinomial).
        C: inverse regularisation strength of the classifier.
        script_gate: a text is :data:`OTHER` when the share of its letters in
            the training scripts is below this (``None`` disables the gate).
        seed: ``random_state`` of the classifier (results are deterministic).
    """

    def __init__(
        self,
        *,
        ngram_range: tuple[int, int] = (1, 4),
        min_df: int = 1,
        max_features: int | None = None,
        classifier: Classifier = "linear-svc",
        C: float = 1.0,
        script_gate: float | None = 0.3,
        seed: int = 0,
    ) -> None:
        if classifier not in ("linear-svc", "logreg"):
            raise ValueError(f"unknown classifier {classifier!r}; expected linear-svc or logreg")
        if script_gate is not None and not 0.0 <= script_gate <= 1.0:
            raise ValueError(f"script_gate must be in [0, 1] or None, got {script_gate}")
        self.settings: dict[str, Any] = {
            "analyzer": "char_wb",
            "ngram_range": list(ngram_range),
            "sublinear_tf": True,
            "lowercase": True,
            "min_df": min_df,
            "max_features": max_features,
            "classifier": classifier,
            "C": C,
            "script_gate": script_gate,
            "seed": seed,
        }
        self._vec: TfidfVectorizer | None = None
        self._clf: LinearSVC | LogisticRegression | None = None
        self.classes: list[str] = []
        self.scripts: list[str] = []
        self.n_train = 0
        self._train_counts: dict[str, int] = {}

    def fit(self, texts: Sequence[str], labels: Sequence[str]) -> VarietyIdentifier:
        """Train on labelled sentences (at least two distinct labels)."""
        texts = _texts(texts)
        labels = [str(y) for y in _texts(labels, "labels")]
        if len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels; need one label each")
        counts = Counter(labels)
        if len(counts) < 2:
            raise ValueError(f"need at least 2 classes to train, got {sorted(counts)}")
        if OTHER in counts:
            raise ValueError(f"{OTHER!r} is reserved for out-of-script texts; rename that label")
        s = self.settings
        vec = TfidfVectorizer(
            analyzer="char_wb",
            ngram_range=tuple(s["ngram_range"]),
            sublinear_tf=True,
            min_df=s["min_df"],
            max_features=s["max_features"],
            lowercase=True,
        )
        X = vec.fit_transform(texts)
        if s["classifier"] == "linear-svc":
            clf: LinearSVC | LogisticRegression = LinearSVC(C=s["C"], random_state=s["seed"])
        else:
            clf = LogisticRegression(C=s["C"], max_iter=2000, random_state=s["seed"])
        clf.fit(X, labels)
        letters = sum((_scripts(t) for t in texts), Counter())
        total = sum(letters.values())
        # scripts holding ≥ 1% of the training letters
        self.scripts = sorted(k for k, v in letters.items() if total and v / total >= 0.01)
        self._vec, self._clf = vec, clf
        self.classes = [str(c) for c in clf.classes_]
        self.n_train = len(texts)
        self._train_counts = {c: counts[c] for c in self.classes}
        return self

    def _fitted(self) -> tuple[TfidfVectorizer, LinearSVC | LogisticRegression]:
        if self._vec is None or self._clf is None:
            raise RuntimeError("VarietyIdentifier is not trained: call fit(texts, labels) first")
        return self._vec, self._clf

    def _in_script(self, text: str) -> bool:
        gate = self.settings["script_gate"]
        if gate is None:
            return True
        counts = _scripts(text)
        n = sum(counts.values())
        return n > 0 and sum(counts[k] for k in self.scripts) / n >= gate

    def predict(self, texts: Sequence[str]) -> list[str]:
        """A class label per text, or :data:`OTHER` for out-of-script texts."""
        vec, clf = self._fitted()
        texts = _texts(texts)
        preds = [str(p) for p in clf.predict(vec.transform(texts))]
        return [p if self._in_script(t) else OTHER for p, t in zip(preds, texts, strict=True)]

    def _known(self, labels: Sequence[str], n: int) -> list[str]:
        labels = [str(y) for y in _texts(labels, "labels")]
        if len(labels) != n:
            raise ValueError(f"{n} texts but {len(labels)} labels; need one label each")
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise ValueError(f"labels not seen in training: {unknown}; known: {self.classes}")
        return labels

    def accuracy(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        """Share of texts predicted as their label (:data:`OTHER` counts as wrong)."""
        preds = self.predict(texts)
        labels = self._known(labels, len(preds))
        return float(np.mean([p == y for p, y in zip(preds, labels, strict=True)]))

    def balanced_accuracy(self, texts: Sequence[str], labels: Sequence[str]) -> float:
        """Mean over the true classes present of per-class recall."""
        conf = self.confusion(texts, labels)
        recalls = [row[y] / sum(row.values()) for y, row in conf.items() if sum(row.values())]
        return float(np.mean(recalls))

    def confusion(self, texts: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, int]]:
        """``{true: {predicted: count}}`` over all classes (columns also :data:`OTHER`)."""
        preds = self.predict(texts)
        labels = self._known(labels, len(preds))
        cols = [*self.classes, OTHER]
        out = {y: dict.fromkeys(cols, 0) for y in self.classes}
        for p, y in zip(preds, labels, strict=True):
            out[y][p] += 1
        return out

    def _check_label(self, label: str, role: str) -> None:
        self._fitted()
        if label not in self.classes:
            raise ValueError(f"unknown {role} label {label!r}; known: {self.classes}")

    def target_rate(self, hyps: Sequence[str], target: str) -> float:
        """Share of hypotheses predicted as ``target``."""
        self._check_label(target, "target")
        return float(np.mean([p == target for p in self.predict(_texts(hyps, "hypotheses"))]))

    def rate_vs(self, hyps: Sequence[str], target: str, standard: str) -> dict[str, float]:
        """Shares predicted as ``target``, as ``standard``, and as anything else (sum 1)."""
        self._check_label(target, "target")
        self._check_label(standard, "standard")
        if target == standard:
            raise ValueError(f"target and standard are both {target!r}")
        preds = self.predict(_texts(hyps, "hypotheses"))
        t = float(np.mean([p == target for p in preds]))
        s = float(np.mean([p == standard for p in preds]))
        o = float(np.mean([p not in (target, standard) for p in preds]))
        return {"target": t, "standard": s, "other": o}

    def describe(self) -> dict[str, Any]:
        """JSON-ready record: classes, training size per class, n_features, settings."""
        vec, _ = self._fitted()
        return {
            "classes": list(self.classes),
            "n_train": self.n_train,
            "n_train_per_class": dict(self._train_counts),
            "n_features": len(vec.vocabulary_),
            "scripts": list(self.scripts),
            "settings": dict(self.settings),
        }
