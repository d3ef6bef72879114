"""Do two versions of astrosr write the same outputs? For refactors that must not change behaviour.

``make OUT`` runs a fixed set of CLI commands (deblur with every PSF shape, samples, compression and
no consistency step; evaluate on images with draws and on val; prepare with randomised tiles, a
manifest field, a resampled PSF file and x2 pairs; a 6-step training) into ``OUT``, with the
installed astrosr. ``compare A B`` then checks, and prints one line per output:

- every FITS HDU's data bytes;
- evaluate's ``metrics.csv`` rows and ``summary.json`` (timings, dates, versions, hardware dropped);
- the pairs files' ``blu``, ``ori``, ``tiles``, ``images`` and ``psfs`` datasets and PSF parameters;
- the trained checkpoints' weights and step.

Run ``make`` once with the commit before a change and once after (same thread count), then
``compare``::

    git worktree add /tmp/old <commit before>
    python benchmarks/same_outputs.py make /tmp/before --checkout /tmp/old
    python benchmarks/same_outputs.py make /tmp/after
    python benchmarks/same_outputs.py compare /tmp/before /tmp/after
 Needs the bench-v1 files
(``ASTROSR_DATA_DIR``); takes about a minute on 2 cores.
"""

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _commands(data):
    d = str(data)
    return [
        ["deblur", f"{d}/M51.fits", f"{d}/synth.fits", "-o", "deblur_default"],
        ["deblur", f"{d}/M51.fits", "-o", "deblur_samples", "--samples", "4", "--psf-fwhm", "3.5"],
        ["deblur", f"{d}/gc_2mass_j.fits", "-o", "deblur_gauss", "--psf-shape", "gaussian", "--psf-fwhm", "3",
         "--no-consistency", "--overlap", "16"],
        ["deblur", f"{d}/saao_bulge_0020.fits", "-o", "deblur_airy", "--psf-shape", "airy", "--psf-radius", "3",
         "--compress"],
        ["deblur", f"{d}/synth.fits", "-o", "deblur_file", "--psf", "kernel.fits"],  # no pixel-scale card
        ["evaluate", "--images", f"{d}/M51.fits", f"{d}/gc_2mass_k.fits", "-o", "eval_images", "--samples", "2"],
        ["evaluate", "--field", "val", "--data-dir", d, "-o", "eval_val", "--psf-fwhm", "3", "--baselines-only"],
        ["prepare", f"{d}/M13_blue_0001.fits", f"{d}/reprojected_sdss_g.fits", "--psf-shape", "moffat,gaussian",
         "--psf-fwhm", "2.5:5.5", "--noise", "0.7:1.5", "--randomise", "tile", "--stride", "64", "-o", "pairs_tile.h5"],
        ["prepare", "--manifest", str(ROOT / "data_manifests/bench_v1.yaml"), "--data-dir", d, "--fields", "val",
         "-o", "pairs_val.h5"],
        ["prepare", f"{d}/M51.fits", "--psf", "irac_ch1_flight.fits", "--manifest",
         str(ROOT / "data_manifests/bench_v1.yaml"), "--data-dir", d, "--fields", "val", "--image-pixscale", "1.2",
         "--psf-pixscale", "0.30525", "-o", "pairs_file.h5"],
        ["prepare", f"{d}/M51.fits", "--scale", "2", "--psf-fwhm", "3:4", "--seed", "3", "-o", "pairs_s2.h5"],
        ["train", "pairs_tile.h5", "--config", str(ROOT / "pipelines/train_resvae.yaml"), "-o", "train",
         "--max-steps", "6", "--set", "val_field=train", "--set", "val_every=3", "--set", "val_images=false",
         "--no-progress", "--set", "batch=4"],
    ]


