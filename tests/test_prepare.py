"""The pairs file: bench-v1 degradation and normalisation, provenance, randomisation, atomicity."""

import dataclasses
import datetime
import hashlib
import json
import os
import signal

import h5py
import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from scipy import ndimage

import astrosr.prepare as prepare_module
from astrosr.config import from_dict
from astrosr.errors import ConfigError, InputError
from astrosr.pairs import summary as pairs_summary
from astrosr.prepare import PrepareOptions, prepare_pairs
from astrosr.psf import PSF, parse_range

SEED = 7


def _moffat(fwhm=4.0, beta=3.0, size=41):
    """bench-v1's PSF written out again from BENCHMARK.md, independent of astrosr.degrade."""
    gamma = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    y, x = np.mgrid[-(size // 2) : size // 2 + 1, -(size // 2) : size // 2 + 1]
    k = (1 + (x**2 + y**2) / gamma**2) ** (-beta)
    return k / k.sum()


def _bench(path):
    """ORI (float64, NaN), lo, hi and sigma-clipped std exactly as BENCHMARK.md sections 1-3 define them."""
    ori = fits.getdata(path).astype(np.float64)
    ori[~np.isfinite(ori)] = np.nan
    finite = ori[np.isfinite(ori)]
    lo, hi = np.percentile(finite, [0.5, 99.9])
    stats = sigma_clipped_stats(finite, sigma=3, maxiters=5)
    return ori, lo, hi, stats


@pytest.fixture(scope="module")
def pairs(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("pairs") / "pairs.h5"
    sources = [(data_dir / "reprojected_sdss_i.fits", "val"), (data_dir / "M13_blue_0001.fits", "train")]
    result = prepare_pairs(sources, out, config=PrepareOptions(seed=SEED), progress=False)
    return out, result


def test_layout_and_counts(pairs):
    out, result = pairs
    assert result["tiles_per_field"] == {"val": 15, "train": 80} and result["n_images"] == 2
    with h5py.File(out) as h5:
        assert h5["ori"].shape == h5["blu"].shape == (95, 128, 128)
        assert h5["ori"].dtype == h5["blu"].dtype == np.float32
        assert h5["ori"].chunks == h5["blu"].chunks == (1, 128, 128) and h5["ori"].compression == "lzf"
        tiles, images = h5["tiles"][:], h5["images"][:]
        assert set(tiles.dtype.names) == {"image", "y", "x", "field", "psf_index", "psf_fwhm", "noise_std"}
        assert {"path", "sha256", "field", "ny", "nx", "lo", "hi", "blu_lo", "blu_hi", "bg_mean", "bg_median",
                "bg_std", "blu_bg_std", "hdu", "plane"} <= set(images.dtype.names)
        assert list(tiles["field"][:15]) == [b"val"] * 15 and list(tiles["image"][15:]) == [1] * 80
        assert h5.attrs["schema_version"] == 1 and h5.attrs["scale"] == 1 and h5.attrs["astrosr_version"]
        config = from_dict(PrepareOptions, json.loads(h5.attrs["config"]))
        assert config == PrepareOptions(seed=SEED)
        created = datetime.datetime.fromisoformat(h5.attrs["created"])
        assert created.utcoffset() == datetime.timedelta(0)


def test_ori_tiles_clip_to_bench_v1_exactly(pairs, data_dir):
    out, _ = pairs
    ori, lo, hi, _ = _bench(data_dir / "M13_blue_0001.fits")
    with h5py.File(out) as h5:
        tiles, stored = h5["tiles"][:], h5["ori"][:]
    for n in np.flatnonzero(tiles["image"] == 1):
        y, x = tiles["y"][n], tiles["x"][n]
        bench = np.clip((ori[y : y + 128, x : x + 128] - lo) / (hi - lo), 0, 1).astype(np.float32)
        np.testing.assert_array_equal(np.clip(stored[n], 0, 1), bench)
    assert stored.max() > 1 and stored.min() < 0  # not clipped: bright cores keep their flux


def test_provenance_reproduces_random_tiles_bit_exactly(pairs, rng):
    out, _ = pairs
    with h5py.File(out) as h5:
        tiles, images = h5["tiles"][:], h5["images"][:]
        for n in rng.choice(len(tiles), 12, replace=False):
            row = tiles[n]
            image = images[row["image"]]
            path = image["path"].decode()
            assert hashlib.sha256(open(path, "rb").read()).hexdigest() == image["sha256"].decode()
            data = fits.getdata(path).astype(np.float64)
            y, x = row["y"], row["x"]
            expected = ((data[y : y + 128, x : x + 128] - image["lo"]) / (image["hi"] - image["lo"])).astype(np.float32)
            np.testing.assert_array_equal(h5["ori"][n], expected)


def test_images_table_is_bench_v1(pairs, data_dir):
    out, _ = pairs
    with h5py.File(out) as h5:
        images = h5["images"][:]
    for row, name in zip(images, ["reprojected_sdss_i.fits", "M13_blue_0001.fits"]):
        ori, lo, hi, (mean, median, std) = _bench(data_dir / name)
        assert row["path"].decode() == str((data_dir / name).resolve())
        assert (row["ny"], row["nx"], row["hdu"], row["plane"]) == (*ori.shape, 0, -1)
        assert (row["lo"], row["hi"]) == (lo, hi)
        assert (row["bg_mean"], row["bg_median"], row["bg_std"]) == pytest.approx((mean, median, std), rel=1e-12)


def test_val_blu_is_bench_v1_degradation(pairs, data_dir):
    """Test fields: bench-v1's PSF and noise with a fresh default_rng(0) (CONTRACTS.md 2)."""
    out, _ = pairs
    ori, lo, hi, (_, _, std) = _bench(data_dir / "reprojected_sdss_i.fits")
    blu = ndimage.convolve(np.nan_to_num(ori), _moffat(), mode="nearest") + np.random.default_rng(0).normal(0, std, ori.shape)
    with h5py.File(out) as h5:
        tiles, stored, images = h5["tiles"][:15], h5["blu"][:15], h5["images"][:]
        psf = h5["psfs"][tiles["psf_index"][0]]
    for n, (y, x) in enumerate(zip(tiles["y"], tiles["x"])):
        np.testing.assert_allclose(stored[n], (blu[y : y + 128, x : x + 128] - lo) / (hi - lo), rtol=0, atol=2e-6)
    assert tiles["psf_fwhm"][0] == 4.0 and tiles["noise_std"][0] == np.float32(std)
    np.testing.assert_allclose(psf, _moffat(), rtol=1e-6, atol=1e-9)
    blu_lo, blu_hi = np.percentile(blu, [0.5, 99.9])
    assert (images["blu_lo"][0], images["blu_hi"][0]) == pytest.approx((blu_lo, blu_hi), rel=1e-9)
    assert images["blu_bg_std"][0] == pytest.approx(sigma_clipped_stats(blu, sigma=3, maxiters=5)[2], rel=1e-9)


def test_train_noise_uses_its_own_stream_per_image(pairs, data_dir):
    out, _ = pairs
    ori, lo, hi, (_, _, std) = _bench(data_dir / "M13_blue_0001.fits")
    conv = ndimage.convolve(ori[:300, :300], _moffat(), mode="nearest")  # a corner: no edge effect inside 128+20
    noise = np.random.default_rng(np.random.SeedSequence(SEED, spawn_key=(1,))).normal(0, std, ori.shape)
    with h5py.File(out) as h5:
        np.testing.assert_allclose(h5["blu"][15], (conv[:128, :128] + noise[:128, :128] - lo) / (hi - lo), atol=2e-6)


def test_round_trip_is_bit_exact(tmp_path, monkeypatch, data_dir):
    captured = []
    original = prepare_module._one_image

    def spy(*args):
        result = original(*args)
        captured.append(result)
        return result

    monkeypatch.setattr(prepare_module, "_one_image", spy)
    out = tmp_path / "rt.h5"
    prepare_pairs([data_dir / "M51.fits", data_dir / "synth.fits"], out, config=PrepareOptions(compression="gzip"),
                  progress=False)
    with h5py.File(out) as h5:
        assert h5["ori"].compression == "gzip"
        np.testing.assert_array_equal(h5["blu"][:], np.concatenate([c[1] for c in captured]))
        np.testing.assert_array_equal(h5["ori"][:], np.concatenate([c[2] for c in captured]))


def test_fz_copy_gives_identical_tiles(tmp_path, data_dir):
    fz = tmp_path / "M51.fits.fz"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(fits.getdata(data_dir / "M51.fits"), compression_type="RICE_1")]).writeto(fz)
    prepare_pairs([(data_dir / "M51.fits", "val")], tmp_path / "a.h5", progress=False)
    prepare_pairs([(fz, "val")], tmp_path / "b.h5", progress=False)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        for key in ("ori", "blu"):
            np.testing.assert_array_equal(a[key][:], b[key][:])
        assert b["images"]["hdu"][0] == 1


def test_bolocam_only_nan_free_tiles(tmp_path, data_dir):
    out = tmp_path / "bolo.h5"
    prepare_pairs([data_dir / "gc_bolocam_gps.fits"], out, progress=False)
    ori = fits.getdata(data_dir / "gc_bolocam_gps.fits")
    expected = [(y, x) for y in range(0, ori.shape[0] - 127, 128) for x in range(0, ori.shape[1] - 127, 128)
                if np.isfinite(ori[y : y + 128, x : x + 128]).all()]
    with h5py.File(out) as h5:
        assert [(int(t["y"]), int(t["x"])) for t in h5["tiles"][:]] == expected
        assert np.isfinite(h5["ori"][:]).all() and np.isfinite(h5["blu"][:]).all()


def test_mostly_empty_msx_image_gives_its_one_tile(tmp_path, data_dir):
    result = prepare_pairs([data_dir / "gc_msx_e.fits"], tmp_path / "msx.h5", progress=False)
    assert result["n_tiles"] == 1


def test_scale_block_averages_blu(tmp_path, data_dir):
    path = data_dir / "M51.fits"
    prepare_pairs([(path, "val")], tmp_path / "s1.h5", progress=False)
    prepare_pairs([(path, "val")], tmp_path / "s2.h5", config=PrepareOptions(scale=2), progress=False)
    with h5py.File(tmp_path / "s1.h5") as a, h5py.File(tmp_path / "s2.h5") as b:
        assert b["blu"].shape == (16, 64, 64) and b["ori"].shape == (16, 128, 128) and b.attrs["scale"] == 2
        np.testing.assert_array_equal(a["ori"][:], b["ori"][:])
        full = a["blu"][:].astype(np.float64)
        expected = full.reshape(16, 64, 2, 64, 2).mean(axis=(2, 4))
        np.testing.assert_allclose(b["blu"][:], expected, atol=1e-6)


def test_randomised_per_image_train_only_and_reproducible(tmp_path, data_dir):
    config = PrepareOptions(psf=PSF(fwhm="2.5:5.5", shape="moffat,gaussian"), noise="0.5:2", seed=3)
    sources = [(data_dir / "M51.fits", "train"), (data_dir / "synth.fits", "train"),
               (data_dir / "gc_2mass_j.fits", "other_sky")]
    prepare_pairs(sources, tmp_path / "a.h5", config=config, progress=False)
    prepare_pairs(sources, tmp_path / "b.h5", config=config, progress=False)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "b.h5") as b:
        np.testing.assert_array_equal(a["blu"][:], b["blu"][:])
        tiles, images = a["tiles"][:], a["images"][:]
        params = json.loads(a["psfs"].attrs["params"])
    train = tiles[tiles["field"] == b"train"]
    fwhm = {int(t["image"]): float(t["psf_fwhm"]) for t in train}
    assert len(set(fwhm.values())) == 2 and all(2.5 <= f <= 5.5 for f in fwhm.values())
    test = tiles[tiles["field"] == b"other_sky"]
    assert set(test["psf_fwhm"]) == {4.0} and params[test["psf_index"][0]]["shape"] == "moffat"
    assert np.allclose(test["noise_std"], images["bg_std"][2])  # bench-v1: noise factor 1
    for t in train:
        ratio = t["noise_std"] / images["bg_std"][t["image"]]
        assert 0.5 <= ratio <= 2.0


