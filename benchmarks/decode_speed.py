r"""Decoding speed benchmark (issue 5): ``transformers`` ``generate`` vs our ``decode()``.

What it measures
----------------
Greedy decoding with ``gemma3-270m`` in float32 on the CPU, on real sentences: the first
``--n`` rows of FLORES-200 devtest that have both sides of each direction (default
``arb_Arab->arz_Arab``), zero-shot plain-template prompts from
:func:`~vardecouple.data.format_example`. Two arms on exactly the same work:

* **(a)** ``model.generate(input_ids, attention_mask, do_sample=False,
  max_new_tokens=B, eos_token_id=<sorted stop_ids(tokenizer)>, pad_token_id=pad)`` on the
  same left-padded batches, in the same length-sorted order, built exactly the way
  ``decode.py`` builds them (``prompt_ids`` contexts, sorted by ``(-length, index)``,
  ``batch_size`` rows each, padded on the left with the tokenizer's pad id). ``generate``
  has one limit per batch, so ``B`` is the largest budget of the batch's rows; a row then
  runs until *every* row of its batch has hit a stop token, or until ``B``. Its output is
  post-processed the way ``decode()`` does it: cut after the row's first stop token or
  at the row's own budget, ``batch_decode(skip_special_tokens=True)``, first line,
  stripped. Tokenising the prompts and the post-processing are inside the timed region,
  as they are inside ``decode()``.
* **(b)** ``decode(model, tokenizer, prompts, sources, DecodeConfig(batch_size=...))``:
  the KV-cached greedy loop in which finished rows leave the batch and the cache.

Both use the same ``DecodeConfig`` (budget ``ceil(2.0 · source tokens) + 8``, at most
256; prompts cut to 512 tokens).

**Tokens.** A row's generated tokens are counted up to and including its stop token (a
token whose text holds a newline, or EOS/PAD), or up to its own budget when it has none:
the tokens a hypothesis needs, never padding after a stop and never the extra steps
``generate`` runs for a row beyond its budget. Both arms' tokens/s use **the same count**,
taken from (b)'s first repeat, so tokens/s compares equal work and the ratio of tokens/s
equals the ratio of wall times ((a)'s own count under the same rule is in the JSON;
it equals (b)'s when the hypotheses are identical). The JSON also counts *row-steps*:
the (row, step) positions each arm pushed through the model after the prompt (for (a):
batch rows × steps of each batch; for (b): the rows still alive at each step).

(b)'s token ids are read by wrapping ``vardecouple.evaluate.decode._greedy_batch`` with a
recorder (it appends the returned lists and a ``perf_counter`` pair per batch; negligible
next to a forward pass); the script checks that the recorded ids decode to exactly the
hypotheses ``decode()`` returned.

**Repeats.** One untimed warm-up of each arm (the first batch, 8 new tokens), then
``--repeats`` rounds of both arms on all sentences; the order alternates (round 0: (a)
then (b); round 1: (b) then (a); …) so that a change of load hits both arms alike. The
table reports medians over the rounds; the ratio (b)/(a) is taken per round (same moment)
and its median is reported beside the ratio of the medians.

**Identical hypotheses.** The share of sentences whose hypothesis (text, and token ids)
is the same in (a) and (b) (round 0), across the rounds of each arm, and between
``decode()`` at ``batch_size=1`` and at ``--batch-size`` (on the first ``--bs1-n``
sentences of each direction; bs=1 is run once, after the rounds, and timed too).

How to run
----------
::

    .venv/bin/python benchmarks/decode_speed.py                  # full run (≈ 11–12 minutes)
    .venv/bin/python benchmarks/decode_speed.py --n 8 --repeats 1 --bs1-n 4 \
        --out benchmarks/results/decode_speed_quick.json         # smoke run
    .venv/bin/python benchmarks/decode_speed.py --quick --out DIR/decode_speed.json  # smaller

It writes, atomically, the results JSON (``--out``, default
``benchmarks/results/decode_speed.json``: every round's wall time per arm and direction,
per-batch times, steps and row-steps, token counts, every hypothesis of (a), (b) and
bs=1, the identity checks, load averages, the CPU time other processes took, machine,
versions, git state, date and command) and prints the tables for ``BENCHMARKS.md``.

The torch thread count is left at its default (recorded). Unless ``OMP_WAIT_POLICY`` is
already set, it is set to ``PASSIVE`` before torch is imported, as in
``train_speed.py``: spin-waiting OpenMP threads distort timings on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch

from _common import CORPORA, RESULTS, ROOT, CpuMeter, Run, interleave, median, met, write_json
from _common import md_table as _table
from vardecouple.data import format_example, load_corpus
from vardecouple.data.splits import Example
from vardecouple.evaluate.decode import DecodeConfig, decode, prompt_ids, stop_ids
from vardecouple.model.load import load_model

DECODE_MODULE = importlib.import_module("vardecouple.evaluate.decode")
CORPUS = CORPORA / "flores200"
MODEL = "gemma3-270m"
SPLIT = "devtest"
TARGET_B_OVER_A = 1.0
TARGET_BS1_IDENTICAL = 0.99


# --------------------------------------------------------------------------- helpers
def first_line(text: str) -> str:
    """What ``decode()`` keeps of a generated text (``decode._first_line``)."""
    return text.split("\n", 1)[0].strip()


def useful(tokens: Sequence[int], budget: int, stops: frozenset[int]) -> list[int]:
    """A row's tokens up to and including its first stop token, at most ``budget``."""
    out: list[int] = []
    for t in tokens[:budget]:
        out.append(int(t))
        if t in stops:
            break
    return out


