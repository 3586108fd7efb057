"""Running the ``felix`` executable: finding it, one MPI rank by default, a timeout, clear errors.

The public FELIX HEAD corrupts runs with more than one MPI rank: ``UgMatrix`` broadcasts the complex
Ug matrix as ``MPI_DOUBLE_PRECISION`` with a count of INhkl², half of it, so every rank but 0 works
with a half-unset matrix (felix-spec §6). Single-rank output is correct. So FELIX runs on one rank
unless the caller says the build has the fix (``ranks=N, mpi_fixed=True``).

One rank is started without ``mpirun`` (an MPI singleton), which needs no launcher and works as
root; several ranks go through ``mpirun -n N``.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from lacbed_refine.simulators.registry import PluginError

from ._inp import FelixInputError, read_felix_inp

__all__ = [
    "FelixError",
    "FelixRun",
    "find_felix",
    "find_mpirun",
    "run_felix",
    "MULTI_RANK_BUG",
    "ENV_EXECUTABLE",
    "ENV_MPIRUN",
]

log = logging.getLogger(__name__)

#: Environment variable naming the FELIX executable (or a folder holding ``felix``).
ENV_EXECUTABLE = "LACBED_FELIX"
#: Environment variable naming the MPI launcher.
ENV_MPIRUN = "LACBED_MPIRUN"

#: Why FELIX runs on one rank unless told otherwise.
MULTI_RANK_BUG = (
    "the public FELIX HEAD corrupts runs with more than one MPI rank (UgMatrix broadcasts the complex "
    "Ug matrix as MPI_DOUBLE_PRECISION, half of it; felix-spec §6); pass ranks=N, mpi_fixed=True "
    "if your build broadcasts it as MPI_DOUBLE_COMPLEX"
)

_TAIL_LINES = 40


class FelixError(PluginError):
    """FELIX could not be found or run, or did not write what was expected.

    The message says what went wrong and ends with the tail of FELIX's output, when there is one.

    Attributes
    ----------
    log_tail : str
        The last lines FELIX printed ("" if it never ran).
    """

    def __init__(self, message: str, *, log_tail: str = ""):
        text = message
        if log_tail.strip():
            text += "\n--- last lines of FELIX's output ---\n" + log_tail.rstrip()
        super().__init__("felix", text)
        self.log_tail = log_tail


@dataclass(frozen=True)
class FelixRun:
    """A finished FELIX run.

    Attributes
    ----------
    folder : Path
        Where it ran.
    command : tuple of str
    returncode : int
    seconds : float
        Wall-clock time [s].
    log : str
        Everything FELIX printed (stdout and stderr); also saved as ``folder/felix.log``.
    ranks : int
        MPI ranks used.
    """

    folder: Path
    command: tuple[str, ...]
    returncode: int
    seconds: float
    log: str
    ranks: int


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_felix(executable=None) -> Path:
    """The FELIX executable: ``executable``, else ``$LACBED_FELIX``, else ``felix`` on the PATH.

    ``executable`` and ``$LACBED_FELIX`` may name the file or a folder that holds ``felix``.

    Raises
    ------
    FelixError
        If none is found (the message says what was tried and how to point the plugin at a build).
    """
    for source, value in (("executable", executable), (ENV_EXECUTABLE, os.environ.get(ENV_EXECUTABLE))):
        if not value:
            continue
        path = Path(os.path.expanduser(os.fspath(value)))
        if path.is_dir():
            path = path / "felix"
        if _is_executable(path):
            return path.resolve()
        if os.sep not in os.fspath(value) and shutil.which(os.fspath(value)):
            return Path(shutil.which(os.fspath(value))).resolve()
        # An explicit choice that does not work is an error, not a reason to fall back to PATH.
        state = "not executable" if path.exists() else "no such file"
        raise FelixError(
            f"FELIX executable not usable: {source}={value} ({state}); point {ENV_EXECUTABLE} "
            "(or executable=) at a built felix binary"
        )
    found = shutil.which("felix")
    if found:
        return Path(found).resolve()
    raise FelixError(
        f"FELIX executable not found (no executable given, ${ENV_EXECUTABLE} unset, no 'felix' on PATH); "
        f"build FELIX (github.com/WarwickMicroscopy/Felix) and set {ENV_EXECUTABLE}=/path/to/felix"
    )


def find_mpirun(mpirun=None) -> Path | None:
    """The MPI launcher: ``mpirun``, else ``$LACBED_MPIRUN``, else ``mpirun`` or ``mpiexec`` on the PATH.

    Returns None when there is none (one rank needs no launcher).
    """
    for value in (mpirun, os.environ.get(ENV_MPIRUN)):
        if value:
            path = Path(os.fspath(value))
            found = path if _is_executable(path) else shutil.which(os.fspath(value))
            if not found:
                raise FelixError(f"MPI launcher {value!r} not found or not executable")
            return Path(found).resolve()
    for name in ("mpirun", "mpiexec"):
        found = shutil.which(name)
        if found:
            return Path(found).resolve()
    return None


def _ranks(ranks: int, mpi_fixed: bool) -> int:
    if isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks must be a positive int, got {ranks!r}")
    if ranks > 1 and not mpi_fixed:
        warnings.warn(f"running FELIX on 1 MPI rank, not {ranks}: {MULTI_RANK_BUG}", UserWarning, stacklevel=3)
        return 1
    return ranks


def _environment(ranks: int) -> dict[str, str]:
    env = dict(os.environ)
    # gfortran buffers stdout into a pipe; unbuffered, progress streams and an abort keeps its message.
    env.setdefault("GFORTRAN_UNBUFFERED_PRECONNECTED", "y")
    # FELIX's parallelism is MPI; threaded BLAS on top of it only competes for the cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(var, "1")
    if ranks > 1 and hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def _diagnose(log_text: str) -> str:
    """A sentence for FELIX's own error messages that have a known cause."""
    low = log_text.lower()
    if "error in readinpfile" in low or "end of file" in low:
        return (
            "FELIX could not read felix.inp by line position: the file is not in the v1.3 layout "
            "(an older one, without RgLimit on line 20, shifts every later line and ends in an "
            "'End of file' or READ() error)"
        )
    if "error in readcif" in low:
        return "FELIX could not read felix.cif"
    if "beam pool is too small" in low:
        return "FELIX's beam pool is not larger than IMinStrongBeams (raise RgLimit or the pool size)"
    if "did not find experimental image" in low:
        return "FELIX found no experimental images (LR_<2N>x<2N>/<chem>_+0+0+0.img)"
    return ""


