"""Make the bundled refinement example (examples/spinel/): a "measured" pattern and a start CIF.

Truth: MgAl2O4 spinel (Fd-3m, a = 8.08 Å, O at 32e x = 0.2624, B = 0.5 Å² everywhere), 120 nm thick,
200 kV, [001], 64×64 pixels over ±7.266/a Å⁻¹, 61 ZOLZ beams at every pixel, Poisson noise at 10⁴
counts per pixel. Start: O moved to x = 0.2724 (+0.14 Å along [111]) and every B set to 0.75 Å².

Run from the repository root: ``python examples/make_spinel_example.py``.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import tifffile
import torch

from lacbed_refine.engine.bloch import simulate_lacbed
from lacbed_refine.io.cif import read_cif, write_cif
from lacbed_refine.engine.geometry import SimulationSettings

HERE = Path(__file__).parent / "spinel"


def main() -> None:
    truth = read_cif(HERE / "MgAl2O4_true.cif")
    settings = SimulationSettings(size=64, half_width=7.266 / truth.a, thicknesses=(1200.0,), n_beams=61)
    with torch.no_grad():
        stack, _ = simulate_lacbed(truth.atoms(), truth.a, settings, centring="F", dtype=torch.float64)
    rng = np.random.default_rng(2026)
    counts = rng.poisson(stack[0, 0].numpy() * 1e4).astype(np.float32)
    tifffile.imwrite(HERE / "MgAl2O4_120nm.tif", counts, description="MgAl2O4 [001] BF, 120 nm, 200 kV, 64x64, "
                     "half-width 7.266/a 1/A, Poisson 1e4 counts (examples/make_spinel_example.py)")
    sites = []
    for s in truth.sites:
        frac = (0.2724,) * 3 if s.label == "O1" else s.frac
        sites.append(replace(s, frac=frac, b_iso=0.75))
    write_cif(truth.with_sites(sites), HERE / "MgAl2O4_start.cif")


if __name__ == "__main__":
    main()
