"""A finished FELIX refinement read back: the last iteration's folder, refined CIF and the log."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ._cif import RefinedStructure, read_refined_cif
from ._files import IterationLog, read_iteration_log

__all__ = ["parse_refine_folder", "FelixRefinement", "read_refinement"]

_REFINE_RE = re.compile(r"^(?P<chem>.+)_I(?P<it>\d{4})_(?P<t>\d{3})nm_(?P<n>\d{3})x(?P=n)$")


def parse_refine_folder(name: str) -> tuple[str, int, float, int]:
    """``"GaAs_I0015_100nm_016x016"`` → (``"GaAs"``, 15, 1000.0 [Å], 16).

    Gradient-step folders (``<chem>_I<iter>_D<var>_...``) are not iteration outputs and do not match.

    Raises
    ------
    ValueError
        If the name is not a FELIX refinement output folder.
    """
    m = _REFINE_RE.fullmatch(Path(name).name)
    if m is None:
        raise ValueError(f"{name!r} is not a FELIX refinement folder <chem>_I<iter>_<t nm>nm_<2N>x<2N>")
    return m["chem"], int(m["it"]), 10.0 * int(m["t"]), int(m["n"])


@dataclass(frozen=True)
class FelixRefinement:
    """The latest output of a FELIX refinement.

    Attributes
    ----------
    folder : Path
        The refinement's working folder.
    output : Path
        ``<chem>_I<iter>_<t>nm_<2N>x<2N>/`` of the last iteration written.
    chem : str
    iteration : int
    thickness : float
        FELIX's best thickness [Å] (its folder name gives whole nm).
    structure : RefinedStructure
        ``<chem>_<iter>.cif`` of that iteration.
    log : IterationLog or None
        ``iteration_log.txt`` when there is one.
    """

    folder: Path
    output: Path
    chem: str
    iteration: int
    thickness: float
    structure: RefinedStructure
    log: IterationLog | None


def read_refinement(folder, *, chem: str | None = None) -> FelixRefinement:
    """Read the last iteration FELIX wrote in ``folder`` (where ``felix`` refined).

    Parameters
    ----------
    folder : str or os.PathLike
    chem : str, optional
        File prefix, when the folder holds several.

    Raises
    ------
    FileNotFoundError
        If there is no refinement output folder, or it has no ``<chem>_<iter>.cif``.
    """
    folder = Path(folder)
    found = []
    for p in folder.iterdir() if folder.is_dir() else []:
        try:
            c, it, t, _ = parse_refine_folder(p.name)
        except ValueError:
            continue
        if p.is_dir() and (chem is None or c == chem):
            found.append((it, c, t, p))
    if not found:
        raise FileNotFoundError(f"{folder}: no FELIX refinement output <chem>_I<iter>_<t>nm_<2N>x<2N>")
    it, c, t, out = max(found)
    cif = out / f"{c}_{it:04d}.cif"
    if not cif.is_file():
        raise FileNotFoundError(f"{cif}: FELIX wrote no refined CIF for iteration {it}")
    log_path = folder / "iteration_log.txt"
    return FelixRefinement(
        folder=folder, output=out, chem=c, iteration=it, thickness=t, structure=read_refined_cif(cif),
        log=read_iteration_log(log_path) if log_path.is_file() else None,
    )
