"""From a config to trained arms: data → model → decoupler → training loop.

:func:`prepare_data` loads and splits the corpora the config names;
:func:`train_arm` fine-tunes one arm with one seed into an output folder (resumable)
and saves the adapter there.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from vardecouple.config import ExperimentConfig
from vardecouple.data import Splits, format_example, load_corpus, make_splits, tokenize_example

__all__ = [
    "evaluate_one",
    "load_base",
    "prepare_data",
    "run_experiment",
    "tokenized_features",
    "train_arm",
    "validate_results",
]


def prepare_data(config: ExperimentConfig) -> Splits:
    """Load every corpus of ``[data]`` in place and make the de-duplicated splits."""
    d = config.data
    corpora = [
        load_corpus(config.resolve(c.path), format=c.format, split=c.split, varieties=c.varieties)
        for c in d.corpora
    ]
    tests = [
        load_corpus(config.resolve(c.path), format=c.format, split=c.split, varieties=c.varieties)
        for c in d.test_corpora
    ]
    return make_splits(
        corpora,
        standard=d.standard,
        varieties=d.varieties,
        directions=d.directions,
        pivot=d.pivot,
        dev_rows=d.dev_rows,
        probe_rows=d.probe_rows,
        test_rows=d.test_rows,
        test_corpora=tests,
        seed=d.seed,
    )


def tokenized_features(
    config: ExperimentConfig, splits: Splits, tokenizer: Any, examples: list | None = None
) -> list[dict]:
    """Prompt-formatted, tokenized training examples (loss on target tokens only)."""
    if examples is None and config.data.max_train_examples is not None:
        examples = splits.train[: config.data.max_train_examples]
    examples = splits.train if examples is None else examples
    features = []
    for ex in examples:
        prompt, target = format_example(ex, config.data.template, tokenizer)
        f = tokenize_example(tokenizer, prompt, target, max_length=config.data.max_length)
        f["low_resource"] = ex.tgt != config.data.standard
        features.append(f)
    return features


def _corpus_texts(splits: Splits) -> list[str]:
    texts = [t for ex in splits.train for t in (ex.src_text, ex.tgt_text)]
    return texts + [s.text for s in splits.probe]


def train_arm(
    config: ExperimentConfig,
    arm: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
    match_penalty: float | None = None,
    splits: Splits | None = None,
) -> tuple[dict[str, Any], Any]:
    """Train arm ``arm`` with ``seed``; writes the log, summary and ``adapter/`` to ``out_dir``.

    Returns the training summary and the :class:`~vardecouple.model.LoadedModel` (its
    model now the trained peft model). ``match_penalty``: λ·L(step 0) to match.
    """
    from vardecouple.decouple import OnlineDecoupler
    from vardecouple.model import add_lora
    from vardecouple.train import train

    # fails early on a bad arm
    decoupler_config = config.decoupler_config(arm, seed=seed, match_penalty=match_penalty)
    out = Path(out_dir)
    if (out / "train_summary.json").exists():  # before any loading
        raise FileExistsError(f"train: {out} holds a finished run; choose another output folder")
    if not resume and (out / "train_log.jsonl").exists():
        raise FileExistsError(f"train: {out} holds a started run; pass --resume to continue it")
    splits = splits or prepare_data(config)
    loaded = load_base(config, splits)
    lora = config.lora
    add_lora(
        loaded,
        r=lora.r,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=lora.target_modules,
        seed=seed,
    )
    features = tokenized_features(config, splits, loaded.tokenizer)
    dev = None
    if config.eval.checkpoint == "best-dev":
        if not splits.dev:
            raise ValueError("eval.checkpoint = 'best-dev' needs a dev split (data.dev_rows > 0)")
        dev = tokenized_features(config, splits, loaded.tokenizer, examples=splits.dev)
    decoupler = OnlineDecoupler(decoupler_config, splits.probe, loaded.num_layers)
    out.mkdir(parents=True, exist_ok=True)
    resolved = config.model_dump() | {"arm": arm, "seed": seed}
    (out / "config.json").write_text(json.dumps(resolved, indent=1, default=str))
    (out / "splits.txt").write_text(splits.describe() + "\n")
    summary = train(
        loaded.model,
        loaded.tokenizer,
        features,
        decoupler,
        config.train_config(seed),
        out,
        progress=progress,
        resume=resume,
        dev_features=dev,
    )
    tmp = out / ".adapter.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    loaded.model.save_pretrained(tmp)
    if (out / "adapter").exists():
        shutil.rmtree(out / "adapter")
    os.replace(tmp, out / "adapter")
    return summary, loaded


def load_base(config: ExperimentConfig, splits: Splits) -> Any:
    """The config's model without adapters (``tiny-random`` builds its tokenizer on the data)."""
    from vardecouple.model import load_model

    return load_model(
        config.model.spec,
        corpus_texts=_corpus_texts(splits) if config.model.spec == "tiny-random" else None,
        dtype=getattr(torch, config.model.dtype),
        trust_remote_code=config.model.trust_remote_code,
    )


