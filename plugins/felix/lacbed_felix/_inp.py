"""What FELIX HEAD is asked for lacbed-refine's settings: ``felix.inp`` values, FELIX's beam pool
and the limits FELIX HEAD puts on them.

The file itself (FELIX v1.3's line layout, read by line position and written so that FELIX reads it
back; the Python port's ``key = value`` dialect) is the core's :mod:`lacbed_refine.io.felix_inp`:
:class:`FelixInput`, :func:`read_felix_inp`, :func:`format_felix_inp`, :func:`write_felix_inp` and
:class:`FelixInputError` are re-exported from there. The plugin writes its files with its own first
line (:data:`INP_TITLE`). What stays here is what only running FELIX needs:

- :func:`felix_input_for`: the :class:`FelixInput` that asks FELIX for what a
  :class:`~lacbed_refine.engine.geometry.SimulationSettings` asks of the Bloch engine, for any cell,
  zone axis and absorption model;
- :func:`felix_pool`: the beam pool FELIX HEAD builds for those settings (:func:`felix_beam_pool` at
  cubic [001], the core's :func:`~lacbed_refine.simulators.bloch.zone_beams` elsewhere, with
  FELIX's cut inside the last shell when the pool is given by a count);
- the limits checked before FELIX runs: a pool of at least 40 beams and larger than
  ``IMinStrongBeams``, every ``felix.hkl`` reflection in the pool (FELIX drops the others without a
  word), a reflection rule FELIX can take from the space group.
"""

from __future__ import annotations

import logging
import math
from dataclasses import fields, replace

import numpy as np

from lacbed_refine.conventions import wavevector_2pi
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.io.felix_inp import (
    DEFAULT_DEBYE_WALLER,
    REFINE_LETTERS,
    FelixInput,
    FelixInputError,
    format_felix_inp,
    read_felix_inp,
    write_felix_inp,
)
from lacbed_refine.structure.crystal import Crystal
from lacbed_refine.structure.reflections import centring_allows

from ._cif import felix_centring
from ._version import __version__

__all__ = [
    "FelixInput",
    "FelixInputError",
    "read_felix_inp",
    "write_felix_inp",
    "format_felix_inp",
    "felix_input_for",
    "felix_beam_pool",
    "felix_pool",
    "thickness_grid",
    "REFINE_LETTERS",
    "INP_TITLE",
    "ABSORPTION_FLAGS",
]

log = logging.getLogger(__name__)

#: First line of every felix.inp the plugin writes (after ``# ``).
INP_TITLE = f"felix.inp written by lacbed-refine-felix {__version__} (FELIX v1.3 layout)"

#: ``IAbsorbFLAG`` of each absorption model (:attr:`SimulationSettings.absorption_kind`).
ABSORPTION_FLAGS = {"none": 0, "proportional": 1, "bird-king": 2}

_FORM_FACTOR_FLAGS = {"kirkland": 0, "peng": 1}

# FELIX HEAD's StructureFactorInitialisation prints rows 1..40 of the beam pool (Rhkl(1:40)); a
# smaller pool is indexed out of bounds (a runtime error in a bounds-checked gfortran build).
_MIN_POOL = 40


def _nint(x: float) -> int:
    """Fortran NINT: round half away from zero."""
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


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
    hold near-ZOLZ (l ≠ 0) reflections for large cells. Any other cell or zone: :func:`felix_pool`.

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
        # a beam on a shell's edge (|g| = n a*, e.g. 8 6 0 at n = 10) is counted in the inner shell;
        # FELIX's own rounding decides there (see _edge_beams)
        sel = near & (gmag > (lnd - 1) * shell * (1 + 1e-9)) & (gmag <= lnd * shell * (1 + 1e-9))
        take = hkl[sel][: cap - n]
        pool.extend(take)
        n += len(take)
    out = np.array(pool, dtype=np.int64)
    order = np.argsort((out.astype(float) ** 2).sum(1), kind="stable")
    return out[order]


def _standard_cubic_001(crystal: Crystal, settings: SimulationSettings) -> bool:
    """The case :func:`felix_beam_pool` covers (and the plugin's first, [001]-only, mapping)."""
    return crystal.cell.is_cubic and tuple(settings.zone) == (0, 0, 1)


