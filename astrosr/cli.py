"""The ``astrosr`` command: thin click commands, each calling one library function.

A stage's flags come from its options dataclass (:mod:`astrosr.cli_options`);
the console, progress bars and tables are :mod:`astrosr.cli_display`'s.
Errors a user can cause (:class:`astrosr.errors.AstrosrError`) print as one
red line, with the option keys the library names written as the flags that
set them, and exit with code 2; anything else keeps its traceback.
"""

import sys

import click
from rich.console import Console
from rich.markup import escape

from . import __version__
from .cli_display import Bars, console, err_console, evaluate_tables, log_to
from .cli_options import click_options, flag_message, flag_names, from_cli
from .errors import AstrosrError
from .deblur import DeblurOptions
from .evaluate import EvaluateOptions

__all__ = ["cli", "main"]

#: command name -> the options dataclass whose keys its errors may name
OPTION_CLASSES = {"evaluate": EvaluateOptions, "deblur": DeblurOptions}
#: keys every command that has the flag shares
COMMON_FLAGS = {"overwrite": "--overwrite", "data_dir": "--data-dir", "manifest": "--manifest", "n": "--n",
                "seed": "--seed", "size": "--size"}


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AstrosrError as exc:
            message = str(exc)
            command = self.commands.get(ctx.invoked_subcommand)
            flags = {k: v for k, v in COMMON_FLAGS.items()
                     if command is not None and any(v in p.opts for p in command.params)}
            options = OPTION_CLASSES.get(ctx.invoked_subcommand)
            if options is not None:
                flags.update(flag_names(options))
            message = flag_message(message, flags)
            err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="astrosr")
def cli():
    """astrosr: restore blurred astronomical images."""


