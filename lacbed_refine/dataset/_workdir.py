"""The work folder of a build: one shard file per finished structure, written atomically.

``<output>.work/`` next to the output holds ``spec.json`` (what every shard was computed with),
``lock`` (held with ``flock`` while a build runs, so two builds never share a folder) and one file
per finished task: ``<id>.npz`` (arrays + metadata) or ``<id>.failed.json``. Each shard is written to
a temporary name, flushed to disk and renamed, so a build killed at any moment (SIGKILL included)
leaves only complete shards and stray temporaries, which the next run deletes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

from lacbed_refine.dataset._layout import Record, canonical_json

__all__ = ["WorkDir", "work_status", "remove_trash"]

_SAFE = re.compile(r"^[A-Za-z0-9._-]+$")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{os.urandom(4).hex()}-{path.name}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _stem(ident: str) -> str:
    if _SAFE.match(ident) and not ident.startswith("."):
        return ident
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", ident).lstrip(".")
    return f"{clean}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"


class WorkDir:
    """Shards of one build, next to its output.

    Parameters
    ----------
    output : path-like
        The dataset file the shards will be assembled into.
    """

    def __init__(self, output):
        output = Path(output)
        self.output = output
        self.path = output.with_name(output.name + ".work")
        self._lock_fh = None

    # -- life cycle ---------------------------------------------------------------------------
    def exists(self) -> bool:
        """Whether the work folder exists."""
        return self.path.is_dir()

    def open(self, spec: dict) -> None:
        """Create or reopen the folder, take the lock, check ``spec`` and delete stray temporaries.

        Raises
        ------
        ValueError
            If another build holds the folder, or its shards were made with another spec.
        """
        remove_trash(self.output)
        self.path.mkdir(parents=True, exist_ok=True)
        fh = open(self.path / "lock", "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise ValueError(f"{self.path}: another build is using this work folder") from None
        self._lock_fh = fh
        spec_file = self.path / "spec.json"
        text = canonical_json(spec)
        if spec_file.is_file():
            old = spec_file.read_text()
            if old != text:
                self.close()
                raise ValueError(
                    f"{self.path}: its shards were computed with other settings ({old}); "
                    "rerun with those settings, or delete the folder to start again"
                )
        else:
            _atomic_write_bytes(spec_file, text.encode())
        for stray in list(self.path.glob(".tmp-*")) + list(self.output.parent.glob(f".{self.output.name}.tmp-*")):
            with contextlib.suppress(FileNotFoundError):
                stray.unlink()

    def close(self) -> None:
        """Release the lock (the shards stay)."""
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def remove(self) -> None:
        """Delete the folder: renamed out of the way first, so a kill mid-way leaves no half folder."""
        self.close()
        trash = self.output.with_name(f".{self.output.name}.work-trash-{os.getpid()}")
        os.replace(self.path, trash)
        shutil.rmtree(trash, ignore_errors=True)

    # -- shards -------------------------------------------------------------------------------
    def write_tasks(self, ids: list[str]) -> None:
        """Record the ids of the current build (for :func:`work_status`)."""
        _atomic_write_bytes(self.path / "tasks.json", json.dumps(ids).encode())

    def finished(self) -> dict[str, str]:
        """Ids → ``"ok"`` or ``"failed"`` for every complete shard (by file name)."""
        out = {}
        for p in self.path.iterdir():
            name = p.name
            if name.startswith(".") or name in ("spec.json", "tasks.json"):
                continue
            if name.endswith(".failed.json"):
                out[name[: -len(".failed.json")]] = "failed"
            elif name.endswith(".npz"):
                out[name[:-4]] = "ok"
        return out

    def status(self, ident: str, finished: dict[str, str]) -> str | None:
        """``"ok"``, ``"failed"`` or None (not finished) for ``ident``, given :meth:`finished`."""
        return finished.get(_stem(ident))

    def write_record(self, rec: Record) -> None:
        """Write a finished structure's shard ``<id>.npz`` atomically."""
        buf = io.BytesIO()
        meta = json.dumps({"meta": rec.meta, "extra": rec.extra}).encode()
        np.savez_compressed(
            buf,
            potential=rec.potential,
            potential_raw=rec.potential_raw,
            pattern=rec.pattern,
            meta=np.frombuffer(meta, dtype=np.uint8),
        )
        _atomic_write_bytes(self.path / f"{_stem(rec.meta['id'])}.npz", buf.getvalue())

    def write_failure(self, ident: str, source: str, reason: str) -> None:
        """Write a skipped structure's shard ``<id>.failed.json`` atomically."""
        data = json.dumps({"id": ident, "source": source, "reason": reason}).encode()
        _atomic_write_bytes(self.path / f"{_stem(ident)}.failed.json", data)

    def read_record(self, ident: str) -> Record:
        """The :class:`Record` in ``<id>.npz``."""
        with np.load(self.path / f"{_stem(ident)}.npz") as z:
            info = json.loads(z["meta"].tobytes().decode())
            return Record(meta=info["meta"], potential=z["potential"], potential_raw=z["potential_raw"],
                          pattern=z["pattern"], extra=info.get("extra", {}))

    def read_failure(self, ident: str) -> dict:
        """``{"id", "source", "reason"}`` of a skipped structure."""
        return json.loads((self.path / f"{_stem(ident)}.failed.json").read_text())


def remove_trash(output) -> None:
    """Delete work folders of ``output`` that a removal left behind (renamed, not yet deleted)."""
    output = Path(output)
    for trash in output.parent.glob(f".{output.name}.work-trash-*"):
        shutil.rmtree(trash, ignore_errors=True)


def work_status(output) -> dict:
    """Progress of an unfinished build of ``output``, read from its work folder (no lock taken).

    Returns
    -------
    dict with ``work`` (folder), ``total`` (tasks of the last start, or None), ``done``, ``failed``,
    ``pending`` (or None), ``per_spacegroup`` ({number: count} of finished structures),
    ``cpu_seconds`` (mean per finished structure) and ``spec``.

    Raises
    ------
    ValueError
        If there is no work folder (the build finished, or never started).
    """
    work = WorkDir(output)
    if not work.exists():
        raise ValueError(f"{work.path}: no work folder (the build is finished or was never started)")
    try:
        return _work_status(work)
    except (ValueError, KeyError, OSError, UnicodeDecodeError) as exc:  # a damaged shard or task list
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{output}: its work folder {work.path} is damaged ({msg})") from None


def _work_status(work) -> dict:
    finished = work.finished()
    per_sg: dict[int, int] = {}
    cpu = []
    for stem, status in finished.items():
        if status != "ok":
            continue
        with np.load(work.path / f"{stem}.npz") as z:
            meta = json.loads(z["meta"].tobytes().decode())["meta"]
        per_sg[meta["spacegroup_number"]] = per_sg.get(meta["spacegroup_number"], 0) + 1
        cpu.append(meta.get("cpu_seconds", float("nan")))
    tasks_file = work.path / "tasks.json"
    total = len(json.loads(tasks_file.read_text())) if tasks_file.is_file() else None
    done = sum(1 for s in finished.values() if s == "ok")
    failed = sum(1 for s in finished.values() if s == "failed")
    spec_file = work.path / "spec.json"
    return {
        "work": str(work.path),
        "total": total,
        "done": done,
        "failed": failed,
        "pending": None if total is None else total - done - failed,
        "per_spacegroup": dict(sorted(per_sg.items())),
        "cpu_seconds": float(np.mean(cpu)) if cpu else float("nan"),
        "spec": json.loads(spec_file.read_text()) if spec_file.is_file() else {},
    }
