"""Crystal structure: the unit cell of any crystal system and the full cell's atoms (the crystal
model is :mod:`lacbed_refine.structure.crystal`)."""

from lacbed_refine.structure.atoms import Atoms
from lacbed_refine.structure.cell import Cell

__all__ = ["Atoms", "Cell"]
