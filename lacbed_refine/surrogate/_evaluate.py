"""Honest evaluation of a surrogate on a dataset split: metrics, summaries, JSON and figures.

Per sample (one structure at one thickness): ℓMSE, r and R = ½ + ½ r between the min–max
normalised prediction and truth (paper Eqs. 3–4), the per-pixel error map p(i, j) (Eq. 5), and the
origin-insensitive versions — best over all circular shifts; for the inverse map also over the 8
operations of the square (:mod:`lacbed_refine.metrics`). The forward report also measures the
exact invariances of the trained model: R(G(ρ), G(ρ shifted)) for whole- and sub-pixel origin shifts
and R(G(Dρ), D G(ρ)) for the square's operations D.

Summaries (count, mean, median, quartiles, min, max) are given overall, per thickness and per space
group. ``report.json`` holds them and every sample; the figures follow the paper: ``examples.png``
(Figs. 1 and 5: input | ours | Bloch truth | difference), ``per_space_group.png`` (Fig. 4),
``thickness.png`` (Figs. 6 and 7: one structure at every thickness), ``per_thickness.png`` (Fig. 3
inset) and ``mean_error_map.png`` (where the errors sit).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from lacbed_refine.version import __version__
from lacbed_refine import metrics
from lacbed_refine.io.files import atomic_path
from lacbed_refine.surrogate._models import decode_scale, known_scale, prepare_input
from lacbed_refine.surrogate._models import generator_predict
from lacbed_refine.surrogate._predict import ForwardSurrogate, InverseSurrogate, _symmetrised, load_surrogate
from lacbed_refine.surrogate._trainer import make_loader
from lacbed_refine.surrogate._transforms import condition_vector, dihedral_apply, fourier_shift, minmax_with_range, roll_batch

__all__ = ["evaluate", "compare_reports", "summarise", "staged_folder"]

log = logging.getLogger(__name__)

_PRIMARY = ("R", "r", "lmse", "R_shift", "lmse_shift")


def summarise(values) -> dict[str, float]:
    """count, mean, median, q25, q75, min, max of a sequence of numbers. NaNs (and infinities) are
    left out of the statistics and counted in ``nan`` (present only when there are any), so a
    summary never silently averages over fewer samples than it says."""
    values = [x for x in values if x is not None]
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=float)
    dropped = {"nan": len(values) - int(v.size)} if len(values) > v.size else {}
    if v.size == 0:
        return {"count": 0, **dropped}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"count": int(v.size), "mean": float(v.mean()), "median": float(med), "q25": float(q25),
            "q75": float(q75), "min": float(v.min()), "max": float(v.max()), **dropped}


def _stat(summary: dict, key: str, stat: str = "mean") -> float:
    """``summary[key][stat]``, NaN where there is none (a field or group whose every value is NaN)."""
    return float(summary.get(key, {}).get(stat, math.nan))


@contextlib.contextmanager
def staged_folder(folder):
    """Yield an empty temporary folder beside ``folder``; when the block succeeds, move every file
    written there into ``folder`` (created if needed; same-named files are replaced), and delete
    the temporary folder in any case. A report that fails half-way (a figure, a NaN check) thus
    leaves nothing in ``folder``.

    Raises
    ------
    ValueError
        If ``folder`` exists and is not a folder, or nothing can be written there (before any work).
    """
    folder = Path(folder)
    _check_report_folder(folder)
    parent = folder.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=parent))
    try:
        yield tmp
        for src in sorted(p for p in tmp.rglob("*") if p.is_file()):
            dst = folder / src.relative_to(tmp)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_report_folder(folder: Path, option: str = "--report") -> None:
    """Refuse, without creating anything, a report folder that cannot be written."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder}: exists and is not a folder")
    probe = folder
    while not probe.exists():  # the nearest existing ancestor is where folders would be created
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {folder}: cannot write there ({probe} is not a writable folder)")


def _group_summary(samples: list[dict], key: str, fields) -> dict:
    groups: dict[str, list[dict]] = {}
    for s in samples:
        v = s[key]
        groups.setdefault(f"{v:g}" if isinstance(v, float) else str(v), []).append(s)
    return {g: {f: summarise(x[f] for x in rows) for f in fields} for g, rows in sorted(groups.items(), key=_natural)}


def _natural(item):
    k = item[0]
    try:
        return (0, float(k), "")
    except ValueError:
        return (1, 0.0, k)


