"""FELIX plugin beyond cubic [001]: inputs for any cell, space group, zone axis and absorption model.

- binary-free, no shared data: ``felix.inp``/``felix.cif``/``felix.hkl`` written for GaAs [110] with
  Bird–King absorption, rutile TiO2 [001] (tetragonal) and wurtzite GaN [100] (hexagonal) from the
  bundled CIFs (``tests/data/crystal_general``) hold the values of FELIX's general reference runs;
  FELIX's reading of ``felix.cif`` is emulated (single-precision expansion, linked sites, reflection
  rule) and the writer avoids what FELIX would get wrong;
- with ``../shared``: every general reference run's inputs are reproduced from its crystal and
  settings (felix.inp values, FELIX's own beam pool from ``StructureFactors.txt``, felix.cif as FELIX
  parses it, felix.hkl);
- with a FELIX executable (``$LACBED_FELIX``; skipped otherwise): the plugin runs FELIX on GaAs [110]
  Bird–King, rutile [001] and GaN [100] written atom by atom, against the engine (r ≥ 0.9999).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

lf = pytest.importorskip("lacbed_felix", reason="the FELIX plugin is not installed (pip install -e plugins/felix)")

from lacbed_refine.engine.geometry import SimulationSettings  # noqa: E402
from lacbed_refine.io.cif import read_cif  # noqa: E402
from lacbed_refine.io.felix_inp import FelixInput, parse_felix_inp, read_felix_inp, read_hkl  # noqa: E402
from lacbed_refine.structure.cell import Cell  # noqa: E402
from lacbed_refine.structure.crystal import Crystal, Site  # noqa: E402

GENERAL = Path(__file__).parent / "data" / "crystal_general"
RUNS = ("GaAs-110", "GaAs-110-bk", "Si-111", "TiO2-001", "GaN-100")
MODELS = {0: "none", 1: "proportional", 2: "bird-king"}

#: The general reference runs' settings (shared/data/felix-reference/general/README.md), by run.
GAAS_REFL = ((0, 0, 0), (0, 0, 2), (0, 0, -2), (1, -1, 1), (-1, 1, -1), (1, -1, -1), (-1, 1, 1), (2, -2, 0), (0, 0, 4))
REFERENCE = {
    "GaAs-110": dict(cif="GaAs", zone=(1, 1, 0), x=(0, 0, 1), g_limit=1.46, pool=91, model="none", refl=GAAS_REFL),
    "GaAs-110-bk": dict(cif="GaAs", zone=(1, 1, 0), x=(0, 0, 1), g_limit=1.46, pool=91, model="bird-king", refl=GAAS_REFL),
    "Si-111": dict(cif="Si", zone=(1, 1, 1), x=(1, -1, 0), g_limit=1.8, pool=73, model="none",
                   refl=((0, 0, 0), (2, -2, 0), (-2, 2, 0), (2, 0, -2), (-2, 0, 2), (0, 2, -2), (0, -2, 2))),
    "TiO2-001": dict(cif="TiO2", zone=(0, 0, 1), x=(1, 0, 0), g_limit=1.14, pool=109, model="none",
                     refl=((0, 0, 0), (2, 0, 0), (-2, 0, 0), (1, 1, 0), (1, -1, 0), (0, 2, 0), (2, 2, 0))),
    "GaN-100": dict(cif="GaN", zone=(1, 0, 0), x=(0, 0, 1), g_limit=1.4, pool=107, model="none",
                    refl=((0, 0, 0), (0, 0, 2), (0, 0, -2), (0, 0, 1), (0, 1, 0), (0, 1, 1), (0, 1, -1))),
}


def reference_case(name: str, *, size: int = 64, x_direction="given"):
    ref = REFERENCE[name]
    crystal = read_cif(GENERAL / f"{ref['cif']}.cif")
    settings = SimulationSettings(
        voltage=200e3, size=size, half_width=0.5, thicknesses=(500.0, 1000.0, 1500.0, 2000.0), g_limit=ref["g_limit"],
        strong_beams=ref["pool"] - 1, reflections=ref["refl"], zone=ref["zone"],
        x_direction=ref["x"] if x_direction == "given" else x_direction, absorption_model=ref["model"],
        strong_rule="felix", mean_absorption=False,
    )
    return crystal, settings


def compared(inp: FelixInput) -> dict:
    return {f.name: getattr(inp, f.name) for f in dataclasses.fields(FelixInput) if f.compare}


def felix_ops(text: str) -> set:
    """A felix.cif's operators as FELIX parses them: (rotation, translation mod 1)."""
    ops, on = set(), False
    for line in text.splitlines():
        if line.strip() == "_symmetry_equiv_pos_as_xyz":
            on = True
            continue
        if on:
            if "'" not in line:
                break
            rot, tra = lf._cif._felix_parse_operator(line.split("'")[1])
            ops.add((tuple(rot.astype(int).ravel()), tuple(np.round(np.mod(tra, 1.0), 6))))
    return ops


