"""pix2pix: PatchGAN receptive fields (from the layers and from the gradient of one output pixel),
the U-Net's layers and parameter counts, generation from masks with seeded dropout, the losses of
both sub-steps, training and exact resume through the trainer."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medvol import cli
from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.errors import MedvolError
from medvol.models import build
from medvol.models.gan2d.pix2pix import PatchGANDiscriminator, UNetGenerator, dropout_seed, receptive_field
from medvol.train import checkpoint as ckpt
from medvol.train.trainer import train


@pytest.mark.parametrize("patch", [10, 22, 46])
def test_receptive_field_from_the_layers(patch):
    d = PatchGANDiscriminator(2, 8, patch)
    assert receptive_field(list(d.net)) == patch


def test_receptive_field_of_known_stacks():
    conv = lambda k, s, d=1: nn.Conv2d(1, 1, k, s, dilation=d)
    # pix2pix's 70x70 PatchGAN: three 4x4 stride-2 convs, two 4x4 stride-1 convs.
    assert receptive_field([conv(4, 2)] * 3 + [conv(4, 1)] * 2) == 70
    assert receptive_field([conv(4, 2), conv(4, 1), conv(4, 1)]) == 16
    assert receptive_field([conv(3, 1, 2), nn.ReLU(), conv(3, 1)]) == 7
    assert receptive_field([nn.ReLU()]) == 1


@pytest.mark.parametrize("patch", [10, 22, 46])
def test_receptive_field_is_the_gradient_footprint(patch):
    """The input pixels one central output pixel depends on form a patch x patch square."""
    torch.manual_seed(0)
    d = PatchGANDiscriminator(2, 4, patch).double().eval()  # eval: no coupling across the batch
    x = torch.randn(1, 2, 96, 96, dtype=torch.float64, requires_grad=True)
    out = d(x)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3))).flatten()
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2))).flatten()
    assert int(rows[-1] - rows[0]) + 1 == patch and int(cols[-1] - cols[0]) + 1 == patch
    assert len(rows) == len(cols) == patch  # contiguous
    assert rows[0] > 0 and rows[-1] < 95  # inside the image: the padding does not clip it


def _layers(net: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kind)]


def test_unet_layers_at_128():
    g = UNetGenerator(128, 64)
    down = _layers(g.down, nn.Conv2d)
    assert [m.out_channels for m in down] == [64, 128, 256, 512, 512, 512, 512]
    assert [m.in_channels for m in down] == [1, 64, 128, 256, 512, 512, 512]
    up = _layers(g, nn.ConvTranspose2d)
    assert [m.out_channels for m in up] == [512, 512, 512, 256, 128, 64, 1]
    # Each decoder layer after the first takes its predecessor and the mirrored encoder map.
    assert [m.in_channels for m in up] == [512, 1024, 1024, 1024, 512, 256, 128]
    assert all(m.kernel_size == (4, 4) and m.stride == (2, 2) for m in down + up)
    assert g.dropout_layers == 2  # CD512-CD512, then C512-C256-C128-C64
    norms = [any(isinstance(m, nn.BatchNorm2d) for m in layer) for layer in g.down]
    assert norms == [False, True, True, True, True, True, False]  # none on C64 nor on the 1x1 map
    assert all(isinstance(layer[-1], nn.LeakyReLU) and layer[-1].negative_slope == 0.2 for layer in g.down)


def test_skips_carry_the_mask_past_a_closed_bottleneck():
    """With the 1x1 bottleneck zeroed, only the skip connections can make the output depend on the mask."""
    torch.manual_seed(0)
    g = UNetGenerator(32, 4).eval()
    with torch.no_grad():
        g.down[-1][0].weight.zero_()
        g.down[-1][0].bias.zero_()
        a, b = g(_masks(1, 32), []), g(-_masks(1, 32), [])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("size, depth, dropouts", [(64, 6, 1), (128, 7, 2), (256, 8, 3), (32, 5, 0)])
def test_unet_depth_follows_the_size(size, depth, dropouts):
    g = UNetGenerator(size, 64)
    assert len(g.down) == depth and g.dropout_layers == dropouts
    x = -torch.ones(2, 1, size, size)
    noise = g.draw_noise(2, torch.Generator().manual_seed(0), torch.device("cpu"))
    with torch.no_grad():
        y = g.eval()(x, noise)
    assert y.shape == (2, 1, size, size)


def _pix2pix_counts(size: int, c: int, patch: int) -> tuple[int, int]:
    """By hand: 4x4 kernels; BatchNorm scale + shift; biases only on convs without a norm after them."""
    n = size.bit_length() - 1
    w = [c * min(2 ** i, 8) for i in range(n)]
    g = 16 * w[0] + w[0]                                              # C64, bias, no norm
    g += sum(16 * a * b + 2 * b for a, b in zip(w[:-2], w[1:-1]))     # C128 ... with BatchNorm
    g += 16 * w[-2] * w[-1] + w[-1]                                   # innermost, bias, no norm
    out = w[-2::-1]                                                   # decoder widths 512 ... 64
    g += 16 * w[-1] * out[0] + 2 * out[0]
    g += sum(16 * 2 * a * b + 2 * b for a, b in zip(out, out[1:]))
    g += 16 * 2 * out[-1] + 1                                         # to one channel, bias
    k = {10: 1, 22: 2, 46: 3}[patch]
    dw = [c * 2 ** i for i in range(k)]
    d = 16 * 2 * c + c + sum(16 * a * b + 2 * b for a, b in zip(dw, dw[1:])) + 16 * dw[-1] + 1
    return g, d


@pytest.mark.parametrize("size", [64, 128, 256])
@pytest.mark.parametrize("patch", [10, 22, 46])
def test_param_counts(size, patch):
    with torch.device("meta"):
        counts = build("pix2pix", size, patch=patch).param_counts()
    g, d = _pix2pix_counts(size, 64, patch)
    assert counts == {"G": g, "D": d, "total": g + d}


def test_param_counts_pinned():
    with torch.device("meta"):
        assert build("pix2pix", 128).param_counts() == {"G": 41_823_425, "D": 662_337, "total": 42_485_762}
        # pix2pix's own unet_256 (RGB -> RGB) has 54,414,019 parameters. Ours at 256 with two more
        # input and output channels is that plus the innermost conv's bias (512), which we keep
        # because no norm follows it.
        g = build("pix2pix", 256).param_counts()["G"] + 2 * 16 * 64 + 2 * (16 * 128 + 1)
        assert g == 54_414_019 + 512


def _masks(batch: int, size: int) -> torch.Tensor:
    m = -torch.ones(batch, 1, size, size)
    m[0, :, 20:30, 24:40] = 1
    m[-1, :, 5:9, 5:9] = 1
    return m


def test_generate_seeds_dropout_from_z():
    torch.manual_seed(0)
    system = build("pix2pix", 64, base_width=4)
    masks = _masks(3, 64)
    z = system.sample_latent(3)
    buffers = {k: v.clone() for k, v in system.G.named_buffers()}
    x = system.generate(z, masks=masks)
    assert x.shape == (3, 2, 64, 64) and torch.equal(x[:, 1:], masks) and x[:, 0].abs().max() <= 1
    assert torch.equal(system.generate(z, masks=masks), x)                     # same z, same images
    assert torch.equal(system.generate(z[1:], masks=masks[1:]), x[1:])          # independent of the batch
    assert not torch.allclose(system.generate(system.sample_latent(3), masks=masks)[:, 0], x[:, 0])
    assert all(torch.equal(v, buffers[k]) for k, v in system.G.named_buffers())  # nor the running stats
    assert not torch.allclose(system.generate(z, masks=-masks)[:, 0], x[:, 0])  # the mask conditions
    assert dropout_seed(z[0]) == dropout_seed(z[0].clone()) != dropout_seed(z[1])


def test_generation_normalises_each_image_with_its_own_statistics():
    """pix2pix's test-time protocol: G as in training (BatchNorm on the batch, here one image) with
    the image's seeded dropout masks; not the running statistics."""
    torch.manual_seed(0)
    system = build("pix2pix", 64, base_width=4)
    masks, z = _masks(2, 64), system.sample_latent(2)
    twin = copy.deepcopy(system.G).train()
    noise = twin.draw_noise(1, torch.Generator().manual_seed(dropout_seed(z[1])), torch.device("cpu"))
    with torch.no_grad():
        expected = twin(masks[1:], noise)
    torch.testing.assert_close(system.generate(z, masks=masks)[1:, :1], expected, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "masks: pix2pix generates images from masks"),
    ({"masks": -torch.ones(2, 1, 32, 32)}, r"masks: expected shape \[2, 1, 64, 64\]"),
    ({"masks": torch.rand(2, 1, 64, 64)}, "masks: values must be -1"),
])
def test_generate_errors(kwargs, match):
    system = build("pix2pix", 64, base_width=4)
    with pytest.raises(MedvolError, match=match):
        system.generate(system.sample_latent(2), **kwargs)
    with pytest.raises(MedvolError, match=r"z: expected shape \[B, 4\]"):
        system.generate(torch.zeros(2, 3), masks=-torch.ones(2, 1, 64, 64))


