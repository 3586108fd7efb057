"""``lacbed_refine.io.felix_inp``: FELIX's ``felix.inp`` in both dialects, and ``felix.hkl``.

Checked here:
- the bundled fixtures (``tests/data/felix_inp``; no ``../shared`` needed): values a crystallographer
  can check by eye, the Weiss zone law for the image x direction and every written reflection, the
  two thickness rules, the same settings written by hand in both dialects giving equal inputs;
- the v1.3 writer against the FELIX plugin's: ``plugin_*.inp`` are the plugin's
  ``format_felix_inp`` output (plugin at git b004105) for the values in ``plugin_cases.json`` and
  must be reproduced byte for byte; when the plugin imports, the same comparison runs live, and its
  reader must agree with ours on every v1.3 file;
- round trips: v1.3 and Python-port text → :class:`FelixInput` → text → the same input, by example
  and as hypothesis properties, including v1.3 text and port text of the same values reading equal;
- bad input: one :class:`FelixInputError` line naming the file, the line and the value, never
  another exception (a hypothesis fuzz of mutated files);
- every ``felix.inp`` under ``shared/data/felix-reference/{runs,general}`` and ``shared/data/measured``
  (skipped without ``../shared``): their READMEs' settings (half-width 5/a, 64×64 at 0.5 Å⁻¹, zones,
  beam pools) and the ``metadata.json`` of each measured set.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lacbed_refine.io.felix_inp import (
    DEFAULT_DEBYE_WALLER,
    FelixInput,
    FelixInputError,
    detect_dialect,
    format_felix_inp,
    parse_felix_inp,
    read_felix_inp,
    read_hkl,
    write_felix_inp,
)

DATA = Path(__file__).parent / "data" / "felix_inp"
RUNS = ("CaF2", "GaAs", "GaAs-df", "MgAl2O4", "MgO", "MgO-df", "Si", "SrTiO3")
GENERAL = ("GaAs-110", "GaAs-110-bk", "GaN-100", "Si-111", "TiO2-001")
MEASURED = ("GaAs", "GeSn152", "LiNbO3")
COMPARED = tuple(f.name for f in dataclasses.fields(FelixInput) if f.compare)


def assert_same_input(a: FelixInput, b: FelixInput, *, rel: float = 0.0) -> None:
    """Field by field; floats within ``rel`` (0: exactly)."""
    for name in COMPARED:
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, float) and rel:
            assert math.isclose(va, vb, rel_tol=rel, abs_tol=1e-300), f"{name}: {va!r} != {vb!r}"
        else:
            assert va == vb, f"{name}: {va!r} != {vb!r}"


def plugin_inp(*, skip: bool = True):
    """The FELIX plugin's ``_inp`` module; when the plugin cannot be imported, a skip (or None)."""
    try:
        from lacbed_felix import _inp
    except Exception as exc:  # not installed, or broken while its modules move
        if skip:
            pytest.skip(f"FELIX plugin not importable: {type(exc).__name__}: {exc}")
        return None
    return _inp


def plugin_cases() -> dict:
    cases = json.loads((DATA / "plugin_cases.json").read_text())
    for case in cases.values():
        for key in ("beam_direction", "x_direction", "normal_direction", "atomic_sites"):
            if key in case["values"]:
                case["values"][key] = tuple(case["values"][key])
    return cases


# ------------------------------------------------------------------------------------------------
# The bundled fixtures
# ------------------------------------------------------------------------------------------------
def test_v13_fixture_gaas_001_dark_field():
    """runs/GaAs-df: GaAs [001], x = [100], 200 kV, 128x128, half-width 5/a, 500-2000 Å, no absorption."""
    inp = read_felix_inp(DATA / "v13_GaAs-df")
    assert inp.dialect == "v1.3" and inp.source.endswith("felix.inp")
    s = inp.simulation_settings()
    assert s.zone == (0, 0, 1) and s.x_direction == (1, 0, 0) and s.normal == (0, 0, 1)
    assert s.voltage_kv == 200.0 and inp.voltage == 200e3
    assert s.image_radius == 64 and s.image_size == 128 == inp.size
    assert s.half_width == 0.884486114 and s.half_width * 5.653 == pytest.approx(5.0, rel=1e-6)
    assert s.pixel_step == pytest.approx(0.884486114 / 64)
    # λ(200 kV) = 0.025079 Å: the half-angle is asin(λ·q) ≈ 22.2 mrad
    assert s.convergence_half_angle_mrad == pytest.approx(1e3 * math.asin(0.0250793 * 0.884486114), rel=1e-5)
    np.testing.assert_array_equal(s.thicknesses, [500.0, 1000.0, 1500.0, 2000.0])
    assert s.absorption == "none" and s.absorption_percent is None and s.form_factors == "kirkland"
    assert s.g_limit == 1.58323 and s.n_beams is None and s.strong_beams == 68 and s.weak_beams == 0
    assert s.debye_waller == 0.5 and s.debye_model == "isotropic" and not s.holz
    assert inp.refine_mode == "S" and inp.simulation_only and inp.atomic_sites == (1,)
    hkl = read_hkl(DATA / "v13_GaAs-df" / "felix.hkl")
    assert hkl.dtype == np.int64 and hkl.shape == (8, 3)
    assert hkl.tolist() == [[0, 0, 0], [2, 0, 0], [-2, 0, 0], [0, 2, 0], [2, 2, 0], [-2, 2, 0], [4, 0, 0], [4, 2, 0]]