# --------------------------------------------------------------------------- data
def load_examples(directions: Sequence[str], n: int) -> dict[str, list[Example]]:
    """The first ``n`` devtest rows having both sides, per ``src->tgt`` direction."""
    corpus = load_corpus(CORPUS, split=SPLIT)
    out: dict[str, list[Example]] = {}
    for spec in directions:
        src, tgt = spec.split("->")
        rows = [(k, r) for k, r in enumerate(corpus.rows) if src in r and tgt in r][:n]
        if len(rows) < n:
            raise SystemExit(f"{spec}: only {len(rows)} rows with both sides, asked {n}")
        out[spec] = [Example(src, tgt, r[src], r[tgt], group=k) for k, r in rows]
    return out


def plan(tokenizer: Any, prompts: Sequence[str], sources: Sequence[str], config: DecodeConfig):
    """Contexts, budgets and the batch order, exactly as ``decode()`` computes them."""
    contexts = [prompt_ids(tokenizer, p, config.max_prompt_tokens) for p in prompts]
    lengths = [len(tokenizer.encode(s, add_special_tokens=False)) for s in sources]
    budgets = [config.budget(n) for n in lengths]
    order = sorted(range(len(prompts)), key=lambda i: (-len(contexts[i]), i))
    chunks = [order[s : s + config.batch_size] for s in range(0, len(order), config.batch_size)]
    return contexts, budgets, chunks


# --------------------------------------------------------------------------- arm (a)
@torch.no_grad()
def hf_generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    sources: Sequence[str],
    config: DecodeConfig,
    stops: frozenset[int],
) -> dict[str, Any]:
    """Arm (a): ``model.generate`` on decode()'s batches, post-processed like decode()."""
    start = time.perf_counter()
    contexts, budgets, chunks = plan(tokenizer, prompts, sources, config)
    eos = sorted(stops)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    results: list[list[int]] = [[] for _ in prompts]
    batches = []
    for chunk in chunks:
        rows = [contexts[i] for i in chunk]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for k, r in enumerate(rows):
            ids[k, width - len(r) :] = torch.tensor(r)
            mask[k, width - len(r) :] = 1
        limit = max(budgets[i] for i in chunk)
        t = time.perf_counter()
        generated = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            do_sample=False,
            max_new_tokens=limit,
            eos_token_id=eos,
            pad_token_id=pad,
        )
        seconds = time.perf_counter() - t
        steps = generated.shape[1] - width
        for k, i in enumerate(chunk):
            results[i] = useful(generated[k, width:].tolist(), budgets[i], stops)
        batches.append(
            {
                "rows": len(chunk),
                "prompt_width": width,
                "max_new_tokens": limit,
                "steps": steps,
                "row_steps": steps * len(chunk),
                "seconds": seconds,
            }
        )
    texts = [first_line(t) for t in tokenizer.batch_decode(results, skip_special_tokens=True)]
    return {
        "seconds": time.perf_counter() - start,
        "hypotheses": texts,
        "token_ids": results,
        "budgets": budgets,
        "batches": batches,
    }


