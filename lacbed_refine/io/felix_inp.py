"""FELIX input files, ``felix.inp`` and ``felix.hkl``, in both of their dialects.

Two programs read a file called ``felix.inp``, in two different layouts:

``"v1.3"`` — FELIX (Fortran, WarwickMicroscopy/Felix v1.3)
    Read by **line position** (felix-spec §1.1): FELIX ignores the key names and reads each value
    from column 28 of a fixed line, integers with the Fortran format ``(27X,I15)``, reals with
    ``(27X,F18.9)``, vectors ``[u,v,w]`` and the two text lines (refinement letters, atomic sites)
    whole. An extra or missing line shifts every later value, so the reader checks the key on every
    line and rejects another layout (the older one without ``RgLimit`` makes FELIX HEAD stop). A
    real without a decimal point has 9 implied decimals (``3`` means 3e-9) and only 17 characters
    after ``= `` are read, so the writer always writes a point and never overflows the field.

``"python"`` — the Python port (WarwickMicroscopy/Felix-python)
    ``key = value`` lines in any order, each value a Python literal (``200.0``, ``'S'``,
    ``[1, -1, 0]``); lines without ``=`` (comments, the port's help text) are ignored. Several
    codes differ from v1.3 and are translated here so that the same settings give the same
    :class:`FelixInput` (see :func:`parse_felix_inp`): the form-factor numbering, the atomic-site
    indices (0-based in the port, 1-based in FELIX) and ``refinement_scale`` (a fraction; FELIX's
    ``RSimplexLengthScale`` is in %).

Units follow the library (:mod:`lacbed_refine.conventions`): V, Å, Å², and Å⁻¹ in 1/d units (no 2π;
``RgLimit``/``g_limit`` and ``ROuterConvergenceAngle``/``convergence_angle`` are in those units in
both programs). The files give the voltage in kV; conversion happens here.

Every problem in a file raises one :class:`FelixInputError` (a ``ValueError``) whose one-line
message names the file, the line and the value.
"""

from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lacbed_refine.conventions import electron_wavelength
from lacbed_refine.version import __version__

__all__ = [
    "DEFAULT_DEBYE_WALLER",
    "DIALECTS",
    "REFINE_LETTERS",
    "FelixInput",
    "FelixInputError",
    "FelixSettings",
    "detect_dialect",
    "format_felix_inp",
    "parse_felix_inp",
    "read_felix_inp",
    "read_hkl",
    "write_felix_inp",
]

#: The two layouts of ``felix.inp``: FELIX v1.3's line positions and the Python port's ``key = value``.
DIALECTS = ("v1.3", "python")

#: ``RDebyeWallerConstant`` default [Å²]: the library's default isotropic B
#: (``lacbed_refine.structure.crystal.DEFAULT_B_ISO``; the tests check that they agree).
DEFAULT_DEBYE_WALLER = 0.5

#: Refinement letters FELIX HEAD runs (felix-spec §5): Ug (A, alone), coordinates (B),
#: occupancy (C), isotropic B (D), lattice parameter (F), convergence angle (H).
REFINE_LETTERS = "ABCDFH"
_ABORTING_LETTERS = {"E": "anisotropic B", "G": "cell angles", "I": "accelerating voltage"}
#: Letters the Python port knows: S, A-K as in FELIX plus J, K (valence/kappa) and O (beam pool).
_PORT_LETTERS = "ABCDEFGHIJKOS"

# Form factors: FELIX v1.3's IScatterFactorMethodFLAG numbering (0-3); 4 and 5 are the Python port's
# kappa models, which FELIX v1.3 does not have (they keep the port's numbers).
_FORM_FACTORS = {0: "kirkland", 1: "peng", 2: "doyle-turner", 3: "lobato", 4: "kappa-coppens", 5: "kappa-bunge"}
# The port numbers them 0 Kirkland, 1 Lobato, 2 Peng, 3 Doyle-Turner, 4 Coppens RHF, 5 Bunge RHF.
_PORT_TO_FELIX_FORM = {0: 0, 1: 3, 2: 1, 3: 2, 4: 4, 5: 5}
_FELIX_TO_PORT_FORM = {v: k for k, v in _PORT_TO_FELIX_FORM.items()}
_ABSORPTION = {0: "none", 1: "proportional", 2: "bird-king"}
_DEBYE_MODELS = {0: "isotropic", 1: "anisotropic"}

# Value fields: (27X, I15) reads columns 28-42, (27X, F18.9) columns 28-45 (1-based). The writer puts
# "= " in columns 27-28, so a value has 14 (integer) or 17 (real) characters from column 29.
_VALUE_START = 27
_INT_END = 27 + 15
_REAL_END = 27 + 18
_INT_WIDTH = 14
_REAL_WIDTH = 17


class FelixInputError(ValueError):
    """A ``felix.inp`` or ``felix.hkl`` that cannot be read as FELIX (or its Python port) would read
    it, or values that cannot be written so; the message names the file, the line and the value."""