def cif_items(text: str) -> dict:
    return {ln.split()[0]: ln.split(None, 1)[1] for ln in text.splitlines()
            if ln.startswith("_") and len(ln.split()) == 2 and not ln.startswith("_atom_site_")}


def atom_rows(text: str) -> list[list[str]]:
    lines = text.splitlines()
    start = max(i for i, ln in enumerate(lines) if ln.startswith("_atom_site_"))
    return [ln.split() for ln in lines[start + 1:] if ln.strip() and not ln.startswith("#")]


def felix_cell_atoms(text: str) -> int:
    """The number of atoms FELIX puts in the cell for this felix.cif (its expansion, emulated)."""
    rows = atom_rows(text)
    ops = [ln.split("'")[1] for ln in text.splitlines() if ln[:1].isdigit() and "'" in ln]
    rot, tra = lf._cif._felix_operators(ops)
    points = np.array([[lf._cif._float32(v) for v in r[3:6]] for r in rows])
    return sum(lf._cif._felix_atom_counts([r[0] for r in rows], points, rot, tra))


# ------------------------------------------------------------------------------------------------
# GaAs [110], Bird–King; rutile [001]; GaN [100]: the reference runs' values, no shared data needed
# ------------------------------------------------------------------------------------------------
def test_gaas_110_bird_king_inputs(tmp_path):
    crystal, s = reference_case("GaAs-110-bk")
    chem, inp = lf.write_simulation_inputs(crystal, s, tmp_path)
    back = read_felix_inp(tmp_path / "felix.inp")
    assert back.dialect == "v1.3" and compared(back) == compared(inp)
    assert (back.beam_direction, back.x_direction, back.normal_direction) == ((1, 1, 0), (0, 0, 1), (1, 1, 0))
    assert (back.absorb_flag, back.absorption_percent) == (2, 0.0)
    assert (back.g_limit, back.min_reflection_pool, back.min_strong_beams, back.pixel_count) == (1.46, 0, 90, 32)
    assert back.thicknesses == (500.0, 1000.0, 1500.0, 2000.0) and back.half_width == 0.5
    lines = (tmp_path / "felix.inp").read_text().splitlines()
    assert lines[0] == "# " + lf.INP_TITLE and len(lines) == 51
    assert lines[9] == "IAbsorbFLAG               = 2" and lines[27] == "IIncidentBeamDirection    = [1,1,0]"
    # felix.hkl: the nine discs, in order; FELIX's pool (91 beams, no HOLZ) holds them all
    assert [tuple(r) for r in read_hkl(tmp_path / "felix.hkl")] == list(GAAS_REFL)
    pool = lf.felix_pool(crystal, s)
    assert len(pool) == 91 and tuple(pool[0]) == (0, 0, 0) and not np.any(pool @ np.array([1, 1, 0]))
    # felix.cif: the cubic cell, all 96 operators of F-43m, the two sites with their Wyckoff letters
    text = (tmp_path / "felix.cif").read_text()
    items = cif_items(text)
    assert chem == "GaAs" and items["_cell_length_a"] == items["_cell_length_c"] == "5.6533"
    assert items["_cell_angle_gamma"] == "90" and items["_symmetry_Int_Tables_number"] == "216"
    assert len(felix_ops(text)) == 96
    assert atom_rows(text) == [["Ga1", "Ga", "a", "0.0", "0.0", "0.0", "0.6", "1.0"],
                               ["As1", "As", "c", "0.25", "0.25", "0.25", "0.55", "1.0"]]
    assert felix_cell_atoms(text) == 8


