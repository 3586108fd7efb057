"""Bloch-wave propagation ψ(t) = exp(i A t) e₀ through the eigen-decomposition of A, with a
backward pass that stays finite at degenerate eigenvalues.

``torch.linalg.eigh``'s own backward divides by eigenvalue gaps and breaks when eigenvalues coincide,
which symmetric crystals produce routinely. The amplitudes are an entire function of A, so we
differentiate the matrix function instead (Daleckiĭ–Kreĭn): with A = C Λ C⁻¹,

    dψ_t = C [(C⁻¹ dA C) ∘ L_t] C⁻¹ e₀,   L_t[i, j] = (e^{iλ_i t} − e^{iλ_j t}) / (λ_i − λ_j),

and write the divided difference as ``i t e^{i(λ_i+λ_j)t/2} sinc((λ_i−λ_j)t/2)``, which is exact and
smooth through λ_i = λ_j. Units: A and λ in rad/Å, t in Å.
"""

from __future__ import annotations

import torch

__all__ = ["propagate"]


def _divided_difference(lam: torch.Tensor, t: torch.Tensor, real: bool = False) -> torch.Tensor:
    """L[i, j] = (e^{iλ_i t} − e^{iλ_j t}) / (λ_i − λ_j), shape (..., n, n), stable at λ_i = λ_j.

    Only n exponentials are taken: the difference quotient is used where |λ_i − λ_j| t/2 is not
    small, and the series i t e^{i(λ_i+λ_j)t/2} (1 − z²/6 + z⁴/120), z = (λ_i − λ_j) t/2, where it is
    (so that rounding never divides by a vanishing gap). The series is evaluated only at those
    entries (the diagonal and near-degenerate pairs, a few per row), and with ``real`` (λ real, the
    Hermitian case) the gaps are real: this function is most of the backward pass's elementwise work.
    """
    e = torch.exp(1j * lam * t)
    lr = lam.real if real else lam
    d = lr[..., :, None] - lr[..., None, :]
    thr = 1e-2 if lam.real.dtype == torch.float64 else 5e-2
    small = (0.5 * t.real) * d.abs() < thr
    out = (e[..., :, None] - e[..., None, :]) / torch.where(small, torch.ones_like(d), d)
    idx = small.nonzero(as_tuple=True)
    batch, i, j = idx[:-2], idx[-2], idx[-1]
    li, lj = lam[(*batch, i)], lam[(*batch, j)]
    z2 = (0.5 * (li - lj) * t) ** 2
    out[idx] = 1j * t * torch.exp(0.5j * (li + lj) * t) * (1 - z2 / 6 + z2 * z2 / 120)
    return out


def _in_threads(fn, threads: int, *batched, shared=()):
    """``fn(*chunks, *shared)`` over ``threads`` chunks of the leading (pixel) axis of ``batched``,
    run in Python threads, results concatenated along that axis (tuples element-wise).

    The eigen-solves and matrix products release the GIL, so on a free core two threads nearly
    halve the time of a gradient evaluation — which worker processes cannot do, because the
    autograd graph lives in this process."""
    p = batched[0].shape[0]
    if threads <= 1 or p < 2 * threads:
        return fn(*batched, *shared)
    from lacbed_refine.runtime import Parallel

    bounds = [round(i * p / threads) for i in range(threads + 1)]
    pool = Parallel("threads", threads).shared_pool()
    parts = list(pool.map(lambda ab: fn(*(t[ab[0]:ab[1]] for t in batched), *shared), zip(bounds, bounds[1:])))
    if isinstance(parts[0], tuple):
        return tuple(None if parts[0][i] is None else torch.cat([q[i] for q in parts]) for i in range(len(parts[0])))
    return torch.cat(parts)


def _decompose(A, thickness, rows, hermitian):
    if hermitian:
        lam, C = torch.linalg.eigh(A)
        c0 = C[..., 0, :].conj()  # C⁻¹ e₀ = C^H e₀ for unitary C
        Cinv = None
    else:
        lam, C = torch.linalg.eig(A)
        Cinv = torch.linalg.inv(C)
        c0 = Cinv[..., :, 0]
    lam_c = lam.to(torch.promote_types(lam.dtype, torch.complex64))
    phase = torch.exp(1j * lam_c[..., None, :] * thickness[:, None].to(lam_c.dtype))  # (P, T, n)
    crow = C[..., rows, :].to(lam_c.dtype)  # (P, R, n)
    psi = torch.einsum("prj,ptj->ptr", crow, phase * c0.to(lam_c.dtype)[..., None, :])
    return psi, lam_c, C, c0, Cinv