@dataclass(frozen=True)
class FelixInput:
    """Every value of a ``felix.inp`` (either dialect), in library units.

    Field names and defaults are those of the FELIX plugin's ``FelixInput`` (a drop-in
    replacement); ``debye_model``, ``plot`` and ``debug`` are settings only the Python port has.
    Defaults are those of the project's reference runs (simulation only, no absorption, Kirkland
    form factors, [001] zone with image +x along [100]).

    Attributes
    ----------
    pixel_count : int
        ``IPixelCount`` / ``image_radius`` N [pixels]: the image *half*-size; images are 2N × 2N.
    half_width : float
        ``ROuterConvergenceAngle`` / ``convergence_angle``: tilt half-width of the image
        [Å⁻¹, 1/d units]; the pixel step is ``half_width / pixel_count``.
    voltage : float
        Accelerating voltage [V] (both files write kV).
    thickness_initial, thickness_final, thickness_delta : float
        ``RInitialThickness``, ``RFinalThickness``, ``RDeltaThickness`` [Å] (the port's
        ``initial_thickness``, ...). The two programs expand them differently: see
        :meth:`thickness_grid`.
    min_reflection_pool : int
        ``IMinReflectionPool``: beam-pool size, used only when ``g_limit`` ≤ 0.
    min_strong_beams : int
        ``IMinStrongBeams``: the least number of beams in the Bloch matrix at each pixel.
    min_weak_beams : int
        ``IMinWeakBeams``: perturbative beams (0: none).
    g_limit : float
        ``RgLimit`` [Å⁻¹, 1/d units]; ≤ 0 means "use the pool-size cap".
    debye_waller : float
        ``RDebyeWallerConstant`` [Å²]: B for CIF sites that give none.
    absorb_flag : int
        ``IAbsorbFLAG`` / ``absorption_method``: 0 none, 1 proportional, 2 Bird–King (FELIX reads
        any other value as none).
    absorption_percent : float
        ``RAbsorptionPer`` [%], used by ``absorb_flag`` 1.
    scatter_factor_method : int
        Form factors in FELIX v1.3's numbering: 0 Kirkland, 1 Peng, 2 Doyle–Turner, 3 Lobato;
        4 kappa (Coppens RHF) and 5 kappa (Bunge RHF) exist only in the Python port. The port's own
        numbering (0 Kirkland, 1 Lobato, 2 Peng, 3 Doyle–Turner) is translated when reading.
    write_flag, holz_flag, byte_size : int
        ``IWriteFLAG`` (verbosity), ``IHolzFLAG`` (0), ``IByteSize`` (8 for gfortran builds).
    beam_direction : tuple of 3 int
        ``IIncidentBeamDirection``: the zone axis [uvw], real space.
    x_direction : tuple of 3 int
        ``IXDirection``: image +x as a reciprocal direction [hkl]; ⊥ to the beam.
    normal_direction : tuple of 3 int
        ``INormalDirection`` (the port's ``normal``): surface normal [uvw], real space.
    acceptance_angle : float
        ``RAcceptanceAngle`` [degrees]; 0 for none.
    precision : float
        ``RPrecision``: the figure-of-merit noise level (FELIX) or the exit rule (the port).
    refine_mode : str
        ``"S"`` (simulation only) or refinement letters, canonical order, e.g. ``"BD"``.
    weighting_flag, refine_method, correlation_flag, image_processing_flag : int
        ``IWeightingFLAG``, ``IRefineMethodFLAG``, ``ICorrelationFLAG``, ``IImageProcessingFLAG``
        as the file gives them: the two programs number these refinement options differently
        (FELIX: felix-spec §1.1; the port: its ``felix.inp`` help text).
    blur_radius : float
        ``RBlurRadius``: Gaussian σ [pixels] applied to simulated images.
    n_ugs : int
        ``INoofUgs``: structure factors refined in mode A.
    atomic_sites : tuple of int
        ``IAtomicSites``: **1-based** indices into the CIF's atom-site loop (the port's 0-based
        ``atomic_sites`` plus one).
    print_every : int
        ``IPrint`` / ``print_flag``.
    simplex_length_scale : float
        ``RSimplexLengthScale`` [%] (the port's ``refinement_scale`` × 100).
    exit_criteria : float
        ``RExitCriteria``.
    debye_model : int
        The port's ``Debye_model``: 0 isotropic B, 1 anisotropic U_ij (FELIX v1.3: isotropic only).
    plot, debug : int
        The port's plotting and debug-output levels (run control only).
    dialect : {"v1.3", "python"}
        The layout the values were read from (not compared: equal settings are equal inputs).
    source : str or None
        The file the values were read from, for messages (not compared).
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
    debye_waller: float = DEFAULT_DEBYE_WALLER
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
    debye_model: int = 0
    plot: int = 0
    debug: int = 0
    dialect: str = field(default="v1.3", compare=False)
    source: str | None = field(default=None, compare=False, repr=False)

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

    def thickness_grid(self, rule: str | None = None) -> np.ndarray:
        """The thicknesses [Å] that FELIX (``rule="v1.3"``) or its Python port (``"python"``) simulates.

        FELIX v1.3: NINT((tf − ti)/Δt) + 1 values ti, ti + Δt, ... (tf included when on the grid).
        The Python port: ``numpy.arange(ti, tf, Δt)`` (tf excluded) when tf > ti + Δt, else ti alone.
        They differ: ti, tf, Δt = 500, 2000, 500 Å gives 500–2000 Å (4) in FELIX, 500–1500 Å (3)
        in the port.

        Parameters
        ----------
        rule : {"v1.3", "python"}, optional
            Default: the dialect the values were read from (:attr:`dialect`).

        Returns
        -------
        thicknesses : ndarray, shape (T,), float64
            [Å].
        """
        rule = self.dialect if rule is None else rule
        if rule not in DIALECTS:
            raise ValueError(f"rule must be one of {DIALECTS}, got {rule!r}")
        ti, tf, dt = self.thickness_initial, self.thickness_final, self.thickness_delta
        if rule == "v1.3":
            return np.asarray(self.thicknesses, dtype=np.float64)
        if tf > ti + dt:
            return np.arange(ti, tf, dt, dtype=np.float64)
        return np.array([ti], dtype=np.float64)

    def simulation_settings(self, *, thickness_rule: str | None = None) -> FelixSettings:
        """The settings that decide the simulated patterns, in plain units.

        Parameters
        ----------
        thickness_rule : {"v1.3", "python"}, optional
            How ti, tf, Δt become thicknesses (:meth:`thickness_grid`); default: the dialect the
            values were read from.

        Raises
        ------
        FelixInputError
            If the zone axis, x direction or normal is [0,0,0], x is not perpendicular to the beam
            (h·u + k·v + l·w ≠ 0: image +x must lie in the zero-order Laue zone), or the half-width
            reaches past the Ewald sphere (λ · half_width ≥ 1).
        """
        where = self.source or "felix.inp"
        for name, v in (("beam_direction", self.beam_direction), ("x_direction", self.x_direction),
                        ("normal_direction", self.normal_direction)):
            if not any(v):
                raise FelixInputError(f"{where}: {name} is [0,0,0]; a direction is needed")
        dot = sum(int(a) * int(b) for a, b in zip(self.beam_direction, self.x_direction))
        if dot != 0:
            raise FelixInputError(
                f"{where}: x_direction {_vec(self.x_direction)} is not perpendicular to the beam "
                f"{_vec(self.beam_direction)} (h·u + k·v + l·w = {dot}, must be 0)"
            )
        model = _ABSORPTION.get(self.absorb_flag, "none")
        pixel = self.half_width / self.pixel_count
        s = self.half_width * electron_wavelength(self.voltage)
        if not s < 1:
            raise FelixInputError(
                f"{where}: half_width {self.half_width:g} 1/Å is beyond the Ewald sphere at {self.voltage / 1e3:g} kV"
            )
        return FelixSettings(
            zone=tuple(int(x) for x in self.beam_direction),
            x_direction=tuple(int(x) for x in self.x_direction),
            normal=tuple(int(x) for x in self.normal_direction),
            voltage_kv=self.voltage / 1e3,
            thicknesses=self.thickness_grid(thickness_rule),
            image_radius=int(self.pixel_count),
            image_size=2 * int(self.pixel_count),
            half_width=float(self.half_width),
            pixel_step=pixel,
            convergence_half_angle_mrad=1e3 * math.asin(s),
            absorption=model,
            absorption_percent=float(self.absorption_percent) if model == "proportional" else None,
            form_factors=_FORM_FACTORS.get(self.scatter_factor_method),
            g_limit=float(self.g_limit) if self.g_limit > 0 else None,
            n_beams=int(self.min_reflection_pool) if self.g_limit <= 0 else None,
            strong_beams=int(self.min_strong_beams),
            weak_beams=int(self.min_weak_beams),
            debye_waller=float(self.debye_waller),
            debye_model=_DEBYE_MODELS.get(self.debye_model, "isotropic"),
            holz=bool(self.holz_flag),
            acceptance_angle=float(self.acceptance_angle),
        )


@dataclass(frozen=True, eq=False)
class FelixSettings:
    """The simulation-relevant part of a ``felix.inp``, in plain units (:meth:`FelixInput.simulation_settings`).

    Attributes
    ----------
    zone : tuple of 3 int
        Beam direction (zone axis) [uvw], real space.
    x_direction : tuple of 3 int
        Image +x [hkl], reciprocal space, in the zone (h·u + k·v + l·w = 0).
    normal : tuple of 3 int
        Surface normal [uvw], real space.
    voltage_kv : float
        Accelerating voltage [kV].
    thicknesses : ndarray, shape (T,), float64
        Specimen thicknesses [Å].
    image_radius : int
        N [pixels] (FELIX's ``IPixelCount``, the port's ``image_radius``).
    image_size : int
        Image edge 2N [pixels]; images are 2N × 2N.
    half_width : float
        Half-width of the disc (image) in tilt [Å⁻¹, 1/d units].
    pixel_step : float
        Tilt per pixel [Å⁻¹, 1/d units], ``half_width / image_radius``.
    convergence_half_angle_mrad : float
        The convergence half-angle that half-width means, asin(λ · half_width) [mrad].
    absorption : {"none", "proportional", "bird-king"}
        Absorption model.
    absorption_percent : float or None
        U′/U [%] for the proportional model; None for the others (which do not use it).
    form_factors : {"kirkland", "peng", "doyle-turner", "lobato", "kappa-coppens", "kappa-bunge"} or None
        None for a code neither program defines.
    g_limit : float or None
        Beam-pool limit on |g| [Å⁻¹, 1/d units] when the file gives one (> 0), else None.
    n_beams : int or None
        Beam-pool size cap, used when ``g_limit`` is None.
    strong_beams : int
        Least number of beams in the Bloch matrix at each pixel (``IMinStrongBeams``).
    weak_beams : int
        Least number of perturbative (Bethe) beams (``IMinWeakBeams``).
    debye_waller : float
        Default B [Å²] for CIF sites without one.
    debye_model : {"isotropic", "anisotropic"}
    holz : bool
        FELIX's HOLZ branch flag.
    acceptance_angle : float
        [degrees]; 0 for none.
    """

    zone: tuple[int, int, int]
    x_direction: tuple[int, int, int]
    normal: tuple[int, int, int]
    voltage_kv: float
    thicknesses: np.ndarray
    image_radius: int
    image_size: int
    half_width: float
    pixel_step: float
    convergence_half_angle_mrad: float
    absorption: str
    absorption_percent: float | None
    form_factors: str | None
    g_limit: float | None
    n_beams: int | None
    strong_beams: int
    weak_beams: int
    debye_waller: float
    debye_model: str
    holz: bool
    acceptance_angle: float


# ------------------------------------------------------------------------------------------------
# Layouts
# ------------------------------------------------------------------------------------------------
# FELIX v1.3: (line, key as written, attribute, kind). Every other line of the 51 is a comment.
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
_V13_KEYS = {key.split()[0] for _, key, _, _ in _LAYOUT} | {"IReflectOut"}  # IReflectOut: older layout

# The Python port: key -> (attribute, kind), in the order its felix.inp lists them. Kinds: see
# _port_value. Aliases: "normal_direction" (the port's name until 2025) and the "*_flag" names of its
# first versions.
_PORT_KEYS = {
    "write_flag": ("write_flag", "int"),
    "scatter_factor_method": ("scatter_factor_method", "port_form"),
    "holz_flag": ("holz_flag", "int"),
    "absorption_method": ("absorb_flag", "absorption"),
    "byte_size": ("byte_size", "int"),
    "Debye_model": ("debye_model", "debye_model"),
    "image_radius": ("pixel_count", "int"),
    "min_reflection_pool": ("min_reflection_pool", "int"),
    "min_strong_beams": ("min_strong_beams", "int"),
    "min_weak_beams": ("min_weak_beams", "int"),
    "g_limit": ("g_limit", "real"),
    "debye_waller_constant": ("debye_waller", "real"),
    "absorption_per": ("absorption_percent", "real"),
    "convergence_angle": ("half_width", "real"),
    "incident_beam_direction": ("beam_direction", "vector"),
    "x_direction": ("x_direction", "vector"),
    "normal": ("normal_direction", "vector"),
    "accelerating_voltage_kv": ("voltage", "kv"),
    "acceptance_angle": ("acceptance_angle", "real"),
    "initial_thickness": ("thickness_initial", "real"),
    "final_thickness": ("thickness_final", "real"),
    "delta_thickness": ("thickness_delta", "real"),
    "precision": ("precision", "real"),
    "refine_mode": ("refine_mode", "port_mode"),
    "weighting_flag": ("weighting_flag", "int"),
    "refine_method": ("refine_method", "int"),
    "correlation_type": ("correlation_flag", "int"),
    "image_processing": ("image_processing_flag", "int"),
    "blur_radius": ("blur_radius", "real"),
    "no_of_ugs": ("n_ugs", "int"),
    "atomic_sites": ("atomic_sites", "port_sites"),
    "print_flag": ("print_every", "int"),
    "refinement_scale": ("simplex_length_scale", "percent"),
    "exit_criteria": ("exit_criteria", "real"),
    "plot": ("plot", "int"),
    "debug": ("debug", "int"),
}
_PORT_ALIASES = {
    "normal_direction": "normal",
    "scatter_factor_method_flag": "scatter_factor_method",
    "absorb_flag": "absorption_method",
    "refine_method_flag": "refine_method",
    "correlation_flag": "correlation_type",
    "image_processing_flag": "image_processing",
}
# Keys of the port's cRED (3D electron diffraction) branch: not a LACBED input.
_PORT_FRAME_KEYS = {"n_frames", "frame_angle", "frame_size_x", "frame_size_y", "frame_resolution",
                    "frame_g_limit", "frame_output", "back_percent", "model_flag"}
# What a simulation cannot do without; everything else takes the FelixInput default.
_PORT_REQUIRED = (
    "image_radius", "convergence_angle", "accelerating_voltage_kv", "initial_thickness", "final_thickness",
    "delta_thickness", "incident_beam_direction", "x_direction", "normal", "scatter_factor_method",
    "absorption_method", "min_reflection_pool", "min_strong_beams", "g_limit",
)
_KEY_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?:\(kV\)\s*)?=", re.ASCII)
_PORT_LINE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=", re.ASCII)


# ------------------------------------------------------------------------------------------------
# Small helpers
# ------------------------------------------------------------------------------------------------
def _nint(x: float) -> int:
    """Fortran NINT: round half away from zero."""
    return math.floor(abs(x) + 0.5) * (1 if x >= 0 else -1)


def _vec(v) -> str:
    return "[{},{},{}]".format(*(int(x) for x in v))


def _shown(text: str, limit: int = 60) -> str:
    """A value for a one-line message: stripped, quoted with control characters escaped, cut."""
    r = repr(text.strip())
    return r if len(r) <= limit else r[: limit - 4] + "...'"


_REAL_RE = re.compile(r"^([+-]?)(\d*)(?:\.(\d*))?(?:[EeDdQq]([+-]?\d+)|([+-]\d+))?$", re.ASCII)
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[EeDd][+-]?\d+)?", re.ASCII)


def _fortran_int(field_text: str) -> int:
    """An ``I15`` field as gfortran reads it from a file (blanks ignored; all blank is 0)."""
    text = field_text.replace(" ", "")
    if not text:
        return 0
    if not re.fullmatch(r"[+-]?\d+", text, re.ASCII):
        raise ValueError(f"{field_text.strip()!r} is not an integer")
    return int(text)


def _fortran_real(field_text: str) -> float:
    """An ``F18.9`` field as gfortran reads it: without a decimal point, 9 implied decimals."""
    text = field_text.replace(" ", "")
    if not text:
        return 0.0
    m = _REAL_RE.fullmatch(text)
    if m is None or not (m.group(2) or m.group(3)):
        raise ValueError(f"{field_text.strip()!r} is not a number")
    sign, whole, frac, exp1, exp2 = m.groups()
    exp = int(exp1 or exp2 or 0)
    if frac is None:  # no decimal point: the last 9 digits are decimals
        return float(f"{sign}{whole or 0}e{exp - 9}")
    return float(f"{sign}{whole or 0}.{frac or 0}e{exp}")


def _finite(x: float, field_text: str) -> float:
    if not math.isfinite(x):
        raise ValueError(f"{field_text.strip()!r} is not finite")
    return x


# ------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------
def read_felix_inp(path) -> FelixInput:
    """Read a ``felix.inp`` in either dialect, detected from its keys (:func:`detect_dialect`).

    A FELIX v1.3 file is read exactly as FELIX reads it, by line position (integers and reals from
    their Fortran fields, columns 28–42 and 28–45, blanks ignored, a real without a decimal point
    with 9 implied decimals), with the key checked on every line. A Python-port file is read as the
    port reads it, one ``key = value`` Python literal per line; see :func:`parse_felix_inp` for the
    codes translated to FELIX's.

    Parameters
    ----------
    path : str or os.PathLike
        A ``felix.inp``, or a folder holding one.

    Returns
    -------
    FelixInput
        With :attr:`~FelixInput.dialect` and :attr:`~FelixInput.source` set.

    Raises
    ------
    FelixInputError
        One line naming the file, the line and the value: a line in neither layout, a key the
        dialect does not have (or a v1.3 key on the wrong line), a value that does not parse, is of
        the wrong type or is not finite, a required key missing, or values FELIX cannot run with
        (pixel count below 1, non-positive half-width, voltage or thickness step, final thickness
        below the initial one, more than 10000 thicknesses, an atomic-site index below 1).
    FileNotFoundError
        If there is no such file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "felix.inp"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such felix.inp")
    return parse_felix_inp(path.read_text(encoding="latin-1"), source=str(path))


