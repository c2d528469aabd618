"""Shapes in training and inference, tiled generation, the encoder path, conditional models, errors."""

import pytest
import torch

from medvol.errors import MedvolError
from medvol.models import build


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
@pytest.mark.parametrize("size", [32, 64])
def test_training_shapes(tiny, name, size):
    system = tiny(name, size)
    c, n = system.base_width, size // 4
    z = system.sample_latent(2, generator=torch.Generator().manual_seed(0))
    assert z.shape == (2, 32)
    emb = system.G.embed(z)
    assert emb.shape == (2, 2 * c, n, n, n)
    crop = system.G.render(emb[:, :, : size // 32])
    assert crop.shape == (2, 1, size // 8, size, size)
    position = torch.zeros(2, 1)
    if name == "hagan":
        low = system.G.render_low(emb)
        assert low.shape == (2, 1, n, n, n)
        logit, cls = system.D(crop, low, position)
        assert system.sub_E(emb).shape == (2, 32)
    else:
        logit, cls = system.D(crop, position)
        assert system.crf(emb, logit).shape == (2, 1)
    assert logit.shape == (2, 1) and cls is None
    assert system.E(crop).shape == (2, 2 * c, size // 32, n, n)


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_generate_shape_range_and_determinism(tiny, name):
    system = tiny(name)
    z = system.sample_latent(2, generator=torch.Generator().manual_seed(0))
    x = system.generate(z)
    assert x.shape == (2, 1, 32, 32, 32) and x.abs().max() <= 1 and not x.requires_grad
    assert torch.equal(x, system.generate(z)) and system.training


@pytest.mark.parametrize("mode", ["reference", "optimized"])
@pytest.mark.parametrize("name,size,tile", [("crfgan", 64, 3), ("crfgan", 32, 1), ("hagan", 64, 5)])
def test_tiled_equals_untiled(tiny, name, size, tile, mode):
    system = tiny(name, size).set_mode(mode)
    z = system.sample_latent(2, generator=torch.Generator().manual_seed(1))
    whole = system.generate(z)
    tiled = system.generate(z, tile_depth=tile)
    # Same function: only float32 summation order differs (GroupNorm statistics, conv blocking).
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-5)


def test_encoder_path(tiny, volume):
    system = tiny("hagan")
    x = volume(2, 32)
    emb = system.encode(x)
    assert emb.shape == (2, 8, 8, 8, 8)
    assert system.reconstruct(x).shape == x.shape
    assert torch.allclose(system.reconstruct(x, tile_depth=2), system.reconstruct(x), atol=1e-5)
    z = system.encode_latent(x)
    assert z.shape == (2, 32)
    assert system.generate(z).shape == x.shape
    crf = tiny("crfgan")
    assert crf.reconstruct(x).shape == x.shape


def test_encoder_learns_to_reconstruct(tiny, volume):
    # The E step alone lowers the L1 reconstruction error of a fixed volume (G frozen).
    system = tiny("crfgan")
    x = volume(1, 32)
    optimizer = torch.optim.Adam(system.E.parameters(), lr=3e-3)
    errors = []
    for _ in range(10):
        loss = (system.G.render(system.E(x[:, :, :4])) - x[:, :, :4]).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        errors.append(loss.item())
    assert errors[-1] < errors[0]


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_conditional(tiny, name, volume):
    system = tiny(name, num_classes=3)
    labels = torch.tensor([0, 2])
    generator = torch.Generator().manual_seed(0)
    losses = system.train_step(volume(2, 32), system.make_optimizers(), 0, labels=labels, generator=generator)
    assert {"D_cls", "G_cls"} <= set(losses)
    z = system.sample_latent(2, generator=torch.Generator().manual_seed(0))
    a, b = system.generate(z, labels=labels), system.generate(z, labels=torch.tensor([1, 1]))
    assert a.shape == (2, 1, 32, 32, 32) and not torch.equal(a, b)
    with pytest.raises(MedvolError, match="labels"):
        system.generate(z)
    with pytest.raises(MedvolError, match="labels"):
        system.generate(z, labels=torch.tensor([0, 3]))


@pytest.mark.parametrize(
    "args,kwargs,match",
    [
        (("stylegan", 64), {}, "model"),
        (("hagan", 100), {}, "size"),
        (("crfgan", 1024), {}, "size"),
        (("crfgan", 64), {"base_width": 3}, "base_width"),
        (("crfgan", 64), {"latent_dim": 0}, "latent_dim"),
        (("hagan", 64), {"num_classes": -1}, "num_classes"),
    ],
)
def test_bad_build_arguments(args, kwargs, match):
    with pytest.raises(MedvolError, match=match):
        build(*args, **kwargs)


def test_bad_inputs(tiny, volume):
    system = tiny("crfgan")
    with pytest.raises(MedvolError, match="32, 32, 32"):
        system.train_step(volume(2, 64), system.make_optimizers(), 0)
    with pytest.raises(MedvolError, match="mode"):
        system.set_mode("fast")
    with pytest.raises(MedvolError, match="tile_depth"):
        system.generate(system.sample_latent(1), tile_depth=0)