class _Propagate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, A, thickness, rows, hermitian, threads=1):
        psi, lam_c, C, c0, Cinv = _in_threads(_decompose, threads, A, shared=(thickness, rows, hermitian))
        ctx.save_for_backward(lam_c, C, c0, Cinv, thickness, rows)
        ctx.hermitian = hermitian
        ctx.real_input = not A.is_complex()
        ctx.threads = threads
        return psi

    @staticmethod
    def backward(ctx, grad_psi):
        lam, C, c0, Cinv, thickness, rows = ctx.saved_tensors
        needs = ctx.needs_input_grad[:2]
        if Cinv is None:
            grads = _in_threads(lambda *b: _backward(*b, None, thickness, rows, ctx.hermitian, ctx.real_input, needs),
                                ctx.threads, lam, C, c0, grad_psi)
        else:
            grads = _in_threads(lambda *b: _backward(*b, thickness, rows, ctx.hermitian, ctx.real_input, needs),
                                ctx.threads, lam, C, c0, grad_psi, Cinv)
        grad_A, grad_t = grads
        if grad_t is not None:
            grad_t = grad_t.reshape(-1, thickness.shape[0]).sum(0)
        return grad_A, grad_t, None, None, None


def _backward(lam, C, c0, grad_psi, Cinv, thickness, rows, hermitian, real_input, needs):
    """Gradients of one chunk of pixels: dL/dA (P, n, n) and the per-pixel dL/dt (P, T)."""
    cdt = lam.dtype
    Cc = C.to(cdt)
    c0 = c0.to(cdt)
    crow = Cc[..., rows, :]
    # v_t = C^H G_t restricted to the output rows: (P, T, n)
    v = torch.einsum("prj,ptr->ptj", crow.conj(), grad_psi)
    grad_A = grad_t = None
    if needs[0]:
        B = None
        for k in range(thickness.shape[0]):
            L = _divided_difference(lam, thickness[k].to(cdt), real=hermitian)
            term = L * (c0[..., :, None] * v[..., k, None, :].conj())
            B = term if B is None else B + term
        if hermitian and real_input and not C.is_complex():
            # real symmetric A, real C: Re(C B Cᵀ)ᴴ = C Re(B)ᵀ Cᵀ, two real products instead of
            # two complex ones (a quarter of the work)
            grad_A = C @ B.real.mT.to(C.dtype) @ C.mT
        else:
            Q = Cc @ B @ (Cc.mH if hermitian else Cinv)
            grad_A = Q.mH
            if real_input:
                grad_A = grad_A.real
    if needs[1]:
        dphase = 1j * lam[..., None, :] * torch.exp(1j * lam[..., None, :] * thickness[:, None].to(cdt))
        dpsi = torch.einsum("prj,ptj->ptr", crow, dphase * c0[..., None, :])
        grad_t = (grad_psi.conj() * dpsi).real.sum(dim=(-1,))  # (P, T)
    return grad_A, grad_t


def propagate(A: torch.Tensor, thickness: torch.Tensor, rows: torch.Tensor, *, hermitian: bool, threads: int = 1) -> torch.Tensor:
    """Beam amplitudes after propagation through thicknesses ``thickness``, incident beam e₀.

    Parameters
    ----------
    A : Tensor, shape (P, n, n)
        Structure matrices [rad/Å], real symmetric, Hermitian, or (with absorption) general.
        Beam 0 is the incident (000) beam.
    thickness : Tensor, shape (T,)
        Specimen thicknesses [Å].
    rows : Tensor of long, shape (R,)
        Beam indices whose amplitudes are returned.
    hermitian : bool
        True for real-symmetric/Hermitian A (no absorption): ``eigh`` and C⁻¹ = C^H.
    threads : int
        Python threads splitting the pixels, forward and backward (for gradient evaluations on
        a machine with free cores; each thread's torch ops run single-threaded).

    Returns
    -------
    psi : Tensor, complex, shape (P, T, R)
    """
    return _Propagate.apply(A, thickness, rows, hermitian, threads)
