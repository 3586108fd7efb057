"""lacbed-refine: simulate LACBED patterns with a differentiable Bloch-wave engine and refine crystal
structures against them.

The public API is the names below; each is imported on first use, so ``import lacbed_refine`` costs
almost nothing and a command loads only what it needs. Packages follow the data flow:
``structure`` (cell, crystal, symmetry, free parameters) → ``physics`` (form factors, absorption,
structure factors, potential) → ``engine`` (geometry, zone axis, beams, Bloch solve) → ``io``
(CIF, images, FELIX files, atomic writes) → ``simulators`` → ``dataset`` → ``surrogate`` → ``refine``.
Conventions and units: :mod:`lacbed_refine.conventions`.
"""

from __future__ import annotations

import importlib

from lacbed_refine.version import __version__

#: public name → module that defines it
_API = {
    "Atoms": "lacbed_refine.structure.atoms",
    "Cell": "lacbed_refine.structure.cell",
    "Crystal": "lacbed_refine.structure.crystal",
    "Site": "lacbed_refine.structure.crystal",
    "CrystalError": "lacbed_refine.structure.crystal",
    "free_parameters": "lacbed_refine.structure.parameters",
    "read_cif": "lacbed_refine.io.cif",
    "write_cif": "lacbed_refine.io.cif",
    "read_pattern": "lacbed_refine.io.images",
    "read_felix_inp": "lacbed_refine.io.felix_inp",
    "read_experiment": "lacbed_refine.io.experiment",
    "Experiment": "lacbed_refine.io.experiment",
    "SimulationSettings": "lacbed_refine.engine.geometry",
    "paper_preset": "lacbed_refine.engine.geometry",
    "ZoneAxis": "lacbed_refine.engine.zone",
    "zone_beam_pool": "lacbed_refine.engine.beams",
    "simulate_zone": "lacbed_refine.engine.general",
    "simulate_lacbed": "lacbed_refine.engine.bloch",
    "settings_for": "lacbed_refine.simulators.bloch",
    "simulate_crystal": "lacbed_refine.simulators.bloch",
    "get_simulator": "lacbed_refine.simulators.registry",
    "build_dataset": "lacbed_refine.dataset",
    "load_surrogate": "lacbed_refine.surrogate",
    "load_pretrained": "lacbed_refine.surrogate",
    "FitConfig": "lacbed_refine.refine.config",
    "RefinementResult": "lacbed_refine.refine.result",
    "refine": "lacbed_refine.refine.stages",
    "fit_files": "lacbed_refine.refine.files",
    "ExperimentFitConfig": "lacbed_refine.refine.experiment_fit",
    "fit_experiment": "lacbed_refine.refine.experiment_fit",
    "fit_experiment_files": "lacbed_refine.refine.experiment_files",
    "run_batch": "lacbed_refine.refine.batch",
}

__all__ = ["__version__", *sorted(_API)]


def __getattr__(name: str):
    # Lazy: importing a name loads its module (and what that module needs) only then.
    try:
        module = _API[name]
    except KeyError:
        raise AttributeError(f"module 'lacbed_refine' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
