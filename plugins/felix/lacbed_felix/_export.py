"""Seeding a FELIX refinement: a structure and a measured pattern in, a folder FELIX refines in out.

The folder holds ``felix.inp`` (refinement letters and method), ``felix.cif``, ``felix.hkl`` and
the measured images where FELIX's refinement looks first: ``LR_<2N>x<2N>/<chem>_<±h><±k><±l>.img``
(felix-spec §1.3), plus ``lacbed_export.json`` recording what was written. ``cd`` there and run
``felix``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from lacbed_refine.crystal import Crystal
from lacbed_refine.geometry import SimulationSettings

from ._cif import wyckoff_letters, write_felix_cif
from ._files import experimental_folder_name, image_name, parse_image_name, read_image, write_hkl, write_image
from ._inp import REFINE_LETTERS, FelixInput, _check_reflections, felix_input_for, write_felix_inp
from ._version import __version__

__all__ = ["export_refinement", "export_file", "read_pattern", "FelixExport", "REFINEMENT_DEFAULTS"]

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

# Cubic groups with FELIX HEAD coordinate-refinement (mode B) tables: F-43m only (felix-spec §5).
_MODE_B_GROUPS = {216}


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
    """

    folder: Path
    chem: str
    input: FelixInput
    reflections: tuple[tuple[int, int, int], ...]
    images: tuple[Path, ...]


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
    meta: dict = {}
    if suffix in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            desc = tif.pages[0].description if tif.pages else ""
        try:
            meta = json.loads(desc) if desc else {}
        except ValueError:
            meta = {}
    elif suffix == ".npy":
        data = np.load(path)
        side = path.with_suffix(".json")
        if side.is_file():
            meta = json.loads(side.read_text())
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            if "patterns" not in f:
                raise ValueError(f"{path}: no dataset 'patterns'")
            data = f["patterns"][()]
            meta = json.loads(f.attrs.get("metadata", "{}"))
    elif suffix in (".bin", ".img"):
        data = read_image(path)[None]
        try:
            meta = {"reflections": [list(parse_image_name(path.name)[1])]}
        except ValueError:
            meta = {}
    else:
        raise ValueError(f"{path}: unknown pattern type {suffix!r}; use .tif, .npy, .h5, .bin or .img")
    data = np.asarray(data, dtype=np.float64)
    refl = meta.get("reflections") if isinstance(meta, dict) else None
    thick = meta.get("thickness_nm") if isinstance(meta, dict) else None
    if data.ndim == 2:
        data = data[None]
    elif data.ndim == 4:
        if data.shape[0] != 1:
            raise ValueError(f"{path}: {data.shape[0]} thicknesses; a measured pattern has one")
        data = data[0]
    elif data.ndim == 3 and thick is not None and len(thick) > 1:
        raise ValueError(f"{path}: {len(thick)} thicknesses; a measured pattern has one")
    if data.ndim != 3 or data.shape[1] != data.shape[2]:
        raise ValueError(f"{path}: expected square images (R, n, n), got shape {data.shape}")
    reflections = None
    if refl is not None:
        reflections = tuple(tuple(int(x) for x in r) for r in refl)
        if len(reflections) != len(data):
            raise ValueError(f"{path}: {len(data)} images but {len(reflections)} reflections in its metadata")
    return data, reflections


def _parse_refine(refine: str, crystal: Crystal, sites) -> str:
    letters = "".join(dict.fromkeys(str(refine).upper().replace(",", "").replace(" ", "")))
    if not letters or "S" in letters:
        raise ValueError(f"refine must be refinement letters from {REFINE_LETTERS} (e.g. 'BD'), got {refine!r}")
    if "B" in letters:
        if crystal.spacegroup_number not in _MODE_B_GROUPS:
            raise ValueError(
                f"refine B (atom coordinates): FELIX HEAD has coordinate-refinement tables for one cubic "
                f"group only, F-43m (216), and aborts on {crystal.spacegroup_symbol} "
                f"({crystal.spacegroup_number}); refine D, C or F instead"
            )
        letters_by_site = wyckoff_letters(crystal)
        unknown = [crystal.sites[i - 1].label for i in sites if not letters_by_site[i - 1]]
        if unknown:
            raise ValueError(f"refine B needs Wyckoff letters; unknown for site(s) {unknown}")
    return letters


