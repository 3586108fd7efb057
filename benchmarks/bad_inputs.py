"""Bad-input harness (issue 12): hundreds of bad or edge inputs through every ``lacbed-refine`` command.

Each case runs ``python -m lacbed_refine_cli.main ARGS`` as a subprocess in a fresh folder of its own,
with a time limit and a memory cap, and its outcome is classified:

==================  ==========================================================================
clean error         the declared exit status (2, or click's usage error 2) and stderr's last
                    non-empty line is one line ``lacbed-refine[ felix]: error: ...`` or click's
                    ``Error: ...`` naming what the case says it must name; no traceback
vague error         a clean-looking error that does not name the option/file/value it should,
                    or that advises ``weights_only=False``
messy error         the right exit status, but no one-line error message at the end of stderr
late error          refused, but only after work that should not have started (e.g. the whole
                    refinement ran before ``--check felix`` was found unusable)
traceback           "Traceback" in the output, or an exit status that is neither 0 nor declared
hang                the time limit ran out (the process group is killed)
accepted            exit 0 for an input the case declares legal (or either way)
silent wrong        exit 0 for nonsense that must be refused, or a legal run whose result fails
                    the case's check (e.g. a rerun that skipped a changed sample)
failed (legal)      a legal input that was refused or failed
data loss           a file the case protects changed or vanished, a shared fixture changed, or
                    a hostile pickle ran code (it creates a marker file when unpickled)
left behind         a refused run left outputs (an empty output folder, a partial file), or any
                    run left temporary files (``.name.XXXX``, ``*.tmp``, files in ``$TMPDIR``)
bad file mode       a written file's mode is not ``0o666 & ~umask`` (e.g. 0600 from mkstemp)
skipped (root)      needs file permissions, which do not bind root
==================  ==========================================================================

Fixtures (small CIFs written as text, a 32×32 pattern from ``simulate``, a tiny dataset from
``dataset build``, tiny checkpoints from ``train --epochs 1``, damaged copies of each) are built at run
time in the work folder; nothing is written outside it or ``--out``.

Run from the repository root (the package installed, ``pip install -e . -e plugins/felix``)::

    nice -n 10 python benchmarks/bad_inputs.py --out /tmp/bad-inputs          # 532 cases, ~25 min on 2 cores
    python benchmarks/bad_inputs.py --only 'fit-mask' --keep                   # a subset (regex)
    python benchmarks/bad_inputs.py --list                                     # the case names

``--out DIR`` writes ``cases.csv`` (one row per case) and ``summary.md`` (counts and every case that is
not a clean error or an accepted legal input). The exit status is 0 whatever the outcomes.
"""

from __future__ import annotations

import argparse
import concurrent.futures as futures
import csv
import hashlib
import os
import pickle
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE_H5 = REPO / "tests" / "data" / "surrogate_sample.h5"

# ------------------------------------------------------------------------------------------------
# Outcome classes
# ------------------------------------------------------------------------------------------------
CLEAN = "clean error"
VAGUE = "vague error"
MESSY = "messy error"
LATE = "late error"
TRACEBACK = "traceback"
HANG = "hang"
ACCEPTED = "accepted"
SILENT = "silent wrong"
FAILED_LEGAL = "failed (legal)"
DATA_LOSS = "data loss"
LEFT = "left behind"
MODE = "bad file mode"
SKIPPED = "skipped (root)"
CLASSES = (CLEAN, ACCEPTED, VAGUE, MESSY, LATE, TRACEBACK, HANG, SILENT, FAILED_LEGAL, DATA_LOSS, LEFT, MODE, SKIPPED)
GOOD = (CLEAN, ACCEPTED, SKIPPED)
#: A case with several defects is counted under the first of them in this order.
PRECEDENCE = (HANG, DATA_LOSS, TRACEBACK, SILENT, FAILED_LEGAL, LEFT, MODE, MESSY, LATE, VAGUE)

ERROR_LINE = re.compile(r"^(lacbed-refine(?: felix)?: |Error: )")
TEMP_NAME = re.compile(r"(^\.)|(\.tmp$)|(^tmp[a-z0-9_]{6,}$)")
HARNESS_FILES = {".harness-stdout", ".harness-stderr"}


# ------------------------------------------------------------------------------------------------
# Case records
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One input and what a correct program does with it.

    ``argv`` and ``env`` values may hold ``{F}`` (the fixtures folder) and ``{D}`` (the case's own
    folder, also the working directory). ``setup(D, F)`` prepares files in the case folder before
    the run. ``check(D, run)`` returns a problem (a string) or None; it runs after every run: a
    problem after exit 0 makes the case "silent wrong", after an error "late error".
    """

    name: str
    argv: list[str]
    expect_ok: bool | None = False  # True: legal input, exit 0 expected; False: must be refused; None: either
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path, Path], None] | None = None
    protect: tuple[str, ...] = ()  # files/folders (relative to the case folder) that must not change
    mention: tuple[str, ...] = ()  # what the error line must name (any one of each "a|b" alternative)
    check: Callable[[Path, "Run"], str | None] | None = None
    error_codes: tuple[int, ...] = (2,)
    may_leave: tuple[str, ...] = ()  # outputs (relative globs) a refused run may leave
    timeout: float | None = None
    needs_permissions: bool = False  # relies on chmod, which root ignores
    issue: str = ""  # the issue's defect class it covers


@dataclass
class Run:
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool


@dataclass
class Outcome:
    case: Case
    klass: str
    returncode: int | None
    seconds: float
    last_line: str
    note: str = ""


# ------------------------------------------------------------------------------------------------
# Running one case
# ------------------------------------------------------------------------------------------------
def _limit_memory(limit_bytes: int):
    def apply():
        os.setsid()
        if limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def run_cli(argv, *, cwd: Path, env: dict, timeout: float, mem_bytes: int) -> Run:
    """``python -m lacbed_refine_cli.main ARGV`` in ``cwd``, killed (whole process group) at ``timeout``."""
    cmd = [sys.executable, "-m", "lacbed_refine_cli.main", *argv]
    out_path, err_path = cwd / ".harness-stdout", cwd / ".harness-stderr"
    t0 = time.perf_counter()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                preexec_fn=_limit_memory(mem_bytes))
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=5)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc = proc.returncode
    seconds = time.perf_counter() - t0
    text = [p.read_bytes().decode("utf-8", "replace") for p in (out_path, err_path)]
    out_path.unlink()
    err_path.unlink()
    return Run(rc, text[0], text[1], seconds, timed_out)


def last_line(text: str) -> str:
    """The last non-empty line, as a terminal shows it (after the last carriage return)."""
    lines = [ln.split("\r")[-1] for ln in text.splitlines()]
    lines = [ln for ln in lines if ln.strip()]
    return lines[-1].strip() if lines else ""


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every path under ``folder``: (kind, size, mtime_ns, mode)."""
    out = {}
    for p in folder.rglob("*"):
        try:
            st = p.lstat()
        except FileNotFoundError:
            continue
        kind = "dir" if p.is_dir() and not p.is_symlink() else "file"
        out[str(p.relative_to(folder))] = (kind, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)
    return out


def digest(path: Path) -> str | None:
    """SHA-256 of a file, or of a folder's files and names; None when it does not exist."""
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        h.update(str(p.relative_to(path.parent)).encode())
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def expand(text: str, D: Path, F: Path) -> str:
    return text.replace("{F}", str(F)).replace("{D}", str(D))


