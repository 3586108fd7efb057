"""The one executor policy (``runtime.Parallel``): every kind runs the same work to the same result,
and bad policies are one line naming the option."""

import math

import numpy as np
import pytest
import torch

from lacbed_refine.engine import ZoneAxis, simulate_zone, zone_beam_pool
from lacbed_refine.runtime import PARALLEL_KINDS, Parallel, available_cpus
from lacbed_refine.structure import Atoms, Cell


def _boom(x):
    raise ArithmeticError(f"bad {x}")


@pytest.mark.parametrize("kind", ["serial", "threads", "processes"])
def test_every_local_kind_maps_the_same_and_delivers_errors_through_the_future(kind):
    with Parallel(kind, 2 if kind != "serial" else 1).executor() as pool:
        assert [f.result() for f in [pool.submit(math.factorial, n) for n in range(8)]] == [
            math.factorial(n) for n in range(8)]
        with pytest.raises(ArithmeticError, match="bad 3"):
            pool.submit(_boom, 3).result()


def test_options_make_the_policy_and_bad_ones_are_named():
    assert Parallel.of(1) == Parallel("serial", 1)
    assert Parallel.of(2).kind == ("processes" if available_cpus() > 1 else "serial")
    assert Parallel.of(4, "tcp://127.0.0.1:1") == Parallel("dask", 1, "tcp://127.0.0.1:1")
    policy = Parallel("threads", 1)
    assert Parallel.of(policy) is policy
    with pytest.raises(ValueError, match="parallel kind 'mpi'"):
        Parallel("mpi")
    with pytest.raises(ValueError, match="--scheduler"):
        Parallel("dask")
    with pytest.raises(ValueError, match="--workers 0"):
        Parallel.of(0)
    assert set(PARALLEL_KINDS) == {"serial", "threads", "processes", "dask"}


def test_an_unreachable_scheduler_is_one_line_naming_it():
    pytest.importorskip("dask.distributed")
    with pytest.raises(ValueError, match=r"--scheduler tcp://127\.0\.0\.1:9: cannot connect"):
        Parallel("dask", scheduler="tcp://127.0.0.1:9").connect()


def test_the_engine_gives_the_same_pattern_under_every_local_policy():
    """Pixel chunks spread over threads or processes change nothing (GaAs [110], 8×8 pixels)."""
    frac = np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0],
                     [.25, .25, .25], [.25, .75, .75], [.75, .25, .75], [.75, .75, .25]])
    atoms = Atoms(frac=frac, Z=np.array([31] * 4 + [33] * 4), occupancy=np.ones(8), b_iso=np.full(8, 0.6))
    cell = Cell.cubic(5.6533)
    zone = ZoneAxis((1, 1, 0), (0, 0, 1))
    beams = zone_beam_pool(cell, zone, [(0, 0, 0), (0, .5, .5), (.5, 0, .5), (.5, .5, 0)], 200e3, n_beams=20)
    kw = dict(voltage=200e3, size=8, half_width=0.3, dtype=torch.float64, reflections=[(0, 0, 0), (0, 0, 2)])
    with torch.no_grad():
        ref = simulate_zone(atoms, cell, zone, beams, torch.tensor([400.0, 900.0]), **kw)
        for policy in (Parallel("threads", 2), Parallel("processes", 2), 2):
            got = simulate_zone(atoms, cell, zone, beams, torch.tensor([400.0, 900.0]), workers=policy, **kw)
            assert torch.allclose(got, ref, rtol=0, atol=1e-12), policy
        with pytest.raises(ValueError, match="Dask"):
            simulate_zone(atoms, cell, zone, beams, torch.tensor([400.0]),
                          workers=Parallel("dask", scheduler="tcp://127.0.0.1:9"), **kw)
