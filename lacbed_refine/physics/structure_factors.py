"""Structure factors F(g) [Å] and Bloch-wave potential coefficients U_g [Å⁻²], differentiable in θ.

``U_g = (γ / (π V)) Σ_j f_j(q) occ_j exp(-B_j q²/4) exp(-2πi (h x_j + k y_j + l z_j))``

with q = |g| = |(h, k, l)|/a in 1/d units [Å⁻¹], f the electron form factor [Å] (:mod:`.scattering`),
B [Å²], V = a³ [Å³], γ the Lorentz factor. This is FELIX's U_g (felix-spec §3.3), and equals
``2 m γ e V_g / h²`` with the Fourier coefficient V_g [V] of the crystal potential.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lacbed_refine.conventions import relativistic_gamma
from lacbed_refine.physics.form_factors import form_factor_parameters, form_factors

__all__ = ["structure_factors", "ug_coefficients", "ug_for_cell", "phase_sum"]


def phase_sum(hkl: torch.Tensor, frac: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ_j w_jg exp(−2πi g·r_j): the structure-factor sum with per-atom, per-reflection weights
    (form factor × occupancy × Debye–Waller) ``weights`` (N, G), for ``hkl`` (G, 3) and fractional
    positions ``frac`` (N, 3). Returns complex (G,)."""
    phase = -2.0 * math.pi * (frac @ hkl.to(frac.dtype).T)  # (N, G)
    return torch.complex(weights * torch.cos(phase), weights * torch.sin(phase)).sum(0)


def structure_factors(
    hkl: torch.Tensor,
    frac: torch.Tensor,
    atomic_numbers,
    occupancy: torch.Tensor,
    b_iso: torch.Tensor,
    a: float | torch.Tensor,
    *,
    table: str = "kirkland",
    chunk: int = 4096,
) -> torch.Tensor:
    """Electron structure factors F(g) = Σ_j f_j occ_j DW_j exp(-2πi g·r_j) [Å].

    Parameters
    ----------
    hkl : Tensor, shape (G, 3)
        Miller indices (integers, any real dtype or int).
    frac : Tensor, shape (N, 3)
        Fractional atom positions (the full cell).
    atomic_numbers : sequence of int or Tensor, shape (N,)
    occupancy : Tensor, shape (N,)
    b_iso : Tensor, shape (N,)
        Isotropic Debye–Waller factors [Å²].
    a : float or Tensor
        Cubic cell edge [Å].
    table : {"kirkland", "peng"}
        Electron form-factor table.
    chunk : int
        Reflections per block, to bound memory for big cells.

    Returns
    -------
    Tensor, shape (G,), complex (dtype follows ``frac``)
    """
    hkl_t = torch.as_tensor(hkl, device=frac.device).to(frac.dtype)
    q2 = (hkl_t * hkl_t).sum(-1) / (a * a)  # (G,) [Å⁻²]
    return _structure_factors(hkl_t, q2, frac, atomic_numbers, occupancy, b_iso, table=table, chunk=chunk)


def _structure_factors(hkl, q2, frac, atomic_numbers, occupancy, b_iso, *, table, chunk):
    """F(g) for reflections ``hkl`` (G, 3) with |g|² = ``q2`` (G,) [Å⁻², 1/d units]."""
    dtype = frac.dtype
    device = frac.device
    z = np.asarray(torch.as_tensor(atomic_numbers).cpu(), dtype=np.int64)
    elements, inverse = np.unique(z, return_inverse=True)
    params = torch.as_tensor(form_factor_parameters(elements, table), dtype=dtype, device=device)
    inverse = torch.as_tensor(inverse, device=device)
    hkl = torch.as_tensor(hkl, device=device).to(dtype)
    out = []
    for start in range(0, hkl.shape[0], chunk):
        h = hkl[start : start + chunk]
        q2c = q2[start : start + chunk]
        f_el = form_factors(q2c, params, table)  # (E, G)
        f_at = f_el[inverse]  # (N, G)
        dw = torch.exp(-b_iso[:, None] * q2c[None, :] / 4.0)  # exp(-B s²), s = q/2
        w = f_at * dw * occupancy[:, None]
        out.append(phase_sum(h, frac, w))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.complex128, device=device)


def ug_coefficients(
    hkl: torch.Tensor,
    frac: torch.Tensor,
    atomic_numbers,
    occupancy: torch.Tensor,
    b_iso: torch.Tensor,
    a: float | torch.Tensor,
    *,
    voltage: float,
    table: str = "kirkland",
) -> torch.Tensor:
    """Bloch-wave potential coefficients U_g = γ F(g) / (π V) [Å⁻²].

    Parameters are those of :func:`structure_factors`, plus ``voltage`` [V]. Returns a complex
    Tensor of shape (G,).
    """
    gamma = relativistic_gamma(voltage)
    f = structure_factors(hkl, frac, atomic_numbers, occupancy, b_iso, a, table=table)
    return f * (gamma / (math.pi * a**3))


def ug_for_cell(
    hkl,
    frac: torch.Tensor,
    atomic_numbers,
    occupancy: torch.Tensor,
    b_iso: torch.Tensor,
    cell,
    *,
    voltage: float,
    table: str = "kirkland",
) -> torch.Tensor:
    """U_g = γ F(g) / (π V) [Å⁻²] for a cell of any crystal system.

    Parameters
    ----------
    hkl : array, shape (G, 3), int
        Miller indices.
    frac, atomic_numbers, occupancy, b_iso
        As :func:`structure_factors` (the full cell; differentiable).
    cell : lacbed_refine.structure.Cell
        Its metric gives |g| and its volume V [Å³].
    voltage : float
        [V].

    Returns
    -------
    Tensor, complex, shape (G,)
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    q2 = torch.as_tensor(cell.g_length(hkl) ** 2, dtype=frac.dtype, device=frac.device)
    h = torch.as_tensor(hkl, device=frac.device).to(frac.dtype)
    f = _structure_factors(h, q2, frac, atomic_numbers, occupancy, b_iso, table=table, chunk=4096)
    return f * (relativistic_gamma(voltage) / (math.pi * cell.volume))
