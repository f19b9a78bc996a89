"""What a long study needs from the tool: a subset of the trained directions evaluated
(``[eval] directions``), an arm scored on fewer rows (``[arms.NAME] max_examples``), the
matched pairs compared (``matched_deltas``), and the plan of what is left
(``run --plan``)."""

from __future__ import annotations

import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu

from conftest import MINI_CORE
from vardecouple.analysis.power import estimate_power, sentences_needed
from vardecouple.evaluate.metrics import paired_bootstrap
from vardecouple.evaluate.scoring import source_copy_rate
from vardecouple.experiment.config import ConfigError, load_config
from vardecouple.experiment.plan import format_plan, measured_rates, plan_run
from vardecouple.experiment.run import run_experiment
from vardecouple.probes.artifact import load_subspace
from vardecouple.report.data import signed

pytestmark = pytest.mark.usefixtures("corpora")

COPY_ONLY = MINI_CORE.split("[arms.copy]")[0] + '[arms.copy]\nkind = "copy"\n'


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_eval_directions_expand_and_a_foreign_one_is_one_clear_error(tmp_path: Path) -> None:
    with_eval = COPY_ONLY.replace("[eval]", '[eval]\ndirections = "standard->variety"')
    assert load_config(_config(tmp_path, with_eval)).eval_directions() == ["deu_Latn->nds_Latn"]
    assert load_config(_config(tmp_path, COPY_ONLY)).eval_directions() is None
    untrained = COPY_ONLY.replace("[data]", '[data]\ndirections = "standard->variety"').replace(
        "[eval]", '[eval]\ndirections = ["nds_Latn->deu_Latn"]'
    )
    with pytest.raises(ConfigError) as info:
        load_config(_config(tmp_path, untrained))
    text = str(info.value)
    assert "'eval.directions': nds_Latn->deu_Latn not among [data] directions" in text
    assert "\n" not in text and str(tmp_path) in text


def test_a_run_decodes_and_scores_only_the_eval_directions(tmp_path: Path) -> None:
    both = run_experiment(load_config(_config(tmp_path, COPY_ONLY)), tmp_path / "both",
                          progress=False)  # fmt: skip
    one_way = COPY_ONLY.replace("[eval]", '[eval]\ndirections = "variety->standard"')
    one = run_experiment(load_config(_config(tmp_path, one_way)), tmp_path / "one",
                         progress=False)  # fmt: skip
    full, part = json.loads(both.read_text()), json.loads(one.read_text())
    assert set(full["directions"]) == {"deu_Latn->nds_Latn", "nds_Latn->deu_Latn"}
    assert list(part["directions"]) == ["nds_Latn->deu_Latn"]
    d = "nds_Latn->deu_Latn"
    assert part["runs"]["copy"]["0"]["metrics"][d] == full["runs"]["copy"]["0"]["metrics"][d]
    assert not (tmp_path / "one/runs/copy/seed-0/hypotheses/deu_Latn->nds_Latn.txt").exists()


def _chrf(hyps: list[str], refs: list[str]) -> float:
    return sacrebleu.CHRF(word_order=2).corpus_score(hyps, [refs]).score


@pytest.fixture(scope="module")
def mini_run(tmp_path_factory) -> Path:
    """MINI_CORE run with ``[arms.base] max_examples = 7`` (random is matched to decoupled)."""
    tmp_path = tmp_path_factory.mktemp("study")
    text = MINI_CORE.replace(
        '[arms.base]\nkind = "base"', '[arms.base]\nkind = "base"\nmax_examples = 7'
    )
    run_experiment(load_config(_config(tmp_path, text)), tmp_path / "out", progress=False)
    return tmp_path


