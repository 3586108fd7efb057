"""The microscope between a simulated LACBED stack and a measured digital-LACBED experiment,
differentiable in every one of its parameters (torch).

A simulation is a stack of discs on the engine's square tilt grid (rows ↔ k_y, columns ↔ k_x,
:func:`lacbed_refine.engine.geometry.tilt_grid`). A measured disc ``i`` is that simulation seen
through:

- **geometry** — measured pixel (row, col) with offsets ``(u, v) = (col, row) − (n − 1)/2`` [px]
  from the image centre sits at the tilt

  ``k = scale · δ · R(φ) · diag(1 + e, 1 − e) · ((u, v) − c − c_i)``  [Å⁻¹, 1/d units],

  ``δ`` the nominal pixel step (``half_width / (n/2)``, from ``felix.inp``), ``scale`` the error of
  that step (the convergence half-width), ``φ`` an in-plane rotation, ``e`` an optional x/y
  stretch, ``c`` [px] where the zone axis falls in the image (the crystal's small tilt off the zone
  axis: the centre pixel sees the tilt ``−scale · δ · R c``) and ``c_i`` [px] each disc's own
  sub-pixel registration (mean zero over discs, so that it does not trade with ``c``);
- **detector blur** — a Gaussian point-spread function of width ``blur`` [measured px];
- **a smooth background per disc** — a polynomial in (u, v) of ``order`` 0 (constant), 1 (plane) or
  2, fitted in closed form together with each disc's intensity scale: the disc's r is the Pearson
  correlation of measured and simulated after the background basis is projected out of both over
  the disc's recorded pixels (:func:`disc_correlations`).

The figure of merit of an experiment is the weighted mean over discs of ``1 − r_i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

__all__ = ["Geometry", "sample_discs", "blur_discs", "background_basis", "background_projector", "residualise", "disc_correlations", "crystal_tilt_mrad",
           "ORIENTATIONS", "orient", "BLUR_RADIUS_PX"]

#: Half-width of the blur kernel [measured px]: blur widths up to 3 px are represented exactly.
BLUR_RADIUS_PX = 9

#: The eight ways an image's axes can be laid on the engine's (k_y rows, k_x columns): name → function
#: of a (..., n, n) array. "T" transposes, "ud" flips rows, "lr" flips columns (applied in that order).
ORIENTATIONS = {
    "id": lambda a: a,
    "ud": lambda a: a[..., ::-1, :],
    "lr": lambda a: a[..., :, ::-1],
    "rot180": lambda a: a[..., ::-1, ::-1],
    "T": lambda a: np.swapaxes(a, -1, -2),
    "T,ud": lambda a: np.swapaxes(a, -1, -2)[..., ::-1, :],
    "T,lr": lambda a: np.swapaxes(a, -1, -2)[..., :, ::-1],
    "T,rot180": lambda a: np.swapaxes(a, -1, -2)[..., ::-1, ::-1],
}


def orient(images: np.ndarray, name: str) -> np.ndarray:
    """``images`` (..., n, n) laid on the engine's axes by orientation ``name`` (a copy)."""
    if name not in ORIENTATIONS:
        raise ValueError(f"orientation {name!r}: use one of {', '.join(ORIENTATIONS)}")
    return np.ascontiguousarray(ORIENTATIONS[name](np.asarray(images)))


@dataclass
class Geometry:
    """Values of the experiment model (see the module docstring).

    Attributes
    ----------
    rotation_deg : float
        In-plane rotation φ [°].
    scale : float
        Pixel-step (convergence half-width) factor, 1 = ``felix.inp``'s value.
    stretch : float
        x/y stretch e (0 = none).
    centre : ndarray, shape (2,)
        Zone-axis position (u, v) in the image [measured px].
    shifts : ndarray, shape (R, 2)
        Per-disc registration (u, v) [measured px], mean zero.
    blur_px : float
        Gaussian PSF width σ [measured px].
    """

    rotation_deg: float = 0.0
    scale: float = 1.0
    stretch: float = 0.0
    centre: np.ndarray = None
    shifts: np.ndarray = None
    blur_px: float = 1.0

    def __post_init__(self):
        self.centre = np.zeros(2) if self.centre is None else np.asarray(self.centre, dtype=float).reshape(2)
        if self.shifts is not None:
            self.shifts = np.asarray(self.shifts, dtype=float).reshape(-1, 2)

    def with_discs(self, n_discs: int) -> "Geometry":
        if self.shifts is None or len(self.shifts) != n_discs:
            self.shifts = np.zeros((n_discs, 2))
        return self


