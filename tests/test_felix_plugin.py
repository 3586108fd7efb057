"""FELIX plugin: readers on real FELIX outputs, writers checked against FELIX's reference inputs by
FELIX's own line-position rule, the refinement export, the command group and the entry points."""

from __future__ import annotations

import json
import math
import shutil
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

lf = pytest.importorskip("lacbed_felix", reason="the FELIX plugin is not installed (pip install -e plugins/felix)")

from lacbed_refine.structure.crystal import Site
from lacbed_refine.io.cif import read_cif  # noqa: E402
from lacbed_refine.engine.geometry import SimulationSettings  # noqa: E402
from lacbed_refine.io.images import write_stack  # noqa: E402
from lacbed_felix.cli import felix_group  # noqa: E402

DATA = Path(__file__).parent / "data" / "felix"
RUNS = ("MgO", "Si", "GaAs", "CaF2", "MgAl2O4", "SrTiO3", "MgO-df", "GaAs-df")


# ------------------------------------------------------------------------------------------------
# An independent reading of felix.inp by FELIX's rule: value from column 28, integers (27X,I15),
# reals (27X,F18.9) (a real without a decimal point has 9 implied decimals).
# ------------------------------------------------------------------------------------------------
INT_LINES = (7, 8, 9, 10, 11, 14, 17, 18, 19, 42, 43, 44, 45, 47, 49)
REAL_LINES = (20, 23, 24, 27, 31, 32, 35, 36, 37, 38, 46, 50, 51)
TEXT_LINES = (28, 29, 30, 41, 48)


def fortran_fields(text: str) -> dict[int, object]:
    lines = text.splitlines()
    out: dict[int, object] = {}
    for n in INT_LINES:
        field = lines[n - 1][27:42].replace(" ", "")
        out[n] = int(field) if field else 0
    for n in REAL_LINES:
        field = lines[n - 1][27:45].replace(" ", "")
        out[n] = float(field) if "." in field else (int(field) * 1e-9 if field else 0.0)
    for n in TEXT_LINES:
        out[n] = lines[n - 1][27:].strip().upper() if n != 41 else lines[n - 1].split("=")[1].strip().upper()
    return out


def assert_same_fields(ours: dict, ref: dict, *, rel=1e-9):
    for n in INT_LINES + TEXT_LINES:
        assert ours[n] == ref[n], f"line {n}: {ours[n]!r} != {ref[n]!r}"
    for n in REAL_LINES:
        assert ours[n] == pytest.approx(ref[n], rel=rel, abs=1e-12), f"line {n}: {ours[n]!r} != {ref[n]!r}"


def assert_same_input(a, b):
    for field in (f for f, spec in a.__dataclass_fields__.items() if spec.compare):  # not where it was read from
        va, vb = getattr(a, field), getattr(b, field)
        if isinstance(va, float):
            assert va == pytest.approx(vb, rel=1e-9, abs=1e-12), field
        else:
            assert va == vb, field


def run_settings(name: str, crystal) -> SimulationSettings:
    """The reference runs' settings as their README states them: [001], 200 kV, 128x128, half-width
    5/a, 500-2000 Å, pool |g| <= 8.95/a (F lattices) or 5.95/a (SrTiO3), every pool beam strong."""
    chem = name.removesuffix("-df")
    reach = 5.95 if chem == "SrTiO3" else 8.95
    refl = ((0, 0, 0), (2, 0, 0), (-2, 0, 0), (0, 2, 0), (2, 2, 0), (-2, 2, 0), (4, 0, 0), (4, 2, 0))
    return SimulationSettings(
        voltage=200e3,
        size=128,
        half_width=5.0 / crystal.a,
        thicknesses=(500.0, 1000.0, 1500.0, 2000.0),
        g_limit=round(reach / crystal.a, 6),
        strong_beams=None,
        reflections=refl if name.endswith("-df") else ((0, 0, 0),),
    )


# ------------------------------------------------------------------------------------------------
# felix.inp
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["MgO", "GaAs", "SrTiO3"])
def test_felix_inp_for_bundled_runs_matches_reference(name, tmp_path):
    folder = DATA / name
    crystal = read_cif(folder / "felix.cif")
    inp = lf.felix_input_for(crystal, run_settings(name, crystal))
    path = lf.write_felix_inp(inp, tmp_path / "felix.inp")
    ours, ref = fortran_fields(path.read_text()), fortran_fields((folder / "felix.inp").read_text())
    assert_same_fields(ours, ref)
    assert_same_input(lf.read_felix_inp(path), lf.read_felix_inp(folder / "felix.inp"))


