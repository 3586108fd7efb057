"""The microscope model between a simulation and a measured experiment
(lacbed_refine.refine.experiment_model): geometry, blur, background, correlations, orientation."""

import math

import numpy as np
import pytest
import torch

from lacbed_refine.refine.experiment_model import (
    ORIENTATIONS, background_basis, background_projector, blur_discs, disc_correlations, orient,
    residual_correlation_area, residualise, sample_discs,
)

T = torch.float64


def _smooth_stack(R=3, n=24, seed=0):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] / n
    out = []
    for _ in range(R):
        a, b, c, d = rng.uniform(1, 4, 4)
        out.append(np.cos(2 * math.pi * a * x + b) * np.sin(2 * math.pi * c * y + d) + 2)
    return torch.as_tensor(np.array(out), dtype=T)


def _sample(sim, n, *, rot=0.0, scale=1.0, stretch=0.0, shifts=None, centre=(0.0, 0.0)):
    R, S, _ = sim.shape
    step = 0.01
    return sample_discs(sim, S / 2 * step, n, step, rotation=torch.tensor(math.radians(rot), dtype=T),
                        scale=torch.tensor(scale, dtype=T), stretch=torch.tensor(stretch, dtype=T),
                        centre=torch.tensor(centre, dtype=T),
                        shifts=torch.zeros(R, 2, dtype=T) if shifts is None else torch.as_tensor(shifts, dtype=T))


def test_identity_geometry_returns_the_simulation():
    sim = _smooth_stack()
    out = _sample(sim, 24)
    assert torch.allclose(out, sim, atol=1e-12)


def test_shift_moves_the_image_by_whole_pixels():
    sim = _smooth_stack()
    out = _sample(sim, 24, shifts=[[1.0, 0.0], [0.0, 2.0], [-1.0, -1.0]])
    # disc 0: the zone axis one pixel to the right: measured column j sees simulated column j - 1
    assert torch.allclose(out[0, :, 1:], sim[0, :, :-1], atol=1e-12)
    assert torch.allclose(out[1, 2:, :], sim[1, :-2, :], atol=1e-12)
    assert torch.allclose(out[2, :-1, :-1], sim[2, 1:, 1:], atol=1e-12)


def test_quarter_turn_is_a_rotation_of_the_array():
    sim = _smooth_stack()
    out = _sample(sim, 24, rot=90.0)
    # measured (u, v) sees the tilt R(90°)(u, v) = (−v, u): column −v, row u of the simulation
    expected = torch.flip(sim.transpose(-1, -2), dims=[-2])  # out[i, j] = sim[j, n − 1 − i]
    assert torch.allclose(out, expected, atol=1e-9)


def test_scale_magnifies_about_the_centre():
    sim = _smooth_stack(n=48)
    out = _sample(sim, 24, scale=2.0)
    # measured offset u sees simulated offset 2u: measured pixel centres land on simulated pixel corners
    u = torch.arange(24, dtype=T) - 11.5
    src = 2 * u + 23.5  # simulated pixel coordinate
    lo = src.floor().long()
    assert torch.allclose(out[0, 12, 12], 0.25 * sim[0, lo[12]:lo[12] + 2, lo[12]:lo[12] + 2].sum(), atol=5e-3)


def test_blur_keeps_a_constant_and_spreads_a_point():
    img = torch.ones(1, 20, 20, dtype=T)
    assert torch.allclose(blur_discs(img, torch.tensor(1.5, dtype=T)), img)
    point = torch.zeros(1, 21, 21, dtype=T)
    point[0, 10, 10] = 1.0
    b = blur_discs(point, torch.tensor(1.0, dtype=T))[0]
    prof = b[10].numpy()
    assert abs(prof[11] / prof[10] - math.exp(-0.5)) < 1e-9
    assert abs(float(b.sum()) - 1.0) < 1e-9
    tiny = blur_discs(point, torch.tensor(0.0, dtype=T))
    assert torch.allclose(tiny, point, atol=1e-12)


def _corr_inputs(measured, model, recorded, order):
    R, n, _ = measured.shape
    w = torch.as_tensor(recorded.reshape(R, -1), dtype=T)
    q = background_projector(w, background_basis(n, order))
    m = residualise(torch.as_tensor(measured.reshape(R, -1), dtype=T), w, q)
    return disc_correlations(torch.as_tensor(model, dtype=T), m, w, q)


def test_order_zero_is_pearson_over_recorded_pixels_only():
    rng = np.random.default_rng(1)
    a, b = rng.random((2, 16, 16)), rng.random((2, 16, 16))
    rec = rng.random((2, 16, 16)) > 0.3
    r = _corr_inputs(a, b, rec, 0).numpy()
    for i in range(2):
        assert abs(r[i] - np.corrcoef(a[i][rec[i]], b[i][rec[i]])[0, 1]) < 1e-12
    a2 = a.copy()
    a2[~rec] = 1e6  # unrecorded pixels change nothing
    assert np.allclose(_corr_inputs(a2, b, rec, 0).numpy(), r)


