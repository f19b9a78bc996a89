"""The report of a run: ``results.json`` → ``report.md`` and PNG plots in ``plots/``.

:func:`write_report` validates ``results.json`` against the shipped JSON Schema, then writes
every plot of :data:`PLOTS` (one without data says so on its canvas) and every section of
:data:`SECTIONS` (one without data says so). Files are written atomically (a temporary name
in the same folder, then ``os.replace``); the report is derived and safe to regenerate.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless; the Figure API below keeps no global pyplot state
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vardecouple.atomic import write_atomic

__all__ = ["ALPHA", "PLOTS", "SECTIONS", "load_results", "write_atomic", "write_report"]

SECTIONS = ("Setup", "Results", "Significance", "Overlap", "Probing", "Provenance")
PLOTS = (
    "chrf_by_direction.png",
    "deltas.png",
    "overlap_by_step.png",
    "overlap_by_layer.png",
    "target_rate.png",
)
ALPHA = 0.05
MEAN_LR = "mean_low_resource"
MEAN_STD = "mean_standard"  # the trade-off: directions into the standard variety
MEANS = {MEAN_LR: "mean over low-resource", MEAN_STD: "mean into the standard"}
NAMES = {"chrf++": "chrF++", "bleu": "BLEU", "target_variety_rate": "Target-variety rate (%)"}
Tables = list[dict[str, Any]]  # one overlap table {VARIETY: {own, reference}} per seed


def load_results(run_dir: Path) -> dict[str, Any]:
    """``run_dir/results.json``, validated; ValueError (one line: the file, the first problem)."""
    path = Path(run_dir) / "results.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"report: {path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"report: {path}: not valid JSON: {exc}") from None
    schema = json.loads((files("vardecouple") / "schemas" / "results.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "top level"
        msg = " ".join(error.message.split())
        msg = msg if len(msg) <= 200 else msg[:197] + "..."
        raise ValueError(f"report: {path}: invalid results at {where}: {msg}")
    return data


def _signed(x: float, digits: int = 2) -> str:
    s = f"{x:+.{digits}f}"
    return "±" + s[1:] if float(s) == 0 else s.replace("-", "−")


def _p(p: float) -> str:
    """``0.270`` / ``< 0.001``, never rounded across :data:`ALPHA`."""
    s = f"{p:.3f}"
    s = s if (float(s) < ALPHA) == (p < ALPHA) else f"{p:.5f}"
    return "< 0.001" if p < 0.001 else s


def _mean(xs: list[Any]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def _fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _layer_key(layer: str) -> tuple[bool, int, str]:
    return (not layer.isdigit(), int(layer) if layer.isdigit() else 0, layer)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


class _Run:
    """Views of a validated results.json."""

    def __init__(self, run_dir: Path, res: dict[str, Any]) -> None:
        self.dir, self.res = run_dir, res
        self.config: dict[str, Any] = res["config"]
        self.data: dict[str, Any] = self.config.get("data", {})
        self.runs: dict[str, dict[str, Any]] = res["runs"]
        arms = [*self.runs, *(a for a in res["summary"] if a not in self.runs)]
        self.arms = arms + [a for a in res["deltas"] if a not in arms]
        self.dirs = list(res["directions"]) or sorted(
            {d for seeds in self.runs.values() for r in seeds.values() for d in r["metrics"]}
        )
        kinds = {d: v["kind"] for d, v in res["directions"].items()}
        low = [d for d in self.dirs if kinds.get(d) == "low-resource"]
        into_std = [d.split("->")[-1] for d in self.dirs if kinds.get(d) == "standard"]
        self.standard = self.data.get("standard") or (into_std[0] if into_std else None)
        self.varieties = self.data.get("varieties") or sorted({d.split("->")[-1] for d in low})
        self.colors = {a: f"C{i % 10}" for i, a in enumerate(self.arms)}

    def kind(self, arm: str) -> str:
        return next((r["kind"] for r in self.runs.get(arm, {}).values()), "—")

    def values(self, arm: str, d: str, key: str) -> list[Any]:
        seeds = self.runs.get(arm, {}).values()
        return [r["metrics"][d][key] for r in seeds if key in r["metrics"].get(d, {})]

    def stat(self, arm: str, d: str, metric: str) -> tuple[float, float, int] | None:
        s = self.res["summary"].get(arm, {}).get(d, {}).get(metric)
        if s is not None:
            return s["mean"], s["sd"], s["n_seeds"]
        v = self.values(arm, d, metric)
        sd = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
        return (float(np.mean(v)), sd, len(v)) if v else None

    def ovl(self, tables: Tables, varieties: list[Any], key: str = "reference") -> float | None:
        """Mean over seeds of the mean over ``varieties`` of one overlap column."""
        return _mean([_mean([t[v][key] for v in varieties if v in t]) for t in tables])

    def trained(self) -> list[str]:
        return [
            a for a in self.arms if any(r.get("overlap") for r in self.runs.get(a, {}).values())
        ]

    def tables(self, arm: str, which: str) -> dict[str, Tables]:
        out: dict[str, Tables] = {}
        for r in self.runs.get(arm, {}).values():
            for layer, table in (r.get("overlap") or {}).get(which, {}).items():
                out.setdefault(layer, []).append(table)
        return out

    def curves(self, arm: str) -> dict[str, dict[int, Tables]]:
        """layer → step → overlap tables (one per seed), from the train logs' refreshes."""
        out: dict[str, dict[int, Tables]] = {}
        for seed, r in self.runs.get(arm, {}).items():
            rel = (r.get("overlap") or {}).get("by_step")
            path = self.dir / rel if rel else None
            if path is not None and not path.is_file():  # a bare file name: the run's folder
                path = self.dir / "runs" / arm / f"seed-{seed}" / rel
            if path is None or not path.is_file():
                continue
            steps: dict[int, dict[str, Any]] = {}
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line of an interrupted run
                if (
                    isinstance(rec, dict)
                    and rec.get("refresh")
                    and isinstance(rec.get("step"), int)
                ):
                    steps[rec["step"]] = rec.get("overlap") or {}  # resumed: the later record wins
            for step, layers in steps.items():
                for layer, table in layers.items():
                    out.setdefault(layer, {}).setdefault(step, []).append(table)
        return out


