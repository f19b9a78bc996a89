"""Real gemma3-270m token states of the Arabic FLORES-200 dev rows: what
``gemma_spectrum.py`` and ``probe_gemma.py`` share.

The rows are aligned across MSA (``arb_Arab``, the standard, label 0) and the six
dialects of the Arabic example; the states are those the decoupler reads (every token
but each sentence's first), from the base model without gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from _common import CORPORA

MODEL = "gemma3-270m"
FLORES_DEV = CORPORA / "flores200" / "dev"
#: the standard first: a variety's label is its index here
ARABIC = ("arb_Arab", "arz_Arab", "ary_Arab", "acm_Arab", "aeb_Arab", "ajp_Arab", "apc_Arab")


def flores_rows(rows: Sequence[int]) -> tuple[list[str], list[int], list[int]]:
    """The sentences of the aligned dev ``rows`` in every variety of :data:`ARABIC`
    (variety by variety): ``(texts, variety label, row)``, one entry per sentence."""
    texts: list[str] = []
    variety: list[int] = []
    row: list[int] = []
    for label, code in enumerate(ARABIC):
        lines = (FLORES_DEV / f"{code}.txt").read_text(encoding="utf-8").splitlines()
        texts += [lines[r] for r in rows]
        variety += [label] * len(rows)
        row += list(rows)
    return texts, variety, row


def token_states(
    texts: Sequence[str], layers: Sequence[int], batch_size: int = 16
) -> tuple[dict[int, Tensor], Tensor]:
    """gemma3-270m's token states of ``texts`` at ``layers``: ``({layer: (N, d)}, owner)``,
    ``owner[i]`` the index of the sentence that token ``i`` belongs to."""
    from vardecouple.model.load import load_model
    from vardecouple.model.states import layer_states

    loaded = load_model(MODEL)
    return layer_states(loaded, list(texts), list(layers), batch_size=batch_size)
