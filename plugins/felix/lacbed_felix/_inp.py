"""``felix.inp``: FELIX v1.3's line-position input file, written and read.

FELIX ignores the key names and reads each value from column 28 of a fixed line: integers with the
Fortran format ``(27X,I15)``, reals with ``(27X,F18.9)``, vectors ``[u,v,w]`` and the two text lines
(refinement letters, atomic sites) whole (felix-spec §1.1). Two consequences shape this module:

- an extra or missing line shifts every later value, so :func:`read_felix_inp` checks the key on
  every line and rejects another layout (the older one without ``RgLimit`` makes FELIX HEAD stop
  with an "end of file" error);
- a real without a decimal point is read with 9 implied decimals (``3`` means 3e-9) and only the
  first 17 characters after ``= `` are read, so the writer always writes a point and never
  overflows the field.

Units follow the library: V, Å, Å⁻¹ in 1/d units (``RgLimit`` and ``ROuterConvergenceAngle`` are in
those units in FELIX too); conversion (kV) happens here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from lacbed_refine.conventions import wavevector_2pi
from lacbed_refine.structure.crystal import DEFAULT_B_ISO, Crystal
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.structure.reflections import centring_allows

from ._version import __version__

__all__ = [
    "FelixInput",
    "FelixInputError",
    "read_felix_inp",
    "write_felix_inp",
    "format_felix_inp",
    "felix_input_for",
    "felix_beam_pool",
    "thickness_grid",
    "REFINE_LETTERS",
]

#: Refinement letters FELIX HEAD runs (felix-spec §5): Ug (A, alone), coordinates (B),
#: occupancy (C), isotropic B (D), lattice parameter (F), convergence angle (H).
REFINE_LETTERS = "ABCDFH"
_ABORTING_LETTERS = {"E": "anisotropic B", "G": "cell angles", "I": "accelerating voltage"}

_FORM_FACTOR_FLAGS = {"kirkland": 0, "peng": 1}

# FELIX HEAD's StructureFactorInitialisation prints rows 1..40 of the beam pool (Rhkl(1:40)); a
# smaller pool is indexed out of bounds (a runtime error in a bounds-checked gfortran build).
_MIN_POOL = 40

# Value fields: (27X, I15) reads columns 28-42, (27X, F18.9) columns 28-45 (1-based). The writer puts
# "= " in columns 27-28, so a value has 14 (integer) or 17 (real) characters from column 29.
_VALUE_START = 27
_INT_END = 27 + 15
_REAL_END = 27 + 18
_INT_WIDTH = 14
_REAL_WIDTH = 17


class FelixInputError(ValueError):
    """A felix.inp that FELIX v1.3 would misread, or values it cannot hold; names file and line."""


@dataclass(frozen=True)
class FelixInput:
    """Every value of a FELIX v1.3 ``felix.inp``, in library units.

    Defaults are those of the project's reference runs (simulation only, no absorption, Kirkland
    form factors, [001] zone with image +x along [100]).

    Attributes
    ----------
    pixel_count : int
        ``IPixelCount`` N; images are 2N × 2N.
    half_width : float
        ``ROuterConvergenceAngle``, tilt half-width [Å⁻¹, 1/d units].
    voltage : float
        Accelerating voltage [V] (``RAcceleratingVoltage`` is written in kV).
    thickness_initial, thickness_final, thickness_delta : float
        ``RInitialThickness``, ``RFinalThickness``, ``RDeltaThickness`` [Å].
    min_reflection_pool : int
        ``IMinReflectionPool``: beam-pool size, used by FELIX only when ``g_limit`` ≤ 0.
    min_strong_beams : int
        ``IMinStrongBeams``: the least number of beams in the Bloch matrix at each pixel.
    min_weak_beams : int
        ``IMinWeakBeams``: perturbative beams (0: none).
    g_limit : float
        ``RgLimit`` [Å⁻¹, 1/d units]; ≤ 0 means "use the pool-size cap".
    debye_waller : float
        ``RDebyeWallerConstant`` [Å²]: B for CIF sites that give none (or give 0, or > 10).
    absorb_flag : int
        ``IAbsorbFLAG``: 0 none, 1 proportional, 2 Bird–King.
    absorption_percent : float
        ``RAbsorptionPer`` [%], for ``absorb_flag`` 1.
    scatter_factor_method : int
        ``IScatterFactorMethodFLAG``: 0 Kirkland, 1 Peng, 2 Doyle–Turner, 3 Lobato.
    write_flag, holz_flag, byte_size : int
        ``IWriteFLAG`` (verbosity), ``IHolzFLAG`` (0), ``IByteSize`` (8 for gfortran builds).
    beam_direction, x_direction, normal_direction : tuple of 3 int
        ``IIncidentBeamDirection`` [uvw], ``IXDirection`` [hkl], ``INormalDirection`` [uvw].
    acceptance_angle : float
        ``RAcceptanceAngle`` [degrees]; 0 for none.
    precision : float
        ``RPrecision``, the figure-of-merit noise level used for error bars.
    refine_mode : str
        ``IRefineModeFLAG``: ``"S"`` (simulation only) or refinement letters such as ``"BD"``.
    weighting_flag, refine_method, correlation_flag, image_processing_flag : int
        ``IWeightingFLAG``, ``IRefineMethodFLAG`` (1 simplex, 2 downhill, 3 max-gradient,
        4 pairwise), ``ICorrelationFLAG`` (0 phase, 1 sum of squares, 2 normalised
        cross-correlation), ``IImageProcessingFLAG`` (1 sqrt, 2 log, other none).
    blur_radius : float
        ``RBlurRadius``, Gaussian σ [pixels] applied to simulated images.
    n_ugs : int
        ``INoofUgs``, structure factors refined in mode A.
    atomic_sites : tuple of int
        ``IAtomicSites``: 1-based indices into the CIF's atom-site loop.
    print_every : int
        ``IPrint``: write output every this many iterations (0: at cycle ends).
    simplex_length_scale : float
        ``RSimplexLengthScale`` [%].
    exit_criteria : float
        ``RExitCriteria``.
    """

    pixel_count: int
    half_width: float
    voltage: float
    thickness_initial: float
    thickness_final: float
    thickness_delta: float
    min_reflection_pool: int = 0
    min_strong_beams: int = 50
    min_weak_beams: int = 0
    g_limit: float = 0.0
    debye_waller: float = DEFAULT_B_ISO
    absorb_flag: int = 0
    absorption_percent: float = 0.0
    scatter_factor_method: int = 0
    write_flag: int = 1
    holz_flag: int = 0
    byte_size: int = 8
    beam_direction: tuple[int, int, int] = (0, 0, 1)
    x_direction: tuple[int, int, int] = (1, 0, 0)
    normal_direction: tuple[int, int, int] = (0, 0, 1)
    acceptance_angle: float = 0.0
    precision: float = 2e-5
    refine_mode: str = "S"
    weighting_flag: int = 0
    refine_method: int = 0
    correlation_flag: int = 0
    image_processing_flag: int = 0
    blur_radius: float = 0.0
    n_ugs: int = 1
    atomic_sites: tuple[int, ...] = (1,)
    print_every: int = 0
    simplex_length_scale: float = 1.0
    exit_criteria: float = 1e-4

    @property
    def size(self) -> int:
        """Pattern edge [pixels], 2N."""
        return 2 * self.pixel_count

    @property
    def thicknesses(self) -> tuple[float, ...]:
        """FELIX's thickness grid [Å]: NINT((tf − ti)/Δt) + 1 values from ti in steps of Δt."""
        n = _nint((self.thickness_final - self.thickness_initial) / self.thickness_delta) + 1
        return tuple(self.thickness_initial + k * self.thickness_delta for k in range(max(n, 0)))

    @property
    def simulation_only(self) -> bool:
        return "S" in self.refine_mode.upper()


