"""The dataset's HDF5 layout, its atomic writer, and the content hash.

Layout (N structures, T thicknesses, S×S pixels; every array readable with plain h5py)::

    /potential          float32 (N, S, S)     projected potential, min–max normalised to [0, 1]
    /potential_raw      float32 (N, S, S)     the same in volts (NaN where unknown, e.g. PNG imports)
    /pattern            float32 (N, T, S, S)  bright-field LACBED intensity (fraction of the incident
                                              beam; PNG imports: grey level / maximum)
    /thickness_nm       float64 (T,)
    /meta/<field>       (N,)                  one array per field of :data:`META_FIELDS`
    /failed/{id,source,reason}   str (F,)     structures that were skipped, and why
    /splits/{key,split} str                   the split table (formula → split, or id → split)

Images are chunked one image per chunk, gzip-compressed with the shuffle filter. File attributes:
``format``, ``format_version``, ``content_hash``, ``settings`` (JSON), ``engine_version``,
``versions`` (JSON), ``created_utc``, ``command``, ``n_structures``, ``n_failed``, ``size``. A build
at a zone axis other than [001] records ``zone``, ``x_direction`` and ``normal`` in ``settings["spec"]``
(:func:`zone_of` reads them back; absent means [001], x [100]).

Content hash: SHA-256 over, in order, a format tag, the settings as canonical JSON (sorted keys),
then per structure in the file's order its hashed metadata (:data:`HASHED_FIELDS`, canonical JSON)
and the bytes of ``potential``, ``potential_raw`` and ``pattern`` as little-endian float32 with
their shapes, then the failed table and the split table. It depends on the data, never on the HDF5
bytes, the worker count or how often the build was interrupted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lacbed_refine.version import __version__

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "META_FIELDS",
    "HASHED_FIELDS",
    "Record",
    "ContentHasher",
    "write_dataset",
    "dataset_hash",
    "read_info",
    "canonical_json",
    "open_dataset_file",
    "DatasetFileError",
    "MissingDatasetError",
    "zone_of",
]

FORMAT = "lacbed-refine-dataset"
FORMAT_VERSION = 1

#: Per-structure metadata fields and their HDF5 kinds ("str", "int", "float").
META_FIELDS = {
    "id": "str",
    "source": "str",
    "formula": "str",
    "reduced_formula": "str",
    "spacegroup_number": "int",
    "spacegroup_symbol": "str",
    "a_angstrom": "float",
    "n_atoms": "int",
    "split": "str",
    "n_beams": "int",
    "symmetry_ops": "int",
    "potential_min": "float",
    "potential_max": "float",
    "cif": "str",
    "seconds": "float",
    "cpu_seconds": "float",
}
#: Fields that enter the content hash (everything but the timings).
HASHED_FIELDS = tuple(k for k in META_FIELDS if k not in ("seconds", "cpu_seconds"))
_ARRAYS = ("potential", "potential_raw", "pattern")
_STR = None  # h5py string dtype, created lazily


def canonical_json(obj) -> str:
    """JSON with sorted keys and no whitespace: the form that is hashed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class Record:
    """One structure's data.

    Attributes
    ----------
    meta : dict
        Values for :data:`META_FIELDS` (``split`` may be filled in at assembly).
    potential : ndarray, float32, shape (S, S)
        Normalised projected potential.
    potential_raw : ndarray, float32, shape (S, S)
        Projected potential [V].
    pattern : ndarray, float32, shape (T, S, S)
        Bright-field intensity per thickness.
    extra : dict
        Not stored in the file's hashed part (warnings raised while reading the CIF).
    """

    meta: dict
    potential: np.ndarray
    potential_raw: np.ndarray
    pattern: np.ndarray
    extra: dict = field(default_factory=dict)


