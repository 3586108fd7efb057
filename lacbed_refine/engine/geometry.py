"""LACBED geometry for the [001] zone of a cubic crystal: tilt grid, beam pool and presets.

Frames, units and the pixel-to-tilt rule are stated in :mod:`.conventions`. Reciprocal vectors here
are in 1/d units [Å⁻¹]; the Bloch engine multiplies by 2π.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lacbed_refine.conventions import paper_half_width
from lacbed_refine.structure.reflections import MAX_BEAMS

__all__ = [
    "tilt_grid",
    "SimulationSettings",
    "paper_preset",
    "paper_pool_size",
    "check_settings",
    "MAX_SIZE",
    "MAX_BEAMS",
    "PAPER_THICKNESSES_NM",
]

#: Thicknesses of the paper's data set [nm].
PAPER_THICKNESSES_NM = (50.0, 100.0, 150.0, 200.0)


def tilt_grid(size: int, half_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Incident-beam tilts of every pixel, FELIX's grid (no mask).

    Parameters
    ----------
    size : int
        Pattern edge in pixels (even: 2N).
    half_width : float
        Half-width of the tilt square [Å⁻¹, 1/d units] (FELIX ``ROuterConvergenceAngle``).

    Returns
    -------
    kx, ky : ndarray, shape (size, size)
        Tangential tilt components [Å⁻¹, 1/d units] of pixel ``[row, col]``: kx varies along
        columns, ky along rows.
    """
    if size < 2 or size % 2:
        raise ValueError(f"size must be an even number of pixels >= 2, got {size!r}")
    if not half_width > 0:
        raise ValueError(f"half_width must be positive (Å⁻¹), got {half_width!r}")
    n = size // 2
    delta = half_width / n
    axis = (np.arange(size) - n + 0.5) * delta
    ky, kx = np.meshgrid(axis, axis, indexing="ij")
    return kx, ky






def paper_pool_size(a: float) -> int:
    """Beam-pool size of the paper's data scripts: 250 (a < 4 Å) … 225·a − 650 … 2500 (a > 14 Å)."""
    return int(round(min(2500.0, max(250.0, 225.0 * a - 650.0))))


@dataclass(frozen=True)
class SimulationSettings:
    """Everything the Bloch engine needs besides the crystal.

    Attributes
    ----------
    voltage : float
        Accelerating voltage [V].
    size : int
        Pattern edge [pixels] (2N).
    half_width : float
        Tilt half-width [Å⁻¹, 1/d units].
    thicknesses : tuple of float
        Specimen thicknesses [Å].
    n_beams : int or None
        Beam-pool size (whole shells, ≥ this many). Exclusive with ``g_limit``.
    g_limit : float or None
        Beam-pool |g| limit [Å⁻¹, 1/d units].
    strong_beams : int or None
        If set, each pixel uses only this many pool beams, those nearest their Bragg condition
        (FELIX's per-pixel strong-beam choice); None uses the whole pool at every pixel.
    absorption : float
        Proportional absorption, U' = i (absorption/100) U [%]; 0 for none.
    form_factors : {"kirkland", "peng"}
    reflections : tuple of (h, k, l)
        Beams to return images of; (0, 0, 0) is the bright field.
    mean_absorption : bool
        Include the uniform attenuation from U'₀ (FELIX omits it; False reproduces FELIX).
    strong_rule : {"count", "felix"}
        How ``strong_beams`` is applied: exactly that many per pixel (fast), or FELIX's rule (at
        least that many, emulated in the full matrix; reproduces FELIX). Away from cubic [001]
        only FELIX's rule exists.
    zone : (u, v, w)
        Incident-beam direction, a direct-lattice vector (FELIX ``IIncidentBeamDirection``).
    x_direction : (h, k, l) or None
        Reciprocal-lattice vector along the image +x axis, perpendicular to ``zone``
        (FELIX ``IXDirection``); None: (1, 0, 0) at [001], else the shortest such vector
        (:func:`lacbed_refine.engine.zone.default_x_direction`).
    normal : (u, v, w) or None
        Specimen surface normal, a direct-lattice vector (FELIX ``INormalDirection``); None: ``zone``.
    absorption_model : {"none", "proportional", "bird-king"} or None
        None: "proportional" when ``absorption`` > 0, else "none". "bird-king" computes U′ from
        Bird & King's absorptive form factors (FELIX's default, IAbsorbFLAG 2) and ignores ``absorption``.
    bethe : bool
        With ``strong_beams``: keep the pool's weak beams as second-order (Bethe) couplings in each
        pixel's strong block instead of dropping them (general engine only; FELIX's default is off).
    """

    voltage: float = 200e3
    size: int = 128
    half_width: float = 1.0
    thicknesses: tuple[float, ...] = tuple(t * 10.0 for t in PAPER_THICKNESSES_NM)
    n_beams: int | None = None
    g_limit: float | None = None
    strong_beams: int | None = None
    absorption: float = 0.0
    form_factors: str = "kirkland"
    reflections: tuple[tuple[int, int, int], ...] = ((0, 0, 0),)
    mean_absorption: bool = True
    strong_rule: str = "count"
    zone: tuple[int, int, int] = (0, 0, 1)
    x_direction: tuple[int, int, int] | None = None
    normal: tuple[int, int, int] | None = None
    absorption_model: str | None = None
    bethe: bool = False

    def __post_init__(self):
        check_settings(self)

    @property
    def absorption_kind(self) -> str:
        """The absorption model in force: "none", "proportional" or "bird-king"."""
        if self.absorption_model is not None:
            return self.absorption_model
        return "proportional" if self.absorption > 0 else "none"

    @property
    def standard_001(self) -> bool:
        """True for the geometry of the fast cubic [001] engine: beam [001], x [100], normal [001],
        no Bird–King absorption."""
        return (tuple(self.zone) == (0, 0, 1) and self.x_direction in (None, (1, 0, 0))
                and self.normal in (None, (0, 0, 1)) and self.absorption_kind != "bird-king")