def test_fewer_rows_for_one_arm_and_the_matched_pair_are_compared_directly(
    mini_run: Path,
) -> None:
    """``[arms.base] max_examples = 7``: base is decoded and scored on the first 7 rows,
    its delta to ``standard`` is taken on those rows; ``matched_deltas`` holds
    decoupled − random (random is matched to decoupled). Both checked against sacrebleu
    on the files."""
    out = mini_run / "out"
    res = json.loads((out / "results.json").read_text())

    def lines(arm: str, seed: int, folder: str, d: str) -> list[str]:
        path = out / "runs" / arm / f"seed-{seed}" / folder / f"{d}.txt"
        return path.read_text(encoding="utf-8").split("\n")[:-1]

    for d, info in res["directions"].items():
        assert info["n"] == 20
        refs = lines("standard", 0, "references", d)
        base = lines("base", 0, "hypotheses", d)
        assert len(base) == 7 and res["runs"]["base"]["0"]["metrics"][d]["n"] == 7
        assert res["runs"]["base"]["0"]["metrics"][d]["chrf++"] == pytest.approx(
            _chrf(base, refs[:7])
        )
        standard7 = statistics.fmean(
            _chrf(lines("standard", s, "hypotheses", d)[:7], refs[:7]) for s in (0, 1)
        )
        assert res["deltas"]["base"][d]["chrf++"]["delta"] == pytest.approx(
            _chrf(base, refs[:7]) - standard7
        )
        full = {arm: statistics.fmean(_chrf(lines(arm, s, "hypotheses", d), refs) for s in (0, 1))
                for arm in ("decoupled", "random")}  # fmt: skip
        pair = res["matched_deltas"]["random"]
        assert pair["of"] == "decoupled"
        assert pair["deltas"][d]["chrf++"]["delta"] == pytest.approx(
            full["decoupled"] - full["random"]
        )
        # seed by seed: each seed against the same seed, on the rows both were scored on
        assert res["deltas"]["base"][d]["chrf++"]["per_seed"] == pytest.approx(
            {"0": _chrf(base, refs[:7]) - _chrf(lines("standard", 0, "hypotheses", d)[:7],
                                                 refs[:7])}
        )  # fmt: skip
        assert pair["deltas"][d]["chrf++"]["per_seed"] == pytest.approx(
            {str(s): _chrf(lines("decoupled", s, "hypotheses", d), refs)
             - _chrf(lines("random", s, "hypotheses", d), refs) for s in (0, 1)}
        )  # fmt: skip
    low = res["deltas"]["decoupled"]["mean_low_resource"]["chrf++"]  # one direction: the same
    assert low["per_seed"] == res["deltas"]["decoupled"]["deu_Latn->nds_Latn"]["chrf++"]["per_seed"]
    assert set(res["matched_deltas"]) == {"random"}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "decoupled vs random: mean over low-resource directions" in report
    each = ", ".join(f"{k}: {signed(v)}" for k, v in low["per_seed"].items())
    sentence = f"decoupled vs standard: mean over low-resource directions {signed(low['delta'])}"
    assert sentence in report and f"; seed by seed {each}." in report
    assert "Scored on fewer test rows (the first ones): base (7 per direction)." in report


