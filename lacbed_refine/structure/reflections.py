"""Reflections of a cubic lattice in the zero-order Laue zone of [001]: the centring rule and the
beam pool sorted by |g| (whole shells kept together).

Reciprocal vectors are (h, k, l) integers; |g| = |(h, k, l)|/a [Å⁻¹, 1/d units, no 2π]
(:mod:`lacbed_refine.conventions`). Any cell and zone: :mod:`lacbed_refine.engine.beams`.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAX_BEAMS", "centring_allows", "zolz_beams"]

#: Largest beam pool: the per-pixel structure matrix of 5000 beams is 400 MB; FELIX runs use a few hundred.
MAX_BEAMS = 5000


def centring_allows(hkl: np.ndarray, centring: str) -> np.ndarray:
    """Reflections allowed by the lattice centring alone (P, F, I), as FELIX's pool does.

    Parameters
    ----------
    hkl : ndarray, shape (G, 3), int
    centring : {"P", "F", "I"}

    Returns
    -------
    ndarray of bool, shape (G,)
    """
    h, k, l = np.asarray(hkl).T
    if centring == "P":
        return np.ones(len(h), dtype=bool)
    if centring == "F":
        return ((h % 2) == (k % 2)) & ((k % 2) == (l % 2))
    if centring == "I":
        return ((h + k + l) % 2) == 0
    raise ValueError(f"centring must be 'P', 'F' or 'I' for a cubic lattice, got {centring!r}")


def zolz_beams(
    a: float, centring: str, *, g_limit: float | None = None, n_beams: int | None = None
) -> np.ndarray:
    """The zero-order Laue zone (h k 0) beam pool, sorted by |g|.

    Exactly one of ``g_limit`` and ``n_beams`` is given. Whole shells of equal |g| are always kept
    together (a partial shell would break the pattern's symmetry), so ``n_beams`` is a minimum.

    Parameters
    ----------
    a : float
        Cubic cell edge [Å].
    centring : {"P", "F", "I"}
    g_limit : float, optional
        Keep beams with |g| ≤ g_limit [Å⁻¹, 1/d units] (FELIX ``RgLimit``).
    n_beams : int, optional
        Keep the smallest set of whole shells holding at least this many beams (000 included).

    Returns
    -------
    hkl : ndarray, shape (n, 3), int
        000 first, then ascending |g|; within a shell, ordered by angle for reproducibility.
    """
    if (g_limit is None) == (n_beams is None):
        raise ValueError("give exactly one of g_limit (Å⁻¹) and n_beams")
    if g_limit is not None and not g_limit > 0:
        raise ValueError(f"g_limit must be positive (Å⁻¹), got {g_limit!r}")
    if n_beams is not None and not (isinstance(n_beams, (int, np.integer)) and n_beams >= 1):
        raise ValueError(f"n_beams must be a positive int, got {n_beams!r}")
    if g_limit is not None:
        hmax = int(math.floor(g_limit * a)) + 1
        # about π (g_limit a)² reflections lie in the zone: refuse a pool that large before the grid
        if math.pi * (g_limit * a) ** 2 > 4 * MAX_BEAMS:
            raise ValueError(f"--g-limit {g_limit:g} Å⁻¹: about {math.pi * (g_limit * a) ** 2:,.0f} beams for a = {a:g} Å, "
                             f"more than {MAX_BEAMS}")
    else:
        hmax = int(math.ceil(math.sqrt(4.0 * n_beams / math.pi))) + 2
    r = np.arange(-hmax, hmax + 1)
    h, k = np.meshgrid(r, r, indexing="ij")
    hkl = np.stack([h.ravel(), k.ravel(), np.zeros(h.size, dtype=int)], axis=1)
    hkl = hkl[centring_allows(hkl, centring)]
    m2 = (hkl[:, :2] ** 2).sum(1)
    ang = np.mod(np.arctan2(hkl[:, 1], hkl[:, 0]), 2 * np.pi)
    order = np.lexsort((ang, m2))
    hkl, m2 = hkl[order], m2[order]
    if g_limit is not None:
        keep = m2 <= (g_limit * a) ** 2 * (1 + 1e-12)
    else:
        cut = m2[min(n_beams, len(m2)) - 1]
        keep = m2 <= cut
    return hkl[keep].astype(np.int64)
