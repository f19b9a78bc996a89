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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "file_lock",
    "load_tensor_tree",
    "save_tensor_tree",
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


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block:
    another process asking for it waits. For work that several processes may start at
    once on a fresh machine (``torchrun``, two commands side by side), such as filling a
    cache once."""
    import fcntl  # POSIX

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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


def save_tensor_tree(folder: str | Path, name: str, tree: Any) -> None:
    """Write a nested structure of dicts, lists, tuples, tensors and JSON scalars (a
    ``state_dict``) as ``folder/NAME.safetensors`` (the tensors) and ``folder/NAME.json``
    (the rest, tensors replaced by their keys): no pickle, both files atomic."""
    import torch  # lazy: the command line's --help never loads torch
    from safetensors.torch import save_file  # lazy, as torch

    tensors: dict[str, Any] = {}

    def encode(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = obj.detach().cpu().clone().contiguous()
            return {"tensor": key}
        if isinstance(obj, dict):
            return {"items": [[encode(k), encode(v)] for k, v in obj.items()]}
        if isinstance(obj, list | tuple):
            return {type(obj).__name__: [encode(v) for v in obj]}
        if obj is None or isinstance(obj, bool | int | float | str):
            return obj
        raise TypeError(f"save_tensor_tree: cannot store a {type(obj).__name__}")

    text = json.dumps({"format": "vardecouple.tree/1", "tree": encode(tree)})
    folder = Path(folder)
    write_atomic(folder / f"{name}.safetensors", lambda tmp: save_file(tensors, tmp))
    write_text_atomic(folder / f"{name}.json", text)


def load_tensor_tree(folder: str | Path, name: str) -> Any:
    """What :func:`save_tensor_tree` wrote (a ValueError naming the file if it cannot)."""
    from safetensors.torch import load_file  # lazy: see save_tensor_tree

    folder = Path(folder)
    try:
        record = json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))
        tensors = load_file(str(folder / f"{name}.safetensors"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{folder / name}.json/.safetensors: cannot be read: {exc}") from None

    def decode(obj: Any) -> Any:
        if not isinstance(obj, dict):
            return obj
        if "tensor" in obj:
            return tensors[obj["tensor"]]
        if "items" in obj:
            return {decode(k): decode(v) for k, v in obj["items"]}
        if "tuple" in obj:
            return tuple(decode(v) for v in obj["tuple"])
        return [decode(v) for v in obj["list"]]

    return decode(record["tree"])
