"""FELIX's other files: images, folder names, ``felix.hkl``, ``StructureFactors.txt``,
``iteration_log.txt``, and a whole simulation read into a pattern stack (felix-spec §1.3, §2).

Images (``.bin`` written by FELIX, ``.img`` read by its refinement) are headerless little-endian
float64, 2N records of 2N values: a C-order array ``[row, col] = [k_y, k_x]``, the library's own
pattern orientation (:mod:`lacbed_refine.conventions`), so no flip or transpose is ever needed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lacbed_refine.io.files import atomic_path

__all__ = [
    "image_name",
    "parse_image_name",
    "read_image",
    "write_image",
    "sim_folder_name",
    "parse_sim_folder",
    "refine_folder_name",
    "experimental_folder_name",
    "read_hkl",
    "write_hkl",
    "StructureFactors",
    "read_structure_factors",
    "IterationLog",
    "read_iteration_log",
    "iteration_log_columns",
    "FelixSimulation",
    "read_simulation",
    "simulation_to_stack",
]

_IMAGE_RE = re.compile(r"^(?P<chem>.+)_(?P<h>[+-]\d+)(?P<k>[+-]\d+)(?P<l>[+-]\d+)\.(?P<ext>bin|img)$")
_SIM_RE = re.compile(r"^(?P<chem>.+)_Sim_(?P<t>\d{4})A_(?P<n>\d{3})x(?P=n)$")


def _nint(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def image_name(chem: str, hkl, ext: str = ".bin") -> str:
    """FELIX's image file name, signs always written: ``("GaAs", (0, 0, 0))`` → ``GaAs_+0+0+0.bin``."""
    h, k, l = (int(x) for x in hkl)
    return f"{chem}_{h:+d}{k:+d}{l:+d}{ext}"


def parse_image_name(name: str) -> tuple[str, tuple[int, int, int], str]:
    """``"GaAs_-2+2+0.bin"`` → (``"GaAs"``, (-2, 2, 0), ``".bin"``).

    Raises
    ------
    ValueError
        If the name is not ``<chem>_<±h><±k><±l>.bin`` or ``.img``.
    """
    m = _IMAGE_RE.fullmatch(Path(name).name)
    if m is None:
        raise ValueError(f"{name!r} is not a FELIX image name <chem>_<±h><±k><±l>.bin/.img")
    return m["chem"], (int(m["h"]), int(m["k"]), int(m["l"])), "." + m["ext"]


def _text_lines(path: Path) -> list[str]:
    """The lines of a FELIX text file, numbered as FELIX reads them (records end at ``\n``; a
    trailing ``\r`` is dropped). FELIX writes ASCII: bytes that are not UTF-8 mean another kind of
    file, refused with one line naming the file and the line."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ValueError(
            f"{path}: line {line} is not text (byte 0x{raw[exc.start]:02x}); not a file FELIX wrote?"
        ) from None
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _shown(line: str, limit: int = 60) -> str:
    """A line for a one-line message: stripped, quoted with control characters escaped, cut."""
    text = repr(line.strip())
    return text if len(text) <= limit else text[: limit - 4] + "...'"


def read_image(path, size: int | None = None) -> np.ndarray:
    """A FELIX ``.bin`` or ``.img`` image.

    The edge comes from the file length, which must be 8·n² bytes (n² little-endian float64).

    Parameters
    ----------
    path : str or os.PathLike
    size : int, optional
        Expected edge [pixels]; checked when given.

    Returns
    -------
    image : ndarray, shape (n, n), float64
        ``[row, col] = [k_y, k_x]``, every pixel finite.

    Raises
    ------
    ValueError
        One line naming the file: not a file, the length is not that of a square of 8-byte floats
        or not ``size``², or pixels are NaN or infinite (not an image FELIX completed).
    FileNotFoundError
        If ``path`` does not exist.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        raise ValueError(f"{path}: not a file")
    nbytes = path.stat().st_size
    n = math.isqrt(nbytes // 8) if nbytes % 8 == 0 else 0
    if nbytes == 0 or nbytes % 8 or n * n * 8 != nbytes:
        raise ValueError(
            f"{path}: {nbytes} bytes is not a square image of 8-byte floats (FELIX writes 8·(2N)² bytes)"
        )
    if size is not None and n != size:
        raise ValueError(f"{path}: {n}x{n} image, expected {size}x{size}")
    image = np.fromfile(path, dtype="<f8").reshape(n, n)
    bad = ~np.isfinite(image)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} pixels are NaN or infinite (of {n}x{n})")
    return image


