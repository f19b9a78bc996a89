"""report.py: results.json → report.md + plots, on a small but realistic run folder."""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from matplotlib.image import imread

from vardecouple.report import PLOTS, SECTIONS, load_results, write_report

STANDARD, LOW = "arb_Arab", ["arz_Arab", "ary_Arab"]
DIRECTIONS = {
    "eng_Latn->arz_Arab": {"kind": "low-resource", "n": 40},
    "arb_Arab->ary_Arab": {"kind": "low-resource", "n": 40},
    "ary_Arab->arb_Arab": {"kind": "standard", "n": 40},
}
ARMS = {
    "base": "base",
    "copy": "copy",
    "standard": "train",
    "decoupled": "train",
    "random": "train",
}
SEEDS = ["0", "1"]
LAYERS = ["4", "9"]
STEPS = 40
# p-values of the mean over low-resource directions, chrF++, per arm vs standard
P_MEAN = {"base": 0.001, "copy": 0.0004, "decoupled": 0.012, "random": 0.27}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _overlap_table(rng: np.random.Generator, level: float) -> dict[str, Any]:
    return {
        layer: {
            v: {
                "own": round(float(level + rng.uniform(0, 0.05)), 4),
                "reference": round(float(level + rng.uniform(0, 0.05)), 4),
            }
            for v in [STANDARD, *LOW]
        }
        for layer in LAYERS
    }


def _train_log(path: Path, rng: np.random.Generator, arm: str) -> dict[str, Any]:
    """Write a train log (step and refresh records); return its initial/final tables."""
    drop = {"standard": 0.0, "decoupled": 0.15, "random": 0.05}[arm]
    lines, tables = [], {}
    for step in range(STEPS + 1):
        if step % 20 == 0:
            table = _overlap_table(rng, 0.3 - drop * step / STEPS)
            rec: dict[str, Any] = {"step": step, "refresh": True, "overlap": table}
            rec["angle_to_previous"] = {la: 5.0 for la in LAYERS} if step else {}
            if step == STEPS:
                rec["final"] = True
            tables["initial" if step == 0 else "final"] = table
            lines.append(rec)
        if step < STEPS:
            lines.append(
                {"step": step, "loss": 3.0, "lm_loss": 2.9, "penalty": 10.0, "tokens": 512,
                 "lambda": 0.01, "lr": 2e-4, "seconds": 1.0, "tokens_per_s": 512.0}
            )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    return tables


def _delta(d: float, p: float) -> dict[str, Any]:
    return {"delta": d, "ci95": [round(d - 0.7, 3), round(d + 0.7, 3)], "p_value": p}


