"""Classical image operators in torch, shared by the networks and by training.

The residual VAE takes the Wiener deconvolution of its input as a second
channel, and training re-blurs restorations through the forward model to score
their consistency with the observation. Both must run on the same device, dtype
and batch as the network, inside or outside autograd, so they are written in
torch (by FFT) rather than taken from scikit-image or scipy; the tests hold them
to those libraries' results.

Kernels are ``(B, k, k)`` tensors with odd sides, centred, one per sample of an
image batch ``(B, 1, H, W)``.

Examples
--------
>>> import torch
>>> from astrosr.operators import blur, wiener_filter
>>> from astrosr.psf import moffat_psf
>>> psf = torch.tensor(moffat_psf(3.0, size=21))[None]
>>> x = torch.rand(1, 1, 32, 32, dtype=torch.float64)
>>> blur(x, psf).shape, blur(x, psf, scale=2).shape
(torch.Size([1, 1, 32, 32]), torch.Size([1, 1, 16, 16]))
>>> wiener_filter(blur(x, psf), psf).shape
torch.Size([1, 1, 32, 32])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["otf", "wiener_filter", "blur", "landweber", "box_blur_kernel", "noise_level"]


def noise_level(blu: Tensor) -> Tensor:
    """Robust per-tile noise std ``(B,)``: 1.4826 x the median absolute deviation.

    Stands in for the pairs file's per-image sigma-clipped std of BLU when a
    caller gives no ``cond``.

    Parameters
    ----------
    blu : Tensor (B, ...)
        A batch of tiles.

    Returns
    -------
    Tensor (B,)
    """
    flat = blu.flatten(1)
    med = flat.median(dim=1, keepdim=True).values
    return 1.4826 * (flat - med).abs().median(dim=1).values


def otf(kernel: Tensor, shape: tuple[int, int] | torch.Size) -> Tensor:
    """Transfer function of centred kernels ``(B, k, k)`` on an rFFT grid of ``shape``.

    Parameters
    ----------
    kernel : Tensor (B, k, k)
        Kernels with odd sides, centred.
    shape : tuple of int
        ``(H, W)`` of the (padded) image the kernel is applied to.

    Returns
    -------
    Tensor (B, H, W // 2 + 1), complex
    """
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
    h = otf(psf, shape)
    lap = psf.new_tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])
    reg = otf(lap[None], shape)
    return h.conj() / (h.abs().pow(2) + balance * reg.abs().pow(2))


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


def wiener_filter(x: Tensor, psf: Tensor, *, balance: float = 0.1) -> Tensor:
    """Wiener/Tikhonov deconvolution with a Laplacian regulariser, as ``skimage.restoration.wiener``.

    ``X = conj(H) Y / (|H|^2 + balance |L|^2)`` on the reflect-padded tile (pad
    = kernel half-size), cropped back: the network's physically grounded first
    guess (Tikhonet, Sureau et al. 2020). A kernel shared by the whole batch
    (one row, or one row expanded) has its filter computed once and cached.

    Parameters
    ----------
    x : Tensor (B, 1, H, W)
    psf : Tensor (B, k, k)
        Unit-sum kernels with odd sides.
    balance : float
        Regularisation weight.

    Returns
    -------
    Tensor (B, 1, H, W)
        In the dtype of ``x``.

    Examples
    --------
    A point source blurred by a Moffat PSF is sharpened back: its peak rises.

    >>> import torch
    >>> from astrosr.operators import blur, wiener_filter
    >>> from astrosr.psf import moffat_psf
    >>> psf = torch.tensor(moffat_psf(4.0), dtype=torch.float32)[None]
    >>> point = torch.zeros(1, 1, 64, 64)
    >>> point[..., 32, 32] = 1.0
    >>> blurred = blur(point, psf)
    >>> restored = wiener_filter(blurred, psf, balance=0.01)
    >>> restored.shape
    torch.Size([1, 1, 64, 64])
    >>> bool(restored.max() > 2 * blurred.max())
    True
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


def blur(x: Tensor, psf: Tensor, *, scale: int = 1) -> Tensor:
    """``PSF * x`` per sample (edges extended, by FFT), block-averaged by ``scale``: the forward model.

    Parameters
    ----------
    x : Tensor (B, 1, H, W)
    psf : Tensor (B, k, k)
        Unit-sum kernels with odd sides.
    scale : int
        Block-averaging factor (the super-resolution factor S).

    Returns
    -------
    Tensor (B, 1, H / S, W / S)
    """
    k = psf.shape[-1]
    pad = k // 2
    h, w = x.shape[-2:]
    xp = F.pad(x[:, 0], (pad, pad, pad, pad), mode="replicate")
    out = torch.fft.irfft2(torch.fft.rfft2(xp) * otf(psf.to(x.dtype), xp.shape[-2:]), s=xp.shape[-2:])
    out = out[:, None, pad : pad + h, pad : pad + w]
    return F.avg_pool2d(out, scale) if scale > 1 else out


def landweber(x0: Tensor, blu: Tensor, psf: Tensor, *, k: int = 2, scale: int = 1) -> Tensor:
    """``k`` unit-step Landweber iterations against ``blu``: the data-consistency step of a batch of tiles.

    ``x <- x + K^T (blu - K x)`` with ``K`` = :func:`blur` (PSF then block
    average) and ``K^T`` its adjoint (the residual repeated over each block,
    then the flipped PSF), as :func:`astrosr.restore.consistency_step` applies
    it to a whole image (there by FFT in closed form, edges handled apart).

    Parameters
    ----------
    x0 : Tensor (B, 1, H, W)
        Restorations.
    blu : Tensor (B, 1, H / S, W / S)
        The observed tiles.
    psf : Tensor (B, k, k)
    k : int
        Number of iterations.
    scale : int
        The super-resolution factor S.

    Returns
    -------
    Tensor (B, 1, H, W)
    """
    flipped = psf.flip(-2, -1)
    x = x0
    for _ in range(k):
        residual = blu - blur(x, psf, scale=scale)
        if scale > 1:
            residual = F.interpolate(residual, scale_factor=scale, mode="nearest")
        x = x + blur(residual, flipped)
    return x


def box_blur_kernel(psf: Tensor, scale: int) -> Tensor:
    """The PSF followed by an S x S box (block averaging seen on the nearest-upsampled grid), odd sides.

    A model of scale S deconvolves its nearest-upsampled input, whose blur is
    the PSF and then the S x S block average of the coarse pixels.

    Parameters
    ----------
    psf : Tensor (B, k, k)
    scale : int

    Returns
    -------
    Tensor (B, k', k')
        ``k' = k + S - 1``, or one more when that is even.
    """
    box = psf.new_full((1, 1, scale, scale), 1.0 / scale**2)
    k = F.conv2d(psf[:, None], box, padding=scale - 1)[:, 0]
    if k.shape[-1] % 2 == 0:
        k = F.pad(k, (0, 1, 0, 1))
    return k
