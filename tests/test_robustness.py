"""Bad and edge inputs to simulate, potential, fit and batch (issue 12): each gives one clear line
naming the option or file and exit status 2 before any long computation, or a valid result —
never a traceback, a silent wrong answer or lost data."""

from __future__ import annotations

import csv
import json
import os
import stat
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from lacbed_refine.refine.batch import read_manifest, run_batch
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.refine.config import FitConfig
from lacbed_refine_cli.main import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPINEL = EXAMPLES / "spinel"
SRTIO3 = EXAMPLES / "srtio3"
# the central 16×16 crop of the 64×64 spinel example spans a quarter of its tilt range
SPINEL_HALF = str(7.266 / 8.08 / 4)
SRTIO3_HALF = str(7.266 / 3.905 / 2)
FAST = ["--no-seed", "--no-surrogate", "--beams", "13", "--max-iter", "2"]


def run(*args, env=None):
    """Invoke the CLI; return (exit code, output); a traceback is always a failure here."""
    res = CliRunner().invoke(cli, [str(a) for a in args], env=env)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"traceback for {args}: {res.exception!r}") from res.exception
    return res.exit_code, res.output


def one_error_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith(("lacbed-refine: error:", "Error:")), output
    assert "Traceback" not in output
    return lines[-1]


@pytest.fixture(scope="module")
def spinel_crop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spinel")
    crop = tifffile.imread(SPINEL / "MgAl2O4_120nm.tif")[24:40, 24:40]
    np.save(folder / "crop.npy", crop)
    return folder / "crop.npy"


@pytest.fixture(scope="module")
def srtio3_crop(tmp_path_factory):
    folder = tmp_path_factory.mktemp("srtio3")
    crop = tifffile.imread(SRTIO3 / "SrTiO3_150nm.tif")[16:48, 16:48]
    np.save(folder / "crop.npy", crop)
    return folder / "crop.npy"


def fit_srtio3(crop, out, *extra):
    return run("fit", SRTIO3 / "SrTiO3_start.cif", crop, "-o", out, "--half-width", SRTIO3_HALF,
               "--thickness", "150", *FAST, *extra)


# --- 1. nothing structural free -------------------------------------------------------------------
@pytest.mark.parametrize("refine", ["thickness", "", "b --fix Sr1,Ti1,O1", "xyz"])
def test_fit_with_no_structural_parameter_free(srtio3_crop, tmp_path, refine):
    words = refine.split()
    code, out = fit_srtio3(srtio3_crop, tmp_path / "o", "--refine", words[0] if words else "", *words[1:])
    assert code == 0, out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    names = [p["name"] for p in report["parameters"]]
    assert names == ["thickness_nm"]  # nothing structural is reported as refined
    t = report["parameters"][-1]
    if "thickness" in refine:
        assert t["sigma"] is not None and t["sigma"] > 0
    assert 0.0 < report["r"] <= 1.0


def test_batch_row_refining_thickness_only(srtio3_crop, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,cif,pattern,refine,thickness,half_width,beams\n"
                        f"t,{SRTIO3 / 'SrTiO3_start.cif'},{srtio3_crop},thickness,150,{SRTIO3_HALF},13\n")
    res = run_batch(manifest, tmp_path / "out", progress=False)
    assert (res["done"], res["failed"]) == (1, 0)


# --- 2. no polish ---------------------------------------------------------------------------------
def test_fit_without_polish_writes_result_with_unknown_uncertainties(spinel_crop, tmp_path):
    code, out = run("fit", SPINEL / "MgAl2O4_start.cif", spinel_crop, "-o", tmp_path / "o", "--half-width", SPINEL_HALF,
                    "--refine", "xyz,b,thickness", "--no-polish", *FAST)
    assert code == 0, out
    assert "no uncertainty" in out
    report = json.loads((tmp_path / "o" / "report.json").read_text())  # strict JSON: no NaN
    assert all(p["sigma"] is None for p in report["parameters"])
    assert (tmp_path / "o" / "refined.cif").is_file() and (tmp_path / "o" / "fit.png").is_file()