def test_felix_inp_for_every_reference_run(reference_runs, tmp_path):
    for name in RUNS:
        folder = reference_runs / name
        crystal = read_cif(folder / "felix.cif")
        settings = run_settings(name, crystal)
        text = lf.format_felix_inp(lf.felix_input_for(crystal, settings))
        assert_same_fields(fortran_fields(text), fortran_fields((folder / "felix.inp").read_text()))
        # and our own reader agrees with FELIX's rule on both
        (tmp_path / "felix.inp").write_text(text)
        ours, ref = lf.read_felix_inp(tmp_path / "felix.inp"), lf.read_felix_inp(folder)
        assert_same_input(ours, ref)
        assert ours.thicknesses == (500.0, 1000.0, 1500.0, 2000.0)


def test_felix_inp_for_felix_sample_v13(shared_dir, tmp_path):
    sample = shared_dir / "data" / "felix-reference" / "felix-repo-samples" / "samples" / "SrTiO3"
    crystal = read_cif(sample / "felix.cif")
    settings = SimulationSettings(size=128, half_width=1.19, thicknesses=(630.0,), n_beams=100, strong_beams=50)
    # Bird-King absorption and the refinement flags are not simulation settings: given as overrides
    inp = lf.felix_input_for(
        crystal, settings, absorb_flag=2, absorption_percent=7.8, debye_waller=0.0, refine_method=2,
        correlation_flag=2, image_processing_flag=4, blur_radius=0.1, n_ugs=40, atomic_sites=(3,),
        print_every=1, simplex_length_scale=10.0, exit_criteria=0.01,
    )
    text = lf.format_felix_inp(inp)
    ref_path = sample / "felix.inp.v13-pool100-strong50"
    assert_same_fields(fortran_fields(text), fortran_fields(ref_path.read_text()))
    assert_same_input(lf.read_felix_inp(ref_path), inp)
    # FELIX's pool for that input (a count cap that cuts a shell) is the one of its stored outputs
    pool = lf.felix_beam_pool(crystal.a, "P", 200e3, n_beams=100)
    stored = lf.read_structure_factors(sample / "sample_outputs")
    assert {tuple(r) for r in pool} == {tuple(r) for r in stored.hkl}


def test_old_layout_is_rejected(shared_dir, tmp_path):
    old = shared_dir / "data" / "felix-reference" / "felix-repo-samples" / "samples" / "SrTiO3" / "felix.inp"
    with pytest.raises(lf.FelixInputError, match=r"line 20 .*RgLimit"):
        lf.read_felix_inp(old)


def test_old_layout_is_rejected_bundled(tmp_path):
    lines = (DATA / "MgO" / "felix.inp").read_text().splitlines()
    del lines[19]  # RgLimit: the pre-2024 layout
    (tmp_path / "felix.inp").write_text("\n".join(lines) + "\n")
    with pytest.raises(lf.FelixInputError, match="line 20 .*expected RgLimit"):
        lf.read_felix_inp(tmp_path)


def test_inp_reader_follows_fortran_fields(tmp_path):
    text = (DATA / "MgO" / "felix.inp").read_text().splitlines()
    text[19] = "RgLimit                   = 3"  # no decimal point: 9 implied decimals
    text[13] = "IPixelCount               =     6 4"  # blanks inside an I15 field are ignored
    text[26] = "ROuterConvergenceAngle    = 1.1870845200000000000000099"  # beyond column 45: not read
    (tmp_path / "felix.inp").write_text("\n".join(text) + "\n")
    inp = lf.read_felix_inp(tmp_path / "felix.inp")
    assert inp.g_limit == pytest.approx(3e-9)
    assert inp.pixel_count == 64
    assert inp.half_width == pytest.approx(1.18708452)


@pytest.mark.parametrize("value", [1.0, 3.0, 2e-5, 0.1 + 0.2, 1.5e-12, 123456.789, 2.124881291547958, 12345678.9])
def test_reals_always_written_readably(value):
    inp = lf.FelixInput(pixel_count=8, half_width=value, voltage=200e3, thickness_initial=500.0,
                        thickness_final=500.0, thickness_delta=10.0, g_limit=1.0)
    line = lf.format_felix_inp(inp).splitlines()[26]
    field = line[27:45].strip()
    assert "." in field and line[45:].strip() == ""
    assert float(field) == pytest.approx(value, rel=1e-8)


