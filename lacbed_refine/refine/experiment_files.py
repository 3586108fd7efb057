"""Fit a measured experiment from files (``lacbed-refine fit CIF EXPERIMENT/``) and write what the fit
produced: ``refined.cif``, ``report.json``, ``montage.png`` (measured | simulated | difference per
disc), ``correlation.png``, ``fit.npz`` and, on request, a FELIX refinement set for the same
experiment.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from lacbed_refine.conventions import NM
from lacbed_refine.io.files import atomic_path
from lacbed_refine.refine.experiment_fit import ExperimentFit, ExperimentFitConfig, check_experiment_config, fit_experiment
from lacbed_refine.version import __version__

log = logging.getLogger(__name__)

__all__ = ["is_experiment", "fit_experiment_files", "write_experiment_fit", "experiment_report", "OUTPUTS"]

#: The files a fit writes (``felix/`` only with ``felix_seed``).
OUTPUTS = ("refined.cif", "report.json", "montage.png", "correlation.png", "fit.npz")


def is_experiment(path) -> bool:
    """Whether ``path`` is an experiment (a folder, a labelled ``.npz``/``.h5`` stack or a multi-page
    TIFF) rather than one pattern image."""
    p = Path(path)
    if p.is_dir():
        return True
    suffix = p.suffix.lower()
    if suffix in (".npz", ".h5", ".hdf5"):
        return True
    if suffix in (".tif", ".tiff") and p.is_file():
        import tifffile

        try:
            with tifffile.TiffFile(p) as tif:
                return len(tif.pages) > 1
        except Exception:  # not readable as TIFF: the one-pattern reader reports it
            return False
    return False


def _override(inp, *, kv=None, zone=None, x_direction=None, normal=None, half_width=None):
    """felix.inp's values with the CLI's choices over them (each checked where it enters)."""
    changes = {}
    if kv is not None:
        if not (1 <= kv <= 3000):
            raise ValueError(f"--kv {kv!r}: must lie in 1–3000 kV")
        changes["voltage"] = float(kv) * 1e3
    for option, attr, v in (("--zone", "beam_direction", zone), ("--x-direction", "x_direction", x_direction),
                            ("--normal", "normal_direction", normal)):
        if v is not None:
            v = tuple(int(i) for i in v)
            if len(v) != 3 or not any(v):
                raise ValueError(f"{option} {','.join(map(str, v))}: need three integers, not all zero")
            changes[attr] = v
    if half_width is not None:
        if not (0 < half_width <= 10):
            raise ValueError(f"--half-width {half_width!r}: must lie in (0, 10] 1/Å")
        changes["half_width"] = float(half_width)
    return replace(inp, **changes) if changes else inp


def fit_experiment_files(cif, experiment_path, out_dir, *, config: ExperimentFitConfig = ExperimentFitConfig(),
                         discs="hkl", kv=None, zone=None, x_direction=None, normal=None, half_width=None,
                         overwrite: bool = False, felix_seed: bool = False, progress=None) -> tuple[ExperimentFit, dict]:
    """Read a CIF and an experiment (folder or labelled stack), fit, write the outputs into ``out_dir``.

    Every input and option is checked before the work starts; an existing result in ``out_dir`` is
    replaced only with ``overwrite``. ``discs``: "hkl", "all" or a list of (h, k, l)
    (:func:`lacbed_refine.io.experiment.read_experiment`). ``kv`` [kV], ``zone``, ``x_direction``,
    ``normal`` and ``half_width`` [Å⁻¹] override ``felix.inp``. Returns the fit and the written paths.
    """
    from lacbed_refine.io.cif import read_cif
    from lacbed_refine.io.experiment import read_experiment
    from lacbed_refine.io.files import check_writable_folder

    out = Path(out_dir)
    existing = [n for n in OUTPUTS if (out / n).exists()] + (["felix/"] if felix_seed and (out / "felix").exists() else [])
    if existing and not overwrite:
        raise ValueError(f"-o {out}: holds a result already ({', '.join(existing)}); pass --overwrite to replace it")
    check_experiment_config(config)
    crystal = read_cif(cif)
    experiment = read_experiment(experiment_path, discs=discs)
    if experiment.felix is None:
        raise ValueError(f"{experiment_path}: no felix.inp, so the zone axis, x direction, half-width and voltage "
                         "are unknown; put the experiment's felix.inp beside the images")
    experiment = replace(experiment, felix=_override(experiment.felix, kv=kv, zone=zone, x_direction=x_direction,
                                                     normal=normal, half_width=half_width))
    created = not out.exists()
    check_writable_folder(out, option="-o")
    try:
        result = fit_experiment(crystal, experiment, config, progress=progress)
    except BaseException:
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    result.extra["inputs"] = {"cif": str(cif), "experiment": str(experiment_path),
                              "files": list(experiment.files), "unused": list(experiment.unused)}
    paths = write_experiment_fit(result, out)
    if felix_seed:
        paths["felix"] = write_felix_set(result, experiment, out / "felix", overwrite=overwrite)
    return result, paths


def _label(h) -> str:
    return "".join(f"{int(i):+d}" for i in h)


def experiment_report(result: ExperimentFit) -> dict:
    """The JSON report: figure of merit, per-disc r, every parameter (structure, thickness and the
    experiment model) with start, refined and σ, the correlation matrix, beams, stages, settings."""
    g, gs = result.geometry, result.geometry_sigma
    params = [{"name": n, "kind": k, "start": a, "refined": b, "sigma": s}
              for n, k, a, b, s in zip(result.names, result.kinds, result.start, result.refined, result.sigma)]
    params += [{k: t[k] for k in ("name", "kind", "start", "refined", "sigma", "rule")}
               for t in result.extra.get("tied", [])]
    params += [
        {"name": "rotation_deg", "kind": "geometry", "start": 0.0, "refined": g.rotation_deg, "sigma": gs["rotation_deg"]},
        {"name": "scale", "kind": "geometry", "start": 1.0, "refined": g.scale, "sigma": gs["scale"]},
        {"name": "stretch", "kind": "geometry", "start": 0.0, "refined": g.stretch,
         "sigma": None if not result.config.stretch else float("nan")},
        {"name": "blur_px", "kind": "geometry", "start": result.extra.get("blur_start_px"), "refined": g.blur_px,
         "sigma": gs["blur_px"]},
        {"name": "zone_axis_u_px", "kind": "geometry", "start": 0.0, "refined": float(g.centre[0]), "sigma": gs["centre_px"][0]},
        {"name": "zone_axis_v_px", "kind": "geometry", "start": 0.0, "refined": float(g.centre[1]), "sigma": gs["centre_px"][1]},
    ]
    discs = [{"hkl": list(h), "r": float(r), "r_no_background": float(r0), "shift_px": [float(v) for v in s],
              "shift_sigma_px": [float(v) for v in ss], "recorded_fraction": float(rec.mean())}
             for h, r, r0, s, ss, rec in zip(result.reflections, result.disc_r, result.disc_r_plain, g.shifts,
                                             gs["shifts_px"], result.recorded)]
    corr_names = list(result.names) + ["rotation_deg", "scale", "blur_px", "zone_axis_u_px", "zone_axis_v_px"]
    s = result.settings
    return {
        "fom": float(result.fom),
        "fom_definition": "weighted mean over discs of 1 − r, r the Pearson correlation over each disc's recorded "
                          f"pixels after a background polynomial of order {result.config.background_order} is "
                          "projected out of both",
        "fom_no_background": float(np.mean(1 - result.disc_r_plain)),
        "disc_r": {"worst": float(result.disc_r.min()), "median": float(np.median(result.disc_r)),
                   "mean": float(result.disc_r.mean())},
        "thickness_nm": result.thickness_nm,
        "parameters": params,
        "correlation": {"names": corr_names, "matrix": np.round(result.correlation, 4).tolist()},
        "sigma_definition": "from the Hessian of Σ_discs N_pixels (1 − r), σ² = 2 F*/(N − P) × the area "
                            "[px²] the residuals' autocorrelation spans (residual_correlation; independent "
                            "pixels would give σ / √area)",
        "residual_correlation": result.extra.get("residual_correlation"),
        "discs": discs,
        "orientation": {"name": result.orientation, "meaning": "the measured images laid on the engine's axes "
                        "(rows k_y, columns k_x) by this transform", "table": result.extra.get("orientation_table")},
        "crystal_tilt_mrad": list(result.extra.get("crystal_tilt_mrad", ())),
        "beams": result.beams,
        "stages": [asdict(st) for st in result.stages],
        "seconds": result.extra.get("seconds"),
        "engine": {"calls": result.extra.get("engine_calls"), "seconds": result.extra.get("engine_seconds")},
        "settings": {"voltage_kV": s.voltage / 1e3, "zone": list(s.zone), "x_direction": list(s.x_direction or ()),
                     "normal": list(s.normal or s.zone), "half_width_inv_A": s.half_width,
                     "simulated_pixels": s.size, "measured_pixels": result.extra.get("measured_pixels"),
                     "measured_step_inv_A": result.extra.get("step_inv_A"), "bin": result.extra.get("bin"),
                     "pool": result.beams.get("pool"), "strong_beams": result.beams.get("strong_beams"),
                     "absorption_model": s.absorption_kind, "form_factors": s.form_factors},
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(result.config).items()
                   if k != "weights"},
        "inputs": result.extra.get("inputs"),
        "versions": _versions(),
    }


def _versions() -> dict:
    import gemmi
    import scipy
    import torch

    return {"lacbed_refine": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "gemmi": gemmi.__version__}


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return _json_safe(value.tolist())
    return value


def write_experiment_fit(result: ExperimentFit, out_dir) -> dict[str, Path]:
    """Write the outputs (:data:`OUTPUTS`) into ``out_dir``, each atomically."""
    from lacbed_refine.io.cif import write_cif

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name.split(".")[0]: out / name for name in OUTPUTS}
    unc = {}
    for name, kind, sig in zip(result.names, result.kinds, result.sigma):
        if math.isfinite(sig) and kind in ("b", "occ"):
            label = name.rsplit(".", 1)[0]
            unc[(label, "b_iso" if kind == "b" else "occupancy")] = sig
    write_cif(result.crystal, paths["refined"], uncertainties=unc)
    with atomic_path(paths["report"]) as tmp:
        tmp.write_text(json.dumps(_json_safe(experiment_report(result)), indent=2, allow_nan=False))
    _montage(result, paths["montage"])
    _correlation_figure(result, paths["correlation"])
    with atomic_path(paths["fit"]) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, measured=result.measured.astype(np.float32),
                                simulated=result.simulated.astype(np.float32), recorded=result.recorded,
                                hkl=np.array(result.reflections, dtype=np.int64), r=result.disc_r)
    return paths


def _montage(result: ExperimentFit, path: Path, per_row: int = 4) -> None:
    """measured | simulated | difference for every disc (background removed, each normalised over its
    recorded pixels; unrecorded pixels hatched grey), r under each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    R = len(result.reflections)
    rows = math.ceil(R / per_row)
    fig, axes = plt.subplots(rows, 3 * per_row, figsize=(1.35 * 3 * per_row, 1.8 * rows + 0.6), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, h in enumerate(result.reflections):
        rec = result.recorded[i]
        meas = _normalise(result.measured[i], rec)
        sim = _normalise(result.simulated[i], rec)
        diff = np.where(rec, sim - meas, np.nan)
        row, col = divmod(i, per_row)
        for j, (img, cmap) in enumerate(((meas, "gray"), (sim, "gray"), (diff, "RdBu_r"))):
            ax = axes[row, 3 * col + j]
            cm = plt.get_cmap(cmap).with_extremes(bad="#c8a0a0")  # unrecorded pixels (masked)
            lim = 3.0
            ax.imshow(np.ma.masked_invalid(img), cmap=cm, vmin=-lim, vmax=lim, interpolation="nearest")
            ax.set_title(("meas " if j == 0 else "sim " if j == 1 else "diff ") + (_label(h) if j == 0 else ""),
                         fontsize=6, pad=1)
            if j == 1:
                ax.text(0.5, -0.08, f"r = {result.disc_r[i]:.3f}", transform=ax.transAxes, ha="center", va="top",
                        fontsize=6)
    fig.suptitle(f"{result.crystal.name}: fom {result.fom:.4f}, t = {result.thickness_nm:.1f} nm, {R} discs "
                 "(pink: not recorded, masked)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97), h_pad=0.8, w_pad=0.1)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)


def _normalise(img, rec):
    img = np.asarray(img, dtype=float)
    v = img[rec]
    if v.size < 2 or v.std() == 0:
        return np.where(rec, 0.0, np.nan)
    return np.where(rec, (img - v.mean()) / v.std(), np.nan)


def _correlation_figure(result: ExperimentFit, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.names) + ["rotation", "scale", "blur", "axis u", "axis v"]
    c = np.asarray(result.correlation)
    n = len(names)
    fig, ax = plt.subplots(figsize=(0.45 * n + 2.5, 0.45 * n + 1.5))
    im = ax.imshow(c, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    for i in range(n):
        for j in range(n):
            if math.isfinite(c[i, j]):
                ax.text(j, i, f"{c[i, j]:.2f}", ha="center", va="center", fontsize=5)
    fig.colorbar(im, ax=ax, shrink=0.7, label="correlation")
    ax.set_title(f"{result.crystal.name}: correlation of the refined values", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def write_felix_set(result: ExperimentFit, experiment, out_dir, *, overwrite: bool = False) -> Path:
    """A FELIX refinement set for the same experiment, seeded from the fit: ``felix.cif`` (refined),
    ``felix.inp`` (the experiment's, in its own dialect, with the refined thickness, blur, half-width,
    beams and refinement of B), ``felix.hkl`` and the measured images, byte for byte."""
    from lacbed_refine.io.cif import write_cif
    from lacbed_refine.io.felix_inp import write_felix_inp

    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ValueError(f"{out}: exists and is not empty; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    inp = experiment.felix
    t = result.thickness_nm * NM
    step = max(inp.thickness_delta, 1.0)
    seeded = replace(inp, thickness_initial=round(t - 2 * step), thickness_final=round(t + 2 * step),
                     half_width=inp.half_width * result.geometry.scale, blur_radius=round(result.geometry.blur_px, 3),
                     min_strong_beams=int(result.beams["strong_beams"]),
                     min_reflection_pool=int(result.beams["pool"]))
    write_felix_inp(seeded, out / "felix.inp", dialect=inp.dialect,
                    title=f"seeded by lacbed-refine {__version__} (fom {result.fom:.4f})")
    write_cif(result.crystal, out / "felix.cif")
    hkl = [h for h in result.reflections if any(h)]
    with atomic_path(out / "felix.hkl") as tmp:
        tmp.write_text("".join(f"[{h[0]}, {h[1]}, {h[2]}]\n" for h in hkl))
    src = Path(experiment.source)
    for f in experiment.files:
        if "#" in f:
            continue  # a page of a stack file: FELIX reads one image per disc
        target = out / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / f, target)
    return out
