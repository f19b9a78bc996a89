"""Progress of long loops: a tqdm bar in a terminal, a few plain lines in a log file.

A tqdm bar redraws itself with carriage returns; written into a file (``make demo >
log``, a CI log) every redraw is kept, thousands of them. :func:`progress` returns a
tqdm bar when the stream is a terminal and otherwise a :class:`LineProgress`, which
writes one whole line when a tenth of the work is done or ``every`` seconds have passed,
whichever is first, and one when the loop ends (an inner loop, ``leave=False``: only every
``every`` seconds and at its end). Both take the calls the package makes:
iteration, ``update(n)``, ``set_postfix(**values)`` and ``close()``.

Several processes writing to one terminal (``run --jobs``) would redraw each other's
bars: a worker calls :func:`tag_reports` once, and from then on its reports are whole
lines that begin with its tag (``[standard seed 1] train: 40/300 …``).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["LineProgress", "progress", "tag_reports"]

#: this process's tag (:func:`tag_reports`); empty: reports are untagged
_TAG: list[str] = [""]


class LineProgress:
    """A progress report in whole lines: ``desc: 40/100 (40%) 12.0 s, 3.33 it/s, k=v``."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        disable: bool = False,
        file: TextIO | None = None,
        every: float = 30.0,
        tenths: bool = True,
        initial: int = 0,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit, self.disable = total, desc, unit, disable
        self.file, self.every, self.tenths = file, every, tenths
        self.n = self.initial = initial  # a resumed loop starts at `initial`
        self.postfix = ""
        self.start = self.last = time.monotonic()
        self.tenth = int(10 * initial / total) if total else 0  # tenths already reported
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None, "LineProgress: nothing to iterate"
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        tenth = int(10 * self.n / self.total) if self.total and self.tenths else 0
        if tenth > self.tenth or now - self.last >= self.every:
            if self.total is None or self.n < self.total:
                self._line(now)
            self.tenth = max(tenth, self.tenth)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, **values: Any) -> None:
        items = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        if self.disable:
            return
        self.last = now
        seconds = now - self.start
        done = f"{self.n}/{self.total} ({100 * self.n // self.total}%)" if self.total else (
            f"{self.n}")  # fmt: skip
        done_here = self.n - self.initial
        rate = f", {done_here / seconds:.3g} {self.unit}/s" if seconds > 0 and done_here else ""
        extra = f", {self.postfix}" if self.postfix else ""
        stream = self.file or sys.stderr
        print(f"{self.desc}: {done} {seconds:.1f} s{rate}{extra}", file=stream, flush=True)


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    initial: int = 0,
    file: TextIO | None = None,
) -> Any:
    """A tqdm bar on a terminal, :class:`LineProgress` elsewhere (files, pipes, CI, and
    every process that :func:`tag_reports` tagged)."""
    stream = file or sys.stderr
    if disable:
        return LineProgress(iterable, total=total, desc=desc, unit=unit, disable=True,
                            initial=initial)  # fmt: skip
    if _TAG[0]:  # one of several processes: whole lines, each saying whose it is
        return LineProgress(iterable, total=total, desc=f"[{_TAG[0]}] {desc}", unit=unit,
                            file=stream, tenths=leave, initial=initial, every=60.0)  # fmt: skip
    if _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial,
                    file=stream)  # fmt: skip
    # an inner loop (leave=False: one of many) reports only every 30 s and at its end
    return LineProgress(iterable, total=total, desc=desc, unit=unit, file=stream, tenths=leave,
                        initial=initial)  # fmt: skip


def tag_reports(tag: str) -> None:
    """From now on this process reports in whole lines that begin with ``[tag]``, an
    inner loop's every 60 s rather than 30 (a worker among several; ``""``: untagged)."""
    _TAG[0] = tag


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
