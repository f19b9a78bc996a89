"""Every score can be recomputed from the files written beside it, with sacrebleu's own
command line: ``sources/``, ``references/`` and ``hypotheses/`` per direction, same
line order, for ``vardecouple eval`` (OUT/) and ``vardecouple run`` (runs/ARM/seed-S/).
Also: ``eval.comet`` without the COMET package is one error line, before any decoding."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CORPORA, MINI_CORE, spread_tiny_model
from vardecouple.cli import main
from vardecouple.data import load_corpus
from vardecouple.evaluate import scoring as evaluate
from vardecouple.experiment.arms import prepare_data
from vardecouple.experiment.config import load_config
from vardecouple.experiment.run import run_experiment

pytestmark = pytest.mark.usefixtures("corpora")

SACREBLEU = Path(sys.executable).parent / "sacrebleu"
WIDTH = 10  # digits after the point that `sacrebleu -b -w WIDTH` prints
CLI_METRICS = {"chrf++": ["-m", "chrf", "--chrf-word-order", "2"], "bleu": ["-m", "bleu"]}
FILES = ("sources", "references", "hypotheses")
#: the mini experiment without trained arms: evaluation only
NO_TRAINING = (MINI_CORE.split("[arms.copy]")[0] + '[arms.base]\nkind = "base"\n'
               + '[arms.copy]\nkind = "copy"\n')  # fmt: skip


def _sacrebleu(ref: Path, hyp: Path, metric: str, *extra: str) -> str:
    out = subprocess.run(
        [str(SACREBLEU), str(ref), "-i", str(hyp), *CLI_METRICS[metric], *extra],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def _lines(path: Path) -> list[str]:
    text = path.read_bytes().decode("utf-8")
    assert text.endswith("\n"), path
    return text[:-1].split("\n")


def _assert_rescored(folder: Path, metrics: dict, signatures: dict, expected: dict) -> None:
    """Each direction's files line up with the test rows, and sacrebleu's command line on
    them prints the recorded chrF++ and BLEU (to WIDTH digits) under the same signature."""
    assert set(metrics) == set(expected)
    for direction, rows in expected.items():
        files = {name: folder / name / f"{direction}.txt" for name in FILES}
        lines = {name: _lines(path) for name, path in files.items()}
        assert {name: len(v) for name, v in lines.items()} == dict.fromkeys(FILES, len(rows))
        assert lines["sources"] == [ex.src_text for ex in rows]
        assert lines["references"] == [ex.tgt_text for ex in rows]
        for metric in CLI_METRICS:
            printed = _sacrebleu(
                files["references"], files["hypotheses"], metric, "-b", "-w", str(WIDTH)
            )
            assert printed == f"{metrics[direction][metric]:.{WIDTH}f}", (direction, metric)
    direction = next(iter(expected))
    for metric in CLI_METRICS:  # the command line scores with the recorded settings
        ref, hyp = (folder / name / f"{direction}.txt" for name in ("references", "hypotheses"))
        assert json.loads(_sacrebleu(ref, hyp, metric))["signature"] == signatures[metric]


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    """The evaluation-only mini config on a saved tiny model with spread weights: its
    hypotheses differ from sentence to sentence, so the scores are not all 0."""
    folder = tmp_path_factory.mktemp("rescore")
    model, tokenizer = spread_tiny_model(load_corpus(CORPORA / "tatoeba-deu-nds"))
    model.to(torch.float32).save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    text = NO_TRAINING.replace('spec = "tiny-random"', f'spec = "{folder / "model"}"')
    assert text != NO_TRAINING
    (folder / "mini.toml").write_text(text)
    return folder / "mini.toml"


@pytest.fixture(scope="module")
def expected(config_file: Path) -> dict:
    config = load_config(config_file)
    return evaluate.test_sets(prepare_data(config), config.eval.max_examples)


def test_eval_scores_are_what_sacrebleu_prints_on_the_written_files(
    config_file: Path, expected: dict
) -> None:
    out = config_file.parent / "ev"
    assert main(["eval", "--config", str(config_file), "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert len(expected) == 2 and all(len(rows) == 20 for rows in expected.values())
    _assert_rescored(out, scores["metrics"], scores["signatures"], expected)


def test_run_scores_are_what_sacrebleu_prints_on_the_written_files(
    config_file: Path, expected: dict
) -> None:
    out = config_file.parent / "run"
    run_experiment(load_config(config_file), out, progress=False)
    results = json.loads((out / "results.json").read_text())
    assert set(results["runs"]) == {"base", "copy"}
    for arm, seeds in results["runs"].items():
        for seed, record in seeds.items():
            folder = out / "runs" / arm / f"seed-{seed}"
            metrics = json.loads((folder / "eval.json").read_text())["metrics"]
            assert metrics == record["metrics"]
            for d in expected:
                assert out / metrics[d]["hypotheses"] == folder / "hypotheses" / f"{d}.txt"
            _assert_rescored(folder, metrics, results["signatures"], expected)


def test_eval_comet_without_the_package_is_one_line_before_decoding(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "comet", None)  # as if unbabel-comet were not installed
    (tmp_path / "model.ckpt").write_bytes(b"not read")
    text = NO_TRAINING.replace("max_new_tokens = 12", 'max_new_tokens = 12\ncomet = "model.ckpt"')
    (tmp_path / "c.toml").write_text(text)
    out = tmp_path / "ev"
    assert main(["eval", "--config", str(tmp_path / "c.toml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "eval.comet" in err and "COMET" in err, err
    assert "Traceback" not in err
    assert not out.exists()  # nothing decoded, nothing written
    with pytest.raises(ValueError, match=r"^eval\.comet is set but the COMET package"):
        evaluate.comet_score(tmp_path / "model.ckpt", ["a"], ["a"], ["a"])
