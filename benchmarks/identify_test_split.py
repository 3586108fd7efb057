"""Screening on the held-out real test split: the pattern of structure i against every test structure.

    PYTHONPATH=. python benchmarks/identify_test_split.py --data test.h5 --out benchmarks/results/identify

``--data``: a dataset of the real test-split structures at the dataset's settings, made with
``lacbed-refine dataset build --cifs DIR --thickness 50,75,100,125,150,175,200`` where DIR holds the
``../shared/data/cubic-cifs`` files whose reduced formula the split (seed 0) puts in ``test``. Queries
are its engine patterns at 75, 125 and 175 nm — thicknesses between the surrogate's training ones
(50/100/150/200) — turned by a random operation of the square, with Poisson noise (``--counts`` per
pixel on average). Candidates are the same structures, read back from the CIF text in the file, so
that the surrogate's library is made the way ``identify`` makes it (CIF → potential → generator at
every scanned thickness). The engine confirmation re-scores the surrogate's best ``--confirm``
against the engine patterns stored in the file (all 7 thicknesses: what ``identify`` would compute).
Prints top-1 / top-5 and the time per candidate; writes ``identify.json`` and ``identify.png``.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch


def main(argv=None) -> int:
    import tempfile

    from lacbed_refine.io.cif import read_cif
    from lacbed_refine.metrics import dihedral
    from lacbed_refine.surrogate import load_pretrained
    from lacbed_refine.surrogate._identify import DEFAULT_THICKNESSES_NM, score_library, surrogate_library

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--query-thickness", default="75,125,175")
    ap.add_argument("--counts", type=float, default=2000.0, help="mean counts per pixel of the Poisson noise")
    ap.add_argument("--confirm", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--library-thickness", default=None,
                    help="thicknesses [nm] of the surrogate library, comma-separated (default identify's: 50,60,...,200)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with h5py.File(args.data) as f:
        ids = f["meta/id"].asstr()[()]
        cifs = f["meta/cif"].asstr()[()]
        groups = f["meta/spacegroup_symbol"].asstr()[()]
        t_file = f["thickness_nm"][()]
        patterns = f["pattern"][()]  # (N, T, n, n)
    crystals = []
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
        warnings.simplefilter("ignore")
        for text, i in zip(cifs, ids):
            path = Path(tmp) / f"{i}.cif"
            path.write_text(text)
            crystals.append(read_cif(path))
    model = load_pretrained("forward")
    lib_t = DEFAULT_THICKNESSES_NM if args.library_thickness is None else [float(x) for x in args.library_thickness.split(",")]
    t0 = time.perf_counter()
    library = surrogate_library(crystals, lib_t, model=model)
    t_lib = time.perf_counter() - t0
    n = len(ids)
    print(f"{n} test structures; surrogate library ({len(lib_t)} thicknesses each) in {t_lib:.1f} s: "
          f"{1e3 * t_lib / n:.1f} ms per candidate")
    # the engine's library: every stored thickness, standardised the same way
    eng = torch.as_tensor(patterns, dtype=torch.float64)
    eng = eng - eng.mean(dim=(-2, -1), keepdim=True)
    eng = (eng / eng.flatten(-2).norm(dim=-1)[..., None, None]).to(torch.float32)
    rng = np.random.default_rng(args.seed)
    q_thick = [float(x) for x in args.query_thickness.split(",")]
    rows = []
    t_score = 0.0
    for i in range(n):
        for tq in q_thick:
            k = int(np.argmin(np.abs(t_file - tq)))
            assert abs(t_file[k] - tq) < 1e-6, f"{tq} nm is not in {args.data}"
            clean = patterns[i, k].astype(np.float64)
            op = int(rng.integers(8))
            turned = dihedral(torch.as_tensor(clean))[op].numpy()
            noisy = rng.poisson(turned / turned.mean() * args.counts).astype(np.float64)
            t1 = time.perf_counter()
            r, _ = score_library(noisy, library)
            t_score += time.perf_counter() - t1
            order = np.argsort(-r)
            rank = int(np.nonzero(order == i)[0][0]) + 1
            top = order[:args.confirm]
            r_eng, _ = score_library(noisy, eng[top])
            confirmed = int(top[int(np.argmax(r_eng))])
            rows.append({"id": ids[i], "spacegroup": groups[i], "thickness_nm": tq, "rank": rank,
                         "r_true": float(r[i]), "r_best": float(r[order[0]]), "engine_top1": confirmed == i})
    ranks = np.array([r["rank"] for r in rows])
    eng1 = np.array([r["engine_top1"] for r in rows])
    summary = {"n_structures": n, "n_queries": len(rows), "top1": float(np.mean(ranks == 1)),
               "top5": float(np.mean(ranks <= 5)), "median_rank": float(np.median(ranks)),
               "engine_confirmed_top1": float(eng1.mean()), "confirm": args.confirm,
               "library_thickness_nm": list(lib_t), "ms_per_candidate_library": 1e3 * t_lib / n,
               "ms_per_query_against_all": 1e3 * t_score / len(rows), "counts_per_pixel": args.counts,
               "per_thickness": {str(t): {"top1": float(np.mean(ranks[[r["thickness_nm"] == t for r in rows]] == 1)),
                                          "top5": float(np.mean(ranks[[r["thickness_nm"] == t for r in rows]] <= 5))}
                                 for t in q_thick}}
    print(json.dumps(summary, indent=1))
    (out / "identify.json").write_text(json.dumps({"summary": summary, "queries": rows}, indent=1))
    _figure(ranks, n, out / "identify.png")
    return 0


def _figure(ranks, n, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = np.arange(1, n + 1)
    frac = [(ranks <= j).mean() for j in k]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.plot(k, frac, drawstyle="steps-post")
    ax.set_xscale("log")
    ax.set_xlabel("k (candidates kept)")
    ax.set_ylabel("fraction with the truth in the top k")
    ax.set_title(f"surrogate screening, {n} real test structures", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    raise SystemExit(main())
