"""Screening: rank candidate cubic structures by how well their [001] bright-field patterns match a
pattern, over a thickness range — by the forward surrogate for every candidate, then by the Bloch
engine for the best few.

The pattern must be at the surrogate's geometry (the dataset's: 200 kV, [001] with x along [100],
tilt half-width 7.266/a Å⁻¹ — every reflection's Bragg line at the same pixels for any cubic a —,
``model.image_size`` pixels). Its orientation in the plane is not assumed: each score is the best
Pearson r over the 8 operations of the square and over the thicknesses scanned. r is blind to the
intensity scale, so a measured pattern in counts works as well as a simulated one in fractions of the
incident beam.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lacbed_refine.metrics import dihedral

log = logging.getLogger(__name__)

__all__ = ["Candidate", "IdentifyResult", "read_candidates", "surrogate_library", "score_library", "surrogate_scores",
           "engine_scores", "identify", "identify_file", "DEFAULT_THICKNESSES_NM"]

#: Thicknesses scanned by default [nm]: the surrogate's training range in 10 nm steps.
DEFAULT_THICKNESSES_NM = tuple(float(t) for t in range(50, 201, 10))


@dataclass
class Candidate:
    """One candidate structure and how well it matched (scores are filled by :func:`identify`)."""

    id: str
    path: str
    crystal: object
    surrogate_r: float = float("nan")
    surrogate_thickness_nm: float = float("nan")
    engine_r: float | None = None
    engine_thickness_nm: float | None = None

    def row(self) -> dict:
        c = self.crystal
        return {"id": self.id, "path": self.path, "formula": c.formula, "spacegroup": c.spacegroup_symbol,
                "a_angstrom": float(c.a), "surrogate_r": float(self.surrogate_r),
                "surrogate_thickness_nm": float(self.surrogate_thickness_nm), "engine_r": self.engine_r,
                "engine_thickness_nm": self.engine_thickness_nm}


@dataclass
class IdentifyResult:
    """Candidates best first (engine-confirmed ones by engine r, then the rest by surrogate r), the
    files that could not be candidates with the reason, and the time of each stage [s]."""

    ranking: list
    skipped: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)

    def report(self) -> dict:
        n = len(self.ranking)
        return {"n_candidates": n, "ranking": [c.row() for c in self.ranking],
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "seconds": self.seconds,
                "surrogate_ms_per_candidate": 1e3 * self.seconds.get("surrogate", 0.0) / max(n, 1)}


def read_candidates(folder) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """Every ``*.cif`` under ``folder`` (recursively) that reads as a cubic crystal, and the others
    with the reason (unreadable, not cubic: the [001] surrogates are cubic-only).

    Raises
    ------
    ValueError
        ``folder`` is not a folder, or holds no CIF.
    """
    from lacbed_refine.io.cif import find_cifs, read_cif
    from lacbed_refine.structure.crystal import CrystalError

    root = Path(folder)
    files = find_cifs(root, option="--candidates")
    ok, skipped = [], []
    for p in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                crystal = read_cif(p)
            crystal.require_cubic("the [001] surrogates")
        except (CrystalError, ValueError, OSError) as exc:
            skipped.append((str(p), str(exc).splitlines()[0]))
            continue
        ident = p.relative_to(root).with_suffix("").as_posix()
        ok.append(Candidate(ident, str(p), crystal))
    return ok, skipped


def _standardised(x: torch.Tensor) -> torch.Tensor:
    """Each image (last two axes) minus its mean, divided by its norm: r is then a dot product."""
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    return x / x.flatten(-2).norm(dim=-1).clamp_min(1e-30)[..., None, None]


def surrogate_library(crystals, thickness_nm, *, model, batch: int = 16, table: str = "kirkland",
                      progress=None) -> torch.Tensor:
    """Every crystal's surrogate pattern at every thickness, standardised for scoring.

    Returns
    -------
    Tensor, shape (N, T, n, n), float32
        Zero mean and unit norm per image (a Pearson r is then a dot product): keep it to score many
        patterns against the same candidates with :func:`score_library`.
    """
    from lacbed_refine.physics.potential import projected_potential

    n = model.image_size
    t = torch.as_tensor(thickness_nm, dtype=torch.float32)
    parts = []
    for b0 in range(0, len(crystals), batch):
        part = crystals[b0:b0 + batch]
        with torch.no_grad():
            rho = torch.stack([projected_potential(c.atoms(), c.a, centring=c.spacegroup_symbol[0], size=n, table=table)
                               for c in part])
            out = model(rho, t, torch.tensor([c.a for c in part]))
        parts.append(_standardised(out["normalised"].to(torch.float32)))
        if progress is not None:
            progress(len(part))
    return torch.cat(parts)


def score_library(pattern, library: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Best Pearson r of each library entry (N, T, n, n) against ``pattern`` (n, n) over the T
    thicknesses and the 8 operations of the square: (N,) r and (N,) index along T."""
    ops = _standardised(dihedral(torch.as_tensor(np.asarray(pattern), dtype=torch.float64))).to(library.dtype)
    r = torch.einsum("btij,oij->bto", library, ops)
    val, idx = r.max(dim=-1).values.max(dim=-1)
    return val.double().numpy(), idx.numpy()


