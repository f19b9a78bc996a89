"""Evaluation: decode the test split per direction, score it, and check the variety.

For each direction ``src->tgt`` three files are written beside the scores, one
sentence per line, in the same (test) order: ``sources/<src>-><tgt>.txt``,
``references/<src>-><tgt>.txt`` and ``hypotheses/<src>-><tgt>.txt``. They are exactly
what was scored, so anyone can re-score them, e.g.
``sacrebleu references/D.txt -i hypotheses/D.txt -m chrf --chrf-word-order 2 -b``
prints the chrF++ of the scores file. Scores are sacrebleu's chrF++ (``word_order=2``)
and BLEU with their signatures (:mod:`vardecouple.evaluate.metrics`), a seeded bootstrap 95%
interval of chrF++, and the share of hypotheses that a character n-gram variety
identifier, trained on the training side of the corpus, recognises as the target
variety (and as the standard): between close varieties chrF++ alone rewards copying
the source.

Decoding is exact greedy search unless ``[eval]`` turns on an approximation
(:func:`decoding_record` says which, and every results file records it): ``dtype =
"bf16"`` or ``shortlist = "train-targets"`` (each direction's argmax over the tokens of
the training targets in its target variety, :func:`target_shortlists`, plus the
sentence's own prompt tokens and the stop tokens).
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from accelerate.utils import gather_object

from vardecouple.data import Example, Splits, format_example
from vardecouple.evaluate.decode import DecodeConfig, decode
from vardecouple.evaluate.metrics import bootstrap_ci, corpus_scores
from vardecouple.evaluate.varietyid import VarietyIdentifier
from vardecouple.io import write_lines_atomic

__all__ = [
    "Decoded",
    "comet_score",
    "decoding_record",
    "direction_kinds",
    "eval_device",
    "evaluate_model",
    "read_lines",
    "require_comet",
    "score_hypotheses",
    "source_copy_rate",
    "target_shortlists",
    "test_sets",
    "train_identifier",
    "write_test_files",
]


def read_lines(path: Path, expected: int | None = None) -> list[str]:
    """The lines of a :func:`write_lines_atomic` file (split on ``\\n`` only, as sacrebleu
    reads them); ``ValueError`` unless there are ``expected`` of them."""
    with open(path, encoding="utf-8", newline="\n") as handle:
        lines = handle.read().split("\n")[:-1]
    if expected is not None and len(lines) != expected:
        raise ValueError(f"{path}: {len(lines)} lines, expected {expected}")
    return lines


def write_test_files(out_dir: Path, direction: str, rows: Sequence[Example]) -> None:
    """``sources/<direction>.txt`` and ``references/<direction>.txt`` under ``out_dir``:
    the test rows in the order of ``hypotheses/<direction>.txt``, so that the scores can
    be recomputed from the files alone."""
    out = Path(out_dir)
    write_lines_atomic(out / "sources" / f"{direction}.txt", [ex.src_text for ex in rows])
    write_lines_atomic(out / "references" / f"{direction}.txt", [ex.tgt_text for ex in rows])


def test_sets(
    splits: Splits, max_examples: int | None = None, directions: Sequence[str] | None = None
) -> dict[str, list[Example]]:
    """The test split grouped by direction (``src->tgt``), each capped at ``max_examples``;
    only ``directions`` when given (each must be in the test split)."""
    out: dict[str, list[Example]] = {}
    for ex in splits.test:
        out.setdefault(f"{ex.src}->{ex.tgt}", []).append(ex)
    if not out:
        raise ValueError("evaluate: the test split is empty; set data.test_rows or test_corpora")
    if directions is not None:
        missing = [d for d in directions if d not in out]
        if missing:
            raise ValueError(
                f"eval.directions: {', '.join(missing)} not in the test split "
                f"(its directions: {', '.join(sorted(out))})"
            )
        out = {d: out[d] for d in directions}
    return {d: rows[:max_examples] if max_examples else rows for d, rows in sorted(out.items())}


def direction_kinds(
    directions: Sequence[str], standard: str, varieties: Sequence[str]
) -> dict[str, str]:
    """``low-resource`` (into a variety), ``standard`` (into the standard) or ``other``."""
    kinds = {}
    for d in directions:
        tgt = d.split("->")[1]
        kinds[d] = (
            "standard" if tgt == standard else "low-resource" if tgt in varieties else "other"
        )
    return kinds


def train_identifier(
    splits: Splits, tests: Mapping[str, list[Example]], seed: int = 0
) -> tuple[VarietyIdentifier, dict[str, Any]]:
    """Fit on the training side of the corpus; accuracy on the test references."""
    seen: set[tuple[str, str]] = set()
    for ex in splits.train:
        seen.add((ex.src_text, ex.src))
        seen.add((ex.tgt_text, ex.tgt))
    texts, labels = zip(*sorted(seen), strict=True)
    identifier = VarietyIdentifier(seed=seed).fit(list(texts), list(labels))
    held = sorted({(ex.tgt_text, ex.tgt) for rows in tests.values() for ex in rows})
    held = [(t, v) for t, v in held if v in identifier.classes]
    info = identifier.describe()
    if held:
        h_texts, h_labels = [t for t, _ in held], [v for _, v in held]
        info |= {
            "accuracy": identifier.accuracy(h_texts, h_labels),
            "balanced_accuracy": identifier.balanced_accuracy(h_texts, h_labels),
            "n_test": len(held),
        }
    return identifier, info


def require_comet() -> Any:
    """COMET's ``load_from_checkpoint``, or a one-line ``ValueError`` when it is missing.

    Not tested here: ``unbabel-comet`` (2.2.7, its latest release) requires
    ``transformers<5`` and ``numpy<2``, this package ``transformers>=5``, so pip cannot
    install both in one environment.
    """
    try:
        from comet import load_from_checkpoint  # optional extra (COMET): imported on use
    except ImportError:
        raise ValueError(
            "eval.comet is set but the COMET package (unbabel-comet) is not installed; it "
            "requires transformers<5, which this package cannot use: run comet-score on the "
            "written sources/, hypotheses/ and references/ files in an environment of its own"
        ) from None
    return load_from_checkpoint


def comet_score(
    checkpoint: str | Path, sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str]
) -> float:
    """System COMET score with a local checkpoint (``unbabel-comet``; never downloads).

    Untested (see :func:`require_comet`).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"eval.comet: {path} is not a COMET checkpoint file (*.ckpt)")
    load_from_checkpoint = require_comet()
    model = load_from_checkpoint(str(path))
    data = [{"src": s, "mt": h, "ref": r} for s, h, r in zip(sources, hyps, refs, strict=True)]
    return float(model.predict(data, batch_size=8, gpus=0, progress_bar=False).system_score)