def test_python_fixture_measured_gaas():
    """measured/GaAs: GaAs at a <110> zone ([-110]), x = [110], 84x84 at 0.983 Å⁻¹, Bird-King, 900 Å."""
    inp = read_felix_inp(DATA / "python_GaAs" / "felix.inp")
    assert inp.dialect == "python"
    s = inp.simulation_settings()
    assert s.zone == (-1, 1, 0) and sorted(map(abs, s.zone)) == [0, 1, 1]  # a <110> zone axis
    assert s.x_direction == (1, 1, 0) and s.normal == (-1, 1, 0)
    assert sum(a * b for a, b in zip(s.zone, s.x_direction)) == 0  # x lies in the zone
    assert s.voltage_kv == 200.0 and s.image_radius == 42 and s.image_size == 84
    assert s.half_width == 0.983 and s.pixel_step == pytest.approx(0.983 / 42)
    np.testing.assert_array_equal(s.thicknesses, [900.0])  # 900-910 Å in steps of 50: one thickness
    assert s.absorption == "bird-king" and s.absorption_percent is None  # absorption_per 10 is unused
    assert s.form_factors == "kirkland" and s.g_limit is None and s.n_beams == 200 and s.strong_beams == 50
    assert s.debye_waller == 0.0
    # the port's codes, translated: atomic_sites [1,2] are 0-based, refinement_scale 0.05 is 5 %
    assert inp.atomic_sites == (2, 3) and inp.simplex_length_scale == 5.0
    assert (inp.byte_size, inp.refine_method, inp.correlation_flag, inp.image_processing_flag) == (2, 3, 2, 1)
    assert (inp.n_ugs, inp.plot, inp.debug, inp.precision, inp.exit_criteria) == (40, 1, 0, 2e-5, 1e-4)
    # felix.hkl: the port's list leaves 000 out; this file ends with a blank line (tolerated at the end)
    assert (DATA / "python_GaAs" / "felix.hkl").read_text().endswith("\n\n")
    hkl = read_hkl(DATA / "python_GaAs")
    assert hkl.shape == (15, 3) and not (hkl == 0).all(axis=1).any()
    assert hkl[:3].tolist() == [[0, 0, 2], [0, 0, 4], [0, 0, -2]] and hkl[-1].tolist() == [4, 4, 0]
    assert not (hkl @ np.array(s.zone)).any()  # every disc is in the zero-order Laue zone


def test_python_fixture_linbo3_help_block_and_port_only_codes(tmp_path):
    """measured/LiNbO3: a help block (with an '=' in its prose) that the port ignores, kappa form factors
    and refinement letters only the port has, and 11 thicknesses 1120-1320 Å."""
    text = (DATA / "python_LiNbO3" / "felix.inp").read_text()
    assert "Typical exit criteria 0.05% = 0.0005" in text
    inp = read_felix_inp(DATA / "python_LiNbO3" / "felix.inp")
    s = inp.simulation_settings()
    assert s.zone == (1, -1, 0) and s.x_direction == (0, 0, -1) and s.image_size == 168 and s.half_width == 0.725
    assert s.form_factors == "kappa-coppens" and inp.scatter_factor_method == 4
    assert inp.refine_mode == "EJK" and inp.atomic_sites == (3,) and inp.precision == -0.0025 and inp.write_flag == 0
    np.testing.assert_array_equal(s.thicknesses, np.arange(1120.0, 1321.0, 20.0))
    assert s.thicknesses[-1] == 1320.0 and len(s.thicknesses) == 11
    hkl = read_hkl(DATA / "python_LiNbO3")
    assert hkl.shape == (24, 3) and not (hkl @ np.array(s.zone)).any()
    # FELIX v1.3 has neither kappa form factors nor refinement letter E: refused, not dropped
    with pytest.raises(FelixInputError, match="kappa"):
        format_felix_inp(dataclasses.replace(inp, refine_mode="S"))
    with pytest.raises(FelixInputError, match="aborts on E"):
        format_felix_inp(dataclasses.replace(inp, scatter_factor_method=0))
    # but the port's own layout holds them
    back = parse_felix_inp(format_felix_inp(inp, dialect="python"), source="back.inp")
    assert_same_input(back, inp, rel=1e-15)


@pytest.mark.parametrize("pair", ["pair_GaAs-110", "pair_refine"])
def test_both_dialects_of_the_same_settings_read_equal(pair):
    v13, port = read_felix_inp(DATA / pair / "v13.inp"), read_felix_inp(DATA / pair / "python.inp")
    assert (v13.dialect, port.dialect) == ("v1.3", "python")
    assert v13 == port
    assert_same_input(v13, port)
    assert detect_dialect((DATA / pair / "v13.inp").read_text()) == "v1.3"
    assert detect_dialect((DATA / pair / "python.inp").read_text()) == "python"


def test_pair_refine_translates_the_port_codes():
    port = read_felix_inp(DATA / "pair_refine" / "python.inp")
    # Peng is 2 in the port, 1 in FELIX; sites [0, 2] are FELIX's (1,3); 'B,D' is "BD"; 0.04 is 4 %
    assert port.scatter_factor_method == 1 and port.simulation_settings().form_factors == "peng"
    assert port.atomic_sites == (1, 3) and port.refine_mode == "BD" and port.simplex_length_scale == 4.0
    s = port.simulation_settings()
    assert s.absorption == "proportional" and s.absorption_percent == 7.8


