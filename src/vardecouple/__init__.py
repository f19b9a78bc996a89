"""vardecouple: decouple a dominant standard variety's subspace while fine-tuning
language models on low-resource language varieties."""

__version__ = "0.1.0"
