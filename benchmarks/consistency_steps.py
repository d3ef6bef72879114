"""How many Landweber steps should the data-consistency step take? Judged on bench-v1's val field only.

    python benchmarks/consistency_steps.py --model astrosr/weights/default.safetensors --data-dir ../shared/data/fits

Restores each val image once without the step, then applies k = 0 (none), 1, 2, 3 closed-form steps
and prints the bench-v1 scores of each.
"""

import argparse
from pathlib import Path

from astrosr import metrics
from astrosr.checkpoint import load_model
from astrosr.psf import moffat_psf
from astrosr.scoring import degraded as _degraded
from astrosr.restore import consistency_step, restore_image

VAL = ("M13_blue_0005.fits", "reprojected_sdss_i.fits")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data-dir", type=Path, required=True)
    args = parser.parse_args()
    kernel = moffat_psf(4.0, beta=3.0)
    model, _ = load_model(args.model)
    print("| image | k | SSIM | MSE | flux err | spurious |\n|---|---|---|---|---|---|")
    for name in VAL:
        _, ref, blu = _degraded(args.data_dir / name, kernel)  # bench-v1, exactly as evaluate scores it
        raw = restore_image(blu, model, psf_kernel=kernel, consistency=False).sr
        for k in (0, 1, 2, 3):
            sr = raw if k == 0 else consistency_step(raw, blu, kernel, k=k)
            s = metrics.summarise([metrics.score(ref, sr)]).to_dict()
            flux = "n/a" if s["flux_err"] is None else f"{s['flux_err']:.3f}"
            spur = "n/a" if s["spurious_frac"] is None else f"{s['spurious_frac']:.3f}"
            print(f"| {name} | {k} | {s['ssim']:.4f} | {s['mse']:.3e} | {flux} | {spur} |")


if __name__ == "__main__":
    main()
