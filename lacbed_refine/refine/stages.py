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
import logging
import time
from dataclasses import replace
import numpy as np
import torch
from lacbed_refine.conventions import NM
from lacbed_refine.structure.crystal import Crystal
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.metrics import masked_pearson_r
from lacbed_refine.structure.parameters import free_parameters
from lacbed_refine.io.images import check_pattern, resample_pattern
from lacbed_refine.runtime import single_thread
from lacbed_refine.refine.config import FitConfig, check_mask
from lacbed_refine.refine.result import RefinementResult, StageLog
from lacbed_refine.refine.objective import (
    _Problem, _bloch_fom, _blur, _bounds, _hessian, _level_data, _levenberg_marquardt, _overall_b_map,
)

log = logging.getLogger(__name__)


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
        sims = problem.simulate(torch.as_tensor(x[:-1]), grid)
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


def _b_thickness_scan(problem, x, config):
    """The thickness scan at the given B and at one B for every refined site from ``config.b_scan``
    [Å²] (one decomposition each). Returns (x with the best B and thickness, its r, the B chosen or
    None for the given ones, a note)."""
    b = [i for i, k in enumerate(problem.kinds) if k == "b"]
    t, r, _ = _thickness_scan(problem, x, config, around=config.thickness_nm)
    best = (r, np.concatenate([x[:-1], [t]]), None)
    tried = [f"given: {1 - r:.4f} at {t:.1f} nm"]
    for value in config.b_scan if b else ():
        xb = x.copy()
        xb[b] = np.clip(value, problem.params.lower[b], problem.params.upper[b])
        t_b, r_b, _ = _thickness_scan(problem, xb, config, around=config.thickness_nm)
        xb[-1] = t_b
        tried.append(f"{value:g}: {1 - r_b:.4f} at {t_b:.1f} nm")
        if r_b > best[0]:
            best = (r_b, xb, value)
    return (*best, ", ".join(tried))


