"""The seed design, kept exactly: the baseline every other model is measured against.

Its layers, parameter count and intensity transform are those of the seed, so
a score of ``vae`` is a score of the seed; only the interface (``psf`` and
``cond`` accepted and ignored, ``restore`` and ``sample``) and the cutting of
any input into 128 px blocks are added around it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from .layers import Output, kl_per_pixel

__all__ = ["VAE"]


class VAE(nn.Module):
    """The seed design, exactly: a fully connected-latent VAE on 128x128 tiles.

    Encoder: three stride-2 3x3 convolutions (1 -> 4 -> 16 -> 64, ReLU), flatten
    to 64*16*16, two Linear(16384, latent) heads (mean, log-variance). Decoder:
    Linear(latent, 16384), three ConvTranspose2d(4, 2, 1) (64 -> 16 -> 4 -> 1)
    with ReLU and a final Sigmoid. The seed trains on tiles clipped to [0, 1],
    so this model's intensity transform is that clip.

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

    def __init__(self, *, latent: int = 64, scale: int = 1) -> None:
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

    def to_intensity(self, t: Tensor) -> Tensor:
        """Model units -> intensity space: the seed's clip to [0, 1]."""
        return t.clamp(0.0, 1.0)

    def from_intensity(self, y: Tensor) -> Tensor:
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

    def forward(
        self, blu: Tensor, *, psf: Tensor | None = None, cond: Tensor | None = None, sample: bool = True,
        ori: Tensor | None = None,
    ) -> Output:
        """``Output(y, kl)``: y ``(B, 1, h*S, w*S)`` in [0, 1]; ``psf``, ``cond`` and ``ori`` are ignored.

        The seed design: its latent is inferred from BLU alone.
        """
        blocks, layout = self._blocks(blu)
        mu, logvar = self._encode(blocks)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        y = self._decode(z)
        kl = kl_per_pixel(mu, logvar, self.tile * self.tile) * blocks.shape[0] / blu.shape[0]
        return Output(self._unblocks(y, layout), kl)

    def restore(self, blu: Tensor, *, psf: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """Posterior-mean restoration in model units (the decoded mean latent)."""
        y = self(blu, psf=psf, cond=cond, sample=False).y
        return self.from_intensity(y)

    def sample(self, blu: Tensor, n: int, *, psf: Tensor | None = None, cond: Tensor | None = None) -> Tensor:
        """``n`` posterior draws ``(n, B, 1, h*S, w*S)`` in model units."""
        blocks, layout = self._blocks(blu)
        mu, logvar = self._encode(blocks)
        std = (0.5 * logvar).exp()
        draws = [self._unblocks(self._decode(mu + torch.randn_like(mu) * std), layout) for _ in range(n)]
        return self.from_intensity(torch.stack(draws))
