"""The forward surrogate's two-beam prior against the Bloch engine, and its exact invariances."""

import math

import numpy as np
import pytest
import torch

from lacbed_refine.bloch import beam_pool, lacbed_from_ug
from lacbed_refine.conventions import relativistic_gamma
from lacbed_refine.potential import _VOLT_ANGSTROM2, normalise, projected_potential
from lacbed_refine import metrics
from lacbed_refine.surrogate._prior import PRIOR_VOLTAGE_V, two_beam_prior

A = 5.0  # Å
N = 64  # pixels


def _cosine_potential(h: int, k: int, v_g: float) -> torch.Tensor:
    """V(x, y) = 2 v_g cos 2π(h x + k y) [V] on the N×N cell grid, [row, col] = [y, x]."""
    y, x = torch.meshgrid(torch.arange(N) / N, torch.arange(N) / N, indexing="ij")
    return 2 * v_g * torch.cos(2 * math.pi * (h * x + k * y)).double()


@pytest.mark.parametrize("hk", [(2, 0), (1, 2)])
def test_prior_is_the_bloch_engine_for_one_weak_reflection_pair(hk):
    """A potential with only ±g: away from the zone centre the three-beam (0, g, −g) Bloch pattern
    is two-beam, so the prior must reproduce the engine's lines, widths and fringes."""
    h, k = hk
    v_g = 1.5  # V: weak, so the ±g lines are well apart compared with their widths
    pot = _cosine_potential(h, k, v_g)
    norm, lo, hi = normalise(pot)
    t_nm = 120.0
    prior = two_beam_prior(norm[None, None].float(), (hi - lo)[None].float(), torch.tensor([A]), torch.tensor([t_nm]),
                           size=N, n_reflections=2)[0, 0]

    u = relativistic_gamma(PRIOR_VOLTAGE_V) / math.pi * v_g / _VOLT_ANGSTROM2  # Å⁻² (real, centrosymmetric)
    pool = beam_pool(np.array([[0, 0, 0], [h, k, 0], [-h, -k, 0]]))
    g_norm = np.abs(pool.diffs[:, :2]).sum(axis=1)
    u_diffs = torch.tensor([u if n == abs(h) + abs(k) else 0.0 for n in g_norm], dtype=torch.complex128)
    bloch, _ = lacbed_from_ug(pool, u_diffs, A, torch.tensor([t_nm * 10.0]), voltage=PRIOR_VOLTAGE_V, size=N,
                              half_width=7.266 / A, dtype=torch.float64)
    r = metrics.pearson_r(prior.double(), bloch[0, 0])
    assert r > 0.99, r
    # the absolute intensity too, not just the shape
    assert torch.allclose(prior.double(), bloch[0, 0], atol=0.03)


def test_prior_is_blind_to_the_origin_and_turns_with_the_crystal():
    """|U_g| does not see the origin; a 90° turn of the potential turns the prior the same way."""
    atoms = {"frac": np.array([[0.1, 0.2, 0.0], [0.6, 0.3, 0.25]]), "Z": np.array([26, 8]),
             "occupancy": np.ones(2), "b_iso": np.full(2, 0.5)}
    pot, lo, hi = normalise(projected_potential(atoms, A, size=N, n_terms=300))
    args = ((hi - lo)[None].float(), torch.tensor([A]), torch.tensor([80.0]))
    base = two_beam_prior(pot[None, None].float(), *args)[0, 0]
    shifted = two_beam_prior(torch.roll(pot, (7, -19), dims=(0, 1))[None, None].float(), *args)[0, 0]
    turned = two_beam_prior(torch.rot90(pot, 1)[None, None].float(), *args)[0, 0]
    assert torch.allclose(base, shifted, atol=1e-5)
    assert torch.allclose(torch.rot90(base, 1), turned, atol=1e-5)
    assert not torch.allclose(base, turned, atol=1e-2)  # the structure has no 4-fold axis


def test_prior_gradient_reaches_the_potential():
    pot = torch.rand(1, 1, 32, 32, dtype=torch.float32, requires_grad=True)
    out = two_beam_prior(pot, torch.tensor([40.0]), torch.tensor([A]), torch.tensor([60.0]), n_reflections=8)
    out.sum().backward()
    assert torch.isfinite(pot.grad).all() and pot.grad.abs().sum() > 0


def test_a_symmetric_set_is_never_split_by_the_cut():
    """Rock salt at [001] (4mm): whatever the cut, the prior keeps the 4mm symmetry and ignores the origin."""
    frac = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    atoms = {"frac": np.vstack([frac, frac + [0.5, 0, 0]]) % 1, "Z": np.array([11] * 4 + [17] * 4),
             "occupancy": np.ones(8), "b_iso": np.full(8, 0.8)}
    pot, lo, hi = normalise(projected_potential(atoms, A, centring="F", size=N, n_terms=400))
    args = ((hi - lo)[None].float(), torch.tensor([A]), torch.tensor([90.0]))
    for m in (5, 6, 7, 9, 13):
        base = two_beam_prior(pot[None, None].float(), *args, n_reflections=m)[0, 0]
        for op in metrics.dihedral(base):
            assert torch.allclose(op, base, atol=1e-5), m
        shifted = two_beam_prior(torch.roll(pot, (3, 11), dims=(0, 1))[None, None].float(), *args, n_reflections=m)[0, 0]
        assert torch.allclose(base, shifted, atol=1e-5), m
        assert torch.isfinite(base).all()
