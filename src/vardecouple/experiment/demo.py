"""The whole study out of the box: data → model → arms → results.json → report.md.

Default (no network, nothing but the package): a seeded synthetic language family
(:mod:`vardecouple.data.family`), a ``tiny-random`` Llama **pre-trained briefly on a
mix dominated by the standard variety** (so that, as in a real LM, there is a dominant
variety to be entangled with), then the arms ``copy`` / ``base`` / ``standard`` /
``decoupled`` / ``random`` (magnitude-matched to ``decoupled``) over seeds, and the
report. Pre-training mix (rows disjoint from the study's): 30% standard sentences,
30% pivot↔standard translations in the plain prompt format, 20% standard sentences
written twice (repetition, as natural text has: it teaches the copying that
translation between close varieties mostly is), 10% pivot, 10% varieties.

With ``corpus=DIR``: the same study on a real line-aligned folder (e.g.
``../shared/corpora/flores200/dev``) and a real model (e.g. ``gemma3-270m``), no
pre-training, sized by the arguments.

Everything lands under ``out``: ``data/`` (the family), ``model/`` (the pre-trained
model), ``demo.toml`` (the config, reusable with ``vardecouple run``) and ``run/``
(results.json, report.md, plots/, runs/).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from vardecouple import __version__
from vardecouple.data import load_corpus
from vardecouple.data.family import STANDARD_CODE
from vardecouple.experiment.config import load_config
from vardecouple.experiment.context import check_inputs
from vardecouple.experiment.demo_setup import DemoConfig, family_model
from vardecouple.experiment.run import run_experiment
from vardecouple.io import write_json_atomic, write_text_atomic

__all__ = [
    "DEMO_FILE",
    "DemoState",
    "demo_state",
    "run_demo",
]


def _toml(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, bool) else str(value).lower()


def _config_text(
    root: Path,
    corpus: str,
    standard: str,
    varieties: list[str],
    model: str,
    demo: DemoConfig,
    real: bool,
) -> str:
    """The demo's TOML: ``root`` (absolute, or relative to the TOML file's folder) holds
    the corpus folder ``corpus``."""
    # the tiny model: its middle layer and a high LR; a real model: the decoupler's
    # default (the middle layer L // 2) and the usual LoRA LR
    layers = "" if real else f"layers = [{demo.num_layers // 2}]\n"
    lr = "2e-4" if real else "3e-3"
    # the tiny model needs every linear layer adapted to learn the varieties in time
    modules = (
        '["q_proj", "k_proj", "v_proj", "o_proj"]'
        if real
        else ('["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]')
    )
    return f"""# Written by `vardecouple demo`; rerun with `vardecouple run THIS --out DIR`.
name = "demo"

[data]
root = {_toml(str(root))}
corpora = [{{ path = {_toml(corpus)} }}]
standard = {_toml(standard)}
varieties = {_toml(varieties)}
directions = "standard<->variety"
dev_rows = 50
probe_rows = 100
test_rows = {demo.test_rows}
max_length = 96
seed = {demo.seed}

[model]
spec = {_toml(model)}

[lora]
r = 16
alpha = 32
target_modules = {modules}

