"""Structure refinement against a measured bright-field LACBED pattern.

Parameters θ: symmetry-allowed displacements of every site [Å], B_iso [Å²], occupancies, and the
specimen thickness [nm] (:mod:`.parameters`). Figure of merit: ``1 − r`` between the (optionally
blurred) simulated and the measured pattern over the (optionally masked) pixels — correlation-based,
like FELIX's, so the intensity scale and offset of the measurement never matter.

Stages, each logged with its figure of merit and wall time, each switchable:
1. thickness scan — one eigen-decomposition per pixel gives every thickness, so a fine scan is cheap;
2. seed from the inverse generator, 3. surrogate gradient search (:mod:`.refine_surrogate`) —
   these need trained surrogate weights (given files or the shipped ones; without any the stage is
   skipped and says so) and are kept only when the Bloch engine confirms the improvement;
4. Bloch polish — L-BFGS-B with exact gradients through the engine, first on a half-resolution grid,
   then on the full grid;
5. final check with the chosen simulator (built-in Bloch engine in float64, or a plugin such as FELIX).
Uncertainties come from the curvature of the figure of merit at the optimum (finite differences of
the exact gradient): σ_i = sqrt(2 Δf [H⁻¹]_ii), with Δf the figure-of-merit noise level (FELIX's
RPrecision, 2e-5 by default).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import __version__
from .bloch import simulate_lacbed
from .conventions import NM
from .crystal import Crystal, write_cif
from .geometry import SimulationSettings
from .metrics import masked_pearson_r
from .parameters import free_parameters
from .patterns import atomic_path, check_pattern, resample_pattern
from .runtime import available_cpus, single_thread

__all__ = ["FitConfig", "StageLog", "RefinementResult", "refine", "fit_files", "seed_felix", "FIT_DEFAULT_BEAMS"]

log = logging.getLogger(__name__)

#: Typical size of each kind of parameter, used to scale the optimiser's variables.
_SCALE = {"xyz": 0.05, "b": 0.5, "occ": 0.2, "thickness": 10.0}


@dataclass(frozen=True)
class FitConfig:
    """Refinement options.

    Attributes
    ----------
    refine : tuple of {"xyz", "b", "occ", "thickness"}
        What to refine.
    fix : tuple of str
        Site labels held fixed.
    thickness_nm : float, optional
        Starting thickness [nm]; None scans ``thickness_scan_nm``.
    thickness_scan_nm : (start, stop, step)
        Thickness scan grid [nm].
    thickness_window_nm : float
        The refined thickness stays within ± this of its start [nm].
    blur_sigma : float
        Gaussian blur of the simulation [pixels] before comparison.
    seed, surrogate, polish : bool
        Stage switches.
    forward_model, inverse_model : str, optional
        Surrogate files for the search and the seed; None uses the shipped weights (when there are
        none, the stage is skipped and says so).
    surrogate_restarts : int
        Starts of the surrogate search (the current point, then random ones).
    threads : int, optional
        Threads over the pixels in the Bloch engine's gradient evaluations; None uses every CPU
        this process may run on (a batch with several worker processes sets 1).
    thickness_starts : int
        Peaks of the thickness scan (and the given start thickness) each given ``screen_iter``
        polish iterations before the polish goes on from the best; 1 keeps only the scan's best.
    screen_iter : int
        L-BFGS-B iterations of that screening.
    b_restart : bool
        After the polish, restart it from one overall B for all sites (their mean), refine that,
        then each B again, and keep the better optimum (when two or more B are refined).
    device : str
        Torch device of the surrogates ("cpu", "cuda").
    check : str
        Simulator for the final check ("bloch" or a plugin name).
    max_iter : int
        L-BFGS-B iterations per polish level.
    fom_noise : float
        Figure-of-merit noise level Δf for the uncertainties.
    """

    refine: tuple[str, ...] = ("xyz", "b", "occ", "thickness")
    fix: tuple[str, ...] = ()
    thickness_nm: float | None = None
    thickness_scan_nm: tuple[float, float, float] = (20.0, 400.0, 2.0)
    thickness_window_nm: float = 60.0
    blur_sigma: float = 0.0
    seed: bool = True
    surrogate: bool = True
    polish: bool = True
    forward_model: str | None = None
    inverse_model: str | None = None
    surrogate_restarts: int = 3
    b_restart: bool = True
    thickness_starts: int = 3
    screen_iter: int = 8
    threads: int | None = None
    device: str = "cpu"
    check: str = "bloch"
    max_iter: int = 40
    fom_noise: float = 2e-5

    def __post_init__(self):
        check_fit_config(self)


#: Largest Gaussian blur of the simulation [pixels] that still leaves a pattern to compare.
MAX_BLUR_PX = 20.0


def _count(value, option: str, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{option} {value!r}: must be a whole number >= {low}")


def _real(value, option: str, low: float, high: float, unit: str = "") -> None:
    try:
        ok = math.isfinite(float(value)) and low <= float(value) <= high
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{option} {value!r}: must be a number in {low:g}–{high:g}{unit}")


def check_fit_config(c: "FitConfig") -> None:
    """Check refinement options before any work; raises ValueError naming the option and value."""
    from .geometry import MAX_THICKNESS_A
    from .runtime import resolve_device

    if isinstance(c.refine, str):
        raise ValueError(f"--refine {c.refine!r}: give a tuple of kinds, e.g. ('xyz', 'b')")
    unknown = sorted(set(c.refine) - {"xyz", "b", "occ", "thickness"})
    if unknown:
        raise ValueError(f"--refine {','.join(c.refine)}: unknown kind(s) {unknown}; use any of xyz,b,occ,thickness")
    if isinstance(c.fix, str):
        raise ValueError(f"--fix {c.fix!r}: give a tuple of site labels")
    t_max = MAX_THICKNESS_A / NM
    if c.thickness_nm is not None:
        _real(c.thickness_nm, "--thickness", 1.0, t_max, " nm")
    start, stop, step = c.thickness_scan_nm
    _real(start, "thickness scan start", 0.0, t_max, " nm")
    _real(stop, "thickness scan stop", start, t_max, " nm")
    _real(step, "thickness scan step", 1e-3, max(stop - start, 1e-3), " nm")
    if (stop - start) / step > 1e5:
        raise ValueError(f"thickness scan {c.thickness_scan_nm}: more than 100000 thicknesses")
    _real(c.thickness_window_nm, "thickness window", 0.0, t_max, " nm")
    _real(c.blur_sigma, "--blur", 0.0, MAX_BLUR_PX, " pixels")
    _count(c.surrogate_restarts, "--restarts")
    _count(c.thickness_starts, "thickness starts")
    _count(c.screen_iter, "screening iterations")
    _count(c.max_iter, "--max-iter")
    if c.threads is not None:
        _count(c.threads, "threads")
    _real(c.fom_noise, "figure-of-merit noise", 1e-12, 1.0)
    if not isinstance(c.check, str) or not c.check:
        raise ValueError(f"--check {c.check!r}: name a simulator (bloch, or a plugin such as felix)")
    resolve_device(c.device)


@dataclass
class StageLog:
    """One stage: its name, figure of merit after it, wall time [s] and a note."""

    name: str
    fom: float | None
    seconds: float
    note: str = ""


@dataclass
class RefinementResult:
    """Everything a refinement produced (see :meth:`write`)."""

    crystal_start: Crystal
    crystal: Crystal
    names: list[str]
    start: list[float]
    refined: list[float]
    sigma: list[float]
    thickness_start_nm: float
    thickness_nm: float
    thickness_sigma_nm: float
    r: float
    stages: list[StageLog]
    measured: np.ndarray
    simulated: np.ndarray
    settings: SimulationSettings
    config: FitConfig
    extra: dict = field(default_factory=dict)

    @property
    def fom(self) -> float:
        return 1.0 - self.r

    def report(self) -> dict:
        """JSON-ready report: parameters with uncertainties, stages, settings, versions."""
        params = [
            {"name": n, "start": s, "refined": v, "sigma": e}
            for n, s, v, e in zip(self.names, self.start, self.refined, self.sigma)
        ]
        params.append(
            {"name": "thickness_nm", "start": self.thickness_start_nm, "refined": self.thickness_nm,
             "sigma": self.thickness_sigma_nm}
        )
        settings = asdict(self.settings)
        settings.pop("thicknesses", None)
        return {
            "crystal": self.crystal.name,
            "space_group": self.crystal.spacegroup_symbol,
            "a_angstrom": self.crystal.a,
            "figure_of_merit": "1 - Pearson r (bright field)",
            "r": self.r,
            "parameters": params,
            "stages": [asdict(s) for s in self.stages],
            "settings": settings,
            "config": asdict(self.config),
            "versions": {"lacbed_refine": __version__, "torch": torch.__version__},
            **self.extra,
        }

    def write(self, out_dir) -> dict[str, Path]:
        """Write ``refined.cif``, ``report.json`` and ``fit.png`` into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        unc = {}
        for name, sig in zip(self.names, self.sigma):
            if not math.isfinite(sig):  # not computed (no polish): write the value without one
                continue
            label, kind = name.rsplit(".", 1)
            if kind == "B":
                unc[(label, "b_iso")] = sig
            elif kind == "occ":
                unc[(label, "occupancy")] = sig
        paths = {"cif": out / "refined.cif", "report": out / "report.json", "figure": out / "fit.png"}
        write_cif(self.crystal, paths["cif"], uncertainties=unc)
        with atomic_path(paths["report"]) as tmp:
            tmp.write_text(json.dumps(_json_safe(self.report()), indent=2, default=float, allow_nan=False))
        _fit_figure(self, paths["figure"])
        return paths


