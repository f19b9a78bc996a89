"""Evaluating models: one arm with one seed of a run (the model of its kind, then decoding
and scores into ``eval.json``), and ``vardecouple eval`` (:func:`evaluate_one`).

Each arm kind is one function from the run's context to hypotheses
(:data:`ARM_KINDS`, keyed by the kinds a config accepts): ``copy`` (the source sentence),
``base`` (the model without fine-tuning), ``train`` (the arm trained with this seed:
resumed if started, read back if finished) and ``erase`` (inference-time erasure on the
base model or on a trained arm's adapter).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import torch
from accelerate import PartialState
from peft import PeftModel

from vardecouple.data import Splits
from vardecouple.erase import EraseConfig, Erasure, erasing, fit_erasure, later_overlaps
from vardecouple.evaluate.metrics import signatures
from vardecouple.evaluate.scoring import (
    Decoded,
    decoding_record,
    eval_device,
    evaluate_model,
    score_hypotheses,
    test_sets,
    train_identifier,
    write_test_files,
)
from vardecouple.experiment.arms import load_base, prepare_data, train_arm
from vardecouple.experiment.config import ExperimentConfig
from vardecouple.experiment.context import (
    RunContext,
    adapter_dir,
    comet_checkpoint,
    decode_config,
    has_adapter,
    load_trained,
    shortlists_for,
)
from vardecouple.experiment.results import provenance
from vardecouple.experiment.sections import ArmKind
from vardecouple.io import write_json_atomic, write_lines_atomic
from vardecouple.probes.artifact import load_subspace

__all__ = ["ARM_KINDS", "arm_tests", "evaluate_arm_seed", "evaluate_one"]

Hypotheses = Decoded  # per direction, the decoding seconds and the sentences decoded


def evaluate_arm_seed(ctx: RunContext, arm: str, seed: int) -> None:
    """Train (or not) and evaluate one arm with one seed; writes its ``eval.json``."""
    config, ev = ctx.config, ctx.config.eval
    run_dir = ctx.out / "runs" / arm / f"seed-{seed}"
    kind = config.arm(arm).kind
    ctx = replace(ctx, tests=arm_tests(config, arm, ctx.tests))  # the arm's test rows
    record: dict[str, Any] = {"kind": kind, "steps": 0, "train_seconds": 0.0}
    record |= {"checkpoint": "no training", "lambda": None}
    hyps, eval_seconds, decoded = ARM_KINDS[kind](ctx, arm, seed, run_dir, record)
    metrics = score_hypotheses(
        hyps,
        ctx.tests,
        ctx.identifier,
        config.data.standard,
        n_samples=ev.bootstrap_samples,
        seed=ev.bootstrap_seed,
        comet=comet_checkpoint(config),
    )
    for d in metrics:
        metrics[d]["hypotheses"] = f"runs/{arm}/seed-{seed}/hypotheses/{d}.txt"
    # decoded_sentences: those decoded by this process (a resumed evaluation reads the
    # directions an interrupted one finished back, and eval_seconds does not cover them)
    record |= {"metrics": metrics, "eval_seconds": eval_seconds, "decoded_sentences": decoded}
    write_json_atomic(run_dir / "eval.json", record)


def arm_tests(
    config: ExperimentConfig, arm: str, tests: dict[str, list[Any]]
) -> dict[str, list[Any]]:
    """The test rows ``arm`` is scored on: the first ``[arms.NAME] max_examples`` of each
    direction when the arm sets it, else all of the run's."""
    n = config.arm(arm).max_examples
    return {d: rows[:n] for d, rows in tests.items()} if n else tests


def _copy(ctx: RunContext, arm: str, seed: int, run_dir: Path, record: dict) -> Hypotheses:
    """``copy``: the source sentence is the hypothesis (no model)."""
    hyps = {d: [ex.src_text for ex in rows] for d, rows in ctx.tests.items()}
    for d, lines in hyps.items():
        write_test_files(run_dir, d, ctx.tests[d])
        write_lines_atomic(run_dir / "hypotheses" / f"{d}.txt", lines)
    return Decoded(hyps, 0.0, 0)


