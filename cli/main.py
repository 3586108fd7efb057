"""``lacbed-refine``: click commands, each a thin layer over one library function."""

from __future__ import annotations

import logging
import math
import sys

import click

from lacbed_refine.version import __version__
from lacbed_refine.simulators.registry import PluginError


class _Group(click.Group):
    """Turns the library's input errors into one clear line and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (ValueError, OSError, FloatingPointError, PluginError) as exc:
            click.echo(f"lacbed-refine: error: {exc}", err=True)
            sys.exit(2)


def _floats(text, option="--thickness"):
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"{option} {text!r}: expected comma-separated numbers") from None


def _triple(text, option):
    """"1,1,0" or "1 1 0" or "[1,1,0]" → (1, 1, 0); None stays None."""
    if text is None:
        return None
    parts = text.strip().strip("[]").replace(",", " ").split()
    try:
        vec = tuple(int(x) for x in parts)
    except ValueError:
        raise click.UsageError(f"{option} {text!r}: expected three integers, e.g. 1,1,0") from None
    if len(vec) != 3:
        raise click.UsageError(f"{option} {text!r}: expected three integers, e.g. 1,1,0")
    return vec


@click.group(cls=_Group)
@click.version_option(__version__)
@click.option("-v", "--verbose", is_flag=True, help="Log progress details.")
def cli(verbose):
    """Refine cubic crystal structures against LACBED patterns."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")


