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

__all__ = ["single_thread", "available_cpus"]


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
