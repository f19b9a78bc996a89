"""The one exception of :mod:`vardecouple.data` and the helper that words its messages."""

from __future__ import annotations

from os import PathLike

__all__ = ["CorpusError", "corpus_error"]


class CorpusError(ValueError):
    """Bad corpus input, direction spec or split request.

    The message is one line that names the file (and line number where there is
    one), what was found, and what was expected, e.g.
    ``corpus /x/arz_Arab.txt line 12: empty line; expected one sentence per line``.
    """


def corpus_error(
    where: str | PathLike[str],
    problem: str,
    expected: str,
    *,
    line: int | None = None,
    kind: str = "corpus",
) -> CorpusError:
    """A :class:`CorpusError` reading ``{kind} {where} line {line}: {problem}; expected ...``.

    Args:
        where: the file or folder (or, for ``kind != "corpus"``, the thing) at fault.
        problem: what was found.
        expected: what should have been there.
        line: 1-based line number, when the fault is on one line.
        kind: the first word of the message (``corpus``, ``directions``, ``splits``...).
    """
    loc = f"{kind} {where}" if str(where) else kind
    if line is not None:
        loc += f" line {line}"
    message = f"{loc}: {problem}; expected {expected}"
    return CorpusError(" ".join(message.split()))
