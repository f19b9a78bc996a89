"""The model stage: load a causal LM (:mod:`.load`), wrap it with LoRA (:mod:`.lora`), and
read or hook its hidden states (:mod:`.states`)."""

from vardecouple.model.load import ALIASES, LoadedModel, cache_dir, load_model, tiny_random
from vardecouple.model.lora import add_lora
from vardecouple.model.states import (
    capture,
    decoder_body,
    decoder_layers,
    folded_weights,
    layer_states,
    target_states,
    token_states,
)

__all__ = [
    "ALIASES",
    "LoadedModel",
    "add_lora",
    "cache_dir",
    "capture",
    "decoder_body",
    "decoder_layers",
    "folded_weights",
    "layer_states",
    "load_model",
    "target_states",
    "tiny_random",
    "token_states",
]
