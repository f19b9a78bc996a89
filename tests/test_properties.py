"""Property-based tests (hypothesis) of the corpus loaders and the config parser: valid
input round-trips; any input gives either a result or one CorpusError/ConfigError line,
never another exception."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from conftest import MINI_CORE
from vardecouple.data import load_corpus
from vardecouple.data.errors import CorpusError
from vardecouple.experiment.config import ConfigError, load_config

CODES = ["deu_Latn", "nds_Latn", "arb_Arab", "arz_Arab"]
# sentences: any text but control characters, surrogates (a newline would split it) and
# U+FEFF (at the start of a file it is a byte-order mark, refused on purpose)
SENTENCE = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\ufeff"),
    min_size=1,
    max_size=40,
).filter(lambda s: s.strip() != "")
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip


@st.composite
def corpora(draw) -> tuple[list[str], list[list[str]]]:
    codes = draw(st.lists(st.sampled_from(CODES), min_size=2, max_size=4, unique=True))
    n = draw(st.integers(1, 6))
    rows = [[draw(SENTENCE) for _ in codes] for _ in range(n)]
    return codes, rows


def _expected(codes, rows) -> list[dict[str, str]]:
    return [{c: s.strip() for c, s in zip(codes, row, strict=True)} for row in rows]


@SETTINGS
@given(corpora())
def test_line_aligned_folder_round_trips(corpus) -> None:
    codes, rows = corpus
    with tempfile.TemporaryDirectory() as tmp:
        for j, code in enumerate(codes):
            text = "\n".join(row[j] for row in rows) + "\n"
            (Path(tmp) / f"{code}.txt").write_text(text, encoding="utf-8")
        loaded = load_corpus(tmp)
    assert set(loaded.varieties) == set(codes)
    assert [dict(r) for r in loaded.rows] == _expected(codes, rows)


@SETTINGS
@given(corpora())
def test_jsonl_and_tsv_round_trip(corpus) -> None:
    codes, rows = corpus
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = Path(tmp) / "c.jsonl"
        lines = [json.dumps(dict(zip(codes, row, strict=True)), ensure_ascii=False) for row in rows]
        jsonl.write_text("\n".join(lines) + "\n", encoding="utf-8")
        assert [dict(r) for r in load_corpus(jsonl).rows] == _expected(codes, rows)
        if not any("\t" in s for row in rows for s in row):
            tsv = Path(tmp) / "c.tsv"
            body = "".join("\t".join(row) + "\n" for row in rows)
            tsv.write_text("\t".join(codes) + "\n" + body, encoding="utf-8")
            assert [dict(r) for r in load_corpus(tsv).rows] == _expected(codes, rows)


@SETTINGS
@given(st.binary(max_size=200), st.binary(max_size=200), st.sampled_from(["txt", "tsv", "jsonl"]))
def test_any_bytes_give_a_corpus_or_one_error_line(first: bytes, second: bytes, kind: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "txt":
            (Path(tmp) / "deu_Latn.txt").write_bytes(first)
            (Path(tmp) / "nds_Latn.txt").write_bytes(second)
            target = Path(tmp)
        else:
            target = Path(tmp) / f"c.{kind}"
            target.write_bytes(first + second)
        try:
            corpus = load_corpus(target)
        except CorpusError as exc:
            assert "\n" not in str(exc)
            assert target.name in str(exc) or tmp in str(exc)  # names the file or folder
        else:
            assert corpus.rows and all(all(s == s.strip() and s for s in r.values())
                                       for r in corpus.rows)  # fmt: skip


NUMBERS = st.one_of(
    st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


def _toml(x: float | int) -> str:
    if isinstance(x, float) and math.isnan(x):
        return "nan"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


@SETTINGS
@given(lam=NUMBERS, refresh=st.integers(-3, 3), rank=st.integers(-2, 3), steps=st.integers(-2, 3))
@example(lam=math.inf, refresh=1, rank=1, steps=1)
@example(lam=math.nan, refresh=1, rank=1, steps=1)
def test_config_numbers_are_accepted_exactly_when_valid(lam, refresh, rank, steps) -> None:
    text = (
        MINI_CORE.replace("lam = 1.0", f"lam = {_toml(lam)}")
        .replace("refresh_every = 2", f"refresh_every = {refresh}")
        .replace("[decoupler]", f"[decoupler]\nrank = {rank}")
        .replace("steps = 4", f"steps = {steps}")
    )
    valid = math.isfinite(lam) and lam >= 0 and refresh >= 1 and rank >= 1 and steps >= 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text(text)
        try:
            config = load_config(path)
        except ConfigError as exc:
            assert not valid, str(exc)
            assert "\n" not in str(exc) and str(path) in str(exc)
        else:
            assert valid, (lam, refresh, rank, steps)
            assert config.decoupler.lam == lam and config.train.steps == steps


@SETTINGS
@given(st.data())
def test_any_edit_of_a_config_gives_a_config_or_one_error_line(data) -> None:
    lines = MINI_CORE.strip().splitlines()
    i = data.draw(st.integers(0, len(lines) - 1))
    edit = data.draw(st.sampled_from(["drop", "garble", "duplicate", "insert"]))
    if edit == "drop":
        lines.pop(i)
    elif edit == "garble":
        lines[i] = data.draw(st.text(max_size=20).filter(lambda s: "\n" not in s))
    elif edit == "duplicate":
        lines.insert(i, lines[i])
    else:
        key = data.draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
        lines.insert(i, f"{key} = {data.draw(st.integers(-3, 3))}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8", errors="surrogatepass")
        try:
            load_config(path)
        except ConfigError as exc:
            assert "\n" not in str(exc).strip(), str(exc)
