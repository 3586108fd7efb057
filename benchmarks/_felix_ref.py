"""Readers for the FELIX reference runs in ``shared/data/felix-reference/`` (benchmark helpers).

A run folder holds ``felix.inp`` (FELIX v1.3 line layout), ``felix.cif``, ``felix.hkl``, ``wall.txt``
and one output folder ``<chem>_Sim_<tttt>A_<2N>x<2N>/`` per thickness with ``StructureFactors.txt``
and ``<chem>_<±h><±k><±l>.bin`` images (felix-spec §1–2). Everything is converted to the library's
units at this edge: V, Å, Å⁻¹ (1/d units).

These helpers serve ``felix_agreement.py`` and ``engine_speed.py`` only; the FELIX plugin has its own
reader.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "REFERENCE_ROOT",
    "FelixInput",
    "FelixRun",
    "read_felix_inp",
    "read_hkl",
    "read_bin",
    "read_wall",
    "load_run",
    "run_folders",
    "bin_name",
    "pearson_r",
]

#: Reference data root; override with the ``LACBED_FELIX_REFERENCE`` environment variable.
REFERENCE_ROOT = Path(os.environ.get("LACBED_FELIX_REFERENCE", "/work/shared/data/felix-reference"))

#: The run folders, in the order the reports list them.
RUN_NAMES = ("MgO", "Si", "GaAs", "CaF2", "MgAl2O4", "SrTiO3", "MgO-df", "GaAs-df")

# FELIX v1.3 reads felix.inp by line position, each value from column 28 (felix-spec §1.1). FELIX
# itself ignores the key names; we check them so that an input in another layout (e.g. the shipped
# SrTiO3 sample's felix.inp, which lacks RgLimit) fails loudly instead of being misread.
_V13_LINES = {
    10: ("IAbsorbFLAG", int),
    14: ("IPixelCount", int),
    17: ("IMinReflectionPool", int),
    18: ("IMinStrongBeams", int),
    20: ("RgLimit", float),
    23: ("RDebyeWallerConstant", float),
    24: ("RAbsorptionPer", float),
    27: ("ROuterConvergenceAngle", float),
    31: ("RAcceleratingVoltage", float),
    35: ("RInitialThickness", float),
    36: ("RFinalThickness", float),
    37: ("RDeltaThickness", float),
    46: ("RBlurRadius", float),
}
_VALUE_COLUMN = 27  # 0-based: FELIX's (27X, ...) formats


@dataclass(frozen=True)
class FelixInput:
    """The felix.inp values the benchmarks use, in library units.

    Attributes
    ----------
    pixel_count : int
        FELIX ``IPixelCount`` N; images are 2N × 2N.
    half_width : float
        Tilt half-width [Å⁻¹, 1/d units] (``ROuterConvergenceAngle``).
    voltage : float
        Accelerating voltage [V] (``RAcceleratingVoltage`` is in kV).
    thicknesses : tuple of float
        Thicknesses [Å]: initial, initial + delta, … final (NINT((tf − ti)/Δt) + 1 values).
    absorb_flag : int
        0 none, 1 proportional, 2 Bird–King.
    absorption_percent : float
        ``RAbsorptionPer`` [%] (model 1 only).
    min_reflection_pool, min_strong_beams : int
        ``IMinReflectionPool``, ``IMinStrongBeams``.
    g_limit : float
        ``RgLimit`` [Å⁻¹, 1/d units]; ≤ 0 means "use the pool-size cap".
    debye_waller : float
        ``RDebyeWallerConstant``, default B [Å²].
    blur_sigma : float
        ``RBlurRadius``, Gaussian σ [pixels].
    """

    pixel_count: int
    half_width: float
    voltage: float
    thicknesses: tuple[float, ...]
    absorb_flag: int
    absorption_percent: float
    min_reflection_pool: int
    min_strong_beams: int
    g_limit: float
    debye_waller: float
    blur_sigma: float

    @property
    def size(self) -> int:
        """Pattern edge [pixels], 2N."""
        return 2 * self.pixel_count


def read_felix_inp(path) -> FelixInput:
    """Read a FELIX v1.3-layout ``felix.inp`` by line position, checking the key on each line used.

    Parameters
    ----------
    path : str or os.PathLike

    Raises
    ------
    ValueError
        If a line used does not carry the expected key (another layout) or its value does not parse.
    """
    path = Path(path)
    lines = path.read_text().splitlines()
    values = {}
    for lineno, (key, kind) in _V13_LINES.items():
        if lineno > len(lines):
            raise ValueError(f"{path}: has {len(lines)} lines, expected {key} on line {lineno} (FELIX v1.3 layout)")
        line = lines[lineno - 1]
        if not line.lstrip().startswith(key):
            raise ValueError(
                f"{path}: line {lineno} is {line.strip()!r}, expected {key} (FELIX v1.3 layout); "
                "an older layout (e.g. without RgLimit) shifts every later value"
            )
        text = line[_VALUE_COLUMN:].strip()
        try:
            values[key] = kind(float(text)) if kind is int else kind(text)
        except ValueError:
            raise ValueError(f"{path}: line {lineno} ({key}): cannot read {text!r} as {kind.__name__}") from None
    ti, tf, dt = values["RInitialThickness"], values["RFinalThickness"], values["RDeltaThickness"]
    if not dt > 0:
        raise ValueError(f"{path}: RDeltaThickness must be positive (Å), got {dt!r}")
    n_t = int(round((tf - ti) / dt)) + 1
    if n_t < 1:
        raise ValueError(f"{path}: RFinalThickness {tf} < RInitialThickness {ti}")
    return FelixInput(
        pixel_count=values["IPixelCount"],
        half_width=values["ROuterConvergenceAngle"],
        voltage=values["RAcceleratingVoltage"] * 1e3,
        thicknesses=tuple(ti + k * dt for k in range(n_t)),
        absorb_flag=values["IAbsorbFLAG"],
        absorption_percent=values["RAbsorptionPer"],
        min_reflection_pool=values["IMinReflectionPool"],
        min_strong_beams=values["IMinStrongBeams"],
        g_limit=values["RgLimit"],
        debye_waller=values["RDebyeWallerConstant"],
        blur_sigma=values["RBlurRadius"],
    )


def read_hkl(path) -> list[tuple[int, int, int]]:
    """Reflections of a ``felix.hkl`` (one ``[h,k,l]`` per line), in file order, duplicates kept.

    Raises
    ------
    ValueError
        On a line that is not ``[h,k,l]``.
    """
    path = Path(path)
    out = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        m = re.fullmatch(r"\s*\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]\s*", line)
        if m is None:
            raise ValueError(f"{path}: line {lineno} is {line!r}, expected [h,k,l]")
        out.append(tuple(int(x) for x in m.groups()))
    return out


def bin_name(chem: str, hkl) -> str:
    """FELIX's image file name, signs always written: ``bin_name("GaAs", (0, 0, 0))`` → ``GaAs_+0+0+0.bin``."""
    h, k, l = (int(x) for x in hkl)
    return f"{chem}_{h:+d}{k:+d}{l:+d}.bin"


