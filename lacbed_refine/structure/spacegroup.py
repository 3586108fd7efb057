"""Space-group operations as arrays, and the fractional-coordinate tolerances used everywhere.

Operations come from gemmi (a Hall symbol in, rotation matrices ``(n, 3, 3)`` and translations
``(n, 3)`` out, fractional). Positions closer than :data:`POS_TOL` (fractional, per component,
modulo 1) are the same position.
"""

from __future__ import annotations
import gemmi
import numpy as np

# Two positions closer than this (fractional, per component, modulo 1) are the same position.
POS_TOL = 1e-3


def symmetry_operations(hall: str) -> tuple[np.ndarray, np.ndarray]:
    return ops_arrays(gemmi.symops_from_hall(hall))


def ops_arrays(ops) -> tuple[np.ndarray, np.ndarray]:
    ops = list(ops)
    rot = np.array([op.rot for op in ops], dtype=float) / gemmi.Op.DEN
    tra = np.mod(np.array([op.tran for op in ops], dtype=float) / gemmi.Op.DEN, 1.0)
    return np.rint(rot).astype(np.int64), tra


def wrap_diff(d: np.ndarray) -> np.ndarray:
    return d - np.rint(d)


def stabilizer(frac: np.ndarray, rot: np.ndarray, tra: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Operations (R, t - n) with R r + t = r + n within tolerance; t - n makes the equality exact."""
    d = np.einsum("sij,j->si", rot, frac) + tra - frac
    n = np.rint(d)
    keep = np.all(np.abs(d - n) < POS_TOL, axis=1)
    return rot[keep].copy(), (tra - n)[keep]


def snap_to_special(frac: np.ndarray, rot: np.ndarray, tra: np.ndarray) -> np.ndarray:
    """Move a position within tolerance of a special position onto it (mean over its stabilizer).

    The mean of the images ``R r + t - n`` over a site-symmetry group is fixed by every element of
    that group, so one pass suffices; the loop only guards against a tolerance-set that is not a
    group. The result is rounded to 1e-12 and wrapped to [0, 1).
    """
    r = np.asarray(frac, dtype=float)
    for _ in range(8):
        srot, stra = stabilizer(r, rot, tra)
        new = np.mean(np.einsum("sij,j->si", srot, r) + stra, axis=0)
        done = np.max(np.abs(new - r)) < 1e-13
        r = new
        if done:
            break
    r = np.mod(np.round(r, 12), 1.0)
    return np.where(np.abs(r - 1.0) < 1e-12, 0.0, r) + 0.0


def shared_position_groups(fracs, rot, tra) -> list[list[int]]:
    """Groups (of ≥ 2 site indices) whose sites lie on one position (orbits that coincide)."""
    n = len(fracs)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    images = [np.einsum("sij,j->si", rot, np.asarray(r, dtype=float)) + tra for r in fracs]
    for i in range(n):
        for j in range(i + 1, n):
            d = wrap_diff(images[i] - np.asarray(fracs[j], dtype=float))
            if np.any(np.all(np.abs(d) < POS_TOL, axis=1)):
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return [g for g in groups.values() if len(g) > 1]
