"""Union-find grouping of rows that share a normalised sentence (in any variety)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .normalise import normalise

__all__ = ["group_rows", "row_keys"]


def row_keys(row: Mapping[str, str]) -> set[str]:
    """The non-empty normalised sentences of ``row`` (all its varieties)."""
    return {k for k in map(normalise, row.values()) if k}


def group_rows(rows: Sequence[Mapping[str, str]]) -> list[int]:
    """A group id per row: rows sharing a normalised sentence, in any variety, are
    in one group (transitively).

    The key is the normalised text alone, not (variety, text): a sentence written
    identically in two varieties (common for short MSA/dialect or deu/nds
    sentences) links its rows too, so no string reaches two splits. Sentences that
    normalise to ``""`` (punctuation only) link nothing. Group ids are ``0..G-1``
    numbered by each group's first row, so they depend only on the row order.
    """
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    for i, row in enumerate(rows):
        for key in row_keys(row):
            j = first.setdefault(key, i)
            if j != i:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the root is the smallest row index
    ids: dict[int, int] = {}
    return [ids.setdefault(find(i), len(ids)) for i in range(len(rows))]
