"""Crystal model for any of the 230 space groups: CIF in and out through gemmi
(:mod:`lacbed_refine.io.cif`), and symmetry expansion to the full cell.

A :class:`Crystal` holds the unit cell (:class:`~lacbed_refine.structure.cell.Cell`, any crystal
system), the space group as a Hall symbol (any of gemmi's tabulated settings, or one of them seen from
another origin) and the asymmetric unit (one :class:`Site` per CIF ``_atom_site`` row);
:meth:`Crystal.orbits` gives, for every site, the symmetry operations that generate its distinct
positions in the conventional cell. Keeping the operations (not just the positions) lets the
refinement move a site along its symmetry-allowed directions and regenerate the cell differentiably
(:mod:`lacbed_refine.structure.parameters`).

Units: cell edges in Å and angles in degrees (:attr:`Crystal.cell`; :attr:`Crystal.a` is its edge a),
fractional coordinates, ``b_iso`` in Å². Positions are kept fractional everywhere; a conversion to Å
uses ``cell.orth`` (columns are a, b, c in FELIX's orthogonal frame: ``r_Å = cell.orth @ r_frac``).

Positions closer than 1e-3 (fractional, per component, modulo 1) are the same position, as in the
shared cubic-CIF collection. :func:`~lacbed_refine.io.cif.read_cif` moves a site that lies within that
tolerance of a special position onto it exactly (e.g. 0.1249 → 0.125), so that its multiplicity, site
symmetry and allowed displacements are exact.

What :func:`~lacbed_refine.io.cif.read_cif` refuses (:class:`CrystalError`, one line naming the file)
and what it only warns about is listed in its docstring; the limits are :data:`CELL_EDGE_RANGE`,
:data:`CELL_ANGLE_RANGE` and :data:`B_ISO_LIMITS`.

The [001] paths (the paper's surrogates, the dataset, the cubic Bloch engine) need a cubic cell; they
call :meth:`Crystal.require_cubic`, which names the crystal, its space group and cell.

Wyckoff letters are not computed: gemmi (0.7.5) has no Wyckoff tables. A letter given in the CIF
(``_atom_site_Wyckoff_symbol``) is kept in :attr:`Site.wyckoff` and written back by
:func:`~lacbed_refine.io.cif.write_cif`; otherwise ``?`` is written. The site multiplicity is always
written.
"""

from __future__ import annotations
from dataclasses import dataclass, field, replace
import gemmi
import numpy as np
from lacbed_refine.structure.atoms import Atoms
from lacbed_refine.structure.cell import Cell
from lacbed_refine.structure.spacegroup import (
    POS_TOL, cell_constraint, crystal_system, find_setting, fit_cell, setting_of, stabilizer, symmetry_operations,
    wrap_diff,
)

#: B_iso [Å²] used for a site whose CIF gives neither B nor U (FELIX's RDebyeWallerConstant in the
#: reference runs; a typical room-temperature value for inorganic solids).
DEFAULT_B_ISO = 0.5


#: International Tables numbers of the cubic space groups.
CUBIC_SPACE_GROUPS = range(195, 231)


#: Cell edges a, b, c [Å] that :func:`~lacbed_refine.io.cif.read_cif` accepts, each. The smallest
#: cells are ~2.4 Å (CsCl-type intermetallics, bcc metals at 2.5-3 Å; hexagonal metals have a ≈ 2.5 Å);
#: the largest inorganic frameworks are ~90 Å (MIL-101). Outside 1-200 Å the number is a typo or a
#: unit slip (nm, pm), and a Bloch-wave simulation of such a cell would need an absurd beam pool anyway.
CELL_EDGE_RANGE = (1.0, 200.0)


#: Cell angles α, β, γ [degrees] that :func:`~lacbed_refine.io.cif.read_cif` accepts, each. Reduced
#: cells have angles of 60-120°; monoclinic β up to ~150° and rhombohedral α down to ~25° occur in
#: real settings. An angle outside 20-160° is a typo (or radians), and the cell would be nearly flat.
CELL_ANGLE_RANGE = (20.0, 160.0)


