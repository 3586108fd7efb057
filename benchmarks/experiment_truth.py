"""The fit of measured experiments against known truth, at full size: discs simulated, passed through a
real microscope's faults, fitted from a wrong start — does ``fit_experiment`` give the truth back?

    PYTHONPATH=. python benchmarks/experiment_truth.py --out /tmp/lacbed-bench/experiment-truth
        [--cases rutile gaas-felix] [--seed 0] [--workers 2] [--iterations 6] [--converge-beams]

Cases:

- ``rutile`` — our engine's discs (float64) of rutile TiO2 (P4₂/mnm, Ti 2a, O 4f x = 0.3048; the CIF in
  ``tests/data/crystal_general``) at [001], x [100], Bird–King absorption, FELIX's strong-beam rule
  (≥ 50 of a 100-beam pool, as the ``felix.inp`` written here tells the fit), 70 nm, 13 discs (000 and
  the lowest allowed orders ±200, 0±20, ±1±10, ±2±20), 64×64 measured pixels at 0.015 Å⁻¹ simulated on an
  80×80 grid; start O moved 0.07 Å along (1 1 0), every B × 1.6.
- ``gaas-felix`` — FELIX's own Bird–King GaAs [110] discs (``../shared/data/felix-reference/general/
  GaAs-110-bk``, all 9 discs, 64×64, ``--felix-thickness`` Å of 500/1000/1500/2000) and its
  ``felix.inp``; start every B × 1.6. Skipped when the folder is absent. The fit takes FELIX's pool
  from that ``felix.inp`` (RgLimit 1.46 Å⁻¹: 91 beams, ≥ 90 strong), as it does for any experiment.

Faults (:func:`lacbed_refine.dataset.synthetic.microscope_faults`, drawn from ``--seed``): rotation
uniform in ±5°, scale in 1 ± 3 %, zone axis within ±1.5 px of the centre, per-disc shifts in ±2 px
(mean zero), blur 1 px, background 0.1 of each disc's mean (plane + constant), Poisson noise at
``--counts`` electrons per pixel (2000). Corners that the rotation takes outside the simulated square
are unrecorded.

Prints one table per case — truth, start, refined, error and the fit's σ for every coordinate [Å, the
site's displacement from the truth], B [Å²], thickness [nm], rotation [°], scale [%], zone-axis
position [px], per-disc shifts (rms error [px]), blur [px] — with the fit's stages and times; writes
``experiment_truth.json`` and ``experiment_truth.md`` into ``--out`` and nothing elsewhere.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lacbed_refine.dataset.synthetic import microscope_faults, synthetic_experiment, synthetic_felix_inp
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.io.cif import read_cif
from lacbed_refine.io.felix_inp import read_felix_inp, read_hkl
from lacbed_refine.refine.experiment_fit import ExperimentFitConfig, fit_experiment
from lacbed_refine.simulators.bloch import simulate_general

ROOT = Path(__file__).resolve().parents[1]
RUTILE = ROOT / "tests" / "data" / "crystal_general" / "TiO2.cif"
FELIX_GAAS = Path(os.environ.get("LACBED_FELIX_REFERENCE", ROOT.parent / "shared" / "data" / "felix-reference")) / "general" / "GaAs-110-bk"
CASES = ("rutile", "gaas-felix")

RUTILE_DISCS = ((0, 0, 0), (2, 0, 0), (-2, 0, 0), (0, 2, 0), (0, -2, 0), (1, 1, 0), (1, -1, 0), (-1, 1, 0), (-1, -1, 0),
                (2, 2, 0), (2, -2, 0), (-2, 2, 0), (-2, -2, 0))


def _faults(rng: np.random.Generator, n_discs: int) -> dict:
    shifts = rng.uniform(-2.0, 2.0, (n_discs, 2))
    return dict(rotation_deg=float(rng.uniform(-5.0, 5.0)), scale=float(1 + rng.uniform(-0.03, 0.03)),
                centre_px=tuple(float(c) for c in rng.uniform(-1.5, 1.5, 2)), shifts_px=shifts - shifts.mean(0))


def rutile_case(args) -> dict:
    """Truth discs, the faulted experiment, the truth and start crystals of the rutile case."""
    n, size_sim, step, t_nm, pool, strong = 64, 80, 0.015, 70.0, 100, 50
    truth = read_cif(RUTILE)
    settings = SimulationSettings(voltage=200e3, size=size_sim, half_width=size_sim / 2 * step, thicknesses=(t_nm * 10,),
                                  n_beams=pool, strong_beams=strong, strong_rule="felix", zone=(0, 0, 1),
                                  x_direction=(1, 0, 0), normal=(0, 0, 1), absorption_model="bird-king",
                                  reflections=RUTILE_DISCS)
    t0 = time.perf_counter()
    stack, _ = simulate_general(truth, settings, dtype=torch.float64, workers=args.workers)
    sim_s = time.perf_counter() - t0
    felix = synthetic_felix_inp(n, step, pool=pool, strong=strong)
    ti, o = truth.sites
    d = 0.07 / (math.sqrt(2) * truth.a)  # 0.07 Å along (1 1 0)/√2
    start = truth.with_sites([replace(ti, b_iso=args.b_factor * ti.b_iso),
                              replace(o, b_iso=args.b_factor * o.b_iso, frac=(o.frac[0] + d, o.frac[1] + d, o.frac[2]))])
    return dict(name="rutile", truth=truth, start=start, stack=stack[0], reflections=RUTILE_DISCS, felix=felix, n=n,
                t_nm=t_nm, truth_source=f"engine, float64, {size_sim}² px, pool {pool}, ≥{strong} strong ({sim_s:.0f} s)")


def gaas_case(args) -> dict | None:
    run = FELIX_GAAS
    if not run.is_dir():
        return None
    inp = read_felix_inp(run / "felix.inp")
    refl = [tuple(int(i) for i in h) for h in read_hkl(run)]
    size = inp.size
    folder = run / f"GaAs_Sim_{int(args.felix_thickness):04d}A_{size:03d}x{size:03d}"
    if not folder.is_dir():
        raise SystemExit(f"--felix-thickness {args.felix_thickness}: no {folder.name} in {run}")
    stack = np.stack([np.fromfile(folder / f"GaAs_{h:+d}{k:+d}{l:+d}.bin", "<f8").reshape(size, size) for h, k, l in refl])
    truth = read_cif(run / "felix.cif")
    start = truth.with_sites([replace(s, b_iso=args.b_factor * s.b_iso) for s in truth.sites])
    return dict(name="gaas-felix", truth=truth, start=start, stack=stack, reflections=refl, felix=inp, n=size,
                t_nm=args.felix_thickness / 10,
                truth_source=f"FELIX {folder.name}, pool RgLimit {inp.g_limit} (≥{inp.min_strong_beams} strong)")


def _site_error_A(crystal, truth, index) -> float:
    """Distance [Å] of site ``index`` from its true position (nearest lattice image)."""
    d = np.asarray(crystal.sites[index].frac) - np.asarray(truth.sites[index].frac)
    d -= np.round(d)
    return float(np.linalg.norm(truth.cell.orth @ d))


def run_case(case: dict, args, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    faults = _faults(rng, len(case["reflections"]))
    images, recorded = microscope_faults(case["stack"], blur_px=args.blur, background=args.background, counts=args.counts,
                                         seed=seed, size=case["n"], **faults)
    exp = synthetic_experiment(case["truth"].name, case["reflections"], images, recorded, case["felix"])
    config = ExperimentFitConfig(workers=args.workers, iterations=args.iterations, converge_beams=args.converge_beams,
                                 pool=args.pool, strong_beams=args.strong_beams)
    t0 = time.perf_counter()
    fit = fit_experiment(case["start"], exp, config)
    seconds = time.perf_counter() - t0
    truth, start, ref = case["truth"], case["start"], fit.crystal
    sigma = dict(zip(fit.names, fit.sigma))
    rows = []  # (quantity, unit, truth, start, refined, error, sigma)
    for i, site in enumerate(truth.sites):
        if any(nm.startswith(f"{site.label}.dx") for nm in fit.names):
            sig = [sigma[nm] for nm in fit.names if nm.startswith(f"{site.label}.dx")]
            rows.append((f"{site.label} position", "Å", 0.0, _site_error_A(start, truth, i), _site_error_A(ref, truth, i),
                         _site_error_A(ref, truth, i), float(np.sqrt(np.sum(np.square(sig))))))
    for i, site in enumerate(truth.sites):
        rows.append((f"{site.label} B", "Å²", site.b_iso, start.sites[i].b_iso, ref.sites[i].b_iso,
                     ref.sites[i].b_iso - site.b_iso, sigma.get(f"{site.label}.B")))
    rows.append(("thickness", "nm", case["t_nm"], fit.start[-1], fit.thickness_nm, fit.thickness_nm - case["t_nm"],
                 sigma.get("thickness_nm")))
    g, gs = fit.geometry, fit.geometry_sigma
    rows.append(("rotation", "°", faults["rotation_deg"], None, g.rotation_deg, g.rotation_deg - faults["rotation_deg"],
                 gs.get("rotation_deg")))
    rows.append(("scale", "%", 100 * (faults["scale"] - 1), None, 100 * (g.scale - 1), 100 * (g.scale / faults["scale"] - 1),
                 100 * gs["scale"] if gs.get("scale") is not None else None))
    for j, axis in enumerate("uv"):
        rows.append((f"zone axis {axis}", "px", faults["centre_px"][j], None, float(g.centre[j]),
                     float(g.centre[j] - faults["centre_px"][j]), gs["centre_px"][j] if gs.get("centre_px") else None))
    shift_err = float(np.sqrt(((g.shifts - faults["shifts_px"]) ** 2).mean()))
    rows.append(("disc shifts (rms)", "px", float(np.sqrt((faults["shifts_px"] ** 2).mean())), None,
                 float(np.sqrt((g.shifts ** 2).mean())), shift_err, None))
    rows.append(("blur", "px", args.blur, None, g.blur_px, g.blur_px - args.blur, gs.get("blur_px")))
    return dict(case=case["name"], truth_source=case["truth_source"], discs=len(case["reflections"]), pixels=case["n"],
                recorded_fraction=float(recorded.mean()), seed=seed, seconds=seconds, fom=fit.fom,
                orientation=fit.orientation, beams={k: v for k, v in fit.beams.items() if k != "steps"},
                stages=[(s.name, s.fom, s.seconds) for s in fit.stages], rows=rows,
                load=os.getloadavg()[0])


def _fmt(v, digits=4):
    return "—" if v is None else f"{v:.{digits}f}"


def table(res: dict) -> str:
    lines = [f"## {res['case']}: {res['discs']} discs, {res['pixels']}² px ({100 * res['recorded_fraction']:.1f} % recorded), "
             f"seed {res['seed']}, fom {res['fom']:.5f}, orientation {res['orientation']}, fit {res['seconds']:.0f} s "
             f"(load {res['load']:.1f})",
             f"truth: {res['truth_source']}; fit beams: pool {res['beams'].get('pool')}, ≥{res['beams'].get('strong_beams')} strong",
             "", "| quantity | unit | truth | start | refined | error | σ |", "|---|---|---|---|---|---|---|"]
    for q, unit, truth, start, ref, err, sig in res["rows"]:
        lines.append(f"| {q} | {unit} | {_fmt(truth)} | {_fmt(start)} | {_fmt(ref)} | {_fmt(err)} | {_fmt(sig, 5)} |")
    lines.append("")
    lines.append("stages: " + ", ".join(f"{name} {sec:.0f} s" for name, _, sec in res["stages"]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="folder for experiment_truth.json and .md (created)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    ap.add_argument("--seed", type=int, default=0, help="seed of the faults and the noise")
    ap.add_argument("--workers", type=int, default=2, help="engine worker processes")
    ap.add_argument("--iterations", type=int, default=6, help="most Gauss-Newton steps")
    ap.add_argument("--converge-beams", action="store_true", help="raise the beams until the answer stops changing")
    ap.add_argument("--pool", type=int, default=None, help="fit's beam pool (default: felix.inp's rule)")
    ap.add_argument("--strong-beams", type=int, default=None, help="fit's least strong beams (default: felix.inp)")
    ap.add_argument("--felix-thickness", type=float, default=1000.0, help="FELIX thickness of gaas-felix [Å]")
    ap.add_argument("--b-factor", type=float, default=1.6, help="start B = truth B × this")
    ap.add_argument("--blur", type=float, default=1.0, help="detector blur σ [px]")
    ap.add_argument("--background", type=float, default=0.1, help="background, fraction of each disc's mean")
    ap.add_argument("--counts", type=float, default=2000.0, help="electrons per pixel at a disc's mean")
    args = ap.parse_args(argv)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    results, texts = [], []
    for k, name in enumerate(args.cases):
        case = rutile_case(args) if name == "rutile" else gaas_case(args)
        if case is None:
            print(f"## {name}: {FELIX_GAAS} is absent, skipped", flush=True)
            continue
        res = run_case(case, args, args.seed + k)
        results.append(res)
        texts.append(table(res))
        print(texts[-1] + "\n", flush=True)
    (out / "experiment_truth.json").write_text(json.dumps(results, indent=1, default=float))
    (out / "experiment_truth.md").write_text("\n\n".join(texts) + "\n")
    print(f"wrote {out / 'experiment_truth.json'} and {out / 'experiment_truth.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
