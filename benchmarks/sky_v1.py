"""sky-v1: real images as observed, PSF measured, output PSF declared (benchmarks/README.md, section sky-v1).

    python benchmarks/sky_v1.py --data-dir ../shared/data/fits [--model default] [--target-fwhm 2]

Per image: the resolution stars of the input (section "Resolution"); rows for the input, astrosr's
default path (``deblur_image``: PSF measured on the image, output PSF a Moffat of FWHM T with the
image's beta), and Richardson-Lucy (n = 20) and Wiener (b = 0.1) given the same kernel. Columns:
star FWHM, its ratio to the declared output PSF drawn at the same stars (ideal 1) and to the input's
(below 1: sharper), median aperture-flux ratio output / input (radius 4 input FWHM, at most 12 px),
the deepest ring (input background sigma) and the background std ratio. The simulated fields "as
observed" (seeds 2000 and up: test fields, never trained or tuned on) state their PSF, so the measured
PSF is checked against the truth too. Writes benchmarks/results/sky_v1.md and sky_v1.json; the
floors are benchmarks/sky_v1_floors.py's.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from astrosr import __version__
from astrosr.baselines import richardson_lucy, wiener
from astrosr.checkpoint import load_model
from astrosr.deblur import AUTO_PSF, deblur_image
from astrosr.fits_io import read_image
from astrosr.provenance import versions
from astrosr.psf import gamma_of_fwhm, moffat_kernel
from astrosr.psf_matching import match_psf, rendered_fwhm
from astrosr.simulate import simulate_fields
from astrosr.stars import background, deepest_ring, flux_ratio, resolution_stars, star_fwhm

#: the real, well-sampled star fields of the data directory (its README)
REAL = ("vista_h_0005.fits", "vista_h_0008.fits", "saao_bulge_0020.fits", "saao_streak.fits")
#: simulated fields as observed: (seed, n, FWHM, beta) of their stated Moffat seeing
SIMULATED = ((2000, 6, 3.5, 3.0), (2001, 6, 5.0, 2.5))
#: --dev: the same protocol on development seeds (500-999), the only sky-like figures a choice may be made on
DEVELOPMENT = ((600, 3, 3.5, 3.0), (601, 3, 5.0, 2.5), (602, 3, 2.8, 2.8))
RESULTS = Path(__file__).resolve().parent / "results"


def encircled(radius, fwhm, beta):
    """A Moffat's flux within ``radius`` px (closed form), of unit total."""
    return 1.0 - (1.0 + (radius / gamma_of_fwhm(fwhm, beta)) ** 2) ** (1.0 - beta)


def ideal_flux_ratio(image_fwhm, target, beta, radius):
    """The flux ratio a perfect restoration gives an isolated star: the output PSF's encircled flux over the image's.

    Both Moffats of the measured beta; the aperture cap (12 px) cuts a wide, low-beta PSF's wings, which the
    sharper output PSF holds inside.
    """
    return encircled(radius, target, beta) / encircled(radius, image_fwhm, beta)


def scores(x, image, stars, f_in, std_in, target_rendered):
    f_out = star_fwhm(x, stars)
    return {
        "fwhm": f_out,
        "over_target": None if f_out is None or target_rendered is None else f_out / target_rendered,
        "over_input": None if f_out is None else f_out / f_in,
        "flux_ratio": flux_ratio(image, x, stars, min(12.0, 4.0 * f_in)),
        "ring": deepest_ring(x, stars, f_in, std_in),
        "bg_ratio": background(x)[1] / std_in,
    }


