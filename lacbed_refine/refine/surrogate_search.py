"""The surrogate stages of a refinement: the inverse-generator seed and the surrogate search.

Both work on the surrogates' own grid (the paper geometry: ``image_size`` pixels over a tilt
half-width of 7.266/a Å⁻¹) and both are *guarded*: a stage's result is kept only when the Bloch
engine agrees that it fits the measured pattern better than what the stage started from, so a
surrogate that is wrong for this structure costs time but never accuracy.

- Seed: the inverse generator turns the measured pattern into a projected potential (up to its
  origin); θ is fitted so that the potential of the structure matches it, after aligning the
  generated image to the starting structure's potential over circular shifts and the square's
  operations.
- Search: L-BFGS-B over θ and the thickness, with gradients by autograd through
  θ → atoms → projected potential → forward generator, from the current point and a few random
  restarts inside the bounds; the best surrogate optimum goes to the Bloch guard.

Parameters are handled in the optimiser's scaled variables ``z = (x − x0) / scale`` with
``x = [θ, thickness_nm]``, as in :mod:`.refine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import minimize

from lacbed_refine.metrics import masked_pearson_r
from lacbed_refine.io.images import resample_pattern
from lacbed_refine.conventions import paper_half_width
from lacbed_refine.physics.potential import projected_potential

__all__ = ["SurrogateModels", "load_models", "surrogate_half_width", "surrogate_coverage", "to_surrogate_grid", "seed_from_inverse", "surrogate_search"]

@dataclass
class SurrogateModels:
    """The generators a refinement may use (either may be None) and where they came from."""

    forward: object | None
    inverse: object | None
    forward_source: str = ""
    inverse_source: str = ""


def load_models(forward_path: str | None, inverse_path: str | None, *, device: str = "cpu") -> tuple[SurrogateModels, list[str]]:
    """Load the surrogates for a refinement: the given files, else the shipped weights.

    A model given as a path must load (its error propagates: one line naming the file); a missing
    *shipped* model is not an error, it only switches its stages off. Returns the models and one
    note per model that is absent.
    """
    from lacbed_refine.surrogate import load_pretrained, load_surrogate

    models, notes = SurrogateModels(None, None), []
    for direction, path in (("forward", forward_path), ("inverse", inverse_path)):
        if path is not None:
            try:
                model, source = load_surrogate(path, device=device), str(path)
            except (ValueError, OSError) as exc:
                raise ValueError(f"--{direction}-model: {exc}") from None
        else:
            try:
                model, source = load_pretrained(direction, device=device), "shipped"
            except FileNotFoundError:
                model, source = None, ""
                notes.append(f"no {direction} surrogate (none shipped; pass --{direction}-model)")
        if model is not None and model.task.direction != direction:
            raise ValueError(f"--{direction}-model {path}: is an {model.task.direction} surrogate, not a {direction} one"
                             if model.task.direction == "inverse" else
                             f"--{direction}-model {path}: is a {model.task.direction} surrogate, not an {direction} one")
        setattr(models, direction, model)
        setattr(models, f"{direction}_source", source)
    return models, notes


def surrogate_half_width(a: float) -> float:
    """Tilt half-width [Å⁻¹] of the surrogates' grid for cell edge ``a`` [Å]."""
    return paper_half_width(a)


def to_surrogate_grid(image: np.ndarray, half_width: float, a: float, size: int) -> np.ndarray:
    """Resample a pattern (or mask, as float) from its tilt grid onto the surrogates' grid."""
    return resample_pattern(np.asarray(image, dtype=float), half_width, size, surrogate_half_width(a))


def surrogate_coverage(half_width: float, a: float, size: int) -> np.ndarray:
    """Pixels of the surrogates' grid (bool, shape (size, size)) inside a measured tilt range of
    ±``half_width`` [Å⁻¹]: outside it a resampled pattern only repeats its edge."""
    from lacbed_refine.engine.geometry import tilt_grid

    kx, ky = tilt_grid(size, surrogate_half_width(a))
    return (np.abs(kx) <= half_width) & (np.abs(ky) <= half_width)


