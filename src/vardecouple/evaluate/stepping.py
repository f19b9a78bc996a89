"""One decoding step shared by every greedy loop: the forward pass over new tokens, the
argmax (over a shortlist of the LM head when one is given), and the prompt helpers."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vardecouple.data.prompts import prompt_token_ids

__all__ = ["Shortlist", "cache_argument", "left_padded", "next_tokens", "prompt_ids", "stop_ids"]


_STOP_CACHE: dict[int, frozenset[int]] = {}


def stop_ids(tokenizer: Any) -> frozenset[int]:
    """Token ids that end a hypothesis: EOS/PAD-like specials and any token containing ``\\n``."""
    key = id(tokenizer)
    if key not in _STOP_CACHE:
        size = len(tokenizer)
        texts = tokenizer.batch_decode([[i] for i in range(size)], skip_special_tokens=False)
        ids = {i for i, t in enumerate(texts) if "\n" in t}
        for name in ("eos_token_id", "pad_token_id"):
            value = getattr(tokenizer, name, None)
            if isinstance(value, int):
                ids.add(value)
        for token in ("<end_of_turn>", "<eos>", "</s>", "<|endoftext|>", "<|im_end|>"):
            tid = tokenizer.convert_tokens_to_ids(token)
            if isinstance(tid, int) and tid != getattr(tokenizer, "unk_token_id", None):
                ids.add(tid)
        _STOP_CACHE[key] = frozenset(ids)
    return _STOP_CACHE[key]


def prompt_ids(tokenizer: Any, prompt: str, max_tokens: int) -> list[int]:
    """Exactly the context tokens training used (BOS + prompt), cut from the left."""
    prefix, ids = prompt_token_ids(tokenizer, prompt)
    room = max(1, max_tokens - len(prefix))
    return prefix + ids[-room:]


def left_padded(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of ``rows`` padded on the left to one width."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[k, width - len(r) :] = 1
    return ids, mask


def cache_argument(model: nn.Module) -> str:
    """The KV-cache argument's name: ``cache`` from transformers 5.24 on (where
    ``past_key_values`` is deprecated), ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@dataclass
class Shortlist:
    """The LM head cut to ``ids`` (the union of every row's allowed tokens, sorted);
    ``allowed[r]`` marks the ones row ``r`` may pick."""

    body: nn.Module
    ids: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    allowed: torch.Tensor

    @classmethod
    def build(
        cls, model: nn.Module, rows: Sequence[Sequence[int]], common: Collection[int]
    ) -> Shortlist:
        """Row ``r`` may pick ``common`` and its own prompt tokens ``rows[r]``."""
        head = model.get_output_embeddings()
        if not isinstance(head, nn.Linear) or hasattr(head, "base_layer"):
            raise ValueError(
                "decode: an output-vocabulary shortlist needs a plain nn.Linear LM head "
                f"(this model's is {type(head).__name__}: an adapter on it?)"
            )
        vocab = head.weight.shape[0]
        common = {t for t in common if 0 <= t < vocab}
        union = sorted(common.union(*({t for t in r if 0 <= t < vocab} for r in rows)))
        column = {t: j for j, t in enumerate(union)}
        allowed = torch.zeros((len(rows), len(union)), dtype=torch.bool)
        allowed[:, [column[t] for t in common]] = True
        for r, row in enumerate(rows):
            allowed[r, [column[t] for t in set(row) if t in column]] = True
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        device = head.weight.device
        ids = torch.tensor(union, dtype=torch.long, device=device)
        bias = head.bias[ids] if head.bias is not None else None
        return cls(base.get_decoder(), ids, head.weight[ids], bias, allowed.to(device))


def next_tokens(
    model: nn.Module,
    shortlist: Shortlist | None,
    which: torch.Tensor,
    keep: int,
    cache_arg: str,
    **inputs: Any,
) -> tuple[Any, torch.Tensor]:
    """One forward pass; returns its cache and the argmax token ids at the last ``keep``
    positions (``[rows, keep]``), over the shortlist's tokens allowed to rows ``which``
    when there is one (a final soft-cap of the logits is monotone: it cannot move the
    argmax, so the body's hidden states and the cut head are all it takes)."""
    if shortlist is None:
        result = model(**inputs, use_cache=True, logits_to_keep=keep)
        return result.get(cache_arg), result.logits[:, -keep:].argmax(-1)
    result = shortlist.body(**inputs, use_cache=True)
    hidden = result.last_hidden_state[:, -keep:]
    weight = shortlist.weight
    scores = torch.nn.functional.linear(hidden.to(weight.dtype), weight, shortlist.bias)
    scores = scores.masked_fill(~shortlist.allowed[which][:, None, :], float("-inf"))
    return result.get(cache_arg), shortlist.ids[scores.argmax(-1)]