@torch.no_grad()
def _eval_batch(model, batch: dict, symmetrise: bool = False) -> dict:
    """Flatten structures × thicknesses and predict; returns per-sample tensors."""
    task, dev = model.task, model.device
    pot = batch["potential"].to(dev, torch.float32)
    pot = pot if pot.dim() == 4 else pot.unsqueeze(1)
    pat = batch["pattern"].to(dev, torch.float32)
    thick = batch["thickness_nm"].to(dev, torch.float32)
    thick = thick if thick.dim() == 2 else thick.unsqueeze(1)
    b, t = pat.shape[:2]
    a = batch["a_angstrom"].to(dev, torch.float32).reshape(b).repeat_interleave(t)
    scale = batch["potential_scale"].to(dev, torch.float32).reshape(b).repeat_interleave(t)
    pot = pot.repeat_interleave(t, dim=0)
    pat = pat.reshape(b * t, 1, *pat.shape[-2:])
    pat_n, p_lo, p_hi = minmax_with_range(pat)
    values = {"thickness_nm": thick.reshape(-1), "a_angstrom": a, "potential_scale": known_scale(scale)}
    cond = condition_vector(values, task.condition_names)
    if task.direction == "forward":
        if symmetrise:
            out = _symmetrised(model, pot, cond)
        else:
            out = generator_predict(model.generator, model.arch, prepare_input(task, pot), cond)
        s = decode_scale(out["scale"], "forward")
        extra = {"lo_error": (s["lo"] - p_lo.reshape(-1)).abs(), "hi_error": (s["hi"] - p_hi.reshape(-1)).abs()}
        inp, truth = pot[:, 0], pat_n[:, 0]
    else:
        out = generator_predict(model.generator, model.arch, pat_n, cond)
        s = decode_scale(out["scale"], "inverse")
        extra = {"scale_rel_error": (s["potential_scale"] / scale - 1).abs()}
        inp, truth = pat_n[:, 0], pot[:, 0]
    return {"input": inp, "truth": truth, "pred": out["normalised"], "thickness_nm": thick.reshape(-1),
            "item": torch.arange(b, device=dev).repeat_interleave(t), **extra}


def _aligned(pred: torch.Tensor, truth: torch.Tensor, dihedral: bool) -> torch.Tensor:
    """``pred`` moved onto ``truth`` by the best circular shift (and square operation)."""
    if not dihedral:
        _, sh = metrics.best_shift_r(truth, pred)
        return roll_batch(pred.unsqueeze(1), sh)[:, 0]
    cands = metrics.dihedral(pred)
    r, sh = metrics.best_shift_r(truth.unsqueeze(0), cands)
    best = r.argmax(dim=0)
    ar = torch.arange(pred.shape[0], device=pred.device)
    return roll_batch(dihedral_apply(pred.unsqueeze(1), best), sh[best, ar])[:, 0]


@torch.no_grad()
def _invariance(model: ForwardSurrogate, dataset, n: int, seed: int, symmetrise: bool) -> dict:
    """R between predictions for a structure and for the same structure moved or rotated."""
    g = torch.Generator().manual_seed(seed)
    n = min(n, len(dataset))
    rs_int, rs_sub, rs_dih = [], [], []
    dev = model.device
    for i in range(n):
        item = dataset[i]
        pot = torch.as_tensor(item["potential"], dtype=torch.float32, device=dev).reshape(1, 1, *item["potential"].shape[-2:])
        t = float(torch.as_tensor(item["thickness_nm"]).reshape(-1)[0])
        a, s = float(item["a_angstrom"]), float(known_scale(torch.as_tensor(item["potential_scale"], dtype=torch.float32)))
        size = pot.shape[-1]

        def run(p, scale):
            return model(p[:, 0], t, a, potential_scale=scale, symmetrise=symmetrise)["normalised"][:, 0]

        base = run(pot, s)
        shift = torch.randint(1, size, (1, 2), generator=g)
        rs_int.append(float(metrics.zmcc(base, run(roll_batch(pot, shift), s))))
        moved, lo, hi = minmax_with_range(fourier_shift(pot, torch.rand(1, 2, generator=g) * size))
        rs_sub.append(float(metrics.zmcc(base, run(moved, s * float(hi - lo)))))
        op = torch.randint(1, 8, (1,), generator=g).to(dev)
        rotated = run(dihedral_apply(pot, op), s)
        rs_dih.append(float(metrics.zmcc(dihedral_apply(base.unsqueeze(1), op)[:, 0], rotated)))
    return {"structures": n, "R_integer_shift": summarise(rs_int), "R_subpixel_shift": summarise(rs_sub),
            "R_dihedral": summarise(rs_dih)}


