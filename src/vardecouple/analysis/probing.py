r"""``vardecouple probe``: geometry and codelengths of a model's varieties, layer by layer.

Data: a line-aligned corpus (row ``i`` is the same sentence in every variety), its first
``max_rows`` rows having every selected variety (``n`` rows). ``X`` holds the standard's
sentence states, ``Y`` variety ``V``'s, row ``i`` of each from sentence ``i``.

States: each sentence is tokenised with the tokenizer's special tokens (a leading BOS
where it adds one), cut at ``max_length`` tokens and run, right-padded, through the
decoder body only: one forward pass per batch for all requested layers, stopped after
the deepest, no LM head. Layer ``l`` (0-based) is the output of decoder layer ``l``. A
sentence state is the mask-aware mean (:func:`~vardecouple.analysis.mean_pool`) over the
sentence's tokens, pads and the BOS (position 0, when it is the BOS id) excluded.

Metrics per model, layer and non-standard variety ``V`` (:mod:`vardecouple.analysis`):
``l2`` = mean_i ‖x_i − y_i‖; ``cosine`` = mean_i (1 − cos(x_i, y_i)); ``cka`` = linear
CKA of ``X`` and ``Y`` (in [0, 1]); ``angle_mean`` / ``angle_largest`` = the mean and the
largest principal angle (degrees, in [0, 90]) between the top-``rank`` PCA subspaces of
``X`` and of ``Y`` (each centred on its own mean); ``overlap`` =
Σ_i ‖Uᵀ(y_i − c)‖² / Σ_i ‖y_i − c‖² (in [0, 1]) with ``U`` the top-``rank`` PCA basis of
``X`` and ``c`` = **the standard's mean** x̄ (not the class-balanced mean of the
training-time overlap in ``docs/method.md``: the share of V's spread around the
standard's centre that lies in the standard's main directions); ``online_codelength`` /
``variational_codelength`` = the codes (bits) of the binary labels standard (0) vs ``V``
(1) given the ``2n`` sentence states
(:func:`~vardecouple.analysis.online_codelength`: Voita & Titov blocks, each block coded
by a probe trained only on the rows before it;
:func:`~vardecouple.analysis.variational_codelength`), each with ``*_compression`` =
N·H(label prior) / codelength (1 = nothing learnt beyond the class frequencies), and
``variational_model_bits`` = the variational code's model part KL(q‖p) (with ``d``-dim
states it is ≳ 1.6 bits per weight, so on small ``N`` it dominates the code; see
``docs/analysis.md``). ``timing`` holds the seconds per model spent on states and on
metrics.
Each layer's entry ``"all"`` holds the four code metrics of the ``K``-class labels
(standard = 0, then the varieties in order, ``K·n`` states). ``seed`` drives the probes
(shuffle, initialisation), not the model. Non-finite values are written as ``null``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from torch import Tensor, nn

from vardecouple.analysis.codelength import online_codelength, variational_codelength
from vardecouple.analysis.geometry import (
    cosine_distance,
    l2_distance,
    linear_cka,
    mean_pool,
    overlap,
    pca_subspace,
    subspace_angles,
)
from vardecouple.analysis.plots import CODE_METRICS
from vardecouple.analysis.probe_file import SCHEMA, write_probe
from vardecouple.data import load_corpus
from vardecouple.model.load import load_model
from vardecouple.model.states import StopForward, capture, decoder_body
from vardecouple.progress import progress as progress_bar
from vardecouple.subspace import Subspace

__all__ = [
    "SCHEMA",
    "code_metrics",
    "load_rows",
    "model_labels",
    "pair_metrics",
    "parse_layers",
    "run_probe",
    "sentence_states",
]


def parse_layers(spec: str | Sequence[int], num_layers: int | None, model: str = "") -> list[int]:
    """``"all"``, ``"0,3,9"`` or ints → sorted unique 0-based layers, each in
    ``0..num_layers−1`` (ValueError naming the model's range); ``None``: syntax only."""
    if isinstance(spec, str) and spec.strip() == "all":
        return list(range(num_layers or 0))
    try:
        layers = sorted({int(p) for p in (spec.split(",") if isinstance(spec, str) else spec)})
    except ValueError:
        layers = []
    if not layers:
        raise ValueError(f"--layers: expected 'all' or indices like 0,3,9, got {spec!r}")
    top = math.inf if num_layers is None else num_layers
    bad = [str(i) for i in layers if not 0 <= i < top]
    if bad:
        have = "" if num_layers is None else f": model {model} has layers 0..{num_layers - 1}"
        raise ValueError(f"--layers: {', '.join(bad)} out of range (0-based){have}")
    return layers


def load_rows(
    corpus: str | Path, standard: str, varieties: Sequence[str] | None, max_rows: int
) -> tuple[list[str], dict[str, list[str]]]:
    """The codes (standard first) and, per code, the first ``max_rows`` complete rows."""

    data = load_corpus(corpus)
    found = ", ".join(data.varieties)
    chosen = [c for c in data.varieties if c != standard] if varieties is None else varieties
    for code in [standard, *chosen]:
        if code not in data.varieties:
            raise ValueError(f"corpus {data.source}: no variety {code!r}; found: {found}")
    codes = list(dict.fromkeys([standard, *chosen]))
    if len(codes) < 2:
        raise ValueError(
            f"corpus {data.source}: need a variety other than the standard {standard!r}; "
            f"found: {found}"
        )
    rows = [r for r in data.rows if all(c in r for c in codes)][:max_rows]
    return codes, {c: [r[c] for r in rows] for c in codes}


def model_labels(adapters: Sequence[str | Path]) -> list[str]:
    """Labels of the adapters: the folder name, lengthened to the shortest distinguishing
    path suffix where two share it (or one is named ``base``); ``-2``… if still equal."""
    parts = [Path(a).resolve().parts[1:] or ("adapter",) for a in adapters]
    depth = [1] * len(parts)

    def labels() -> list[str]:
        return ["/".join(p[-d:]) for p, d in zip(parts, depth, strict=True)]

    while True:
        current = labels()
        clash = [i for i, lab in enumerate(current) if lab == "base" or current.count(lab) > 1]
        grow = [i for i in clash if depth[i] < len(parts[i])]
        if not grow:
            break
        for i in grow:
            depth[i] += 1
    out: list[str] = []
    for lab in labels():
        name, k = lab, 1
        while name in out or name == "base":
            k += 1
            name = f"{lab}-{k}"
        out.append(name)
    return out


@torch.no_grad()
def sentence_states(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[int],
    *,
    batch_size: int = 16,
    max_length: int = 256,
    progress: bool = False,
    desc: str = "states",
) -> dict[int, Tensor]:
    """``{layer: (len(texts), d) fp32}`` mean-pooled sentence states (module docstring).

    One forward pass of the decoder body per batch (no LM head), stopped after the
    deepest of ``layers``; texts are sorted by length to cut padding, results follow
    the input order.
    """
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    out = {i: torch.empty(len(texts), 0) for i in layers}
    device = next(model.parameters()).device
    body, bos = decoder_body(model), tokenizer.bos_token_id
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    bar = progress_bar(total=math.ceil(len(order) / batch_size), desc=desc, unit="batch",
               disable=not progress, leave=False)  # fmt: skip
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length).to(device)  # fmt: skip
            mask = enc["attention_mask"].bool()
            if bos is not None:
                mask[:, 0] &= enc["input_ids"][:, 0] != bos
            with capture(model, layers, stop_after=True) as store, suppress(StopForward):
                body(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                     use_cache=False)  # fmt: skip
            for i in layers:
                pooled = mean_pool(store[i], mask).float().cpu()
                if out[i].shape[1] == 0:
                    out[i] = torch.empty(len(texts), pooled.shape[1])
                out[i][idx] = pooled
            bar.update(1)
    finally:
        tokenizer.padding_side = side
        bar.close()
    return out


