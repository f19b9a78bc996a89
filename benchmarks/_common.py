"""What every benchmark script records alongside its numbers: the machine, the commit,
and atomically written result files (``import _common`` from a script in this folder)."""

from __future__ import annotations

import importlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent


def cpu_name() -> str:
    """The CPU model and its logical core count, e.g. ``AMD EPYC x2``."""
    try:
        names = [
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
    except OSError:
        names = []
    return f"{names[0]} x{len(names)}" if names else platform.processor()


def machine(*packages: str) -> dict[str, Any]:
    """Platform, CPU, memory, torch and thread settings, and the versions of ``packages``."""
    mem = ""
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "memory": mem,
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: importlib.import_module(name).__version__ for name in packages},
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }


def git_state() -> dict[str, Any]:
    """The commit and the ``src/`` paths that differ from it (read-only git calls)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "--no-optional-locks", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout

    try:
        return {
            "commit": git("rev-parse", "HEAD").strip(),
            "src_changes": git("status", "--porcelain", "--", "src").splitlines(),
        }
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": repr(exc)}


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """``write`` a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any, indent: int = 1) -> None:
    """``obj`` as JSON at ``path``, atomically (NaN written as null)."""
    text = json.dumps(json_safe(obj), indent=indent, ensure_ascii=False) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_safe(obj: Any) -> Any:
    """NaN → None and keys → str, recursively (strict JSON)."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def md_table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; ``align`` per column: ``l``, ``r`` or ``c``."""
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(marks[a] for a in align) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]
