"""The ``astrosr`` command: thin click commands, each calling one library function.

Kept together as one module: one short function per command, so the whole
command line reads in one file.

A stage's flags come from its options dataclass (:mod:`astrosr.cli_options`);
the console, progress bars and tables are :mod:`astrosr.cli_display`'s.
Errors a user can cause (:class:`astrosr.errors.AstrosrError`) print as one
red line, with the option keys the library names written as the flags that
set them, and exit with code 2; anything else keeps its traceback.
"""

import dataclasses
import logging
import sys

import click
from rich.markup import escape

from . import __version__
from .cli_display import Bars, console, err_console, evaluate_tables, log_to, quiet_logs, wide
from .cli_options import click_options, flag_message, flag_names, from_cli
from .deblur import DeblurOptions
from .errors import AstrosrError
from .evaluate import EvaluateOptions
from .prepare import PrepareOptions
from .psf_measure import PsfOptions
from .simulate import SimulateOptions
from .train_config import TrainConfig

__all__ = ["cli", "main"]

#: command name -> the options dataclass whose keys its errors may name
OPTION_CLASSES = {"evaluate": EvaluateOptions, "deblur": DeblurOptions, "prepare": PrepareOptions, "train": TrainConfig,
                  "simulate": SimulateOptions, "psf": PsfOptions}
#: keys whose flags several commands declare by hand (the library names them in its messages)
COMMON_FLAGS = {"overwrite": "--overwrite", "data_dir": "--data-dir", "manifest": "--manifest"}


