"""The report of a run: ``results.json`` → ``report.md`` and PNG plots in ``plots/``.

:func:`write_report` validates ``results.json`` against the shipped JSON Schema, then writes
every plot of :data:`PLOTS` (one without data says so on its canvas) and every section of
:data:`SECTIONS` (one without data says so). Files are written atomically (a temporary name
in the same folder, then ``os.replace``); the report is derived and safe to regenerate.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vardecouple.io import write_atomic
from vardecouple.report.data import (
    ALPHA,
    MEAN_LR,
    MEAN_STD,
    MEANS,
    NAMES,
    RESULT_TABLES,
    RunView,
    corpus_list,
    derived_from,
    fmt,
    fmt_p,
    is_scalar,
    layer_key,
    load_results,
    md_table,
    mean_of,
    signed,
)
from vardecouple.report.plots import (
    PLOTS,
    plot_deltas,
    plot_held_out_penalty,
    plot_overlap_layer,
    plot_overlap_step,
    plot_scores,
)

__all__ = ["PROBE_PLOTS", "SECTIONS", "write_report"]


SECTIONS = ("Setup", "Results", "Significance", "Overlap", "Probing", "Provenance")


# ---------------------------------------------------------------- markdown


def _setup(run: RunView) -> list[str]:
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
        f"- Training corpora: {corpus_list(data.get('corpora', []))}; "
        f"test corpora: {corpus_list(data.get('test_corpora', []))}",
        f"- Split sizes: {', '.join(sizes) or 'not recorded'}; max train examples "
        f"{data.get('max_train_examples') or 'all'}",
        f"- Training: {train.get('steps', '?')} steps × batch {train.get('batch_size', '?')}, "
        f"lr {train.get('lr', '?')}, seeds {seeds}",
        *([f"- Note: {data['note']}"] if data.get("note") else []),
    ]
    rows = [[f"`{d}`", v["kind"], str(v["n"])] for d, v in res["directions"].items()]
    out += ["", "Test directions:", ""]
    out.append(md_table(["direction", "kind", "n sentences"], rows) if rows else "None recorded.")
    arm_rows = []
    for arm in run.arms:
        s = {**cfg.get("decoupler", {}), **cfg.get("arms", {}).get(arm, {})}
        lam = mean_of([r.get("lambda") for r in run.runs.get(arm, {}).values()])
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
    out += ["", "Arms:", "", md_table(head, arm_rows), "", "Metric signatures:", "", "```"]
    out += [*(f"{k}: {v}" for k, v in res["signatures"].items()), "```", ""]
    vid = {k: v for k, v in (res.get("variety_identifier") or {}).items() if is_scalar(v)}
    vid_txt = ", ".join(
        f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in vid.items()
    )
    boot = ", ".join(f"{k} {v}" for k, v in (res.get("bootstrap") or {}).items())
    decoding = res.get("decoding")
    how = ("not recorded" if decoding is None else "exact (no approximation)" if decoding["exact"]
           else "APPROXIMATE (" + ", ".join(decoding["approximations"]) + ")")  # fmt: skip
    return [*out, f"- Variety identifier: {vid_txt or 'not recorded'}",
            f"- Paired bootstrap: {boot or 'not recorded'}", f"- Decoding: {how}"]  # fmt: skip


def _results(run: RunView, captions: list[str]) -> list[str]:
    fewer = sorted({
        f"{arm} ({m['n']} per direction)"
        for arm, seeds in run.res["runs"].items()
        for r in seeds.values()
        for d, m in r["metrics"].items()
        if m.get("n", run.res["directions"][d]["n"]) < run.res["directions"][d]["n"]
    })  # fmt: skip
    out = [f"Scored on fewer test rows (the first ones): {', '.join(fewer)}.", ""] if fewer else []
    for metric, scale in RESULT_TABLES:
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
        if not rows and metric == "source_copy_rate":
            continue  # results written before the copy rate existed
        head = ["arm", "seeds", *(f"`{d}`" for d in run.dirs)]
        out += [f"### {NAMES[metric]}, mean ± sd over seeds", ""]
        out += [md_table(head, rows) if rows else "No scores in results.json.", ""]
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


def _sentence(
    arm: str, d: dict[str, Any] | None, what: str = "low-resource directions", vs: str = "standard"
) -> str:
    if d is None:
        return f"{arm} vs {vs}: no mean over {what} in results.json."
    p, (lo, hi) = d["p_value"], d["ci95"]
    verdict = "significant" if p < ALPHA else "not significant"
    seeds = d.get("per_seed", {})
    each = ", ".join(f"{s}: {signed(x)}" for s, x in seeds.items())
    return (
        f"{arm} vs {vs}: mean over {what} {signed(d['delta'])} chrF++ "
        f"(95% CI {signed(lo)} … {signed(hi)}, p {'' if p < 0.001 else '= '}{fmt_p(p)}): "
        f"{verdict} at {ALPHA}" + (f"; seed by seed {each}." if len(seeds) > 1 else ".")
    )


def _significance(run: RunView) -> list[str]:
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
    # magnitude-matched pairs: the arm matched to minus the matched arm (same penalty at step 0)
    matched = {f"{m['of']} − {arm}": m["deltas"]
               for arm, m in run.res.get("matched_deltas", {}).items()}  # fmt: skip
    for pair, d in matched.items():
        first, second = pair.split(" − ")
        low = _sentence(first, d.get(MEAN_LR, {}).get("chrf++"), vs=second)
        out.append(f"- {low} (the same penalty at step 0: the probe's subspace against another)")
        if MEAN_STD in d:
            into = _sentence(first, d[MEAN_STD]["chrf++"], "directions into the standard", second)
            out.append(f"- {into}")
    rows = []
    for arm, by_group in [*((a, deltas[a]) for a in arms), *matched.items()]:
        for g in (g for g in [*run.dirs, *MEANS] if g in by_group):
            cells = [arm, MEANS.get(g, f"`{g}`")]
            for x in (by_group[g]["chrf++"], by_group[g]["bleu"]):
                lo, hi = x["ci95"]
                star = "*" if x["p_value"] < ALPHA else ""
                cells += [
                    signed(x["delta"]) + star,
                    f"{signed(lo)} … {signed(hi)}",
                    fmt_p(x["p_value"]),
                ]
            rows.append(cells)
    head = ["arm (− standard, or the pair)", "direction", "Δ chrF++", "95% CI", "p", "Δ BLEU",
            "95% CI", "p"]  # fmt: skip
    return [*out, "", md_table(head, rows), "", f"\\* p < {ALPHA} (paired bootstrap).", "",
            "![deltas](plots/deltas.png)", "",
            "*Difference to the standard arm per direction; whiskers: paired bootstrap 95% CI; "
            f"filled markers and stars: p < {ALPHA}.*"]  # fmt: skip


def _overlap(run: RunView) -> list[str]:
    out = [
        "Overlap = Σ‖U₀ᵀ(h−c)‖² / Σ‖h−c‖² over a variety's held-out probe token states h: "
        "the share of their energy around the centre c inside the frozen reference subspace "
        "U₀ fitted on the base model (vardecouple's docs/method.md); varieties averaged, "
        f"then the {run.over_seeds()}. "
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
        chance = run.chance(arm)
        for la in sorted(set(ini) | set(fin), key=layer_key):
            i, f = ini.get(la, []), fin.get(la, [])
            vals = [run.ovl(i, low), run.ovl(f, low), run.ovl(i, std), run.ovl(f, std)]
            ratios = [None if v is None or not chance else v / chance for v in (vals[1], vals[3])]
            rows.append([arm, la, *(fmt(v, sig=True) for v in [*vals, run.ovl(f, low, "own")]),
                         *(fmt(r, 2, sig=True) for r in ratios)])  # fmt: skip
    erased = _erasure_rows(run)
    if not rows and not erased:
        return [*out, "No overlap tables in results.json (no trained arm recorded any)."]
    head = ["arm", "layer", "low-res before", "low-res after", "standard before"]
    if rows:
        head += ["standard after", "low-res after, own U", "low-res after ÷ chance"]
        out.append(md_table([*head, "standard after ÷ chance"], rows))
        out += [
            "",
            "Chance = k/d (reference rank over hidden size): the share of isotropic variance a "
            "random k-dimensional subspace holds. A ratio near 1 means U₀ holds no more of the "
            "states' centred variance than a random direction would.",
            "",
        ]
    out += _penalty_rows(run)
    if erased:
        out += ["", "Inference-time erasure: overlap of held-out probe states with a subspace "
                "fitted (same estimator and rank) on the unerased model at each layer from the "
                "erased one up, read without and with erasure (varieties averaged, then seeds). "
                "At the erased layer α = 1 makes it zero by construction; the later layers show "
                "what the network rebuilds.", ""]  # fmt: skip
        head = ["arm", "layer", "low-res plain", "low-res erased", "standard plain"]
        out.append(md_table([*head, "standard erased"], erased))
    return out


def _penalty_rows(run: RunView) -> list[str]:
    """What the penalty minimises, on the held-out probe tokens: its value under U₀ at the
    first and last refresh, and under the U training pushed against before the last one."""
    rows = []
    for arm in run.trained():
        for layer, steps in run.curves(arm, "held_out_penalty").items():
            if not steps:
                continue
            first, last = steps[min(steps)], steps[max(steps)]
            ref0, ref1 = (mean_of([t.get("reference") for t in x]) for x in (first, last))
            change = None if not ref0 or ref1 is None else 100 * (ref1 / ref0 - 1)
            rows.append([arm, layer, fmt(ref0), fmt(ref1),
                         "—" if change is None else f"{change:+.1f}%",
                         fmt(mean_of([t.get("previous") for t in last])),
                         fmt(mean_of([t.get("own") for t in last]))])  # fmt: skip
    plot = ["![held-out penalty by step](plots/held_out_penalty.png)", ""]
    if not rows:
        return ["No held-out penalty in the train logs (logs written before it was recorded).",
                "", *plot]  # fmt: skip
    head = ["arm", "layer", "U₀ at step 0", "U₀ at the end", "change", "last U pushed against",
            "new U at the end"]  # fmt: skip
    return ["What the penalty minimises: its mean over the held-out probe tokens (the "
            "configured form, e.g. ‖Uᵀh‖), under the frozen U₀, under the U training pushed "
            f"against until the last refresh, and under the U fitted then ({run.over_seeds()}).",
            "", md_table(head, rows), "", *plot]  # fmt: skip


def _erasure_rows(run: RunView) -> list[list[str]]:
    """Rows (arm, layer, overlaps plain/erased for low-resource and standard) of erase arms."""
    rows = []
    for arm, seeds in run.runs.items():
        tables = [r["erasure"]["later_overlap"] for r in seeds.values() if r.get("erasure")]
        for la in sorted({la for t in tables for la in t}, key=layer_key):
            vals = []
            for group in (run.varieties, [run.standard]):
                for which in ("plain", "erased"):
                    per_seed = [
                        mean_of([t[la][v][which] for v in group if v in t.get(la, {})])
                        for t in tables
                    ]
                    vals.append(mean_of(per_seed))
            # overlaps with a discriminative direction can be ~1e-5: significant digits
            rows.append([arm, la, *("—" if v is None else f"{v:.3g}" for v in vals)])
    return rows


PROBE_PLOTS = ("overlap", "cka", "angle_mean", "online_compression")
#: the probing table's per-variety columns: metric in ``probe.json``, heading
PROBE_COLUMNS = (("overlap", "overlap"), ("cka", "CKA"), ("angle_mean", "mean angle °"),
                 ("online_compression", "online compression"))  # fmt: skip


def _probing(run: RunView) -> list[str]:
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
        f"`vardecouple.analysis.probing`), `{folder}/plots/` one plot per metric.",
        "",
    ]
    out += [f"![{m}]({folder}/plots/probe_{m}.png)" for m in PROBE_PLOTS] + [""]
    out += [f"Not probed: {arm}: {why}." for arm, why in data.get("not_probed", {}).items()]
    rows = []
    for model, layers in data["results"].items():
        for la, entry in sorted(layers.items(), key=lambda kv: int(kv[0])):
            v = [entry[c] for c in data["varieties"] if c in entry]
            vals = [mean_of([e.get(m) for e in v]) for m, _ in PROBE_COLUMNS]
            vals.append(entry.get("all", {}).get("online_compression"))
            rows.append([model, la, *map(fmt, vals)])
    head = ["model", "layer", *(h for _, h in PROBE_COLUMNS), "online compression (all)"]
    note = ("The standard against each variety, averaged over the varieties (online "
            "compression 1: no better than the class frequencies); `(all)`: one probe "
            "telling every variety apart:")  # fmt: skip
    return [*out, note, "", md_table(head, rows)]


def _provenance(run: RunView, command: str | None) -> list[str]:
    prov = run.res["provenance"]
    keys = "vardecouple torch transformers peft sacrebleu git_sha machine started finished"
    rows = [[k, f"`{prov[k]}`"] for k in keys.split() if prov.get(k) is not None]
    rows += [[k, f"`{v}`"] for k, v in (prov.get("versions") or {}).items()]
    units = [[a, s, r] for a, seeds in run.runs.items() for s, r in seeds.items()]
    summed = sum(r["train_seconds"] + r["eval_seconds"] for _, _, r in units)
    for label, sec in [
        ("wall time of the process that finished it", prov.get("wall_seconds")),
        ("training and decoding, summed over the arm × seed results", summed),
    ]:
        if sec is not None:  # a resumed run's wall time is its last process's only
            rows.append([label, f"{sec:.0f} s ({sec / 3600:.2f} h)"])
    runs = [
        [a, s, str(r["steps"]), f"{r['train_seconds']:.0f}", f"{r['eval_seconds']:.0f}",
         r["checkpoint"]]
        for a, s, r in units
    ]  # fmt: skip
    out = [md_table(["item", "value"], rows), "", "Command:", "", "```", prov["command"], "```", ""]
    head = ["arm", "seed", "steps", "train s", "eval s", "checkpoint (step, why)"]
    out.append(md_table(head, runs) if runs else "No runs in results.json.")
    return out + ([] if command is None else ["", f"Report written by `{command}`."])


def write_report(
    run_dir: Path, command: str | None = None, results_file: str = "results.json"
) -> Path:
    """Write ``run_dir/report.md`` and ``run_dir/plots/*.png`` from ``results_file``
    (``results.json``, or ``interim.json`` while the run goes on).

    Returns the report's path; ``command`` (the one making the report) is recorded in it.
    Raises ValueError naming the file when it is missing or invalid.
    """
    run_dir = Path(run_dir)
    run = RunView(run_dir, load_results(run_dir, results_file))
    plots = run_dir / "plots"
    plots.mkdir(exist_ok=True)
    title = "Outputs identified as the target variety (mean over seeds)"
    captions = [
        plot_scores(run, plots / PLOTS[0], "chrf++", "chrF++ by direction (mean over seeds)"),
        plot_scores(run, plots / PLOTS[4], "target_variety_rate", title),
    ]
    plot_deltas(run, plots / PLOTS[1])
    plot_overlap_step(run, plots / PLOTS[2])
    plot_overlap_layer(run, plots / PLOTS[3])
    plot_held_out_penalty(run, plots / PLOTS[5])
    bodies = [_setup(run), _results(run, captions), _significance(run), _overlap(run),
              _probing(run)]  # fmt: skip
    name = run.config.get("name", "experiment")
    lines = [f"# vardecouple report: {name}", "", derived_from(run.res, results_file)]
    for name, body in zip(SECTIONS, [*bodies, _provenance(run, command)], strict=True):
        lines += ["", f"## {name}", "", *body]
    path = run_dir / "report.md"
    write_atomic(path, lambda t: Path(t).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return path