#: (warn, refuse) thresholds for B_iso [Å²]. Room-temperature inorganic solids have B of 0.1-5 Å²;
#: the shared cubic-CIF collection has 4 files of 2433 with B > 20 Å² (up to 31 Å², water and
#: rattling cations in cages), so those are read with a warning. B > 100 Å² (rms displacement
#: above 1.1 Å) does not describe a located atom and is refused.
B_ISO_LIMITS = (20.0, 100.0)


class CrystalError(ValueError):
    """A CIF that cannot be turned into a :class:`Crystal`, a cell that does not fit the space group, or
    a non-cubic crystal given to a cubic-only path; the one-line message names the file (or crystal)
    and the reason."""


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
        Fractional coordinates in the conventional cell.
    occupancy : float
        Site occupancy in [0, 1].
    b_iso : float
        Isotropic Debye–Waller factor B [Å²] (``8π² U_iso``).
    wyckoff : str
        Wyckoff letter as given by the source CIF (``"e"``), or ``""`` when unknown. Not computed.
    """

    label: str
    element: str
    frac: tuple[float, float, float]
    occupancy: float = 1.0
    b_iso: float = DEFAULT_B_ISO
    wyckoff: str = ""

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
    """A crystal: unit cell, space group and asymmetric unit.

    ``Crystal(name, a, hall, sites)`` is a cubic crystal of edge ``a``; pass ``cell=`` for any other.

    Attributes
    ----------
    name : str
        Short name (chemical formula when the CIF gives one).
    a : float
        Cell edge a [Å] (the cubic edge of a cubic crystal); always ``cell.a``. For a cubic cell
        ``a`` rules: ``dataclasses.replace(crystal, a=x)`` rescales the cell (use :meth:`with_cell` to
        change a cell).
    hall : str
        Hall symbol of the space-group setting (fixes origin choice, axes and unique axis); a
        tabulated setting seen from another origin carries a change-of-basis suffix,
        ``"P 6c -2c (x+2/3,y+1/3,z)"``.
    sites : tuple of Site
        Asymmetric unit.
    source : str
        Where the crystal came from (a file path, or ``""``).
    cell : Cell
        The unit cell; None (the default) means the cubic cell ``Cell.cubic(a)``.

    Raises
    ------
    CrystalError
        If the cell does not fit the space group (a cubic group with a tetragonal cell, a hexagonal
        group with γ ≠ 120°, ...), or ``a`` differs from ``cell.a`` for a non-cubic cell.
    """

    name: str
    a: float
    hall: str
    sites: tuple[Site, ...]
    source: str = ""
    cell: Cell = None
    _orbits: tuple = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        cell = self.cell
        if cell is None or (cell.is_cubic and cell.a != self.a):
            cell = Cell.cubic(float(self.a))
        elif cell.a != self.a:
            raise CrystalError(
                f"{self._where}: a = {self.a!r} Å differs from cell.a = {cell.a!r} Å; give a=cell.a "
                "(or use Crystal.with_cell)"
            )
        object.__setattr__(self, "cell", cell)
        sg = self.spacegroup
        if sg is not None and fit_cell(sg, _cell_tuple(cell)) is None:
            raise CrystalError(
                f"{self._where}: cell {_cell_text(cell)} does not fit space group {sg.hm} "
                f"(No. {sg.number}, {crystal_system(sg)}: {cell_constraint(sg)})"
            )

    @property
    def _where(self) -> str:
        return self.source or self.name or "crystal"

    # -- space group ------------------------------------------------------------------------
    @property
    def spacegroup(self) -> gemmi.SpaceGroup | None:
        """gemmi's tabulated setting of :attr:`hall` (None when none matches, even after an origin
        shift)."""
        return setting_of(self.hall)

    @property
    def spacegroup_number(self) -> int:
        return self.spacegroup.number

    @property
    def spacegroup_symbol(self) -> str:
        return self.spacegroup.hm

    @property
    def crystal_system(self) -> str:
        """``"triclinic"``, ``"monoclinic"``, ``"orthorhombic"``, ``"tetragonal"``, ``"trigonal"``
        (hexagonal axes), ``"rhombohedral"`` (a trigonal R group in rhombohedral axes),
        ``"hexagonal"`` or ``"cubic"``."""
        return crystal_system(self.spacegroup)

    @property
    def volume(self) -> float:
        """Cell volume [Å³]."""
        return self.cell.volume

    @property
    def is_cubic(self) -> bool:
        """The cell is cubic (a = b = c, α = β = γ = 90°), which the [001] paths need; the space
        group may be any one that fits such a cell."""
        return self.cell.is_cubic

    def require_cubic(self, what: str) -> None:
        """Raise :class:`CrystalError` unless the cell is cubic.

        Parameters
        ----------
        what : str
            What needs the cubic cell, as the subject of the message (``"the [001] surrogates"``).

        Raises
        ------
        CrystalError
            One line: the crystal (its source file when it has one), its crystal system, space group
            and cell, and that ``what`` need a cubic cell.
        """
        if self.is_cubic:
            return
        sg = self.spacegroup
        group = f"{sg.hm} (No. {sg.number})" if sg is not None else f"Hall {self.hall!r}"
        system = crystal_system(sg) if sg is not None else "of unknown system"
        raise CrystalError(
            f"{self._where}: {self.name or 'the crystal'} is {system}, not cubic (space group {group}, "
            f"cell {_cell_text(self.cell)}); {what} need a cubic cell"
        )

    def operations(self) -> tuple[np.ndarray, np.ndarray]:
        """All space-group operations of the conventional cell, centring included.

        Returns
        -------
        rotations : ndarray, shape (S, 3, 3), int
            Acting on fractional coordinates.
        translations : ndarray, shape (S, 3), float (fractional, in [0, 1))
        """
        return symmetry_operations(self.hall)

    def site_symmetry(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The space-group operations that leave site ``index`` in place (its site-symmetry group).

        An operation (R, t) belongs to it when ``R r + t ≡ r`` (mod 1, within 1e-3), centring
        included. The translations returned absorb the lattice shift, so ``R r + t = r``.

        Parameters
        ----------
        index : int
            Index into :attr:`sites`.

        Returns
        -------
        rotations : ndarray, shape (H, 3, 3), int
            Acting on fractional coordinates.
        translations : ndarray, shape (H, 3), float (fractional)
        """
        rot, tra = self.operations()
        return stabilizer(np.asarray(self.sites[index].frac, dtype=float), rot, tra)

    # -- expansion --------------------------------------------------------------------------
    def orbits(self) -> tuple[Orbit, ...]:
        """One :class:`Orbit` per site (cached)."""
        if self._orbits is None:
            rot, tra = self.operations()
            orbits = tuple(orbit_of(np.asarray(s.frac, dtype=float), rot, tra) for s in self.sites)
            object.__setattr__(self, "_orbits", orbits)
        return self._orbits

    def atoms(self) -> Atoms:
        """The full conventional cell as arrays.

        Returns
        -------
        Atoms
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
        return Atoms(
            frac=np.concatenate(frac) if frac else np.zeros((0, 3)),
            Z=np.asarray(z, dtype=np.int64),
            occupancy=np.asarray(occ, dtype=float),
            b_iso=np.asarray(b, dtype=float),
            site=np.asarray(idx, dtype=np.int64),
        )

    def with_sites(self, sites) -> "Crystal":
        """A copy with another asymmetric unit (orbits recomputed)."""
        return replace(self, sites=tuple(sites), _orbits=None)

    def with_cell(self, cell: Cell) -> "Crystal":
        """A copy with another unit cell (``a`` follows it); fractional coordinates are kept."""
        return replace(self, a=float(cell.a), cell=cell, _orbits=None)

    def shifted(self, shift) -> "Crystal":
        """The same structure with every site translated by ``shift`` (fractional, 3-vector).

        The space-group operations are conjugated by the translation, so the result is the same
        crystal described from another origin; its Hall symbol is a tabulated one, or one with a
        change-of-basis suffix when the shifted operations are no tabulated setting. Wyckoff letters
        are dropped (an origin shift can relabel Wyckoff positions).

        Raises
        ------
        ValueError
            If ``shift`` is not a multiple of 1/24.
        """
        shift = np.asarray(shift, dtype=float)
        ops = gemmi.symops_from_hall(self.hall)
        den = 24
        tr = gemmi.Op("x,y,z")
        tr.tran = [int(round(s * den)) % den * (gemmi.Op.DEN // den) for s in shift]
        if not np.allclose(np.asarray(tr.tran) / gemmi.Op.DEN, np.mod(shift, 1.0)):
            raise ValueError(f"shift must be a multiple of 1/24, got {shift!r}")
        new_ops = gemmi.GroupOps([tr.combine(op).combine(tr.inverse()) for op in ops])
        found = find_setting(new_ops)
        if found is None:
            raise ValueError(f"shift {shift!r} gives operations that match no tabulated setting")
        sites = [
            replace(s, frac=tuple(np.mod(np.asarray(s.frac) + shift, 1.0)), wyckoff="")
            for s in self.sites
        ]
        return replace(self, hall=found[1], sites=tuple(sites), _orbits=None)

    @property
    def formula(self) -> str:
        """Cell content, e.g. ``"Mg8Al16O32"`` (occupancy-weighted)."""
        return "".join(f"{el}{_fmt_count(n)}" for el, n in _element_counts(self).items())

    @property
    def formula_sum(self) -> str:
        """Cell content as CIF's ``_chemical_formula_sum``, e.g. ``"Mg8 Al16 O32"``."""
        return " ".join(f"{el}{_fmt_count(n)}" for el, n in _element_counts(self).items())


