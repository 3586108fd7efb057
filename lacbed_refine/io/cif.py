"""CIF in and out through gemmi.

:func:`read_cif` gives a :class:`~lacbed_refine.structure.crystal.Crystal`; what it refuses
(:class:`~lacbed_refine.structure.crystal.CrystalError`, one line naming the file) and what it only
warns about is listed in its docstring. :func:`write_cif` writes a crystal (with standard
uncertainties when given) atomically.
"""

from __future__ import annotations
import gzip
import math
import os
import re
import warnings
import zlib
from collections import Counter
from dataclasses import replace
import gemmi
import numpy as np
from lacbed_refine.version import __version__
from lacbed_refine.structure.cell import Cell
from lacbed_refine.structure.crystal import (
    B_ISO_LIMITS, CELL_ANGLE_RANGE, CELL_EDGE_RANGE, Crystal, CrystalError, DEFAULT_B_ISO, Site, orbit_of,
)
from lacbed_refine.structure.spacegroup import (
    POS_TOL, cell_constraint, crystal_system, find_setting, fit_cell, shared_position_groups,
    snap_to_special, symmetry_operations, wrap_diff,
)

# Summed occupancy of the rows sharing one position may exceed 1 by this much (rounding in the
# source); such groups are rescaled to sum to 1. More is an error.
_OCC_EXCESS_TOL = 0.05


# Groups that ITA tabulates with two origin choices (24 of them: orthorhombic, tetragonal, cubic).
_TWO_ORIGIN_GROUPS = frozenset(sg.number for sg in gemmi.spacegroup_table() if sg.ext in ("1", "2"))


# Fields that write_cif accepts in ``uncertainties``.
_SU_FIELDS = ("x", "y", "z", "b_iso", "occupancy")


# ------------------------------------------------------------------------------------------------
# CIF input
# ------------------------------------------------------------------------------------------------
def _cif_number(value: str | None) -> float | None:
    """A CIF number without its uncertainty (``0.2624(3)`` → 0.2624); None for ``?``/``.``/absent
    and for text that is not a number."""
    if value is None or value in ("?", "."):
        return None
    try:
        x = gemmi.cif.as_number(value)
        if math.isnan(x) and value[:1] in ("'", '"'):  # a quoted number, '0.5', as some programs write
            x = gemmi.cif.as_number(gemmi.cif.as_string(value))
    except Exception:  # gemmi raises on junk; report as missing and let the caller decide
        return None
    return None if math.isnan(x) else x


def _given_number(value: str | None, what: str, where: str) -> float | None:
    """A CIF number, None when absent or ``?``/``.``; text that is present but not a finite number
    (``nan``, ``inf``, ``1e400``, ``abc``) raises :class:`CrystalError` naming ``what``."""
    if value is None or value in ("?", "."):
        return None
    x = _cif_number(value)
    if x is None or not math.isfinite(x):
        raise CrystalError(f"{where}: {what} {_shown(value)} is not a number")
    return x


def _shown(value: str, limit: int = 40) -> str:
    """A CIF value for a one-line message: quoted, control characters escaped, long text cut."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


_CELL_TAGS = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")


def _read_cell(block, where: str) -> tuple[float, ...]:
    """(a, b, c [Å], α, β, γ [°]) from the block's own ``_cell_*`` items, every one required.

    gemmi substitutes a unit cell (1 Å, 90°) when the items are missing, so they are read here to
    tell "absent" from "1".
    """
    cell = []
    for tag in _CELL_TAGS:
        name = f"_cell_{tag}"
        raw = block.find_value(name)
        if raw is None:
            raise CrystalError(f"{where}: no {name} (the cell needs _cell_length_a/b/c and _cell_angle_alpha/beta/gamma)")
        if raw in ("?", "."):
            raise CrystalError(f"{where}: {name} is {_shown(raw)} (unknown); the cell must be given")
        x = _cif_number(raw)
        if x is None or not math.isfinite(x):
            raise CrystalError(f"{where}: {name} {_shown(raw)} is not a number")
        if tag.startswith("length") and not x > 0:
            raise CrystalError(f"{where}: {name} {_shown(raw)} must be a positive length (Å)")
        lo, hi = CELL_ANGLE_RANGE
        if tag.startswith("angle") and not lo <= x <= hi:
            raise CrystalError(
                f"{where}: {name} {_shown(raw)} must be an angle between {lo:g} and {hi:g} degrees"
            )
        cell.append(x)
    return tuple(cell)


def _cif_text_of(path: str) -> str:
    """The file as text: gunzipped when gzip-compressed, a UTF-8 byte-order mark dropped.

    CIF 1.1 is ASCII and CIF 2.0 is UTF-8; other encodings (Latin-1, Windows-1252) are refused
    rather than guessed, because a guess can silently change a label or a symbol.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] == b"\x1f\x8b":  # gzip magic; gemmi.cif.read() accepts .cif.gz, so this reader does too
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise CrystalError(f"{path}: not a readable gzip-compressed CIF ({exc})") from None
    if raw[:3] == b"\xef\xbb\xbf":
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise CrystalError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x}); a CIF is ASCII or UTF-8, "
            "convert it first (e.g. iconv -f latin1 -t utf-8)"
        ) from None