def _base(ctx: RunContext, arm: str, seed: int, run_dir: Path, record: dict) -> Hypotheses:
    """``base``: the model without fine-tuning (loaded once per run)."""
    ctx.base = ctx.base or load_base(ctx.config, ctx.splits)
    return _decode(ctx, ctx.base.model, ctx.base.tokenizer, run_dir, record)


def _train(ctx: RunContext, arm: str, seed: int, run_dir: Path, record: dict) -> Hypotheses:
    """``train``: the arm fine-tuned with this seed (matched λ from its target's log)."""
    config = ctx.config
    if (run_dir / "train_summary.json").exists() and not has_adapter(config, run_dir):
        # trained in a session whose adapters were not kept (only finished results are):
        # nothing of it can be evaluated, so it is trained again from the start
        print(
            f"run: {arm} seed {seed}: trained earlier but {adapter_dir(config, run_dir)} is "
            "gone; training it again",
            file=sys.stderr,
            flush=True,
        )
        shutil.rmtree(run_dir)
    if (run_dir / "train_summary.json").exists():
        model, tokenizer = load_trained(config, ctx.splits, run_dir)
    else:
        target = config.arm(arm).match_penalty_of
        match = _start(ctx.out / "runs" / target / f"seed-{seed}") if target else None
        _, loaded = train_arm(
            config,
            arm,
            run_dir,
            seed=seed,
            resume=(run_dir / "train_log.jsonl").exists(),
            progress=ctx.progress,
            match_penalty=match[0] * match[1] if match else None,
            splits=ctx.splits,
        )
        model, tokenizer = loaded.model, loaded.tokenizer
        if config.eval.checkpoint == "best-dev":  # evaluate the kept adapter instead
            del loaded, model
            model, tokenizer = load_trained(config, ctx.splits, run_dir)
    decoded = _decode(ctx, model, tokenizer, run_dir, record)
    summary = json.loads((run_dir / "train_summary.json").read_text())
    record |= {
        "steps": summary["steps"],
        "train_seconds": summary["train_seconds"],
        "train_dtype": summary.get("dtype"),  # None: trained before it was recorded
        "checkpoint": _checkpoint_note(run_dir, config.eval.checkpoint, summary["steps"]),
        "overlap": _overlap(run_dir, ctx.out, config.arm(arm).reference_rank),
        "lambda": _start(run_dir)[0],
    }
    return decoded


def _erase(ctx: RunContext, arm: str, seed: int, run_dir: Path, record: dict) -> Hypotheses:
    """``erase``: the subspace fitted on the model itself, removed while it decodes; the
    model is ``erase_on``'s adapter of this seed, or the base model."""
    on = ctx.config.arm(arm).erase_on
    if on:
        source = ctx.out / "runs" / str(on) / f"seed-{seed}"
        if not has_adapter(ctx.config, source):
            raise FileNotFoundError(
                f"run: {arm} seed {seed} erases {adapter_dir(ctx.config, source)}, which is "
                f"gone (a run runs it right after {on} seed {seed}; adapters are not kept "
                f"with results): run {on} seed {seed} again in another folder"
            )
        model, tokenizer = load_trained(ctx.config, ctx.splits, source)
    else:
        ctx.base = ctx.base or load_base(ctx.config, ctx.splits)
        model, tokenizer = ctx.base.model, ctx.base.tokenizer
    model = model.to(eval_device())
    erasure, record["erasure"] = _erasure(ctx.config, arm, seed, model, tokenizer, ctx.splits)
    return _decode(ctx, model, tokenizer, run_dir, record, erasure)


ARM_KINDS: dict[str, Callable[..., Hypotheses]] = {
    "copy": _copy,
    "base": _base,
    "train": _train,
    "erase": _erase,
}
assert set(ARM_KINDS) == set(get_args(ArmKind)), "every arm kind has its function"


