"""Check issue 10's quality floors from `astrosr evaluate` summaries and print them as a Markdown table.

    python benchmarks/bench_v1_floors.py FWHM4/summary.json FWHM3/summary.json FWHM5/summary.json \
        [--samples FWHM4_SAMPLES/summary.json] [--model 'SR resvae/best'] [--vae 'SR vae/best']

The default model's row is the one with the data-consistency step; its own '(no DC)' variant is
not a competitor. Every comparison prints the numbers it used.
"""

import argparse
import json

FIELDS = ("val", "other_sky", "simulated")


def _competitors(rows, vae):
    """BLU, RL, Wiener and the seed VAE's row with the step (the floors' rivals; a model's own variants are not)."""
    return {name: row for name, row in rows.items()
            if name == "BLU" or name.startswith(("RL ", "Wiener ")) or name == vae}


def _best(rivals, key, better):
    name = (max if better == "higher" else min)(rivals, key=lambda n: rivals[n][key])
    return name, rivals[name][key]


def _line(floor, detail, met):
    return f"| {floor} | {detail} | {'yes' if met else '**no**'} |"


def check(main, fwhm3, fwhm5, *, model, vae, samples=None):
    lines = ["| floor | numbers (model vs the best other row) | met |", "|---|---|---|"]
    for field in ("other_sky", "simulated"):
        rows = main["fields"][field]
        rivals = _competitors(rows, vae)
        for key, better in (("ssim", "higher"), ("mse", "lower")):
            name, value = _best(rivals, key, better)
            mine = rows[model][key]
            met = mine > value if better == "higher" else mine < value
            lines.append(_line(f"{field}: {key.upper()} {better} than every other row",
                               f"{mine:.4g} vs {name} {value:.4g}", met))
    rows = main["fields"]["val"]
    name, value = _best(_competitors(rows, vae), "mse", "lower")
    lines.append(_line("val: MSE lower than every other row", f"{rows[model]['mse']:.4g} vs {name} {value:.4g}",
                       rows[model]["mse"] < value))
    lines.append(_line("val: SSIM higher than BLU", f"{rows[model]['ssim']:.4f} vs {rows['BLU']['ssim']:.4f}",
                       rows[model]["ssim"] > rows["BLU"]["ssim"]))
    sdss = main["images"]["reprojected_sdss_i"]["methods"]
    name, value = _best(_competitors(sdss, vae), "ssim", "higher")
    lines.append(_line("reprojected_sdss_i: SSIM higher than every other row",
                       f"{sdss[model]['ssim']:.4f} vs {name} {value:.4f}", sdss[model]["ssim"] > value))
    for field in FIELDS:
        rows = main["fields"][field]
        rl = next(n for n in rows if n.startswith("RL "))
        mine, blu, rlv = rows[model]["flux_err"], rows["BLU"]["flux_err"], rows[rl]["flux_err"]
        lines.append(_line(f"{field}: flux error below BLU's and no worse than RL's",
                           f"{mine:.3f} vs BLU {blu:.3f}, {rl} {rlv:.3f}", mine < blu and mine <= rlv))
        mine, rlv = rows[model], rows[rl]
        lines.append(_line(f"{field}: spurious fraction no higher than RL's",
                           f"{mine['n_spurious']}/{mine['n_sources']} vs {rl} {rlv['n_spurious']}/{rlv['n_sources']}",
                           mine["n_spurious"] * rlv["n_sources"] <= rlv["n_spurious"] * mine["n_sources"]))
    for fwhm, summary in (("3", fwhm3), ("5", fwhm5)):
        wins, misses = 0, []
        for field in FIELDS:
            rows = summary["fields"][field]
            for key, better in (("ssim", "higher"), ("mse", "lower"), ("flux_err", "lower")):
                mine, blu = rows[model][key], rows["BLU"][key]
                if (mine > blu) if better == "higher" else (mine < blu):
                    wins += 1
                else:
                    misses.append(f"{field} {key} {mine:.4g} vs BLU {blu:.4g}")
        lines.append(_line(f"FWHM {fwhm}: SR beats BLU in SSIM, MSE and flux error on every field",
                           f"{wins}/9 comparisons" + (f"; missed: {'; '.join(misses)}" if misses else ""), not misses))
    if samples is not None:
        u = samples["fields"]["val"][model]["uncertainty"]
        lines.append(f"| val source pixels with z <= 1 (calibrated: about 0.68; the trust issue's floors) | "
                     f"{u['within_1']:.4f} of {u['source_pixels']} pixels | reported |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fwhm4")
    parser.add_argument("fwhm3")
    parser.add_argument("fwhm5")
    parser.add_argument("--samples", default=None, help="summary.json of a --samples run at FWHM 4")
    parser.add_argument("--model", default="SR resvae/best")
    parser.add_argument("--vae", default="SR vae/best")
    args = parser.parse_args()
    load = lambda p: json.loads(open(p).read())  # noqa: E731
    print(check(load(args.fwhm4), load(args.fwhm3), load(args.fwhm5), model=args.model, vae=args.vae,
                samples=load(args.samples) if args.samples else None))


if __name__ == "__main__":
    main()
