"""What a long study needs from the tool: evaluating a subset of the trained directions
(``[eval] directions``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    untrained = COPY_ONLY.replace(
        "[data]", '[data]\ndirections = "standard->variety"'
    ).replace("[eval]", '[eval]\ndirections = ["nds_Latn->deu_Latn"]')
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