[train]
steps = {demo.steps}
batch_size = {demo.batch_size}
lr = {lr}
warmup_steps = {max(1, demo.steps // 20)}
checkpoint_every = {max(1, demo.steps // 3)}
seeds = {_toml(list(demo.seeds))}

[decoupler]
estimator = "lda"            # the default (docs/probe.md); the paper's probe: "variational"
rank = 1
{layers}refresh_every = {max(1, demo.steps // 3)}
form = "norm"
lam = {demo.lam}
tokens = "all"

[eval]
batch_size = 16
max_new_tokens = 64

[arms.copy]
kind = "copy"

[arms.base]
kind = "base"

[arms.standard]
penalize = false

[arms.decoupled]

[arms.random]
estimator = "random"
match_penalty_of = "decoupled"
"""


DEMO_FILE = "demo.json"  # what a demo folder is: version + sizes + data + model


@dataclass(frozen=True)
class DemoState:
    """What ``out`` holds for a demo: ``new`` (nothing), ``partial`` (this demo, started)
    or ``finished`` (this demo, with its report); after :func:`run_demo` ran it:
    ``ran``."""

    status: str
    report: Path


def _identity(
    demo: DemoConfig,
    corpus: Path | None,
    standard: str | None,
    varieties: list[str] | None,
    model: str,
) -> dict[str, Any]:

    sizes = {k: v for k, v in asdict(demo).items() if k != "jobs"}  # jobs: same numbers
    return {
        "vardecouple": __version__,
        "demo": json.loads(json.dumps(sizes)),
        "corpus": str(corpus) if corpus is not None else None,
        "standard": standard,
        "varieties": varieties,
        "model": model,
    }


def _is_demo_folder(out: Path) -> bool:
    return any((out / name).exists() for name in (DEMO_FILE, "demo.toml", "run"))


def demo_state(out: Path, identity: dict[str, Any]) -> DemoState:
    """Whether ``out`` is free, holds this demo (started or finished), or something else
    (:class:`FileExistsError`, one line naming what to do)."""
    report = out / "run" / "report.md"
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return DemoState("new", report)
    if not out.is_dir():
        raise FileExistsError(f"demo: --out {out} is a file; choose a folder")
    saved = out / DEMO_FILE
    if not _is_demo_folder(out):
        raise FileExistsError(f"demo: {out} is not empty and holds no demo; choose another --out")
    try:
        before = json.loads(saved.read_text(encoding="utf-8")) if saved.is_file() else None
    except (OSError, json.JSONDecodeError):
        before = None
    if before != identity:
        if before is None:
            what = "a demo of an earlier version"
        else:
            names = {"vardecouple": "version", "demo": "sizes"}
            keys = [names.get(k, k) for k in identity if before.get(k) != identity[k]]
            what = f"a demo of another {', '.join(keys) or 'config'}"
        raise FileExistsError(
            f"demo: {out} holds {what}; pass --overwrite to replace it, or choose another --out"
        )
    if (out / "run" / "results.json").is_file() and report.is_file():
        return DemoState("finished", report)
    return DemoState("partial", report)


def run_demo(
    out: str | Path,
    *,
    demo: DemoConfig | None = None,
    corpus: str | Path | None = None,
    standard: str | None = None,
    varieties: list[str] | None = None,
    model: str = "tiny-random",
    command: str = "vardecouple demo",
    progress: bool = True,
    overwrite: bool = False,
) -> DemoState:
    """Run the study into ``out``; returns its :class:`DemoState`: ``ran``, or
    ``finished`` when it was already done (nothing is recomputed), with the report.

    Every input is checked before the first byte is written. A started demo of the same
    version, sizes, data and model resumes; a folder holding anything else is refused
    (:class:`FileExistsError`) unless ``overwrite`` (and it is a demo folder)."""

    demo = demo or DemoConfig()
    out = Path(out)
    if corpus is None and model != "tiny-random":
        raise ValueError("demo: --model needs --corpus (the synthetic family uses tiny-random)")
    folder, codes = (None, None) if corpus is None else _check_corpus(corpus, standard, varieties)
    if model not in ("tiny-random", "gemma3-270m") and Path(model).exists():
        model = str(Path(model).resolve())  # a local model given on the command line
    identity = _identity(demo, folder, standard, codes, model)
    if overwrite and out.is_dir() and any(out.iterdir()):
        if not _is_demo_folder(out):
            raise FileExistsError(
                f"demo: {out} holds no demo; --overwrite only replaces a demo folder"
            )
    state = DemoState("new", out / "run" / "report.md") if overwrite else demo_state(out, identity)
    if state.status == "finished":
        return state
    if folder is not None:  # the real corpus and model: the run's own checks, before writing
        check_inputs(_parse(_config_text(folder.parent, folder.name, standard or "", codes or [],
                                         model, demo, real=True), out))  # fmt: skip
    if overwrite and out.exists():
        shutil.rmtree(out)

    write_json_atomic(out / DEMO_FILE, identity)
    threads = torch.get_num_threads()
    if corpus is None or model == "tiny-random":
        # measured: a tiny model's LoRA step runs 2x faster on 1 thread than on 2 (the
        # matrices are too small to share); real models keep every thread
        torch.set_num_threads(1)
    try:
        _run(out, demo, folder, standard, codes, model, command, progress)
    finally:
        torch.set_num_threads(threads)
    return DemoState("ran", out / "run" / "report.md")


def _check_corpus(
    corpus: str | Path, standard: str | None, varieties: list[str] | None
) -> tuple[Path, list[str]]:
    """The corpus folder (absolute) and the varieties studied; one-line errors."""

    folder = Path(corpus).resolve()
    if standard is None:
        raise ValueError("demo: --corpus needs --standard CODE (the dominant variety)")
    found = load_corpus(folder).varieties
    if standard not in found:
        raise ValueError(f"demo: standard {standard!r} not in {folder} ({', '.join(found)})")
    missing = [v for v in varieties or [] if v not in found]
    if missing:
        raise ValueError(
            f"demo: --varieties {', '.join(missing)} not in {folder} ({', '.join(found)})"
        )
    return folder, list(varieties or [c for c in found if c != standard])


def _parse(text: str, out: Path) -> Any:
    """The demo's config as ``load_config`` would read it from ``out/demo.toml``."""

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "demo.toml"
        path.write_text(text, encoding="utf-8")
        return load_config(path, data_root=out.resolve())


def _run(
    out: Path,
    demo: DemoConfig,
    corpus: Path | None,
    standard: str | None,
    varieties: list[str] | None,
    model: str,
    command: str,
    progress: bool,
) -> None:

    if corpus is None:
        folder, codes = family_model(out, demo, progress)
        # the pre-trained model and the corpus live in the demo folder: both are written
        # relative to demo.toml, so the folder can move
        root, name = "data", folder.name
        spec, std = "model", STANDARD_CODE
    else:
        root, name = str(corpus.parent), corpus.name
        codes, spec, std = list(varieties or []), model, str(standard)
    path = out / "demo.toml"
    text = _config_text(Path(root), name, std, codes, spec, demo, real=corpus is not None)
    write_text_atomic(path, text)
    jobs = min(demo.jobs, os.cpu_count() or 1)
    run_experiment(load_config(path), out / "run", command=command, progress=progress, jobs=jobs)
