"""``subset_dataset``: a few structures of a dataset file, in the same layout (small fixed samples,
e.g. the one the shipped surrogates' cards are scored on)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lacbed_refine.io.files import check_new_output
from lacbed_refine.dataset._layout import META_FIELDS, Record, _read_column, open_dataset_file, read_info, source_mask, write_dataset

__all__ = ["subset_dataset"]


def subset_dataset(src, out, *, split: str = "test", n: int = 4, source: str | None = None,
                   overwrite: bool = False) -> str:
    """Write the first ``n`` structures (in file order) of ``split`` of ``src`` — only those whose
    source matches ``source`` when given — "real" (every collection but the synthetic one),
    "synthetic", or a collection name such as "amcsd" — to ``out``; returns the content hash.

    The subset keeps the source's settings (plus ``subset_of``: the source's content hash, split
    and count) and split labels, so it scores a model exactly as the full split does.

    ``out`` may not be ``src``, nor an existing file unless ``overwrite``.

    Raises
    ------
    ValueError
        One line naming the option or file: ``n`` below 1, ``out`` is ``src`` or exists, ``src``
        is not a readable dataset, or the split holds no such structure.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"-n {n!r}: the number of structures must be a whole number >= 1")
    check_new_output(out, overwrite=overwrite, option="-o", inputs=(src,))
    info = read_info(src)
    with open_dataset_file(src) as f:
        meta = {k: _read_column(f["meta"], k, kind) for k, kind in META_FIELDS.items()}
        wanted = source_mask(meta["source"], source)
        rows = [i for i, s in enumerate(meta["split"]) if s == split and wanted[i]][:n]
        if not rows:
            raise ValueError(f"{src}: no structures in split {split!r}" + (f" from source {source!r}" if source else ""))
        records = [Record(meta={k: meta[k][i] for k in META_FIELDS}, potential=f["potential"][i],
                          potential_raw=f["potential_raw"][i], pattern=f["pattern"][i]) for i in rows]
        thickness = [float(x) for x in f["thickness_nm"][()]]
        table = dict(zip(_read_column(f["splits"], "key", "str"), _read_column(f["splits"], "split", "str")))
    keys = {r.meta["reduced_formula"] for r in records}
    settings = {**info["settings"], "subset_of": {"content_hash": info["content_hash"], "split": split,
                                                  "source": source, "n": len(records)}}
    return write_dataset(Path(out), iter(records), n=len(records), size=info["size"], thickness_nm=thickness,
                         settings=settings, failed=[], split_table={k: v for k, v in table.items() if k in keys},
                         split_key="reduced_formula", command=f"subset of {Path(src).name}")
