"""Writing an evaluate run: report.md, metrics.csv, summary.json and figures (the CLI prints the tables).

Kept apart from :mod:`astrosr.evaluate` (which computes) so the scoring path
stays short; every file goes through :func:`astrosr.files.atomic_path`. The
rows are bench-v1's (``benchmarks/README.md``, section Report rows and
baselines). The writers are kept together in one module because report.md,
metrics.csv and summary.json must print the same rows the same way.

Examples
--------
>>> from astrosr.evaluate_report import HEADER, fmt
>>> HEADER[:3], fmt(None, ".3f"), fmt(0.12345, ".3f")
(['tiles', 'SSIM', 'MSE'], 'n/a', '0.123')
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import uncertainty
from .baselines import BM3D_MISSING
from .files import atomic_path, sha256_file
from .metrics import P_CONFIDENT, summarise
from .provenance import hardware, versions, utc_now

if TYPE_CHECKING:  # annotations only: writing a report needs none of these at run time
    from .manifest import Manifest
    from .psf import PSF
    from .scoring import ImageResult

__all__ = ["write_outputs", "provenance", "rows", "format_row", "fmt", "HEADER", "truth_panel"]

SCHEMA = "astrosr-evaluate/1"


def provenance(
    *,
    models: Sequence[dict[str, Any]],
    manifest: Manifest | None,
    psf: PSF,
    psf_fwhm: float,
    device: Any,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Versions, hardware, inputs and date of a run (the ``provenance`` block of summary.json).

    Parameters
    ----------
    models : sequence of dict
        The loaded models (:func:`astrosr.scoring.load_models`).
    manifest : Manifest or None
    psf : PSF
        The true PSF of the run.
    psf_fwhm : float
        Its FWHM in pixels.
    device : str or torch.device
    options : dict
        The run's options, recorded as given.

    Returns
    -------
    dict

    Examples
    --------
    >>> from astrosr.psf import BENCH_V1_PSF
    >>> p = provenance(models=[], manifest=None, psf=BENCH_V1_PSF, psf_fwhm=4.0, device="cpu", options={})
    >>> p["benchmark"], p["psf"]["describe"]
    ('bench-v1', 'Moffat FWHM=4px beta=3 41x41')
    """
    return {
        "date": utc_now().isoformat(timespec="seconds"),
        "benchmark": "bench-v1",
        "versions": versions(),
        "hardware": hardware(device),
        "manifest": None if manifest is None else {
            "path": str(manifest.path), "name": manifest.name, "sha256": sha256_file(manifest.path),
        },
        "models": [
            {
                "label": m["label"],
                "path": m["path"],
                "sha256": m["info"].get("sha256"),
                "model": m["info"].get("model"),
                "model_config": m["info"].get("model_config"),
                "psf": m["info"].get("psf"),
            }
            for m in models
        ],
        "psf": {**psf.to_dict(), "describe": psf.describe(), "fwhm_px": psf_fwhm},
        "degradation": "bench-v1: whole image convolved with the PSF (edges extended, NaN as 0), "
                       "Gaussian noise at ORI's sigma-clipped std, fresh numpy default_rng(0) per image",
        "options": options,
    }


def _calibration(result, method):
    return (result.calibration or {}).get(method)


def _trust(counts):
    """Pooled source-trust counts of a row (sums over images) and their fractions of ORI's sources."""
    counts = [c for c in counts if c]
    if not counts:
        return None
    pooled = {k: sum(c[k] for c in counts) for k in counts[0]}
    n = pooled["n_sources"]
    for key in ("spurious", "spurious_confident"):
        if key in pooled:
            pooled[f"{key}_frac"] = pooled[key] / n if n else None
    return pooled


def _row(scores, seconds, megapixels, errors, trust=()):
    row = summarise(scores).to_dict()
    timed = [s for s in seconds if s is not None]
    row["s_per_mpix"] = sum(timed) / megapixels if timed and megapixels else None
    # pooled over the pixels of every image (a field's fraction of pixels, not a mean of fractions)
    errors = [e for e in errors if e is not None]
    row["uncertainty"] = uncertainty.summary(uncertainty.pooled(errors)) if errors else None
    row["trust"] = _trust(trust)
    return row


