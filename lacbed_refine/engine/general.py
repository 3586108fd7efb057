"""Bloch-wave LACBED for any crystal at any zone axis, FELIX's formulation (felix-spec §3.6),
differentiable in the atoms' coordinates, B, occupancies and the thickness.

Per pixel: tilted wave vector k′ = (k_x, k_y, √(K² − k_x² − k_y²)) in the microscope frame
(:mod:`.zone`); exact excitation errors s_g for every pool beam (HOLZ included); structure matrix
A = diag(s_g) + 4π² U_{g_i − g_j} / 2K (U₀₀ = 0, 2π units), optionally FELIX's per-pixel strong-beam
rule, then divided by √(f_i f_j) with the surface-normal factor f_g = 1 + g·n̂/(k′·n̂); ψ(t) = exp(iAt) e₀
for all thicknesses from one decomposition (:mod:`lacbed_refine.engine.propagation`); I_g = |ψ_g|² / f_g.

This path computes every pixel (no symmetry wedge yet); the [001] cubic engine
(:mod:`lacbed_refine.engine.bloch`) keeps its faster specialised path.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lacbed_refine.engine.bloch import beam_pool, felix_strong_mask
from lacbed_refine.conventions import wavevector_2pi
from lacbed_refine.engine.geometry import tilt_grid
from lacbed_refine.physics.absorption import ABSORPTION_MODELS, absorptive_ug
from lacbed_refine.engine.propagation import propagate
from lacbed_refine.runtime import single_thread
from lacbed_refine.structure.cell import Cell
from lacbed_refine.physics.structure_factors import ug_for_cell
from lacbed_refine.engine.zone import ZoneAxis, beam_vectors, excitation_errors_3d, normal_factor, tilted_wavevectors

__all__ = ["simulate_zone"]


def simulate_zone(
    atoms: dict,
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
) -> torch.Tensor:
    """LACBED intensities of a crystal at a zone axis.

    Parameters
    ----------
    atoms : dict
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
        Real precision of the eigenproblem.
    pixels : ndarray of int, optional
        Flat pixel indices (row-major) to compute; default all. The result then has shape (T, R, P).
    chunk : int
        Pixels per batched eigen-decomposition.
    threads : int
        Python threads over the pixels of each chunk.

    Returns
    -------
    Tensor, shape (T, R, size, size), or (T, R, P) with ``pixels``; fractions of the incident beam.
    """
    beams = np.asarray(beams, dtype=np.int64)
    pool = beam_pool(beams)
    n = pool.size
    out_idx = torch.as_tensor([pool.index_of(r) for r in reflections])
    big_k = wavevector_2pi(voltage)

    frac = torch.as_tensor(atoms["frac"], dtype=torch.float64)
    occ = torch.as_tensor(atoms["occupancy"], dtype=torch.float64)
    b = torch.as_tensor(atoms["b_iso"], dtype=torch.float64)
    u_diffs = ug_for_cell(pool.diffs, frac, atoms["Z"], occ, b, cell, voltage=voltage, table=form_factors)
    if absorption_model not in ABSORPTION_MODELS:
        raise ValueError(f"absorption model {absorption_model!r}: use one of {', '.join(ABSORPTION_MODELS)}")
    u_abs = None
    if absorption_model == "proportional" and absorption:
        u_abs = 1j * (absorption / 100.0) * u_diffs
    elif absorption_model == "bird-king":
        u_abs = absorptive_ug(pool.diffs, frac, atoms["Z"], occ, b, cell, voltage=voltage)
    coef = 4 * math.pi**2 / (2 * big_k)  # U [Å⁻²] → structure-matrix element [rad/Å]
    u_total = u_diffs if u_abs is None else u_diffs + u_abs
    dindex = torch.as_tensor(pool.diff_index)
    eye = torch.eye(n, dtype=torch.float64)
    off = coef * u_total[dindex] * (1 - eye)  # U₀₀ = U′₀₀ = 0 off the diagonal, as FELIX
    if u_abs is not None and mean_absorption:
        # the uniform attenuation i·U′₀ that FELIX leaves out (its Bloch diagonal is overwritten)
        off = off + coef * u_abs[int(pool.diff_index[0, 0])] * eye
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    off = off.to(cdtype)
    u0 = u_total.detach()[dindex[:, 0]].abs()  # FELIX tests strength with the absorbing U

    g = torch.as_tensor(beam_vectors(cell, zone, beams))
    normal = zone.normal_vector(cell)
    kx, ky = tilt_grid(size, half_width)
    kx, ky = kx.ravel() * 2 * math.pi, ky.ravel() * 2 * math.pi
    if pixels is not None:
        pixels = np.asarray(pixels, dtype=np.int64)
        kx, ky = kx[pixels], ky[pixels]
    k = tilted_wavevectors(kx, ky, big_k)
    thickness = torch.as_tensor(thickness).to(dtype)
    hermitian = u_abs is None

    out = []
    with single_thread():
        for start in range(0, len(k), chunk):
            kc = k[start : start + chunk]
            s = excitation_errors_3d(kc, g, big_k)  # (P, n)
            f = normal_factor(kc, g, normal)  # (P, n)
            A = off.expand(len(kc), n, n)
            if strong_beams is not None and strong_beams < n:
                keep = felix_strong_mask(s, u0, int(strong_beams))
                A = A * (keep[:, :, None] & keep[:, None, :]).to(cdtype)
            A = A + torch.diag_embed(s.to(cdtype))
            scale = torch.rsqrt(f[:, :, None] * f[:, None, :]).to(cdtype)
            psi = propagate(A * scale, thickness, out_idx, hermitian=hermitian, threads=threads)  # (P, T, R)
            inten = (psi.real**2 + psi.imag**2) / f[:, None, out_idx].to(psi.real.dtype)
            out.append(inten)
    inten = torch.cat(out, dim=0).permute(1, 2, 0)  # (T, R, P)
    if pixels is None:
        inten = inten.reshape(inten.shape[0], inten.shape[1], size, size)
    return inten
