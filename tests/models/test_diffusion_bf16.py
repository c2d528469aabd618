"""bf16 autocast on the CPU for the 3D latent diffusion model: a torch bug (wrong bf16 Conv3d
weight gradients on inputs of depth 2, medvol/ops/cpu_bf16.py) made its U-Net loss
NaN a few steps into a run; the model runs those convolutions in fp32."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medvol.models import build
from medvol.ops.cpu_bf16 import guard_depth_two_convs, needs_fp32
from medvol.utils import cpu_has_native_bf16

pytestmark = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (oneDNN)")

TINY = dict(base_width=4, latent_dim=2, train_timesteps=100, sample_steps=4)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


@pytest.mark.parametrize("kernel, depth", [(3, 2), (4, 3)])
def test_depth_two_conv_gradient_matches_fp32(kernel, depth):
    """The two convolutions of the 32^3 model that met the bug: U-Net (3^3 on depth 2), D's last (4^3 on 3^3)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(16, 32, kernel, padding=1)
    guard_depth_two_convs(conv)
    x = torch.randn(2, 16, depth, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert needs_fp32(conv, x)
        y = conv(x)
    assert y.shape[2] == 2
    grad_out = torch.randn(y.shape)
    y.float().backward(grad_out)
    w = conv.weight.detach().clone().requires_grad_()
    (F.conv3d(x, w, conv.bias.detach(), padding=1) * grad_out).sum().backward()
    assert _rel(conv.weight.grad, w.grad) < 0.02
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not needs_fp32(conv, torch.randn(2, 16, depth + 1, 6, 6))
    assert not needs_fp32(conv, x)  # no autocast


@pytest.mark.parametrize("mode", ["reference", "optimized"])
def test_unet_bf16_gradients_are_close_to_fp32(mode):
    """Every U-Net parameter's bf16 gradient within 50 % (norm) of its fp32 one, at 32^3 where the
    lowest level has side 2 (the bug gave errors of 1e30 and more there)."""
    torch.manual_seed(0)
    system = build("ldm", 32, **TINY, stage="diffusion").set_mode(mode)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 2, 8, 8, 8, generator=g)
    t = torch.randint(0, 100, (2,), generator=g)
    target = torch.randn(x.shape, generator=g)
    grads = {}
    for amp in (None, torch.bfloat16):
        system.unet.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = F.mse_loss(system.unet(x, timesteps=t).float(), target)
        loss.backward()
        grads[amp] = {n: p.grad.clone() for n, p in system.unet.named_parameters()}
    errors = {n: _rel(grads[torch.bfloat16][n], grads[None][n]) for n in grads[None]}
    far = {n: e for n, e in errors.items() if not e < 0.5}  # bf16 rounding: up to 0.15 (a norm weight)
    assert not far, far


def test_discriminator_bf16_gradients_are_close_to_fp32():
    """The patch discriminator's last convolution (3^3 -> 2^3 at 32^3) met the bug too (same bound)."""
    torch.manual_seed(0)
    system = build("ldm", 32, **TINY)
    x = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    grads = {}
    for amp in (None, torch.bfloat16):
        system.D.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
            out = system.D(x)[-1].float()
        (out ** 2).mean().backward()
        grads[amp] = {n: p.grad.clone() for n, p in system.D.named_parameters()}
    errors = {n: _rel(grads[torch.bfloat16][n], grads[None][n]) for n in grads[None]}
    far = {n: e for n, e in errors.items() if not e < 0.5}  # bf16 rounding: up to 0.15 (a norm weight)
    assert not far, far


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_bf16_training_steps_stay_finite(stage):
    torch.manual_seed(0)
    system = build("ldm", 32, **TINY, stage=stage).set_mode("optimized")
    optimizers = system.make_optimizers()
    g = torch.Generator().manual_seed(0)
    real = torch.rand(system.batch_shape(2), generator=torch.Generator().manual_seed(1)) * 2 - 1
    for iteration in range(6):
        losses = system.train_step(real, optimizers, iteration, amp_dtype=torch.bfloat16, generator=g)
        assert all(math.isfinite(float(v)) for v in losses.values()), (iteration, losses)
    assert all(torch.isfinite(p).all() for p in system.parameters())


@pytest.mark.slow
def test_bf16_stage_one_resume_is_bit_exact(tmp_path):
    """Four bf16 iterations straight equal two, a resume, and two more (the garbage gradients of the
    bug changed from call to call, so a resumed run differed in 97 of 283 tensors)."""
    from medvol.cli import main

    config = str(Path(__file__).resolve().parents[2] / "configs" / "ldm_tiny.yaml")
    common = ["train", "--config", config, "--train.mode", "optimized", "--train.amp", "bf16", "--threads", "1",
              "--train.sample_every", "100"]
    assert main([*common, "--train.out", str(tmp_path / "straight")]) == 0
    assert main([*common, "--train.out", str(tmp_path / "split"), "--train.iterations", "2"]) == 0
    assert main([*common, "--train.out", str(tmp_path / "split"), "--resume", "auto", "--allow-changes",
                 "--train.iterations", "4"]) == 0
    straight, split = (torch.load(tmp_path / run / "checkpoints" / "ckpt_0000004.pt", weights_only=False)["system"]
                       for run in ("straight", "split"))
    assert [k for k in straight if not torch.equal(straight[k], split[k])] == []