def test_default_x_direction_is_the_cores():
    from lacbed_refine.simulators.bloch import zone_axis

    for name in ("GaAs-110", "Si-111", "GaN-100"):
        crystal, s = reference_case(name, x_direction=None)
        inp = lf.felix_input_for(crystal, s)
        assert inp.x_direction == zone_axis(crystal, s).x_direction
        assert sum(a * b for a, b in zip(inp.x_direction, inp.beam_direction)) == 0
    assert lf.felix_input_for(*reference_case("GaAs-110", x_direction=None)).x_direction == (0, 0, 1)


def test_rutile_001_tetragonal_inputs(tmp_path):
    crystal, s = reference_case("TiO2-001")
    assert not crystal.is_cubic
    chem, inp = lf.write_simulation_inputs(crystal, s, tmp_path)
    back = read_felix_inp(tmp_path)
    assert (back.beam_direction, back.x_direction, back.normal_direction) == ((0, 0, 1), (1, 0, 0), (0, 0, 1))
    assert (back.absorb_flag, back.g_limit, back.min_strong_beams) == (0, 1.14, 108)
    assert len(lf.felix_pool(crystal, s)) == 109
    text = (tmp_path / "felix.cif").read_text()
    items = cif_items(text)
    assert (items["_cell_length_a"], items["_cell_length_b"], items["_cell_length_c"]) == ("4.5937", "4.5937", "2.9587")
    assert (items["_cell_angle_alpha"], items["_cell_angle_beta"], items["_cell_angle_gamma"]) == ("90", "90", "90")
    assert items["_symmetry_Int_Tables_number"] == "136" and len(felix_ops(text)) == 16
    assert atom_rows(text) == [["Ti1", "Ti", "a", "0.0", "0.0", "0.0", "0.45", "1.0"],
                               ["O1", "O", "f", "0.3048", "0.3048", "0.0", "0.6", "1.0"]]
    assert felix_cell_atoms(text) == 6 == len(crystal.atoms().Z)


def test_wurtzite_100_hexagonal_inputs(tmp_path):
    crystal, s = reference_case("GaN-100")
    chem, inp = lf.write_simulation_inputs(crystal, s, tmp_path)
    back = read_felix_inp(tmp_path)
    assert (back.beam_direction, back.x_direction, back.normal_direction) == ((1, 0, 0), (0, 0, 1), (1, 0, 0))
    assert (back.g_limit, back.min_strong_beams) == (1.4, 106) and len(lf.felix_pool(crystal, s)) == 107
    text = (tmp_path / "felix.cif").read_text()
    items = cif_items(text)
    assert (items["_cell_length_a"], items["_cell_length_c"], items["_cell_angle_gamma"]) == ("3.189", "5.185", "120")
    assert items["_symmetry_Int_Tables_number"] == "186" and len(felix_ops(text)) == 12
    # the bundled CIF has FELIX's shifted origin: atoms at float32-exact positions, the operators kept
    assert [r[:6] for r in atom_rows(text)] == [["Ga1", "Ga", "b", "0.0", "0.0", "0.0"], ["N1", "N", "b", "0.0", "0.0", "0.377"]]
    assert felix_cell_atoms(text) == 4


