r"""Training speed benchmark (issue 4): HF ``Trainer`` vs this loop, standard vs decoupled.

What it measures
----------------
LoRA fine-tuning of ``gemma3-270m`` on the CPU, on real Arabic batches (the Arabic
example configuration: FLORES-200 dev, MSA ``arb_Arab`` <-> six dialects, plain prompts,
``max_length=128``, LoRA r=16, alpha=32 on q/k/v/o, batch 8, AdamW lr 2e-4, fp32), three
ways plus a trimmed variant, in one process:

* **(a)** Hugging Face ``transformers.Trainer`` on the peft model: the model's own loss
  from ``labels=`` (full 262k-vocabulary logits at every position), the Trainer's default
  optimizer (fused AdamW), ``DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)``
  with right padding;
* **(b)** the step of :func:`vardecouple.train.loop.train`, standard arm (``penalize=False``:
  logits only at supervised positions, the penalty only logged, without gradient);
* **(b′)** the same as (b) with vocabulary trimming on (``TrainConfig.trim_vocab``: the
  softmax over :func:`~vardecouple.train.trimmed_vocab` of the training features, an
  approximation: its loss is a lower bound of the exact one);
* **(c)** the same step, decoupled arm (``λ = 0.01``, norm form, variational rank-1
  probe at layer 9), with the probe refreshes amortised at the example configuration's
  ``refresh_every = 100``:
  ``s/step(c) = penalised step seconds + warm refresh seconds / refresh_every``.

All arms see the same batches: the first ``warm-up + timed`` batches of
:func:`vardecouple.train.batches` over the training features with seed 0, i.e. exactly
the plan ``train()`` follows (length-grouped, 8 examples each). For (a) these batches are
laid out in order and read with ``train_sampling_strategy="sequential"``. Every arm starts
from the same LoRA initialisation (``add_lora(..., seed=0)``), so the first step's loss
must agree across (a), (b) and (c) (the exactness check in the JSON; (b′) is lower).

**Interleaved.** The machine is shared (other processes come and go), so the arms are
not run one after the other: the Trainer drives the loop, and its ``on_step_end``
callback runs the (b), (b′) and (c) steps on the same batch (in rotating order) before
the Trainer moves on. Load changes then hit all arms alike, and the ratios stay
meaningful. For that, (b), (b′) and (c) run this module's :meth:`OurArm.step`, which
calls the step of ``train()`` itself, :func:`~vardecouple.train.micro_step` (collate,
``accelerator.accumulate``, :func:`~vardecouple.train.supervised_loss`, ``token_mask``,
penalty with or without gradient, ``accelerator.backward``, clipping at 1.0, AdamW,
cosine schedule, ``zero_grad``, the ``.item()`` logging) plus the finiteness check, timed
the way ``train()`` times it. (Results recorded before micro_step existed came from a
line-for-line copy of that step, numerically the same in one process.)

Step times: (a) from a ``TrainerCallback`` (``on_step_begin`` -> ``on_step_end``:
forward, backward, clipping, optimizer and scheduler step; the Trainer fetches and
collates the batch just before ``on_step_begin``); (b), (b′), (c) around the step body
(collation included). The first ``WARMUP`` steps are dropped; the table reports the
medians over the timed steps of seconds/step and of per-step tokens/s, where **tokens are
the non-pad tokens of the batch (prompt + target)**. Ratios are of the medians (the JSON
also has the median of the per-step paired ratios: same batch, same moment).

The refresh (``OnlineDecoupler.refresh``) is timed around the call: once cold at step 0
(first fit + the frozen reference fit, on the base model) and once warm after the last
step (an ``update``, like every mid-training refresh), split into the probe forward
passes and the rest (estimator fit/update and overlap measurement).

If a target is missed (or with ``--profile``) it profiles one step of the variants
concerned: a phase breakdown (decoder body, LM head + cross-entropy, penalty, backward,
optimizer; per phase the faster of two steps) and the top ``torch.profiler`` operators by
self CPU time (one more step).

How to run
----------
::

    .venv/bin/python benchmarks/train_speed.py            # full run (7-15 minutes)
    .venv/bin/python benchmarks/train_speed.py --quick    # smoke run: 1 + 3 steps per arm
    .venv/bin/python benchmarks/train_speed.py --profile  # profile even if targets are met

It writes, atomically, ``benchmarks/results/train_speed.json`` (every step time with
its user/system CPU seconds and minor page faults, the losses, refresh times, load
averages, the CPU time other processes took, machine,
versions, git state, date and command) and ``benchmarks/results/train_speed.md`` (the
tables for ``BENCHMARKS.md``); ``--quick`` writes ``train_speed_quick.{json,md}``,
``--stem`` names the files and ``--out DIR`` puts them into DIR.

Computation uses ``torch.set_num_threads(2)``. Unless ``OMP_WAIT_POLICY`` is already
set, it is set to ``PASSIVE`` before torch is imported: on a shared 2-core machine,
spin-waiting OpenMP threads distort timings badly.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch
from torch import Tensor, nn

from _common import (
    CORPORA,
    RESULTS,
    ROOT,
    CpuMeter,
    Run,
    interleave,
    median,
    met,
    rotated,
    usage,
    usage_since,
    write_results,
)
from _common import md_table as _table
from vardecouple.data import format_example, load_corpus, make_splits, tokenize_example
from vardecouple.decouple import DecouplerConfig, OnlineDecoupler
from vardecouple.model.load import LoadedModel, load_model
from vardecouple.model.lora import add_lora
from vardecouple.model.states import capture, decoder_body
from vardecouple.subspace import principal_angles
from vardecouple.train.step import Objective, batches, collate, micro_step, trimmed_vocab

CORPUS = CORPORA / "flores200"
MODEL = "gemma3-270m"
STANDARD = "arb_Arab"
VARIETIES = ("arz_Arab", "ary_Arab", "acm_Arab", "aeb_Arab", "ajp_Arab", "apc_Arab")
DIRECTIONS = "standard<->variety"
PROBE_ROWS, DEV_ROWS, SEED = 50, 50, 0
MAX_LENGTH = 128
BATCH = 8
LR = 2e-4
MAX_GRAD_NORM = 1.0  # TrainConfig's and TrainingArguments' default
LORA_R, LORA_ALPHA = 16, 32
THREADS = 2
WARMUP, TIMED = 2, 10
QUICK_WARMUP, QUICK_TIMED = 1, 3
REFRESH_EVERY = 100
DECOUPLER: dict[str, Any] = {
    "estimator": "variational",
    "rank": 1,
    "layers": (9,),
    "refresh_every": REFRESH_EVERY,
    "lam": 0.01,
    "form": "norm",
}
TARGET_B_OVER_A = 2.0
TARGET_B_OVER_A_TRIMMED = 3.0
TARGET_C_OVER_B = 0.97
TARGET_BF16_OVER_B = 1.5
TARGET_WARM_REFRESH_S = 5.0
REFRESH_REPEATS = 5
LABELS = {"a": "(a)", "b": "(b)", "t": "(b′)", "h": "(d)", "c": "(c)"}
#: the warm-refresh variants timed side by side (DecouplerConfig overrides); "unfolded"
#: is the refresh before the adapters were folded (the code of the earlier table)
REFRESH_VARIANTS: dict[str, dict[str, Any]] = {
    "unfolded": {},
    "exact": {},
    "bf16": {"probe_dtype": "bf16"},
    "half-rows": {"fit_fraction": 0.5},
    "bf16+half-rows": {"probe_dtype": "bf16", "fit_fraction": 0.5},
}


# --------------------------------------------------------------------------- helpers
def summarise(seconds: Sequence[float], tokens: Sequence[int], warmup: int) -> dict[str, Any]:
    timed_s, timed_t = list(seconds[warmup:]), list(tokens[warmup:])
    return {
        "median_seconds_per_step": median(timed_s),
        "median_tokens_per_s": median([t / s for t, s in zip(timed_t, timed_s, strict=True)]),
        "timed_steps": len(timed_s),
    }


# --------------------------------------------------------------------------- data, models
def load_data(tokenizer: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The Arabic example configuration's splits and tokenised training features."""
    dev = load_corpus(CORPUS, split="dev")
    devtest = load_corpus(CORPUS, split="devtest")
    splits = make_splits(
        [dev],
        standard=STANDARD,
        varieties=list(VARIETIES),
        directions=DIRECTIONS,
        probe_rows=PROBE_ROWS,
        dev_rows=DEV_ROWS,
        test_corpora=[devtest],
        seed=SEED,
    )
    features = []
    for ex in splits.train:
        f = tokenize_example(tokenizer, *format_example(ex), max_length=MAX_LENGTH)
        f["low_resource"] = ex.tgt != STANDARD
        features.append(f)
    return splits, features


