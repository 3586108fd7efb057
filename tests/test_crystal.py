"""Tests for lacbed_refine.structure.crystal: CIF reading, symmetry expansion and CIF writing."""

import csv
import math
import os
import warnings

import gemmi
import numpy as np
import pytest

from lacbed_refine.structure.crystal import DEFAULT_B_ISO, Crystal, CrystalError, Site
from lacbed_refine.io.cif import read_cif, write_cif

SPINEL_ORIGIN2_OPS = [op.triplet() for op in gemmi.symops_from_hall("-F 4vw 2vw 3")]


def make_cif(
    *,
    a="8.0800",
    hm=None,
    hall=None,
    number=None,
    ops=None,
    ops_tag="_space_group_symop_operation_xyz",
    columns=("label", "type_symbol", "fract_x", "fract_y", "fract_z"),
    rows=(),
    extra="",
) -> str:
    """A small CIF text; ``rows`` are tuples of strings matching ``columns`` (``_atom_site_`` tags)."""
    lines = ["data_test"]
    for tag in ("a", "b", "c"):
        lines.append(f"_cell_length_{tag} {a}")
    lines += ["_cell_angle_alpha 90", "_cell_angle_beta 90", "_cell_angle_gamma 90"]
    if hm is not None:
        lines.append(f"_symmetry_space_group_name_H-M '{hm}'")
    if hall is not None:
        lines.append(f"_space_group_name_Hall '{hall}'")
    if number is not None:
        lines.append(f"_space_group_IT_number {number}")
    if ops is not None:
        lines += ["loop_", ops_tag] + [f"'{op}'" for op in ops]
    lines += ["loop_"] + [f"_atom_site_{c}" for c in columns]
    lines += [" ".join(r) for r in rows]
    return "\n".join(lines) + "\n" + extra


def write(tmp_path, text, name="test.cif"):
    path = tmp_path / name
    path.write_text(text)
    return path


def distinct_positions(frac: np.ndarray, tol: float = 1e-3) -> int:
    d = frac[:, None, :] - frac[None, :, :]
    same = np.all(np.abs(d - np.rint(d)) < tol, axis=-1)
    seen = np.zeros(len(frac), dtype=bool)
    count = 0
    for i in range(len(frac)):
        if not seen[i]:
            count += 1
            seen |= same[i]
    return count


def multiplicities(crystal: Crystal) -> dict[str, int]:
    return {s.label: o.multiplicity for s, o in zip(crystal.sites, crystal.orbits())}


# -- the FELIX reference CIFs -----------------------------------------------------------------
REFERENCE = {
    "MgO": (225, 4.212, {"Mg1": 4, "O1": 4}),
    "Si": (227, 5.431, {"Si1": 8}),
    "GaAs": (216, 5.653, {"Ga1": 4, "As1": 4}),
    "CaF2": (225, 5.463, {"Ca1": 4, "F1": 8}),
    "MgAl2O4": (227, 8.08, {"Mg1": 8, "Al1": 16, "O1": 32}),
    "SrTiO3": (221, 3.905, {"Sr1": 1, "Ti1": 1, "O1": 3}),
}


@pytest.mark.parametrize("run", sorted(REFERENCE))
def test_reference_cifs(reference_runs, run):
    number, a, mult = REFERENCE[run]
    crystal = read_cif(reference_runs / run / "felix.cif")
    assert crystal.spacegroup_number == number
    assert crystal.a == pytest.approx(a)
    assert multiplicities(crystal) == mult
    assert crystal.name == run
    atoms = crystal.atoms()
    assert len(atoms.frac) == sum(mult.values())
    assert distinct_positions(atoms.frac) == sum(mult.values())
    assert np.all(atoms.b_iso == 0.5)
    assert all(s.wyckoff for s in crystal.sites)  # the FELIX CIFs give Wyckoff letters


