"""Relative paths and another working directory: every command that takes a path.

Each command runs from a ``chdir``-ed temporary directory with relative ``--out``,
``--config``, ``--corpus``, ``--adapter`` and ``--model`` paths, and a config whose
``data.root`` and ``model.spec`` are relative to the config's own folder (not to the
current directory). Afterwards every path written into a generated JSON or TOML file
must be absolute or relative to the file that holds it, never to the current directory.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any

import pytest

from conftest import CORPORA
from vardecouple.cli import main

# ~1 minute: a tiny demo, run, train, eval, report, probe
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("corpora")]

ROWS = 240

CONFIG = """
name = "paths"
[data]
root = "data"
corpora = [{ path = "deu-nds" }]
standard = "deu_Latn"
varieties = ["nds_Latn"]
dev_rows = 10
probe_rows = 40
test_rows = 8
max_length = 48
[model]
spec = "models/tiny"
[lora]
r = 2
alpha = 4
[train]
steps = 2
batch_size = 4
checkpoint_every = 1
seeds = [0]
[decoupler]
estimator = "mean-diff"
reference_estimator = "mean-diff"
layers = [1]
refresh_every = 1
[eval]
max_new_tokens = 6
[arms.copy]
kind = "copy"
[arms.standard]
penalize = false
[arms.decoupled]
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """``project/cfg/c.toml`` with ``cfg/data/deu-nds`` (a slice of the real corpus) and
    ``cfg/models/tiny``; the commands run from ``project/work``."""
    from vardecouple.model.load import tiny_random

    root = tmp_path_factory.mktemp("project")
    cfg = root / "cfg"
    data = cfg / "data" / "deu-nds"
    data.mkdir(parents=True)
    texts = []
    for code in ("deu_Latn", "nds_Latn"):
        lines = (CORPORA / "tatoeba-deu-nds" / f"{code}.txt").read_text("utf-8").splitlines()
        (data / f"{code}.txt").write_text("\n".join(lines[:ROWS]) + "\n", encoding="utf-8")
        texts += lines[:ROWS]
    model, tokenizer = tiny_random(texts, hidden_size=32, num_layers=2)
    model.save_pretrained(cfg / "models" / "tiny")
    tokenizer.save_pretrained(cfg / "models" / "tiny")
    (cfg / "c.toml").write_text(CONFIG, encoding="utf-8")
    (root / "work").mkdir()
    return root


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def _paths_are_not_cwd_relative(tree: Path, cwd: Path) -> int:
    """Every string in every JSON/TOML file under ``tree`` that names an existing path
    names it absolutely or relative to the file's folder, never relative to ``cwd`` only.
    Returns how many path strings were found (absolute or file-relative)."""
    found = 0
    for file in sorted(tree.rglob("*")):
        if file.suffix == ".json":
            values = _strings(json.loads(file.read_text("utf-8")))
        elif file.suffix == ".toml":
            values = _strings(tomllib.loads(file.read_text("utf-8")))
        else:
            continue
        for text in values:
            if "\n" in text or len(text) > 300 or not text.strip() or text in (".", ".."):
                continue
            if os.path.isabs(text):
                found += Path(text).exists()
            elif "/" in text and (file.parent / text).exists():
                found += 1
            else:
                assert "/" not in text or not (cwd / text).exists(), (
                    f"{file.relative_to(tree)}: {text!r} is relative to the working directory"
                )
    return found


def test_demo_with_a_relative_out_from_another_directory(project: Path, monkeypatch) -> None:
    work = project / "work"
    monkeypatch.chdir(work)
    args = ["demo", "--out", "demo-out", "--quick", "--pretrain-steps", "20"]
    args += ["--steps", "4", "--test-rows", "6"]
    assert main(args) == 0
    report = work / "demo-out" / "run" / "report.md"
    assert report.is_file()
    toml = tomllib.loads((work / "demo-out" / "demo.toml").read_text("utf-8"))
    # the corpus and the model are written relative to demo.toml: the folder can move
    assert toml["data"]["root"] == "data" and toml["model"]["spec"] == "model"
    assert _paths_are_not_cwd_relative(work / "demo-out", work) > 0


def test_run_train_eval_report_probe_with_relative_paths(project: Path, monkeypatch) -> None:
    work = project / "work"
    monkeypatch.chdir(work)
    config = "../cfg/c.toml"  # data.root and model.spec are relative to it, not to cwd
    assert main(["run", config, "--out", "out-run"]) == 0
    results = json.loads(Path("out-run/results.json").read_text("utf-8"))
    assert results["config"]["model"]["spec"] == str((project / "cfg/models/tiny").resolve())
    assert main(["report", "out-run"]) == 0
    assert main(["train", config, "--arm", "decoupled", "--out", "out-train"]) == 0
    saved = json.loads(Path("out-train/config.json").read_text("utf-8"))
    assert Path(saved["source"]).is_absolute() and Path(saved["data_root"]).is_absolute()
    adapter = "out-train/adapter"
    assert main(["eval", "--config", config, "--adapter", adapter, "--out", "out-eval"]) == 0
    scores = json.loads(Path("out-eval/scores.json").read_text("utf-8"))
    assert scores["adapter"] == str((work / adapter).resolve())
    probe = ["probe", "--model", "../cfg/models/tiny", "--corpus", "../cfg/data/deu-nds"]
    probe += ["--standard", "deu_Latn", "--adapter", adapter, "--max-rows", "20", "--rank", "2"]
    assert main([*probe, "--out", "out-probe"]) == 0
    for out in ("out-run", "out-train", "out-eval", "out-probe"):
        assert (work / out).is_dir(), out
    # nothing was written beside the config (relative paths did not resolve there)
    assert sorted(p.name for p in (project / "cfg").iterdir()) == ["c.toml", "data", "models"]
    assert _paths_are_not_cwd_relative(work, work) > 0
