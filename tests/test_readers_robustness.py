"""Readers refuse nonsense where it enters (issue 12): CIF, measured-pattern images, FELIX files.

Each refusal is a documented ``ValueError`` subclass (``CrystalError``, ``PatternError``,
``FelixInputError``) or a plain ``ValueError`` for the other FELIX files, with one line that names the
file and the problem. Input that is legal but suspicious gives a warning instead.
"""

from __future__ import annotations

import csv
import gzip
import math
import re
import warnings

import numpy as np
import pytest
import tifffile

from lacbed_refine.structure import crystal as crystal_module
from lacbed_refine.io import images as patterns_module
from lacbed_refine.structure.crystal import CrystalError
from lacbed_refine.io.cif import read_cif
from lacbed_refine.io.images import PatternError, check_pattern, read_pattern, resample_pattern

# the limits the readers document (literals here, so that the tests pin them)
MIN_PATTERN_SIDE = 16
MAX_PATTERN_SIDE = 4096

CELL_TAGS = ("length_a", "length_b", "length_c", "angle_alpha", "angle_beta", "angle_gamma")
SITE_COLUMNS = ("label", "type_symbol", "fract_x", "fract_y", "fract_z", "B_iso_or_equiv", "occupancy")
MGO_ROWS = (("Mg1", "Mg", "0", "0", "0", "0.5", "1"), ("O1", "O", "0.5", "0.5", "0.5", "0.5", "1"))


def cif_text(*, block="t", cell=None, rows=MGO_ROWS, columns=SITE_COLUMNS, extra="") -> str:
    """A small rock-salt CIF (F m -3 m); ``cell`` maps a tag of :data:`CELL_TAGS` to its value
    text, or to None to leave the tag out."""
    values = {"length_a": "4.212", "length_b": "4.212", "length_c": "4.212",
              "angle_alpha": "90", "angle_beta": "90", "angle_gamma": "90", **(cell or {})}
    lines = [f"data_{block}", *extra.splitlines()]
    lines += [f"_cell_{tag} {v}" for tag, v in values.items() if v is not None]
    lines += ["_symmetry_space_group_name_H-M 'F m -3 m'", "loop_"]
    lines += [f"_atom_site_{c}" for c in columns]
    lines += [" ".join(r) for r in rows]
    return "\n".join(lines) + "\n"


def write_cif_text(tmp_path, text, name="x.cif"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return path


def refused(path, match, exc=CrystalError, reader=read_cif):
    """``reader(path)`` raises ``exc`` with one line that starts with the path and matches ``match``."""
    with pytest.raises(exc, match=match) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------------
# 1. the cell: missing, zero, negative, non-finite, out of range
# ------------------------------------------------------------------------------------------------
def test_cif_without_cell_lengths_is_refused_not_read_with_a_1(tmp_path):
    cell = {"length_a": None, "length_b": None, "length_c": None}
    path = write_cif_text(tmp_path, cif_text(cell=cell))
    refused(path, r"no _cell_length_a")


@pytest.mark.parametrize("tag", CELL_TAGS)
def test_cif_missing_any_cell_tag_is_refused_naming_it(tmp_path, tag):
    path = write_cif_text(tmp_path, cif_text(cell={tag: None}))
    refused(path, f"no _cell_{tag}")


@pytest.mark.parametrize("tag", CELL_TAGS)
@pytest.mark.parametrize("value", ["?", "0", "-4.212", "nan", "inf", "abc"])
def test_cif_bad_cell_value_is_refused_naming_tag_and_value(tmp_path, tag, value):
    path = write_cif_text(tmp_path, cif_text(cell={tag: value}))
    message = refused(path, f"_cell_{tag}")
    assert value in message


@pytest.mark.parametrize("a", ["1e6", "250", "0.5"])
def test_cif_absurd_cell_edge_is_refused(tmp_path, a):
    path = write_cif_text(tmp_path, cif_text(cell={"length_a": a, "length_b": a, "length_c": a}))
    refused(path, re.escape(f"cell edge a = {float(a):g} Å is outside"))


def test_cell_edge_range_is_what_an_electron_crystallographer_accepts():
    lo, hi = crystal_module.CELL_EDGE_RANGE
    assert lo <= 2.3 and hi >= 100.0  # the smallest cubic cells (~2.4 Å) to large zeolites and MOFs


# ------------------------------------------------------------------------------------------------
# 2. several data blocks
# ------------------------------------------------------------------------------------------------
def test_second_structure_block_is_ignored_with_a_warning(tmp_path):
    text = cif_text(block="first") + cif_text(block="second", cell={k: "5.0" for k in CELL_TAGS[:3]})
    path = write_cif_text(tmp_path, text)
    with pytest.warns(UserWarning, match=r"used data block 'first'.*ignored.*'second'"):
        crystal = read_cif(path)
    assert crystal.a == pytest.approx(4.212)


def test_block_without_cell_is_skipped_for_the_next_structure(tmp_path):
    first = cif_text(block="nocell", cell={k: None for k in CELL_TAGS})
    path = write_cif_text(tmp_path, first + cif_text(block="good"))
    with pytest.warns(UserWarning, match=r"used data block 'good'.*'nocell'"):
        crystal = read_cif(path)
    assert crystal.a == pytest.approx(4.212)


def test_blocks_without_atoms_are_ignored_silently(tmp_path):
    # a journal CIF: a publication block, then the structure
    text = "data_global\n_publ_section_title 'A paper'\n" + cif_text(block="I")
    path = write_cif_text(tmp_path, text)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_cif(path).a == pytest.approx(4.212)


# ------------------------------------------------------------------------------------------------
# 3. encoding
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["formula", "symbol", "comment"])
def test_latin1_cif_is_refused_naming_file_and_line(tmp_path, where):
    text = cif_text(extra="_chemical_formula_sum 'Mg O'")
    if where == "formula":
        text = text.replace("'Mg O'", "'Mg O caf\xe9'")
    elif where == "symbol":
        text = text.replace("'F m -3 m'", "'F m -3 m\xe9'")
    else:
        text = "# made at the Universit\xe9\n" + text
    path = write_cif_text(tmp_path, text.encode("latin-1"))
    refused(path, r"line \d+ is not UTF-8 text \(byte 0xe9\)")