def evaluate(model, dataset, *, report_dir=None, split: str = "", batch_size: int = 16, invariance: int = 32,
             examples: int = 3, device=None, seed: int = 0, name: str | None = None, symmetrise: bool = False,
             source: str = "all") -> dict:
    """Evaluate a surrogate on a dataset and optionally write the report folder.

    Parameters
    ----------
    model : ForwardSurrogate, InverseSurrogate, str or Path
        A loaded surrogate or a checkpoint/weights file.
    dataset : torch Dataset
        Items as in :mod:`lacbed_refine.surrogate._data`, with images of the model's size.
    report_dir : str or Path, optional
        Folder for ``report.json``, the PNG figures and ``mean_error_map.npy``; written only when
        the whole report is (nothing is left there on failure).
    split : str
        Name of the split, recorded in the report.
    source : str
        Which structures of the split ``dataset`` holds ("real", "synthetic" or "all"), recorded.
    batch_size : int
        Structures per forward pass.
    invariance : int
        Structures used for the invariance measurements (forward models; 0 skips them).
    examples : int
        Rows of ``examples.png``.
    device : str, optional
        Device to run on (default: the model's).
    seed : int
        Seed of the random shifts and operations of the invariance measurements.
    name : str, optional
        Label of the model in the report (default: the file name).
    symmetrise : bool
        Forward models: average over the square's operations (see :meth:`ForwardSurrogate.forward`).

    Returns
    -------
    report : dict
        ``summary``, ``per_thickness``, ``per_space_group``, ``invariance`` (forward), ``samples``.
        Samples whose scores are NaN (non-finite prediction or data) are counted in ``n_nan`` and
        in each summary's ``nan``, and left out of its statistics.

    Raises
    ------
    ValueError
        An unknown device, a dataset of another image size than the model's, an empty dataset, or
        scores that are NaN for every sample; one line, before any report file is written.
    """
    if report_dir is not None:
        _check_report_folder(Path(report_dir), option="report_dir")
    model, name = _loaded(model, device, name)
    report, keep, mean_error = _score(model, dataset, split=split, batch_size=batch_size, invariance=invariance,
                                      seed=seed, name=name, symmetrise=symmetrise, source=source)
    if report_dir is not None:
        with staged_folder(report_dir) as tmp:
            write_report(tmp, report, keep, mean_error, examples)
    return report


def _loaded(model, device, name):
    """The surrogate (loaded from a file when given one, moved to ``device``) and its label."""
    from lacbed_refine.runtime import resolve_device

    dev = resolve_device(device, option="device") if device is not None else None
    if isinstance(model, (str, Path)):
        name = name or Path(model).stem
        model = load_surrogate(model, device=dev or "cpu")
    elif dev is not None:
        model = model.to(dev)
    if not isinstance(model, (ForwardSurrogate, InverseSurrogate)):
        raise TypeError(f"model must be a ForwardSurrogate, InverseSurrogate or a file, got {type(model).__name__}")
    return model, name


