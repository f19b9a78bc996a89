"""The console script: help, version, the planted self-check, one-line errors."""

import json
import subprocess
import sys

from vardecouple.cli import main


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vardecouple.cli", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_help_and_version() -> None:
    out = _run("--help")
    assert out.returncode == 0 and "planted" in out.stdout
    out = _run("--version")
    assert out.returncode == 0 and out.stdout.startswith("vardecouple ")


def test_planted_recovers_the_standard_subspace(capsys) -> None:
    assert (
        main(["planted", "--n", "1500", "--dim", "32", "--rank", "2", "--varieties", "2", "--json"])
        == 0
    )
    rows = {r["estimator"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    assert rows["pca"]["largest_angle_deg"] < 10
    assert rows["random"]["largest_angle_deg"] > 45


def test_bad_input_is_one_line_and_non_zero() -> None:
    out = _run("planted", "--dim", "3", "--rank", "4")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "dim >= rank + m" in out.stderr
    assert "Traceback" not in out.stderr
    out = _run("planted", "--n", "zero")
    assert out.returncode == 2 and "positive integer" in out.stderr
