"""Surrogate inference speed on the CPU, and its ratio to the Bloch engine on the same structures.

Measures, with ``--threads`` torch threads (default 2):

- the forward generator alone (normalised potential in, pattern out) at batch 1 and at ``--batch``,
  in eager mode and as a frozen TorchScript trace (``--jit``);
- the same for the inverse generator;
- end to end from a crystal: projected potential (Eq. 1, 2500 terms) + generator, per structure at
  4 thicknesses;
- the Bloch engine on the same structures (dataset beam rule: ``--beams`` whole-shell ZOLZ beams at
  every pixel, 128×128, 4 thicknesses, fast path, one process), and the ratio.

Times are the best of ``--repeats`` runs (wall clock); each row also gives the CPU time of this
process per pattern, and ``other``: how many cores other jobs kept busy meanwhile (from
``/proc/stat``), because on a shared machine the wall time says little without it. Speed does not
depend on the weights, so by default untrained networks of the default architecture are timed;
``--forward``/``--inverse`` time trained files instead.

Run: ``PYTHONPATH=. python benchmarks/surrogate_speed.py [--threads 2] [--batch 64] [--json FILE]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch

from lacbed_refine.io.cif import read_cif
from lacbed_refine.physics.potential import projected_potential
from lacbed_refine.simulators.bloch import settings_for, simulate_crystal
from lacbed_refine.surrogate import CGAN, VAE, ForwardSurrogate, GeneratorConfig, InverseSurrogate, TaskConfig, load_surrogate

log = logging.getLogger("surrogate_speed")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CIFS = [ROOT / "examples" / "SrTiO3.cif"] + [ROOT / "tests" / "data" / "felix" / m / "felix.cif" for m in ("MgO", "GaAs", "MgAl2O4")]
THICKNESS = (50.0, 100.0, 150.0, 200.0)


def _busy_ticks() -> int:
    try:
        with open("/proc/stat") as fh:
            f = [int(x) for x in fh.readline().split()[1:]]
        return sum(f) - f[3] - f[4]  # all but idle and iowait
    except OSError:
        return 0


class _Load:
    """Cores kept busy by other processes during the block."""

    def __enter__(self):
        self.t, self.busy, self.own = time.perf_counter(), _busy_ticks(), time.process_time()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        other = (_busy_ticks() - self.busy) / tick - (time.process_time() - self.own)
        self.other = max(0.0, other / wall) if wall > 0 else 0.0
        self.cpu = time.process_time() - self.own


def _time(fn, repeats: int) -> tuple[float, float, float]:
    """Best wall time, the CPU time of that run, and the other jobs' cores during all runs."""
    fn()  # warm-up (oneDNN primitive creation)
    best, cpu_best = float("inf"), 0.0
    with _Load() as load:
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            fn()
            dt = time.perf_counter() - t
            if dt < best:
                best, cpu_best = dt, time.process_time() - c
    return best, cpu_best, load.other


def _generator_rows(name: str, surrogate, batches, repeats: int, jit: bool) -> list[dict]:
    gen, task = surrogate.generator.eval(), surrogate.task
    n, k = task.image_size, len(task.condition_names)
    rows = []
    for b in batches:
        x, c = torch.rand(b, 1, n, n), torch.zeros(b, k)
        variants = [("eager", lambda: gen(x, c))]
        if jit:
            class _Image(torch.nn.Module):
                def __init__(self, g):
                    super().__init__()
                    self.g = g

                def forward(self, x, c):
                    return self.g(x, c)["image"]

            with torch.no_grad():
                traced = torch.jit.freeze(torch.jit.trace(_Image(gen).eval(), (x, c)))
            variants.append(("frozen-trace", lambda: traced(x, c)))
        for mode, fn in variants:
            with torch.inference_mode():
                wall, cpu, other = _time(fn, repeats)
            rows.append({"model": name, "mode": mode, "batch": b, "ms_per_pattern": 1e3 * wall / b,
                         "cpu_ms_per_pattern": 1e3 * cpu / b, "other_cores": round(other, 2)})
            log.info("%s %s batch %d: %.3f ms/pattern (cpu %.3f ms, other cores %.2f)", name, mode, b,
                     rows[-1]["ms_per_pattern"], rows[-1]["cpu_ms_per_pattern"], other)
    return rows


