"""Strict reading of UTF-8 text files: no BOM, valid UTF-8, not empty."""

from __future__ import annotations

from pathlib import Path

from .errors import corpus_error

__all__ = ["read_text_lines"]

_BOM = b"\xef\xbb\xbf"


def read_text_lines(
    path: Path, *, what: str = "one sentence per line", strip: bool = True
) -> list[str]:
    r"""The lines of ``path``, each stripped of surrounding whitespace (``\r`` included).

    With ``strip=False`` only a trailing ``\r`` is removed (tab-separated files
    keep their empty trailing cells).

    Lines are split on ``\n`` only (never on U+2028, U+0085 and the like, which
    :meth:`str.splitlines` would split on and which would silently misalign a
    parallel corpus). A final newline does not make an extra line. Empty lines
    are *returned* (as ``""``) so the caller can word the error for its format.

    Raises:
        CorpusError: the file cannot be read, is empty, starts with a byte-order
            mark, or is not valid UTF-8 (the message gives the line).
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise corpus_error(
            path, f"cannot be read ({exc.strerror or exc})", "a readable file"
        ) from exc
    if data.startswith(_BOM):
        raise corpus_error(
            path,
            "starts with a UTF-8 byte-order mark (BOM)",
            "UTF-8 without a BOM (remove the first 3 bytes EF BB BF)",
            line=1,
        )
    if not data.strip():
        raise corpus_error(path, "empty file", what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start : exc.end].hex(" ")
        raise corpus_error(
            path, f"invalid UTF-8 (byte {bad} at offset {exc.start})", "UTF-8 text", line=line
        ) from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if strip:
        return [ln.strip() for ln in lines]
    return [ln.removesuffix("\r") for ln in lines]