def test_random_bytes_cif_is_refused_naming_file(tmp_path):
    path = write_cif_text(tmp_path, bytes(range(256)) * 4)
    refused(path, "not UTF-8|not a readable CIF")


def test_utf8_bom_and_gzip_are_read(tmp_path):
    text = cif_text()
    assert read_cif(write_cif_text(tmp_path, b"\xef\xbb\xbf" + text.encode(), "bom.cif")).a == pytest.approx(4.212)
    assert read_cif(write_cif_text(tmp_path, gzip.compress(text.encode()), "x.cif.gz")).a == pytest.approx(4.212)


# ------------------------------------------------------------------------------------------------
# 4. site values
# ------------------------------------------------------------------------------------------------
def mgo_with(column, value, tmp_path):
    j = SITE_COLUMNS.index(column)
    rows = [tuple(value if i == j else v for i, v in enumerate(MGO_ROWS[0])), MGO_ROWS[1]]
    return write_cif_text(tmp_path, cif_text(rows=rows))


@pytest.mark.parametrize("value", ["1e6", "nan", "inf", "-1", "abc", "150"])
def test_absurd_or_non_numeric_b_is_refused(tmp_path, value):
    message = refused(mgo_with("B_iso_or_equiv", value, tmp_path), r"site 'Mg1'.*B_iso")
    assert value in message


def test_large_b_warns(tmp_path):
    path = mgo_with("B_iso_or_equiv", "25", tmp_path)
    with pytest.warns(UserWarning, match=r"site 'Mg1' has B_iso 25 Å² > 20"):
        assert read_cif(path).sites[0].b_iso == 25.0


@pytest.mark.parametrize("value", ["nan", "abc", "-0.5", "1.5", "inf"])
def test_bad_occupancy_is_refused(tmp_path, value):
    message = refused(mgo_with("occupancy", value, tmp_path), r"site 'Mg1'.*occupancy")
    assert value in message


def test_non_numeric_u_is_refused(tmp_path):
    columns = ("label", "type_symbol", "fract_x", "fract_y", "fract_z", "U_iso_or_equiv")
    rows = [("Mg1", "Mg", "0", "0", "0", "nan"), ("O1", "O", "0.5", "0.5", "0.5", "0.01")]
    refused(write_cif_text(tmp_path, cif_text(columns=columns, rows=rows)), r"site 'Mg1'.*U_iso")


def test_duplicate_site_labels_are_refused(tmp_path):
    rows = [MGO_ROWS[0], ("Mg1",) + MGO_ROWS[1][1:]]
    refused(write_cif_text(tmp_path, cif_text(rows=rows)), r"site label 'Mg1' is used by 2 rows")


