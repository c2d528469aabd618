"""The torch CPU bf16 bug of depth-2 Conv3d outputs (medvol/ops/cpu_bf16.py) in the 3D GANs: at
32^3 with base_width 16 the encoder's second convolution (4-slice crop -> depth 2, 16 -> 16
channels) and G^H's first stage (1 embedding slice upsampled to 2, 32 -> 16 channels; in the
optimized mode through the functional upsample-conv op) meet it. Every model is guarded by
``registry.build``; one bf16 training step's gradients must then match the fp32 step's."""

from __future__ import annotations

import copy

import pytest
import torch

from medvol.models import build
from medvol.ops import upsample_conv3d
from medvol.utils import cpu_has_native_bf16

pytestmark = pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (oneDNN)")


def _step_gradients(system, amp: torch.dtype | None) -> dict[tuple[str, str], torch.Tensor]:
    """Every group's gradients of one training step, recorded at its optimizer step; the step
    itself is skipped, so every sub-step sees the initial weights under both precisions."""
    names = {id(p): n for n, p in system.named_parameters()}
    optimizers = system.make_optimizers()
    grads = {}
    for group, optimizer in optimizers.items():
        params = [p for g in optimizer.param_groups for p in g["params"]]

        def record(*args, _params=params, _group=group, **kwargs):
            for p in _params:
                if p.grad is not None:
                    grads[(_group, names[id(p)])] = p.grad.detach().float().clone()

        optimizer.step = record
    real = torch.rand(system.batch_shape(2), generator=torch.Generator().manual_seed(1)) * 2 - 1
    system.train_step(real, optimizers, 0, amp_dtype=amp, generator=torch.Generator().manual_seed(0))
    return grads


@pytest.mark.parametrize("mode", ["reference", "optimized"])
@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_bf16_step_gradients_match_fp32(name, mode):
    """Every parameter's bf16 gradient is finite and within 50 % (norm) of its fp32 one (bf16
    rounding: up to 0.4, a bias after a norm), or off by less than 1e-3 of its group's gradient
    norm (biases a GroupNorm cancels: their fp32 gradient is ~0). Unguarded, the two convolutions'
    weights are off by 0.6-0.9 (and by 1e30 and more at other widths)."""
    torch.manual_seed(0)
    system = build(name, 32, base_width=16, latent_dim=32).set_mode(mode)
    fp32 = _step_gradients(copy.deepcopy(system), None)  # copies: spectral norm updates its vectors
    bf16 = _step_gradients(copy.deepcopy(system), torch.bfloat16)
    assert fp32.keys() == bf16.keys() and len(fp32) > 40
    group_norm = {}
    for (group, _), g in fp32.items():
        group_norm[group] = group_norm.get(group, 0.0) + float(g.norm()) ** 2
    far = {}
    for key, g in fp32.items():
        diff = float((bf16[key] - g).norm())
        if not (torch.isfinite(bf16[key]).all() and (diff < 0.5 * float(g.norm())
                                                    or diff < 1e-3 * group_norm[key[0]] ** 0.5)):
            far[key] = diff / max(float(g.norm()), 1e-12)
    assert not far, far


def test_upsample_conv3d_depth_one_bf16_weight_gradient():
    """The functional op on a depth-1 input (output depth 2) under bf16 autocast, both backends:
    the weight gradient within 2 % of fp32 (bf16 rounding: under 1 %)."""
    torch.manual_seed(0)
    x = torch.randn(2, 32, 1, 6, 6)
    weight = torch.randn(16, 32, 3, 3, 3).requires_grad_()
    bias = torch.randn(16).requires_grad_()
    grad_out = torch.randn(2, 16, 2, 12, 12)
    (upsample_conv3d(x, weight, bias, backend="torch") * grad_out).sum().backward()
    expected = weight.grad.clone()
    for backend in ("torch", "decomposed"):
        weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = upsample_conv3d(x, weight, bias, backend=backend)
        assert y.dtype == torch.bfloat16 and y.shape == grad_out.shape
        (y.float() * grad_out).sum().backward()
        error = float((weight.grad - expected).norm() / expected.norm())
        assert error < 0.02, (backend, error)


def test_spectral_norm_stack_conv_is_guarded():
    """The SN discriminator stacks call ``_conv_forward`` with their normalised weight, bypassing
    the module's guarded ``forward``: a padded 3^3 SN conv on depth 2 (16 -> 32 channels) through
    :func:`medvol.models.blocks.sn_conv_stack` under bf16 autocast gets the fp32 weight gradient
    (within 2 %). In the GANs' own stacks the depth-2 convolutions do not pad depth (measured right
    unguarded), so this is the guard's own test."""
    from medvol.models.blocks import SNConv3d, sn_conv_stack

    torch.manual_seed(0)
    layers = torch.nn.ModuleList([SNConv3d(16, 32, 3, padding=1)]).eval()  # eval: u stays fixed
    x = torch.randn(2, 16, 2, 6, 6)
    grad_out = torch.randn(2, 32, 2, 6, 6)
    grads = []
    for amp in (False, True):
        layers.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = sn_conv_stack(layers, x, optimized=False, last_plain=True)
        (y.float() * grad_out).sum().backward()
        grads.append(layers[0].weight.grad.clone())
    error = float((grads[1] - grads[0]).norm() / grads[0].norm())
    assert error < 0.02, error
