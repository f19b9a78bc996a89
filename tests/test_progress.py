"""Progress in a log file: whole lines at tenths of the work (or every 30 s), never the
carriage-return redraws of a terminal bar; a bar in a terminal."""

from __future__ import annotations

import io

from vardecouple import progress as progress_module
from vardecouple.progress import LineProgress, progress


def test_a_file_gets_one_line_per_tenth_and_no_carriage_returns() -> None:
    log = io.StringIO()
    bar = progress(total=1000, desc="train", file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):
        bar.update(1)
        bar.set_postfix(loss=1.5)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # 100, 200, ..., 900 and the closing 1000/1000: ten lines for a thousand updates
    assert [line.split()[1] for line in lines] == [f"{k}/1000" for k in range(100, 1001, 100)]
    assert all(line.startswith("train: ") and "loss=1.5" in line for line in lines)


def test_an_inner_loop_reports_only_its_end_and_a_resumed_loop_starts_where_it_was() -> None:
    log = io.StringIO()
    for _ in progress(range(50), desc="decode", leave=False, file=log):
        pass
    assert log.getvalue().splitlines() == [log.getvalue().splitlines()[-1]]
    assert log.getvalue().startswith("decode: 50/50 (100%)")
    log = io.StringIO()
    bar = progress(total=10, initial=7, desc="train", file=log)
    for _ in range(3):
        bar.update(1)
    bar.close()
    assert [line.split()[1] for line in log.getvalue().splitlines()] == ["8/10", "9/10", "10/10"]


def test_a_long_wait_between_tenths_still_reports(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "monotonic", lambda: now[0])
    log = io.StringIO()
    bar = LineProgress(total=1000, desc="slow", file=log)
    now[0] = 31.0
    bar.update(1)  # a line although far below a tenth: 30 s have passed
    now[0] = 40.0
    bar.update(1)  # no line: 9 s since the last
    now[0] = 62.0
    bar.update(0)  # 31 s since the last: a line
    bar.close()
    assert [line.split()[1] for line in log.getvalue().splitlines()] == ["1/1000", "2/1000",
                                                                          "2/1000"]  # fmt: skip


def test_disabled_writes_nothing_and_a_terminal_gets_a_tqdm_bar() -> None:
    log = io.StringIO()
    bar = progress(total=5, desc="x", disable=True, file=log)
    for _ in range(5):
        bar.update(1)
    bar.close()
    assert log.getvalue() == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    from tqdm.auto import tqdm

    bar = progress(total=5, desc="x", file=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
