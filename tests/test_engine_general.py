"""The any-zone-axis engine against FELIX's general references (other zones, non-cubic cells, HOLZ,
dark field) and its exact physics: current conservation, origin-shift invariance, gradients."""

from __future__ import annotations

import math
import re
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch

from lacbed_refine.engine import ZoneAxis, zone_beam_pool, simulate_zone
from lacbed_refine.structure import Cell

THICK_A = (500.0, 1000.0, 1500.0, 2000.0)


def _read_run(run: Path):
    """A FELIX reference run: the crystal as full-cell arrays, the settings and the reflections."""
    inp = (run / "felix.inp").read_text()

    def val(key):
        return re.search(rf"^{key}\s.*?=\s*(\S+)", inp, re.M).group(1)

    def vec(key):
        return [int(x) for x in re.search(rf"^{key}\s.*?=\s*\[(.*?)\]", inp, re.M).group(1).split(",")]

    st = gemmi.read_small_structure(str(run / "felix.cif"))
    uc = st.cell
    cell = Cell(uc.a, uc.b, uc.c, uc.alpha, uc.beta, uc.gamma)
    ops = gemmi.GroupOps([gemmi.Op(o) for o in st.symops])
    centring = [np.array(t, float) / gemmi.Op.DEN for t in ops.cen_ops]
    sites = st.get_all_unit_cell_sites()
    atoms = dict(frac=np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites]),
                 Z=np.array([s.element.atomic_number for s in sites]),
                 occupancy=np.array([s.occ for s in sites]),
                 b_iso=np.array([s.u_iso * 8 * math.pi**2 for s in sites]))
    zone = ZoneAxis(vec("IIncidentBeamDirection"), vec("IXDirection"), vec("INormalDirection"))
    refl = [tuple(int(x) for x in line.strip()[1:-1].split(",")) for line in (run / "felix.hkl").read_text().splitlines() if line.strip()]
    settings = dict(voltage=float(val(r"RAcceleratingVoltage \(kV\)")) * 1e3, size=2 * int(val("IPixelCount")),
                    half_width=float(val("ROuterConvergenceAngle")))
    beams = zone_beam_pool(cell, zone, centring, settings["voltage"], g_limit=float(val("RgLimit")))
    absorption = {"0": "none", "1": "proportional", "2": "bird-king"}[val("IAbsorbFLAG")]
    settings["absorption_model"] = absorption
    return cell, zone, atoms, beams, refl, settings, int(val("IMinStrongBeams"))


def _felix_image(run: Path, t: float, hkl, size: int) -> np.ndarray:
    folder = next(run.glob(f"*_Sim_{int(t):04d}A_{size:03d}x{size:03d}"))
    chem = folder.name.split("_")[0]
    name = chem + "_" + "".join(f"{'+' if x >= 0 else '-'}{abs(x)}" for x in hkl) + ".bin"
    return np.fromfile(folder / name, "<f8").reshape(size, size)


@pytest.fixture(scope="module")
def general_refs(shared_dir):
    root = shared_dir / "data" / "felix-reference" / "general"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    return root


@pytest.mark.parametrize("name, pool", [("GaAs-110", 91), ("GaAs-110-bk", 91), ("Si-111", 73), ("TiO2-001", 109), ("GaN-100", 107)])
def test_matches_felix_at_other_zones(general_refs, name, pool):
    """Every disc at every thickness, FELIX's per-pixel beam rule: r ≥ 0.9999 (on a 16×16 subgrid
    of the 64×64 images, to keep the test short; the benchmark compares every pixel)."""
    run = general_refs / name
    cell, zone, atoms, beams, refl, settings, strong = _read_run(run)
    assert len(beams) == pool  # FELIX's own pool (its StructureFactors.txt)
    sf = np.loadtxt(next(run.glob("*_Sim_0500A_*")) / "StructureFactors.txt")
    assert set(map(tuple, sf[:, :3].astype(int))) == set(map(tuple, beams))
    size = settings["size"]
    rows, cols = np.meshgrid(np.arange(1, size, 4), np.arange(2, size, 4), indexing="ij")
    pixels = (rows * size + cols).ravel()
    with torch.no_grad():
        sim = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), reflections=refl, strong_beams=strong,
                            pixels=pixels, mean_absorption=False, **settings).numpy()
    for ti, t in enumerate(THICK_A):
        for ri, hkl in enumerate(refl):
            ref = _felix_image(run, t, hkl, size).ravel()[pixels]
            r = np.corrcoef(ref, sim[ti, ri])[0, 1]
            assert r >= 0.9999, (name, t, hkl, r)
            assert np.abs(ref - sim[ti, ri]).max() < 2e-3