def _score(model, dataset, *, split: str, batch_size: int, invariance: int, seed: int, name: str | None,
           symmetrise: bool, source: str):
    """The report of :func:`evaluate` without writing it: ``(report, keep, mean_error)``, where
    ``keep`` maps sample number → (input, shown prediction, truth) images for the figures and
    ``mean_error`` is the mean error map (n, n)."""
    label = name or model.info.get("path", "") or "model"
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"--batch-size {batch_size!r}: must be a whole number >= 1")
    if len(dataset) == 0:
        raise ValueError("the dataset split is empty")
    size = int(torch.as_tensor(dataset[0]["potential"]).shape[-1])
    if size != model.image_size:  # caught here, not as a shape error deep inside the network
        raise ValueError(f"{label}: the model works on {model.image_size}×{model.image_size}-pixel images, "
                         f"but the dataset's are {size}×{size}")
    inverse = model.task.direction == "inverse"
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, drop_last=False)
    samples, err_sum, keep = [], None, {}
    offset = 0
    bad_pred = bad_truth = 0
    for batch in loader:
        out = _eval_batch(model, batch, symmetrise and not inverse)
        pred, truth = out["pred"], out["truth"]
        bad_pred += int((~torch.isfinite(pred)).flatten(1).any(dim=1).sum())
        bad_truth += int((~torch.isfinite(truth)).flatten(1).any(dim=1).sum())
        r = metrics.pearson_r(pred, truth)
        r_shift, _ = metrics.best_shift_r(truth, pred)
        fields = {"r": r, "R": 0.5 + 0.5 * r, "lmse": metrics.lmse(pred, truth), "r_shift": r_shift,
                  "R_shift": 0.5 + 0.5 * r_shift, "lmse_shift": metrics.best_shift_lmse(truth, pred)}
        if inverse:
            r_dih = metrics.best_dihedral_shift_r(truth, pred)
            fields.update({"r_dihedral": r_dih, "R_dihedral": 0.5 + 0.5 * r_dih})
            shown = _aligned(pred, truth, dihedral=True)
        else:
            shown = pred
        emap = metrics.error_map(shown, truth)
        err_sum = emap.sum(0) if err_sum is None else err_sum + emap.sum(0)
        for k in ("lo_error", "hi_error", "scale_rel_error"):
            if k in out:
                fields[k] = out[k]
        names = batch.get("name", [f"#{offset + i}" for i in range(len(batch["a_angstrom"]))])
        groups = batch.get("space_group", ["unknown"] * len(names))
        for j in range(pred.shape[0]):
            item = int(out["item"][j])
            rec = {"index": offset + item, "name": str(names[item]), "space_group": str(groups[item]),
                   "thickness_nm": round(float(out["thickness_nm"][j]), 4)}
            rec.update({k: float(v[j]) for k, v in fields.items()})
            keep[len(samples)] = (out["input"][j].cpu(), shown[j].cpu(), truth[j].cpu())
            samples.append(rec)
        offset += len(names)
    n_nan = sum(not math.isfinite(s["R"]) for s in samples)
    if n_nan == len(samples):  # nothing to summarise: say why rather than write an empty report
        if bad_pred:
            why = f"the model predicts NaN or infinite values for {bad_pred} of them"
        elif bad_truth:
            why = f"the dataset holds NaN or infinite pixels in {bad_truth} of them"
        else:
            why = "the scores are undefined"
        raise ValueError(f"{label}: every score is NaN on the {len(samples)} samples{f' of split {split!r}' if split else ''} "
                         f"({why}); no report written")
    if n_nan:
        log.warning("%s: %d of %d samples score NaN (non-finite prediction or data); left out of the statistics",
                    label, n_nan, len(samples))
    fields = [k for k in samples[0] if k not in ("index", "name", "space_group", "thickness_nm")]
    report = {
        "model": {"name": name or model.info.get("path", ""), "kind": model.task.direction, "arch": model.arch,
                  "parameters": model.n_parameters(), "path": model.info.get("path"), "step": model.info.get("step")},
        "split": split,
        "source": source,
        "symmetrised": bool(symmetrise and not inverse),
        "lacbed_refine_version": __version__,
        "n_structures": offset,
        "n_samples": len(samples),
        "n_nan": n_nan,
        "summary": {f: summarise(s[f] for s in samples) for f in fields},
        "per_thickness": _group_summary(samples, "thickness_nm", fields),
        "per_space_group": _group_summary(samples, "space_group", fields),
        "samples": samples,
    }
    if not inverse and invariance > 0:
        report["invariance"] = _invariance(model, dataset, invariance, seed, symmetrise)
    mean_error = (err_sum / len(samples)).cpu().numpy()
    log.info("%s on %s: mean R %.4f, median R %.4f over %d samples", report["model"]["name"], split or "data",
             _stat(report["summary"], "R"), _stat(report["summary"], "R", "median"), len(samples))
    return report, keep, mean_error


def compare_reports(reports: dict[str, dict]) -> str:
    """Markdown table comparing evaluation reports (e.g. VAE vs cGAN on the same split)."""
    thick = sorted({t for rep in reports.values() for t in rep["per_thickness"]}, key=float)
    head = ["model", "arch", "params", "R mean", "R median", "R q25", "r mean", "ℓMSE mean", "R shift mean"]
    head += ["R dihedral mean"] * any(r["model"]["kind"] == "inverse" for r in reports.values())
    head += [f"R mean @{t} nm" for t in thick]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, rep in reports.items():
        s = rep["summary"]
        row = [label, rep["model"]["arch"], f"{rep['model']['parameters']:,}", f"{_stat(s, 'R'):.4f}",
               f"{_stat(s, 'R', 'median'):.4f}", f"{_stat(s, 'R', 'q25'):.4f}", f"{_stat(s, 'r'):.4f}",
               f"{_stat(s, 'lmse'):.3g}", f"{_stat(s, 'R_shift'):.4f}"]
        if "R dihedral mean" in head:
            row.append(f"{_stat(s, 'R_dihedral'):.4f}" if "R_dihedral" in s else "")
        row += [f"{_stat(rep['per_thickness'][t], 'R'):.4f}" if t in rep["per_thickness"] else "" for t in thick]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