# ---------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> None:
    write_atomic(path, lambda t: fig.savefig(t, format="png", dpi=110, bbox_inches="tight"))


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _bars(ax: Any, groups: list[str], series: list[tuple[str, str, float, list, Any]]) -> None:
    """Grouped bars; ``series`` = (label, colour, alpha, heights, yerr or None)."""
    width = 0.8 / max(len(series), 1)
    for i, (label, color, alpha, ys, err) in enumerate(series):
        x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        y = [np.nan if v is None else v for v in ys]
        ax.bar(x, y, width, yerr=err, capsize=2, label=label, color=color, alpha=alpha)
    ax.set_xticks(
        np.arange(len(groups)),
        groups,
        rotation=30 if len(groups) > 2 else 0,
        ha="right" if len(groups) > 2 else "center",
    )
    ax.grid(axis="y", alpha=0.3)


def _wide(n_groups: int, n_series: int) -> tuple[float, float]:
    return max(7.0, 2.0 + n_groups * (0.25 * n_series + 0.4)), 4.5


def _plot_scores(run: _Run, path: Path, metric: str, title: str) -> str:
    """Grouped bars per direction per arm; returns what the error bars are."""
    scale = 100.0 if metric == "target_variety_rate" else 1.0
    fig = Figure(figsize=_wide(len(run.dirs), len(run.arms)), layout="constrained")
    ax, modes, series = fig.add_subplot(), set(), []
    for arm in run.arms:
        ys, err = [], []
        for d in run.dirs:
            s = run.stat(arm, d, metric)
            ys.append(s[0] * scale if s else None)
            cis = run.values(arm, d, f"{metric}_ci95") if s else []
            if s and cis and len(cis) == len(run.values(arm, d, metric)):
                lo, hi = np.mean(cis, axis=0)
                err.append((max(s[0] - lo, 0.0), max(hi - s[0], 0.0)))
                modes.add("the bootstrap 95% CI (per-seed interval bounds averaged over seeds)")
            else:
                err.append((s[1] * scale, s[1] * scale) if s else (0.0, 0.0))
                if s and s[2] > 1:
                    modes.add("± 1 sd over seeds")
        if any(y is not None for y in ys):
            series.append((arm, run.colors[arm], 1.0, ys, np.array(err).T))
    if series:
        _bars(ax, run.dirs, series)
        ax.set(xlabel="direction", ylabel=NAMES[metric], title=title)
        ax.legend(title="arm", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _empty(ax, f"no {NAMES[metric]} scores")
    _save(fig, path)
    return " and ".join(sorted(modes)) or "none (one seed, no bootstrap CI)"


def _plot_deltas(run: _Run, path: Path) -> None:
    deltas = run.res["deltas"]
    arms = [a for a in run.arms if deltas.get(a)]
    groups = [d for d in [*run.dirs, *MEANS] if any(d in deltas[a] for a in arms)]
    w, _ = _wide(len(groups), len(arms))
    fig = Figure(figsize=(w, 7), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, metric in zip(axes, ("chrf++", "bleu"), strict=True):
        if not groups:
            _empty(ax, "no deltas against the standard arm")
            continue
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            for j, g in enumerate(groups):
                d = deltas[arm].get(g, {}).get(metric)
                if d is None:
                    continue
                x, c, sig = (
                    j + (i - (len(arms) - 1) / 2) * width,
                    run.colors[arm],
                    d["p_value"] < ALPHA,
                )
                err = [[max(d["delta"] - d["ci95"][0], 0)], [max(d["ci95"][1] - d["delta"], 0)]]
                ax.errorbar(
                    x,
                    d["delta"],
                    yerr=err,
                    fmt="o",
                    color=c,
                    capsize=3,
                    ms=7,
                    markerfacecolor=c if sig else "white",
                )
                if sig:
                    ax.annotate("*", (x, d["ci95"][1]), ha="center", va="bottom", fontsize=13)
        ax.axhline(0, color="black", lw=0.8)
        means = sum(g in MEANS for g in groups)
        if means and len(groups) > means:
            ax.axvline(len(groups) - means - 0.5, color="grey", ls=":", lw=1)
        ax.margins(y=0.12)
        ax.set_ylabel(f"Δ {NAMES[metric]} vs standard")
        ax.grid(axis="y", alpha=0.3)
        labels = [MEANS.get(g, g) for g in groups]
        ax.set_xticks(range(len(groups)), labels, rotation=30, ha="right")
    fig.suptitle("Difference to the standard arm, paired bootstrap 95% CI")
    axes[1].set_xlabel("direction")
    handles = [Line2D([], [], marker="o", ls="", color=run.colors[a], label=a) for a in arms]
    handles += [
        Line2D([], [], marker="o", ls="", color="grey", label=f"filled, *: p < {ALPHA}"),
        Line2D([], [], marker="o", ls="", color="grey", mfc="white", label="hollow: n.s."),
    ]
    fig.legend(handles=handles, loc="outside right upper")
    _save(fig, path)


def _plot_overlap_step(run: _Run, path: Path) -> None:
    curves = {a: run.curves(a) for a in run.trained()}
    curves = {a: c for a, c in curves.items() if c}
    layers = sorted({la for c in curves.values() for la in c}, key=_layer_key)
    fig = Figure(figsize=(max(7.0, 4.2 * min(len(layers), 3) + 2), 4.2), layout="constrained")
    axes = fig.subplots(1, max(len(layers), 1), sharey=True, squeeze=False)[0]
    if not layers:
        _empty(axes[0], "no refresh records in the train logs")
    for ax, layer in zip(axes, layers, strict=False):
        for arm, c in curves.items():
            steps = sorted(c.get(layer, {}))
            for varieties, ls in ((run.varieties, "-"), ([run.standard], "--")):
                pts = [(s, run.ovl(c[layer][s], varieties)) for s in steps]
                pts = [p for p in pts if p[1] is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), ls=ls, marker="o", ms=3, color=run.colors[arm])
        ax.set(title=f"layer {layer}", xlabel="training step", ylabel="reference overlap")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=run.colors[a], label=a) for a in curves]
    handles += [
        Line2D([], [], color="grey", label="low-resource (mean)"),
        Line2D([], [], color="grey", ls="--", label=f"standard ({run.standard})"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5))
    fig.suptitle("Overlap with the frozen reference subspace U₀ during training (mean over seeds)")
    _save(fig, path)


