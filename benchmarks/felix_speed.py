"""Same-run speed against FELIX: FELIX and our engine on the same inputs, one after the other, with the
machine's load beside every row.

    LACBED_FELIX=/path/to/felix PYTHONPATH=. python benchmarks/felix_speed.py
    LACBED_FELIX=/path/to/felix-mpifix LACBED_FELIX_RANKS=2 LACBED_FELIX_MPI_FIXED=1 \\
        PYTHONPATH=. python benchmarks/felix_speed.py [--runs MgO GaAs-110] [--workers 2] [--json FILE]

For each reference input (``runs/MgO``, 128×128, cubic [001]; the ``general/`` runs, 64×64, other zones and
crystal systems) the input folder's ``felix.inp``, ``felix.cif`` and ``felix.hkl`` are copied to a
temporary folder and FELIX is run there (``mpirun --allow-run-as-root -np N`` with N > 1 ranks, which
only the build with the MPI broadcast fix computes correctly: felix-spec §6, so N > 1 needs
``LACBED_FELIX_MPI_FIXED=1``). Then our engine runs on the same settings — FELIX's beam pool, its
per-pixel strong-beam rule (``IMinStrongBeams``), thicknesses, pixels, discs and absorption — timed
around the engine call only (``simulate_lacbed`` at cubic [001], ``simulate_zone`` elsewhere; one
untimed call first starts the worker processes, then the best of ``--repeats``), in float64 and
float32. Then the whole ``lacbed-refine simulate --felix-inp`` process (start-up, CIF, engine,
writing) when the command line takes that input, else a note. Columns: FELIX's wall time, ours,
the ratios, the worst Pearson r of ours against this FELIX run over every disc and thickness, and
``uptime``'s 1-minute load before FELIX and after our runs (2 cores: above ~1 something else was
running and every time is an upper bound).

Without ``LACBED_FELIX`` (or when it is not executable) the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from general_references import _atoms, _name  # noqa: E402

from lacbed_refine.engine import ZoneAxis, simulate_zone, zone_beam_pool  # noqa: E402

REF = Path(os.environ.get("LACBED_FELIX_REFERENCE", "/work/shared/data/felix-reference"))
RUNS = ("runs/MgO", "general/GaAs-110", "general/GaAs-110-bk", "general/Si-111", "general/TiO2-001", "general/GaN-100")


def _uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: %.2f, %.2f, %.2f" % os.getloadavg()


def _load1(text: str) -> float:
    m = re.search(r"load average:\s*([0-9.]+)", text)
    return float(m.group(1)) if m else float("nan")


def read_input(folder: Path) -> dict:
    """The settings of a FELIX v1.3 input folder, in library units (V, Å, Å⁻¹)."""
    inp = (folder / "felix.inp").read_text()

    def val(key):
        return re.search(rf"^{key}\s.*?=\s*(\S+)", inp, re.M).group(1)

    def vec(key):
        return tuple(int(x) for x in re.search(rf"^{key}\s.*?=\s*\[(.*?)\]", inp, re.M).group(1).split(","))

    t0, t1, dt = (float(val(k)) for k in ("RInitialThickness", "RFinalThickness", "RDeltaThickness"))
    hkl = [tuple(int(x) for x in line.strip()[1:-1].split(",")) for line in (folder / "felix.hkl").read_text().splitlines()
           if line.strip()]
    return dict(
        zone=vec("IIncidentBeamDirection"), x=vec("IXDirection"), normal=vec("INormalDirection"),
        voltage=float(val(r"RAcceleratingVoltage \(kV\)")) * 1e3, size=2 * int(val("IPixelCount")),
        half_width=float(val("ROuterConvergenceAngle")), g_limit=float(val("RgLimit")),
        strong=int(val("IMinStrongBeams")), thicknesses=tuple(t0 + k * dt for k in range(int(round((t1 - t0) / dt)) + 1)),
        absorption={"0": "none", "1": "proportional", "2": "bird-king"}[val("IAbsorbFLAG")],
        absorption_percent=float(val("RAbsorptionPer")), hkl=list(dict.fromkeys(hkl)),
    )


def felix_images(folder: Path, s: dict) -> tuple[np.ndarray, list]:
    """FELIX's images in ``folder`` (T, R, 2N, 2N) for the reflections it wrote, and those reflections."""
    n = s["size"]
    outs = sorted(folder.glob(f"*_Sim_*A_{n:03d}x{n:03d}"))
    if not outs:
        raise FileNotFoundError(f"{folder}: FELIX wrote no <chem>_Sim_<t>A_{n}x{n} folder")
    chem = outs[0].name.split("_Sim_")[0]
    refl = [h for h in s["hkl"] if all((folder / f"{chem}_Sim_{int(t):04d}A_{n:03d}x{n:03d}" / _name(chem, h)).exists()
                                       for t in s["thicknesses"])]
    img = np.stack([[np.fromfile(folder / f"{chem}_Sim_{int(t):04d}A_{n:03d}x{n:03d}" / _name(chem, h), "<f8").reshape(n, n)
                     for h in refl] for t in s["thicknesses"]])
    return img, refl