# --- 3. batch ids are folder names inside -o --------------------------------------------------------
@pytest.mark.parametrize("sid", ["../../escaped", "/tmp/lacbed-escaped", ".hidden", "a/b", "..", "x y"])
def test_batch_ids_cannot_name_paths(tmp_path, sid):
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "cif", "pattern"], [sid, "a.cif", "b.npy"]])
    with pytest.raises(ValueError, match="m.csv: row 1: id"):
        read_manifest(manifest)
    code, out = run("batch", manifest, "-o", tmp_path / "out")
    assert code == 2 and "plain folder name" in one_error_line(out)
    assert not Path("/tmp/lacbed-escaped").exists() and not (tmp_path.parent / "escaped").exists()


# --- 5. stale batch results, exit status ------------------------------------------------------------
def test_batch_refits_a_row_whose_inputs_changed_and_fails_loudly(spinel_crop, tmp_path):
    pattern = tmp_path / "p.npy"
    pattern.write_bytes(spinel_crop.read_bytes())
    manifest = tmp_path / "m.csv"
    manifest.write_text("id,cif,pattern,refine,thickness,half_width,beams\n"
                        f"s,{SPINEL / 'MgAl2O4_true.cif'},p.npy,thickness,115,{SPINEL_HALF},13\n"
                        f"bad,{SPINEL / 'MgAl2O4_true.cif'},missing.npy,thickness,115,{SPINEL_HALF},13\n")
    out = tmp_path / "out"
    code, text = run("batch", manifest, "-o", out)
    assert code == 1 and "1 of 2 samples failed" in text.strip().splitlines()[-1]
    first = json.loads((out / "s" / "report.json").read_text())
    assert run_batch(manifest, out, progress=False)["skipped"] == 1  # unchanged: skipped
    np.save(pattern, np.load(pattern)[::-1].copy())  # the measurement changes
    res = run_batch(manifest, out, progress=False)
    assert res["skipped"] == 0 and res["done"] == 1
    assert json.loads((out / "s" / "report.previous.json").read_text()) == first  # kept, not lost
    (out / "s" / "report.json").read_text()
    # a changed per-row option counts too
    manifest.write_text(manifest.read_text().replace(",115,", ",120,", 1))
    assert run_batch(manifest, out, progress=False)["skipped"] == 0


# --- 7, 10, 11, 14. options checked before any work --------------------------------------------------
MGO = """data_MgO
_cell_length_a 4.2112
_cell_length_b 4.2112
_cell_length_c 4.2112
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_B_iso_or_equiv
Mg1 Mg 0 0 0 0.3
O1 O 0.5 0.5 0.5 0.35
"""


@pytest.fixture
def mgo(tmp_path):
    path = tmp_path / "MgO.cif"
    path.write_text(MGO)
    return path


@pytest.mark.parametrize("args, option", [
    (["--device", "cuda"], "--device"), (["--device", "nonsense"], "--device"),
    (["--beams", "100000"], "--beams"), (["--beams", "1"], "--beams"), (["--size", "10000"], "--size"),
    (["--size", "7"], "--size"), (["--kv", "1e9"], "--kv"), (["--kv", "-200"], "--kv"),
    (["--thickness", "nan"], "--thickness"), (["--thickness", "inf"], "--thickness"),
    (["--thickness", "-5"], "--thickness"), (["--half-width", "1e6"], "--half-width"),
    (["--half-width", "0"], "--half-width"), (["--workers", "0"], "--workers"), (["--workers", "-1"], "--workers"),
    (["--absorption", "nan"], "--absorption"), (["--engine", "nonsense"], "nonsense"),
])
def test_simulate_rejects_bad_options_before_work(mgo, tmp_path, args, option):
    t0 = time.perf_counter()
    code, out = run("simulate", mgo, "-o", tmp_path / "p.tif", "--size", "16", "--beams", "20", *args)
    assert code == 2, out
    assert option in one_error_line(out)
    assert time.perf_counter() - t0 < 10  # refused up front, not after the work
    assert not any(tmp_path.glob("p.*"))


def test_simulate_caps_workers_at_the_cpus(mgo, tmp_path):
    code, out = run("simulate", mgo, "-o", tmp_path / "p.npy", "--size", "16", "--beams", "20", "--workers", "1000")
    assert code == 0, out
    assert np.load(tmp_path / "p.npy").shape == (4, 1, 16, 16)


