"""The forward surrogate's two-beam prior against the Bloch engine, and its exact invariances."""

import math

import numpy as np
import pytest
import torch

from lacbed_refine.structure import Atoms
from lacbed_refine.engine.bloch import beam_pool, lacbed_from_ug
from lacbed_refine.conventions import relativistic_gamma
from lacbed_refine.physics.potential import VOLT_ANGSTROM2, normalise, projected_potential
from lacbed_refine import metrics
from lacbed_refine.surrogate._prior import PRIOR_VOLTAGE_V, two_beam_prior

A = 5.0  # Å
N = 64  # pixels


def _orbit(h: int, k: int) -> list[tuple[int, int]]:
    """The reflections (±h, ±k): a cubic [001] projection always has 2mm."""
    return sorted({(sh * h, sk * k) for sh in (1, -1) for sk in (1, -1)})


def _cosine_potential(h: int, k: int, v_g: float) -> torch.Tensor:
    """V = Σ v_g exp(2πi g·r) over g in the 2mm orbit of (h, k) [V] on the N×N cell grid,
    [row, col] = [y, x]."""
    y, x = torch.meshgrid(torch.arange(N) / N, torch.arange(N) / N, indexing="ij")
    return sum(v_g * torch.cos(2 * math.pi * (gh * x + gk * y)) for gh, gk in _orbit(h, k)).double()


@pytest.mark.parametrize("hk", [(2, 0), (1, 2)])
def test_prior_is_the_bloch_engine_for_weak_reflections(hk):
    """A potential with only the (±h, ±k) orbit: its lines are well apart, so away from crossings
    the many-beam Bloch pattern is a product of two-beam dips, which is what the prior draws."""
    h, k = hk
    v_g = 1.5  # V: weak, so the lines are narrow compared with their spacing
    pot = _cosine_potential(h, k, v_g)
    norm, lo, hi = normalise(pot)
    t_nm = 120.0
    orbit = _orbit(h, k)
    prior = two_beam_prior(norm[None, None].float(), (hi - lo)[None].float(), torch.tensor([A]), torch.tensor([t_nm]),
                           size=N, n_reflections=len(orbit))[0, 0]

    u = relativistic_gamma(PRIOR_VOLTAGE_V) / math.pi * v_g / VOLT_ANGSTROM2  # Å⁻² (real, centrosymmetric)
    pool = beam_pool(np.array([[0, 0, 0]] + [[gh, gk, 0] for gh, gk in orbit]))
    u_diffs = torch.tensor([u if (int(d[0]), int(d[1])) in orbit else 0.0 for d in pool.diffs], dtype=torch.complex128)
    bloch, _ = lacbed_from_ug(pool, u_diffs, A, torch.tensor([t_nm * 10.0]), voltage=PRIOR_VOLTAGE_V, size=N,
                              half_width=7.266 / A, dtype=torch.float64)
    r = metrics.pearson_r(prior.double(), bloch[0, 0])
    assert r > 0.99, r
    # the absolute intensity too, not just the shape, except where lines cross (many-beam there)
    err = (prior.double() - bloch[0, 0]).abs()
    assert (err < 0.02).double().mean() > 0.95 and err.median() < 1e-3


def test_prior_is_blind_to_the_origin_and_turns_with_the_crystal():
    """|U_g| does not see the origin; a 90° turn of the potential turns the prior the same way."""
    atoms = Atoms(frac=np.array([[0.1, 0.2, 0.0], [0.6, 0.3, 0.25]]), Z=np.array([26, 8]),
                  occupancy=np.ones(2), b_iso=np.full(2, 0.5))
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
    atoms = Atoms(frac=np.vstack([frac, frac + [0.5, 0, 0]]) % 1, Z=np.array([11] * 4 + [17] * 4),
                  occupancy=np.ones(8), b_iso=np.full(8, 0.8))
    pot, lo, hi = normalise(projected_potential(atoms, A, centring="F", size=N, n_terms=400))
    args = ((hi - lo)[None].float(), torch.tensor([A]), torch.tensor([90.0]))
    for m in (5, 6, 7, 9, 13):
        base = two_beam_prior(pot[None, None].float(), *args, n_reflections=m)[0, 0]
        for op in metrics.dihedral(base):
            assert torch.allclose(op, base, atol=1e-5), m
        shifted = two_beam_prior(torch.roll(pot, (3, 11), dims=(0, 1))[None, None].float(), *args, n_reflections=m)[0, 0]
        assert torch.allclose(base, shifted, atol=1e-5), m
        assert torch.isfinite(base).all()