def test_thickness_rules_differ_between_the_programs():
    """FELIX: NINT((tf-ti)/dt)+1 values (tf included); the port: arange(ti, tf, dt) if tf > ti+dt, else ti."""
    inp = FelixInput(pixel_count=8, half_width=1.0, voltage=200e3, thickness_initial=500.0,
                     thickness_final=2000.0, thickness_delta=500.0)
    np.testing.assert_array_equal(inp.thickness_grid("v1.3"), [500, 1000, 1500, 2000])
    np.testing.assert_array_equal(inp.thickness_grid("python"), [500, 1000, 1500])
    np.testing.assert_array_equal(inp.thickness_grid(), inp.thickness_grid("v1.3"))  # built in code: v1.3
    assert inp.thicknesses == (500.0, 1000.0, 1500.0, 2000.0)
    port = dataclasses.replace(inp, dialect="python")
    assert port == inp  # the dialect is not a setting ...
    np.testing.assert_array_equal(port.simulation_settings().thicknesses, [500, 1000, 1500])  # ... but a rule
    np.testing.assert_array_equal(port.simulation_settings(thickness_rule="v1.3").thicknesses, [500, 1000, 1500, 2000])
    one = dataclasses.replace(inp, thickness_final=1000.0)  # tf == ti + dt: the port simulates ti alone
    np.testing.assert_array_equal(one.thickness_grid("python"), [500.0])
    np.testing.assert_array_equal(one.thickness_grid("v1.3"), [500.0, 1000.0])
    with pytest.raises(ValueError, match="rule"):
        inp.thickness_grid("fortran")


def test_settings_refuse_an_x_direction_outside_the_zone():
    inp = FelixInput(pixel_count=8, half_width=1.0, voltage=200e3, thickness_initial=500.0, thickness_final=500.0,
                     thickness_delta=10.0, beam_direction=(1, 1, 0), x_direction=(1, 0, 0), source="x.inp")
    with pytest.raises(FelixInputError, match=r"x\.inp: x_direction \[1,0,0\] is not perpendicular .*\[1,1,0\]"):
        inp.simulation_settings()
    with pytest.raises(FelixInputError, match=r"beam_direction is \[0,0,0\]"):
        dataclasses.replace(inp, beam_direction=(0, 0, 0)).simulation_settings()
    assert dataclasses.replace(inp, x_direction=(0, 0, 1)).simulation_settings().x_direction == (0, 0, 1)


def test_defaults_and_absorption_names():
    inp = FelixInput(pixel_count=8, half_width=1.0, voltage=200e3, thickness_initial=1.0, thickness_final=1.0,
                     thickness_delta=1.0)
    names = [dataclasses.replace(inp, absorb_flag=f).simulation_settings().absorption for f in (0, 1, 2, 7)]
    assert names == ["none", "proportional", "bird-king", "none"]  # FELIX reads any other flag as none
    forms = [dataclasses.replace(inp, scatter_factor_method=f).simulation_settings().form_factors for f in range(7)]
    assert forms == ["kirkland", "peng", "doyle-turner", "lobato", "kappa-coppens", "kappa-bunge", None]
    g = dataclasses.replace(inp, g_limit=0.0, min_reflection_pool=300).simulation_settings()
    assert g.g_limit is None and g.n_beams == 300


def test_core_module_does_not_import_the_plugin():
    code = (
        "import sys, lacbed_refine.io.felix_inp\n"
        "bad = sorted(m for m in sys.modules if m.startswith('lacbed_felix'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_default_debye_waller_is_the_library_default_b():
    try:
        from lacbed_refine.structure.crystal import DEFAULT_B_ISO
    except ImportError:
        try:
            from lacbed_refine.crystal import DEFAULT_B_ISO
        except ImportError as exc:
            pytest.skip(f"the library's DEFAULT_B_ISO is not importable: {exc}")
    assert DEFAULT_DEBYE_WALLER == DEFAULT_B_ISO
    assert FelixInput(1, 1.0, 1.0, 1.0, 1.0, 1.0).debye_waller == DEFAULT_B_ISO


# ------------------------------------------------------------------------------------------------
# The v1.3 writer is the plugin's
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(plugin_cases()))
def test_writer_reproduces_the_plugin_output_byte_for_byte(name):
    case = plugin_cases()[name]
    inp = FelixInput(**case["values"])
    golden = (DATA / f"plugin_{name}.inp").read_bytes()
    ours = format_felix_inp(inp, title=case.get("title")).encode("ascii")
    if case.get("title"):
        assert ours == golden
    else:  # the default title names the writer: only line 1 differs
        assert ours.split(b"\n")[1:] == golden.split(b"\n")[1:]
        assert ours.split(b"\n")[0] == b"# felix.inp written by lacbed-refine 0.1.0 (FELIX v1.3 layout)"
        plugin_title = golden.split(b"\n")[0].decode()[2:]
        assert format_felix_inp(inp, title=plugin_title).encode("ascii") == golden
    # and it reads back (reals that need more than 17 characters are rounded, as in the plugin; the
    # refinement letters in FELIX's order)
    back = parse_felix_inp(golden.decode("ascii"), source=f"plugin_{name}.inp")
    assert_same_input(back, dataclasses.replace(inp, refine_mode="".join(sorted(inp.refine_mode))), rel=1e-14)


