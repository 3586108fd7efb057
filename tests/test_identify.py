"""`lacbed-refine identify PATTERN --candidates DIR`: candidates ranked by the forward surrogate, the
best confirmed by the Bloch engine; non-cubic and unreadable files skipped with the reason; bad input
refused in one line before any work."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from lacbed_refine.io.cif import read_cif
from lacbed_refine.simulators.bloch import settings_for, simulate_crystal
from lacbed_refine.surrogate import identify, load_pretrained, read_candidates
from lacbed_refine_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
CUBIC = {
    "SrTiO3": ROOT / "examples" / "srtio3" / "SrTiO3_true.cif",
    "MgAl2O4": ROOT / "examples" / "spinel" / "MgAl2O4_true.cif",
    "MgO": ROOT / "tests" / "data" / "felix" / "MgO" / "felix.cif",
    "GaAs": ROOT / "tests" / "data" / "crystal_general" / "GaAs.cif",
    "Si": ROOT / "tests" / "data" / "crystal_general" / "Si.cif",
}
RUTILE = ROOT / "tests" / "data" / "crystal_general" / "TiO2.cif"


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    folder = tmp_path_factory.mktemp("candidates")
    for name, path in CUBIC.items():
        shutil.copy(path, folder / f"{name}.cif")
    sub = folder / "other"
    sub.mkdir()
    shutil.copy(RUTILE, sub / "TiO2.cif")
    (sub / "broken.cif").write_text("data_x\n_cell_length_a 4\n")
    return folder


@pytest.fixture(scope="module")
def srtio3_pattern(tmp_path_factory):
    """SrTiO3 at the surrogate's geometry, 115 nm (between the scanned thicknesses), turned by 90°."""
    crystal = read_cif(CUBIC["SrTiO3"])
    stack, _ = simulate_crystal(crystal, settings_for(crystal, preset="paper", thickness_nm=(115.0,), size=128, n_beams=200))
    pattern = np.rot90(stack[0, 0]).astype(np.float32)
    path = tmp_path_factory.mktemp("pattern") / "srtio3.tif"
    tifffile.imwrite(path, pattern)
    return path, pattern


def test_candidates_are_the_cubic_cifs_and_the_rest_is_named(candidates):
    ok, skipped = read_candidates(candidates)
    assert sorted(c.id for c in ok) == sorted(CUBIC)
    reasons = {Path(p).name: why for p, why in skipped}
    assert set(reasons) == {"TiO2.cif", "broken.cif"}
    assert "cubic" in reasons["TiO2.cif"]


def test_the_engine_confirms_the_true_structure_first(candidates, srtio3_pattern):
    _, pattern = srtio3_pattern
    ok, _ = read_candidates(candidates)
    res = identify(pattern, ok, model=load_pretrained("forward"), thickness_nm=(95.0, 115.0, 135.0), confirm=2)
    ids = [c.id for c in res.ranking]
    assert sorted(ids) == sorted(CUBIC)
    # the surrogate's r is a real correlation for every candidate
    assert all(-1 <= c.surrogate_r <= 1 for c in res.ranking)
    # the shipped surrogate must put the truth among its best two for the engine to see it; the
    # engine then recognises the turned pattern exactly
    assert "SrTiO3" in ids[:2], [(c.id, round(c.surrogate_r, 3)) for c in res.ranking]
    first = res.ranking[0]
    assert first.id == "SrTiO3" and first.engine_r > 0.9999 and first.engine_thickness_nm == 115.0
    assert res.ranking[2].engine_r is None and res.seconds["surrogate"] > 0


def test_cli_writes_the_ranking_and_figure(candidates, srtio3_pattern, tmp_path):
    path, _ = srtio3_pattern
    out = tmp_path / "rank.json"
    res = CliRunner().invoke(cli, ["identify", str(path), "--candidates", str(candidates), "-o", str(out), "--confirm", "1",
                                   "--thickness", "95,115,135", "--no-progress"])
    assert res.exit_code == 0, res.output
    rep = json.loads(out.read_text())
    assert rep["n_candidates"] == 5 and len(rep["skipped"]) == 2 and rep["ranking"][0]["engine_r"] is not None
    assert out.with_suffix(".png").stat().st_size > 5000
    assert "1. " in res.output and "ms per candidate" in res.output
    again = CliRunner().invoke(cli, ["identify", str(path), "--candidates", str(candidates), "-o", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output


@pytest.mark.parametrize("change, words", [
    ({"-o": "rank.txt"}, "give a .json path"),
    ({"--candidates": "nowhere"}, "--candidates"),
    ({"--thickness": "0,100"}, "--thickness"),
    ({"--confirm": "-1"}, "--confirm -1"),
    ({"pattern": "small"}, "128×128"),
])
def test_bad_input_is_one_line_exit_2(candidates, srtio3_pattern, tmp_path, change, words):
    path, pattern = srtio3_pattern
    small = tmp_path / "small.npy"
    np.save(small, pattern[:64, :64])
    args = {"pattern": str(small if change.get("pattern") == "small" else path), "--candidates": str(candidates),
            "-o": str(tmp_path / "rank.json")}
    args.update({k: (str(tmp_path / v) if k in ("-o", "--candidates") else v) for k, v in change.items() if k != "pattern"})
    argv = ["identify", args.pop("pattern")] + [x for kv in args.items() for x in kv] + ["--no-progress"]
    res = CliRunner().invoke(cli, argv)
    assert res.exit_code == 2, res.output
    assert words in res.output
    assert not (tmp_path / "rank.json").exists()
