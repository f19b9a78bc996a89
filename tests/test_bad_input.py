"""Bad input: each malformed corpus, config or argument gives exactly one error line
(what, where, what was expected), exit status 2, no traceback, and leaves existing
output untouched."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from conftest import CORPORA, MINI_CORE
from vardecouple.cli import main

DEU = (CORPORA / "tatoeba-deu-nds" / "deu_Latn.txt").read_text("utf-8").splitlines()[:30]
NDS = (CORPORA / "tatoeba-deu-nds" / "nds_Latn.txt").read_text("utf-8").splitlines()[:30]


def _lines(folder: Path, files: dict[str, bytes | str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else content.encode("utf-8")
        (folder / name).write_bytes(data)
    return folder


def _good() -> dict[str, str]:
    return {"deu_Latn.txt": "\n".join(DEU) + "\n", "nds_Latn.txt": "\n".join(NDS) + "\n"}


MADAR_HEAD = "sentID.BTEC\tsplit\tlang\tsent\n"
ROWS_TSV = "".join(f"{a}\t{b}\n" for a, b in zip(DEU, NDS, strict=True))

# name -> (files of the corpus (a folder, or one file when the name has a suffix),
#          extra probe arguments, expected words in the error line)
CORPUS_CASES: dict[str, tuple[dict[str, bytes | str], list[str], str]] = {
    "mismatched-line-counts": (
        _good() | {"nds_Latn.txt": "\n".join(NDS[:-1]) + "\n"}, [], "lines"),
    "empty-line": (
        _good() | {"nds_Latn.txt": "\n".join([*NDS[:5], "", *NDS[6:]]) + "\n"}, [], "empty line"),
    "invalid-utf8": (
        _good() | {"nds_Latn.txt": b"\xff\xfe broken\n" * 30}, [], "UTF-8"),
    "bom": (_good() | {"nds_Latn.txt": "\ufeff" + "\n".join(NDS) + "\n"}, [], "BOM"),
    "empty-file": (_good() | {"nds_Latn.txt": ""}, [], "empty"),
    "empty-folder": ({}, [], "empty folder"),
    "not-a-variety-code": (_good() | {"german.txt": "\n".join(DEU) + "\n"}, [], "german"),
    "unknown-variety": (_good(), ["--varieties", "xyz_Latn"], "xyz_Latn"),
    "standard-missing": (_good(), ["--standard", "fra_Latn"], "fra_Latn"),
    "only-the-standard": ({"deu_Latn.txt": "\n".join(DEU) + "\n"}, [], "variety other than"),
    "duplicate-variety-in-tsv": (
        {"c.tsv": "deu_Latn\tdeu_Latn\n" + ROWS_TSV},
        [], "twice"),
    "tsv-short-row": (
        {"c.tsv": "deu_Latn\tnds_Latn\n" + f"{DEU[0]}\n"}, [], "line 2"),
    "jsonl-not-json": ({"c.jsonl": '{"deu_Latn": "a", "nds_Latn": "b"}\n{oops\n'}, [], "line 2"),
    "madar-missing-column": (
        {"m.tsv": "sentID.BTEC\tsplit\tlang\n1\tcorpus-6-test\tMSA\n"}, [], "sent"),
    "madar-duplicate-id": (
        {"m.tsv": MADAR_HEAD + "1\tcorpus-6-test\tMSA\tجملة\n1\tcorpus-6-test\tMSA\tأخرى\n"},
        ["--standard", "MSA"], "duplicate"),
}  # fmt: skip


def _one_line(capsys, code: int, expected: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert expected.lower() in err.lower(), err
    return err


@pytest.mark.parametrize("case", list(CORPUS_CASES))
def test_bad_corpus_is_one_line_and_touches_nothing(case: str, tmp_path: Path, capsys) -> None:
    files, extra, expected = CORPUS_CASES[case]
    single = [n for n in files if "." in n and not n.endswith(".txt")]
    root = _lines(tmp_path / "corpus", files)
    corpus = root / single[0] if single else root
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("finished result")
    args = ["probe", "--model", "tiny-random", "--corpus", str(corpus), "--out", str(out)]
    if "--standard" not in extra:
        args += ["--standard", "deu_Latn"]
    err = _one_line(capsys, main(args + extra), expected)
    assert str(root.name) in err or "variet" in err or "standard" in err  # names where
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "finished result"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def _gguf_not(tmp_path: Path) -> str:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(struct.pack("<4s", b"NOPE") + b"\0" * 64)
    return str(fake)


# name -> (edit of the mini config, expected words); run with `vardecouple run`
CONFIG_CASES: dict[str, tuple[object, str]] = {
    "toml-syntax": (lambda t, p: t.replace("[train]", "[train"), "TOML"),
    "unknown-key": (lambda t, p: t.replace("steps = 4", "stpes = 4"), "did you mean 'steps'"),
    "negative-lambda": (lambda t, p: t.replace("lam = 1.0", "lam = -1.0"), "lam"),
    "refresh-every-zero": (
        lambda t, p: t.replace("refresh_every = 2", "refresh_every = 0"), "refresh_every"),
    "unknown-estimator": (
        lambda t, p: t.replace('estimator = "mean-diff"', 'estimator = "meandiff"', 1),
        "did you mean 'mean-diff'"),
    "unknown-arm-matched": (
        lambda t, p: t.replace('match_penalty_of = "decoupled"', 'match_penalty_of = "dec"'),
        "not another arm"),
    "unknown-arm-kind": (lambda t, p: t.replace('kind = "copy"', 'kind = "cpy"'), "kind"),
    "erase-on-untrained": (
        lambda t, p: t + '[arms.erased]\nkind = "erase"\nerase_on = "base"\n', "erase_on"),
    "missing-model-path": (
        lambda t, p: t.replace('spec = "tiny-random"', f'spec = "{p}/no/such/model"'), "model"),
    "gguf-not-gguf": (
        lambda t, p: t.replace('spec = "tiny-random"', f'spec = "{_gguf_not(p)}"'), "GGUF"),
    "missing-corpus": (
        lambda t, p: t.replace('path = "tatoeba-deu-nds"', 'path = "no-such-corpus"'),
        "no-such-corpus"),
    "no-arms": (lambda t, p: t.split("[arms.copy]")[0], "arm"),
    "standard-not-in-data": (
        lambda t, p: t.replace('standard = "deu_Latn"', 'standard = "fra_Latn"'), "fra_Latn"),
    "layer-out-of-range": (lambda t, p: t.replace("layers = [1]", "layers = [99]"), "99"),
    "rank-over-hidden-size": (
        lambda t, p: t.replace("[decoupler]", "[decoupler]\nrank = 100000"), "hidden size"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_is_one_line_and_touches_nothing(case: str, tmp_path: Path, capsys) -> None:
    edit, expected = CONFIG_CASES[case]
    cfg = _config(tmp_path, edit(MINI_CORE, tmp_path))  # type: ignore[operator]
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}")  # an earlier run's result: must survive
    code = main(["run", str(cfg), "--out", str(tmp_path / "fresh")])
    _one_line(capsys, code, expected)
    assert (out / "results.json").read_text() == "{}"
    assert not (tmp_path / "fresh" / "runs").exists()  # nothing trained


ARG_CASES: dict[str, tuple[list[str], str]] = {
    "missing-config-file": (["run", "nowhere.toml", "--out", "o"], "nowhere.toml"),
    "negative-erase-alpha": (
        ["eval", "--config", "c.toml", "--out", "o", "--erase-alpha", "-1"], "erase-alpha"),
    "bad-erase-layers": (
        ["eval", "--config", "c.toml", "--out", "o", "--erase-layers", "a,b"], "erase-layers"),
    "zero-rank": (["probe", "--model", "m", "--corpus", "c", "--standard", "s", "--out", "o",
                   "--rank", "0"], "rank"),
    "unknown-train-arm": (["train", "c.toml", "--arm", "decoupeld", "--out", "o"],
                          "did you mean 'decoupled'"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ARG_CASES))
def test_bad_arguments_are_one_line(case: str, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(MINI_CORE)
    args, expected = ARG_CASES[case]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    _one_line(capsys, code, expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]


def test_the_suite_has_at_least_thirty_cases() -> None:
    assert len(CORPUS_CASES) + len(CONFIG_CASES) + len(ARG_CASES) >= 30
