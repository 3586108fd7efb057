"""Exact physics the Bloch engine must obey: invariances, conservation, limits, stable gradients."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lacbed_refine.structure import Atoms
from lacbed_refine.engine.bloch import excitation_errors, simulate_lacbed
from lacbed_refine.conventions import wavevector_2pi
from lacbed_refine.io.cif import read_cif
from lacbed_refine.engine.geometry import SimulationSettings, tilt_grid
from lacbed_refine.structure.reflections import zolz_beams
from lacbed_refine.engine.propagation import propagate
from lacbed_refine.physics.structure_factors import ug_coefficients

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _pyrite_atoms():
    """FeS2 pyrite, Pa-3, a = 5.418 Å, S at (x, x, x) with x = 0.385: its [001] projection has only
    2mm symmetry, so a 90° rotation is a real test. Built by hand (no CIF needed)."""
    ops = [
        lambda x, y, z: (x, y, z),
        lambda x, y, z: (-x + 0.5, -y, z + 0.5),
        lambda x, y, z: (-x, y + 0.5, -z + 0.5),
        lambda x, y, z: (x + 0.5, -y + 0.5, -z),
    ]
    cyc = [lambda x, y, z: (x, y, z), lambda x, y, z: (z, x, y), lambda x, y, z: (y, z, x)]
    inv = [lambda x, y, z: (x, y, z), lambda x, y, z: (-x, -y, -z)]

    def orbit(p):
        pts = []
        for i in inv:
            for c in cyc:
                for o in ops:
                    q = np.mod(np.array(o(*c(*i(*p)))), 1.0)
                    if not any(np.allclose(np.mod(q - r + 0.5, 1) - 0.5, 0, atol=1e-6) for r in pts):
                        pts.append(q)
        return pts

    fe, s = orbit((0.0, 0.0, 0.0)), orbit((0.385, 0.385, 0.385))
    frac = np.array(fe + s)
    z = np.array([26] * len(fe) + [16] * len(s))
    return Atoms(frac=frac, Z=z, occupancy=np.ones(len(z)), b_iso=np.full(len(z), 0.4)), 5.418


def _run(atoms, a, *, size=32, t=(600.0, 1500.0), n_beams=45, reflections=((0, 0, 0),), dtype=torch.float64, sym=False, **kw):
    settings = SimulationSettings(size=size, half_width=7.266 / a, thicknesses=t, n_beams=n_beams, reflections=reflections, **kw)
    with torch.no_grad():
        stack, info = simulate_lacbed(atoms, a, settings, dtype=dtype, use_symmetry=sym)
    return stack.numpy(), info


def test_pyrite_has_only_2mm_pattern_symmetry():
    atoms, a = _pyrite_atoms()
    assert len(atoms.frac) == 12
    _, info = _run(atoms, a, sym=True)
    assert info.symmetry_ops == 4


def test_origin_shift_leaves_intensities_unchanged():
    atoms, a = _pyrite_atoms()
    ref, _ = _run(atoms, a)
    shifted = atoms.replace( frac=atoms.frac + np.array([0.137, 0.291, 0.05]))
    out, info = _run(shifted, a)
    assert not info.real_symmetric  # a general shift forces the complex Hermitian path
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_rotation_and_mirror_of_crystal_rotate_and_mirror_the_pattern():
    atoms, a = _pyrite_atoms()
    ref, _ = _run(atoms, a)
    x, y, z = atoms.frac.T
    rotated, _ = _run(atoms.replace( frac=np.stack([-y, x, z], 1)), a)  # 90° about [001]
    assert np.abs(rotated - ref).max() > 1e-2  # not 4-fold: the test can fail
    # R: (kx, ky) -> (-ky, kx); I'(R k) = I(k). Rows are ky (down), columns kx: np.rot90 k=-1.
    np.testing.assert_allclose(rotated[0, 0], np.rot90(ref[0, 0], k=-1), atol=1e-8)
    mirrored, _ = _run(atoms.replace( frac=np.stack([-x, y, z], 1)), a)  # mirror (100)
    np.testing.assert_allclose(mirrored[0, 0], ref[0, 0][:, ::-1], atol=1e-8)
    diag, _ = _run(atoms.replace( frac=np.stack([y, x, z], 1)), a)  # mirror (1-10)
    np.testing.assert_allclose(diag[0, 0], ref[0, 0].T, atol=1e-8)


def test_pm3m_crystal_gives_4mm_bright_field():
    c = read_cif(EXAMPLES / "SrTiO3.cif")
    out, _ = _run(c.atoms(), c.a, sym=False, n_beams=60)
    img = out[1, 0]
    for op in (np.rot90(img), img[:, ::-1], img[::-1, :], img.T):
        np.testing.assert_allclose(op, img, atol=1e-9)


def test_worker_processes_give_identical_patterns():
    c = read_cif(EXAMPLES / "SrTiO3.cif")
    settings = SimulationSettings(size=32, half_width=1.0, thicknesses=(500.0, 1500.0), n_beams=45,
                                  reflections=((0, 0, 0), (1, 1, 0)))
    with torch.no_grad():
        one, _ = simulate_lacbed(c.atoms(), c.a, settings, workers=1)
        two, _ = simulate_lacbed(c.atoms(), c.a, settings, workers=2)
    torch.testing.assert_close(one, two, rtol=0, atol=1e-4)  # float32 solves, batched differently


def test_current_is_conserved_without_absorption():
    atoms, a = _pyrite_atoms()
    beams = zolz_beams(a, "P", n_beams=37)
    refl = tuple(tuple(int(v) for v in b) for b in beams)
    out, _ = _run(atoms, a, size=8, n_beams=37, reflections=refl)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-10)


def test_absorption_removes_current():
    atoms, a = _pyrite_atoms()
    beams = zolz_beams(a, "P", n_beams=37)
    refl = tuple(tuple(int(v) for v in b) for b in beams)
    out, _ = _run(atoms, a, size=8, n_beams=37, reflections=refl, absorption=5.0)
    total = out.sum(axis=1)
    assert (total < 1 - 1e-3).all() and (total[1] < total[0]).all()
    # FELIX's convention drops U'_0: without the uniform term some pixels gain current
    felix, _ = _run(atoms, a, size=8, n_beams=37, reflections=refl, absorption=5.0, mean_absorption=False)
    assert felix.sum(axis=1).max() > 1.0
    ratio = out / np.where(felix > 0, felix, 1)
    np.testing.assert_allclose(ratio[0][felix[0] > 1e-6], ratio[0][felix[0] > 1e-6].mean(), rtol=1e-6)


def test_zero_thickness_limit():
    atoms, a = _pyrite_atoms()
    out, _ = _run(atoms, a, size=8, t=(1e-4, 1.0))
    np.testing.assert_allclose(out[0, 0], 1.0, atol=1e-8)
    assert (np.abs(out[1, 0] - 1) < 1e-3).all()


def test_fast_path_agrees_with_reference_path():
    c = read_cif(EXAMPLES / "SrTiO3.cif")
    ref, _ = _run(c.atoms(), c.a, size=32, n_beams=60, dtype=torch.float64, sym=False)
    fast, info = _run(c.atoms(), c.a, size=32, n_beams=60, dtype=torch.float32, sym=True)
    assert info.symmetry_ops == 8 and info.real_symmetric
    assert np.corrcoef(fast.ravel(), ref.ravel())[0, 1] > 0.99999
    assert np.abs(fast - ref).max() < 5e-3


def test_dark_field_with_per_pixel_strong_beams_is_consistent():
    """Requested discs (with their 4mm equivalents) are always kept in the per-pixel beam choice,
    and the symmetry wedge fills equivalent discs as computing every pixel does. Where the count cut
    falls between beams with exactly equal |s_g| (grid coincidences), the two paths may keep
    different beams: that is allowed at a small fraction of pixels only."""
    c = read_cif(EXAMPLES / "SrTiO3.cif")
    refl = ((0, 0, 0), (4, 0, 0), (0, 4, 0), (1, 3, 0), (3, 3, 0))
    wedge, info = _run(c.atoms(), c.a, n_beams=81, strong_beams=30, reflections=refl, sym=True)
    full, _ = _run(c.atoms(), c.a, n_beams=81, strong_beams=30, reflections=refl, sym=False)
    assert info.symmetry_ops == 8 and info.strong_beams == 30
    same = np.isclose(wedge, full, atol=1e-8)
    assert same.mean() > 0.97
    assert np.corrcoef(wedge.ravel(), full.ravel())[0, 1] > 0.9999
    # (0 4 0) is (4 0 0) rotated by 90°: I_{Rg}(Rk) = I_g(k)
    rot = np.isclose(full[:, 2], np.rot90(full[:, 1], k=-1, axes=(1, 2)), atol=1e-8)
    assert rot.mean() > 0.97


def test_kinematic_weak_potential_limit():
    """A very weak crystal (5 % of one H per cell): dark-field intensity follows first-order
    (kinematic) theory, I_g = κ²|U_g|² sin²(s_g t/2)/(s_g/2)² with κ = 4π²/2K, at every pixel."""
    a = 4.0
    atoms = Atoms(frac=np.zeros((1, 3)), Z=np.array([1]), occupancy=np.array([0.05]), b_iso=np.array([0.5]))
    out, _ = _run(atoms, a, size=8, t=(100.0, 400.0), n_beams=9, reflections=((1, 0, 0),))
    big_k = wavevector_2pi(200e3)
    u = ug_coefficients(torch.tensor([[1, 0, 0]]), torch.zeros(1, 3, dtype=torch.float64), [1],
                        torch.tensor([0.05], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64), a,
                        voltage=200e3).abs().item()
    kx, ky = tilt_grid(8, 7.266 / a)
    s = excitation_errors(torch.as_tensor(kx.ravel() * 2 * np.pi), torch.as_tensor(ky.ravel() * 2 * np.pi),
                          torch.tensor([[2 * np.pi / a, 0.0]]), big_k)[:, 0].numpy().reshape(8, 8)
    kappa = 4 * np.pi**2 / (2 * big_k)
    for k, t in enumerate((100.0, 400.0)):
        kin = (kappa * u) ** 2 * np.sin(s * t / 2) ** 2 / (s / 2) ** 2
        np.testing.assert_allclose(out[k, 0], kin, rtol=2e-2, atol=1e-2 * kin.max())


# -- gradients ---------------------------------------------------------------------------------


def test_propagate_gradcheck_random_and_degenerate():
    torch.manual_seed(0)
    n = 5
    rows = torch.tensor([0, 2])
    t = torch.tensor([3.0, 7.5], dtype=torch.float64, requires_grad=True)

    def f(x, t):
        return propagate((x + x.mT) / 2, t, rows, hermitian=True)

    x = torch.randn(3, n, n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x, t))
    # exactly degenerate eigenvalues (0.5 three times), where eigh's own backward divides by zero
    d = torch.zeros(1, n, n, dtype=torch.float64)
    d[0, 0, 1] = d[0, 1, 0] = 0.3
    d[0, 2, 2] = d[0, 3, 3] = d[0, 4, 4] = 0.5
    d.requires_grad_()
    assert torch.autograd.gradcheck(f, (d, t))
    y = torch.randn(2, n, n, dtype=torch.complex128, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, t: propagate(0.3 * y, t, rows, hermitian=False), (y, t))


@pytest.mark.parametrize("hermitian", [True, False])
def test_propagate_in_threads_matches_one_thread(hermitian):
    """Pixels split over 2 and 3 threads give the same amplitudes and gradients as one thread, and
    the threaded backward passes gradcheck."""
    torch.manual_seed(1)
    n, p = 6, 7
    rows = torch.tensor([0, 3])
    dtype = torch.float64 if hermitian else torch.complex128
    x = torch.randn(p, n, n, dtype=dtype)
    x = (x + x.mT) / 2 if hermitian else 0.3 * x
    t = torch.tensor([2.0, 5.0], dtype=torch.float64)
    results = []
    for threads in (1, 2, 3):
        xa, ta = x.clone().requires_grad_(), t.clone().requires_grad_()
        psi = propagate(xa, ta, rows, hermitian=hermitian, threads=threads)
        (psi.abs() ** 2 * torch.linspace(0.5, 2.0, psi.numel()).view_as(psi)).sum().backward()
        results.append((psi.detach(), xa.grad, ta.grad))
    for psi, gx, gt in results[1:]:
        torch.testing.assert_close(psi, results[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(gx, results[0][1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gt, results[0][2], rtol=1e-10, atol=1e-12)
    xg = x[:4].clone().requires_grad_()
    sym = (lambda a: (a + a.mT) / 2) if hermitian else (lambda a: a)  # gradcheck's probes must stay symmetric
    assert torch.autograd.gradcheck(lambda a, b: propagate(sym(a), b, rows, hermitian=hermitian, threads=2),
                                    (xg, t.clone().requires_grad_()))


def test_engine_gradcheck_high_symmetry_crystal():
    """MgO (Fm-3m): B of each species and the thickness, through U_g, the 8-fold wedge and eigh at
    pixels on mirror lines (degenerate eigenvalues)."""
    c = read_cif(Path(__file__).parent / "data" / "felix" / "MgO" / "felix.cif")
    at = c.atoms()
    is_o = torch.as_tensor(at.Z == 8)
    settings = SimulationSettings(size=4, half_width=1.0, thicknesses=(300.0,), n_beams=13)

    def f(b_mg_o, t):
        b = torch.where(is_o, b_mg_o[1], b_mg_o[0])
        atoms = at.replace(b_iso=b)
        stack, info = simulate_lacbed(atoms, c.a, settings, centring="F", thickness=t, dtype=torch.float64)
        assert info.symmetry_ops == 8
        return stack

    b = torch.tensor([0.5, 0.6], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([300.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (b, t), atol=1e-6, rtol=1e-4)


def test_engine_gradcheck_coordinates_low_symmetry():
    atoms, a = _pyrite_atoms()
    frac0 = torch.as_tensor(atoms.frac)
    settings = SimulationSettings(size=4, half_width=0.8, thicknesses=(400.0, 900.0), n_beams=9)

    def f(x):
        frac = frac0.clone()
        frac = frac + torch.nn.functional.pad(x[None, :], (0, 0, 4, 7))  # move one S atom
        stack, _ = simulate_lacbed(atoms.replace( frac=frac), a, settings, dtype=torch.float64)
        return stack

    x = torch.tensor([0.01, -0.02, 0.005], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,), atol=1e-6, rtol=1e-4)


def test_engine_gradcheck_through_symmetry_constrained_parameters():
    """θ (spinel O 32e displacement along (1,1,1), B of each site) and thickness → pattern, with the
    Fd-3m symmetry kept, so the 8-fold wedge and degenerate eigenvalues are on the gradient path."""
    from lacbed_refine.structure.parameters import free_parameters

    c = read_cif(Path(__file__).parent / "data" / "felix" / "MgAl2O4" / "felix.cif")
    fp = free_parameters(c, refine=("xyz", "b"))
    assert sum(k == "xyz" for k in fp.kinds) == 1
    settings = SimulationSettings(size=4, half_width=0.6, thicknesses=(250.0,), n_beams=13)

    def f(theta, t):
        stack, info = simulate_lacbed(fp.atoms(theta), c.a, settings, centring="F", thickness=t, dtype=torch.float64)
        assert info.symmetry_ops == 8
        return stack

    theta = (fp.initial() + 0.01).requires_grad_()
    t = torch.tensor([250.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (theta, t), atol=1e-6, rtol=1e-4)