def _choose_block(doc, path: str):
    """The first block with atom sites and a cell edge (else the first with atom sites), and a
    warning text naming it and the other blocks with atom sites ("" when there are none)."""
    candidates = [b for b in doc if b.find_values("_atom_site_fract_x")]
    if not candidates:
        raise CrystalError(f"{path}: no atom sites (no _atom_site_fract_x loop)")
    with_cell = [b for b in candidates if _has_value(b, "_cell_length_a")]
    block = with_cell[0] if with_cell else candidates[0]
    others = [b.name for b in candidates if b is not block]
    note = ""
    if others:
        note = (
            f"{path}: {len(candidates)} data blocks hold atom sites; used data block {block.name!r} (the first "
            f"with atom sites and a cell), ignored {', '.join(repr(n) for n in others)}"
        )
    return block, note


def _has_value(block, tag: str) -> bool:
    value = block.find_value(tag)
    return value is not None and value not in ("?", ".")


def find_cifs(folder, *, option: str | None = None) -> list:
    """Every ``*.cif`` file under ``folder`` (recursively, any case of the suffix), sorted.

    Raises
    ------
    ValueError
        One line naming ``option`` (when given) and the folder: not a folder, or no CIF in it.
    """
    from pathlib import Path

    root = Path(folder)
    name = f"{option} {folder}" if option else str(folder)
    if not root.is_dir():
        raise ValueError(f"{name}: not a folder of CIFs")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".cif" and p.is_file())
    if not files:
        raise ValueError(f"{name}: no .cif files found")
    return files


