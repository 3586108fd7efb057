"""``felix.cif`` for FELIX's CIFtbx reader, and FELIX's refined CIF (``<chem>_<iter>.cif``) read back.

What FELIX reads (felix-spec §1.2): the chemical formula (stripped to letters and digits, it becomes
the prefix of every output file), the cell, the space-group number (whose first letter sets the
centring rule), the ``_symmetry_equiv_pos_as_xyz`` operators (±1 coefficients and one single-digit
fraction per component; every operator is applied to every site, centring included), and per site
the label (first 5 characters), the type symbol (first 2), the Wyckoff letter (used by coordinate
refinement), x, y, z, B_iso (0 means "use the default") and occupancy (0 means 1).

The writer keeps to that: explicit operators checked by re-parsing them with FELIX's rules, short
unique labels, no ``_cell_volume`` (FELIX would keep a given volume fixed while refining the cell
edge) and no zero-occupancy rows.
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
# Writing
# ------------------------------------------------------------------------------------------------
def _num(x: float) -> str:
    """A coordinate, B or occupancy: exact when short, else 8 decimals (FELIX reads single precision)."""
    x = float(x) + 0.0
    r = repr(x)
    if len(r) <= 12:
        return r
    return f"{x:.8f}".rstrip("0").rstrip(".")


def format_felix_cif(crystal: Crystal) -> str:
    """The text of ``felix.cif`` for ``crystal`` (see :func:`write_felix_cif`)."""
    sg = crystal.spacegroup
    if sg is None:
        raise ValueError(f"{crystal.name}: Hall symbol {crystal.hall!r} matches no tabulated space group")
    chem = felix_chem(crystal)
    labels = felix_site_labels(crystal)
    letters = wyckoff_letters(crystal)
    ops = _operator_strings(crystal)
    formula = " ".join(re.findall(r"[A-Z][a-z]?[0-9.]*", crystal.formula)) or chem
    a = _num(crystal.a)
    lines = [
        f"# felix.cif written by lacbed-refine-felix {__version__} for FELIX (CIFtbx)",
        f"data_{chem}",
        f"_chemical_formula_structural '{chem}'",
        f"_chemical_formula_sum '{formula}'",
        f"_cell_length_a {a}",
        f"_cell_length_b {a}",
        f"_cell_length_c {a}",
        "_cell_angle_alpha 90",
        "_cell_angle_beta 90",
        "_cell_angle_gamma 90",
        f"_symmetry_space_group_name_H-M '{sg.hm}'",
        f"_symmetry_Int_Tables_number {sg.number}",
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
    kept = 0
    for site, label, letter in zip(crystal.sites, labels, letters):
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
        x, y, z = (_num(v) for v in site.frac)
        lines.append(
            f"{label} {site.element} {letter or '?'} {x} {y} {z} {_num(site.b_iso)} {_num(site.occupancy)}"
        )
        kept += 1
    if kept == 0:
        raise ValueError(f"{crystal.name}: no site with non-zero occupancy")
    return "\n".join(lines) + "\n"


def write_felix_cif(crystal: Crystal, path) -> str:
    """Write ``felix.cif`` for FELIX; returns FELIX's file prefix (:func:`felix_chem`).

    The file has ``_chemical_formula_structural`` (the prefix), the cell, the space-group number and
    H-M symbol, the full ``_symmetry_equiv_pos_as_xyz`` loop (each operator checked against FELIX's
    parser) and one atom-site row per site: label (≤ 5 characters, unique), type symbol, Wyckoff
    letter (``?`` when unknown), x, y, z, B_iso [Å²], occupancy. Rows of occupancy 0 are left out
    (FELIX would read them as 1).

    Parameters
    ----------
    crystal : Crystal
    path : str or os.PathLike

    Raises
    ------
    ValueError
        If an operator cannot be written for FELIX's parser, or no site is occupied.
    """
    text = format_felix_cif(crystal)
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
    """``template`` with FELIX's refined cell edge and basis, and the uncertainties FELIX gave.

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
    crystal = replace(template.with_sites(sites), a=float(refined.cell[0]))
    return crystal, su