def test_plan_rates_are_the_medians_of_the_finished_results(mini_run: Path, tmp_path: Path) -> None:
    out = mini_run / "out"
    records = [json.loads(f.read_text()) for f in out.glob("runs/*/seed-*/eval.json")]
    per_step = [r["train_seconds"] / r["steps"] for r in records if r["steps"]]  # none resumed
    per_sentence = [
        r["eval_seconds"] / sum(m["n"] for m in r["metrics"].values())
        for r in records
        if r["kind"] != "copy"
    ]
    for r in records:  # nothing was resumed: every scored sentence was decoded
        assert r["decoded_sentences"] == (0 if r["kind"] == "copy" else
                                          sum(m["n"] for m in r["metrics"].values()))  # fmt: skip
    rates = measured_rates(out)
    # 3 trained arms × 2 seeds; their evaluations and base's (copy decodes nothing)
    assert (rates.trainings, rates.evaluations) == (6, 7)
    assert rates.step_seconds == pytest.approx(statistics.median(per_step))
    assert rates.sentence_seconds == pytest.approx(statistics.median(per_sentence))
    # a resumed arm: its train_seconds cover the steps since the resume only
    copy = tmp_path / "resumed" / "runs" / "standard" / "seed-0"
    copy.mkdir(parents=True)
    record = json.loads((out / "runs/standard/seed-0/eval.json").read_text())
    (copy / "eval.json").write_text(json.dumps(record | {"train_seconds": 30.0}))
    (copy / "train_summary.json").write_text(json.dumps({"steps": 4, "resumed_from": 1}))
    assert measured_rates(tmp_path / "resumed").step_seconds == pytest.approx(30.0 / 3)
    # a resumed evaluation: its eval_seconds cover the sentences it decoded only
    (copy / "eval.json").write_text(
        json.dumps(record | {"eval_seconds": 20.0, "decoded_sentences": 5})
    )
    assert measured_rates(tmp_path / "resumed").sentence_seconds == pytest.approx(20.0 / 5)
    del record["decoded_sentences"]  # a record from before it existed: every scored sentence
    (copy / "eval.json").write_text(json.dumps(record | {"eval_seconds": 20.0}))
    scored = sum(m["n"] for m in record["metrics"].values())
    assert measured_rates(tmp_path / "resumed").sentence_seconds == pytest.approx(20.0 / scored)
    empty = measured_rates(tmp_path)
    assert empty.step_seconds is None and empty.sentence_seconds is None


def test_plan_lists_the_states_and_the_work_left(mini_run: Path, tmp_path: Path) -> None:
    config = load_config(mini_run / "c.toml")
    done = {(it.arm, it.seed): it for it in plan_run(config, mini_run / "out")}
    assert all(it.state == "done" and not it.steps_left and not it.sentences_left
               for it in done.values())  # fmt: skip
    assert set(done) == {("copy", 0), ("base", 0), *((a, s) for a in ("standard", "decoupled",
                         "random") for s in (0, 1))}  # fmt: skip
    # a folder where one arm is trained but not evaluated, one is half-way, the rest new;
    # and, as a fresh clone of a committed run has them, one trained arm without its
    # adapter (trained again from step 0) and one half-way without its checkpoint (ditto)
    partial = tmp_path / "out"
    for arm in ("standard", "decoupled"):
        for seed in (0, 1):
            (partial / "runs" / arm / f"seed-{seed}").mkdir(parents=True)
    for seed in (0, 1):
        (partial / f"runs/standard/seed-{seed}/train_summary.json").write_text("{}")
        log = partial / f"runs/decoupled/seed-{seed}/train_log.jsonl"
        log.write_text("".join(json.dumps({"step": k, "loss": 1.0}) + "\n" for k in range(3)))
    (partial / "runs/standard/seed-0/adapter").mkdir()
    (partial / "runs/standard/seed-0/adapter/adapter_config.json").write_text("{}")
    (partial / "runs/decoupled/seed-0/checkpoint").mkdir()
    items = {(it.arm, it.seed): it for it in plan_run(config, partial)}
    n = 20 * 2  # test rows × directions
    assert items[("standard", 0)].state == "trained"
    assert (items[("standard", 0)].steps_left, items[("standard", 0)].sentences_left) == (0, n)
    assert items[("standard", 1)].state == "adapter gone: retrain"
    assert (items[("standard", 1)].steps_left, items[("standard", 1)].sentences_left) == (4, n)
    assert items[("decoupled", 0)].state == "training (3/4)"
    assert items[("decoupled", 0)].steps_left == 1
    assert (items[("decoupled", 1)].state, items[("decoupled", 1)].steps_left) == ("to do", 4)
    assert (items[("random", 1)].steps_left, items[("random", 1)].sentences_left) == (4, n)
    assert items[("base", 0)].sentences_left == 7 * 2 and items[("copy", 0)].sentences_left == 0
    text = format_plan(list(items.values()), measured_rates(mini_run / "out"))
    steps = 4 * 6 - 4 - 3  # standard seed 0 trained, decoupled seed 0 at step 3 of 4
    sentences = n * 6 + 7 * 2  # every trained arm × seed (none evaluated) and base
    assert f"{steps} training steps, {sentences} sentences to decode" in text
    rates = measured_rates(mini_run / "out")
    hours = (steps * rates.step_seconds + sentences * rates.sentence_seconds) / 3600
    assert f"≈ {hours:.1f} h" in text
    assert "estimate: unknown: no s per training step and no s per decoded sentence" in (
        format_plan(list(items.values()), measured_rates(tmp_path / "nothing"))
    )