def test_refine_mode_and_sites_lines(tmp_path):
    inp = lf.FelixInput(pixel_count=8, half_width=1.0, voltage=200e3, thickness_initial=500.0,
                        thickness_final=900.0, thickness_delta=100.0, g_limit=1.0, refine_mode="db",
                        atomic_sites=(1, 3))
    path = lf.write_felix_inp(inp, tmp_path / "felix.inp")
    lines = path.read_text().splitlines()
    assert lines[40].split("=")[1].strip() == "BD" and "s" not in lines[40].lower()
    assert lines[47].endswith("(1,3)")
    back = lf.read_felix_inp(path)
    assert (back.refine_mode, back.atomic_sites, back.thicknesses) == ("BD", (1, 3), (500.0, 600.0, 700.0, 800.0, 900.0))
    for bad, why in (("AB", "on their own"), ("E", "anisotropic"), ("Q", "unknown")):
        with pytest.raises(lf.FelixInputError, match=why):
            lf.format_felix_inp(lf.FelixInput(**{**back.__dict__, "refine_mode": bad}))


def test_settings_mapping():
    crystal = read_cif(DATA / "MgO" / "felix.cif")
    s = SimulationSettings(size=64, half_width=0.9, thicknesses=(300.0, 500.0, 900.0), n_beams=120, strong_beams=30,
                           absorption=5.0, form_factors="peng")
    inp = lf.felix_input_for(crystal, s)
    assert (inp.pixel_count, inp.min_reflection_pool, inp.g_limit, inp.min_strong_beams) == (32, 120, 0.0, 30)
    assert (inp.absorb_flag, inp.absorption_percent, inp.scatter_factor_method) == (1, 5.0, 1)
    assert (inp.thickness_initial, inp.thickness_final, inp.thickness_delta) == (300.0, 900.0, 200.0)
    assert set(s.thicknesses) <= set(inp.thicknesses)
    with pytest.raises(ValueError, match="at least 1 Å"):
        lf.thickness_grid((500.0, 500.5))
    with pytest.raises(ValueError, match="below FELIX's pool"):
        lf.felix_input_for(crystal, SimulationSettings(g_limit=8.95 / crystal.a, strong_beams=69))
    with pytest.raises(ValueError, match="at least 40"):
        lf.felix_input_for(crystal, SimulationSettings(g_limit=1.2))
    # FELIX reads B = 0 as "missing" and substitutes RDebyeWallerConstant: make that 0
    zero_b = crystal.with_sites([Site("Mg1", "Mg", (0, 0, 0), b_iso=0.0), crystal.sites[1]])
    assert lf.felix_input_for(zero_b, SimulationSettings(g_limit=2.0)).debye_waller == 0.0


@pytest.mark.parametrize("name", ["MgO", "GaAs", "SrTiO3"])
def test_beam_pool_is_felix_pool(name):
    crystal = read_cif(DATA / name / "felix.cif")
    g_limit = lf.read_felix_inp(DATA / name).g_limit
    pool = lf.felix_beam_pool(crystal.a, crystal.spacegroup_symbol[0], 200e3, g_limit=g_limit)
    sf = lf.read_structure_factors(DATA / name / "StructureFactors.txt")
    assert {tuple(r) for r in pool} == {tuple(r) for r in sf.hkl}
    assert tuple(pool[0]) == (0, 0, 0)


# ------------------------------------------------------------------------------------------------
# felix.cif
# ------------------------------------------------------------------------------------------------
def felix_ops(text: str) -> set:
    """Operators of a felix.cif as FELIX parses them, as a set of (rotation, translation mod 1)."""
    ops = set()
    in_loop = False
    for line in text.splitlines():
        if line.strip() == "_symmetry_equiv_pos_as_xyz":
            in_loop = True
            continue
        if in_loop:
            if "'" not in line:
                break
            rot, tra = lf._cif._felix_parse_operator(line.split("'")[1])
            ops.add((tuple(rot.astype(int).ravel()), tuple(np.round(np.mod(tra, 1.0), 6))))
    return ops


def atom_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = max(i for i, ln in enumerate(lines) if ln.startswith("_atom_site_"))
    return [ln.split() for ln in lines[start + 1:] if ln.strip() and not ln.startswith("#")]


@pytest.mark.parametrize("name", ["MgO", "GaAs", "SrTiO3"])
def test_felix_cif_matches_reference(name, tmp_path):
    ref_text = (DATA / name / "felix.cif").read_text()
    crystal = read_cif(DATA / name / "felix.cif")
    chem = lf.write_felix_cif(crystal, tmp_path / "felix.cif")
    text = (tmp_path / "felix.cif").read_text()
    assert chem == name
    assert f"_chemical_formula_structural '{name}'" in text and "_cell_volume" not in text
    assert felix_ops(text) == felix_ops(ref_text)
    ours, ref = atom_rows(text), atom_rows(ref_text)
    assert [r[:3] for r in ours] == [r[:3] for r in ref]  # label, type, Wyckoff
    assert np.allclose([[float(x) for x in r[3:]] for r in ours], [[float(x) for x in r[3:]] for r in ref])
    back = read_cif(tmp_path / "felix.cif")
    assert back.spacegroup_number == crystal.spacegroup_number and back.a == crystal.a
    assert np.allclose(np.sort(back.atoms().frac, axis=0), np.sort(crystal.atoms().frac, axis=0))


