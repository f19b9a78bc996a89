"""Translation directions (``src->tgt``) and the specs that expand into them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import corpus_error

__all__ = ["DIRECTION_SPECS", "Direction", "parse_directions"]

#: Named specs accepted by :func:`parse_directions`.
DIRECTION_SPECS = (
    "standard<->variety",
    "standard->variety",
    "variety->standard",
    "pivot->variety",
    "variety->pivot",
    "pivot<->variety",
)


@dataclass(frozen=True)
class Direction:
    """A translation direction between two variety codes."""

    src: str
    tgt: str

    def __str__(self) -> str:
        return f"{self.src}->{self.tgt}"

    @classmethod
    def parse(cls, text: str) -> Direction:
        """``Direction.parse("arb_Arab->arz_Arab")``; spaces around ``->`` are allowed.

        Raises:
            CorpusError: not exactly one ``->`` with a code on each side, or src == tgt.
        """
        parts = [p.strip() for p in text.split("->")]
        if len(parts) != 2 or not all(parts) or any(" " in p or "<" in p for p in parts):
            raise corpus_error(
                text, "not a direction", "src->tgt, e.g. arb_Arab->arz_Arab", kind="direction"
            )
        if parts[0] == parts[1]:
            raise corpus_error(
                text, "source equals target", "two different varieties", kind="direction"
            )
        return cls(parts[0], parts[1])


def _expand(
    item: str, standard: str, varieties: Sequence[str], pivot: str | None
) -> list[Direction]:
    if item not in DIRECTION_SPECS:
        return []
    if "pivot" in item and pivot is None:
        raise corpus_error(
            item, "needs a pivot but pivot=None", "a pivot code (e.g. eng_Latn)", kind="directions"
        )
    other = standard if "standard" in item else pivot
    assert other is not None
    out: list[Direction] = []
    for v in varieties:
        if item.startswith(("standard->", "standard<->", "pivot->", "pivot<->")):
            out.append(Direction(other, v))
        if "<->" in item or item.startswith("variety->"):
            out.append(Direction(v, other))
    return out


def parse_directions(
    spec: str | Sequence[str],
    *,
    standard: str,
    varieties: Sequence[str],
    pivot: str | None = None,
) -> list[Direction]:
    """Expand a direction spec into an ordered list of :class:`Direction` (no repeats).

    ``spec`` is a named spec, a ``src->tgt`` string, or a comma-separated string /
    list mixing both. Named specs (for each low-resource variety ``v`` in order):

    - ``standard<->variety``: ``standard->v``, ``v->standard`` (the paper);
    - ``pivot->variety``: ``pivot->v``; ``pivot<->variety``: ``pivot->v``, ``v->pivot``;
    - ``standard->variety``, ``variety->standard``, ``variety->pivot``: one way.

    Raises:
        CorpusError: an unknown code or spec, a pivot spec without a pivot, the
            standard or pivot listed among the varieties, or no directions.
    """
    varieties = [varieties] if isinstance(varieties, str) else list(varieties)
    if not varieties:
        raise corpus_error(
            "", "no low-resource varieties", "at least one variety code", kind="directions"
        )
    if standard in varieties:
        raise corpus_error(
            "",
            f"standard {standard} is also listed as a low-resource variety",
            "the standard apart from the varieties",
            kind="directions",
        )
    if pivot is not None and (pivot == standard or pivot in varieties):
        raise corpus_error(
            "",
            f"pivot {pivot} is also the standard or a variety",
            "a third language as pivot",
            kind="directions",
        )
    known = [standard, *varieties, *([pivot] if pivot else [])]
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[Direction] = []
    for raw in items:
        item = str(raw).strip()
        expanded = _expand(item, standard, varieties, pivot)
        if not expanded:
            if "->" not in item or "<->" in item:
                raise corpus_error(
                    item,
                    "unknown direction spec",
                    f"src->tgt or one of {', '.join(DIRECTION_SPECS)}",
                    kind="directions",
                )
            d = Direction.parse(item)
            for code in (d.src, d.tgt):
                if code not in known:
                    raise corpus_error(
                        item,
                        f"unknown variety {code}",
                        f"one of {', '.join(known)}",
                        kind="directions",
                    )
            expanded = [d]
        out.extend(d for d in expanded if d not in out)
    if not out:
        raise corpus_error(str(spec), "no directions", "at least one direction", kind="directions")
    return out