def pair_metrics(x: Tensor, y: Tensor, *, rank: int) -> dict[str, float]:
    """The geometric metrics of parallel ``X`` (standard) and ``Y`` (module docstring)."""
    angles = subspace_angles(x, y, rank)
    return {
        "l2": l2_distance(x, y),
        "cosine": cosine_distance(x, y),
        "cka": linear_cka(x, y),
        "angle_mean": angles.mean,
        "angle_largest": angles.largest,
        "overlap": overlap(y, pca_subspace(x, rank)),  # centre: the standard's mean
    }


def code_metrics(blocks: Sequence[Tensor], *, seed: int) -> dict[str, float]:
    """Online and variational codes of labels ``k`` for the rows of ``blocks[k]``."""
    features = torch.cat(list(blocks))
    labels = torch.cat([torch.full((len(b),), k) for k, b in enumerate(blocks)])
    online = online_codelength(features, labels, seed=seed)
    variational = variational_codelength(features, labels, seed=seed)
    return {
        "online_codelength": online.codelength_bits,
        "online_compression": online.compression,
        "variational_codelength": variational.codelength_bits,
        "variational_compression": variational.compression,
        "variational_model_bits": variational.model_bits,
    }


def _layer_entry(
    blocks: list[Tensor], codes: list[str], rank: int, seed: int, saved: Subspace | None = None
) -> dict:
    """``{V: metrics, "all": code metrics}`` of one layer; ``blocks[k]`` = code ``k``'s states;
    with a ``saved`` subspace, each one's ``saved_overlap`` with it."""
    entry = {v: {**pair_metrics(blocks[0], y, rank=rank), **code_metrics([blocks[0], y], seed=seed)}
             for v, y in zip(codes[1:], blocks[1:], strict=True)}  # fmt: skip
    # with one variety the K-class code is the binary one (same rows, labels and seed)
    if len(codes) == 2:
        entry["all"] = {m: entry[codes[1]][m] for m in CODE_METRICS}
    else:
        entry["all"] = code_metrics(blocks, seed=seed)
    if saved is not None:
        for v, y in zip(codes[1:], blocks[1:], strict=True):
            entry[v]["saved_overlap"] = saved.overlap(y)
        entry["all"] = entry["all"] | {"saved_overlap": saved.overlap(blocks[0])}
    finite = lambda x: float(x) if math.isfinite(x) else None  # noqa: E731
    return {v: {m: finite(x) for m, x in d.items()} for v, d in entry.items()}


