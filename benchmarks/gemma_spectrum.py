"""The within-variety covariance spectrum of gemma3-270m's hidden states, per layer.

Planted data "shaped like Gemma's states" needs the spectrum of real states: how much of
the variance a few outlier directions hold. This reads the Arabic probe rows of the
example (FLORES-200 dev: the first ``ROWS`` aligned rows of MSA and the six dialects),
runs gemma3-270m without gradients, and records for each of ``LAYERS`` the eigenvalues of
the pooled within-variety covariance of the token states (all tokens but each
sentence's first), plus the per-coordinate variances (the outliers are axis-aligned in
Gemma) and the share of the total variance held by the top 1, 4, 16 and 64 eigenvalues.

Command::

    .venv/bin/python benchmarks/gemma_spectrum.py
    .venv/bin/python benchmarks/gemma_spectrum.py --quick --out DIR   # 10 rows (smoke run)

Writes ``gemma_spectrum.json`` into ``--out`` (default ``benchmarks/results/``;
``benchmarks/results/quick/`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from _common import RESULTS, Run, write_json
from _states import ARABIC, flores_rows, token_states

ROWS, QUICK_ROWS = 100, 10
LAYERS = (3, 9, 15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help=f"smoke run: {QUICK_ROWS} rows")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = QUICK_ROWS if args.quick else ROWS
    out_dir = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    run = Run("gemma_spectrum", "transformers")
    texts, labels, _ = flores_rows(range(rows))
    states, owner = token_states(texts, LAYERS)
    y = torch.tensor(labels)[owner]
    out = {}
    for layer in LAYERS:
        x = states[layer].double()
        means = torch.stack([x[y == c].mean(0) for c in range(len(ARABIC))])
        centred = x - means[y]
        cov = centred.T @ centred / (x.shape[0] - len(ARABIC))
        evals = torch.linalg.eigvalsh(cov).flip(0).clamp(min=0.0)
        total = float(evals.sum())
        out[str(layer)] = {
            "eigenvalues": evals.tolist(),
            "coordinate_variances": cov.diagonal().tolist(),
            "top_share": {str(k): float(evals[:k].sum()) / total for k in (1, 4, 16, 64)},
            "tokens": int(x.shape[0]),
        }
        print(f"layer {layer}: top-1/4/16/64 share {out[str(layer)]['top_share']}", flush=True)
    report = run.record(
        seconds=run.seconds,
        data=f"flores200/dev, first {rows} rows of {', '.join(ARABIC)}",
        layers=out,
    )
    write_json(out_dir / "gemma_spectrum.json", report, indent=None)
    print(f"wrote {out_dir / 'gemma_spectrum.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
