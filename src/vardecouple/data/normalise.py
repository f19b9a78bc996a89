"""Text normalisation for de-duplication (never applied to training text)."""

from __future__ import annotations

import unicodedata

__all__ = ["normalise"]

# Arabic tashkeel (fathatan .. sukun, U+064B-U+0652) and tatweel (U+0640).
_ARABIC_MARKS = {cp: None for cp in range(0x064B, 0x0653)} | {0x0640: None}


def normalise(text: str) -> str:
    """A key under which trivially different spellings of a sentence coincide.

    NFKC, casefold, drop Arabic diacritics (tashkeel U+064B-U+0652) and tatweel
    (U+0640), drop punctuation (Unicode categories ``P*``), collapse whitespace,
    strip. ``"Ich  bin's!"`` and ``"ich bins"`` give the same key; so do
    ``"كَتَبَ"`` and ``"كتب"``.
    """
    text = unicodedata.normalize("NFKC", text).casefold().translate(_ARABIC_MARKS)
    text = "".join(ch for ch in text if not unicodedata.category(ch).startswith("P"))
    return " ".join(text.split())
