"""Units, frames and physical constants: the one place lacbed-refine states its conventions.

Units
-----
- Lengths in Å, areas (B_iso) in Å², fractional coordinates in units of the cell edge.
- Reciprocal vectors in **public APIs and files**: Å⁻¹ *without* 2π ("1/d units": ``q = 1/d``).
  Inside the Bloch engine, wave vectors carry 2π (``k = 2π/λ``, ``g = 2π q``), as FELIX does,
  so that eigenvalues are in rad/Å and the phase after thickness ``t`` [Å] is ``γ t``.
- Thickness: nm on the command line and in reports (the paper's unit), Å inside the library and in
  FELIX files. Conversion happens only at the I/O edge.
- Accelerating voltage in kV on the command line, V inside the library.
- Tilt half-width of the LACBED pattern in Å⁻¹ (1/d units), FELIX's ``ROuterConvergenceAngle``.
- U_g in Å⁻² (FELIX prints 100·U_g as "nm⁻²").

Frames and images
-----------------
- Cubic cell, [001] zone axis, image +x along [100] (a*), +y along [010] (b* = ẑ × x̂).
- Pattern arrays are ``[row, col] = [k_y, k_x]``; row 0 at the top, beam into the screen. Pixel
  ``(r, c)`` of a 2N×2N pattern sits at tilt ``k = ((c - N + ½) Δ, (r - N + ½) Δ)`` with
  ``Δ = half_width / N`` (1/d units), so pixel centres lie at ±(½ … N−½)Δ and no pixel is on an
  axis. This is FELIX's grid (felix-spec §4).
- Intensities are fractions of the incident beam, float32 on disk, never normalised per image.
- Phase convention of structure factors: ``F(g) = Σ_j f_j exp(-2πi g·r_j)`` (FELIX's ``exp(-i g·r)``
  with 2π in g).

Electron
--------
Relativistic wavelength ``λ = h / sqrt(2 m0 e V (1 + eV / (2 m0 c²)))``; ``γ = 1 + eV/(m0 c²)``;
``U_g = (γ / (π V_cell)) Σ f_j occ_j exp(-B_j q²/4) exp(-2πi g·r_j)`` with Kirkland or Peng electron
form factors f [Å] (no Mott–Bethe step). CODATA constants are used; FELIX's source has a typo in
the speed of light (2.99762458e8) that changes λ by 1.6e-5 relative, far below anything measurable
in a pattern.
"""

from __future__ import annotations

import math

__all__ = [
    "PLANCK_H",
    "ELECTRON_MASS",
    "ELEMENTARY_CHARGE",
    "SPEED_OF_LIGHT",
    "electron_wavelength",
    "relativistic_gamma",
    "wavevector_2pi",
    "NM",
]

#: Planck constant [J s] (CODATA 2018, exact).
PLANCK_H = 6.62607015e-34
#: Electron rest mass [kg] (CODATA 2018).
ELECTRON_MASS = 9.1093837015e-31
#: Elementary charge [C] (exact).
ELEMENTARY_CHARGE = 1.602176634e-19
#: Speed of light in vacuum [m/s] (exact).
SPEED_OF_LIGHT = 299792458.0
#: Å per nm, for converting thickness at the I/O edge.
NM = 10.0


def electron_wavelength(voltage: float) -> float:
    """Relativistic electron wavelength λ [Å] for an accelerating voltage [V]."""
    if not voltage > 0:
        raise ValueError(f"voltage must be positive (V), got {voltage!r}")
    e_v = ELEMENTARY_CHARGE * voltage
    m0c2 = ELECTRON_MASS * SPEED_OF_LIGHT**2
    p = math.sqrt(2.0 * ELECTRON_MASS * e_v * (1.0 + e_v / (2.0 * m0c2)))
    return PLANCK_H / p * 1e10


def relativistic_gamma(voltage: float) -> float:
    """Lorentz factor γ = 1 + eV/(m0 c²) of an electron accelerated through ``voltage`` [V]."""
    return 1.0 + ELEMENTARY_CHARGE * voltage / (ELECTRON_MASS * SPEED_OF_LIGHT**2)


def wavevector_2pi(voltage: float) -> float:
    """Vacuum wave number K = 2π/λ [rad/Å] (2π units, the Bloch engine's internal unit)."""
    return 2.0 * math.pi / electron_wavelength(voltage)


#: The paper's tilt half-width in units of the cubic reciprocal cell edge a* = 1/a: the half-width is
#: 7.266/a Å⁻¹ (its data scripts; the [001] surrogates are trained on that grid).
PAPER_HALF_WIDTH_CELLS = 7.266


def paper_half_width(a: float) -> float:
    """The paper's tilt half-width [Å⁻¹] for a cubic cell edge ``a`` [Å]: 7.266/a."""
    return PAPER_HALF_WIDTH_CELLS / a
