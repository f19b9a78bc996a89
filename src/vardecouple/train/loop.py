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
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import Tensor, nn
from transformers import get_constant_schedule_with_warmup, get_cosine_schedule_with_warmup

from vardecouple.decouple import OnlineDecoupler
from vardecouple.io import write_dir_atomic, write_json_atomic, write_text_atomic
from vardecouple.progress import progress as progress_bar
from vardecouple.train.checkpoint import (
    fault_point,
    has_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from vardecouple.train.step import (
    STEP_SCALARS,
    Objective,
    TrainConfig,
    batches,
    collate,
    dev_loss,
    micro_step,
    refresh_scalars,
    start_penalty,
    trimmed_vocab,
)

__all__ = ["train"]

#: accelerate engines that shard weights or optimizer state (docs/distributed.md)
_SHARDING_ENGINES = frozenset({"DEEPSPEED", "FSDP", "MEGATRON_LM"})


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
    out = _check_out_dir(Path(out_dir), resume)
    torch.manual_seed(config.seed)
    run = _Run.start(model, tokenizer, features, decoupler, config, dev_features, out)
    out.mkdir(parents=True, exist_ok=True)
    first_step = run.resume(out) if resume else 0
    if config.report_to:  # after a resume TensorBoard drops what it logged past the checkpoint
        purge = {"tensorboard": {"purge_step": first_step}} if first_step else {}
        run.accelerator.init_trackers("logs", init_kwargs=purge)
    steps, main = config.steps, run.accelerator.is_main_process
    bar = progress_bar(
        total=steps, initial=first_step, desc="train", disable=not progress or not main
    )
    start, tokens = time.perf_counter(), 0
    with open(out / "train_log.jsonl" if main else os.devnull, "a", encoding="utf-8") as log:
        for step in range(first_step, steps):
            # 1. refresh U on schedule (at step 0 also U₀, L(step 0) and matched λ)
            if decoupler.due(step):
                fault_point("refresh")
                _write(log, run.track(run.refresh(step)))
            # 2-4. one optimizer step: forward, LM loss + λ·penalty, backward, AdamW
            try:
                record = run.optimizer_step(step)
            except FloatingPointError:
                bar.close()  # the message starts on a line of its own
                raise
            tokens += record["tokens"]
            _write(log, run.track(record))
            bar.update(1)
            bar.set_postfix(loss=f"{record['lm_loss']:.3f}", pen=f"{record['penalty']:.3g}")
            # 5. dev loss (keeping the best adapter) and checkpoint, on schedule
            every, last = config.checkpoint_every, step + 1 == steps
            if dev_features and ((every and (step + 1) % every == 0) or last):
                _write(log, run.track(run.dev(step, out)))
            if every and (step + 1) % every == 0 and not last:
                run.checkpoint(step + 1, out)
        final = decoupler.refresh(model, tokenizer, steps)
        _write(log, run.track(final | {"final": True}))
    bar.close()
    for tracker in run.accelerator.trackers:  # close their files (not end_training(): it
        tracker.finish()  # would also end the process group, which outlives this call)
    summary = {
        "steps": steps,
        "resumed_from": first_step,  # 0: from the start; else the checkpoint's next step
        "train_seconds": time.perf_counter() - start,
        "tokens": tokens,
        "processes": run.world,
        "dtype": config.resolved_dtype,
        "config": asdict(config),
        "final_overlap": final["overlap"],
    }
    if main:
        write_json_atomic(out / "train_summary.json", summary)
    run.accelerator.wait_for_everyone()
    return summary


def _write(log: IO[str], record: dict[str, Any]) -> None:
    log.write(json.dumps(record) + "\n")
    log.flush()


def _check_out_dir(out: Path, resume: bool) -> Path:
    if (out / "train_summary.json").exists():
        raise FileExistsError(f"train: {out} holds a finished run; choose another output folder")
    if not resume and (out / "train_log.jsonl").exists():
        raise FileExistsError(f"train: {out} holds a started run; resume it or choose another")
    return out


@dataclass
class _Run:
    """Everything one training run holds between steps."""

    model: nn.Module
    tokenizer: Any
    features: Sequence[dict[str, Any]]
    decoupler: OnlineDecoupler
    config: TrainConfig
    dev_features: Sequence[dict[str, Any]] | None
    accelerator: Any
    objective: Any
    optimizer: Any
    scheduler: Any
    params: list[Tensor]
    plan: list[list[int]]
    vocab: Tensor | None

    @classmethod
    def start(
        cls,
        model: nn.Module,
        tokenizer: Any,
        features: Sequence[dict[str, Any]],
        decoupler: OnlineDecoupler,
        config: TrainConfig,
        dev_features: Sequence[dict[str, Any]] | None,
        out: Path,
    ) -> _Run:
        """Check the setup, then build the accelerator, optimizer, schedule and batch plan."""
        accelerator = Accelerator(
            log_with=list(config.report_to) or None,
            project_dir=str(out) if config.report_to else None,
            gradient_accumulation_steps=config.grad_accum,
            mixed_precision="no",  # bf16 is micro_step's own autocast: accelerate's state
            # is one per process and would refuse a later fp32 run in the same process
            cpu=not torch.cuda.is_available(),
        )
        world = accelerator.num_processes
        if accelerator.distributed_type.name in _SHARDING_ENGINES:
            raise NotImplementedError(
                f"train: {accelerator.distributed_type.name} is not supported: it shards "
                "weights or optimizer state, and the probe refresh, dev loss and checkpoints "
                "read them whole (docs/distributed.md); launch plain data parallel (torchrun)"
            )
        if config.batch_size < world:
            raise ValueError(f"train: batch_size {config.batch_size} < {world} processes")
        if world > 1 and not decoupler.shared:
            decoupler.distribute()  # built before the process group: shard its probe rows now
        accelerator.wait_for_everyone()  # every process has checked before any writes
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("train: the model has no trainable parameters (wrap it with add_lora)")
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        if config.schedule == "cosine":
            scheduler = get_cosine_schedule_with_warmup(
                optimizer, config.warmup_steps, config.steps
            )
        else:
            scheduler = get_constant_schedule_with_warmup(optimizer, config.warmup_steps)
        lengths = [len(f["input_ids"]) for f in features]
        plan = batches(lengths, config.batch_size, config.steps * config.grad_accum, config.seed)
        vocab = trimmed_vocab(features, tokenizer) if config.trim_vocab else None
        objective = Objective(model, decoupler.layers, vocab, config.resolved_dtype)
        # the scheduler stays unprepared: accelerate would step it once per process (it
        # assumes each process adds a batch; here the processes share one batch)
        objective, optimizer = accelerator.prepare(objective, optimizer)
        return cls(model, tokenizer, features, decoupler, config, dev_features,
                   accelerator, objective, optimizer, scheduler, params, plan, vocab)  # fmt: skip

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def batch(self, index: int, share: bool = True) -> dict[str, Tensor]:
        """Batch ``index`` of the plan: this process's share (every ``world``-th example)."""
        rows = (
            self.plan[index][self.accelerator.process_index :: self.world]
            if share
            else self.plan[index]
        )
        return collate([self.features[i] for i in rows], self.tokenizer.pad_token_id)

    def track(self, record: dict[str, Any]) -> dict[str, Any]:
        """Send a log record's scalars to the trackers of ``report_to`` (if any); returns it."""
        if self.config.report_to:
            scalars = (
                refresh_scalars(record)
                if record.get("refresh")
                else {k: record[k] for k in STEP_SCALARS if k in record}
            )
            scalars |= {"dev_loss": record["dev_loss"]} if "dev_loss" in record else {}
            self.accelerator.log(scalars, step=record["step"])
        return record

    def resume(self, out: Path) -> int:
        """Restore weights, optimizer, schedule, probe and RNG from ``out/checkpoint`` (if
        any) and drop the log lines after it; returns the step to continue from."""
        first_step = 0
        if has_checkpoint(out / "checkpoint"):
            state = load_checkpoint(out / "checkpoint", self.model)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.decoupler.load_state_dict(state["decoupler"])
            first_step = int(state["next_step"])
            rngs = state.get("process_rng", [])
            if len(rngs) == self.world:  # each process's own RNG stream
                torch.set_rng_state(rngs[self.accelerator.process_index])
        if self.accelerator.is_main_process:
            _truncate_log(out / "train_log.jsonl", first_step)
        self.accelerator.wait_for_everyone()
        return first_step

    def refresh(self, step: int) -> dict[str, Any]:
        """The decoupler's refresh; at step 0 also L(step 0) on the first batch (the
        yardstick of magnitude matching) and the λ it sets."""
        record = self.decoupler.refresh(self.model, self.tokenizer, step)
        if step == 0:
            first = self.batch(0, share=False)
            record["start_penalty"] = start_penalty(self.model, first, self.decoupler, self.vocab)
            record["lambda"] = self.decoupler.match(record["start_penalty"])
        return record

    def optimizer_step(self, step: int) -> dict[str, Any]:
        """``grad_accum`` micro-batches and one AdamW step; the record to log."""
        config, lam = self.config, self.decoupler.lam_at(step)
        self.objective.train()
        totals = {"loss": 0.0, "lm_loss": 0.0, "penalty": 0.0, "tokens": 0}
        t0 = time.perf_counter()
        for micro in range(config.grad_accum):
            batch = self.batch(step * config.grad_accum + micro)
            batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
            lm, pen, both, tokens = micro_step(
                self.accelerator, self.objective, self.decoupler, batch, lam,
                optimizer=self.optimizer, scheduler=self.scheduler, params=self.params,
                max_grad_norm=config.max_grad_norm,
            )  # fmt: skip
            totals["loss"] += both / config.grad_accum
            totals["lm_loss"] += lm / config.grad_accum
            totals["penalty"] += pen / config.grad_accum
            totals["tokens"] += int(tokens)
        if not all(math.isfinite(totals[k]) for k in ("loss", "penalty")):
            kept = "the last checkpoint" if config.checkpoint_every else "no checkpoint"
            raise FloatingPointError(
                f"train: non-finite loss or penalty at step {step} (loss {totals['loss']}, "
                f"penalty {totals['penalty']}); {kept} is kept intact; lower lr or λ"
            )
        seconds = time.perf_counter() - t0
        return {
            "step": step,
            **totals,
            "lambda": lam,
            "lr": self.scheduler.get_last_lr()[0],
            "seconds": seconds,
            "tokens_per_s": totals["tokens"] / max(seconds, 1e-9),
        }

    def dev(self, step: int, out: Path) -> dict[str, Any]:
        """The dev loss after ``step``; the main process keeps the best adapter."""
        pad_id = self.tokenizer.pad_token_id
        loss = dev_loss(self.model, self.dev_features or [], pad_id, self.vocab)
        if self.accelerator.is_main_process:
            _keep_if_best(self.model, out, step + 1, loss)
        return {"step": step, "steps_done": step + 1, "dev_loss": loss}

    def checkpoint(self, next_step: int, out: Path) -> None:
        """Everything :meth:`resume` needs, written atomically by the main process."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "decoupler": self.decoupler.state_dict(),
            "next_step": next_step,
        }
        if self.world > 1:  # a collective: every process hands in its RNG state
            state["process_rng"] = gather_object([torch.get_rng_state()])
        if self.accelerator.is_main_process:
            save_checkpoint(out / "checkpoint", self.model, state)
        self.accelerator.wait_for_everyone()


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


def _keep_if_best(model: nn.Module, out: Path, step: int, loss: float) -> None:
    """Save the adapter to ``out/best-adapter`` when ``loss`` beats ``best.json``'s."""
    best = out / "best.json"
    if best.exists() and json.loads(best.read_text())["dev_loss"] <= loss:
        return
    write_dir_atomic(out / "best-adapter", model.save_pretrained)
    write_json_atomic(best, {"step": step, "dev_loss": loss})