#: Fewest pixels a mask may leave: a correlation over fewer says nothing about a structure.
MIN_MASK_PIXELS = 64


def check_mask(mask: np.ndarray, pattern: np.ndarray, *, name: str = "--mask") -> np.ndarray:
    """Check a pixel mask (True = use) against its pattern: same shape, at least
    :data:`MIN_MASK_PIXELS` pixels used, and the pattern not constant over them."""
    mask = np.asarray(mask)
    if mask.shape != np.shape(pattern):
        raise ValueError(f"{name}: mask shape {mask.shape} differs from the pattern's {np.shape(pattern)}")
    mask = mask.astype(bool)
    n = int(mask.sum())
    if n < MIN_MASK_PIXELS:
        raise ValueError(f"{name}: uses {n} of {mask.size} pixels; at least {MIN_MASK_PIXELS} are needed")
    if np.ptp(np.asarray(pattern)[mask]) == 0:
        raise ValueError(f"{name}: the pattern is constant over the {n} pixels the mask uses")
    return mask


def _json_safe(value):
    """NaN and infinities become None (JSON has no NaN): an uncertainty that could not be computed."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    return value


# ------------------------------------------------------------------------------------------------
def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    if sigma <= 0:
        return img
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=img.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    y = torch.nn.functional.pad(img[None, None], (radius, radius, radius, radius), mode="replicate")
    y = torch.nn.functional.conv2d(y, k.view(1, 1, 1, -1))
    y = torch.nn.functional.conv2d(y, k.view(1, 1, -1, 1))
    return y[0, 0]


class _Problem:
    """θ (scaled) → figure of merit, with exact gradients from the Bloch engine."""

    def __init__(self, crystal, settings, params, measured, mask, config, centring):
        self.crystal, self.settings, self.params = crystal, settings, params
        self.config, self.centring = config, centring
        self.theta0 = params.initial()
        self.kinds = list(params.kinds) + ["thickness"]
        self.scale = np.array([_SCALE[k] for k in self.kinds])
        self.refine_t = "thickness" in config.refine
        self.threads = config.threads or available_cpus()
        self.set_grid(settings.size, measured, mask)

    def set_grid(self, size, measured, mask):
        self.size = size
        self.meas = torch.as_tensor(measured, dtype=torch.float64)
        self.mask = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        self.grid_settings = replace(self.settings, size=size)

    def simulate(self, theta, t_nm, *, dtype=torch.float32, thicknesses=None):
        t = torch.atleast_1d(t_nm * NM) if thicknesses is None else thicknesses
        stack, _ = simulate_lacbed(
            self.params.atoms(theta), self.crystal.a, self.grid_settings, centring=self.centring,
            thickness=t, dtype=dtype, workers=self.threads,
        )
        return stack[:, 0]

    def fom_and_grad(self, z: np.ndarray, x0: np.ndarray):
        x = torch.as_tensor(x0 + z * self.scale, dtype=torch.float64).requires_grad_()
        theta, t_nm = x[:-1], x[-1]
        sim = self.simulate(theta, t_nm)[0].to(torch.float64)
        r = masked_pearson_r(_blur(sim, self.config.blur_sigma), self.meas, self.mask)
        f = 1.0 - r
        (g,) = torch.autograd.grad(f, x)
        g = g.numpy() * self.scale
        if not self.refine_t:
            g[-1] = 0.0
        return float(f.detach()), g


def _scan_peaks(grid: np.ndarray, rs: np.ndarray, k: int, min_gap_nm: float = 5.0) -> list[float]:
    """The thicknesses [nm] of the ``k`` highest local maxima of r(t), at least ``min_gap_nm`` apart."""
    inner = [i for i in range(len(rs)) if (i == 0 or rs[i] >= rs[i - 1]) and (i == len(rs) - 1 or rs[i] >= rs[i + 1])]
    peaks: list[float] = []
    for i in sorted(inner, key=lambda i: -rs[i]):
        if all(abs(grid[i] - p) >= min_gap_nm for p in peaks):
            peaks.append(float(grid[i]))
        if len(peaks) == k:
            break
    return peaks


def _thickness_scan(problem, x, config, around: float | None = None) -> tuple[float, float, list[float]]:
    start, stop, step = config.thickness_scan_nm
    if around is not None:  # a start was given: scan only the window the polish may reach
        start = max(step, around - config.thickness_window_nm)
        stop = around + config.thickness_window_nm
        step = min(step, 1.0)
    grid = torch.arange(start, stop + 0.5 * step, step, dtype=torch.float64)
    with torch.no_grad():
        sims = problem.simulate(torch.as_tensor(x[:-1]), None, thicknesses=grid * NM)
    rs = torch.stack([masked_pearson_r(_blur(s.double(), config.blur_sigma), problem.meas, problem.mask) for s in sims])
    peaks = _scan_peaks(grid.numpy(), rs.numpy(), config.thickness_starts)
    k = int(torch.argmax(rs))
    t = float(grid[k])
    if 0 < k < len(grid) - 1:  # parabola through the best three points
        y0, y1, y2 = (float(rs[k - 1]), float(rs[k]), float(rs[k + 1]))
        den = y0 - 2 * y1 + y2
        if den < 0:
            t += 0.5 * step * (y0 - y2) / den
    return t, float(rs[k]), peaks


def _bounds(params, x0, config):
    """Parameter bounds; the thickness stays within the window around the given start thickness
    (or, without one, around the current value)."""
    centre = config.thickness_nm if config.thickness_nm is not None else x0[-1]
    lo = np.concatenate([params.lower, [max(1.0, min(x0[-1], centre) - config.thickness_window_nm)]])
    hi = np.concatenate([params.upper, [max(x0[-1], centre) + config.thickness_window_nm]])
    return lo, hi


def _overall_b_map(kinds, x0, scale, zlo, zhi, z):
    """The one-overall-B reduction of the polish variables around ``z``, or None when fewer than
    two B are free.

    Returns ``(M, z_base, bounds)``: the scaled variables become ``z_base + M y``, where
    ``z_base`` is ``z`` with every free B moved to the mean of those B (``x = x0 + z · scale``),
    the last component of ``y`` moves all of them together and the others move one variable each;
    ``bounds`` are y's bounds.
    """
    zlo, zhi, z = np.asarray(zlo), np.asarray(zhi), np.asarray(z)
    free = zlo < zhi
    b = [i for i, k in enumerate(kinds) if k == "b" and free[i]]
    if len(b) < 2:
        return None
    x_b = x0[b] + z[b] * scale[b]
    z_base = z.copy()
    z_base[b] = (np.mean(x_b) - x0[b]) / scale[b]
    others = [i for i in range(len(kinds)) if i not in b]
    M = np.zeros((len(kinds), len(others) + 1))
    M[others, np.arange(len(others))] = 1.0
    M[b, -1] = 1.0
    lo, hi = zlo - z_base, zhi - z_base
    bounds = [(lo[i], hi[i]) for i in others] + [(max(lo[b]), min(hi[b]))]
    return M, z_base, bounds


def _level_data(pattern, mask, half_width, level, size):
    """The measured pattern and mask on a ``level``×``level`` grid of the same tilt range."""
    if level == size:
        return pattern, mask
    meas = resample_pattern(pattern, half_width, level, half_width)
    lmask = None if mask is None else resample_pattern(mask.astype(float), half_width, level, half_width) > 0.5
    return meas, lmask


def _thickness_starts(t_now: float, peaks: list[float], config) -> list[float]:
    """Thicknesses [nm] to try first: the current one, the other peaks of the scan and the given
    start, at least 5 nm apart."""
    out = [t_now]
    for t in list(peaks) + ([config.thickness_nm] if config.thickness_nm is not None else []):
        if all(abs(t - u) >= 5.0 for u in out):
            out.append(float(t))
    return out


def _log_minimise(stages, say, name, res, t1, verdict=""):
    nit = getattr(res, "nit", 0)  # scipy leaves it out when no variable is free
    note = f"{nit} iterations, {res.nfev} evaluations; {res.message}" + (f"; {verdict}" if verdict else "")
    stages.append(StageLog(name, float(res.fun), time.perf_counter() - t1, note))
    say(f"{name}: 1-r = {res.fun:.6f} ({nit} it){'; ' + verdict if verdict else ''}")


def _hessian(problem, z_opt, x0, eps=1e-3):
    n = len(z_opt)
    _, g0 = problem.fom_and_grad(z_opt, x0)
    H = np.zeros((n, n))
    for i in range(n):
        dz = np.zeros(n)
        dz[i] = eps
        _, g1 = problem.fom_and_grad(z_opt + dz, x0)
        H[:, i] = (g1 - g0) / eps
    return 0.5 * (H + H.T)


def refine(
    crystal: Crystal,
    pattern: np.ndarray,
    settings: SimulationSettings,
    *,
    config: FitConfig = FitConfig(),
    pattern_half_width: float | None = None,
    mask: np.ndarray | None = None,
    progress=None,
    models=None,
) -> RefinementResult:
    """Refine ``crystal`` against a measured bright-field ``pattern``.

    Parameters
    ----------
    crystal : Crystal
        Starting structure.
    pattern : ndarray, shape (H, W)
        Measured pattern, any units; resampled onto the simulation grid if its shape differs.
    settings : SimulationSettings
        Simulation settings (voltage, size, half-width, beams); its thicknesses are ignored.
    config : FitConfig
    pattern_half_width : float, optional
        Tilt half-width of ``pattern`` [Å⁻¹]; default: the simulation's.
    mask : ndarray of bool, shape (H, W), optional
        Pixels to use (True), on the measured pattern's grid.
    progress : callable, optional
        Called with a short message at each stage.
    models : refine_surrogate.SurrogateModels, optional
        Loaded surrogates (saves loading them for every sample of a batch); default: those of
        ``config`` (files, else the shipped weights).

    Returns
    -------
    RefinementResult
    """
    pattern = check_pattern(pattern)
    # the figure of merit is a correlation, blind to scale and offset: standardise the measurement
    # so that any finite range (1e-300 … 1e300) gives the same, finite numbers downstream
    pattern = pattern / np.abs(pattern).max()
    pattern = (pattern - pattern.mean()) / pattern.std()
    size = settings.size
    if pattern.shape != (size, size) or pattern_half_width not in (None, settings.half_width):
        hw = settings.half_width if pattern_half_width is None else pattern_half_width
        pattern = resample_pattern(pattern, hw, size, settings.half_width)
        if mask is not None:
            mask = resample_pattern(mask.astype(float), hw, size, settings.half_width) > 0.5
    if mask is not None:
        check_mask(mask, pattern)
    kinds = tuple(k for k in config.refine if k != "thickness")
    params = free_parameters(crystal, refine=kinds, fix=config.fix)
    say = progress or (lambda msg: log.info(msg))
    if kinds and not len(params):
        say(f"note: --refine {','.join(config.refine)} frees no parameter of {crystal.name} "
            f"(fixed sites or no free coordinates); only the thickness can move")
    model_notes: list[str] = []
    if models is None and (config.seed or config.surrogate):
        from . import refine_surrogate as rs

        # a bad model file is found here, before the thickness scan, not after it
        models, model_notes = rs.load_models(config.forward_model if config.surrogate else None,
                                             config.inverse_model if config.seed else None, device=config.device)
    centring = crystal.spacegroup_symbol[0]
    problem = _Problem(crystal, settings, params, pattern, mask, config, centring)
    stages: list[StageLog] = []

    x = np.concatenate([problem.theta0.numpy(), [config.thickness_nm or 100.0]])
    # 1. thickness scan
    t0 = time.perf_counter()
    t_peaks: list[float] = []
    if config.thickness_nm is None or "thickness" in config.refine:
        t_scan, r_scan, t_peaks = _thickness_scan(problem, x, config, around=config.thickness_nm)
        if "thickness" in config.refine or config.thickness_nm is None:
            x[-1] = t_scan
        stages.append(StageLog("thickness scan", 1 - r_scan, time.perf_counter() - t0, f"best {t_scan:.1f} nm"))
        say(f"thickness scan: {t_scan:.1f} nm, 1-r = {1 - r_scan:.5f}")
    t_start = float(x[-1])
    # 2-3. surrogate stages
    # one torch thread, as for the engine's solves (runtime.py): the surrogates' batch-1 passes are
    # latency-bound, and with two threads on a busy machine a 3×3 convolution's forward and backward
    # took 97 ms instead of 1 ms (the spinel example's surrogate search: 361 s against 9.6 s)
    with single_thread():
        x, model_info = _surrogate_stages(problem, params, x, pattern, mask, config, models, stages, say, model_notes)
    # 4. Bloch polish: thickness candidates, half-resolution grid, then full grid, B restart
    if config.polish and (len(params) or "thickness" in config.refine):
        x, sigma = _bloch_polish(problem, params, x, pattern, mask, settings, config, t_peaks, stages, say)
    else:
        # no polish, so no curvature: the uncertainties are unknown, not zero
        why = "switched off" if not config.polish else "nothing free to refine"
        stages.append(StageLog("Bloch polish", None, 0.0, why))
        say(f"Bloch polish: {why}; no uncertainties")
        sigma = np.full(len(x), np.nan)
    # 5. final check
    t1 = time.perf_counter()
    theta = torch.as_tensor(x[:-1])
    refined_crystal = params.to_crystal(theta)
    check_error = None
    if config.check == "bloch":
        with torch.no_grad():
            sim = problem.simulate(theta, torch.tensor(x[-1]), dtype=torch.float64)[0]
    else:
        from .simulators import get_simulator

        try:
            stack = get_simulator(config.check).simulate(refined_crystal, replace(settings, thicknesses=(x[-1] * NM,)))
            sim = torch.as_tensor(np.asarray(stack)[0, 0], dtype=torch.float64)
            if not torch.isfinite(sim).all():
                raise FloatingPointError(f"{config.check} returned non-finite intensities")
        except Exception as exc:  # a plugin's failure, whatever its type: keep the refinement
            # the refined structure is still good; check it with the built-in engine instead and
            # report the failure rather than lose the whole refinement
            check_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            say(f"final check ({config.check}) failed: {check_error}; checking with the built-in engine")
            with torch.no_grad():
                sim = problem.simulate(theta, torch.tensor(x[-1]), dtype=torch.float64)[0]
    sim = _blur(sim.to(torch.float64), config.blur_sigma)
    r = float(masked_pearson_r(sim, problem.meas, problem.mask))
    checked_with = config.check if check_error is None else "bloch"
    stages.append(StageLog(f"final check ({checked_with})", 1 - r, time.perf_counter() - t1,
                           "" if check_error is None else f"{config.check} failed: {check_error}"))
    say(f"final check ({checked_with}): r = {r:.6f}")
    return RefinementResult(
        crystal_start=crystal,
        crystal=refined_crystal,
        names=list(params.names),
        start=[float(v) for v in problem.theta0],
        refined=[float(v) for v in x[:-1]],
        sigma=[float(v) for v in sigma[:-1]],
        thickness_start_nm=t_start,
        thickness_nm=float(x[-1]),
        thickness_sigma_nm=float(sigma[-1]),
        r=r,
        stages=stages,
        measured=pattern,
        simulated=sim.numpy(),
        settings=settings,
        config=config,
        extra={"surrogates": model_info, **({"check_failed": check_error} if check_error else {})},
    )


def _bloch_polish(problem, params, x, pattern, mask, settings, config, t_peaks, stages, say):
    """The Bloch polish (stage 4) from parameters ``x`` = [θ, thickness_nm]: a short polish from
    each candidate thickness, L-BFGS-B with exact gradients on a half-resolution grid then the full
    one, the one-overall-B restart, and the uncertainties from the finite-difference Hessian.
    Returns the refined parameters and their σ (same order and units)."""
    from scipy.optimize import minimize

    size = settings.size
    lo, hi = _bounds(params, x, config)
    x0 = x.copy()
    zlo, zhi = (lo - x0) / problem.scale, (hi - x0) / problem.scale
    if "thickness" not in config.refine:
        zlo[-1] = zhi[-1] = 0.0
    z = np.zeros_like(x0)
    levels = [size // 2, size] if size > 64 else [size]
    options = {"maxiter": config.max_iter, "ftol": 1e-12, "gtol": 1e-9, "maxls": 10}  # float32 noise ends line searches; fail those fast
    bounds = list(zip(zlo, zhi))
    starts = _thickness_starts(x0[-1], t_peaks, config) if "thickness" in config.refine else []
    if len(starts) > 1:
        # a poor start can put the best of the thickness scan on a false peak (CoAs₃ in
        # benchmarks/refine_truth.py): give each candidate a short polish, go on with the best
        t1 = time.perf_counter()
        level = levels[0]
        problem.set_grid(level, *_level_data(pattern, mask, settings.half_width, level, size))
        tried = []
        for t_c in starts:
            zc = z.copy()
            zc[-1] = np.clip((t_c - x0[-1]) / problem.scale[-1], zlo[-1], zhi[-1])
            rc = minimize(problem.fom_and_grad, zc, args=(x0,), jac=True, method="L-BFGS-B", bounds=bounds,
                          options={**options, "maxiter": config.screen_iter})
            tried.append((float(rc.fun), t_c, rc.x))
        best = min(tried, key=lambda c: c[0])
        z = best[2]
        note = ", ".join(f"{t_c:.1f} nm: {f:.5f}" for f, t_c, _ in tried)
        stages.append(StageLog("thickness starts", best[0], time.perf_counter() - t1,
                               f"{config.screen_iter} iterations from each ({note}); best {best[1]:.1f} nm"))
        say(f"thickness starts: {note}; going on from {best[1]:.1f} nm")
    for level in levels:
        t1 = time.perf_counter()
        problem.set_grid(level, *_level_data(pattern, mask, settings.half_width, level, size))
        res = minimize(problem.fom_and_grad, z, args=(x0,), jac=True, method="L-BFGS-B", bounds=bounds, options=options)
        z = res.x
        _log_minimise(stages, say, f"Bloch polish {level}x{level}", res, t1)
    tie = _overall_b_map(problem.kinds, x0, problem.scale, zlo, zhi, z) if config.b_restart else None
    if tie is not None:
        # B of different sites can trade against each other into a false minimum (SrTiO₃'s Sr/Ti
        # in benchmarks/refine_truth.py): restart from one overall B, then free them again, and
        # keep whichever optimum fits better
        t1 = time.perf_counter()
        M, z_base, y_bounds = tie

        def reduced(y):
            f, g = problem.fom_and_grad(z_base + M @ y, x0)
            return f, M.T @ g

        res_b = minimize(reduced, np.zeros(M.shape[1]), jac=True, method="L-BFGS-B", bounds=y_bounds, options=options)
        _log_minimise(stages, say, f"B restart {size}x{size}: one overall B", res_b, t1)
        t1 = time.perf_counter()
        res2 = minimize(problem.fom_and_grad, z_base + M @ res_b.x, args=(x0,), jac=True, method="L-BFGS-B",
                        bounds=bounds, options=options)
        kept = res2.fun < res.fun
        _log_minimise(stages, say, f"B restart {size}x{size}: every B", res2, t1,
                      "kept" if kept else "rejected: the first optimum fits better")
        if kept:
            z = res2.x
    x = x0 + z * problem.scale
    problem.set_grid(size, pattern, mask)
    t1 = time.perf_counter()
    try:
        H = _hessian(problem, z, x0)
        free = np.array([zl < zh for zl, zh in zip(zlo, zhi)])
        cov = np.zeros_like(H)
        w, v = np.linalg.eigh(H[np.ix_(free, free)])
        # directions of zero or negative curvature (noise, bounds) are unconstrained: give them
        # the largest variance the positive curvature allows rather than a negative one
        w = np.clip(w, max(w.max(), 0.0) * 1e-9 + 1e-300, None)
        cov[np.ix_(free, free)] = 2 * config.fom_noise * (v / w) @ v.T
        sigma = np.sqrt(np.clip(np.diag(cov), 0, None)) * problem.scale
    except np.linalg.LinAlgError:
        sigma = np.full(len(x), np.nan)
    stages.append(StageLog("uncertainties", None, time.perf_counter() - t1, "finite-difference Hessian"))
    return x, sigma


def _bloch_fom(problem, x: np.ndarray) -> float:
    """1 − r of the Bloch simulation at parameters ``x`` on the problem's current grid."""
    with torch.no_grad():
        sim = problem.simulate(torch.as_tensor(x[:-1]), torch.tensor(float(x[-1])))[0].to(torch.float64)
    return 1.0 - float(masked_pearson_r(_blur(sim, problem.config.blur_sigma), problem.meas, problem.mask))


