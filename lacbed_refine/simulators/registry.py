"""Simulator back-ends: the protocol they follow and the registry that finds them.

The built-in Bloch engine is the simulator ``"bloch"``. Other packages add simulators under the
entry-point group ``lacbed_refine.simulators`` (the FELIX plugin in ``plugins/felix`` registers
``"felix"``); the core never imports them. An entry point names a class (or factory) that takes no
arguments and returns an object following :class:`Simulator`.
"""

from __future__ import annotations
import logging
from dataclasses import dataclass
from importlib import metadata
from typing import Protocol, runtime_checkable
import numpy as np
from lacbed_refine.structure.crystal import Crystal
from lacbed_refine.engine.geometry import SimulationSettings

ENTRY_POINT_GROUP = "lacbed_refine.simulators"


log = logging.getLogger(__name__)


class PluginError(RuntimeError):
    """A simulator plugin that cannot be loaded or used; the message names the plugin."""

    def __init__(self, name: str, message: str):
        super().__init__(f"simulator {name!r}: {message}")
        self.name = name


@runtime_checkable
class Simulator(Protocol):
    """What a simulator back-end provides."""

    name: str

    def available(self) -> tuple[bool, str]:
        """Whether it can run here, and a one-line reason (e.g. which executable it found)."""
        ...

    def simulate(
        self, crystal: Crystal, settings: SimulationSettings, *, device: str = "cpu", workers: int = 1,
        progress: bool = False,
    ) -> np.ndarray:
        """Patterns of ``crystal`` for ``settings``: float32, shape (T, R, size, size), fractions of
        the incident beam, ``[row, col] = [k_y, k_x]`` (see :mod:`lacbed_refine.conventions`)."""
        ...


@dataclass(frozen=True)
class SimulatorInfo:
    """A simulator found at discovery: its name, where it comes from, and any load error."""

    name: str
    source: str
    error: str | None = None


def _entry_points():
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


def discover_simulators() -> list[SimulatorInfo]:
    """The built-in simulator and every installed plugin; a broken plugin is logged and listed
    with its error instead of stopping discovery."""
    found = [SimulatorInfo("bloch", "lacbed_refine (built-in)")]
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        source = f"{dist.name} {dist.version}" if dist is not None else ep.value
        try:
            _load(ep)
        except PluginError as exc:
            log.warning("%s", exc)
            found.append(SimulatorInfo(ep.name, source, str(exc)))
        else:
            found.append(SimulatorInfo(ep.name, source))
    return found


def _load(ep) -> Simulator:
    try:
        factory = ep.load()
        sim = factory()
    except Exception as exc:  # a plugin's import or construction failure, whatever its type
        raise PluginError(ep.name, f"failed to load {ep.value}: {exc}") from exc
    missing = [m for m in ("name", "available", "simulate") if not hasattr(sim, m)]
    if missing:
        raise PluginError(ep.name, f"{ep.value} does not provide {', '.join(missing)}")
    return sim


def get_simulator(name: str = "bloch") -> Simulator:
    """The simulator called ``name`` ("bloch" or an installed plugin's name)."""
    if name == "bloch":
        from lacbed_refine.simulators.bloch import BlochSimulator  # loads torch: only when asked for

        return BlochSimulator()
    for ep in _entry_points():
        if ep.name == name:
            return _load(ep)
    names = ", ".join(info.name for info in discover_simulators())
    raise PluginError(name, f"not installed (available: {names})")