def rows(results: Sequence[ImageResult], methods: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields, images)``: report rows per field and per image, each ``{method: row dict}``.

    A field's row pools its images' tiles and sources
    (:func:`astrosr.metrics.summarise`); its s/Mpix is the method's total
    seconds over the field's total megapixels.

    Parameters
    ----------
    results : sequence of ImageResult
        :func:`astrosr.scoring.score_image` of every image.
    methods : sequence of str
        Report rows, in order (:func:`astrosr.scoring.method_names`).

    Returns
    -------
    (dict, dict)
        ``fields[field][method]`` and ``images[name]`` (with its
        ``methods[method]``), as written into summary.json.

    Examples
    --------
    >>> from astrosr.baselines import default_choice
    >>> from astrosr.psf import moffat_psf
    >>> from astrosr.scoring import method_names, score_image
    >>> from astrosr.simulate import example_field
    >>> path = example_field()
    >>> choice = dict(default_choice("example"), bm3d_multiplier=None)  # no BM3D row
    >>> result = score_image(path, "val", moffat_psf(4.0, size=9), [], 4.0, choice, True, "cpu", 1)
    >>> fields, images = rows([result], method_names([], choice))
    >>> list(fields["val"]), list(images)
    (['BLU', 'RL n=20', 'Wiener b=0.1'], ['sim_s500_000'])
    """
    fields = {}
    for field in dict.fromkeys(r.field for r in results):
        group = [r for r in results if r.field == field]
        mpix = sum(r.megapixels for r in group)
        fields[field] = {
            m: dict(_row([r.scores[m] for r in group], [r.seconds[m] for r in group], mpix,
                         [_calibration(r, m) for r in group], [(r.trust or {}).get(m) for r in group]),
                    images=[r.name for r in group])
            for m in methods
        }
    images = {}
    for r in results:
        images[r.name] = {
            "field": r.field,
            "path": r.path,
            "sha256": r.sha256,
            "shape": list(r.shape),
            "lo": r.ref.lo,
            "hi": r.ref.hi,
            "bg_median": r.ref.median,
            "bg_std": r.ref.std,
            "n_sources": r.ref.n_sources,
            "n_reference_peaks": len(r.ref.reference_xy),
            "methods": {m: _row([r.scores[m]], [r.seconds[m]], r.megapixels, [_calibration(r, m)],
                                [(r.trust or {}).get(m)])
                        for m in methods},
            "resolution_stars": r.n_stars,
            "star_fwhm": dict(r.star_fwhm or {}),
        }
    return fields, images


def fmt(value: Any, spec: str, none: str = "n/a") -> str:
    """``format(value, spec)``, or ``none`` for a missing value.

    Examples
    --------
    >>> fmt(0.043, ".3f"), fmt(None, ".3f"), fmt(None, ".2f", "-")
    ('0.043', 'n/a', '-')
    """
    if value is None:
        return none
    return format(value, spec)


def format_row(row: dict[str, Any]) -> list[str]:
    """Strings for one report row: tiles, SSIM, MSE, PSNR, flux error, spurious, s/Mpix.

    Examples
    --------
    >>> format_row({"n_tiles": 16, "ssim": 0.99512, "mse": 5.645e-06, "psnr": 54.07, "flux_err": None,
    ...             "n_sources": 0, "spurious_frac": None, "n_spurious": 0, "s_per_mpix": None})
    ['16', '0.9951', '5.645e-06', '54.07', 'n/a (0)', 'n/a (0/0)', '-']
    """
    psnr = "inf" if row["psnr"] is None and row["n_tiles"] and row["mse"] == 0 else fmt(row["psnr"], ".2f")
    flux = f"{fmt(row['flux_err'], '.3f')} ({row['n_sources']})"
    spur = f"{fmt(row['spurious_frac'], '.3f')} ({row['n_spurious']}/{row['n_sources']})"
    return [str(row["n_tiles"]), fmt(row["ssim"], ".4f"), fmt(row["mse"], ".3e"), psnr, flux, spur,
            fmt(row["s_per_mpix"], ".2f", "-")]


HEADER = ["tiles", "SSIM", "MSE", "PSNR", "flux err (n)", "spurious (k/n)", "s/Mpix"]


def _markdown_table(first, table):
    head = first + HEADER
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for keys, row in table:
        lines.append("| " + " | ".join(list(keys) + format_row(row)) + " |")
    return "\n".join(lines)


def _sharpness_lines(summary):
    """report.md's star-sharpness section: each method's median star FWHM at ORI's resolution stars."""
    images = summary["images"]
    methods = list(dict.fromkeys(m for img in images.values() for m in img.get("star_fwhm", {})))
    if not methods:
        return []
    lines = ["", "## Star sharpness", "",
             "Median FWHM (px) of a Gaussian fit at ORI's resolution stars (30-sigma, isolated, the brightest "
             "fifth dropped, the next 40; benchmarks/README.md, section Resolution): lower is sharper, ORI's is "
             "the ideal; n/a below 5 stars.", "",
             "| image | field | stars | " + " | ".join(methods) + " |", "|" + "---|" * (3 + len(methods))]
    for name, img in images.items():
        fwhm = img.get("star_fwhm", {})
        lines.append(f"| {name} | {img['field']} | {img.get('resolution_stars', 0)} | "
                     + " | ".join(fmt(fwhm.get(m), ".2f") for m in methods) + " |")
    return lines