def _surrogate_stages(problem, params, x, pattern, mask, config, models, stages, say, notes=()):
    """Seed from the inverse generator, then the surrogate search; each result is kept only when
    the Bloch engine finds it fits better than the stage's starting point. Returns the new
    parameters and a description of the models used (for the report)."""
    from . import refine_surrogate as rs

    wanted = {"inverse-generator seed": config.seed, "surrogate search": config.surrogate}
    info: dict = {}
    if not any(wanted.values()):
        for name in wanted:
            stages.append(StageLog(name, None, 0.0, "switched off"))
        return x, info
    notes = list(notes)
    if models is None:
        models, notes = rs.load_models(config.forward_model if config.surrogate else None,
                                       config.inverse_model if config.seed else None, device=config.device)
    for direction in ("forward", "inverse"):
        model = getattr(models, direction)
        if model is not None:
            card = (model.info or {}).get("card") or {}
            info[direction] = {"source": getattr(models, f"{direction}_source"), "step": model.info.get("step"),
                               "version": model.info.get("version"), "data_sha256": card.get("data_sha256")}
    crystal = params.crystal
    lo, hi = _bounds(params, x, config)
    bloch_f = _bloch_fom(problem, x)
    for name, direction in (("inverse-generator seed", "inverse"), ("surrogate search", "forward")):
        model = getattr(models, direction)
        if not wanted[name]:
            stages.append(StageLog(name, None, 0.0, "switched off"))
            continue
        if model is None:
            stages.append(StageLog(name, None, 0.0, "skipped: " + next(n for n in notes if direction in n)))
            continue
        if direction == "inverse" and not len(params):
            stages.append(StageLog(name, None, 0.0, "skipped: no structural parameter is free"))
            continue
        t1 = time.perf_counter()
        n = model.image_size
        meas = rs.to_surrogate_grid(pattern, problem.settings.half_width, crystal.a, n)
        covered = rs.surrogate_coverage(problem.settings.half_width, crystal.a, n)
        bounds = list(zip((lo - x) / problem.scale, (hi - x) / problem.scale))
        if direction == "inverse":
            if covered.mean() < 0.9:
                stages.append(StageLog(name, None, 0.0, f"skipped: the pattern covers {100 * covered.mean():.0f} % of the "
                                                        "generator's tilt range (it needs the whole pattern)"))
                continue
            x_new, f_sur, note = rs.seed_from_inverse(model, params, x, problem.scale, bounds, meas)
        else:
            smask = covered if mask is None else covered & (rs.to_surrogate_grid(
                mask.astype(float), problem.settings.half_width, crystal.a, n) > 0.5)
            x_new, f_sur, note = rs.surrogate_search(
                model, params, x, problem.scale, bounds, meas, smask, refine_thickness="thickness" in config.refine,
                # σ is given in simulation pixels; the surrogate grid has pixels of another size
                blur=lambda img: _blur(img, config.blur_sigma * (problem.settings.half_width / problem.settings.size)
                                       / (rs.surrogate_half_width(crystal.a) / n)),
                restarts=config.surrogate_restarts)
        f_new = _bloch_fom(problem, x_new)
        kept = f_new < bloch_f
        if kept:
            x, bloch_f = x_new, f_new
        verdict = "kept" if kept else "rejected"
        stages.append(StageLog(name, bloch_f, time.perf_counter() - t1,
                               f"{note}; Bloch 1-r {f_new:.5f}: {verdict}"))
        say(f"{name}: {note}; Bloch 1-r {f_new:.5f} ({verdict})")
    return x, info


