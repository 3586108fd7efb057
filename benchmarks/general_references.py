"""The any-zone-axis engine against FELIX's general references (other zones, non-cubic cells, HOLZ,
dark field, Bird–King) and FELIX's shipped SrTiO3 sample: worst Pearson r over every disc and
thickness, with FELIX's per-pixel strong-beam rule and with the whole pool at every pixel, and the
engine's wall time beside FELIX's recorded one.

    PYTHONPATH=. python benchmarks/general_references.py [--runs GaAs-110 Si-111] [--dtype float32]
        [--workers 2] [--json FILE]

Each row also says what the engine did: the symmetry it found and used (the vertical group, the part
the pixel grid admits, reciprocity), the pixels it solved and its eigenproblem (real symmetric,
complex Hermitian, or general with absorption). The time is that of the FELIX-rule call, after one
untimed call (which starts the worker processes when ``--workers`` > 1), and the 1-minute load
before it is printed beside it.

FELIX's wall times come from each run's ``wall.txt`` (single rank, a 2-core machine shared with other
jobs, load 4–5); they are not measured in the same run as ours, so the ratio is indicative only
(``felix_speed.py`` runs FELIX in the same run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from pathlib import Path

import gemmi
import numpy as np
import torch

from lacbed_refine.engine import ZoneAxis, simulate_zone, zone_beam_pool
from lacbed_refine.engine.general import zone_symmetry
from lacbed_refine.structure import Atoms, Cell

REF = Path(os.environ.get("LACBED_FELIX_REFERENCE", "/work/shared/data/felix-reference"))
RUNS = ("GaAs-110", "GaAs-110-bk", "Si-111", "TiO2-001", "GaN-100")


def _atoms(cif: Path):
    st = gemmi.read_small_structure(str(cif))
    uc = st.cell
    sites = st.get_all_unit_cell_sites()
    atoms = Atoms(frac=np.array([[s.fract.x, s.fract.y, s.fract.z] for s in sites]),
                 Z=np.array([s.element.atomic_number for s in sites]), occupancy=np.array([s.occ for s in sites]),
                 b_iso=np.array([s.u_iso * 8 * math.pi**2 for s in sites]))
    ops = gemmi.GroupOps([gemmi.Op(o) for o in st.symops])
    centring = [np.array(t, float) / gemmi.Op.DEN for t in ops.cen_ops]
    return Cell(uc.a, uc.b, uc.c, uc.alpha, uc.beta, uc.gamma), atoms, centring


def _name(chem, hkl):
    return chem + "_" + "".join(f"{'+' if x >= 0 else '-'}{abs(x)}" for x in hkl) + ".bin"


def _wall(path: Path) -> float | None:
    m = re.search(r"wall_s=([0-9.]+)", path.read_text()) if path.is_file() else None
    return float(m.group(1)) if m else None


def general_run(name: str, dtype=torch.float64, workers: int = 1) -> dict:
    run = REF / "general" / name
    inp = (run / "felix.inp").read_text()

    def val(key):
        return re.search(rf"^{key}\s.*?=\s*(\S+)", inp, re.M).group(1)

    def vec(key):
        return [int(x) for x in re.search(rf"^{key}\s.*?=\s*\[(.*?)\]", inp, re.M).group(1).split(",")]

    cell, atoms, centring = _atoms(run / "felix.cif")
    zone = ZoneAxis(vec("IIncidentBeamDirection"), vec("IXDirection"), vec("INormalDirection"))
    voltage = float(val(r"RAcceleratingVoltage \(kV\)")) * 1e3
    size = 2 * int(val("IPixelCount"))
    beams = zone_beam_pool(cell, zone, centring, voltage, g_limit=float(val("RgLimit")))
    refl = [tuple(int(x) for x in line.strip()[1:-1].split(",")) for line in (run / "felix.hkl").read_text().splitlines() if line.strip()]
    thick = (500.0, 1000.0, 1500.0, 2000.0)
    model = {"0": "none", "1": "proportional", "2": "bird-king"}[val("IAbsorbFLAG")]
    chem = next(run.glob("*_Sim_0500A_*")).name.split("_")[0]
    ref = np.stack([[np.fromfile(run / f"{chem}_Sim_{int(t):04d}A_{size:03d}x{size:03d}" / _name(chem, h), "<f8").reshape(size, size)
                     for h in refl] for t in thick])
    sym = zone_symmetry(atoms, cell, zone, beams, voltage=voltage, absorption_model=model)
    out = {"run": name, "pool": len(beams), "discs": len(refl), "felix_wall_s": _wall(run / "wall.txt"),
           "symmetry": f"{sym.name} (grid {sym.grid_name}{', reciprocity' if sym.reciprocity else ''}; BF {sym.bright_field_name})"}
    for label, strong in (("felix_rule", int(val("IMinStrongBeams"))), ("whole_pool", None)):
        def call():
            with torch.no_grad():
                return simulate_zone(atoms, cell, zone, beams, torch.tensor(thick), voltage=voltage, size=size,
                                     half_width=float(val("ROuterConvergenceAngle")), reflections=refl, strong_beams=strong,
                                     absorption_model=model, mean_absorption=False, dtype=dtype, workers=workers,
                                     return_info=True)

        if label == "felix_rule":
            call()  # worker start-up and first-call costs, not timed
            out["load1"] = os.getloadavg()[0]
        t0 = time.perf_counter()
        sim, info = call()
        out[f"{label}_s"] = time.perf_counter() - t0
        sim = sim.double().numpy()
        out[f"{label}_worst_r"] = min(np.corrcoef(ref[i, j].ravel(), sim[i, j].ravel())[0, 1]
                                      for i in range(len(thick)) for j in range(len(refl)))
        if label == "felix_rule":
            out["pixels_solved"] = info.pixels_computed
            out["path"] = ("real symmetric" if info.real_symmetric else "complex Hermitian" if model == "none"
                           else "general (absorbing)")
    return out


def srtio3_sample(dtype=torch.float64, workers: int = 1) -> dict:
    from lacbed_felix import felix_beam_pool

    run = REF / "felix-repo-samples" / "samples" / "SrTiO3"
    cell, atoms, _ = _atoms(run / "felix.cif")
    refl = [h for h in (tuple(int(x) for x in line.strip()[1:-1].split(",")) for line in (run / "felix.hkl").read_text().splitlines() if line.strip())
            if (run / "sample_outputs" / _name("SrTiO3", h)).exists()]
    beams = felix_beam_pool(cell.a, "P", 200e3, n_beams=100)
    t0 = time.perf_counter()
    with torch.no_grad():
        sim = simulate_zone(atoms, cell, ZoneAxis((0, 0, 1), (1, 0, 0)), beams, torch.tensor([630.0]), voltage=200e3, size=128,
                            half_width=1.19, reflections=refl, strong_beams=50, absorption_model="bird-king",
                            mean_absorption=False, dtype=dtype, workers=workers).double().numpy()[0]
    seconds = time.perf_counter() - t0
    rs = [np.corrcoef(np.fromfile(run / "sample_outputs" / _name("SrTiO3", h), "<f8"), sim[i].ravel())[0, 1] for i, h in enumerate(refl)]
    return {"run": "SrTiO3 sample (Bird–King)", "pool": len(beams), "discs": len(refl), "felix_rule_s": seconds,
            "bf_r": rs[0], "df_worst_r": min(rs[1:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=list(RUNS))
    ap.add_argument("--no-sample", action="store_true", help="Skip FELIX's SrTiO3 sample.")
    ap.add_argument("--dtype", choices=("float64", "float32"), default="float64")
    ap.add_argument("--workers", type=int, default=1, help="engine worker processes")
    ap.add_argument("--json", default="/tmp/lacbed-bench/general_references.json")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    rows = [general_run(name, dtype, args.workers) for name in args.runs]
    print(f"{args.dtype}, {args.workers} worker process(es)\n")
    print("| run | pool | discs | symmetry found | pixels solved | eigenproblem | worst r, FELIX's rule | worst r, whole pool "
          "| ours [s] (load) | FELIX's wall [s] (other run, loaded machine) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['pool']} | {r['discs']} | {r['symmetry']} | {r['pixels_solved']} | {r['path']} | "
              f"{r['felix_rule_worst_r']:.7f} | {r['whole_pool_worst_r']:.5f} | {r['felix_rule_s']:.2f} ({r['load1']:.1f}) | "
              f"{r['felix_wall_s']:.0f} |")
    if not args.no_sample:
        s = srtio3_sample(dtype, args.workers)
        rows.append(s)
        print(f"\nFELIX's SrTiO3 sample: {s['discs']} discs, pool {s['pool']}, bright field r = {s['bf_r']:.9f}, "
              f"worst dark field r = {s['df_worst_r']:.9f}, {s['felix_rule_s']:.1f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