@pytest.mark.parametrize("value", ["inf", "nan", "?", "abc"])
def test_non_finite_coordinates_are_refused(tmp_path, value):
    refused(mgo_with("fract_x", value, tmp_path), r"site 'Mg1' has no numeric fractional coordinates")


def test_bad_default_b_is_refused(tmp_path):
    path = write_cif_text(tmp_path, cif_text())
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="default_b_iso"):
            read_cif(path, default_b_iso=bad)


def test_shared_collection_sample_is_still_read(shared_dir):
    """The refusals above touch none of the real CIFs (the whole collection was checked once)."""
    root = shared_dir / "data" / "cubic-cifs"
    with open(root / "index.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["id"])
    for row in rows[:: max(1, len(rows) // 100)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # origin-choice guesses and large B are warnings
            crystal = read_cif(root / row["source"] / f"{row['id']}.cif")
        lo, hi = crystal_module.CELL_EDGE_RANGE
        assert lo <= crystal.a <= hi, row["id"]


# ------------------------------------------------------------------------------------------------
# 5. measured patterns
# ------------------------------------------------------------------------------------------------
def npy(tmp_path, array, name="p.npy"):
    path = tmp_path / name
    np.save(path, array)
    return path


def rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape)


def test_non_square_pattern_is_refused_not_stretched(tmp_path):
    path = npy(tmp_path, rand((32, 48)))
    refused(path, r"not square: shape \(32, 48\)", PatternError, read_pattern)
    with pytest.raises(PatternError, match=r"not square"):
        check_pattern(rand((48, 32)))


def test_tiny_pattern_is_refused(tmp_path):
    refused(npy(tmp_path, rand((7, 7))), rf"\(7, 7\) is smaller than {MIN_PATTERN_SIDE}x{MIN_PATTERN_SIDE}",
            PatternError, read_pattern)
    assert check_pattern(rand((MIN_PATTERN_SIDE, MIN_PATTERN_SIDE))).shape == (MIN_PATTERN_SIDE,) * 2


def test_huge_pattern_is_refused_before_loading(tmp_path):
    path = npy(tmp_path, np.zeros((16, MAX_PATTERN_SIDE + 1), dtype=np.uint8))
    refused(path, rf"\(16, {MAX_PATTERN_SIDE + 1}\) is larger than {MAX_PATTERN_SIDE}", PatternError, read_pattern)


def test_all_nan_pattern_names_it(tmp_path):
    refused(npy(tmp_path, np.full((32, 32), np.nan)), "every pixel is NaN or infinite", PatternError, read_pattern)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (rand((32, 32)) > 0.5, "boolean"),
        (rand((32, 32)) + 1j * rand((32, 32), 1), "complex"),
        (np.array([["a"] * 32] * 32), "not numbers"),
    ],
)
def test_non_intensity_dtypes_are_refused(tmp_path, array, words):
    refused(npy(tmp_path, array), words, PatternError, read_pattern)
    with pytest.raises(PatternError, match=words):
        check_pattern(array)


def test_multi_page_tiff_is_refused_not_read_as_its_first_page(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, rand((3, 32, 32)).astype(np.float32), photometric="minisblack")
    refused(path, r"3 images", PatternError, read_pattern)


def test_npy_stack_is_refused(tmp_path):
    refused(npy(tmp_path, rand((2, 32, 32))), r"one 2-D image, got shape \(2, 32, 32\)", PatternError, read_pattern)


def test_values_beyond_float64_range_are_refused(tmp_path):
    big = rand((32, 32)) * 1e308
    big[0, 0] = -1.7e308
    refused(npy(tmp_path, big), "too large", PatternError, read_pattern)


def test_grey_alpha_png_uses_the_grey_channel(tmp_path):
    from PIL import Image

    grey = (rand((32, 32)) * 255).astype(np.uint8)
    alpha = np.full((32, 32), 255, dtype=np.uint8)
    path = tmp_path / "la.png"
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(path)
    data = read_pattern(path)
    assert np.corrcoef(data.ravel(), grey.ravel())[0, 1] > 0.999


def test_rgb_tiff_is_averaged_like_png(tmp_path):
    path = tmp_path / "rgb.tif"
    rgb = (rand((32, 32, 3)) * 255).astype(np.uint8)
    tifffile.imwrite(path, rgb, photometric="rgb")
    np.testing.assert_allclose(read_pattern(path), rgb.mean(axis=-1))
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    np.testing.assert_allclose(read_pattern(planar), rgb.mean(axis=-1))


