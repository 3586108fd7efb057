"""``lacbed-refine dataset …``: training-data commands, thin layers over :mod:`lacbed_refine.dataset`."""

from __future__ import annotations

import shlex
import sys

import click


def _floats(text, option="--thickness"):
    if text is None:
        return None
    try:
        return tuple(float(x) for x in text.replace(";", ",").split(",") if x.strip())
    except ValueError:
        raise click.UsageError(f"{option} {text!r}: expected comma-separated numbers") from None


def _triple(text, option):
    """"1,1,0", "1 1 0" or "[1,1,0]" → (1, 1, 0); None stays None. A bad value is a ValueError: one
    line naming the option, exit status 2."""
    if text is None:
        return None
    parts = text.strip().strip("[]").replace(",", " ").split()
    try:
        vec = tuple(int(x) for x in parts)
    except ValueError:
        vec = ()
    if len(vec) != 3:
        raise ValueError(f"{option} {text!r}: expected three integers, e.g. 1,1,0 or \"1 1 0\"")
    return vec


def _command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["lacbed-refine", *sys.argv[1:]])


@click.group("dataset")
def dataset_group():
    """Build, import and inspect (potential, LACBED pattern) training datasets."""


@dataset_group.command("build")
@click.option("--cifs", "cifs", multiple=True, type=click.Path(file_okay=False), help="Folder of CIFs (recursive; repeatable).")
@click.option("--synthetic", type=int, default=0, show_default=True, help="Number of synthetic structures.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic structures.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .h5 file.")
@click.option("--thickness", default=None, help="Thicknesses [nm], comma-separated (default 50,100,150,200).")
@click.option("--preset", default="paper", show_default=True, type=click.Choice(["paper"]), help="Geometry preset.")
@click.option("--beams", type=int, default=None, help="Beam pool (whole shells, all used per pixel); default the dataset rule.")
@click.option("--size", type=int, default=None, help="Pattern and potential edge [pixels] (default 128).")
@click.option("--workers", type=int, default=None, help="Worker processes, one structure each (default: all CPUs; more are capped there).")
@click.option("--scheduler", default=None, help="Dask distributed scheduler address; its workers compute.")
@click.option("--engine", default="bloch", show_default=True, help="Simulator: bloch (built-in) or an installed plugin (e.g. felix).")
@click.option("--zone", default=None, help="Beam direction [uvw], e.g. 1,1,0 (default 0,0,1: the paper's, and the shipped surrogates', geometry).")
@click.option("--x-direction", default=None, help="Reciprocal vector [hkl] along image +x, perpendicular to the zone (default 1,0,0 at [001], else the shortest).")
@click.option("--normal", default=None, help="Specimen surface normal [uvw] (default: the zone).")
@click.option("--split-seed", type=int, default=0, show_default=True, help="Seed of the train/validation/test split by formula.")
@click.option("--overwrite", is_flag=True, help="Replace an output built from other inputs or settings.")
@click.option("--keep-work", is_flag=True, help="Keep the work folder of per-structure shards after assembly.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.option("--throttle", "throttle_s", type=float, default=0.0, hidden=True, help="Pause [s] after each result (tests).")
def build_command(cifs, synthetic, seed, output, thickness, preset, beams, size, workers, engine, zone, x_direction, normal,
                  **options):
    """Simulate CIF folders and/or synthetic structures into one HDF5 dataset (resumable).

    The default geometry is the paper's [001] zone with x along [100]; --zone (with --x-direction
    and --normal) builds the pairs of another zone axis, the potential projected along it. The
    shipped surrogates are cubic [001] 128x128 models: they do not train on other zones' files.
    """
    from lacbed_refine.dataset import BuildSpec, build_dataset
    from lacbed_refine.runtime import available_cpus

    geometry = dict(zone=_triple(zone, "--zone"), x_direction=_triple(x_direction, "--x-direction"),
                    normal=_triple(normal, "--normal"))
    spec = BuildSpec(**{k: v for k, v in dict(preset=preset, thickness_nm=_floats(thickness), n_beams=beams, size=size,
                                              engine=engine, **geometry).items() if v is not None})
    # None means "all CPUs"; any number given (0 and negatives included) is checked by build_dataset
    r = build_dataset(output, cifs=cifs, synthetic=synthetic, seed=seed, spec=spec,
                      workers=available_cpus() if workers is None else workers, command=_command_line(), **options)
    click.echo(f"{r.output}: {r.n_structures} structures, {r.n_failed} failed, {r.computed} computed in {r.seconds:.0f} s"
               f"{' (up to date)' if r.up_to_date else ''}; {r.content_hash}")


@dataset_group.command("import-png")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--split-file", "split_files", multiple=True, type=click.Path(dir_okay=False), help="Split file, one id per line, named train/val/test (repeatable).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .h5 file.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def import_png_command(root, split_files, output, progress, overwrite):
    """Read the ai-diffraction PNG layout (<id>/potential.png, <id>/pattern_<tttt>.png) into a dataset."""
    from lacbed_refine.dataset import import_png

    r = import_png(root, output, split_files=split_files, command=_command_line(), progress=progress, overwrite=overwrite)
    click.echo(f"{r['output']}: {r['n_structures']} structures, {r['n_failed']} failed; {r['content_hash']}")


@dataset_group.command("info")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--verify", is_flag=True, help="Recompute the content hash from the data and compare.")
def info_command(path, verify):
    """Summarise a dataset: settings, hash, counts per split and space group, failures."""
    from lacbed_refine.dataset import dataset_hash, read_info

    info = read_info(path)
    click.echo(_format_info(info))
    if verify:
        ok = dataset_hash(path) == info["content_hash"]
        click.echo(f"content hash {'verified' if ok else 'MISMATCH'}")
        if not ok:
            sys.exit(1)


@dataset_group.command("subset")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Small dataset file to write.")
@click.option("--split", default="test", show_default=True, help="Split to take the structures from.")
@click.option("-n", "count", type=int, default=4, show_default=True, help="Number of structures (the first in file order; >= 1).")
@click.option("--source", default=None, help="Only these structures: real, synthetic or a collection name (e.g. amcsd).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file (never PATH itself).")
def subset_command(path, output, split, count, source, overwrite):
    """Write a few structures of PATH's SPLIT as a small file of the same layout (fixed samples)."""
    from lacbed_refine.dataset import subset_dataset

    digest = subset_dataset(path, output, split=split, n=count, source=source, overwrite=overwrite)
    click.echo(f"{output}: {digest}")


@dataset_group.command("status")
@click.argument("output", type=click.Path(dir_okay=False))
def status_command(output):
    """Progress of an unfinished build of OUTPUT (from its work folder; safe while it runs)."""
    from lacbed_refine.dataset import work_status

    s = work_status(output)
    total = "?" if s["total"] is None else s["total"]
    click.echo(f"{s['work']}: {s['done']} done, {s['failed']} failed, {'?' if s['pending'] is None else s['pending']} "
               f"pending of {total}; {s['cpu_seconds']:.2f} CPU s per structure")
    click.echo("  space group: " + ", ".join(f"{k}: {v}" for k, v in s["per_spacegroup"].items()))


@dataset_group.command("synthetic")
@click.argument("n", type=int)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic structures.")
@click.option("--start", type=int, default=0, show_default=True, help="First structure index.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Folder for the CIFs.")
@click.option("--overwrite", is_flag=True, help="Replace CIFs of the same names in the folder.")
def synthetic_command(n, seed, start, output, overwrite):
    """Write synthetic cubic structures start … start+N-1 of SEED as CIFs (<id>.cif)."""
    from lacbed_refine.dataset.synthetic import write_synthetic_cifs

    paths = write_synthetic_cifs(output, n, seed=seed, start=start, overwrite=overwrite)
    click.echo(f"{len(paths)} CIFs in {output}")


def _format_info(info: dict) -> str:
    lines = [
        f"{info['path']}",
        f"  content hash   {info['content_hash']}",
        f"  created        {info['created_utc']} (engine {info['engine_version']})",
        f"  structures     {info['n_structures']} ({', '.join(f'{k}: {v}' for k, v in info['per_source'].items())}), "
        f"{info['n_failed']} failed",
        f"  thickness nm   {', '.join(f'{t:g}' for t in info['thickness_nm'])}; {info['size']}x{info['size']} px",
        f"  zone axis      {_geometry_text(info.get('geometry'))}",
        "  splits         " + ", ".join(f"{k or 'unassigned'}: {v}" for k, v in info["per_split"].items()),
        "  space group        real  synthetic",
    ]
    for num, e in info["per_spacegroup"].items():
        lines.append(f"  {num:>4} {e['symbol']:<12}{e['real']:>6}{e['synthetic']:>11}")
    for f in info["failed"]:
        lines.append(f"  failed {f['id']} ({f['source']}): {f['reason']}")
    return "\n".join(lines)


def _geometry_text(geometry) -> str:
    if not geometry:
        return "[0 0 1], x [1 0 0]"

    def vec(v):
        return "[" + " ".join(str(int(i)) for i in v) + "]"

    text = f"{vec(geometry['zone'])}, x {vec(geometry['x_direction']) if geometry.get('x_direction') else 'default'}"
    if geometry.get("normal") is not None:
        text += f", normal {vec(geometry['normal'])}"
    if not geometry.get("standard", True):
        text += " (not the shipped [001] surrogates' geometry)"
    return text
