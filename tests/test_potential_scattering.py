"""Electron form factors (two independent tables) and the projected potential image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lacbed_refine.io.cif import read_cif
from lacbed_refine.physics.potential import normalise, projected_potential
from lacbed_refine.physics.form_factors import form_factor_parameters, form_factors

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "SrTiO3.cif"


@pytest.mark.parametrize("z", [1, 8, 14, 26, 38, 56, 79, 92])
def test_kirkland_and_peng_agree(z):
    """Kirkland's and Peng's fits are independent parametrisations of the same Hartree–Fock form
    factors: they agree to ~1–2 % over 0 ≤ q ≤ 3 Å⁻¹ (Peng's fit is valid to q = 4 Å⁻¹)."""
    q2 = torch.linspace(0, 3, 31, dtype=torch.float64) ** 2
    k = form_factors(q2, torch.as_tensor(form_factor_parameters([z], "kirkland")), "kirkland")[0]
    p = form_factors(q2, torch.as_tensor(form_factor_parameters([z], "peng")), "peng")[0]
    np.testing.assert_allclose(p.numpy(), k.numpy(), rtol=0.03, atol=0.005)


def test_unknown_table_and_element_are_errors():
    with pytest.raises(ValueError, match="form-factor table"):
        form_factor_parameters([8], "doyle")
    with pytest.raises(ValueError, match="atomic number 200"):
        form_factor_parameters([200], "kirkland")


def test_potential_peaks_on_atom_columns_and_tiles():
    c = read_cif(EXAMPLE)  # SrTiO3: Sr column at (0,0), Ti+O at (½,½), O at (0,½) and (½,0)
    rho = projected_potential(c.atoms(), c.a, size=64).numpy()
    assert np.unravel_index(rho.argmax(), rho.shape) == (0, 0)
    assert rho[32, 32] > rho[0, 32] > rho[16, 16]
    np.testing.assert_allclose(rho[0, 32], rho[32, 0], rtol=1e-10)  # 4-fold
    # mean over the cell is the mean inner potential, ~15-25 V for oxides
    assert 10 < rho.mean() < 30


def test_potential_period_is_the_image():
    """Moving every atom by one pixel (1/n of the cell) rolls the image by exactly one pixel."""
    c = read_cif(EXAMPLE)
    at = c.atoms()
    n = 32
    rho = projected_potential(at, c.a, size=n).numpy()
    moved = at.replace(frac=at.frac + np.array([1.0 / n, 2.0 / n, 0.3]))
    rho2 = projected_potential(moved, c.a, size=n).numpy()
    np.testing.assert_allclose(rho2, np.roll(rho, shift=(2, 1), axis=(0, 1)), atol=1e-9)


def test_potential_is_differentiable_and_normalised():
    c = read_cif(EXAMPLE)
    at = c.atoms()
    frac = torch.as_tensor(at.frac).requires_grad_()

    def f(frac):
        return projected_potential(at.replace(frac=frac), c.a, size=8, n_terms=60)

    assert torch.autograd.gradcheck(f, (frac,))
    norm, lo, hi = normalise(f(frac.detach()))
    assert float(norm.min()) == 0.0 and float(norm.max()) == 1.0 and hi > lo
