"""The figure of merit of a fit: ``1 − r`` between the (blurred) simulated and measured patterns over
the masked pixels, as a function of the optimiser's scaled variables, with exact gradients through the
Bloch engine.

The optimiser's vector is ``x = [θ, thickness_nm]`` (θ: free parameters in Å, Å², fractions; see
:mod:`lacbed_refine.structure.parameters`), scaled by :data:`_SCALE` so that its components are of
order one.
"""

from __future__ import annotations
import logging
import math
from dataclasses import replace
import numpy as np
import torch
from lacbed_refine.engine.bloch import simulate_lacbed
from lacbed_refine.conventions import NM
from lacbed_refine.metrics import masked_pearson_r
from lacbed_refine.io.images import resample_pattern
from lacbed_refine.runtime import available_cpus

log = logging.getLogger(__name__)


#: Typical size of each kind of parameter, used to scale the optimiser's variables.
_SCALE = {"xyz": 0.05, "b": 0.5, "occ": 0.2, "thickness": 10.0}


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
        # float32 by default (twice as fast); the polish switches to float64 when float32's noise
        # ends its line searches before the optimum (Ba₂MgUO₆ at 249 nm in benchmarks/hard_starts.py)
        self.dtype = torch.float32
        self.set_grid(settings.size, measured, mask)

        # cubic [001] has the fast engine; anything else the general one (exact excitation errors,
        # HOLZ, surface normal, Bird–King), with the pool and zone fixed once for the whole fit
        self.general = not (crystal.is_cubic and settings.standard_001)
        if self.general:
            from lacbed_refine.simulators.bloch import zone_axis, zone_beams

            self.pool = zone_beams(crystal, replace(settings, reflections=((0, 0, 0),)))
            self.zone = zone_axis(crystal, settings)

    def set_grid(self, size, measured, mask):
        self.size = size
        self.meas = torch.as_tensor(measured, dtype=torch.float64)
        self.mask = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        self.grid_settings = replace(self.settings, size=size)

    def simulate(self, theta, t_nm, *, dtype=None):
        """Bright field at parameters ``theta`` and thickness(es) ``t_nm`` [nm] (scalar or (T,)),
        shape (T, size, size), in ``dtype`` (default :attr:`dtype`); differentiable in both. The
        fit works in nm throughout; this is the one place where thickness becomes the engine's Å."""
        dtype = self.dtype if dtype is None else dtype
        t = torch.atleast_1d(torch.as_tensor(t_nm, dtype=torch.float64) * NM)
        if self.general:
            from lacbed_refine.engine.general import simulate_zone

            s = self.grid_settings
            stack = simulate_zone(
                self.params.atoms(theta), self.crystal.cell, self.zone, self.pool, t,
                voltage=s.voltage, size=s.size, half_width=s.half_width, reflections=((0, 0, 0),),
                strong_beams=s.strong_beams, absorption=s.absorption, absorption_model=s.absorption_kind,
                mean_absorption=s.mean_absorption, form_factors=s.form_factors, dtype=dtype,
                # θ keeps the space group, so the pattern symmetry found from the U_g holds along
                # every path the optimiser takes: the wedge stays exact, gradients included
                use_symmetry=True, workers=self.threads,
            )
            return stack[:, 0]
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


def _normalised(img: torch.Tensor, mask) -> torch.Tensor:
    """The masked pixels of ``img`` (float64), mean removed and scaled to unit norm: for two such
    vectors, 1 − r = ½ ‖a − b‖²."""
    v = img.to(torch.float64)
    v = v[mask] if mask is not None else v.reshape(-1)
    v = v - v.mean()
    return v / torch.linalg.norm(v).clamp_min(1e-300)


def _levenberg_marquardt(problem, z, x0, zlo, zhi, *, max_iter: int = 10, h: float = 1e-3):
    """Levenberg–Marquardt on 1 − r = ½ ‖ŝ(z) − m̂‖² (:func:`_normalised`) in the scaled variables,
    float64, within the bounds; the Jacobian by forward differences of step ``h`` (scaled units): one
    engine call per free structural variable, the thickness column from the same decomposition as
    the base. Where L-BFGS-B crawls along a narrow valley, the Gauss–Newton model of the curvature
    steps across it (off by default: on the 8 hard starts of ``benchmarks/hard_starts.py`` the
    L-BFGS-B polish had already reached the bottom).

    Returns (z, 1 − r, iterations, engine calls)."""
    free = np.asarray(zlo) < np.asarray(zhi)
    m = _normalised(problem.meas, problem.mask)
    calls = 0

    def patterns(z, with_t):
        nonlocal calls
        x = x0 + z * problem.scale
        ts = [x[-1], x[-1] + h * problem.scale[-1]] if with_t else [x[-1]]
        calls += 1
        with torch.no_grad():
            sims = problem.simulate(torch.as_tensor(x[:-1]), torch.tensor(ts), dtype=torch.float64)
        return [_normalised(_blur(s.to(torch.float64), problem.config.blur_sigma), problem.mask) for s in sims]

    s, s_t = patterns(z, True)
    f = 0.5 * float(((s - m) ** 2).sum())
    lam, it = 1e-3, 0
    for it in range(1, max_iter + 1):
        cols = []
        for i in np.nonzero(free)[0]:
            if i == len(z) - 1:
                cols.append((s_t - s) / h)
                continue
            zi = z.copy()
            zi[i] += h
            cols.append((patterns(zi, False)[0] - s) / h)
        J = torch.stack(cols, 1).numpy()
        e = (s - m).numpy()
        A, g = J.T @ J, J.T @ e
        d = np.diag(A).copy()
        d[d <= 0] = 1.0
        moved = False
        for _ in range(6):
            step = np.zeros_like(z)
            step[free] = np.linalg.solve(A + lam * np.diag(d), -g)
            z_new = np.clip(z + step, zlo, zhi)
            s_new, s_t_new = patterns(z_new, True)
            f_new = 0.5 * float(((s_new - m) ** 2).sum())
            if f_new < f:
                moved = True
                gain = f - f_new
                z, s, s_t, f = z_new, s_new, s_t_new, f_new
                lam = max(lam / 3, 1e-7)
                break
            lam *= 10
        if not moved or gain < 1e-4 * f + 1e-9:
            break
    return z, f, it, calls


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


def _bloch_fom(problem, x: np.ndarray) -> float:
    """1 − r of the Bloch simulation at parameters ``x`` on the problem's current grid."""
    with torch.no_grad():
        sim = problem.simulate(torch.as_tensor(x[:-1]), torch.tensor(float(x[-1])))[0].to(torch.float64)
    return 1.0 - float(masked_pearson_r(_blur(sim, problem.config.blur_sigma), problem.meas, problem.mask))
