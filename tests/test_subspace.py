"""Subspace: construction checks and every method against a direct computation."""

import numpy as np
import pytest
import scipy.linalg
import torch

from vardecouple.subspace import Subspace, principal_angles


def _basis(d: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]


def test_properties_and_default_center() -> None:
    s = Subspace(_basis(10, 3).float())
    assert (s.dim, s.rank) == (10, 3)
    assert s.center is not None and torch.equal(s.center, torch.zeros(10))


@pytest.mark.parametrize(
    ("basis", "center", "match"),
    [
        (torch.zeros(5), None, "2-D"),
        (torch.zeros(5, 0), None, "1 <= rank <= dim"),
        (torch.eye(3, 4), None, "1 <= rank <= dim"),
        (torch.ones(4, 2), None, "orthonormal"),
        (torch.full((3, 1), float("nan")), None, "finite"),
        (torch.eye(4)[:, :2], torch.zeros(3), r"shape \(4,\)"),
        (torch.eye(4)[:, :2], torch.tensor([0.0, float("inf"), 0, 0]), "finite"),
        (torch.eye(4, dtype=torch.long)[:, :2], None, "float"),
    ],
)
def test_construction_rejects_bad_input(basis, center, match) -> None:
    with pytest.raises(ValueError, match=match):
        Subspace(basis, center)


def test_project_remove_overlap_match_direct_computation() -> None:
    d, k = 12, 3
    u = _basis(d, k)
    c = torch.randn(d, dtype=torch.float64)
    s = Subspace(u, c)
    h = torch.randn(4, 5, d, dtype=torch.float64)
    p = u @ u.T
    direct = (h - c) @ p
    torch.testing.assert_close(s.project(h), direct)
    torch.testing.assert_close(s.remove(h, alpha=0.3), h - 0.3 * direct)
    torch.testing.assert_close(s(h), h - direct)
    torch.testing.assert_close(s.remove(h, alpha=0.0), h)
    mask = torch.rand(4, 5) > 0.4
    rows = (h - c)[mask]
    expected = (rows @ p).square().sum() / rows.square().sum()
    assert s.overlap(h, mask) == pytest.approx(expected.item(), rel=1e-10)
    assert s.overlap(h) == pytest.approx(
        ((h - c) @ p).square().sum().item() / (h - c).square().sum().item()
    )


def test_overlap_extremes_and_low_precision_inputs() -> None:
    u = _basis(16, 2).float()
    s = Subspace(u)
    inside = torch.randn(50, 2) @ u.T
    outside = torch.randn(50, 16)
    outside = outside - outside @ u @ u.T
    assert s.overlap(inside) == pytest.approx(1.0, abs=1e-5)
    assert s.overlap(outside) == pytest.approx(0.0, abs=1e-5)
    assert s.overlap(inside.to(torch.bfloat16)) == pytest.approx(1.0, abs=2e-2)
    half = s.remove(inside.half())
    assert half.dtype == torch.float16 and half.abs().max() < 2e-2
    assert s.overlap(torch.zeros(3, 16)) == 0.0
    with pytest.raises(ValueError, match=r"mask: expected shape \(50,\)"):
        s.overlap(inside, torch.ones(49, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(\.\.\., 16\)"):
        s.project(torch.zeros(3, 15))


@pytest.mark.parametrize(("k", "j"), [(1, 1), (3, 2), (2, 5), (6, 6)])
def test_principal_angles_match_scipy(k: int, j: int) -> None:
    a, b = _basis(20, k, 1), _basis(20, j, 2)
    ours = Subspace(a).principal_angles(b).numpy()
    ref = np.sort(np.rad2deg(scipy.linalg.subspace_angles(a.numpy(), b.numpy())))
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_principal_angles_small_and_exact() -> None:
    u = _basis(30, 2)
    tiny = u + 1e-7 * _basis(30, 2, 5)
    ref = np.sort(np.rad2deg(scipy.linalg.subspace_angles(u.numpy(), tiny.numpy())))
    np.testing.assert_allclose(principal_angles(u, tiny).numpy(), ref, atol=1e-9)
    e = torch.eye(3, dtype=torch.float64)
    plane = torch.stack([e[0], (e[1] + e[2]) / 2**0.5], 1)
    np.testing.assert_allclose(principal_angles(e[:, :2], plane).numpy(), [0.0, 45.0], atol=1e-9)


def test_random_is_orthonormal_seeded_and_far_from_fixed_subspace() -> None:
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    r1, r2 = Subspace.random(200, 4, generator=g1), Subspace.random(200, 4, generator=g2)
    torch.testing.assert_close(r1.basis, r2.basis)
    torch.testing.assert_close(r1.basis.T @ r1.basis, torch.eye(4), atol=1e-5, rtol=0)
    assert r1.principal_angles(_basis(200, 4)).min() > 60
    with pytest.raises(ValueError, match="rank"):
        Subspace.random(3, 4)


def test_from_vectors_orthonormalises_and_drops_dependent_columns() -> None:
    v = torch.randn(10, 2, dtype=torch.float64)
    s = Subspace.from_vectors(torch.cat([v, v.sum(1, keepdim=True)], 1))
    assert s.rank == 2
    assert s.principal_angles(v).max() < 1e-5
    with pytest.raises(ValueError, match="non-zero"):
        Subspace.from_vectors(torch.zeros(4, 2))


def test_state_dict_round_trip() -> None:
    s = Subspace(_basis(8, 2), torch.arange(8.0, dtype=torch.float64))
    t = Subspace.from_state_dict(s.state_dict())
    torch.testing.assert_close(t.basis, s.basis)
    torch.testing.assert_close(t.center, s.center)
