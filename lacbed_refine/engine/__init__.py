"""The Bloch-wave engine for any crystal and zone axis: geometry, beam pools and the solve.

The names below are imported on first use, so that ``lacbed_refine.engine.geometry`` (settings
only) does not load torch.
"""

import importlib

_NAMES = {
    "ZoneAxis": "lacbed_refine.engine.zone",
    "zone_beam_pool": "lacbed_refine.engine.beams",
    "centring_allowed": "lacbed_refine.engine.beams",
    "simulate_zone": "lacbed_refine.engine.general",
    "zone_symmetry": "lacbed_refine.engine.general",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    try:
        module = _NAMES[name]
    except KeyError:
        raise AttributeError(f"module 'lacbed_refine.engine' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)