def _plot_overlap_layer(run: _Run, path: Path) -> None:
    arms = run.trained()
    tabs = {(a, w): run.tables(a, w) for a in arms for w in ("initial", "final")}
    layers = sorted({la for t in tabs.values() for la in t}, key=_layer_key)
    fig = Figure(
        figsize=(max(7.0, 2.0 + len(layers) * (0.5 * len(arms) + 0.5)), 4.2), layout="constrained"
    )
    ax = fig.add_subplot()
    if not layers:
        _empty(ax, "no initial/final overlap tables")
    else:
        series = [
            (
                f"{a} {lab}",
                run.colors[a],
                alpha,
                [run.ovl(tabs[a, w].get(la, []), run.varieties) for la in layers],
                None,
            )
            for a in arms
            for w, lab, alpha in (("initial", "before", 0.35), ("final", "after", 1.0))
        ]
        _bars(ax, [f"layer {la}" for la in layers], series)
        ax.set(
            xlabel="probed layer",
            ylabel="reference overlap (low-resource mean)",
            title="Reference overlap before (light) and after (dark) fine-tuning",
        )
        handles = [Patch(color=run.colors[a], label=a) for a in arms]
        handles += [
            Patch(color="grey", alpha=0.35, label="before (initial)"),
            Patch(color="grey", label="after (final)"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)


# ---------------------------------------------------------------- markdown


def _corpora(refs: list[dict[str, Any]]) -> str:
    return ", ".join(f"`{c.get('path')}` ({c.get('split') or 'all'})" for c in refs) or "—"


def _setup(run: _Run) -> list[str]:
    cfg, data, res = run.config, run.data, run.res
    model, train, prov = cfg.get("model", {}), cfg.get("train", {}), res["provenance"]
    sizes = [f"{k} {data[k]}" for k in ("dev_rows", "probe_rows", "test_rows") if k in data]
    seeds = train.get("seeds", sorted({s for r in run.runs.values() for s in r}))
    low = ", ".join(f"`{v}`" for v in run.varieties) or "none"
    out = [
        f"- Model: `{model.get('spec', 'not recorded')}` ({model.get('dtype', '?')}), "
        f"sha256 `{prov.get('model_sha256') or 'not recorded'}`",
        f"- Varieties: standard `{run.standard}`; low-resource {low}; pivot "
        f"`{data.get('pivot') or '—'}`",
        f"- Training corpora: {_corpora(data.get('corpora', []))}; "
        f"test corpora: {_corpora(data.get('test_corpora', []))}",
        f"- Split sizes: {', '.join(sizes) or 'not recorded'}; max train examples "
        f"{data.get('max_train_examples') or 'all'}",
        f"- Training: {train.get('steps', '?')} steps × batch {train.get('batch_size', '?')}, "
        f"lr {train.get('lr', '?')}, seeds {seeds}",
        *([f"- Note: {data['note']}"] if data.get("note") else []),
    ]
    rows = [[f"`{d}`", v["kind"], str(v["n"])] for d, v in res["directions"].items()]
    out += ["", "Test directions:", ""]
    out.append(_table(["direction", "kind", "n sentences"], rows) if rows else "None recorded.")
    arm_rows = []
    for arm in run.arms:
        s = {**cfg.get("decoupler", {}), **cfg.get("arms", {}).get(arm, {})}
        lam = _mean([r.get("lambda") for r in run.runs.get(arm, {}).values()])
        lam = lam if lam is not None else (s.get("lam") if s.get("penalize", True) else 0.0)
        keys = ("estimator", "rank", "form", "layers", "penalize")
        cols = [f"{lam:g}" if lam is not None else "—", *(str(s.get(k, "—")) for k in keys)]
        if run.kind(arm) == "erase":  # form column: the strength; penalised: what is erased
            alpha, on = s.get("erase_alpha", 1.0), s.get("erase_on") or "base"
            cols = ["—", *(str(s.get(k, "—")) for k in keys[:2]), f"erase α={alpha:g}"]
            cols += [str(s.get("layers", "—")), f"no (erases on {on})"]
        arm_rows.append([arm, run.kind(arm), *(cols if run.kind(arm) in ("train", "erase")
                                               else ["—"] * 6)])  # fmt: skip
    head = ["arm", "kind", "λ", "estimator", "rank", "form", "layers", "penalised"]
    out += ["", "Arms:", "", _table(head, arm_rows), "", "Metric signatures:", "", "```"]
    out += [*(f"{k}: {v}" for k, v in res["signatures"].items()), "```", ""]
    vid = {k: v for k, v in (res.get("variety_identifier") or {}).items() if _scalar(v)}
    vid_txt = ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in vid.items()
    )
    boot = ", ".join(f"{k} {v}" for k, v in (res.get("bootstrap") or {}).items())
    decoding = res.get("decoding")
    how = ("not recorded" if decoding is None else "exact (no approximation)" if decoding["exact"]
           else "APPROXIMATE (" + ", ".join(decoding["approximations"]) + ")")  # fmt: skip
    return [*out, f"- Variety identifier: {vid_txt or 'not recorded'}",
            f"- Paired bootstrap: {boot or 'not recorded'}", f"- Decoding: {how}"]  # fmt: skip


