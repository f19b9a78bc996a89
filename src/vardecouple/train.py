"""The training loop: LoRA fine-tuning with the online decoupler, in one readable screen.

Per optimizer step:

1. at step 0 and every ``refresh_every`` steps the decoupler re-estimates ``U`` from the
   probe set (every arm does, so overlap is logged for all);
2. one forward pass of the decoder body; forward hooks keep the chosen layers' states;
3. logits only at supervised positions (exact: the loss never looks elsewhere; with
   the rest of this loop, 2.3× the tokens/s of HF ``Trainer``'s full-vocabulary logits
   on gemma3-270m, BENCHMARKS.md), cross-entropy averaged over target tokens;
4. ``loss = lm_loss + λ·L_dec``; with λ = 0 the penalty is only logged (no gradient),
   so the standard arm's trajectory is exactly that of plain LoRA;
5. AdamW on the adapter weights, LR schedule, a JSON line in ``train_log.jsonl``.

The same code runs under ``torchrun`` / ``accelerate launch`` with several processes:
the loss is a module (:class:`Objective`) that :class:`accelerate.Accelerator` wraps
(DDP), each process takes every ``world``-th example of each batch, and each process's
loss is weighted by its share of the batch's target (and penalised) tokens, so the
averaged gradient is that of the whole batch: the same optimisation as one process.
Only the main process writes logs, checkpoints and adapters.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from vardecouple.atomic import write_json_atomic, write_text_atomic
from vardecouple.checkpoint import fault_point, has_checkpoint, load_checkpoint, save_checkpoint
from vardecouple.decouple import OnlineDecoupler
from vardecouple.states import _decoder_body, capture

__all__ = [
    "Objective",
    "TrainConfig",
    "batches",
    "collate",
    "dev_loss",
    "micro_step",
    "supervised_loss",
    "train",
    "trimmed_vocab",
]


@dataclass
class TrainConfig:
    """Optimisation settings (the data, model and decoupler have their own configs).

    ``dtype = "bf16"`` runs the forward and backward passes under bf16 autocast (on a
    CPU too: its bf16 matrix instructions, where it has them, about double the
    tokens/s); the LoRA weights, their gradients and AdamW's state stay fp32, and so do
    the loss, the penalty and all subspace math. Unset: bf16 on a CUDA device, fp32
    elsewhere. The dev loss is measured in fp32 whatever the dtype.
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

    @property
    def resolved_dtype(self) -> str:
        """``dtype``, or when unset bf16 on a CUDA device and fp32 elsewhere."""
        return self.dtype or ("bf16" if torch.cuda.is_available() else "fp32")


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
    body = _decoder_body(model)
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


#: accelerate engines that shard weights or optimizer state (docs/distributed.md)
_SHARDING_ENGINES = frozenset({"DEEPSPEED", "FSDP", "MEGATRON_LM"})


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


def _schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> Any:
    from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

    if config.schedule == "cosine":
        return get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    return get_constant_schedule_with_warmup(optimizer, config.warmup_steps)


def _truncate_log(path: Path, next_step: int) -> None:
    """Drop log records of steps at or after ``next_step`` (they will be redone)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if record.get("step", 0) < next_step:
            keep.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in keep))


@torch.no_grad()
def _start_penalty(
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


def _keep_if_best(model: nn.Module, out: Path, step: int, loss: float) -> None:
    """Save the adapter to ``out/best-adapter`` when ``loss`` beats ``best.json``'s."""
    import shutil

    best = out / "best.json"
    if best.exists() and json.loads(best.read_text())["dev_loss"] <= loss:
        return
    tmp = out / ".best-adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(out / "best-adapter", ignore_errors=True)
    os.replace(tmp, out / "best-adapter")
    write_json_atomic(best, {"step": step, "dev_loss": loss})


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
        if lam > 0:
            penalty = decoupler.penalty(hidden, mask)
            loss = lm_share * lm_loss + lam * pen_share * penalty
        else:  # logged only: no gradient, so λ = 0 is exactly plain LoRA
            with torch.no_grad():
                penalty = decoupler.penalty({k: v.detach() for k, v in hidden.items()}, mask)
            loss = lm_share * lm_loss
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


