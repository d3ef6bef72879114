"""The kernel a restoration removes: the image's PSF (measured or stated) to a declared output PSF.

Kept together as one module: the kernel, the checks before deblurring and the check of the
output after it all speak of one output PSF.

A deblurred image has a known PSF, the output PSF: a Moffat of FWHM
``target_fwhm`` (output pixels) with the image's own beta, following the
correct-sampling principle (Magain, Courbin & Sohy 1998, ApJ 494, 472):
deconvolve to a PSF the pixel grid still carries, not towards a delta
function. The kernel removed takes that output PSF to the image's PSF
(:func:`astrosr.psf.matching_kernel`); the model's Wiener channel, its
conditioning and the data-consistency step all use it. ``target_fwhm`` 0
declares no output PSF: the image's PSF itself is removed (bench-v1's
convention).

:func:`match_psf` also refuses what cannot be right (an ``InputError``
naming the image and both numbers; ``ignore_psf_check`` overrides the
first two):

* a stated PSF broader than the image's own stars: the resolution FWHM of
  the image's stars is below 0.9 x that of the stated PSF rendered at the
  same stars (no PSF broader than the stars can have blurred them);
* an image PSF at or below the output PSF (in input pixels): nothing to
  deblur;
* a kernel outside the model's training range is a warning (``notes``),
  not an error.

Examples
--------
>>> from astrosr.psf import PSF
>>> from astrosr.simulate import star_field
>>> image = star_field(fwhm=4.0, beta=3.0, seed=1)
>>> match = match_psf(image, PSF(fwhm=4.0), target_fwhm=2.0)
>>> round(match.image_fwhm, 1), match.target_fwhm, match.kernel.shape[0] % 2
(4.0, 2.0, 1)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError, InputError
from .psf import PSF, gaussian_psf, matching_kernel, measure_fwhm, moffat_kernel, moffat_psf
from .psf_measure import UNDERSAMPLED_FWHM

log = logging.getLogger(__name__)

__all__ = ["PSFMatch", "match_psf", "check_grid", "check_output", "rendered_fwhm", "trained_range", "CHECK_RATIO", "OUTPUT_TOLERANCE"]

#: a stated PSF is refused when the image's stars measure below this fraction of it
CHECK_RATIO = 0.9


@dataclass
class PSFMatch:
    """The image's PSF, the output PSF, and the kernel between them.

    Attributes
    ----------
    kernel : ndarray
        The kernel removed (unit sum, odd side).
    kernel_fwhm : float
        Its FWHM (px), which conditions the model.
    image_fwhm, image_beta : float
        The image's PSF (Moffat FWHM in input px, beta; beta None for a non-Moffat stated PSF).
    source : str
        ``'measured'`` or ``'stated'``.
    described : str
        The image's PSF in one line.
    n_stars : int
        Stars the measurement used (0 when stated).
    target_fwhm : float or None
        The output PSF's FWHM in output pixels; None: no declared output PSF.
    output_shape, output_beta
        The output PSF's shape (``'moffat'`` or ``'gaussian'``) and beta.
    notes : list of str
        Warnings (a kernel outside the model's training range).
    regions : list of ((y0, y1, x0, x1), PSFMatch)
        Per grid region, when measured on a grid (row-major from the lower left).
    output_kernel : ndarray or None
        The declared output PSF drawn on the kernel's grid.
    stars : dict
        After :func:`check_output`: the resolution FWHM of the input's stars,
        of the output at them, and of the declared output PSF drawn at them.
    resolution : tuple
        ``(positions, fwhm)`` of the input's resolution stars, once found.
    convolve : bool
        The image's PSF is already at or below the output PSF and the check
        was overridden: ``kernel`` takes the image's PSF to the output PSF and
        the image is convolved with it (PSF homogenisation), not deblurred.
    """

    kernel: np.ndarray
    kernel_fwhm: float
    image_fwhm: float
    image_beta: float | None
    source: str
    described: str
    n_stars: int = 0
    target_fwhm: float | None = None
    output_shape: str | None = None
    output_beta: float | None = None
    notes: list = field(default_factory=list)
    regions: list = field(default_factory=list)
    output_kernel: np.ndarray | None = None
    stars: dict = field(default_factory=dict)
    convolve: bool = False
    resolution: tuple = ()

    def cards(self) -> list[tuple[str, Any, str]]:
        """FITS cards: the image's PSF, the kernel removed and the output PSF (photometry tools read these)."""
        cards = [("ASRIPSRC", self.source, "image PSF: measured from its stars or stated"),
                 ("ASRIFWHM", round(self.image_fwhm, 4), "image PSF FWHM, input px")]
        if self.image_beta is not None:
            cards.append(("ASRIBETA", round(self.image_beta, 4), "image PSF Moffat beta"))
        if self.source == "measured":
            cards.append(("ASRNSTAR", self.n_stars, "stars the image PSF was measured on"))
        cards.append(("ASRKFWHM", round(self.kernel_fwhm, 4), "FWHM of the kernel " + (
            "convolved with, input px" if self.convolve else "removed, input px")))
        if self.convolve:
            cards.append(("ASRCONV", True, "convolved to the output PSF, not deblurred"))
        if self.target_fwhm is None:
            cards.append(("PSFSHAPE", "NONE", "no declared output PSF: the image PSF removed"))
        else:
            cards.append(("PSFSHAPE", self.output_shape.upper(), "output PSF shape"))
            cards.append(("PSFFWHM", float(self.target_fwhm), "output PSF FWHM, px of this image"))
            if self.output_beta is not None:
                cards.append(("PSFBETA", round(self.output_beta, 4), "output PSF Moffat beta"))
        if self.stars:
            cards += [("ASRSFWIN", round(self.stars["input"], 3), "input stars' FWHM (Gaussian fit), px"),
                      ("ASRSFWOU", round(self.stars["output"], 3), "output FWHM at those stars, px"),
                      ("ASRSFWTG", round(self.stars["declared"], 3), "declared output PSF at those stars, px")]
        return cards

    def history(self) -> list[str]:
        """HISTORY lines saying the same in words."""
        out = f"output PSF: {self.output_shape} FWHM {self.target_fwhm:g} px" + (
            f" beta {self.output_beta:.3g}" if self.output_beta is not None else "") \
            if self.target_fwhm is not None else "output PSF: none declared (the image PSF itself removed)"
        return [f"image PSF ({self.source}): {self.described}", out,
                f"kernel removed: FWHM {self.kernel_fwhm:.3g} px", *self.notes]


def rendered_fwhm(kernel: np.ndarray, positions: np.ndarray) -> float | None:
    """The resolution FWHM of ``kernel`` drawn at each star's sub-pixel position (as the stars are measured).

    Each star's fraction of a pixel matters for an undersampled PSF: the
    kernel is shifted by it (cubic spline) before the same Gaussian fit.
    """
    from scipy import ndimage

    from .stars import star_fwhm

    kernel = np.asarray(kernel, dtype=np.float64)
    side = 31
    pad = max(0, (side - kernel.shape[0]) // 2)
    canvas = np.pad(kernel, pad)
    centre = canvas.shape[0] // 2
    canvas = canvas[centre - 15 : centre + 16, centre - 15 : centre + 16]
    values = []
    for x, y in np.asarray(positions, dtype=np.float64)[:40]:
        dx, dy = x - round(x), y - round(y)
        shifted = ndimage.shift(canvas, (dy, dx), order=3, mode="constant")
        value = star_fwhm(shifted, np.array([[15.0 + dx, 15.0 + dy]]))
        if value is not None:
            values.append(value)
    return float(np.median(values)) if values else None


def trained_range(info: dict | None) -> tuple[float, float] | None:
    """The kernel FWHM range (px) a model was trained on, from its checkpoint info; None when unrecorded.

    Examples
    --------
    >>> trained_range({"psf": {"fwhm": 4.0, "fwhm_range": [2.5, 5.5]}})
    (2.5, 5.5)
    >>> trained_range({"psf": {"shape": "moffat", "fwhm": 4.0}})
    (4.0, 4.0)
    """
    psf = (info or {}).get("psf")
    if not isinstance(psf, dict):
        return None
    if "fwhm_range" in psf:
        low, high = psf["fwhm_range"]
        return float(low), float(high)
    if isinstance(psf.get("fwhm"), (int, float)):
        return float(psf["fwhm"]), float(psf["fwhm"])
    return None


def _output_kernel(shape, fwhm, beta, size, *, integrated):
    if shape == "gaussian":
        return gaussian_psf(fwhm, size=size)
    return moffat_kernel(fwhm, beta, size=size) if integrated else moffat_psf(fwhm, beta=beta, size=size)


def check_grid(grid: int, psf: PSF | np.ndarray) -> None:
    """A PSF grid measures the PSF per region, so it needs ``psf`` auto: otherwise a ConfigError."""
    if grid > 1 and not (isinstance(psf, PSF) and psf.shape == "auto"):
        raise ConfigError(f"psf_grid: {grid} measures the PSF per region; it needs psf auto, not a stated PSF")


def match_psf(
    image: np.ndarray,
    psf: PSF | np.ndarray,
    *,
    target_fwhm: float = 2.0,
    scale: int = 1,
    header=None,
    name: str = "image",
    ignore_psf_check: bool = False,
    model_info: dict | None = None,
    psf_options=None,
    grid: int = 1,
) -> PSFMatch:
    """The kernel a restoration of ``image`` removes, after the checks that refuse an impossible request.

    Parameters
    ----------
    image : ndarray
        The image as observed.
    psf : PSF or ndarray
        Its PSF: ``PSF(shape='auto')`` measures it from the image's stars
        (:func:`astrosr.psf_measure.measure_psf`); any other PSF, or a kernel
        array, states it.
    target_fwhm : float
        The output PSF's FWHM in output pixels; 0: none declared (the
        image's PSF itself is removed).
    scale : int
        Output pixels per input pixel (the target is ``target_fwhm / scale`` input pixels).
    header : astropy.io.fits.Header, optional
        The image's header (``SATURATE`` for the measurement).
    name : str
        The image's name in messages.
    ignore_psf_check : bool
        Skip the two refusals (a stated PSF broader than the stars; nothing to deblur).
    model_info : dict, optional
        The model's checkpoint info: a kernel outside its training range is noted.
    psf_options : PsfOptions, optional
        How ``auto`` measures.
    grid : int
        With ``auto``: also measure the PSF per region of a ``grid`` x
        ``grid`` grid (``regions`` of the result), each matched to the one
        output PSF (a Moffat of ``target_fwhm`` with the whole image's beta).
        A region with too few stars takes the whole image's PSF; one already
        at the output PSF gets a kernel of at least 1.1 x its FWHM (regions
        are not refused: the image is, by the whole-image check).

    Returns
    -------
    PSFMatch

    Raises
    ------
    InputError
        A refused request (the message names the image and both FWHMs), or
        an ``auto`` PSF the image's stars cannot give.
    """
    if isinstance(psf, PSF) and psf.shape == "auto":
        from .psf_measure import measure_psf

        measured = measure_psf(image, psf_options, header=header, name=name, grid=grid)
        described = measured.describe() + (f"; per region of a {grid}x{grid} grid" if grid > 1 else "")
        match = _match(measured.kernel, measured.fwhm, measured.beta, "moffat", True, "measured", described,
                       measured.n_stars, target_fwhm, scale, name, ignore_psf_check, model_info,
                       stars_fwhm=measured.resolution[1] if measured.resolution else None)
        match.resolution = measured.resolution
        for note in measured.notes:  # not refused: what the measurement found goes into the output's HISTORY
            match.notes.append(note)
            log.warning("%s: %s", name, note)
        match.regions = [_region(cell, measured, target_fwhm, scale, k) for k, cell in enumerate(measured.grid)]
        return match
    check_grid(grid, psf)
    from .psf import kernel_and_fwhm

    kernel, image_fwhm = kernel_and_fwhm(psf)
    shape = psf.shape if isinstance(psf, PSF) and psf.shape in ("moffat", "gaussian") else "moffat"
    beta = float(psf.beta) if isinstance(psf, PSF) and psf.shape == "moffat" else None
    described = psf.describe() if isinstance(psf, PSF) else f"kernel {kernel.shape[0]}x{kernel.shape[1]}"
    resolution = () if ignore_psf_check else _check_stated(image, kernel, name)
    match = _match(kernel, image_fwhm, beta, shape, False, "stated", described, 0, target_fwhm, scale, name,
                   ignore_psf_check, model_info)
    match.resolution = resolution
    return match


def _region(cell, measured, target_fwhm, scale, k):
    """``((y0, y1, x0, x1), PSFMatch)`` of one grid region of a measurement."""
    own = bool(np.isfinite(cell["fwhm"]))
    fwhm = cell["fwhm"] if own else measured.fwhm
    if target_fwhm:
        fwhm = max(fwhm, 1.1 * target_fwhm / scale)
    kernel = moffat_kernel(fwhm, cell["beta"] if own else measured.beta,
                           ellipticity=cell["ellipticity"] if own else measured.ellipticity,
                           angle=cell["angle"] if own else measured.angle, size=measured.kernel.shape[0])
    match = _match(kernel, fwhm, measured.beta, "moffat", True, "measured", f"region {k}", cell["n_stars"],
                   target_fwhm, scale, "region", True, None)
    return (cell["y0"], cell["y1"], cell["x0"], cell["x1"]), match


def _match(kernel, image_fwhm, beta, shape, integrated, source, described, n_stars, target_fwhm, scale, name,
           ignore_psf_check, model_info, stars_fwhm=None):
    """The PSFMatch of an image PSF ``kernel``: the nothing-to-deblur check, the output PSF, the training-range note.

    ``stars_fwhm``: the image's stars as the resolution figure measures them, for the refusal's message.
    """
    notes = []
    if target_fwhm:
        target_in = target_fwhm / scale
        out_beta = beta if beta is not None else 3.0
        output = _output_kernel(shape, target_in, out_beta, kernel.shape[0], integrated=integrated)
        if image_fwhm <= target_in:
            if not ignore_psf_check:
                hint = (f"; at {image_fwhm:.2f} px it is undersampled: sharper needs super-resolution onto a finer "
                        "grid (an x2 model)" if image_fwhm < UNDERSAMPLED_FWHM else "")
                # a measured (pixel-integrated) Moffat's FWHM is far below what an undersampled image's stars show
                seen = (" before pixel integration" if integrated else "") + (
                    f"; its stars measure {stars_fwhm:.2f} px" if stars_fwhm else "")
                raise InputError(f"{name}: its PSF ({source}, FWHM {image_fwhm:.2f} px{seen}) is already at or below the "
                                 f"output PSF (FWHM {target_in:.3g} input px): nothing to deblur (target_fwhm below "
                                 f"{image_fwhm * scale:.2f} would sharpen it){hint}")
            # overridden: deconvolving to a broader PSF is no restoration; convolve to it (PSF homogenisation)
            to_output = matching_kernel(output, kernel)
            notes.append(f"its PSF (FWHM {image_fwhm:.2f} px) is at or below the output PSF ({target_in:.3g} px): "
                         "convolved to the output PSF, not deblurred")
            log.warning("%s: %s", name, notes[-1])
            return PSFMatch(to_output, measure_fwhm(np.clip(to_output, 0.0, None)), image_fwhm, beta, source,
                            described, n_stars, float(target_fwhm), shape, out_beta if shape == "moffat" else None,
                            notes, output_kernel=output, convolve=True)
        removed = matching_kernel(kernel, output)
        match = PSFMatch(removed, measure_fwhm(np.clip(removed, 0.0, None)), image_fwhm, beta, source, described,
                         n_stars, float(target_fwhm), shape, out_beta if shape == "moffat" else None, notes,
                         output_kernel=output)
    else:
        match = PSFMatch(kernel, measure_fwhm(kernel), image_fwhm, beta, source, described, n_stars, notes=notes)
    span = trained_range(model_info)
    if span is not None and not (0.9 * span[0] <= match.kernel_fwhm <= 1.1 * span[1]):
        notes.append(f"kernel FWHM {match.kernel_fwhm:.2f} px is outside the model's training range "
                     f"{span[0]:.2f}-{span[1]:.2f} px: expect a weaker restoration")
        log.warning("%s: %s", name, notes[-1])
    return match


#: the output's stars may differ from the declared output PSF drawn at them by this much before deblur says so
OUTPUT_TOLERANCE = 0.15


def check_output(image: np.ndarray, restored: np.ndarray, match: PSFMatch, *, name: str = "image") -> None:
    """Measure the restoration's stars against the declared output PSF; a note when it falls short.

    At the input's resolution stars (:mod:`astrosr.stars`; too few: a note
    that the declared PSF is not checked), the resolution FWHM of the input, of ``restored`` and of the
    declared output PSF drawn at the same stars go into ``match.stars`` (and
    its cards); when the output's differs from the declared one by more than
    :data:`OUTPUT_TOLERANCE`, a note (a warning line and a HISTORY line) says
    by how much, so a header never declares a PSF its stars do not have
    without saying so. Images on the input's pixel grid only.
    """
    from .stars import resolution_stars, star_fwhm

    if match.target_fwhm is None or match.output_kernel is None or restored.shape != image.shape:
        return
    stars, observed = match.resolution or (resolution_stars(image), None)  # found once, by the earlier checks
    values = {} if len(stars) == 0 else {
        "input": observed or star_fwhm(image, stars), "output": star_fwhm(restored, stars),
        "declared": rendered_fwhm(match.output_kernel, stars)}
    if not values or any(v is None for v in values.values()):
        # said, not skipped in silence: the header declares a PSF that nothing here measured
        why = (f"{len(stars)} resolution star(s), too few" if not values
               else f"none of its {len(stars)} resolution stars measurable")
        match.notes.append(f"the output PSF is declared, not checked: {why} to measure the output's stars against it")
        log.warning("%s: %s", name, match.notes[-1])
        return
    match.stars = values
    ratio = values["output"] / values["declared"]
    if abs(ratio - 1.0) > OUTPUT_TOLERANCE:
        wider = values["output"] > values["input"]
        match.notes.append(f"its stars come out at {values['output']:.2f} px FWHM (from {values['input']:.2f}), "
                           f"the declared output PSF at {values['declared']:.2f} px at the same stars ({ratio:.2f} x): "
                           + ("WIDER than they went in: do not use this restoration for its stars" if wider else
                              f"the restoration {'falls short of' if ratio > 1 else 'overshoots'} the declared PSF"))
        log.warning("%s: %s", name, match.notes[-1])


def _check_stated(image, kernel, name):
    from .stars import resolution_stars, star_fwhm

    stars = resolution_stars(image)
    if len(stars) == 0:
        return stars, None  # no resolution stars: nothing to check the stated PSF against
    observed, stated = star_fwhm(image, stars), rendered_fwhm(kernel, stars)
    if observed is not None and stated is not None and observed < CHECK_RATIO * stated:
        raise InputError(f"{name}: its stars measure {observed:.2f} px FWHM by a Gaussian fit, narrower than the "
                         f"{stated:.2f} px of the stated PSF drawn and fitted at the same stars (below {CHECK_RATIO:g} x): "
                         "that PSF cannot have blurred this image; state its own PSF, measure it (psf auto), or "
                         "ignore_psf_check=True")
    return stars, observed
