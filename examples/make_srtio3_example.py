"""Make the second bundled refinement example (examples/srtio3/): B and occupancy of a perovskite.

Truth: SrTiO3 (Pm-3m, a = 3.905 Å; B = 0.55, 0.40, 0.70 Å² for Sr, Ti, O; full occupancy), 150 nm
thick, 200 kV, [001], 64×64 pixels over ±7.266/a Å⁻¹, 61 ZOLZ beams at every pixel, Poisson noise at
10⁴ counts per pixel. Start: every B at 0.3 Å², Sr occupancy 0.9.

Run from the repository root: ``python examples/make_srtio3_example.py``.
"""

from dataclasses import replace
from pathlib import Path

import gemmi
import numpy as np
import tifffile
import torch

from lacbed_refine.engine.bloch import simulate_lacbed
from lacbed_refine.structure.crystal import Crystal, Site
from lacbed_refine.io.cif import write_cif
from lacbed_refine.engine.geometry import SimulationSettings

HERE = Path(__file__).parent / "srtio3"


def main() -> None:
    hall = gemmi.find_spacegroup_by_name("P m -3 m").hall
    truth = Crystal(name="SrTiO3", a=3.905, hall=hall, sites=(
        Site(label="Sr1", element="Sr", frac=(0.0, 0.0, 0.0), b_iso=0.55),
        Site(label="Ti1", element="Ti", frac=(0.5, 0.5, 0.5), b_iso=0.40),
        Site(label="O1", element="O", frac=(0.5, 0.5, 0.0), b_iso=0.70),
    ))
    settings = SimulationSettings(size=64, half_width=7.266 / truth.a, thicknesses=(1500.0,), n_beams=61)
    with torch.no_grad():
        stack, _ = simulate_lacbed(truth.atoms(), truth.a, settings, centring="P", dtype=torch.float64)
    rng = np.random.default_rng(2027)
    counts = rng.poisson(stack[0, 0].numpy() * 1e4).astype(np.float32)
    HERE.mkdir(exist_ok=True)
    tifffile.imwrite(HERE / "SrTiO3_150nm.tif", counts, description="SrTiO3 [001] BF, 150 nm, 200 kV, 64x64, "
                     "half-width 7.266/a 1/A, Poisson 1e4 counts (examples/make_srtio3_example.py)")
    write_cif(truth, HERE / "SrTiO3_true.cif")
    start = [replace(s, b_iso=0.3, occupancy=0.9 if s.label == "Sr1" else 1.0) for s in truth.sites]
    write_cif(truth.with_sites(start), HERE / "SrTiO3_start.cif")


if __name__ == "__main__":
    main()
