"""The latent diffusion model's own behaviour (its contract: tests/models/test_contract.py): the
forward processes against MONAI's schedulers, tiled decoding, the two stages' hand-over, the
perceptual term's weights file, and its config errors."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from medvol.config import load_config
from medvol.errors import MedvolError
from medvol.models import REGISTRY, build
from medvol.models.diffusion.tiling import decode_tiled, tile_starts

TINY = dict(base_width=4, latent_dim=2, train_timesteps=100, sample_steps=4)


def _ldm(name="ldm", size=32, **options):
    torch.manual_seed(0)
    return build(name, size, **{**TINY, **options})


class _Capture(Exception):
    pass


def _forward_process(system, real, generator_seed=3):
    """The (noisy latent, target, timesteps, clean latent) of one diffusion step, caught at the U-Net."""
    seen = {}

    def unet(noisy, timesteps):
        seen.update(noisy=noisy, timesteps=timesteps)
        raise _Capture

    system.unet.forward = unet
    with pytest.raises(_Capture):
        system.train_step(real, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(generator_seed))
    # Redraw what the step drew, in its order: latent sample noise, then the diffusion noise, then t.
    g = torch.Generator().manual_seed(generator_seed)
    with torch.no_grad():
        mu, sigma = system.autoencoder.encode(real)
    z = (mu + sigma * torch.randn(mu.shape, generator=g)) * system.latent_scale
    noise = torch.randn(z.shape, generator=g)
    return seen, z, noise


@pytest.mark.parametrize("name", ["ldm", "ldm2d"])
def test_ddpm_forward_process_is_monais(name):
    from monai.networks.schedulers import DDPMScheduler

    system = _ldm(name, stage="diffusion", scheduler="ddpm")
    real = torch.rand(system.batch_shape(2), generator=torch.Generator().manual_seed(1)) * 2 - 1
    seen, z, noise = _forward_process(system, real)
    assert float(system.latent_scale) == pytest.approx(1 / float((z / system.latent_scale).std()), rel=1e-5)
    monai = DDPMScheduler(num_train_timesteps=100, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    torch.testing.assert_close(seen["noisy"], monai.add_noise(z, noise, seen["timesteps"]), rtol=1e-5, atol=1e-6)


def test_rflow_forward_process_and_target_are_monais():
    from monai.networks.schedulers import RFlowScheduler

    system = _ldm(stage="diffusion", scheduler="rflow")
    real = torch.rand(system.batch_shape(2), generator=torch.Generator().manual_seed(1)) * 2 - 1
    seen, z, noise = _forward_process(system, real)
    monai = RFlowScheduler(num_train_timesteps=100)
    torch.testing.assert_close(seen["noisy"], monai.add_noise(z, noise, seen["timesteps"]), rtol=1e-5, atol=1e-6)
    # The velocity MONAI's step integrates: x_{t'} = x_t + v (t - t') / T must reach z from x_t at t' = 0.
    t = seen["timesteps"].float().view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(seen["noisy"] + (z - noise) * t / 100, z, rtol=1e-4, atol=1e-5)


def test_latent_scale_is_kept_once_set():
    system = _ldm(stage="diffusion", latent_scale=0.5)
    real = torch.rand(system.batch_shape(2)) * 2 - 1
    system.train_step(real, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(0))
    assert float(system.latent_scale) == 0.5
    assert "latent_scale" in system.state_dict()


# ---------------------------------------------------------------------------------- sampling
def test_steps_change_the_sample_and_are_checked():
    system = _ldm(stage="diffusion")
    z = system.sample_latent(1, torch.Generator().manual_seed(0))
    assert not torch.equal(system.generate(z, steps=1), system.generate(z, steps=4))
    assert torch.equal(system.generate(z, steps=2), system.generate(z, steps=2))  # one latent, one sample
    for bad in (0, 101, 2.5):
        with pytest.raises(MedvolError, match="steps"):
            system.generate(z, steps=bad)
    with pytest.raises(MedvolError, match="z: expected shape"):
        system.generate(torch.zeros(1, 2, 4, 4, 4))


def test_stage_one_has_nothing_to_sample_but_reconstructs():
    system = _ldm()
    with pytest.raises(MedvolError, match="stage-1"):
        system.sample(1, seed=0)
    x = torch.rand(system.batch_shape(1)) * 2 - 1
    assert system.reconstruct(x).shape == x.shape
    assert system.preview(system.sample_latent(1), x).shape == x.shape  # the trainer's preview: reconstructions


# ---------------------------------------------------------------------------------- tiling
def test_tile_starts_cover_and_overlap():
    assert tile_starts(8, 8, 2) == [0] and tile_starts(8, 16, 2) == [0]
    assert tile_starts(10, 4, 1) == [0, 3, 6]
    assert tile_starts(16, 6, 2) == [0, 4, 8, 10]
    for n, t, o in ((10, 4, 1), (16, 6, 2), (9, 3, 0)):
        starts = tile_starts(n, t, o)
        assert starts[-1] + t == n and all(b - a <= t - o for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("dims", [2, 3])
def test_tiled_decode_of_a_local_operator_is_exact(dims):
    """A decoder that is local (1x1 conv, then nearest x2) has no seams to leave: tiles must agree."""
    conv = (torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d)(3, 2, 1)

    def decode(z):
        return F.interpolate(conv(z), scale_factor=2, mode="nearest")

    z = torch.randn((1, 3) + (10,) * dims)
    with torch.no_grad():
        whole = decode(z)
        for tile, overlap in ((4, 1), (6, 2), (3, 0), (10, 2)):
            torch.testing.assert_close(decode_tiled(decode, z, tile, overlap), whole, rtol=1e-5, atol=1e-6)


def test_tiled_decode_of_the_autoencoder():
    system = _ldm(stage="diffusion", levels=2)
    z = system.sample_latent(1, torch.Generator().manual_seed(0))  # latent side 16
    with torch.no_grad():
        whole = system.autoencoder.decode(z)
        assert torch.equal(decode_tiled(system.autoencoder.decode, z, 16, 4), whole)  # one tile: the whole decode
        tiled = decode_tiled(system.autoencoder.decode, z, 8, 4)
    assert tiled.shape == whole.shape and torch.isfinite(tiled).all()
    assert not torch.equal(tiled, whole)  # per-tile GroupNorm and zero padding: close, not equal
    with torch.no_grad():  # the GroupNorms' statistics shared over the tiles: one tile is the whole decode
        norms = [m for m in system.autoencoder.decoder.modules() if isinstance(m, torch.nn.GroupNorm)]
        torch.testing.assert_close(decode_tiled(system.autoencoder.decode, z, 16, 4, norms=norms), whole,
                                   rtol=1e-4, atol=1e-5)
        assert not any("forward" in m.__dict__ for m in norms)  # the decoder is left as it was
    assert system.generate(z, tile_depth=8).shape == whole.shape
    for bad in ({"tile_depth": 1}, {"tile_depth": 8, "overlap": 8}):
        with pytest.raises(MedvolError):
            system.generate(z, **bad)


# ---------------------------------------------------------------------------------- stages
def _stage_one(tmp_path):
    from medvol.train.trainer import train

    return train(_cfg(tmp_path / "ae", "autoencoder"))


def _cfg(out, stage, *extra):
    return load_config(None, [
        "--model.name", "ldm", "--model.size", "32", "--model.base_width", "4", "--model.latent_dim", "2",
        "--model.options.stage", stage, "--model.options.train_timesteps", "100",
        "--data.source", "phantom", "--data.phantom_n", "2", "--data.workers", "0", "--data.batch", "1",
        "--train.iterations", "1", "--train.mode", "reference", "--train.device", "cpu", "--train.ckpt_every", "1",
        "--train.sample_every", "1", "--train.progress", "false", "--train.out", str(out), *extra])


def test_stage_two_starts_from_stage_one(tmp_path):
    from medvol.train import checkpoint as ckpt
    from medvol.train.trainer import build_system

    run = _stage_one(tmp_path)
    assert (run / "samples" / "slices_0000001.png").is_file()  # stage 1 previews reconstructions
    stage_one = ckpt.read_checkpoint(run)["system"]
    system = build_system(_cfg(tmp_path / "dm", "diffusion", "--model.options.autoencoder", str(run)))
    for key, value in system.autoencoder.state_dict().items():
        assert torch.equal(value, stage_one[f"autoencoder.{key}"]), key


def test_stage_two_refuses_a_missing_or_foreign_autoencoder(tmp_path):
    from medvol.train.trainer import build_system, train

    with pytest.raises(MedvolError, match="model.options.autoencoder"):
        build_system(_cfg(tmp_path / "dm", "diffusion"))
    with pytest.raises(MedvolError, match="pretrained autoencoder.*does not exist"):
        build_system(_cfg(tmp_path / "dm", "diffusion", "--model.options.autoencoder", str(tmp_path / "nothing")))
    gan = train(load_config(None, ["--model.name", "dcgan", "--model.size", "32", "--model.base_width", "4",
                                   "--model.latent_dim", "4", "--data.phantom_n", "2", "--data.workers", "0",
                                   "--data.batch", "2", "--train.iterations", "1", "--train.mode", "reference",
                                   "--train.device", "cpu", "--train.progress", "false",
                                   "--train.out", str(tmp_path / "gan")]))
    with pytest.raises(MedvolError, match="has no autoencoder"):
        build_system(_cfg(tmp_path / "dm", "diffusion", "--model.options.autoencoder", str(gan)))
    wider = train(_cfg(tmp_path / "ae8", "autoencoder", "--model.base_width", "8"))
    with pytest.raises(MedvolError, match="does not fit this model"):
        build_system(_cfg(tmp_path / "dm", "diffusion", "--model.options.autoencoder", str(wider)))
    assert not (tmp_path / "dm").exists()  # refused before the run folder was made


# ---------------------------------------------------------------------------------- perceptual
def _tiny_vgg_file(tmp_path):
    torch.manual_seed(0)
    state = {}
    for i, (cin, cout) in {0: (3, 4), 2: (4, 4), 5: (4, 6)}.items():
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3) * 0.3
        state[f"features.{i}.bias"] = torch.randn(cout) * 0.1
    path = tmp_path / "vgg.pt"
    torch.save(state, path)
    return str(path), hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["ldm", "ldm2d"])
def test_perceptual_term_needs_a_weights_file(tmp_path, name):
    with pytest.raises(MedvolError, match="perceptual_weights"):
        _ldm(name, perceptual_weight=1.0)
    path, sha = _tiny_vgg_file(tmp_path)
    system = _ldm(name, perceptual_weight=1.0, perceptual_weights=path, perceptual_sha256="0" * 64)
    with pytest.raises(MedvolError, match="sha256"):
        system.prepare_training()
    system = _ldm(name, perceptual_weight=1.0, perceptual_weights=path, perceptual_sha256=sha)
    system.prepare_training()
    real = torch.rand(system.batch_shape(2)) * 2 - 1
    out = system.train_step(real, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(0))
    assert out["AE_perceptual"] > 0
    # Off by default: no term, no file read.
    plain = _ldm(name).train_step(real, _ldm(name).make_optimizers(), 0)
    assert "AE_perceptual" not in plain


# ---------------------------------------------------------------------------------- config
@pytest.mark.parametrize("overrides, message", [
    (["--model.options.stag", "diffusion"], "unknown config key 'model.options.stag'; did you mean model.options.stage"),
    (["--model.options.stage", "vae"], "config key model.options.stage: 'vae' is not one of autoencoder, diffusion"),
    (["--model.options.levels", "0"], "levels: expected a positive integer"),
    (["--model.options.sample_steps", "2000"], "sample_steps: 2000 exceeds train_timesteps 1000"),
    (["--model.options.kl_weight", "-1"], "kl_weight"),
    (["--model.options.perceptual_weight", "1"], "perceptual_weights"),
    (["--model.size", "48"], "model.size"),
    (["--model.loss", "hinge"], "model.loss: only for dcgan and pix2pix, not ldm"),
])
def test_bad_ldm_config_is_one_line(overrides, message):
    from medvol.models import build_from_config

    with pytest.raises(MedvolError, match=message.replace(".", r"\.").replace("(", r"\(")):
        build_from_config(load_config(None, ["--model.name", "ldm", "--model.size", "32", *overrides]).model)


def test_gan_refuses_the_diffusion_options():
    with pytest.raises(MedvolError, match=r"model\.options\.stage: only for ldm and ldm2d, not crfgan"):
        load_config(None, ["--model.name", "crfgan", "--model.options.stage", "diffusion"])


def test_options_round_trip_through_the_saved_config(tmp_path):
    from medvol.config import config_to_dict, save_config

    cfg = load_config(None, ["--model.name", "ldm", "--model.size", "32", "--model.options.levels", "2"])
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    # Saved with every option (its default where not set), so that the file says what was built.
    assert again == cfg and again.model.options == {**REGISTRY["ldm"].option_defaults(), "levels": 2}
    assert config_to_dict(again)["model"]["options"]["levels"] == 2


@pytest.mark.slow
def test_stage_two_trains_in_lockstep_under_ddp(tmp_path):
    """Two gloo ranks: the latent scale (set from each rank's first batch, then averaged) and the
    U-Net end identical; the per-rank noise differs."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from medvol.config import save_config
    from medvol.train import checkpoint as ckpt

    stage_one = _stage_one(tmp_path)
    cfg = _cfg(tmp_path / "dm", "diffusion", "--model.options.autoencoder", str(stage_one),
               "--train.iterations", "2", "--data.phantom_n", "4")
    worker = Path(__file__).parents[1] / "train" / "ddp_worker.py"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(worker),
         str(save_config(cfg, tmp_path / "ddp.yaml"))],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / "dm" / f"weights_rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0, rank1)
    state = ckpt.read_checkpoint(tmp_path / "dm")
    assert state["world_size"] == 2 and float(state["system"]["latent_scale"]) > 0
    assert not torch.equal(state["rng"][0]["generator"], state["rng"][1]["generator"])
