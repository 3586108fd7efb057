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
from lacbed_refine.structure import Atoms, Cell

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
    atoms = Atoms(frac=np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites]),
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


GAAS = Atoms(frac=np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
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
    shifted = GAAS.replace(frac=(GAAS.frac + np.array([0.137, 0.291, 0.053])) % 1.0)
    kw = dict(voltage=200e3, size=16, half_width=0.5, reflections=[(0, 0, 0), (1, -1, 1), (0, 0, 2)], absorption=5.0)
    with torch.no_grad():
        a = simulate_zone(GAAS, cell, zone, beams, torch.tensor([800.0]), **kw)
        b = simulate_zone(shifted, cell, zone, beams, torch.tensor([800.0]), **kw)
    assert (a - b).abs().max() < 1e-6


def test_gradients_in_coordinates_b_and_thickness():
    cell, zone, beams = _gaas_110(20)
    frac = torch.tensor(GAAS.frac, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(GAAS.b_iso, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([400.0], dtype=torch.float64, requires_grad=True)

    def f(frac, b, t):
        atoms = GAAS.replace(frac=frac, b_iso=b)
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
    atoms = Atoms(frac=np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites]),
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


# --- the zone's exact symmetry and the fast paths -------------------------------------------------

def _si():
    base = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]])
    frac = (np.concatenate([base, base + .25]) - .125) % 1.0  # Fd-3m origin choice 2: centre at the origin
    return Cell.cubic(5.4309), dict(frac=frac, Z=np.full(8, 14), occupancy=np.ones(8), b_iso=np.full(8, 0.46)), F_CENTRING


def _rutile():
    x = 0.3048
    frac = np.array([[0, 0, 0], [.5, .5, .5], [x, x, 0], [-x % 1, -x % 1, 0], [.5 + x, .5 - x, .5], [.5 - x, .5 + x, .5]])
    atoms = Atoms(frac=frac, Z=np.array([22, 22, 8, 8, 8, 8]), occupancy=np.ones(6), b_iso=np.array([.45, .45, .6, .6, .6, .6]))
    return Cell(4.5937, 4.5937, 2.9587, 90, 90, 90), atoms, [(0, 0, 0)]


def _wurtzite():
    u = 0.377
    frac = np.array([[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, .5], [1 / 3, 2 / 3, u], [2 / 3, 1 / 3, .5 + u]])
    atoms = Atoms(frac=frac, Z=np.array([31, 31, 7, 7]), occupancy=np.ones(4), b_iso=np.array([.35, .35, .45, .45]))
    return Cell(3.189, 3.189, 5.185, 90, 90, 120), atoms, [(0, 0, 0)]


def _gaas():
    return Cell.cubic(5.6533), GAAS, F_CENTRING


# (crystal, zone, x, normal, g_limit (float) or n_beams (int), discs, vertical group, grid part, reciprocity, bright field, pattern ops)
SYMMETRY_CASES = {
    # -43m along [110]: one vertical mirror (y → −y); reciprocity adds the 2-fold: BF 2mm (= mm2, m1_R)
    "GaAs [110]": (_gaas, (1, 1, 0), (0, 0, 1), None, 1.46, [(0, 0, 0), (0, 0, 2), (1, -1, 1), (-1, 1, -1)],
                   "m", "m", True, "2mm", 4),
    # a tilted surface normal keeps the mirror (it lies in the mirror plane) but breaks reciprocity
    "GaAs [110], normal [331]": (_gaas, (1, 1, 0), (0, 0, 1), (3, 3, 1), 1.46, [(0, 0, 0), (1, -1, 1)],
                                 "m", "m", False, "m", 2),
    # Fd-3m along [111]: 3m; of it the grid admits the mirror x → −x; the 30 HOLZ beams rule out
    # reciprocity (BF 3m, not 6mm)
    "Si [111]": (_si, (1, 1, 1), (1, -1, 0), None, 1.8, [(0, 0, 0), (2, -2, 0), (-2, 2, 0), (2, 0, -2)],
                 "3m", "m", False, "3m", 2),
    # P4_2/mnm along [001]: 4mm (the 4_2 screw and n glides enter only as phases), all on the grid
    "rutile [001]": (_rutile, (0, 0, 1), (1, 0, 0), None, 1.14, [(0, 0, 0), (2, 0, 0), (1, 1, 0), (1, -1, 0)],
                     "4mm", "4mm", True, "4mm", 8),
    # P6_3mc along [100]: the c-glide is the one vertical mirror; BF 2mm
    "GaN [100]": (_wurtzite, (1, 0, 0), (0, 0, 1), None, 1.4, [(0, 0, 0), (0, 0, 1), (0, 1, 1), (0, 1, -1)],
                  "m", "m", True, "2mm", 4),
    # hexagonal [001]: 6mm, of which the square grid admits 2mm (the 6- and 3-folds are not used)
    "GaN [001]": (_wurtzite, (0, 0, 1), (1, 0, 0), None, 60, [(0, 0, 0), (1, 0, 0), (1, 1, 0)],
                  "6mm", "2mm", True, "6mm", 4),
    # the same with FELIX's pool rule at RgLimit 1.2: its index box ±3 cuts the rounded-up |g| circle,
    # so the pool itself has only 2mm (mirrors at 30° and 120°, off the grid): the 2-fold is used
    "GaN [001], FELIX's index box": (_wurtzite, (0, 0, 1), (1, 0, 0), None, 1.2, [(0, 0, 0), (1, 0, 0)],
                                     "2mm", "2", True, "2mm", 2),
}