def _element_counts(crystal: Crystal) -> dict[str, float]:
    counts: dict[str, float] = {}
    for site, orb in zip(crystal.sites, crystal.orbits()):
        counts[site.element] = counts.get(site.element, 0.0) + site.occupancy * orb.multiplicity
    return counts


def _fmt_count(n: float) -> str:
    if abs(n - round(n)) < 1e-6:
        return "" if round(n) == 1 else str(int(round(n)))
    return f"{n:.3g}"


def orbit_of(frac: np.ndarray, rot: np.ndarray, tra: np.ndarray) -> Orbit:
    """The operations (first of each set that lands on the same position, in order) that generate
    the distinct images of ``frac`` (3,) under ``rot`` (S, 3, 3) and ``tra`` (S, 3)."""
    pos = np.einsum("sij,j->si", rot, frac) + tra
    # same[s, k]: operation s puts the atom where operation k does (within POS_TOL, modulo 1);
    # one (S, S, 3) comparison instead of a Python loop over pairs (192 operations in Fd-3m)
    same = np.all(np.abs(wrap_diff(pos[:, None, :] - pos[None, :, :])) < POS_TOL, axis=-1)
    keep: list[int] = []
    taken = np.zeros(len(pos), dtype=bool)
    for s in range(len(pos)):
        if not taken[s]:
            keep.append(s)
            taken |= same[s]
    return Orbit(rotations=rot[keep].copy(), translations=tra[keep].copy())


def _cell_tuple(cell: Cell) -> tuple[float, ...]:
    return (cell.a, cell.b, cell.c, cell.alpha, cell.beta, cell.gamma)


def _cell_text(cell: Cell) -> str:
    """``a = 4.5937, b = 4.5937, c = 2.9587 Å, α = 90, β = 90, γ = 90°``."""
    return (f"a = {cell.a:g}, b = {cell.b:g}, c = {cell.c:g} Å, "
            f"α = {cell.alpha:g}, β = {cell.beta:g}, γ = {cell.gamma:g}°")
