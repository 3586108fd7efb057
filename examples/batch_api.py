"""Batch refinement through the Python API: every row of ``examples/batch/manifest.csv`` (paths in
it are relative to the manifest), each into its own folder, with ``summary.csv`` beside them.

The same as ``lacbed-refine batch examples/batch/manifest.csv -o out/batch [--workers 2]``. Rerunning
skips the samples already finished; a failing sample is recorded and the others go on.

Run from the repository root: ``python examples/batch_api.py [OUT_DIR] [WORKERS]``.
"""

import csv
import sys
from pathlib import Path

from lacbed_refine.refine.batch import run_batch

MANIFEST = Path(__file__).parent / "batch" / "manifest.csv"


def main(out_dir: str = "out/batch", workers: str = "1") -> None:
    res = run_batch(MANIFEST, out_dir, workers=int(workers))
    print(f"{res['done']} done, {res['failed']} failed, {res['skipped']} already finished, of {res['total']}")
    with open(res["summary"], newline="") as fh:
        for row in csv.DictReader(fh):
            print(f"  {row['id']:8s} {row['status']:7s} r = {row['r'] or '-':>8.8s}  t = {row['thickness_nm'] or '-':>6.6s} nm  {row['error']}")


if __name__ == "__main__":
    main(*sys.argv[1:])