def _scalar(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool)) or v is None


def _results(run: _Run, captions: list[str]) -> list[str]:
    out = []
    for metric, scale in (("chrf++", 1), ("bleu", 1), ("target_variety_rate", 100)):
        rows = []
        for arm in run.arms:
            cells = [run.stat(arm, d, metric) for d in run.dirs]
            if any(cells):
                txt = [
                    "—"
                    if c is None
                    else f"{c[0] * scale:.1f}" + (f" ± {c[1] * scale:.1f}" if c[2] > 1 else "")
                    for c in cells
                ]
                rows.append([arm, str(max(c[2] for c in cells if c)), *txt])
        head = ["arm", "seeds", *(f"`{d}`" for d in run.dirs)]
        out += [f"### {NAMES[metric]}, mean ± sd over seeds", ""]
        out += [_table(head, rows) if rows else "No scores in results.json.", ""]
    return [
        *out,
        "![chrF++ by direction](plots/chrf_by_direction.png)",
        "",
        f"*chrF++ per direction and arm, mean over seeds; error bars: {captions[0]}.*",
        "",
        "![target-variety rate](plots/target_rate.png)",
        "",
        "*Share of outputs the variety identifier assigns to the target variety, mean over "
        f"seeds; error bars: {captions[1]}.*",
    ]