def test_a_trained_arm_whose_adapter_is_gone_is_trained_again_to_the_same_result(
    mini_run: Path, tmp_path: Path, capsys
) -> None:
    """A committed run folder keeps no adapters: an arm × seed trained but not evaluated
    when its session ended has a training summary and no adapter in the next. The run
    trains it again from step 0, with one line saying so: the same log and scores as
    the first time (the training is deterministic); the finished arms are kept."""
    out = tmp_path / "out"
    shutil.copytree(mini_run / "out", out)
    unit = out / "runs" / "decoupled" / "seed-1"
    for gone in (out / "results.json", out / "report.md", unit / "eval.json"):
        gone.unlink()
    shutil.rmtree(unit / "adapter")
    (unit / "hypotheses" / "deu_Latn->nds_Latn.txt").write_text("from the lost adapter\n")
    kept = (out / "runs" / "standard" / "seed-1" / "eval.json").read_bytes()
    run_experiment(load_config(mini_run / "c.toml"), out, progress=True)
    err = capsys.readouterr().err
    assert "run: decoupled seed 1: trained earlier but " in err and "training it again" in err
    assert (out / "runs" / "standard" / "seed-1" / "eval.json").read_bytes() == kept
    first = mini_run / "out" / "runs" / "decoupled" / "seed-1"

    def log(folder: Path) -> list[dict]:
        lines = (folder / "train_log.jsonl").read_text().splitlines()
        timing = ("seconds", "_per_s")
        return [{k: v for k, v in json.loads(x).items() if not any(t in k for t in timing)}
                for x in lines]  # fmt: skip

    assert log(unit) == log(first)
    again, before = (json.loads((f / "eval.json").read_text())["metrics"] for f in (unit, first))
    assert again == before


def test_run_plan_writes_nothing_and_rates_from_needs_plan(mini_run: Path, tmp_path: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vardecouple", *args],
                              capture_output=True, text=True, check=False)  # fmt: skip

    config, new = str(mini_run / "c.toml"), tmp_path / "new"
    shown = cli("run", config, "--out", str(new), "--plan", "--rates-from", str(mini_run / "out"))
    assert shown.returncode == 0, shown.stderr
    assert "left: 8 of 8 arm × seed results, 24 training steps, 254 sentences" in shown.stdout
    assert "estimate: ≈ " in shown.stdout and not new.exists()
    bad = cli("run", config, "--out", str(new), "--rates-from", str(mini_run / "out"))
    assert bad.returncode == 2 and bad.stderr.strip().endswith("--rates-from goes with --plan")
    assert len(bad.stderr.strip().splitlines()) == 1 and not new.exists()
    by_seed = cli("run", config, "--out", str(new), "--plan", "--order", "seed")
    units = [" ".join(line.split()[:2]) for line in by_seed.stdout.splitlines()[1:9]]
    assert units == ["copy 0", "base 0", "standard 0", "decoupled 0", "random 0", "standard 1",
                     "decoupled 1", "random 1"]  # fmt: skip
    both = cli("run", config, "--out", str(new), "--order", "seed", "--jobs", "2")
    assert both.returncode == 2 and both.stderr.strip().endswith("it goes with --order arm")
    assert len(both.stderr.strip().splitlines()) == 1 and not new.exists()