def test_writer_matches_the_live_plugin():
    lf = plugin_inp()
    for name, case in plugin_cases().items():
        ours = format_felix_inp(FelixInput(**case["values"]), title=case.get("title") or "t")
        theirs = lf.format_felix_inp(lf.FelixInput(**case["values"]), title=case.get("title") or "t")
        assert ours == theirs, name
    # the same values refused by both
    base = plugin_cases()["gaas001"]["values"]
    for bad in ({"refine_mode": "BE"}, {"refine_mode": "AB"}, {"pixel_count": 500}, {"half_width": 0.0},
                {"g_limit": 0.0, "min_reflection_pool": 10}, {"precision": math.nan}, {"write_flag": 10**15},
                {"x_direction": (1.5, 0, 0)}, {"atomic_sites": (0,)}):
        with pytest.raises(FelixInputError):
            format_felix_inp(FelixInput(**{**base, **bad}))
        with pytest.raises(lf.FelixInputError):
            lf.format_felix_inp(lf.FelixInput(**{**base, **bad}))


def test_fields_and_defaults_are_the_plugins():
    # the plugin keeps no copy of its own: it uses the core's class (one definition of the format)
    lf = plugin_inp()
    assert lf.FelixInput is FelixInput


def test_reader_matches_the_live_plugin_reader():
    lf = plugin_inp()
    for path in (DATA / "v13_GaAs-df" / "felix.inp", DATA / "pair_GaAs-110" / "v13.inp",
                 DATA / "pair_refine" / "v13.inp", *DATA.glob("plugin_*.inp")):
        theirs, ours = lf.read_felix_inp(path), read_felix_inp(path)
        for name in dataclasses.fields(lf.FelixInput):
            assert getattr(ours, name.name) == getattr(theirs, name.name), (path.name, name.name)


# ------------------------------------------------------------------------------------------------
# Round trips
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["v13_GaAs-df/felix.inp", "pair_refine/v13.inp", "pair_GaAs-110/python.inp"])
def test_round_trip_through_both_writers(path, tmp_path):
    inp = read_felix_inp(DATA / path)
    for dialect in ("v1.3", "python"):
        out = write_felix_inp(inp, tmp_path / f"{dialect}.inp", dialect=dialect)
        back = read_felix_inp(out)
        assert back.dialect == dialect and back.source == str(out)
        assert_same_input(back, inp)


def test_round_trip_of_the_measured_gaas_into_v13(tmp_path):
    inp = read_felix_inp(DATA / "python_GaAs" / "felix.inp")
    back = read_felix_inp(write_felix_inp(inp, tmp_path / "felix.inp"))
    # plot and debug are the port's run control; v1.3 has no line for them
    assert back == dataclasses.replace(inp, plot=0)
    assert back.simulation_settings().half_width == inp.simulation_settings().half_width
    # FELIX's rule and the port's agree on this file's one thickness
    np.testing.assert_array_equal(back.simulation_settings().thicknesses, [900.0])



SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def decimals(lo: int, hi: int, places: int):
    """Reals n/10**places: written exactly in FELIX's 17-character field when |n| < 1e9."""
    return st.integers(lo, hi).map(lambda n: n / 10**places)


@st.composite
def felix_inputs(draw, *, port_only: bool = False):
    """A FelixInput both writers accept (and, with ``port_only``, settings only the port can hold)."""
    ti = draw(st.integers(1, 10**6))
    dt = draw(st.integers(1, 10**5))
    tf = ti + dt * draw(st.integers(0, 200)) + draw(st.integers(0, dt - 1))
    strong = draw(st.integers(0, 10**6))
    g_limit = draw(st.one_of(st.just(0.0), decimals(1, 10**7, 6)))
    pool = draw(st.integers(strong + 1, strong + 10**6)) if g_limit <= 0 else draw(st.integers(-5, 10**6))
    letters = "ABCDEFGHIJKO" if port_only else "BCDFH"  # v1.3: A alone; E, G, I abort FELIX HEAD
    mode = draw(st.one_of(st.just("S"), st.just("A"), st.sets(st.sampled_from(letters), min_size=1).map(
        lambda s: "".join(c for c in letters if c in s))))
    sites = tuple(draw(st.lists(st.integers(1, 60), min_size=1 if "B" in mode else 0, max_size=5)))
    small = st.integers(-(10**6), 10**6)
    vec = st.tuples(*[st.integers(-30, 30)] * 3)
    values = dict(
        pixel_count=draw(st.integers(1, 499)),
        half_width=draw(decimals(1, 10**7, 6)),
        voltage=draw(st.integers(10, 30000)) * 100.0,
        thickness_initial=ti / 100, thickness_final=tf / 100, thickness_delta=dt / 100,
        min_reflection_pool=pool, min_strong_beams=strong, min_weak_beams=draw(small), g_limit=g_limit,
        debye_waller=draw(decimals(-(10**9), 10**9, 6)), absorb_flag=draw(st.integers(0, 2)),
        absorption_percent=draw(decimals(-(10**9), 10**9, 6)),
        scatter_factor_method=draw(st.integers(0, 5 if port_only else 3)),
        write_flag=draw(small), holz_flag=draw(st.integers(0, 1)), byte_size=draw(st.sampled_from([2, 8])),
        beam_direction=draw(vec), x_direction=draw(vec), normal_direction=draw(vec),
        acceptance_angle=draw(decimals(-(10**9), 10**9, 6)), precision=draw(decimals(-(10**9), 10**9, 8)),
        refine_mode=mode, weighting_flag=draw(small), refine_method=draw(small), correlation_flag=draw(small),
        image_processing_flag=draw(small), blur_radius=draw(decimals(-(10**9), 10**9, 6)), n_ugs=draw(small),
        atomic_sites=sites, print_every=draw(small), simplex_length_scale=draw(decimals(-(10**9), 10**9, 6)),
        exit_criteria=draw(decimals(-(10**9), 10**9, 8)),
    )
    if port_only:
        values.update(debye_model=draw(st.integers(0, 1)), plot=draw(small), debug=draw(small))
    return FelixInput(**values)


