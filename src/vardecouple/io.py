"""Files: atomic writes (a reader, or a crash, never sees half a file) and SHA-256.

Every file a command leaves behind goes through :func:`write_atomic`: the content is
written to a unique temporary name in the target's folder, flushed to disk (``fsync``),
then renamed over the target with ``os.replace`` (atomic on POSIX within one file
system). If anything fails before the rename, the temporary file is removed and the
previous file at ``path``, if any, is untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "sha256_file",
    "write_atomic",
    "write_dir_atomic",
    "write_json_atomic",
    "write_lines_atomic",
    "write_text_atomic",
]


def write_atomic(path: str | Path, write: Callable[[str], Any]) -> None:
    """Call ``write(tmp)`` on a temporary name beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _synced_text(text_of: Callable[[Any], None]) -> Callable[[str], None]:
    def write(tmp: str) -> None:
        # UTF-8, "\n" line ends on every platform (sacrebleu reads the files as written)
        with open(tmp, "w", encoding="utf-8", newline="\n") as handle:
            text_of(handle)
            handle.flush()
            os.fsync(handle.fileno())

    return write


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, _synced_text(lambda handle: handle.write(text)))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    """JSON with one-space indents; values JSON cannot hold are written as ``str``."""
    write_atomic(path, _synced_text(lambda handle: json.dump(obj, handle, indent=1, default=str)))


def write_lines_atomic(path: str | Path, lines: Sequence[str]) -> None:
    """One line per item (a newline inside an item becomes a space)."""
    write_atomic(
        path,
        _synced_text(lambda h: h.writelines(line.replace("\n", " ") + "\n" for line in lines)),
    )


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (provenance of the weights a result came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def write_dir_atomic(target: str | Path, fill: Callable[[Path], None]) -> Path:
    """Build a folder with ``fill(tmp)`` in a fresh temporary folder beside ``target``,
    then move it into place (a previous ``target`` is removed first; the temporary
    folder is removed if ``fill`` fails). A reader sees the old folder, no folder, or the
    whole new one, never a half-written one."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
