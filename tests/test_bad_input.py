"""Bad input: each malformed corpus, config or argument gives exactly one error line
(what, where, what was expected), exit status 2, no traceback, and writes nothing: each
case is pointed at a folder holding a finished output of its command and at a fresh
folder, and both trees are byte-for-byte unchanged after it (every file hashed). For one
case per command, the corrected command then succeeds in that same fresh folder."""

from __future__ import annotations

import hashlib
import shutil
import struct
from pathlib import Path

import pytest

from conftest import CORPORA, MINI_CORE
from vardecouple.cli import main

pytestmark = pytest.mark.usefixtures("corpora")  # missing corpora: one line, per test


def _first_rows(code: str) -> list[str]:
    path = CORPORA / "tatoeba-deu-nds" / f"{code}.txt"
    return path.read_text("utf-8").splitlines()[:30] if path.is_file() else ["-"] * 30


DEU, NDS = _first_rows("deu_Latn"), _first_rows("nds_Latn")


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
#          extra probe arguments, expected words in the error line, the file/code named)
CORPUS_CASES: dict[str, tuple[dict[str, bytes | str], list[str], str, str]] = {
    "mismatched-line-counts": (
        _good() | {"nds_Latn.txt": "\n".join(NDS[:-1]) + "\n"}, [], "lines", "nds_Latn.txt"),
    "empty-line": (
        _good() | {"nds_Latn.txt": "\n".join([*NDS[:5], "", *NDS[6:]]) + "\n"}, [], "empty line",
        "nds_Latn.txt"),
    "invalid-utf8": (
        _good() | {"nds_Latn.txt": b"\xff\xfe broken\n" * 30}, [], "UTF-8", "nds_Latn.txt"),
    "bom": (_good() | {"nds_Latn.txt": "\ufeff" + "\n".join(NDS) + "\n"}, [], "BOM",
            "nds_Latn.txt"),
    "empty-file": (_good() | {"nds_Latn.txt": ""}, [], "empty", "nds_Latn.txt"),
    "empty-folder": ({}, [], "empty folder", "corpus"),
    "not-a-variety-code": (_good() | {"german.txt": "\n".join(DEU) + "\n"}, [], "german",
                           "german.txt"),
    "unknown-variety": (_good(), ["--varieties", "xyz_Latn"], "xyz_Latn", "xyz_Latn"),
    "standard-missing": (_good(), ["--standard", "fra_Latn"], "fra_Latn", "fra_Latn"),
    "only-the-standard": ({"deu_Latn.txt": "\n".join(DEU) + "\n"}, [], "variety other than",
                          "corpus"),
    "duplicate-variety-in-tsv": (
        {"c.tsv": "deu_Latn\tdeu_Latn\n" + ROWS_TSV},
        [], "twice", "c.tsv"),
    "tsv-short-row": (
        {"c.tsv": "deu_Latn\tnds_Latn\n" + f"{DEU[0]}\n"}, [], "line 2", "c.tsv"),
    "jsonl-not-json": ({"c.jsonl": '{"deu_Latn": "a", "nds_Latn": "b"}\n{oops\n'}, [], "line 2",
                       "c.jsonl"),
    "madar-missing-column": (
        {"m.tsv": "sentID.BTEC\tsplit\tlang\n1\tcorpus-6-test\tMSA\n"}, [], "sent", "m.tsv"),
    "madar-duplicate-id": (
        {"m.tsv": MADAR_HEAD + "1\tcorpus-6-test\tMSA\tجملة\n1\tcorpus-6-test\tMSA\tأخرى\n"},
        ["--standard", "MSA"], "duplicate", "m.tsv"),
}  # fmt: skip