def fresh_model() -> LoadedModel:
    """Gemma-3-270m (fp32) with LoRA r=16, alpha=32 on q/k/v/o, seed 0 (same init per arm)."""
    loaded = load_model(MODEL)
    add_lora(loaded, r=LORA_R, alpha=LORA_ALPHA, seed=SEED)
    return loaded


class TimedDecoupler(OnlineDecoupler):
    """:class:`OnlineDecoupler` that times every ``refresh`` and its probe forward passes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refresh_log: list[dict[str, Any]] = []
        self._forward = 0.0

    def states(self, model: nn.Module, tokenizer: Any, sentences: Sequence[Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return super().states(model, tokenizer, sentences)
        finally:
            self._forward += time.perf_counter() - t0

    def refresh(self, model: nn.Module, tokenizer: Any, step: int) -> dict[str, Any]:
        cold = self.last_refresh is None
        self._forward = 0.0
        t0 = time.perf_counter()
        record = super().refresh(model, tokenizer, step)
        seconds = time.perf_counter() - t0
        self.refresh_log.append(
            {
                "step": step,
                "cold": cold,
                "seconds": seconds,
                "probe_forward_seconds": self._forward,
                "estimator_and_overlap_seconds": seconds - self._forward,
            }
        )
        return record


# --------------------------------------------------------------------------- (b), (c)
class OurArm:
    """One arm of this loop: the body of :func:`vardecouple.train.loop.train`'s step, timed
    the same way (``seconds`` from before collation to after the ``.item()`` logging)."""

    def __init__(
        self,
        loaded: LoadedModel,
        decoupler: OnlineDecoupler,
        features: Sequence[dict[str, Any]],
        steps: int,
        vocab: Tensor | None = None,
        dtype: str = "fp32",
    ) -> None:
        from accelerate import Accelerator
        from transformers import get_cosine_schedule_with_warmup

        self.loaded, self.decoupler, self.features = loaded, decoupler, features
        self.vocab = vocab  # train(): trimmed_vocab(features, tokenizer) if trim_vocab
        self.pad_id = loaded.tokenizer.pad_token_id
        self.accelerator = Accelerator(
            gradient_accumulation_steps=1, mixed_precision="no", cpu=True
        )
        self.params = [p for p in loaded.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.0)
        scheduler = get_cosine_schedule_with_warmup(optimizer, 0, steps)
        objective = Objective(loaded.model, decoupler.layers, vocab, dtype)
        self.objective, self.optimizer = self.accelerator.prepare(objective, optimizer)
        self.scheduler = scheduler  # train(): unprepared, stepped once per optimizer step
        self.model = loaded.model
        self.records: list[dict[str, Any]] = []

    def step(self, step: int, batch_ids: Sequence[int]) -> None:
        decoupler = self.decoupler
        self.objective.train()
        lam = decoupler.lam_at(step)
        t0, u0 = time.perf_counter(), usage()
        batch = collate([self.features[i] for i in batch_ids], self.pad_id)
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        lm, pen, loss, tokens = micro_step(
            self.accelerator, self.objective, decoupler, batch, lam,
            optimizer=self.optimizer, scheduler=self.scheduler, params=self.params,
            max_grad_norm=MAX_GRAD_NORM,
        )  # fmt: skip
        totals = {"loss": loss, "lm_loss": lm, "penalty": pen, "tokens": tokens}
        if not all(math.isfinite(totals[k]) for k in ("loss", "penalty")):
            raise FloatingPointError(f"non-finite loss or penalty at step {step}: {totals}")
        seconds = time.perf_counter() - t0
        self.records.append(
            {"step": step, **totals, "lambda": lam, "seconds": seconds, **usage_since(u0)}
        )

    def refresh(self, step: int) -> None:
        self.decoupler.refresh(self.model, self.loaded.tokenizer, step)

    def result(self, warmup: int) -> dict[str, Any]:
        seconds = [r["seconds"] for r in self.records]
        tokens = [r["tokens"] for r in self.records]
        return {
            "seconds": seconds,
            "tokens": tokens,
            "usage": [
                {k: r[k] for k in ("cpu_user_s", "cpu_sys_s", "minor_faults")} for r in self.records
            ],
            "lm_losses": [r["lm_loss"] for r in self.records],
            "penalties": [r["penalty"] for r in self.records],
            "lambda": self.records[0]["lambda"],
            "refreshes": getattr(self.decoupler, "refresh_log", []),
            "probe_sentences": {
                "total": len(self.decoupler.fit_on) + len(self.decoupler.measure),
                "fit_on": len(self.decoupler.fit_on),
                "measure": len(self.decoupler.measure),
            },
            **summarise(seconds, tokens, warmup),
        }


# --------------------------------------------------------------------------- the run
def run_interleaved(
    features: list[dict[str, Any]],
    probe: Sequence[Any],
    plan: list[list[int]],
    warmup: int,
    repeats: int = REFRESH_REPEATS,
) -> dict[str, Any]:
    """(a) under ``Trainer``; (b) and (c) stepped from its ``on_step_end`` callback."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    steps = len(plan)
    meter = CpuMeter()
    loaded_a, loaded_b, loaded_c, loaded_t, loaded_h = (fresh_model() for _ in range(5))
    dec_c = TimedDecoupler(DecouplerConfig(**DECOUPLER, seed=SEED), probe, loaded_c.num_layers)
    dec_b, dec_t, dec_h = (
        OnlineDecoupler(
            DecouplerConfig(**DECOUPLER, penalize=False, seed=SEED), probe, loaded.num_layers
        )
        for loaded in (loaded_b, loaded_t, loaded_h)
    )
    vocab = trimmed_vocab(features, loaded_t.tokenizer)

    tokenizer = loaded_a.tokenizer
    tokenizer.padding_side = "right"  # training pads on the right (Gemma's default: left)
    seq2seq = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100)
    seen: list[int] = []  # non-pad tokens of every batch the Trainer collated

    def collator(batch: list[dict[str, Any]]) -> dict[str, Tensor]:
        out = seq2seq(batch)
        seen.append(int(out["attention_mask"].sum()))
        return out

    dataset = [
        {"input_ids": features[i]["input_ids"], "labels": features[i]["labels"]}
        for b in plan
        for i in b
    ]
    arms: dict[str, OurArm] = {}
    a_log: dict[str, list[Any]] = {
        "seconds": [],
        "usage": [],
        "losses": [],
        "threads": [],
        "load": [],
    }

    class Interleave(TrainerCallback):
        def __init__(self) -> None:
            self.t0, self.u0 = 0.0, usage()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            a_log["threads"].append(torch.get_num_threads())
            self.t0, self.u0 = time.perf_counter(), usage()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            a_log["seconds"].append(time.perf_counter() - self.t0)
            a_log["usage"].append(usage_since(self.u0))
            k = len(a_log["seconds"]) - 1
            for name in rotated(("b", "t", "h", "c"), k):
                arms[name].step(k, plan[k])
            a_log["load"].append(os.getloadavg()[0])
            times = ", ".join(
                f"{LABELS[n]} {arms[n].records[-1]['seconds']:.2f} s" for n in ("b", "t", "h", "c")
            )
            print(
                f"step {k}: (a) {a_log['seconds'][-1]:.2f} s, {times}, "
                f"load {a_log['load'][-1]:.2f}",
                flush=True,
            )

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if logs and "loss" in logs:
                a_log["losses"].append(float(logs["loss"]))

    with tempfile.TemporaryDirectory(prefix="train-speed-") as tmp:
        args = TrainingArguments(
            output_dir=tmp,
            per_device_train_batch_size=BATCH,
            max_steps=steps,
            learning_rate=LR,
            report_to=[],
            use_cpu=True,
            logging_steps=1,
            save_strategy="no",
            train_sampling_strategy="sequential",  # the fixed batches, in order
            disable_tqdm=True,
            seed=SEED,
        )
        trainer = Trainer(
            model=loaded_a.model,
            args=args,
            train_dataset=dataset,
            data_collator=collator,
            callbacks=[Interleave()],
        )
        arms["b"] = OurArm(loaded_b, dec_b, features, steps)
        arms["c"] = OurArm(loaded_c, dec_c, features, steps)
        arms["t"] = OurArm(loaded_t, dec_t, features, steps, vocab)
        arms["h"] = OurArm(loaded_h, dec_h, features, steps, dtype="bf16")
        # step 0: the cold refresh (base model; b's model is identical, so it shares U)
        arms["c"].refresh(0)
        dec_b.load_state_dict(dec_c.state_dict())
        dec_t.load_state_dict(dec_c.state_dict())
        dec_h.load_state_dict(dec_c.state_dict())
        print(f"cold refresh: {dec_c.refresh_log[-1]}", flush=True)
        others_before = meter.others_cores()
        meter_steps = CpuMeter()
        trainer.train()
        others_steps = meter_steps.others_cores()
        del trainer, loaded_a, loaded_b, loaded_t, loaded_h  # before the refresh timings
        before_warm = copy.deepcopy(dec_c.state_dict())
        arms["c"].refresh(steps)  # warm: after the last step, an update like any later one
        print(f"warm refresh: {dec_c.refresh_log[-1]}", flush=True)
        refresh = time_refreshes(loaded_c, probe, before_warm, steps, repeats)
    tokens = [sum(len(features[i]["input_ids"]) for i in b) for b in plan]
    if seen[:steps] != tokens:
        raise RuntimeError(f"(a) saw other batches than the plan: {seen} vs {tokens}")
    arm_a = {
        "seconds": a_log["seconds"],
        "usage": a_log["usage"],
        "tokens": tokens,
        "losses": a_log["losses"],
        "threads_seen": sorted(set(a_log["threads"])),
        "optimizer": str(args.optim),
        "lr_scheduler": str(args.lr_scheduler_type),
        **summarise(a_log["seconds"], tokens, warmup),
    }
    result = {
        "a": arm_a,
        "b": arms["b"].result(warmup),
        "c": arms["c"].result(warmup),
        "t": arms["t"].result(warmup) | {"vocab_rows": len(vocab)},
        "h": arms["h"].result(warmup) | {"dtype": "bf16"},
        "refresh_variants": refresh,
        "load_1min_after_each_step": a_log["load"],
        "other_processes_cores": {
            "during_setup_and_cold_refresh": others_before,
            "during_steps": others_steps,
        },
        "_keep": (loaded_c, dec_c, vocab),
    }
    for name in ("b", "c", "t", "h"):
        if result[name]["tokens"] != tokens:
            raise RuntimeError(f"({name}) ran other batches than the plan")
    return result


