"""FELIX plugin runner: error paths with stand-in executables (missing binary, crash, FELIX's own
error report, timeout, missing outputs, MPI ranks), and a run of the real ``felix`` against the
Bloch engine when one is installed (skipped otherwise)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

lf = pytest.importorskip("lacbed_felix", reason="the FELIX plugin is not installed (pip install -e plugins/felix)")

from lacbed_refine.io.cif import read_cif  # noqa: E402
from lacbed_refine.engine.geometry import SimulationSettings  # noqa: E402
from lacbed_refine.simulators.bloch import BlochSimulator
from lacbed_refine.simulators.registry import PluginError  # noqa: E402

DATA = Path(__file__).parent / "data" / "felix"
MGO = DATA / "MgO" / "felix.cif"


def stand_in(tmp_path: Path, body: str, name: str = "felix") -> Path:
    """An executable Python script standing in for FELIX (or mpirun)."""
    path = tmp_path / "bin" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\n{body}\n")
    path.chmod(0o755)
    return path


# A stand-in that behaves like FELIX: reads felix.inp by line position and writes, for every
# thickness of its grid, <chem>_Sim_<tttt>A_<2N>x<2N>/<chem>_<hkl>.bin with value 10*t_index + r_index.
FAKE_FELIX = """
import numpy as np
print("     felixrefine: stand-in", flush=True)
inp = open("felix.inp").read().splitlines()
n = 2 * int(inp[13][27:42])
ti, tf, dt = (float(inp[k][27:45]) for k in (34, 35, 36))
chem = [l.split("'")[1] for l in open("felix.cif") if l.startswith("_chemical_formula_structural")][0]
hkl = [tuple(int(x) for x in l.strip()[1:-1].split(",")) for l in open("felix.hkl")]
for i in range(int(round((tf - ti) / dt)) + 1):
    out = f"{chem}_Sim_{int(ti + i * dt + 0.5):04d}A_{n:03d}x{n:03d}"
    os.makedirs(out)
    for j, (h, k, l) in enumerate(hkl):
        np.full((n, n), 10.0 * i + j).astype("<f8").tofile(os.path.join(out, f"{chem}_{h:+d}{k:+d}{l:+d}.bin"))
    print("     wrote", out, flush=True)