def test_randomised_per_tile_matches_whole_image_convolution(tmp_path, data_dir):
    from astrosr.degrade import convolve_extend

    config = PrepareOptions(psf=PSF(fwhm="2.5:5.5"), randomise="tile", noise="1e-9:2e-9")
    out = tmp_path / "tile.h5"
    prepare_pairs([data_dir / "M51.fits"], out, config=config, progress=False)
    ori, lo, hi, _ = _bench(data_dir / "M51.fits")
    with h5py.File(out) as h5:
        tiles, blu, psfs = h5["tiles"][:], h5["blu"][:], h5["psfs"][:]
    assert len(psfs) == len(tiles) == 16 and len(set(tiles["psf_fwhm"])) == 16
    for n in (0, 5, 15):  # an edge tile, an inner tile, the far corner
        y, x = tiles["y"][n], tiles["x"][n]
        kernel = _moffat(float(tiles["psf_fwhm"][n]))
        whole = convolve_extend(ori, kernel)[y : y + 128, x : x + 128]
        np.testing.assert_allclose(blu[n], (whole - lo) / (hi - lo), atol=2e-6)
    # the Poisson term adds shot noise where there is signal above ORI's background, and none on the sky
    shot = tmp_path / "shot.h5"
    prepare_pairs([data_dir / "M51.fits"], shot, config=dataclasses.replace(config, poisson_gain=1.0),
                  progress=False)
    with h5py.File(shot) as h5:
        extra = (h5["blu"][:] - blu) * (hi - lo)
    bright = (blu * (hi - lo) + lo) > np.median(ori) + 200
    assert np.abs(extra[~bright]).mean() < 0.5 * np.abs(extra[bright]).mean()