def read_cif(path, *, default_b_iso: float = DEFAULT_B_ISO) -> Crystal:
    """Read a crystal of any of the 230 space groups from a CIF.

    The structure comes from the first data block that has atom sites (``_atom_site_fract_x``) and
    a cell edge (``_cell_length_a``), else from the first with atom sites. Blocks without atom sites
    (a journal CIF's publication block) are skipped silently; when other blocks also hold atom sites,
    they are ignored and a ``UserWarning`` names the block used and those ignored. The file may be
    gzip-compressed and must be ASCII or UTF-8 (a byte-order mark is allowed).

    The space group comes from the symmetry operators when the file lists them (centring
    translations are added from the symbol if the list lacks them; operators of a tabulated setting
    seen from another origin are kept as they are, with a Hall symbol that has a change-of-basis
    suffix), else from the Hall symbol, else from the Hermann–Mauguin symbol, else from the number.
    With a symbol or number: an origin choice given as ``:1``/``:2``, ``S``/``Z`` or
    ``_space_group_IT_coordinate_system_code`` (``1``, ``2``; also ``h``/``r`` for the axes of an R
    group and ``b1``, ``-c1``, ... for a monoclinic setting) is honoured; an R group takes hexagonal
    axes (``H``) unless the cell is rhombohedral (a = b = c, α = β = γ ≠ 90°), so a rhombohedral group
    given in hexagonal axes stays in hexagonal axes; a short monoclinic symbol (``P 21/c``) takes the
    unique axis b unless the cell has its oblique angle elsewhere. For a group with two origin
    choices and nothing that decides between them, the choice with the larger shortest interatomic
    distance is taken and a ``UserWarning`` says so.

    The cell must fit the space group's crystal system (equal edges within a relative 1e-4, fixed
    angles within 1e-3°); it is then made exact (b = a for a tetragonal cell, γ = 120° for a
    hexagonal one, ...).

    B_iso comes from ``_atom_site_B_iso_or_equiv``, else ``8π² U_iso_or_equiv``, else from the
    trace of the anisotropic U, else ``default_b_iso``. Rows sharing one position (mixed occupancy)
    may sum to at most 1.05 and are rescaled to sum to 1 when above 1.

    Parameters
    ----------
    path : str or os.PathLike
        CIF file.
    default_b_iso : float
        B_iso [Å²] for sites that give no displacement parameter; finite, in [0, 100].

    Returns
    -------
    crystal : Crystal
        Sites snapped onto special positions within 1e-3 (fractional).

    Raises
    ------
    CrystalError
        One line naming the file and the problem, before any symmetry work: not UTF-8, unreadable
        or empty; no atoms; a missing, unknown (``?``), non-numeric, zero or negative cell length or
        angle; a cell edge outside :data:`CELL_EDGE_RANGE` (1-200 Å, each of a, b, c), an angle
        outside :data:`CELL_ANGLE_RANGE` (20-160°), angles that give no positive volume; unknown
        element; unknown space group; a cell that does not fit the space group's crystal system (a
        cubic group with c ≠ a, a hexagonal group with γ ≠ 120°); a site label used twice (``--fix LABEL`` would hold
        both); a coordinate, B, U or occupancy that is given but not a finite number; negative B,
        B above 100 Å² (:data:`B_ISO_LIMITS`); occupancy outside [0, 1].
    ValueError
        If ``default_b_iso`` is not a finite number in [0, 100] Å².
    FileNotFoundError
        If ``path`` does not exist (other ``OSError``\\ s, e.g. permission denied, pass through).

    Warns
    -----
    UserWarning
        Legal but suspicious input: a site with B_iso above 20 Å²; other data blocks with atom
        sites ignored; a two-origin space group without an origin choice; operators that disagree
        with the declared symbol.
    """
    default_b_iso = float(default_b_iso)
    if not 0.0 <= default_b_iso <= B_ISO_LIMITS[1]:
        raise ValueError(f"default_b_iso must be a finite B in [0, {B_ISO_LIMITS[1]:g}] Å², got {default_b_iso!r}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such CIF file")
    text = _cif_text_of(path)
    try:
        doc = gemmi.cif.read_string(text)
    except Exception as exc:  # gemmi's parser errors carry line numbers; keep only the first line
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        msg = re.sub(r"^string:", "line ", msg)  # read_string names the source "string"
        raise CrystalError(f"{path}: not a readable CIF ({msg})") from None
    if len(doc) == 0:
        raise CrystalError(f"{path}: no data block (empty file?)")
    block, block_note = _choose_block(doc, path)
    cell = _read_cell(block, path)
    try:
        small = gemmi.make_small_structure_from_block(block)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CrystalError(f"{path}: cannot read structure ({msg})") from None
    crystal, notes = _crystal_from_small(small, block, path, cell=cell, default_b_iso=default_b_iso)
    for note in [block_note, *notes]:
        if note:
            warnings.warn(note, UserWarning, stacklevel=2)
    return crystal


def _split_origin(hm: str) -> tuple[str, str]:
    """``'F d -3 m :2'`` → (``'F d -3 m'``, ``'2'``); ``S``/``Z`` suffixes map to 1/2."""
    hm = hm.strip()
    m = re.match(r"^(.*?)\s*:\s*([12])$", hm)
    if m:
        return m.group(1), m.group(2)
    m = re.match(r"^(.*\S)\s+([SZ])$", hm)
    if m:
        return m.group(1), "1" if m.group(2) == "S" else "2"
    return hm, ""


