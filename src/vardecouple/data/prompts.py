"""Prompt formatting and exact prompt/target tokenisation with label masking."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from .errors import corpus_error
from .names import variety_name
from .splits import Example

__all__ = ["IGNORE_INDEX", "PromptTemplate", "format_example", "probe_prompts", "tokenize_example"]

PromptTemplate = Literal["plain", "chat"]

#: Label of positions that carry no loss (PyTorch ``cross_entropy``'s default).
IGNORE_INDEX = -100


def _fail(problem: str, expected: str) -> Exception:
    return corpus_error("", problem, expected, kind="prompt")


def format_example(
    example: Example, template: PromptTemplate = "plain", tokenizer: Any = None
) -> tuple[str, str]:
    """``(prompt, target)`` for one example.

    ``plain``: ``"Translate from S to T.\\nS: <src>\\nT:"`` and ``" <tgt>\\n"``
    (S, T = :func:`variety_name`). ``chat``: the tokenizer's chat template applied
    to one user message (``"Translate from S to T.\\nS: <src>"``) with
    ``add_generation_prompt=True``, and ``<tgt>`` + the tokenizer's EOS token.

    Raises:
        CorpusError: unknown template; ``chat`` without a tokenizer, a chat
            template or an EOS token.
    """
    s, t = variety_name(example.src), variety_name(example.tgt)
    instruction = f"Translate from {s} to {t}.\n{s}: {example.src_text}"
    if template == "plain":
        return f"{instruction}\n{t}:", f" {example.tgt_text}\n"
    if template != "chat":
        raise _fail(f"unknown template {template!r}", "plain or chat")
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise _fail(
            "template 'chat' but the tokenizer has no chat template",
            "a tokenizer with chat_template, or template='plain'",
        )
    eos = getattr(tokenizer, "eos_token", None)
    if not eos:
        raise _fail("the tokenizer has no eos_token", "a tokenizer with an EOS token")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": instruction}], tokenize=False, add_generation_prompt=True
    )
    return str(prompt), f"{example.tgt_text}{eos}"


def prompt_token_ids(tokenizer: Any, prompt: str) -> tuple[list[int], list[int]]:
    """``(leading special tokens, prompt tokens)``; trailing special tokens are dropped."""
    plain = list(tokenizer.encode(prompt, add_special_tokens=False))
    full = list(tokenizer.encode(prompt, add_special_tokens=True))
    start = next(
        (k for k in range(len(full) - len(plain) + 1) if full[k : k + len(plain)] == plain), 0
    )
    prefix = full[:start] if plain else full
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and prefix == [bos] and plain[:1] == [bos]:
        prefix = []  # the prompt text already starts with BOS (chat templates do)
    return prefix, plain


def tokenize_example(
    tokenizer: Any, prompt: str, target: str, max_length: int = 256
) -> dict[str, list]:
    """Token ids and labels for ``prompt + target``, with the boundary exact.

    The prompt is tokenised with the tokenizer's special tokens (a leading BOS,
    if it adds one; trailing ones such as an EOS are dropped), the target without.
    Too long: the prompt is cut from the left (after the BOS); only when the
    target alone does not fit is the target's end cut (and the prompt dropped).

    Returns:
        ``input_ids`` (list[int]), ``labels`` (-100 on BOS/prompt positions, the
        ids on target positions) and ``target_mask`` (list[bool]), of equal length.

    Raises:
        CorpusError: the target has no tokens, or ``max_length`` leaves no room
            for one target token after the leading special tokens.
    """
    prefix, prompt_ids = prompt_token_ids(tokenizer, prompt)
    target_ids = list(tokenizer.encode(target, add_special_tokens=False))
    if not target_ids:
        raise _fail(f"target {target!r} has no tokens", "a non-empty target")
    room = max_length - len(prefix)
    if room < 1:
        raise _fail(f"max_length={max_length}", f"more than {len(prefix)} (the special tokens)")
    if len(target_ids) >= room:
        prompt_ids, target_ids = [], target_ids[:room]
    elif len(prompt_ids) + len(target_ids) > room:
        prompt_ids = prompt_ids[len(prompt_ids) + len(target_ids) - room :]
    context = prefix + prompt_ids
    return {
        "input_ids": context + target_ids,
        "labels": [IGNORE_INDEX] * len(context) + target_ids,
        "target_mask": [False] * len(context) + [True] * len(target_ids),
    }


def probe_prompts(sentences: Sequence[Any]) -> tuple[list[Any], list[str], list[str]]:
    """For ``context = "prompt"``: each sentence becomes the target of a translation
    prompt from an aligned sentence of its row (the standard's for a low-resource
    sentence, a low-resource one for the standard's). Sentences without a partner
    in their row are left out. Returns (kept sentences, prompts, formatted targets)."""
    by_group: dict[int, list[Any]] = {}
    for s in sentences:
        by_group.setdefault(getattr(s, "group", -1), []).append(s)
    kept: list[Any] = []
    prompts: list[str] = []
    targets: list[str] = []
    for s in sentences:
        row = by_group.get(getattr(s, "group", -1), []) if getattr(s, "group", -1) >= 0 else []
        partner = next((o for o in row if (o.label == 0) != (s.label == 0)), None)
        if partner is not None:
            ex = Example(partner.variety, s.variety, partner.text, s.text, getattr(s, "group", -1))
            prompt, target = format_example(ex)
            kept.append(s)
            prompts.append(prompt)
            targets.append(target)
    return kept, prompts, targets