print(" ".join(sys.argv), file=open("argv.txt", "w"))
"""


def settings(**kw):
    crystal = read_cif(MGO)
    base = dict(size=8, half_width=5 / crystal.a, thicknesses=(1000.0, 500.0), g_limit=8.95 / crystal.a,
                reflections=((2, 0, 0), (0, 0, 0)))
    base.update(kw)
    return crystal, SimulationSettings(**base)


def test_stand_in_run_reads_outputs_in_requested_order(tmp_path):
    exe = stand_in(tmp_path, FAKE_FELIX)
    crystal, s = settings()
    lines = []
    sim = lf.FelixSimulator(exe, workdir=tmp_path / "run")
    out = sim.simulate(crystal, s, progress=lines.append)
    assert out.shape == (2, 2, 8, 8) and out.dtype == np.float32
    # grid 500, 1000 Å (index 0, 1) and felix.hkl order (200, 000) -> values 10 i + j
    assert out[0, 0, 0, 0] == 10.0 and out[1, 1, 0, 0] == 1.0 and out[0, 1, 0, 0] == 11.0
    assert any("stand-in" in line for line in lines)
    assert (tmp_path / "run" / "felix.log").read_text().startswith("     felixrefine: stand-in")
    assert (tmp_path / "run" / "argv.txt").read_text().split() == [str(exe)]  # one rank: no mpirun


def test_missing_binary(tmp_path, monkeypatch):
    crystal, s = settings()
    monkeypatch.delenv(lf._runner.ENV_EXECUTABLE, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    sim = lf.FelixSimulator()
    ok, why = sim.available()
    assert not ok and "LACBED_FELIX" in why
    with pytest.raises(lf.FelixError, match="not found") as err:
        sim.simulate(crystal, s)
    assert isinstance(err.value, PluginError) and err.value.name == "felix"
    monkeypatch.setenv(lf._runner.ENV_EXECUTABLE, str(tmp_path / "no-felix"))
    with pytest.raises(lf.FelixError, match="LACBED_FELIX=.*no such file"):
        lf.find_felix()
    (tmp_path / "felix").write_text("not executable")
    with pytest.raises(lf.FelixError, match="not executable"):
        lf.find_felix(tmp_path)


def test_executable_from_environment(tmp_path, monkeypatch):
    exe = stand_in(tmp_path, FAKE_FELIX)
    monkeypatch.setenv(lf._runner.ENV_EXECUTABLE, str(exe.parent))  # a folder holding felix works too
    assert lf.find_felix() == exe.resolve()
    ok, why = lf.FelixSimulator().available()
    assert ok and str(exe.resolve()) in why


def test_crash_reports_status_and_log_tail(tmp_path):
    exe = stand_in(tmp_path, "for i in range(100):\n    print('line', i)\nsys.exit(3)")
    crystal, s = settings()
    with pytest.raises(lf.FelixError, match="status 3") as err:
        lf.FelixSimulator(exe).simulate(crystal, s)
    msg = str(err.value)
    assert "line 99" in msg and "line 10\n" not in msg  # the tail only
    assert "line 99" in err.value.log_tail


def test_felix_error_report_old_layout(tmp_path):
    # What FELIX HEAD prints when felix.inp is not in the v1.3 layout, then MPI_Abort
    exe = stand_in(tmp_path, "print('  0 = rank, error in ReadInpFile(READ() felix.inp line number =   28)')\n"
                             "print('Fortran runtime error: End of file')\nsys.exit(1)")
    crystal, s = settings()
    with pytest.raises(lf.FelixError, match="not in the v1.3 layout") as err:
        lf.FelixSimulator(exe).simulate(crystal, s)
    assert "error in ReadInpFile" in str(err.value)


def test_error_report_with_zero_status(tmp_path):
    exe = stand_in(tmp_path, "print('  0 = rank, error in ReadCif(Chemical formula missing)')")
    crystal, s = settings()
    with pytest.raises(lf.FelixError, match="reported an error.*felix.cif"):
        lf.FelixSimulator(exe).simulate(crystal, s)


def test_old_layout_caught_before_running(tmp_path):
    exe = stand_in(tmp_path, "open('ran', 'w').close()")
    run = tmp_path / "run"
    run.mkdir()
    lines = (DATA / "MgO" / "felix.inp").read_text().splitlines()
    del lines[19]
    (run / "felix.inp").write_text("\n".join(lines) + "\n")
    for name in ("felix.cif", "felix.hkl"):
        (run / name).write_text((DATA / "MgO" / name).read_text())
    with pytest.raises(lf.FelixError, match="misread.*RgLimit"):
        lf.run_felix(run, executable=exe)
    assert not (run / "ran").exists()


def test_timeout_stops_felix(tmp_path):
    exe = stand_in(tmp_path, "open('pid', 'w').write(str(os.getpid()))\nprint('working', flush=True)\ntime.sleep(60)")
    crystal, s = settings()
    t0 = time.perf_counter()
    with pytest.raises(lf.FelixError, match="within 1 s") as err:
        lf.FelixSimulator(exe, timeout=1, workdir=tmp_path / "run").simulate(crystal, s)
    assert time.perf_counter() - t0 < 20
    assert "working" in str(err.value)
    pid = int((tmp_path / "run" / "pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_missing_outputs(tmp_path):
    exe = stand_in(tmp_path, "print('Writing simulations for   2 thicknesses')")
    crystal, s = settings()
    with pytest.raises(lf.FelixError, match="output is incomplete.*no FELIX simulation folder") as err:
        lf.FelixSimulator(exe).simulate(crystal, s)
    assert "Writing simulations" in str(err.value)


def test_reflection_outside_pool_caught_before_running(tmp_path):
    exe = stand_in(tmp_path, FAKE_FELIX)
    crystal, s = settings(reflections=((1, 0, 0),))  # forbidden by the F centring
    with pytest.raises(ValueError, match="not in FELIX's beam pool"):
        lf.FelixSimulator(exe).simulate(crystal, s)


def test_ranks(tmp_path):
    exe = stand_in(tmp_path, FAKE_FELIX)
    mpirun = stand_in(tmp_path, "open('mpirun.txt', 'w').write(' '.join(sys.argv[1:]))\n"
                                "os.execv(sys.argv[3], sys.argv[3:])", name="mpirun")
    crystal, s = settings()
    with pytest.warns(UserWarning, match="1 MPI rank, not 2.*MPI_DOUBLE_COMPLEX"):
        lf.FelixSimulator(exe, ranks=2, workdir=tmp_path / "a").simulate(crystal, s)
    assert not (tmp_path / "a" / "mpirun.txt").exists()
    out = lf.FelixSimulator(exe, mpirun=mpirun, ranks=2, mpi_fixed=True, workdir=tmp_path / "b").simulate(crystal, s)
    assert (tmp_path / "b" / "mpirun.txt").read_text() == f"-n 2 {exe}"
    assert out.shape == (2, 2, 8, 8)
    # workers ask for ranks only when the build is fixed
    assert lf.FelixSimulator(exe)._choose_ranks(4) == 1
    assert lf.FelixSimulator(exe, mpi_fixed=True)._choose_ranks(4) == 4


# ------------------------------------------------------------------------------------------------
# The real FELIX
# ------------------------------------------------------------------------------------------------
def _real_felix() -> Path:
    try:
        return lf.find_felix()
    except lf.FelixError as exc:
        pytest.skip(f"no FELIX executable: {exc.args[0].split(': ', 1)[-1]}")


def test_real_felix_matches_bloch_engine(tmp_path):
    exe = _real_felix()
    crystal = read_cif(MGO)
    # 32x32 pixels, the reference runs' pool (69 beams, |g| <= 8.95/a), every beam strong
    s = SimulationSettings(size=32, half_width=5 / crystal.a, thicknesses=(500.0, 1000.0), g_limit=8.95 / crystal.a,
                           reflections=((0, 0, 0), (2, 0, 0)))
    felix = lf.FelixSimulator(exe, workdir=tmp_path / "run").simulate(crystal, s)
    bloch = BlochSimulator().simulate(crystal, s)
    assert felix.shape == bloch.shape == (2, 2, 32, 32)
    for t in range(2):
        for r in range(2):
            corr = np.corrcoef(felix[t, r].ravel(), bloch[t, r].ravel())[0, 1]
            assert corr >= 0.99, (t, r, corr)
    assert len(lf.read_structure_factors(tmp_path / "run" / lf.sim_folder_name("MgO", 500, 32))) == 69