# (line, key as written, attribute, kind). Every other line of the 51 is a comment.
_LAYOUT = (
    (7, "IWriteFLAG", "write_flag", "int"),
    (8, "IScatterFactorMethodFLAG", "scatter_factor_method", "int"),
    (9, "IHolzFLAG", "holz_flag", "int"),
    (10, "IAbsorbFLAG", "absorb_flag", "int"),
    (11, "IByteSize", "byte_size", "int"),
    (14, "IPixelCount", "pixel_count", "int"),
    (17, "IMinReflectionPool", "min_reflection_pool", "int"),
    (18, "IMinStrongBeams", "min_strong_beams", "int"),
    (19, "IMinWeakBeams", "min_weak_beams", "int"),
    (20, "RgLimit", "g_limit", "real"),
    (23, "RDebyeWallerConstant", "debye_waller", "real"),
    (24, "RAbsorptionPer", "absorption_percent", "real"),
    (27, "ROuterConvergenceAngle", "half_width", "real"),
    (28, "IIncidentBeamDirection", "beam_direction", "vector"),
    (29, "IXDirection", "x_direction", "vector"),
    (30, "INormalDirection", "normal_direction", "vector"),
    (31, "RAcceleratingVoltage (kV)", "voltage", "kv"),
    (32, "RAcceptanceAngle", "acceptance_angle", "real"),
    (35, "RInitialThickness", "thickness_initial", "real"),
    (36, "RFinalThickness", "thickness_final", "real"),
    (37, "RDeltaThickness", "thickness_delta", "real"),
    (38, "RPrecision", "precision", "real"),
    (41, "IRefineModeFLAG", "refine_mode", "mode"),
    (42, "IWeightingFLAG", "weighting_flag", "int"),
    (43, "IRefineMethodFLAG", "refine_method", "int"),
    (44, "ICorrelationFLAG", "correlation_flag", "int"),
    (45, "IImageProcessingFLAG", "image_processing_flag", "int"),
    (46, "RBlurRadius", "blur_radius", "real"),
    (47, "INoofUgs", "n_ugs", "int"),
    (48, "IAtomicSites", "atomic_sites", "sites"),
    (49, "IPrint", "print_every", "int"),
    (50, "RSimplexLengthScale", "simplex_length_scale", "real"),
    (51, "RExitCriteria", "exit_criteria", "real"),
)
_COMMENTS = {
    2: "# ------------------------------------",
    3: "",
    4: "# ------------------------------------",
    5: "",
    6: "# control flags",
    12: "",
    13: "# radius of the beam in pixels",
    15: "",
    16: "# beam selection criteria",
    21: "",
    22: "# crystal settings",
    25: "",
    26: "# microscope settings",
    33: "",
    34: "# Image Output Options",
    39: "",
    40: "#Refinement Specific Flags",
}
_N_LINES = 51