def test_thirds_are_written_atom_by_atom(tmp_path):
    """At the ITA origin wurtzite's atoms sit at 1/3 2/3 z: FELIX's single-precision expansion of the
    operators would count each one three times (12 atoms, not 4), so felix.cif lists the four atoms
    with the identity operator; a refinement set refuses."""
    crystal = read_cif(GENERAL / "GaN.cif").shifted((1 / 3, 2 / 3, 0))
    assert any(abs(c - 1 / 3) < 1e-9 for c in crystal.sites[0].frac)
    standard = lf.format_felix_cif(crystal, expand=True)
    text = lf.format_felix_cif(crystal)
    assert text == standard and "every atom of the cell" in text
    assert felix_ops(text) == {((1, 0, 0, 0, 1, 0, 0, 0, 1), (0.0, 0.0, 0.0))}
    rows = atom_rows(text)
    assert len(rows) == 4 and felix_cell_atoms(text) == 4
    assert cif_items(text)["_symmetry_Int_Tables_number"] == "186"  # the reflection rule still comes from it
    # what the emulation says FELIX would have made of the operators
    ops = lf._cif._operator_strings(crystal)
    rot, tra = lf._cif._felix_operators(ops)
    points = np.array([[lf._cif._float32(lf._cif._num(v)) for v in s.frac] for s in crystal.sites])
    assert lf._cif._felix_atom_counts(["Ga1", "N1"], points, rot, tra) == [6, 6]
    # atom positions, modulo the lattice translations written to keep FELIX's linked-site check quiet
    written = np.mod(np.array([[float(v) for v in r[3:6]] for r in rows]), 1.0)
    assert np.allclose(np.sort(written, axis=0), np.sort(crystal.atoms().frac, axis=0), atol=1e-8)
    with pytest.raises(ValueError, match="cannot refine this structure"):
        lf.format_felix_cif(crystal, expand=False)
    with pytest.raises(ValueError, match="cannot refine"):
        lf.export_refinement(crystal, None, tmp_path / "set", "D", reference_case("GaN-100")[1])
    assert not (tmp_path / "set").exists()


def test_rows_felix_would_link_get_a_lattice_translation():
    """FELIX takes two rows whose coordinates have the same sum for one site and stops when their
    occupancies add up to more than 1 (here 0.25 0.5 0 and 0.25 0 0.5 in P-4 3 n, as in a real CIF
    of the shared collection): the second gets x+1, y+1, z+1, which FELIX reduces modulo 1."""
    import gemmi

    hall = gemmi.find_spacegroup_by_name("P -4 3 n").hall
    crystal = Crystal("Cu3Ge", 5.3, hall, (Site("Cu1", "Cu", (0.25, 0.5, 0.0)), Site("Cu2", "Cu", (0.25, 0.0, 0.5)),
                                           Site("Ge1", "Ge", (0.0, 0.0, 0.0))))
    text = lf.format_felix_cif(crystal)
    rows = atom_rows(text)
    assert rows[0][3:6] == ["0.25", "0.5", "0.0"] and rows[1][3:6] == ["1.25", "1.0", "1.5"]
    points = np.array([[lf._cif._float32(v) for v in r[3:6]] for r in rows])
    assert lf._cif._overfull_sites(points, [r[7] for r in rows]) == []
    assert lf._cif._overfull_sites(np.array([[0.25, 0.5, 0.0], [0.25, 0.0, 0.5]]), ["1.0", "1.0"]) == [[0, 1]]
    assert felix_cell_atoms(text) == len(crystal.atoms().Z)


