"""FITS ingestion: scaling, byte order, BLANK, compression, cubes and every bad-input error."""

import gzip
import shutil
import warnings

import numpy as np
import pytest
from astropy.io import fits

from astrosr.errors import InputError
from astrosr.fits_io import read_image, strip_fits_suffix


def _write(path, data, **cards):
    hdu = fits.PrimaryHDU(data)
    for key, value in cards.items():
        hdu.header[key] = value
    hdu.writeto(path)
    return path


def test_real_uint16_file_is_scaled_by_bzero(data_dir):
    image = read_image(data_dir / "M13_blue_0001.fits")
    raw = fits.getdata(data_dir / "M13_blue_0001.fits", do_not_scale_image_data=True)
    assert raw.dtype == np.dtype(">i2")  # stored signed with BZERO = 32768
    np.testing.assert_array_equal(image.data, raw.astype(np.float64) + 32768.0)
    assert image.data.dtype == np.float64 and image.data.dtype.isnative
    assert image.hdu == 0 and image.plane is None and image.data.shape == (1040, 1392)


def test_bscale_bzero_give_physical_values(tmp_path, rng):
    stored = rng.integers(-1000, 1000, (130, 140)).astype(np.int16)
    path = tmp_path / "scaled.fits"
    hdu = fits.PrimaryHDU(stored)
    hdu.header["BSCALE"] = 0.25
    hdu.header["BZERO"] = 100.0
    hdu.writeto(path)
    raw = fits.getdata(path, do_not_scale_image_data=True)
    np.testing.assert_array_equal(raw, stored)  # the file holds the stored integers
    np.testing.assert_array_equal(read_image(path).data, stored * 0.25 + 100.0)


def test_big_endian_float_is_read_native(tmp_path, rng):
    data = rng.normal(size=(128, 160)).astype(">f4")
    path = _write(tmp_path / "be.fits", data)
    image = read_image(path)
    assert image.data.dtype.isnative
    np.testing.assert_array_equal(image.data, data.astype(np.float64))


def test_integer_blank_pixels_become_nan(tmp_path, rng):
    data = rng.integers(0, 500, (128, 128)).astype(np.int16)
    data[5, 7] = data[100, 3] = -999
    path = _write(tmp_path / "blank.fits", data, BLANK=-999)
    image = read_image(path)
    assert np.isnan(image.data[5, 7]) and np.isnan(image.data[100, 3])
    assert np.isfinite(image.data).sum() == data.size - 2
    keep = data != -999
    np.testing.assert_array_equal(image.data[keep], data[keep])


def test_unsigned_blank_pixels_become_nan(tmp_path, rng):
    physical = rng.integers(30000, 40000, (128, 128)).astype(np.uint16)
    physical[9, 9] = 0  # stored as -32768 = BLANK
    path = tmp_path / "u16.fits"
    hdu = fits.PrimaryHDU(physical)  # astropy stores uint16 as int16 with BZERO = 32768
    hdu.header["BLANK"] = -32768
    hdu.writeto(path)
    assert fits.getdata(path, do_not_scale_image_data=True)[9, 9] == -32768
    image = read_image(path)
    assert np.isnan(image.data[9, 9]) and np.isfinite(image.data).sum() == physical.size - 1
    assert image.data[0, 0] == physical[0, 0]


def test_scaled_integer_blank_pixels_become_nan(tmp_path, rng):
    data = rng.integers(0, 500, (128, 128)).astype(np.int32)
    data[0, 0] = -1
    path = _write(tmp_path / "blank_scaled.fits", data, BLANK=-1, BSCALE=2.0, BZERO=10.0)
    image = read_image(path)
    assert np.isnan(image.data[0, 0])
    np.testing.assert_array_equal(image.data[1:], data[1:] * 2.0 + 10.0)


def test_inf_becomes_nan(tmp_path, rng):
    data = rng.normal(size=(128, 128))
    data[3, 3], data[4, 4] = np.inf, -np.inf
    image = read_image(_write(tmp_path / "inf.fits", data))
    assert np.isnan(image.data[3, 3]) and np.isnan(image.data[4, 4])


