"""The synthetic language family (vardecouple.data.family)."""

from __future__ import annotations

import itertools
import json

import pytest
from sacrebleu.metrics import CHRF

from vardecouple.data import (
    FamilyConfig,
    family_rules,
    load_corpus,
    make_family,
    make_splits,
    variety_name,
    write_family,
)
from vardecouple.data.corpus import is_variety_code
from vardecouple.data.family import PIVOT_CODE, STANDARD_CODE, variety_codes

STD = STANDARD_CODE


def _chrf(hyps: list[str], refs: list[str]) -> float:
    return CHRF(word_order=2).corpus_score(hyps, [refs]).score


def _tokens(sentences: list[str]) -> list[str]:
    return [t for s in sentences for t in s.rstrip(".").lower().split()]


def _oov_share(corpus, code: str) -> float:
    vocab = set(_tokens(corpus.sentences(STD)))
    tokens = _tokens(corpus.sentences(code))
    return sum(t not in vocab for t in tokens) / len(tokens)


def test_shape_codes_and_names() -> None:
    c = make_family(FamilyConfig(n_sentences=300, n_varieties=3, divergence=0.5, seed=0))
    assert c.varieties == (PIVOT_CODE, STD, "vra_Latn", "vrb_Latn", "vrc_Latn")
    assert len(c) == 300 and all(set(row) == set(c.varieties) for row in c.rows)
    assert all(is_variety_code(code) for code in (*c.varieties, *variety_codes(10)))
    for code in c.varieties:
        sentences = c.sentences(code)
        assert len(set(sentences)) == len(sentences)  # distinct per code
        assert all(4 <= len(s.split()) <= 14 and s.endswith(".") for s in sentences)
    assert variety_name(STD) == "Synthetic Standard"
    assert variety_name("vrc_Latn") == "Synthetic Variety C"
    assert variety_name(PIVOT_CODE) == "Synthetic Pivot"


def test_deterministic_for_a_seed_and_different_across_seeds() -> None:
    config = FamilyConfig(n_sentences=200, n_varieties=2, divergence=(0.2, 0.7), seed=3)
    a, b = make_family(config), make_family(config)
    assert a == b
    other = make_family(FamilyConfig(n_sentences=200, n_varieties=2, divergence=(0.2, 0.7)))
    for code in a.varieties:
        assert set(a.sentences(code)).isdisjoint(other.sentences(code))


def test_same_meaning_same_sentence_across_configs() -> None:
    """Pivot and standard ignore divergence/n_varieties; a variety ignores later ones;
    a shorter family is a prefix of a longer one."""
    big = make_family(FamilyConfig(n_sentences=400, n_varieties=4, divergence=0.6, seed=1))
    small = make_family(FamilyConfig(n_sentences=150, n_varieties=1, divergence=0.6, seed=1))
    assert small.rows == tuple({k: row[k] for k in small.varieties} for row in big.rows[:150])
    low = make_family(FamilyConfig(n_sentences=150, n_varieties=1, divergence=0.1, seed=1))
    for code in (PIVOT_CODE, STD):
        assert low.sentences(code) == small.sentences(code)


def test_divergence_zero_is_the_standard_and_one_shares_nothing() -> None:
    c = make_family(FamilyConfig(n_sentences=300, n_varieties=2, divergence=(0.0, 1.0), seed=0))
    assert c.sentences("vra_Latn") == c.sentences(STD)
    assert _oov_share(c, "vrb_Latn") == 1.0


def test_chrf_falls_strictly_as_divergence_rises() -> None:
    levels = (0.1, 0.4, 0.8)
    # one variety, three families: its changes are nested as divergence rises
    scores = []
    for d in levels:
        c = make_family(FamilyConfig(n_sentences=400, n_varieties=1, divergence=d, seed=0))
        scores.append(_chrf(c.sentences("vra_Latn"), c.sentences(STD)))
    assert scores[0] > scores[1] > scores[2]
    assert 100.0 > scores[0]
    # three varieties of one family
    c = make_family(FamilyConfig(n_sentences=400, n_varieties=3, divergence=levels, seed=0))
    std = c.sentences(STD)
    scores = [_chrf(c.sentences(code), std) for code in c.varieties[2:]]
    assert scores[0] > scores[1] > scores[2] > _chrf(c.sentences(PIVOT_CODE), std) - 5
    shares = [_oov_share(c, code) for code in c.varieties[2:]]
    assert 0.0 < shares[0] < shares[1] < shares[2] < 1.0


