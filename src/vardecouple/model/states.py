"""Hidden states of decoder layers: forward hooks and gradient-free state reads.

Layers are 0-based indices of decoder-layer *outputs*. :func:`capture` registers the
hooks (the training loop keeps their outputs, with gradients, for the penalty);
:func:`token_states` and :func:`target_states` read states without gradients for the
probe, stopping the forward pass after the deepest wanted layer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vardecouple.data import tokenize_example

if TYPE_CHECKING:
    from vardecouple.model.load import LoadedModel

__all__ = [
    "capture",
    "decoder_layers",
    "folded_weights",
    "layer_states",
    "target_states",
    "token_states",
]


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama/Gemma/Mistral/Qwen/GPT-2 styles),
    also inside a data-parallel wrapper (DDP's ``module``)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    base = getattr(model, "base_model", model)
    candidates = [
        base,
        getattr(base, "model", None),
        getattr(getattr(base, "model", None), "model", None),
    ]
    for obj in candidates:
        if obj is None:
            continue
        for attr in ("layers", "h", "blocks"):
            found = getattr(obj, attr, None)
            if isinstance(found, nn.ModuleList):
                return found
        inner = getattr(obj, "language_model", None)
        if inner is not None and isinstance(getattr(inner, "layers", None), nn.ModuleList):
            return inner.layers
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def _foldable(module: nn.Module) -> bool:
    """A peft LoRA linear layer whose active adapters are plain LoRA (no DoRA or other
    variant), neither merged nor switched off: ``W x + s·B(A x) = (W + s·BA) x``."""
    base = getattr(module, "base_layer", None)
    if not (isinstance(base, nn.Linear) and hasattr(module, "get_delta_weight")):
        return False
    if getattr(module, "merged", True) or getattr(module, "disable_adapters", True):
        return False
    variants = getattr(module, "lora_variant", {})
    return not any(a in variants for a in module.active_adapters)


@contextmanager
@torch.no_grad()
def folded_weights(model: nn.Module, dtype: torch.dtype | None = None) -> Iterator[None]:
    """For gradient-free reads in eval mode: every LoRA linear layer runs as one matmul.

    Inside the block each peft LoRA linear layer's base weight is a temporary copy
    ``W + s·BA`` (its active adapters folded in) and the adapters are switched off, which
    computes what the adapted layer computes (``W x + s·B(A x)``, up to float rounding)
    with one matmul instead of three: ~16% less time for a probe read of gemma3-270m with
    r = 16 on q/k/v/o (BENCHMARKS.md). ``dtype`` (e.g. ``torch.bfloat16``) also casts
    every floating-point parameter, an approximation the caller opts into. On exit the
    original parameter tensors are put back (the same storage: no round trip), so the
    training that follows is unchanged. Dropout is ignored: call it on a model in
    ``eval()`` mode.
    """
    folded = [m for m in model.modules() if _foldable(m)]
    swapped: list[tuple[nn.Parameter, Tensor]] = []
    try:
        for m in folded:
            weight = m.base_layer.weight
            new = weight.detach().clone()
            for name in m.active_adapters:
                if name in m.lora_A:
                    new += m.get_delta_weight(name).to(new.dtype)
            swapped.append((weight, weight.data))
            weight.data = new
            m._disable_adapters = True
        if dtype is not None:
            done = {id(p) for p, _ in swapped}
            for p in model.parameters():
                if p.is_floating_point() and p.dtype != dtype:
                    if id(p) not in done:
                        swapped.append((p, p.data))
                    p.data = p.data.to(dtype)
        yield
    finally:
        for m in folded:
            m._disable_adapters = False
        for p, original in reversed(swapped):
            p.data = original


class StopForward(Exception):  # a control-flow signal, not an error
    """Raised by a hook once the deepest wanted layer ran."""


@contextmanager
def capture(
    model: nn.Module, layers: Sequence[int], *, stop_after: bool = False
) -> Iterator[dict[int, Tensor]]:
    """Forward hooks that store the output hidden states of the given decoder layers.

    ``stop_after=True`` aborts the forward pass right after the deepest of ``layers``
    (the caller suppresses :class:`StopForward`): the layers above it never run.
    Only for gradient-free reads of states (probe refreshes).
    """
    blocks = decoder_layers(model)
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{len(blocks) - 1}")
    store: dict[int, Tensor] = {}
    deepest = max(layers, default=-1)

    def hook(index: int):
        def fn(_module: nn.Module, _inputs: Any, output: Any) -> None:
            store[index] = output[0] if isinstance(output, tuple) else output
            if stop_after and index == deepest:
                raise StopForward

        return fn

    handles = [blocks[i].register_forward_hook(hook(i)) for i in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def layer_states(
    loaded: LoadedModel, texts: Sequence[str], layers: Sequence[int], **options: Any
) -> tuple[dict[int, Tensor], Tensor]:
    """:func:`token_states` of ``loaded.model`` with its tokenizer (the same ``options``)."""
    return token_states(loaded.model, loaded.tokenizer, texts, layers, **options)


@torch.no_grad()
def token_states(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    max_length: int = 128,
    add_special_tokens: bool = False,
) -> tuple[dict[int, Tensor], Tensor]:
    """Token states of ``texts`` at ``layers``, and the sentence index of every token.

    Returns ``({layer: (N, d) fp32 states}, (N,) sentence index)``, over all non-pad
    tokens except each sentence's first position (an attention sink with an outlier
    norm). Texts are sorted by length to cut padding; results follow the input order.
    Runs the decoder body only (no LM head), without gradients.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    per_layer: dict[int, list[Tensor]] = {i: [] for i in layers}
    owners: list[Tensor] = []
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    body = decoder_body(model)
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer(
                [texts[i] for i in idx],
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=max_length,
                add_special_tokens=add_special_tokens,
            ).to(device)
            mask = enc["attention_mask"].bool()
            mask[:, 0] = False
            with capture(model, layers, stop_after=True) as store, suppress(StopForward):
                body(
                    input_ids=enc["input_ids"],
                    attention_mask=enc["attention_mask"],
                    use_cache=False,
                )
            for i in layers:
                per_layer[i].append(store[i][mask].float().cpu())
            owners.append(torch.tensor(idx).repeat_interleave(mask.sum(1).cpu()))
    finally:
        tokenizer.padding_side = side
    sentence = torch.cat(owners)
    back = torch.argsort(sentence, stable=True)
    return {i: torch.cat(v)[back] for i, v in per_layer.items()}, sentence[back]


