"""Bloch-wave LACBED for any crystal at any zone axis, FELIX's formulation (felix-spec §3.6),
differentiable in the atoms' coordinates, B, occupancies and the thickness.

Per pixel: tilted wave vector k′ = (k_x, k_y, √(K² − k_x² − k_y²)) in the microscope frame
(:mod:`.zone`); exact excitation errors s_g for every pool beam (HOLZ included); structure matrix
A = diag(s_g) + 4π² U_{g_i − g_j} / 2K (U₀₀ = 0, 2π units), optionally FELIX's per-pixel strong-beam
rule, then divided by √(f_i f_j) with the surface-normal factor f_g = 1 + g·n̂/(k′·n̂); ψ(t) = exp(iAt) e₀
for all thicknesses from one decomposition; I_g = |ψ_g|² / f_g.

Speed comes from:

- the zone's exact symmetry, found numerically (:mod:`.zone_symmetry`): only a wedge of pixels is
  solved and the rest filled by the vertical operations that map the pixel grid onto itself and, for
  a zero-order-Laue-zone pool with normal factors 1, by reciprocity (A(−k) = P A(k)ᵀ P: one
  decomposition gives the pixel at −k too, every disc);
- a real symmetric eigenproblem when beam phases exist that make the couplings real (no absorption;
  centrosymmetric projections), a complex Hermitian one otherwise without absorption, the general
  complex one only with absorption;
- FELIX's strong-beam rule solved as smaller matrices: each pixel keeps its strong beams (plus the
  beams the outputs need, decoupled where weak), and pixels with the same count are solved together;
- pixels batched through one LAPACK call per chunk, float32 on request, and worker processes over
  chunks (``workers``) for calls that need no gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lacbed_refine.conventions import wavevector_2pi
from lacbed_refine.engine.bloch import EngineInfo, beam_pool, engine_chunk
from lacbed_refine.engine.geometry import tilt_grid
from lacbed_refine.engine.pattern_symmetry import pixel_wedge
from lacbed_refine.engine.propagation import propagate
from lacbed_refine.engine.zone import ZoneAxis, beam_vectors, excitation_errors_3d, normal_factor, tilted_wavevectors
from lacbed_refine.engine.zone_symmetry import ZoneSymmetry, realifying_phases, structure_matrix_symmetry
from lacbed_refine.physics.absorption import ABSORPTION_MODELS, absorptive_ug
from lacbed_refine.physics.structure_factors import ug_for_cell
from lacbed_refine.runtime import Parallel, single_thread
from lacbed_refine.structure.atoms import Atoms
from lacbed_refine.structure.cell import Cell

__all__ = ["simulate_zone", "zone_symmetry"]


def _couplings(atoms, cell, pool, *, voltage, absorption, absorption_model, form_factors, absorption_scale=1.0):
    """U of every beam difference and the absorptive U′ (or None; × ``absorption_scale``), both
    complex (D,) [Å⁻²]."""
    atoms = Atoms.coerce(atoms)
    frac = torch.as_tensor(atoms.frac, dtype=torch.float64)
    occ = torch.as_tensor(atoms.occupancy, dtype=torch.float64)
    b = torch.as_tensor(atoms.b_iso, dtype=torch.float64)
    u_diffs = ug_for_cell(pool.diffs, frac, atoms.Z, occ, b, cell, voltage=voltage, table=form_factors)
    if absorption_model not in ABSORPTION_MODELS:
        raise ValueError(f"absorption model {absorption_model!r}: use one of {', '.join(ABSORPTION_MODELS)}")
    u_abs = None
    if absorption_model == "proportional" and absorption:
        u_abs = 1j * (absorption / 100.0) * u_diffs
    elif absorption_model == "bird-king":
        u_abs = absorptive_ug(pool.diffs, frac, atoms.Z, occ, b, cell, voltage=voltage)
    if u_abs is not None and absorption_scale != 1.0:
        u_abs = u_abs * absorption_scale
    return u_diffs, u_abs


def zone_symmetry(
    atoms: Atoms | dict,
    cell: Cell,
    zone: ZoneAxis,
    beams: np.ndarray,
    *,
    voltage: float,
    absorption: float = 0.0,
    absorption_model: str = "proportional",
    form_factors: str = "kirkland",
) -> ZoneSymmetry:
    """The exact symmetry :func:`simulate_zone` finds and uses for a crystal at a zone axis.

    Parameters are those of :func:`simulate_zone`. Returns a
    :class:`~lacbed_refine.engine.zone_symmetry.ZoneSymmetry`: ``name`` (the vertical operations'
    2-D point group), ``grid_name`` (the part the pixel grid admits), ``reciprocity`` and
    ``bright_field_name``.
    """
    pool = beam_pool(beams)
    with torch.no_grad():
        u, u_abs = _couplings(atoms, cell, pool, voltage=voltage, absorption=absorption,
                              absorption_model=absorption_model, form_factors=form_factors)
        total = (u if u_abs is None else u + u_abs).numpy()
    return structure_matrix_symmetry(beam_vectors(cell, zone, pool.hkl), total[pool.diff_index], zone.normal_vector(cell))


@dataclass(frozen=True)
class _Plan:
    """Everything a chunk of pixels needs besides its excitation errors (picklable for workers).

    ``off`` is the coupling matrix (n, n) of the whole pool (real, or complex). ``rows_i`` are the
    pool beams whose amplitudes ψ_g = [exp(iAt)]_{g0} are returned, ``rows_j`` those whose row
    amplitudes [exp(iAt)]_{0g} are (reciprocity). With FELIX's rule each pixel's matrix holds its
    strong beams only (a requested beam that is weak there is 0, as in FELIX), except when gradients
    are needed: then (``fixed``) every matrix holds the ``forced`` beams first (000 and ``rows_i``),
    decoupled where weak, so that the output rows sit at the same positions in every pixel.
    ``bethe``: the strong-beam rule's weak beams enter as second-order couplings
    (:func:`_bethe_correction`) and requested weak beams get first-order amplitudes
    (:func:`_bethe_readout`).
    """

    off: torch.Tensor
    thickness: torch.Tensor
    rows_i: torch.Tensor
    rows_j: torch.Tensor
    forced: torch.Tensor
    rows_fixed: torch.Tensor
    kind: str  # "real", "hermitian" or "general"
    threads: int = 1
    bethe: bool = False


def _strong_mask(s: torch.Tensor, u0: torch.Tensor, m: int) -> torch.Tensor:
    """FELIX's strong-beam rule, the same mask as :func:`lacbed_refine.engine.bloch.felix_strong_mask`
    without its loop over S: strong if |s_g| < S or |U_g0/s_g| ≥ 0.5, with S the first of 0.005,
    0.010, … [rad/Å] (accumulated in float64 as FELIX and that loop do) giving at least m beams.
    Returns bool, shape (P, n)."""
    a = s.abs()
    strength = u0[None, :] / a.clamp_min(1e-300) >= 0.5
    strength[:, 0] = True  # 000: FELIX's strength 1000
    need = m - strength.sum(1)  # beams still to take by |s_g|, per pixel
    ranked = torch.where(strength, torch.full_like(a, float("inf")), a).sort(dim=1).values
    k = need.clamp(min=1, max=a.shape[1]) - 1
    v = torch.gather(ranked, 1, k[:, None])[:, 0]  # the need-th smallest |s_g| of the other beams
    top = float(v[torch.isfinite(v)].max()) if bool(torch.isfinite(v).any()) else 0.0
    steps, limit = [], 0.005
    while True:
        steps.append(limit)
        if limit > top:
            break
        limit = limit + 0.005
    seq = torch.tensor(steps, dtype=s.dtype)
    j = torch.searchsorted(seq, v.contiguous(), right=True).clamp(max=len(seq) - 1)
    limit = torch.where(need > 0, seq[j], seq[0])
    return (a < limit[:, None]) | strength


def _group_matrices(plan: _Plan, s: torch.Tensor, keep: torch.Tensor | None, fixed: bool):
    """Pixel groups of equal matrix size: (pixel positions or None for all, beam indices (P_g, m))."""
    p, n = s.shape
    if keep is None:
        return [(None, torch.arange(n).expand(p, n))]
    ar = torch.arange(n)
    take = keep.clone()
    if fixed:
        take[:, plan.forced] = False
    count = take.sum(1)
    first = torch.where(take, ar, ar + n).sort(dim=1).values  # the beams taken first, in pool order
    groups = []
    for c in torch.unique(count).tolist():
        sel = torch.nonzero(count == c).squeeze(1)
        idx = first[sel, :c]
        if fixed:
            idx = torch.cat([plan.forced.expand(len(sel), -1), idx], dim=1)
        groups.append((sel, idx))
    return groups


def _bethe_correction(off: torch.Tensor, s: torch.Tensor, keep: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Second-order (Bethe) couplings through each pixel's weak beams, to subtract from its strong
    block: Σ_w A_gw A_wh / (s_w + A_ww) for the strong beams g, h at ``idx`` (P, m) and the pool
    beams w that are not strong (``keep`` False; shape (P, n)), with excitation errors ``s`` (P, n)
    [rad/Å]. This is the weak beams eliminated from the eigen-equation with the eigenvalue neglected
    beside s_w (Zuo & Weickenmeier 1995); shape (P, m, m)."""
    diag = off.diagonal()
    denom = s.to(off.dtype) + diag
    w = torch.where(keep, torch.zeros((), dtype=off.dtype), 1 / denom)  # (P, n)
    rows = off[idx]  # (P, m, n): A_gw
    cols = off.mT[idx].mT  # (P, n, m): A_wh
    return torch.matmul(rows * w[:, None, :], cols)


