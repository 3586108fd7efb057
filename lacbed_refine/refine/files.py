"""Fit from files: a CIF and a measured pattern in, the refined CIF, a JSON report and a PNG out
(``lacbed-refine fit``); and writing a FELIX refinement seeded by a result.
"""

from __future__ import annotations
import logging
from dataclasses import replace
from pathlib import Path
from lacbed_refine.conventions import NM
from lacbed_refine.refine.config import FIT_DEFAULT_BEAMS, FitConfig, check_mask, check_simulator
from lacbed_refine.refine.result import RefinementResult
from lacbed_refine.refine.stages import refine

log = logging.getLogger(__name__)


def fit_files(
    cif,
    pattern_path,
    out_dir,
    *,
    config: FitConfig = FitConfig(),
    pattern_half_width: float | None = None,
    mask_path=None,
    kv: float | None = None,
    size: int | None = None,
    half_width: float | None = None,
    n_beams: int | None = None,
    g_limit: float | None = None,
    zone=None,
    x_direction=None,
    normal=None,
    absorption_model: str | None = None,
    absorption: float | None = None,
    progress=None,
    felix_seed: str | None = None,
    overwrite: bool = False,
    extra: dict | None = None,
) -> tuple[RefinementResult, dict]:
    """Read a CIF and a measured pattern, refine, and write the outputs into ``out_dir``.

    The simulation grid defaults to the paper preset's geometry (200 kV, 128×128, half-width
    7.266/a Å⁻¹) with a whole pool of :data:`FIT_DEFAULT_BEAMS` beams used at every pixel.
    ``felix_seed`` (FELIX refinement letters, e.g. "BD", or "auto" for the plugin's default adapted
    to the crystal) also writes ``out_dir/felix/``, a FELIX
    refinement set seeded from the result (needs the FELIX plugin). The output folder, the check
    simulator and every input are checked before any work; an existing result in ``out_dir`` is
    replaced only with ``overwrite``. ``zone``, ``x_direction``, ``normal`` [uvw]/[hkl] and the
    absorption model select any zone axis (see :func:`~lacbed_refine.simulators.bloch.settings_for`);
    away from cubic [001] the surrogate stages are skipped (they know only cubic [001]) and the
    general engine does the thickness scan and the polish. Returns the result and the written paths.
    """
    from lacbed_refine.io.cif import read_cif
    from lacbed_refine.io.files import check_writable_folder
    from lacbed_refine.io.images import read_mask, read_pattern
    from lacbed_refine.simulators.bloch import settings_for

    # everything that can be wrong with the inputs and outputs is found before the work starts
    out = Path(out_dir)
    existing = [n for n in ("refined.cif", "report.json", "fit.png") if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"-o {out}: holds a result already ({', '.join(existing)}); pass --overwrite to replace it")
    check_simulator(config.check)
    felix_seed_asked = bool(felix_seed)
    if felix_seed:
        from lacbed_refine.simulators.registry import PluginError, get_simulator

        try:  # writing a FELIX set needs the plugin, not FELIX itself
            felix = get_simulator("felix")
        except PluginError as exc:
            raise ValueError(f"--felix-seed: {exc}") from None
    crystal = read_cif(cif)
    if felix_seed_asked:
        if felix_seed == "auto":  # the plugin's default letters, adapted to the crystal
            felix_seed = None
        if hasattr(felix, "check_refinement"):
            felix.check_refinement(crystal, felix_seed)  # letters FELIX cannot refine for this crystal
    pattern = read_pattern(pattern_path)
    mask = None
    if mask_path is not None:
        mask = check_mask(read_mask(mask_path), pattern, name=f"--mask {mask_path}")
    if n_beams is None and g_limit is None:
        n_beams = FIT_DEFAULT_BEAMS
    if half_width is None:  # simulate the tilt range that was measured
        half_width = pattern_half_width
    settings = settings_for(crystal, kv=kv, size=size if size is not None else pattern.shape[0] if pattern.shape[0] == pattern.shape[1] and pattern.shape[0] % 2 == 0 else None,
                            half_width=half_width, n_beams=n_beams, g_limit=g_limit, zone=zone,
                            x_direction=x_direction, normal=normal, absorption_model=absorption_model,
                            absorption=absorption)
    if felix_seed_asked and hasattr(felix, "check_settings"):
        felix.check_settings(crystal, replace(settings, thicknesses=(100.0 * NM,)))  # FELIX's own limits
    created = not out.exists()
    check_writable_folder(out, option="-o")  # last of the checks: it creates the folder
    try:
        result = refine(crystal, pattern, settings, config=config, pattern_half_width=pattern_half_width, mask=mask,
                        progress=progress)
    except BaseException:
        # a refinement that failed leaves no empty folder behind (a killed one may)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    result.extra["inputs"] = {"cif": str(cif), "pattern": str(pattern_path), "mask": None if mask_path is None else str(mask_path)}
    result.extra.update(extra or {})
    paths = result.write(out_dir)
    if felix_seed_asked:
        paths["felix"] = seed_felix(result, Path(out_dir) / "felix", refine=felix_seed)
    return result, paths


def seed_felix(result: RefinementResult, out_dir, *, refine: str | None = None) -> Path:
    """Write FELIX inputs (and the measured image) that start a FELIX refinement from ``result``,
    through the FELIX plugin (``pip install -e plugins/felix``)."""
    from lacbed_refine.simulators.registry import PluginError, get_simulator

    sim = get_simulator("felix")
    if not hasattr(sim, "export_refinement"):
        raise PluginError("felix", "this version of the plugin cannot write refinement sets")
    # the plugin adapts the letters to what FELIX can refine for the crystal (it moves atoms, mode
    # B, only in F-43m among the cubic groups: felix-spec §5) and refuses what it cannot do
    letters = sim.check_refinement(result.crystal, refine) if hasattr(sim, "check_refinement") else (refine or "BD")
    sim.export_refinement(result.crystal, result.measured, out_dir, refine=letters,
                          settings=replace(result.settings, thicknesses=(result.thickness_nm * NM,)))
    return Path(out_dir)
