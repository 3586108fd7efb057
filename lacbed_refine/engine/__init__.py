"""The Bloch-wave engine for any crystal and zone axis: geometry, beam pools and the solve."""

from lacbed_refine.engine.beams import centring_allowed, zone_beam_pool
from lacbed_refine.engine.general import simulate_zone
from lacbed_refine.engine.zone import ZoneAxis

__all__ = ["ZoneAxis", "zone_beam_pool", "centring_allowed", "simulate_zone"]