def test_felix_cif_spinel_operators_and_labels(tmp_path):
    crystal = read_cif(DATA / "MgAl2O4" / "felix.cif")
    long = crystal.with_sites([Site("Magnesium1", s.element, s.frac, s.occupancy, s.b_iso) if i == 0 else s
                               for i, s in enumerate(crystal.sites)])
    text = lf.format_felix_cif(long)
    assert len(felix_ops(text)) == 192  # Fd-3m, centring included, parsed by FELIX's rules
    labels = [r[0] for r in atom_rows(text)]
    assert labels[0] == "Mg1" and all(len(lab) <= 5 for lab in labels) and len(set(labels)) == len(labels)


def test_wyckoff_letters_f43m():
    crystal = read_cif(DATA / "GaAs" / "felix.cif")
    bare = crystal.with_sites([Site(s.label, s.element, s.frac, s.occupancy, s.b_iso) for s in crystal.sites])
    assert lf.wyckoff_letters(bare) == ["a", "c"] == [s.wyckoff for s in crystal.sites]
    more = bare.with_sites(list(bare.sites) + [Site("O1", "O", (0.1, 0.1, 0.1)), Site("O2", "O", (0.2, 0.0, 0.0)),
                                               Site("O3", "O", (0.3, 0.25, 0.25)), Site("O4", "O", (0.1, 0.1, 0.3))])
    assert lf.wyckoff_letters(more)[2:] == ["e", "f", "g", "h"]


def test_zero_occupancy_rows_left_out(tmp_path):
    crystal = read_cif(DATA / "MgO" / "felix.cif")
    mixed = crystal.with_sites(list(crystal.sites) + [Site("Ni1", "Ni", (0, 0, 0), occupancy=0.0)])
    rows = atom_rows(lf.format_felix_cif(mixed))
    assert [r[0] for r in rows] == ["Mg1", "O1"]


# ------------------------------------------------------------------------------------------------
# Images, names, StructureFactors.txt, felix.hkl
# ------------------------------------------------------------------------------------------------
def test_names():
    assert lf.image_name("GaAs", (-2, -2, 10)) == "GaAs_-2-2+10.bin"
    assert lf.parse_image_name("GaAs_-2-2+10.img") == ("GaAs", (-2, -2, 10), ".img")
    assert lf.sim_folder_name("SrTiO3", 630.0, 128) == "SrTiO3_Sim_0630A_128x128"
    assert lf.sim_folder_name("MgO", 2.5, 16) == "MgO_Sim_0003A_016x016"  # NINT rounds half away from 0
    assert lf.parse_sim_folder("SrTiO3_Sim_0630A_128x128") == ("SrTiO3", 630, 128)
    assert lf.refine_folder_name("SrTiO3", 3, 630.0, 128) == "SrTiO3_I0003_063nm_128x128"
    assert lf.experimental_folder_name(128) == "LR_128x128"
    with pytest.raises(ValueError):
        lf.parse_sim_folder("SrTiO3_0630A_128x128")


@pytest.mark.parametrize("name", ["MgO", "GaAs", "SrTiO3"])
def test_bright_field_images(name):
    for t in (500, 2000):
        im = lf.read_image(DATA / name / f"{name}_{t:04d}A_+0+0+0.bin", 128)
        assert im.shape == (128, 128) and im.dtype == np.float64
        assert 0 < im.min() and im.max() <= 1.0
        # every reference image is 4mm-symmetric to 5e-9 (README): a wrong reshape would not be
        for sym in (im.T, im[::-1, :], im[:, ::-1]):
            assert np.abs(im - sym).max() < 1e-8


def test_dark_field_orientation_bundled():
    """+x (columns) is along [100], +y (rows) along [010]: the (2 0 0) Bragg line lies at the column
    where k_x = -|g|/2, the (-2 2 0) line along the anti-diagonal through the centre's left."""
    a = read_cif(DATA / "GaAs" / "felix.cif").a
    inp = lf.read_felix_inp(DATA / "GaAs" / "felix.inp")
    delta = inp.half_width / inp.pixel_count
    col = inp.pixel_count - 0.5 - (1.0 / a) / delta  # k_x = (c - N + 1/2) delta = -1/a
    im = lf.read_image(DATA / "GaAs-df" / "GaAs_1000A_+2+0+0.bin")
    assert abs(np.argmax(im.mean(axis=0)) - col) <= 1.0
    assert np.argmax(im.mean(axis=0)) < 64 and np.argmax(im.mean(axis=1)) >= 60


