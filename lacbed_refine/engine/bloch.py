"""Differentiable Bloch-wave LACBED engine for the [001] zone (ZOLZ), FELIX's formulation.

Per pixel (felix-spec §3.6): tilted wave vector k′ = (kₓ, k_y, √(K² − kₓ² − k_y²)); exact excitation
errors s_g; structure matrix A = diag(s_g) + 4π² U_{g_i − g_j}/(2K) (U₀₀ = 0; 2π units); surface-normal
factor (1 for ZOLZ with normal [001]); ψ(t) = exp(i A t) e₀ for all thicknesses from one
decomposition (:mod:`.propagation`); I_g = |ψ_g|².

Speed comes from (measured in ``benchmarks/``): a realifying origin shift, which makes A real
symmetric when there is no absorption (every cubic [001] projection has a 2-fold axis); computing
only a wedge of pixels when the crystal's U_g show an exact pattern symmetry (:mod:`.symmetry`);
batching pixels through one LAPACK call per chunk; float32 where it holds accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lacbed_refine.conventions import wavevector_2pi
from lacbed_refine.engine.geometry import SimulationSettings, tilt_grid
from lacbed_refine.structure.atoms import Atoms
from lacbed_refine.structure.reflections import zolz_beams
from lacbed_refine.engine.propagation import propagate
from lacbed_refine.runtime import Parallel, single_thread
from lacbed_refine.physics.structure_factors import ug_coefficients
from lacbed_refine.engine.pattern_symmetry import DIHEDRAL_OPS, pattern_symmetry, pixel_wedge, realifying_shift

__all__ = ["BeamPool", "beam_pool", "excitation_errors", "felix_strong_mask", "simulate_lacbed", "lacbed_from_ug", "EngineInfo", "engine_chunk"]


@dataclass(frozen=True)
class BeamPool:
    """Beams of a simulation and the beam differences their coupling needs.

    Attributes
    ----------
    hkl : ndarray, shape (n, 3), int
        Beams, 000 first.
    diffs : ndarray, shape (D, 3), int
        Unique differences g_i − g_j.
    diff_index : ndarray, shape (n, n), int
        ``diffs[diff_index[i, j]] == hkl[i] - hkl[j]``.
    """

    hkl: np.ndarray
    diffs: np.ndarray
    diff_index: np.ndarray

    @property
    def size(self) -> int:
        return len(self.hkl)

    def index_of(self, hkl) -> int:
        hkl = np.asarray(hkl, dtype=np.int64)
        hit = np.nonzero((self.hkl == hkl).all(axis=1))[0]
        if len(hit) == 0:
            raise ValueError(f"--reflections: {tuple(int(x) for x in hkl)} is not in the beam pool of {self.size} beams "
                             "(raise --beams or --g-limit)")
        return int(hit[0])


def beam_pool(hkl: np.ndarray) -> BeamPool:
    """Build a :class:`BeamPool` from beams ``hkl`` (shape (n, 3), 000 first)."""
    hkl = np.asarray(hkl, dtype=np.int64)
    if hkl.ndim != 2 or hkl.shape[1] != 3 or not (hkl[0] == 0).all():
        raise ValueError("beam list must have shape (n, 3) with 000 first")
    d = (hkl[:, None, :] - hkl[None, :, :]).reshape(-1, 3)
    # unique rows via one integer key per difference (np.unique over rows is slow for big pools)
    span = 2 * int(np.abs(hkl).max()) + 1
    key = ((d[:, 0] + span) * (2 * span + 1) + (d[:, 1] + span)) * (2 * span + 1) + (d[:, 2] + span)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return BeamPool(hkl=hkl, diffs=d[first], diff_index=inverse.reshape(len(hkl), len(hkl)))


def excitation_errors(kx: torch.Tensor, ky: torch.Tensor, g: torch.Tensor, big_k: float) -> torch.Tensor:
    """FELIX's exact excitation errors s_g [rad/Å, 2π units], positive inside the Ewald sphere.

    In a frame with x ∥ ĝ: k₀ = (−g/2, 0, √(K²−g²/4)) is the Bragg direction and
    k″ = (k′·ĝ, 0, √(K²−(k′·ĝ)²)) the actual one; s_g = −sign(2g·k′ + g²) (g/K) |k₀ − k″|.

    Parameters
    ----------
    kx, ky : Tensor, shape (P,)
        Tangential tilt [rad/Å, 2π units].
    g : Tensor, shape (n, 2)
        In-plane beam vectors [rad/Å, 2π units].
    big_k : float
        K = 2π/λ [rad/Å].

    Returns
    -------
    Tensor, shape (P, n); 0 for the 000 beam.
    """
    gm = torch.linalg.vector_norm(g, dim=-1)  # (n,)
    gsafe = torch.where(gm > 0, gm, torch.ones_like(gm))
    gdotk = kx[:, None] * g[None, :, 0] + ky[:, None] * g[None, :, 1]  # (P, n)
    kg = gdotk / gsafe
    # |k0 - k''|^2 = 2 (K^2 - k0·k'')
    k0z = torch.sqrt(big_k**2 - gm**2 / 4)
    kpz = torch.sqrt(big_k**2 - kg**2)
    chord2 = 2 * (big_k**2 - (-gm / 2) * kg - k0z * kpz)
    chord = torch.sqrt(torch.clamp(chord2, min=0))
    s = -torch.sign(2 * gdotk + gm**2) * gm * chord / big_k
    return torch.where(gm > 0, s, torch.zeros_like(s))


@dataclass(frozen=True)
class EngineInfo:
    """What the engine did: beams, symmetry and path (for logs and reports)."""

    n_beams: int
    strong_beams: int | None
    symmetry_ops: int
    pixels_computed: int
    real_symmetric: bool
    dtype: str


def _coupling_strength(s: torch.Tensor, u0: torch.Tensor) -> torch.Tensor:
    """FELIX's perturbation strength |U_g0 / s_g| (shape (P, n)); 000 gets 1000 as in FELIX."""
    strength = u0[None, :] / s.abs().clamp_min(1e-300)
    strength[:, 0] = 1000.0
    return strength


