"""The :class:`Corpus`: aligned rows of sentences keyed by variety code."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import corpus_error

__all__ = ["CODE_PATTERN", "Corpus", "is_variety_code"]

#: ``<ISO 639-3>_<ISO 15924>[_<ISO 3166>]``, e.g. ``arb_Arab``, ``por_Latn_PT``.
CODE_PATTERN = re.compile(r"^[a-z]{3}_[A-Z][a-z]{3}(_[A-Z]{2})?$")


def is_variety_code(code: str) -> bool:
    """Whether ``code`` looks like ``xxx_Xxxx`` or ``xxx_Xxxx_XX``."""
    return CODE_PATTERN.fullmatch(code) is not None


@dataclass(frozen=True)
class Corpus:
    """Aligned rows of one source.

    Attributes:
        name: a short name (folder or file stem; ``flores200/dev`` for FLORES).
        source: the path it was read from.
        varieties: the variety codes, in file/column order.
        rows: each row maps variety code → sentence; a row may lack some
            varieties (TSV/JSONL/MADAR), never all.
    """

    name: str
    source: str
    varieties: tuple[str, ...]
    rows: tuple[dict[str, str], ...]

    def __len__(self) -> int:
        return len(self.rows)

    def _check(self, codes: Iterable[str]) -> list[str]:
        codes = list(codes)
        unknown = [c for c in codes if c not in self.varieties]
        if unknown:
            raise corpus_error(
                self.source,
                f"unknown variet{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}",
                f"one of {', '.join(self.varieties)}",
            )
        return codes

    def sentences(self, code: str) -> list[str]:
        """The sentences of variety ``code``, in row order (rows lacking it skipped)."""
        self._check([code])
        return [row[code] for row in self.rows if code in row]

    def select(self, codes: Iterable[str]) -> Corpus:
        """A corpus with only the varieties ``codes`` (in that order).

        Rows that keep none of them are dropped.

        Raises:
            CorpusError: a code is not in this corpus, or ``codes`` is empty.
        """
        keep = list(dict.fromkeys(self._check(codes)))
        if not keep:
            raise corpus_error(self.source, "no varieties selected", "at least one variety code")
        rows = tuple(
            {c: row[c] for c in keep if c in row}
            for row in self.rows
            if any(c in row for c in keep)
        )
        return Corpus(self.name, self.source, tuple(keep), rows)