def surrogate_scores(pattern, crystals, thickness_nm, *, model, batch: int = 16, table: str = "kirkland",
                     progress=None) -> tuple[np.ndarray, np.ndarray]:
    """Best r of each crystal's surrogate patterns against ``pattern`` (n, n), a batch at a time
    (memory stays small for thousands of candidates).

    Returns
    -------
    r : ndarray, shape (N,)
        Best Pearson r over ``thickness_nm`` [nm] and the 8 operations of the square.
    thickness : ndarray, shape (N,)
        The thickness [nm] of that best match.
    """
    t = np.asarray(thickness_nm, dtype=float)
    r_all, t_all = np.empty(len(crystals)), np.empty(len(crystals))
    for b0 in range(0, len(crystals), batch):
        part = crystals[b0:b0 + batch]
        lib = surrogate_library(part, thickness_nm, model=model, batch=batch, table=table)
        r, idx = score_library(pattern, lib)
        r_all[b0:b0 + len(part)], t_all[b0:b0 + len(part)] = r, t[idx]
        if progress is not None:
            progress(len(part))
    return r_all, t_all


def engine_scores(pattern, crystals, thickness_nm, *, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """As :func:`surrogate_scores`, from the Bloch engine at the dataset's settings (200 beams, all
    used at every pixel) — seconds per candidate."""
    from lacbed_refine.dataset import DATASET_BEAMS
    from lacbed_refine.simulators.bloch import settings_for, simulate_crystal

    n = np.asarray(pattern).shape[-1]
    r_all, t_all = np.empty(len(crystals)), np.empty(len(crystals))
    for i, c in enumerate(crystals):
        settings = settings_for(c, preset="paper", thickness_nm=tuple(thickness_nm), size=n, n_beams=DATASET_BEAMS)
        stack, _ = simulate_crystal(c, settings, workers=workers)
        r, idx = score_library(pattern, _standardised(torch.as_tensor(stack[:, 0], dtype=torch.float64))[None])
        r_all[i], t_all[i] = float(r[0]), float(thickness_nm[int(idx[0])])
    return r_all, t_all


def _check_options(thickness_nm, confirm) -> list[float]:
    thickness_nm = [float(t) for t in thickness_nm]
    if not thickness_nm or not all(1 <= t <= 2000 for t in thickness_nm):
        raise ValueError(f"--thickness {thickness_nm!r}: need one or more thicknesses in 1–2000 nm")
    if int(confirm) != confirm or confirm < 0:
        raise ValueError(f"--confirm {confirm!r}: must be a whole number >= 0")
    return thickness_nm


def identify(pattern, candidates: list[Candidate], *, model, thickness_nm=DEFAULT_THICKNESSES_NM, confirm: int = 5,
             workers: int = 1, progress: bool = False) -> IdentifyResult:
    """Rank ``candidates`` against ``pattern``: all by the forward surrogate, then the best
    ``confirm`` again by the Bloch engine (those lead the ranking, by engine r).

    Parameters
    ----------
    pattern : array, shape (n, n)
        The bright-field pattern at the surrogate's geometry (module docstring), n = ``model.image_size``.
    candidates : list of Candidate
        From :func:`read_candidates`.
    model : ForwardSurrogate
    thickness_nm : sequence of float
        Thicknesses scanned [nm].
    confirm : int
        How many of the surrogate's best are simulated by the engine (0: none).
    workers : int
        Engine worker processes.

    Raises
    ------
    ValueError
        A pattern of the wrong shape or with non-finite values, an empty thickness list, ``confirm`` < 0.
    """
    pattern = np.asarray(pattern, dtype=np.float64)
    n = model.image_size
    if pattern.shape != (n, n):
        raise ValueError(f"pattern: shape {pattern.shape}, this surrogate needs {n}×{n} at its own geometry")
    if not np.isfinite(pattern).all() or pattern.std() == 0:
        raise ValueError("pattern: it has NaN/infinite values or is constant")
    thickness_nm = _check_options(thickness_nm, confirm)
    if not candidates:
        raise ValueError("--candidates: no cubic candidate to rank")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(candidates), unit="candidate", desc="surrogate")
    t0 = time.perf_counter()
    try:
        r, t = surrogate_scores(pattern, [c.crystal for c in candidates], thickness_nm, model=model,
                                progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
    seconds = {"surrogate": time.perf_counter() - t0}
    for c, ri, ti in zip(candidates, r, t):
        c.surrogate_r, c.surrogate_thickness_nm = float(ri), float(ti)
    ranked = sorted(candidates, key=lambda c: -c.surrogate_r)
    top = ranked[:confirm]
    if top:
        t0 = time.perf_counter()
        re, te = engine_scores(pattern, [c.crystal for c in top], thickness_nm, workers=workers)
        for c, ri, ti in zip(top, re, te):
            c.engine_r, c.engine_thickness_nm = float(ri), float(ti)
        seconds["engine"] = time.perf_counter() - t0
        ranked = sorted(top, key=lambda c: -c.engine_r) + ranked[confirm:]
    return IdentifyResult(ranking=ranked, seconds=seconds)


def identify_file(pattern_path, candidates_dir, out, *, thickness_nm=None, confirm: int = 5, top: int = 5,
                  model=None, device: str | None = None, workers: int = 1, overwrite: bool = False,
                  progress: bool = True) -> dict:
    """``lacbed-refine identify PATTERN --candidates DIR -o OUT.json``: rank the CIFs under
    ``candidates_dir`` against the pattern file and write the ranking (``OUT.json``: every candidate
    with its surrogate r and, for the confirmed ones, engine r and best thickness; the skipped files
    with the reason; times) and a figure ``OUT.png`` (the pattern and the ``top`` best matches at
    their best thickness, r under each). Everything is checked before any work."""
    import json

    from lacbed_refine.io.files import atomic_path, check_new_output
    from lacbed_refine.io.images import read_pattern
    from lacbed_refine.runtime import check_workers, resolve_device
    from lacbed_refine.surrogate._commands import _model

    out = Path(out)
    if out.suffix.lower() != ".json":
        raise ValueError(f"-o {out}: the ranking is written as JSON; give a .json path")
    check_new_output(out, overwrite=overwrite)
    check_new_output(out.with_suffix(".png"), overwrite=overwrite)
    workers = check_workers(workers)
    thickness_nm = _check_options(DEFAULT_THICKNESSES_NM if thickness_nm is None else thickness_nm, confirm)
    if int(top) != top or top < 1:
        raise ValueError(f"--top {top!r}: must be a whole number >= 1")
    pattern = read_pattern(pattern_path)
    dev = resolve_device(device or "cpu", option="--device")
    surrogate = _model(model, "forward", dev)
    if pattern.shape != (surrogate.image_size,) * 2:
        raise ValueError(f"{pattern_path}: {pattern.shape[0]}×{pattern.shape[1]} pixels; the surrogate needs "
                         f"{surrogate.image_size}×{surrogate.image_size} at its own geometry")
    candidates, skipped = read_candidates(candidates_dir)
    for path, why in skipped:
        log.info("skipped %s: %s", path, why)
    result = identify(pattern, candidates, model=surrogate, thickness_nm=thickness_nm, confirm=confirm, workers=workers,
                      progress=progress)
    result.skipped = skipped
    rep = result.report()
    rep.update(pattern=str(pattern_path), candidates=str(candidates_dir), model=surrogate.info.get("path") or "shipped",
               thickness_nm=thickness_nm)
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(rep, indent=1))
    _figure(pattern, result.ranking[:top], surrogate, out.with_suffix(".png"))
    return rep


