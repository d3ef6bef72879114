"""CLI flags built from the options dataclasses, and the library's option keys written back as flags."""

from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from astrosr.cli import cli
from astrosr.cli_options import click_options, flag_message, flag_names, from_cli
from astrosr.config import option
from astrosr.deblur import DeblurOptions
from astrosr.evaluate import EvaluateOptions
from astrosr.psf import PSF


@dataclass(frozen=True)
class Demo:
    samples: int = option(0, minimum=0, help="Posterior draws.")
    consistency: bool = option(True, help="Skip the step.")
    compress: bool = option(False, help="Compress.")
    images: list[str] = option(default_factory=list, help="Images.")
    psf: PSF = option(PSF(), help="The PSF.")
    hidden: int = option(1, cli=False, help="Not a flag.")


@click.command()
@click_options(Demo)
def demo(**given):
    click.echo(repr(from_cli(Demo, given)))


def _run(*args):
    return CliRunner().invoke(demo, list(args))


def test_flags_come_from_the_fields():
    help_text = _run("--help").output
    for flag in ("--samples", "--no-consistency", "--compress", "--images", "--psf", "--psf-fwhm", "--psf-shape"):
        assert flag in help_text
    assert "--hidden" not in help_text and "--consistency " not in help_text


def test_values_given_and_defaults_kept():
    assert _run().output.strip() == repr(Demo())
    out = _run("--samples", "3", "--no-consistency", "--compress", "--images", "a", "--images", "b",
               "--psf-shape", "gaussian", "--psf-fwhm", "2.5").output.strip()
    assert out == repr(Demo(samples=3, consistency=False, compress=True, images=["a", "b"],
                            psf=PSF(shape="gaussian", fwhm=2.5)))
    assert _run("--samples", "-1").exit_code == 2  # click checks the minimum too


def test_flag_names_and_messages():
    flags = flag_names(DeblurOptions)
    assert flags["consistency"] == "--no-consistency" and flags["psf.path"] == "--psf" and flags["dask_local"] == "--dask-local"
    assert flag_names(EvaluateOptions)["fields"] == "--field"
    assert flag_message("samples: must be >= 0, got -1", flags) == "--samples: must be >= 0, got -1"
    assert flag_message("x.fits: output exists (overwrite=True replaces it)", flags) == \
        "x.fits: output exists (--overwrite replaces it)"
    assert flag_message("psf.beta: not used by psf.shape gaussian; drop it", flags) == \
        "--psf-beta: not used by --psf-shape gaussian; drop it"
    assert flag_message("x.fits: HDU 0 is a 3-D cube; choose a plane (plane=K)", flags).endswith("(--plane=K)")


@pytest.mark.parametrize(
    "args, line",
    [
        (["deblur", "x.fits", "-o", "o", "--psf-shape", "gaussian", "--psf-beta", "2"],
         "error: --psf-beta: not used by --psf-shape gaussian; drop it"),
        (["deblur", "x.fits", "-o", "o", "--scheduler", "tcp://h:1", "--dask-local", "2"],
         "error: --scheduler and dask_local exclude each other"),
        (["evaluate", "--field", "sky", "-o", "o"], "error: --field: expected train, val, other_sky, simulated or all"),
        (["prepare", "x.fits", "-o", "o.h5", "--noise", "2:1"], "error: --noise: expected 0 < lo <= hi"),
    ],
)
def test_a_library_error_reads_in_flags_on_the_command_line(tmp_path, monkeypatch, args, line):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2 and result.stderr.startswith(line), result.output