def _sentence(arm: str, d: dict[str, Any] | None, what: str = "low-resource directions") -> str:
    if d is None:
        return f"{arm} vs standard: no mean over {what} in results.json."
    p, (lo, hi) = d["p_value"], d["ci95"]
    verdict = "significant" if p < ALPHA else "not significant"
    return (
        f"{arm} vs standard: mean over {what} {_signed(d['delta'])} chrF++ "
        f"(95% CI {_signed(lo)} … {_signed(hi)}, p {'' if p < 0.001 else '= '}{_p(p)}): "
        f"{verdict} at {ALPHA}."
    )


def _significance(run: _Run) -> list[str]:
    deltas = run.res["deltas"]
    arms = [a for a in run.arms if deltas.get(a)]
    if not arms:
        return ["No deltas against the standard arm in results.json."]
    out = [f"- {_sentence(a, deltas[a].get(MEAN_LR, {}).get('chrf++'))}" for a in arms]
    out += [
        f"- {_sentence(a, deltas[a][MEAN_STD]['chrf++'], 'directions into the standard')}"
        for a in arms
        if MEAN_STD in deltas[a]
    ]
    rows = []
    for arm in arms:
        for g in (g for g in [*run.dirs, *MEANS] if g in deltas[arm]):
            cells = [arm, MEANS.get(g, f"`{g}`")]
            for x in (deltas[arm][g]["chrf++"], deltas[arm][g]["bleu"]):
                lo, hi = x["ci95"]
                star = "*" if x["p_value"] < ALPHA else ""
                cells += [
                    _signed(x["delta"]) + star,
                    f"{_signed(lo)} … {_signed(hi)}",
                    _p(x["p_value"]),
                ]
            rows.append(cells)
    head = ["arm", "direction", "Δ chrF++", "95% CI", "p", "Δ BLEU", "95% CI", "p"]
    return [*out, "", _table(head, rows), "", f"\\* p < {ALPHA} (paired bootstrap).", "",
            "![deltas](plots/deltas.png)", "",
            "*Difference to the standard arm per direction; whiskers: paired bootstrap 95% CI; "
            f"filled markers and stars: p < {ALPHA}.*"]  # fmt: skip


