"""Simulation from files: a CIF and options in, a pattern stack and a preview PNG out.

This is the library behind ``lacbed-refine simulate`` and ``lacbed-refine potential``; the CLI only
parses options. Output layout (thickness, reflection, row, col).
"""

from __future__ import annotations
import logging
import time
import numpy as np
import torch
from lacbed_refine.conventions import NM
from lacbed_refine.io.cif import read_cif
from lacbed_refine.engine.geometry import SimulationSettings
from lacbed_refine.io.files import check_stack_output
from lacbed_refine.io.images import write_preview, write_stack
from lacbed_refine.runtime import check_workers, resolve_device
from lacbed_refine.physics.potential import normalise, projected_potential
from lacbed_refine.simulators.bloch import settings_for, simulate_crystal

log = logging.getLogger(__name__)


def parse_reflections(text: str) -> tuple[tuple[int, int, int], ...]:
    """Parse ``"0 0 0; 2 0 0; -2 2 0"`` into (h, k, l) tuples (each must later be in the beam pool)."""
    out = []
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        fields = part.replace(",", " ").split()
        try:
            hkl = tuple(int(x) for x in fields)
        except ValueError:
            raise ValueError(f"--reflections: {part!r} is not three integers 'h k l'") from None
        if len(hkl) != 3:
            raise ValueError(f"--reflections: {part!r} is not three integers 'h k l'")
        if hkl in out:
            raise ValueError(f"--reflections: {part!r} is given twice")
        out.append(hkl)
    if not out:
        raise ValueError("--reflections: no reflections given")
    return tuple(out)


def felix_options(inp_path, *, hkl_path=None) -> tuple[dict, float, str]:
    """Every simulation setting of a FELIX input file (either dialect, :mod:`lacbed_refine.io.felix_inp`)
    as options of :func:`~lacbed_refine.simulators.bloch.settings_for`, so that the engine reproduces
    FELIX's output: its zone, x direction and normal, voltage, thicknesses, image size and half-width,
    absorption model, form factors, beam pool (``RgLimit`` or pool size), FELIX's per-pixel strong-beam
    rule with ``IMinStrongBeams``, and no mean absorption (FELIX leaves it out).

    Reflections: those of ``hkl_path`` (a ``felix.hkl``), else of a ``felix.hkl`` beside the input
    (FELIX reads that one), else the bright field alone.

    Returns
    -------
    options : dict
        Keyword arguments of ``settings_for``.
    default_b : float
        FELIX's B [Å²] for CIF sites without one (``RDebyeWallerConstant``).
    note : str
        Where the reflections came from (for the log).
    """
    from pathlib import Path

    from lacbed_refine.io.felix_inp import read_felix_inp, read_hkl

    inp_path = Path(inp_path)
    fs = read_felix_inp(inp_path).simulation_settings()
    if fs.form_factors not in ("kirkland", "peng"):
        raise ValueError(f"--felix-inp {inp_path}: form factors {fs.form_factors or 'of an unknown code'!r} are not "
                         "available here (kirkland, peng)")
    options = dict(
        zone=fs.zone, x_direction=fs.x_direction, normal=fs.normal, kv=fs.voltage_kv,
        thickness_nm=[float(t) / NM for t in fs.thicknesses], size=int(fs.image_size), half_width=float(fs.half_width),
        absorption_model=fs.absorption, absorption=float(fs.absorption_percent or 0.0), form_factors=fs.form_factors,
        strong_beams=int(fs.strong_beams), strong_rule="felix", mean_absorption=False,
    )
    if fs.g_limit is not None:
        options["g_limit"] = float(fs.g_limit)
    else:
        options["n_beams"] = int(fs.n_beams)
    note = "bright field only (no felix.hkl)"
    if hkl_path is None and (inp_path.parent / "felix.hkl").exists():
        hkl_path = inp_path.parent / "felix.hkl"
    if hkl_path is not None:
        hkl = read_hkl(hkl_path)
        refl = [(0, 0, 0)] + [tuple(int(i) for i in r) for r in hkl if tuple(int(i) for i in r) != (0, 0, 0)]
        options["reflections"] = tuple(dict.fromkeys(refl))
        note = f"{len(options['reflections'])} reflections from {hkl_path}"
    return options, float(fs.debye_waller), note


def _labels(settings: SimulationSettings) -> tuple[list[str], list[str], list[str]]:
    tlab = [f"t = {t / NM:g} nm" for t in settings.thicknesses]
    rlab = ["BF 000" if r == (0, 0, 0) else "{} {} {}".format(*r) for r in settings.reflections]
    pages = [f"t={t / NM:g}nm hkl={r[0]} {r[1]} {r[2]}" for t in settings.thicknesses for r in settings.reflections]
    return tlab, rlab, pages


