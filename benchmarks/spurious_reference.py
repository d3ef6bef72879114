"""bench-v1's spurious count under two reference lists: the benchmark's, and ORI's every peak.

    python benchmarks/spurious_reference.py [--field val] [--model default] [--model RUN/best.pt] [-o OUT.md]

bench-v1 calls a restoration source spurious when no ORI reference peak lies within 3 px; its text asks
for ORI's *every* significant peak (DAOStarFinder, 5 std, shape limits off). photutils 3.0 changed
DAOStarFinder's ``min_separation`` default from 0 to 2.5 x fwhm (10 px here), which drops a peak within
10 px of another from that list (and from the detections, as in the benchmark's own reference figures,
which photutils 3.0 computed). This prints, per image, the reference list's length both ways and each
method's spurious count against each (the detections unchanged), so a spurious figure can be told apart
from real ORI sources the benchmark's list leaves out.
"""

import argparse
import os
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from _report import emit

from astrosr import baselines, metrics
from astrosr.checkpoint import load_model
from astrosr.evaluate import load_sources
from astrosr.manifest import load_manifest
from astrosr.psf import BENCH_V1_PSF
from astrosr.restore import restore_image
from astrosr.scoring import degraded


def every_peak(ref: metrics.Reference) -> np.ndarray:
    """ORI's 5-std peaks with shape limits off and no minimum separation: ``(n, 2)`` ``(x, y)``."""
    return metrics.find_sources(ref.ori - ref.median, metrics.REFERENCE_SIGMA * ref.std, margin=None,
                                shape_limits=False, min_separation=0)


def spurious(ref: metrics.Reference, peaks: np.ndarray, image: np.ndarray) -> tuple[int, int]:
    """Spurious sources of ``image`` against the benchmark's reference list and against ``peaks``."""
    found = metrics.detected(ref, image)
    if not len(found):
        return 0, 0
    far = cKDTree(peaks).query(found)[0] > metrics.MATCH_RADIUS if len(peaks) else np.ones(len(found), bool)
    return int(np.count_nonzero(~ref.near_reference(found))), int(np.count_nonzero(far))


def injected(blu: np.ndarray, ref: metrics.Reference, peaks: np.ndarray, kernel: np.ndarray, *, n: int = 20,
             seed: int = 0) -> tuple[np.ndarray, int]:
    """BLU with up to ``n`` PSF-shaped stars of peak 20 std on blank sky (bench-v1's sanity check, section 5).

    Positions: seeded draws at least 15 px from every ORI peak, each other and the edge; returns the image
    and how many stars found room.
    """
    rng = np.random.default_rng(seed)
    star = kernel / kernel.max() * 20.0 * ref.std
    half = kernel.shape[0] // 2
    out, placed = blu.copy(), []
    tree = cKDTree(peaks) if len(peaks) else None
    ny, nx = blu.shape
    for _ in range(2000):
        if len(placed) == n:
            break
        x, y = rng.integers(15 + half, nx - 15 - half), rng.integers(15 + half, ny - 15 - half)
        if (tree is not None and tree.query([x, y])[0] < 15) or any(np.hypot(x - a, y - b) < 15 for a, b in placed):
            continue
        if not np.isfinite(out[y - half : y + half + 1, x - half : x + half + 1]).all():
            continue
        out[y - half : y + half + 1, x - half : x + half + 1] += star
        placed.append((x, y))
    return out, len(placed)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--field", action="append", help="bench-v1 field (repeatable) [val]")
    parser.add_argument("--model", action="append", help="model (repeatable) [default]")
    parser.add_argument("--manifest", default="data_manifests/bench_v1.yaml")
    parser.add_argument("-o", "--out", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    fields, models = args.field or ["val"], args.model or ["default"]
    kernel = BENCH_V1_PSF.kernel()
    fwhm = BENCH_V1_PSF.fwhm_px(kernel)
    # a checkpoint is labelled by its file name (name the file after its run)
    loaded = {f"SR {Path(m).stem if Path(m).suffix else m}": load_model(m)[0] for m in models}
    methods = ["BLU", "BLU + injected stars", "Wiener b=0.1", "RL n=20", *loaded]
    rows, totals = [], {}
    for path, field in load_sources(fields=fields, manifest=load_manifest(args.manifest),
                                    data_dir=os.environ.get("ASTROSR_DATA_DIR")):
        _, ref, blu = degraded(path, kernel)
        peaks = every_peak(ref)
        with_stars, n_injected = injected(blu, ref, peaks, kernel)
        images = {"BLU": blu, "BLU + injected stars": with_stars, "Wiener b=0.1": baselines.wiener(blu, kernel),
                  "RL n=20": baselines.richardson_lucy(blu, kernel),
                  **{label: restore_image(blu, model, psf_kernel=kernel, psf_fwhm=fwhm).sr
                     for label, model in loaded.items()}}
        counts = {m: spurious(ref, peaks, images[m]) for m in methods}
        for m, (a, b) in counts.items():
            ta, tb, tn = totals.get((field, m), (0, 0, 0))
            totals[(field, m)] = (ta + a, tb + b, tn + ref.n_sources)
        rows.append(f"| {Path(path).name} ({field}) | {ref.n_sources} | {len(ref.reference_xy)} / {len(peaks)} | "
                    f"{n_injected} | "
                    + " | ".join(f"{a} / {b}" for a, b in counts.values()) + " |")
    for field in fields:
        if (field, methods[0]) in totals:
            n = totals[(field, methods[0])][2]
            rows.append(f"| **{field}** | {n} | | | " + " | ".join(
                f"{totals[(field, m)][0]}/{n} / {totals[(field, m)][1]}/{n}" for m in methods) + " |")
    emit("Spurious sources against the benchmark's reference list / against ORI's every peak (min_separation 0); "
         "bench-v1 degradation (FWHM 4), detections as bench-v1's",
         ["image", "ORI 10-sigma sources", "reference peaks: benchmark / every", "stars injected", *methods], rows,
         args.out)


if __name__ == "__main__":
    main()
