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

Writes ``benchmarks/results/gemma_spectrum.json``.
"""

from __future__ import annotations

import datetime as dt
import shlex
import sys
import time
from pathlib import Path

import torch

from _common import git_state, machine, write_json
from vardecouple.model import layer_states, load_model

ROOT = Path(__file__).resolve().parent.parent
FLORES = ROOT.parent / "shared" / "corpora" / "flores200" / "dev"
VARIETIES = ("arb_Arab", "arz_Arab", "ary_Arab", "acm_Arab", "aeb_Arab", "ajp_Arab", "apc_Arab")
ROWS = 100
LAYERS = (3, 9, 15)
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    torch.set_num_threads(2)
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    git, t0 = git_state(), time.perf_counter()
    loaded = load_model("gemma3-270m")
    texts, labels = [], []
    for label, code in enumerate(VARIETIES):
        lines = (FLORES / f"{code}.txt").read_text(encoding="utf-8").splitlines()[:ROWS]
        texts += lines
        labels += [label] * len(lines)
    states, owner = layer_states(loaded, texts, list(LAYERS), batch_size=16)
    y = torch.tensor(labels)[owner]
    out = {}
    for layer in LAYERS:
        x = states[layer].double()
        means = torch.stack([x[y == c].mean(0) for c in range(len(VARIETIES))])
        centred = x - means[y]
        cov = centred.T @ centred / (x.shape[0] - len(VARIETIES))
        evals = torch.linalg.eigvalsh(cov).flip(0).clamp(min=0.0)
        total = float(evals.sum())
        out[str(layer)] = {
            "eigenvalues": evals.tolist(),
            "coordinate_variances": cov.diagonal().tolist(),
            "top_share": {str(k): float(evals[:k].sum()) / total for k in (1, 4, 16, 64)},
            "tokens": int(x.shape[0]),
        }
        print(f"layer {layer}: top-1/4/16/64 share {out[str(layer)]['top_share']}", flush=True)
    write_json(
        RESULTS / "gemma_spectrum.json",
        {
            "benchmark": "gemma_spectrum",
            "date": date,
            "command": shlex.join([".venv/bin/python", *sys.argv]),
            "machine": machine("transformers"),
            "git": git,
            "seconds": time.perf_counter() - t0,
            "data": f"flores200/dev, first {ROWS} rows of {', '.join(VARIETIES)}",
            "layers": out,
        },
        indent=None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
