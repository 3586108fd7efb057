"""File-level surrogate workflows behind the ``train``, ``evaluate``, ``predict`` and ``invert``
commands: read inputs, call the library, write outputs. Thickness is in nm here (the I/O edge)."""

from __future__ import annotations

import json
import logging
import math
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from lacbed_refine.dataset import read_info
from lacbed_refine.io.images import STACK_SUFFIXES, check_pattern, write_preview, write_stack
from lacbed_refine.io.files import atomic_path, check_new_output, check_stack_output
from lacbed_refine.runtime import resolve_device
from lacbed_refine.surrogate._config import ARCHITECTURES, DIRECTIONS, TrainConfig, config_from_dict
from lacbed_refine.surrogate._data import in_memory, open_dataset
from lacbed_refine.surrogate._evaluate import _check_report_folder, _score, compare_reports, staged_folder, write_report
from lacbed_refine.surrogate._predict import ForwardSurrogate, file_sha256, load_pretrained, load_surrogate
from lacbed_refine.surrogate._trainer import Trainer, build_model, load_checkpoint, make_loader

__all__ = ["train", "train_file", "evaluate_files", "predict_file", "invert_file", "read_stack"]

log = logging.getLogger(__name__)


def train(model, train_set, cfg: TrainConfig, *, val_set=None, checkpoint=None, resume: bool = False,
          metadata: dict | None = None, progress: bool = True) -> dict:
    """Train ``model`` (a :class:`CGAN` or :class:`VAE`) on ``train_set``.

    Parameters
    ----------
    model : SurrogateModel
    train_set, val_set : torch Dataset
        Item dicts (see :mod:`lacbed_refine.surrogate._data`).
    cfg : TrainConfig
    checkpoint : str or Path, optional
        Checkpoint file, written every ``cfg.checkpoint_minutes`` and at the end.
    resume : bool
        Continue from ``checkpoint``.
    metadata : dict, optional
        Stored in the checkpoint.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        The summary of :meth:`Trainer.fit`.
    """
    loader = make_loader(train_set, batch_size=cfg.batch_size, seed=cfg.seed)
    val = make_loader(val_set, batch_size=cfg.batch_size, shuffle=False, drop_last=False) if val_set is not None and len(val_set) else None
    trainer = Trainer(model, loader, cfg, checkpoint=checkpoint, val_loader=val, metadata=metadata, progress=progress)
    if resume:
        trainer.resume()
    return trainer.fit()


def _image_size(dataset) -> int:
    return int(torch.as_tensor(dataset[0]["potential"]).shape[-1])


def _whole(option: str, value, minimum: int = 1) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{option} {value!r}: must be a whole number >= {minimum}")


def _positive(option: str, value, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or not value > 0):
        raise ValueError(f"{option} {value!r}: {what} must be a positive finite number")