def psf_options(func):
    """The PSF options every PSF-aware command shares (CONTRACTS.md section 1)."""
    options = [
        click.option("--psf", "psf_file", type=click.Path(dir_okay=False), help="PSF kernel from a FITS file."),
        click.option("--psf-fwhm", type=float, default=None, help="Moffat/Gaussian FWHM in pixels [4]."),
        click.option("--psf-beta", type=float, default=None, help="Moffat beta [3]."),
        click.option("--psf-shape", type=click.Choice(["moffat", "gaussian", "airy"]), default=None, help="Analytic PSF shape [moffat]."),
        click.option("--psf-radius", type=float, default=None, help="Airy first dark ring radius in pixels (--psf-shape airy)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def psf_from_options(psf_file=None, psf_fwhm=None, psf_beta=None, psf_shape=None, psf_radius=None, **extra):
    """Build a :class:`astrosr.psf.PSF` from the shared options (bench-v1 defaults)."""
    from .psf import PSF
    from .errors import ConfigError

    if psf_file:
        # silently ignoring them would score or deblur with another PSF than the user asked for
        given = [name for name, value in (("--psf-fwhm", psf_fwhm), ("--psf-beta", psf_beta), ("--psf-shape", psf_shape),
                                          ("--psf-radius", psf_radius)) if value is not None]
        if given:
            raise ConfigError(f"{given[0]}: not used with --psf {psf_file} (a PSF file is its own shape); drop one of them")
        return PSF(shape="file", path=str(psf_file), **extra)
    shape = psf_shape or "moffat"
    unused = {"gaussian": (("--psf-beta", psf_beta), ("--psf-radius", psf_radius)),
              "airy": (("--psf-fwhm", psf_fwhm), ("--psf-beta", psf_beta)),
              "moffat": (("--psf-radius", psf_radius),)}[shape]
    given = [name for name, value in unused if value is not None]
    if given:
        raise ConfigError(f"{given[0]}: not used by --psf-shape {shape}; drop it")
    kwargs = {"shape": shape}
    if psf_radius is not None:
        kwargs["radius"] = psf_radius
    if psf_fwhm is not None:
        kwargs["fwhm"] = psf_fwhm
    if psf_beta is not None:
        kwargs["beta"] = psf_beta
    kwargs.update(extra)
    return PSF(**kwargs)


# --- prepare stage: simulate, fetch, prepare, info -------------------------


@cli.command()
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--n", "n", type=click.IntRange(1), default=4, show_default=True, help="Number of images.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True, help="Seeds >= 1000 are the simulated test field.")
@click.option("--size", type=click.IntRange(128), default=512, show_default=True, help="Image side in pixels.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def simulate(out_dir, n, seed, size, overwrite):
    """Write simulated star/galaxy fields OUT/sim_s<SEED>_<i>.fits."""
    from .simulate import simulate_fields

    with Bars({"images": "simulate"}) as bars:
        paths = simulate_fields(out_dir, n=n, seed=seed, size=size, overwrite=overwrite, progress=bars)
    console.print(f"wrote {len(paths)} simulated images to {out_dir} (seed {seed})")


@cli.command()
@click.argument("manifest", type=click.Path(dir_okay=False))
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where the files go [$ASTROSR_DATA_DIR].")
@click.option("--fields", default=None, help="Comma list of fields (default all; PSFs always).")
def fetch(manifest, data_dir, fields):
    """Download a manifest's missing files into DATA_DIR and verify every sha256."""
    from rich.table import Table

    from .manifest import fetch as fetch_files

    log_to()
    with Bars({"files": "fetch"}) as bars:
        report = fetch_files(manifest, data_dir, fields=fields.split(",") if fields else None, progress=bars)
    table = Table(title=f"{manifest} -> {report[0][0].parent if report else data_dir}")
    table.add_column("file")
    table.add_column("status")
    for path, status in report:
        table.add_row(path.name, status)
    console.print(table)


@cli.command()
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(dir_okay=False), help="Output pairs file (.h5).")
@click.option("--manifest", type=click.Path(dir_okay=False), help="Data manifest (e.g. data_manifests/bench_v1.yaml).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Manifest files' directory [$ASTROSR_DATA_DIR].")
@click.option("--fields", default=None, help="Manifest fields, comma list (e.g. train,val) [all].")
@click.option("--field", "image_field", default="train", show_default=True, help="Field of the IMAGES given directly.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML of PrepareConfig keys (options override).")
@click.option("--hdu", default=None, help="HDU index or EXTNAME [first 2-D image].")
@click.option("--plane", type=click.IntRange(0), default=None, help="Plane of a 3-D cube.")
@click.option("--psf", "psf_file", default=None, help="PSF kernel FITS (a path, or a PSF named in the manifest).")
@click.option("--psf-shape", default=None, help="moffat, gaussian, airy; a comma list draws per image/tile [moffat].")
@click.option("--psf-fwhm", default=None, help="FWHM in px, or a range lo:hi [4].")
@click.option("--psf-beta", default=None, help="Moffat beta, or a range lo:hi [3].")
@click.option("--psf-radius", default=None, help="Airy first-zero radius in px, or a range.")
@click.option("--psf-pixscale", type=float, default=None, help="PSF file pixel scale (arcsec/px): resample to each image.")
@click.option("--image-pixscale", type=float, default=None, help="Image pixel scale (arcsec/px) when there is no WCS.")
@click.option("--randomise", type=click.Choice(["image", "tile"]), default=None, help="Draw ranges per image or tile [image].")
@click.option("--noise", default=None, help="Noise std / ORI background std, or a range [1].")
@click.option("--poisson-gain", type=float, default=None, help="Add Poisson noise at this gain (e-/ADU), train images.")
@click.option("--scale", type=click.IntRange(1), default=None, help="Block-average BLU by S (S-times super-resolution) [1].")
@click.option("--seed", type=click.IntRange(0), default=None, help="Seed of the train images' noise and PSF draws (image i: SeedSequence(seed, spawn_key=(i,))) [0].")
@click.option("--tile", type=click.IntRange(8), default=None, help="Tile side [128].")
@click.option("--stride", type=click.IntRange(1), default=None, help="Grid step [tile].")
@click.option("--compression", type=click.Choice(["lzf", "gzip", "none"]), default=None, help="HDF5 compression [lzf].")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def prepare(images, out, manifest, data_dir, fields, image_field, config_file, overwrite, psf_file, **options):
    """Degrade FITS images and write 128x128 BLU/ORI tile pairs to an HDF5 file."""
    from pathlib import Path

    from rich.table import Table

    from .config import from_dict, load_yaml, replace
    from .errors import ConfigError, InputError
    from .manifest import load_manifest, psf_path, resolve
    from .prepare import PrepareConfig, prepare_pairs

    base = PrepareConfig()
    if config_file:
        # a pipeline YAML's ``prepare:`` section, or a file of PrepareConfig keys alone
        data = load_yaml(config_file)
        section = data["prepare"] if isinstance(data.get("prepare"), dict) else data
        try:
            base = from_dict(PrepareConfig, section)
        except ConfigError as exc:
            raise ConfigError(f"{config_file}: {exc}") from None
    options = {k: v for k, v in options.items() if v is not None}
    if "hdu" in options and options["hdu"].lstrip("-").isdigit():
        options["hdu"] = int(options["hdu"])
    sources = []
    loaded = load_manifest(manifest) if manifest else None
    if loaded is not None:
        sources += resolve(loaded, data_dir, fields.split(",") if fields else None)
    elif fields:
        raise InputError("--fields needs --manifest")
    sources += [(Path(p), image_field) for p in images]
    if not sources:
        raise InputError("no input images: give IMAGES or --manifest")
    if psf_file:
        if not Path(psf_file).is_file() and loaded is not None and any(e.file == psf_file for e in loaded.psfs):
            psf_file = psf_path(loaded, psf_file, data_dir)
        elif not Path(psf_file).is_file():
            raise InputError(f"{psf_file}: PSF file not found")
        unused = [k for k in ("psf_fwhm", "psf_beta", "psf_radius") if k in options]
        if unused:  # a file PSF ignores them: say so rather than degrade with another PSF than asked
            raise ConfigError(f"--{unused[0].replace('_', '-')}: not used with --psf {psf_file} (a PSF file is its own shape)")
        options.update(psf_file=str(psf_file), psf_shape=options.get("psf_shape", "file"))
    try:
        config = replace(base, **options)
    except ConfigError as exc:  # name the option, not the internal class
        raise ConfigError(str(exc).removeprefix(f"{PrepareConfig.__name__}: ")) from None
    console = Console(highlight=False, soft_wrap=True)
    result = prepare_pairs(sources, out, config=config, overwrite=overwrite, progress=console.is_terminal)
    console.print(f"wrote {out}: {result['n_tiles']} tile pairs from {result['n_images']} images")
    table = Table()
    table.add_column("field")
    table.add_column("tiles", justify="right")
    for field, count in result["tiles_per_field"].items():
        table.add_row(field, str(count))
    console.print(table)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
def info(path):
    """Summarise a pairs file: tiles per field, images, degradation."""
    from pathlib import Path

    from rich.table import Table

    from .pairs import summary

    s = summary(path)
    a = s["attrs"]
    console.print(f"[bold]{path}[/]: {s['n_tiles']} pairs, ORI {s['ori_shape']}, BLU {s['blu_shape']}, "
                  f"scale {a.get('scale')}, {s['compression'] or 'uncompressed'}; schema {a.get('schema_version')}, "
                  f"astrosr {a.get('astrosr_version')}, created {a.get('created')}")
    fields = Table(title="tiles per field")
    fields.add_column("field")
    fields.add_column("tiles", justify="right")
    for field, count in s["tiles_per_field"].items():
        fields.add_row(field, str(count))
    console.print(fields)
    images = Table(title="images")
    for name in ("#", "file", "field", "shape", "tiles", "lo", "hi", "bg std"):
        images.add_column(name, justify="left" if name in ("file", "field") else "right")
    for k, im in enumerate(s["images"]):
        images.add_row(str(k), Path(im["path"]).name, im["field"], f"{im['shape'][1]}x{im['shape'][0]}",
                       str(im["n_tiles"]), f"{im['lo']:.4g}", f"{im['hi']:.4g}", f"{im['bg_std']:.4g}")
    console.print(images)
    c = s["config"]
    lo, hi = s["psf_fwhm_range"] or (float("nan"), float("nan"))
    shape = f"file {c['psf_file']}" if c["psf_file"] else f"{c['psf_shape']} fwhm {c['psf_fwhm']} beta {c['psf_beta']}"
    console.print(f"degradation: psf {shape}; {s['psfs']['count']} kernel(s) "
                  f"{s['psfs']['size']}, tile FWHM {lo:.3g}-{hi:.3g} px; noise {c['noise']} x bg std, "
                  f"poisson gain {c['poisson_gain']}, randomise per {c['randomise']}, seed {c['seed']}")


# --- train stage: train, export -------------------------------------------


@cli.command("train")
@click.argument("pairs", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Training config YAML (e.g. pipelines/train_resvae.yaml); default: OUT/config.yaml on --resume.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--model", type=click.Choice(["resvae", "vae"]), default=None, help="Model family.")
@click.option("--max-steps", type=int, default=None, help="Optimiser steps (the LR schedule spans them).")
@click.option("--stop-at", type=int, default=None, help="Stop after this step and save last.pt (resume later).")
@click.option("--batch", type=int, default=None, help="Tiles per step per process.")
@click.option("--lr", type=float, default=None, help="Peak learning rate.")
@click.option("--seed", type=int, default=None, help="Seed of every random choice.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=int, default=None, help="CPU threads (0: torch's default).")
@click.option("--workers", "num_workers", type=int, default=None, help="DataLoader worker processes.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other config key, value parsed as YAML (e.g. model_options.width=16). Repeatable.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.pt.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train_command(pairs, config_path, out, sets, resume, stop_at, no_progress, **options):
    """Train a model on a pairs file from `astrosr prepare` (torchrun-ready for several processes)."""
    import os
    from pathlib import Path

    import yaml

    from .errors import ConfigError, InputError
    from .train import load_config, train

    run = Path(out)
    if config_path is None and resume and (run / "config.yaml").is_file():
        config_path = run / "config.yaml"
    overrides = dict(options)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    if no_progress:
        overrides["progress"] = False
    config = load_config(config_path, overrides)
    # train() checks these too, naming the option; here the flags to use
    if resume and not (run / "last.pt").is_file():
        raise InputError(f"--resume: nothing to resume in {out} (no last.pt)")
    if not resume and ((run / "last.pt").exists() or (run / "best.pt").exists()):
        raise InputError(f"{out}: already holds a run (use --resume to continue it, or another --out)")
    main = int(os.environ.get("RANK", "0")) == 0
    log_to()  # validation lines, above the bar
    with Bars({"steps": f"train {config.model}"}, enabled=main and config.progress) as bars:
        summary = train(pairs, config, out, resume=resume, stop_at=stop_at, progress=bars)
    if not main:
        return
    from rich.table import Table

    table = Table(title=f"astrosr train: {summary['model']} ({summary['parameters']:,} parameters)")
    table.add_column("")
    table.add_column("value")
    best = summary["best"] or {}
    table.add_row("steps", f"{summary['steps']} / {summary['max_steps']}")
    table.add_row("time", f"{summary['seconds']:.0f} s on {summary['device']} x{summary['world_size']}")
    for key in ("tile_ssim", "tile_mse", "ssim", "mse", "flux_err", "spurious"):
        if best.get(key) is not None:
            table.add_row(f"best val {key} (step {best['step']})", f"{best[key]:.4g}")
    table.add_row("whole-image validation", str(summary["val_images"]))
    table.add_row("run directory", str(out))
    console.print(table)


@cli.command("export")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--name", default="model", show_default=True, help="Base name of the .safetensors/.json pair.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def export_command(checkpoint, out, name, overwrite):
    """Export a checkpoint's weights as NAME.safetensors + NAME.json (what --model accepts)."""
    from .checkpoint import export_model

    weights = export_model(checkpoint, out, name=name, overwrite=overwrite)
    Console().print(f"wrote {weights} and {weights.with_suffix('.json')}")


# --- evaluate stage ----------------------------------------------------------


@cli.command()
@click.argument("more_images", nargs=-1, type=click.Path(dir_okay=False), metavar="[IMAGES]...")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--baselines-only", is_flag=True, help="Score BLU, Richardson-Lucy and Wiener only (no model).")
@click_options(EvaluateOptions)
def evaluate(more_images, out, baselines_only, **given):
    """Score models, BLU, Richardson-Lucy and Wiener on bench-v1 fields or images (report in OUT)."""
    from .evaluate import evaluate as run_evaluate
    from .manifest import default_manifest

    images = list(given.pop("images") or ()) + list(more_images)
    options = from_cli(EvaluateOptions, given, images=images or None, models=[] if baselines_only else None,
                       manifest=given.get("manifest") or default_manifest())
    with Bars({"images": "images"}) as bars:
        summary = run_evaluate(out, options, progress=bars)
    evaluate_tables(summary, out)


# --- deblur stage ------------------------------------------------------------


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click_options(DeblurOptions)
def deblur(inputs, out_dir, **given):
    """Deblur FITS images (files, directories, globs) into OUT/<name>_deblur.fits."""
    from pathlib import Path

    from rich.table import Table

    from .batch import deblur_batch

    options = from_cli(DeblurOptions, given)
    serial = options.workers == 1 and not (options.scheduler or options.dask_local)
    with Bars({"images": "images", "tiles": "tiles of this image"}) as bars:
        results = deblur_batch(inputs, out_dir, options,
                               progress=bars if serial else lambda task, *a: task == "images" and bars(task, *a))
    table = Table(title=f"astrosr deblur -> {out_dir}")
    for name in ("input", "status", "output / reason", "s", "Mpix"):
        table.add_column(name, justify="right" if name in ("s", "Mpix") else "left")
    styles = {"done": "green", "skipped": "yellow", "failed": "red"}
    for r in results:
        detail = Path(r.output).name if r.status == "done" else r.reason
        table.add_row(Path(r.input).name, f"[{styles[r.status]}]{r.status}[/]", escape(detail), f"{r.seconds:.1f}",
                      f"{r.megapixels:.2f}")
    console.print(table)
    counts = {s: sum(r.status == s for r in results) for s in styles}
    console.print(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    if counts["failed"]:
        click.get_current_context().exit(1)


# --- pipelines: run ----------------------------------------------------------


@cli.command("run")
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option("-o", "--out", "run_dir", type=click.Path(file_okay=False), default=None,
              help="Run directory [the YAML's run_dir].")
@click.option("--max-steps", type=click.IntRange(1), default=None, help="Override every model's training steps.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Data directory of the data stage [$ASTROSR_DATA_DIR].")
@click.option("--force", is_flag=True, help="Rerun every stage, even those finished before.")
def run_command(pipeline, run_dir, max_steps, data_dir, force):
    """Run a pipeline YAML (simulate, data, prepare, train, evaluate, deblur), resuming finished stages."""
    import json
    from pathlib import Path

    from rich.table import Table

    from .pipeline import run_pipeline

    log_to()
    with Bars() as bars:
        summary = run_pipeline(pipeline, run_dir=run_dir, max_steps=max_steps, force=force, data_dir=data_dir,
                               progress=bars)
    table = Table(title=f"astrosr run {summary['name']}: {summary['seconds']:.0f} s")
    for name in ("stage", "status", "seconds", "main output"):
        table.add_column(name, justify="right" if name == "seconds" else "left")
    for row in summary["stages"]:
        style = "green" if row["status"] == "done" else "yellow"
        table.add_row(row["stage"], f"[{style}]{row['status']}[/]", f"{row['seconds']:.1f}", row["output"])
    for row in summary["stages"]:  # what each evaluate stage scored, as `astrosr evaluate` shows it
        report = Path(row["output"]).with_name("summary.json")
        if row["stage"].startswith("evaluate") and report.is_file():
            evaluate_tables(json.loads(report.read_text()), str(report.parent))
    console.print(table)


def main():
    """Console entry point."""
    sys.exit(cli.main(standalone_mode=True))