def _b_rescue(problem, z, x0, zlo, zhi, size, pattern, mask, config, options, stages, say):
    """After the polish: :func:`_b_thickness_scan` at the polished coordinates, and a float64 polish
    from its best (B, thickness) when that fits better than the polish's answer, kept if it ends
    better. In a thick crystal B and thickness form separate basins with barriers between them:
    Ba₂MgUO₆ at 201.5 nm, started from every B × 2, was polished to the right O but to Mg B 2.7 Å²
    and 0.6 nm thin, 1 − r 0.025 behind a barrier of 0.09 — the truth's is 0.0001. (Scanning B at
    the start instead, before the coordinates are right, misleads: a wrong structure correlates
    best with a high B's smooth pattern.) Returns (z, zlo, zhi)."""
    from scipy.optimize import minimize

    t1 = time.perf_counter()
    problem.set_grid(size, pattern, mask)
    x = x0 + z * problem.scale
    f_now = _bloch_fom(problem, x)
    r_b, xb, value, note = _b_thickness_scan(problem, x, config)
    if value is None or 1 - r_b >= f_now:
        stages.append(StageLog("B rescue", f_now, time.perf_counter() - t1, f"one B for every site: {note}; none better"))
        say("B rescue: no one-B point fits better")
        return z, zlo, zhi
    zb = np.clip((xb - x0) / problem.scale, zlo, zhi)
    zlo_b, zhi_b = zlo.copy(), zhi.copy()
    zlo_b[-1], zhi_b[-1] = _window(float(xb[-1]), x0, problem, config)
    zb[-1] = np.clip(zb[-1], zlo_b[-1], zhi_b[-1])
    dtype, problem.dtype = problem.dtype, torch.float64
    res = minimize(problem.fom_and_grad, zb, args=(x0,), jac=True, method="L-BFGS-B",
                   bounds=list(zip(zlo_b, zhi_b)), options=options)
    kept = res.fun < f_now
    problem.dtype = torch.float64 if kept else dtype
    verdict = (f"every B {value:g} Å² at {xb[-1]:.1f} nm, polished: 1-r {f_now:.5f} -> {res.fun:.5f}"
               + ("" if kept else "; rejected"))
    stages.append(StageLog("B rescue", min(float(res.fun), f_now), time.perf_counter() - t1,
                           f"one B for every site: {note}; {verdict}"))
    say(f"B rescue: {verdict}")
    return (res.x, zlo_b, zhi_b) if kept else (z, zlo, zhi)


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
    surrogate_ok = crystal.is_cubic and settings.standard_001  # what the shipped surrogates know
    if models is None and (config.seed or config.surrogate) and surrogate_ok:
        from lacbed_refine.refine import surrogate_search as rs

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
        from lacbed_refine.simulators.registry import get_simulator

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
    xyz = [i for i, k in enumerate(problem.kinds) if k == "xyz" and zlo[i] < zhi[i]]
    if config.coordinate_starts > 1 and xyz:
        # a start 0.1–0.3 Å off can sit in another basin of 1 − r (magnetite's O went to a false
        # minimum 0.07 Å from the truth): screen well-spread starts with a short polish each
        t1 = time.perf_counter()
        level = levels[0]
        problem.set_grid(level, *_level_data(pattern, mask, settings.half_width, level, size))
        z, t_bounds, note = _coordinate_starts(problem, z, x0, xyz, zlo, zhi, bounds, config,
                                               {**options, "maxiter": config.screen_iter}, screened=len(starts) > 1)
        zlo[-1], zhi[-1] = t_bounds
        bounds = list(zip(zlo, zhi))
        stages.append(StageLog("coordinate starts", note[0], time.perf_counter() - t1, note[1]))
        say(f"coordinate starts: {note[1]}")
    for level in levels:
        t1 = time.perf_counter()
        problem.set_grid(level, *_level_data(pattern, mask, settings.half_width, level, size))
        res = minimize(problem.fom_and_grad, z, args=(x0,), jac=True, method="L-BFGS-B", bounds=bounds, options=options)
        z = res.x
        _log_minimise(stages, say, f"Bloch polish {level}x{level}", res, t1)
        if level == size and "ABNORMAL" in str(res.message) and problem.dtype != torch.float64:
            # float32's noise ended the line search, which can be far from the optimum (a thick
            # Ba₂MgUO₆ stopped at 1 − r 0.028 for a truth at 0.0001, O 0.11 Å off; in float64 the
            # same polish found O): go on in float64, as the rest of the polish does
            t1 = time.perf_counter()
            problem.dtype = torch.float64
            res64 = minimize(problem.fom_and_grad, z, args=(x0,), jac=True, method="L-BFGS-B", bounds=bounds,
                             options=options)
            kept = res64.fun <= res.fun
            _log_minimise(stages, say, f"Bloch polish {level}x{level} (float64)", res64, t1,
                          "kept" if kept else "rejected: float32's optimum fits better")
            if kept:
                res, z = res64, res64.x
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
    if config.b_scan and "thickness" in config.refine and any(k == "b" for k in problem.kinds):
        z, zlo, zhi = _b_rescue(problem, z, x0, zlo, zhi, size, pattern, mask, config, options, stages, say)
    # optional Gauss–Newton curvature where L-BFGS-B may crawl along a narrow valley (off by default:
    # on the 8 hard starts it changed 1 − r by ≤ 1e-5; Ba₂MgUO₆'s stall was a false B–thickness
    # basin, which the B rescue above leaves)
    problem.set_grid(size, pattern, mask)
    if config.lm_iter > 0 and (zlo < zhi).any():
        t1 = time.perf_counter()
        f_before = _bloch_fom(problem, x0 + z * problem.scale)
        z_lm, f_lm, n_it, n_calls = _levenberg_marquardt(problem, z, x0, zlo, zhi, max_iter=config.lm_iter)
        kept = f_lm < f_before
        if kept:
            z = z_lm
        note = (f"{n_it} iterations, {n_calls} engine calls (float64): 1-r {f_before:.6f} -> {f_lm:.6f}"
                + ("" if kept else "; rejected"))
        stages.append(StageLog(f"Gauss–Newton polish {size}x{size}", min(f_lm, f_before), time.perf_counter() - t1, note))
        say(f"Gauss–Newton polish {size}x{size}: {note}")
    x = x0 + z * problem.scale
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