# --------------------------------------------------------------------------- arm (b)
@torch.no_grad()
def ours(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    sources: Sequence[str],
    config: DecodeConfig,
    stops: frozenset[int],
) -> dict[str, Any]:
    """Arm (b): ``decode()``, with its per-batch token ids recorded."""
    recorded: list[tuple[list[list[int]], float, int]] = []
    inner = DECODE_MODULE._greedy_batch

    def recorder(model: Any, rows: list[list[int]], budgets: list[int], *args: Any) -> Any:
        t = time.perf_counter()
        got = inner(model, rows, budgets, *args)
        recorded.append((got, time.perf_counter() - t, max(len(r) for r in rows)))
        return got

    DECODE_MODULE._greedy_batch = recorder
    try:
        start = time.perf_counter()
        texts = decode(model, tokenizer, prompts, sources, config, progress=False)
        seconds = time.perf_counter() - start
    finally:
        DECODE_MODULE._greedy_batch = inner
    # map the recorded batches back to sentences (decode()'s order, recomputed)
    _, budgets, chunks = plan(tokenizer, prompts, sources, config)
    if len(chunks) != len(recorded):
        raise RuntimeError(f"decode() ran {len(recorded)} batches, expected {len(chunks)}")
    results: list[list[int]] = [[] for _ in prompts]
    batches = []
    for chunk, (got, batch_s, width) in zip(chunks, recorded, strict=True):
        for i, tokens in zip(chunk, got, strict=True):
            results[i] = list(tokens)
        lengths = [len(t) for t in got]
        batches.append(
            {
                "rows": len(chunk),
                "prompt_width": width,
                "max_new_tokens": max(budgets[i] for i in chunk),
                "steps": max(lengths),
                "row_steps": sum(lengths),
                "seconds": batch_s,
            }
        )
    check = [first_line(t) for t in tokenizer.batch_decode(results, skip_special_tokens=True)]
    if check != list(texts):
        raise RuntimeError("recorded token ids do not decode to decode()'s hypotheses")
    if any(useful(r, b, stops) != r for r, b in zip(results, budgets, strict=True)):
        raise RuntimeError("decode() produced tokens past a stop token or its budget")
    return {
        "seconds": seconds,
        "hypotheses": list(texts),
        "token_ids": results,
        "budgets": budgets,
        "batches": batches,
    }


# --------------------------------------------------------------------------- comparison
def identical(x: dict[str, Any], y: dict[str, Any], n: int | None = None) -> dict[str, Any]:
    """Shares of identical hypotheses (text and token ids) over the first ``n`` sentences."""
    hx, hy = x["hypotheses"][:n], y["hypotheses"][:n]
    tx, ty = x["token_ids"][:n], y["token_ids"][:n]
    differ = [i for i in range(len(hx)) if hx[i] != hy[i] or tx[i] != ty[i]]
    details = []
    for i in differ:
        pos = next((k for k, (p, q) in enumerate(zip(tx[i], ty[i], strict=False)) if p != q), None)
        if pos is None:
            pos = min(len(tx[i]), len(ty[i]))
        details.append(
            {
                "sentence": i,
                "first_differing_token": pos,
                "tokens": [len(tx[i]), len(ty[i])],
                "texts_equal": hx[i] == hy[i],
            }
        )
    return {
        "sentences": len(hx),
        "text_identical": sum(p == q for p, q in zip(hx, hy, strict=True)) / max(len(hx), 1),
        "tokens_identical": sum(p == q for p, q in zip(tx, ty, strict=True)) / max(len(hx), 1),
        "differ": details,
    }


def strip(run: dict[str, Any]) -> dict[str, Any]:
    """A round's record without its hypotheses and ids (kept once per arm)."""
    return {k: v for k, v in run.items() if k not in ("hypotheses", "token_ids")}


# --------------------------------------------------------------------------- reporting
def _pct(x: float) -> str:
    return f"{100 * x:.1f}%" if x == x else "—"


