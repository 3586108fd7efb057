"""Wyckoff positions from the space-group operations, synthetic crystals, formulas and splits."""

from __future__ import annotations

import gemmi
import numpy as np
import pytest

from lacbed_refine.io.cif import read_cif, write_cif
from lacbed_refine.structure.formula import reduced_formula
from lacbed_refine.dataset.splits import assign_split, read_split_files
from lacbed_refine.dataset.synthetic import REAL_A_QUANTILES, SyntheticConfig, random_crystal, synthetic_id
from lacbed_refine.structure.wyckoff import wyckoff_positions

# Multiplicities of every Wyckoff position, International Tables Vol. A (letters a, b, c, …).
ITA_MULTIPLICITIES = {
    195: [1, 1, 3, 3, 4, 6, 6, 6, 6, 12],
    198: [4, 12],
    205: [4, 4, 8, 24],
    216: [4, 4, 4, 4, 16, 24, 24, 48, 96],
    220: [12, 12, 16, 24, 48],
    221: [1, 1, 3, 3, 6, 6, 8, 12, 12, 12, 24, 24, 24, 48],
    225: [4, 4, 8, 24, 24, 32, 48, 48, 48, 96, 96, 192],
    227: [8, 8, 16, 16, 32, 48, 96, 96, 192],
    228: [16, 32, 32, 48, 64, 96, 96, 192],
    229: [2, 6, 8, 12, 12, 16, 24, 24, 48, 48, 48, 96],
    230: [16, 16, 24, 24, 32, 48, 48, 96],
}


def _hall(number: int) -> str:
    return gemmi.find_spacegroup_by_number(number).hall


@pytest.mark.parametrize("number", sorted(ITA_MULTIPLICITIES))
def test_wyckoff_multiplicities_match_international_tables(number):
    positions = wyckoff_positions(_hall(number))
    assert sorted(w.multiplicity for w in positions) == ITA_MULTIPLICITIES[number]
    general = positions[-1]
    assert general.dimension == 3 and general.site_symmetry_order == 1
    # multiplicity × site-symmetry order is the general multiplicity
    assert all(w.multiplicity * w.site_symmetry_order == general.multiplicity for w in positions)


@pytest.mark.parametrize("number", [221, 227, 230])
def test_wyckoff_points_have_their_multiplicity(number):
    """A random point of each position generates an orbit of exactly its multiplicity."""
    from lacbed_refine.structure.spacegroup import symmetry_operations
    from lacbed_refine.dataset.synthetic import _orbit_positions

    rot, tra = symmetry_operations(_hall(number))
    rng = np.random.default_rng(0)
    for w in wyckoff_positions(_hall(number)):
        frac = w.sample(rng.uniform(0.05, 0.2, w.dimension))
        assert len(_orbit_positions(frac, rot, tra)) == w.multiplicity
    # x,x,x in Fd-3m (32e) has direction (1, 1, 1)
    if number == 227:
        lines = [w for w in wyckoff_positions(_hall(227)) if w.multiplicity == 32]
        assert lines[0].directions.tolist() == [[1, 1, 1]]


def test_wyckoff_rejects_unknown_hall():
    with pytest.raises(ValueError, match="Hall"):
        wyckoff_positions("not a hall symbol")


def test_random_crystal_is_reproducible_and_round_trips(tmp_path):
    a = random_crystal(7, 5)
    b = random_crystal(7, 5)
    assert a == b and a.source == "synthetic:seed=7:index=5"
    assert random_crystal(7, 6) != a and random_crystal(8, 5) != a
    assert a.spacegroup_number == 195 + 5
    path = tmp_path / "x.cif"
    write_cif(a, path)
    back = read_cif(path)
    assert back.formula == a.formula and back.spacegroup_number == a.spacegroup_number
    assert np.allclose(back.atoms().frac, a.atoms().frac)


@pytest.mark.parametrize("index", [0, 4, 17, 26, 33, 35])
def test_random_crystals_are_plausible(index):
    cfg = SyntheticConfig()
    c = random_crystal(3, index, config=cfg)
    assert c.spacegroup_number == 195 + index
    assert cfg.a_range[0] <= c.a <= cfg.a_range[1]
    atoms = c.atoms()
    assert all(cfg.b_iso_range[0] <= s.b_iso <= cfg.b_iso_range[1] for s in c.sites)
    assert np.all(atoms.occupancy == 1.0)
    # no two atoms closer than the minimum distance (periodic images included)
    d = atoms.frac[:, None, :] - atoms.frac[None, :, :]
    d = (d - np.rint(d)) * c.a
    dist = np.sqrt((d * d).sum(-1))
    np.fill_diagonal(dist, np.inf)
    if len(atoms.Z) > 1:
        assert dist.min() >= cfg.min_distance - 1e-9
    assert c.name == reduced_formula(_counts(c))


def _counts(c):
    out = {}
    for s, o in zip(c.sites, c.orbits()):
        out[s.element] = out.get(s.element, 0) + o.multiplicity
    return out


def test_cell_edges_follow_the_real_distribution():
    from lacbed_refine.dataset.synthetic import _sample_a

    rng = np.random.default_rng(0)
    a = np.array([_sample_a(rng, SyntheticConfig()) for _ in range(4000)])
    assert a.min() >= 3.0 and a.max() <= 20.0
    # quartiles of the real cubic structures (3-20 Å)
    assert np.allclose(np.percentile(a, [25, 50, 75]), np.array(REAL_A_QUANTILES)[[10, 20, 30]], rtol=0.05)
    assert 3.0 <= random_crystal(11, 0, spacegroup=221).a <= 20.0


def test_synthetic_id():
    assert synthetic_id(3, 42) == "syn3-000042"


@pytest.mark.parametrize(
    "counts, expected",
    [
        ({"Mg": 8, "Al": 16, "O": 32}, "Al2MgO4"),
        ({"Sr": 1, "Ti": 1, "O": 3}, "O3SrTi"),
        ({"Mg": 7.995, "Al": 16, "O": 32}, "Al2MgO4"),
        ({"C": 4, "H": 8, "N": 2}, "C2H4N"),
        ({"Fe": 0.5, "Ni": 0.5}, "FeNi"),
        ({"Fe": 1.2, "Ni": 2.8}, "Fe3Ni7"),
        ({"Fe": 1.237, "Ni": 2.763}, "Fe0.309Ni0.691"),
    ],
)
def test_reduced_formula(counts, expected):
    assert reduced_formula(counts) == expected


def test_split_is_stable_and_by_formula(tmp_path):
    keys = [f"K{i}" for i in range(4000)]
    splits = [assign_split(k, seed=0) for k in keys]
    assert splits == [assign_split(k, seed=0) for k in keys]  # stable
    share = {s: splits.count(s) / len(keys) for s in ("train", "validation", "test")}
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["test"] - 0.1) < 0.02
    assert [assign_split(k, seed=1) for k in keys] != splits  # the seed matters
    # the same compound written with another Z lands in the same split
    f1 = reduced_formula({"Mg": 8, "Al": 16, "O": 32})
    f2 = reduced_formula({"Mg": 1, "Al": 2, "O": 4})
    assert assign_split(f1) == assign_split(f2)
    (tmp_path / "train").write_text("a\nb\n")
    (tmp_path / "val.txt").write_text("c\n")
    (tmp_path / "test").write_text("d\n\n")
    assert read_split_files(sorted(tmp_path.iterdir())) == {"a": "train", "b": "train", "c": "validation", "d": "test"}
    (tmp_path / "misc").write_text("e\n")
    with pytest.raises(ValueError, match="misc"):
        read_split_files([tmp_path / "misc"])
