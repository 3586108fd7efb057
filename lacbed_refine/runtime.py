"""Process-wide compute settings that must be set explicitly rather than inherited.

Left at its default, MKL's threading inside torch's batched ``eigh`` runs 10-30x slower on this
project's 2-core machines than after an explicit ``torch.set_num_threads`` (measured: 2080 SrTiO3
structure matrices, 13.6 s vs 0.4 s), most likely because the default thread count is taken from
the host's cores rather than the CPUs this process may use. The engine therefore pins the count
once, to the CPUs in this process's affinity mask (or ``LACBED_THREADS``).
"""

from __future__ import annotations

import os

import torch

__all__ = ["configure_threads", "available_cpus"]

_configured = False


def available_cpus() -> int:
    """CPUs this process may run on (affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def configure_threads(n: int | None = None, *, force: bool = False) -> int:
    """Set torch's (and so MKL's) intra-op thread count once per process; returns the count.

    Parameters
    ----------
    n : int, optional
        Threads; default ``LACBED_THREADS`` or :func:`available_cpus`.
    force : bool
        Set again even if already configured.
    """
    global _configured
    if _configured and not force and n is None:
        return torch.get_num_threads()
    if n is None:
        env = os.environ.get("LACBED_THREADS")
        n = int(env) if env else available_cpus()
    if n < 1:
        raise ValueError(f"thread count must be >= 1, got {n!r}")
    torch.set_num_threads(n)
    _configured = True
    return n