@SETTINGS
@given(inp=felix_inputs())
def test_property_v13_round_trip_and_both_dialects_agree(inp):
    v13 = parse_felix_inp(format_felix_inp(inp), source="v13.inp")
    # voltage is written in kV: V -> kV -> V can move the last bit, as in the plugin
    assert_same_input(dataclasses.replace(v13, voltage=inp.voltage), inp)
    assert math.isclose(v13.voltage, inp.voltage, rel_tol=1e-15)
    port = parse_felix_inp(format_felix_inp(inp, dialect="python"), source="port.inp")
    assert (v13.dialect, port.dialect) == ("v1.3", "python")
    assert_same_input(port, v13, rel=1e-14)  # the same settings, whichever layout carried them


@SETTINGS
@given(inp=felix_inputs(port_only=True))
def test_property_python_round_trip(inp):
    back = parse_felix_inp(format_felix_inp(inp, dialect="python"), source="port.inp")
    assert_same_input(back, inp, rel=1e-14)
    assert back.refine_mode == inp.refine_mode and back.atomic_sites == inp.atomic_sites


# ------------------------------------------------------------------------------------------------
# Bad input: one FelixInputError naming file, line and value
# ------------------------------------------------------------------------------------------------
def mutate(text: str, lineno: int, new: str | None) -> str:
    """Replace line ``lineno`` (1-based) with ``new``, or delete it (None)."""
    lines = text.split("\n")
    if new is None:
        del lines[lineno - 1]
    else:
        lines[lineno - 1] = new
    return "\n".join(lines)


def port_line(text: str, key: str) -> int:
    return next(i for i, ln in enumerate(text.split("\n"), 1) if ln.split("=")[0].strip() == key)


V13 = (DATA / "v13_GaAs-df" / "felix.inp").read_text()
PORT = (DATA / "python_GaAs" / "felix.inp").read_text()

V13_BAD = [  # (line, new text or None to delete, line named in the message, text the message shows)
    (14, "IPixelCount               = abc", 14, "abc"),
    (14, "IPixelCount               = 0", 14, "0 must be at least 1"),
    (14, "IPixelCount               = 6.4", 14, "6.4"),
    (27, "ROuterConvergenceAngle    = nan", 27, "nan"),
    (27, "ROuterConvergenceAngle    = -0.5", 27, "-0.5"),
    (31, "RAcceleratingVoltage (kV) = 1e999", 31, "1e999"),
    (28, "IIncidentBeamDirection    = [0,0]", 28, "[0,0]"),
    (29, "IXDirection               = [1,0,0.5]", 29, "[1,0,0.5]"),
    (30, "INormalDirection          = 0 0 1", 30, "0 0 1"),
    (37, "RDeltaThickness           = -500.0", 37, "-500"),
    (36, "RFinalThickness           = 400.0", 36, "400"),
    (48, "IAtomicSites              = (1,x)", 48, "(1,x)"),
    (48, "IAtomicSites              = (0)", 48, "[0]"),
    (20, None, 20, "''"),  # the older layout without RgLimit: every later line shifts
    (7, "IFooFLAG                  = 1", 7, "IFooFLAG"),
    (18, "IMinStrongBeams = ", 18, "IMinStrongBeams"),  # blank I15 is 0 for FELIX: accepted
]


