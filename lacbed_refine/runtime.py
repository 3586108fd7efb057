"""Compute settings: torch threads, devices, and the one executor policy (:class:`Parallel`).

The batched eigen-solves of the Bloch engine run through MKL inside torch. With more than one
intra-op thread they are no faster on this project's 2-core machines, and whenever another process
keeps a core busy they become catastrophically slow (measured here: 2080 69-beam solves took 0.49 s
on one thread and 68.9 s on two threads while a second job was running; 13.6 s vs 0.4 s with the
inherited default). The engine therefore runs its solves on one thread and gets parallelism from
processes (one structure or one chunk of pixels per worker) instead.

How independent pieces of work run side by side — pixel chunks in the engine, structures in a
dataset build, samples in a batch refinement — is one value, a :class:`Parallel` (serial, threads,
processes or a Dask cluster), made once from the command's options and passed down; no module
decides it on its own.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
import warnings
from dataclasses import dataclass

import torch

__all__ = ["single_thread", "available_cpus", "resolve_device", "check_workers", "Parallel", "PARALLEL_KINDS"]

#: the executor kinds a :class:`Parallel` may name
PARALLEL_KINDS = ("serial", "threads", "processes", "dask")


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def single_thread():
    """Run the block with one torch intra-op thread (``LACBED_THREADS`` overrides), then restore."""
    before = torch.get_num_threads()
    n = int(os.environ.get("LACBED_THREADS", "1"))
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def resolve_device(device, *, option: str = "--device") -> torch.device:
    """The torch device named by ``device`` ("cpu", "cuda", "cuda:1", ...), checked before any work.

    Raises
    ------
    ValueError
        One line naming ``option`` and the value: an unknown device name, or a CUDA device on a
        machine (or torch build) without one.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{option} {device!r}: not a torch device (use cpu, or cuda where a GPU is present)") from None
    if dev.type == "cpu":
        return dev
    if dev.type != "cuda":
        raise ValueError(f"{option} {device!r}: only cpu and cuda are supported")
    if not torch.cuda.is_available():
        raise ValueError(f"{option} {device!r}: no CUDA GPU is available to this torch build; use --device cpu")
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{option} {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def check_workers(workers, *, option: str = "--workers") -> int:
    """A worker-process count: at least 1; more than the CPUs this process may use is capped there
    (extra single-thread workers on the same cores only add overhead) with a warning."""
    import logging

    try:
        n = int(workers)
    except (TypeError, ValueError):
        raise ValueError(f"{option} {workers!r}: not an integer") from None
    if n != workers or n < 1:
        raise ValueError(f"{option} {workers!r}: must be a whole number >= 1")
    cpus = available_cpus()
    if n > cpus:
        logging.getLogger(__name__).warning("%s %d: capped at the %d CPUs available", option, n, cpus)
        n = cpus
    return n


def one_torch_thread() -> None:
    """Worker-process initialiser: one torch intra-op thread (see the module docstring)."""
    torch.set_num_threads(1)


class _SerialExecutor(cf.Executor):
    """Runs each call at ``submit``, in this process: the ``serial`` policy behind the same interface."""

    def submit(self, fn, /, *args, **kwargs):
        fut = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # delivered by fut.result(), as a pool would
            fut.set_exception(exc)
        return fut


@contextlib.contextmanager
def _single_threaded_children():
    """Spawned workers inherit OMP/MKL_NUM_THREADS=1 (BLAS pools are sized before torch can be told)."""
    keys = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: persistent engine pools, one per (kind, workers): created on first use, reused by later calls
_SHARED: dict[tuple[str, int], cf.Executor] = {}


@dataclass(frozen=True)
class Parallel:
    """The executor policy: how independent pieces of work run side by side.

    Attributes
    ----------
    kind : {"serial", "threads", "processes", "dask"}
        ``serial`` runs them one after another here; ``threads`` and ``processes`` use a local pool
        of ``workers`` (processes run one torch thread each); ``dask`` sends them to the Dask
        scheduler at ``scheduler``.
    workers : int
        Pool size for ``threads`` and ``processes`` (capped at the CPUs available, with a warning).
    scheduler : str or None
        Dask scheduler address (``tcp://host:8786``); only with ``kind="dask"``.
    """

    kind: str = "serial"
    workers: int = 1
    scheduler: str | None = None

    def __post_init__(self):
        if self.kind not in PARALLEL_KINDS:
            raise ValueError(f"parallel kind {self.kind!r}: use one of {', '.join(PARALLEL_KINDS)}")
        object.__setattr__(self, "workers", check_workers(self.workers))
        if (self.kind == "dask") != bool(self.scheduler):
            raise ValueError("--scheduler: a Dask address is needed for (and only for) the dask policy, "
                             f"got kind {self.kind!r} with scheduler {self.scheduler!r}")

    @classmethod
    def of(cls, workers=1, scheduler: str | None = None) -> "Parallel":
        """The policy a command's ``--workers N`` / ``--scheduler ADDRESS`` options ask for (a
        :class:`Parallel` passes through): Dask when an address is given, else processes for N > 1,
        else serial."""
        if isinstance(workers, cls):
            return workers
        if scheduler:
            return cls("dask", 1, scheduler)
        n = check_workers(workers)
        return cls("processes", n) if n > 1 else cls()

    @contextlib.contextmanager
    def executor(self, *, initializer=None, initargs=()):
        """A :class:`concurrent.futures.Executor` for this policy, shut down on exit.

        Processes are spawned (a clean interpreter; ``initializer(*initargs)`` runs in each, after
        the worker is set to one torch thread). For Dask the scheduler is reached first, and one
        line names the address if it cannot be.
        """
        if self.kind == "serial":
            yield _SerialExecutor()
        elif self.kind == "threads":
            with cf.ThreadPoolExecutor(self.workers) as ex:
                yield ex
        elif self.kind == "processes":
            import multiprocessing

            with _single_threaded_children():
                ex = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_init_process, initargs=(initializer, initargs))
            try:
                yield ex
            finally:
                ex.shutdown(wait=True, cancel_futures=True)
        else:
            client = self.connect()
            try:
                yield client.get_executor(pure=False)
            finally:
                client.close()

    def connect(self):
        """A Dask ``Client`` of :attr:`scheduler` (``kind="dask"`` only); ValueError naming the
        address when dask.distributed is missing or the scheduler cannot be reached."""
        try:
            from dask.distributed import Client
        except ImportError:
            raise ValueError('--scheduler needs dask.distributed: pip install "lacbed-refine[dask]"') from None
        try:
            return Client(self.scheduler, set_as_default=False)
        except Exception as exc:  # OSError, TimeoutError, ValueError for a bad address: all one line
            raise ValueError(f"--scheduler {self.scheduler}: cannot connect ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else 'no answer'})") from None

    def local(self) -> "Parallel":
        """This policy, checked to run here (serial, threads or processes): Dask is for whole
        structures (dataset build) or samples (batch), not the engine's pixel chunks."""
        if self.kind == "dask":
            raise ValueError("the engine splits pixels over local threads or processes; "
                             "use Dask for whole structures (dataset build) or samples (batch)")
        return self

    def shared_pool(self) -> cf.Executor | None:
        """A persistent pool for the engine's pixel chunks (``None`` for ``serial``).

        Engine calls are short and many (a fit makes hundreds), so their pool is made once per
        policy and kept: processes are forked, which starts in milliseconds (the workers only run
        torch ops on the data they are sent, so the warning about forking a threaded process does not
        apply to them). Dask is refused (:meth:`local`).
        """
        if self.local().kind == "serial":
            return None
        key = (self.kind, self.workers)
        if key not in _SHARED:
            if self.kind == "threads":
                _SHARED[key] = cf.ThreadPoolExecutor(self.workers)
            else:
                import multiprocessing

                method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    _SHARED[key] = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                                          initializer=one_torch_thread)
        return _SHARED[key]


def _init_process(initializer, initargs) -> None:
    one_torch_thread()
    if initializer is not None:
        initializer(*initargs)