def train_file(direction: str, data, out, *, arch: str | None = None, epochs: int | None = None, minutes: float | None = None,
               device: str | None = None, seed: int | None = None, batch_size: int | None = None, lr: float | None = None,
               resume: bool = False, threads: int | None = None, config=None, progress: bool = True,
               overwrite: bool = False) -> dict:
    """Train a surrogate on the HDF5 dataset ``data`` (its ``train`` split; ``validation`` is
    evaluated each epoch when present) and write the checkpoint ``out``.

    Options left as None take the defaults, or with ``resume`` the checkpoint's values.
    ``config`` is a JSON file with sections ``task``, ``generator``, ``discriminator``, ``loss``,
    ``vae``, ``train`` overriding the defaults of a new model. ``out`` must not exist unless
    ``resume`` (continue it) or ``overwrite`` (start again over it).

    Raises
    ------
    ValueError
        One line naming the option or file, before the data are loaded: a number out of range
        (``epochs``, ``batch_size``, ``threads`` < 1; ``minutes``, ``lr`` not positive and finite),
        an unknown or absent device, an existing ``out`` without ``resume``/``overwrite``, ``out``
        being an input, a bad config file or checkpoint, a dataset that cannot be read or of
        another image size than the checkpoint's model.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if arch is not None and arch not in ARCHITECTURES:
        raise ValueError(f"--arch {arch!r}: must be one of {', '.join(ARCHITECTURES)}")
    _whole("--epochs", epochs)
    _positive("--minutes", minutes, "the training time [minutes]")
    _positive("--lr", lr, "the learning rate")
    _whole("--batch-size", batch_size)
    _whole("--threads", threads)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"--seed {seed!r}: must be a whole number")
    dev = resolve_device(device or "cpu", option="--device")
    out = Path(out)
    if resume:
        for src in (data, config):
            if src is not None and Path(src).exists() and out.exists() and out.resolve() == Path(src).resolve():
                raise ValueError(f"-o {out}: is an input file; give the checkpoint to resume")
        state = load_checkpoint(out)  # a missing or unusable checkpoint fails here, before the data load
        if state["kind"] != direction or (arch is not None and state["arch"] != arch):
            raise ValueError(f"{out}: holds a {state['kind']} {state['arch']} model; cannot resume it as {direction} {arch or state['arch']}")
        train_values = dict(state["config"].get("train", {}))
    else:
        # an existing checkpoint holds hours of training: never replaced unless asked
        check_new_output(out, overwrite=overwrite, option="-o", inputs=(data, config))
        sections = _read_config(config) if config is not None else {}
        train_values = dict(sections.get("train", {}))
    train_values.update({k: v for k, v in {"epochs": epochs, "minutes": minutes, "seed": seed,
                                           "batch_size": batch_size, "lr": lr}.items() if v is not None})
    if not {"epochs", "minutes", "max_steps"} & {k for k, v in train_values.items() if v is not None}:
        raise ValueError("say how long to train: --epochs N and/or --minutes M")
    cfg = config_from_dict("train", train_values)
    if threads is not None:
        torch.set_num_threads(threads)
    base_train = open_dataset(data, "train")
    size = _image_size(base_train)
    if resume:
        model = build_model(state["arch"], state["config"])
    else:
        task = {**sections.get("task", {}), "direction": direction}
        task.setdefault("image_size", size)
        torch.manual_seed(int(cfg.seed))  # deterministic initial weights
        model = build_model(arch or "cgan", {**sections, "task": task})
    if model.task.image_size != size:
        raise ValueError(f"{data}: images are {size}×{size} pixels but the model works at "
                         f"{model.task.image_size}×{model.task.image_size}")
    train_set = in_memory(base_train)
    try:
        val_set = in_memory(open_dataset(data, "validation"))
    except (ValueError, KeyError):
        val_set = None
    model = model.to(dev)
    metadata = {
        "data": {"path": str(Path(data).resolve()), "sha256": file_sha256(data),
                 "content_hash": read_info(data).get("content_hash"), "n_train": len(train_set),
                 "n_validation": len(val_set) if val_set is not None else 0},
        "command": " ".join(shlex.quote(a) for a in sys.argv) if sys.argv and "lacbed" in Path(sys.argv[0]).name else "",
        "device": str(dev),
        "threads": torch.get_num_threads(),
    }
    log.info("training %s %s on %d structures (%s)", direction, model.arch, len(train_set), data)
    result = train(model, train_set, cfg, val_set=val_set, checkpoint=out, resume=resume, metadata=metadata, progress=progress)
    from lacbed_refine.surrogate._evaluate import plot_history

    result["curves"] = plot_history(load_checkpoint(out).get("history", []), out.with_suffix(".curves.png"))
    return result


_CONFIG_SECTIONS = ("task", "generator", "discriminator", "loss", "vae", "train")


def _read_config(path) -> dict:
    try:
        sections = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such config file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(sections, dict):
        raise ValueError(f"{path}: expected a JSON object with sections {'/'.join(_CONFIG_SECTIONS)}")
    unknown = sorted(set(sections) - set(_CONFIG_SECTIONS))
    if unknown:  # a misspelt section would otherwise be ignored without a word
        raise ValueError(f"{path}: unknown config section(s) {unknown}; known: {', '.join(_CONFIG_SECTIONS)}")
    return sections


def evaluate_files(models, data, *, split: str = "test", report=None, batch_size: int = 16, device: str | None = None,
                   invariance: int = 32, symmetrise: bool = False, source: str | None = None) -> dict[str, dict]:
    """Evaluate one or more model files on a split of ``data`` (only its ``source`` structures,
    "real" or "synthetic", when given); with several models, each gets a sub-folder of ``report``
    and ``comparison.md`` / ``comparison.json`` compare them.

    Every model is loaded and checked against the dataset (image size) before any is scored, and
    the report folder is written only once every model is scored: a failure leaves nothing in it.

    Raises
    ------
    ValueError
        One line naming the option or file: no model, an unknown or absent device, a batch size
        below 1, an unwritable report folder, a dataset or model that cannot be read, a model of
        another image size than the dataset's, or a model whose every score is NaN.
    """
    models = [Path(m) for m in models]
    if not models:
        raise ValueError("give at least one model file")
    dev = resolve_device(device or "cpu", option="--device")
    _whole("--batch-size", batch_size)
    if report is not None:
        _check_report_folder(Path(report))
    dataset = open_dataset(data, split, source)
    size = _image_size(dataset)
    surrogates = [load_surrogate(path, device=dev) for path in models]
    for path, model in zip(models, surrogates):
        if model.image_size != size:
            raise ValueError(f"{path}: the model works on {model.image_size}×{model.image_size}-pixel images, but "
                             f"{data} holds {size}×{size}-pixel images")
    labels = _labels(models)
    scored = {label: _score(model, dataset, split=split, batch_size=batch_size, invariance=invariance, seed=0,
                            name=label, symmetrise=symmetrise, source=source or "all")
              for label, model in zip(labels, surrogates)}
    reports = {label: rep for label, (rep, _, _) in scored.items()}
    if report is not None:
        from lacbed_refine.surrogate._evaluate import plot_history

        with staged_folder(report) as tmp:
            for (label, (rep, keep, mean_error)), path in zip(scored.items(), models):
                folder = tmp / label if len(models) > 1 else tmp
                write_report(folder, rep, keep, mean_error)
                # a training checkpoint carries its history; exported weights do not
                plot_history(load_checkpoint(path).get("history", []), folder / "learning_curves.png")
            if len(models) > 1:
                with atomic_path(tmp / "comparison.md") as t:
                    t.write_text(compare_reports(reports))
                summary = {k: {"kind": r["model"]["kind"], "arch": r["model"]["arch"], "summary": r["summary"],
                               "per_thickness": r["per_thickness"]} for k, r in reports.items()}
                with atomic_path(tmp / "comparison.json") as t:
                    t.write_text(json.dumps(summary, indent=1))
    return reports


def _labels(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [f"{i}-{s}" for i, s in enumerate(stems)]


def read_stack(path) -> tuple[np.ndarray, dict]:
    """Read an image stack written by lacbed-refine (``simulate``, ``potential``, ``predict``) or a
    plain image file: TIFF (all pages; JSON metadata in the first page's description), ``.npy``
    (with its ``.json`` sidecar when present) or ``.h5`` (dataset ``patterns``).

    Returns
    -------
    pages : ndarray, float64, shape (P, H, W)
    metadata : dict
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if suffix not in STACK_SUFFIXES:
        raise ValueError(f"{path}: unknown image type {suffix!r}; use one of {', '.join(STACK_SUFFIXES)}")
    meta: dict = {}
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                data = np.stack([p.asarray() for p in tif.pages])
                desc = tif.pages[0].description or ""
            try:
                meta = json.loads(desc) if desc.strip().startswith("{") else {}
            except json.JSONDecodeError:
                meta = {}
        elif suffix == ".npy":
            data = np.load(path, allow_pickle=False)
            side = path.with_suffix(".json")
            if side.is_file():
                meta = json.loads(side.read_text())
        else:
            import h5py

            with h5py.File(path, "r") as f:
                data = f["patterns"][()]
                meta = json.loads(f.attrs.get("metadata", "{}"))
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: cannot read image stack ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    data = np.asarray(data, dtype=np.float64)
    if data.ndim < 2:
        raise ValueError(f"{path}: not an image (shape {data.shape})")
    pages = data.reshape(-1, *data.shape[-2:])
    if not np.isfinite(pages).all():
        raise ValueError(f"{path}: the image has NaN or infinite pixels")
    return pages, meta


def _model(model, direction: str, device):
    surrogate = load_pretrained(direction, device=device) if model is None else load_surrogate(model, device=device)
    kind = "forward" if isinstance(surrogate, ForwardSurrogate) else "inverse"
    if kind != direction:
        need = "predict needs a forward" if direction == "forward" else "invert needs an inverse"
        raise ValueError(f"{model}: is a {kind} surrogate; {need} one")
    return surrogate


def _surrogate_meta(s) -> dict:
    return {"kind": s.task.direction, "arch": s.arch, "model": s.info.get("path"), "step": s.info.get("step")}


def check_surrogate_thickness(thickness, given) -> None:
    """Thicknesses [nm] a surrogate can be asked for: finite, > 0 and ≤ 5000 nm (those far outside
    the training range, 50–200 nm, are extrapolation: warned, not refused)."""
    from lacbed_refine.engine.geometry import MAX_THICKNESS_A
    from lacbed_refine.conventions import NM

    t_max = MAX_THICKNESS_A / NM
    if not thickness or not all(math.isfinite(t) and 0 < t <= t_max for t in thickness):
        raise ValueError(f"--thickness {given!r}: thicknesses must be finite, 0–{t_max:g} nm")
    outside = [t for t in thickness if not 25 <= t <= 400]
    if outside:
        import warnings

        warnings.warn(f"--thickness {outside}: far outside the surrogates' training range (50–200 nm); "
                      "the prediction is an extrapolation", UserWarning, stacklevel=3)


def check_surrogate_cell(a, option: str = "--a") -> float:
    """A cubic cell edge [Å] for a surrogate: finite, in the range the crystal reader accepts."""
    from lacbed_refine.structure.crystal import CELL_EDGE_RANGE

    try:
        a = float(a)
    except (TypeError, ValueError):
        raise ValueError(f"{option} {a!r}: not a number of Å") from None
    if not (math.isfinite(a) and CELL_EDGE_RANGE[0] <= a <= CELL_EDGE_RANGE[1]):
        raise ValueError(f"{option} {a!r}: the cell edge must be {CELL_EDGE_RANGE[0]:g}–{CELL_EDGE_RANGE[1]:g} Å")
    return a


def predict_file(source, out, *, thickness_nm, model=None, a_angstrom: float | None = None, device: str | None = None,
                 symmetrise: bool = False, overwrite: bool = False) -> dict:
    """Predict bright-field patterns with the forward surrogate and write them (like ``simulate``).

    Parameters
    ----------
    source : str or Path
        A CIF, or a potential image [V] (page 0 of a ``lacbed-refine potential`` file, whose
        metadata gives a; otherwise pass ``a_angstrom``).
    out : str or Path
        ``.tif``/``.npy``/``.h5`` stack of shape (T, 1, n, n), intensities as fractions of the
        incident beam; a PNG preview is written beside it.
    thickness_nm : sequence of float
        Thicknesses [nm].
    model : str or Path, optional
        Forward surrogate file (default: the shipped weights).
    symmetrise : bool
        Average over the 8 operations of the square (exactly equivariant, 8× the cost).
    overwrite : bool
        Replace an existing ``out`` (otherwise refused before any work).
    """
    dev = resolve_device(device or "cpu", option="--device")
    out = check_stack_output(out, overwrite=overwrite, inputs=(source, model))
    thickness = [float(t) for t in np.atleast_1d(thickness_nm)] if thickness_nm is not None else []
    check_surrogate_thickness(thickness, thickness_nm)
    surrogate = _model(model, "forward", dev)
    source = Path(source)
    if source.suffix.lower() == ".cif":
        from lacbed_refine.io.cif import read_cif

        crystal = read_cif(source)
        a, name = crystal.a, crystal.name
        with torch.no_grad():
            res = surrogate.from_crystal(crystal, thickness, symmetrise=symmetrise)
    else:
        pages, meta = read_stack(source)
        a = a_angstrom if a_angstrom is not None else meta.get("a_angstrom")
        if a is not None:
            a = check_surrogate_cell(a)
        if a is None:
            raise ValueError(f"{source}: no lattice parameter in the file's metadata; give --a")
        name = meta.get("crystal", source.stem)
        with torch.no_grad():
            res = surrogate(torch.as_tensor(pages[0]), thickness, float(a), symmetrise=symmetrise)
    stack = res["intensity"].cpu().numpy()[:, None].astype(np.float32)
    meta = {"crystal": name, "source": str(source), "a_angstrom": float(a), "thickness_nm": thickness, "symmetrised": symmetrise,
            "reflections": [[0, 0, 0]], "engine": "surrogate", "surrogate": _surrogate_meta(surrogate),
            "units": "fractions of the incident beam (surrogate prediction)"}
    out = Path(out)
    write_stack(out, stack, labels=[f"t={t:g}nm hkl=0 0 0" for t in thickness], metadata=meta)
    png = write_preview(out.with_suffix(".png"), stack, row_labels=["BF 000 (surrogate)"],
                        col_labels=[f"t = {t:g} nm" for t in thickness], title=f"{name}: forward surrogate")
    return {"output": str(out), "preview": str(png), "shape": stack.shape}


def invert_file(pattern, out, *, thickness_nm=None, a_angstrom: float | None = None, model=None, device: str | None = None,
                overwrite: bool = False) -> dict:
    """Predict the projected potential from bright-field pattern(s) with the inverse surrogate.

    Parameters
    ----------
    pattern : str or Path
        A pattern stack (``simulate``/``predict`` output: its bright-field pages are used and its
        metadata gives thickness and a) or a plain image.
    out : str or Path
        ``.tif``/``.npy``/``.h5`` stack of shape (P, 1, n, n): one min–max normalised potential per
        input pattern (origin arbitrary); the predicted max − min [V] is in the metadata.
    thickness_nm : sequence of float, optional
        Thickness [nm] of each pattern (one value for all, or one per page).
    a_angstrom : float, optional
        Cubic cell edge [Å].
    overwrite : bool
        Replace an existing ``out`` (otherwise refused before any work).
    """
    dev = resolve_device(device or "cpu", option="--device")
    out = check_stack_output(out, overwrite=overwrite, inputs=(pattern, model))
    surrogate = _model(model, "inverse", dev)
    pattern = Path(pattern)
    pages, meta = read_stack(pattern)
    # each page must be a usable measured pattern: square, big enough, not constant
    pages = np.stack([check_pattern(page, name=f"{pattern}" + (f" page {i}" if len(pages) > 1 else ""))
                      for i, page in enumerate(pages)])
    if pages.shape[-1] != surrogate.image_size:
        raise ValueError(f"{pattern}: {pages.shape[-1]}×{pages.shape[-1]} pixels, but the inverse surrogate takes "
                         f"{surrogate.image_size}×{surrogate.image_size} (resample the pattern to its grid)")
    refl = meta.get("reflections")
    thick_meta = meta.get("thickness_nm")
    if refl and len(refl) * len(thick_meta or [0]) == len(pages) and [0, 0, 0] in [list(r) for r in refl]:
        j = [list(r) for r in refl].index([0, 0, 0])
        pages = pages.reshape(-1, len(refl), *pages.shape[-2:])[:, j]
    thickness = thickness_nm if thickness_nm is not None else thick_meta
    if thickness is None:
        raise ValueError(f"{pattern}: no thickness in the file's metadata; give --thickness")
    thickness = [float(t) for t in np.atleast_1d(thickness)]
    if len(thickness) == 1:
        thickness = thickness * len(pages)
    if len(thickness) != len(pages):
        raise ValueError(f"{pattern}: {len(pages)} pattern(s) but {len(thickness)} thickness value(s)")
    a = a_angstrom if a_angstrom is not None else meta.get("a_angstrom")
    if a is None:
        raise ValueError(f"{pattern}: no lattice parameter in the file's metadata; give --a")
    a = check_surrogate_cell(a)
    check_surrogate_thickness(thickness, thickness_nm if thickness_nm is not None else thick_meta)
    with torch.no_grad():
        res = surrogate(torch.as_tensor(pages), torch.tensor(thickness), float(a))
    stack = res["normalised"].cpu().numpy()[:, None].astype(np.float32)
    scale = [float(s) for s in res["potential_scale"].cpu()]
    info = {"source": str(pattern), "a_angstrom": float(a), "thickness_nm": thickness, "potential_scale_V": scale,
            "surrogate": _surrogate_meta(surrogate),
            "units": "min-max normalised [001] projected potential (origin arbitrary); max - min [V] in potential_scale_V"}
    out = Path(out)
    write_stack(out, stack, labels=[f"potential from t={t:g}nm" for t in thickness], metadata=info)
    png = write_preview(out.with_suffix(".png"), stack, row_labels=["ρ (inverse surrogate)"],
                        col_labels=[f"from t = {t:g} nm" for t in thickness], title=f"{pattern.name}: inverse surrogate")
    return {"output": str(out), "preview": str(png), "shape": stack.shape, "potential_scale_V": scale}