def test_reflection_rule_is_felixs():
    """FELIX takes the rule from the first letter of the standard symbol of the space-group number;
    R groups get the obverse rule on hexagonal axes. A setting centred otherwise is refused."""
    import gemmi

    assert lf.felix_centring(read_cif(GENERAL / "GaAs.cif")) == "F"
    assert lf.felix_centring(read_cif(GENERAL / "TiO2.cif")) == "P"
    linbo3 = read_cif(GENERAL / "LiNbO3.cif")
    assert lf.felix_centring(linbo3) == "V"
    text = lf.format_felix_cif(linbo3)
    assert cif_items(text)["_cell_angle_gamma"] == "120" and felix_cell_atoms(text) == len(linbo3.atoms().Z)
    a_setting = Crystal("X", 5.0, gemmi.find_spacegroup_by_name("A 1 2/m 1").hall, (Site("Na1", "Na", (0.0, 0.0, 0.0)),),
                        cell=Cell(5.0, 6.0, 7.0, 90.0, 100.0, 90.0))
    with pytest.raises(ValueError, match="standard symbol .*C-centred.*standard setting"):
        lf.felix_centring(a_setting)
    with pytest.raises(ValueError, match="standard setting"):
        lf.felix_input_for(a_setting, SimulationSettings(g_limit=2.0, zone=(0, 1, 0)))


def test_pool_at_any_zone_is_the_cores_with_felixs_count_cut():
    from lacbed_refine.simulators.bloch import zone_beams

    crystal, s = reference_case("Si-111")
    pool = lf.felix_pool(crystal, s)
    core = zone_beams(crystal, s)
    assert {tuple(r) for r in pool} == {tuple(r) for r in core} and len(pool) == 73
    assert int(np.count_nonzero(pool.sum(axis=1))) == 30  # the 30 HOLZ beams (h+k+l = -1) are in
    # a count: FELIX stops at the count inside the last shell, in its h, k, l loop order
    counted = dataclasses.replace(s, g_limit=None, n_beams=60, strong_beams=50)
    pool = lf.felix_pool(crystal, counted)
    whole = zone_beams(crystal, counted)
    assert len(pool) == 60 < len(whole) and {tuple(r) for r in pool} <= {tuple(r) for r in whole}
    g_pool, g_whole = crystal.cell.g_length(pool).max(), crystal.cell.g_length(whole)
    assert np.all(g_whole[g_whole < g_pool - 1e-6] <= g_pool)
    inp = lf.felix_input_for(crystal, counted)
    assert (inp.g_limit, inp.min_reflection_pool, inp.min_strong_beams) == (0.0, 60, 50)


def test_limits_named_at_any_zone():
    crystal, s = reference_case("GaAs-110")
    with pytest.raises(ValueError, match=r"at least 40 .*zone \[1, 1, 0\]|zone \[1, 1, 0\].*at least 40"):
        lf.felix_input_for(crystal, dataclasses.replace(s, g_limit=0.6, strong_beams=None))
    with pytest.raises(ValueError, match="below FELIX's pool of 91"):
        lf.felix_input_for(crystal, dataclasses.replace(s, strong_beams=91))
    # 2 2 0 is not in the [110] zone: caught before FELIX would drop it
    with pytest.raises(ValueError, match=r"\(2, 2, 0\).* not in FELIX's beam pool of 91 .*zone \[1, 1, 0\]"):
        lf.write_simulation_inputs(crystal, dataclasses.replace(s, reflections=((0, 0, 0), (2, 2, 0))), Path("/nonexistent"))


def test_beams_on_the_last_shell_edge(tmp_path, caplog):
    """With RgLimit FELIX keeps |g| <= n·min|a*|; for 8 6 0 at n = 10 its rounding left the beam out
    (a FELIX run on Ia-3d, a = 16.036 Å: pool 153, the emulation 161). The strong-beam count leaves
    room for that, and such a beam is refused as a written reflection."""
    import gemmi

    crystal = Crystal("Fe", 2.8665, gemmi.find_spacegroup_by_name("I m -3 m").hall, (Site("Fe1", "Fe", (0.0, 0.0, 0.0)),))
    s = SimulationSettings(size=8, half_width=0.5, thicknesses=(500.0,), g_limit=9.6 / 2.8665)  # 10 shells
    pool = lf.felix_pool(crystal, s)
    edge = lf._inp._edge_beams(crystal, s, pool)
    assert (8, 6, 0) in edge and (10, 0, 0) not in edge and (6, 8, 0) in edge
    assert {tuple(r) for r in pool} >= edge
    with caplog.at_level("WARNING"):
        inp = lf.felix_input_for(crystal, s)
    assert inp.min_strong_beams == len(pool) - 1 - len(edge) and "edge of FELIX's last shell" in caplog.text
    with pytest.raises(ValueError, match=r"\(8, 6, 0\).*edge of FELIX's last shell"):
        lf.write_simulation_inputs(crystal, dataclasses.replace(s, reflections=((0, 0, 0), (8, 6, 0))), tmp_path)