def test_poisson_only_on_train(tmp_path, data_dir):
    path = data_dir / "M51.fits"
    prepare_pairs([(path, "val")], tmp_path / "v0.h5", progress=False)
    prepare_pairs([(path, "val")], tmp_path / "v1.h5", config=PrepareOptions(poisson_gain=0.01), progress=False)
    prepare_pairs([(path, "train")], tmp_path / "t0.h5", progress=False)
    prepare_pairs([(path, "train")], tmp_path / "t1.h5", config=PrepareOptions(poisson_gain=0.01), progress=False)
    read = lambda name: h5py.File(tmp_path / name)["blu"][:]  # noqa: E731
    np.testing.assert_array_equal(read("v0.h5"), read("v1.h5"))
    assert np.abs(read("t1.h5") - read("t0.h5")).max() > 0.1


def test_file_psf_resampled_and_measured(tmp_path, data_dir):
    from astrosr.psf import measure_fwhm, read_psf

    psf = data_dir / "irac_ch1_flight.fits"
    config = PrepareOptions(psf=PSF(path=str(psf), shape="file", pixscale=0.30525))
    out = tmp_path / "irac.h5"
    prepare_pairs([data_dir / "reprojected_sdss_g.fits"], out, config=config, progress=False)
    kernel = read_psf(psf, pixscale=0.30525, image_pixscale=1.1877)  # sdss: 1.1877 arcsec/px from its WCS
    with h5py.File(out) as h5:
        stored = h5["psfs"][0]
        assert stored.shape == kernel.shape and stored.sum() == pytest.approx(1.0, rel=1e-5)
        np.testing.assert_allclose(stored, kernel, atol=2e-4 * kernel.max())
        assert h5["tiles"]["psf_fwhm"][0] == pytest.approx(measure_fwhm(kernel), rel=0.01)
    with pytest.raises(InputError, match=r"M51\.fits: no celestial WCS to resample the PSF to"):
        prepare_pairs([data_dir / "M51.fits"], tmp_path / "x.h5", config=config, progress=False)
    assert not (tmp_path / "x.h5").exists()


