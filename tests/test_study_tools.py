"""What a long study needs from the tool: evaluating a subset of the trained directions
(``[eval] directions``)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import sacrebleu

from conftest import MINI_CORE
from vardecouple.experiment.config import ConfigError, load_config
from vardecouple.experiment.run import run_experiment

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


def test_fewer_rows_for_one_arm_and_the_matched_pair_are_compared_directly(
    tmp_path: Path,
) -> None:
    """``[arms.base] max_examples = 7``: base is decoded and scored on the first 7 rows,
    its delta to ``standard`` is taken on those rows; ``matched_deltas`` holds
    decoupled − random (random is matched to decoupled). Both checked against sacrebleu
    on the files."""
    text = MINI_CORE.replace(
        '[arms.base]\nkind = "base"', '[arms.base]\nkind = "base"\nmax_examples = 7'
    )
    done = run_experiment(load_config(_config(tmp_path, text)), tmp_path / "out", progress=False)
    res, out = json.loads(done.read_text()), tmp_path / "out"

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
    assert set(res["matched_deltas"]) == {"random"}
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "decoupled vs random: mean over low-resource directions" in report
    assert "Scored on fewer test rows (the first ones): base (7 per direction)." in report