def _bethe_readout(off: torch.Tensor, s: torch.Tensor, f: torch.Tensor | None, idx: torch.Tensor, beams: torch.Tensor,
                   pos: torch.Tensor, column: bool = False) -> torch.Tensor:
    """Readout (P, R, m) of ``beams`` (R,) from each pixel's matrix beams ``idx`` (P, m): a unit row
    where a beam is in the matrix (``pos`` ≥ 0), and where it is weak its first-order Bethe amplitude,
    ψ_w = −Σ_h A′_wh ψ_h / A′_ww with A′ the normal-factor-scaled matrix (A′_gh = A_gh/√(f_g f_h)),
    instead of FELIX's 0. ``column``: the same for row amplitudes [exp(iAt)]_{0w} (A′_hw). ``s``, ``f``
    (P, n): the pixels' excitation errors [rad/Å] and normal factors."""
    p, m = idx.shape
    read = torch.zeros(p, len(beams), m, dtype=off.dtype)
    here = pos >= 0
    pi, ri = torch.nonzero(here, as_tuple=True)
    read[pi, ri, pos[pi, ri]] = 1
    pw, rw = torch.nonzero(~here, as_tuple=True)
    if len(pw):
        b = beams[rw]  # (K,) pool indices of the weak beams asked for
        h = idx[pw]  # (K, m)
        coupling = off[h, b[:, None]] if column else off[b[:, None], h]
        denom = s[pw, b].to(off.dtype) + off[b, b]
        if f is not None:
            # A′_wh / A′_ww = A_wh √f_w / (√f_h (s_w + A_ww))
            coupling = coupling * torch.sqrt(f[pw, b])[:, None].to(off.dtype) * torch.rsqrt(torch.gather(f[pw], 1, h)).to(off.dtype)
        read[pw, rw] = -coupling / denom[:, None]
    return read


