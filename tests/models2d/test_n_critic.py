"""dcgan's n_critic (k D updates per G update, each on its own real batch) through the one trainer,
and the RMSprop option of WGAN."""

from __future__ import annotations

import pytest
import torch

from medvol import cli
from medvol.data.datasets import PhantomVolumeDataset, SliceDataset
from medvol.errors import MedvolError
from medvol.models import build
from medvol.train import checkpoint as ckpt
from medvol.train.data import make_loader
from medvol.train.trainer import train


def _reals(k: int, batch: int = 3) -> torch.Tensor:
    """k visibly different real batches, concatenated: batch j is filled around (j - 1) / 2."""
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.rand(batch, 1, 32, 32, generator=g) * 0.1 + (j - 1) / 2 for j in range(k)])


@pytest.mark.parametrize("k", [1, 3])
def test_k_critic_updates_per_generator_update_on_k_real_batches(k):
    torch.manual_seed(0)
    system = build("dcgan", 32, base_width=4, latent_dim=8, loss="wgan", norm="none", n_critic=k)
    assert system.real_batches == k
    seen = []
    system.D.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    optimizers = system.make_optimizers()
    real = _reals(k)
    out = system.train_step(real, optimizers, 0, generator=torch.Generator().manual_seed(1))
    steps = {name: {int(s["step"]) for s in opt.state.values()} for name, opt in optimizers.items()}
    assert steps == {"D": {k}, "G": {1}}
    # D sees real batch j, then fakes, per critic update; then G's fakes (WGAN: no penalty, no FM).
    assert len(seen) == 2 * k + 1
    for j, chunk in enumerate(real.chunk(k)):
        assert torch.equal(seen[2 * j], chunk), j
    assert all(s.shape[0] == 3 for s in seen)  # every update on B = 3, fakes too
    assert max(p.abs().max().item() for p in system.D.parameters()) <= 0.01 + 1e-7  # clipped
    assert set(out) == {"D", "D_real", "D_fake", "G"}


def test_reported_d_loss_is_the_mean_over_critic_updates():
    torch.manual_seed(0)
    system = build("dcgan", 32, base_width=4, latent_dim=8, loss="wgan-gp", norm="none", n_critic=2)
    losses = []
    original = system._critic_update
    system._critic_update = lambda real, state: losses.append(original(real, state)) or losses[-1]
    out = system.train_step(_reals(2), system.make_optimizers(), 0, generator=torch.Generator().manual_seed(1))
    for key in ("D", "D_real", "D_fake", "D_gp"):
        assert torch.allclose(out[key], (losses[0][key] + losses[1][key]) / 2), key
    assert not torch.equal(losses[0]["D_real"], losses[1]["D_real"])


def test_batch_must_split_into_n_critic_batches():
    system = build("dcgan", 32, base_width=4, latent_dim=8, n_critic=2)
    with pytest.raises(MedvolError, match="do not split into n_critic = 2"):
        system.train_step(torch.zeros(3, 1, 32, 32), system.make_optimizers(), 0)


def test_fp16_scaler_steps_every_critic_update():
    torch.manual_seed(0)
    system = build("dcgan", 32, base_width=4, latent_dim=8, loss="hinge", n_critic=2)
    optimizers = system.make_optimizers()
    scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # no overflow: every step is taken
    system.train_step(_reals(2), optimizers, 0, amp_dtype=torch.float16, scaler=scaler,
                      generator=torch.Generator().manual_seed(1))
    assert {int(s["step"]) for s in optimizers["D"].state.values()} == {2}


def test_loader_hands_over_n_critic_distinct_batches(tiny2d):
    cfg = tiny2d()
    dataset = SliceDataset(PhantomVolumeDataset(32, 2), content_only=True)
    single = iter(make_loader(dataset, cfg.data, seed=0))
    double = iter(make_loader(dataset, cfg.data, seed=0, batches_per_step=2))
    first = next(double)["image"]
    assert first.shape == (2 * cfg.data.batch, 1, 32, 32)
    # The same stream, twice as much per step: the two halves are the single loader's two batches.
    assert torch.equal(first[: cfg.data.batch], next(single)["image"])
    assert torch.equal(first[cfg.data.batch:], next(single)["image"])
    assert not torch.equal(first[: cfg.data.batch], first[cfg.data.batch:])
    # Resuming at iteration 1 starts after the 2 batches iteration 0 consumed.
    resumed = next(iter(make_loader(dataset, cfg.data, seed=0, start_iteration=1, batches_per_step=2)))["image"]
    assert torch.equal(resumed[: cfg.data.batch], next(single)["image"])


def test_trainer_runs_n_critic_and_resumes_exactly(tiny2d):
    options = ("--model.loss", "wgan-gp", "--model.n_critic", "2", "--model.norm", "none")
    straight = tiny2d(*options, iterations=2, out="straight")
    train(straight)
    state = ckpt.read_checkpoint(straight.train.out)
    d_steps = {int(s["step"]) for s in state["optimizers"]["D"]["state"].values()}
    g_steps = {int(s["step"]) for s in state["optimizers"]["G"]["state"].values()}
    assert (d_steps, g_steps) == ({4}, {2})
    assert state["data"]["consumed_per_rank"] == 2 * 2 * straight.data.batch
    split = tiny2d(*options, iterations=1, out="split")
    train(split)
    train(tiny2d(*options, iterations=2, out="split"), resume="auto")
    resumed = ckpt.read_checkpoint(split.train.out)
    for key in state["system"]:
        assert torch.equal(state["system"][key], resumed["system"][key]), key


def test_rmsprop_option():
    system = build("dcgan", 32, base_width=4, latent_dim=8, loss="wgan", optimizer="rmsprop", n_critic=5)
    optimizers = system.make_optimizers()
    assert all(isinstance(o, torch.optim.RMSprop) and o.param_groups[0]["lr"] == 5e-5 for o in optimizers.values())
    assert system.options()["optimizer"] == "rmsprop" and system.options()["n_critic"] == 5
    adam = build("dcgan", 32, base_width=4, latent_dim=8).make_optimizers()
    assert all(isinstance(o, torch.optim.Adam) for o in adam.values())
    for kwargs, message in (({"optimizer": "sgd"}, "optimizer: 'sgd' is not one of adam, rmsprop"),
                            ({"n_critic": 0}, "n_critic: expected a positive integer"),
                            ({"n_critic": 2.5}, "n_critic: expected a positive integer")):
        with pytest.raises(MedvolError, match=message):
            build("dcgan", 32, base_width=4, **kwargs)


@pytest.mark.parametrize("overrides, message", [
    (["--model.n_critic", "0"], "model.n_critic: must be positive"),
    (["--model.optimizer", "sgd"], "model.optimizer"),
    (["--model.name", "mlpgan", "--model.n_critic", "5"], "model.n_critic: only for dcgan"),
])
def test_config_errors_are_one_line(tmp_path, capsys, overrides, message):
    status = cli.main(["train", "--config", "configs/dcgan_tiny.yaml", "--train.out", str(tmp_path / "r"),
                       *overrides])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and message in err[0], err