def _spacegroup(small, block, sites_frac, sites_occ, cell, where) -> tuple[gemmi.SpaceGroup, str]:
    """(tabulated setting, Hall symbol of the crystal's exact operations); see :func:`read_cif`."""
    hm, origin = _split_origin(small.spacegroup_hm or "")
    code = block.find_value("_space_group.IT_coordinate_system_code") or block.find_value(
        "_space_group_IT_coordinate_system_code"
    )
    code = "" if code in (None, "?", ".") else gemmi.cif.as_string(code).strip()
    if not origin and code in ("1", "2"):
        origin = code
    declared = None
    if small.spacegroup_hall:
        try:
            declared = find_setting(gemmi.symops_from_hall(small.spacegroup_hall))
        except Exception:  # gemmi raises on a malformed symbol; reported below if nothing else decides
            declared = None
    if declared is None and hm:
        sg = _setting_by_name(hm, origin, code, cell)
        declared = None if sg is None else (sg, sg.hall)

    if small.symops:
        try:
            ops = gemmi.GroupOps([gemmi.Op(s) for s in small.symops])
        except Exception as exc:
            raise CrystalError(f"{where}: unreadable symmetry operator ({exc})") from None
        found = find_setting(ops)
        if declared is not None and (found is None or found[0].number != declared[0].number):
            # Some files list the operators without the centring translations of their symbol.
            centred = gemmi.GroupOps([gemmi.Op(s) for s in small.symops])
            centred.cen_ops = gemmi.symops_from_hall(declared[1]).cen_ops
            with_centring = find_setting(centred)
            if with_centring is not None and with_centring[0].number == declared[0].number:
                return with_centring
        if found is None:
            raise CrystalError(
                f"{where}: symmetry operators match no tabulated space-group setting, "
                "nor one with its origin shifted by a multiple of 1/24"
            )
        if declared is not None and found[0].number != declared[0].number:
            warnings.warn(
                f"{where}: the symmetry operators give {found[0].hm} (No. {found[0].number}) but the file "
                f"declares {declared[0].hm} (No. {declared[0].number}); using the operators",
                UserWarning,
                stacklevel=5,
            )
        return found
    if small.spacegroup_hall:
        if declared is None:
            raise CrystalError(f"{where}: unknown Hall symbol {small.spacegroup_hall!r}")
        return declared
    if declared is not None:
        sg = declared[0]
        if origin or sg.number not in _TWO_ORIGIN_GROUPS or sg.ext not in ("1", "2"):
            return declared
        return _choose_origin(sg, sites_frac, sites_occ, cell, where)
    if hm:
        raise CrystalError(f"{where}: unknown space-group symbol {hm!r}")
    if small.spacegroup_number:
        sg = gemmi.find_spacegroup_by_number(small.spacegroup_number)
        if sg is not None:
            sg = _axes_for_cell(sg, cell, lambda other: other.hm == sg.hm)
            if sg.number in _TWO_ORIGIN_GROUPS and sg.ext in ("1", "2"):
                return _choose_origin(sg, sites_frac, sites_occ, cell, where)
            return sg, sg.hall
    raise CrystalError(f"{where}: no space group (no operators, Hall or H-M symbol, or number)")


def _setting_by_name(hm: str, origin: str, code: str, cell: tuple) -> gemmi.SpaceGroup | None:
    """The setting a Hermann–Mauguin symbol names, given the origin choice, the
    ``IT_coordinate_system_code`` and the cell (which decides R-group axes and, for a short
    monoclinic symbol, the unique axis)."""
    alpha, gamma = cell[3], cell[5]
    sg = gemmi.find_spacegroup_by_name(f"{hm}:{origin}" if origin else hm, alpha, gamma)
    if sg is None and origin:
        sg = gemmi.find_spacegroup_by_name(hm, alpha, gamma)
    if sg is None:
        return None
    same = [s for s in gemmi.spacegroup_table() if s.number == sg.number]
    if code.upper() in ("H", "R") and sg.ext in ("H", "R"):
        return next(s for s in same if s.hm == sg.hm and s.ext == code.upper())
    if code and sg.crystal_system_str() == "monoclinic":
        chosen = [s for s in same if s.qualifier == code]
        if chosen:
            return chosen[0]
    given = "".join(hm.split())
    return _axes_for_cell(sg, cell, lambda other: other.hm == sg.hm or _short_symbol(other) == given)


def _axes_for_cell(sg: gemmi.SpaceGroup, cell: tuple, same_symbol) -> gemmi.SpaceGroup:
    """``sg``, or when the cell does not fit it, the first other setting of the same group for which
    ``same_symbol(setting)`` holds and that the cell fits (R groups: hexagonal or rhombohedral axes;
    a short monoclinic symbol: the unique axis)."""
    if fit_cell(sg, cell) is not None:
        return sg
    for other in gemmi.spacegroup_table():
        if other.number == sg.number and same_symbol(other) and fit_cell(other, cell) is not None:
            return other
    return sg


def _short_symbol(sg: gemmi.SpaceGroup) -> str:
    """A monoclinic full symbol without its 1s (``P 1 1 21/b`` → ``P21/b``); others as written."""
    parts = sg.hm.split()
    if sg.crystal_system_str() == "monoclinic" and len(parts) == 4:
        parts = [parts[0]] + [p for p in parts[1:] if p != "1"]
    return "".join(parts)


