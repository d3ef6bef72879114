"""The two model families: the seed ``vae`` and the project's residual ``resvae``.

Both share one interface (used by train, restore, evaluate and deblur)::

    y, kl = model(blu, psf=None, cond=None, sample=True)   # y in intensity space
    sr = model.restore(blu, psf=None, cond=None)            # model units, no clamp
    draws = model.sample(blu, n, psf=None, cond=None)       # (n, B, 1, H, W)

``blu`` is a ``(B, 1, h, w)`` batch in model units (the BLU image mapped by its
own 0.5/99.9 percentiles, unclipped); ``psf`` is ``(B, k, k)``; ``cond`` is
``(B, 2)`` = ``[psf_fwhm_px, noise_std_model_units]``. The training loss is
``recon(y, model.to_intensity(ori)) + beta * kl``.

KL reduction (the same for both models): the KL divergence of the latent is
summed over latent elements, divided by the number of output pixels and
averaged over the batch, so with a pixel-mean reconstruction loss ``beta = 1``
weighs the two exactly as the seed's summed loss did.
"""

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from .psf import moffat_psf
from .errors import ConfigError

__all__ = ["VAE", "ResVAE", "MODELS", "build_model", "wiener_filter", "blur", "noise_level"]


def _kl_per_pixel(mu, logvar, n_pixels):
    """KL(N(mu, var) || N(0, 1)) summed per sample over latent elements / output pixels, batch mean."""
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1).mean() / n_pixels


def noise_level(blu):
    """Robust per-tile noise std ``(B,)``: 1.4826 x the median absolute deviation.

    Stands in for the pairs file's per-image sigma-clipped std of BLU when a
    caller gives no ``cond``.
    """
    flat = blu.flatten(1)
    med = flat.median(dim=1, keepdim=True).values
    return 1.4826 * (flat - med).abs().median(dim=1).values


