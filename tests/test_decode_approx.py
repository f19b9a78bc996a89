"""The approximate decoding options: an output-vocabulary shortlist and bf16 weights."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import decoding_setup
from vardecouple.evaluate.decode import DecodeConfig, decode, prompt_ids, stop_ids

pytestmark = pytest.mark.usefixtures("corpora")

CONFIGS = [
    DecodeConfig(batch_size=8),
    DecodeConfig(batch_size=5, continuous=True, lookup_tokens=4),
]


@pytest.fixture(scope="module")
def setup():
    model, tok, splits, prompts, sources = decoding_setup(test_rows=24)
    # a small shortlist: the tokens of a few training targets
    targets = [e.tgt_text for e in splits.train[:6]]
    shortlist = sorted({t for s in targets for t in tok.encode(s, add_special_tokens=False)})
    return model, tok, prompts, sources, shortlist


def _masked_greedy(model, tok, prompt, source, config, allowed: set[int]) -> str:
    """The reference: one row, no cache, the full logits, argmax over ``allowed`` only."""
    ids = prompt_ids(tok, prompt, config.max_prompt_tokens)
    budget = config.budget(len(tok.encode(source, add_special_tokens=False)))
    keep = torch.tensor(sorted(allowed))
    stops, out = stop_ids(tok), []
    with torch.no_grad():
        while len(out) < budget:
            logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            token = int(keep[logits[keep].argmax()])
            out.append(token)
            if token in stops:
                break
    return tok.decode(out, skip_special_tokens=True).split("\n")[0].strip()


def test_a_shortlist_of_the_whole_vocabulary_changes_nothing_in_float64(setup) -> None:
    model, tok, prompts, sources, _ = setup
    everything = range(model.config.vocab_size)
    exact = decode(model, tok, prompts, sources, CONFIGS[0], progress=False)
    for config in CONFIGS:
        got = decode(model, tok, prompts, sources, config, shortlist=everything, progress=False)
        assert got == exact


@pytest.mark.parametrize("config", CONFIGS, ids=["static", "slots+lookup"])
def test_the_shortlist_argmax_is_each_rows_own_masked_argmax(setup, config) -> None:
    """Row r picks the argmax over the shortlist, its own prompt tokens and the stops —
    computed here directly, one row at a time, from full logits without a cache; so a
    row's hypothesis does not depend on the other rows' prompts."""
    model, tok, prompts, sources, shortlist = setup
    stats: dict[str, int] = {}
    got = decode(model, tok, prompts, sources, config, shortlist=shortlist, progress=False,
                 stats=stats)  # fmt: skip
    exact = decode(model, tok, prompts, sources, config, progress=False)
    assert sum(a != b for a, b in zip(got, exact, strict=True)) >= 4  # the cut matters
    assert stats["shortlist_tokens"] < model.config.vocab_size
    for prompt, source, hyp in zip(prompts, sources, got, strict=True):
        own = set(prompt_ids(tok, prompt, config.max_prompt_tokens))
        allowed = set(shortlist) | own | set(stop_ids(tok))
        assert hyp == _masked_greedy(model, tok, prompt, source, config, allowed)


def test_a_shortlist_with_beam_search_is_refused(setup) -> None:
    model, tok, prompts, sources, shortlist = setup
    with pytest.raises(ValueError, match="greedy decoding only"):
        decode(model, tok, prompts[:2], sources[:2], DecodeConfig(num_beams=2),
               shortlist=shortlist, progress=False)  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS, ids=["static", "slots+lookup"])
def test_bf16_decodes_with_bf16_weights_and_puts_the_originals_back(setup, config) -> None:
    """``dtype="bf16"`` equals decoding a copy of the model with bfloat16 parameters
    (buffers such as rotary frequencies keep their dtype); afterwards the model holds its
    very own float64 tensors again (no round trip through bf16)."""
    model, tok, prompts, sources, _ = setup
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in model.named_parameters()}
    half = copy.deepcopy(model)
    for p in half.parameters():
        p.data = p.data.to(torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())
    reference = decode(half, tok, prompts, sources, config, progress=False)
    bf16 = DecodeConfig(**{**config.__dict__, "dtype": "bf16"})
    assert decode(model, tok, prompts, sources, bf16, progress=False) == reference
    for name, p in model.named_parameters():
        storage, values = before[name]
        assert p.data_ptr() == storage and p.dtype == torch.float64 and torch.equal(p, values)


def test_an_unknown_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match="dtype='fp8'"):
        DecodeConfig(dtype="fp8")


def test_vardecouple_eval_records_the_approximations_and_their_shortlists(tmp_path) -> None:
    """``[eval] dtype = "bf16"`` and ``shortlist = "train-targets"`` reach decoding and
    scores.json says so; each direction's shortlist is the token set of the training
    targets in its target variety (tokenised here the way training tokenises them)."""
    import json

    from conftest import MINI_CORE
    from vardecouple.cli import main
    from vardecouple.experiment.arms import load_base, prepare_data
    from vardecouple.experiment.config import load_config

    text = MINI_CORE.replace("[eval]\n", '[eval]\ndtype = "bf16"\nshortlist = "train-targets"\n')
    (tmp_path / "a.toml").write_text(text)
    (tmp_path / "e.toml").write_text(MINI_CORE)
    assert main(["eval", "--config", str(tmp_path / "a.toml"), "--out", str(tmp_path / "a")]) == 0
    assert main(["eval", "--config", str(tmp_path / "e.toml"), "--out", str(tmp_path / "e")]) == 0
    approx = json.loads((tmp_path / "a" / "scores.json").read_text())["decoding"]
    exact = json.loads((tmp_path / "e" / "scores.json").read_text())["decoding"]
    assert exact["exact"] is True and exact["approximations"] == []
    assert exact["shortlist_tokens"] is None and exact["settings"]["dtype"] == "fp32"
    assert approx["settings"]["dtype"] == "bf16"
    assert approx["exact"] is False
    assert approx["approximations"] == ["dtype=bf16", "shortlist=train-targets"]
    config = load_config(tmp_path / "a.toml")
    splits = prepare_data(config)
    tok = load_base(config, splits).tokenizer
    for direction, size in approx["shortlist_tokens"].items():
        target = direction.split("->")[1]
        ids = {t for ex in splits.train if ex.tgt == target
               for t in tok.encode(f" {ex.tgt_text}\n", add_special_tokens=False)}  # fmt: skip
        assert size == len(ids) > 0


def test_a_shortlist_with_beams_is_a_config_error(tmp_path) -> None:
    """Refused when the config is read, not after hours of training."""
    from conftest import MINI_CORE
    from vardecouple.experiment.config import ConfigError, load_config

    text = MINI_CORE.replace("[eval]\n", '[eval]\nnum_beams = 2\nshortlist = "train-targets"\n')
    (tmp_path / "b.toml").write_text(text)
    with pytest.raises(ConfigError, match="greedy decoding only") as err:
        load_config(tmp_path / "b.toml")
    assert "\n" not in str(err.value)
