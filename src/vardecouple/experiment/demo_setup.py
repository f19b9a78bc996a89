"""The demo's sizes, its synthetic language family and the tiny model pre-trained on it."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vardecouple.data import Example, format_example
from vardecouple.data.family import PIVOT_CODE, STANDARD_CODE, FamilyConfig, make_family
from vardecouple.io import write_dir_atomic, write_lines_atomic
from vardecouple.model.load import tiny_random
from vardecouple.progress import progress as progress_bar

__all__ = [
    "MIX",
    "QUICK",
    "DemoConfig",
    "family_model",
    "pretrain",
]


@dataclass(frozen=True)
class DemoConfig:
    """Sizes of the demo study (defaults: ≤ 10 minutes on a 2-core CPU)."""

    n_varieties: int = 3
    divergence: float = 0.35
    study_rows: int = 2000
    pretrain_rows: int = 3000
    pretrain_steps: int = 2000
    hidden_size: int = 128
    num_layers: int = 4
    steps: int = 600
    batch_size: int = 16
    seeds: tuple[int, ...] = (0, 1)
    jobs: int = 2  # seeds trained at once (processes of one thread each)
    test_rows: int = 100
    lam: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("study_rows", "pretrain_rows", "steps", "batch_size", "test_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo: {name}={getattr(self, name)} must be ≥ 1")
        if not self.seeds:
            raise ValueError("demo: at least one seed")


MIX = (
    "30% standard, 30% pivot<->standard translations, 20% standard sentences repeated, "
    "10% pivot, 10% varieties"
)

#: A smaller study for tests (about a minute).
QUICK = DemoConfig(
    study_rows=800,
    pretrain_rows=1000,
    pretrain_steps=150,
    hidden_size=64,
    steps=40,
    batch_size=8,
    seeds=(0,),
    test_rows=24,
)


def _pretraining_texts(rows: list[dict[str, str]], varieties: list[str], seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for row in rows:
        r = rng.random()
        if r < 0.3:
            texts.append(row[STANDARD_CODE])
        elif r < 0.6:
            flip = rng.random() < 0.5
            src, tgt = (STANDARD_CODE, PIVOT_CODE) if flip else (PIVOT_CODE, STANDARD_CODE)
            ex = Example(src=src, tgt=tgt, src_text=row[src], tgt_text=row[tgt], group=-1)
            prompt, target = format_example(ex)
            texts.append(prompt + target.rstrip("\n"))
        elif r < 0.8:  # repetition, which any natural corpus has: it teaches copying
            texts.append(f"{row[STANDARD_CODE]}\n{row[STANDARD_CODE]}")
        elif r < 0.9:
            texts.append(row[PIVOT_CODE])
        else:
            texts.append(row[rng.choice(varieties)])
    return texts


def pretrain(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    progress: bool = True,
) -> list[float]:
    """Plain causal-LM training of every weight on ``texts`` (AdamW, cosine); returns losses."""
    gen = torch.Generator().manual_seed(seed)
    encoded = [tokenizer(t + tokenizer.eos_token)["input_ids"] for t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    pad = tokenizer.pad_token_id
    losses = []
    model.train()
    for _ in progress_bar(range(steps), desc="pre-train", disable=not progress):
        picks = torch.randint(len(encoded), (batch_size,), generator=gen).tolist()
        width = max(len(encoded[i]) for i in picks)
        ids = torch.full((batch_size, width), pad)
        mask = torch.zeros((batch_size, width), dtype=torch.long)
        for k, i in enumerate(picks):
            ids[k, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[k, : len(encoded[i])] = 1
        labels = ids.masked_fill(mask == 0, -100)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


def _write_lines(folder: Path, rows: list[dict[str, str]]) -> None:

    for code in rows[0]:
        write_lines_atomic(folder / f"{code}.txt", [r[code] for r in rows])


def family_model(out: Path, demo: DemoConfig, progress: bool) -> tuple[Path, list[str]]:
    """Write the study corpus; pre-train (once) the tiny model. Returns (corpus, varieties)."""

    family = FamilyConfig(
        n_sentences=demo.pretrain_rows + demo.study_rows,
        n_varieties=demo.n_varieties,
        divergence=demo.divergence,
        seed=demo.seed,
    )
    rows = [dict(r) for r in make_family(family).rows]
    varieties = [c for c in rows[0] if c not in (PIVOT_CODE, STANDARD_CODE)]
    corpus = out / "data" / "family"
    _write_lines(corpus, rows[demo.pretrain_rows :])
    model_dir = out / "model"
    if not (model_dir / "pretrain.json").exists():
        texts = _pretraining_texts(rows[: demo.pretrain_rows], varieties, demo.seed)
        model, tokenizer = tiny_random(
            texts + [t for r in rows[demo.pretrain_rows :] for t in r.values()],
            hidden_size=demo.hidden_size,
            num_layers=demo.num_layers,
            seed=demo.seed,
        )
        losses = pretrain(
            model, tokenizer, texts, steps=demo.pretrain_steps, seed=demo.seed, progress=progress
        )
        info = {"steps": demo.pretrain_steps, "first_loss": losses[0], "last_loss": losses[-1]}

        def save(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / "pretrain.json").write_text(json.dumps(info | {"mix": MIX}))

        write_dir_atomic(model_dir, save)
    return corpus, varieties