def write_image(path, image) -> Path:
    """Write a square image as FELIX reads it: headerless little-endian float64, C order, atomically.

    Parameters
    ----------
    path : str or os.PathLike
    image : array_like, shape (n, n)
        ``[row, col] = [k_y, k_x]``.
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise ValueError(f"a FELIX image is square, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ValueError(f"{path}: image has non-finite values")
    path = Path(path)
    with atomic_path(path) as tmp:
        np.ascontiguousarray(image, dtype="<f8").tofile(tmp)
    return path


def sim_folder_name(chem: str, thickness: float, size: int) -> str:
    """``<chem>_Sim_<tttt>A_<2N>x<2N>``: thickness [Å] rounded (Fortran NINT) to 4 digits, edge to 3."""
    t = _nint(thickness)
    if not 0 <= t <= 9999:
        raise ValueError(f"thickness {thickness} Å does not fit FELIX's 4-digit folder name (0-9999 Å)")
    if not 0 < size <= 999:
        raise ValueError(f"size {size} does not fit FELIX's 3-digit folder name")
    return f"{chem}_Sim_{t:04d}A_{size:03d}x{size:03d}"


def parse_sim_folder(name: str) -> tuple[str, int, int]:
    """``"SrTiO3_Sim_0630A_128x128"`` → (``"SrTiO3"``, 630 [Å], 128).

    Raises
    ------
    ValueError
        If the name is not a FELIX simulation folder name.
    """
    m = _SIM_RE.fullmatch(Path(name).name)
    if m is None:
        raise ValueError(f"{name!r} is not a FELIX simulation folder <chem>_Sim_<tttt>A_<2N>x<2N>")
    return m["chem"], int(m["t"]), int(m["n"])


def refine_folder_name(chem: str, iteration: int, thickness: float, size: int) -> str:
    """``<chem>_I<iter 4d>_<t nm 3d>nm_<2N>x<2N>``, FELIX's refinement output (thickness in Å)."""
    return f"{chem}_I{int(iteration):04d}_{_nint(thickness / 10.0):03d}nm_{size:03d}x{size:03d}"


def experimental_folder_name(size: int) -> str:
    """``LR_<2N>x<2N>``: where FELIX's refinement looks first for experimental ``.img`` images."""
    return f"LR_{int(size)}x{int(size)}"


def read_hkl(path) -> list[tuple[int, int, int]]:
    """The reflections of a ``felix.hkl`` (one ``[h,k,l]`` per line), in order.

    Raises
    ------
    ValueError
        One line naming the file: a line that is not ``[h,k,l]``, blank lines included (FELIX counts
        every line as a reflection), bytes that are not text, or no reflection at all.
    OSError
        If the file cannot be read (FileNotFoundError when it does not exist).
    """
    path = Path(path)
    out = []
    for lineno, line in enumerate(_text_lines(path), start=1):
        m = re.fullmatch(r"\s*\[\s*([+-]?\d+)\s*,\s*([+-]?\d+)\s*,\s*([+-]?\d+)\s*\].*", line, re.ASCII)
        if m is None:
            raise ValueError(f"{path}: line {lineno} is {_shown(line)}, expected [h,k,l] (FELIX reads every line)")
        out.append(tuple(int(x) for x in m.groups()))
    if not out:
        raise ValueError(f"{path}: no reflections (an empty felix.hkl)")
    return out


def write_hkl(path, reflections) -> Path:
    """Write ``felix.hkl``: one ``[h,k,l]`` per line, no blank lines."""
    refl = [tuple(int(x) for x in r) for r in reflections]
    if not refl:
        raise ValueError("felix.hkl needs at least one reflection")
    if any(len(r) != 3 for r in refl):
        raise ValueError(f"reflections must be (h, k, l) triples, got {reflections!r}")
    if len(set(refl)) != len(refl):
        raise ValueError(f"reflections repeat: {refl}")
    path = Path(path)
    path.write_text("".join("[{},{},{}]\n".format(*r) for r in refl))
    return path


@dataclass(frozen=True)
class StructureFactors:
    """``StructureFactors.txt``: FELIX's beam pool and its U_g.

    Attributes
    ----------
    hkl : ndarray, shape (n, 3), int
        Pool reflections in FELIX's order (000 first, ascending |g|).
    g : ndarray, shape (n, 2), float
        (g_x, g_y) in the microscope frame [Å⁻¹, 1/d units] (FELIX writes 2π units; converted here).
    ug : ndarray, shape (n,), complex
        U_g including absorption [Å⁻²].
    """

    hkl: np.ndarray
    g: np.ndarray
    ug: np.ndarray

    def __len__(self) -> int:
        return len(self.hkl)


