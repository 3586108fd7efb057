"""Free structural parameters of a crystal of any cell and a differentiable map from them to the cell.

A site may move only along directions that keep its site symmetry: with the site-symmetry group
``{(R, t) : R r + t ≡ r (mod 1)}`` (the space-group operations that leave the site in place,
centring included), a fractional displacement ``δ`` keeps every such operation a symmetry of the
moved site exactly when ``R δ = δ`` for all of them. The allowed fractional directions span the null
space of the stacked ``(R − I)``; its reduced row echelon basis is taken to Å with the cell
(``cell.orth``, columns a, b, c in FELIX's orthogonal frame: a ∥ x, b in the xy plane) and made
orthonormal there (Gram–Schmidt in that order), so that every direction is a unit vector in Å:
``x,x,x`` gives ``(1, 1, 1)/√3``, ``x,x,z`` in a tetragonal or cubic cell ``(1, 1, 0)/√2`` and
``(0, 0, 1)``, a general position the Cartesian axes x, y, z (in any cell).

**Convention.** A parameter vector θ holds, per refined site, displacements [Å] along its allowed
directions, B_iso [Å²] and occupancy. A displacement parameter θ_j is a length in Å along the unit
Cartesian direction d_j (shape (3,), orthogonal frame), whatever the cell: the fractional
displacement is ``δ = orth⁻¹ Σ_j θ_j d_j`` (``orth = crystal.cell.orth``; in a cubic cell
``δ = Σ_j θ_j d_j / a``). :meth:`FreeParameters.atoms` regenerates the full cell from θ with each
site's orbit operations, ``r_k = R_k (r0 + δ) + t_k`` (fractional); it is an affine function of θ and
is differentiable by torch autograd. :meth:`FreeParameters.atoms_and_cell` adds the
:class:`~lacbed_refine.structure.cell.Cell`, the two inputs of
:func:`lacbed_refine.engine.general.simulate_zone`.

Sites whose rows share one position (mixed occupancy) share their displacement and B parameters
unless ``tie_shared=False``: they stay on one position and the parameter is named after the first
of them. Their occupancies stay separate; :meth:`FreeParameters.occupancy_groups` lists the groups
whose summed occupancy should not exceed 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from lacbed_refine.structure.atoms import Atoms
from lacbed_refine.structure.cell import Cell
from lacbed_refine.structure.spacegroup import POS_TOL, shared_position_groups, wrap_diff
from lacbed_refine.structure.crystal import Crystal
from lacbed_refine.structure.wyckoff import rref

__all__ = ["FreeParameters", "free_parameters", "allowed_directions", "REFINABLE"]

#: The parameter kinds :func:`free_parameters` can refine.
REFINABLE = ("xyz", "b", "occ")

#: Largest displacement bound [Å].
MAX_DISPLACEMENT = 0.5
#: Bounds on B_iso [Å²] (the upper one is raised to the current B where that is larger).
B_BOUNDS = (0.0, 10.0)


def allowed_directions(crystal: Crystal, index: int) -> np.ndarray:
    """Unit displacement directions that keep site ``index`` on its site symmetry.

    Parameters
    ----------
    crystal : Crystal
        The crystal.
    index : int
        Index into ``crystal.sites``.

    Returns
    -------
    directions : ndarray, shape (K, 3)
        Orthonormal rows in Å space (Cartesian, the cell's orthogonal frame: ``crystal.cell.orth``
        maps fractional to Cartesian), K in {0, 1, 2, 3}. The fractional direction of row d is
        ``inv(crystal.cell.orth) @ d`` (``d / a`` in a cubic cell).
    """
    rotations, _ = crystal.site_symmetry(index)
    return _fixed_space(rotations, crystal.cell.orth)


def _fixed_space(rotations: np.ndarray, orth: np.ndarray) -> np.ndarray:
    """Orthonormal (in Å), readable basis of the Cartesian images ``orth @ δ`` of
    {δ : R δ = δ for every R in ``rotations``} (δ fractional)."""
    eye = np.eye(3)
    stacked = (np.asarray(rotations, dtype=float) - eye).reshape(-1, 3)
    _, sv, vt = np.linalg.svd(np.vstack([stacked, np.zeros((1, 3))]))
    rank = int(np.sum(sv > 1e-8))
    basis = vt[rank:]
    if len(basis) == 0:
        return np.zeros((0, 3))
    basis = rref(basis) @ np.asarray(orth, dtype=float).T  # rows: Cartesian images of the fractional rows
    out: list[np.ndarray] = []
    for v in basis:
        for q in out:
            v = v - (v @ q) * q
        out.append(v / np.linalg.norm(v))
    result = np.array(out)
    result[np.abs(result) < 1e-12] = 0.0
    return result




@dataclass(frozen=True, eq=False)
class FreeParameters:
    """The free parameters of a crystal and the map θ → atoms.

    Build with :func:`free_parameters`.

    Attributes
    ----------
    crystal : Crystal
        The reference crystal (θ = :meth:`initial` reproduces it).
    names : tuple of str
        One per entry of θ: ``"O1.dx0"`` (displacement along direction 0 of O1 [Å]), ``"O1.B"``
        (B_iso [Å²]), ``"O1.occ"`` (occupancy).
    kinds : tuple of str
        ``"xyz"``, ``"b"`` or ``"occ"`` per entry.
    site_of : tuple of int
        Site index per entry (the first site of a tied group).
    lower, upper : ndarray, shape (P,)
        Bounds per entry. Displacements [Å]: ±min(0.5 Å, 0.45 (d − ε)/√K), d the shortest distance
        [Å] between two images of the site (other lattice translations included), ε the longest
        Cartesian length of a fractional difference within the position tolerance 10⁻³ per component
        (√3·10⁻³·a in a cubic cell) and K the number of directions, so that images never merge;
        B in [0, max(10, B0)] Å²; occupancy in [0, 1].
    directions : tuple of ndarray
        Per site, its allowed unit directions in Å space, shape (K, 3) (see
        :func:`allowed_directions`).
    targets : tuple of tuple of int
        Per entry, the sites it acts on (more than one for tied shared-position sites).
    """

    crystal: Crystal
    names: tuple[str, ...]
    kinds: tuple[str, ...]
    site_of: tuple[int, ...]
    lower: np.ndarray
    upper: np.ndarray
    directions: tuple[np.ndarray, ...]
    targets: tuple[tuple[int, ...], ...]
    _theta0: np.ndarray = field(repr=False)
    _disp: np.ndarray = field(repr=False)  # (S*3, P): δ_frac (flattened per site) = _disp @ θ
    _b_sel: np.ndarray = field(repr=False)  # (S, P)
    _occ_sel: np.ndarray = field(repr=False)  # (S, P)
    _b_keep: np.ndarray = field(repr=False)  # (S,) B of sites whose B is not refined, else 0
    _occ_keep: np.ndarray = field(repr=False)  # (S,)

    def __len__(self) -> int:
        return len(self.names)

    def initial(self, *, dtype=torch.float64, device=None) -> torch.Tensor:
        """θ0: zero displacements, the crystal's B_iso and occupancies.

        Parameters
        ----------
        dtype : torch.dtype
            Floating dtype of the result.
        device : torch.device or str, optional
            Device of the result (CPU by default).

        Returns
        -------
        theta : Tensor, shape (P,)
        """
        return torch.as_tensor(self._theta0, dtype=dtype, device=device).clone()

    def atoms(self, theta: torch.Tensor) -> Atoms:
        """The full conventional cell for parameters ``theta`` (differentiable).

        Parameters
        ----------
        theta : Tensor, shape (P,)
            Parameters in the order of :attr:`names`; its dtype and device set those of the result.

        Returns
        -------
        Atoms
            ``frac`` (N, 3) fractional positions (not wrapped into [0, 1): structure factors are
            periodic); ``Z`` (N,) long atomic numbers; ``occupancy`` (N,); ``b_iso`` (N,) [Å²];
            ``site`` (N,) long index into ``crystal.sites``. Same atom order as
            :meth:`Crystal.atoms`.
        """
        theta = self._check_theta(theta)
        c = self._constants(theta.dtype, theta.device)
        delta = (c["disp"] @ theta).reshape(-1, 3)  # (S, 3) fractional
        r = c["r0"] + delta
        frac = torch.einsum("nij,nj->ni", c["rot"], r[c["site"]]) + c["tra"]
        b = c["b_keep"] + c["b_sel"] @ theta
        occ = c["occ_keep"] + c["occ_sel"] @ theta
        return Atoms(frac=frac, Z=c["Z"], occupancy=occ[c["site"]], b_iso=b[c["site"]], site=c["site"])

    def atoms_and_cell(self, theta: torch.Tensor) -> tuple[Atoms, Cell]:
        """The full cell for ``theta`` and the unit cell: the ``atoms`` and ``cell`` arguments of
        :func:`lacbed_refine.engine.general.simulate_zone` (any cell, any zone axis).

        Parameters
        ----------
        theta : Tensor, shape (P,)
            As for :meth:`atoms`.

        Returns
        -------
        atoms : Atoms
            :meth:`atoms` ``(theta)``: ``frac`` (N, 3) fractional, ``Z`` (N,), ``occupancy`` (N,),
            ``b_iso`` (N,) [Å²], ``site`` (N,); differentiable in ``theta``.
        cell : Cell
            ``crystal.cell`` (θ does not change the cell).
        """
        return self.atoms(theta), self.crystal.cell

    def cartesian(self, theta: torch.Tensor) -> torch.Tensor:
        """Atom positions [Å] for ``theta`` in the cell's orthogonal frame, ``orth @ frac``
        (differentiable; same order as :meth:`atoms`, not wrapped into the cell).

        Returns
        -------
        xyz : Tensor, shape (N, 3)
        """
        frac = self.atoms(theta).frac
        orth = torch.as_tensor(self.crystal.cell.orth, dtype=frac.dtype, device=frac.device)
        return frac @ orth.T

    def to_crystal(self, theta) -> Crystal:
        """A new :class:`Crystal` with the sites moved and B/occupancy set from ``theta``.

        Positions are wrapped into [0, 1). Wyckoff letters are kept unless a site's multiplicity
        changed (a displacement onto a point of higher symmetry).

        Parameters
        ----------
        theta : Tensor or array_like, shape (P,)

        Raises
        ------
        ValueError
            If an occupancy is outside [0, 1] or a B_iso is negative.
        """
        if isinstance(theta, torch.Tensor):
            theta = theta.detach().cpu().numpy()
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (len(self),):
            raise ValueError(f"theta must have shape ({len(self)},), got {theta.shape}")
        delta = (self._disp @ theta).reshape(-1, 3)
        b = self._b_keep + self._b_sel @ theta
        occ = self._occ_keep + self._occ_sel @ theta
        sites = []
        for i, site in enumerate(self.crystal.sites):
            if not -1e-9 <= occ[i] <= 1.0 + 1e-9:
                raise ValueError(
                    f"occupancy of site {site.label!r} must be in [0, 1], got {occ[i]:g}"
                )
            if b[i] < 0:
                raise ValueError(f"B_iso of site {site.label!r} must be >= 0 Å², got {b[i]:g}")
            frac = np.mod(np.asarray(site.frac) + delta[i], 1.0)
            frac = np.where(frac >= 1.0, 0.0, frac)
            sites.append(
                replace(
                    site,
                    frac=tuple(float(x) for x in frac),
                    b_iso=float(b[i]),
                    occupancy=float(min(max(occ[i], 0.0), 1.0)),
                )
            )
        new = self.crystal.with_sites(sites)
        old_mult = [o.multiplicity for o in self.crystal.orbits()]
        new_mult = [o.multiplicity for o in new.orbits()]
        if old_mult != new_mult:
            sites = [
                s if m0 == m1 else replace(s, wyckoff="")
                for s, m0, m1 in zip(sites, old_mult, new_mult)
            ]
            new = self.crystal.with_sites(sites)
        return new

    def occupancy_groups(self) -> list[list[int]]:
        """Groups of site indices whose rows share one position (their occupancies sum to ≤ 1).

        Only groups of two or more sites are listed; a lone site is bounded by [0, 1] already.
        """
        return [list(g) for g in self._groups]

    # -- internals --------------------------------------------------------------------------
    @property
    def _groups(self) -> list[list[int]]:
        rot, tra = self.crystal.operations()
        return shared_position_groups([s.frac for s in self.crystal.sites], rot, tra)

    def _check_theta(self, theta) -> torch.Tensor:
        if not isinstance(theta, torch.Tensor):
            raise TypeError(f"theta must be a torch.Tensor, got {type(theta).__name__}")
        if theta.shape != (len(self),):
            raise ValueError(f"theta must have shape ({len(self)},), got {tuple(theta.shape)}")
        if not theta.is_floating_point():
            raise TypeError(f"theta must be a floating tensor, got {theta.dtype}")
        return theta

    def _constants(self, dtype, device) -> dict[str, torch.Tensor]:
        cache = self.__dict__.setdefault("_cache", {})
        key = (dtype, str(device))
        if key not in cache:
            rot, tra, site, z = [], [], [], []
            for i, (s, orb) in enumerate(zip(self.crystal.sites, self.crystal.orbits())):
                rot.append(orb.rotations)
                tra.append(orb.translations)
                site += [i] * orb.multiplicity
                z += [s.atomic_number] * orb.multiplicity

            def f(x):
                return torch.as_tensor(np.asarray(x, dtype=float), dtype=dtype, device=device)

            cache[key] = {
                "rot": f(np.concatenate(rot)),
                "tra": f(np.concatenate(tra)),
                "site": torch.as_tensor(site, dtype=torch.long, device=device),
                "Z": torch.as_tensor(z, dtype=torch.long, device=device),
                "r0": f([s.frac for s in self.crystal.sites]),
                "disp": f(self._disp),
                "b_sel": f(self._b_sel),
                "occ_sel": f(self._occ_sel),
                "b_keep": f(self._b_keep),
                "occ_keep": f(self._occ_keep),
            }
        return cache[key]


def free_parameters(
    crystal: Crystal, *, refine=REFINABLE, fix=(), tie_shared: bool = True
) -> FreeParameters:
    """The symmetry-allowed free parameters of ``crystal``.

    Parameters
    ----------
    crystal : Crystal
        Reference structure (θ0 reproduces it).
    refine : iterable of {"xyz", "b", "occ"}
        Which kinds of parameter to free.
    fix : iterable of str
        Site labels held fixed (no parameter of theirs is freed; a tied shared-position group is
        held fixed in position and B when any of its sites is).
    tie_shared : bool
        Sites sharing one position share one set of displacement and B parameters.

    Returns
    -------
    params : FreeParameters
        Entries ordered by site, then displacements, B, occupancy.

    Raises
    ------
    ValueError
        If ``refine`` names an unknown kind or ``fix`` an unknown site label.
    """
    refine = (refine,) if isinstance(refine, str) else tuple(refine)
    bad = [k for k in refine if k not in REFINABLE]
    if bad:
        raise ValueError(f"refine must be a subset of {REFINABLE}, got unknown {bad}")
    fix = (fix,) if isinstance(fix, str) else tuple(fix)
    labels = [s.label for s in crystal.sites]
    unknown = [lab for lab in fix if lab not in labels]
    if unknown:
        raise ValueError(f"fix names unknown site label(s) {unknown}; the crystal has {labels}")
    fixed = {i for i, lab in enumerate(labels) if lab in set(fix)}

    n_sites = len(crystal.sites)
    rot, tra = crystal.operations()
    groups = []
    if tie_shared:
        groups = shared_position_groups([s.frac for s in crystal.sites], rot, tra)
    lead = list(range(n_sites))
    for g in groups:
        for i in g:
            lead[i] = g[0]
    members: dict[int, tuple[int, ...]] = {}
    for i in range(n_sites):
        members.setdefault(lead[i], ())
        members[lead[i]] += (i,)

    directions = tuple(allowed_directions(crystal, i) for i in range(n_sites))
    to_frac = np.linalg.inv(crystal.cell.orth)  # Å → fractional
    key = _unique_keys(labels)

    names, kinds, site_of, targets, lower, upper, theta0 = [], [], [], [], [], [], []
    disp_cols, b_rows, occ_rows = [], [], []
    for i, site in enumerate(crystal.sites):
        group = members.get(i, ())  # empty unless i leads its group
        group_fixed = any(j in fixed for j in group)
        if "xyz" in refine and group and not group_fixed and len(directions[i]):
            bound = _displacement_bound(crystal, i, len(directions[i]))
            for k, d in enumerate(directions[i]):
                names.append(f"{key[i]}.dx{k}")
                kinds.append("xyz")
                site_of.append(i)
                targets.append(group)
                lower.append(-bound)
                upper.append(bound)
                theta0.append(0.0)
                col = np.zeros((n_sites, 3))
                col[list(group)] = to_frac @ d
                disp_cols.append(col.ravel())
                b_rows.append(None)
                occ_rows.append(None)
        if "b" in refine and group and not group_fixed:
            names.append(f"{key[i]}.B")
            kinds.append("b")
            site_of.append(i)
            targets.append(group)
            lower.append(B_BOUNDS[0])
            upper.append(max(B_BOUNDS[1], site.b_iso))
            theta0.append(site.b_iso)
            disp_cols.append(None)
            b_rows.append(group)
            occ_rows.append(None)
        if "occ" in refine and i not in fixed:
            names.append(f"{key[i]}.occ")
            kinds.append("occ")
            site_of.append(i)
            targets.append((i,))
            lower.append(0.0)
            upper.append(1.0)
            theta0.append(site.occupancy)
            disp_cols.append(None)
            b_rows.append(None)
            occ_rows.append((i,))

    n_par = len(names)
    disp = np.zeros((n_sites * 3, n_par))
    b_sel = np.zeros((n_sites, n_par))
    occ_sel = np.zeros((n_sites, n_par))
    for e in range(n_par):
        if disp_cols[e] is not None:
            disp[:, e] = disp_cols[e]
        if b_rows[e] is not None:
            b_sel[list(b_rows[e]), e] = 1.0
        if occ_rows[e] is not None:
            occ_sel[list(occ_rows[e]), e] = 1.0
    b_keep = np.array([s.b_iso for s in crystal.sites]) * (b_sel.sum(axis=1) == 0)
    occ_keep = np.array([s.occupancy for s in crystal.sites]) * (occ_sel.sum(axis=1) == 0)
    return FreeParameters(
        crystal=crystal,
        names=tuple(names),
        kinds=tuple(kinds),
        site_of=tuple(site_of),
        lower=np.array(lower, dtype=float),
        upper=np.array(upper, dtype=float),
        directions=directions,
        targets=tuple(targets),
        _theta0=np.array(theta0, dtype=float),
        _disp=disp,
        _b_sel=b_sel,
        _occ_sel=occ_sel,
        _b_keep=b_keep,
        _occ_keep=occ_keep,
    )


def _unique_keys(labels: list[str]) -> list[str]:
    """Labels as parameter-name prefixes; a repeated label gets ``@index`` appended."""
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return [lab if counts[lab] == 1 else f"{lab}@{i}" for i, lab in enumerate(labels)]


def _displacement_bound(crystal: Crystal, index: int, n_dir: int) -> float:
    """±bound [Å] per direction such that two images of the site never come to within the
    position tolerance of each other (which would change the multiplicity)."""
    site, orb = crystal.sites[index], crystal.orbits()[index]
    orth = crystal.cell.orth
    pos = np.einsum("mij,j->mi", orb.rotations, np.asarray(site.frac)) + orb.translations
    lattice = np.array([(i, j, k) for i in (-1, 0, 1) for j in (-1, 0, 1) for k in (-1, 0, 1)], dtype=float)
    d = wrap_diff(pos[:, None, :] - pos[None, :, :])  # (M, M, 3)
    cart = (d[:, :, None, :] + lattice[None, None]) @ orth.T  # (M, M, 27, 3)
    dist = np.sqrt(np.sum(cart * cart, axis=-1))
    self_zero = np.eye(len(pos), dtype=bool)[:, :, None] & np.all(lattice == 0, axis=1)[None, None, :]
    shortest = float(dist[~self_zero].min())  # another image, or the site's own lattice repeat
    # Images closer than the tolerance (per fractional component) may be merged; the longest Å length
    # of such a difference is at a corner of the tolerance box. Each image moves by |δ| ≤ √K × bound.
    corners = np.array([(i, j, k) for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)], dtype=float)
    tolerance = POS_TOL * float(np.linalg.norm(corners @ orth.T, axis=1).max())
    room = max(0.0, shortest - tolerance) / 2.0
    return min(MAX_DISPLACEMENT, 0.9 * room / math.sqrt(n_dir))
