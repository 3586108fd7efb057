"""Datasets at any zone axis (issue item 8): ``dataset build --zone U,V,W [--x-direction H,K,L]
[--normal U,V,W]``, the projected potential along any zone, and the [001]-only surrogates' refusal.

Everything runs the real library and CLI on tiny inputs: two real cubic CIFs of the test data
(GaAs, F-43m; MgO, Fm-3m), 16×16 pixels, 21 beams, one thickness.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lacbed_refine.dataset import BuildSpec, dataset_hash, read_info, zone_of
from lacbed_refine.engine.zone import ZoneAxis
from lacbed_refine.io.cif import read_cif
from lacbed_refine.physics.potential import projected_potential, zone_potential_reflections, zone_projected_potential
from lacbed_refine.simulators.bloch import centring_vectors
from lacbed_refine.surrogate import open_dataset
from lacbed_refine_cli.main import cli

DATA = Path(__file__).resolve().parent / "data" / "felix"
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "SrTiO3.cif"
GAAS, MGO = DATA / "GaAs" / "felix.cif", DATA / "MgO" / "felix.cif"
S2 = 1 / math.sqrt(2)
#: [110] with the default x direction: x̂ = [001], ŷ = ẑ × x̂ = [1 -1 0]/√2
AXES_110 = np.array([[0.0, 0.0, 1.0], [S2, -S2, 0.0]])
TINY = ["--size", "16", "--beams", "21", "--thickness", "50", "--workers", "1", "--no-progress"]


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _potential(crystal, zone, axes, **kw):
    with torch.no_grad():
        return zone_projected_potential(crystal.atoms(), crystal.cell, zone, axes, centring=centring_vectors(crystal),
                                        **kw).numpy()


def _one_line_error(res, *needles) -> str:
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert isinstance(res.exception, SystemExit) and "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("lacbed-refine: error: ")]
    assert len(lines) == 1, res.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# -- the potential along any zone ---------------------------------------------------------------
@pytest.mark.parametrize("path", [GAAS, MGO, EXAMPLE], ids=["GaAs", "MgO", "SrTiO3"])
@pytest.mark.parametrize("size", [16, 64])
def test_zone_potential_at_001_is_the_paper_image(path, size):
    c = read_cif(path)
    frame = ZoneAxis((0, 0, 1), (1, 0, 0)).frame(c.cell)
    with torch.no_grad():
        old = projected_potential(c.atoms(), c.a, centring=c.spacegroup_symbol[0], size=size).numpy()
    new = _potential(c, (0, 0, 1), frame[:2], size=size)
    assert new.shape == (size, size)
    assert np.abs(new - old).max() < 1e-10
    # the same Fourier terms as the [001] function: ZOLZ, centring-allowed, whole shells, Nyquist cut
    hkl, freq = zone_potential_reflections(c.cell, (0, 0, 1), frame, centring=centring_vectors(c), size=size)
    assert (hkl[:, 2] == 0).all() and np.allclose(freq, hkl[:, :2])


def test_zone_potential_110_has_the_projection_symmetry():
    """GaAs (F-43m) seen along [110] keeps only the mirror x↔y of its point group: the image is
    mirror-symmetric in y (ŷ ∥ [1-10]) and polar along x (∥ [001]); MgO (Fm-3m) is 2mm."""
    gaas, mgo = read_cif(GAAS), read_cif(MGO)
    flip_y, flip_x = np.array([[1.0], [-1.0]]), np.array([[-1.0], [1.0]])
    for crystal, polar in ((gaas, True), (mgo, False)):
        v = _potential(crystal, (1, 1, 0), AXES_110, size=32)
        scale = np.ptp(v)
        assert scale > 10  # volts: a real image, not a constant
        assert np.abs(_potential(crystal, (1, 1, 0), AXES_110 * flip_y, size=32) - v).max() < 1e-9 * scale  # y-mirror
        # x runs along [001], a period of the projection: the x-mirror is exact on the grid
        x_mirror = np.abs(np.roll(v[:, ::-1], 1, axis=1) - v).max() / scale
        two_fold = np.abs(_potential(crystal, (1, 1, 0), -AXES_110, size=32) - v).max() / scale
        x_flip = np.abs(_potential(crystal, (1, 1, 0), AXES_110 * flip_x, size=32) - v).max() / scale
        if polar:
            assert x_mirror > 0.1 and two_fold > 0.1 and x_flip > 0.1
        else:
            assert x_mirror < 1e-9 and two_fold < 1e-9 and x_flip < 1e-9


def test_zone_potential_field_of_view_and_the_001_image_differ():
    c = read_cif(GAAS)
    v = _potential(c, (1, 1, 0), AXES_110, size=16)
    # twice the field of view on twice the pixels: the same pixel positions in the first quarter
    v2 = _potential(c, (1, 1, 0), AXES_110, size=32, field_of_view=2 * c.a)
    assert np.abs(v2[:16, :16] - v).max() < 1e-9 * np.ptp(v)
    # the projection is not the [001] one (the [110] section of GaAs is not square)
    v001 = _potential(c, (0, 0, 1), np.eye(3)[:2], size=16)
    assert np.abs(v - v001).max() > 0.1 * np.ptp(v001)
    # the mean inner potential (g = 0 term) is the same along any zone: compare the zero-frequency term
    hkl, _ = zone_potential_reflections(c.cell, (1, 1, 0), AXES_110, centring=centring_vectors(c), size=16)
    assert tuple(hkl[0]) == (0, 0, 0) and (hkl @ np.array([1, 1, 0]) == 0).all()


def test_zone_potential_is_differentiable_in_the_coordinates():
    c = read_cif(GAAS)
    atoms = c.atoms()
    frac0 = torch.as_tensor(atoms.frac, dtype=torch.float64)

    def f(frac):
        return zone_projected_potential(atoms.replace( frac=frac), c.cell, (1, 1, 0), AXES_110,
                                        centring=centring_vectors(c), size=8, n_terms=60)

    frac = frac0.clone().requires_grad_(True)
    weights = torch.linspace(0, 1, 64, dtype=torch.float64).reshape(8, 8)
    (f(frac) * weights).sum().backward()
    step = torch.zeros_like(frac0)
    step[0, 2] = 1e-6
    numeric = ((f(frac0 + step) - f(frac0 - step)) * weights).sum() / 2e-6
    assert float(frac.grad[0, 2]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-6)
    assert float(frac.grad.abs().sum()) > 0


@pytest.mark.parametrize("axes, needle", [
    (np.array([[0.0, 0.0, 2.0], [S2, -S2, 0.0]]), "orthonormal"),
    (np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), "perpendicular to the zone axis"),
    (np.eye(4), "shape"),
])
def test_zone_potential_refuses_bad_axes(axes, needle):
    c = read_cif(GAAS)
    with pytest.raises(ValueError, match=needle):
        _potential(c, (1, 1, 0), axes, size=16)


# -- the spec ----------------------------------------------------------------------------------------
def test_spec_records_the_zone_only_when_it_is_not_the_default():
    default = BuildSpec().to_dict()
    assert not {"zone", "x_direction", "normal"} & set(default)
    explicit = BuildSpec(zone=(0, 0, 1), x_direction=(1, 0, 0), normal=(0, 0, 2))
    assert explicit.to_dict() == default and explicit.standard_zone
    z = BuildSpec(zone=(2, 2, 0), normal=(1, 1, 0))  # directions only: [220] is [110], a normal along it the default
    assert (z.zone, z.x_direction, z.normal) == ((1, 1, 0), (0, 0, 1), None) and not z.standard_zone
    d = z.to_dict()
    assert d["zone"] == [1, 1, 0] and d["x_direction"] == [0, 0, 1] and "normal" not in d
    assert BuildSpec(zone=(1, 1, 0), x_direction=(0, 0, 1)).to_dict() == d
    assert zone_of({"spec": d}) == {"zone": [1, 1, 0], "x_direction": [0, 0, 1], "normal": None, "standard": False}
    assert zone_of({"spec": default})["standard"] and zone_of({})["zone"] == [0, 0, 1]


@pytest.mark.parametrize("kwargs, needle", [
    (dict(zone=(0, 0, 0)), "--zone"),
    (dict(zone=(1, 1, 0), x_direction=(1, 0, 0)), "--x-direction"),
    (dict(zone=(1, 1, 0), normal=(0, 0, 1)), "--normal"),
    (dict(zone=(0.5, 0, 1)), "--zone"),
])
def test_spec_checks_the_geometry_once(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        BuildSpec(**kwargs)


# -- the CLI build ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("zone")
    cifs = root / "cifs"
    cifs.mkdir()
    (cifs / "GaAs.cif").write_text(GAAS.read_text())
    (cifs / "MgO.cif").write_text(MGO.read_text())
    out = {}
    for name, extra in (("z110", ["--zone", "1,1,0"]), ("z001", []),
                        ("z001_explicit", ["--zone", "0 0 1", "--x-direction", "1,0,0", "--normal", "0,0,1"])):
        res = _invoke("dataset", "build", "--cifs", cifs, "-o", root / f"{name}.h5", *TINY, *extra)
        assert res.exit_code == 0, res.output
        out[name] = root / f"{name}.h5"
    return out


def test_zone_build_records_the_zone_and_info_shows_it(builds):
    path = builds["z110"]
    info = read_info(path)
    assert info["n_structures"] == 2 and info["n_failed"] == 0
    assert info["settings"]["spec"]["zone"] == [1, 1, 0] and info["settings"]["spec"]["x_direction"] == [0, 0, 1]
    assert info["geometry"] == {"zone": [1, 1, 0], "x_direction": [0, 0, 1], "normal": None, "standard": False}
    assert dataset_hash(path) == info["content_hash"]
    res = _invoke("dataset", "info", path, "--verify")
    assert res.exit_code == 0, res.output
    assert "zone axis      [1 1 0], x [0 0 1] (not the shipped [001] surrogates' geometry)" in res.output
    assert "content hash verified" in res.output
    res = _invoke("dataset", "info", builds["z001"])
    assert "zone axis      [0 0 1], x [1 0 0]\n" in res.output


def test_zone_build_patterns_and_potentials_are_the_zones(builds):
    with h5py.File(builds["z110"]) as f110, h5py.File(builds["z001"]) as f001:
        ids = list(f110["meta/id"].asstr()[()])
        assert ids == ["GaAs", "MgO"] == list(f001["meta/id"].asstr()[()])
        pat110, pat001 = f110["pattern"][()], f001["pattern"][()]
        raw110, raw001 = f110["potential_raw"][()], f001["potential_raw"][()]
        cifs = list(f110["meta/cif"].asstr()[()])
        assert np.isfinite(pat110).all() and pat110.shape == (2, 1, 16, 16)
        assert (pat110 > 0).all() and (pat110 < 1).all()
        for i in range(2):
            assert np.abs(pat110[i] - pat001[i]).max() > 0.05  # another zone, other patterns
        assert np.allclose(f110["potential"][()].min(axis=(1, 2)), 0) and np.allclose(f110["potential"][()].max(axis=(1, 2)), 1)
    tmp = builds["z110"].parent / "stored"
    tmp.mkdir(exist_ok=True)
    for i, name in enumerate(ids):
        (tmp / f"{name}.cif").write_text(cifs[i])
        crystal = read_cif(tmp / f"{name}.cif")
        # the stored image is the [110] projection of the stored structure, x̂ = [001], ŷ = [1-10]/√2
        expected = _potential(crystal, (1, 1, 0), AXES_110, size=16).astype(np.float32)
        assert np.array_equal(raw110[i], expected)
        v, scale = raw110[i], np.ptp(raw110[i])
        x_mirror = np.abs(np.roll(v[:, ::-1], 1, axis=1) - v).max() / scale
        if name == "MgO":  # 2mm: mirror across x (x along [001], the image's period)
            assert x_mirror < 1e-6
        else:  # GaAs [110]: polar along [001] (its [001] image is 4mm, mirror-symmetric in x)
            assert x_mirror > 0.1
            w = raw001[i]
            assert np.abs(np.roll(w[:, ::-1], 1, axis=1) - w).max() < 1e-5 * np.ptp(w)
            # its mirror is across y (ŷ ∥ [1-10], the x↔y mirror of F-43m)
            flipped = _potential(crystal, (1, 1, 0), AXES_110 * np.array([[1.0], [-1.0]]), size=16).astype(np.float32)
            assert np.abs(flipped - v).max() < 1e-5 * scale


def test_default_zone_build_is_unchanged_with_or_without_explicit_options(builds):
    a, b = read_info(builds["z001"]), read_info(builds["z001_explicit"])
    assert a["content_hash"] == b["content_hash"]
    assert json.dumps(a["settings"], sort_keys=True) == json.dumps(b["settings"], sort_keys=True)
    assert not {"zone", "x_direction", "normal"} & set(a["settings"]["spec"])
    assert a["settings"]["spec"]["beam_rule"] == "whole-shell ZOLZ pool of >= 21 beams, all used at every pixel"
    # the [001] potential is still the paper's function, bit for bit
    with h5py.File(builds["z001"]) as f:
        raw, cifs = f["potential_raw"][()], list(f["meta/cif"].asstr()[()])
    tmp = builds["z001"].parent / "stored001"
    tmp.mkdir(exist_ok=True)
    for i, text in enumerate(cifs):
        (tmp / f"{i}.cif").write_text(text)
        c = read_cif(tmp / f"{i}.cif")
        with torch.no_grad():
            expected = projected_potential(c.atoms(), c.a, centring=c.spacegroup_symbol[0], size=16).numpy()
        assert np.array_equal(raw[i], expected.astype(np.float32))


@pytest.mark.parametrize("args, needles", [
    (["--zone", "1,1"], ("--zone", "three integers")),
    (["--zone", "1,one,0"], ("--zone", "three integers")),
    (["--zone", "0,0,0"], ("--zone", "must not be zero")),
    (["--zone", "1,1,0", "--x-direction", "1 0 0"], ("--x-direction", "not perpendicular")),
    (["--zone", "1,1,0", "--normal", "0,0,1"], ("--normal", "must point along the beam")),
])
def test_build_geometry_errors_are_one_line_before_work(tmp_path, args, needles):
    out = tmp_path / "out.h5"
    res = _invoke("dataset", "build", "--cifs", DATA / "GaAs", "-o", out, *TINY, *args)
    _one_line_error(res, *needles)
    assert not out.exists() and not out.with_name(out.name + ".work").exists()


def test_surrogates_refuse_a_dataset_of_another_zone(builds, tmp_path):
    path = builds["z110"]
    with pytest.raises(ValueError, match=r"zone \[1 1 0\]") as err:
        open_dataset(path, "train")
    assert str(path) in str(err.value) and "[001]" in str(err.value) and "\n" not in str(err.value)
    ckpt = tmp_path / "m.pt"
    res = _invoke("train", "forward", "--data", path, "-o", ckpt, "--epochs", "1")
    _one_line_error(res, str(path), "zone [1 1 0]")
    assert not ckpt.exists()
    # an [001] file is not refused
    with h5py.File(builds["z001"]) as f:
        split = f["meta/split"].asstr()[0]
    assert len(open_dataset(builds["z001"], split)) >= 1
