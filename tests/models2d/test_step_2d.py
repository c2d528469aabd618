"""The 2D training step: one D step separates real from fake better, for every loss and option;
two trainer steps of each model on phantom slices; exact resume; config errors."""

from __future__ import annotations

import pytest
import torch

from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.models import build
from medvol.models.gan2d.losses import LOSSES, discriminator_loss
from medvol.train import checkpoint as ckpt
from medvol.train.trainer import train


@pytest.fixture(scope="module")
def real_batch():
    slices = SliceDataset(PhantomVolumeDataset(32, 1), content_only=True)
    return torch.stack([slices[k]["image"] for k in range(0, len(slices), max(1, len(slices) // 8))][:8])


def _separation(system, real, fake):
    with torch.no_grad():
        d_real, d_fake = system.D(real)[0], system.D(fake)[0]
    loss = sum(discriminator_loss(system.loss, d_real, d_fake))
    return float(d_real.mean() - d_fake.mean()), float(loss)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("options", [{}, {"norm": "none", "spectral_norm_d": True, "diffaugment": "translation"}])
def test_one_d_step_separates_better(real_batch, loss, options):
    torch.manual_seed(0)
    system = build("dcgan", 32, base_width=8, latent_dim=16, loss=loss, **options)
    system.D.eval()  # BatchNorm: measure with the same statistics before and after
    optimizers = system.make_optimizers()
    for group in optimizers["D"].param_groups:
        group["lr"] = 2e-3
    if system.clip:  # WGAN: start inside the clipping box, as after any earlier D step
        with torch.no_grad():
            for p in system.D.parameters():
                p.clamp_(-system.clip, system.clip)
    # The step's first draw is the fake batch's latent: the same generator state gives the same fakes.
    z = system.sample_latent(real_batch.shape[0], torch.Generator().manual_seed(5))
    with torch.no_grad():
        fake = system.G(z)
    before = _separation(system, real_batch, fake)
    state = system._prepare_step(real_batch, None, optimizers, 0, None, None, torch.Generator().manual_seed(5))
    system._train_only("D")
    system._step_D(state)
    system._unfreeze()
    after = _separation(system, real_batch, fake)
    assert after[0] > before[0], (before, after)
    assert after[1] < before[1], (before, after)
    if loss == "wgan":
        assert max(p.detach().abs().max().item() for p in system.D.parameters()) <= 0.01 + 1e-7
    assert ("D_gp" in state.out) == (loss == "wgan-gp")


def test_feature_matching_and_smoothing_are_in_the_step(real_batch):
    torch.manual_seed(0)
    system = build("dcgan", 32, base_width=4, latent_dim=8, fm_weight=1.0, label_smoothing=0.1,
                   diffaugment="color,translation,cutout")
    out = system.train_step(real_batch, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"D", "D_real", "D_fake", "G", "G_fm"}
    assert system.real_target == pytest.approx(0.9)


def test_step_is_reproducible(real_batch):
    results = []
    for _ in range(2):
        torch.manual_seed(0)
        system = build("dcgan", 32, base_width=4, latent_dim=8, loss="wgan-gp", diffaugment="color,cutout")
        out = system.train_step(real_batch, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(3))
        results.append((out, system.state_dict()))
    assert all(torch.equal(results[0][0][k], results[1][0][k]) for k in results[0][0])
    assert all(torch.equal(v, results[1][1][k]) for k, v in results[0][1].items())


@pytest.mark.parametrize("name, overrides", [
    ("dcgan", []),
    ("dcgan", ["--model.loss", "hinge", "--model.norm", "instance", "--model.spectral_norm_g", "true",
               "--data.plane", "coronal"]),
    ("dcgan", ["--model.channels", "2", "--data.masks", "true", "--data.phantom_nodules", "true",
               "--data.slice_labels", "mask"]),
    ("mlpgan", []),
    ("mlpgan", ["--train.mode", "optimized", "--train.amp", "bf16", "--data.plane", "sagittal"]),
])
def test_two_trainer_steps_on_phantom_slices(tiny2d, name, overrides):
    cfg = tiny2d(*overrides, name=name)
    run = train(cfg)
    state = ckpt.read_checkpoint(run)
    assert state["iteration"] == 2
    system, _, _ = ckpt.load_checkpoint(run)
    x = system.generate(system.sample_latent(2))
    assert x.shape == (2, cfg.model.channels, 32, 32)
    assert len(state["data"]["spacing"]) == 2


@pytest.mark.parametrize("overrides, key", [
    (["--model.loss", "mse"], "model.loss"),
    (["--model.size", "512"], "model.size"),
    (["--model.label_smoothing", "0.1", "--model.loss", "hinge"], "label_smoothing"),
    (["--model.diffaugment", "flip"], "diffaugment"),
    (["--model.gp_weight", "-1"], "model.gp_weight"),
    (["--data.plane", "oblique"], "data.plane"),
    (["--data.masks", "true"], "model.channels"),
    (["--data.slice_labels", "mask", "--data.slice_class", "1"], "data.slice_class"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, capsys, overrides, key):
    from tests.models2d.conftest import assert_config_error  # here: a bare machine has no tests package
    assert_config_error(tmp_path, capsys, "{name: dcgan, size: 32, base_width: 4, latent_dim: 8}", overrides, key)


def test_3d_model_refuses_2d_options():
    from medvol.config import load_config
    from medvol.errors import MedvolError
    from medvol.models import build_from_config

    with pytest.raises(MedvolError, match="model.loss: only for dcgan( and pix2pix)?, not hagan"):
        build_from_config(load_config(None, ["--model.name", "hagan", "--model.loss", "hinge"]).model)


@pytest.mark.parametrize("name", ["dcgan", "mlpgan"])
def test_shipped_configs_train_as_published(name):
    """What tests/models/test_contract.py::test_shipped_configs does not check: DCGAN's Adam rates and batch."""
    from pathlib import Path

    from medvol.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / f"{name}_64.yaml")
    assert cfg.train.lr == {"G": 2e-4, "D": 2e-4} and cfg.data.batch == 64
