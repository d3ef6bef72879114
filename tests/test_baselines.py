"""Richardson-Lucy and Wiener baselines (BENCHMARK.md 6) and the cached val choice."""

import json

import numpy as np
import pytest
from scipy import ndimage
from skimage import restoration
from skimage.metrics import structural_similarity

from astrosr import baselines, metrics
from astrosr.psf import moffat_psf
from astrosr.errors import ConfigError


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[:256, :256]
    ori = 50.0 + rng.normal(0, 1.0, (256, 256))
    for x, y, f in zip(*rng.uniform(20, 236, (2, 30)), rng.uniform(200, 3000, 30)):
        ori += f / (2 * np.pi * 1.2**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.2**2))
    psf = moffat_psf(4.0)
    blu = ndimage.convolve(ori, psf, mode="nearest") + rng.normal(0, 1.0, ori.shape)
    return ori, blu, psf


def test_richardson_lucy_is_the_bench_v1_call(scene):
    _, blu, psf = scene
    expected = restoration.richardson_lucy(blu - blu.min(), psf, num_iter=7, clip=False) + blu.min()
    assert np.array_equal(baselines.richardson_lucy(blu, psf, n=7), expected)


def test_richardson_lucy_sweep_equals_separate_runs_exactly(scene):
    _, blu, psf = scene
    sweep = baselines.richardson_lucy_sweep(blu, psf, (3, 1, 6))
    assert sorted(sweep) == [1, 3, 6]
    for n, image in sweep.items():
        assert np.array_equal(image, baselines.richardson_lucy(blu, psf, n=n)), n


def test_wiener_is_the_bench_v1_call(scene):
    _, blu, psf = scene
    assert np.array_equal(baselines.wiener(blu, psf, balance=0.03),
                          restoration.wiener(blu, psf, balance=0.03, clip=False))


def test_choose_parameters_takes_the_best_mean_val_ssim(scene):
    ori, blu, psf = scene
    ref = metrics.reference(ori)
    iters, balances = (2, 8), (0.01, 1.0)
    choice = baselines.choose_parameters([(ref, blu)], psf, iters=iters, balances=balances)

    def mean_ssim(x):
        n = lambda a: np.clip((a - ref.lo) / (ref.hi - ref.lo), 0, 1)  # noqa: E731
        return np.mean([structural_similarity(n(x)[y:y + 128, c:c + 128], n(ori)[y:y + 128, c:c + 128], data_range=1.0)
                        for y in (0, 128) for c in (0, 128)])

    rl = {k: mean_ssim(restoration.richardson_lucy(blu - blu.min(), psf, num_iter=k, clip=False) + blu.min())
          for k in iters}
    wi = {b: mean_ssim(restoration.wiener(blu, psf, balance=b, clip=False)) for b in balances}
    assert choice["rl_iters"] == max(rl, key=rl.get)
    assert choice["wiener_balance"] == max(wi, key=wi.get)
    assert choice["rl_ssim"]["8"] == pytest.approx(rl[8], rel=1e-12)
    assert choice["wiener_ssim"]["0.01"] == pytest.approx(wi[0.01], rel=1e-12)
    assert choice["source"] == "val"


def test_cached_choice_computes_once_per_key(tmp_path):
    calls = []

    def compute(value):
        def run():
            calls.append(value)
            return {"rl_iters": value}
        return run

    key = {"manifest": "m", "psf": {"fwhm": 4.0}}
    assert baselines.cached_choice(tmp_path, key, compute(20)) == ({"rl_iters": 20}, False)
    assert baselines.cached_choice(tmp_path, key, compute(99)) == ({"rl_iters": 20}, True)
    other = {"manifest": "m", "psf": {"fwhm": 5.0}}
    assert baselines.cached_choice(tmp_path, other, compute(30)) == ({"rl_iters": 30}, False)
    assert calls == [20, 30]
    assert len(json.loads((tmp_path / baselines.CACHE_NAME).read_text())) == 2


