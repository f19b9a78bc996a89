"""`vardecouple run`: arms × seeds on a tiny model, results.json, resume, matching."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sacrebleu

from conftest import MINI_CONFIG as MINI
from conftest import MINI_CORE
from vardecouple.cli import main
from vardecouple.experiment import arms
from vardecouple.experiment import evaluation as experiment
from vardecouple.experiment import run as run_module
from vardecouple.experiment.config import ConfigError, load_config
from vardecouple.experiment.results import validate_results
from vardecouple.experiment.run import run_experiment
from vardecouple.experiment.schedule import run_schedule
from vardecouple.report import PLOTS, SECTIONS

pytestmark = pytest.mark.usefixtures("corpora")


@pytest.fixture(scope="module")
def finished(mini_run: Path) -> Path:
    return mini_run


def test_results_follow_the_schema_and_the_contract(finished: Path) -> None:
    results = json.loads((finished / "out" / "results.json").read_text())
    validate_results(results)  # raises on any schema violation
    assert set(results["runs"]) == {"copy", "base", "standard", "decoupled", "random", "erase"}
    assert set(results["runs"]["decoupled"]) == {"0", "1"}
    assert set(results["runs"]["erase"]) == {"0", "1"}  # one per seed of the standard arm
    erasure = results["runs"]["erase"]["0"]["erasure"]
    assert erasure["on"] == "standard" and erasure["layers"] == [1] and erasure["alpha"] == 1
    for o in erasure["later_overlap"]["1"].values():  # zero at the erased layer (α = 1)
        assert o["plain"] > 1e-4 and o["erased"] < 1e-9
    assert set(results["runs"]["copy"]) == {"0"}
    assert results["directions"]["deu_Latn->nds_Latn"]["kind"] == "low-resource"
    assert results["directions"]["nds_Latn->deu_Latn"]["kind"] == "standard"
    assert "mean_low_resource" in results["deltas"]["decoupled"]
    assert "standard" not in results["deltas"]
    assert results["provenance"]["command"] == ""
    decoding = results["decoding"]
    assert decoding["exact"] is True and decoding["approximations"] == []
    assert decoding["settings"] == {
        "batch_size": 32,
        "continuous": True,
        "lookup_tokens": 8,
        "num_beams": 1,
        "dtype": "fp32",
    }  # the CPU defaults
    assert all(run["decoding"]["exact"] for arm, per in results["runs"].items() if arm != "copy"
               for run in per.values())  # fmt: skip
    # the summary is the mean over the seeds' own numbers
    runs = results["runs"]["decoupled"]
    for d in results["directions"]:
        seeds = [runs[s]["metrics"][d]["chrf++"] for s in runs]
        assert results["summary"]["decoupled"][d]["chrf++"]["mean"] == pytest.approx(
            sum(seeds) / len(seeds)
        )


def test_probe_reads_held_out_rows_of_base_and_every_trained_arm(finished: Path) -> None:
    out = finished / "out"
    results = json.loads((out / "results.json").read_text())
    assert results["probe"] == "probe/probe.json"
    probe = json.loads((out / "probe" / "probe.json").read_text())
    assert list(probe["results"]) == ["base", "standard", "decoupled", "random"]
    assert probe["adapters"]["decoupled"].endswith("runs/decoupled/seed-0/adapter")
    assert probe["rows"] == 40 and probe["layers"] == [0, 1, 2, 3]
    splits = arms.prepare_data(load_config(finished / "mini.toml"))
    trained_on = {t for ex in splits.train for t in (ex.src_text, ex.tgt_text)}
    for code in ("deu_Latn", "nds_Latn"):
        rows = (out / "probe" / "rows" / f"{code}.txt").read_text().splitlines()
        assert len(rows) == 40 and not trained_on & set(rows)  # held out from training
    # a fine-tuned arm's states differ from the base model's
    assert probe["results"]["standard"]["1"] != probe["results"]["base"]["1"]
    report = (out / "report.md").read_text()
    assert "## Probing" in report and "probe/plots/probe_overlap.png" in report
    assert (out / "probe" / "plots" / "probe_overlap.png").stat().st_size > 1000
    # its table: each standard-vs-variety metric averaged over the varieties (computed
    # here from probe.json), then the online compression of one probe over every variety
    lines = report.split("## Probing", 1)[1].splitlines()
    head = next(ln for ln in lines if ln.startswith("| model |"))
    cells = [c.strip() for c in head.strip("|").split("|")]
    assert cells == ["model", "layer", "overlap", "CKA", "mean angle °", "online compression",
                     "online compression (all)"]  # fmt: skip
    metrics = ("overlap", "cka", "angle_mean", "online_compression")
    for model, layers in probe["results"].items():
        for layer, entry in layers.items():
            means = [
                sum(entry[c][m] for c in probe["varieties"]) / len(probe["varieties"])
                for m in metrics
            ]
            row = next(ln for ln in lines if ln.startswith(f"| {model} | {layer} |"))
            got = [c.strip() for c in row.strip("|").split("|")][2:]
            assert got == [f"{v:.3f}" for v in (*means, entry["all"]["online_compression"])]


def _numbers(tree: object, prefix: str = "") -> dict[str, float]:
    """Every number in a JSON tree, by its path."""
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _numbers(sub, f"{prefix}/{key}").items()
        }
    if isinstance(tree, int | float) and not isinstance(tree, bool):
        return {prefix: float(tree)}
    return {}


def test_adapters_gone_between_arm_seeds_give_the_uninterrupted_run(
    finished: Path, tmp_path: Path, monkeypatch
) -> None:
    """As across sessions that keep results but not adapters: before each arm × seed
    (but an erase arm), every adapter on disk is deleted. The erase arm runs right after
    each seed of the arm it erases, each trained arm's first seed is probed right after
    it is made: the run (``--order seed``, every arm with seed 0 first) finishes with the
    scores and probe of the uninterrupted run made in arm order. Then, with one probe
    part and results.json removed, the resumed run lists that arm under ``not_probed``
    instead of failing."""
    (tmp_path / "mini.toml").write_text(MINI)
    config = load_config(tmp_path / "mini.toml")
    out, real, order = tmp_path / "out", run_module.evaluate_arm_seed, []

    def forgetful(ctx, arm: str, seed: int) -> None:
        if not config.arm(arm).erase_on:
            for adapter in out.glob("runs/*/seed-*/adapter"):
                shutil.rmtree(adapter)
        order.append((arm, seed))
        real(ctx, arm, seed)

    monkeypatch.setattr(run_module, "evaluate_arm_seed", forgetful)
    run_experiment(config, out, progress=False, order_by="seed")
    assert order == run_schedule(config, "seed")
    assert order == [("copy", 0), ("base", 0), ("standard", 0), ("erase", 0), ("decoupled", 0),
                     ("random", 0), ("standard", 1), ("erase", 1), ("decoupled", 1),
                     ("random", 1)]  # fmt: skip
    assert not list(out.glob("runs/*/seed-*/adapter"))[1:]  # only the last one is left
    new, old = (json.loads((f / "results.json").read_text()) for f in (out, finished / "out"))
    assert set(new["runs"]) == set(old["runs"])
    for arm, seeds in old["runs"].items():
        for seed, record in seeds.items():
            assert _numbers(new["runs"][arm][seed]["metrics"]) == _numbers(record["metrics"])
    probe = json.loads((out / "probe" / "probe.json").read_text())
    before = json.loads((finished / "out" / "probe" / "probe.json").read_text())
    assert list(probe["results"]) == ["base", "standard", "decoupled", "random"]
    assert "not_probed" not in probe
    got, want = _numbers(probe["results"]), _numbers(before["results"])
    assert got.keys() == want.keys() and got == pytest.approx(want, rel=1e-5, abs=1e-7)
    # the last arm's probe part is lost with its adapter, and the run is finished again
    for gone in ("probe/probe.json", "results.json", "report.md"):
        (out / gone).unlink()
    shutil.rmtree(out / "probe" / "parts" / "random")
    shutil.rmtree(out / "runs" / "random" / "seed-1" / "adapter")
    run_experiment(config, out, progress=False, order_by="seed")
    probe = json.loads((out / "probe" / "probe.json").read_text())
    assert list(probe["results"]) == ["base", "standard", "decoupled"]
    assert list(probe["not_probed"]) == ["random"]
    assert "Not probed: random: its adapter was not on disk" in (out / "report.md").read_text()


def test_the_arm_order_puts_each_erase_seed_right_after_its_arm_seed(tmp_path: Path) -> None:
    (tmp_path / "mini.toml").write_text(MINI)
    assert run_schedule(load_config(tmp_path / "mini.toml")) == [
        ("copy", 0), ("base", 0), ("standard", 0), ("erase", 0), ("standard", 1), ("erase", 1),
        ("decoupled", 0), ("decoupled", 1), ("random", 0), ("random", 1),
    ]  # fmt: skip


def test_copy_arm_scores_equal_sacrebleu_on_the_sources(finished: Path) -> None:
    out = finished / "out"
    results = json.loads((out / "results.json").read_text())
    config = load_config(finished / "mini.toml")
    splits = arms.prepare_data(config)
    for d, m in results["runs"]["copy"]["0"]["metrics"].items():
        rows = [ex for ex in splits.test if f"{ex.src}->{ex.tgt}" == d]
        hyps = (out / m["hypotheses"]).read_text(encoding="utf-8").splitlines()
        assert hyps == [ex.src_text for ex in rows]
        chrf = sacrebleu.CHRF(word_order=2).corpus_score(hyps, [[ex.tgt_text for ex in rows]])
        assert m["chrf++"] == pytest.approx(chrf.score)


def test_random_arm_is_magnitude_matched_to_the_decoupled_arm(finished: Path) -> None:
    def start(arm: str, seed: int) -> tuple[float, float]:
        log = finished / "out" / "runs" / arm / f"seed-{seed}" / "train_log.jsonl"
        first = json.loads(log.read_text().splitlines()[0])
        return first["lambda"], first["start_penalty"]

    for seed in (0, 1):
        lam_d, pen_d = start("decoupled", seed)
        lam_r, pen_r = start("random", seed)
        assert lam_d == 1.0
        assert pen_r != pytest.approx(pen_d)  # a different subspace, a different scale
        assert lam_r * pen_r == pytest.approx(lam_d * pen_d, rel=1e-9)


def test_report_has_every_section_and_plot(finished: Path) -> None:
    out = finished / "out"
    text = (out / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in text
    for plot in PLOTS:
        assert (out / "plots" / plot).stat().st_size > 1000


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_finished_run_is_not_overwritten(finished: Path, capsys) -> None:
    """The same config again: exit 0, "already finished", every file untouched; the
    library call refuses (FileExistsError); another config in the folder: exit 2."""
    out = finished / "out"
    before = _tree(out)
    code = main(["run", str(finished / "mini.toml"), "--out", str(out)])
    assert code == 0 and "already finished" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="finished run"):
        run_experiment(load_config(finished / "mini.toml"), out, progress=False)
    other = finished / "other.toml"
    other.write_text((finished / "mini.toml").read_text().replace("steps = 4", "steps = 5"))
    code = main(["run", str(other), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "different config" in err and "--overwrite" in err
    assert _tree(out) == before


def test_resume_after_a_crash_between_arms_recomputes_nothing_finished(
    tmp_path: Path, monkeypatch
) -> None:
    text = MINI_CORE.replace("seeds = [0, 1]", "seeds = [0]")
    (tmp_path / "mini.toml").write_text(text)
    config = load_config(tmp_path / "mini.toml")
    real = experiment.train_arm
    calls: list[str] = []

    def crashing(config, arm, *args, **kwargs):
        calls.append(arm)
        if arm == "random":
            raise KeyboardInterrupt  # the process dies before this arm
        return real(config, arm, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_arm", crashing)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path / "out", progress=False)
    assert calls == ["standard", "decoupled", "random"]
    assert not (tmp_path / "out" / "results.json").exists()
    done = {
        arm: (tmp_path / "out" / "runs" / arm / "seed-0" / "eval.json").read_bytes()
        for arm in ("copy", "base", "standard", "decoupled")
    }
    calls.clear()
    monkeypatch.setattr(
        experiment, "train_arm", lambda *a, **k: (calls.append(a[1]), real(*a, **k))[1]
    )
    run_experiment(config, tmp_path / "out", progress=False)
    assert calls == ["random"]  # finished arms are read back, not trained again
    for arm, content in done.items():
        assert (tmp_path / "out" / "runs" / arm / "seed-0" / "eval.json").read_bytes() == content
    validate_results(json.loads((tmp_path / "out" / "results.json").read_text()))


def test_a_folder_started_under_an_older_default_resumes_with_it(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """A run folder whose config.json records ``estimator = "variational"`` (the default
    before ``lda``) resumes with it from a TOML that leaves the estimator unset; a TOML
    that sets another estimator is still refused."""
    core = MINI_CORE.replace("seeds = [0, 1]", "seeds = [0]")
    old = core.replace('estimator = "mean-diff"', 'estimator = "variational"')
    new = core.replace('estimator = "mean-diff"\nreference_estimator = "mean-diff"\n', "")
    assert "variational" in old and 'estimator = "mean' not in new.split("[arms")[0]
    (tmp_path / "old.toml").write_text(old)
    (tmp_path / "new.toml").write_text(new)
    assert load_config(tmp_path / "new.toml").decoupler.estimator == "lda"  # today's default
    real = experiment.train_arm

    def crashing(config, arm, *args, **kwargs):
        if arm == "random":
            raise KeyboardInterrupt
        return real(config, arm, *args, **kwargs)

    monkeypatch.setattr(experiment, "train_arm", crashing)
    with pytest.raises(KeyboardInterrupt):  # as if made by the older version
        run_experiment(load_config(tmp_path / "old.toml"), tmp_path / "out", progress=False)
    monkeypatch.setattr(experiment, "train_arm", real)
    assert main(["run", str(tmp_path / "new.toml"), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    validate_results(results)
    recorded = json.loads((tmp_path / "out" / "config.json").read_text())["decoupler"]
    assert recorded["estimator"] == recorded["reference_estimator"] == "variational"
    arm = json.loads((tmp_path / "out" / "runs" / "random" / "seed-0" / "config.json").read_text())
    assert arm["decoupler"]["reference_estimator"] == "variational"  # trained after the resume
    # an estimator the TOML sets is a real difference
    (tmp_path / "lda.toml").write_text(core.replace('estimator = "mean-diff"', 'estimator = "lda"'))
    code = main(["run", str(tmp_path / "lda.toml"), "--out", str(tmp_path / "out")])
    assert code == 2 and "different config" in capsys.readouterr().err


def test_match_penalty_of_must_name_a_penalised_arm(tmp_path: Path) -> None:
    bad = MINI.replace('match_penalty_of = "decoupled"', 'match_penalty_of = "decoupeld"')
    (tmp_path / "a.toml").write_text(bad)
    with pytest.raises(ConfigError, match="did you mean 'decoupled'"):
        load_config(tmp_path / "a.toml")
    bad = MINI.replace('match_penalty_of = "decoupled"', 'match_penalty_of = "standard"')
    (tmp_path / "b.toml").write_text(bad)
    with pytest.raises(ConfigError, match="penalised, trained arm"):
        load_config(tmp_path / "b.toml")


def test_validate_results_names_the_problem(finished: Path) -> None:
    results = json.loads((finished / "out" / "results.json").read_text())
    with pytest.raises(ValueError, match="schema_version"):
        validate_results(results | {"schema_version": 2})
    del results["runs"]["decoupled"]["1"]["metrics"]["deu_Latn->nds_Latn"]["bleu"]
    with pytest.raises(ValueError, match="runs/decoupled/1/metrics/deu_Latn->nds_Latn"):
        validate_results(results)


def test_best_dev_checkpoint_is_the_lowest_dev_loss_and_is_what_gets_evaluated(
    tmp_path: Path,
) -> None:
    text = MINI_CORE.replace("seeds = [0, 1]", "seeds = [0]").replace(
        "max_new_tokens = 12", 'max_new_tokens = 12\ncheckpoint = "best-dev"'
    )
    text = text.replace("steps = 4", "steps = 6\nlr = 0.05")
    text = text.replace('[arms.copy]\nkind = "copy"\n', "")
    (tmp_path / "m.toml").write_text(text)
    config = load_config(tmp_path / "m.toml")
    run_experiment(config, tmp_path / "out", progress=False)
    run = tmp_path / "out" / "runs" / "decoupled" / "seed-0"
    devs = [
        r
        for r in map(json.loads, (run / "train_log.jsonl").read_text().splitlines())
        if "dev_loss" in r
    ]
    assert [r["steps_done"] for r in devs] == [2, 4, 6]
    best = min(devs, key=lambda r: r["dev_loss"])
    kept = json.loads((run / "best.json").read_text())
    assert kept["step"] == best["steps_done"] and kept["dev_loss"] == best["dev_loss"]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    note = results["runs"]["decoupled"]["0"]["checkpoint"]
    assert note.startswith("best dev loss") and f"step {kept['step']} of 6" in note
    # the kept adapter reproduces the logged dev loss (independent recomputation)
    from peft import PeftModel

    from vardecouple.train.step import dev_loss

    splits = arms.prepare_data(config)
    loaded = arms.load_base(config, splits)
    model = PeftModel.from_pretrained(loaded.model, run / "best-adapter")
    dev = arms.tokenized_features(config, splits, loaded.tokenizer, examples=splits.dev)
    assert dev_loss(model, dev, loaded.tokenizer.pad_token_id) == pytest.approx(
        kept["dev_loss"], rel=1e-5
    )


def test_a_missing_comet_checkpoint_fails_before_any_training(tmp_path: Path) -> None:
    text = MINI_CORE.replace("max_new_tokens = 12", 'max_new_tokens = 12\ncomet = "nowhere.ckpt"')
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(FileNotFoundError, match=r"eval\.comet"):
        run_experiment(load_config(tmp_path / "c.toml"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out" / "runs").exists()


def test_seeds_in_parallel_processes_give_the_sequential_numbers(
    finished: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    text = MINI_CORE.replace('[arms.copy]\nkind = "copy"\n', "").replace(
        '[arms.base]\nkind = "base"\n', ""
    )
    text += '[arms.erase]\nkind = "erase"\nerase_on = "standard"\n'
    (tmp_path / "p.toml").write_text(text)
    run_experiment(load_config(tmp_path / "p.toml"), tmp_path / "out", progress=True, jobs=2)
    # each job reports its own training and decoding, in whole lines tagged with its job
    # (the worker processes write to the same stderr: capfd reads the file descriptor)
    err = capfd.readouterr().err
    par = json.loads((tmp_path / "out" / "results.json").read_text())
    # each seed's erasure runs as soon as its `standard` job is done (its adapter is
    # there), not after the other seed's job: the erase line follows its standard line
    done = [ln.split("] ", 1)[1].split(" done")[0] for ln in err.splitlines()
            if ln.startswith("run: [") and " done: " in ln]  # fmt: skip
    first = done.index("standard seed 0"), done.index("standard seed 1")
    assert [done[first[0] + 1], done[first[1] + 1]] == ["erase seed 0", "erase seed 1"], done
    assert "\r" not in err  # no bar redrawn over another job's
    for arm in ("standard", "decoupled", "random"):
        for seed in ("0", "1"):
            tag = f"[{arm} seed {seed}] "
            tagged = [ln[len(tag) :] for ln in err.splitlines() if ln.startswith(tag)]
            steps = par["runs"][arm][seed]["steps"]
            trained = f"train: {steps}/{steps} (100%)"
            assert any(ln.startswith(trained) for ln in tagged), (arm, seed, err)
            folder = tmp_path / "out" / "runs" / arm / f"seed-{seed}" / "hypotheses"
            for direction in sorted(f.stem for f in folder.glob("*.txt")):  # each decoded
                assert any(ln.startswith(f"{direction}: ") for ln in tagged), (direction, err)
    seq = json.loads((finished / "out" / "results.json").read_text())
    for seed in ("0", "1"):  # the erasure (main process) gives the sequential run's numbers
        assert par["runs"]["erase"][seed]["metrics"] == seq["runs"]["erase"][seed]["metrics"]
    for arm in ("standard", "decoupled", "random"):
        for seed in ("0", "1"):
            assert par["runs"][arm][seed]["metrics"] == seq["runs"][arm][seed]["metrics"]
            p_final = par["runs"][arm][seed]["overlap"]["final"]
            s_final = seq["runs"][arm][seed]["overlap"]["final"]
            for layer, per_variety in s_final.items():  # threads differ: float32 sums may
                for variety, values in per_variety.items():
                    assert p_final[layer][variety] == pytest.approx(values, rel=1e-5)


def test_a_folder_recorded_before_a_field_existed_still_matches(tmp_path: Path) -> None:
    """A run folder whose config.json predates a field (here ``[train] report_to``) is the
    same run when the config leaves that field at its default; not when it sets it, and
    not when any recorded value differs."""
    from vardecouple.experiment.schedule import run_state

    (tmp_path / "mini.toml").write_text(MINI)
    config = load_config(tmp_path / "mini.toml")
    recorded = json.loads(json.dumps(config.model_dump(exclude={"source", "data_root"})))
    del recorded["train"]["report_to"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(recorded))
    assert run_state(config, out) == "partial"
    told = MINI.replace("[train]\n", '[train]\nreport_to = ["tensorboard"]\n', 1)
    (tmp_path / "told.toml").write_text(told)
    with pytest.raises(FileExistsError, match="different config"):
        run_state(load_config(tmp_path / "told.toml"), out)
    recorded["train"]["steps"] += 1
    (out / "config.json").write_text(json.dumps(recorded))
    with pytest.raises(FileExistsError, match="different config"):
        run_state(config, out)
