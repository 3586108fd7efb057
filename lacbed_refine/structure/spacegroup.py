"""Space-group operations as arrays, settings of any of the 230 groups, and the tolerances used
everywhere.

Operations come from gemmi (a Hall symbol in, rotation matrices ``(n, 3, 3)`` and translations
``(n, 3)`` out, fractional). Positions closer than :data:`POS_TOL` (fractional, per component,
modulo 1) are the same position.

A crystal's symmetry is a Hall symbol. gemmi tabulates 564 settings of the 230 groups (origin choices,
monoclinic unique axes and cell choices, hexagonal and rhombohedral axes of the R groups, orthorhombic
axis permutations). Operators that are a tabulated setting seen from another origin (FELIX's GaN
with its origin moved by (1/3, 2/3, 0), a shifted :meth:`Crystal.shifted`) get the tabulated Hall
symbol with Hall's change-of-basis suffix, ``"P 6c -2c (x+2/3,y+1/3,z)"``, which gemmi expands back to
exactly those operators (:func:`find_setting`).
"""

from __future__ import annotations
import functools
import math
from fractions import Fraction
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
    that group. The result is rounded to 1e-12 and wrapped to [0, 1); that rounding can break an
    exact relation such as y = 2x of a hexagonal position, so the step is repeated until the rounded
    position reproduces itself: snapping a snapped position changes nothing (a CIF written from a
    crystal reads back to the same crystal).
    """
    r = _rounded(np.asarray(frac, dtype=float))
    for _ in range(8):
        srot, stra = stabilizer(r, rot, tra)
        new = _rounded(np.mean(np.einsum("sij,j->si", srot, r) + stra, axis=0))
        if np.array_equal(new, r):
            break
        r = new
    return r


def _rounded(r: np.ndarray) -> np.ndarray:
    """``r`` rounded to 1e-12 and wrapped to [0, 1) (no -0.0, no 1.0)."""
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


#: Origin shifts searched by :func:`find_setting` are multiples of 1/_SHIFT_GRID (every translation of a
#: tabulated setting is a multiple of 1/12 or 1/8).
_SHIFT_GRID = 24

#: Lengths that a crystal system makes equal may differ by this relative amount, angles that it fixes
#: (90°, 120°, or equal to each other) by this many degrees; the reader then sets them exactly.
CELL_LENGTH_RTOL = 1e-4
CELL_ANGLE_ATOL = 1e-3


def find_setting(ops: gemmi.GroupOps) -> tuple[gemmi.SpaceGroup, str] | None:
    """The tabulated setting that ``ops`` are, up to an origin shift, and a Hall symbol for ``ops``.

    Parameters
    ----------
    ops : gemmi.GroupOps
        Space-group operations, centring included.

    Returns
    -------
    (setting, hall) or None
        ``setting`` is gemmi's tabulated setting (number, H-M symbol, origin choice, axes);
        ``hall`` is its Hall symbol when ``ops`` are exactly that setting, else the Hall symbol with
        a change-of-basis suffix ``(x+p,y+q,z+r)`` (an origin shift on the 1/24 grid) whose
        operations are ``ops``. None when no tabulated setting has the same rotations and centring,
        or no origin shift on the 1/24 grid maps one onto the other.
    """
    exact = gemmi.find_spacegroup_by_ops(ops)
    if exact is not None:
        return exact, exact.hall
    rot, tra = ops_arrays(ops)
    target = _op_keys(rot, tra)
    if target is None:
        return None
    for sg in gemmi.spacegroup_table():
        cand = sg.operations()
        if len(cand) != len(ops) or not (cand.has_same_centring(ops) and cand.has_same_rotations(ops)):
            continue
        shift = _origin_shift(*ops_arrays(cand), target)
        if shift is None:
            continue
        for sign in (1, -1):
            hall = f"{sg.hall} ({_shift_triplet(sign * shift)})"
            if _same_ops(gemmi.symops_from_hall(hall), target):
                return sg, hall
    return None


@functools.lru_cache(maxsize=1024)
def setting_of(hall: str) -> gemmi.SpaceGroup | None:
    """The tabulated setting of a Hall symbol (with or without a change-of-basis suffix), or None.

    Raises
    ------
    ValueError
        If gemmi cannot parse ``hall``.
    """
    try:
        ops = gemmi.symops_from_hall(hall)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"unknown Hall symbol {hall!r}: {exc}") from None
    found = find_setting(ops)
    return None if found is None else found[0]


def _op_keys(rot: np.ndarray, tra: np.ndarray):
    """Sorted integer keys of operations (rotation entries and translation in 1/24), or None when
    a translation is off the 1/24 grid."""
    t = tra * _SHIFT_GRID
    if not np.allclose(t, np.rint(t), atol=1e-6):
        return None
    t = np.mod(np.rint(t).astype(np.int64), _SHIFT_GRID)
    return sorted(zip(map(tuple, rot.reshape(len(rot), 9).tolist()), map(tuple, t.tolist())))


def _same_ops(ops: gemmi.GroupOps, target_keys) -> bool:
    return _op_keys(*ops_arrays(ops)) == target_keys


def _origin_shift(rot: np.ndarray, tra: np.ndarray, target_keys) -> np.ndarray | None:
    """A shift s (fractional, on the 1/24 grid) with {(R, t + (I − R) s)} = the target operations."""
    n = _SHIFT_GRID
    t = tra * n
    if not np.allclose(t, np.rint(t), atol=1e-6):
        return None
    t = np.rint(t).astype(np.int64)
    # index rotations by the target's, translations as integers in 1/24: key = r_index·n³ + t
    rot_index: dict[tuple, int] = {}
    for r, _ in target_keys:
        rot_index.setdefault(r, len(rot_index))
    try:
        ridx = np.array([rot_index[tuple(r.ravel().tolist())] for r in rot], dtype=np.int64)
    except KeyError:
        return None
    want = np.sort([rot_index[r] * n**3 + (x * n + y) * n + z for r, (x, y, z) in target_keys])
    k = np.arange(n)
    shifts = np.stack(np.meshgrid(k, k, k, indexing="ij"), axis=-1).reshape(-1, 3)  # (n³, 3)
    i_minus_r = np.eye(3, dtype=np.int64)[None] - rot  # (S, 3, 3)

    def keys(ops, s):
        moved = np.mod(t[ops][None] + np.einsum("sij,kj->ksi", i_minus_r[ops], s), n)  # (K, len(ops), 3)
        return ridx[ops][None] * n**3 + (moved[..., 0] * n + moved[..., 1]) * n + moved[..., 2]

    # a few operations rule out almost every shift; the survivors are checked with all of them
    few = np.arange(min(len(rot), 8))
    shifts = shifts[np.isin(keys(few, shifts), want).all(axis=1)]
    if len(shifts) == 0:
        return None
    hit = np.nonzero(np.all(np.sort(keys(np.arange(len(rot)), shifts), axis=1) == want[None], axis=1))[0]
    if len(hit) == 0:
        return None
    return shifts[hit[0]] / n


def _shift_triplet(shift: np.ndarray) -> str:
    parts = []
    for axis, s in zip("xyz", shift):
        f = Fraction(float(s)).limit_denominator(_SHIFT_GRID)
        f -= math.floor(f)
        parts.append(axis if f == 0 else f"{axis}+{f}")
    return ",".join(parts)


def crystal_system(sg: gemmi.SpaceGroup) -> str:
    """``"triclinic"`` … ``"cubic"``; trigonal groups in rhombohedral axes give ``"rhombohedral"``."""
    system = sg.crystal_system_str()
    return "rhombohedral" if system == "trigonal" and sg.ext == "R" else system


def unique_axis(sg: gemmi.SpaceGroup) -> str:
    """The unique axis ``"a"``, ``"b"`` or ``"c"`` of a monoclinic setting ("" otherwise)."""
    if sg.crystal_system_str() != "monoclinic":
        return ""
    q = sg.qualifier.lstrip("-")
    return q[:1] if q[:1] in ("a", "b", "c") else "b"


def cell_constraint(sg: gemmi.SpaceGroup) -> str:
    """What the cell of setting ``sg`` must satisfy, in words (``"a = b, α = β = 90°, γ = 120°"``)."""
    system = crystal_system(sg)
    if system == "monoclinic":
        axis = unique_axis(sg)
        fixed = {"a": "β = γ = 90°", "b": "α = γ = 90°", "c": "α = β = 90°"}[axis]
        return f"unique axis {axis}: {fixed}"
    return {
        "triclinic": "any cell",
        "orthorhombic": "α = β = γ = 90°",
        "tetragonal": "a = b, α = β = γ = 90°",
        "trigonal": "hexagonal axes: a = b, α = β = 90°, γ = 120°",
        "hexagonal": "a = b, α = β = 90°, γ = 120°",
        "rhombohedral": "rhombohedral axes: a = b = c, α = β = γ",
        "cubic": "a = b = c, α = β = γ = 90°",
    }[system]


def fit_cell(sg: gemmi.SpaceGroup, cell: tuple) -> tuple | None:
    """``cell`` (a, b, c [Å], α, β, γ [°]) made exactly what setting ``sg`` requires, or None when it
    is further than :data:`CELL_LENGTH_RTOL` / :data:`CELL_ANGLE_ATOL` from that.

    Lengths that must be equal take the value of the first (b = a, c = a); angles fixed at 90° or
    120° take that value; equal rhombohedral angles take α.
    """
    a, b, c, alpha, beta, gamma = (float(x) for x in cell)
    system = crystal_system(sg)

    def same(x, y):
        return math.isclose(x, y, rel_tol=CELL_LENGTH_RTOL)

    def angle(x, y):
        return abs(x - y) <= CELL_ANGLE_ATOL

    if system == "triclinic":
        return (a, b, c, alpha, beta, gamma)
    if system == "monoclinic":
        right = {"a": (1, 2), "b": (0, 2), "c": (0, 1)}[unique_axis(sg)]
        angles = [alpha, beta, gamma]
        if not all(angle(angles[i], 90.0) for i in right):
            return None
        for i in right:
            angles[i] = 90.0
        return (a, b, c, *angles)
    if system == "orthorhombic":
        ok = all(angle(x, 90.0) for x in (alpha, beta, gamma))
        return (a, b, c, 90.0, 90.0, 90.0) if ok else None
    if system == "tetragonal":
        ok = same(a, b) and all(angle(x, 90.0) for x in (alpha, beta, gamma))
        return (a, a, c, 90.0, 90.0, 90.0) if ok else None
    if system in ("trigonal", "hexagonal"):
        ok = same(a, b) and angle(alpha, 90.0) and angle(beta, 90.0) and angle(gamma, 120.0)
        return (a, a, c, 90.0, 90.0, 120.0) if ok else None
    if system == "rhombohedral":
        ok = same(a, b) and same(a, c) and angle(alpha, beta) and angle(alpha, gamma)
        return (a, a, a, alpha, alpha, alpha) if ok else None
    ok = same(a, b) and same(a, c) and all(angle(x, 90.0) for x in (alpha, beta, gamma))
    return (a, a, a, 90.0, 90.0, 90.0) if ok else None