def read_bin(path, size: int) -> np.ndarray:
    """A FELIX ``.bin`` image: headerless little-endian float64, C order ``[row, col]``.

    Returns
    -------
    ndarray, shape (size, size), float64
    """
    data = np.fromfile(path, dtype="<f8")
    if data.size != size * size:
        raise ValueError(f"{path}: {data.size} values, expected {size}x{size} = {size * size}")
    return data.reshape(size, size)


def read_wall(path) -> dict[str, float | str]:
    """``wall.txt`` as a dict (``key=value`` fields; numbers as float). ``wall_s`` is FELIX's wall time [s]."""
    out: dict[str, float | str] = {}
    for field in Path(path).read_text().split():
        if "=" not in field:
            continue
        key, value = field.split("=", 1)
        try:
            out[key] = float(value)
        except ValueError:
            out[key] = value
    return out


@dataclass(frozen=True)
class FelixRun:
    """One reference run folder.

    Attributes
    ----------
    name : str
        Folder name (``"MgO-df"``).
    path : Path
    chem : str
        FELIX's file prefix (folder name without ``-df``).
    inp : FelixInput
    hkl : tuple of (h, k, l)
        ``felix.hkl`` reflections that have an image at every thickness, in file order.
    wall : dict
        ``wall.txt`` fields (``wall_s`` [s], ``np`` ranks, …); empty if there is no wall.txt.
    """

    name: str
    path: Path
    chem: str
    inp: FelixInput
    hkl: tuple[tuple[int, int, int], ...]
    wall: dict

    @property
    def is_dark_field(self) -> bool:
        return any(h != (0, 0, 0) for h in self.hkl)

    @property
    def wall_s(self) -> float | None:
        """FELIX wall-clock time [s], or None."""
        value = self.wall.get("wall_s")
        return float(value) if value is not None else None

    def output_dir(self, thickness: float) -> Path:
        """``<chem>_Sim_<tttt>A_<2N>x<2N>/`` for a thickness [Å]."""
        size = self.inp.size
        return self.path / f"{self.chem}_Sim_{int(round(thickness)):04d}A_{size}x{size}"

    def image(self, thickness: float, hkl) -> np.ndarray:
        """FELIX's image of reflection ``hkl`` at ``thickness`` [Å], shape (2N, 2N), float64."""
        return read_bin(self.output_dir(thickness) / bin_name(self.chem, hkl), self.inp.size)

    def images(self) -> np.ndarray:
        """All images, shape (T, R, 2N, 2N), float64, in ``inp.thicknesses`` × ``hkl`` order."""
        return np.stack([np.stack([self.image(t, h) for h in self.hkl]) for t in self.inp.thicknesses])

    def beams(self) -> np.ndarray:
        """FELIX's beam pool from ``StructureFactors.txt`` (000 first), shape (n, 3), int."""
        sf = np.loadtxt(self.output_dir(self.inp.thicknesses[0]) / "StructureFactors.txt", ndmin=2)
        hkl = sf[:, :3].astype(np.int64)
        if not (hkl[0] == 0).all():
            raise ValueError(f"{self.path}: StructureFactors.txt does not start with 000")
        return hkl

    def crystal(self):
        """``felix.cif`` read with :func:`lacbed_refine.io.cif.read_cif`."""
        from lacbed_refine.io.cif import read_cif

        return read_cif(self.path / "felix.cif")