def _lbfgsb(fun, z0, bounds, max_iter):
    """scipy L-BFGS-B on a torch objective of the scaled variables (float64 numpy in and out)."""

    def f_and_g(z):
        zt = torch.as_tensor(z, dtype=torch.float64).requires_grad_()
        f = fun(zt)
        (g,) = torch.autograd.grad(f, zt)
        return float(f.detach()), g.numpy().astype(np.float64)

    res = minimize(f_and_g, z0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": max_iter, "ftol": 1e-10, "gtol": 1e-8})
    return res.x, float(res.fun), int(getattr(res, "nit", 0))  # scipy leaves nit out when nothing is free


def seed_from_inverse(inverse, params, x0: np.ndarray, scale: np.ndarray, bounds, measured: np.ndarray,
                      *, max_iter: int = 60) -> tuple[np.ndarray, float, str]:
    """Fit θ to the inverse generator's potential for ``measured`` (on the surrogate grid).

    Parameters
    ----------
    inverse : InverseSurrogate
    params : FreeParameters
    x0 : ndarray, shape (k + 1,)
        Current [θ, thickness_nm]; the thickness conditions the generator and is not changed.
    scale : ndarray, shape (k + 1,)
        Optimiser scaling of each variable.
    bounds : list of (lo, hi)
        Bounds of the scaled variables z.
    measured : ndarray, shape (n, n)
        Measured pattern on the surrogates' grid.

    Returns
    -------
    x : ndarray, shape (k + 1,)
        Seeded parameters (thickness unchanged).
    fom : float
        1 − r between the seeded structure's potential and the generated one (aligned).
    note : str
    """
    from lacbed_refine.surrogate import align_to

    crystal = params.crystal
    centring = crystal.spacegroup_symbol[0]
    size = inverse.image_size
    with torch.no_grad():
        generated = inverse(torch.as_tensor(measured, dtype=torch.float32), float(x0[-1]), crystal.a)["normalised"]
        start = projected_potential(params.atoms(torch.as_tensor(x0[:-1])), crystal.a, centring=centring, size=size)
        # the generator knows the potential only up to the origin (and the square's operations):
        # put it where the starting structure's potential is
        target = align_to(generated[None, None].double(), start[None, None].double(), dihedral=True)[0, 0]
    theta_scale = torch.as_tensor(scale[:-1])
    theta0 = torch.as_tensor(x0[:-1])

    def fom(z):
        rho = projected_potential(params.atoms(theta0 + z[:-1] * theta_scale), crystal.a, centring=centring, size=size)
        return 1.0 - masked_pearson_r(rho, target, None)

    z0 = np.zeros(len(x0))
    seed_bounds = list(bounds[:-1]) + [(0.0, 0.0)]
    z, f, nit = _lbfgsb(fom, z0, seed_bounds, max_iter)
    x = x0 + z * scale
    return x, f, f"potential 1-r {float(fom(torch.zeros(len(x0), dtype=torch.float64))):.4f} -> {f:.4f} ({nit} it)"


def surrogate_search(forward, params, x0: np.ndarray, scale: np.ndarray, bounds, measured: np.ndarray,
                     mask: np.ndarray | None, *, refine_thickness: bool, blur, restarts: int = 3, max_iter: int = 60,
                     rng_seed: int = 0) -> tuple[np.ndarray, float, str]:
    """Minimise 1 − r between the forward surrogate's pattern and ``measured`` over θ and t.

    Parameters
    ----------
    forward : ForwardSurrogate
    params : FreeParameters
    x0, scale, bounds : as in :func:`seed_from_inverse`
    measured : ndarray, shape (n, n)
        Measured pattern on the surrogates' grid.
    mask : ndarray of bool, shape (n, n), optional
    refine_thickness : bool
    blur : callable
        The refinement's blur of a simulated pattern (torch → torch).
    restarts : int
        Starts in all: the current point, then random points uniform in ±½ scale around it
        (clipped to the bounds), reproducible from ``rng_seed``.

    Returns
    -------
    x : ndarray, best parameters found; fom : float, its surrogate 1 − r; note : str
    """
    meas = torch.as_tensor(measured, dtype=torch.float64)
    m = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)
    scale_t = torch.as_tensor(scale)
    x0_t = torch.as_tensor(x0)

    def fom(z):
        x = x0_t + z * scale_t
        # the min-max normalised output: r ignores scale and offset, and it does not lean on the
        # generator's intensity-range head
        pred = forward.from_theta(params, x[:-1], x[-1:].float())["normalised"][0].to(torch.float64)
        return 1.0 - masked_pearson_r(blur(pred), meas, m)

    bounds = list(bounds) if refine_thickness else list(bounds[:-1]) + [(0.0, 0.0)]
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    rng = np.random.default_rng(rng_seed)
    starts = [np.zeros(len(x0))] + [np.clip(rng.uniform(-0.5, 0.5, len(x0)), lo, hi) for _ in range(max(0, restarts - 1))]
    best = None
    for z0 in starts:
        z, f, nit = _lbfgsb(fom, z0, bounds, max_iter)
        if best is None or f < best[1]:
            best = (z, f, nit)
    z, f, nit = best
    with torch.no_grad():
        f0 = float(fom(torch.zeros(len(x0), dtype=torch.float64)))
    return x0 + z * scale, f, f"surrogate 1-r {f0:.5f} -> {f:.5f} (best of {len(starts)} starts)"
