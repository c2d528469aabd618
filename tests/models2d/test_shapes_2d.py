"""Shapes of every 2D model at every size, and of the slice data in every plane and size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvol.data.datasets import PLANES, PhantomVolumeDataset, SliceDataset, take_slice
from medvol.errors import MedvolError
from medvol.models import SIZES_2D, build


@pytest.mark.parametrize("name", ["dcgan", "mlpgan"])
@pytest.mark.parametrize("size", SIZES_2D)
@pytest.mark.parametrize("channels", [1, 2])
def test_model_shapes(name, size, channels):
    torch.manual_seed(0)
    system = build(name, size, base_width=4, latent_dim=8, channels=channels)
    z = system.sample_latent(3)
    x = system.generate(z)
    assert x.shape == (3, channels, size, size) and x.dtype == torch.float32
    assert float(x.abs().max()) <= 1.0
    logit, features = system.D(x)
    assert logit.shape == (3,) and features.shape[0] == 3 and features.dim() == 2


def test_dcgan_layers_at_64():
    """DCGAN's published 64x64 layout: 4x4 from z, then 8, 16, 32, 64; widths 512..64 at c = 64."""
    system = build("dcgan", 64)
    convs = [m for m in system.G.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(100, 512), (512, 256), (256, 128), (128, 64),
                                                                (64, 1)]
    convs = [m for m in system.D.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels) for m in convs] == [(1, 64), (64, 128), (128, 256), (256, 512),
                                                                (512, 1)]


@pytest.mark.parametrize("name, size", [("dcgan", 512), ("dcgan", 16), ("mlpgan", 48)])
def test_unsupported_size(name, size):
    with pytest.raises(MedvolError, match="^size: "):
        build(name, size)


def test_wrong_batch_shape_is_refused():
    system = build("dcgan", 32, base_width=4, latent_dim=8)
    optimizers = system.make_optimizers()
    with pytest.raises(MedvolError, match=r"expected shape \[B, 1, 32, 32\]"):
        system.train_step(torch.zeros(2, 1, 32, 32, 32), optimizers, 0)


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("size, pooled", [(32, 32), (64, 64), (128, 128), (256, 256), (64, 32), (256, 64)])
def test_slice_shapes(ramp, plane, size, pooled):
    slices = SliceDataset(ramp(size), plane=plane, size=pooled, masks=True)
    assert len(slices) == 2 * size
    item = slices[size + 3]
    assert item["image"].shape == (2, pooled, pooled) and item["label"] == 1
    expected = take_slice(ramp(size).volume(1), plane, 3)
    if pooled == size:
        np.testing.assert_array_equal(item["image"][0].numpy(), expected)
    else:
        f = size // pooled
        np.testing.assert_allclose(item["image"][0].numpy(),
                                   expected.reshape(pooled, f, pooled, f).mean(axis=(1, 3)), atol=1e-6)


def test_slice_orientation(ramp):
    """Coronal and sagittal slices show superior (high z) at the top row."""
    array = ramp(8).volume(0)
    assert take_slice(array, "coronal", 2)[0, 0] == array[-1, 2, 0]
    assert take_slice(array, "sagittal", 2)[-1, 0] == array[0, 0, 2]


@pytest.mark.parametrize("plane", PLANES)
@pytest.mark.parametrize("size", [32, 64])
def test_phantom_slices_every_plane(plane, size):
    slices = SliceDataset(PhantomVolumeDataset(size, 1), content_only=True, plane=plane)
    assert 0 < len(slices) <= size
    images = torch.stack([slices[k]["image"] for k in range(len(slices))])
    assert images.shape == (len(slices), 1, size, size)
    assert float(images.min()) >= -1 and float(images.max()) <= 1
    assert bool((images.flatten(1).max(1).values > -1).all())


def test_bad_slice_options(ramp):
    with pytest.raises(MedvolError, match="^plane: "):
        SliceDataset(ramp(8), plane="oblique")
    with pytest.raises(MedvolError, match="^size: "):
        SliceDataset(ramp(8), size=3)