def _decode(
    ctx: RunContext, model: Any, tokenizer: Any, run_dir: Path, record: dict, erasure: Any = None
) -> Hypotheses:
    """Decode the test sets with ``model`` (on a GPU when there is one), erasing if asked."""
    model = model.to(eval_device())
    shortlists = shortlists_for(ctx.config, ctx.splits, tokenizer, ctx.tests)
    record["decoding"] = decoding_record(ctx.decoding, ctx.config.eval.shortlist, shortlists)
    with erasing(model, erasure):
        return evaluate_model(
            model,
            tokenizer,
            ctx.tests,
            run_dir,
            template=ctx.config.data.template,
            decode_config=ctx.decoding,
            shortlists=shortlists,
            progress=ctx.progress,
        )


def _start(run_dir: Path) -> tuple[float, float]:
    """(λ, L(step 0)) of a started trained arm, from its log's step-0 refresh."""
    log = run_dir / "train_log.jsonl"
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "start_penalty" in record:
                return float(record["lambda"]), float(record["start_penalty"])
    raise ValueError(f"run: {log} has no step-0 penalty (λ·L to match)")


def _overlap(run_dir: Path, out: Path, reference_rank: int) -> dict[str, Any]:
    """The first and last refresh's overlaps, and ``chance``: k/d, the overlap a random
    k-dimensional ``U₀`` would hold of isotropic states (d from the arm's saved subspace)."""
    log = run_dir / "train_log.jsonl"
    refreshes = [
        r for r in map(json.loads, log.read_text(encoding="utf-8").splitlines()) if r.get("refresh")
    ]
    info = run_dir / "subspace" / "subspace.json"
    dim = json.loads(info.read_text(encoding="utf-8"))["dim"] if info.is_file() else None
    return {
        "initial": refreshes[0]["overlap"],
        "final": refreshes[-1]["overlap"],
        "by_step": str(log.relative_to(out)),
        "chance": reference_rank / dim if dim else None,
    }


def _checkpoint_note(run_dir: Path, which: str, steps: int) -> str:
    if which != "best-dev":
        return f"final (step {steps})"
    best = json.loads((run_dir / "best.json").read_text())
    return (
        f"best dev loss {best['dev_loss']:.4f} at step {best['step']} of {steps} "
        "(dev loss measured every train.checkpoint_every steps and at the end)"
    )


def _erasure(
    config: ExperimentConfig, arm: str, seed: int, model: Any, tokenizer: Any, splits: Splits
) -> tuple[Any, dict[str, Any]]:
    """Fit the erase arm's subspaces on ``model``; return them and what to record."""
    settings = config.arm(arm)
    erase = EraseConfig(
        layers=tuple(settings.layers) if settings.layers is not None else None,
        alpha=settings.erase_alpha,
        estimator=settings.estimator,
        rank=settings.rank,
        estimator_options=settings.estimator_options,
        measure_fraction=settings.measure_fraction,
        probe_batch_size=settings.probe_batch_size,
        max_length=config.data.max_length,
        seed=seed,
    )
    erasure = fit_erasure(model, tokenizer, splits.probe, erase)
    info = erasure.describe() | {
        "on": settings.erase_on or "base",
        "estimator": settings.estimator,
        "later_overlap": later_overlaps(model, tokenizer, splits.probe, erasure, erase),
    }
    return erasure, info