def felix_pool(crystal: Crystal, settings: SimulationSettings) -> np.ndarray:
    """The beam pool FELIX HEAD builds for ``crystal`` and ``settings`` (felix-spec §3.5).

    Cubic crystals along [001]: :func:`felix_beam_pool`. Any other cell or zone: the core's
    :func:`~lacbed_refine.simulators.bloch.zone_beams` (FELIX's rule at any zone: index box ±NINT(
    RgLimit/|a*|) …, shells of min(|a*|, |b*|, |c*|), centring, within 8 % of the Ewald sphere, so
    HOLZ reflections come in); when the pool is given by a count (``n_beams``, FELIX's
    ``IMinReflectionPool``) FELIX stops inside the last shell, at the count, in its loop order (h, then
    k, then l ascending), where the core keeps whole shells; that cut is applied here.

    Returns
    -------
    hkl : ndarray, shape (n, 3), int
        000 first, then ascending |g|.

    Raises
    ------
    ValueError
        If the settings give neither ``g_limit`` nor ``n_beams``, or FELIX would take another
        reflection rule than the crystal's centring (:func:`~lacbed_felix.felix_centring`).
    """
    if settings.g_limit is None and settings.n_beams is None:
        raise ValueError("settings give neither n_beams nor g_limit; FELIX needs one of them")
    letter = felix_centring(crystal)
    if _standard_cubic_001(crystal, settings):
        return felix_beam_pool(
            crystal.cell.a, letter, settings.voltage,
            g_limit=settings.g_limit, n_beams=None if settings.g_limit is not None else settings.n_beams,
        )
    from lacbed_refine.simulators.bloch import zone_beams

    pool = zone_beams(crystal, replace(settings, reflections=((0, 0, 0),)))
    if settings.g_limit is None:
        cell = crystal.cell
        shell = float(np.linalg.norm(cell.recip, axis=0).min())
        ring = np.ceil(cell.g_length(pool) / shell - 1e-9)
        order = np.lexsort((pool[:, 2], pool[:, 1], pool[:, 0], ring))  # 000 (ring 0) first
        pool = pool[order][: int(settings.n_beams)]
        pool = pool[np.argsort(cell.g_length(pool), kind="stable")]
    return pool


def _edge_beams(crystal: Crystal, settings: SimulationSettings, pool: np.ndarray) -> set[tuple[int, int, int]]:
    """Pool beams on the outer edge of FELIX's last shell, whose membership FELIX's rounding decides.

    With ``RgLimit`` FELIX keeps |g| ≤ n·min(|a*|, |b*|, |c*|) for the last shell n, comparing numbers
    it computes from single-precision cell lengths in a rotated frame. A reflection with |g| exactly
    n·min|a*| (e.g. 8 6 0 in a cubic cell at n = 10) may fall on either side: FELIX left 8 6 0 out of
    a pool where it kept 10 0 0. Multiples of the shortest axis (10 0 0 there) have always been
    kept, so only the others are returned.
    """
    if settings.g_limit is None or len(pool) == 0:
        return set()
    cell = crystal.cell
    lengths = np.linalg.norm(cell.recip, axis=0)
    shell = float(lengths.min())
    edge = math.ceil(settings.g_limit / shell - 1e-9) * shell
    g = cell.g_length(pool)
    on_edge = np.abs(g - edge) <= 1e-7 * edge
    axial = (np.count_nonzero(pool, axis=1) == 1) & np.isclose(lengths[np.argmax(pool != 0, axis=1)], shell, rtol=1e-9)
    return {tuple(int(x) for x in r) for r in pool[on_edge & ~axial]}


def _check_reflections(crystal: Crystal, settings: SimulationSettings, inp: FelixInput, reflections) -> None:
    """ValueError unless every reflection is in the beam pool FELIX builds for ``inp``.

    FELIX writes (and fits) only the ``felix.hkl`` reflections that are in its beam pool and drops
    the others without an error, which would misalign images and reflections.
    """
    g_limit = float(inp.g_limit) if inp.g_limit > 0 else None
    asked = replace(
        settings, voltage=float(inp.voltage), g_limit=g_limit,
        n_beams=None if g_limit is not None else int(inp.min_reflection_pool),
        zone=tuple(inp.beam_direction), x_direction=tuple(inp.x_direction), normal=tuple(inp.normal_direction),
        reflections=((0, 0, 0),),
    )
    pool = felix_pool(crystal, asked)
    in_pool = {tuple(int(x) for x in r) for r in pool}
    wanted = [tuple(int(x) for x in r) for r in reflections]
    missing = [r for r in wanted if r not in in_pool]
    zone = "" if tuple(inp.beam_direction) == (0, 0, 1) else f" at zone {list(inp.beam_direction)}"
    if missing:
        raise ValueError(
            f"reflection(s) {missing} are not in FELIX's beam pool of {len(pool)} beams for these settings{zone} "
            "(FELIX would drop them without an error); widen the pool (g_limit or n_beams) or check the "
            "lattice centring and the zone"
        )
    edge = [r for r in wanted if r in _edge_beams(crystal, asked, pool)]
    if edge:
        raise ValueError(
            f"reflection(s) {edge} lie exactly on the edge of FELIX's last shell of beams{zone}, where its rounding "
            "decides whether they are in the pool (it drops them without an error when not); take g_limit one "
            "shell larger"
        )