class Harness:
    def __init__(self, work: Path, *, timeout: float, mem_gb: float):
        self.work = work
        self.F = work / "fixtures"
        self.cases_dir = work / "cases"
        self.tmp_root = work / "tmp"
        self.timeout = timeout
        self.mem_bytes = int(mem_gb * 2**30)
        self.umask = os.umask(0o022)  # children inherit 022: new files must be 0644, folders 0755
        self.root = hasattr(os, "geteuid") and os.geteuid() == 0
        for p in (self.F, self.cases_dir, self.tmp_root, work / "cache"):
            p.mkdir(parents=True, exist_ok=True)

    def env(self, tmp: Path) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LACBED_FELIX") and k != "LACBED_MPIRUN"}
        cache = self.work / "cache"
        env.update(TMPDIR=str(tmp), MPLCONFIGDIR=str(cache / "mpl"), XDG_CACHE_HOME=str(cache),
                   TORCH_HOME=str(cache / "torch"), TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"),
                   TRITON_CACHE_DIR=str(cache / "triton"), PYTHONDONTWRITEBYTECODE="1", PYTHONUNBUFFERED="1")
        return env

    # --- one case ------------------------------------------------------------------------------
    def run_case(self, case: Case) -> Outcome:
        if case.needs_permissions and self.root:
            return Outcome(case, SKIPPED, None, 0.0, "", "runs as root: chmod does not stop root's writes")
        D = self.cases_dir / case.name
        if D.exists():
            shutil.rmtree(D)
        D.mkdir(parents=True)
        tmp = self.tmp_root / case.name
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        if case.setup is not None:
            case.setup(D, self.F)
        before = snapshot(D)
        protected = {p: digest(D / p) for p in case.protect}
        fixtures_before = snapshot(self.F)
        env = self.env(tmp)
        env.update({k: expand(v, D, self.F) for k, v in case.env.items()})
        argv = [expand(a, D, self.F) for a in case.argv]
        run = run_cli(argv, cwd=D, env=env, timeout=case.timeout or self.timeout, mem_bytes=self.mem_bytes)
        outcome = self.classify(case, D, tmp, run, before, protected, fixtures_before)
        self._restore_permissions(D)
        return outcome

    def _restore_permissions(self, D: Path) -> None:
        for p in [D, *D.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                try:
                    p.chmod(0o755)
                except OSError:
                    pass

    def classify(self, case, D, tmp, run, before, protected, fixtures_before) -> Outcome:
        """Every defect the run shows; the case's class is the most serious (see PRECEDENCE)."""
        text = run.stdout + run.stderr
        line = last_line(run.stderr)
        if run.timed_out:
            return Outcome(case, HANG, run.returncode, run.seconds, line, f"no exit within {case.timeout or self.timeout:g} s")
        found: list[tuple[str, str]] = []

        # data loss: protected files, shared fixtures, hostile pickles
        pwned = sorted(str(p.relative_to(D)) for p in D.rglob("PWNED*"))
        if pwned:
            found.append((DATA_LOSS, f"a hostile pickle ran code (created {', '.join(pwned)})"))
        lost = [p for p, h in protected.items() if digest(D / p) != h]
        if lost:
            found.append((DATA_LOSS, f"changed or removed: {', '.join(lost)}"))
        fixtures_after = snapshot(self.F)
        touched = sorted(k for k in set(fixtures_before) | set(fixtures_after)
                         if fixtures_before.get(k) != fixtures_after.get(k))
        if touched:
            found.append((DATA_LOSS, f"shared fixtures changed: {', '.join(touched[:5])}"))
        if "Traceback" in text:
            tb = [ln for ln in text.splitlines() if ln.strip()]
            found.append((TRACEBACK, tb[-1].strip()[:200] if tb else "Traceback"))

        # what the run left in its folder and in $TMPDIR
        after = snapshot(D)
        new = sorted(k for k in after if k not in before and k not in HARNESS_FILES)
        temp_left = [k for k in new if TEMP_NAME.search(Path(k).name)] + ["$TMPDIR/" + str(p.relative_to(tmp))
                                                                          for p in tmp.rglob("*")]
        problem = case.check(D, run) if case.check is not None else None

        if run.returncode == 0:
            if case.expect_ok is False:
                found.append((SILENT, "exit 0 for an input that must be refused"))
            if problem:
                found.append((SILENT, problem))
            if temp_left:
                found.append((LEFT, f"temporary files: {', '.join(temp_left[:5])}"))
            modes = self._bad_modes(new, after)
            if modes:
                found.append((MODE, ", ".join(modes[:5])))
        else:
            if case.expect_ok is True:
                found.append((FAILED_LEGAL, f"exit {run.returncode}"))
            elif run.returncode not in case.error_codes and not any(k == TRACEBACK for k, _ in found):
                killed = " (killed: memory cap?)" if run.returncode is not None and run.returncode < 0 else ""
                found.append((TRACEBACK, f"exit status {run.returncode}{killed}"))
            if not ERROR_LINE.match(line) or len(line) > 2000:
                found.append((MESSY, "stderr does not end in a one-line error"))
            kept = [k for k in new if not any(k == g or k.startswith(g + "/") or g.startswith(k + "/") or Path(k).match(g)
                                              for g in case.may_leave)]  # a declared output, inside or above it
            kept = [k for k in kept if not any(k.startswith(o + "/") for o in kept)]  # the top-most path only
            if kept or temp_left:
                found.append((LEFT, f"refused but left: {', '.join((kept + temp_left)[:5])}"))
            if problem:
                found.append((LATE, problem))
            if "weights_only=False" in text:
                found.append((VAGUE, "advises weights_only=False"))
            low = line.lower()
            missing = [m for m in case.mention if not any(alt.lower() in low for alt in m.split("|"))]
            if missing:
                found.append((VAGUE, "does not name " + " or ".join(" / ".join(m.split("|")) for m in missing)))

        if not found:
            return Outcome(case, ACCEPTED if run.returncode == 0 else CLEAN, run.returncode, run.seconds, line)
        found.sort(key=lambda item: PRECEDENCE.index(item[0]))
        note = "; ".join(n if k == found[0][0] else f"{k}: {n}" for k, n in found)
        return Outcome(case, found[0][0], run.returncode, run.seconds, line, note)

    def _bad_modes(self, new: list[str], after: dict) -> list[str]:
        want_file, want_dir = 0o666 & ~0o022, 0o777 & ~0o022
        bad = []
        for k in new:
            kind, _, _, mode = after[k]
            want = want_dir if kind == "dir" else want_file
            if mode & 0o777 != want:
                bad.append(f"{k} {oct(mode & 0o777)} (want {oct(want)})")
        return bad


# ------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------
CELL = """_cell_length_a {a}
_cell_length_b {b}
_cell_length_c {c}
_cell_angle_alpha {al}
_cell_angle_beta {al}
_cell_angle_gamma {al}
"""
ATOMS = """loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_B_iso_or_equiv
_atom_site_occupancy
"""


def cif_text(name, sg, atoms, a=4.21, *, b=None, c=None, alpha=90, cell=True):
    text = f"data_{name}\n"
    if cell:
        text += CELL.format(a=a, b=b if b is not None else a, c=c if c is not None else a, al=alpha)
    if sg:
        text += f"_symmetry_space_group_name_H-M '{sg}'\n"
    if atoms:
        text += ATOMS + "".join(" ".join(str(x) for x in row) + "\n" for row in atoms)
    return text


MGO_ATOMS = [("Mg1", "Mg", 0, 0, 0, 0.3, 1), ("O1", "O", 0.5, 0.5, 0.5, 0.4, 1)]
STO_ATOMS = [("Sr1", "Sr", 0, 0, 0, 0.5, 1), ("Ti1", "Ti", 0.5, 0.5, 0.5, 0.4, 1), ("O1", "O", 0, 0.5, 0.5, 0.6, 1)]
MGO = cif_text("MgO", "F m -3 m", MGO_ATOMS)
STO = cif_text("SrTiO3", "P m -3 m", STO_ATOMS, a=3.905)


def mgo_with(**site_changes):
    rows = [list(r) for r in MGO_ATOMS]
    for key, value in site_changes.items():
        rows[0][{"b": 5, "occ": 6, "el": 1}[key]] = value
    return cif_text("MgO", "F m -3 m", rows)


#: CIF variants: file name -> (text or bytes, legal?, what the error must name)
CIF_VARIANTS: dict[str, tuple[object, bool | None, tuple[str, ...]]] = {
    "sto.cif": (STO, True, ()),
    "mgo.cif": (MGO, True, ()),
    "empty.cif": ("", False, ("empty.cif",)),
    "random.cif": (random.Random(1).randbytes(3000), False, ("random.cif",)),
    "malformed.cif": ("data_bad\n_cell_length_a 4.21\nloop_\n_atom_site_label\n_atom_site_fract_x\n'unterminated\n",
                      False, ("malformed.cif",)),
    "nocell.cif": (cif_text("MgO", "F m -3 m", MGO_ATOMS, cell=False), False, ("nocell.cif",)),
    # legal either way: the reader takes the first structure block and warns which (issue 12 allows
    # "say which block is used, or refuse")
    "twoblocks.cif": (MGO + "\n" + STO, None, ("twoblocks.cif",)),
    "noncubic.cif": (cif_text("TiO2", "P 4/m m m", [("Ti1", "Ti", 0, 0, 0, 0.5, 1), ("O1", "O", 0.3, 0.3, 0, 0.5, 1)],
                              a=4.59, c=2.96), False, ("noncubic.cif",)),
    "rhombohedral.cif": (cif_text("MgO", "F m -3 m", MGO_ATOMS, alpha=60), False, ("rhombohedral.cif",)),
    "nosymmetry.cif": (cif_text("MgO", None, MGO_ATOMS), False, ("nosymmetry.cif",)),
    "nonutf8.cif": (MGO.encode().replace(b"data_MgO\n", b"data_MgO\n# caf\xe9 \xff\xfe\n"), None, ("nonutf8.cif",)),
    "noatoms.cif": (cif_text("MgO", "F m -3 m", []), False, ("noatoms.cif",)),
    "badelement.cif": (mgo_with(el="Xx"), False, ("badelement.cif|Xx",)),
    "huge_a.cif": (cif_text("MgO", "F m -3 m", MGO_ATOMS, a=1e6), False, ("huge_a.cif",)),
    "zero_a.cif": (cif_text("MgO", "F m -3 m", MGO_ATOMS, a=0), False, ("zero_a.cif",)),
    "negative_a.cif": (cif_text("MgO", "F m -3 m", MGO_ATOMS, a=-4.21), False, ("negative_a.cif",)),
    "b_huge.cif": (mgo_with(b=1e6), False, ("b_huge.cif",)),
    "b_nan.cif": (mgo_with(b="nan"), False, ("b_nan.cif",)),
    "b_negative.cif": (mgo_with(b=-1), False, ("b_negative.cif",)),
    "occupancy2.cif": (mgo_with(occ=2), False, ("occupancy2.cif",)),
    "duplicate_labels.cif": (cif_text("MgO", "F m -3 m", MGO_ATOMS + [("O1", "O", 0.25, 0.25, 0.25, 0.4, 1)]),
                             False, ("duplicate_labels.cif|O1",)),
}


class _Hostile:
    """Unpickling this creates the file ``marker`` (a stand-in for arbitrary code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"model": _Hostile(str(marker))}, f)


def hostile_npy(path: Path, marker: Path) -> None:
    np.save(path, np.array([_Hostile(str(marker))], dtype=object), allow_pickle=True)


FELIX_STAND_IN = """#!{python}
import os, sys
open(os.environ.get("HARNESS_FELIX_MARKER", "felix-ran"), "w").write("ran")
print("stand-in felix: ran")
sys.exit(1)
"""

SIM = ["--size", "32", "--beams", "20", "--thickness", "50"]
FIT = ["--beams", "20", "--max-iter", "1", "--no-seed", "--no-surrogate", "--restarts", "1"]


def build_fixtures(h: Harness, log) -> None:
    """Write the fixtures (small files as text and arrays; a pattern, a dataset and checkpoints from the CLI)."""
    F = h.F
    done = F / ".complete"
    if done.is_file():
        log(f"fixtures: reusing {F}")
        return
    t0 = time.perf_counter()
    rng = random.Random(0)
    for name, (content, _, _) in CIF_VARIANTS.items():
        (F / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    (F / "sto.txt").write_text(STO)
    for name in ("dir.cif", "dir.tif", "dir.h5", "dir.pt", "dir.csv"):
        (F / name).mkdir(exist_ok=True)
    for ext in ("tif", "npy", "h5", "pt", "csv", "png", "json"):
        (F / f"random.{ext}").write_bytes(rng.randbytes(4096))
        (F / f"empty.{ext}").write_bytes(b"")
    (F / "cifs").mkdir(exist_ok=True)
    for name in ("mgo.cif", "sto.cif"):
        shutil.copy(F / name, F / "cifs" / name)
    stand_in = F / "bin" / "felix"
    stand_in.parent.mkdir(exist_ok=True)
    stand_in.write_text(FELIX_STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)

    def cli(*argv, timeout=600):
        run = run_cli(list(argv), cwd=F, env=h.env(h.tmp_root), timeout=timeout, mem_bytes=h.mem_bytes)
        if run.returncode != 0:
            raise SystemExit(f"fixture command failed: lacbed-refine {' '.join(argv)}\n{run.stderr[-3000:]}")
        return run

    log("fixtures: pattern (simulate), dataset (dataset build), checkpoints (train)")
    cli("simulate", "sto.cif", "-o", "p32.tif", *SIM)
    cli("simulate", "sto.cif", "-o", "p16.tif", "--size", "16", "--beams", "20", "--thickness", "50")
    cli("dataset", "build", "--cifs", "cifs", "--synthetic", "8", "--seed", "0", "--size", "16", "--beams", "20",
        "--thickness", "50", "-o", "d.h5", "--workers", "1", "--no-progress")
    cli("train", "forward", "--data", "d.h5", "-o", "f.pt", "--epochs", "1", "--batch-size", "2", "--threads", "1")
    cli("train", "inverse", "--data", "d.h5", "-o", "i.pt", "--epochs", "1", "--batch-size", "2", "--threads", "1")

    import tifffile

    p = tifffile.imread(F / "p32.tif").astype(np.float32).reshape(32, 32)
    arrays = {
        "p32.npy": p,
        "nan.npy": np.full((32, 32), np.nan, np.float32),
        "nan16.npy": np.full((16, 16), np.nan, np.float32),
        "const16.npy": np.full((16, 16), 0.25, np.float32),
        "somenan.npy": np.where(np.arange(32 * 32).reshape(32, 32) % 97 == 0, np.nan, p).astype(np.float32),
        "inf.npy": np.where(np.eye(32, dtype=bool), np.inf, p).astype(np.float32),
        "const.npy": np.full((32, 32), 0.25, np.float32),
        "zeros.npy": np.zeros((32, 32), np.float32),
        "nonsquare.npy": np.tile(p, (1, 2))[:, :48],
        "p7.npy": p[:7, :7],
        "p2.npy": p[:2, :2],
        "stack4.npy": np.stack([p, p, p, p]),
        "vector.npy": p.ravel(),
        "complex.npy": p.astype(np.complex64),
        "int16.npy": (p / p.max() * 30000).astype(np.int16),
        "negative.npy": p - 0.5 * p.max(),
        "bigvalues.npy": p.astype(np.float64) * 1e300,
        "huge.npy": np.resize(p, (4100, 4100)).astype(np.float32),
        "mask_ones.npy": np.ones((32, 32), np.uint8),
        "mask_zero.npy": np.zeros((32, 32), np.uint8),
        "mask_onepixel.npy": np.pad(np.ones((1, 1), np.uint8), ((16, 15), (16, 15))),
        "mask_63.npy": (np.arange(32 * 32) < 63).reshape(32, 32).astype(np.uint8),
        "mask_200.npy": (np.arange(32 * 32) < 200).reshape(32, 32).astype(np.uint8),
        "mask_16.npy": np.ones((16, 16), np.uint8),
        "mask_nan.npy": np.full((32, 32), np.nan, np.float32),
    }
    for name, array in arrays.items():
        np.save(F / name, array)
    tifffile.imwrite(F / "nonsquare.tif", arrays["nonsquare.npy"])
    tifffile.imwrite(F / "nan.tif", arrays["nan.npy"])

    import h5py

    with h5py.File(F / "blank.h5", "w"):
        pass
    shutil.copy(F / "d.h5", F / "short.h5")  # arrays shorter than the metadata
    with h5py.File(F / "short.h5", "r+") as f:
        for key in ("pattern", "potential", "potential_raw"):
            data = f[key][:2]
            del f[key]
            f.create_dataset(key, data=data)
    shutil.copy(F / "d.h5", F / "nanpattern.h5")  # every pattern NaN
    with h5py.File(F / "nanpattern.h5", "r+") as f:
        f["pattern"][...] = np.nan
        f["potential"][...] = np.nan
    if SAMPLE_H5.is_file():
        shutil.copy(SAMPLE_H5, F / "sample128.h5")
    shutil.copy(F / "d.h5", F / "truncated.h5")
    with open(F / "truncated.h5", "r+b") as f:
        f.truncate((F / "d.h5").stat().st_size // 2)

    import torch

    ckpt = torch.load(F / "f.pt", map_location="cpu", weights_only=False)  # our own file

    def poison(obj):
        if isinstance(obj, torch.Tensor):
            return torch.full_like(obj, float("nan")) if obj.is_floating_point() else obj
        if isinstance(obj, dict):
            return {k: poison(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(poison(v) for v in obj)
        return obj

    torch.save(poison(ckpt), F / "nanweights.pt")
    data = (F / "f.pt").read_bytes()
    (F / "truncated.pt").write_bytes(data[: len(data) // 3])

    # ai-diffraction PNG layout
    from PIL import Image

    png = F / "png"
    for i in range(4):
        d = png / f"s{i}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.roll(p[:16, :16], i, 0) / p.max() * 255).astype(np.uint8)).save(d / "potential.png")
        Image.fromarray((np.roll(p[:16, :16], i, 1) / p.max() * 255).astype(np.uint8)).save(d / "pattern_0500.png")
    splits = F / "splits"
    splits.mkdir(exist_ok=True)
    (splits / "train").write_text("s0\ns1\n")
    (splits / "val").write_text("s2\n")
    (splits / "test").write_text("s3\n")
    done.write_text(f"built in {time.perf_counter() - t0:.0f} s\n")
    log(f"fixtures: built in {time.perf_counter() - t0:.0f} s")


# ------------------------------------------------------------------------------------------------
# Setup and check helpers
# ------------------------------------------------------------------------------------------------
def copy(src: str, dst: str | None = None):
    """Setup: copy fixture ``src`` into the case folder (as ``dst``)."""
    def setup(D: Path, F: Path):
        target = D / (dst or Path(src).name)
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (F / src).is_dir() else shutil.copy)(F / src, target)
    return setup


def write(dst: str, content):
    """Setup: write a file in the case folder; ``{F}``/``{D}`` in text are expanded."""
    def setup(D: Path, F: Path):
        target = D / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            target.write_bytes(content.replace(b"{F}", str(F).encode()).replace(b"{D}", str(D).encode()))
        else:
            target.write_text(expand(content, D, F))
    return setup


def mkdir(dst: str, mode: int | None = None):
    def setup(D: Path, F: Path):
        (D / dst).mkdir(parents=True, exist_ok=True)
        if mode is not None:
            (D / dst).chmod(mode)
    return setup


def hostile(dst: str, kind: str = "pt"):
    """Setup: a pickle (``pt``) or object ``.npy`` that creates ``PWNED-<dst>`` when loaded."""
    def setup(D: Path, F: Path):
        marker = D / f"PWNED-{Path(dst).stem}"
        (hostile_pickle if kind == "pt" else hostile_npy)(D / dst, marker)
    return setup


def steps(*setups):
    def setup(D: Path, F: Path):
        for s in setups:
            s(D, F)
    return setup


def cli_step(*argv):
    """Setup: run a command first (e.g. a batch before its rerun); its failure is the case's problem."""
    def setup(D: Path, F: Path):
        h = HARNESS
        run = run_cli([expand(a, D, F) for a in argv], cwd=D, env=h.env(h.tmp_root / "setup"), timeout=300,
                      mem_bytes=h.mem_bytes)
        (D / ".setup-status").write_text(f"{run.returncode}\n{last_line(run.stderr)}\n")
    return setup


def exists(*paths):
    def check(D: Path, run: Run):
        missing = [p for p in paths if not (D / p).exists()]
        return f"missing output: {', '.join(missing)}" if missing else None
    return check


def absent(*paths):
    def check(D: Path, run: Run):
        there = [p for p in paths if (D / p).exists()]
        return f"wrote {', '.join(there)}" if there else None
    return check


def says(pattern: str, where: str = "all", why: str = ""):
    """Check: the output must match ``pattern`` (a regex)."""
    def check(D: Path, run: Run):
        text = {"all": run.stdout + run.stderr, "stdout": run.stdout, "stderr": run.stderr}[where]
        return None if re.search(pattern, text) else (why or f"output does not match {pattern!r}")
    return check


def not_says(pattern: str, why: str):
    def check(D: Path, run: Run):
        return why if re.search(pattern, run.stdout + run.stderr) else None
    return check


def all_of(*checks):
    def check(D: Path, run: Run):
        for c in checks:
            problem = c(D, run)
            if problem:
                return problem
        return None
    return check


#: an error must not come after the refinement ran (issue 8)
NOT_AFTER_FIT = not_says(r"thickness scan|Bloch polish", "refused only after the refinement ran")
NO_NAN_SCORES = not_says(r"R mean nan|median nan|\bnan\b", "reported NaN scores as a result")


# ------------------------------------------------------------------------------------------------
# The cases
# ------------------------------------------------------------------------------------------------
def cif_cases(add, device_ok: bool) -> None:
    """CIF variants through every command that reads a CIF."""
    cif_inputs = dict(CIF_VARIANTS)
    cif_inputs.update({
        "missing.cif": (None, False, ("missing.cif",)),
        "dir.cif": (None, False, ("dir.cif",)),
        "p32.tif": (None, False, ("p32.tif",)),  # a pattern given as the CIF
        "sto.txt": (None, None, ("sto.txt",)),  # a CIF with another extension
    })
    # every variant through simulate and fit; a selection through the other readers of a CIF
    some = {"sto.cif", "missing.cif", "empty.cif", "random.cif", "nocell.cif", "twoblocks.cif", "noncubic.cif",
            "huge_a.cif", "b_nan.cif", "duplicate_labels.cif", "nonutf8.cif"}
    built = {"sto.cif", "random.cif", "nocell.cif", "twoblocks.cif", "noncubic.cif", "nonutf8.cif", "badelement.cif",
             "huge_a.cif", "zero_a.cif", "b_huge.cif", "b_nan.cif", "duplicate_labels.cif"}
    predicted = {"sto.cif", "missing.cif", "nocell.cif", "twoblocks.cif", "b_nan.cif", "noncubic.cif", "huge_a.cif"}
    for fname, (_, legal, mention) in cif_inputs.items():
        stem = fname.replace(".", "_")
        cif = "{F}/" + fname
        issue = {"nocell.cif": "6", "twoblocks.cif": "6", "huge_a.cif": "9", "b_huge.cif": "9", "b_nan.cif": "9",
                 "duplicate_labels.cif": "9", "nonutf8.cif": "11"}.get(fname, "")
        kw = dict(mention=mention, issue=issue)
        add(f"simulate-cif-{stem}", ["simulate", cif, "-o", "out.tif", *SIM], legal, **kw)
        if fname in some:
            add(f"potential-cif-{stem}", ["potential", cif, "-o", "pot.tif", "--size", "32"], legal, **kw)
        add(f"fit-cif-{stem}", ["fit", cif, "{F}/p32.tif", "-o", "fit", *FIT, "--refine", "b,thickness"], legal,
            timeout=180, **kw)
        if fname in some | {"dir.cif", "p32.tif", "b_huge.cif"}:
            add(f"felix-export-cif-{stem}", ["felix", "export", cif, "-o", "fx"], legal, **kw)
        if fname in predicted:
            add(f"predict-cif-{stem}", ["predict", cif, "--thickness", "50", "-o", "pred.tif", "--model", "{F}/f.pt"],
                legal, **kw)
        if fname in built:
            # a build skips a structure it cannot use and lists it in /failed; sto.cif beside it is built
            others = 1 if fname != "sto.cif" else 0
            want = {True: rf"\b{1 + others} structures, 0 failed", False: r"\b1 structures?, 1 failed",
                    None: r"\b[12] structures?, [01] failed"}[legal]
            setup = steps(mkdir("cifs"), copy(fname, f"cifs/{fname}"), *([copy("sto.cif", "cifs/sto.cif")] if others else []))
            add(f"dataset-build-cif-{stem}",
                ["dataset", "build", "--cifs", "cifs", "-o", "d.h5", "--size", "16", "--beams", "20", "--thickness", "50",
                 "--workers", "1", "--no-progress"],
                True, setup=setup, timeout=120, issue=issue,
                check=says(want, "stdout", "the bad structure was not listed as failed (built as if it were valid)"))



def pattern_cases(add, device_ok: bool) -> None:
    """Patterns through fit, invert and felix export."""
    patterns = {
        "good": ("{F}/p32.tif", True, ()),
        "npy": ("{F}/p32.npy", True, ()),
        "int16": ("{F}/int16.npy", True, ()),
        "missing": ("{F}/missing.tif", False, ("missing.tif",)),
        "empty_tif": ("{F}/empty.tif", False, ("empty.tif",)),
        "empty_npy": ("{F}/empty.npy", False, ("empty.npy",)),
        "folder": ("{F}/dir.tif", False, ("dir.tif",)),
        "random_tif": ("{F}/random.tif", False, ("random.tif",)),
        "random_npy": ("{F}/random.npy", False, ("random.npy",)),
        "random_png": ("{F}/random.png", False, ("random.png",)),
        "random_h5": ("{F}/random.h5", False, ("random.h5",)),
        "h5_without_patterns": ("{F}/blank.h5", False, ("blank.h5",)),
        "cif_as_pattern": ("{F}/sto.cif", False, ("sto.cif",)),
        "all_nan": ("{F}/nan.npy", False, ("nan.npy",)),
        "some_nan": ("{F}/somenan.npy", False, ("somenan.npy",)),
        "inf": ("{F}/inf.npy", False, ("inf.npy",)),
        "constant": ("{F}/const.npy", False, ("const.npy",)),
        "zeros": ("{F}/zeros.npy", False, ("zeros.npy",)),
        "nonsquare": ("{F}/nonsquare.npy", False, ("nonsquare.npy",)),
        "nonsquare_tif": ("{F}/nonsquare.tif", False, ("nonsquare.tif",)),
        "7x7": ("{F}/p7.npy", False, ("p7.npy",)),
        "2x2": ("{F}/p2.npy", False, ("p2.npy",)),
        "huge": ("{F}/huge.npy", False, ("huge.npy",)),
        "stack4": ("{F}/stack4.npy", False, ("stack4.npy",)),
        "vector": ("{F}/vector.npy", False, ("vector.npy",)),
        "complex": ("{F}/complex.npy", False, ("complex.npy",)),
        "negative": ("{F}/negative.npy", None, ("negative.npy",)),
        "bigvalues": ("{F}/bigvalues.npy", None, ("bigvalues.npy",)),
        "pickle": ("hostile.npy", False, ("hostile.npy",)),
    }
    for key, (path, legal, mention) in patterns.items():
        setup = hostile("hostile.npy", "npy") if key == "pickle" else None
        issue = {"7x7": "9", "nonsquare": "9", "all_nan": "9"}.get(key, "")
        add(f"fit-pattern-{key}", ["fit", "{F}/sto.cif", path, "-o", "fit", *FIT, "--refine", "b,thickness"], legal,
            setup=setup, mention=mention, timeout=180, issue=issue)
        if key not in ("npy", "int16", "empty_npy", "random_png", "some_nan", "zeros", "nonsquare_tif", "2x2", "vector",
                       "negative", "bigvalues", "inf"):
            add(f"felix-export-pattern-{key}", ["felix", "export", "{F}/sto.cif", "--pattern", path, "-o", "fx"], legal,
                setup=setup, mention=mention)
        if key in ("good", "missing", "random_tif", "all_nan", "constant", "nonsquare", "7x7", "huge", "stack4",
                   "pickle", "cif_as_pattern"):
            # the tiny inverse model takes 16x16 patterns: only p16.tif is legal there, and bad content is
            # tried at that size so that the size check does not hide it
            path = {"good": "{F}/p16.tif", "all_nan": "{F}/nan16.npy", "constant": "{F}/const16.npy"}.get(key, path)
            add(f"invert-pattern-{key}", ["invert", path, "--thickness", "50", "--a", "3.905", "-o", "pot.tif",
                                          "--model", "{F}/i.pt"],
                key == "good", setup=setup, mention=(Path(path).name,) if key != "good" else ())



def mask_cases(add, device_ok: bool) -> None:
    """Masks (fit)."""
    for key, legal in [("ones", True), ("200", True), ("zero", False), ("onepixel", False), ("63", False),
                       ("16", False), ("nan", False)]:
        add(f"fit-mask-{key}", ["fit", "{F}/sto.cif", "{F}/p32.tif", "-o", "fit", *FIT, "--refine", "b,thickness",
                                "--mask", f"{{F}}/mask_{key}.npy"],
            legal, mention=(f"--mask|mask_{key}.npy",), timeout=180, issue="9")
    for key, path in [("missing", "{F}/missing_mask.npy"), ("random", "{F}/random.npy"), ("folder", "{F}/dir.tif"),
                      ("empty", "{F}/empty.npy")]:
        add(f"fit-mask-{key}", ["fit", "{F}/sto.cif", "{F}/p32.tif", "-o", "fit", *FIT, "--mask", path],
            mention=(Path(path).name,), issue="9")



def fit_cases(add, device_ok: bool) -> None:
    """Fit options."""
    FITC = ["fit", "{F}/sto.cif", "{F}/p32.tif", "-o", "fit"]
    has_result = exists("fit/refined.cif", "fit/report.json")
    add("fit-refine-thickness", [*FITC, *FIT, "--refine", "thickness"], True, check=has_result, timeout=180, issue="1")
    add("fit-refine-empty", [*FITC, *FIT, "--refine", ""], None, check=has_result, timeout=180, issue="1")
    add("fit-refine-b-fix-all", [*FITC, *FIT, "--refine", "b", "--fix", "Sr1,Ti1,O1"], True, check=has_result,
        timeout=180, issue="1")
    add("fit-refine-nonsense", [*FITC, *FIT, "--refine", "xyz,banana"], mention=("--refine|banana",))
    add("fit-fix-unknown-label", [*FITC, *FIT, "--fix", "Nope1"], mention=("--fix|Nope1",))
    add("fit-no-polish", [*FITC, "--beams", "20", "--no-seed", "--no-surrogate", "--no-polish", "--refine", "b,thickness"],
        True, check=has_result, timeout=180, issue="2")
    add("fit-no-polish-thickness", [*FITC, "--beams", "20", "--no-seed", "--no-surrogate", "--no-polish", "--refine",
                                    "thickness"], True, check=has_result, timeout=180, issue="2")
    for opt, values, issue in [("--thickness", ["-5", "0", "nan", "inf", "1e9"], "9"),
                               ("--half-width", ["1e6", "-1", "nan", "0"], "11"),
                               ("--blur", ["-2", "nan", "1e3"], "14"),
                               ("--beams", ["1", "0", "-5", "100000"], "7"),
                               ("--kv", ["1e9", "0", "-200", "nan"], "9"),
                               ("--size", ["10000", "7", "0", "-32"], "10"),
                               ("--max-iter", ["0", "-1"], "14"),
                               ("--restarts", ["0", "-5"], "14")]:
        for v in values:
            add(f"fit-{opt.strip('-')}-{v}", [*FITC, *FIT, "--refine", "b,thickness", opt, v], mention=(opt,), issue=issue,
                check=NOT_AFTER_FIT)
    for opt, v in [("--thickness", "abc"), ("--max-iter", "abc"), ("--blur", "x")]:
        add(f"fit-{opt.strip('-')}-nonnumeric", [*FITC, *FIT, opt, v], mention=(opt, ))
    add("fit-device-cuda", [*FITC, *FIT, "--device", "cuda"], device_ok, mention=("--device|cuda",), issue="7",
        check=NOT_AFTER_FIT, timeout=180)
    add("fit-device-nonsense", [*FITC, *FIT, "--device", "nonsense"], mention=("--device|nonsense",), issue="7",
        check=NOT_AFTER_FIT)
    add("fit-check-nonsense", [*FITC, *FIT, "--check", "nonsense"], mention=("--check|nonsense",), issue="8",
        check=NOT_AFTER_FIT)
    add("fit-check-felix-missing", [*FITC, *FIT, "--check", "felix"], env={"LACBED_FELIX": "{D}/no-felix"},
        mention=("--check|felix",), issue="8", check=NOT_AFTER_FIT, timeout=180)
    add("fit-check-felix-timeout-negative", [*FITC, *FIT, "--check", "felix"],
        env={"LACBED_FELIX": "{F}/bin/felix", "LACBED_FELIX_TIMEOUT": "-1", "HARNESS_FELIX_MARKER": "{D}/felix-ran"},
        mention=("LACBED_FELIX_TIMEOUT",), issue="14", timeout=180,
        check=all_of(NOT_AFTER_FIT, absent("felix-ran")))
    fit41 = [a if a != "20" else "41" for a in FIT]  # FELIX needs a pool of at least 40 beams
    add("fit-felix-seed-default", [*FITC, *fit41, "--refine", "b,thickness", "--felix-seed"], True,
        check=exists("fit/felix/felix.inp"), timeout=180, issue="13")
    add("fit-felix-seed-small-pool", [*FITC, *FIT, "--refine", "b,thickness", "--felix-seed"],
        mention=("--felix-seed|beams|pool",), check=NOT_AFTER_FIT, timeout=180, issue="8")
    add("fit-felix-seed-bad-letters", [*FITC, *FIT, "--refine", "b,thickness", "--felix-seed", "QZ"],
        mention=("--felix-seed",), check=NOT_AFTER_FIT, timeout=180)
    for which, flag, drop in [("forward", "--forward-model", "--no-surrogate"), ("inverse", "--inverse-model", "--no-seed")]:
        base = [*FITC, *[a for a in FIT if a != drop], "--refine", "b,thickness", flag]
        for key, path, mention in [("missing", "{F}/missing.pt", "missing.pt"), ("random", "{F}/random.pt", "random.pt"),
                                   ("empty", "{F}/empty.pt", "empty.pt"), ("folder", "{F}/dir.pt", "dir.pt"),
                                   ("truncated", "{F}/truncated.pt", "truncated.pt"),
                                   ("nan-weights", "{F}/nanweights.pt", "nanweights.pt"),
                                   ("hostile", "hostile.pt", "hostile.pt"),
                                   ("wrong-direction", "{F}/" + ("i.pt" if which == "forward" else "f.pt"),
                                    "i.pt" if which == "forward" else "f.pt")]:
            add(f"fit-{which}-model-{key}", [*base, path], mention=(f"{mention}|{flag}",), timeout=180,
                setup=hostile("hostile.pt") if key == "hostile" else None, check=NOT_AFTER_FIT,
                issue="9" if key == "nan-weights" else "11")
    add("fit-output-existing-result", [*FITC, *FIT], setup=steps(write("fit/refined.cif", "precious\n"),
                                                                   write("fit/report.json", "{}\n")),
        protect=("fit",), mention=("fit",), issue="4")
    add("fit-output-existing-notes", [*FITC, *FIT, "--refine", "b,thickness"], True, setup=write("fit/notes.txt", "mine\n"),
        protect=("fit/notes.txt",), check=has_result, timeout=180)
    add("fit-output-under-file", ["fit", "{F}/sto.cif", "{F}/p32.tif", "-o", "file/sub", *FIT],
        setup=write("file", "x"), protect=("file",), mention=("file",), issue="8")
    add("fit-output-readonly", ["fit", "{F}/sto.cif", "{F}/p32.tif", "-o", "ro/fit", *FIT], setup=mkdir("ro", 0o555),
        mention=("ro",), needs_permissions=True, issue="8")
    add("fit-output-is-pattern", ["fit", "{F}/sto.cif", "p.tif", "-o", "p.tif", *FIT], setup=copy("p32.tif", "p.tif"),
        protect=("p.tif",), mention=("p.tif",))



def simulate_cases(add, device_ok: bool) -> None:
    """Simulate options."""
    SIMC = ["simulate", "{F}/sto.cif", "-o", "out.tif"]
    base = ["--size", "32", "--beams", "20", "--thickness", "50"]

    def sim_args(**over):
        args = dict(zip(base[::2], base[1::2]))
        args.update(over)
        return [x for k, v in args.items() if v is not None for x in (k, v)]

    for opt, values, issue in [("--kv", ["0", "-200", "1e9", "nan", "inf", "abc"], "9"),
                               ("--size", ["0", "3", "7", "-32", "10000", "abc", "1e3"], "10"),
                               ("--thickness", ["nan", "inf", "-50", "1e9", "abc", ""], "11"),
                               ("--half-width", ["0", "-1", "1e6", "nan"], "11"),
                               ("--beams", ["0", "1", "-5", "100000"], "7"),
                               ("--g-limit", ["0", "-1", "nan", "1e6"], ""),
                               ("--strong-beams", ["0", "-1", "1000000"], ""),
                               ("--absorption", ["-5", "nan", "1e6"], ""),
                               ("--workers", ["0", "-1", "abc"], "14"),
                               ("--reflections", ["1 2", "a b c", "0 0 0;0 0 0", "200 0 0", "1 0 0"], ""),
                               ("--device", ["nonsense"], "7"),
                               ("--engine", ["nonsense"], "11"),
                               ("--precision", ["sloppy"], ""),
                               ("--form-factors", ["xray"], "")]:
        for v in values:
            over = {opt: v}
            if opt in ("--g-limit",):
                over["--beams"] = None
            legal = None if (opt, v) in (("--beams", "1"), ("--reflections", "1 0 0"), ("--strong-beams", "1000000")) else False
            add(f"simulate-{opt.strip('-')}-{v.replace(' ', '_').replace(';', '+') or 'empty'}",
                [*SIMC, *sim_args(**over)], legal, mention=(opt,), issue=issue)
    add("simulate-thickness-zero", [*SIMC, *sim_args(**{"--thickness": "0"})], None, mention=("--thickness",))
    add("simulate-workers-1000", [*SIMC, *sim_args(**{"--workers": "1000"})], True,
        check=says(r"(?i)cap|cpu|worker", "stderr", "--workers 1000 not capped with a warning"), issue="14")
    add("simulate-device-cuda", [*SIMC, *sim_args(**{"--device": "cuda"})], device_ok, mention=("--device|cuda",), issue="7")
    add("simulate-engine-felix-missing", [*SIMC, *sim_args(), "--engine", "felix"], env={"LACBED_FELIX": "{D}/no-felix"},
        mention=("felix",), issue="8")
    add("simulate-felix-timeout-negative", [*SIMC, *sim_args(), "--engine", "felix"],
        env={"LACBED_FELIX": "{F}/bin/felix", "LACBED_FELIX_TIMEOUT": "-1", "HARNESS_FELIX_MARKER": "{D}/felix-ran"},
        mention=("LACBED_FELIX_TIMEOUT",), check=absent("felix-ran"), issue="14")
    for var, v in [("LACBED_FELIX_TIMEOUT", "0"), ("LACBED_FELIX_TIMEOUT", "abc"), ("LACBED_FELIX_TIMEOUT", "nan"),
                   ("LACBED_FELIX_RANKS", "0"), ("LACBED_FELIX_RANKS", "-1"), ("LACBED_FELIX_RANKS", "abc")]:
        add(f"simulate-felix-{var.split('_')[-1].lower()}-{v}", [*SIMC, *sim_args(), "--engine", "felix"],
            env={"LACBED_FELIX": "{F}/bin/felix", var: v, "HARNESS_FELIX_MARKER": "{D}/felix-ran"},
            mention=(var,), check=absent("felix-ran"), issue="14")
    add("simulate-output-existing", [*SIMC, *sim_args()], setup=write("out.tif", b"precious"), protect=("out.tif",),
        mention=("out.tif",), issue="4")
    add("simulate-output-overwrite", [*SIMC, *sim_args(), "--overwrite"], True, setup=write("out.tif", b"old"),
        check=exists("out.tif"))
    add("simulate-output-is-cif", ["simulate", "sto.cif", "-o", "sto.cif", *sim_args()], setup=copy("sto.cif"),
        protect=("sto.cif",), mention=("sto.cif",))
    add("simulate-output-bad-extension", [*SIMC[:3], "out.jpg", *sim_args()], mention=("out.jpg|.jpg",))
    add("simulate-output-folder", [*SIMC[:3], "adir", *sim_args()], setup=mkdir("adir"), mention=("adir",))
    add("simulate-output-under-file", [*SIMC[:3], "file/out.tif", *sim_args()], setup=write("file", "x"),
        protect=("file",), mention=("file",), issue="8")
    add("simulate-output-readonly", [*SIMC[:3], "ro/out.tif", *sim_args()], setup=mkdir("ro", 0o555), mention=("ro",),
        needs_permissions=True, issue="8")
    add("simulate-modes", [*SIMC, *sim_args()], True, issue="12")
    add("simulate-npy-modes", [*SIMC[:3], "out.npy", *sim_args()], True, issue="12")
    add("simulate-h5-modes", [*SIMC[:3], "out.h5", *sim_args()], True, issue="12")



def potential_cases(add, device_ok: bool) -> None:
    """Potential."""
    for v in ["0", "-1", "7", "10000", "abc"]:
        add(f"potential-size-{v}", ["potential", "{F}/sto.cif", "-o", "pot.tif", "--size", v], mention=("--size",),
            issue="10")
    add("potential-output-existing", ["potential", "{F}/sto.cif", "-o", "pot.tif", "--size", "32"],
        setup=write("pot.tif", b"precious"), protect=("pot.tif",), mention=("pot.tif",), issue="4")
    add("potential-output-under-file", ["potential", "{F}/sto.cif", "-o", "file/pot.tif", "--size", "32"],
        setup=write("file", "x"), protect=("file",), mention=("file",))
    add("potential-output-bad-extension", ["potential", "{F}/sto.cif", "-o", "pot.bmp", "--size", "32"],
        mention=("pot.bmp|.bmp",))



def batch_cases(add, device_ok: bool) -> None:
    """Batch."""
    good_row = "{F}/sto.cif,{F}/p32.tif"
    manifests = {
        "missing-file": (None, False, ("nope.csv",)),
        "empty": ("", False, ("manifest.csv",)),
        "header-only": ("cif,pattern\n", False, ("manifest.csv",)),
        "random-bytes": (random.Random(2).randbytes(2000), False, ("manifest.csv",)),
        "non-utf8": ("cif,pattern,id\n".encode() + b"{F}/sto.cif,{F}/p32.tif,caf\xe9\n", False, ("manifest.csv",)),
        "missing-column": ("cif,id\n{F}/sto.cif,a\n", False, ("pattern",)),
        "unknown-column": (f"cif,pattern,id,flavour\n{good_row},a,vanilla\n", False, ("flavour",)),
        "id-dotdot": (f"cif,pattern,id,refine,beams\n{good_row},../../x,thickness,20\n", False, ("../../x",)),
        "id-absolute": (f"cif,pattern,id,refine,beams\n{good_row},{{D}}/abs_x,thickness,20\n", False, ("abs_x",)),
        "id-hidden": (f"cif,pattern,id,refine,beams\n{good_row},.hidden,thickness,20\n", False, (".hidden",)),
        "id-duplicate": (f"cif,pattern,id,refine,beams\n{good_row},a,thickness,20\n{good_row},a,thickness,20\n", False,
                         ("a",)),
        "row-bad-thickness": (f"cif,pattern,id,refine,beams,thickness\n{good_row},a,thickness,20,-5\n", False,
                              ("thickness",)),
        "row-bad-refine": (f"cif,pattern,id,refine,beams\n{good_row},a,banana,20\n", False, ("banana|refine",)),
        "row-missing-cif": ("cif,pattern,id,refine,beams\n{F}/nope.cif,{F}/p32.tif,a,thickness,20\n", False,
                            ("nope.cif",)),
    }
    for key, (content, legal, mention) in manifests.items():
        argv = ["batch", "nope.csv" if content is None else "manifest.csv", "-o", "a/b/out"]
        setup = None if content is None else write("manifest.csv", content)
        row_level = key.startswith("row-")  # a failing row is reported in its folder (exit 1) by design
        add(f"batch-manifest-{key}", argv, legal, setup=setup, mention=mention if not row_level else ("fail",),
            error_codes=(1, 2), may_leave=("a/b/out",) if row_level else (), check=absent("a/x", "abs_x", "x"),
            issue="3" if key.startswith("id") else "11", timeout=180)
    add("batch-manifest-folder", ["batch", "{F}/dir.csv", "-o", "out"], mention=("dir.csv",))
    add("batch-row-thickness-only", ["batch", "manifest.csv", "-o", "out"], True,
        setup=write("manifest.csv", f"cif,pattern,id,refine,beams\n{good_row},s1,thickness,20\n"),
        check=exists("out/s1/report.json"), timeout=240, issue="1")
    add("batch-some-rows-fail", ["batch", "manifest.csv", "-o", "out"],
        setup=write("manifest.csv", f"cif,pattern,id,refine,beams\n{good_row},good,b,20\n"
                                    "{F}/sto.cif,{F}/nan.npy,bad,b,20\n"),
        error_codes=(1, 2), may_leave=("out",), mention=("fail|nan.npy",), timeout=240, issue="5")
    add("batch-rerun-after-cif-change", ["batch", "manifest.csv", "-o", "out"], True,
        setup=steps(copy("sto.cif", "s.cif"),
                    write("manifest.csv", "cif,pattern,id,refine,beams\n{D}/s.cif,{F}/p32.tif,s1,b,20\n"),
                    cli_step("batch", "manifest.csv", "-o", "out"),
                    write("s.cif", STO.replace("0.5 1\n", "0.9 1\n", 1))),
        check=says(r"\b1 done", "stdout", "rerun skipped a sample whose CIF changed"), timeout=300, issue="5")
    for v in ["0", "-1"]:
        add(f"batch-workers-{v}", ["batch", "manifest.csv", "-o", "out", "--workers", v],
            setup=write("manifest.csv", f"cif,pattern,id,refine,beams\n{good_row},s1,b,20\n"), mention=("--workers",),
            issue="14")
    add("batch-workers-1000", ["batch", "manifest.csv", "-o", "out", "--workers", "1000"], True,
        setup=write("manifest.csv", f"cif,pattern,id,refine,beams\n{good_row},s1,b,20\n"), timeout=240, issue="14")
    add("batch-scheduler-unreachable", ["batch", "manifest.csv", "-o", "out", "--scheduler", "tcp://127.0.0.1:9"],
        setup=write("manifest.csv", f"cif,pattern,id,refine,beams\n{good_row},s1,b,20\n"),
        mention=("--scheduler|127.0.0.1|dask",), timeout=120)
    add("batch-output-under-file", ["batch", "manifest.csv", "-o", "file/out"],
        setup=steps(write("manifest.csv", f"cif,pattern\n{good_row}\n"), write("file", "x")), protect=("file",),
        mention=("file",))



def dataset_build_cases(add, device_ok: bool) -> None:
    """Dataset build."""
    BUILD = ["dataset", "build", "-o", "d.h5", "--size", "16", "--beams", "20", "--thickness", "50", "--workers", "1",
             "--no-progress"]
    add("dataset-build-good", [*BUILD, "--cifs", "{F}/cifs"], True, check=exists("d.h5"), timeout=120, issue="12")
    add("dataset-build-cifs-missing", [*BUILD, "--cifs", "{F}/nope"], mention=("nope",))
    add("dataset-build-cifs-is-file", [*BUILD, "--cifs", "{F}/sto.cif"], mention=("sto.cif",))
    add("dataset-build-cifs-empty", [*BUILD, "--cifs", "empty"], setup=mkdir("empty"), mention=("empty|no structure",))
    add("dataset-build-nothing", BUILD, mention=("--cifs|--synthetic|nothing|no structure",))
    add("dataset-build-synthetic-negative", [*BUILD, "--synthetic", "-1"], mention=("--synthetic",))
    for opt, values, issue in [("--size", ["0", "7", "10000"], "10"), ("--beams", ["0", "100000"], "7"),
                               ("--thickness", ["nan", "-5"], "11"), ("--workers", ["0", "-1"], "14"),
                               ("--engine", ["nonsense"], "11")]:
        for v in values:
            argv = [a for a in BUILD]
            if opt in argv:
                argv[argv.index(opt) + 1] = v
            else:
                argv += [opt, v]
            add(f"dataset-build-{opt.strip('-')}-{v}", [*argv, "--cifs", "{F}/cifs"], mention=(opt,), issue=issue)
    add("dataset-build-workers-1000", [*BUILD[:-3], "--workers", "1000", "--no-progress", "--cifs", "{F}/cifs"], True,
        check=exists("d.h5"), timeout=120, issue="14")
    add("dataset-build-engine-felix-missing", [*BUILD, "--cifs", "{F}/cifs", "--engine", "felix"],
        env={"LACBED_FELIX": "{D}/no-felix"}, mention=("felix",), issue="8")
    add("dataset-build-output-existing-other", [*BUILD, "--cifs", "{F}/cifs"], setup=copy("d.h5"), protect=("d.h5",),
        mention=("d.h5|--overwrite",), timeout=120, issue="4")
    add("dataset-build-output-is-random-file", [*BUILD, "--cifs", "{F}/cifs"], setup=write("d.h5", b"precious bytes"),
        protect=("d.h5",), mention=("d.h5",), issue="4")
    add("dataset-build-output-folder", [*BUILD[:2], "-o", "adir", *BUILD[4:], "--cifs", "{F}/cifs"],
        setup=mkdir("adir"), mention=("adir",))
    add("dataset-build-output-under-file", [*BUILD[:2], "-o", "file/d.h5", *BUILD[4:], "--cifs", "{F}/cifs"],
        setup=write("file", "x"), protect=("file",), mention=("file",))
    add("dataset-build-output-readonly", [*BUILD[:2], "-o", "ro/d.h5", *BUILD[4:], "--cifs", "{F}/cifs"],
        setup=mkdir("ro", 0o555), mention=("ro",), needs_permissions=True)
    add("dataset-build-scheduler-unreachable", [*BUILD, "--cifs", "{F}/cifs", "--scheduler", "tcp://127.0.0.1:9"],
        mention=("--scheduler|127.0.0.1|dask",), timeout=120)



def import_png_cases(add, device_ok: bool) -> None:
    """Dataset import-png."""
    SPLITS = ["--split-file", "{F}/splits/train", "--split-file", "{F}/splits/val", "--split-file", "{F}/splits/test"]
    add("import-png-good", ["dataset", "import-png", "{F}/png", *SPLITS, "-o", "d.h5", "--no-progress"], True,
        check=exists("d.h5"), issue="12")
    add("import-png-root-missing", ["dataset", "import-png", "{F}/nope", *SPLITS, "-o", "d.h5"], mention=("nope",))
    add("import-png-root-is-file", ["dataset", "import-png", "{F}/sto.cif", *SPLITS, "-o", "d.h5"], mention=("sto.cif",))
    add("import-png-root-empty", ["dataset", "import-png", "empty", "-o", "d.h5"], setup=mkdir("empty"), mention=("empty",))
    add("import-png-output-existing", ["dataset", "import-png", "{F}/png", *SPLITS, "-o", "d.h5", "--no-progress"],
        setup=copy("d.h5"), protect=("d.h5",), mention=("d.h5",), issue="4")
    add("import-png-output-is-split-file", ["dataset", "import-png", "{F}/png", "--split-file", "train", "-o", "train"],
        setup=copy("splits/train", "train"), protect=("train",), mention=("train",), issue="4")
    add("import-png-random-image", ["dataset", "import-png", "png", "-o", "d.h5", "--no-progress"], True,
        setup=steps(copy("png"), write("png/s1/pattern_0500.png", random.Random(3).randbytes(500))),
        check=says(r"1 failed", "stdout", "an unreadable PNG was not listed as failed"))
    add("import-png-mixed-sizes", ["dataset", "import-png", "png", "-o", "d.h5", "--no-progress"], None,
        setup=steps(copy("png"), png_of_size("png/s1/potential.png", 24)),
        check=says(r"failed", "stdout", "an image of another size was not reported"))
    add("import-png-split-non-utf8", ["dataset", "import-png", "{F}/png", "--split-file", "train", "-o", "d.h5"],
        setup=write("train", b"s0\ns\xff1\n"), mention=("train",), issue="11")
    add("import-png-split-wrong-name", ["dataset", "import-png", "{F}/png", "--split-file", "holdout", "-o", "d.h5"],
        setup=write("holdout", "s0\n"), mention=("holdout",))
    add("import-png-split-unknown-id", ["dataset", "import-png", "{F}/png", "--split-file", "train", "-o", "d.h5",
                                        "--no-progress"], None, setup=write("train", "s0\nzz9\n"), mention=("zz9",))
    add("import-png-split-missing", ["dataset", "import-png", "{F}/png", "--split-file", "{F}/nope/train", "-o", "d.h5"],
        mention=("train",))



def dataset_file_cases(add, device_ok: bool) -> None:
    """Dataset info / status / subset / synthetic."""
    for key, path, mention in [("missing", "{F}/nope.h5", "nope.h5"), ("empty", "{F}/empty.h5", "empty.h5"),
                               ("random", "{F}/random.h5", "random.h5"), ("folder", "{F}/dir.h5", "dir.h5"),
                               ("not-a-dataset", "{F}/blank.h5", "blank.h5"), ("truncated", "{F}/truncated.h5", "truncated.h5"),
                               ("cif", "{F}/sto.cif", "sto.cif")]:
        add(f"dataset-info-{key}", ["dataset", "info", path], mention=(mention,), issue="11")
        add(f"dataset-subset-{key}", ["dataset", "subset", path, "-o", "s.h5"], mention=(mention,), issue="11")
        if key in ("missing", "random", "folder"):
            add(f"dataset-status-{key}", ["dataset", "status", path], mention=(mention,), issue="11")
    add("dataset-info-good", ["dataset", "info", "{F}/d.h5", "--verify"], True)
    add("dataset-info-short-arrays", ["dataset", "info", "{F}/short.h5", "--verify"], error_codes=(1, 2),
        mention=("short.h5|MISMATCH",), issue="7")
    add("dataset-status-finished", ["dataset", "status", "{F}/d.h5"], None, mention=("d.h5",))
    add("dataset-status-corrupt-work", ["dataset", "status", "d.h5"],
        setup=steps(write("d.h5.work/shard-000.h5", random.Random(4).randbytes(300)), write("d.h5.work/spec.json", "{bad")),
        mention=("d.h5",))
    SUB = ["dataset", "subset", "{F}/d.h5", "-o", "s.h5"]
    add("dataset-subset-good", [*SUB, "-n", "2"], True, check=exists("s.h5"), issue="12")
    add("dataset-subset-output-is-input", ["dataset", "subset", "d.h5", "-o", "d.h5"], setup=copy("d.h5"),
        protect=("d.h5",), mention=("d.h5",), issue="4")
    add("dataset-subset-output-existing", [*SUB], setup=write("s.h5", b"precious"), protect=("s.h5",),
        mention=("s.h5",), issue="4")
    for v in ["-2", "0", "abc"]:
        add(f"dataset-subset-n-{v}", [*SUB, "-n", v], mention=("-n",), issue="9")
    add("dataset-subset-n-1000", [*SUB, "-n", "1000"], None, mention=("-n",))
    add("dataset-subset-split-nonsense", [*SUB, "--split", "nonsense"], mention=("--split|nonsense",))
    add("dataset-subset-source-nonsense", [*SUB, "--source", "nonsense"], mention=("--source|nonsense",))
    add("dataset-subset-short-arrays", ["dataset", "subset", "{F}/short.h5", "-o", "s.h5", "-n", "4"],
        mention=("short.h5",), issue="7")
    add("dataset-subset-output-under-file", ["dataset", "subset", "{F}/d.h5", "-o", "file/s.h5"],
        setup=write("file", "x"), protect=("file",), mention=("file",))
    SYN = ["dataset", "synthetic"]
    add("dataset-synthetic-good", [*SYN, "2", "-o", "syn"], True, check=exists("syn"), issue="12")
    for v in ["-1", "abc"]:
        add(f"dataset-synthetic-n-{v}", [*SYN, v, "-o", "syn"], mention=("N|-1|abc|count",))
    add("dataset-synthetic-n-0", [*SYN, "0", "-o", "syn"], None, mention=("N|0",))
    add("dataset-synthetic-n-huge", [*SYN, "10000000", "-o", "syn"], False, mention=("N|10000000",), timeout=60)
    add("dataset-synthetic-start-negative", [*SYN, "2", "--start", "-5", "-o", "syn"], mention=("--start",))
    add("dataset-synthetic-output-under-file", [*SYN, "2", "-o", "file/syn"], setup=write("file", "x"),
        protect=("file",), mention=("file",))
    add("dataset-synthetic-output-existing-cif", [*SYN, "1", "-o", "syn"], None,
        setup=write("syn/syn0-000000.cif", "my own structure\n"), protect=("syn/syn0-000000.cif",), issue="4")



def train_cases(add, device_ok: bool) -> None:
    """Train."""
    TRAIN = ["train", "forward", "--data", "{F}/d.h5", "-o", "m.pt", "--epochs", "1", "--batch-size", "2",
             "--threads", "1"]
    add("train-good", TRAIN, True, check=exists("m.pt"), timeout=180, issue="12")
    for key, path, mention in [("missing", "{F}/nope.h5", "nope.h5"), ("random", "{F}/random.h5", "random.h5"),
                               ("empty", "{F}/empty.h5", "empty.h5"), ("folder", "{F}/dir.h5", "dir.h5"),
                               ("not-a-dataset", "{F}/blank.h5", "blank.h5"),
                               ("truncated", "{F}/truncated.h5", "truncated.h5"),
                               ("short-arrays", "{F}/short.h5", "short.h5"),
                               ("no-train-split", "{F}/sample128.h5", "train")]:
        argv = list(TRAIN)
        argv[argv.index("{F}/d.h5")] = path
        add(f"train-data-{key}", argv, mention=(mention,), issue="7" if key == "short-arrays" else "11", timeout=120)
    add("train-output-existing", TRAIN, setup=copy("f.pt", "m.pt"), protect=("m.pt",), mention=("m.pt",), issue="4")
    add("train-output-existing-other-file", TRAIN, setup=write("m.pt", b"precious"), protect=("m.pt",),
        mention=("m.pt",), issue="4")
    add("train-output-is-data", ["train", "forward", "--data", "d.h5", "-o", "d.h5", "--epochs", "1"],
        setup=copy("d.h5"), protect=("d.h5",), mention=("d.h5",), issue="4")
    add("train-resume-missing", [*TRAIN, "--resume"], mention=("m.pt|--resume",))
    add("train-resume-corrupt", [*TRAIN, "--resume"], setup=copy("truncated.pt", "m.pt"), protect=("m.pt",),
        mention=("m.pt",), issue="11")
    add("train-resume-hostile", [*TRAIN, "--resume"], setup=hostile("m.pt"), mention=("m.pt",), issue="11")
    add("train-resume-other-direction", [*TRAIN, "--resume"], setup=copy("i.pt", "m.pt"), protect=("m.pt",),
        mention=("m.pt|inverse|forward",))
    for opt, values in [("--epochs", ["0", "-1"]), ("--minutes", ["0", "-1", "nan"]), ("--lr", ["0", "-1", "nan", "inf"]),
                        ("--batch-size", ["0", "-1"]), ("--threads", ["0", "-1"])]:
        for v in values:
            argv = list(TRAIN)
            if opt in argv:
                argv[argv.index(opt) + 1] = v
            else:
                argv += [opt, v]
            add(f"train-{opt.strip('-')}-{v}", argv, mention=(opt,), issue="14")
    add("train-threads-64", [*TRAIN[:-2], "--threads", "64"], None, check=exists("m.pt"), timeout=180, issue="14")
    add("train-device-cuda", [*TRAIN, "--device", "cuda"], device_ok, mention=("--device|cuda",), issue="7", timeout=180)
    add("train-device-nonsense", [*TRAIN, "--device", "nonsense"], mention=("--device|nonsense",), issue="7")
    for key, content, mention in [("missing", None, "nope.json"), ("bad-json", "{not json", "config.json"),
                                  ("unknown-section", '{"flavour": {"x": 1}}', "flavour"),
                                  ("unknown-key", '{"train": {"banana": 1}}', "banana"),
                                  ("non-utf8", b'{"train": {"lr": 1e-3}} \xff', "config.json"),
                                  ("bad-value", '{"train": {"lr": -1}}', "lr")]:
        path = "nope.json" if content is None else "config.json"
        add(f"train-config-{key}", [*TRAIN, "--config", path], setup=None if content is None else write(path, content),
            mention=(mention,), issue="11")
    add("train-output-under-file", [*TRAIN[:4], "-o", "file/m.pt", *TRAIN[6:]], setup=write("file", "x"),
        protect=("file",), mention=("file",))
    add("train-output-readonly", [*TRAIN[:4], "-o", "ro/m.pt", *TRAIN[6:]], setup=mkdir("ro", 0o555), mention=("ro",),
        needs_permissions=True, issue="8")



def evaluate_cases(add, device_ok: bool) -> None:
    """Evaluate."""
    EVAL = ["evaluate", "{F}/f.pt", "--data", "{F}/d.h5", "--split", "test"]
    add("evaluate-good", [*EVAL, "--report", "rep"], True, check=exists("rep/report.json"), timeout=180, issue="12")
    for key, path, mention in [("missing", "{F}/nope.pt", "nope.pt"), ("random", "{F}/random.pt", "random.pt"),
                               ("empty", "{F}/empty.pt", "empty.pt"), ("folder", "{F}/dir.pt", "dir.pt"),
                               ("truncated", "{F}/truncated.pt", "truncated.pt"),
                               ("nan-weights", "{F}/nanweights.pt", "nanweights.pt"),
                               ("hostile", "hostile.pt", "hostile.pt")]:
        add(f"evaluate-model-{key}", ["evaluate", path, *EVAL[2:]], setup=hostile("hostile.pt") if key == "hostile" else None,
            mention=(mention,), check=NO_NAN_SCORES, issue="9" if key == "nan-weights" else "11")
    add("evaluate-size-mismatch", ["evaluate", "{F}/f.pt", "--data", "{F}/sample128.h5", "--split", "test"],
        mention=("size|pixels|128|16",), issue="7")
    add("evaluate-nan-scores", ["evaluate", "{F}/f.pt", "--data", "{F}/nanpattern.h5", "--split", "test"], None,
        mention=("nan|NaN|finite",), check=NO_NAN_SCORES, issue="7")
    add("evaluate-short-arrays", ["evaluate", "{F}/f.pt", "--data", "{F}/short.h5", "--split", "test"],
        mention=("short.h5",), issue="7")
    add("evaluate-data-random", ["evaluate", "{F}/f.pt", "--data", "{F}/random.h5"], mention=("random.h5",), issue="11")
    add("evaluate-split-nonsense", [*EVAL[:4], "--split", "nonsense"], mention=("--split|nonsense",))
    add("evaluate-source-real-none", [*EVAL, "--source", "real"], None, mention=("real|no structure|split",))
    for v in ["0", "-1"]:
        add(f"evaluate-batch-size-{v}", [*EVAL, "--batch-size", v], mention=("--batch-size",))
    add("evaluate-device-cuda", [*EVAL, "--device", "cuda"], device_ok, mention=("--device|cuda",), issue="7")
    add("evaluate-report-under-file", [*EVAL, "--report", "file/rep"], setup=write("file", "x"), protect=("file",),
        mention=("file",))
    add("evaluate-inverse-and-forward", ["evaluate", "{F}/f.pt", "{F}/i.pt", "--data", "{F}/d.h5", "--split", "test"], None,
        mention=("i.pt|direction|forward|inverse",))



def predict_cases(add, device_ok: bool) -> None:
    """Predict."""
    PRED = ["predict", "{F}/sto.cif", "--thickness", "50", "-o", "pred.tif", "--model", "{F}/f.pt"]
    for v in ["nan", "-5", "abc", "", "1e9"]:
        argv = list(PRED)
        argv[3] = v
        add(f"predict-thickness-{v or 'empty'}", argv, mention=("--thickness",), issue="11")
    for key, path, mention in [("missing", "{F}/nope.pt", "nope.pt"), ("random", "{F}/random.pt", "random.pt"),
                               ("truncated", "{F}/truncated.pt", "truncated.pt"),
                               ("nan-weights", "{F}/nanweights.pt", "nanweights.pt"),
                               ("hostile", "hostile.pt", "hostile.pt"), ("inverse", "{F}/i.pt", "i.pt|inverse|forward")]:
        add(f"predict-model-{key}", [*PRED[:-1], path], setup=hostile("hostile.pt") if key == "hostile" else None,
            mention=(mention,), issue="9" if key == "nan-weights" else "11")
    add("predict-potential-image-without-a", ["predict", "{F}/p16.tif", "--thickness", "50", "-o", "pred.tif",
                                              "--model", "{F}/f.pt"], None, mention=("--a",))
    for v in ["0", "-4", "nan", "1e6"]:
        add(f"predict-potential-a-{v}", ["predict", "{F}/p16.tif", "--thickness", "50", "-o", "pred.tif", "--model",
                                         "{F}/f.pt", "--a", v], mention=("--a",), issue="9")
    add("predict-source-random", ["predict", "{F}/random.tif", "--thickness", "50", "-o", "pred.tif"], mention=("random.tif",))
    add("predict-output-existing", PRED, setup=write("pred.tif", b"precious"), protect=("pred.tif",),
        mention=("pred.tif",), issue="4")
    add("predict-output-bad-extension", [*PRED[:4], "-o", "pred.gif", *PRED[6:]], mention=("pred.gif|.gif",))
    add("predict-device-cuda", [*PRED, "--device", "cuda"], device_ok, mention=("--device|cuda",), issue="7")
    add("predict-device-nonsense", [*PRED, "--device", "nonsense"], mention=("--device|nonsense",), issue="7")
    add("predict-shipped-model", ["predict", "{F}/sto.cif", "--thickness", "50,100", "-o", "pred.npy"], True, issue="12")



def invert_cases(add, device_ok: bool) -> None:
    """Invert."""
    INV = ["invert", "{F}/p16.tif", "--thickness", "50", "--a", "3.905", "-o", "pot.tif", "--model", "{F}/i.pt"]
    for opt, v in [("--thickness", "nan"), ("--thickness", "-1"), ("--a", "0"), ("--a", "-4"), ("--a", "nan"),
                   ("--a", "1e6")]:
        argv = list(INV)
        argv[argv.index(opt) + 1] = v
        add(f"invert-{opt.strip('-')}-{v}", argv, mention=(opt,), issue="9")
    for key, path, mention in [("random", "{F}/random.pt", "random.pt"), ("truncated", "{F}/truncated.pt", "truncated.pt"),
                               ("hostile", "hostile.pt", "hostile.pt"), ("forward", "{F}/f.pt", "f.pt|forward|inverse")]:
        add(f"invert-model-{key}", [*INV[:-1], path], setup=hostile("hostile.pt") if key == "hostile" else None,
            mention=(mention,), issue="11")
    add("invert-shipped-model-size", ["invert", "{F}/p32.tif", "-o", "pot.tif"], mention=("p32.tif|128|32",))
    add("invert-output-existing", INV, setup=write("pot.tif", b"precious"), protect=("pot.tif",), mention=("pot.tif",),
        issue="4")
    add("invert-device-cuda", [*INV, "--device", "cuda"], device_ok, mention=("--device|cuda",), issue="7")



def felix_cases(add, device_ok: bool) -> None:
    """Felix export / read."""
    FX = ["felix", "export", "{F}/sto.cif", "-o", "fx"]
    add("felix-export-default-refine-srtio3", FX, True, check=all_of(exists("fx/felix.inp"),
                                                                     says(r"B|dropped", "stderr", "did not say what it dropped")),
        issue="13")
    add("felix-export-refine-b-srtio3", [*FX, "--refine", "B"], mention=("--refine|B",), issue="13")
    add("felix-export-refine-bogus", [*FX, "--refine", "QZ"], mention=("refine|QZ",))
    for v in ["50,200,0", "50,200,-10", "200,50,10", "-50,200,50", "nan,200,50", "50,200", "1,4000,1e-9"]:
        add(f"felix-export-thickness-{v.replace(',', '_')}", [*FX, "--thickness", v], mention=("--thickness",), issue="14")
    for v in ["0", "-200", "1e9", "nan"]:
        add(f"felix-export-kv-{v}", [*FX, "--kv", v], mention=("--kv",), issue="9")
    for v in ["4", "0", "Xx1", "1,1"]:
        add(f"felix-export-sites-{v.replace(',', '_')}", [*FX, "--sites", v], mention=("--sites",))
    add("felix-export-output-existing", FX, setup=steps(write("fx/felix.inp", "precious\n"), write("fx/felix.cif", "mine\n")),
        protect=("fx",), mention=("fx",), issue="4")
    add("felix-export-output-under-file", [*FX[:3], "-o", "file/fx"], setup=write("file", "x"), protect=("file",),
        mention=("file",))
    add("felix-export-beams-100000", [*FX, "--beams", "100000"], mention=("--beams",), issue="7")
    add("felix-export-half-width-1e6", [*FX, "--half-width", "1e6"], mention=("--half-width",), issue="11")
    add("felix-read-missing", ["felix", "read", "{F}/nope", "-o", "s.npy"], mention=("nope",))
    add("felix-read-empty-folder", ["felix", "read", "empty", "-o", "s.npy"], setup=mkdir("empty"), mention=("empty",))
    add("felix-read-garbage", ["felix", "read", "sim", "-o", "s.npy"],
        setup=write("sim/SrTiO3_Sim_0500A_032x032/SrTiO3_+0+0+0.bin", random.Random(5).randbytes(1000)),
        mention=("SrTiO3_+0+0+0.bin|sim",), issue="11")
    add("felix-read-good", ["felix", "read", "sim", "-o", "s.npy"], True,
        setup=write("sim/SrTiO3_Sim_0500A_004x004/SrTiO3_+0+0+0.bin", np.arange(16, dtype="<f8").tobytes()), issue="12")
    add("felix-read-output-existing", ["felix", "read", "sim", "-o", "s.npy"],
        setup=steps(write("sim/SrTiO3_Sim_0500A_004x004/SrTiO3_+0+0+0.bin", np.arange(16, dtype="<f8").tobytes()),
                    write("s.npy", b"precious")), protect=("s.npy",), mention=("s.npy",), issue="4")



def misc_cases(add, device_ok: bool) -> None:
    """Plugins and environment."""
    add("plugins-good", ["plugins"], True)
    add("plugins-felix-missing", ["plugins"], True, env={"LACBED_FELIX": "{D}/no-felix"},
        check=says(r"not ready", "stdout", "a missing FELIX was not reported"))
    add("plugins-felix-timeout-negative", ["plugins"], True, env={"LACBED_FELIX": "{F}/bin/felix", "LACBED_FELIX_TIMEOUT": "-1"},
        check=says(r"LACBED_FELIX_TIMEOUT", "stdout", "a bad LACBED_FELIX_TIMEOUT was not reported"), issue="14")
    add("cli-unknown-command", ["frobnicate"], mention=("frobnicate",))
    add("cli-version", ["--version"], True)


SECTIONS = (cif_cases, pattern_cases, mask_cases, fit_cases, simulate_cases, potential_cases, batch_cases,
            dataset_build_cases, import_png_cases, dataset_file_cases, train_cases, evaluate_cases, predict_cases,
            invert_cases, felix_cases, misc_cases)


def build_cases(gpu: bool) -> list[Case]:
    """Every case: the sections below, in order. ``--device cuda`` is legal only with a GPU."""
    cases: list[Case] = []

    def add(name, argv, expect_ok=False, **kw):
        cases.append(Case(name, list(argv), expect_ok, **kw))

    for section in SECTIONS:
        section(add, gpu)
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SystemExit(f"duplicate case names: {sorted(dupes)}")
    return cases




def png_of_size(dst: str, size: int):
    """Setup: replace a PNG of the layout with one of another size."""
    def setup(D: Path, F: Path):
        from PIL import Image

        Image.fromarray(np.zeros((size, size), np.uint8)).save(D / dst)
    return setup


# ------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------
def expectation(case: Case) -> str:
    return {True: "legal", False: "refuse", None: "either"}[case.expect_ok]


def write_reports(outcomes: list[Outcome], out: Path | None, seconds: float) -> str:
    counts = {k: 0 for k in CLASSES}
    for o in outcomes:
        counts[o.klass] += 1
    tried = sum(1 for o in outcomes if o.klass != SKIPPED)
    lines = [
        "# Bad-input harness (`benchmarks/bad_inputs.py`)",
        "",
        f"{len(outcomes)} cases, {tried} run, {seconds / 60:.1f} min.",
        "",
        "| outcome | cases |",
        "|---|---|",
        f"| bad or edge inputs tried | {tried} |",
    ]
    lines += [f"| {k} | {counts[k]} |" for k in CLASSES]
    lines += ["", "Defects (every case that is not a clean error, an accepted legal input or skipped):", ""]
    bad = [o for o in outcomes if o.klass not in GOOD]
    for klass in CLASSES:
        group = [o for o in bad if o.klass == klass]
        if not group:
            continue
        lines += [f"## {klass} ({len(group)})", ""]
        by_note: dict[str, list[Outcome]] = {}
        for o in sorted(group, key=lambda o: o.case.name):
            by_note.setdefault(o.note, []).append(o)
        for note, same in by_note.items():
            if len(same) >= 4:  # one root cause, many cases: one line
                names = ", ".join(f"`{o.case.name}`" for o in same)
                lines.append(f"- {len(same)} cases: {note}: {names}")
                continue
            for o in same:
                issue = f" [issue {o.case.issue}]" if o.case.issue else ""
                detail = "; ".join(x for x in (o.note, f"last line: `{o.last_line[:160]}`" if o.last_line else "") if x)
                lines.append(f"- `{o.case.name}`{issue} (expected: {expectation(o.case)}, exit {o.returncode}): {detail}")
        lines.append("")
    summary = "\n".join(lines) + "\n"
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "cases.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["case", "outcome", "expected", "exit", "seconds", "issue", "note", "last_line", "command"])
            for o in sorted(outcomes, key=lambda o: o.case.name):
                w.writerow([o.case.name, o.klass, expectation(o.case), o.returncode, f"{o.seconds:.1f}", o.case.issue,
                            o.note, o.last_line[:300], " ".join(["lacbed-refine", *o.case.argv])])
        (out / "summary.md").write_text(summary)
    return summary


HARNESS: Harness  # set in main(); setup steps that run the CLI use it


def main(argv=None) -> int:
    global HARNESS
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="Write cases.csv and summary.md here.")
    ap.add_argument("--only", default=None, help="Run the cases whose name matches this regular expression.")
    ap.add_argument("--jobs", type=int, default=2, help="Cases run at once (at most 2).")
    ap.add_argument("--timeout", type=float, default=60.0, help="Seconds per case before it counts as a hang (default 60).")
    ap.add_argument("--mem-gb", type=float, default=12.0,
                    help="Address-space cap per case [GiB] (default 12; 0: none): absurd inputs fail instead of "
                         "taking the machine's memory.")
    ap.add_argument("--work", type=Path, default=None, help="Work folder (default: a new temporary folder).")
    ap.add_argument("--keep", action="store_true", help="Keep the work folder (fixtures and case folders).")
    ap.add_argument("--list", action="store_true", help="List the case names and exit.")
    args = ap.parse_args(argv)

    gpu = False
    try:
        import torch

        gpu = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no torch means no GPU
        pass
    cases = build_cases(gpu)
    if args.only:
        cases = [c for c in cases if re.search(args.only, c.name)]
    if args.list:
        print("\n".join(c.name for c in cases))
        return 0
    if not cases:
        print("no case matches", file=sys.stderr)
        return 2

    work = args.work or Path(tempfile.mkdtemp(prefix="lacbed-bad-inputs-"))
    work.mkdir(parents=True, exist_ok=True)
    harness = HARNESS = Harness(work, timeout=args.timeout, mem_gb=args.mem_gb)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    log(f"work folder {work}; {len(cases)} cases, {min(2, max(1, args.jobs))} at a time, {args.timeout:g} s each"
        + (" (running as root: permission cases are skipped)" if harness.root else ""))
    t0 = time.perf_counter()
    build_fixtures(harness, log)
    fixture_digest = {p: digest(harness.F / p) for p in sorted(os.listdir(harness.F))}

    outcomes: list[Outcome] = []
    with futures.ThreadPoolExecutor(max_workers=min(2, max(1, args.jobs))) as pool:
        jobs = {pool.submit(harness.run_case, c): c for c in cases}
        for n, job in enumerate(futures.as_completed(jobs), start=1):
            case = jobs[job]
            try:
                o = job.result()
            except Exception as exc:  # noqa: BLE001 - a harness bug must not lose the other results
                o = Outcome(case, TRACEBACK, None, 0.0, "", f"harness error: {type(exc).__name__}: {exc}")
            outcomes.append(o)
            flag = "" if o.klass in GOOD else "  <--"
            log(f"[{n:3d}/{len(cases)}] {o.klass:15s} {o.seconds:6.1f} s  {case.name}{flag}"
                + (f"  ({o.note[:100]})" if o.note and o.klass not in GOOD else ""))
            if not args.keep and o.klass in GOOD:
                shutil.rmtree(harness.cases_dir / case.name, ignore_errors=True)

    changed = [p for p, h in fixture_digest.items() if digest(harness.F / p) != h]
    if changed:
        log(f"WARNING: fixtures changed during the run: {changed}")
    summary = write_reports(outcomes, args.out, time.perf_counter() - t0)
    print(summary)
    if args.keep:
        log(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