def _choose_origin(declared: gemmi.SpaceGroup, sites_frac: np.ndarray, sites_occ, cell: tuple,
                   where: str) -> tuple[gemmi.SpaceGroup, str]:
    """Pick origin choice 1 or 2 for a file that does not say which.

    A setting in which rows pile up on one position beyond full occupancy loses. Otherwise the
    per-site nearest-neighbour distances [Å], sorted, are compared lexicographically and the setting
    with the longer ones wins (a wrong origin usually creates short contacts); a full tie gives
    origin choice 1, gemmi's default. On the 561 two-origin files of the shared cubic-CIF
    collection, stripped of operators and Hall symbol, this picks the file's own setting 549 times.
    """
    number = declared.number
    settings = [sg for sg in gemmi.spacegroup_table()
                if sg.number == number and sg.hm == declared.hm and sg.ext in ("1", "2")]
    orth = Cell(*cell).orth
    scores = []
    for sg in settings:
        rot, tra = symmetry_operations(sg.hall)
        snapped = [snap_to_special(r, rot, tra) for r in sites_frac]
        fits = not any(
            sum(sites_occ[i] for i in group) > 1.0 + _OCC_EXCESS_TOL
            for group in shared_position_groups(snapped, rot, tra)
        )
        pos = []
        for r in snapped:
            orb = orbit_of(r, rot, tra)
            pos.append(np.einsum("mij,j->mi", orb.rotations, r) + orb.translations)
        scores.append((fits, tuple(np.round(sorted(_nearest_neighbours(pos, orth)), 6))))
    best = max(range(len(settings)), key=lambda k: scores[k])
    other = 1 - best
    warnings.warn(
        f"{where}: space group {settings[best].hm} (No. {number}) given without origin choice or "
        f"operators; took origin choice {settings[best].ext} (shortest distance "
        f"{scores[best][1][0]:.3g} Å vs {scores[other][1][0]:.3g} Å"
        f"{'' if scores[other][0] else ' and over-full shared positions'} for choice "
        f"{settings[other].ext})",
        UserWarning,
        stacklevel=5,
    )
    return settings[best], settings[best].hall


def _nearest_neighbours(positions: list[np.ndarray], orth: np.ndarray) -> list[float]:
    """Per site, the distance [Å] from its first position to the nearest other atom (``orth``: the
    cell's fractional → Cartesian matrix, columns a, b, c)."""
    everything = np.concatenate(positions)
    lattice = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)
    out = []
    for pos in positions:
        d = wrap_diff(pos[0][None, :] - everything)  # (N, 3)
        cart = (d[:, None, :] + lattice[None, :, :]) @ orth.T  # (N, 27, 3)
        dist = np.sqrt(np.sum(cart * cart, axis=-1)).ravel()
        dist = dist[dist > np.linalg.norm(orth, axis=0).max() * math.sqrt(3) * POS_TOL]
        out.append(float(dist.min()))
    return out


def _element(site, where) -> str:
    el = site.element
    if el.atomic_number == 0:
        raise CrystalError(
            f"{where}: site {site.label!r} has no known element (type symbol {site.type_symbol!r})"
        )
    return "H" if el.name == "D" else el.name