def time_refreshes(
    loaded: LoadedModel, probe: Sequence[Any], state: dict[str, Any], step: int, repeats: int
) -> dict[str, Any]:
    """Every :data:`REFRESH_VARIANTS` warm refresh from the same decoupler ``state`` on
    the same trained model, :data:`REFRESH_REPEATS` times each, in rotating order; each
    variant's subspace and logged overlaps against the exact one's."""
    # the module whose refresh reads the probe states with the adapters folded in
    probe_module = sys.modules[OnlineDecoupler.states.__module__]
    folded = probe_module.folded_weights

    def refresh(name: str) -> Callable[[int], dict[str, Any]]:
        def call(_repeat: int) -> dict[str, Any]:
            config = DecouplerConfig(**DECOUPLER, seed=SEED, **REFRESH_VARIANTS[name])
            dec = TimedDecoupler(config, probe, loaded.num_layers)
            dec.load_state_dict(copy.deepcopy(state))
            if name == "unfolded":
                probe_module.folded_weights = lambda *_a, **_k: contextlib.nullcontext()
            try:
                log = dec.refresh(loaded.model, loaded.tokenizer, step)
            finally:
                probe_module.folded_weights = folded
            return dec.refresh_log[-1] | {
                "basis": dec.subspaces[9].basis,
                "overlap": log["overlap"],
                "angle_to_previous": log["angle_to_previous"]["9"],
            }

        return call

    def report(repeat: int, name: str, timing: dict[str, Any], _seconds: float) -> None:
        print(f"refresh {name} #{repeat}: {timing['seconds']:.1f} s", flush=True)

    runs = interleave(
        {name: refresh(name) for name in REFRESH_VARIANTS}, repeats, report=report
    ).results
    exact = runs["exact"][0]
    out: dict[str, Any] = {}
    for name, rows in runs.items():
        angles = [float(principal_angles(r["basis"], exact["basis"]).max()) for r in rows]
        diffs = [  # relative: the overlaps of a rank-1 subspace are small numbers
            abs(r["overlap"][layer][v][w] - exact["overlap"][layer][v][w])
            / max(abs(exact["overlap"][layer][v][w]), 1e-12)
            for r in rows
            for layer in exact["overlap"]
            for v in exact["overlap"][layer]
            for w in ("own", "reference")
        ]
        out[name] = {
            "seconds": [r["seconds"] for r in rows],
            "probe_forward_seconds": [r["probe_forward_seconds"] for r in rows],
            "median_seconds": median([r["seconds"] for r in rows]),
            "median_probe_forward_seconds": median([r["probe_forward_seconds"] for r in rows]),
            "largest_angle_to_exact_deg": max(angles),
            "angle_to_previous_deg": median([r["angle_to_previous"] for r in rows]),
            "largest_overlap_relative_change": max(diffs),
            "own_overlap": {v: o["own"] for v, o in rows[0]["overlap"]["9"].items()},
        }
    return out