def test_reference_origin_choices(reference_runs):
    # Both Fd-3m CIFs give explicit operators: Si in origin choice 1, the spinel in choice 2.
    assert read_cif(reference_runs / "Si" / "felix.cif").spacegroup.ext == "1"
    spinel = read_cif(reference_runs / "MgAl2O4" / "felix.cif")
    assert spinel.spacegroup.ext == "2"
    assert spinel.sites[2].frac == (0.2624, 0.2624, 0.2624)
    assert [s.wyckoff for s in spinel.sites] == ["a", "d", "e"]


# -- a fixed sample of the shared cubic CIF collection ----------------------------------------
def _sample_rows(shared_dir, n=40):
    with open(shared_dir / "data" / "cubic-cifs" / "index.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["id"])
    step = max(1, len(rows) // n)
    return rows[::step][:n]


def test_shared_cif_sample(shared_dir):
    root = shared_dir / "data" / "cubic-cifs"
    rows = _sample_rows(shared_dir)
    assert len(rows) == 40
    for row in rows:
        crystal = read_cif(root / row["source"] / f"{row['id']}.cif")
        atoms = crystal.atoms()
        assert crystal.spacegroup_number == int(row["spacegroup_number"]), row["id"]
        assert crystal.a == pytest.approx(float(row["a_angstrom"]), abs=1e-5), row["id"]
        # mixed-occupancy rows on one position count once in the index
        assert distinct_positions(atoms.frac) == int(row["n_atoms_conventional_cell"]), row["id"]
        assert np.all((atoms.occupancy > 0) & (atoms.occupancy <= 1))
        assert np.all(atoms.b_iso >= 0)


# -- rejections -------------------------------------------------------------------------------
def test_monoclinic_with_operators_is_read(tmp_path):
    # formerly refused as "not cubic": every space group is read now
    ops = ["x,y,z", "-x,y+1/2,-z+1/2", "-x,-y,-z", "x,-y+1/2,z+1/2"]
    text = make_cif(a="5.0", hm="P 1 21/c 1", ops=ops, rows=[("O1", "O", "0.1", "0.2", "0.3")])
    text = text.replace("_cell_length_b 5.0", "_cell_length_b 6.0").replace("_cell_angle_beta 90", "_cell_angle_beta 101.5")
    crystal = read_cif(write(tmp_path, text))
    assert (crystal.spacegroup_number, crystal.spacegroup_symbol) == (14, "P 1 21/c 1")
    assert (crystal.cell.b, crystal.cell.beta) == (6.0, 101.5)
    assert multiplicities(crystal) == {"O1": 4}
    assert not crystal.is_cubic


def test_monoclinic_symbol_only_is_read(tmp_path):
    path = write(tmp_path, make_cif(a="5.0", hm="P 21/c", rows=[("O1", "O", "0.1", "0.2", "0.3")]))
    crystal = read_cif(path)
    assert crystal.spacegroup_symbol == "P 1 21/c 1"
    assert len(crystal.atoms().frac) == 4


def test_cell_that_fits_no_monoclinic_axis_is_refused(tmp_path):
    text = make_cif(a="5.0", hm="P 21/c", rows=[("O1", "O", "0.1", "0.2", "0.3")])
    text = text.replace("_cell_angle_alpha 90", "_cell_angle_alpha 100").replace("_cell_angle_beta 90", "_cell_angle_beta 100")
    path = write(tmp_path, text)
    with pytest.raises(CrystalError, match=r"is not monoclinic although the space group is P 1 21/c 1 \(No\. 14") as info:
        read_cif(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "content", ["this is not a CIF\n{{ junk ]]\n", "", "data_x\n_cell_length_a 4.0\n"]
)
def test_malformed_or_empty_rejected_naming_file(tmp_path, content):
    path = write(tmp_path, content, name="broken.cif")
    with pytest.raises(CrystalError) as info:
        read_cif(path)
    message = str(info.value)
    assert message.startswith(str(path))
    assert "\n" not in message


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.cif"):
        read_cif("nope.cif")


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([("Mg1", "Mg", "0", "0", "0", "1.5")], "occupancy 1.5 outside"),
        (
            [("Mg1", "Mg", "0", "0", "0", "0.7"), ("Fe1", "Fe", "0", "0", "0", "0.7")],
            "summed occupancy 1.400",
        ),
        ([("Q1", "Q", "0", "0", "0", "1")], "no known element"),
        ([("Mg1", "Mg", "?", "0", "0", "1")], "no numeric fractional coordinates"),
    ],
)
def test_bad_sites_rejected(tmp_path, rows, match):
    columns = ("label", "type_symbol", "fract_x", "fract_y", "fract_z", "occupancy")
    path = write(tmp_path, make_cif(a="4.2", hm="F m -3 m", columns=columns, rows=rows))
    with pytest.raises(CrystalError, match=match):
        read_cif(path)


