"""Files are written atomically (temporary name, then a rename): a failure part-way through
writing `results.json`, a hypotheses file, `train_summary.json`, `probe.json` or a
checkpoint leaves the previous file byte-identical under its name (or, when there was none,
no file at all), never a partial one."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import vardecouple.train.checkpoint as checkpoint_module
from conftest import CORPORA
from vardecouple.evaluate.scoring import read_lines
from vardecouple.io import write_atomic, write_json_atomic, write_lines_atomic
from vardecouple.train.checkpoint import has_checkpoint, load_checkpoint, save_checkpoint

INJECTED = "injected: no space left on device"


def _disk_full() -> OSError:
    return OSError(errno.ENOSPC, INJECTED)


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name → bytes)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _fail_json_dump_half_way(monkeypatch, only: str | None = None) -> list[Path]:
    """``json.dump`` writes half of the text to its file, then the disk is full; returns
    the files it wrote to. ``only``: fail just for files whose name contains it."""
    real_dump, real_dumps, written = json.dump, json.dumps, []

    def dump(obj, handle, **kwargs):
        if only is not None and only not in Path(handle.name).name:
            return real_dump(obj, handle, **kwargs)
        text = real_dumps(obj, **kwargs)
        handle.write(text[: len(text) // 2])
        handle.flush()
        written.append(Path(handle.name))
        raise _disk_full()

    monkeypatch.setattr(json, "dump", dump)
    return written


@pytest.mark.parametrize("name", ["results.json", "train_summary.json"])
def test_json_failing_mid_write_keeps_the_previous_file(tmp_path, monkeypatch, name) -> None:
    path = tmp_path / name
    path.write_text('{"previous": true}\n', encoding="utf-8")
    before = path.read_bytes()
    written = _fail_json_dump_half_way(monkeypatch)
    with pytest.raises(OSError, match=INJECTED):
        write_json_atomic(path, {"schema_version": 1, "runs": {"a": list(range(500))}})
    assert path.read_bytes() == before
    # the half-written text went to another name in the same folder (same file system)
    assert len(written) == 1 and written[0].parent == path.parent and written[0] != path
    monkeypatch.undo()
    write_json_atomic(path, {"new": 1})  # and the next write replaces it whole
    assert json.loads(path.read_text(encoding="utf-8")) == {"new": 1}


class _Exploding(list):
    """Lines whose iteration stops half-way with a full disk."""

    def __iter__(self):
        yield from list.__iter__(self[: len(self) // 2])
        raise _disk_full()


def test_hypotheses_failing_mid_write_keep_the_previous_file(tmp_path) -> None:
    path = tmp_path / "hypotheses" / "deu_Latn->nds_Latn.txt"
    path.parent.mkdir()
    path.write_text("alt 1\nalt 2\nalt 3\n", encoding="utf-8")
    before = path.read_bytes()
    new = [f"nei {i}" for i in range(2000)]
    with pytest.raises(OSError, match=INJECTED):
        write_lines_atomic(path, _Exploding(new))
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".txt")] == [path.name]
    write_lines_atomic(path, new)
    assert read_lines(path, 2000) == new


def _fail_write_text_half_way(monkeypatch, prefix: str) -> list[Path]:
    """``Path.write_text`` on a name starting with ``prefix`` writes half, then fails."""
    real, written = Path.write_text, []

    def write_text(self, data, *args, **kwargs):
        if not self.name.startswith(prefix):
            return real(self, data, *args, **kwargs)
        real(self, data[: len(data) // 2], *args, **kwargs)
        written.append(self)
        raise _disk_full()

    monkeypatch.setattr(Path, "write_text", write_text)
    return written


def test_probe_json_failing_mid_write_keeps_the_previous_file(tmp_path, monkeypatch) -> None:
    """The writer `vardecouple probe` uses (`write_atomic` with `Path.write_text`)."""
    path = tmp_path / "probe.json"
    path.write_text('{"schema": "previous"}\n', encoding="utf-8")
    before = path.read_bytes()
    written = _fail_write_text_half_way(monkeypatch, ".probe.json.")
    text = json.dumps({"results": list(range(2000))})
    with pytest.raises(OSError, match=INJECTED):
        write_atomic(path, lambda t: Path(t).write_text(text, encoding="utf-8"))
    assert path.read_bytes() == before
    assert len(written) == 1 and written[0].parent == path.parent
    assert [p.name for p in tmp_path.iterdir()] == ["probe.json"]  # the partial one removed


@pytest.mark.usefixtures("corpora")
def test_vardecouple_probe_failing_mid_write_leaves_no_probe_json(tmp_path, monkeypatch) -> None:
    from vardecouple.analysis.probing import run_probe

    written = _fail_write_text_half_way(monkeypatch, ".probe.json.")
    out = tmp_path / "probe"
    with pytest.raises(OSError, match=INJECTED):
        run_probe(
            "tiny-random",
            CORPORA / "flores200" / "dev",
            "arb_Arab",
            out,
            varieties=["arz_Arab"],
            layers=[1],
            max_rows=12,
            rank=2,
            progress=False,
        )
    assert len(written) == 1 and written[0].parent == out
    assert not (out / "probe.json").exists()
    assert not [p for p in out.iterdir() if "probe.json" in p.name]  # no partial file left


@pytest.fixture(scope="module")
def tiny_run(corpora):
    """A tiny-random model with LoRA, its training features and a probe decoupler."""
    from vardecouple.data import format_example, load_corpus, make_splits, tokenize_example
    from vardecouple.decouple import DecouplerConfig, OnlineDecoupler
    from vardecouple.model.load import load_model
    from vardecouple.model.lora import add_lora

    corpus = load_corpus(CORPORA / "tatoeba-deu-nds")
    splits = make_splits(
        [corpus],
        standard="deu_Latn",
        varieties=["nds_Latn"],
        directions="standard<->variety",
        dev_rows=10,
        probe_rows=40,
        test_rows=10,
        seed=0,
    )
    loaded = load_model(
        "tiny-random", corpus_texts=[t for r in corpus.rows[:500] for t in r.values()]
    )
    add_lora(loaded, r=4, alpha=8, seed=0)
    features = []
    for ex in splits.train[:40]:
        f = tokenize_example(loaded.tokenizer, *format_example(ex), max_length=48)
        f["low_resource"] = ex.tgt != "deu_Latn"
        features.append(f)

    def decoupler():
        config = DecouplerConfig(
            estimator="mean-diff", reference_estimator="mean-diff", layers=(1,), refresh_every=100
        )
        return OnlineDecoupler(config, splits.probe, loaded.num_layers)

    return loaded, features, decoupler


def test_train_failing_mid_summary_leaves_no_train_summary(tiny_run, tmp_path, monkeypatch) -> None:
    """A partial `train_summary.json` would mark an unfinished run finished."""
    from vardecouple.train.loop import train
    from vardecouple.train.step import TrainConfig

    loaded, features, decoupler = tiny_run
    written = _fail_json_dump_half_way(monkeypatch, only="train_summary.json")
    out = tmp_path / "run"
    with pytest.raises(OSError, match=INJECTED):
        train(
            loaded.model,
            loaded.tokenizer,
            features,
            decoupler(),
            TrainConfig(steps=2, batch_size=4),
            out,
            progress=False,
        )
    assert len(written) == 1 and written[0].parent == out
    assert not (out / "train_summary.json").exists()
    assert (out / "train_log.jsonl").is_file()  # it did train


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lora = nn.Linear(16, 8)
        self.frozen = nn.Linear(8, 2).requires_grad_(False)


@pytest.mark.parametrize("where", ["adapter", "state", "swap"])
def test_checkpoint_failing_mid_write_keeps_the_previous_one(tmp_path, monkeypatch, where) -> None:
    """The second checkpoint fails while its weights or state are written, or between the
    two renames: the first stays byte-identical and loads (from `.checkpoint.old` after a
    failed swap), with its own weights and step."""
    model, folder = _Tiny(), tmp_path / "checkpoint"
    save_checkpoint(folder, model, {"next_step": 4})
    first = _files(folder)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.lora.weight.add_(1.0)
    if where == "adapter":  # safetensors writes half the file, then the disk is full
        real = checkpoint_module.save_file

        def save_file(tensors, filename, *args, **kwargs):
            real(tensors, filename, *args, **kwargs)
            with open(filename, "r+b") as handle:
                handle.truncate(os.path.getsize(filename) // 2)
            raise _disk_full()

        monkeypatch.setattr(checkpoint_module, "save_file", save_file)
    elif where == "state":  # torch.save writes half of state.pt, then the disk is full
        real_save = torch.save

        def save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            with open(f, "r+b") as handle:
                handle.truncate(os.path.getsize(f) // 2)
            raise _disk_full()

        monkeypatch.setattr(checkpoint_module.torch, "save", save)
    else:  # the old checkpoint moved aside, then renaming the new one in fails
        real_replace = os.replace

        def replace(src, dst, *args, **kwargs):
            if Path(src).name == ".checkpoint.tmp":
                raise _disk_full()
            return real_replace(src, dst, *args, **kwargs)

        monkeypatch.setattr(checkpoint_module.os, "replace", replace)
    with pytest.raises(OSError, match=INJECTED):
        save_checkpoint(folder, model, {"next_step": 8})
    monkeypatch.undo()
    kept = folder if where != "swap" else tmp_path / ".checkpoint.old"
    assert _files(kept) == first
    if where == "swap":
        assert not folder.exists()  # the new, complete one was never renamed in
    assert has_checkpoint(folder)
    fresh = _Tiny()
    state = load_checkpoint(folder, fresh)
    assert state["next_step"] == 4
    assert torch.equal(fresh.lora.weight, weights["lora.weight"])
    assert torch.equal(fresh.lora.bias, weights["lora.bias"])


def test_a_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """Every writer goes through vardecouple.io: a failure removes its temp file."""
    from vardecouple.io import write_atomic, write_json_atomic, write_text_atomic

    (tmp_path / "a.json").write_text("old")

    def half(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, "disk full")

    with pytest.raises(OSError):
        write_atomic(tmp_path / "a.json", half)
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "a.json", {"x": object()} | {1j: 1})  # key not JSON
    with pytest.raises(TypeError):
        write_text_atomic(tmp_path / "a.json", None)  # type: ignore[arg-type]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    assert (tmp_path / "a.json").read_text() == "old"
