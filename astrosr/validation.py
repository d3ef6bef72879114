"""Validation during training: bench-v1 scores on the pairs file's val tiles and whole val images.

Two levels, both recorded in ``metrics.csv``:

- tiles: the model restores each val tile of the pairs file alone; SR and ORI
  are mapped to ORI's bench-v1 normalisation and clipped, then per-tile SSIM
  and MSE are averaged (cheap, always available).
- images: when the val images named in the pairs file are readable (same
  sha256), each is degraded again exactly as prepare did (its recorded PSF
  and noise, ``default_rng(0)``), restored by evaluate's path
  (:func:`astrosr.restore.restore_image`, data-consistency step on) and scored
  by :mod:`astrosr.metrics`: SSIM, MSE, median flux error and spurious
  fraction. The best checkpoint is chosen on these (:func:`is_better`),
  against Richardson-Lucy's (n = 20) flux error and spurious fraction on the
  same images (:func:`rl_reference`), computed once per run.
"""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from skimage.metrics import structural_similarity

from .files import sha256_file
from .pairs import field_images

__all__ = ["tile_validation", "ValImage", "load_val_images", "rl_reference", "image_validation", "validate", "is_better",
           "describe"]


def tile_validation(model: torch.nn.Module, dataset, *, device, batch: int = 16) -> dict[str, float]:
    """``{'tile_ssim', 'tile_mse'}`` of the model's restorations of every tile of ``dataset``.

    ``dataset`` is a :class:`astrosr.dataset.PairsDataset`; each tile is
    restored alone, mapped back to the file's units, clipped to [0, 1] and
    scored against its ORI (skimage SSIM, data range 1; MSE), then averaged.
    """
    ssim, mse = [], []
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(dataset), batch):
            items = [dataset[i] for i in range(start, min(start + batch, len(dataset)))]
            blu = torch.stack([it["blu"] for it in items]).to(device)
            psf = torch.stack([it["psf"] for it in items]).to(device)
            cond = torch.stack([it["cond"] for it in items]).to(device)
            sr = model.restore(blu, psf=psf, cond=cond).float().cpu().numpy()[:, 0]
            for k, it in enumerate(items):
                i = start + k
                x = np.clip(dataset.to_stored(sr[k], i), 0.0, 1.0).astype(np.float64)
                ori = np.clip(dataset.to_stored(it["ori"][0].numpy(), i), 0.0, 1.0).astype(np.float64)
                ssim.append(structural_similarity(x, ori, data_range=1.0))
                mse.append(float(np.mean((x - ori) ** 2)))
    return {"tile_ssim": float(np.mean(ssim)), "tile_mse": float(np.mean(mse))}


class ValImage:
    """One whole val image: its bench-v1 reference, BLU, PSF kernel and FWHM."""

    def __init__(self, name, ref, blu, kernel, fwhm):
        self.name, self.ref, self.blu, self.kernel, self.fwhm = name, ref, blu, kernel, fwhm


def load_val_images(dataset, *, field: str | list[str] = "val",
                    indices: list[int] | None = None) -> tuple[list[ValImage] | None, str | None]:
    """The whole val images behind ``dataset`` (a :class:`PairsDataset`), or ``(None, reason)``.

    Returns ``(list of ValImage, None)`` when every val image can be read and
    matches its recorded sha256, else ``(None, reason)``. ``indices`` keeps
    only those rows of the images table (training images held out for
    validation): each is degraded again with its first tile's recorded PSF
    and noise level.
    """
    from . import metrics
    from .degrade import bench_v1_degrade
    from .fits_io import read_image

    records = field_images(dataset.images, field)
    if indices is not None:
        records = [r for r in records if r.index in set(indices)]
    if not records:
        return None, f"no {field} images in the pairs file"
    out = []
    for image in records:
        path = image.path
        if not path.is_file():
            return None, f"{path}: val image not found"
        if sha256_file(path) != image.sha256:
            return None, f"{path}: val image changed since prepare (sha256 differs)"
        tiles = dataset.all_tiles[dataset.all_tiles["image"] == image.index]
        if len(tiles) == 0:
            return None, f"{path}: no tiles recorded"
        kernel = dataset.psfs[tiles["psf_index"][0]].astype(np.float64)
        kernel /= kernel.sum()
        ori = read_image(path, hdu=image.hdu, plane=image.plane).data
        s = dataset.scale
        blu, _ = bench_v1_degrade(ori, kernel, noise_std=float(tiles["noise_std"][0]), scale=s)
        ori = ori[: blu.shape[0] * s, : blu.shape[1] * s]
        out.append(ValImage(path.name, metrics.reference(ori), blu, kernel, float(tiles["psf_fwhm"][0])))
    return out, None


