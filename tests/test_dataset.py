"""Dataset build (resume after SIGKILL, failures, layout, hash, Dask), PNG import, torch Dataset.

Everything runs the real library on tiny inputs: 16–32 px patterns, a few dozen beams.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lacbed_refine.io.cif import read_cif, write_cif
from lacbed_refine.dataset import BuildSpec, LacbedDataset, build_dataset, dataset_hash, read_info, work_status
from lacbed_refine.dataset._tasks import Task, cif_tasks, run_task
from lacbed_refine.dataset.synthetic import random_crystal
from lacbed_refine_cli.main import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "SrTiO3.cif"
TINY = BuildSpec(size=16, n_beams=21)

MALFORMED = "data_broken\n_cell_length_a 5.0\nloop_\n_atom_site_label\n_atom_site_fract_x\nthis is not a CIF row ' \n"
NON_CUBIC = (
    "data_mono\n_cell_length_a 5\n_cell_length_b 6\n_cell_length_c 7\n_cell_angle_alpha 90\n"
    "_cell_angle_beta 100\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1 21/c 1'\n"
    "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
    "_atom_site_fract_z\nC1 C 0.1 0.2 0.3\n"
)


def _cif_folder(folder: Path, *, bad: bool = False) -> Path:
    """SrTiO3 and two synthetic structures as CIFs (in a sub-folder), plus bad files if asked."""
    (folder / "sub").mkdir(parents=True)
    (folder / "SrTiO3.cif").write_text(EXAMPLE.read_text())
    for i in (0, 28):  # P23 and Pm-3m
        write_cif(random_crystal(9, i), folder / "sub" / f"x{i}.cif")
    if bad:
        (folder / "broken.cif").write_text(MALFORMED)
        (folder / "monoclinic.cif").write_text(NON_CUBIC)
    return folder


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 6-structure dataset (3 CIFs, 3 synthetic) at 16 px with 21 beams."""
    root = tmp_path_factory.mktemp("tiny")
    cifs = _cif_folder(root / "cifs")
    out = root / "tiny.h5"
    result = build_dataset(out, cifs=[cifs], synthetic=3, seed=4, spec=TINY, workers=1, progress=False)
    return out, result, cifs


def test_layout_is_plain_h5py(tiny):
    out, result, _ = tiny
    assert result.n_structures == 6 and result.n_failed == 0 and result.computed == 6
    assert not out.with_name(out.name + ".work").exists()  # work folder removed
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "lacbed-refine-dataset" and f.attrs["content_hash"] == result.content_hash
        assert f["potential"].shape == (6, 16, 16) and f["potential"].dtype == np.float32
        assert f["potential_raw"].shape == (6, 16, 16)
        assert f["pattern"].shape == (6, 4, 16, 16) and f["pattern"].dtype == np.float32
        assert f["pattern"].chunks == (1, 1, 16, 16) and f["pattern"].compression == "gzip"
        assert f["thickness_nm"][()].tolist() == [50.0, 100.0, 150.0, 200.0]
        ids = list(f["meta/id"].asstr()[()])
        assert ids == ["SrTiO3", "x0", "x28", "syn4-000000", "syn4-000001", "syn4-000002"]
        assert list(f["meta/source"].asstr()[()]) == ["cifs", "sub", "sub"] + ["synthetic"] * 3
        assert f["meta/spacegroup_number"][()].tolist()[:3] == [221, 195, 223]
        assert f["meta/n_beams"][()].min() >= 21
        pot, raw = f["potential"][()], f["potential_raw"][()]
        assert np.allclose(pot.min(axis=(1, 2)), 0) and np.allclose(pot.max(axis=(1, 2)), 1)
        assert np.allclose(raw.max(axis=(1, 2)), f["meta/potential_max"][()], rtol=1e-6)
        pat = f["pattern"][()]
        assert np.isfinite(pat).all() and pat.min() >= 0 and pat.max() <= 1.0 + 1e-4
        # the structure as simulated is stored and reads back
        cif_text = f["meta/cif"].asstr()[0]
        formulas = list(f["meta/reduced_formula"].asstr()[()])
        splits = list(f["meta/split"].asstr()[()])
        table = dict(zip(f["splits/key"].asstr()[()], f["splits/split"].asstr()[()]))
        assert len(f["failed/id"]) == 0
    assert all(table[k] == s for k, s in zip(formulas, splits))
    assert formulas[0] == "O3SrTi" and set(splits) <= {"train", "validation", "test"}
    path = out.parent / "back.cif"
    path.write_text(cif_text)
    assert read_cif(path).formula == read_cif(EXAMPLE).formula
    assert dataset_hash(out) == result.content_hash


