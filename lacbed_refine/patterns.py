"""Pattern and image files: atomic writers for TIFF / .npy / .h5 stacks and PNG previews.

Stacks are float32 arrays of shape (T, R, H, W): thickness × reflection × rows × cols, intensities as
fractions of the incident beam (see :mod:`.conventions`).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "write_stack", "write_preview", "STACK_SUFFIXES"]

STACK_SUFFIXES = (".tif", ".tiff", ".npy", ".h5", ".hdf5")


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