def _structure_rows(forward: ForwardSurrogate, cifs, beams: int, repeats: int) -> list[dict]:
    rows = []
    for path in cifs:
        crystal = read_cif(path)
        settings = settings_for(crystal, thickness_nm=THICKNESS, size=forward.image_size, n_beams=beams)
        with torch.no_grad():
            pot_wall, _, _ = _time(lambda: projected_potential(crystal.atoms(), crystal.a, centring=crystal.spacegroup_symbol[0],
                                                                size=forward.image_size), repeats)
            gen_wall, _, _ = _time(lambda: forward.from_crystal(crystal, THICKNESS), repeats)
        eng_wall, _, other = _time(lambda: simulate_crystal(crystal, settings), max(1, repeats // 3))
        rows.append({"structure": crystal.name, "space_group": crystal.spacegroup_symbol, "a_angstrom": crystal.a,
                     "beams": beams, "engine_s": eng_wall, "potential_ms": 1e3 * pot_wall,
                     "surrogate_end_to_end_ms": 1e3 * gen_wall, "ratio_end_to_end": eng_wall / gen_wall,
                     "other_cores": round(other, 2)})
        log.info("%s: engine %.3f s, surrogate %.1f ms (potential %.1f ms) → %.0f×", crystal.name, eng_wall,
                 1e3 * gen_wall, 1e3 * pot_wall, eng_wall / gen_wall)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--batch", type=int, default=64, help="batched size (default 64)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--forward", type=Path, default=None, help="trained forward surrogate file (default: untrained default cGAN)")
    p.add_argument("--inverse", type=Path, default=None, help="trained inverse surrogate file (default: untrained default cGAN)")
    p.add_argument("--physics-prior", type=int, default=0,
                   help="reflections of the untrained forward cGAN's two-beam prior (default 0, as the training recipe)")
    p.add_argument("--vae", action="store_true", help="also time the VAE baseline")
    p.add_argument("--jit", action="store_true", help="also time a frozen TorchScript trace")
    p.add_argument("--beams", type=int, default=200, help="engine beam pool, all used at every pixel (dataset rule)")
    p.add_argument("--cifs", type=Path, nargs="*", default=DEFAULT_CIFS, help="structures for the engine comparison (none: skip it)")
    p.add_argument("--json", type=Path, default=Path("/tmp/lacbed-bench/surrogate_speed.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def default(direction, arch="cgan"):
        gen = GeneratorConfig(physics_prior=args.physics_prior if direction == "forward" else 0)
        model = CGAN(TaskConfig(direction=direction), generator=gen) if arch == "cgan" else VAE(TaskConfig(direction=direction))
        cls = ForwardSurrogate if direction == "forward" else InverseSurrogate
        return cls(model.generator, model.task, arch=arch)

    fwd = load_surrogate(args.forward) if args.forward else default("forward")
    inv = load_surrogate(args.inverse) if args.inverse else default("inverse")
    batches = (1, args.batch)
    rows = _generator_rows("forward cgan", fwd, batches, args.repeats, args.jit)
    rows += _generator_rows("inverse cgan", inv, batches, args.repeats, args.jit)
    if args.vae:
        rows += _generator_rows("forward vae", default("forward", "vae"), batches, args.repeats, False)
    torch.set_num_threads(1)  # the engine's own setting (see lacbed_refine.runtime)
    structures = _structure_rows(fwd, args.cifs, args.beams, max(3, args.repeats // 2))
    torch.set_num_threads(args.threads)

    print(f"\nSurrogate inference, {args.threads} threads, {platform.processor() or platform.machine()}, torch {torch.__version__}")
    print(f"{'model':14s} {'mode':13s} {'batch':>5s} {'ms/pattern':>11s} {'cpu ms':>8s} {'other cores':>11s}")
    for r in rows:
        print(f"{r['model']:14s} {r['mode']:13s} {r['batch']:5d} {r['ms_per_pattern']:11.3f} {r['cpu_ms_per_pattern']:8.3f} {r['other_cores']:11.2f}")
    params = {"forward": fwd.n_parameters(), "inverse": inv.n_parameters()}
    print(f"parameters: forward {params['forward']:,}, inverse {params['inverse']:,}")
    print(f"\nPer structure, 4 thicknesses, 128×128: Bloch engine ({args.beams} beams, 1 process) vs surrogate "
          "(potential + generator, batch of 4)")
    print(f"{'structure':12s} {'engine s':>9s} {'potential ms':>13s} {'surrogate ms':>13s} {'ratio':>8s} {'other':>6s}")
    for r in structures:
        print(f"{r['structure']:12s} {r['engine_s']:9.3f} {r['potential_ms']:13.2f} {r['surrogate_end_to_end_ms']:13.2f} "
              f"{r['ratio_end_to_end']:8.0f} {r['other_cores']:6.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "parameters": params,
                                     "generators": rows, "structures": structures}, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
