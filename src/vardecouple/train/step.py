"""One optimizer step's pieces: the batch plan, collation, the loss over supervised
positions only, and one micro-step (forward, ``lm_loss + λ·L_dec``, backward, AdamW).

Logits are computed only at supervised positions (exact: the loss never looks
elsewhere; with the rest of the loop, 2.3× the tokens/s of HF ``Trainer``'s
full-vocabulary logits on gemma3-270m, BENCHMARKS.md). Under several processes each
process's loss is weighted by its share of the batch's target (and penalised) tokens,
so DDP's averaged gradient is that of the whole batch (:func:`micro_step`).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from vardecouple.decouple import OnlineDecoupler
from vardecouple.model.states import capture, decoder_body

__all__ = [
    "STEP_SCALARS",
    "TRACKERS",
    "Objective",
    "Tracker",
    "TrainConfig",
    "batches",
    "collate",
    "dev_loss",
    "micro_step",
    "refresh_scalars",
    "start_penalty",
    "supervised_loss",
    "trimmed_vocab",
]


Tracker = Literal["tensorboard", "wandb"]
TRACKERS: tuple[str, ...] = get_args(Tracker)


@dataclass
class TrainConfig:
    """Optimisation settings (the data, model and decoupler have their own configs).

    ``dtype = "bf16"`` runs the forward and backward passes under bf16 autocast (on a
    CPU too: its bf16 matrix instructions, where it has them, about double the
    tokens/s); the LoRA weights, their gradients and AdamW's state stay fp32, and so do
    the loss, the penalty and all subspace math. Unset: bf16 on a CUDA device, fp32
    elsewhere. The dev loss is measured in fp32 whatever the dtype.

    ``report_to``: accelerate trackers (``"tensorboard"``, ``"wandb"``) that receive every
    step's losses, penalty, λ and learning rate and every refresh's overlaps and angles
    (:func:`refresh_scalars`), written under ``OUT/logs``.
    """

    steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 2e-4
    schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_every: int = 0
    trim_vocab: bool = False
    dtype: Literal["fp32", "bf16"] | None = None
    report_to: tuple[Tracker, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"train: {name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"train: lr must be > 0, got {self.lr}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(
                f"train: schedule must be 'constant' or 'cosine', got {self.schedule!r}"
            )
        if self.dtype not in (None, "fp32", "bf16"):
            raise ValueError(f"train: dtype must be 'fp32' or 'bf16', got {self.dtype!r}")
        for tracker in self.report_to:
            if tracker not in TRACKERS:
                raise ValueError(
                    f"train: report_to: unknown tracker {tracker!r}; one of {TRACKERS}"
                )
            if importlib.util.find_spec(tracker) is None:
                raise ValueError(
                    f"train: report_to {tracker!r} needs the {tracker} package "
                    f"(pip install {tracker})"
                )

    @property
    def resolved_dtype(self) -> str:
        """``dtype``, or when unset bf16 on a CUDA device and fp32 elsewhere."""
        return self.dtype or ("bf16" if torch.cuda.is_available() else "fp32")


STEP_SCALARS = ("loss", "lm_loss", "penalty", "lambda", "lr", "tokens_per_s")


def refresh_scalars(record: dict[str, Any]) -> dict[str, float]:
    """A refresh's log record as flat scalars: ``decoupling/overlap/LAYER/VARIETY/own``
    (and ``…/reference``), ``decoupling/held_out_penalty/LAYER/WHICH`` and
    ``decoupling/angle_to_previous/LAYER``."""
    out = {
        f"decoupling/overlap/{layer}/{variety}/{which}": value
        for layer, per in record.get("overlap", {}).items()
        for variety, pair in per.items()
        for which, value in pair.items()
    }
    for layer, per in record.get("held_out_penalty", {}).items():
        out |= {f"decoupling/held_out_penalty/{layer}/{k}": v for k, v in per.items()}
    for layer, angle in record.get("angle_to_previous", {}).items():
        out[f"decoupling/angle_to_previous/{layer}"] = angle
    return out


def collate(features: Sequence[dict[str, Any]], pad_id: int) -> dict[str, Tensor]:
    """Right-pad tokenized examples (``input_ids``, ``labels``, ``target_mask``,
    ``low_resource``) into tensors with an ``attention_mask``."""
    width = max(len(f["input_ids"]) for f in features)
    out: dict[str, list[list[int]]] = {
        k: [] for k in ("input_ids", "labels", "target_mask", "attention_mask")
    }
    for f in features:
        pad = width - len(f["input_ids"])
        out["input_ids"].append(list(f["input_ids"]) + [pad_id] * pad)
        out["labels"].append(list(f["labels"]) + [-100] * pad)
        out["target_mask"].append([int(b) for b in f["target_mask"]] + [0] * pad)
        out["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
    batch = {k: torch.tensor(v) for k, v in out.items()}
    batch["low_resource"] = torch.tensor([bool(f.get("low_resource", True)) for f in features])
    return batch


def batches(lengths: Sequence[int], batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Length-grouped batches for ``steps`` steps: each epoch is a seeded shuffle, cut
    into chunks of 50 batches sorted by length (less padding, still random). The whole
    order is a pure function of ``(lengths, batch_size, seed)``, so resuming at step s
    only needs s."""
    rng = random.Random(seed)
    order: list[list[int]] = []
    while len(order) < steps:
        idx = list(range(len(lengths)))
        rng.shuffle(idx)
        chunk = 50 * batch_size
        epoch: list[list[int]] = []
        for start in range(0, len(idx), chunk):
            part = sorted(idx[start : start + chunk], key=lambda i: lengths[i])
            epoch += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
        rng.shuffle(epoch)
        order += epoch
    return order[:steps]


