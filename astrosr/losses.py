"""The training objective, optimiser and learning-rate schedule of ``astrosr train``.

The loss of one batch (the same reductions for every model)::

    loss = recon(y, to_intensity(ori))               # L1 or MSE, mean over pixels
         [+ recon(y_mean, to_intensity(ori))]        # a conditional model: its prior-mean decode too
         + beta_t * kl                               # the model's per-pixel KL, linear warm-up
         [+ prior_weight * kl_prior]                 # a conditional model: the same KL, moving the prior only
         [+ mean(e^2 / v + log v) / 2]               # a noise head's std b of the restoration's error
                                                     # e = DC(sr) - ori (prior-mean decode, detached, linear
                                                     # units, through the data-consistency step), v = b^2 +
                                                     # s^2: ORI's own noise s apart; ORI's source pixels
                                                     # weighted 1 + source_weight
         + ssim_weight * (1 - SSIM(sr, ori))         # on model units clipped to [0, 1]
         + consistency_weight * recon(to_intensity(PSF * sr), to_intensity(blu))

where ``y`` is the model's output in its intensity space (for a
conditional model the decode of a posterior draw, which has seen ORI) and ``sr =
from_intensity(y)``. The learning rate warms up linearly and then decays
along a cosine to ``min_lr_ratio`` of its peak at ``max_steps``; AdamW
decays weight matrices only. ``cfg`` is a :class:`astrosr.train.TrainConfig`
(not imported here: train imports this module).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .operators import blur, landweber
from .uncertainty import SOURCE_SIGMA

__all__ = ["ssim_loss", "kl_weight", "batch_loss", "make_optimizer", "lr_factor"]


def ssim_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two ``(B, 1, H, W)`` batches: data range 1, 7x7 uniform window, sample covariances.

    The same value as ``skimage.metrics.structural_similarity(x, y,
    data_range=1)`` (its defaults), differentiable. Despite the name it is
    the similarity; the loss term is ``1 - ssim_loss(x, y)``.

    Examples
    --------
    >>> x = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> round(ssim_loss(x, x).item(), 12)
    1.0
    >>> bool(ssim_loss(x, 1 - x) < 0)
    True
    """
    k, n = 7, 49
    c1, c2 = 0.01**2, 0.03**2

    def mean(t):
        return F.avg_pool2d(t, k, stride=1)

    mx, my = mean(x), mean(y)
    cov = n / (n - 1)
    vx, vy, vxy = cov * (mean(x * x) - mx * mx), cov * (mean(y * y) - my * my), cov * (mean(x * y) - mx * my)
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.mean()


def kl_weight(step: int, cfg: TrainConfig) -> float:
    """``beta`` ramped linearly from ``beta / kl_warmup`` at step 0 to ``beta`` at step ``kl_warmup - 1``.

    Examples
    --------
    >>> from astrosr.train import TrainConfig
    >>> kl_weight(0, TrainConfig(beta=0.01, kl_warmup=4)), kl_weight(10, TrainConfig(beta=0.01, kl_warmup=4))
    (0.0025, 0.01)
    """
    return cfg.beta * min(1.0, (step + 1) / cfg.kl_warmup) if cfg.kl_warmup else cfg.beta