def rl_reference(images: list[ValImage]) -> dict | None:
    """Richardson-Lucy's (n = 20) field scores on ``images``: the bar a best checkpoint must clear.

    ``{'flux_err', 'spurious', 'n_spurious', 'n_sources'}``, scored like the
    model (bench-v1's val gives 0.054 and 3/153); None for models that add
    pixels (RL restores on BLU's own grid, which bench-v1 does not score).
    """
    from . import metrics
    from .baselines import richardson_lucy

    if not images or any(im.blu.shape != im.ref.ori.shape for im in images):
        return None
    row = metrics.summarise(metrics.score(im.ref, richardson_lucy(im.blu, im.kernel)) for im in images)
    return {"flux_err": row.flux_err, "spurious": row.spurious_frac, "n_spurious": row.n_spurious,
            "n_sources": row.n_sources}


def image_validation(model: torch.nn.Module, images: list[ValImage], *, device, tile: int) -> dict[str, float]:
    """Field scores of the model on whole val images: ``{'ssim', 'mse', 'flux_err', 'spurious'}``."""
    from . import metrics
    from .restore import restore_image

    scores = []
    for image in images:
        restored = restore_image(image.blu, model, psf_kernel=image.kernel, psf_fwhm=image.fwhm, tile=tile, device=device)
        scores.append(metrics.score(image.ref, restored.sr))
    row = metrics.summarise(scores)
    return {"ssim": row.ssim, "mse": row.mse, "flux_err": row.flux_err, "spurious": row.spurious_frac}


def validate(model: torch.nn.Module, val_set, images: list[ValImage] | None, *, step: int, device,
             tile: int) -> dict:
    """One validation record ``{'step', 'tile_ssim', 'tile_mse'[, 'ssim', 'mse', 'flux_err', 'spurious']}``.

    Tile scores on ``val_set`` (a :class:`PairsDataset`), whole-image scores
    when ``images`` are given; ``{'step'}`` alone without a val set. The
    model is left in eval mode.
    """
    if val_set is None:
        return {"step": step}
    record = {"step": step, **tile_validation(model, val_set, device=device)}
    if images:
        record.update(image_validation(model, images, device=device, tile=tile))
    return record


def _num(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def is_better(record: dict, best: dict | None, *, reference: dict | None) -> bool:
    """Whether validation ``record`` beats ``best``: the checkpoint selection rule.

    With Richardson-Lucy's figures on the same val images (``reference``,
    :func:`rl_reference`), the best checkpoint has the lowest whole-image
    MSE among validations whose median flux error is no worse than RL's and
    whose spurious fraction is no higher than RL's; while none meets both,
    the lowest flux error among those meeting the spurious condition; else
    the lowest flux error. Without a reference, the lowest whole-image MSE;
    without whole-image scores the tile MSE decides; without any metric (no
    validation) the newer record wins.

    Examples
    --------
    >>> rl = {"flux_err": 0.054, "spurious": 3 / 153}
    >>> is_better({"mse": 0.01, "flux_err": 0.09, "spurious": 0.0}, {"mse": 0.02, "flux_err": 0.05, "spurious": 0.0},
    ...           reference=rl)
    False
    >>> is_better({"tile_mse": 0.1}, {"tile_mse": 0.2}, reference=None)
    True
    """
    def scored(r):
        return r.get("mse") is not None or r.get("tile_mse") is not None

    if best is None or not (scored(record) or scored(best)):
        return True

    def at_most(value, bar):
        return bar is None or (value is not None and value <= bar)

    def key(r):
        mse = _num(r.get("mse"))
        if mse is None:
            return (0, _num(r.get("tile_mse")))
        if reference is None:
            return (0, mse)
        flux, spurious = _num(r.get("flux_err")), _num(r.get("spurious"))
        clean = at_most(spurious, _num(reference.get("spurious")))
        if clean and at_most(flux, _num(reference.get("flux_err"))):
            return (0, mse)
        return (1 if clean else 2, math.inf if flux is None else flux)

    return key(record) < key(best)


def describe(record: dict) -> str:
    """Short text of a validation record for logs.

    Examples
    --------
    >>> describe({"step": 4, "tile_mse": 0.0123456789})
    '{"step": 4, "tile_mse": 0.01235}'
    """
    return json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in record.items()})