def _fits(path, data):
    fits.PrimaryHDU(data).writeto(path)
    return path


def test_bad_images_leave_no_output(tmp_path, rng):
    good = _fits(tmp_path / "good.fits", rng.normal(size=(200, 200)))
    flat = np.zeros((200, 200))
    flat[0, :5] = 1.0  # constant apart from 5 pixels: 0.5 and 99.9 percentiles equal
    cases = {
        "peaks.fits": (flat, r"peaks\.fits: 0\.5th and 99\.9th percentiles are equal"),
        "holes.fits": (np.where(np.indices((200, 200)).sum(0) % 50 == 0, np.nan, rng.normal(size=(200, 200))),
                       r"holes\.fits: no 128x128 tile without NaN pixels"),
        "small.fits": (rng.normal(size=(64, 300)), r"small\.fits: image 300x64 is smaller than one 128x128 tile"),
    }
    for name, (data, message) in cases.items():
        bad = _fits(tmp_path / name, data)
        out = tmp_path / "out.h5"
        with pytest.raises(InputError, match=message):
            prepare_pairs([good, bad], out, progress=False)
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".fits")) == []


def test_existing_output_duplicates_and_empty(tmp_path, data_dir):
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep me")
    with pytest.raises(InputError, match=r"o\.h5: output exists \(overwrite=True replaces it"):
        prepare_pairs([data_dir / "M51.fits"], out, progress=False)
    assert out.read_bytes() == b"keep me"
    with pytest.raises(InputError, match=r"M51\.fits: listed twice"):
        prepare_pairs([data_dir / "M51.fits", (data_dir / "M51.fits", "val")], tmp_path / "p.h5", progress=False)
    with pytest.raises(InputError, match=r"no input images given"):
        prepare_pairs([], tmp_path / "p.h5", progress=False)
    prepare_pairs([data_dir / "M51.fits"], out, overwrite=True, progress=False)
    assert pairs_summary(out)["n_tiles"] == 16


