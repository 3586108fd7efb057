"""The simulator ``felix``: lacbed-refine's settings in, FELIX run in a temporary folder, patterns out."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from lacbed_refine.structure.crystal import Crystal
from lacbed_refine.engine.geometry import SimulationSettings

from ._cif import write_felix_cif
from ._files import read_simulation, write_hkl
from ._inp import INP_TITLE, FelixInput, _check_reflections, felix_input_for, write_felix_inp
from ._runner import MULTI_RANK_BUG, FelixError, find_felix, run_felix

__all__ = ["FelixSimulator", "write_simulation_inputs", "ENV_RANKS", "ENV_MPI_FIXED", "ENV_TIMEOUT", "DEFAULT_TIMEOUT"]

log = logging.getLogger(__name__)


def write_simulation_inputs(crystal: Crystal, settings: SimulationSettings, folder, **overrides) -> tuple[str, FelixInput]:
    """Write ``felix.inp``, ``felix.cif`` and ``felix.hkl`` for a FELIX simulation of ``settings``.

    Parameters
    ----------
    crystal : Crystal
    settings : SimulationSettings
        Mapped as :func:`~lacbed_felix.felix_input_for` describes.
    folder : str or os.PathLike
        Existing folder.
    **overrides
        :class:`~lacbed_felix.FelixInput` fields to set.

    Returns
    -------
    chem : str
        FELIX's file prefix.
    inp : FelixInput

    Raises
    ------
    ValueError
        If a setting has no FELIX equivalent, or a reflection is outside FELIX's beam pool.

    Notes
    -----
    Any cell, space group, zone axis and absorption model (:func:`~lacbed_felix.felix_input_for`,
    :func:`~lacbed_felix.write_felix_cif`); when FELIX's single-precision expansion of the symmetry
    operators would miscount atoms, ``felix.cif`` lists every atom of the cell.
    """
    folder = Path(folder)
    inp = felix_input_for(crystal, settings, **overrides)
    _check_reflections(crystal, settings, inp, settings.reflections)
    write_felix_inp(inp, folder / "felix.inp", title=INP_TITLE)
    chem = write_felix_cif(crystal, folder / "felix.cif")
    write_hkl(folder / "felix.hkl", settings.reflections)
    return chem, inp


#: Environment variables the simulator reads (see :class:`FelixSimulator`).
ENV_RANKS = "LACBED_FELIX_RANKS"
ENV_MPI_FIXED = "LACBED_FELIX_MPI_FIXED"
ENV_TIMEOUT = "LACBED_FELIX_TIMEOUT"

#: Seconds per FELIX run unless told otherwise.
DEFAULT_TIMEOUT = 3600.0

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _check_ranks(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what}={value!r}: MPI ranks must be a whole number of at least 1")
    return int(value)


def _check_timeout(value, what: str) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{what}={value!r}: the time limit must be a positive, finite number of seconds")
    return seconds


def _env_ranks() -> int | None:
    value = os.environ.get(ENV_RANKS, "").strip()
    if not value:
        return None
    try:
        return _check_ranks(int(value), f"${ENV_RANKS}")
    except ValueError:
        raise ValueError(f"${ENV_RANKS}={value!r}: MPI ranks must be a whole number of at least 1") from None


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"${name}={os.environ[name]!r}: expected one of 1, true, yes, on or 0, false, no, off")


def _env_timeout() -> float:
    value = os.environ.get(ENV_TIMEOUT, "").strip()
    return _check_timeout(value, f"${ENV_TIMEOUT}") if value else DEFAULT_TIMEOUT


class FelixSimulator:
    """FELIX as a lacbed-refine simulator (entry point ``felix``).

    Every call writes FELIX's inputs for the crystal and settings into a fresh temporary folder,
    runs ``felix`` there and reads its ``.bin`` images back. Settings map as
    :func:`~lacbed_felix.felix_input_for` describes.

    Parameters
    ----------
    executable : str or os.PathLike, optional
        The FELIX binary; default ``$LACBED_FELIX``, then ``felix`` on the PATH.
    mpirun : str or os.PathLike, optional
        MPI launcher for more than one rank; default ``$LACBED_MPIRUN``, then the PATH.
    ranks : int, optional
        MPI ranks (default ``$LACBED_FELIX_RANKS``, else the ``workers`` of each call). More than one
        only with ``mpi_fixed``.
    mpi_fixed : bool, optional
        The build has the fix for FELIX HEAD's multi-rank bug (default ``$LACBED_FELIX_MPI_FIXED``:
        1/true/yes/on or 0/false/no/off).
    timeout : float, optional
        Seconds per run (default ``$LACBED_FELIX_TIMEOUT``, else 3600).
    workdir : str or os.PathLike, optional
        Run here and keep the files instead of a temporary folder.

    Raises
    ------
    ValueError
        If ``ranks`` or ``timeout`` is given and not a positive number. An environment variable
        that does not hold one is not an error here (so that the simulator can still be listed):
        :meth:`available` reports it and :meth:`simulate` raises :class:`FelixError` naming the
        variable and its value, before FELIX runs.
    """

    name = "felix"

    def __init__(self, executable=None, *, mpirun=None, ranks=None, mpi_fixed=None, timeout=None, workdir=None):
        self.executable = executable
        self.mpirun = mpirun
        self.workdir = workdir
        self.ranks = _check_ranks(ranks, "ranks") if ranks is not None else None
        self.mpi_fixed = bool(mpi_fixed) if mpi_fixed is not None else False
        self.timeout = _check_timeout(timeout, "timeout") if timeout is not None else DEFAULT_TIMEOUT
        #: Why the environment cannot be used (a variable that does not parse), or None.
        self.environment_error: str | None = None
        try:  # the environment is read here, once, and checked where it is read
            if ranks is None:
                self.ranks = _env_ranks()
            if mpi_fixed is None:
                self.mpi_fixed = _env_flag(ENV_MPI_FIXED)
            if timeout is None:
                self.timeout = _env_timeout()
        except ValueError as exc:
            self.environment_error = str(exc)

    def _check_environment(self) -> None:
        if self.environment_error is not None:
            raise FelixError(self.environment_error)

    def available(self) -> tuple[bool, str]:
        if self.environment_error is not None:
            return False, self.environment_error
        try:
            exe = find_felix(self.executable)
        except FelixError as exc:
            return False, str(exc).split(": ", 1)[-1]
        ranks = "MPI fix declared" if self.mpi_fixed else "1 MPI rank (FELIX HEAD's multi-rank bug)"
        return True, f"FELIX at {exe}, {ranks}"

    def check_settings(self, crystal, settings, *, option: str = "--felix-seed") -> None:
        """ValueError naming ``option`` when FELIX cannot run ``settings`` for ``crystal`` (e.g. a
        beam pool under FELIX's 40-beam minimum). Cheap: call it before a long fit."""
        from ._inp import felix_input_for

        try:
            felix_input_for(crystal, settings)
        except ValueError as exc:
            raise ValueError(f"{option}: {exc}") from None

    def check_refinement(self, crystal, refine: str | None = None, *, option: str = "--felix-seed") -> str:
        """The FELIX refinement letters :meth:`export_refinement` would write for ``crystal``;
        ValueError naming ``option`` when FELIX cannot refine them. Cheap: call it before a long fit."""
        from ._export import refine_letters

        return refine_letters(refine, crystal, option=option, warn=False)[0]

    def export_refinement(self, crystal, pattern, out_dir, *, refine: str | None = None, settings=None,
                          overwrite: bool = True):
        """Write a FELIX refinement set seeded from ``crystal`` (the core's ``fit --felix-seed``
        calls this); see :func:`lacbed_felix.export_refinement`. ``refine=None`` is the default
        refinement adapted to the crystal. ``overwrite`` defaults to True because the caller (``fit``)
        has already decided that its output folder may be written."""
        from ._export import export_refinement

        self.check_refinement(crystal, refine)  # errors name --felix-seed, the option fit's user gave
        return export_refinement(crystal, pattern, out_dir, refine=refine, settings=settings, overwrite=overwrite)

    def _choose_ranks(self, workers: int) -> int:
        if self.ranks is not None:
            return int(self.ranks)
        if self.mpi_fixed:
            return max(1, int(workers))
        if workers > 1:
            log.info("FELIX runs on 1 MPI rank, not %d: %s", workers, MULTI_RANK_BUG)
        return 1

    def simulate(self, crystal, settings, *, device="cpu", workers=1, progress=False) -> np.ndarray:
        """FELIX's patterns of ``crystal`` for ``settings``.

        Parameters
        ----------
        crystal : Crystal
        settings : SimulationSettings
        device : str
            Unused: FELIX runs on the CPU.
        workers : int
            MPI ranks when the build is declared fixed (``mpi_fixed``) and ``ranks`` is not set;
            otherwise FELIX runs on one rank.
        progress : bool or callable
            True writes FELIX's output lines to stderr; a callable gets each line.

        Returns
        -------
        ndarray, float32, shape (T, R, size, size)
            In the order of ``settings.thicknesses`` and ``settings.reflections``; ``[row, col] =
            [k_y, k_x]``, fractions of the incident beam.

        Raises
        ------
        ValueError
            If a setting has no FELIX equivalent.
        FelixError
            If FELIX cannot be run, fails, or does not write every image.
        """
        self._check_environment()
        if device not in (None, "cpu"):
            log.info("FELIX runs on the CPU; device %r is not used", device)
        ranks = self._choose_ranks(workers)
        if self.workdir is not None:
            folder = Path(self.workdir)
            folder.mkdir(parents=True, exist_ok=True)
            return self._run(crystal, settings, folder, ranks, progress)
        with tempfile.TemporaryDirectory(prefix="lacbed-felix-") as tmp:
            return self._run(crystal, settings, Path(tmp), ranks, progress)

    def _run(self, crystal, settings, folder: Path, ranks: int, progress) -> np.ndarray:
        chem, inp = write_simulation_inputs(crystal, settings, folder)
        run = run_felix(
            folder, executable=self.executable, mpirun=self.mpirun, ranks=ranks, mpi_fixed=self.mpi_fixed,
            timeout=self.timeout, progress=progress,
        )
        tail = "\n".join(run.log.splitlines()[-40:])
        try:
            sim = read_simulation(folder, chem=chem, reflections=settings.reflections, thicknesses=settings.thicknesses)
        except (FileNotFoundError, ValueError) as exc:
            raise FelixError(f"FELIX finished but its output is incomplete: {exc}", log_tail=tail) from None
        if sim.size != settings.size:
            raise FelixError(f"FELIX wrote {sim.size}x{sim.size} images, expected {settings.size}", log_tail=tail)
        if sim.structure_factors is not None:
            log.info("%s: FELIX used a beam pool of %d, at least %d strong beams per pixel",
                     crystal.name, len(sim.structure_factors), inp.min_strong_beams)
        stack = sim.images.astype(np.float32)
        if not np.isfinite(stack).all():
            raise FelixError("FELIX wrote non-finite intensities", log_tail=tail)
        return stack