def _positions(idx: torch.Tensor, beams: torch.Tensor, n: int) -> torch.Tensor:
    """Position of each of ``beams`` (R,) in every row of ``idx`` (P, m), −1 where absent: (P, R)."""
    where = torch.full((idx.shape[0], n), -1, dtype=torch.long)
    where.scatter_(1, idx, torch.arange(idx.shape[1]).expand_as(idx))
    return where[:, beams]


def _pick(M: torch.Tensor, pos: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows (dim −2) or columns (dim −1) ``pos`` (P, R) of the matrices M (P, m, m), per pixel;
    rows (P, R, m), columns (P, m, R). Absent positions (−1) give row/column 0, masked later."""
    p = pos.clamp(min=0)
    if dim == -2:
        return torch.gather(M, 1, p[:, :, None].expand(-1, -1, M.shape[-1]))
    return torch.gather(M, 2, p[:, None, :].expand(-1, M.shape[-2], -1))


def _rows(M: torch.Tensor, pos: torch.Tensor, read: torch.Tensor | None) -> torch.Tensor:
    """Rows ``pos`` of M (:func:`_pick`), or with a readout (P, R, m) its combinations ``read`` @ M."""
    return _pick(M, pos, -2) if read is None else torch.matmul(read.to(M.dtype), M)


def _cols(M: torch.Tensor, pos: torch.Tensor, read: torch.Tensor | None) -> torch.Tensor:
    """Columns ``pos`` of M, or with a readout (P, R, m) the combinations M @ ``read``ᵀ."""
    return _pick(M, pos, -1) if read is None else torch.matmul(M, read.to(M.dtype).mT)


def _masked(out: torch.Tensor, pos: torch.Tensor, read: torch.Tensor | None) -> torch.Tensor:
    """:func:`_absent`, unless a readout gives the absent beams their (Bethe) amplitudes."""
    return _absent(out, pos) if read is None else out


def _absent(out: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Zero the intensities (P, T, R) of beams absent from a pixel's matrix (pos −1)."""
    return out.masked_fill((pos < 0)[:, None, :], 0) if bool((pos < 0).any()) else out


def _thickness_steps(thickness: torch.Tensor) -> tuple[float, list[int]] | None:
    """A step Δ [Å] of which every thickness is a whole multiple (at most 64), or None."""
    t = [float(x) for x in thickness.detach().reshape(-1).tolist()]
    positive = [x for x in t if x > 0]
    if not positive or min(t) < 0:
        return None
    for q in range(1, 9):
        step = min(positive) / q
        mult = [x / step for x in t]
        if all(abs(v - round(v)) < 1e-9 for v in mult) and max(mult) <= 64:
            return step, [int(round(v)) for v in mult]
    return None


def _expm(X: torch.Tensor) -> torch.Tensor:
    """exp(X) of a batch of complex matrices (P, m, m) by scaling and squaring a Taylor polynomial
    (degree 16, or 8 in single precision; the truncation below the unit roundoff at the scaled
    1-norm), evaluated with Paterson–Stockmeyer blocks of four."""
    single = X.dtype == torch.complex64
    deg, theta = (8, 0.65) if single else (16, 0.8)
    norm = float(X.abs().sum(-2).amax()) if X.numel() else 0.0
    sq = max(0, math.ceil(math.log2(norm / theta))) if norm > 0 else 0
    X = X / 2.0**sq
    eye = torch.eye(X.shape[-1], dtype=X.dtype)
    x2 = X @ X
    powers = [eye, X, x2, x2 @ X]
    x4 = x2 @ x2
    coef = [1.0 / math.factorial(k) for k in range(deg + 1)]

    def block(j):
        out = coef[4 * j] * eye
        for r in range(1, 4):
            if 4 * j + r <= deg:
                out = out + coef[4 * j + r] * powers[r]
        return out

    E = block(deg // 4).expand_as(X)
    for j in range(deg // 4 - 1, -1, -1):
        E = E @ x4 + block(j)
    for _ in range(sq):
        E = E @ E
    return E


def _expm_amplitudes(A: torch.Tensor, step: float, mult: list[int], pos_i, pos_j, read_i=None, read_j=None):
    """As :func:`_amplitudes` for thicknesses ``mult`` × ``step`` [Å], through E = exp(iAΔ) and its
    powers applied to e₀ (column) and e₀ᵀ (row): for the general (absorbing) matrix this is ~2–3×
    faster than the eigen-decomposition and its inverse. A scalar shift of the diagonal (the mean
    excitation error) only changes a common phase, so it is taken out to shrink the norm."""
    diag = A.diagonal(dim1=-2, dim2=-1)
    shift = diag.real.mean(-1)
    X = A.clone()
    X.diagonal(dim1=-2, dim2=-1).sub_(shift[:, None].to(A.dtype))
    E = _expm(1j * step * X)
    v = torch.zeros(A.shape[:-1] + (1,), dtype=A.dtype)
    v[..., 0, 0] = 1
    w = v.mT.clone()
    cols, rows = {0: v[..., 0]}, {0: w[..., 0, :]}
    for k in range(1, max(mult) + 1):
        v = E @ v
        cols[k] = v[..., 0]
        if pos_j.shape[1]:
            w = w @ E
            rows[k] = w[..., 0, :]
    psi_i = torch.stack([_cols(cols[k][:, None, :], pos_i, read_i)[:, 0] for k in mult], dim=1)  # (P, T, R_i)
    out_i = _masked(psi_i.real**2 + psi_i.imag**2, pos_i, read_i)
    if not pos_j.shape[1]:
        return out_i, out_i[..., :0]
    psi_j = torch.stack([_cols(rows[k][:, None, :], pos_j, read_j)[:, 0] for k in mult], dim=1)
    return out_i, _masked(psi_j.real**2 + psi_j.imag**2, pos_j, read_j)


def _amplitudes(A: torch.Tensor, thickness: torch.Tensor, pos_i, pos_j, kind: str, read_i=None, read_j=None):
    """|[exp(iAt)]_{g0}|² for g at positions ``pos_i`` (P, R_i) of each matrix and |[exp(iAt)]_{0g}|²
    for g at ``pos_j`` (P, R_j), 0 where a position is −1, from one decomposition (forward only):
    shapes (P, T, R_i), (P, T, R_j). With readouts ``read_i`` (P, R_i, m) and ``read_j`` (P, R_j, m)
    the amplitudes are those combinations of every beam's instead (:func:`_bethe_readout`)."""
    t = thickness.to(A.real.dtype)
    has_j = pos_j.shape[1] > 0
    if kind == "general" and (steps := _thickness_steps(thickness)) is not None:
        return _expm_amplitudes(A, *steps, pos_i, pos_j, read_i, read_j)
    if kind == "general":
        lam, C = torch.linalg.eig(A)
        if has_j:
            Ci = torch.linalg.inv(C)
            c0 = Ci[..., :, 0]
        else:
            e0 = torch.zeros(A.shape[:-1] + (1,), dtype=C.dtype)
            e0[..., 0, 0] = 1
            c0 = torch.linalg.solve(C, e0)[..., 0]
        phase = torch.exp(1j * lam[..., None, :] * t[:, None].to(lam.dtype))  # (P, T, m)
        psi_i = torch.matmul(phase * c0[..., None, :], _rows(C, pos_i, read_i).mT)  # (P, T, R_i)
        out_i = _masked(psi_i.real**2 + psi_i.imag**2, pos_i, read_i)
        if not has_j:
            return out_i, out_i[..., :0]
        psi_j = torch.matmul(phase * C[..., 0, None, :], _cols(Ci, pos_j, read_j))
        return out_i, _masked(psi_j.real**2 + psi_j.imag**2, pos_j, read_j)
    # a scalar shift of the diagonal changes only a common phase; taking out the mean excitation
    # error shrinks |λ| and with it the rounding of λ t (float32)
    A.diagonal(dim1=-2, dim2=-1).sub_(A.diagonal(dim1=-2, dim2=-1).real.mean(-1, keepdim=True).to(A.dtype))
    lam, C = torch.linalg.eigh(A)
    arg = lam.double()[..., None, :] * thickness.double()[:, None]  # (P, T, m), real
    rows = _rows(C, pos_i, read_i).mT  # (P, m, R_i)
    if kind == "real":
        # real eigenvectors: real and imaginary parts of ψ by two real products
        w = C[..., 0, None, :]
        re = torch.matmul(torch.cos(arg).to(w.dtype) * w, rows)
        im = torch.matmul(torch.sin(arg).to(w.dtype) * w, rows)
        out_i = _masked(re**2 + im**2, pos_i, read_i)
        return out_i, out_i[..., :0]
    phase = torch.polar(torch.ones_like(arg), arg).to(C.dtype)
    psi_i = torch.matmul(phase * C[..., 0, None, :].conj(), rows)
    out_i = _masked(psi_i.real**2 + psi_i.imag**2, pos_i, read_i)
    if not has_j:
        return out_i, out_i[..., :0]
    psi_j = torch.matmul(phase * C[..., 0, None, :], _rows(C.conj(), pos_j, read_j).mT)
    return out_i, _masked(psi_j.real**2 + psi_j.imag**2, pos_j, read_j)


def _chunk_intensities(plan: _Plan, s: torch.Tensor, f: torch.Tensor | None, keep: torch.Tensor | None):
    """Intensities of a chunk of pixels: I at ``rows_i`` (divided by the normal factor) and the row
    intensities at ``rows_j``, shapes (P, T, R_i), (P, T, R_j)."""
    off = plan.off
    n = off.shape[0]
    grad = torch.is_grad_enabled() and (off.requires_grad or plan.thickness.requires_grad)
    p, nf = s.shape[0], len(plan.forced)
    out_i = torch.empty(p, len(plan.thickness), len(plan.rows_i), dtype=off.real.dtype)
    out_j = torch.empty(p, len(plan.thickness), len(plan.rows_j), dtype=off.real.dtype)
    parts = []
    for sel, idx in _group_matrices(plan, s, keep, fixed=grad):
        if sel is None:
            A = off.expand(p, n, n)
            A = A if grad else A.clone()
            s_sub, f_sub = s, f
        else:
            A = off[idx[:, :, None], idx[:, None, :]]
            s_sub = torch.gather(s[sel], 1, idx)
            f_sub = None if f is None else torch.gather(f[sel], 1, idx)
            if plan.bethe:
                A = A - _bethe_correction(off, s[sel], keep[sel], idx)
            if grad:
                # the beams after the forced ones are strong: decouple the weak forced ones
                w = torch.ones(idx.shape, dtype=A.real.dtype)
                w[:, :nf] = torch.gather(keep[sel], 1, idx[:, :nf]).to(w.dtype)
                A = A * (w[:, :, None] * w[:, None, :]).to(A.dtype)
        if grad:
            A = A + torch.diag_embed(s_sub.to(A.dtype))
        else:
            A.diagonal(dim1=-2, dim2=-1).add_(s_sub.to(A.dtype))
        if f_sub is not None:
            d = torch.rsqrt(f_sub).to(A.dtype)
            A = A * d[:, :, None] * d[:, None, :]
        f_rows = None if f is None else (f if sel is None else f[sel])[:, plan.rows_i]
        # with Bethe couplings a requested beam that is weak at a pixel gets its first-order
        # amplitude from the strong ones (FELIX writes 0 there)
        bethe = plan.bethe and sel is not None
        s_sel, f_sel = (s[sel], None if f is None else f[sel]) if bethe else (None, None)
        if grad:
            rows = plan.rows_i if sel is None else plan.rows_fixed
            pos_f = torch.where(keep[sel][:, plan.rows_i], rows[None, :], -1) if bethe else None
            if bethe and bool((pos_f < 0).any()):
                read = _bethe_readout(off, s_sel, f_sel, idx, plan.rows_i, pos_f)
                psi = propagate(A, plan.thickness, torch.arange(idx.shape[1]), hermitian=plan.kind != "general",
                                threads=plan.threads)
                psi = torch.matmul(psi, read.to(psi.dtype).mT)
            else:
                psi = propagate(A, plan.thickness, rows, hermitian=plan.kind != "general", threads=plan.threads)
            ii, jj = psi.real**2 + psi.imag**2, None
        else:
            pos_i = _positions(idx, plan.rows_i, n)
            pos_j = _positions(idx, plan.rows_j, n)
            read_i = read_j = None
            if bethe and bool((pos_i < 0).any()):
                read_i = _bethe_readout(off, s_sel, f_sel, idx, plan.rows_i, pos_i)
            if bethe and pos_j.shape[1] and bool((pos_j < 0).any()):
                read_j = _bethe_readout(off, s_sel, f_sel, idx, plan.rows_j, pos_j, column=True)
            ii, jj = _amplitudes(A, plan.thickness, pos_i, pos_j, plan.kind, read_i, read_j)
        if f_rows is not None:
            ii = ii / f_rows[:, None, :].to(ii.dtype)
        if sel is None:
            return ii, (out_j if jj is None else jj)
        parts.append((sel, ii, jj))
    if grad:
        order = torch.cat([sel for sel, _, _ in parts])
        inv = torch.empty_like(order)
        inv[order] = torch.arange(len(order))
        return torch.cat([ii for _, ii, _ in parts])[inv], out_j
    for sel, ii, jj in parts:
        out_i[sel] = ii
        out_j[sel] = jj
    return out_i, out_j


def simulate_zone(
    atoms: Atoms | dict,
    cell: Cell,
    zone: ZoneAxis,
    beams: np.ndarray,
    thickness: torch.Tensor,
    *,
    voltage: float,
    size: int,
    half_width: float,
    reflections=((0, 0, 0),),
    strong_beams: int | None = None,
    absorption: float = 0.0,
    absorption_model: str = "proportional",
    mean_absorption: bool = True,
    form_factors: str = "kirkland",
    dtype: torch.dtype = torch.float64,
    pixels: np.ndarray | None = None,
    chunk: int = 512,
    threads: int = 1,
    use_symmetry: bool | None = None,
    workers: int = 1,
    return_info: bool = False,
    absorption_scale: float = 1.0,
    bethe: bool = False,
):
    """LACBED intensities of a crystal at a zone axis.

    Parameters
    ----------
    atoms : Atoms or mapping
        The full cell: ``frac`` (N, 3), ``Z`` (N,), ``occupancy`` (N,), ``b_iso`` (N,) [Å²] (numpy or
        torch; torch tensors carry gradients).
    cell : Cell
    zone : ZoneAxis
    beams : ndarray, shape (n, 3), int
        The beam pool, 000 first (:func:`lacbed_refine.engine.beams.zone_beam_pool`).
    thickness : Tensor, shape (T,)
        Thicknesses [Å] (may require grad).
    voltage : float
        [V].
    size : int
        Pattern edge [pixels].
    half_width : float
        Tilt half-width [Å⁻¹, 1/d units].
    reflections : sequence of (h, k, l)
        Discs to return (000 is the bright field); each must be in the pool.
    strong_beams : int, optional
        FELIX's per-pixel rule (felix-spec §3.6.3): beams with |s_g| < S or |U_g0/s_g| ≥ 0.5, S
        growing by 0.005 rad/Å until at least this many; other beams are decoupled (and a requested
        disc that is not strong at a pixel is 0 there, as in FELIX). None uses the whole pool.
    absorption : float
        Proportional absorption U′ = i (absorption/100) U [%] (with ``absorption_model``
        "proportional").
    absorption_model : {"none", "proportional", "bird-king"}
        How U′ is made (:mod:`lacbed_refine.physics.absorption`); "bird-king" ignores ``absorption``.
    mean_absorption : bool
        Keep the uniform attenuation from U′₀ (FELIX drops it).
    form_factors : {"kirkland", "peng"}
    dtype : torch.float32 or torch.float64
        Real precision of the eigenproblem (float32 is ~1.5–2× faster; intensities then differ by
        ~1e-5–1e-4 from float64 at 2000 Å).
    pixels : ndarray of int, optional
        Flat pixel indices (row-major) to compute; default all. The result then has shape (T, R, P).
    chunk : int
        Pixels per batched eigen-decomposition (at most).
    threads : int
        Python threads over the pixels of each chunk, for calls that need gradients.
    use_symmetry : bool, optional
        Use the zone's exact symmetry (:func:`zone_symmetry`): solve a wedge of pixels and the real
        eigenproblem where it exists. None (default): only when no gradient with respect to the
        atoms is needed — the symmetry holds at the given structure, so with it the gradients are
        exact only along parameter changes that keep it (as symmetry-constrained refinement
        parameters do); pass True for those. Gradients with respect to thickness are always exact.
    workers : int or lacbed_refine.runtime.Parallel
        Worker processes over chunks of pixels for calls that need no gradient (each runs one
        thread; the pool is created on first use and kept), or a :class:`Parallel` policy
        (``threads`` or ``processes``).
    return_info : bool
        Also return an :class:`~lacbed_refine.engine.bloch.EngineInfo` (symmetry operations used,
        pixels solved, real path, dtype).
    absorption_scale : float
        Factor on U′ of either model (≥ 0; 1 is the model as published): a refinable correction
        for absorption the model leaves out (Bird–King has thermal diffuse scattering only).
    bethe : bool
        With ``strong_beams``: add the pool's weak beams to each pixel's strong block as
        second-order (Bethe) couplings, A_gh − Σ_w A_gw A_wh / s_w (Zuo & Weickenmeier 1995), instead
        of dropping them, and give a requested disc that is weak at a pixel its first-order amplitude
        instead of 0. FELIX has this off. The discs come closer to the whole pool's at the same
        strong-beam count (2–9× in 1 − r, measured on GaAs), for 15–30 % more time.

    Returns
    -------
    Tensor, shape (T, R, size, size), or (T, R, P) with ``pixels``; fractions of the incident beam.
    With ``return_info``, a pair (intensities, info).
    """
    with single_thread():
        return _simulate_zone(atoms, cell, zone, beams, thickness, voltage=voltage, size=size, half_width=half_width,
                              reflections=reflections, strong_beams=strong_beams, absorption=absorption,
                              absorption_model=absorption_model, mean_absorption=mean_absorption,
                              form_factors=form_factors, dtype=dtype, pixels=pixels, chunk=chunk, threads=threads,
                              use_symmetry=use_symmetry, workers=workers, return_info=return_info,
                              absorption_scale=absorption_scale, bethe=bethe)


def _simulate_zone(atoms, cell, zone, beams, thickness, *, voltage, size, half_width, reflections, strong_beams,
                   absorption, absorption_model, mean_absorption, form_factors, dtype, pixels, chunk, threads,
                   use_symmetry, workers, return_info, absorption_scale, bethe):
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype {dtype!r}: use torch.float32 or torch.float64")
    if not (math.isfinite(absorption_scale) and 0 <= absorption_scale <= 100):
        raise ValueError(f"absorption_scale {absorption_scale!r}: must be a number in 0–100")
    beams = np.asarray(beams, dtype=np.int64)
    pool = beam_pool(beams)
    n = pool.size
    out_idx = np.array([pool.index_of(r) for r in reflections], dtype=np.int64)
    big_k = wavevector_2pi(voltage)
    atoms = Atoms.coerce(atoms)

    u_diffs, u_abs = _couplings(atoms, cell, pool, voltage=voltage, absorption=absorption,
                                absorption_model=absorption_model, form_factors=form_factors,
                                absorption_scale=absorption_scale)
    structure_grad = torch.is_grad_enabled() and any(
        isinstance(v, torch.Tensor) and v.requires_grad for v in (atoms.frac, atoms.occupancy, atoms.b_iso))
    thickness = torch.as_tensor(thickness)
    needs_grad = structure_grad or (torch.is_grad_enabled() and thickness.requires_grad)
    symmetric = (not structure_grad) if use_symmetry is None else bool(use_symmetry)

    coef = 4 * math.pi**2 / (2 * big_k)  # U [Å⁻²] → structure-matrix element [rad/Å]
    u_total = u_diffs if u_abs is None else u_diffs + u_abs
    dindex = torch.as_tensor(pool.diff_index)
    eye = torch.eye(n, dtype=torch.float64)
    off = coef * u_total[dindex] * (1 - eye)  # U₀₀ = U′₀₀ = 0 off the diagonal, as FELIX
    u0 = u_total.detach()[dindex[:, 0]].abs()  # FELIX tests strength with the absorbing U
    off_np = off.detach().numpy()

    g_np = beam_vectors(cell, zone, beams)
    g = torch.as_tensor(g_np)
    normal = zone.normal_vector(cell)
    unit_normal = bool(np.abs(g_np @ normal).max() <= 1e-12 * max(np.linalg.norm(g_np, axis=1).max(), 1e-300))

    # the path: real symmetric (realifiable couplings), complex Hermitian, or general (absorption)
    kind = "hermitian" if u_abs is None else "general"
    if kind == "hermitian" and symmetric:
        phi = realifying_phases(off_np)
        if phi is not None:
            kind = "real"
            ph = torch.as_tensor(np.exp(1j * (phi[:, None] - phi[None, :])))
            off = (off * ph).real
    if u_abs is not None and mean_absorption:
        # the uniform attenuation i·U′₀ that FELIX leaves out (its Bloch diagonal is overwritten)
        off = off + coef * u_abs[int(pool.diff_index[0, 0])] * eye
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    off = off.to(dtype if kind == "real" else cdtype)

    # the symmetry: pattern operations (pixel-grid matrices), each with its beam map
    if symmetric:
        sym = structure_matrix_symmetry(g_np, off_np, normal)
        pattern = sym.pattern_ops if not needs_grad else [(op, False) for op in sym.grid_ops]
        perm_of = {op.tobytes(): p for op, p in zip(sym.grid_ops, sym.grid_perms)}
    else:
        sym, pattern, perm_of = None, [(np.eye(2, dtype=np.int64), False)], {np.eye(2, dtype=np.int64).tobytes(): np.arange(n)}
    # beam_map[o][i]: the pool index beam i of the representative pixel becomes at pixel op_o · rep
    beam_map, src_rows = [], []
    for op, transposed in pattern:
        vertical = -op if transposed else op
        perm = perm_of[vertical.tobytes()]
        inv = np.empty(n, dtype=np.int64)
        inv[perm] = np.arange(n)
        if transposed:
            beam_map.append(sym.minus[perm])
            src_rows.append(inv[sym.minus[out_idx]])  # I_h(−R k) = J_{R⁻¹(−h)}(k)
        else:
            beam_map.append(perm)
            src_rows.append(inv[out_idx])  # I_h(R k) = I_{R⁻¹h}(k)

    kx, ky = tilt_grid(size, half_width)
    kx, ky = kx.ravel() * 2 * math.pi, ky.ravel() * 2 * math.pi
    reps, source, op_index = pixel_wedge(size, [op for op, _ in pattern])
    rep_of = reps[source]  # (S,) the representative's flat index
    targets = np.arange(size * size) if pixels is None else np.asarray(pixels, dtype=np.int64)
    m = None if strong_beams is None or strong_beams >= n else int(strong_beams)

    t_rep, t_op = rep_of[targets], op_index[targets]
    need = np.unique(np.concatenate([targets, t_rep]))
    at = np.full(size * size, -1, dtype=np.int64)
    at[need] = np.arange(len(need))
    k = tilted_wavevectors(kx[need], ky[need], big_k)
    s_all = excitation_errors_3d(k, g, big_k)  # (N, n)
    f_all = None if unit_normal else normal_factor(k, g, normal)
    keep_all = None if m is None else _strong_mask(s_all, u0, m)
    if keep_all is not None and len(pattern) > 1:
        # FELIX's rule decides per pixel; where it does not follow the symmetry (a tie, or an
        # absorptive |U_g| ≠ |U_−g| with reciprocity) the pixel is solved itself
        moved = np.nonzero(t_rep != targets)[0]
        if len(moved):
            bmap = torch.as_tensor(np.stack(beam_map))[torch.as_tensor(t_op[moved])]  # (M, n)
            keep_t = keep_all[torch.as_tensor(at[targets[moved]])]
            keep_r = keep_all[torch.as_tensor(at[t_rep[moved]])]
            ok = (torch.gather(keep_t, 1, bmap) == keep_r).all(1).numpy()
            bad = moved[~ok]
            t_rep[bad], t_op[bad] = targets[bad], 0

    def geometry(flat):
        i = torch.as_tensor(at[flat])
        return s_all[i], None if f_all is None else f_all[i], None if keep_all is None else keep_all[i]

    comp, slot = np.unique(t_rep, return_inverse=True)  # pixels to solve; position of each target's

    # rows each solved pixel returns: ψ rows (direct ops) and row amplitudes (reciprocity)
    direct = [o for o, (_, tr) in enumerate(pattern) if not tr]
    used = set(np.unique(t_op).tolist()) | {0}
    rows_i = np.unique(np.concatenate([src_rows[o] for o in direct if o in used]))
    rows_j = np.unique(np.concatenate([src_rows[o] for o, (_, tr) in enumerate(pattern) if tr and o in used] or [np.zeros(0, np.int64)]))
    if kind == "real":
        # exp(iAt) is symmetric for a real symmetric A: row and column amplitudes agree
        rows_i, rows_j = np.union1d(rows_i, rows_j), np.zeros(0, dtype=np.int64)
    # with gradients and FELIX's rule every matrix holds 000 and rows_i first (fixed positions)
    forced = rows_i if 0 in rows_i else np.concatenate([[0], rows_i])  # rows_i is sorted: 000 first
    plan = _Plan(off=off, thickness=thickness.to(dtype), rows_i=torch.as_tensor(rows_i, dtype=torch.long),
                 rows_j=torch.as_tensor(rows_j, dtype=torch.long), forced=torch.as_tensor(forced, dtype=torch.long),
                 rows_fixed=torch.arange(len(rows_i)) + (0 if 0 in rows_i else 1),
                 kind=kind, threads=threads if needs_grad else 1, bethe=bool(bethe) and m is not None)

    step = max(1, min(chunk, engine_chunk(n, n)))
    starts = list(range(0, len(comp), step))
    parallel = Parallel.of(workers).local()
    if parallel.workers > 1 and not needs_grad and len(comp) > 1:
        per = -(-len(comp) // (2 * parallel.workers))
        starts = list(range(0, len(comp), per))
        ex = parallel.shared_pool()
        futures = [ex.submit(_chunk_intensities, plan, *geometry(comp[b: b + per])) for b in starts]
        parts = [fut.result() for fut in futures]
    else:
        parts = [_chunk_intensities(plan, *geometry(comp[b: b + step])) for b in starts]
    inten_i = torch.cat([p[0] for p in parts])  # (C, T, R_i)
    inten_j = torch.cat([p[1] for p in parts]) if not needs_grad else None

    # fill: target = op · rep → its discs from the representative's rows
    col_i = {b: i for i, b in enumerate(rows_i)}
    col_j = {b: i + len(rows_i) for i, b in enumerate(rows_j)}
    cols = np.array([[(col_j if pattern[o][1] and kind != "real" else col_i)[int(b)] if o in used else 0
                      for b in src_rows[o]] for o in range(len(pattern))])  # (O, R); unused ops: never read
    both = inten_i if inten_j is None or not len(rows_j) else torch.cat([inten_i, inten_j], dim=2)
    full = both[torch.as_tensor(slot)[:, None], :, torch.as_tensor(cols[t_op])]  # (P, R, T)
    full = full.permute(2, 1, 0)
    if pixels is None:
        full = full.reshape(full.shape[0], full.shape[1], size, size)
    if not return_info:
        return full
    info = EngineInfo(n_beams=n, strong_beams=m, symmetry_ops=len(pattern), pixels_computed=len(comp),
                      real_symmetric=kind == "real", dtype=str(dtype).replace("torch.", ""))
    return full, info