def amortise(
    ours: dict[str, Any], refresh_seconds: float, refresh_every: int, warmup: int
) -> dict[str, Any]:
    """An arm with a warm refresh of ``refresh_seconds`` spread over ``refresh_every`` steps."""
    extra = refresh_seconds / refresh_every
    seconds = [s + extra for s in ours["seconds"]]
    return {
        "refresh_seconds_per_step": extra,
        "seconds": seconds,
        **summarise(seconds, ours["tokens"], warmup),
    }


# --------------------------------------------------------------------------- profile
def profile_steps(
    loaded: LoadedModel,
    decoupler: OnlineDecoupler,
    batch_ids: list[int],
    features: list[dict[str, Any]],
    variants: Sequence[str],
    vocab: Tensor,
) -> dict[str, Any]:
    """Where one step's time goes: (a) full-logits loss, (b) standard, (c) penalised,
    (t) = (b′), the standard step with the trimmed vocabulary."""
    from torch.profiler import ProfilerActivity, profile

    model = loaded.model
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)
    batch = collate([features[i] for i in batch_ids], loaded.tokenizer.pad_token_id)
    body = decoder_body(model)
    head = model.get_base_model().get_output_embeddings()
    layers = decoupler.layers

    def step(variant: str, phases: dict[str, float]) -> None:
        t = time.perf_counter()

        def mark(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            phases[name] = phases.get(name, 0.0) + now - t
            t = now

        with capture(model, layers) as hidden:
            out = body(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            )
        h = out.last_hidden_state
        mark("decoder body forward")
        targets = batch["labels"][:, 1:]
        if variant == "a":  # what labels= does: logits at every position, then the loss
            logits = head(h)[:, :-1]
            loss = nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
            )
        else:  # as supervised_loss does
            where = targets != -100
            picked, labels = h[:, :-1][where], targets[where]
            if variant == "t":
                logits = nn.functional.linear(picked, head.weight[vocab])
                labels = torch.searchsorted(vocab, labels)
            else:
                logits = head(picked)
            loss = nn.functional.cross_entropy(logits.float(), labels)
        mark("LM head + cross-entropy forward")
        mask = decoupler.token_mask(
            batch["attention_mask"], batch["target_mask"], batch["low_resource"]
        )
        if variant == "c":
            loss = loss + decoupler.config.lam * decoupler.penalty(dict(hidden), mask)
        else:
            with torch.no_grad():
                decoupler.penalty({k: v.detach() for k, v in hidden.items()}, mask)
        mark("penalty forward")
        loss.backward()
        mark("backward")
        torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        mark("clip + AdamW step")

    report: dict[str, Any] = {"batch_tokens": int(batch["attention_mask"].sum())}
    for variant in variants:
        step(variant, {})  # warm-up
        runs: list[dict[str, float]] = [{}, {}]
        for phases in runs:  # per phase the faster of two: contention only adds time
            step(variant, phases)
        phases = {name: min(r[name] for r in runs) for name in runs[0]}
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(variant, {})
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        report[variant] = {
            "phases_seconds": phases,
            "step_seconds": sum(phases.values()),
            "top_ops": [
                {
                    "op": e.key,
                    "self_cpu_s": e.self_cpu_time_total / 1e6,
                    "share": e.self_cpu_time_total / total if total else float("nan"),
                    "calls": e.count,
                }
                for e in events[:10]
            ],
        }
    return report