def sample_discs(
    sim: torch.Tensor,
    sim_half_width: float,
    n: int,
    step: float,
    *,
    rotation: torch.Tensor,
    scale: torch.Tensor,
    stretch: torch.Tensor,
    centre: torch.Tensor,
    shifts: torch.Tensor,
) -> torch.Tensor:
    """The simulated discs at the measured pixels (bicubic interpolation, differentiable).

    Parameters
    ----------
    sim : Tensor, shape (R, S, S)
        Simulated discs on the engine's grid of half-width ``sim_half_width`` [Å⁻¹].
    n : int
        Measured image edge [px].
    step : float
        Nominal measured pixel step δ [Å⁻¹].
    rotation : Tensor, scalar
        φ [rad].
    scale, stretch : Tensor, scalar
    centre : Tensor, shape (2,)
        [px].
    shifts : Tensor, shape (R, 2)
        [px].

    Returns
    -------
    Tensor, shape (R, n, n)
    """
    dt = sim.dtype
    u = torch.arange(n, dtype=dt) - (n - 1) / 2.0
    vv, uu = torch.meshgrid(u, u, indexing="ij")  # rows: v, columns: u
    pu = uu[None] - centre[0] - shifts[:, 0, None, None]
    pv = vv[None] - centre[1] - shifts[:, 1, None, None]
    pu = pu * (1.0 + stretch)
    pv = pv * (1.0 - stretch)
    c, s = torch.cos(rotation), torch.sin(rotation)
    f = scale * step / sim_half_width  # measured px → grid_sample's normalised coordinates
    gx = f * (c * pu - s * pv)
    gy = f * (s * pu + c * pv)
    grid = torch.stack([gx, gy], dim=-1).to(dt)
    out = F.grid_sample(sim[:, None], grid, mode="bicubic", padding_mode="border", align_corners=False)
    return out[:, 0]