def test_test_images_never_train(tmp_path, data_dir):
    from astrosr.simulate import write_simulated

    copy = tmp_path / "copy.fits"
    copy.write_bytes((data_dir / "synth.fits").read_bytes())
    with pytest.raises(InputError, match=r"copy\.fits: same bytes as .*synth\.fits, which is in field 'simulated'"):
        prepare_pairs([(data_dir / "synth.fits", "simulated"), (copy, "train")], tmp_path / "p.h5", progress=False)
    write_simulated(tmp_path / "sim.fits", seed=1000, index=0, size=128)
    with pytest.raises(InputError, match=r"sim\.fits: simulated with seed 1000; seeds >= 1000 are the simulated test"):
        prepare_pairs([tmp_path / "sim.fits"], tmp_path / "p.h5", progress=False)
    assert prepare_pairs([(tmp_path / "sim.fits", "simulated")], tmp_path / "p.h5", progress=False)["n_tiles"] == 1


@pytest.mark.parametrize("interrupt", ["ctrl-c", "sigterm"])
def test_interrupted_run_leaves_no_file(tmp_path, data_dir, monkeypatch, interrupt):
    calls = []
    original = prepare_module._one_image

    def stop_on_second(*args):
        calls.append(1)
        if len(calls) == 2:
            if interrupt == "ctrl-c":
                raise KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
        return original(*args)

    monkeypatch.setattr(prepare_module, "_one_image", stop_on_second)
    handler = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        prepare_pairs([data_dir / "M51.fits", data_dir / "synth.fits"], tmp_path / "int.h5", progress=False)
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is handler  # restored


def test_summary(pairs):
    out, _ = pairs
    s = pairs_summary(out)
    assert s["n_tiles"] == 95 and s["tiles_per_field"] == {"val": 15, "train": 80}
    assert [im["n_tiles"] for im in s["images"]] == [15, 80] and s["psfs"]["count"] == 1
    assert s["psf_fwhm_range"] == (4.0, 4.0) and s["config"]["seed"] == SEED


def test_summary_rejects_other_files(tmp_path):
    (tmp_path / "t.h5").write_text("text")
    with pytest.raises(InputError, match=r"t\.h5: not an HDF5 file"):
        pairs_summary(tmp_path / "t.h5")
    with h5py.File(tmp_path / "e.h5", "w") as h5:
        h5["blu"] = np.zeros(3)
    with pytest.raises(InputError, match=r"e\.h5: not an astrosr pairs file \(missing ori, tiles, images, psfs\)"):
        pairs_summary(tmp_path / "e.h5")
    with pytest.raises(InputError, match=r"none\.h5: file not found"):
        pairs_summary(tmp_path / "none.h5")


