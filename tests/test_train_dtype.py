"""``[train] dtype = "bf16"``: the forward and backward passes under bf16 autocast on the
CPU, the LoRA weights and AdamW's state in fp32, the penalty in fp32; recorded."""

from __future__ import annotations

import copy
import json

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
    splits = make_splits([corpus], standard="deu_Latn", varieties=["nds_Latn"],
                         directions="standard<->variety", dev_rows=20, probe_rows=60,
                         test_rows=0, seed=0)  # fmt: skip
    texts = [t for row in corpus.rows[:2000] for t in row.values()]
    loaded = load_model("tiny-random", corpus_texts=texts)
    add_lora(loaded, r=8, alpha=16, seed=0)
    features = []
    for ex in splits.train[:400]:
        f = tokenize_example(loaded.tokenizer, *format_example(ex), max_length=64)
        f["low_resource"] = ex.tgt != "deu_Latn"
        features.append(f)
    return splits, loaded, features


def _train(setup, tmp_path, dtype):
    splits, loaded, features = setup
    model = copy.deepcopy(loaded.model)
    config = DecouplerConfig(estimator="mean-diff", reference_estimator="mean-diff",
                             refresh_every=50, lam=0.5)  # fmt: skip
    dec = OnlineDecoupler(config, splits.probe, loaded.num_layers)
    seen = []
    penalty = dec.penalty
    dec.penalty = lambda hidden, mask: (
        seen.append({i: h.dtype for i, h in hidden.items()}) or penalty(hidden, mask)
    )
    out = tmp_path / f"run-{dtype}"
    summary = train(model, loaded.tokenizer, features, dec,
                    TrainConfig(steps=3, batch_size=8, lr=1e-3, seed=0, dtype=dtype), out,
                    progress=False)  # fmt: skip
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return model, dec, summary, [r for r in log if "lm_loss" in r], seen


def test_bf16_training_autocasts_the_passes_and_keeps_fp32_weights(setup, tmp_path) -> None:
    _, loaded, features = setup
    model, dec, summary, steps, seen = _train(setup, tmp_path, "bf16")
    assert summary["dtype"] == "bf16" and summary["config"]["dtype"] == "bf16"
    # the residual stream adds bf16 blocks to fp32 embeddings: the states stay fp32
    assert seen and all(d == torch.float32 for s in seen for d in s.values())
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    # the bf16 copies of the frozen weights were swapped in for the passes only
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # the first step's logged loss is what a direct bf16 autocast computation gives
    plan = batches([len(f["input_ids"]) for f in features], 8, 3, 0)
    first = collate([features[i] for i in plan[0]], loaded.tokenizer.pad_token_id)
    fresh = copy.deepcopy(loaded.model)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        lm, _ = supervised_loss(fresh, first, dec.layers)
    with torch.no_grad():
        lm32, _ = supervised_loss(fresh, first, dec.layers)
    assert steps[0]["lm_loss"] == pytest.approx(float(lm), rel=1e-6)
    assert abs(float(lm) - float(lm32)) > 1e-6  # a bf16 pass is not the fp32 one


def test_fp32_is_the_default_on_a_cpu_and_is_recorded(setup, tmp_path) -> None:
    _, _, summary32, steps32, seen32 = _train(setup, tmp_path, None)
    assert summary32["dtype"] == "fp32" and summary32["config"]["dtype"] is None
    assert all(d == torch.float32 for s in seen32 for d in s.values())
    _, _, _, steps16, _ = _train(setup, tmp_path, "bf16")
    # same data, same start: bf16 follows the fp32 trajectory closely, not exactly
    for a, b in zip(steps32, steps16, strict=True):
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=0.02)
    assert steps32[0]["lm_loss"] != steps16[0]["lm_loss"]


def test_dtype_is_validated() -> None:
    with pytest.raises(ValueError, match="train: dtype"):
        TrainConfig(dtype="fp16")  # type: ignore[arg-type]
