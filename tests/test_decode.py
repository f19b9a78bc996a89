"""Batched greedy decoding: padding-independent, equal to ``generate``, stops right."""

from __future__ import annotations

import pytest
import torch

from conftest import decoding_setup
from vardecouple.evaluate.decode import DecodeConfig, decode, prompt_ids, stop_ids

pytestmark = pytest.mark.usefixtures("corpora")


@pytest.fixture(scope="module")
def decoding():
    return decoding_setup(test_rows=32)


@pytest.fixture(scope="module")
def setup(decoding):
    model, tok, _, prompts, sources = decoding
    return model, tok, prompts, sources


def test_batch_size_does_not_change_hypotheses_in_float64(setup) -> None:
    model, tok, prompts, sources = setup
    one = decode(model, tok, prompts, sources, DecodeConfig(batch_size=1), progress=False)
    eight = decode(model, tok, prompts, sources, DecodeConfig(batch_size=8), progress=False)
    assert len(set(one)) > len(one) // 2  # the check is not vacuous
    assert one == eight


def test_greedy_equals_transformers_generate_row_by_row(setup) -> None:
    model, tok, prompts, sources = setup
    config = DecodeConfig(batch_size=8, max_new_tokens=24)
    ours = decode(model, tok, prompts[:12], sources[:12], config, progress=False)
    stops = sorted(stop_ids(tok))
    for prompt, source, hyp in zip(prompts[:12], sources[:12], ours, strict=True):
        ids = torch.tensor([prompt_ids(tok, prompt, config.max_prompt_tokens)])
        budget = config.budget(len(tok.encode(source, add_special_tokens=False)))
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=budget,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=tok.pad_token_id,
        )
        text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        assert hyp == text.split("\n")[0].strip()


def test_budget_follows_the_source_length(setup) -> None:
    model, tok, prompts, sources = setup
    short = DecodeConfig(length_ratio=0.25, extra_tokens=0)
    cut = decode(model, tok, prompts[:8], sources[:8], short, progress=False)
    full = decode(model, tok, prompts[:8], sources[:8], progress=False)
    assert all(len(a) <= len(b) for a, b in zip(cut, full, strict=True))
    assert sum(len(a) < len(b) for a, b in zip(cut, full, strict=True)) >= 4
    assert short.budget(10) == 3 and DecodeConfig(max_new_tokens=5).budget(100) == 5


def test_a_trained_stop_ends_the_hypothesis(setup) -> None:
    model, tok, prompts, sources = setup
    newline = [i for i in stop_ids(tok) if "\n" in tok.decode([i])]
    assert newline
    # make every next token a newline: hypotheses are empty
    bias = torch.zeros(model.config.vocab_size, dtype=torch.float64)
    bias[newline[0]] = 1e6
    head = model.lm_head
    old = head.bias
    head.bias = torch.nn.Parameter(bias)
    try:
        hyps = decode(model, tok, prompts[:4], sources[:4], progress=False)
    finally:
        head.bias = old
    assert hyps == ["", "", "", ""]


def test_a_resumed_evaluation_reads_finished_directions_back_and_counts_what_it_decodes(
    decoding, tmp_path
) -> None:
    """``evaluate_model`` after an interruption: a direction whose hypotheses file has the
    right number of lines is read back (not decoded again, not counted as decoded); one
    of another length is decoded again. ``sentences`` is what ``run --plan``'s rate per
    sentence divides ``seconds`` by."""
    from vardecouple.evaluate.scoring import evaluate_model
    from vardecouple.io import write_lines_atomic

    model, tok, splits, _, _ = decoding
    tests: dict[str, list] = {}
    for ex in splits.test[:32]:
        tests.setdefault(f"{ex.src}->{ex.tgt}", []).append(ex)
    first, second = tests  # both directions are among the first 32 rows
    config = DecodeConfig(batch_size=8, max_new_tokens=16)
    whole = evaluate_model(model, tok, tests, tmp_path / "whole", decode_config=config,
                           progress=False)  # fmt: skip
    assert whole.sentences == 32 and whole.seconds > 0
    assert [len(whole.hypotheses[d]) for d in tests] == [len(tests[d]) for d in tests]

    folder = tmp_path / "resumed"
    marker = ["(finished before the interruption)"] * len(tests[first])
    write_lines_atomic(folder / "hypotheses" / f"{first}.txt", marker)
    resumed = evaluate_model(model, tok, tests, folder, decode_config=config, progress=False)
    assert resumed.hypotheses[first] == marker  # read back
    assert resumed.hypotheses[second] == whole.hypotheses[second]
    assert resumed.sentences == len(tests[second])

    write_lines_atomic(folder / "hypotheses" / f"{first}.txt", marker[:-1])  # another size
    again = evaluate_model(model, tok, tests, folder, decode_config=config, progress=False)
    assert again.hypotheses == whole.hypotheses
    assert again.sentences == len(tests[first])


