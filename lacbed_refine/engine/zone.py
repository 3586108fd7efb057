"""Zone-axis geometry for any crystal: the microscope frame, tilted wave vectors, exact excitation
errors and the surface-normal factor (FELIX's definitions, felix-spec §3.6 and §4).

Microscope frame: x̂ = unit(h a* + k b* + l c*) from the image x direction [hkl], ẑ = unit(u a + v b +
w c) from the incident-beam direction [uvw], ŷ = ẑ × x̂. Pattern pixel ``[row, col]`` has tangential
tilt (k_x, k_y) on FELIX's grid (:func:`lacbed_refine.engine.geometry.tilt_grid`). Inside this module wave
vectors carry 2π [rad/Å], as in the engine; inputs and outputs in files stay in 1/d units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from lacbed_refine.structure.cell import Cell

__all__ = ["ZoneAxis", "beam_vectors", "tilted_wavevectors", "excitation_errors_3d", "normal_factor", "default_x_direction"]


def _int_triple(value, option: str) -> tuple[int, int, int]:
    try:
        t = tuple(int(x) for x in value)
    except (TypeError, ValueError):
        raise ValueError(f"{option} {value!r}: three integers are needed") from None
    if len(t) != 3 or any(float(x) != y for x, y in zip(value, t)):
        raise ValueError(f"{option} {value!r}: three integers are needed")
    if t == (0, 0, 0):
        raise ValueError(f"{option} {value!r}: must not be zero")
    return t


@dataclass(frozen=True)
class ZoneAxis:
    """Orientation of the crystal in the microscope.

    Attributes
    ----------
    zone : (u, v, w)
        Incident-beam direction, a direct-lattice vector (FELIX ``IIncidentBeamDirection``).
    x_direction : (h, k, l)
        Reciprocal-lattice vector along the image +x axis; must be perpendicular to the beam,
        h u + k v + l w = 0 (FELIX ``IXDirection``).
    normal : (u, v, w), optional
        Specimen surface normal, a direct-lattice vector (FELIX ``INormalDirection``); default the
        beam direction.
    """

    zone: tuple[int, int, int] = (0, 0, 1)
    x_direction: tuple[int, int, int] = (1, 0, 0)
    normal: tuple[int, int, int] | None = None

    def __post_init__(self):
        zone = _int_triple(self.zone, "--zone")
        x = _int_triple(self.x_direction, "--x-direction")
        normal = zone if self.normal is None else _int_triple(self.normal, "--normal")
        if sum(a * b for a, b in zip(zone, x)):
            raise ValueError(f"--x-direction {x}: not perpendicular to the zone axis {zone} "
                             "(h u + k v + l w must be 0)")
        object.__setattr__(self, "zone", zone)
        object.__setattr__(self, "x_direction", x)
        object.__setattr__(self, "normal", normal)

    def frame(self, cell: Cell) -> np.ndarray:
        """Rotation from the orthogonal crystal frame to the microscope frame, shape (3, 3): rows
        x̂, ŷ, ẑ."""
        z = cell.orth @ np.asarray(self.zone, dtype=float)
        z /= np.linalg.norm(z)
        x = cell.recip @ np.asarray(self.x_direction, dtype=float)
        x /= np.linalg.norm(x)
        return np.stack([x, np.cross(z, x), z])

    def normal_vector(self, cell: Cell) -> np.ndarray:
        """Unit surface normal in the microscope frame, shape (3,)."""
        n = self.frame(cell) @ (cell.orth @ np.asarray(self.normal, dtype=float))
        n /= np.linalg.norm(n)
        if n[2] <= 0.05:
            raise ValueError(f"--normal {self.normal}: the surface normal is {math.degrees(math.acos(max(-1.0, min(1.0, n[2])))):.0f}° "
                             f"from the beam {self.zone}; it must point along the beam")
        return n


def beam_vectors(cell: Cell, zone: ZoneAxis, hkl: np.ndarray) -> np.ndarray:
    """Reciprocal vectors of ``hkl`` (shape (n, 3)) in the microscope frame [rad/Å, 2π units]."""
    g = np.asarray(hkl, dtype=float) @ cell.recip.T  # (n, 3), 1/d units, crystal frame
    return 2 * math.pi * g @ zone.frame(cell).T


def tilted_wavevectors(kx: np.ndarray, ky: np.ndarray, big_k: float) -> torch.Tensor:
    """k′ = (k_x, k_y, √(K² − k_x² − k_y²)) [rad/Å] for tangential tilts ``kx``, ``ky`` [rad/Å]
    (shape (P,)); returns shape (P, 3), float64."""
    kx = torch.as_tensor(kx, dtype=torch.float64)
    ky = torch.as_tensor(ky, dtype=torch.float64)
    return torch.stack([kx, ky, torch.sqrt(big_k**2 - kx**2 - ky**2)], dim=1)


def excitation_errors_3d(k: torch.Tensor, g: torch.Tensor, big_k: float) -> torch.Tensor:
    """FELIX's exact excitation errors s_g [rad/Å], positive inside the Ewald sphere, for any g
    (HOLZ included).

    In a frame with x ∥ ĝ: k₀ = (−g/2, 0, √(K² − g²/4)) is the Bragg direction, k″ = (k′·ĝ, 0,
    √(K² − (k′·ĝ)²)) the actual one, and s_g = −sign(2 g·k′ + g²) (g/K) |k₀ − k″|.

    Evaluated without cancellation: with κ = k′·ĝ, k₀_z − k″_z = (g/2 − κ)(g/2 + κ)/(k₀_z + k″_z), so
    |k₀ − k″| = |κ + g/2| √(1 + ((g/2 − κ)/(k₀_z + k″_z))²) and s_g = −(g/K)(κ + g/2) √(…). (The
    textbook form 2(K² + κg/2 − k₀_z k″_z) loses ~10⁻¹¹ of K² to rounding, which is a phase error of
    ~10⁻¹⁰ rad at 2000 Å.)

    Parameters
    ----------
    k : Tensor, shape (P, 3)
        Incident wave vectors k′ [rad/Å].
    g : Tensor, shape (n, 3)
        Beam vectors [rad/Å], microscope frame.
    big_k : float
        K = 2π/λ [rad/Å].

    Returns
    -------
    Tensor, shape (P, n); 0 for the 000 beam.
    """
    gm = torch.linalg.vector_norm(g, dim=-1)
    gsafe = torch.where(gm > 0, gm, torch.ones_like(gm))
    gdotk = k @ g.T  # (P, n)
    kg = gdotk / gsafe
    k0z = torch.sqrt(big_k**2 - gm**2 / 4)
    kpz = torch.sqrt(torch.clamp(big_k**2 - kg**2, min=0))
    q = (gm / 2 - kg) / (k0z + kpz)
    s = -(gm / big_k) * (kg + gm / 2) * torch.sqrt(1 + q * q)
    return torch.where(gm > 0, s, torch.zeros_like(s))


def normal_factor(k: torch.Tensor, g: torch.Tensor, normal: np.ndarray) -> torch.Tensor:
    """1 + g·n̂ / (k′·n̂) per pixel and beam, shape (P, n) (Palatinus 2015; felix-spec §3.6): the
    structure matrix is divided by √(f_i f_j) and the intensities by f_g."""
    n = torch.as_tensor(normal, dtype=torch.float64)
    return 1 + (g @ n)[None, :] / (k @ n)[:, None]


def default_x_direction(cell: Cell, zone) -> tuple[int, int, int]:
    """The image x direction used when none is given: (1, 0, 0) when it is perpendicular to the zone,
    else the shortest reciprocal-lattice vector (h, k, l) with h u + k v + l w = 0 (ties: the first in
    index order with the largest positive leading index), so that the choice is reproducible.

    Parameters
    ----------
    cell : Cell
    zone : (u, v, w)
        Incident-beam direction (direct lattice).

    Returns
    -------
    (h, k, l) : tuple of int
    """
    u, v, w = (int(x) for x in zone)
    if u == 0:
        return (1, 0, 0)
    r = range(-6, 7)
    best = None
    for h in r:
        for k in r:
            for l in r:
                if (h, k, l) == (0, 0, 0) or h * u + k * v + l * w:
                    continue
                length = float(np.linalg.norm(cell.recip @ np.array([h, k, l], dtype=float)))
                key = (round(length, 9), -h, -k, -l)
                if best is None or key < best[0]:
                    best = (key, (h, k, l))
    return best[1]
