"""Surrogate commands through click's CliRunner on the real library: tiny models at 32×32 pixels,
patterns and datasets simulated by the real engine."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
from click.testing import CliRunner

from lacbed_refine.runtime import single_thread
from lacbed_refine.dataset import read_info
from lacbed_refine.surrogate import CGAN, DiscriminatorConfig, GeneratorConfig, TaskConfig, TrainConfig, export_weights, load_checkpoint, pairs_from_crystals, score_sample, train
from lacbed_refine.surrogate import _predict
from lacbed_refine_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "SrTiO3.cif"
CIFS = [EXAMPLE] + [ROOT / "tests" / "data" / "felix" / m / "felix.cif" for m in ("GaAs", "MgO", "MgAl2O4")]
SIZE = 32
TINY = {"generator": {"channels": [8, 16, 16], "mixer_blocks": 1, "res_blocks": 1, "token_hidden": 8,
                      "enhancer_channels": 8, "cond_hidden": 8},
        "discriminator": {"ndf": 8, "n_layers": 2}, "vae": {"channels": [4, 8]}}


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny forward and inverse cGANs trained for 10 steps on 4 engine-simulated structures."""
    folder = tmp_path_factory.mktemp("cli-models")
    with single_thread():
        pairs = pairs_from_crystals(CIFS, thickness_nm=(50.0, 100.0), size=SIZE, n_beams=21)
        out = {}
        for direction in ("forward", "inverse"):
            torch.manual_seed(0)
            model = CGAN(TaskConfig(direction=direction, image_size=SIZE), generator=GeneratorConfig(**TINY["generator"]),
                         discriminator=DiscriminatorConfig(**TINY["discriminator"]))
            out[direction] = folder / f"{direction}.pt"
            train(model, pairs, TrainConfig(batch_size=2, max_steps=10, lr=1e-3), checkpoint=out[direction], progress=False)
    return out


def test_predict_from_cif_and_from_potential_file(models, tmp_path):
    out = tmp_path / "pred.tif"
    res = _invoke("predict", EXAMPLE, "--thickness", "50,100", "--model", models["forward"], "-o", out)
    assert res.exit_code == 0, res.output
    pages = tifffile.imread(out)
    assert pages.shape == (2, SIZE, SIZE) and pages.dtype == np.float32
    assert np.isfinite(pages).all() and 0 <= pages.min() and pages.max() <= 1
    with tifffile.TiffFile(out) as tif:
        meta = json.loads(tif.pages[0].description)
    assert meta["thickness_nm"] == [50.0, 100.0] and meta["engine"] == "surrogate" and meta["a_angstrom"] == pytest.approx(3.905)
    assert out.with_suffix(".png").stat().st_size > 1000
    # the same structure given as a `lacbed-refine potential` file (a from its metadata)
    rho = tmp_path / "rho.tif"
    assert _invoke("potential", EXAMPLE, "-o", rho, "--size", SIZE).exit_code == 0
    res = _invoke("predict", rho, "--thickness", "50,100", "--model", models["forward"], "-o", tmp_path / "pred2.npy")
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(np.load(tmp_path / "pred2.npy")[:, 0], pages, atol=2e-5)
    res = _invoke("predict", EXAMPLE, "--thickness", "50", "--model", models["forward"], "--symmetrise", "-o", tmp_path / "sym.npy")
    assert res.exit_code == 0, res.output
    sym = np.load(tmp_path / "sym.npy")[0, 0]
    np.testing.assert_allclose(np.rot90(sym), sym, atol=1e-5)  # SrTiO3's projection is 4mm


