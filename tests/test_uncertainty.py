"""uncertainty: coverage against an independent count, a correct sigma gives 68%, the fitted scale, the ranking."""

import math

import numpy as np
import pytest
import torch

from astrosr import metrics
from astrosr.uncertainty import PixelErrors, calibrate, coverage, fit_scale, pixel_errors, pooled, sigma_ranking, summary


def _field(rng, shape=(256, 384)):
    """A noisy sky with bright blobs, so there are source pixels."""
    ori = rng.normal(10.0, 1.0, size=shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for y, x in rng.uniform(20, min(shape) - 20, size=(40, 2)):
        ori += 60.0 * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * 3.0**2))
    return ori


def test_a_correct_sigma_covers_68_and_95_percent_of_source_pixels():
    rng = np.random.default_rng(3)
    ori = _field(rng)
    ref = metrics.reference(ori)
    sigma = rng.uniform(0.5, 3.0, size=ori.shape)
    # SR's error against the truth has std sigma and ORI has its own noise s: against ORI, sqrt(sigma^2 + s^2)
    image = ori + np.sqrt(sigma**2 + ref.std**2) * rng.normal(size=ori.shape)
    errors = pixel_errors(ref, image, sigma)
    src = errors.sources()
    assert src.err.size > 5000
    cov = coverage(src, [1.0, 2.0])
    assert cov[1.0] == pytest.approx(0.6827, abs=0.01)
    assert cov[2.0] == pytest.approx(0.9545, abs=0.01)


def test_pixel_errors_match_an_independent_computation():
    rng = np.random.default_rng(4)
    ori = _field(rng)
    ori[200:, 300:] = np.nan  # that tile is not scored
    ref = metrics.reference(ori)
    assert len(ref.origins) == 5
    image = ori + rng.normal(0.0, 2.0, size=ori.shape)
    sigma = rng.uniform(0.5, 3.0, size=ori.shape)
    sigma[0, :10] = np.nan  # left out
    errors = pixel_errors(ref, image, sigma)
    assert errors.err.size == 5 * 128 * 128 - 10
    z, src = [], []
    for y, x in ref.origins:
        win = (slice(y, y + 128), slice(x, x + 128))
        keep = np.isfinite(sigma[win])
        z.append((np.abs(image[win] - ori[win]) / np.sqrt(sigma[win] ** 2 + ref.std**2))[keep])
        src.append((ori[win] - ref.median > 5 * ref.std)[keep])
    z, src = np.concatenate(z), np.concatenate(src)
    u = summary(errors)
    assert u["source_pixels"] == int(src.sum())
    assert u["within_1"] == pytest.approx(np.mean(z[src] <= 1), abs=1e-6)
    assert u["within_2_all"] == pytest.approx(np.mean(z <= 2), abs=1e-6)
    assert u["expected"]["1.0"] == pytest.approx(math.erf(1 / math.sqrt(2)))


def test_fit_scale_recovers_a_known_multiplier_and_centres_both_windows():
    rng = np.random.default_rng(5)
    sigma = rng.uniform(0.5, 2.0, 200_000).astype(np.float32)
    noise = np.full_like(sigma, 0.3)
    err = np.abs(rng.normal(0.0, np.sqrt((2.5 * sigma) ** 2 + noise**2))).astype(np.float32)
    errors = PixelErrors(err, sigma, noise, sigma, sigma > 0)
    scale = fit_scale(errors)
    assert 2.3 < scale < 2.6
    errors.sigma = errors.sigma * scale
    cov = coverage(errors, [1.0, 2.0])
    assert 0.64 < cov[1.0] < 0.72 and 0.92 < cov[2.0] < 0.96


def test_sigma_ranking_tells_an_informative_sigma_from_a_useless_one():
    rng = np.random.default_rng(6)
    n = 100_000
    sigma = rng.uniform(0.1, 1.0, n).astype(np.float32)
    brightness = rng.uniform(1.0, 100.0, n).astype(np.float32)
    err = np.abs(rng.normal(0.0, sigma)).astype(np.float32)
    good = PixelErrors(err, sigma, np.zeros_like(sigma), brightness, sigma > 0)
    assert min(sigma_ranking(good)) > 2.5
    useless = PixelErrors(err, rng.permutation(sigma), np.zeros_like(sigma), brightness, sigma > 0)
    assert max(sigma_ranking(useless)) < 1.1
    assert sigma_ranking(pooled([good, useless]))[0] is not None


def test_calibrate_stores_a_scale_that_centres_the_val_coverage():
    from astrosr.models import ResVAE
    from astrosr.psf import moffat_psf
    from astrosr.validation import ValImage
    from astrosr.degrade import degrade

    torch.manual_seed(0)
    model = ResVAE(width=4, levels=2, noise_head=True)
    with torch.no_grad():
        model.tail.weight.normal_(0.0, 0.05)
    model.eval()
    rng = np.random.default_rng(7)
    ori = _field(rng, (256, 256))
    kernel = moffat_psf(4.0, size=15)
    blu = degrade(ori, kernel, noise_std=1.0, rng=np.random.default_rng(0))
    image = ValImage("field", metrics.reference(ori), blu, kernel, 4.0)
    record = calibrate(model, [image], samples=4)
    assert record["samples"] == 4 and record["source_pixels"] > 0 and record["scale"] > 0
    assert abs(record["within_1"] - 0.68) < 0.08 and abs(record["within_2"] - 0.94) < 0.05
    assert getattr(model, "uncertainty_scale", 1.0) == 1.0  # the model is left as it was
