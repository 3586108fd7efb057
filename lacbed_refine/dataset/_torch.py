"""A PyTorch ``Dataset`` over a dataset file, lazy and safe with DataLoader worker processes.

The HDF5 file is opened on first access in each process (a handle opened before ``fork`` must not
be shared), so the object itself holds only the small metadata and pickles cheaply.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from lacbed_refine.dataset._layout import DatasetFileError, _h5_open, open_dataset_file, source_mask

__all__ = ["LacbedDataset"]


class LacbedDataset(torch.utils.data.Dataset):
    """(potential, pattern, conditioning) samples from a dataset file.

    Parameters
    ----------
    path : path-like
        Dataset ``.h5`` file (:func:`~lacbed_refine.dataset.build_dataset` or
        :func:`~lacbed_refine.dataset.import_png`).
    split : {"train", "validation", "test"} or sequence of them, optional
        Keep only these splits; default all.
    thickness : float, "all" or None
        A thickness [nm] in the file: one pattern per structure at it; ``"all"``: every thickness
        at once; None (default): one sample per (structure, thickness) pair.
    source : {"real", "synthetic"}, optional
        Keep only real (any source but ``"synthetic"``) or synthetic structures.

    Notes
    -----
    A sample is a dict of tensors:

    - ``potential``: float32, shape (1, S, S), min–max normalised;
    - ``pattern``: float32, shape (1, S, S) (one thickness) or (T, S, S) (``thickness="all"``),
      fraction of the incident beam;
    - ``thickness_nm``: float32, shape () or (T,) [nm];
    - ``a_angstrom``: float32, shape () — cell edge [Å];
    - ``potential_scale``: float32, shape () — max − min of the raw potential [V] (NaN if unknown);
    - ``index``: int64, shape () — row in the file.
    """

    def __init__(self, path, *, split=None, thickness=None, source: str | None = None):
        self.path = os.fspath(path)
        # the layout check makes a damaged file (say /pattern shorter than the metadata) fail here,
        # naming it, rather than as an IndexError in the middle of an epoch
        with open_dataset_file(self.path) as f:
            self.thickness_nm = np.asarray(f["thickness_nm"][()], dtype=np.float32)
            splits = np.array([s.decode() if isinstance(s, bytes) else s for s in f["meta/split"][()]])
            sources = np.array([s.decode() if isinstance(s, bytes) else s for s in f["meta/source"][()]])
            self.ids = [s.decode() if isinstance(s, bytes) else s for s in f["meta/id"][()]]
            self.a_angstrom = np.asarray(f["meta/a_angstrom"][()], dtype=np.float32)
            scale = f["meta/potential_max"][()] - f["meta/potential_min"][()]
            self.potential_scale = np.asarray(scale, dtype=np.float32)
        keep = np.ones(len(splits), dtype=bool)
        if split is not None:
            wanted = {split} if isinstance(split, str) else set(split)
            unknown = wanted - {"train", "validation", "test", ""}
            if unknown:
                raise ValueError(f"{self.path}: split must be train, validation or test, got {sorted(unknown)}")
            keep &= np.isin(splits, list(wanted))
        if source is not None:
            if source not in ("real", "synthetic"):
                raise ValueError(f"{self.path}: source must be 'real' or 'synthetic', got {source!r}")
            keep &= source_mask(sources, source)
        self.rows = np.nonzero(keep)[0]
        if thickness is None or (isinstance(thickness, str) and thickness == "all"):
            self._t = thickness
        else:
            hit = np.nonzero(np.isclose(self.thickness_nm, float(thickness)))[0]
            if len(hit) == 0:
                raise ValueError(f"thickness {thickness!r} nm is not in the file (it has {self.thickness_nm.tolist()})")
            self._t = int(hit[0])
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        if self._t is None:
            return len(self.rows) * len(self.thickness_nm)
        return len(self.rows)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def _h5(self):
        if self._file is None or self._pid != os.getpid():
            from pathlib import Path

            self._file = _h5_open(Path(self.path))
            self._pid = os.getpid()
        return self._file

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} samples")
        i = int(i) % len(self)
        f = self._h5()
        if self._t is None:
            row, t = self.rows[i // len(self.thickness_nm)], i % len(self.thickness_nm)
        else:
            row, t = self.rows[i], self._t
        row = int(row)
        try:
            potential = torch.from_numpy(np.asarray(f["potential"][row], dtype=np.float32))[None]
            if isinstance(t, str):
                pattern = torch.from_numpy(np.asarray(f["pattern"][row], dtype=np.float32))
                thick = torch.from_numpy(self.thickness_nm.copy())
            else:
                pattern = torch.from_numpy(np.asarray(f["pattern"][row, t], dtype=np.float32))[None]
                thick = torch.tensor(self.thickness_nm[t])
        except OSError as exc:  # a corrupt chunk: h5py's message names neither the file nor the row
            raise DatasetFileError(f"{self.path}: cannot read structure {row} ({self.ids[row]}): "
                                   f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
        return {
            "potential": potential,
            "pattern": pattern,
            "thickness_nm": thick,
            "a_angstrom": torch.tensor(self.a_angstrom[row]),
            "potential_scale": torch.tensor(self.potential_scale[row]),
            "index": torch.tensor(row, dtype=torch.int64),
        }

    def close(self) -> None:
        """Close this process's file handle (reopened on the next access)."""
        if self._file is not None:
            self._file.close()
            self._file = None