def source_copy_rate(hyps: Sequence[str], sources: Sequence[str]) -> float:
    """Share of hypotheses that are their source sentence, whitespace aside: a model that
    has not learnt to translate into a close variety answers with the input."""
    if len(hyps) != len(sources):
        raise ValueError(f"{len(hyps)} hypotheses for {len(sources)} sources")
    same = sum(h.split() == s.split() for h, s in zip(hyps, sources, strict=True))
    return same / len(hyps) if hyps else 0.0


def score_hypotheses(
    hyps: Mapping[str, Sequence[str]],
    tests: Mapping[str, list[Example]],
    identifier: VarietyIdentifier | None,
    standard: str,
    *,
    n_samples: int = 1000,
    seed: int = 0,
    comet: str | Path | None = None,
) -> dict[str, dict[str, Any]]:
    """Per direction: chrF++, BLEU, chrF++ 95% interval, target/standard variety rates,
    the source-copy rate (and COMET when ``comet`` names a local checkpoint)."""
    out: dict[str, dict[str, Any]] = {}
    for direction, rows in tests.items():
        refs, sources = [ex.tgt_text for ex in rows], [ex.src_text for ex in rows]
        got = list(hyps[direction])
        scores: dict[str, Any] = corpus_scores(got, refs)
        scores["n"] = len(refs)
        _, ci = bootstrap_ci(refs, [got], "chrf++", n_samples=n_samples, seed=seed)
        scores["chrf++_ci95"] = [float(ci[0]), float(ci[1])]
        tgt = rows[0].tgt
        if identifier is not None and tgt in identifier.classes and tgt == standard:
            scores["target_variety_rate"] = identifier.target_rate(got, tgt)
        elif identifier is not None and tgt in identifier.classes:
            rates = identifier.rate_vs(got, tgt, standard)
            scores["target_variety_rate"] = rates["target"]
            scores["standard_variety_rate"] = rates["standard"]
        else:
            scores["target_variety_rate"] = 0.0
        scores["source_copy_rate"] = source_copy_rate(got, sources)
        if comet is not None:
            scores["comet"] = comet_score(comet, sources, got, refs)
        out[direction] = scores
    return out


