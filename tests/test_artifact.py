"""A trained arm's subspaces as a folder beside its adapter: saved, loaded, erased with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import MINI_CONFIG, decoding_setup
from vardecouple.cli import main
from vardecouple.erase import Erasure, erasing
from vardecouple.evaluate.decode import DecodeConfig, decode
from vardecouple.model.states import capture
from vardecouple.probes.artifact import load_subspace, save_subspaces
from vardecouple.subspace import Subspace

pytestmark = pytest.mark.usefixtures("corpora")


def _random(dim: int, rank: int, seed: int) -> Subspace:
    g = torch.Generator().manual_seed(seed)
    return Subspace.random(dim, rank, generator=g, center=torch.randn(dim, generator=g))


def test_saved_subspaces_load_back_bit_for_bit(tmp_path: Path) -> None:
    own = {1: _random(16, 1, 0), 3: _random(16, 2, 1)}
    reference = {1: _random(16, 1, 2)}
    save_subspaces(tmp_path / "s", own, {"estimator": "lda", "step": 7}, reference=reference)
    saved = load_subspace(tmp_path / "s")
    assert sorted(saved) == [1, 3] and len(saved) == 2 and sorted(saved.reference) == [1]
    for got, want in [*((saved[i], own[i]) for i in own), (saved.reference[1], reference[1])]:
        assert torch.equal(got.basis, want.basis) and torch.equal(got.center, want.center)
    info = json.loads((tmp_path / "s" / "subspace.json").read_text())
    assert info["estimator"] == "lda" and info["step"] == 7 and saved.info == info
    assert info["layers"] == [1, 3] and info["ranks"] == {"1": 1, "3": 2} and info["dim"] == 16


def test_a_folder_that_is_no_saved_subspace_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"not a saved subspace \(expected subspace.json"):
        load_subspace(tmp_path)
    save_subspaces(tmp_path / "s", {1: _random(8, 1, 0)}, {})
    info = json.loads((tmp_path / "s" / "subspace.json").read_text())
    (tmp_path / "s" / "subspace.json").write_text(json.dumps(info | {"layers": [1, 2]}))
    with pytest.raises(ValueError, match="no tensors for layer 2"):
        load_subspace(tmp_path / "s")
    (tmp_path / "s" / "subspace.json").write_text(json.dumps(info | {"format": "other/9"}))
    with pytest.raises(ValueError, match="format is not"):
        load_subspace(tmp_path / "s")
    with pytest.raises(TypeError):  # info that is not JSON: refused before any file
        save_subspaces(tmp_path / "t", {1: _random(8, 1, 0)}, {"x": object()})
    assert not (tmp_path / "t").exists()


def test_erasing_a_loaded_subspace_is_erasing_the_fitted_one(tmp_path: Path) -> None:
    """``erasing(model, load_subspace(dir), alpha)`` hooks exactly what an
    :class:`Erasure` of the same subspaces does: the same layer states, the same text."""
    model, tok, _, prompts, sources = decoding_setup(test_rows=8, probe_rows=20)
    sub = _random(model.config.hidden_size, 2, 3)
    save_subspaces(tmp_path / "s", {1: sub}, {})
    ids = tok(prompts[:3], return_tensors="pt", padding=True)
    states = []
    for erasure in (Erasure({1: sub}, 0.5, {}), load_subspace(tmp_path / "s")):
        with torch.no_grad(), erasing(model, erasure, alpha=0.5), capture(model, [1]) as store:
            model(**ids)
        states.append(store[1].clone())
    with torch.no_grad(), capture(model, [1]) as store:
        model(**ids)
    # the same numbers up to fp64 rounding (a saved basis is contiguous, the drawn one a view)
    torch.testing.assert_close(states[1], states[0], rtol=0, atol=1e-12)
    assert not torch.allclose(states[0], store[1])  # not vacuous: the states were erased
    config = DecodeConfig(batch_size=4, max_new_tokens=8)
    with erasing(model, load_subspace(tmp_path / "s"), alpha=0.0):
        same = decode(model, tok, prompts, sources, config, progress=False)
    assert same == decode(model, tok, prompts, sources, config, progress=False)


def test_train_writes_the_subspace_and_eval_erases_it_without_refitting(tmp_path: Path) -> None:
    """``vardecouple train`` leaves ``subspace/`` beside ``adapter/`` (the final refresh's
    subspaces, what they are and where they came from); ``eval --erase-from`` erases
    them: α = 0 writes the plain hypotheses, and the erasure entry names the folder."""
    (tmp_path / "mini.toml").write_text(MINI_CONFIG)
    run = tmp_path / "run"
    assert (
        main(["train", str(tmp_path / "mini.toml"), "--arm", "decoupled", "--out", str(run)]) == 0
    )
    saved = load_subspace(run / "subspace")
    config = json.loads((run / "config.json").read_text())
    assert sorted(saved) == config["decoupler"]["layers"] == [1]
    assert saved.info["estimator"] == config["decoupler"]["estimator"]
    assert saved.info["step"] == config["train"]["steps"] and saved.info["adapter"] == "../adapter"
    assert saved.info["probe_rows"] > 0 and len(saved.info["probe_sha256"]) == 64
    assert sorted(saved.reference) == [1]
    final = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()][-1]
    assert final.get("final") and final["step"] == saved.info["step"]

    base = ["eval", "--config", str(tmp_path / "mini.toml"), "--adapter", str(run / "adapter")]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    erase = ["--erase-from", str(run / "subspace"), "--erase-alpha", "0"]
    assert main([*base, "--out", str(tmp_path / "zero"), *erase]) == 0
    scores = json.loads((tmp_path / "zero" / "scores.json").read_text())
    assert scores["erasure"]["from"] == str((run / "subspace").resolve())
    assert scores["erasure"]["layers"] == [1] and scores["erasure"]["alpha"] == 0
    for d in scores["metrics"]:
        plain = (tmp_path / "plain" / "hypotheses" / f"{d}.txt").read_text()
        assert (tmp_path / "zero" / "hypotheses" / f"{d}.txt").read_text() == plain


def test_erase_from_with_fitting_flags_is_refused_in_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "mini.toml").write_text(MINI_CONFIG)
    args = ["eval", "--config", str(tmp_path / "mini.toml"), "--out", str(tmp_path / "o")]
    code = main([*args, "--erase-from", str(tmp_path), "--erase-rank", "2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--erase-from takes its layers" in err[0]
    code = main([*args, "--erase-from", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "not a saved subspace" in err[-1]
    assert not (tmp_path / "o").exists()


def test_probe_measures_each_variety_against_a_saved_subspace(tmp_path: Path) -> None:
    """``vardecouple probe --subspace DIR``: at the saved layers, every variety's
    sentence states' overlap with that subspace, recomputed here from the states by the
    formula Σ‖Uᵀ(y − c)‖² / Σ‖y − c‖²; other layers carry none."""
    from conftest import CORPORA
    from vardecouple.analysis.probing import load_rows, sentence_states
    from vardecouple.model.load import load_model

    flores, standard, varieties = CORPORA / "flores200" / "dev", "arb_Arab", ["arz_Arab"]
    codes, rows = load_rows(flores, standard, varieties, 30)
    texts = [t for c in codes for t in rows[c]]
    loaded = load_model("tiny-random", corpus_texts=texts)
    sub = _random(loaded.hidden_size, 2, 5)
    save_subspaces(tmp_path / "s", {1: sub}, {"estimator": "lda"})
    out = tmp_path / "p"
    args = ["probe", "--model", "tiny-random", "--corpus", str(flores), "--standard", standard,
            "--varieties", *varieties, "--layers", "1", "2", "--max-rows", "30",
            "--subspace", str(tmp_path / "s"), "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    data = json.loads((out / "probe.json").read_text())
    assert data["saved_subspace_layers"] == [1]
    states = sentence_states(loaded.model, loaded.tokenizer, texts, [1])[1].double()
    blocks = dict(zip(codes, states.split(30), strict=True))
    u, c = sub.basis.double(), sub.center.double()

    def by_hand(y: torch.Tensor) -> float:
        return float(((y - c) @ u).square().sum() / (y - c).square().sum())

    layer = data["results"]["base"]["1"]
    assert layer["arz_Arab"]["saved_overlap"] == pytest.approx(
        by_hand(blocks["arz_Arab"]), rel=1e-5
    )
    assert layer["all"]["saved_overlap"] == pytest.approx(by_hand(blocks[standard]), rel=1e-5)
    assert "saved_overlap" not in data["results"]["base"]["2"]["arz_Arab"]
