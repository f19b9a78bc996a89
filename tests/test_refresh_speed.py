"""The cheaper probe refresh: LoRA folded into one matmul per layer (exact up to
rounding, originals restored), the opt-in bf16 read and the opt-in fit-row draw."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import CORPORA, Sentence
from vardecouple.decouple import DecouplerConfig, OnlineDecoupler
from vardecouple.model.load import load_model
from vardecouple.model.lora import add_lora
from vardecouple.model.states import folded_weights, token_states

pytestmark = pytest.mark.usefixtures("corpora")


def _lines(code: str, n: int) -> list[str]:
    path = CORPORA / "tatoeba-deu-nds" / f"{code}.txt"
    return path.read_text(encoding="utf-8").splitlines()[:n]


@pytest.fixture(scope="module")
def adapted():
    """A tiny random Llama in float64 with LoRA whose B is non-zero (as after training)."""
    deu, nds = _lines("deu_Latn", 60), _lines("nds_Latn", 60)
    loaded = load_model("tiny-random", corpus_texts=deu + nds)
    loaded.model.double()
    add_lora(loaded, r=4, alpha=8, dropout=0.1, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.05)
    loaded.model.eval()
    probe = [Sentence(t, "deu_Latn", 0, i) for i, t in enumerate(deu)]
    probe += [Sentence(t, "nds_Latn", 1, i) for i, t in enumerate(nds)]
    return loaded, probe


def test_folded_weights_compute_what_the_adapters_compute_and_put_everything_back(adapted):
    loaded, probe = adapted
    model, tok = loaded.model, loaded.tokenizer
    texts = [s.text for s in probe[:24]]
    before = {n: (p, p.data_ptr(), p.data.clone()) for n, p in model.named_parameters()}
    calls = []
    lora_a = [m for n, m in model.named_modules() if n.endswith("lora_A.default")]
    hooks = [m.register_forward_hook(lambda *_: calls.append(1)) for m in lora_a]
    plain, owner = token_states(model, tok, texts, (1, 2))
    adapter_calls = len(calls)
    with folded_weights(model):
        folded, owner2 = token_states(model, tok, texts, (1, 2))
    for h in hooks:
        h.remove()
    assert adapter_calls > 0 and len(calls) == adapter_calls  # folded: no adapter matmul ran
    assert torch.equal(owner, owner2)
    for i in (1, 2):  # the same values (float64 inside, returned as float32)
        torch.testing.assert_close(folded[i], plain[i], rtol=1e-6, atol=1e-6)
    # the adapters are on again and every parameter is its old tensor, bit for bit
    after = dict(model.named_parameters())
    for name, (param, pointer, copy_) in before.items():
        assert after[name] is param and param.data_ptr() == pointer
        assert param.dtype == copy_.dtype and torch.equal(param.data, copy_)
    assert not any(m.disable_adapters for m in model.modules() if hasattr(m, "lora_A"))
    again, _ = token_states(model, tok, texts, (2,))
    assert torch.equal(again[2], plain[2])


def test_the_bf16_read_equals_a_merged_bf16_copy(adapted):
    loaded, probe = adapted
    model, tok = loaded.model, loaded.tokenizer
    texts = [s.text for s in probe[:24]]
    reference = copy.deepcopy(model).merge_and_unload()
    for p in reference.parameters():  # parameters only: buffers (rotary frequencies) stay
        p.data = p.data.to(torch.bfloat16)
    expected, _ = token_states(reference, tok, texts, (2,))
    with folded_weights(model, torch.bfloat16):
        got, _ = token_states(model, tok, texts, (2,))
    exact, _ = token_states(model, tok, texts, (2,))
    assert next(model.parameters()).dtype == torch.float64
    err = (got[2] - exact[2]).norm() / exact[2].norm()
    assert 0 < err < 0.05  # an approximation, a small one
    # merge_and_unload folds in float64 before the cast; we fold in float64 too
    torch.testing.assert_close(got[2], expected[2], rtol=0, atol=0)


def _decoupler(adapted, **kw) -> OnlineDecoupler:
    loaded, probe = adapted
    opts = {"estimator": "mean-diff", "reference_estimator": "mean-diff", "layers": (2,)}
    return OnlineDecoupler(DecouplerConfig(**(opts | kw)), probe, loaded.num_layers)


def test_fit_fraction_draws_fresh_rows_after_step_zero_and_keeps_the_held_out_whole(adapted):
    dec = _decoupler(adapted, fit_fraction=0.5)
    groups = {s.group for s in dec.fit_on}
    assert {s.group for s in dec.fit_rows(0)} == groups  # step 0: every row
    dec.last_refresh = 0
    draws = [{s.group for s in dec.fit_rows(step)} for step in (100, 200)]
    for drawn in draws:
        assert len(drawn) == round(0.5 * len(groups)) and drawn < groups
        # both varieties of each drawn aligned row
        rows = dec.fit_rows(100)
        assert len(rows) == 2 * len({s.group for s in rows})
    assert draws[0] != draws[1]  # a fresh draw per refresh
    twin = _decoupler(adapted, fit_fraction=0.5)
    twin.last_refresh = 0
    assert {s.group for s in twin.fit_rows(200)} == draws[1]  # seeded: a resume draws the same
    assert _decoupler(adapted).fit_rows(100) == dec.fit_on  # default: all rows


def test_refresh_reads_the_drawn_rows_and_logs_whole_overlaps(adapted, monkeypatch):
    loaded, _ = adapted
    dec = _decoupler(adapted, fit_fraction=0.25)
    seen: list[int] = []
    states = dec.states

    def spy(model, tokenizer, sentences):
        seen.append(len(sentences))
        return states(model, tokenizer, sentences)

    monkeypatch.setattr(dec, "states", spy)
    dec.refresh(loaded.model, loaded.tokenizer, 0)
    log = dec.refresh(loaded.model, loaded.tokenizer, 100)
    assert seen == [len(dec.fit_on), len(dec.measure), len(dec.fit_rows(100)), len(dec.measure)]
    assert seen[2] < seen[0]
    assert set(log["overlap"]["2"]) == {"deu_Latn", "nds_Latn"}


def test_new_options_are_validated():
    for bad in ({"probe_dtype": "fp16"}, {"fit_fraction": 0.0}, {"fit_fraction": 1.5}):
        with pytest.raises(ValueError, match="decoupler"):
            DecouplerConfig(**bad)