def test_cached_choice_recomputes_over_a_damaged_cache(tmp_path):
    (tmp_path / baselines.CACHE_NAME).write_text("{not json")
    choice, cached = baselines.cached_choice(tmp_path, {"k": 1}, lambda: {"rl_iters": 5})
    assert choice == {"rl_iters": 5} and not cached


def test_default_choice_says_why():
    choice = baselines.default_choice("no val images")
    assert (choice["rl_iters"], choice["wiener_balance"], choice["source"]) == (20, 0.1, "default")
    assert choice["note"] == "no val images"


def test_bad_parameters_are_config_errors(scene):
    _, blu, psf = scene
    with pytest.raises(ConfigError, match="iterations must be a positive integer, got 0"):
        baselines.richardson_lucy(blu, psf, n=0)
    with pytest.raises(ConfigError, match=r"iterations must be positive integers, got \[0\]"):
        baselines.richardson_lucy_sweep(blu, psf, (0,))
    with pytest.raises(ConfigError, match="balance must be > 0, got -1"):
        baselines.wiener(blu, psf, balance=-1)
    with pytest.raises(ConfigError, match="at least one val image"):
        baselines.choose_parameters([], psf)


# --- BM3D, behind the peers extra -------------------------------------------------------------


def test_bm3d_is_the_benchmark_call_and_restores_the_scene(scene):
    bm3d = pytest.importorskip("bm3d")
    from astrosr.degrade import percentile_limits

    ori, blu, psf = scene
    crop = (slice(64, 192), slice(64, 192))
    ori, blu = ori[crop], blu[crop]
    out = baselines.bm3d_deblur(blu, psf, noise_std=1.0, multiplier=1.0)
    # the recipe by hand: percentile scaling, reflect padding by the PSF half-width, cropped back
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    lo, hi = percentile_limits(blu)
    pad = psf.shape[0] // 2
    z = np.pad((blu - lo) / (hi - lo), pad, mode="reflect")
    expected = bm3d.bm3d_deblurring(z[:, :, None], 1.0 / (hi - lo), psf).reshape(z.shape)[pad:-pad, pad:-pad] * (hi - lo) + lo
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6 * (hi - lo))
    assert np.mean((out - ori) ** 2) < np.mean((blu - ori) ** 2)


def test_cached_bm3d_computes_once_per_image_and_settings(scene, tmp_path, monkeypatch):
    _, blu, psf = scene
    calls = []

    def fake(image, kernel, *, noise_std, multiplier):
        calls.append(multiplier)
        return image * multiplier

    monkeypatch.setattr(baselines, "bm3d_deblur", fake)
    first, seconds = baselines.cached_bm3d(tmp_path, blu, psf, noise_std=1.0, multiplier=0.7)
    again, seconds_again = baselines.cached_bm3d(tmp_path, blu, psf, noise_std=1.0, multiplier=0.7)
    other, _ = baselines.cached_bm3d(tmp_path, blu, psf, noise_std=1.0, multiplier=1.4)
    assert calls == [0.7, 1.4] and np.array_equal(first, again) and seconds_again == seconds
    assert np.allclose(other, 1.4 * blu)


def test_choose_parameters_picks_the_bm3d_multiplier_by_mean_val_ssim(scene, monkeypatch):
    ori, blu, psf = scene
    ref = metrics.reference(ori)
    # a stand-in whose best multiplier is known: it returns ORI itself at 1.4, BLU otherwise
    monkeypatch.setattr(baselines, "bm3d_deblur",
                        lambda image, kernel, *, noise_std, multiplier: ori.copy() if multiplier == 1.4 else image)
    choice = baselines.choose_parameters([(ref, blu)], psf, iters=(5,), balances=(0.1,), bm3d=True)
    assert choice["bm3d_multiplier"] == 1.4 and set(choice["bm3d_ssim"]) == {"0.5", "0.7", "1", "1.4", "2"}
    assert baselines.choose_parameters([(ref, blu)], psf, iters=(5,), balances=(0.1,))["bm3d_multiplier"] is None
