"""Group-level train/dev/test/probe splits with cross-corpus de-duplication."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from .corpus import Corpus
from .directions import Direction, parse_directions
from .errors import corpus_error
from .grouping import group_rows

__all__ = ["SPLIT_NAMES", "Example", "LabelledSentence", "Splits", "make_splits"]

SPLIT_NAMES = ("train", "dev", "test", "probe")


@dataclass(frozen=True)
class Example:
    """One translation example; ``group`` is its de-duplicated row group id."""

    src: str
    tgt: str
    src_text: str
    tgt_text: str
    group: int

    @property
    def direction(self) -> Direction:
        """``Direction(src, tgt)``."""
        return Direction(self.src, self.tgt)


@dataclass(frozen=True)
class LabelledSentence:
    """A probe sentence: label 0 = the standard, 1..m = the low-resource varieties.

    ``group`` is its aligned-row group (its translations share it; -1 when unknown).
    """

    text: str
    variety: str
    label: int
    group: int = -1


@dataclass
class Splits:
    """The result of :func:`make_splits`.

    ``groups`` counts row groups per split (``train``, ``dev``, ``test``, ``probe``)
    and ``dropped`` (training-side groups removed for overlapping the fixed test
    corpora). ``stats`` holds row-level counts (see :meth:`describe`).
    """

    train: list[Example]
    dev: list[Example]
    test: list[Example]
    probe: list[LabelledSentence]
    groups: dict[str, int] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=dict)
    directions: list[Direction] = field(default_factory=list)

    def describe(self) -> str:
        """A short multi-line summary: rows, groups, duplicates, examples per direction."""
        s, g = self.stats, self.groups
        lines = [
            f"rows: {s.get('rows', 0)} in {s.get('groups', 0)} groups "
            f"({s.get('grouped_rows', 0)} rows share a normalised sentence with an earlier row; "
            f"{s.get('duplicate_rows', 0)} rows dropped as duplicates, adding nothing new; "
            f"{s.get('duplicate_examples', 0)} repeated examples dropped)",
            f"test corpora: {s.get('test_corpus_rows', 0)} rows; dropped "
            f"{g.get('dropped', 0)} training-side groups ({s.get('test_overlap_rows', 0)} rows) "
            "sharing a sentence with them",
            "groups: "
            + ", ".join(f"{k} {g.get(k, 0)}" for k in SPLIT_NAMES)
            + f" (seed {s.get('seed', 0)})",
        ]
        dirs = self.directions or list(
            dict.fromkeys(e.direction for e in self.train + self.dev + self.test)
        )
        width = max([len(str(d)) for d in dirs] + [9])
        lines.append(f"{'examples':<{width}} {'train':>7} {'dev':>6} {'test':>6}")
        counts = {n: Counter(e.direction for e in getattr(self, n)) for n in SPLIT_NAMES[:3]}
        for d in dirs:
            n = {k: counts[k][d] for k in counts}
            lines.append(f"{d!s:<{width}} {n['train']:>7} {n['dev']:>6} {n['test']:>6}")
        probe = Counter(p.variety for p in self.probe)
        lines.append(
            f"probe: {len(self.probe)} sentences ("
            + ", ".join(f"{v} {n}" for v, n in probe.items())
            + ")"
        )
        return "\n".join(lines)


def _fail(problem: str, expected: str) -> Exception:
    return corpus_error("", problem, expected, kind="splits")


def _directions(
    directions: str | Sequence[str | Direction],
    standard: str,
    varieties: list[str],
    pivot: str | None,
) -> list[Direction]:
    if isinstance(directions, str) or any(isinstance(d, str) for d in directions):
        return parse_directions(
            directions if isinstance(directions, str) else [str(d) for d in directions],
            standard=standard,
            varieties=varieties,
            pivot=pivot,
        )
    known = {standard, *varieties, *([pivot] if pivot else [])}
    out = list(dict.fromkeys(directions))
    for d in out:
        if d.src not in known or d.tgt not in known:
            raise _fail(
                f"direction {d} uses a code outside standard/varieties/pivot",
                f"codes among {', '.join(sorted(known))}",
            )
    if not out:
        raise _fail("no directions", "at least one direction")
    return out


def _restrict(corpora: Sequence[Corpus], codes: list[str]) -> list[dict[str, str]]:
    return [
        {c: row[c] for c in codes if c in row}
        for corpus in corpora
        for row in corpus.rows
        if any(c in row for c in codes)
    ]


def make_splits(
    corpora: Sequence[Corpus],
    *,
    standard: str,
    varieties: Sequence[str],
    directions: str | Sequence[str | Direction],
    pivot: str | None = None,
    dev_rows: int = 100,
    probe_rows: int = 100,
    test_rows: int = 0,
    test_corpora: Sequence[Corpus] = (),
    seed: int = 0,
) -> Splits:
    """Pool ``corpora``, group duplicate rows, and carve test/dev/probe/train by group.

    Only the varieties ``standard``, ``varieties`` and ``pivot`` are kept (rows with
    none of them are ignored). Rows sharing a normalised sentence in any of them
    (:func:`~vardecouple.data.grouping.group_rows`, across corpora too) form one
    group, and a group lies wholly in one split, so no sentence, in any variety,
    is in two splits. With ``test_corpora`` those rows are the test set and every
    training-side group sharing a sentence with them is dropped; otherwise
    ``test_rows`` groups are carved. Carving walks the sorted group ids shuffled
    by ``random.Random(seed)`` and takes, in this order, the first ``test_rows``
    and ``dev_rows`` groups that yield an example (both sides of a direction) and
    the first ``probe_rows`` groups holding a standard *and* a low-resource
    sentence (a parallel probe: same content in both classes); every other group
    is train (groups yielding no example, e.g. pivot–standard rows pooled for
    de-duplication, only link duplicates).

    Train/dev/test get one :class:`Example` per direction per row having both
    sides (identical ``(src_text, tgt_text)`` pairs of a direction kept once); the
    probe gets one :class:`LabelledSentence` per standard/low-resource sentence
    (label 0 = standard, i = ``varieties[i-1]``; the pivot is not a class).

    Args:
        directions: :class:`Direction` objects, ``src->tgt`` strings, or a spec
            for :func:`~vardecouple.data.parse_directions` (``"standard<->variety"``).

    Raises:
        CorpusError: a variety in no corpus, a bad direction, negative counts,
            ``test_rows`` with ``test_corpora``, or more groups asked than exist.
    """
    varieties = [varieties] if isinstance(varieties, str) else list(varieties)
    dirs = _directions(directions, standard, varieties, pivot)
    codes = [standard, *varieties, *([pivot] if pivot else [])]
    if len(set(codes)) != len(codes):
        raise _fail(
            f"a code repeats among standard/varieties/pivot ({', '.join(codes)})", "distinct codes"
        )
    if not corpora:
        raise _fail("no training corpora", "at least one Corpus")
    present = {c for corpus in corpora for c in corpus.varieties}
    names = ", ".join(c.name for c in corpora)
    for role, code in [
        ("standard", standard),
        *(("low-resource", v) for v in varieties),
        *([("pivot", pivot)] if pivot else []),
    ]:
        if code not in present:
            raise _fail(
                f"{role} variety {code} is in no corpus ({names})",
                f"one of {', '.join(sorted(present))}",
            )
    for name, n in (("dev_rows", dev_rows), ("probe_rows", probe_rows), ("test_rows", test_rows)):
        if not isinstance(n, int) or n < 0:
            raise _fail(f"{name}={n!r}", "a number of row groups >= 0")
    if test_corpora and test_rows:
        raise _fail(
            f"test_rows={test_rows} and test_corpora given",
            "either a fixed test set (test_corpora) or test_rows carved groups",
        )

    rows = _restrict(corpora, codes)
    n_train_side = len(rows)
    rows += _restrict(test_corpora, codes)
    gid = group_rows(rows)
    test_groups = {gid[i] for i in range(n_train_side, len(rows))}
    side_groups = sorted({gid[i] for i in range(n_train_side)})
    candidates = [g for g in side_groups if g not in test_groups]
    dropped = len(side_groups) - len(candidates)
    usable: dict[str, set[int]] = {"yields": set(), "standard": set(), "low": set()}
    for i in range(n_train_side):
        row = rows[i]
        if any(d.src in row and d.tgt in row for d in dirs):
            usable["yields"].add(gid[i])
        if standard in row:
            usable["standard"].add(gid[i])
        if any(v in row for v in varieties):
            usable["low"].add(gid[i])
    eligible = {
        "test": usable["yields"],
        "dev": usable["yields"],
        "probe": usable["standard"] & usable["low"],
    }
    order = list(candidates)
    random.Random(seed).shuffle(order)
    split_of: dict[int, str] = dict.fromkeys(test_groups, "test")
    for name, n in (("test", test_rows), ("dev", dev_rows), ("probe", probe_rows)):
        pool = [g for g in order if g not in split_of and g in eligible[name]]
        if n > len(pool):
            why = (
                "with both sides of a direction"
                if name != "probe"
                else ("with a standard and a low-resource sentence")
            )
            raise _fail(
                f"{n} {name} row groups asked but only {len(pool)} groups {why} are left "
                f"({len(candidates)} groups in all; test {test_rows}, dev {dev_rows}, "
                f"probe {probe_rows} asked, carved in that order)",
                f"at most {len(pool)} {name} groups, or more data",
            )
        split_of.update(dict.fromkeys(pool[:n], name))
    for g in candidates:
        split_of.setdefault(g, "train")

    out: dict[str, list] = {name: [] for name in SPLIT_NAMES}
    seen: set[tuple] = set()
    labels = {code: i for i, code in enumerate([standard, *varieties])}
    duplicate_rows = duplicate_examples = overlap_rows = 0
    for i in sorted(range(len(rows)), key=lambda i: (gid[i], i)):
        g, row = gid[i], rows[i]
        split = split_of[g]
        if i < n_train_side and g in test_groups:
            overlap_rows += 1
            continue
        items: list[tuple[tuple, Example | LabelledSentence]]
        if split == "probe":
            items = [
                (("probe", c, row[c]), LabelledSentence(row[c], c, label, g))
                for c, label in labels.items()
                if c in row
            ]
        else:
            items = [
                ((d, row[d.src], row[d.tgt]), Example(d.src, d.tgt, row[d.src], row[d.tgt], g))
                for d in dirs
                if d.src in row and d.tgt in row
            ]
        fresh = [(key, item) for key, item in items if key not in seen]
        seen.update(key for key, _ in fresh)
        out[split].extend(item for _, item in fresh)
        if split != "probe":
            duplicate_examples += len(items) - len(fresh)
        duplicate_rows += int(bool(items) and not fresh)

    counts = Counter(split_of[g] for g in side_groups if g not in test_groups)
    groups = {name: counts.get(name, 0) for name in SPLIT_NAMES}
    groups["test"] += len(test_groups)
    groups["dropped"] = dropped
    stats = {
        "rows": n_train_side,
        "groups": len(side_groups),
        "grouped_rows": n_train_side - len(side_groups),
        "duplicate_rows": duplicate_rows,
        "duplicate_examples": duplicate_examples,
        "test_corpus_rows": len(rows) - n_train_side,
        "test_overlap_rows": overlap_rows,
        "seed": seed,
    }
    return Splits(out["train"], out["dev"], out["test"], out["probe"], groups, stats, dirs)
