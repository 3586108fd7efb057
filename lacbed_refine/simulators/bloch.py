"""High-level simulation: a Crystal and settings in, pattern stack and files out.

This is the library behind ``lacbed-refine simulate`` and ``lacbed-refine potential``; the CLI only
parses options.
"""

from __future__ import annotations
import logging
from dataclasses import replace
import numpy as np
import torch
from lacbed_refine.engine.bloch import EngineInfo, simulate_lacbed
from lacbed_refine.conventions import NM
from lacbed_refine.structure.crystal import Crystal
from lacbed_refine.engine.beams import zone_beam_pool
from lacbed_refine.engine.geometry import SimulationSettings, paper_preset
from lacbed_refine.engine.zone import ZoneAxis, default_x_direction

__all__ = ["settings_for", "simulate_crystal", "simulate_general", "zone_beams", "zone_axis", "centring_vectors", "BlochSimulator"]

log = logging.getLogger(__name__)


def settings_for(
    crystal: Crystal,
    *,
    preset: str = "paper",
    thickness_nm=None,
    kv: float | None = None,
    size: int | None = None,
    half_width: float | None = None,
    n_beams: int | None = None,
    g_limit: float | None = None,
    strong_beams: int | None = None,
    reflections=None,
    absorption: float | None = None,
    form_factors: str | None = None,
    strong_rule: str | None = None,
    zone=None,
    x_direction=None,
    normal=None,
    absorption_model: str | None = None,
    mean_absorption: bool | None = None,
) -> SimulationSettings:
    """Settings from a preset plus overrides (None keeps the preset's value).

    Parameters
    ----------
    preset : {"paper"}
        Base settings (:func:`~lacbed_refine.engine.geometry.paper_preset`).
    thickness_nm : sequence of float
        Thicknesses [nm].
    kv : float
        Accelerating voltage [kV].
    half_width : float
        Tilt half-width [Å⁻¹, 1/d units].
    n_beams, g_limit
        Beam pool by count (whole shells) or |g| limit [Å⁻¹]; either replaces the preset's pool, and
        then every pool beam is used at every pixel unless ``strong_beams`` is given.
    absorption : float
        Proportional absorption [%].
    zone, x_direction, normal
        Incident beam [uvw], image x direction [hkl] (default
        :func:`~lacbed_refine.engine.zone.default_x_direction`) and surface normal [uvw] (default the
        zone), as FELIX defines them.
    absorption_model : {"none", "proportional", "bird-king"}
    """
    if preset != "paper":
        raise ValueError(f"unknown preset {preset!r}; available: 'paper'")
    s = paper_preset(crystal.a)
    changes = {}
    if thickness_nm is not None:
        # the values are checked once, by SimulationSettings, wherever they come from
        changes["thicknesses"] = tuple(float(x) * NM for x in thickness_nm)
    if kv is not None:
        changes["voltage"] = float(kv) * 1e3
    if size is not None:
        changes["size"] = int(size)
    if half_width is not None:
        changes["half_width"] = float(half_width)
    if n_beams is not None or g_limit is not None:
        if n_beams is not None and g_limit is not None:
            raise ValueError("give either a beam count or a |g| limit, not both")
        changes.update(n_beams=n_beams, g_limit=g_limit, strong_beams=None)
    if strong_beams is not None:
        changes["strong_beams"] = int(strong_beams)
    if strong_rule is not None:
        changes["strong_rule"] = strong_rule
    if reflections is not None:
        changes["reflections"] = tuple(reflections)
    if absorption is not None:
        changes["absorption"] = float(absorption)
    if form_factors is not None:
        changes["form_factors"] = form_factors
    if absorption_model is not None:
        changes["absorption_model"] = absorption_model
    if mean_absorption is not None:
        changes["mean_absorption"] = bool(mean_absorption)
    if zone is not None:
        changes["zone"] = tuple(zone)
    if x_direction is not None:
        changes["x_direction"] = tuple(x_direction)
    elif zone is not None and tuple(zone) != (0, 0, 1):
        changes["x_direction"] = default_x_direction(crystal.cell, zone)
    if normal is not None:
        changes["normal"] = tuple(normal)
    return replace(s, **changes)


def simulate_crystal(
    crystal: Crystal,
    settings: SimulationSettings,
    *,
    device: str = "cpu",
    precision: str = "fast",
    progress: bool = False,
    workers: int = 1,
) -> tuple[np.ndarray, EngineInfo]:
    """Simulate a crystal's LACBED stack.

    Parameters
    ----------
    precision : {"fast", "reference"}
        "fast": float32 eigenproblem and the symmetry wedge; "reference": float64, every pixel.
    workers : int
        Engine worker processes (see :func:`~lacbed_refine.engine.bloch.lacbed_from_ug`).

    Returns
    -------
    stack : ndarray, float32, shape (T, R, size, size)
    info : EngineInfo
    """
    if precision not in ("fast", "reference"):
        raise ValueError(f"precision must be 'fast' or 'reference', got {precision!r}")
    dtype = torch.float32 if precision == "fast" else torch.float64
    if not (crystal.is_cubic and settings.standard_001) or settings.bethe:  # Bethe couplings: general engine only
        return simulate_general(crystal, settings, dtype=dtype, workers=workers)
    for r in settings.reflections:
        if int(r[2]) != 0:  # the [001] engine's pool is the zero-order Laue zone
            raise ValueError(f"--reflections {' '.join(str(int(i)) for i in r)}: not in the [001] zero-order Laue zone "
                             "(l must be 0 at zone 0,0,1)")
    crystal.require_cubic("the cubic [001] Bloch engine")
    bar = None
    callback = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=None, unit="px", desc=f"Bloch {crystal.name}", leave=False)

        def callback(done):
            bar.n = done
            bar.refresh()

    try:
        with torch.no_grad():
            stack, info = simulate_lacbed(
                crystal.atoms(),
                crystal.a,
                settings,
                centring=crystal.spacegroup_symbol[0],
                dtype=dtype,
                use_symmetry=precision == "fast",
                device=device,
                progress=callback,
                workers=workers,
            )
    finally:
        if bar is not None:
            bar.close()
    stack = stack.cpu().numpy().astype(np.float32)
    if not np.isfinite(stack).all():
        raise FloatingPointError(f"{crystal.name}: the engine produced non-finite intensities")
    return stack, info


