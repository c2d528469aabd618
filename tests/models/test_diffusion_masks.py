"""Paired image + mask generation by the latent diffusion model (``model.mask_channels`` K): the
autoencoder and D carry 1 + K channels, the U-Net is unchanged, both stages train on paired
batches, and ``medvol generate`` writes the label map beside each image as for the GANs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from medvol.models import build

TINY = dict(base_width=4, latent_dim=2, train_timesteps=100, sample_steps=3)


@pytest.mark.parametrize("name", ["ldm", "ldm2d"])
def test_only_the_voxel_layers_change(name):
    """K widens the encoder's first conv (input), the decoder's last conv (output) and D's first
    conv (input); the U-Net, which sees only latents, is untouched."""
    k, c, taps = 2, 32, 3 ** (3 if name == "ldm" else 2)
    systems = build(name, 32, mask_channels=0), build(name, 32, mask_channels=k)
    plain, paired = ({key: tuple(v.shape) for key, v in s.state_dict().items()} for s in systems)
    counts = [s.param_counts() for s in systems]
    grown = {key: (plain[key], paired[key]) for key in plain if plain[key] != paired[key]}
    assert plain.keys() == paired.keys()
    assert set(grown) == {"autoencoder.encoder.blocks.0.conv.weight", "autoencoder.decoder.blocks.7.conv.weight",
                          "autoencoder.decoder.blocks.7.conv.bias", "D.initial_conv.conv.weight"}
    assert grown["autoencoder.encoder.blocks.0.conv.weight"][1][1] == 1 + k
    assert grown["autoencoder.decoder.blocks.7.conv.weight"][1][0] == 1 + k
    assert grown["D.initial_conv.conv.weight"][1][1] == 1 + k
    before, after = counts
    assert after["unet"] == before["unet"]
    # encoder: K c taps; decoder: K (c taps + 1); D: K c 4^d (c = 32, the published width)
    assert after["autoencoder"] - before["autoencoder"] == k * c * taps + k * (c * taps + 1)
    assert after["D"] - before["D"] == k * c * 4 ** (3 if name == "ldm" else 2)


def _paired_batch(system, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (batch,) + (system.size,) * system.dims
    image = torch.rand((batch, 1) + shape[1:], generator=g) * 2 - 1
    labels = torch.randint(0, system.mask_channels + 1, shape, generator=g)
    one_hot = torch.stack([(labels == c).float() * 2 - 1 for c in range(1, system.mask_channels + 1)], dim=1)
    return torch.cat([image, one_hot], dim=1)


@pytest.mark.parametrize("name", ["ldm", "ldm2d"])
def test_both_stages_train_and_sample_paired(name):
    torch.manual_seed(0)
    ae = build(name, 32, mask_channels=2, **TINY)
    assert ae.channels == 3 and ae.batch_shape(2)[1] == 3
    real = _paired_batch(ae)
    losses = ae.train_step(real, ae.make_optimizers(), 0, generator=torch.Generator().manual_seed(1))
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert ae.reconstruct(real).shape == real.shape
    dm = build(name, 32, mask_channels=2, stage="diffusion", **TINY)
    dm.autoencoder.load_state_dict(ae.autoencoder.state_dict())
    losses = dm.train_step(real, dm.make_optimizers(), 0, generator=torch.Generator().manual_seed(1))
    assert math.isfinite(float(losses["unet"]))
    z = dm.sample_latent(2, generator=torch.Generator().manual_seed(0))
    x = dm.generate(z)
    assert x.shape == real.shape and float(x.abs().max()) <= 1
    with pytest.raises(Exception, match="expected shape"):
        dm.train_step(real[:, :1], dm.make_optimizers(), 1)  # an image without its mask channels


def test_generate_writes_the_label_map(tmp_path):
    """Stage 1, stage 2 and ``medvol generate`` of a paired ldm2d on phantom slices with lung labels:
    every image gets a uint8 label map of classes 0..1 with sidecar and ``mask_labels``."""
    import SimpleITK as sitk

    from medvol.cli import main

    config = str(Path(__file__).resolve().parents[2] / "configs" / "learn" / "ldm2d_masks_64.yaml")
    common = ["--config", config, "--model.size", "32", "--model.base_width", "4", "--model.latent_dim", "2",
              "--model.mask_channels", "1", "--model.options.train_timesteps", "100",
              "--model.options.sample_steps", "2", "--data.source", "phantom", "--data.phantom_n", "2",
              "--data.workers", "0", "--data.batch", "2", "--train.iterations", "1", "--train.mode", "reference",
              "--train.device", "cpu", "--train.ckpt_every", "1", "--train.sample_every", "1",
              "--train.progress", "false", "--threads", "1"]
    assert main(["train", *common, "--train.out", str(tmp_path / "ae")]) == 0
    assert main(["train", *common, "--model.options.stage", "diffusion", "--model.options.autoencoder",
                 str(tmp_path / "ae"), "--train.out", str(tmp_path / "dm")]) == 0
    assert main(["generate", "--ckpt", str(tmp_path / "dm"), "--n", "2", "--out", str(tmp_path / "gen")]) == 0
    for i in range(2):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "gen" / f"sample_{i:04d}.nii.gz")))
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "gen" / f"sample_{i:04d}_mask.nii.gz")))
        assert mask.shape == image.shape and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        sidecar = json.loads((tmp_path / "gen" / f"sample_{i:04d}_mask.json").read_text(encoding="utf-8"))
        assert sidecar["kind"] == "mask" and sidecar["mask_labels"] == ["lungs"]
