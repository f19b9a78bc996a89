"""Why the paper's probe (``variational``) gets worse with more data: one factor at a time.

Planted data as in ``subspace_recovery.py`` (d = 640, the width of gemma3-270m; a rank-4
standard subspace of variance SNR; 4 non-standard varieties shifted by sqrt(SNR) noise
standard deviations along dense orthonormal directions). Every probe reads the
decoupler's default: ``classes = "standard-vs-rest"``, rank 1, scored by the angle (in
degrees) to the planted standard-vs-rest direction (the pooled non-standard mean minus
the standard mean). Each cell is the median over seeds. Beside the angle: how many
gates survive (``log α < 3``), the optimizer steps taken, and the training accuracy of
the probe's own mean classifier (1.0 = the classes are separated by it).

Experiments (``variational`` with one option changed, against ``mean-diff`` and
``leace(side="row")`` on the same data):

- ``separation``: SNR 10 / 50 / 200 × n — does the degradation need separable classes?
- ``budget``: ``fit_steps`` fixed (40 / 160 / 640) — is it the number of steps, which
  grows with n at a fixed number of epochs?
- ``kl``: ``kl_weight`` 0 / 0.01 / 0.1 / 1 — is it the prior's pull (the B/N-weighted KL)?
- ``variance``: ``max_var`` 0.04 / 1 / 1e6 (no cap) — the weight-variance clip.
- ``gates``: without the gates (``gates = False``: a Bayesian linear classifier).
- ``init``: ``init_logvar`` −9 (the paper's code) / −4.

Command::

    .venv/bin/python benchmarks/probe_diagnosis.py [--seeds 3] [--quick] [--out DIR]

Writes ``probe_diagnosis.{json,md,png}`` (``--quick``: ``probe_diagnosis_quick.*``) into
``--out`` (default ``benchmarks/results/``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from _common import RESULTS, Run, md_table, pyplot, save_figure, write_results
from _planted import DIM, N_VARIETIES, RANK, draw, largest_angle, timed_fit
from vardecouple.probes import make_estimator
from vardecouple.probes.synthetic import PlantedVarieties

NS = (256, 512, 1024, 2048, 4096)
SVR = {"classes": "standard-vs-rest"}

#: experiment -> (SNRs, ns, {row label: (estimator, options)})
EXPERIMENTS: dict[str, tuple[tuple[float, ...], tuple[int, ...], dict[str, tuple[str, dict]]]] = {
    "separation": (
        (10.0, 50.0, 200.0),
        NS,
        {
            "variational (paper)": ("variational", SVR),
            "mean-diff": ("mean-diff", SVR),
            "leace (row)": ("leace", SVR | {"side": "row"}),
        },
    ),
    "budget": (
        (200.0,),
        (256, 1024, 4096),
        {
            "paper (40 epochs)": ("variational", SVR),
            "40 steps": ("variational", SVR | {"fit_steps": 40}),
            "160 steps": ("variational", SVR | {"fit_steps": 160}),
            "640 steps": ("variational", SVR | {"fit_steps": 640}),
        },
    ),
    "kl": (
        (200.0,),
        (256, 1024, 4096),
        {
            f"kl_weight {w:g}": ("variational", SVR | {"kl_weight": w})
            for w in (1.0, 0.1, 0.01, 0.0)
        },
    ),
    "variance": (
        (200.0,),
        (256, 1024, 4096),
        {f"max_var {v:g}": ("variational", SVR | {"max_var": v}) for v in (0.04, 1.0, 1e6)},
    ),
    "gates": (
        (50.0, 200.0),
        (256, 1024, 4096),
        {
            "gated (paper)": ("variational", SVR),
            "no gates": ("variational", SVR | {"gates": False}),
        },
    ),
    "init": (
        (200.0,),
        (256, 1024, 4096),
        {f"init_logvar {v:g}": ("variational", SVR | {"init_logvar": v}) for v in (-9.0, -4.0)},
    ),
}


def one(name: str, options: dict[str, Any], p: PlantedVarieties, seed: int) -> dict[str, Any]:
    """Fit one estimator; its angle to the standard-vs-rest direction and diagnostics."""
    opts = dict(options)
    if name == "variational":
        opts["seed"] = seed
    est = make_estimator(name, 1, **opts)
    sub, seconds = timed_fit(est, p.states, p.labels)
    out = {"angle": largest_angle(sub.basis, p.standard_vs_rest_direction), "seconds": seconds}
    if name == "variational":
        assert est.layer is not None
        with torch.no_grad():
            logits = est.layer(est._inputs(p.states), sample=False)
        target = est._targets(p.labels)
        out |= {
            "kept_gates": int(est.kept_dimensions().numel()),
            "steps": est.last_iterations,
            "train_accuracy": float((logits.argmax(1) == target).double().mean()),
        }
    return out


def diagnose(seeds: int, quick: bool) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for experiment, (snrs, ns, rows) in EXPERIMENTS.items():
        if quick:
            snrs, ns = snrs[-1:], ns[:2]
        cells = []
        for snr in snrs:
            for n in ns:
                for label, (name, options) in rows.items():
                    runs = [one(name, options, draw(n, snr, s), s) for s in range(seeds)]
                    cell = {"snr": snr, "n": n, "row": label, "runs": runs}
                    for key in runs[0]:
                        cell[key] = statistics.median(r[key] for r in runs)
                    cells.append(cell)
                    extra = f", {cell['kept_gates']:.0f} gates" if "kept_gates" in cell else ""
                    print(f"{experiment} snr {snr:g} n {n} {label}: {cell['angle']:.1f}°{extra}",
                          flush=True)  # fmt: skip
        results[experiment] = cells
    return results


def tables(results: dict[str, Any]) -> str:
    lines: list[str] = []
    for experiment, cells in results.items():
        snrs = sorted({c["snr"] for c in cells})
        ns = sorted({c["n"] for c in cells})
        rows = list(dict.fromkeys(c["row"] for c in cells))
        for snr in snrs:
            lines += ["", f"**{experiment}**, SNR {snr:g} (separation {snr**0.5:.1f} σ): median "
                      "angle (°) / surviving gates / train accuracy", ""]  # fmt: skip
            body = []
            for row in rows:
                out = [row]
                for n in ns:
                    c = next(
                        x for x in cells if x["snr"] == snr and x["n"] == n and x["row"] == row
                    )
                    text = f"{c['angle']:.1f}"
                    if "kept_gates" in c:
                        text += f" / {c['kept_gates']:.0f} / {c['train_accuracy']:.2f}"
                    out.append(text)
                body.append(out)
            lines += md_table(["", *(f"n={n}" for n in ns)], ["l", *("r" for _ in ns)], body)
    return "\n".join(lines).strip() + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    panels = [(e, s) for e, cells in results.items() for s in sorted({c["snr"] for c in cells})]
    cols = 3
    rows_ = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_, cols, figsize=(4.2 * cols, 3.3 * rows_), squeeze=False)
    for ax, (experiment, snr) in zip(axes.flat, panels, strict=False):
        cells = [c for c in results[experiment] if c["snr"] == snr]
        for row in dict.fromkeys(c["row"] for c in cells):
            pts = sorted((c["n"], c["angle"]) for c in cells if c["row"] == row)
            ax.plot([n for n, _ in pts], [a for _, a in pts], marker="o", label=row)
        ax.set_xscale("log", base=2)
        ax.set_ylim(0, 90)
        ax.set_title(f"{experiment}, SNR {snr:g}", fontsize=9)
        ax.set_xlabel("n (states)", fontsize=8)
        ax.set_ylabel("angle to std-vs-rest (°)", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 sizes, 1 SNR")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    run = Run("probe_diagnosis")
    results = diagnose(args.seeds, args.quick)
    stem = "probe_diagnosis_quick" if args.quick else "probe_diagnosis"
    report = run.record(
        seconds=run.seconds,
        setup={"dim": DIM, "rank": RANK, "varieties": N_VARIETIES, "seeds": args.seeds},
        results=results,
    )
    text = tables(results)
    write_results(args.out / stem, report, text)
    plot(results, args.out / f"{stem}.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