def test_cubic_group_with_tetragonal_cell_rejected(tmp_path):
    text = make_cif(a="4.2", hm="F m -3 m", rows=[("Mg1", "Mg", "0", "0", "0")])
    text = text.replace("_cell_length_c 4.2", "_cell_length_c 4.4")
    with pytest.raises(CrystalError, match="is not cubic although the space group is F m -3 m"):
        read_cif(write(tmp_path, text))


# -- displacement parameters and occupancy ---------------------------------------------------
def test_b_from_u_and_precedence(tmp_path):
    columns = ("label", "type_symbol", "fract_x", "fract_y", "fract_z", "U_iso_or_equiv", "B_iso_or_equiv")
    rows = [
        ("Mg1", "Mg2+", "0", "0", "0", "0.0100(3)", "?"),  # U only
        ("O1", "O2-", "0.5", "0.5", "0.5", "0.02", "0.7"),  # B wins
    ]
    crystal = read_cif(write(tmp_path, make_cif(a="4.212", hm="F m -3 m", columns=columns, rows=rows)))
    assert crystal.sites[0].b_iso == pytest.approx(8 * math.pi**2 * 0.01)
    assert crystal.sites[1].b_iso == pytest.approx(0.7)
    assert [s.element for s in crystal.sites] == ["Mg", "O"]


def test_b_from_anisotropic_u(tmp_path):
    text = make_cif(a="4.212", hm="F m -3 m", rows=[("Mg1", "Mg", "0", "0", "0")])
    text += "loop_\n_atom_site_aniso_label\n_atom_site_aniso_U_11\n_atom_site_aniso_U_22\n"
    text += "_atom_site_aniso_U_33\n_atom_site_aniso_U_12\n_atom_site_aniso_U_13\n_atom_site_aniso_U_23\n"
    text += "Mg1 0.01 0.01 0.01 0 0 0\n"
    crystal = read_cif(write(tmp_path, text))
    assert crystal.sites[0].b_iso == pytest.approx(8 * math.pi**2 * 0.01, rel=1e-6)


@pytest.mark.parametrize("u_column", [True, False])
def test_absent_b_gives_default(tmp_path, u_column):
    columns = ("label", "type_symbol", "fract_x", "fract_y", "fract_z")
    columns += ("U_iso_or_equiv",) if u_column else ()
    row = ("Mg1", "Mg", "0", "0", "0") + (("?",) if u_column else ())
    path = write(tmp_path, make_cif(a="4.212", hm="F m -3 m", columns=columns, rows=[row]))
    assert read_cif(path).sites[0].b_iso == DEFAULT_B_ISO
    assert read_cif(path, default_b_iso=0.8).sites[0].b_iso == 0.8


