"""The shared tiling: bench-v1's grid, NaN skipping, extraction, and seamless stitching."""

import numpy as np
import pytest
from astropy.io import fits

from astrosr.errors import ConfigError
from astrosr.tiling import blend_weights, cover_origins, extract_tiles, grid_origins, map_tiles, nan_free


def test_m13_gives_8_by_10_tiles(data_dir):
    shape = fits.getdata(data_dir / "M13_blue_0001.fits").shape
    assert shape == (1040, 1392)
    origins = grid_origins(shape)
    assert len(origins) == 80
    assert {y for y, _ in origins} == set(range(0, 1024, 128)) and {x for _, x in origins} == set(range(0, 1280, 128))


def test_grid_with_stride_and_partial_tiles_dropped():
    origins = grid_origins((300, 200), tile=128, stride=64)
    assert origins == [(y, x) for y in (0, 64, 128) for x in (0, 64)]
    assert grid_origins((127, 500)) == []


def test_bolocam_keeps_only_nan_free_tiles(data_dir):
    image = fits.getdata(data_dir / "gc_bolocam_gps.fits").astype(np.float64)
    grid = grid_origins(image.shape)
    kept = nan_free(image, grid)
    assert 0 < len(kept) < len(grid)
    for y, x in grid:
        has_nan = np.isnan(image[y : y + 128, x : x + 128]).any()
        assert ((y, x) in kept) == (not has_nan)
    assert np.isfinite(extract_tiles(image, kept)).all()


def test_extract_tiles_are_the_slices(rng):
    image = rng.normal(size=(300, 260)).astype(np.float32)
    origins = [(0, 0), (172, 132), (5, 77)]
    tiles = extract_tiles(image, origins)
    assert tiles.dtype == np.float32 and tiles.shape == (3, 128, 128)
    for tile, (y, x) in zip(tiles, origins):
        np.testing.assert_array_equal(tile, image[y : y + 128, x : x + 128])


def test_cover_origins_cover_every_pixel_flush_with_the_edge():
    shape = (300, 417)
    origins = cover_origins(shape, 128, 32)
    seen = np.zeros(shape, bool)
    for y, x in origins:
        seen[y : y + 128, x : x + 128] = True
    assert seen.all()
    assert max(y for y, _ in origins) == 300 - 128 and max(x for _, x in origins) == 417 - 128
    assert cover_origins((128, 128), 128, 32) == [(0, 0)]


def test_blend_weights_positive_symmetric_flat_middle():
    w = blend_weights(128, 32)
    assert w.min() > 0 and w.max() == 1.0
    np.testing.assert_allclose(w, w[::-1, ::-1])
    np.testing.assert_allclose(w, w.T)
    assert (w[32:96, 32:96] == 1).all()
    assert (blend_weights(64, 0) == 1).all()


def test_map_tiles_identity_and_scale(rng):
    image = rng.normal(size=(300, 417))
    calls = []
    out = map_tiles(image, lambda t: t, tile=128, overlap=32, batch=5, progress=lambda *call: calls.append(call))
    np.testing.assert_allclose(out, image, rtol=0, atol=1e-12)
    n = len(cover_origins(image.shape, 128, 32))
    assert calls[-1] == ("tiles", n, n) and [c[1] for c in calls] == sorted(c[1] for c in calls)
    up = map_tiles(image, lambda t: np.stack([np.kron(x, np.ones((2, 2))) for x in t]), tile=128, overlap=32, scale=2)
    np.testing.assert_allclose(up, np.kron(image, np.ones((2, 2))), rtol=0, atol=1e-12)


def test_map_tiles_keeps_float32_outputs_float32(rng):
    image = rng.normal(size=(300, 417))
    out = map_tiles(image.astype(np.float32), lambda t: t * 2, tile=128, overlap=32)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 2 * image, rtol=0, atol=1e-5)


def test_map_tiles_blends_without_seams():
    image = np.zeros((256, 384))
    # a per-tile constant offset: blended, the jump between tiles becomes a smooth ramp
    counter = iter(range(100))
    out = map_tiles(image, lambda t: t + np.array([next(counter) for _ in t])[:, None, None], tile=128, overlap=64)
    assert np.abs(np.diff(out, axis=1)).max() < 0.2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: grid_origins((256, 256), tile=0), r"tile and stride must be >= 1, got tile=0"),
        (lambda: cover_origins((256, 256), 128, 128), r"overlap must be in \[0, tile=128\), got 128"),
        (lambda: cover_origins((100, 256), 128, 32), r"image \(100, 256\) is smaller than the tile 128"),
    ],
)
def test_tiling_errors(call, message):
    with pytest.raises(ConfigError, match=message):
        call()
