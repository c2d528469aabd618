"""StyleGAN2: the modulated convolution, demodulation, FIR resampling, minibatch stddev, the R1 and
path-length penalties against explicit computations, lazy regularisation and Adam's factor, style
mixing, truncation, the EMA generator, shapes, parameter counts, training through the trainer and
exact resume (G_ema included)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medvol import cli
from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.models import SIZES_2D, build
from medvol.models.gan2d.stylegan2 import default_r1_gamma, path_lengths, r1_penalty
from medvol.models.gan2d.stylegan2_layers import downsample2d, minibatch_stddev, modulated_conv2d, upsample2d
from medvol.models.system import StepState
from medvol.train import checkpoint as ckpt
from medvol.train.trainer import train


def tiny(**options):
    torch.manual_seed(0)
    return build("stylegan2", 32, base_width=4, latent_dim=8, **options)


def step_state(system, real, generator, iteration=1):
    return system._prepare_step(real, None, system.make_optimizers(), iteration, None, None, generator)


@pytest.fixture(scope="module")
def real_batch():
    slices = SliceDataset(PhantomVolumeDataset(32, 1), content_only=True)
    return torch.stack([slices[k]["image"] for k in range(0, len(slices), max(1, len(slices) // 8))][:8])


# ---------------------------------------------------------------------------------------------- layers
def _per_sample(x, weight, styles, demodulate):
    """Eq. 1 and 3 of the paper, one sample at a time: scale the inputs' weights, normalise outputs."""
    outs = []
    for b in range(x.shape[0]):
        w = weight * styles[b].reshape(1, -1, 1, 1)
        if demodulate:
            w = w / torch.sqrt((w ** 2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        outs.append(F.conv2d(x[b : b + 1], w, padding=weight.shape[-1] // 2))
    return torch.cat(outs)


@pytest.mark.parametrize("impl", ["grouped", "reference"])
@pytest.mark.parametrize("demodulate", [True, False])
@pytest.mark.parametrize("shape", [(3, 4, 5, 5, 7, 3), (1, 2, 3, 1, 1, 3), (2, 6, 1, 4, 4, 1)])
def test_modulated_conv_matches_per_sample_reference(impl, demodulate, shape):
    b, cin, cout, h, w, k = shape
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(b, cin, h, w, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(cout, cin, k, k, generator=g, dtype=torch.float64, requires_grad=True)
    styles = (torch.rand(b, cin, generator=g, dtype=torch.float64) + 0.5).requires_grad_(True)
    got = modulated_conv2d(x, weight, styles, demodulate, impl)
    want = _per_sample(x, weight, styles, demodulate)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    seed = torch.randn(want.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * seed).sum(), (x, weight, styles))
    wants = torch.autograd.grad((want * seed).sum(), (x, weight, styles))
    for a, e in zip(grads, wants):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)


def test_grouped_modulated_conv_has_a_channels_last_input():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
    weight, styles = torch.randn(4, 3, 3, 3, generator=g), torch.rand(2, 3, generator=g) + 0.5
    torch.testing.assert_close(modulated_conv2d(x, weight, styles), _per_sample(x, weight, styles, True))


def test_demodulation_gives_unit_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 64, 24, 24, generator=g, dtype=torch.float64)
    weight = 3.0 * torch.randn(48, 64, 3, 3, generator=g, dtype=torch.float64)
    styles = 0.2 + 2.0 * torch.rand(8, 64, generator=g, dtype=torch.float64)
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # zero padding lowers the border's variance
    out = modulated_conv2d(x, weight, styles, demodulate=True)[inner]
    assert abs(float(out.var()) - 1.0) < 0.03
    per_channel = out.transpose(0, 1).flatten(1).var(dim=1)
    assert float((per_channel - 1.0).abs().max()) < 0.1
    plain = modulated_conv2d(x, weight, styles, demodulate=False)[inner]
    assert float(plain.var()) > 10.0  # the same weights without demodulation are far from it


def test_fir_upsampling_is_bilinear_inside_and_downsampling_is_the_filter():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 7, generator=g, dtype=torch.float64)
    up = upsample2d(x)
    assert up.shape == (2, 3, 12, 14)
    bilinear = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up[..., 1:-1, 1:-1], bilinear[..., 1:-1, 1:-1])
    x = torch.randn(1, 2, 8, 10, generator=g, dtype=torch.float64)
    down = downsample2d(x)
    assert down.shape == (1, 2, 4, 5)
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0], dtype=torch.float64) / 8
    for i in range(1, 3):  # rows and columns 2o - 1 .. 2o + 2, inside the image
        for j in range(1, 4):
            patch = x[0, :, 2 * i - 1 : 2 * i + 3, 2 * j - 1 : 2 * j + 3]
            torch.testing.assert_close(down[0, :, i, j], (patch * torch.outer(taps, taps)).sum(dim=(1, 2)))


