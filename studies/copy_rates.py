"""Source-copy rates of a run folder whose arm × seed results predate ``source_copy_rate``
in ``eval.json`` (the sweep's): the share of hypotheses identical to their source, and
chrF++ of the hypotheses against the sources (100 = the input handed back).

    python studies/copy_rates.py examples/study-arabic-sweep.toml studies/arabic-sweep

The sources are rebuilt from the config and the corpora (a committed run keeps no copy).
"""

from __future__ import annotations

import sys
from pathlib import Path

import sacrebleu

from vardecouple.evaluate.scoring import source_copy_rate, test_sets
from vardecouple.experiment.arms import prepare_data
from vardecouple.experiment.config import load_config


def main(config_path: str, run_dir: str) -> None:
    run = Path(run_dir)
    config = load_config(config_path).with_recorded_defaults(run)
    tests = test_sets(prepare_data(config), None, config.eval_directions())
    print("arm seed  copied  chrF++(hypotheses, sources)")
    for folder in sorted(run.glob("runs/*/seed-*")):
        if not (folder / "eval.json").is_file():
            continue
        copied, chrf = [], []
        for direction, rows in tests.items():
            text = (folder / "hypotheses" / f"{direction}.txt").read_text(encoding="utf-8")
            hyps = text.split("\n")[:-1]
            sources = [ex.src_text for ex in rows][: len(hyps)]
            copied.append(source_copy_rate(hyps, sources))
            chrf.append(sacrebleu.CHRF(word_order=2).corpus_score(hyps, [sources]).score)
        arm, seed = folder.parent.name, folder.name.removeprefix("seed-")
        mean = sum(copied) / len(copied)
        print(f"{arm} {seed}  {mean:.1%}  {sum(chrf) / len(chrf):.1f}")


if __name__ == "__main__":
    main(*sys.argv[1:])
