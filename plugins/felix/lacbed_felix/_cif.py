"""``felix.cif`` for FELIX's CIFtbx reader, and FELIX's refined CIF (``<chem>_<iter>.cif``) read back.

What FELIX reads (felix-spec §1.2): the chemical formula (stripped to letters and digits, it becomes
the prefix of every output file), the cell, the space-group number (whose first letter sets the
centring rule), the ``_symmetry_equiv_pos_as_xyz`` operators (±1 coefficients and one single-digit
fraction per component; every operator is applied to every site, centring included), and per site
the label (first 5 characters), the type symbol (first 2), the Wyckoff letter (used by coordinate
refinement), x, y, z, B_iso (0 means "use the default") and occupancy (0 means 1).

The writer keeps to that: explicit operators checked by re-parsing them with FELIX's rules, short
unique labels, no ``_cell_volume`` (FELIX would keep a given volume fixed while refining the cell
edge) and no zero-occupancy rows. It writes any cell (a, b, c, α, β, γ) and any space group, and
checks the file against three more things FELIX does (``read_cif``, ``UniqueAtomPositions``):

- the reflection rule comes from the first letter of the *standard* symbol of the space-group
  number (``R`` becomes the obverse rule on hexagonal axes, ``P`` on rhombohedral ones), so a crystal
  in a setting centred otherwise is refused (:func:`felix_centring`);
- coordinates are read in single precision and the operators applied in double precision, and two
  generated atoms are merged only when their positions agree to 1e-9: at special positions with
  thirds or sixths (e.g. wurtzite's 2b, 1/3 2/3 z) the images of one atom do not agree that well and
  FELIX would count each atom several times. The writer emulates that expansion; when it would
  miscount, ``felix.cif`` lists every atom of the cell with the identity operator only (the space
  group number and symbol stay, for the reflection rule) — good for simulation, not for refining
  coordinates (:func:`format_felix_cif` ``expand=False`` refuses instead);
- two rows whose coordinates have the same sum are taken for one site, and FELIX stops when their
  occupancies add up to more than 1; such a row gets a lattice translation (x+n, y+n, z+n), which
  FELIX removes (it reduces every position modulo 1).
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import gemmi
import numpy as np

from lacbed_refine.structure.crystal import Crystal

from ._version import __version__

__all__ = [
    "felix_centring",
    "felix_chem",
    "felix_site_labels",
    "wyckoff_letters",
    "write_felix_cif",
    "format_felix_cif",
    "RefinedSite",
    "RefinedStructure",
    "read_refined_cif",
    "refined_crystal",
]

log = logging.getLogger(__name__)

# FELIX keeps 32 characters of the formula (CIFtbx string) and 5 of each label.
_CHEM_MAX = 32
_LABEL_MAX = 5


def felix_chem(crystal: Crystal) -> str:
    """The prefix FELIX gives every output file: the formula, letters and digits only (≤ 32).

    :func:`write_felix_cif` writes exactly this as ``_chemical_formula_structural``, so it is also
    the ``<chem>`` of ``<chem>_Sim_0500A_128x128/<chem>_+0+0+0.bin``.
    """
    for text in (crystal.name, crystal.formula):
        chem = "".join(ch for ch in text if ch.isascii() and ch.isalnum())
        if chem and len(chem) <= _CHEM_MAX:
            return chem
    chem = "".join(ch for ch in crystal.formula if ch.isascii() and ch.isalnum())
    return chem[:_CHEM_MAX] or "crystal"


def felix_site_labels(crystal: Crystal) -> list[str]:
    """Site labels FELIX keeps intact: ≤ 5 letters/digits, unique.

    A label that is longer, has other characters or repeats another becomes element + index
    (``O2``). Labels matter to FELIX: two sites on one position (mixed occupancy) are both kept only
    when their labels differ.
    """
    out: list[str] = []
    for i, site in enumerate(crystal.sites):
        label = site.label
        if not (label and len(label) <= _LABEL_MAX and label.isascii() and label.isalnum()) or label in out:
            n = i + 1
            label = f"{site.element}{n}"
            while label in out or len(label) > _LABEL_MAX:
                n += 1
                label = f"{site.element}{n}"[:_LABEL_MAX]
        out.append(label)
    return out


# FELIX's reflection rules (SelectionRules): the letter it takes from the space group, as a test on h, k, l.
_FELIX_RULES = {
    "P": lambda h, k, l: np.ones(np.shape(h), dtype=bool),
    "F": lambda h, k, l: ((h + k) % 2 == 0) & ((k + l) % 2 == 0) & ((l + h) % 2 == 0),
    "I": lambda h, k, l: (h + k + l) % 2 == 0,
    "A": lambda h, k, l: (k + l) % 2 == 0,
    "B": lambda h, k, l: (h + l) % 2 == 0,
    "C": lambda h, k, l: (h + k) % 2 == 0,
    "R": lambda h, k, l: (h - k + l) % 3 == 0,  # FELIX's "reverse" rule
    "V": lambda h, k, l: (-h + k + l) % 3 == 0,  # obverse
}
_RULE_NAMES = {"P": "primitive", "F": "F-centred", "I": "I-centred", "A": "A-centred", "B": "B-centred",
               "C": "C-centred", "R": "rhombohedral (reverse)", "V": "rhombohedral (obverse, hexagonal axes)"}


def felix_centring(crystal: Crystal) -> str:
    """The reflection rule FELIX applies to ``crystal``'s beam pool: ``"P"``, ``"F"``, ``"I"``,
    ``"A"``, ``"B"``, ``"C"`` or ``"V"`` (rhombohedral, obverse, on hexagonal axes).

    FELIX reads the space-group number, takes the first letter of that group's standard symbol and,
    for ``R``, uses the obverse rule when two cell axes are perpendicular (hexagonal axes) and no
    rule (``P``) otherwise (rhombohedral axes).

    Raises
    ------
    ValueError
        If the crystal's own lattice centring allows other reflections than that rule (a
        non-standard setting such as A 1 2/m 1 for No. 12, or a reverse rhombohedral setting), or
        its space group is not tabulated.
    """
    sg = crystal.spacegroup
    if sg is None:
        raise ValueError(f"{crystal.name}: Hall symbol {crystal.hall!r} matches no tabulated space group")
    letter = gemmi.find_spacegroup_by_number(sg.number).hm[0]
    if letter == "R":
        cell = crystal.cell
        axes = [cell.orth[:, i] / float(cell.orth[:, i] @ cell.orth[:, i]) for i in range(3)]
        test = float((axes[0] @ axes[1]) * (axes[1] @ axes[2]) * (axes[2] @ axes[0]))
        letter = "V" if abs(test) < 1e-9 else "P"
    from lacbed_refine.engine.beams import centring_allowed

    r = np.arange(-6, 7)
    hkl = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    rot, tra = crystal.operations()
    pure = np.all(rot == np.eye(3, dtype=rot.dtype), axis=(1, 2))
    ours = centring_allowed(hkl, np.mod(tra[pure], 1.0))
    felix = _FELIX_RULES[letter](hkl[:, 0], hkl[:, 1], hkl[:, 2])
    if not np.array_equal(ours, felix):
        raise ValueError(
            f"{crystal.name}: FELIX takes the reflection rule from space group {sg.number}'s standard symbol "
            f"({_RULE_NAMES[letter]}), but this setting ({sg.xhm()}) is centred otherwise; transform the "
            "crystal to the standard setting"
        )
    return letter


# Wyckoff positions of F-43m (No. 216), the only cubic group for which FELIX HEAD can refine atom
# coordinates (mode B): letter, multiplicity and a test on one orbit member (ITA Vol. A).
def _f43m_letter(orbit_positions: np.ndarray) -> str:
    m = len(orbit_positions)
    pos = np.mod(orbit_positions, 1.0)

    def has(point):
        d = pos - np.asarray(point)
        return bool(np.any(np.all(np.abs(d - np.rint(d)) < 1e-6, axis=1)))

    if m == 4:
        for letter, point in zip("abcd", ((0, 0, 0), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), (0.75, 0.75, 0.75))):
            if has(point):
                return letter
    if m == 16:
        return "e"
    if m == 24:
        zero = np.abs(pos - np.rint(pos)) < 1e-6
        return "f" if np.any(zero.sum(1) >= 2) else "g"
    if m == 48:
        return "h"
    if m == 96:
        return "i"
    return ""


def wyckoff_letters(crystal: Crystal) -> list[str]:
    """Each site's Wyckoff letter: the CIF's when it gave one, computed for F-43m, else ``""``.

    lacbed-refine does not carry Wyckoff tables (gemmi has none); F-43m is computed because it is
    the one cubic group whose letters FELIX HEAD uses (coordinate refinement).
    """
    out = []
    f43m = crystal.spacegroup_number == 216
    for site, orbit in zip(crystal.sites, crystal.orbits()):
        letter = site.wyckoff.strip() if len(site.wyckoff.strip()) == 1 and site.wyckoff.strip().isalpha() else ""
        if not letter and f43m:
            pos = np.einsum("mij,j->mi", orbit.rotations, np.asarray(site.frac)) + orbit.translations
            letter = _f43m_letter(pos)
        out.append(letter)
    return out


# ------------------------------------------------------------------------------------------------
# Symmetry operators as FELIX parses them
# ------------------------------------------------------------------------------------------------
def _felix_parse_operator(text: str) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation of an ``x,y,z`` operator by FELIX's rules (felix-spec §1.2).

    A component's coefficient of x (y, z) is −1 when the character before the letter is ``-``, else
    +1; its translation is the one ``n/d`` around the first ``/`` (single digits), negative when the
    character before ``n`` is ``-``.
    """
    parts = text.split(",")
    if len(parts) != 3:
        raise ValueError(f"operator {text!r} does not have three components")
    rot = np.zeros((3, 3))
    tra = np.zeros(3)
    for i, comp in enumerate(parts):
        for j, letters in enumerate(("xX", "yY", "zZ")):
            pos = min((comp.find(c) for c in letters if c in comp), default=-1)
            if pos >= 0:
                rot[i, j] = -1.0 if pos > 0 and comp[pos - 1] == "-" else 1.0
        slash = comp.find("/")
        if slash > 0 and slash < len(comp.rstrip()) - 1:
            num, den = comp[slash - 1], comp[slash + 1]
            if not (num.isdigit() and den.isdigit() and den != "0"):
                raise ValueError(f"operator {text!r}: FELIX reads only single-digit fractions")
            sign = -1.0 if slash > 1 and comp[slash - 2] == "-" else 1.0
            tra[i] = sign * int(num) / int(den)
    return rot, tra


