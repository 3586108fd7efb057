"""What one dataset entry is and how a worker computes it: tasks, the build spec, the record.

A task names one structure — a CIF file or synthetic structure ``(seed, index)`` — and has a
fixed place (``order``) in the dataset. :func:`run_task` turns it into a :class:`Record`, or into a
failure reason (unreadable CIF, non-cubic cell, engine error, non-finite result); it never raises
for a bad structure, so one structure cannot stop a build. It is a plain module-level function of
picklable arguments, so process pools and Dask workers can run it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lacbed_refine.version import __version__
from lacbed_refine.engine.geometry import PAPER_THICKNESSES_NM
from lacbed_refine.dataset._layout import Record

__all__ = ["Task", "BuildSpec", "DATASET_BEAMS", "cif_tasks", "synthetic_tasks", "load_crystal", "run_task"]

#: Beams of the dataset preset: the whole-shell ZOLZ pool of at least this many beams, every beam
#: used at every pixel (no per-pixel strong-beam cut). Chosen by ``benchmarks/beam_convergence.py``;
#: see the README's "Datasets" section for the numbers behind it.
DATASET_BEAMS = 200


@dataclass(frozen=True)
class Task:
    """One structure to simulate.

    Attributes
    ----------
    order : int
        Position in the dataset (real structures first, sorted by id; then synthetic by index).
    id : str
        Unique id (CIF file stem, or :func:`~lacbed_refine.dataset.synthetic.synthetic_id`).
    kind : {"cif", "synthetic"}
    source : str
        Collection name (``index.csv`` ``source`` column or sub-folder) or ``"synthetic"``.
    path : str
        Absolute CIF path ("" for synthetic).
    rel : str
        CIF path relative to its input folder, used in messages ("" for synthetic).
    seed, index : int
        Synthetic stream and number (-1 for CIFs).
    digest : str
        SHA-256 of the CIF file's bytes ("" for synthetic).
    """

    order: int
    id: str
    kind: str
    source: str
    path: str = ""
    rel: str = ""
    seed: int = -1
    index: int = -1
    digest: str = ""


@dataclass(frozen=True)
class BuildSpec:
    """How every structure is simulated (what a shard depends on).

    Attributes
    ----------
    preset : {"paper"}
        Geometry preset (200 kV, [001], half-width 7.266/a Å⁻¹, no absorption, Kirkland).
    thickness_nm : tuple of float
        Thicknesses [nm].
    size : int
        Pattern and potential edge [pixels].
    n_beams : int
        Whole-shell ZOLZ pool of at least this many beams, all used at every pixel.
    potential_terms : int
        Reflections in the projected-potential Fourier series (paper: 2500).
    precision : {"fast", "reference"}
        Engine path.
    engine : str
        Simulator: "bloch" (built-in) or an installed plugin such as "felix".
    """

    preset: str = "paper"
    thickness_nm: tuple[float, ...] = PAPER_THICKNESSES_NM
    size: int = 128
    n_beams: int = DATASET_BEAMS
    potential_terms: int = 2500
    precision: str = "fast"
    engine: str = "bloch"

    def __post_init__(self):
        if self.preset != "paper":
            raise ValueError(f"--preset {self.preset!r}: unknown preset; available: paper")
        if self.precision not in ("fast", "reference"):
            raise ValueError(f"precision {self.precision!r}: use fast or reference")
        if not isinstance(self.engine, str) or not self.engine.strip():
            raise ValueError(f"--engine {self.engine!r}: give a simulator name (bloch or an installed plugin)")
        for option, value in (("--size", self.size), ("--beams", self.n_beams), ("potential_terms", self.potential_terms)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{option} {value!r}: must be a whole number >= 1")
        try:
            thickness = tuple(float(t) for t in self.thickness_nm)
        except (TypeError, ValueError):
            raise ValueError(f"--thickness {self.thickness_nm!r}: not a list of numbers [nm]") from None
        # Every structure is simulated with these values: check them once here, with the rules of
        # SimulationSettings itself, rather than have each worker fail on them and the build
        # record every structure as failed.
        from lacbed_refine.conventions import NM
        from lacbed_refine.engine.geometry import SimulationSettings

        SimulationSettings(size=int(self.size), thicknesses=tuple(t * NM for t in thickness), n_beams=int(self.n_beams))

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.engine == "bloch":  # recorded only when it is not the default, so specs stay comparable
            d.pop("engine")
        d["thickness_nm"] = [float(t) for t in self.thickness_nm]
        d["engine_version"] = __version__
        d["beam_rule"] = f"whole-shell ZOLZ pool of >= {self.n_beams} beams, all used at every pixel"
        return d


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cif_tasks(root, *, start: int = 0) -> list[Task]:
    """One task per ``*.cif`` under ``root`` (recursively), sorted by id.

    The id is the file stem (the relative path without ``.cif`` where stems repeat). The source is
    the ``source`` column of ``root/index.csv`` when it lists the id, else the first sub-folder
    name, else the folder's own name.

    Raises
    ------
    ValueError
        If ``root`` is not a folder or holds no CIF.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder of CIFs")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".cif" and p.is_file())
    if not files:
        raise ValueError(f"{root}: no .cif files found")
    index_sources = {}
    index = root / "index.csv"
    if index.is_file():
        with open(index, newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("id") and row.get("source"):
                    index_sources[row["id"]] = row["source"]
    stems = [p.stem for p in files]
    repeated = {s for s in stems if stems.count(s) > 1}
    entries = []
    for p in files:
        rel = p.relative_to(root)
        ident = rel.with_suffix("").as_posix() if p.stem in repeated else p.stem
        source = index_sources.get(p.stem) or (rel.parts[0] if len(rel.parts) > 1 else root.name)
        entries.append((ident, source, p, rel))
    entries.sort(key=lambda e: e[0])
    return [
        Task(order=start + i, id=ident, kind="cif", source=source, path=str(p.resolve()), rel=rel.as_posix(),
             digest=_file_digest(p))
        for i, (ident, source, p, rel) in enumerate(entries)
    ]


def synthetic_tasks(n: int, seed: int, *, start: int = 0) -> list[Task]:
    """Tasks for synthetic structures 0 … n−1 of ``seed``."""
    from lacbed_refine.dataset.synthetic import synthetic_id

    if n < 0 or seed < 0:
        raise ValueError(f"synthetic count and seed must be non-negative, got {n!r} and {seed!r}")
    return [
        Task(order=start + i, id=synthetic_id(seed, i), kind="synthetic", source="synthetic", seed=seed, index=i)
        for i in range(n)
    ]


def load_crystal(task: Task):
    """The task's :class:`~lacbed_refine.structure.crystal.Crystal` (raises on an unreadable CIF)."""
    if task.kind == "cif":
        from lacbed_refine.io.cif import read_cif

        return read_cif(task.path)
    if task.kind == "synthetic":
        from lacbed_refine.dataset.synthetic import random_crystal

        return random_crystal(task.seed, task.index)
    raise ValueError(f"unknown task kind {task.kind!r}")


def _compute(task: Task, spec: BuildSpec) -> Record:
    import torch

    from lacbed_refine.io.cif import write_cif
    from lacbed_refine.structure.formula import element_counts, reduced_formula
    from lacbed_refine.physics.potential import normalise, projected_potential
    from lacbed_refine.simulators.bloch import settings_for, simulate_crystal

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crystal = load_crystal(task)
    settings = settings_for(crystal, preset=spec.preset, thickness_nm=spec.thickness_nm, size=spec.size,
                            n_beams=spec.n_beams)
    if spec.engine == "bloch":
        stack, info = simulate_crystal(crystal, settings, precision=spec.precision)
        n_beams, symmetry_ops = int(info.n_beams), int(info.symmetry_ops)
    else:
        from lacbed_refine.simulators.registry import get_simulator

        stack = get_simulator(spec.engine).simulate(crystal, settings)
        n_beams, symmetry_ops = int(settings.n_beams or 0), 0
    pattern = np.ascontiguousarray(stack[:, 0], dtype=np.float32)
    if not np.isfinite(pattern).all():
        raise FloatingPointError("the engine produced non-finite intensities")
    atoms = crystal.atoms()
    with torch.no_grad():
        raw = projected_potential(atoms, crystal.a, centring=crystal.spacegroup_symbol[0], size=spec.size,
                                  n_terms=spec.potential_terms, table=settings.form_factors)
    norm, lo, hi = normalise(raw)
    raw_np = raw.numpy().astype(np.float32)
    if not (np.isfinite(raw_np).all() and float(hi) > float(lo)):
        raise FloatingPointError("the projected potential is not finite or is flat")
    cif_text = _cif_text(crystal, write_cif)
    meta = {
        "id": task.id,
        "source": task.source,
        "formula": crystal.formula,
        "reduced_formula": reduced_formula(element_counts(crystal)),
        "spacegroup_number": int(crystal.spacegroup_number),
        "spacegroup_symbol": crystal.spacegroup_symbol,
        "a_angstrom": float(crystal.a),
        "n_atoms": int(len(atoms["Z"])),
        "split": "",
        "n_beams": n_beams,
        "symmetry_ops": symmetry_ops,
        "potential_min": float(lo),
        "potential_max": float(hi),
        "cif": cif_text,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
    }
    extra = {"warnings": [str(w.message) for w in caught]}
    return Record(meta=meta, potential=norm.numpy().astype(np.float32), potential_raw=raw_np, pattern=pattern,
                  extra=extra)


def _cif_text(crystal, write_cif) -> str:
    """The crystal as simulated, as CIF text (through write_cif, so it reads back identically)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "structure.cif")
        write_cif(crystal, path)
        with open(path, encoding="utf-8") as fh:
            return fh.read()


def run_task(task: Task, spec: BuildSpec) -> tuple[str, object]:
    """Compute one task: ``("ok", Record)`` or ``("failed", reason)``; never raises for bad input.

    The reason is one line, ``"<ExceptionType>: <message>"``, with the CIF's absolute path replaced
    by its path relative to the input folder (so the reason, and the content hash, do not depend on
    where the data live).
    """
    try:
        return "ok", _compute(task, spec)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of one structure is recorded, not fatal
        msg = f"{type(exc).__name__}: {exc}"
        if task.path:
            msg = msg.replace(task.path, task.rel)
        return "failed", " ".join(msg.split())
