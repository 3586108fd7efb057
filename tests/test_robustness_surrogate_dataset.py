"""Issue 12: bad input to the surrogate (``train``, ``evaluate``, ``predict``, ``invert``) and
``dataset`` commands gives one line naming the option or file and the value, exit status 2, before
any work, and nothing is overwritten or left half-written.

Everything runs the real library and CLI on tiny inputs made here: datasets of a few random 16×16
structures written with the dataset writer, and untrained 16-pixel networks of a few thousand
parameters (what these tests check does not depend on training).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lacbed_refine.dataset import LacbedDataset, read_info, subset_dataset
from lacbed_refine.dataset._layout import META_FIELDS, Record, write_dataset
from lacbed_refine.runtime import available_cpus, single_thread
from lacbed_refine.surrogate import CGAN, CheckpointError, DiscriminatorConfig, GeneratorConfig, PairsDataset, TaskConfig, TrainConfig, Trainer, evaluate, load_checkpoint, load_surrogate, make_loader, open_dataset
from lacbed_refine_cli.main import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "SrTiO3.cif"
SIZE = 16
TINY = {"generator": {"channels": [4, 8, 8], "mixer_blocks": 1, "res_blocks": 0, "token_hidden": 4,
                      "enhancer_channels": 4, "cond_hidden": 4, "output_basis": 0},
        "discriminator": {"num_d": 1, "ndf": 4, "n_layers": 1}}
NO_GPU = not torch.cuda.is_available()


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _error(res, *needles) -> str:
    """The command failed cleanly: exit 2, no traceback, one error line holding every needle."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit), res.exception  # not an uncaught exception
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("lacbed-refine: error: ")]
    assert len(lines) == 1, res.output
    line = lines[0]
    for needle in needles:
        assert str(needle) in line, (needle, line)
    return line


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _fake_dataset(path: Path, *, n: int = 5, size: int = SIZE, thickness=(50.0, 100.0), splits=None,
                  nan_rows=()) -> Path:
    """A dataset file of ``n`` random structures in the real layout (written by the real writer);
    the patterns of ``nan_rows`` are NaN."""
    rng = np.random.default_rng(0)
    splits = splits or (["train", "train", "train", "validation", "test", "test"] * n)[:n]
    records = []
    for i in range(n):
        pot = rng.random((size, size)).astype(np.float32)
        pot = (pot - pot.min()) / (pot.max() - pot.min())
        pattern = rng.random((len(thickness), size, size)).astype(np.float32)
        if i in nan_rows:
            pattern[:] = np.nan
        meta = dict.fromkeys(META_FIELDS)
        meta.update(id=f"s{i}", source="synthetic" if i % 2 else "amcsd", formula=f"X{i}", reduced_formula=f"X{i}",
                    spacegroup_number=221, spacegroup_symbol="P m -3 m", a_angstrom=4.0, n_atoms=1, split=splits[i],
                    n_beams=21, symmetry_ops=1, potential_min=0.0, potential_max=100.0, cif="", seconds=0.0,
                    cpu_seconds=0.0)
        records.append(Record(meta=meta, potential=pot, potential_raw=pot * 100, pattern=pattern))
    write_dataset(path, iter(records), n=n, size=size, thickness_nm=thickness, settings={"test": "fake"}, failed=[],
                  split_table={f"X{i}": splits[i] for i in range(n)}, split_key="reduced_formula")
    return path


def _tiny_model(path: Path, direction: str = "forward", *, size: int = SIZE, nan: bool = False) -> Path:
    """An untrained tiny cGAN checkpoint written by the real Trainer (all weights NaN if asked)."""
    torch.manual_seed(0)
    model = CGAN(TaskConfig(direction=direction, image_size=size), generator=GeneratorConfig(**{
        k: tuple(v) if isinstance(v, list) else v for k, v in TINY["generator"].items()}),
        discriminator=DiscriminatorConfig(**TINY["discriminator"]))
    if nan:
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(float("nan"))
    pairs = PairsDataset(torch.rand(2, 1, size, size), torch.rand(2, 1, size, size), torch.tensor([50.0]),
                         torch.tensor([4.0, 4.0]), torch.tensor([100.0, 100.0]))
    Trainer(model, make_loader(pairs, batch_size=2), TrainConfig(batch_size=2, max_steps=1), checkpoint=path,
            progress=False).save()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    with single_thread():
        out = {
            "data": _fake_dataset(root / "data.h5"),
            "data32": _fake_dataset(root / "data32.h5", size=32),
            "forward": _tiny_model(root / "forward.pt"),
            "inverse": _tiny_model(root / "inverse.pt", "inverse"),
            "nan_forward": _tiny_model(root / "nan_forward.pt", nan=True),
            "nan_inverse": _tiny_model(root / "nan_inverse.pt", "inverse", nan=True),
        }
    out["config"] = root / "tiny.json"
    out["config"].write_text(json.dumps(TINY))
    out["pattern"] = root / "pattern.npy"
    np.save(out["pattern"], np.random.default_rng(1).random((SIZE, SIZE)))
    return out