def test_dark_field_orientation_srtio3_sample(shared_dir):
    out = shared_dir / "data" / "felix-reference" / "felix-repo-samples" / "samples" / "SrTiO3" / "sample_outputs"
    n, delta, a = 64, 1.19 / 64, 3.8996
    profile = {hkl: lf.read_image(out / lf.image_name("SrTiO3", hkl), 128) for hkl in
               ((2, 0, 0), (-2, 0, 0), (0, 2, 0), (0, -2, 0))}
    assert abs(np.argmax(profile[(2, 0, 0)].mean(axis=0)) - 50) <= 1  # felix-spec §2: column 50 (49.7)
    assert abs(np.argmax(profile[(2, 0, 0)].mean(axis=0)) - (n - 0.5 - 1 / a / delta)) <= 1
    assert abs(np.argmax(profile[(-2, 0, 0)].mean(axis=0)) - (n - 0.5 + 1 / a / delta)) <= 1
    assert abs(np.argmax(profile[(0, 2, 0)].mean(axis=1)) - 50) <= 1  # rows are k_y
    assert abs(np.argmax(profile[(0, -2, 0)].mean(axis=1)) - 77) <= 1


def test_experimental_img_layout(shared_dir):
    lr = shared_dir / "data" / "felix-reference" / "felix-repo-samples" / "samples" / "SrTiO3_short" / "LR_128x128"
    images = sorted(lr.glob("SrTiO3_*.img"))
    assert len(images) >= 40
    inp = lf.read_felix_inp(lr.parent)  # half-width 0.891: the (2 0 0) line at column 45.1
    im = lf.read_image(lr / "SrTiO3_+2+0+0.img", inp.size)
    assert im.shape == (128, 128) and np.isfinite(im).all()
    col = inp.pixel_count - 0.5 - (1 / 3.8996) / (inp.half_width / inp.pixel_count)
    assert abs(np.argmax(im.mean(axis=0)) - col) <= 1


def test_image_write_read_and_bad_lengths(tmp_path):
    rng = np.random.default_rng(0)
    im = rng.random((6, 6))
    path = lf.write_image(tmp_path / "X_+1-1+0.img", im)
    assert path.read_bytes() == im.astype("<f8").tobytes()  # headerless, little-endian, C order
    assert np.array_equal(lf.read_image(path, 6), im)
    (tmp_path / "odd.bin").write_bytes(b"\0" * (8 * 36 + 4))
    (tmp_path / "rect.bin").write_bytes(b"\0" * (8 * 37))
    for bad in ("odd.bin", "rect.bin"):
        with pytest.raises(ValueError, match="square image of 8-byte floats"):
            lf.read_image(tmp_path / bad)
    with pytest.raises(ValueError, match="expected 8x8"):
        lf.read_image(path, 8)


def test_structure_factors():
    sf = lf.read_structure_factors(DATA / "MgO")
    a = read_cif(DATA / "MgO" / "felix.cif").a
    assert len(sf) == 69 and tuple(sf.hkl[0]) == (0, 0, 0)
    # g in 1/d units (FELIX writes 2π units): |g| = sqrt(h² + k²)/a along [001] with x = [100]
    assert np.allclose(sf.g, sf.hkl[:, :2] / a, atol=1e-8)
    assert np.allclose(sf.ug.imag, 0) and sf.ug[0] == 0  # no absorption; U_00 = 0 in FELIX
    u200 = sf.ug[[i for i, h in enumerate(sf.hkl) if sorted(abs(h)) == [0, 0, 2]]]
    assert np.ptp(u200.real) < 1e-9 and u200.real[0] > 0


def test_hkl_files(tmp_path):
    assert lf.read_hkl(DATA / "GaAs-df" / "felix.hkl")[:2] == [(0, 0, 0), (2, 0, 0)]
    path = lf.write_hkl(tmp_path / "felix.hkl", [(0, 0, 0), (-2, 2, 0)])
    assert path.read_text() == "[0,0,0]\n[-2,2,0]\n"
    (tmp_path / "blank.hkl").write_text("[0,0,0]\n\n[2,0,0]\n")
    with pytest.raises(ValueError, match="line 2"):
        lf.read_hkl(tmp_path / "blank.hkl")


def make_sim_folder(tmp_path: Path, name: str = "MgO") -> Path:
    """A FELIX simulation folder from the bundled copies (which dropped the per-thickness folders)."""
    run = tmp_path / name
    for t in (500, 2000):
        out = run / lf.sim_folder_name(name, t, 128)
        out.mkdir(parents=True)
        shutil.copy(DATA / name / f"{name}_{t:04d}A_+0+0+0.bin", out / lf.image_name(name, (0, 0, 0)))
        shutil.copy(DATA / name / "StructureFactors.txt", out)
    shutil.copy(DATA / name / "felix.hkl", run)
    return run


