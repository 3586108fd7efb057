"""Import the ai-diffraction PNG layout into the dataset's HDF5 layout.

The layout (wephy/ai-diffraction data scripts)::

    ROOT/<id>/potential.png           projected potential, normalised grey levels
    ROOT/<id>/pattern_<tttt>.png      bright-field pattern at thickness tttt [Å], 4 digits

with split files holding one id per line, named ``train``, ``val`` and ``test`` (any suffix).
Grey levels are divided by the image type's maximum (255 or 65535), colour images are averaged
over their colour channels. PNGs carry no absolute scale, cell edge, formula or space group: those
fields are NaN / empty / 0 in the file, and ``potential_raw`` is NaN. Ids missing from every split
file get the split ``""``. Folders that lack a potential or a pattern at any thickness of the
others, or hold an unreadable image or one of another size, are recorded in ``/failed``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from lacbed_refine.io.files import check_new_output
from lacbed_refine.dataset.splits import read_split_files
from lacbed_refine.dataset._layout import Record, canonical_json, write_dataset

__all__ = ["import_png"]

log = logging.getLogger(__name__)

_PATTERN = re.compile(r"^pattern_(\d{4})\.png$")


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        arr = np.asarray(im)
        mode = im.mode
    if arr.ndim == 3:
        arr = arr[..., :3].astype(np.float64).mean(axis=-1) if arr.shape[-1] >= 3 else arr[..., 0]
    if mode in ("I;16", "I;16B", "I;16L", "I") or arr.dtype == np.uint16 or arr.max() > 255:
        scale = 65535.0
    elif mode == "1":
        scale = 1.0
    else:
        scale = 255.0
    return (np.asarray(arr, dtype=np.float64) / scale).astype(np.float32)


def import_png(root, output, *, split_files=(), command: str = "", progress: bool = True,
               overwrite: bool = False) -> dict:
    """Read an ai-diffraction PNG tree into a dataset file.

    Parameters
    ----------
    root : path-like
        Folder with one sub-folder per structure.
    output : path-like
        The ``.h5`` file to write (atomically).
    split_files : sequence of path-like
        Split files (``train``, ``val``, ``test``; one id per line).
    command : str
        Command line to record.
    progress : bool
        Show a progress bar.
    overwrite : bool
        Replace an existing ``output`` (refused otherwise, before any image is read).

    Returns
    -------
    dict with ``output``, ``content_hash``, ``n_structures``, ``n_failed``, ``thickness_nm``.

    Raises
    ------
    ValueError
        If ``root`` has no structure folder with pattern PNGs, a split file is malformed, or
        ``output`` exists (without ``overwrite``) or cannot be written.
    """
    from tqdm.auto import tqdm

    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder")
    check_new_output(output, overwrite=overwrite, option="-o", inputs=tuple(split_files))
    splits = read_split_files(split_files)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    thick_sets = {}
    for d in folders:
        thick_sets[d.name] = sorted(int(m.group(1)) for f in d.iterdir() if (m := _PATTERN.match(f.name)))
    all_t = sorted({t for ts in thick_sets.values() for t in ts})
    if not all_t:
        raise ValueError(f"{root}: no <id>/pattern_<tttt>.png files found")
    ok, failed, size = [], [], None
    for d in folders:
        ident = d.name
        reason = None
        if not (d / "potential.png").is_file():
            reason = "no potential.png"
        elif thick_sets[ident] != all_t:
            missing = sorted(set(all_t) - set(thick_sets[ident]))
            reason = f"no pattern at {', '.join(f'{t:04d}' for t in missing)} Å" if missing else "extra thicknesses"
        else:
            names = ["potential.png"] + [f"pattern_{t:04d}.png" for t in all_t]
            for name in names:
                try:
                    shape = _read_png(d / name).shape
                except Exception as exc:  # noqa: BLE001 - a bad image is recorded, not fatal
                    reason = f"{name}: {type(exc).__name__}: {exc}"
                    break
                size = size or shape[0]
                if shape != (size, size):
                    reason = f"{name} is {shape[1]}x{shape[0]} px, not {size}x{size}"
                    break
        if reason is None:
            ok.append(ident)
        else:
            log.warning("%s: skipped: %s", ident, " ".join(reason.split()))
            failed.append({"id": ident, "source": "png", "reason": " ".join(reason.split())})

    if not ok:
        raise ValueError(f"{root}: none of the {len(folders)} structure folders is complete "
                         f"(first: {failed[0]['id']}: {failed[0]['reason']})")
    unknown = sorted(set(splits) - set(thick_sets))
    if unknown:
        log.warning("%d ids in the split files have no folder (first: %s)", len(unknown), unknown[0])
    thickness_nm = [t / 10.0 for t in all_t]
    settings = {"import": "ai-diffraction png", "thickness_angstrom": all_t, "size": size,
                "split": {"key": "id", "files": [Path(p).name for p in split_files]}}

    def records():
        for ident in ok:
            d = root / ident
            pot = _read_png(d / "potential.png")
            pats = np.stack([_read_png(d / f"pattern_{t:04d}.png") for t in all_t])
            meta = {"id": ident, "source": "png", "formula": "", "reduced_formula": "", "spacegroup_number": 0,
                    "spacegroup_symbol": "", "a_angstrom": float("nan"), "n_atoms": 0,
                    "split": splits.get(ident, ""), "n_beams": 0, "symmetry_ops": 0,
                    "potential_min": float("nan"), "potential_max": float("nan"), "cif": "", "seconds": 0.0, "cpu_seconds": 0.0}
            yield Record(meta=meta, potential=pot, potential_raw=np.full_like(pot, np.nan), pattern=pats)

    with tqdm(total=len(ok), unit="structure", desc="import", disable=not progress) as bar:
        digest = write_dataset(
            output, records(), n=len(ok), size=size, thickness_nm=thickness_nm, settings=settings,
            failed=failed, split_table={i: splits[i] for i in sorted(splits)}, split_key="id", command=command,
            progress=bar.update,
        )
    log.info("imported %d structures from %s (%s)", len(ok), root, canonical_json(settings))
    return {"output": str(output), "content_hash": digest, "n_structures": len(ok),
            "n_failed": len(failed), "thickness_nm": thickness_nm}