def evaluate_one(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    model: str | None = None,
    adapter: str | Path | None = None,
    erase: Any = None,
    erase_from: str | Path | None = None,
    erase_alpha: float = 1.0,
    command: str = "",
    progress: bool = True,
) -> Path | None:
    """``vardecouple eval``: one model (and adapter) on the config's test split.

    Writes ``hypotheses/<direction>.txt`` and ``scores.json`` (metrics per direction,
    signatures, variety-identifier accuracy, provenance) to ``out_dir``. With ``erase``
    (an :class:`~vardecouple.erase.EraseConfig`) the subspaces are first fitted on the
    model (and adapter) itself from the config's probe split, decoding erases them, and
    ``scores.json`` has an ``erasure`` entry (layers, α, held-out overlaps at every
    later layer without and with erasure). With ``erase_from`` (a folder written by
    :func:`~vardecouple.probes.artifact.save_subspaces`, e.g. a trained arm's
    ``subspace/``) its subspaces are erased at strength ``erase_alpha`` instead: nothing
    is fitted, and the ``erasure`` entry names the folder.

    Under ``torchrun`` / ``accelerate launch`` the processes share the sentences
    (:func:`~vardecouple.evaluate.scoring.evaluate_model`), each on its own GPU when there are
    GPUs; the main process scores and writes (the others return None).
    """

    out = Path(out_dir)
    comet_checkpoint(config, check_package=True)  # every input check before any decoding
    if erase is not None and erase_from is not None:
        raise ValueError("eval: erase from a saved subspace or fit one, not both")
    saved = load_subspace(erase_from) if erase_from is not None else None
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"eval: adapter {adapter}: no adapter_config.json (a peft folder)")
    if model is not None:
        config = config.model_copy(
            update={"model": config.model.model_copy(update={"spec": model})}
        )
    splits = prepare_data(config)
    tests = test_sets(splits, config.eval.max_examples, config.eval_directions())
    identifier, id_info = train_identifier(splits, tests, seed=config.data.seed)
    loaded = load_base(config, splits)
    net = loaded.model
    if adapter is not None:
        net = PeftModel.from_pretrained(net, str(adapter))
    if erase is not None:
        bad = [i for i in erase.layers or () if not 0 <= i < loaded.num_layers]
        if bad:
            raise ValueError(f"eval: --erase-layers {bad} out of range; {config.model.spec} "
                             f"has layers 0..{loaded.num_layers - 1}")  # fmt: skip
        if erase.rank > loaded.hidden_size:
            raise ValueError(f"eval: --erase-rank {erase.rank} exceeds the hidden size "
                             f"{loaded.hidden_size}")  # fmt: skip
    if saved is not None:
        bad = [i for i in saved if not 0 <= i < loaded.num_layers]
        if bad or saved.info.get("dim") != loaded.hidden_size:
            raise ValueError(
                f"eval: --erase-from {erase_from}: layers {list(saved)} of width "
                f"{saved.info.get('dim')} do not fit {config.model.spec} (layers "
                f"0..{loaded.num_layers - 1}, width {loaded.hidden_size})"
            )
    if (out / "scores.json").exists():  # after the input checks: a typo is reported first
        raise FileExistsError(f"eval: {out / 'scores.json'} exists; choose another folder")
    main_process = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: join the process group
        main_process = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    net = net.to(eval_device())
    ev = config.eval
    erasure, erasure_info = None, None
    if erase is not None:
        erasure = fit_erasure(net, loaded.tokenizer, splits.probe, erase)
        erasure_info = erasure.describe() | {
            "estimator": erase.estimator,
            "later_overlap": later_overlaps(net, loaded.tokenizer, splits.probe, erasure, erase),
        }
    elif saved is not None:
        erasure = Erasure(dict(saved), erase_alpha, {})
        erasure_info = erasure.describe() | {
            "from": str(Path(erase_from or "").resolve()),
            "estimator": saved.info.get("estimator"),
        }
    decoding = decode_config(config)
    shortlists = shortlists_for(config, splits, loaded.tokenizer, tests)
    with erasing(net, erasure):
        hyps, seconds, _ = evaluate_model(
            net,
            loaded.tokenizer,
            tests,
            out,
            template=config.data.template,
            decode_config=decoding,
            shortlists=shortlists,
            progress=progress,
        )
    if not main_process:
        return None
    metrics = score_hypotheses(
        hyps,
        tests,
        identifier,
        config.data.standard,
        n_samples=ev.bootstrap_samples,
        seed=ev.bootstrap_seed,
        comet=comet_checkpoint(config),
    )
    scores = {
        "model": config.model.spec,
        "adapter": str(Path(adapter).resolve()) if adapter else None,
        "erasure": erasure_info,
        "decoding": decoding_record(decoding, ev.shortlist, shortlists),
        "metrics": metrics,
        "signatures": signatures(),
        "variety_identifier": id_info,
        "eval_seconds": seconds,
        "provenance": provenance(loaded.source, command),
    }
    write_json_atomic(out / "scores.json", scores)
    return out / "scores.json"
