"""Training options added as stabilisers for short CPU runs (docs/learning.md): ``train.beta1``."""

from __future__ import annotations

import pytest
import torch

from medvol.config import load_config
from medvol.errors import MedvolError
from medvol.train.checkpoint import read_checkpoint, resolve_checkpoint
from medvol.train.trainer import train


def test_beta1_reaches_the_optimisers_and_the_checkpoint(tiny):
    run = train(tiny("--train.beta1.G", "0.5", "--train.beta1.D", "0.25", iterations=1))
    state = read_checkpoint(resolve_checkpoint(run))
    betas = {name: opt["param_groups"][0]["betas"] for name, opt in state["optimizers"].items()}
    assert tuple(betas["G"]) == (0.5, 0.999) and tuple(betas["D"]) == (0.25, 0.999)
    assert tuple(betas["E"]) == (0.0, 0.999) and tuple(betas["crf"]) == (0.0, 0.999)  # published


def test_beta1_applies_to_a_2d_model(tiny):
    cfg = tiny("--train.beta1.G", "0.0", name="dcgan", iterations=1)
    state = read_checkpoint(resolve_checkpoint(train(cfg)))
    assert tuple(state["optimizers"]["G"]["param_groups"][0]["betas"]) == (0.0, 0.999)
    assert tuple(state["optimizers"]["D"]["param_groups"][0]["betas"]) == (0.5, 0.999)


def test_beta1_bad_values_name_the_key(tiny):
    for value in ("1.0", "-0.1"):
        with pytest.raises(MedvolError, match=r"train\.beta1\.G"):
            load_config(None, ["--train.beta1.G", value])
    with pytest.raises(MedvolError, match=r"train\.beta1\.Q: no such optimiser"):
        train(tiny("--train.beta1.Q", "0.5", iterations=1))
    with pytest.raises(MedvolError, match=r"train\.beta1\.G: .*RMSprop.* has no betas"):
        train(tiny("--train.beta1.G", "0.5", "--model.optimizer", "rmsprop", name="dcgan", iterations=1))


# ------------------------------------------------------------------ model.g_ema_half_life

def _small(name: str = "crfgan", half_life: float = 0.0):
    from medvol.config import ModelConfig
    from medvol.models import build_from_config

    size, width, latent = (32, 2, 8) if name in ("crfgan", "hagan") else (32, 4, 8)
    torch.manual_seed(0)
    return build_from_config(ModelConfig(name=name, size=size, base_width=width, latent_dim=latent,
                                         g_ema_half_life=half_life))


def test_g_ema_update_has_the_half_life():
    system = _small(half_life=2.0)
    target = [p.detach().clone() for p in system.G.parameters()]
    start = [p.detach().clone() for p in system.G_ema.parameters()]
    with torch.no_grad():
        for p in system.G.parameters():
            p.add_(1.0)  # G moves by 1 and stays there
    system.update_g_ema()
    system.update_g_ema()
    # Two updates at half-life 2: G_ema has covered half of the distance from its start to G.
    for p_ema, s, t in zip(system.G_ema.parameters(), start, target):
        torch.testing.assert_close(p_ema, (s + t + 1.0) / 2, rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["crfgan", "hagan", "dcgan"])