class ContentHasher:
    """Incremental content hash (see the module docstring)."""

    def __init__(self, settings: dict):
        self._h = hashlib.sha256()
        self._h.update(f"{FORMAT} v{FORMAT_VERSION}\n".encode())
        self._h.update(canonical_json(settings).encode())

    def add_record(self, meta: dict, arrays: dict) -> None:
        self._h.update(b"\nR")
        self._h.update(canonical_json({k: _py(meta[k]) for k in HASHED_FIELDS}).encode())
        for name in _ARRAYS:
            a = np.ascontiguousarray(arrays[name], dtype="<f4")
            self._h.update(name.encode() + np.asarray(a.shape, dtype="<i8").tobytes())
            self._h.update(a.tobytes())

    def add_failed(self, failed: list[dict]) -> None:
        self._h.update(b"\nF")
        self._h.update(canonical_json([{k: f[k] for k in ("id", "source", "reason")} for f in failed]).encode())

    def add_splits(self, table: dict) -> None:
        self._h.update(b"\nS")
        self._h.update(canonical_json(table).encode())

    def hexdigest(self) -> str:
        return "sha256:" + self._h.hexdigest()


def _py(v):
    """numpy scalars to Python values, for JSON."""
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode()
    return v


def _versions() -> dict:
    import h5py
    import torch

    import gemmi

    return {
        "lacbed_refine": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "h5py": h5py.__version__,
        "gemmi": gemmi.__version__,
    }


def write_dataset(
    path,
    records,
    *,
    n: int,
    size: int,
    thickness_nm,
    settings: dict,
    failed: list[dict],
    split_table: dict,
    split_key: str,
    command: str = "",
    progress=None,
) -> str:
    """Write the dataset file atomically and return its content hash.

    Parameters
    ----------
    path : path-like
        Output ``.h5``; written to a temporary file beside it, then moved into place.
    records : iterable of Record
        Exactly ``n`` records in the file's order (may be a generator, read once).
    n : int
        Number of records.
    size : int
        Image edge S [pixels].
    thickness_nm : sequence of float
        The T thicknesses [nm].
    settings : dict
        Build settings (JSON-serialisable); hashed and stored as an attribute.
    failed : list of dict
        ``id``, ``source``, ``reason`` of each skipped structure, in order.
    split_table : dict
        Key → split name.
    split_key : {"reduced_formula", "id"}
        What the split table's keys are.
    command : str
        The command line, for the record.
    progress : callable, optional
        Called with 1 after each record is written.

    Returns
    -------
    str
        ``"sha256:<hex>"``.
    """
    import h5py

    path = Path(path)
    thickness_nm = np.asarray(thickness_nm, dtype=np.float64)
    t = len(thickness_nm)
    hasher = ContentHasher(settings)
    meta_cols: dict[str, list] = {k: [] for k in META_FIELDS}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with h5py.File(tmp, "w") as f:
            opts = dict(compression="gzip", compression_opts=4, shuffle=True)
            pot = f.create_dataset("potential", (n, size, size), "f4", chunks=(1, size, size), **opts)
            raw = f.create_dataset("potential_raw", (n, size, size), "f4", chunks=(1, size, size), **opts)
            pat = f.create_dataset("pattern", (n, t, size, size), "f4", chunks=(1, 1, size, size), **opts)
            pot.attrs["units"] = "min-max normalised to [0, 1] per image"
            raw.attrs["units"] = "V (projected potential, mean inner potential included)"
            pat.attrs["units"] = "fraction of the incident beam"
            pat.attrs["dims"] = "structure, thickness, row (k_y), col (k_x)"
            f.create_dataset("thickness_nm", data=thickness_nm)
            count = 0
            for i, rec in enumerate(records):
                if i >= n:
                    raise ValueError(f"more than the {n} records announced")
                arrays = {"potential": rec.potential, "potential_raw": rec.potential_raw, "pattern": rec.pattern}
                if arrays["pattern"].shape != (t, size, size):
                    raise ValueError(
                        f"{rec.meta['id']}: pattern shape {arrays['pattern'].shape} is not {(t, size, size)}"
                    )
                pot[i] = arrays["potential"]
                raw[i] = arrays["potential_raw"]
                pat[i] = arrays["pattern"]
                hasher.add_record(rec.meta, arrays)
                for k in META_FIELDS:
                    meta_cols[k].append(_py(rec.meta.get(k)))
                count += 1
                if progress is not None:
                    progress(1)
            if count != n:
                raise ValueError(f"{count} records written, {n} announced")
            hasher.add_failed(failed)
            hasher.add_splits(split_table)
            meta = f.create_group("meta")
            for k, kind in META_FIELDS.items():
                _write_column(meta, k, kind, meta_cols[k])
            fg = f.create_group("failed")
            for k in ("id", "source", "reason"):
                _write_column(fg, k, "str", [x[k] for x in failed])
            sg = f.create_group("splits")
            sg.attrs["key"] = split_key
            keys = sorted(split_table)
            _write_column(sg, "key", "str", keys)
            _write_column(sg, "split", "str", [split_table[k] for k in keys])
            digest = hasher.hexdigest()
            f.attrs.update(
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "content_hash": digest,
                    "settings": canonical_json(settings),
                    "engine_version": __version__,
                    "versions": json.dumps(_versions()),
                    "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                    "command": command,
                    "n_structures": n,
                    "n_failed": len(failed),
                    "size": size,
                }
            )
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return digest