@pytest.mark.parametrize("settings", [dict(voltage=float("nan")), dict(size=10000), dict(n_beams=10 ** 5),
                                      dict(thicknesses=(float("inf"),)), dict(half_width=1e6), dict(g_limit=-1.0),
                                      dict(strong_beams=0), dict(form_factors="nope")])
def test_settings_are_checked_in_the_library(settings):
    with pytest.raises(ValueError):
        SimulationSettings(**settings)


@pytest.mark.parametrize("options, option", [
    (dict(max_iter=0), "--max-iter"), (dict(max_iter=-1), "--max-iter"), (dict(surrogate_restarts=0), "--restarts"),
    (dict(surrogate_restarts=-5), "--restarts"), (dict(blur_sigma=-2.0), "--blur"), (dict(blur_sigma=float("nan")), "--blur"),
    (dict(thickness_nm=-5.0), "--thickness"), (dict(thickness_nm=1e9), "--thickness"), (dict(thickness_nm=float("nan")), "--thickness"),
    (dict(refine=("xyz", "spin")), "--refine"), (dict(device="cuda"), "--device"), (dict(device="nonsense"), "--device"),
    (dict(coordinate_starts=0), "--starts"), (dict(start_spread_A=-0.1), "--start-spread"),
    (dict(start_spread_A=float("inf")), "--start-spread"), (dict(start_rounds=0), "--start-rounds"),
])
def test_fit_config_is_checked_in_the_library(options, option):
    with pytest.raises(ValueError, match=option):
        FitConfig(**options)


@pytest.mark.parametrize("args, option", [
    (["--max-iter", "0"], "--max-iter"), (["--restarts", "-5"], "--restarts"), (["--blur", "-2"], "--blur"),
    (["--thickness", "-5"], "--thickness"), (["--thickness", "inf"], "--thickness"), (["--device", "cuda"], "--device"),
    (["--check", "nonsense"], "--check"), (["--kv", "1e9"], "--kv"), (["--beams", "1"], "--beams"),
    (["--starts", "0"], "--starts"), (["--start-spread", "5"], "--start-spread"), (["--start-rounds", "0"], "--start-rounds"),
])
def test_fit_rejects_bad_options_before_work(spinel_crop, tmp_path, args, option):
    t0 = time.perf_counter()
    code, out = run("fit", SPINEL / "MgAl2O4_start.cif", spinel_crop, "-o", tmp_path / "o", "--half-width", SPINEL_HALF,
                    "--no-seed", "--no-surrogate", *args)
    assert code == 2, out
    assert option in one_error_line(out)
    assert time.perf_counter() - t0 < 10
    assert not (tmp_path / "o" / "report.json").exists()


