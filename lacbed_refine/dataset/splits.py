"""Train / validation / test splits by chemical formula, stable and leak-free.

A structure's split is a function of its normalised formula (:func:`lacbed_refine.structure.formula.reduced_formula`)
and a seed only: ``sha256("<seed>:<formula>")`` mapped to [0, 1) and cut at the split fractions.
So every structure of one compound lands in the same split, adding or removing structures never
moves another one, and the same seed always gives the same split. The test split is never trained on.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

__all__ = ["SPLITS", "DEFAULT_FRACTIONS", "assign_split", "read_split_files"]

#: Split names, in order.
SPLITS = ("train", "validation", "test")
#: Default fractions of formulas per split.
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)

_ALIASES = {"train": "train", "training": "train", "val": "validation", "valid": "validation",
            "validation": "validation", "test": "test", "testing": "test"}


def assign_split(key: str, *, seed: int = 0, fractions=DEFAULT_FRACTIONS) -> str:
    """The split of formula ``key`` for ``seed``.

    Parameters
    ----------
    key : str
        Normalised formula (or any grouping key: equal keys share a split).
    seed : int
        Split seed.
    fractions : sequence of 3 float
        Fractions for train, validation, test; they must sum to 1.

    Returns
    -------
    {"train", "validation", "test"}
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"fractions must be 3 non-negative numbers summing to 1, got {fractions!r}")
    digest = hashlib.sha256(f"{int(seed)}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    edge = 0.0
    for name, f in zip(SPLITS, fractions):
        edge += f
        if u < edge:
            return name
    return SPLITS[-1]


def read_split_files(paths) -> dict[str, str]:
    """Read split files (one id per line), the split named by the file name.

    ``train``, ``val``/``validation`` and ``test`` (any suffix, e.g. ``train.txt``) are recognised.

    Parameters
    ----------
    paths : sequence of path-like

    Returns
    -------
    dict
        id → split name.

    Raises
    ------
    ValueError
        If a file name names no split, or an id is listed in two splits.
    """
    out: dict[str, str] = {}
    for path in paths:
        path = Path(path)
        name = _ALIASES.get(path.name.split(".")[0].lower())
        if name is None:
            raise ValueError(f"{path}: file name does not name a split (train, val/validation, test)")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: split file is not UTF-8 text (byte {exc.start})") from None
        for line in text.splitlines():
            ident = line.strip()
            if not ident:
                continue
            if out.get(ident, name) != name:
                raise ValueError(f"{path}: id {ident!r} is already in split {out[ident]!r}")
            out[ident] = name
    return out