def felix_input_for(crystal: Crystal, settings: SimulationSettings, **overrides) -> FelixInput:
    """The ``felix.inp`` values that ask FELIX for what ``settings`` ask of the Bloch engine.

    Mapping: size → ``IPixelCount`` = size/2; half-width → ``ROuterConvergenceAngle``; voltage;
    thicknesses → the coarsest even grid through them (:func:`thickness_grid`); ``g_limit`` →
    ``RgLimit`` (FELIX rounds it up to whole shells of min |a*|, |b*|, |c*|), else ``n_beams`` →
    ``IMinReflectionPool``; ``strong_beams`` → ``IMinStrongBeams`` (FELIX's own per-pixel rule,
    whatever ``strong_rule`` says), or, when None (the whole pool at every pixel), the pool size
    less one, the most FELIX accepts; ``zone`` → ``IIncidentBeamDirection``, ``x_direction`` →
    ``IXDirection`` (None: the core's default for the cell,
    :func:`~lacbed_refine.simulators.bloch.zone_axis`), ``normal`` → ``INormalDirection`` (None:
    the zone); the absorption model (:attr:`~SimulationSettings.absorption_kind`) →
    ``IAbsorbFLAG`` 0 none, 1 proportional (``RAbsorptionPer`` = ``absorption``; FELIX applies it
    without the uniform term U′₀), 2 Bird–King; ``form_factors`` → ``IScatterFactorMethodFLAG``
    (0 Kirkland, 1 Peng). ``RDebyeWallerConstant`` is 0 when a site has B = 0 (FELIX reads B = 0 as
    "missing" and substitutes it).

    Parameters
    ----------
    crystal : Crystal
    settings : SimulationSettings
    **overrides
        Any :class:`FelixInput` field, e.g. ``refine_mode="BD"``.

    Raises
    ------
    ValueError
        If a setting has no FELIX equivalent (form factors, thickness grid), FELIX HEAD cannot run
        it (a pool under 40 beams or not larger than the strong beams) or would use another
        reflection rule than the crystal's centring.
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
    pool = felix_pool(crystal, settings)
    where = "" if tuple(settings.zone) == (0, 0, 1) else f" at zone {list(settings.zone)}"
    edge = _edge_beams(crystal, settings, pool)
    sure = len(pool) - len(edge)  # FELIX's pool has at least this many beams
    shown = f"{len(pool)} beams" if not edge else f"{sure}-{len(pool)} beams (FELIX's rounding decides {len(edge)})"
    if sure < _MIN_POOL:
        raise ValueError(
            f"FELIX's beam pool for these settings{where} has {shown}; FELIX HEAD needs at least "
            f"{_MIN_POOL} (it prints pool rows 1-40 while setting up Ug, which overruns a smaller pool); widen "
            "g_limit or n_beams"
        )
    strong = sure - 1 if settings.strong_beams is None else int(settings.strong_beams)
    if strong >= sure:
        raise ValueError(
            f"strong_beams {strong} must be below FELIX's pool of {shown} for these settings{where}"
        )
    if edge and settings.strong_beams is None:
        log.warning("%s: %d beams lie exactly on the edge of FELIX's last shell (%s), where its rounding decides "
                    "whether they are in its pool; asking for at least %d strong beams so that FELIX runs either way",
                    crystal.name, len(edge), ", ".join(" ".join(map(str, r)) for r in sorted(edge)[:4]), strong)
    if settings.absorption_kind == "bird-king" and form != 0:
        log.warning("%s: FELIX computes Bird-King absorption with Kirkland form factors whatever "
                    "IScatterFactorMethodFLAG says (%s here for U)", crystal.name, settings.form_factors)
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
        debye_waller=0.0 if any(abs(b) <= 1e-9 for b in b_values) else DEFAULT_DEBYE_WALLER,
        absorb_flag=ABSORPTION_FLAGS[settings.absorption_kind],
        absorption_percent=float(settings.absorption),
        scatter_factor_method=form,
    )
    from lacbed_refine.simulators.bloch import zone_axis

    zone = zone_axis(crystal, settings)  # (0,0,1), (1,0,0), (0,0,1) at [001] unless told otherwise
    values.update(beam_direction=tuple(zone.zone), x_direction=tuple(zone.x_direction),
                  normal_direction=tuple(zone.normal))
    unknown = set(overrides) - {f.name for f in fields(FelixInput)}
    if unknown:
        raise TypeError(f"unknown FelixInput field(s): {', '.join(sorted(unknown))}")
    values.update(overrides)
    return FelixInput(**values)
