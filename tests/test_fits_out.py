"""fits_out: output names, header cleaning, WCS rescaling, provenance cards, the skip check, the writer."""

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from astrosr import __version__
from astrosr.errors import InputError
from astrosr.fits_io import FitsImage
from astrosr.fits_out import (
    add_provenance,
    clean_header,
    existing_matches,
    output_path,
    rescale_wcs,
    wcs_cards,
    write_output,
)

SHA = "0123456789abcdef" * 4
PSF_ID = "Moffat FWHM=4px beta=3 41x41"


def _sky_header():
    """A TAN-SIP header with rotation (CD matrix), second- and third-order SIP terms and BUNIT."""
    header = fits.Header()
    header.update({
        "CTYPE1": "RA---TAN-SIP", "CTYPE2": "DEC--TAN-SIP", "CRVAL1": 202.47, "CRVAL2": 47.19,
        "CRPIX1": 40.5, "CRPIX2": 33.0, "CD1_1": -2.1e-4, "CD1_2": 3.0e-5, "CD2_1": 2.8e-5, "CD2_2": 2.0e-4,
        "A_ORDER": 3, "B_ORDER": 3, "A_2_0": 2e-6, "A_1_1": -1e-6, "B_0_2": 1.5e-6, "A_3_0": 4e-9, "B_1_2": -3e-9,
        "RADESYS": "ICRS", "EQUINOX": 2000.0, "BUNIT": "MJy/sr", "OBJECT": "M51", "TELESCOP": "test",
    })
    return header


def _provenance(header=None, *, plane=None, **overrides):
    image = FitsImage(data=None, header=fits.Header(), path=Path("/data/m51.fits"), hdu=2, plane=plane)
    values = {"image": image, "info": {"sha256": SHA, "model": "resvae", "path": "/runs/best.pt"}, "psf_id": PSF_ID,
              "trained_for": f"{PSF_ID}, scale 1", "consistency": True, "overlap": 32, "samples": 0, "scale": 1,
              "lo": 0.25, "hi": 99.5}
    values.update(overrides)
    return add_provenance(fits.Header() if header is None else header, **values)


def test_output_names_strip_every_fits_suffix():
    assert output_path("x/m51.fits.gz", "o").as_posix() == "o/m51_deblur.fits"
    assert output_path("x/m51.fz", "o", compress=True).as_posix() == "o/m51_deblur.fits.fz"
    assert output_path(Path("x/M51.FITS"), Path("o")) == Path("o/M51_deblur.fits")


def test_clean_header_drops_layout_cards_and_keeps_sky_cards_in_order():
    header = fits.Header()
    for key, value in (("SIMPLE", True), ("BITPIX", -32), ("NAXIS", 3), ("NAXIS1", 8), ("OBJECT", "M51"),
                       ("BSCALE", 1.0), ("BZERO", 0.0), ("DATAMIN", 0.0), ("DATAMAX", 5.0), ("CHECKSUM", "x"),
                       ("WCSAXES", 3), ("CTYPE1", "RA---TAN"), ("CTYPE3", "FREQ"), ("PC1_3", 0.0), ("PC3_3", 1.0),
                       ("CRVAL3", 1.4e9), ("INHERIT", True)):
        header[key] = value
    header["COMMENT"] = "kept"
    header["HISTORY"] = "kept too"
    assert list(clean_header(header)) == ["OBJECT", "WCSAXES", "CTYPE1", "CTYPE3", "PC1_3", "PC3_3", "CRVAL3",
                                          "COMMENT", "HISTORY"]
    assert list(clean_header(header, image_axes_only=True)) == ["OBJECT", "CTYPE1", "COMMENT", "HISTORY"]
    assert "DATAMIN" in header  # the input header is left alone


def test_rescale_wcs_keeps_every_sky_position_including_sip_terms():
    header = _sky_header()
    before = WCS(header)
    after = WCS(rescale_wcs(header.copy(), 3))
    ys, xs = np.mgrid[0:66:7, 0:80:9].astype(float)
    # input pixel centre p (0-based) is output position 3 (p + 1/2) - 1/2
    sky_in = before.pixel_to_world(xs, ys)
    sky_out = after.pixel_to_world(3 * (xs + 0.5) - 0.5, 3 * (ys + 0.5) - 0.5)
    assert np.abs(sky_in.separation(sky_out).arcsec).max() < 1e-6
    unchanged = _sky_header()
    assert rescale_wcs(unchanged, 1) is unchanged and unchanged["CRPIX1"] == 40.5


def test_wcs_cards_are_the_sky_cards_only():
    cards = wcs_cards(_sky_header())
    assert "OBJECT" not in cards and "BUNIT" not in cards and "TELESCOP" not in cards
    assert {"CTYPE1", "CD1_2", "A_ORDER", "A_3_0", "B_1_2", "RADESYS", "EQUINOX"} <= set(cards)


def test_provenance_cards_and_history_record_what_made_the_image():
    header = _provenance(plane=1, samples=4, consistency=False)
    assert header["ASRVERS"] == __version__ and header["ASRINPUT"] == "m51.fits" and header["ASRINHDU"] == 2
    assert header["ASRMSHA"] == SHA and header["ASRPSF"] == PSF_ID and header["ASRMODEL"] == "resvae"
    assert header["ASRCONS"] is False and header["ASRSAMP"] == 4 and header["ASROVLP"] == 32
    assert header["ASRSCALE"] == 1 and header["ASRLO"] == 0.25 and header["ASRHI"] == 99.5 and header["ASRPLANE"] == 1
    history = [str(h) for h in header["HISTORY"]]
    assert history[0].startswith(f"astrosr {__version__} deblur ") and history[0].endswith("Z")
    assert "input m51.fits HDU 2 plane 1" in history and SHA in history
    assert "model resvae from best.pt, weights sha256:" in history and f"PSF: {PSF_ID}" in history
    assert "data-consistency step off; overlap 32 px; samples 4" in history
    assert "normalised by input percentiles 0.5/99.9: 0.25 / 99.5" in history