# ------------------------------------------------------------------------------------------------
# Fortran field emulation
# ------------------------------------------------------------------------------------------------
def _nint(x: float) -> int:
    """Fortran NINT: round half away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


_REAL_RE = re.compile(r"^([+-]?)(\d*)(?:\.(\d*))?(?:[EeDdQq]([+-]?\d+)|([+-]\d+))?$")


def _fortran_int(field: str) -> int:
    """An ``I15`` field as gfortran reads it from a file (blanks ignored; all blank is 0)."""
    text = field.replace(" ", "")
    if not text:
        return 0
    if not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(f"{field.strip()!r} is not an integer")
    return int(text)


def _fortran_real(field: str) -> float:
    """An ``F18.9`` field as gfortran reads it: without a decimal point, 9 implied decimals."""
    text = field.replace(" ", "")
    if not text:
        return 0.0
    m = _REAL_RE.fullmatch(text)
    if m is None or not (m.group(2) or m.group(3)):
        raise ValueError(f"{field.strip()!r} is not a number")
    sign, whole, frac, exp1, exp2 = m.groups()
    exp = int(exp1 or exp2 or 0)
    if frac is None:  # no decimal point: the last 9 digits are decimals
        return float(f"{sign}{whole or 0}e{exp - 9}")
    return float(f"{sign}{whole or 0}.{frac or 0}e{exp}")


def _format_real(x: float, what: str) -> str:
    """``x`` with a decimal point in at most 17 characters: exact when possible, else the closest."""
    x = float(x)
    if not math.isfinite(x):
        raise FelixInputError(f"{what} must be finite, got {x!r}")
    fixed = f"{x:.9f}".rstrip("0")
    fixed = fixed + "0" if fixed.endswith(".") else fixed
    r = repr(x + 0.0)
    if "e" in r and "." not in r.split("e")[0]:
        mant, exp = r.split("e")
        r = f"{mant}.0e{exp}"
    for text in (fixed, r):
        if len(text) <= _REAL_WIDTH and float(text) == x:
            return text
    lossy = [f"{x:.{d}f}" for d in range(16, 0, -1)] + [f"{x:.{d}E}" for d in range(10, 0, -1)]
    lossy = [t for t in lossy if len(t) <= _REAL_WIDTH]
    return min(lossy, key=lambda t: abs(float(t) - x))


def _format_int(n, what: str) -> str:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise FelixInputError(f"{what} must be an integer, got {n!r}")
    text = str(int(n))
    if len(text) > _INT_WIDTH:
        raise FelixInputError(f"{what} = {n} does not fit FELIX's I15 field")
    return text


def _format_vector(v, what: str) -> str:
    try:
        ints = [int(x) for x in v]
    except (TypeError, ValueError):
        raise FelixInputError(f"{what} must be three integers, got {v!r}") from None
    if len(ints) != 3 or any(int(x) != x for x in v):
        raise FelixInputError(f"{what} must be three integers, got {v!r}")
    return "[{},{},{}]".format(*ints)


def _check_refine_mode(mode: str) -> str:
    text = str(mode).strip()
    if not text:
        raise FelixInputError("refine_mode is empty; use 'S' (simulate) or letters from " + REFINE_LETTERS)
    if "S" in text.upper():
        return "S"
    letters = text.upper()
    bad = [c for c in letters if c in _ABORTING_LETTERS]
    if bad:
        what = ", ".join(f"{c} ({_ABORTING_LETTERS[c]})" for c in bad)
        raise FelixInputError(f"refine_mode {mode!r}: FELIX HEAD aborts on {what}: not implemented there")
    unknown = [c for c in letters if c not in REFINE_LETTERS]
    if unknown:
        raise FelixInputError(
            f"refine_mode {mode!r}: unknown letter(s) {''.join(unknown)}; use 'S' or letters from {REFINE_LETTERS}"
        )
    if "A" in letters and len(set(letters)) > 1:
        raise FelixInputError(f"refine_mode {mode!r}: FELIX refines structure factors (A) only on their own")
    return "".join(c for c in REFINE_LETTERS if c in letters)


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
def _validate(inp: FelixInput) -> None:
    if not (isinstance(inp.pixel_count, (int, np.integer)) and 1 <= inp.pixel_count <= 499):
        raise FelixInputError(f"pixel_count must be an int in 1..499 (images 2..998 pixels), got {inp.pixel_count!r}")
    if not inp.half_width > 0:
        raise FelixInputError(f"half_width must be positive (1/Å), got {inp.half_width!r}")
    if not inp.voltage > 0:
        raise FelixInputError(f"voltage must be positive (V), got {inp.voltage!r}")
    if not inp.thickness_delta > 0:
        raise FelixInputError(f"thickness_delta must be positive (Å), got {inp.thickness_delta!r}")
    if inp.thickness_final < inp.thickness_initial:
        raise FelixInputError(
            f"thickness_final {inp.thickness_final} Å is below thickness_initial {inp.thickness_initial} Å"
        )
    if inp.g_limit <= 0 and inp.min_reflection_pool <= inp.min_strong_beams:
        raise FelixInputError(
            f"min_reflection_pool ({inp.min_reflection_pool}) must exceed min_strong_beams "
            f"({inp.min_strong_beams}) when g_limit <= 0: FELIX stops on a pool this small"
        )
    if not inp.atomic_sites and not inp.simulation_only and "B" in inp.refine_mode.upper():
        raise FelixInputError("atomic_sites is empty but refine_mode refines coordinates (B)")
    if any(not (isinstance(s, (int, np.integer)) and s >= 1) for s in inp.atomic_sites):
        raise FelixInputError(f"atomic_sites must be 1-based site indices, got {inp.atomic_sites!r}")
    _check_refine_mode(inp.refine_mode)


def format_felix_inp(inp: FelixInput, *, title: str | None = None) -> str:
    """The text of ``felix.inp`` for ``inp`` (FELIX v1.3 layout, 51 lines).

    Parameters
    ----------
    inp : FelixInput
    title : str, optional
        Text of the first comment line.

    Raises
    ------
    FelixInputError
        If a value cannot be written so that FELIX reads it back (see module docstring).
    """
    _validate(inp)
    lines = dict(_COMMENTS)
    lines[1] = "# " + (title or f"felix.inp written by lacbed-refine-felix {__version__} (FELIX v1.3 layout)")
    for lineno, key, attr, kind in _LAYOUT:
        value = getattr(inp, attr)
        if kind == "int":
            text = _format_int(value, attr)
        elif kind == "real":
            text = _format_real(value, attr)
        elif kind == "kv":
            text = _format_real(value / 1e3, attr)
        elif kind == "vector":
            text = _format_vector(value, attr)
        elif kind == "mode":
            text = _check_refine_mode(value)
        else:  # sites
            text = "(" + ",".join(str(int(s)) for s in value) + ")"
        lines[lineno] = f"{key:<26}= {text}"
    return "\n".join(lines[i] for i in range(1, _N_LINES + 1)) + "\n"


def write_felix_inp(inp: FelixInput, path, *, title: str | None = None) -> Path:
    """Write ``felix.inp`` (see :func:`format_felix_inp`); returns the path."""
    path = Path(path)
    path.write_text(format_felix_inp(inp, title=title), encoding="ascii")
    return path


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def read_felix_inp(path) -> FelixInput:
    """Read a FELIX v1.3 ``felix.inp`` exactly as FELIX does, by line position.

    Integers and reals are read from their Fortran fields (columns 28–42 and 28–45, blanks ignored,
    a real without a decimal point has 9 implied decimals); the key on each line is checked, so a
    file in another layout raises instead of being misread.

    Parameters
    ----------
    path : str or os.PathLike
        A ``felix.inp``, or a folder holding one.

    Raises
    ------
    FelixInputError
        One line naming the file and line: another layout (the first line whose key differs), a
        value that does not parse or is not finite, or values FELIX cannot run with (pixel count
        below 1, non-positive half-width, voltage or thickness step, final thickness below the
        initial one, more than 10000 thicknesses, an atomic-site index below 1).
    FileNotFoundError
        If there is no such file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "felix.inp"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such felix.inp")
    lines = path.read_text(encoding="latin-1").splitlines()
    values = {}
    for lineno, key, attr, kind in _LAYOUT:
        bare_key = key.split()[0]
        if lineno > len(lines):
            raise FelixInputError(
                f"{path}: {len(lines)} lines, expected {bare_key} on line {lineno} (FELIX v1.3 layout); "
                "FELIX would stop with 'premature end of file'"
            )
        line = lines[lineno - 1]
        if not line.lstrip().startswith(bare_key):
            raise FelixInputError(
                f"{path}: line {lineno} is {line.strip()!r}, expected {bare_key} (FELIX v1.3 layout); "
                "an older layout (e.g. without RgLimit on line 20) shifts every later value"
            )
        try:
            values[attr] = _parse_value(line, kind)
        except ValueError as exc:
            raise FelixInputError(f"{path}: line {lineno} ({bare_key}): {exc}") from None
    _check_read_values(values, path)
    return FelixInput(**values)


