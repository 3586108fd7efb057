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
from lacbed_refine.engine.geometry import SimulationSettings, paper_preset

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


log = logging.getLogger(__name__)


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