def test_uncertainties_and_mixed_occupancy(tmp_path):
    # a spinel with a mixed tetrahedral site, values with standard uncertainties
    columns = ("label", "type_symbol", "fract_x", "fract_y", "fract_z", "occupancy", "U_iso_or_equiv")
    rows = [
        ("Mg1", "Mg", "0.125", "0.125", "0.125", "0.6(1)", "?"),
        ("Fe1", "Fe", "0.125", "0.125", "0.125", "0.4(1)", "?"),
        ("Al1", "Al", "0.5", "0.5", "0.5", "1", "0.0050(2)"),
        ("O1", "O", "0.2624(3)", "0.2624(3)", "0.2624(3)", "1.0", "0.0061(4)"),
    ]
    text = make_cif(hall="-F 4vw 2vw 3", hm="F d -3 m", ops=SPINEL_ORIGIN2_OPS, columns=columns, rows=rows)
    crystal = read_cif(write(tmp_path, text))
    assert crystal.sites[3].frac == (0.2624, 0.2624, 0.2624)
    assert [s.occupancy for s in crystal.sites] == [0.6, 0.4, 1.0, 1.0]
    assert multiplicities(crystal) == {"Mg1": 8, "Fe1": 8, "Al1": 16, "O1": 32}
    assert distinct_positions(crystal.atoms().frac) == 56
    assert crystal.sites[0].b_iso == DEFAULT_B_ISO
    assert crystal.sites[2].b_iso == pytest.approx(8 * math.pi**2 * 0.005)


def test_shared_position_slightly_over_full_is_rescaled(tmp_path):
    columns = ("label", "type_symbol", "fract_x", "fract_y", "fract_z", "occupancy")
    rows = [("Mg1", "Mg", "0", "0", "0", "0.52"), ("Fe1", "Fe", "0", "0", "0", "0.50")]
    crystal = read_cif(write(tmp_path, make_cif(a="4.2", hm="F m -3 m", columns=columns, rows=rows)))
    assert sum(s.occupancy for s in crystal.sites) == pytest.approx(1.0)
    assert crystal.sites[0].occupancy == pytest.approx(0.52 / 1.02)


# -- space group and special positions --------------------------------------------------------
def test_symbol_without_operators(tmp_path):
    rows = [("Na1", "Na", "0", "0", "0"), ("Cl1", "Cl", "0.5", "0.5", "0.5")]
    crystal = read_cif(write(tmp_path, make_cif(a="5.64", hm="F m -3 m", rows=rows)))
    assert crystal.spacegroup_number == 225
    assert multiplicities(crystal) == {"Na1": 4, "Cl1": 4}


def test_number_only(tmp_path):
    rows = [("Cs1", "Cs", "0", "0", "0"), ("Cl1", "Cl", "0.5", "0.5", "0.5")]
    crystal = read_cif(write(tmp_path, make_cif(a="4.12", number=221, rows=rows)))
    assert crystal.spacegroup_symbol == "P m -3 m"
    assert len(crystal.atoms().frac) == 2


SPINEL_ROWS_ORIGIN2 = [
    ("Mg1", "Mg", "0.125", "0.125", "0.125"),
    ("Al1", "Al", "0.5", "0.5", "0.5"),
    ("O1", "O", "0.2624", "0.2624", "0.2624"),
]


@pytest.mark.parametrize("hm", ["F d -3 m:2", "F d -3 m Z"])
def test_symbol_with_origin_choice(tmp_path, hm):
    crystal = read_cif(write(tmp_path, make_cif(hm=hm, rows=SPINEL_ROWS_ORIGIN2)))
    assert crystal.hall == "-F 4vw 2vw 3"
    assert multiplicities(crystal) == {"Mg1": 8, "Al1": 16, "O1": 32}


def test_coordinate_system_code(tmp_path):
    extra = "_space_group_IT_coordinate_system_code 2\n"
    text = make_cif(hm="F d -3 m", rows=SPINEL_ROWS_ORIGIN2, extra=extra)
    assert read_cif(write(tmp_path, text)).hall == "-F 4vw 2vw 3"