def test_rules_are_nested_and_reported() -> None:
    rules = family_rules(FamilyConfig(n_sentences=1, n_varieties=3, divergence=(0.1, 0.4, 0.8)))
    assert [r["divergence"] for r in rules.values()] == [0.1, 0.4, 0.8]
    assert [len(r["suffixes"]) for r in rules.values()] == [1, 2, 4]
    assert [r["adjective_before_noun"] for r in rules.values()] == [False, True, True]
    assert [r["verb_after_subject"] for r in rules.values()] == [False, False, True]
    by_d = [family_rules(FamilyConfig(1, 1, d, seed=5))["vra_Latn"] for d in (0.1, 0.4, 0.8)]
    for lo, hi in itertools.pairwise(by_d):
        assert set(lo["suffixes"].items()) <= set(hi["suffixes"].items())
        assert set(lo["words"].items()) < set(hi["words"].items())


def test_write_and_load_round_trip(tmp_path) -> None:
    config = FamilyConfig(n_sentences=120, n_varieties=3, divergence=(0.0, 0.5, 1.0), seed=2)
    folder = write_family(config, tmp_path / "fam")
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [f"{code}.txt" for code in config.codes] + ["family.json"]
    )  # no temporary files left behind
    loaded = load_corpus(folder, format="lines")
    made = make_family(config)
    assert loaded.varieties == made.varieties and loaded.rows == made.rows
    meta = json.loads((folder / "family.json").read_text(encoding="utf-8"))
    assert meta["config"]["seed"] == 2 and set(meta["rules"]) == set(config.codes[2:])
    assert load_corpus(write_family(config, folder)).rows == made.rows  # rewriting is fine
    (folder / "xyz_Latn.txt").write_text("stray\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"xyz_Latn\.txt"):
        write_family(config, folder)


def test_make_splits_on_the_family() -> None:
    config = FamilyConfig(n_sentences=500, n_varieties=2, divergence=(0.0, 0.6), seed=0)
    c = make_family(config)
    splits = make_splits(
        [c],
        standard=STD,
        varieties=["vra_Latn", "vrb_Latn"],
        directions="standard<->variety",
        pivot=PIVOT_CODE,
        dev_rows=40,
        probe_rows=40,
        test_rows=60,
        seed=0,
    )
    # no sentence, in any code, repeats across rows: one group per row
    assert splits.stats["groups"] == 500 and splits.stats["grouped_rows"] == 0
    assert splits.groups["test"] == 60 and splits.groups["train"] == 500 - 140
    assert len(splits.test) == 60 * 4 and len(splits.train) == 360 * 4
    assert {p.label for p in splits.probe} == {0, 1, 2}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_sentences": 0}, "n_sentences"),
        ({"n_sentences": 2.0}, "n_sentences"),
        ({"n_varieties": 0}, "n_varieties"),
        ({"n_varieties": 11}, "n_varieties"),
        ({"divergence": -0.1}, "divergence"),
        ({"divergence": 1.5}, "divergence"),
        ({"divergence": float("nan")}, "divergence"),
        ({"divergence": "0.3"}, "divergence"),
        ({"divergence": True}, "divergence"),
        ({"divergence": (0.1, 0.2)}, "one per variety"),
        ({"divergence": (0.1, 0.2, 2.0)}, "divergence"),
        ({"seed": None}, "seed"),
        ({"seed": True}, "seed"),
    ],
)
def test_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FamilyConfig(**kwargs)


def test_config_normalises_divergence() -> None:
    assert FamilyConfig(divergence=1).divergence == 1.0
    config = FamilyConfig(n_varieties=2, divergence=[0, 0.5])
    assert config.divergence == (0.0, 0.5) and config.divergences == (0.0, 0.5)
    assert FamilyConfig(n_varieties=2, divergence=0.25).divergences == (0.25, 0.25)
