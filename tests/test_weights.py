"""The shipped default model: loads offline from the package and restores a real tile better than BLU."""

import json

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

from astrosr.checkpoint import DEFAULT_WEIGHTS, load_model
from astrosr.psf import moffat_psf
from astrosr.fits_io import read_image
from astrosr.restore import restore_image


def test_default_weights_load_with_their_shipped_config():
    config = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    model, info = load_model("default")
    assert info["model"] == config["model"] == "resvae"
    assert info["model_config"] == config["model_config"]
    assert DEFAULT_WEIGHTS.stat().st_size < 5e6


def test_default_model_restores_a_real_tile_better_than_blu(data_dir):
    # bench-v1 degradation written out independently: scipy's edge-extended convolution, rng(0) noise
    ori = read_image(data_dir / "M51.fits").data[192:448, 192:448]
    kernel = moffat_psf(4.0, beta=3.0)
    from astropy.stats import sigma_clipped_stats

    _, _, std = sigma_clipped_stats(ori, sigma=3, maxiters=5)
    blu = ndimage.convolve(np.nan_to_num(ori), kernel, mode="nearest") + np.random.default_rng(0).normal(0, std, ori.shape)
    model, _ = load_model("default")
    sr = restore_image(blu, model, psf_kernel=kernel).sr
    lo, hi = np.percentile(ori, [0.5, 99.9])

    def ssim(x):
        return structural_similarity(np.clip((x - lo) / (hi - lo), 0, 1), np.clip((ori - lo) / (hi - lo), 0, 1), data_range=1.0)

    assert ssim(sr) > ssim(blu) + 0.01


def test_default_model_history_names_its_randomised_training_psfs():
    from astrosr.deblur import trained_for as _trained_for

    _, info = load_model("default")
    assert _trained_for(info) == "moffat,gaussian PSFs FWHM 2.50-5.50px, scale 1"
