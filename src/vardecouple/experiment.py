"""Experiments: every arm × seed of a config trained, evaluated and summarised.

:func:`run_experiment` (``vardecouple run``) trains and evaluates each arm with each seed
into ``OUT/runs/ARM/seed-S/`` (resumable at arm, seed and checkpoint granularity; a
finished one is never recomputed), then writes ``OUT/results.json``
(:mod:`vardecouple.results`) and ``OUT/report.md`` (:mod:`vardecouple.report`).
:func:`evaluate_one` (``vardecouple eval``) evaluates one model and adapter.
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

from vardecouple.arms import (
    check_fits,
    load_base,
    prepare_data,
    tokenized_features,
    train_arm,
    write_text_atomic,
)
from vardecouple.atomic import write_json_atomic as _write_json_atomic
from vardecouple.config import ExperimentConfig
from vardecouple.data import Splits
from vardecouple.erase import erasing
from vardecouple.results import deltas_vs_standard, summarize, validate_results
from vardecouple.results import provenance as _provenance

__all__ = [
    "evaluate_one",
    "load_base",
    "prepare_data",
    "run_experiment",
    "tokenized_features",
    "train_arm",
    "validate_results",
]


def _arm_order(config: ExperimentConfig) -> list[str]:
    """copy/base first, then trained arms, a matched arm after the arm it matches, then
    the erase arms (they read a trained arm's adapters)."""
    names = list(config.arms)
    fixed = [a for a in names if config.arm(a).kind in ("copy", "base")]
    plain = [
        a for a in names if config.arm(a).kind == "train" and not config.arm(a).match_penalty_of
    ]
    matched = [a for a in names if config.arm(a).kind == "train" and a not in plain]
    return fixed + plain + matched + [a for a in names if config.arm(a).kind == "erase"]


def _seeds(config: ExperimentConfig, arm: str) -> list[int]:
    """Every seed for trained arms and erasure on them; the first for the others."""
    settings = config.arm(arm)
    if settings.kind == "train" or (settings.kind == "erase" and settings.erase_on):
        return list(config.train.seeds)
    return list(config.train.seeds[:1])


def _start(run_dir: Path) -> tuple[float, float]:
    """(λ, L(step 0)) of a started trained arm, from its log's step-0 refresh."""
    log = run_dir / "train_log.jsonl"
    if log.exists():
        for line in log.read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            if "start_penalty" in record:
                return float(record["lambda"]), float(record["start_penalty"])
    raise ValueError(f"run: {log} has no step-0 penalty (λ·L to match)")


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
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "run: runs in one process (decoding is not sharded); train arms on several "
            "processes with `torchrun … vardecouple train`, then evaluate them with `eval`"
        )
    from vardecouple.evaluate import decoding_record, direction_kinds, read_lines
    from vardecouple.metrics import signatures

    out = Path(out_dir)
    config = config.with_recorded_defaults(out)  # a folder keeps the defaults it began with
    resolved = _resolved(config)
    done_file = out / "results.json"
    started = time.perf_counter()
    # every check that can fail on the user's input runs before the first byte is written,
    # and before the folder's state is looked at (a typo is reported as a typo)
    context = check_inputs(config)
    if overwrite:
        _check_overwrite(out)
    elif run_state(config, out) == "finished":
        raise FileExistsError(
            f"run: {out} holds a finished run (arms {', '.join(config.arms)} done); "
            "choose another folder or pass --overwrite"
        )
    saved, prov_file = out / "config.json", out / "provenance.json"
    fresh = overwrite or not prov_file.exists()
    context.out, context.progress = out, progress
    if overwrite and out.exists():
        shutil.rmtree(out)
    splits, tests, ev = context.splits, context.tests, config.eval
    _write_json_atomic(saved, resolved)
    write_text_atomic(out / "splits.txt", splits.describe() + "\n")
    kinds = direction_kinds(list(tests), config.data.standard, config.data.varieties)
    if fresh:
        provenance = _provenance(context.base.source, command)
        _write_json_atomic(prov_file, provenance)
    else:
        provenance = json.loads(prov_file.read_text())
    runs: dict[str, dict[str, Any]] = {}
    order = _arm_order(config)
    total = sum(len(_seeds(config, a)) for a in order)
    done = [
        (a, s) for a in order for s in _seeds(config, a)
        if (out / "runs" / a / f"seed-{s}" / "eval.json").exists()
    ]  # fmt: skip
    say = _reporter(out, progress, total, len(done))
    say(None, None, f"{total} arm × seed results to make in {out}, {len(done)} already there")
    for arm in order:
        settings = config.arm(arm)
        seeds = _seeds(config, arm)
        todo = [s for s in seeds if not (out / "runs" / arm / f"seed-{s}" / "eval.json").exists()]
        if jobs > 1 and settings.kind == "train" and len(todo) > 1:
            say(None, None, f"{arm}: seeds {', '.join(map(str, todo))} in {jobs} processes")
            _parallel(config, out, arm, todo, jobs, on_done=lambda seed, a=arm: say(a, seed))
        else:
            for seed in todo:
                _arm_seed(context, arm, seed)
                say(arm, seed)
        for seed in seeds:
            finished = out / "runs" / arm / f"seed-{seed}" / "eval.json"
            runs.setdefault(arm, {})[str(seed)] = json.loads(finished.read_text())
    context.base = None
    probe = _probe(config, context, out) if config.probe is not None else None
    provenance = provenance | {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
    }
    refs = {d: [ex.tgt_text for ex in rows] for d, rows in tests.items()}

    def hypotheses(arm: str, seed: str, d: str) -> list[str]:
        return read_lines(out / runs[arm][seed]["metrics"][d]["hypotheses"], len(tests[d]))

    deltas = deltas_vs_standard(
        runs, refs, kinds, hypotheses, n_samples=ev.bootstrap_samples, seed=ev.bootstrap_seed
    )
    results = {
        "schema_version": 1,
        "config": resolved,
        "provenance": provenance,
        "signatures": signatures(),
        "directions": {d: {"kind": kinds[d], "n": len(tests[d])} for d in tests},
        "variety_identifier": context.identifier_info,
        "bootstrap": {"n_samples": ev.bootstrap_samples, "seed": ev.bootstrap_seed},
        "decoding": decoding_record(context.decoding, ev.shortlist, None),
        "runs": runs,
        "summary": summarize(runs, list(tests)),
        "deltas": deltas,
    }
    if probe is not None:
        results["probe"] = str(probe.relative_to(out))
    validate_results(results)
    _write_json_atomic(done_file, results)
    from vardecouple.report import write_report

    write_report(out, command=command)
    return done_file