def make_run(tmp_path: Path) -> dict[str, Any]:
    """A run folder like `vardecouple run` writes; returns the results dict."""
    rng = np.random.default_rng(0)
    base_chrf = {"base": 20.0, "copy": 45.0, "standard": 40.0, "decoupled": 41.0, "random": 39.5}
    runs: dict[str, Any] = {}
    for arm, kind in ARMS.items():
        runs[arm] = {}
        for seed in SEEDS:
            metrics = {}
            for d in DIRECTIONS:
                chrf = round(base_chrf[arm] + float(rng.normal(0, 1)), 2)
                metrics[d] = {
                    "chrf++": chrf,
                    "bleu": round(chrf / 3, 2),
                    "target_variety_rate": round(float(rng.uniform(0.3, 0.9)), 3),
                    "chrf++_ci95": [round(chrf - 1.5, 2), round(chrf + 1.4, 2)],
                    "hypotheses": f"runs/{arm}/seed-{seed}/hypotheses/{d}.txt",
                }
            run: dict[str, Any] = {
                "kind": kind, "metrics": metrics, "steps": 0, "train_seconds": 0.0,
                "eval_seconds": 12.5, "checkpoint": "no training",
            }  # fmt: skip
            if kind == "train":
                rel = f"runs/{arm}/seed-{seed}/train_log.jsonl"
                tables = _train_log(tmp_path / rel, rng, arm)
                run |= {"steps": STEPS, "train_seconds": 80.0, "checkpoint": "last step (40)"}
                run["lambda"] = {"standard": 0.0, "decoupled": 0.01, "random": 0.002}[arm]
                run["overlap"] = {**tables, "by_step": rel}
            runs[arm][seed] = run
    summary = {
        arm: {
            d: {
                m: {
                    "mean": float(np.mean(v := [runs[arm][s]["metrics"][d][m] for s in SEEDS])),
                    "sd": float(np.std(v, ddof=1)),
                    "n_seeds": len(SEEDS),
                }
                for m in ("chrf++", "bleu", "target_variety_rate")
            }
            for d in DIRECTIONS
        }
        for arm in ARMS
    }
    deltas = {}
    for arm, p in P_MEAN.items():
        deltas[arm] = {
            d: {"chrf++": _delta(0.4, 0.3), "bleu": _delta(0.1, 0.6)} for d in DIRECTIONS
        }
        deltas[arm]["mean_low_resource"] = {"chrf++": _delta(0.4, p), "bleu": _delta(-0.2, 0.5)}
    results = {
        "schema_version": 1,
        "config": {
            "name": "test-arabic",
            "data": {
                "root": "../shared/corpora", "standard": STANDARD, "varieties": LOW,
                "pivot": "eng_Latn", "corpora": [{"path": "flores200", "split": "dev"}],
                "test_corpora": [{"path": "flores200", "split": "devtest"}],
                "dev_rows": 50, "probe_rows": 100, "test_rows": 40,
            },
            "model": {"spec": "gemma3-270m", "dtype": "float32"},
            "lora": {"r": 16, "alpha": 32},
            "train": {"steps": STEPS, "batch_size": 8, "lr": 2e-4, "seeds": [0, 1]},
            "decoupler": {"estimator": "variational", "rank": 1, "form": "norm", "lam": 0.01,
                          "layers": [4, 9], "penalize": True},
            "arms": {"standard": {"penalize": False}, "decoupled": {},
                     "random": {"estimator": "random", "lam": 0.002}},
        },
        "provenance": {
            "vardecouple": "0.1.0", "git_sha": "0123abcd", "torch": "2.13.0",
            "transformers": "5.23.0", "peft": "0.21.0", "sacrebleu": "2.6.0",
            "model_sha256": "f" * 64, "command": "vardecouple run cfg.toml --out runs/x",
            "machine": "test-box (2 cores)", "started": "2026-11-23T10:00:00+00:00",
            "finished": "2026-11-23T11:00:00+00:00", "wall_seconds": 3600.0,
        },
        "signatures": {"chrf++": "nrefs:1|case:mixed|eff:yes|nc:6|nw:2|space:no|version:2.6.0",
                       "bleu": "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"},
        "directions": DIRECTIONS,
        "variety_identifier": {"accuracy": 0.91, "balanced_accuracy": 0.875, "n_test": 300},
        "bootstrap": {"n_samples": 1000, "seed": 12345},
        "runs": runs,
        "summary": summary,
        "deltas": deltas,
    }  # fmt: skip
    (tmp_path / "results.json").write_text(json.dumps(results, indent=1))
    return results


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    make_run(tmp_path)
    return tmp_path


