"""Data for the surrogates: an in-memory pairs dataset, one built with the real engine, and the
adapter to the HDF5 datasets of :mod:`lacbed_refine.dataset`.

Every item is a dict (the dataset interface the surrogates are written against):

- ``potential`` : (1, n, n) float32 in [0, 1] (min–max normalised projected potential);
- ``pattern`` : (T, n, n) float32 bright-field intensities (fractions of the incident beam);
- ``thickness_nm`` : (T,) float32; ``a_angstrom`` : float; ``potential_scale`` : float, max − min
  of the potential [V];
- optional ``space_group`` (str) and ``name`` (str), used to group evaluation results.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from lacbed_refine.physics.potential import normalise, projected_potential

__all__ = ["PairsDataset", "pairs_from_crystals", "open_dataset", "in_memory"]

log = logging.getLogger(__name__)


class PairsDataset(Dataset):
    """(potential, pattern) pairs held in memory.

    Parameters
    ----------
    potentials : Tensor, shape (N, 1, n, n) or (N, n, n)
        Min–max normalised potentials.
    patterns : Tensor, shape (N, T, n, n)
        Bright-field intensities.
    thickness_nm : Tensor, shape (T,) or (N, T)
    a_angstrom, potential_scale : Tensor, shape (N,)
        Cell edge [Å], potential max − min [V].
    names, space_groups : sequence of str, optional
    """

    def __init__(self, potentials, patterns, thickness_nm, a_angstrom, potential_scale, *, names=None, space_groups=None):
        self.potentials = torch.as_tensor(potentials, dtype=torch.float32)
        if self.potentials.dim() == 3:
            self.potentials = self.potentials.unsqueeze(1)
        self.patterns = torch.as_tensor(patterns, dtype=torch.float32)
        n = len(self.potentials)
        t = torch.as_tensor(thickness_nm, dtype=torch.float32)
        self.thickness_nm = t.expand(n, -1) if t.dim() == 1 else t
        self.a_angstrom = torch.as_tensor(a_angstrom, dtype=torch.float32).reshape(n)
        self.potential_scale = torch.as_tensor(potential_scale, dtype=torch.float32).reshape(n)
        if self.patterns.dim() != 4 or len(self.patterns) != n or self.thickness_nm.shape != self.patterns.shape[:2]:
            raise ValueError(f"patterns must be (N, T, n, n) with N = {n} and T thicknesses, got {tuple(self.patterns.shape)} "
                             f"and thickness_nm {tuple(self.thickness_nm.shape)}")
        self.names = list(names) if names is not None else [f"#{i}" for i in range(n)]
        self.space_groups = list(space_groups) if space_groups is not None else ["unknown"] * n

    def __len__(self) -> int:
        return len(self.potentials)

    def __getitem__(self, i: int) -> dict:
        return {
            "potential": self.potentials[i],
            "pattern": self.patterns[i],
            "thickness_nm": self.thickness_nm[i],
            "a_angstrom": self.a_angstrom[i],
            "potential_scale": self.potential_scale[i],
            "name": self.names[i],
            "space_group": self.space_groups[i],
        }


def pairs_from_crystals(crystals, *, thickness_nm=(50.0, 100.0, 150.0, 200.0), size: int = 128,
                        n_beams: int | None = None, workers: int = 1) -> PairsDataset:
    """Simulate a small dataset with the built-in Bloch engine (the paper preset, overridden by
    ``size`` and ``n_beams``) and the projected potential of Eq. (1).

    Parameters
    ----------
    crystals : iterable of Crystal or CIF paths
    thickness_nm : sequence of float
        Thicknesses [nm].
    size : int
        Image edge [pixels] of both the potential and the pattern.
    n_beams : int, optional
        Beam pool used at every pixel (default: the preset's).
    workers : int
        Engine worker processes.
    """
    from lacbed_refine.io.cif import read_cif
    from lacbed_refine.simulators.bloch import settings_for, simulate_crystal

    pots, pats, a, scale, names, groups = [], [], [], [], [], []
    for c in crystals:
        crystal = read_cif(c) if isinstance(c, (str, Path)) else c
        crystal.require_cubic("the [001] surrogates' training pairs")
        settings = settings_for(crystal, thickness_nm=thickness_nm, size=size, n_beams=n_beams)
        stack, _ = simulate_crystal(crystal, settings, workers=workers)
        with torch.no_grad():
            rho = projected_potential(crystal.atoms(), crystal.a, centring=crystal.spacegroup_symbol[0], size=size)
        norm, lo, hi = normalise(rho)
        pots.append(norm.float()[None])
        pats.append(torch.from_numpy(np.ascontiguousarray(stack[:, 0])))
        a.append(crystal.a)
        scale.append(float(hi - lo))
        names.append(crystal.name)
        groups.append(crystal.spacegroup_symbol)
    return PairsDataset(torch.stack(pots), torch.stack(pats), torch.tensor(thickness_nm), torch.tensor(a),
                        torch.tensor(scale), names=names, space_groups=groups)


def open_dataset(path, split: str, source: str | None = None):
    """The ``split`` of the HDF5 dataset at ``path`` (:mod:`lacbed_refine.dataset`) as a torch
    Dataset of the item dicts above, every thickness per item, with ``name`` (the structure id) and
    ``space_group`` from the file's metadata; ``source`` ("real" or "synthetic") keeps only those
    structures (None or "all": every one).

    The surrogates are cubic [001] models (the shipped ones 128×128): a dataset built at another
    zone axis (``dataset build --zone``) is refused here, where every dataset enters training and
    evaluation.

    Raises
    ------
    ValueError
        One line naming the file: missing (also a ``FileNotFoundError``), not HDF5, truncated, not
        a dataset or damaged (e.g. arrays shorter than the metadata table), built at a zone axis
        other than [001] (x [100]), the split unknown or empty, or the dataset module missing.
    """
    path = Path(path)
    try:
        from lacbed_refine.dataset import LacbedDataset
        from lacbed_refine.dataset import open_dataset_file, zone_of
    except ImportError:
        raise ValueError(f"{path}: reading datasets needs lacbed_refine.dataset, which this installation lacks") from None
    with open_dataset_file(path) as f:  # opens and checks the file
        try:
            geometry = zone_of(json.loads(f.attrs["settings"]))
        except (TypeError, ValueError):  # a damaged settings attribute: the dataset module's own check says so below
            geometry = {"standard": True}
    if not geometry["standard"]:
        where = " ".join(str(i) for i in geometry["zone"])
        x = " ".join(str(i) for i in geometry["x_direction"] or ())
        normal = f", normal [{' '.join(str(i) for i in geometry['normal'])}]" if geometry["normal"] else ""
        raise ValueError(f"{path}: dataset built at zone [{where}] (x [{x}]{normal}); the surrogates are cubic [001] "
                         "models (x [100]) and train and evaluate on [001] datasets only")
    split = {"val": "validation", "valid": "validation"}.get(split, split)
    source = None if source in (None, "all") else source
    base = LacbedDataset(path, split=split, thickness="all", source=source)  # opens and checks the file
    if len(base) == 0:
        raise ValueError(f"{path}: the {split!r} split is empty" + (f" of {source} structures" if source else ""))
    with open_dataset_file(path, check=False) as f:  # checked just above
        ids = [_text(x) for x in f["meta/id"][()]]
        groups = [_text(x) for x in f["meta/spacegroup_symbol"][()]] if "meta/spacegroup_symbol" in f else None
    return _Annotated(base, ids, groups)


class _Annotated(Dataset):
    """Adds ``name`` and ``space_group`` (from ``/meta``) to a dataset file's items."""

    def __init__(self, base, ids: list[str], groups: list[str] | None):
        self.base, self.ids, self.groups = base, ids, groups

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.base[i])
        row = int(item.get("index", i))
        item["name"] = self.ids[row]
        item["space_group"] = self.groups[row] if self.groups is not None else "unknown"
        return item


def _text(x) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


#: Largest split [bytes] that :func:`in_memory` holds in RAM.
IN_MEMORY_LIMIT = 4 * 2**30


def in_memory(dataset, *, limit_bytes: int = IN_MEMORY_LIMIT):
    """``dataset`` with every item read once into memory, when its images fit in ``limit_bytes``;
    otherwise ``dataset`` itself. Training revisits each item every epoch, and decompressing it
    from the HDF5 file each time costs ~2 ms per structure (~8 % of a CPU training step)."""
    n = len(dataset)
    if n == 0:
        return dataset
    first = dataset[0]
    per_item = sum(v.numel() * v.element_size() for v in first.values() if isinstance(v, torch.Tensor))
    if n * per_item > limit_bytes:
        log.info("dataset of %d items (%.1f GB) read lazily: above the in-memory limit", n, n * per_item / 1e9)
        return dataset
    return _Cached([first] + [dataset[i] for i in range(1, n)])


class _Cached(Dataset):
    def __init__(self, items: list):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]
