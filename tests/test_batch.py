"""Batch refinement: a failing sample does not stop the others; reruns and SIGKILL lose nothing."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from lacbed_refine.refine.batch import read_manifest, run_batch
from lacbed_refine_cli.main import cli

SPINEL = Path(__file__).resolve().parents[1] / "examples" / "spinel"
HALF = str(7.266 / 8.08 / 4)  # the central 16×16 crop of the 64×64 example


def _manifest(tmp_path, n_good=2, bad=True):
    crop = tifffile.imread(SPINEL / "MgAl2O4_120nm.tif")[24:40, 24:40]
    np.save(tmp_path / "crop.npy", crop)
    rows = [{"id": f"s{i}", "cif": str(SPINEL / "MgAl2O4_true.cif"), "pattern": "crop.npy", "refine": "thickness",
             "thickness": str(110 + 5 * i), "half_width": HALF, "beams": "13"} for i in range(n_good)]
    if bad:
        rows.append({"id": "bad", "cif": str(SPINEL / "MgAl2O4_true.cif"), "pattern": "missing.npy", "refine": "thickness",
                     "thickness": "", "half_width": "", "beams": ""})
    path = tmp_path / "manifest.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _summary(out):
    with open(out / "summary.csv") as fh:
        return {r["id"]: r for r in csv.DictReader(fh)}


def test_batch_records_failures_and_resumes(tmp_path):
    manifest = _manifest(tmp_path)
    out = tmp_path / "out"
    res = run_batch(manifest, out, progress=False)
    assert (res["done"], res["failed"], res["skipped"]) == (2, 1, 0)
    summary = _summary(out)
    assert summary["bad"]["status"] == "failed" and "missing.npy" in summary["bad"]["error"]
    assert (out / "bad" / "error.txt").is_file()
    assert float(summary["s0"]["r"]) > 0.5 and float(summary["s0"]["thickness_nm"]) > 0  # 13 beams: mechanics, not accuracy
    # rerun: finished samples are skipped, the failed one is tried again
    (out / "s1" / "report.json").unlink()
    res = run_batch(manifest, out, progress=False)
    assert (res["done"], res["failed"], res["skipped"]) == (2, 1, 1)


def test_manifest_errors_name_the_file(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("cif,image\na.cif,b.tif\n")
    with pytest.raises(ValueError, match="m.csv.*'cif' and 'pattern'"):
        read_manifest(bad)
    res = CliRunner().invoke(cli, ["batch", str(bad), "-o", str(tmp_path / "o")])
    assert res.exit_code == 2 and "m.csv" in res.output


def test_sigkill_mid_batch_loses_nothing_finished(tmp_path):
    manifest = _manifest(tmp_path, n_good=4, bad=False)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "lacbed_refine_cli.main", "batch", str(manifest), "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "s0" / "report.json").exists():
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.parent.name for p in out.glob("*/report.json")}
    assert "s0" in finished
    for name in finished:  # every report on disk is complete JSON
        assert (out / name / "report.json").read_text().strip().endswith("}")
    res = run_batch(manifest, out, progress=False)
    assert res["skipped"] == len(finished) and res["done"] == 4


def test_unreachable_scheduler_is_one_line_and_leaves_no_folder(tmp_path):
    import dask

    # distributed's defaults must be in dask's config before config.set, which restores the config
    # as it found it on exit (it would drop them, breaking every later Dask test)
    pytest.importorskip("dask.distributed")
    manifest = _manifest(tmp_path, n_good=1, bad=False)
    out = tmp_path / "out"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(ValueError, match=r"--scheduler tcp://127\.0\.0\.1:9: cannot connect"):
            run_batch(manifest, out, scheduler="tcp://127.0.0.1:9", progress=False)
    assert not out.exists()  # the folder this batch made is gone again
    keep = tmp_path / "kept"
    keep.mkdir()
    (keep / "other.txt").write_text("x")
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(ValueError):
            run_batch(manifest, keep, scheduler="tcp://127.0.0.1:9", progress=False)
    assert (keep / "other.txt").exists() and sorted(p.name for p in keep.iterdir()) == ["other.txt"]