def test_generate_samples_from_g_ema_and_gives_g_back(name):
    system, plain = _small(name, half_life=10.0), _small(name)
    with torch.no_grad():
        for p in system.G_ema.parameters():
            p.mul_(0.5)
    plain.G.load_state_dict(system.G_ema.state_dict())
    g = system.G
    z = torch.randn(2, system.latent_dim, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(system.generate(z), plain.generate(z))
    assert system.G is g and system.training  # G is back in its place after sampling
    if name != "dcgan":  # the encoder path renders with the trained G, not the average
        x = torch.rand(1, 1, 32, 32, 32) * 2 - 1
        torch.testing.assert_close(system.reconstruct(x), _with_g(plain, system.G).reconstruct(x))


def _with_g(plain, g):
    plain.G.load_state_dict(g.state_dict())
    return plain


def test_g_ema_trains_into_the_checkpoint_and_generation(tiny, tmp_path):
    from medvol.train.checkpoint import load_checkpoint

    run = train(tiny("--model.g_ema_half_life", "1", iterations=2))
    system, cfg, state = load_checkpoint(run)
    assert cfg.model.g_ema_half_life == 1.0 and any(k.startswith("G_ema.") for k in state["system"])
    fresh = _small_tiny(cfg)
    # Two updates with half-life 1: G_ema = G2/2 + G1/4 + G0/4, neither G nor its start.
    moved = 0
    for name, p_ema in system.G_ema.named_parameters():
        p, p0 = dict(system.G.named_parameters())[name], dict(fresh.G.named_parameters())[name]
        if not torch.equal(p, p0):
            moved += 1
            assert not torch.equal(p_ema, p) and not torch.equal(p_ema, p0)
    assert moved > 0


def _small_tiny(cfg):
    from medvol.models import build_from_config

    torch.manual_seed(cfg.train.seed)
    return build_from_config(cfg.model)


def test_g_ema_refused_where_the_model_has_its_own(tiny):
    with pytest.raises(MedvolError, match=r"model\.g_ema_half_life: stylegan2 keeps its own G_ema"):
        _small("stylegan2", half_life=5.0)
    with pytest.raises(MedvolError, match=r"model\.g_ema_half_life"):
        load_config(None, ["--model.g_ema_half_life", "-1"])


# ------------------------------------------------------------------ model.mode_seeking

def test_mode_seeking_loss_closed_form():
    from medvol.models.system import GANSystem

    z = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    fake = torch.tensor([[0.0, 0.0], [2.0, 4.0]])
    # Each sample differs from its neighbour by |dx| = 3 on average and |dz| = 1: ratio 3.
    assert GANSystem.mode_seeking_loss(z, fake).item() == pytest.approx(1 / (3 + 1e-5))
    z3, fake3 = torch.tensor([[0.0], [1.0], [3.0]]), torch.tensor([[0.0], [1.0], [1.0]])
    # Pairs (0, 2), (1, 0), (2, 1): ratios 1/3, 1, 0.
    assert GANSystem.mode_seeking_loss(z3, fake3).item() == pytest.approx(1 / ((1 / 3 + 1 + 0) / 3 + 1e-5))
    with pytest.raises(MedvolError, match="at least 2"):
        GANSystem.mode_seeking_loss(z[:1], fake[:1])


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_mode_seeking_term_is_added_to_g_loss(name):
    from medvol.config import ModelConfig
    from medvol.models import build_from_config

    def step(weight: float) -> dict:
        torch.manual_seed(0)
        system = build_from_config(ModelConfig(name=name, size=32, base_width=2, latent_dim=8, mode_seeking=weight))
        real = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
        return system.train_step(real, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(5))

    plain, seeking = step(0.0), step(7.0)
    assert "G_ms" not in plain and seeking["G_ms"] > 0
    torch.testing.assert_close(seeking["D"], plain["D"])  # D's step comes first and is untouched
    torch.testing.assert_close(seeking["G"], plain["G"] + 7.0 * seeking["G_ms"])


def test_mode_seeking_term_is_added_to_a_2d_g_loss():
    from medvol.config import ModelConfig
    from medvol.models import build_from_config

    def step(weight: float) -> dict:
        torch.manual_seed(0)
        system = build_from_config(ModelConfig(name="dcgan", size=32, base_width=4, latent_dim=8, mode_seeking=weight))
        real = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1
        return system.train_step(real, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(5))

    plain, seeking = step(0.0), step(3.0)
    assert "G_ms" not in plain and seeking["G_ms"] > 0
    torch.testing.assert_close(seeking["D"], plain["D"])
    torch.testing.assert_close(seeking["G"], plain["G"] + 3.0 * seeking["G_ms"])


def test_mode_seeking_refused_where_the_g_step_is_the_model_own():
    from medvol.config import ModelConfig
    from medvol.models import build_from_config

    with pytest.raises(MedvolError, match=r"model\.mode_seeking: only for hagan, crfgan, dcgan, mlpgan, not fastgan"):
        build_from_config(ModelConfig(name="fastgan", size=32, base_width=4, latent_dim=8, mode_seeking=1.0))


# ------------------------------------------------------------------ model.crop_depth

@pytest.mark.parametrize("size,crop,w,depth_out", [(32, 0, 64, 1), (32, 8, 64, 2), (32, 32, 64, 8), (64, 32, 64, 4)])
def test_crop_depth_sets_the_crop_and_d_first_linear(size, crop, w, depth_out):
    from medvol.models.networks import HighResDiscriminator

    d = HighResDiscriminator(size, w // 16, 0, crop_depth=crop)
    # The convs leave crop / (S/8) depth positions of w/4 channels; the position is one more input.
    assert d.fc1.in_features == w // 4 * depth_out + 1
    x = torch.zeros(2, 1, crop or size // 8, size, size)
    logit, _ = d(x, torch.zeros(2, 1))
    assert logit.shape == (2, 1)


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_crop_depth_whole_volume_crops_everything_at_position_0(name):
    from medvol.config import ModelConfig
    from medvol.models import build_from_config

    torch.manual_seed(0)
    system = build_from_config(ModelConfig(name=name, size=32, base_width=2, latent_dim=8, options={"crop_depth": 32}))
    assert system.options()["crop_depth"] == 32 and system.geometry.crop_emb == 8
    real = torch.rand(2, 1, 32, 32, 32) * 2 - 1
    state = system._prepare_step(real, None, {}, 0, None, None, torch.Generator().manual_seed(1))
    assert state.start == 0 and torch.equal(state.real_crop, real)
    assert torch.equal(state.position, torch.zeros(2, 1))
    emb = system.G.embed(torch.randn(2, 8))
    # G^H renders the whole embedding in training, as in generation.
    torch.testing.assert_close(system.G.render(system._crop_emb(emb, state.start)), system.G.render(emb))
    out = system.train_step(real, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(5))
    assert all(torch.isfinite(v) for v in out.values())


def test_crop_depth_between_keeps_the_published_position_rule():
    from medvol.models import build

    system = build("crfgan", 32, base_width=2, latent_dim=8, crop_depth=16)
    starts = {system._sample_crop(torch.Generator().manual_seed(i)) for i in range(200)}
    assert starts == set(range(17))  # 0 .. S - crop
    assert system._position(8, 1, torch.device("cpu")).item() == 0.5


def test_crop_depth_refused_and_round_trips_a_checkpoint(tiny):
    from medvol.models import build
    from medvol.train.checkpoint import load_checkpoint

    for bad in (6, 40, -8, True):
        with pytest.raises(MedvolError, match=r"crop_depth: expected 0 \(S/8 = 4\) or a multiple of 4 up to 32"):
            build("hagan", 32, base_width=2, latent_dim=8, crop_depth=bad)
    with pytest.raises(MedvolError, match=r"model\.crop_depth: only for hagan and crfgan, not dcgan"):
        train(tiny("--model.crop_depth", "8", name="dcgan", iterations=1))
    system, cfg, _ = load_checkpoint(train(tiny("--model.crop_depth", "16", name="hagan", iterations=1)))
    assert cfg.model.crop_depth == 16 and system.geometry.crop == 16


# ------------------------------------------------------------------ model.d_minibatch_std

def test_minibatch_std_closed_form():
    from medvol.models.networks import minibatch_std

    h = torch.tensor([[0.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    # Feature 0 spreads with std sqrt(8/3), feature 1 not at all: the mean is sqrt(8/3) / 2.
    out = minibatch_std(h, eps=0.0)
    assert out.shape == (3, 1)
    torch.testing.assert_close(out, torch.full((3, 1), (8 / 3) ** 0.5 / 2))
    maps = minibatch_std(torch.stack([torch.zeros(2, 4, 4, 4), torch.ones(2, 4, 4, 4)]), eps=0.0)
    assert maps.shape == (2, 1, 4, 4, 4) and torch.allclose(maps, torch.full_like(maps, 0.5))


@pytest.mark.parametrize("name", ["crfgan", "hagan"])
def test_minibatch_std_lets_d_see_the_rest_of_the_batch(name):
    from medvol.config import ModelConfig
    from medvol.models import build_from_config

    def logits(flag: bool) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        system = build_from_config(ModelConfig(name=name, size=32, base_width=2, latent_dim=8,
                                               options={"d_minibatch_std": flag}))
        assert system.options()["d_minibatch_std"] is flag
        x = torch.rand(3, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
        crop, pos = x[:, :, :4], torch.zeros(3, 1)
        args = (crop, x[:, :, ::4, ::4, ::4], pos) if name == "hagan" else (crop, pos)
        other = [a.clone() for a in args]
        other[0][2] = -other[0][2]  # change only the third volume of the batch
        if name == "hagan":
            other[1][2] = -other[1][2]
        system.D.eval()
        with torch.no_grad():
            return system.D(*args)[0][:2], system.D(*other)[0][:2]

    plain, changed = logits(False)
    torch.testing.assert_close(plain, changed)  # per-sample scores, as published
    with_std, changed_std = logits(True)
    assert not torch.allclose(with_std, changed_std)  # the first two logits depend on the third volume