def source_mask(sources, wanted: str | None) -> np.ndarray:
    """Which rows of ``sources`` (the ``meta/source`` column) are ``wanted``: None or "all" every
    row, "real" every collection but the synthetic one, else rows of that source name."""
    sources = np.asarray(sources, dtype=str)
    if wanted in (None, "all"):
        return np.ones(len(sources), dtype=bool)
    if wanted == "real":
        return sources != "synthetic"
    return sources == wanted


class DatasetFileError(ValueError):
    """A dataset file that cannot be used (not HDF5, truncated, damaged, not this layout); the
    message is one line naming the file."""


class MissingDatasetError(DatasetFileError, FileNotFoundError):
    """A dataset path that does not exist (also a ``FileNotFoundError``, for callers that catch that)."""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _h5_open(path: Path):
    """``h5py.File(path, "r")`` with its errors turned into one line naming the file (h5py's own
    message names neither the file nor what to do)."""
    import h5py

    if not path.exists():
        raise MissingDatasetError(f"{path}: no such dataset file")
    if path.is_dir():
        raise DatasetFileError(f"{path}: is a folder, not a dataset file")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        reason = _first_line(exc)
        if "truncated" in reason:
            what = "truncated (an interrupted copy or download?)"
        elif "signature" in reason:
            what = "not an HDF5 file"
        else:
            what = f"not a readable HDF5 file ({reason})"
        raise DatasetFileError(f"{path}: {what}; expected a lacbed-refine dataset .h5") from None


def check_layout(f, path) -> int:
    """Check that the open HDF5 file ``f`` has this module's layout with consistent counts and
    shapes; returns the number of structures N.

    Only shapes and attributes are read, so this is cheap on a file of any size; it runs on every
    open so that a damaged file fails here, with its name, and not deep inside a training loop.

    Raises
    ------
    DatasetFileError
        One line naming ``path`` and what is wrong (e.g. "/potential holds 3 structures but the
        metadata table 5").
    """
    import h5py

    fmt = f.attrs.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != FORMAT:
        raise DatasetFileError(f"{path}: not a lacbed-refine dataset (format attribute {fmt!r}, expected {FORMAT!r})")
    try:
        version = int(f.attrs.get("format_version", 0))
    except (TypeError, ValueError):
        version = -1
    if not 1 <= version <= FORMAT_VERSION:
        raise DatasetFileError(f"{path}: dataset format version {f.attrs.get('format_version')!r} is not one this "
                               f"lacbed-refine ({__version__}) reads (1–{FORMAT_VERSION})")
    if "content_hash" not in f.attrs or "settings" not in f.attrs:
        raise DatasetFileError(f"{path}: damaged dataset file: it lacks the content_hash or settings attribute")
    needed = [*_ARRAYS, "thickness_nm", *(f"meta/{k}" for k in META_FIELDS),
              *(f"failed/{k}" for k in ("id", "source", "reason")), "splits/key", "splits/split"]
    missing = [k for k in needed if not isinstance(f.get(k), h5py.Dataset)]
    if missing:
        more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DatasetFileError(f"{path}: damaged dataset file: it lacks /{missing[0]}{more}")
    n = len(f["meta/id"])
    for k in META_FIELDS:
        if f[f"meta/{k}"].shape != (n,):
            raise DatasetFileError(f"{path}: damaged dataset file: /meta/{k} has shape {f[f'meta/{k}'].shape}, "
                                   f"but the metadata table holds {n} structures")
    for name in _ARRAYS:
        m = f[name].shape[0] if f[name].ndim else 0
        if m != n:
            raise DatasetFileError(f"{path}: damaged dataset file: /{name} holds {m} structures but the metadata "
                                   f"table holds {n}")
    declared = f.attrs.get("n_structures")
    if declared is not None and int(declared) != n:
        raise DatasetFileError(f"{path}: damaged dataset file: it declares {int(declared)} structures but the "
                               f"metadata table holds {n}")
    pot, raw, pat, thick = f["potential"].shape, f["potential_raw"].shape, f["pattern"].shape, f["thickness_nm"].shape
    if len(thick) != 1 or thick[0] < 1:
        raise DatasetFileError(f"{path}: damaged dataset file: /thickness_nm has shape {thick}")
    if len(pot) != 3 or pot[1] != pot[2] or raw != pot:
        raise DatasetFileError(f"{path}: damaged dataset file: /potential has shape {pot} and /potential_raw {raw}, "
                               f"expected ({n}, S, S) each")
    if len(pat) != 4 or pat[1] != thick[0] or pat[2:] != pot[1:]:
        raise DatasetFileError(f"{path}: damaged dataset file: /pattern has shape {pat}, expected "
                               f"({n}, {thick[0]}, {pot[1]}, {pot[2]}) for {thick[0]} thickness(es)")
    size = f.attrs.get("size")
    if size is not None and int(size) != pot[1]:
        raise DatasetFileError(f"{path}: damaged dataset file: it declares {int(size)}-pixel images but holds {pot[1]}")
    for group, keys in (("failed", ("id", "source", "reason")), ("splits", ("key", "split"))):
        lengths = {len(f[f"{group}/{k}"]) for k in keys}
        if len(lengths) != 1:
            raise DatasetFileError(f"{path}: damaged dataset file: the columns of /{group} differ in length {sorted(lengths)}")
    return n


