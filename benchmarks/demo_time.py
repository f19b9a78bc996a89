"""Wall time of ``vardecouple demo`` (issue 5: ≤ 10 minutes on this 2-core CPU).

Runs the default demo (or ``--quick``) in a fresh folder as a subprocess, exactly as a
user would (``vardecouple demo --out DIR``), and records the total wall time, the phases
(pre-training; per arm and seed: training and evaluation, from ``results.json``), the
headline numbers of the study (chrF++ per arm, the decoupled and random deltas over the
low-resource directions with their p-values) and the load average before and after.
Writes ``benchmarks/results/demo_time.json`` (atomically) and prints a markdown table.

    python benchmarks/demo_time.py [--quick] [--out benchmarks/results/demo_time.json]
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

from _common import RESULTS, cpu_name, write_json


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the --quick demo instead")
    parser.add_argument("--out", default=str(RESULTS / "demo_time.json"))
    args = parser.parse_args()
    exe = Path(sys.executable).with_name("vardecouple")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "demo"
        cmd = [str(exe), "demo", "--out", str(out)] + (["--quick"] if args.quick else [])
        env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        results = json.loads((out / "run" / "results.json").read_text())
        pretrain = json.loads((out / "model" / "pretrain.json").read_text())
    runs = {
        arm: {
            seed: {"train_seconds": r["train_seconds"], "eval_seconds": r["eval_seconds"]}
            for seed, r in seeds.items()
        }
        for arm, seeds in results["runs"].items()
    }
    low = [d for d, v in results["directions"].items() if v["kind"] == "low-resource"]
    chrf = {
        arm: sum(results["summary"][arm][d]["chrf++"]["mean"] for d in low) / len(low)
        for arm in results["runs"]
    }
    deltas = {
        arm: results["deltas"][arm]["mean_low_resource"]["chrf++"]
        for arm in results["deltas"]
        if "mean_low_resource" in results["deltas"][arm]
    }
    trained = sum(r["train_seconds"] for seeds in runs.values() for r in seeds.values())
    evaluated = sum(r["eval_seconds"] for seeds in runs.values() for r in seeds.values())
    record = {
        "benchmark": "demo_time",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["vardecouple", *cmd[1:2], "--out", "DIR", *cmd[4:]]),
        "machine": f"{platform.system()} {platform.release()}, {cpu_name()}",
        "git_sha": results["provenance"].get("git_sha"),
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "wall_seconds": wall,
        "train_seconds_all_arms": trained,
        "eval_seconds_all_arms": evaluated,
        "pretrain": pretrain,
        "runs": runs,
        "chrf_mean_low_resource": chrf,
        "deltas_mean_low_resource": deltas,
    }
    write_json(Path(args.out), record)
    print("| demo | wall s | training s (all arms) | evaluation s | load 1-min start/end |")
    print("|---|---:|---:|---:|---|")
    print(
        f"| {'quick' if args.quick else 'default'} | {wall:.0f} | {trained:.0f} | "
        f"{evaluated:.0f} | {load_start[0]:.2f} / {record['load_average_end'][0]:.2f} |"
    )
    print("\n| arm | chrF++ (mean over low-resource directions) | Δ vs standard | 95% CI | p |")
    print("|---|---:|---:|---|---:|")
    for arm, value in chrf.items():
        d = deltas.get(arm)
        extra = (
            f"{d['delta']:+.2f} | {d['ci95'][0]:+.2f} … {d['ci95'][1]:+.2f} | {d['p_value']:.3f}"
            if d
            else "— | — | —"
        )
        print(f"| {arm} | {value:.1f} | {extra} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