def _check_read_values(values: dict, path: Path) -> None:
    """Refuse values that parse but that FELIX (and :attr:`FelixInput.thicknesses`) cannot use."""
    line = {attr: (lineno, key.split()[0]) for lineno, key, attr, _ in _LAYOUT}

    def refuse(attr: str, why: str):
        lineno, key = line[attr]
        raise FelixInputError(f"{path}: line {lineno} ({key}): {why}")

    if values["pixel_count"] < 1:
        refuse("pixel_count", f"{values['pixel_count']} must be at least 1 (images are 2N x 2N pixels)")
    for attr, unit in (("half_width", "1/Å"), ("voltage", "kV"), ("thickness_delta", "Å")):
        value = values[attr] / (1e3 if attr == "voltage" else 1.0)
        if not value > 0:
            refuse(attr, f"{value:g} {unit} must be positive")
    ti, tf, dt = values["thickness_initial"], values["thickness_final"], values["thickness_delta"]
    if tf < ti:
        refuse("thickness_final", f"{tf:g} Å is below RInitialThickness {ti:g} Å")
    if (tf - ti) / dt > 10000:
        refuse("thickness_delta", f"{dt:g} Å from {ti:g} to {tf:g} Å gives more than 10000 thicknesses")
    bad_sites = [s for s in values["atomic_sites"] if s < 1]
    if bad_sites:
        refuse("atomic_sites", f"site indices {bad_sites} must be 1 or more (1-based rows of felix.cif)")


