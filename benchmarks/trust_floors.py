"""Check the trust issue's floors from one `astrosr evaluate` summary and print them as a Markdown table.

    astrosr evaluate --field val --field other_sky --field simulated --samples 16 -o OUT   # with the peers extra
    python benchmarks/trust_floors.py OUT/summary.json [--model 'SR default']

Three groups: the uncertainty (hard floors: coverage of source pixels and sigma's ranking of
errors, on val, other_sky and simulated), the sources (spurious among p_detect >= 0.9 against
Wiener's plain spurious, completeness against Wiener's), and pixels and sharpness against the
strongest classical peer (RL, Wiener and BM3D: per image SSIM and star FWHM, field means of MSE
and flux error). The default model's row is the one with the data-consistency step; its own
'(no DC)' variant is not a competitor. Every comparison prints the numbers it used.
"""

import argparse
import json

FIELDS = ("val", "other_sky", "simulated")
WINDOWS = {"within_1": (0.60, 0.76), "within_2": (0.90, 0.98)}
RANKING = 1.5


def _line(floor, detail, met):
    return f"| {floor} | {detail} | {'yes' if met else '**no**' if met is not None else 'not measured'} |"


def _peers(rows):
    return {n: r for n, r in rows.items() if n.startswith(("RL ", "Wiener ", "BM3D "))}


def _uncertainty_lines(summary, model):
    lines = []
    for field in FIELDS:
        u = summary["fields"][field][model].get("uncertainty")
        if not u:
            lines.append(_line(f"{field}: coverage and ranking (hard)", "no sigma: run evaluate with --samples", None))
            continue
        for key, (lo, hi) in WINDOWS.items():
            k = key[-1]
            lines.append(_line(f"{field}: source pixels with z <= {k} within {lo:.2f}-{hi:.2f} (hard)",
                               f"{u[key]:.4f} of {u['source_pixels']} (all pixels {u[key + '_all']:.4f})",
                               lo <= u[key] <= hi))
        ranking = ", ".join("-" if r is None else f"{r:.2f}" for r in u["ranking"])
        lines.append(_line(f"{field}: top tenth of sigma has >= {RANKING} x the lower half's mean error, per "
                           "brightness quintile (hard)", ranking,
                           u["ranking_min"] is not None and u["ranking_min"] >= RANKING))
    return lines


def _source_lines(summary, model):
    lines = []
    for field in FIELDS:
        rows = summary["fields"][field]
        mine = rows[model].get("trust")
        wiener = next((r.get("trust") for n, r in rows.items() if n.startswith("Wiener ")), None)
        if not mine or not wiener:
            lines.append(_line(f"{field}: trusted sources", "no p_detect: run evaluate with --samples", None))
            continue
        n = mine["n_sources"]
        lines.append(_line(f"{field}: spurious among p_detect >= 0.9 no higher than Wiener's plain spurious",
                           f"{mine['spurious_confident']}/{n} vs {wiener['spurious']}/{n}",
                           mine["spurious_confident"] <= wiener["spurious"]))
        lines.append(_line(f"{field}: completeness (p_detect >= 0.9) at least Wiener's",
                           f"{mine['complete_confident']} vs {wiener['complete']} of {n}",
                           mine["complete_confident"] >= wiener["complete"]))
    rows = summary["fields"]["val"]
    rl = next(n for n in rows if n.startswith("RL "))
    lines.append(_line("val: spurious no higher than RL's (checkpoint rule)",
                       f"{rows[model]['n_spurious']}/{rows[model]['n_sources']} vs {rows[rl]['n_spurious']}",
                       rows[model]["n_spurious"] <= rows[rl]["n_spurious"]))
    return lines


def _pixel_lines(summary, model):
    lines = []
    has_bm3d = any(m.startswith("BM3D ") for m in summary["methods"])
    names = [n for n, img in summary["images"].items() if img["field"] in ("other_sky", "simulated")]
    names += [n for n in summary["images"] if n == "reprojected_sdss_i"]
    for name in names:
        rows = summary["images"][name]["methods"]
        peers = _peers(rows)
        best = max(peers, key=lambda n: peers[n]["ssim"])
        lines.append(_line(f"{name}: SSIM at least the best of RL, Wiener{', BM3D' if has_bm3d else ''}",
                           f"{rows[model]['ssim']:.4f} vs {best} {peers[best]['ssim']:.4f}",
                           rows[model]["ssim"] >= peers[best]["ssim"]))
        fwhm = summary["images"][name].get("star_fwhm") or {}
        rl = next(n for n in rows if n.startswith("RL "))
        if fwhm.get(model) is None or fwhm.get(rl) is None:
            lines.append(_line(f"{name}: star FWHM no larger than RL's", "fewer than 5 resolution stars", None))
        else:
            lines.append(_line(f"{name}: star FWHM no larger than RL's", f"{fwhm[model]:.2f} vs {fwhm[rl]:.2f} px "
                               f"(ORI {fwhm['ORI']:.2f})", fwhm[model] <= fwhm[rl]))
    for field in ("val", "other_sky", "simulated"):
        rows = summary["fields"][field]
        rivals = {n: r for n, r in rows.items() if not n.startswith("SR ")}
        for key in ("mse", "flux_err"):
            best = min(rivals, key=lambda n: rivals[n][key])
            lines.append(_line(f"{field}: {key} below every other row", f"{rows[model][key]:.4g} vs {best} "
                               f"{rivals[best][key]:.4g}", rows[model][key] < rivals[best][key]))
    if not has_bm3d:
        lines.append(_line("BM3D rows", "bm3d not installed: the peers extra", None))
    return lines


def check(summary, *, model):
    head = ["| floor | numbers | met |", "|---|---|---|"]
    return "\n".join(["### Uncertainty", "", *head, *_uncertainty_lines(summary, model), "",
                      "### Sources", "", *head, *_source_lines(summary, model), "",
                      "### Pixels and sharpness", "", *head, *_pixel_lines(summary, model)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("summary", help="summary.json of evaluate with --samples on val, other_sky, simulated")
    parser.add_argument("--model", default=None, help="the default model's row [the first SR row with the step]")
    args = parser.parse_args()
    summary = json.load(open(args.summary))
    model = args.model or next(m for m in summary["methods"] if m.startswith("SR ") and not m.endswith("(no DC)"))
    print(f"Trust floors for {model!r} ({args.summary}):\n")
    print(check(summary, model=model))


if __name__ == "__main__":
    main()
