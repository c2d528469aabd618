"""FastGAN: the SLE gate, the self-supervised D (decoders, quadrants, reconstruction on real images
only), the hinge step, shapes at every size, trainer steps, exact resume, parameter counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from medvol import cli
from medvol.config import load_config
from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.errors import MedvolError
from medvol.models import SIZES_2D, build, build_from_config
from medvol.models.gan2d.fastgan_nets import SkipLayerExcitation, quadrant
from medvol.models.gan2d.losses import discriminator_loss, generator_loss
from medvol.train import checkpoint as ckpt
from medvol.train.trainer import train


@pytest.fixture(scope="module")
def real_batch():
    slices = SliceDataset(PhantomVolumeDataset(32, 1), content_only=True)
    return torch.stack([slices[k]["image"] for k in range(0, len(slices), max(1, len(slices) // 8))][:8])


def _tiny(**options):
    torch.manual_seed(0)
    return build("fastgan", 32, base_width=4, latent_dim=8, **options)


# ---------------------------------------------------------------------- skip-layer excitation
def test_sle_gate_shape_and_range():
    torch.manual_seed(0)
    sle = SkipLayerExcitation(6, 5)
    x_low = 10 * torch.randn(3, 6, 16, 16)  # large inputs: the gate must still stay inside (0, 1)
    gate = sle.gate(x_low)
    assert gate.shape == (3, 5, 1, 1)
    assert float(gate.min()) >= 0.0 and float(gate.max()) <= 1.0
    assert float(gate.std()) > 0  # not a constant: it depends on x_low and the channel
    # The pool takes any side >= 4 to 4x4; the 4x4 conv then reduces it to one value per channel.
    assert sle.gate(torch.randn(3, 6, 4, 4)).shape == (3, 5, 1, 1)
    assert not torch.allclose(sle.gate(x_low), sle.gate(torch.randn(3, 6, 16, 16)))


def test_sle_gate_multiplies_x_high_channel_wise():
    torch.manual_seed(0)
    sle = SkipLayerExcitation(6, 5)
    x_low, x_high = torch.randn(2, 6, 8, 8), torch.randn(2, 5, 32, 32)
    y = sle(x_low, x_high)
    assert y.shape == x_high.shape
    expected = x_high * sle.gate(x_low)
    assert torch.allclose(y, expected, atol=1e-6)
    assert not torch.allclose(y, x_high, atol=1e-3)
    # Channel-wise: y / x_high is one number per (sample, channel), the same at every pixel.
    ratio = y / x_high
    assert torch.allclose(ratio, ratio[:, :, :1, :1].expand_as(ratio), atol=1e-4)


@pytest.mark.parametrize("size, pairs", [(32, [(4, 32)]), (64, [(4, 64)]), (128, [(8, 128)]),
                                         (256, [(8, 128), (16, 256)])])
def test_generator_applies_sle_at_the_documented_pairs(size, pairs):
    torch.manual_seed(0)
    system = build("fastgan", size, base_width=4, latent_dim=8)
    assert system.G.pairs == pairs and sorted(system.G.sle) == sorted(str(h) for _, h in pairs)
    seen = {}
    for high, module in system.G.sle.items():
        module.register_forward_hook(lambda m, args, out, high=high: seen.__setitem__(high, (args, out)))
    system.generate(system.sample_latent(2))
    assert sorted(seen) == sorted(system.G.sle)
    for (low, high) in pairs:
        (x_low, x_high), y = seen[str(high)]
        assert x_low.shape[-1] == low and x_high.shape[-1] == high
        gate = system.G.sle[str(high)].gate(x_low)
        assert torch.allclose(y, x_high * gate, atol=1e-6) and float(gate.max()) < 1.0


def test_sle_output_reaches_the_image():
    """The gated map is what the later layers see: forcing the gate shut changes G's output."""
    system = _tiny()
    z = system.sample_latent(2, torch.Generator().manual_seed(1))
    before = system.generate(z)
    with torch.no_grad():
        system.G.sle["32"].excite.bias.fill_(-50.0)  # sigmoid(-50) ~ 0: every channel gated off
    after = system.generate(z)
    assert not torch.allclose(before, after, atol=1e-3)