@pytest.mark.parametrize("case", list(SYMMETRY_CASES))
def test_zone_symmetry_is_found_and_the_wedge_is_exact(case):
    """The symmetry found numerically is the zone's, and the wedge filled by it equals every pixel
    solved (float64, FELIX's strong-beam rule, dark-field discs) to 1e-10."""
    from lacbed_refine.engine.general import zone_symmetry

    make, uvw, x, normal, g_limit, discs, name, grid, recip, bf, n_ops = SYMMETRY_CASES[case]
    cell, atoms, centring = make()
    zone = ZoneAxis(uvw, x, normal)
    limit = dict(n_beams=g_limit) if isinstance(g_limit, int) else dict(g_limit=g_limit)
    beams = zone_beam_pool(cell, zone, centring, 200e3, **limit)
    sym = zone_symmetry(atoms, cell, zone, beams, voltage=200e3)
    assert (sym.name, sym.grid_name, sym.reciprocity, sym.bright_field_name, len(sym.pattern_ops)) == (name, grid, recip, bf, n_ops)
    kw = dict(voltage=200e3, size=16, half_width=0.5, reflections=discs, strong_beams=len(beams) - 3, mean_absorption=False)
    with torch.no_grad():
        wedge, info = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), use_symmetry=True, return_info=True, **kw)
        every = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), use_symmetry=False, **kw)
    assert info.symmetry_ops == n_ops and info.pixels_computed < 16 * 16
    assert (wedge - every).abs().max() < 1e-10


def test_wedge_is_exact_with_absorption():
    """Bird–King and proportional absorption (the general eigenproblem, reciprocity through Aᵀ)."""
    cell, atoms, centring = _gaas()
    zone = ZoneAxis((1, 1, 0), (0, 0, 1))
    beams = zone_beam_pool(cell, zone, centring, 200e3, g_limit=1.2)
    for model in ("bird-king", "proportional"):
        kw = dict(voltage=200e3, size=12, half_width=0.5, reflections=[(0, 0, 0), (1, -1, 1), (0, 0, -2)],
                  strong_beams=len(beams) - 2, absorption_model=model, absorption=4.0)
        with torch.no_grad():
            wedge, info = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), return_info=True, **kw)
            every = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), use_symmetry=False, **kw)
        assert info.symmetry_ops == 4 and not info.real_symmetric
        assert (wedge - every).abs().max() < 1e-10


def test_a_few_pixels_through_the_wedge():
    """``pixels=`` solves only the representatives those pixels need (here one op of four)."""
    cell, atoms, centring = _gaas()
    zone = ZoneAxis((1, 1, 0), (0, 0, 1))
    beams = zone_beam_pool(cell, zone, centring, 200e3, n_beams=30)
    kw = dict(voltage=200e3, size=8, half_width=0.4, reflections=[(0, 0, 0), (1, -1, 1), (0, 0, 2)], strong_beams=25)
    with torch.no_grad():
        every = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), use_symmetry=False, **kw)
        for pixels in ([63], [0, 63], [9, 14, 49, 54]):
            some, info = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), pixels=pixels, return_info=True, **kw)
            assert info.pixels_computed <= len(pixels)
            assert (some - every.reshape(4, 3, 64)[..., pixels]).abs().max() < 1e-10


