"""projection_penalty: values against direct computations, gradients, dtypes, masks."""

import pytest
import torch

from vardecouple.decouple import projection_penalty
from vardecouple.subspace import Subspace


def _subspace(d: int = 12, k: int = 3, seed: int = 0, center: bool = True) -> Subspace:
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    c = torch.randn(d, generator=g, dtype=torch.float64) if center else None
    return Subspace(u, c)


def test_norm_form_equals_direct_computation() -> None:
    s = _subspace()
    h = torch.randn(2, 5, 12, dtype=torch.float64)
    mask = torch.rand(2, 5) > 0.3
    direct = (h[mask] @ s.basis).norm(dim=-1).mean()  # uncentred, as the paper writes it
    torch.testing.assert_close(projection_penalty(h, mask, s, "norm"), direct)
    torch.testing.assert_close(
        projection_penalty(h, None, s, "norm"), (h @ s.basis).norm(dim=-1).mean()
    )


def test_squared_and_fraction_equal_direct_computation() -> None:
    s = _subspace()
    h = torch.randn(3, 4, 12, dtype=torch.float64)
    mask = torch.ones(3, 4, dtype=torch.bool)
    centred = h - s.center
    inside = (centred @ s.basis).square().sum(-1)
    torch.testing.assert_close(projection_penalty(h, mask, s, "squared"), inside.mean())
    frac = inside / (centred.square().sum(-1) + 1e-6)
    torch.testing.assert_close(projection_penalty(h, mask, s, "fraction"), frac.mean())


def test_fraction_is_one_inside_and_zero_orthogonal() -> None:
    s = _subspace(16, 2)
    inside = s.center + torch.randn(50, 2, dtype=torch.float64) @ s.basis.T
    outside = torch.randn(50, 16, dtype=torch.float64)
    outside = s.center + outside - outside @ s.basis @ s.basis.T
    assert projection_penalty(inside, None, s, "fraction").item() == pytest.approx(1.0, abs=1e-4)
    assert projection_penalty(outside, None, s, "fraction").item() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("form", ["norm", "squared", "fraction"])
def test_gradcheck_in_float64(form: str) -> None:
    s = _subspace(6, 2)
    h = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]], dtype=torch.bool)
    assert torch.autograd.gradcheck(lambda x: projection_penalty(x, mask, s, form), (h,))


@pytest.mark.parametrize("form", ["norm", "squared", "fraction"])
def test_no_gradient_reaches_the_basis(form: str) -> None:
    u = torch.linalg.qr(torch.randn(8, 2, dtype=torch.float64))[0].requires_grad_(True)
    c = torch.zeros(8, dtype=torch.float64, requires_grad=True)
    s = Subspace(u, c)
    assert not s.basis.requires_grad and not s.center.requires_grad
    h = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    projection_penalty(h, None, s, form).backward()
    assert u.grad is None and c.grad is None
    assert h.grad is not None and h.grad.abs().sum() > 0


def test_empty_mask_gives_zero_with_a_graph() -> None:
    s = _subspace()
    h = torch.randn(2, 3, 12, requires_grad=True)
    out = projection_penalty(h, torch.zeros(2, 3, dtype=torch.bool), s, "fraction")
    assert out.item() == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(h.grad, torch.zeros_like(h))


def test_low_precision_inputs_are_computed_in_float32() -> None:
    s = _subspace(16, 2, center=False)
    h = torch.randn(2, 7, 16)
    ref = projection_penalty(h, None, s, "norm")
    for dtype in (torch.bfloat16, torch.float16):
        hh = h.to(dtype).requires_grad_(True)
        out = projection_penalty(hh, None, s, "norm")
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(ref.item(), rel=1e-2)
        out.backward()
        assert hh.grad.dtype == dtype


def test_masked_tokens_do_not_matter_even_if_huge() -> None:
    s = _subspace()
    h = torch.randn(1, 4, 12, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False]])
    h2 = h.clone()
    h2[0, 2:] = 1e6
    torch.testing.assert_close(projection_penalty(h, mask, s), projection_penalty(h2, mask, s))


def test_bad_input() -> None:
    s = _subspace()
    with pytest.raises(ValueError, match="form"):
        projection_penalty(torch.randn(2, 12), None, s, "cube")
    with pytest.raises(ValueError, match=r"\(\.\.\., 12\)"):
        projection_penalty(torch.randn(2, 11), None, s)
    with pytest.raises(ValueError, match=r"mask: expected shape \(2, 3\)"):
        projection_penalty(torch.randn(2, 3, 12), torch.ones(3, 2, dtype=torch.bool), s)
    with pytest.raises(ValueError, match="float"):
        projection_penalty(torch.ones(2, 12, dtype=torch.long), None, s)
