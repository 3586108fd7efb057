"""Crystal structure: the unit cell of any crystal system (the crystal model follows here)."""

from lacbed_refine.structure.cell import Cell

__all__ = ["Cell"]