def batch_loss(model: torch.nn.Module, raw: torch.nn.Module, batch: dict, cfg: TrainConfig,
               step: int) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch (module docstring) and its terms as floats.

    Parameters
    ----------
    model : torch.nn.Module
        What to call: the model, or its DistributedDataParallel wrapper.
    raw : torch.nn.Module
        The model itself (its intensity transform and scale).
    batch : dict
        ``blu``, ``ori``, ``psf``, ``cond`` tensors, as :class:`astrosr.dataset.PairsDataset` yields them.
    cfg : TrainConfig
        ``loss``, ``beta``, ``kl_warmup``, ``ssim_weight``, ``consistency_weight``.
    step : int
        Optimiser steps done (the KL warm-up position).

    Returns
    -------
    loss : torch.Tensor
        Scalar, to back-propagate.
    terms : dict
        ``recon``, ``kl``, ``beta``, ``loss`` and, when weighted, ``ssim`` and ``consistency``.

    Examples
    --------
    >>> from astrosr.models import build_model
    >>> from astrosr.train import TrainConfig
    >>> model = build_model("resvae", {"width": 8, "levels": 2, "mid_blocks": 1})
    >>> batch = {"blu": torch.rand(2, 1, 32, 32), "ori": torch.rand(2, 1, 32, 32),
    ...          "psf": torch.full((2, 5, 5), 1 / 25), "cond": torch.tensor([[4.0, 0.01]] * 2)}
    >>> loss, terms = batch_loss(model, model, batch, TrainConfig(ssim_weight=0.1), step=0)
    >>> sorted(terms), loss.ndim
    (['beta', 'kl', 'loss', 'recon', 'ssim'], 0)
    """
    blu, ori, psf, cond = batch["blu"], batch["ori"], batch["psf"], batch["cond"]
    y, kl, y_mean, log_scale, kl_prior = model(blu, psf=psf, cond=cond, sample=True, ori=ori)
    recon_fn = F.l1_loss if cfg.loss == "l1" else F.mse_loss
    target = raw.to_intensity(ori)
    recon = recon_fn(y, target)
    terms = {}
    if y_mean is not None:
        # restoration decodes the prior mean, which never saw ORI: train that decode as well
        recon_mean = recon_fn(y_mean, target)
        terms["recon_posterior"], terms["recon_prior"] = recon.item(), recon_mean.item()
        recon = recon + recon_mean
    beta = kl_weight(step, cfg)
    loss = recon + beta * kl
    if kl_prior is not None and cfg.prior_weight:
        loss = loss + cfg.prior_weight * kl_prior  # the prior follows the posterior (KL balancing)
    terms.update({"recon": recon.item(), "kl": kl.item(), "beta": beta})
    if log_scale is not None:
        # the Gaussian negative log-likelihood of the restoration's error, in linear model units; the error
        # is detached, so this term teaches the std, never the restoration. b is the error of SR against the
        # true sky: ORI's own noise (std s, known per tile) is added in quadrature, as the coverage test
        # z = |SR - ORI| / sqrt(sigma^2 + s^2) adds it, so that noise alone leaves b nothing to explain
        # what restoration returns: the prior-mean decode, through the consistency step deblur applies
        restored = raw.from_intensity((y if y_mean is None else y_mean).detach())
        err = landweber(restored, blu, psf.to(restored.dtype), scale=raw.scale) - ori
        s = batch.get("ori_noise")
        s2 = 0.0 if s is None else (s.to(err.dtype) ** 2).view(-1, 1, 1, 1)
        variance = torch.exp(2 * log_scale) + s2
        nll = 0.5 * (err**2 / variance + torch.log(variance))
        if cfg.source_weight and s is not None:
            # the coverage an astronomer reads is at sources (the coverage test's: ORI 5 s above its median):
            # weigh them up, so that the head spends itself on the errors there, not on the sky filling a tile
            median = ori.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
            source = (ori - median > SOURCE_SIGMA * s.to(ori.dtype).view(-1, 1, 1, 1)).to(nll.dtype)
            weight = 1 + cfg.source_weight * source
            nll = (weight * nll).sum() / weight.sum()
        else:
            nll = nll.mean()
        loss = loss + nll
        terms["noise_nll"] = nll.item()
    if cfg.ssim_weight or cfg.consistency_weight:
        sr = raw.from_intensity(y)
    if cfg.ssim_weight:
        s = ssim_loss(sr.clamp(0, 1), ori.clamp(0, 1))
        loss = loss + cfg.ssim_weight * (1 - s)
        terms["ssim"] = s.item()
    if cfg.consistency_weight:
        reblurred = blur(sr, psf, scale=raw.scale)
        c = recon_fn(raw.to_intensity(reblurred), raw.to_intensity(blu))
        loss = loss + cfg.consistency_weight * c
        terms["consistency"] = c.item()
    terms["loss"] = loss.item()
    return loss, terms


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig):
    """AdamW at ``lr`` (``weight_decay`` on weight matrices and kernels, none on biases and norms) and its schedule.

    Returns
    -------
    optimizer : torch.optim.AdamW
    scheduler : torch.optim.lr_scheduler.LambdaLR
        Stepped once per optimiser step; the rate of step ``s`` is ``lr * lr_factor(s, cfg)``.

    Examples
    --------
    >>> from astrosr.train import TrainConfig
    >>> optimizer, scheduler = make_optimizer(torch.nn.Linear(2, 1), TrainConfig(lr=1e-3, warmup=10))
    >>> [len(g["params"]) for g in optimizer.param_groups], scheduler.get_last_lr()
    ([1, 1], [0.0001, 0.0001])
    """
    params = [p for p in model.parameters() if p.requires_grad]  # frozen ones (``trainable``) stay out
    no_decay = [p for p in params if p.ndim <= 1]
    decay = [p for p in params if p.ndim > 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    return optimizer, scheduler


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The learning rate of ``step`` as a fraction of ``lr``: linear warm-up to 1, cosine to ``min_lr_ratio``.

    Examples
    --------
    >>> from astrosr.train import TrainConfig
    >>> cfg = TrainConfig(warmup=10, max_steps=110, min_lr_ratio=0.1)
    >>> lr_factor(0, cfg), lr_factor(9, cfg), round(lr_factor(60, cfg), 6), round(lr_factor(110, cfg), 6)
    (0.1, 1.0, 0.55, 0.1)
    """
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.max_steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
