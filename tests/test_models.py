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
    y, kl, y_mean, log_scale, _ = model(blu)
    assert y_mean is None and log_scale is None
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
    kl = model(blu, sample=False).kl
    mu, logvar = model._encode(blu)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    expected = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1).mean() / 128**2
    assert kl.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("shape, scale", [((128, 128), 1), ((100, 136), 1), ((64, 64), 2)])
def test_resvae_output_shapes(shape, scale):
    model = ResVAE(scale=scale, width=8)
    blu = torch.rand(2, 1, *shape)
    y, kl, *_ = model(blu, psf=torch.tensor(moffat_psf(4.0), dtype=torch.float32).expand(2, 41, 41),
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
        y = model(blu, psf=psf, cond=cond, sample=False).y
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
        plain = model(blu, psf=psf, cond=cond).y
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


# --- the conditional VAE: a posterior that sees ORI in training, a prior that sees BLU alone ------


def _conditional(**options):
    torch.manual_seed(0)
    model = ResVAE(width=8, levels=2, posterior=True, noise_head=True, **options)
    with torch.no_grad():  # an untrained decoder ignores the latent: give it some weight
        model.tail.weight.normal_(0.0, 0.05)
        model.scale_head[-1].bias.fill_(-2.0)
    return model


def test_the_posterior_sees_ori_and_inference_never_does():
    model = _conditional()
    blu = torch.rand(2, 1, 32, 32)
    ori_a, ori_b = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32) + 1.0
    out_a, out_b = model(blu, ori=ori_a, sample=False), model(blu, ori=ori_b, sample=False)
    assert not torch.allclose(out_a.y, out_b.y)  # the training-time posterior depends on ORI
    assert torch.equal(out_a.y_mean, out_b.y_mean)  # the prior-mean decode does not
    assert out_a.kl.item() > 0 and out_a.log_scale.shape == (2, 1, 32, 32)
    with torch.inference_mode():
        torch.manual_seed(5)
        draws_a = model.sample(blu, 4)
        model(blu, ori=ori_b)  # whatever the model was last trained on
        torch.manual_seed(5)
        draws_b = model.sample(blu, 4)
        mean = model.restore(blu)
    assert torch.equal(draws_a, draws_b)
    assert draws_a.std(dim=0).min() > 0  # prior draws and the noise head's noise differ
    assert torch.allclose(mean, model.from_intensity(out_a.y_mean), atol=1e-5)  # restoration = prior-mean decode


def test_a_conditional_model_needs_ori_to_train():
    with pytest.raises(ConfigError, match="posterior: training needs ori"):
        _conditional()(torch.rand(1, 1, 16, 16))


def test_kl_between_matches_torch_distributions():
    from astrosr.models.layers import kl_between

    g = torch.Generator().manual_seed(2)
    mu_q, lv_q, mu_p, lv_p = (torch.randn(2, 3, 4, 4, generator=g) for _ in range(4))
    q = torch.distributions.Normal(mu_q, (0.5 * lv_q).exp())
    p = torch.distributions.Normal(mu_p, (0.5 * lv_p).exp())
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1).mean() / 64
    assert kl_between(mu_q, lv_q, mu_p, lv_p, 64).item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_noise_head_learns_the_error_scale_and_leaves_the_restoration_alone(tiny_pairs):
    from astrosr.losses import batch_loss

    model = _conditional()
    batch = _batch(tiny_pairs, n=4)
    loss, terms = batch_loss(model, model, batch, TrainConfig(), step=0)
    assert {"noise_nll", "recon_prior", "recon_posterior"} <= set(terms)
    # the noise term's gradient reaches the scale head and nothing else
    out = model(batch["blu"], psf=batch["psf"], cond=batch["cond"], ori=batch["ori"])
    target = model.to_intensity(batch["ori"])
    err = (model.from_intensity(out.y_mean.detach()) - batch["ori"]).abs()
    nll = (err * torch.exp(-out.log_scale) + out.log_scale).mean()
    nll.backward()
    moved = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}
    assert moved and all(n.startswith("scale_head") for n in moved)


def test_kl_balancing_moves_the_posterior_at_beta_and_the_prior_at_full_weight():
    model = _conditional()
    blu, ori = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    out = model(blu, ori=ori)
    assert torch.isclose(out.kl, out.kl_prior)  # one KL, two gradients

    def moved(term):
        model.zero_grad()
        term.backward(retain_graph=True)
        return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().max() > 0}

    to_posterior, to_prior = moved(out.kl), moved(out.kl_prior)
    assert any(n.startswith("post_") for n in to_posterior) and not any(n.startswith("to_") for n in to_posterior)
    assert {"to_mu.weight", "to_logvar.weight"} <= to_prior and not any(n.startswith("post_") for n in to_prior)