# --------------------------------------------------------------------------- run


def _write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(obj, handle, indent=1, default=str)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _arm_order(config: ExperimentConfig) -> list[str]:
    """copy/base first, then trained arms, a matched arm after the arm it matches."""
    names = list(config.arms)
    fixed = [a for a in names if config.arm(a).kind != "train"]
    plain = [
        a for a in names if config.arm(a).kind == "train" and not config.arm(a).match_penalty_of
    ]
    return fixed + plain + [a for a in names if a not in fixed and a not in plain]


def _start_target(run_dir: Path) -> float:
    """λ·L(step 0) of a finished or started trained arm, from its log's step-0 refresh."""
    log = run_dir / "train_log.jsonl"
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "start_penalty" in record:
                return float(record["lambda"]) * float(record["start_penalty"])
    raise ValueError(f"run: {log} has no step-0 penalty to match")


def _overlap(run_dir: Path, out: Path) -> dict[str, Any]:
    log = run_dir / "train_log.jsonl"
    refreshes = [
        r for r in map(json.loads, log.read_text(encoding="utf-8").splitlines()) if r.get("refresh")
    ]
    return {
        "initial": refreshes[0]["overlap"],
        "final": refreshes[-1]["overlap"],
        "by_step": str(log.relative_to(out)),
    }