def test_broken_symmetry_is_not_used():
    cell, atoms, centring = _gaas()
    moved = atoms.replace(frac=atoms.frac + np.array([[0.01, 0, 0]] + [[0, 0, 0]] * 7))
    zone = ZoneAxis((1, 1, 0), (0, 0, 1))
    beams = zone_beam_pool(cell, zone, centring, 200e3, n_beams=30)
    from lacbed_refine.engine.general import zone_symmetry

    sym = zone_symmetry(moved, cell, zone, beams, voltage=200e3)
    assert sym.name == "1" and len(sym.pattern_ops) == 2  # reciprocity alone remains (ZOLZ pool)
    with torch.no_grad():
        a = simulate_zone(moved, cell, zone, beams, torch.tensor([900.0]), voltage=200e3, size=8, half_width=0.4,
                          reflections=[(0, 0, 0), (1, -1, 1)])
        b = simulate_zone(moved, cell, zone, beams, torch.tensor([900.0]), voltage=200e3, size=8, half_width=0.4,
                          reflections=[(0, 0, 0), (1, -1, 1)], use_symmetry=False)
    assert (a - b).abs().max() < 1e-10


def test_float32_workers_and_thickness_paths():
    """float32 loses < 5e-4 of the incident intensity; worker processes change nothing; the
    matrix-exponential path (thicknesses on a common step) equals the eigen-decomposition."""
    cell, atoms, centring = _gaas()
    zone = ZoneAxis((1, 1, 0), (0, 0, 1))
    beams = zone_beam_pool(cell, zone, centring, 200e3, g_limit=1.2)
    kw = dict(voltage=200e3, size=16, half_width=0.5, reflections=[(0, 0, 0), (1, -1, 1), (0, 0, 2)],
              strong_beams=len(beams) - 2, mean_absorption=False)
    with torch.no_grad():
        ref = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), **kw)
        single = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), dtype=torch.float32, **kw)
        two = simulate_zone(atoms, cell, zone, beams, torch.tensor(THICK_A), workers=2, **kw)
        bk = dict(kw, absorption_model="bird-king")
        grid = simulate_zone(atoms, cell, zone, beams, torch.tensor([500.0, 1000.0]), **bk)  # exp(iAΔ) powers
        eig = simulate_zone(atoms, cell, zone, beams, torch.tensor([500.0, 1000.0, 1234.5]), **bk)  # eigenvectors
    assert single.dtype == torch.float32
    assert (single.double() - ref).abs().max() < 5e-4
    assert (two - ref).abs().max() < 1e-12
    assert (grid - eig[:2]).abs().max() < 1e-10


def test_strong_mask_without_the_loop_is_felix_rule():
    from lacbed_refine.engine.bloch import felix_strong_mask
    from lacbed_refine.engine.general import _strong_mask

    gen = torch.Generator().manual_seed(3)
    s = (torch.rand(500, 60, generator=gen, dtype=torch.float64) - 0.5) * 0.6
    s[:, 0] = 0
    u0 = torch.rand(60, generator=gen, dtype=torch.float64) * 0.02
    for m in (2, 10, 30, 59):
        assert torch.equal(_strong_mask(s, u0, m), felix_strong_mask(s, u0, m))


