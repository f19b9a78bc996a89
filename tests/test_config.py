"""The TOML config: examples load, bad keys are named with the nearest valid key,
and `vardecouple train` runs one arm end to end on tiny-random."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPORA
from vardecouple.experiment.arms import prepare_data
from vardecouple.experiment.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]

TINY = f"""
name = "tiny"
[data]
root = "{CORPORA}"
corpora = [{{ path = "tatoeba-deu-nds" }}]
standard = "deu_Latn"
varieties = ["nds_Latn"]
dev_rows = 20
probe_rows = 60
test_rows = 20
max_train_examples = 300
max_length = 64
[model]
spec = "tiny-random"
[lora]
r = 4
alpha = 8
[train]
steps = 6
batch_size = 4
lr = 1e-3
checkpoint_every = 3
[decoupler]
refresh_every = 4
lam = 0.5
[arms.standard]
penalize = false
[arms.decoupled]
"""


@pytest.mark.parametrize("name", ["arabic-flores", "german-low-german", "finnish-kven"])
def test_example_configs_load_and_split(name: str, tmp_path: Path, corpora: Path) -> None:
    text = (ROOT / "examples" / f"{name}.toml").read_text()
    shipped = 'root = "../../shared/corpora"'
    assert shipped in text
    config = load_config(_write(tmp_path, text.replace(shipped, f'root = "{corpora}"')))
    assert {"standard", "decoupled", "random"} <= set(config.arms)
    assert config.decoupler_config("random").estimator == "random"
    assert config.decoupler_config("standard").penalize is False
    splits = prepare_data(config)
    assert splits.train and splits.probe
    steps, every = config.train.steps, config.arm("decoupled").refresh_every
    assert steps // every >= 3  # at least 3 refreshes after the step-0 fit


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("standard = ", "standrad = "), "unknown key 'data.standrad' (did you mean 'standard'?)"),
        (("lam = 0.5", "lamda = 0.5"), "unknown key 'decoupler.lamda' (did you mean 'lam'?)"),
        (
            ("[arms.decoupled]", "[arms.decoupled]\nrefresh_evry = 3"),
            "unknown key 'arms.decoupled.refresh_evry' (did you mean 'refresh_every'?)",
        ),
        (("lam = 0.5", "lam = -1"), "'decoupler.lam'"),
        (("refresh_every = 4", "refresh_every = 0"), "'decoupler.refresh_every'"),
        (("[decoupler]", '[decoupler]\nestimator = "pcaa"'), "did you mean 'pca'"),
        (("[model]", "[model"), "not valid TOML"),
        (('spec = "tiny-random"', ""), "missing key 'model.spec'"),
        (("[arms.standard]\npenalize = false\n[arms.decoupled]", ""), "no [arms.NAME] table"),
        (("[train]", "[train]\nbogus = 1"), "unknown key 'train.bogus'"),
        (("[lora]", "[lora]\nrank = 3"), "unknown key 'lora.rank'"),
    ],
)
def test_bad_configs_are_one_clear_error(tmp_path: Path, edit, message: str) -> None:
    old, new = edit
    assert old in TINY
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, TINY.replace(old, new, 1)))
    text = str(info.value)
    assert message in text and "\n" not in text and str(tmp_path) in text


def test_unknown_arm_names_the_nearest(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, TINY))
    with pytest.raises(ConfigError, match=r"no arm 'decouple'.*did you mean 'decoupled'"):
        config.arm("decouple")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vardecouple", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_train_command_end_to_end(tmp_path: Path, corpora: Path) -> None:
    config = _write(tmp_path, TINY)
    out = tmp_path / "run"
    done = _cli("train", str(config), "--arm", "decoupled", "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r.get("refresh")] == [0, 4, 6]
    assert all(r["penalty"] > 0 and r["lambda"] == 0.5 for r in log if "lm_loss" in r)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "train_summary.json").read_text())["steps"] == 6
    summary = (out / "train_summary.json").read_bytes()
    again = _cli("train", str(config), "--arm", "decoupled", "--out", str(out))
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr
    assert (out / "train_summary.json").read_bytes() == summary
    wrong = _cli("train", str(config), "--arm", "decouple", "--out", str(tmp_path / "x"))
    assert wrong.returncode == 2 and "did you mean 'decoupled'" in wrong.stderr


def test_sections_take_their_defaults_from_the_library_dataclasses() -> None:
    """``[train]``/``[decoupler]`` unset = the library's TrainConfig/DecouplerConfig."""
    import dataclasses

    from vardecouple.decouple import DecouplerConfig
    from vardecouple.experiment.sections import DecouplerSection, TrainSection
    from vardecouple.train.step import TrainConfig

    for section, config, library_only in (
        (TrainSection(), TrainConfig(), {"seed"}),
        (DecouplerSection(), DecouplerConfig(), {"max_length", "seed", "match_penalty"}),
    ):
        names = {f.name for f in dataclasses.fields(config)}
        assert names - library_only <= set(type(section).model_fields), names
        for name in names - library_only:
            ours, theirs = getattr(section, name), getattr(config, name)
            assert (list(theirs) if isinstance(theirs, tuple) else theirs) == ours, name
