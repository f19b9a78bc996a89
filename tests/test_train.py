"""The training loop on a tiny random Llama and the real deu–nds corpus."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import CORPORA
from vardecouple.data import format_example, load_corpus, make_splits, tokenize_example
from vardecouple.decouple import DecouplerConfig, OnlineDecoupler
from vardecouple.model.load import load_model
from vardecouple.model.lora import add_lora
from vardecouple.train.loop import train
from vardecouple.train.step import TrainConfig, batches, collate, supervised_loss

pytestmark = pytest.mark.usefixtures("corpora")


@pytest.fixture(scope="module")
def setup():
    corpus = load_corpus(CORPORA / "tatoeba-deu-nds")
    splits = make_splits(
        [corpus],
        standard="deu_Latn",
        varieties=["nds_Latn"],
        directions="standard<->variety",
        dev_rows=50,
        probe_rows=200,
        test_rows=100,
        seed=0,
    )
    texts = [t for row in corpus.rows[:3000] for t in row.values()]
    return splits, texts


def _run(setup, tmp_path: Path, seed: int, steps: int, **decoupler) -> list[dict]:
    splits, texts = setup
    loaded = load_model("tiny-random", corpus_texts=texts)
    add_lora(loaded, r=8, alpha=16, seed=seed)
    features = []
    for ex in splits.train[:3000]:
        prompt, target = format_example(ex)
        f = tokenize_example(loaded.tokenizer, prompt, target, max_length=96)
        f["low_resource"] = ex.tgt != "deu_Latn"
        features.append(f)
    config = DecouplerConfig(refresh_every=50, **decoupler)
    dec = OnlineDecoupler(config, splits.probe, loaded.num_layers)
    out = tmp_path / f"run{seed}-{len(list(tmp_path.iterdir()))}"
    train(
        loaded.model,
        loaded.tokenizer,
        features,
        dec,
        TrainConfig(steps=steps, batch_size=8, lr=2e-3, seed=seed),
        out,
        progress=False,
    )
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def test_supervised_loss_equals_full_logits_loss(setup) -> None:
    splits, texts = setup
    loaded = load_model("tiny-random", corpus_texts=texts)
    feats = [
        tokenize_example(loaded.tokenizer, *format_example(ex), max_length=64)
        for ex in splits.train[:6]
    ]
    batch = collate(feats, loaded.tokenizer.pad_token_id)
    ours, hidden = supervised_loss(loaded.model, batch, [1])
    full = loaded.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
    ).loss
    torch.testing.assert_close(ours, full, rtol=1e-5, atol=1e-6)
    assert hidden[1].shape == (*batch["input_ids"].shape, loaded.hidden_size)


def test_batches_are_deterministic_and_length_grouped() -> None:
    lengths = [(i * 37) % 101 for i in range(400)]
    a, b = batches(lengths, 8, 120, seed=3), batches(lengths, 8, 120, seed=3)
    assert a == b and len(a) == 120 and a != batches(lengths, 8, 120, seed=4)
    first_epoch = [i for batch in a[:50] for i in batch]
    assert sorted(first_epoch) == list(range(400))  # an epoch visits every example once
    spread = sum(max(lengths[i] for i in bt) - min(lengths[i] for i in bt) for bt in a[:50]) / 50
    assert spread < 20  # sorted within chunks: little padding (random batches: ~80)


def test_lambda_zero_reproduces_the_standard_trajectory_exactly(setup, tmp_path) -> None:
    standard = _run(setup, tmp_path, seed=0, steps=12, penalize=False)
    zero = _run(setup, tmp_path, seed=0, steps=12, lam=0.0, estimator="random")
    losses = [[r["lm_loss"] for r in log if "lm_loss" in r] for log in (standard, zero)]
    assert losses[0] == losses[1] and len(losses[0]) == 12
    refreshes = [r for r in standard if r.get("refresh")]
    assert [r["step"] for r in refreshes] == [0, 12]  # step 0 and the final measurement
    keys = {"step", "loss", "lm_loss", "penalty", "lambda", "lr", "tokens", "seconds"}
    assert all(keys <= set(r) for r in standard if "lm_loss" in r)


def test_decoupling_lowers_overlap_with_the_frozen_reference_in_every_seed(setup, tmp_path) -> None:
    """Acceptance (issue 4), for the paper's method (its variational probe for U and U₀):
    held-out probe states of the low-resource variety, overlap with the frozen reference
    U₀ fitted on the base model. Every decoupled seed ends below every standard seed; a
    random subspace penalty does not lower it."""
    final: dict[str, list[float]] = {"standard": [], "decoupled": [], "random": []}
    arms = {
        "standard": {"penalize": False},
        "decoupled": {"lam": 1.0},
        "random": {"lam": 1.0, "estimator": "random"},
    }
    paper = {"estimator": "variational", "reference_estimator": "variational"}
    for seed in range(3):
        for arm, options in arms.items():
            log = _run(setup, tmp_path, seed=seed, steps=200, **(paper | options))
            last = [r for r in log if r.get("refresh")][-1]
            final[arm].append(last["overlap"]["2"]["nds_Latn"]["reference"])
    assert max(final["decoupled"]) < min(final["standard"]), final
    assert min(final["random"]) > max(final["decoupled"]), final


def test_resume_after_a_crash_is_exact(setup, tmp_path, monkeypatch) -> None:
    import vardecouple.train.step as train_module
    from vardecouple.train.checkpoint import trainable_state

    splits, texts = setup

    def prepared(seed: int = 0):
        loaded = load_model("tiny-random", corpus_texts=texts)
        add_lora(loaded, r=8, alpha=16, seed=seed)
        feats = []
        for ex in splits.train[:400]:
            f = tokenize_example(loaded.tokenizer, *format_example(ex), max_length=64)
            f["low_resource"] = ex.tgt != "deu_Latn"
            feats.append(f)
        dec = OnlineDecoupler(
            DecouplerConfig(  # the paper's probe: the richest state to resume (Adam, gates)
                refresh_every=7,
                lam=1.0,
                estimator="variational",
                reference_estimator="variational",
                estimator_options={"fit_epochs": 3, "update_epochs": 1},
            ),
            splits.probe,
            loaded.num_layers,
        )
        return loaded, feats, dec

    config = TrainConfig(steps=20, batch_size=4, lr=2e-3, checkpoint_every=6, seed=1)
    loaded, feats, dec = prepared()
    train(loaded.model, loaded.tokenizer, feats, dec, config, tmp_path / "whole", progress=False)
    whole = trainable_state(loaded.model)

    loaded, feats, dec = prepared()
    real_loss, calls = train_module.supervised_loss, {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 15:  # after the checkpoint at 12, before the one at 18
            raise KeyboardInterrupt
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(train_module, "supervised_loss", crashing)
    with pytest.raises(KeyboardInterrupt):
        train(loaded.model, loaded.tokenizer, feats, dec, config, tmp_path / "cut", progress=False)
    monkeypatch.setattr(train_module, "supervised_loss", real_loss)
    with pytest.raises(FileExistsError, match="resume"):
        train(loaded.model, loaded.tokenizer, feats, dec, config, tmp_path / "cut", progress=False)
    loaded, feats, dec = prepared()
    train(
        loaded.model,
        loaded.tokenizer,
        feats,
        dec,
        config,
        tmp_path / "cut",
        progress=False,
        resume=True,
    )
    resumed = trainable_state(loaded.model)
    assert whole.keys() == resumed.keys()
    for name in whole:
        assert torch.equal(whole[name], resumed[name]), name

    def records(folder: str) -> list[dict]:
        lines = (tmp_path / folder / "train_log.jsonl").read_text().splitlines()
        return [
            {k: v for k, v in json.loads(x).items() if k not in ("seconds", "tokens_per_s")}
            for x in lines
        ]

    assert records("whole") == records("cut")
    with pytest.raises(FileExistsError, match="finished"):
        train(
            loaded.model,
            loaded.tokenizer,
            feats,
            dec,
            config,
            tmp_path / "cut",
            progress=False,
            resume=True,
        )


def test_trimmed_vocabulary_loss_is_a_lower_bound_and_exact_with_the_full_vocabulary(setup) -> None:
    from vardecouple.train.step import trimmed_vocab

    splits, texts = setup
    loaded = load_model("tiny-random", corpus_texts=texts)
    feats = [
        tokenize_example(loaded.tokenizer, *format_example(ex), max_length=64)
        for ex in splits.train[:8]
    ]
    batch = collate(feats, loaded.tokenizer.pad_token_id)
    exact, _ = supervised_loss(loaded.model, batch, [0])
    everything = torch.arange(loaded.model.config.vocab_size)
    torch.testing.assert_close(supervised_loss(loaded.model, batch, [0], everything)[0], exact)
    vocab = trimmed_vocab(feats, loaded.tokenizer)
    assert len(vocab) < loaded.model.config.vocab_size
    trimmed, _ = supervised_loss(loaded.model, batch, [0], vocab)
    assert (
        trimmed.item() < exact.item()
    )  # a softmax over fewer tokens: a smaller partition function