def test_runner_refuses_the_python_port_layout(tmp_path):
    crystal, s = reference_case("GaAs-110", size=8)
    lf.write_simulation_inputs(crystal, s, tmp_path)
    port = lf.format_felix_inp(read_felix_inp(tmp_path), dialect="python")
    assert parse_felix_inp(port).dialect == "python"
    (tmp_path / "felix.inp").write_text(port)
    with pytest.raises(lf.FelixError, match="Python port's 'key = value' layout"):
        lf.run_felix(tmp_path, executable="/nonexistent/felix")


def test_cell_refinement_refused_where_felix_stops(tmp_path):
    linbo3 = read_cif(GENERAL / "LiNbO3.cif")
    with pytest.raises(ValueError, match="F \\(cell\\).*trigonal"):
        lf.refine_letters("DF", linbo3)
    assert lf.refine_letters("DF", read_cif(GENERAL / "TiO2.cif"))[0] == "DF"


def test_refined_non_cubic_cell_is_read_back():
    template = read_cif(GENERAL / "TiO2.cif")
    refined = lf.RefinedStructure(cell=(4.60, 4.60, 2.96, 90.0, 90.0, 90.0), spacegroup_number=136, sites=tuple(
        lf.RefinedSite(label=s.label[:3], element=s.element, frac=s.frac, b_iso=0.7, occupancy=1.0, su={})
        for s in template.sites))
    crystal, _ = lf.refined_crystal(template, refined)
    assert (crystal.cell.a, crystal.cell.c) == (4.60, 2.96) and crystal.sites[1].b_iso == 0.7


# ------------------------------------------------------------------------------------------------
# Every general reference run, against its own files (../shared)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def general_runs(shared_dir):
    runs = shared_dir / "data" / "felix-reference" / "general"
    if not runs.is_dir():
        pytest.skip(f"FELIX's general reference runs {runs} are absent")
    return runs


@pytest.mark.parametrize("name", RUNS)
def test_inputs_reproduce_the_reference_run(general_runs, name, tmp_path):
    run = general_runs / name
    ref = read_felix_inp(run / "felix.inp")
    crystal = read_cif(run / "felix.cif")
    refl = tuple(tuple(int(x) for x in r) for r in read_hkl(run / "felix.hkl"))
    s = SimulationSettings(
        voltage=ref.voltage, size=ref.size, half_width=ref.half_width, thicknesses=ref.thicknesses, g_limit=ref.g_limit,
        strong_beams=ref.min_strong_beams, reflections=refl, zone=ref.beam_direction, x_direction=ref.x_direction,
        normal=ref.normal_direction, absorption_model=MODELS[ref.absorb_flag], strong_rule="felix", mean_absorption=False,
    )
    chem, inp = lf.write_simulation_inputs(crystal, s, tmp_path)
    assert compared(read_felix_inp(tmp_path)) == compared(ref)
    assert (tmp_path / "felix.hkl").read_text() == (run / "felix.hkl").read_text()
    # FELIX's own pool, as its StructureFactors.txt lists it
    sf = lf.read_structure_factors(run / lf.sim_folder_name(chem, 500, ref.size) / "StructureFactors.txt")
    assert {tuple(r) for r in lf.felix_pool(crystal, s)} == {tuple(r) for r in sf.hkl}
    # felix.cif as FELIX reads it: cell, group, operators, atom rows (numbers compared as numbers)
    ours, theirs = (tmp_path / "felix.cif").read_text(), (run / "felix.cif").read_text()
    for key in ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta",
                "_cell_angle_gamma", "_symmetry_Int_Tables_number"):
        assert float(cif_items(ours)[key]) == float(cif_items(theirs)[key]), key
    assert felix_ops(ours) == felix_ops(theirs)
    for a, b in zip(atom_rows(ours), atom_rows(theirs), strict=True):
        assert a[:3] == b[:3] and [float(x) for x in a[3:]] == [float(x) for x in b[3:]]
    assert felix_cell_atoms(ours) == felix_cell_atoms(theirs) == len(crystal.atoms().Z)


