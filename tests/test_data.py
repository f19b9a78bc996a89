"""vardecouple.data: loaders and their errors, normalisation, directions, splits, prompts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from vardecouple.data import (
    Corpus,
    CorpusError,
    Direction,
    Example,
    LabelledSentence,
    Splits,
    format_example,
    load_corpus,
    make_splits,
    normalise,
    parse_directions,
    tokenize_example,
    variety_name,
)

MADAR_HEADER = "sentID.BTEC\tsplit\tlang\tsent\n"


# -- helpers ---------------------------------------------------------------------


def write_folder(folder: Path, files: dict[str, list[str] | bytes], suffix: str = ".txt") -> Path:
    """Write ``{code: lines}`` (or raw bytes) as ``folder/<code><suffix>``."""
    folder.mkdir(parents=True, exist_ok=True)
    for code, content in files.items():
        path = folder / f"{code}{suffix}"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text("".join(f"{line}\n" for line in content), encoding="utf-8")
    return folder


def write_madar(path: Path, lines: list[tuple[str, str, str, str]], header: str = MADAR_HEADER):
    path.write_text(header + "".join("\t".join(x) + "\n" for x in lines), encoding="utf-8")
    return path


def corpus_of(name: str, codes: tuple[str, ...], rows: list[tuple[str, ...]]) -> Corpus:
    """An in-memory corpus: ``rows`` are tuples aligned with ``codes`` (``""`` = missing)."""
    return Corpus(
        name,
        f"/mem/{name}",
        codes,
        tuple({c: s for c, s in zip(codes, r, strict=True) if s} for r in rows),
    )


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> str:
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# -- formats ---------------------------------------------------------------------


def test_lines_folder(tmp_path: Path) -> None:
    folder = write_folder(
        tmp_path / "deu-nds",
        {"deu_Latn": ["Ich bin hier.", "Guten Tag!"], "nds_Latn": ["Ik bün hier.", "Moin!"]},
    )
    (folder / "README.md").write_text("not a corpus file\n")
    corpus = load_corpus(folder)
    assert corpus.name == "deu-nds"
    assert corpus.source == str(folder)
    assert corpus.varieties == ("deu_Latn", "nds_Latn")
    assert len(corpus) == 2
    assert corpus.rows[1] == {"deu_Latn": "Guten Tag!", "nds_Latn": "Moin!"}
    assert corpus.sentences("nds_Latn") == ["Ik bün hier.", "Moin!"]
    assert load_corpus(folder, format="lines", name="x").name == "x"
    only = load_corpus(folder, varieties=["nds_Latn"])
    assert only.varieties == ("nds_Latn",) and only.rows[0] == {"nds_Latn": "Ik bün hier."}


def test_crlf_and_region_codes(tmp_path: Path) -> None:
    folder = tmp_path / "pt"
    folder.mkdir()
    (folder / "por_Latn_BR.txt").write_bytes("Você está aqui.\r\nOi\r\n".encode())
    (folder / "por_Latn_PT.txt").write_bytes("Tu estás aqui.\r\nOlá".encode())
    corpus = load_corpus(folder)
    assert corpus.rows == ({"por_Latn_BR": "Você está aqui.", "por_Latn_PT": "Tu estás aqui."},
                           {"por_Latn_BR": "Oi", "por_Latn_PT": "Olá"})  # fmt: skip


def test_select_and_sentences() -> None:
    corpus = corpus_of("c", ("arb_Arab", "arz_Arab", "eng_Latn"), [("a", "", "e"), ("", "", "x")])
    sel = corpus.select(["arz_Arab", "arb_Arab"])
    assert sel.varieties == ("arz_Arab", "arb_Arab") and len(sel) == 1
    assert corpus.sentences("arz_Arab") == []
    with pytest.raises(CorpusError) as err:
        corpus.select(["ary_Arab"])
    assert_one_line(err, "/mem/c", "ary_Arab", "arb_Arab, arz_Arab, eng_Latn")


def test_flores(tmp_path: Path) -> None:
    root = tmp_path / "flores"
    write_folder(root / "dev", {"arb_Arab": ["م1", "م2"], "arz_Arab": ["ع1", "ع2"]}, ".dev")
    write_folder(root / "devtest", {"arb_Arab": ["ت"], "arz_Arab": ["ث"]}, ".devtest")
    (root / "devtest" / "eng_Latn.txt").write_text("t\n")
    dev = load_corpus(root, split="dev")
    assert dev.name == "flores/dev" and len(dev) == 2 and dev.varieties == ("arb_Arab", "arz_Arab")
    test = load_corpus(root, format="flores", split="devtest")
    assert test.varieties == ("arb_Arab", "arz_Arab", "eng_Latn") and len(test) == 1
    with pytest.raises(CorpusError) as err:
        load_corpus(root, split="train")
    assert_one_line(err, str(root), "'train'", "dev", "devtest")


def test_madar(tmp_path: Path) -> None:
    path = write_madar(
        tmp_path / "madar.tsv",
        [
            ("1", "corpus-26-train", "MSA", "أين المحطة؟"),
            ("1", "corpus-26-train", "CAI", "فين المحطة؟"),
            ("2", "corpus-26-dev", "MSA", "شكرا"),
            ("2", "corpus-26-dev", "CAI", "متشكر"),
            ("3", "corpus-26-train", "CAI", "ماشي"),
        ],
    )
    corpus = load_corpus(path)
    assert corpus.name == "madar" and corpus.varieties == ("MSA", "CAI")
    assert corpus.rows == (
        {"MSA": "أين المحطة؟", "CAI": "فين المحطة؟"},
        {"MSA": "شكرا", "CAI": "متشكر"},
        {"CAI": "ماشي"},
    )
    train = load_corpus(path, split="corpus-26-train")
    assert train.name == "madar/corpus-26-train" and len(train) == 2
    with pytest.raises(CorpusError) as err:
        load_corpus(path, split="test")
    assert_one_line(err, str(path), "'corpus-26-dev'")
    # a folder of per-city files, columns in another order
    folder = tmp_path / "madar-dir"
    folder.mkdir()
    header = "lang\tsent\tsentID.BTEC\tsplit\n"
    write_madar(folder / "MADAR.corpus.MSA.tsv", [("MSA", "شكرا", "7", "s")], header)
    write_madar(folder / "MADAR.corpus.TUN.tsv", [("TUN", "يعيشك", "7", "s")], header)
    pooled = load_corpus(folder)
    assert pooled.rows == ({"MSA": "شكرا", "TUN": "يعيشك"},)


def test_tsv_and_jsonl(tmp_path: Path) -> None:
    tsv = tmp_path / "pt.tsv"
    tsv.write_text("por_Latn_BR\tpor_Latn_PT\neu estou\teu estou\nônibus\t\n\tautocarro\n")
    corpus = load_corpus(tsv)
    assert corpus.name == "pt" and corpus.varieties == ("por_Latn_BR", "por_Latn_PT")
    assert corpus.rows[1] == {"por_Latn_BR": "ônibus"} and corpus.rows[2] == {
        "por_Latn_PT": "autocarro"
    }
    jsonl = tmp_path / "ar.jsonl"
    jsonl.write_text(
        json.dumps({"arb_Arab": "شكرا", "ary_Arab": "شكرا بزاف"}, ensure_ascii=False)
        + "\n"
        + json.dumps({"ary_Arab": "واش", "arb_Arab": None, "arz_Arab": ""})
        + "\n"
    )
    corpus = load_corpus(jsonl)
    assert corpus.varieties == ("arb_Arab", "ary_Arab")
    assert corpus.rows == ({"arb_Arab": "شكرا", "ary_Arab": "شكرا بزاف"}, {"ary_Arab": "واش"})


def test_auto_rejects_unknown(tmp_path: Path) -> None:
    other = tmp_path / "x.csv"
    other.write_text("a,b\n")
    with pytest.raises(CorpusError) as err:
        load_corpus(other)
    assert_one_line(err, str(other), "lines", "flores", "madar", "tsv", "jsonl")
    with pytest.raises(CorpusError) as err:
        load_corpus(tmp_path / "missing")
    assert_one_line(err, "missing", "does not exist")


# -- errors: every one names the file, and the line where there is one -----------------


def _mismatch(p: Path) -> Path:
    return write_folder(p / "c", {"arb_Arab": ["a", "b"], "arz_Arab": ["a"]})


def _empty_line(p: Path) -> Path:
    return write_folder(p / "c", {"arb_Arab": ["a", "b", "c"], "arz_Arab": ["a", "", "c"]})


def _bad_utf8(p: Path) -> Path:
    return write_folder(p / "c", {"arb_Arab": ["a", "b"], "arz_Arab": b"ok\nbad \xff\xfe\n"})


def _bom(p: Path) -> Path:
    return write_folder(p / "c", {"arb_Arab": ["a"], "arz_Arab": "\ufeffa\n".encode()})


def _bad_code(p: Path) -> Path:
    return write_folder(p / "c", {"arb_Arab": ["a"], "Arabic": ["a"]})


def _empty_file(p: Path) -> Path:
    return write_folder(p / "c", {"arb_Arab": ["a"], "arz_Arab": b""})


def _empty_folder(p: Path) -> Path:
    (p / "c").mkdir()
    return p / "c"


def _madar_missing(p: Path) -> Path:
    return write_madar(p / "m.tsv", [("1", "s", "x")], header="sentID.BTEC\tsplit\tsent\n")


def _madar_dup(p: Path) -> Path:
    return write_madar(p / "m.tsv", [("1", "s", "MSA", "a"), ("2", "s", "MSA", "b"),
                                     ("1", "s", "MSA", "c")])  # fmt: skip


def _tsv_cells(p: Path) -> Path:
    (p / "t.tsv").write_text("arb_Arab\tarz_Arab\na\tb\nonly-one\n")
    return p / "t.tsv"


def _jsonl_bad(p: Path) -> Path:
    (p / "j.jsonl").write_text('{"arb_Arab": "a"}\n{"arb_Arab": \n')
    return p / "j.jsonl"


ERRORS: dict[str, tuple[Callable[[Path], Path], dict, str, str | None, str]] = {
    # name: (writer, load kwargs, file name in message, "line N" or None, what it says)
    "mismatched line counts": (_mismatch, {}, "arz_Arab.txt", None, "same number of lines"),
    "empty line": (_empty_line, {}, "arz_Arab.txt", "line 2", "empty line"),
    "invalid utf-8": (_bad_utf8, {}, "arz_Arab.txt", "line 2", "invalid UTF-8"),
    "bom": (_bom, {}, "arz_Arab.txt", "line 1", "BOM"),
    "bad code": (_bad_code, {}, "Arabic.txt", None, "variety code"),
    "empty file": (_empty_file, {}, "arz_Arab.txt", None, "empty file"),
    "empty folder": (_empty_folder, {}, "c", None, "empty folder"),
    "missing madar column": (_madar_missing, {}, "m.tsv", "line 1", "missing column lang"),
    "duplicate madar id": (_madar_dup, {}, "m.tsv", "line 4", "duplicate sentence 1 for MSA"),
    "tsv cell count": (_tsv_cells, {}, "t.tsv", "line 3", "1 tab-separated cells"),
    "invalid json": (_jsonl_bad, {}, "j.jsonl", "line 2", "invalid JSON"),
    "tsv format on a folder": (_mismatch, {"format": "tsv"}, "c", None, "is not a file"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_corpus_errors(tmp_path: Path, name: str) -> None:
    writer, kwargs, filename, line, says = ERRORS[name]
    path = writer(tmp_path)
    with pytest.raises(CorpusError) as err:
        load_corpus(path, **kwargs)
    message = assert_one_line(err, filename, says, "expected")
    assert message.startswith("corpus ")
    if line is not None:
        assert f"{line}:" in message
    assert isinstance(err.value, ValueError)


def test_duplicate_code_and_flores_split_errors(tmp_path: Path) -> None:
    root = tmp_path / "flores"
    write_folder(root / "dev", {"arb_Arab": ["a"]}, ".dev")
    write_folder(root / "dev", {"arb_Arab": ["a"]}, ".txt")
    write_folder(root / "devtest", {"arb_Arab": ["b"]}, ".devtest")
    with pytest.raises(CorpusError) as err:
        load_corpus(root, split="dev")
    assert_one_line(err, "arb_Arab.txt", "arb_Arab.dev", "second file for variety arb_Arab")
    with pytest.raises(CorpusError) as err:
        load_corpus(root)
    assert_one_line(err, str(root), "no split given", "dev", "devtest")


def test_unknown_variety_error(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "c", {"arb_Arab": ["a"], "arz_Arab": ["b"]})
    with pytest.raises(CorpusError) as err:
        load_corpus(folder, varieties=["arb_Arab", "ary_Arab"])
    assert_one_line(err, str(folder), "unknown variety ary_Arab", "arb_Arab, arz_Arab")
    with pytest.raises(CorpusError) as err:
        load_corpus(folder, split="dev")
    assert_one_line(err, "split only for flores/madar")


# -- normalisation ---------------------------------------------------------------


def test_normalise() -> None:
    assert normalise("  Ich  bin's\tHIER! ") == "ich bins hier"
    assert normalise("ＡＢＣ") == "abc"  # NFKC
    assert normalise("Straße") == normalise("STRASSE")  # casefold
    assert normalise("كَتَبَ الوَلَدُ") == normalise("كتب الولـــد") == "كتب الولد"
    assert normalise("«مرحبا»، يا صديقي؟") == "مرحبا يا صديقي"
    assert normalise("...!?") == ""


# -- directions ------------------------------------------------------------------


def test_direction() -> None:
    d = Direction.parse(" arb_Arab -> arz_Arab ")
    assert d == Direction("arb_Arab", "arz_Arab") and str(d) == "arb_Arab->arz_Arab"
    for bad in ("arb_Arab", "a->b->c", "->arz_Arab", "arb_Arab->arb_Arab", "a<->b"):
        with pytest.raises(CorpusError):
            Direction.parse(bad)


def test_parse_directions() -> None:
    kw = {"standard": "arb_Arab", "varieties": ["arz_Arab", "ary_Arab"], "pivot": "eng_Latn"}
    both = [str(d) for d in parse_directions("standard<->variety", **kw)]
    assert both == ["arb_Arab->arz_Arab", "arz_Arab->arb_Arab", "arb_Arab->ary_Arab",
                    "ary_Arab->arb_Arab"]  # fmt: skip
    assert [str(d) for d in parse_directions("pivot->variety", **kw)] == [
        "eng_Latn->arz_Arab",
        "eng_Latn->ary_Arab",
    ]
    assert len(parse_directions("pivot<->variety", **kw)) == 4
    mixed = parse_directions(
        ["arb_Arab->arz_Arab", "standard<->variety", "eng_Latn->arb_Arab"], **kw
    )
    assert [str(d) for d in mixed][:2] == ["arb_Arab->arz_Arab", "arz_Arab->arb_Arab"]
    assert len(mixed) == 5  # no repeats
    assert parse_directions("standard->variety, pivot->variety", **kw)[2] == Direction(
        "eng_Latn", "arz_Arab"
    )
    with pytest.raises(CorpusError) as err:
        parse_directions(["arb_Arab->acm_Arab"], **kw)
    assert_one_line(err, "unknown variety acm_Arab", "arb_Arab, arz_Arab, ary_Arab, eng_Latn")
    with pytest.raises(CorpusError) as err:
        parse_directions("pivot->variety", standard="arb_Arab", varieties=["arz_Arab"])
    assert_one_line(err, "pivot")
    with pytest.raises(CorpusError) as err:
        parse_directions("everything", **kw)
    assert_one_line(err, "unknown direction spec", "standard<->variety")


# -- splits ----------------------------------------------------------------------

STD, LOW, PIV = "deu_Latn", "nds_Latn", "eng_Latn"


def family(n: int = 40) -> tuple[Corpus, Corpus]:
    """deu–nds and eng–nds corpora sharing nds sentences (with spelling variants)."""
    deu_nds = corpus_of("deu-nds", (STD, LOW), [(f"Satz {i}.", f"Sats {i}.") for i in range(n)])
    eng_nds = corpus_of(
        "eng-nds",
        (PIV, LOW),
        [(f"Sentence {i}.", f"sats {i}" if i % 2 else f"Sats {i}!") for i in range(0, n, 2)]
        + [(f"Other {i}.", f"Anners {i}.") for i in range(n)],
    )
    return deu_nds, eng_nds


def split_sentences(splits: Splits) -> dict[str, set[str]]:
    """Normalised sentences (all varieties) per split."""
    out = {name: set() for name in ("train", "dev", "test", "probe")}
    for name in ("train", "dev", "test"):
        for e in getattr(splits, name):
            out[name] |= {normalise(e.src_text), normalise(e.tgt_text)}
    out["probe"] = {normalise(p.text) for p in splits.probe}
    return out


def assert_disjoint(splits: Splits) -> None:
    sents = split_sentences(splits)
    names = list(sents)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not sents[a] & sents[b], (a, b, sorted(sents[a] & sents[b])[:3])
    groups = {n: {e.group for e in getattr(splits, n)} for n in ("train", "dev", "test")}
    assert not groups["train"] & groups["dev"] and not groups["train"] & groups["test"]
    assert not groups["dev"] & groups["test"]


def test_splits_group_duplicates_across_corpora() -> None:
    deu_nds, eng_nds = family()
    splits = make_splits(
        [deu_nds, eng_nds],
        standard=STD,
        varieties=[LOW],
        pivot=PIV,
        directions="standard<->variety,pivot->variety",
        dev_rows=6,
        probe_rows=5,
        test_rows=7,
        seed=3,
    )
    assert_disjoint(splits)
    # "Sats i." (deu-nds), "Sats i!" and "sats i" (eng-nds) are one group: same split
    group_of = {}
    for name in ("train", "dev", "test"):
        for e in getattr(splits, name):
            if e.tgt == LOW and e.tgt_text.lower().startswith("sats"):
                key = normalise(e.tgt_text)
                group_of.setdefault(key, set()).add((name, e.group))
    assert group_of and all(len(v) == 1 for v in group_of.values())
    assert splits.stats["rows"] == 100 and splits.stats["groups"] == 80
    assert splits.groups == {"train": 62, "dev": 6, "test": 7, "probe": 5, "dropped": 0}
    dirs = {e.direction for e in splits.train}
    assert dirs == {Direction(STD, LOW), Direction(LOW, STD), Direction(PIV, LOW)}
    assert all(isinstance(p, LabelledSentence) for p in splits.probe)
    assert {(p.variety, p.label) for p in splits.probe} == {(STD, 0), (LOW, 1)}
    text = splits.describe()
    assert "100 rows" not in text and "rows: 100 in 80 groups" in text
    assert "deu_Latn->nds_Latn" in text and "eng_Latn->nds_Latn" in text


def test_splits_deterministic_and_seeded() -> None:
    corpora = family()
    kw = {"standard": STD, "varieties": [LOW], "directions": "standard<->variety",
          "dev_rows": 5, "probe_rows": 5, "test_rows": 5}  # fmt: skip
    a = make_splits(corpora, seed=1, **kw)
    b = make_splits(corpora, seed=1, **kw)
    c = make_splits(corpora, seed=2, **kw)
    assert (a.train, a.dev, a.test, a.probe) == (b.train, b.dev, b.test, b.probe)
    assert {e.group for e in a.test} != {e.group for e in c.test}
    assert_disjoint(c)


def test_splits_fixed_test_corpus_drops_overlap() -> None:
    train = corpus_of("train", ("arb_Arab", "arz_Arab"),
                      [(f"جملة {i}", f"جملة مصرية {i}") for i in range(30)])  # fmt: skip
    test = corpus_of(
        "test",
        ("arb_Arab", "arz_Arab"),
        [("جُمْلَة 3", "شيء آخر"), ("نص", "جملة مصرية، 4!"), ("جديد", "جديدة")],
    )
    splits = make_splits(
        [train],
        standard="arb_Arab",
        varieties=["arz_Arab"],
        directions=[Direction("arb_Arab", "arz_Arab")],
        dev_rows=4,
        probe_rows=4,
        test_corpora=[test],
    )
    assert splits.groups["dropped"] == 2 and splits.stats["test_overlap_rows"] == 2
    assert len(splits.test) == 3 and {e.src_text for e in splits.test} == {"جُمْلَة 3", "نص", "جديد"}
    train_side = {e.src_text for e in splits.train + splits.dev} | {p.text for p in splits.probe}
    assert "جملة 3" not in train_side and "جملة 4" not in train_side
    assert len(train_side & {f"جملة {i}" for i in range(30)}) == 28
    assert_disjoint(splits)
    with pytest.raises(CorpusError):
        make_splits([train], standard="arb_Arab", varieties=["arz_Arab"],
                    directions="standard<->variety", test_rows=2, test_corpora=[test])  # fmt: skip


def test_splits_dedupe_identical_pairs() -> None:
    corpus = corpus_of("c", (STD, LOW), [("Ja.", "Jo."), ("Ja.", "Jo."), ("ja", "Jo!")] * 2)
    splits = make_splits([corpus], standard=STD, varieties=[LOW],
                         directions="standard->variety", dev_rows=0, probe_rows=0)  # fmt: skip
    assert [(e.src_text, e.tgt_text) for e in splits.train] == [("Ja.", "Jo."), ("ja", "Jo!")]
    assert splits.stats["groups"] == 1 and splits.stats["duplicate_examples"] == 4
    assert splits.stats["duplicate_rows"] == 4


def test_splits_errors() -> None:
    deu_nds, eng_nds = family(10)
    kw = {"directions": "standard<->variety", "dev_rows": 1, "probe_rows": 1}
    with pytest.raises(CorpusError) as err:
        make_splits([eng_nds], standard=STD, varieties=[LOW], **kw)
    assert_one_line(err, "standard variety deu_Latn is in no corpus (eng-nds)")
    with pytest.raises(CorpusError) as err:
        make_splits([deu_nds], standard=STD, varieties=[LOW, "fkv_Latn"], **kw)
    assert_one_line(err, "low-resource variety fkv_Latn is in no corpus")
    with pytest.raises(CorpusError) as err:
        make_splits([deu_nds], standard=STD, varieties=[LOW], directions="standard<->variety",
                    dev_rows=6, probe_rows=5)  # fmt: skip
    assert_one_line(err, "5 probe row groups asked but only 4")
    with pytest.raises(CorpusError) as err:
        make_splits([deu_nds], standard=STD, varieties=[LOW], directions=["deu_Latn->eng_Latn"])
    assert_one_line(err, "unknown variety eng_Latn")


def test_probe_prefers_parallel_groups_and_dev_needs_examples() -> None:
    deu_nds, _ = family(10)
    deu_eng = corpus_of("deu-eng", (STD, PIV), [(f"Wort {i}", f"Word {i}") for i in range(200)])
    splits = make_splits([deu_nds, deu_eng], standard=STD, varieties=[LOW], pivot=PIV,
                         directions="standard<->variety", dev_rows=3, probe_rows=3)  # fmt: skip
    assert len(splits.dev) == 6 and splits.groups["dev"] == 3
    assert sorted(p.label for p in splits.probe) == [0, 0, 0, 1, 1, 1]


# -- prompts ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    text = [
        "Translate from German to Low German.",
        "German: Ich bin hier.",
        "Ik bün hier.",
        "Low German: Moin!",
        "Modern Standard Arabic: مرحبا بكم",
        "Egyptian Arabic: أهلا",
    ]
    tok.train_from_iterator(text * 5, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


EXAMPLE = Example(STD, LOW, "Ich bin hier.", "Ik bün hier.", 0)


def test_variety_names() -> None:
    assert variety_name("arb_Arab") == "Modern Standard Arabic"
    assert variety_name("ajp_Arab") == "South Levantine Arabic"
    assert variety_name("por_Latn_PT") == "European Portuguese"
    assert variety_name("fkv_Latn") == "Kven" and variety_name("nds_Latn") == "Low German"
    assert variety_name("xxx_Latn") == "xxx_Latn"


def test_plain_prompt_and_label_mask(tokenizer) -> None:
    prompt, target = format_example(EXAMPLE)
    assert prompt == "Translate from German to Low German.\nGerman: Ich bin hier.\nLow German:"
    assert target == " Ik bün hier.\n"
    assert EXAMPLE.direction == Direction(STD, LOW)
    enc = tokenize_example(tokenizer, prompt, target)
    ids, labels, mask = enc["input_ids"], enc["labels"], enc["target_mask"]
    assert len(ids) == len(labels) == len(mask)
    assert ids[0] == tokenizer.bos_token_id and labels[0] == -100 and not mask[0]
    assert [i for i, m in zip(ids, mask, strict=True) if m] == [x for x in labels if x != -100]
    assert tokenizer.decode([x for x in labels if x != -100]) == target
    assert tokenizer.decode(ids[1 : mask.index(True)]) == prompt


def test_truncation(tokenizer) -> None:
    prompt, target = format_example(EXAMPLE)
    full = tokenize_example(tokenizer, prompt, target)
    n_target = sum(full["target_mask"])
    short = tokenize_example(tokenizer, prompt, target, max_length=n_target + 4)
    assert len(short["input_ids"]) == n_target + 4
    assert short["input_ids"][0] == tokenizer.bos_token_id  # BOS kept, prompt cut on the left
    assert short["input_ids"][1:] == full["input_ids"][-(n_target + 3) :]
    assert tokenizer.decode([x for x in short["labels"] if x != -100]) == target
    tiny = tokenize_example(tokenizer, prompt, target, max_length=3)
    assert tiny["target_mask"] == [False, True, True]
    assert tiny["labels"][1:] == full["labels"][-n_target:][:2]  # target's end cut
    with pytest.raises(CorpusError):
        tokenize_example(tokenizer, prompt, target, max_length=1)


def test_chat_template(tokenizer) -> None:
    with pytest.raises(CorpusError) as err:
        format_example(EXAMPLE, "chat", tokenizer)
    assert_one_line(err, "chat template")
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}[assistant] {% endif %}"
    )
    try:
        prompt, target = format_example(EXAMPLE, "chat", tokenizer)
    finally:
        tokenizer.chat_template = None
    assert prompt == "<s>[user] Translate from German to Low German.\nGerman: Ich bin hier.\n" + (
        "[assistant] "
    )
    assert target == "Ik bün hier.</s>"
    enc = tokenize_example(tokenizer, prompt, target)
    assert enc["input_ids"][:2] != [tokenizer.bos_token_id] * 2  # one BOS, not two
    assert enc["input_ids"][0] == tokenizer.bos_token_id
    assert enc["labels"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode([x for x in enc["labels"] if x != -100]) == target


# -- the real corpora ------------------------------------------------------------


def test_real_corpora(corpora: Path) -> None:
    root = corpora
    arabic = ["arb_Arab", "arz_Arab", "ary_Arab", "acm_Arab", "aeb_Arab", "ajp_Arab", "apc_Arab"]
    dev = load_corpus(root / "flores200", split="dev", varieties=[*arabic, "eng_Latn"])
    assert len(dev) == 997 and dev.name == "flores200/dev"
    assert dev.varieties == (*arabic, "eng_Latn")  # the order asked for
    assert len(load_corpus(root / "flores200", split="devtest")) == 1012
    deu_nds = load_corpus(root / "tatoeba-deu-nds")
    eng_nds = load_corpus(root / "tatoeba-eng-nds")
    assert (len(deu_nds), len(eng_nds)) == (9999, 2500)
    shared = set(deu_nds.sentences(LOW)) & set(eng_nds.sentences(LOW))
    assert len(shared) == 1236  # Low German sentences in both deu–nds and eng–nds
    splits = make_splits([deu_nds, eng_nds], standard=STD, varieties=[LOW], pivot=PIV,
                         directions="standard<->variety,pivot<->variety",
                         dev_rows=200, probe_rows=200, test_rows=500)  # fmt: skip
    where: dict[str, set[str]] = {}
    for name in ("train", "dev", "test"):
        for e in getattr(splits, name):
            for code, text in ((e.src, e.src_text), (e.tgt, e.tgt_text)):
                if code == LOW:
                    where.setdefault(text, set()).add(name)
    for p in splits.probe:
        if p.variety == LOW:
            where.setdefault(p.text, set()).add("probe")
    assert shared <= set(where)
    assert all(len(s) == 1 for s in where.values())
    assert_disjoint(splits)
    assert splits.stats["rows"] == 12499 and splits.stats["groups"] == 10758