def test_source_copy_rate_counts_the_hypotheses_that_are_their_source(mini_run: Path) -> None:
    """Every arm × seed × direction records the share of hypotheses equal to their source
    line (``copy``: all of them), counted here on the written files; the report's table
    gives each arm's mean over seeds in %."""
    out = mini_run / "out"
    res = json.loads((out / "results.json").read_text())
    assert {"copy", "standard"} <= set(res["runs"])
    means = {}
    for arm, seeds in res["runs"].items():
        for seed, run in seeds.items():
            for d, m in run["metrics"].items():
                folder = out / "runs" / arm / f"seed-{seed}"
                hyps = (folder / "hypotheses" / f"{d}.txt").read_text().split("\n")[:-1]
                srcs = (folder / "sources" / f"{d}.txt").read_text().split("\n")[:-1][: len(hyps)]
                same = [h.split() == s.split() for h, s in zip(hyps, srcs, strict=True)]
                assert m["source_copy_rate"] == pytest.approx(sum(same) / len(same))
                means.setdefault((arm, d), []).append(m["source_copy_rate"])
        if arm == "copy":
            assert all(m["source_copy_rate"] == 1.0 for m in seeds["0"]["metrics"].values())
    report = (out / "report.md").read_text(encoding="utf-8")
    table = report.split("### Source-copy rate")[1].split("###")[0]
    row = next(r for r in table.splitlines() if r.startswith("| standard |"))
    d = next(iter(res["directions"]))
    cells = [c.strip() for c in row.strip("|").split("|")]
    col = 2 + list(res["directions"]).index(d)
    assert cells[col].split(" ± ")[0] == f"{statistics.fmean(means['standard', d]) * 100:.1f}"


