"""`vardecouple probe` on tiny-random and FLORES dev: probe.json, states, adapters, CLI, plots."""

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import CORPORA
from vardecouple.analysis.plots import CODE_METRICS, METRICS
from vardecouple.analysis.probe_file import merge_probes
from vardecouple.analysis.probing import (
    load_rows,
    model_labels,
    parse_layers,
    run_probe,
    sentence_states,
)
from vardecouple.cli import main
from vardecouple.model.load import load_model
from vardecouple.model.lora import add_lora

pytestmark = pytest.mark.usefixtures("corpora")
FLORES_DEV = CORPORA / "flores200" / "dev"
STANDARD, VARIETIES, ROWS = "arb_Arab", ["arz_Arab", "ary_Arab"], 40


def _texts() -> list[str]:
    codes, rows = load_rows(FLORES_DEV, STANDARD, VARIETIES, ROWS)
    return [t for c in codes for t in rows[c]]


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A LoRA adapter on the probe's tiny-random model with non-zero B (changes states)."""
    loaded = load_model("tiny-random", corpus_texts=_texts())
    add_lora(loaded, r=4, alpha=8, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    folder = tmp_path_factory.mktemp("arm") / "adapter"
    loaded.model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def probe(tmp_path_factory, adapter) -> dict:
    out = tmp_path_factory.mktemp("probe")
    path = run_probe("tiny-random", FLORES_DEV, STANDARD, out, varieties=VARIETIES,
                     adapters=[adapter], max_rows=ROWS, batch_size=16, progress=False)  # fmt: skip
    assert path == out / "probe.json"
    data = json.loads(path.read_text())
    data["_out"] = out
    return data


def test_probe_json_has_every_layer_variety_metric(probe) -> None:
    assert probe["schema"] == "vardecouple.probe/1"
    assert probe["model"] == "tiny-random" and probe["standard"] == STANDARD
    assert probe["varieties"] == VARIETIES and probe["rows"] == ROWS and probe["rank"] == 4
    assert probe["layers"] == [0, 1, 2, 3] and probe["seconds"] > 0
    assert list(probe["results"]) == ["base", "adapter"]
    assert list(probe["adapters"]) == ["adapter"]
    for model in probe["results"].values():
        assert list(model) == ["0", "1", "2", "3"]
        for layer in model.values():
            assert list(layer) == [*VARIETIES, "all"]
            for v in VARIETIES:
                m = layer[v]
                assert list(m) == list(METRICS)
                assert all(isinstance(x, float) and math.isfinite(x) for x in m.values())
                assert 0 <= m["cka"] <= 1 + 1e-9 and 0 <= m["overlap"] <= 1 + 1e-9
                assert 0 <= m["angle_mean"] <= m["angle_largest"] <= 90 + 1e-9
                assert m["l2"] > 0 and 0 < m["cosine"] <= 2
                assert m["online_codelength"] > 0 and m["variational_codelength"] > 0
            assert list(layer["all"]) == list(CODE_METRICS)
            assert all(math.isfinite(x) for x in layer["all"].values())


def test_adapter_changes_the_states(probe) -> None:
    base, tuned = probe["results"]["base"], probe["results"]["adapter"]
    for layer in ("0", "3"):
        for v in VARIETIES:
            assert abs(base[layer][v]["l2"] - tuned[layer][v]["l2"]) > 1e-4


def test_plots_are_pngs(probe) -> None:
    plots = probe["_out"] / "plots"
    assert sorted(p.name for p in plots.iterdir()) == sorted(f"probe_{m}.png" for m in METRICS)
    for p in plots.iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parts_probed_apart_merge_into_the_whole_probe(probe, adapter, tmp_path) -> None:
    """The base and the adapter probed in two calls (as a run probes each adapter when
    it is made) merge into the numbers of one call; parts of other rows are refused."""
    kw = {"varieties": VARIETIES, "max_rows": ROWS, "batch_size": 16, "progress": False}
    base = run_probe("tiny-random", FLORES_DEV, STANDARD, tmp_path / "base", **kw)
    tuned = run_probe("tiny-random", FLORES_DEV, STANDARD, tmp_path / "arm", adapters=[adapter],
                      include_base=False, plots=False, **kw)  # fmt: skip
    assert list(json.loads(tuned.read_text())["results"]) == ["adapter"]
    assert not (tmp_path / "arm" / "plots").exists()
    merged = json.loads(merge_probes([base, tuned], tmp_path / "all").read_text())
    assert merged["results"] == probe["results"] and merged["adapters"] == probe["adapters"]
    assert (tmp_path / "all" / "plots" / "probe_overlap.png").is_file()
    fewer = run_probe("tiny-random", FLORES_DEV, STANDARD, tmp_path / "fewer", adapters=[adapter],
                      include_base=False, plots=False, **kw | {"max_rows": ROWS - 1})  # fmt: skip
    with pytest.raises(ValueError, match=r"differs from .* in rows"):
        merge_probes([base, fewer], tmp_path / "bad")
    with pytest.raises(ValueError, match="probes adapter again"):
        merge_probes([tuned, tuned], tmp_path / "twice")
    assert not (tmp_path / "bad").exists() and not (tmp_path / "twice").exists()


def test_one_forward_states_match_a_direct_computation() -> None:
    texts = _texts()
    loaded = load_model("tiny-random", corpus_texts=texts)
    model, tok = loaded.model, loaded.tokenizer
    sample = texts[:6] + texts[-6:]
    calls = {"body": 0, "head": 0, "last": 0}

    def count(key: str):
        return lambda *_: calls.__setitem__(key, calls[key] + 1)

    hooks = [
        model.model.register_forward_pre_hook(count("body")),
        model.lm_head.register_forward_hook(count("head")),
        model.model.layers[3].register_forward_hook(count("last")),
    ]
    try:
        states = sentence_states(model, tok, sample, [0, 1, 2], batch_size=5)
    finally:
        for h in hooks:
            h.remove()
    # 3 batches, each one forward pass of the body, stopped after layer 2, no LM head
    assert calls == {"body": 3, "head": 0, "last": 0}
    assert all(s.shape == (len(sample), loaded.hidden_size) for s in states.values())
    with torch.no_grad():
        for i, text in enumerate(sample):
            enc = tok(text, return_tensors="pt")
            assert enc["input_ids"][0, 0] == tok.bos_token_id
            hidden = model(**enc, output_hidden_states=True).hidden_states
            for layer in (0, 1, 2):
                direct = hidden[layer + 1][0, 1:].mean(0)  # all tokens but the BOS
                torch.testing.assert_close(states[layer][i], direct, atol=1e-5, rtol=1e-5)


def test_parse_layers_and_labels() -> None:
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("3,0, 3", 4) == [0, 3] and parse_layers([2, 1], 4) == [1, 2]
    with pytest.raises(ValueError, match=r"model m has layers 0\.\.3"):
        parse_layers("0,4", 4, "m")
    with pytest.raises(ValueError, match="expected 'all'"):
        parse_layers("top", 4)
    labels = model_labels(["/r/standard/adapter", "/r/decoupled/adapter", "/x/base", "/y/a"])
    assert labels == ["standard/adapter", "decoupled/adapter", "x/base", "a"]


def _cli(capsys, *args: str) -> tuple[int, str]:
    rc = main(["probe", "--model", "tiny-random", "--corpus", str(FLORES_DEV), *args])
    return rc, capsys.readouterr().err.strip()


def test_cli_errors_are_one_line(tmp_path, capsys) -> None:
    rc, err = _cli(
        capsys, "--standard", STANDARD, "--varieties", "xyz_Arab", "--out", str(tmp_path)
    )
    assert rc == 2 and "\n" not in err and "xyz_Arab" in err and str(FLORES_DEV) in err
    assert "arz_Arab" in err and "ary_Arab" in err  # lists the codes found
    rc, err = _cli(capsys, "--standard", STANDARD, "--varieties", "arz_Arab", "--layers", "0,9",
                   "--max-rows", "10", "--out", str(tmp_path))  # fmt: skip
    assert rc == 2 and "\n" not in err and "0..3" in err and "9" in err
    rc, err = _cli(capsys, "--standard", STANDARD, "--adapter", str(tmp_path), "--out",
                   str(tmp_path / "o"))  # fmt: skip
    assert rc == 2 and "\n" not in err and "adapter_config.json" in err
    existing = tmp_path / "probe.json"
    existing.write_text("keep me")
    rc, err = _cli(capsys, "--standard", STANDARD, "--out", str(tmp_path))
    assert rc == 2 and "\n" not in err and "exists" in err
    assert existing.read_text() == "keep me"
    assert not (tmp_path / "plots").exists()