def test_invert_a_simulated_pattern(models, tmp_path):
    pattern = tmp_path / "sto.tif"
    res = _invoke("simulate", EXAMPLE, "-o", pattern, "--size", SIZE, "--beams", 21, "--thickness", "50,100")
    assert res.exit_code == 0, res.output
    out = tmp_path / "rho.tif"
    res = _invoke("invert", pattern, "--model", models["inverse"], "-o", out)  # thickness and a from the file
    assert res.exit_code == 0, res.output
    pages = tifffile.imread(out)
    assert pages.shape == (2, SIZE, SIZE) and pages.min() == 0 and pages.max() == 1
    with tifffile.TiffFile(out) as tif:
        meta = json.loads(tif.pages[0].description)
    assert meta["thickness_nm"] == [50.0, 100.0] and len(meta["potential_scale_V"]) == 2
    # a plain image has no metadata: thickness and a must be given
    plain = tmp_path / "plain.npy"
    np.save(plain, tifffile.imread(pattern)[0])
    res = _invoke("invert", plain, "--model", models["inverse"], "-o", tmp_path / "r.npy")
    assert res.exit_code == 2 and "--thickness" in res.output
    res = _invoke("invert", plain, "--model", models["inverse"], "--thickness", "50", "--a", "3.905", "-o", tmp_path / "r.npy")
    assert res.exit_code == 0, res.output
    assert np.load(tmp_path / "r.npy").shape == (1, 1, SIZE, SIZE)


def test_model_errors_are_one_line(models, tmp_path, monkeypatch):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    res = _invoke("predict", EXAMPLE, "--thickness", "50", "--model", bad, "-o", tmp_path / "x.tif")
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "bad.pt" in line and "corrupt" in line
    res = _invoke("invert", tmp_path / "x.tif", "--model", models["inverse"], "-o", tmp_path / "y.tif")
    assert res.exit_code == 2 and "x.tif" in res.output  # missing input named
    pattern = tmp_path / "p.npy"
    np.save(pattern, np.random.default_rng(0).random((SIZE, SIZE)))
    res = _invoke("invert", pattern, "--thickness", "50", "--a", "4", "--model", models["forward"], "-o", tmp_path / "y.tif")
    assert res.exit_code == 2 and "is a forward surrogate; invert needs an inverse one" in res.output
    monkeypatch.setattr(_predict, "WEIGHTS_DIR", tmp_path / "none")
    res = _invoke("predict", EXAMPLE, "--thickness", "50", "-o", tmp_path / "x.tif")
    assert res.exit_code == 2 and "lacbed-refine train forward" in res.output and "\n" not in res.output.strip()