def run_probe(
    model: str,
    corpus: str | Path,
    standard: str,
    out: str | Path,
    *,
    varieties: Sequence[str] | None = None,
    adapters: Sequence[str | Path] = (),
    layers: str | Sequence[int] = "all",
    max_rows: int = 1000,
    rank: int = 4,
    batch_size: int = 16,
    max_length: int = 256,
    seed: int = 0,
    progress: bool = True,
    loader: Callable[[], Any] | None = None,
    labels: Sequence[str] | None = None,
    subspaces: Mapping[int, Subspace] | None = None,
    include_base: bool = True,
    plots: bool = True,
) -> Path:
    """Probe the base ``model``, then each adapter on a freshly loaded base; write
    ``out/probe.json`` and ``out/plots/probe_<metric>.png``; return the JSON's path.

    ``include_base=False`` probes the adapters only and ``plots=False`` draws nothing: a
    part of a probe that :func:`merge_probes` completes later (a run probes each arm's
    adapter as soon as it is trained, since adapters do not outlive a session's folder).

    ``varieties`` defaults to every code but the standard; an adapter given twice is
    probed once. Bad input is a one-line ValueError; an existing ``out/probe.json`` a
    FileExistsError (nothing is overwritten). ``loader`` (no arguments, returns a
    :class:`~vardecouple.model.LoadedModel`) replaces :func:`load_model` (a run passes
    its own: a ``tiny-random`` tokenizer is built on the run's data); ``labels`` name
    the adapters (default: :func:`model_labels`). ``subspaces`` (e.g. a trained arm's
    saved ``subspace/``, :func:`~vardecouple.probes.artifact.load_subspace`) adds, at each
    of their layers, ``saved_overlap``: every variety's sentence states' overlap with
    that subspace (the standard's under ``"all"``), instead of fitting one.
    """
    t0 = time.perf_counter()
    target = Path(out) / "probe.json"
    for a in adapters:
        if not (Path(a) / "adapter_config.json").is_file():
            raise ValueError(f"adapter {a}: no adapter_config.json (expected a peft folder)")
    if min(max_rows, rank, batch_size, max_length - 1) < 1:
        raise ValueError("probe: max_rows, rank, batch_size must be >= 1, max_length >= 2")
    parse_layers(layers, None)
    codes, rows = load_rows(corpus, standard, varieties, max_rows)
    n = len(rows[standard])
    if n < rank + 1:
        raise ValueError(f"probe: {n} complete rows; rank {rank} needs at least {rank + 1}")
    texts = [t for c in codes for t in rows[c]]
    unique = list(dict.fromkeys(str(Path(a).resolve()) for a in adapters))
    if labels is not None and (len(labels) != len(unique) or len(set(labels)) < len(labels)):
        raise ValueError(f"probe: {len(unique)} adapters need as many distinct labels")
    names = list(labels) if labels is not None else model_labels(unique)
    runs = [("base", None)] if include_base else []
    runs += list(zip(names, unique, strict=True))
    if not runs:
        raise ValueError("probe: nothing to probe (no adapters and include_base=False)")
    results: dict[str, Any] = {}
    timing: dict[str, dict[str, float]] = {}

    def load() -> Any:
        return loader() if loader is not None else load_model(
            model, corpus_texts=texts if model == "tiny-random" else None)  # fmt: skip

    first = load()  # the model's checks (spec, layers, rank) before the folder's state
    chosen = parse_layers(layers, first.num_layers, model)
    if rank > first.hidden_size:
        raise ValueError(f"probe: rank {rank} exceeds the hidden size {first.hidden_size}")
    saved = dict(subspaces or {})
    if any(not 0 <= i < first.num_layers or s.dim != first.hidden_size for i, s in saved.items()):
        raise ValueError(
            f"probe: the saved subspaces (layers {sorted(saved)}) do not fit {model} "
            f"(layers 0..{first.num_layers - 1}, width {first.hidden_size})"
        )
    if target.exists():
        raise FileExistsError(f"probe: {target} exists; choose another --out or remove it")
    for label, adapter in runs:
        loaded, first = first or load(), None
        net = loaded.model
        if adapter is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
                net = PeftModel.from_pretrained(net, adapter).eval()
        t_states = time.perf_counter()
        states = sentence_states(net, loaded.tokenizer, texts, chosen, batch_size=batch_size,
                                 max_length=max_length, progress=progress, desc=label)  # fmt: skip
        t_metrics = time.perf_counter()
        bar = progress_bar(chosen, desc=f"{label} metrics", unit="layer", disable=not progress,
                           leave=False)  # fmt: skip
        results[label] = {str(la): _layer_entry(list(states[la].split(n)), codes, rank, seed,
                                                saved.get(la)) for la in bar}  # fmt: skip
        timing[label] = {"states": round(t_metrics - t_states, 3),
                         "metrics": round(time.perf_counter() - t_metrics, 3)}  # fmt: skip
    data = {
        "schema": SCHEMA,
        "model": str(Path(model).resolve()) if Path(model).exists() else model,
        "adapters": {label: path for label, path in runs if path is not None},
        "corpus": str(Path(corpus).resolve()),
        "standard": standard,
        "varieties": codes[1:],
        "rows": n,
        "layers": chosen,
        "rank": rank,
        "seed": seed,
        "saved_subspace_layers": sorted(saved),
        "seconds": round(time.perf_counter() - t0, 3),
        "timing": timing,
        "results": results,
    }
    return write_probe(data, target, plots=plots)