def supervised_loss(
    model: nn.Module,
    batch: dict[str, Tensor],
    layers: Sequence[int],
    vocab: Tensor | None = None,
) -> tuple[Tensor, dict[int, Tensor]]:
    """Mean next-token cross-entropy over target positions, with logits computed only
    there; and the hidden states of ``layers`` from the same forward pass.

    ``vocab`` (sorted token ids, every target id among them) restricts the softmax to
    those rows of the output matrix: an approximation (the partition function omits
    the other tokens, so the loss is a lower bound of the exact one), off by default.
    """
    body = decoder_body(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    with capture(model, layers) as hidden:
        out = body(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        )
    h = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    targets = batch["labels"][:, 1:]
    where = targets != -100
    head = base.get_output_embeddings()
    picked, labels = h[:, :-1][where], targets[where]
    if vocab is None:
        logits = head(picked)
    else:
        vocab = vocab.to(picked.device)
        logits = nn.functional.linear(
            picked, head.weight[vocab], None if head.bias is None else head.bias[vocab]
        )
        labels = torch.searchsorted(vocab, labels)
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    loss = nn.functional.cross_entropy(logits.float(), labels)
    return loss, dict(hidden)


class Objective(nn.Module):
    """:func:`supervised_loss` as a module, so that a wrapper (DDP, FSDP…) sees the
    forward pass it must synchronise; returns ``(lm_loss, hidden states by layer)``.

    ``dtype = "bf16"``: the forward pass runs under bf16 autocast (the backward pass
    follows it), with the frozen linear weights cast once, at the first call, instead of
    at every matmul of every step: the same values autocast would compute, without
    re-allocating a bf16 copy of the model (and the page faults that come with it) per
    step. The copies are swapped in per module for the forward pass only, so a tied
    input embedding, the probe refresh, the dev loss and saving all see fp32 weights.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[int],
        vocab: Tensor | None,
        dtype: Literal["fp32", "bf16"] = "fp32",
    ) -> None:
        super().__init__()
        self.model, self.layers, self.vocab, self.dtype = model, tuple(layers), vocab, dtype
        self._low: list[tuple[nn.Module, str, nn.Parameter]] | None = None

    def forward(self, **batch: Tensor) -> tuple[Tensor, dict[int, Tensor]]:
        if self.dtype != "bf16":
            return supervised_loss(self.model, batch, self.layers, self.vocab)
        if self._low is None:
            self._low = _frozen_linear_copies(self.model, torch.bfloat16)
        originals = [(m, name, m._parameters[name]) for m, name, _ in self._low]
        try:
            for m, name, low in self._low:
                m._parameters[name] = low
            with torch.autocast(batch["input_ids"].device.type, torch.bfloat16):
                return supervised_loss(self.model, batch, self.layers, self.vocab)
        finally:
            for m, name, original in originals:
                m._parameters[name] = original


def _frozen_linear_copies(
    model: nn.Module, dtype: torch.dtype
) -> list[tuple[nn.Module, str, nn.Parameter]]:
    """``(module, "weight"/"bias", copy in dtype)`` of every linear layer's frozen
    floating-point parameters (the base weights under LoRA, the LM head)."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            for name in ("weight", "bias"):
                p = m._parameters.get(name)
                if p is not None and not p.requires_grad and p.dtype != dtype:
                    out.append((m, name, nn.Parameter(p.detach().to(dtype), requires_grad=False)))
    return out


def _summed(accelerator: Any, *values: float) -> list[float]:
    """``values`` summed over the processes (as they are in one process)."""
    if accelerator.num_processes == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    return accelerator.reduce(t, "sum").tolist()


def trimmed_vocab(features: Sequence[dict[str, Any]], tokenizer: Any) -> Tensor:
    """Sorted ids of every target token in ``features`` plus the special tokens."""
    ids = {i for f in features for i in f["labels"] if i != -100}
    ids |= {i for i in (tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
    return torch.tensor(sorted(ids))


@torch.no_grad()
def dev_loss(
    model: nn.Module,
    features: Sequence[dict[str, Any]],
    pad_id: int,
    vocab: Tensor | None = None,
    batch_size: int = 16,
) -> float:
    """Token-weighted mean cross-entropy of ``features``' targets (no penalty)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = weight = 0.0
    try:
        for start in range(0, len(features), batch_size):
            batch = collate(list(features[start : start + batch_size]), pad_id)
            batch = {k: v.to(device) for k, v in batch.items()}
            n = float((batch["labels"][:, 1:] != -100).sum())
            loss, _ = supervised_loss(model, batch, (), vocab)
            total, weight = total + float(loss) * n, weight + n
    finally:
        model.train(was_training)
    return total / max(weight, 1.0)


@torch.no_grad()
def start_penalty(
    model: nn.Module, batch: dict[str, Tensor], decoupler: OnlineDecoupler, vocab: Tensor | None
) -> float:
    """The unweighted penalty on ``batch`` before any update (magnitude matching)."""
    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    _, hidden = supervised_loss(model, batch, decoupler.layers, vocab)
    mask = decoupler.token_mask(
        batch["attention_mask"], batch["target_mask"], batch["low_resource"]
    )
    return float(decoupler.penalty(hidden, mask))


def micro_step(
    accelerator: Any,
    objective: nn.Module,
    decoupler: OnlineDecoupler,
    batch: dict[str, Tensor],
    lam: float,
    *,
    optimizer: Any,
    scheduler: Any,
    params: Sequence[Tensor],
    max_grad_norm: float,
) -> tuple[float, float, float, int]:
    """One micro-batch of :func:`train` on this process's share of the batch: forward,
    ``lm_share·L_LM + λ·pen_share·L_dec``, backward, and (when the gradients sync)
    clipping, AdamW and one scheduler step. The shares are this process's fraction of
    the batch's target and penalised tokens (times the process count; 1 in one process),
    so DDP's averaged gradient is the whole batch's. Returns the whole batch's
    ``(lm_loss, penalty, loss, non-pad tokens)``, as one process would log them."""
    world = accelerator.num_processes
    mask = decoupler.token_mask(
        batch["attention_mask"], batch["target_mask"], batch["low_resource"]
    )
    n, w = float((batch["labels"][:, 1:] != -100).sum()), float(mask.sum())
    n_all, w_all, tokens = _summed(accelerator, n, w, float(batch["attention_mask"].sum()))
    lm_share, pen_share = n * world / n_all, w * world / max(w_all, 1.0)
    with accelerator.accumulate(objective):
        lm_loss, hidden = objective(**batch)
        loss, penalty = decoupler.add_penalty(lm_share * lm_loss, hidden, mask, lam, pen_share)
        accelerator.backward(loss)
        if accelerator.sync_gradients and max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        if accelerator.sync_gradients:  # once per optimizer step, whatever the processes
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    if world == 1:
        return lm_loss.item(), penalty.item(), loss.item(), int(tokens)
    lm_sum, pen_sum = _summed(accelerator, lm_loss.item() * n, penalty.item() * w)
    lm, pen = lm_sum / n_all, pen_sum / max(w_all, 1.0)
    return lm, pen, (lm + lam * pen if lam > 0 else lm), int(tokens)