def test_read_simulation(tmp_path):
    sim = lf.read_simulation(make_sim_folder(tmp_path))
    assert (sim.chem, sim.thicknesses, sim.reflections, sim.images.shape) == (
        "MgO", (500.0, 2000.0), ((0, 0, 0),), (2, 1, 128, 128))
    assert np.array_equal(sim.images[1, 0], lf.read_image(DATA / "MgO" / "MgO_2000A_+0+0+0.bin"))
    assert len(sim.structure_factors) == 69
    with pytest.raises(FileNotFoundError, match="no image of \\(2, 0, 0\\)"):
        lf.read_simulation(tmp_path / "MgO", reflections=[(2, 0, 0)])
    with pytest.raises(FileNotFoundError, match="thickness"):
        lf.read_simulation(tmp_path / "MgO", thicknesses=[1000.0])


def test_read_reference_runs(reference_runs):
    sim = lf.read_simulation(reference_runs / "GaAs-df")
    assert sim.images.shape == (4, len(sim.reflections), 128, 128) and sim.thicknesses[-1] == 2000.0
    k = sim.reflections.index((2, 0, 0))
    assert np.array_equal(sim.images[1, k], lf.read_image(DATA / "GaAs-df" / "GaAs_1000A_+2+0+0.bin"))
    assert len(sim.structure_factors) == 69


def test_refined_cif_sample(shared_dir):
    path = (shared_dir / "data" / "felix-reference" / "felix-repo-samples" / "samples" / "SrTiO3" / "sample_outputs"
            / "SrTiO3_0000.cif")
    ref = lf.read_refined_cif(path)
    assert ref.cell == (3.8996, 3.8996, 3.8996, 90.0, 90.0, 90.0) and ref.spacegroup_number == 221
    assert ref.iteration == 0
    assert [(s.label, s.element, s.b_iso) for s in ref.sites] == [("Sr1", "Sr", 0.4153), ("Ti1", "Ti", 1.1035),
                                                                   ("O1", "O", 0.8888)]
    assert ref.sites[2].frac == (0.0, 0.5, 0.5)


def test_refined_cif_with_uncertainties(tmp_path):
    text = (
        "#(C) 2019 University of Warwick\ndata_felixrefine\n_audit_creation_date 2019-08-06\n"
        "_chemical_formula_sum GaAs\nloop_\n_cell_length_a  5.6612\n_cell_length_b  5.6612\n"
        "_cell_length_c  5.6612\n_cell_angle_alpha   90.00\n_cell_angle_beta    90.00\n"
        "_cell_angle_gamma   90.00\n_cell_volume  181.44\n_symmetry_space_group_name_H-M  'F-43m'\n"
        "_symmetry_Int_Tables_number 216\nloop_\n_symmetry_equiv_pos_site_id\n_symmetry_equiv_pos_as_xyz\n"
        "  1 x, y, z\nloop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n"
        "_atom_site_fract_y\n_atom_site_fract_z\n_atom_site_B_iso_or_equiv\n_atom_site_occupancy\n"
        "Ga1 Ga  0.0000  0.0000  0.0000  0.612(12)  1.0000\n"
        "As1 As  0.2500  0.2500  0.2500  0.48(3)  0.98(2)\n#End of felixrefine cif\n"
    )
    (tmp_path / "GaAs_0007.cif").write_text(text)
    ref = lf.read_refined_cif(tmp_path / "GaAs_0007.cif")
    assert ref.iteration == 7 and ref.cell[0] == 5.6612
    assert ref.sites[0].su == {"b_iso": pytest.approx(0.012)}
    assert ref.sites[1].su == {"b_iso": pytest.approx(0.03), "occupancy": pytest.approx(0.02)}
    template = read_cif(DATA / "GaAs" / "felix.cif")
    crystal, su = lf.refined_crystal(template, ref)
    assert crystal.a == 5.6612 and crystal.sites[1].b_iso == 0.48 and crystal.sites[1].occupancy == 0.98
    assert su[("As1", "occupancy")] == pytest.approx(0.02)
    with pytest.raises(ValueError, match="sites"):
        lf.refined_crystal(read_cif(DATA / "SrTiO3" / "felix.cif"), ref)