def test_train_resume_and_evaluate_on_a_dataset_file(tmp_path):
    dataset = pytest.importorskip("lacbed_refine.dataset")
    cifs = tmp_path / "cifs"
    cifs.mkdir()
    for i, c in enumerate(CIFS):
        shutil.copy(c, cifs / f"{i}-{c.parent.name}.cif")
    data = tmp_path / "tiny.h5"
    dataset.build_dataset(data, cifs=[cifs], synthetic=4, spec=dataset.BuildSpec(size=SIZE, n_beams=21, thickness_nm=(50.0, 100.0)),
                          progress=False, split_fractions=(0.5, 0.25, 0.25))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**TINY, "train": {"log_every": 1}}))
    model = tmp_path / "fwd.pt"
    common = ["--data", data, "--batch-size", 2, "--config", config]
    res = _invoke("train", "forward", *common, "--epochs", 1, "--seed", 3, "-o", model)
    assert res.exit_code == 0, res.output
    first = load_checkpoint(model)
    assert first["step"] >= 1 and first["metadata"]["data"]["sha256"] and first["config"]["train"]["seed"] == 3
    res = _invoke("train", "forward", "--data", data, "--epochs", 2, "--resume", "-o", model)
    assert res.exit_code == 0, res.output
    second = load_checkpoint(model)
    assert second["step"] == 2 * first["step"] and second["config"]["train"]["seed"] == 3
    assert (tmp_path / "fwd.curves.png").stat().st_size > 0  # learning curves of both runs together
    vae = tmp_path / "vae.pt"
    res = _invoke("train", "forward", *common, "--arch", "vae", "--epochs", 1, "-o", vae)
    assert res.exit_code == 0, res.output
    report = tmp_path / "report"
    res = _invoke("evaluate", model, vae, "--data", data, "--split", "test", "--report", report)
    assert res.exit_code == 0, res.output
    assert "fwd: " in res.output and "vae: " in res.output
    table = (report / "comparison.md").read_text()
    assert "| fwd | cgan |" in table and "| vae | vae |" in table
    for name in ("fwd", "vae"):
        rep = json.loads((report / name / "report.json").read_text())
        assert rep["split"] == "test" and rep["n_samples"] == 2 * rep["n_structures"]
        assert (report / name / "examples.png").is_file() and (report / name / "learning_curves.png").is_file()
    # --source scores only the split's real (or synthetic) structures: they add up to the whole split
    with h5py.File(data, "r") as f:
        split = f["meta/split"].asstr()[()]
        real = (split == "test") & (f["meta/source"].asstr()[()] != "synthetic")
    counts = {}
    for source in ("real", "synthetic"):
        res = _invoke("evaluate", model, "--data", data, "--source", source, "--report", tmp_path / source)
        if res.exit_code != 0:  # a source with no test structures is a clear error, not an empty report
            assert "split is empty of" in res.output and "\n" not in res.output.strip()
            counts[source] = 0
            continue
        rep = json.loads((tmp_path / source / "report.json").read_text())
        assert rep["source"] == source
        counts[source] = rep["n_structures"]
    total = json.loads((report / "fwd" / "report.json").read_text())["n_structures"]
    assert counts == {"real": int(real.sum()), "synthetic": int((split == "test").sum() - real.sum())}
    assert counts["real"] + counts["synthetic"] == total
    # a fixed sample of the test split, and weights exported with their score on it
    sample = tmp_path / "sample.h5"
    res = _invoke("dataset", "subset", data, "-o", sample, "--split", "test", "-n", 1)
    assert res.exit_code == 0, res.output
    card = export_weights(model, tmp_path / "shipped" / "forward.pt", sample=sample)
    assert card["sample"]["n_samples"] == 2 and card["sample"]["content_hash"] == read_info(sample)["content_hash"]
    assert score_sample(tmp_path / "shipped" / "forward.pt", sample)["mean"] == pytest.approx(card["sample"]["mean"], abs=1e-6)
    for source, count in counts.items():  # subset --source selects as evaluate --source does
        out = tmp_path / f"{source}.h5"
        res = _invoke("dataset", "subset", data, "-o", out, "--split", "test", "-n", 10_000, "--source", source)
        if count == 0:
            assert res.exit_code == 2 and "no structures" in res.output
            continue
        assert res.exit_code == 0, res.output
        with h5py.File(out, "r") as f:
            kinds = f["meta/source"].asstr()[()]
        assert len(kinds) == count and all((k == "synthetic") == (source == "synthetic") for k in kinds)
    res = _invoke("train", "inverse", "--data", data, "--epochs", 1, "--resume", "-o", model)
    assert res.exit_code == 2 and "cannot resume" in res.output
    res = _invoke("train", "forward", "--data", data, "-o", tmp_path / "never.pt")
    assert res.exit_code == 2 and "--epochs" in res.output


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_shipped_weights_reproduce_their_card(direction):
    """The weights shipped in the package score on their fixed sample (tests/data) what their card
    says. Skips while no weights are shipped (the surrogates are trained on the issue-3 dataset)."""
    path = _predict.WEIGHTS_DIR / f"{direction}.pt"
    if not path.is_file():
        pytest.skip(f"no shipped {direction} weights yet ({path})")
    card = _predict.read_card(path)
    sample = Path(__file__).parent / "data" / card["sample"]["file"]
    assert sample.is_file(), f"the card's sample {sample} is missing"
    assert read_info(sample)["content_hash"] == card["sample"]["content_hash"]
    assert score_sample(path, sample)["mean"] == pytest.approx(card["sample"]["mean"], abs=1e-4)
