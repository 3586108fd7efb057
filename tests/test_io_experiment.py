"""Reading a measured digital-LACBED experiment (:mod:`lacbed_refine.io.experiment`).

The three real experiments of ``../shared/data/measured`` (skipped when absent), and synthetic
folders and stack files built in ``tmp_path`` for every layout and every refusal.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
from hypothesis import given
from hypothesis import strategies as st

from lacbed_refine.io.experiment import (
    Experiment,
    ExperimentError,
    parse_disc_name,
    read_experiment,
    unrecorded_mask,
)
from lacbed_refine.io.images import _read_image_file

# The Python port's felix.inp of ../shared/data/measured/GaAs (CC0-1.0, WarwickMicroscopy/Felix-python).
PORT_FELIX_INP = """\
# Input file for Felix version :master: v1.3 :29June2024:
# ------------------------------------

# Control flags
write_flag                = 1
scatter_factor_method     = 0
holz_flag                 = 0
absorption_method         = 2
byte_size                 = 2

# Radius of the beam in pixels
image_radius              = 42

# Beam selection criteria
min_reflection_pool       = 200
min_strong_beams          = 50
min_weak_beams            = 0
g_limit                   = 0.0

# Crystal settings
debye_waller_constant     = 0.0
absorption_per            = 10.0

# Microscope settings
convergence_angle         = 0.983
incident_beam_direction   = [-1, 1, 0]
x_direction               = [1, 1, 0]
normal_direction          = [-1, 1, 0]
accelerating_voltage_kv   = 200.0
acceptance_angle          = 0.0

# Image output options
initial_thickness         = 900.0
final_thickness           = 910.0
delta_thickness           = 50.0
precision                 = 0.00002