@contextlib.contextmanager
def open_dataset_file(path, *, check: bool = True):
    """Open the dataset file at ``path`` read-only: the one way this package opens a dataset.

    Parameters
    ----------
    path : path-like
    check : bool
        Check the layout (:func:`check_layout`): format, every array and column present, the
        arrays as long as the metadata table, consistent image shapes.

    Yields
    ------
    h5py.File

    Raises
    ------
    MissingDatasetError
        If ``path`` does not exist (a ``DatasetFileError`` and a ``FileNotFoundError``).
    DatasetFileError
        A ``ValueError`` with one line naming the file: not HDF5, truncated, not a lacbed-refine
        dataset, damaged, or unreadable while being read.
    """
    path = Path(path)
    f = _h5_open(path)
    try:
        if check:
            check_layout(f, path)
        yield f
    except DatasetFileError:
        raise
    except OSError as exc:  # h5py read errors (a corrupt chunk) name neither the file nor the cause
        raise DatasetFileError(f"{path}: cannot read the dataset file ({_first_line(exc)})") from None
    finally:
        f.close()


def _write_column(group, name: str, kind: str, values: list) -> None:
    import h5py

    if kind == "str":
        data = np.array(["" if v is None else str(v) for v in values], dtype=object)
        group.create_dataset(name, data=data, dtype=h5py.string_dtype("utf-8"), shape=(len(values),))
    elif kind == "int":
        group.create_dataset(name, data=np.array([-1 if v is None else int(v) for v in values], dtype=np.int64))
    else:
        group.create_dataset(name, data=np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64))


def _read_column(group, name: str, kind: str) -> list:
    data = group[name][()]
    if kind == "str":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in data]
    if kind == "int":
        return [int(v) for v in data]
    return [float(v) for v in data]


def dataset_hash(path) -> str:
    """Recompute the content hash of a dataset file from its data (to verify ``content_hash``)."""
    with open_dataset_file(path) as f:
        settings = _settings(f, path)
        hasher = ContentHasher(settings)
        cols = {k: _read_column(f["meta"], k, kind) for k, kind in META_FIELDS.items()}
        n = len(cols["id"])
        for i in range(n):
            meta = {k: cols[k][i] for k in META_FIELDS}
            arrays = {name: f[name][i] for name in _ARRAYS}
            hasher.add_record(meta, arrays)
        failed = [
            dict(zip(("id", "source", "reason"), row))
            for row in zip(*(_read_column(f["failed"], k, "str") for k in ("id", "source", "reason")))
        ]
        hasher.add_failed(failed)
        keys = _read_column(f["splits"], "key", "str")
        splits = _read_column(f["splits"], "split", "str")
        hasher.add_splits(dict(zip(keys, splits)))
    return hasher.hexdigest()