def _strong_selection(s: torch.Tensor, u0: torch.Tensor, m: int, forced: torch.Tensor) -> torch.Tensor:
    """Per-pixel choice of m beams with a fixed count (so pixels batch): the ``forced`` beams (000
    and the requested reflections) first, in their given order, then FELIX's strong beams — those
    with |U_g0/s_g| ≥ 0.5, then the rest by ascending |s_g|. Returns indices, shape (P, m)."""
    f = forced.numel()
    key = s.abs().clone()
    strength = _coupling_strength(s, u0)
    key = torch.where(strength >= 0.5, -1.0 - strength.clamp(max=1e6) * 1e-6, key)
    key[:, forced] = float("inf")
    rest = torch.topk(key, m - f, dim=1, largest=False).indices
    rest = torch.sort(rest, dim=1).values
    return torch.cat([forced.expand(s.shape[0], f), rest], dim=1)


def felix_strong_mask(s: torch.Tensor, u0: torch.Tensor, m: int) -> torch.Tensor:
    """FELIX's strong-beam rule exactly (felix-spec §3.6): strong if |s_g| < S or |U_g0/s_g| ≥ 0.5,
    with S = 0.005, 0.010, … [rad/Å] the first value giving at least m beams at that pixel.
    Returns a bool mask, shape (P, n); the count varies per pixel."""
    strength = _coupling_strength(s, u0) >= 0.5
    a = s.abs()
    limit = torch.full((s.shape[0], 1), 0.005, dtype=s.dtype, device=s.device)
    mask = (a < limit) | strength
    while True:
        short = mask.sum(1) < m
        if not bool(short.any()):
            return mask
        limit = torch.where(short[:, None], limit + 0.005, limit)
        mask = (a < limit) | strength


@dataclass(frozen=True)
class _ChunkSpec:
    """Everything a chunk of pixels needs besides its excitation errors (picklable for workers)."""

    off: torch.Tensor
    thickness: torch.Tensor
    rows_fixed: torch.Tensor
    rows_sel: torch.Tensor
    forced: torch.Tensor
    u0: torch.Tensor
    m: int | None
    strong_rule: str
    hermitian: bool
    threads: int = 1


