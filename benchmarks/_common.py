"""What every benchmark script shares (``import _common`` from a script in this folder).

* **Provenance:** :func:`machine`, :func:`git_state`, :func:`provenance` (benchmark, date,
  command, machine, git) and :class:`Run`, which takes them at the start of a run together
  with its clock and the load average at named moments.
* **Timing:** :func:`interleave` runs several variants round-robin (rotating the order
  every round, so that a change of load hits all alike) after untimed warm-up rounds;
  :func:`median`, :func:`spread`, :class:`CpuMeter` (the CPU other processes took) and
  :func:`usage` / :func:`usage_since` (this process's CPU seconds and page faults).
* **Output:** :func:`write_results` (``STEM.json`` + ``STEM.md``), :func:`write_json`,
  :func:`write_text`, :func:`save_figure`, each atomic; :func:`md_table`.

Scripts that set ``OMP_WAIT_POLICY`` must do so before importing this module: it imports
torch.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
CORPORA = ROOT.parent / "shared" / "corpora"
#: how the result files spell the interpreter in their ``command``
PYTHON = ".venv/bin/python"


# --------------------------------------------------------------------------- provenance
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


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def command_line(python: str = PYTHON) -> str:
    """This process's command line, the interpreter spelt ``python``."""
    return shlex.join([python, *sys.argv])