def test_provenance_of_an_input_deblurred_before_replaces_its_cards():
    header = _provenance(_provenance(), psf_id="Gaussian FWHM=3px")
    assert list(header).count("ASRPSF") == 1 and header["ASRPSF"] == "Gaussian FWHM=3px"
    assert "ASRPLANE" not in header
    long_id = "PSF file /a/very/long/directory/name/for/a/kernel.fits sha256 0123456789abcdef"
    card = _provenance(psf_id=long_id).cards["ASRPSF"]
    assert card.value == long_id and card.comment == ""  # the value wins over its comment


def _written(tmp_path, *, compress=False, uncert=True, name="m51_deblur.fits"):
    header = _provenance(_sky_header())
    sr = np.arange(12 * 10, dtype=np.float32).reshape(12, 10)
    mask = np.zeros(sr.shape, np.uint8)
    mask[3, 4] = 1
    sr[3, 4] = np.nan
    out = tmp_path / (name + (".fz" if compress else ""))
    write_output(out, sr, header, mask, 0.5 * sr if uncert else None, compress=compress, overwrite=False)
    return out, sr, mask


@pytest.mark.parametrize("compress", [False, True])
def test_writer_puts_image_mask_and_uncert_with_the_wcs(tmp_path, compress):
    out, sr, mask = _written(tmp_path, compress=compress)
    with fits.open(out, checksum=True) as hdul:
        assert [h.name for h in hdul][-2:] == ["MASK", "UNCERT"]
        image = hdul[1] if compress else hdul[0]
        assert isinstance(image, fits.CompImageHDU) == compress
        assert np.array_equal(image.data, sr, equal_nan=True) and image.header["ASRMSHA"] == SHA
        assert np.array_equal(hdul["MASK"].data, mask) and hdul["MASK"].data.dtype == np.uint8
        assert np.array_equal(hdul["UNCERT"].data, 0.5 * sr, equal_nan=True)
        assert hdul["UNCERT"].header["BUNIT"] == "MJy/sr" and "BUNIT" not in hdul["MASK"].header
        for ext in ("MASK", "UNCERT"):
            assert hdul[ext].header["CD1_2"] == 3.0e-5 and hdul[ext].header["A_3_0"] == 4e-9
            assert "ASRMSHA" not in hdul[ext].header and "OBJECT" not in hdul[ext].header


def test_writer_refuses_an_existing_output_and_leaves_no_temporary_file(tmp_path):
    out, _, _ = _written(tmp_path, uncert=False)
    with fits.open(out) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "MASK"]
    stamp = out.stat().st_mtime_ns
    with pytest.raises(InputError, match="output exists"):
        _written(tmp_path)
    assert out.stat().st_mtime_ns == stamp and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    header = _provenance(_sky_header(), samples=2)
    sr = np.ones((12, 10), np.float32)
    write_output(out, sr, header, np.zeros(sr.shape, np.uint8), sr, compress=False, overwrite=True)
    assert fits.getheader(out)["ASRSAMP"] == 2 and sorted(p.name for p in tmp_path.iterdir()) == [out.name]


@pytest.mark.parametrize("compress", [False, True])
def test_existing_output_matches_only_with_the_same_model_psf_and_settings(tmp_path, compress):
    out, _, _ = _written(tmp_path, compress=compress)
    same = {"sha256": SHA, "psf_id": PSF_ID, "consistency": True, "samples": 0, "overlap": 32}
    assert existing_matches(out, **same)
    assert existing_matches(str(out), **same)
    for change in ({"sha256": "f" * 64}, {"psf_id": "Moffat FWHM=3px beta=3 41x41"}, {"consistency": False},
                   {"samples": 2}, {"overlap": 16}):
        assert not existing_matches(out, **{**same, **change}), change


def test_unreadable_or_foreign_outputs_do_not_match(tmp_path):
    same = {"sha256": SHA, "psf_id": PSF_ID, "consistency": True, "samples": 0, "overlap": 32}
    junk = tmp_path / "junk_deblur.fits"
    junk.write_text("<html>503</html>\n")
    assert not existing_matches(junk, **same)
    assert not existing_matches(tmp_path / "missing_deblur.fits", **same)
    foreign = tmp_path / "foreign_deblur.fits"
    header = fits.Header({"ASRMSHA": SHA, "ASRPSF": PSF_ID, "ASRCONS": True, "ASRSAMP": 0, "ASROVLP": 32})
    fits.writeto(foreign, np.zeros((4, 4), np.float32), header)  # the cards, but not the HISTORY astrosr writes
    assert not existing_matches(foreign, **same)


def test_an_input_epoch_reaches_the_extensions_as_equinox(tmp_path):
    header = _provenance(_sky_header())
    del header["EQUINOX"]
    header["EPOCH"] = 2000.0  # the deprecated spelling some archives still write
    sr = np.ones((12, 10), np.float32)
    out = tmp_path / "old_deblur.fits"
    write_output(out, sr, header, np.zeros(sr.shape, np.uint8), 0.5 * sr, compress=False, overwrite=False)
    with fits.open(out) as hdul:
        assert hdul[0].header["EPOCH"] == 2000.0  # the image's own header as it came
        for ext in ("MASK", "UNCERT"):
            assert hdul[ext].header["EQUINOX"] == 2000.0 and "EPOCH" not in hdul[ext].header
