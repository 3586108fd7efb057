"""Beam pools for any cell and zone axis, by FELIX's rule (felix-spec §3.5).

FELIX fills shells of width min(|a*|, |b*|, |c*|) outward within the index box ±NINT(RgLimit/|a*|),
±NINT(RgLimit/|b*|), ±NINT(RgLimit/|c*|), keeping reflections allowed by the lattice centring whose
deviation from the Ewald sphere at the zone axis is small, |K − |g + Kẑ|| / |g| ≤ 0.08 (the zero-order
Laue zone and the near part of higher ones), until the pool holds ``n_beams`` or the shell passes the
|g| limit, which is so rounded *up* to whole shells. The pool is sorted by |g|, 000 first.
"""

from __future__ import annotations

import math

import numpy as np

from lacbed_refine.structure.cell import Cell
from lacbed_refine.engine.zone import ZoneAxis

__all__ = ["centring_allowed", "zone_beam_pool", "EWALD_TOLERANCE"]

#: FELIX's acceptance of reflections near the Ewald sphere at the zone axis, |K − |g + Kẑ|| / |g|.
EWALD_TOLERANCE = 0.08


def centring_allowed(hkl: np.ndarray, centring_vectors) -> np.ndarray:
    """Reflections allowed by the lattice centring: h·t integer for every centring translation t.

    Parameters
    ----------
    hkl : ndarray, shape (G, 3), int
    centring_vectors : sequence of (3,) fractional translations (the zero vector may be included)

    Returns
    -------
    ndarray of bool, shape (G,)
    """
    hkl = np.asarray(hkl, dtype=np.int64)
    ok = np.ones(len(hkl), dtype=bool)
    for t in centring_vectors:
        phase = hkl @ np.asarray(t, dtype=float)
        ok &= np.abs(phase - np.rint(phase)) < 1e-6
    return ok


def zone_beam_pool(
    cell: Cell,
    zone: ZoneAxis,
    centring_vectors,
    voltage: float,
    *,
    g_limit: float | None = None,
    n_beams: int | None = None,
) -> np.ndarray:
    """The beam pool of a crystal at a zone axis.

    Parameters
    ----------
    cell : Cell
    zone : ZoneAxis
    centring_vectors : sequence of (3,)
        Lattice centring translations (fractional), e.g. [(0, 0, 0), (0, .5, .5), ...] for F.
    voltage : float
        Accelerating voltage [V].
    g_limit : float, optional
        |g| limit [Å⁻¹, 1/d units] (FELIX ``RgLimit``), rounded up to whole shells.
    n_beams : int, optional
        Keep whole shells until the pool holds at least this many beams (000 included); used when
        ``g_limit`` is None. Exactly one of the two is given.

    Returns
    -------
    hkl : ndarray, shape (n, 3), int
        000 first, then ascending |g| (ties in index order, for reproducibility).
    """
    from lacbed_refine.conventions import electron_wavelength
    from lacbed_refine.engine.geometry import MAX_BEAMS

    if (g_limit is None) == (n_beams is None):
        raise ValueError("give exactly one of g_limit (Å⁻¹) and n_beams")
    lengths = np.linalg.norm(cell.recip, axis=0)  # |a*|, |b*|, |c*|
    shell = float(lengths.min())
    big_k = 1.0 / electron_wavelength(voltage)  # 1/d units, as g here
    if g_limit is not None:
        if not (math.isfinite(g_limit) and g_limit > 0):
            raise ValueError(f"--g-limit {g_limit!r}: must be a positive number of Å⁻¹")
        box = [int(math.floor(g_limit / x + 0.5)) for x in lengths]  # FELIX's NINT
        limit = math.ceil(g_limit / shell - 1e-9) * shell
    else:
        if not (isinstance(n_beams, (int, np.integer)) and 2 <= n_beams <= MAX_BEAMS):
            raise ValueError(f"--beams {n_beams!r}: must be 2–{MAX_BEAMS}")
        # the box grows until it holds the shells that give n_beams in the zone
        limit = None
        box = None
    radius = limit if limit is not None else shell * max(2.0, math.sqrt(n_beams / math.pi) * 1.5)
    while True:
        span = box if box is not None else [int(math.ceil(radius / x)) + 1 for x in lengths]
        axes = [np.arange(-s, s + 1) for s in span]
        hkl = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
        hkl = hkl[centring_allowed(hkl, centring_vectors)]
        g = hkl @ (cell.recip.T @ zone.frame(cell).T)  # (G, 3) microscope frame, 1/d units
        gm = np.linalg.norm(g, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = np.abs(big_k - np.linalg.norm(g + np.array([0.0, 0.0, big_k]), axis=1)) / gm
        near = (gm == 0) | (dev - EWALD_TOLERANCE < 1e-9)
        if limit is not None:
            keep = near & (gm <= limit * (1 + 1e-12))
            break
        # count-limited: whole shells of width ``shell`` until n_beams
        order_g = np.sort(gm[near])
        if len(order_g) >= n_beams and order_g[n_beams - 1] < radius - shell:
            cut = math.ceil(order_g[n_beams - 1] / shell - 1e-9) * shell
            keep = near & (gm <= cut * (1 + 1e-12))
            break
        radius *= 1.5
    hkl, gm = hkl[keep], gm[keep]
    order = np.lexsort((hkl[:, 2], hkl[:, 1], hkl[:, 0], np.round(gm, 9)))
    hkl = hkl[order]
    if len(hkl) > MAX_BEAMS:
        raise ValueError(f"beam pool of {len(hkl)} beams (--beams/--g-limit): more than {MAX_BEAMS}")
    return hkl.astype(np.int64)
