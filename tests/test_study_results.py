"""The study's published answer is what its committed results say.

``docs/results.md`` ("Against the paper") quotes, per family, the paired-bootstrap delta
and 95% interval of each decoupling arm against ``standard`` and against its
magnitude-matched random control. These tests read those numbers from the page and
compare them with the committed ``studies/<family>/results.json`` and, for Finnic and
Arabic, with ``vardecouple power``'s bootstrap of the committed hypotheses (independent
of the run that wrote the record)."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

import pytest

from vardecouple.cli import main
from vardecouple.experiment.config import load_config

pytestmark = pytest.mark.usefixtures("corpora")

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {  # folder, config, the row of the "Against the paper" table
    "arabic": ("study-arabic.toml", "Arabic, MSA→dialect, mean of the dialects"),
    "german": ("study-german.toml", "Low German (v2)"),
    "finnic": ("study-finnic.toml", "Kven (v2)"),
}
NUMBER = r"([+−-]\d+\.\d\d) \(([+−-]\d+\.\d\d) … ([+−-]\d+\.\d\d)"


def _floats(text: str) -> list[tuple[float, float, float]]:
    """Every 'Δ (lo … hi' in a cell, as floats."""
    return [tuple(float(x.replace("−", "-")) for x in m) for m in re.findall(NUMBER, text)]


def _paper_row(label: str) -> list[str]:
    page = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    table = page.split("## Against the paper", 1)[1]
    row = next(ln for ln in table.splitlines() if ln.startswith(f"| {label} |"))
    return [c.strip() for c in row.strip("|").split("|")]


def _quoted(stat: dict) -> tuple[float, float, float]:
    c = stat["chrf++"]
    return tuple(round(x, 2) for x in (c["delta"], *c["ci95"]))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_published_deltas_are_the_committed_results(family: str) -> None:
    """Each family's folder is finished (every arm × seed of its config has an
    ``eval.json``), its summary is the mean of those scores, and the page's deltas of
    ``decoupled`` and ``decoupled-paper`` against ``standard`` and against their matched
    controls are the record's, to the two decimals printed."""
    config_name, label = FAMILIES[family]
    folder = ROOT / "studies" / family
    record = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    config = load_config(ROOT / "examples" / config_name)
    for name, arm in config.arms.items():
        seeds = [0] if arm.get("kind") in ("copy", "base") else config.train.seeds
        evals = [
            json.loads((folder / "runs" / name / f"seed-{s}" / "eval.json").read_text())["metrics"]
            for s in seeds
        ]
        assert len(list((folder / "runs" / name).glob("seed-*/eval.json"))) == len(seeds), name
        for direction, stats in record["summary"][name].items():
            mean = statistics.mean(m[direction]["chrf++"] for m in evals)
            assert stats["chrf++"]["mean"] == pytest.approx(mean, abs=1e-9)

    cells = _paper_row(label)
    low = "mean_low_resource"
    assert _floats(cells[2]) == [_quoted(record["deltas"]["decoupled"][low])]
    assert _floats(cells[3]) == [_quoted(record["deltas"]["decoupled-paper"][low])]
    matched = record["matched_deltas"]
    assert matched["random-matched"]["of"] == "decoupled"
    assert matched["random-matched-paper"]["of"] == "decoupled-paper"
    assert _floats(cells[4]) == [
        _quoted(matched["random-matched"]["deltas"][low]),
        _quoted(matched["random-matched-paper"]["deltas"][low]),
    ]


@pytest.mark.parametrize("family", ["finnic", "arabic"])
def test_the_headline_recomputed_from_the_committed_hypotheses(family: str, capsys) -> None:
    """The headline comparison, bootstrapped again by ``vardecouple power --all-seeds``
    from the committed hypotheses (references rebuilt from the corpora by ``--config``),
    gives the record's delta, interval and p-value."""
    config_name, _ = FAMILIES[family]
    folder = ROOT / "studies" / family
    record = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    args = ["power", str(folder), "--config", str(ROOT / "examples" / config_name),
            "--compare", "decoupled", "random-matched", "--all-seeds", "--json"]  # fmt: skip
    assert main(args) == 0
    got = {e["group"]: e for e in json.loads(capsys.readouterr().out)}["mean_low_resource"]
    want = record["matched_deltas"]["random-matched"]["deltas"]["mean_low_resource"]["chrf++"]
    assert got["delta"] == pytest.approx(want["delta"], abs=1e-9)
    assert got["half_width"] == pytest.approx((want["ci95"][1] - want["ci95"][0]) / 2, abs=1e-9)
    assert got["p_value"] == pytest.approx(want["p_value"], abs=1e-9)