# ---------------------------------------------------------------------- self-supervised D
def test_quadrant_is_the_explicit_slice():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    index = torch.tensor([2, 1])
    q = quadrant(x, index)
    assert torch.equal(q[0], x[0, :, 4:, :4]) and torch.equal(q[1], x[1, :, :4, 4:])
    for k, (rows, cols) in enumerate([(slice(0, 4), slice(0, 4)), (slice(0, 4), slice(4, 8)),
                                      (slice(4, 8), slice(0, 4)), (slice(4, 8), slice(4, 8))]):
        assert torch.equal(quadrant(x, torch.tensor([k, k])), x[:, :, rows, cols])


@pytest.mark.parametrize("size", SIZES_2D)
@pytest.mark.parametrize("channels", [1, 2])
def test_shapes_at_every_size(size, channels):
    system = build("fastgan", size, base_width=4, latent_dim=8, channels=channels)
    x = system.generate(system.sample_latent(3))
    assert x.shape == (3, channels, size, size) and float(x.abs().max()) <= 1.0
    logits, f16, f8 = system.D.encode(x)
    assert logits.shape == (3, 25) and f16.shape == (3, 16, 16, 16) and f8.shape == (3, 32, 8, 8)
    assert system.D(x)[0].shape == (3, 25) and system.D(x)[1].shape == (3, 32 * 64)
    whole, part = system.D.decode(f16, f8, torch.tensor([0, 3, 1]))
    side = min(128, size)
    assert whole.shape == (3, channels, side, side)
    assert part.shape == (3, channels, min(128, size // 2), min(128, size // 2))
    targets = system.reconstruction_targets(x, torch.tensor([0, 3, 1]))
    assert targets[0].shape == whole.shape and targets[1].shape == part.shape


@pytest.mark.parametrize("size", [64, 256])
def test_reconstruction_targets_are_the_downsampled_image_and_quadrant(size):
    system = build("fastgan", size, base_width=2, latent_dim=4)
    real = torch.randn(2, 1, size, size)
    index = torch.tensor([3, 0])
    whole, part = system.reconstruction_targets(real, index)
    k_whole, k_part = size // min(128, size), (size // 2) // min(128, size // 2)
    h = size // 2
    assert torch.allclose(whole, F.avg_pool2d(real, k_whole) if k_whole > 1 else real)
    crops = torch.stack([real[0, :, h:, h:], real[1, :, :h, :h]])
    assert torch.allclose(part, F.avg_pool2d(crops, k_part) if k_part > 1 else crops)


def test_part_decoder_reads_the_same_quadrant_of_f16():
    system = _tiny()
    f16, f8 = torch.randn(2, 16, 16, 16), torch.randn(2, 32, 8, 8)
    seen = []
    system.D.decoder_part.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    system.D.decode(f16, f8, torch.tensor([1, 2]))
    assert torch.equal(seen[0], torch.stack([f16[0, :, :8, 8:], f16[1, :, 8:, :8]]))


def test_reconstruction_is_on_real_images_and_reaches_d(real_batch):
    system = _tiny(diffaugment="")  # no augmentation: D's real input is the batch itself
    seen = []
    original = system.reconstruction_targets
    system.reconstruction_targets = lambda real, index: seen.append(real) or original(real, index)
    decoded = []
    system.D.decoder_whole.register_forward_hook(lambda m, args, out: decoded.append(args[0]))
    before = {k: v.detach().clone() for k, v in system.D.named_parameters()}
    state = system._prepare_step(real_batch, None, system.make_optimizers(), 0, None, None,
                                 torch.Generator().manual_seed(2))
    system._train_only("D")
    system._step_D(state)
    system._unfreeze()
    assert len(seen) == 1 and torch.equal(seen[0], real_batch)  # once, on the real batch only
    assert len(decoded) == 1
    assert "D_recon" in state.out and float(state.out["D_recon"]) > 0
    after = dict(system.D.named_parameters())
    for prefix in ("decoder_whole.", "decoder_part.", "stem.", "blocks.0."):
        assert any(not torch.equal(before[k], after[k]) for k in after if k.startswith(prefix)), prefix


def test_reconstruction_gradient_reaches_trunk_and_decoders_not_g(real_batch):
    system = _tiny()
    logits, f16, f8 = system.D.encode(real_batch)
    recon = system.reconstruction(real_batch, f16, f8, torch.tensor([0, 1, 2, 3] * 2))
    recon.backward()
    for name, module in (("stem", system.D.stem), ("block", system.D.blocks[0]),
                         ("decoder_whole", system.D.decoder_whole), ("decoder_part", system.D.decoder_part)):
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads), name
    assert all(p.grad is None for p in system.G.parameters())
    assert all(p.grad is None for p in system.D.head.parameters())  # the logits play no part


def test_recon_weight_zero_leaves_the_decoders_alone(real_batch):
    system = _tiny(recon_weight=0.0)
    before = {k: v.detach().clone() for k, v in system.D.named_parameters() if k.startswith("decoder")}
    out = system.train_step(real_batch, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(0))
    assert "D_recon" not in out and before
    after = dict(system.D.named_parameters())
    assert all(torch.equal(v, after[k]) for k, v in before.items())


@pytest.mark.parametrize("recon_loss", ["l1", "mse"])
def test_reconstruction_distance(recon_loss):
    system = _tiny(recon_loss=recon_loss)
    real = torch.zeros(2, 1, 32, 32)
    system.D.decode = lambda f16, f8, index: (torch.full((2, 1, 32, 32), 0.5), torch.full((2, 1, 16, 16), -0.25))
    recon = system.reconstruction(real, None, None, torch.tensor([0, 1]))
    expected = 0.5 + 0.25 if recon_loss == "l1" else 0.25 + 0.0625
    assert float(recon) == pytest.approx(expected)


# ---------------------------------------------------------------------- losses and the step
def test_hinge_values_on_fixed_logits():
    real = torch.tensor([[2.0, 0.5], [-1.0, 1.0]])
    fake = torch.tensor([[-2.0, 0.0], [1.0, -0.5]])
    loss_real, loss_fake = discriminator_loss("hinge", real, fake)
    assert float(loss_real) == pytest.approx((0 + 0.5 + 2 + 0) / 4)
    assert float(loss_fake) == pytest.approx((0 + 1 + 2 + 0.5) / 4)
    assert float(generator_loss("hinge", fake)) == pytest.approx(-(-2 + 0 + 1 - 0.5) / 4)


def test_d_step_is_hinge_plus_weighted_reconstruction(real_batch):
    system = _tiny(diffaugment="", recon_weight=2.5)
    system.eval()  # BatchNorm and spectral norm: the same G and D before and inside the step
    with torch.no_grad():
        z = system.sample_latent(real_batch.shape[0], torch.Generator().manual_seed(7))
        fake = system.G(z)
        d_real, d_fake = system.D(real_batch)[0], system.D(fake)[0]
    state = system._prepare_step(real_batch, None, system.make_optimizers(), 0, None, None,
                                 torch.Generator().manual_seed(7))
    system._train_only("D")
    system._step_D(state)
    system._unfreeze()
    out = state.out
    assert float(out["D_real"]) == pytest.approx(float(F.relu(1 - d_real).mean()), rel=1e-5)
    assert float(out["D_fake"]) == pytest.approx(float(F.relu(1 + d_fake).mean()), rel=1e-5)
    assert float(out["D"]) == pytest.approx(float(out["D_real"] + out["D_fake"] + 2.5 * out["D_recon"]), rel=1e-5)


def test_g_step_is_the_hinge_g_term(real_batch):
    system = _tiny(diffaugment="")
    system.eval()  # as above: no power iteration between the reference and the step
    optimizers = system.make_optimizers()
    with torch.no_grad():
        z = system.sample_latent(real_batch.shape[0], torch.Generator().manual_seed(4))
        expected = -system.D(system.G(z))[0].mean()
    state = system._prepare_step(real_batch, None, optimizers, 0, None, None, torch.Generator().manual_seed(4))
    system._train_only("G")
    system._step_G(state)
    system._unfreeze()
    assert float(state.out["G"]) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("diffaugment", ["", None])
def test_one_d_step_separates_better(real_batch, diffaugment):
    system = _tiny(diffaugment=diffaugment)
    system.D.eval()  # BatchNorm: measure with the same statistics before and after
    optimizers = system.make_optimizers()
    for group in optimizers["D"].param_groups:
        group["lr"] = 2e-3
    z = system.sample_latent(real_batch.shape[0], torch.Generator().manual_seed(5))
    with torch.no_grad():
        fake = system.G(z)

    def separation():
        with torch.no_grad():
            d_real, d_fake = system.D(real_batch)[0], system.D(fake)[0]
        return float(d_real.mean() - d_fake.mean()), float(sum(discriminator_loss("hinge", d_real, d_fake)))

    before = separation()
    state = system._prepare_step(real_batch, None, optimizers, 0, None, None, torch.Generator().manual_seed(5))
    system._train_only("D")
    system._step_D(state)
    system._unfreeze()
    after = separation()
    assert after[0] > before[0] and after[1] < before[1], (before, after)


def test_defaults_follow_the_paper():
    system = build("fastgan", 128)
    assert (system.base_width, system.latent_dim, system.loss) == (64, 256, "hinge")
    assert system.policy == ("color", "translation", "cutout")
    assert system.lr == {"D": 2e-4, "G": 2e-4} and system.betas == (0.5, 0.999)
    assert (system.recon_weight, system.recon_loss) == (1.0, "l1")
    convs = [m for m in system.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    assert convs and all(hasattr(m, "parametrizations") for m in convs)  # spectral norm on every conv
    assert _tiny(diffaugment="").policy == ()


@pytest.mark.parametrize("options, key", [({"recon_loss": "lpips"}, "recon_loss"), ({"recon_weight": -1}, "recon_weight"),
                                          ({"diffaugment": "flip"}, "diffaugment"), ({"loss": "bce"}, "loss"),
                                          ({"num_classes": 2}, "num_classes")])
def test_bad_options(options, key):
    with pytest.raises(MedvolError, match=key):
        build("fastgan", 32, base_width=4, latent_dim=8, **options)


# ---------------------------------------------------------------------- parameter counts
def _w(r: int, c: int) -> int:
    return min(16 * c, max(c // 2, 64 * c // r))


def _fastgan_counts(size: int, c: int, z: int, ch: int) -> tuple[int, int]:
    """By hand from the layer list (docs/models2d.md); BatchNorm has 2 parameters per channel, GLU
    halves 2w conv outputs to w, convs followed by BatchNorm have no bias."""
    g = z * 2 * _w(4, c) * 16 + 2 * 2 * _w(4, c)  # ConvT 4x4, BN on 2 w4
    r = 8
    while r <= size:
        g += 9 * _w(r // 2, c) * 2 * _w(r, c) + 4 * _w(r, c)
        r *= 2
    pairs = {32: [(4, 32)], 64: [(4, 64)], 128: [(8, 128)], 256: [(8, 128), (16, 256)]}[size]
    for low, high in pairs:  # conv 4x4 low -> high (+bias), conv 1x1 high -> high (+bias)
        g += 16 * _w(low, c) * _w(high, c) + _w(high, c) + _w(high, c) ** 2 + _w(high, c)
    g += 9 * _w(size, c) * ch + ch
    d = 9 * ch * _w(size, c) + _w(size, c)  # stem conv 3x3 with bias
    r = size
    while r > 8:  # conv 4x4 + BN + conv 3x3 + BN; shortcut conv 1x1 + BN
        a, b = _w(r, c), _w(r // 2, c)
        d += 16 * a * b + 2 * b + 9 * b * b + 2 * b + a * b + 2 * b
        r //= 2
    w8 = _w(8, c)
    d += w8 * w8 + 2 * w8 + 16 * w8 + 1
    for width_in, side in ((w8, min(128, size)), (_w(16, c), min(128, size // 2))):
        prev, r = width_in, 16
        while r <= side:
            d += 9 * prev * 2 * _w(r, c) + 4 * _w(r, c)
            prev, r = _w(r, c), 2 * r
        d += 9 * prev * ch + ch
    return g, d


@pytest.mark.parametrize("size", SIZES_2D)
@pytest.mark.parametrize("channels", [1, 2])
def test_param_counts_by_hand(size, channels):
    g, d = _fastgan_counts(size, 64, 256, channels)
    with torch.device("meta"):
        counts = build("fastgan", size, channels=channels).param_counts()
    assert counts == {"G": g, "D": d, "total": g + d}


def test_param_counts_in_the_docs_and_info(capsys):
    assert _fastgan_counts(128, 64, 256, 1) == (21_230_817, 11_425_187)
    assert _fastgan_counts(256, 64, 256, 1) == (21_381_537, 11_488_707)
    assert cli.main(["info", "--model", "fastgan", "--size", "256", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"G": 21_381_537, "D": 11_488_707, "total": 32_870_244}


# ---------------------------------------------------------------------- trainer, resume, configs
@pytest.mark.parametrize("overrides", [
    [],
    ["--model.channels", "2", "--data.masks", "true", "--data.phantom_nodules", "true", "--model.recon_loss", "mse"],
    ["--train.mode", "optimized", "--train.amp", "bf16", "--data.plane", "coronal", "--model.diffaugment", ""],
])
def test_two_trainer_steps_on_phantom_slices(tiny2d, overrides):
    cfg = tiny2d(*overrides, name="fastgan")
    run = train(cfg)
    state = ckpt.read_checkpoint(run)
    assert state["iteration"] == 2
    system, _, _ = ckpt.load_checkpoint(run)
    assert system.options() == {"channels": cfg.model.channels, "diffaugment": cfg.model.diffaugment,
                                "recon_weight": 1.0, "recon_loss": cfg.model.recon_loss}
    assert system.generate(system.sample_latent(2)).shape == (2, cfg.model.channels, 32, 32)


@pytest.mark.parametrize("overrides, key", [
    (["--model.recon_loss", "lpips"], "model.recon_loss"),
    (["--model.recon_weight", "-1"], "model.recon_weight"),
    (["--model.diffaugment", "flip"], "diffaugment"),
    (["--model.name", "dcgan", "--model.recon_weight", "2"], "model.recon_weight: only for fastgan, not dcgan"),
    (["--model.loss", "hinge"], "model.loss: only for dcgan and pix2pix, not fastgan"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, overrides, key):
    from tests.models2d.conftest import assert_config_error  # here: a bare machine has no tests package
    assert_config_error(tmp_path, capsys, "{name: fastgan, size: 32, base_width: 4, latent_dim: 8}", overrides, key)


def test_shipped_configs_train_as_published():
    """What tests/models/test_contract.py::test_shipped_configs does not check: the rates, batch and
    DiffAugment policy of the paper."""
    root = Path(__file__).resolve().parents[2] / "configs"
    for size in (128, 256):
        cfg = load_config(root / f"fastgan_{size}.yaml")
        assert cfg.train.lr == {"G": 2e-4, "D": 2e-4} and cfg.data.batch == 8
        with torch.device("meta"):
            assert build_from_config(cfg.model).policy == ("color", "translation", "cutout")
    tiny = load_config(root / "fastgan_tiny.yaml")
    assert tiny.model.size == 32
    assert build_from_config(tiny.model).policy == ("color", "translation", "cutout")  # null: the paper's