def _finite(x: float, field: str) -> float:
    if not math.isfinite(x):
        raise ValueError(f"{field.strip()!r} is not finite")
    return x


def _parse_value(line: str, kind: str):
    if kind == "int":
        return _fortran_int(line[_VALUE_START:_INT_END])
    if kind == "real":
        field = line[_VALUE_START:_REAL_END]
        return _finite(_fortran_real(field), field)
    if kind == "kv":
        field = line[_VALUE_START:_REAL_END]
        return _finite(_fortran_real(field) * 1e3, field)
    if kind == "vector":
        m = re.search(r"\[([^\]]*)\]", line[_VALUE_START:])
        parts = m.group(1).split(",") if m else []
        if len(parts) != 3:
            raise ValueError(f"{line[_VALUE_START:].strip()!r} is not a vector [u,v,w]")
        try:
            nums = [float(p) for p in parts]
        except ValueError:
            nums = [math.nan]
        # inf and nan would make int() raise OverflowError / a message about floats
        if not all(math.isfinite(n) and n == int(n) for n in nums):
            raise ValueError(f"{line[_VALUE_START:].strip()!r} is not an integer vector")
        return tuple(int(n) for n in nums)
    if kind == "mode":
        # FELIX: an S or s anywhere on the line means simulation only; else letters after "=".
        if "s" in line.lower():
            return "S"
        letters = line.split("=", 1)[1].upper() if "=" in line else ""
        return "".join(c for c in "ABCDEFGHI" if c in letters)
    # sites: the integers between the first "(" and ")" of the whole line
    m = re.search(r"\(([^)]*)\)", line)
    if m is None:
        raise ValueError(f"{line.strip()!r} has no (i,j,...) list of atomic sites")
    inner = m.group(1).replace(" ", "")
    return tuple(int(s) for s in inner.split(",")) if inner else ()


