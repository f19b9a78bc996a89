"""Batched greedy decoding with the KV cache (beam search through ``generate``).

Prompts are sorted by length (longest first) and left-padded in batches; each row's
position ids count only its real tokens, so a row's output does not depend on what
else is in its batch. A row stops at the first generated token whose text contains a
newline (the plain template ends targets with ``"\\n"``), at EOS, or after
``ceil(length_ratio · source tokens) + extra_tokens`` tokens (at most
``max_new_tokens``). Finished rows leave the batch and the cache
(``Cache.batch_select_indices``), so one long row does not keep seven short ones busy.
The hypothesis is the generated text up to that newline, stripped.

Two exact speed-ups of greedy decoding (``DecodeConfig``; :func:`_greedy_slots`):
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

import inspect
import math
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vardecouple.data.prompts import _prompt_ids
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


@dataclass
class _Shortlist:
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
    ) -> _Shortlist:
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


def _next_tokens(
    model: nn.Module,
    shortlist: _Shortlist | None,
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


@torch.no_grad()
def _greedy_batch(
    model: nn.Module,
    rows: list[list[int]],
    budgets: list[int],
    stops: torch.Tensor,
    pad: int,
    shortlist: _Shortlist | None = None,
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
    cache_arg = _cache_argument(model)
    while True:
        cache, token = _next_tokens(model, shortlist, which[alive], 1, cache_arg,
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


def _draft(seq: Sequence[int], ngram: int, k: int) -> list[int]:
    """Prompt lookup: the ``k`` tokens that followed the latest earlier occurrence of the
    longest tail n-gram (n = ``ngram`` … 1) of ``seq``; ``[]`` when there is none."""
    if k == 0:
        return []
    for n in range(min(ngram, len(seq) - 1), 0, -1):
        tail = list(seq[-n:])
        for start in range(len(seq) - n - 1, -1, -1):
            if list(seq[start : start + n]) == tail:
                return list(seq[start + n : start + n + k])
    return []


def _left_pad_cache(cache: Any, width: int) -> None:
    """Left-pad every layer of ``cache`` with zero states to ``width`` positions."""
    for layer in cache.layers:
        have = layer.keys.shape[-2]
        if have < width:
            pad = (0, 0, width - have, 0)
            layer.keys = torch.nn.functional.pad(layer.keys, pad)
            layer.values = torch.nn.functional.pad(layer.values, pad)
        if hasattr(layer, "cumulative_length"):  # sliding-window layers count positions
            layer.cumulative_length = width


def _repack(cache: Any, mask: torch.Tensor) -> torch.Tensor:
    """Move each row's visible cache entries to the right end of a narrower cache (the
    masked ones, rejected drafts and padding, are dropped); returns the new mask."""
    counts = mask.sum(1)
    width = int(counts.max())
    index = torch.zeros((mask.shape[0], width), dtype=torch.long, device=mask.device)
    new = torch.zeros((mask.shape[0], width), dtype=mask.dtype, device=mask.device)
    for r in range(mask.shape[0]):
        kept = mask[r].nonzero().squeeze(-1)
        index[r, width - len(kept) :] = kept
        new[r, width - len(kept) :] = 1
    for layer in cache.layers:
        at = index[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[-1])
        layer.keys = layer.keys.gather(2, at)
        layer.values = layer.values.gather(2, at)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = width
    return new


@torch.no_grad()
def _greedy_slots(
    model: nn.Module,
    rows: list[list[int]],
    budgets: list[int],
    stops: frozenset[int],
    pad: int,
    config: DecodeConfig,
    on_done: Any = None,
    stats: dict[str, int] | None = None,
    shortlist: _Shortlist | None = None,
) -> list[list[int]]:
    """Greedy decoding of every row with ``config.batch_size`` slots refilled from the
    queue as rows finish (``continuous``) and prompt-lookup drafts (``lookup_tokens``).

    One cache holds every active row; a 2-D attention mask says which of its entries
    each row sees. A step feeds each row its last token and its draft (copied from the
    prompt where the output's tail n-gram occurs there), and keeps the longest draft
    prefix that equals the model's own argmax at each position, plus the argmax after
    it: exactly the tokens greedy decoding picks, several per forward pass when the
    output copies the source. Rejected draft entries are masked; finished rows leave
    the cache; new rows are prefilled and joined to it (left-padded to one width);
    masked entries are dropped when they make up a wide part of the cache.
    """
    device = next(model.parameters()).device
    cache_arg = _cache_argument(model)
    queue = list(range(len(rows)))  # already longest first
    out: list[list[int]] = [[] for _ in rows]
    active: list[int] = []  # original row of each batch row
    last: list[int] = []  # each batch row's newest token, not yet in the cache
    pos: list[int] = []  # the position id that token takes
    left: list[int] = []  # budget left
    cache, mask = None, torch.zeros((0, 0), dtype=torch.long, device=device)
    slots, k = config.batch_size, config.lookup_tokens

    def emit(r: int, token: int) -> bool:
        """Append ``token`` to row ``r``'s output; True when the row is done."""
        out[r].append(token)
        return token in stops or len(out[r]) >= budgets[r]

    def prefill(new: list[int]) -> None:
        nonlocal cache, mask
        ids, m = (t.to(device) for t in left_padded([rows[r] for r in new], pad))
        positions = (m.cumsum(-1) - 1).clamp(min=0)
        fresh, first = _next_tokens(model, shortlist, torch.tensor(new, device=device), 1,
                                    cache_arg, input_ids=ids, attention_mask=m,
                                    position_ids=positions, **{cache_arg: None})  # fmt: skip
        first = first[:, -1].tolist()
        keep = []
        for j, r in enumerate(new):
            if emit(r, first[j]):
                if on_done is not None:
                    on_done(1)
            else:
                keep.append(j)
        if not keep:  # every new row ended at its first token
            return
        if len(keep) < len(new):
            fresh.batch_select_indices(torch.tensor(keep, dtype=torch.long, device=device))
            m = m[keep]
        new = [new[j] for j in keep]
        if cache is None or not active:
            cache, mask = fresh, m
        else:
            width = max(mask.shape[1], m.shape[1])
            _left_pad_cache(cache, width)
            _left_pad_cache(fresh, width)
            for layer, other in zip(cache.layers, fresh.layers, strict=True):
                layer.keys = torch.cat([layer.keys, other.keys])
                layer.values = torch.cat([layer.values, other.values])
            pad_to = lambda t: torch.nn.functional.pad(t, (width - t.shape[1], 0))  # noqa: E731
            mask = torch.cat([pad_to(mask), pad_to(m)])
        for r in new:
            active.append(r)
            last.append(out[r][-1])
            pos.append(len(rows[r]))
            left.append(budgets[r] - 1)

    refill_at = max(1, slots // 4)  # join new rows a few at a time (each join is a prefill)
    while queue or active:
        free = slots - len(active)
        if queue and (not active or (config.continuous and free >= min(refill_at, len(queue)))):
            new, queue = queue[:free], queue[free:]
            prefill(new)
            continue
        if not active:
            continue
        drafts = [_draft(rows[r] + out[r], config.lookup_ngram, min(k, left[i] - 1))
                  for i, r in enumerate(active)]  # fmt: skip
        width = 1 + max(len(d) for d in drafts)
        ids = torch.full((len(active), width), pad, dtype=torch.long)
        chunk = torch.zeros((len(active), width), dtype=torch.long)
        for i, d in enumerate(drafts):
            ids[i, : 1 + len(d)] = torch.tensor([last[i], *d])
            chunk[i, : 1 + len(d)] = 1
        positions = torch.tensor(pos)[:, None] + torch.arange(width)[None, :]
        ids, chunk, positions = ids.to(device), chunk.to(device), positions.to(device)
        cache, best = _next_tokens(model, shortlist, torch.tensor(active, device=device), width,
                                   cache_arg, input_ids=ids,
                                   attention_mask=torch.cat([mask, chunk], dim=1),
                                   position_ids=positions, **{cache_arg: cache})  # fmt: skip
        best = best.tolist()
        if stats is not None:
            stats["forward_passes"] = stats.get("forward_passes", 0) + 1
            stats["drafted"] = stats.get("drafted", 0) + sum(len(d) for d in drafts)
        done = []
        for i, r in enumerate(active):
            d, g = drafts[i], best[i]
            a = 0
            while a < len(d) and d[a] == g[a]:
                a += 1
            chunk[i, 1 + a :] = 0  # rejected draft tokens stay invisible
            if stats is not None:
                stats["accepted"] = stats.get("accepted", 0) + a
            finished = False
            for token in g[: a + 1]:
                if emit(r, token):
                    finished = True
                    break
            if finished:
                done.append(i)
                if on_done is not None:
                    on_done(1)
                continue
            last[i], pos[i] = out[r][-1], pos[i] + a + 1
            left[i] = budgets[r] - len(out[r])
        mask = torch.cat([mask, chunk], dim=1)
        if done:
            gone = set(done)
            keep = [i for i in range(len(active)) if i not in gone]
            if keep:
                cache.batch_select_indices(torch.tensor(keep, device=device))
                mask = mask[keep]
            active = [active[i] for i in keep]
            last, pos = [last[i] for i in keep], [pos[i] for i in keep]
            left = [left[i] for i in keep]
            if not active:
                cache, mask = None, torch.zeros((0, 0), dtype=torch.long, device=device)
        if active and mask.shape[1] - int(mask.sum(1).max()) > max(32, mask.shape[1] // 4):
            mask = _repack(cache, mask)
            if stats is not None:
                stats["repacks"] = stats.get("repacks", 0) + 1
    return out


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
            head = _Shortlist.build(model, [contexts[i] for i in order], {*shortlist, *stops})
            if stats is not None:
                stats["shortlist_tokens"] = len(head.ids)
        with _weights_in(model, DTYPES.get(config.dtype or "")):
            bar = progress_bar(total=len(prompts), desc=desc, disable=not progress, leave=False)
            if config.num_beams == 1 and (config.continuous or config.lookup_tokens):
                got = _greedy_slots(model, [contexts[i] for i in order],
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