# --- 8. outputs and the check simulator are checked first; a failed check keeps the result ---------
def test_fit_output_that_cannot_be_written_is_found_first(spinel_crop, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, out = run("fit", SPINEL / "MgAl2O4_start.cif", spinel_crop, "-o", blocker / "out", *FAST)
    assert code == 2 and "-o" in one_error_line(out) and str(blocker) in out


def test_fit_check_felix_without_felix_is_found_first(spinel_crop, tmp_path):
    code, out = run("fit", SPINEL / "MgAl2O4_start.cif", spinel_crop, "-o", tmp_path / "o", "--check", "felix", *FAST,
                    env={"LACBED_FELIX": str(tmp_path / "no-felix-here"), "PATH": "/usr/bin:/bin"})
    assert code == 2 and "--check 'felix'" in one_error_line(out)
    assert not (tmp_path / "o" / "report.json").exists()


def test_fit_keeps_the_result_when_the_final_check_fails(spinel_crop, tmp_path):
    crashing = tmp_path / "felix"  # a FELIX build that dies at once, as a broken install does
    crashing.write_text("#!/bin/sh\necho 'felix: segmentation fault' >&2\nexit 139\n")
    crashing.chmod(0o755)
    code, out = run("fit", SPINEL / "MgAl2O4_true.cif", spinel_crop, "-o", tmp_path / "o", "--half-width", SPINEL_HALF,
                    "--refine", "thickness", "--thickness", "115", "--check", "felix", *FAST,
                    env={"LACBED_FELIX": str(crashing)})
    assert code == 1, out
    assert "final check with felix failed" in out
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "check_failed" in report and (tmp_path / "o" / "refined.cif").is_file()


def test_fit_refuses_to_overwrite_a_result(spinel_crop, tmp_path):
    args = ["fit", SPINEL / "MgAl2O4_true.cif", spinel_crop, "-o", tmp_path / "o", "--half-width", SPINEL_HALF,
            "--refine", "thickness", "--thickness", "115", *FAST]
    assert run(*args)[0] == 0
    before = (tmp_path / "o" / "report.json").read_bytes()
    code, out = run(*args)
    assert code == 2 and "--overwrite" in one_error_line(out)
    assert (tmp_path / "o" / "report.json").read_bytes() == before
    assert run(*args, "--overwrite")[0] == 0


def test_simulate_refuses_to_overwrite(mgo, tmp_path):
    out = tmp_path / "p.npy"
    assert run("simulate", mgo, "-o", out, "--size", "16", "--beams", "20")[0] == 0
    before = out.read_bytes()
    code, text = run("simulate", mgo, "-o", out, "--size", "16", "--beams", "20", "--thickness", "80")
    assert code == 2 and "--overwrite" in one_error_line(text)
    assert out.read_bytes() == before
    assert run("simulate", mgo, "-o", out, "--size", "16", "--beams", "20", "--overwrite")[0] == 0
    code, text = run("simulate", mgo, "-o", mgo, "--size", "16")
    assert code == 2 and mgo.read_text() == MGO


# --- 9. masks that leave nothing to compare ----------------------------------------------------------
@pytest.mark.parametrize("kind", ["zeros", "one pixel", "other shape"])
def test_fit_rejects_useless_masks(spinel_crop, tmp_path, kind):
    mask = np.zeros((16, 16)) if kind != "other shape" else np.ones((8, 8))
    if kind == "one pixel":
        mask[3, 3] = 1
    np.save(tmp_path / "mask.npy", mask)
    code, out = run("fit", SPINEL / "MgAl2O4_start.cif", spinel_crop, "-o", tmp_path / "o", "--mask", tmp_path / "mask.npy", *FAST)
    line = one_error_line(out)
    assert code == 2 and "mask.npy" in line  # names the mask file


# --- 12. file modes ----------------------------------------------------------------------------------
def test_outputs_get_the_users_file_mode(mgo, tmp_path):
    old = os.umask(0o022)
    try:
        assert run("simulate", mgo, "-o", tmp_path / "p.tif", "--size", "16", "--beams", "20")[0] == 0
    finally:
        os.umask(old)
    for name in ("p.tif", "p.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


@pytest.mark.parametrize("command", [["potential", "--size", "16"], ["predict", "--thickness", "50"]])
def test_potential_and_predict_refuse_to_overwrite(mgo, tmp_path, command):
    out = tmp_path / "x.npy"
    args = [command[0], mgo, "-o", out, *command[1:]]
    assert run(*args)[0] == 0
    before = out.read_bytes()
    code, text = run(*args)
    assert code == 2 and "--overwrite" in one_error_line(text)
    assert out.read_bytes() == before
    assert run(*args, "--overwrite")[0] == 0


# --- found by benchmarks/bad_inputs.py ------------------------------------------------------------------
def test_refused_fit_leaves_no_output_folder(tmp_path):
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\n_cell_length_a 4.0\n")
    code, out = run("fit", bad, tmp_path / "missing.npy", "-o", tmp_path / "o", *FAST)
    assert code == 2 and not (tmp_path / "o").exists()


def test_fit_of_a_pattern_with_huge_values(spinel_crop, tmp_path):
    huge = tmp_path / "huge.npy"
    np.save(huge, np.load(spinel_crop).astype(np.float64) * 1e300)
    code, out = run("fit", SPINEL / "MgAl2O4_true.cif", huge, "-o", tmp_path / "o", "--half-width", SPINEL_HALF,
                    "--refine", "thickness", "--thickness", "115", *FAST)
    assert code == 0, out


@pytest.mark.parametrize("args, option", [
    (["--g-limit", "1e6"], "--g-limit"), (["--thickness", "abc"], "--thickness"),
    (["--reflections", "0 0 0;0 0 0"], "--reflections"), (["--reflections", "1 2"], "--reflections"),
    (["--reflections", "0 0 0;200 0 0"], "--reflections"), (["--engine", "nonsense"], "--engine"),
])
def test_simulate_messages_name_the_option(mgo, tmp_path, args, option):
    code, out = run("simulate", mgo, "-o", tmp_path / "p.npy", "--size", "16", *args)
    assert code == 2 and option in one_error_line(out)


def test_manifest_without_rows_is_refused(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("cif,pattern\n")
    code, out = run("batch", manifest, "-o", tmp_path / "o")
    assert code == 2 and "no samples" in one_error_line(out)


def test_invert_refuses_an_unusable_pattern_naming_it(tmp_path):
    np.save(tmp_path / "flat.npy", np.ones((64, 64)))
    np.save(tmp_path / "tall.npy", np.random.default_rng(0).random((64, 32)))
    np.save(tmp_path / "small.npy", np.random.default_rng(0).random((2, 32, 32)))  # not the model's 128×128
    for name in ("flat.npy", "tall.npy", "small.npy"):
        code, out = run("invert", tmp_path / name, "--thickness", "100", "--a", "4.2", "-o", tmp_path / "x.npy")
        assert code == 2 and name in one_error_line(out)


def test_synthetic_cifs_are_not_overwritten(tmp_path):
    assert run("dataset", "synthetic", "2", "-o", tmp_path / "s")[0] == 0
    files = sorted((tmp_path / "s").glob("*.cif"))
    files[0].write_text("edited by hand")
    code, out = run("dataset", "synthetic", "2", "-o", tmp_path / "s")
    assert code == 2 and "--overwrite" in one_error_line(out)
    assert files[0].read_text() == "edited by hand"
    code, out = run("dataset", "synthetic", "100000000", "-o", tmp_path / "t")
    assert code == 2 and not (tmp_path / "t").exists()


@pytest.mark.parametrize("args, option", [(["--a", "1e6"], "--a"), (["--thickness", "1e9"], "--thickness"),
                                          (["--thickness", "-1"], "--thickness")])
def test_invert_refuses_absurd_cell_and_thickness(tmp_path, args, option):
    np.save(tmp_path / "p.npy", np.random.default_rng(1).random((128, 128)))  # the shipped model's grid
    base = {"--a": "4.2", "--thickness": "100"}
    base[args[0]] = args[1]
    code, out = run("invert", tmp_path / "p.npy", *[x for kv in base.items() for x in kv], "-o", tmp_path / "x.npy")
    assert code == 2 and option in one_error_line(out)


def test_fit_refuses_a_bad_surrogate_file_before_the_scan(spinel_crop, tmp_path):
    bad = tmp_path / "f.pt"
    bad.write_bytes(b"not a checkpoint")
    code, out = run("fit", SPINEL / "MgAl2O4_start.cif", spinel_crop, "-o", tmp_path / "o", "--half-width", SPINEL_HALF,
                    "--forward-model", bad, "--beams", "13")
    assert code == 2 and "--forward-model" in one_error_line(out) and "f.pt" in out
    assert "thickness scan" not in out and not (tmp_path / "o").exists()


def test_felix_seed_with_a_pool_felix_cannot_run_is_refused_first(spinel_crop, tmp_path):
    code, out = run("fit", SPINEL / "MgAl2O4_true.cif", spinel_crop, "-o", tmp_path / "o", "--half-width", SPINEL_HALF,
                    "--refine", "thickness", "--thickness", "115", "--felix-seed", *FAST)  # 13 beams < FELIX's 40
    assert code == 2 and "--felix-seed" in one_error_line(out)
    assert "thickness scan" not in out and not (tmp_path / "o").exists()


@pytest.mark.parametrize("content", [b'{"generatr": {"width": 8}}', b'{"train": {"lr": 0.001}}\xff'])
def test_train_config_with_an_unknown_section_or_bad_bytes_is_refused(tmp_path, content):
    config = tmp_path / "config.json"
    config.write_bytes(content)
    sample = Path(__file__).parent / "data" / "surrogate_sample.h5"
    code, out = run("train", "forward", "--data", sample, "-o", tmp_path / "m.pt", "--epochs", "1", "--config", config)
    assert code == 2 and "config.json" in one_error_line(out)
    assert not (tmp_path / "m.pt").exists()
