"""bench-v1 scorer: against an independent scorer written here from BENCHMARK.md, and its own edge cases.

The independent scorer below shares no code with astrosr: its own FITS reading,
Moffat kernel, ``scipy.ndimage.convolve(mode='nearest')`` degradation, numpy
percentiles, tile loop, DAOStarFinder/aperture calls and source matching.
"""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.detection import DAOStarFinder
from scipy import ndimage
from skimage.metrics import structural_similarity

from astrosr import metrics
from astrosr.degrade import degrade
from astrosr.psf import BENCH_V1_PSF
from astrosr.errors import InputError
from astrosr.evaluate import evaluate

OTHER_SKY = ["gc_2mass_j", "gc_2mass_h", "gc_2mass_k", "M51"]
SECTION_8_INJECTED_FIELDS = {
    "val": ["M13_blue_0005", "reprojected_sdss_i"],
    "other_sky": OTHER_SKY,
    "simulated": ["synth"],
}


# ---- the independent scorer (BENCHMARK.md sections 1-5) --------------------------------------


def ind_load(path):
    with fits.open(path) as hdul:
        data = next(h.data for h in hdul if h.data is not None and h.data.ndim == 2)
    data = np.array(data, dtype=np.float64)
    data[~np.isfinite(data)] = np.nan
    return data


def ind_psf():
    beta, fwhm = 3.0, 4.0
    gamma = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    y, x = np.mgrid[-20:21, -20:21]
    k = (1 + (x**2 + y**2) / gamma**2) ** -beta
    return k / k.sum()