def _overlap(run: _Run) -> list[str]:
    out = [
        "Overlap = Σ‖U₀ᵀ(h−c)‖² / Σ‖h−c‖² over a variety's held-out probe token states h: "
        "the share of their energy around the centre c inside the frozen reference subspace "
        "U₀ fitted on the base model (vardecouple's docs/method.md); varieties averaged, "
        "then seeds. "
        "Before = initial (step 0), after = final.",
        "",
        "![overlap by step](plots/overlap_by_step.png)",
        "",
        "![overlap by layer](plots/overlap_by_layer.png)",
        "",
    ]
    rows, low, std = [], run.varieties, [run.standard]
    for arm in run.trained():
        ini, fin = run.tables(arm, "initial"), run.tables(arm, "final")
        for la in sorted(set(ini) | set(fin), key=_layer_key):
            i, f = ini.get(la, []), fin.get(la, [])
            vals = [run.ovl(i, low), run.ovl(f, low), run.ovl(i, std), run.ovl(f, std)]
            rows.append([arm, la, *map(_fmt, vals), _fmt(run.ovl(f, low, "own"))])
    erased = _erasure_rows(run)
    if not rows and not erased:
        return [*out, "No overlap tables in results.json (no trained arm recorded any)."]
    head = ["arm", "layer", "low-res before", "low-res after", "standard before"]
    if rows:
        out.append(_table([*head, "standard after", "low-res after, own U"], rows))
    if erased:
        out += ["", "Inference-time erasure: overlap of held-out probe states with a subspace "
                "fitted (same estimator and rank) on the unerased model at each layer from the "
                "erased one up, read without and with erasure (varieties averaged, then seeds). "
                "At the erased layer α = 1 makes it zero by construction; the later layers show "
                "what the network rebuilds.", ""]  # fmt: skip
        head = ["arm", "layer", "low-res plain", "low-res erased", "standard plain"]
        out.append(_table([*head, "standard erased"], erased))
    return out


def _erasure_rows(run: _Run) -> list[list[str]]:
    """Rows (arm, layer, overlaps plain/erased for low-resource and standard) of erase arms."""
    rows = []
    for arm, seeds in run.runs.items():
        tables = [r["erasure"]["later_overlap"] for r in seeds.values() if r.get("erasure")]
        for la in sorted({la for t in tables for la in t}, key=_layer_key):
            vals = []
            for group in (run.varieties, [run.standard]):
                for which in ("plain", "erased"):
                    per_seed = [
                        _mean([t[la][v][which] for v in group if v in t.get(la, {})])
                        for t in tables
                    ]
                    vals.append(_mean(per_seed))
            # overlaps with a discriminative direction can be ~1e-5: significant digits
            rows.append([arm, la, *("—" if v is None else f"{v:.3g}" for v in vals)])
    return rows


PROBE_PLOTS = ("overlap", "cka", "angle_mean", "online_compression")


