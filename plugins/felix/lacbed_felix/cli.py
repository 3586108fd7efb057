"""``lacbed-refine felix ...``: the plugin's command group (entry point ``lacbed_refine.commands``).

Each command is a thin layer over one library function.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from lacbed_refine.simulators.registry import PluginError

__all__ = ["felix_group"]


class _Group(click.Group):
    """Input errors become one line and exit status 2 (as in the core's CLI)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, OSError, FloatingPointError, PluginError) as exc:
            click.echo(f"lacbed-refine felix: error: {exc}", err=True)
            sys.exit(2)


def _triple_list(text):
    if text is None:
        return None
    from lacbed_refine.simulators.files import parse_reflections

    return parse_reflections(text)


def _items(text):
    """Comma-separated items (site indices or labels), checked by the library."""
    if text is None:
        return None
    return [x.strip() for x in text.replace(";", ",").split(",") if x.strip()]


def _triple(text, option):
    """``1,1,0`` or ``1 1 0`` (a direction or plane normal) as three integers."""
    if text is None:
        return None
    parts = text.replace(",", " ").split()
    try:
        values = tuple(int(x) for x in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ValueError(f"{option} {text!r}: expected three integers, e.g. 1,1,0")
    return values


def _floats(text, option):
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{option} {text!r}: expected comma-separated numbers") from None


@click.group("felix", cls=_Group)
def felix_group():
    """FELIX: seed its refinements and read its outputs."""
    # `python -m lacbed_felix`: warnings (e.g. what the default refinement dropped) must be seen;
    # under `lacbed-refine` the main command has configured logging already.
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")


@felix_group.command("export")
@click.argument("cif", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Folder to write the FELIX refinement set into (refused when it holds an earlier export, unless --overwrite).")
@click.option("--pattern", type=click.Path(exists=True, dir_okay=False), default=None, help="Measured pattern (.tif, .npy, .h5, .bin/.img); written as LR_<2N>x<2N>/<chem>_<hkl>.img.")
@click.option("--refine", default=None, help="FELIX refinement letters: B coordinates, C occupancy, D B_iso, F cell edge, H convergence angle, A structure factors (alone). Default BD, less what FELIX cannot refine for the crystal (B only in F-43m, and only when a site has a free coordinate); a warning names what was dropped.")
@click.option("--reflections", default=None, help='What the pattern images are, e.g. "0 0 0;2 0 0" (default: the file\'s metadata, else bright field).')
@click.option("--sites", default=None, help="CIF sites to refine, 1-based indices or labels, e.g. 1,3 or Sr1,O1 (default all).")
@click.option("--thickness", default=None, help="FELIX thickness grid START,STOP,STEP [nm] (default 50,200,50).")
@click.option("--kv", type=float, default=None, help="Accelerating voltage [kV] (default 200).")
@click.option("--half-width", type=float, default=None, help="Tilt half-width [1/Å] (default 7.266/a).")
@click.option("--beams", type=int, default=None, help="Beam pool size (FELIX IMinReflectionPool).")
@click.option("--g-limit", type=float, default=None, help="Beam pool |g| limit [1/Å] (FELIX RgLimit).")
@click.option("--strong-beams", type=int, default=None, help="FELIX IMinStrongBeams.")
@click.option("--absorption", type=float, default=None, help="Proportional absorption [%].")
@click.option("--absorption-model", type=click.Choice(["none", "proportional", "bird-king"]), default=None, help="FELIX IAbsorbFLAG 0, 1 (--absorption %) or 2 (Bird & King).")
@click.option("--form-factors", type=click.Choice(["kirkland", "peng"]), default=None)
@click.option("--zone", default=None, help="Incident beam direction [uvw], e.g. 1,1,0 (FELIX IIncidentBeamDirection; default 0,0,1).")
@click.option("--x-direction", default=None, help="Reciprocal vector [hkl] along image +x, perpendicular to the zone (FELIX IXDirection; default 1,0,0 at [001], else the shortest).")
@click.option("--normal", default=None, help="Specimen surface normal [uvw] (FELIX INormalDirection; default the zone).")
@click.option("--overwrite", is_flag=True, help="Replace the files of an earlier export in the folder.")
def export_command(cif, output, pattern, reflections, sites, thickness, beams, zone, x_direction, normal, overwrite,
                   **options):
    """Write a complete FELIX refinement set for CIF (and a measured pattern) into a folder."""
    from ._export import export_file

    result = export_file(cif, output, pattern=pattern, reflections=_triple_list(reflections), sites=_items(sites),
                         thickness_nm=_floats(thickness, "--thickness"), n_beams=beams, overwrite=overwrite,
                         zone=_triple(zone, "--zone"), x_direction=_triple(x_direction, "--x-direction"),
                         normal=_triple(normal, "--normal"), **options)
    images = f"{len(result.images)} image(s)" if result.images else f"no pattern: put the images in LR_{result.input.size}x{result.input.size}/ first"
    click.echo(f"{result.folder}: FELIX refinement ({result.input.refine_mode}) of {result.chem}, {images}; run felix there")


@felix_group.command("read")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .tif, .npy or .h5 stack.")
@click.option("--chem", default=None, help="FELIX file prefix, when the folder holds several.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def read_command(folder, output, chem, overwrite):
    """Convert FELIX's simulation output under FOLDER into a lacbed-refine pattern stack."""
    from ._files import simulation_to_stack

    out = Path(output)
    if out.is_dir():
        raise ValueError(f"-o {out}: is a folder, a file path is needed")
    if out.exists() and not overwrite:
        raise ValueError(f"-o {out}: exists; pass --overwrite to replace it")
    path, sim = simulation_to_stack(folder, output, chem=chem)
    click.echo(f"{path}: {sim.chem}, {len(sim.thicknesses)} thickness(es) x {len(sim.reflections)} reflection(s), {sim.size}x{sim.size}")