@pytest.mark.parametrize("lineno,new,named,shown", V13_BAD)
def test_bad_v13_line_names_file_line_and_value(lineno, new, named, shown, tmp_path):
    path = tmp_path / "felix.inp"
    path.write_text(mutate(V13, lineno, new))
    if new == "IMinStrongBeams = ":  # Fortran reads a blank integer field as 0, and so do we
        assert read_felix_inp(path).min_strong_beams == 0
        return
    with pytest.raises(FelixInputError) as err:
        read_felix_inp(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert f"line {named}" in msg and shown in msg


def test_truncated_v13_file_names_the_missing_line(tmp_path):
    path = tmp_path / "felix.inp"
    path.write_text("\n".join(V13.split("\n")[:30]))
    with pytest.raises(FelixInputError, match=r"felix\.inp: 30 lines, expected RAcceleratingVoltage on line 31"):
        read_felix_inp(path)


PORT_BAD = [  # (key, new line or None to delete, text the message shows)
    ("image_radius", "image_radius              = 42.5", "42.5"),
    ("image_radius", "image_radius              = True", "True"),
    ("image_radius", "image_radius              = 0", "0 must be at least 1"),
    ("image_radius", "image_radius              =", "no value"),
    ("image_radius", "image_radius 42", "image_radius 42"),
    ("image_radius", "Image_radius              = 42", "did you mean 'image_radius'"),
    ("convergence_angle", "convergence_angle         = nan", "nan"),
    ("convergence_angle", "convergence_angle         = float('nan')", "float('nan')"),
    ("convergence_angle", "convergence_angle         = 1e999", "1e999"),
    ("convergence_angle", "convergence_angle         = '0.983'", "'0.983'"),
    ("incident_beam_direction", "incident_beam_direction   = [-1, 1]", "[-1, 1]"),
    ("incident_beam_direction", "incident_beam_direction   = [-1.5, 1, 0]", "[-1.5, 1, 0]"),
    ("incident_beam_direction", "incident_beam_direction   = [[[[[[[[[[[[[[", "[[[["),
    ("refine_mode", "refine_mode               = S", "S"),
    ("refine_mode", "refine_mode               = 'SZ'", "'Z'"),
    ("absorption_method", "absorption_method         = 3", "3"),
    ("scatter_factor_method", "scatter_factor_method     = 6", "6"),
    ("atomic_sites", "atomic_sites              = [-1]", "[-1]"),
    ("final_thickness", "final_thickness           = 800.0", "800"),
    ("delta_thickness", "delta_thickness           = 0.0", "0 Å must be positive"),
    ("plot", "foo_bar                   = 1", "unknown key 'foo_bar'"),
    ("plot", "n_frames                  = 900", "cRED"),
    ("debug", "debug                     = 0\nimage_radius              = 40", "repeats line"),
    ("normal_direction", "normal                    = [-1, 1, 0]", "repeats line"),
    ("normal_direction", None, "missing key(s) normal"),
    ("convergence_angle", None, "missing key(s) convergence_angle"),
]


@pytest.mark.parametrize("key,new,shown", PORT_BAD)
def test_bad_python_line_names_file_line_and_value(key, new, shown, tmp_path):
    lineno = port_line(PORT, key)
    text = mutate(PORT, lineno, new)
    if key == "normal_direction" and new is not None:  # a second name for the same setting
        text = text + "\nnormal_direction          = [-1, 1, 0]"
    path = tmp_path / "felix.inp"
    path.write_text(text)
    with pytest.raises(FelixInputError) as err:
        read_felix_inp(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg
    assert shown in msg
    if new is not None:  # the line named: the bad one, or the second of two lines giving one setting
        named = {"debug": lineno + 1, "normal_direction": len(text.split("\n"))}.get(key, lineno)
        assert f"line {named} " in msg


def test_neither_or_both_dialects_are_refused(tmp_path):
    with pytest.raises(FelixInputError, match=r"^<text>: not a felix\.inp"):
        parse_felix_inp("")
    with pytest.raises(FelixInputError, match=r"^junk\.inp: not a felix\.inp"):
        parse_felix_inp("hello\n= 3\n\x00\x01", source="junk.inp")
    mixed = PORT + "\nIWriteFLAG                = 1\n"
    with pytest.raises(FelixInputError, match=r"^mixed\.inp: mixes the two felix\.inp layouts: line \d+ has .*'IWriteFLAG'"):
        parse_felix_inp(mixed, source="mixed.inp")
    (tmp_path / "felix.inp").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(FelixInputError, match="felix.inp: not a felix.inp"):
        read_felix_inp(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_felix_inp(tmp_path / "nothing.inp")


def test_inline_comment_and_spacing_are_read_as_the_port_reads_them():
    text = PORT.replace("image_radius              = 42", "image_radius=42   # the radius")
    assert parse_felix_inp(text).pixel_count == 42


@pytest.mark.parametrize("written,read", [("'BS'", "S"), ("'D,B'", "BD"), ("'K, J,E'", "EJK"), ("'O'", "O")])
def test_port_refinement_letters(written, read):
    """The port: an S anywhere means simulation only; otherwise the letters, in FELIX's order."""
    text = PORT.replace("refine_mode               = 'S'", f"refine_mode = {written}")
    assert parse_felix_inp(text).refine_mode == read


LINE_EDITS = st.sampled_from(["", "=", " = ", "1", "-1", "0.0", "nan", "inf", "1e999", "[1,2,3]", "[1,2]", "(1,2)",
                              "'S'", "S", "[", "]", "(", "\x00", "é", "2.5", "-0", "1d3", "True", "None", "#"])


@SETTINGS
@given(which=st.sampled_from(["v13", "port"]), data=st.data())
def test_property_mutated_files_give_felix_input_or_one_error_line(which, data):
    lines = (V13 if which == "v13" else PORT).split("\n")
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["value", "replace", "delete", "insert", "append"]))
        bit = data.draw(LINE_EDITS)
        if action == "value" and "=" in lines[i]:
            lines[i] = lines[i].split("=", 1)[0] + "= " + bit
        elif action == "replace":
            lines[i] = bit
        elif action == "delete":
            del lines[i]
        elif action == "insert":
            lines.insert(i, lines[i] if bit == "#" else bit)
        else:
            lines[i] = lines[i] + bit
        if not lines:
            lines = [""]
    try:
        inp = parse_felix_inp("\n".join(lines), source="fuzz.inp")
    except FelixInputError as exc:
        msg = str(exc)
        assert msg.startswith("fuzz.inp: ") and "\n" not in msg and len(msg) < 400
        return
    assert inp.pixel_count >= 1 and inp.half_width > 0 and inp.thickness_delta > 0
    try:
        s = inp.simulation_settings()
    except FelixInputError as exc:
        assert str(exc).startswith("fuzz.inp: ")
        return
    assert np.isfinite(s.thicknesses).all() and len(s.thicknesses) >= 1 and math.isfinite(s.pixel_step)


@pytest.mark.parametrize("content,line,shown", [
    (b"[0,0,0]\n[1,1,x]\n", 2, "'[1,1,x]'"),
    (b"[0,0,0]\n\n[2,0,0]\n", 2, "blank"),
    (b"[0,0,0]\n1 1 1\n", 2, "'1 1 1'"),
    (b"[0,0,0]\n[1,1]\n", 2, "'[1,1]'"),
    (b"[0,0,0]\n[2,0,0]\xff\n", 2, "0xff"),
])
def test_bad_hkl_names_file_line_and_value(content, line, shown, tmp_path):
    path = tmp_path / "felix.hkl"
    path.write_bytes(content)
    with pytest.raises(FelixInputError) as err:
        read_hkl(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: line {line} ") and shown in msg and "\n" not in msg


def test_hkl_layouts_of_both_programs(tmp_path):
    path = tmp_path / "felix.hkl"
    path.write_text("[0,0,0]\r\n[ -1, 1 ,-1]\r\n[2,-2,0] extra text\n\n  \n")
    np.testing.assert_array_equal(read_hkl(path), [[0, 0, 0], [-1, 1, -1], [2, -2, 0]])
    path.write_text("\n\n")
    with pytest.raises(FelixInputError, match="no reflections"):
        read_hkl(path)
    with pytest.raises(FileNotFoundError):
        read_hkl(tmp_path / "none.hkl")


# ------------------------------------------------------------------------------------------------
# Every felix.inp in ../shared
# ------------------------------------------------------------------------------------------------
def cell_a(cif: Path) -> float:
    for line in cif.read_text().splitlines():
        if line.startswith("_cell_length_a"):
            return float(line.split()[1].split("(")[0])
    raise AssertionError(f"{cif}: no _cell_length_a")


def test_every_shared_felix_inp_reads(shared_dir):
    data = shared_dir / "data"
    paths = sorted((data / "felix-reference" / "runs").glob("*/felix.inp"))
    paths += sorted((data / "felix-reference" / "general").glob("*/felix.inp"))
    paths += sorted((data / "measured").glob("*/felix.inp"))
    assert len(paths) >= len(RUNS) + len(GENERAL) + len(MEASURED)
    lf = plugin_inp(skip=False)
    for path in paths:
        inp = read_felix_inp(path)
        assert inp.dialect == ("python" if path.parent.parent.name == "measured" else "v1.3"), path
        s = inp.simulation_settings()  # x in the zone, directions non-zero
        assert s.voltage_kv == 200.0 and s.image_size == 2 * s.image_radius and s.thicknesses.size >= 1
        hkl = read_hkl(path.parent)
        assert not (hkl @ np.array(s.zone)).any(), f"{path}: a reflection outside the zero-order Laue zone"
        back = parse_felix_inp(format_felix_inp(inp, dialect="python"), source="back")
        assert_same_input(back, inp, rel=1e-14)
        if inp.dialect == "v1.3":
            assert_same_input(parse_felix_inp(format_felix_inp(inp), source="back"), inp, rel=1e-14)
            if lf is not None:  # the plugin's reader agrees, field by field
                theirs = lf.read_felix_inp(path)
                for f in dataclasses.fields(lf.FelixInput):
                    assert getattr(inp, f.name) == getattr(theirs, f.name), (path, f.name)


@pytest.mark.parametrize("name", RUNS)
def test_shared_reference_runs_match_their_readme(name, shared_dir):
    """runs/README: [001], x = [100], 200 kV, 128x128 (IPixelCount 64), no absorption, Kirkland,
    half-width 5/a (the (10 0 0) Bragg condition at the edge), 500-2000 Å, IMinStrongBeams 68
    (SrTiO3: 112 of a 113-beam pool), pools limited by RgLimit."""
    folder = shared_dir / "data" / "felix-reference" / "runs" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    s = read_felix_inp(folder).simulation_settings()
    assert (s.zone, s.x_direction, s.normal) == ((0, 0, 1), (1, 0, 0), (0, 0, 1))
    assert (s.voltage_kv, s.image_radius, s.image_size) == (200.0, 64, 128)
    assert s.absorption == "none" and s.form_factors == "kirkland" and s.debye_waller == 0.5
    assert s.half_width * cell_a(folder / "felix.cif") == pytest.approx(5.0, rel=1e-6)
    np.testing.assert_array_equal(s.thicknesses, [500.0, 1000.0, 1500.0, 2000.0])
    assert s.strong_beams == (112 if name == "SrTiO3" else 68) and s.g_limit > 0 and s.n_beams is None
    assert len(read_hkl(folder)) == (8 if name.endswith("-df") else 1)


GENERAL_TABLE = {  # general/README.md: beam [uvw], x (hkl), RgLimit, IMinStrongBeams, absorption, reflections
    "GaAs-110": ((1, 1, 0), (0, 0, 1), 1.46, 90, "none", 9),
    "GaAs-110-bk": ((1, 1, 0), (0, 0, 1), 1.46, 90, "bird-king", 9),
    "Si-111": ((1, 1, 1), (1, -1, 0), 1.8, 72, "none", 7),
    "TiO2-001": ((0, 0, 1), (1, 0, 0), 1.14, 108, "none", 7),
    "GaN-100": ((1, 0, 0), (0, 0, 1), 1.4, 106, "none", 7),
}


@pytest.mark.parametrize("name", GENERAL)
def test_shared_general_runs_match_their_readme(name, shared_dir):
    folder = shared_dir / "data" / "felix-reference" / "general" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    s = read_felix_inp(folder).simulation_settings()
    zone, x, g_limit, strong, absorption, n_refl = GENERAL_TABLE[name]
    assert (s.zone, s.x_direction, s.normal) == (zone, x, zone)  # INormalDirection = beam
    assert (s.g_limit, s.strong_beams, s.absorption, s.form_factors) == (g_limit, strong, absorption, "kirkland")
    # 64x64 at half-width 0.5 Å⁻¹: 0.015625 Å⁻¹ per pixel, ≈12.5 mrad at 200 kV
    assert (s.image_size, s.half_width, s.pixel_step) == (64, 0.5, 0.015625)
    assert s.convergence_half_angle_mrad == pytest.approx(12.5, abs=0.1)
    np.testing.assert_array_equal(s.thicknesses, [500.0, 1000.0, 1500.0, 2000.0])
    hkl = read_hkl(folder)
    assert len(hkl) == n_refl and hkl[0].tolist() == [0, 0, 0]


PORT_TO_FIELD = {  # metadata.json felix_inp key -> (FelixInput field, value the file's value means there)
    "write_flag": ("write_flag", lambda v: v),
    "scatter_factor_method": ("scatter_factor_method", {0: 0, 1: 3, 2: 1, 3: 2, 4: 4, 5: 5}.get),
    "holz_flag": ("holz_flag", lambda v: v),
    "absorption_method": ("absorb_flag", lambda v: v),
    "byte_size": ("byte_size", lambda v: v),
    "Debye_model": ("debye_model", lambda v: v),
    "image_radius": ("pixel_count", lambda v: v),
    "min_reflection_pool": ("min_reflection_pool", lambda v: v),
    "min_strong_beams": ("min_strong_beams", lambda v: v),
    "min_weak_beams": ("min_weak_beams", lambda v: v),
    "g_limit": ("g_limit", lambda v: v),
    "debye_waller_constant": ("debye_waller", lambda v: v),
    "absorption_per": ("absorption_percent", lambda v: v),
    "convergence_angle": ("half_width", lambda v: v),
    "incident_beam_direction": ("beam_direction", tuple),
    "x_direction": ("x_direction", tuple),
    "normal_direction": ("normal_direction", tuple),
    "normal": ("normal_direction", tuple),
    "accelerating_voltage_kv": ("voltage", lambda v: v * 1e3),
    "acceptance_angle": ("acceptance_angle", lambda v: v),
    "initial_thickness": ("thickness_initial", lambda v: v),
    "final_thickness": ("thickness_final", lambda v: v),
    "delta_thickness": ("thickness_delta", lambda v: v),
    "precision": ("precision", lambda v: v),
    "refine_mode": ("refine_mode", lambda v: "S" if "S" in v else "".join(sorted(set(v) - {","}))),
    "weighting_flag": ("weighting_flag", lambda v: v),
    "refine_method": ("refine_method", lambda v: v),
    "correlation_type": ("correlation_flag", lambda v: v),
    "image_processing": ("image_processing_flag", lambda v: v),
    "blur_radius": ("blur_radius", lambda v: v),
    "no_of_ugs": ("n_ugs", lambda v: v),
    "atomic_sites": ("atomic_sites", lambda v: tuple(i + 1 for i in v)),
    "print_flag": ("print_every", lambda v: v),
    "refinement_scale": ("simplex_length_scale", lambda v: v * 100),
    "exit_criteria": ("exit_criteria", lambda v: v),
    "debug": ("debug", lambda v: v),
    "plot": ("plot", lambda v: v),
}

MEASURED_README = {  # measured/README.md table: zone, image x, pixels, half-width (1/Å), thicknesses (Å)
    "GaAs": ((-1, 1, 0), (1, 1, 0), 84, 0.983, [900.0]),
    "GeSn152": ((1, -1, 0), (0, 0, -1), 152, 0.654, [1500.0]),
    "LiNbO3": ((1, -1, 0), (0, 0, -1), 168, 0.725, list(np.arange(1120.0, 1321.0, 20.0))),
}


@pytest.mark.parametrize("name", MEASURED)
def test_shared_measured_sets_match_their_metadata(name, shared_dir):
    folder = shared_dir / "data" / "measured" / name
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent")
    meta = json.loads((folder / "metadata.json").read_text())
    inp = read_felix_inp(folder)
    assert inp.dialect == "python"
    for key, value in meta["felix_inp"].items():  # every value the authors' file gives
        attr, meaning = PORT_TO_FIELD[key]
        assert getattr(inp, attr) == pytest.approx(meaning(value), rel=1e-15), key
    s = inp.simulation_settings()
    exp = meta["experiment"]
    assert s.voltage_kv == exp["accelerating_voltage_kV"]
    assert (list(s.zone), list(s.x_direction), list(s.normal)) == (
        exp["incident_beam_direction"], exp["x_direction"], exp["surface_normal"])
    assert (s.image_radius, s.image_size) == (exp["image_radius_px"], exp["image_size_px"])
    assert s.half_width == exp["convergence_half_angle_inv_A"]
    assert s.pixel_step == pytest.approx(exp["pixel_size_inv_A"], rel=1e-12)
    t = exp["thickness_A"]
    assert (inp.thickness_initial, inp.thickness_final, inp.thickness_delta) == (t["initial"], t["final"], t["delta"])
    assert s.absorption == {0: "none", 1: "proportional", 2: "bird-king"}[exp["absorption"]["absorption_method"]]
    assert read_hkl(folder).tolist() == meta["felix_hkl"]
    zone, x, size, half_width, thicknesses = MEASURED_README[name]
    assert (s.zone, s.x_direction, s.image_size) == (zone, x, size)
    assert s.half_width == pytest.approx(half_width, abs=5e-4)
    np.testing.assert_array_equal(s.thicknesses, thicknesses)
    assert sorted(map(abs, s.zone)) == [0, 1, 1]  # every set is at a <110> zone ([1-10] hexagonal for LiNbO3)