def _probing(run: _Run) -> list[str]:
    """The ``[probe]`` results: headline plots and the per-model numbers at each layer."""
    rel = run.res.get("probe")
    if not rel:
        return ["Not requested (add a `[probe]` table to the config to probe every arm)."]
    path = run.dir / rel
    if not path.is_file():
        return [f"`{rel}` is missing."]
    data = json.loads(path.read_text(encoding="utf-8"))
    folder = Path(rel).parent
    out = [
        f"`vardecouple probe` of the base model and each trained arm (seed "
        f"{run.config.get('train', {}).get('seeds', [0])[0]}) on {data['rows']} held-out "
        f"rows per variety, rank {data['rank']}; `{rel}` has every metric (defined in "
        "`vardecouple.probing`), `probe/plots/` one plot per metric.",
        "",
    ]
    out += [f"![{m}]({folder}/plots/probe_{m}.png)" for m in PROBE_PLOTS] + [""]
    rows = []
    for model, layers in data["results"].items():
        for la, entry in sorted(layers.items(), key=lambda kv: int(kv[0])):
            v = [entry[c] for c in data["varieties"] if c in entry]
            vals = [_mean([e.get(m) for e in v]) for m in ("overlap", "cka", "angle_mean")]
            vals.append(entry.get("all", {}).get("online_compression"))
            rows.append([model, la, *map(_fmt, vals)])
    head = ["model", "layer", "overlap", "CKA", "mean angle °", "online compression (all)"]
    return [*out, "Varieties averaged:", "", _table(head, rows)]


def _provenance(run: _Run, command: str | None) -> list[str]:
    prov = run.res["provenance"]
    keys = "vardecouple torch transformers peft sacrebleu git_sha machine started finished"
    rows = [[k, f"`{prov[k]}`"] for k in keys.split() if prov.get(k) is not None]
    rows += [[k, f"`{v}`"] for k, v in (prov.get("versions") or {}).items()]
    if "wall_seconds" in prov:
        rows.append(
            ["wall time", f"{prov['wall_seconds']:.0f} s ({prov['wall_seconds'] / 3600:.2f} h)"]
        )
    runs = [
        [
            a,
            s,
            str(r["steps"]),
            f"{r['train_seconds']:.0f}",
            f"{r['eval_seconds']:.0f}",
            r["checkpoint"],
        ]
        for a, seeds in run.runs.items()
        for s, r in seeds.items()
    ]
    out = [_table(["item", "value"], rows), "", "Command:", "", "```", prov["command"], "```", ""]
    head = ["arm", "seed", "steps", "train s", "eval s", "checkpoint (step, why)"]
    out.append(_table(head, runs) if runs else "No runs in results.json.")
    return out + ([] if command is None else ["", f"Report written by `{command}`."])


def write_report(run_dir: Path, command: str | None = None) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/plots/*.png`` from ``results.json``.

    Returns the report's path; ``command`` (the one making the report) is recorded in it.
    Raises ValueError naming the file when results.json is missing or invalid.
    """
    run_dir = Path(run_dir)
    run = _Run(run_dir, load_results(run_dir))
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    title = "Outputs identified as the target variety (mean over seeds)"
    captions = [
        _plot_scores(run, plots / PLOTS[0], "chrf++", "chrF++ by direction (mean over seeds)"),
        _plot_scores(run, plots / PLOTS[4], "target_variety_rate", title),
    ]
    _plot_deltas(run, plots / PLOTS[1])
    _plot_overlap_step(run, plots / PLOTS[2])
    _plot_overlap_layer(run, plots / PLOTS[3])
    bodies = [_setup(run), _results(run, captions), _significance(run), _overlap(run),
              _probing(run)]  # fmt: skip
    lines = [
        f"# vardecouple report: {run.config.get('name', 'experiment')}",
        "",
        f"Derived from `results.json` (schema version {run.res['schema_version']}); "
        "regenerate it with `vardecouple report`.",
    ]
    for name, body in zip(SECTIONS, [*bodies, _provenance(run, command)], strict=True):
        lines += ["", f"## {name}", "", *body]
    path = run_dir / "report.md"
    write_atomic(path, lambda t: Path(t).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return path