def _calibration_lines(summary):
    """report.md's calibration section (only with samples > 0): the SR rows that have a sigma map."""
    samples = summary["provenance"]["options"].get("samples")
    if not samples:
        return []
    head = ("| {} | method | source pixels | z<=1 | z<=2 | pixels | z<=1 (all) | z<=2 (all) | sigma ranking (min) |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|")
    cell = "| {} | {} | {} | {} | {} | {} | {} | {} | {} |"

    def line(name, method, u):
        return cell.format(name, method, u["source_pixels"], fmt(u["within_1"], ".3f"), fmt(u["within_2"], ".3f"),
                           u["pixels"], fmt(u["within_1_all"], ".3f"), fmt(u["within_2_all"], ".3f"),
                           fmt(u["ranking_min"], ".2f"))

    per_field = [line(f, m, row["uncertainty"]) for f, methods in summary["fields"].items()
                 for m, row in methods.items() if row["uncertainty"] is not None]
    per_image = [line(f"{name} ({img['field']})", m, row["uncertainty"]) for name, img in summary["images"].items()
                 for m, row in img["methods"].items() if row["uncertainty"] is not None]
    lines = [
        "",
        f"## Uncertainty calibration ({samples} posterior draws)",
        "",
        f"sigma is each model's per-pixel std over {samples} posterior draws of that row's whole restoration path "
        f"(each draw through the data-consistency step for the with-step row; torch seed "
        f"{summary['provenance']['options'].get('sample_seed')} per model and image), times the model's "
        "val-calibrated scale. z = |SR - ORI| / sqrt(sigma^2 + s^2), s = ORI's sigma-clipped background std (ORI is "
        f"noisy too); source pixels: ORI - median > {uncertainty.SOURCE_SIGMA:g} s. Calibrated: 0.683 at z <= 1 and "
        "0.954 at z <= 2 (floors on source pixels: 0.60-0.76 and 0.90-0.98). Sigma ranking: within each quintile of "
        "ORI brightness among source pixels, the mean |SR - ORI| of the top tenth of sigma over that of its lower "
        "half (floor 1.5; the smallest quintile's is shown). reliability.png plots expected against observed "
        "coverage. With posterior draws the SR rows' s/Mpix do not include them.",
        "",
    ]
    if not per_field:
        return lines + ["No model here has a sample method: no calibration to report."]
    return lines + [head.format("field"), *per_field, "", head.format("image"), *per_image, *_trust_lines(summary)]


def _trust_lines(summary):
    """report.md's section on sources the draws agree on (with samples > 0)."""
    rows = []
    for field, methods in summary["fields"].items():
        wiener = next((r["trust"] for m, r in methods.items() if m.startswith("Wiener ") and r.get("trust")), None)
        for method, row in methods.items():
            t = row.get("trust")
            if not t or "confident" not in t:
                continue
            rows.append(f"| {field} | {method} | {t['spurious']}/{t['n_sources']} | {t['confident']} | "
                        f"{t['spurious_confident']}/{t['n_sources']} | {t['complete_confident']} | "
                        + (f"{wiener['spurious']}/{wiener['n_sources']} | {wiener['complete']} |" if wiener else "- | - |"))
    if not rows:
        return []
    return [
        "",
        "### Sources you can trust",
        "",
        f"p_detect: the fraction of the posterior draws in which bench-v1's detector (DAOStarFinder, FWHM "
        f"4 px, 10 sigma of ORI) finds a source within 1.5 px of the restoration's. Spurious: no ORI 5-sigma peak "
        f"within 3 px (over ORI's 10-sigma sources); complete: ORI 10-sigma sources matched within 3 px by a "
        f"source with p_detect >= {P_CONFIDENT:g}, beside the number Wiener's detections match.",
        "",
        "| field | method | spurious (all) | p_detect >= 0.9 | spurious (p >= 0.9) | complete (p >= 0.9) | "
        "Wiener spurious | Wiener complete |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *rows,
    ]