# Refinement specific flags
refine_mode               = 'S'
weighting_flag            = 0
refine_method             = 3
correlation_type          = 2
image_processing          = 1
blur_radius               = 0.0
no_of_ugs                 = 40
atomic_sites              = [1,2]
print_flag                = 0
refinement_scale          = 0.05
exit_criteria             = 0.0001
debug                     = 0
plot                      = 1
"""

N = 32


def _disc(seed: int, n: int = N) -> np.ndarray:
    """A positive float32 disc with a clipped (zero) corner, distinct per seed."""
    img = np.random.default_rng(seed).uniform(1.0, 100.0, (n, n)).astype(np.float32)
    img[: n // 4, : n // 4] = 0
    return img


def _name(chem: str, hkl, ext: str) -> str:
    return f"{chem}_{hkl[0]:+d}{hkl[1]:+d}{hkl[2]:+d}.{ext}"


def _write_discs(folder: Path, reflections, *, chem="Xy", ext="npy", shapes=None) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, refl in enumerate(reflections):
        img = _disc(i, (shapes or {}).get(refl, N))
        path = folder / _name(chem, refl, ext)
        if ext == "npy":
            np.save(path, img)
        else:
            tifffile.imwrite(path, img)
        out[tuple(refl)] = img
    return out


def _write_hkl(folder: Path, reflections) -> None:
    (folder / "felix.hkl").write_text("".join(f"[{h}, {k}, {l}]\n" for h, k, l in reflections))


# -- the real experiments ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def measured(shared_dir) -> Path:
    root = shared_dir / "data" / "measured"
    if not root.is_dir():
        pytest.skip(f"measured experiments {root} are absent")
    return root


def test_gaas_all_and_hkl(measured):
    every = read_experiment(measured / "GaAs", discs="all")
    assert isinstance(every, Experiment) and every.name == "GaAs"
    assert every.images.shape == (43, 84, 84) and every.images.dtype == np.float64
    assert every.recorded.shape == every.images.shape and every.recorded.dtype == bool
    assert every.reflections[0] == (0, 0, 0) and every.files[0] == "DM3_84x84/GaAs_+0+0+0.dm3"
    assert every.unused == ()
    assert every.felix.dialect == "python" and every.felix.pixel_count == 42 and every.felix.half_width == 0.983
    # images are the stored values, orientation untouched
    stored = _read_image_file(measured / "GaAs" / "DM3_84x84" / "GaAs_+1+1-7.dm3")
    np.testing.assert_array_equal(every.images[every.reflections.index((1, 1, -7))], stored.astype(np.float64))

    fit = read_experiment(measured / "GaAs")
    listed = [tuple(int(v) for v in r) for r in fit.hkl]
    assert len(listed) == 15
    assert fit.reflections == ((0, 0, 0), *listed)  # every felix.hkl reflection has an image here
    assert len(fit.unused) == 43 - 16 and all(u.endswith(": not in felix.hkl") for u in fit.unused)
    assert "DM3_84x84/GaAs_-4-4-8.dm3: not in felix.hkl" in fit.unused


def test_gesn_negative_pixels_masked(measured):
    exp = read_experiment(measured / "GeSn152", discs="all")
    assert exp.name == "GeSn" and exp.images.shape == (53, 152, 152)  # 3-D DM3s (1, 152, 152) squeezed
    negative = exp.images < 0
    assert negative.sum() > 100  # the interpolated -3-3±5 discs
    assert not exp.recorded[negative].any()
    assert not exp.recorded[exp.images == 0].any()
    assert exp.recorded[0].mean() > 0.999


def test_linbo3_unrecorded_areas(measured):
    exp = read_experiment(measured / "LiNbO3", discs="all")
    assert exp.images.shape == (63, 168, 168)
    unrecorded = 1 - exp.recorded.mean(axis=(1, 2))
    assert unrecorded[0] < 0.01
    assert unrecorded.max() > 0.3
    assert exp.reflections[int(unrecorded.argmax())][:2] in ((3, 3), (2, 2))  # high-order discs
    assert read_experiment(measured / "LiNbO3").images.shape[0] == 25  # 000 + 24 of felix.hkl


# -- synthetic folders ---------------------------------------------------------------------------
def test_npy_subfolder_with_felix_files_and_multi_digit_indices(tmp_path):
    refl = [(0, 0, 0), (1, 1, -10), (10, 0, 0), (0, 0, 2), (2, 2, 0)]
    written = _write_discs(tmp_path / "NPY_32x32", refl, chem="GaAs")
    (tmp_path / "felix.inp").write_text(PORT_FELIX_INP)
    _write_hkl(tmp_path, [(10, 0, 0), (1, 1, -10), (4, 4, 4), (0, 0, 2)])
    (tmp_path / "NPY_32x32" / "notes.npy").write_bytes(b"")  # not a disc name: reported, never read
    exp = read_experiment(tmp_path)
    assert exp.source == tmp_path and exp.name == "GaAs"
    assert exp.reflections == ((0, 0, 0), (10, 0, 0), (1, 1, -10), (0, 0, 2))  # 000, then felix.hkl order
    assert exp.files[1] == "NPY_32x32/GaAs_+10+0+0.npy"
    for r, img in zip(exp.reflections, exp.images):
        np.testing.assert_array_equal(img, written[r].astype(np.float64))
    assert exp.felix.dialect == "python" and exp.felix.beam_direction == (-1, 1, 0)
    np.testing.assert_array_equal(exp.hkl, [[10, 0, 0], [1, 1, -10], [4, 4, 4], [0, 0, 2]])
    assert set(exp.unused) == {
        "NPY_32x32/notes.npy: name is not <chem>_<±h><±k><±l>.<ext>",
        "NPY_32x32/GaAs_+2+2+0.npy: not in felix.hkl",
        "[4,4,4]: in felix.hkl, no image",
    }
    assert read_experiment(tmp_path, discs="all").images.shape == (5, N, N)


def test_tif_discs_in_the_folder_without_felix_files(tmp_path):
    refl = [(0, 0, 2), (0, 0, 0), (-1, -1, 1)]
    _write_discs(tmp_path, refl, ext="tif")
    (tmp_path / "other").mkdir()  # a sub-folder without discs is ignored
    exp = read_experiment(tmp_path)
    assert exp.felix is None and exp.hkl is None and exp.unused == ()
    assert exp.reflections[0] == (0, 0, 0) and set(exp.reflections) == set(refl)
    assert exp.files[0] == "Xy_+0+0+0.tif"


def test_discs_sequence(tmp_path):
    _write_discs(tmp_path, [(0, 0, 0), (1, 1, 1), (2, 2, 0), (0, 0, 4)])
    exp = read_experiment(tmp_path, discs=[(2, 2, 0), np.array([1, 1, 1])])
    assert exp.reflections == ((0, 0, 0), (2, 2, 0), (1, 1, 1))
    assert exp.unused == ("Xy_+0+0+4.npy: not in discs",)
    with pytest.raises(ExperimentError, match=r"discs: \[3,3,3\] has no image in .*"):
        read_experiment(tmp_path, discs=[(1, 1, 1), (3, 3, 3)])
    with pytest.raises(ExperimentError, match=r"discs='fitted'"):
        read_experiment(tmp_path, discs="fitted")
    with pytest.raises(ExperimentError, match=r"discs: \(1, 1\.5, 0\) is not"):
        read_experiment(tmp_path, discs=[(1, 1.5, 0)])


def test_leading_axis_of_one_is_squeezed_and_nan_kept_but_masked(tmp_path):
    img = _disc(0)[None].astype(np.float64)
    img[0, 20, 20] = np.nan
    img[0, 21, 21] = np.inf
    np.save(tmp_path / "S_+0+0+0.npy", img)
    exp = read_experiment(tmp_path)
    assert exp.images.shape == (1, N, N)
    assert np.isnan(exp.images[0, 20, 20]) and not exp.recorded[0, 20, 20] and not exp.recorded[0, 21, 21]
    assert exp.recorded[0].sum() == N * N - (N // 4) ** 2 - 2


def test_low_recorded_fraction_is_reported_not_refused(tmp_path, caplog):
    _write_discs(tmp_path, [(0, 0, 0)])
    faint = np.zeros((N, N), np.float32)
    faint[10:12, 10:12] = 5.0
    np.save(tmp_path / "Xy_+3+3+3.npy", faint)
    with caplog.at_level(logging.WARNING, logger="lacbed_refine.io.experiment"):
        exp = read_experiment(tmp_path, discs="all")
    assert exp.recorded[1].sum() == 4
    assert "[3,3,3]" in caplog.text and "Xy_+3+3+3.npy" in caplog.text


# -- the mask ------------------------------------------------------------------------------------
def test_unrecorded_mask_rules():
    img = np.full((8, 8), 3.0)
    img[0, 0] = 0.0
    img[0, 1] = -2.0
    img[0, 2] = np.nan
    img[0, 3] = -np.inf
    img[5:8, 5:8] = 0.0
    img[6, 6] = 7.0  # a lone recorded pixel inside an unrecorded area
    mask = unrecorded_mask(img)
    assert mask.dtype == bool and mask.shape == img.shape
    assert not mask[0, :4].any() and mask[0, 4:].all()
    assert not mask[6, 6]
    img[6, 7] = 1.0  # two touching pixels are a region, kept
    assert unrecorded_mask(img)[6, 6] and unrecorded_mask(img)[6, 7]
    assert unrecorded_mask(np.arange(1, 17).reshape(4, 4)).all()  # integers
    with pytest.raises(ValueError, match=r"2-D"):
        unrecorded_mask(np.ones((2, 3, 3)))


# -- stack files ---------------------------------------------------------------------------------
STACK_HKL = [(0, 0, 0), (0, 0, -2), (1, 1, 1), (1, 1, -10)]


def _stack():
    return np.stack([_disc(i) for i in range(len(STACK_HKL))])


@pytest.mark.parametrize(
    "labels",
    [["0 0 0", "+0+0-2", "[1,1,1]", "[1, 1, -10]"], ["000", "0 0 -2", "111", "hkl=1 1 -10"], ['{"label": "t=900A hkl=0 0 0"}', "[0,0,-2]", "+1+1+1", "X_+1+1-10.dm3"]],
)
def test_tiff_stack_page_descriptions(tmp_path, labels):
    data = _stack()
    path = tmp_path / "discs.tif"
    with tifffile.TiffWriter(path) as tif:
        for page, text in zip(data, labels):
            tif.write(page, description=text, metadata=None)
    (tmp_path / "felix.inp").write_text(PORT_FELIX_INP)
    exp = read_experiment(path, discs="all")
    assert exp.source == path and exp.name == "discs" and exp.felix is not None and exp.hkl is None
    assert exp.reflections == tuple(STACK_HKL)
    assert exp.files == ("discs.tif#0", "discs.tif#1", "discs.tif#2", "discs.tif#3")
    np.testing.assert_array_equal(exp.images, data.astype(np.float64))


def test_imagej_labels_and_selection_by_felix_hkl(tmp_path):
    data = _stack()
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"Labels": ["+0+0-2", "0 0 0", "1 1 1", "1 1 -10"]})
    _write_hkl(tmp_path, [(1, 1, 1), (0, 0, -2)])
    exp = read_experiment(path)
    assert exp.reflections == ((0, 0, 0), (1, 1, 1), (0, 0, -2))
    assert exp.files == ("ij.tif#1", "ij.tif#2", "ij.tif#0")
    np.testing.assert_array_equal(exp.images[0], data[1])
    assert exp.unused == ("ij.tif#3: not in felix.hkl",)


def test_npz_and_h5_stacks(tmp_path):
    data = _stack()
    np.savez(tmp_path / "s.npz", images=data, hkl=np.array(STACK_HKL))
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["images"] = data
        f["hkl"] = np.array(STACK_HKL, dtype=np.int32)
    for name in ("s.npz", "s.h5"):
        exp = read_experiment(tmp_path / name, discs="all")
        assert exp.reflections == tuple(STACK_HKL) and exp.name == "s"
        np.testing.assert_array_equal(exp.images, data.astype(np.float64))


# -- refusals ------------------------------------------------------------------------------------
def test_mismatched_shapes(tmp_path):
    _write_discs(tmp_path, [(0, 0, 0), (1, 1, 1)], shapes={(1, 1, 1): 40})
    with pytest.raises(ExperimentError, match=r"Xy_\+1\+1\+1\.npy: shape \(40, 40\), but .*Xy_\+0\+0\+0\.npy is \(32, 32\)"):
        read_experiment(tmp_path, discs="all")


def test_not_square(tmp_path):
    _write_discs(tmp_path, [(0, 0, 0)])
    np.save(tmp_path / "Xy_+2+0+0.npy", np.ones((32, 40), np.float32))
    with pytest.raises(ExperimentError, match=r"Xy_\+2\+0\+0\.npy: pattern is not square: shape \(32, 40\)"):
        read_experiment(tmp_path)


def test_missing_bright_field(tmp_path):
    _write_discs(tmp_path, [(0, 0, 2), (1, 1, 1)])
    with pytest.raises(ExperimentError, match=r"no image of the 000 disc"):
        read_experiment(tmp_path)


def test_bright_field_nearly_unrecorded(tmp_path):
    np.save(tmp_path / "Xy_+0+0+0.npy", np.zeros((N, N)))
    with pytest.raises(ExperimentError, match=r"Xy_\+0\+0\+0\.npy: the 000 disc has 0 recorded pixels"):
        read_experiment(tmp_path)


def test_two_image_subfolders(tmp_path):
    _write_discs(tmp_path / "DM3_84x84", [(0, 0, 0)])
    _write_discs(tmp_path / "DM3_168x168", [(0, 0, 0)])
    with pytest.raises(ExperimentError, match=r"2 sub-folders \(DM3_168x168, DM3_84x84\)"):
        read_experiment(tmp_path)
    _write_discs(tmp_path, [(0, 0, 0)])  # discs in the folder itself win
    assert read_experiment(tmp_path).files == ("Xy_+0+0+0.npy",)


def test_folder_refusals(tmp_path):
    with pytest.raises(ExperimentError, match=r"no such folder or file"):
        read_experiment(tmp_path / "absent")
    with pytest.raises(ExperimentError, match=r"no disc images named"):
        read_experiment(tmp_path)
    _write_discs(tmp_path, [(0, 0, 0), (1, 1, 1)])
    np.save(tmp_path / "Xy_+1+1+01.npy", _disc(9))
    with pytest.raises(ExperimentError, match=r"two images of \[1,1,1\] \(Xy_\+1\+1\+01\.npy, Xy_\+1\+1\+1\.npy\)"):
        read_experiment(tmp_path)
    (tmp_path / "Xy_+1+1+01.npy").unlink()
    np.save(tmp_path / "Zz_+2+2+0.npy", _disc(9))
    with pytest.raises(ExperimentError, match=r"several prefixes \(Xy, Zz\)"):
        read_experiment(tmp_path)
    (tmp_path / "Zz_+2+2+0.npy").unlink()
    (tmp_path / "felix.hkl").write_text("[1,1,1]\n\n[2,2,0]\n")
    with pytest.raises(ExperimentError, match=r"felix\.hkl: line 2 is blank"):
        read_experiment(tmp_path)


def test_unlabelled_tiff_stack(tmp_path):
    path = tmp_path / "stack.tif"
    with tifffile.TiffWriter(path) as tif:
        for page in _stack():
            tif.write(page, metadata=None)
    with pytest.raises(ExperimentError, match=r"stack\.tif: page 0 has no hkl label \(no description\); label every disc"):
        read_experiment(path)
    tifffile.imwrite(path, _stack(), photometric="minisblack")  # tifffile's own {"shape": ...} description is no label either
    with pytest.raises(ExperimentError, match=r"stack\.tif: page 0 has no hkl label"):
        read_experiment(path)


def test_stack_refusals(tmp_path):
    np.savez(tmp_path / "a.npz", images=_stack())
    with pytest.raises(ExperimentError, match=r"a\.npz: no array 'hkl' \(has images\); label every disc"):
        read_experiment(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", images=_stack(), hkl=np.array(STACK_HKL[:3]))
    with pytest.raises(ExperimentError, match=r"b\.npz: 3 hkl labels for 4 images"):
        read_experiment(tmp_path / "b.npz")
    np.savez(tmp_path / "c.npz", images=_stack(), hkl=np.array([(0, 0, 0), (1, 1, 1), (1, 1, 1), (2, 2, 0)]))
    with pytest.raises(ExperimentError, match=r"c\.npz: images 1 and 2 are both labelled \[1,1,1\]"):
        read_experiment(tmp_path / "c.npz")
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["patterns"] = _stack()
    with pytest.raises(ExperimentError, match=r"d\.h5: no array 'images' \(has patterns\)"):
        read_experiment(tmp_path / "d.h5")
    np.save(tmp_path / "one.npy", _disc(0))
    with pytest.raises(ExperimentError, match=r"one\.npy: one image file, not an experiment"):
        read_experiment(tmp_path / "one.npy")
    (tmp_path / "bad.h5").write_text("not hdf5")
    with pytest.raises(ExperimentError, match=r"bad\.h5: cannot read stack"):
        read_experiment(tmp_path / "bad.h5")


# -- file names ----------------------------------------------------------------------------------
def test_parse_disc_name_examples():
    assert parse_disc_name("GaAs_+0+0-2.dm3") == ("GaAs", (0, 0, -2))
    assert parse_disc_name("DM3/LiNbO3_+1+1-12.DM3") == ("LiNbO3", (1, 1, -12))
    assert parse_disc_name("Ge_Sn_-3-3+9.tiff") == ("Ge_Sn", (-3, -3, 9))
    for bad in ("GaAs_0+0-2.dm3", "GaAs_+0+0.dm3", "_+0+0+0.dm3", "GaAs_+0+0+0.png", "GaAs+0+0+0.dm3", "GaAs_+0+0+0"):
        assert parse_disc_name(bad) is None, bad


@given(
    chem=st.text(st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)), min_size=1, max_size=12),
    hkl=st.tuples(*[st.integers(-999, 999)] * 3),
    ext=st.sampled_from(["dm3", "dm4", "img", "bin", "tif", "tiff", "npy", "DM3"]),
)
def test_parse_disc_name_round_trips(chem, hkl, ext):
    assert parse_disc_name(_name(chem, hkl, ext)) == (chem, hkl)


def test_message_is_one_line(tmp_path):
    _write_discs(tmp_path, [(0, 0, 2)])
    with pytest.raises(ExperimentError) as info:
        read_experiment(tmp_path)
    assert "\n" not in str(info.value) and str(tmp_path) in str(info.value)


def test_stack_hkl_must_be_integers_and_discs_must_be_triples(tmp_path):
    np.savez(tmp_path / "f.npz", images=_stack(), hkl=np.array(STACK_HKL) + 0.5)
    with pytest.raises(ExperimentError, match=r"f\.npz: 'hkl' is float64 of shape \(4, 3\), expected integers"):
        read_experiment(tmp_path / "f.npz")
    np.savez(tmp_path / "g.npz", images=_stack(), hkl=np.array(STACK_HKL, dtype=float))  # integral floats are fine
    assert read_experiment(tmp_path / "g.npz", discs=iter([(1, 1, 1)])).reflections == ((0, 0, 0), (1, 1, 1))
    for bad in (None, (0, 0, 2), ["000"]):
        with pytest.raises(ExperimentError, match=r"discs: .* is not \(h, k, l\) integers"):
            read_experiment(tmp_path / "g.npz", discs=bad)
