"""The Sampler: the samples of a seed are those of the sampling code it replaced (five copies in
generate, generate2d, evaluate, images2d and the viewer), bit for bit, and every consumer
(generate, evaluate's checkpoint source, the viewer) sees the same samples of one seed."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from medvol.config import load_config
from medvol.errors import MedvolError
from medvol.models import build
from medvol.sample.sampler import Sampler

#: SHA-256 of the float32 latents [3, 8] of seed 5 as the code before the Sampler drew them
#: (``torch.Generator().manual_seed(5)``, ``sample_latent(1, ...)`` three times on the CPU), computed
#: with that code: a change of how latents are drawn changes every sample of every seed.
OLD_LATENTS_SEED5 = "e1251842a6578337113fd0ef98bf8bfd4da4631487b318fa889caa3a0c6c5c72"


def _system(name: str, **options):
    torch.manual_seed(0)
    size = 32
    return build(name, size, latent_dim=8, base_width=2 if name == "crfgan" else 4, **options)


def _loaded(system, name: str):
    cfg = load_config(None, ["--model.name", name, "--model.size", "32"])
    return system, cfg, {"path": "stand-in.pt", "iteration": 0, "data": {}}


def _old_3d(system, n: int, seed: int, label=None, tile_depth=None) -> list[np.ndarray]:
    """What train/generate.py and eval/evaluate.py drew before the Sampler (one latent at a time)."""
    generator = torch.Generator().manual_seed(seed)
    k = system.num_classes
    out = []
    for i in range(n):
        z = system.sample_latent(1, generator=generator, device=torch.device("cpu"))
        labels = None if k == 0 else torch.tensor([label if label is not None else i % k])
        out.append(system.generate(z, labels=labels, tile_depth=tile_depth)[0].float().cpu().numpy())
    return out


def _old_2d(system, n: int, seed: int, batch: int) -> list[np.ndarray]:
    """What train/generate2d.py and eval/images2d.py drew before the Sampler (``batch`` per pass)."""
    generator = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        count = min(batch, n - start)
        z = torch.cat([system.sample_latent(1, generator=generator, device=torch.device("cpu"))
                       for _ in range(count)])
        out.extend(system.generate(z).float().cpu().numpy())
    return out


def test_latents_of_a_seed_are_those_of_the_old_code():
    sampler = Sampler(_loaded(_system("crfgan", num_classes=2), "crfgan"))
    z = sampler.latents(3, torch.Generator().manual_seed(5))
    assert hashlib.sha256(z.numpy().tobytes()).hexdigest() == OLD_LATENTS_SEED5


def test_3d_samples_are_bit_identical_to_the_old_loop():
    system = _system("crfgan", num_classes=2)
    sampler = Sampler(_loaded(system, "crfgan"))
    assert sampler.mode == "reference" and sampler.dims == 3
    got = list(sampler.stream(3, seed=5))
    assert [s.label for s in got] == [0, 1, 0]  # i % K without a label
    for new, old in zip(got, _old_3d(system, 3, 5)):
        np.testing.assert_array_equal(new.array, old)
    for new, old in zip(sampler.stream(2, seed=5, label=1, tile_depth=2), _old_3d(system, 2, 5, 1, 2)):
        assert new.label == 1
        np.testing.assert_array_equal(new.array, old)
    with pytest.raises(MedvolError, match="classes 0..1"):
        next(sampler.stream(1, seed=0, label=2))


def test_2d_samples_are_bit_identical_to_the_old_loop_and_batch_free():
    system = _system("dcgan")
    sampler = Sampler(_loaded(system, "dcgan"))
    assert sampler.dims == 2
    by_two = [s.array for s in sampler.stream(5, seed=4, batch=2)]
    for new, old in zip(by_two, _old_2d(system, 5, 4, 2)):
        np.testing.assert_array_equal(new, old)
    # Sample i is G of the i-th latent whatever the batch (up to the float rounding of batching).
    for new, one in zip(by_two, sampler.stream(5, seed=4, batch=5)):
        np.testing.assert_allclose(new, one.array, atol=1e-5)
    with pytest.raises(MedvolError, match="--batch"):
        next(sampler.stream(1, seed=0, batch=0))


def test_masks_are_fed_as_minus_one_one_with_their_sources():
    seen = []

    class Conditional:
        dims, size, num_classes, conditional = 2, 4, 0, True

        def to(self, device):
            return self

        def set_mode(self, mode):
            return self

        def sample_latent(self, batch, generator=None, device=None):
            return torch.randn(batch, 2, generator=generator)

        def generate(self, z, masks=None):
            seen.append(masks.clone())
            return masks.expand(-1, 2, -1, -1)

    masks = [(np.eye(4, dtype=np.uint8), "a"), (np.ones((4, 4), np.uint8), "b"), (np.zeros((4, 4), np.uint8), "c")]
    got = list(Sampler((Conditional(), None, {}), "cpu").stream(3, seed=0, batch=2, masks=masks))
    assert [s.mask_source for s in got] == ["a", "b", "c"] and [len(m) for m in seen] == [2, 1]
    for sample, (mask, _) in zip(got, masks):
        np.testing.assert_array_equal(sample.array[0], mask * 2.0 - 1.0)


@pytest.fixture(scope="module")
def run3d(tmp_path_factory):
    from medvol.train.trainer import train

    out = tmp_path_factory.mktemp("sampler") / "run"
    return train(load_config(None, [
        "--model.name", "crfgan", "--model.size", "32", "--model.base_width", "2", "--model.latent_dim", "8",
        "--model.num_classes", "2", "--data.source", "phantom", "--data.phantom_n", "2", "--data.workers", "0",
        "--data.batch", "2", "--train.iterations", "1", "--train.mode", "reference", "--train.device", "cpu",
        "--train.ckpt_every", "1", "--train.log_every", "1", "--train.sample_every", "1000",
        "--train.progress", "false", "--train.out", str(out)]))


def test_generate_evaluate_and_the_viewer_see_the_same_samples(run3d, tmp_path):
    """One seed, one set: the files of generate, evaluate's checkpoint source and the viewer's volume."""
    pytest.importorskip("SimpleITK")
    from medvol.data.io import read_volume
    from medvol.data.preprocess import to_intensity
    from medvol.eval.sources import VolumeSource
    from medvol.sample.generate import generate_volumes
    from medvol.viewer.generator import LoadedModel

    sampler = Sampler.load(run3d, "cpu")
    window = sampler.window
    expected = [s.array[0] for s in sampler.stream(2, seed=3)]
    files = generate_volumes(run3d, 2, tmp_path / "g", seed=3, device="cpu")
    for path, x in zip(files, expected):
        np.testing.assert_array_equal(read_volume(path).array, to_intensity(x, window).astype(np.float32))
    source = VolumeSource(str(run3d), "fake", size=None, modality=None, window=None, split="all", n=2, seed=3,
                          device="cpu")
    for (_, array), x in zip(source, expected):
        np.testing.assert_array_equal(array, np.clip(x, -1, 1))
    if not torch.cuda.is_available():  # the viewer samples on "auto": the same device as above
        volume = LoadedModel.load(run3d).generate(3, label=0)
        np.testing.assert_array_equal(volume.array, read_volume(files[0]).array)


def test_samples_come_from_the_weight_average_in_eval_mode():
    """G_ema stands in for G where the model keeps one, BatchNorm uses its running statistics,
    and the model is left in the training mode it had."""
    system = _system("crfgan")
    system.enable_g_ema(10.0)
    with torch.no_grad():
        for p in system.G_ema.parameters():
            p.mul_(0.5)
    system.train()
    sampler = Sampler(_loaded(system, "crfgan"))
    ema = next(sampler.stream(1, seed=0)).array
    system.g_ema_half_life = 0.0  # the same model without its average
    plain = next(sampler.stream(1, seed=0)).array
    system.g_ema_half_life = 10.0
    assert not np.allclose(ema, plain, atol=1e-3)
    np.testing.assert_array_equal(next(sampler.stream(1, seed=0)).array, ema)
    assert system.training

    dcgan = _system("dcgan")  # BatchNorm: in training mode a sample would depend on its batch
    dcgan.train()
    sampler = Sampler(_loaded(dcgan, "dcgan"))
    alone = next(sampler.stream(1, seed=2, batch=1)).array
    in_batch = next(sampler.stream(3, seed=2, batch=3)).array
    np.testing.assert_allclose(alone, in_batch, atol=1e-5)