def _coordinate_starts(problem, z, x0, xyz, zlo, zhi, bounds, config, options, screened):
    """Engine multi-start over the free coordinates (scaled variables ``z``; ``xyz`` their indices):
    the current point and ``config.coordinate_starts − 1`` others spread by a scrambled Halton
    sequence over ± ``config.start_spread_A`` around the polish's start (``x0``), each with the
    best thickness of its own scan (when the thickness is free) and then polished for
    ``options["maxiter"]`` iterations on the current grid; while the best 1 − r stays above
    ``config.retry_fom``, another round of as many starts (up to ``config.start_rounds`` rounds);
    the best three are then polished as long again before the best is chosen. Returns the best
    point, its scaled thickness bounds and (its figure of merit, a note)."""
    from scipy.optimize import minimize
    from scipy.stats import qmc

    def short(zc, b):
        r = minimize(problem.fom_and_grad, zc, args=(x0,), jac=True, method="L-BFGS-B", bounds=b, options=options)
        return float(r.fun), r.x

    if screened:  # the thickness screening already polished the current point this long
        tried = [(float(problem.fom_and_grad(z, x0)[0]), z, bounds[-1])]
    else:
        tried = [short(z, bounds) + (bounds[-1],)]
    # Halton rather than independent draws: n starts cover the box evenly, so no region of it is
    # left out by chance; scrambled with a fixed seed, so the same fit gives the same starts
    halton = qmc.Halton(d=len(xyz), scramble=True, seed=config.start_seed)
    spread = config.start_spread_A / problem.scale[xyz]
    # the box is cut to the bounds rather than its starts clipped onto them (clipped starts coincide)
    # it is centred on the polish's start, not on where the thickness screening left the
    # coordinates: that screening, at a wrong thickness, can walk them further from the truth
    box_lo, box_hi = np.maximum(-spread, zlo[xyz]), np.minimum(spread, zhi[xyz])
    n_new, rounds = config.coordinate_starts - 1, 0
    while True:
        rounds += 1
        for row in halton.random(n_new):  # a later round continues the sequence: new, even starts
            zc = z.copy()
            zc[xyz] = box_lo + row * (box_hi - box_lo)
            b = list(bounds)
            if zlo[-1] < zhi[-1]:
                # the thickness that suits one structure is not the one that suits another (spinel with
                # O 0.25 Å off scanned best at 363 nm for a truth of 100 nm): each start gets its own
                # scan, and its own thickness window around the scan's best
                t_c, _, _ = _thickness_scan(problem, x0 + zc * problem.scale, config, around=config.thickness_nm)
                zc[-1] = (t_c - x0[-1]) / problem.scale[-1]
                if config.thickness_nm is None:  # a given start thickness keeps its window
                    b[-1] = _window(t_c, x0, problem, config)
                zc[-1] = np.clip(zc[-1], *b[-1])
            tried.append(short(zc, b) + (b[-1],))
        # a best 1 − r this poor is no minimum worth polishing (a thick Ag₃AuSe₂ stayed at 0.39
        # after 8 starts): spend another round of starts before giving up on finding a better one
        if min(c[0] for c in tried) <= config.retry_fom or rounds >= config.start_rounds:
            break
        n_new = config.coordinate_starts
    # a short polish ranks the basins only roughly (spinel, O 0.25 Å off: the true basin's start was
    # third after 8 iterations, behind two at the displacement bound): the best three go on longer
    # before one is chosen
    first = [c[0] for c in tried]
    for k in np.argsort(first)[:3]:
        f, zk = short(tried[k][1], [*bounds[:-1], tried[k][2]])
        tried[k] = (f, zk, tried[k][2])
    k = int(np.argmin([c[0] for c in tried]))
    note = (f"{len(tried)} starts ({rounds} round{'s' * (rounds > 1)}) within ±{config.start_spread_A:g} Å, "
            f"{options['maxiter']} iterations each, the best 3 "
            f"{options['maxiter']} more: "
            f"1-r {tried[k][0]:.5f} (best, start {k}, {x0[-1] + tried[k][1][-1] * problem.scale[-1]:.1f} nm) … "
            f"{max(c[0] for c in tried):.5f}; the given start {first[0]:.5f} after the first {options['maxiter']}")
    return tried[k][1], tried[k][2], (tried[k][0], note)


def _window(t_nm, x0, problem, config):
    """The scaled thickness bounds of the window around ``t_nm`` (as :func:`_bounds` makes it)."""
    lo = max(1.0, t_nm - config.thickness_window_nm)
    return (lo - x0[-1]) / problem.scale[-1], (t_nm + config.thickness_window_nm - x0[-1]) / problem.scale[-1]


def _surrogate_stages(problem, params, x, pattern, mask, config, models, stages, say, notes=()):
    """Seed from the inverse generator, then the surrogate search; each result is kept only when
    the Bloch engine finds it fits better than the stage's starting point. Returns the new
    parameters and a description of the models used (for the report)."""
    from lacbed_refine.refine import surrogate_search as rs

    wanted = {"inverse-generator seed": config.seed, "surrogate search": config.surrogate}
    info: dict = {}
    if not any(wanted.values()):
        for name in wanted:
            stages.append(StageLog(name, None, 0.0, "switched off"))
        return x, info
    if problem.general:
        why = (f"skipped: the surrogates are cubic [001] only; {problem.crystal.name} is "
               f"{'cubic' if problem.crystal.is_cubic else problem.crystal.spacegroup_symbol} at zone "
               f"{list(problem.settings.zone)}")
        for name, on in wanted.items():
            stages.append(StageLog(name, None, 0.0, why if on else "switched off"))
        say(f"surrogate stages {why}")
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
