"""Seeding a FELIX refinement: a structure and a measured pattern in, a folder FELIX refines in out.

The folder holds ``felix.inp`` (refinement letters and method), ``felix.cif``, ``felix.hkl`` and
the measured images where FELIX's refinement looks first: ``LR_<2N>x<2N>/<chem>_<±h><±k><±l>.img``
(felix-spec §1.3), plus ``lacbed_export.json`` recording what was written. ``cd`` there and run
``felix``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lacbed_refine.structure.crystal import Crystal
from lacbed_refine.engine.geometry import SimulationSettings

from ._cif import felix_chem, format_felix_cif, wyckoff_letters, write_felix_cif
from ._files import experimental_folder_name, image_name, parse_image_name, read_image, write_hkl, write_image
from ._inp import (
    REFINE_LETTERS,
    FelixInput,
    _check_reflections,
    felix_input_for,
    format_felix_inp,
    write_felix_inp,
)
from ._version import __version__

__all__ = [
    "export_refinement",
    "export_file",
    "read_pattern",
    "refine_letters",
    "FelixExport",
    "REFINEMENT_DEFAULTS",
    "DEFAULT_REFINE",
]

log = logging.getLogger(__name__)

#: felix.inp refinement settings of an export unless overridden: maximum-gradient refinement,
#: normalised cross-correlation (insensitive to the measured pattern's intensity scale), no image
#: processing or blur, 10 % steps, output only at cycle ends.
REFINEMENT_DEFAULTS = dict(
    refine_method=3,
    correlation_flag=2,
    image_processing_flag=0,
    blur_radius=0.0,
    n_ugs=10,
    print_every=0,
    simplex_length_scale=10.0,
    exit_criteria=1e-4,
)

#: What an export refines when not told: atom coordinates (B) and isotropic B (D), less what FELIX
#: cannot refine for the crystal (:func:`refine_letters` drops it and says so).
DEFAULT_REFINE = "BD"

# Cubic groups with FELIX HEAD coordinate-refinement (mode B) tables: F-43m only (felix-spec §5).
_MODE_B_GROUPS = {216}

# Letters FELIX HEAD reads but stops on as "not yet implemented" (felix-spec §5).
_ABORTING_LETTERS = {"E": "anisotropic B", "G": "cell angles", "I": "accelerating voltage"}

# Space groups where FELIX HEAD's cell refinement (F) stops with an error (felix-spec §5).
_NO_CELL_REFINEMENT = range(143, 168)

# FelixInput fields that felix.inp v1.3 does not hold (the Python port's, and where it was read from).
_NOT_IN_V13 = ("debye_model", "plot", "debug", "dialect", "source")

#: Most thicknesses in FELIX's grid (its input reader refuses more).
MAX_GRID_THICKNESSES = 10000

#: Largest image edge FELIX writes (``IPixelCount`` <= 499).
MAX_FELIX_SIZE = 998

#: Files of an export in its folder, besides the images.
_EXPORT_FILES = ("felix.inp", "felix.cif", "felix.hkl", "lacbed_export.json")


@dataclass(frozen=True)
class FelixExport:
    """What :func:`export_refinement` wrote.

    Attributes
    ----------
    folder : Path
    chem : str
        FELIX's file prefix.
    input : FelixInput
    reflections : tuple of (h, k, l)
    images : tuple of Path
        The ``.img`` files, in ``reflections`` order (empty without a pattern).
    dropped : tuple of str
        Letters left out of the default refinement because FELIX cannot refine them for this
        crystal, each as ``"B: why"`` (empty when the refinement was given or nothing was dropped).
    """

    folder: Path
    chem: str
    input: FelixInput
    reflections: tuple[tuple[int, int, int], ...]
    images: tuple[Path, ...]
    dropped: tuple[str, ...] = ()


def read_pattern(path) -> tuple[np.ndarray, tuple[tuple[int, int, int], ...] | None]:
    """A measured pattern: the images and, when the file says, their reflections.

    Reads a TIFF (one page per reflection; lacbed-refine's own stacks carry the reflections in the
    first page's JSON description), ``.npy`` (reflections from a ``.json`` sidecar), ``.h5``
    (dataset ``patterns``, attribute ``metadata``), or one FELIX ``.bin``/``.img`` image. A stack
    with a thickness axis must have one thickness.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    images : ndarray, shape (R, n, n), float64
    reflections : tuple of (h, k, l), or None when the file does not say

    Raises
    ------
    ValueError
        If the file type is unknown, the images are not square, or there are several thicknesses.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in _PATTERN_READERS:
        raise ValueError(f"{path}: unknown pattern type {suffix!r}; use .tif, .npy, .h5, .bin or .img")
    if not path.is_file():
        raise ValueError(f"{path}: {'is a folder, not a pattern file' if path.is_dir() else 'no such file'}")
    try:
        data, meta = _PATTERN_READERS[suffix](path)
    except ValueError as exc:
        raise ValueError(f"{path}: {_strip_path(exc, path)}") from None
    except Exception as exc:  # a damaged file makes each reader fail its own way (EOFError, KeyError, ...)
        raise ValueError(f"{path}: not a readable {suffix} pattern ({type(exc).__name__}: "
                         f"{_strip_path(exc, path) or 'no detail'})") from None
    data = np.asarray(data)
    if data.dtype.kind not in "biuf":
        raise ValueError(f"{path}: holds {data.dtype} values, not real intensities")
    data = data.astype(np.float64)
    meta = meta if isinstance(meta, dict) else {}
    refl, thick = meta.get("reflections"), meta.get("thickness_nm")
    if data.ndim == 2:
        data = data[None]
    elif data.ndim == 4:
        if data.shape[0] != 1:
            raise ValueError(f"{path}: {data.shape[0]} thicknesses; a measured pattern has one")
        data = data[0]
    elif data.ndim == 3 and isinstance(thick, (list, tuple)) and len(thick) > 1:
        raise ValueError(f"{path}: {len(thick)} thicknesses; a measured pattern has one")
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(f"{path}: expected square images (R, n, n), got shape {data.shape}")
    if data.shape[0] == 0 or data.shape[1] < 4 or data.shape[1] % 2:
        raise ValueError(f"{path}: {data.shape[0]} image(s) of {data.shape[1]}x{data.shape[2]} pixels; FELIX needs "
                         f"square images with an even edge of at least 4 pixels (2N x 2N)")
    bad = ~np.isfinite(data)
    if bad.any():
        raise ValueError(f"{path}: {int(bad.sum())} pixels are NaN or infinite")
    flat = [k for k, image in enumerate(data) if image.min() == image.max()]
    if flat:
        raise ValueError(f"{path}: image {flat[0]} is constant ({data[flat[0]].flat[0]:g}); FELIX's correlation "
                         f"needs contrast")
    reflections = None
    if refl is not None:
        try:
            reflections = tuple(tuple(int(x) for x in r) for r in refl)
            if any(len(r) != 3 for r in reflections):
                raise ValueError
        except (TypeError, ValueError):
            raise ValueError(f"{path}: its metadata's reflections {refl!r} are not (h, k, l) triples") from None
        if len(reflections) != len(data):
            raise ValueError(f"{path}: {len(data)} images but {len(reflections)} reflections in its metadata")
    return data, reflections


def _read_tiff(path: Path):
    import tifffile

    with tifffile.TiffFile(path) as tif:
        data = tif.asarray()
        desc = tif.pages[0].description if tif.pages else ""
    try:
        meta = json.loads(desc) if desc else {}
    except ValueError:
        meta = {}
    return data, meta


def _read_npy(path: Path):
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc):  # numpy's message advises allow_pickle=True, which could run code
            raise ValueError("holds pickled Python objects, not an array of numbers; refused (loading them "
                             "could run code)") from None
        raise
    side = path.with_suffix(".json")
    meta = {}
    if side.is_file():
        try:
            meta = json.loads(side.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise ValueError(f"its sidecar {side.name} is not JSON") from None
    return data, meta


def _read_h5(path: Path):
    import h5py

    with h5py.File(path, "r") as f:
        if "patterns" not in f:
            raise ValueError("no dataset 'patterns'")
        data = f["patterns"][()]
        meta = json.loads(f.attrs.get("metadata", "{}"))
    return data, meta


def _read_felix_image(path: Path):
    data = read_image(path)[None]
    try:
        meta = {"reflections": [list(parse_image_name(path.name)[1])]}
    except ValueError:
        meta = {}
    return data, meta


_PATTERN_READERS = {".tif": _read_tiff, ".tiff": _read_tiff, ".npy": _read_npy, ".h5": _read_h5, ".hdf5": _read_h5,
                    ".bin": _read_felix_image, ".img": _read_felix_image}


def _strip_path(exc: BaseException, path: Path) -> str:
    """The exception's message on one line, without a repeat of the file name at its start."""
    text = " ".join(str(exc).split())
    for prefix in (f"{path}: ", f"{path.name}: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text


def resolve_sites(sites, crystal: Crystal) -> tuple[int, ...]:
    """1-based site indices (FELIX's ``IAtomicSites``) from indices or site labels; None means all."""
    n = len(crystal.sites)
    if sites is None:
        return tuple(range(1, n + 1))
    if isinstance(sites, (str, int)):
        sites = [sites]
    listing = ", ".join(f"{i} {s.label}" for i, s in enumerate(crystal.sites, start=1))
    labels = {s.label: i for i, s in enumerate(crystal.sites, start=1)}
    out: list[int] = []
    for item in sites:
        text = str(item).strip()
        if text in labels:
            index = labels[text]
        else:
            try:
                index = int(text)
            except ValueError:
                raise ValueError(f"--sites {text!r}: no such site in {crystal.name} (its sites: {listing})") from None
            if not 1 <= index <= n:
                raise ValueError(f"--sites {index}: {crystal.name} has sites 1..{n} ({listing})")
        if index in out:
            raise ValueError(f"--sites: site {index} ({crystal.sites[index - 1].label}) is given twice")
        out.append(index)
    if not out:
        raise ValueError(f"--sites: no site given (the sites of {crystal.name}: {listing})")
    return tuple(out)


def _coordinates_unsupported(crystal: Crystal, sites) -> tuple[str, str] | None:
    """Why FELIX cannot refine atom coordinates (B) of ``sites``: ``(kind, reason)``, or None.

    ``kind`` is ``"group"`` (FELIX aborts), ``"wyckoff"`` (no Wyckoff letter to look up) or
    ``"fixed"`` (no chosen site has a free coordinate, so B refines nothing).
    """
    if crystal.spacegroup_number not in _MODE_B_GROUPS:
        return "group", (f"FELIX HEAD refines coordinates in one cubic group only, F-43m (216), and aborts on "
                         f"{crystal.spacegroup_symbol} ({crystal.spacegroup_number})")
    letters = wyckoff_letters(crystal)
    unknown = [crystal.sites[i - 1].label for i in sites if not letters[i - 1]]
    if unknown:
        return "wyckoff", f"FELIX needs the Wyckoff letters of the refined sites; unknown for {', '.join(unknown)}"
    from lacbed_refine.structure.parameters import allowed_directions

    if not any(len(allowed_directions(crystal, i - 1)) for i in sites):
        names = ", ".join(crystal.sites[i - 1].label for i in sites)
        return "fixed", f"no free coordinate: every refined site ({names}) sits on a fixed special position"
    return None


def refine_letters(refine, crystal: Crystal, sites=None, *, option: str = "--refine",
                   warn: bool = True) -> tuple[str, tuple[str, ...]]:
    """The FELIX refinement letters to write for ``crystal``, and what the default left out.

    Parameters
    ----------
    refine : str or None
        Letters (B coordinates, C occupancy, D isotropic B, F cell edge, H convergence angle, or A
        structure factors alone; commas and spaces ignored). None asks for :data:`DEFAULT_REFINE`
        adapted to the crystal: B is dropped outside F-43m, where FELIX HEAD cannot refine
        coordinates, and when no refined site has a free coordinate; a warning says so.
    crystal : Crystal
    sites : sequence of int, optional
        1-based refined sites (default all).
    option : str
        The option named in messages (``fit --felix-seed`` passes its own).
    warn : bool
        Log what the default dropped (and given letters that refine nothing) as warnings.

    Returns
    -------
    letters : str
        In FELIX's order, e.g. ``"BD"``.
    dropped : tuple of str
        ``"B: why"`` for each letter the default dropped.

    Raises
    ------
    ValueError
        One line naming ``option``: unknown letters, letters FELIX HEAD aborts on, A with other
        letters, or given letters FELIX cannot refine for this crystal (B outside F-43m, B alone
        when no site can move).
    """
    sites = resolve_sites(sites, crystal)
    given = refine is not None
    text = DEFAULT_REFINE if refine is None else str(refine)
    letters = "".join(dict.fromkeys(text.upper().replace(",", "").replace(" ", "")))
    if not letters:
        raise ValueError(f"{option} {text!r}: give refinement letters from {REFINE_LETTERS} (e.g. 'D' or 'BD')")
    if "S" in letters:
        raise ValueError(f"{option} {text!r}: S is FELIX's simulation mode, not a refinement; use letters from "
                         f"{REFINE_LETTERS}")
    aborting = [c for c in letters if c in _ABORTING_LETTERS]
    if aborting:
        what = ", ".join(f"{c} ({_ABORTING_LETTERS[c]})" for c in aborting)
        raise ValueError(f"{option} {text!r}: FELIX HEAD aborts on {what}: not implemented there")
    unknown = [c for c in letters if c not in REFINE_LETTERS]
    if unknown:
        raise ValueError(f"{option} {text!r}: unknown letter(s) {''.join(unknown)}; use letters from {REFINE_LETTERS}")
    if "A" in letters and len(letters) > 1:
        raise ValueError(f"{option} {text!r}: FELIX refines structure factors (A) only on their own")
    if "F" in letters and crystal.spacegroup_number in _NO_CELL_REFINEMENT:
        raise ValueError(f"{option} {text!r}: F (cell): FELIX HEAD stops with an error on trigonal space groups "
                         f"(143-167), here {crystal.spacegroup_symbol} ({crystal.spacegroup_number})")
    dropped: list[str] = []
    if "B" in letters:
        problem = _coordinates_unsupported(crystal, sites)
        if problem is not None:
            kind, why = problem
            if not given:
                letters = letters.replace("B", "")
                dropped.append(f"B: {why}")
                if warn:
                    log.warning("%s: refining %s, not the default %s: B (atom coordinates) dropped: %s",
                                crystal.name, letters, DEFAULT_REFINE, why)
            elif kind != "fixed" or letters == "B":
                raise ValueError(f"{option} {text!r}: B (atom coordinates): {why}"
                                 + ("; refine D, C or F instead" if kind == "group" else ""))
            elif warn:
                log.warning("%s: %s %s: B (atom coordinates) will refine nothing: %s", crystal.name, option, text, why)
    return "".join(c for c in REFINE_LETTERS if c in letters), tuple(dropped)


def export_refinement(
    crystal: Crystal,
    pattern,
    out_dir,
    refine: str | None = None,
    settings: SimulationSettings | None = None,
    *,
    reflections=None,
    sites=None,
    overwrite: bool = False,
    **felix_options,
) -> FelixExport:
    """Write a complete FELIX refinement set for ``crystal`` against a measured ``pattern``.

    Everything is checked before anything is written, and the files are written into a temporary
    folder first and moved into place only when all of them are complete, so a failure leaves
    ``out_dir`` as it was.

    Parameters
    ----------
    crystal : Crystal
        The starting structure.
    pattern : ndarray, shape (R, n, n) or (n, n), or str or os.PathLike, or None
        Measured images ``[row, col] = [k_y, k_x]`` (any intensity scale), or a file
        (:func:`read_pattern`). None writes the inputs only; FELIX then needs the images put in
        ``LR_<2N>x<2N>/`` by hand.
    out_dir : str or os.PathLike
        Folder to write (created if needed). Other files in it are left alone.
    refine : str, optional
        FELIX refinement letters: B coordinates, C occupancy, D isotropic B, F cell edge,
        H convergence angle, or A (structure factors, alone). Default :data:`DEFAULT_REFINE`
        less what FELIX cannot refine for ``crystal``, with a warning (:func:`refine_letters`);
        letters given explicitly that FELIX cannot refine are an error.
    settings : SimulationSettings, optional
        Geometry, beams and thickness grid; default: the paper preset for ``crystal`` at the
        pattern's size. FELIX refines the thickness as the best point of the grid.
    reflections : sequence of (h, k, l), optional
        What the images are; default: the pattern file's metadata, else ``settings.reflections``.
    sites : sequence of int or str, optional
        Sites to refine (``IAtomicSites``), as 1-based indices or labels; default all sites.
    overwrite : bool
        Replace the files of an earlier export in ``out_dir`` (``felix.inp``, ``felix.cif``,
        ``felix.hkl``, ``lacbed_export.json``, the images); without it they are an error.
    **felix_options
        :class:`~lacbed_felix.FelixInput` fields overriding :data:`REFINEMENT_DEFAULTS` and the
        mapping of ``settings`` (e.g. ``refine_method=1``, ``thickness_delta=50.0``).

    Returns
    -------
    FelixExport

    Raises
    ------
    ValueError
        One line: the pattern and settings disagree (size, number of reflections), a reflection is
        outside FELIX's beam pool, FELIX HEAD cannot refine what is asked (e.g. coordinates outside
        F-43m), a site does not exist, or ``out_dir`` holds an export already (without
        ``overwrite``) or cannot be a folder.
    """
    images, file_reflections = (None, None)
    if pattern is not None:
        if isinstance(pattern, (str, os.PathLike)):
            images, file_reflections = read_pattern(pattern)
        else:
            images = np.asarray(pattern, dtype=np.float64)
            images = images[None] if images.ndim == 2 else images
            if images.ndim != 3 or images.shape[1] != images.shape[2]:
                raise ValueError(f"pattern must have shape (R, n, n) or (n, n), got {np.shape(pattern)}")
        if not np.isfinite(images).all():
            raise ValueError("pattern has non-finite values")
    if settings is None:
        from lacbed_refine.simulators.bloch import settings_for

        settings = settings_for(crystal, size=images.shape[-1] if images is not None else None)
    elif images is not None and settings.size != images.shape[-1]:
        raise ValueError(f"pattern images are {images.shape[-1]} pixels, settings.size is {settings.size}")
    if reflections is None:
        reflections = file_reflections if file_reflections is not None else settings.reflections
    reflections = tuple(tuple(int(x) for x in r) for r in reflections)
    if images is not None and len(reflections) != len(images):
        raise ValueError(f"{len(images)} pattern images but {len(reflections)} reflections {list(reflections)}")
    if len(set(reflections)) != len(reflections):
        raise ValueError(f"--reflections: {list(reflections)} repeats a reflection")
    settings = replace(settings, reflections=reflections)
    sites = resolve_sites(sites, crystal)
    letters, dropped = refine_letters(refine, crystal, sites)
    options = {**REFINEMENT_DEFAULTS, **felix_options, "refine_mode": letters, "atomic_sites": sites}
    inp = felix_input_for(crystal, settings, **options)
    _check_reflections(crystal, settings, inp, reflections)
    title = f"FELIX refinement ({letters}) of {crystal.name}, written by lacbed-refine-felix {__version__}"
    format_felix_inp(inp, title=title)  # checks every value FELIX reads
    format_felix_cif(crystal, expand=False)  # checks FELIX reads the asymmetric unit as it is meant
    chem = felix_chem(crystal)

    folder = Path(out_dir)
    lr_name = experimental_folder_name(inp.size)
    targets = list(_EXPORT_FILES)
    if images is not None:
        targets += [f"{lr_name}/{image_name(chem, r, '.img')}" for r in reflections]
    _check_output_folder(folder, targets, overwrite)

    def write(into: Path) -> list[str]:
        write_felix_inp(inp, into / "felix.inp", title=title)
        if write_felix_cif(crystal, into / "felix.cif", expand=False) != chem:
            raise RuntimeError("felix.cif names another chemical prefix than felix_chem")  # pragma: no cover
        write_hkl(into / "felix.hkl", reflections)
        names: list[str] = []
        if images is not None:
            (into / lr_name).mkdir(exist_ok=True)
            for r, image in zip(reflections, images):
                name = f"{lr_name}/{image_name(chem, r, '.img')}"
                write_image(into / name, image)
                names.append(name)
        manifest = {
            "written_by": f"lacbed-refine-felix {__version__}",
            "crystal": crystal.name,
            "source": crystal.source,
            "chem": chem,
            "refine": letters,
            "dropped_from_default": list(dropped),
            "reflections": [list(r) for r in reflections],
            "images": names,
            "felix_inp": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(inp).items()
                          if k not in _NOT_IN_V13},
        }
        (into / "lacbed_export.json").write_text(json.dumps(manifest, indent=2) + "\n")
        return names

    written = [folder / name for name in _write_folder(folder, write)]
    if images is None:
        log.warning("%s: no pattern given; put the measured images in %s/%s before running FELIX",
                    folder, lr_name, image_name(chem, reflections[0], ".img"))
    log.info("%s: FELIX refinement set (%s) with %d image(s)", folder, letters, len(written))
    return FelixExport(folder=folder, chem=chem, input=inp, reflections=reflections, images=tuple(written),
                       dropped=dropped)


def _check_output_folder(folder: Path, targets, overwrite: bool) -> None:
    """Refuse an output that is not a folder, or one holding files of an export (unless ``overwrite``)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"-o {folder}: exists and is not a folder")
    for parent in folder.parents:  # the first ancestor that exists must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"-o {folder}: cannot be created, {parent} is a file")
            break
    if folder.is_dir() and not overwrite:
        existing = [name for name in targets if (folder / name).exists()]
        if existing:
            shown = ", ".join(existing[:4]) + (f" and {len(existing) - 4} more" if len(existing) > 4 else "")
            raise ValueError(f"-o {folder}: holds a FELIX export already ({shown}); pass --overwrite to replace it")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_folder(folder: Path, write) -> list[str]:
    """Run ``write(staging)`` in a temporary folder next to (or inside) ``folder`` and move what it
    wrote into ``folder`` only when it succeeded; a failure leaves nothing behind."""
    created: list[Path] = []
    try:
        for parent in reversed(folder.parents):
            if not parent.exists():
                parent.mkdir()
                created.append(parent)
        new = not folder.exists()
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp",
                                        dir=folder.parent if new else folder))
    except OSError as exc:
        _remove_empty(created)
        raise ValueError(f"-o {folder}: cannot write there ({exc.strerror or exc})") from None
    try:
        names = write(staging)
        if new:
            os.chmod(staging, 0o777 & ~_umask())  # mkdtemp makes 0700; a new folder gets the umask's mode
            os.rename(staging, folder)
        else:
            for name in [*_EXPORT_FILES, *names]:
                target = folder / name
                target.parent.mkdir(exist_ok=True)
                os.replace(staging / name, target)
        return names
    except BaseException:
        _remove_empty(created)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _remove_empty(folders: list[Path]) -> None:
    for path in reversed(folders):
        try:
            path.rmdir()
        except OSError:
            break


def export_file(cif, out_dir, *, pattern=None, refine: str | None = None, reflections=None, sites=None,
                thickness_nm=None, overwrite: bool = False, **setting_options) -> FelixExport:
    """Read ``cif`` and write a FELIX refinement set (the library behind ``felix export``).

    Every input is checked before anything is written; errors are one line naming the option.

    Parameters
    ----------
    cif : str or os.PathLike
    out_dir : str or os.PathLike
    pattern : str or os.PathLike, optional
        Measured pattern file (:func:`read_pattern`).
    refine : str, optional
        FELIX refinement letters; default :data:`DEFAULT_REFINE` adapted to the crystal
        (:func:`refine_letters`).
    reflections : sequence of (h, k, l), optional
    sites : sequence of int or str, optional
        Sites to refine, 1-based indices or labels.
    thickness_nm : (start, stop, step), optional
        FELIX's thickness grid [nm]; default the preset's thicknesses.
    overwrite : bool
        Replace an earlier export in ``out_dir``.
    **setting_options
        Options of :func:`lacbed_refine.simulators.bloch.settings_for` (``kv``, ``half_width``,
        ``n_beams``, ``g_limit``, ``strong_beams``, ``absorption``, ``absorption_model``,
        ``form_factors``, ``zone``, ``x_direction``, ``normal``).
    """
    from lacbed_refine.io.cif import read_cif
    from lacbed_refine.simulators.bloch import settings_for

    grid = thickness_grid_nm(thickness_nm) if thickness_nm is not None else None
    crystal = read_cif(cif)
    images, file_reflections = read_pattern(pattern) if pattern is not None else (None, None)
    if images is not None:
        n, named = images.shape[-1], reflections if reflections is not None else file_reflections
        if n > MAX_FELIX_SIZE:
            raise ValueError(f"--pattern {pattern}: {n}x{n} pixels; FELIX's images are at most "
                             f"{MAX_FELIX_SIZE}x{MAX_FELIX_SIZE} (IPixelCount <= {MAX_FELIX_SIZE // 2})")
        if named is None and len(images) != 1:
            raise ValueError(f"--pattern {pattern}: {len(images)} images and nothing says which reflections they "
                             f"are; give --reflections")
        if named is not None and len(named) != len(images):
            raise ValueError(f"--pattern {pattern}: {len(images)} images but {len(named)} reflections "
                             f"{[tuple(r) for r in named]}")
    options = {k: v for k, v in setting_options.items() if v is not None}
    settings = settings_for(crystal, thickness_nm=grid, size=images.shape[-1] if images is not None else None,
                            **options)
    if reflections is None:
        reflections = file_reflections
    return export_refinement(crystal, images, out_dir, refine, settings, reflections=reflections, sites=sites,
                             overwrite=overwrite)


def thickness_grid_nm(values) -> list[float]:
    """FELIX's thickness grid from ``(start, stop, step)`` [nm]: start, start + step, … up to stop.

    Raises
    ------
    ValueError
        One line naming ``--thickness``: not three finite numbers, start not in (0, stop], stop
        beyond the engine's limit, a step that is not positive, or more than
        :data:`MAX_GRID_THICKNESSES` thicknesses.
    """
    from lacbed_refine.conventions import NM
    from lacbed_refine.engine.geometry import MAX_THICKNESS_A

    try:
        start, stop, step = (float(x) for x in values)
    except (TypeError, ValueError):
        raise ValueError(f"--thickness {_show(values)}: give START,STOP,STEP in nm, e.g. 50,200,50") from None
    shown = f"--thickness {start:g},{stop:g},{step:g}"
    limit = MAX_THICKNESS_A / NM
    if not all(math.isfinite(x) for x in (start, stop, step)):
        raise ValueError(f"{shown}: START, STOP and STEP must be finite numbers of nm")
    if not 0 < start <= stop <= limit:
        raise ValueError(f"{shown}: need 0 < START <= STOP <= {limit:g} nm")
    if not step > 0:
        raise ValueError(f"{shown}: STEP must be positive")
    count = math.floor((stop - start) / step * (1 + 1e-12)) + 1
    if count > MAX_GRID_THICKNESSES:
        raise ValueError(f"{shown}: {count:,} thicknesses; FELIX's grid holds at most {MAX_GRID_THICKNESSES}")
    return [start + k * step for k in range(count)]


def _show(values) -> str:
    try:
        return ",".join(f"{float(x):g}" for x in values)
    except (TypeError, ValueError):
        return repr(values)