def _crystal_from_small(small, block, path, *, cell, default_b_iso) -> tuple[Crystal, list[str]]:
    """The :class:`Crystal` of one block, and the warnings to give once it is accepted (giving them
    only then keeps a refused file from also warning)."""
    where = path
    notes: list[str] = []
    lo, hi = CELL_EDGE_RANGE
    for axis, length in zip("abc", cell[:3]):
        if not lo <= length <= hi:
            raise CrystalError(
                f"{where}: cell edge {axis} = {length:g} Å is outside {lo:g}-{hi:g} Å, the range lacbed-refine "
                "accepts (a typo, or nm/pm for Å?)"
            )
    try:
        Cell(*cell)
    except ValueError as exc:  # angles that close no cell (e.g. α = β = γ = 150°)
        raise CrystalError(f"{where}: {exc} (no positive volume)") from None
    n_rows = len(small.sites)
    if n_rows == 0:
        raise CrystalError(f"{where}: no atom sites")
    # --fix LABEL, the uncertainties and the refined CIF name sites by label: two rows with one
    # label would be held or reported together without anyone asking for it.
    counts = Counter(s.label for s in small.sites)
    for label, count in counts.items():
        if count > 1:
            raise CrystalError(
                f"{where}: site label {label!r} is used by {count} rows; labels must be unique "
                "(--fix and the refined CIF name sites by label)"
            )
    fracs = np.array([[s.fract.x, s.fract.y, s.fract.z] for s in small.sites], dtype=float)
    for s, r in zip(small.sites, fracs):
        if not np.all(np.isfinite(r)):
            raise CrystalError(f"{where}: site {s.label!r} has no numeric fractional coordinates")
    fracs = np.mod(fracs, 1.0)

    # gemmi reports a missing U as 0 and a missing occupancy as 1, and junk as either; read the
    # columns ourselves to tell "absent" from "zero" from "not a number". gemmi keeps one site per
    # _atom_site row, in file order.
    cols = {
        tag: _column(block, tag, n_rows, where)
        for tag in (
            "_atom_site_B_iso_or_equiv",
            "_atom_site_U_iso_or_equiv",
            "_atom_site_occupancy",
            "_atom_site_Wyckoff_symbol",
        )
    }
    b_values, occs = [], []
    for i, s in enumerate(small.sites):
        b, note = _site_b(s, cols["_atom_site_B_iso_or_equiv"][i], cols["_atom_site_U_iso_or_equiv"][i],
                          default_b_iso, where)
        if note:
            notes.append(note)
        b_values.append(b)
        occ = _given_number(cols["_atom_site_occupancy"][i], f"site {s.label!r}: _atom_site_occupancy", where)
        occ = 1.0 if occ is None else occ
        if not 0.0 <= occ <= 1.0 + 1e-6:
            raise CrystalError(f"{where}: site {s.label!r} has occupancy {occ:g} outside [0, 1]")
        occs.append(min(occ, 1.0))
    elements = [_element(s, where) for s in small.sites]

    sg, hall = _spacegroup(small, block, fracs, occs, cell, where)
    exact = fit_cell(sg, cell)
    if exact is None:
        raise CrystalError(
            f"{where}: cell ({', '.join(f'{x:g}' for x in cell)}) is not {crystal_system(sg)} although the "
            f"space group is {sg.hm} (No. {sg.number}: {cell_constraint(sg)})"
        )
    rot, tra = symmetry_operations(hall)

    sites = []
    for i, s in enumerate(small.sites):
        wyck = cols["_atom_site_Wyckoff_symbol"][i]
        wyck = "" if wyck in (None, "?", ".") else gemmi.cif.as_string(wyck).strip()
        frac = snap_to_special(fracs[i], rot, tra)
        sites.append(
            Site(
                label=s.label,
                element=elements[i],
                frac=tuple(float(x) for x in frac),
                occupancy=occs[i],
                b_iso=float(b_values[i]),
                wyckoff=wyck,
            )
        )
    sites = _check_shared_occupancy(sites, rot, tra, where)

    name = _formula_name(block) or small.name or os.path.splitext(os.path.basename(path))[0]
    unit_cell = Cell(*exact)
    crystal = Crystal(name=name, a=unit_cell.a, hall=hall, sites=tuple(sites), source=path, cell=unit_cell)
    return crystal, notes


def _site_b(site, b_raw, u_raw, default_b_iso: float, where: str) -> tuple[float, str]:
    """B_iso [Å²] of one row and a warning text ("" for none); refuses values that are given but not
    finite numbers, negative B, and B above ``B_ISO_LIMITS[1]``."""
    label = site.label
    b = _given_number(b_raw, f"site {label!r}: _atom_site_B_iso_or_equiv", where)
    source = f"_atom_site_B_iso_or_equiv {b_raw}"
    if b is None:
        u = _given_number(u_raw, f"site {label!r}: _atom_site_U_iso_or_equiv", where)
        source = f"8π² × _atom_site_U_iso_or_equiv {u_raw}"
        if u is None and site.aniso.nonzero():
            aniso = site.aniso
            u = (aniso.u11 + aniso.u22 + aniso.u33) / 3.0
            source = "8π² × the mean of U11, U22, U33"
            if not math.isfinite(u):
                raise CrystalError(f"{where}: site {label!r} has anisotropic U that is not a number")
        b = 8.0 * math.pi**2 * u if u is not None else None
    if b is None:
        return default_b_iso, ""
    warn_above, refuse_above = B_ISO_LIMITS
    if b < 0:
        raise CrystalError(f"{where}: site {label!r} has negative B_iso {b:g} Å² ({source})")
    if b > refuse_above:
        raise CrystalError(
            f"{where}: site {label!r} has B_iso {b:g} Å² ({source}), above {refuse_above:g} Å²: "
            "not a located atom (U given as B, or B in pm²?)"
        )
    note = ""
    if b > warn_above:
        note = (
            f"{where}: site {label!r} has B_iso {b:g} Å² > {warn_above:g} Å² ({source}); "
            "unusually large (a disordered or rattling atom, or a typo?)"
        )
    return b, note


