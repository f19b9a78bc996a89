"""Several processes (2 CPU processes, gloo): the estimators' accumulate / reduce / solve
split gives every process a bit-identical subspace; statistics-based estimators equal a
single-process fit on the union of the shards (largest principal angle ≤ 1e-4°, what a
float32 basis can promise; measured 1.2e-14°); the variational probe agrees with the
single-process fit within the seed-to-seed spread; the decoupler shards its probe rows and
matches the single-process subspace (≤ 1e-4°, measured 3.4e-6°) and overlaps (≤ 1e-6,
measured 3e-8), each process measuring only its share of the held-out rows."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vardecouple.probes import make_estimator

pytestmark = pytest.mark.usefixtures("corpora")
STATISTICS = ("pca", "mean-diff", "leace", "lda", "variational-generative")
N, D, SPLIT = 400, 24, 170  # rank 0 gets rows [0, SPLIT), rank 1 the rest: uneven shards
#: Largest principal angle (degrees) to a single-process fit that a float32 basis can
#: promise: one float32 rounding of a unit vector's entries (~6e-8) turns it by ~3e-6°.
ANGLE = 1e-4


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes separated along a planted direction, plus anisotropic noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(N) % 2
    x = torch.randn(N, D, generator=g) * torch.linspace(0.5, 2.0, D)
    x[:, 3] += 2.5 * y
    return x.double(), y


def _options(name: str, seed: int) -> dict:
    return {"seed": seed, "fit_epochs": 30} if name == "variational" else {}


def _worker(rank: int, folder: str) -> None:
    early = _refresh(build_only=True)  # built before the process group exists
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/rendezvous",
        rank=rank,
        world_size=2,
        timeout=timedelta(seconds=120),  # a collective that never matches fails, not hangs
    )
    torch.set_num_threads(1)
    try:
        x, y = _data()
        part = slice(0, SPLIT) if rank == 0 else slice(SPLIT, N)
        out = {}
        for name in (*STATISTICS, "variational"):
            est = make_estimator(name, 1, all_reduce=dist.all_reduce, **_options(name, 0))
            out[name] = est.fit(x[part], y[part]).basis
        out["decoupler"] = _refresh()
        half = _refresh(build_only=True, fit_fraction=0.5)  # built inside the group
        half.last_refresh = 0
        out["half"] = [s.text for s in half.fit_rows(100)]
        unsharded = [s.text for s in early.fit_on]
        early.distribute()  # what train() does with a decoupler built too early
        out["early"] = {"before": unsharded, "after": [s.text for s in early.fit_on],
                        "shared": sorted(early.shared)}  # fmt: skip
        torch.save(out, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _refresh(build_only: bool = False, **options):
    """A decoupler refresh of a tiny model: subspace and held-out overlaps (or, with
    ``build_only``, the decoupler without model or refresh)."""
    from conftest import CORPORA
    from vardecouple.data import load_corpus, make_splits
    from vardecouple.decouple import DecouplerConfig, OnlineDecoupler
    from vardecouple.model.load import tiny_random

    corpus = load_corpus(CORPORA / "tatoeba-deu-nds")
    splits = make_splits([corpus], standard="deu_Latn", varieties=["nds_Latn"],
                         directions="standard<->variety",
                         dev_rows=0, probe_rows=60, test_rows=0, seed=0)  # fmt: skip
    config = DecouplerConfig(
        estimator="pca", reference_estimator="mean-diff", layers=(1,), **options
    )
    dec = OnlineDecoupler(config, splits.probe, num_layers=4)  # tiny_random has 4 layers
    if build_only:
        return dec
    model, tok = tiny_random([t for row in corpus.rows[:500] for t in row.values()])
    assert len(model.model.layers) == 4
    log = dec.refresh(model, tok, step=0)
    return {"basis": dec.subspaces[1].basis, "overlap": log["overlap"], "fit_rows": len(dec.fit_on),
            "measure_rows": [s.text for s in dec.measure]}  # fmt: skip


def _largest_angle(a: torch.Tensor, b: torch.Tensor) -> float:
    from vardecouple.subspace import principal_angles

    return float(principal_angles(a, b).max())


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("dist")
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.start_processes(_worker, args=(str(folder),), nprocs=2, start_method="spawn")
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def test_every_process_holds_a_bit_identical_subspace(ranks) -> None:
    for name in (*STATISTICS, "variational"):
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    assert torch.equal(ranks[0]["decoupler"]["basis"], ranks[1]["decoupler"]["basis"])
    assert ranks[0]["decoupler"]["overlap"] == ranks[1]["decoupler"]["overlap"]


@pytest.mark.parametrize("name", STATISTICS)
def test_statistics_estimators_equal_a_fit_on_the_union(ranks, name: str) -> None:
    x, y = _data()
    single = make_estimator(name, 1).fit(x, y).basis
    angle = _largest_angle(ranks[0][name], single)
    assert angle <= ANGLE, (name, angle)


def test_variational_probe_agrees_within_the_seed_spread(ranks) -> None:
    x, y = _data()
    seeds = [make_estimator("variational", 1, **_options("variational", s)).fit(x, y).basis
             for s in range(4)]  # fmt: skip
    spread = max(_largest_angle(seeds[0], s) for s in seeds[1:])
    two = _largest_angle(ranks[0]["variational"], seeds[0])
    assert two <= spread, (two, spread)
    truth = torch.zeros(D, 1, dtype=torch.float64)
    truth[3] = 1.0
    assert _largest_angle(ranks[0]["variational"], truth) < 20  # it found the planted axis


def test_the_decoupler_shards_its_rows_and_matches_one_process(ranks) -> None:
    single = _refresh()
    assert (
        ranks[0]["decoupler"]["fit_rows"] + ranks[1]["decoupler"]["fit_rows"] == single["fit_rows"]
    )
    angle = _largest_angle(ranks[0]["decoupler"]["basis"], single["basis"])
    assert angle <= ANGLE, angle
    # the held-out rows are split too: each process measures its share, none twice
    held = [r["decoupler"]["measure_rows"] for r in ranks]
    assert held[0] and held[1] and not set(held[0]) & set(held[1])
    assert sorted(held[0] + held[1]) == sorted(single["measure_rows"])
    # ... and the summed numerators/denominators give the one-process overlaps on both
    assert ranks[0]["decoupler"]["overlap"] == ranks[1]["decoupler"]["overlap"]
    for variety, o in single["overlap"]["1"].items():
        for which in ("own", "reference"):
            assert ranks[0]["decoupler"]["overlap"]["1"][variety][which] == pytest.approx(
                o[which], abs=1e-6
            )


def test_a_decoupler_built_before_the_process_group_shards_when_asked(ranks) -> None:
    """train() calls distribute() on a decoupler built before the group came up: it then
    fits on this process's shard, like one built after (same rows, all-reduce on)."""
    early = [r["early"] for r in ranks]
    assert early[0]["before"] == early[1]["before"]  # unsharded: every row on both
    assert sorted(early[0]["after"] + early[1]["after"]) == sorted(early[0]["before"])
    assert not set(early[0]["after"]) & set(early[1]["after"])
    assert early[0]["shared"] == ["all_reduce", "num_classes"]
    assert [len(e["after"]) for e in early] == [r["decoupler"]["fit_rows"] for r in ranks]


def test_a_fit_row_draw_is_split_like_the_rows(ranks) -> None:
    """With ``fit_fraction`` the processes' draws are disjoint and together are the
    draw one process makes at the same step."""
    single = _refresh(build_only=True, fit_fraction=0.5)
    single.last_refresh = 0
    drawn = sorted(s.text for s in single.fit_rows(100))
    assert len(drawn) < len(single.fit_on)
    assert not set(ranks[0]["half"]) & set(ranks[1]["half"])
    assert sorted(ranks[0]["half"] + ranks[1]["half"]) == drawn
