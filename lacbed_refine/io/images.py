"""Pattern and image files: reading measured patterns, resampling them onto the simulation grid,
and atomic writers for TIFF / .npy / .h5 stacks and PNG previews.

Stacks are float32 arrays of shape (T, R, H, W): thickness × reflection × rows × cols, intensities as
fractions of the incident beam (see :mod:`.conventions`). Measured patterns are 2-D ``[row, col] =
[k_y, k_x]`` arrays in any units: refinement compares by correlation, so scale and offset never matter.
"""

from __future__ import annotations
import json
import math
from pathlib import Path
import numpy as np
from lacbed_refine.io.files import STACK_SUFFIXES, atomic_path



PATTERN_SUFFIXES = (".tif", ".tiff", ".npy", ".bin", ".img", ".png", ".dm3", ".dm4")


#: Smallest pattern edge [pixels] :func:`check_pattern` accepts: a smaller image has too few pixels
#: for a correlation to say anything about a structure (the examples' 16×16 crops are the smallest
#: in use).
MIN_PATTERN_SIDE = 16


#: Largest pattern edge [pixels]: a 4k camera frame. A LACBED pattern is resampled onto a simulation
#: grid of at most a few hundred pixels, so anything larger is a whole frame to crop or bin first.
MAX_PATTERN_SIDE = 4096


class PatternError(ValueError):
    """A measured pattern that cannot be used; the message names the file and the problem."""


def read_pattern(path, *, allow_constant: bool = False) -> np.ndarray:
    """Read a measured pattern as a float64 2-D array ``[row, col]``.

    Formats by extension: TIFF (one image; RGB is averaged), ``.npy``, FELIX ``.bin``/``.img``
    (headerless little-endian float64, square, size from the file length), PNG (grey; colour is
    averaged, alpha dropped), DM3/DM4 through rosettasciio (``pip install rosettasciio``). The shape
    is checked from the file's header before the pixels are loaded, so a huge file is refused
    quickly.

    Parameters
    ----------
    path : str or os.PathLike
    allow_constant : bool
        Accept a constant image (for a mask read as a pattern); see also :func:`read_mask`.

    Returns
    -------
    ndarray, shape (n, n), float64
        :func:`check_pattern`'s result: square, ``MIN_PATTERN_SIDE`` ≤ n ≤ ``MAX_PATTERN_SIDE``, finite.

    Raises
    ------
    PatternError
        One line naming the file: unreadable, empty, unknown type, a stack of several images or
        another shape than one 2-D image, boolean/complex/non-numeric values, any NaN or infinity,
        constant, not square, smaller than 16×16 or larger than 4096 pixels on a side.
    """
    data = _read_image_file(path)
    return check_pattern(data, name=str(path), allow_constant=allow_constant)


def read_mask(path) -> np.ndarray:
    """Read a pixel mask (non-zero or True = use the pixel) from any pattern format, ``.npy`` included.

    Unlike :func:`read_pattern`, a boolean image and a constant one (use every pixel) are accepted.

    Returns
    -------
    ndarray of bool, 2-D ``[row, col]``

    Raises
    ------
    PatternError
        One line naming the file: unreadable, not one 2-D image, complex or non-numeric values, NaN
        or infinite values, or no pixel used.
    """
    name = str(path)
    data = _read_image_file(path)
    kind = data.dtype.kind
    if kind == "c":
        raise PatternError(f"{name}: complex values; a mask is 0/1 or boolean")
    if kind not in "buif":
        raise PatternError(f"{name}: values of type {data.dtype} are not numbers; a mask is 0/1 or boolean")
    data = np.squeeze(data)
    _check_shape(data.shape, name)
    if kind == "f" and not np.isfinite(data).all():
        raise PatternError(f"{name}: {int((~np.isfinite(data)).sum())} mask pixels are NaN or infinite")
    mask = data != 0
    if not mask.any():
        raise PatternError(f"{name}: the mask uses no pixel (all zero)")
    return mask


