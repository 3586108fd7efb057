"""Pattern and image files: reading measured patterns, resampling them onto the simulation grid,
and atomic writers for TIFF / .npy / .h5 stacks and PNG previews.

Stacks are float32 arrays of shape (T, R, H, W): thickness × reflection × rows × cols, intensities as
fractions of the incident beam (see :mod:`.conventions`). Measured patterns are 2-D ``[row, col] =
[k_y, k_x]`` arrays in any units: refinement compares by correlation, so scale and offset never matter.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = [
    "atomic_path",
    "check_new_output",
    "check_writable_folder",
    "write_stack",
    "write_preview",
    "STACK_SUFFIXES",
    "PATTERN_SUFFIXES",
    "PatternError",
    "read_pattern",
    "check_pattern",
    "resample_pattern",
]

STACK_SUFFIXES = (".tif", ".tiff", ".npy", ".h5", ".hdf5")
PATTERN_SUFFIXES = (".tif", ".tiff", ".npy", ".bin", ".img", ".png", ".dm3", ".dm4")


class PatternError(ValueError):
    """A measured pattern that cannot be used; the message names the file and the problem."""


def read_pattern(path) -> np.ndarray:
    """Read a measured pattern as a float64 2-D array ``[row, col]``.

    Formats by extension: TIFF (first page), ``.npy``, FELIX ``.bin``/``.img`` (headerless
    little-endian float64, square, size from the file length), PNG (grey; colour is averaged),
    DM3/DM4 through rosettasciio (``pip install rosettasciio``).

    Raises
    ------
    PatternError
        One line naming the file: unreadable, empty, not 2-D, not finite, or constant.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise PatternError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise PatternError(f"{path}: empty file")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                data = tif.pages[0].asarray()
        elif suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif suffix in (".bin", ".img"):
            raw = np.fromfile(path, dtype="<f8")
            side = int(round(np.sqrt(raw.size)))
            if side * side != raw.size or path.stat().st_size != 8 * raw.size:
                raise PatternError(
                    f"{path}: {path.stat().st_size} bytes is not a square image of float64 (FELIX .bin/.img)"
                )
            data = raw.reshape(side, side)
        elif suffix == ".png":
            import matplotlib.image

            data = matplotlib.image.imread(path)
            if data.ndim == 3:
                data = data[..., :3].mean(axis=-1)
        elif suffix in (".dm3", ".dm4"):
            try:
                from rsciio.digitalmicrograph import file_reader
            except ImportError:
                raise PatternError(f"{path}: reading DM3/DM4 needs rosettasciio (pip install rosettasciio)") from None
            data = file_reader(str(path))[0]["data"]
        else:
            raise PatternError(f"{path}: unknown pattern type {suffix!r}; use one of {', '.join(PATTERN_SUFFIXES)}")
    except PatternError:
        raise
    except Exception as exc:  # a reader's own error, whatever its type: report it on one line
        raise PatternError(f"{path}: cannot read pattern ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    return check_pattern(np.asarray(data, dtype=np.float64), name=str(path))


def check_pattern(data: np.ndarray, *, name: str = "pattern") -> np.ndarray:
    """Squeeze singleton axes and check the pattern is 2-D, finite and not constant."""
    data = np.squeeze(np.asarray(data, dtype=np.float64))
    if data.ndim != 2:
        raise PatternError(f"{name}: a pattern must be one 2-D image, got shape {data.shape}")
    if min(data.shape) < 4:
        raise PatternError(f"{name}: image of shape {data.shape} is too small")
    bad = ~np.isfinite(data)
    if bad.any():
        raise PatternError(f"{name}: {int(bad.sum())} pixels are NaN or infinite; mask them or fill them first")
    if np.ptp(data) == 0:
        raise PatternError(f"{name}: the image is constant")
    return data


def resample_pattern(data: np.ndarray, half_width: float, size: int, sim_half_width: float) -> np.ndarray:
    """Resample a measured pattern onto the simulation's pixel grid.

    Parameters
    ----------
    data : ndarray, shape (H, W)
        Measured pattern, centred on the zone axis, spanning ±``half_width`` [Å⁻¹] along both axes.
    half_width : float
        Tilt half-width of the measured pattern [Å⁻¹, 1/d units].
    size : int
        Simulation pattern edge [pixels].
    sim_half_width : float
        Simulation tilt half-width [Å⁻¹].

    Returns
    -------
    ndarray, shape (size, size)
        Linear interpolation at the simulation's pixel centres (:func:`geometry.tilt_grid`); points
        outside the measured area take the nearest edge value.
    """
    from scipy.ndimage import map_coordinates

    from .geometry import tilt_grid

    h, w = data.shape
    kx, ky = tilt_grid(size, sim_half_width)
    # measured pixel (r, c) sits at k = ((c - W/2 + ½) Δx, (r - H/2 + ½) Δy)
    col = kx / (2 * half_width / w) + w / 2 - 0.5
    row = ky / (2 * half_width / h) + h / 2 - 0.5
    return map_coordinates(data, [row, col], order=1, mode="nearest")


def check_new_output(path, *, overwrite: bool = False, option: str = "-o", inputs=()) -> Path:
    """Check, before any work, that ``path`` may be written: not one of ``inputs``, not an existing
    file unless ``overwrite``, and its folder creatable and writable.

    Raises
    ------
    ValueError
        One line naming ``option`` and the path.
    """
    path = Path(path)
    for src in inputs:
        if src is not None and Path(src).exists() and path.exists() and path.resolve() == Path(src).resolve():
            raise ValueError(f"{option} {path}: is the input file; write to another path")
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder, a file path is needed")
    if path.exists() and not overwrite:
        raise ValueError(f"{option} {path}: exists; pass --overwrite to replace it")
    check_writable_folder(path.parent, option=option)
    return path


def check_writable_folder(folder, *, option: str = "-o") -> Path:
    """Create ``folder`` if needed and check that files can be created in it (before any work)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{option} {folder}: cannot write there ({exc.strerror or exc})") from None
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds,
    so readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp creates 0600; give the file the mode any new file of the user's gets
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_stack(path, stack: np.ndarray, *, labels: list[str], metadata: dict) -> Path:
    """Write a (T, R, H, W) float32 stack by extension, atomically.

    - ``.tif``/``.tiff``: one page per (thickness, reflection), thickness-major, page descriptions
      hold the labels, the first page carries ``metadata`` as JSON;
    - ``.npy``: the array itself (metadata in a ``.json`` sidecar);
    - ``.h5``/``.hdf5``: dataset ``patterns`` with ``labels`` and attributes from ``metadata``.

    Parameters
    ----------
    path : str or Path
    stack : ndarray, shape (T, R, H, W)
    labels : list of str, length T*R
        Page labels, e.g. ``"t=500A hkl=0 0 0"``.
    metadata : dict
        JSON-serialisable settings to record.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    if stack.ndim != 4:
        raise ValueError(f"stack must have shape (T, R, H, W), got {stack.shape}")
    if suffix not in STACK_SUFFIXES:
        raise ValueError(f"{path}: unknown output type {suffix!r}; use one of {', '.join(STACK_SUFFIXES)}")
    t, r, h, w = stack.shape
    if suffix in (".tif", ".tiff"):
        import tifffile

        with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tif:
            for i, page in enumerate(stack.reshape(t * r, h, w)):
                desc = json.dumps({"label": labels[i], **(metadata if i == 0 else {})})
                tif.write(page, description=desc, metadata=None)
    elif suffix == ".npy":
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, stack)
        with atomic_path(path.with_suffix(".json")) as tmp:
            tmp.write_text(json.dumps({"labels": labels, **metadata}, indent=2))
    else:
        import h5py

        with atomic_path(path) as tmp:
            with h5py.File(tmp, "w") as f:
                ds = f.create_dataset("patterns", data=stack, compression="gzip", chunks=(1, 1, h, w))
                ds.attrs["dims"] = "thickness, reflection, row (k_y), col (k_x)"
                f.create_dataset("labels", data=np.array(labels, dtype="S"))
                f.attrs["metadata"] = json.dumps(metadata)
                for k, v in metadata.items():
                    if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                        f.attrs[k] = v
    return path


def write_preview(path, stack: np.ndarray, *, row_labels: list[str], col_labels: list[str], title: str = "") -> Path:
    """PNG grid of a (T, R, H, W) stack: one row per reflection, one column per thickness, each
    image on its own grey scale (so contrast is visible at every thickness). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t, r = stack.shape[:2]
    fig, axes = plt.subplots(r, t, figsize=(2.2 * t + 0.4, 2.2 * r + 0.5), squeeze=False)
    for j in range(r):
        for i in range(t):
            ax = axes[j, i]
            ax.imshow(stack[i, j], cmap="gray", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_title(col_labels[i], fontsize=9)
            if i == 0:
                ax.set_ylabel(row_labels[j], fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