def centring_vectors(crystal: Crystal) -> np.ndarray:
    """The lattice-centring translations of the crystal's space group, shape (C, 3), fractional
    (the pure translations among its operations; (0, 0, 0) first)."""
    rot, tra = crystal.operations()
    pure = np.all(rot == np.eye(3, dtype=rot.dtype), axis=(1, 2))
    vecs = np.mod(tra[pure], 1.0)
    order = np.argsort(np.abs(vecs).sum(1), kind="stable")
    return vecs[order]


def zone_beams(crystal: Crystal, settings: SimulationSettings) -> np.ndarray:
    """The beam pool of ``settings`` for the crystal at any zone (FELIX's rule, HOLZ included),
    shape (n, 3) int, 000 first; every requested reflection is checked to be in it."""
    zone = zone_axis(crystal, settings)
    if settings.g_limit is not None:
        pool = zone_beam_pool(crystal.cell, zone, centring_vectors(crystal), settings.voltage, g_limit=settings.g_limit)
    else:
        pool = zone_beam_pool(crystal.cell, zone, centring_vectors(crystal), settings.voltage,
                              n_beams=int(settings.n_beams or 100))
    have = {tuple(int(i) for i in g) for g in pool}
    for r in settings.reflections:
        if tuple(int(i) for i in r) not in have:
            raise ValueError(f"--reflections {' '.join(str(int(i)) for i in r)}: not in the {len(pool)}-beam pool at "
                             f"zone {list(settings.zone)} (forbidden by centring, off the zone, or beyond the pool's "
                             "|g| limit)")
    return pool


def zone_axis(crystal: Crystal, settings: SimulationSettings) -> ZoneAxis:
    """The :class:`ZoneAxis` of ``settings`` (default x direction from the crystal's cell)."""
    x = settings.x_direction
    if x is None:
        x = (1, 0, 0) if tuple(settings.zone) == (0, 0, 1) else default_x_direction(crystal.cell, settings.zone)
    return ZoneAxis(settings.zone, x, settings.normal)


def simulate_general(
    crystal: Crystal,
    settings: SimulationSettings,
    *,
    dtype: torch.dtype = torch.float64,
    workers: int = 1,
    absorption_scale: float = 1.0,
) -> tuple[np.ndarray, EngineInfo]:
    """Simulate any crystal at any zone axis with the general engine
    (:func:`lacbed_refine.engine.general.simulate_zone`): exact excitation errors, the surface-normal
    factor, HOLZ beams in the pool, FELIX's per-pixel strong-beam rule when ``strong_beams`` is set
    (whatever ``strong_rule`` says: the fixed-count rule exists only on the [001] engine), and the
    absorption model of ``settings`` (its U′ × ``absorption_scale``).

    Returns
    -------
    stack : ndarray, float32, shape (T, R, size, size)
    info : EngineInfo
    """
    from lacbed_refine.engine.general import simulate_zone

    pool = zone_beams(crystal, settings)
    zone = zone_axis(crystal, settings)
    if settings.strong_beams is not None and settings.strong_rule == "count":
        log.info("%s: zone %s uses FELIX's strong-beam rule (at least %d beams per pixel)", crystal.name,
                 list(settings.zone), settings.strong_beams)
    with torch.no_grad():
        stack, info = simulate_zone(
            crystal.atoms(), crystal.cell, zone, pool,
            torch.tensor(settings.thicknesses, dtype=torch.float64),
            voltage=settings.voltage, size=settings.size, half_width=settings.half_width,
            reflections=tuple(tuple(int(i) for i in r) for r in settings.reflections),
            strong_beams=settings.strong_beams, absorption=settings.absorption,
            absorption_model=settings.absorption_kind, mean_absorption=settings.mean_absorption,
            form_factors=settings.form_factors, dtype=dtype, workers=max(1, int(workers or 1)), return_info=True,
            absorption_scale=absorption_scale, bethe=settings.bethe,
        )
    stack = stack.cpu().numpy().astype(np.float32)
    if not np.isfinite(stack).all():
        raise FloatingPointError(f"{crystal.name}: the engine produced non-finite intensities")
    return stack, info


class BlochSimulator:
    """The built-in differentiable Bloch-wave engine (:mod:`lacbed_refine.engine.bloch`)."""

    name = "bloch"

    def __init__(self, precision: str = "fast"):
        self.precision = precision

    def available(self) -> tuple[bool, str]:
        return True, "built-in Bloch-wave engine"

    def simulate(self, crystal, settings, *, device="cpu", workers=1, progress=False):
        from lacbed_refine.simulators.bloch import simulate_crystal

        stack, _ = simulate_crystal(
            crystal, settings, device=device, precision=self.precision, progress=progress, workers=workers
        )
        return stack
