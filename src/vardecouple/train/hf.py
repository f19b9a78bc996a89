"""Online decoupling inside a Hugging Face ``Trainer`` (or TRL ``SFTTrainer``) script.

Two lines added to an existing script::

    from vardecouple.train.hf import add_decoupling

    trainer = Trainer(model=peft_model, args=args, train_dataset=ds, data_collator=collator)
    add_decoupling(trainer, OnlineDecoupler(DecouplerConfig(), probe_sentences, num_layers))
    trainer.train()

:func:`add_decoupling` registers a :class:`DecouplingCallback` that runs the probe
refreshes on the Trainer's step counter (step 0 included), and wraps the trainer's
``compute_loss`` so that the chosen layers' states are captured by forward hooks
during the Trainer's own forward pass and ``λ·L_dec`` is added to its loss. Tokens:
the attention mask (first position out) and, for ``tokens="target"``, ``labels != -100``;
a batch column ``low_resource`` (one bool per example) is used and removed if present.

Tested with ``transformers.Trainer`` (``tests/test_hf.py``). TRL's ``SFTTrainer``
subclasses ``Trainer`` and should take the same two lines, but it is **untested**: TRL
is not a dependency and is not installed where the tests run.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import TrainerCallback

from vardecouple.decouple import OnlineDecoupler
from vardecouple.model.states import capture

__all__ = ["DecouplingCallback", "add_decoupling"]


class DecouplingCallback(TrainerCallback):
    """Refreshes the decoupler's subspaces on schedule; keeps what it logged."""

    def __init__(self, decoupler: OnlineDecoupler, tokenizer: Any) -> None:
        self.decoupler = decoupler
        self.tokenizer = tokenizer
        self.refreshes: list[dict[str, Any]] = []
        self.penalties: list[float] = []

    def on_step_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any
    ) -> None:
        if self.decoupler.due(state.global_step):  # step 0: the fit on the base model
            self.refreshes.append(self.decoupler.refresh(model, self.tokenizer, state.global_step))


def add_decoupling(
    trainer: Any, decoupler: OnlineDecoupler, tokenizer: Any = None
) -> DecouplingCallback:
    """Give ``trainer`` online decoupling; returns the callback (its logs)."""
    tokenizer = tokenizer or getattr(trainer, "processing_class", None)
    if tokenizer is None:
        raise ValueError("add_decoupling: pass the tokenizer (the trainer has none)")
    callback = DecouplingCallback(decoupler, tokenizer)
    trainer.add_callback(callback)
    original = trainer.compute_loss

    def compute_loss(model: Any, inputs: dict[str, Any], return_outputs: bool = False, **kw: Any):
        inputs = dict(inputs)
        low = inputs.pop("low_resource", None)
        with capture(model, decoupler.layers) as hidden:
            loss, outputs = original(model, inputs, return_outputs=True, **kw)
        lam = decoupler.lam_at(trainer.state.global_step)
        attention = inputs.get("attention_mask")
        if attention is None:
            attention = torch.ones_like(inputs["input_ids"])
        labels = inputs.get("labels")
        target = labels != -100 if labels is not None else attention.bool()
        if low is None:
            low = torch.ones(attention.shape[0], dtype=torch.bool, device=attention.device)
        mask = decoupler.token_mask(attention, target, low)
        loss, penalty = decoupler.add_penalty(loss, hidden, mask, lam)
        callback.penalties.append(float(penalty.item()))
        return (loss, outputs) if return_outputs else loss

    trainer.compute_loss = compute_loss
    return callback