def _chunk_intensities(spec: _ChunkSpec, s: torch.Tensor) -> torch.Tensor:
    """|ψ|² of the output rows for pixels with excitation errors ``s`` (P, n): shape (P, T, R′)."""
    off, n = spec.off, spec.off.shape[-1]
    if spec.m is None:
        A = off.expand(s.shape[0], n, n) + torch.diag_embed(s.to(off.dtype))
        rows = spec.rows_fixed
    elif spec.strong_rule == "felix":
        keep = felix_strong_mask(s, spec.u0, spec.m)
        A = off * (keep[:, :, None] & keep[:, None, :]).to(off.dtype) + torch.diag_embed(s.to(off.dtype))
        rows = spec.rows_fixed
    else:
        sel = _strong_selection(s, spec.u0, spec.m, spec.forced)  # (P, m), forced beams first
        A = off[sel[:, :, None], sel[:, None, :]] + torch.diag_embed(torch.gather(s, 1, sel).to(off.dtype))
        rows = spec.rows_sel
    psi = propagate(A, spec.thickness, rows, hermitian=spec.hermitian, threads=spec.threads)
    return psi.real**2 + psi.imag**2


def lacbed_from_ug(
    pool: BeamPool,
    u_diffs: torch.Tensor,
    a: float,
    thickness: torch.Tensor,
    *,
    voltage: float,
    size: int,
    half_width: float,
    reflections=((0, 0, 0),),
    strong_beams: int | None = None,
    absorption: float = 0.0,
    mean_absorption: bool = True,
    dtype: torch.dtype = torch.float32,
    use_symmetry: bool = True,
    chunk: int = 1024,
    progress=None,
    strong_rule: str = "count",
    workers: int = 1,
) -> tuple[torch.Tensor, EngineInfo]:
    """LACBED intensities from the U of every beam difference.

    Parameters
    ----------
    pool : BeamPool
    u_diffs : Tensor, complex, shape (D,)
        U [Å⁻²] of ``pool.diffs`` (may carry autograd history).
    a : float
        Cubic cell edge [Å].
    thickness : Tensor, shape (T,)
        Thicknesses [Å] (may require grad).
    voltage : float
        [V].
    size : int
        Pattern edge [pixels].
    half_width : float
        Tilt half-width [Å⁻¹, 1/d units].
    reflections : sequence of (h, k, l)
        Beams to return; must be in the pool.
    strong_beams : int, optional
        Beams per pixel chosen by excitation error; None uses the whole pool everywhere.
    strong_rule : {"count", "felix"}
        "count": exactly ``strong_beams`` beams per pixel, solved as a smaller matrix (fast);
        "felix": FELIX's rule (at least ``strong_beams``, count varies per pixel), emulated by
        decoupling the other beams in the full matrix — for reproducing FELIX, not for speed.
    workers : int or lacbed_refine.runtime.Parallel
        Worker processes for the eigen-solves of no-gradient CPU calls (each runs one thread; the
        pool is created on first use and kept, start-up ~0.1–1 s once per process); for calls that
        need gradients, Python threads over the pixels instead (forward and backward). A
        :class:`Parallel` policy (``threads`` or ``processes``) may be passed instead of a count.
    absorption : float
        Proportional absorption [%]: U' = i (absorption/100) U.
    mean_absorption : bool
        Keep the g = 0 term of U' (uniform attenuation). FELIX drops it (its Bloch diagonal is
        overwritten), which lets some pixels gain current; set False to compare with FELIX.
    dtype : torch.float32 or torch.float64
        Real precision of the eigenproblem.
    use_symmetry : bool
        Compute only a wedge when the crystal has exact pattern symmetry.
    chunk : int
        Pixels per batched eigen-decomposition.
    progress : callable, optional
        Called with the number of pixels finished after each chunk.

    Returns
    -------
    intensities : Tensor, shape (T, R, size, size), real ``dtype``
    info : EngineInfo
    """
    with single_thread():
        return _lacbed_from_ug(
            pool, u_diffs, a, thickness, voltage=voltage, size=size, half_width=half_width,
            reflections=reflections, strong_beams=strong_beams, absorption=absorption,
            mean_absorption=mean_absorption, dtype=dtype, use_symmetry=use_symmetry, chunk=chunk,
            progress=progress, strong_rule=strong_rule, workers=workers,
        )


