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

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from .. import __version__, metrics
from ..patterns import atomic_path
from ._models import decode_scale, known_scale, prepare_input
from ._predict import ForwardSurrogate, InverseSurrogate, _symmetrised, generator_predict, load_surrogate
from ._trainer import make_loader
from ._transforms import (
    condition_vector,
    dihedral_apply,
    fourier_shift,
    minmax_with_range,
    roll_batch,
)

__all__ = ["evaluate", "compare_reports", "summarise"]

log = logging.getLogger(__name__)

_PRIMARY = ("R", "r", "lmse", "R_shift", "lmse_shift")


def summarise(values) -> dict[str, float]:
    """count, mean, median, q25, q75, min, max of a sequence of numbers (NaNs dropped)."""
    v = np.asarray([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if v.size == 0:
        return {"count": 0}
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return {"count": int(v.size), "mean": float(v.mean()), "median": float(med), "q25": float(q25),
            "q75": float(q75), "min": float(v.min()), "max": float(v.max())}


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
        Items as in :mod:`lacbed_refine.surrogate._data`.
    report_dir : str or Path, optional
        Folder for ``report.json``, the PNG figures and ``mean_error_map.npy``.
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
    """
    if isinstance(model, (str, Path)):
        name = name or Path(model).stem
        model = load_surrogate(model, device=device or "cpu")
    elif device is not None:
        model = model.to(device)
    if not isinstance(model, (ForwardSurrogate, InverseSurrogate)):
        raise TypeError(f"model must be a ForwardSurrogate, InverseSurrogate or a file, got {type(model).__name__}")
    if len(dataset) == 0:
        raise ValueError("the dataset split is empty")
    inverse = model.task.direction == "inverse"
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, drop_last=False)
    samples, err_sum, keep = [], None, {}
    offset = 0
    for batch in loader:
        out = _eval_batch(model, batch, symmetrise and not inverse)
        pred, truth = out["pred"], out["truth"]
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
        "summary": {f: summarise(s[f] for s in samples) for f in fields},
        "per_thickness": _group_summary(samples, "thickness_nm", fields),
        "per_space_group": _group_summary(samples, "space_group", fields),
        "samples": samples,
    }
    if not inverse and invariance > 0:
        report["invariance"] = _invariance(model, dataset, invariance, seed, symmetrise)
    mean_error = (err_sum / len(samples)).cpu().numpy()
    if report_dir is not None:
        _write_report(Path(report_dir), report, keep, mean_error, examples)
    log.info("%s on %s: mean R %.4f, median R %.4f over %d samples", report["model"]["name"], split or "data",
             report["summary"]["R"]["mean"], report["summary"]["R"]["median"], len(samples))
    return report


def compare_reports(reports: dict[str, dict]) -> str:
    """Markdown table comparing evaluation reports (e.g. VAE vs cGAN on the same split)."""
    thick = sorted({t for rep in reports.values() for t in rep["per_thickness"]}, key=float)
    head = ["model", "arch", "params", "R mean", "R median", "R q25", "r mean", "ℓMSE mean", "R shift mean"]
    head += ["R dihedral mean"] * any(r["model"]["kind"] == "inverse" for r in reports.values())
    head += [f"R mean @{t} nm" for t in thick]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, rep in reports.items():
        s = rep["summary"]
        row = [label, rep["model"]["arch"], f"{rep['model']['parameters']:,}", f"{s['R']['mean']:.4f}",
               f"{s['R']['median']:.4f}", f"{s['R']['q25']:.4f}", f"{s['r']['mean']:.4f}", f"{s['lmse']['mean']:.3g}",
               f"{s['R_shift']['mean']:.4f}"]
        if "R dihedral mean" in head:
            row.append(f"{s['R_dihedral']['mean']:.4f}" if "R_dihedral" in s else "")
        row += [f"{rep['per_thickness'][t]['R']['mean']:.4f}" if t in rep["per_thickness"] else "" for t in thick]
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


def _write_report(folder: Path, report: dict, keep: dict, mean_error: np.ndarray, examples: int) -> None:
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
    rs = np.array([s["R"] for s in samples])
    order = []
    for target in (rs.mean(), np.median(rs)):
        order.append(int(np.abs(rs - target).argmin()))
    order += [int(rs.argmin()), int(rs.argmax())]
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
    rs = np.array([s["R"] for s in samples])
    centre = samples[int(np.abs(rs - rs.mean()).argmin())]["index"]
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
    names = sorted(groups, key=lambda g: groups[g]["R"]["mean"])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(6, 0.35 * len(names) + 2), 6.5), sharex=True)
    means = np.array([groups[g]["R"]["mean"] for g in names])
    cmap = plt.get_cmap("viridis")
    lo, hi = float(means.min()), float(means.max())
    colours = [cmap(0.5 if hi == lo else (m - lo) / (hi - lo)) for m in means]
    x = np.arange(len(names))
    ax1.bar(x, [groups[g]["R"]["count"] for g in names], color=colours)
    ax1.set_ylabel("samples")
    ax1.set_title(f"(a) samples per space group, coloured by mean R ({lo:.3f} … {hi:.3f})", fontsize=9)
    data = [[s["lmse"] for s in rows[g]] for g in names]
    ax2.boxplot(data, positions=x, showmeans=True, meanline=True, flierprops={"marker": "x", "markersize": 3},
                meanprops={"color": "red"}, medianprops={"color": "black"})
    ax2.axhline(report["summary"]["lmse"]["mean"], ls="--", color="grey", lw=0.8)
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
        ax.boxplot([[s[field] for s in groups[k]] for k in keys], showmeans=True, meanline=True,
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