def test_gzip_file_reads_like_the_plain_one(tmp_path, data_dir):
    target = tmp_path / "M51.fits.gz"
    with open(data_dir / "M51.fits", "rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    np.testing.assert_array_equal(read_image(target).data, read_image(data_dir / "M51.fits").data)


def test_tile_compressed_float_file_is_lossless(tmp_path, data_dir):
    plain = read_image(data_dir / "reprojected_sdss_i.fits")
    target = tmp_path / "sdss_i.fits.fz"
    comp = fits.CompImageHDU(fits.getdata(data_dir / "reprojected_sdss_i.fits"), compression_type="GZIP_2",
                             quantize_level=0.0)
    fits.HDUList([fits.PrimaryHDU(), comp]).writeto(target)
    image = read_image(target)
    assert image.hdu == 1  # the empty primary is skipped
    np.testing.assert_array_equal(image.data, plain.data)


def test_first_2d_hdu_and_hdu_by_index_or_name(tmp_path, rng):
    a, b = rng.normal(size=(128, 130)), rng.normal(size=(140, 128))
    path = tmp_path / "multi.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(a, name="SCI"), fits.ImageHDU(b, name="ERR")]).writeto(path)
    np.testing.assert_array_equal(read_image(path).data, a)
    assert read_image(path, hdu=2).hdu == 2
    np.testing.assert_array_equal(read_image(path, hdu="ERR").data, b)
    np.testing.assert_array_equal(read_image(path, hdu="2").data, b)


def test_cube_needs_a_plane(tmp_path, rng):
    cube = rng.normal(size=(3, 128, 150))
    path = _write(tmp_path / "cube.fits", cube)
    with pytest.raises(InputError, match=r"cube\.fits.*3-D cube.*\(plane=K\)"):
        read_image(path)
    np.testing.assert_array_equal(read_image(path, plane=2).data, cube[2])
    with pytest.raises(InputError, match=r"cube\.fits: plane 3 is out of range"):
        read_image(path, plane=3)


def test_degenerate_cube_axis_is_squeezed(tmp_path, rng):
    data = rng.normal(size=(1, 128, 128))
    np.testing.assert_array_equal(read_image(_write(tmp_path / "one.fits", data)).data, data[0])


def test_plane_on_a_2d_image_is_an_error(tmp_path, rng):
    path = _write(tmp_path / "flat.fits", rng.normal(size=(128, 128)))
    with pytest.raises(InputError, match=r"flat\.fits: plane 1 given but HDU 0 is a 2-D image"):
        read_image(path, plane=1)


def test_too_small(tmp_path, rng):
    path = _write(tmp_path / "small.fits", rng.normal(size=(100, 300)))
    with pytest.raises(InputError, match=r"small\.fits: image 300x100 is smaller than one 128x128 tile"):
        read_image(path)


def test_all_nan(tmp_path):
    path = _write(tmp_path / "nan.fits", np.full((128, 128), np.nan))
    with pytest.raises(InputError, match=r"nan\.fits: every pixel is NaN"):
        read_image(path)


def test_constant(tmp_path):
    path = _write(tmp_path / "flat.fits", np.full((128, 128), 7.0))
    with pytest.raises(InputError, match=r"flat\.fits: image is constant \(7 everywhere\)"):
        read_image(path)


def test_truncated_file(tmp_path, data_dir):
    path = tmp_path / "cut.fits"
    path.write_bytes((data_dir / "M51.fits").read_bytes()[:100_000])
    with pytest.raises(InputError, match=r"cut\.fits: not a readable FITS file"):
        read_image(path)


def test_text_file(tmp_path):
    path = tmp_path / "notes.fits"
    path.write_text("this is not FITS\n" * 200)
    with pytest.raises(InputError, match=r"notes\.fits: not a readable FITS file"):
        read_image(path)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"gone\.fits: file not found"):
        read_image(tmp_path / "gone.fits")


def test_no_image_hdu(tmp_path):
    path = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]).writeto(path)
    with pytest.raises(InputError, match=r"table\.fits: no HDU holds a 2-D image"):
        read_image(path)


def test_bad_hdu(tmp_path, rng):
    path = _write(tmp_path / "one.fits", rng.normal(size=(128, 128)))
    with pytest.raises(InputError, match=r"one\.fits: no HDU 'SCI'"):
        read_image(path, hdu="SCI")
    with pytest.raises(InputError, match=r"one\.fits: no HDU 5 \(the file has 1 HDUs\)"):
        read_image(path, hdu=5)


def test_mostly_zero_real_image_reads(data_dir):
    # gc_msx_e: one tile's worth of low-level emission; readable, not degenerate
    image = read_image(data_dir / "gc_msx_e.fits")
    assert image.data.shape == (149, 149) and np.isfinite(image.data).all()


@pytest.mark.parametrize(
    "name, stem",
    [("m51.fits", "m51"), ("a.b.fits.gz", "a.b"), ("x.fits.fz", "x"), ("y.FITS", "y"), ("z.fz", "z"), ("w.dat", "w"),
     ("v.fit.fz", "v"), ("u.fts.gz", "u")],
)
def test_strip_fits_suffix(name, stem):
    assert strip_fits_suffix(name) == stem


def test_damaged_file_is_one_message_without_astropy_notes(tmp_path, data_dir):
    # `head -c 5000 M51.fits`: astropy printed a three-line VerifyWarning above the error line
    cut = tmp_path / "head.fits"
    cut.write_bytes((data_dir / "M51.fits").read_bytes()[:5000])
    text = tmp_path / "notes.fits"
    text.write_text("hello world\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(InputError, match=r"head\.fits: not a readable FITS file \(OSError: Empty or corrupt FITS file\)$"):
            read_image(cut)
        # astropy's advice on its Python API (ignore_missing_simple=True) means nothing on the command line
        with pytest.raises(InputError, match=r"notes\.fits: not a readable FITS file \(OSError: No SIMPLE card found\)$"):
            read_image(text)
    assert not caught


def test_inherit_brings_the_primary_header_cards(tmp_path):
    image = np.arange(128 * 128, dtype=np.float32).reshape(128, 128)
    primary = fits.PrimaryHDU(header=fits.Header({"OBJECT": "M 1", "EXPTIME": 30.0, "FILTER": "r"}))
    with_inherit = fits.ImageHDU(image, header=fits.Header({"INHERIT": True, "FILTER": "g"}), name="SCI")
    fits.HDUList([primary, with_inherit]).writeto(tmp_path / "mef.fits")
    header = read_image(tmp_path / "mef.fits").header
    assert header["OBJECT"] == "M 1" and header["EXPTIME"] == 30.0
    assert header["FILTER"] == "g"  # the extension's own card wins
    without = fits.ImageHDU(image, name="SCI")
    fits.HDUList([primary, without]).writeto(tmp_path / "plain.fits")
    assert "OBJECT" not in read_image(tmp_path / "plain.fits").header