def _provenance(config: ExperimentConfig, source: str, command: str) -> dict[str, Any]:
    import platform
    import subprocess
    from importlib.metadata import version

    from vardecouple.model import sha256_file

    try:
        sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        sha = None
    src = Path(source)
    weights = sorted(src.glob("*.safetensors")) if src.is_dir() else [src] if src.is_file() else []
    digest = None
    if weights:
        digest = ",".join(sha256_file(w) for w in weights)
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in info.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    return {
        **{
            name: version(name)
            for name in ("vardecouple", "torch", "transformers", "peft", "sacrebleu")
        },
        "git_sha": sha,
        "model_sha256": digest,
        "command": command,
        "machine": f"{platform.system()} {platform.release()}, {cpu}, torch threads "
        f"{torch.get_num_threads()}",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _mean_sd(values: list[float]) -> dict[str, Any]:
    import statistics

    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "n_seeds": len(values)}


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    command: str = "",
    overwrite: bool = False,
    progress: bool = True,
    jobs: int = 1,
) -> Path:
    """Train and evaluate every arm × seed; write ``results.json`` and ``report.md``.

    Resumable: a finished arm/seed (its ``eval.json``) is never recomputed; a started
    one resumes from its checkpoint; hypotheses already decoded are read back.
    ``jobs > 1`` trains the seeds of an arm in that many processes at once (each with
    ``torch threads / jobs`` threads); the numbers are those of a sequential run.
    """
    if jobs < 1:
        raise ValueError(f"run: jobs={jobs} must be ≥ 1")
    from vardecouple.evaluate import (
        direction_kinds,
        read_lines,
    )
    from vardecouple.metrics import paired_bootstrap, signatures

    out = Path(out_dir)
    resolved = config.model_dump(exclude={"source", "data_root"})
    done_file = out / "results.json"
    if done_file.exists() and not overwrite:
        raise FileExistsError(
            f"run: {out} holds a finished run (arms {', '.join(config.arms)} done); "
            "choose another folder or pass --overwrite"
        )
    if overwrite and out.exists():
        shutil.rmtree(out)
    saved = out / "config.json"
    if saved.exists() and json.loads(saved.read_text()) != json.loads(json.dumps(resolved)):
        raise FileExistsError(
            f"run: {out} holds a run of a different config; choose another folder"
        )
    _write_json_atomic(saved, resolved)
    started = time.perf_counter()
    _comet(config)  # a missing COMET checkpoint fails before any training
    context = _context(config, out)
    context.progress = progress
    splits, tests, ev = context.splits, context.tests, config.eval
    (out / "splits.txt").write_text(splits.describe() + "\n", encoding="utf-8")
    kinds = direction_kinds(list(tests), config.data.standard, config.data.varieties)
    prov_file = out / "provenance.json"
    provenance = json.loads(prov_file.read_text()) if prov_file.exists() else None
    if provenance is None:
        context.base = load_base(config, splits)
        provenance = _provenance(config, context.base.source, command)
        _write_json_atomic(prov_file, provenance)
    runs: dict[str, dict[str, Any]] = {}
    for arm in _arm_order(config):
        settings = config.arm(arm)
        seeds = config.train.seeds if settings.kind == "train" else config.train.seeds[:1]
        todo = [s for s in seeds if not (out / "runs" / arm / f"seed-{s}" / "eval.json").exists()]
        if jobs > 1 and settings.kind == "train" and len(todo) > 1:
            _parallel(config, out, arm, todo, jobs)
        else:
            for seed in todo:
                _arm_seed(context, arm, seed)
        for seed in seeds:
            finished = out / "runs" / arm / f"seed-{seed}" / "eval.json"
            runs.setdefault(arm, {})[str(seed)] = json.loads(finished.read_text())
    context.base = None
    if provenance is None:
        provenance = _provenance(config, str(config.model.spec), command)
    provenance = provenance | {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
    }
    summary = {
        arm: {
            d: {
                m: _mean_sd([runs[arm][s]["metrics"][d][m] for s in runs[arm]])
                for m in ("chrf++", "bleu", "target_variety_rate")
            }
            for d in tests
        }
        for arm in runs
    }

    def hyp_sets(arm: str, d: str) -> list[list[str]]:
        return [
            read_lines(out / runs[arm][s]["metrics"][d]["hypotheses"], len(tests[d]))
            for s in runs[arm]
        ]

    deltas: dict[str, Any] = {}
    if "standard" in runs:
        low = [d for d in tests if kinds[d] == "low-resource"]
        for arm in runs:
            if arm == "standard":
                continue
            deltas[arm] = {}
            groups = [(d, [d]) for d in tests] + ([("mean_low_resource", low)] if low else [])
            for name, dirs in groups:
                blocks = [
                    ([ex.tgt_text for ex in tests[d]], hyp_sets(arm, d), hyp_sets("standard", d))
                    for d in dirs
                ]
                deltas[arm][name] = {
                    m: paired_bootstrap(
                        blocks, metric=m, n_samples=ev.bootstrap_samples, seed=ev.bootstrap_seed
                    ).to_dict()
                    for m in ("chrf++", "bleu")
                }
    results = {
        "schema_version": 1,
        "config": resolved,
        "provenance": provenance,
        "signatures": signatures(),
        "directions": {d: {"kind": kinds[d], "n": len(tests[d])} for d in tests},
        "variety_identifier": context.identifier_info,
        "bootstrap": {"n_samples": ev.bootstrap_samples, "seed": ev.bootstrap_seed},
        "runs": runs,
        "summary": summary,
        "deltas": deltas,
    }
    validate_results(results)
    _write_json_atomic(done_file, results)
    from vardecouple.report import write_report

    write_report(out, command=command)
    return done_file


def _comet(config: ExperimentConfig) -> Path | None:
    """The COMET checkpoint of ``eval.comet``, relative to the config's folder; checked."""
    if config.eval.comet is None:
        return None
    path = (Path(config.data_root) / config.eval.comet).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config {config.source}: eval.comet: no checkpoint file {path}")
    return path