def _figure(pattern, best: list[Candidate], model, path: Path) -> None:
    """The pattern and the best candidates' surrogate patterns at their best thickness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lacbed_refine.io.files import atomic_path
    from lacbed_refine.physics.potential import projected_potential

    fig, axes = plt.subplots(1, len(best) + 1, figsize=(2.6 * (len(best) + 1), 3.0))
    axes = np.atleast_1d(axes)
    axes[0].imshow(pattern, cmap="gray")
    axes[0].set_title("pattern", fontsize=8)
    for ax, c in zip(axes[1:], best):
        cr = c.crystal
        with torch.no_grad():
            rho = projected_potential(cr.atoms(), cr.a, centring=cr.spacegroup_symbol[0], size=model.image_size)
            img = model(rho, [c.surrogate_thickness_nm], cr.a)["normalised"][0].numpy()
        ax.imshow(img, cmap="gray")
        eng = "" if c.engine_r is None else f"\nengine r {c.engine_r:.3f}"
        formula = cr.formula if len(cr.formula) <= 28 else cr.formula[:26] + "…"
        ax.set_title(f"{c.id}\n{formula}\n{cr.spacegroup_symbol}, r {c.surrogate_r:.3f} at "
                     f"{c.surrogate_thickness_nm:.0f} nm{eng}", fontsize=6)
    for ax in axes:
        ax.set_axis_off()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