def ind_daofind(data, threshold, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = DAOStarFinder(fwhm=4.0, threshold=threshold, **kw)(data)
    if t is None:
        return np.empty((0, 2))
    return np.transpose([np.array(t["x_centroid"]), np.array(t["y_centroid"])])


def ind_inside(xy, shape):
    ny, nx = shape
    ok = (xy[:, 0] >= 12) & (xy[:, 0] <= nx - 13) & (xy[:, 1] >= 12) & (xy[:, 1] <= ny - 13)
    return xy[ok]


def ind_reference(ori):
    _, med, std = sigma_clipped_stats(ori[np.isfinite(ori)], sigma=3, maxiters=5)
    lo, hi = np.percentile(ori[np.isfinite(ori)], [0.5, 99.9])
    src = ind_inside(ind_daofind(ori - med, 10 * std), ori.shape)
    f_ori = np.array(aperture_photometry(ori - med, CircularAperture(src, r=6))["aperture_sum"]) if len(src) else []
    keep = np.isfinite(f_ori)
    ref = ind_daofind(ori - med, 5 * std, sharplo=-np.inf, sharphi=np.inf, roundlo=-np.inf, roundhi=np.inf)
    return dict(ori=ori, med=med, std=std, lo=lo, hi=hi, src=src[keep], f_ori=np.asarray(f_ori)[keep], ref=ref)


def ind_blu(ori, std):
    blu = ndimage.convolve(np.nan_to_num(ori), ind_psf(), mode="nearest")
    return blu + np.random.default_rng(0).normal(0, std, ori.shape)


def ind_spurious(r, x):
    found = ind_inside(ind_daofind(x - r["med"], 10 * r["std"]), x.shape)
    n = 0
    for fx, fy in found:
        d = np.hypot(r["ref"][:, 0] - fx, r["ref"][:, 1] - fy) if len(r["ref"]) else np.array([np.inf])
        n += d.min() > 3
    return n


def ind_score(r, x):
    ori = r["ori"]
    norm = lambda a: np.clip((a - r["lo"]) / (r["hi"] - r["lo"]), 0, 1)  # noqa: E731
    xo, oo = norm(x), norm(ori)
    ssim, mse = [], []
    for y0 in range(0, ori.shape[0] - 127, 128):
        for x0 in range(0, ori.shape[1] - 127, 128):
            o = oo[y0 : y0 + 128, x0 : x0 + 128]
            if np.isnan(o).any():
                continue
            t = xo[y0 : y0 + 128, x0 : x0 + 128]
            ssim.append(structural_similarity(t, o, data_range=1.0))
            mse.append(np.mean((t - o) ** 2))
    f = []
    if len(r["src"]):
        f = np.array(aperture_photometry(x - r["med"], CircularAperture(r["src"], r=6))["aperture_sum"])
    return dict(ssim=ssim, mse=mse, flux=list(np.abs(np.asarray(f) / r["f_ori"] - 1)), spurious=ind_spurious(r, x),
                n_src=len(r["src"]))


def ind_field(scores):
    ssim = np.concatenate([s["ssim"] for s in scores])
    mse = np.concatenate([s["mse"] for s in scores])
    return dict(n_tiles=len(ssim), ssim=ssim.mean(), mse=mse.mean(), psnr=np.mean(10 * np.log10(1 / mse)),
                flux=np.median(np.concatenate([s["flux"] for s in scores])),
                spurious=sum(s["spurious"] for s in scores), n_src=sum(s["n_src"] for s in scores))


# ---- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def other_sky_independent(data_dir):
    scores = []
    for name in OTHER_SKY:
        r = ind_reference(ind_load(data_dir / f"{name}.fits"))
        scores.append(ind_score(r, ind_blu(r["ori"], r["std"])))
    return ind_field(scores)


@pytest.fixture(scope="module")
def other_sky_evaluated(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_other_sky")
    paths = [data_dir / f"{n}.fits" for n in OTHER_SKY]
    return evaluate(out=out, images=paths, panels=0, models=[])


# ---- the BLU row of other_sky: astrosr == independent to 1e-9, both == section 8 ----------------


def test_blu_row_of_other_sky_equals_the_independent_scorer(other_sky_independent, other_sky_evaluated):
    ind = other_sky_independent
    row = other_sky_evaluated["fields"]["images"]["BLU"]
    assert row["n_tiles"] == ind["n_tiles"] == 91
    assert row["n_sources"] == ind["n_src"] == 922
    for key, ikey in [("ssim", "ssim"), ("mse", "mse"), ("psnr", "psnr"), ("flux_err", "flux")]:
        assert row[key] == pytest.approx(ind[ikey], rel=1e-9, abs=1e-12), key
    assert row["n_spurious"] == ind["spurious"] == 2


def test_independent_scorer_matches_section_8_other_sky_blu(other_sky_independent):
    ind = other_sky_independent
    assert f"{ind['ssim']:.4f}" == "0.5673"
    assert f"{ind['mse']:.3e}" == "2.223e-03"
    assert f"{ind['psnr']:.2f}" == "27.02"
    assert f"{ind['flux']:.3f}" == "0.076"


# ---- ORI against itself -----------------------------------------------------------------------


def test_ori_against_itself_is_perfect(data_dir):
    ori = fits.getdata(data_dir / "reprojected_sdss_i.fits").astype(np.float64)
    ref = metrics.reference(ori)
    s = metrics.score(ref, ori)
    row = s.summary()
    assert row.n_tiles == 15 and row.n_sources == 153
    assert row.ssim == 1.0 and row.mse == 0.0 and row.flux_err == 0.0
    assert np.isinf(row.psnr) and row.to_dict()["psnr"] is None
    assert row.n_spurious == 0 and row.spurious_frac == 0.0


# ---- small synthetic cases --------------------------------------------------------------------


def _stars(rng, shape=(256, 256), n=25, sky=100.0, noise=2.0):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    img = sky + rng.normal(0, noise, shape)
    xy = rng.uniform(30, shape[0] - 30, size=(n, 2))
    for x, y in xy:
        img += 400 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.7**2))
    return img, xy


def test_reference_tiles_skip_nan_and_partial_tiles(rng):
    img, _ = _stars(rng, shape=(300, 400))
    img[5, 300] = np.nan  # inside tile (0, 256)
    ref = metrics.reference(img)
    assert ref.origins == [(0, 0), (0, 128), (128, 0), (128, 128), (128, 256)]
    assert ref.ori_tiles.shape == (5, 128, 128)
    assert np.isclose(ref.lo, np.nanpercentile(img, 0.5)) and np.isclose(ref.hi, np.nanpercentile(img, 99.9))


def test_flux_sources_drop_nan_apertures_and_respect_the_edge_margin(rng):
    img, xy = _stars(rng)
    clean = metrics.reference(img)
    x, y = clean.sources[0]
    hole = img.copy()
    hole[int(round(y)) + 2, int(round(x))] = np.nan
    ref = metrics.reference(hole)
    assert ref.n_sources == clean.n_sources - 1
    assert not np.any(np.hypot(*(ref.sources - [x, y]).T) < 0.5)
    assert np.all((clean.sources >= 12) & (clean.sources <= 256 - 13))


