"""Batch refinement: many (CIF, pattern) samples from a manifest, each in its own folder.

Manifest: a CSV with a header row; columns ``cif`` and ``pattern`` (paths relative to the manifest's
folder or absolute), optional ``id`` (default: row number) and optional per-sample options
``refine``, ``fix``, ``thickness`` [nm], ``half_width`` [Å⁻¹], ``blur`` [pixels], ``beams``, ``mask``.

Ids name folders inside ``DIR``: letters, digits, ``.``, ``_`` and ``-`` only, not starting with a
dot (so never a path such as ``../x`` or ``/tmp/x``); a manifest with any other id is rejected whole,
before any sample runs.

Each sample writes ``DIR/<id>/`` (``refined.cif``, ``report.json``, ``fit.png``, all atomic); a sample
is finished when its ``report.json`` exists and records the same inputs (SHA-256 of the CIF, pattern
and mask files, and the row's options), so a rerun skips it and a SIGKILL never loses a finished
sample. A row whose inputs changed since its result is fitted again; its old report is kept as
``report.previous.json``. A failing sample writes ``DIR/<id>/error.txt`` and the others go on. ``DIR/summary.csv`` (one
row per sample: status, r, thickness, wall time, error) is rewritten atomically after every sample.
Parallelism: a local process pool (``workers``) or a Dask distributed cluster (``scheduler``).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import re
import time
import traceback
from concurrent.futures import as_completed
from pathlib import Path

from lacbed_refine.io.files import atomic_path, check_writable_folder
from lacbed_refine.runtime import Parallel

__all__ = ["read_manifest", "run_batch", "fit_sample"]

log = logging.getLogger(__name__)

_OPTIONAL = ("refine", "fix", "thickness", "half_width", "blur", "beams", "mask", "forward_model", "inverse_model")
_SUMMARY_FIELDS = ("id", "status", "r", "thickness_nm", "seconds", "cif", "pattern", "error")


def read_manifest(path) -> list[dict]:
    """Rows of a manifest CSV with paths resolved; raises ValueError naming the file and row."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such manifest")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); save the manifest as UTF-8 CSV") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the manifest ({exc.strerror or exc})") from None
    try:
        return _parse_manifest(path, text)
    except csv.Error as exc:
        raise ValueError(f"{path}: not a valid CSV manifest ({exc})") from None


_ID = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]{0,127}")


def _parse_manifest(path: Path, text: str) -> list[dict]:
    if "\x00" in text:
        raise ValueError(f"{path}: not a text file (NUL bytes)")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames is None or not {"cif", "pattern"} <= set(reader.fieldnames):
        raise ValueError(f"{path}: the manifest needs a header with columns 'cif' and 'pattern'")
    unknown = set(reader.fieldnames) - {"id", "cif", "pattern", *_OPTIONAL}
    if unknown:
        raise ValueError(f"{path}: unknown manifest columns {sorted(unknown)}")
    rows = []
    for i, row in enumerate(reader, start=1):
        if None in row:
            raise ValueError(f"{path}: row {i} has more fields than the header")
        sample = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if v not in (None, "")}
        sample.setdefault("id", f"{i:04d}")
        if not _ID.fullmatch(sample["id"]):
            raise ValueError(f"{path}: row {i}: id {sample['id']!r} must be a plain folder name (letters, digits, "
                             "'.', '_', '-'; not starting with '.'), as results go to OUTPUT/<id>/")
        for key in ("cif", "pattern"):
            if key not in sample:
                raise ValueError(f"{path}: row {i} ({sample['id']}) has no {key}")
        for key in ("cif", "pattern", "mask", "forward_model", "inverse_model"):
            if key in sample:
                p = Path(sample[key])
                sample[key] = str(p if p.is_absolute() else path.parent / p)
        rows.append(sample)
    if not rows:
        raise ValueError(f"{path}: the manifest lists no samples (a header and no rows)")
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: sample ids are not unique")
    return rows


def _fingerprint(sample: dict) -> dict:
    """What a finished result depends on: the row's options and the SHA-256 of its input files."""
    out = {}
    for key, value in sorted(sample.items()):
        if key in ("cif", "pattern", "mask", "forward_model", "inverse_model"):
            try:
                out[key] = hashlib.sha256(Path(value).read_bytes()).hexdigest()
            except OSError:
                out[key] = None
        elif key != "id":
            out[key] = value
    return out


