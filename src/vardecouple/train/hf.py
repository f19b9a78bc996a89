"""Online decoupling inside a Hugging Face ``Trainer`` (or TRL ``SFTTrainer``) script.

Two lines added to an existing script::

    from vardecouple import add_decoupling

    trainer = Trainer(model=peft_model, args=args, train_dataset=ds, data_collator=collator)
    add_decoupling(trainer, OnlineDecoupler(DecouplerConfig(), probe_sentences, num_layers))
    trainer.train()

:func:`add_decoupling` registers a :class:`DecouplingCallback` that runs the probe
refreshes on the Trainer's step counter (step 0 included), and wraps the trainer's
``compute_loss`` so that the chosen layers' states are captured by forward hooks
during the Trainer's own forward pass and ``λ·L_dec`` is added to its loss. Tokens:
the attention mask (first position out) and, for ``tokens="target"``, ``labels != -100``;
a batch column ``low_resource`` (one bool per example) is used and removed if present.

**Checkpoints and resume.** At every Trainer checkpoint the decoupler's whole state
(subspaces, estimator statistics or weights, the reference ``U₀``, λ, the last refresh)
is saved beside the Trainer's files as ``decoupler.safetensors`` + ``decoupler.json`` (no
pickle); ``trainer.train(resume_from_checkpoint=…)`` restores it, so a resumed run
continues the decoupler where the checkpoint left it.

**Logs.** The mean penalty and λ since the last log join the Trainer's own log records
(``decoupling/penalty``, ``decoupling/lambda``); each refresh logs, per layer, the
held-out overlap of every variety with the current and the reference subspace and the
angle to the previous subspace (``decoupling/overlap/LAYER/VARIETY/own`` …), through
``Trainer.log``: every ``report_to`` backend receives them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from vardecouple.decouple import OnlineDecoupler
from vardecouple.io import load_tensor_tree, save_tensor_tree
from vardecouple.model.states import capture
from vardecouple.train.step import refresh_scalars

__all__ = ["STATE_NAME", "DecouplingCallback", "add_decoupling"]

STATE_NAME = "decoupler"  # decoupler.safetensors + decoupler.json in a checkpoint folder


class DecouplingCallback(TrainerCallback):
    """Refreshes the decoupler's subspaces on schedule, logs them, saves and restores the
    decoupler with the Trainer's checkpoints; keeps what it logged (``refreshes``,
    ``penalties``: one per loss computation)."""

    def __init__(self, decoupler: OnlineDecoupler, tokenizer: Any, trainer: Any = None) -> None:
        self.decoupler = decoupler
        self.tokenizer = tokenizer
        self.trainer = trainer
        self.refreshes: list[dict[str, Any]] = []
        self.penalties: list[float] = []
        self.unlogged: list[float] = []  # penalties since the Trainer's last log record
        self.resume_from: str | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if args.world_size > 1 and not self.decoupler.shared:
            self.decoupler.distribute()  # built before the process group: shard it now
        if state.global_step > 0:  # resumed: the decoupler as that checkpoint left it
            default = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            folder = Path(self.resume_from) if self.resume_from else default
            if not (folder / f"{STATE_NAME}.json").is_file():
                raise ValueError(
                    f"add_decoupling: {folder} holds no decoupler state ({STATE_NAME}.json); "
                    "it was saved without decoupling, or by another run"
                )
            self.decoupler.load_state_dict(load_tensor_tree(folder, STATE_NAME))

    def on_step_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        if self.decoupler.due(state.global_step):  # step 0: the fit on the base model
            record = self.decoupler.refresh(model, self.tokenizer, state.global_step)
            self.refreshes.append(record)
            if self.trainer is not None:
                self.trainer.log(refresh_scalars(record))

    def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            save_tensor_tree(folder, STATE_NAME, self.decoupler.state_dict())

    def pending_scalars(self, step: int) -> dict[str, float]:
        """The mean penalty since the last log record, and λ now (then starts over)."""
        if not self.unlogged:
            return {}
        mean = sum(self.unlogged) / len(self.unlogged)
        self.unlogged = []
        return {"decoupling/penalty": mean, "decoupling/lambda": self.decoupler.lam_at(step)}


def add_decoupling(
    trainer: Any, decoupler: OnlineDecoupler, tokenizer: Any = None
) -> DecouplingCallback:
    """Give ``trainer`` online decoupling; returns the callback (its logs)."""
    tokenizer = tokenizer or getattr(trainer, "processing_class", None)
    if tokenizer is None:
        raise ValueError("add_decoupling: pass the tokenizer (the trainer has none)")
    callback = DecouplingCallback(decoupler, tokenizer, trainer)
    trainer.add_callback(callback)
    original_loss, original_log, original_train = trainer.compute_loss, trainer.log, trainer.train

    def compute_loss(model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kw: Any):
        inputs = dict(inputs)
        low = inputs.pop("low_resource", None)
        with capture(model, decoupler.layers) as hidden:
            loss, outputs = original_loss(model, inputs, return_outputs=True, **kw)
        attention = inputs.get("attention_mask")
        if attention is None:
            attention = torch.ones_like(inputs["input_ids"])
        labels = inputs.get("labels")
        target = labels != -100 if labels is not None else attention.bool()
        if low is None:
            low = torch.ones(attention.shape[0], dtype=torch.bool, device=attention.device)
        mask = decoupler.token_mask(attention, target, low)
        lam = decoupler.lam_at(trainer.state.global_step)
        loss, penalty = decoupler.add_penalty(loss, hidden, mask, lam)
        callback.penalties.append(float(penalty.item()))
        callback.unlogged.append(callback.penalties[-1])
        return (loss, outputs) if return_outputs else loss

    def log(logs: dict[str, float], *args: Any, **kw: Any) -> None:
        if "loss" in logs:  # the Trainer's own training record: the penalty joins it
            logs = logs | callback.pending_scalars(trainer.state.global_step)
        return original_log(logs, *args, **kw)

    def train(resume_from_checkpoint: Any = None, *args: Any, **kw: Any) -> Any:
        if resume_from_checkpoint is True:  # the latest checkpoint, as the Trainer reads it
            resume_from_checkpoint = get_last_checkpoint(trainer.args.output_dir) or True
        callback.resume_from = (
            resume_from_checkpoint if isinstance(resume_from_checkpoint, str) else None
        )
        return original_train(resume_from_checkpoint, *args, **kw)

    trainer.compute_loss, trainer.log, trainer.train = compute_loss, log, train
    return callback