def simulate_file(
    cif,
    out,
    *,
    device: str = "cpu",
    precision: str = "fast",
    progress: bool = True,
    workers: int = 1,
    engine: str = "bloch",
    overwrite: bool = False,
    felix_inp=None,
    hkl=None,
    **options,
) -> dict:
    """Read ``cif``, simulate, write ``out`` (.tif/.npy/.h5) and a PNG preview beside it.

    Options, the output path (an existing file is replaced only with ``overwrite``) and the engine
    are checked before the simulation starts.
    ``engine`` names the simulator ("bloch", or an installed plugin such as "felix");
    ``options`` are those of :func:`settings_for`. ``felix_inp`` (a FELIX input file, either dialect)
    supplies every setting (:func:`felix_options`); options given here (not None) override it. ``hkl``
    (a ``felix.hkl``) gives the reflections. Returns a summary dict (paths, timing, engine info).
    """
    resolve_device(device)
    workers = check_workers(workers)
    if engine != "bloch":
        from lacbed_refine.simulators.registry import PluginError, get_simulator

        try:  # an unknown engine is named before anything else
            get_simulator(engine)
        except PluginError as exc:
            raise ValueError(f"--engine {engine!r}: {str(exc).split(': ', 1)[-1]}") from None
    out = check_stack_output(out, overwrite=overwrite, inputs=(cif,))
    default_b = None
    if felix_inp is not None:
        base, default_b, note = felix_options(felix_inp, hkl_path=hkl)
        log.info("%s: %s", felix_inp, note)
        base.update({k: v for k, v in options.items() if v is not None})
        options = base
    elif hkl is not None:
        from lacbed_refine.io.felix_inp import read_hkl

        refl = [(0, 0, 0)] + [tuple(int(i) for i in r) for r in read_hkl(hkl)]
        if options.get("reflections") is None:
            options["reflections"] = tuple(dict.fromkeys(refl))
    crystal = read_cif(cif) if default_b is None else read_cif(cif, default_b_iso=default_b)
    settings = settings_for(crystal, **options)
    t0 = time.perf_counter()
    if engine == "bloch":
        stack, info = simulate_crystal(
            crystal, settings, device=device, precision=precision, progress=progress, workers=workers
        )
    else:
        from lacbed_refine.simulators.registry import get_simulator

        stack = np.asarray(get_simulator(engine).simulate(crystal, settings, device=device, workers=workers,
                                                          progress=progress), dtype=np.float32)
        info = None
    wall = time.perf_counter() - t0
    tlab, rlab, pages = _labels(settings)
    meta = {
        "crystal": crystal.name,
        "source": str(cif),
        "space_group": crystal.spacegroup_symbol,
        "a_angstrom": crystal.a,
        "voltage_kV": settings.voltage / 1e3,
        "half_width_inv_angstrom": settings.half_width,
        "thickness_nm": [t / NM for t in settings.thicknesses],
        "reflections": [list(r) for r in settings.reflections],
        "engine": engine,
        "n_beams": info.n_beams if info else settings.n_beams,
        "strong_beams": info.strong_beams if info else settings.strong_beams,
        "absorption_percent": settings.absorption,
        "form_factors": settings.form_factors,
        "precision": precision,
        "zone": list(settings.zone),
        "x_direction": list(settings.x_direction) if settings.x_direction is not None else [1, 0, 0],
        "normal": list(settings.normal or settings.zone),
        "absorption_model": settings.absorption_kind,
        "cell": [crystal.cell.a, crystal.cell.b, crystal.cell.c, crystal.cell.alpha, crystal.cell.beta, crystal.cell.gamma],
    }
    write_stack(out, stack, labels=pages, metadata=meta)
    png = write_preview(
        out.with_suffix(".png"),
        stack,
        row_labels=rlab,
        col_labels=tlab,
        title=f"{crystal.name} {crystal.spacegroup_symbol} a={crystal.a:.4g} Å, {meta['n_beams']} beams ({engine})",
    )
    log.info("%s: %s, %.2f s", crystal.name, info or engine, wall)
    return {"output": str(out), "preview": str(png), "seconds": wall, "info": info, "settings": settings}


def potential_file(cif, out, *, size: int = 128, form_factors: str = "kirkland", overwrite: bool = False) -> dict:
    """Write the [001] projected potential of ``cif``: raw [V] and normalised pages, plus a PNG.

    ``size`` [pixels] is 16 … :data:`~lacbed_refine.engine.geometry.MAX_SIZE`; an existing output is
    replaced only with ``overwrite``."""
    from lacbed_refine.engine.geometry import MAX_SIZE

    # below 16 pixels a cell's potential no longer resolves its atoms
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= MAX_SIZE:
        raise ValueError(f"--size {size!r}: the image edge must be 16–{MAX_SIZE} pixels")
    if form_factors not in ("kirkland", "peng"):
        raise ValueError(f"--form-factors {form_factors!r}: use kirkland or peng")
    out = check_stack_output(out, overwrite=overwrite, inputs=(cif,))
    crystal = read_cif(cif)
    crystal.require_cubic("the [001] projected potential of the surrogates (cubic cells only)")
    with torch.no_grad():
        raw = projected_potential(
            crystal.atoms(), crystal.a, centring=crystal.spacegroup_symbol[0], size=size, table=form_factors
        )
    norm, lo, hi = normalise(raw)
    stack = np.stack([raw.numpy(), norm.numpy()])[:, None].astype(np.float32)  # (2, 1, n, n)
    meta = {
        "crystal": crystal.name,
        "source": str(cif),
        "a_angstrom": crystal.a,
        "units": "page 0: potential averaged along [001] [V]; page 1: min-max normalised",
        "min_V": float(lo),
        "max_V": float(hi),
    }
    write_stack(out, stack, labels=["raw [V]", "normalised"], metadata=meta)
    png = write_preview(
        out.with_suffix(".png"),
        stack[1:].transpose(1, 0, 2, 3),
        row_labels=["ρ"],
        col_labels=[f"{crystal.name}, a = {crystal.a:.4g} Å"],
    )
    return {"output": str(out), "preview": str(png)}
