"""Refinement: measured-pattern input checks and a fast end-to-end fit on synthetic truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

from lacbed_refine.engine.bloch import simulate_lacbed
from lacbed_refine.io.cif import read_cif
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.structure.parameters import free_parameters
from lacbed_refine.io.images import PatternError, read_pattern, resample_pattern
from lacbed_refine.refine.config import FitConfig
from lacbed_refine.refine.stages import refine
from lacbed_refine_cli.main import cli

SPINEL = Path(__file__).resolve().parents[1] / "examples" / "spinel"


@pytest.fixture
def image():
    return np.random.default_rng(0).random((32, 32))


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".bin", ".img", ".png"])
def test_read_pattern_formats(tmp_path, image, suffix):
    path = tmp_path / f"p{suffix}"
    if suffix == ".tif":
        tifffile.imwrite(path, image.astype(np.float32))
    elif suffix == ".npy":
        np.save(path, image)
    elif suffix in (".bin", ".img"):
        image.astype("<f8").tofile(path)
    else:
        import matplotlib.image

        matplotlib.image.imsave(path, image, cmap="gray", vmin=0, vmax=1)
    data = read_pattern(path)
    assert data.shape == (32, 32)
    tol = 1e-2 if suffix == ".png" else 1e-6  # PNG holds 8 bits
    assert np.corrcoef(data.ravel(), image.ravel())[0, 1] > 1 - tol


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: np.save(p, np.full((8, 8), np.nan)), "NaN"),
        (lambda p: np.save(p, np.zeros((2, 8, 8)) + np.arange(8)), "one 2-D image"),
        (lambda p: np.save(p, np.ones((8, 8))), "constant"),
        (lambda p: p.write_bytes(b""), "empty file"),
    ],
)
def test_bad_patterns_give_one_line_errors(tmp_path, make, words):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(PatternError, match=words) as err:
        read_pattern(path)
    assert "\n" not in str(err.value) and "bad.npy" in str(err.value)


def test_bin_of_wrong_length_is_rejected(tmp_path):
    path = tmp_path / "x.bin"
    np.zeros(10, "<f8").tofile(path)
    with pytest.raises(PatternError, match="not a square image"):
        read_pattern(path)


def test_resample_is_identity_on_the_same_grid_and_averages_down(image):
    np.testing.assert_allclose(resample_pattern(image, 1.0, 32, 1.0), image)
    half = resample_pattern(image, 1.0, 16, 1.0)
    np.testing.assert_allclose(half, image.reshape(16, 2, 16, 2).mean(axis=(1, 3)), atol=1e-12)


def _spinel_case(size: int, beams: int, o_shift_A: float):
    """Spinel's engine pattern at 100 nm (float64, Poisson noise at 10⁴ counts) on a ``size``² grid
    with ``beams`` beams, and the true structure with O moved ``o_shift_A`` Å along (1 1 1)/√3.
    Returns (truth, settings, measured, start)."""
    truth = read_cif(SPINEL / "MgAl2O4_true.cif")
    settings = SimulationSettings(size=size, half_width=7.266 / truth.a, thicknesses=(1000.0,), n_beams=beams)
    with torch.no_grad():
        stack, _ = simulate_lacbed(truth.atoms(), truth.a, settings, centring="F", dtype=torch.float64)
    measured = np.random.default_rng(1).poisson(stack[0, 0].numpy() * 1e4) / 1e4
    params = free_parameters(truth, refine=("xyz",))
    theta = params.initial()
    theta[list(params.names).index("O1.dx0")] = o_shift_A
    return truth, settings, measured, params.to_crystal(theta)


def test_fast_end_to_end_fit_recovers_truth():
    """Spinel O 32e moved by 0.08 Å and thickness off by 15 nm: the Bloch polish brings both back
    from a noisy (10⁴ counts) pattern on a small grid."""
    truth, settings, measured, start = _spinel_case(16, 21, 0.08)
    result = refine(start, measured, settings, config=FitConfig(refine=("xyz", "thickness"), thickness_nm=115.0, max_iter=30))
    o_err = (np.array(result.crystal.sites[2].frac) - np.array(truth.sites[2].frac)) * truth.a
    assert np.abs(o_err).max() < 0.005
    assert abs(result.thickness_nm - 100.0) < 1.0
    assert result.r > 0.99
    assert [s.name for s in result.stages][:2] == ["thickness scan", "inverse-generator seed"]
    assert all(np.isfinite(result.sigma)) and result.thickness_sigma_nm > 0


def test_fit_command_writes_outputs_and_rejects_bad_input(tmp_path):
    runner = CliRunner()
    bad = tmp_path / "nan.npy"
    np.save(bad, np.full((16, 16), np.nan))
    res = runner.invoke(cli, ["fit", str(SPINEL / "MgAl2O4_start.cif"), str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "NaN" in res.output and "nan.npy" in res.output
    # a thickness-only fit on a 16x16 crop of the example runs in seconds and writes all outputs
    pattern = tifffile.imread(SPINEL / "MgAl2O4_120nm.tif")[24:40, 24:40]
    crop = tmp_path / "crop.npy"
    np.save(crop, pattern)
    res = runner.invoke(cli, ["fit", str(SPINEL / "MgAl2O4_true.cif"), str(crop), "-o", str(tmp_path / "out"),
                              "--refine", "thickness", "--beams", "41", "--half-width", str(7.266 / 8.08 / 4), "--felix-seed"])  # FELIX needs >= 40 beams
    assert res.exit_code == 0, res.output
    for name in ("refined.cif", "report.json", "fit.png", "felix/felix.inp", "felix/felix.cif", "felix/felix.hkl"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert list((tmp_path / "out" / "felix").glob("LR_16x16/*.img"))


def test_b_restart_moves_every_free_b_together_from_their_mean():
    from lacbed_refine.refine.objective import _overall_b_map

    kinds = ["b", "xyz", "b", "occ", "b", "thickness"]
    x0 = np.array([0.2, 0.0, 0.6, 0.9, 1.0, 100.0])
    scale = np.array([0.5, 0.05, 0.5, 0.2, 0.5, 10.0])
    zlo, zhi = -np.ones(6), np.ones(6)
    zlo[4] = zhi[4] = 0.0  # a fixed B stays out of the overall one
    z = np.array([0.4, 0.2, 0.0, 0.5, 0.0, -0.3])  # the polish's optimum: B = 0.4 and 0.6
    M, z_base, bounds = _overall_b_map(kinds, x0, scale, zlo, zhi, z)
    assert M.shape == (6, 5)  # xyz, occ, the fixed B, thickness + one overall B
    x = x0 + (z_base + M @ np.array([0.0, 0.0, 0.0, 0.0, 0.3])) * scale
    assert x[0] == pytest.approx(0.5 + 0.15) and x[2] == pytest.approx(0.5 + 0.15)  # mean 0.5, moved together
    assert x[4] == 1.0 and x[1] == pytest.approx(0.01) and x[3] == pytest.approx(1.0) and x[5] == pytest.approx(97.0)
    lo, hi = zlo - z_base, zhi - z_base
    assert bounds[-1] == (max(lo[0], lo[2]), min(hi[0], hi[2])) and len(bounds) == 5
    assert _overall_b_map(["b", "xyz", "thickness"], x0[:3], scale[:3], zlo[:3], zhi[:3], z[:3]) is None


def test_hard_start_converges_to_the_truth():
    """A hard start (issue 15): spinel's O 0.3 Å off, every B × 2, thickness unknown, Poisson noise.
    The default fit (engine stages; the coordinate multi-start on) lands within 0.005 Å of the true
    O, or of x' = ½ − x, which a [001] pattern cannot tell from it (both orbits project alike)."""
    from dataclasses import replace

    truth, settings, measured, start = _spinel_case(24, 37, -0.3)
    start = start.with_sites([replace(s, b_iso=2 * s.b_iso) for s in start.sites])
    result = refine(start, measured, settings, config=FitConfig(refine=("xyz", "b", "thickness"), seed=False, surrogate=False))
    x, x_true = result.crystal.sites[2].frac[0], truth.sites[2].frac[0]
    err = min(abs(x - x_true), abs(0.5 - x - x_true)) * truth.a * np.sqrt(3)
    assert err < 0.005, err
    assert abs(result.thickness_nm - 100.0) < 1.0
    assert "coordinate starts" in [s.name for s in result.stages]


