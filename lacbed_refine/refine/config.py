"""Fit settings and their checks: :class:`FitConfig`, the mask and simulator checks.

Every value is checked where it enters (``FitConfig.__post_init__``), so the CLI, the Python API and
batch rows give the same one-line error. Thickness in the config is in nm.
"""

from __future__ import annotations
import logging
import math
from dataclasses import dataclass
import numpy as np
from lacbed_refine.conventions import NM

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Refinement options.

    Attributes
    ----------
    refine : tuple of {"xyz", "b", "occ", "thickness"}
        What to refine.
    fix : tuple of str
        Site labels held fixed.
    thickness_nm : float, optional
        Starting thickness [nm]; None scans ``thickness_scan_nm``.
    thickness_scan_nm : (start, stop, step)
        Thickness scan grid [nm].
    thickness_window_nm : float
        The refined thickness stays within ± this of its start [nm] (of each coordinate start's own
        scan, for the start that goes on).
    blur_sigma : float
        Gaussian blur of the simulation [pixels] before comparison.
    seed, surrogate, polish : bool
        Stage switches.
    forward_model, inverse_model : str, optional
        Surrogate files for the search and the seed; None uses the shipped weights (when there are
        none, the stage is skipped and says so).
    surrogate_restarts : int
        Starts of the surrogate search (the current point, then random ones).
    threads : int, optional
        Threads over the pixels in the Bloch engine's gradient evaluations; None uses every CPU
        this process may run on (a batch with several worker processes sets 1).
    thickness_starts : int
        Peaks of the thickness scan (and the given start thickness) each given ``screen_iter``
        polish iterations before the polish goes on from the best; 1 keeps only the scan's best.
    screen_iter : int
        L-BFGS-B iterations of that screening.
    coordinate_starts : int
        Engine multi-start of the coordinates: the polish's start and ``coordinate_starts − 1``
        others spread evenly (scrambled Halton) over ± ``start_spread_A`` around it, each with its
        own thickness scan and ``screen_iter`` iterations on the half-resolution grid; the best
        three get as many again and the best goes on. 1 switches it off. Only when coordinates are
        refined.
    start_spread_A : float
        Half-width [Å] of the box of coordinate starts around the polish's start.
    start_seed : int
        Seed of the random coordinate starts (the same seed, the same starts).
    start_rounds, retry_fom : int, float
        While even the best start leaves 1 − r above ``retry_fom``, another round of
        ``coordinate_starts`` starts, up to ``start_rounds`` rounds in all.
    b_restart : bool
        After the polish, restart it from one overall B for all sites (their mean), refine that,
        then each B again, and keep the better optimum (when two or more B are refined).
    device : str
        Torch device of the surrogates ("cpu", "cuda").
    check : str
        Simulator for the final check ("bloch" or a plugin name).
    max_iter : int
        L-BFGS-B iterations per polish level.
    b_scan : tuple of float
        One B [Å²] for every refined site, each with its own thickness scan, tried at the polished
        coordinates (when B and thickness are refined); a float64 polish from the best goes on when
        it fits better than the polish's answer. Empty: none.
    lm_iter : int
        Levenberg–Marquardt iterations after the polish (float64, full grid, forward-difference
        Jacobian; 0: none, the default: on the 8 hard starts of ``benchmarks/hard_starts.py`` it
        changed no outcome, 1 − r by ≤ 1e-5, at 2–63 s a fit).
    fom_noise : float
        Figure-of-merit noise level Δf for the uncertainties.
    """

    refine: tuple[str, ...] = ("xyz", "b", "occ", "thickness")
    fix: tuple[str, ...] = ()
    thickness_nm: float | None = None
    thickness_scan_nm: tuple[float, float, float] = (20.0, 400.0, 2.0)
    thickness_window_nm: float = 60.0
    blur_sigma: float = 0.0
    seed: bool = True
    surrogate: bool = True
    polish: bool = True
    forward_model: str | None = None
    inverse_model: str | None = None
    surrogate_restarts: int = 3
    b_restart: bool = True
    thickness_starts: int = 3
    screen_iter: int = 8
    coordinate_starts: int = 8
    start_spread_A: float = 0.4
    start_seed: int = 0
    start_rounds: int = 4
    retry_fom: float = 0.1
    threads: int | None = None
    device: str = "cpu"
    check: str = "bloch"
    max_iter: int = 40
    lm_iter: int = 0
    b_scan: tuple[float, ...] = (0.2, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0)
    fom_noise: float = 2e-5

    def __post_init__(self):
        check_fit_config(self)


#: Largest Gaussian blur of the simulation [pixels] that still leaves a pattern to compare.
MAX_BLUR_PX = 20.0


def _count(value, option: str, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{option} {value!r}: must be a whole number >= {low}")


def _real(value, option: str, low: float, high: float, unit: str = "") -> None:
    try:
        ok = math.isfinite(float(value)) and low <= float(value) <= high
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{option} {value!r}: must be a number in {low:g}–{high:g}{unit}")


def check_fit_config(c: "FitConfig") -> None:
    """Check refinement options before any work; raises ValueError naming the option and value."""
    from lacbed_refine.engine.geometry import MAX_THICKNESS_A
    from lacbed_refine.runtime import resolve_device

    if isinstance(c.refine, str):
        raise ValueError(f"--refine {c.refine!r}: give a tuple of kinds, e.g. ('xyz', 'b')")
    unknown = sorted(set(c.refine) - {"xyz", "b", "occ", "thickness"})
    if unknown:
        raise ValueError(f"--refine {','.join(c.refine)}: unknown kind(s) {unknown}; use any of xyz,b,occ,thickness")
    if isinstance(c.fix, str):
        raise ValueError(f"--fix {c.fix!r}: give a tuple of site labels")
    t_max = MAX_THICKNESS_A / NM
    if c.thickness_nm is not None:
        _real(c.thickness_nm, "--thickness", 1.0, t_max, " nm")
    start, stop, step = c.thickness_scan_nm
    _real(start, "thickness scan start", 0.0, t_max, " nm")
    _real(stop, "thickness scan stop", start, t_max, " nm")
    _real(step, "thickness scan step", 1e-3, max(stop - start, 1e-3), " nm")
    if (stop - start) / step > 1e5:
        raise ValueError(f"thickness scan {c.thickness_scan_nm}: more than 100000 thicknesses")
    _real(c.thickness_window_nm, "thickness window", 0.0, t_max, " nm")
    _real(c.blur_sigma, "--blur", 0.0, MAX_BLUR_PX, " pixels")
    _count(c.surrogate_restarts, "--restarts")
    _count(c.thickness_starts, "thickness starts")
    _count(c.screen_iter, "screening iterations")
    _count(c.coordinate_starts, "--starts")
    _real(c.start_spread_A, "--start-spread", 0.0, 2.0, " Å")
    _count(c.start_seed, "start seed", low=0)
    _count(c.start_rounds, "--start-rounds")
    _real(c.retry_fom, "retry figure of merit", 0.0, 2.0)
    _count(c.max_iter, "--max-iter")
    _count(c.lm_iter, "--lm-iter", low=0)
    for v in c.b_scan:
        _real(v, "--b-scan", 0.0, 20.0, " Å²")
    if c.threads is not None:
        _count(c.threads, "threads")
    _real(c.fom_noise, "figure-of-merit noise", 1e-12, 1.0)
    if not isinstance(c.check, str) or not c.check:
        raise ValueError(f"--check {c.check!r}: name a simulator (bloch, or a plugin such as felix)")
    resolve_device(c.device)


#: Fewest pixels a mask may leave: a correlation over fewer says nothing about a structure.
MIN_MASK_PIXELS = 64


def check_mask(mask: np.ndarray, pattern: np.ndarray, *, name: str = "--mask") -> np.ndarray:
    """Check a pixel mask (True = use) against its pattern: same shape, at least
    :data:`MIN_MASK_PIXELS` pixels used, and the pattern not constant over them."""
    mask = np.asarray(mask)
    if mask.shape != np.shape(pattern):
        raise ValueError(f"{name}: mask shape {mask.shape} differs from the pattern's {np.shape(pattern)}")
    mask = mask.astype(bool)
    n = int(mask.sum())
    if n < MIN_MASK_PIXELS:
        raise ValueError(f"{name}: uses {n} of {mask.size} pixels; at least {MIN_MASK_PIXELS} are needed")
    if np.ptp(np.asarray(pattern)[mask]) == 0:
        raise ValueError(f"{name}: the pattern is constant over the {n} pixels the mask uses")
    return mask


#: Beam pool used by ``fit`` unless the user sets one: the paper preset's per-pixel cut is not
#: converged (see the engine benchmarks), so refinement uses a whole pool at every pixel.
FIT_DEFAULT_BEAMS = 61


def check_simulator(name: str, *, option: str = "--check") -> None:
    """Check that simulator ``name`` is installed and ready to run (before a long refinement)."""
    from lacbed_refine.simulators.registry import PluginError, get_simulator

    if name == "bloch":
        return
    try:
        ok, why = get_simulator(name).available()
    except PluginError as exc:
        raise ValueError(f"{option} {name!r}: {exc}") from None
    if not ok:
        raise ValueError(f"{option} {name!r}: not ready ({why})")