def _resolved(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a run folder records it (``config.json``): JSON values only."""
    return json.loads(json.dumps(config.model_dump(exclude={"source", "data_root"})))


def run_state(config: ExperimentConfig, out_dir: str | Path) -> str:
    """``new``, ``partial`` (a started run of this config: it resumes) or ``finished``.

    A folder holding a run of another config or another vardecouple version, or files
    that are no run, raises :class:`FileExistsError` (one line naming what to do)."""
    from vardecouple import __version__

    out = Path(out_dir)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    if not out.is_dir():
        raise FileExistsError(f"run: --out {out} is a file; choose a folder")
    saved, prov = out / "config.json", out / "provenance.json"
    if not saved.is_file():
        raise FileExistsError(
            f"run: {out} is not empty and holds no run (no config.json); choose another --out"
        )
    try:
        before = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        before = None
    if before != _resolved(config):
        raise FileExistsError(
            f"run: {out} holds a run of a different config ({saved} differs); pass "
            "--overwrite to replace it, or choose another --out"
        )
    if prov.is_file():
        version = json.loads(prov.read_text(encoding="utf-8")).get("vardecouple")
        if version != __version__:
            raise FileExistsError(
                f"run: {out} holds a run of vardecouple {version} (this is {__version__}); "
                "pass --overwrite to replace it, or choose another --out"
            )
    return "finished" if (out / "results.json").is_file() else "partial"


def _check_overwrite(out: Path) -> None:
    """``--overwrite`` deletes a run folder, and nothing else."""
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise FileExistsError(
            f"run: {out} holds no run (no config.json); --overwrite only replaces a run folder"
        )


def check_inputs(config: ExperimentConfig, *, load: bool = True) -> _Context:
    """Every check of a run that can fail on user input, before anything is written:
    the corpora and splits, the COMET checkpoint and package, and (``load``) the model,
    its layers and ranks. Returns the run's shared context (splits, test sets, variety
    identifier; the loaded base model when ``load``)."""
    _comet(config, check_package=True)
    context = _context(config, Path())
    if load:
        context.base = load_base(config, context.splits)
        check_fits(config, context.base)
    return context


def held_out_rows(splits: Splits, codes: list[str]) -> dict[str, list[str]]:
    """Aligned rows of the dev and test groups that have every code (row order kept)."""
    groups: dict[int, dict[str, str]] = {}
    for ex in [*splits.dev, *splits.test]:
        row = groups.setdefault(ex.group, {})
        row.setdefault(ex.src, ex.src_text)
        row.setdefault(ex.tgt, ex.tgt_text)
    rows = [r for _, r in sorted(groups.items()) if all(c in r for c in codes)]
    return {c: [r[c] for r in rows] for c in codes}


def _probe(config: ExperimentConfig, ctx: _Context, out: Path) -> Path:
    """``vardecouple probe`` of base + each trained arm's first seed on held-out rows."""
    from vardecouple.atomic import write_lines_atomic
    from vardecouple.probing import run_probe

    folder, p = out / "probe", config.probe
    assert p is not None
    if (folder / "probe.json").exists():
        return folder / "probe.json"  # resumed: already probed
    codes = [config.data.standard, *config.data.varieties]
    rows = held_out_rows(ctx.splits, codes)
    n = min(len(rows[codes[0]]), p.max_rows)
    if n <= p.rank:
        raise ValueError(
            f"config {config.source}: [probe] needs more than rank={p.rank} held-out rows with "
            f"every variety; the dev and test splits have {n}; raise data.test_rows"
        )
    for code, lines in rows.items():
        write_lines_atomic(folder / "rows" / f"{code}.txt", lines[:n])
    seed = config.train.seeds[0]
    name = "best-adapter" if config.eval.checkpoint == "best-dev" else "adapter"
    arms = [a for a in _arm_order(config) if config.arm(a).kind == "train"]
    adapters = [out / "runs" / arm / f"seed-{seed}" / name for arm in arms]
    return run_probe(
        config.model.spec,
        folder / "rows",
        config.data.standard,
        folder,
        varieties=config.data.varieties,
        adapters=adapters,
        layers=p.layers,
        max_rows=n,
        rank=p.rank,
        batch_size=p.batch_size,
        max_length=config.data.max_length,
        seed=p.seed,
        progress=ctx.progress,
        loader=lambda: load_base(config, ctx.splits),
        labels=arms,
    )


