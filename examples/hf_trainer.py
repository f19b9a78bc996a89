"""An ordinary Hugging Face Trainer script for LoRA translation fine-tuning, with online
decoupling added in two lines (marked ``# + decoupling``). ``--sft`` runs the same with
TRL's ``SFTTrainer`` (``pip install 'vardecouple[trl]'``).

    python examples/hf_trainer.py --corpus ../shared/corpora/tatoeba-fin-fkv \\
        --standard fin_Latn --variety fkv_Latn --model gemma3-270m --steps 300 --out hf-run

Checkpoints (every ``--save-steps``) carry the decoupler's state; rerun with ``--resume``
to continue from the latest one. The run ends with the adapter and its subspaces in
``OUT/final`` (``load_subspace(OUT / "final" / "subspace")`` erases them at inference).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

from vardecouple import DecouplerConfig, OnlineDecoupler, add_decoupling, load_corpus, load_model
from vardecouple.data import format_example, make_splits, tokenize_example
from vardecouple.model import add_lora
from vardecouple.probes.artifact import save_subspaces


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", required=True, help="a line-aligned corpus folder")
    parser.add_argument("--standard", required=True, help="the standard variety's code")
    parser.add_argument("--variety", required=True, help="the low-resource variety's code")
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--save-steps", type=int, default=100)
    parser.add_argument("--lam", type=float, default=0.01)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resume", action="store_true", help="from the latest checkpoint")
    parser.add_argument("--sft", action="store_true", help="TRL's SFTTrainer instead")
    args = parser.parse_args(argv)

    # data: translation examples both ways, and a held-out probe set of both varieties
    corpus = load_corpus(args.corpus)
    splits = make_splits([corpus], standard=args.standard, varieties=[args.variety],
                         directions="standard<->variety", dev_rows=0, probe_rows=100)  # fmt: skip
    texts = [t for row in corpus.rows[:2000] for t in row.values()]  # tiny-random's vocabulary
    loaded = load_model(args.model, corpus_texts=texts if args.model == "tiny-random" else None)
    add_lora(loaded, r=16, alpha=32)
    rows = []
    for ex in splits.train:
        f = tokenize_example(loaded.tokenizer, *format_example(ex), max_length=128)
        rows.append({"input_ids": f["input_ids"], "labels": f["labels"]})

    # the trainer, as in any LoRA script
    common = {
        "output_dir": args.out, "max_steps": args.steps, "per_device_train_batch_size": 8,
        "learning_rate": 2e-4, "logging_steps": 10, "save_steps": args.save_steps,
        "report_to": [], "use_cpu": True, "disable_tqdm": True,
    }  # fmt: skip
    if args.sft:
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        trainer = SFTTrainer(model=loaded.model, args=SFTConfig(**common, max_length=None),
                             train_dataset=Dataset.from_list(rows),
                             processing_class=loaded.tokenizer)  # fmt: skip
    else:
        collator = DataCollatorForSeq2Seq(loaded.tokenizer, label_pad_token_id=-100)
        trainer = Trainer(model=loaded.model, args=TrainingArguments(**common),
                          train_dataset=rows, data_collator=collator,
                          processing_class=loaded.tokenizer)  # fmt: skip

    decoupler = OnlineDecoupler(DecouplerConfig(lam=args.lam, refresh_every=100),  # + decoupling
                                splits.probe, loaded.num_layers)  # fmt: skip
    add_decoupling(trainer, decoupler)  # + decoupling

    trainer.train(resume_from_checkpoint=True if args.resume else None)
    final = Path(args.out) / "final"
    trainer.save_model(str(final))
    info = {"estimator": decoupler.config.estimator, "model": args.model}
    save_subspaces(final / "subspace", decoupler.subspaces, info, reference=decoupler.reference)
    rows = len(decoupler.fit_on) + len(decoupler.measure)  # this process's shard of the probe
    total = len(splits.probe)
    print(f"adapter and subspaces: {final} (this process read {rows} of {total} probe rows)")


if __name__ == "__main__":
    main()