# -- 1. train never replaces a checkpoint unasked ----------------------------------------------
def test_train_refuses_an_existing_checkpoint_without_overwrite(files, tmp_path):
    ckpt = tmp_path / "model.pt"
    shutil.copy(files["forward"], ckpt)
    before = ckpt.read_bytes()
    # refused before the data are read: the missing data file is not what the message is about
    res = _invoke("train", "forward", "--data", tmp_path / "missing.h5", "--epochs", 1, "-o", ckpt)
    line = _error(res, "-o", str(ckpt), "--overwrite")
    assert "missing.h5" not in line
    res = _invoke("train", "forward", "--data", files["data"], "--epochs", 1, "--config", files["config"], "-o", ckpt)
    _error(res, str(ckpt), "--overwrite")
    assert ckpt.read_bytes() == before
    # the data file itself is never a valid output, even with --overwrite
    data = tmp_path / "data.h5"
    shutil.copy(files["data"], data)
    res = _invoke("train", "forward", "--data", data, "--epochs", 1, "--overwrite", "-o", data)
    _error(res, "-o", str(data), "input")
    assert data.read_bytes() == files["data"].read_bytes()
    # asked for: a new model replaces it
    res = _invoke("train", "forward", "--data", files["data"], "--epochs", 1, "--batch-size", 2, "--config", files["config"],
                  "--overwrite", "-o", ckpt)
    assert res.exit_code == 0, res.output
    assert ckpt.read_bytes() != before and load_checkpoint(ckpt)["step"] == 1


# -- 2. dataset subset / import-png never replace their input or an existing file unasked --------
def test_subset_refuses_its_input_and_an_existing_output(files, tmp_path):
    data = tmp_path / "data.h5"
    shutil.copy(files["data"], data)
    before = data.read_bytes()
    for extra in ([], ["--overwrite"]):
        res = _invoke("dataset", "subset", data, "-o", data, "--split", "train", "-n", 1, *extra)
        _error(res, "-o", str(data), "input")
        assert data.read_bytes() == before
    out = tmp_path / "small.h5"
    out.write_bytes(b"precious")
    res = _invoke("dataset", "subset", data, "-o", out, "--split", "train", "-n", 1)
    _error(res, "-o", str(out), "--overwrite")
    assert out.read_bytes() == b"precious"
    res = _invoke("dataset", "subset", data, "-o", out, "--split", "train", "-n", 1, "--overwrite")
    assert res.exit_code == 0, res.output
    assert read_info(out)["n_structures"] == 1
    with pytest.raises(ValueError, match="exists; pass --overwrite"):
        subset_dataset(data, out, split="train", n=1)


def test_import_png_refuses_an_existing_output(tmp_path):
    from PIL import Image

    root = tmp_path / "png"
    rng = np.random.default_rng(0)
    for ident in ("1001", "1002"):
        (root / ident).mkdir(parents=True)
        for name in ("potential.png", "pattern_0500.png"):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(root / ident / name)
    out = tmp_path / "png.h5"
    out.write_bytes(b"an older dataset")
    res = _invoke("dataset", "import-png", root, "-o", out, "--no-progress")
    _error(res, "-o", str(out), "--overwrite")
    assert out.read_bytes() == b"an older dataset"
    res = _invoke("dataset", "import-png", root, "-o", out, "--no-progress", "--overwrite")
    assert res.exit_code == 0, res.output
    assert read_info(out)["n_structures"] == 2


