"""``fit`` away from cubic [001]: the general engine does the thickness scan and the polish (exact
gradients), and the surrogate stages are skipped with the reason logged."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from lacbed_refine.io.cif import read_cif
from lacbed_refine.refine.config import FitConfig
from lacbed_refine.refine.stages import refine
from lacbed_refine.simulators.bloch import settings_for, simulate_crystal
from lacbed_refine_cli.main import cli

GAAS = Path(__file__).parent / "data" / "felix_GaAs-110" / "felix.cif"


def test_fit_b_and_thickness_at_gaas_110():
    truth = read_cif(GAAS)  # B: Ga 0.6, As 0.55 Å²
    settings = settings_for(truth, zone=(1, 1, 0), size=16, half_width=0.25, g_limit=1.0, thickness_nm=[80])
    stack, info = simulate_crystal(truth, settings, precision="reference")
    assert info.n_beams > 20  # HOLZ-free [110] pool near the Ewald sphere
    start = truth.with_sites([replace(s, b_iso=0.9) for s in truth.sites])
    res = refine(start, stack[0, 0], settings,
                 config=FitConfig(refine=("b", "thickness"), thickness_nm=70, seed=False, max_iter=15))
    assert res.r > 0.99999
    assert abs(res.thickness_nm - 80.0) < 0.5
    for got, want in zip(res.crystal.sites, truth.sites):
        assert abs(got.b_iso - want.b_iso) < 0.02, (got.label, got.b_iso, want.b_iso)
    notes = {s.name: s.note for s in res.stages}
    assert "cubic [001] only" in notes["surrogate search"] and "[1, 1, 0]" in notes["surrogate search"]


def test_fit_cli_takes_the_zone(tmp_path):
    truth = read_cif(GAAS)
    settings = settings_for(truth, zone=(1, 1, 0), size=16, half_width=0.25, g_limit=1.0, thickness_nm=[60])
    stack, _ = simulate_crystal(truth, settings, precision="reference")
    np.save(tmp_path / "p.npy", stack[0, 0])
    res = CliRunner().invoke(cli, ["fit", str(GAAS), str(tmp_path / "p.npy"), "-o", str(tmp_path / "out"), "--zone", "1,1,0",
                                   "--half-width", "0.25", "--refine", "thickness", "--thickness", "55", "--beams", "40",
                                   "--max-iter", "5"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["zone"] == [1, 1, 0]
    t = next(p for p in report["parameters"] if p["name"] == "thickness_nm")
    assert abs(t["refined"] - 60.0) < 1.0
