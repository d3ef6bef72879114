"""models: the seed VAE exactly, the residual VAE's shapes, identity start, inference form, and overfitting."""

import numpy as np
import pytest
import torch

from astrosr.dataset import PairsDataset
from astrosr.psf import moffat_psf
from astrosr.errors import ConfigError
from astrosr.models import MODELS, VAE, ResVAE, build_model
from astrosr.losses import batch_loss as _losses
from astrosr.train_config import TrainConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _batch(pairs, n=8, crop=None):
    ds = PairsDataset(pairs, field="train", in_memory=True, crop=crop)
    items = [ds[(i, 7)] for i in range(0, 2 * n, 2)]
    return {k: torch.stack([it[k] for it in items]) for k in ("blu", "ori", "psf", "cond")}


def test_models_is_a_literal_name_to_class_dict():
    assert MODELS == {"vae": VAE, "resvae": ResVAE}


def test_vae_has_the_seed_parameter_count_and_layers():
    model = VAE()
    assert sum(p.numel() for p in model.parameters()) == 3_189_645
    convs = [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
             for m in model.encoder if isinstance(m, torch.nn.Conv2d)]
    assert convs == [(1, 4, (3, 3), (2, 2), (1, 1)), (4, 16, (3, 3), (2, 2), (1, 1)), (16, 64, (3, 3), (2, 2), (1, 1))]
    deconvs = [(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)
               for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert deconvs == [(64, 16, (4, 4), (2, 2), (1, 1)), (16, 4, (4, 4), (2, 2), (1, 1)), (4, 1, (4, 4), (2, 2), (1, 1))]
    assert isinstance(model.decoder[-1], torch.nn.Sigmoid)
    assert (model.fc_mu.in_features, model.fc_mu.out_features) == (16384, 64)


def test_vae_shapes_range_and_kl():
    torch.manual_seed(0)
    model = VAE()
    blu = torch.rand(3, 1, 128, 128) * 1.4 - 0.2
    y, kl = model(blu)
    assert y.shape == (3, 1, 128, 128) and kl.ndim == 0 and kl.item() >= 0
    assert 0 <= y.min() and y.max() <= 1
    assert model.restore(blu).shape == (3, 1, 128, 128)
    assert model.sample(blu, 4).shape == (4, 3, 1, 128, 128)
    assert model.restore(torch.rand(1, 1, 100, 136)).shape == (1, 1, 100, 136)
    assert torch.equal(model.to_intensity(torch.tensor([-0.5, 0.5, 1.5])), torch.tensor([0.0, 0.5, 1.0]))


def test_vae_kl_matches_torch_distributions():
    torch.manual_seed(1)
    model = VAE(latent=8)
    blu = torch.rand(2, 1, 128, 128)
    _, kl = model(blu, sample=False)
    mu, logvar = model._encode(blu)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1).mean() / 128**2
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("shape, scale", [((128, 128), 1), ((100, 136), 1), ((64, 64), 2)])
def test_resvae_output_shapes(shape, scale):
    model = ResVAE(scale=scale, width=8)
    blu = torch.rand(2, 1, *shape)
    y, kl = model(blu, psf=torch.tensor(moffat_psf(4.0), dtype=torch.float32).expand(2, 41, 41),
                  cond=torch.tensor([[4.0, 0.01]] * 2))
    expected = (2, 1, shape[0] * scale, shape[1] * scale)
    assert y.shape == expected and kl.ndim == 0
    assert model.restore(blu).shape == expected
    assert model.sample(blu, 3).shape == (3, *expected)


@pytest.mark.parametrize("options", [{}, {"wiener": False, "condition": False}, {"levels": 4, "blocks": 2}])
def test_untrained_resvae_is_the_identity(tiny_pairs, options):
    torch.manual_seed(0)
    model = ResVAE(**options)
    batch = _batch(tiny_pairs, n=4)
    sr = model.restore(batch["blu"], psf=batch["psf"], cond=batch["cond"])
    assert torch.abs(sr - batch["blu"]).max().item() < 1e-6
    odd = torch.rand(1, 1, 100, 136) * 2 - 0.5
    assert torch.abs(model.restore(odd) - odd).max().item() < 1e-6


def test_resvae_intensity_transform_is_asinh_and_inverts():
    model = ResVAE(asinh_scale=0.05)
    t = torch.linspace(-1, 50, 101, dtype=torch.float64)
    assert torch.allclose(model.to_intensity(t), torch.asinh(t / 0.05))
    assert torch.allclose(model.from_intensity(model.to_intensity(t)), t, rtol=1e-12, atol=1e-12)


