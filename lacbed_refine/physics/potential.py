"""The [001] projected potential image of one unit cell (paper Eq. 1), differentiable in θ.

ρ(x, y) = (1/V) Σ_{(h k 0)} F(g) exp(+2πi (h x + k y)) is the crystal potential averaged along
[001], computed from the electron structure factors F [Å] of the ZOLZ reflections (the l = 0 terms
of a Fourier series are exactly the projection). The image spans exactly one cell: pixel
``[row, col]`` is at x = col/n, y = row/n, so the image tiles seamlessly and has period n pixels.
Peaks sit on the atoms (the sign of the exponent undoes F's exp(−2πi g·r)).

The raw image is in volts: V(r) = (h²/(2π m₀ e)) · ρ = 47.878 V·Å² · ρ, g = 0 term (the mean inner
potential) included. Networks see the per-image min–max normalisation to [0, 1]; the raw scale is
kept alongside.

Any zone axis, any cell: :func:`zone_projected_potential` sums the same series over the zero-order
Laue zone of [uvw] (h u + k v + l w = 0), which is the potential averaged along the beam, and samples
it on a square grid in the microscope frame (x̂, ŷ given as rows in the orthogonal crystal frame) over
a field of view of any side; at [001] of a cubic cell with x̂ = [100] it is :func:`projected_potential`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lacbed_refine.conventions import ELECTRON_MASS, ELEMENTARY_CHARGE, PLANCK_H
from lacbed_refine.structure.atoms import Atoms
from lacbed_refine.structure.reflections import zolz_beams
from lacbed_refine.physics.structure_factors import _structure_factors, structure_factors

__all__ = [
    "projected_potential",
    "zone_projected_potential",
    "zone_potential_reflections",
    "normalise",
    "potential_reflections",
    "PAPER_POTENTIAL_TERMS",
]

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
    atoms: Atoms | dict,
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
    atoms : Atoms or mapping
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
    atoms = Atoms.coerce(atoms)
    frac = torch.as_tensor(atoms.frac, dtype=torch.float64)
    occ = torch.as_tensor(atoms.occupancy, dtype=torch.float64)
    b = torch.as_tensor(atoms.b_iso, dtype=torch.float64)
    hkl = potential_reflections(a, centring, size, n_terms)
    f = structure_factors(torch.as_tensor(hkl), frac, atoms.Z, occ, b, a, table=table)  # (G,)
    grid = torch.zeros((size, size), dtype=f.dtype)
    rows = torch.as_tensor(hkl[:, 1] % size)
    cols = torch.as_tensor(hkl[:, 0] % size)
    grid = grid.index_put((rows, cols), f, accumulate=True)
    # ifft2 carries exp(+2πi (k·row + h·col)/n) and a 1/n² that we undo.
    rho = torch.fft.ifft2(grid).real * (size * size) / a**3
    return rho * VOLT_ANGSTROM2


def _zone_triple(zone) -> np.ndarray:
    try:
        t = np.array([int(x) for x in zone], dtype=np.int64)
        ok = len(t) == 3 and all(float(x) == y for x, y in zip(zone, t))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"zone {zone!r}: three integers u, v, w are needed")
    if not t.any():
        raise ValueError(f"zone {zone!r}: must not be zero")
    return t // math.gcd(*(int(x) for x in t))


def _check_axes(axes, cell, zone: np.ndarray) -> np.ndarray:
    """The (2, 3) rows x̂, ŷ of ``axes`` (shape (2, 3) or (3, 3)), checked orthonormal and
    perpendicular to the zone direction."""
    ax = np.asarray(axes, dtype=float)
    if ax.ndim != 2 or ax.shape[1] != 3 or ax.shape[0] not in (2, 3) or not np.isfinite(ax).all():
        raise ValueError(f"axes: rows x̂, ŷ of shape (2, 3) are needed, got shape {ax.shape}")
    ax = ax[:2]
    if not np.allclose(ax @ ax.T, np.eye(2), atol=1e-6):
        raise ValueError("axes: x̂ and ŷ must be orthonormal (unit length, perpendicular)")
    z = cell.orth @ zone.astype(float)
    z /= np.linalg.norm(z)
    if np.abs(ax @ z).max() > 1e-6:
        raise ValueError(f"axes: x̂ and ŷ must be perpendicular to the zone axis {zone.tolist()}")
    return ax


def zone_potential_reflections(
    cell,
    zone,
    axes,
    *,
    centring=None,
    size: int = 128,
    field_of_view: float | None = None,
    n_terms: int = PAPER_POTENTIAL_TERMS,
) -> tuple[np.ndarray, np.ndarray]:
    """The reflections of :func:`zone_projected_potential`'s Fourier series.

    The zero-order Laue zone of ``zone`` (h u + k v + l w = 0) among the reflections the centring
    allows (g·t an integer for every centring translation t), the ``n_terms`` lowest |g| in whole
    shells of equal |g| (as :func:`potential_reflections`), then cut at the image's Nyquist limit:
    |g·x̂| L and |g·ŷ| L below ``size // 2`` cycles across the field of view L.

    Parameters are those of :func:`zone_projected_potential`.

    Returns
    -------
    hkl : ndarray, shape (G, 3), int
        Sorted by |g|, then by angle in the image plane.
    freq : ndarray, shape (G, 2), float
        (g·x̂ L, g·ŷ L): cycles across the field of view along x and y.
    """
    uvw = _zone_triple(zone)
    ax = _check_axes(axes, cell, uvw)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 4:
        raise ValueError(f"size must be at least 4 pixels, got {size!r}")
    if isinstance(n_terms, bool) or not isinstance(n_terms, (int, np.integer)) or n_terms < 1:
        raise ValueError(f"n_terms must be a whole number >= 1, got {n_terms!r}")
    fov = float(cell.a if field_of_view is None else field_of_view)
    if not (math.isfinite(fov) and fov > 0):
        raise ValueError(f"field_of_view {field_of_view!r}: must be a positive length [Å]")
    shifts = np.zeros((1, 3)) if centring is None else np.asarray(centring, dtype=float).reshape(-1, 3)
    recip = cell.recip  # columns a*, b*, c* [Å⁻¹]
    edges = np.linalg.norm(cell.orth, axis=0)  # |a|, |b|, |c| [Å]: |h| <= |g| |a|
    # The zone's lattice plane: the index with the smallest non-zero |u_j| follows from the other two.
    nz = np.flatnonzero(uvw)
    j = int(nz[np.argmin(np.abs(uvw[nz]))])
    free = [i for i in range(3) if i != j]
    # area per reflection of the plane [Å⁻²]: |u a + v b + w c| / V (before centring); a disc of
    # radius r holds about π r² / area of them, at least 1/C of which the centring allows
    area = np.linalg.norm(cell.orth @ uvw.astype(float)) / cell.volume
    radius = math.sqrt(1.3 * n_terms * len(shifts) * area / math.pi) + 2 * float(np.linalg.norm(recip, axis=0).max())
    while True:
        r0 = np.arange(-math.ceil(radius * edges[free[0]]), math.ceil(radius * edges[free[0]]) + 1)
        r1 = np.arange(-math.ceil(radius * edges[free[1]]), math.ceil(radius * edges[free[1]]) + 1)
        m0, m1 = (m.ravel() for m in np.meshgrid(r0, r1, indexing="ij"))
        rest = -(uvw[free[0]] * m0 + uvw[free[1]] * m1)
        keep = rest % uvw[j] == 0
        hkl = np.zeros((int(keep.sum()), 3), dtype=np.int64)
        hkl[:, free[0]], hkl[:, free[1]], hkl[:, j] = m0[keep], m1[keep], rest[keep] // uvw[j]
        phase = hkl @ shifts.T
        hkl = hkl[(np.abs(phase - np.round(phase)) < 1e-6).all(axis=1)]
        g = hkl @ recip.T  # (G, 3) Cartesian [Å⁻¹]
        length = np.linalg.norm(g, axis=1)
        inside = length <= radius * (1 + 1e-9)
        if inside.sum() >= n_terms:
            break
        radius *= 1.5
    hkl, g, length = hkl[inside], g[inside], length[inside]
    xy = g @ ax.T  # (G, 2) [Å⁻¹]
    order = np.lexsort((np.round(np.mod(np.arctan2(xy[:, 1], xy[:, 0]), 2 * np.pi), 9), np.round(length, 9)))
    hkl, xy, length = hkl[order], xy[order], length[order]
    cut = length[n_terms - 1] * (1 + 1e-9) + 1e-12
    hkl, xy = hkl[length <= cut], xy[length <= cut]
    freq = xy * fov
    nyquist = (np.abs(freq) < size // 2 - 1e-6).all(axis=1)
    return hkl[nyquist], freq[nyquist]


def zone_projected_potential(
    atoms: Atoms | dict,
    cell,
    zone,
    axes,
    *,
    centring=None,
    size: int = 128,
    field_of_view: float | None = None,
    n_terms: int = PAPER_POTENTIAL_TERMS,
    table: str = "kirkland",
) -> torch.Tensor:
    """Projected potential along any zone axis [V], on a square grid in the microscope frame.

    V(x, y) = (h²/(2π m₀ e)) (1/V_cell) Σ_g F(g) exp(+2πi g·r), r = x x̂ + y ŷ [Å], summed over the
    zero-order Laue zone reflections of ``zone`` (g·[uvw] = 0; :func:`zone_potential_reflections`):
    the crystal potential averaged along the beam, g = 0 term (the mean inner potential) included,
    peaks on the atom columns. Units and signs are those of :func:`projected_potential`: F [Å] as
    :func:`~lacbed_refine.physics.structure_factors.structure_factors` (exp(−2πi g·r_j)), g in
    1/d units [Å⁻¹], the origin of r at the cell's origin (fractional 0, 0, 0).

    Pixel ``[row, col]`` is at x = col·L/n, y = row·L/n (L the field of view, n = ``size``). At
    [001] of a cubic cell with x̂ = [100], ŷ = [010] and L = a this is :func:`projected_potential`
    (to rounding). The image tiles seamlessly only where L is a period of the projection along x̂
    and ŷ (e.g. L = a along ⟨100⟩ of a cubic cell); elsewhere it is a square window onto it.

    Parameters
    ----------
    atoms : Atoms or mapping
        ``frac`` (N, 3), ``Z`` (N,), ``occupancy`` (N,), ``b_iso`` (N,) [Å²]; numpy arrays or
        torch tensors (differentiable in ``frac``, ``occupancy`` and ``b_iso``).
    cell : lacbed_refine.structure.Cell
        Any unit cell (its ``orth``, ``recip`` and ``volume`` are used).
    zone : (u, v, w)
        Beam direction, a direct-lattice vector (integers).
    axes : array, shape (2, 3) (or (3, 3), rows x̂, ŷ, ẑ)
        Unit vectors x̂ (image +x, along ``col``) and ŷ (image +y, along ``row``) in the orthogonal
        crystal frame (the cell's ``orth`` frame); both perpendicular to the zone axis.
    centring : array, shape (C, 3), optional
        Fractional lattice-centring translations (with (0, 0, 0)); only reflections with g·t an
        integer for every t enter (the others vanish anyway). Default: a primitive lattice.
    size : int
        Image edge n [pixels], at least 4.
    field_of_view : float, optional
        Side L of the square the image spans [Å]; default the cell edge a.
    n_terms : int
        Reflections in the Fourier series (whole shells; paper: 2500) before the Nyquist cut.
    table : {"kirkland", "peng"}

    Returns
    -------
    Tensor, shape (size, size), float64, ``[row, col] = [y, x]``.
    """
    hkl, freq = zone_potential_reflections(cell, zone, axes, centring=centring, size=size, field_of_view=field_of_view,
                                           n_terms=n_terms)
    atoms = Atoms.coerce(atoms)
    frac = torch.as_tensor(atoms.frac, dtype=torch.float64)
    occ = torch.as_tensor(atoms.occupancy, dtype=torch.float64)
    b = torch.as_tensor(atoms.b_iso, dtype=torch.float64)
    q2 = torch.as_tensor(cell.g_length(hkl) ** 2, dtype=torch.float64)
    f = _structure_factors(torch.as_tensor(hkl), q2, frac, atoms.Z, occ, b, table=table, chunk=4096)  # (G,)
    scale = VOLT_ANGSTROM2 / cell.volume
    whole = np.round(freq)
    if np.abs(freq - whole).max(initial=0.0) < 1e-9:
        # the field of view is a period of every term: one FFT, as projected_potential
        grid = torch.zeros((size, size), dtype=f.dtype)
        rows = torch.as_tensor(whole[:, 1].astype(np.int64) % size)
        cols = torch.as_tensor(whole[:, 0].astype(np.int64) % size)
        grid = grid.index_put((rows, cols), f, accumulate=True)
        return torch.fft.ifft2(grid).real * (size * size) * scale
    # V[row, col] = Σ_g F_g e^{2πi f_y row/n} e^{2πi f_x col/n}: one (n, G) @ (G, n) product
    pix = torch.arange(size, dtype=torch.float64) / size
    fr = torch.as_tensor(freq, dtype=torch.float64)
    ex = torch.polar(torch.ones(len(fr), size, dtype=torch.float64), 2 * math.pi * fr[:, :1] * pix)  # (G, n) by col
    ey = torch.polar(torch.ones(len(fr), size, dtype=torch.float64), 2 * math.pi * fr[:, 1:] * pix)  # (G, n) by row
    return ((ey.T * f) @ ex).real * scale


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