def detect_dialect(text: str, *, source: str = "<text>") -> str:
    """Which layout a ``felix.inp`` text is in: ``"v1.3"`` or ``"python"``.

    A line ``IWriteFLAG = 1`` (any FELIX v1.3 key at the start of a line, before ``=``) means v1.3;
    ``write_flag = 1`` (a key of the Python port) means the port.

    Raises
    ------
    FelixInputError
        If the text has keys of both layouts, or of neither.
    """
    first: dict[str, tuple[int, str]] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        m = _KEY_LINE.match(line)
        if m is None:
            continue
        key = m.group(1)
        if key in _V13_KEYS:
            first.setdefault("v1.3", (lineno, key))
        elif key in _PORT_KEYS or key in _PORT_ALIASES:
            first.setdefault("python", (lineno, key))
    if len(first) == 2:
        (l1, k1), (l2, k2) = first["v1.3"], first["python"]
        raise FelixInputError(
            f"{source}: mixes the two felix.inp layouts: line {l1} has FELIX v1.3's {k1!r}, line {l2} the "
            f"Python port's {k2!r}; use one"
        )
    if not first:
        raise FelixInputError(
            f"{source}: not a felix.inp: no line holds a key of FELIX v1.3 (e.g. 'IPixelCount = 64') or of "
            "its Python port (e.g. 'image_radius = 64')"
        )
    return next(iter(first))