@pytest.mark.parametrize("options, key", [({"channels": 1}, "channels: pix2pix"), ({"loss": "hinge"}, "loss"),
                                          ({"patch": 70}, "patch"), ({"l1_weight": -1.0}, "l1_weight")])
def test_bad_options(options, key):
    with pytest.raises(MedvolError, match=key):
        build("pix2pix", 64, base_width=4, **options)


@pytest.fixture(scope="module")
def real_pairs():
    slices = SliceDataset(PhantomVolumeDataset(64, 2, nodules=True), masks=True, labels="mask", keep_class=1)
    return torch.stack([slices[k]["image"] for k in range(len(slices))][:4])


@pytest.mark.parametrize("loss", ["bce", "lsgan"])
def test_losses_of_both_substeps_by_hand(real_pairs, loss):
    """D: half of (real term + fake term); G: the G term + 100 x L1 to the real image. The expected
    values come from a copy of the system fed the same dropout draws."""
    torch.manual_seed(0)
    system = build("pix2pix", 64, base_width=4, loss=loss)
    optimizers = system.make_optimizers()
    image, mask = real_pairs[:, :1], real_pairs[:, 1:]
    twin = copy.deepcopy(system)
    with torch.no_grad():
        fake = twin.G(mask, twin.G.draw_noise(4, torch.Generator().manual_seed(3), torch.device("cpu")))
        r, f = twin.D(real_pairs), twin.D(torch.cat([fake, mask], 1))
    if loss == "bce":
        expected = 0.5 * (F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                          + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
    else:
        expected = 0.5 * (0.5 * ((r - 1) ** 2).mean() + 0.5 * (f ** 2).mean())
    state = system._prepare_step(real_pairs, None, optimizers, 0, None, None, torch.Generator().manual_seed(3))
    system._train_only("D")
    system._step_D(state)
    torch.testing.assert_close(state.out["D"], expected)

    twin = copy.deepcopy(system)
    with torch.no_grad():
        fake = twin.G(mask, twin.G.draw_noise(4, torch.Generator().manual_seed(4), torch.device("cpu")))
        f = twin.D(torch.cat([fake, mask], 1))
    adversarial = (F.binary_cross_entropy_with_logits(f, torch.ones_like(f)) if loss == "bce"
                   else 0.5 * ((f - 1) ** 2).mean())
    l1 = (fake - image).abs().mean()
    state = system._prepare_step(real_pairs, None, optimizers, 0, None, None, torch.Generator().manual_seed(4))
    system._train_only("G")
    system._step_G(state)
    system._unfreeze()
    torch.testing.assert_close(state.out["G_l1"], l1)
    torch.testing.assert_close(state.out["G"], adversarial + 100 * l1)


def test_one_d_step_separates_better(real_pairs):
    torch.manual_seed(0)
    system = build("pix2pix", 64, base_width=8)
    system.D.eval()  # BatchNorm: measure with the same statistics before and after
    optimizers = system.make_optimizers()
    mask = real_pairs[:, 1:]
    with torch.no_grad():
        fake = system.G(mask, system.G.draw_noise(4, torch.Generator().manual_seed(5), torch.device("cpu")))
    fake_pairs = torch.cat([fake, mask], 1)

    def separation():
        with torch.no_grad():
            r, f = system.D(real_pairs), system.D(fake_pairs)
        loss = F.binary_cross_entropy_with_logits(r, torch.ones_like(r)) + \
            F.binary_cross_entropy_with_logits(f, torch.zeros_like(f))
        return float(r.mean() - f.mean()), float(loss)

    before = separation()
    state = system._prepare_step(real_pairs, None, optimizers, 0, None, None, torch.Generator().manual_seed(5))
    system._train_only("D")
    system._step_D(state)
    system._unfreeze()
    after = separation()
    assert after[0] > before[0] and after[1] < before[1], (before, after)


MASKED = ["--model.channels", "2", "--data.masks", "true", "--data.phantom_nodules", "true",
          "--model.size", "64", "--model.latent_dim", "4"]


def test_two_trainer_steps_on_phantom_slices_with_masks(tiny2d):
    cfg = tiny2d(*MASKED, "--model.patch", "22", "--model.loss", "lsgan", name="pix2pix")
    run = train(cfg)
    assert ckpt.read_checkpoint(run)["iteration"] == 2
    system, _, _ = ckpt.load_checkpoint(run)
    assert system.options() == {"channels": 2, "loss": "lsgan", "l1_weight": 100.0, "patch": 22}
    x = system.generate(system.sample_latent(2), masks=_masks(2, 64))
    assert x.shape == (2, 2, 64, 64) and torch.isfinite(x).all()


def test_config_errors_name_the_key(tmp_path, capsys):
    from tests.models2d.conftest import assert_config_error  # here: a bare machine has no tests package
    for overrides, key in ((["--model.patch", "70"], "patch"), (["--model.loss", "wgan"], "loss"),
                           (["--model.fm_l1_weight", "1"], "model.fm_l1_weight"),
                           (["--model.l1_weight", "-1"], "model.l1_weight")):
        assert_config_error(tmp_path, capsys, "{name: pix2pix, size: 64, base_width: 4, latent_dim: 4, channels: 2}", overrides, key,
                            data=", masks: true, phantom_nodules: true")


def test_info_counts(capsys):
    assert cli.main(["info", "--model", "pix2pix", "--size", "128", "--option", "patch=10", "--json"]) == 0
    g, d = _pix2pix_counts(128, 64, 10)
    assert json.loads(capsys.readouterr().out) == {"G": g, "D": d, "total": g + d}


@pytest.mark.parametrize("name", ["pix2pix_128", "pix2pix_256", "pix2pix_tiny"])
def test_shipped_configs(name):
    from pathlib import Path

    from medvol.config import load_config
    from medvol.models import build_from_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}.yaml")
    assert cfg.model.name == "pix2pix" and cfg.model.channels == 2 and cfg.data.masks and cfg.data.phantom_nodules
    with torch.device("meta"):
        build_from_config(cfg.model)
    if name != "pix2pix_tiny":  # counts and widths: tests/models/test_contract.py
        assert (cfg.model.l1_weight, cfg.model.patch, cfg.model.loss) == (100.0, 46, "bce")