def _read_image_file(path) -> np.ndarray:
    """The pixels of an image file as stored (dtype kept), after checking the stored shape."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise PatternError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise PatternError(f"{path}: empty file")
    try:
        if suffix in (".tif", ".tiff"):
            data = _read_tiff(path)
        elif suffix == ".npy":
            # memory-map first: the header gives the shape, so a huge or stacked file is refused
            # without reading it
            stored = np.load(path, mmap_mode="r", allow_pickle=False)
            if not isinstance(stored, np.ndarray):  # np.load opens an .npz archive whatever the suffix
                stored.close()
                raise PatternError(f"{path}: an .npz archive, not one .npy array")
            _check_shape(stored.shape, str(path), dtype=stored.dtype)
            data = np.array(stored)
            del stored
        elif suffix in (".bin", ".img"):
            nbytes = path.stat().st_size
            side = math.isqrt(nbytes // 8)
            if nbytes % 8 or side * side * 8 != nbytes:
                raise PatternError(f"{path}: {nbytes} bytes is not a square image of float64 (FELIX .bin/.img)")
            _check_shape((side, side), str(path))
            data = np.fromfile(path, dtype="<f8").reshape(side, side)
        elif suffix == ".png":
            import matplotlib.image
            from PIL import Image

            with Image.open(path) as im:  # reads the header only
                _check_shape(im.size[::-1], str(path))
            data = matplotlib.image.imread(path)
            if data.ndim == 3:  # grey+alpha and palette images arrive as RGBA too; alpha is not intensity
                data = data[..., :3].mean(axis=-1)
        elif suffix in (".dm3", ".dm4"):
            try:
                from rsciio.digitalmicrograph import file_reader
            except ImportError:
                raise PatternError(f"{path}: reading DM3/DM4 needs rosettasciio (pip install rosettasciio)") from None
            data = np.asarray(file_reader(str(path))[0]["data"])
        else:
            raise PatternError(f"{path}: unknown pattern type {suffix!r}; use one of {', '.join(PATTERN_SUFFIXES)}")
    except PatternError:
        raise
    except Exception as exc:  # a reader's own error, whatever its type: report it on one line
        raise PatternError(f"{path}: cannot read pattern ({_first_line(exc)})") from None
    return np.asarray(data)


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise PatternError(f"{path}: no image in the TIFF file")
        if len(tif.series) > 1:
            shapes = ", ".join(str(s.shape) for s in tif.series[:4])
            raise PatternError(
                f"{path}: {len(tif.series)} images of different shapes ({shapes}); a pattern is one 2-D image"
            )
        series = tif.series[0]
        shape = tuple(series.shape)
        # colour samples (axis "S", contiguous or planar): averaged as for PNG, alpha dropped
        s_axis = series.axes.find("S") if len(series.axes) == len(shape) else -1
        samples = shape[s_axis] if s_axis >= 0 else 1
        colour = 2 <= samples <= 4
        _check_shape(shape[:s_axis] + shape[s_axis + 1:] if colour else shape, str(path), dtype=series.dtype)
        data = series.asarray()
    if colour:  # grey+alpha: the grey; RGB(A): the mean of R, G, B
        data = np.take(data, [0] if samples == 2 else [0, 1, 2], axis=s_axis).mean(axis=s_axis)
    return data


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _check_shape(shape, name: str, *, dtype=None) -> None:
    """Refuse, from the shape alone, what is not one 2-D image of at most MAX_PATTERN_SIDE a side."""
    shape = tuple(int(n) for n in shape)
    if dtype is not None and np.dtype(dtype).kind not in "buifc":  # say "not numbers" before "too big"
        raise PatternError(f"{name}: values of type {np.dtype(dtype)} are not numbers")
    squeezed = tuple(n for n in shape if n != 1) if 0 not in shape else shape
    if any(n > MAX_PATTERN_SIDE for n in squeezed):
        raise PatternError(
            f"{name}: image of shape {shape} is larger than {MAX_PATTERN_SIDE} pixels on a side; "
            "crop or bin it to the LACBED disc first"
        )
    if len(squeezed) > 2 or (len(squeezed) < 2 and 0 not in shape):
        extra = ""
        if len(squeezed) == 3 and squeezed[-1] <= 4 < min(squeezed[:2]):
            extra = f" (colour channels? {squeezed[-1]} values per pixel; save it as a grey image)"
        elif len(squeezed) == 3:
            extra = f" ({squeezed[0]} images of {squeezed[1]}x{squeezed[2]}; extract the one you mean)"
        raise PatternError(f"{name}: a pattern must be one 2-D image, got shape {shape}{extra}")


def check_pattern(data: np.ndarray, *, name: str = "pattern", allow_constant: bool = False) -> np.ndarray:
    """Check a measured pattern and return it as a float64 2-D array.

    Singleton axes are squeezed. The pattern must be one 2-D image of real numbers (integer or
    float: boolean is a mask, complex is not an intensity), square (the measured tilt range is
    ±half-width along both axes; a rectangular image would be stretched onto the square simulation
    grid, so crop it), from ``MIN_PATTERN_SIDE`` (16) to ``MAX_PATTERN_SIDE`` (4096) pixels a side,
    every pixel finite, and not constant (unless ``allow_constant``).

    Parameters
    ----------
    data : array_like
    name : str
        What to call the pattern in messages (its file).
    allow_constant : bool
        Accept a constant image.

    Returns
    -------
    ndarray, shape (n, n), float64

    Raises
    ------
    PatternError
        One line starting with ``name``.
    """
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError) as exc:  # ragged nested lists and the like
        raise PatternError(f"{name}: not an image ({_first_line(exc)})") from None
    kind = arr.dtype.kind
    if kind == "b":
        raise PatternError(f"{name}: a boolean image is a mask, not a pattern of intensities (read masks with read_mask)")
    if kind == "c":
        raise PatternError(f"{name}: complex values; a pattern is real intensities (take abs()**2 or .real first)")
    if kind not in "uif":
        raise PatternError(f"{name}: values of type {arr.dtype} are not numbers")
    arr = np.squeeze(arr)
    _check_shape(arr.shape, name)
    if arr.ndim != 2:
        raise PatternError(f"{name}: a pattern must be one 2-D image, got shape {arr.shape}")
    if arr.size == 0:
        raise PatternError(f"{name}: image of shape {arr.shape} has no pixels")
    with np.errstate(over="ignore", invalid="ignore"):  # float128 beyond float64 becomes inf: refused below
        data = arr.astype(np.float64)
    bad = ~np.isfinite(data)
    if bad.all():
        raise PatternError(f"{name}: every pixel is NaN or infinite")
    if bad.any():
        raise PatternError(f"{name}: {int(bad.sum())} pixels are NaN or infinite; mask them or fill them first")
    lo, hi = float(data.min()), float(data.max())
    if hi == lo and not allow_constant:
        raise PatternError(f"{name}: the image is constant")
    if not math.isfinite(hi - lo):
        # the fit subtracts means and divides by standard deviations: values this large overflow
        raise PatternError(f"{name}: values span {lo:g} to {hi:g}, too large for float64 arithmetic; rescale them")
    if data.shape[0] != data.shape[1]:
        raise PatternError(
            f"{name}: pattern is not square: shape {data.shape}; crop it to the square that spans the "
            "measured tilt range (it would be stretched onto the square simulation grid)"
        )
    if data.shape[0] < MIN_PATTERN_SIDE:
        raise PatternError(
            f"{name}: image of shape {data.shape} is smaller than {MIN_PATTERN_SIDE}x{MIN_PATTERN_SIDE} pixels"
        )
    return data


def resample_pattern(data: np.ndarray, half_width: float, size: int, sim_half_width: float) -> np.ndarray:
    """Resample a measured pattern onto the simulation's pixel grid.

    Parameters
    ----------
    data : ndarray, shape (n, n)
        Measured pattern, centred on the zone axis, spanning ±``half_width`` [Å⁻¹] along both axes.
    half_width : float
        Tilt half-width of the measured pattern [Å⁻¹, 1/d units], finite and > 0.
    size : int
        Simulation pattern edge [pixels], ≥ 1.
    sim_half_width : float
        Simulation tilt half-width [Å⁻¹], finite and > 0.

    Returns
    -------
    ndarray, shape (size, size)
        Linear interpolation at the simulation's pixel centres (:func:`geometry.tilt_grid`); points
        outside the measured area take the nearest edge value.

    Raises
    ------
    ValueError
        If ``data`` is not a square 2-D image or a half-width or ``size`` is not a positive number.
    """
    from scipy.ndimage import map_coordinates

    from lacbed_refine.engine.geometry import tilt_grid

    data = np.asarray(data, dtype=float)
    if data.ndim != 2 or data.shape[0] != data.shape[1] or data.size == 0:
        # one half-width for both axes: a rectangular image would be stretched, not resampled
        raise ValueError(f"resample_pattern: data must be a square 2-D image, got shape {data.shape}")
    for what, value in (("half_width", half_width), ("sim_half_width", sim_half_width)):
        try:
            ok = math.isfinite(float(value)) and float(value) > 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(f"resample_pattern: {what} must be a positive number of Å⁻¹, got {value!r}")
    try:
        ok = int(size) == size and int(size) >= 1 and not isinstance(size, bool)
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"resample_pattern: size must be a positive integer, got {size!r}")
    size = int(size)

    h, w = data.shape
    kx, ky = tilt_grid(size, sim_half_width)
    # measured pixel (r, c) sits at k = ((c - W/2 + ½) Δx, (r - H/2 + ½) Δy)
    col = kx / (2 * half_width / w) + w / 2 - 0.5
    row = ky / (2 * half_width / h) + h / 2 - 0.5
    return map_coordinates(data, [row, col], order=1, mode="nearest")


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