def read_structure_factors(path) -> StructureFactors:
    """Read ``StructureFactors.txt`` (a file, or a folder holding one).

    Raises
    ------
    ValueError
        One line naming the file and line: a row that is not 7 finite numbers (h k l g_x g_y Re Im)
        with integer h k l, bytes that are not text, or no rows.
    OSError
        If the file cannot be read (FileNotFoundError when it does not exist).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "StructureFactors.txt"
    rows = []
    for lineno, line in enumerate(_text_lines(path), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 7:
                raise ValueError
            row = [float(x) for x in parts]
            # Miller indices are whole numbers of a sane size (FELIX's pools stay far below 10⁶)
            if not all(math.isfinite(x) for x in row) or any(x != round(x) or abs(x) > 1e6 for x in row[:3]):
                raise ValueError
            rows.append(row)
        except ValueError:
            raise ValueError(f"{path}: line {lineno} is {_shown(line)}, expected h k l gx gy ReU ImU") from None
    if not rows:
        raise ValueError(f"{path}: no structure factors")
    a = np.array(rows)
    return StructureFactors(
        hkl=np.rint(a[:, :3]).astype(np.int64),
        g=a[:, 3:5] / (2 * math.pi),
        ug=a[:, 5] + 1j * a[:, 6],
    )


@dataclass(frozen=True)
class IterationLog:
    """``iteration_log.txt``: one row per logged refinement step.

    Attributes
    ----------
    iteration : ndarray, shape (n,), int
    fom : ndarray, shape (n,)
        Figure of merit.
    values : ndarray, shape (n, m)
        The variables FELIX logs for the refinement mode (see :func:`iteration_log_columns`);
        NaN where FELIX's F13.9 field overflowed (``*****``).
    """

    iteration: np.ndarray
    fom: np.ndarray
    values: np.ndarray


def _f13(text: str) -> float:
    return math.nan if set(text) <= {"*"} else float(text)


def read_iteration_log(path) -> IterationLog:
    """Read FELIX's ``iteration_log.txt`` (a file, or a folder holding one).

    Raises
    ------
    ValueError
        One line naming the file: rows of different lengths, a row that does not parse, or bytes
        that are not text.
    OSError
        If the file cannot be read (FileNotFoundError when it does not exist).
    """
    path = Path(path)
    if path.is_dir():
        path = path / "iteration_log.txt"
    its, foms, vals = [], [], []
    for lineno, line in enumerate(_text_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            its.append(int(parts[0]))
            foms.append(_f13(parts[1]))
            vals.append([_f13(p) for p in parts[2:]])
        except (ValueError, IndexError):
            raise ValueError(f"{path}: line {lineno} is {_shown(line)}, expected iteration FoM values...") from None
    width = {len(v) for v in vals}
    if len(width) > 1:
        raise ValueError(f"{path}: rows have different numbers of values {sorted(width)}")
    m = width.pop() if width else 0
    return IterationLog(
        iteration=np.asarray(its, dtype=np.int64),
        fom=np.asarray(foms, dtype=float),
        values=np.asarray(vals, dtype=float).reshape(len(vals), m),
    )


def iteration_log_columns(refine_mode: str, site_labels, *, n_ugs: int = 0, absorb_flag: int = 0) -> list[str]:
    """Names of the value columns FELIX HEAD writes to ``iteration_log.txt`` for a refinement.

    FELIX logs whole blocks, not just the refined variables: in letter order A (Re, Im of
    ``n_ugs`` structure factors and the absorption %), B (x, y, z of every site), C (every
    occupancy), D (every B_iso), F (a, b, c), H (convergence angle). With Bird–King absorption
    (``absorb_flag`` 2) FELIX writes one extra leading value even when A is not refined
    (``"unused"``).

    Parameters
    ----------
    refine_mode : str
        Letters, e.g. ``"BD"``.
    site_labels : sequence of str
        The ``felix.cif`` site labels, in order.
    n_ugs : int
        ``INoofUgs`` (mode A).
    absorb_flag : int
        ``IAbsorbFLAG``.
    """
    mode = refine_mode.upper()
    cols: list[str] = []
    if "A" in mode:
        for k in range(1, n_ugs + 1):
            cols += [f"Re U{k}", f"Im U{k}"]
        if absorb_flag == 2:
            cols.append("absorption %")
    elif absorb_flag == 2:
        cols.append("unused")
    if "B" in mode:
        cols += [f"{lab}.{c}" for lab in site_labels for c in "xyz"]
    if "C" in mode:
        cols += [f"{lab}.occupancy" for lab in site_labels]
    if "D" in mode:
        cols += [f"{lab}.b_iso" for lab in site_labels]
    if "F" in mode:
        cols += ["a", "b", "c"]
    if "H" in mode:
        cols.append("convergence angle")
    return cols


@dataclass(frozen=True)
class FelixSimulation:
    """A FELIX simulation read from its output folders.

    Attributes
    ----------
    chem : str
        FELIX's file prefix.
    thicknesses : tuple of float
        [Å], ascending (FELIX's folder names, whole Å).
    reflections : tuple of (h, k, l)
    images : ndarray, shape (T, R, size, size), float64
        ``[row, col] = [k_y, k_x]``.
    structure_factors : StructureFactors or None
        From the first thickness folder.
    """

    chem: str
    thicknesses: tuple[float, ...]
    reflections: tuple[tuple[int, int, int], ...]
    images: np.ndarray
    structure_factors: StructureFactors | None

    @property
    def size(self) -> int:
        return self.images.shape[-1]


def read_simulation(folder, *, chem: str | None = None, reflections=None, thicknesses=None) -> FelixSimulation:
    """Read FELIX's simulation output under ``folder`` into one stack.

    ``folder`` holds ``<chem>_Sim_<tttt>A_<2N>x<2N>/`` folders (one per thickness) with
    ``<chem>_<±h><±k><±l>.bin`` images; the reflections are those of ``folder/felix.hkl`` when it
    exists (FELIX's order), else the images of the first thickness folder.

    Parameters
    ----------
    folder : str or os.PathLike
    chem : str, optional
        File prefix, when the folder holds several.
    reflections : sequence of (h, k, l), optional
        Only these, in this order.
    thicknesses : sequence of float, optional
        Only these [Å] (matched by FELIX's folder name, thickness rounded to 1 Å).

    Raises
    ------
    FileNotFoundError
        If there is no simulation folder, or an image is missing (e.g. a reflection outside FELIX's
        beam pool, which FELIX drops silently).
    ValueError
        If folders of several prefixes or sizes are there and ``chem`` does not choose.
    """
    folder = Path(folder)
    found = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.is_dir():
            try:
                c, t, n = parse_sim_folder(p.name)
            except ValueError:
                continue
            if chem is None or c == chem:
                found.append((c, t, n, p))
    if not found:
        raise FileNotFoundError(f"{folder}: no FELIX simulation folder <chem>_Sim_<tttt>A_<2N>x<2N>")
    kinds = {(c, n) for c, _, n, _ in found}
    if len(kinds) > 1:
        raise ValueError(f"{folder}: simulation folders of several prefixes/sizes {sorted(kinds)}; pass chem")
    chem, size = kinds.pop()
    by_t = {t: p for _, t, _, p in found}
    if thicknesses is None:
        wanted = sorted(by_t)
    else:
        wanted = [_nint(t) for t in thicknesses]
        missing = [t for t in wanted if t not in by_t]
        if missing:
            raise FileNotFoundError(
                f"{folder}: FELIX wrote no folder for thickness(es) {missing} Å (has {sorted(by_t)})"
            )
    if reflections is None:
        hkl_file = folder / "felix.hkl"
        if hkl_file.is_file():
            reflections = read_hkl(hkl_file)
        else:
            reflections = sorted(
                parse_image_name(p.name)[1] for p in by_t[wanted[0]].glob(f"{chem}_*.bin")
            )
    reflections = tuple(tuple(int(x) for x in r) for r in reflections)
    stack = np.empty((len(wanted), len(reflections), size, size), dtype=np.float64)
    for i, t in enumerate(wanted):
        for j, r in enumerate(reflections):
            path = by_t[t] / image_name(chem, r)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: FELIX wrote no image of {r} at {t} Å (a reflection outside FELIX's beam pool "
                    "is dropped without an error)"
                )
            stack[i, j] = read_image(path, size)
    sf_path = by_t[wanted[0]] / "StructureFactors.txt"
    sf = read_structure_factors(sf_path) if sf_path.is_file() else None
    return FelixSimulation(
        chem=chem,
        thicknesses=tuple(float(t) for t in wanted),
        reflections=reflections,
        images=stack,
        structure_factors=sf,
    )


def simulation_to_stack(folder, out, *, chem: str | None = None) -> tuple[Path, FelixSimulation]:
    """Read FELIX's simulation under ``folder`` and write it as a lacbed-refine stack (.tif/.npy/.h5).

    The stack is float32 (T, R, size, size) with the thicknesses and reflections in its metadata,
    like ``lacbed-refine simulate`` writes.
    """
    from lacbed_refine.io.images import write_stack

    sim = read_simulation(folder, chem=chem)
    pages = [f"t={t / 10:g}nm hkl={r[0]} {r[1]} {r[2]}" for t in sim.thicknesses for r in sim.reflections]
    meta = {
        "crystal": sim.chem,
        "source": str(folder),
        "engine": "felix (read from its output files)",
        "thickness_nm": [t / 10 for t in sim.thicknesses],
        "reflections": [list(r) for r in sim.reflections],
        "n_beams": len(sim.structure_factors) if sim.structure_factors is not None else None,
    }
    return write_stack(out, sim.images.astype(np.float32), labels=pages, metadata=meta), sim
