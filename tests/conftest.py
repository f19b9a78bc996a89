import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def _one_thread_for_tiny_models():
    """Tiny models train about 2x faster on one thread than on two (measured: 200 LoRA
    steps with refreshes 12.6 s vs 27.5 s; their matrices are too small to share);
    tests/test_real_model.py gives the real model every thread back."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield threads
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def corpora_root() -> Path:
    """Where every test finds the shared corpora (read in place, never copied here):
    ``$VARDECOUPLE_CORPORA``, else ``shared/corpora`` beside the clone (``../shared/corpora``)."""
    given = os.environ.get("VARDECOUPLE_CORPORA")
    if given:
        return Path(given).resolve()
    return Path(__file__).resolve().parents[2] / "shared" / "corpora"


CORPORA = corpora_root()


@pytest.fixture(scope="session")
def corpora() -> Path:
    """:data:`CORPORA`, or the test fails with one line naming the variable (never skips).

    Session-scoped, so it runs before any module fixture that reads the corpora: a module
    that reads them says ``pytestmark = pytest.mark.usefixtures("corpora")``, a single
    test takes ``corpora`` as an argument."""
    if not CORPORA.is_dir():
        pytest.fail(
            f"shared corpora not found at {CORPORA}: set VARDECOUPLE_CORPORA to the folder",
            pytrace=False,
        )
    return CORPORA


#: A miniature experiment: tiny-random, German–Low German, copy/base/train arms, 2 seeds.
MINI_CORE = f"""

name = "mini"
[data]
root = "{CORPORA}"
corpora = [{{ path = "tatoeba-deu-nds" }}]
standard = "deu_Latn"
varieties = ["nds_Latn"]
dev_rows = 20
probe_rows = 60
test_rows = 20
max_train_examples = 300
max_length = 64
[model]
spec = "tiny-random"
[lora]
r = 4
alpha = 8
[train]
steps = 4
batch_size = 4
checkpoint_every = 2
seeds = [0, 1]
[decoupler]
estimator = "mean-diff"
reference_estimator = "mean-diff"
layers = [1]
refresh_every = 2
lam = 1.0
[eval]
max_new_tokens = 12
[arms.copy]
kind = "copy"
[arms.base]
kind = "base"
[arms.standard]
penalize = false
[arms.decoupled]
[arms.random]
estimator = "random"
match_penalty_of = "decoupled"
"""

#: What the full run adds to the mini experiment: an erase arm and the layer-wise probe.
MINI_EXTRA = """
[arms.erase]
kind = "erase"
erase_on = "standard"
[probe]
max_rows = 40
rank = 2
"""
MINI_CONFIG = MINI_CORE + MINI_EXTRA


@pytest.fixture(scope="session")
def mini_config() -> str:
    return MINI_CONFIG


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory, corpora: Path) -> Path:
    """:data:`MINI_CONFIG` run to its end once per session: ``FOLDER/mini.toml`` and the
    run folder ``FOLDER/out``. Tests read it (or copy it) and never change ``out``."""
    from vardecouple.experiment.config import load_config
    from vardecouple.experiment.run import run_experiment

    folder = tmp_path_factory.mktemp("mini-run")
    (folder / "mini.toml").write_text(MINI_CONFIG)
    run_experiment(load_config(folder / "mini.toml"), folder / "out", progress=False)
    return folder


def decoding_setup(test_rows: int, probe_rows: int = 20):
    """The spread tiny model on German–Low German, its splits, and the first ``test_rows``
    test examples' prompts and sources: what the decoding and erasure tests decode."""
    from vardecouple.data import format_example, load_corpus, make_splits

    corpus = load_corpus(CORPORA / "tatoeba-deu-nds")
    model, tok = spread_tiny_model(corpus)  # any padding leak would show
    splits = make_splits(
        [corpus],
        standard="deu_Latn",
        varieties=["nds_Latn"],
        directions="standard<->variety",
        dev_rows=20,
        probe_rows=probe_rows,
        test_rows=test_rows,
        seed=0,
    )
    ex = splits.test[:test_rows]
    prompts = [format_example(e)[0] for e in ex]
    return model, tok, splits, prompts, [e.src_text for e in ex]


def spread_tiny_model(corpus):
    """A float64 tiny-random model on ``corpus`` with its weights spread (N(0, 0.2)):
    at the default scale it emits one token forever, so hypotheses would not differ."""
    from vardecouple.model.load import tiny_random

    texts = [t for row in corpus.rows[:2000] for t in row.values()]
    model, tok = tiny_random(texts)
    model = model.to(torch.float64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.2, generator=g)
    return model, tok


@dataclass(frozen=True)
class Sentence:
    """A labelled probe sentence (0 = the standard) of aligned row ``group``."""

    text: str
    variety: str
    label: int
    group: int