def _column(block, tag: str, n: int, where: str) -> list:
    values = list(block.find_values(tag))
    if not values:
        return [None] * n
    if len(values) != n:
        raise CrystalError(f"{where}: {tag} has {len(values)} values for {n} atom sites")
    return values


def _check_shared_occupancy(sites, rot, tra, where) -> list[Site]:
    sites = list(sites)
    for group in shared_position_groups([s.frac for s in sites], rot, tra):
        total = sum(sites[i].occupancy for i in group)
        labels = ", ".join(sites[i].label for i in group)
        if total > 1.0 + _OCC_EXCESS_TOL:
            raise CrystalError(
                f"{where}: sites {labels} share one position with summed occupancy {total:.3f} > 1"
            )
        if total > 1.0:
            for i in group:
                sites[i] = replace(sites[i], occupancy=sites[i].occupancy / total)
    return sites


def _formula_name(block) -> str:
    for tag in ("_chemical_formula_structural", "_chemical_formula_sum", "_chemical_formula_iupac"):
        v = block.find_value(tag)
        if v and v not in ("?", "."):
            return "".join(ch for ch in gemmi.cif.as_string(v) if ch.isalnum() or ch == ".")
    return ""


# ------------------------------------------------------------------------------------------------
# CIF output
# ------------------------------------------------------------------------------------------------
def write_cif(crystal: Crystal, path, *, uncertainties=None) -> None:
    """Write ``crystal`` as a CIF that :func:`read_cif` reads back to the same crystal.

    The file has the full cell (a, b, c [Å], α, β, γ [°]), the space group (number, crystal system,
    H-M symbol, Hall symbol (with its change-of-basis suffix for a shifted setting), the coordinate
    system code (origin choice, R axes ``h``/``r``, monoclinic ``b1``/``c1``...) and the full
    ``_space_group_symop_operation_xyz`` loop, centring included) and one ``_atom_site`` row per
    site: label, type symbol, multiplicity, Wyckoff letter (``?`` when the crystal does not carry
    one), fractional x/y/z, B_iso [Å²] and occupancy. Floats are written with enough digits to read
    back exactly. The write is atomic: a temporary file in the same folder, then ``os.replace``.

    Parameters
    ----------
    crystal : Crystal
        The crystal to write.
    path : str or os.PathLike
        Output file; its folder must exist.
    uncertainties : dict, optional
        Standard uncertainties keyed by ``(site_label, field)`` with field one of ``"x"``, ``"y"``,
        ``"z"`` (fractional), ``"b_iso"`` [Å²], ``"occupancy"``. A value with an uncertainty is
        written in bracket notation rounded to it, e.g. ``0.2624(3)``.

    Raises
    ------
    ValueError
        If an ``uncertainties`` key names an unknown site label or field, or a sigma is negative.
    """
    path = os.fspath(path)
    su = _check_uncertainties(crystal, uncertainties or {})
    text = _cif_text(crystal, su)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_uncertainties(crystal: Crystal, uncertainties) -> dict:
    labels = {s.label for s in crystal.sites}
    out = {}
    for key, sigma in uncertainties.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"uncertainties keys must be (site_label, field) tuples, got {key!r}")
        label, fld = key
        if label not in labels:
            raise ValueError(
                f"uncertainties: unknown site label {label!r}; the crystal has {sorted(labels)}"
            )
        if fld not in _SU_FIELDS:
            raise ValueError(
                f"uncertainties: unknown field {fld!r} for {label!r}; use one of {_SU_FIELDS}"
            )
        sigma = float(sigma)
        if not sigma >= 0:
            raise ValueError(f"uncertainties: sigma for {key!r} must be >= 0, got {sigma!r}")
        out[key] = sigma
    return out


def _format_su(value: float, sigma: float | None) -> str:
    """``value`` for a CIF; with ``sigma`` > 0 in bracket notation, ``0.2624(3)``.

    The su is rounded to 2–19 units of the last digit written (IUCr practice); the value is rounded
    to the same digit.
    """
    value = float(value)
    if sigma is None or sigma == 0 or not math.isfinite(sigma):
        return repr(value + 0.0)
    d = max(0, -math.floor(math.log10(sigma)))
    digits = round(sigma * 10**d)
    if digits < 2:
        d += 1
        digits = round(sigma * 10**d)
    return f"{value:.{d}f}({digits})"