@cli.command("simulate")
@click.argument("cif", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .tif, .npy or .h5 (a .png preview is written beside it).")
@click.option("--thickness", default=None, help="Thicknesses [nm], comma-separated (default 50,100,150,200).")
@click.option("--preset", default="paper", show_default=True, type=click.Choice(["paper"]), help="Base settings.")
@click.option("--kv", type=float, default=None, help="Accelerating voltage [kV] (default 200).")
@click.option("--size", type=int, default=None, help="Pattern edge [pixels] (default 128).")
@click.option("--half-width", type=float, default=None, help="Tilt half-width [1/Å] (default 7.266/a).")
@click.option("--zone", default=None, help="Incident beam direction [uvw], e.g. 1,1,0 (default 0,0,1).")
@click.option("--x-direction", default=None, help="Reciprocal vector [hkl] along image +x, perpendicular to the zone (default 1,0,0 at [001], else the shortest).")
@click.option("--normal", default=None, help="Specimen surface normal [uvw] (default: the zone).")
@click.option("--felix-inp", type=click.Path(dir_okay=False), default=None, help="Read every setting from a FELIX input file (v1.3 or the Python port's layout); options given here override it.")
@click.option("--hkl", type=click.Path(dir_okay=False), default=None, help="Reflections to write from a felix.hkl file (with --felix-inp, a felix.hkl beside it is read by default).")
@click.option("--beams", type=int, default=None, help="Beam pool: at least this many beams (whole shells; ZOLZ at cubic [001], near the Ewald sphere elsewhere), all used at every pixel.")
@click.option("--g-limit", type=float, default=None, help="Beam pool: all beams with |g| <= this [1/Å] (near the Ewald sphere away from cubic [001]).")
@click.option("--strong-beams", type=int, default=None, help="Beams per pixel chosen from the pool by excitation error (FELIX-like).")
@click.option("--strong-rule", type=click.Choice(["count", "felix"]), default=None, help="count: exactly --strong-beams per pixel (fast); felix: FELIX's rule, at least that many (reproduces FELIX).")
@click.option("--reflections", default=None, help='Reflections to write, e.g. "0 0 0;2 0 0" (default bright field).')
@click.option("--absorption", type=float, default=None, help="Proportional absorption [%] (default 0).")
@click.option("--absorption-model", type=click.Choice(["none", "proportional", "bird-king"]), default=None, help="Absorption: none, proportional (--absorption %) or bird-king (Bird & King 1990; FELIX's default).")
@click.option("--form-factors", type=click.Choice(["kirkland", "peng"]), default=None, help="Electron form factors (default kirkland).")
@click.option("--precision", type=click.Choice(["fast", "reference"]), default="fast", show_default=True, help="fast: float32 + symmetry wedge; reference: float64, every pixel.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda.")
@click.option("--workers", type=int, default=1, show_default=True, help="Worker processes for the eigen-solves (one thread each).")
@click.option("--engine", default="bloch", show_default=True, help="Simulator: bloch (built-in) or an installed plugin (see `lacbed-refine plugins`).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def simulate_command(cif, output, thickness, reflections, zone, x_direction, normal, **options):
    """Simulate LACBED patterns of CIF at any zone axis (Bloch-wave engine by default)."""
    from lacbed_refine.simulators.files import parse_reflections, simulate_file

    refl = parse_reflections(reflections) if reflections is not None else None
    result = simulate_file(cif, output, thickness_nm=_floats(thickness), reflections=refl, n_beams=options.pop("beams"),
                           zone=_triple(zone, "--zone"), x_direction=_triple(x_direction, "--x-direction"),
                           normal=_triple(normal, "--normal"), **options)
    info = result["info"]
    detail = f"{info.n_beams} beams, {info.symmetry_ops} symmetry ops, " if info else f"{options['engine']}, "
    click.echo(f"{result['output']} ({detail}{result['seconds']:.2f} s); preview {result['preview']}")


@cli.command("fit")
@click.argument("cif", type=click.Path(dir_okay=False))
@click.argument("pattern", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output folder: refined.cif, report.json and fit.png (one pattern) or montage.png, correlation.png, fit.npz (an experiment).")
@click.option("--refine", "refine_", default=None, help="What to refine: any of xyz,b,occ,thickness (default xyz,b,occ,thickness for one pattern; xyz,b for an experiment, whose thickness is always refined; an experiment also takes absorption, a scale on the absorptive potential, and lattice, a scale on the cell edges).")
@click.option("--fix", default="", help="Site labels to hold fixed, comma-separated.")
@click.option("--thickness", type=float, default=None, help="Starting thickness [nm] (default: scanned).")
@click.option("--half-width", type=float, default=None, help="Tilt half-width of the measured pattern [1/Å] (default: the simulation's, 7.266/a).")
@click.option("--mask", "mask_path", type=click.Path(dir_okay=False), default=None, help="Mask image (non-zero = use the pixel).")
@click.option("--blur", type=float, default=None, help="Gaussian blur of the simulation [pixels] (one pattern: fixed, default 0; an experiment: the start of the fitted detector blur, default felix.inp's blur_radius or 1).")
@click.option("--beams", type=int, default=None, help="Beam pool (whole shells) used at every pixel.")
@click.option("--kv", type=float, default=None, help="Accelerating voltage [kV] (default 200).")
@click.option("--zone", default=None, help="Incident beam direction [uvw] of the pattern, e.g. 1,1,0 (default 0,0,1).")
@click.option("--x-direction", default=None, help="Reciprocal vector [hkl] along the pattern's +x (default 1,0,0 at [001], else the shortest).")
@click.option("--normal", default=None, help="Specimen surface normal [uvw] (default: the zone).")
@click.option("--absorption-model", type=click.Choice(["none", "proportional", "bird-king"]), default=None, help="Absorption in the simulation (default none).")
@click.option("--absorption", type=float, default=None, help="Proportional absorption [%] (with --absorption-model proportional).")
@click.option("--size", type=int, default=None, help="Simulation grid [pixels] (default: the pattern's).")
@click.option("--no-seed", is_flag=True, help="Skip the inverse-generator seed.")
@click.option("--no-surrogate", is_flag=True, help="Skip the surrogate gradient search.")
@click.option("--no-polish", is_flag=True, help="Skip the Bloch-engine polish.")
@click.option("--no-b-restart", is_flag=True, help="Skip the polish's restart from one overall B (kept only when it fits better).")
@click.option("--forward-model", type=click.Path(dir_okay=False), default=None, help="Forward surrogate for the search (default: the shipped weights).")
@click.option("--inverse-model", type=click.Path(dir_okay=False), default=None, help="Inverse generator for the seed (default: the shipped weights).")
@click.option("--restarts", type=int, default=3, show_default=True, help="Starts of the surrogate search.")
@click.option("--starts", type=int, default=8, show_default=True, help="Engine multi-start of the coordinates before the polish: the start and N-1 spread ones, a short polish each, the best goes on (1: off).")
@click.option("--start-spread", type=float, default=0.4, show_default=True, help="Half-width [Å] of the spread coordinate starts.")
@click.option("--start-rounds", type=int, default=4, show_default=True, help="Most rounds of coordinate starts: another round follows while the best start leaves 1-r above 0.1.")
@click.option("--device", default="cpu", show_default=True, help="Torch device of the surrogates (cpu, cuda).")
@click.option("--check", default="bloch", show_default=True, help="Simulator for the final check (bloch or a plugin, e.g. felix).")
@click.option("--max-iter", type=int, default=40, show_default=True, help="L-BFGS-B iterations per polish level.")
@click.option("--lm-iter", type=int, default=0, show_default=True,
              help="Levenberg–Marquardt iterations after the polish (float64; 0: none).")
@click.option("--felix-seed", default=None, is_flag=False, flag_value="auto", help="Also write DIR/felix/: a FELIX refinement set seeded from the result (letters; alone: B and D as far as FELIX can refine them for the crystal; needs the FELIX plugin).")
@click.option("--overwrite", is_flag=True, help="Replace a result already in the output folder.")
@click.option("--discs", default="hkl", show_default=True, help="Experiment: discs fitted: hkl (000 + felix.hkl's reflections with an image), all (every image), or a list \"0 0 2;1 1 1\".")
@click.option("--strong-beams", type=int, default=None, help="Experiment: least strong beams per pixel at the start (FELIX's rule; default felix.inp's min_strong_beams).")
@click.option("--bethe", is_flag=True, help="Experiment: keep each pixel's weak beams as second-order (Bethe) couplings of its strong beams (FELIX: off).")
@click.option("--background-order", type=click.IntRange(0, 2), default=1, show_default=True, help="Experiment: per-disc background polynomial (0 constant, 1 plane, 2 quadratic).")
@click.option("--stretch", is_flag=True, help="Experiment: also refine an x/y stretch of the images.")
@click.option("--orientation", default="auto", show_default=True, help="Experiment: how the images' axes lie on the simulation's (auto: found from the data).")
@click.option("--thickness-scan", default=None, help="Experiment: thickness scan lo,hi,step [nm] (default from felix.inp's range).")
@click.option("--iterations", type=int, default=6, show_default=True, help="Experiment: most Gauss-Newton steps per refinement.")
@click.option("--no-beam-convergence", is_flag=True, help="Experiment: skip raising the beams at the answer.")
@click.option("--bin", "bin_", type=click.IntRange(1, 4), default=1, show_default=True, help="Experiment: average bin x bin pixel blocks first (faster, coarser).")
@click.option("--workers", type=int, default=None, help="Experiment: engine worker processes (default: the CPUs available).")
@click.option("--disc-weights", default=None, help="Experiment: weights of discs in the figure of merit, e.g. \"1 1 -3=0.5;3 3 -3=0.5\" (others 1).")
def fit_command(cif, pattern, output, refine_, fix, thickness, half_width, mask_path, blur, beams, kv, zone, x_direction, normal, absorption_model, absorption,
                size, no_seed, no_surrogate, no_polish, no_b_restart, forward_model, inverse_model, restarts, starts, start_spread, start_rounds, device, check, max_iter, lm_iter, felix_seed, overwrite,
                discs, strong_beams, bethe, background_order, stretch, orientation, thickness_scan, iterations, no_beam_convergence, bin_, workers,
                disc_weights):
    """Refine the structure in CIF against a measured PATTERN: one bright-field image, or an
    experiment (a folder with felix.inp, felix.hkl and one image per disc, or a labelled stack
    .npz/.h5/multi-page .tif) whose discs are all fitted together with the microscope's geometry,
    blur and background."""
    from lacbed_refine.refine.config import FitConfig
    from lacbed_refine.refine.experiment_files import is_experiment

    if is_experiment(pattern):
        _fit_experiment_command(cif, pattern, output, refine_=refine_, fix=fix, thickness=thickness, half_width=half_width,
                                mask_path=mask_path, blur=blur, beams=beams, kv=kv, zone=zone, x_direction=x_direction,
                                normal=normal, absorption_model=absorption_model, felix_seed=felix_seed, overwrite=overwrite,
                                discs=discs, strong_beams=strong_beams, bethe=bethe, background_order=background_order, stretch=stretch,
                                orientation=orientation, thickness_scan=thickness_scan, iterations=iterations,
                                no_beam_convergence=no_beam_convergence, bin_=bin_, workers=workers, disc_weights=disc_weights)
        return
    from lacbed_refine.refine.files import fit_files

    refine_ = "xyz,b,occ,thickness" if refine_ is None else refine_
    blur = 0.0 if blur is None else blur

    config = FitConfig(refine=tuple(x.strip() for x in refine_.split(",") if x.strip()), fix=tuple(x.strip() for x in fix.split(",") if x.strip()),
                       thickness_nm=thickness, blur_sigma=blur, seed=not no_seed, surrogate=not no_surrogate, polish=not no_polish, check=check, max_iter=max_iter, lm_iter=lm_iter,
                       forward_model=forward_model, inverse_model=inverse_model, surrogate_restarts=restarts, device=device,
                       b_restart=not no_b_restart, coordinate_starts=starts, start_spread_A=start_spread,
                       start_rounds=start_rounds)
    result, paths = fit_files(cif, pattern, output, config=config, pattern_half_width=half_width, mask_path=mask_path, kv=kv, size=size, n_beams=beams,
                              zone=_triple(zone, "--zone"), x_direction=_triple(x_direction, "--x-direction"), normal=_triple(normal, "--normal"),
                              absorption_model=absorption_model, absorption=absorption,
                              progress=click.echo, felix_seed=felix_seed, overwrite=overwrite)
    sigma = f" ± {result.thickness_sigma_nm:.2f}" if math.isfinite(result.thickness_sigma_nm) else " (no uncertainty)"
    click.echo(f"r = {result.r:.5f}, t = {result.thickness_nm:.2f}{sigma} nm; wrote {paths['cif']}, {paths['report']}, {paths['figure']}")
    if "check_failed" in result.extra:
        click.echo(f"lacbed-refine: error: final check with {check} failed ({result.extra['check_failed']}); "
                   f"the refined result was written, checked with the built-in engine", err=True)
        sys.exit(1)


def _fit_experiment_command(cif, pattern, output, *, refine_, fix, thickness, half_width, mask_path, blur, beams, kv, zone,
                            x_direction, normal, absorption_model, felix_seed, overwrite, discs, strong_beams, bethe,
                            background_order, stretch, orientation, thickness_scan, iterations, no_beam_convergence, bin_,
                            workers, disc_weights=None):
    import numpy as np
    from tqdm.auto import tqdm

    from lacbed_refine.refine.experiment_files import fit_experiment_files
    from lacbed_refine.refine.experiment_fit import ExperimentFitConfig

    if mask_path is not None:
        raise click.UsageError("--mask: an experiment's unrecorded pixels are found from the data (zeros, negatives)")
    if felix_seed not in (None, "auto"):
        raise click.UsageError(f"--felix-seed {felix_seed}: an experiment's FELIX set is written as it is (no letters)")
    kinds = tuple(k.strip() for k in ("xyz,b" if refine_ is None else refine_).split(",") if k.strip() and k.strip() != "thickness")
    if discs not in ("hkl", "all"):
        try:
            discs = [tuple(int(v) for v in part.replace(",", " ").split()) for part in discs.split(";") if part.strip()]
        except ValueError:
            raise click.UsageError(f"--discs {discs!r}: hkl, all, or a list like \"0 0 2;1 1 1\"") from None
        if not discs or any(len(d) != 3 for d in discs):
            raise click.UsageError(f"--discs {discs!r}: each disc needs three indices")
    scan = None
    if thickness_scan is not None:
        scan = tuple(_floats(thickness_scan, "--thickness-scan"))
        if len(scan) != 3:
            raise click.UsageError(f"--thickness-scan {thickness_scan!r}: expected lo,hi,step [nm]")
    weights = None
    if disc_weights:
        weights = {}
        for part in disc_weights.split(";"):
            if not part.strip():
                continue
            try:
                hkl, w = part.split("=")
                key = tuple(int(v) for v in hkl.replace(",", " ").split())
                weights[key] = float(w)
            except ValueError:
                raise click.UsageError(f"--disc-weights {part.strip()!r}: expected \"h k l=weight\"") from None
            if len(key) != 3:
                raise click.UsageError(f"--disc-weights {part.strip()!r}: expected \"h k l=weight\"")
    config = ExperimentFitConfig(weights=weights, refine=kinds, fix=tuple(x.strip() for x in fix.split(",") if x.strip()),
                                 thickness_nm=thickness, thickness_scan_nm=scan, strong_beams=strong_beams, pool=beams, bethe=bethe,
                                 absorption_model=absorption_model or "bird-king", background_order=background_order,
                                 stretch=stretch, blur_px=blur, orientation=orientation, iterations=iterations,
                                 converge_beams=not no_beam_convergence, bin=bin_, workers=workers)
    bar = tqdm(total=None, desc="fit", bar_format="{desc}{postfix} | {elapsed}", leave=True)

    def progress(stage, fom):
        bar.set_description_str(stage)
        bar.set_postfix_str("fom —" if fom is None else f"fom {fom:.5f}")
        bar.update(1)

    try:
        result, paths = fit_experiment_files(cif, pattern, output, config=config, discs=discs, kv=kv,
                                             zone=_triple(zone, "--zone"), x_direction=_triple(x_direction, "--x-direction"),
                                             normal=_triple(normal, "--normal"), half_width=half_width,
                                             overwrite=overwrite, felix_seed=felix_seed is not None, progress=progress)
    finally:
        bar.close()
    for name, start, value, sig in zip(result.names, result.start, result.refined, result.sigma):
        click.echo(f"  {name:16s} {start:10.4f} -> {value:10.4f} ± {sig:.4f}")
    g = result.geometry
    click.echo(f"  rotation {g.rotation_deg:+.2f}°, scale {g.scale:.4f}, blur {g.blur_px:.2f} px, zone axis at "
               f"({g.centre[0]:+.2f}, {g.centre[1]:+.2f}) px, orientation {result.orientation}")
    click.echo(f"fom = {result.fom:.5f} over {len(result.reflections)} discs (r worst {result.disc_r.min():.4f}, median "
               f"{float(np.median(result.disc_r)):.4f}), t = {result.thickness_nm:.2f} nm, pool {result.beams['pool']}, "
               f"{result.extra['seconds']:.0f} s; wrote {', '.join(str(p) for p in paths.values())}")


@cli.command("batch")
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Output folder: one sub-folder per sample and summary.csv.")
@click.option("--workers", type=int, default=1, show_default=True, help="Samples refined in parallel (local processes).")
@click.option("--scheduler", default=None, help="Dask distributed scheduler address (instead of local workers).")
def batch_command(manifest, output, workers, scheduler):
    """Refine every sample of MANIFEST (CSV: cif,pattern[,id,refine,fix,thickness,half_width,blur,beams,mask,forward_model,inverse_model]); reruns skip finished samples."""
    from lacbed_refine.refine.batch import run_batch

    res = run_batch(manifest, output, workers=workers, scheduler=scheduler)
    click.echo(f"{res['done']} done, {res['failed']} failed, {res['skipped']} already finished, of {res['total']}; {res['summary']}")
    if res["failed"]:
        click.echo(f"lacbed-refine: {res['failed']} of {res['total']} samples failed (see error.txt in their folders)", err=True)
        sys.exit(1)


@cli.command("plugins")
def plugins_command():
    """List the simulators that are installed (built-in and plugins) and whether they can run."""
    from lacbed_refine.simulators.registry import discover_simulators, get_simulator

    for info in discover_simulators():
        if info.error:
            click.echo(f"{info.name:10s} {info.source}: BROKEN: {info.error}")
            continue
        ok, why = get_simulator(info.name).available()
        click.echo(f"{info.name:10s} {info.source}: {'ready' if ok else 'not ready'} ({why})")


@cli.command("potential")
@click.argument("cif", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .tif, .npy or .h5 (a .png preview is written beside it).")
@click.option("--size", type=int, default=128, show_default=True, help="Image edge [pixels]; the unit cell spans the image.")
@click.option("--form-factors", type=click.Choice(["kirkland", "peng"]), default="kirkland", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def potential_command(cif, output, size, form_factors, overwrite):
    """Write the [001] projected potential of CIF (raw [V] and normalised)."""
    from lacbed_refine.simulators.files import potential_file

    result = potential_file(cif, output, size=size, form_factors=form_factors, overwrite=overwrite)
    click.echo(f"{result['output']}; preview {result['preview']}")


from lacbed_refine_cli.dataset import dataset_group; cli.add_command(dataset_group)  # noqa: E402,E702


from lacbed_refine_cli.surrogate import register as _register_surrogate  # noqa: E402
_register_surrogate(cli)


def _add_plugin_commands(group: click.Group) -> None:
    """Add command groups that plugins register under ``lacbed_refine.commands`` (e.g. ``felix``);
    a broken plugin is logged and skipped, never takes the CLI down."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="lacbed_refine.commands"):
        try:
            group.add_command(ep.load(), ep.name)
        except Exception as exc:  # whatever a third-party import raises
            logging.getLogger(__name__).warning("command plugin %s: %s", ep.name, exc)


_add_plugin_commands(cli)


if __name__ == "__main__":  # pragma: no cover
    cli()