def _trained(config: ExperimentConfig, splits: Splits, run_dir: Path) -> tuple[Any, Any]:
    """The base model with the arm's evaluated adapter (final or best on dev) loaded."""
    from peft import PeftModel

    name = "best-adapter" if config.eval.checkpoint == "best-dev" else "adapter"
    if not (run_dir / name / "adapter_config.json").is_file():
        raise FileNotFoundError(f"run: {run_dir / name} is missing; train the arm again")
    loaded = load_base(config, splits)
    return PeftModel.from_pretrained(loaded.model, run_dir / name), loaded.tokenizer


def _checkpoint_note(run_dir: Path, which: str, steps: int) -> str:
    if which != "best-dev":
        return f"final (step {steps})"
    best = json.loads((run_dir / "best.json").read_text())
    return (
        f"best dev loss {best['dev_loss']:.4f} at step {best['step']} of {steps} "
        "(dev loss measured every train.checkpoint_every steps and at the end)"
    )


@dataclass
class _Context:
    """What every (arm, seed) of a run shares."""

    config: ExperimentConfig
    out: Path
    splits: Splits
    tests: dict[str, list]
    identifier: Any
    identifier_info: dict[str, Any]
    decoding: Any
    progress: bool
    base: Any = None


def _context(config: ExperimentConfig, out: Path) -> _Context:
    """A worker's context, rebuilt from the config (deterministic: same splits)."""
    from vardecouple.decode import DecodeConfig
    from vardecouple.evaluate import test_sets, train_identifier

    splits = prepare_data(config)
    tests = test_sets(splits, config.eval.max_examples)
    identifier, info = train_identifier(splits, tests, seed=config.data.seed)
    ev = config.eval
    decoding = DecodeConfig(
        batch_size=ev.batch_size,
        length_ratio=ev.length_ratio,
        max_new_tokens=ev.max_new_tokens,
        num_beams=ev.num_beams,
    )
    return _Context(config, out, splits, tests, identifier, info, decoding, progress=False)