def _comet(config: ExperimentConfig, check_package: bool = False) -> Path | None:
    """The COMET checkpoint of ``eval.comet``, relative to the config's folder; checked
    (and, with ``check_package``, that the COMET package is installed)."""
    if config.eval.comet is None:
        return None
    path = (Path(config.data_root) / config.eval.comet).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config {config.source}: eval.comet: no checkpoint file {path}")
    if check_package:
        from vardecouple.evaluate import require_comet

        require_comet()
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
    from vardecouple.evaluate import test_sets, train_identifier

    splits = prepare_data(config)
    tests = test_sets(splits, config.eval.max_examples)
    identifier, info = train_identifier(splits, tests, seed=config.data.seed)
    decoding = decode_config(config)
    return _Context(config, out, splits, tests, identifier, info, decoding, progress=False)


def decode_config(config: ExperimentConfig) -> Any:
    """The decoding settings of ``[eval]``."""
    from vardecouple.decode import DecodeConfig

    ev = config.eval
    slots = 64 if torch.cuda.is_available() else 32  # see EvalSection.batch_size
    return DecodeConfig(
        batch_size=ev.batch_size or slots,
        length_ratio=ev.length_ratio,
        max_new_tokens=ev.max_new_tokens,
        num_beams=ev.num_beams,
        continuous=ev.continuous,
        lookup_tokens=ev.lookup_tokens,
        dtype=ev.dtype,
    )


def _shortlists(config: ExperimentConfig, splits: Splits, tokenizer: Any, tests: Any) -> Any:
    """``[eval] shortlist``'s token sets per test direction (None when off)."""
    from vardecouple.evaluate import target_shortlists

    if config.eval.shortlist == "off":
        return None
    return target_shortlists(tokenizer, splits.train, tests, config.data.template)


def _worker(config: ExperimentConfig, out: Path, arm: str, seed: int, threads: int) -> None:
    torch.set_num_threads(threads)
    _arm_seed(_context(config, out), arm, seed)


