"""The [001] projected potential image of one unit cell (paper Eq. 1), differentiable in θ.

ρ(x, y) = (1/V) Σ_{(h k 0)} F(g) exp(+2πi (h x + k y)) is the crystal potential averaged along
[001], computed from the electron structure factors F [Å] of the ZOLZ reflections (the l = 0 terms
of a Fourier series are exactly the projection). The image spans exactly one cell: pixel
``[row, col]`` is at x = col/n, y = row/n, so the image tiles seamlessly and has period n pixels.
Peaks sit on the atoms (the sign of the exponent undoes F's exp(−2πi g·r)).

The raw image is in volts: V(r) = (h²/(2π m₀ e)) · ρ = 47.878 V·Å² · ρ, g = 0 term (the mean inner
potential) included. Networks see the per-image min–max normalisation to [0, 1]; the raw scale is
kept alongside.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lacbed_refine.conventions import ELECTRON_MASS, ELEMENTARY_CHARGE, PLANCK_H
from lacbed_refine.structure.reflections import zolz_beams
from lacbed_refine.physics.structure_factors import structure_factors

__all__ = ["projected_potential", "normalise", "potential_reflections", "PAPER_POTENTIAL_TERMS"]

#: Number of reflections in the paper's Fourier series (Eq. 1 is truncated after 2500 g).
PAPER_POTENTIAL_TERMS = 2500

# h²/(2π m₀ e) in V·Å²: converts Σf/V [Å⁻²] to volts.
VOLT_ANGSTROM2 = PLANCK_H**2 / (2 * math.pi * ELECTRON_MASS * ELEMENTARY_CHARGE) * 1e20


def potential_reflections(a: float, centring: str, size: int, n_terms: int = PAPER_POTENTIAL_TERMS) -> np.ndarray:
    """The (h k 0) reflections of the Fourier series: the ``n_terms`` lowest |g| (whole shells),
    cut at the image's Nyquist limit (|h|, |k| < size/2). Returns shape (G, 3) int."""
    hkl = zolz_beams(a, centring, n_beams=n_terms)
    keep = (np.abs(hkl[:, :2]) < size // 2).all(axis=1)
    return hkl[keep]


def projected_potential(
    atoms: dict,
    a: float,
    *,
    centring: str = "P",
    size: int = 128,
    n_terms: int = PAPER_POTENTIAL_TERMS,
    table: str = "kirkland",
) -> torch.Tensor:
    """[001] projected potential of one cell [V].

    Parameters
    ----------
    atoms : dict
        ``frac`` (N, 3), ``Z`` (N,), ``occupancy`` (N,), ``b_iso`` (N,) [Å²]; numpy arrays or
        torch tensors (differentiable).
    a : float
        Cubic cell edge [Å].
    centring : {"P", "F", "I"}
        Lattice centring; only centring-allowed reflections enter (the others vanish anyway).
    size : int
        Image edge n [pixels]; the cell spans the image.
    n_terms : int
        Reflections in the Fourier series (paper: 2500).
    table : {"kirkland", "peng"}

    Returns
    -------
    Tensor, shape (size, size), float64, ``[row, col] = [y, x]``.
    """
    if size < 4:
        raise ValueError(f"size must be at least 4 pixels, got {size!r}")
    frac = torch.as_tensor(atoms["frac"], dtype=torch.float64)
    occ = torch.as_tensor(atoms["occupancy"], dtype=torch.float64)
    b = torch.as_tensor(atoms["b_iso"], dtype=torch.float64)
    hkl = potential_reflections(a, centring, size, n_terms)
    f = structure_factors(torch.as_tensor(hkl), frac, atoms["Z"], occ, b, a, table=table)  # (G,)
    grid = torch.zeros((size, size), dtype=f.dtype)
    rows = torch.as_tensor(hkl[:, 1] % size)
    cols = torch.as_tensor(hkl[:, 0] % size)
    grid = grid.index_put((rows, cols), f, accumulate=True)
    # ifft2 carries exp(+2πi (k·row + h·col)/n) and a 1/n² that we undo.
    rho = torch.fft.ifft2(grid).real * (size * size) / a**3
    return rho * VOLT_ANGSTROM2


def normalise(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Min–max normalisation to [0, 1], as the networks see images.

    Returns
    -------
    normalised : Tensor, same shape
    minimum, maximum : Tensor (0-d)
        The raw scale, to undo the normalisation.
    """
    lo, hi = image.min(), image.max()
    span = torch.where(hi > lo, hi - lo, torch.ones_like(hi))
    return (image - lo) / span, lo, hi