def _otf(kernel, shape):
    """Transfer function of centred kernels ``(B, k, k)`` on an rFFT grid of ``shape``."""
    b, ky, kx = kernel.shape
    padded = kernel.new_zeros(b, *shape)
    padded[:, :ky, :kx] = kernel
    padded = torch.roll(padded, shifts=(-(ky // 2), -(kx // 2)), dims=(1, 2))
    return torch.fft.rfft2(padded)


#: Wiener filters of recent (kernel, grid) pairs: a whole image's tiles share one PSF and size
_FILTER_CACHE = {}


def _single_kernel(psf):
    """True when every row of ``psf`` (B, k, k) is the same kernel (one row, or expanded from one)."""
    return psf.shape[0] == 1 or psf.stride(0) == 0


def _wiener_transfer(psf, shape, balance):
    """``conj(H) / (|H|^2 + balance |L|^2)`` on an rFFT grid of ``shape``, one plane per kernel row."""
    otf = _otf(psf, shape)
    lap = psf.new_tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
    reg = _otf(lap[None], shape)
    return otf.conj() / (otf.abs().pow(2) + balance * reg.abs().pow(2))


def _shared_transfer(psf, shape, balance):
    """The Wiener filter of one kernel broadcast over a batch, cached by kernel values and grid."""
    one = psf[:1]
    if one.requires_grad:
        return _wiener_transfer(one, shape, balance)
    key = (one.detach().cpu().numpy().tobytes(), tuple(one.shape), tuple(shape), float(balance), one.dtype, str(one.device))
    if key not in _FILTER_CACHE:
        if len(_FILTER_CACHE) >= 8:  # a handful of tile shapes per image: keep the cache small
            _FILTER_CACHE.pop(next(iter(_FILTER_CACHE)))
        _FILTER_CACHE[key] = _wiener_transfer(one, shape, balance)
    return _FILTER_CACHE[key]


def wiener_filter(x, psf, *, balance=0.1):
    """Wiener/Tikhonov deconvolution with a Laplacian regulariser, as ``skimage.restoration.wiener``.

    ``X = conj(H) Y / (|H|^2 + balance |L|^2)`` on the reflect-padded tile (pad
    = kernel half-size), cropped back: the network's physically grounded first
    guess (Tikhonet, Sureau et al. 2020).

    Parameters
    ----------
    x : Tensor (B, 1, H, W)
    psf : Tensor (B, k, k)
        Unit-sum kernels with odd sides.
    balance : float
        Regularisation weight.
    """
    k = psf.shape[-1]
    pad = k // 2
    h, w = x.shape[-2:]
    mode = "reflect" if min(h, w) > pad else "replicate"
    xp = F.pad(x[:, 0], (pad, pad, pad, pad), mode=mode) if pad else x[:, 0]
    shape = xp.shape[-2:]
    psf = psf.to(x.dtype)
    # one PSF for the whole batch (restoring an image): its filter once, not once per tile
    filt = _shared_transfer(psf, shape, balance) if _single_kernel(psf) else _wiener_transfer(psf, shape, balance)
    out = torch.fft.irfft2(filt * torch.fft.rfft2(xp), s=shape)
    return out[:, None, pad : pad + h, pad : pad + w]


def blur(x, psf, *, scale=1):
    """``PSF * x`` per sample (edges extended, by FFT), block-averaged by ``scale``: the forward model."""
    k = psf.shape[-1]
    pad = k // 2
    h, w = x.shape[-2:]
    xp = F.pad(x[:, 0], (pad, pad, pad, pad), mode="replicate")
    out = torch.fft.irfft2(torch.fft.rfft2(xp) * _otf(psf.to(x.dtype), xp.shape[-2:]), s=xp.shape[-2:])
    out = out[:, None, pad : pad + h, pad : pad + w]
    return F.avg_pool2d(out, scale) if scale > 1 else out


class VAE(nn.Module):
    """The seed design, exactly: a fully connected-latent VAE on 128x128 tiles.

    Encoder: three stride-2 3x3 convolutions (1 -> 4 -> 16 -> 64, ReLU), flatten
    to 64*16*16, two Linear(16384, latent) heads (mean, log-variance). Decoder:
    Linear(latent, 16384), three ConvTranspose2d(4, 2, 1) (64 -> 16 -> 4 -> 1)
    with ReLU and a final Sigmoid. It trains like the seed, on tiles clipped to
    [0, 1] (CONTRACTS.md 3): its intensity transform is that clip.

    Inputs other than 128x128 (at scale S: 128/S) are cut into whole 128 px
    blocks (reflect-padded) that are restored independently.

    Parameters
    ----------
    latent : int
        Latent dimension (64 in the seed: 3,189,645 parameters).
    scale : int
        Super-resolution factor; the input tile is upsampled bilinearly to 128
        before encoding (the seed is scale 1).
    """

    tile = 128
    native_tile = 128

    def __init__(self, *, latent=64, scale=1):
        super().__init__()
        if int(latent) < 1:
            raise ConfigError(f"vae latent must be >= 1, got {latent}")
        if int(scale) != scale or scale < 1 or self.tile % scale:
            raise ConfigError(f"vae scale must be a positive integer dividing 128, got {scale}")
        self.config = {"latent": int(latent), "scale": int(scale)}
        self.scale = int(scale)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc_mu = nn.Linear(64 * 16 * 16, latent)
        self.fc_logvar = nn.Linear(64 * 16 * 16, latent)
        self.fc_decode = nn.Linear(latent, 64 * 16 * 16)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(64, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 4, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(4, 1, 4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def to_intensity(self, t):
        """Model units -> intensity space: the seed's clip to [0, 1]."""
        return t.clamp(0.0, 1.0)

    def from_intensity(self, y):
        """Intensity space -> model units (identity: the Sigmoid output is already in [0, 1])."""
        return y

    def _blocks(self, blu):
        """Cut ``(B, 1, h, w)`` into 128/S blocks; returns blocks and how to reassemble them."""
        side = self.tile // self.scale
        b, _, h, w = blu.shape
        ny, nx = math.ceil(h / side), math.ceil(w / side)
        py, px = ny * side - h, nx * side - w
        if py or px:
            mode = "reflect" if min(h, w) > max(py, px) else "replicate"
            blu = F.pad(blu, (0, px, 0, py), mode=mode)
        blocks = blu.reshape(b, 1, ny, side, nx, side).permute(0, 2, 4, 1, 3, 5).reshape(-1, 1, side, side)
        return blocks, (b, ny, nx, h, w)

    def _unblocks(self, y, layout):
        b, ny, nx, h, w = layout
        t = self.tile
        y = y.reshape(b, ny, nx, 1, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, 1, ny * t, nx * t)
        return y[..., : h * self.scale, : w * self.scale]

    def _encode(self, blu):
        x = self.to_intensity(blu)
        if self.scale > 1:
            x = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        features = self.encoder(x)
        return self.fc_mu(features), self.fc_logvar(features).clamp(-30.0, 20.0)

    def _decode(self, z):
        return self.decoder(self.fc_decode(z).view(-1, 64, 16, 16))

    def forward(self, blu, *, psf=None, cond=None, sample=True):
        """``(y, kl)``: y ``(B, 1, h*S, w*S)`` in [0, 1]; ``psf`` and ``cond`` are ignored."""
        blocks, layout = self._blocks(blu)
        mu, logvar = self._encode(blocks)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        y = self._decode(z)
        kl = _kl_per_pixel(mu, logvar, self.tile * self.tile) * blocks.shape[0] / blu.shape[0]
        return self._unblocks(y, layout), kl

    def restore(self, blu, *, psf=None, cond=None):
        """Posterior-mean restoration in model units (the decoded mean latent)."""
        y, _ = self(blu, psf=psf, cond=cond, sample=False)
        return self.from_intensity(y)

    def sample(self, blu, n, *, psf=None, cond=None):
        """``n`` posterior draws ``(n, B, 1, h*S, w*S)`` in model units."""
        blocks, layout = self._blocks(blu)
        mu, logvar = self._encode(blocks)
        std = (0.5 * logvar).exp()
        draws = [self._unblocks(self._decode(mu + torch.randn_like(mu) * std), layout) for _ in range(n)]
        return self.from_intensity(torch.stack(draws))


class _Film(nn.Module):
    """Maps the degradation ``cond`` to per-block (gamma, beta); zero-initialised (identity)."""

    def __init__(self, widths, hidden=32):
        super().__init__()
        self.widths = list(widths)
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.SiLU(), nn.Linear(hidden, 2 * sum(self.widths)))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, cond):
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


class _ResBlock(nn.Module):
    """``x + conv(relu(film(conv(x))))``: plain 3x3 convolutions (fastest per FLOP on a CPU)."""

    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        with torch.no_grad():
            self.conv2.weight.mul_(0.1)

    def forward(self, x, film=None):
        if not torch.is_grad_enabled():
            return self._infer(x, film)
        h = self.conv1(x)
        if film is not None:
            gamma, beta = film
            h = h * (1.0 + gamma) + beta
        return x + self.conv2(F.relu(h))

    def _infer(self, x, film):
        """The same block without autograd: FiLM folded into conv1, no full-size temporaries.

        With one FiLM row for the batch, ``conv(x, W) (1 + g) + b`` is
        ``conv(x, W (1 + g))`` with bias ``bias (1 + g) + b``: two passes over
        the feature map fewer (these elementwise passes are memory-bound on a
        CPU); the result differs from the training form by float32 rounding.
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
    """

    native_tile = None

    def __init__(
        self,
        *,
        scale=1,
        width=16,
        levels=3,
        blocks=1,
        mid_blocks=2,
        latent=4,
        asinh_scale=0.1,
        wiener=True,
        wiener_balance=0.1,
        condition=True,
        psf_fwhm=4.0,
        psf_beta=3.0,
    ):
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
        }
        self.scale = scale
        self.multiple = 2**levels
        self.register_buffer(
            "default_psf", torch.tensor(moffat_psf(psf_fwhm, beta=psf_beta), dtype=torch.float32), persistent=False
        )
        widths = [width * 2**i for i in range(levels)]
        in_ch = 4 * (2 if wiener else 1)
        self.head = nn.Conv2d(in_ch, widths[0], 3, padding=1)
        self.enc = nn.ModuleList(nn.ModuleList(_ResBlock(c) for _ in range(blocks)) for c in widths)
        self.down = nn.ModuleList(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1) for i in range(levels - 1))
        mid = widths[-1]
        self.mid_in = nn.ModuleList(_ResBlock(mid) for _ in range((mid_blocks + 1) // 2))
        self.mid_out = nn.ModuleList(_ResBlock(mid) for _ in range(mid_blocks // 2))
        self.to_mu = nn.Conv2d(mid, latent, 3, padding=1)
        self.to_logvar = nn.Conv2d(mid, latent, 3, padding=1)
        self.from_latent = nn.Conv2d(latent, mid, 1)
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in range(levels - 1))
        self.dec = nn.ModuleList(nn.ModuleList(_ResBlock(c) for _ in range(blocks)) for c in widths)
        self.tail = nn.Conv2d(widths[0], 4, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)
        enc_widths = [c for c in widths for _ in range(blocks)]
        film_widths = enc_widths + [mid] * mid_blocks + enc_widths[::-1]
        self.film = _Film(film_widths) if condition else None

    # -- intensity transform ------------------------------------------------
    def to_intensity(self, t):
        """Model units -> intensity space: ``asinh(t / a)`` (linear near 0, logarithmic on bright cores)."""
        return torch.asinh(t / self.config["asinh_scale"])

    def from_intensity(self, y):
        """Intensity space -> model units: ``a sinh(y)``; never clamped."""
        # in float64: float32 sinh differs between torch's vector loop and its scalar tail, so
        # its last bit moved with the thread count; rounded from float64 the result does not
        return self.config["asinh_scale"] * torch.sinh(y.double()).to(y.dtype)

    # -- network ------------------------------------------------------------
    def _inputs(self, blu, psf, cond):
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
                psf = _box_blur_kernel(psf, self.scale)
            channels.append(self.to_intensity(wiener_filter(x, psf, balance=self.config["wiener_balance"])))
        net_in = torch.cat(channels, dim=1)
        m = self.multiple
        hh, ww = net_in.shape[-2:]
        py, px = (-hh) % m, (-ww) % m
        if py or px:
            mode = "reflect" if min(hh, ww) > max(py, px) else "replicate"
            net_in = F.pad(net_in, (0, px, 0, py), mode=mode)
        film = None
        if self.film is not None:
            if cond is None:
                fwhm = blu.new_full((b,), self.config["psf_fwhm"])
                cond = torch.stack([fwhm, noise_level(blu)], dim=1)
            cond = cond.to(blu.dtype)
            if not torch.is_grad_enabled() and (cond.shape[0] == 1 or cond.stride(0) == 0 or bool((cond == cond[:1]).all())):
                cond = cond[:1]  # one row for the batch (restoring one image): lets the blocks fold FiLM
            film = self.film(cond)
        return base, net_in, film

    def _encode(self, net_in, films):
        # channels-last convolutions run ~25% faster on CPU (oneDNN's native layout)
        h = self.head(F.pixel_unshuffle(net_in, 2).contiguous(memory_format=torch.channels_last))
        skips = []
        for level, layers in enumerate(self.enc):
            for layer in layers:
                h = layer(h, next(films, None))
            if level < len(self.down):
                skips.append(h)
                h = self.down[level](h)
        for layer in self.mid_in:
            h = layer(h, next(films, None))
        return h, skips, self.to_mu(h), self.to_logvar(h).clamp(-20.0, 10.0)

    def _decode(self, h, skips, z, films):
        # bias added apart: oneDNN's fused-bias 1x1 conv rounds differently with the thread
        # count, and deblur promises the same bits serial, in processes or on Dask
        h = h + F.conv2d(z, self.from_latent.weight) + self.from_latent.bias[:, None, None]
        for layer in self.mid_out:
            h = layer(h, next(films, None))
        for level in reversed(range(len(self.dec))):
            if level < len(self.up):
                h = self.up[level](h) + skips[level]
            for layer in self.dec[level]:
                h = layer(h, next(films, None))
        return F.pixel_shuffle(self.tail(h), 2)

    def _run(self, blu, psf, cond, choices):
        """Outputs in intensity space, one per latent choice (a callable of (mu, logvar))."""
        base, net_in, film = self._inputs(blu, psf, cond)
        film = film or []
        n_enc = sum(len(layers) for layers in self.enc) + len(self.mid_in)
        h, skips, mu, logvar = self._encode(net_in, iter(film[:n_enc]))
        hh, ww = base.shape[-2:]
        outs = []
        for choose in choices:
            corr = self._decode(h, skips, choose(mu, logvar), iter(film[n_enc:]))
            outs.append(base + corr[..., :hh, :ww])
        return outs, mu, logvar

    def forward(self, blu, *, psf=None, cond=None, sample=True):
        """``(y, kl)``: y ``(B, 1, h*S, w*S)`` in intensity space, kl the per-pixel KL (batch mean)."""

        def choose(mu, logvar):
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu

        (y,), mu, logvar = self._run(blu, psf, cond, [choose])
        return y, _kl_per_pixel(mu, logvar, y.shape[-1] * y.shape[-2])

    def restore(self, blu, *, psf=None, cond=None):
        """Posterior-mean restoration ``(B, 1, h*S, w*S)`` in model units, unclamped."""
        (y,), _, _ = self._run(blu, psf, cond, [lambda mu, logvar: mu])  # no KL: not needed here
        return self.from_intensity(y)

    def sample(self, blu, n, *, psf=None, cond=None):
        """``n`` posterior draws ``(n, B, 1, h*S, w*S)`` in model units (encoder run once)."""

        def draw(mu, logvar):
            return mu + torch.randn_like(mu) * (0.5 * logvar).exp()

        outs, _, _ = self._run(blu, psf, cond, [draw] * n)
        return self.from_intensity(torch.stack(outs))


def _box_blur_kernel(psf, scale):
    """The PSF followed by an S x S box (block averaging seen on the nearest-upsampled grid), odd sides."""
    box = psf.new_full((1, 1, scale, scale), 1.0 / scale**2)
    k = F.conv2d(psf[:, None], box, padding=scale - 1)[:, 0]
    if k.shape[-1] % 2 == 0:
        k = F.pad(k, (0, 1, 0, 1))
    return k


MODELS = {"vae": VAE, "resvae": ResVAE}


def build_model(name, config=None):
    """Instantiate ``MODELS[name](**config)``; an unknown name or option is a ConfigError naming it."""
    if name not in MODELS:
        raise ConfigError(f"model: unknown model {name!r} (known: {', '.join(MODELS)})")
    config = dict(config or {})
    known = [p for p in inspect.signature(MODELS[name]).parameters]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"model_options.{unknown[0]}: not an option of {name} (known: {', '.join(known)})")
    return MODELS[name](**config)