GAAS = dict(frac=np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                           [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]]),
            Z=np.array([31] * 4 + [33] * 4), occupancy=np.ones(8), b_iso=np.array([0.6] * 4 + [0.55] * 4))
F_CENTRING = [(0, 0, 0), (0, .5, .5), (.5, 0, .5), (.5, .5, 0)]


def _gaas_110(n_beams=40):
    cell = Cell.cubic(5.6533)
    zone = ZoneAxis((1, 1, 0), (0, 0, 1))
    beams = zone_beam_pool(cell, zone, F_CENTRING, 200e3, n_beams=n_beams)
    return cell, zone, beams


def test_current_is_conserved_without_absorption():
    cell, zone, beams = _gaas_110()
    with torch.no_grad():
        every = [tuple(int(x) for x in h) for h in beams]
        inten = simulate_zone(GAAS, cell, zone, beams, torch.tensor([300.0, 1200.0]), voltage=200e3, size=8,
                              half_width=0.4, reflections=every)
    assert torch.allclose(inten.sum(1), torch.ones((), dtype=inten.dtype), atol=1e-10)


def test_origin_shift_leaves_a_non_centrosymmetric_pattern_unchanged():
    """GaAs has no centre of symmetry; moving the origin changes every U_g phase, not the pattern."""
    cell, zone, beams = _gaas_110()
    shifted = dict(GAAS, frac=(GAAS["frac"] + np.array([0.137, 0.291, 0.053])) % 1.0)
    kw = dict(voltage=200e3, size=16, half_width=0.5, reflections=[(0, 0, 0), (1, -1, 1), (0, 0, 2)], absorption=5.0)
    with torch.no_grad():
        a = simulate_zone(GAAS, cell, zone, beams, torch.tensor([800.0]), **kw)
        b = simulate_zone(shifted, cell, zone, beams, torch.tensor([800.0]), **kw)
    assert (a - b).abs().max() < 1e-6