def _one_line(capsys, code: int, expected: str, where: str) -> str:
    """Exit 2, one line on stderr, no traceback, the expected words and the offending
    file, key or flag (``where``) named."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 0, err
    assert expected.lower() in err.lower(), err
    assert where in err, f"{where!r} not named in: {err}"
    return err


def _tree(folder: Path) -> dict[str, str] | None:
    """Every file (SHA-256) and folder under ``folder``; None when it does not exist."""
    if not folder.exists():
        return None
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        if p.is_file() else "folder"
        for p in sorted(folder.rglob("*"))
    }  # fmt: skip


#: a 1-seed, few-row version of the mini experiment: cheap to finish, and to re-run
TINY = (MINI_CORE.replace("seeds = [0, 1]", "seeds = [0]")
        .replace("test_rows = 20", "test_rows = 4")
        .replace("max_train_examples = 300", "max_train_examples = 40"))  # fmt: skip
PROBE_ARGS = ["--model", "tiny-random", "--max-rows", "20", "--rank", "2"]
DEMO_ARGS = ["--quick", "--pretrain-steps", "10", "--steps", "2", "--test-rows", "4"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> dict[str, Path]:
    """A finished output folder of each command (run, train, eval, probe, demo)."""
    root = tmp_path_factory.mktemp("finished")
    cfg = root / "c.toml"
    cfg.write_text(TINY)
    corpus = _lines(root / "corpus", _good())
    outs = {k: root / k for k in ("run", "train", "eval", "probe", "demo")}
    assert main(["run", str(cfg), "--out", str(outs["run"])]) == 0
    assert main(["train", str(cfg), "--arm", "decoupled", "--out", str(outs["train"])]) == 0
    assert main(["eval", "--config", str(cfg), "--out", str(outs["eval"])]) == 0
    probe = ["probe", *PROBE_ARGS, "--corpus", str(corpus), "--standard", "deu_Latn"]
    assert main([*probe, "--out", str(outs["probe"])]) == 0
    assert main(["demo", *DEMO_ARGS, "--out", str(outs["demo"])]) == 0
    return outs


def _target(kind: str, which: str, finished: dict[str, Path], tmp_path: Path) -> Path:
    """A copy of a finished ``kind`` folder, or a fresh path the user would re-use."""
    if which == "fresh":
        return tmp_path / "fresh"
    out = tmp_path / "done"
    shutil.copytree(finished[kind], out)
    return out


@pytest.mark.parametrize("which", ["finished", "fresh"])
@pytest.mark.parametrize("case", list(CORPUS_CASES))
def test_bad_corpus_is_one_line_and_touches_nothing(
    case: str, which: str, tmp_path: Path, capsys, finished
) -> None:
    files, extra, expected, where = CORPUS_CASES[case]
    single = [n for n in files if "." in n and not n.endswith(".txt")]
    root = _lines(tmp_path / "corpus", files)
    corpus = root / single[0] if single else root
    out = _target("probe", which, finished, tmp_path)
    before = _tree(out)
    args = ["probe", *PROBE_ARGS, "--corpus", str(corpus), "--out", str(out)]
    if "--standard" not in extra:
        args += ["--standard", "deu_Latn"]
    _one_line(capsys, main(args + extra), expected, where)
    assert _tree(out) == before


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def _gguf_not(tmp_path: Path) -> str:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(struct.pack("<4s", b"NOPE") + b"\0" * 64)
    return str(fake)


# name -> (edit of the tiny config, expected words, the key/file named); run with `run`
CONFIG_CASES: dict[str, tuple[object, str, str]] = {
    "toml-syntax": (lambda t, p: t.replace("[train]", "[train"), "TOML", "c.toml"),
    "unknown-key": (lambda t, p: t.replace("steps = 4", "stpes = 4"), "did you mean 'steps'",
                    "train.stpes"),
    "negative-lambda": (lambda t, p: t.replace("lam = 1.0", "lam = -1.0"), "greater than",
                        "decoupler.lam"),
    "refresh-every-zero": (
        lambda t, p: t.replace("refresh_every = 2", "refresh_every = 0"), "greater than",
        "decoupler.refresh_every"),
    "unknown-estimator": (
        lambda t, p: t.replace('estimator = "mean-diff"', 'estimator = "meandiff"', 1),
        "did you mean 'mean-diff'", "decoupler.estimator"),
    "unknown-arm-matched": (
        lambda t, p: t.replace('match_penalty_of = "decoupled"', 'match_penalty_of = "dec"'),
        "not another arm", "arms.random.match_penalty_of"),
    "unknown-arm-kind": (lambda t, p: t.replace('kind = "copy"', 'kind = "cpy"'), "kind",
                         "arms.copy.kind"),
    "erase-on-untrained": (
        lambda t, p: t + '[arms.erased]\nkind = "erase"\nerase_on = "base"\n', "not a trained arm",
        "arms.erased.erase_on"),
    "missing-model-path": (
        lambda t, p: t.replace('spec = "tiny-random"', f'spec = "{p}/no/such/model"'),
        "no such file", "no/such/model"),
    "gguf-not-gguf": (
        lambda t, p: t.replace('spec = "tiny-random"', f'spec = "{_gguf_not(p)}"'), "GGUF",
        "model.gguf"),
    "missing-corpus": (
        lambda t, p: t.replace('path = "tatoeba-deu-nds"', 'path = "no-such-corpus"'),
        "does not exist", "no-such-corpus"),
    "no-arms": (lambda t, p: t.split("[arms.copy]")[0], "no [arms.NAME]", "c.toml"),
    "standard-not-in-data": (
        lambda t, p: t.replace('standard = "deu_Latn"', 'standard = "fra_Latn"'), "fra_Latn",
        "fra_Latn"),
    "layer-out-of-range": (lambda t, p: t.replace("layers = [1]", "layers = [99]"),
                           "out of range", "'decoupler.layers'"),
    "rank-over-hidden-size": (
        lambda t, p: t.replace("[decoupler]", "[decoupler]\nrank = 100000"), "hidden size",
        "'decoupler.rank'"),
}  # fmt: skip


@pytest.mark.parametrize("which", ["finished", "fresh"])
@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_config_is_one_line_and_touches_nothing(
    case: str, which: str, tmp_path: Path, capsys, finished
) -> None:
    edit, expected, where = CONFIG_CASES[case]
    cfg = _config(tmp_path, edit(TINY, tmp_path))  # type: ignore[operator]
    out = _target("run", which, finished, tmp_path)
    before = _tree(out)
    _one_line(capsys, main(["run", str(cfg), "--out", str(out)]), expected, where)
    assert _tree(out) == before


# name -> (command kind, arguments given c.toml / corpus / out, expected words, named)
ARG_CASES: dict[str, tuple[str, object, str, str]] = {
    "missing-config-file": (
        "run", lambda c, k, o: ["run", "nowhere.toml", "--out", o], "no such file",
        "nowhere.toml"),
    "negative-erase-alpha": (
        "eval", lambda c, k, o: ["eval", "--config", c, "--out", o, "--erase-alpha", "-1"],
        "finite number", "--erase-alpha"),
    "bad-erase-layers": (
        "eval", lambda c, k, o: ["eval", "--config", c, "--out", o, "--erase-layers", "a,b"],
        "layer indices", "--erase-layers"),
    "erase-layers-out-of-range": (
        "eval", lambda c, k, o: ["eval", "--config", c, "--out", o, "--erase-layers", "2", "50"],
        "out of range", "--erase-layers"),
    "zero-rank": (
        "probe", lambda c, k, o: ["probe", "--model", "m", "--corpus", k, "--standard", "s",
                                  "--out", o, "--rank", "0"], "positive integer", "--rank"),
    "bad-probe-layers": (
        "probe", lambda c, k, o: ["probe", *PROBE_ARGS, "--corpus", k, "--standard", "deu_Latn",
                                  "--out", o, "--layers", "0", "7"], "out of range", "--layers"),
    "unknown-train-arm": (
        "train", lambda c, k, o: ["train", c, "--arm", "decoupeld", "--out", o],
        "did you mean 'decoupled'", "decoupeld"),
    "demo-model-without-corpus": (
        "demo", lambda c, k, o: ["demo", *DEMO_ARGS, "--out", o, "--model", "gemma3-270m"],
        "needs --corpus", "--model"),
    "demo-corpus-without-standard": (
        "demo", lambda c, k, o: ["demo", *DEMO_ARGS, "--out", o, "--corpus", k],
        "needs --standard", "--standard"),
    "demo-unknown-variety": (
        "demo", lambda c, k, o: ["demo", *DEMO_ARGS, "--out", o, "--corpus", k, "--standard",
                                 "deu_Latn", "--varieties", "xyz_Latn"], "not in", "xyz_Latn"),
    "demo-zero-steps": (
        "demo", lambda c, k, o: ["demo", "--out", o, "--steps", "0"], "positive integer",
        "--steps"),
}  # fmt: skip


def _main(args: list[str]) -> int:
    try:
        return main(args)
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code or 0)


@pytest.mark.parametrize("which", ["finished", "fresh"])
@pytest.mark.parametrize("case", list(ARG_CASES))
def test_bad_arguments_are_one_line(
    case: str, which: str, tmp_path: Path, capsys, monkeypatch, finished
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.toml").write_text(TINY)
    corpus = _lines(tmp_path / "corpus", _good())
    kind, make, expected, where = ARG_CASES[case]
    out = _target(kind, which, finished, tmp_path)
    before, around = _tree(out), sorted(p.name for p in tmp_path.iterdir())
    args = make("c.toml", str(corpus), str(out.relative_to(tmp_path)))  # type: ignore[operator]
    _one_line(capsys, _main(args), expected, where)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == around  # nothing written beside


# -- the corrected command then succeeds in the same fresh folder (one case per command) --


def test_run_after_a_fixed_typo_succeeds_in_the_same_folder(tmp_path: Path, capsys) -> None:
    edit, expected, where = CONFIG_CASES["missing-corpus"]
    cfg = _config(tmp_path, edit(TINY, tmp_path))  # type: ignore[operator]
    out = tmp_path / "fresh"
    _one_line(capsys, main(["run", str(cfg), "--out", str(out)]), expected, where)
    cfg.write_text(TINY)
    assert main(["run", str(cfg), "--out", str(out)]) == 0
    assert (out / "results.json").is_file()


def test_train_after_a_fixed_typo_succeeds_in_the_same_folder(tmp_path: Path, capsys) -> None:
    cfg = _config(tmp_path, TINY)
    out = str(tmp_path / "fresh")
    code = main(["train", str(cfg), "--arm", "decoupeld", "--out", out])
    _one_line(capsys, code, "did you mean 'decoupled'", "decoupeld")
    assert main(["train", str(cfg), "--arm", "decoupled", "--out", out]) == 0
    assert (tmp_path / "fresh" / "train_summary.json").is_file()


def test_eval_after_a_fixed_typo_succeeds_in_the_same_folder(tmp_path: Path, capsys) -> None:
    cfg = _config(tmp_path, TINY.replace("layers = [1]", "layers = [99]"))
    out = str(tmp_path / "fresh")
    code = main(["eval", "--config", str(cfg), "--out", out, "--erase-alpha", "1"])
    _one_line(capsys, code, "out of range", "99")
    cfg.write_text(TINY)
    assert main(["eval", "--config", str(cfg), "--out", out, "--erase-alpha", "1"]) == 0
    assert (tmp_path / "fresh" / "scores.json").is_file()


def test_probe_after_a_fixed_corpus_succeeds_in_the_same_folder(tmp_path: Path, capsys) -> None:
    files, _, expected, where = CORPUS_CASES["empty-line"]
    corpus = _lines(tmp_path / "corpus", files)
    args = ["probe", *PROBE_ARGS, "--corpus", str(corpus), "--standard", "deu_Latn"]
    args += ["--out", str(tmp_path / "fresh")]
    _one_line(capsys, main(args), expected, where)
    _lines(corpus, _good())
    assert main(args) == 0
    assert (tmp_path / "fresh" / "probe.json").is_file()


def test_demo_after_a_fixed_variety_succeeds_in_the_same_folder(tmp_path: Path, capsys) -> None:
    rows = {code: (CORPORA / "tatoeba-deu-nds" / f"{code}.txt").read_text("utf-8")
            .splitlines()[:400] for code in ("deu_Latn", "nds_Latn")}  # fmt: skip
    corpus = _lines(tmp_path / "corpus", {f"{c}.txt": "\n".join(r) + "\n" for c, r in rows.items()})
    args = ["demo", *DEMO_ARGS, "--out", str(tmp_path / "fresh"), "--corpus", str(corpus)]
    args += ["--standard", "deu_Latn", "--varieties"]
    _one_line(capsys, main([*args, "nds_Ltn"]), "not in", "nds_Ltn")
    assert main([*args, "nds_Latn"]) == 0
    assert (tmp_path / "fresh" / "run" / "report.md").is_file()


#: the number of cases the README states ("bad input (N cases: ...)")
CASES = 41


def test_the_suite_has_the_cases_the_readme_states() -> None:
    assert len(CORPUS_CASES) + len(CONFIG_CASES) + len(ARG_CASES) == CASES
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    assert f"bad input ({CASES} cases" in readme