def test_bad_config_is_rejected() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        DecodeConfig(batch_size=0)
    with pytest.raises(ValueError, match="length_ratio"):
        DecodeConfig(length_ratio=0)


def test_beam_search_returns_one_hypothesis_per_prompt_in_order(setup) -> None:
    model, tok, prompts, sources = setup
    config = DecodeConfig(batch_size=4, num_beams=3, max_new_tokens=12)
    beams = decode(model, tok, prompts[:6], sources[:6], config, progress=False)
    singles = [
        decode(model, tok, [p], [s], config, progress=False)[0]
        for p, s in zip(prompts[:6], sources[:6], strict=True)
    ]
    assert beams == singles and all(isinstance(h, str) for h in beams)


SLOTS = [
    DecodeConfig(batch_size=8, continuous=True),
    DecodeConfig(batch_size=8, lookup_tokens=4),
    DecodeConfig(batch_size=5, continuous=True, lookup_tokens=6),
    DecodeConfig(batch_size=1, continuous=True, lookup_tokens=3),
    DecodeConfig(batch_size=16, continuous=True, lookup_tokens=8, lookup_ngram=1),
]


@pytest.mark.parametrize("config", SLOTS, ids=lambda c: f"slots{c.batch_size}-"
                         f"{'cont' if c.continuous else 'static'}-k{c.lookup_tokens}")  # fmt: skip
def test_continuous_batching_and_prompt_lookup_equal_plain_greedy_in_float64(
    setup, config, monkeypatch
) -> None:
    """Refilled slots and verified drafts pick exactly the tokens of plain greedy
    decoding (float64: no near-ties); the drafts are really used, rows really joined
    and the cache really repacked (else the check would be vacuous)."""
    import vardecouple.evaluate.slots as decode_module

    model, tok, prompts, sources = setup
    plain = decode(model, tok, prompts, sources, DecodeConfig(batch_size=8), progress=False)
    repacks, joins = [], []
    real_repack, real_pad = decode_module._repack, decode_module._left_pad_cache
    monkeypatch.setattr(decode_module, "_repack", lambda *a: repacks.append(1) or real_repack(*a))
    monkeypatch.setattr(decode_module, "_left_pad_cache",
                        lambda *a: joins.append(1) or real_pad(*a))  # fmt: skip
    stats: dict[str, int] = {}
    got = decode(model, tok, prompts, sources, config, progress=False, stats=stats)
    assert got == plain
    if config.lookup_tokens:
        assert stats["accepted"] > 0 and stats["drafted"] > stats["accepted"]
    if config.continuous and 1 < config.batch_size < len(prompts):
        assert joins  # rows were prefilled and joined to a running batch
    if config.lookup_tokens >= 6:
        assert repacks  # rejected drafts were dropped from the cache


def test_prompt_lookup_drafts_what_followed_the_tail() -> None:
    from vardecouple.evaluate.slots import _draft

    assert _draft([5, 6, 7, 8, 9, 6, 7], ngram=3, k=2) == [8, 9]  # tail 6 7 occurred before
    assert _draft([1, 2, 3, 1, 2, 4, 1, 2], ngram=2, k=3) == [4, 1, 2]  # the latest occurrence
    assert _draft([1, 2, 3], ngram=3, k=4) == []  # the tail occurs nowhere earlier
    assert _draft([1, 2, 3, 1], ngram=3, k=0) == []