def test_rerun_is_up_to_date_and_other_inputs_need_overwrite(tiny, tmp_path):
    out, result, cifs = tiny
    other = tmp_path / "two.h5"
    r2 = build_dataset(other, cifs=[cifs], synthetic=3, seed=4, spec=TINY, progress=False)
    assert r2.content_hash == result.content_hash
    again = build_dataset(other, cifs=[cifs], synthetic=3, seed=4, spec=TINY, progress=False)
    assert again.up_to_date and again.computed == 0 and again.content_hash == result.content_hash
    with pytest.raises(ValueError, match="overwrite"):
        build_dataset(other, cifs=[cifs], synthetic=2, seed=4, spec=TINY, progress=False)
    r3 = build_dataset(other, cifs=[cifs], synthetic=2, seed=4, spec=TINY, overwrite=True, progress=False)
    assert r3.n_structures == 5 and r3.content_hash != result.content_hash


def _shards(work):
    """Finished shards in a work folder; a worker killed mid-write leaves a hidden ``.tmp-*.npz``,
    which pathlib's glob would also match but which is not a finished structure."""
    return [p for p in work.glob("*.npz") if not p.name.startswith(".")]


def test_sigkill_mid_build_then_resume_gives_the_same_hash(tiny, tmp_path):
    """Kill the CLI (SIGKILL, 2 worker processes) after some structures finished; the same command
    (here with 1 worker) completes the file, whose content hash equals that of an uninterrupted
    in-process build."""
    _, reference, cifs = tiny
    out = tmp_path / "killed.h5"
    work = out.with_name(out.name + ".work")
    cmd = [sys.executable, "-m", "lacbed_refine_cli.main", "dataset", "build", "--cifs", str(cifs),
           "--synthetic", "3", "--seed", "4", "-o", str(out), "--size", "16", "--beams", "21",
           "--workers", "2", "--no-progress", "--throttle", "0.4"]
    with open(tmp_path / "killed.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not (work.is_dir() and _shards(work)):
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # the main process only: its workers must notice
        proc.wait(timeout=30)
        gone = _group_gone(proc.pid, timeout=60)  # generous: a loaded machine is slow to schedule them
        assert gone, f"processes outlived the killed build: {_group_members(proc.pid)}"
    finally:
        if _group_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    assert not out.exists(), "the build finished before it was killed; the test needs a slower build"
    done = len(_shards(work))
    assert 1 <= done < 6
    status = work_status(out)
    assert status["total"] == 6 and status["done"] == done and status["pending"] == 6 - done
    rerun_cmd = [c if c != "2" else "1" for c in cmd[:-2]]  # --workers 1, no throttle
    rerun = subprocess.run(rerun_cmd, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    info = read_info(out)
    assert info["content_hash"] == reference.content_hash
    assert dataset_hash(out) == reference.content_hash
    assert not work.exists() and not list(tmp_path.glob(".killed.h5.tmp-*"))


def _group_members(pgid: int) -> list[str]:
    """Live (not zombie) processes of process group ``pgid``: ``"pid state cmdline"``."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                cmd = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:100]
                out.append(f"{stat.parent.name} {fields[0]} {cmd}")
        except (OSError, ValueError):
            continue
    return out


def _group_gone(pgid: int, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if not _group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def test_bad_cifs_are_reported_and_skipped(tmp_path, caplog):
    cifs = _cif_folder(tmp_path / "cifs", bad=True)
    out = tmp_path / "d.h5"
    res = CliRunner().invoke(cli, ["dataset", "build", "--cifs", str(cifs), "-o", str(out), "--size", "16",
                                   "--beams", "21", "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "3 structures, 2 failed" in res.output
    info = read_info(out)
    reasons = {f["id"]: f["reason"] for f in info["failed"]}
    assert set(reasons) == {"broken", "monoclinic"}
    assert "monoclinic.cif" in reasons["monoclinic"] and "not cubic" in reasons["monoclinic"]
    assert "broken.cif" in reasons["broken"] and str(tmp_path) not in reasons["broken"]
    assert all("\n" not in r for r in reasons.values())
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "monoclinic: skipped" in logged and "broken: skipped" in logged
    with h5py.File(out) as f:
        assert list(f["failed/id"].asstr()[()]) == ["broken", "monoclinic"]
        assert len(f["meta/id"]) == 3


def test_engine_failure_is_recorded_not_raised(tmp_path):
    task = Task(order=0, id="x", kind="cif", source="s", path=str(EXAMPLE), rel="SrTiO3.cif")
    status, reason = run_task(task, BuildSpec(size=16, n_beams=21, thickness_nm=(50.0,), preset="paper"))
    assert status == "ok"
    missing = Task(order=0, id="y", kind="cif", source="s", path=str(tmp_path / "nope.cif"), rel="nope.cif")
    status, reason = run_task(missing, TINY)
    assert status == "failed" and "nope.cif" in reason and str(tmp_path) not in reason


def test_work_folder_of_other_settings_is_refused(tmp_path):
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    (cifs / "SrTiO3.cif").write_text(EXAMPLE.read_text())
    out = tmp_path / "d.h5"
    build_dataset(out, cifs=[cifs], spec=TINY, keep_work=True, progress=False)
    out.unlink()
    with pytest.raises(ValueError, match="other settings"):
        build_dataset(out, cifs=[cifs], spec=BuildSpec(size=16, n_beams=37), progress=False)
    with pytest.raises(ValueError, match="nothing to build"):
        build_dataset(tmp_path / "e.h5", progress=False)


def test_dask_local_cluster_gives_the_same_hash(tiny, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    _, reference, cifs = tiny
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        res = CliRunner().invoke(cli, ["dataset", "build", "--cifs", str(cifs), "--synthetic", "3", "--seed", "4",
                                       "-o", str(tmp_path / "dask.h5"), "--size", "16", "--beams", "21",
                                       "--scheduler", cluster.scheduler_address, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert read_info(tmp_path / "dask.h5")["content_hash"] == reference.content_hash


def test_torch_dataset_lazy_and_with_workers(tiny):
    out, _, _ = tiny
    ds = LacbedDataset(out)
    assert len(ds) == 6 * 4
    item = ds[5]
    assert item["potential"].shape == (1, 16, 16) and item["potential"].dtype == torch.float32
    assert item["pattern"].shape == (1, 16, 16) and float(item["thickness_nm"]) == 100.0
    assert item["a_angstrom"] > 0 and item["potential_scale"] > 0
    every = LacbedDataset(out, thickness="all")
    assert len(every) == 6 and every[0]["pattern"].shape == (4, 16, 16)
    assert torch.equal(every[1]["pattern"][1], ds[4 + 1]["pattern"][0])
    one = LacbedDataset(out, thickness=150)
    assert len(one) == 6 and float(one[0]["thickness_nm"]) == 150.0
    with pytest.raises(ValueError, match="thickness"):
        LacbedDataset(out, thickness=75)
    synth = LacbedDataset(out, source="synthetic", thickness="all")
    assert len(synth) == 3
    loader = torch.utils.data.DataLoader(every, batch_size=3, num_workers=2)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["pattern"].shape == (3, 4, 16, 16)
    assert ds._file is None or ds._pid == os.getpid()  # the parent's handle is its own


def test_import_png_layout(tmp_path):
    from PIL import Image

    root = tmp_path / "png"
    rng = np.random.default_rng(0)
    for ident in ("1001", "1002", "1003", "1004"):
        d = root / ident
        d.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(d / "potential.png")
        for t in ("0500", "1000"):
            if ident == "1003" and t == "1000":
                continue  # incomplete folder
            img = rng.integers(0, 65536, (8, 8), dtype=np.uint16) if ident == "1002" else rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(img).save(d / f"pattern_{t}.png")
    (root / "1004" / "pattern_1000.png").write_bytes(b"not a png")
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "train").write_text("1001\n1003\n")
    (splits / "val").write_text("1002\n")
    (splits / "test").write_text("1004\n")
    out = tmp_path / "png.h5"
    res = CliRunner().invoke(cli, ["dataset", "import-png", str(root), "-o", str(out), "--no-progress",
                                   *sum((["--split-file", str(splits / n)] for n in ("train", "val", "test")), [])])
    assert res.exit_code == 0, res.output
    with h5py.File(out) as f:
        assert list(f["meta/id"].asstr()[()]) == ["1001", "1002"]
        assert list(f["meta/split"].asstr()[()]) == ["train", "validation"]
        assert f["thickness_nm"][()].tolist() == [50.0, 100.0]
        assert f["pattern"].shape == (2, 2, 8, 8) and f["potential"].shape == (2, 8, 8)
        assert np.isnan(f["potential_raw"][()]).all()
        assert 0.0 <= f["pattern"][()].min() and f["pattern"][()].max() <= 1.0
        assert list(f["failed/id"].asstr()[()]) == ["1003", "1004"]
        pot = np.asarray(Image.open(root / "1001" / "potential.png"), dtype=np.float32) / 255
        assert np.allclose(f["potential"][0], pot)
    assert dataset_hash(out) == read_info(out)["content_hash"]
    assert len(LacbedDataset(out, split="validation", thickness="all")) == 1


def test_shared_cubic_cifs_are_tasks_with_their_sources(shared_dir):
    root = shared_dir / "data" / "cubic-cifs"
    if not (root / "index.csv").is_file():
        pytest.skip(f"{root} is absent")
    tasks = cif_tasks(root)
    with open(root / "index.csv", newline="") as fh:
        index = {row["id"]: row["source"] for row in csv.DictReader(fh)}
    assert len(tasks) == len(index)
    assert all(index[t.id] == t.source for t in tasks)
    assert [t.id for t in tasks] == sorted(t.id for t in tasks)
    status, rec = run_task(tasks[0], TINY)
    assert status == "ok" and rec.pattern.shape == (4, 16, 16) and rec.meta["source"] == index[tasks[0].id]


def test_leftovers_of_a_kill_during_assembly_are_cleaned(tiny, tmp_path):
    """A build killed while writing the file (temporary file left) or while deleting its work folder
    (renamed trash left) reruns to the same file and leaves nothing behind."""
    _, reference, cifs = tiny
    out = tmp_path / "d.h5"
    build_dataset(out, cifs=[cifs], synthetic=3, seed=4, spec=TINY, keep_work=True, progress=False)
    out.unlink()  # as if killed before the rename
    (tmp_path / ".d.h5.tmp-123-abcd").write_bytes(b"half an HDF5 file")
    (tmp_path / ".d.h5.work-trash-99").mkdir()
    result = build_dataset(out, cifs=[cifs], synthetic=3, seed=4, spec=TINY, progress=False)
    assert result.computed == 0 and result.content_hash == reference.content_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.h5"]


def test_unreachable_scheduler_leaves_no_work_folder(tmp_path):
    import dask

    # distributed's defaults must be in dask's config before config.set, which restores the config
    # as it found it on exit (it would drop them, breaking every later Dask test)
    pytest.importorskip("dask.distributed")
    out = tmp_path / "d.h5"
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        with pytest.raises(ValueError, match=r"--scheduler tcp://127\.0\.0\.1:9: cannot connect"):
            build_dataset(out, synthetic=1, seed=0, spec=TINY, scheduler="tcp://127.0.0.1:9", progress=False)
    assert list(tmp_path.iterdir()) == []
