"""``astrosr evaluate``: bench-v1 scores of models beside BLU and the classical baselines.

:class:`EvaluateOptions` says what is scored (fields or images, models, the
true PSF, draws); :func:`evaluate` scores every image
(:func:`astrosr.scoring.score_image`) and writes the report
(:mod:`astrosr.evaluate_report`). The heavy modules are imported when a run
starts, so the CLI's ``-h`` stays fast.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .config import check_device, check_options, option, replace
from .errors import ConfigError, InputError
from .files import make_dir
from .progress import ProgressCallback, report
from .psf import BENCH_V1_PSF, PSF

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from .manifest import Manifest

__all__ = ["BENCH_FIELDS", "EvaluateOptions", "evaluate", "load_sources"]

BENCH_FIELDS = ("train", "val", "other_sky", "simulated")
IMAGES_FIELD = "images"

log = logging.getLogger(__name__)


def _manifest(manifest, *, required):
    """The loaded manifest: required with fields, else only if its file exists (PSF names)."""
    from .manifest import Manifest, load_manifest

    if isinstance(manifest, Manifest):
        return manifest
    if manifest is None or not (required or Path(manifest).is_file()):
        if required:
            raise ConfigError("fields: need a manifest (e.g. data_manifests/bench_v1.yaml)")
        return None
    return load_manifest(manifest)


def load_sources(*, fields: Sequence[str] | None = None, images: Sequence[str | os.PathLike] | None = None,
                 manifest: Manifest | None = None,
                 data_dir: str | os.PathLike | None = None) -> list[tuple[Path, str]]:
    """The images to score as ``[(path, field)]``.

    Parameters
    ----------
    fields : list of str, optional
        Manifest fields; ``'all'`` means every bench-v1 field in the manifest.
    images : list of path, optional
        Arbitrary FITS files (field ``'images'``); exclusive with ``fields``.
    manifest : Manifest, optional
        Needed with ``fields``.
    data_dir : path, optional
        Where the manifest's files are (default ``$ASTROSR_DATA_DIR``).

    Returns
    -------
    list of (Path, str)
        Each image and its field: images in the order given; fields one
        after the other, each in the manifest's order.

    Raises
    ------
    ConfigError
        Neither or both of ``fields`` and ``images``, or ``fields`` without a manifest.
    InputError
        A missing image file.
    DataError
        A manifest file missing from ``data_dir`` or with the wrong sha256.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from astrosr.evaluate import load_sources
    >>> image = Path(tempfile.mkdtemp()) / "M51.fits"
    >>> _ = image.write_bytes(b"")  # only its existence is checked here
    >>> load_sources(images=[image]) == [(image, "images")]
    True
    >>> load_sources(images=[image], fields=["val"])
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: fields, images: give exactly one of them

    bench-v1's fields, from the manifest and the downloaded files:

    >>> from astrosr.manifest import load_manifest
    >>> manifest = load_manifest("data_manifests/bench_v1.yaml")  # doctest: +SKIP
    >>> load_sources(fields=["val"], manifest=manifest, data_dir="data/fits")  # doctest: +SKIP
    [(PosixPath('data/fits/M13_blue_0005.fits'), 'val'), (PosixPath('data/fits/reprojected_sdss_i.fits'), 'val')]
    """
    from .manifest import resolve

    if bool(fields) == bool(images):
        raise ConfigError("fields, images: give exactly one of them")
    if images:
        missing = [str(p) for p in images if not Path(p).is_file()]
        if missing:
            raise InputError(f"{missing[0]}: image file not found")
        return [(Path(p), IMAGES_FIELD) for p in images]
    if manifest is None:
        raise ConfigError("fields: need a manifest (e.g. data_manifests/bench_v1.yaml)")
    wanted = []
    for f in fields:
        wanted.extend([x for x in BENCH_FIELDS if x in manifest.fields] if f == "all" else [f])
    return [(Path(p), f) for p, f in resolve(manifest, data_dir, list(dict.fromkeys(wanted)))]


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything that decides an evaluate run: the library argument, the pipeline's ``evaluate:`` keys and the CLI flags.

    Parameters
    ----------
    fields : list of str
        bench-v1 fields (train, val, other_sky, simulated, or all); exclusive with ``images``.
    images : list of str
        Arbitrary FITS images instead of fields (field ``'images'``).
    models : list of str
        Checkpoints or model files (or ``'default'``); each gives an SR row
        with the data-consistency step and one without. Empty: BLU,
        Richardson-Lucy and Wiener only.
    manifest : str or None
        Data manifest of the fields (e.g. ``data_manifests/bench_v1.yaml``).
    data_dir : str or None
        Directory of the manifest's files (default ``$ASTROSR_DATA_DIR``).
    psf : PSF
        The true PSF: the degradation and every PSF-aware method (default bench-v1's).
    consistency : bool
        False drops the rows with the data-consistency step.
    threads : int
        torch threads (0: torch's default; recorded either way).
    device : {'auto', 'cpu', 'cuda'} or 'cuda:N'
        torch device of the models (auto: a GPU when present, as in deblur and train).
    panels : int
        Tiles per image in the PNG panels.
    hdu : int or str or None
        HDU index or EXTNAME of every image (default: the first 2-D image).
    plane : int or None
        Plane of a 3-D cube.
    samples : int
        Posterior draws per model and image (0: off; 16 is the trust issue's
        N). With N > 0 each model that has a ``sample`` method draws N
        restorations of each SR row's path (through the consistency step for
        the with-step row): their std times the model's calibration is sigma,
        and the rows get the coverage of the truth by sigma, sigma's ranking
        of errors (:mod:`astrosr.uncertainty`) and, with the step, the
        sources the draws agree on (``p_detect``). The SR rows' s/Mpix do not
        include the draws.
    peers : bool
        Score BM3D too when the optional ``bm3d`` package is installed
        (about a minute per megapixel, cached in OUT).

    Examples
    --------
    >>> from astrosr.config import replace
    >>> from astrosr.evaluate import EvaluateOptions
    >>> options = EvaluateOptions(images=["M51.fits"], models=[])  # BLU, Richardson-Lucy and Wiener only
    >>> options.fields, options.psf.describe()
    ([], 'Moffat FWHM=4px beta=3 41x41')
    >>> replace(options, samples=4).samples
    4
    >>> EvaluateOptions(fields=["test"])
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: fields: expected train, val, other_sky, simulated or all, got 'test'
    """

    fields: list[str] = option(default_factory=list, flag="--field",
                               help="bench-v1 field to score: train, val, other_sky, simulated or all (repeatable).")
    images: list[str] = option(default_factory=list, help="Score these FITS images instead (repeatable).")
    models: list[str] = option(default_factory=lambda: ["default"], flag="--model",
                               help="Checkpoint / model file, or 'default' (repeatable) [default].")
    manifest: str | None = option(None, help="Data manifest of the fields [data_manifests/bench_v1.yaml].")
    data_dir: str | None = option(None, help="Directory of the manifest's files [$ASTROSR_DATA_DIR].")
    psf: PSF = option(BENCH_V1_PSF, help="The true PSF (degradation and every PSF-aware method).")
    consistency: bool = option(True, help="Only the SR rows without the data-consistency step.")
    threads: int = option(0, minimum=0, help="CPU threads (0: torch's default) [0].")
    device: str = option("auto", help="cpu, cuda, cuda:1... or auto (a GPU when present).")
    panels: int = option(3, minimum=0, help="Figure tiles per image.")
    hdu: int | str | None = option(None, help="HDU index or EXTNAME of the images [first 2-D image].")
    plane: int | None = option(None, minimum=0, help="Plane of a 3-D cube.")
    samples: int = option(0, minimum=0, help="Posterior draws per model: coverage of the truth by sigma, its "
                                             "ranking of errors, p_detect of sources (0: off; 16 recommended).")
    peers: bool = option(True, help="Skip BM3D even when the bm3d package is installed.")

    def __post_init__(self):
        check_options(self)
        check_device(self.device)
        for f in self.fields:
            if f not in BENCH_FIELDS + ("all",):
                raise ConfigError(f"fields: expected {', '.join(BENCH_FIELDS)} or all, got {f!r}")
        if self.psf.ranged:
            key = self.psf.ranged_key()
            raise ConfigError(f"psf.{key}: {getattr(self.psf, key)} is a range; evaluate scores one PSF (ranges are for prepare)")


