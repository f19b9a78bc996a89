"""Batched greedy decoding with the KV cache (beam search through ``generate``).

Prompts are sorted by length (longest first) and left-padded in batches; each row's
position ids count only its real tokens, so a row's output does not depend on what
else is in its batch. A row stops at the first generated token whose text contains a
newline (the plain template ends targets with ``"\\n"``), at EOS, or after
``ceil(length_ratio · source tokens) + extra_tokens`` tokens (at most
``max_new_tokens``). Finished rows leave the batch and the cache
(``Cache.batch_select_indices``), so one long row does not keep seven short ones busy.
The hypothesis is the generated text up to that newline, stripped.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vardecouple.data.prompts import _prompt_ids
from vardecouple.progress import progress as progress_bar

__all__ = ["DecodeConfig", "decode", "left_padded", "prompt_ids", "stop_ids"]


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode. ``num_beams > 1`` uses ``transformers``' beam search."""

    batch_size: int = 8
    length_ratio: float = 2.0
    extra_tokens: int = 8
    max_new_tokens: int = 256
    max_prompt_tokens: int = 512
    num_beams: int = 1

    def __post_init__(self) -> None:
        for name in ("batch_size", "extra_tokens", "max_new_tokens", "max_prompt_tokens"):
            if getattr(self, name) < (0 if name == "extra_tokens" else 1):
                raise ValueError(f"decode: {name}={getattr(self, name)} must be positive")
        if self.length_ratio <= 0:
            raise ValueError(f"decode: length_ratio={self.length_ratio} must be > 0")
        if self.num_beams < 1:
            raise ValueError(f"decode: num_beams={self.num_beams} must be ≥ 1")

    def budget(self, source_tokens: int) -> int:
        """New-token budget for a source of ``source_tokens`` tokens."""
        return min(
            self.max_new_tokens, math.ceil(self.length_ratio * source_tokens) + self.extra_tokens
        )


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
    prefix, ids = _prompt_ids(tokenizer, prompt)
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


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].strip()


def _cache_argument(model: nn.Module) -> str:
    """The KV-cache argument's name: ``cache`` from transformers 5.24 on (where
    ``past_key_values`` is deprecated), ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def _greedy_batch(
    model: nn.Module, rows: list[list[int]], budgets: list[int], stops: torch.Tensor, pad: int
) -> list[list[int]]:
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_padded(rows, pad))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out: list[list[int]] = [[] for _ in rows]
    alive = torch.arange(len(rows), device=device)  # original row of each batch row
    left = torch.tensor(budgets, device=device)
    cache = None
    step_ids, step_pos = ids, positions
    stops = stops.to(device)
    cache_arg = _cache_argument(model)
    while True:
        result = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=step_pos,
            use_cache=True,
            logits_to_keep=1,
            **{cache_arg: cache},
        )
        cache = result[cache_arg] if cache_arg in result else None
        token = result.logits[:, -1].argmax(-1)
        for k, row in enumerate(alive.tolist()):
            out[row].append(int(token[k]))
        left = left - 1
        done = torch.isin(token, stops) | (left <= 0)
        if bool(done.all()):
            return out
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, left, token = alive[keep], left[keep], token[keep]
            mask, step_pos = mask[keep], step_pos[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        step_pos = step_pos[:, -1:] + 1
        step_ids = token[:, None]


@torch.no_grad()
def _beam_batch(
    model: nn.Module,
    rows: list[list[int]],
    budgets: list[int],
    stops: frozenset[int],
    pad: int,
    num_beams: int,
) -> list[list[int]]:
    device = next(model.parameters()).device
    ids, mask = left_padded(rows, pad)
    width = ids.shape[1]
    generated = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=max(budgets),
        num_beams=num_beams,
        do_sample=False,
        eos_token_id=sorted(stops),
        pad_token_id=pad,
    )
    return [g[width:].tolist() for g in generated]


def decode(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    sources: Sequence[str] | None = None,
    config: DecodeConfig | None = None,
    *,
    progress: bool = True,
    desc: str = "decode",
) -> list[str]:
    """Hypotheses for ``prompts`` (in their order); budgets from ``sources``' token counts."""
    config = config or DecodeConfig()
    if sources is not None and len(sources) != len(prompts):
        raise ValueError(f"decode: {len(prompts)} prompts but {len(sources)} sources")
    if not prompts:
        return []
    contexts = [prompt_ids(tokenizer, p, config.max_prompt_tokens) for p in prompts]
    lengths = [
        len(tokenizer.encode(s, add_special_tokens=False)) if sources is not None else len(c)
        for s, c in zip(sources or prompts, contexts, strict=True)
    ]
    budgets = [config.budget(n) for n in lengths]
    stops = stop_ids(tokenizer)
    stop_tensor = torch.tensor(sorted(stops), dtype=torch.long)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: (-len(contexts[i]), i))
    results: list[list[int]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        bar = progress_bar(total=len(prompts), desc=desc, disable=not progress, leave=False)
        for start in range(0, len(order), config.batch_size):
            chunk = order[start : start + config.batch_size]
            rows = [contexts[i] for i in chunk]
            budget = [budgets[i] for i in chunk]
            if config.num_beams > 1:
                got = _beam_batch(model, rows, budget, stops, pad, config.num_beams)
            else:
                got = _greedy_batch(model, rows, budget, stop_tensor, pad)
            for i, tokens in zip(chunk, got, strict=True):
                results[i] = tokens
            bar.update(len(chunk))
        bar.close()
    finally:
        model.train(was_training)
    texts = tokenizer.batch_decode(results, skip_special_tokens=True)
    return [_first_line(t) for t in texts]