@pytest.mark.parametrize("batch, group", [(8, 4), (6, 3), (5, 1), (2, 2)])
def test_minibatch_stddev(batch, group):
    g = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, 4, 4, generator=g, dtype=torch.float64)
    y = minibatch_stddev(x)
    assert y.shape == (batch, 4, 4, 4)
    torch.testing.assert_close(y[:, :3], x)
    for b in range(batch):
        members = x[(b // group) * group : (b // group + 1) * group]
        mean = members.mean(0)
        std = (((members - mean) ** 2).mean(0) + 1e-8).sqrt().mean()
        torch.testing.assert_close(y[b, 3], torch.full((4, 4), float(std), dtype=torch.float64))


# ---------------------------------------------------------------------------------------------- penalties
def test_r1_penalty_closed_form():
    """D(x) = sum(a x^2): grad_x D = 2 a x, so R1 = mean_b sum (2 a x_b)^2 and dR1/da = 8 a mean_b x_b^2."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64)
    a = torch.randn(2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    penalty = r1_penalty(lambda v: (a * v ** 2).sum(dim=(1, 2, 3)), x)
    torch.testing.assert_close(penalty, ((2 * a * x) ** 2).sum(dim=(1, 2, 3)).mean())
    (grad_a,) = torch.autograd.grad(penalty, a)
    torch.testing.assert_close(grad_a, 8 * a.detach() * (x ** 2).mean(0))


def test_r1_penalty_of_the_discriminator_by_finite_differences():
    system = tiny()
    d = system.D.double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 32, 32, generator=g, dtype=torch.float64)
    penalty = r1_penalty(lambda v: d(v)[0], x)
    # Central differences of sum_b D(x)_b in random directions u give <grad, u>.
    grad = torch.autograd.grad(d(x.requires_grad_(True))[0].sum(), x)[0]
    for _ in range(6):
        u = torch.randn(x.shape, generator=g, dtype=torch.float64)
        h = 1e-5
        fd = (d(x + h * u)[0].sum() - d(x - h * u)[0].sum()) / (2 * h)
        torch.testing.assert_close(fd, (grad * u).sum(), rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(penalty, (grad ** 2).flatten(1).sum(1).mean())


def test_path_lengths_against_per_sample_vjp():
    """||J^T y|| with J^T y from one vector-Jacobian product per sample (checked along random
    directions by central differences), its squared norm summed over w and averaged over layers."""
    system = tiny()
    synthesis = system.G.synthesis.double()
    g = torch.Generator().manual_seed(3)
    n, dim = system.G.num_ws, system.latent_dim
    ws = torch.randn(3, n, dim, generator=g, dtype=torch.float64, requires_grad=True)
    images = synthesis(ws, "const")
    y = torch.randn(images.shape, generator=g, dtype=torch.float64) / 32
    lengths = path_lengths(images, ws, y)
    for b in range(3):
        base = ws[b].detach()
        _, jty = torch.autograd.functional.vjp(lambda v: synthesis(v[None], "const")[0], base, y[b])
        with torch.no_grad():
            for _ in range(3):
                u = torch.randn(base.shape, generator=g, dtype=torch.float64)
                h = 1e-7  # small: the many leaky-ReLU kinks of a step of 1e-5 already bend the difference
                fd = ((synthesis((base + h * u)[None], "const") - synthesis((base - h * u)[None], "const"))[0]
                      * y[b]).sum() / (2 * h)
                torch.testing.assert_close(fd, (jty * u).sum(), rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(lengths[b], jty.square().sum(1).mean().sqrt(), rtol=1e-10, atol=1e-12)


def test_path_length_step_updates_the_running_mean_and_penalises_the_spread():
    system = tiny(pl_interval=1, pl_batch_shrink=2, pl_decay=0.25)
    system.pl_mean.fill_(0.5)
    real = torch.zeros(4, 1, 32, 32)
    g = torch.Generator().manual_seed(11)
    state = step_state(system, real, g)
    start = g.get_state()
    # The same draws as the step: fakes of batch 4 // 2, then y.
    images, ws, _ = system._fakes(2, state)
    y = torch.randn(images.shape, generator=g) / 32
    lengths = path_lengths(images, ws, y).detach()
    mean = 0.5 + 0.25 * (float(lengths.mean()) - 0.5)
    g.set_state(start)
    system._train_only("G")
    system._step_path_length(state)
    assert float(system.pl_mean) == pytest.approx(mean, rel=1e-5)
    assert float(system.last_pl) == pytest.approx(float(((lengths - mean) ** 2).mean()), rel=1e-4)


def test_default_r1_gamma_scales_with_pixels():
    assert default_r1_gamma(1024) == 10.0
    assert default_r1_gamma(256) == pytest.approx(0.625)
    assert build("stylegan2", 64, base_width=4, latent_dim=8).r1_gamma == pytest.approx(10 / 256)
    assert build("stylegan2", 64, base_width=4, latent_dim=8, r1_gamma=2).r1_gamma == 2.0


# ---------------------------------------------------------------------------------------------- schedule
@pytest.mark.parametrize("options, d_steps, g_steps", [
    ({"r1_interval": 2, "pl_interval": 3}, [2, 3, 5, 6], [2, 3, 4, 6]),   # R1 at 0, 2; PL at 0, 3
    ({"r1_gamma": 0.0, "pl_weight": 0.0}, [1, 2, 3, 4], [1, 2, 3, 4]),
])
def test_lazy_regularisation_schedule_and_adam_factor(real_batch, options, d_steps, g_steps):
    """Adam's rate and betas, and the optimiser steps taken after each iteration (main + lazy)."""
    system = tiny(**options)
    optimizers = system.make_optimizers()
    for k, interval, on in (("D", system.r1_interval, system.r1_gamma > 0),
                            ("G", system.pl_interval, system.pl_weight > 0)):
        c = interval / (interval + 1) if on else 1.0
        group = optimizers[k].param_groups[0]
        assert group["lr"] == pytest.approx(0.002 * c)
        assert group["betas"] == pytest.approx((0.0, 0.99 ** c))
    g = torch.Generator().manual_seed(0)
    first_d, first_g = next(iter(system.D.parameters())), next(iter(system.G.parameters()))
    steps = []
    for it in range(4):
        out = system.train_step(real_batch[:4], optimizers, it, generator=g)
        steps.append((int(optimizers["D"].state[first_d]["step"]), int(optimizers["G"].state[first_g]["step"])))
    assert set(out) == {"D", "D_real", "D_fake", "D_r1", "G", "G_pl", "pl_mean"}
    assert steps == list(zip(d_steps, g_steps))


def test_style_mixing():
    n = tiny().G.num_ws
    for prob in (0.0, 1.0, 0.9):
        system = tiny(mixing_prob=prob)
        state = step_state(system, torch.zeros(400, 1, 32, 32), torch.Generator().manual_seed(1))
        with torch.no_grad():
            ws, w = system._ws(400, state)
        torch.testing.assert_close(ws[:, 0], w)
        changes = (ws[:, 1:] != ws[:, :-1]).any(dim=2)  # [B, n - 1]: where the w changes
        assert int(changes.sum(1).max()) <= 1  # one crossover at most
        mixed = changes.any(dim=1).float().mean()
        if prob in (0.0, 1.0):
            assert float(mixed) == prob
        else:
            assert abs(float(mixed) - prob) < 0.05
        if prob == 1.0:  # crossover points cover 1 .. n - 1
            points = changes.float().argmax(dim=1) + 1
            assert set(points.tolist()) == set(range(1, n))


def test_noise_inputs():
    system = tiny()
    synthesis = system.G.synthesis
    with torch.no_grad():
        for conv in synthesis.convs:
            conv.noise_strength.fill_(0.5)
    ws = system.G.mapping(system.sample_latent(2)).unsqueeze(1).expand(-1, system.G.num_ws, -1)
    with torch.no_grad():
        a = synthesis(ws, "random", torch.Generator().manual_seed(0))
        b = synthesis(ws, "random", torch.Generator().manual_seed(0))
        c = synthesis(ws, "random", torch.Generator().manual_seed(1))
        const, none = synthesis(ws, "const"), synthesis(ws, "none")
    torch.testing.assert_close(a, b)  # the noise comes from the generator given
    assert (a - c).abs().mean() > 1e-3 and (const - none).abs().mean() > 1e-3
    torch.testing.assert_close(synthesis(ws, "const"), const)
    with torch.no_grad():
        for conv in synthesis.convs:
            conv.noise_strength.zero_()
        torch.testing.assert_close(synthesis(ws, "const"), synthesis(ws, "none"))
    synthesis(ws.detach(), "random").square().sum().backward()
    assert all(conv.noise_strength.grad.abs().sum() > 0 for conv in synthesis.convs)


def test_truncation_and_generation_use_g_ema():
    system = tiny(truncation=0.0)
    with torch.no_grad():
        system.G_ema.mapping.w_avg.normal_()
        for p in system.G.parameters():
            p.add_(1.0)  # G now differs from G_ema
    z = system.sample_latent(3)
    images = system.generate(z)
    torch.testing.assert_close(images[0], images[1])  # psi = 0: every sample is the w_avg image
    ws = system.G_ema.mapping.w_avg.reshape(1, 1, -1).expand(3, system.G.num_ws, -1)
    torch.testing.assert_close(images, system.G_ema.synthesis(ws, "const").clamp(-1, 1))
    full = system.generate(z, truncation=1.0)
    assert not torch.allclose(full[0], full[1])
    torch.testing.assert_close(full, system.G_ema(z, 1.0, "const").clamp(-1, 1))
    torch.testing.assert_close(system.generate(z, truncation=1.0), full)  # const noise: deterministic


def test_ema_update(real_batch):
    system = tiny(ema_kimg=0.01)
    with torch.no_grad():
        for p in system.G_ema.parameters():
            p.normal_()
    ema_before = [p.clone() for p in system.G_ema.parameters()]
    system.train_step(real_batch[:4], system.make_optimizers(), 1, generator=torch.Generator().manual_seed(0))
    beta = 0.5 ** (4 / 10.0)
    for before, ema, p in zip(ema_before, system.G_ema.parameters(), system.G.parameters()):
        torch.testing.assert_close(ema, p + beta * (before - p))
    torch.testing.assert_close(system.G_ema.mapping.w_avg, system.G.mapping.w_avg)
    assert float(system.G.mapping.w_avg.abs().sum()) > 0
    ramp = tiny(ema_rampup=0.05)
    assert ramp.ema_beta(4, 9) == pytest.approx(0.5 ** (4 / (10 * 4 * 0.05)))
    assert ramp.ema_beta(4, 10 ** 6) == pytest.approx(0.5 ** (4 / 10_000))
    assert tiny().G_ema.mapping.net[0].weight.requires_grad is False


# ---------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size", SIZES_2D)
@pytest.mark.parametrize("channels", [1, 2])
def test_shapes(size, channels):
    system = build("stylegan2", size, base_width=4, latent_dim=8, channels=channels)
    assert system.G.num_ws == 2 * int(math.log2(size)) - 2
    x = system.generate(system.sample_latent(3))
    assert x.shape == (3, channels, size, size) and float(x.abs().max()) <= 1.0
    logit, features = system.D(x)
    assert logit.shape == (3,) and features.shape == (3, 16)


def test_default_widths():
    system = build("stylegan2", 256, latent_dim=8)
    widths = [m.weight.shape[0] for m in system.G.synthesis.convs]
    assert widths == [256] * 9 + [128, 128, 64, 64]  # 4, 8, 16, 32, 64 at 4c; 128 at 2c; 256 at c
    assert system.G.synthesis.const.shape == (256, 4, 4)


# ---------------------------------------------------------------------------------------------- counts
def _counts(size: int, c: int = 64, z: int = 512, channels: int = 1, mapping: int = 8) -> tuple[int, int]:
    """By hand: equalised layers have a weight and a bias unless stated; noise strengths per channel."""
    wd = {r: min(c * 256 // r, 4 * c) for r in (4, 8, 16, 32, 64, 128, 256) if r <= size}
    res = sorted(wd)

    def mod(cin, cout, k, noise):  # style affine (z -> cin, + bias), weight, bias, noise strength
        return z * cin + cin + cout * cin * k * k + cout + (cout if noise else 0)

    g = mapping * (z * z + z) + wd[4] * 16 + mod(wd[4], wd[4], 3, True) + mod(wd[4], channels, 1, False)
    for r in res[1:]:
        g += mod(wd[r // 2], wd[r], 3, True) + mod(wd[r], wd[r], 3, True) + mod(wd[r], channels, 1, False)
    d = channels * wd[size] + wd[size]
    for r in res[1:]:
        lo = wd[r // 2]
        d += wd[r] * wd[r] * 9 + wd[r] + wd[r] * lo * 9 + lo + wd[r] * lo
    c4 = wd[4]
    d += (c4 + 1) * c4 * 9 + c4 + c4 * 16 * c4 + c4 + c4 + 1
    return g, d


@pytest.mark.parametrize("size", [64, 128, 256])
def test_param_counts(size):
    g, d = _counts(size)
    with torch.device("meta"):
        assert build("stylegan2", size).param_counts() == {"G": g, "D": d, "total": g + d}


def test_param_counts_pinned_numbers():
    # The figures docs/models2d.md quotes.
    assert _counts(64) == (9_258_245, 6_624_769)
    assert _counts(128) == (9_963_910, 7_100_033)
    assert _counts(256) == (10_206_151, 7_218_881)
    with torch.device("meta"):
        assert build("stylegan2", 32, base_width=6, latent_dim=16, channels=2, mapping_layers=3) \
            .param_counts()["G"] == _counts(32, 6, 16, 2, 3)[0]


def test_info_json(capsys):
    assert cli.main(["info", "--model", "stylegan2", "--size", "64", "--json"]) == 0
    g, d = _counts(64)
    assert json.loads(capsys.readouterr().out) == {"G": g, "D": d, "total": g + d}


# ---------------------------------------------------------------------------------------------- training
def test_one_d_step_separates_better(real_batch):
    system = tiny()
    g = torch.Generator().manual_seed(5)
    state = step_state(system, real_batch, g, iteration=1)  # iteration 1: no R1 step
    start = g.get_state()
    with torch.no_grad():
        fake, _, _ = system._fakes(real_batch.shape[0], state)  # the step's own fakes
        before = system.D(real_batch)[0], system.D(fake)[0]
    g.set_state(start)
    system._train_only("D")
    system._step_D(state)
    system._unfreeze()
    with torch.no_grad():
        after = system.D(real_batch)[0], system.D(fake)[0]

    def loss(pair):
        return float(F.softplus(-pair[0]).mean() + F.softplus(pair[1]).mean())

    assert float(after[0].mean() - after[1].mean()) > float(before[0].mean() - before[1].mean())
    assert loss(after) < loss(before)
    assert loss(before) == pytest.approx(float(state.out["D"]), rel=1e-5)


@pytest.mark.parametrize("overrides", [
    [],
    ["--model.channels", "2", "--data.masks", "true", "--data.phantom_nodules", "true"],
    ["--train.mode", "optimized", "--train.amp", "bf16", "--model.pl_interval", "1"],
    # fp16: a GradScaler, which must settle the main step before a group's second (lazy) step.
    ["--train.mode", "optimized", "--train.amp", "fp16", "--model.pl_interval", "1", "--model.r1_interval", "1"],
])
def test_two_trainer_steps_on_phantom_slices(tiny2d, overrides):
    cfg = tiny2d(*overrides, name="stylegan2")
    run = train(cfg)
    state = ckpt.read_checkpoint(run)
    assert state["iteration"] == 2
    assert any(k.startswith("G_ema.") for k in state["system"]) and "pl_mean" in state["system"]
    system, _, _ = ckpt.load_checkpoint(run)
    x = system.generate(system.sample_latent(2))
    assert x.shape == (2, cfg.model.channels, 32, 32)
    assert torch.isfinite(x).all()


def test_g_ema_trains_and_is_checkpointed(tiny2d):
    """G_ema lags G, moves with it and is saved (bit-exact resume with it: tests/models/test_contract.py)."""
    options = ["--model.r1_interval", "2", "--model.pl_interval", "3", "--model.ema_kimg", "0.02"]
    run = tiny2d(*options, name="stylegan2", iterations=4, out="run")
    train(run)
    b = ckpt.read_checkpoint(run.train.out)
    ema = {k[len("G_ema."):]: v for k, v in b["system"].items() if k.startswith("G_ema.")}
    live = {k[len("G."):]: v for k, v in b["system"].items() if k.startswith("G.")}
    assert set(ema) == set(live)
    assert any(not torch.equal(ema[k], live[k]) for k in ema)  # the EMA lags G
    assert float(b["system"]["pl_mean"]) > 0
    mid = ckpt.read_checkpoint(f"{run.train.out}/checkpoints/{ckpt.checkpoint_name(2)}")
    assert any(not torch.equal(mid["system"][k], b["system"][k]) for k in b["system"] if k.startswith("G_ema."))


@pytest.mark.parametrize("overrides, key", [
    (["--model.r1_interval", "0"], "r1_interval"),
    (["--model.mixing_prob", "1.5"], "mixing_prob"),
    (["--model.truncation", "-1"], "truncation"),
    (["--model.loss", "hinge"], "model.loss"),
    (["--model.pl_batch_shrink", "0.5"], "model.pl_batch_shrink"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, overrides, key):
    from tests.models2d.conftest import assert_config_error  # here: a bare machine has no tests package
    assert_config_error(tmp_path, capsys, "{name: stylegan2, size: 32, base_width: 4, latent_dim: 8}", overrides, key)


def test_other_models_refuse_stylegan2_options():
    from medvol.config import load_config
    from medvol.errors import MedvolError
    from medvol.models import build_from_config

    with pytest.raises(MedvolError, match="model.r1_gamma: only for stylegan2, not dcgan"):
        build_from_config(load_config(None, ["--model.name", "dcgan", "--model.r1_gamma", "1"]).model)


def test_shipped_tiny_config_is_32():
    from medvol.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    assert load_config(root / "stylegan2_tiny.yaml").model.size == 32  # the rest: tests/models/test_contract.py
