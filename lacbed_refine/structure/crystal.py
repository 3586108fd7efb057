"""Cubic crystal model: CIF in and out through gemmi, and symmetry expansion to the full cell.

A :class:`Crystal` holds the asymmetric unit (one :class:`Site` per CIF ``_atom_site`` row) and the
space group; :meth:`Crystal.orbits` gives, for every site, the symmetry operations that generate its
distinct positions in the conventional cell. Keeping the operations (not just the positions) lets the
refinement move a site along its symmetry-allowed directions and regenerate the cell differentiably
(:mod:`lacbed_refine.structure.parameters`).

Units: cell edge ``a`` in Å, fractional coordinates, ``b_iso`` in Å².

Positions closer than 1e-3 (fractional, per component, modulo 1) are the same position, as in the
shared cubic-CIF collection. :func:`read_cif` moves a site that lies within that tolerance of a special
position onto it exactly (e.g. 0.1249 → 0.125), so that its multiplicity, site symmetry and allowed
displacements are exact.

What :func:`read_cif` refuses (:class:`CrystalError`, one line naming the file) and what it only warns
about is listed in its docstring; the limits are :data:`CELL_EDGE_RANGE` and :data:`B_ISO_LIMITS`.

Wyckoff letters are not computed: gemmi (0.7.5) has no Wyckoff tables. A letter given in the CIF
(``_atom_site_Wyckoff_symbol``) is kept in :attr:`Site.wyckoff` and written back by :func:`write_cif`;
otherwise ``?`` is written. The site multiplicity is always written.
"""

from __future__ import annotations
from dataclasses import dataclass, field, replace
import gemmi
import numpy as np
from lacbed_refine.structure.spacegroup import POS_TOL, stabilizer, symmetry_operations, wrap_diff

#: B_iso [Å²] used for a site whose CIF gives neither B nor U (FELIX's RDebyeWallerConstant in the
#: reference runs; a typical room-temperature value for inorganic solids).
DEFAULT_B_ISO = 0.5


#: International Tables numbers of the cubic space groups.
CUBIC_SPACE_GROUPS = range(195, 231)


#: Cubic cell edges [Å] that :func:`read_cif` accepts. The smallest cubic cells are ~2.4 Å (CsCl-type
#: intermetallics, bcc metals at 2.5-3 Å); the largest cubic inorganic frameworks are ~90 Å (MIL-101).
#: Outside 1-200 Å the number is a typo or a unit slip (nm, pm), and a Bloch-wave simulation of such a
#: cell would need an absurd beam pool anyway.
CELL_EDGE_RANGE = (1.0, 200.0)


#: (warn, refuse) thresholds for B_iso [Å²]. Room-temperature inorganic solids have B of 0.1-5 Å²;
#: the shared cubic-CIF collection has 4 files of 2433 with B > 20 Å² (up to 31 Å², water and
#: rattling cations in cages), so those are read with a warning. B > 100 Å² (rms displacement
#: above 1.1 Å) does not describe a located atom and is refused.
B_ISO_LIMITS = (20.0, 100.0)


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
        crystal described from another origin. Wyckoff letters are dropped (an origin shift can
        relabel Wyckoff positions).
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
        sites = [
            replace(s, frac=tuple(np.mod(np.asarray(s.frac) + shift, 1.0)), wyckoff="")
            for s in self.sites
        ]
        return replace(self, hall=hall.hall, sites=tuple(sites), _orbits=None)

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
    pos = np.einsum("sij,j->si", rot, frac) + tra
    keep: list[int] = []
    for s in range(len(pos)):
        if not any(np.all(np.abs(wrap_diff(pos[s] - pos[k])) < POS_TOL) for k in keep):
            keep.append(s)
    return Orbit(rotations=rot[keep].copy(), translations=tra[keep].copy())
