"""Inference-time erasure: α = 0 is plain generation, the hook is h − α·UUᵀ(h − c), later
layers are read against subspaces fitted on the unerased model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import MINI_CONFIG, decoding_setup
from vardecouple.cli import main
from vardecouple.erase import EraseConfig, Erasure, erasing, fit_erasure, later_overlaps
from vardecouple.evaluate.decode import DecodeConfig, decode
from vardecouple.model.states import capture
from vardecouple.probes.online import OnlineProbe
from vardecouple.subspace import Subspace

pytestmark = pytest.mark.usefixtures("corpora")
TOL = 1e-7  # the library keeps fp32 states and subspaces, fp64 here: measured ≤ 3.4e-9


@pytest.fixture(scope="module")
def setup():
    return decoding_setup(test_rows=16, probe_rows=80)


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


def _own_states(model, tok, sentences, erase=None) -> tuple[dict[int, torch.Tensor], list]:
    """Every token state but each sentence's first, of every decoder layer, read by this
    test's own forward hooks: each sentence alone through the whole model (no padding,
    no batching), fp64; and the sentence of every row. ``erase = (layer, u, c)`` makes
    that layer output h − uuᵀ(h − c)."""
    blocks = model.model.layers
    store: dict[int, torch.Tensor] = {}

    def hook(i: int):
        def fn(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            if erase is not None and i == erase[0]:
                _, u, c = erase
                h = h - ((h - c) @ u)[..., None] * u
                output = (h, *output[1:]) if isinstance(output, tuple) else h
            store[i] = h
            return output

        return fn

    handles = [b.register_forward_hook(hook(i)) for i, b in enumerate(blocks)]
    rows: dict[int, list[torch.Tensor]] = {i: [] for i in range(len(blocks))}
    owner = []
    try:
        with torch.no_grad():
            for s in sentences:
                ids = tok(s.text, return_tensors="pt", add_special_tokens=False)["input_ids"]
                model(input_ids=ids)
                for i in rows:
                    rows[i].append(store[i][0, 1:].double())
                owner += [s] * (ids.shape[1] - 1)
    finally:
        for h in handles:
            h.remove()
    return {i: torch.cat(r) for i, r in rows.items()}, owner


def _own_overlap(u: torch.Tensor, c: torch.Tensor, h: torch.Tensor) -> float:
    """Σ‖uᵀ(h − c)‖² / Σ‖h − c‖² by hand (rank 1)."""
    centred = h - c
    return float(((centred @ u) ** 2).sum() / (centred**2).sum())


def test_later_overlaps_equal_an_independent_computation(setup) -> None:
    """scores.json's ``erasure.later_overlap``: per layer from the first erased one up and
    per variety, the held-out overlap with a mean-diff subspace fitted on the unerased
    model, without and with erasure. Recomputed here from states read by this test's own
    hooks, the mean-diff direction fitted by hand (u = normalised μ_variety − μ_standard,
    c = their midpoint) and the erasure applied by hand; only the held-out/fit split of
    the probe rows is taken from the decoupler."""
    model, tok, splits, _, _ = setup
    erasure, config = _fit(setup, alpha=1.0)
    table = later_overlaps(model, tok, splits.probe, erasure, config)
    layers = list(range(1, len(model.model.layers)))
    split = OnlineProbe(config.at(layers), splits.probe, len(model.model.layers), reference=False)
    fit, fit_owner = _own_states(model, tok, split.fit_on)
    labels = torch.tensor([s.label for s in fit_owner])
    assert set(labels.tolist()) == {0, 1}
    fitted = {}
    for i in layers:
        mu0, mu1 = fit[i][labels == 0].mean(0), fit[i][labels == 1].mean(0)
        fitted[i] = ((mu1 - mu0) / (mu1 - mu0).norm(), (mu0 + mu1) / 2)
    u1, c1 = fitted[1]
    plain, owner = _own_states(model, tok, split.measure)
    erased, _ = _own_states(model, tok, split.measure, erase=(1, u1, c1))
    varieties = sorted({s.variety for s in owner})
    assert sorted(table, key=int) == [str(i) for i in layers] and len(varieties) == 2
    for i in layers:
        u, c = fitted[i]
        for variety in varieties:
            rows = torch.tensor([s.variety == variety for s in owner])
            got = table[str(i)][variety]
            want = (_own_overlap(u, c, plain[i][rows]), _own_overlap(u, c, erased[i][rows]))
            assert (got["plain"], got["erased"]) == pytest.approx(want, abs=TOL), (i, variety)
            assert want[0] > 1e-3, (i, variety)  # not vacuous
    # erasing at layer 1 does change what the later layers hold
    assert any(abs(table[str(i)][v]["erased"] - table[str(i)][v]["plain"]) > 100 * TOL
               for i in layers[1:] for v in varieties)  # fmt: skip


def test_erase_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="alpha"):
        EraseConfig(alpha=-1)
    for bad in (-0.5, float("nan"), float("inf")):  # the same rule for a fitted or loaded erasure
        with pytest.raises(ValueError, match="erase: alpha must be a finite number >= 0"):
            Erasure({}, bad, {})
    with pytest.raises(ValueError, match="unknown estimator 'qda'"):
        EraseConfig(estimator="qda")
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
    later = scores["erasure"]["later_overlap"]
    assert sorted(later, key=int) == ["1", "2", "3"]  # tiny-random: layers 0..3
    for per in later.values():  # α = 0 is the identity: erased states are the plain ones
        assert all(o["erased"] == o["plain"] > 0 for o in per.values()), per
    for d in scores["metrics"]:
        a = (tmp_path / "plain" / "hypotheses" / f"{d}.txt").read_text()
        assert (tmp_path / "zero" / "hypotheses" / f"{d}.txt").read_text() == a


def test_erase_on_must_name_a_trained_arm(tmp_path: Path) -> None:
    from vardecouple.experiment.config import ConfigError, load_config

    bad = MINI_CONFIG + '\n[arms.erased]\nkind = "erase"\nerase_on = "base"\n'
    (tmp_path / "a.toml").write_text(bad)
    with pytest.raises(ConfigError, match="'base' is not a trained arm"):
        load_config(tmp_path / "a.toml")
    bad = MINI_CONFIG + '\n[arms.erased]\nerase_on = "standard"\n'
    (tmp_path / "b.toml").write_text(bad)
    with pytest.raises(ConfigError, match="only an arm of kind 'erase'"):
        load_config(tmp_path / "b.toml")
