"""Fit the three measured digital-LACBED experiments in ``../shared/data/measured/`` end to end with
``lacbed-refine fit CIF EXPERIMENT/`` and print what each gave.

    PYTHONPATH=. python benchmarks/measured_experiments.py --out /tmp/measured [--only GaAs] [--extra ...]

Each experiment runs as its own ``lacbed-refine`` process (timed whole: start-up, reading, fit,
writing), one after the other, with ``uptime``'s load before and after (2 cores: above ~1 something
else was running and the time is an upper bound). The options per experiment are the ones below —
what an electron crystallographer would refine on that crystal — and the results are read back from
each ``report.json``: figure of merit (with and without the per-disc background), per-disc r (worst,
median), every refined value with σ, the microscope model, beams and stage times.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "measured"

#: experiment → (CIF, extra options)
RUNS = {
    "GaAs": ("GaAs.cif", ["--discs", "all", "--refine", "b"]),
    "GeSn152": ("GeSn.cif", ["--refine", "b,occ", "--bin", "2"]),
    "LiNbO3": ("LiNbO3.cif", ["--refine", "xyz,b", "--bin", "4"]),
}


def _load():
    return os.getloadavg()[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for the fits (one sub-folder each)")
    ap.add_argument("--only", nargs="*", default=None, help="experiments to run (default all three)")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="options added to every fit")
    args = ap.parse_args(argv)
    if not SHARED.is_dir():
        print(f"{SHARED} is absent: nothing to fit")
        return 0
    out = Path(args.out)
    rows = []
    for name in args.only or list(RUNS):
        cif, opts = RUNS[name]
        folder = SHARED / name
        cif_path = next(folder.glob("*.cif")) if not (folder / cif).is_file() else folder / cif
        cmd = ["lacbed-refine", "fit", str(cif_path), str(folder), "-o", str(out / name), "--overwrite", *opts,
               *args.extra]
        print("$", " ".join(cmd), flush=True)
        load0, t0 = _load(), time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall, load1 = time.perf_counter() - t0, _load()
        if proc.returncode != 0:
            print(proc.stdout[-2000:], proc.stderr[-2000:], sep="\n")
            rows.append((name, None, wall, load0, load1))
            continue
        rep = json.loads((out / name / "report.json").read_text())
        rows.append((name, rep, wall, load0, load1))
        print(f"\n## {name}: fom {rep['fom']:.4f} (no background {rep['fom_no_background']:.4f}), "
              f"{len(rep['discs'])} discs, r worst {rep['disc_r']['worst']:.3f} median {rep['disc_r']['median']:.3f}, "
              f"t = {rep['thickness_nm']:.1f} nm, {wall:.0f} s (load {load0:.1f} → {load1:.1f})")
        for p in rep["parameters"]:
            sig = "—" if p["sigma"] is None else f"{p['sigma']:.4f}"
            start = "—" if p.get("start") is None else f"{p['start']:.4f}"
            print(f"  {p['name']:18s} {start:>10s} → {p['refined']:.4f} ± {sig}")
        print(f"  beams: pool {rep['beams']['pool']}, ≥{rep['beams']['strong_beams']} strong; "
              + "; ".join(f"{s['pool']}/{s['strong_beams']}: Δfom {s['fom_change']:+.1e}" + ("" if s.get('refined', True) else " (not refined)") for s in rep["beams"]["steps"]))
        print("  stages: " + ", ".join(f"{s['name']} {s['seconds']:.0f} s" for s in rep["stages"]))
        sys.stdout.flush()
    print("\n| experiment | discs | fom | fom (no background) | r worst | r median | t [nm] | wall [s] | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, rep, wall, l0, l1 in rows:
        if rep is None:
            print(f"| {name} | failed | | | | | | {wall:.0f} | {l0:.1f}→{l1:.1f} |")
            continue
        print(f"| {name} | {len(rep['discs'])} | {rep['fom']:.4f} | {rep['fom_no_background']:.4f} | "
              f"{rep['disc_r']['worst']:.3f} | {rep['disc_r']['median']:.3f} | {rep['thickness_nm']:.1f} | {wall:.0f} | "
              f"{l0:.1f}→{l1:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
