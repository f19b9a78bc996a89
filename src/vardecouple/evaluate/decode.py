"""Batched greedy decoding with the KV cache (beam search through ``generate``).

Prompts are sorted by length (longest first) and left-padded in batches; each row's
position ids count only its real tokens, so a row's output does not depend on what
else is in its batch. A row stops at the first generated token whose text contains a
newline (the plain template ends targets with ``"\\n"``), at EOS, or after
``ceil(length_ratio · source tokens) + extra_tokens`` tokens (at most
``max_new_tokens``). Finished rows leave the batch and the cache
(``Cache.batch_select_indices``), so one long row does not keep seven short ones busy.
The hypothesis is the generated text up to that newline, stripped.

Two exact speed-ups of greedy decoding (``DecodeConfig``; :func:`greedy_slots`):
``continuous`` keeps ``batch_size`` decoding slots full by prefilling queued rows as
rows finish and joining their caches to the batch's; ``lookup_tokens = k`` drafts up to
``k`` tokens per row by prompt lookup (the tokens that followed the latest earlier
occurrence, in the prompt or the output so far, of the output's last n-gram) and
verifies them in the same forward pass, keeping the draft prefix that equals the
model's own argmax. Both pick the tokens greedy decoding picks; only float rounding
(other matrix shapes) can move an argmax whose top-2 logits are nearly tied.
``DecodeConfig()`` is plain static batches of 8; a run's ``[eval]`` defaults turn both
on (32 slots on a CPU, drafts of 8: the fastest measured on a 2-core CPU).

Two approximations, opt-in (they can change hypotheses; a run records them):
``dtype = "bf16"`` decodes with the weights cast to bfloat16 for the call (the
float32 weights are put back afterwards, untouched; a shortlist's few head rows keep
the model's own dtype); a **shortlist** of output tokens
(``decode(shortlist=…)``, e.g. the tokens of the training targets in the target
variety) takes each row's argmax over that set plus the row's own prompt tokens and the
stop tokens, computing the LM head only for their union instead of the whole
vocabulary (262,144 rows on Gemma 3).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vardecouple.evaluate.slots import greedy_slots
from vardecouple.evaluate.stepping import (
    Shortlist,
    cache_argument,
    left_padded,
    next_tokens,
    prompt_ids,
    stop_ids,
)
from vardecouple.progress import progress as progress_bar

__all__ = ["DTYPES", "DecodeConfig", "decode", "left_padded", "prompt_ids", "stop_ids"]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode. ``num_beams > 1`` uses ``transformers``' beam search."""

    batch_size: int = 8
    length_ratio: float = 2.0
    extra_tokens: int = 8
    max_new_tokens: int = 256
    max_prompt_tokens: int = 512
    num_beams: int = 1
    continuous: bool = False  # refill freed rows from the queue (batch_size = slots)
    lookup_tokens: int = 0  # prompt-lookup drafts of this many tokens (0: off)
    lookup_ngram: int = 3  # longest n-gram of the output tail searched in the prompt
    # parameters cast to this dtype while decoding ("bf16": approximate); None: as they are
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in DTYPES:
            raise ValueError(f"decode: dtype={self.dtype!r} must be one of {sorted(DTYPES)}")
        if self.lookup_tokens < 0 or self.lookup_ngram < 1:
            raise ValueError(
                f"decode: lookup_tokens={self.lookup_tokens} must be ≥ 0 and "
                f"lookup_ngram={self.lookup_ngram} ≥ 1"
            )
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


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0].strip()


@contextmanager
def _weights_in(model: nn.Module, dtype: torch.dtype | None) -> Iterator[None]:
    """Within the block ``model``'s floating-point parameters are ``dtype`` copies (None:
    as they are); the original tensors are put back afterwards (no round trip)."""
    params = [p for p in model.parameters()
              if dtype is not None and p.is_floating_point() and p.dtype != dtype]  # fmt: skip
    originals = [p.data for p in params]
    try:
        for p in params:
            p.data = p.data.to(dtype)
        yield
    finally:
        for p, t in zip(params, originals, strict=True):
            p.data = t


@torch.no_grad()
def _greedy_batch(
    model: nn.Module,
    rows: list[list[int]],
    budgets: list[int],
    stops: torch.Tensor,
    pad: int,
    shortlist: Shortlist | None = None,
    which: torch.Tensor | None = None,
) -> list[list[int]]:
    """Static-batch greedy decoding; ``which[k]``: row ``k``'s row in ``shortlist``."""
    device = next(model.parameters()).device
    ids, mask = (t.to(device) for t in left_padded(rows, pad))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out: list[list[int]] = [[] for _ in rows]
    alive = torch.arange(len(rows), device=device)  # original row of each batch row
    which = which.to(device) if which is not None else alive
    left = torch.tensor(budgets, device=device)
    cache = None
    step_ids, step_pos = ids, positions
    stops = stops.to(device)
    cache_arg = cache_argument(model)
    while True:
        cache, token = next_tokens(model, shortlist, which[alive], 1, cache_arg,
                                    input_ids=step_ids, attention_mask=mask,
                                    position_ids=step_pos, **{cache_arg: cache})  # fmt: skip
        token = token[:, -1]
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
    shortlist: Collection[int] | None = None,
    progress: bool = True,
    desc: str = "decode",
    stats: dict[str, int] | None = None,
) -> list[str]:
    """Hypotheses for ``prompts`` (in their order); budgets from ``sources``' token counts.

    ``shortlist`` (token ids; approximate, greedy only): each row's argmax is taken over
    these, its own prompt tokens and the stop tokens. ``stats`` (a dict) is filled with
    counts: ``forward_passes``, ``drafted`` and ``accepted`` draft tokens, ``repacks``
    (continuous batching or prompt lookup) and ``shortlist_tokens`` (the union's size)."""
    config = config or DecodeConfig()
    if sources is not None and len(sources) != len(prompts):
        raise ValueError(f"decode: {len(prompts)} prompts but {len(sources)} sources")
    if shortlist is not None and config.num_beams > 1:
        raise ValueError("decode: a shortlist works with greedy decoding only (num_beams = 1)")
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
        head = None
        if shortlist is not None:  # rows in decoding order; the head's rows keep their dtype
            head = Shortlist.build(model, [contexts[i] for i in order], {*shortlist, *stops})
            if stats is not None:
                stats["shortlist_tokens"] = len(head.ids)
        with _weights_in(model, DTYPES.get(config.dtype or "")):
            bar = progress_bar(total=len(prompts), desc=desc, disable=not progress, leave=False)
            if config.num_beams == 1 and (config.continuous or config.lookup_tokens):
                got = greedy_slots(model, [contexts[i] for i in order],
                                    [budgets[i] for i in order], stops, pad, config,
                                    on_done=bar.update, stats=stats, shortlist=head)  # fmt: skip
                for i, tokens in zip(order, got, strict=True):
                    results[i] = tokens
                order = []
            for start in range(0, len(order), config.batch_size):
                chunk = order[start : start + config.batch_size]
                rows = [contexts[i] for i in chunk]
                budget = [budgets[i] for i in chunk]
                if config.num_beams > 1:
                    got = _beam_batch(model, rows, budget, stops, pad, config.num_beams)
                else:
                    which = torch.arange(start, start + len(chunk))
                    got = _greedy_batch(model, rows, budget, stop_tensor, pad, head, which)
                for i, tokens in zip(chunk, got, strict=True):
                    results[i] = tokens
                bar.update(len(chunk))
            bar.close()
    finally:
        model.train(was_training)
    texts = tokenizer.batch_decode(results, skip_special_tokens=True)
    return [_first_line(t) for t in texts]