def test_pattern_limits_are_documented_constants():
    assert (patterns_module.MIN_PATTERN_SIDE, patterns_module.MAX_PATTERN_SIDE) == (MIN_PATTERN_SIDE, MAX_PATTERN_SIDE)


def test_boolean_mask_reads_with_read_mask(tmp_path):
    read_mask = patterns_module.read_mask
    mask = rand((32, 32)) > 0.3
    path = tmp_path / "mask.tif"
    tifffile.imwrite(path, mask)
    assert np.array_equal(read_mask(path), mask)
    refused(path, "boolean", PatternError, read_pattern)
    np.save(tmp_path / "m.npy", np.ones((32, 32), dtype=bool))  # an all-true mask is a valid mask
    assert read_mask(tmp_path / "m.npy").all()
    refused(npy(tmp_path, np.zeros((32, 32), dtype=bool), "none.npy"), "no pixel", PatternError, read_mask)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ((rand((32, 32)), 0.0, 16, 1.0), "half_width"),
        ((rand((32, 32)), 1.0, 16, math.nan), "sim_half_width"),
        ((rand((32, 32)), 1.0, 0, 1.0), "size"),
        ((rand((2, 32, 32)), 1.0, 16, 1.0), "2-D"),
    ],
)
def test_resample_checks_its_arguments(args, words):
    with pytest.raises(ValueError, match=words):
        resample_pattern(*args)


# ------------------------------------------------------------------------------------------------
# FELIX files
# ------------------------------------------------------------------------------------------------
try:  # the FELIX plugin is optional: without it only its tests are skipped
    import lacbed_felix as lf
except ImportError:
    lf = None
needs_felix = pytest.mark.skipif(lf is None, reason="the FELIX plugin is not installed (pip install -e plugins/felix)")


def felix_inp_lines():
    inp = lf.FelixInput(pixel_count=8, half_width=1.0, voltage=200e3, thickness_initial=500.0,
                        thickness_final=900.0, thickness_delta=100.0, g_limit=1.0)
    return lf.format_felix_inp(inp).splitlines()


@needs_felix
@pytest.mark.parametrize(
    ("lineno", "value", "words"),
    [
        (28, "[inf,0,1]", "not an integer vector"),
        (28, "[1e999,0,1]", "not an integer vector"),
        (37, "0.0", "RDeltaThickness.* must be positive"),
        (14, "0", "IPixelCount.* must be"),
        (36, "1.0", "RFinalThickness.* below"),
        (37, "0.001", "more than 10000 thicknesses"),
        (27, "-1.0", "ROuterConvergenceAngle.* must be positive"),
        (31, "1e999", "not finite"),
    ],
)
def test_felix_inp_nonsense_values_are_refused(tmp_path, lineno, value, words):
    lines = felix_inp_lines()
    lines[lineno - 1] = lines[lineno - 1][:27] + value
    path = tmp_path / "felix.inp"
    path.write_text("\n".join(lines) + "\n")
    refused(path, words, lf.FelixInputError, lf.read_felix_inp)


@needs_felix
@pytest.mark.parametrize("reader", ["read_hkl", "read_structure_factors", "read_iteration_log"])
def test_felix_text_readers_name_the_file_on_bad_bytes(tmp_path, reader):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"[0,0,0]\n\xff\xfe garbage \x00\n")
    refused(path, "line 2", ValueError, getattr(lf, reader))


@needs_felix
def test_felix_hkl_empty_is_refused(tmp_path):
    path = tmp_path / "felix.hkl"
    path.write_text("")
    refused(path, "no reflections", ValueError, lf.read_hkl)


@needs_felix
def test_felix_structure_factors_non_finite_refused(tmp_path):
    path = tmp_path / "StructureFactors.txt"
    path.write_text("0 0 0 0 0 0 0\n2 0 0 1.5 0 nan 0\n")
    refused(path, "line 2", ValueError, lf.read_structure_factors)
    path.write_text("0 0 0 0 0 0 0\n2.5 0 0 1.5 0 1 0\n")
    refused(path, "line 2", ValueError, lf.read_structure_factors)


@needs_felix
def test_felix_image_non_finite_and_folder_refused(tmp_path):
    im = rand((4, 4))
    im[1, 2] = np.nan
    path = tmp_path / "X_+0+0+0.bin"
    im.astype("<f8").tofile(path)
    refused(path, "1 pixels are NaN or infinite", ValueError, lf.read_image)
    folder = tmp_path / "d.bin"
    folder.mkdir()
    refused(folder, "not a file", ValueError, lf.read_image)
