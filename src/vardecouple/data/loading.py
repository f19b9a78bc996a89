"""``load_corpus``: read any supported corpus format into a :class:`Corpus`."""

from __future__ import annotations

from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from typing import Literal

from .corpus import Corpus
from .errors import corpus_error
from .formats import (
    MADAR_COLUMNS,
    read_aligned_folder,
    read_jsonl,
    read_madar,
    read_tsv,
)

__all__ = ["FORMATS", "CorpusFormat", "detect_format", "load_corpus"]

CorpusFormat = Literal["auto", "lines", "flores", "madar", "tsv", "jsonl"]

#: What each format is, for error messages.
FORMATS: dict[str, str] = {
    "lines": "a folder of line-aligned <code>.txt files",
    "flores": "a folder with dev/ and devtest/ of <code>.<split> or <code>.txt files",
    "madar": "a MADAR .tsv (header sentID.BTEC, split, lang, sent) or a folder of them",
    "tsv": "a .tsv whose header is variety codes",
    "jsonl": "a .jsonl of objects mapping variety codes to sentences",
}


def _formats_help() -> str:
    return "; ".join(f"{k} = {v}" for k, v in FORMATS.items())


def _is_madar_tsv(path: Path) -> bool:
    """Whether the first line of ``path`` names the MADAR ``sentID.BTEC`` column."""
    try:
        with path.open("rb") as f:
            first = f.readline()
    except OSError:
        return False
    header = first.decode("utf-8", errors="replace").lstrip("\ufeff").split("\t")
    return MADAR_COLUMNS[0] in (c.strip() for c in header)


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def detect_format(path: Path) -> str:
    """The format ``auto`` resolves to for ``path``.

    A folder with ``dev/`` and ``devtest/`` is ``flores``; a folder of ``.txt``
    files is ``lines``; a folder of MADAR ``.tsv`` files is ``madar``; a ``.tsv``
    file is ``madar`` when its header has the ``sentID.BTEC`` column, else
    ``tsv``; a ``.jsonl`` file is ``jsonl``.

    Raises:
        CorpusError: none of these (the message lists the formats).
    """
    if path.is_dir():
        if (path / "dev").is_dir() and (path / "devtest").is_dir():
            return "flores"
        entries = _visible(path)
        if not entries:
            raise corpus_error(path, "empty folder", f"one of: {_formats_help()}")
        files = [p for p in entries if p.is_file()]
        if any(p.suffix == ".txt" for p in files):
            return "lines"
        tsvs = [p for p in files if p.suffix == ".tsv"]
        if tsvs and all(_is_madar_tsv(p) for p in tsvs):
            return "madar"
    elif path.suffix == ".tsv":
        return "madar" if _is_madar_tsv(path) else "tsv"
    elif path.suffix == ".jsonl":
        return "jsonl"
    raise corpus_error(path, "format not recognised", f"one of: {_formats_help()}")


def _need_folder(path: Path, fmt: str) -> None:
    if not path.is_dir():
        raise corpus_error(path, "is not a folder", f"{fmt} format = {FORMATS[fmt]}")


def _need_file(path: Path, fmt: str) -> None:
    if not path.is_file():
        raise corpus_error(path, "is not a file", f"{fmt} format = {FORMATS[fmt]}")


def load_corpus(
    path: str | PathLike[str],
    *,
    format: CorpusFormat = "auto",
    split: str | None = None,
    varieties: Iterable[str] | None = None,
    name: str | None = None,
) -> Corpus:
    """Read a parallel corpus (files are read in place, never copied).

    Args:
        path: a folder or file, see ``format``.
        format: ``lines`` (folder of ``<code>.txt``, line i of each file aligned),
            ``flores`` (folder with ``dev/`` and ``devtest/``; ``split`` required),
            ``madar`` (MADAR TSV, or a folder of them; rows sharing a
            ``sentID.BTEC`` are aligned; ``split`` filters the split column),
            ``tsv`` (header = variety codes), ``jsonl`` (objects code → sentence),
            or ``auto`` (see :func:`detect_format`).
        split: the FLORES subfolder (``dev``/``devtest``) or the MADAR split value.
        varieties: keep only these variety codes (rows with none of them dropped).
        name: the corpus name; default the folder/file name (plus ``/split``).

    Raises:
        CorpusError: anything unreadable or ambiguous; the message names the file
            and line and says what was expected.
    """
    p = Path(path)
    if not p.exists():
        raise corpus_error(p, "does not exist", f"a path to one of: {_formats_help()}")
    if format != "auto" and format not in FORMATS:
        raise corpus_error(p, f"unknown format {format!r}", f"auto or one of {', '.join(FORMATS)}")
    fmt = detect_format(p) if format == "auto" else format
    if split is not None and fmt not in ("flores", "madar"):
        raise corpus_error(
            p, f"split={split!r} given for {fmt} format", "split only for flores/madar"
        )
    default_name = p.stem if p.is_file() else p.name
    if fmt == "lines":
        _need_folder(p, fmt)
        codes, rows = read_aligned_folder(p, (".txt",))
    elif fmt == "flores":
        _need_folder(p, fmt)
        subs = [d.name for d in _visible(p) if d.is_dir()]
        if split is None:
            raise corpus_error(p, "no split given for flores format", f"split= one of {subs}")
        if split not in subs:
            raise corpus_error(p, f"no subfolder {split!r}", f"split= one of {subs}")
        codes, rows = read_aligned_folder(p / split, (f".{split}", ".txt"))
        default_name = f"{p.name}/{split}"
    elif fmt == "madar":
        if p.is_dir():
            files = [f for f in _visible(p) if f.is_file() and f.suffix == ".tsv"]
            if not files:
                raise corpus_error(p, "no .tsv files", f"madar format = {FORMATS['madar']}")
        else:
            files = [p]
        codes, rows = read_madar(files, split)
        if split is not None:
            default_name = f"{default_name}/{split}"
    elif fmt == "tsv":
        _need_file(p, fmt)
        codes, rows = read_tsv(p)
    else:
        _need_file(p, fmt)
        codes, rows = read_jsonl(p)
    corpus = Corpus(name or default_name, str(p), codes, tuple(rows))
    if varieties is None:
        return corpus
    return corpus.select([varieties] if isinstance(varieties, str) else varieties)
