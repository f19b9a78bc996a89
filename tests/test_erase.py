"""Inference-time erasure: α = 0 is plain generation, the hook is h − α·UUᵀ(h − c), later
layers are read against subspaces fitted on the unerased model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import MINI_CONFIG, spread_tiny_model
from vardecouple.cli import main
from vardecouple.data import format_example, load_corpus, make_splits
from vardecouple.decode import DecodeConfig, decode
from vardecouple.erase import EraseConfig, Erasure, erasing, fit_erasure, later_overlaps
from vardecouple.states import capture
from vardecouple.subspace import Subspace

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


@pytest.fixture(scope="module")
def setup():
    corpus = load_corpus(CORPORA / "tatoeba-deu-nds")
    model, tok = spread_tiny_model(corpus)
    splits = make_splits(
        [corpus],
        standard="deu_Latn",
        varieties=["nds_Latn"],
        directions="standard<->variety",
        dev_rows=20,
        probe_rows=80,
        test_rows=16,
        seed=0,
    )
    ex = splits.test[:16]
    prompts = [format_example(e)[0] for e in ex]
    return model, tok, splits, prompts, [e.src_text for e in ex]


def _fit(setup, alpha: float, layers=(1,)) -> tuple[Erasure, EraseConfig]:
    model, tok, splits, _, _ = setup
    config = EraseConfig(layers=layers, alpha=alpha, estimator="mean-diff", rank=1)
    return fit_erasure(model, tok, splits.probe, config), config


def test_alpha_zero_reproduces_plain_generation_token_for_token(setup) -> None:
    model, tok, _, prompts, sources = setup
    config = DecodeConfig(batch_size=4, max_new_tokens=16)
    plain = decode(model, tok, prompts, sources, config, progress=False)
    zero, _ = _fit(setup, alpha=0.0)
    with erasing(model, zero):
        same = decode(model, tok, prompts, sources, config, progress=False)
    one, _ = _fit(setup, alpha=1.0)
    with erasing(model, one):
        erased = decode(model, tok, prompts, sources, config, progress=False)
    after = decode(model, tok, prompts, sources, config, progress=False)
    assert len(set(plain)) > len(plain) // 2  # not vacuous: the hypotheses differ
    assert same == plain
    assert erased != plain  # α = 1 at layer 1 does change what the model writes
    assert after == plain  # the hooks are gone after the block


def test_the_hook_is_the_affine_erasure_formula(setup) -> None:
    model, tok, _, prompts, _ = setup
    ids = tok(prompts[:3], return_tensors="pt", padding=True)
    g = torch.Generator().manual_seed(1)
    basis = torch.linalg.qr(torch.randn(model.config.hidden_size, 2, generator=g))[0]
    center = torch.randn(model.config.hidden_size, generator=g)
    sub = Subspace(basis.double(), center.double())
    with torch.no_grad():
        with capture(model, [1]) as store:
            model(**ids)
        plain = store[1]
        # hooks run in registration order: a capture inside the block sees the erased output
        with erasing(model, Erasure({1: sub}, 0.7, {})), capture(model, [1]) as store:
            model(**ids)
        erased = store[1]
    # the same input reaches layer 1 (layer 0 unchanged), so its output is erased directly
    c = center.double()
    expected = plain - 0.7 * ((plain - c) @ basis.double()) @ basis.double().T
    assert torch.allclose(erased, expected, atol=1e-10)


def test_full_erasure_empties_the_subspace_at_its_layer_not_necessarily_later(setup) -> None:
    model, tok, splits, _, _ = setup
    erasure, config = _fit(setup, alpha=1.0)
    table = later_overlaps(model, tok, splits.probe, erasure, config)
    assert sorted(int(k) for k in table) == [1, 2, 3][: len(table)] and "1" in table
    for variety, o in table["1"].items():
        assert o["plain"] > 1e-3, variety
        assert o["erased"] < 1e-12, variety  # by construction at the erased layer
    later = [o for i, per in table.items() if i != "1" for o in per.values()]
    assert later and all(0 <= o["erased"] <= 1 for o in later)


def test_erase_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="alpha"):
        EraseConfig(alpha=-1)
    with pytest.raises(ValueError, match="unknown estimator 'lda'"):
        EraseConfig(estimator="lda")
    with pytest.raises(ValueError, match="at least one layer"):
        EraseConfig(layers=())


def test_eval_with_alpha_zero_writes_the_plain_hypotheses(tmp_path: Path) -> None:
    (tmp_path / "mini.toml").write_text(MINI_CONFIG)
    base = ["eval", "--config", str(tmp_path / "mini.toml")]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    args = ["--erase-alpha", "0", "--erase-layers", "1", "--erase-estimator", "pca"]
    assert main([*base, "--out", str(tmp_path / "zero"), *args]) == 0
    scores = json.loads((tmp_path / "zero" / "scores.json").read_text())
    assert scores["erasure"]["alpha"] == 0 and scores["erasure"]["layers"] == [1]
    assert set(scores["erasure"]["later_overlap"]) >= {"1"}
    for d in scores["metrics"]:
        a = (tmp_path / "plain" / "hypotheses" / f"{d}.txt").read_text()
        assert (tmp_path / "zero" / "hypotheses" / f"{d}.txt").read_text() == a


def test_erase_on_must_name_a_trained_arm(tmp_path: Path) -> None:
    from vardecouple.config import ConfigError, load_config

    bad = MINI_CONFIG + '\n[arms.erased]\nkind = "erase"\nerase_on = "base"\n'
    (tmp_path / "a.toml").write_text(bad)
    with pytest.raises(ConfigError, match="'base' is not a trained arm"):
        load_config(tmp_path / "a.toml")
    bad = MINI_CONFIG + '\n[arms.erased]\nerase_on = "standard"\n'
    (tmp_path / "b.toml").write_text(bad)
    with pytest.raises(ConfigError, match="only an arm of kind 'erase'"):
        load_config(tmp_path / "b.toml")
