"""Plausible random cubic crystals, reproducible from a seed: volume and coverage for training data.

Structure ``index`` of seed ``seed`` is drawn from its own random stream
(``numpy.random.SeedSequence([seed, index])``), so it does not depend on how many structures are
drawn, in which order or by how many workers:

- space group: the 36 cubic groups in turn (``195 + index mod 36``, gemmi's default setting), so
  every group is equally represented — the real collection has 1–684 structures per group;
- cell edge a [Å]: drawn from the distribution of the real cubic structures (quantiles of
  ``a_angstrom`` in the shared ``cubic-cifs/index.csv``, 2403 structures with 3 ≤ a ≤ 20 Å, shipped
  below as :data:`REAL_A_QUANTILES`), redrawn when the group's smallest Wyckoff multiplicity
  cannot fit in the cell at the drawn density;
- number of atoms: a³ / v with the volume per atom v [Å³] log-normal about 15 Å³ (the real median;
  5–95 % of real structures lie in 7.6–33 Å³), so small cells hold few atoms and large cells many;
- composition: with probability 0.65 an ionic compound (one anion species from O, S, F, N, Se, Cl,
  … and one to three cation species), otherwise an intermetallic of one to three metals; elements
  are weighted by how many real cubic structures contain them (:data:`ELEMENT_WEIGHTS`);
- sites: Wyckoff positions (:func:`lacbed_refine.structure.wyckoff.wyckoff_positions`) chosen at random among
  those that still fit, free coordinates uniform, accepted only when every interatomic distance
  (periodic, cell images included) is at least ``0.85 (r_i + r_j)`` (covalent radii; 2.2 Å between
  anions, 1.5 Å at least) and the site's orbit has the position's full multiplicity;
- B_iso uniform in 0.2–1.5 Å², occupancy 1.

:func:`microscope_faults` turns a simulated stack into what a real microscope would record of it
(rotation, scale, zone-axis position and per-disc registration, detector blur, background and
Poisson noise): the known truth against which the fit of measured experiments is tested.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import gemmi
import numpy as np

from lacbed_refine.structure.spacegroup import POS_TOL, symmetry_operations, wrap_diff
from lacbed_refine.structure.crystal import CUBIC_SPACE_GROUPS, Crystal, Site
from lacbed_refine.structure.wyckoff import wyckoff_positions

__all__ = [
    "SyntheticConfig",
    "random_crystal",
    "synthetic_id",
    "write_synthetic_cifs",
    "microscope_faults",
    "synthetic_experiment",
    "synthetic_felix_inp",
    "REAL_A_QUANTILES",
    "ELEMENT_WEIGHTS",
    "ANIONS",
]

#: Cell edges [Å] at the 0, 2.5, …, 100 % quantiles of the 2403 real cubic structures with
#: 3 ≤ a ≤ 20 Å in ``shared/data/cubic-cifs/index.csv`` (sampled by inverse-CDF interpolation).
REAL_A_QUANTILES = (
    3.002, 3.413, 3.745, 3.862, 3.976, 4.132, 4.265, 4.545, 4.784, 5.034, 5.296, 5.47, 5.643, 5.742,
    5.841, 5.951, 6.042, 6.16, 6.322, 6.478, 6.694, 7.137, 7.59, 7.935, 8.09, 8.146, 8.201, 8.354,
    8.434, 8.607, 9.002, 9.573, 9.968, 10.132, 10.318, 10.46, 10.621, 11.297, 12.028, 12.574, 17.762,
)

#: Number of real cubic structures (``index.csv`` formulas) containing each element; noble gases,
#: hydrogen and elements found fewer than 5 times are left out.
ELEMENT_WEIGHTS = {
    "O": 897, "Fe": 359, "Al": 319, "Mg": 274, "S": 212, "Si": 183, "Cu": 181, "Sb": 179, "F": 177,
    "Ca": 166, "N": 140, "Mn": 138, "Ni": 132, "Sn": 129, "Na": 124, "Co": 124, "Ti": 124, "Li": 122,
    "Zn": 117, "Bi": 108, "Cr": 107, "K": 104, "Se": 102, "Cl": 99, "As": 95, "Pt": 91, "C": 91,
    "Cs": 80, "V": 76, "Cd": 73, "Te": 72, "Ba": 69, "Pb": 68, "Pd": 68, "Ag": 63, "Nb": 63, "Rb": 63,
    "Rh": 60, "Ta": 59, "P": 58, "Y": 58, "Sc": 55, "Au": 54, "Zr": 50, "In": 48, "Ir": 46, "Br": 45,
    "Tl": 45, "Ru": 42, "La": 42, "Sr": 42, "W": 41, "Ga": 41, "U": 40, "Ge": 39, "Hg": 39, "I": 36,
    "Hf": 36, "Pr": 33, "Nd": 32, "Be": 31, "Ce": 31, "Th": 29, "B": 28, "Mo": 27, "Os": 24, "Gd": 22,
    "Ho": 22, "Tb": 22, "Er": 19, "Sm": 19, "Yb": 19, "Dy": 16, "Tm": 15, "Re": 15, "Eu": 13, "Pu": 11,
    "Lu": 10, "Np": 10, "Tc": 5,
}

#: Elements used as the anion of ionic compounds.
ANIONS = ("O", "S", "F", "N", "Se", "Cl", "Te", "Br", "I", "P", "As", "C")
_METALS = tuple(e for e in ELEMENT_WEIGHTS if e not in ANIONS + ("B", "Si", "Ge", "Sb"))


@dataclass(frozen=True)
class SyntheticConfig:
    """Ranges of the random crystals.

    Attributes
    ----------
    a_range : tuple of float
        Cell edge bounds [Å]; a is drawn from :data:`REAL_A_QUANTILES` within them.
    b_iso_range : tuple of float
        B_iso bounds [Å²].
    volume_per_atom : float
        Median volume per atom [Å³].
    volume_sigma : float
        Log-normal spread of the volume per atom (natural log).
    ionic_fraction : float
        Probability of an ionic (anion + cations) rather than intermetallic composition.
    distance_factor : float
        Minimum distance as a fraction of the sum of covalent radii.
    anion_distance : float
        Minimum anion–anion distance [Å].
    min_distance : float
        Minimum distance between any two atoms [Å].
    max_sites : int
        Most asymmetric-unit sites.
    max_atoms : int
        Most atoms in the conventional cell.
    """

    a_range: tuple[float, float] = (3.0, 20.0)
    b_iso_range: tuple[float, float] = (0.2, 1.5)
    volume_per_atom: float = 15.0
    volume_sigma: float = 0.35
    ionic_fraction: float = 0.65
    distance_factor: float = 0.85
    anion_distance: float = 2.2
    min_distance: float = 1.5
    max_sites: int = 10
    max_atoms: int = 600

    def __post_init__(self):
        lo, hi = self.a_range
        if not 0 < lo < hi:
            raise ValueError(f"a_range must be (low, high) with 0 < low < high [Å], got {self.a_range!r}")
        lo, hi = self.b_iso_range
        if not 0 <= lo <= hi:
            raise ValueError(f"b_iso_range must be (low, high) with 0 <= low <= high [Å²], got {self.b_iso_range!r}")


def synthetic_id(seed: int, index: int) -> str:
    """Identifier of synthetic structure ``index`` of ``seed``: ``"syn<seed>-<index:06d>"``."""
    return f"syn{int(seed)}-{int(index):06d}"


def random_crystal(seed: int, index: int, *, spacegroup: int | None = None, config: SyntheticConfig | None = None) -> Crystal:
    """Draw synthetic cubic crystal number ``index`` of the stream ``seed``.

    Parameters
    ----------
    seed : int
        Non-negative seed of the family of structures.
    index : int
        Non-negative number of the structure within the family.
    spacegroup : int, optional
        Cubic space-group number (195–230); default ``195 + index mod 36``.
    config : SyntheticConfig, optional
        Ranges; default :class:`SyntheticConfig()`.

    Returns
    -------
    Crystal
        Named by its reduced formula, with ``source = "synthetic:seed=S:index=I"``; the same
        (seed, index, spacegroup, config) always gives the same crystal.

    Raises
    ------
    ValueError
        If ``seed``/``index`` are negative, ``spacegroup`` is not cubic, or no structure could be
        placed (a bad ``config``).
    """
    config = config or SyntheticConfig()
    if int(seed) < 0 or int(index) < 0:
        raise ValueError(f"seed and index must be non-negative, got seed={seed!r}, index={index!r}")
    number = CUBIC_SPACE_GROUPS[int(index) % len(CUBIC_SPACE_GROUPS)] if spacegroup is None else int(spacegroup)
    if number not in CUBIC_SPACE_GROUPS:
        raise ValueError(f"spacegroup must be a cubic space-group number 195-230, got {spacegroup!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    hall = gemmi.find_spacegroup_by_number(number).hall
    for _ in range(20):
        crystal = _try_crystal(rng, hall, config)
        if crystal is not None:
            return Crystal(
                name=_name(crystal),
                a=crystal.a,
                hall=hall,
                sites=crystal.sites,
                source=f"synthetic:seed={int(seed)}:index={int(index)}",
            )
    raise ValueError(f"no synthetic structure could be placed in space group {number} with {config!r}")


#: Most synthetic CIFs one call writes (the dataset's 5000 fit with room to spare).
MAX_SYNTHETIC = 100_000


def write_synthetic_cifs(folder, n: int, *, seed: int = 0, start: int = 0, overwrite: bool = False) -> list:
    """Write synthetic structures ``start … start+n-1`` of ``seed`` as ``<folder>/<id>.cif``.

    Parameters
    ----------
    folder : path-like
        Output folder (created if missing).
    n : int
        Number of structures.
    seed : int
        Seed of the family.
    start : int
        First index.
    overwrite : bool
        Replace CIFs of the same names already in ``folder`` (otherwise refused before writing).

    Returns
    -------
    list of pathlib.Path
        The files written (atomically, by :func:`lacbed_refine.io.cif.write_cif`).
    """
    from pathlib import Path

    from tqdm.auto import tqdm

    from lacbed_refine.io.cif import write_cif

    from lacbed_refine.io.files import check_writable_folder

    if not 1 <= n <= MAX_SYNTHETIC:
        raise ValueError(f"N {n!r}: write 1–{MAX_SYNTHETIC} synthetic structures at a time")
    if start < 0:
        raise ValueError(f"--start {start!r}: the first index must be >= 0")
    folder = Path(folder)
    names = [folder / f"{synthetic_id(seed, index)}.cif" for index in range(start, start + n)]
    clash = [p for p in names if p.exists()]
    if clash and not overwrite:
        raise ValueError(f"-o {folder}: holds {len(clash)} of these CIFs already (e.g. {clash[0].name}); "
                         "pass --overwrite to replace them")
    check_writable_folder(folder)
    paths = []
    for index in tqdm(range(start, start + n), unit="structure", desc="synthetic", disable=n < 50):
        path = folder / f"{synthetic_id(seed, index)}.cif"
        write_cif(random_crystal(seed, index), path)
        paths.append(path)
    return paths


def microscope_faults(stack, *, rotation_deg: float = 0.0, scale: float = 1.0, centre_px=(0.0, 0.0), shifts_px=None,
                      blur_px: float = 0.0, background: float = 0.0, counts: float | None = None, seed: int = 0,
                      size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """What a real microscope records of a simulated stack: the faults the experiment fit must undo.

    This is the inverse of the fit's microscope model
    (:mod:`lacbed_refine.refine.experiment_model`, ``sample_discs`` then ``blur_discs`` then a
    background per disc), with the same sign conventions, implemented independently (scipy, not
    torch): for no blur, background or noise the two agree to a few 1e-3 of the disc's intensity on
    a smooth image (``tests/test_experiment_truth.py``). The difference is the fit's interpolator:
    torch's bicubic is Keys' kernel with a = −0.75, which misplaces even a linear ramp by up to
    3/64 px; the cubic spline here is exact to ~1e-4 on such an image.

    Geometry. The recorded images have ``n = size or S`` pixels a side and the *same nominal pixel
    step* δ [Å⁻¹] as the simulation (so the ``felix.inp`` of the recorded experiment has
    ``convergence_angle = n/2 · δ``). Measured pixel (row, col) has the offsets
    ``(u, v) = (col, row) − (n − 1)/2`` [px] from the image centre and sees the simulated image at the
    sim-pixel coordinates (x = column, y = row)

        (x, y) = scale · R(φ) · ((u, v) − centre_px − shifts_px[i]) + (S − 1)/2,
        R(φ) = [[cos φ, −sin φ], [sin φ, cos φ]],

    i.e. at the tilt ``k = scale · δ · R(φ) · ((u, v) − c − c_i)`` of the fit's model (its stretch
    e = 0). ``centre_px`` is therefore where the zone axis falls in the recorded image (the fit's
    ``Geometry.centre`` equals ``centre_px + mean(shifts_px)``, its ``shifts`` the mean-free part of
    ``shifts_px``); ``scale`` > 1 means the true tilt per recorded pixel is larger than the nominal δ.
    The value there is interpolated by :func:`scipy.ndimage.map_coordinates` (order 3, edge values
    extended within the last half pixel). Recorded pixels that fall outside the simulated tilt square
    (x or y outside [−0.5, S − 0.5], the pixels' outer edges) are exactly 0 and not recorded.

    Then, in this order, on each disc's recorded pixels only:

    - detector blur: Gaussian of σ = ``blur_px`` [recorded px] (:func:`scipy.ndimage.gaussian_filter`,
      mirror edges), normalised over the recorded area so that unrecorded pixels contribute nothing;
    - background: ``background · m_i · (1 + ½ (cos θ_i · ū + sin θ_i · v̄))``, a constant plus a plane
      (ū, v̄ = u, v / ((n − 1)/2) ∈ [−1, 1]; ``m_i`` the disc's mean after the blur; θ_i uniform from
      ``seed``), positive everywhere;
    - Poisson noise: each pixel is ``Poisson(g_i · I) / g_i`` with the gain ``g_i = counts / M_i``
      (``M_i`` the disc's mean with its background): ``counts`` expected electrons per pixel at the
      disc's mean intensity, the result in the stack's units. None: no noise. A disc with no positive
      intensity is left without noise.

    Parameters
    ----------
    stack : array_like, shape (R, S, S)
        Simulated discs on the engine's (FELIX's) tilt grid: rows ↔ k_y, columns ↔ k_x, pixel
        centres at ``(j − (S − 1)/2) · δ``.
    rotation_deg : float
        In-plane rotation φ [°].
    scale : float
        True tilt step ÷ nominal step (the convergence half-width's error), > 0.
    centre_px : (float, float)
        Zone-axis position (u, v) in the recorded image [recorded px].
    shifts_px : array_like, shape (R, 2), optional
        Each disc's own registration (u, v) [recorded px]; default zero.
    blur_px : float
        Detector point-spread σ [recorded px], ≥ 0 (0: none).
    background : float
        Background amplitude as a fraction of each disc's mean intensity, ≥ 0.
    counts : float or None
        Expected electrons per pixel at a disc's mean intensity (> 0), or None for no noise.
    seed : int
        Seed of the background directions and of the noise.
    size : int, optional
        Recorded image edge n [px]; default S.

    Returns
    -------
    images : ndarray, shape (R, n, n), float64
        The recorded discs (0 where not recorded).
    recorded : ndarray of bool, shape (R, n, n)
        True where the pixel saw the simulated tilt square.

    Raises
    ------
    ValueError
        One line naming the argument and its value for a stack that is not (R, S, S) and finite, or
        an absurd fault.
    """
    from scipy import ndimage

    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 3 or stack.shape[1] != stack.shape[2] or stack.shape[0] < 1 or stack.shape[1] < 2:
        raise ValueError(f"stack of shape {stack.shape}: need (R, S, S) simulated discs with S >= 2")
    if not np.isfinite(stack).all():
        raise ValueError("stack: holds NaN or infinite values")
    n_discs, sim = stack.shape[0], stack.shape[1]
    n = sim if size is None else int(size)
    if n < 2:
        raise ValueError(f"size {size!r}: the recorded image needs at least 2 pixels a side")
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale {scale!r}: must be a positive factor")
    if not math.isfinite(rotation_deg):
        raise ValueError(f"rotation_deg {rotation_deg!r}: must be finite")
    centre = np.asarray(centre_px, dtype=float).reshape(-1)
    if centre.shape != (2,) or not np.isfinite(centre).all():
        raise ValueError(f"centre_px {centre_px!r}: need two finite pixel offsets (u, v)")
    shifts = np.zeros((n_discs, 2)) if shifts_px is None else np.asarray(shifts_px, dtype=float)
    if shifts.shape != (n_discs, 2) or not np.isfinite(shifts).all():
        raise ValueError(f"shifts_px of shape {shifts.shape}: need ({n_discs}, 2) finite pixel offsets (u, v)")
    if not (math.isfinite(blur_px) and blur_px >= 0):
        raise ValueError(f"blur_px {blur_px!r}: must be >= 0 px")
    if not (math.isfinite(background) and background >= 0):
        raise ValueError(f"background {background!r}: must be >= 0 (a fraction of each disc's mean)")
    if counts is not None and not (math.isfinite(counts) and counts > 0):
        raise ValueError(f"counts {counts!r}: must be a positive number of electrons per pixel, or None")

    rng = np.random.default_rng(int(seed))
    phi = math.radians(rotation_deg)
    cos, sin = math.cos(phi), math.sin(phi)
    axis = np.arange(n) - (n - 1) / 2.0
    v, u = np.meshgrid(axis, axis, indexing="ij")  # rows: v, columns: u
    half = max((n - 1) / 2.0, 0.5)
    theta = rng.uniform(0.0, 2 * math.pi, n_discs)
    images = np.zeros((n_discs, n, n))
    recorded = np.zeros((n_discs, n, n), dtype=bool)
    for i in range(n_discs):
        pu = u - centre[0] - shifts[i, 0]
        pv = v - centre[1] - shifts[i, 1]
        x = scale * (cos * pu - sin * pv) + (sim - 1) / 2.0
        y = scale * (sin * pu + cos * pv) + (sim - 1) / 2.0
        inside = (x >= -0.5) & (x <= sim - 0.5) & (y >= -0.5) & (y <= sim - 0.5)
        img = ndimage.map_coordinates(stack[i], [y, x], order=3, mode="nearest")
        img = np.where(inside, img, 0.0)
        if blur_px > 0:
            weight = ndimage.gaussian_filter(inside.astype(float), blur_px, mode="mirror")
            img = ndimage.gaussian_filter(img, blur_px, mode="mirror") / np.where(inside, weight, 1.0)
            img = np.where(inside, img, 0.0)
        if background > 0 and inside.any():
            mean = float(img[inside].mean())
            plane = 1.0 + 0.5 * (math.cos(theta[i]) * u / half + math.sin(theta[i]) * v / half)
            img = np.where(inside, img + background * mean * plane, 0.0)
        if counts is not None and inside.any():
            mean = float(img[inside].mean())
            if mean > 0:
                gain = counts / mean
                img = np.where(inside, rng.poisson(np.clip(img, 0.0, None) * gain) / gain, 0.0)
        images[i] = img
        recorded[i] = inside
    return images, recorded


# ------------------------------------------------------------------------------------------------
def _sample_a(rng: np.random.Generator, config: SyntheticConfig) -> float:
    q = np.asarray(REAL_A_QUANTILES)
    lo, hi = config.a_range
    u_lo, u_hi = np.interp([lo, hi], q, np.linspace(0.0, 1.0, len(q)), left=0.0, right=1.0)
    if u_hi <= u_lo:  # the range lies outside the real distribution: uniform in it
        return float(rng.uniform(lo, hi))
    a = float(np.interp(rng.uniform(u_lo, u_hi), np.linspace(0.0, 1.0, len(q)), q))
    return float(min(max(a, lo), hi))


def _choose(rng: np.random.Generator, names, k: int) -> list[str]:
    w = np.array([ELEMENT_WEIGHTS[e] for e in names], dtype=float)
    idx = rng.choice(len(names), size=min(k, len(names)), replace=False, p=w / w.sum())
    return [names[i] for i in idx]


def _composition(rng: np.random.Generator, config: SyntheticConfig) -> tuple[list[str], list[str]]:
    """(anions, cations): element lists; anions is empty for an intermetallic."""
    n_cat = int(rng.integers(1, 4))
    if rng.random() < config.ionic_fraction:
        anion = _choose(rng, ANIONS, 1)
        cations = _choose(rng, tuple(e for e in ELEMENT_WEIGHTS if e not in ANIONS), n_cat)
        return anion, cations
    return [], _choose(rng, _METALS, n_cat)


def _radius(element: str) -> float:
    return float(gemmi.Element(element).covalent_r)


def _min_distance(e1: str, e2: str, config: SyntheticConfig) -> float:
    d = config.distance_factor * (_radius(e1) + _radius(e2))
    if e1 in ANIONS and e2 in ANIONS:
        d = max(d, config.anion_distance)
    return max(d, config.min_distance)


def _try_crystal(rng: np.random.Generator, hall: str, config: SyntheticConfig) -> Crystal | None:
    wyckoff = wyckoff_positions(hall)
    smallest = wyckoff[0].multiplicity
    for _ in range(50):
        a = _sample_a(rng, config)
        volume = config.volume_per_atom * math.exp(config.volume_sigma * rng.standard_normal())
        target = min(a**3 / volume, config.max_atoms)
        if smallest <= 1.5 * target:
            break
    else:
        return None
    anions, cations = _composition(rng, config)
    rot, tra = symmetry_operations(hall)

    sites: list[Site] = []
    positions = np.zeros((0, 3))
    elements: list[str] = []
    n_atoms = 0
    failures = 0
    def incomplete():
        placed = set(elements)
        return bool(anions) and not (placed & set(anions) and placed & set(cations))

    while (n_atoms < target or incomplete()) and failures < 40 and len(sites) < config.max_sites:
        room = max(target - n_atoms, smallest) * 1.25
        fits = [w for w in wyckoff if w.multiplicity <= room and n_atoms + w.multiplicity <= config.max_atoms]
        if not fits:
            break
        w = fits[int(rng.integers(len(fits)))]
        n_anion = sum(1 for e in elements if e in anions)
        if incomplete():  # an ionic compound needs both an anion and a cation
            element = cations[int(rng.integers(len(cations)))] if n_anion else anions[0]
        elif anions and n_anion < 0.55 * n_atoms and rng.random() < 0.75:
            element = anions[0]
        else:
            element = cations[int(rng.integers(len(cations)))]
        placed = _place(rng, w, element, a, positions, elements, rot, tra, config)
        if placed is None:
            failures += 1
            continue
        frac, orbit_pos = placed
        k = sum(1 for s in sites if s.element == element) + 1
        b_iso = float(rng.uniform(*config.b_iso_range))
        sites.append(Site(label=f"{element}{k}", element=element, frac=tuple(float(x) for x in frac), b_iso=round(b_iso, 4)))
        positions = np.concatenate([positions, orbit_pos])
        elements += [element] * len(orbit_pos)
        n_atoms += len(orbit_pos)
    if not sites or incomplete():
        return None
    return Crystal(name="", a=round(a, 4), hall=hall, sites=tuple(sites))


def _place(rng, w, element, a, positions, elements, rot, tra, config, tries: int = 20):
    """A random point of Wyckoff position ``w`` far enough from everything, and its orbit."""
    d_self = _min_distance(element, element, config)
    if a < d_self:  # the atom would touch its own image in the next cell
        return None
    limits = np.array([_min_distance(element, e, config) for e in elements]) if elements else None
    for _ in range(tries if w.dimension else 1):
        frac = w.sample(rng.random(w.dimension))
        pos = _orbit_positions(frac, rot, tra)
        if len(pos) != w.multiplicity:
            continue  # too close to a more special position
        if len(pos) > 1:
            d = wrap_diff(pos[:, None, :] - pos[None, :, :]) * a
            dist = np.sqrt((d * d).sum(-1))
            dist[np.diag_indices(len(pos))] = np.inf
            if dist.min() < d_self:
                continue
        if limits is not None:
            d = wrap_diff(pos[:, None, :] - positions[None, :, :]) * a
            dist = np.sqrt((d * d).sum(-1))
            if (dist < limits[None, :]).any():
                continue
        return frac, pos
    return None


def _orbit_positions(frac: np.ndarray, rot: np.ndarray, tra: np.ndarray) -> np.ndarray:
    """Distinct images of ``frac`` (within the crystal module's 1e-3 tolerance), shape (M, 3)."""
    pos = np.mod(np.einsum("sij,j->si", rot, frac) + tra, 1.0)
    same = np.all(np.abs(wrap_diff(pos[:, None, :] - pos[None, :, :])) < POS_TOL, axis=-1)
    first = ~np.any(np.tril(same, k=-1), axis=1)
    return pos[first]


def _name(crystal: Crystal) -> str:
    from lacbed_refine.structure.formula import element_counts, reduced_formula

    return reduced_formula(element_counts(crystal))


def synthetic_felix_inp(n: int, step: float, *, voltage_kv: float = 200.0, zone=(0, 0, 1), x_direction=(1, 0, 0),
                        normal=None, thickness_range_A=(500.0, 900.0, 100.0), pool: int = 100, strong: int = 50):
    """The ``felix.inp`` (a :class:`~lacbed_refine.io.felix_inp.FelixInput`, port dialect, read back
    and validated) that the authors of an experiment of ``n``×``n`` px would have written: Bird–King
    absorption, Kirkland form factors, the whole reflection pool.

    Parameters
    ----------
    n : int
        Measured pixels per side. ``step`` [Å⁻¹]: the pixel step (half-width ``n/2 · step``).
    voltage_kv : float
        Accelerating voltage [kV].
    zone, x_direction, normal : (3,) ints
        The beam direction [uvw], the image x direction (h k l) and the surface normal (default: the zone).
    thickness_range_A : (first, last, step) [Å]
        The thickness scan.
    pool, strong : int
        ``min_reflection_pool`` and ``min_strong_beams``.
    """
    from lacbed_refine.io.felix_inp import parse_felix_inp

    first, last, dt = thickness_range_A
    vec = lambda v: "[" + ", ".join(str(int(c)) for c in v) + "]"  # noqa: E731
    return parse_felix_inp(f"""
        image_radius = {n // 2}
        convergence_angle = {n / 2 * step}
        accelerating_voltage_kv = {voltage_kv}
        incident_beam_direction = {vec(zone)}
        x_direction = {vec(x_direction)}
        normal = {vec(zone if normal is None else normal)}
        initial_thickness = {first}
        final_thickness = {last}
        delta_thickness = {dt}
        scatter_factor_method = 0
        absorption_method = 2
        min_reflection_pool = {pool}
        min_strong_beams = {strong}
        g_limit = 0.0
        """, source=f"synthetic {n}x{n}")


def synthetic_experiment(name: str, reflections, images: np.ndarray, recorded: np.ndarray, felix):
    """Discs made from a known truth (e.g. by :func:`microscope_faults`) as the
    :class:`~lacbed_refine.io.experiment.Experiment` a measured folder would give.

    ``name``: the chemical prefix (``"GaAs"``); ``reflections``: (h, k, l) per disc, 000 first;
    ``images`` (R, n, n) and ``recorded`` (R, n, n) bool; ``felix``: its ``FelixInput``
    (:func:`synthetic_felix_inp`, or a real run's)."""
    from pathlib import Path

    from lacbed_refine.io.experiment import Experiment

    images, recorded = np.asarray(images, dtype=np.float64), np.asarray(recorded, dtype=bool)
    return Experiment(source=Path(f"<synthetic {name}>"), name=name, reflections=tuple(tuple(h) for h in reflections),
                      images=images, recorded=recorded, files=tuple(f"<synthetic>#{i}" for i in range(len(images))),
                      felix=felix, hkl=None, unused=())