# ------------------------------------------------------------------------------------------------
# From the library's settings
# ------------------------------------------------------------------------------------------------
def thickness_grid(thicknesses) -> tuple[float, float, float]:
    """FELIX's (initial, final, delta) [Å] for a set of thicknesses [Å].

    One thickness gives delta 10 Å (any positive value works). Several give the coarsest even grid
    through all of them: delta is their greatest common step, on a 0.01 Å lattice.

    Raises
    ------
    ValueError
        If the thicknesses are not positive, or the common step is below 1 Å (FELIX names its output
        folders by the thickness rounded to 1 Å, so closer grid points would overwrite each other)
        or would need more than 10000 grid points.
    """
    t = sorted({float(x) for x in thicknesses})
    if not t:
        raise ValueError("no thicknesses given")
    if t[0] <= 0:
        raise ValueError(f"thicknesses must be positive (Å), got {t[0]!r}")
    if len(t) == 1:
        return t[0], t[0], 10.0
    steps = [round((b - t[0]) * 100) for b in t[1:]]
    g = 0
    for s in steps:
        g = math.gcd(g, s)
    delta = g / 100.0
    if delta < 1.0:
        raise ValueError(
            f"thicknesses {t} need a FELIX grid step of {delta:g} Å; FELIX names outputs by whole Å, "
            "so the step must be at least 1 Å"
        )
    if (t[-1] - t[0]) / delta > 10000:
        raise ValueError(f"thicknesses {t} need more than 10000 FELIX grid points (step {delta:g} Å)")
    for x in t:
        k = (x - t[0]) / delta
        if abs(k - round(k)) > 1e-6:
            raise ValueError(f"thickness {x} Å is not on a 0.01 Å grid; FELIX cannot simulate it exactly")
    return t[0], t[-1], delta


