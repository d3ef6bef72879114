"""The restoration path shared by evaluate, deblur and training validation.

What ``evaluate`` scores is exactly what ``deblur`` writes: a whole image in
physical units goes in; it is normalised with its own 0.5/99.9 percentiles
(never ORI's, which deblur does not have: ``benchmarks/README.md``, section
Conventions astrosr follows), restored by the network over overlapping tiles
blended by :func:`astrosr.tiling.map_tiles`, mapped back to physical units,
and then tied to the observed flux by a data-consistency step
(:func:`consistency_step`: closed-form Landweber steps against the observed
image, which put back the faint-source flux a network trained with an L1
loss drifts to the background). NaN pixels are filled for the network only
and are NaN again in the output. The draws of the uncertainty go through the
same path, so the path, its step and its draws are kept together in one module.

Examples
--------
>>> import numpy as np
>>> from astrosr.models import ResVAE
>>> from astrosr.psf import moffat_psf
>>> from astrosr.restore import restore_image
>>> image = np.random.default_rng(0).normal(100.0, 5.0, (64, 64))
>>> restored = restore_image(image, ResVAE(), psf_kernel=moffat_psf(4.0, size=9), consistency=False)
>>> restored.sr.shape, restored.sr.dtype  # an untrained ResVAE is the identity
((64, 64), dtype('float32'))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import fft

from .degrade import background_stats, block_average, convolve_extend, percentile_limits
from .errors import InputError
from .progress import report
from .tiling import fit_tile, map_tiles

__all__ = ["Restored", "restore_image", "consistency_step", "correlated_noise"]


@dataclass
class Restored:
    """Result of :func:`restore_image`.

    Attributes
    ----------
    sr : ndarray (float32)
        Restored image, physical units, NaN where the input was NaN.
    uncert : ndarray (float32) or None
        Per-pixel std over posterior draws (physical units), when asked for.
    blu_lo, blu_hi : float
        The input's 0.5/99.9 percentiles used to normalise it for the model.
    psf : PSFMatch or None
        Set by :func:`astrosr.deblur.deblur_image`: the image's PSF, the
        kernel removed and the output PSF.
    """

    sr: np.ndarray
    uncert: np.ndarray | None
    blu_lo: float
    blu_hi: float
    psf: Any = None


#: images up to this many pixels get their background statistics from every pixel, exactly as
#: the pairs file's ``blu_bg_std`` the model was conditioned on in training; larger ones from a
#: regular subsample of about this many (sigma clipping 100 Mpix costs seconds and GBs)
STATS_PIXELS = 1 << 22

#: (H, Landweber gain) per (kernel, steps, grid): images of one survey share shape and PSF
_TRANSFER_CACHE = {}
#: grids up to this many pixels are cached (a 10k x 10k grid's pair would hold 800 MB)
_CACHE_PIXELS = 1 << 22


def _transfers(kernel, shape, k):
    """``H`` and ``conj(H) sum_{j<k} (1 - |H|^2)^j`` (complex64) of a centred odd kernel on ``shape``."""
    kernel = np.asarray(kernel, dtype=np.float32)
    key = (kernel.tobytes(), kernel.shape, tuple(shape), int(k))
    if key in _TRANSFER_CACHE:
        return _TRANSFER_CACHE[key]
    padded = np.zeros(shape, dtype=np.float32)
    ky, kx = kernel.shape
    padded[:ky, :kx] = kernel
    padded = np.roll(padded, (-(ky // 2), -(kx // 2)), axis=(0, 1))
    h = fft.rfft2(padded, workers=-1)
    del padded
    # sum_{j<k} (1-|H|^2)^j: the closed form of k unit-step Landweber iterations, no division
    loss = 1.0 - (h.real**2 + h.imag**2)
    term, total = np.ones_like(loss), np.ones_like(loss)
    for _ in range(k - 1):
        term *= loss
        total += term
    del loss, term
    gain = np.conj(h)
    gain *= total
    if h.size <= _CACHE_PIXELS:
        if len(_TRANSFER_CACHE) >= 4:  # one entry per image shape: keep a few
            _TRANSFER_CACHE.pop(next(iter(_TRANSFER_CACHE)))
        _TRANSFER_CACHE[key] = (h, gain)
    return h, gain


def consistency_step(x0: np.ndarray, blu: np.ndarray, kernel: np.ndarray, *, k: int = 2, scale: int = 1) -> np.ndarray:
    """Pull a restoration back onto the data: ``k`` Landweber steps, in closed form.

    ``x = x0 + F^-1{ conj(H) [1 - (1 - |H|^2)^k] / |H|^2  F(y - K x0) }``: the
    network's flux deficit (an L1-trained network drifts faint sources to the
    background) is put back from the residual of the observed image ``y``.

    Parameters
    ----------
    x0 : ndarray
        Restoration, physical units, no NaN.
    blu : ndarray
        Observed image; NaN (and infinite) pixels carry no constraint.
    kernel : ndarray
        The PSF, unit sum, odd sides.
    k : int
        Number of Landweber steps (2 by default, as measured).
    scale : int
        ``x0`` has ``scale`` times the pixels of ``blu``; the forward model is
        then PSF followed by block averaging, and the steps are explicit.

    Returns
    -------
    ndarray
        The corrected restoration, ``x0``'s shape (float32 or wider).

    Examples
    --------
    A restoration that already explains the data is left as it is:

    >>> import numpy as np
    >>> from astrosr.degrade import convolve_extend
    >>> from astrosr.psf import moffat_psf
    >>> psf = moffat_psf(4.0, size=9)
    >>> truth = np.random.default_rng(0).normal(100.0, 5.0, (64, 64))
    >>> x = consistency_step(truth, convolve_extend(truth, psf), psf)
    >>> bool(np.abs(x - truth).max() < 1e-3)
    True
    """
    if scale > 1:
        x = x0.copy()
        for _ in range(k):
            residual = blu - block_average(convolve_extend(x, kernel), scale)
            residual[~np.isfinite(residual)] = 0.0
            up = np.repeat(np.repeat(residual, scale, axis=0), scale, axis=1)
            up = np.pad(up, ((0, x.shape[0] - up.shape[0]), (0, x.shape[1] - up.shape[1])))
            x = x + convolve_extend(up, kernel[::-1, ::-1])
        return x
    # pad by a kernel on each side, then up to an FFT-friendly size; both FFT passes share
    # this grid and its transfer function, in float32 (the correction is a small residual)
    pad = max(kernel.shape)
    ny, nx = x0.shape
    shape = [fft.next_fast_len(n + 2 * pad, real=True) for n in (ny, nx)]
    widths = ((pad, shape[0] - ny - pad), (pad, shape[1] - nx - pad))
    h, gain = _transfers(kernel, shape, k)
    inside = (slice(pad, pad + ny), slice(pad, pad + nx))
    # K x0 with edges extended (convolve_extend): the wrap-around stays in the padding
    spectrum = fft.rfft2(np.pad(np.asarray(x0, dtype=np.float32), widths, mode="edge"), workers=-1)
    spectrum *= h
    residual = fft.irfft2(spectrum, s=shape, workers=-1)[inside]
    del spectrum
    np.subtract(blu, residual, out=residual, casting="same_kind")
    residual[~np.isfinite(residual)] = 0.0  # NaN (and inf) pixels of the data constrain nothing
    spectrum = fft.rfft2(np.pad(residual, widths, mode="reflect"), workers=-1)
    del residual
    spectrum *= gain
    correction = fft.irfft2(spectrum, s=shape, workers=-1)[inside]
    del spectrum
    correction = correction.astype(np.result_type(x0, np.float32), copy=False)
    correction += x0
    return correction


def correlated_noise(shape: tuple[int, int], kernel: np.ndarray) -> np.ndarray:
    """Unit-variance Gaussian noise correlated over ``kernel`` (float32), from torch's global RNG.

    White noise convolved with ``kernel / ||kernel||_2``: each pixel has std 1,
    neighbours within the kernel move together. A restoration's error is a
    star's flux or a source's presence, coherent over the PSF, not pixel by
    pixel: a draw with pixel-independent noise is no image a star finder
    recognises.

    Examples
    --------
    >>> import torch
    >>> from astrosr.psf import moffat_psf
    >>> _ = torch.manual_seed(0)
    >>> n = correlated_noise((256, 256), moffat_psf(4.0))
    >>> n.shape, round(float(n.std()), 1)
    ((256, 256), 1.0)
    """
    from scipy.signal import fftconvolve

    kernel = np.asarray(kernel, dtype=np.float64)
    ky, kx = kernel.shape
    white = torch.randn(shape[0] + ky - 1, shape[1] + kx - 1, dtype=torch.float32).numpy()
    return fftconvolve(white, (kernel / np.sqrt((kernel**2).sum())).astype(np.float32), mode="valid")


def _stats_sample(blu):
    """The image, or beyond :data:`STATS_PIXELS` a regular subsample of about that many pixels.

    Deterministic, so the same image gets the same conditioning every run;
    BLU's noise is white, so a million pixels pin its level to ~0.1%.
    """
    step = int(np.ceil(np.sqrt(blu.size / STATS_PIXELS)))
    return blu[::step, ::step] if step > 1 else blu


def _model_input(blu, bad, median, lo, span, rows=1024):
    """``(blu - lo) / span`` as float32, NaN filled with the median; computed in float64 by strips."""
    x = np.empty(blu.shape, dtype=np.float32)
    for start in range(0, blu.shape[0], rows):
        part = slice(start, start + rows)
        x[part] = (np.where(bad[part], median, blu[part]) - lo) / span
    return x


def _pad_to(image, tile):
    py, px = max(0, tile - image.shape[0]), max(0, tile - image.shape[1])
    if py or px:
        image = np.pad(image, ((0, py), (0, px)), mode="reflect" if min(image.shape) > max(py, px) else "edge")
    return image


def restore_image(
    blu: np.ndarray,
    model: torch.nn.Module,
    *,
    psf_kernel: np.ndarray,
    psf_fwhm: float = 4.0,
    consistency: bool = True,
    tile: int = 512,
    overlap: int = 32,
    batch: int | None = None,
    samples: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[str, int, int], None] | None = None,
    observer: Any = None,
) -> Restored:
    """Restore a whole blurred image with a model, as evaluate scores and deblur writes it.

    Parameters
    ----------
    blu : ndarray (H, W)
        Observed image in physical units; NaN allowed.
    model : torch.nn.Module
        An astrosr model (``restore``/``sample`` methods, ``scale`` attribute).
    psf_kernel : ndarray
        The image's PSF (unit sum): the model's Wiener channel and the
        consistency step use it.
    psf_fwhm : float
        PSF FWHM in pixels, for models conditioned on the degradation.
    consistency : bool
        Apply the data-consistency step (default True).
    tile : int
        Largest tile side of the network pass (input pixels); each axis gets
        the smallest side that covers it with as few tiles
        (:func:`astrosr.tiling.fit_tile`). A model with a ``native_tile``
        (the seed VAE: 128) always gets that.
    overlap : int
        Overlap of neighbouring tiles (input pixels), blended smoothly.
    batch : int, optional
        Tiles per network call (default: about one megapixel per call).
    samples : int
        If > 0, also compute the uncertainty: the per-pixel std over that many
        posterior draws of the whole path (each draw of the network through
        the consistency step when it is on, plus, for a model with a noise
        head, its error std times :func:`correlated_noise` over the PSF),
        times the model's ``uncertainty_scale`` (calibrated on val, 1 when
        absent). Draws use torch's global RNG: seed it for reproducible maps.
    device : str or torch.device
    progress : callable, optional
        ``progress('tiles', done, total)`` after each network batch, and
        ``progress('draws', done, samples)`` after each draw (:mod:`astrosr.progress`).
    observer : object, optional
        Sees the restoration and then each draw, each whole and in physical
        units: ``observer.restored(sr)`` once, then ``observer.draw(image)``
        per draw (:class:`astrosr.catalog.DrawCatalog`); NaN pixels are not
        yet restored to NaN.

    Returns
    -------
    Restored

    Raises
    ------
    InputError
        The image's 0.5 and 99.9 percentiles are equal (nothing to normalise).

    Examples
    --------
    >>> import numpy as np
    >>> from astrosr.models import ResVAE
    >>> from astrosr.psf import moffat_psf
    >>> image = np.random.default_rng(0).normal(100.0, 5.0, (64, 64))
    >>> image[5, 7] = np.nan
    >>> restored = restore_image(image, ResVAE(), psf_kernel=moffat_psf(4.0, size=9))
    >>> bool(np.isnan(restored.sr[5, 7])), restored.uncert is None
    (True, True)
    """
    blu = np.asarray(blu, dtype=np.float64)
    bad = ~np.isfinite(blu)
    lo, hi = percentile_limits(blu)
    if not hi > lo:  # no affine map to model units exists (the division below would be by zero)
        raise InputError(f"image: its 0.5 and 99.9 percentiles are equal ({lo:g}); nothing to normalise or restore")
    span = hi - lo
    _, median, bg_std = background_stats(_stats_sample(blu))
    scale = int(getattr(model, "scale", 1))
    x = _model_input(blu, bad, median, lo, span)
    ny, nx = x.shape
    native = getattr(model, "native_tile", None)
    x = _pad_to(x, native or 1)
    tile = (native, native) if native else tuple(fit_tile(n, tile, overlap) for n in x.shape)
    overlap = min(overlap, min(tile) // 2)
    batch = batch or max(1, (1 << 20) // (tile[0] * tile[1]))

    device = torch.device(device)
    psf = torch.as_tensor(psf_kernel, dtype=torch.float32, device=device)
    cond_row = torch.tensor([psf_fwhm, bg_std / span], dtype=torch.float32, device=device)

    def network(tiles, draw):
        blu_t = torch.as_tensor(tiles, dtype=torch.float32, device=device)[:, None]
        n = blu_t.shape[0]
        kwargs = {"psf": psf.expand(n, *psf.shape), "cond": cond_row.expand(n, 2)}
        with torch.inference_mode():
            out = draw(blu_t, **kwargs)
        return out.float().cpu().numpy()

    def mean_pass(tiles):
        return network(tiles, model.restore)[:, 0]

    def draw_pass(tiles):
        return network(tiles, lambda b, **kw: model.sample(b, 1, **kw)[0])[:, 0]

    def std_pass(tiles):
        return network(tiles, model.error_std)[:, 0]

    model.eval()
    common = {"tile": tile, "overlap": overlap, "batch": batch, "scale": scale}

    def whole(pass_fn, progress=None):
        """One network pass over the whole image, in physical units, through the step when it is on."""
        # float32 from here on, updated in place: a 10k x 10k image is 400 MB per copy
        out = map_tiles(x, pass_fn, progress=progress, **common)[: ny * scale, : nx * scale]
        out *= span
        out += lo
        return consistency_step(out, blu, psf_kernel, scale=scale) if consistency else out

    sr = whole(mean_pass, progress)
    if observer is not None:
        observer.restored(sr)
    uncert = None
    if samples > 0:
        error_std = None
        if getattr(model, "config", {}).get("noise_head"):
            error_std = map_tiles(x, std_pass, **common)[: ny * scale, : nx * scale]
            error_std *= span
        # Welford's running mean and sum of squares: one draw in memory at a time
        mean = np.zeros_like(sr)
        m2 = np.zeros_like(sr)
        for i in range(samples):
            draw = whole(draw_pass)
            if error_std is not None:
                draw += error_std * correlated_noise(draw.shape, psf_kernel)
            if observer is not None:
                observer.draw(draw)
            delta = draw - mean
            mean += delta / (i + 1)
            m2 += delta * (draw - mean)
            report(progress, "draws", i + 1, samples)
        del mean
        uncert = np.sqrt(m2 / max(samples - 1, 1), out=m2)
        uncert *= float(getattr(model, "uncertainty_scale", 1.0))
    del x
    if bad.any():
        mask = np.repeat(np.repeat(bad, scale, axis=0), scale, axis=1) if scale > 1 else bad
        sr[mask] = np.nan
        if uncert is not None:
            uncert[mask] = np.nan
    return Restored(sr=sr, uncert=uncert, blu_lo=lo, blu_hi=hi)