def fit_sample(sample: dict, out_dir: str, threads: int | None = None) -> dict:
    """Refine one manifest row into ``out_dir/<id>``; never raises (errors become the status).
    ``threads``: the engine's threads for this sample (None: every CPU this process may use)."""
    from lacbed_refine.refine.config import FitConfig
    from lacbed_refine.refine.files import fit_files

    folder = Path(out_dir) / sample["id"]
    t0 = time.perf_counter()
    status = {"id": sample["id"], "cif": sample.get("cif"), "pattern": sample.get("pattern")}
    try:
        config = FitConfig(
            refine=tuple(x for x in sample.get("refine", "xyz,b,occ,thickness").split(",") if x),
            fix=tuple(x for x in sample.get("fix", "").split(",") if x),
            thickness_nm=_number(sample, "thickness", float),
            blur_sigma=_number(sample, "blur", float) or 0.0,
            forward_model=sample.get("forward_model"),
            inverse_model=sample.get("inverse_model"),
            threads=threads,
        )
        fingerprint = _fingerprint(sample)
        old = folder / "report.json"
        if old.exists():  # a stale result of other inputs: keep it aside, never silently lose it
            old.replace(folder / "report.previous.json")
        result, _ = fit_files(
            sample["cif"], sample["pattern"], folder, config=config,
            pattern_half_width=_number(sample, "half_width", float), mask_path=sample.get("mask"),
            n_beams=_number(sample, "beams", int), overwrite=True,
            extra={"batch_inputs": fingerprint},
        )
        status.update(status="done", r=result.r, thickness_nm=result.thickness_nm)
    except Exception as exc:  # a failing sample is recorded, whatever went wrong, and the batch goes on
        folder.mkdir(parents=True, exist_ok=True)
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        with atomic_path(folder / "error.txt") as tmp:
            tmp.write_text(f"{type(exc).__name__}: {message}\n\n{traceback.format_exc()}")
        status.update(status="failed", error=message)
    status["seconds"] = time.perf_counter() - t0
    return status


def _number(sample: dict, key: str, kind):
    """A numeric manifest field, or None when absent; ValueError naming the column and value."""
    if key not in sample:
        return None
    try:
        return kind(sample[key])
    except ValueError:
        raise ValueError(f"manifest column {key}: {sample[key]!r} is not {'an integer' if kind is int else 'a number'}") from None


def _finished(sample: dict, out_dir: Path) -> dict | None:
    report = out_dir / sample["id"] / "report.json"
    if not report.is_file():
        return None
    try:
        data = json.loads(report.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if data.get("batch_inputs") != _fingerprint(sample):
        log.warning("%s: inputs changed since its result was written; fitting it again", sample["id"])
        return None
    thickness = next((p["refined"] for p in data.get("parameters", []) if p["name"] == "thickness_nm"), None)
    return {"id": sample["id"], "status": "done", "r": data.get("r"), "thickness_nm": thickness,
            "cif": sample.get("cif"), "pattern": sample.get("pattern"), "seconds": None}


def _write_summary(out_dir: Path, statuses: dict, order: list[str]) -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=_SUMMARY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for sid in order:
        writer.writerow(statuses.get(sid, {"id": sid, "status": "pending"}))
    path = out_dir / "summary.csv"
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def run_batch(manifest, out_dir, *, workers: int = 1, scheduler: str | None = None, progress: bool = True,
              parallel: Parallel | None = None) -> dict:
    """Refine every sample of ``manifest`` into ``out_dir``; returns counts and the summary path.

    Finished samples (with a ``report.json``) are skipped, so a killed batch resumes where it
    stopped. The samples run under ``parallel`` (:class:`~lacbed_refine.runtime.Parallel`), by
    default the policy ``workers`` / ``scheduler`` ask for: ``workers`` > 1 a local process pool,
    ``scheduler`` (a Dask address, e.g. ``tcp://host:8786``) a Dask distributed cluster.
    """
    samples = read_manifest(manifest)
    parallel = parallel if parallel is not None else Parallel.of(workers, scheduler)
    created = not Path(out_dir).exists()
    out = check_writable_folder(out_dir, option="-o")
    with contextlib.ExitStack() as stack:
        try:  # reach the workers (a Dask scheduler) before anything is written
            pool = stack.enter_context(parallel.executor())
        except ValueError:
            if created and out.is_dir() and not any(out.iterdir()):
                out.rmdir()
            raise
        order = [s["id"] for s in samples]
        statuses = {}
        todo = []
        for s in samples:
            done = _finished(s, out)
            if done is not None:
                statuses[s["id"]] = done
            else:
                todo.append(s)
        _write_summary(out, statuses, order)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = stack.enter_context(tqdm(total=len(samples), initial=len(samples) - len(todo), unit="sample",
                                           desc="batch fit"))

        def record(status):
            statuses[status["id"]] = status
            _write_summary(out, statuses, order)
            if bar is not None:
                bar.update(1)
                bar.set_postfix_str(f"{status['id']}: {status['status']}")

        # a serial batch gives each sample every CPU; pooled samples run one engine thread each
        threads = None if parallel.kind == "serial" else 1
        if parallel.kind == "serial":  # the serial executor runs at submit: record each as it ends
            for s in todo:
                record(pool.submit(fit_sample, s, str(out), threads).result())
        else:
            for fut in as_completed([pool.submit(fit_sample, s, str(out), threads) for s in todo]):
                record(fut.result())
    counts = {k: sum(1 for v in statuses.values() if v["status"] == k) for k in ("done", "failed")}
    return {"summary": str(out / "summary.csv"), "skipped": len(samples) - len(todo), **counts, "total": len(samples)}
