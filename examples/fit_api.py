"""One refinement through the Python API: the bundled spinel example.

The same as ``lacbed-refine fit examples/spinel/MgAl2O4_start.cif examples/spinel/MgAl2O4_120nm.tif
-o out/spinel-api --refine xyz,b,thickness`` but with the objects in hand: the start crystal, the
measured pattern, the settings, and the result with its parameters and uncertainties.

Run from the repository root: ``python examples/fit_api.py [OUT_DIR]``.
"""

import sys
from pathlib import Path

from lacbed_refine.io.cif import read_cif
from lacbed_refine.io.images import read_pattern
from lacbed_refine.refine.config import FIT_DEFAULT_BEAMS, FitConfig
from lacbed_refine.refine.stages import refine
from lacbed_refine.simulators.bloch import settings_for

HERE = Path(__file__).parent / "spinel"


def main(out_dir: str = "out/spinel-api") -> None:
    start = read_cif(HERE / "MgAl2O4_start.cif")
    measured = read_pattern(HERE / "MgAl2O4_120nm.tif")  # 64×64 over ±7.266/a Å⁻¹, Poisson counts
    settings = settings_for(start, size=measured.shape[0], n_beams=FIT_DEFAULT_BEAMS)  # paper geometry
    config = FitConfig(refine=("xyz", "b", "thickness"))
    result = refine(start, measured, settings, config=config, progress=print)
    print(f"\nr = {result.r:.5f}")
    for name, s, v, e in zip(result.names, result.start, result.refined, result.sigma):
        print(f"{name:10s} {s:9.4f} -> {v:9.4f} ± {e:.4f}")
    print(f"{'t [nm]':10s} {result.thickness_start_nm:9.2f} -> {result.thickness_nm:9.2f} ± {result.thickness_sigma_nm:.2f}")
    for stage in result.stages:
        fom = "" if stage.fom is None else f"1-r = {stage.fom:.6f}"
        print(f"  {stage.name:40s} {fom:18s} {stage.seconds:6.1f} s  {stage.note}")
    paths = result.write(out_dir)
    print("wrote", ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main(*sys.argv[1:])
