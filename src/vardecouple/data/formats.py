"""Readers for each corpus format; :func:`~vardecouple.data.load_corpus` picks one.

Every reader returns ``(varieties, rows)`` and raises
:class:`~vardecouple.data.CorpusError` on anything it cannot read unambiguously.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .corpus import is_variety_code
from .errors import corpus_error
from .textfile import read_text_lines

__all__ = [
    "MADAR_COLUMNS",
    "Rows",
    "read_aligned_folder",
    "read_jsonl",
    "read_madar",
    "read_tsv",
]

Rows = tuple[tuple[str, ...], list[dict[str, str]]]

#: The columns of a MADAR parallel-corpus TSV (any order, extra columns allowed).
MADAR_COLUMNS = ("sentID.BTEC", "split", "lang", "sent")

_CODE_HELP = (
    "a variety code like arb_Arab or por_Latn_PT (regex ^[a-z]{3}_[A-Z][a-z]{3}(_[A-Z]{2})?$)"
)
_ALIGNED = "one sentence per line (the files of a line-aligned folder are parallel)"


def _code_of(path: Path, suffixes: Iterable[str]) -> str | None:
    for suffix in suffixes:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.name[: -len(suffix)]
    return None


def read_aligned_folder(folder: Path, suffixes: tuple[str, ...]) -> Rows:
    """Read a folder of line-aligned files ``<code><suffix>`` (other files are ignored).

    Raises:
        CorpusError: no such files, a name that is not a variety code, two files
            for one code, an empty/unreadable file, an empty line, or files of
            different line counts.
    """
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        code = _code_of(path, suffixes)
        if code is None:
            continue
        if not is_variety_code(code):
            raise corpus_error(
                path, f"file name {path.name!r} is not <code>{suffixes[0]}", _CODE_HELP
            )
        if code in files:
            raise corpus_error(
                path,
                f"second file for variety {code} (also {files[code].name})",
                "one file per variety code",
            )
        files[code] = path
    if not files:
        raise corpus_error(
            folder,
            "no corpus files (empty folder)",
            f"files named <code>{' or <code>'.join(suffixes)}, e.g. arb_Arab{suffixes[0]}",
        )
    rows: list[dict[str, str]] | None = None
    first: tuple[Path, int] | None = None
    for code, path in files.items():
        lines = read_text_lines(path, what=_ALIGNED)
        for i, line in enumerate(lines, 1):
            if not line:
                raise corpus_error(path, "empty line", _ALIGNED, line=i)
        if first is None:
            first = (path, len(lines))
            rows = [{} for _ in lines]
        elif len(lines) != first[1]:
            raise corpus_error(
                path,
                f"{len(lines)} line{'s' * (len(lines) != 1)}, but {first[0]} has {first[1]}",
                "the same number of lines in every file of a line-aligned folder",
            )
        assert rows is not None
        for row, line in zip(rows, lines, strict=True):
            row[code] = line
    assert rows is not None
    return tuple(files), rows


def _check_code(path: Path, code: str, line: int, what: str) -> None:
    if not is_variety_code(code):
        raise corpus_error(path, f"{what} {code!r} is not a variety code", _CODE_HELP, line=line)


def read_tsv(path: Path) -> Rows:
    """Read a TSV whose header is variety codes; each later line is a row (empty cell = missing)."""
    lines = read_text_lines(
        path, what="a header of variety codes, then one row per line", strip=False
    )
    header = [c.strip() for c in lines[0].split("\t")]
    if len(header) < 2:
        raise corpus_error(
            path, f"header has {len(header)} column", "2+ tab-separated variety codes", line=1
        )
    for code in header:
        _check_code(path, code, 1, "header column")
    if len(set(header)) != len(header):
        dup = next(c for c in header if header.count(c) > 1)
        raise corpus_error(path, f"variety {dup} twice in the header", "distinct codes", line=1)
    rows: list[dict[str, str]] = []
    for i, line in enumerate(lines[1:], 2):
        if not line.strip():
            raise corpus_error(path, "empty line", "one tab-separated row per line", line=i)
        cells = line.split("\t")
        if len(cells) != len(header):
            raise corpus_error(
                path,
                f"{len(cells)} tab-separated cells",
                f"{len(header)}, one per header column",
                line=i,
            )
        row = {c: s.strip() for c, s in zip(header, cells, strict=True) if s.strip()}
        if not row:
            raise corpus_error(path, "all cells empty", "a sentence in at least one column", line=i)
        rows.append(row)
    if not rows:
        raise corpus_error(path, "a header but no rows", "rows after the header line")
    return tuple(header), rows


def read_jsonl(path: Path) -> Rows:
    """Read JSON Lines, each line an object mapping variety codes to sentences.

    ``null`` and ``""`` values count as missing.
    """
    what = 'one JSON object per line, e.g. {"arb_Arab": "...", "arz_Arab": "..."}'
    varieties: dict[str, None] = {}
    rows: list[dict[str, str]] = []
    for i, line in enumerate(read_text_lines(path, what=what), 1):
        if not line:
            raise corpus_error(path, "empty line", what, line=i)
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise corpus_error(path, f"invalid JSON ({exc.msg})", what, line=i) from exc
        if not isinstance(obj, dict):
            raise corpus_error(path, f"a JSON {type(obj).__name__}", what, line=i)
        row: dict[str, str] = {}
        for code, text in obj.items():
            _check_code(path, code, i, "key")
            if text is None:
                continue
            if not isinstance(text, str):
                raise corpus_error(
                    path, f"value of {code} is a {type(text).__name__}", "a string", line=i
                )
            if text.strip():
                row[code] = text.strip()
                varieties.setdefault(code)
        if not row:
            raise corpus_error(path, "no non-empty sentence", what, line=i)
        rows.append(row)
    return tuple(varieties), rows


def read_madar(paths: list[Path], split: str | None) -> Rows:
    """Read MADAR TSV file(s) (header ``sentID.BTEC, split, lang, sent``).

    Rows of all languages sharing a ``sentID.BTEC`` form one aligned row; the
    ``lang`` values (``MSA``, ``CAI``, ``EN``...) are kept as the variety codes.
    ``split`` keeps only lines whose ``split`` column equals it.

    Raises:
        CorpusError: a missing column, a malformed line, an empty sentence, a
            repeated (sentID, lang) pair, or no line of ``split``.
    """
    header_help = "the MADAR header " + "<TAB>".join(MADAR_COLUMNS)
    rows: dict[str, dict[str, str]] = {}
    seen: dict[tuple[str, str], tuple[Path, int]] = {}
    varieties: dict[str, None] = {}
    splits: dict[str, None] = {}
    for path in paths:
        lines = read_text_lines(
            path, what=header_help + ", then one sentence per line", strip=False
        )
        header = [c.strip() for c in lines[0].split("\t")]
        missing = [c for c in MADAR_COLUMNS if c not in header]
        if missing:
            raise corpus_error(
                path,
                f"missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}",
                header_help,
                line=1,
            )
        idx = {c: header.index(c) for c in MADAR_COLUMNS}
        for i, line in enumerate(lines[1:], 2):
            if not line.strip():
                raise corpus_error(
                    path, "empty line", "one tab-separated sentence per line", line=i
                )
            cells = [c.strip() for c in line.split("\t")]
            if len(cells) != len(header):
                raise corpus_error(
                    path,
                    f"{len(cells)} tab-separated fields",
                    f"{len(header)} as in the header",
                    line=i,
                )
            sid, spl, lang, sent = (cells[idx[c]] for c in MADAR_COLUMNS)
            for col, val in (("sentID.BTEC", sid), ("lang", lang), ("sent", sent)):
                if not val:
                    raise corpus_error(path, f"empty {col}", f"a non-empty {col} field", line=i)
            if len(lang.split()) != 1:
                raise corpus_error(
                    path, f"lang {lang!r} has spaces", "a code like MSA or CAI", line=i
                )
            splits.setdefault(spl)
            if split is not None and spl != split:
                continue
            if (sid, lang) in seen:
                p, j = seen[(sid, lang)]
                raise corpus_error(
                    path,
                    f"duplicate sentence {sid} for {lang} (first at {p} line {j})",
                    "one sentence per (sentID.BTEC, lang)",
                    line=i,
                )
            seen[(sid, lang)] = (path, i)
            varieties.setdefault(lang)
            rows.setdefault(sid, {})[lang] = sent
    if not rows:
        where = paths[0] if len(paths) == 1 else paths[0].parent
        if split is None:
            raise corpus_error(where, "a header but no sentences", "sentences after the header")
        raise corpus_error(
            where, f"no line of split {split!r}", f"one of {', '.join(map(repr, splits)) or 'none'}"
        )
    return tuple(varieties), list(rows.values())