class _Group(click.Group):
    def invoke(self, ctx):
        quiet_logs()  # each command chooses whether the library's log lines show (several run in one test process)
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
        except click.UsageError as exc:
            # click's own checks (a value out of range, a bad choice, -o naming a file) read like astrosr's:
            # one red line with the command to ask for help, exit 2
            hint = f" (astrosr {ctx.invoked_subcommand} -h)" if ctx.invoked_subcommand else " (astrosr -h)"
            err_console.print(f"[bold red]error:[/] {escape(exc.format_message())}{hint}", markup=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            # one line, not click's "Aborted!" (once per process): every output goes through a temporary
            err_console.print("[bold red]interrupted[/]: outputs not yet complete were not kept", markup=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="astrosr")
def cli():
    """astrosr: restore blurred astronomical images."""


# --- prepare stage: simulate, fetch, prepare, info -------------------------


@cli.command()
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
@click_options(SimulateOptions)
def simulate(out_dir, overwrite, **given):
    """Write simulated star/galaxy fields OUT/sim_s<SEED>_<NNN>.fits (NNN: the image index, three digits)."""
    from .simulate import simulate_fields

    options = from_cli(SimulateOptions, given)
    with Bars({"images": "simulate"}) as bars:
        paths = simulate_fields(out_dir, options, overwrite=overwrite, progress=bars)
    console.print(f"wrote {len(paths)} simulated images to {out_dir} (seed {options.seed})")


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
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML of prepare keys, or a pipeline's prepare: section (flags override).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click_options(PrepareOptions)
def prepare(images, out, manifest, data_dir, fields, image_field, config_file, overwrite, **given):
    """Degrade FITS images and write 128x128 BLU/ORI tile pairs to an HDF5 file."""
    from pathlib import Path

    from rich.table import Table

    from .config import load_yaml
    from .errors import ConfigError, InputError
    from .manifest import load_manifest, resolve, resolve_psf
    from .prepare import prepare_pairs

    keys = {}
    if config_file:
        # a pipeline YAML's ``prepare:`` section, or a file of prepare keys alone
        data = load_yaml(config_file)
        keys = dict(data["prepare"] if isinstance(data.get("prepare"), dict) else data)
    flags = from_cli(PrepareOptions, given, build=False)
    psf_keys = {**(keys.pop("psf", None) or {}), **flags.pop("psf", {})}
    try:
        options = from_cli(PrepareOptions, {}, **keys, **flags, psf=psf_keys or None)
    except ConfigError as exc:
        raise ConfigError(f"{config_file}: {exc}" if config_file and not flags else str(exc)) from None
    sources = []
    loaded = load_manifest(manifest) if manifest else None
    if loaded is not None:
        sources += resolve(loaded, data_dir, fields.split(",") if fields else None)
    elif fields:
        raise InputError("--fields needs --manifest")
    sources += [(Path(p), image_field) for p in images]
    if not sources:
        raise InputError("no input images: give IMAGES or --manifest")
    # a PSF file may be named by the manifest's name for it, found in the data directory
    options = dataclasses.replace(options, psf=resolve_psf(options.psf, loaded, data_dir))
    with Bars({"images": "prepare"}) as bars:
        result = prepare_pairs(sources, out, config=options, overwrite=overwrite, progress=bars)
    try:  # the pairs file is complete from here: a Ctrl-C now cuts the summary short, not the work (exit 0)
        console.print(f"wrote {out}: {result['n_tiles']} tile pairs from {result['n_images']} images")
        table = Table()
        table.add_column("field")
        table.add_column("tiles", justify="right")
        for field, count in result["tiles_per_field"].items():
            table.add_row(field, str(count))
        console.print(table)
    except KeyboardInterrupt:
        return


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
def info(path):
    """Summarise a pairs file: tiles per field, images, degradation."""
    from pathlib import Path

    from rich.table import Table

    from .pairs import config_psf, summary

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
    psf = config_psf(c)
    shape = f"file {psf['path']}" if psf.get("path") else f"{psf['shape']} fwhm {psf['fwhm']} beta {psf['beta']}"
    console.print(f"degradation: psf {shape}; {s['psfs']['count']} kernel(s) "
                  f"{s['psfs']['size']}, tile FWHM {lo:.3g}-{hi:.3g} px; noise {c['noise']} x bg std, "
                  f"poisson gain {c['poisson_gain']}, randomise per {c['randomise']}, seed {c['seed']}")


# --- train stage: train, export -------------------------------------------


@cli.command("train")
@click.argument("pairs", type=click.Path(dir_okay=False))
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Training config YAML (e.g. pipelines/train_resvae.yaml); default: OUT/config.yaml on --resume.")
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--stop-at", type=int, default=None, help="Stop after this step and save last.pt (resume later).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other config key, value parsed as YAML (e.g. model_options.width=16). Repeatable.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.pt.")
@click_options(TrainConfig)
def train_command(pairs, config_path, out, sets, resume, stop_at, **given):
    """Train a model on a pairs file from `astrosr prepare` (torchrun-ready for several processes)."""
    import os
    from pathlib import Path

    import yaml

    from .errors import ConfigError, InputError

    if not Path(pairs).is_file():  # before torch loads: a typo is reported at once
        raise InputError(f"{pairs}: pairs file not found")
    from .train import load_config, train

    options = from_cli(TrainConfig, given, build=False)
    run = Path(out)
    if config_path is None and resume and (run / "config.yaml").is_file():
        config_path = run / "config.yaml"
    overrides = dict(options)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = yaml.safe_load(value)
    config = load_config(config_path, overrides)
    # train() checks these too, naming the option; here the flags to use
    if resume and not (run / "last.pt").is_file():
        raise InputError(f"--resume: nothing to resume in {out} (no last.pt)")
    if not resume and ((run / "last.pt").exists() or (run / "best.pt").exists()):
        raise InputError(f"{out}: already holds a run (use --resume to continue it, or another --out)")
    main = int(os.environ.get("RANK", "0")) == 0
    log_to()  # validation lines, above the bar
    try:
        with Bars({"steps": f"train {config.model}"}, enabled=main and config.progress) as bars:
            summary = train(pairs, config, out, resume=resume, stop_at=stop_at, progress=bars)
    except KeyboardInterrupt:
        last = run / "last.pt"
        if main and last.is_file():
            err_console.print(f"[bold red]interrupted[/]: {escape(str(last))} holds the run so far; continue it with "
                              f"astrosr train {escape(str(pairs))} -o {escape(str(out))} --resume", markup=True)
            click.get_current_context().exit(130)
        raise
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
    console.print(f"wrote {weights} and {weights.with_suffix('.json')}")


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


# --- the image's PSF: psf ---------------------------------------------------


@cli.command("psf")
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click_options(PsfOptions)
def psf_command(images, out_dir, **given):
    """Measure each image's PSF from its own stars: OUT/<name>_psf.fits (the kernel) and _psf.png.

    Bright, isolated, unsaturated stars; an elliptical Moffat fitted to each (FWHM, beta, ellipticity,
    angle) and photutils' empirical PSF. One image that cannot be measured is one error line (exit 2);
    several print a table and exit 1 when any failed.
    """
    from pathlib import Path

    from rich.table import Table

    from .errors import InputError
    from .psf_measure import measure_files

    options = from_cli(PsfOptions, given)
    log_to(level=logging.WARNING)  # an undersampled PSF, regions without enough stars: said, in one line each
    with Bars({"images": "images"}) as bars:
        rows = measure_files(list(images), out_dir, options, progress=bars)
    if len(rows) == 1 and rows[0]["status"] == "failed":
        raise InputError(f"{rows[0]['input']}: {rows[0]['reason']}")
    table = Table(title=f"astrosr psf -> {out_dir}")
    for name in ("image", "FWHM px", "beta", "e", "angle", "stars", "kernel / reason"):
        table.add_column(name, justify="left" if name in ("image", "kernel / reason") else "right")
    for r in rows:
        if r["status"] == "done":
            table.add_row(Path(r["input"]).name, f"{r['fwhm']:.3f}", f"{r['beta']:.2f}", f"{r['ellipticity']:.2f}",
                          f"{r['angle']:.0f}", str(r["n_stars"]), escape(Path(r["kernel"]).name))
        else:
            table.add_row(Path(r["input"]).name, "", "", "", "", "", f"[red]{escape(r['reason'])}[/]")
    wide().print(table)
    if any(r["status"] == "failed" for r in rows):
        click.get_current_context().exit(1)


# --- deblur stage ------------------------------------------------------------


@cli.command()
@click.argument("inputs", nargs=-1, required=True)
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Output directory.")
@click_options(DeblurOptions)
def deblur(inputs, out_dir, **given):
    """Deblur FITS images (files, directories, globs) into OUT/<name>_deblur.fits.

    One input file that fails is one error line (exit 2); a batch prints a table of what was done,
    skipped and failed, and exits 1 when any input failed.
    """
    from pathlib import Path

    from rich.table import Table

    from .errors import InputError

    from .batch import deblur_batch

    options = from_cli(DeblurOptions, given)
    log_to(level=logging.WARNING)  # a header fixed on the way out is said, in one line
    serial = options.workers == 1 and not (options.scheduler or options.dask_local)
    with Bars({"images": "images", "tiles": "tiles of this image", "draws": "posterior draws of this image"}) as bars:
        results = deblur_batch(inputs, out_dir, options,
                               progress=bars if serial else lambda task, *a: task == "images" and bars(task, *a))
    if len(inputs) == 1 and len(results) == 1 and results[0].status == "failed":
        # one file that cannot be deblurred is bad input (exit 2, one line); a batch reports its table, exit 1
        raise InputError(flag_message(f"{results[0].input}: {results[0].reason}", flag_names(DeblurOptions)))
    table = Table(title=f"astrosr deblur -> {out_dir}")
    for name in ("input", "status", "output / reason", "s", "Mpix"):
        table.add_column(name, justify="right" if name in ("s", "Mpix") else "left")
    styles = {"done": "green", "skipped": "yellow", "failed": "red"}
    for r in results:
        detail = Path(r.output).name if r.status == "done" else flag_message(r.reason, flag_names(DeblurOptions))
        table.add_row(Path(r.input).name, f"[{styles[r.status]}]{r.status}[/]", escape(detail), f"{r.seconds:.1f}",
                      f"{r.megapixels:.2f}")
    wide().print(table)
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
    wide().print(table)


def main():
    """Console entry point."""
    sys.exit(cli.main(standalone_mode=True))


if __name__ == "__main__":
    main()