def test_iteration_log(tmp_path):
    rows = [(0, 0.123456789, [0.5, 0.5]), (1, 0.1, [0.61, 0.4]), (2, 0.09, [float("inf"), 0.39])]
    text = ""
    for it, fom, vals in rows:  # FELIX: (I5.1,1X,F13.9,1X,n(F13.9,1X))
        text += f"{it:5d} {fom:13.9f} " + "".join(("*" * 13 if math.isinf(v) else f"{v:13.9f}") + " " for v in vals) + "\n"
    (tmp_path / "iteration_log.txt").write_text(text)
    log = lf.read_iteration_log(tmp_path)
    assert list(log.iteration) == [0, 1, 2] and log.values.shape == (3, 2)
    assert log.fom[1] == pytest.approx(0.1) and math.isnan(log.values[2, 0])
    assert lf.iteration_log_columns("D", ["Ga1", "As1"]) == ["Ga1.b_iso", "As1.b_iso"]
    assert lf.iteration_log_columns("BD", ["Ga1"], absorb_flag=2)[:2] == ["unused", "Ga1.x"]


# ------------------------------------------------------------------------------------------------
# Seeding a FELIX refinement
# ------------------------------------------------------------------------------------------------
def gaas_settings(crystal, **kw):
    return SimulationSettings(size=128, half_width=5.0 / crystal.a, thicknesses=(500.0, 1000.0, 1500.0, 2000.0),
                              g_limit=8.95 / crystal.a, **kw)


def test_export_refinement(tmp_path):
    crystal = read_cif(DATA / "GaAs" / "felix.cif")
    pattern = lf.read_image(DATA / "GaAs" / "GaAs_2000A_+0+0+0.bin")
    result = lf.export_refinement(crystal, pattern, tmp_path / "run", "DB", gaas_settings(crystal))
    folder = result.folder
    inp = lf.read_felix_inp(folder)
    assert (inp.refine_mode, inp.atomic_sites, inp.refine_method, inp.correlation_flag) == ("BD", (1, 2), 3, 2)
    assert inp.thicknesses == (500.0, 1000.0, 1500.0, 2000.0) and inp.size == 128
    img = folder / "LR_128x128" / "GaAs_+0+0+0.img"
    assert result.images == (img,) and img.read_bytes() == pattern.astype("<f8").tobytes()
    assert lf.read_hkl(folder / "felix.hkl") == [(0, 0, 0)]
    assert [r[2] for r in atom_rows((folder / "felix.cif").read_text())] == ["a", "c"]
    manifest = json.loads((folder / "lacbed_export.json").read_text())
    assert manifest["chem"] == "GaAs" and manifest["images"] == ["LR_128x128/GaAs_+0+0+0.img"]


def test_export_from_stack_file_and_errors(tmp_path):
    crystal = read_cif(DATA / "GaAs" / "felix.cif")
    refl = [(0, 0, 0), (2, 0, 0)]
    images = np.stack([lf.read_image(DATA / "GaAs" / "GaAs_0500A_+0+0+0.bin"),
                       lf.read_image(DATA / "GaAs-df" / "GaAs_1000A_+2+0+0.bin")])[None].astype(np.float32)
    tif = write_stack(tmp_path / "measured.tif", images, labels=["bf", "200"],
                      metadata={"reflections": [list(r) for r in refl], "thickness_nm": [100.0]})
    data, found = lf.read_pattern(tif)
    assert data.shape == (2, 128, 128) and found == tuple(refl)
    result = lf.export_refinement(crystal, tif, tmp_path / "run", "D", gaas_settings(crystal), sites=[2])
    assert [p.name for p in result.images] == ["GaAs_+0+0+0.img", "GaAs_+2+0+0.img"]
    assert lf.read_felix_inp(result.folder).atomic_sites == (2,)
    assert np.allclose(lf.read_image(result.images[1]), images[0, 1])

    with pytest.raises(ValueError, match="F-43m"):
        lf.export_refinement(read_cif(DATA / "SrTiO3" / "felix.cif"), None, tmp_path / "x", "B")
    with pytest.raises(ValueError, match="beam pool"):
        lf.export_refinement(crystal, data[:1], tmp_path / "x", "D", gaas_settings(crystal), reflections=[(1, 0, 0)])
    with pytest.raises(ValueError, match="pixels"):
        lf.export_refinement(crystal, data[:, :64, :64], tmp_path / "x", "D", gaas_settings(crystal))
    with pytest.raises(ValueError, match="2 pattern images but 1"):
        lf.export_refinement(crystal, data, tmp_path / "x", "D", gaas_settings(crystal), reflections=[(0, 0, 0)])
    with pytest.raises(ValueError, match="sites"):
        lf.export_refinement(crystal, data[:1], tmp_path / "x", "D", gaas_settings(crystal), sites=[3])


