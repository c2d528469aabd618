"""The model contract, tested once for every registry entry and each of its training stages.

A model added to ``medvol.models.registry.REGISTRY`` gets these tests without writing any:
parameter counts (module tree, ``medvol info``), the batch shape, one training step that moves
every trained group and no frozen one, a bit-exact resume through the Trainer, seeded sampling,
and the profiler's estimate. Variants that exercise a model's own state (fp16 scaler, a critic
loop, G_ema) are listed in :data:`VARIANTS`; every model runs at least its defaults.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from medvol import cli
from medvol.config import load_config
from medvol.errors import MedvolError
from medvol.models import REGISTRY, build
from medvol.models.registry import PREVIOUS_STAGE
from medvol.train import checkpoint as ckpt
from medvol.train.trainer import train

TINY = dict(base_width=4, latent_dim=8)
#: Models whose runs are too long for the default suite on 2 CPU cores (as before: HA-GAN's).
SLOW = {"hagan"}
#: Extra trainer overrides per model, each a variant of the resume test.
VARIANTS = {
    # Optimized mode with fp16 autocast: the GradScaler state must round-trip as well.
    "crfgan": [["--train.mode", "optimized", "--train.amp", "fp16"]],
    "dcgan": [["--model.loss", "wgan-gp", "--model.diffaugment", "translation,cutout"]],
    "stylegan2": [["--model.r1_interval", "2", "--model.pl_interval", "3", "--model.ema_kimg", "0.02"]],
    # Activation checkpointing (fp32: in bf16 on the CPU the U-Net gave NaN, docs/diffusion.md).
    "ldm": [["--train.mode", "optimized", "--train.amp", "none"]],
}


def _cases(with_variants: bool = False):
    """``(name, stage index)`` (and the variant's overrides) of every registry entry."""
    for name, spec in REGISTRY.items():
        marks = [pytest.mark.slow] if name in SLOW and with_variants else []
        for index in range(len(spec.stages)):
            variants = [[]] + (VARIANTS.get(name, []) if with_variants else [])
            for overrides in variants:
                args = (name, index, overrides) if with_variants else (name, index)
                label = f"{name}-{index}" + ("-" + "-".join(o.lstrip("-") for o in overrides[1::2]) if overrides else "")
                yield pytest.param(*args, marks=marks, id=label)


#: Sizes other than a model's smallest: pix2pix's only noise is its decoder's dropout, which its
#: last four layers lack, so at 32^2 it has none and every seed gives one image.
SIZES = {"pix2pix": 64}


def _size(name: str) -> int:
    return SIZES.get(name, min(REGISTRY[name].sizes))


def _stage_options(name: str, index: int, previous: str | None = None) -> dict[str, object]:
    options = dict(REGISTRY[name].stages[index])
    return {k: (previous if v == PREVIOUS_STAGE else v) for k, v in options.items()}


def _conditional_overrides(name: str, caches: dict | None = None) -> list[str]:
    if REGISTRY[name].system.conditional:  # drawn from masks: the phantom's nodule mask channel
        return ["--model.channels", "2", "--data.masks", "true", "--data.phantom_nodules", "true"]
    if _unpaired(name):  # two image caches, domains A and B (the unpaired_caches fixture)
        return ["--data.source", str(caches["A"]), "--data.cache_b", str(caches["B"])]
    return []


def _unpaired(name: str) -> bool:
    """Whether the model translates between two image sets (cyclegan): it trains on two caches and
    samples from given images."""
    return bool(getattr(REGISTRY[name].system, "unpaired", False))


def _build(name: str, index: int = 0, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    options = _stage_options(name, index, previous="unused")
    if REGISTRY[name].system.conditional:
        options["channels"] = 2
    return build(name, _size(name), **TINY, **options, **extra)


def _config(tmp_path, name: str, index: int, out: str, iterations: int, previous: str | None, *overrides,
            caches: dict | None = None):
    options = []
    for key, value in _stage_options(name, index, previous).items():
        options += [f"--model.options.{key}", str(value)]
    return load_config(None, [
        "--model.name", name, "--model.size", str(_size(name)), "--model.base_width", "4", "--model.latent_dim", "8",
        "--data.source", "phantom", "--data.phantom_n", "2", "--data.workers", "0", "--data.batch", "2",
        "--train.iterations", str(iterations), "--train.mode", "reference", "--train.device", "cpu",
        "--train.ckpt_every", "2", "--train.log_every", "1", "--train.sample_every", "1000",
        "--train.progress", "false", "--train.out", str(tmp_path / out), *options,
        *_conditional_overrides(name, caches), *overrides,
    ])


def _previous_stage(tmp_path, name: str, index: int) -> str | None:
    """The run folder of stage ``index - 1`` (2 iterations), which stage ``index`` starts from."""
    if index == 0:
        return None
    previous = _previous_stage(tmp_path, name, index - 1)
    return str(train(_config(tmp_path, name, index - 1, f"stage{index - 1}", 2, previous)))


# ---------------------------------------------------------------------------------- structure
@pytest.mark.parametrize("name, index", _cases())
def test_param_counts_cover_the_module_tree(name, index, capsys):
    system = _build(name, index)
    counts = system.param_counts()
    trainable = sum(p.numel() for p in system.parameters() if p.requires_grad)
    assert counts["total"] == trainable > 0
    for group, module in system.groups().items():
        assert counts[group] == sum(p.numel() for p in module.parameters()), group
    # medvol info reads the same registry and prints the same numbers (built on the meta device).
    options = [f"--option={k}={v}" for k, v in _stage_options(name, index, "unused").items()]
    if system.conditional:
        options.append("--option=channels=2")
    assert cli.main(["info", "--model", name, "--size", str(_size(name)), "--base-width", "4",
                     "--latent-dim", "8", *options, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == counts


@pytest.mark.parametrize("name", list(REGISTRY))
def test_registry_entry_matches_its_system(name):
    spec = REGISTRY[name]
    system = _build(name)
    assert system.name == name and system.dims == spec.dims
    assert system.batch_shape(3) == (3 * system.real_batches, system.channels) + (_size(name),) * spec.dims
    with torch.device("meta"):  # the published build, as the shipped configs and profile use it
        published = build(name, max(s for s in spec.sizes if s <= 128), **({"channels": 2} if system.conditional else {}))
    assert (published.base_width, published.latent_dim) == (spec.base_width, spec.latent_dim)
    with pytest.raises(MedvolError, match="size"):
        build(name, 33)


# ---------------------------------------------------------------------------------- one step
@pytest.mark.parametrize("name, index", _cases())
def test_one_step_trains_its_groups_only(name, index):
    system = _build(name, index)
    before = {k: v.clone() for k, v in system.state_dict().items()}
    trained = {f"{g}.{k}" for g, m in system.groups().items() for k, _ in m.named_parameters()}
    # Not trained by the step: a frozen earlier stage (a moving average like G_ema has no grad).
    frozen = {k for k, p in system.named_parameters() if p.requires_grad} - trained
    real = torch.rand(system.batch_shape(2), generator=torch.Generator().manual_seed(1)) * 2 - 1
    if system.conditional:  # the last channel is the mask the images are drawn from: -1 / 1
        real[:, -1:] = torch.where(real[:, -1:] > 0, 1.0, -1.0)
    out = system.train_step(real, system.make_optimizers(), 0, generator=torch.Generator().manual_seed(2))
    assert out and all(v.dim() == 0 and torch.isfinite(v) for v in out.values())
    after = system.state_dict()
    moved = {k for k in trained if not torch.equal(before[k], after[k])}
    assert moved, "no trained parameter moved"
    assert {k.split(".")[0] for k in moved} == set(system.groups())  # every group updated
    assert all(torch.equal(before[k], after[k]) for k in frozen)  # nothing outside the stage's groups
    assert all(p.requires_grad for m in system.groups().values() for p in m.parameters())  # unfrozen again
    with pytest.raises(MedvolError):
        system.train_step(real[:, :, 1:], system.make_optimizers(), 1)  # a wrong shape is named


# ---------------------------------------------------------------------------------- resume
def _assert_same_state(a: dict, b: dict) -> None:
    assert a["iteration"] == b["iteration"]
    assert a["system"].keys() == b["system"].keys()
    for key in a["system"]:
        assert torch.equal(a["system"][key], b["system"][key]), key
    assert a["optimizers"].keys() == b["optimizers"].keys()
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        assert sa.keys() == sb.keys()
        for idx in sa:
            assert sa[idx].keys() == sb[idx].keys()
            for field in sa[idx]:
                assert torch.equal(sa[idx][field], sb[idx][field]), (name, idx, field)
    assert torch.equal(a["rng"][0]["generator"], b["rng"][0]["generator"])
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert a["scaler"] == b["scaler"]


@pytest.mark.parametrize("name, index, overrides", _cases(with_variants=True))
def test_resume_is_bit_exact(tmp_path, request, name, index, overrides):
    previous = _previous_stage(tmp_path, name, index)
    caches = request.getfixturevalue("unpaired_caches") if _unpaired(name) else None
    straight = _config(tmp_path, name, index, "straight", 4, previous, *overrides, caches=caches)
    train(straight)
    train(_config(tmp_path, name, index, "split", 2, previous, *overrides, caches=caches))
    split = _config(tmp_path, name, index, "split", 4, previous, *overrides, caches=caches)
    train(split, resume="auto")
    a, b = ckpt.read_checkpoint(straight.train.out), ckpt.read_checkpoint(split.train.out)
    assert a["iteration"] == b["iteration"] == 4
    _assert_same_state(a, b)
    assert (a["scaler"] is not None) == ("fp16" in overrides)
    # The runs really trained: weights moved away from the 2-iteration state.
    mid = ckpt.read_checkpoint(f"{split.train.out}/checkpoints/{ckpt.checkpoint_name(2)}")
    assert any(not torch.equal(mid["system"][k], b["system"][k]) for k in b["system"])
    # ... and the checkpoint rebuilds the model it saved.
    system, cfg, _ = ckpt.load_checkpoint(split.train.out)
    assert cfg.model.name == name and system.state_dict().keys() == b["system"].keys()


# ---------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("name, index", _cases())
def test_sample_is_seeded_and_shaped(name, index):
    system = _build(name, index)
    last = index == len(REGISTRY[name].stages) - 1
    kwargs = {}
    if system.conditional:
        kwargs["masks"] = torch.where(torch.rand(2, 1, *(_size(name),) * 2, generator=torch.Generator().manual_seed(4))
                                      > 0.5, 1.0, -1.0)
    if _unpaired(name):  # translated from given images of domain A
        kwargs["images"] = torch.rand(2, 1, *(_size(name),) * 2, generator=torch.Generator().manual_seed(4)) * 2 - 1
        with pytest.raises(MedvolError, match="images"):
            system.sample(2, seed=0)
    if not last:  # an earlier stage (an autoencoder) has nothing to sample from
        with pytest.raises(MedvolError, match="stage"):
            system.sample(2, seed=0, **kwargs)
        return
    first = system.sample(2, seed=0, **kwargs)
    assert first.shape == (2, system.channels) + (_size(name),) * system.dims
    assert torch.isfinite(first).all() and first.abs().max() <= 1
    assert torch.equal(system.sample(2, seed=0, **kwargs), first)
    assert torch.equal(system.sample(2, generator=torch.Generator().manual_seed(0), **kwargs), first)
    if _unpaired(name):  # a translation has no noise: every seed gives the same image of an input
        assert torch.equal(system.sample(2, seed=1, **kwargs), first)
        other = system.sample(2, seed=0, images=kwargs["images"].flip(-1))
        assert not torch.equal(other, first)
    else:
        assert not torch.equal(system.sample(2, seed=1, **kwargs), first)
    assert system.training  # sampling leaves the training mode as it was
    with pytest.raises(MedvolError):
        system.sample(0)


# ---------------------------------------------------------------------------------- profile
@pytest.mark.parametrize("name, index", _cases())
def test_profile_estimate(name, index):
    from medvol.profile.cases import Case
    from medvol.profile.estimate import estimate

    options = dict(_stage_options(name, index, "unused"))
    if REGISTRY[name].system.conditional:
        options["channels"] = 2
    spec = ",".join(f"{k}={v}" for k, v in options.items())
    result = estimate(Case(name, _size(name), 1, "optimized", kind="estimate", base_width=4, model_options=spec),
                      iterations=2)
    with torch.device("meta"):
        system = build(name, _size(name), base_width=4, **options)
    assert result["params"] == system.param_counts()
    assert result["dims"] == REGISTRY[name].dims
    parameters = sum(p.numel() * p.element_size() for p in system.parameters())
    trained = sum(p.numel() * p.element_size() for m in system.groups().values() for p in m.parameters())
    # At the peak: all weights, and the trained groups' gradients or Adam states (two per weight).
    assert result["peak_bytes"] >= parameters + trained
    assert result["persistent"]["optimizer"] >= 2 * trained


# ---------------------------------------------------------------------------------- shipped configs
def _shipped_model_configs():
    """``(config name, model, size or "tiny")`` of every shipped ``<model>_<size|tiny>`` config."""
    from medvol.config import shipped_config_names

    for config in shipped_config_names():
        model, _, tail = config.rpartition("_")
        if model in REGISTRY and (tail == "tiny" or tail.isdigit()):
            yield pytest.param(config, model, tail, id=config)


@pytest.mark.parametrize("config, name, tail", _shipped_model_configs())
def test_shipped_configs(config, name, tail):
    from medvol.models import MODEL_DEFAULTS, build_from_config

    cfg = load_config(config)
    assert cfg.model.name == name
    with torch.device("meta"):
        system = build_from_config(cfg.model)
    if tail == "tiny":  # CI plumbing: a narrow model on the CPU
        assert cfg.train.device == "cpu" and cfg.model.base_width <= 32
        return
    # The published model at that size: published widths and the same parameter counts.
    assert cfg.model.size == int(tail)
    assert (cfg.model.base_width, cfg.model.latent_dim) == MODEL_DEFAULTS[name]
    with torch.device("meta"):
        published = build(name, int(tail), **({"channels": 2} if system.conditional else {}))
    assert system.param_counts() == published.param_counts()


@pytest.mark.parametrize("command", ["info", "profile", "train"])
def test_cli_help_names_every_model(command, capsys):
    """The help texts name every entry (filled in from the registry when help is printed)."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    missing = [name for name in REGISTRY if not re.search(rf"\b{name}\b", text)]
    assert not missing, f"medvol {command} --help does not name {missing}"
