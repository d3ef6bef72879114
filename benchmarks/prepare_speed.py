"""Time ``astrosr prepare`` on bench-v1's train+val fields against a bare script doing the same work.

The baseline reads each FITS file with astropy, computes ORI's percentiles
and sigma-clipped background, convolves (edge-padded FFT), adds the same
seeded noise, computes BLU's percentiles and background, cuts the NaN-free
grid tiles, normalises, hashes the file, and writes the same arrays and
tables with h5py, with the same chunking and compression. Both outputs are
checked to hold identical ``blu``/``ori`` arrays, so the two do the same work.

Floor (issue 3): prepare / baseline <= 1.3.

Usage::

    python benchmarks/prepare_speed.py [--data-dir DIR] [--repeat 3] [--compression lzf] [--out results.md]
"""

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from scipy import signal

REPO = Path(__file__).resolve().parents[1]
FLOOR = 1.3


def moffat(fwhm=4.0, beta=3.0, size=41):
    gamma = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    k = (1 + (x**2 + y**2) / gamma**2) ** (-beta)
    return k / k.sum()


def baseline(sources, out, compression):
    """The same work as prepare, written as one plain script."""
    kernel = moffat()
    opts = {"lzf": dict(compression="lzf", shuffle=True), "gzip": dict(compression="gzip", compression_opts=4, shuffle=True),
            "none": {}}[compression]
    blus, oris, tiles, images = [], [], [], []
    for i, (path, field) in enumerate(sources):
        ori = fits.getdata(path).astype(np.float64)
        ori[~np.isfinite(ori)] = np.nan
        finite = ori[np.isfinite(ori)]
        lo, hi = np.percentile(finite, [0.5, 99.9])
        mean, median, std = sigma_clipped_stats(finite, sigma=3, maxiters=5)
        padded = np.pad(np.nan_to_num(ori), 20, mode="edge")
        blu = signal.fftconvolve(padded, kernel, mode="valid")
        rng = np.random.default_rng(i if field == "train" else 0)
        blu += rng.normal(0, std, blu.shape)
        blu_lo, blu_hi = np.percentile(blu, [0.5, 99.9])
        blu_std = sigma_clipped_stats(blu, sigma=3, maxiters=5)[2]
        bad = np.isnan(ori)
        for y in range(0, ori.shape[0] - 127, 128):
            for x in range(0, ori.shape[1] - 127, 128):
                if not bad[y : y + 128, x : x + 128].any():
                    oris.append(((ori[y : y + 128, x : x + 128] - lo) / (hi - lo)).astype(np.float32))
                    blus.append(((blu[y : y + 128, x : x + 128] - lo) / (hi - lo)).astype(np.float32))
                    tiles.append((i, y, x, field.encode(), 0, 4.0, std))
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        images.append((str(path).encode(), digest.encode(), field.encode(), *ori.shape, lo, hi, blu_lo, blu_hi,
                       mean, median, std, blu_std, 0, -1))
    with h5py.File(out, "w") as h5:
        h5.create_dataset("blu", data=np.stack(blus), chunks=(1, 128, 128), **opts)
        h5.create_dataset("ori", data=np.stack(oris), chunks=(1, 128, 128), **opts)
        h5.create_dataset("tiles", data=np.array(tiles, dtype=[("image", "<i4"), ("y", "<i4"), ("x", "<i4"),
                          ("field", "S16"), ("psf_index", "<i4"), ("psf_fwhm", "<f4"), ("noise_std", "<f4")]))
        h5.create_dataset("images", data=np.array(images, dtype=[
            ("path", "S200"), ("sha256", "S64"), ("field", "S16"), ("ny", "<i4"), ("nx", "<i4"), ("lo", "<f8"),
            ("hi", "<f8"), ("blu_lo", "<f8"), ("blu_hi", "<f8"), ("bg_mean", "<f8"), ("bg_median", "<f8"),
            ("bg_std", "<f8"), ("blu_bg_std", "<f8"), ("hdu", "<i4"), ("plane", "<i4")]))
        h5.create_dataset("psfs", data=kernel[None].astype(np.float32))


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("ASTROSR_DATA_DIR", REPO.parent / "shared" / "data" / "fits"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--compression", default="lzf", choices=["lzf", "gzip", "none"])
    parser.add_argument("--out", type=Path, default=None, help="Also write the Markdown report here.")
    args = parser.parse_args(argv)

    from astrosr import __version__
    from astrosr.manifest import resolve
    from astrosr.prepare import PrepareOptions, prepare_pairs

    sources = resolve(REPO / "data_manifests" / "bench_v1.yaml", args.data_dir, ["train", "val"])
    config = PrepareOptions(compression=args.compression)
    times = {"astrosr prepare": [], "baseline": []}
    sizes = {}
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "astrosr.h5", Path(tmp) / "baseline.h5"
        runs = {"astrosr prepare": lambda: prepare_pairs(sources, a, config=config, overwrite=True, progress=False),
                "baseline": lambda: baseline(sources, b, args.compression)}
        for name, run in runs.items():  # warm-up: imports, page cache
            run()
        for _ in range(args.repeat):  # interleaved, so load on the machine hits both alike
            for name, run in runs.items():
                times[name].append(timed(run))
        with h5py.File(a) as fa, h5py.File(b) as fb:
            for key in ("blu", "ori"):
                if not np.array_equal(fa[key][:], fb[key][:]):
                    sys.exit(f"outputs differ in {key}: the baseline does not do the same work")
            n_tiles = len(fa["ori"])
        sizes = {name: p.stat().st_size / 1e6 for name, p in (("astrosr prepare", a), ("baseline", b))}
    best = {name: min(t) for name, t in times.items()}
    ratio = best["astrosr prepare"] / best["baseline"]
    lines = [
        "# prepare speed: bench-v1 train+val",
        "",
        f"{len(sources)} images -> {n_tiles} tile pairs, compression {args.compression}, "
        f"best of {args.repeat} interleaved runs after one warm-up each.",
        "",
        "| run | best s | median s | file MB |",
        "|---|---|---|---|",
    ]
    for name, t in times.items():
        lines.append(f"| {name} | {best[name]:.2f} | {statistics.median(t):.2f} | {sizes[name]:.1f} |")
    verdict = "meets" if ratio <= FLOOR else "MISSES"
    lines += [
        "",
        f"ratio prepare / baseline = **{ratio:.2f}** ({verdict} the floor <= {FLOOR}); the two files hold "
        "identical blu/ori arrays.",
        "",
        f"astrosr {__version__}, numpy {np.__version__}, h5py {h5py.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()} {os.cpu_count()} CPUs ({platform.processor() or platform.platform()}), "
        f"load average at the end {os.getloadavg()[0]:.1f} (a shared machine: compare the ratio, not the seconds), "
        f"command: `python benchmarks/prepare_speed.py --compression {args.compression} --repeat {args.repeat}`",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0 if ratio <= FLOOR else 1


if __name__ == "__main__":
    sys.exit(main())