# -- 3. --device is checked where it enters the library ---------------------------------------
DEVICES = ["nonsense", pytest.param("cuda", marks=pytest.mark.skipif(not NO_GPU, reason="a GPU is present"))]


@pytest.mark.parametrize("device", DEVICES)
def test_bad_device_is_one_line_before_work(files, tmp_path, device):
    runs = {
        "predict": ["predict", EXAMPLE, "--thickness", 50, "--model", files["forward"], "-o", tmp_path / "p.npy"],
        "invert": ["invert", files["pattern"], "--thickness", 50, "--a", 4, "--model", files["inverse"], "-o", tmp_path / "i.npy"],
        "train": ["train", "forward", "--data", files["data"], "--epochs", 1, "-o", tmp_path / "t.pt"],
        "evaluate": ["evaluate", files["forward"], "--data", files["data"], "--report", tmp_path / "rep"],
    }
    for name, args in runs.items():
        _error(_invoke(*args, "--device", device), "--device", repr(device))
    assert sorted(os.listdir(tmp_path)) == []  # nothing written, no report folder
    with pytest.raises(ValueError, match=device):
        load_surrogate(files["forward"], device=device)
    with pytest.raises(ValueError, match=device):
        evaluate(files["forward"], open_dataset(files["data"], "test"), device=device, invariance=0)


# -- 4. evaluate: image sizes, NaN scores, no partial report ------------------------------------
def test_evaluate_model_and_data_of_other_sizes_is_one_line(files, tmp_path):
    res = _invoke("evaluate", files["forward"], "--data", files["data32"], "--report", tmp_path / "rep")
    _error(res, str(files["forward"]), str(files["data32"]), "16×16", "32×32")
    assert not (tmp_path / "rep").exists()


def test_evaluate_with_nan_scores_is_clear_and_writes_no_partial_report(files, tmp_path):
    # a model whose weights are all NaN (loaded by hand: the loader refuses such files, see below)
    model = load_surrogate(files["forward"])
    with torch.no_grad():
        for p in model.generator.parameters():
            p.fill_(float("nan"))
    report = tmp_path / "nan-model"
    with pytest.raises(ValueError, match="every score is NaN.*model predicts NaN") as info:
        evaluate(model, open_dataset(files["data"], "test"), report_dir=report, split="test", invariance=0)
    assert "\n" not in str(info.value)
    assert not report.exists() or not any(report.iterdir())
    # a dataset whose test patterns are all NaN: the CLI says so, and no report is left
    data = _fake_dataset(tmp_path / "nan.h5", nan_rows=(4,))
    res = _invoke("evaluate", files["forward"], "--data", data, "--report", tmp_path / "rep")
    _error(res, str(files["forward"].stem), "NaN", "dataset holds NaN")
    assert not (tmp_path / "rep").exists()
    # some NaN samples: reported explicitly, left out of the statistics
    data = _fake_dataset(tmp_path / "some-nan.h5", n=6, nan_rows=(4,))
    res = _invoke("evaluate", files["forward"], "--data", data, "--report", tmp_path / "rep2")
    assert res.exit_code == 0, res.output
    rep = json.loads((tmp_path / "rep2" / "report.json").read_text())
    assert rep["n_samples"] == 4 and rep["n_nan"] == 2
    assert rep["summary"]["R"]["count"] == 2 and rep["summary"]["R"]["nan"] == 2
    assert "2 scored NaN" in res.output