def test_plane_background_is_projected_out():
    sim = _smooth_stack(R=2, n=16).numpy()
    y, x = np.mgrid[0:16, 0:16]
    measured = 3 * sim + 5 + 0.4 * x - 0.7 * y
    rec = np.ones_like(sim, dtype=bool)
    assert np.allclose(_corr_inputs(measured, sim, rec, 1).numpy(), 1.0, atol=1e-12)
    assert (_corr_inputs(measured, sim, rec, 0).numpy() < 0.99).all()


@pytest.mark.parametrize("blur", [0.0, 1.0, 2.0])
def test_residual_correlation_area_is_the_area_a_misfit_spans(blur):
    """White residuals span one pixel; Gaussian-blurred white noise (width s) spans 4π s² pixels
    (its autocorrelation is a Gaussian of width √2 s). Summing inside the first zero of the radial
    mean, with a plane projected out of 48-px discs, recovers 0.7–1.0 of that."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    R, n = 6, 48
    sim = gaussian_filter(rng.normal(size=(R, n, n)), (0, 4, 4)) * 50
    noise = rng.normal(size=(R, n, n))
    if blur:
        noise = gaussian_filter(noise, (0, blur, blur))
    measured = 2 * sim + 3 + 0.1 * noise / noise.std()
    rec = np.ones((R, n, n), dtype=bool)
    rec[0, :10] = False  # unrecorded rows change nothing but the pair counts
    measured[0, :10] = 0.0
    w = torch.as_tensor(rec.reshape(R, -1), dtype=T)
    q = background_projector(w, background_basis(n, 1))
    m = residualise(torch.as_tensor(measured.reshape(R, -1), dtype=T), w, q)
    area, radius = residual_correlation_area(torch.as_tensor(sim, dtype=T), m, w, q)
    if blur == 0:
        assert area == pytest.approx(1.0, abs=0.2) and radius <= 2
    else:
        assert 0.7 * 4 * math.pi * blur ** 2 < area < 1.05 * 4 * math.pi * blur ** 2, area
    # a perfect model leaves nothing to correlate: the area is then the floor, 1
    assert residual_correlation_area(torch.as_tensor(2 * sim, dtype=T),
                                     residualise(torch.as_tensor(2 * sim.reshape(R, -1), dtype=T), w, q), w, q)[0] == 1.0


def test_orientations_are_the_eight_distinct_symmetries_of_the_square():
    a = np.arange(16.0).reshape(4, 4)
    images = {name: orient(a, name) for name in ORIENTATIONS}
    assert len({im.tobytes() for im in images.values()}) == 8
    with pytest.raises(ValueError, match="orientation 'diag'"):
        orient(a, "diag")


def test_model_gradients_match_finite_differences():
    sim = _smooth_stack(R=2, n=20)
    rng = np.random.default_rng(3)
    measured = torch.as_tensor(rng.random((2, 16 * 16)), dtype=T)
    w = torch.ones(2, 256, dtype=T)
    q = background_projector(w, background_basis(16, 1))
    mres = residualise(measured, w, q)

    def f(rot, scale, shifts, blur):
        out = sample_discs(sim, 10 * 0.01, 16, 0.01, rotation=rot, scale=scale, stretch=torch.tensor(0.0, dtype=T),
                           centre=torch.zeros(2, dtype=T), shifts=shifts)
        return disc_correlations(blur_discs(out, blur), mres, w, q).sum()

    args = (torch.tensor(0.05, dtype=T, requires_grad=True), torch.tensor(1.02, dtype=T, requires_grad=True),
            torch.tensor([[0.3, -0.2], [-0.3, 0.2]], dtype=T, requires_grad=True),
            torch.tensor(0.8, dtype=T, requires_grad=True))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5)


def test_sparse_hessian_equals_the_dense_one():
    """The fit's Hessian probes all discs' shifts at once (each disc's shifts touch only its own r):
    it must equal torch's dense Hessian of the same figure of merit."""
    from lacbed_refine.refine.experiment_fit import _geometry_to_vec, _hessian_sparse, _Model, _vec_to_torch
    from lacbed_refine.refine.experiment_model import Geometry

    R, n, S, P = 5, 20, 24, 2
    rng = np.random.default_rng(0)
    m = _Model(rng.random((R, n, n)), rng.random((R, n, n)) > 0.1, np.ones(R), 1, n, 0.02, S / 2 * 0.02)
    m.set_base(torch.rand(R, S, S, dtype=T), torch.rand(P, R, S, S, dtype=T))
    g = Geometry(blur_px=0.8, rotation_deg=1.0).with_discs(R)
    g.shifts = rng.normal(size=(R, 2)) * 0.3
    npix = m.W.sum(-1)

    def f(z):
        return (npix * (1 - m.r(z[:P], _vec_to_torch(z[P:], R)))).sum()

    z = torch.as_tensor(np.concatenate([rng.normal(size=P) * 0.1, _geometry_to_vec(g)]))
    dense = torch.autograd.functional.hessian(f, z).numpy()
    assert np.allclose(_hessian_sparse(f, z, P + 4, R), dense, atol=1e-9 * np.abs(dense).max())