def _fit_figure(result: RefinementResult, path: Path) -> None:
    """measured | simulated | difference, and the projected potential before/after (paper Fig. 6)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .potential import projected_potential

    def norm(img):
        img = np.asarray(img, dtype=float)
        return (img - img.mean()) / (img.std() or 1.0)

    meas, sim = norm(result.measured), norm(result.simulated)
    with torch.no_grad():
        centring = result.crystal.spacegroup_symbol[0]
        before = projected_potential(result.crystal_start.atoms(), result.crystal_start.a, centring=centring).numpy()
        after = projected_potential(result.crystal.atoms(), result.crystal.a, centring=centring).numpy()
    fig, axes = plt.subplots(1, 5, figsize=(15, 3.4))
    panels = [
        (meas, "measured", "gray"),
        (sim, f"simulated (r = {result.r:.4f})", "gray"),
        (sim - meas, "difference", "RdBu_r"),
        (before, "potential, start", "viridis"),
        (after, "potential, refined", "viridis"),
    ]
    for ax, (img, title, cmap) in zip(axes, panels):
        if cmap == "RdBu_r":
            v = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap=cmap, vmin=-v, vmax=v)
        else:
            ax.imshow(img, cmap=cmap)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        f"{result.crystal.name}  t = {result.thickness_nm:.1f} ± {result.thickness_sigma_nm:.2f} nm", fontsize=10
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


#: Beam pool used by ``fit`` unless the user sets one: the paper preset's per-pixel cut is not
#: converged (see the engine benchmarks), so refinement uses a whole pool at every pixel.
FIT_DEFAULT_BEAMS = 61


def fit_files(
    cif,
    pattern_path,
    out_dir,
    *,
    config: FitConfig = FitConfig(),
    pattern_half_width: float | None = None,
    mask_path=None,
    kv: float | None = None,
    size: int | None = None,
    half_width: float | None = None,
    n_beams: int | None = None,
    g_limit: float | None = None,
    progress=None,
    felix_seed: str | None = None,
    overwrite: bool = False,
    extra: dict | None = None,
) -> tuple[RefinementResult, dict]:
    """Read a CIF and a measured pattern, refine, and write the outputs into ``out_dir``.

    The simulation grid defaults to the paper preset's geometry (200 kV, 128×128, half-width
    7.266/a Å⁻¹) with a whole pool of :data:`FIT_DEFAULT_BEAMS` beams used at every pixel.
    ``felix_seed`` (FELIX refinement letters, e.g. "BD", or "auto" for the plugin's default adapted
    to the crystal) also writes ``out_dir/felix/``, a FELIX
    refinement set seeded from the result (needs the FELIX plugin). The output folder, the check
    simulator and every input are checked before any work; an existing result in ``out_dir`` is
    replaced only with ``overwrite``. Returns the result and the written paths.
    """
    from .crystal import read_cif
    from .patterns import check_writable_folder, read_mask, read_pattern
    from .simulation import settings_for

    # everything that can be wrong with the inputs and outputs is found before the work starts
    out = Path(out_dir)
    existing = [n for n in ("refined.cif", "report.json", "fit.png") if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"-o {out}: holds a result already ({', '.join(existing)}); pass --overwrite to replace it")
    check_simulator(config.check)
    felix_seed_asked = bool(felix_seed)
    if felix_seed:
        from .simulators import PluginError, get_simulator

        try:  # writing a FELIX set needs the plugin, not FELIX itself
            felix = get_simulator("felix")
        except PluginError as exc:
            raise ValueError(f"--felix-seed: {exc}") from None
    crystal = read_cif(cif)
    if felix_seed_asked:
        if felix_seed == "auto":  # the plugin's default letters, adapted to the crystal
            felix_seed = None
        if hasattr(felix, "check_refinement"):
            felix.check_refinement(crystal, felix_seed)  # letters FELIX cannot refine for this crystal
    pattern = read_pattern(pattern_path)
    mask = None
    if mask_path is not None:
        mask = check_mask(read_mask(mask_path), pattern, name=f"--mask {mask_path}")
    if n_beams is None and g_limit is None:
        n_beams = FIT_DEFAULT_BEAMS
    if half_width is None:  # simulate the tilt range that was measured
        half_width = pattern_half_width
    settings = settings_for(crystal, kv=kv, size=size if size is not None else pattern.shape[0] if pattern.shape[0] == pattern.shape[1] and pattern.shape[0] % 2 == 0 else None,
                            half_width=half_width, n_beams=n_beams, g_limit=g_limit)
    if felix_seed_asked and hasattr(felix, "check_settings"):
        felix.check_settings(crystal, replace(settings, thicknesses=(100.0 * NM,)))  # FELIX's own limits
    created = not out.exists()
    check_writable_folder(out, option="-o")  # last of the checks: it creates the folder
    try:
        result = refine(crystal, pattern, settings, config=config, pattern_half_width=pattern_half_width, mask=mask,
                        progress=progress)
    except BaseException:
        # a refinement that failed leaves no empty folder behind (a killed one may)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    result.extra["inputs"] = {"cif": str(cif), "pattern": str(pattern_path), "mask": None if mask_path is None else str(mask_path)}
    result.extra.update(extra or {})
    paths = result.write(out_dir)
    if felix_seed_asked:
        paths["felix"] = seed_felix(result, Path(out_dir) / "felix", refine=felix_seed)
    return result, paths


def check_simulator(name: str, *, option: str = "--check") -> None:
    """Check that simulator ``name`` is installed and ready to run (before a long refinement)."""
    from .simulators import PluginError, get_simulator

    if name == "bloch":
        return
    try:
        ok, why = get_simulator(name).available()
    except PluginError as exc:
        raise ValueError(f"{option} {name!r}: {exc}") from None
    if not ok:
        raise ValueError(f"{option} {name!r}: not ready ({why})")


def seed_felix(result: RefinementResult, out_dir, *, refine: str | None = None) -> Path:
    """Write FELIX inputs (and the measured image) that start a FELIX refinement from ``result``,
    through the FELIX plugin (``pip install -e plugins/felix``)."""
    from .simulators import PluginError, get_simulator

    sim = get_simulator("felix")
    if not hasattr(sim, "export_refinement"):
        raise PluginError("felix", "this version of the plugin cannot write refinement sets")
    # the plugin adapts the letters to what FELIX can refine for the crystal (it moves atoms, mode
    # B, only in F-43m among the cubic groups: felix-spec §5) and refuses what it cannot do
    letters = sim.check_refinement(result.crystal, refine) if hasattr(sim, "check_refinement") else (refine or "BD")
    sim.export_refinement(result.crystal, result.measured, out_dir, refine=letters,
                          settings=replace(result.settings, thicknesses=(result.thickness_nm * NM,)))
    return Path(out_dir)