def _write_csv(path, results, methods):
    with atomic_path(path, overwrite=True) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["field", "image", "method", "tile_y", "tile_x", "ssim", "mse", "psnr"])
        for r in results:
            for m in methods:
                s = r.scores[m]
                for (y, x), ssim, mse, psnr in zip(s.origins, s.ssim, s.mse, s.psnr):
                    writer.writerow([r.field, r.name, m, y, x, repr(float(ssim)), repr(float(mse)),
                                     "inf" if np.isinf(psnr) else repr(float(psnr))])


def _write_report(path, summary, figures):
    prov = summary["provenance"]
    choice = summary["baselines"]
    hw = prov["hardware"]
    man = prov["manifest"]
    lines = [
        "# astrosr evaluate: bench-v1 report",
        "",
        f"- date: {prov['date']}; astrosr {prov['versions']['astrosr']}, torch {prov['versions']['torch']}, "
        f"photutils {prov['versions']['photutils']}, scikit-image {prov['versions']['skimage']}",
        f"- hardware: {hw['cpu']} ({hw['cpu_count']} CPUs), GPU: {hw['gpu'] or 'none'}, device {hw['device']}, "
        f"{hw['threads']} torch threads; s/Mpix is wall clock per method",
        f"- PSF (degradation and every PSF-aware method): {prov['psf']['describe']}",
        f"- manifest: {man['path'] + ' (sha256 ' + man['sha256'][:12] + ')' if man else 'none'}",
        f"- Richardson-Lucy n = {choice['rl_iters']}, Wiener b = {choice['wiener_balance']:g}: {choice['note']}",
        f"- BM3D (bm3d.bm3d_deblurring with the true PSF and noise std times {choice['bm3d_multiplier']:g}, the same "
        "choice; the optional `peers` extra, whose bm3d licence allows non-commercial use only)"
        if choice.get("bm3d_multiplier") is not None else
        f"- {'BM3D not scored (peers off)' if prov['options'].get('peers') is False else BM3D_MISSING}",
    ]
    for m in prov["models"]:
        lines.append(f"- model {m['label']}: {m['path']} ({m['model']}, sha256 {str(m['sha256'])[:12]})")
    lines += [
        "",
        "SR rows restore the whole image through the shared tiling and are then cut into bench-v1 tiles; "
        "'(no DC)' rows skip the data-consistency step. Flux error: median |F/F_ori - 1| over ORI's "
        "10-sigma sources; spurious: restoration sources with no ORI 5-sigma peak within 3 px, "
        "over ORI's 10-sigma sources (benchmarks/README.md, section Metrics).",
        "",
        "## Per field",
        "",
        _markdown_table(["field", "method"],
                        [((f, m), row) for f, methods in summary["fields"].items() for m, row in methods.items()]),
        "",
        "## Per image",
        "",
        _markdown_table(["image", "field", "method"],
                        [((name, img["field"], m), row) for name, img in summary["images"].items()
                         for m, row in img["methods"].items()]),
        *_sharpness_lines(summary),
        *_calibration_lines(summary),
        "",
        "## Figures",
        "",
    ]
    lines += [f"![{Path(f).stem}]({f})" for f in figures]
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def _save(fig, path):
    with atomic_path(path, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def _panel_figure(path, result):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from astropy.visualization import AsinhStretch, ImageNormalize

    origins = result.panels["origins"]
    tiles = result.panels["tiles"]
    if not origins:
        return False
    titles = list(tiles)
    fig, axes = plt.subplots(len(origins), len(titles), figsize=(2.4 * len(titles), 2.5 * len(origins)),
                             squeeze=False)
    for i, (y, x) in enumerate(origins):
        ori = tiles["ORI"][i]
        # shared limits from ORI's tile so every method is shown on one scale
        norm = ImageNormalize(vmin=float(np.percentile(ori, 1)), vmax=float(ori.max()), stretch=AsinhStretch(0.02))
        for j, title in enumerate(titles):
            ax = axes[i, j]
            data = tiles[title][i]
            if title.endswith(" - ORI"):
                lim = float(np.percentile(np.abs(data), 99.5)) or 1.0
                ax.imshow(data, origin="lower", cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                ax.imshow(data, origin="lower", cmap="gray", norm=norm)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"y={y} x={x}", fontsize=8)
    fig.suptitle(f"{result.name} ({result.field})", fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def _bar_chart(path, fields):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(fields)
    methods = list(next(iter(fields.values())))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(names) * len(methods) ** 0.5) + 2, 3.5))
    for k, m in enumerate(methods):
        values = [fields[f][m]["ssim"] if fields[f][m]["ssim"] is not None else 0 for f in names]
        ax.bar(np.arange(len(names)) + (k - (len(methods) - 1) / 2) * width, values, width, label=m)
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("mean SSIM (bench-v1)")
    # beside the axes: inside, it hid the tallest bars (SSIMs of all methods are close)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _reliability_figure(path, fields) -> bool:
    """Expected against observed coverage of z <= k, per field and SR row with sigma (source and all pixels)."""
    curves = [(f, m, row["uncertainty"]) for f, methods in fields.items() for m, row in methods.items()
              if row.get("uncertainty")]
    if not curves:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharey=True)
    for ax, key, title in ((axes[0], "coverage", "source pixels"), (axes[1], "coverage_all", "all pixels")):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
        for field, method, u in curves:
            levels = [k for k, v in u[key].items() if v is not None]
            ax.plot([u["expected"][k] for k in levels], [u[key][k] for k in levels], marker="o", ms=3,
                    label=f"{field}: {method}")
        ax.set_xlabel("expected coverage (Gaussian, z <= k)")
        ax.set_title(title)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("observed fraction with z <= k")
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return True