def test_evaluate_failure_of_a_later_model_leaves_no_report(files, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    res = _invoke("evaluate", files["forward"], bad, "--data", files["data"], "--report", tmp_path / "rep")
    _error(res, str(bad))
    assert not (tmp_path / "rep").exists()


# -- 5. non-finite and hostile checkpoints ------------------------------------------------------
def test_checkpoint_with_nan_or_inf_weights_is_refused_at_load(files, tmp_path):
    res = _invoke("predict", EXAMPLE, "--thickness", 50, "--model", files["nan_forward"], "-o", tmp_path / "p.npy")
    _error(res, str(files["nan_forward"]), "NaN")
    res = _invoke("invert", files["pattern"], "--thickness", 50, "--a", 4, "--model", files["nan_inverse"], "-o", tmp_path / "i.npy")
    _error(res, str(files["nan_inverse"]), "NaN")
    assert not (tmp_path / "p.npy").exists() and not (tmp_path / "i.npy").exists()
    # one infinite value in the EMA weights is enough
    state = torch.load(files["forward"], weights_only=True)
    key = next(k for k, v in state["ema"].items() if v.is_floating_point())
    state["ema"][key].view(-1)[0] = float("inf")
    inf = tmp_path / "inf.pt"
    torch.save(state, inf)
    with pytest.raises(CheckpointError, match="NaN or infinite") as info:
        load_surrogate(inf)
    assert str(inf) in str(info.value) and key in str(info.value) and "\n" not in str(info.value)


class _Hostile:
    """Unpickling this runs a shell command (as a hostile checkpoint would)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _hostile_files(folder: Path, marker: Path) -> dict[str, Path]:
    out = {}
    out["pickle"] = folder / "pickle.pt"
    out["pickle"].write_bytes(pickle.dumps({"format": "lacbed-refine-surrogate", "x": _Hostile(marker)}))
    out["torch-zip-with-code"] = folder / "code.pt"
    torch.save({"format": "lacbed-refine-surrogate", "x": _Hostile(marker)}, out["torch-zip-with-code"])
    out["random"] = folder / "random.pt"
    out["random"].write_bytes(np.random.default_rng(0).bytes(4096))
    out["empty"] = folder / "empty.pt"
    out["empty"].write_bytes(b"")
    out["zip"] = folder / "zip.pt"
    with zipfile.ZipFile(out["zip"], "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    return out


def test_corrupt_or_hostile_checkpoints_are_one_line_without_unsafe_advice(tmp_path):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "models"
    folder.mkdir()
    for kind, path in _hostile_files(folder, marker).items():
        with pytest.raises(CheckpointError) as info:
            load_surrogate(path)
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg, (kind, msg)
        assert "weights_only" not in msg and "trusted source" not in msg, (kind, msg)
        res = _invoke("predict", EXAMPLE, "--thickness", 50, "--model", path, "-o", tmp_path / "p.npy")
        line = _error(res, str(path))
        assert "weights_only" not in line, (kind, line)
    assert not marker.exists()  # nothing in any file was run


# -- 6. arrays shorter than the metadata table ---------------------------------------------------
def test_dataset_arrays_shorter_than_the_metadata_are_one_line_at_open(files, tmp_path):
    short = tmp_path / "short.h5"
    shutil.copy(files["data"], short)
    with h5py.File(short, "r+") as f:
        rows = f["potential"][:3]
        del f["potential"]
        f.create_dataset("potential", data=rows)
    runs = [("dataset", "info", short),
            ("dataset", "subset", short, "-o", tmp_path / "sub.h5", "--split", "train", "-n", 1),
            ("evaluate", files["forward"], "--data", short),
            ("train", "forward", "--data", short, "--epochs", 1, "-o", tmp_path / "t.pt")]
    for args in runs:
        _error(_invoke(*args), str(short), "/potential", "3", "5")
    assert sorted(os.listdir(tmp_path)) == ["short.h5"]
    for reader in (read_info, LacbedDataset):
        with pytest.raises(ValueError, match="holds 3 structures but the metadata table holds 5"):
            reader(short)


# -- 7. HDF5 open errors name the file ---------------------------------------------------------
def test_unreadable_dataset_files_are_named(files, tmp_path):
    bad = {"not-hdf5": tmp_path / "text.h5", "truncated": tmp_path / "cut.h5", "missing": tmp_path / "missing.h5"}
    bad["not-hdf5"].write_text("hello, not HDF5")
    whole = files["data"].read_bytes()
    bad["truncated"].write_bytes(whole[: len(whole) // 2])
    for kind, path in bad.items():
        runs = [("dataset", "info", path),
                ("dataset", "subset", path, "-o", tmp_path / "sub.h5", "--split", "train"),
                ("evaluate", files["forward"], "--data", path),
                ("train", "forward", "--data", path, "--epochs", 1, "-o", tmp_path / "t.pt")]
        for args in runs:
            _error(_invoke(*args), str(path))
        with pytest.raises(ValueError, match=str(path)):
            read_info(path)
    with pytest.raises(FileNotFoundError):  # a missing file is also what callers catching that expect
        read_info(bad["missing"])
    assert not (tmp_path / "sub.h5").exists() and not (tmp_path / "t.pt").exists()


# -- 8. subset -n ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [-2, 0])
def test_subset_count_must_be_at_least_one(files, tmp_path, n):
    out = tmp_path / "sub.h5"
    _error(_invoke("dataset", "subset", files["data"], "-o", out, "--split", "train", "-n", n), "-n", str(n))
    assert not out.exists()
    with pytest.raises(ValueError, match=f"-n {n}"):
        subset_dataset(files["data"], out, split="train", n=n)


# -- 9. dataset build checks its options before any work ---------------------------------------
@pytest.mark.parametrize("args,needles", [
    (["--engine", "nonsense"], ["--engine", "nonsense", "not installed"]),
    (["--workers", "0"], ["--workers", "0"]),
    (["--workers", "-1"], ["--workers", "-1"]),
    (["--synthetic", "-3"], ["--synthetic", "-3"]),
    (["--size", "0"], ["--size", "0"]),
    (["--size", "1"], ["--size", "1"]),
    (["--size", "100000"], ["--size", "100000"]),
    (["--beams", "0"], ["--beams", "0"]),
    (["--thickness", "nan"], ["--thickness", "nan"]),
    (["--thickness", "inf"], ["--thickness", "inf"]),
    (["--thickness=-5"], ["--thickness", "-5"]),
])
def test_build_options_are_checked_before_work(tmp_path, args, needles):
    out = tmp_path / "built.h5"
    defaults = {"--synthetic": "1", "--size": "16", "--beams": "21"}
    given = {a.split("=")[0] for a in args}
    base = [x for k, v in defaults.items() if k not in given for x in (k, v)]
    _error(_invoke("dataset", "build", *base, *args, "-o", out, "--no-progress"), *needles)
    assert sorted(os.listdir(tmp_path)) == []  # no work folder, no output


def test_build_caps_workers_at_the_cpus_with_a_warning(tmp_path, monkeypatch, caplog):
    from lacbed_refine.dataset import _build

    seen = {}

    class Stop(Exception):
        pass

    def compute_all(pending, spec, store, *, parallel, **kw):  # stands in for the pool: records its size
        seen["workers"] = parallel.workers
        seen["kind"] = parallel.kind
        raise Stop

    monkeypatch.setattr(_build, "_compute_all", compute_all)
    with caplog.at_level(logging.WARNING), pytest.raises(Stop):
        _build.build_dataset(tmp_path / "b.h5", synthetic=1, spec=_build.BuildSpec(size=16, n_beams=21), workers=1000,
                             progress=False)
    assert seen["workers"] == available_cpus()
    assert seen["kind"] == ("processes" if available_cpus() > 1 else "serial")
    assert any("--workers 1000" in r.getMessage() and "capped" in r.getMessage() for r in caplog.records)


def test_build_where_every_structure_fails_is_one_line_and_leaves_nothing(tmp_path):
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    (cifs / "broken.cif").write_text("data_broken\n_cell_length_a 5.0\nloop_\n_atom_site_label\nthis is not ' \n")
    out = tmp_path / "out" / "built.h5"
    res = _invoke("dataset", "build", "--cifs", cifs, "--size", 16, "--beams", 21, "--workers", 1, "-o", out, "--no-progress")
    _error(res, str(out), "none of the 1 structures", "broken")
    assert not out.exists() and os.listdir(out.parent) == []


# -- 10. train numbers ----------------------------------------------------------------------------
@pytest.mark.parametrize("option,value", [("--epochs", "0"), ("--epochs", "-1"), ("--minutes", "-1"), ("--lr", "0"),
                                          ("--lr", "-1"), ("--lr", "nan"), ("--threads", "0"), ("--batch-size", "0")])
def test_train_numbers_are_checked_before_the_data(tmp_path, option, value):
    # the data file does not exist: the option must be refused before it is looked at
    args = ["train", "forward", "--data", tmp_path / "missing.h5", "-o", tmp_path / "t.pt", option, value]
    if option != "--epochs":
        args += ["--epochs", 1]
    line = _error(_invoke(*args), option, value)
    assert "missing.h5" not in line
    assert not (tmp_path / "t.pt").exists()