def _operator_strings(crystal: Crystal) -> list[str]:
    """The full operator list (centring included), each checked against FELIX's parser."""
    out = []
    for op in gemmi.symops_from_hall(crystal.hall):
        text = op.triplet()
        rot = np.array(op.rot, dtype=float) / gemmi.Op.DEN
        tra = np.array(op.tran, dtype=float) / gemmi.Op.DEN
        frot, ftra = _felix_parse_operator(text)
        d = ftra - tra
        if not (np.array_equal(frot, rot) and np.allclose(d, np.rint(d))):
            raise ValueError(f"{crystal.name}: symmetry operator {text!r} would be misread by FELIX")
        out.append(text)
    return out


# ------------------------------------------------------------------------------------------------
# FELIX's reading of the atom sites, emulated (read_cif, UniqueAtomPositions)
# ------------------------------------------------------------------------------------------------
_FELIX_TINY = 1e-9  # FELIX's TINY: positions closer than this (sum of |differences|) are one atom
_SUM_MARGIN = 1e-6  # coordinate sums closer than this are kept apart (FELIX links rows within TINY)


def _float32(text: str) -> float:
    """A CIF number as FELIX holds it: read into a default (single-precision) REAL."""
    return float(np.float32(float(text)))


def _felix_operators(ops: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (S, 3, 3) and translations (S, 3) as FELIX stores them (the fraction n/d is a
    single-precision division, kept in double precision)."""
    parsed = [_felix_parse_operator(op) for op in ops]
    rot = np.array([r for r, _ in parsed], dtype=np.float64)
    tra = np.array([np.float32(t).astype(np.float64) for _, t in parsed], dtype=np.float64)
    return rot, tra


def _felix_atom_counts(labels: list[str], points: np.ndarray, rot: np.ndarray, tra: np.ndarray) -> list[int]:
    """How many atoms FELIX's ``UniqueAtomPositions`` makes of each row.

    Every operator (outer loop) is applied to every row (inner loop) in double precision, positions
    are reduced modulo 1 (values below 1e-9 set to 0), and an image is dropped only when an atom
    with the same label already lies within 1e-9 (sum of the absolute coordinate differences).

    Parameters
    ----------
    labels : list of str
        Row labels as FELIX keeps them (5 characters).
    points : ndarray, shape (n, 3)
        Coordinates as FELIX read them (:func:`_float32`).
    """
    # MATMUL(RSymMat, r) + RSymVec, summed in index order; MODULO(x, 1) = x - floor(x)
    pos = ((rot[:, None, :, 0] * points[None, :, None, 0] + rot[:, None, :, 1] * points[None, :, None, 1])
           + rot[:, None, :, 2] * points[None, :, None, 2]) + tra[:, None, :]
    pos = pos - np.floor(pos)
    pos[np.abs(pos) < _FELIX_TINY] = 0.0
    kept: dict[str, list[np.ndarray]] = {}
    counts = [0] * len(labels)
    for s in range(len(rot)):
        for i, label in enumerate(labels):
            seen = kept.setdefault(label, [])
            p = pos[s, i]
            if seen and np.any(np.abs(np.asarray(seen) - p).sum(axis=1) <= _FELIX_TINY):
                continue
            seen.append(p)
            counts[i] += 1
    return counts


def _lattice_offsets(points: np.ndarray, fractions: np.ndarray) -> list[int]:
    """An integer m per row, smallest first, such that no two rows at different positions have
    coordinate sums (after adding m to each coordinate of its row) closer than :data:`_SUM_MARGIN`:
    FELIX links rows whose sums agree to 1e-9 into one site and stops when their occupancies add up
    to more than 1. Rows at one position (a mixed site) keep their sums apart only from the others."""
    sums = points.sum(axis=1)
    shifted = np.empty(len(points))
    offsets: list[int] = []
    for i in range(len(points)):
        other = ~np.all(np.abs(fractions[:i] - fractions[i]) < 1e-9, axis=1)
        taken = shifted[:i][other]
        m = 0
        while np.any(np.abs(sums[i] + 3 * m - taken) < _SUM_MARGIN):
            m += 1
        offsets.append(m)
        shifted[i] = sums[i] + 3 * m
    return offsets


def _overfull_sites(points: np.ndarray, occupancies: list[str]) -> list[list[int]]:
    """Groups of rows FELIX's occupancy check takes for one site and finds over-full (> 1)."""
    n = len(points)
    link = [0] * n
    group = 0
    for i in range(n):
        if link[i] == 0:
            group += 1
            link[i] = group
            for j in range(i + 1, n):
                if abs(float((points[i] - points[j]).sum())) < _FELIX_TINY:
                    link[j] = group
    occ = [np.float32(_float32(o)) if _float32(o) > _FELIX_TINY else np.float32(1.0) for o in occupancies]
    bad = []
    for g in range(1, group + 1):
        total = np.float32(0.0)
        members = [i for i in range(n) if link[i] == g]
        for i in members:
            total = np.float32(total + occ[i])
        if total > np.float32(1.0):
            bad.append(members)
    return bad


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def _num(x: float) -> str:
    """A coordinate, B or occupancy: exact when short, else 8 decimals (FELIX reads single precision)."""
    x = float(x) + 0.0
    r = repr(x)
    if len(r) <= 12:
        return r
    return f"{x:.8f}".rstrip("0").rstrip(".")


def _angle(x: float) -> str:
    """A cell angle [degrees]: ``90`` for whole degrees, else as :func:`_num`."""
    x = float(x)
    return str(int(round(x))) if abs(x - round(x)) < 1e-9 else _num(x)


def _rows_text(rows: list[tuple], offsets: list[int]) -> tuple[list[str], np.ndarray, list[str]]:
    """Atom-site lines, the coordinates as FELIX reads them and the occupancy texts."""
    lines, points, occ = [], [], []
    for (label, element, letter, frac, b, o), m in zip(rows, offsets):
        xyz = [_num(float(v) + m) for v in frac]
        lines.append(f"{label} {element} {letter or '?'} {' '.join(xyz)} {_num(b)} {_num(o)}")
        points.append([_float32(t) for t in xyz])
        occ.append(_num(o))
    return lines, np.array(points, dtype=np.float64).reshape(-1, 3), occ


def format_felix_cif(crystal: Crystal, *, expand: bool | None = None) -> str:
    """The text of ``felix.cif`` for ``crystal`` (see :func:`write_felix_cif`).

    Parameters
    ----------
    crystal : Crystal
    expand : bool, optional
        None (default): the asymmetric unit and every operator, unless FELIX's single-precision
        expansion would miscount atoms, then every atom of the cell with the identity operator.
        False: refuse then (ValueError; a refinement needs the asymmetric unit). True: always every
        atom of the cell.
    """
    sg = crystal.spacegroup
    if sg is None:
        raise ValueError(f"{crystal.name}: Hall symbol {crystal.hall!r} matches no tabulated space group")
    felix_centring(crystal)
    cell = crystal.cell
    for name in ("alpha", "beta", "gamma"):
        if getattr(cell, name) <= 2 * math.pi:  # FELIX converts an angle only when it exceeds 2π
            raise ValueError(f"{crystal.name}: cell angle {name} {getattr(cell, name):g}°: FELIX takes angles of at "
                             "most 6.28 for radians and leaves them unset")
    chem = felix_chem(crystal)
    labels = felix_site_labels(crystal)
    letters = wyckoff_letters(crystal)
    ops = _operator_strings(crystal)
    formula = " ".join(re.findall(r"[A-Z][a-z]?[0-9.]*", crystal.formula)) or chem
    if cell.is_cubic:
        a = _num(cell.a)
        lengths, angles = (a, a, a), ("90", "90", "90")
    else:
        lengths = tuple(_num(x) for x in (cell.a, cell.b, cell.c))
        angles = tuple(_angle(x) for x in (cell.alpha, cell.beta, cell.gamma))
    # asymmetric-unit rows: (label, element, Wyckoff letter, frac, B, occupancy)
    rows, sites = [], []
    for i, (site, label, letter) in enumerate(zip(crystal.sites, labels, letters)):
        if site.occupancy <= 1e-9:
            log.info("%s: site %s has occupancy 0 and is left out (FELIX reads 0 as 1)", crystal.name, site.label)
            continue
        if site.b_iso > 10.0:
            warnings.warn(
                f"{crystal.name}: site {site.label} has B_iso {site.b_iso:g} Å² > 10; FELIX replaces it "
                "with RDebyeWallerConstant",
                UserWarning,
                stacklevel=3,
            )
        rows.append((label, site.element, letter, tuple(float(v) for v in site.frac), site.b_iso, site.occupancy))
        sites.append(i)
    if not rows:
        raise ValueError(f"{crystal.name}: no site with non-zero occupancy")
    orbits = crystal.orbits()
    expected = [orbits[i].multiplicity for i in sites]
    rot, tra = _felix_operators(ops)
    n_ops = len(ops)
    miscounted: list[str] = []
    if not expand:
        fractions = np.array([r[3] for r in rows], dtype=np.float64)
        offsets = _lattice_offsets(np.array([[_float32(_num(v)) for v in r[3]] for r in rows]), fractions)
        site_lines, points, occ = _rows_text(rows, offsets)
        counts = _felix_atom_counts([r[0] for r in rows], points, rot, tra)
        miscounted = [f"{r[0]} {c} times, not {m}" for r, c, m in zip(rows, counts, expected) if c != m]
        if miscounted and expand is False:
            raise ValueError(
                f"{crystal.name}: FELIX reads coordinates in single precision and would count atoms of "
                f"{'; '.join(miscounted)} through the {len(ops)} operators; it cannot refine this structure as "
                "written (simulations list every atom of the cell instead)"
            )
    if expand or miscounted:
        atoms = crystal.atoms()
        keep = [k for k in range(len(atoms.Z)) if atoms.occupancy[k] > 1e-9]
        site_label = dict(zip(range(len(labels)), labels))
        rows = [(site_label[int(atoms.site[k])], crystal.sites[int(atoms.site[k])].element, "",
                 tuple(float(v) for v in atoms.frac[k]), float(atoms.b_iso[k]), float(atoms.occupancy[k]))
                for k in keep]
        ops = ["x,y,z"]
        fractions = np.array([r[3] for r in rows], dtype=np.float64)
        offsets = _lattice_offsets(np.array([[_float32(_num(v)) for v in r[3]] for r in rows]), fractions)
        site_lines, points, occ = _rows_text(rows, offsets)
        if miscounted:
            log.info("%s: felix.cif lists all %d atoms of the cell: FELIX's single-precision expansion of the "
                     "operators would count %s", crystal.name, len(rows), "; ".join(miscounted))
    overfull = _overfull_sites(points, occ)
    if overfull:
        names = "; ".join("+".join(rows[i][0] for i in g) for g in overfull)
        raise ValueError(f"{crystal.name}: FELIX would find the sites {names} over-full (occupancies above 1 "
                         "on one position) and stop")
    lines = [
        f"# felix.cif written by lacbed-refine-felix {__version__} for FELIX (CIFtbx)",
        f"data_{chem}",
        f"_chemical_formula_structural '{chem}'",
        f"_chemical_formula_sum '{formula}'",
        f"_cell_length_a {lengths[0]}",
        f"_cell_length_b {lengths[1]}",
        f"_cell_length_c {lengths[2]}",
        f"_cell_angle_alpha {angles[0]}",
        f"_cell_angle_beta {angles[1]}",
        f"_cell_angle_gamma {angles[2]}",
        f"_symmetry_space_group_name_H-M '{sg.hm}'",
        f"_symmetry_Int_Tables_number {sg.number}",
    ]
    if expand or miscounted:
        lines += [
            "# every atom of the cell is listed, with the identity operator only: FELIX's single-precision",
            f"# expansion of the {n_ops} operators of {sg.hm} would miscount atoms at special positions",
        ]
    lines += [
        "loop_",
        "_symmetry_equiv_pos_site_id",
        "_symmetry_equiv_pos_as_xyz",
    ]
    lines += [f"{k + 1} '{op}'" for k, op in enumerate(ops)]
    lines += [
        "",
        "loop_",
        "_atom_site_label",
        "_atom_site_type_symbol",
        "_atom_site_Wyckoff_symbol",
        "_atom_site_fract_x",
        "_atom_site_fract_y",
        "_atom_site_fract_z",
        "_atom_site_B_iso_or_equiv",
        "_atom_site_occupancy",
    ]
    lines += site_lines
    return "\n".join(lines) + "\n"


def write_felix_cif(crystal: Crystal, path, *, expand: bool | None = None) -> str:
    """Write ``felix.cif`` for FELIX; returns FELIX's file prefix (:func:`felix_chem`).

    The file has ``_chemical_formula_structural`` (the prefix), the cell (a, b, c, α, β, γ), the
    space-group number and H-M symbol, the full ``_symmetry_equiv_pos_as_xyz`` loop (each operator
    checked against FELIX's parser) and one atom-site row per site: label (≤ 5 characters, unique),
    type symbol, Wyckoff letter (``?`` when unknown), x, y, z, B_iso [Å²], occupancy. Rows of
    occupancy 0 are left out (FELIX would read them as 1). When FELIX's single-precision expansion of
    the operators would miscount atoms, every atom of the cell is listed with the identity operator
    instead (see the module docstring and ``expand``).

    Parameters
    ----------
    crystal : Crystal
    path : str or os.PathLike
    expand : bool, optional
        See :func:`format_felix_cif`.

    Raises
    ------
    ValueError
        If an operator cannot be written for FELIX's parser, no site is occupied, FELIX would take
        another reflection rule than the crystal's centring (:func:`felix_centring`), sites would be
        over-full as FELIX links them, or (``expand=False``) FELIX would miscount atoms.
    """
    text = format_felix_cif(crystal, expand=expand)
    Path(path).write_text(text, encoding="ascii")
    return felix_chem(crystal)


# ------------------------------------------------------------------------------------------------
# FELIX's refined CIF
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RefinedSite:
    """One row of FELIX's refined CIF.

    Attributes
    ----------
    label, element : str
        As FELIX wrote them (labels cut to 3 characters).
    frac : tuple of 3 float
        Fractional coordinates.
    b_iso : float
        [Å²].
    occupancy : float
    su : dict
        Standard uncertainties FELIX wrote in brackets, keyed ``"x"``, ``"y"``, ``"z"``, ``"b_iso"``,
        ``"occupancy"`` (only those it gave).
    """

    label: str
    element: str
    frac: tuple[float, float, float]
    b_iso: float
    occupancy: float
    su: dict


@dataclass(frozen=True)
class RefinedStructure:
    """FELIX's refined CIF: cell and basis (felix-spec §2).

    Attributes
    ----------
    cell : tuple of 6 float
        a, b, c [Å], α, β, γ [degrees].
    spacegroup_number : int or None
    sites : tuple of RefinedSite
        In the order of the input ``felix.cif``'s occupied rows.
    iteration : int or None
        From the file name ``<chem>_<iter>.cif``.
    """

    cell: tuple[float, float, float, float, float, float]
    spacegroup_number: int | None
    sites: tuple[RefinedSite, ...]
    iteration: int | None = None


def _su_number(text: str) -> tuple[float, float | None]:
    """``0.2624(3)`` → (0.2624, 0.0003); ``1.5`` → (1.5, None)."""
    m = re.fullmatch(r"([+-]?\d*\.?\d*(?:[eE][+-]?\d+)?)(?:\((\d+)\))?", text.strip())
    if m is None or not m.group(1) or m.group(1) in "+-.":
        raise ValueError(f"{text!r} is not a number")
    value = float(m.group(1))
    if m.group(2) is None:
        return value, None
    mant = m.group(1).lower().split("e")[0]
    decimals = len(mant.split(".")[1]) if "." in mant else 0
    scale = 10.0 ** (-decimals)
    if "e" in m.group(1).lower():
        scale *= 10.0 ** int(m.group(1).lower().split("e")[1])
    return value, int(m.group(2)) * scale


def read_refined_cif(path) -> RefinedStructure:
    """Read FELIX's refined CIF (``<chem>_<iter>.cif``).

    FELIX's file is not strictly CIF (a ``loop_`` precedes the single-valued cell items), so it is
    read line by line: ``_tag value`` pairs and the ``_atom_site_*`` loop, values with bracketed
    uncertainties.

    Parameters
    ----------
    path : str or os.PathLike

    Raises
    ------
    ValueError
        If the file has no cell edge or no atom-site loop, or a value does not parse.
    """
    path = Path(path)
    # FELIX pads some strings with NUL characters (uninitialised Fortran CHARACTER)
    lines = [ln.replace("\x00", "").strip() for ln in path.read_text(encoding="latin-1").splitlines()]
    items: dict[str, str] = {}
    site_tags: list[str] = []
    rows: list[list[str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if line.lower() == "loop_":
            tags = []
            while i < len(lines) and lines[i].startswith("_") and len(lines[i].split()) == 1:
                tags.append(lines[i].lower())
                i += 1
            values = []
            while i < len(lines) and lines[i] and lines[i][0] not in "_#" and lines[i].lower() != "loop_":
                values.append([t.strip("'\"") for t in re.findall(r"'[^']*'|\"[^\"]*\"|\S+", lines[i])])
                i += 1
            if tags and tags[0].startswith("_atom_site_"):
                site_tags, rows = tags, values
        elif line.startswith("_") and len(line.split(None, 1)) == 2:
            key, value = line.split(None, 1)
            items[key.lower()] = value.strip().strip("'\"")
    for row in rows:
        if len(row) != len(site_tags):
            raise ValueError(f"{path}: atom-site row {' '.join(row)!r} has {len(row)} values for {len(site_tags)} tags")
    try:
        cell = tuple(
            _su_number(items[f"_cell_{k}"])[0]
            for k in ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")
        )
    except KeyError as exc:
        raise ValueError(f"{path}: no {exc.args[0]} in FELIX's refined CIF") from None
    if not rows:
        raise ValueError(f"{path}: no atom-site rows")
    col = {t: i for i, t in enumerate(site_tags)}
    for need in ("_atom_site_label", "_atom_site_fract_x", "_atom_site_fract_y", "_atom_site_fract_z"):
        if need not in col:
            raise ValueError(f"{path}: atom-site loop has no {need}")
    sites = []
    for row in rows:
        su: dict[str, float] = {}
        vals = {}
        for key, tag in (("x", "fract_x"), ("y", "fract_y"), ("z", "fract_z"), ("b_iso", "b_iso_or_equiv"),
                         ("occupancy", "occupancy")):
            j = col.get(f"_atom_site_{tag}")
            if j is None:
                vals[key] = 1.0 if key == "occupancy" else math.nan
                continue
            vals[key], sigma = _su_number(row[j])
            if sigma is not None:
                su[key] = sigma
        label = row[col["_atom_site_label"]]
        element = row[col["_atom_site_type_symbol"]] if "_atom_site_type_symbol" in col else label
        sites.append(
            RefinedSite(
                label=label, element=element, frac=(vals["x"], vals["y"], vals["z"]),
                b_iso=vals["b_iso"], occupancy=vals["occupancy"], su=su,
            )
        )
    number = items.get("_symmetry_int_tables_number") or items.get("_space_group_it_number")
    m = re.search(r"_(\d+)\.cif$", path.name)
    return RefinedStructure(
        cell=cell,  # type: ignore[arg-type]
        spacegroup_number=int(number) if number and number.isdigit() else None,
        sites=tuple(sites),
        iteration=int(m.group(1)) if m else None,
    )


def refined_crystal(template: Crystal, refined: RefinedStructure) -> tuple[Crystal, dict]:
    """``template`` with FELIX's refined cell and basis, and the uncertainties FELIX gave.

    Rows are matched to the template's occupied sites in order (FELIX keeps the order of
    ``felix.cif`` but cuts labels to 3 characters).

    Returns
    -------
    crystal : Crystal
    uncertainties : dict
        ``{(site_label, field): sigma}``, ready for :func:`lacbed_refine.io.cif.write_cif`.

    Raises
    ------
    ValueError
        If the number of rows or their elements do not match the template.
    """
    occupied = [i for i, s in enumerate(template.sites) if s.occupancy > 1e-9]
    if len(occupied) != len(refined.sites):
        raise ValueError(
            f"FELIX's refined CIF has {len(refined.sites)} sites, the template {template.name} has {len(occupied)}"
        )
    sites = list(template.sites)
    su = {}
    for i, row in zip(occupied, refined.sites):
        old = sites[i]
        if row.element[:2].strip().capitalize() != old.element:
            raise ValueError(f"site {i + 1}: FELIX's refined CIF has {row.element!r}, the template {old.element!r}")
        frac = tuple(float(v) % 1.0 if math.isfinite(v) else o for v, o in zip(row.frac, old.frac))
        b = row.b_iso if math.isfinite(row.b_iso) else old.b_iso
        sites[i] = replace(old, frac=frac, b_iso=float(b), occupancy=float(row.occupancy))
        for key, sigma in row.su.items():
            su[(old.label, key)] = sigma
    crystal = template.with_sites(sites)
    if template.is_cubic:  # FELIX refines the one edge of a cubic cell
        crystal = replace(crystal, a=float(refined.cell[0]))
    else:
        from lacbed_refine.structure.cell import Cell

        crystal = crystal.with_cell(Cell(*(float(x) for x in refined.cell)))
    return crystal, su