def felix_beam_pool(
    a: float, centring: str, voltage: float, *, g_limit: float | None = None, n_beams: int | None = None
) -> np.ndarray:
    """The beam pool FELIX HEAD builds for a cubic crystal along [001] (felix-spec §3.5).

    FELIX fills shells of width a* outward, in its loop order within a shell, keeping reflections
    allowed by the lattice centring that lie within 8 % of |g| of the Ewald sphere, until the pool
    holds ``n_beams`` or the shell passes ``g_limit``. Two things differ from
    :func:`lacbed_refine.structure.reflections.zolz_beams`: a positive ``g_limit`` is rounded *up* to a whole
    number of shells (|g| ≤ ceil(g_limit·a)/a), and a count cap can cut a shell, and the pool can
    hold near-ZOLZ (l ≠ 0) reflections for large cells.

    Parameters
    ----------
    a : float
        Cubic cell edge [Å].
    centring : {"P", "F", "I"}
    voltage : float
        Accelerating voltage [V].
    g_limit : float, optional
        ``RgLimit`` [Å⁻¹, 1/d units]; > 0 makes FELIX ignore ``n_beams``.
    n_beams : int, optional
        ``IMinReflectionPool``, used when ``g_limit`` is None or ≤ 0.

    Returns
    -------
    hkl : ndarray, shape (n, 3), int
        000 first, then ascending |g|.
    """
    k = wavevector_2pi(voltage)
    shell = 2 * math.pi / a
    if g_limit is not None and g_limit > 0:
        limit, cap = g_limit * 2 * math.pi, 66666
    else:
        if n_beams is None or n_beams < 1:
            raise ValueError("give g_limit > 0 or n_beams >= 1")
        limit, cap = 10.0 * 2 * math.pi, int(n_beams)
    nmax = _nint(limit / shell)
    r = np.arange(-nmax, nmax + 1)
    h, kk, l = (x.ravel() for x in np.meshgrid(r, r, r, indexing="ij"))  # FELIX's loop order
    hkl = np.stack([h, kk, l], axis=1)
    hkl = hkl[centring_allows(hkl, centring) & ~np.all(hkl == 0, axis=1)]
    g = hkl * shell
    gmag = np.sqrt((g**2).sum(1))
    dev = np.abs(k - np.sqrt(g[:, 0] ** 2 + g[:, 1] ** 2 + (g[:, 2] + k) ** 2)) / gmag
    near = dev - 0.08 < 1e-9
    pool = [np.zeros(3, dtype=np.int64)]
    n = 1
    lnd = 0
    while n < cap and lnd * shell < limit:
        lnd += 1
        sel = near & (gmag > (lnd - 1) * shell) & (gmag <= lnd * shell)
        take = hkl[sel][: cap - n]
        pool.extend(take)
        n += len(take)
    out = np.array(pool, dtype=np.int64)
    order = np.argsort((out.astype(float) ** 2).sum(1), kind="stable")
    return out[order]