def _write_kernel(path):
    """A 31 x 31 elliptical Gaussian kernel FITS file (a PSF file with no pixel-scale card)."""
    import numpy as np
    from astropy.io import fits

    y, x = np.mgrid[-15:16, -15:16]
    kernel = np.exp(-0.5 * ((x / 1.8) ** 2 + (y / 1.3) ** 2))
    fits.writeto(path, (kernel / kernel.sum()).astype(np.float32))


def make(out, data, checkout=None):
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    _write_kernel(out / "kernel.fits")
    for args in _commands(data):
        print("astrosr", " ".join(args), flush=True)
        command = [sys.executable, "-c", _RUNNER, str(Path(checkout).resolve()) if checkout else ""]
        subprocess.run([*command, *args], cwd=out, env=env, check=True, stdout=subprocess.DEVNULL)


#: runs the CLI of the astrosr in a given checkout (first on sys.path), or the installed one
_RUNNER = """import sys
checkout = sys.argv.pop(1)
if checkout:
    sys.path.insert(0, checkout)
sys.argv[0] = "astrosr"
from astrosr.cli import main
main()
"""

TIMING = {"seconds", "s_per_mpix", "elapsed_s", "tiles_per_s"}
VOLATILE = TIMING | {"date", "created", "hardware", "versions", "path", "pairs", "note"}


def _csv_rows(path):
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def _stable(value):
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE and "second" not in k and "mpix" not in k}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def compare(a, b):
    import h5py
    import torch
    from astropy.io import fits

    a, b = Path(a), Path(b)
    differ = []

    def line(same, what):
        print(("same " if same else "DIFF ") + what)
        if not same:
            differ.append(what)

    for f in sorted(a.rglob("*.fits*")):
        g = b / f.relative_to(a)
        if not g.exists():
            line(False, f"{g} missing")
            continue
        with fits.open(f) as x, fits.open(g) as y:
            same = len(x) == len(y) and all(
                (h.data is None and k.data is None)
                or (h.data is not None and k.data is not None and h.data.tobytes() == k.data.tobytes())
                for h, k in zip(x, y))
        line(same, f"{f.relative_to(a)}: data bytes")
    for f in sorted(a.rglob("metrics.csv")):
        line(_csv_rows(f) == _csv_rows(b / f.relative_to(a)), f"{f.relative_to(a)}: rows (timings dropped)")
    for f in sorted(a.glob("eval_*/summary.json")):
        x, y = (_stable(json.loads(p.read_text())) for p in (f, b / f.relative_to(a)))
        line(x == y, f"{f.relative_to(a)}: scores (timings, dates, versions, notes dropped)")
    for f in sorted(a.glob("*.h5")):
        with h5py.File(f) as x, h5py.File(b / f.name) as y:
            for key in ("blu", "ori", "tiles", "images", "psfs"):
                line(x[key][()].tobytes() == y[key][()].tobytes(), f"{f.name}: {key}")
            line(x["psfs"].attrs["params"] == y["psfs"].attrs["params"], f"{f.name}: psf parameters")
    for name in ("best.pt", "last.pt"):
        x, y = (torch.load(p / "train" / name, weights_only=True) for p in (a, b))
        same = x["step"] == y["step"] and all(torch.equal(v, y["state_dict"][k]) for k, v in x["state_dict"].items())
        line(same, f"train/{name}: weights and step")
    print("all outputs the same" if not differ else f"{len(differ)} outputs differ")
    return 1 if differ else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make", help="run the commands into OUT")
    m.add_argument("out")
    m.add_argument("--checkout", default=None, help="run the astrosr of this checkout [the installed one]")
    m.add_argument("--data-dir", default=os.environ.get("ASTROSR_DATA_DIR", str(ROOT.parent / "shared/data/fits")))
    c = sub.add_parser("compare", help="compare two OUT directories")
    c.add_argument("a")
    c.add_argument("b")
    args = parser.parse_args()
    if args.command == "make":
        make(args.out, Path(args.data_dir).resolve(), args.checkout)
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    sys.exit(main())