def provenance(
    benchmark: str,
    *packages: str,
    date: str | None = None,
    git: dict[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """``benchmark``, ``date`` (default: now), ``command`` (default: :func:`command_line`),
    ``machine`` (with the versions of ``packages``) and ``git`` (default: the state now),
    in that order."""
    return {
        "benchmark": benchmark,
        "date": date or utc_now(),
        "command": command or command_line(),
        "machine": machine(*packages),
        "git": git_state() if git is None else git,
    }


class Run:
    """One benchmark run, from its start: the date and git state then (the code it
    imported; ``src/`` may change meanwhile), its clock, and the load average at the
    moments :meth:`mark` names (``load["start"]`` is taken here). ``packages``: those
    whose versions :func:`machine` records; ``python``: as in :func:`command_line`."""

    def __init__(self, benchmark: str, *packages: str, python: str = PYTHON) -> None:
        self.benchmark, self.packages = benchmark, packages
        self.command = command_line(python)
        self.started = time.perf_counter()
        self.date = utc_now()
        self.load: dict[str, tuple[float, float, float]] = {"start": os.getloadavg()}
        self.git = git_state()

    @property
    def seconds(self) -> float:
        """Wall seconds since the start."""
        return time.perf_counter() - self.started

    def mark(self, moment: str) -> None:
        """Record the 1/5/15-minute load average as ``load[moment]``."""
        self.load[moment] = os.getloadavg()

    def record(self, **fields: Any) -> dict[str, Any]:
        """The :func:`provenance` of this run followed by ``fields``."""
        head = provenance(
            self.benchmark, *self.packages, date=self.date, git=self.git, command=self.command
        )
        return head | fields


# --------------------------------------------------------------------------- timing
def median(values: Sequence[float]) -> float:
    """The median of the values that are not NaN; NaN if there are none."""
    return statistics.median([v for v in values if v == v] or [float("nan")])


def spread(values: Sequence[float]) -> dict[str, float]:
    """``median``, ``min`` and ``max`` of the values that are not NaN (NaN if none)."""
    finite = [v for v in values if v == v] or [float("nan")]
    return {"median": statistics.median(finite), "min": min(finite), "max": max(finite)}


def rotated(items: Sequence[Any], k: int) -> list[Any]:
    """``items`` rotated left by ``k`` (mod their number): round ``k``'s order."""
    items = list(items)
    k %= max(len(items), 1)
    return items[k:] + items[:k]


@dataclass
class Interleaved:
    """What :func:`interleave` measured, round by round."""

    order: list[list[str]] = field(default_factory=list)  # the order of each round
    results: dict[str, list[Any]] = field(default_factory=dict)  # what each call returned
    seconds: dict[str, list[float]] = field(default_factory=dict)  # wall time of each call
    load: list[dict[str, tuple[float, float, float]]] = field(default_factory=list)

    def median(self, name: str) -> float:
        """The median wall seconds of ``name`` over the rounds."""
        return median(self.seconds[name])

    def ratios(self, num: str, den: str) -> list[float]:
        """Per round (same moment): seconds of ``num`` / seconds of ``den``."""
        return [a / b for a, b in zip(self.seconds[num], self.seconds[den], strict=True)]


def interleave(
    variants: Mapping[str, Callable[[Any], Any]],
    rounds: int,
    *,
    setup: Callable[[int], Any] | None = None,
    warmup: Sequence[Any] = (),
    rotate: bool = True,
    report: Callable[[int, str, Any, float], None] | None = None,
) -> Interleaved:
    """Time every variant once per round, all variants within each round.

    ``variants[name](x)`` is called with the round's input ``x = setup(round)`` (the round
    index without ``setup``; one input per round, shared by every variant). First, every
    variant runs once, untimed, on each input of ``warmup``. The order of the variants
    rotates from round to round (round ``r`` starts with variant ``r``) unless ``rotate``
    is false. ``report(round, name, result, seconds)`` is called after each timed call.
    The 1/5/15-minute load average is taken before and after each round.
    """
    names = list(variants)
    for x in warmup:
        for name in names:
            variants[name](x)
    out = Interleaved(results={n: [] for n in names}, seconds={n: [] for n in names})
    for r in range(rounds):
        x = setup(r) if setup is not None else r
        order = rotated(names, r) if rotate else names
        out.order.append(order)
        loads = {"before": os.getloadavg()}
        for name in order:
            start = time.perf_counter()
            result = variants[name](x)
            seconds = time.perf_counter() - start
            out.results[name].append(result)
            out.seconds[name].append(seconds)
            if report is not None:
                report(r, name, result, seconds)
        loads["after"] = os.getloadavg()
        out.load.append(loads)
    return out


class CpuMeter:
    """CPU time taken by *other* processes while we run: busy time of the whole machine
    (``/proc/stat``) minus this process's own CPU time, per second of wall time."""

    def __init__(self) -> None:
        self.start = self._read()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = [int(x) for x in fields]
            busy = (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            busy = float("nan")
        own = os.times()
        return time.monotonic(), busy, own.user + own.system

    def others_cores(self) -> float:
        """Mean number of cores other processes kept busy since the start."""
        wall, busy, own = (b - a for a, b in zip(self.start, self._read(), strict=True))
        return (busy - own) / wall if wall > 0 else float("nan")


def usage() -> tuple[float, float, int]:
    """This process's user and system CPU seconds and minor page faults so far."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime, ru.ru_stime, ru.ru_minflt


def usage_since(start: tuple[float, float, int]) -> dict[str, float]:
    """CPU user/system seconds and minor page faults since ``start`` (from :func:`usage`)."""
    now = usage()
    return {
        "cpu_user_s": now[0] - start[0],
        "cpu_sys_s": now[1] - start[1],
        "minor_faults": now[2] - start[2],
    }


# --------------------------------------------------------------------------- output
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


def write_text(path: Path, text: str) -> None:
    """``text`` at ``path`` (UTF-8), atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any, indent: int | None = 1, ensure_ascii: bool = False) -> None:
    """``obj`` as JSON at ``path``, atomically (NaN written as null)."""
    text = json.dumps(json_safe(obj), indent=indent, ensure_ascii=ensure_ascii) + "\n"
    write_text(path, text)


def write_results(
    base: Path,
    report: Any,
    markdown: str | None = None,
    *,
    indent: int | None = 1,
    ensure_ascii: bool = False,
) -> list[Path]:
    """``report`` as ``BASE.json`` and, given, ``markdown`` as ``BASE.md`` (``base`` is the
    path without a suffix), each atomically; the paths written."""
    paths = [base.with_name(f"{base.name}.json")]
    write_json(paths[0], report, indent=indent, ensure_ascii=ensure_ascii)
    if markdown is not None:
        paths.append(base.with_name(f"{base.name}.md"))
        write_text(paths[1], markdown)
    return paths


def json_safe(obj: Any) -> Any:
    """NaN → None and keys → str, recursively (strict JSON)."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """``fig`` as a PNG at ``path``, atomically; then close it."""
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    pyplot().close(fig)


def md_table(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table; ``align`` per column: ``l``, ``r`` or ``c``."""
    marks = {"l": "---", "r": "---:", "c": ":---:"}
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(marks[a] for a in align) + " |",
        *("| " + " | ".join(r) + " |" for r in rows),
    ]


def met(ok: bool) -> str:
    """A target table's verdict: ``yes`` or a bold ``**no**``."""
    return "yes" if ok else "**no**"