# --------------------------------------------------------------------------- output
def cpu_summary(arm: dict[str, Any], warmup: int) -> dict[str, float]:
    """Medians over the timed steps: CPU cores used (user + system) and the system share."""
    rows = list(zip(arm["seconds"][warmup:], arm["usage"][warmup:], strict=True))
    return {
        "cores_used": median([(u["cpu_user_s"] + u["cpu_sys_s"]) / s for s, u in rows]),
        "sys_share": median(
            [u["cpu_sys_s"] / max(u["cpu_user_s"] + u["cpu_sys_s"], 1e-9) for _, u in rows]
        ),
        "minor_faults_per_step": median([u["minor_faults"] for _, u in rows]),
    }


def markdown(report: dict[str, Any]) -> str:
    arms, ratios, targets = report["arms"], report["ratios"], report["targets"]
    setup = report["setup"]
    a, b, t, c, c_amort = arms["a"], arms["b"], arms["t"], arms["c"], arms["c_amortised"]
    h, variants = arms["h"], report["refresh_variants"]
    cold = next(r for r in c["refreshes"] if r["cold"])
    tps_a = a["median_tokens_per_s"]

    def row(label: str, arm: dict[str, Any], vs_a: str, vs_b: str) -> list[str]:
        cpu = arm.get("cpu")
        return [
            label,
            f"{arm['median_seconds_per_step']:.2f}",
            f"{arm['median_tokens_per_s']:.0f}",
            vs_a,
            vs_b,
            f"{cpu['cores_used']:.2f}" if cpu else "",
            f"{cpu['sys_share']:.0%}" if cpu else "",
            f"{cpu['minor_faults_per_step'] / 1e3:.0f}k" if cpu else "",
        ]

    def refresh_row(label: str, r: dict[str, Any]) -> list[str]:
        return [
            label,
            f"{r['seconds']:.1f}",
            f"{r['probe_forward_seconds']:.1f}",
            f"{r['estimator_and_overlap_seconds']:.1f}",
            f"{setup['probe_tokens'] / r['probe_forward_seconds']:.0f}",
        ]

    lines = [
        f"Medians over {a['timed_steps']} timed steps after {setup['warmup_steps']} warm-up "
        f"steps. All arms ran the same {len(a['tokens'])} batches of {BATCH} examples "
        f"({min(a['tokens'])}–{max(a['tokens'])} non-pad tokens each, "
        f"{setup['pad_fraction']:.0%} padding), interleaved step by step. "
        "Tokens/s counts the non-pad tokens (prompt + target) per second.",
        "",
        *_table(
            ["arm", "s/step", "tokens/s", "÷ (a)", "÷ (b)", "cores", "sys", "faults"],
            ["l", "r", "r", "r", "r", "r", "r", "r"],
            [
                row("(a) HF `Trainer` + peft (full logits)", a, "1.00", ""),
                row("(b) this loop, standard arm", b, f"**{ratios['b_over_a']:.2f}**", "1.00"),
                row(
                    f"(b′) = (b) with vocabulary trimming ({t['vocab_rows']:,} of 262,144 rows)",
                    t,
                    f"**{ratios['b_trimmed_over_a']:.2f}**",
                    f"{ratios['b_trimmed_over_b']:.2f}",
                ),
                row(
                    '(d) = (b) with `[train] dtype = "bf16"` (autocast)',
                    h,
                    f"{h['median_tokens_per_s'] / tps_a:.2f}",
                    f"**{ratios['bf16_over_b']:.2f}**",
                ),
                row(
                    f"(c) this loop, decoupled arm, refresh amortised over {REFRESH_EVERY} steps",
                    c_amort,
                    f"{ratios['c_over_a']:.2f}",
                    f"**{ratios['c_over_b']:.2f}**",
                ),
                row(
                    "(c) penalised step alone (no refresh)",
                    c,
                    f"{c['median_tokens_per_s'] / tps_a:.2f}",
                    f"{ratios['c_step_over_b']:.2f}",
                ),
            ],
        ),
        "",
        f"Paired (same batch, same moment) median ratios: (b)/(a) "
        f"{ratios['paired_b_over_a']:.2f}, (b′)/(a) {ratios['paired_b_trimmed_over_a']:.2f}, "
        f"(d)/(b) {ratios['paired_bf16_over_b']:.2f}, (c)/(b) {ratios['paired_c_over_b']:.2f} "
        f"(penalised step alone {ratios['paired_c_step_over_b']:.2f}). "
        "Cores: CPU seconds (user + system) of this process per wall second of the step; "
        "sys: the system (kernel) share of them; faults: minor page faults per step "
        f"(medians). Other processes kept {report['other_processes_cores']['during_steps']:.2f} "
        "cores busy on average during the steps.",
        "",
        f"Probe refresh of the decoupled arm: {c['probe_sentences']['total']} probe sentences "
        f"({PROBE_ROWS} rows × 7 varieties, {setup['probe_tokens']} tokens; fitted on "
        f"{c['probe_sentences']['fit_on']}, overlap measured on "
        f"{c['probe_sentences']['measure']}), layer 9, variational rank 1:",
        "",
        *_table(
            ["refresh", "s", "probe forward s", "estimator + overlap s", "forward tokens/s"],
            ["l", "r", "r", "r", "r"],
            [refresh_row("cold (step 0: fit + reference fit)", cold)],
        ),
        "",
        f"Warm refresh (an `update` after step {setup['warmup_steps'] + a['timed_steps'] - 1},"
        f" from the same state, {len(variants['exact']['seconds'])} times each, rotating; "
        "medians). Angle: the largest principal angle to the exact refresh's subspace "
        "over the repeats; overlap change: the largest relative change of a logged "
        "overlap (own or reference, any variety) against the exact refresh; angle to "
        "previous U: how far the refresh moved the subspace it started from (the "
        "refresh's own step, for scale):",
        "",
        *_table(
            [
                "warm refresh",
                "s",
                "probe forward s",
                "angle to exact (°)",
                "angle to previous U (°)",
                "overlap change",
            ],
            ["l", "r", "r", "r", "r", "r"],
            [
                [
                    f"`{name}`" + (" (before: adapters unfolded)" if name == "unfolded" else ""),
                    f"{v['median_seconds']:.1f}",
                    f"{v['median_probe_forward_seconds']:.1f}",
                    f"{v['largest_angle_to_exact_deg']:.2f}",
                    f"{v['angle_to_previous_deg']:.2f}",
                    f"{v['largest_overlap_relative_change']:.1%}",
                ]
                for name, v in variants.items()
            ],
        ),
        "",
        f"Amortised at refresh_every = {REFRESH_EVERY}: "
        f"{c_amort['refresh_seconds_per_step']:.2f} s/step (the exact refresh). "
        f"Were (b) also to refresh, as `train()`'s standard arm does to log overlaps, "
        f"(c)/(b) = {ratios['c_over_b_both_refreshing']:.2f}.",
        "",
        *_table(
            ["target", "measured", "met?"],
            ["l", "r", "c"],
            [
                [
                    f"(b)/(a) ≥ {TARGET_B_OVER_A:g}× (exact loss)",
                    f"{ratios['b_over_a']:.2f}×",
                    met(targets["b_over_a_exact"]),
                ],
                [
                    f"(b′)/(a) ≥ {TARGET_B_OVER_A_TRIMMED:g}× (vocabulary trimming on)",
                    f"{ratios['b_trimmed_over_a']:.2f}×",
                    met(targets["b_over_a_trimmed"]),
                ],
                [
                    f"(c)/(b) ≥ {TARGET_C_OVER_B:g} (exact refresh amortised, (b) refreshing not)",
                    f"{ratios['c_over_b']:.2f}",
                    met(targets["c_over_b"]),
                ],
                [
                    f"(d)/(b) ≥ {TARGET_BF16_OVER_B:g}× (bf16 autocast)",
                    f"{ratios['bf16_over_b']:.2f}×",
                    met(targets["bf16_over_b"]),
                ],
                [
                    f"warm refresh ≤ {TARGET_WARM_REFRESH_S:g} s, exact",
                    f"{variants['exact']['median_seconds']:.1f} s",
                    met(targets["warm_refresh_exact"]),
                ],
                [
                    f"warm refresh ≤ {TARGET_WARM_REFRESH_S:g} s, fastest approximation",
                    f"{min(v['median_seconds'] for v in variants.values()):.1f} s",
                    met(targets["warm_refresh_any"]),
                ],
            ],
        ),
        "",
        f"Exactness: first-step loss (a) {report['checks']['first_loss_a']:.4f} (the Trainer "
        f"logs 4 digits), (b) {report['checks']['first_loss_b']:.6f}, "
        f"(c) {report['checks']['first_loss_c']:.6f}; (d) "
        f"{report['checks']['first_loss_bf16']:.6f} (bf16); (b′) "
        f"{report['checks']['first_loss_b_trimmed']:.6f} (trimmed softmax: a lower bound).",
    ]
    prof = report.get("profile")
    if prof:
        variants = [v for v in ("a", "b", "t", "c") if v in prof]
        lines += [
            "",
            f"Profile of one step (batch of {prof['batch_tokens']} non-pad tokens), rebuilt by "
            "hand and timed by phase with `perf_counter` (per phase the faster of two steps); "
            "(a) = logits at every position:",
            "",
        ]
        names = list(prof[variants[0]]["phases_seconds"])
        lines += _table(
            ["phase", *(f"{LABELS[v]} s" for v in variants)],
            ["l", *("r" for _ in variants)],
            [[n, *(f"{prof[v]['phases_seconds'][n]:.2f}" for v in variants)] for n in names]
            + [["total", *(f"{prof[v]['step_seconds']:.2f}" for v in variants)]],
        )
        for v in variants:
            lines += [
                "",
                f"Top operators of {LABELS[v]} by self CPU time (torch.profiler, one step):",
                "",
                *_table(
                    ["op", "self CPU s", "share", "calls"],
                    ["l", "r", "r", "r"],
                    [
                        [
                            f"`{e['op']}`",
                            f"{e['self_cpu_s']:.2f}",
                            f"{e['share']:.0%}",
                            str(e["calls"]),
                        ]
                        for e in prof[v]["top_ops"][:6]
                    ],
                ),
            ]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 + 3 steps per arm")
    parser.add_argument("--profile", action="store_true", help="profile even if targets are met")
    parser.add_argument("--no-profile", action="store_true", help="never profile")
    parser.add_argument("--stem", help="results file name (default train_speed[_quick])")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    warmup, timed = (QUICK_WARMUP, QUICK_TIMED) if args.quick else (WARMUP, TIMED)
    steps = warmup + timed
    stem = args.stem or ("train_speed_quick" if args.quick else "train_speed")

    # date and git state at the start: the code this run imported (src/ may change meanwhile)
    run = Run("train_speed", "transformers", "peft", "accelerate")
    tokenizer = load_model(MODEL).tokenizer
    splits, features = load_data(tokenizer)
    # exactly the plan train(steps=steps, batch_size=BATCH, seed=SEED) follows
    plan = batches([len(f["input_ids"]) for f in features], BATCH, steps, SEED)
    widths = [max(len(features[i]["input_ids"]) for i in b) for b in plan]
    tokens = [sum(len(features[i]["input_ids"]) for i in b) for b in plan]
    probe_tokens = sum(
        len(
            tokenizer(s.text, add_special_tokens=False, truncation=True, max_length=MAX_LENGTH)[
                "input_ids"
            ]
        )
        for s in splits.probe
    )
    print(f"data ready in {run.seconds:.0f} s; batches {tokens}", flush=True)

    run.mark("before_steps")
    t = time.perf_counter()
    arms = run_interleaved(
        features, splits.probe, plan, warmup, 1 if args.quick else REFRESH_REPEATS
    )
    runtime = {"interleaved_run": time.perf_counter() - t}
    run.mark("after_steps")
    kept_model, kept_decoupler, vocab = arms.pop("_keep")
    arm_a, arm_b, arm_c, arm_t, arm_h = arms["a"], arms["b"], arms["c"], arms["t"], arms["h"]
    refresh = arms["refresh_variants"]
    warm_s = refresh["exact"]["median_seconds"]
    c_amort = amortise(arm_c, warm_s, REFRESH_EVERY, warmup)
    b_amort = amortise(arm_b, warm_s, REFRESH_EVERY, warmup)  # train()'s standard arm too
    for arm in (arm_a, arm_b, arm_t, arm_h, arm_c):
        arm["cpu"] = cpu_summary(arm, warmup)

    def paired(num: Sequence[float], den: Sequence[float]) -> float:
        return median([d / n for n, d in zip(num[warmup:], den[warmup:], strict=True)])

    ratios = {
        "b_over_a": arm_b["median_tokens_per_s"] / arm_a["median_tokens_per_s"],
        "b_trimmed_over_a": arm_t["median_tokens_per_s"] / arm_a["median_tokens_per_s"],
        "b_trimmed_over_b": arm_t["median_tokens_per_s"] / arm_b["median_tokens_per_s"],
        "c_over_a": c_amort["median_tokens_per_s"] / arm_a["median_tokens_per_s"],
        "c_over_b": c_amort["median_tokens_per_s"] / arm_b["median_tokens_per_s"],
        "c_step_over_b": arm_c["median_tokens_per_s"] / arm_b["median_tokens_per_s"],
        "c_over_b_both_refreshing": c_amort["median_tokens_per_s"] / b_amort["median_tokens_per_s"],
        "bf16_over_b": arm_h["median_tokens_per_s"] / arm_b["median_tokens_per_s"],
        "paired_bf16_over_b": paired(arm_h["seconds"], arm_b["seconds"]),
        "paired_b_over_a": paired(arm_b["seconds"], arm_a["seconds"]),
        "paired_b_trimmed_over_a": paired(arm_t["seconds"], arm_a["seconds"]),
        "paired_c_over_b": paired(c_amort["seconds"], arm_b["seconds"]),
        "paired_c_step_over_b": paired(arm_c["seconds"], arm_b["seconds"]),
    }
    targets = {
        "b_over_a_exact": ratios["b_over_a"] >= TARGET_B_OVER_A,
        "b_over_a_trimmed": ratios["b_trimmed_over_a"] >= TARGET_B_OVER_A_TRIMMED,
        "c_over_b": ratios["c_over_b"] >= TARGET_C_OVER_B,
        "bf16_over_b": ratios["bf16_over_b"] >= TARGET_BF16_OVER_B,
        "warm_refresh_exact": warm_s <= TARGET_WARM_REFRESH_S,
        "warm_refresh_any": min(v["median_seconds"] for v in refresh.values())
        <= TARGET_WARM_REFRESH_S,
    }
    variants = {"a", "b", "t", "c"} if args.profile else set()
    if not targets["b_over_a_exact"]:
        variants |= {"a", "b"}
    if not targets["b_over_a_trimmed"]:
        variants |= {"a", "t"}
    if not targets["c_over_b"]:
        variants |= {"b", "c"}
    profile_report = None
    if variants and not args.no_profile:
        run.mark("before_profile")
        t = time.perf_counter()
        profile_report = profile_steps(
            kept_model,
            kept_decoupler,
            plan[warmup],
            features,
            [v for v in ("a", "b", "t", "c") if v in variants],
            vocab,
        )
        runtime["profile"] = time.perf_counter() - t
    run.mark("end")
    runtime["total"] = run.seconds

    report = run.record(
        runtime_seconds=runtime,
        load_average_1_5_15min=run.load,
        load_1min_after_each_step=arms["load_1min_after_each_step"],
        other_processes_cores=arms["other_processes_cores"],
        setup={
            "model": MODEL,
            "dtype": "float32 ((d): bf16 autocast)",
            "data": f"{CORPUS.relative_to(ROOT.parent)} dev (devtest = test corpus)",
            "standard": STANDARD,
            "varieties": list(VARIETIES),
            "directions": DIRECTIONS,
            "train_examples": len(features),
            "probe_rows": PROBE_ROWS,
            "probe_sentences": len(splits.probe),
            "probe_tokens": probe_tokens,
            "prompt": "plain",
            "max_length": MAX_LENGTH,
            "batch_size": BATCH,
            "batch_widths": widths,
            "batch_tokens": tokens,
            "pad_fraction": 1 - sum(tokens) / sum(w * BATCH for w in widths),
            "lora": {"r": LORA_R, "alpha": LORA_ALPHA, "dropout": 0.0, "targets": "q/k/v/o"},
            "optimizer": f"AdamW lr {LR}, clip {MAX_GRAD_NORM}",
            "threads": THREADS,
            "warmup_steps": warmup,
            "timed_steps": timed,
            "decoupler": {k: list(v) if isinstance(v, tuple) else v for k, v in DECOUPLER.items()},
            "refresh_every": REFRESH_EVERY,
            "interleaved": "per step: (a) under Trainer, then (b), (b'), (d), (c) rotating",
            "trimmed_vocab_rows": arm_t["vocab_rows"],
            "quick": args.quick,
        },
        arms={
            "a": arm_a,
            "b": arm_b,
            "t": arm_t,
            "h": arm_h,
            "c": arm_c,
            "c_amortised": c_amort,
            "b_amortised": b_amort,
        },
        refresh_variants=refresh,
        ratios=ratios,
        targets=targets,
        checks={
            "first_loss_a": arm_a["losses"][0] if arm_a["losses"] else float("nan"),
            "first_loss_b": arm_b["lm_losses"][0],
            "first_loss_c": arm_c["lm_losses"][0],
            "first_loss_b_trimmed": arm_t["lm_losses"][0],
            "first_loss_bf16": arm_h["lm_losses"][0],
        },
        profile=profile_report,
    )
    text = markdown(report)
    write_results(args.out / stem, report, text, ensure_ascii=True)
    print(text)
    print(f"total {runtime['total']:.0f} s; wrote {args.out / stem}.{{json,md}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