def _kill(proc: subprocess.Popen) -> None:
    """End FELIX and anything it started (it runs in a session of its own)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=5)
            return
        except subprocess.TimeoutExpired:
            continue


def run_felix(
    folder,
    *,
    executable=None,
    mpirun=None,
    ranks: int = 1,
    mpi_fixed: bool = False,
    timeout: float | None = 3600.0,
    progress=None,
) -> FelixRun:
    """Run FELIX in ``folder`` (which holds ``felix.inp``, ``felix.cif``, ``felix.hkl``).

    FELIX runs without a shell, with ``folder`` as its working directory; each line it prints goes
    to the ``lacbed_felix`` logger (DEBUG) and to ``progress``; everything is saved as
    ``folder/felix.log``.

    Parameters
    ----------
    folder : str or os.PathLike
    executable : str or os.PathLike, optional
        See :func:`find_felix`.
    mpirun : str or os.PathLike, optional
        See :func:`find_mpirun`; used only for more than one rank.
    ranks : int
        MPI ranks; more than 1 only with ``mpi_fixed`` (else a ``UserWarning`` and 1 rank).
    mpi_fixed : bool
        The build broadcasts the Ug matrix correctly (see :data:`MULTI_RANK_BUG`).
    timeout : float or None
        Seconds before FELIX is stopped (positive and finite), or None for no limit.
    progress : callable or bool, optional
        Called with each line FELIX prints; True writes the lines to stderr.

    Returns
    -------
    FelixRun

    Raises
    ------
    ValueError
        If ``timeout`` or ``ranks`` is not a positive number (before anything runs).
    FelixError
        Missing executable or launcher, input files missing or in the wrong layout, a non-zero exit,
        an error FELIX reported, or the timeout. The message ends with the tail of FELIX's output.
    """
    if timeout is not None:
        seconds = float(timeout) if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) else math.nan
        if not (math.isfinite(seconds) and seconds > 0):
            raise ValueError(f"timeout={timeout!r}: give a positive, finite number of seconds (or None for no limit)")
    folder = Path(folder)
    for name in ("felix.inp", "felix.cif", "felix.hkl"):
        if not (folder / name).is_file():
            raise FelixError(f"{folder}: no {name}; FELIX needs felix.inp, felix.cif and felix.hkl")
    try:
        inp = read_felix_inp(folder / "felix.inp")
    except FelixInputError as exc:
        raise FelixError(f"FELIX would misread its input: {exc}") from None
    if inp.dialect != "v1.3":
        raise FelixError(f"FELIX would misread its input: {folder / 'felix.inp'} is in the Python port's "
                         "'key = value' layout; FELIX reads the v1.3 line layout")
    exe = find_felix(executable)
    ranks = _ranks(ranks, mpi_fixed)
    if ranks == 1:
        command = [os.fspath(exe)]
    else:
        launcher = find_mpirun(mpirun)
        if launcher is None:
            raise FelixError(f"{ranks} MPI ranks need mpirun or mpiexec (set {ENV_MPIRUN}); none found")
        command = [os.fspath(launcher), "-n", str(ranks), os.fspath(exe)]
    if progress is True:
        def progress(line):
            sys.stderr.write(line + "\n")
    log.info("running %s in %s (%d MPI rank%s)", " ".join(command), folder, ranks, "" if ranks == 1 else "s")

    lines: list[str] = []
    tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(
            command, cwd=folder, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1, env=_environment(ranks), start_new_session=True,
        )
    except OSError as exc:
        raise FelixError(f"cannot start {command[0]}: {exc}") from None

    def pump():
        with proc.stdout:
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                tail.append(line)
                log.debug("felix: %s", line)
                if progress:
                    progress(line)

    reader = threading.Thread(target=pump, name="felix-output", daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        reader.join(timeout=5)
        _save_log(folder, lines)
        raise FelixError(f"FELIX did not finish within {timeout:g} s and was stopped", log_tail="\n".join(tail)) from None
    except BaseException:
        _kill(proc)
        raise
    reader.join(timeout=30)
    seconds = time.perf_counter() - t0
    text = "\n".join(lines)
    _save_log(folder, lines)
    reported = " error in " in text  # FELIX's l_alert: "0 = rank, error in <procedure>(<what>)"
    if returncode != 0 or reported:
        why = _diagnose(text)
        status = f"exited with status {returncode}" if returncode != 0 else "reported an error"
        raise FelixError(
            f"FELIX {status} in {folder}" + (f": {why}" if why else ""), log_tail="\n".join(tail)
        )
    log.info("FELIX finished in %.1f s", seconds)
    return FelixRun(folder=folder, command=tuple(command), returncode=returncode, seconds=seconds, log=text, ranks=ranks)


def _save_log(folder: Path, lines: list[str]) -> None:
    try:
        (folder / "felix.log").write_text("\n".join(lines) + "\n")
    except OSError as exc:  # the log is a convenience; the run's result does not depend on it
        log.warning("could not save felix.log in %s: %s", folder, exc)
