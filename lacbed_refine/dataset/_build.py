"""``build_dataset``: structures in, one HDF5 dataset out — resumable, parallel, deterministic.

1. Tasks: every CIF of the input folders (sorted by id), then synthetic structures 0 … N−1.
2. Tasks without a shard in the work folder are computed — in this process (``workers=1``), by a
   pool of single-threaded worker processes, or on a Dask cluster (``scheduler``) — and each result
   is written as its own shard as soon as it arrives. A killed build loses only the structures in
   flight; the same call continues from the shards.
3. When every task has a shard, the file is assembled in task order into a temporary file, moved
   into place, and the work folder removed. The content hash is computed from the data in that
   order, so it does not depend on interruptions, worker count or scheduler.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lacbed_refine.io.files import check_writable_folder
from lacbed_refine.runtime import Parallel
from lacbed_refine.dataset.splits import DEFAULT_FRACTIONS, assign_split
from lacbed_refine.dataset._layout import canonical_json, read_info, write_dataset
from lacbed_refine.dataset._tasks import BuildSpec, Task, cif_tasks, run_task, synthetic_tasks
from lacbed_refine.dataset._workdir import WorkDir, remove_trash

__all__ = ["build_dataset", "BuildResult"]

log = logging.getLogger(__name__)

# A task whose worker process dies this many times (out of memory, segfault) is recorded as failed.
_MAX_CRASHES = 2


@dataclass
class BuildResult:
    """What a build did.

    Attributes
    ----------
    output : str
    content_hash : str
    n_structures, n_failed : int
        In the file.
    computed : int
        Structures computed by this call (the rest came from shards or an up-to-date file).
    seconds : float
        Wall time of this call [s].
    per_spacegroup : dict
        Space-group number → {"symbol", "real", "synthetic"} counts.
    up_to_date : bool
        True when the file already existed with these inputs and settings.
    """

    output: str
    content_hash: str
    n_structures: int
    n_failed: int
    computed: int
    seconds: float
    per_spacegroup: dict = field(default_factory=dict)
    up_to_date: bool = False


def _inputs_digest(tasks: list[Task]) -> str:
    h = hashlib.sha256()
    for t in tasks:
        h.update(canonical_json([t.id, t.kind, t.source, t.digest, t.seed, t.index]).encode())
    return "sha256:" + h.hexdigest()


def build_dataset(
    output,
    *,
    cifs=(),
    synthetic: int = 0,
    seed: int = 0,
    spec: BuildSpec | None = None,
    workers: int = 1,
    scheduler: str | None = None,
    split_seed: int = 0,
    split_fractions=DEFAULT_FRACTIONS,
    keep_work: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "",
    throttle_s: float = 0.0,
    parallel: Parallel | None = None,
) -> BuildResult:
    """Build (or resume building) a dataset file.

    Parameters
    ----------
    output : path-like
        The ``.h5`` file to write.
    cifs : sequence of path-like
        Folders of CIFs (searched recursively; an ``index.csv`` gives each file's source).
    synthetic : int
        Number of synthetic structures (:func:`lacbed_refine.dataset.synthetic.random_crystal`).
    seed : int
        Seed of the synthetic structures.
    spec : BuildSpec, optional
        Simulation settings; default ``BuildSpec()`` (paper geometry, the dataset beam rule).
    workers : int
        Worker processes (one structure each, one thread each); 1 computes in this process.
        Ignored with ``scheduler``.
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://host:8786``); its workers compute.
    split_seed : int
        Seed of the split by formula (:func:`lacbed_refine.dataset.splits.assign_split`).
    split_fractions : sequence of 3 float
        Train, validation, test fractions (of formulas).
    keep_work : bool
        Keep the work folder of shards after assembly.
    overwrite : bool
        Replace an existing output built from other inputs or settings.
    progress : bool
        Show a progress bar (structures, rate, ETA) on stderr.
    command : str
        Command line to record in the file.
    throttle_s : float
        Pause [s] after storing each result; only for tests that interrupt a build.
    parallel : lacbed_refine.runtime.Parallel, optional
        The executor policy, instead of ``workers``/``scheduler`` (which make one by
        :meth:`Parallel.of`): serial, threads, processes or Dask.

    Returns
    -------
    BuildResult

    Raises
    ------
    ValueError
        Before any work, one line naming the option: no input, a negative ``synthetic`` or
        ``seed``, ``workers`` below 1, an engine that is not installed or cannot run here, an
        output from other inputs without ``overwrite``, or a work folder of another spec; after
        computing, when no structure at all could be simulated (nothing is written then).
    """
    t_start = time.perf_counter()
    spec = spec or BuildSpec()
    output = Path(output)
    parallel = parallel if parallel is not None else Parallel.of(workers, scheduler)
    for option, value in (("--synthetic", synthetic), ("--seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{option} {value!r}: must be a whole number >= 0")
    _check_engine(spec.engine)
    if output.is_dir():
        raise ValueError(f"-o {output}: is a folder, a file path is needed")
    check_writable_folder(output.parent, option="-o")
    tasks: list[Task] = []
    for folder in cifs:
        tasks += cif_tasks(folder, start=len(tasks))
    tasks += synthetic_tasks(int(synthetic), int(seed), start=len(tasks))
    if not tasks:
        raise ValueError("nothing to build: give CIF folders (--cifs) and/or synthetic structures (--synthetic N)")
    ids = [t.id for t in tasks]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"structure ids occur twice across the inputs: {', '.join(dup[:5])}")
    settings = {
        "spec": spec.to_dict(),
        "inputs": {
            "cif_folders": len(list(cifs)),
            "n_cif": sum(t.kind == "cif" for t in tasks),
            "n_synthetic": int(synthetic),
            "synthetic_seed": int(seed),
            "digest": _inputs_digest(tasks),
        },
        "split": {"seed": int(split_seed), "fractions": [float(f) for f in split_fractions], "key": "reduced_formula"},
    }
    work = WorkDir(output)
    remove_trash(output)  # a work folder half-deleted by a build killed at its very end
    if output.exists() and not work.exists():
        up = _up_to_date(output, settings)
        if up is not None:
            log.info("%s is up to date (%s)", output, up["content_hash"])
            return BuildResult(str(output), up["content_hash"], up["n_structures"], up["n_failed"], 0,
                               time.perf_counter() - t_start, up["per_spacegroup"], up_to_date=True)
        if not overwrite:
            raise ValueError(f"{output} exists and was built from other inputs or settings; pass --overwrite to replace it")

    if parallel.kind == "dask":
        parallel.connect().close()  # before the work folder exists: an unreachable cluster leaves nothing
    work.open(spec.to_dict())
    try:
        work.write_tasks(ids)
        finished = work.finished()
        pending = [t for t in tasks if work.status(t.id, finished) is None]
        log.info("%d structures: %d finished in %s, %d to compute", len(tasks), len(tasks) - len(pending),
                 work.path, len(pending))
        store = _Store(work, throttle_s)
        computed = _compute_all(pending, spec, store, parallel=parallel, total=len(tasks), progress=progress)
        result = _assemble(output, tasks, work, settings, spec, command=command, progress=progress)
    except _NothingBuilt:
        # shards that only record failures are no use to a later run: leave nothing behind
        work.close()
        if not keep_work:
            work.remove()
        raise
    finally:
        work.close()
    if not keep_work:
        work.remove()
    result.computed = computed
    result.seconds = time.perf_counter() - t_start
    return result


class _NothingBuilt(ValueError):
    """Every structure of a build failed: there is no dataset to write."""


def _check_engine(name: str) -> None:
    """Refuse, before any work, a simulator that is not installed or cannot run here (every
    structure would otherwise fail in the workers, one by one)."""
    if name == "bloch":
        return
    from lacbed_refine.simulators.registry import PluginError, get_simulator

    try:
        sim = get_simulator(name)
    except PluginError as exc:
        reason = str(exc)
        prefix = f"simulator {name!r}: "
        raise ValueError(f"--engine {name!r}: {reason[len(prefix):] if reason.startswith(prefix) else reason}") from None
    try:
        ok, why = sim.available()
    except Exception as exc:  # noqa: BLE001 - a plugin's own failure, reported as its state
        ok, why = False, f"{type(exc).__name__}: {exc}"
    if not ok:
        raise ValueError(f"--engine {name!r}: installed but cannot run here ({' '.join(str(why).split())})")


def _up_to_date(output: Path, settings: dict) -> dict | None:
    try:
        info = read_info(output)
    except (OSError, ValueError, KeyError):
        return None
    return info if canonical_json(info["settings"]) == canonical_json(settings) else None


# ------------------------------------------------------------------------------------------------
# computing
# ------------------------------------------------------------------------------------------------
class _Store:
    """Writes each result as its shard the moment it arrives (and logs skipped structures)."""

    def __init__(self, work: WorkDir, throttle_s: float = 0.0):
        self.work = work
        self.throttle_s = throttle_s

    def __call__(self, task: Task, status: str, payload) -> None:
        if status == "ok":
            for w in payload.extra.get("warnings", []):
                log.info("%s: %s", task.id, w)
            self.work.write_record(payload)
        else:
            log.warning("%s: skipped: %s", task.id, payload)
            self.work.write_failure(task.id, task.source, payload)
        if self.throttle_s:
            time.sleep(self.throttle_s)


def _bar(total: int, initial: int, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="structure", desc="dataset", disable=not progress,
                smoothing=0.05, dynamic_ncols=True, file=sys.stderr)


def _compute_all(pending, spec, store, *, parallel: Parallel, total, progress) -> int:
    if not pending:
        return 0
    from tqdm.contrib.logging import logging_redirect_tqdm

    with _bar(total, total - len(pending), progress) as bar, logging_redirect_tqdm():
        if parallel.kind == "dask":
            return _run_dask(pending, spec, store, parallel, bar)
        if parallel.kind == "serial":
            for task in pending:
                status, payload = run_task(task, spec)
                store(task, status, payload)
                bar.update(1)
            return len(pending)
        return _run_pool(pending, spec, store, parallel, bar)


def _init_worker(parent: int) -> None:
    """Worker set-up (after :class:`Parallel` set one torch thread): exit when the parent build (pid
    ``parent``) dies, even by SIGKILL, instead of lingering as an orphan. The parent's pid is passed in rather than read
    here: on a loaded machine a worker can reach this point after the parent was already killed,
    and would then take its new parent (init) for the build."""
    import threading

    def watch():
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def _run_pool(pending, spec, store, parallel: Parallel, bar) -> int:
    """A local pool (``parallel``: processes or threads) with at most 2×workers tasks in flight; a
    pool broken by a dying worker is rebuilt and its tasks retried, and a task that kills workers
    twice is recorded as failed."""
    workers = parallel.workers
    queue = list(reversed(pending))
    crashes: dict[str, int] = {}
    done = 0
    while queue:
        inflight: dict[cf.Future, Task] = {}
        broken = False
        with parallel.executor(initializer=_init_worker, initargs=(os.getpid(),)) as pool:
            while queue or inflight:
                while queue and len(inflight) < 2 * workers and not broken:
                    task = queue.pop()
                    inflight[pool.submit(run_task, task, spec)] = task
                finished, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                for fut in finished:
                    task = inflight.pop(fut)
                    try:
                        status, payload = fut.result()
                    except cf.process.BrokenProcessPool:
                        broken = True
                        crashes[task.id] = crashes.get(task.id, 0) + 1
                        if crashes[task.id] >= _MAX_CRASHES:
                            store(task, "failed", "worker process died while computing it (out of memory?)")
                            bar.update(1)
                            done += 1
                        else:
                            queue.append(task)
                        continue
                    store(task, status, payload)
                    bar.update(1)
                    done += 1
                if broken and not inflight:
                    log.warning("a worker process died; restarting the pool")
                    break
    return done


def _run_dask(pending, spec, store, parallel: Parallel, bar) -> int:
    """Every task to the Dask cluster at once; results are stored as they come back."""
    done = 0
    with parallel.executor() as pool:
        futures = {pool.submit(run_task, task, spec): task for task in pending}
        for fut in cf.as_completed(futures):
            status, payload = fut.result()
            store(futures.pop(fut), status, payload)
            bar.update(1)
            done += 1
    return done


# ------------------------------------------------------------------------------------------------
# assembly
# ------------------------------------------------------------------------------------------------
def _assemble(output: Path, tasks, work: WorkDir, settings: dict, spec: BuildSpec, *, command: str,
              progress: bool):
    finished = work.finished()
    ok = [t for t in tasks if work.status(t.id, finished) == "ok"]
    failed = [work.read_failure(t.id) for t in tasks if work.status(t.id, finished) == "failed"]
    missing = [t.id for t in tasks if work.status(t.id, finished) is None]
    if missing:
        raise RuntimeError(f"{len(missing)} structures have no shard after computing (first: {missing[0]})")
    if not ok:
        first = failed[0] if failed else {"id": "?", "reason": "?"}
        raise _NothingBuilt(f"{output}: none of the {len(tasks)} structures could be simulated, nothing written "
                            f"(first: {first['id']}: {first['reason']})")
    # the split table needs every formula before the file is written: one pass over the metadata
    formulas = {}
    for t in ok:
        formulas[t.id] = _shard_formula(work, t.id)
    split = settings["split"]
    table = {f: assign_split(f, seed=split["seed"], fractions=split["fractions"]) for f in sorted(set(formulas.values()))}

    def records():
        for t in ok:
            rec = work.read_record(t.id)
            rec.meta["split"] = table[rec.meta["reduced_formula"]]
            yield rec

    log.info("assembling %s: %d structures, %d failed", output, len(ok), len(failed))
    with _bar(len(ok), 0, progress) as bar:
        bar.set_description("assemble")
        digest = write_dataset(
            output, records(), n=len(ok), size=spec.size, thickness_nm=spec.thickness_nm, settings=settings,
            failed=failed, split_table=table, split_key="reduced_formula", command=command, progress=bar.update,
        )
    info = read_info(output)
    return BuildResult(str(output), digest, len(ok), len(failed), 0, 0.0, info["per_spacegroup"])


def _shard_formula(work: WorkDir, ident: str) -> str:
    import numpy as np

    from lacbed_refine.dataset._workdir import _stem

    with np.load(work.path / f"{_stem(ident)}.npz") as z:
        return json.loads(z["meta"].tobytes().decode())["meta"]["reduced_formula"]

