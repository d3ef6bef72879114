"""catalog: positions of known stars, p_detect of stable and unstable peaks, WCS, and deblur --catalog."""

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner

from astrosr.catalog import MATCH_RADIUS, DrawCatalog, detect
from astrosr.checkpoint import save_checkpoint
from astrosr.cli import cli
from astrosr.deblur import CATALOG_SAMPLES, DeblurOptions, catalog_path
from astrosr.errors import ConfigError
from astrosr.models import ResVAE
from astrosr.psf import PSF


def _stars(shape, xy, flux, sigma=1.2):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = np.zeros(shape)
    for (x, y), f in zip(xy, flux):
        image += f / (2 * np.pi * sigma**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    return image


def _truth(rng, n=12, size=128):
    xy = np.column_stack([np.linspace(15, size - 15, n), rng.uniform(15, size - 15, n)])
    return xy, rng.uniform(2000.0, 5000.0, n)


def test_bright_stars_are_placed_within_half_a_pixel_and_found_in_every_draw():
    rng = np.random.default_rng(0)
    xy, flux = _truth(rng, n=6)  # 20 px apart: the apertures (radius 3 x 2.8 px) do not overlap
    clean = _stars((128, 128), xy, flux)
    restored = clean + rng.normal(0.0, 1.0, clean.shape)
    cat = DrawCatalog(fwhm=2.8, background_std=1.0, median=0.0)
    cat.restored(restored)
    for _ in range(8):
        cat.draw(clean + rng.normal(0.0, 1.0, clean.shape))
    table = cat.table()
    assert len(table) == len(xy)
    order = np.argsort(table["x"])
    assert np.abs(np.column_stack([table["x"], table["y"]])[order] - xy).max() < 0.5
    assert np.all(table["p_detect"] == 1.0)
    # aperture flux (radius 3 FWHM) of a Gaussian star holds practically all of it; draws' spread is noise-sized
    assert np.allclose(np.asarray(table["flux"])[order], flux, rtol=0.02)
    assert 0 < np.median(table["flux_err"]) < 0.02 * flux.min()
    assert table.meta["draws"] == 8 and table.meta["match_radius_px"] == MATCH_RADIUS


def test_a_peak_the_draws_do_not_agree_on_gets_p_detect_near_zero():
    rng = np.random.default_rng(1)
    xy, flux = _truth(rng, n=6)
    clean = _stars((128, 128), xy, flux)
    fake = (64.0, 100.0)  # in the restoration only; each draw puts it somewhere else, or nowhere
    restored = clean + _stars((128, 128), [fake], [400.0]) + rng.normal(0.0, 1.0, clean.shape)
    cat = DrawCatalog(fwhm=2.8, background_std=1.0, median=0.0)
    cat.restored(restored)
    for k in range(10):
        moved = (fake[0] + rng.choice([-1, 1]) * rng.uniform(3, 8), fake[1] + rng.uniform(-8, 8))
        extra = _stars((128, 128), [moved], [400.0]) if k % 2 else 0.0
        cat.draw(clean + extra + rng.normal(0.0, 1.0, clean.shape))
    table = cat.table()
    p = {(round(x), round(y)): v for x, y, v in zip(table["x"], table["y"], table["p_detect"])}
    assert p[(64, 100)] <= 0.1
    assert sum(v == 1.0 for v in p.values()) == len(xy)


def test_detect_finds_nothing_in_pure_noise():
    noise = np.random.default_rng(2).normal(0.0, 1.0, (128, 128))
    assert detect(noise, fwhm=2.5, threshold=10.0, median=0.0).shape == (0, 2)


def test_sky_positions_are_astropys_wcs_of_the_pixel_positions():
    rng = np.random.default_rng(3)
    xy, flux = _truth(rng, n=5)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval, wcs.wcs.crpix, wcs.wcs.cdelt = [150.1, 2.2], [64.0, 64.0], [-1e-4, 1e-4]
    cat = DrawCatalog(fwhm=2.8, background_std=1.0, median=0.0)
    cat.restored(_stars((128, 128), xy, flux))
    table = cat.table(wcs)
    sky = wcs.pixel_to_world(np.asarray(table["x"]), np.asarray(table["y"]))
    assert np.allclose(table["ra"], sky.ra.deg, atol=1e-10) and np.allclose(table["dec"], sky.dec.deg, atol=1e-10)
    assert table["ra"].unit == "deg" and "ICRS degrees" in table.meta["coordinates"]
    assert np.all(np.isnan(table["p_detect"]))  # no draws: no p_detect


def test_draws_before_the_restoration_are_an_error():
    with pytest.raises(RuntimeError, match="restored\\(\\) comes before the draws"):
        DrawCatalog(fwhm=2.0, background_std=1.0, median=0.0).draw(np.zeros((8, 8)))


def test_deblur_catalog_writes_an_ecsv_beside_the_output_with_the_draws_of_uncert(tmp_path):
    rng = np.random.default_rng(4)
    xy, flux = _truth(rng, n=8)
    image = 50.0 + _stars((128, 128), xy, 5 * flux, sigma=1.7) + rng.normal(0.0, 1.0, (128, 128))
    header = WCS(naxis=2)
    header.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    header.wcs.crval, header.wcs.crpix, header.wcs.cdelt = [10.0, -5.0], [64.0, 64.0], [-2e-4, 2e-4]
    src = tmp_path / "field.fits"
    fits.writeto(src, image.astype(np.float32), header.to_header())
    model = ResVAE(width=4, levels=2)
    weights = tmp_path / "identity.pt"
    save_checkpoint(weights, {"model": "resvae", "model_config": model.config, "state_dict": model.state_dict(),
                              "psf": PSF().to_dict()})
    result = CliRunner().invoke(cli, ["deblur", str(src), "-o", str(tmp_path / "out"), "--model", str(weights),
                                      "--psf-fwhm", "3", "--target-fwhm", "0", "--ignore-psf-check", "--catalog",
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "out" / "field_deblur.fits"
    table = Table.read(catalog_path(out), format="ascii.ecsv")
    with fits.open(out) as hdul:
        assert hdul[0].header["ASRSAMP"] == CATALOG_SAMPLES == table.meta["draws"]
        assert "UNCERT" in hdul
        sky = WCS(hdul[0].header).pixel_to_world(np.asarray(table["x"]), np.asarray(table["y"]))
    assert len(table) == len(xy)
    order = np.argsort(table["x"])
    assert np.abs(np.column_stack([table["x"], table["y"]])[order] - xy).max() < 0.5
    assert np.allclose(table["ra"], sky.ra.deg) and np.all(table["p_detect"] >= 0.9)
    assert table.meta["image"] == out.name and table.meta["aperture_radius_px"] > 0


def test_catalog_with_a_psf_grid_is_a_config_error():
    with pytest.raises(ConfigError, match="catalog: not available with psf_grid > 1"):
        DeblurOptions(catalog=True, psf_grid=2)


def test_columns_carry_their_units_and_the_metadata_says_when_there_is_no_sky_position():
    import astropy.units as u

    rng = np.random.default_rng(4)
    xy, flux = _truth(rng, n=5)
    cat = DrawCatalog(fwhm=2.8, background_std=1.0, median=0.0)
    cat.restored(_stars((128, 128), xy, flux))
    table = cat.table(None, bunit="MJy/sr")
    assert table["x"].unit == u.pix and table["y"].unit == u.pix
    # a sum of per-area values is not in that unit: said in the metadata, not put on the column
    assert table["flux"].unit is None and "pixel values in BUNIT 'MJy/sr'" in table.meta["flux"]
    assert "ra" not in table.colnames and "no celestial WCS: no ra, dec" in table.meta["coordinates"]


def test_a_catalog_without_sources_keeps_its_sky_columns():
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval, wcs.wcs.crpix, wcs.wcs.cdelt = [150.1, 2.2], [64.0, 64.0], [-1e-4, 1e-4]
    cat = DrawCatalog(fwhm=2.8, background_std=1.0, median=0.0)
    cat.restored(np.zeros((128, 128)))
    table = cat.table(wcs)
    assert len(table) == 0 and {"ra", "dec"} <= set(table.colnames) and "ICRS degrees" in table.meta["coordinates"]