def _settings(f, path) -> dict:
    try:
        settings = json.loads(f.attrs["settings"])
    except (KeyError, TypeError, ValueError):
        raise DatasetFileError(f"{path}: damaged dataset file: its settings attribute is missing or not JSON") from None
    if not isinstance(settings, dict):
        raise DatasetFileError(f"{path}: damaged dataset file: its settings attribute is not a JSON object")
    return settings


def zone_of(settings: dict) -> dict:
    """The geometry a dataset was built at, from its ``settings`` attribute (as :func:`read_info`
    returns it): ``zone`` [u, v, w], ``x_direction`` [h, k, l] and ``normal`` [u, v, w] or None (along
    the beam), and ``standard`` (True for [001] with x along [100] and the normal along the beam:
    the paper's geometry, the only one the shipped surrogates know).

    A build records the zone only when it is not [001] (:class:`~lacbed_refine.dataset.BuildSpec`);
    files without it (older builds, PNG imports of the paper's data) are [001], x [100]."""
    settings = settings if isinstance(settings, dict) else {}
    spec = settings.get("spec") if isinstance(settings.get("spec"), dict) else {}

    def triple(value, default):
        try:
            t = [int(v) for v in value]
        except (TypeError, ValueError):
            return default
        return t if len(t) == 3 else default

    zone = triple(spec.get("zone"), [0, 0, 1])
    x = triple(spec.get("x_direction"), None)
    normal = triple(spec.get("normal"), None)
    if x is None and zone == [0, 0, 1]:
        x = [1, 0, 0]
    standard = zone == [0, 0, 1] and x == [1, 0, 0] and normal in (None, [0, 0, 1])
    return {"zone": zone, "x_direction": x, "normal": normal, "standard": standard}


def read_info(path) -> dict:
    """Summary of a dataset file: attributes, counts per split and per space group, failures.

    Returns
    -------
    dict with ``content_hash``, ``settings`` (dict), ``n_structures``, ``n_failed``,
    ``thickness_nm``, ``per_split`` and ``per_spacegroup`` (counts), ``failed`` (list of dict),
    ``geometry`` (:func:`zone_of`: zone axis, x direction, normal).
    """
    with open_dataset_file(path) as f:
        numbers = _read_column(f["meta"], "spacegroup_number", "int")
        symbols = _read_column(f["meta"], "spacegroup_symbol", "str")
        sources = _read_column(f["meta"], "source", "str")
        splits = _read_column(f["meta"], "split", "str")
        failed = [
            dict(zip(("id", "source", "reason"), row))
            for row in zip(*(_read_column(f["failed"], k, "str") for k in ("id", "source", "reason")))
        ]
        per_sg: dict = {}
        for num, sym, src in zip(numbers, symbols, sources):
            kind = "synthetic" if src == "synthetic" else "real"
            entry = per_sg.setdefault(num, {"symbol": sym, "real": 0, "synthetic": 0})
            entry[kind] += 1
        per_split: dict = {}
        for s in splits:
            per_split[s] = per_split.get(s, 0) + 1
        settings = _settings(f, path)
        return {
            "path": str(path),
            "content_hash": str(f.attrs["content_hash"]),
            "settings": settings,
            "geometry": zone_of(settings),
            "engine_version": str(f.attrs.get("engine_version", "")),
            "created_utc": str(f.attrs.get("created_utc", "")),
            "n_structures": len(numbers),
            "n_failed": len(failed),
            "thickness_nm": [float(x) for x in f["thickness_nm"][()]],
            "size": int(f["potential"].shape[-1]),
            "per_split": dict(sorted(per_split.items())),
            "per_spacegroup": dict(sorted(per_sg.items())),
            "per_source": {s: sources.count(s) for s in sorted(set(sources))},
            "failed": failed,
        }
