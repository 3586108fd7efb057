"""Chemical formulas of crystals, normalised so that one compound has one name.

The cell content (occupancy-weighted element counts over the conventional cell) is reduced:

- counts that are whole numbers (within 0.02) after multiplying them all by the smallest m in
  1 … 12 are divided by their greatest common divisor: ``Mg8Al16O32`` → ``Al2MgO4``,
  ``Fe0.5Ni0.5`` → ``FeNi``, ``Fe1.2Ni2.8`` → ``Fe3Ni7``;
- otherwise (irregular partial occupancies) each count is given as a fraction of all atoms, to 3
  decimals: ``Fe1.237Ni2.763`` → ``Fe0.309Ni0.691``.

Elements are in Hill order (C, then H, then the rest alphabetically when carbon is present;
alphabetically otherwise). The same compound written with another Z, another setting or rounded
occupancies gets the same string, which is what a split by formula needs.
"""

from __future__ import annotations

import math
from functools import reduce

from lacbed_refine.structure.crystal import Crystal

__all__ = ["element_counts", "reduced_formula", "hill_order"]

_INTEGER_TOL = 0.02
# Counts are tried multiplied by 1 … this, so that Fe0.5Ni0.5 and Fe2Ni2 both read FeNi.
_MAX_MULTIPLIER = 12


def element_counts(crystal: Crystal) -> dict[str, float]:
    """Occupancy-weighted number of atoms of each element in the conventional cell."""
    counts: dict[str, float] = {}
    for site, orb in zip(crystal.sites, crystal.orbits()):
        counts[site.element] = counts.get(site.element, 0.0) + site.occupancy * orb.multiplicity
    return counts


def hill_order(elements) -> list[str]:
    """Elements in Hill order: C, H, then alphabetical if C is present; alphabetical otherwise."""
    elements = sorted(set(elements))
    if "C" in elements:
        head = ["C"] + (["H"] if "H" in elements else [])
        return head + [e for e in elements if e not in head]
    return elements


def reduced_formula(counts: dict[str, float]) -> str:
    """Normalised formula of element counts (see the module docstring).

    Parameters
    ----------
    counts : dict of str to float
        Atoms per element (any common multiple: per cell, per formula unit).

    Returns
    -------
    str
        E.g. ``"Al2MgO4"``; ``""`` when there are no atoms.

    Raises
    ------
    ValueError
        If a count is negative or not finite.
    """
    for el, n in counts.items():
        if not (math.isfinite(n) and n >= 0):
            raise ValueError(f"element count of {el!r} must be a non-negative number, got {n!r}")
    counts = {el: float(n) for el, n in counts.items() if n > 1e-6}
    if not counts:
        return ""
    order = hill_order(counts)
    for m in range(1, _MAX_MULTIPLIER + 1):
        scaled = {el: n * m for el, n in counts.items()}
        if all(abs(n - round(n)) <= _INTEGER_TOL and round(n) > 0 for n in scaled.values()):
            ints = {el: int(round(n)) for el, n in scaled.items()}
            g = reduce(math.gcd, ints.values())
            return "".join(el + ("" if ints[el] // g == 1 else str(ints[el] // g)) for el in order)
    total = sum(counts.values())
    return "".join(f"{el}{counts[el] / total:.3f}" for el in order)
