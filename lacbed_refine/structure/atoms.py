"""The full unit cell as arrays: what the physics layer reads from a crystal.

:meth:`Crystal.atoms <lacbed_refine.structure.crystal.Crystal.atoms>` (NumPy) and
:meth:`ParameterMap.atoms <lacbed_refine.structure.parameters.ParameterMap.atoms>` (torch,
differentiable in the refined parameters) return an :class:`Atoms`; the structure-factor and engine
functions take one (or a mapping with the same keys, converted by :meth:`Atoms.coerce`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

__all__ = ["Atoms"]

_REQUIRED = ("frac", "Z", "occupancy", "b_iso")


@dataclass(frozen=True)
class Atoms:
    """Every atom of the conventional cell, one row per atom.

    Attributes
    ----------
    frac : ndarray or Tensor, shape (N, 3)
        Fractional positions (need not be wrapped into [0, 1): structure factors are periodic).
    Z : ndarray or Tensor, shape (N,)
        Atomic numbers (integers).
    occupancy : ndarray or Tensor, shape (N,)
        Site occupancies in [0, 1].
    b_iso : ndarray or Tensor, shape (N,)
        Isotropic Debye–Waller factors B [Å²].
    site : ndarray or Tensor, shape (N,), optional
        Index of each atom's site in the crystal's asymmetric unit (``None`` when not known).

    The arrays keep their type (NumPy or torch), dtype and device: a torch ``frac`` that requires
    grad carries the gradient through the physics layer.
    """

    frac: Any
    Z: Any
    occupancy: Any
    b_iso: Any
    site: Any = None

    def __post_init__(self):
        n = len(self.Z)
        if tuple(self.frac.shape) != (n, 3):
            raise ValueError(f"Atoms: frac has shape {tuple(self.frac.shape)}, expected ({n}, 3) for {n} atoms")
        for name in ("occupancy", "b_iso") + (("site",) if self.site is not None else ()):
            shape = tuple(getattr(self, name).shape)
            if shape != (n,):
                raise ValueError(f"Atoms: {name} has shape {shape}, expected ({n},) for {n} atoms")

    def __len__(self) -> int:
        return len(self.Z)

    def replace(self, **changes) -> "Atoms":
        """A copy with some arrays replaced (e.g. ``atoms.replace(frac=atoms.frac + shift)``)."""
        return replace(self, **changes)

    @classmethod
    def coerce(cls, atoms) -> "Atoms":
        """``atoms`` itself, or an :class:`Atoms` made from a mapping with the keys ``frac``, ``Z``,
        ``occupancy``, ``b_iso`` (and optionally ``site``); lists become NumPy arrays.

        Raises
        ------
        ValueError
            One line naming the missing key or the wrong shape.
        """
        if isinstance(atoms, cls):
            return atoms
        if not isinstance(atoms, Mapping):
            raise ValueError(f"atoms: expected an Atoms or a mapping with keys {', '.join(_REQUIRED)}, "
                             f"got {type(atoms).__name__}")
        missing = [k for k in _REQUIRED if k not in atoms]
        if missing:
            raise ValueError(f"atoms: missing key(s) {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        values = {k: (v if hasattr(v, "shape") else np.asarray(v)) for k, v in atoms.items() if k in known}
        return cls(**values)
