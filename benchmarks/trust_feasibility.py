"""How low the trust floors' source-pixel coverage can go on each image, whatever sigma a model gives.

    python benchmarks/trust_feasibility.py [--field simulated] [--field other_sky] [--model default] [-o OUT.md]

The trust floors test z = |X - ORI| / sqrt(sigma^2 + s^2) on ORI's source pixels (ORI - median > 5 s),
s = ORI's sigma-clipped background std. z only falls as sigma grows, so the fraction with z <= 1 is
smallest at sigma = 0: where that fraction is already above the window's 0.76, no uncertainty map can
meet the floor for that restoration. Printed per image and per field (source pixels pooled, as the
floors pool them) for BLU, Wiener (b = 0.1), Richardson-Lucy (n = 20) and the model's restoration
(bench-v1's degradation, the data-consistency step on), beside s and ORI's pixel noise measured from
differences of neighbouring pixels (MAD / sqrt 2), which a smooth source filling the frame leaves alone.
"""

import argparse
import os
from pathlib import Path

import numpy as np
from astropy.stats import mad_std

from _report import emit

from astrosr import baselines
from astrosr.checkpoint import load_model
from astrosr.evaluate import load_sources
from astrosr.manifest import load_manifest
from astrosr.psf import BENCH_V1_PSF
from astrosr.restore import restore_image
from astrosr.scoring import degraded
from astrosr.uncertainty import coverage, pixel_errors, pooled

UPPER = 0.76  # the z <= 1 window's upper edge


def pixel_noise(ori: np.ndarray) -> float:
    """ORI's noise std from horizontal neighbour differences (robust: MAD), blind to smooth light."""
    return float(mad_std(np.diff(ori, axis=1), ignore_nan=True) / np.sqrt(2.0))


def cell(errors, *, bold: bool = False) -> str:
    """``z <= 1 / z <= 2`` of the source pixels of ``errors`` (sigma 0); with ``bold``, the first in bold above
    the window (the floors hold the pooled field to it, not single images)."""
    sources = errors.sources()
    if not sources.err.size:
        return "-"
    cov = coverage(sources, [1.0, 2.0])
    z1 = f"{cov[1.0]:.3f}"
    return f"{f'**{z1}**' if bold and cov[1.0] > UPPER else z1} / {cov[2.0]:.3f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--field", action="append", help="bench-v1 field (repeatable) [simulated, other_sky, val]")
    parser.add_argument("--model", default="default")
    parser.add_argument("--manifest", default="data_manifests/bench_v1.yaml")
    parser.add_argument("-o", "--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    fields = args.field or ["simulated", "other_sky", "val"]
    sources = load_sources(fields=fields, manifest=load_manifest(args.manifest),
                           data_dir=os.environ.get("ASTROSR_DATA_DIR"))
    kernel = BENCH_V1_PSF.kernel()
    fwhm = BENCH_V1_PSF.fwhm_px(kernel)
    model, _ = load_model(args.model)
    methods = ("BLU", "Wiener b=0.1", "RL n=20", f"SR {args.model}")
    rows, parts = [], {}
    for path, field in sources:
        ori, ref, blu = degraded(path, kernel)
        images = {"BLU": blu, "Wiener b=0.1": baselines.wiener(blu, kernel),
                  "RL n=20": baselines.richardson_lucy(blu, kernel),
                  f"SR {args.model}": restore_image(blu, model, psf_kernel=kernel, psf_fwhm=fwhm).sr}
        errors = {m: pixel_errors(ref, images[m], np.zeros_like(images[m])) for m in methods}
        for m in methods:
            parts.setdefault((field, m), []).append(errors[m])
        n = errors[methods[0]].sources().err.size  # ORI's source pixels: the same for every method
        rows.append(f"| {Path(path).name} ({field}) | {ref.std:.4g} | {pixel_noise(ori):.4g} | {n} | "
                    + " | ".join(cell(errors[m]) for m in methods) + " |")
    for field in fields:
        if (field, methods[0]) not in parts:
            continue
        field_errors = {m: pooled(parts[(field, m)]) for m in methods}
        n = field_errors[methods[0]].sources().err.size
        cells = " | ".join(cell(field_errors[m], bold=True) for m in methods)
        rows.append(f"| **{field}** (pooled) | | | {n} | {cells} |")
    emit(f"Source pixels with z <= 1 / z <= 2 at sigma = 0 (the least coverage any sigma gives; in bold where the "
         f"pooled z <= 1 is above the window's {UPPER}): bench-v1 degradation, model `{args.model}`",
         ["image", "s (sigma-clipped std)", "pixel noise (differences)", "source pixels", *methods], rows, args.out)


if __name__ == "__main__":
    main()
