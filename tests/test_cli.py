"""The command line, run through click's CliRunner on the real library with small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from click.testing import CliRunner

from lacbed_refine_cli.main import cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "SrTiO3.cif"


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".h5"])
def test_simulate_writes_stack_and_preview(tmp_path, suffix):
    out = tmp_path / f"sto{suffix}"
    res = _invoke("simulate", EXAMPLE, "-o", out, "--thickness", "50,120", "--size", "16", "--beams", "21",
                  "--reflections", "0 0 0;1 0 0")
    assert res.exit_code == 0, res.output
    assert out.with_suffix(".png").stat().st_size > 1000
    if suffix == ".tif":
        data = tifffile.imread(out)
        assert data.shape == (4, 16, 16) and data.dtype == np.float32
        with tifffile.TiffFile(out) as tf:
            meta = json.loads(tf.pages[0].description)
        assert meta["thickness_nm"] == [50.0, 120.0] and meta["n_beams"] == 21
    elif suffix == ".npy":
        data = np.load(out)
        assert data.shape == (2, 2, 16, 16)
    else:
        with h5py.File(out) as f:
            data = f["patterns"][()]
        assert data.shape == (2, 2, 16, 16)
    assert np.isfinite(data).all() and 0 < data.max() <= 1.0


def test_potential_command(tmp_path):
    out = tmp_path / "rho.npy"
    res = _invoke("potential", EXAMPLE, "-o", out, "--size", "32")
    assert res.exit_code == 0, res.output
    raw, norm = np.load(out)[:, 0]
    assert raw.shape == (32, 32)
    assert norm.min() == 0 and norm.max() == 1
    # Sr column at the origin is the strongest
    assert np.unravel_index(raw.argmax(), raw.shape) == (0, 0)


def test_non_cubic_cif_is_simulated_at_any_zone(tmp_path):
    cif = tmp_path / "mono.cif"
    cif.write_text(
        "data_x\n_cell_length_a 5\n_cell_length_b 6\n_cell_length_c 7\n_cell_angle_alpha 90\n"
        "_cell_angle_beta 100\n_cell_angle_gamma 90\n_symmetry_space_group_name_H-M 'P 1 21/c 1'\n"
        "loop_\n_atom_site_label\n_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
        "_atom_site_fract_z\nC1 C 0.1 0.2 0.3\n"
    )
    # monoclinic P2_1/c is read (any of the 230 groups) and goes to the general engine
    res = _invoke("simulate", cif, "-o", tmp_path / "x.npy", "--size", "8", "--beams", "12", "--thickness", "10",
                  "--zone", "0,1,0", "--reflections", "0 0 0")
    assert res.exit_code == 0, res.output
    stack = np.load(tmp_path / "x.npy")
    assert stack.shape == (1, 1, 8, 8) and np.isfinite(stack).all()
    # the surrogates stay cubic [001]: they say so in one line naming the file
    res = _invoke("potential", cif, "-o", tmp_path / "p.npy", "--size", "16")
    assert res.exit_code == 2
    line = res.output.strip()
    assert "\n" not in line and "mono.cif" in line and "not cubic" in line


@pytest.mark.parametrize(
    "args, words",
    [
        (["--reflections", "1 2"], "three integers"),
        (["--reflections", "1 0 1"], "Laue zone"),
        (["--thickness", "abc"], "numbers"),
    ],
)
def test_bad_options_are_reported(tmp_path, args, words):
    res = _invoke("simulate", EXAMPLE, "-o", tmp_path / "x.tif", "--size", "8", *args)
    assert res.exit_code == 2 and words in res.output


def test_missing_and_empty_files(tmp_path):
    res = _invoke("simulate", tmp_path / "nope.cif", "-o", tmp_path / "x.tif")
    assert res.exit_code == 2 and "nope.cif" in res.output
    empty = tmp_path / "empty.cif"
    empty.write_text("")
    res = _invoke("simulate", empty, "-o", tmp_path / "x.tif")
    assert res.exit_code == 2 and "empty.cif" in res.output
