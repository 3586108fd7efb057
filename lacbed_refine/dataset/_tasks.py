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
    zone : (u, v, w)
        Beam direction (FELIX ``IIncidentBeamDirection``); default [001], the paper's (and the
        shipped surrogates') geometry. Away from [001] the patterns come from the general engine
        (HOLZ beams in the pool, exact excitation errors) and the potential is that zone's projection
        (:func:`~lacbed_refine.physics.potential.zone_projected_potential`).
    x_direction : (h, k, l) or None
        Reciprocal-lattice vector along the image +x axis, perpendicular to ``zone``. None at [001]
        means [100]; for another zone the cubic default
        (:func:`~lacbed_refine.engine.zone.default_x_direction`) is filled in, so the file records
        the direction used.
    normal : (u, v, w) or None
        Specimen surface normal (FELIX ``INormalDirection``); None means along ``zone``.

    ``engine``, ``zone``, ``x_direction`` and ``normal`` enter :meth:`to_dict` (the recorded
    settings, hence the content hash) only when they differ from the defaults, so a spec that does
    not set them records exactly what it did before they existed; ``--zone 0,0,1`` is the default.
    """

    preset: str = "paper"
    thickness_nm: tuple[float, ...] = PAPER_THICKNESSES_NM
    size: int = 128
    n_beams: int = DATASET_BEAMS
    potential_terms: int = 2500
    precision: str = "fast"
    engine: str = "bloch"
    zone: tuple[int, int, int] = (0, 0, 1)
    x_direction: tuple[int, int, int] | None = None
    normal: tuple[int, int, int] | None = None

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

        checked = SimulationSettings(size=int(self.size), thicknesses=tuple(t * NM for t in thickness),
                                     n_beams=int(self.n_beams), zone=self.zone, x_direction=self.x_direction,
                                     normal=self.normal)
        # Directions only: [2 2 0] is [1 1 0]; a normal along the beam is the default.
        zone, x, normal = (None if v is None else _primitive(v) for v in (checked.zone, checked.x_direction, checked.normal))
        if zone == (0, 0, 1):
            x = None if x == (1, 0, 0) else x
        normal = None if normal == zone else normal
        if not (zone == (0, 0, 1) and x is None and normal is None):
            from lacbed_refine.engine.zone import ZoneAxis, default_x_direction
            from lacbed_refine.structure.cell import Cell

            cubic = Cell.cubic(1.0)  # the dataset's crystals are cubic: these directions hold for every edge a
            if x is None:
                x = _primitive(default_x_direction(cubic, zone))
            ZoneAxis(zone, x, normal).normal_vector(cubic)  # a normal far from the beam, named as --normal
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "x_direction", x)
        object.__setattr__(self, "normal", normal)

    @property
    def standard_zone(self) -> bool:
        """True for the paper's geometry ([001], x along [100], normal along the beam)."""
        return self.zone == (0, 0, 1) and self.x_direction is None and self.normal is None

    def to_dict(self) -> dict:
        d = asdict(self)
        # recorded only when not the default, so specs (and content hashes) stay comparable
        if self.engine == "bloch":
            d.pop("engine")
        if self.zone == (0, 0, 1):
            d.pop("zone")
        else:
            d["zone"] = list(self.zone)
        for key in ("x_direction", "normal"):
            if d[key] is None:
                d.pop(key)
            else:
                d[key] = list(d[key])
        d["thickness_nm"] = [float(t) for t in self.thickness_nm]
        d["engine_version"] = __version__
        if self.standard_zone:
            d["beam_rule"] = f"whole-shell ZOLZ pool of >= {self.n_beams} beams, all used at every pixel"
        else:
            d["beam_rule"] = (f"general engine: FELIX's pool (beams near the Ewald sphere, HOLZ included) of >= "
                              f"{self.n_beams} beams in whole shells, all used at every pixel")
        return d


def _primitive(vector) -> tuple[int, int, int]:
    """An integer direction divided by the gcd of its components: (2, 2, 0) → (1, 1, 0)."""
    import math

    t = tuple(int(i) for i in vector)
    d = math.gcd(*t) or 1
    return tuple(i // d for i in t)


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
    from lacbed_refine.io.cif import find_cifs

    root = Path(root)
    files = find_cifs(root)
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

        crystal = read_cif(task.path)
        crystal.require_cubic("lacbed-refine datasets")
        return crystal
    if task.kind == "synthetic":
        from lacbed_refine.dataset.synthetic import random_crystal

        return random_crystal(task.seed, task.index)
    raise ValueError(f"unknown task kind {task.kind!r}")


def _compute(task: Task, spec: BuildSpec) -> Record:
    import torch

    from lacbed_refine.io.cif import write_cif
    from lacbed_refine.structure.formula import element_counts, reduced_formula
    from lacbed_refine.physics.potential import normalise
    from lacbed_refine.simulators.bloch import settings_for, simulate_crystal

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        crystal = load_crystal(task)
    if spec.standard_zone:  # exactly the call of the [001] datasets, so their content does not change
        settings = settings_for(crystal, preset=spec.preset, thickness_nm=spec.thickness_nm, size=spec.size,
                                n_beams=spec.n_beams)
    else:
        settings = settings_for(crystal, preset=spec.preset, thickness_nm=spec.thickness_nm, size=spec.size,
                                n_beams=spec.n_beams, zone=spec.zone, x_direction=spec.x_direction, normal=spec.normal)
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
        raw = _potential(crystal, atoms, settings, spec)
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
        "n_atoms": int(len(atoms.Z)),
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


def _potential(crystal, atoms, settings, spec: BuildSpec):
    """The raw projected potential [V] along the spec's zone, over one cell edge a, on the pattern's
    grid size: at [001] with x = [100] the paper's Eq. (1) image
    (:func:`~lacbed_refine.physics.potential.projected_potential`, bit for bit what the [001]
    datasets hold); at any other zone the projection along it, x̂ and ŷ those of the patterns
    (:func:`~lacbed_refine.physics.potential.zone_projected_potential`). The normal does not
    change a projection."""
    from lacbed_refine.physics.potential import projected_potential, zone_projected_potential
    from lacbed_refine.simulators.bloch import centring_vectors, zone_axis

    if spec.zone == (0, 0, 1) and spec.x_direction is None:
        return projected_potential(atoms, crystal.a, centring=crystal.spacegroup_symbol[0], size=spec.size,
                                   n_terms=spec.potential_terms, table=settings.form_factors)
    frame = zone_axis(crystal, settings).frame(crystal.cell)
    return zone_projected_potential(atoms, crystal.cell, spec.zone, frame[:2], centring=centring_vectors(crystal),
                                    size=spec.size, n_terms=spec.potential_terms, table=settings.form_factors)


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
