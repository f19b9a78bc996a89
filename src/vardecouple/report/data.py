"""A finished run's results as the report reads them: results.json validated against
the shipped JSON Schema, its scores per arm, direction and seed, and number formats."""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np

__all__ = [
    "ALPHA",
    "MEANS",
    "MEAN_LR",
    "MEAN_STD",
    "NAMES",
    "RESULT_TABLES",
    "RunView",
    "Tables",
    "corpus_list",
    "fmt",
    "fmt_p",
    "is_scalar",
    "layer_key",
    "load_results",
    "md_table",
    "mean_of",
    "schema_problem",
    "signed",
]
ALPHA = 0.05
MEAN_LR = "mean_low_resource"
MEAN_STD = "mean_standard"  # the trade-off: directions into the standard variety
MEANS = {MEAN_LR: "mean over low-resource", MEAN_STD: "mean into the standard"}
NAMES = {
    "chrf++": "chrF++",
    "bleu": "BLEU",
    "target_variety_rate": "Target-variety rate (%)",
    "source_copy_rate": "Source-copy rate (%: hypotheses identical to their source)",
}
#: the score tables of the report's Results section: metric, scale (rates in %)
RESULT_TABLES = (
    ("chrf++", 1),
    ("bleu", 1),
    ("target_variety_rate", 100),
    ("source_copy_rate", 100),
)
Tables = list[dict[str, Any]]  # one overlap table {VARIETY: {own, reference}} per seed


def load_results(run_dir: Path, name: str = "results.json") -> dict[str, Any]:
    """``run_dir/NAME`` (``results.json``, or a run's ``interim.json``), validated;
    ValueError (one line: the file, the first problem)."""
    path = Path(run_dir) / name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        started = (Path(run_dir) / "config.json").is_file()  # a run not finished yet
        hint = "; `vardecouple run CONFIG --out RUN_DIR --interim` reports what it has so far"
        raise ValueError(f"report: {path}: no such file{hint if started else ''}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"report: {path}: not valid JSON: {exc}") from None
    problem = schema_problem(data)
    if problem is not None:
        where, msg = problem
        msg = " ".join(msg.split())
        msg = msg if len(msg) <= 200 else msg[:197] + "..."
        raise ValueError(f"report: {path}: invalid results at {where or 'top level'}: {msg}")
    return data


def schema_problem(results: Any) -> tuple[str, str] | None:
    """The most telling violation of the shipped JSON Schema (``schemas/results.schema.json``)
    by ``results``, as ``(path, message)`` (path ``""`` at the top level), or None."""
    schema = json.loads((files("vardecouple") / "schemas" / "results.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(results))
    if error is None:
        return None
    return "/".join(str(p) for p in error.absolute_path), error.message


def signed(x: float, digits: int = 2) -> str:
    s = f"{x:+.{digits}f}"
    return "±" + s[1:] if float(s) == 0 else s.replace("-", "−")


def fmt_p(p: float) -> str:
    """``0.270`` / ``< 0.001``, never rounded across :data:`ALPHA`."""
    s = f"{p:.3f}"
    s = s if (float(s) < ALPHA) == (p < ALPHA) else f"{p:.5f}"
    return "< 0.001" if p < 0.001 else s


def mean_of(xs: list[Any]) -> float | None:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else None


def fmt(x: float | None, digits: int = 3, sig: bool = False) -> str:
    """``x`` with ``digits`` decimals, or significant digits (``sig``); "—" for None."""
    return "—" if x is None else f"{x:.{digits}{'g' if sig else 'f'}}"


def layer_key(layer: str) -> tuple[bool, int, str]:
    return (not layer.isdigit(), int(layer) if layer.isdigit() else 0, layer)


def corpus_list(refs: list[dict[str, Any]]) -> str:
    """A config's list of corpora as `` `path` (split)``, comma-separated."""
    return ", ".join(f"`{c.get('path')}` ({c.get('split') or 'all'})" for c in refs) or "—"


def is_scalar(v: Any) -> bool:
    """A value a report prints as it is (not a table or a list)."""
    return isinstance(v, (int, float, str, bool)) or v is None


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [[str(c).replace("|", "\\|") for c in r] for r in rows]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


class RunView:
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
        # each seed fits its own U₀ (different starting overlaps and penalties): while
        # trained arms have different seeds (an interim run), their training records are
        # averaged over the seeds all of them have, so that every arm starts from the same U₀
        sets = [set(self.runs[a]) for a in self.trained()]
        shared = set.intersection(*sets) if sets else set()
        uneven = shared and any(s != shared for s in sets)
        self.mechanism_seeds = sorted(shared, key=int) if uneven else None

    def over_seeds(self, short: bool = False) -> str:
        """How the training records are averaged over seeds, in words."""
        seeds = self.mechanism_seeds
        if seeds is None:
            return "mean over seeds"
        many = "s" if len(seeds) > 1 else ""
        said = f"mean over seed{many} {', '.join(seeds)}"
        if short:
            return f"{said}, which every arm has so far"
        return f"{said} (the seed{many} every trained arm has so far: each seed fits its own U₀)"

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
        return mean_of([mean_of([t[v][key] for v in varieties if v in t]) for t in tables])

    def trained(self) -> list[str]:
        return [
            a for a in self.arms if any(r.get("overlap") for r in self.runs.get(a, {}).values())
        ]

    def _seeds(self, arm: str) -> list[tuple[str, dict[str, Any]]]:
        """The arm's results whose training records are averaged (:attr:`mechanism_seeds`)."""
        keep = self.mechanism_seeds
        return [(s, r) for s, r in self.runs.get(arm, {}).items() if keep is None or s in keep]

    def tables(self, arm: str, which: str) -> dict[str, Tables]:
        out: dict[str, Tables] = {}
        for _, r in self._seeds(arm):
            for layer, table in (r.get("overlap") or {}).get(which, {}).items():
                out.setdefault(layer, []).append(table)
        return out

    def chance(self, arm: str) -> float | None:
        """k/d of the arm's reference subspace (the overlap of a random one), if recorded."""
        return mean_of(
            [(r.get("overlap") or {}).get("chance") for r in self.runs.get(arm, {}).values()]
        )

    def curves(self, arm: str, key: str = "overlap") -> dict[str, dict[int, Tables]]:
        """layer → step → the refreshes' ``key`` records (one per seed; overlap tables by
        default, or ``held_out_penalty``), from the train logs."""
        out: dict[str, dict[int, Tables]] = {}
        for seed, r in self._seeds(arm):
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
                    steps[rec["step"]] = rec.get(key) or {}  # resumed: the later record wins
            for step, layers in steps.items():
                for layer, table in layers.items():
                    out.setdefault(layer, {}).setdefault(step, []).append(table)
        return out


def derived_from(res: dict[str, Any], name: str) -> str:
    """The report's opening line: the record it is made from; for an interim one, what
    it lacks and how its comparisons differ from the final record's."""
    line = (f"Derived from `{name}` (schema version {res['schema_version']}); regenerate it "
            "with `vardecouple report`.")  # fmt: skip
    interim = res.get("interim")
    if interim is None:
        return line
    missing = interim["missing"]
    return (
        f"**Interim report** of a run in progress ({interim['finished']} of "
        f"{interim['planned']} arm × seed results), derived from `{name}` (schema version "
        f"{res['schema_version']}); `vardecouple run … --interim` refreshes it, and the run "
        "replaces it with the final report when it ends. "
        f"Missing: {', '.join(missing[:12])}{' …' if len(missing) > 12 else ''}. Two arms "
        "trained on the same seeds are compared on the seeds both have so far."
    )
