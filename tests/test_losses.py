"""losses: the batch loss and its terms, the KL warm-up, AdamW's parameter groups and the LR schedule."""

import pytest
import torch
import torch.nn.functional as F

from astrosr.losses import batch_loss, kl_weight, lr_factor, make_optimizer, ssim_loss
from astrosr.models import build_model
from astrosr.operators import blur
from astrosr.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch():
    g = torch.Generator().manual_seed(0)
    return {"blu": torch.rand(2, 1, 32, 32, generator=g), "ori": torch.rand(2, 1, 32, 32, generator=g),
            "psf": torch.full((2, 5, 5), 1 / 25), "cond": torch.tensor([[4.0, 0.01]] * 2)}


def test_batch_loss_is_the_sum_of_its_weighted_terms():
    torch.manual_seed(0)
    model = build_model("resvae", {"width": 8, "levels": 2, "mid_blocks": 1})
    cfg = TrainConfig(loss="mse", beta=0.5, kl_warmup=4, ssim_weight=0.3, consistency_weight=0.2)
    batch = _batch()
    torch.manual_seed(1)
    loss, terms = batch_loss(model, model, batch, cfg, step=1)
    torch.manual_seed(1)
    y, kl, *_ = model(batch["blu"], psf=batch["psf"], cond=batch["cond"], sample=True)
    sr = model.from_intensity(y)
    recon = F.mse_loss(y, model.to_intensity(batch["ori"]))
    s = ssim_loss(sr.clamp(0, 1), batch["ori"].clamp(0, 1))
    c = F.mse_loss(model.to_intensity(blur(sr, batch["psf"], scale=model.scale)), model.to_intensity(batch["blu"]))
    assert terms["beta"] == pytest.approx(0.25)
    assert loss.item() == pytest.approx((recon + 0.25 * kl + 0.3 * (1 - s) + 0.2 * c).item(), rel=1e-6)
    assert (terms["recon"], terms["ssim"], terms["consistency"]) == pytest.approx((recon.item(), s.item(), c.item()))
    _, plain = batch_loss(model, model, batch, TrainConfig(), step=0)
    assert set(plain) == {"recon", "kl", "beta", "loss"}


def test_kl_warmup_and_schedule():
    assert [kl_weight(s, TrainConfig(beta=1.0, kl_warmup=4)) for s in (0, 3, 9)] == [0.25, 1.0, 1.0]
    assert kl_weight(0, TrainConfig(beta=0.3, kl_warmup=0)) == 0.3
    cfg = TrainConfig(warmup=0, max_steps=100, min_lr_ratio=0.0)
    assert lr_factor(0, cfg) == 1.0 and lr_factor(50, cfg) == pytest.approx(0.5) and lr_factor(200, cfg) == 0.0


def test_optimizer_decays_weights_only():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.GroupNorm(1, 2))
    optimizer, scheduler = make_optimizer(model, TrainConfig(lr=0.01, warmup=2, weight_decay=0.1))
    decay, no_decay = optimizer.param_groups
    assert [p.ndim for p in decay["params"]] == [4] and decay["weight_decay"] == 0.1
    assert sorted(p.ndim for p in no_decay["params"]) == [1, 1, 1] and no_decay["weight_decay"] == 0.0
    assert scheduler.get_last_lr() == pytest.approx([0.005, 0.005])


def _fit_noise_head(ori_noise):
    """Train only the noise head of an identity resvae on tiles whose error is ORI's noise (std 0.05) alone."""
    torch.manual_seed(0)
    model = build_model("resvae", {"width": 4, "levels": 2, "mid_blocks": 1, "noise_head": True})
    g = torch.Generator().manual_seed(0)
    blu = 0.2 + 0.1 * torch.rand(4, 1, 32, 32, generator=g)
    batch = {"blu": blu, "ori": blu + 0.05 * torch.randn(4, 1, 32, 32, generator=g),
             "psf": torch.full((4, 5, 5), 1 / 25), "cond": torch.tensor([[4.0, 0.05]] * 4)}
    if ori_noise:
        batch["ori_noise"] = torch.full((4,), 0.05)
    optimizer = torch.optim.Adam(model.scale_head.parameters(), lr=0.02)
    for step in range(150):
        loss, _ = batch_loss(model, model, batch, TrainConfig(), step=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return model(blu, psf=batch["psf"], cond=batch["cond"], sample=False).log_scale.exp().median().item()


def test_the_noise_head_counts_oris_own_noise_apart():
    # the untrained resvae restores BLU exactly, so SR - ORI is ORI's Gaussian noise: told that noise
    # (ori_noise), b has nothing left to explain; not told, b learns its std
    assert _fit_noise_head(ori_noise=False) == pytest.approx(0.05, rel=0.1)
    assert _fit_noise_head(ori_noise=True) < 0.01


def test_source_weight_weighs_oris_source_pixels_in_the_noise_nll():
    # an untrained resvae restores BLU exactly and its head starts at b = exp(-4): the NLL of each pixel is
    # known in closed form, and the weighted term is its mean with ORI's 5 s pixels counted 1 + w times
    torch.manual_seed(0)
    model = build_model("resvae", {"width": 4, "levels": 2, "mid_blocks": 1, "noise_head": True})
    g = torch.Generator().manual_seed(1)
    blu = 0.2 + 0.01 * torch.rand(2, 1, 32, 32, generator=g)
    ori = blu + 0.01 * torch.randn(2, 1, 32, 32, generator=g)
    ori[:, :, 10:13, 10:13] += 0.5  # a source: 9 pixels far above 5 s
    psf = torch.zeros(2, 5, 5)
    psf[:, 2, 2] = 1.0  # a delta PSF: the consistency step leaves BLU as it is
    batch = {"blu": blu, "ori": ori, "psf": psf, "cond": torch.tensor([[4.0, 0.01]] * 2),
             "ori_noise": torch.full((2,), 0.01)}
    variance = torch.exp(torch.tensor(-8.0)) + 0.01**2
    nll = 0.5 * ((blu - ori) ** 2 / variance + torch.log(variance))
    source = (ori - ori.flatten(1).median(dim=1).values.view(-1, 1, 1, 1) > 0.05).float()
    assert int(source.sum()) == 18
    for w in (0.0, 10.0):
        _, terms = batch_loss(model, model, batch, TrainConfig(source_weight=w), step=0)
        expected = ((1 + w * source) * nll).sum() / (1 + w * source).sum()
        assert terms["noise_nll"] == pytest.approx(expected.item(), rel=1e-4)
