"""Cubic crystal model: CIF in and out through gemmi, and symmetry expansion to the full cell.

A :class:`Crystal` holds the asymmetric unit (one :class:`Site` per CIF ``_atom_site`` row) and the
space group; :meth:`Crystal.orbits` gives, for every site, the symmetry operations that generate its
distinct positions in the conventional cell. Keeping the operations (not just the positions) lets the
refinement move a site along its symmetry-allowed directions and regenerate the cell differentiably.

Units: cell edge ``a`` in Å, fractional coordinates, ``b_iso`` in Å².
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace

import gemmi
import numpy as np

__all__ = [
    "CrystalError",
    "Site",
    "Crystal",
    "Orbit",
    "read_cif",
    "DEFAULT_B_ISO",
    "CUBIC_SPACE_GROUPS",
]

#: B_iso [Å²] used for a site whose CIF gives neither B nor U (FELIX's RDebyeWallerConstant in the
#: reference runs; a typical room-temperature value for inorganic solids).
DEFAULT_B_ISO = 0.5

#: International Tables numbers of the cubic space groups.
CUBIC_SPACE_GROUPS = range(195, 231)

# Two positions closer than this (fractional, per component, modulo 1) are the same position.
_POS_TOL = 1e-3


class CrystalError(ValueError):
    """A CIF that cannot be turned into a cubic :class:`Crystal`; the message names file and reason."""


@dataclass(frozen=True)
class Site:
    """One asymmetric-unit site.

    Attributes
    ----------
    label : str
        CIF ``_atom_site_label``.
    element : str
        Element symbol (``"O"``, ``"Sr"``), charge stripped.
    frac : tuple of 3 float
        Fractional coordinates in the conventional cubic cell.
    occupancy : float
        Site occupancy in [0, 1].
    b_iso : float
        Isotropic Debye–Waller factor B [Å²] (``8π² U_iso``).
    """

    label: str
    element: str
    frac: tuple[float, float, float]
    occupancy: float = 1.0
    b_iso: float = DEFAULT_B_ISO

    @property
    def atomic_number(self) -> int:
        return gemmi.Element(self.element).atomic_number


@dataclass(frozen=True)
class Orbit:
    """The distinct images of one site under the space group.

    ``rotations[k] @ frac + translations[k]`` (mod 1) is the k-th position; the operations are kept
    so that a displaced site (moved along its allowed directions) regenerates a consistent orbit.

    Attributes
    ----------
    rotations : ndarray, shape (M, 3, 3)
        Integer rotation parts acting on fractional coordinates.
    translations : ndarray, shape (M, 3)
        Fractional translation parts.
    """

    rotations: np.ndarray
    translations: np.ndarray

    @property
    def multiplicity(self) -> int:
        return len(self.rotations)


@dataclass(frozen=True)
class Crystal:
    """A cubic crystal: cell edge, space group and asymmetric unit.

    Attributes
    ----------
    name : str
        Short name (chemical formula when the CIF gives one).
    a : float
        Cubic cell edge [Å].
    hall : str
        Hall symbol of the space-group setting (fixes origin choice).
    sites : tuple of Site
        Asymmetric unit.
    source : str
        Where the crystal came from (a file path, or ``""``).
    """

    name: str
    a: float
    hall: str
    sites: tuple[Site, ...]
    source: str = ""
    _orbits: tuple = field(default=None, repr=False, compare=False)

    # -- space group ------------------------------------------------------------------------
    @property
    def spacegroup(self) -> gemmi.SpaceGroup:
        return gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(self.hall))

    @property
    def spacegroup_number(self) -> int:
        return self.spacegroup.number

    @property
    def spacegroup_symbol(self) -> str:
        return self.spacegroup.hm

    @property
    def volume(self) -> float:
        """Cell volume [Å³]."""
        return self.a**3

    def operations(self) -> tuple[np.ndarray, np.ndarray]:
        """All space-group operations of the conventional cell, centring included.

        Returns
        -------
        rotations : ndarray, shape (S, 3, 3), int
        translations : ndarray, shape (S, 3), float (fractional, in [0, 1))
        """
        return _operations(self.hall)

    # -- expansion --------------------------------------------------------------------------
    def orbits(self) -> tuple[Orbit, ...]:
        """One :class:`Orbit` per site (cached)."""
        if self._orbits is None:
            rot, tra = self.operations()
            orbits = tuple(_orbit(np.asarray(s.frac, dtype=float), rot, tra) for s in self.sites)
            object.__setattr__(self, "_orbits", orbits)
        return self._orbits

    def atoms(self) -> dict[str, np.ndarray]:
        """The full conventional cell as arrays.

        Returns
        -------
        dict with
            ``frac`` (N, 3) float64 fractional positions in [0, 1); ``Z`` (N,) int atomic numbers;
            ``occupancy`` (N,); ``b_iso`` (N,) [Å²]; ``site`` (N,) index into :attr:`sites`.
        """
        frac, z, occ, b, idx = [], [], [], [], []
        for i, (site, orb) in enumerate(zip(self.sites, self.orbits())):
            pos = np.einsum("mij,j->mi", orb.rotations, np.asarray(site.frac)) + orb.translations
            frac.append(np.mod(pos, 1.0))
            n = orb.multiplicity
            z += [site.atomic_number] * n
            occ += [site.occupancy] * n
            b += [site.b_iso] * n
            idx += [i] * n
        return {
            "frac": np.concatenate(frac) if frac else np.zeros((0, 3)),
            "Z": np.asarray(z, dtype=np.int64),
            "occupancy": np.asarray(occ, dtype=float),
            "b_iso": np.asarray(b, dtype=float),
            "site": np.asarray(idx, dtype=np.int64),
        }

    def with_sites(self, sites) -> "Crystal":
        """A copy with another asymmetric unit (orbits recomputed)."""
        return replace(self, sites=tuple(sites), _orbits=None)

    def shifted(self, shift) -> "Crystal":
        """The same structure with every site translated by ``shift`` (fractional, 3-vector).

        The space-group operations are conjugated by the translation, so the result is the same
        crystal described from another origin.
        """
        shift = np.asarray(shift, dtype=float)
        ops = gemmi.symops_from_hall(self.hall)
        den = 24
        tr = gemmi.Op("x,y,z")
        tr.tran = [int(round(s * den)) % den * (gemmi.Op.DEN // den) for s in shift]
        if not np.allclose(np.asarray(tr.tran) / gemmi.Op.DEN, np.mod(shift, 1.0)):
            raise ValueError(f"shift must be a multiple of 1/24, got {shift!r}")
        new_ops = gemmi.GroupOps([tr.combine(op).combine(tr.inverse()) for op in ops])
        hall = gemmi.find_spacegroup_by_ops(new_ops)
        if hall is None:
            raise ValueError(f"shift {shift!r} gives a setting gemmi does not tabulate")
        sites = [replace(s, frac=tuple(np.mod(np.asarray(s.frac) + shift, 1.0))) for s in self.sites]
        return replace(self, hall=hall.hall, sites=tuple(sites), _orbits=None)

    @property
    def formula(self) -> str:
        counts: dict[str, float] = {}
        for site, orb in zip(self.sites, self.orbits()):
            counts[site.element] = counts.get(site.element, 0.0) + site.occupancy * orb.multiplicity
        return "".join(f"{el}{_fmt_count(n)}" for el, n in counts.items())


def _fmt_count(n: float) -> str:
    if abs(n - round(n)) < 1e-6:
        return "" if round(n) == 1 else str(int(round(n)))
    return f"{n:.3g}"


def _operations(hall: str) -> tuple[np.ndarray, np.ndarray]:
    ops = list(gemmi.symops_from_hall(hall))
    rot = np.array([op.rot for op in ops], dtype=float) / gemmi.Op.DEN
    tra = np.mod(np.array([op.tran for op in ops], dtype=float) / gemmi.Op.DEN, 1.0)
    return np.rint(rot).astype(np.int64), tra


def _wrap_diff(d: np.ndarray) -> np.ndarray:
    return d - np.rint(d)


def _orbit(frac: np.ndarray, rot: np.ndarray, tra: np.ndarray) -> Orbit:
    pos = np.einsum("sij,j->si", rot, frac) + tra
    keep: list[int] = []
    for s in range(len(pos)):
        if not any(np.all(np.abs(_wrap_diff(pos[s] - pos[k])) < _POS_TOL) for k in keep):
            keep.append(s)
    return Orbit(rotations=rot[keep].copy(), translations=tra[keep].copy())


# ------------------------------------------------------------------------------------------------
# CIF input
# ------------------------------------------------------------------------------------------------
def _cif_number(value: str | None) -> float | None:
    """A CIF number without its uncertainty (``0.2624(3)`` → 0.2624); None for ``?``/``.``/absent."""
    if value is None or value in ("?", "."):
        return None
    try:
        return gemmi.cif.as_number(value)
    except Exception:  # gemmi raises on junk; report as missing and let the caller decide
        return None


def read_cif(path, *, default_b_iso: float = DEFAULT_B_ISO) -> Crystal:
    """Read a cubic crystal from a CIF (first data block).

    Parameters
    ----------
    path : str or os.PathLike
        CIF file.
    default_b_iso : float
        B_iso [Å²] for sites that give neither ``_atom_site_B_iso_or_equiv`` nor
        ``_atom_site_U_iso_or_equiv``.

    Raises
    ------
    CrystalError
        One line naming the file and the problem: unreadable, no atoms, unknown space group,
        non-cubic space group or cell.
    """
    path = os.fspath(path)
    where = os.path.basename(path)
    try:
        doc = gemmi.cif.read(path)
    except Exception as exc:  # gemmi's parser errors carry line numbers; keep only the first line
        raise CrystalError(f"{where}: not a readable CIF ({str(exc).splitlines()[0]})") from None
    if len(doc) == 0:
        raise CrystalError(f"{where}: no data block")
    block = doc[0]
    try:
        small = gemmi.make_small_structure_from_block(block)
    except Exception as exc:
        raise CrystalError(f"{where}: cannot read structure ({exc})") from None
    return _crystal_from_small(small, block, path, default_b_iso=default_b_iso)


def _spacegroup(small, block, where) -> gemmi.SpaceGroup:
    sg = None
    if small.symops:
        try:
            ops = gemmi.GroupOps([gemmi.Op(s) for s in small.symops])
        except Exception as exc:
            raise CrystalError(f"{where}: unreadable symmetry operator ({exc})") from None
        sg = gemmi.find_spacegroup_by_ops(ops)
        if sg is None:
            raise CrystalError(f"{where}: symmetry operators match no tabulated space-group setting")
    elif small.spacegroup_hall:
        sg = gemmi.find_spacegroup_by_ops(gemmi.symops_from_hall(small.spacegroup_hall))
    if sg is None and small.spacegroup_hm:
        sg = gemmi.find_spacegroup_by_name(small.spacegroup_hm)
    if sg is None and small.spacegroup_number:
        sg = gemmi.find_spacegroup_by_number(small.spacegroup_number)
    if sg is None:
        raise CrystalError(f"{where}: no space group (no operators, symbol or number)")
    return sg


def _crystal_from_small(small, block, path, *, default_b_iso) -> Crystal:
    where = os.path.basename(path)
    sg = _spacegroup(small, block, where)
    if sg.number not in CUBIC_SPACE_GROUPS:
        raise CrystalError(
            f"{where}: space group {sg.hm} (No. {sg.number}) is not cubic; "
            "lacbed-refine handles cubic groups 195-230 only"
        )
    cell = small.cell
    if not (
        math.isclose(cell.a, cell.b, rel_tol=1e-4)
        and math.isclose(cell.a, cell.c, rel_tol=1e-4)
        and all(math.isclose(x, 90.0, abs_tol=1e-3) for x in (cell.alpha, cell.beta, cell.gamma))
    ):
        raise CrystalError(f"{where}: cell {cell} is not cubic although the space group is {sg.hm}")
    if not cell.a > 0:
        raise CrystalError(f"{where}: no cell edge (_cell_length_a)")
    if len(small.sites) == 0:
        raise CrystalError(f"{where}: no atom sites")

    # gemmi reports a missing U as 0; read the columns ourselves to tell "absent" from "zero".
    b_col = block.find_values("_atom_site_B_iso_or_equiv")
    u_col = block.find_values("_atom_site_U_iso_or_equiv")
    labels = list(block.find_values("_atom_site_label"))
    sites = []
    for i, s in enumerate(small.sites):
        if s.element == gemmi.Element("X") or s.element.atomic_number == 0:
            raise CrystalError(f"{where}: site {s.label!r} has no known element ({s.type_symbol!r})")
        row = labels.index(s.label) if s.label in labels else i
        b = _cif_number(b_col[row]) if len(b_col) > row else None
        if b is None:
            u = _cif_number(u_col[row]) if len(u_col) > row else None
            b = 8.0 * math.pi**2 * u if u is not None else None
        if b is None:
            b = default_b_iso
        if b < 0:
            raise CrystalError(f"{where}: site {s.label!r} has negative B_iso {b:g} Å²")
        occ = float(s.occ)
        if not 0.0 <= occ <= 1.0 + 1e-6:
            raise CrystalError(f"{where}: site {s.label!r} has occupancy {occ:g} outside [0, 1]")
        frac = tuple(float(np.mod(x, 1.0)) for x in (s.fract.x, s.fract.y, s.fract.z))
        sites.append(Site(label=s.label, element=s.element.name, frac=frac, occupancy=min(occ, 1.0), b_iso=b))

    name = _formula_name(block) or small.name or where
    return Crystal(name=name, a=float(cell.a), hall=sg.hall, sites=tuple(sites), source=path)


def _formula_name(block) -> str:
    for tag in ("_chemical_formula_structural", "_chemical_formula_sum", "_chemical_formula_iupac"):
        v = block.find_value(tag)
        if v and v not in ("?", "."):
            return "".join(ch for ch in gemmi.cif.as_string(v) if ch.isalnum() or ch == ".")
    return ""