def test_parse_range():
    assert parse_range(4, "k") == (4.0, 4.0)
    assert parse_range("2.5:5.5", "k") == (2.5, 5.5)
    assert parse_range("3", "k") == (3.0, 3.0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # the degradation PSF is the one PSF specification (astrosr.psf), under the key psf
        (dict(psf={"fwhm": "5:2"}), r"psf\.fwhm: expected 0 < lo <= hi, got '5:2'"),
        (dict(psf={"fwhm": "wide"}), r"psf\.fwhm: expected a number or a range 'lo:hi', got 'wide'"),
        (dict(noise="1:2:3"), r"noise: expected a number or a range"),
        (dict(psf={"beta": 1.0}), r"psf\.beta: must be > 1"),
        (dict(psf={"shape": "boxy"}), r"psf shape must be moffat, gaussian or airy \(a kernel file or 'auto': psf.path\), got 'boxy'"),
        (dict(psf={"shape": "airy"}), r"psf shape 'airy' needs a radius"),
        (dict(psf={"shape": "file"}), r"psf shape 'file' needs a path"),
        (dict(psf={"shape": "gaussian", "path": "k.fits"}), r"psf\.shape: 'gaussian' given with psf\.path"),
        (dict(randomise="pixel"), r"randomise: expected one of image, tile, got 'pixel'"),
        (dict(compression="zstd"), r"compression: expected one of lzf, gzip, none, got 'zstd'"),
        (dict(scale=3), r"scale: tile \(128\) and stride \(128\) must be multiples of scale \(3\)"),
        (dict(psf={"size": 40}), r"psf\.size: must be an odd integer >= 3, got 40"),
        (dict(poisson_gain=0.0), r"poisson_gain: must be > 0, got 0.0"),
        (dict(seed=-2), r"seed: must be >= 0, got -2"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(PrepareOptions, kwargs)


def test_config_from_yaml_mapping_names_the_key():
    with pytest.raises(ConfigError, match=r"prepare\.psf_fwhmm: unknown key"):
        from_dict(PrepareOptions, {"psf_fwhmm": 3}, where="prepare")
    assert from_dict(PrepareOptions, {"psf": {"fwhm": "2:6"}, "hdu": "SCI"}).psf.fwhm == "2:6"


def test_no_train_image_shares_the_val_noise_field(tmp_path, data_dir):
    # seed 0, image 0: a plain seed + index would give train image 0 bench-v1's default_rng(0)
    out = tmp_path / "p.h5"
    sources = [(data_dir / "M13_blue_0001.fits", "train"), (data_dir / "M13_blue_0005.fits", "val")]
    prepare_pairs(sources, out, config=PrepareOptions(seed=0), progress=False)
    with h5py.File(out) as h5:
        images, tiles = h5["images"][:], h5["tiles"][:]
        noise = []
        for i in range(2):
            ori = fits.getdata(images["path"][i].decode()).astype(np.float64)
            lo, hi = images["lo"][i], images["hi"][i]
            first = np.flatnonzero(tiles["image"] == i)[0]
            conv = ndimage.convolve(ori[:300, :300], _moffat(), mode="nearest")[:128, :128]
            noise.append(h5["blu"][first] * (hi - lo) + lo - conv)
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.05


def test_a_prepare_killed_mid_write_leaves_nothing_a_rerun_does_not_remove(tmp_path, data_dir):
    import shutil
    import subprocess
    import time

    out = tmp_path / "pairs.h5"
    args = [shutil.which("astrosr") or "astrosr", "prepare", *[str(data_dir / f"M13_blue_000{i}.fits") for i in (1, 2, 3, 4)],
            "--stride", "16", "-o", str(out)]
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob(".pairs.h5.astrosr-*.tmp")):
        time.sleep(0.05)
    child.kill()  # kill -9: no handler runs, the temporary stays
    child.wait()
    stale = list(tmp_path.glob(".pairs.h5.astrosr-*.tmp"))
    assert len(stale) == 1 and f"-{child.pid}.tmp" in stale[0].name and not out.exists()
    rerun = subprocess.run(args[:2] + [str(data_dir / "M51.fits"), "-o", str(out)], capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert out.is_file() and [p.name for p in tmp_path.iterdir()] == ["pairs.h5"]


def test_declared_psf_tiles_remove_the_kernel_from_the_declared_psf_to_the_drawn_one(tmp_path, data_dir):
    from scipy.signal import fftconvolve

    from astrosr.psf import moffat_psf
    from astrosr.simulate import simulate_fields

    sim = simulate_fields(tmp_path / "s", n=1, seed=9, size=256, psf_fwhm=2.0, psf_beta=3.0)[0]
    config = PrepareOptions(psf=PSF(fwhm="2.0:6.0", beta=3.0), randomise="tile", declared_psf=True)
    prepare_pairs([(sim, "train"), (data_dir / "gc_msx_e.fits", "train")], tmp_path / "p.h5", config=config)
    with h5py.File(tmp_path / "p.h5") as h5:
        params = json.loads(h5["psfs"].attrs["params"])
        kernels, fwhm, tiles = h5["psfs"][:], h5["psfs"].attrs["fwhm"], h5["tiles"][:]
    declared = [p for p in params if "declared_fwhm" in p]
    assert declared and all(p["declared_fwhm"] == 2.0 and p["fwhm"] >= 1.15 * 2.0 for p in declared)
    for k, p in enumerate(params):
        if "declared_fwhm" not in p:
            continue  # the real image (no PSFFWHM card) keeps the drawn PSF itself
        size = kernels.shape[1]
        drawn, target = moffat_psf(p["fwhm"], beta=3.0, size=size), moffat_psf(2.0, beta=3.0, size=size)
        assert np.abs(fftconvolve(target, kernels[k], mode="same") - drawn).max() < 0.01 * drawn.max()
        assert fwhm[k] < p["fwhm"]  # the kernel is narrower than the PSF it takes the target to
    plain = [k for k, p in enumerate(params) if "declared_fwhm" not in p]
    assert plain and set(tiles["psf_index"][tiles["image"] == 1]) <= set(plain)


def test_declared_kernel_draws_the_kernel_fwhm_of_declared_images_only(tmp_path, data_dir):
    from astrosr.simulate import simulate_fields

    sim = simulate_fields(tmp_path / "s", n=1, seed=9, size=256, psf_fwhm=2.0, psf_beta=3.0)[0]
    config = PrepareOptions(psf=PSF(fwhm="4.0:6.0", beta=3.0), randomise="tile", declared_psf=True,
                            declared_kernel="1.0:2.0")
    prepare_pairs([(sim, "train"), (data_dir / "gc_msx_e.fits", "train")], tmp_path / "p.h5", config=config)
    with h5py.File(tmp_path / "p.h5") as h5:
        params = json.loads(h5["psfs"].attrs["params"])
        fwhm, tiles = h5["psfs"].attrs["fwhm"], h5["tiles"][:]
    declared = [k for k, p in enumerate(params) if "declared_fwhm" in p]
    # drawn PSFs hypot(2, 1..2) = 2.24..2.83 px (at least 1.15 x 2 = 2.3): kernels of about 1.1-2 px, never the 4-6 of psf
    assert declared and all(2.29 <= params[k]["fwhm"] <= 2.83 for k in declared)
    assert all(0.9 <= fwhm[k] <= 2.2 for k in declared)
    # the real image (no PSFFWHM card) draws from psf as before
    plain = set(tiles["psf_index"][tiles["image"] == 1])
    assert plain and all(4.0 <= params[k]["fwhm"] <= 6.0 for k in plain)


def test_declared_kernel_needs_declared_psf():
    with pytest.raises(ConfigError, match=r"declared_kernel: needs declared_psf, got declared_kernel='1:2' alone"):
        PrepareOptions(declared_kernel="1:2")
    with pytest.raises(ConfigError, match=r"declared_kernel: expected 0 < lo <= hi, got '2:1'"):
        PrepareOptions(declared_psf=True, declared_kernel="2:1")
