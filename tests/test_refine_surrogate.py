"""The surrogate stages of ``fit``: the seed and the search recover a known structure when the
generator they are given is exact (the Bloch engine itself / the true potential), and with real,
poorly trained generators the Bloch guard never lets them make the fit worse."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lacbed_refine.engine.bloch import simulate_lacbed
from lacbed_refine.io.cif import read_cif
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.structure.parameters import free_parameters
from lacbed_refine.physics.potential import normalise, projected_potential
from lacbed_refine.refine.config import FitConfig
from lacbed_refine.refine.objective import _SCALE
from lacbed_refine.refine.stages import refine
from lacbed_refine.refine.surrogate_search import seed_from_inverse, surrogate_half_width, surrogate_search
from lacbed_refine.runtime import single_thread
from lacbed_refine.surrogate import CGAN, DiscriminatorConfig, GeneratorConfig, TaskConfig, TrainConfig, pairs_from_crystals, train
from lacbed_refine_cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
SPINEL = ROOT / "examples" / "spinel"
N = 32


@pytest.fixture(autouse=True)
def _one_thread():
    with single_thread():
        yield


def _spinel_problem(shift_angstrom: float = 0.06):
    truth = read_cif(SPINEL / "MgAl2O4_true.cif")
    params = free_parameters(truth, refine=("xyz",))
    theta = params.initial()
    k = list(params.names).index("O1.dx0")
    theta[k] = shift_angstrom
    x0 = np.concatenate([theta.numpy(), [100.0]])
    scale = np.array([_SCALE[kd] for kd in params.kinds] + [_SCALE["thickness"]])
    lo = np.concatenate([params.lower, [50.0]])
    hi = np.concatenate([params.upper, [150.0]])
    bounds = list(zip((lo - x0) / scale, (hi - x0) / scale))
    return truth, params, x0, scale, bounds, k


class _BlochAsSurrogate:
    """The Bloch engine behind the forward surrogate's interface: an exact 'surrogate'."""

    image_size = N

    def __init__(self, a):
        self.settings = SimulationSettings(size=N, half_width=surrogate_half_width(a), thicknesses=(1000.0,), n_beams=21)

    def from_theta(self, params, theta, thickness_nm):
        stack, _ = simulate_lacbed(params.atoms(theta), params.crystal.a, self.settings, centring="F",
                                   thickness=torch.atleast_1d(thickness_nm).double() * 10.0, dtype=torch.float64)
        return {"normalised": stack[:, 0]}


def test_search_with_an_exact_forward_model_recovers_coordinates_and_thickness():
    truth, params, x0, scale, bounds, k = _spinel_problem()
    exact = _BlochAsSurrogate(truth.a)
    with torch.no_grad():
        measured = exact.from_theta(params, params.initial(), torch.tensor([112.0]))["normalised"][0].numpy()
    x, f, note = surrogate_search(exact, params, x0, scale, bounds, measured, None, refine_thickness=True,
                                  blur=lambda img: img, restarts=2)
    assert abs(x[k]) < 0.005, x[k]  # O displacement back to 0 Å
    assert abs(x[-1] - 112.0) < 1.0
    assert f < 1e-5 and "best of 2 starts" in note


class _TruePotentialRotated:
    """An 'inverse generator' returning the true potential moved to another origin and rotated —
    what a perfect generator may legitimately produce."""

    image_size = 64

    def __init__(self, truth):
        rho = projected_potential(truth.atoms(), truth.a, centring="F", size=self.image_size)
        self.out = torch.rot90(torch.roll(normalise(rho)[0], (16, 5), (0, 1)), 1).float()

    def __call__(self, pattern, thickness_nm, a_angstrom):
        return {"normalised": self.out}


