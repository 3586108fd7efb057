"""Process-wide compute settings that must be set explicitly rather than inherited.

The batched eigen-solves of the Bloch engine run through MKL inside torch. With more than one
intra-op thread they are no faster on this project's 2-core machines, and whenever another process
keeps a core busy they become catastrophically slow (measured here: 2080 69-beam solves took 0.49 s
on one thread and 68.9 s on two threads while a second job was running; 13.6 s vs 0.4 s with the
inherited default). The engine therefore runs its solves on one thread and gets parallelism from
processes (one structure or one chunk of pixels per worker) instead.
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["single_thread", "available_cpus", "resolve_device", "check_workers"]


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