def target_shortlists(
    tokenizer: Any, train: Sequence[Example], directions: Iterable[str], template: str = "plain"
) -> dict[str, frozenset[int]]:
    """Per test direction ``src->tgt``: the token ids of every training target in ``tgt``,
    tokenised as training tokenises targets (empty when no training row targets ``tgt``)."""
    by_target: dict[str, set[int]] = {}
    for ex in train:
        target = format_example(ex, template, tokenizer)[1]
        by_target.setdefault(ex.tgt, set()).update(
            tokenizer.encode(target, add_special_tokens=False)
        )
    return {d: frozenset(by_target.get(d.split("->")[-1], ())) for d in directions}


def decoding_record(
    config: DecodeConfig, shortlist: str, shortlists: Mapping[str, Collection[int]] | None
) -> dict[str, Any]:
    """What a results file says about decoding: exact or which approximations were on."""
    approximations = [f"dtype={config.dtype}"] if config.dtype == "bf16" else []
    if shortlist != "off":
        approximations.append(f"shortlist={shortlist}")
    return {
        "exact": not approximations,
        "approximations": approximations,
        "shortlist_tokens": {d: len(t) for d, t in shortlists.items()} if shortlists else None,
        "settings": {k: getattr(config, k) for k in
                     ("batch_size", "continuous", "lookup_tokens", "num_beams", "dtype")},
    }  # fmt: skip


class Decoded(NamedTuple):
    """What :func:`evaluate_model` returns: the hypotheses per direction, the seconds the
    call took, and how many test sentences it decoded (a direction read back from an
    earlier, interrupted evaluation's file counts none: its time was spent then)."""

    hypotheses: dict[str, list[str]]
    seconds: float
    sentences: int


def evaluate_model(
    model: Any,
    tokenizer: Any,
    tests: Mapping[str, list[Example]],
    out_dir: Path,
    *,
    template: str = "plain",
    decode_config: DecodeConfig | None = None,
    shortlists: Mapping[str, Collection[int]] | None = None,
    progress: bool = True,
) -> Decoded:
    """Decode every direction into ``out_dir/hypotheses/<direction>.txt``, with the
    sources and references beside it (:func:`write_test_files`); ``shortlists[d]``: the
    output-vocabulary shortlist of direction ``d`` (approximate; see ``decode``).

    A direction whose hypotheses file already holds the right number of lines is read
    back, not decoded again (resume after a crash). Returns :class:`Decoded`.

    Under ``torchrun`` / ``accelerate launch`` (a process group of several processes)
    each process decodes every ``world``-th sentence of each direction, longest source
    first (so the shares cost alike), the hypotheses are gathered in test order on every
    process, and only the main process writes files.
    """
    start = time.perf_counter()
    rank, world = _process_share()
    hyps: dict[str, list[str]] = {}
    decoded = 0
    for direction, rows in tests.items():
        path = Path(out_dir) / "hypotheses" / f"{direction}.txt"
        if rank == 0:
            write_test_files(Path(out_dir), direction, rows)
        if path.exists():
            try:
                hyps[direction] = read_lines(path, len(rows))
                continue
            except ValueError:
                pass  # a different test size: decode again
        by_length = sorted(range(len(rows)), key=lambda i: (-len(rows[i].src_text), i))
        mine = by_length[rank::world]
        prompts = [format_example(rows[i], template, tokenizer)[0] for i in mine]
        sources = [rows[i].src_text for i in mine]
        shortlist = shortlists[direction] if shortlists is not None else None
        got = decode(model, tokenizer, prompts, sources, decode_config, shortlist=shortlist,
                     progress=progress and rank == 0, desc=direction)  # fmt: skip
        decoded += len(rows)
        pairs = list(zip(mine, got, strict=True))
        if world > 1:
            pairs = gather_object(pairs)
        hyps[direction] = [h for _, h in sorted(pairs)]
        if rank == 0:
            write_lines_atomic(path, hyps[direction])
    return Decoded(hyps, time.perf_counter() - start, decoded)


def _process_share() -> tuple[int, int]:
    """``(rank, world size)`` of this process in the process group; ``(0, 1)`` alone."""

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def eval_device() -> Any:
    """Where to decode: this process's GPU (``LOCAL_RANK`` under torchrun) when CUDA is
    available, else the CPU."""

    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")