def _quote(s: str) -> str:
    if s and not any(c.isspace() for c in s) and s[0] not in "_#$'\"[];" and s not in ("?", "."):
        if not s.lower().startswith(("data_", "loop_", "save_", "global_", "stop_")):
            return s
    if "'" not in s:
        return f"'{s}'"
    if '"' not in s:
        return f'"{s}"'
    raise ValueError(f"cannot quote {s!r} for CIF (it contains both quote characters)")


def _angle(x: float) -> str:
    """An angle [°] for a CIF: ``90`` and ``120`` as integers (as most programs write them), other
    values with every digit."""
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _coordinate_system_code(hall: str, sg: gemmi.SpaceGroup) -> str:
    """``_space_group_IT_coordinate_system_code`` of a tabulated setting: the origin choice (``1``,
    ``2``), ``h``/``r`` for R-group axes, the monoclinic qualifier (``b1``, ``-c1``, ...); "" for a
    shifted setting (its operators and Hall symbol say everything) or when there is none."""
    if hall != sg.hall:
        return ""
    if sg.ext in ("1", "2"):
        return sg.ext
    if sg.ext in ("H", "R"):
        return sg.ext.lower()
    if sg.crystal_system_str() == "monoclinic" and sg.qualifier:
        return sg.qualifier
    return ""


def _block_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    return clean or "crystal"


def _cif_text(crystal: Crystal, su: dict) -> str:
    sg = crystal.spacegroup
    if sg is None:
        raise ValueError(f"Hall symbol {crystal.hall!r} matches no tabulated space group")
    ops = gemmi.symops_from_hall(crystal.hall)
    cell = crystal.cell
    formula = crystal.formula_sum
    lines = [
        f"# Written by lacbed-refine {__version__}",
        f"data_{_block_name(crystal.name)}",
        f"_chemical_formula_structural {_quote(crystal.name)}",
        f"_chemical_formula_sum {_quote(formula)}",
        "_cell_formula_units_Z 1",
        *(f"_cell_length_{axis} {float(x)!r}" for axis, x in zip("abc", (cell.a, cell.b, cell.c))),
        *(f"_cell_angle_{name} {_angle(x)}" for name, x in zip(("alpha", "beta", "gamma"),
                                                               (cell.alpha, cell.beta, cell.gamma))),
        f"_cell_volume {crystal.volume:.4f}",
        f"_space_group_crystal_system {sg.crystal_system_str()}",
        f"_space_group_IT_number {sg.number}",
        f"_space_group_name_H-M_alt {_quote(sg.hm)}",
        f"_space_group_name_Hall {_quote(crystal.hall)}",
    ]
    code = _coordinate_system_code(crystal.hall, sg)
    if code:
        lines.append(f"_space_group_IT_coordinate_system_code {_quote(code)}")
    lines += [
        f"_symmetry_Int_Tables_number {sg.number}",
        f"_symmetry_space_group_name_H-M {_quote(sg.hm)}",
        "loop_",
        "_space_group_symop_id",
        "_space_group_symop_operation_xyz",
    ]
    lines += [f"{k + 1} {_quote(op.triplet())}" for k, op in enumerate(ops)]
    lines += [
        "loop_",
        "_atom_site_label",
        "_atom_site_type_symbol",
        "_atom_site_symmetry_multiplicity",
        "_atom_site_Wyckoff_symbol",
        "_atom_site_fract_x",
        "_atom_site_fract_y",
        "_atom_site_fract_z",
        "_atom_site_B_iso_or_equiv",
        "_atom_site_occupancy",
        "_atom_site_adp_type",
    ]
    for site, orb in zip(crystal.sites, crystal.orbits()):
        row = [
            _quote(site.label),
            site.element,
            str(orb.multiplicity),
            _quote(site.wyckoff) if site.wyckoff else "?",
            *(_format_su(x, su.get((site.label, f))) for x, f in zip(site.frac, "xyz")),
            _format_su(site.b_iso, su.get((site.label, "b_iso"))),
            _format_su(site.occupancy, su.get((site.label, "occupancy"))),
            "Biso",
        ]
        lines.append(" ".join(row))
    return "\n".join(lines) + "\n"