def test_flux_error_is_relative_aperture_flux_change(rng):
    img, _ = _stars(rng)
    ref = metrics.reference(img)
    brighter = ref.median + 1.1 * (img - ref.median)
    s = metrics.score(ref, brighter)
    assert np.allclose(s.flux_err, 0.1)


def test_spurious_counts_sources_away_from_every_reference_peak(rng):
    img, _ = _stars(rng)
    ref = metrics.reference(img)
    yy, xx = np.mgrid[:256, :256]
    far = [(p[0], p[1]) for p in [(40, 200), (200, 40), (128, 60)]
           if np.hypot(*(ref.reference_xy - p).T).min() > 15]
    fake = img.copy()
    for x, y in far:
        fake += 400 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.7**2))
    s = metrics.score(ref, fake)
    assert s.n_spurious == len(far) > 0
    assert metrics.score(ref, img).n_spurious == 0


def test_summarise_pools_tiles_and_sources():
    def image_score(ssim, mse, flux, spur, n):
        mse = np.asarray(mse, float)
        return metrics.ImageScore(origins=[(0, 0)] * len(ssim), ssim=np.asarray(ssim, float), mse=mse,
                                  psnr=10 * np.log10(1 / mse), flux_err=np.asarray(flux, float), n_detected=spur,
                                  n_spurious=spur, n_sources=n)

    row = metrics.summarise([image_score([0.5, 0.7], [0.01, 0.1], [0.1, 0.3, 0.2], 1, 3),
                             image_score([0.9], [0.001], [], 0, 0)])
    assert row.n_tiles == 3 and row.ssim == pytest.approx(0.7)
    assert row.mse == pytest.approx(0.111 / 3) and row.psnr == pytest.approx((20 + 10 + 30) / 3)
    assert row.flux_err == pytest.approx(0.2) and row.n_sources == 3 and row.spurious_frac == pytest.approx(1 / 3)
    empty = metrics.summarise([image_score([0.9], [0.001], [], 0, 0)])
    assert empty.flux_err is None and empty.spurious_frac is None and empty.to_dict()["flux_err"] is None


def test_reference_rejects_unscorable_images():
    with pytest.raises(InputError, match="finite pixels"):
        metrics.reference(np.full((128, 128), np.nan))
    with pytest.raises(InputError, match="constant"):
        metrics.reference(np.ones((128, 128)))


def test_score_rejects_a_shape_mismatch(rng):
    ref = metrics.reference(_stars(rng)[0])
    with pytest.raises(InputError, match=r"differs from ORI's \(256, 256\)"):
        metrics.score(ref, np.zeros((128, 256)))


# ---- injection check (BENCHMARK.md 5 and 8) ---------------------------------------------------


def _inject(blu, ref, kernel, rng, n=20):
    """n PSF-shaped stars of peak 20 std on blank sky, >= 15 px from every reference peak and each other."""
    out = blu.copy()
    stamp = kernel / kernel.max() * 20 * ref.std
    half = kernel.shape[0] // 2
    ny, nx = blu.shape
    placed = []
    while len(placed) < n:
        x, y = rng.integers(20, nx - 20), rng.integers(20, ny - 20)
        others = np.vstack([ref.reference_xy, np.reshape(placed, (-1, 2))])
        if len(others) and np.hypot(others[:, 0] - x, others[:, 1] - y).min() < 15:
            continue
        placed.append((x, y))
        y0, y1, x0, x1 = y - half, y + half + 1, x - half, x + half + 1
        sy, sx = slice(max(y0, 0), min(y1, ny)), slice(max(x0, 0), min(x1, nx))
        out[sy, sx] += stamp[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0]
    return out


@pytest.mark.parametrize("field", list(SECTION_8_INJECTED_FIELDS))
def test_injected_stars_are_counted_as_spurious(data_dir, field):
    kernel = BENCH_V1_PSF.kernel()
    rng = np.random.default_rng(7)
    for name in SECTION_8_INJECTED_FIELDS[field]:
        ori = fits.getdata(data_dir / f"{name}.fits").astype(np.float64)
        ref = metrics.reference(ori)
        blu = degrade(ori, kernel, noise_std=ref.std, rng=np.random.default_rng(0))
        base = metrics.score(ref, blu).n_spurious
        injected = metrics.score(ref, _inject(blu, ref, kernel, rng)).n_spurious
        assert injected - base >= 18, name
