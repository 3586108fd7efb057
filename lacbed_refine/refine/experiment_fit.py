"""Fit a measured digital-LACBED experiment: every disc at once, the structure, the thickness and the
microscope (:mod:`.experiment_model`) refined together.

Stages (each logged with its figure of merit and time):

1. **first simulation** at the start structure over a thickness scan (one decomposition gives
   every thickness);
2. **orientation**: which of the eight axis layouts puts the measured images on the engine's axes,
   from the data (mean disc r at the best scanned thickness);
3. **geometry search**: rotation × scale grid, then each disc's registration by a ±3 px search,
   then a gradient fit of the whole experiment model and a thickness re-scan with it — so that a
   pattern rotated by a few degrees or off by a few pixels starts in the right basin;
4. **refinement**: trust-region Gauss–Newton steps in the structure and thickness: at each point the
   engine gives the discs and their finite-difference Jacobian (one call per free structural
   parameter; the thickness derivative comes from the same decomposition), and the linearised
   model is minimised over structure *and* experiment model exactly (torch autograd); a step is
   kept only if the engine confirms a lower figure of merit;
5. **beam convergence**: the strong-beam count (and the pool with it) is raised by ``beam_factor``;
   a pool whose discs at the current values still change (mean 1 − r above
   ``BEAM_TOLERANCE["discs"]``) is only simulated, the next ones are refined to convergence, until
   two successive refined pools agree in the figure of merit and every refined value within the
   stated tolerances;
6. **uncertainties**: the Hessian of the figure of merit at the answer (exact in the experiment
   model, Gauss–Newton in the structure) gives σ and the full correlation matrix.

Thickness is in nm throughout the fit; the engine takes Å (``NM``), in :meth:`_Engine.run` only.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np
import scipy.optimize
import torch

from lacbed_refine.conventions import NM, electron_wavelength
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.refine.experiment_model import (
    ORIENTATIONS, Geometry, background_basis, background_projector, blur_discs, crystal_tilt_mrad, disc_correlations, orient,
    residual_correlation_area, residualise, sample_discs,
)
from lacbed_refine.refine.result import StageLog
from lacbed_refine.structure.crystal import Crystal
from lacbed_refine.structure.parameters import free_parameters

log = logging.getLogger(__name__)

__all__ = ["ExperimentFitConfig", "ExperimentFit", "fit_experiment", "check_experiment_config"]

#: Typical size of each kind of parameter [Å, Å², fraction, nm]: the optimiser's unit, the
#: trust-region unit and (÷ 5) the finite-difference step.
STEP = {"xyz": 0.05, "b": 0.5, "occ": 0.1, "absorption": 0.25, "lattice": 0.005, "thickness": 10.0}
#: Beam convergence tolerances: figure of merit (absolute) and refined values per kind.
BEAM_TOLERANCE = {"fom": 1e-3, "xyz": 0.002, "b": 0.02, "occ": 0.01, "absorption": 0.02, "lattice": 0.0005,
                  "thickness": 0.5, "discs": 3e-3}
#: Refinable values that are not the structure's: name in ``--refine`` → (reported name, start, range).
#: ``absorption`` is a factor on U′, ``lattice`` a factor on the cell edges.
GLOBALS = ("absorption", "lattice")
_GLOBAL_SPEC = {"absorption": ("absorption_scale", 1.0, (0.0, 5.0)), "lattice": ("lattice_scale", 1.0, (0.9, 1.1))}


@dataclass
class ExperimentFitConfig:
    """Options of a fit to a measured experiment (CLI options in brackets).

    Attributes
    ----------
    refine : tuple of {"xyz", "b", "occ", "absorption", "lattice"}
        Parameters refined (``--refine``): structural ones; ``absorption``, a scale on the
        absorptive potential U′ of ``absorption_model`` (1 = as published); ``lattice``, an
        isotropic scale of the cell edges (reported as the refined a; in one zone it is nearly
        degenerate with the image scale, which the correlation matrix shows). Thickness is always
        refined.
    fix : tuple of str
        Site labels held fixed (``--fix``).
    thickness_nm : float or None
        Start thickness [nm]; None: the best of the scan.
    thickness_scan_nm : (lo, hi, step) or None
        Thickness scan [nm]; None: from ``felix.inp``'s range, widened to ½×–1.5× (at least 20–300 nm
        without one).
    strong_beams, pool : int or None
        Least strong beams per pixel (FELIX's rule) and pool size; None: ``felix.inp``'s
        ``min_strong_beams`` / ``min_reflection_pool``.
    absorption_model : str
        "bird-king" (default for measured data), "proportional" or "none".
    bethe : bool
        Keep each pixel's weak beams as second-order (Bethe) couplings of its strong beams
        (``--bethe``; see :func:`lacbed_refine.engine.general.simulate_zone`).
    background_order : int
        Per-disc background polynomial: 0 constant, 1 plane, 2 quadratic.
    stretch : bool
        Refine an x/y stretch of the image.
    blur_px : float or None
        Start detector blur σ [measured px]; None: ``felix.inp``'s ``blur_radius`` or 1.
    orientation : str
        "auto" or one of :data:`~.experiment_model.ORIENTATIONS`.
    max_rotation_deg, max_scale_error : float
        Search range of the rotation [°] and of the scale (fraction).
    max_shift_px : float
        Per-disc registration range [px] around the common zone-axis position.
    iterations : int
        Most Gauss–Newton steps per refinement.
    converge_beams : bool
        Raise the beams until the answer stops changing.
    beam_factor : float
        Factor by which the strong beams (and the pool) grow per convergence step.
    max_beam_steps : int
        Most convergence steps.
    bin : int
        Average ``bin``×``bin`` blocks of the measured images first (faster, coarser).
    weights : dict or None
        Per-disc weights {(h, k, l): w} in the figure of merit (others 1).
    workers : int or None
        Engine worker processes (None: the available CPUs).
    margin : float
        The simulated tilt range's excess over the measured one (room for rotation, scale, shifts).
    lattice_range : float
        With ``lattice`` refined: the cell-edge factors 1 ± ``lattice_range`` scanned (steps of
        0.0025, the geometry fitted at each) before the refinement starts from the best.
    """

    refine: tuple = ("xyz", "b")
    fix: tuple = ()
    thickness_nm: float | None = None
    thickness_scan_nm: tuple | None = None
    strong_beams: int | None = None
    pool: int | None = None
    absorption_model: str = "bird-king"
    bethe: bool = False
    background_order: int = 1
    stretch: bool = False
    blur_px: float | None = None
    orientation: str = "auto"
    max_rotation_deg: float = 6.0
    max_scale_error: float = 0.06
    max_shift_px: float = 3.0
    iterations: int = 6
    converge_beams: bool = True
    beam_factor: float = 1.5
    max_beam_steps: int = 5
    bin: int = 1
    weights: dict | None = None
    workers: int | None = None
    margin: float = 1.15
    lattice_range: float = 0.02


def check_experiment_config(c: ExperimentFitConfig) -> None:
    """One line naming the option and the value for every absurd setting (before any work)."""

    def bad(option, value, why):
        raise ValueError(f"{option} {value!r}: {why}")

    for k in c.refine:
        if k not in ("xyz", "b", "occ") + GLOBALS:
            bad("--refine", k, "use xyz, b, occ, absorption or lattice")
    if "absorption" in c.refine and c.absorption_model == "none":
        bad("--refine", "absorption", "needs an absorption model (bird-king or proportional), not none")
    if c.thickness_nm is not None and not (0.5 <= c.thickness_nm <= 2000):
        bad("--thickness", c.thickness_nm, "must lie in 0.5–2000 nm")
    if c.thickness_scan_nm is not None:
        lo, hi, st = c.thickness_scan_nm
        if not (0.5 <= lo < hi <= 2000 and 0 < st <= hi - lo):
            bad("--thickness-scan", c.thickness_scan_nm, "need 0.5 ≤ lo < hi ≤ 2000 nm and 0 < step ≤ hi − lo")
    for opt, v, lo, hi in (("--strong-beams", c.strong_beams, 5, 2000), ("--beams", c.pool, 5, 5000)):
        if v is not None and not (lo <= int(v) <= hi):
            bad(opt, v, f"must lie in {lo}–{hi}")
    if c.absorption_model not in ("bird-king", "proportional", "none"):
        bad("--absorption-model", c.absorption_model, "use bird-king, proportional or none")
    if c.background_order not in (0, 1, 2):
        bad("--background-order", c.background_order, "use 0, 1 or 2")
    if c.blur_px is not None and not (0 <= c.blur_px <= 3):
        bad("--blur", c.blur_px, "must lie in 0–3 px")
    if c.orientation != "auto" and c.orientation not in ORIENTATIONS:
        bad("--orientation", c.orientation, f"use auto or one of {', '.join(ORIENTATIONS)}")
    if not (0 <= c.max_rotation_deg <= 45):
        bad("--max-rotation", c.max_rotation_deg, "must lie in 0–45°")
    if not (0 <= c.max_scale_error <= 0.3):
        bad("--max-scale-error", c.max_scale_error, "must lie in 0–0.3")
    if not (0 <= c.max_shift_px <= 20):
        bad("--max-shift", c.max_shift_px, "must lie in 0–20 px")
    if not (0 <= int(c.iterations) <= 100):
        bad("--iterations", c.iterations, "must lie in 0–100")
    if not (1.1 <= c.beam_factor <= 4):
        bad("--beam-factor", c.beam_factor, "must lie in 1.1–4")
    if int(c.bin) not in (1, 2, 3, 4):
        bad("--bin", c.bin, "use 1, 2, 3 or 4")
    for k, w in (c.weights or {}).items():
        if len(tuple(k)) != 3 or not (math.isfinite(float(w)) and 0 <= float(w) <= 100):
            bad("--disc-weights", f"{' '.join(map(str, k))}={w}", "need three indices and a weight in 0–100")
    if not (1.0 <= c.margin <= 2.0):
        bad("margin", c.margin, "must lie in 1–2")
    if not (0 <= c.lattice_range <= 0.1):
        bad("lattice_range", c.lattice_range, "must lie in 0–0.1")


# ------------------------------------------------------------------------------------------------
@dataclass
class ExperimentFit:
    """What a fit to an experiment produced (written by :func:`lacbed_refine.refine.experiment_files.write_experiment_fit`)."""

    crystal_start: Crystal
    crystal: Crystal
    reflections: list
    names: list
    kinds: list
    start: list
    refined: list
    sigma: list
    correlation: np.ndarray
    fom: float
    disc_r: np.ndarray
    disc_r_plain: np.ndarray
    geometry: Geometry
    geometry_sigma: dict
    orientation: str
    thickness_nm: float
    measured: np.ndarray
    recorded: np.ndarray
    simulated: np.ndarray
    stages: list
    beams: dict
    settings: SimulationSettings
    config: ExperimentFitConfig
    extra: dict = field(default_factory=dict)


class _Engine:
    """The Bloch engine at fixed geometry settings: structure θ and thicknesses → discs."""

    def __init__(self, crystal, params, settings: SimulationSettings, reflections, workers):
        from lacbed_refine.simulators.bloch import zone_axis

        self.crystal, self.params, self.reflections = crystal, params, tuple(reflections)
        self.workers = workers
        self.zone = zone_axis(crystal, settings)
        self.set_beams(settings)
        self.calls = 0
        self.seconds = 0.0

    def set_beams(self, settings):
        from lacbed_refine.simulators.bloch import zone_beams

        self.settings = settings
        self.pool = zone_beams(crystal=self.crystal, settings=replace(settings, reflections=self.reflections))

    def run(self, theta: np.ndarray, t_nm, absorption_scale: float = 1.0, lattice_scale: float = 1.0) -> torch.Tensor:
        """Discs (T, R, S, S) float64 at θ, thicknesses ``t_nm`` [nm], U′ × ``absorption_scale`` and
        the cell edges × ``lattice_scale``."""
        from lacbed_refine.engine.general import simulate_zone

        s = self.settings
        t0 = time.perf_counter()
        with torch.no_grad():
            stack = simulate_zone(
                self.params.atoms(torch.as_tensor(theta, dtype=torch.float64)), _scaled_cell(self.crystal.cell, lattice_scale),
                self.zone,
                self.pool, torch.as_tensor(np.atleast_1d(t_nm), dtype=torch.float64) * NM,
                voltage=s.voltage, size=s.size, half_width=s.half_width, reflections=self.reflections,
                strong_beams=s.strong_beams, absorption_model=s.absorption_kind, absorption=s.absorption,
                form_factors=s.form_factors, dtype=torch.float32, workers=self.workers,
                absorption_scale=float(absorption_scale), bethe=s.bethe,
            )
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        if not torch.isfinite(stack).all():
            raise FloatingPointError(f"{self.crystal.name}: the engine produced non-finite intensities")
        return stack.to(torch.float64)


class _Model:
    """The linearised forward model: simulated discs + Jacobian · Δθ → experiment model → disc r."""

    def __init__(self, measured, recorded, weights, order, n, step, sim_half_width):
        self.n, self.step, self.sim_hw = n, step, sim_half_width
        w = torch.as_tensor(recorded.reshape(len(recorded), -1), dtype=torch.float64)
        self.W = w
        self.q = background_projector(w, background_basis(n, order))
        meas = torch.as_tensor(np.where(recorded, measured, 0.0).reshape(len(measured), -1), dtype=torch.float64)
        self.meas_res = residualise(meas, w, self.q)
        self.q0 = background_projector(w, background_basis(n, 0))
        self.meas_res0 = residualise(meas, w, self.q0)
        self.w = torch.as_tensor(weights, dtype=torch.float64)
        self.base = None  # (R, S, S)
        self.jac = None  # (P, R, S, S)

    def set_base(self, base: torch.Tensor, jac: torch.Tensor | None):
        self.base, self.jac = base, jac

    def discs(self, dtheta, g):
        """Model discs (R, n, n) for scaled structure steps ``dtheta`` (P,) and geometry dict ``g``."""
        sim = self.base
        if self.jac is not None and len(self.jac):
            sim = sim + torch.einsum("p,prij->rij", dtheta, self.jac)
        s = sample_discs(sim, self.sim_hw, self.n, self.step, rotation=g["rotation"], scale=g["scale"],
                         stretch=g["stretch"], centre=torch.zeros(2, dtype=torch.float64), shifts=g["shifts"])
        return blur_discs(s, g["blur"])

    def r(self, dtheta, g, plain=False):
        d = self.discs(dtheta, g)
        if plain:
            return disc_correlations(d, self.meas_res0, self.W, self.q0)
        return disc_correlations(d, self.meas_res, self.W, self.q)

    def fom(self, dtheta, g):
        r = self.r(dtheta, g)
        return (self.w * (1.0 - r)).sum() / self.w.sum()


# The optimiser's geometry vector: [rotation (deg), (scale − 1)·100, stretch·100, blur px, shifts (R·2) px]
def _geometry_to_vec(g: Geometry) -> np.ndarray:
    pos = np.asarray(g.centre)[None] + g.shifts
    return np.concatenate([[g.rotation_deg, (g.scale - 1) * 100, g.stretch * 100, g.blur_px], pos.ravel()])


def _vec_to_torch(v: torch.Tensor, n_discs: int) -> dict:
    return {"rotation": v[0] * (math.pi / 180), "scale": 1 + v[1] / 100, "stretch": v[2] / 100, "blur": v[3],
            "shifts": v[4:4 + 2 * n_discs].reshape(n_discs, 2)}


def _vec_to_geometry(v: np.ndarray, n_discs: int) -> Geometry:
    pos = v[4:4 + 2 * n_discs].reshape(n_discs, 2)
    centre = pos.mean(0)
    return Geometry(rotation_deg=float(v[0]), scale=1 + float(v[1]) / 100, stretch=float(v[2]) / 100,
                    centre=centre, shifts=pos - centre, blur_px=float(v[3]))


def _geometry_bounds(v0, n_discs, config, centre0):
    rot = (-config.max_rotation_deg - 2, config.max_rotation_deg + 2)
    sc = (-100 * config.max_scale_error - 2, 100 * config.max_scale_error + 2)
    st = (-5.0, 5.0) if config.stretch else (0.0, 0.0)
    bl = (0.05, 3.0)
    b = [rot, sc, st, bl]
    m = config.max_shift_px
    for i in range(n_discs):
        for j in range(2):
            b.append((centre0[j] - m - 4, centre0[j] + m + 4))
    return b


def _minimise(model: _Model, z0: np.ndarray, bounds, n_struct: int, n_discs: int, max_iter=200):
    """Minimise the linearised figure of merit over z = [structure steps (scaled), geometry vector]."""

    def f(z):
        zt = torch.as_tensor(z, dtype=torch.float64).requires_grad_()
        val = model.fom(zt[:n_struct], _vec_to_torch(zt[n_struct:], n_discs))
        (g,) = torch.autograd.grad(val, zt)
        return float(val.detach()), g.numpy().astype(float)

    res = scipy.optimize.minimize(f, z0, jac=True, method="L-BFGS-B", bounds=bounds,
                                  options={"maxiter": max_iter, "ftol": 1e-12, "gtol": 1e-9})
    return res


# ------------------------------------------------------------------------------------------------
def _settings_from(inp, config, size_sim: int, sim_hw: float) -> SimulationSettings:
    """Engine settings for the experiment: ``felix.inp``'s (``inp``) voltage, zone, x direction,
    normal and beams, the fit's choices over them; ``size_sim`` [px], ``sim_hw`` [Å⁻¹]."""
    strong = config.strong_beams or (inp.min_strong_beams if inp.min_strong_beams > 0 else 50)
    # the pool as FELIX makes it: RgLimit when it is set, else the pool-size cap
    g_limit = inp.g_limit if config.pool is None and inp.g_limit > 0 else None
    pool = None if g_limit else (config.pool or (inp.min_reflection_pool if inp.min_reflection_pool > 0 else 200))
    return SimulationSettings(
        voltage=inp.voltage, size=size_sim, half_width=sim_hw, thicknesses=(1000.0,), n_beams=pool, g_limit=g_limit,
        strong_beams=strong, strong_rule="felix", zone=tuple(inp.beam_direction), x_direction=tuple(inp.x_direction),
        normal=tuple(inp.normal_direction), absorption_model=config.absorption_model,
        absorption=inp.absorption_percent if config.absorption_model == "proportional" else 0.0,
        bethe=bool(config.bethe),
    )


def _bin_images(images, recorded, b):
    if b == 1:
        return images, recorded
    R, n, _ = images.shape
    m = n // b
    im = np.where(recorded, images, 0.0)[:, :m * b, :m * b].reshape(R, m, b, m, b)
    rec = recorded[:, :m * b, :m * b].reshape(R, m, b, m, b)
    cnt = rec.sum(axis=(2, 4))
    out = im.sum(axis=(2, 4)) / np.maximum(cnt, 1)
    return out, cnt == b * b


def _scan_range(config, experiment) -> np.ndarray:
    if config.thickness_scan_nm is not None:
        lo, hi, st = config.thickness_scan_nm
    else:
        inp = experiment.felix
        t0 = inp.thickness_initial / NM
        t1 = max(inp.thickness_final / NM, t0)
        lo, hi, st = max(10.0, 0.5 * t0), max(1.5 * t1, t0 + 60.0), 2.0
        if config.thickness_nm is not None:
            lo, hi = max(1.0, min(lo, config.thickness_nm - 30)), max(hi, config.thickness_nm + 30)
    return np.arange(lo, hi + 1e-9, st)


def _free_indices(params, crystal) -> list[int]:
    """θ entries the fit varies: all, except the displacement of the first site along a polar axis
    (moving every atom along it changes no intensity, so one site fixes the origin)."""
    idx = list(range(len(params.names)))
    xyz = [i for i, k in enumerate(params.kinds) if k == "xyz"]
    if not xyz:
        return idx
    # directions every site may move along: the intersection of the sites' allowed spaces
    common = None
    for d in params.directions:
        space = np.asarray(d).reshape(-1, 3)
        if common is None:
            common = space
        else:
            if len(space) == 0 or len(common) == 0:
                return idx
            proj = common @ space.T @ space  # project common onto this site's space
            keep = [v for v, p in zip(common, proj) if np.linalg.norm(v - p) < 1e-8]
            common = np.array(keep).reshape(-1, 3)
    if common is None or len(common) == 0:
        return idx
    # the heaviest site with such freedom fixes the origin, along each common direction once
    sites = sorted({params.site_of[i] for i in xyz}, key=lambda s: -crystal.sites[s].atomic_number)
    drop = []
    for site in sites:
        mine = [i for i in xyz if params.site_of[i] == site]
        dirs = [np.asarray(params.directions[site])[int(params.names[i].rsplit("dx", 1)[1])] for i in mine]
        for c in common:
            align = [abs(float(d @ c)) if i not in drop else -1.0 for i, d in zip(mine, dirs)]
            if max(align) > 0.999:
                drop.append(mine[int(np.argmax(align))])
        if drop:
            break
    return [i for i in idx if i not in drop]


def _scaled_cell(cell, f: float):
    """``cell`` with every edge × ``f`` (angles kept)."""
    if f == 1.0:
        return cell
    return replace(cell, a=cell.a * f, b=cell.b * f, c=cell.c * f)


class _ThetaMap:
    """The optimiser's values x (all but the thickness) → the parameter vector θ and the global
    factors: the ``free`` entries are x's first ones, an occupancy tied by a site sum is the sum's
    start value minus the others, the rest stay at θ0; then one entry per name in ``extras``
    (:data:`GLOBALS`, in that order)."""

    def __init__(self, params, theta0, free, extras=()):
        self.theta0, self.free, self.ties = theta0, list(free), []
        self.extras = tuple(k for k in GLOBALS if k in extras)
        occ = {params.site_of[i]: i for i, k in enumerate(params.kinds) if k == "occ"}
        for group in params.occupancy_groups():
            members = [occ[s] for s in group if s in occ]
            if len(members) == len(group) and len(group) > 1:  # every occupancy on the site is refined
                dep, rest = members[0], members[1:]
                self.ties.append((dep, rest, float(sum(theta0[m] for m in members))))
                self.free.remove(dep)

    def factors(self, x) -> dict:
        """The engine's global factors in x: ``absorption_scale`` and ``lattice_scale`` (1 when not
        refined)."""
        out = {"absorption_scale": 1.0, "lattice_scale": 1.0}
        for i, k in enumerate(self.extras):
            out[_GLOBAL_SPEC[k][0]] = float(x[len(self.free) + i])
        return out

    def __call__(self, x) -> np.ndarray:
        theta = self.theta0.copy()
        theta[self.free] = x[:len(self.free)]
        for dep, rest, total in self.ties:
            theta[dep] = total - sum(theta[m] for m in rest)
        return theta


def fit_experiment(crystal: Crystal, experiment, config: ExperimentFitConfig = ExperimentFitConfig(), *,
                   progress=None) -> ExperimentFit:
    """Refine ``crystal`` and the experiment model against a measured experiment
    (:class:`lacbed_refine.io.experiment.Experiment`). See the module docstring for the stages.

    ``progress``: a callable taking (stage name, figure of merit or None) or None.
    """
    from lacbed_refine.runtime import single_thread

    check_experiment_config(config)
    # one intra-op thread: the model's operations are small, and torch's thread barriers make them
    # many times slower on a busy machine; the engine's parallelism is its worker processes
    with single_thread():
        return _fit_experiment(crystal, experiment, config, progress)


def _fit_experiment(crystal, experiment, config, progress):
    from lacbed_refine.runtime import available_cpus

    t_start = time.perf_counter()
    stages: list[StageLog] = []

    def say(name, fom, t0, note=""):
        stages.append(StageLog(name, None if fom is None else float(fom), time.perf_counter() - t0, note))
        log.info("%s: fom %s (%.1f s) %s", name, "—" if fom is None else f"{fom:.5f}", time.perf_counter() - t0, note)
        if progress is not None:
            progress(name, fom)

    inp = experiment.felix
    if inp is None:
        raise ValueError(f"{experiment.source}: no felix.inp beside the images (zone, x direction, half-width "
                         "and voltage come from it)")
    reflections = [tuple(int(i) for i in r) for r in experiment.reflections]
    full_images = np.asarray(experiment.images, dtype=float)
    full_recorded = np.asarray(experiment.recorded, dtype=bool)
    R = len(full_images)
    # a first pass on 2×-binned images finds the orientation, the geometry and most of the
    # structure for a quarter of the engine's cost; the last steps run on the full grid
    bins = [2 * config.bin, config.bin] if full_images.shape[-1] // config.bin >= 64 else [config.bin]
    weights = np.ones(R)
    for k, w in (config.weights or {}).items():
        if tuple(k) not in reflections:
            raise ValueError(f"--disc-weights {' '.join(map(str, k))}: not one of the discs fitted")
        weights[reflections.index(tuple(k))] = float(w)
    if not weights.sum() > 0:
        raise ValueError("--disc-weights: every disc has weight 0")
    params = free_parameters(crystal, refine=tuple(k for k in config.refine if k not in GLOBALS), fix=config.fix)
    tmap = _ThetaMap(params, params.initial().numpy().astype(float), _free_indices(params, crystal), config.refine)
    free = tmap.free
    kinds = [params.kinds[i] for i in free] + list(tmap.extras) + ["thickness"]
    names = [params.names[i] for i in free] + [_GLOBAL_SPEC[k][0] for k in tmap.extras] + ["thickness_nm"]
    scale = np.array([STEP[k] for k in kinds])
    theta0 = params.initial().numpy().astype(float)
    workers = config.workers or available_cpus()

    def level(b, size_sim=None):
        images, recorded = _bin_images(full_images, full_recorded, b)
        n = images.shape[-1]
        step = inp.half_width / (n / 2)
        size_sim = size_sim or 2 * int(math.ceil(config.margin * n / 2))
        sim_hw = size_sim / 2 * step
        return images, recorded, n, step, size_sim, sim_hw

    b = bins[0]
    images, recorded, n, step, size_sim, sim_hw = level(b)
    settings = _settings_from(inp, config, size_sim, sim_hw)
    engine = _Engine(crystal, params, settings, reflections, workers)
    where = f" ({n}² px, bin {b})"

    # 1. first simulation over the thickness scan
    t0 = time.perf_counter()
    ts = _scan_range(config, experiment)
    scan = engine.run(theta0, ts)  # (T, R, S, S)
    say("first simulation", None, t0, f"{len(ts)} thicknesses {ts[0]:.0f}–{ts[-1]:.0f} nm, pool {len(engine.pool)}, "
        f"≥{settings.strong_beams} strong beams, {size_sim}² simulated px{where}")

    blur0 = config.blur_px if config.blur_px is not None else (inp.blur_radius if inp.blur_radius > 0 else 1.0)
    geo = Geometry(blur_px=blur0 * config.bin / b).with_discs(R)

    def model_for(name):
        meas = orient(images, name)
        rec = orient(recorded, name)
        return _Model(meas, rec, weights, config.background_order, n, step, sim_hw), meas, rec

    def scan_r(model, g: Geometry, stack):
        v = torch.as_tensor(_geometry_to_vec(g))
        with torch.no_grad():
            out = []
            for s in stack:
                model.set_base(s, None)
                out.append(float(model.fom(torch.zeros(0, dtype=torch.float64), _vec_to_torch(v, R))))
        return np.array(out)

    # 2. orientation from the data
    t0 = time.perf_counter()
    sub = scan[:: max(1, len(ts) // 12)]
    names_o = list(ORIENTATIONS) if config.orientation == "auto" else [config.orientation]
    best = None
    table = {}
    for o in names_o:
        m, _, _ = model_for(o)
        foms = scan_r(m, geo, sub)
        table[o] = float(foms.min())
        if best is None or foms.min() < best[1]:
            best = (o, float(foms.min()))
    orientation = best[0]
    model, meas_o, rec_o = model_for(orientation)
    ranked = sorted(table.items(), key=lambda kv: kv[1])
    say("orientation", best[1], t0, f"{orientation} (fom {ranked[0][1]:.3f}; next {ranked[1][0]} {ranked[1][1]:.3f})"
        if len(ranked) > 1 else orientation)

    # 3. geometry search: rotation × scale grid at the best scanned thickness, then each disc's
    # registration, then the whole experiment model by gradient, then the thickness again
    t0 = time.perf_counter()
    foms = scan_r(model, geo, scan)
    it = int(np.argmin(foms))
    model.set_base(scan[it], None)
    rots = np.arange(-config.max_rotation_deg, config.max_rotation_deg + 1e-9, 1.0) if config.max_rotation_deg else [0.0]
    scs = np.arange(-config.max_scale_error, config.max_scale_error + 1e-9, 0.02) if config.max_scale_error else [0.0]
    grid_best = (math.inf, 0.0, 0.0)
    with torch.no_grad():
        for rot in rots:
            for sc in scs:
                g = replace(geo, rotation_deg=float(rot), scale=1 + float(sc), shifts=geo.shifts.copy())
                f = float(model.fom(torch.zeros(0), _vec_to_torch(torch.as_tensor(_geometry_to_vec(g)), R)))
                if f < grid_best[0]:
                    grid_best = (f, float(rot), 1 + float(sc))
    geo = replace(geo, rotation_deg=grid_best[1], scale=grid_best[2], shifts=geo.shifts.copy())
    geo = _register_discs(model, geo, R, config.max_shift_px)
    v = _geometry_to_vec(geo)
    bounds_g = _geometry_bounds(v, R, config, geo.centre)
    res = _minimise(model, v, bounds_g, 0, R)
    geo = _vec_to_geometry(res.x, R)
    foms = scan_r(model, geo, scan)
    it = int(np.argmin(foms))
    t_nm = float(ts[it]) if config.thickness_nm is None else float(config.thickness_nm)
    say("geometry search", float(foms[it]), t0,
        f"rotation {geo.rotation_deg:+.2f}°, scale {geo.scale:.4f}, blur {geo.blur_px:.2f} px, "
        f"zone axis at ({geo.centre[0]:+.2f}, {geo.centre[1]:+.2f}) px; thickness {t_nm:.0f} nm")

    starts = {k: _GLOBAL_SPEC[k][1] for k in tmap.extras}
    if "lattice" in tmap.extras and config.lattice_range > 0:
        # the cell edges trade against the image scale almost exactly (both scale the pattern);
        # what tells them apart (excitation errors' curvature, HOLZ lines) is too weak for a
        # linearised step from ~1 % away, so the factor is scanned first, the geometry fitted at each
        t0 = time.perf_counter()
        fs = 1 + np.arange(-config.lattice_range, config.lattice_range + 1e-9, 0.0025)
        best_l = None
        for f in fs:
            model.set_base(engine.run(theta0, [t_nm], lattice_scale=float(f))[0], None)
            res = _minimise(model, _geometry_to_vec(geo), bounds_g, 0, R, max_iter=100)
            if best_l is None or res.fun < best_l[0]:
                best_l = (float(res.fun), float(f), res.x)
        starts["lattice"] = best_l[1]
        geo = _vec_to_geometry(best_l[2], R)
        say("lattice scan", best_l[0], t0, f"{len(fs)} cell-edge factors {fs[0]:.4f}–{fs[-1]:.4f}: best {best_l[1]:.4f} "
            f"(a = {crystal.cell.a * best_l[1]:.4f} Å), image scale {geo.scale:.4f}")

    # 4. refinement (+ 5. beam convergence)
    x = np.concatenate([theta0[free], [starts[k] for k in tmap.extras], [t_nm]])
    x_start = x.copy()
    x, geo, fom, _ = _gauss_newton(engine, model, params, tmap, x, geo, scale, config, R, say)
    beams = {"pool": len(engine.pool), "strong_beams": engine.settings.strong_beams, "steps": [], "converged": None}

    def raise_beams(x, geo, fom, grid):
        """Raise the beams by ``beam_factor`` until two successive pools, each refined to convergence,
        agree within the tolerances; returns (x, geometry, fom, the settings of the first of those two
        pools, converged).

        A pool whose discs at the current answer still differ from the last pool's by more than
        ``BEAM_TOLERANCE["discs"]`` (mean 1 − r) is only simulated, not refined: the refined values
        cannot be converged while the simulation is not, and refining there would waste the most
        expensive engine calls of the fit. Once the discs settle, each pool is refined to
        convergence: Gauss–Newton steps that reuse the last Jacobian (the structure's derivatives
        change little with the beams; the engine still confirms every step), and a Jacobian derived
        afresh when the first step is refused (an unmoved value proves nothing about convergence).
        Where the discs changed by less than a thirtieth of the tolerance, one step measures the
        shift (a full refinement at the largest pool, on the full grid, is the fit's most expensive
        part: Ge(Sn) at 567 strong beams)."""
        t0 = time.perf_counter()
        jac = model.jac
        refined_here = True  # the answer passed in was refined at the current pool
        first_of_two = engine.settings
        quiet = lambda *a, **k: None  # noqa: E731
        for i in range(config.max_beam_steps):
            before = engine.settings
            old = model.base
            strong = int(round(before.strong_beams * config.beam_factor))
            pool = max(len(engine.pool), int(1.5 * strong))
            engine.set_beams(replace(before, strong_beams=strong, n_beams=pool, g_limit=None))
            trio = _evaluate(engine, tmap, x, scale)
            change = float(_disc_change(old, trio[1]).mean())
            last = i == config.max_beam_steps - 1
            step = {"grid": grid, "pool": len(engine.pool), "strong_beams": strong, "disc_change": change}
            if change > BEAM_TOLERANCE["discs"] and not last:
                # the simulation is not converged yet: the figure of merit here, at the same values
                model.set_base(trio[1], None)
                gv = _geometry_to_vec(geo)
                res = _minimise(model, gv, _geometry_bounds(gv, R, config, geo.centre), 0, R, max_iter=100)
                geo, fom_here = _vec_to_geometry(res.x, R), float(res.fun)
                step.update(refined=False, fom_same_values=fom_here, fom=fom_here, fom_change=fom_here - fom,
                            shifts={nm: 0.0 for nm in names}, fresh_jacobian=False, converged=False)
                beams["steps"].append(step)
                fom, refined_here = fom_here, False
                say(f"beams {len(engine.pool)}/{strong} ({grid} grid)", fom, t0,
                    f"discs changed by 1 − r = {change:.1e} at the same values: beams not converged, not refined here")
                t0 = time.perf_counter()
                continue
            # discs that hardly change (mean 1 − r under a thirtieth of the tolerance) leave the
            # optimum where it was, up to the linearised step's shift: one step measures it, and a
            # refused one means no better point within the engine's reach; larger changes get a full
            # refinement at this pool
            settled = change <= BEAM_TOLERANCE["discs"] / 30
            x_new, geo_new, fom_new, fom_at = _gauss_newton(engine, model, params, tmap, x, geo, scale, config, R,
                                                            quiet, jac=jac, final_jacobian=False, reuse_jacobian=True,
                                                            max_iter=1 if settled else None)
            fresh = False
            if np.array_equal(x_new, x) and not settled:
                jac = _jacobian(engine, tmap, x, scale, _evaluate(engine, tmap, x, scale))
                x_new, geo_new, fom_new, _ = _gauss_newton(engine, model, params, tmap, x, geo_new, scale, config, R,
                                                           quiet, jac=jac, final_jacobian=False, reuse_jacobian=True)
                fresh = True
            model.set_base(model.base, jac)
            shift = {nm: float(b - a) for nm, a, b in zip(names, x, x_new)}
            within = refined_here and abs(fom_new - fom) <= BEAM_TOLERANCE["fom"] and all(
                abs(shift[nm]) <= BEAM_TOLERANCE[k] for nm, k in zip(names, kinds))
            step.update(refined="one step" if settled else True, fom_same_values=fom_at, fom=fom_new, fom_change=fom_new - fom, shifts=shift,
                        fresh_jacobian=fresh, converged=bool(within))
            beams["steps"].append(step)
            x, geo, fom = x_new, geo_new, fom_new
            say(f"beams {len(engine.pool)}/{strong} ({grid} grid)", fom, t0,
                f"discs changed by 1 − r = {change:.1e}; refined: Δfom {step['fom_change']:+.1e}, largest value change "
                f"{max(abs(v) for v in shift.values()):.3g}" + (" (Jacobian derived again)" if fresh else "")
                + (" — converged" if within else ""))
            t0 = time.perf_counter()
            if within:
                return x, geo, fom, first_of_two, True
            refined_here, first_of_two = True, engine.settings
        return x, geo, fom, engine.settings, False

    if config.converge_beams:
        # the beams are converged on the cheap grid first: how many a pixel needs is physics, not
        # resolution; the full grid then runs with that many and checks once more at the answer
        x, geo, fom, enough, ok = raise_beams(x, geo, fom, "binned" if len(bins) > 1 else "full")
        beams["converged"] = ok
        if len(bins) > 1:
            engine.set_beams(enough)
    if len(bins) > 1:  # the full grid: geometry in its pixels, then the last steps
        t0 = time.perf_counter()
        f = bins[0] // bins[1]
        # the full grid spans the same tilts with f× the pixels, so that the binned grid's Jacobian,
        # interpolated, serves the full grid's steps (each then costs one engine call, not P + 1;
        # every step is still kept only when the engine confirms it)
        jac = model.jac
        P_, R_, S_, _ = jac.shape
        jac = torch.nn.functional.interpolate(jac.reshape(P_ * R_, 1, S_, S_), scale_factor=f, mode="bicubic",
                                              align_corners=False).reshape(P_, R_, f * S_, f * S_)
        images, recorded, n, step, size_sim, sim_hw = level(bins[1], size_sim * f)
        engine.set_beams(replace(engine.settings, size=size_sim, half_width=sim_hw))
        model, meas_o, rec_o = model_for(orientation)
        geo = replace(geo, centre=geo.centre * f, shifts=geo.shifts * f, blur_px=geo.blur_px * f)
        say("full grid", None, t0, f"{n}² px, {size_sim}² simulated px, pool {len(engine.pool)}, "
            f"≥{engine.settings.strong_beams} strong beams")
        x, geo, fom, _ = _gauss_newton(engine, model, params, tmap, x, geo, scale, config, R, say,
                                       max_iter=max(2, config.iterations // 2), name="full-grid refinement",
                                       jac=jac, final_jacobian=False, reuse_jacobian=True)
        if model.jac is None:
            model.set_base(model.base, jac)
        if config.converge_beams:
            x, geo, fom, _, ok = raise_beams(x, geo, fom, "full")
            beams["converged"] = ok
    beams.update(pool=len(engine.pool), strong_beams=engine.settings.strong_beams)
    if config.converge_beams:
        say("beam convergence", fom, time.perf_counter(), f"final pool {beams['pool']}, ≥{beams['strong_beams']} "
            f"strong beams, {'converged' if beams['converged'] else 'NOT converged within the steps allowed'}")

    # 6. uncertainties and correlations at the answer
    # (the structure's Jacobian is the last one computed, on the full grid at the answer or next to it)
    t0 = time.perf_counter()
    sigma, corr, geo_sigma, correlated = _uncertainties(model, x, geo, scale, R, config.stretch)
    say("uncertainties", fom, t0, "Hessian: exact in the experiment model, Gauss–Newton in the structure"
        + (" (Jacobian from the binned grid, interpolated)" if len(bins) > 1 else "")
        + f"; σ² × {correlated['area_px2']:.1f}, the area [px²] the residuals' autocorrelation spans")

    theta = tmap(x[:-1])
    with torch.no_grad():
        model.set_base(model.base, None)  # the engine's discs at the answer
        gt = _vec_to_torch(torch.as_tensor(_geometry_to_vec(geo)), R)
        sim_discs = model.discs(torch.zeros(0), gt).numpy()
        r = model.r(torch.zeros(0), gt).numpy()
        r0 = model.r(torch.zeros(0), gt, plain=True).numpy()
    refined = params.to_crystal(torch.as_tensor(theta))
    lattice = tmap.factors(x[:-1])["lattice_scale"]
    if lattice != 1.0:
        refined = refined.with_cell(_scaled_cell(refined.cell, lattice))
    log.info("fit done in %.1f s (%d engine calls, %.1f s in the engine)", time.perf_counter() - t_start,
             engine.calls, engine.seconds)
    return ExperimentFit(
        crystal_start=crystal, crystal=refined, reflections=reflections, names=names, kinds=kinds,
        start=[float(v) for v in x_start], refined=[float(v) for v in x], sigma=[float(s) for s in sigma],
        correlation=corr, fom=float(np.sum(weights * (1 - r)) / weights.sum()), disc_r=r, disc_r_plain=r0,
        geometry=geo, geometry_sigma=geo_sigma, orientation=orientation, thickness_nm=float(x[-1]),
        measured=meas_o, recorded=rec_o, simulated=sim_discs, stages=stages, beams=beams,
        settings=replace(engine.settings, thicknesses=(float(x[-1]) * NM,)), config=config,
        extra={"engine_calls": engine.calls, "engine_seconds": engine.seconds,
               "seconds": time.perf_counter() - t_start, "bin": config.bin, "measured_pixels": n, "levels": bins,
               "blur_start_px": blur0, "residual_correlation": correlated,
               "step_inv_A": step, "crystal_tilt_mrad": crystal_tilt_mrad(
                   geo.centre, geo.scale, step, geo.rotation_deg, electron_wavelength(inp.voltage)),
               "orientation_table": table,
               "tied": [{"name": params.names[dep], "kind": "occ", "start": float(theta0[dep]),
                         "refined": float(theta[dep]), "rule": f"{total:g} − " + " − ".join(params.names[m] for m in rest),
                         "sigma": float(np.sqrt(sum(sigma[free.index(m)] ** 2 for m in rest)))}
                        for dep, rest, total in tmap.ties]},
    )


def _register_discs(model, geo, R, max_shift):
    """Each disc's integer registration in ±``max_shift`` px around the common position (whole-image
    search), then re-centred so that the shifts have mean zero."""
    best = np.full(R, -np.inf)
    pos = np.tile(geo.centre, (R, 1))
    m = int(math.ceil(max_shift))
    base = _geometry_to_vec(geo)
    with torch.no_grad():
        for du in range(-m, m + 1):
            for dv in range(-m, m + 1):
                v = base.copy()
                v[4:] = (np.asarray(geo.centre) + [du, dv])[None].repeat(R, 0).ravel()
                r = model.r(torch.zeros(0), _vec_to_torch(torch.as_tensor(v), R)).numpy()
                better = r > best
                best[better] = r[better]
                pos[better] = np.asarray(geo.centre) + [du, dv]
    centre = pos.mean(0)
    return replace(geo, centre=centre, shifts=pos - centre)


def _disc_change(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 − Pearson r between two simulations of the same discs (R, S, S), per disc (R,)."""
    a = a.reshape(len(a), -1).to(torch.float64)
    b = b.reshape(len(b), -1).to(torch.float64)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return 1 - (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1)).clamp_min(1e-300)


def _evaluate(engine, tmap, x, scale):
    """Discs at x and at x ± a thickness step, (3, R, S, S), from one decomposition."""
    h_t = 0.2 * scale[-1]
    return engine.run(tmap(x[:-1]), [x[-1] - h_t, x[-1], x[-1] + h_t], **tmap.factors(x[:-1]))


def _jacobian(engine, tmap, x, scale, trio):
    """Derivatives of the discs per scaled parameter (P, R, S, S) at x: the thickness by a central
    difference within the decomposition of ``trio`` (:func:`_evaluate`), the structure by forward
    differences (one engine call each)."""
    base = trio[1]
    cols = []
    for j in range(len(x) - 1):
        h = 0.2 * scale[j]
        xs = x[:-1].copy()
        xs[j] += h
        cols.append((engine.run(tmap(xs), [x[-1]], **tmap.factors(xs))[0] - base) * (scale[j] / h))
    cols.append((trio[2] - trio[0]) * (scale[-1] / (2 * 0.2 * scale[-1])))
    return torch.stack(cols)


def _gauss_newton(engine, model, params, tmap, x, geo, scale, config, R, say, max_iter=None, name="refinement",
                  jac=None, final_jacobian=True, reuse_jacobian=False):
    """Trust-region Gauss–Newton in (structure, thickness) with the experiment model minimised
    exactly in each linearised step. ``jac``: a Jacobian to start from (e.g. the last one, before the
    beams were raised) instead of computing one. Returns (x, geometry, figure of merit, figure of
    merit at the start point after the geometry fit); the model is left holding the base and, with
    ``final_jacobian``, the Jacobian at x. ``reuse_jacobian``: keep ``jac`` for every step (a
    quasi-Newton step: the engine still confirms each one)."""
    kept = jac if reuse_jacobian else None
    t0 = time.perf_counter()
    P = len(x)
    lo = np.concatenate([params.lower[tmap.free], [_GLOBAL_SPEC[k][2][0] for k in tmap.extras], [1.0]])
    hi = np.concatenate([params.upper[tmap.free], [_GLOBAL_SPEC[k][2][1] for k in tmap.extras], [2000.0]])
    radius = 1.0  # trust region, in units of `scale`
    trio = _evaluate(engine, tmap, x, scale)
    model.set_base(trio[1], None)
    gv = _geometry_to_vec(geo)
    bounds_g = _geometry_bounds(gv, R, config, geo.centre)
    res = _minimise(model, gv, bounds_g, 0, R)
    gv, fom = res.x, float(res.fun)
    fom_first = fom
    n_iter = config.iterations if max_iter is None else max_iter
    for k in range(n_iter):
        if jac is None:
            jac = _jacobian(engine, tmap, x, scale, trio)
        model.set_base(trio[1], jac)
        zlo = np.maximum(-radius, (lo - x) / scale)
        zhi = np.minimum(radius, (hi - x) / scale)
        z0 = np.concatenate([np.zeros(P), gv])
        res = _minimise(model, z0, list(zip(zlo, zhi)) + bounds_g, P, R)
        dz, gv_new, predicted = res.x[:P], res.x[P:], float(res.fun)
        x_new = x + dz * scale
        trio_new = _evaluate(engine, tmap, x_new, scale)
        model.set_base(trio_new[1], None)
        with torch.no_grad():
            fom_new = float(model.fom(torch.zeros(0), _vec_to_torch(torch.as_tensor(gv_new), R)))
        gain, promised = fom - fom_new, fom - predicted
        if fom_new < fom:
            x, trio, jac, gv = x_new, trio_new, kept, gv_new
            # the geometry may move again at the new engine point (cheap)
            res = _minimise(model, gv, bounds_g, 0, R, max_iter=100)
            if res.fun < fom_new:
                gv, fom_new = res.x, float(res.fun)
            step = float(np.abs(dz).max())
            fom_old, fom = fom, fom_new
            radius = min(4.0, radius * 2) if promised > 0 and gain > 0.75 * promised else radius
            say(f"{name} step {k + 1}", fom, t0, f"Δfom {fom - fom_old:+.2e}, largest step {step:.3f} units")
            if step < 0.05 and fom_old - fom < 1e-4:
                break
        else:
            radius /= 4
            say(f"{name} step {k + 1}", fom, t0, f"rejected (engine fom {fom_new:.5f}); trust radius {radius:.3g}")
            if radius < 0.01 or fom_new - fom < 1e-5:  # no better point within reach of the engine's noise
                break
        t0 = time.perf_counter()
    if jac is None and final_jacobian:
        jac = _jacobian(engine, tmap, x, scale, trio)
    model.set_base(trio[1], jac)
    return x, _vec_to_geometry(gv, R), fom, fom_first


def _hessian_sparse(F, z: torch.Tensor, n_global: int, R: int) -> np.ndarray:
    """Hessian of F at z whose last 2R entries are per-disc (u, v) shifts: disc i's shifts touch only
    disc i's r, so the shift–shift block is 2×2 block-diagonal and all u (then all v) shifts can be
    probed with one Hessian-vector product; the global columns take one each (n_global + 2 products
    in all, instead of n_global + 2R)."""
    z = z.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(F(z), z, create_graph=True)

    def hvp(v):
        (hv,) = torch.autograd.grad(g, z, grad_outputs=v, retain_graph=True)
        return hv.detach().numpy()

    N = len(z)
    H = np.zeros((N, N))
    for j in range(n_global):
        v = torch.zeros(N, dtype=z.dtype)
        v[j] = 1.0
        H[:, j] = hvp(v)
    pos = np.arange(n_global, N).reshape(R, 2)
    for c in range(2):
        v = torch.zeros(N, dtype=z.dtype)
        v[pos[:, c]] = 1.0
        hv = hvp(v)
        for i in range(R):
            H[pos[i], pos[i, c]] = hv[pos[i]]
    for j in range(n_global):  # global rows from the symmetric columns
        H[j, pos.ravel()] = H[pos.ravel(), j]
    return 0.5 * (H + H.T)


def _uncertainties(model, x, geo, scale, R, stretch):
    """σ of every refined value and the correlation matrix (structure, thickness, then the
    experiment model's rotation, scale, stretch, blur and the zone-axis position), from the Hessian of
    F = Σ_i N_i (1 − r_i) with σ² = 2 F* / (N − P) · A.

    A [px²] is the area the residuals' autocorrelation spans
    (:func:`~lacbed_refine.refine.experiment_model.residual_correlation_area`): a misfit that spans
    A pixels carries the information of one, so independent pixels (A = 1) would understate σ² by
    about A. Returns (σ, correlation, geometry σ, {"area_px2": A, "radius_px": summed to,
    "independent_pixel_sigma": σ with A = 1})."""
    P = len(x)
    gv = _geometry_to_vec(geo)
    n_pix = model.W.sum(-1)  # (R,)

    def F(z):
        g = _vec_to_torch(z[P:], R)
        r = model.r(z[:P], g)
        return (n_pix * (1 - r)).sum()

    z = torch.as_tensor(np.concatenate([np.zeros(P), gv]))
    H = _hessian_sparse(F, z, P + 4, R)
    # geometry entries that were not free (stretch off) and the per-disc shifts' common mode are
    # handled by keeping only directions of positive curvature
    keep = np.ones(len(z), dtype=bool)
    keep[P + 2] = stretch  # the stretch has curvature only when refined
    Hk = H[np.ix_(keep, keep)]
    N = float(n_pix.sum())
    F_opt = float(F(z))
    with torch.no_grad():
        area, radius = residual_correlation_area(model.discs(z[:P], _vec_to_torch(z[P:], R)), model.meas_res,
                                                 model.W, model.q)
    s2 = 2 * F_opt / max(1.0, N - keep.sum()) * area
    w, v = np.linalg.eigh(Hk)
    w = np.clip(w, max(w.max(), 0.0) * 1e-10 + 1e-300, None)
    cov = s2 * (v / w) @ v.T
    cov_full = np.full((len(z), len(z)), np.nan)
    cov_full[np.ix_(keep, keep)] = cov
    units = np.concatenate([scale, np.ones(len(gv))])  # structure is scaled, geometry is not
    cov_full = cov_full * units[:, None] * units[None, :]
    sd = np.sqrt(np.clip(np.diag(cov_full), 0, None))
    # report the structure, thickness and the global geometry (rotation, scale, blur, centre);
    # per-disc shifts' σ go into the geometry dict only
    pos_idx = np.arange(P + 4, P + 4 + 2 * R).reshape(R, 2)
    # the common centre is the mean of the disc positions: its covariance is the mean of theirs
    A = np.zeros((2, len(z)))
    for j in range(2):
        A[j, pos_idx[:, j]] = 1.0 / R
    sel = list(range(P)) + [P + 0, P + 1, P + 3]
    T = np.vstack([np.eye(len(z))[sel], A])
    cov_r = T @ np.nan_to_num(cov_full) @ T.T
    sd_r = np.sqrt(np.clip(np.diag(cov_r), 0, None))
    corr = cov_r / np.maximum(np.outer(sd_r, sd_r), 1e-300)
    geo_sigma = {"rotation_deg": float(sd[P]), "scale": float(sd[P + 1] / 100), "blur_px": float(sd[P + 3]),
                 "centre_px": [float(sd_r[-2]), float(sd_r[-1])],
                 "shifts_px": sd[pos_idx].tolist()}
    return sd[:P], corr, geo_sigma, {"area_px2": area, "radius_px": radius,
                                     "independent_pixel_sigma": (sd[:P] / math.sqrt(area)).tolist()}