def job_gpus(jobs: int, visible: str | None = None, count: int | None = None) -> list[str | None]:
    """The GPU each of ``jobs`` worker processes sees (its ``CUDA_VISIBLE_DEVICES``): the
    visible GPUs in turn (``visible``: the parent's ``CUDA_VISIBLE_DEVICES``, ``count``:
    how many CUDA reports); ``None`` for every job when there is no GPU."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if count is None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    ids = [g.strip() for g in visible.split(",") if g.strip()] if visible else []
    ids = ids[:count] if ids else [str(k) for k in range(count)]
    return [ids[k % len(ids)] if ids else None for k in range(jobs)]


def _pin_gpu(queue: Any) -> None:
    """A job process's initializer: it sees only the GPU it is given (before CUDA starts)."""
    gpu = queue.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _parallel(
    config: ExperimentConfig,
    out: Path,
    arm: str,
    seeds: list[int],
    jobs: int,
    on_done: Any = None,
) -> None:
    """Train and evaluate ``seeds`` of ``arm`` in ``jobs`` processes (spawned; each its
    own GPU when several are visible, :func:`job_gpus`); ``on_done(seed)`` is called as
    each one finishes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, torch.get_num_threads() // jobs)
    context = multiprocessing.get_context("spawn")
    workers = min(jobs, len(seeds))
    gpus = context.Queue()
    for gpu in job_gpus(workers):  # with several GPUs each job has its own
        gpus.put(gpu)
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_pin_gpu,
                             initargs=(gpus,)) as pool:  # fmt: skip
        futures = {pool.submit(_worker, config, out, arm, seed, threads): seed for seed in seeds}
        for future in as_completed(futures):
            future.result()  # re-raises a worker's error
            if on_done is not None:
                on_done(futures[future])


def _reporter(out: Path, progress: bool, total: int, done: int) -> Any:
    """``say(arm, seed)``: one line as each arm × seed result is made (with its train and
    eval seconds); ``say(None, None, text)``: a line of its own. Silent without progress."""
    import sys

    count = [done]
    started = time.perf_counter()

    def say(arm: str | None, seed: int | None, text: str | None = None) -> None:
        if not progress:
            return
        if arm is not None:
            count[0] += 1
            record = json.loads((out / "runs" / arm / f"seed-{seed}" / "eval.json")
                                .read_text(encoding="utf-8"))  # fmt: skip
            trained = (f"trained {record['steps']} steps in {record['train_seconds']:.0f} s, "
                       if record["steps"] else "")  # fmt: skip
            text = (f"[{count[0]}/{total}] {arm} seed {seed} done: {trained}evaluated in "
                    f"{record['eval_seconds']:.0f} s; {time.perf_counter() - started:.0f} s "
                    "into this run")  # fmt: skip
        print(f"run: {text}", file=sys.stderr, flush=True)

    return say


def _arm_seed(ctx: _Context, arm: str, seed: int) -> None:
    """Train (or not) and evaluate one arm with one seed; writes its ``eval.json``."""
    from vardecouple.evaluate import (
        decoding_record,
        eval_device,
        evaluate_model,
        score_hypotheses,
        write_lines_atomic,
        write_test_files,
    )

    config, out, splits, tests = ctx.config, ctx.out, ctx.splits, ctx.tests
    settings, ev = config.arm(arm), config.eval
    run_dir = out / "runs" / arm / f"seed-{seed}"
    record: dict[str, Any] = {"kind": settings.kind, "steps": 0, "train_seconds": 0.0}
    record |= {"checkpoint": "no training", "lambda": None}
    if settings.kind == "copy":
        hyps = {d: [ex.src_text for ex in rows] for d, rows in tests.items()}
        for d, lines in hyps.items():
            write_test_files(run_dir, d, tests[d])
            write_lines_atomic(run_dir / "hypotheses" / f"{d}.txt", lines)
        eval_seconds = 0.0
    else:
        if settings.kind == "base" or (settings.kind == "erase" and not settings.erase_on):
            ctx.base = ctx.base or load_base(config, splits)
            model, tokenizer = ctx.base.model, ctx.base.tokenizer
        elif settings.kind == "erase":
            source = out / "runs" / str(settings.erase_on) / f"seed-{seed}"
            model, tokenizer = _trained(config, splits, source)
        elif (run_dir / "train_summary.json").exists():
            model, tokenizer = _trained(config, splits, run_dir)
        else:
            target = settings.match_penalty_of
            match = _start(out / "runs" / target / f"seed-{seed}") if target else None
            _, loaded = train_arm(
                config,
                arm,
                run_dir,
                seed=seed,
                resume=(run_dir / "train_log.jsonl").exists(),
                progress=ctx.progress,
                match_penalty=match[0] * match[1] if match else None,
                splits=splits,
            )
            model, tokenizer = loaded.model, loaded.tokenizer
            if ev.checkpoint == "best-dev":  # evaluate the kept adapter instead
                del loaded, model
                model, tokenizer = _trained(config, splits, run_dir)
        model = model.to(eval_device())  # a GPU when there is one
        erasure = None
        if settings.kind == "erase":
            erasure, record["erasure"] = _erasure(config, arm, seed, model, tokenizer, splits)
        shortlists = _shortlists(config, splits, tokenizer, tests)
        record["decoding"] = decoding_record(ctx.decoding, ev.shortlist, shortlists)
        with erasing(model, erasure):
            hyps, eval_seconds = evaluate_model(
                model,
                tokenizer,
                tests,
                run_dir,
                template=config.data.template,
                decode_config=ctx.decoding,
                shortlists=shortlists,
                progress=ctx.progress,
            )
    if settings.kind == "train":
        summary = json.loads((run_dir / "train_summary.json").read_text())
        record |= {
            "steps": summary["steps"],
            "train_seconds": summary["train_seconds"],
            "train_dtype": summary.get("dtype"),  # None: trained before it was recorded
            "checkpoint": _checkpoint_note(run_dir, ev.checkpoint, summary["steps"]),
            "overlap": _overlap(run_dir, out),
            "lambda": _start(run_dir)[0],
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


def _erasure(
    config: ExperimentConfig, arm: str, seed: int, model: Any, tokenizer: Any, splits: Splits
) -> tuple[Any, dict[str, Any]]:
    """Fit the erase arm's subspaces on ``model``; return them and what to record."""
    from vardecouple.erase import EraseConfig, fit_erasure, later_overlaps

    settings = config.arm(arm)
    erase = EraseConfig(
        layers=tuple(settings.layers) if settings.layers is not None else None,
        alpha=settings.erase_alpha,
        estimator=settings.estimator,
        rank=settings.rank,
        estimator_options=settings.estimator_options,
        measure_fraction=settings.measure_fraction,
        batch_size=settings.probe_batch_size,
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
    command: str = "",
    progress: bool = True,
) -> Path | None:
    """``vardecouple eval``: one model (and adapter) on the config's test split.

    Writes ``hypotheses/<direction>.txt`` and ``scores.json`` (metrics per direction,
    signatures, variety-identifier accuracy, provenance) to ``out_dir``. With ``erase``
    (an :class:`~vardecouple.erase.EraseConfig`) the subspaces are first fitted on the
    model (and adapter) itself from the config's probe split, decoding erases them, and
    ``scores.json`` has an ``erasure`` entry (layers, α, held-out overlaps at every
    later layer without and with erasure).

    Under ``torchrun`` / ``accelerate launch`` the processes share the sentences
    (:func:`~vardecouple.evaluate.evaluate_model`), each on its own GPU when there are
    GPUs; the main process scores and writes (the others return None).
    """
    from vardecouple.evaluate import (
        decoding_record,
        eval_device,
        evaluate_model,
        score_hypotheses,
        test_sets,
        train_identifier,
    )
    from vardecouple.metrics import signatures

    out = Path(out_dir)
    _comet(config, check_package=True)  # every input check before any decoding
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
    if erase is not None:
        bad = [i for i in erase.layers or () if not 0 <= i < loaded.num_layers]
        if bad:
            raise ValueError(f"eval: --erase-layers {bad} out of range; {config.model.spec} "
                             f"has layers 0..{loaded.num_layers - 1}")  # fmt: skip
        if erase.rank > loaded.hidden_size:
            raise ValueError(f"eval: --erase-rank {erase.rank} exceeds the hidden size "
                             f"{loaded.hidden_size}")  # fmt: skip
    if (out / "scores.json").exists():  # after the input checks: a typo is reported first
        raise FileExistsError(f"eval: {out / 'scores.json'} exists; choose another folder")
    main_process = True
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: join the process group
        from accelerate import PartialState

        main_process = PartialState(cpu=not torch.cuda.is_available()).is_main_process
    net = net.to(eval_device())
    ev = config.eval
    erasure, erasure_info = None, None
    if erase is not None:
        from vardecouple.erase import fit_erasure, later_overlaps

        erasure = fit_erasure(net, loaded.tokenizer, splits.probe, erase)
        erasure_info = erasure.describe() | {
            "estimator": erase.estimator,
            "later_overlap": later_overlaps(net, loaded.tokenizer, splits.probe, erasure, erase),
        }
    decoding = decode_config(config)
    shortlists = _shortlists(config, splits, loaded.tokenizer, tests)
    with erasing(net, erasure):
        hyps, seconds = evaluate_model(
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
        comet=_comet(config),
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
        "provenance": _provenance(loaded.source, command),
    }
    _write_json_atomic(out / "scores.json", scores)
    return out / "scores.json"
