"""Image agreement metrics (paper Eqs. 3–5) and their origin-insensitive versions.

- ℓMSE: mean squared pixel difference (of min–max normalised images in the paper's use);
- r: Pearson correlation; R = ½ + ½ r (the paper's "ZMCC"; R = 0.94 means r = 0.88);
- p(i, j): per-pixel squared error map.

Origin-insensitive versions take the best value over all circular shifts of one image (exact, by FFT
cross-correlation: a projected potential has no preferred origin) and, where the question allows it,
over the 8 operations of the square (dihedral group D4).

All functions take torch tensors of shape (..., H, W) and reduce over the last two axes.
"""

from __future__ import annotations

import torch

__all__ = [
    "pearson_r",
    "masked_pearson_r",
    "zmcc",
    "lmse",
    "error_map",
    "minmax",
    "best_shift_r",
    "best_shift_lmse",
    "dihedral",
    "best_dihedral_shift_r",
]


def minmax(x: torch.Tensor) -> torch.Tensor:
    """Min–max normalise each (H, W) image to [0, 1] (constant images become 0)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    return (x - lo) / torch.where(hi > lo, hi - lo, torch.ones_like(hi))


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=(-2, -1), keepdim=True)


def pearson_r(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation r of each pair of images, shape (...)."""
    a, b = _centred(a), _centred(b)
    num = (a * b).sum(dim=(-2, -1))
    den = torch.sqrt((a * a).sum(dim=(-2, -1)) * (b * b).sum(dim=(-2, -1)))
    return num / den.clamp_min(torch.finfo(a.dtype).tiny)


def masked_pearson_r(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Pearson r of two images over the pixels where ``mask`` (bool, same shape) is True, or over
    all pixels; a scalar (the refinement's figure of merit is 1 − r)."""
    if mask is not None:
        a, b = a[mask], b[mask]
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()).clamp_min(torch.finfo(a.dtype).tiny)


def zmcc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The paper's R = ½ + ½ r (Eq. 4)."""
    return 0.5 + 0.5 * pearson_r(a, b)


def lmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel difference ℓMSE (Eq. 3), shape (...)."""
    return ((a - b) ** 2).mean(dim=(-2, -1))


def error_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel squared error p(i, j) (Eq. 5), same shape as the inputs."""
    return (a - b) ** 2


def _cross_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c[s] = Σ_x a(x) b(x − s) over circular shifts s, shape (..., H, W)."""
    fa = torch.fft.rfft2(a)
    fb = torch.fft.rfft2(b)
    return torch.fft.irfft2(fa * fb.conj(), s=a.shape[-2:])


def best_shift_r(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Best Pearson r of ``a`` against every circular shift of ``b``.

    Returns
    -------
    r : Tensor, shape (...)
    shift : Tensor of long, shape (..., 2)
        (row, col) shift s with ``torch.roll(b, s, (-2, -1))`` the best-aligned ``b``.
    """
    a, b = _centred(a), _centred(b)
    c = _cross_correlation(a, b)
    den = torch.sqrt((a * a).sum(dim=(-2, -1)) * (b * b).sum(dim=(-2, -1))).clamp_min(torch.finfo(a.dtype).tiny)
    flat = c.flatten(-2)
    best, idx = flat.max(dim=-1)
    w = a.shape[-1]
    return best / den, torch.stack([idx // w, idx % w], dim=-1)


def best_shift_lmse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Lowest ℓMSE of ``a`` against every circular shift of ``b``:
    ‖a‖² + ‖b‖² − 2 max_s Σ a·roll(b, s), divided by the pixel count."""
    c = _cross_correlation(a, b).flatten(-2).max(dim=-1).values
    n = a.shape[-1] * a.shape[-2]
    return ((a * a).sum(dim=(-2, -1)) + (b * b).sum(dim=(-2, -1)) - 2 * c) / n


def dihedral(x: torch.Tensor) -> torch.Tensor:
    """The 8 images of ``x`` under the operations of the square: shape (8, ..., H, W)."""
    out = []
    for flip in (False, True):
        y = x.flip(-1) if flip else x
        for k in range(4):
            out.append(torch.rot90(y, k, dims=(-2, -1)))
    return torch.stack(out)


def best_dihedral_shift_r(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Best Pearson r of ``a`` against ``b`` over all circular shifts and the 8 operations of the
    square (for square images), shape (...)."""
    r, _ = best_shift_r(a.unsqueeze(0), dihedral(b))
    return r.max(dim=0).values