def test_cli_export_and_read(tmp_path):
    bf = tmp_path / "GaAs_+0+0+0.bin"
    shutil.copy(DATA / "GaAs" / "GaAs_2000A_+0+0+0.bin", bf)
    runner = CliRunner()
    res = runner.invoke(felix_group, ["export", str(DATA / "GaAs" / "felix.cif"), "--pattern", str(bf),
                                      "--refine", "B,D", "--g-limit", str(8.95 / 5.653), "--thickness", "50,200,10",
                                      "-o", str(tmp_path / "seed")])
    assert res.exit_code == 0, res.output
    inp = lf.read_felix_inp(tmp_path / "seed")
    assert inp.refine_mode == "BD" and (inp.thickness_initial, inp.thickness_final, inp.thickness_delta) == (
        500.0, 2000.0, 100.0)
    assert (tmp_path / "seed" / "LR_128x128" / "GaAs_+0+0+0.img").is_file()

    res = runner.invoke(felix_group, ["export", str(DATA / "SrTiO3" / "felix.cif"), "--refine", "B", "-o",
                                      str(tmp_path / "bad")])
    assert res.exit_code == 2 and "F-43m" in res.output and "Traceback" not in res.output

    out = tmp_path / "mgo.npy"
    res = runner.invoke(felix_group, ["read", str(make_sim_folder(tmp_path)), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert np.load(out).shape == (2, 1, 128, 128)
    assert json.loads(out.with_suffix(".json").read_text())["thickness_nm"] == [50.0, 200.0]


# ------------------------------------------------------------------------------------------------
# Registration
# ------------------------------------------------------------------------------------------------
def test_entry_points():
    sims = {ep.name: ep for ep in entry_points(group="lacbed_refine.simulators")}
    cmds = {ep.name: ep for ep in entry_points(group="lacbed_refine.commands")}
    assert sims["felix"].load() is lf.FelixSimulator
    assert cmds["felix"].load() is felix_group
    from lacbed_refine.simulators.registry import Simulator, get_simulator

    sim = get_simulator("felix")
    assert isinstance(sim, Simulator) and sim.name == "felix"
    ok, why = sim.available()
    assert isinstance(ok, bool) and why


# ------------------------------------------------------------------------------------------------
# A real FELIX refinement seeded by export_refinement (plugins/felix/tests/data/GaAs-refine)
# ------------------------------------------------------------------------------------------------
REFINE = Path(__file__).resolve().parents[1] / "plugins" / "felix" / "tests" / "data" / "GaAs-refine"


def test_read_real_refinement():
    ref = lf.read_refinement(REFINE)
    assert (ref.chem, ref.iteration, ref.thickness) == ("GaAs", 15, 1000.0)
    assert lf.parse_refine_folder(ref.output.name) == ("GaAs", 15, 1000.0, 16)
    assert [(s.label, s.b_iso) for s in ref.structure.sites] == [("Ga1", 0.9), ("As1", 0.6409)]
    assert ref.structure.cell[:3] == (5.653, 5.653, 5.653)
    labels = [s.label for s in ref.structure.sites]
    assert ref.log.values.shape == (19, len(lf.iteration_log_columns("D", labels)))
    assert list(ref.log.iteration[:3]) == [1, 1, 2] and ref.log.fom.min() == pytest.approx(0.047490334)
    assert np.allclose(ref.log.values[-1], [0.9, 0.640861835])
    crystal, _ = lf.refined_crystal(read_cif(REFINE / "felix.cif"), ref.structure)
    assert [s.b_iso for s in crystal.sites] == [0.9, 0.6409]
    sim = lf.read_image(ref.output / "GaAs_+2+0+0.bin", 16)
    assert sim.shape == (16, 16) and len(lf.read_structure_factors(ref.output)) == 69


def test_export_reproduces_the_refined_set(tmp_path):
    """The set FELIX refined above is what export_refinement writes (all but the title line)."""
    from dataclasses import replace

    truth = read_cif(DATA / "GaAs" / "felix.cif")
    start = truth.with_sites([replace(s, b_iso=2 * s.b_iso) for s in truth.sites])
    images = np.stack([lf.read_image(REFINE / "LR_16x16" / lf.image_name("GaAs", r, ".img")) for r in
                       [(0, 0, 0), (2, 0, 0)]])
    s = SimulationSettings(size=16, half_width=5 / truth.a, thicknesses=(800.0, 900.0, 1000.0, 1100.0, 1200.0),
                           g_limit=8.95 / truth.a, reflections=((0, 0, 0), (2, 0, 0)))
    out = lf.export_refinement(start, images, tmp_path, "D", s, exit_criteria=0.001).folder
    for name in ("felix.hkl", "LR_16x16/GaAs_+0+0+0.img", "LR_16x16/GaAs_+2+0+0.img"):
        assert (out / name).read_bytes() == (REFINE / name).read_bytes(), name
    for name in ("felix.inp", "felix.cif"):  # the first line names the plugin version
        assert (out / name).read_text().splitlines()[1:] == (REFINE / name).read_text().splitlines()[1:], name
