"""OnlineDecoupler on a tiny random Llama: schedule, refresh, reference, penalty, resume."""

import pytest
import torch

from conftest import CORPORA, Sentence
from vardecouple.decouple import DecouplerConfig, OnlineDecoupler, projection_penalty
from vardecouple.model.load import load_model
from vardecouple.model.states import capture

pytestmark = pytest.mark.usefixtures("corpora")


def _lines(folder: str, code: str, n: int) -> list[str]:
    path = CORPORA / folder / f"{code}.txt"
    return path.read_text(encoding="utf-8").splitlines()[:n]


@pytest.fixture(scope="module")
def tiny():
    deu, nds = (
        _lines("tatoeba-deu-nds", "deu_Latn", 120),
        _lines("tatoeba-deu-nds", "nds_Latn", 120),
    )
    probe = [Sentence(t, "deu_Latn", 0, i) for i, t in enumerate(deu)]
    probe += [Sentence(t, "nds_Latn", 1, i) for i, t in enumerate(nds)]
    loaded = load_model("tiny-random", corpus_texts=deu + nds)
    return loaded, probe


def _decoupler(tiny, **kw) -> OnlineDecoupler:
    loaded, probe = tiny
    return OnlineDecoupler(DecouplerConfig(**kw), probe, loaded.num_layers)


def test_config_is_validated() -> None:
    for bad in ({"refresh_every": 0}, {"lam": -0.1}, {"form": "cube"}, {"tokens": "some"}):
        with pytest.raises(ValueError, match="decoupler"):
            DecouplerConfig(**bad)


def test_schedule_and_lambda(tiny) -> None:
    dec = _decoupler(tiny, refresh_every=3, warmup_steps=4, lam=0.1)
    assert dec.layers == (2,)  # the middle of 4 layers
    assert dec.due(0)
    dec.last_refresh = 0
    assert [dec.due(s) for s in range(1, 7)] == [False, False, True, True, True, True]
    assert dec.lam_at(0) == pytest.approx(0.025) and dec.lam_at(3) == pytest.approx(0.1)
    assert _decoupler(tiny, penalize=False).lam_at(10) == 0.0
    held = {s.group for s in dec.measure}
    assert held and not held & {s.group for s in dec.fit_on}  # split by aligned row


def test_refresh_logs_overlap_and_penalty_has_gradients(tiny) -> None:
    loaded, _ = tiny
    dec = _decoupler(tiny, layers=(1, 3))
    log = dec.refresh(loaded.model, loaded.tokenizer, step=0)
    assert set(dec.subspaces) == set(dec.reference) == {1, 3}
    for layer in ("1", "3"):
        for variety in ("deu_Latn", "nds_Latn"):
            values = log["overlap"][layer][variety]
            assert 0.0 <= values["own"] <= 1.0 and 0.0 <= values["reference"] <= 1.0
    enc = loaded.tokenizer(["Dat is good.", "Das ist gut so."], return_tensors="pt", padding=True)
    loaded.model.train()
    with capture(loaded.model, dec.layers) as hidden:
        loaded.model(**enc)
    mask = dec.token_mask(enc["attention_mask"], enc["attention_mask"], torch.tensor([True, False]))
    value = dec.penalty(hidden, mask)
    value.backward()
    assert torch.isfinite(value) and value > 0
    grads = [p.grad for p in loaded.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    loaded.model.zero_grad()
    log2 = dec.refresh(loaded.model, loaded.tokenizer, step=5)
    assert set(log2["angle_to_previous"]) == {"1", "3"}


def test_token_rules(tiny) -> None:
    att = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    tgt = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 1]])
    low = torch.tensor([False, True])
    m_all = _decoupler(tiny, tokens="all").token_mask(att, tgt, low)
    assert m_all.tolist() == [[False, True, True, False], [False, True, True, True]]
    m_tgt = _decoupler(tiny, tokens="target").token_mask(att, tgt, low)
    assert m_tgt.tolist() == [[False, True, True, False], [False, False, True, True]]
    m_low = _decoupler(tiny, tokens="low-resource").token_mask(att, tgt, low)
    assert m_low.tolist() == [[False] * 4, [False, True, True, True]]


def test_state_dict_round_trip(tiny) -> None:
    loaded, _ = tiny
    a = _decoupler(tiny)
    a.refresh(loaded.model, loaded.tokenizer, step=0)
    b = _decoupler(tiny)
    b.load_state_dict(a.state_dict())
    assert b.last_refresh == 0
    torch.testing.assert_close(b.subspaces[2].basis, a.subspaces[2].basis)
    la = a.refresh(loaded.model, loaded.tokenizer, step=7)
    lb = b.refresh(loaded.model, loaded.tokenizer, step=7)
    assert la == lb


def test_prompt_context_reads_target_tokens_of_translation_prompts(tiny) -> None:
    from vardecouple.data import probe_prompts
    from vardecouple.model.states import target_states

    loaded, probe = tiny
    kept, prompts, targets = probe_prompts(probe[:3] + probe[120:122])
    assert [s.text for s in kept] == [
        probe[0].text,
        probe[1].text,
        probe[120].text,
        probe[121].text,
    ]
    assert prompts[0].startswith("Translate from Low German to German.")  # partner: same row
    assert probe[120].text in prompts[0] and probe[0].text in prompts[2]
    texts = [s.text for s in kept]
    assert targets == [f" {t}\n" for t in texts]
    states, owner = target_states(loaded.model, loaded.tokenizer, prompts, targets, [1])
    n_target = [
        len(loaded.tokenizer.encode(" " + t + "\n", add_special_tokens=False)) for t in texts
    ]
    assert owner.bincount().tolist() == n_target
    assert states[1].shape == (sum(n_target), loaded.hidden_size)
    dec = _decoupler(tiny, context="prompt")
    log = dec.refresh(loaded.model, loaded.tokenizer, step=0)
    assert set(log["overlap"]["2"]) == {"deu_Latn", "nds_Latn"}


def test_refresh_logs_the_held_out_penalty_under_previous_new_and_reference_u(tiny) -> None:
    """Checked against the penalty computed directly on the held-out states, with the
    subspaces kept from each refresh (a changed model between refreshes, so that the
    previous and the new ``U`` differ)."""
    loaded, _ = tiny
    dec = _decoupler(tiny, layers=(1,), estimator="mean-diff", form="norm")
    first = dec.refresh(loaded.model, loaded.tokenizer, step=0)["held_out_penalty"]["1"]
    u0 = dec.subspaces[1]
    assert set(first) == {"own", "reference"}  # nothing was trained against before step 0
    with torch.no_grad():
        for p in loaded.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    second = dec.refresh(loaded.model, loaded.tokenizer, step=4)["held_out_penalty"]["1"]
    states, _, _ = dec.states(loaded.model, loaded.tokenizer, dec.measure)
    direct = {
        "previous": projection_penalty(states[1], None, u0, "norm"),
        "own": projection_penalty(states[1], None, dec.subspaces[1], "norm"),
        "reference": projection_penalty(states[1], None, dec.reference[1], "norm"),
    }
    assert set(second) == set(direct)
    for name, value in direct.items():
        assert second[name] == pytest.approx(float(value), rel=1e-5), name
    assert second["previous"] != pytest.approx(second["own"], rel=1e-3)