# ------------------------------------------------------------------------------------------------
# The real FELIX (skipped without one)
# ------------------------------------------------------------------------------------------------
def _real_felix() -> Path:
    try:
        return lf.find_felix()
    except lf.FelixError as exc:
        pytest.skip(f"no FELIX executable: {exc.args[0].split(': ', 1)[-1]}")


@pytest.mark.parametrize("name", ["GaAs-110-bk", "TiO2-001", "GaN-100-ITA"])
def test_real_felix_matches_the_engine_at_any_zone(name, tmp_path):
    """FELIX run by the plugin against the engine with FELIX's strong-beam rule and without U′₀:
    GaAs [110] Bird–King, rutile [001] and GaN [100] at the ITA origin (felix.cif atom by atom),
    16×16, two thicknesses, a bright- and two dark-field discs; r ≥ 0.9999 (≥ 0.999995 measured at
    32×32 and all discs)."""
    from lacbed_refine.simulators.bloch import simulate_crystal

    exe = _real_felix()
    base = name.removesuffix("-ITA")
    crystal, s = reference_case(base, size=16)
    if name.endswith("-ITA"):
        crystal = crystal.shifted((1 / 3, 2 / 3, 0))
    s = dataclasses.replace(s, thicknesses=(500.0, 1500.0), reflections=REFERENCE[base]["refl"][:3])
    felix = lf.FelixSimulator(exe, workdir=tmp_path / "run").simulate(crystal, s)
    ours, _ = simulate_crystal(crystal, s, precision="reference")
    assert felix.shape == ours.shape == (2, 3, 16, 16)
    for t in range(2):
        for r in range(3):
            corr = np.corrcoef(felix[t, r].ravel(), ours[t, r].ravel())[0, 1]
            assert corr >= 0.9999, (t, r, corr)
    assert ("every atom of the cell" in (tmp_path / "run" / "felix.cif").read_text()) == name.endswith("-ITA")
    assert not math.isnan(float(felix.sum()))


def test_cli_export_at_another_zone(tmp_path):
    from click.testing import CliRunner

    from lacbed_felix.cli import felix_group

    result = CliRunner().invoke(felix_group, [
        "export", str(GENERAL / "GaAs.cif"), "-o", str(tmp_path / "set"), "--zone", "1,1,0", "--g-limit", "1.46",
        "--absorption-model", "bird-king", "--refine", "D", "--reflections", "0 0 0;0 0 2"])
    assert result.exit_code == 0, result.output
    inp = read_felix_inp(tmp_path / "set")
    assert (inp.beam_direction, inp.x_direction, inp.absorb_flag, inp.refine_mode) == ((1, 1, 0), (0, 0, 1), 2, "D")
    assert [tuple(r) for r in read_hkl(tmp_path / "set" / "felix.hkl")] == [(0, 0, 0), (0, 0, 2)]
    bad = CliRunner().invoke(felix_group, ["export", str(GENERAL / "GaAs.cif"), "-o", str(tmp_path / "b"), "--zone", "1,1"])
    assert bad.exit_code == 2 and "--zone '1,1': expected three integers" in bad.output