def test_b_rescue_leaves_a_false_b_thickness_basin(shared_dir):
    """Ba₂MgUO₆ (Fm-3m, real structure from ../shared) at 201.54 nm, 32² px, Poisson noise: started
    where a hard-start fit had stopped — Mg B 2.69 Å², the others 0.61–0.77 (truth 0.5 each), 200.9
    nm — the polish alone stays in that basin (1 − r ~0.023, behind a barrier ~0.09); the B rescue's
    one-B × thickness scan at the polished point finds B 0.5 at 201.6 nm, and its polish reaches the
    truth. Reached (2 busy cores, ~60 s): polish 0.0226 → rescue 0.0001, every B within 0.002 Å²,
    thickness within 0.001 nm."""
    from dataclasses import replace

    cif = shared_dir / "data" / "cubic-cifs" / "amcsd-larixite" / "amcsd-0015370.cif"
    if not cif.is_file():
        pytest.skip(f"{cif} is absent")
    from lacbed_refine.refine.config import FIT_DEFAULT_BEAMS

    truth = read_cif(cif)
    t_nm = 201.54
    settings = SimulationSettings(size=32, half_width=7.266 / truth.a, thicknesses=(t_nm * 10,), n_beams=FIT_DEFAULT_BEAMS)
    with torch.no_grad():
        clean = simulate_lacbed(truth.atoms(), truth.a, settings, centring="F", dtype=torch.float64)[0][0, 0].numpy()
    measured = np.random.default_rng(0).poisson(clean / clean.mean() * 1e4) / 1e4
    wrong = {"Ba1": 0.771, "Mg1": 2.6858, "U1": 0.6462, "O1": 0.6084}
    start = truth.with_sites([replace(s, b_iso=wrong[s.label]) for s in truth.sites])
    res = refine(start, measured, settings, config=FitConfig(refine=("b", "thickness"), thickness_nm=200.9, seed=False,
                                                             surrogate=False, lm_iter=0))
    stages = {s.name: s for s in res.stages}
    polished = min(stages[n].fom for n in stages if n.startswith("Bloch polish"))
    print(f"polish 1-r {polished:.5f}, after the B rescue {1 - res.r:.6f}: {stages['B rescue'].note[-80:]}")
    assert polished > 0.01  # the polish alone stays in the false basin
    assert 1 - res.r < 2e-4
    for got, want in zip(res.crystal.sites, truth.sites):
        assert abs(got.b_iso - want.b_iso) < 0.02, (got.label, got.b_iso)
    assert abs(res.thickness_nm - t_nm) < 0.1