def test_gradients_in_coordinates_b_and_thickness():
    cell, zone, beams = _gaas_110(20)
    frac = torch.tensor(GAAS["frac"], dtype=torch.float64, requires_grad=True)
    b = torch.tensor(GAAS["b_iso"], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([400.0], dtype=torch.float64, requires_grad=True)

    def f(frac, b, t):
        atoms = dict(GAAS, frac=frac, b_iso=b)
        return simulate_zone(atoms, cell, zone, beams, t, voltage=200e3, size=4, half_width=0.3,
                             reflections=[(0, 0, 0), (1, -1, 1)], absorption_model=model, absorption=3.0)

    model = "proportional"
    assert torch.autograd.gradcheck(f, (frac, b, t), eps=1e-6, atol=1e-5, rtol=1e-4)
    # Bird–King U′ depends on B through the absorptive form factors too; its coordinates enter
    # only through the same phases as U, checked above
    model = "bird-king"
    assert torch.autograd.gradcheck(lambda b, t: f(frac.detach(), b, t), (b, t), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_zone_axis_checks():
    with pytest.raises(ValueError, match="--x-direction"):
        ZoneAxis((1, 1, 0), (1, 0, 0))
    with pytest.raises(ValueError, match="--zone"):
        ZoneAxis((0, 0, 0), (1, 0, 0))
    with pytest.raises(ValueError, match="--normal"):
        ZoneAxis((0, 0, 1), (1, 0, 0), (1, 0, 0)).normal_vector(Cell.cubic(4.0))


def test_felix_shipped_srtio3_sample_with_bird_king(shared_dir):
    """FELIX's own SrTiO3 sample (Bird–King, 46 discs, 128×128, pool 100, 50 strong beams), every
    disc on a 16×16 subgrid: bright field r ≥ 0.999 and every dark field r ≥ 0.99 (the issue's
    bar; the benchmark shows 1 − r ≈ 1e-8 on every pixel)."""
    from lacbed_felix import felix_beam_pool

    run = shared_dir / "data" / "felix-reference" / "felix-repo-samples" / "samples" / "SrTiO3"
    if not run.is_dir():
        pytest.skip(f"{run} is absent")
    st = gemmi.read_small_structure(str(run / "felix.cif"))
    sites = st.get_all_unit_cell_sites()
    atoms = dict(frac=np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites]),
                 Z=np.array([s.element.atomic_number for s in sites]), occupancy=np.array([s.occ for s in sites]),
                 b_iso=np.array([s.u_iso * 8 * math.pi**2 for s in sites]))
    names = {r: "SrTiO3_" + "".join(f"{'+' if x >= 0 else '-'}{abs(x)}" for x in r) + ".bin"
             for r in (tuple(int(x) for x in line.strip()[1:-1].split(",")) for line in (run / "felix.hkl").read_text().splitlines() if line.strip())}
    refl = [r for r, name in names.items() if (run / "sample_outputs" / name).exists()]
    assert len(refl) == 46
    rows, cols = np.meshgrid(np.arange(3, 128, 8), np.arange(5, 128, 8), indexing="ij")
    pixels = (rows * 128 + cols).ravel()
    with torch.no_grad():
        sim = simulate_zone(atoms, Cell.cubic(st.cell.a), ZoneAxis((0, 0, 1), (1, 0, 0)), felix_beam_pool(st.cell.a, "P", 200e3, n_beams=100),
                            torch.tensor([630.0]), voltage=200e3, size=128, half_width=1.19, reflections=refl, strong_beams=50,
                            absorption_model="bird-king", mean_absorption=False, pixels=pixels).numpy()[0]
    rs = [np.corrcoef(np.fromfile(run / "sample_outputs" / names[r], "<f8")[pixels], sim[i])[0, 1] for i, r in enumerate(refl)]
    assert rs[0] >= 0.999
    assert min(rs[1:]) >= 0.99


def test_bird_king_quadrature_matches_adaptive_integration():
    """The fixed polar quadrature of f′ against scipy's adaptive double integral (FELIX uses
    QUADPACK's dqagi the same way), for Ga at B = 0.6 Å²."""
    from scipy import integrate

    from lacbed_refine.conventions import electron_wavelength, relativistic_gamma
    from lacbed_refine.physics import bird_king_form_factors
    from lacbed_refine.physics.form_factors import form_factor_parameters, form_factors

    params = torch.as_tensor(form_factor_parameters([31], "kirkland"), dtype=torch.float64)

    def f(q2):
        return float(form_factors(torch.tensor([q2], dtype=torch.float64), params, "kirkland")[0, 0])

    b, q = 0.6, 0.7
    integrand = lambda sy, sx: (f((q / 2 + 2 * sx) ** 2 + 4 * sy**2) * f((q / 2 - 2 * sx) ** 2 + 4 * sy**2)
                                * -math.expm1(-2 * b * (sx * sx + sy * sy - q * q / 16)))
    # over the whole quarter plane (the tail matters at 1e-3), split at the form factors' peak
    inner = lambda sx: integrate.quad(lambda sy: integrand(sy, sx), 0, np.inf, epsabs=1e-13, epsrel=1e-11, limit=500)[0]
    val = sum(integrate.quad(inner, lo, hi, epsabs=1e-10, epsrel=1e-8, limit=500)[0] for lo, hi in ((0, q / 4), (q / 4, np.inf)))
    expected = 4 * val * 2 * relativistic_gamma(200e3) * electron_wavelength(200e3)
    got = float(bird_king_form_factors(torch.tensor([q]), [31], torch.tensor([b], dtype=torch.float64), 200e3)[0, 0])
    assert got == pytest.approx(expected, rel=1e-5)