def export_refinement(
    crystal: Crystal,
    pattern,
    out_dir,
    refine: str = "BD",
    settings: SimulationSettings | None = None,
    *,
    reflections=None,
    sites=None,
    **felix_options,
) -> FelixExport:
    """Write a complete FELIX refinement set for ``crystal`` against a measured ``pattern``.

    Parameters
    ----------
    crystal : Crystal
        The starting structure.
    pattern : ndarray, shape (R, n, n) or (n, n), or str or os.PathLike, or None
        Measured images ``[row, col] = [k_y, k_x]`` (any intensity scale), or a file
        (:func:`read_pattern`). None writes the inputs only; FELIX then needs the images put in
        ``LR_<2N>x<2N>/`` by hand.
    out_dir : str or os.PathLike
        Folder to write (created; existing FELIX inputs in it are replaced).
    refine : str
        FELIX refinement letters: B coordinates, C occupancy, D isotropic B, F cell edge,
        H convergence angle, or A (structure factors, alone).
    settings : SimulationSettings, optional
        Geometry, beams and thickness grid; default: the paper preset for ``crystal`` at the
        pattern's size. FELIX refines the thickness as the best point of the grid.
    reflections : sequence of (h, k, l), optional
        What the images are; default: the pattern file's metadata, else ``settings.reflections``.
    sites : sequence of int, optional
        1-based site indices to refine (``IAtomicSites``); default all sites.
    **felix_options
        :class:`~lacbed_felix.FelixInput` fields overriding :data:`REFINEMENT_DEFAULTS` and the
        mapping of ``settings`` (e.g. ``refine_method=1``, ``thickness_delta=50.0``).

    Returns
    -------
    FelixExport

    Raises
    ------
    ValueError
        If the pattern and settings disagree (size, number of reflections), a reflection is outside
        FELIX's beam pool, or FELIX HEAD cannot refine what is asked (e.g. coordinates outside F-43m).
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
        from lacbed_refine.simulation import settings_for

        settings = settings_for(crystal, size=images.shape[-1] if images is not None else None)
    elif images is not None and settings.size != images.shape[-1]:
        raise ValueError(f"pattern images are {images.shape[-1]} pixels, settings.size is {settings.size}")
    if reflections is None:
        reflections = file_reflections if file_reflections is not None else settings.reflections
    reflections = tuple(tuple(int(x) for x in r) for r in reflections)
    if images is not None and len(reflections) != len(images):
        raise ValueError(f"{len(images)} pattern images but {len(reflections)} reflections {list(reflections)}")
    settings = replace(settings, reflections=reflections)
    n_sites = len(crystal.sites)
    sites = tuple(range(1, n_sites + 1)) if sites is None else tuple(int(s) for s in sites)
    bad = [s for s in sites if not 1 <= s <= n_sites]
    if bad or not sites:
        raise ValueError(f"sites must be 1-based indices into the {n_sites} CIF sites, got {list(sites) or '()'}")
    letters = _parse_refine(refine, crystal, sites)
    options = {**REFINEMENT_DEFAULTS, **felix_options, "refine_mode": letters, "atomic_sites": sites}
    inp = felix_input_for(crystal, settings, **options)
    _check_reflections(crystal, inp, reflections)

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_felix_inp(inp, folder / "felix.inp", title=f"FELIX refinement ({letters}) of {crystal.name}, "
                                                     f"written by lacbed-refine-felix {__version__}")
    chem = write_felix_cif(crystal, folder / "felix.cif")
    write_hkl(folder / "felix.hkl", reflections)
    written: list[Path] = []
    if images is not None:
        lr = folder / experimental_folder_name(inp.size)
        lr.mkdir(exist_ok=True)
        for r, image in zip(reflections, images):
            written.append(write_image(lr / image_name(chem, r, ".img"), image))
    else:
        log.warning("%s: no pattern given; put the measured images in %s/%s before running FELIX",
                    folder, experimental_folder_name(inp.size), image_name(chem, reflections[0], ".img"))
    manifest = {
        "written_by": f"lacbed-refine-felix {__version__}",
        "crystal": crystal.name,
        "source": crystal.source,
        "chem": chem,
        "refine": letters,
        "reflections": [list(r) for r in reflections],
        "images": [str(p.relative_to(folder)) for p in written],
        "felix_inp": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(inp).items()},
    }
    (folder / "lacbed_export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("%s: FELIX refinement set (%s) with %d image(s)", folder, letters, len(written))
    return FelixExport(folder=folder, chem=chem, input=inp, reflections=reflections, images=tuple(written))



def export_file(cif, out_dir, *, pattern=None, refine: str = "BD", reflections=None, sites=None,
                thickness_nm=None, **setting_options) -> FelixExport:
    """Read ``cif`` and write a FELIX refinement set (the library behind ``felix export``).

    Parameters
    ----------
    cif : str or os.PathLike
    out_dir : str or os.PathLike
    pattern : str or os.PathLike, optional
        Measured pattern file (:func:`read_pattern`).
    refine : str
        FELIX refinement letters.
    reflections : sequence of (h, k, l), optional
    sites : sequence of int, optional
        1-based sites to refine.
    thickness_nm : (start, stop, step), optional
        FELIX's thickness grid [nm]; default the preset's thicknesses.
    **setting_options
        Options of :func:`lacbed_refine.simulation.settings_for` (``kv``, ``half_width``,
        ``n_beams``, ``g_limit``, ``strong_beams``, ``absorption``, ``form_factors``).
    """
    from lacbed_refine.crystal import read_cif
    from lacbed_refine.simulation import settings_for

    crystal = read_cif(cif)
    images, file_reflections = read_pattern(pattern) if pattern is not None else (None, None)
    grid = None
    if thickness_nm is not None:
        start, stop, step = (float(x) for x in thickness_nm)
        if not (step > 0 and stop >= start > 0):
            raise ValueError(f"thickness must be START,STOP,STEP in nm with 0 < START <= STOP, STEP > 0, got {thickness_nm}")
        grid = [start + k * step for k in range(int(round((stop - start) / step)) + 1)]
    options = {k: v for k, v in setting_options.items() if v is not None}
    settings = settings_for(crystal, thickness_nm=grid, size=images.shape[-1] if images is not None else None,
                            **options)
    if reflections is None:
        reflections = file_reflections
    return export_refinement(crystal, images, out_dir, refine, settings, reflections=reflections, sites=sites)
