"""The two model families: the seed ``vae`` and the project's residual ``resvae``.

Training, restoration, evaluation and deblurring hold a model only through
this one interface, so either family (and a checkpoint of either) can stand in
anywhere::

    y, kl, y_mean, log_scale, kl_prior = model(blu, psf=None, cond=None, sample=True, ori=None)  # training
    sr = model.restore(blu, psf=None, cond=None)            # model units, no clamp
    draws = model.sample(blu, n, psf=None, cond=None)       # (n, B, 1, H, W)

``blu`` is a ``(B, 1, h, w)`` batch in model units (the BLU image mapped by its
own 0.5/99.9 percentiles, unclipped); ``psf`` is ``(B, k, k)``; ``cond`` is
``(B, 2)`` = ``[psf_fwhm_px, noise_std_model_units]``. Training gets an
:class:`~astrosr.models.layers.Output`: ``y`` in intensity space, the KL,
and for a conditional ``resvae`` (``posterior``) the prior-mean decode and
for one with a ``noise_head`` its log scale (:mod:`astrosr.losses`). Only
training passes ``ori``; restoration and draws see BLU alone.

KL reduction (the same for both models): the KL divergence of the latent is
summed over latent elements, divided by the number of output pixels and
averaged over the batch, so with a pixel-mean reconstruction loss ``beta = 1``
weighs the two exactly as the seed's summed loss did.

Checkpoints name their model by its key in :data:`MODELS` and store its
options, so :func:`build_model` is how a model is rebuilt from one.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import ConfigError
from .resvae import ResVAE
from .vae import VAE

__all__ = ["VAE", "ResVAE", "MODELS", "build_model"]

#: Model name (as written in configs and checkpoints) -> class
MODELS = {"vae": VAE, "resvae": ResVAE}


def build_model(name: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Instantiate ``MODELS[name](**config)``; an unknown name or option is a ConfigError naming it.

    Parameters
    ----------
    name : str
        A key of :data:`MODELS`.
    config : mapping, optional
        Keyword options of that model's class.

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    ConfigError
        The name is unknown, or an option is not one of the model's.

    Examples
    --------
    >>> from astrosr.models import build_model
    >>> model = build_model("resvae", {"width": 8, "levels": 2})
    >>> type(model).__name__, model.config["width"]
    ('ResVAE', 8)
    >>> build_model("unet")
    Traceback (most recent call last):
    ...
    astrosr.errors.ConfigError: model: unknown model 'unet' (known: vae, resvae)
    """
    if name not in MODELS:
        raise ConfigError(f"model: unknown model {name!r} (known: {', '.join(MODELS)})")
    config = dict(config or {})
    known = [p for p in inspect.signature(MODELS[name]).parameters]
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ConfigError(f"model_options.{unknown[0]}: not an option of {name} (known: {', '.join(known)})")
    return MODELS[name](**config)