def felix_input_for(crystal: Crystal, settings: SimulationSettings, **overrides) -> FelixInput:
    """The ``felix.inp`` values that ask FELIX for what ``settings`` ask of the Bloch engine.

    Mapping: size → ``IPixelCount`` = size/2; half-width → ``ROuterConvergenceAngle``; voltage;
    thicknesses → the coarsest even grid through them (:func:`thickness_grid`); ``g_limit`` →
    ``RgLimit`` (FELIX rounds it up to whole shells of a*), else ``n_beams`` →
    ``IMinReflectionPool``; ``strong_beams`` → ``IMinStrongBeams`` (FELIX's own per-pixel rule,
    whatever ``strong_rule`` says), or, when None (the whole pool at every pixel), the pool size
    less one, the most FELIX accepts; ``absorption`` > 0 → proportional absorption
    (``IAbsorbFLAG`` 1, ``RAbsorptionPer``), which FELIX applies without the uniform term U′₀;
    ``form_factors`` → ``IScatterFactorMethodFLAG`` (0 Kirkland, 1 Peng). ``RDebyeWallerConstant``
    is 0 when a site has B = 0 (FELIX reads B = 0 as "missing" and substitutes it).

    Parameters
    ----------
    crystal : Crystal
    settings : SimulationSettings
    **overrides
        Any :class:`FelixInput` field, e.g. ``refine_mode="BD"``.

    Raises
    ------
    ValueError
        If a setting has no FELIX equivalent (form factors, thickness grid, pool not larger than
        the strong beams).
    """
    if settings.size % 2 or settings.size < 2:
        raise ValueError(f"size must be even (FELIX images are 2N x 2N), got {settings.size!r}")
    try:
        form = _FORM_FACTOR_FLAGS[settings.form_factors]
    except KeyError:
        raise ValueError(
            f"form_factors {settings.form_factors!r} has no FELIX flag; use one of {sorted(_FORM_FACTOR_FLAGS)}"
        ) from None
    ti, tf, dt = thickness_grid(settings.thicknesses)
    if settings.g_limit is not None:
        g_limit, pool_cap = float(settings.g_limit), 0
    elif settings.n_beams is not None:
        g_limit, pool_cap = 0.0, int(settings.n_beams)
    else:
        raise ValueError("settings give neither n_beams nor g_limit; FELIX needs one of them")
    pool = felix_beam_pool(
        crystal.a, crystal.spacegroup_symbol[0], settings.voltage,
        g_limit=g_limit if g_limit > 0 else None, n_beams=pool_cap or None,
    )
    if len(pool) < _MIN_POOL:
        raise ValueError(
            f"FELIX's beam pool for these settings has {len(pool)} beams; FELIX HEAD needs at least {_MIN_POOL} "
            "(it prints pool rows 1-40 while setting up Ug, which overruns a smaller pool); widen g_limit or n_beams"
        )
    strong = len(pool) - 1 if settings.strong_beams is None else int(settings.strong_beams)
    if strong >= len(pool):
        raise ValueError(
            f"strong_beams {strong} must be below FELIX's pool of {len(pool)} beams for these settings"
        )
    b_values = [s.b_iso for s in crystal.sites]
    values = dict(
        pixel_count=settings.size // 2,
        half_width=float(settings.half_width),
        voltage=float(settings.voltage),
        thickness_initial=ti,
        thickness_final=tf,
        thickness_delta=dt,
        min_reflection_pool=pool_cap,
        min_strong_beams=strong,
        g_limit=g_limit,
        debye_waller=0.0 if any(abs(b) <= 1e-9 for b in b_values) else DEFAULT_B_ISO,
        absorb_flag=1 if settings.absorption > 0 else 0,
        absorption_percent=float(settings.absorption),
        scatter_factor_method=form,
    )
    unknown = set(overrides) - {f.name for f in fields(FelixInput)}
    if unknown:
        raise TypeError(f"unknown FelixInput field(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    return FelixInput(**values)


def _check_reflections(crystal: Crystal, inp: FelixInput, reflections) -> None:
    pool = felix_beam_pool(
        crystal.a, crystal.spacegroup_symbol[0], inp.voltage,
        g_limit=inp.g_limit if inp.g_limit > 0 else None,
        n_beams=inp.min_reflection_pool if inp.g_limit <= 0 else None,
    )
    in_pool = {tuple(int(x) for x in r) for r in pool}
    missing = [tuple(r) for r in reflections if tuple(int(x) for x in r) not in in_pool]
    if missing:
        raise ValueError(
            f"reflection(s) {missing} are not in FELIX's beam pool of {len(pool)} beams for these settings "
            "(FELIX would drop them without an error); widen the pool (g_limit or n_beams) or check the "
            "lattice centring"
        )
