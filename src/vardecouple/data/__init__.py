"""Corpora, de-duplicated group-level splits, and prompts for variety MT.

Typical use::

    from vardecouple.data import load_corpus, make_splits

    dev = load_corpus("shared/corpora/flores200", split="dev")
    devtest = load_corpus("shared/corpora/flores200", split="devtest")
    splits = make_splits(
        [dev], standard="arb_Arab", varieties=["arz_Arab", "ary_Arab"],
        directions="standard<->variety", test_corpora=[devtest], seed=0,
    )
    print(splits.describe())

Modules: :mod:`.errors` (``CorpusError``), :mod:`.corpus` (``Corpus``),
:mod:`.textfile` (strict UTF-8 lines), :mod:`.formats` (one reader per format),
:mod:`.loading` (``load_corpus``), :mod:`.normalise`, :mod:`.directions`,
:mod:`.grouping` (union-find de-duplication), :mod:`.splits`, :mod:`.names`,
:mod:`.prompts`, :mod:`.family` (a seeded synthetic language family).
"""

from __future__ import annotations

from .corpus import Corpus
from .directions import Direction, parse_directions
from .errors import CorpusError
from .family import FamilyConfig, family_rules, make_family, write_family
from .loading import load_corpus
from .names import variety_name
from .normalise import normalise
from .prompts import PromptTemplate, format_example, probe_prompts, tokenize_example
from .splits import Example, LabelledSentence, Splits, make_splits

__all__ = [
    "Corpus",
    "CorpusError",
    "Direction",
    "Example",
    "FamilyConfig",
    "LabelledSentence",
    "PromptTemplate",
    "Splits",
    "family_rules",
    "format_example",
    "load_corpus",
    "make_family",
    "make_splits",
    "normalise",
    "parse_directions",
    "probe_prompts",
    "tokenize_example",
    "variety_name",
    "write_family",
]
