"""Shipping trained weights: the inference-only weights file of a checkpoint, its model card, and the
score of a model on a small sample file recorded in that card."""

from __future__ import annotations

import datetime
import json
from pathlib import Path


from lacbed_refine.version import __version__
from lacbed_refine.io.files import atomic_path
from lacbed_refine.surrogate._evaluate import evaluate
from lacbed_refine.surrogate._predict import _generator_state
from lacbed_refine.surrogate._trainer import load_checkpoint, save_checkpoint

__all__ = ["export_weights", "score_sample"]


def _data_record(data: dict) -> dict:
    """The training data's record, with the dataset's content hash added when the checkpoint
    predates it and the file is still where training read it."""
    if "content_hash" not in data and data.get("path") and Path(data["path"]).is_file():
        from lacbed_refine.dataset import read_info

        data = {**data, "content_hash": read_info(data["path"]).get("content_hash")}
    return data


def export_weights(checkpoint, out, *, report=None, half: bool = False, extra: dict | None = None, sample=None) -> dict:
    """Write the inference-only weights of a training checkpoint and its card.

    The weights file keeps the EMA generator only (a few MB) in the checkpoint format, so
    :func:`load_surrogate` reads it; the card ``<out stem>.card.json`` records the data (file,
    SHA-256, split sizes), the command, the wall time and steps, the parameter count and, from an
    evaluation ``report`` (``report.json`` of :func:`evaluate`), the test metrics.

    Parameters
    ----------
    checkpoint : str or Path
        Training checkpoint.
    out : str or Path
        Weights file to write (e.g. ``lacbed_refine/surrogate/weights/forward.pt``).
    report : str or Path, optional
        Evaluation report JSON whose summary goes into the card.
    half : bool
        Store the weights as float16 (half the size; loaded back as float32).
    extra : dict, optional
        More card fields.
    sample : str or Path, optional
        A small dataset file (``lacbed-refine dataset subset``) on which the *exported* weights are
        scored; the card records its hash and the scores, so a test can check that the shipped
        file reproduces them.

    Returns
    -------
    card : dict
    """
    state = load_checkpoint(checkpoint)
    weights = _generator_state(state, ema=True, source=str(checkpoint))
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    meta = dict(state.get("metadata", {}))
    card = {
        "name": Path(out).stem,
        "kind": state["kind"],
        "arch": state["arch"],
        "lacbed_refine_version": __version__,
        "parameters": int(sum(v.numel() for v in weights.values() if v.is_floating_point())),
        "dtype": "float16" if half else "float32",
        "data": _data_record(meta.get("data", {})),
        "command": meta.get("command", ""),
        "training": {"steps": state.get("step"), "wall_time_s": state.get("wall_time_s"),
                     "config": state["config"].get("train", {}), "device": meta.get("device", ""),
                     "threads": meta.get("threads")},
        "metrics": {},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if report is not None:
        rep = json.loads(Path(report).read_text())
        card["metrics"] = {"split": rep.get("split"), "source": rep.get("source", "all"), "summary": rep.get("summary"),
                           "per_thickness": rep.get("per_thickness"), "invariance": rep.get("invariance")}
    card.update(extra or {})
    slim = {k: state[k] for k in ("format", "format_version", "kind", "arch", "config", "step", "wall_time_s")}
    slim.update({"version": __version__, "model": None, "ema": weights, "optim": None, "history": [],
                 "metadata": meta, "card": card})
    out = Path(out)
    save_checkpoint(out, slim)
    card["size_bytes"] = out.stat().st_size
    if sample is not None:
        card["sample"] = score_sample(out, sample)
    with atomic_path(out.with_suffix(".card.json")) as tmp:
        tmp.write_text(json.dumps(card, indent=2))
    return card


def score_sample(model, sample) -> dict:
    """Mean and median R (origin-insensitive for the inverse) of ``model`` on every pattern of the
    small dataset file ``sample``, with the file's name and content hash."""
    from lacbed_refine.dataset import LacbedDataset, read_info

    rep = evaluate(model, LacbedDataset(sample), split="all", invariance=0)
    key = "R_shift" if rep["model"]["kind"] == "inverse" else "R"
    return {"file": Path(sample).name, "content_hash": read_info(sample)["content_hash"], "metric": key,
            "n_samples": rep["n_samples"], "mean": rep["summary"][key]["mean"], "median": rep["summary"][key]["median"]}
