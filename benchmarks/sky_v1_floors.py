"""sky-v1 floors, from benchmarks/results/sky_v1.json (run benchmarks/sky_v1.py first).

    python benchmarks/sky_v1_floors.py [--results benchmarks/results/sky_v1.json]

On every listed image with at least 10 resolution stars (refusing one fails it), astrosr's row:
- output FWHM within 15% of the declared output PSF's, both measured at the same stars;
- where the input PSF is at least 1.3 x the target: output FWHM at most 0.85 x the input's;
- median flux ratio within 0.97-1.03; deepest ring no lower than -2 sigma; no wider stars than the input's.
"""

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "sky_v1.json"


def floors(row, target):
    """``[(floor, value text, met)]`` of one image's astrosr row."""
    if "not_scored" in row:
        return []  # not a listed image for the floors: fewer than 10 resolution stars
    if "refused" in row:
        return [("deblurred (not refused)", row["refused"], False)]
    s = row["methods"]["astrosr"]
    out = [("output FWHM within 15% of the declared PSF's", f"{s['over_target']:.3f}", abs(s["over_target"] - 1) <= 0.15)]
    if row["input_fwhm"] >= 1.3 * row["target_rendered"]:
        out.append(("output FWHM <= 0.85 x input (input >= 1.3 x target)", f"{s['over_input']:.3f}",
                    s["over_input"] <= 0.85))
    ideal = f" (a perfect restoration: {row['ideal_flux']:.3f})" if row.get("ideal_flux") else ""
    out += [("median flux ratio 0.97-1.03", f"{s['flux_ratio']:.3f}{ideal}", 0.97 <= s["flux_ratio"] <= 1.03),
            ("deepest ring >= -2 sigma", f"{s['ring']:.1f}", s["ring"] >= -2.0),
            ("no wider stars than the input", f"{s['over_input']:.3f}", s["over_input"] <= 1.0)]
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    data = json.loads(args.results.read_text())
    print(f"# sky-v1 floors (model {data['model']}, sha256 {str(data['model_sha256'])[:16]}, "
          f"output PSF FWHM {data['target_fwhm']:g} px)\n")
    print("| image | floor | value | met |\n|---|---|---|---|")
    met = total = 0
    for row in data["images"]:
        for name, value, ok in floors(row, data["target_fwhm"]):
            print(f"| {row['image']} | {name} | {value} | {'yes' if ok else '**no**'} |")
            met, total = met + ok, total + 1
    print(f"\n{met} of {total} floors met")


if __name__ == "__main__":
    main()
