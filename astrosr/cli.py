"""The ``astrosr`` command: thin click commands, each calling one library function.

Errors a user can cause (:class:`astrosr.errors.AstrosrError`) print as one red
line and exit with code 2; anything else keeps its traceback.
"""

import sys

import click
from rich.console import Console

from . import __version__
from .errors import AstrosrError

__all__ = ["cli", "main"]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AstrosrError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", markup=True)
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
    ]
    for option in reversed(options):
        func = option(func)
    return func


def psf_from_options(psf_file=None, psf_fwhm=None, psf_beta=None, psf_shape=None, **extra):
    """Build a :class:`astrosr.degrade.PSF` from the shared options (bench-v1 defaults)."""
    from .degrade import PSF

    if psf_file:
        return PSF(shape="file", path=str(psf_file), **extra)
    kwargs = {"shape": psf_shape or "moffat"}
    if psf_fwhm is not None:
        kwargs["fwhm"] = psf_fwhm
    if psf_beta is not None:
        kwargs["beta"] = psf_beta
    kwargs.update(extra)
    return PSF(**kwargs)


# --- prepare stage: simulate, fetch, prepare, info -------------------------


# --- train stage: train, export -------------------------------------------


# --- evaluate stage ----------------------------------------------------------


# --- deblur stage ------------------------------------------------------------


# --- pipelines: run ----------------------------------------------------------


def main():
    """Console entry point."""
    sys.exit(cli.main(standalone_mode=True))
