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


def test_default_models_sigma_covers_a_simulated_field_and_ranks_its_errors(tmp_path):
    """A field of the development seeds (500-999): the shipped sigma, scaled as shipped, covers it."""
    import torch

    from astrosr.metrics import reference
    from astrosr.simulate import simulate_fields
    from astrosr.uncertainty import coverage, pixel_errors, sigma_ranking

    path = simulate_fields(tmp_path, n=1, seed=500, size=256)[0]
    ori = read_image(path).data
    ref = reference(ori)
    kernel = moffat_psf(4.0, beta=3.0)
    blu = ndimage.convolve(ori, kernel, mode="nearest") + np.random.default_rng(0).normal(0, ref.std, ori.shape)
    model, info = load_model("default")
    torch.manual_seed(0)
    restored = restore_image(blu, model, psf_kernel=kernel, samples=8)
    # z = |SR - ORI| / sqrt(sigma^2 + s^2) written out here, not taken from astrosr.uncertainty
    span = ref.hi - ref.lo
    errors = pixel_errors(ref, restored.sr, restored.uncert)
    z = errors.err / np.sqrt(errors.sigma**2 + (ref.std / span) ** 2)
    source = errors.brightness > 5 * ref.std / span
    # wide enough to cover (z <= 2 for 90%), and not the uncalibrated v1's 0.99 within 1 sigma
    assert source.sum() > 200 and 0.6 <= np.mean(z[source] <= 1) <= 0.95 and np.mean(z[source] <= 2) >= 0.9
    assert coverage(errors.sources(), [1.0])[1.0] == np.mean(z[source] <= 1)
    assert min(r for r in sigma_ranking(errors) if r is not None) >= 1.5
    assert info["uncertainty"]["scale"] == model.uncertainty_scale