def test_inference_path_equals_the_training_form():
    torch.manual_seed(1)
    model = ResVAE(width=8)
    with torch.no_grad():
        for p in model.parameters():  # non-zero tail and FiLM: every block and the condition matter
            p.add_(0.05 * torch.randn_like(p))
    blu = torch.rand(3, 1, 64, 72)
    psf = torch.tensor(moffat_psf(4.0), dtype=torch.float32).expand(3, 41, 41)
    cond = torch.tensor([4.0, 0.02]).expand(3, 2)
    with torch.enable_grad():  # the training form: FiLM applied after conv1, per sample
        y, _ = model(blu, psf=psf, cond=cond, sample=False)
        expected = model.from_intensity(y).detach()
    with torch.inference_mode():  # FiLM folded into conv1, in-place block updates
        fast = model.restore(blu, psf=psf, cond=cond)
    np.testing.assert_allclose(fast.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5 * expected.abs().max().item())


def test_forms_are_chosen_by_the_call_not_by_the_autograd_mode():
    torch.manual_seed(1)
    model = ResVAE(width=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    blu = torch.rand(3, 1, 64, 72)
    psf = torch.tensor(moffat_psf(4.0), dtype=torch.float32).expand(3, 41, 41)
    cond = torch.tensor([4.0, 0.02]).expand(3, 2)
    with torch.inference_mode():
        fast = model.restore(blu, psf=psf, cond=cond)
        torch.manual_seed(2)
        draws = model.sample(blu, 2, psf=psf, cond=cond)
        torch.manual_seed(3)
        plain, _ = model(blu, psf=psf, cond=cond)
    assert torch.equal(model.restore(blu, psf=psf, cond=cond).detach(), fast)
    torch.manual_seed(2)
    assert torch.equal(model.sample(blu, 2, psf=psf, cond=cond).detach(), draws)
    torch.manual_seed(3)
    assert torch.equal(model(blu, psf=psf, cond=cond)[0].detach(), plain)


def test_conditioning_and_psf_change_a_trained_output():
    torch.manual_seed(0)
    model = ResVAE(width=8)
    for p in model.parameters():  # any non-zero weights: the untrained model ignores its inputs
        torch.nn.init.normal_(p, std=0.05)
    blu = torch.rand(1, 1, 64, 64)
    a = model.restore(blu, cond=torch.tensor([[4.0, 0.01]]))
    b = model.restore(blu, cond=torch.tensor([[5.0, 0.01]]))
    c = model.restore(blu, cond=torch.tensor([[4.0, 0.01]]), psf=torch.tensor(moffat_psf(3.0), dtype=torch.float32)[None])
    assert not torch.allclose(a, b) and not torch.allclose(a, c)


def test_build_model_errors_name_the_problem():
    with pytest.raises(ConfigError, match="unknown model 'unet'"):
        build_model("unet")
    with pytest.raises(ConfigError, match="depth"):
        build_model("resvae", {"depth": 3})
    with pytest.raises(ConfigError, match="width must be a positive integer"):
        ResVAE(width=0)
    with pytest.raises(ConfigError, match="asinh_scale"):
        ResVAE(asinh_scale=0)
    with pytest.raises(ConfigError, match="vae scale"):
        VAE(scale=3)


def _overfit(model, batch, cfg, *, steps, lr):
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss, _ = _losses(model, model, batch, cfg, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_resvae_overfits_a_batch_of_real_tiles(tiny_pairs):
    torch.manual_seed(0)
    model = ResVAE(width=8, levels=2, mid_blocks=1)
    cfg = TrainConfig(model="resvae", loss="l1", beta=0.01, kl_warmup=0)
    losses = _overfit(model, _batch(tiny_pairs, crop=64), cfg, steps=300, lr=5e-3)
    assert losses[-1] < 0.6 * losses[0]


def test_vae_overfits_a_batch_of_real_tiles(tiny_pairs):
    torch.manual_seed(0)
    cfg = TrainConfig(model="vae", loss="mse", beta=1.0, kl_warmup=0)
    losses = _overfit(VAE(latent=16), _batch(tiny_pairs), cfg, steps=100, lr=1e-3)
    assert losses[-1] < 0.2 * losses[0]
