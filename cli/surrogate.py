"""Surrogate commands (``train``, ``evaluate``, ``predict``, ``invert``), thin over
:mod:`lacbed_refine.surrogate`; registered on the main group by :func:`register`."""

from __future__ import annotations

import click


def _floats(text, option="--thickness"):
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(";", ",").split(",") if x.strip()]
    except ValueError:
        raise click.UsageError(f"{option} {text!r}: expected comma-separated numbers") from None


@click.command("train")
@click.argument("direction", type=click.Choice(["forward", "inverse"]))
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="HDF5 dataset (its train split; validation is scored each epoch).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write (every few minutes and at the end).")
@click.option("--arch", type=click.Choice(["cgan", "vae"]), default=None, help="Network family (default cgan).")
@click.option("--epochs", type=int, default=None, help="Train for this many epochs in total.")
@click.option("--minutes", type=float, default=None, help="Stop after this many minutes of this run.")
@click.option("--device", default=None, help="torch device (default cpu).")
@click.option("--seed", type=int, default=None, help="Seed of data order and augmentation (default 0): runs are deterministic.")
@click.option("--batch-size", type=int, default=None, help="Structures per step (default 16).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 2e-4).")
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
@click.option("--config", type=click.Path(dir_okay=False), default=None, help="JSON with sections task/generator/discriminator/loss/vae/train.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint at -o.")
@click.option("--overwrite", is_flag=True, help="Start a new model over an existing checkpoint at -o (without it, one is refused).")
def train_command(direction, data, output, **options):
    """Train a DIRECTION (forward or inverse) surrogate on a dataset."""
    from lacbed_refine.surrogate import train_file

    s = train_file(direction, data, output, **options)
    click.echo(f"{s['checkpoint']}: step {s['step']} (epoch {s['epoch']:.2f}), {s['seconds']:.0f} s this run; "
               + ", ".join(f"{k} {v:.4g}" for k, v in s["last"].items()))


@click.command("evaluate")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False), help="HDF5 dataset.")
@click.option("--split", default="test", show_default=True, help="Split to evaluate on.")
@click.option("--source", type=click.Choice(["all", "real", "synthetic"]), default="all", show_default=True,
              help="Score only the split's real (or synthetic) structures.")
@click.option("--report", type=click.Path(file_okay=False), default=None, help="Folder for report.json and the figures.")
@click.option("--batch-size", type=int, default=16, show_default=True, help="Structures per forward pass (>= 1).")
@click.option("--device", default=None, help="torch device (default cpu).")
@click.option("--symmetrise", is_flag=True, help="Forward models: average over the 8 operations of the square.")
def evaluate_command(models, data, **options):
    """Score MODELS (one or more surrogate files) on a dataset split; several models are compared."""
    from lacbed_refine.surrogate import evaluate_files

    for name, rep in evaluate_files(models, data, **options).items():
        s = rep["summary"]

        def stat(key, which="mean", s=s):  # NaN when every sample of a field scored NaN
            return s.get(key, {}).get(which, float("nan"))

        nan = f" ({rep['n_nan']} scored NaN, left out)" if rep.get("n_nan") else ""
        click.echo(f"{name}: {rep['n_samples']} samples{nan}, R mean {stat('R'):.4f} median {stat('R', 'median'):.4f}, "
                   f"origin-insensitive R mean {stat('R_shift'):.4f}, ℓMSE mean {stat('lmse'):.3g}")


@click.command("predict")
@click.argument("source", type=click.Path(dir_okay=False))
@click.option("--thickness", required=True, help="Thicknesses [nm], comma-separated.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .tif, .npy or .h5 (a .png preview is written beside it).")
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="Forward surrogate file (default: the shipped weights).")
@click.option("--a", "a_angstrom", type=float, default=None, help="Cell edge [Å] for a potential image without metadata.")
@click.option("--device", default=None, help="torch device (default cpu).")
@click.option("--symmetrise", is_flag=True, help="Average over the 8 operations of the square (exactly equivariant, 8x the cost).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def predict_command(source, thickness, output, **options):
    """Predict bright-field LACBED of SOURCE (a CIF or a potential image) with the forward surrogate."""
    from lacbed_refine.surrogate import predict_file

    r = predict_file(source, output, thickness_nm=_floats(thickness), **options)
    click.echo(f"{r['output']} {r['shape']}; preview {r['preview']}")


@click.command("invert")
@click.argument("pattern", type=click.Path(dir_okay=False))
@click.option("--thickness", default=None, help="Thickness [nm] of the pattern(s), comma-separated (default: from the file).")
@click.option("--a", "a_angstrom", type=float, default=None, help="Cell edge [Å] (default: from the file).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output .tif, .npy or .h5 (a .png preview is written beside it).")
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="Inverse surrogate file (default: the shipped weights).")
@click.option("--device", default=None, help="torch device (default cpu).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
def invert_command(pattern, thickness, a_angstrom, output, model, device, overwrite):
    """Predict the projected potential behind a bright-field PATTERN with the inverse surrogate."""
    from lacbed_refine.surrogate import invert_file

    r = invert_file(pattern, output, thickness_nm=_floats(thickness), a_angstrom=a_angstrom, model=model, device=device,
                    overwrite=overwrite)
    click.echo(f"{r['output']} {r['shape']}, potential max-min {', '.join(f'{v:.1f}' for v in r['potential_scale_V'])} V; preview {r['preview']}")


@click.command("identify")
@click.argument("pattern", type=click.Path(dir_okay=False))
@click.option("--candidates", required=True, type=click.Path(), help="Folder of candidate CIFs (recursive; cubic ones are ranked).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Ranking .json (a .png of the best matches is written beside it).")
@click.option("--thickness", default=None, help="Thicknesses scanned [nm], comma-separated (default 50,60,...,200).")
@click.option("--confirm", type=int, default=5, show_default=True, help="How many of the surrogate's best the Bloch engine simulates again (0: none).")
@click.option("--top", type=int, default=5, show_default=True, help="Matches shown in the figure and printed.")
@click.option("--model", type=click.Path(dir_okay=False), default=None, help="Forward surrogate file (default: the shipped weights).")
@click.option("--device", default=None, help="torch device (default cpu).")
@click.option("--workers", type=int, default=1, show_default=True, help="Engine worker processes for the confirmation.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def identify_command(pattern, candidates, output, thickness, top, no_progress, **options):
    """Rank the cubic structures under --candidates by how well their [001] bright-field patterns
    (forward surrogate, then the engine for the best few) match PATTERN, over a thickness range."""
    from lacbed_refine.surrogate import identify_file

    rep = identify_file(pattern, candidates, output, thickness_nm=_floats(thickness), top=top, progress=not no_progress, **options)
    for i, c in enumerate(rep["ranking"][:top], 1):
        eng = "" if c["engine_r"] is None else f", engine r {c['engine_r']:.4f} at {c['engine_thickness_nm']:.0f} nm"
        click.echo(f"{i}. {c['id']} {c['formula']} {c['spacegroup']}: surrogate r {c['surrogate_r']:.4f} at "
                   f"{c['surrogate_thickness_nm']:.0f} nm{eng}")
    click.echo(f"{rep['n_candidates']} candidates ({len(rep['skipped'])} files skipped), "
               f"{rep['surrogate_ms_per_candidate']:.1f} ms per candidate by the surrogate; wrote {output}")


def register(cli: click.Group) -> None:
    """Add the surrogate commands to the ``lacbed-refine`` group."""
    for command in (train_command, evaluate_command, predict_command, invert_command, identify_command):
        cli.add_command(command)
