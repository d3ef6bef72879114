"""Building blocks of the networks: FiLM conditioning, the residual block, the latent's KL.

They live apart from the models so that both networks reduce the KL the same
way (their ``beta`` then means the same thing), and so that the residual
block's two forms sit side by side: the training form, which autograd
differentiates, and the inference form (``fused=True``), which folds FiLM into
the first convolution and updates in place. The caller picks the form
explicitly; it never follows the autograd mode.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Film", "ResBlock", "Output", "kl_per_pixel", "kl_between"]

class Output(NamedTuple):
    """What a model's training forward returns; the loss (:func:`astrosr.losses.batch_loss`) reads it.

    Attributes
    ----------
    y : Tensor (B, 1, H, W)
        The reconstruction trained on, in the model's intensity space: the
        decode of a latent draw (of the posterior, for a conditional model).
    kl : Tensor
        The latent's KL term (scalar, per output pixel, batch mean).
    y_mean : Tensor or None
        A conditional model's decode of its prior mean: what restoration
        returns, trained alongside ``y`` so that it stays a good estimate.
    log_scale : Tensor or None
        The noise head's per-pixel log std of the restoration's error (model units).
    kl_prior : Tensor or None
        A conditional model's KL(posterior || prior) with the posterior held
        fixed: the same value as ``kl``, whose gradient reaches only the prior.
    """

    y: Tensor
    kl: Tensor
    y_mean: Tensor | None = None
    log_scale: Tensor | None = None
    kl_prior: Tensor | None = None


#: One block's FiLM parameters: ``(gamma, beta)``, each ``(B or 1, C, 1, 1)``
FilmParams = tuple[Tensor, Tensor]


def kl_per_pixel(mu: Tensor, logvar: Tensor, n_pixels: int) -> Tensor:
    """KL(N(mu, var) || N(0, 1)) summed per sample over latent elements / output pixels, batch mean.

    With a pixel-mean reconstruction loss, ``beta = 1`` then weighs the two
    terms exactly as the seed's summed loss did.

    Parameters
    ----------
    mu, logvar : Tensor (B, ...)
        Mean and log-variance of the latent.
    n_pixels : int
        Output pixels per sample.

    Returns
    -------
    Tensor
        A scalar.
    """
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1).mean() / n_pixels


def kl_between(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor, n_pixels: int) -> Tensor:
    """KL(q || p) of two diagonal Gaussians, reduced like :func:`kl_per_pixel` (which is p = N(0, 1)).

    Examples
    --------
    >>> mu, logvar = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    >>> zero = torch.zeros_like(mu)
    >>> bool(torch.isclose(kl_between(mu, logvar, zero, zero, 16), kl_per_pixel(mu, logvar, 16)))
    True
    """
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) * (-logvar_p).exp() - 1.0)
    return kl.flatten(1).sum(dim=1).mean() / n_pixels


class Film(nn.Module):
    """Maps the degradation ``cond`` to per-block (gamma, beta); zero-initialised (identity).

    Parameters
    ----------
    widths : iterable of int
        Channels of each conditioned block, in the order the blocks run.
    hidden : int
        Width of the hidden layer.
    """

    def __init__(self, widths: Iterable[int], hidden: int = 32) -> None:
        super().__init__()
        self.widths = list(widths)
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, 2 * sum(self.widths)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, cond: Tensor) -> list[FilmParams]:
        """One ``(gamma, beta)`` per block from ``cond`` ``(B, 2)`` = ``[psf_fwhm, noise]``."""
        # FWHM around 4 px and noise over decades: centre both near 0
        fwhm = cond[:, 0] / 4.0 - 1.0
        noise = torch.log10(cond[:, 1].clamp_min(0.0) + 1e-3) + 1.5
        params = self.net(torch.stack([fwhm, noise], dim=1))
        out, start = [], 0
        for c in self.widths:
            gamma, beta = params[:, start : start + c], params[:, start + c : start + 2 * c]
            out.append((gamma[:, :, None, None], beta[:, :, None, None]))
            start += 2 * c
        return out


class ResBlock(nn.Module):
    """``x + conv(relu(film(conv(x))))``: plain 3x3 convolutions (fastest per FLOP on a CPU).

    Parameters
    ----------
    channels : int
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)

    def forward(self, x: Tensor, film: FilmParams | None = None, *, fused: bool = False) -> Tensor:
        """The block on ``x``; ``fused`` selects the inference form (see :meth:`fused_forward`)."""
        if fused:
            return self.fused_forward(x, film)
        h = self.conv1(x)
        if film is not None:
            gamma, beta = film
            h = h * (1.0 + gamma) + beta
        return x + self.conv2(F.relu(h))

    def fused_forward(self, x: Tensor, film: FilmParams | None = None) -> Tensor:
        """The same block for inference: FiLM folded into conv1, no full-size temporaries.

        With one FiLM row for the batch, ``conv(x, W) (1 + g) + b`` is
        ``conv(x, W (1 + g))`` with bias ``bias (1 + g) + b``: two passes over
        the feature map fewer (these elementwise passes are memory-bound on a
        CPU); the result differs from the training form by float32 rounding.
        It updates its intermediates in place, so it is meant for use without
        autograd (``torch.inference_mode``).
        """
        if film is not None and film[0].shape[0] == 1:
            g = 1.0 + film[0][0, :, 0, 0]
            weight = self.conv1.weight * g[:, None, None, None]
            h = F.conv2d(x, weight, self.conv1.bias * g + film[1][0, :, 0, 0], padding=1)
        else:
            h = self.conv1(x)
            if film is not None:
                h = h * (1.0 + film[0]) + film[1]
        out = self.conv2(F.relu_(h))
        return out.add_(x)