def evaluate(out: str | Path, options: EvaluateOptions | None = None, *, progress: ProgressCallback = None,
             **keys) -> dict:
    """Score models, BLU, Richardson-Lucy and Wiener on bench-v1 fields or given images.

    Parameters
    ----------
    out : str or Path
        Output directory (created). It receives ``report.md``, ``metrics.csv``
        (one row per tile and method), ``summary.json`` (per field and per
        image, with provenance), ``panels/<image>.png``, ``ssim_by_field.png``
        and ``baselines_choice.json`` (the cached RL/Wiener choice). Existing
        report files there are replaced; the cache is reused.
    options : EvaluateOptions, optional
        What to score and how; ``keys`` (option keys such as ``images=...``,
        ``samples=4``) override its fields.
    progress : callable, optional
        ``progress('images', done, total)`` after each image
        (:mod:`astrosr.progress`).

    Returns
    -------
    dict
        The content of ``summary.json``; :func:`astrosr.evaluate_report.tables`
        gives its rows for display.

    Examples
    --------
    >>> from astrosr.evaluate import evaluate
    >>> summary = evaluate("reports/m51", images=["M51.fits"], models=[])  # doctest: +SKIP
    >>> summary["fields"]["images"]["RL n=20"]["ssim"]  # doctest: +SKIP
    """
    options = replace(options or EvaluateOptions(), **keys) if keys or options is None else options
    o = options
    psf_by_name = o.psf.shape == "file" and not Path(o.psf.path).is_file()
    loaded = _manifest(o.manifest, required=bool(o.fields)) if o.fields or psf_by_name else None
    sources = load_sources(fields=o.fields or None, images=o.images or None, manifest=loaded, data_dir=o.data_dir)
    # torch, photutils and scikit-image load only now: a missing file is reported at once
    import torch

    from .evaluate_report import write_outputs
    from .scoring import BM3D_CACHE, SAMPLE_SEED, baseline_choice, load_models, method_names, score_image, warm_up

    if o.threads:
        torch.set_num_threads(int(o.threads))
    from .manifest import resolve_psf

    psf = resolve_psf(o.psf, loaded, o.data_dir)
    from .checkpoint import resolve_device

    device = resolve_device(o.device)  # a device this machine lacks is an error before any work
    loaded_models = load_models(o.models, device)
    kernel = psf.kernel()
    psf_fwhm = psf.fwhm_px(kernel)
    out = Path(out)
    created = not out.exists()
    make_dir(out)
    try:
        results = []
        report(progress, "images", 0, None)  # the RL/Wiener choice on val comes first
        choice = baseline_choice(loaded if o.fields else None, o.data_dir, psf, kernel, out=out, peers=o.peers)
        warm_up([(m["label"], m["model"]) for m in loaded_models], kernel, psf_fwhm, device, o.samples)
        for i, (path, field) in enumerate(sources):
            log.info("scoring %s (%s)", Path(path).name, field)
            results.append(
                score_image(path, field, kernel, [(m["label"], m["model"]) for m in loaded_models],
                             psf_fwhm, choice, o.consistency, device, o.panels, o.samples, hdu=o.hdu, plane=o.plane,
                             bm3d_cache=out / BM3D_CACHE)
            )
            report(progress, "images", i + 1, len(sources))
        _dedupe_names(results)
        methods = method_names([m["label"] for m in loaded_models], choice, consistency=o.consistency)
        return write_outputs(
            out, results, methods=methods, choice=choice, models=loaded_models, manifest=loaded, psf=psf,
            psf_fwhm=psf_fwhm, device=device,
            options={"fields": o.fields or None, "images": [str(p) for p in o.images], "consistency": o.consistency,
                     "data_dir": str(o.data_dir) if o.data_dir else None, "samples": o.samples, "peers": o.peers,
                     "sample_seed": SAMPLE_SEED if o.samples else None,
                     **({"hdu": o.hdu} if o.hdu is not None else {}), **({"plane": o.plane} if o.plane is not None else {})},
        )
    except BaseException:
        # a failed run must not leave an empty report directory behind
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _dedupe_names(results):
    names = [r.name for r in results]
    for i, r in enumerate(results):
        if names.count(r.name) > 1:
            r.name = f"{r.name}#{i}"
