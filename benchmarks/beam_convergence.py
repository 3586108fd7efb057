"""Beam-count convergence of the dataset preset: Pearson r between N and 2N beams on real structures.

For a sample of real cubic structures spread over the cell edge a (one per a-quantile bin of
``index.csv``, chosen with a fixed seed), the bright-field pattern is simulated with the paper's
geometry (200 kV, [001], ``--size`` pixels, half-width 7.266/a Å⁻¹, 50/100/150/200 nm, no absorption)
and a whole-shell ZOLZ pool of N beams used at every pixel (``settings_for(..., n_beams=N)``:
no per-pixel strong-beam cut), for every N in ``--beams`` and for 2N. The table gives, per structure
and N, r(N, 2N) at each thickness and the CPU seconds the N-beam pattern took (CPU, not wall time:
the engine runs on one thread, so CPU time is what a worker costs on an otherwise idle core, even when
other jobs share the machine); the summary gives, per N, the median and worst r per thickness, the
share of the sample with r >= 0.99 at every thickness, and the build throughput the mean CPU time
implies on 2 cores with one structure per worker process (the dataset build adds the projected
potential, ~0.1 s).

Run from the repository root (about 30-40 min on 2 cores at 128 pixels)::

    PYTHONPATH=. python benchmarks/beam_convergence.py [--beams 100 150 200 300] [--sample 20]
        [--size 128] [--workers 2] [--json /tmp/lacbed-bench/beam_convergence.json]

Progress goes to stderr through ``logging``; the table to stdout.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import logging
import multiprocessing as mp
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

log = logging.getLogger("beam_convergence")

DEFAULT_CIFS = Path(os.environ.get("LACBED_CUBIC_CIFS", "/work/shared/data/cubic-cifs"))
DEFAULT_JSON = Path("/tmp/lacbed-bench/beam_convergence.json")
THRESHOLD = 0.99
# Effective edge of the (h k 0) net: a for P, a/√2 for I, a/2 for F (the ZOLZ beams it allows).
_EFFECTIVE = {"P": 1.0, "I": 2**-0.5, "F": 0.5}


def pearson_r(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation of two images (flattened)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / den) if den > 0 else float("nan")


def choose_sample(index_csv: Path, n: int, seed: int) -> list[dict]:
    """One structure per a-quantile bin (``n`` bins), chosen at random with ``seed`` inside each bin."""
    with open(index_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows.sort(key=lambda r: (float(r["a_angstrom"]), r["id"]))
    rng = np.random.default_rng(seed)
    edges = np.linspace(0, len(rows), n + 1).astype(int)
    return [rows[int(rng.integers(lo, hi))] for lo, hi in zip(edges[:-1], edges[1:]) if hi > lo]


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")


def _study_one(cif: str, beams: list[int], size: int) -> dict:
    from lacbed_refine.io.cif import read_cif
    from lacbed_refine.simulators.bloch import settings_for, simulate_crystal

    crystal = read_cif(cif)
    images, seconds, cpu, counts, ops = {}, {}, {}, {}, 0
    for n in sorted(set(beams) | {2 * b for b in beams}):
        settings = settings_for(crystal, n_beams=n, size=size)
        t0, c0 = time.perf_counter(), time.process_time()
        stack, info = simulate_crystal(crystal, settings)
        seconds[n] = time.perf_counter() - t0
        cpu[n] = time.process_time() - c0
        images[n] = stack[:, 0]
        counts[n] = info.n_beams
        ops = info.symmetry_ops
    rows = []
    for n in beams:
        r = [pearson_r(images[n][t], images[2 * n][t]) for t in range(images[n].shape[0])]
        rows.append({"N": n, "beams": counts[n], "beams_2N": counts[2 * n], "seconds": seconds[n],
                     "cpu_seconds": cpu[n], "r": r})
    return {
        "cif": cif,
        "formula": crystal.formula,
        "spacegroup": crystal.spacegroup_symbol,
        "a": crystal.a,
        "a_eff": crystal.a * _EFFECTIVE[crystal.spacegroup_symbol[0]],
        "atoms": int(len(crystal.atoms().Z)),
        "max_Z": int(crystal.atoms().Z.max()),
        "symmetry_ops": ops,
        "rows": rows,
    }


def _summary(results: list[dict], beams: list[int], n_thick: int) -> list[dict]:
    out = []
    for n in beams:
        rs = [next(r for r in res["rows"] if r["N"] == n) for res in results]
        r = np.array([x["r"] for x in rs])  # (S, T)
        secs = [x.get("cpu_seconds", x["seconds"]) for x in rs]
        mean_s = statistics.fmean(secs)
        out.append(
            {
                "N": n,
                "median_r": [float(np.median(r[:, t])) for t in range(n_thick)],
                "min_r": [float(r[:, t].min()) for t in range(n_thick)],
                "share_converged": float(np.mean((r >= THRESHOLD).all(axis=1))),
                "share_converged_per_t": [float(np.mean(r[:, t] >= THRESHOLD)) for t in range(n_thick)],
                "mean_cpu_seconds": mean_s,
                "structures_per_hour_2_workers": 2 * 3600.0 / mean_s,
            }
        )
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cifs", type=Path, default=DEFAULT_CIFS, help="cubic-CIF folder with index.csv")
    p.add_argument("--beams", type=int, nargs="+", default=[100, 150, 200, 300])
    p.add_argument("--sample", type=int, default=20, help="number of structures (a-quantile bins)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    sample = choose_sample(args.cifs / "index.csv", args.sample, args.seed)
    cifs = [str(args.cifs / r["source"] / f"{r['id']}.cif") for r in sample]
    log.info("%d structures, N = %s and 2N, %d px, %d workers", len(cifs), args.beams, args.size, args.workers)
    results = []
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(args.workers, mp_context=ctx, initializer=_init_worker) as pool:
        futures = {pool.submit(_study_one, c, args.beams, args.size): c for c in cifs}
        for fut in cf.as_completed(futures):
            try:
                res = fut.result()
            except Exception as exc:  # a structure the engine cannot do is reported, not fatal
                log.warning("%s: %s: %s", futures[fut], type(exc).__name__, exc)
                continue
            results.append(res)
            log.info("%d/%d %s (%.0f s so far)", len(results), len(cifs), Path(res["cif"]).stem,
                     time.perf_counter() - t0)
    results.sort(key=lambda r: r["a"])
    n_thick = len(results[0]["rows"][0]["r"])
    thick = "r@50/100/150/200nm"

    print(f"\nr(N, 2N) of the bright field, {args.size}x{args.size} px, paper geometry, whole pool per pixel")
    print(f"{'id':<16}{'formula':<22}{'SG':<11}{'a/Å':>7}{'a_eff':>7}{'maxZ':>5}{'ops':>4}"
          + "".join(f"  N={n:<4}{thick:<27}{'s':>6}" for n in args.beams))
    for res in results:
        line = (f"{Path(res['cif']).stem:<16}{res['formula'][:21]:<22}{res['spacegroup']:<11}"
                f"{res['a']:>7.3f}{res['a_eff']:>7.2f}{res['max_Z']:>5}{res['symmetry_ops']:>4}")
        for row in res["rows"]:
            line += f"  {row['beams']:<6}" + " ".join(f"{x:.3f}" for x in row["r"]).ljust(29) + f"{row['cpu_seconds']:>6.1f}"
        print(line)
    summary = _summary(results, args.beams, n_thick)
    print(f"\nsummary over {len(results)} structures (converged: r >= {THRESHOLD} at every thickness)")
    print(f"{'N':>5}  {'median r per t':<30}{'worst r per t':<30}{'conv.':>6}{'CPU s':>8}{'struct/h (2 workers)':>22}")
    for s in summary:
        print(f"{s['N']:>5}  " + " ".join(f"{x:.3f}" for x in s["median_r"]).ljust(30)
              + " ".join(f"{x:.3f}" for x in s["min_r"]).ljust(30)
              + f"{s['share_converged']:>6.2f}{s['mean_cpu_seconds']:>8.1f}{s['structures_per_hour_2_workers']:>22.0f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                     "results": results, "summary": summary}, indent=1))
    log.info("wrote %s", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
