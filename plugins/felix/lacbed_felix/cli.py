"""``lacbed-refine felix ...``: the plugin's command group (entry point ``lacbed_refine.commands``).

Each command is a thin layer over one library function.
"""

from __future__ import annotations

import sys

import click

from lacbed_refine.simulators import PluginError

__all__ = ["felix_group"]


class _Group(click.Group):
    """Input errors become one line and exit status 2 (as in the core's CLI)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, OSError, PluginError) as exc:
            click.echo(f"lacbed-refine felix: error: {exc}", err=True)
            sys.exit(2)


def _triple_list(text):
    if text is None:
        return None
    from lacbed_refine.simulation import parse_reflections

    return parse_reflections(text)


def _ints(text):
    if text is None:
        return None
    try:
        return [int(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None


def _floats(text):
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {text!r}") from None


@click.group("felix", cls=_Group)
def felix_group():
    """FELIX: seed its refinements and read its outputs."""


@felix_group.command("export")
@click.argument("cif", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder to write the FELIX refinement set into.")
@click.option("--pattern", type=click.Path(exists=True, dir_okay=False), default=None, help="Measured pattern (.tif, .npy, .h5, .bin/.img); written as LR_<2N>x<2N>/<chem>_<hkl>.img.")
@click.option("--refine", default="BD", show_default=True, help="FELIX refinement letters: B coordinates, C occupancy, D B_iso, F cell edge, H convergence angle, A structure factors (alone).")
@click.option("--reflections", default=None, help='What the pattern images are, e.g. "0 0 0;2 0 0" (default: the file\'s metadata, else bright field).')
@click.option("--sites", default=None, help="1-based CIF sites to refine, e.g. 1,3 (default all).")
@click.option("--thickness", default=None, help="FELIX thickness grid START,STOP,STEP [nm] (default 50,200,50).")
@click.option("--kv", type=float, default=None, help="Accelerating voltage [kV] (default 200).")
@click.option("--half-width", type=float, default=None, help="Tilt half-width [1/Å] (default 7.266/a).")
@click.option("--beams", type=int, default=None, help="Beam pool size (FELIX IMinReflectionPool).")
@click.option("--g-limit", type=float, default=None, help="Beam pool |g| limit [1/Å] (FELIX RgLimit).")
@click.option("--strong-beams", type=int, default=None, help="FELIX IMinStrongBeams.")
@click.option("--absorption", type=float, default=None, help="Proportional absorption [%].")
@click.option("--form-factors", type=click.Choice(["kirkland", "peng"]), default=None)
def export_command(cif, output, pattern, reflections, sites, thickness, beams, **options):
    """Write a complete FELIX refinement set for CIF (and a measured pattern) into a folder."""
    from ._export import export_file

    thickness = _floats(thickness)
    if thickness is not None and len(thickness) != 3:
        raise click.BadParameter(f"--thickness needs START,STOP,STEP in nm, got {thickness}")
    result = export_file(cif, output, pattern=pattern, reflections=_triple_list(reflections), sites=_ints(sites),
                         thickness_nm=thickness, n_beams=beams, **options)
    images = f"{len(result.images)} image(s)" if result.images else f"no pattern: put the images in LR_{result.input.size}x{result.input.size}/ first"
    click.echo(f"{result.folder}: FELIX refinement ({result.input.refine_mode}) of {result.chem}, {images}; run felix there")


@felix_group.command("read")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .tif, .npy or .h5 stack.")
@click.option("--chem", default=None, help="FELIX file prefix, when the folder holds several.")
def read_command(folder, output, chem):
    """Convert FELIX's simulation output under FOLDER into a lacbed-refine pattern stack."""
    from ._files import simulation_to_stack

    path, sim = simulation_to_stack(folder, output, chem=chem)
    click.echo(f"{path}: {sim.chem}, {len(sim.thicknesses)} thickness(es) x {len(sim.reflections)} reflection(s), {sim.size}x{sim.size}")
