"""Simulator registry: the built-in engine, plugin discovery through entry points, broken plugins."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import lacbed_refine.simulators.registry as sims
from lacbed_refine.io.cif import read_cif
from lacbed_refine.simulators.bloch import settings_for
from lacbed_refine_cli.main import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "SrTiO3.cif"


class FlatSimulator:
    """A stand-in plugin (the outside world): uniform patterns."""

    name = "flat"

    def available(self):
        return True, "always"

    def simulate(self, crystal, settings, *, device="cpu", workers=1, progress=False):
        shape = (len(settings.thicknesses), len(settings.reflections), settings.size, settings.size)
        return np.full(shape, 0.5, dtype=np.float32)


class NotASimulator:
    pass


@pytest.fixture
def fake_plugins(monkeypatch):
    eps = [
        EntryPoint("flat", f"{__name__}:FlatSimulator", sims.ENTRY_POINT_GROUP),
        EntryPoint("broken", f"{__name__}:NotASimulator", sims.ENTRY_POINT_GROUP),
        EntryPoint("missing", "no_such_module:Thing", sims.ENTRY_POINT_GROUP),
    ]
    monkeypatch.setattr(sims, "_entry_points", lambda: eps)


def test_builtin_bloch_simulator_runs():
    c = read_cif(EXAMPLE)
    sim = sims.get_simulator("bloch")
    assert isinstance(sim, sims.Simulator) and sim.available()[0]
    out = sim.simulate(c, settings_for(c, size=8, n_beams=9, thickness_nm=[20]))
    assert out.shape == (1, 1, 8, 8) and out.dtype == np.float32


def test_discovery_lists_plugins_and_reports_broken_ones(fake_plugins, caplog):
    found = {i.name: i for i in sims.discover_simulators()}
    assert set(found) == {"bloch", "flat", "broken", "missing"}
    assert found["flat"].error is None
    assert "does not provide" in found["broken"].error
    assert "no_such_module" in found["missing"].error
    assert isinstance(sims.get_simulator("flat"), FlatSimulator)
    with pytest.raises(sims.PluginError, match="'nope'.*not installed"):
        sims.get_simulator("nope")


def test_cli_plugins_and_engine_option(fake_plugins, tmp_path):
    res = CliRunner().invoke(cli, ["plugins"])
    assert res.exit_code == 0
    assert "flat" in res.output and "BROKEN" in res.output and "bloch" in res.output
    out = tmp_path / "flat.npy"
    res = CliRunner().invoke(cli, ["simulate", str(EXAMPLE), "-o", str(out), "--engine", "flat", "--size", "8"])
    assert res.exit_code == 0, res.output
    assert np.allclose(np.load(out), 0.5)
    res = CliRunner().invoke(cli, ["simulate", str(EXAMPLE), "-o", str(out), "--engine", "nope"])
    assert res.exit_code == 2 and "not installed" in res.output


def test_dataset_build_uses_the_chosen_engine(fake_plugins, tmp_path):
    import h5py

    from lacbed_refine.dataset import BuildSpec, build_dataset

    cifs = tmp_path / "cifs"
    cifs.mkdir()
    (cifs / "SrTiO3.cif").write_text(EXAMPLE.read_text())
    out = tmp_path / "flat.h5"
    spec = BuildSpec(size=8, n_beams=9, thickness_nm=(50.0,), engine="flat")
    build_dataset(out, cifs=[cifs], spec=spec, progress=False)
    with h5py.File(out) as f:
        data = f["pattern"][()]
    assert data.shape[-2:] == (8, 8) and np.allclose(data, 0.5)