@torch.no_grad()
def target_states(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    max_length: int = 128,
) -> tuple[dict[int, Tensor], Tensor]:
    """Like :func:`token_states`, but each target text follows its prompt (as in
    training) and only the target tokens' states are returned: the very states the
    penalty sees (the probe's ``context = "prompt"``)."""

    encoded = [
        tokenize_example(tokenizer, p, t, max_length=max_length)
        for p, t in zip(prompts, targets, strict=True)
    ]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    per_layer: dict[int, list[Tensor]] = {i: [] for i in layers}
    owners: list[Tensor] = []
    device = next(model.parameters()).device
    body = decoder_body(model)
    pad = tokenizer.pad_token_id
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        width = max(len(encoded[i]["input_ids"]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention = torch.zeros(len(idx), width, dtype=torch.long)
        select = torch.zeros(len(idx), width, dtype=torch.bool)
        for row, i in enumerate(idx):
            n = len(encoded[i]["input_ids"])
            ids[row, :n] = torch.tensor(encoded[i]["input_ids"])
            attention[row, :n] = 1
            select[row, :n] = torch.tensor(encoded[i]["target_mask"])
        select[:, 0] = False
        with capture(model, layers, stop_after=True) as store, suppress(StopForward):
            body(input_ids=ids.to(device), attention_mask=attention.to(device), use_cache=False)
        for i in layers:
            per_layer[i].append(store[i][select.to(device)].float().cpu())
        owners.append(torch.tensor(idx).repeat_interleave(select.sum(1)))
    sentence = torch.cat(owners)
    back = torch.argsort(sentence, stable=True)
    return {i: torch.cat(v)[back] for i, v in per_layer.items()}, sentence[back]


def decoder_body(model: nn.Module) -> nn.Module:
    """The transformer body under a (possibly peft-wrapped) causal LM: no LM head."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "model", inner)
