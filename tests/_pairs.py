"""A tiny pairs file written straight from the schema (CONTRACTS in COMMON.md), independent of prepare.

Crops of real bench-v1 images, degraded with bench-v1's PSF and noise, so
dataset/train tests exercise real sky without running the prepare stage.
"""

import json

import h5py
import numpy as np
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from scipy import ndimage

# (file, field, crop rows, crop cols)
SOURCES = [
    ("reprojected_sdss_g.fits", "train", slice(0, 384), slice(0, 512)),
    ("M13_blue_0001.fits", "train", slice(256, 512), slice(256, 512)),
    ("reprojected_sdss_i.fits", "val", slice(128, 384), slice(128, 384)),
]


def _moffat(fwhm=4.0, beta=3.0, size=41):
    gamma = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    half = size // 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    k = (1 + (x**2 + y**2) / gamma**2) ** (-beta)
    return k / k.sum()


def make_pairs(path, data_dir, *, tile=128, scale=1):
    """Write a pairs file of 12 + 4 train tiles and 4 val tiles (at ``tile`` px, ``scale``)."""
    kernel = _moffat()
    tiles, images, blus, oris = [], [], [], []
    for index, (name, field, rows, cols) in enumerate(SOURCES):
        ori = fits.getdata(data_dir / name).astype(np.float64)[rows, cols]
        _, median, std = sigma_clipped_stats(ori, sigma=3, maxiters=5)
        blu = ndimage.convolve(ori, kernel, mode="nearest") + np.random.default_rng(index).normal(0, std, ori.shape)
        if scale > 1:
            h, w = blu.shape
            blu = blu.reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
        lo, hi = np.percentile(ori, [0.5, 99.9])
        blu_lo, blu_hi = np.percentile(blu, [0.5, 99.9])
        _, _, blu_std = sigma_clipped_stats(blu, sigma=3, maxiters=5)
        images.append((name.encode(), b"0" * 64, field.encode(), *ori.shape, lo, hi, blu_lo, blu_hi,
                       np.mean(ori), median, std, blu_std, 0, -1))
        for y in range(0, ori.shape[0] - tile + 1, tile):
            for x in range(0, ori.shape[1] - tile + 1, tile):
                tiles.append((index, y, x, field.encode(), 0, 4.0, std))
                oris.append((ori[y : y + tile, x : x + tile] - lo) / (hi - lo))
                t = tile // scale
                ys, xs = y // scale, x // scale
                blus.append((blu[ys : ys + t, xs : xs + t] - lo) / (hi - lo))
    tile_dtype = [("image", "i4"), ("y", "i4"), ("x", "i4"), ("field", "S16"), ("psf_index", "i4"),
                  ("psf_fwhm", "f4"), ("noise_std", "f4")]
    image_dtype = [("path", "S256"), ("sha256", "S64"), ("field", "S16"), ("ny", "i4"), ("nx", "i4"),
                   ("lo", "f8"), ("hi", "f8"), ("blu_lo", "f8"), ("blu_hi", "f8"), ("bg_mean", "f8"),
                   ("bg_median", "f8"), ("bg_std", "f8"), ("blu_bg_std", "f8"), ("hdu", "i4"), ("plane", "i4")]
    with h5py.File(path, "w") as f:
        f.create_dataset("blu", data=np.array(blus, np.float32), chunks=(1, tile // scale, tile // scale))
        f.create_dataset("ori", data=np.array(oris, np.float32), chunks=(1, tile, tile))
        f.create_dataset("tiles", data=np.array(tiles, dtype=tile_dtype))
        f.create_dataset("images", data=np.array(images, dtype=image_dtype))
        f.create_dataset("psfs", data=kernel[None].astype(np.float32))
        f.attrs.update(schema_version=1, astrosr_version="test", scale=scale, created="2024-01-01T00:00:00Z",
                       config=json.dumps({"psf": {"shape": "moffat", "fwhm": 4.0, "beta": 3.0}}))
    return path
