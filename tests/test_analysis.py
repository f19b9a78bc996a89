"""vardecouple.analysis: geometry against direct computations, codelengths on planted data."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

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
from vardecouple.probes.synthetic import planted_varieties
from vardecouple.subspace import Subspace

SEPARATIONS = (0.0, 1.0, 2.0, 4.0)


def _random(n: int, d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d))


def _orthogonal(d: int, seed: int) -> np.ndarray:
    return np.linalg.qr(_random(d, d, seed))[0]


# ------------------------------------------------------------------------ geometry
def test_mean_pool_with_padding_equals_per_row_means() -> None:
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 6, 5, generator=g)
    lengths = [6, 2, 4]
    mask = torch.zeros(3, 6, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        hidden[b, n:] = 1e6  # padding must not leak in
    expected = torch.stack([hidden[b, :n].mean(0) for b, n in enumerate(lengths)])
    for m in (mask, mask.bool(), mask.float()):
        pooled = mean_pool(hidden, m)
        assert pooled.shape == (3, 5) and pooled.dtype == hidden.dtype
        torch.testing.assert_close(pooled, expected)
    mask[1] = 0
    with pytest.raises(ValueError, match="no unmasked token"):
        mean_pool(hidden, mask)


def test_l2_and_cosine_distances_match_a_loop() -> None:
    x, y = _random(7, 4, 0), _random(7, 4, 1)
    l2 = np.mean([np.linalg.norm(a - b) for a, b in zip(x, y, strict=True)])
    cos = np.mean(
        [1 - a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(x, y, strict=True)]
    )
    assert l2_distance(x, y) == pytest.approx(l2, rel=1e-12)
    assert cosine_distance(torch.from_numpy(x).float(), y) == pytest.approx(cos, rel=1e-6)
    assert l2_distance(x, x) == 0.0 and cosine_distance(x, 2.5 * x) == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="differ in shape"):
        l2_distance(x, y[:-1])


def _cka_by_kernel_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Kornblith et al. (2019), literally: HSIC with linear kernels and H = I − 11ᵀ/n."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n

    def hsic(k: np.ndarray, l: np.ndarray) -> float:
        return float(np.trace(k @ h @ l @ h)) / (n - 1) ** 2

    k, l = x @ x.T, y @ y.T
    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize(("n", "dx", "dy"), [(40, 5, 3), (12, 30, 25), (20, 20, 20)])
def test_linear_cka_matches_kernel_hsic(n: int, dx: int, dy: int) -> None:
    # n > d uses the feature-space formula, n < d the Gram matrices: both must agree
    x = _random(n, dx, 0) + 3.0  # an offset: centring matters
    y = x[:, :1] @ _random(1, dy, 1) + 0.7 * _random(n, dy, 2)
    assert linear_cka(x, y) == pytest.approx(_cka_by_kernel_hsic(x, y), rel=1e-10)
    assert linear_cka(y, x) == pytest.approx(linear_cka(x, y), rel=1e-12)


def test_linear_cka_invariances() -> None:
    x, y = _random(30, 6, 0), _random(30, 6, 1) + 0.5 * _random(30, 6, 0)
    q = _orthogonal(6, 2)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 4.2 * x @ q + 7.0) == pytest.approx(1.0, abs=1e-12)
    base = linear_cka(x, y)
    assert 0 < base < 1
    assert linear_cka(x @ q, -3.0 * y @ _orthogonal(6, 3)) == pytest.approx(base, rel=1e-10)
    with pytest.raises(ValueError, match="zero variance"):
        linear_cka(x, np.ones((30, 2)))


@pytest.mark.parametrize(("rank", "seed"), [(1, 0), (3, 1), (5, 2)])
def test_subspace_angles_match_scipy(rank: int, seed: int) -> None:
    x, y = _random(50, 8, seed), _random(60, 8, seed + 10) @ np.diag(np.arange(1, 9.0))

    def pca(m: np.ndarray) -> np.ndarray:
        return np.linalg.svd(m - m.mean(0), full_matrices=False)[2][:rank].T

    expected = np.sort(np.degrees(scipy.linalg.subspace_angles(pca(x), pca(y))))
    got = subspace_angles(x, y, rank)
    np.testing.assert_allclose(got.angles, expected, atol=1e-5)  # degrees
    assert got.mean == pytest.approx(expected.mean(), abs=1e-6)
    assert got.largest == pytest.approx(expected.max(), abs=1e-6)
    same = subspace_angles(x, -3.0 * x[::-1] + 2.0, rank)
    assert same.largest < 1e-5  # scaling, shifting, reordering rows: the same subspace
    with pytest.raises(ValueError, match="rank"):
        subspace_angles(x, y, 9)


def test_overlap_is_the_ratio_of_sums() -> None:
    y = _random(25, 6, 0) * np.arange(1, 7.0)
    u = np.linalg.qr(_random(6, 2, 1))[0]
    c = _random(1, 6, 2)[0]
    direct = np.square((y - c) @ u).sum() / np.square(y - c).sum()
    assert overlap(y, u, c) == pytest.approx(direct, rel=1e-10)
    sub = Subspace(torch.from_numpy(u), torch.from_numpy(c))
    assert overlap(y, sub) == pytest.approx(direct, rel=1e-10)
    assert overlap(y, sub) == pytest.approx(sub.overlap(torch.from_numpy(y)), rel=1e-10)
    assert overlap(y, sub, np.zeros(6)) == pytest.approx(overlap(y, u), rel=1e-12)
    full = pca_subspace(y, 6)  # the whole space around the mean: everything inside
    assert overlap(y, full) == pytest.approx(1.0, abs=1e-12)
    top = pca_subspace(y, 2)
    rest = Subspace(pca_subspace(y, 6).basis[:, 2:], top.center)
    assert overlap(y, top) + overlap(y, rest) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------- codelengths
def _planted(separation: float, n: int = 1500) -> tuple[torch.Tensor, torch.Tensor]:
    p = planted_varieties(n, 16, 2, n_varieties=2, separation=separation, seed=0)
    return p.states, p.labels


def _random_labels(n: int, probs: list[float], seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    return g.standard_normal((n, 16)), g.choice(len(probs), size=n, p=probs)


def test_online_codelength_falls_as_separability_rises() -> None:
    codes = [online_codelength(*_planted(s), seed=0) for s in SEPARATIONS]
    bits = [c.codelength_bits for c in codes]
    assert all(b > a for a, b in zip(bits[1:], bits, strict=False)), bits
    comp = [c.compression for c in codes]  # measured: 0.994, 1.119, 1.788, 7.105
    assert 0.97 < comp[0] < 1.01
    assert comp[2] > 1.5 and comp[3] > 5.0
    for c in codes:
        assert c.prior_bits == pytest.approx(1500 * math.log2(3), rel=1e-9)  # balanced
        assert c.uniform_bits == pytest.approx(1500 * math.log2(3), rel=1e-12)
        assert min(c.bits_by_c) <= c.codelength_bits <= min(c.bits_by_c) + math.log2(len(c.cs))


@pytest.mark.parametrize(
    ("probs", "seed"), [([0.5, 0.5], 0), ([0.5, 0.5], 1), ([1 / 7, 6 / 7], 0), ([1 / 7, 6 / 7], 1)]
)
def test_online_compression_is_about_one_for_random_labels(probs: list[float], seed: int) -> None:
    x, y = _random_labels(1500, probs, seed)
    code = online_codelength(x, y, seed=seed)
    p = np.bincount(y) / len(y)
    assert code.prior_bits == pytest.approx(-len(y) * (p * np.log2(p)).sum(), rel=1e-12)
    assert 0.97 < code.compression < 1.01  # measured 0.988-0.997


def test_a_single_probe_overfits_random_labels_in_high_dimension() -> None:
    """Why the code mixes regularisation strengths: one fixed C pays for learning noise."""
    g = np.random.default_rng(0)
    x, y = g.standard_normal((600, 200)), g.integers(0, 2, 600)
    single = online_codelength(x, y, cs=(1.0,))
    assert single.compression < 0.6
    assert single.codelength_bits == pytest.approx(single.bits_by_c[0], rel=1e-12)
    assert 0.97 < online_codelength(x, y).compression < 1.01


def test_online_blocks_cover_the_data_and_survive_unseen_classes() -> None:
    x, y = _random_labels(1000, [0.5, 0.5], 3)
    y[:3] = 2  # a rare third class: absent from the early training sets
    code = online_codelength(x, y, seed=0)
    assert code.num_classes == 3 and code.num_examples == 1000
    assert [b.start for b in code.blocks] == [0] + [b.end for b in code.blocks[:-1]]
    assert code.blocks[-1].end == 1000 and code.blocks[1].start == 1  # round(0.001 * 1000)
    assert code.blocks[0].bits == pytest.approx(math.log2(3))
    assert sum(b.bits for b in code.blocks) == pytest.approx(code.codelength_bits, rel=1e-9)
    assert all(math.isfinite(b.bits) and b.bits >= 0 for b in code.blocks)
    tiny = online_codelength(x[:40], y[:40] % 2, seed=0)  # one-class first training sets
    assert math.isfinite(tiny.codelength_bits) and len(tiny.blocks) < 11


def test_online_codelength_is_deterministic_for_a_seed() -> None:
    x, y = _planted(1.0, 600)
    assert online_codelength(x, y, seed=5) == online_codelength(x.numpy(), y.numpy(), seed=5)
    assert online_codelength(x, y, seed=5) != online_codelength(x, y, seed=6)


def test_online_codelength_rejects_bad_input() -> None:
    x, y = _random_labels(100, [0.5, 0.5], 0)
    with pytest.raises(ValueError, match="2 distinct"):
        online_codelength(x, np.zeros(100, dtype=int))
    with pytest.raises(ValueError, match="increasing"):
        online_codelength(x, y, fractions=(0.5, 0.25, 1.0))
    with pytest.raises(ValueError, match=r"1\.0"):
        online_codelength(x, y, fractions=(0.5, 0.9))
    with pytest.raises(ValueError, match="integers"):
        online_codelength(x, y.astype(float))
    with pytest.raises(ValueError, match="length"):
        online_codelength(x, y[:-1])


def test_variational_codelength_falls_as_separability_rises() -> None:
    codes = [variational_codelength(*_planted(s), seed=0) for s in SEPARATIONS]
    bits = [c.codelength_bits for c in codes]
    assert all(b > a for a, b in zip(bits[1:], bits, strict=False)), bits
    for c in codes:
        assert c.codelength_bits == pytest.approx(c.data_bits + c.model_bits, rel=1e-12)
        assert c.compression == pytest.approx(c.prior_bits / c.codelength_bits, rel=1e-12)
    # measured: 0.946, 1.048, 1.603, 5.204; below 1 without structure: the model cost
    assert 0.85 < codes[0].compression < 1.0 and codes[3].compression > 3.0
    again = variational_codelength(*_planted(SEPARATIONS[1]), seed=0)
    assert again == codes[1]


@pytest.mark.parametrize("probs", [[0.5, 0.5], [1 / 7, 6 / 7]])
def test_variational_codelength_of_random_labels(probs: list[float]) -> None:
    x, y = _random_labels(1500, probs, 0)
    code = variational_codelength(x, y + 3, seed=0)  # any integer label values
    assert code.num_classes == 2
    assert code.data_bits == pytest.approx(code.prior_bits, rel=0.02)  # learns only frequencies
    assert 0.85 < code.compression < 1.0  # measured 0.945 and 0.915: the KL term


def test_variational_codelength_when_every_gate_is_pruned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The subspace solve fails when nothing survives; the code is still defined."""
    from vardecouple.probes.variational import VariationalProbeEstimator

    def pruned(self: VariationalProbeEstimator) -> None:
        raise ValueError("variational: every gate was pruned; the probe found no direction")

    x, y = _random_labels(300, [0.5, 0.5], 0)
    expected = variational_codelength(x, y, seed=0, fit_epochs=5)
    monkeypatch.setattr(VariationalProbeEstimator, "_solve", pruned)
    assert variational_codelength(x, y, seed=0, fit_epochs=5) == expected
    with pytest.raises(ValueError, match="labels"):
        variational_codelength(x, y[:-1])