def write_outputs(
    out: str | Path,
    results: Sequence[ImageResult],
    *,
    methods: Sequence[str],
    choice: dict[str, Any],
    models: Sequence[dict[str, Any]],
    manifest: Manifest | None,
    psf: PSF,
    psf_fwhm: float,
    device: Any,
    options: dict[str, Any],
) -> dict[str, Any]:
    """Write every output file of an evaluate run into ``out``.

    ``report.md``, ``metrics.csv`` (one line per tile and method),
    ``summary.json`` and the PNG figures (``ssim_by_field.png``,
    ``panels/<image>.png``), each written atomically and replacing an
    earlier run's.

    Parameters
    ----------
    out : str or Path
        The output directory.
    results : sequence of ImageResult
        :func:`astrosr.scoring.score_image` of every image.
    methods : sequence of str
        Report rows, in order.
    choice : dict
        The RL / Wiener choice (:func:`astrosr.scoring.baseline_choice`).
    models, manifest, psf, psf_fwhm, device, options
        As :func:`provenance` records them.

    Returns
    -------
    dict
        The content of ``summary.json``.

    Examples
    --------
    >>> summary = write_outputs("reports/val", results, methods=methods, choice=choice,  # doctest: +SKIP
    ...                         models=[], manifest=None, psf=BENCH_V1_PSF, psf_fwhm=4.0, device="cpu", options={})
    >>> summary["files"][:3]  # doctest: +SKIP
    ['report.md', 'metrics.csv', 'summary.json']
    """
    out = Path(out)
    fields, images = rows(results, methods)
    summary = {
        "schema": SCHEMA,
        "methods": methods,
        "fields": fields,
        "images": images,
        "baselines": choice,
        "provenance": provenance(models=models, manifest=manifest, psf=psf, psf_fwhm=psf_fwhm, device=device,
                                 options=options),
    }
    _write_csv(out / "metrics.csv", results, methods)
    figures = []
    for r in results:
        rel = f"panels/{r.name.replace('/', '_').replace(':', '_')}.png"
        if _panel_figure(out / rel, r):
            figures.append(rel)
    if results:
        _bar_chart(out / "ssim_by_field.png", fields)
        figures.insert(0, "ssim_by_field.png")
    if _reliability_figure(out / "reliability.png", fields):
        figures.insert(1, "reliability.png")
    summary["files"] = ["report.md", "metrics.csv", "summary.json"] + figures
    with atomic_path(out / "summary.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str, allow_nan=False))
    _write_report(out / "report.md", summary, figures)
    return summary


def truth_panel(truth: str | Path, blu: str | Path, sr: str | Path) -> str:
    """ORI | BLU | SR of three FITS files side by side, one asinh stretch from ORI's percentiles: ``<sr>.png``.

    The picture of a demonstration with the truth at hand (``astrosr run``'s deblur stage with ``degrade``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from .degrade import percentile_limits
    from .fits_io import read_image, strip_fits_suffix

    images = [read_image(p).data for p in (truth, blu, sr)]
    lo, hi = percentile_limits(images[0], 0.5, 99.9)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.3))
    for ax, image, title in zip(axes, images, ("ORI (truth)", "BLU (input)", "SR (astrosr deblur)")):
        ax.imshow(np.arcsinh(10 * np.clip((image - lo) / (hi - lo), 0, 1)), origin="lower", cmap="gray")
        ax.set_title(title)
        ax.set_axis_off()
    fig.tight_layout()
    target = Path(sr).parent / f"{strip_fits_suffix(Path(sr).name)}.png"
    with atomic_path(target, overwrite=True) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return str(target)
