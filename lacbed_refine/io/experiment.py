"""A measured digital-LACBED experiment: one image per diffracted disc, read into one stack.

"Digital" LACBED records each disc as its own image over the same range of incident-beam tilts. A
folder holds one file per disc, named ``<chem>_<±h><±k><±l>.<ext>`` as FELIX names its outputs
(``GaAs_+0+0-2.dm3``), next to the ``felix.inp``/``felix.hkl`` the authors used; or one stack file
holds every disc with its (h, k, l) label. :func:`read_experiment` reads either into an
:class:`Experiment`: the images as stored (float64, orientation untouched) and a mask of the pixels
that were recorded (:func:`unrecorded_mask`).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lacbed_refine.io.felix_inp import FelixInput, FelixInputError, read_felix_inp, read_hkl
from lacbed_refine.io.images import PatternError, _read_image_file, check_pattern

__all__ = ["DISC_SUFFIXES", "Experiment", "ExperimentError", "parse_disc_name", "read_experiment", "unrecorded_mask"]

logger = logging.getLogger(__name__)

#: Image files a folder's discs may be stored as.
DISC_SUFFIXES = (".dm3", ".dm4", ".img", ".bin", ".tif", ".tiff", ".npy")
# Stack files holding every disc with its label (not io.files.STACK_SUFFIXES, the output types).
_STACK_SUFFIXES = (".tif", ".tiff", ".npz", ".h5", ".hdf5")
#: Fewest recorded pixels the bright-field (000) disc may have.
MIN_BRIGHT_FIELD_PIXELS = 50

_NAME_RE = re.compile(
    r"(?P<chem>[^/\\]+)_(?P<h>[+-]\d+)(?P<k>[+-]\d+)(?P<l>[+-]\d+)\.(?:dm3|dm4|img|bin|tiff?|npy)",
    re.ASCII | re.IGNORECASE | re.DOTALL,
)
_LABEL_RES = (
    re.compile(r"[\[(]?\s*([+-]?\d+)\s*[,\s]\s*([+-]?\d+)\s*[,\s]\s*([+-]?\d+)\s*[\])]?", re.ASCII),  # 0 0 0, [0,0,-2]
    re.compile(r"(?:.*_)?([+-]\d+)([+-]\d+)([+-]\d+)(?:\.\w+)?", re.ASCII),  # +0+0-2, GaAs_+0+0-2.dm3
    re.compile(r"([+-]?\d)([+-]?\d)([+-]?\d)", re.ASCII),  # 000, 1-11
)
_HOW_TO_LABEL = (
    "label every disc with its h k l: a page description such as '0 0 0', '+0+0-2' or '[0,0,-2]', an ImageJ "
    "'Labels' list, or an integer array 'hkl' of shape (R, 3) next to 'images' in an .npz/.h5"
)


class ExperimentError(ValueError):
    """A measured experiment that cannot be read; the one-line message names the file, folder or
    option and the value."""


@dataclass(frozen=True)
class Experiment:
    """The discs of one measured digital-LACBED experiment.

    Attributes
    ----------
    source : Path
        The folder or stack file read.
    name : str
        The chemical prefix of the disc file names (``"GaAs"``), or the stack file's stem.
    reflections : tuple of (int, int, int), length R
        (h, k, l) of each disc: 000 first, then in ``felix.hkl`` order or file order.
    images : ndarray, shape (R, n, n), float64
        The stored values (any units), orientation untouched; NaN and infinities kept (masked).
    recorded : ndarray of bool, shape (R, n, n)
        True where a pixel was recorded (:func:`unrecorded_mask`).
    files : tuple of str, length R
        The file of each disc relative to ``source`` (``"DM3_84x84/GaAs_+0+0+0.dm3"``), or
        ``"<stack file>#<index>"``.
    felix : FelixInput or None
        The ``felix.inp`` of the folder (of the stack file's folder), or None if there is none.
    hkl : ndarray, shape (m, 3), int, or None
        The reflections of that folder's ``felix.hkl``, or None if there is none.
    unused : tuple of str
        Images found but not used, and ``felix.hkl`` reflections without an image, each with the reason.
    """

    source: Path
    name: str
    reflections: tuple[tuple[int, int, int], ...]
    images: np.ndarray
    recorded: np.ndarray
    files: tuple[str, ...]
    felix: FelixInput | None
    hkl: np.ndarray | None
    unused: tuple[str, ...]


def parse_disc_name(filename: str) -> tuple[str, tuple[int, int, int]] | None:
    """Split a disc file name ``<chem>_<±h><±k><±l>.<ext>`` into its prefix and reflection.

    Parameters
    ----------
    filename : str
        A file name (any folder part is dropped); ``ext`` one of :data:`DISC_SUFFIXES`, any case.
        Every index carries its sign and may have several digits (``_+1+1-10``).

    Returns
    -------
    (str, (int, int, int)) or None
        ``('GaAs', (0, 0, -2))`` for ``'GaAs_+0+0-2.dm3'``; None for a name not of that form.
    """
    m = _NAME_RE.fullmatch(Path(str(filename)).name)
    return None if m is None else (m["chem"], (int(m["h"]), int(m["k"]), int(m["l"])))


def unrecorded_mask(image: np.ndarray) -> np.ndarray:
    """The pixels of a measured disc that were recorded (True), despite the name: the mask to fit with.

    Not recorded: exact zeros (background clipped to zero, or tilts the scan did not reach),
    negative values (the authors' interpolation, as in GeSn152) and NaN or infinite values. Every
    other pixel is recorded, except one with no recorded pixel among its 8 neighbours: a lone
    positive pixel in a clipped area is noise that rose above the clip level, not part of the disc.
    Nothing else is cleaned (no opening, no hole filling), so a mask is easy to reason about.

    Parameters
    ----------
    image : ndarray, shape (n, m)
        One disc, any real dtype.

    Returns
    -------
    ndarray of bool, shape (n, m)

    Raises
    ------
    ValueError
        If ``image`` is not a 2-D array of real numbers.
    """
    img = np.asarray(image)
    if img.ndim != 2 or img.dtype.kind not in "buif":
        raise ValueError(f"unrecorded_mask: image must be a 2-D array of real numbers, got {img.dtype} {img.shape}")
    from scipy.ndimage import correlate

    with np.errstate(invalid="ignore"):
        rec = np.isfinite(img) & (img > 0)
    neighbours = correlate(rec.astype(np.uint8), np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], np.uint8), mode="constant")
    return rec & (neighbours > 0)


def read_experiment(path, *, discs="hkl") -> Experiment:
    """Read a measured digital-LACBED experiment: a folder of disc images or one labelled stack file.

    A folder holds image files ``<chem>_<±h><±k><±l>.<ext>`` (:data:`DISC_SUFFIXES`; DM3/DM4 need
    rosettasciio), in it or in exactly one sub-folder (``DM3_84x84/``), and optionally ``felix.inp``
    (either dialect) and ``felix.hkl``. A stack file is a multi-page TIFF (the hkl of each page from
    its description or an ImageJ ``Labels`` list), an ``.npz`` with arrays ``images`` (R, n, n) and
    ``hkl`` (R, 3), or an ``.h5``/``.hdf5`` with datasets of those names; a ``felix.inp``/``felix.hkl``
    next to it is read too. In a folder, the names, the felix files and the selection are checked
    before any pixel is read, and the 000 disc is read and checked first.

    Parameters
    ----------
    path : str or os.PathLike
        The folder, or the stack file.
    discs : {"hkl", "all"} or sequence of (int, int, int)
        Which discs to use: ``"hkl"`` 000 and the ``felix.hkl`` reflections that have an image (every
        image if there is no ``felix.hkl``); ``"all"`` every image; or these reflections (000 added).
        The rest is listed in :attr:`Experiment.unused`.

    Returns
    -------
    Experiment

    Raises
    ------
    ExperimentError
        One line naming the file, folder or option and the value: no disc images, or several
        sub-folders of them; several chemical prefixes; two images of one reflection; a stack
        without h k l labels; an unreadable ``felix.inp``/``felix.hkl`` or image; an image that is not
        one square 2-D image of numbers (16 to 4096 pixels a side) of the 000 disc's shape; no 000
        image or fewer than 50 recorded pixels in it; a ``discs`` value not allowed or without image.
    """
    source = Path(path)
    if source.is_dir():
        name, entries, unused, folder = _folder_entries(source)
    elif source.is_file():
        name, entries, unused, folder = source.stem, _stack_entries(source), [], source.parent
    else:
        raise ExperimentError(f"{source}: no such folder or file")
    felix = hkl = None
    try:
        if (folder / "felix.inp").is_file():
            felix = read_felix_inp(folder / "felix.inp")
        if (folder / "felix.hkl").is_file():
            hkl = read_hkl(folder / "felix.hkl")
    except FelixInputError as exc:
        raise ExperimentError(str(exc)) from None
    chosen = _select({e[0]: e[1] for e in entries}, hkl, discs, source, unused)
    by_refl = {e[0]: e for e in entries}
    files = tuple(by_refl[r][1] for r in chosen)

    images, recorded = [], []
    for refl in chosen:  # 000 first: its mask is checked before the other discs are read
        _, _, shown, load = by_refl[refl]
        try:
            data = np.asarray(load())
            probe = np.where(np.isfinite(data), data, 0) if data.dtype.kind == "f" else data
            check_pattern(probe, name=shown, allow_constant=True)  # numbers, one 2-D image, square, size
        except PatternError as exc:
            raise ExperimentError(str(exc)) from None
        images.append(np.squeeze(data).astype(np.float64))
        if images[-1].shape != images[0].shape:
            raise ExperimentError(
                f"{shown}: shape {images[-1].shape}, but {by_refl[chosen[0]][2]} is {images[0].shape}; "
                "every disc must have one shape"
            )
        recorded.append(unrecorded_mask(images[-1]))
        if len(recorded) == 1 and recorded[0].sum() < MIN_BRIGHT_FIELD_PIXELS:
            raise ExperimentError(
                f"{shown}: the 000 disc has {int(recorded[0].sum())} recorded pixels (positive, finite), fewer than "
                f"{MIN_BRIGHT_FIELD_PIXELS}; the bright field is needed"
            )
    for refl, label, rec in zip(chosen, files, recorded):
        if rec.mean() < 0.1:
            logger.warning("%s: disc %s (%s) has only %.0f%% of its pixels recorded", source, _fmt(refl), label, 100 * rec.mean())
    return Experiment(source, name, tuple(chosen), np.stack(images), np.stack(recorded), files, felix, hkl, tuple(unused))


# ------------------------------------------------------------------------------------------------
def _fmt(hkl) -> str:
    return "[{},{},{}]".format(*hkl)


def _folder_entries(folder: Path):
    """(name, [(hkl, relative file, shown name, loader)] in file order, unused notes, folder) of a folder of discs."""

    def images_in(d: Path):
        return [p for p in sorted(d.iterdir()) if p.is_file() and p.suffix.lower() in DISC_SUFFIXES]

    where = images_in(folder)
    if not any(parse_disc_name(p.name) for p in where):
        subs = [d for d in sorted(folder.iterdir()) if d.is_dir() and not d.name.startswith(".")]
        subs = [d for d in subs if any(parse_disc_name(p.name) for p in images_in(d))]
        if len(subs) > 1:
            raise ExperimentError(
                f"{folder}: disc images in {len(subs)} sub-folders ({', '.join(d.name for d in subs)}); "
                "pass the one to use, or move its files into the folder itself"
            )
        if not subs:
            raise ExperimentError(
                f"{folder}: no disc images named <chem>_<±h><±k><±l>.<ext> ({', '.join(DISC_SUFFIXES)}) in it or a sub-folder"
            )
        where = images_in(subs[0])
    entries, unused, seen, chems = [], [], {}, []
    for p in where:
        rel = p.relative_to(folder).as_posix()
        parsed = parse_disc_name(p.name)
        if parsed is None:
            unused.append(f"{rel}: name is not <chem>_<±h><±k><±l>.<ext>")
            continue
        chem, refl = parsed
        if refl in seen:
            raise ExperimentError(f"{folder}: two images of {_fmt(refl)} ({seen[refl]}, {rel}); keep one")
        seen[refl] = rel
        chems += [chem] if chem not in chems else []
        entries.append((refl, rel, str(p), lambda p=p: _read_image_file(p)))
    if len(chems) > 1:
        raise ExperimentError(f"{folder}: disc images of several prefixes ({', '.join(chems)}); keep one experiment per folder")
    return chems[0], entries, unused, folder


def _parse_label(text) -> tuple[int, int, int] | None:
    """(h, k, l) from a label ('0 0 0', '000', '+0+0-2', '[0,0,-2]', 'hkl=0 0 0', JSON with 'hkl'/'label')."""
    text = str(text).strip()
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        obj = obj.get("hkl", obj.get("label"))
    if isinstance(obj, list) and len(obj) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in obj):
        return tuple(obj)
    if isinstance(obj, str):
        text = obj.strip()
    if "hkl=" in text:  # write_stack's "t=500A hkl=0 0 0"
        text = text.split("hkl=", 1)[1].strip()
    for rx in _LABEL_RES:
        m = rx.fullmatch(text)
        if m:
            return tuple(int(g) for g in m.groups())
    return None


def _stack_entries(path: Path):
    """[(hkl, "file#i", "path#i", loader)] of a labelled stack file, labels and shapes checked."""
    suffix = path.suffix.lower()
    if suffix not in _STACK_SUFFIXES:
        what = "one image file" if suffix in DISC_SUFFIXES else f"a {suffix or 'suffix-less'} file"
        raise ExperimentError(
            f"{path}: {what}, not an experiment; give a folder of discs or a stack ({', '.join(_STACK_SUFFIXES)}) "
            "(a single pattern is read by read_pattern)"
        )
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                pages = list(tif.pages)
                if len(pages) < 2:
                    raise ExperimentError(f"{path}: one page; a stack has one page per disc ({_HOW_TO_LABEL})")
                ij_labels = (tif.imagej_metadata or {}).get("Labels")
                texts = ij_labels if ij_labels is not None else [getattr(p, "description", "") for p in pages]
                labels = [_parse_label(t) for t in texts]
                for i, (page, t) in enumerate(zip(pages, labels)):
                    if t is None:
                        shown = f"label {texts[i]!r}" if texts[i] else "no description"
                        raise ExperimentError(f"{path}: page {i} has no hkl label ({shown}); {_HOW_TO_LABEL}")
                    if page.shape != pages[0].shape:
                        raise ExperimentError(f"{path}: page {i} has shape {page.shape}, page 0 {pages[0].shape}")
                images = np.stack([p.asarray() for p in pages])
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                images, labels = _named_arrays(path, {k: z[k] for k in z.files if k in ("images", "hkl")}, z.files)
        else:
            import h5py

            with h5py.File(path, "r") as f:
                keys = list(f.keys())
                images, labels = _named_arrays(path, {k: f[k][()] for k in ("images", "hkl") if k in f}, keys)
    except ExperimentError:
        raise
    except Exception as exc:  # a reader's own error, whatever its type
        text = str(exc).strip().splitlines()
        raise ExperimentError(f"{path}: cannot read stack ({text[0] if text else type(exc).__name__})") from None
    if len(labels) != len(images):
        raise ExperimentError(f"{path}: {len(labels)} hkl labels for {len(images)} images; {_HOW_TO_LABEL}")
    first = {}
    for i, refl in enumerate(labels):
        if refl in first:
            raise ExperimentError(f"{path}: images {first[refl]} and {i} are both labelled {_fmt(refl)}")
        first[refl] = i
    return [(refl, f"{path.name}#{i}", f"{path}#{i}", lambda i=i: images[i]) for i, refl in enumerate(labels)]


def _named_arrays(path: Path, arrays: dict, keys):
    """images (R, n, n) and hkl labels from the arrays 'images' and 'hkl' of an .npz/.h5."""
    if "images" not in arrays:
        raise ExperimentError(f"{path}: no array 'images' (has {', '.join(keys) or 'nothing'}); store the discs as images (R, n, n)")
    if "hkl" not in arrays:
        raise ExperimentError(f"{path}: no array 'hkl' (has {', '.join(keys)}); {_HOW_TO_LABEL}")
    images, hkl = np.asarray(arrays["images"]), np.asarray(arrays["hkl"])
    if images.ndim != 3:
        raise ExperimentError(f"{path}: 'images' has shape {images.shape}, expected (R, n, n)")
    ok = hkl.ndim == 2 and hkl.shape[1:] == (3,) and hkl.dtype.kind in "iuf"
    if not (ok and np.isfinite(hkl).all() and (hkl == np.round(hkl)).all()):
        raise ExperimentError(f"{path}: 'hkl' is {hkl.dtype} of shape {hkl.shape}, expected integers of shape (R, 3)")
    return images, [tuple(int(v) for v in row) for row in hkl]


def _select(found: dict, hkl: np.ndarray | None, discs, source: Path, unused: list) -> list:
    """The reflections to use, 000 first; appends the rest to ``unused``."""
    if (0, 0, 0) not in found:
        raise ExperimentError(f"{source}: no image of the 000 disc (the bright field is needed)")
    listed = [] if hkl is None else [tuple(int(v) for v in row) for row in hkl]
    if isinstance(discs, str):
        if discs not in ("hkl", "all"):
            raise ExperimentError(f"discs={discs!r}: use 'hkl', 'all' or a list of (h, k, l)")
        wanted = listed if discs == "hkl" and hkl is not None else list(found)
        wanted = [r for r in wanted if r in found]
        why = "not in felix.hkl"  # (with "all", nothing found is left out)
    else:
        wanted, why = [], "not in discs"
        try:
            items = list(discs)
        except TypeError:
            items = [discs]
        for item in items:
            try:
                refl = tuple(int(v) for v in item)
                ok = len(refl) == 3 and all(v == w and not isinstance(w, bool) for v, w in zip(refl, item))
            except (TypeError, ValueError):
                ok = False
            if not ok:
                raise ExperimentError(f"discs: {item!r} is not (h, k, l) integers")
            if refl not in found:
                raise ExperimentError(f"discs: {_fmt(refl)} has no image in {source}")
            wanted.append(refl)
    chosen = list(dict.fromkeys([(0, 0, 0), *wanted]))
    unused.extend(f"{label}: {why}" for refl, label in found.items() if refl not in chosen)
    unused.extend(f"{_fmt(r)}: in felix.hkl, no image" for r in dict.fromkeys(listed) if r not in found and r != (0, 0, 0))
    return chosen
