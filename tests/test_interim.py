"""`vardecouple run --interim`: the record and report of a run in progress, checked
against the finished run's own results.json and against direct chrF++ computations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sacrebleu

from vardecouple.cli import main
from vardecouple.evaluate import scoring
from vardecouple.experiment.arms import prepare_data
from vardecouple.experiment.config import load_config
from vardecouple.report.data import fmt

pytestmark = pytest.mark.usefixtures("corpora")

LOW = "deu_Latn->nds_Latn"


@pytest.fixture(scope="module")
def finished(mini_run: Path) -> Path:
    return mini_run


def _partial(finished: Path, tmp_path: Path, drop: list[str]) -> tuple[Path, Path]:
    """A copy of the finished run as it was before its end (no results.json, report or
    plots), without the ``eval.json`` of the ``ARM/seed-S`` in ``drop``."""
    out = tmp_path / "out"
    shutil.copytree(finished / "out", out)
    for name in ("results.json", "report.md"):
        (out / name).unlink()
    shutil.rmtree(out / "plots")
    shutil.rmtree(out / "probe" / "plots")
    (out / "probe" / "probe.json").unlink()
    for unit in drop:
        (out / "runs" / unit / "eval.json").unlink()
    config = tmp_path / "mini.toml"
    shutil.copy(finished / "mini.toml", config)
    return config, out


def _interim(config: Path, out: Path) -> dict:
    assert main(["run", str(config), "--out", str(out), "--interim"]) == 0
    return json.loads((out / "interim.json").read_text())


def test_with_every_result_there_it_is_the_final_record(finished, tmp_path) -> None:
    final = json.loads((finished / "out" / "results.json").read_text())
    config, out = _partial(finished, tmp_path, drop=[])
    interim = _interim(config, out)
    assert interim["interim"]["missing"] == [] and interim["interim"]["finished"] == 10
    for key in ("runs", "summary", "deltas", "matched_deltas", "directions", "decoding"):
        assert interim[key] == final[key], key
    assert not (out / "results.json").exists()  # the run is not made finished by it


def test_a_missing_seed_is_listed_and_its_pairs_use_the_shared_seeds(finished, tmp_path) -> None:
    config, out = _partial(finished, tmp_path, drop=["decoupled/seed-1"])
    # the tiny model's seeds decode alike: seed 1 of the arms decoupled is compared with
    # gets other outputs (the references), so that a delta over seeds 0 and 1 would show
    refs = _refs(finished, LOW)
    for arm in ("standard", "random"):
        (out / "runs" / arm / "seed-1" / "hypotheses" / f"{LOW}.txt").write_text(
            "\n".join(refs) + "\n"
        )
    interim = _interim(config, out)
    assert {k: interim["interim"][k] for k in ("finished", "planned", "missing")} == {
        "finished": 9,
        "planned": 10,
        "missing": ["decoupled seed 1"],
    }
    assert interim["summary"]["decoupled"][LOW]["chrf++"]["n_seeds"] == 1
    assert interim["summary"]["standard"][LOW]["chrf++"]["n_seeds"] == 2

    # decoupled − standard and decoupled − random on seed 0 alone: sacrebleu, directly

    def chrf(arm: str) -> float:
        hyps = (out / "runs" / arm / "seed-0" / "hypotheses" / f"{LOW}.txt").read_text()
        return sacrebleu.corpus_chrf(hyps.splitlines(), [refs], word_order=2).score

    vs_standard = interim["deltas"]["decoupled"][LOW]["chrf++"]
    assert list(vs_standard["per_seed"]) == ["0"]
    assert vs_standard["delta"] == pytest.approx(chrf("decoupled") - chrf("standard"), abs=1e-6)
    vs_random = interim["matched_deltas"]["random"]["deltas"][LOW]["chrf++"]
    assert vs_random["delta"] == pytest.approx(chrf("decoupled") - chrf("random"), abs=1e-6)
    # arms with both seeds keep both
    assert list(interim["deltas"]["random"][LOW]["chrf++"]["per_seed"]) == ["0", "1"]

    report = (out / "report.md").read_text()
    assert "**Interim report**" in report and "Missing: decoupled seed 1." in report
    again = _interim(config, out)  # a later session refreshes it
    assert again["deltas"] == interim["deltas"] and again["runs"] == interim["runs"]
    assert "probe/interim/plots/probe_overlap.png" in report
    assert (out / "probe" / "interim" / "plots" / "probe_overlap.png").is_file()
    assert not (out / "probe" / "probe.json").exists()  # the run still merges its own

    # the run goes on: it makes the missing result, then replaces the interim record
    assert main(["run", str(config), "--out", str(out)]) == 0
    assert not (out / "interim.json").exists()
    assert "Interim" not in (out / "report.md").read_text()
    final = json.loads((finished / "out" / "results.json").read_text())
    made = json.loads((out / "results.json").read_text())
    assert made["summary"] == final["summary"]  # seed 1 of decoupled decoded as before
    assert made["runs"]["decoupled"]["1"]["metrics"] == final["runs"]["decoupled"]["1"]["metrics"]


def _refs(finished: Path, direction: str) -> list[str]:
    return _references(finished / "mini.toml")[direction]


def _references(config_file: Path) -> dict[str, list[str]]:
    """The test references of a config, per direction, rebuilt from the corpora."""
    c = load_config(config_file)
    tests = scoring.test_sets(prepare_data(c), c.eval.max_examples, c.eval_directions())
    return {d: [ex.tgt_text for ex in rows] for d, rows in tests.items()}


def _row(report: str, section: str, start: str) -> list[str]:
    text = report.split(section, 1)[1]
    row = next(ln for ln in text.splitlines() if ln.startswith(start))
    return [c.strip() for c in row.strip("|").split("|")]


def test_overlaps_keep_their_significant_digits(finished, tmp_path) -> None:
    """…and, while ``decoupled`` lacks seed 1, every trained arm's training records are
    read on seed 0 alone: each seed fits its own U₀, so a mean over seeds 0 and 1 for
    ``standard`` against seed 0 for ``decoupled`` would start them from different U₀."""
    config, out = _partial(finished, tmp_path, drop=["decoupled/seed-1"])
    _interim(config, out)
    report = (out / "report.md").read_text()
    seed0 = out / "runs" / "standard" / "seed-0"
    record = json.loads((seed0 / "eval.json").read_text())["overlap"]
    before = record["initial"]["1"]["nds_Latn"]["reference"]
    after = record["final"]["1"]["nds_Latn"]["reference"]
    cells = _row(report, "## Overlap", "| standard | 1 |")
    assert cells[2] == f"{before:.3g}" and cells[7] == f"{after / record['chance']:.2g}"
    assert "then the mean over seed 0 (the seed every trained arm has so far" in report
    log = [json.loads(line) for line in (seed0 / "train_log.jsonl").read_text().splitlines()]
    first = next(r for r in log if r.get("refresh"))["held_out_penalty"]["1"]["reference"]
    cells = _row(report, "What the penalty minimises", "| standard | 1 |")
    assert cells[2] == fmt(first)

    # with every seed there, both seeds of every arm
    config, out = _partial(finished, tmp_path / "all", drop=[])
    _interim(config, out)
    report = (out / "report.md").read_text()
    records = [
        json.loads((out / "runs" / "standard" / f"seed-{s}" / "eval.json").read_text())
        for s in (0, 1)
    ]
    both = sum(r["overlap"]["initial"]["1"]["nds_Latn"]["reference"] for r in records) / 2
    assert _row(report, "## Overlap", "| standard | 1 |")[2] == f"{both:.3g}"
    assert "then the mean over seeds." in report


def test_bad_uses_are_one_line_and_write_nothing(finished, tmp_path, capsys) -> None:
    config = tmp_path / "mini.toml"
    shutil.copy(finished / "mini.toml", config)
    done = finished / "out"
    before = sorted(p.name for p in done.iterdir())
    cases = [
        (["run", str(config), "--out", str(done), "--interim"], "is finished"),
        (["run", str(config), "--out", str(tmp_path / "new"), "--interim"], "holds no run"),
        (["run", str(config), "--out", str(done), "--interim", "--plan"], "without --plan"),
    ]
    for args, expected in cases:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert expected in err and err.strip().count("\n") == 0, err
    assert sorted(p.name for p in done.iterdir()) == before
    assert not (tmp_path / "new").exists()
    # `report` on a run not finished says how to read it so far
    _, out = _partial(finished, tmp_path / "p", drop=[])
    assert main(["report", str(out)]) == 2
    assert "--interim" in capsys.readouterr().err


def test_the_committed_german_study_so_far(tmp_path) -> None:
    """On the study's real folder (gemma3-270m's outputs, Tatoeba deu–nds): the interim
    summary is the mean of the committed eval.json scores, and each arm's delta against
    `standard` is `power --all-seeds`'s (which reads the hypotheses on its own)."""
    from vardecouple.analysis.power import estimate_power

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "german"
    kept = shutil.ignore_patterns("adapter", "best-adapter", "checkpoint")  # not committed
    shutil.copytree(root / "studies" / "german", out, ignore=kept)
    for name in ("results.json", "interim.json"):  # as if the run were still going
        (out / name).unlink(missing_ok=True)
    config = root / "examples" / "study-german.toml"
    interim = _interim(config, out)
    units = sorted(out.glob("runs/*/seed-*/eval.json"))
    assert interim["interim"]["finished"] == len(units) >= 5
    runs: dict[str, list[dict]] = {}
    for path in units:
        runs.setdefault(path.parent.parent.name, []).append(json.loads(path.read_text()))
    for arm, records in runs.items():
        for d, stats in interim["summary"][arm].items():
            mean = sum(r["metrics"][d]["chrf++"] for r in records) / len(records)
            assert stats["chrf++"]["mean"] == pytest.approx(mean, abs=1e-9)
    refs = _references(config)
    for arm in ("decoupled", "decoupled-paper"):
        for estimate in estimate_power(out, arm, "standard", all_seeds=True, references=refs):
            got = interim["deltas"][arm][estimate.group]["chrf++"]
            assert got["delta"] == pytest.approx(estimate.delta, abs=1e-9)
            assert got["p_value"] == pytest.approx(estimate.p_value, abs=1e-9)
