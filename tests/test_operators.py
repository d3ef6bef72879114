"""operators: the Wiener filter against scikit-image, the forward blur against scipy, Landweber against restore,
the noise estimate."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.restoration import wiener

from astrosr.operators import blur, box_blur_kernel, landweber, noise_level, wiener_filter
from astrosr.psf import moffat_psf


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_wiener_channel_equals_skimage_on_the_reflect_padded_tile(rng):
    x = rng.random((70, 90))
    kernel = moffat_psf(4.0)
    ours = wiener_filter(torch.tensor(x)[None, None], torch.tensor(kernel)[None], balance=0.1)[0, 0].numpy()
    expected = wiener(np.pad(x, 20, mode="reflect"), kernel, balance=0.1, clip=False)[20:-20, 20:-20]
    np.testing.assert_allclose(ours, expected, atol=1e-10)


def test_wiener_filter_of_one_broadcast_psf_equals_the_per_tile_filter(rng):
    x = torch.tensor(rng.random((3, 1, 48, 56)), dtype=torch.float32)
    kernel = torch.tensor(moffat_psf(4.0), dtype=torch.float32)
    shared = wiener_filter(x, kernel.expand(3, *kernel.shape))  # one cached transfer function
    per_tile = wiener_filter(x, torch.stack([kernel.clone() for _ in range(3)]))
    np.testing.assert_allclose(shared.numpy(), per_tile.numpy(), atol=1e-6)


def test_blur_is_the_edge_extended_convolution_then_block_average(rng):
    x = rng.random((64, 80))
    k = moffat_psf(3.0, size=21)
    expected = ndimage.convolve(x, k, mode="nearest")
    ours = blur(torch.tensor(x)[None, None], torch.tensor(k)[None])[0, 0].numpy()
    np.testing.assert_allclose(ours, expected, atol=1e-12)
    two = blur(torch.tensor(x)[None, None], torch.tensor(k)[None], scale=2)[0, 0].numpy()
    np.testing.assert_allclose(two, expected.reshape(32, 2, 40, 2).mean(axis=(1, 3)), atol=1e-12)


def test_noise_level_estimates_gaussian_std(rng):
    x = torch.tensor(rng.normal(3.0, 0.2, (2, 1, 128, 128)))
    np.testing.assert_allclose(noise_level(x).numpy(), 0.2, rtol=0.05)


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_box_blur_kernel_keeps_unit_sum_and_odd_sides(scale):
    psf = torch.tensor(moffat_psf(4.0), dtype=torch.float64)[None]
    k = box_blur_kernel(psf, scale)
    assert k.shape[-1] % 2 == 1 and k.shape[-1] >= psf.shape[-1] + scale - 1
    assert k.sum().item() == pytest.approx(1.0, abs=1e-12)
    if scale == 1:
        assert torch.equal(k, psf)


@pytest.mark.parametrize("scale", [1, 2])
def test_landweber_is_the_whole_images_consistency_step_away_from_the_edges(rng, scale):
    from astrosr.degrade import block_average, convolve_extend
    from astrosr.restore import consistency_step

    kernel = moffat_psf(3.0, size=15)
    truth = rng.random((96, 96))
    blu = block_average(convolve_extend(truth, kernel), scale) + rng.normal(0, 0.01, (96 // scale, 96 // scale))
    x0 = truth + rng.normal(0, 0.1, truth.shape)  # a restoration that missed
    expected = consistency_step(x0, blu, kernel, scale=scale)
    ours = landweber(torch.tensor(x0)[None, None], torch.tensor(blu)[None, None], torch.tensor(kernel)[None],
                     scale=scale)[0, 0].numpy()
    inside = (slice(24, -24),) * 2  # the edges are extended differently
    assert np.abs(expected - x0)[inside].mean() > 0.01  # the step does move the restoration
    np.testing.assert_allclose(ours[inside], expected[inside], atol=1e-5)
