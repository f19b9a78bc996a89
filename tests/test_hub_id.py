"""``load_model`` takes a Hugging Face hub id: tested offline, through a local hub cache.

A tiny model and its tokenizer are saved in the layout of the hub cache
(``$HF_HOME/hub/models--ORG--NAME/snapshots/<commit>/``, ``refs/main``); a fresh process
with ``HF_HOME`` pointing there and ``HF_HUB_OFFLINE=1`` (huggingface_hub reads both at
import) loads the model by its id and must get these very weights and tokenizer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from vardecouple.model.load import tiny_random

HUB_ID = "vardecouple-test/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SENTENCE = "De Hund hett in'n Goorn speelt."
TEXTS = [SENTENCE, "Der Hund hat im Garten gespielt.", "Wi sünd an'n Strand west."] * 4

LOAD = """
import json, sys, torch
from vardecouple.model import load_model
loaded = load_model(sys.argv[1])
ids = loaded.tokenizer(sys.argv[2], return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = loaded.model(input_ids=ids).logits
print(json.dumps({"layers": loaded.num_layers, "hidden": loaded.hidden_size,
                  "source": loaded.source, "ids": ids[0].tolist(),
                  "logits": logits[0, -1, :8].tolist()}))
"""


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.pop("TRANSFORMERS_CACHE", None)
    return env | {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _load(home: Path, spec: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", LOAD, spec, SENTENCE],
        env=_env(home),
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )


def test_a_hub_id_loads_from_the_local_hub_cache(tmp_path: Path) -> None:
    model, tokenizer = tiny_random(TEXTS, num_layers=3, hidden_size=32)
    repo = tmp_path / "hub" / ("models--" + HUB_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / COMMIT
    model.save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)

    out = _load(tmp_path, HUB_ID)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    ids = tokenizer(SENTENCE, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1, :8]
    assert got["layers"] == 3 and got["hidden"] == 32
    assert got["source"] == HUB_ID
    assert got["ids"] == ids[0].tolist()
    assert torch.allclose(torch.tensor(got["logits"]), logits, atol=1e-6)

    # an id absent from the cache is not fetched (offline): one ValueError line naming it
    missing = _load(tmp_path, "vardecouple-test/absent")
    assert missing.returncode != 0
    last = missing.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: model 'vardecouple-test/absent': not a local path"), last
