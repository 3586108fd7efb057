"""Image transforms of the surrogates: normalisation, conditioning, exact invariances, alignment.

Normalisation (what the networks see and predict)
--------------------------------------------------
- Potential: min–max to [0, 1] per image, as in the dataset; its raw span max − min [V] is the
  ``potential_scale``.
- Pattern: min–max to [0, 1] per image. The intensity range is kept as ``(lo, hi)``, fractions of
  the incident beam, and the forward models predict it with a scalar head, so intensities come back
  as ``I = lo + (hi − lo) · y`` for the normalised prediction ``y``. R and r are unchanged by that
  affine map; ℓMSE is defined on the normalised images (paper Eq. 3).

Conditioning scalars, log-scaled to order one: ``log(t / 100 nm)``, ``log(a / 8 Å)`` and
``log(scale / 150 V)`` (the three values are fixed constants, not dataset statistics).
"""

from __future__ import annotations

import math

import torch

from lacbed_refine import metrics

__all__ = [
    "condition_vector",
    "minmax_with_range",
    "dihedral_apply",
    "roll_batch",
    "canonical_shift",
    "fourier_shift",
    "align_to",
]

#: Reference values of the log-scaled conditioning scalars.
COND_REFERENCE = {"thickness_nm": 100.0, "a_angstrom": 8.0, "potential_scale": 150.0}
#: Reference potential scale [V] of the inverse model's log-scale output.
SCALE_REFERENCE_V = COND_REFERENCE["potential_scale"]


def condition_vector(values: dict, names) -> torch.Tensor:
    """Stack ``log(value / reference)`` of the named scalars into shape (B, len(names)).

    Parameters
    ----------
    values : dict
        ``name -> Tensor, shape (B,)`` (positive).
    names : sequence of str
        Keys of :data:`COND_REFERENCE`.
    """
    cols = []
    for name in names:
        v = torch.as_tensor(values[name])
        if not torch.all(v > 0):
            raise ValueError(f"{name} must be positive, got {v.flatten()[:4].tolist()}")
        cols.append(torch.log(v / COND_REFERENCE[name]))
    return torch.stack(cols, dim=-1).float()


def minmax_with_range(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image min–max normalisation over the last two axes.

    Returns
    -------
    normalised : Tensor, same shape, in [0, 1]
    lo, hi : Tensor, shape ``x.shape[:-2]``
    """
    lo = x.amin(dim=(-2, -1))
    hi = x.amax(dim=(-2, -1))
    return metrics.minmax(x), lo, hi


def dihedral_apply(x: torch.Tensor, op: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
    """Apply operation ``op[b]`` of the square to image ``x[b]`` (same order as
    :func:`lacbed_refine.metrics.dihedral`: ops 0–3 rotate by k·90°, 4–7 flip columns then rotate).

    Parameters
    ----------
    x : Tensor, shape (B, ..., H, W)
    op : Tensor of long, shape (B,)
    inverse : bool
        Apply the inverse operations instead.
    """
    out = torch.empty_like(x)
    for k in range(8):
        sel = (op == k).nonzero().flatten()
        if len(sel) == 0:
            continue
        y = x[sel]
        flip, rot = k >= 4, k % 4
        if not inverse:
            y = y.flip(-1) if flip else y
            y = torch.rot90(y, rot, dims=(-2, -1))
        else:
            y = torch.rot90(y, -rot, dims=(-2, -1))
            y = y.flip(-1) if flip else y
        out[sel] = y
    return out


def roll_batch(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """``torch.roll(x[b], tuple(shifts[b]), dims=(-2, -1))`` for every b, differentiable in ``x``.

    Parameters
    ----------
    x : Tensor, shape (B, ..., H, W)
    shifts : Tensor of long, shape (B, 2)
        (row, col) shifts [pixels].
    """
    shape = x.shape
    b, h, w = shape[0], shape[-2], shape[-1]
    y = x.reshape(b, -1, h, w)
    shifts = shifts.to(x.device).long()
    rows = (torch.arange(h, device=x.device)[None, :] - shifts[:, :1]) % h  # (B, H)
    cols = (torch.arange(w, device=x.device)[None, :] - shifts[:, 1:]) % w  # (B, W)
    y = torch.gather(y, 2, rows[:, None, :, None].expand(b, y.shape[1], h, w))
    y = torch.gather(y, 3, cols[:, None, None, :].expand(b, y.shape[1], h, w))
    return y.reshape(shape)


def canonical_shift(x: torch.Tensor) -> torch.Tensor:
    """Whole-pixel shifts that bring each image's largest pixel to the centre.

    Parameters
    ----------
    x : Tensor, shape (B, 1, H, W)

    Returns
    -------
    Tensor of long, shape (B, 2), for :func:`roll_batch`.
    """
    h, w = x.shape[-2:]
    idx = x.detach().flatten(1).argmax(dim=1)
    r, c = idx // w, idx % w
    return torch.stack([(h // 2 - r) % h, (w // 2 - c) % w], dim=1)


def fourier_shift(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift periodic images by a fraction of a pixel through the Fourier series.

    Exact for band-limited periodic images (the projected potential of Eq. 1 has no term at the
    Nyquist frequency); the result is real.

    Parameters
    ----------
    x : Tensor, shape (B, ..., H, W)
    shift : Tensor, shape (B, 2)
        (row, col) shifts [pixels], any real values.
    """
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device, dtype=torch.float64)
    fx = torch.fft.rfftfreq(w, device=x.device, dtype=torch.float64)
    s = shift.to(device=x.device, dtype=torch.float64)
    extra = x.dim() - 3
    sy = s[:, 0].view(-1, *([1] * extra), 1, 1)
    sx = s[:, 1].view(-1, *([1] * extra), 1, 1)
    phase = torch.exp(-2j * math.pi * (fy[:, None] * sy + fx[None, :] * sx))
    spec = torch.fft.rfft2(x.to(torch.float64)) * phase
    return torch.fft.irfft2(spec, s=(h, w)).to(x.dtype)


def align_to(target: torch.Tensor, reference: torch.Tensor, *, dihedral: bool = False) -> torch.Tensor:
    """The copy of each ``target`` image that best matches ``reference`` over circular shifts
    (and the 8 operations of the square when ``dihedral``), by Pearson r. No gradient flows into
    the choice; the result is a rolled (and rotated/flipped) ``target``.

    Parameters
    ----------
    target, reference : Tensor, shape (B, 1, H, W)
    """
    with torch.no_grad():
        ref = reference.detach().float()
        if not dihedral:
            _, shift = metrics.best_shift_r(ref[:, 0], target[:, 0].float())
            return roll_batch(target, shift)
        cands = metrics.dihedral(target[:, 0].float())  # (8, B, H, W)
        r, shift = metrics.best_shift_r(ref[:, 0].unsqueeze(0), cands)  # (8, B), (8, B, 2)
        best = r.argmax(dim=0)  # (B,)
        ar = torch.arange(target.shape[0], device=target.device)
        op, sh = best, shift[best, ar]
    return roll_batch(dihedral_apply(target, op), sh)