# -- figures ---------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_report(folder: Path, report: dict, keep: dict, mean_error: np.ndarray, examples: int = 3) -> None:
    """Write ``report.json``, ``mean_error_map.npy`` and the figures into ``folder`` (see the
    module docstring); ``keep`` and ``mean_error`` as returned with the report by :func:`_score`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=1))
    with atomic_path(folder / "mean_error_map.npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, mean_error.astype(np.float32))
    inverse = report["model"]["kind"] == "inverse"
    _fig_examples(folder / "examples.png", report, keep, examples, inverse)
    _fig_thickness(folder / "thickness.png", report, keep, inverse)
    _fig_groups(folder / "per_space_group.png", report)
    _fig_per_thickness(folder / "per_thickness.png", report)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4, 3.6))
    im = ax.imshow(mean_error, cmap="magma")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("mean p(i, j) over the split", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    _save(fig, folder / "mean_error_map.png")


def _pick(samples: list[dict], k: int) -> list[int]:
    """Samples closest to the mean R, the median R, then the worst, best, … (the paper's choice)."""
    rs = np.array([s["R"] for s in samples], dtype=float)
    rs = np.where(np.isfinite(rs), rs, np.nan)  # NaN samples are never picked as typical
    order = []
    for target in (np.nanmean(rs), np.nanmedian(rs)):
        order.append(int(np.nanargmin(np.abs(rs - target))))
    order += [int(np.nanargmin(rs)), int(np.nanargmax(rs))]
    seen = []
    for i in order + list(range(len(samples))):
        if i not in seen:
            seen.append(i)
    return seen[:k]


def _fig_examples(path, report, keep, k, inverse):
    plt = _plt()
    samples = report["samples"]
    rows = _pick(samples, max(1, k))
    truth_label = "truth ρ" if inverse else "Bloch truth"
    cols = ["input (pattern)" if inverse else "input ρ", "ours", truth_label, "difference p(i, j)"]
    fig, axes = plt.subplots(len(rows), 4, figsize=(9, 2.3 * len(rows) + 0.3), squeeze=False)
    for r, i in enumerate(rows):
        inp, pred, truth = keep[i]
        s = samples[i]
        for c, (img, cmap) in enumerate(((inp, "gray"), (pred, "gray"), (truth, "gray"), ((pred - truth) ** 2, "magma"))):
            ax = axes[r, c]
            ax.imshow(img.numpy(), cmap=cmap, vmin=0 if c < 3 else None, vmax=1 if c < 3 else None)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        tag = "R (aligned)" if inverse else "R"
        axes[r, 0].set_ylabel(f"{s['name']} {s['space_group']}\nt = {s['thickness_nm']:g} nm, {tag} = "
                              f"{s['R_dihedral'] if inverse else s['R']:.4f}", fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def _fig_thickness(path, report, keep, inverse):
    plt = _plt()
    samples = report["samples"]
    rs = np.array([s["R"] for s in samples], dtype=float)
    rs = np.where(np.isfinite(rs), rs, np.nan)
    centre = samples[int(np.nanargmin(np.abs(rs - np.nanmean(rs))))]["index"]
    idx = [i for i, s in enumerate(samples) if s["index"] == centre]
    fig, axes = plt.subplots(3, len(idx), figsize=(2.3 * len(idx) + 0.6, 7.2), squeeze=False)
    labels = ["truth ρ" if inverse else "Bloch truth", "ours", "p(i, j)"]
    for c, i in enumerate(idx):
        _, pred, truth = keep[i]
        s = samples[i]
        for r, (img, cmap) in enumerate(((truth, "gray"), (pred, "gray"), ((pred - truth) ** 2, "magma"))):
            ax = axes[r, c]
            ax.imshow(img.numpy(), cmap=cmap)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(labels[r], fontsize=9)
        axes[0, c].set_title(f"t = {s['thickness_nm']:g} nm\nR = {s['R_dihedral'] if inverse else s['R']:.4f}", fontsize=9)
    s0 = samples[idx[0]]
    fig.suptitle(f"{s0['name']} ({s0['space_group']}), near the mean R", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def _fig_groups(path, report):
    plt = _plt()
    groups = report["per_space_group"]
    rows: dict[str, list[dict]] = {}
    for s in report["samples"]:
        rows.setdefault(s["space_group"], []).append(s)
    # a group whose every score is NaN has no mean: it goes last, in grey
    names = sorted(groups, key=lambda g: (math.isnan(_stat(groups[g], "R")), _stat(groups[g], "R")))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, 0.35 * len(names) + 2), 6.5), sharex=True)
    means = np.array([_stat(groups[g], "R") for g in names])
    cmap = plt.get_cmap("viridis")
    lo, hi = float(np.nanmin(means)), float(np.nanmax(means))
    colours = [(0.6, 0.6, 0.6, 1.0) if math.isnan(m) else cmap(0.5 if hi == lo else (m - lo) / (hi - lo)) for m in means]
    x = np.arange(len(names))
    ax1.bar(x, [groups[g]["R"]["count"] for g in names], color=colours)
    ax1.set_ylabel("samples")
    ax1.set_title(f"(a) samples per space group, coloured by mean R ({lo:.3f} … {hi:.3f})", fontsize=9)
    data = [[s["lmse"] for s in rows[g] if math.isfinite(s["lmse"])] for g in names]
    ax2.boxplot(data, positions=x, showmeans=True, meanline=True, flierprops={"marker": "x", "markersize": 3},
                meanprops={"color": "red"}, medianprops={"color": "black"})
    ax2.axhline(_stat(report["summary"], "lmse"), ls="--", color="grey", lw=0.8)
    ax2.set_ylabel("ℓMSE")
    ax2.set_title("(b) ℓMSE per space group (red: mean, black: median; dashed: overall mean)", fontsize=9)
    ax2.set_xticks(x)
    ax2.set_xticklabels(names, rotation=90, fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _fig_per_thickness(path, report):
    plt = _plt()
    groups: dict[str, list[dict]] = {}
    for s in report["samples"]:
        groups.setdefault(f"{s['thickness_nm']:g}", []).append(s)
    keys = sorted(groups, key=float)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, field in zip(axes, ("R", "lmse")):
        ax.boxplot([[s[field] for s in groups[k] if math.isfinite(s[field])] for k in keys], showmeans=True, meanline=True,
                   meanprops={"color": "red"}, medianprops={"color": "black"}, flierprops={"marker": "x", "markersize": 3})
        ax.set_xticks(range(1, len(keys) + 1))
        ax.set_xticklabels(keys)
        ax.set_xlabel("thickness [nm]")
        ax.set_ylabel("R" if field == "R" else "ℓMSE")
    fig.suptitle(f"{report['model']['name']} ({report['model']['kind']} {report['model']['arch']}), split {report['split'] or '-'}"
                 f"{'' if report.get('source', 'all') == 'all' else ' (' + report['source'] + ')'}", fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def plot_history(history: list[dict], path) -> Path | None:
    """Learning curves of a training history (a checkpoint's ``history``): the training figure of
    merit 1 − r (or, for a VAE, its total loss) against training time, and the validation R of each
    epoch on a second axis. Returns the PNG's path, or None when the history is empty."""
    steps = [h for h in history if "time_s" in h]
    val = [h for h in history if "val_R" in h]
    if not steps:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    key = "1-r" if "1-r" in steps[0] else next(k for k in steps[0] if k not in ("step", "epoch", "time_s"))
    hours = np.array([h["time_s"] for h in steps]) / 3600
    ax.plot(hours, [h[key] for h in steps], lw=0.8, color="tab:blue", label=f"train {key}")
    ax.set_xlabel("training time [h]")
    ax.set_ylabel(f"train {key}", color="tab:blue")
    if val:
        # validation entries carry the step, not the time: place them at the time of that step
        step_t = {h["step"]: h["time_s"] for h in steps}
        known = sorted(step_t)
        xs = [step_t[min(known, key=lambda s, v=v: abs(s - v["step"]))] / 3600 for v in val]
        ax2 = ax.twinx()
        ax2.plot(xs, [v["val_R"] for v in val], "o-", color="tab:red", ms=3, label="validation R")
        ax2.set_ylabel("validation R", color="tab:red")
    ax.set_title(f"learning curves ({steps[-1]['step']} steps, {steps[-1].get('epoch', 0):.1f} epochs)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    _save(fig, path)
    return path