@pytest.mark.parametrize("case", ["rutile", "GaAs absorbing"])
def test_gradients_through_the_wedge_for_symmetric_parameters(case):
    """With ``use_symmetry=True`` the wedge (and the real path for rutile) stays on the gradient
    path; B of each species keeps the symmetry, so the gradients are exact. The absorbing case also
    applies FELIX's strong-beam rule (matrices of different sizes, output rows at fixed places)."""
    if case == "rutile":
        cell, atoms, centring = _rutile()
        zone, refl, extra = ZoneAxis((0, 0, 1), (1, 0, 0)), [(0, 0, 0), (1, 1, 0)], {}
    else:
        cell, atoms, centring = _gaas()
        zone, refl, extra = ZoneAxis((1, 1, 0), (0, 0, 1)), [(0, 0, 0), (1, -1, 1)], dict(absorption=3.0, strong_beams=11)
    beams = zone_beam_pool(cell, zone, centring, 200e3, n_beams=15)
    species = torch.as_tensor(atoms.Z == atoms.Z[0])

    def f(b2, t):
        b = torch.where(species, b2[0], b2[1])
        out, info = simulate_zone(atoms.replace( b_iso=b), cell, zone, beams, t, voltage=200e3, size=4, half_width=0.3,
                                  reflections=refl, use_symmetry=True, return_info=True, **extra)
        assert info.symmetry_ops > 1 and info.pixels_computed < 16
        return out

    b2 = torch.tensor([0.5, 0.6], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([400.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (b2, t), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_rutile_001_bird_king_free_o_x():
    # tetragonal cell, the one free coordinate of rutile (O x) moving all four O together, B of
    # both species and thickness, with Bird–King absorption (U′ depends on B and the phases)
    cell, atoms, centring = _rutile()
    zone = ZoneAxis((0, 0, 1), (1, 0, 0))
    beams = zone_beam_pool(cell, zone, centring, 200e3, n_beams=15)
    sign = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 1, 0], [-1, -1, 0], [1, -1, 0], [-1, 1, 0]], dtype=torch.float64)
    base = torch.as_tensor(atoms.frac, dtype=torch.float64)
    ti = torch.as_tensor(atoms.Z == 22)

    def f(dx, b2, t):
        frac = base + sign * dx
        b = torch.where(ti, b2[0], b2[1])
        return simulate_zone(atoms.replace(frac=frac, b_iso=b), cell, zone, beams, t, voltage=200e3, size=4,
                             half_width=0.3, reflections=[(0, 0, 0), (1, 1, 0)], absorption_model="bird-king")

    args = (torch.tensor([0.0], dtype=torch.float64, requires_grad=True),
            torch.tensor([0.45, 0.6], dtype=torch.float64, requires_grad=True),
            torch.tensor([300.0], dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_atoms_from_a_mapping_simulate_the_same_and_bad_ones_are_named():
    """A plain mapping with the four keys is accepted (as an ``Atoms``); a missing key or a wrong
    shape is one line naming it."""
    cell, atoms, centring = _gaas()
    zone = ZoneAxis((1, 1, 0), (0, 0, 1))
    beams = zone_beam_pool(cell, zone, centring, 200e3, n_beams=12)
    kw = dict(voltage=200e3, size=4, half_width=0.3, dtype=torch.float64)
    plain = {"frac": atoms.frac.tolist(), "Z": atoms.Z, "occupancy": atoms.occupancy, "b_iso": atoms.b_iso}
    with torch.no_grad():
        ref = simulate_zone(atoms, cell, zone, beams, torch.tensor([500.0]), **kw)
        assert torch.equal(simulate_zone(plain, cell, zone, beams, torch.tensor([500.0]), **kw), ref)
    with pytest.raises(ValueError, match="missing key.*b_iso"):
        Atoms.coerce({k: v for k, v in plain.items() if k != "b_iso"})
    with pytest.raises(ValueError, match=r"occupancy has shape \(7,\), expected \(8,\)"):
        Atoms.coerce(dict(plain, occupancy=np.ones(7)))


def test_bethe_couplings_bring_few_strong_beams_near_the_whole_pool():
    """GaAs [110], Bird–King, 100 nm, a 115-beam pool: with a third of it strong at each pixel
    (FELIX's rule), dropping the weak beams leaves the discs at 1 − r 0.05–0.18 from the whole pool's;
    keeping them as Bethe couplings brings every disc ≥ 4× closer (measured 6–9×: 0.008–0.020). The
    wedge and reciprocity stay exact with them, and the gradient path (fixed matrix layout) gives the
    same intensities as the forward one."""
    from lacbed_refine.engine.geometry import SimulationSettings

    cell, atoms, centring = _gaas()
    zone = ZoneAxis((1, 1, 0), (0, 0, 1))
    beams = zone_beam_pool(cell, zone, centring, 200e3, g_limit=1.6)
    m = len(beams) // 3
    kw = dict(voltage=200e3, size=16, half_width=0.5, reflections=[(0, 0, 0), (1, -1, 1), (0, 0, 2), (2, -2, 0)],
              absorption_model="bird-king")
    t = torch.tensor([1000.0])

    def one_minus_r(a, b):
        a, b = a.reshape(a.shape[1], -1), b.reshape(b.shape[1], -1)
        a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
        return 1 - (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1))

    with torch.no_grad():
        whole = simulate_zone(atoms, cell, zone, beams, t, **kw)
        plain = simulate_zone(atoms, cell, zone, beams, t, strong_beams=m, **kw)
        bethe = simulate_zone(atoms, cell, zone, beams, t, strong_beams=m, bethe=True, **kw)
        every = simulate_zone(atoms, cell, zone, beams, t, strong_beams=m, bethe=True, use_symmetry=False, **kw)
    off_plain, off_bethe = one_minus_r(whole, plain), one_minus_r(whole, bethe)
    assert len(beams) == 115 and (off_plain > 0.04).all()
    assert (off_bethe < off_plain / 4).all() and off_bethe.max() < 0.03
    assert (bethe - every).abs().max() < 1e-10
    tg = t.clone().requires_grad_(True)
    graded = simulate_zone(atoms, cell, zone, beams, tg, strong_beams=m, bethe=True, use_symmetry=True, **kw)
    assert (graded.detach() - bethe).abs().max() < 1e-10
    graded.sum().backward()
    assert torch.isfinite(tg.grad).all() and tg.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="--bethe"):
        SimulationSettings(bethe="yes")