def markdown(report: dict[str, Any]) -> str:
    s, summary, checks = report["setup"], report["summary"], report["checks"]
    a, b = summary["a"], summary["b"]
    per_round = ", ".join(f"{r:.2f}" for r in summary["ratio_b_over_a_per_round"])

    def row(label: str, arm: dict[str, Any], ratio: str) -> list[str]:
        return [
            label,
            f"{arm['median_seconds']:.1f}",
            f"{arm['median_sentences_per_s']:.2f}",
            f"{arm['median_tokens_per_s']:.1f}",
            f"{arm['row_steps']:,}",
            ratio,
        ]

    lines = [
        f"{s['sentences_total']} sentences ({', '.join(s['directions'])}; first "
        f"{s['n_per_direction']} {s['split']} rows each), batch size {s['batch_size']}, "
        f"{s['tokens_total']:,} generated tokens in all (counted up to and including each "
        f"row's stop token, or its budget; the same count for both arms). Medians over "
        f"{s['repeats']} rounds, order alternating.",
        "",
        *_table(
            ["arm", "wall s", "sentences/s", "tokens/s", "row-steps", "÷ (a)"],
            ["l", "r", "r", "r", "r", "r"],
            [
                row("(a) HF `generate`, one `max_new_tokens` per batch", a, "1.00"),
                row(
                    "(b) `decode()` (finished rows leave the batch)",
                    b,
                    f"**{summary['ratio_b_over_a_of_medians']:.2f}**",
                ),
            ],
        ),
        "",
        f"(b)/(a) per round (same moment): {per_round}; median "
        f"**{summary['ratio_b_over_a_median_of_rounds']:.2f}**. Row-steps: (row, step) "
        "positions pushed through the model after the prompt "
        f"({summary['a']['row_steps'] / max(summary['b']['row_steps'], 1):.2f}× as many "
        "for (a)). Other processes kept "
        f"{report['other_processes_cores']['during_rounds']:.2f} cores busy on average "
        "during the rounds.",
        "",
    ]
    bs1 = checks["bs1_vs_bs"]
    lines += _table(
        ["identical hypotheses", "sentences", "text", "token ids"],
        ["l", "r", "r", "r"],
        [
            [
                "(a) vs (b), round 0",
                str(checks["a_vs_b"]["sentences"]),
                _pct(checks["a_vs_b"]["text_identical"]),
                _pct(checks["a_vs_b"]["tokens_identical"]),
            ],
            [
                f"(b) bs=1 vs bs={s['batch_size']}",
                str(bs1["sentences"]),
                _pct(bs1["text_identical"]),
                _pct(bs1["tokens_identical"]),
            ],
            [
                "(a) across rounds (worst round vs round 0)",
                str(checks["a_vs_b"]["sentences"]),
                _pct(checks["a_rounds_min_text_identical"]),
                _pct(checks["a_rounds_min_tokens_identical"]),
            ],
            [
                "(b) across rounds (worst round vs round 0)",
                str(checks["a_vs_b"]["sentences"]),
                _pct(checks["b_rounds_min_text_identical"]),
                _pct(checks["b_rounds_min_tokens_identical"]),
            ],
        ],
    )
    bs1_run = report["bs1"]
    lines += [
        "",
        f"`decode()` at bs=1 on those {bs1['sentences']} sentences: {bs1_run['seconds']:.1f} s, "
        f"{bs1_run['tokens_per_s']:.1f} tokens/s (one run, after the rounds).",
        "",
        *_table(
            ["target", "measured", "met?"],
            ["l", "r", "c"],
            [
                [
                    f"(b)/(a) ≥ {TARGET_B_OVER_A:g}× tokens/s",
                    f"{summary['ratio_b_over_a_of_medians']:.2f}× "
                    f"(per-round median {summary['ratio_b_over_a_median_of_rounds']:.2f}×)",
                    met(report["targets"]["b_over_a"]),
                ],
                [
                    f"bs=1 vs bs={s['batch_size']} identical ≥ {TARGET_BS1_IDENTICAL:.0%}",
                    _pct(bs1["text_identical"]),
                    met(report["targets"]["bs1_identical"]),
                ],
            ],
        ),
    ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=32, help="sentences per direction (32)")
    parser.add_argument("--batch-size", type=int, default=8, help="decoding batch size (8)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (a) and (b) (3)")
    parser.add_argument(
        "--bs1-n",
        type=int,
        default=None,
        help="sentences per direction for the bs=1 identity check (default: all --n)",
    )
    parser.add_argument(
        "--directions",
        default="arb_Arab->arz_Arab",
        help="comma-separated src->tgt codes (default arb_Arab->arz_Arab)",
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS / "decode_speed.json", help="results JSON path"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --n 4 --repeats 1 --bs1-n 2"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.bs1_n = 4, 1, 2
    directions = [d.strip() for d in args.directions.split(",") if d.strip()]
    bs1_n = args.n if args.bs1_n is None else min(args.bs1_n, args.n)
    config = DecodeConfig(batch_size=args.batch_size)

    run = Run("decode_speed", "transformers")  # git state at the start: the code imported
    loaded = load_model(MODEL, dtype=torch.float32)
    model, tokenizer = loaded.model, loaded.tokenizer
    t = time.perf_counter()
    stops = stop_ids(tokenizer)  # cached per tokenizer: decode() reuses it
    stop_seconds = time.perf_counter() - t
    examples = load_examples(directions, args.n)
    work = {
        d: (
            [format_example(ex)[0] for ex in exs],
            [ex.src_text for ex in exs],
        )
        for d, exs in examples.items()
    }
    print(
        f"model and data ready in {run.seconds:.0f} s "
        f"({len(stops)} stop ids, {stop_seconds:.1f} s); threads {torch.get_num_threads()}",
        flush=True,
    )

    # warm-up: the first batch of the first direction, 8 new tokens, each arm (untimed)
    warm_cfg = DecodeConfig(batch_size=args.batch_size, max_new_tokens=8)
    p0, s0 = work[directions[0]]
    plan0 = plan(tokenizer, p0, s0, config)[2][0]
    warm = {directions[0]: ([p0[i] for i in plan0], [s0[i] for i in plan0])}

    def arm(fn: Any) -> Any:
        """Every direction of ``(work, config)`` through ``fn``."""
        return lambda x: {d: fn(model, tokenizer, *w, x[1], stops) for d, w in x[0].items()}

    def report_round(r: int, name: str, got: dict[str, Any], _seconds: float) -> None:
        print(f"round {r} ({name}): {sum(v['seconds'] for v in got.values()):.1f} s", flush=True)

    run.mark("before_rounds")
    meter = CpuMeter()
    timed = interleave(  # round 0: (a) then (b); round 1: (b) then (a); ...
        {"a": arm(hf_generate), "b": arm(ours)},
        args.repeats,
        setup=lambda _r: (work, config),
        warmup=[(warm, warm_cfg)],
        report=report_round,
    )
    rounds: list[dict[str, Any]] = [
        {
            "order": timed.order[r],
            "load_1_5_15min_before": timed.load[r]["before"],
            "a": timed.results["a"][r],
            "b": timed.results["b"][r],
            "load_1_5_15min_after": timed.load[r]["after"],
        }
        for r in range(args.repeats)
    ]
    others_rounds = meter.others_cores()
    run.mark("after_rounds")

    # bs=1 vs bs=N identity check (and its speed), once
    bs1_cfg = DecodeConfig(batch_size=1)
    t = time.perf_counter()
    bs1 = {
        d: ours(model, tokenizer, *(x[:bs1_n] for x in work[d]), bs1_cfg, stops) for d in directions
    }
    bs1_seconds = time.perf_counter() - t
    run.mark("end")
    print(f"bs=1 on {bs1_n} × {len(directions)}: {bs1_seconds:.1f} s", flush=True)

    # ---------------------------------------------------------------- summary
    def concat(run: dict[str, dict[str, Any]], key: str, n: int | None = None) -> list[Any]:
        return [x for d in directions for x in run[d][key][:n]]

    def pooled(run: dict[str, dict[str, Any]], n: int | None = None) -> dict[str, Any]:
        return {
            "hypotheses": concat(run, "hypotheses", n),
            "token_ids": concat(run, "token_ids", n),
        }

    ref_b = pooled(rounds[0]["b"])
    token_count = sum(len(t) for t in ref_b["token_ids"])
    sentences = len(ref_b["hypotheses"])

    def arm_summary(arm: str) -> dict[str, Any]:
        secs = [sum(rd[arm][d]["seconds"] for d in directions) for rd in rounds]
        return {
            "seconds_per_round": secs,
            "median_seconds": median(secs),
            "median_sentences_per_s": median([sentences / x for x in secs]),
            "median_tokens_per_s": median([token_count / x for x in secs]),
            "own_token_count_round0": sum(len(t) for t in pooled(rounds[0][arm])["token_ids"]),
            "row_steps": sum(
                bt["row_steps"] for d in directions for bt in rounds[0][arm][d]["batches"]
            ),
            "steps": sum(bt["steps"] for d in directions for bt in rounds[0][arm][d]["batches"]),
        }

    summary = {"a": arm_summary("a"), "b": arm_summary("b")}
    per_round = [
        sa / sb
        for sa, sb in zip(
            summary["a"]["seconds_per_round"], summary["b"]["seconds_per_round"], strict=True
        )
    ]
    summary["ratio_b_over_a_per_round"] = per_round
    summary["ratio_b_over_a_median_of_rounds"] = median(per_round)
    summary["ratio_b_over_a_of_medians"] = (
        summary["b"]["median_tokens_per_s"] / summary["a"]["median_tokens_per_s"]
    )
    a0 = pooled(rounds[0]["a"])

    def min_across(arm: str, key: str) -> float:
        ref = pooled(rounds[0][arm])
        return min([identical(ref, pooled(rd[arm]))[key] for rd in rounds[1:]] or [float("nan")])

    bs1_ref = pooled(
        {
            d: {k: rounds[0]["b"][d][k][:bs1_n] for k in ("hypotheses", "token_ids")}
            for d in directions
        }
    )
    bs1_pooled = pooled(bs1)
    bs1_tokens = sum(len(t) for t in bs1_pooled["token_ids"])
    checks = {
        "a_vs_b": identical(a0, ref_b),
        "bs1_vs_bs": identical(bs1_ref, bs1_pooled),
        "a_rounds_min_text_identical": min_across("a", "text_identical"),
        "a_rounds_min_tokens_identical": min_across("a", "tokens_identical"),
        "b_rounds_min_text_identical": min_across("b", "text_identical"),
        "b_rounds_min_tokens_identical": min_across("b", "tokens_identical"),
        "rows_hitting_budget_b": sum(
            len(t) == b and (not t or t[-1] not in stops)
            for d in directions
            for t, b in zip(
                rounds[0]["b"][d]["token_ids"], rounds[0]["b"][d]["budgets"], strict=True
            )
        ),
    }
    targets = {
        "b_over_a": summary["ratio_b_over_a_of_medians"] >= TARGET_B_OVER_A,
        "bs1_identical": checks["bs1_vs_bs"]["text_identical"] >= TARGET_BS1_IDENTICAL,
    }
    runtime = run.seconds
    report = run.record(
        runtime_seconds=runtime,
        load_average_1_5_15min=run.load,
        other_processes_cores={"during_rounds": others_rounds},
        setup={
            "model": MODEL,
            "dtype": str(next(model.parameters()).dtype),
            "data": f"{CORPUS.relative_to(ROOT.parent)} {SPLIT}",
            "split": SPLIT,
            "directions": directions,
            "n_per_direction": args.n,
            "sentences_total": sentences,
            "tokens_total": token_count,
            "prompt": "plain (format_example), zero-shot",
            "decode_config": config.__dict__,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "bs1_n_per_direction": bs1_n,
            "stop_ids": len(stops),
            "stop_ids_seconds": stop_seconds,
            "torch_threads": torch.get_num_threads(),
            "warmup": "first batch of the first direction, max_new_tokens=8, each arm, untimed",
        },
        summary=summary,
        targets=targets,
        checks=checks,
        rounds=[
            {
                **{k: v for k, v in rd.items() if k not in ("a", "b")},
                "a": {d: strip(rd["a"][d]) for d in directions},
                "b": {d: strip(rd["b"][d]) for d in directions},
            }
            for rd in rounds
        ],
        bs1={
            "seconds": bs1_seconds,
            "tokens": bs1_tokens,
            "tokens_per_s": bs1_tokens / bs1_seconds,
            "per_direction": {d: strip(bs1[d]) for d in directions},
        },
        hypotheses={
            d: {
                "sources": work[d][1],
                "references": [ex.tgt_text for ex in examples[d]],
                "a_round0": rounds[0]["a"][d]["hypotheses"],
                "b_round0": rounds[0]["b"][d]["hypotheses"],
                "b_bs1": bs1[d]["hypotheses"],
                "a_round0_token_ids": rounds[0]["a"][d]["token_ids"],
                "b_round0_token_ids": rounds[0]["b"][d]["token_ids"],
                "b_bs1_token_ids": bs1[d]["token_ids"],
            }
            for d in directions
        },
    )
    out = args.out if args.out.is_absolute() else Path.cwd() / args.out
    write_json(out, report, ensure_ascii=True)
    print(markdown(report))
    print(f"total {runtime:.0f} s; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
