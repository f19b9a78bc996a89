"""Exact speed-ups of greedy decoding: continuous batching (slots refilled as rows finish,
caches joined) and prompt-lookup drafts verified in the same forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vardecouple.evaluate.stepping import Shortlist, cache_argument, left_padded, next_tokens

if TYPE_CHECKING:
    from vardecouple.evaluate.decode import DecodeConfig

__all__ = ["greedy_slots"]


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
def greedy_slots(
    model: nn.Module,
    rows: list[list[int]],
    budgets: list[int],
    stops: frozenset[int],
    pad: int,
    config: DecodeConfig,
    on_done: Any = None,
    stats: dict[str, int] | None = None,
    shortlist: Shortlist | None = None,
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
    cache_arg = cache_argument(model)
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
        fresh, first = next_tokens(model, shortlist, torch.tensor(new, device=device), 1,
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
        cache, best = next_tokens(model, shortlist, torch.tensor(active, device=device), width,
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