def run_felix(exe: str, ranks: int, src: Path, tmp: Path, timeout: float) -> float:
    """FELIX on a copy of ``src``'s inputs in ``tmp``: wall seconds."""
    for name in ("felix.inp", "felix.cif", "felix.hkl"):
        shutil.copy(src / name, tmp)
    cmd = [exe] if ranks == 1 else [shutil.which("mpirun") or "mpirun", "--allow-run-as-root", "-np", str(ranks), exe]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    (tmp / "run.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"FELIX failed in {tmp} (exit {proc.returncode}): {(proc.stderr or proc.stdout)[-400:]}")
    return wall


def engine_call(folder: Path, s: dict, refl, dtype, workers: int):
    """A no-argument callable running our engine on the run's settings, and what it runs."""
    cell, atoms, centring = _atoms(folder / "felix.cif")
    zone = ZoneAxis(s["zone"], s["x"], s["normal"])
    beams = zone_beam_pool(cell, zone, centring, s["voltage"], g_limit=s["g_limit"])
    thick = torch.tensor(s["thicknesses"], dtype=torch.float64)
    standard = (s["zone"], s["x"], s["normal"]) == ((0, 0, 1), (1, 0, 0), (0, 0, 1)) and s["absorption"] != "bird-king"
    if standard and abs(cell.a - cell.b) < 1e-9 and abs(cell.a - cell.c) < 1e-9:
        from lacbed_refine.engine.bloch import simulate_lacbed
        from lacbed_refine.engine.geometry import SimulationSettings

        letters = {frozenset({(0, 0, 0)}): "P", frozenset({(0, 0, 0), (.5, .5, .5)}): "I"}
        cen = letters.get(frozenset(tuple(float(x) for x in c) for c in centring), "F")
        settings = SimulationSettings(voltage=s["voltage"], size=s["size"], half_width=s["half_width"],
                                      thicknesses=s["thicknesses"], strong_beams=s["strong"], strong_rule="felix",
                                      reflections=tuple(refl), absorption=s["absorption_percent"] if s["absorption"] != "none" else 0.0,
                                      mean_absorption=False)

        def call():
            with torch.no_grad():
                return simulate_lacbed(atoms, cell.a, settings, centring=cen, beams=beams, dtype=dtype, workers=workers)[0]

        return call, "simulate_lacbed", len(beams)

    def call():
        with torch.no_grad():
            return simulate_zone(atoms, cell, zone, beams, thick, voltage=s["voltage"], size=s["size"], half_width=s["half_width"],
                                 reflections=refl, strong_beams=s["strong"], absorption=s["absorption_percent"],
                                 absorption_model=s["absorption"], mean_absorption=False, dtype=dtype, workers=workers)

    return call, "simulate_zone", len(beams)


def worst_r(ours, felix) -> float:
    ours = np.asarray(ours, dtype=np.float64)
    return min(float(np.corrcoef(ours[i, j].ravel(), felix[i, j].ravel())[0, 1])
               for i in range(felix.shape[0]) for j in range(felix.shape[1]))


def cli_run(tmp: Path, workers: int, timeout: float) -> tuple[float | None, str]:
    """``lacbed-refine simulate --felix-inp`` as a whole process in ``tmp`` (holding FELIX's inputs)."""
    exe = shutil.which("lacbed-refine")
    base = [exe] if exe else [sys.executable, "-m", "lacbed_refine_cli.main"]
    help_text = subprocess.run(base + ["simulate", "--help"], capture_output=True, text=True).stdout
    if "--felix-inp" not in help_text:
        return None, "the CLI has no --felix-inp yet: skipped"
    out = tmp / "ours.npy"
    cmd = base + ["simulate", "felix.cif", "--felix-inp", "felix.inp", "-o", str(out), "--workers", str(workers), "--overwrite"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return None, f"CLI failed (exit {proc.returncode}): {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}"
    return wall, "lacbed-refine simulate --felix-inp felix.inp --workers %d (precision fast)" % workers


def bench(name: str, exe: str, ranks: int, args) -> dict:
    src = REF / name
    s = read_input(src)
    row = dict(run=name, size=s["size"], uptime_before=_uptime())
    with tempfile.TemporaryDirectory(prefix=f"felix-speed-{src.name}-") as tmp:
        tmp = Path(tmp)
        row["felix_s"] = run_felix(exe, ranks, src, tmp, args.felix_timeout)
        felix, refl = felix_images(tmp, s)
        row["discs"] = len(refl)
        for label, dtype in (("f64", torch.float64), ("f32", torch.float32)):
            call, engine, pool = engine_call(src, s, refl, dtype, args.workers)
            call()  # starts the worker processes; not timed
            best = math.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ours = call()
                best = min(best, time.perf_counter() - t0)
            row.update({"engine": engine, "pool": pool, f"{label}_s": best, f"{label}_r": worst_r(ours, felix)})
        row["cli_s"], row["cli_note"] = cli_run(tmp, args.workers, args.felix_timeout)
    row["uptime_after"] = _uptime()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", nargs="*", default=None, help="e.g. MgO GaAs-110 (default: all)")
    ap.add_argument("--workers", type=int, default=None, help="engine worker processes (default: FELIX's ranks)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--felix-timeout", type=float, default=1800.0)
    ap.add_argument("--json", default="/tmp/lacbed-bench/felix_speed.json")
    args = ap.parse_args(argv)

    exe = os.environ.get("LACBED_FELIX")
    if not exe or not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
        print(f"LACBED_FELIX {'is not set' if not exe else repr(exe) + ' is not an executable file'}: "
              "nothing to compare with, skipped (set it to a FELIX binary)")
        return 0
    ranks = int(os.environ.get("LACBED_FELIX_RANKS", "1"))
    if ranks > 1 and os.environ.get("LACBED_FELIX_MPI_FIXED") != "1":
        print(f"LACBED_FELIX_RANKS={ranks} without LACBED_FELIX_MPI_FIXED=1: unpatched FELIX computes wrong pixels on "
              "ranks ≥ 1 (felix-spec §6); use the broadcast-fixed build and set LACBED_FELIX_MPI_FIXED=1. Skipped.")
        return 0
    if ranks > 1 and shutil.which("mpirun") is None:
        print(f"LACBED_FELIX_RANKS={ranks} needs mpirun, which is not on PATH: skipped")
        return 0
    args.workers = args.workers or ranks
    names = [n for n in RUNS if args.runs is None or n.split("/")[-1] in args.runs]
    rows = []
    for name in names:
        row = bench(name, exe, ranks, args)
        rows.append(row)
        print(f"{row['run']}: FELIX {row['felix_s']:.1f} s, {row['engine']} f64 {row['f64_s']:.3f} s "
              f"f32 {row['f32_s']:.3f} s, CLI {row['cli_s'] if row['cli_s'] is None else round(row['cli_s'], 2)} s; "
              f"load {_load1(row['uptime_before']):.2f} → {_load1(row['uptime_after']):.2f}", file=sys.stderr, flush=True)

    print(f"FELIX: {exe}, {ranks} rank(s); ours: {args.workers} worker process(es), best of {args.repeats}\n")
    print("| run | pixels | pool | discs | FELIX [s] | engine | f64 [s] | FELIX/f64 | f32 [s] | FELIX/f32 | worst r f64 / f32 vs this FELIX run "
          "| CLI process [s] | FELIX/CLI | load before → after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cli = f"{r['cli_s']:.2f} | {r['felix_s'] / r['cli_s']:.0f}×" if r["cli_s"] else f"— ({r['cli_note']}) | —"
        print(f"| {r['run']} | {r['size']}² | {r['pool']} | {r['discs']} | {r['felix_s']:.1f} | {r['engine']} | {r['f64_s']:.3f} | "
              f"{r['felix_s'] / r['f64_s']:.0f}× | {r['f32_s']:.3f} | {r['felix_s'] / r['f32_s']:.0f}× | "
              f"{r['f64_r']:.7f} / {r['f32_r']:.7f} | {cli} | {_load1(r['uptime_before']):.2f} → {_load1(r['uptime_after']):.2f} |")
    notes = {r["cli_note"] for r in rows}
    for n in sorted(notes):
        print(f"\nCLI: {n}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(dict(felix=exe, ranks=ranks, workers=args.workers, rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