def train(
    model: nn.Module,
    tokenizer: Any,
    features: Sequence[dict[str, Any]],
    decoupler: OnlineDecoupler,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    resume: bool = False,
    dev_features: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Fine-tune ``model`` (already LoRA-wrapped: only adapters require grad) on the
    tokenized ``features``; logs to ``out_dir/train_log.jsonl``; returns a summary.

    Checkpoints go to ``out_dir/checkpoint`` every ``checkpoint_every`` steps;
    ``resume=True`` continues from there exactly (same batches, RNG, optimizer, probe).
    A finished run (``train_summary.json``) is never overwritten. With ``dev_features``
    the dev loss is measured at every checkpoint and at the end, and the adapter of the
    lowest one is kept in ``out_dir/best-adapter`` (``best.json`` says which step).
    """
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    from vardecouple.progress import progress as progress_bar

    out = Path(out_dir)
    if (out / "train_summary.json").exists():
        raise FileExistsError(f"train: {out} holds a finished run; choose another output folder")
    if not resume and (out / "train_log.jsonl").exists():
        raise FileExistsError(f"train: {out} holds a started run; resume it or choose another")
    torch.manual_seed(config.seed)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.grad_accum,
        mixed_precision="no",  # bf16 is micro_step's own autocast: accelerate's state is
        # one per process and would refuse a later fp32 run in the same process
        cpu=not torch.cuda.is_available(),
    )
    rank, world, main = (
        accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    )  # fmt: skip
    if accelerator.distributed_type.name in _SHARDING_ENGINES:
        raise NotImplementedError(
            f"train: {accelerator.distributed_type.name} is not supported: it shards weights "
            "or optimizer state, and the probe refresh, dev loss and checkpoints read them "
            "whole (docs/distributed.md); launch plain data parallel (torchrun) instead"
        )
    if config.batch_size < world:
        raise ValueError(f"train: batch_size {config.batch_size} < {world} processes")
    if world > 1 and not decoupler.shared:
        decoupler.distribute()  # built before the process group: shard its probe rows now
    accelerator.wait_for_everyone()  # every process has checked before any writes
    out.mkdir(parents=True, exist_ok=True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("train: the model has no trainable parameters (wrap it with add_lora)")
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = _schedule(optimizer, config)
    plan = batches(
        [len(f["input_ids"]) for f in features],
        config.batch_size,
        config.steps * config.grad_accum,
        config.seed,
    )
    pad_id = tokenizer.pad_token_id
    vocab = trimmed_vocab(features, tokenizer) if config.trim_vocab else None
    objective = Objective(model, decoupler.layers, vocab, config.resolved_dtype)
    # the scheduler stays unprepared: accelerate would step it once per process (it
    # assumes each process adds a batch; here the processes share one batch)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    log_path = out / "train_log.jsonl"
    first_step = 0
    if resume and has_checkpoint(out / "checkpoint"):
        state = load_checkpoint(out / "checkpoint", model)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        decoupler.load_state_dict(state["decoupler"])
        first_step = int(state["next_step"])
        if len(state.get("process_rng", [])) == world:  # each process's own RNG stream
            torch.set_rng_state(state["process_rng"][rank])
    if resume and main:
        _truncate_log(log_path, first_step)
    accelerator.wait_for_everyone()
    bar = progress_bar(
        total=config.steps,
        initial=first_step,
        desc="train",
        disable=not progress or not main,
    )
    start = time.perf_counter()
    tokens_seen = 0
    with open(log_path if main else os.devnull, "a", encoding="utf-8") as log:
        for step in range(first_step, config.steps):
            if decoupler.due(step):
                fault_point("refresh")
                record = decoupler.refresh(model, tokenizer, step)
                if step == 0:  # L(step 0) on the first batch: the yardstick of matching
                    first = collate([features[i] for i in plan[0]], pad_id)
                    record["start_penalty"] = _start_penalty(model, first, decoupler, vocab)
                    record["lambda"] = decoupler.match(record["start_penalty"])
                log.write(json.dumps(record) + "\n")
            objective.train()
            lam = decoupler.lam_at(step)
            totals = {"loss": 0.0, "lm_loss": 0.0, "penalty": 0.0, "tokens": 0}
            t0 = time.perf_counter()
            for micro in range(config.grad_accum):
                mine = plan[step * config.grad_accum + micro][rank::world]
                batch = collate([features[i] for i in mine], pad_id)
                batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                lm, pen, both, tokens = micro_step(
                    accelerator, objective, decoupler, batch, lam,
                    optimizer=optimizer, scheduler=scheduler, params=params,
                    max_grad_norm=config.max_grad_norm,
                )  # fmt: skip
                totals["loss"] += both / config.grad_accum
                totals["lm_loss"] += lm / config.grad_accum
                totals["penalty"] += pen / config.grad_accum
                totals["tokens"] += int(tokens)
            if not all(math.isfinite(totals[k]) for k in ("loss", "penalty")):
                bar.close()  # the message starts on a line of its own
                kept = "the last checkpoint" if config.checkpoint_every else "no checkpoint"
                raise FloatingPointError(
                    f"train: non-finite loss or penalty at step {step} (loss {totals['loss']}, "
                    f"penalty {totals['penalty']}); {kept} is kept intact; lower lr or λ"
                )
            seconds = time.perf_counter() - t0
            tokens_seen += totals["tokens"]
            record = {
                "step": step,
                **totals,
                "lambda": lam,
                "lr": scheduler.get_last_lr()[0],
                "seconds": seconds,
                "tokens_per_s": totals["tokens"] / max(seconds, 1e-9),
            }
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(1)
            every = config.checkpoint_every
            last = step + 1 == config.steps
            if dev_features and ((every and (step + 1) % every == 0) or last):
                dev = dev_loss(model, dev_features, pad_id, vocab)
                dev_record = {"step": step, "steps_done": step + 1, "dev_loss": dev}
                log.write(json.dumps(dev_record) + "\n")
                if main:
                    _keep_if_best(model, out, step + 1, dev)
            if every and (step + 1) % every == 0 and not last:
                state = {
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "decoupler": decoupler.state_dict(),
                    "next_step": step + 1,
                }
                if world > 1:  # a collective: every process hands in its RNG state
                    state["process_rng"] = gather_object([torch.get_rng_state()])
                if main:
                    save_checkpoint(out / "checkpoint", model, state)
                accelerator.wait_for_everyone()
            bar.set_postfix(
                loss=f"{totals['lm_loss']:.3f}",
                pen=f"{totals['penalty']:.3g}",
                tok_s=f"{record['tokens_per_s']:.0f}",
            )
        final = decoupler.refresh(model, tokenizer, config.steps)
        log.write(json.dumps(final | {"final": True}) + "\n")
    bar.close()
    summary = {
        "steps": config.steps,
        "resumed_from": first_step,  # 0: from the start; else the checkpoint's next step
        "train_seconds": time.perf_counter() - start,
        "tokens": tokens_seen,
        "processes": world,
        "dtype": config.resolved_dtype,
        "config": asdict(config),
        "final_overlap": final["overlap"],
    }
    if main:
        write_json_atomic(out / "train_summary.json", summary)
    accelerator.wait_for_everyone()
    return summary