#: Bounds of the settings an electron crystallographer can mean (outside: a typo or a unit slip).
VOLTAGE_RANGE_V = (10e3, 3e6)
#: Largest pattern edge [pixels]: 1024² pixels already take tens of minutes per thickness scan.
MAX_SIZE = 1024
#: Largest specimen thickness [Å] (5 µm): far beyond what transmits at any voltage here.
MAX_THICKNESS_A = 5e4
#: Largest incident-beam tilt [rad]: the engine's small-tilt geometry (and LACBED) stops well before.
MAX_TILT_RAD = 0.25


def _finite(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def check_settings(s: "SimulationSettings") -> None:
    """Check every field of simulation settings; raises ValueError naming the option and value.

    Called on construction, so the CLI, the library and batch rows are all checked before any work.
    """
    from lacbed_refine.conventions import NM, electron_wavelength

    if not _finite(s.voltage) or not VOLTAGE_RANGE_V[0] <= s.voltage <= VOLTAGE_RANGE_V[1]:
        raise ValueError(f"--kv {float(s.voltage) / 1e3:g}: the accelerating voltage must be "
                         f"{VOLTAGE_RANGE_V[0] / 1e3:g}–{VOLTAGE_RANGE_V[1] / 1e3:g} kV")
    if isinstance(s.size, bool) or not isinstance(s.size, (int, np.integer)) or s.size < 4 or s.size % 2:
        raise ValueError(f"--size {s.size!r}: the pattern edge must be an even number of pixels >= 4")
    if s.size > MAX_SIZE:
        raise ValueError(f"--size {s.size}: larger than {MAX_SIZE} pixels ({s.size ** 2:,} pixels to solve); "
                         f"simulate at most {MAX_SIZE} and resample")
    if not _finite(s.half_width) or not s.half_width > 0:
        raise ValueError(f"--half-width {s.half_width!r}: the tilt half-width must be a positive number of Å⁻¹")
    tilt = s.half_width * electron_wavelength(s.voltage)
    if tilt > MAX_TILT_RAD:
        raise ValueError(f"--half-width {s.half_width:g} Å⁻¹: a tilt of {1e3 * tilt:.0f} mrad at "
                         f"{s.voltage / 1e3:g} kV; at most {1e3 * MAX_TILT_RAD:.0f} mrad is supported")
    t = tuple(s.thicknesses)
    if not t:
        raise ValueError("--thickness: no thickness given")
    for x in t:
        if not _finite(x) or x < 0 or x > MAX_THICKNESS_A:
            raise ValueError(f"--thickness {x / NM if _finite(x) else x} nm: thicknesses must be finite, "
                             f"0–{MAX_THICKNESS_A / NM:g} nm")
    if s.n_beams is not None:
        if isinstance(s.n_beams, bool) or not isinstance(s.n_beams, (int, np.integer)) or s.n_beams < 2:
            raise ValueError(f"--beams {s.n_beams!r}: the beam pool needs at least 2 beams (000 and more)")
        if s.n_beams > MAX_BEAMS:
            raise ValueError(f"--beams {s.n_beams}: more than {MAX_BEAMS} beams (the structure matrix alone "
                             f"would take {s.n_beams ** 2 * 16 / 2 ** 30:.1f} GiB per pixel)")
    if s.g_limit is not None and (not _finite(s.g_limit) or not s.g_limit > 0):
        raise ValueError(f"--g-limit {s.g_limit!r}: must be a positive number of Å⁻¹")
    if s.strong_beams is not None and (isinstance(s.strong_beams, bool) or not isinstance(s.strong_beams, (int, np.integer))
                                       or s.strong_beams < 2):
        raise ValueError(f"--strong-beams {s.strong_beams!r}: at least 2 beams per pixel")
    if not _finite(s.absorption) or not 0 <= s.absorption <= 100:
        raise ValueError(f"--absorption {s.absorption!r}: proportional absorption must be 0–100 %")
    if s.form_factors not in ("kirkland", "peng"):
        raise ValueError(f"--form-factors {s.form_factors!r}: use kirkland or peng")
    if s.strong_rule not in ("count", "felix"):
        raise ValueError(f"--strong-rule {s.strong_rule!r}: use count or felix")
    for r in s.reflections:
        if len(tuple(r)) != 3 or not all(isinstance(i, (int, np.integer)) for i in r):
            raise ValueError(f"--reflections: {r!r} is not three integers h k l")
    if s.absorption_model not in (None, "none", "proportional", "bird-king"):
        raise ValueError(f"--absorption-model {s.absorption_model!r}: use none, proportional or bird-king")
    if not isinstance(s.bethe, (bool, np.bool_)):
        raise ValueError(f"--bethe {s.bethe!r}: must be true or false")
    from lacbed_refine.engine.zone import ZoneAxis

    # ZoneAxis checks the three vectors (integers, not zero, x ⊥ zone) and names the option
    zone = ZoneAxis(s.zone, s.x_direction if s.x_direction is not None else _some_perpendicular(s.zone), s.normal)
    object.__setattr__(s, "zone", zone.zone)
    if s.x_direction is not None:
        object.__setattr__(s, "x_direction", zone.x_direction)
    if s.normal is not None:
        object.__setattr__(s, "normal", zone.normal)


def _some_perpendicular(zone) -> tuple[int, int, int]:
    """Any integer (h, k, l) with h u + k v + l w = 0 (only to check the zone before a cell is known)."""
    try:
        u, v, w = (int(x) for x in zone)
    except (TypeError, ValueError):
        return (1, 0, 0)
    for cand in ((1, 0, 0), (0, 1, 0), (0, 0, 1), (v, -u, 0), (0, w, -v), (w, 0, -u)):
        if any(cand) and cand[0] * u + cand[1] * v + cand[2] * w == 0:
            return cand
    return (1, 0, 0)


def paper_preset(a: float, **overrides) -> SimulationSettings:
    """The paper's data preset for a cubic cell edge ``a`` [Å].

    200 kV, 128×128 pixels, half-width 7.266/a Å⁻¹, no absorption, Kirkland form factors,
    thicknesses 50/100/150/200 nm; a ZOLZ beam pool of :func:`paper_pool_size` beams of which a
    quarter are used per pixel as strong beams (source: the data scripts of wephy/ai-diffraction).
    ``overrides`` replace any field.
    """
    pool = paper_pool_size(a)
    settings = dict(
        voltage=200e3,
        size=128,
        half_width=paper_half_width(a),
        thicknesses=tuple(t * 10.0 for t in PAPER_THICKNESSES_NM),
        n_beams=pool,
        strong_beams=max(1, pool // 4),
        absorption=0.0,
        form_factors="kirkland",
    )
    settings.update(overrides)
    return SimulationSettings(**settings)