def _lacbed_from_ug(
    pool, u_diffs, a, thickness, *, voltage, size, half_width, reflections, strong_beams, absorption,
    mean_absorption, dtype, use_symmetry, chunk, progress, strong_rule, workers,
):
    if strong_rule not in ("count", "felix"):
        raise ValueError(f"strong_rule must be 'count' or 'felix', got {strong_rule!r}")
    device = u_diffs.device
    n = pool.size
    big_k = wavevector_2pi(voltage)
    out_idx = np.array([pool.index_of(r) for r in reflections], dtype=np.int64)

    d2 = pool.diffs[:, :2]
    u_np = u_diffs.detach().cpu().numpy().astype(np.complex128)
    tau = realifying_shift(d2, u_np)
    ops = pattern_symmetry(d2, u_np) if use_symmetry else [np.eye(2, dtype=np.int64)]

    u = u_diffs
    if tau is not None:
        shift = torch.as_tensor(np.exp(2j * np.pi * (d2 @ tau)), device=device, dtype=u.dtype)
        u = u * shift
    real_path = tau is not None and absorption == 0.0
    cdtype = torch.complex64 if dtype == torch.float32 else torch.complex128
    coupling = (4 * math.pi**2 / (2 * big_k)) * u  # (D,)
    if absorption:
        coupling = coupling * (1 + 1j * absorption / 100.0)
    dindex = torch.as_tensor(pool.diff_index, device=device)
    off = coupling[dindex]  # (n, n)
    off = off * (1 - torch.eye(n, dtype=off.real.dtype, device=device))  # U_00 = 0, as FELIX
    off = off.real.to(dtype) if real_path else off.to(cdtype)
    if absorption and mean_absorption:
        # i·(p/100)·4π²U₀/2K on the diagonal: the uniform attenuation FELIX leaves out
        zero = int(pool.diff_index[0, 0])
        u_mean = (4 * math.pi**2 / (2 * big_k)) * u_diffs[zero].real * (absorption / 100.0)
        off = off + (1j * u_mean).to(cdtype) * torch.eye(n, dtype=cdtype, device=device)

    # Beams needed for the requested outputs at representative pixels: the orbits of the requested
    # reflections under the symmetry ops (I_g(R k) = I_{R⁻¹ g}(k)).
    hk = pool.hkl[:, :2]
    beam_of = {(int(x), int(y)): i for i, (x, y) in enumerate(hk)}
    inv_ops = [np.rint(np.linalg.inv(R)).astype(np.int64) for R in ops]
    # needed[o][r] = pool index of R_o⁻¹ g_r
    needed = np.array([[beam_of[tuple(int(v) for v in Ri @ hk[j])] for j in out_idx] for Ri in inv_ops])
    rows_all = np.unique(needed)
    row_pos = {b: i for i, b in enumerate(rows_all)}

    kx, ky = tilt_grid(size, half_width)
    reps, source, op_index = pixel_wedge(size, ops)
    two_pi = 2 * math.pi
    kx_t = torch.as_tensor(kx.ravel()[reps] * two_pi, dtype=torch.float64, device=device)
    ky_t = torch.as_tensor(ky.ravel()[reps] * two_pi, dtype=torch.float64, device=device)
    g_t = torch.as_tensor(hk * (two_pi / a), dtype=torch.float64, device=device)
    s_all = excitation_errors(kx_t, ky_t, g_t, big_k)  # (P, n) float64
    thickness = thickness.to(dtype)

    # Beams kept at every pixel: 000, then the requested reflections with all their 4mm
    # equivalents in the pool, so the per-pixel choice is the same with or without the wedge and
    # never breaks the pattern's symmetry.
    orbit = [beam_of[key] for R in DIHEDRAL_OPS for j in out_idx
             if (key := tuple(int(v) for v in R @ hk[j])) in beam_of]
    extra = [b for b in dict.fromkeys(list(rows_all) + orbit) if b != 0]
    forced_np = np.asarray([0] + extra, dtype=np.int64)
    forced = torch.as_tensor(forced_np, device=device)
    m = None if strong_beams is None or strong_beams >= n else int(strong_beams)
    if m is not None and strong_rule == "count" and m < len(forced_np):
        raise ValueError(
            f"strong_beams={m} is fewer than the {len(forced_np)} beams that must be kept "
            "(000 and the requested reflections with their symmetry equivalents)"
        )
    u0 = u_diffs.detach()[dindex[:, 0]].abs().to(torch.float64)
    # position of each output row in the solved matrix
    rows_fixed = torch.as_tensor(rows_all, device=device)
    rows_sel = torch.as_tensor([int(np.nonzero(forced_np == r)[0][0]) for r in rows_all], device=device)

    parallel = Parallel.of(workers).local()
    needs_grad = torch.is_grad_enabled() and (off.requires_grad or thickness.requires_grad)
    # gradient evaluations stay in this process (the autograd graph lives here): there the
    # workers become threads over the pixels of each chunk
    spec = _ChunkSpec(off=off, thickness=thickness, rows_fixed=rows_fixed, rows_sel=rows_sel, forced=forced,
                      u0=u0, m=m, strong_rule=strong_rule, hermitian=absorption == 0.0,
                      threads=parallel.workers if needs_grad and device.type == "cpu" else 1)
    starts = list(range(0, len(reps), chunk))
    if parallel.workers > 1 and not needs_grad and device.type == "cpu" and len(starts) > 0:
        # whole chunks (matrix build + solve) go to single-thread worker processes; only the
        # excitation errors travel, so inter-process traffic stays small
        per = -(-len(reps) // (2 * parallel.workers))
        starts = list(range(0, len(reps), per))
        pool = parallel.shared_pool()
        futures = [pool.submit(_chunk_intensities, spec, s_all[b : b + per]) for b in starts]
        chunks = []
        for b, fut in zip(starts, futures):
            chunks.append(fut.result())
            if progress is not None:
                progress(min(b + per, len(reps)))
    else:
        chunks = []
        for b in starts:
            chunks.append(_chunk_intensities(spec, s_all[b : b + chunk]))
            if progress is not None:
                progress(min(b + chunk, len(reps)))
    inten = torch.cat(chunks, dim=0)  # (P, T, R')

    # Fill the full pattern: pixel p = R_o · rep → I_g(p) = I_{R_o⁻¹ g}(rep)
    col_of = np.vectorize(row_pos.get)(needed)  # (O, R)
    gather_col = torch.as_tensor(col_of[op_index], device=device)  # (S, R)
    src = torch.as_tensor(source, device=device)
    full = inten[src[:, None], :, gather_col]  # (S, R, T)
    full = full.permute(2, 1, 0).reshape(thickness.shape[0], len(out_idx), size, size)
    info = EngineInfo(
        n_beams=n,
        strong_beams=m,
        symmetry_ops=len(ops),
        pixels_computed=len(reps),
        real_symmetric=real_path,
        dtype=str(dtype).replace("torch.", ""),
    )
    return full, info


def engine_chunk(n_pool: int, n_matrix: int, *, chunk: int = 1024) -> int:
    """Pixels per batched eigen-solve that fit in this machine's memory, checked before any
    allocation.

    Parameters
    ----------
    n_pool : int
        Beams in the pool (its difference tables take ≈ 32 n_pool² bytes).
    n_matrix : int
        Beams in each pixel's structure matrix (the pool, or the strong beams per pixel).
    chunk : int
        Preferred pixels per solve.

    Raises
    ------
    ValueError
        A pool of more than :data:`~lacbed_refine.engine.geometry.MAX_BEAMS` beams, or one whose tables and
        a single pixel's matrices would not fit in memory (with the estimate in GiB).
    """
    import os

    from lacbed_refine.engine.geometry import MAX_BEAMS

    if n_pool > MAX_BEAMS:
        raise ValueError(f"beam pool of {n_pool} beams (--beams/--g-limit): more than {MAX_BEAMS}; "
                         "lower --g-limit or --beams")
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return chunk
    tables = n_pool ** 2 * 32
    # each pixel: its complex structure matrix, eigenvectors and their inverse (≈ 3 × 16 n² bytes)
    per_pixel = n_matrix ** 2 * 48
    if tables + per_pixel > 0.8 * total:
        raise ValueError(f"beam pool of {n_pool} beams needs about {(tables + per_pixel) / 2 ** 30:.0f} GiB, "
                         f"more than this machine's {total / 2 ** 30:.0f} GiB; use fewer beams")
    return int(max(1, min(chunk, (0.5 * total - tables) // per_pixel)))


def simulate_lacbed(
    atoms: Atoms | dict,
    a: float,
    settings: SimulationSettings,
    *,
    centring: str = "P",
    beams: np.ndarray | None = None,
    thickness: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
    use_symmetry: bool = True,
    device: str | torch.device = "cpu",
    progress=None,
    workers: int = 1,
) -> tuple[torch.Tensor, EngineInfo]:
    """Simulate LACBED patterns of a cubic crystal along [001].

    Parameters
    ----------
    atoms : Atoms or mapping
        The full cell: ``frac`` (N, 3), ``Z`` (N,), ``occupancy`` (N,), ``b_iso`` (N,) [Å²], as
        :meth:`Crystal.atoms` (numpy) or ``FreeParameters.atoms(θ)`` (torch, differentiable).
    a : float
        Cubic cell edge [Å].
    settings : SimulationSettings
    centring : {"P", "F", "I"}
        Lattice centring (first letter of the space-group symbol); selects the beam pool.
    beams : ndarray, shape (n, 3), optional
        Explicit beam list (000 first), e.g. FELIX's pool; overrides the settings' pool rule.
    thickness : Tensor, shape (T,), optional
        Thicknesses [Å] (differentiable); default ``settings.thicknesses``.
    dtype, use_symmetry, progress, workers
        See :func:`lacbed_from_ug`.
    device : str or torch.device

    Returns
    -------
    intensities : Tensor, shape (T, R, size, size)
        Fractions of the incident beam, for ``settings.reflections`` in order.
    info : EngineInfo
    """
    device = torch.device(device)
    if beams is None:
        if settings.n_beams is None and settings.g_limit is None:
            raise ValueError("settings need n_beams or g_limit (or pass beams=)")
        beams = zolz_beams(a, centring, g_limit=settings.g_limit, n_beams=settings.n_beams)
    n_matrix = settings.strong_beams if settings.strong_beams and settings.strong_rule == "count" else len(beams)
    chunk = engine_chunk(len(beams), min(n_matrix, len(beams)))
    pool = beam_pool(beams)
    atoms = Atoms.coerce(atoms)
    frac = torch.as_tensor(atoms.frac, dtype=torch.float64, device=device)
    occ = torch.as_tensor(atoms.occupancy, dtype=torch.float64, device=device)
    b = torch.as_tensor(atoms.b_iso, dtype=torch.float64, device=device)
    u = ug_coefficients(
        torch.as_tensor(pool.diffs, device=device),
        frac,
        atoms.Z,
        occ,
        b,
        a,
        voltage=settings.voltage,
        table=settings.form_factors,
    )
    if thickness is None:
        thickness = torch.as_tensor(settings.thicknesses, dtype=torch.float64, device=device)
    return lacbed_from_ug(
        pool,
        u,
        a,
        thickness,
        voltage=settings.voltage,
        size=settings.size,
        half_width=settings.half_width,
        reflections=settings.reflections,
        strong_beams=settings.strong_beams,
        absorption=settings.absorption,
        mean_absorption=settings.mean_absorption,
        strong_rule=settings.strong_rule,
        dtype=dtype,
        use_symmetry=use_symmetry,
        chunk=chunk,
        progress=progress,
        workers=workers,
    )