@pytest.mark.parametrize(
    ("rows", "a", "origin", "mult"),
    [
        (SPINEL_ROWS_ORIGIN2, "8.08", "2", {"Mg1": 8, "Al1": 16, "O1": 32}),
        ([("Si1", "Si", "0", "0", "0")], "5.431", "1", {"Si1": 8}),
    ],
)
def test_two_origin_group_without_choice_warns_and_guesses(tmp_path, rows, a, origin, mult):
    path = write(tmp_path, make_cif(a=a, hm="F d -3 m", rows=rows))
    with pytest.warns(UserWarning, match=f"took origin choice {origin}"):
        crystal = read_cif(path)
    assert crystal.spacegroup.ext == origin
    assert multiplicities(crystal) == mult


def test_operators_decide_over_symbol(tmp_path):
    # Hall and H-M say origin choice 1, the operators are those of origin choice 2.
    text = make_cif(hm="F d -3 m:1", hall="F 4d 2 3 -1d", ops=SPINEL_ORIGIN2_OPS, rows=SPINEL_ROWS_ORIGIN2)
    crystal = read_cif(write(tmp_path, text))
    assert crystal.hall == "-F 4vw 2vw 3"
    assert len(crystal.atoms().frac) == 56


def test_legacy_operator_tag_without_centring(tmp_path):
    # Operators listed without the F-centring translations: the symbol supplies them.
    ops = [op.triplet() for op in gemmi.find_spacegroup_by_name("F m -3 m").operations().sym_ops]
    rows = [("Mg1", "Mg", "0", "0", "0"), ("O1", "O", "0.5", "0.5", "0.5")]
    text = make_cif(a="4.212", hm="F m -3 m", ops=ops, ops_tag="_symmetry_equiv_pos_as_xyz", rows=rows)
    crystal = read_cif(write(tmp_path, text))
    assert crystal.spacegroup_number == 225
    assert multiplicities(crystal) == {"Mg1": 4, "O1": 4}


def test_near_special_position_is_snapped(tmp_path):
    rows = [
        ("Mg1", "Mg", "0.1249", "0.1251", "0.1250"),  # 8a within 1e-3
        ("Al1", "Al", "0.4996", "0.5", "0.5004"),  # 16d
        ("O1", "O", "0.2624", "0.2625", "0.2623"),  # 32e, x,x,x
    ]
    crystal = read_cif(write(tmp_path, make_cif(hm="F d -3 m:2", rows=rows)))
    assert crystal.sites[0].frac == (0.125, 0.125, 0.125)
    assert crystal.sites[1].frac == (0.5, 0.5, 0.5)
    assert crystal.sites[2].frac == pytest.approx((0.2624, 0.2624, 0.2624))
    assert len(set(crystal.sites[2].frac)) == 1
    assert multiplicities(crystal) == {"Mg1": 8, "Al1": 16, "O1": 32}
    assert distinct_positions(crystal.atoms().frac, tol=1e-9) == 56


def test_site_symmetry_of_spinel_oxygen(tmp_path):
    crystal = read_cif(write(tmp_path, make_cif(hm="F d -3 m:2", rows=SPINEL_ROWS_ORIGIN2)))
    rot, tra = crystal.site_symmetry(2)
    assert len(rot) == 192 // 32  # site symmetry .3m, order 6
    r = np.asarray(crystal.sites[2].frac)
    images = np.einsum("sij,j->si", rot, r) + tra
    np.testing.assert_allclose(images, np.broadcast_to(r, images.shape), atol=1e-12)


def test_shifted_drops_wyckoff_letters(reference_runs):
    si = read_cif(reference_runs / "Si" / "felix.cif")
    moved = si.shifted([-1 / 8, -1 / 8, -1 / 8])  # origin choice 1 -> 2
    assert moved.spacegroup.ext == "2"
    assert moved.sites[0].wyckoff == ""
    assert len(moved.atoms().frac) == 8


