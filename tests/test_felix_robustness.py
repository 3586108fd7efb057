"""FELIX plugin, bad input (issue 12): ``felix export``'s default refinement adapts to what FELIX can
refine for the crystal and says what it dropped, options are checked before anything is written,
nothing is overwritten without ``--overwrite``, and FELIX's environment variables are checked where
they are read, before FELIX runs."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

lf = pytest.importorskip("lacbed_felix", reason="the FELIX plugin is not installed (pip install -e plugins/felix)")

from lacbed_refine.io.cif import read_cif  # noqa: E402
from lacbed_felix.cli import felix_group  # noqa: E402

DATA = Path(__file__).parent / "data" / "felix"

CELL = """_cell_length_a {a}
_cell_length_b {a}
_cell_length_c {a}
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M '{sg}'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_B_iso_or_equiv
"""

#: Pm-3m: no site has a free coordinate, and FELIX refines coordinates in F-43m only.
SRTIO3 = "data_SrTiO3\n" + CELL.format(a=3.905, sg="P m -3 m") + """Sr1 Sr 0 0 0 0.5
Ti1 Ti 0.5 0.5 0.5 0.5
O1 O 0 0.5 0.5 0.5
"""
#: F-43m with every site on a fixed position (4a, 4c): nothing for coordinate refinement.
ZNS = "data_ZnS\n" + CELL.format(a=5.41, sg="F -4 3 m") + """Zn1 Zn 0 0 0 0.5
S1 S 0.25 0.25 0.25 0.5
"""
#: F-43m with an O on 16e (x,x,x): coordinates can be refined.
ZNSO = "data_ZnSO\n" + CELL.format(a=5.8, sg="F -4 3 m") + """Zn1 Zn 0 0 0 0.5
S1 S 0.25 0.25 0.25 0.5
O1 O 0.6 0.6 0.6 0.5
"""


def cif(tmp_path: Path, text: str, name: str) -> Path:
    path = tmp_path / f"{name}.cif"
    path.write_text(text)
    return path


def export(tmp_path, text, name, *args):
    """``felix export`` of a CIF through the command group; returns the result and the output folder."""
    out = tmp_path / "out"
    res = CliRunner().invoke(felix_group, ["export", str(cif(tmp_path, text, name)), "-o", str(out), *args])
    return res, out


def assert_clean_error(res, *words):
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and "error" in lines[0].lower(), res.output
    for w in words:
        assert w in lines[0], (w, lines[0])


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------------
# The default --refine adapts to the crystal; an explicit impossible one is an error
# ------------------------------------------------------------------------------------------------
def test_default_refine_drops_coordinates_outside_f43m(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        res, out = export(tmp_path, SRTIO3, "SrTiO3")
    assert res.exit_code == 0, res.output
    assert lf.read_felix_inp(out / "felix.inp").refine_mode == "D"
    said = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "B" in said and "F-43m" in said and "P m -3 m" in said, said
    assert "(D)" in res.output


def test_default_refine_drops_coordinates_without_a_free_coordinate(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        res, out = export(tmp_path, ZNS, "ZnS")
    assert res.exit_code == 0, res.output
    assert lf.read_felix_inp(out / "felix.inp").refine_mode == "D"
    said = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "B" in said and "free coordinate" in said, said


def test_default_refine_keeps_coordinates_when_felix_can(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        res, out = export(tmp_path, ZNSO, "ZnSO")
    assert res.exit_code == 0, res.output
    assert lf.read_felix_inp(out / "felix.inp").refine_mode == "BD"
    assert not [r for r in caplog.records if "dropped" in r.getMessage()]
    # the refined sites decide: Zn1 and S1 alone have no free coordinate
    (tmp_path / "b").mkdir()
    res, out = export(tmp_path / "b", ZNSO, "ZnSO", "--sites", "1,2")
    assert res.exit_code == 0, res.output
    assert lf.read_felix_inp(out / "felix.inp").refine_mode == "D"


def test_default_refine_library_adapts_too(tmp_path):
    crystal = read_cif(cif(tmp_path, SRTIO3, "SrTiO3"))
    result = lf.export_refinement(crystal, None, tmp_path / "lib")
    assert result.input.refine_mode == "D" and result.dropped and "B" in result.dropped[0]


def test_cli_default_refine_says_what_it_dropped(tmp_path):
    """The whole command line, as a user runs it: exit 0 and a warning on stderr."""
    path = cif(tmp_path, SRTIO3, "SrTiO3")
    proc = subprocess.run([sys.executable, "-m", "lacbed_refine_cli.main", "felix", "export", str(path), "-o",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "F-43m" in proc.stderr and "B" in proc.stderr, proc.stderr
    assert (tmp_path / "out" / "felix.inp").is_file()


@pytest.mark.parametrize("name,letters,words", [
    ("SrTiO3", "B", ("F-43m",)),
    ("SrTiO3", "BD", ("F-43m",)),
    ("ZnS", "B", ("free coordinate",)),
])
def test_explicit_refine_felix_cannot_do_is_an_error_before_writing(tmp_path, name, letters, words):
    res, out = export(tmp_path, {"SrTiO3": SRTIO3, "ZnS": ZNS}[name], name, "--refine", letters)
    assert_clean_error(res, "refine", *words)
    assert not out.exists()


def test_explicit_coordinates_with_other_letters_warn_when_nothing_moves(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        res, out = export(tmp_path, ZNS, "ZnS", "--refine", "BD")
    assert res.exit_code == 0, res.output
    assert lf.read_felix_inp(out / "felix.inp").refine_mode == "BD"
    assert any("free coordinate" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------------------------
# Options checked before anything is written
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["50,200,0", "50,200,-10", "200,50,10", "-50,200,50", "0,200,50", "nan,200,50",
                                   "50,nan,50", "50,200,nan", "50,inf,50", "1,4000,1e-9", "50,200", "50,9000,50"])
def test_bad_thickness_grid(tmp_path, value):
    res, out = export(tmp_path, SRTIO3, "SrTiO3", "--thickness", value)
    assert_clean_error(res, "--thickness")
    assert not out.exists()


@pytest.mark.parametrize("option,value", [("--kv", "0"), ("--kv", "-200"), ("--kv", "1e9"), ("--kv", "nan"),
                                          ("--kv", "inf"), ("--half-width", "-1"), ("--half-width", "1e6"),
                                          ("--beams", "0"), ("--beams", "100000"), ("--g-limit", "-1"),
                                          ("--absorption", "-5"), ("--absorption", "nan"), ("--strong-beams", "-3")])
def test_bad_numbers(tmp_path, option, value):
    res, out = export(tmp_path, SRTIO3, "SrTiO3", option, value)
    assert_clean_error(res, option.lstrip("-").split("-")[0])
    assert not out.exists()


@pytest.mark.parametrize("value,words", [("4", ("--sites", "4")), ("0", ("--sites", "0")), ("Xx1", ("--sites", "Xx1")),
                                         ("1,1", ("--sites", "1")), (",", ("--sites",))])
def test_bad_sites(tmp_path, value, words):
    res, out = export(tmp_path, SRTIO3, "SrTiO3", "--sites", value)
    assert_clean_error(res, *words)
    assert not out.exists()


def test_sites_by_label(tmp_path):
    res, out = export(tmp_path, SRTIO3, "SrTiO3", "--sites", "Sr1,O1")
    assert res.exit_code == 0, res.output
    assert lf.read_felix_inp(out / "felix.inp").atomic_sites == (1, 3)


def test_bad_refine_letters(tmp_path):
    for letters in ("", "Q", "S", "AD"):
        res, out = export(tmp_path, SRTIO3, "SrTiO3", "--refine", letters)
        assert_clean_error(res, "refine")
        assert not out.exists()


def test_nothing_is_overwritten_without_overwrite(tmp_path):
    res, out = export(tmp_path, SRTIO3, "SrTiO3", "--refine", "D")
    assert res.exit_code == 0, res.output
    before = digest(out)
    res, _ = export(tmp_path, SRTIO3, "SrTiO3", "--refine", "C")
    assert_clean_error(res, str(out), "--overwrite")
    assert digest(out) == before
    res, _ = export(tmp_path, SRTIO3, "SrTiO3", "--refine", "C", "--overwrite")
    assert res.exit_code == 0, res.output
    assert lf.read_felix_inp(out / "felix.inp").refine_mode == "C"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], list(tmp_path.iterdir())


def test_existing_folder_with_other_files_is_fine(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res, _ = export(tmp_path, SRTIO3, "SrTiO3")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "mine" and (out / "felix.inp").is_file()


def test_output_that_cannot_be_a_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    path = cif(tmp_path, SRTIO3, "SrTiO3")
    for out in (blocker, blocker / "sub"):
        res = CliRunner().invoke(felix_group, ["export", str(path), "-o", str(out)])
        assert_clean_error(res, str(out))
    assert blocker.read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["SrTiO3.cif", "file"]


def test_written_files_get_the_umask_mode(tmp_path):
    res, out = export(tmp_path, SRTIO3, "SrTiO3")
    assert res.exit_code == 0, res.output
    mask = os.umask(0)
    os.umask(mask)
    for p in out.rglob("*"):
        assert p.stat().st_mode & 0o777 == (0o777 if p.is_dir() else 0o666) & ~mask, p


def test_bad_pattern_writes_nothing(tmp_path):
    bad = tmp_path / "p.npy"
    np.save(bad, np.full((16, 16), np.nan))
    res, out = export(tmp_path, SRTIO3, "SrTiO3", "--pattern", str(bad))
    assert_clean_error(res)
    assert not out.exists()


@pytest.mark.parametrize("shape,args", [((4, 32, 32), ()), ((2, 32, 32), ("--reflections", "0 0 0")),
                                        ((1, 1000, 1000), ())])
def test_pattern_that_does_not_fit_names_the_file(tmp_path, shape, args):
    path = tmp_path / "measured.npy"
    np.save(path, np.random.default_rng(0).random(shape))
    res, out = export(tmp_path, SRTIO3, "SrTiO3", "--pattern", str(path), *args)
    assert_clean_error(res, str(path))
    assert not out.exists()


class _Hostile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_pattern_is_refused_without_running_it(tmp_path):
    path = tmp_path / "p.npy"
    np.save(path, np.array([_Hostile(str(tmp_path / "PWNED"))], dtype=object), allow_pickle=True)
    res, out = export(tmp_path, SRTIO3, "SrTiO3", "--pattern", str(path))
    assert_clean_error(res, str(path), "pickled")
    assert "allow_pickle" not in res.output and not (tmp_path / "PWNED").exists() and not out.exists()


def test_read_refuses_to_overwrite(tmp_path):
    sim = tmp_path / "sim" / "MgO_Sim_0500A_008x008"
    sim.mkdir(parents=True)
    lf.write_image(sim / "MgO_+0+0+0.bin", np.ones((8, 8)))
    out = tmp_path / "stack.npy"
    out.write_bytes(b"precious")
    res = CliRunner().invoke(felix_group, ["read", str(tmp_path / "sim"), "-o", str(out)])
    assert_clean_error(res, str(out), "--overwrite")
    assert out.read_bytes() == b"precious"
    res = CliRunner().invoke(felix_group, ["read", str(tmp_path / "sim"), "-o", str(out), "--overwrite"])
    assert res.exit_code == 0, res.output
    assert np.load(out).shape == (1, 1, 8, 8)


# ------------------------------------------------------------------------------------------------
# Environment variables, checked where they are read, before FELIX runs
# ------------------------------------------------------------------------------------------------
def stand_in(tmp_path: Path) -> Path:
    """A 'felix' that only records that it ran."""
    path = tmp_path / "bin" / "felix"
    path.parent.mkdir()
    path.write_text(f"#!{sys.executable}\nopen('ran', 'w').write('yes')\n")
    path.chmod(0o755)
    return path


def mgo_case():
    from lacbed_refine.engine.geometry import SimulationSettings

    crystal = read_cif(DATA / "MgO" / "felix.cif")
    return crystal, SimulationSettings(size=8, half_width=5 / crystal.a, thicknesses=(500.0,), g_limit=8.95 / crystal.a)


@pytest.mark.parametrize("name,value", [
    ("LACBED_FELIX_TIMEOUT", "-1"), ("LACBED_FELIX_TIMEOUT", "0"), ("LACBED_FELIX_TIMEOUT", "abc"),
    ("LACBED_FELIX_TIMEOUT", "nan"), ("LACBED_FELIX_TIMEOUT", "inf"),
    ("LACBED_FELIX_RANKS", "0"), ("LACBED_FELIX_RANKS", "-1"), ("LACBED_FELIX_RANKS", "abc"), ("LACBED_FELIX_RANKS", "1.5"),
    ("LACBED_FELIX_MPI_FIXED", "maybe"),
])
def test_bad_environment_is_refused_before_felix_runs(tmp_path, monkeypatch, name, value):
    exe = stand_in(tmp_path)
    monkeypatch.setenv(name, value)
    sim = lf.FelixSimulator(exe, workdir=tmp_path / "run")
    ok, why = sim.available()
    assert not ok and name in why and value in why, why
    crystal, s = mgo_case()
    with pytest.raises(lf.FelixError) as err:
        sim.simulate(crystal, s)
    assert name in str(err.value) and repr(value) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "ran").exists()


def test_good_environment_is_used(tmp_path, monkeypatch):
    monkeypatch.setenv("LACBED_FELIX_TIMEOUT", " 12.5 ")
    monkeypatch.setenv("LACBED_FELIX_RANKS", "1")
    monkeypatch.setenv("LACBED_FELIX_MPI_FIXED", "no")
    sim = lf.FelixSimulator(stand_in(tmp_path))
    assert (sim.timeout, sim.ranks, sim.mpi_fixed) == (12.5, 1, False)
    assert sim.available()[0]


@pytest.mark.parametrize("kw", [dict(timeout=-1), dict(timeout=0), dict(timeout=float("nan")), dict(ranks=0),
                                dict(ranks=-2), dict(ranks=1.5)])
def test_bad_arguments_are_refused(kw):
    with pytest.raises(ValueError, match=next(iter(kw))):
        lf.FelixSimulator("felix", **kw)


@pytest.mark.parametrize("timeout", [-1, 0, float("nan"), float("inf")])
def test_run_felix_refuses_a_bad_timeout(tmp_path, timeout):
    crystal, s = mgo_case()
    lf.write_simulation_inputs(crystal, s, tmp_path)
    with pytest.raises(ValueError, match="timeout"):
        lf.run_felix(tmp_path, executable=stand_in(tmp_path), timeout=timeout)
    assert not (tmp_path / "ran").exists()


def test_check_felix_names_the_variable(tmp_path, monkeypatch):
    """``fit --check felix`` refuses a bad variable before the refinement (through available())."""
    from lacbed_refine.refine.config import check_simulator

    monkeypatch.setenv("LACBED_FELIX", str(stand_in(tmp_path)))
    monkeypatch.setenv("LACBED_FELIX_TIMEOUT", "-1")
    with pytest.raises(ValueError, match="LACBED_FELIX_TIMEOUT"):
        check_simulator("felix")


def test_felix_seed_letters_are_checked_up_front_and_named(tmp_path):
    """``fit --felix-seed`` goes through FelixSimulator: bad letters name --felix-seed, and the check
    is available before the fit (check_refinement)."""
    crystal = read_cif(cif(tmp_path, SRTIO3, "SrTiO3"))
    sim = lf.FelixSimulator()
    assert sim.check_refinement(crystal) == "D" and sim.check_refinement(crystal, "C,D") == "CD"
    for letters in ("QZ", "B"):
        with pytest.raises(ValueError, match="--felix-seed"):
            sim.check_refinement(crystal, letters)
    with pytest.raises(ValueError, match="--felix-seed"):
        sim.export_refinement(crystal, None, tmp_path / "seed", refine="QZ")
    assert not (tmp_path / "seed").exists()
    sim.export_refinement(crystal, None, tmp_path / "seed")
    sim.export_refinement(crystal, None, tmp_path / "seed", refine="D")  # fit --overwrite writes it again
    assert lf.read_felix_inp(tmp_path / "seed" / "felix.inp").refine_mode == "D"
