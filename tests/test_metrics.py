"""Metrics and paired bootstrap: known answers, and agreement with sacrebleu."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sacrebleu.metrics import BLEU, CHRF
from sacrebleu.significance import PairedTest, estimate_ci

from conftest import CORPORA
from vardecouple.data import load_corpus
from vardecouple.evaluate.metrics import (
    METRICS,
    BootstrapResult,
    bootstrap_ci,
    corpus_scores,
    metric,
    p_value,
    paired_bootstrap,
    paired_deltas,
    resample_scores,
    signatures,
)

FLORES = CORPORA / "flores200"


@pytest.fixture(scope="module")
def devtest(corpora):
    return load_corpus(FLORES, split="devtest")


def _corrupt(sentences: list[str], keep_every: int = 2) -> list[str]:
    """Drop words: a strictly worse system than the references themselves."""
    return [" ".join(s.split()[::keep_every]) for s in sentences]


REFS = [
    "The cat sat on the mat near the door.",
    "A quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore every morning.",
    "Rain is expected in the north later this week.",
    "The committee will publish its report on Monday.",
    "He walked to the station and caught the last train.",
    "Prices rose sharply after the announcement.",
    "They planted tomatoes, beans and peppers in the garden.",
] * 5  # 40 sentences


def test_metric_objects_and_signatures() -> None:
    assert METRICS == ("chrf++", "bleu")
    m = metric("chrf++")
    assert isinstance(m, CHRF) and m.word_order == 2 and m.char_order == 6
    assert isinstance(metric("bleu"), BLEU)
    with pytest.raises(ValueError, match="unknown metric"):
        metric("comet")
    sig = signatures()
    assert set(sig) == set(METRICS)
    assert "nrefs:1" in sig["chrf++"] and "nw:2" in sig["chrf++"] and "nc:6" in sig["chrf++"]
    assert "tok:13a" in sig["bleu"] and "version:2.6" in sig["bleu"]


def test_corpus_scores_known_values_and_errors() -> None:
    perfect = corpus_scores(REFS, REFS)
    assert perfect == {"chrf++": pytest.approx(100.0), "bleu": pytest.approx(100.0)}
    worse = corpus_scores(_corrupt(REFS), REFS)
    assert 0 < worse["chrf++"] < 100 and 0 <= worse["bleu"] < 100
    assert worse["chrf++"] == pytest.approx(
        CHRF(word_order=2).corpus_score(_corrupt(REFS), [REFS]).score
    )
    with pytest.raises(ValueError, match="3 hypotheses but 2 references"):
        corpus_scores(["a", "b", "c"], ["a", "b"])
    with pytest.raises(ValueError, match="no references"):
        corpus_scores([], [])


def test_identical_systems_give_zero_delta_and_p_one() -> None:
    hyps = _corrupt(REFS)
    r = paired_bootstrap([(REFS, [hyps], [list(hyps)])], n_samples=500, seed=3)
    assert r.delta == 0.0
    assert r.ci95 == (0.0, 0.0)
    assert r.p_value >= 0.9 and r.p_value == 1.0
    # sacrebleu's definition gives identical systems the *smallest* p: 1/(N+1)
    s = paired_bootstrap(
        [(REFS, [hyps], [hyps])], n_samples=500, seed=3, p_value_method="sacrebleu"
    )
    assert s.p_value == pytest.approx(1 / 501)


@pytest.mark.parametrize("name", METRICS)
def test_strictly_better_system_is_significant(name: str) -> None:
    worse = _corrupt(REFS)
    r = paired_bootstrap([(REFS, [REFS], [worse])], metric=name, n_samples=1000, seed=0)
    assert r.delta > 10
    assert r.p_value < 0.01
    assert r.ci95[0] > 0 and r.ci95[0] <= r.delta <= r.ci95[1]
    flipped = paired_bootstrap([(REFS, [worse], [REFS])], metric=name, n_samples=1000, seed=0)
    assert flipped.delta == pytest.approx(-r.delta)
    assert flipped.ci95[1] < 0 and flipped.p_value < 0.01


def test_block_mean_and_seed_mean() -> None:
    refs1, refs2 = REFS[:20], REFS[20:]
    a1, b1 = [REFS[:20], _corrupt(REFS[:20], 3)], [_corrupt(REFS[:20])]
    a2, b2 = [_corrupt(refs2, 3)], [_corrupt(refs2), _corrupt(refs2, 4)]
    one = paired_bootstrap([(refs1, a1, b1)], n_samples=200)
    two = paired_bootstrap([(refs2, a2, b2)], n_samples=200)
    both = paired_bootstrap([(refs1, a1, b1), (refs2, a2, b2)], n_samples=200)
    assert both.delta == pytest.approx((one.delta + two.delta) / 2, abs=1e-12)
    # seeds: mean over seeds of corpus scores, A and B with different seed counts
    chrf = [corpus_scores(h, refs1)["chrf++"] for h in a1]
    assert one.delta == pytest.approx(np.mean(chrf) - corpus_scores(b1[0], refs1)["chrf++"])
    assert both.ci95[0] <= both.delta <= both.ci95[1]
    # the first block draws from the same stream as a one-block run at that seed
    d1, reps1 = paired_deltas([(refs1, a1, b1)], n_samples=200)
    assert d1 == one.delta and reps1.shape == (200,)


def test_determinism_and_to_dict() -> None:
    block = (REFS, [_corrupt(REFS, 3)], [_corrupt(REFS)])
    r1 = paired_bootstrap([block], n_samples=300, seed=7)
    r2 = paired_bootstrap([block], n_samples=300, seed=7)
    r3 = paired_bootstrap([block], n_samples=300, seed=8)
    assert r1 == r2 and r1.ci95 != r3.ci95 and r1.delta == r3.delta
    d = json.loads(json.dumps(r1.to_dict()))
    assert d["ci95"] == [r1.ci95[0], r1.ci95[1]] and d["delta"] == r1.delta
    assert {"p_value", "n_samples", "seed", "metric", "p_value_method"} <= set(d)
    assert isinstance(r1, BootstrapResult)


def test_bootstrap_ci_single_system() -> None:
    score, (lo, hi) = bootstrap_ci(REFS, [REFS], n_samples=200)
    assert score == pytest.approx(100.0) and lo == pytest.approx(100.0) and hi == pytest.approx(100)
    hyps = [_corrupt(REFS), _corrupt(REFS, 3)]
    score, (lo, hi) = bootstrap_ci(REFS, hyps, metric="bleu", n_samples=500, seed=1)
    assert score == pytest.approx(np.mean([corpus_scores(h, REFS)["bleu"] for h in hyps]))
    assert lo < score < hi


def test_p_value_definitions() -> None:
    reps = np.array([1.0, 2.0, 3.0, -0.5])
    # shifted: |r - 1| >= 1 for 2.0, 3.0, -0.5 -> (3 + 1) / 5
    assert p_value(1.0, reps) == pytest.approx(4 / 5)
    # sacrebleu: |r| = [1, 2, 3, .5], mean 1.625, centred > 1 only for 3 -> (1 + 1) / 5
    assert p_value(1.0, reps, "sacrebleu") == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="p-value method"):
        p_value(1.0, reps, "exact")  # type: ignore[arg-type]


def test_errors() -> None:
    good = (REFS, [REFS], [REFS])
    with pytest.raises(ValueError, match="no blocks"):
        paired_bootstrap([])
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap([good], metric="ter")
    with pytest.raises(ValueError, match="n_samples"):
        paired_bootstrap([good], n_samples=0)
    with pytest.raises(ValueError, match="p-value method"):
        paired_bootstrap([good], p_value_method="two")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="block 0 system B seed-0 hypotheses"):
        paired_bootstrap([(REFS, [REFS], [REFS[:-1]])])
    with pytest.raises(ValueError, match="one per seed"):
        paired_bootstrap([(REFS, [REFS], [])])
    with pytest.raises(ValueError, match="one per seed"):
        paired_bootstrap([(REFS, REFS[0], [REFS])])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed 0 is a string"):
        paired_bootstrap([(REFS, [REFS], REFS)])
    with pytest.raises(ValueError, match="no references"):
        bootstrap_ci([], [[]])
    with pytest.raises(ValueError, match="expected"):
        paired_bootstrap([(REFS, [REFS])])  # type: ignore[list-item]


@pytest.mark.parametrize("name,key", [("chrf++", "chrF2++"), ("bleu", "BLEU")])
def test_agrees_with_sacrebleu_paired_bootstrap(devtest, name: str, key: str) -> None:
    """One block, one seed each: sacrebleu's paired bs at its default seed (12345).

    apc vs ajp scored against ary references is a close call (p ≈ 0.03 for chrF++).
    """
    refs = devtest.sentences("ary_Arab")[:300]
    a, b = devtest.sentences("apc_Arab")[:300], devtest.sentences("ajp_Arab")[:300]
    mets = {"m": CHRF(word_order=2) if name == "chrf++" else BLEU()}
    _, res = PairedTest([("B", b), ("A", a)], mets, [refs], test_type="bs", n_samples=1000)()
    sb_b, sb_a = res[key]
    ours = paired_bootstrap([(refs, [a], [b])], name, 1000, 12345, "sacrebleu")
    assert ours.delta == sb_a.score - sb_b.score
    assert ours.p_value == sb_a.p_value  # identical index draws and float32 sums: exact
    score, reps = resample_scores(refs, [a], name, 1000, seed=12345)
    mean, half = estimate_ci(reps)
    assert score == sb_a.score
    assert mean == pytest.approx(float(sb_a.mean), rel=1e-6)  # sacrebleu averages in float32
    assert half == pytest.approx(float(sb_a.ci), rel=1e-6)
    # our default (shifted, two-sided) p is roughly double sacrebleu's here
    shifted = paired_bootstrap([(refs, [a], [b])], name, 1000, 12345)
    assert shifted.p_value >= ours.p_value


def test_thousand_by_thousand_is_vectorised(devtest) -> None:
    refs = devtest.sentences("arb_Arab")[:1000]
    a, b = devtest.sentences("arz_Arab")[:1000], devtest.sentences("apc_Arab")[:1000]
    r = paired_bootstrap([(refs, [a], [b])], n_samples=1000, seed=0)
    assert r.n_samples == 1000 and r.ci95[0] <= r.delta <= r.ci95[1]
