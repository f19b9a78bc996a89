"""Inference-time erasure on gemma3-270m (issue 6): what removing the MSA subspace does.

Runs ``vardecouple eval`` on the base gemma3-270m, MSA → Egyptian and MSA → Moroccan
(FLORES-200: trained/probed on ``dev``, tested on the first ``--examples`` rows of
``devtest``), once plainly and once per erasure setting, and collects chrF++, the
target- and standard-variety rates and, for each erasure, the held-out overlap of every
variety at the erased and every later layer without and with erasure (subspaces fitted
on the unerased model: at the erased layer α = 1 makes it zero by construction; the
later layers show what the network rebuilds). Every eval folder is kept under ``--keep``
(a finished one is read back, so an interrupted benchmark resumes).
Writes ``benchmarks/results/erasure_gemma.json`` atomically and prints markdown tables.

    python benchmarks/erasure_gemma.py [--examples 100] [--keep /tmp/erasure-gemma]
    python benchmarks/erasure_gemma.py --quick --out DIR/erasure_gemma.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from _common import CORPORA, RESULTS, cpu_name, write_json

CONFIG = f"""
name = "erasure-gemma"
[data]
root = "{CORPORA}"
corpora = [{{ path = "flores200", split = "dev" }}]
test_corpora = [{{ path = "flores200", split = "devtest" }}]
standard = "arb_Arab"
varieties = ["arz_Arab", "ary_Arab"]
directions = "standard->variety"
dev_rows = 50
probe_rows = 100
max_length = 128
[model]
spec = "gemma3-270m"
[decoupler]
estimator = "variational"
rank = 1
layers = [9]
[eval]
batch_size = 8
max_new_tokens = 96
max_examples = {{examples}}
[arms.base]
kind = "base"
"""
SETTINGS = {  # name -> extra eval arguments
    "plain": [],
    "erase-l9-a1": ["--erase-layers", "9", "--erase-alpha", "1"],
    "erase-l9-a2": ["--erase-layers", "9", "--erase-alpha", "2"],
    "erase-l4,9,14-a1": ["--erase-layers", "4,9,14", "--erase-alpha", "1"],
}


def _deltas(config: Path, keep: Path, rows: dict) -> dict:
    """Paired bootstrap (1000 samples, seed 0) of each erasure setting minus plain."""
    from vardecouple.evaluate.metrics import paired_bootstrap
    from vardecouple.evaluate.scoring import read_lines, test_sets
    from vardecouple.experiment.arms import prepare_data
    from vardecouple.experiment.config import load_config

    cfg = load_config(config)
    tests = test_sets(prepare_data(cfg), cfg.eval.max_examples)
    refs = {d: [ex.tgt_text for ex in rows_] for d, rows_ in tests.items()}
    out = {}
    for name in rows:
        if name == "plain":
            continue

        def hyps(setting: str, d: str) -> list[str]:
            return read_lines(keep / setting / "hypotheses" / f"{d}.txt", len(refs[d]))

        blocks = {d: (refs[d], [hyps(name, d)], [hyps("plain", d)]) for d in refs}
        out[name] = {d: paired_bootstrap([b]).to_dict() for d, b in blocks.items()}
        out[name]["both"] = paired_bootstrap(list(blocks.values())).to_dict()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=100, help="test rows per direction")
    parser.add_argument("--keep", default=None, help="eval folders (/tmp/erasure-gemma)")
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    parser.add_argument("--out", default=str(RESULTS / "erasure_gemma.json"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: --examples 2 --settings plain erase-l9-a1, kept apart",
    )
    args = parser.parse_args()
    if args.quick:
        args.examples, args.settings = 2, ["plain", "erase-l9-a1"]
    args.keep = args.keep or ("/tmp/erasure-gemma-quick" if args.quick else "/tmp/erasure-gemma")
    keep = Path(args.keep)
    keep.mkdir(parents=True, exist_ok=True)
    config = keep / "erasure.toml"
    config.write_text(CONFIG.replace("{examples}", str(args.examples)))
    exe = Path(sys.executable).with_name("vardecouple")
    rows = {}
    for name in args.settings:
        out = keep / name
        cmd = [str(exe), "eval", "--config", str(config), "--out", str(out), *SETTINGS[name]]
        if not (out / "scores.json").exists():
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr[-3000:], file=sys.stderr)
                return proc.returncode
        scores = json.loads((out / "scores.json").read_text())
        rows[name] = {
            "command": " ".join(["vardecouple", *cmd[1:]]),
            "metrics": {
                d: {k: m[k] for k in ("chrf++", "bleu", "target_variety_rate")}
                | {"standard_variety_rate": m.get("standard_variety_rate")}
                for d, m in scores["metrics"].items()
            },
            "erasure": scores.get("erasure"),
            "eval_seconds": scores["eval_seconds"],
        }
        print(f"{name}: done", flush=True)
    deltas = _deltas(config, keep, rows) if "plain" in rows else {}
    result = {
        "benchmark": "erasure_gemma",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "examples_per_direction": args.examples,
        "settings": rows,
        "deltas_vs_plain": deltas,
    }
    write_json(Path(args.out), result, indent=2)
    print("| setting | direction | chrF++ | target rate | standard rate |")
    print("|---|---|---:|---:|---:|")
    for name, r in rows.items():
        for d, m in r["metrics"].items():
            std = m["standard_variety_rate"]
            print(f"| {name} | {d} | {m['chrf++']:.2f} | {m['target_variety_rate']:.2f} "
                  f"| {std if std is None else round(std, 2)} |")  # fmt: skip
    for name, r in rows.items():
        if not r["erasure"]:
            continue
        print(f"\n{name}: overlap (plain → erased) per layer")
        for layer, per in r["erasure"]["later_overlap"].items():
            cells = ", ".join(f"{v} {o['plain']:.3g}→{o['erased']:.3g}" for v, o in per.items())
            print(f"- layer {layer}: {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