def load_run(path) -> FelixRun:
    """Read a reference run folder (``runs/MgO``).

    Raises
    ------
    FileNotFoundError
        If felix.inp, felix.hkl or the output folders are missing.
    """
    path = Path(path)
    inp = read_felix_inp(path / "felix.inp")
    outs = sorted(path.glob(f"*_Sim_*A_{inp.size}x{inp.size}"))
    if not outs:
        raise FileNotFoundError(f"{path}: no <chem>_Sim_<tttt>A_{inp.size}x{inp.size} output folders")
    chem = outs[0].name.split("_Sim_")[0]
    expected = path.name.removesuffix("-df")
    if chem != expected:
        raise ValueError(f"{path}: output prefix {chem!r} differs from the folder name {expected!r}")
    wall_path = path / "wall.txt"
    wall = read_wall(wall_path) if wall_path.exists() else {}
    run = FelixRun(name=path.name, path=path, chem=chem, inp=inp, hkl=(), wall=wall)
    hkl = []
    for h in dict.fromkeys(read_hkl(path / "felix.hkl")):  # de-duplicated, order kept
        if all((run.output_dir(t) / bin_name(chem, h)).exists() for t in inp.thicknesses):
            hkl.append(h)
    if not hkl:
        raise FileNotFoundError(f"{path}: no felix.hkl reflection has images at all thicknesses")
    return FelixRun(name=path.name, path=path, chem=chem, inp=inp, hkl=tuple(hkl), wall=wall)


def run_folders(root=None) -> list[Path]:
    """The reference run folders under ``root/runs`` (default :data:`REFERENCE_ROOT`), report order."""
    runs = Path(root or REFERENCE_ROOT) / "runs"
    return [runs / n for n in RUN_NAMES if (runs / n).is_dir()]


def pearson_r(a, b) -> float:
    """Pearson correlation of two images over all pixels (float64); NaN if either is constant."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a = a - a.mean()
    b = b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")