def _worker(config: ExperimentConfig, out: Path, arm: str, seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    _arm_seed(_context(config, out), arm, seed)


def _parallel(config: ExperimentConfig, out: Path, arm: str, seeds: list[int], jobs: int) -> None:
    """Train and evaluate ``seeds`` of ``arm`` in ``jobs`` processes (spawned)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(jobs, len(seeds)), mp_context=context) as pool:
        futures = [pool.submit(_worker, config, out, arm, seed, threads) for seed in seeds]
        for future in futures:
            future.result()  # re-raises a worker's error


def _arm_seed(ctx: _Context, arm: str, seed: int) -> None:
    """Train (or not) and evaluate one arm with one seed; writes its ``eval.json``."""
    from vardecouple.evaluate import evaluate_model, score_hypotheses, write_lines_atomic

    config, out, splits, tests = ctx.config, ctx.out, ctx.splits, ctx.tests
    settings, ev = config.arm(arm), config.eval
    run_dir = out / "runs" / arm / f"seed-{seed}"
    record: dict[str, Any] = {"kind": settings.kind, "steps": 0, "train_seconds": 0.0}
    record |= {"checkpoint": "no training", "lambda": None}
    if settings.kind == "copy":
        hyps = {d: [ex.src_text for ex in rows] for d, rows in tests.items()}
        for d, lines in hyps.items():
            write_lines_atomic(run_dir / "hypotheses" / f"{d}.txt", lines)
        eval_seconds = 0.0
    else:
        if settings.kind == "base":
            ctx.base = ctx.base or load_base(config, splits)
            model, tokenizer = ctx.base.model, ctx.base.tokenizer
        elif (run_dir / "train_summary.json").exists():
            model, tokenizer = _trained(config, splits, run_dir)
        else:
            target = settings.match_penalty_of
            match = _start_target(out / "runs" / target / f"seed-{seed}") if target else None
            _, loaded = train_arm(
                config,
                arm,
                run_dir,
                seed=seed,
                resume=(run_dir / "train_log.jsonl").exists(),
                progress=ctx.progress,
                match_penalty=match,
                splits=splits,
            )
            model, tokenizer = loaded.model, loaded.tokenizer
            if ev.checkpoint == "best-dev":  # evaluate the kept adapter instead
                del loaded, model
                model, tokenizer = _trained(config, splits, run_dir)
        hyps, eval_seconds = evaluate_model(
            model,
            tokenizer,
            tests,
            run_dir,
            template=config.data.template,
            decode_config=ctx.decoding,
            progress=ctx.progress,
        )
    if settings.kind == "train":
        summary = json.loads((run_dir / "train_summary.json").read_text())
        record |= {
            "steps": summary["steps"],
            "train_seconds": summary["train_seconds"],
            "checkpoint": _checkpoint_note(run_dir, ev.checkpoint, summary["steps"]),
            "overlap": _overlap(run_dir, out),
            "lambda": _start_lambda(run_dir),
        }
    metrics = score_hypotheses(
        hyps,
        tests,
        ctx.identifier,
        config.data.standard,
        n_samples=ev.bootstrap_samples,
        seed=ev.bootstrap_seed,
        comet=_comet(config),
    )
    for d in metrics:
        metrics[d]["hypotheses"] = f"runs/{arm}/seed-{seed}/hypotheses/{d}.txt"
    record |= {"metrics": metrics, "eval_seconds": eval_seconds}
    _write_json_atomic(run_dir / "eval.json", record)


def _start_lambda(run_dir: Path) -> float | None:
    for line in (run_dir / "train_log.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "start_penalty" in record:
            return float(record["lambda"])
    return None


def validate_results(results: dict[str, Any]) -> None:
    """Check ``results`` against the shipped JSON Schema (``schemas/results.schema.json``)."""
    from importlib.resources import files

    import jsonschema

    schema = json.loads((files("vardecouple") / "schemas" / "results.schema.json").read_text())
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(results)
    )
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(top)"
        raise ValueError(f"results.json: {where}: {error.message}")


def evaluate_one(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    model: str | None = None,
    adapter: str | Path | None = None,
    command: str = "",
    progress: bool = True,
) -> Path:
    """``vardecouple eval``: one model (and adapter) on the config's test split.

    Writes ``hypotheses/<direction>.txt`` and ``scores.json`` (metrics per direction,
    signatures, variety-identifier accuracy, provenance) to ``out_dir``.
    """
    from vardecouple.decode import DecodeConfig
    from vardecouple.evaluate import evaluate_model, score_hypotheses, test_sets, train_identifier
    from vardecouple.metrics import signatures

    out = Path(out_dir)
    if (out / "scores.json").exists():
        raise FileExistsError(f"eval: {out / 'scores.json'} exists; choose another folder")
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"eval: adapter {adapter}: no adapter_config.json (a peft folder)")
    if model is not None:
        config = config.model_copy(
            update={"model": config.model.model_copy(update={"spec": model})}
        )
    splits = prepare_data(config)
    tests = test_sets(splits, config.eval.max_examples)
    identifier, id_info = train_identifier(splits, tests, seed=config.data.seed)
    loaded = load_base(config, splits)
    net = loaded.model
    if adapter is not None:
        from peft import PeftModel

        net = PeftModel.from_pretrained(net, str(adapter))
    ev = config.eval
    hyps, seconds = evaluate_model(
        net,
        loaded.tokenizer,
        tests,
        out,
        template=config.data.template,
        decode_config=DecodeConfig(
            batch_size=ev.batch_size,
            length_ratio=ev.length_ratio,
            max_new_tokens=ev.max_new_tokens,
            num_beams=ev.num_beams,
        ),
        progress=progress,
    )
    metrics = score_hypotheses(
        hyps,
        tests,
        identifier,
        config.data.standard,
        n_samples=ev.bootstrap_samples,
        seed=ev.bootstrap_seed,
        comet=_comet(config),
    )
    scores = {
        "model": config.model.spec,
        "adapter": str(adapter) if adapter else None,
        "metrics": metrics,
        "signatures": signatures(),
        "variety_identifier": id_info,
        "eval_seconds": seconds,
        "provenance": _provenance(config, loaded.source, command),
    }
    _write_json_atomic(out / "scores.json", scores)
    return out / "scores.json"
