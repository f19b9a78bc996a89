"""Wall time of a full 18-layer ``vardecouple probe`` of gemma3-270m (issue 6: < 10 min).

Runs ``vardecouple probe --model gemma3-270m --layers all --max-rows 1000`` as a
subprocess, exactly as a user would, on three studies of ``../shared/corpora``:

- ``flores``: FLORES-200 dev, MSA (``arb_Arab``) vs the six dialects (997 rows each);
- ``fin-fkv``: Tatoeba Finnish vs Kven (all 389 rows);
- ``deu-nds``: Tatoeba German vs Low German (the first 1,000 rows).

For each it records the wall time, the split into sentence states (one forward pass of
the decoder body per batch, no LM head) and metrics (from ``probe.json``'s ``timing``),
the number of sentences and the load average before and after. The probe outputs
(``probe.json`` and ``plots/``) are kept under ``--keep`` (default ``docs/analysis``,
one folder per study; an existing folder is refused by the CLI, nothing is overwritten).
Writes ``benchmarks/results/probe_time.json`` atomically and prints a markdown table.

    python benchmarks/probe_time.py [--studies flores fin-fkv deu-nds] [--keep docs/analysis]
    python benchmarks/probe_time.py --quick --out DIR/probe_time.json   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from _common import CORPORA, RESULTS, cpu_name, write_json

STUDIES: dict[str, tuple[str, str, list[str]]] = {
    "flores": (
        "flores200/dev",
        "arb_Arab",
        ["arz_Arab", "ary_Arab", "apc_Arab", "ajp_Arab", "aeb_Arab", "acm_Arab"],
    ),
    "fin-fkv": ("tatoeba-fin-fkv", "fin_Latn", ["fkv_Latn"]),
    "deu-nds": ("tatoeba-deu-nds", "deu_Latn", ["nds_Latn"]),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", nargs="+", choices=list(STUDIES), default=list(STUDIES))
    parser.add_argument("--keep", default=None, help="where probe outputs stay (docs/analysis)")
    parser.add_argument("--max-rows", type=int, default=1000)
    parser.add_argument("--out", default=str(RESULTS / "probe_time.json"))
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: --studies fin-fkv --max-rows 20, outputs kept in a new temporary folder",
    )
    args = parser.parse_args()
    if args.quick:
        args.studies, args.max_rows = ["fin-fkv"], 20
        args.keep = args.keep or tempfile.mkdtemp(prefix="probe-time-quick-")
    args.keep = args.keep or "docs/analysis"
    exe = Path(sys.executable).with_name("vardecouple")
    rows = []
    for name in args.studies:
        corpus, standard, varieties = STUDIES[name]
        out = Path(args.keep) / f"probe-{name}"
        cmd = [str(exe), "probe", "--model", "gemma3-270m", "--corpus", str(CORPORA / corpus),
               "--standard", standard, "--varieties", *varieties, "--layers", "all",
               "--max-rows", str(args.max_rows), "--out", str(out)]  # fmt: skip
        load_start = os.getloadavg()
        start = time.perf_counter()
        env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}  # as `make`: no spin-waiting
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        probe = json.loads((out / "probe.json").read_text())
        rows.append({
            "study": name,
            "command": " ".join(["vardecouple", *cmd[1:]]),
            "sentences": probe["rows"] * (1 + len(probe["varieties"])),
            "rows": probe["rows"],
            "layers": len(probe["layers"]),
            "wall_seconds": round(wall, 1),
            "states_seconds": probe["timing"]["base"]["states"],
            "metrics_seconds": probe["timing"]["base"]["metrics"],
            "load_before": [round(x, 2) for x in load_start],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        })  # fmt: skip
        print(f"{name}: {wall:.0f} s", flush=True)
    result = {
        "benchmark": "probe_time",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": {
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "target_seconds": 600,
        "studies": rows,
    }
    write_json(Path(args.out), result, indent=2)
    print("| study | sentences | layers | states (s) | metrics (s) | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['study']} | {r['sentences']} | {r['layers']} | {r['states_seconds']:.0f} "
              f"| {r['metrics_seconds']:.0f} | {r['wall_seconds']:.0f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
