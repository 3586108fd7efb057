"""Electron atomic form factors f(q) [Å]: Kirkland (FELIX's default, the paper's) and Peng.

- **Kirkland** (E. J. Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed., Springer 2010,
  Appendix C): ``f(q) = Σ_{i=1..3} a_i/(q² + b_i) + c_i exp(-d_i q²)``, q = 1/d [Å⁻¹]. Parameters are
  shipped as package data (``data/kirkland.csv``, the numbers FELIX tabulates).
- **Peng** (Peng, Ren, Dudarev & Whelan, Acta Cryst. A52 (1996) 257; International Tables C,
  Table 4.3.2.2), taken from gemmi's built-in table: ``f(s) = Σ_{i=1..5} a_i exp(-b_i s²)``,
  s = sinθ/λ = q/2. FELIX evaluates Peng's formula with 2π-unit g (felix-spec §3.2), which looks like
  a unit error; we follow the published definition.

Both return the non-relativistic electron form factor; the relativistic factor γ enters in U_g.
"""

from __future__ import annotations

import csv
import functools
from importlib import resources

import numpy as np
import torch

__all__ = ["FORM_FACTOR_TABLES", "form_factor_parameters", "form_factors"]

FORM_FACTOR_TABLES = ("kirkland", "peng")


@functools.lru_cache(maxsize=None)
def _kirkland_table() -> dict[int, np.ndarray]:
    text = resources.files("lacbed_refine").joinpath("data/kirkland.csv").read_text()
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    table = {}
    for rec in csv.DictReader(rows):
        z = int(rec["Z"])
        table[z] = np.array(
            [float(rec[k]) for k in ("a1", "b1", "a2", "b2", "a3", "b3", "c1", "d1", "c2", "d2", "c3", "d3")]
        )
    return table


@functools.lru_cache(maxsize=None)
def _peng_table() -> dict[int, np.ndarray]:
    import gemmi

    table = {}
    for z in range(1, 99):
        coef = gemmi.Element(z).c4322
        table[z] = np.concatenate([np.asarray(coef.a, dtype=float), np.asarray(coef.b, dtype=float)])
    return table


def form_factor_parameters(atomic_numbers, table: str = "kirkland") -> np.ndarray:
    """Parameters of each element's form factor.

    Parameters
    ----------
    atomic_numbers : sequence of int, shape (E,)
    table : {"kirkland", "peng"}

    Returns
    -------
    ndarray, shape (E, 12) for Kirkland (a1 b1 a2 b2 a3 b3 c1 d1 c2 d2 c3 d3) or (E, 10) for Peng
    (a1..a5 b1..b5).
    """
    if table not in FORM_FACTOR_TABLES:
        raise ValueError(f"form-factor table must be one of {FORM_FACTOR_TABLES}, got {table!r}")
    tab = _kirkland_table() if table == "kirkland" else _peng_table()
    out = []
    for z in atomic_numbers:
        z = int(z)
        if z not in tab:
            raise ValueError(f"no {table} form factor for atomic number {z}")
        out.append(tab[z])
    return np.stack(out)


def form_factors(q2: torch.Tensor, params: torch.Tensor, table: str = "kirkland") -> torch.Tensor:
    """Electron form factors f [Å] of E elements at squared scattering vectors.

    Parameters
    ----------
    q2 : Tensor, shape (G,)
        |g|² in 1/d units [Å⁻²].
    params : Tensor, shape (E, P)
        From :func:`form_factor_parameters`, same table.
    table : {"kirkland", "peng"}

    Returns
    -------
    Tensor, shape (E, G)
    """
    q2 = q2[None, :]
    if table == "kirkland":
        a, b = params[:, 0:6:2, None], params[:, 1:6:2, None]
        c, d = params[:, 6:12:2, None], params[:, 7:12:2, None]
        return (a / (q2 + b)).sum(1) + (c * torch.exp(-d * q2)).sum(1)
    if table == "peng":
        a, b = params[:, 0:5, None], params[:, 5:10, None]
        return (a * torch.exp(-b * (q2 / 4.0))).sum(1)
    raise ValueError(f"form-factor table must be one of {FORM_FACTOR_TABLES}, got {table!r}")