def test_source_copy_rate_ignores_whitespace_and_refuses_unequal_lengths() -> None:
    assert source_copy_rate(["a  b ", "a c", "x"], [" a b", "a b", "x"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 hypotheses for 1 sources"):
        source_copy_rate(["a", "b"], ["a"])


def test_mechanism_chance_scale_and_held_out_penalty_in_results_and_report(mini_run: Path) -> None:
    """Each trained run records chance = k/d (k the reference rank, d the saved subspace's
    width); the report's penalty table holds the train logs' held-out penalties under U₀
    at the first and last refresh, averaged over seeds."""
    out = mini_run / "out"
    res = json.loads((out / "results.json").read_text())
    config = load_config(mini_run / "c.toml")
    for arm in ("standard", "decoupled", "random"):
        for seed in ("0", "1"):
            width = load_subspace(out / "runs" / arm / f"seed-{seed}" / "subspace")[1].basis.shape[
                0
            ]
            chance = res["runs"][arm][seed]["overlap"]["chance"]
            assert chance == pytest.approx(config.arm(arm).reference_rank / width)
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "low-res after ÷ chance" in report and (out / "plots" / "held_out_penalty.png").is_file()
    firsts, lasts = [], []
    for seed in (0, 1):
        log = out / "runs" / "decoupled" / f"seed-{seed}" / "train_log.jsonl"
        refreshes = [r for r in map(json.loads, log.read_text().splitlines()) if r.get("refresh")]
        firsts.append(refreshes[0]["held_out_penalty"]["1"]["reference"])
        lasts.append(refreshes[-1]["held_out_penalty"]["1"]["reference"])
        assert "previous" not in refreshes[0]["held_out_penalty"]["1"]
        assert "previous" in refreshes[-1]["held_out_penalty"]["1"]
    row = next(line for line in report.splitlines() if line.startswith("| decoupled | 1 | ")
               and "%" in line)  # fmt: skip
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert float(cells[2]) == pytest.approx(statistics.fmean(firsts), abs=5e-4)
    assert float(cells[3]) == pytest.approx(statistics.fmean(lasts), abs=5e-4)


def test_power_is_the_bootstrap_interval_scaled_to_the_target(mini_run: Path) -> None:
    out = mini_run / "out"
    got = {e.group: e for e in estimate_power(out, "decoupled", "standard", target=0.5)}
    assert set(got) == {"mean_low_resource", "mean_standard"}
    for group, d in (("mean_low_resource", "deu_Latn->nds_Latn"),
                     ("mean_standard", "nds_Latn->deu_Latn")):  # fmt: skip

        def lines(arm: str, folder: str, d: str = d) -> list[str]:
            path = out / "runs" / arm / "seed-0" / folder / f"{d}.txt"
            return path.read_text(encoding="utf-8").split("\n")[:-1]

        direct = paired_bootstrap(
            [(lines("standard", "references"), [lines("decoupled", "hypotheses")],
              [lines("standard", "hypotheses")])]
        )  # fmt: skip
        half = (direct.ci95[1] - direct.ci95[0]) / 2
        e = got[group]
        assert (e.seeds, e.n) == ((0,), 20)
        assert e.delta == pytest.approx(direct.delta) and e.half_width == pytest.approx(half)
        assert e.p_value == pytest.approx(direct.p_value)
        assert e.needed == max(1, math.ceil(20 * (half / 0.5) ** 2))
    # every seed: the seed-averaged comparison, which results.json reports against standard
    both = {e.group: e for e in estimate_power(out, "decoupled", "standard", all_seeds=True)}
    res = json.loads((out / "results.json").read_text())["deltas"]["decoupled"]
    for group, e in both.items():
        assert e.seeds == (0, 1)
        assert e.delta == pytest.approx(res[group]["chrf++"]["delta"])
        assert e.p_value == pytest.approx(res[group]["chrf++"]["p_value"])
        low, high = res[group]["chrf++"]["ci95"]
        assert e.half_width == pytest.approx((high - low) / 2)
    assert sentences_needed(100, 2.0, 1.0) == 400 and sentences_needed(100, 0.5, 1.0) == 25
    with pytest.raises(ValueError, match="power"):
        sentences_needed(0, 1.0, 1.0)


def test_power_command_prints_the_table_and_refuses_an_unknown_arm(mini_run: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vardecouple", "power", *args],
                              capture_output=True, text=True, check=False)  # fmt: skip

    out = str(mini_run / "out")
    shown = cli(out, "--compare", "decoupled", "random", "--compare", "decoupled", "standard")
    assert shown.returncode == 0, shown.stderr
    assert "decoupled − random" in shown.stdout and "decoupled − standard" in shown.stdout
    bad = cli(out, "--compare", "decoupled", "decoupld")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "no seed with both 'decoupled' and 'decoupld' evaluated" in bad.stderr
    same = cli(out, "--compare", "standard", "standard")
    assert same.returncode == 2 and same.stderr.strip().endswith("compare two different arms")
    both = cli(out, "--compare", "decoupled", "standard", "--seed", "0", "--all-seeds")
    assert both.returncode == 2 and len(both.stderr.strip().splitlines()) == 1
    assert "--all-seeds every seed: give one" in both.stderr


def test_power_on_a_committed_folder_rebuilds_the_references_from_the_config(
    mini_run: Path, tmp_path: Path
) -> None:
    """A committed run keeps no references/ (corpus text): `power` then says to pass
    --config, and with it prints what it prints on the full folder (JSON compared)."""

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vardecouple", "power", *args, "--json",
                               "--compare", "decoupled", "standard", "--all-seeds"],
                              capture_output=True, text=True, check=False)  # fmt: skip

    full = cli(str(mini_run / "out"))
    assert full.returncode == 0, full.stderr
    committed = tmp_path / "out"
    shutil.copytree(mini_run / "out", committed)
    for copy in committed.glob("runs/*/seed-*/references"):
        shutil.rmtree(copy)
    bare = cli(str(committed))
    assert bare.returncode == 2 and len(bare.stderr.strip().splitlines()) == 1
    assert "is missing (a committed run keeps no copy" in bare.stderr and "--config" in bare.stderr
    rebuilt = cli(str(committed), "--config", str(mini_run / "c.toml"))
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert json.loads(rebuilt.stdout) == json.loads(full.stdout)
    other = tmp_path / "other.toml"
    other.write_text((mini_run / "c.toml").read_text().replace("test_rows = 20", "test_rows = 21"))
    refused = cli(str(committed), "--config", str(other))
    assert refused.returncode == 2 and "different config" in refused.stderr
