"""Exact symmetries of a [001] ZOLZ Bloch-wave problem, found from its U_g, and the pixel wedge
they let the engine compute instead of the whole pattern.

For an in-plane operation R of the square lattice (one of the 8 of 4mm), the transmitted intensity
obeys I(Rk) = I(k) whenever U_{Rd} = U_d e^{-2πi Rd·τ} for every beam difference d and some
translation τ: the structure matrix at Rk is then a permutation-and-phase similarity of the one at k
(s_g is isotropic about [001]). Dark-field beams follow: I_{Rg}(Rk) = I_g(k). We test R and τ
numerically on the U_g the engine is about to use, so the reduction is taken only when it is exact
for that crystal, whatever its parameters.
"""

from __future__ import annotations

import itertools

import numpy as np

__all__ = ["DIHEDRAL_OPS", "pattern_symmetry", "realifying_shift", "pixel_wedge"]

#: The 8 operations of 4mm acting on (x, y) column vectors, identity first.
DIHEDRAL_OPS = tuple(
    np.array(m, dtype=np.int64)
    for m in (
        [[1, 0], [0, 1]],
        [[0, -1], [1, 0]],
        [[-1, 0], [0, -1]],
        [[0, 1], [-1, 0]],
        [[1, 0], [0, -1]],
        [[-1, 0], [0, 1]],
        [[0, 1], [1, 0]],
        [[0, -1], [-1, 0]],
    )
)

# Translations of cubic space groups projected on (001) are multiples of 1/4; after moving the
# origin to a 2-fold centre they become multiples of 1/8.
_TAUS = np.array(list(itertools.product(np.arange(8) / 8.0, repeat=2)))


def _lookup(d: np.ndarray) -> dict[tuple[int, int], int]:
    return {(int(x), int(y)): i for i, (x, y) in enumerate(d)}


def realifying_shift(d: np.ndarray, u: np.ndarray, *, rtol: float = 1e-7) -> np.ndarray | None:
    """An in-plane origin shift τ (fractional, multiple of 1/8) that makes every U_d real.

    Moving the origin by τ multiplies U_d by e^{2πi d·τ}; at a 2-fold axis of the projected
    structure (every cubic [001] projection has one) all U_d are real.

    Parameters
    ----------
    d : ndarray, shape (D, 2), int
        (h, k) of the beam differences.
    u : ndarray, shape (D,), complex
        Their U_d.

    Returns
    -------
    ndarray, shape (2,), or None when no such shift exists (e.g. with absorption).
    """
    scale = np.abs(u).max() if u.size else 0.0
    if scale == 0:
        return np.zeros(2)
    ph = np.exp(2j * np.pi * (_TAUS @ d.T))  # (64, D)
    imag = np.abs((ph * u[None, :]).imag).max(axis=1)
    best = int(np.argmin(imag))
    return _TAUS[best] if imag[best] <= rtol * scale else None


def pattern_symmetry(d: np.ndarray, u: np.ndarray, *, rtol: float = 1e-7) -> list[np.ndarray]:
    """The operations R of 4mm under which the ZOLZ problem is exactly invariant.

    Parameters
    ----------
    d : ndarray, shape (D, 2), int
        Beam differences; must be closed under 4mm (whole shells of a square pool are).
    u : ndarray, shape (D,), complex

    Returns
    -------
    list of (2, 2) int arrays, the identity first; always a group.
    """
    scale = np.abs(u).max() if u.size else 0.0
    index = _lookup(d)
    ops = [DIHEDRAL_OPS[0]]
    for R in DIHEDRAL_OPS[1:]:
        rd = d @ R.T
        try:
            perm = np.array([index[(int(x), int(y))] for x, y in rd])
        except KeyError:
            continue
        ph = np.exp(-2j * np.pi * (_TAUS @ rd.T))  # (64, D)
        err = np.abs(u[perm][None, :] - u[None, :] * ph).max(axis=1)
        if err.min() <= rtol * max(scale, 1e-300):
            ops.append(R)
    return ops


def pixel_wedge(size: int, ops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Representative pixels of the orbits of ``ops`` on a size×size pattern.

    Pixel ``[row, col]`` has half-integer tilt coordinates (u, v) = (col − N + ½, row − N + ½), which
    every operation of 4mm maps onto another pixel centre.

    Returns
    -------
    reps : ndarray, shape (P,), int
        Flat indices of the representative pixels.
    source : ndarray, shape (size*size,), int
        For every pixel, the position in ``reps`` of its representative.
    op_index : ndarray, shape (size*size,), int
        For every pixel p, the index i into ``ops`` with p = ops[i] · rep.
    """
    n = size // 2
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    uv = np.stack([cols.ravel() - n + 0.5, rows.ravel() - n + 0.5], axis=1)  # (S, 2)
    flat_of = lambda q: (np.rint(q[:, 1] + n - 0.5) * size + np.rint(q[:, 0] + n - 0.5)).astype(np.int64)  # noqa: E731
    images = np.stack([flat_of(uv @ R.T) for R in ops])  # (O, S): flat index of R·p
    rep_flat = images.min(axis=0)  # orbit representative: smallest flat index
    reps = np.unique(rep_flat)
    pos = np.full(size * size, -1, dtype=np.int64)
    pos[reps] = np.arange(len(reps))
    source = pos[rep_flat]
    # which op maps the representative onto p: R·rep = p  ⇔  rep = R⁻¹ p; find R with images[R⁻¹][p] = rep
    inv_images = np.stack([flat_of(uv @ np.linalg.inv(R).round().astype(np.int64).T) for R in ops])
    op_index = np.argmax(inv_images == rep_flat[None, :], axis=0)
    return reps, source, op_index