# -- writing ----------------------------------------------------------------------------------
def _spinel_crystal():
    sites = (
        Site("Mg1", "Mg", (0.125, 0.125, 0.125), occupancy=0.75, b_iso=0.41, wyckoff="a"),
        Site("Fe1", "Fe", (0.125, 0.125, 0.125), occupancy=0.25, b_iso=0.41, wyckoff="a"),
        Site("Al1", "Al", (0.5, 0.5, 0.5), b_iso=0.39, wyckoff="d"),
        Site("O1", "O", (0.2624, 0.2624, 0.2624), b_iso=0.55),
    )
    return Crystal(name="MgAl2O4", a=8.0831, hall="-F 4vw 2vw 3", sites=sites)


def test_write_read_round_trip(tmp_path):
    crystal = _spinel_crystal()
    path = tmp_path / "out.cif"
    write_cif(crystal, path)
    back = read_cif(path)
    assert back.sites == crystal.sites
    assert (back.name, back.a, back.hall) == (crystal.name, crystal.a, crystal.hall)
    assert back.spacegroup_number == 227
    block = gemmi.cif.read(str(path))[0]
    assert len(block.find_values("_space_group_symop_operation_xyz")) == 192  # centring included
    assert block.find_value("_space_group_name_Hall") == "'-F 4vw 2vw 3'"
    assert list(block.find_values("_atom_site_Wyckoff_symbol")) == ["a", "a", "d", "?"]
    assert list(block.find_values("_atom_site_symmetry_multiplicity")) == ["8", "8", "16", "32"]
    assert os.listdir(tmp_path) == ["out.cif"]  # no temporary file left behind


def test_write_read_round_trip_of_reference(reference_runs, tmp_path):
    for run in REFERENCE:
        crystal = read_cif(reference_runs / run / "felix.cif")
        write_cif(crystal, tmp_path / "x.cif")
        back = read_cif(tmp_path / "x.cif")
        assert back.sites == crystal.sites
        assert (back.a, back.hall, back.name) == (crystal.a, crystal.hall, crystal.name)


def test_write_replaces_existing_file(tmp_path):
    path = tmp_path / "out.cif"
    path.write_text("old content")
    write_cif(_spinel_crystal(), path)
    assert read_cif(path).a == 8.0831


def test_write_with_uncertainties(tmp_path):
    crystal = _spinel_crystal()
    su = {("O1", axis): 3e-4 for axis in "xyz"}
    su |= {("Al1", "b_iso"): 0.012, ("Mg1", "occupancy"): 0.02}
    path = tmp_path / "su.cif"
    write_cif(crystal, path, uncertainties=su)
    text = path.read_text()
    assert "0.2624(3) 0.2624(3) 0.2624(3)" in text
    assert "0.390(12)" in text
    assert "0.75(2)" in text
    back = read_cif(path)
    assert back.sites[3].frac == (0.2624, 0.2624, 0.2624)
    assert back.sites[2].b_iso == pytest.approx(0.39)


@pytest.mark.parametrize(
    ("key", "match"), [(("Zz9", "x"), "unknown site label 'Zz9'"), (("O1", "u"), "unknown field 'u'")]
)
def test_write_rejects_bad_uncertainty_keys(tmp_path, key, match):
    with pytest.raises(ValueError, match=match):
        write_cif(_spinel_crystal(), tmp_path / "x.cif", uncertainties={key: 0.1})
    assert not os.listdir(tmp_path)


def test_read_emits_no_warning_with_operators(reference_runs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_cif(reference_runs / "MgAl2O4" / "felix.cif")


def test_operators_conflicting_with_symbol_warn_and_win(tmp_path):
    ops = [op.triplet() for op in gemmi.symops_from_hall("-P 4 2 3")]  # P m -3 m
    text = make_cif(a="3.905", hm="P -4 3 m", ops=ops, rows=[("Sr1", "Sr", "0", "0", "0")])
    with pytest.warns(UserWarning, match=r"operators give P m -3 m \(No\. 221\)"):
        crystal = read_cif(write(tmp_path, text))
    assert crystal.spacegroup_number == 221