def parse_felix_inp(text: str, *, source: str = "<text>") -> FelixInput:
    """A ``felix.inp`` from its text, either dialect (see :func:`read_felix_inp`).

    Python-port values are translated to FELIX v1.3's meaning: ``scatter_factor_method`` (port:
    0 Kirkland, 1 Lobato, 2 Peng, 3 Doyle–Turner, 4/5 kappa) becomes FELIX's numbering;
    ``atomic_sites`` (0-based) becomes 1-based; ``refinement_scale`` (a fraction) becomes % ;
    ``accelerating_voltage_kv`` becomes V. Refinement-method, correlation and image-processing codes
    are kept as written. Lines without ``=`` are text the port ignores; a ``key = value`` line with a
    key the port does not have is refused.

    Parameters
    ----------
    text : str
        The file's content.
    source : str, optional
        What to call the file in messages.

    Raises
    ------
    FelixInputError
        See :func:`read_felix_inp`.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    dialect = detect_dialect(text, source=source)
    if dialect == "v1.3":
        values, where = _parse_v13(text.splitlines(), source)
    else:
        values, where = _parse_port(text.splitlines(), source)
    _check_read_values(values, source, where)
    return FelixInput(**values, dialect=dialect, source=source)


def _parse_v13(lines: list[str], source: str) -> tuple[dict, dict]:
    values: dict = {}
    where: dict = {}
    for lineno, key, attr, kind in _LAYOUT:
        bare_key = key.split()[0]
        where[attr] = (lineno, bare_key)
        if lineno > len(lines):
            raise FelixInputError(
                f"{source}: {len(lines)} lines, expected {bare_key} on line {lineno} (FELIX v1.3 layout); "
                "FELIX would stop with 'premature end of file'"
            )
        line = lines[lineno - 1]
        if not line.lstrip().startswith(bare_key):
            raise FelixInputError(
                f"{source}: line {lineno} is {_shown(line)}, expected {bare_key} (FELIX v1.3 layout); "
                "an older layout (e.g. without RgLimit on line 20) shifts every later value"
            )
        try:
            values[attr] = _v13_value(line, kind)
        except ValueError as exc:
            raise FelixInputError(f"{source}: line {lineno} ({bare_key}): {exc}") from None
    return values, where


def _v13_value(line: str, kind: str):
    if kind == "int":
        return _fortran_int(line[_VALUE_START:_INT_END])
    if kind == "real":
        text = line[_VALUE_START:_REAL_END]
        return _finite(_fortran_real(text), text)
    if kind == "kv":
        text = line[_VALUE_START:_REAL_END]
        return _finite(_fortran_real(text) * 1e3, text)
    if kind == "vector":
        m = re.search(r"\[([^\]]*)\]", line[_VALUE_START:])
        parts = [p.strip() for p in m.group(1).split(",")] if m else []
        if len(parts) != 3:
            raise ValueError(f"{line[_VALUE_START:].strip()!r} is not a vector [u,v,w]")
        if not all(_NUMBER_RE.fullmatch(p) for p in parts):
            raise ValueError(f"{line[_VALUE_START:].strip()!r} is not an integer vector")
        nums = [float(p.replace("d", "e").replace("D", "e")) for p in parts]
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
    if not inner:
        return ()
    parts = inner.split(",")
    if not all(re.fullmatch(r"[+-]?\d+", p, re.ASCII) for p in parts):
        raise ValueError(f"{m.group(0)!r} is not a list of integer site indices")
    return tuple(int(p) for p in parts)


def _parse_port(lines: list[str], source: str) -> tuple[dict, dict]:
    known = set(_PORT_KEYS) | set(_PORT_ALIASES)
    seen: dict[str, tuple[int, str]] = {}  # canonical key -> (line, key as written)
    values: dict = {}
    where: dict = {}
    for lineno, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _PORT_LINE.match(line)
        if m is None:
            # Text the port ignores (its help block), unless it is "key value" with the "=" left out.
            words = stripped.split()
            word = words[0]
            if word in known and len(words) == 2:
                raise FelixInputError(f"{source}: line {lineno} ({word}): {_shown(line)} has no '='; write {word} = value")
            continue
        key = m.group(1)
        if key in _PORT_FRAME_KEYS:
            raise FelixInputError(
                f"{source}: line {lineno} ({key}): a setting of the Python port's cRED (3D-ED frames) branch, "
                "not of a LACBED felix.inp"
            )
        if key not in known:
            near = [k for k in known if k.lower() == key.lower()]
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise FelixInputError(f"{source}: line {lineno} ({key}): unknown key {key!r} in a Python-port felix.inp{hint}")
        canonical = _PORT_ALIASES.get(key, key)
        if canonical in seen:
            l0, k0 = seen[canonical]
            raise FelixInputError(f"{source}: line {lineno} ({key}) repeats line {l0} ({k0}); give it once")
        seen[canonical] = (lineno, key)
        attr, kind = _PORT_KEYS[canonical]
        raw = line.split("=", 1)[1]
        try:
            values[attr] = _port_value(raw, kind)
        except ValueError as exc:
            raise FelixInputError(f"{source}: line {lineno} ({key}): {exc}") from None
        where[attr] = (lineno, key)
    missing = [k for k in _PORT_REQUIRED if k not in seen]
    if missing:
        names = ", ".join(missing)
        raise FelixInputError(
            f"{source}: {len(lines)} lines, missing key(s) {names} (Python-port felix.inp); add '{missing[0]} = ...'"
        )
    return values, where


def _literal(raw: str):
    text = raw.strip()
    if not text:
        raise ValueError("no value after '='")
    try:
        return ast.literal_eval(text)
    except Exception:  # noqa: BLE001  SyntaxError, ValueError, RecursionError, MemoryError: "not a literal"
        raise ValueError(f"{_shown(text)} is not a Python literal (number, 'text' or [list])") from None


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _port_value(raw: str, kind: str):
    v = _literal(raw)
    shown = _shown(raw)
    if kind in ("int", "port_form", "absorption", "debye_model"):
        if not _is_int(v):
            raise ValueError(f"{shown} is not an integer")
        if kind == "port_form":
            if v not in _PORT_TO_FELIX_FORM:
                raise ValueError(f"{shown} is not a form-factor code of the Python port (0-5)")
            return _PORT_TO_FELIX_FORM[v]
        if kind == "absorption" and v not in _ABSORPTION:
            raise ValueError(f"{shown} is not an absorption method (0 none, 1 proportional, 2 Bird-King)")
        if kind == "debye_model" and v not in _DEBYE_MODELS:
            raise ValueError(f"{shown} is not a Debye model (0 isotropic, 1 anisotropic)")
        return v
    if kind in ("real", "kv", "percent"):
        if not (_is_int(v) or isinstance(v, float)):
            raise ValueError(f"{shown} is not a number")
        x = float(v)
        if not math.isfinite(x):
            raise ValueError(f"{shown} is not finite")
        return x * 1e3 if kind == "kv" else x * 100.0 if kind == "percent" else x
    if kind == "vector":
        if not isinstance(v, (list, tuple)) or len(v) != 3:
            raise ValueError(f"{shown} is not a vector [u, v, w]")
        if not all((_is_int(x) or isinstance(x, float)) and math.isfinite(x) and x == int(x) for x in v):
            raise ValueError(f"{shown} is not an integer vector")
        return tuple(int(x) for x in v)
    if kind == "port_sites":
        items = [v] if _is_int(v) else v
        if not isinstance(items, (list, tuple)) or not all(_is_int(x) for x in items):
            raise ValueError(f"{shown} is not a list of integer site indices")
        if any(x < 0 for x in items):
            raise ValueError(f"{shown}: site indices start at 0 (rows of felix.cif)")
        return tuple(int(x) + 1 for x in items)
    # port_mode: a string of letters, e.g. 'S', 'BD', 'E,J,K'
    if not isinstance(v, str):
        raise ValueError(f"{shown} is not a quoted string of refinement letters, e.g. 'S'")
    bad = sorted({c for c in v if c not in _PORT_LETTERS and c not in ", "})
    if bad:
        raise ValueError(f"{shown} has {''.join(bad)!r}, not refinement letters ({_PORT_LETTERS}; ',' allowed)")
    if "S" in v:
        return "S"
    return "".join(c for c in _PORT_LETTERS if c in v)


def _check_read_values(values: dict, source: str, where: dict) -> None:
    """Refuse values that parse but that FELIX (and :meth:`FelixInput.thickness_grid`) cannot use."""

    def refuse(attr: str, why: str):
        lineno, key = where[attr]
        raise FelixInputError(f"{source}: line {lineno} ({key}): {why}")

    if values["pixel_count"] < 1:
        refuse("pixel_count", f"{values['pixel_count']} must be at least 1 (images are 2N x 2N pixels)")
    for attr, unit in (("half_width", "1/Å"), ("voltage", "kV"), ("thickness_delta", "Å")):
        value = values[attr] / (1e3 if attr == "voltage" else 1.0)
        if not value > 0:
            refuse(attr, f"{value:g} {unit} must be positive")
    ti, tf, dt = values["thickness_initial"], values["thickness_final"], values["thickness_delta"]
    if tf < ti:
        refuse("thickness_final", f"{tf:g} Å is below the initial thickness {ti:g} Å")
    if (tf - ti) / dt > 10000:
        refuse("thickness_delta", f"{dt:g} Å from {ti:g} to {tf:g} Å gives more than 10000 thicknesses")
    bad_sites = [s for s in values.get("atomic_sites", ()) if s < 1]
    if bad_sites:
        refuse("atomic_sites", f"site indices {bad_sites} must be 1 or more (1-based rows of felix.cif)")


# ------------------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------------------
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


def _int_vector(v, what: str) -> list[int]:
    try:
        ints = [int(x) for x in v]
    except (TypeError, ValueError, OverflowError):
        raise FelixInputError(f"{what} must be three integers, got {v!r}") from None
    if len(ints) != 3 or any(int(x) != x for x in v):
        raise FelixInputError(f"{what} must be three integers, got {v!r}")
    return ints


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


def _validate_common(inp: FelixInput) -> None:
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
    if any(not (isinstance(s, (int, np.integer)) and s >= 1) for s in inp.atomic_sites):
        raise FelixInputError(f"atomic_sites must be 1-based site indices, got {inp.atomic_sites!r}")


def _validate_v13(inp: FelixInput) -> None:
    if not (isinstance(inp.pixel_count, (int, np.integer)) and 1 <= inp.pixel_count <= 499):
        raise FelixInputError(f"pixel_count must be an int in 1..499 (images 2..998 pixels), got {inp.pixel_count!r}")
    _validate_common(inp)
    if not inp.atomic_sites and not inp.simulation_only and "B" in inp.refine_mode.upper():
        raise FelixInputError("atomic_sites is empty but refine_mode refines coordinates (B)")
    _check_refine_mode(inp.refine_mode)
    # What FELIX v1.3 cannot hold (the Python port's extensions): refused, never dropped silently.
    if inp.scatter_factor_method in (4, 5):
        raise FelixInputError(
            f"scatter_factor_method {inp.scatter_factor_method} ({_FORM_FACTORS[inp.scatter_factor_method]}) "
            "exists only in the Python port; FELIX v1.3 has 0 Kirkland, 1 Peng, 2 Doyle-Turner, 3 Lobato"
        )
    if inp.debye_model != 0:
        raise FelixInputError(
            f"debye_model {inp.debye_model!r} (anisotropic U_ij) exists only in the Python port; FELIX v1.3 is isotropic"
        )


def format_felix_inp(inp: FelixInput, *, title: str | None = None, dialect: str = "v1.3") -> str:
    """The text of ``felix.inp`` for ``inp``.

    ``dialect="v1.3"`` writes FELIX v1.3's 51-line layout, byte for byte as the FELIX plugin's
    writer does (same title given). ``dialect="python"`` writes the Python port's ``key = value``
    layout, translating the codes back (:func:`parse_felix_inp`). The port-only settings ``plot``
    and ``debug`` are not written in v1.3.

    Parameters
    ----------
    inp : FelixInput
    title : str, optional
        Text of the first comment line.
    dialect : {"v1.3", "python"}

    Raises
    ------
    FelixInputError
        If a value cannot be written so that the program reads it back (a non-finite number, an
        integer too wide for FELIX's I15 field, a refinement letter FELIX aborts on, a pool not
        larger than the strong beams, ...), or the dialect cannot hold it (the port's kappa form
        factors or anisotropic Debye model in v1.3).
    """
    if dialect not in DIALECTS:
        raise ValueError(f"dialect must be one of {DIALECTS}, got {dialect!r}")
    if dialect == "python":
        return _format_port(inp, title=title)
    _validate_v13(inp)
    lines = dict(_COMMENTS)
    lines[1] = "# " + (title or f"felix.inp written by lacbed-refine {__version__} (FELIX v1.3 layout)")
    for lineno, key, attr, kind in _LAYOUT:
        value = getattr(inp, attr)
        if kind == "int":
            text = _format_int(value, attr)
        elif kind == "real":
            text = _format_real(value, attr)
        elif kind == "kv":
            text = _format_real(value / 1e3, attr)
        elif kind == "vector":
            text = _vec(_int_vector(value, attr))
        elif kind == "mode":
            text = _check_refine_mode(value)
        else:  # sites
            text = "(" + ",".join(str(int(s)) for s in value) + ")"
        lines[lineno] = f"{key:<26}= {text}"
    return "\n".join(lines[i] for i in range(1, _N_LINES + 1)) + "\n"


def _port_real(x, what: str) -> str:
    x = float(x)
    if not math.isfinite(x):
        raise FelixInputError(f"{what} must be finite, got {x!r}")
    return repr(x + 0.0)


def _format_port(inp: FelixInput, *, title: str | None) -> str:
    if not (isinstance(inp.pixel_count, (int, np.integer)) and inp.pixel_count >= 1):
        raise FelixInputError(f"pixel_count must be an int >= 1, got {inp.pixel_count!r}")
    _validate_common(inp)
    if inp.scatter_factor_method not in _FELIX_TO_PORT_FORM:
        raise FelixInputError(f"scatter_factor_method {inp.scatter_factor_method!r} has no Python-port code (0-5)")
    if inp.absorb_flag not in _ABSORPTION:
        raise FelixInputError(f"absorb_flag {inp.absorb_flag!r} is not 0, 1 or 2 (the port refuses others)")
    if inp.debye_model not in _DEBYE_MODELS:
        raise FelixInputError(f"debye_model {inp.debye_model!r} is not 0 (isotropic) or 1 (anisotropic)")
    mode = str(inp.refine_mode)
    if not mode or any(c not in _PORT_LETTERS for c in mode):
        raise FelixInputError(f"refine_mode {mode!r}: use 'S' or letters from {_PORT_LETTERS}")
    ints = {attr: _format_int(getattr(inp, attr), attr) for attr in (
        "write_flag", "holz_flag", "absorb_flag", "byte_size", "debye_model", "pixel_count", "min_reflection_pool",
        "min_strong_beams", "min_weak_beams", "weighting_flag", "refine_method", "correlation_flag",
        "image_processing_flag", "n_ugs", "print_every", "plot", "debug")}
    sites = ", ".join(str(int(s) - 1) for s in inp.atomic_sites)

    def vec(attr):
        return "[{}, {}, {}]".format(*_int_vector(getattr(inp, attr), attr))

    entries = [
        ("write_flag", ints["write_flag"]),
        ("scatter_factor_method", str(_FELIX_TO_PORT_FORM[inp.scatter_factor_method])),
        ("holz_flag", ints["holz_flag"]),
        ("absorption_method", ints["absorb_flag"]),
        ("byte_size", ints["byte_size"]),
        ("Debye_model", ints["debye_model"]),
        ("min_reflection_pool", ints["min_reflection_pool"]),
        ("min_strong_beams", ints["min_strong_beams"]),
        ("min_weak_beams", ints["min_weak_beams"]),
        ("g_limit", _port_real(inp.g_limit, "g_limit")),
        ("incident_beam_direction", vec("beam_direction")),
        ("x_direction", vec("x_direction")),
        ("normal", vec("normal_direction")),
        ("initial_thickness", _port_real(inp.thickness_initial, "thickness_initial")),
        ("final_thickness", _port_real(inp.thickness_final, "thickness_final")),
        ("delta_thickness", _port_real(inp.thickness_delta, "thickness_delta")),
        ("debye_waller_constant", _port_real(inp.debye_waller, "debye_waller")),
        ("absorption_per", _port_real(inp.absorption_percent, "absorption_percent")),
        ("convergence_angle", _port_real(inp.half_width, "half_width")),
        ("accelerating_voltage_kv", _port_real(inp.voltage / 1e3, "voltage")),
        ("acceptance_angle", _port_real(inp.acceptance_angle, "acceptance_angle")),
        ("image_radius", ints["pixel_count"]),
        ("plot", ints["plot"]),
        ("image_processing", ints["image_processing_flag"]),
        ("blur_radius", _port_real(inp.blur_radius, "blur_radius")),
        ("print_flag", ints["print_every"]),
        ("debug", ints["debug"]),
        ("refine_mode", repr(mode)),
        ("refine_method", ints["refine_method"]),
        ("refinement_scale", _port_real(inp.simplex_length_scale / 100.0, "simplex_length_scale")),
        ("correlation_type", ints["correlation_flag"]),
        ("atomic_sites", f"[{sites}]"),
        ("exit_criteria", _port_real(inp.exit_criteria, "exit_criteria")),
        ("precision", _port_real(inp.precision, "precision")),
        ("weighting_flag", ints["weighting_flag"]),
        ("no_of_ugs", ints["n_ugs"]),
    ]
    head = ["# " + (title or f"felix.inp written by lacbed-refine {__version__} (Python-port layout)"),
            "# ------------------------------------", ""]
    return "\n".join(head + [f"{k:<26}= {v}" for k, v in entries]) + "\n"


def write_felix_inp(inp: FelixInput, path, *, title: str | None = None, dialect: str = "v1.3") -> Path:
    """Write ``felix.inp`` (see :func:`format_felix_inp`); returns the path."""
    path = Path(path)
    path.write_text(format_felix_inp(inp, title=title, dialect=dialect), encoding="ascii")
    return path


# ------------------------------------------------------------------------------------------------
# felix.hkl
# ------------------------------------------------------------------------------------------------
_HKL_RE = re.compile(r"\s*\[\s*([+-]?\d+)\s*,\s*([+-]?\d+)\s*,\s*([+-]?\d+)\s*\].*", re.ASCII)


def read_hkl(path) -> np.ndarray:
    """The reflections of a ``felix.hkl``, one ``[h,k,l]`` per line, in order.

    Both programs write ``[h,k,l]`` (FELIX) or ``[h, k, l]`` (the port); text after the ``]`` is
    ignored. FELIX's lists start with ``[0,0,0]``; the port's leave 000 out (it adds it itself).
    Blank lines at the end are ignored; a blank line between reflections is refused, because FELIX
    counts every line as a reflection while the port skips it, so the two would disagree.

    Parameters
    ----------
    path : str or os.PathLike
        A ``felix.hkl``, or a folder holding one.

    Returns
    -------
    hkl : ndarray, shape (n, 3), int64

    Raises
    ------
    FelixInputError
        One line naming the file, the line and its text: a line that is not ``[h,k,l]``, a blank
        line between reflections, bytes that are not text, or no reflection at all.
    FileNotFoundError
        If there is no such file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "felix.hkl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such felix.hkl")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise FelixInputError(
            f"{path}: line {line} is not text (byte 0x{raw[exc.start]:02x}); not a felix.hkl?"
        ) from None
    lines = [ln.removesuffix("\r") for ln in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            raise FelixInputError(
                f"{path}: line {lineno} is blank between reflections (FELIX would read it as one, the Python "
                "port skips it); remove it"
            )
        m = _HKL_RE.fullmatch(line)
        if m is None:
            raise FelixInputError(f"{path}: line {lineno} is {_shown(line)}, expected [h,k,l]")
        out.append([int(x) for x in m.groups()])
    if not out:
        raise FelixInputError(f"{path}: no reflections (an empty felix.hkl)")
    return np.array(out, dtype=np.int64).reshape(-1, 3)
