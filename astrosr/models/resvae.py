"""The project's residual VAE: the model that restores images in practice.

It predicts a correction to its own input rather than an image, so an
untrained model is already the identity and training starts from BLU instead of
from noise; it is told the PSF (a Wiener-deconvolved input channel) and the
degradation (FiLM on ``[psf_fwhm, noise]``), so one set of weights serves a
range of PSFs; its latent is spatial, so any tile size works and posterior
draws vary locally.

Two forward forms give the same function. Training (:meth:`ResVAE.forward`)
uses the plain form that autograd differentiates. The inference entry points
(:meth:`ResVAE.restore`, :meth:`ResVAE.sample`) use the fused form: one
condition row for a batch whose rows are equal (the tiles of one image),
folded into each block's first convolution, intermediates updated in place.
The two differ by float32 rounding only, and the choice is made by the entry
point, never by the autograd mode. Both forms, the posterior and the noise
head share the encoder and decoder, so they are kept together in one module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..operators import box_blur_kernel, noise_level, wiener_filter
from ..psf import moffat_psf
from .layers import Film, Output, ResBlock, kl_between, kl_per_pixel

__all__ = ["ResVAE"]

#: Picks the latent from the posterior's ``(mu, logvar)``: its mean, or a draw
LatentChoice = Callable[[Tensor, Tensor], Tensor]


class ResVAE(nn.Module):
    """Residual VAE: a half-resolution U-Net predicting a correction to its input.

    The input (nearest-upsampled by ``scale``, plus optionally its Wiener
    deconvolution) goes through asinh intensity, PixelUnshuffle(2), an encoder
    of ``levels`` resolutions of 3x3-conv residual blocks, a spatial Gaussian
    latent at the bottleneck (mean and log-variance maps), a decoder with
    additive U-Net skips and PixelShuffle(2). The zero-initialised last layer
    makes the untrained model the identity: ``y = asinh(blu/a) + correction``.
    FiLM on every block conditions it on ``cond = [psf_fwhm, noise]``.

    Parameters
    ----------
    scale : int
        Super-resolution factor S (output ``h*S x w*S``).
    width : int
        Channels at the first level (doubled per level).
    levels : int
        Resolutions of the U-Net (the first is half the output resolution).
    blocks : int
        Residual blocks per level in the encoder and in the decoder.
    mid_blocks : int
        Residual blocks at the bottleneck (split around the latent).
    latent : int
        Channels of the spatial latent.
    asinh_scale : float
        ``a`` of the intensity transform ``asinh(t / a)``, in model units.
    wiener : bool
        Add the Wiener-deconvolved tile as a second input channel (known PSF).
    wiener_balance : float
        Regularisation of that Wiener filter.
    condition : bool
        FiLM-condition the blocks on ``cond``.
    psf_fwhm, psf_beta : float
        The Moffat PSF assumed when a call gives no ``psf`` / ``cond``.
    posterior : bool
        Conditional VAE: in training the latent is drawn from a posterior
        that sees BLU and ORI (a small encoder of the residual ORI needs),
        and its KL is taken against the prior the encoder infers from BLU
        alone; restoration decodes the prior mean and draws sample the prior.
        Without it the latent is inferred from BLU alone against N(0, 1)
        (the original design, whose decoder learns to ignore it).
    noise_head : bool
        A per-pixel std ``b`` (model units, linear) of the restoration's
        error against the true sky (ORI's own noise apart), from the
        decoder's last features, the restoration and the network's input;
        each posterior draw adds Gaussian noise of that std. It reads
        detached tensors, so it never changes the restoration itself.

    Examples
    --------
    An untrained model restores a tile to itself; training calls the model,
    restoration calls :meth:`restore` (in ``torch.inference_mode``).

    >>> import torch
    >>> from astrosr.models import ResVAE
    >>> model = ResVAE(width=4, levels=2)
    >>> blu = torch.rand(2, 1, 32, 32)
    >>> with torch.inference_mode():
    ...     sr = model.restore(blu)
    >>> sr.shape, bool((sr - blu).abs().max() < 1e-6)
    (torch.Size([2, 1, 32, 32]), True)
    >>> y, kl, *_ = model(blu, cond=torch.tensor([[4.0, 0.01]] * 2))
    >>> y.shape, kl.ndim
    (torch.Size([2, 1, 32, 32]), 0)
    >>> with torch.inference_mode():
    ...     model.sample(blu, 3).shape
    torch.Size([3, 2, 1, 32, 32])
    """

    native_tile = None

    def __init__(
        self,
        *,
        scale: int = 1,
        width: int = 16,
        levels: int = 3,
        blocks: int = 1,
        mid_blocks: int = 2,
        latent: int = 4,
        asinh_scale: float = 0.1,
        wiener: bool = True,
        wiener_balance: float = 0.1,
        condition: bool = True,
        psf_fwhm: float = 4.0,
        psf_beta: float = 3.0,
        posterior: bool = False,
        noise_head: bool = False,
    ) -> None:
        super().__init__()
        checks = {"scale": scale, "width": width, "levels": levels, "latent": latent, "mid_blocks": mid_blocks}
        for key, value in checks.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"resvae {key} must be a positive integer, got {value!r}")
        if not isinstance(blocks, int) or blocks < 0:
            raise ConfigError(f"resvae blocks must be an integer >= 0, got {blocks!r}")
        if not asinh_scale > 0:
            raise ConfigError(f"resvae asinh_scale must be > 0, got {asinh_scale!r}")
        if not wiener_balance > 0:
            raise ConfigError(f"resvae wiener_balance must be > 0, got {wiener_balance!r}")
        self.config = {
            "scale": scale,
            "width": width,
            "levels": levels,
            "blocks": blocks,
            "mid_blocks": mid_blocks,
            "latent": latent,
            "asinh_scale": float(asinh_scale),
            "wiener": bool(wiener),
            "wiener_balance": float(wiener_balance),
            "condition": bool(condition),
            "psf_fwhm": float(psf_fwhm),
            "psf_beta": float(psf_beta),
            "posterior": bool(posterior),
            "noise_head": bool(noise_head),
        }
        self.scale = scale
        self.multiple = 2**levels
        self.register_buffer(
            "default_psf", torch.tensor(moffat_psf(psf_fwhm, beta=psf_beta), dtype=torch.float32), persistent=False
        )
        widths = [width * 2**i for i in range(levels)]
        in_ch = 4 * (2 if wiener else 1)
        self.head = nn.Conv2d(in_ch, widths[0], 3, padding=1)
        self.enc = nn.ModuleList(nn.ModuleList(ResBlock(c) for _ in range(blocks)) for c in widths)
        self.down = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(levels - 1))
        mid = widths[-1]
        self.mid_in = nn.ModuleList(ResBlock(mid) for _ in range((mid_blocks + 1) // 2))
        self.mid_out = nn.ModuleList(ResBlock(mid) for _ in range(mid_blocks // 2))
        self.to_mu = nn.Conv2d(mid, latent, 3, padding=1)
        self.to_logvar = nn.Conv2d(mid, latent, 3, padding=1)
        self.from_latent = nn.Conv2d(latent, mid, 1)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(levels - 1))
        self.dec = nn.ModuleList(nn.ModuleList(ResBlock(c) for _ in range(blocks)) for c in widths)
        self.tail = nn.Conv2d(widths[0], 4, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        if posterior:
            # the residual ORI asks for, taken down to the latent's grid beside the prior's features
            self.post_head = nn.Conv2d(4, widths[0], 3, padding=1)
            self.post_down = nn.ModuleList(
                nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(levels - 1))
            self.post_out = nn.Conv2d(2 * mid, 2 * latent, 3, padding=1)
        if noise_head:
            # reads the decoder's last features, the restoration and the network's input (all detached), at
            # half resolution; dilations reach ~30 px, so that crowding and a bright neighbour's wings count
            c = 2 * widths[0]
            self.scale_head = nn.Sequential(
                nn.Conv2d(widths[0] + 4 + in_ch, c, 3, padding=1), nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=2, dilation=2), nn.ReLU(),
                nn.Conv2d(c, c, 3, padding=4, dilation=4), nn.ReLU(),
                nn.Conv2d(c, 4, 3, padding=1))
            nn.init.zeros_(self.scale_head[-1].weight)
            nn.init.constant_(self.scale_head[-1].bias, -4.0)  # a small scale to start from (model units)
        enc_widths = [c for c in widths for _ in range(blocks)]
        film_widths = enc_widths + [mid] * mid_blocks + enc_widths[::-1]
        self.film = Film(film_widths) if condition else None

    # -- intensity transform ------------------------------------------------
    def to_intensity(self, t: Tensor) -> Tensor:
        """Model units -> intensity space: ``asinh(t / a)`` (linear near 0, logarithmic on bright cores)."""
        return torch.asinh(t / self.config["asinh_scale"])

    def from_intensity(self, y: Tensor) -> Tensor:
        """Intensity space -> model units: ``a sinh(y)``; never clamped."""
        # in float64: float32 sinh differs between torch's vector loop and its scalar tail, so
        # its last bit moved with the thread count; rounded from float64 the result does not
        return self.config["asinh_scale"] * torch.sinh(y.double()).to(y.dtype)

    # -- network ------------------------------------------------------------
    def _pad(self, t):
        """``t`` padded on the bottom and right to a multiple of the U-Net's ``2**levels``."""
        m = self.multiple
        hh, ww = t.shape[-2:]
        py, px = (-hh) % m, (-ww) % m
        if not (py or px):
            return t
        mode = "reflect" if min(hh, ww) > max(py, px) else "replicate"
        return F.pad(t, (0, px, 0, py), mode=mode)

    def _inputs(self, blu, psf, cond, fused):
        """Upsampled input in intensity space, network input tensor (padded), FiLM params."""
        b, _, h, w = blu.shape
        x = F.interpolate(blu, scale_factor=self.scale, mode="nearest") if self.scale > 1 else blu
        base = self.to_intensity(x)
        channels = [base]
        if self.config["wiener"]:
            if psf is None:
                psf = self.default_psf.expand(b, *self.default_psf.shape)
            psf = psf.to(blu.dtype)
            if self.scale > 1:
                psf = box_blur_kernel(psf, self.scale)
            channels.append(self.to_intensity(wiener_filter(x, psf, balance=self.config["wiener_balance"])))
        net_in = self._pad(torch.cat(channels, dim=1))
        film = None
        if self.film is not None:
            if cond is None:
                fwhm = blu.new_full((b,), self.config["psf_fwhm"])
                cond = torch.stack([fwhm, noise_level(blu)], dim=1)
            cond = cond.to(blu.dtype)
            if fused and (cond.shape[0] == 1 or cond.stride(0) == 0 or bool((cond == cond[:1]).all())):
                cond = cond[:1]  # one row for the batch (restoring one image): lets the blocks fold FiLM
            film = self.film(cond)
        return base, net_in, film

    def _encode(self, net_in, films, fused):
        # channels-last convolutions run ~25% faster on CPU (oneDNN's native layout)
        h = self.head(F.pixel_unshuffle(net_in, 2).contiguous(memory_format=torch.channels_last))
        skips = []
        for level, layers in enumerate(self.enc):
            for layer in layers:
                h = layer(h, next(films, None), fused=fused)
            if level < len(self.down):
                skips.append(h)
                h = self.down[level](h)
        for layer in self.mid_in:
            h = layer(h, next(films, None), fused=fused)
        return h, skips, self.to_mu(h), self.to_logvar(h).clamp(-20.0, 10.0)

    def _decode(self, h, skips, z, films, fused):
        # bias added apart: oneDNN's fused-bias 1x1 conv rounds differently with the thread
        # count, and deblur promises the same bits serial, in processes or on Dask
        h = h + F.conv2d(z, self.from_latent.weight) + self.from_latent.bias[:, None, None]
        for layer in self.mid_out:
            h = layer(h, next(films, None), fused=fused)
        for level in reversed(range(len(self.dec))):
            if level < len(self.up):
                h = self.up[level](h) + skips[level]
            for layer in self.dec[level]:
                h = layer(h, next(films, None), fused=fused)
        return F.pixel_shuffle(self.tail(h), 2), h

    def _log_scale(self, h, y, net_in):
        """The noise head's log scale (model units) from detached features, restoration ``y`` and input (padded)."""
        inputs = torch.cat([h, F.pixel_unshuffle(y, 2), F.pixel_unshuffle(net_in, 2)], dim=1).detach()
        log_scale = self.scale_head(inputs.contiguous(memory_format=torch.channels_last))
        return F.pixel_shuffle(log_scale, 2).clamp(-12.0, 3.0)

    def _posterior(self, h, base, ori):
        """``(mu, logvar)`` of the training-time posterior: the prior's features and the residual ORI needs."""
        residual = self._pad(self.to_intensity(ori) - base)
        r = F.relu(self.post_head(F.pixel_unshuffle(residual, 2)))
        for down in self.post_down:
            r = F.relu(down(r))
        mu, logvar = self.post_out(torch.cat([h, r], dim=1)).chunk(2, dim=1)
        return mu, logvar.clamp(-20.0, 10.0)

    def _run(
        self, blu: Tensor, psf: Tensor | None, cond: Tensor | None, choices: Sequence[LatentChoice], *, fused: bool,
        ori: Tensor | None = None, want_scale: bool = True,
    ) -> tuple[list[tuple[Tensor, Tensor | None]], Tensor, Tensor | None]:
        """``([(y, log_scale), ...], kl, kl_prior)``: outputs in intensity space, one per latent choice.

        A choice is a callable of ``(mu, logvar)``: of the posterior when
        ``ori`` is given (training a conditional model), else of the prior.
        The encoder runs once for all choices; ``fused`` selects the blocks'
        inference form (and one condition row for a batch of equal rows).
        """
        base, net_in, film = self._inputs(blu, psf, cond, fused)
        film = film or []
        n_enc = sum(len(layers) for layers in self.enc) + len(self.mid_in)
        h, skips, mu, logvar = self._encode(net_in, iter(film[:n_enc]), fused)
        hh, ww = base.shape[-2:]
        n_pixels = hh * ww
        if ori is not None:
            mu_q, logvar_q = self._posterior(h, base, ori)
            # KL balancing: the posterior is held to the prior at the run's beta (so that it can carry
            # information), while the prior follows the posterior at full weight (so that its draws
            # stay where the decoder was trained)
            kl = kl_between(mu_q, logvar_q, mu.detach(), logvar.detach(), n_pixels)
            kl_prior = kl_between(mu_q.detach(), logvar_q.detach(), mu, logvar, n_pixels)
            mu, logvar = mu_q, logvar_q
        else:
            kl, kl_prior = kl_per_pixel(mu, logvar, n_pixels), None
        outs = []
        padded = self._pad(base)
        with_scale = self.config["noise_head"] and want_scale
        for choose in choices:
            corr, last = self._decode(h, skips, choose(mu, logvar), iter(film[n_enc:]), fused)
            y = padded + corr
            log_scale = self._log_scale(last, y, net_in)[..., :hh, :ww] if with_scale else None
            outs.append((y[..., :hh, :ww], log_scale))
        return outs, kl, kl_prior

    def forward(
        self, blu: Tensor, *, psf: Tensor | None = None, cond: Tensor | None = None, sample: bool = True,
        ori: Tensor | None = None,
    ) -> Output:
        """The training form (whatever the autograd mode): an :class:`~astrosr.models.layers.Output`.

        ``y`` is ``(B, 1, h*S, w*S)`` in intensity space (``log_scale``, of
        the noise head, is of model units). A conditional model
        (``posterior``) needs ``ori`` (model units, ``(B, 1, h*S, w*S)``): its
        latent is drawn from the posterior and ``y_mean`` is the decode of the
        prior mean; the other models ignore ``ori``.
        """

        def draw(mu, logvar):
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu

        if not self.config["posterior"]:
            ((y, log_scale),), kl, _ = self._run(blu, psf, cond, [draw], fused=False)
            return Output(y, kl, None, log_scale)
        if ori is None:
            raise ConfigError("resvae posterior: training needs ori (the posterior sees BLU and ORI)")
        ((y, _),), kl, kl_prior = self._run(blu, psf, cond, [draw], fused=False, ori=ori, want_scale=False)
        # the noise head reads the prior-mean decode, the restoration itself, whose error sigma must cover
        ((y_mean, log_scale),), _, _ = self._run(blu, psf, cond, [lambda mu, logvar: mu], fused=False)
        return Output(y, kl, y_mean, log_scale, kl_prior)

    def restore(self, blu: Tensor, *, psf: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """Restoration ``(B, 1, h*S, w*S)`` in model units, unclamped: the decode of the prior's mean latent.

        The inference form, whatever the autograd mode (call it in
        ``torch.inference_mode``: it is not meant to be differentiated).
        """
        ((y, _),), _, _ = self._run(blu, psf, cond, [lambda mu, logvar: mu], fused=True, want_scale=False)
        return self.from_intensity(y)

    def sample(self, blu: Tensor, n: int, *, psf: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """``n`` draws ``(n, B, 1, h*S, w*S)`` in model units: decodes of latents drawn from the prior.

        The encoder runs once; inference form. BLU is all a draw sees. The
        noise head's part of a draw is added by the restoration path, after
        the consistency step whose error it learned (:meth:`error_std`).
        """

        def draw(mu, logvar):
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp()

        outs, _, _ = self._run(blu, psf, cond, [draw] * n, fused=True, want_scale=False)
        return torch.stack([self.from_intensity(y) for y, _ in outs])

    def error_std(self, blu: Tensor, *, psf: Tensor | None = None, cond: Tensor | None = None) -> Tensor | None:
        """The noise head's per-pixel std ``(B, 1, h*S, w*S)`` (model units) of the restoration's error, or None.

        The error, through the consistency step, of :meth:`restore`'s output
        against the true sky (ORI's own noise apart); inference form.
        """
        if not self.config["noise_head"]:
            return None
        ((_, log_scale),), _, _ = self._run(blu, psf, cond, [lambda mu, logvar: mu], fused=True)
        return log_scale.exp()
