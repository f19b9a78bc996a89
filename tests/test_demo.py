"""`vardecouple demo`: the whole study end to end, its report complete.

By default the `--quick` demo runs here (about a minute). CI also runs the full
`make demo` and then points ``VARDECOUPLE_DEMO_DIR`` at it, so these checks read
the real demo's output.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vardecouple.cli import main
from vardecouple.experiment.results import validate_results
from vardecouple.report import PLOTS, SECTIONS
from vardecouple.report.data import signed

pytestmark = pytest.mark.slow


#: the demo's own arguments: CI's `make demo` uses the defaults, the test the quick one
GIVEN = os.environ.get("VARDECOUPLE_DEMO_DIR")
ARGS = [] if GIVEN else ["--quick"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    if GIVEN:
        return Path(GIVEN)
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), *ARGS]) == 0
    return out


def test_demo_report_has_every_section_and_plot(demo_dir: Path) -> None:
    run = demo_dir / "run"
    results = json.loads((run / "results.json").read_text())
    validate_results(results)
    assert {"copy", "base", "standard", "decoupled", "random"} <= set(results["runs"])
    text = (run / "report.md").read_text()
    for section in SECTIONS:
        assert f"## {section}" in text
    # the plain statement, either way, and the one the p-values in results.json make
    lines = text.splitlines()
    stated = 0
    for arm, per in results["deltas"].items():
        for mean, what in (("mean_low_resource", "low-resource directions"),
                           ("mean_standard", "directions into the standard")):  # fmt: skip
            if "chrf++" not in per.get(mean, {}):
                continue
            p = per[mean]["chrf++"]["p_value"]
            verdict = "significant" if p < 0.05 else "not significant"
            # with several seeds the sentence ends on each seed's own delta
            seeds = per[mean]["chrf++"].get("per_seed", {})
            each = ", ".join(f"{s}: {signed(x)}" for s, x in seeds.items())
            tail = f"; seed by seed {each}." if len(seeds) > 1 else "."
            said = [x for x in lines if x.startswith(f"- {arm} vs standard: mean over {what} ")]
            assert len(said) == 1, (arm, mean, said)
            assert said[0].endswith(f"): {verdict} at 0.05{tail}"), (arm, mean, p, said[0])
            stated += 1
    assert {"decoupled", "random"} <= {
        a for a, per in results["deltas"].items() if "chrf++" in per.get("mean_low_resource", {})
    }
    assert stated >= 2
    for plot in PLOTS:
        assert (run / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_pretrained_model_learned_the_mix(demo_dir: Path) -> None:
    info = json.loads((demo_dir / "model" / "pretrain.json").read_text())
    assert info["last_loss"] < 0.6 * info["first_loss"]


def test_the_variety_identifier_tells_the_family_apart(demo_dir: Path) -> None:
    results = json.loads((demo_dir / "run" / "results.json").read_text())
    assert results["variety_identifier"]["accuracy"] > 0.9
    copy = results["runs"]["copy"]["0"]["metrics"]
    low = [d for d, v in results["directions"].items() if v["kind"] == "low-resource"]
    # copying the standard source is recognised as the standard, not the target
    assert all(copy[d]["target_variety_rate"] < 0.1 for d in low)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_second_demo_in_the_same_folder_says_finished_and_keeps_it(
    demo_dir: Path, capsys
) -> None:
    before = _tree(demo_dir)
    assert main(["demo", "--out", str(demo_dir), *ARGS]) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and str(demo_dir / "run" / "report.md") in out
    assert _tree(demo_dir) == before


def test_the_report_stands_on_its_own(demo_dir: Path) -> None:
    """The report points to files of this repository only (no design note beside it)."""
    text = (demo_dir / "run" / "report.md").read_text()
    assert "DESIGN" not in text and "§" not in text


def test_demo_on_a_real_line_aligned_corpus(tmp_path: Path, corpora: Path) -> None:
    corpus = corpora / "flores200" / "dev"
    args = ["demo", "--out", str(tmp_path), "--quick", "--corpus", str(corpus)]
    args += ["--standard", "arb_Arab", "--varieties", "arz_Arab", "--model", "tiny-random"]
    assert main(args) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["directions"]) == {"arb_Arab->arz_Arab", "arz_Arab->arb_Arab"}
    assert results["config"]["decoupler"]["layers"] is None  # a real model: its middle layer
    assert not (tmp_path / "model").exists()  # no pre-training on a real corpus
