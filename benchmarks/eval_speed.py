r"""Evaluation speed (issue 14): greedy decoding settings on gemma3-270m, resumable.

What it measures
----------------
Zero-shot plain-template prompts of the first ``--n`` FLORES-200 devtest rows of each
direction (default ``arb_Arab->arz_Arab`` and ``arb_Arab->ary_Arab``), decoded by
gemma3-270m (float32, CPU; ``--adapter DIR`` adds a peft adapter) with each setting:

* ``hf-generate-bs8``: ``model.generate`` on ``decode()``'s left-padded batches of 8
  (``decode_speed.hf_generate``: the reference of BENCHMARKS.md's earlier table);
* ``decode-bs8``: today's default ``decode()`` (static batches of 8; the **reference**
  for identical hypotheses);
* ``decode-bs32``: static batches of 32;
* ``continuous-16`` / ``continuous-32``: 16 / 32 slots refilled as rows finish;
* ``lookup6-bs8``: static batches of 8 with prompt-lookup drafts of 6 tokens;
* ``continuous-16+lookup4`` / ``continuous-16+lookup6`` / ``continuous-32+lookup6``;
* approximate (``decode()``'s ``dtype="bf16"`` and output-vocabulary ``shortlist``: the
  tokens of the FLORES **dev** sentences of the target variety, tokenised as training
  targets, which the study trains on): ``bf16-bs8``, ``shortlist-bs8``, and each on top
  of the best exact setting, ``continuous-16+lookup4+bf16``, ``…+shortlist``,
  ``…+bf16+shortlist``, and ``continuous-32+lookup4+bf16+shortlist``.

Every setting decodes the same sentences. **Tokens** are the same fixed count for all
settings: the reference's hypotheses re-tokenised, plus one stop token each, so
tokens/s compares equal work. Per setting and direction the JSON keeps wall seconds,
sentences/s, tokens/s, the hypotheses, the share identical to the reference, corpus
chrF++ (sacrebleu, word order 2) and, for the new settings, draft statistics.

**Resumable.** Results go to ``--out`` (atomically) after every (setting, direction);
a run skips what is already there, so the table can be completed over several sittings.
Each entry records its *sitting* (the start time of the process that made it); speed
ratios are taken only between entries of the same sitting (the table says which).

How to run
----------
::

    .venv/bin/python benchmarks/eval_speed.py                    # all settings, 200 rows
    .venv/bin/python benchmarks/eval_speed.py --n 8 --settings decode-bs8 continuous-16 \
        --out benchmarks/results/eval_speed_quick.json            # smoke run
    .venv/bin/python benchmarks/eval_speed.py --quick --out DIR/eval_speed.json  # smallest
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

if "OMP_WAIT_POLICY" not in os.environ:  # before torch: no spin-waiting threads
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import torch

import _common
from decode_speed import CORPUS, hf_generate, load_examples
from vardecouple.data import Example, format_example, load_corpus
from vardecouple.evaluate.decode import DecodeConfig, decode, prompt_ids, stop_ids
from vardecouple.evaluate.metrics import corpus_scores
from vardecouple.evaluate.scoring import target_shortlists

REFERENCE = "decode-bs8"
BEST = {"batch_size": 16, "continuous": True, "lookup_tokens": 4}  # the best exact setting
SETTINGS: dict[str, dict[str, Any]] = {
    "hf-generate-bs8": {"batch_size": 8},
    "decode-bs8": {"batch_size": 8},
    "decode-bs32": {"batch_size": 32},
    "continuous-16": {"batch_size": 16, "continuous": True},
    "continuous-32": {"batch_size": 32, "continuous": True},
    "lookup6-bs8": {"batch_size": 8, "lookup_tokens": 6},
    "continuous-16+lookup4": {"batch_size": 16, "continuous": True, "lookup_tokens": 4},
    "continuous-16+lookup6": {"batch_size": 16, "continuous": True, "lookup_tokens": 6},
    "continuous-32+lookup6": {"batch_size": 32, "continuous": True, "lookup_tokens": 6},
    "continuous-32+lookup8": {"batch_size": 32, "continuous": True, "lookup_tokens": 8},
    "bf16-bs8": {"batch_size": 8, "dtype": "bf16"},
    "shortlist-bs8": {"batch_size": 8, "shortlist": True},
    "continuous-16+lookup4+bf16": {**BEST, "dtype": "bf16"},
    "continuous-16+lookup4+shortlist": {**BEST, "shortlist": True},
    "continuous-16+lookup4+bf16+shortlist": {**BEST, "dtype": "bf16", "shortlist": True},
    "continuous-16+lookup8+bf16+shortlist": {
        **BEST,
        "lookup_tokens": 8,
        "dtype": "bf16",
        "shortlist": True,
    },
    "continuous-32+lookup8+shortlist": {
        "batch_size": 32,
        "continuous": True,
        "lookup_tokens": 8,
        "shortlist": True,
    },
    "continuous-32+lookup8+bf16+shortlist": {
        "batch_size": 32,
        "continuous": True,
        "lookup_tokens": 8,
        "dtype": "bf16",
        "shortlist": True,
    },
    "continuous-32+lookup4+bf16+shortlist": {
        **BEST,
        "batch_size": 32,
        "dtype": "bf16",
        "shortlist": True,
    },
}


def shortlists(tok: Any, directions: list[str]) -> dict[str, frozenset[int]]:
    """Per direction: the tokens of the FLORES dev sentences of its target variety."""
    dev = load_corpus(CORPUS, split="dev")
    train = [Example(d.split("->")[0], d.split("->")[1], r.get(d.split("->")[0], ""), r[tgt],
                     group=k)
             for d in directions for k, r in enumerate(dev.rows)
             if (tgt := d.split("->")[1]) in r]  # fmt: skip
    return target_shortlists(tok, train, directions)


def run_setting(name: str, model: Any, tok: Any, prompts: list[str], sources: list[str],
                shortlist: frozenset[int]) -> dict:  # fmt: skip
    options = dict(SETTINGS[name])
    cut = shortlist if options.pop("shortlist", False) else None
    config = DecodeConfig(**options)
    stats: dict[str, int] = {}
    start = time.perf_counter()
    if name.startswith("hf-generate"):
        hyps = hf_generate(model, tok, prompts, sources, config, stop_ids(tok))["hypotheses"]
    else:
        hyps = decode(model, tok, prompts, sources, config, shortlist=cut, progress=False,
                      stats=stats)  # fmt: skip
    return {"seconds": time.perf_counter() - start, "hypotheses": hyps, "stats": stats}


def markdown(report: dict[str, Any]) -> str:
    lines = []
    for direction in report["directions"]:
        entries = {s: report["results"].get(f"{s}|{direction}") for s in SETTINGS}
        ref = entries.get(REFERENCE)
        lines += ["", f"**{direction}** ({report['n']} sentences)", ""]
        rows = []
        for name, e in entries.items():
            if e is None:
                continue
            same_sitting = ref is not None and ref["sitting"] == e["sitting"]
            ratio = f"{ref['seconds'] / e['seconds']:.2f}" if same_sitting else "—"
            hf = entries.get("hf-generate-bs8")
            vs_hf = (f"{hf['seconds'] / e['seconds']:.2f}"
                     if hf is not None and hf["sitting"] == e["sitting"] else "—")  # fmt: skip
            gaps = [g["gap"] for g in e.get("gaps", [])]
            small = sum(g < 1e-4 for g in gaps)
            ties = ("approximate" if "gaps" not in e else "—" if not gaps
                    else f"{small}/{len(gaps)} (max {max(gaps):.1e})")  # fmt: skip
            rows.append([f"`{name}`", f"{e['tokens_per_s']:.1f}", f"{e['sentences_per_s']:.2f}",
                         ratio, vs_hf, f"{e['identical']}/{e['n']}",
                         f"{e['chrf++']:.2f}", ties])  # fmt: skip
        header = ["setting", "tokens/s", "sentences/s", f"× `{REFERENCE}`", "× HF generate",
                  "identical to reference", "chrF++",
                  "differences at a top-2 gap < 1e-4"]  # fmt: skip
        lines += _common.md_table(header, ["l", "r", "r", "r", "r", "r", "r", "r"], rows)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--n", type=int, default=200, help="sentences per direction (200)")
    parser.add_argument("--directions", nargs="+", default=["arb_Arab->arz_Arab",
                                                             "arb_Arab->ary_Arab"])  # fmt: skip
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--adapter", default=None, help="a peft adapter folder")
    parser.add_argument("--out", type=Path, default=None,
                        help="results JSON (default results/eval_speed[_quick].json)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: --n 2, the first direction, the reference")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.directions, args.settings = 2, args.directions[:1], [REFERENCE]
    stem = "eval_speed_quick" if args.quick else "eval_speed"
    args.out = args.out or _common.RESULTS / f"{stem}.json"

    from vardecouple.model.load import load_model

    loaded = load_model("gemma3-270m")
    model, tok = loaded.model, loaded.tokenizer
    if args.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, args.adapter).eval()
    report: dict[str, Any] = {}
    if args.out.exists():
        report = json.loads(args.out.read_text(encoding="utf-8"))
        if report.get("n") != args.n or report.get("adapter") != args.adapter:
            raise SystemExit(f"{args.out}: made with another --n or --adapter; use another --out")
    report.setdefault("n", args.n)
    report.setdefault("adapter", args.adapter)
    report.setdefault("results", {})
    report["directions"] = sorted(set(report.get("directions", [])) | set(args.directions))
    sitting = _common.utc_now()
    report.setdefault("sittings", []).append({
        "sitting": sitting, "command": _common.command_line(sys.executable),
        "machine": _common.machine("transformers"), "git": _common.git_state()})  # fmt: skip
    examples = load_examples(args.directions, args.n)
    cuts = shortlists(tok, args.directions)
    order = [REFERENCE] + [s for s in args.settings if s != REFERENCE]
    for direction, rows in examples.items():
        prompts = [format_example(ex)[0] for ex in rows]
        sources = [ex.src_text for ex in rows]
        refs = [ex.tgt_text for ex in rows]
        ref = report["results"].get(f"{REFERENCE}|{direction}")
        for name in order:
            key = f"{name}|{direction}"
            if key in report["results"]:
                continue
            got = run_setting(name, model, tok, prompts, sources, cuts[direction])
            if name == REFERENCE:
                ref = got | {"sitting": sitting}
            tokens = sum(len(tok.encode(h, add_special_tokens=False)) + 1
                         for h in ref["hypotheses"])  # fmt: skip
            same = sum(a == b for a, b in zip(got["hypotheses"], ref["hypotheses"], strict=True))
            report["results"][key] = got | {
                "sitting": sitting,
                "n": len(rows),
                "tokens": tokens,
                "tokens_per_s": tokens / got["seconds"],
                "sentences_per_s": len(rows) / got["seconds"],
                "identical": same,
                "chrf++": corpus_scores(got["hypotheses"], refs)["chrf++"],
            }
            _common.write_json(args.out, report)
            e = report["results"][key]
            print(f"{key}: {e['seconds']:.1f} s, {e['tokens_per_s']:.1f} tok/s, "
                  f"{same}/{len(rows)} identical, chrF++ {e['chrf++']:.2f}",
                  flush=True)  # fmt: skip
    near_ties(report, model, tok, examples)
    _common.write_json(args.out, report)
    print(markdown(report))
    return 0


@torch.no_grad()
def near_ties(report: dict[str, Any], model: Any, tok: Any, examples: dict[str, list]) -> None:
    """For every hypothesis of an exact setting that differs from the reference: the
    reference's top-2 logit gap at the first differing token (``gaps``: row, gap), so
    each difference is logged with whether float rounding at a near-tie explains it."""
    for key, e in report["results"].items():
        name, direction = key.split("|")
        options = SETTINGS.get(name, {})
        if "gaps" in e or options.get("dtype") or options.get("shortlist"):
            continue
        if direction not in examples:
            continue
        ref = report["results"][f"{REFERENCE}|{direction}"]["hypotheses"]
        gaps = []
        for row, (a, b) in enumerate(zip(ref, e["hypotheses"], strict=True)):
            if a == b:
                continue
            x, y = (tok.encode(t, add_special_tokens=False) for t in (a, b))
            common = next((k for k in range(min(len(x), len(y))) if x[k] != y[k]),
                          min(len(x), len(y)))  # fmt: skip
            prompt = format_example(examples[direction][row])[0]
            ids = prompt_ids(tok, prompt, DecodeConfig().max_prompt_tokens) + x[:common]
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            top = logits.topk(2).values
            gaps.append({"row": row, "gap": float(top[0] - top[1])})
        e["gaps"] = gaps


if __name__ == "__main__":
    raise SystemExit(main())
