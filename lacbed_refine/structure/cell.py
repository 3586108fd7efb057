"""Unit cells of any crystal system: metric, orthogonal frame and reciprocal vectors.

The orthogonal (Cartesian) frame is FELIX's and the PDB's (felix-spec §4): a ∥ x, b in the xy plane,
c completing a right-handed set. Reciprocal vectors are in 1/d units [Å⁻¹] (no 2π), as everywhere in
the public API (:mod:`lacbed_refine.conventions`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Cell"]


@dataclass(frozen=True)
class Cell:
    """A unit cell.

    Attributes
    ----------
    a, b, c : float
        Edges [Å].
    alpha, beta, gamma : float
        Angles [degrees].
    """

    a: float
    b: float
    c: float
    alpha: float = 90.0
    beta: float = 90.0
    gamma: float = 90.0

    def __post_init__(self):
        for name in ("a", "b", "c"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and v > 0):
                raise ValueError(f"cell edge {name} = {v!r}: must be a positive number of Å")
        for name in ("alpha", "beta", "gamma"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating)) and math.isfinite(v) and 0 < v < 180):
                raise ValueError(f"cell angle {name} = {v!r}: must be between 0 and 180 degrees")
        if not self.volume > 0:
            raise ValueError(f"cell angles {self.alpha}, {self.beta}, {self.gamma} do not make a cell")

    @classmethod
    def cubic(cls, a: float) -> "Cell":
        return cls(a, a, a)

    @property
    def volume(self) -> float:
        """Cell volume [Å³]."""
        ca, cb, cg = (math.cos(math.radians(x)) for x in (self.alpha, self.beta, self.gamma))
        v2 = 1 - ca * ca - cb * cb - cg * cg + 2 * ca * cb * cg
        return self.a * self.b * self.c * math.sqrt(max(v2, 0.0))

    @property
    def orth(self) -> np.ndarray:
        """Fractional → Cartesian [Å], shape (3, 3): columns are a, b, c in the orthogonal frame."""
        ca, cb, cg = (math.cos(math.radians(x)) for x in (self.alpha, self.beta, self.gamma))
        sg = math.sin(math.radians(self.gamma))
        cx = self.c * cb
        cy = self.c * (ca - cb * cg) / sg
        cz = self.volume / (self.a * self.b * sg)
        return np.array([[self.a, self.b * cg, cx], [0.0, self.b * sg, cy], [0.0, 0.0, cz]])

    @property
    def recip(self) -> np.ndarray:
        """Miller indices → Cartesian reciprocal vector [Å⁻¹, 1/d units], shape (3, 3): columns
        are a*, b*, c*."""
        return np.linalg.inv(self.orth).T

    def g_length(self, hkl) -> np.ndarray:
        """|g| [Å⁻¹, 1/d units] of reflections ``hkl`` (shape (..., 3))."""
        g = np.asarray(hkl, dtype=float) @ self.recip.T
        return np.linalg.norm(g, axis=-1)

    @property
    def is_cubic(self) -> bool:
        return (abs(self.a - self.b) < 1e-9 and abs(self.a - self.c) < 1e-9
                and all(abs(x - 90.0) < 1e-9 for x in (self.alpha, self.beta, self.gamma)))