def blur_discs(images: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of width ``sigma_px`` [px] (≥ 0.05) of a stack (R, n, n), as two matrix products
    with the 1-D kernel matrix (each row normalised, so that the image edge loses no intensity)."""
    n = images.shape[-1]
    x = torch.arange(n, dtype=images.dtype)
    d = (x[:, None] - x[None, :]) / torch.clamp(sigma_px, min=0.05)
    g = torch.exp(-0.5 * d * d) * (torch.abs(x[:, None] - x[None, :]) <= BLUR_RADIUS_PX)
    g = g / g.sum(1, keepdim=True)
    return g @ images @ g.T


def background_basis(n: int, order: int, dtype=torch.float64) -> torch.Tensor:
    """Polynomial background terms over an n×n image, shape (K, n·n): 1; u, v; u², uv, v² (u, v in
    [−1, 1]) up to ``order`` (0, 1 or 2)."""
    if order not in (0, 1, 2):
        raise ValueError(f"--background-order {order!r}: use 0 (constant), 1 (plane) or 2 (quadratic)")
    t = torch.linspace(-1.0, 1.0, n, dtype=dtype)
    v, u = torch.meshgrid(t, t, indexing="ij")
    terms = [torch.ones_like(u)]
    if order >= 1:
        terms += [u, v]
    if order >= 2:
        terms += [u * u, u * v, v * v]
    return torch.stack([t_.reshape(-1) for t_ in terms])


def background_projector(weights: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """Orthonormal background basis of each disc over its recorded pixels, shape (R, N, K): the
    columns of the QR factor of ``weights`` (R, N) × ``basis`` (K, N)."""
    wb = weights[:, :, None] * basis.T[None]  # (R, N, K)
    q, r = torch.linalg.qr(wb)
    # a term that vanishes on a disc's recorded pixels (e.g. a disc with too few) contributes nothing
    ok = (torch.abs(torch.diagonal(r, dim1=-2, dim2=-1)) > 1e-9)[:, None, :]
    return q * ok


def residualise(images: torch.Tensor, weights: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``images`` (R, N) minus their least-squares background over the recorded pixels, zero
    elsewhere; ``q`` from :func:`background_projector` with the same ``weights`` (R, N)."""
    a = images * weights
    return a - torch.einsum("rnk,rk->rn", q, torch.einsum("rnk,rn->rk", q, a))


def disc_correlations(model: torch.Tensor, measured_res: torch.Tensor, weights: torch.Tensor,
                      q: torch.Tensor) -> torch.Tensor:
    """Pearson r of each disc after the background is projected out, shape (R,).

    Parameters
    ----------
    model : Tensor, shape (R, n, n)
        Simulated discs at the measured pixels (blurred).
    measured_res : Tensor, shape (R, n·n)
        Measured discs already passed through :func:`residualise` with the same weights and ``q``.
    weights : Tensor, shape (R, n·n)
        1 on recorded pixels, 0 elsewhere.
    q : Tensor, shape (R, n·n, K)
        :func:`background_projector`.
    """
    a = residualise(model.reshape(len(model), -1), weights, q)
    num = (a * measured_res).sum(-1)
    den = torch.sqrt((a * a).sum(-1) * (measured_res * measured_res).sum(-1))
    return num / den.clamp_min(1e-300)


def residual_correlation_area(model: torch.Tensor, measured_res: torch.Tensor, weights: torch.Tensor,
                              q: torch.Tensor) -> tuple[float, float]:
    """How many pixels a misfit spans: the area [px²] under the 2-D autocorrelation of the residuals
    of every disc, and the radius [px] it was summed to.

    The residual of disc i is measured − simulated after each is background-projected (``q``, as in
    :func:`disc_correlations`) and scaled to unit mean square over its recorded pixels. Its
    autocorrelation ρ(Δ) is pooled over discs, normalised by the number of recorded pixel pairs at
    each lag Δ, and summed over the lags inside the first zero of its radial mean (a sample
    autocorrelation summed over *all* lags is zero by construction). White residuals give ~1;
    residuals with a correlation length ℓ give ~ the area they span (4π s² for white noise blurred by
    a Gaussian of width s). Least squares that assume independent pixels understate σ² by about this
    factor when the model's derivatives are smooth on that scale.

    Parameters: as :func:`disc_correlations` — ``model`` (R, n, n), ``measured_res``, ``weights``
    (R, n·n), ``q`` (R, n·n, K).
    """
    R, n = model.shape[0], model.shape[-1]
    a = residualise(model.reshape(R, -1).to(torch.float64), weights, q)
    m = measured_res.to(torch.float64)
    cnt = weights.sum(-1).clamp_min(1.0)
    a = a / torch.sqrt((a * a).sum(-1) / cnt).clamp_min(1e-300)[:, None]
    m = m / torch.sqrt((m * m).sum(-1) / cnt).clamp_min(1e-300)[:, None]
    e = ((m - a) * weights).reshape(R, n, n)
    w = weights.reshape(R, n, n).to(torch.float64)
    size = (2 * n, 2 * n)  # zero-padded: no wrap-around

    def acf(x):
        f = torch.fft.rfft2(x, s=size)
        return torch.fft.irfft2(f * f.conj(), s=size).sum(0)  # (2n, 2n), lag (0, 0) at [0, 0]

    pairs = acf(w)
    rho = acf(e) / pairs.clamp_min(1.0)
    rho = torch.where(pairs > 0.5 * n, rho, torch.zeros_like(rho))  # lags with too few pixel pairs say nothing
    rho = torch.fft.fftshift(rho / rho[0, 0].clamp_min(1e-300)).numpy()
    lag = np.arange(2 * n) - n
    radius = np.hypot(*np.meshgrid(lag, lag, indexing="ij"))
    ring = np.rint(radius).astype(int)
    radial = np.bincount(ring.ravel(), weights=rho.ravel()) / np.maximum(np.bincount(ring.ravel()), 1)
    below = np.nonzero(radial[1:] <= 0)[0]
    r0 = float(below[0] + 1) if len(below) else float(n // 2)
    area = float(rho[radius < r0].sum())
    return max(area, 1.0), r0


def crystal_tilt_mrad(centre_px: np.ndarray, scale: float, step: float, rotation_deg: float,
                      wavelength: float) -> tuple[float, float]:
    """Crystal tilt off the zone axis seen at the image centre, (t_x, t_y) [mrad] along the image
    x direction and y, from the zone-axis position ``centre_px`` [px]; ``step`` [Å⁻¹], ``wavelength`` [Å]."""
    phi = math.radians(rotation_deg)
    c, s = math.cos(phi), math.sin(phi)
    u, v = -np.asarray(centre_px, dtype=float)
    kx, ky = scale * step * (c * u - s * v), scale * step * (s * u + c * v)
    return 1e3 * kx * wavelength, 1e3 * ky * wavelength