def test_levenberg_marquardt_polish_reaches_the_truth_alone():
    """`--lm-iter`: with L-BFGS-B cut to one iteration per level, the Levenberg–Marquardt steps alone
    take GaAs [001] (B and thickness off) to the truth's noise floor."""
    from dataclasses import replace

    truth = read_cif(Path(__file__).parent / "data" / "crystal_general" / "GaAs.cif")
    t_nm = 60.0
    settings = SimulationSettings(size=32, half_width=7.266 / truth.a, thicknesses=(t_nm * 10,), n_beams=61)
    with torch.no_grad():
        clean = simulate_lacbed(truth.atoms(), truth.a, settings, centring="F", dtype=torch.float64)[0][0, 0].numpy()
    measured = np.random.default_rng(1).poisson(clean / clean.mean() * 1e4) / 1e4
    start = truth.with_sites([replace(s, b_iso=s.b_iso + 0.3) for s in truth.sites])
    common = dict(refine=("b", "thickness"), thickness_nm=58.0, seed=False, surrogate=False, max_iter=1, b_scan=(),
                  screen_iter=1, thickness_starts=1, b_restart=False)
    plain = refine(start, measured, settings, config=FitConfig(**common))
    lm = refine(start, measured, settings, config=FitConfig(**common, lm_iter=8))
    with torch.no_grad():
        sim = simulate_lacbed(truth.atoms(), truth.a, settings, centring="F", dtype=torch.float64)[0][0, 0]
    floor = 1 - float(np.corrcoef(sim.numpy().ravel(), measured.ravel())[0, 1])
    print(f"1-r: one L-BFGS-B iteration {1 - plain.r:.6f}, + Levenberg–Marquardt {1 - lm.r:.6f}, truth {floor:.6f}")
    assert 1 - plain.r > 3 * floor
    assert 1 - lm.r < 1.05 * floor
    for got, want in zip(lm.crystal.sites, truth.sites):
        assert abs(got.b_iso - want.b_iso) < 0.05
    assert abs(lm.thickness_nm - t_nm) < 0.5
    assert any(s.name.startswith("Gauss–Newton polish") for s in lm.stages)