def test_seed_aligns_the_generated_potential_and_recovers_coordinates():
    truth, params, x0, scale, bounds, k = _spinel_problem()
    x, f, note = seed_from_inverse(_TruePotentialRotated(truth), params, x0, scale, bounds, np.zeros((64, 64)))
    assert abs(x[k]) < 0.005, x[k]
    assert x[-1] == x0[-1]  # the seed does not touch the thickness
    assert f < 1e-3, note


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """Tiny forward and inverse cGANs (10 steps on 2 spinel-family structures): real generators,
    far from accurate."""
    folder = tmp_path_factory.mktemp("fit-models")
    cifs = [SPINEL / "MgAl2O4_true.cif", SPINEL / "MgAl2O4_start.cif"]
    out = {}
    with single_thread():
        pairs = pairs_from_crystals(cifs, thickness_nm=(100.0, 150.0), size=N, n_beams=21)
        for direction in ("forward", "inverse"):
            torch.manual_seed(0)
            g = GeneratorConfig(channels=(8, 16, 16), mixer_blocks=1, res_blocks=1, token_hidden=8, enhancer_channels=8, cond_hidden=8)
            model = CGAN(TaskConfig(direction=direction, image_size=N), generator=g, discriminator=DiscriminatorConfig(ndf=8, n_layers=2))
            out[direction] = folder / f"{direction}.pt"
            train(model, pairs, TrainConfig(batch_size=2, max_steps=10, lr=1e-3), checkpoint=out[direction], progress=False)
    return out


def test_fit_runs_the_surrogate_stages_and_the_guard_keeps_the_fit_from_getting_worse(tiny_models, tmp_path):
    truth = read_cif(SPINEL / "MgAl2O4_true.cif")
    settings = SimulationSettings(size=16, half_width=7.266 / truth.a, thicknesses=(1000.0,), n_beams=21)
    with torch.no_grad():
        stack, _ = simulate_lacbed(truth.atoms(), truth.a, settings, centring="F", dtype=torch.float64)
    measured = stack[0, 0].numpy()
    params = free_parameters(truth, refine=("xyz",))
    theta = params.initial()
    theta[list(params.names).index("O1.dx0")] = 0.05
    config = FitConfig(refine=("xyz", "thickness"), thickness_nm=105.0, polish=False, surrogate_restarts=2,
                       forward_model=str(tiny_models["forward"]), inverse_model=str(tiny_models["inverse"]))
    result = refine(params.to_crystal(theta), measured, settings, config=config)
    stages = {s.name: s for s in result.stages}
    scan = stages["thickness scan"].fom
    seed, search = stages["inverse-generator seed"], stages["surrogate search"]
    for stage in (seed, search):
        assert stage.seconds > 0 and ("kept" in stage.note or "rejected" in stage.note), stage.note
    # whatever the generators say, the Bloch figure of merit never rises through the stages
    assert search.fom <= seed.fom <= scan + 1e-9
    assert abs(result.fom - search.fom) < 1e-4
    assert result.extra["surrogates"]["forward"]["source"] == str(tiny_models["forward"])

    # the same through the command line, with the report naming the models
    np.save(tmp_path / "m.npy", measured)
    start = tmp_path / "start.cif"
    from lacbed_refine.io.cif import write_cif

    write_cif(params.to_crystal(theta), start)
    res = CliRunner().invoke(cli, ["fit", str(start), str(tmp_path / "m.npy"), "-o", str(tmp_path / "out"), "--refine", "xyz,thickness",
                                   "--beams", "21", "--thickness", "105", "--no-polish", "--restarts", "1",
                                   "--forward-model", str(tiny_models["forward"]), "--inverse-model", str(tiny_models["inverse"])])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["surrogates"]["inverse"]["source"] == str(tiny_models["inverse"])
    assert [s["name"] for s in report["stages"]][1:3] == ["inverse-generator seed", "surrogate search"]
    res = CliRunner().invoke(cli, ["fit", str(start), str(tmp_path / "m.npy"), "-o", str(tmp_path / "bad"),
                                   "--forward-model", str(tiny_models["inverse"])])
    assert res.exit_code != 0 and "inverse.pt" in res.output and "forward" in res.output


def test_surrogate_coverage_marks_the_measured_tilt_range():
    from lacbed_refine.refine.surrogate_search import surrogate_coverage

    a = 8.08
    assert surrogate_coverage(surrogate_half_width(a), a, 32).all()
    half = surrogate_coverage(surrogate_half_width(a) / 2, a, 32)
    assert half.sum() == 16 * 16 and half[8:24, 8:24].all()  # the central half of each axis
