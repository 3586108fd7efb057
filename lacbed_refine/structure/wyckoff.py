"""Wyckoff positions of any space group, derived from its operations (gemmi has no tables).

A Wyckoff position is the set of points whose site-symmetry groups are conjugate in the space group
G. We find them on the grid of points with coordinates k/24 (k = 0 … 23), which is closed under
every operation of a tabulated setting (translations are multiples of 1/12 or 1/8, also after an
origin shift on the same grid) and holds every special point of the 230 groups (coordinates multiples
of 1/8 or 1/6, e.g. 1/3, 2/3 in hexagonal groups) and points of every special line and plane:

1. For every grid point, its site-symmetry group H = {(R, t) ∈ G : R r + t ≡ r (mod 1)}.
2. Grid points are joined when one operation maps one onto the other (same orbit) and when their
   affine site-symmetry groups are identical (the same generic part of one fixed subspace).
   The classes left are the Wyckoff positions.
3. Each class is described by one representative grid point ``r0`` of it and the free directions
   of its fixed subspace {r : R r + t = r for all (R, t) ∈ H}: the null space of the stacked
   (R − I), as the smallest integer vectors (``x,x,x`` gives (1, 1, 1), hexagonal ``2x,x,z`` gives
   (2, 1, 0) and (0, 0, 1)), so that ``r0 + Σ u_k d_k`` with u_k ∈ [0, 1) covers the subspace
   modulo the lattice.

Multiplicities are per conventional cell, centring included, so they agree with the International
Tables. ITA Wyckoff *letters* are not assigned (their order among positions of equal multiplicity is a
table convention); positions are sorted by multiplicity, then dimension, then site-symmetry order.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction

import gemmi
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from lacbed_refine.structure.spacegroup import symmetry_operations

__all__ = ["WyckoffPosition", "wyckoff_positions"]

_GRID = 24


@dataclass(frozen=True)
class WyckoffPosition:
    """One Wyckoff position of a space group.

    Attributes
    ----------
    multiplicity : int
        Number of positions in the conventional cell (centring included).
    site_symmetry_order : int
        Order of the site-symmetry group (point-group part); ``multiplicity × order`` is the
        multiplicity of the general position.
    point : ndarray, shape (3,)
        A representative point of it (fractional).
    directions : ndarray, shape (K, 3), int
        Free directions (fractional), K = 0 (a point), 1 (a line), 2 (a plane) or 3 (general).
    """

    multiplicity: int
    site_symmetry_order: int
    point: np.ndarray
    directions: np.ndarray

    @property
    def dimension(self) -> int:
        """Number of free coordinates (0–3)."""
        return len(self.directions)

    def sample(self, u) -> np.ndarray:
        """The point ``point + Σ u_k directions_k`` wrapped to [0, 1) (``u`` shape (K,))."""
        u = np.asarray(u, dtype=float).reshape(self.dimension)
        return np.mod(self.point + u @ self.directions, 1.0)


def rref(m: np.ndarray) -> np.ndarray:
    """Reduced row echelon form (pivots 1) of a full-rank (K, 3) matrix."""
    m = m.astype(float).copy()
    row = 0
    for col in range(m.shape[1]):
        if row == len(m):
            break
        pivot = row + int(np.argmax(np.abs(m[row:, col])))
        if abs(m[pivot, col]) < 1e-9:
            continue
        m[[row, pivot]] = m[[pivot, row]]
        m[row] /= m[row, col]
        for r in range(len(m)):
            if r != row:
                m[r] -= m[r, col] * m[row]
        row += 1
    m[np.abs(m) < 1e-12] = 0.0
    return m


def wyckoff_positions(hall: str) -> tuple[WyckoffPosition, ...]:
    """The Wyckoff positions of the space group with Hall symbol ``hall``.

    Parameters
    ----------
    hall : str
        Hall symbol of a space-group setting (e.g. ``Crystal.hall``; a change-of-basis suffix is
        allowed).

    Returns
    -------
    tuple of WyckoffPosition
        Sorted by multiplicity, then dimension, then site-symmetry order (descending); the last one
        is the general position.

    Raises
    ------
    ValueError
        If ``hall`` is not a space group gemmi knows, or its translations are not on the 1/24 grid.
    """
    try:
        ops = gemmi.symops_from_hall(hall)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"unknown Hall symbol {hall!r}: {exc}") from None
    if len(ops) == 0:
        raise ValueError(f"Hall symbol {hall!r} gives no operations")
    return _wyckoff_cached(hall)


@functools.lru_cache(maxsize=64)
def _wyckoff_cached(hall: str) -> tuple[WyckoffPosition, ...]:
    rot, tra = symmetry_operations(hall)
    n_ops = len(rot)
    tra_grid = tra * _GRID
    if not np.allclose(tra_grid, np.rint(tra_grid), atol=1e-9):
        raise ValueError(f"space group {hall!r} has translations off the 1/{_GRID} grid")
    tra_i = np.rint(tra_grid).astype(np.int64)

    k = np.arange(_GRID, dtype=np.int32)
    grid = np.stack(np.meshgrid(k, k, k, indexing="ij"), axis=-1).reshape(-1, 3)  # integer units
    n_pts = len(grid)

    # image of every grid point under every operation, exact in integer units
    images = np.matmul(grid[None, :, :], rot.transpose(0, 2, 1).astype(np.int32)) + tra_i[:, None, :].astype(np.int32)
    wrapped = np.mod(images, _GRID)
    image_idx = (wrapped[..., 0] * _GRID + wrapped[..., 1]) * _GRID + wrapped[..., 2]  # (S, P)
    fixes = image_idx == np.arange(n_pts)[None, :]  # (S, P): op s fixes point p (mod 1)

    # 1. orbits: the orbit of p is {image_idx[s, p]}, so its smallest index labels it
    orbit = image_idx.min(axis=0)
    # 2. identical affine site-symmetry groups: which operations fix p and with which lattice
    # vector n (R r + t - n = r) identify the group exactly
    s_fix, p_fix = np.nonzero(fixes)
    shift = (images[s_fix, p_fix] - grid[p_fix]) // _GRID  # (K, 3)
    rows = np.zeros((n_pts, n_ops), dtype=np.int16)
    rows[p_fix, s_fix] = 1 + (shift[:, 0] + 4) + 9 * (shift[:, 1] + 4) + 81 * (shift[:, 2] + 4)
    _, key = np.unique(rows.view(np.dtype((np.void, rows.shape[1] * 2))).ravel(), return_inverse=True)
    key = key.ravel()
    first_of_key = np.full(key.max() + 1, n_pts)
    np.minimum.at(first_of_key, key, np.arange(n_pts))
    edges_from = np.concatenate([np.arange(n_pts), np.arange(n_pts)])
    edges_to = np.concatenate([orbit, first_of_key[key]])
    graph = coo_matrix((np.ones(len(edges_from)), (edges_from, edges_to)), shape=(n_pts, n_pts))
    _, roots = connected_components(graph, directed=False)

    positions = []
    for root in np.unique(roots):
        members = np.nonzero(roots == root)[0]
        rep = int(members[0])  # members have conjugate site-symmetry groups; any one will do
        ss = np.nonzero(fixes[:, rep])[0]
        order = len(ss)
        multiplicity, rem = divmod(n_ops, order)
        if rem:
            raise ValueError(f"space group {hall!r}: site-symmetry order {order} does not divide {n_ops}")
        positions.append(
            WyckoffPosition(
                multiplicity=multiplicity,
                site_symmetry_order=_point_group_order(rot[ss]),
                point=grid[rep] / _GRID,
                directions=_integer_null_space(rot[ss]),
            )
        )
    positions.sort(key=lambda w: (w.multiplicity, w.dimension, -w.site_symmetry_order, tuple(w.point)))
    return tuple(positions)


def _point_group_order(rotations: np.ndarray) -> int:
    return len({tuple(r.ravel()) for r in rotations})


def _integer_null_space(rotations: np.ndarray) -> np.ndarray:
    """Integer basis of {d : R d = d}: the reduced row echelon form, each row scaled to the smallest
    integers (entries in {0, ±1} for cubic groups; (2, 1, 0) for a hexagonal ``2x,x,z``)."""
    eye = np.eye(3, dtype=np.int64)
    stacked = (np.asarray(rotations, dtype=np.int64) - eye).reshape(-1, 3).astype(float)
    _, sv, vt = np.linalg.svd(np.vstack([stacked, np.zeros((1, 3))]))
    rank = int(np.sum(sv > 1e-8))
    basis = vt[rank:]
    if len(basis) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    m = rref(basis)
    rows = []
    for row in m:
        scale = math.lcm(*(Fraction(float(x)).limit_denominator(12).denominator for x in row))
        rows.append(row * scale)
    out = np.rint(np.array(rows)).astype(np.int64)
    if not np.allclose(out, np.array(rows), atol=1e-9):
        raise ValueError(f"fixed subspace has no integer basis: {m.tolist()}")
    return out