def _section(text: str, title: str) -> str:
    return text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _row(block: str, arm: str) -> list[str]:
    line = next(li for li in block.splitlines() if li.startswith(f"| {arm} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_fixture_validates(run_dir: Path) -> None:
    schema = json.loads((files("vardecouple") / "schemas" / "results.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(
        json.loads((run_dir / "results.json").read_text())
    )
    assert load_results(run_dir)["schema_version"] == 1


def test_report_sections_and_plots(run_dir: Path) -> None:
    path = write_report(run_dir, command="vardecouple report runs/x")
    assert path == run_dir / "report.md"
    text = path.read_text()
    assert text.startswith("# vardecouple report: test-arabic\n")
    for title in SECTIONS:
        assert f"\n## {title}\n" in text
    for name in PLOTS:
        png = run_dir / "plots" / name
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000, name
        assert imread(png).ndim == 3
        assert f"](plots/{name})" in text
    leftovers = [p.name for p in run_dir.rglob("*.tmp")]
    assert not leftovers
    assert "vardecouple run cfg.toml --out runs/x" in _section(text, "Provenance")
    assert "Report written by `vardecouple report runs/x`" in text


def test_provenance_times_a_resumed_run_as_a_whole(run_dir: Path) -> None:
    """A run resumed over several processes records the last one's wall time; the report
    says so, and gives the sum of every arm × seed's training and decoding time beside it."""
    res = json.loads((run_dir / "results.json").read_text())
    res["provenance"]["wall_seconds"] = 200.0  # the last process: one unit of many
    (run_dir / "results.json").write_text(json.dumps(res))
    summed = sum(
        r["train_seconds"] + r["eval_seconds"]
        for seeds in res["runs"].values()
        for r in seeds.values()
    )
    assert summed > 200.0
    section = _section(write_report(run_dir).read_text(), "Provenance")
    cells = [[c.strip() for c in ln.strip("|").split("|")] for ln in section.splitlines()]
    rows = {c[0]: c[1] for c in cells if len(c) == 2}
    assert rows["wall time of the process that finished it"] == "200 s (0.06 h)"
    summed_row = rows["training and decoding, summed over the arm × seed results"]
    assert summed_row == f"{summed:.0f} s ({summed / 3600:.2f} h)"
    assert "wall time" not in rows  # the old label, read as the whole run's


def test_tables_carry_the_numbers(run_dir: Path) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    text = write_report(run_dir).read_text()
    results = _section(text, "Results")
    chrf = results.split("### chrF++")[1].split("###")[0]
    dirs = list(DIRECTIONS)
    for arm in ("copy", "decoupled"):
        s = res["summary"][arm]["eng_Latn->arz_Arab"]["chrf++"]
        row = _row(chrf, arm)
        assert row[0] == arm and row[1] == "2"
        assert row[2 + dirs.index("eng_Latn->arz_Arab")] == f"{s['mean']:.1f} ± {s['sd']:.1f}"
    bleu = results.split("### BLEU")[1].split("###")[0]
    s = res["summary"]["random"]["ary_Arab->arb_Arab"]["bleu"]
    assert _row(bleu, "random")[4] == f"{s['mean']:.1f} ± {s['sd']:.1f}"
    rate = results.split("### Target-variety rate")[1]
    s = res["summary"]["base"]["arb_Arab->ary_Arab"]["target_variety_rate"]
    assert _row(rate, "base")[3] == f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"
    setup = _section(text, "Setup")
    assert "f" * 64 in setup and "balanced_accuracy 0.875" in setup and "n_samples 1000" in setup
    assert "nrefs:1|case:mixed|eff:yes" in setup
    assert _row(setup, "random")[:3] == ["random", "train", "0.002"]
    assert _row(setup, "copy")[:3] == ["copy", "copy", "—"]
    overlap = _section(text, "Overlap")
    ini = [res["runs"]["decoupled"][s]["overlap"]["initial"]["9"] for s in SEEDS]
    want = np.mean([np.mean([t[v]["reference"] for v in LOW]) for t in ini])
    row = next(r for r in overlap.splitlines() if r.startswith("| decoupled | 9 |"))
    assert row.split("|")[3].strip() == f"{want:.3f}"


def test_significance_sentences(run_dir: Path) -> None:
    sig = _section(write_report(run_dir).read_text(), "Significance")
    lines = {li.split(" vs standard")[0][2:]: li for li in sig.splitlines() if "vs standard:" in li}
    assert set(lines) == set(P_MEAN)
    assert lines["decoupled"].endswith("p = 0.012): significant at 0.05.")
    assert "+0.40 chrF++ (95% CI −0.30 … +1.10" in lines["decoupled"]
    assert lines["random"].endswith("p = 0.270): not significant at 0.05.")
    assert lines["copy"].endswith("p < 0.001): significant at 0.05.")
    row = next(r for r in sig.splitlines() if r.startswith("| decoupled | mean over low-resource"))
    assert "+0.40*" in row and "0.012" in row


def test_p_never_rounds_across_alpha(run_dir: Path) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    res["deltas"]["random"]["mean_low_resource"]["chrf++"]["p_value"] = 0.04996
    (run_dir / "results.json").write_text(json.dumps(res))
    sig = _section(write_report(run_dir).read_text(), "Significance")
    line = next(li for li in sig.splitlines() if li.startswith("- random vs standard"))
    assert line.endswith("p = 0.04996): significant at 0.05.")


@pytest.mark.parametrize("drop", ["deltas", "provenance.command", "runs.standard.0.kind"])
def test_invalid_results_raise_naming_the_file(run_dir: Path, drop: str) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    *parents, key = drop.split(".")
    node = res
    for p in parents:
        node = node[p]
    del node[key]
    (run_dir / "results.json").write_text(json.dumps(res))
    with pytest.raises(ValueError, match=re.escape(str(run_dir / "results.json"))) as info:
        write_report(run_dir)
    assert f"'{key}' is a required property" in str(info.value)
    assert "\n" not in str(info.value)
    assert not (run_dir / "report.md").exists()


def test_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"results\.json: no such file"):
        write_report(tmp_path)
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"results\.json: not valid JSON"):
        write_report(tmp_path)


def test_rerun_overwrites_cleanly(run_dir: Path) -> None:
    first = write_report(run_dir).read_text()
    (run_dir / "report.md").write_text("stale\n" * 10_000)
    res = json.loads((run_dir / "results.json").read_text())
    res["config"]["name"] = "renamed"
    (run_dir / "results.json").write_text(json.dumps(res))
    second = write_report(run_dir).read_text()
    assert "stale" not in second
    assert second == first.replace("report: test-arabic", "report: renamed")
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(PLOTS)


def test_missing_data_still_gives_every_section(run_dir: Path) -> None:
    """Logs gone or torn, no overlap, no deltas, no identifier: sections say so."""
    res = json.loads((run_dir / "results.json").read_text())
    for seeds in res["runs"].values():
        for run in seeds.values():
            run.pop("overlap", None)
            for m in run["metrics"].values():
                m.pop("chrf++_ci95")
    res["deltas"] = {}
    del res["variety_identifier"], res["bootstrap"]
    (run_dir / "results.json").write_text(json.dumps(res))
    text = write_report(run_dir).read_text()
    for title in SECTIONS:
        assert f"\n## {title}\n" in text
    assert "No deltas against the standard arm" in _section(text, "Significance")
    assert "No overlap tables" in _section(text, "Overlap")
    assert "Variety identifier: not recorded" in text
    assert "error bars: ± 1 sd over seeds" in text
    for name in PLOTS:
        assert (run_dir / "plots" / name).read_bytes()[:8] == PNG_MAGIC


def test_torn_log_line_and_bare_log_name(run_dir: Path) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    log = run_dir / "runs" / "decoupled" / "seed-0" / "train_log.jsonl"
    with log.open("a") as f:
        f.write('{"step": 40, "refresh": tr')  # an interrupted write
    res["runs"]["decoupled"]["0"]["overlap"]["by_step"] = "train_log.jsonl"
    (run_dir / "results.json").write_text(json.dumps(res))
    write_report(run_dir)
    assert (run_dir / "plots" / "overlap_by_step.png").stat().st_size > 5000


def test_failed_plot_leaves_no_half_file(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_report(run_dir)
    before = (run_dir / "plots" / PLOTS[0]).read_bytes()
    report = (run_dir / "report.md").read_text()

    def broken(self: Any, fname: str, **kwargs: Any) -> None:
        Path(fname).write_bytes(PNG_MAGIC)  # half written, then the disk fills up
        raise OSError("disk full")

    monkeypatch.setattr("matplotlib.figure.Figure.savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(run_dir)
    assert (run_dir / "plots" / PLOTS[0]).read_bytes() == before
    assert (run_dir / "report.md").read_text() == report
    assert sorted(p.name for p in (run_dir / "plots").iterdir()) == sorted(PLOTS)