def test_bethe_gives_weak_requested_beams_their_first_order_amplitude():
    """Where a requested disc is weak at a pixel, FELIX's rule writes 0; with Bethe couplings the
    disc gets ψ_w = −Σ_h A′_wh ψ_h / A′_ww there instead. GaAs [110], 100 nm, a third of a 115-beam
    pool strong: 004, 3-31 and 006 are weak at 32, 68 and 140 of 256 pixels, where the first-order
    amplitude halves the error against the whole pool (relative L1 0.49–0.58, 1 for the zeros), the
    same through the wedge and the gradient path."""
    cell, atoms, centring = _gaas()
    zone = ZoneAxis((1, 1, 0), (0, 0, 1))
    beams = zone_beam_pool(cell, zone, centring, 200e3, g_limit=1.6)
    m = len(beams) // 3
    kw = dict(voltage=200e3, size=16, half_width=0.5, absorption_model="bird-king",
              reflections=[(0, 0, 0), (0, 0, 4), (3, -3, 1), (0, 0, 6)])
    t = torch.tensor([1000.0])
    with torch.no_grad():
        whole = simulate_zone(atoms, cell, zone, beams, t, **kw)
        plain = simulate_zone(atoms, cell, zone, beams, t, strong_beams=m, **kw)
        bethe = simulate_zone(atoms, cell, zone, beams, t, strong_beams=m, bethe=True, **kw)
        every = simulate_zone(atoms, cell, zone, beams, t, strong_beams=m, bethe=True, use_symmetry=False, **kw)
    zero = plain == 0
    assert zero[0, 0].sum() == 0 and (zero[0, 1:].sum((1, 2)) >= 20).all()
    err = ((bethe - whole).abs() * zero).sum((0, 2, 3)) / (whole.abs() * zero).sum((0, 2, 3)).clamp_min(1e-30)
    assert (bethe[zero] > 0).all() and (err[1:] < 0.7).all()
    assert (bethe - every).abs().max() < 1e-10
    graded = simulate_zone(atoms, cell, zone, beams, t.clone().requires_grad_(True), strong_beams=m, bethe=True,
                           use_symmetry=True, **kw)
    assert (graded.detach() - bethe).abs().max() < 1e-10


def test_bethe_at_cubic_001_runs_on_the_general_engine():
    """``SimulationSettings(bethe=True)`` on a cubic crystal at [001] is not dropped by the [001]
    engine: it goes to the general one, whose Bethe discs differ from the plain ones."""
    from lacbed_refine.engine.geometry import SimulationSettings
    from lacbed_refine.io.cif import read_cif
    from lacbed_refine.simulators.bloch import simulate_crystal, simulate_general

    gaas = read_cif(Path(__file__).parent / "data" / "crystal_general" / "GaAs.cif")
    kw = dict(voltage=200e3, size=12, half_width=0.2, thicknesses=(1000.0,), n_beams=60, strong_beams=20,
              strong_rule="felix", absorption_model="bird-king", reflections=((0, 0, 0), (2, 0, 0)))
    bethe, _ = simulate_crystal(gaas, SimulationSettings(bethe=True, **kw), precision="reference")
    general, _ = simulate_general(gaas, SimulationSettings(bethe=True, **kw))
    plain, _ = simulate_general(gaas, SimulationSettings(**kw))
    assert np.abs(bethe - general).max() < 1e-6
    assert np.abs(bethe - plain).max() > 1e-3
