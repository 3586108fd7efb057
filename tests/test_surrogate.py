"""Surrogates: tiny models trained for a few steps on a tiny dataset simulated by the real engine.

Everything runs at 32×32 pixels with 21 beams and networks of a few ten thousand parameters, on one
torch thread, so the file takes seconds; the accuracy of real models is measured by
``lacbed-refine evaluate`` on the real test split, not here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lacbed_refine import metrics
from lacbed_refine.io.cif import read_cif
from lacbed_refine.structure.parameters import free_parameters
from lacbed_refine.runtime import single_thread
from lacbed_refine.surrogate import CGAN, VAE, CheckpointError, DiscriminatorConfig, ForwardSurrogate, GeneratorConfig, InverseSurrogate, TaskConfig, TrainConfig, Trainer, VAEConfig, compare_reports, config_from_dict, evaluate, export_weights, load_checkpoint, load_pretrained, load_surrogate, make_loader, pairs_from_crystals, read_card, train
from lacbed_refine.surrogate import _predict
from lacbed_refine.surrogate._transforms import align_to, canonical_shift, dihedral_apply, fourier_shift, roll_batch

ROOT = Path(__file__).resolve().parents[1]
CIFS = [ROOT / "examples" / "SrTiO3.cif"] + [ROOT / "tests" / "data" / "felix" / m / "felix.cif" for m in ("GaAs", "MgO", "MgAl2O4")]
SIZE = 32
# the forward models carry the two-beam prior of the training recipe (the inverse ones ignore it)
TINY_G = GeneratorConfig(channels=(8, 16, 16), mixer_blocks=1, res_blocks=1, token_hidden=8, enhancer_channels=8, cond_hidden=8,
                         physics_prior=6)
TINY_D = DiscriminatorConfig(ndf=8, n_layers=2)
TINY_V = VAEConfig(channels=(4, 8))


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="session")
def pairs():
    """4 real structures, 2 thicknesses, 32×32, simulated by the Bloch engine (~0.5 s)."""
    with single_thread():
        return pairs_from_crystals(CIFS, thickness_nm=(50.0, 100.0), size=SIZE, n_beams=21)


def _model(direction: str, arch: str = "cgan", seed: int = 0):
    torch.manual_seed(seed)
    task = TaskConfig(direction=direction, image_size=SIZE)
    if arch == "cgan":
        return CGAN(task, generator=TINY_G, discriminator=TINY_D)
    return VAE(task, vae=TINY_V)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, pairs):
    """Tiny forward and inverse cGAN checkpoints (15 steps each)."""
    folder = tmp_path_factory.mktemp("models")
    out = {}
    with single_thread():
        for direction in ("forward", "inverse"):
            path = folder / f"{direction}.pt"
            train(_model(direction), pairs, TrainConfig(batch_size=2, max_steps=15, lr=1e-3), checkpoint=path, progress=False)
            out[direction] = path
    return out


@pytest.mark.parametrize("direction,arch", [("forward", "cgan"), ("inverse", "cgan"), ("forward", "vae"), ("inverse", "vae")])
def test_training_reduces_the_loss(pairs, direction, arch):
    model = _model(direction, arch)
    cfg = TrainConfig(batch_size=2, max_steps=30, lr=2e-3, log_every=1, ema_decay=0)
    trainer = Trainer(model, make_loader(pairs, batch_size=2, seed=0), cfg, progress=False)
    trainer.fit()
    key = "1-r" if arch == "cgan" else "Z"  # inverse: after alignment of the target (origin-insensitive)
    hist = [h[key] for h in trainer.history]
    assert len(hist) == 30
    assert np.mean(hist[-6:]) < 0.8 * np.mean(hist[:6]), hist


def test_checkpoint_round_trip_and_deterministic_resume(pairs, tmp_path):
    cfg = TrainConfig(batch_size=2, max_steps=6, lr=1e-3)
    straight = tmp_path / "straight.pt"
    train(_model("forward"), pairs, cfg, checkpoint=straight, progress=False)
    split = tmp_path / "split.pt"
    train(_model("forward"), pairs, TrainConfig(batch_size=2, max_steps=3, lr=1e-3), checkpoint=split, progress=False)
    summary = train(_model("forward", seed=99), pairs, cfg, checkpoint=split, resume=True, progress=False)
    assert summary["step"] == 6
    a, b = load_checkpoint(straight), load_checkpoint(split)
    assert a["step"] == b["step"] == 6
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            torch.testing.assert_close(a[key][k], b[key][k], rtol=0, atol=0, msg=f"{key}.{k} differs after resume")
    assert a["optim"]["g"]["state"][0]["exp_avg"].equal(b["optim"]["g"]["state"][0]["exp_avg"])
    assert a["config"]["generator"]["channels"] == tuple(TINY_G.channels)
    # the loaded surrogate is the EMA generator
    s = load_surrogate(straight)
    model = _model("forward")
    model.generator.load_state_dict(a["ema"])
    model.eval()
    batch = make_loader(pairs, batch_size=4, shuffle=False).__iter__().__next__()
    p = model.prepare(batch, augment=False)
    with torch.no_grad():
        direct = metrics.minmax(model.generator(p["x"], p["cond"])["image"][:, 0])
        via = s(batch["potential"][:, 0], [50.0, 100.0], batch["a_angstrom"], potential_scale=batch["potential_scale"])
    torch.testing.assert_close(via["normalised"].reshape(-1, SIZE, SIZE), direct)


def test_resume_refuses_other_settings(pairs, tmp_path):
    path = tmp_path / "m.pt"
    train(_model("forward"), pairs, TrainConfig(batch_size=2, max_steps=1), checkpoint=path, progress=False)
    other = CGAN(TaskConfig(image_size=SIZE), generator=GeneratorConfig(channels=(8, 16, 32), mixer_blocks=1, res_blocks=0,
                                                                       token_hidden=8, enhancer_channels=8, cond_hidden=8),
                 discriminator=TINY_D)
    trainer = Trainer(other, make_loader(pairs, batch_size=2), TrainConfig(batch_size=2, max_steps=2), checkpoint=path, progress=False)
    with pytest.raises(CheckpointError, match="generator.channels"):
        trainer.resume()


@pytest.mark.parametrize("content", [b"not a checkpoint at all", None])
def test_corrupt_checkpoint_is_one_clear_line(trained, tmp_path, content):
    bad = tmp_path / "bad.pt"
    if content is None:  # a real checkpoint cut short
        bad.write_bytes(trained["forward"].read_bytes()[:5000])
    else:
        bad.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        load_surrogate(bad)
    msg = str(info.value)
    assert str(bad) in msg and "\n" not in msg
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not a lacbed-refine surrogate checkpoint"):
        load_checkpoint(plain)


def test_missing_shipped_weights_say_how_to_train(monkeypatch, tmp_path):
    monkeypatch.setattr(_predict, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="lacbed-refine train inverse --data"):
        load_pretrained("inverse")


def test_export_weights_card_and_offline_load(trained, pairs, tmp_path, monkeypatch):
    report = evaluate(trained["forward"], pairs, report_dir=tmp_path / "rep", split="all", invariance=0)
    out = tmp_path / "weights" / "forward.pt"
    card = export_weights(trained["forward"], out, report=tmp_path / "rep" / "report.json")
    assert read_card(out) == json.loads(json.dumps(card)) and card["size_bytes"] == out.stat().st_size
    assert card["kind"] == "forward" and card["arch"] == "cgan" and card["training"]["steps"] == 15
    assert card["parameters"] == load_surrogate(trained["forward"]).n_parameters()
    assert card["metrics"]["summary"]["R"]["mean"] == pytest.approx(report["summary"]["R"]["mean"])
    assert out.stat().st_size < trained["forward"].stat().st_size  # no discriminator, no optimizer
    monkeypatch.setattr(_predict, "WEIGHTS_DIR", out.parent)
    shipped, full = load_pretrained("forward"), load_surrogate(trained["forward"])
    rho = pairs[0]["potential"][0]
    torch.testing.assert_close(shipped(rho, [50.0], 3.905, potential_scale=260.0)["intensity"],
                               full(rho, [50.0], 3.905, potential_scale=260.0)["intensity"])


def test_evaluation_report_json_and_figures(trained, pairs, tmp_path):
    reports = {}
    for direction in ("forward", "inverse"):
        folder = tmp_path / direction
        rep = reports[direction] = evaluate(trained[direction], pairs, report_dir=folder, split="all", invariance=2)
        on_disk = json.loads((folder / "report.json").read_text())
        assert on_disk["n_samples"] == rep["n_samples"] == 8
        assert set(on_disk["per_thickness"]) == {"50", "100"}
        assert set(on_disk["per_space_group"]) == {"P m -3 m", "F -4 3 m", "F m -3 m", "F d -3 m"}
        s = on_disk["summary"]
        for field in ("R", "r", "lmse", "R_shift", "lmse_shift"):
            assert {"mean", "median", "q25", "q75"} <= set(s[field])
        assert s["R"]["mean"] == pytest.approx(0.5 + 0.5 * s["r"]["mean"])
        assert s["R_shift"]["mean"] >= s["R"]["mean"] - 1e-6  # best over shifts includes no shift
        if direction == "inverse":
            assert s["R_dihedral"]["mean"] >= s["R_shift"]["mean"] - 1e-6
        else:
            assert set(on_disk["invariance"]) >= {"R_integer_shift", "R_subpixel_shift", "R_dihedral"}
        for png in ("examples.png", "per_space_group.png", "thickness.png", "per_thickness.png", "mean_error_map.png"):
            assert (folder / png).read_bytes()[:4] == b"\x89PNG"
        assert np.load(folder / "mean_error_map.npy").shape == (SIZE, SIZE)
    table = compare_reports(reports).splitlines()
    assert table[0].startswith("| model | arch | params | R mean") and "R mean @100 nm" in table[0]
    assert table[2].startswith("| forward | cgan |") and table[3].startswith("| inverse | cgan |")


def test_checkpoints_are_written_during_training(pairs, tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(Trainer, "save", lambda self, path=None: saved.append(self.step))
    cfg = TrainConfig(batch_size=2, max_steps=3, checkpoint_minutes=1e-9)
    Trainer(_model("forward"), make_loader(pairs, batch_size=2), cfg, checkpoint=tmp_path / "c.pt", progress=False).fit()
    assert saved == [1, 2, 3, 3]  # every step (the interval is tiny) and at the end


def test_forward_surrogate_is_differentiable_in_theta_and_thickness(trained):
    fwd = load_surrogate(trained["forward"])
    assert isinstance(fwd, ForwardSurrogate)
    crystal = read_cif(CIFS[3])  # spinel: O on 32e has one free direction
    params = free_parameters(crystal)
    theta = params.initial().requires_grad_(True)
    thickness = torch.tensor([60.0, 120.0], requires_grad=True)
    out = fwd.from_theta(params, theta, thickness)
    assert out["intensity"].shape == (2, SIZE, SIZE)
    assert torch.all(out["hi"] <= 1) and torch.all(out["lo"] >= 0)
    (out["intensity"] * torch.linspace(0, 1, SIZE)).sum().backward()
    assert torch.isfinite(theta.grad).all() and theta.grad.abs().sum() > 0
    assert torch.isfinite(thickness.grad).all() and thickness.grad.abs().sum() > 0
    inv = load_surrogate(trained["inverse"])
    assert isinstance(inv, InverseSurrogate)
    res = inv(out["intensity"].detach(), thickness.detach(), crystal.a)
    assert res["normalised"].shape == (2, SIZE, SIZE) and torch.all(res["potential_scale"] > 0)


def test_canonicalised_forward_model_is_exactly_shift_invariant():
    torch.manual_seed(1)
    model = CGAN(TaskConfig(image_size=SIZE), generator=TINY_G, discriminator=TINY_D)
    fwd = ForwardSurrogate(model.generator, model.task, arch="cgan")
    rho = fourier_shift(torch.rand(1, 1, SIZE, SIZE), torch.tensor([[0.3, 0.7]]))[0, 0] * 100  # unique maximum
    with torch.no_grad():
        base = fwd(rho, [80.0], 5.0)["normalised"]
        for shift in ((3, 5), (-7, 11), (16, 16)):
            moved = fwd(torch.roll(rho, shift, (0, 1)), [80.0], 5.0)["normalised"]
            assert torch.equal(base, moved)


def test_symmetrised_prediction_has_the_projection_symmetry(trained):
    fwd = load_surrogate(trained["forward"])
    crystal = read_cif(CIFS[0])  # SrTiO3, Pm-3m: the [001] projection is 4mm, one Sr per cell
    with torch.no_grad():
        plain = fwd.from_crystal(crystal, [100.0])["normalised"][0]
        sym = fwd.from_crystal(crystal, [100.0], symmetrise=True)["normalised"][0]
    for image in metrics.dihedral(sym):
        torch.testing.assert_close(image, sym, rtol=0, atol=1e-5)
    assert not torch.allclose(plain, torch.rot90(plain, 1), atol=1e-3)  # the tiny net alone is not
    report = evaluate(fwd, _pairs_of(CIFS[:1]), invariance=1, symmetrise=True)
    assert report["symmetrised"] and report["invariance"]["R_dihedral"]["min"] > 0.99999


def _pairs_of(cifs):
    with single_thread():
        return pairs_from_crystals(cifs, thickness_nm=(50.0,), size=SIZE, n_beams=21)


def test_exact_invariance_transforms():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 16, 16, generator=g)
    shifts = torch.tensor([[1, 2], [0, -3], [5, 7]])
    rolled = roll_batch(x, shifts)
    for b in range(3):
        assert torch.equal(rolled[b], torch.roll(x[b], tuple(shifts[b].tolist()), (-2, -1)))
    torch.testing.assert_close(fourier_shift(x.double(), shifts.double()), rolled.double())
    ops = torch.tensor([1, 5, 7])
    turned = dihedral_apply(x, ops)
    d = metrics.dihedral(x)
    for b in range(3):
        assert torch.equal(turned[b], d[ops[b], b])
    assert torch.equal(dihedral_apply(turned, ops, inverse=True), x)
    # the inverse loss's alignment undoes any shift and square operation of the target
    assert torch.equal(align_to(dihedral_apply(rolled, ops), x, dihedral=True), x)
    assert torch.equal(align_to(rolled, x), x)
    centred = roll_batch(x, canonical_shift(x))
    assert torch.all(centred.flatten(1).argmax(1) == (16 // 2) * 16 + 16 // 2)


def test_default_architectures_fit_the_budget():
    for direction in ("forward", "inverse"):
        model = CGAN(TaskConfig(direction=direction))
        n = sum(p.numel() for p in model.generator.parameters())
        assert 0.5e6 < n < 3e6, n
        with torch.no_grad():
            out = model.generator.eval()(torch.rand(1, 1, 128, 128), torch.zeros(1, len(model.task.condition_names)))
        assert out["image"].shape == (1, 1, 128, 128) and out["coarse"].shape == (1, 1, 64, 64)
    vae = VAE(TaskConfig())
    assert sum(p.numel() for p in vae.generator.parameters()) < 3e6


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="direction must be one of"):
        TaskConfig(direction="sideways")
    with pytest.raises(ValueError, match="image_size must be a multiple of 16"):
        TaskConfig(image_size=100)
    with pytest.raises(ValueError, match="epochs, minutes or max_steps"):
        TrainConfig()
    with pytest.raises(ValueError, match="unknown generator setting"):
        config_from_dict("generator", {"chanels": [1, 2, 3]})
    assert config_from_dict("generator", {"channels": [8, 16, 32]}).channels == (8, 16, 32)


def test_in_memory_split_serves_the_same_items_and_respects_its_limit(pairs):
    from lacbed_refine.surrogate._data import in_memory

    cached = in_memory(pairs)
    assert cached is not pairs and len(cached) == len(pairs)
    for i in range(len(pairs)):
        for key, value in pairs[i].items():
            got = cached[i][key]
            assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value
    assert in_memory(pairs, limit_bytes=1000) is pairs  # too big: read lazily


def test_default_generator_backpropagates_a_single_pattern():
    """The refinement's surrogate search differentiates one potential at one thickness (batch 1);
    the output basis once summed in place into a tensor backward still needed."""
    from lacbed_refine.surrogate._networks import CoarseToFineGenerator

    cfg = GeneratorConfig(channels=(8, 16, 16), token_hidden=8, enhancer_channels=8, cond_hidden=8)
    assert cfg.output_basis > 0
    g = CoarseToFineGenerator(cfg, image_size=32, n_cond=3, input_is_pattern=False, n_scale=2)
    x = torch.rand(1, 1, 32, 32, requires_grad=True)
    g(x, torch.zeros(1, 3))["image"].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
