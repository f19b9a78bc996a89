"""LoRA adapters on a loaded model (peft)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig, get_peft_model

from vardecouple.model.load import LoadedModel

__all__ = ["add_lora"]


def add_lora(
    loaded: LoadedModel,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
    seed: int = 0,
) -> Any:
    """Wrap ``loaded.model`` with LoRA adapters (peft); only the adapters train.

    The adapters' random initialisation comes from ``seed`` (the global RNG is left as
    it was), so arms that share a seed start from identical weights.
    """

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
    )

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        torch.manual_seed(seed)
        loaded.model = get_peft_model(loaded.model, config)
    return loaded.model