def one_image(name, image, model, info, target, truth=None):
    stars = resolution_stars(image)
    row = {"image": name, "stars": int(len(stars)), "truth_fwhm": truth}
    if len(stars) < 10:
        row["not_scored"] = f"{len(stars)} resolution stars (< 10)"
        return row
    f_in = star_fwhm(image, stars)
    std_in = background(image)[1]
    start = time.perf_counter()
    try:
        match = match_psf(image, AUTO_PSF, target_fwhm=target, name=name, model_info=info)
    except Exception as exc:  # a refused image fails the floors; say why
        row["refused"] = str(exc)
        return row
    measure_s = time.perf_counter() - start
    output = moffat_kernel(target, match.image_beta, size=match.kernel.shape[0])
    target_rendered = rendered_fwhm(output, stars)
    start = time.perf_counter()
    sr = deblur_image(image, model, psf=AUTO_PSF, target_fwhm=target, name=name, model_info=info).sr
    deblur_s = time.perf_counter() - start
    kernel = np.clip(match.kernel, 0.0, None)
    kernel /= kernel.sum()
    rows = {"input": image, "astrosr": sr, "Richardson-Lucy n=20": richardson_lucy(image, kernel, n=20),
            "Wiener b=0.1": wiener(image, match.kernel, balance=0.1)}
    ideal = ideal_flux_ratio(match.image_fwhm, target, match.image_beta, min(12.0, 4.0 * f_in))
    row.update(input_fwhm=f_in, target_rendered=target_rendered, measured_fwhm=match.image_fwhm, ideal_flux=ideal,
               measured_beta=match.image_beta, psf_stars=match.n_stars, kernel_fwhm=match.kernel_fwhm,
               notes=match.notes, measure_s=measure_s, deblur_s=deblur_s, megapixels=image.size / 1e6,
               methods={k: scores(v, image, stars, f_in, std_in, target_rendered) for k, v in rows.items()})
    return row


def fmt(value, digits=3):
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown(results, target, model):
    lines = [f"# sky-v1: real images as observed (astrosr {__version__}, model {model}, output PSF FWHM {target:g} px)",
             "", "`python benchmarks/sky_v1.py` (this commit). Stars: the input's resolution stars (section "
             "Resolution); FWHM by its Gaussian fit; the declared output PSF drawn through the same pixels at each "
             "star (T'). RL and Wiener are given the kernel astrosr removes. Ideal flux: the ratio a perfect restoration "
             "gives an isolated star (the declared output PSF's flux within the aperture over the measured PSF's, "
             "closed-form Moffats of the measured beta).", "",
             "| image | stars | input FWHM | PSF measured (truth) | kernel | T' | ideal flux | method | FWHM | / T' | "
             "/ input | flux ratio | deepest ring (sigma) | bg std ratio |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "not_scored" in r or "refused" in r:
            why = f"not scored: {r['not_scored']}" if "not_scored" in r else f"refused: {r['refused']}"
            lines.append(f"| {r['image']} | {r['stars']} | | | | | | {why} | | | | | | |")
            continue
        truth = f" ({r['truth_fwhm']:g})" if r["truth_fwhm"] else ""
        for k, (method, s) in enumerate(r["methods"].items()):
            head = (f"| {r['image']} | {r['stars']} | {fmt(r['input_fwhm'], 2)} | {fmt(r['measured_fwhm'], 2)}{truth} "
                    f"beta {fmt(r['measured_beta'], 2)} | {fmt(r['kernel_fwhm'], 2)} | {fmt(r['target_rendered'], 2)} "
                    f"| {fmt(r['ideal_flux'])} ")
            lines.append((head if k == 0 else "| | | | | | | ") + f"| {method} | {fmt(s['fwhm'], 2)} | "
                         f"{fmt(s['over_target'])} | {fmt(s['over_input'])} | {fmt(s['flux_ratio'])} | "
                         f"{fmt(s['ring'], 1)} | {fmt(s['bg_ratio'], 2)} |")
    lines += ["", "| image | Mpix | PSF measurement s | deblur s (measurement included) |", "|---|---|---|---|"]
    for r in results:
        if "methods" in r:
            lines.append(f"| {r['image']} | {r['megapixels']:.2f} | {r['measure_s']:.1f} | {r['deblur_s']:.1f} |")
    notes = sorted({n for r in results for n in r.get("notes", [])})
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", default="default")
    parser.add_argument("--target-fwhm", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--dev", action="store_true", help="development fields only (seeds 600-602), to choose on")
    args = parser.parse_args()
    model, info = load_model(args.model)
    results = []
    for name in () if args.dev else REAL:
        image = read_image(args.data_dir / name).data
        results.append(one_image(name, image, model, info, args.target_fwhm))
        print(name, "done", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for seed, n, fwhm, beta in DEVELOPMENT if args.dev else SIMULATED:
            for path in simulate_fields(Path(tmp) / str(seed), n=n, seed=seed, size=1024, psf_fwhm=fwhm, psf_beta=beta):
                results.append(one_image(path.name, read_image(path).data, model, info, args.target_fwhm, truth=fwhm))
                print(path.name, "done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(results, args.target_fwhm, args.model)
    stem = "sky_dev" if args.dev else "sky_v1"
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps({"astrosr": __version__, "model": args.model,
                                                       "model_sha256": info.get("sha256"), "target_fwhm": args.target_fwhm,
                                                       "versions": versions(), "images": results}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
